//! The packet programs run directly through BPF_PROG_TEST_RUN on crafted frames:
//! what comes out (addresses, ports, TTL, MACs, every checksum) and the verdict.
//!
//! Each test loads its own copy of the object in its own namespace
//! ([`TestDatapath`]); the harness is shared with the benchmark's program cost.
//! A test reads as build a frame, run a program, check the output.
use std::{fs, net::Ipv4Addr};

use anyhow::Result;
use netpath::datapath::{EBPF_OBJECT, has_coarse_clock};
use netpath_common::{
    FlowKey, NETWORK_INTERNAL, NETWORK_NO_ICC, Proto, network_drop, stat, tcp_state,
};
use netpath_tests::{
    flowfill::monotonic_ns,
    packet::{Frame, L4, Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    testrun::{
        C1_IP, C1_MAC, C2_IP, C2_MAC, GATEWAY_IP, GATEWAY_MAC, HOST_IP, HOST_MAC,
        NETWORK_FLAGS_NONE, OUTSIDE_IP, OUTSIDE_MAC, RunOutput, SNAT_RANGE, TC_ACT_OK,
        TC_ACT_REDIRECT, TC_ACT_SHOT, TcProgram, TestDatapath, other_gateway, other_subnet,
    },
};

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= (major, minor)
}

/// The datapath every test starts from: netpath's object as netpath loads
/// it, two containers (C1, C2) behind the container veth.
fn datapath() -> Result<TestDatapath> {
    let mut dp = TestDatapath::load(EBPF_OBJECT, has_coarse_clock())?;
    dp.add_endpoint(C1_IP, C1_MAC)?;
    dp.add_endpoint(C2_IP, C2_MAC)?;
    Ok(dp)
}

fn from_c1(l4: L4) -> Frame {
    Frame::new(C1_IP, OUTSIDE_IP, l4).macs(C1_MAC, GATEWAY_MAC)
}

fn assert_valid(out: &Parsed<'_>) {
    assert!(
        out.ip_header_ok(),
        "IPv4 header checksum is wrong: {:02x?}",
        out.frame
    );
    assert!(out.l4_csum_ok(), "L4 checksum is wrong: {:02x?}", out.frame);
}

#[test]
fn masquerade_tcp_rewrites_source_and_checksums_and_reply_comes_back() -> Result<()> {
    let dp = datapath()?;
    let syn = from_c1(L4::Tcp {
        sport: 33000,
        dport: 80,
        flags: TCP_SYN,
    });
    let out = dp.from_container(&syn.bytes())?;
    assert_eq!(
        out.verdict, TC_ACT_REDIRECT,
        "masquerade is fast-pathed to the uplink"
    );
    let out = out.parsed();
    assert_eq!(out.src(), HOST_IP);
    assert_eq!(out.dst(), OUTSIDE_IP);
    let nat_port = out.sport();
    assert!(
        (SNAT_RANGE.0..=SNAT_RANGE.1).contains(&nat_port),
        "SNAT port {nat_port} outside the range"
    );
    assert_eq!(out.dport(), 80);
    assert_eq!(out.ttl(), 63, "a routed packet loses one TTL");
    assert_eq!(out.dst_mac(), OUTSIDE_MAC, "the FIB's neighbour");
    assert_valid(&out);

    let reply = Frame::new(
        OUTSIDE_IP,
        HOST_IP,
        L4::Tcp {
            sport: 80,
            dport: nat_port,
            flags: TCP_SYN | TCP_ACK,
        },
    )
    .macs(OUTSIDE_MAC, HOST_MAC);
    let back = dp.from_uplink(&reply.bytes())?;
    assert_eq!(
        back.verdict, TC_ACT_REDIRECT,
        "the reply goes straight into the container"
    );
    let back = back.parsed();
    assert_eq!(back.src(), OUTSIDE_IP);
    assert_eq!(back.dst(), C1_IP);
    assert_eq!(back.sport(), 80);
    assert_eq!(back.dport(), 33000);
    assert_eq!(back.dst_mac(), C1_MAC);
    assert_eq!(back.src_mac(), GATEWAY_MAC);
    assert_valid(&back);
    Ok(())
}

#[test]
fn masquerade_udp_keeps_a_zero_checksum_zero_and_fixes_a_real_one() -> Result<()> {
    let dp = datapath()?;
    let zero = from_c1(L4::Udp {
        sport: 41000,
        dport: 53,
        zero_csum: true,
    });
    let out = dp.from_container(&zero.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed();
    assert_eq!(out.src(), HOST_IP);
    assert_eq!(
        out.sport(),
        41000,
        "a source port inside the SNAT range is kept when free"
    );
    assert_eq!(out.udp_csum(), 0, "UDP checksum 0 means none and stays 0");
    assert!(out.ip_header_ok());

    let real = from_c1(L4::Udp {
        sport: 5353,
        dport: 53,
        zero_csum: false,
    });
    let out = dp.from_container(&real.bytes())?;
    let out = out.parsed();
    assert_ne!(out.udp_csum(), 0);
    assert_valid(&out);
    Ok(())
}

#[test]
fn same_source_port_from_two_containers_gets_distinct_snat_ports() -> Result<()> {
    let dp = datapath()?;
    let a = from_c1(L4::Udp {
        sport: 42000,
        dport: 9000,
        zero_csum: false,
    });
    let b = Frame::new(
        C2_IP,
        OUTSIDE_IP,
        L4::Udp {
            sport: 42000,
            dport: 9000,
            zero_csum: false,
        },
    )
    .macs(C2_MAC, GATEWAY_MAC);
    let oa = dp.from_container(&a.bytes())?;
    let ob = dp.from_container(&b.bytes())?;
    let (pa, pb) = (oa.parsed().sport(), ob.parsed().sport());
    assert_eq!(pa, 42000);
    assert_ne!(
        pa, pb,
        "the second flow must not reuse the first one's port"
    );
    assert!((SNAT_RANGE.0..=SNAT_RANGE.1).contains(&pb));
    Ok(())
}

#[test]
fn ping_is_masqueraded_with_a_translated_echo_id() -> Result<()> {
    let dp = datapath()?;
    let echo = from_c1(L4::IcmpEcho {
        request: true,
        id: 7,
        seq: 1,
    });
    let out = dp.from_container(&echo.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed();
    assert_eq!(out.src(), HOST_IP);
    let id = out.echo_id();
    assert!(
        (SNAT_RANGE.0..=SNAT_RANGE.1).contains(&id),
        "echo id {id} is NATed like a port"
    );
    assert_valid(&out);

    let reply = Frame::new(
        OUTSIDE_IP,
        HOST_IP,
        L4::IcmpEcho {
            request: false,
            id,
            seq: 1,
        },
    );
    let back = dp.from_uplink(&reply.bytes())?;
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    let back = back.parsed();
    assert_eq!(back.dst(), C1_IP);
    assert_eq!(back.echo_id(), 7);
    assert_valid(&back);
    Ok(())
}

#[test]
fn published_port_is_dnated_keeping_the_client_address() -> Result<()> {
    let mut dp = datapath()?;
    dp.publish(8080, C2_IP, 80, Proto::Tcp)?;
    let syn = Frame::new(
        OUTSIDE_IP,
        HOST_IP,
        L4::Tcp {
            sport: 50000,
            dport: 8080,
            flags: TCP_SYN,
        },
    );
    let out = dp.from_uplink(&syn.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed();
    assert_eq!(
        out.src(),
        OUTSIDE_IP,
        "the container sees the client's real address"
    );
    assert_eq!(out.dst(), C2_IP);
    assert_eq!(out.dport(), 80);
    assert_eq!(out.dst_mac(), C2_MAC);
    assert_valid(&out);

    let reply = Frame::new(
        C2_IP,
        OUTSIDE_IP,
        L4::Tcp {
            sport: 80,
            dport: 50000,
            flags: TCP_SYN | TCP_ACK,
        },
    )
    .macs(C2_MAC, GATEWAY_MAC);
    let back = dp.from_container(&reply.bytes())?;
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    let back = back.parsed();
    assert_eq!(back.src(), HOST_IP);
    assert_eq!(back.sport(), 8080);
    assert_eq!(back.dst(), OUTSIDE_IP);
    assert_valid(&back);
    Ok(())
}

#[test]
fn hairpin_to_a_published_port_is_dnated_and_snated_to_the_gateway() -> Result<()> {
    let mut dp = datapath()?;
    dp.publish(8080, C2_IP, 80, Proto::Tcp)?;
    let syn = Frame::new(
        C1_IP,
        HOST_IP,
        L4::Tcp {
            sport: 33333,
            dport: 8080,
            flags: TCP_SYN,
        },
    )
    .macs(C1_MAC, GATEWAY_MAC);
    let out = dp.from_container(&syn.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed();
    assert_eq!(out.dst(), C2_IP);
    assert_eq!(out.dport(), 80);
    assert_eq!(
        out.src(),
        GATEWAY_IP,
        "SNAT to the gateway so the reply comes back through us"
    );
    assert_valid(&out);
    let nat_port = out.sport();

    let reply = Frame::new(
        C2_IP,
        GATEWAY_IP,
        L4::Tcp {
            sport: 80,
            dport: nat_port,
            flags: TCP_SYN | TCP_ACK,
        },
    )
    .macs(C2_MAC, GATEWAY_MAC);
    let back = dp.from_container(&reply.bytes())?;
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    let back = back.parsed();
    assert_eq!((back.src(), back.sport()), (HOST_IP, 8080));
    assert_eq!((back.dst(), back.dport()), (C1_IP, 33333));
    assert_valid(&back);
    Ok(())
}

#[test]
fn icmp_errors_quoting_a_masqueraded_packet_are_translated_inside_and_out() -> Result<()> {
    let dp = datapath()?;
    let probe = from_c1(L4::Udp {
        sport: 20000,
        dport: 33434,
        zero_csum: false,
    });
    let out = dp.from_container(&probe.bytes())?;
    let sent = out.parsed();
    let nat_port = sent.sport();
    // Frag-needed from a router, quoting the first 28 bytes of what we sent.
    let quoted = out.frame[14..14 + 28].to_vec();
    let router = Ipv4Addr::new(198, 18, 0, 254);
    let err = Frame::new(
        router,
        HOST_IP,
        L4::IcmpError {
            icmp_type: 3,
            code: 4,
            quoted,
        },
    );
    let back = dp.from_uplink(&err.bytes())?;
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    let back = back.parsed();
    assert_eq!(back.src(), router);
    assert_eq!(back.dst(), C1_IP);
    assert_valid(&back);
    let inner = back.quoted();
    assert_eq!(
        inner.src(),
        C1_IP,
        "the quoted source is the container again"
    );
    assert_eq!(inner.sport(), 20000);
    assert_ne!(nat_port, 0);
    assert!(
        inner.ip_header_ok(),
        "the quoted header's checksum is fixed too"
    );
    Ok(())
}

#[test]
fn port_unreachable_and_time_exceeded_are_translated_too() -> Result<()> {
    let dp = datapath()?;
    // A container's UDP flow to a published port: the container's reply
    // direction is what the outside client hears from; here the outside
    // client's host answers the container's masqueraded probe instead.
    for (icmp_type, code) in [(3u8, 3u8), (11, 0)] {
        let probe = from_c1(L4::Udp {
            sport: 21000 + u16::from(icmp_type),
            dport: 33434,
            zero_csum: false,
        });
        let out = dp.from_container(&probe.bytes())?;
        let quoted = out.frame[14..14 + 28].to_vec();
        let err = Frame::new(
            OUTSIDE_IP,
            HOST_IP,
            L4::IcmpError {
                icmp_type,
                code,
                quoted,
            },
        );
        let back = dp.from_uplink(&err.bytes())?;
        assert_eq!(back.verdict, TC_ACT_REDIRECT, "ICMP {icmp_type}/{code}");
        let back = back.parsed();
        assert_eq!(back.dst(), C1_IP);
        assert_valid(&back);
        let inner = back.quoted();
        assert_eq!(inner.src(), C1_IP);
        assert_eq!(inner.sport(), 21000 + u16::from(icmp_type));
        assert!(inner.ip_header_ok());
    }
    Ok(())
}

#[test]
fn a_containers_port_unreachable_about_a_published_flow_goes_out_as_the_host() -> Result<()> {
    let mut dp = datapath()?;
    dp.publish(5353, C2_IP, 53, Proto::Udp)?;
    let query = Frame::new(
        OUTSIDE_IP,
        HOST_IP,
        L4::Udp {
            sport: 50505,
            dport: 5353,
            zero_csum: false,
        },
    );
    let delivered = dp.from_uplink(&query.bytes())?;
    // Nothing listens in the container: it answers port unreachable, quoting
    // the packet as it received it (to 10.77.0.3:53).
    let quoted = delivered.frame[14..14 + 28].to_vec();
    let err = Frame::new(
        C2_IP,
        OUTSIDE_IP,
        L4::IcmpError {
            icmp_type: 3,
            code: 3,
            quoted,
        },
    )
    .macs(C2_MAC, GATEWAY_MAC);
    let out = dp.from_container(&err.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed();
    assert_eq!(
        out.src(),
        HOST_IP,
        "the error comes from the address the client talked to"
    );
    assert_eq!(out.dst(), OUTSIDE_IP);
    assert_valid(&out);
    let inner = out.quoted();
    assert_eq!(
        (inner.dst(), inner.dport()),
        (HOST_IP, 5353),
        "the quoted packet is what the client sent"
    );
    assert!(inner.ip_header_ok());
    Ok(())
}

#[test]
fn a_snat_port_in_time_wait_goes_to_no_other_connection_until_the_peer_lets_go() -> Result<()> {
    let mut dp = datapath()?;
    dp.set_snat_range(40000, 40000)?;
    // Segments carry the sequence numbers a real connection would: window
    // tracking moves a flow's state only on those.
    let tcp = |sport, flags, seq, ack| {
        from_c1(L4::Tcp {
            sport,
            dport: 80,
            flags,
        })
        .seq(seq, ack)
    };
    let from_outside = |flags, seq, ack| {
        Frame::new(
            OUTSIDE_IP,
            HOST_IP,
            L4::Tcp {
                sport: 80,
                dport: 40000,
                flags,
            },
        )
        .seq(seq, ack)
    };
    // After a SYN with seq 100: a SYN-ACK (seq 500), then FIN each way
    // (the frames carry a 7-byte payload): TIME_WAIT.
    let finish = |dp: &TestDatapath, sport| -> Result<()> {
        let syn_ack = from_outside(TCP_SYN | TCP_ACK, 500, 108);
        assert_eq!(dp.from_uplink(&syn_ack.bytes())?.verdict, TC_ACT_REDIRECT);
        dp.from_container(&tcp(sport, TCP_FIN | TCP_ACK, 108, 508).bytes())?;
        let fin = from_outside(TCP_FIN | TCP_ACK, 508, 116);
        assert_eq!(dp.from_uplink(&fin.bytes())?.verdict, TC_ACT_REDIRECT);
        Ok(())
    };
    let no_port = |dp: &TestDatapath, sport, why: &str| -> Result<()> {
        let before = dp.counter(stat::DROP_NO_SNAT_PORT)?;
        assert_eq!(
            dp.from_container(&tcp(sport, TCP_SYN, 100, 0).bytes())?
                .verdict,
            TC_ACT_SHOT,
            "{why}"
        );
        assert_eq!(dp.counter(stat::DROP_NO_SNAT_PORT)?, before + 1, "{why}");
        Ok(())
    };
    let gets_the_port = |dp: &TestDatapath, sport, why: &str| -> Result<()> {
        let out = dp.from_container(&tcp(sport, TCP_SYN, 100, 0).bytes())?;
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "{why}");
        assert_eq!(out.parsed().sport(), 40000, "{why}");
        Ok(())
    };
    gets_the_port(&dp, 33000, "the only port")?;
    no_port(&dp, 33001, "the only port is in use")?;
    // Both sides finish: FIN each way, TIME_WAIT.
    finish(&dp, 33000)?;
    no_port(
        &dp,
        33001,
        "the peer may hold 40000 in TIME_WAIT with another socket's timestamps",
    )?;
    gets_the_port(&dp, 33000, "the same socket tuple reopening keeps its port")?;
    // Reset (of the reopened connection, acknowledging its SYN): no
    // TIME_WAIT anywhere, so the port is free for another socket.
    let rst = from_outside(TCP_RST | TCP_ACK, 0, 108);
    assert_eq!(dp.from_uplink(&rst.bytes())?.verdict, TC_ACT_REDIRECT);
    gets_the_port(&dp, 33001, "a reset connection's port is taken over")?;
    // Once idle for longer than a peer's TIME_WAIT (60 s), a finished
    // connection's port is free too.
    finish(&dp, 33001)?;
    no_port(&dp, 33002, "TIME_WAIT, just now")?;
    let now = monotonic_ns();
    if now <= 61_000_000_000 {
        eprintln!(
            "skipping the idle takeover: booted {} s ago",
            now / 1_000_000_000
        );
        return Ok(());
    }
    let key = FlowKey::new(C1_IP, OUTSIDE_IP, 33001, 80, Proto::Tcp);
    dp.age_flow(key, now - 61_000_000_000)?;
    gets_the_port(&dp, 33002, "TIME_WAIT, idle 61 s")?;
    Ok(())
}

#[test]
fn an_established_flow_leaves_by_its_cached_next_hop_until_routes_change() -> Result<()> {
    let mut dp = datapath()?;
    let tcp = |flags| {
        from_c1(L4::Tcp {
            sport: 40123,
            dport: 80,
            flags,
        })
    };
    let dmac = |out: &RunOutput| out.parsed().dst_mac();
    let out = dp.from_container(&tcp(TCP_SYN).bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(dmac(&out), OUTSIDE_MAC);
    // The neighbour moves; the flow keeps its cached next hop...
    let moved = [0x02, 0x0e, 0, 0, 0, 0x99];
    dp.netns()
        .exec(&[
            "ip",
            "neigh",
            "replace",
            &OUTSIDE_IP.to_string(),
            "lladdr",
            "02:0e:00:00:00:99",
            "dev",
            "u0",
            "nud",
            "permanent",
        ])
        .expect_ok("move the neighbour");
    let out = dp.from_container(&tcp(TCP_ACK).bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    if !kernel_at_least(5, 12) {
        // The FIB reports no egress MTU before 5.12, and the MTU check needs
        // it: nothing is cached, every packet asks the FIB.
        assert_eq!(dmac(&out), moved, "no cache without the FIB's MTU");
        return Ok(());
    }
    assert_eq!(
        dmac(&out),
        OUTSIDE_MAC,
        "the cached next hop, no FIB lookup"
    );
    // ...until the route generation changes (the agent's job on netlink
    // events).
    dp.set_route_generation(2)?;
    let out = dp.from_container(&tcp(TCP_ACK).bytes())?;
    assert_eq!(dmac(&out), moved, "looked up again after the change");
    let out = dp.from_container(&tcp(TCP_ACK).bytes())?;
    assert_eq!(dmac(&out), moved, "and cached again");
    // A packet over the egress MTU goes to the kernel untranslated (which
    // sends the ICMP error), cached next hop or not.
    let before = dp.counter(stat::PASS_FRAG_NEEDED)?;
    let mut big = tcp(TCP_ACK);
    big.payload = vec![0; 1600];
    let out = dp.from_container(&big.bytes())?;
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(dp.counter(stat::PASS_FRAG_NEEDED)?, before + 1);
    assert_eq!(out.parsed().src(), C1_IP, "not translated");
    Ok(())
}

#[test]
fn a_published_flow_reaches_its_container_by_the_cached_endpoint_until_routes_change() -> Result<()>
{
    let mut dp = datapath()?;
    dp.publish(8080, C2_IP, 80, Proto::Tcp)?;
    let from_outside = |flags| {
        Frame::new(
            OUTSIDE_IP,
            HOST_IP,
            L4::Tcp {
                sport: 50001,
                dport: 8080,
                flags,
            },
        )
    };
    let dst_mac = |dp: &TestDatapath, flags| -> Result<[u8; 6]> {
        let out = dp.from_uplink(&from_outside(flags).bytes())?;
        assert_eq!(out.verdict, TC_ACT_REDIRECT);
        Ok(out.parsed().dst_mac())
    };
    assert_eq!(dst_mac(&dp, TCP_SYN)?, C2_MAC);
    // The endpoint changes behind the flow's back: the cache still answers...
    let renewed = [0x02, 0xc2, 0, 0, 0, 0x99];
    dp.set_endpoint_mac(C2_IP, renewed)?;
    assert_eq!(
        dst_mac(&dp, TCP_ACK)?,
        C2_MAC,
        "cached, no ENDPOINTS lookup"
    );
    // ...until the route generation changes (containers coming and going are
    // link changes, which the agent turns into a new generation).
    dp.set_route_generation(2)?;
    assert_eq!(dst_mac(&dp, TCP_ACK)?, renewed);
    Ok(())
}

#[test]
fn spoofed_source_is_dropped_and_counted() -> Result<()> {
    let dp = datapath()?;
    let before = dp.counter(stat::DROP_SPOOFED)?;
    let spoofed = Frame::new(
        Ipv4Addr::new(10, 77, 0, 99),
        OUTSIDE_IP,
        L4::Udp {
            sport: 1,
            dport: 2,
            zero_csum: false,
        },
    )
    .macs(C1_MAC, GATEWAY_MAC);
    assert_eq!(dp.from_container(&spoofed.bytes())?.verdict, TC_ACT_SHOT);
    // Right address, wrong MAC.
    let wrong_mac = from_c1(L4::Udp {
        sport: 1,
        dport: 2,
        zero_csum: false,
    })
    .macs([0x02, 0xde, 0xad, 0, 0, 1], GATEWAY_MAC);
    assert_eq!(dp.from_container(&wrong_mac.bytes())?.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(stat::DROP_SPOOFED)?, before + 2);
    Ok(())
}

#[test]
fn ip_options_are_parsed_with_the_real_header_length() -> Result<()> {
    let dp = datapath()?;
    let mut with_options = from_c1(L4::Tcp {
        sport: 40100,
        dport: 443,
        flags: TCP_SYN,
    });
    // Four NOPs and an end-of-list: 8 bytes of options, IHL 7.
    with_options.options = vec![1, 1, 1, 1, 0, 0, 0, 0];
    let out = dp.from_container(&with_options.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed();
    assert_eq!(out.ihl, 28);
    assert_eq!(out.src(), HOST_IP);
    assert_eq!(out.sport(), 40100);
    assert_eq!(out.dport(), 443);
    assert_valid(&out);
    Ok(())
}

#[test]
fn fragments_truncated_and_bogus_headers_are_never_rewritten() -> Result<()> {
    let dp = datapath()?;
    let mut fragment = from_c1(L4::Udp {
        sport: 40200,
        dport: 53,
        zero_csum: false,
    });
    // A later fragment whose first never came: no ports to follow.
    fragment.frag = (false, 100);
    let before = dp.counter(stat::DROP_FRAGMENT)?;
    let out = dp.from_container(&fragment.bytes())?;
    assert_eq!(
        out.verdict, TC_ACT_SHOT,
        "a fragment we can't translate never leaves with the container's address"
    );
    assert_eq!(dp.counter(stat::DROP_FRAGMENT)?, before + 1);
    let mut local = fragment.clone();
    local.dst = GATEWAY_IP;
    let bytes = local.bytes();
    let out = dp.from_container(&bytes)?;
    assert_eq!(
        out.verdict, TC_ACT_OK,
        "fragments to the host go to the kernel"
    );
    assert_eq!(out.frame, bytes, "and untouched");

    let mut truncated = from_c1(L4::Tcp {
        sport: 40300,
        dport: 80,
        flags: TCP_SYN,
    })
    .bytes();
    truncated.truncate(14 + 20 + 10);
    let before = dp.counter(stat::DROP_MALFORMED)?;
    let out = dp.from_container(&truncated)?;
    assert_eq!(
        out.verdict, TC_ACT_SHOT,
        "a container's broken packet is ours to drop"
    );
    assert_eq!(dp.counter(stat::DROP_MALFORMED)?, before + 1);

    let mut bogus = from_c1(L4::Tcp {
        sport: 40400,
        dport: 80,
        flags: TCP_SYN,
    })
    .bytes();
    bogus[14] = 0x43; // IHL 3: shorter than the fixed header
    let out = dp.from_container(&bogus)?;
    assert_eq!(out.verdict, TC_ACT_SHOT);

    // On the uplink, anything we don't understand belongs to the host.
    let out = dp.from_uplink(&bogus)?;
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(out.frame, bogus);
    Ok(())
}

/// Issue 10, item 13: a container's ICMP error about a packet netpath never
/// tracked can't be translated; before, the NAT port was written over its
/// type and code. It must not leave with the container's address.
#[test]
fn an_icmp_error_about_an_untracked_packet_never_leaves_untranslated() -> Result<()> {
    let dp = datapath()?;
    // What the container "received" and complains about: nothing we saw.
    let quoted = Frame::new(
        OUTSIDE_IP,
        C1_IP,
        L4::Udp {
            sport: 53,
            dport: 41234,
            zero_csum: false,
        },
    )
    .ip_bytes()[..28]
        .to_vec();
    let err = from_c1(L4::IcmpError {
        icmp_type: 3,
        code: 3,
        quoted,
    });
    let mut err = err;
    err.dst = OUTSIDE_IP;
    let before = dp.counter(stat::DROP_UNTRANSLATED)?;
    let out = dp.from_container(&err.bytes())?;
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(stat::DROP_UNTRANSLATED)?, before + 1);
    // The uplink's egress, where the kernel's path would take it: same.
    let out = dp.run_tc(TcProgram::ToUplink, &err.bytes())?;
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(stat::DROP_UNTRANSLATED)?, before + 2);
    Ok(())
}

/// Issue 10, item 14: a translated ICMP error is forwarded like any packet,
/// so one whose TTL runs out here goes to the kernel untouched (before, TTL
/// 1 became 0 and then 255 on the way in).
#[test]
fn an_icmp_error_whose_ttl_runs_out_is_not_forwarded() -> Result<()> {
    let dp = datapath()?;
    let probe = from_c1(L4::Udp {
        sport: 22000,
        dport: 33434,
        zero_csum: false,
    });
    let out = dp.from_container(&probe.bytes())?;
    let quoted = out.frame[14..14 + 28].to_vec();
    let mut err = Frame::new(
        OUTSIDE_IP,
        HOST_IP,
        L4::IcmpError {
            icmp_type: 3,
            code: 3,
            quoted,
        },
    );
    err.ttl = 1;
    let bytes = err.bytes();
    let before = dp.counter(stat::PASS_TTL)?;
    let back = dp.from_uplink(&bytes)?;
    assert_eq!(back.verdict, TC_ACT_OK, "the kernel's, not forwarded");
    assert_eq!(back.frame, bytes, "untouched");
    assert_eq!(dp.counter(stat::PASS_TTL)?, before + 1);
    Ok(())
}

/// Issue 10, item 7: window tracking. An RST at a random sequence number
/// (a blind reset) is dropped and changes nothing; one exactly at the next
/// sequence number closes the flow (RFC 5961); one near it reaches the
/// container (which answers with a challenge ACK) but changes nothing here.
#[test]
fn only_an_rst_at_the_next_sequence_number_closes_a_flow() -> Result<()> {
    let dp = datapath()?;
    let syn = from_c1(L4::Tcp {
        sport: 41000,
        dport: 80,
        flags: TCP_SYN,
    })
    .seq(1000, 0)
    .payload(&[]);
    let out = dp.from_container(&syn.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let nat_port = out.parsed().sport();
    let from_outside = |flags, seq, ack| {
        Frame::new(
            OUTSIDE_IP,
            HOST_IP,
            L4::Tcp {
                sport: 80,
                dport: nat_port,
                flags,
            },
        )
        .seq(seq, ack)
        .payload(&[])
        .bytes()
    };
    // The handshake: the outside's data starts at 5001.
    let syn_ack = dp.from_uplink(&from_outside(TCP_SYN | TCP_ACK, 5000, 1001))?;
    assert_eq!(syn_ack.verdict, TC_ACT_REDIRECT);
    let ack = from_c1(L4::Tcp {
        sport: 41000,
        dport: 80,
        flags: TCP_ACK,
    })
    .seq(1001, 5001)
    .payload(&[]);
    assert_eq!(dp.from_container(&ack.bytes())?.verdict, TC_ACT_REDIRECT);
    let state = |dp: &TestDatapath| -> Result<u8> {
        let key = FlowKey::new(C1_IP, OUTSIDE_IP, 41000, 80, Proto::Tcp);
        Ok(dp.flow(key)?.expect("the flow").tcp_state)
    };
    assert_eq!(state(&dp)?, tcp_state::ESTABLISHED);

    let before = dp.counter(stat::DROP_TCP_OUT_OF_WINDOW)?;
    for seq in [0x8000_0000u32, 0x4000_1234, 0xc000_0000] {
        let blind = dp.from_uplink(&from_outside(TCP_RST, seq, 0))?;
        assert_eq!(blind.verdict, TC_ACT_SHOT, "blind RST at {seq:#x}");
    }
    assert_eq!(dp.counter(stat::DROP_TCP_OUT_OF_WINDOW)?, before + 3);
    let blind_fin = dp.from_uplink(&from_outside(TCP_FIN | TCP_ACK, 0x8000_0000, 1001))?;
    assert_eq!(blind_fin.verdict, TC_ACT_SHOT, "blind FIN");
    assert_eq!(state(&dp)?, tcp_state::ESTABLISHED);

    let near = dp.from_uplink(&from_outside(TCP_RST, 5001 + 100, 0))?;
    assert_eq!(near.verdict, TC_ACT_REDIRECT, "the container judges it");
    assert_eq!(state(&dp)?, tcp_state::ESTABLISHED, "but we don't close");

    let exact = dp.from_uplink(&from_outside(TCP_RST, 5001, 0))?;
    assert_eq!(exact.verdict, TC_ACT_REDIRECT);
    assert_eq!(state(&dp)?, tcp_state::CLOSED);
    Ok(())
}

/// Issue 10, item 1: only a first packet opens a flow; a segment without a
/// lone SYN (no flags, a bare ACK) from a container opens none.
#[test]
fn only_a_syn_opens_a_tcp_flow() -> Result<()> {
    let dp = datapath()?;
    let before = dp.counter(stat::DROP_NOT_INITIAL)?;
    for (i, flags) in [0u8, TCP_ACK, TCP_SYN | TCP_ACK, TCP_FIN]
        .into_iter()
        .enumerate()
    {
        let segment = from_c1(L4::Tcp {
            sport: 42000 + i as u16,
            dport: 80,
            flags,
        });
        let out = dp.from_container(&segment.bytes())?;
        assert_eq!(out.verdict, TC_ACT_SHOT, "flags {flags:#x}");
    }
    assert_eq!(dp.counter(stat::DROP_NOT_INITIAL)?, before + 4);
    let echo_reply = from_c1(L4::IcmpEcho {
        request: false,
        id: 7,
        seq: 1,
    });
    assert_eq!(dp.from_container(&echo_reply.bytes())?.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(stat::DROP_NOT_INITIAL)?, before + 5);
    Ok(())
}

/// Issue 10, item 6: a datagram's fragments follow its flow. The first
/// carries the ports and is translated whole; a later one gets the same
/// addresses (its own header checksum fixed, its payload untouched).
#[test]
fn a_datagrams_later_fragments_follow_the_first_ones_translation() -> Result<()> {
    let dp = datapath()?;
    let mut first = from_c1(L4::Udp {
        sport: 40500,
        dport: 53,
        zero_csum: false,
    })
    .payload(&[0x5a; 24]);
    first.frag = (true, 0);
    let out = dp.from_container(&first.bytes())?;
    assert_eq!(
        out.verdict, TC_ACT_REDIRECT,
        "the first fragment is masqueraded"
    );
    let sent = out.parsed();
    assert_eq!(sent.src(), HOST_IP);
    assert!(sent.ip_header_ok());

    // A later fragment: an IPv4 header and payload bytes, no UDP header.
    let mut later = from_c1(L4::Udp {
        sport: 0,
        dport: 0,
        zero_csum: true,
    })
    .payload(&[0xa5; 24]);
    later.frag = (false, 4);
    let mut bytes = later.bytes();
    // Same IP id as the first (the frame builder uses a fixed one); the 8
    // bytes a UDP header would take are payload here.
    bytes[14 + 20..14 + 28].fill(0xa5);
    let out = dp.from_container(&bytes)?;
    assert_eq!(
        out.verdict, TC_ACT_REDIRECT,
        "it follows the first one's flow"
    );
    let next = out.parsed();
    assert_eq!((next.src(), next.dst()), (HOST_IP, OUTSIDE_IP));
    assert!(next.ip_header_ok());
    assert_eq!(out.frame[14 + 20..], bytes[14 + 20..], "payload untouched");
    Ok(())
}

/// C3, the one container of network 1 (10.78.0.0/16).
const C3_MAC: [u8; 6] = [0x02, 0xc3, 0, 0, 0, 3];

fn c3_ip() -> Ipv4Addr {
    let [a, b, ..] = other_subnet(1).octets();
    Ipv4Addr::new(a, b, 0, 2)
}

/// A TCP SYN from C1 (port 41000) to `dst:dport`.
fn c1_syn(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let syn = L4::Tcp {
        sport: 41000,
        dport,
        flags: TCP_SYN,
    };
    Frame::new(C1_IP, dst, syn)
        .macs(C1_MAC, GATEWAY_MAC)
        .bytes()
}

#[test]
fn a_container_reaches_another_network_only_through_a_published_port() -> Result<()> {
    let mut dp = datapath()?;
    dp.set_network(1, NETWORK_FLAGS_NONE)?;
    dp.add_endpoint_on(c3_ip(), C3_MAC, 1)?;
    let before = dp.counter(stat::DROP_OTHER_NETWORK)?;

    let direct = dp.from_container(&c1_syn(c3_ip(), 80))?;
    assert_eq!(direct.verdict, TC_ACT_SHOT, "network 0 can't reach into 1");
    let [a, b, ..] = other_subnet(1).octets();
    let stray = Frame::new(
        C1_IP,
        Ipv4Addr::new(a, b, 9, 9),
        L4::Udp {
            sport: 5000,
            dport: 53,
            zero_csum: false,
        },
    )
    .macs(C1_MAC, GATEWAY_MAC);
    assert_eq!(
        dp.from_container(&stray.bytes())?.verdict,
        TC_ACT_SHOT,
        "nor to an address of its subnet that no container has"
    );
    let ping = Frame::new(
        c3_ip(),
        C1_IP,
        L4::IcmpEcho {
            request: true,
            id: 7,
            seq: 1,
        },
    )
    .macs(C3_MAC, GATEWAY_MAC);
    assert_eq!(
        dp.from_container(&ping.bytes())?.verdict,
        TC_ACT_SHOT,
        "and 1 can't reach into 0"
    );
    assert_eq!(dp.counter(stat::DROP_OTHER_NETWORK)?, before + 3);
    assert_eq!(dp.network_drops(0)?[network_drop::OTHER_NETWORK], 2);
    assert_eq!(dp.network_drops(1)?[network_drop::OTHER_NETWORK], 1);

    let to_gateway = dp.from_container(&c1_syn(other_gateway(1), 22))?;
    assert_eq!(
        to_gateway.verdict, TC_ACT_OK,
        "another network's gateway is the host's address: the kernel's"
    );

    // Through a published port: SNAT to the gateway of the target's
    // network, so C3 answers its own gateway.
    dp.publish(8080, c3_ip(), 80, Proto::Tcp)?;
    let out = dp.from_container(&c1_syn(HOST_IP, 8080))?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed();
    assert_eq!((out.dst(), out.dport()), (c3_ip(), 80));
    assert_eq!(out.src(), other_gateway(1));
    assert_valid(&out);
    let reply = Frame::new(
        c3_ip(),
        other_gateway(1),
        L4::Tcp {
            sport: 80,
            dport: out.sport(),
            flags: TCP_SYN | TCP_ACK,
        },
    )
    .macs(C3_MAC, GATEWAY_MAC);
    let back = dp.from_container(&reply.bytes())?;
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    let back = back.parsed();
    assert_eq!((back.src(), back.sport()), (HOST_IP, 8080));
    assert_eq!((back.dst(), back.dport()), (C1_IP, 41000));
    assert_valid(&back);

    // Leaving the host is unchanged.
    let out = dp.from_container(&c1_syn(OUTSIDE_IP, 443))?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(out.parsed().src(), HOST_IP);
    Ok(())
}

#[test]
fn with_icc_off_containers_reach_each_other_only_through_published_ports() -> Result<()> {
    let mut dp = datapath()?;
    dp.set_network(0, NETWORK_NO_ICC)?;
    let direct = dp.from_container(&c1_syn(C2_IP, 80))?;
    assert_eq!(direct.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(stat::DROP_ICC)?, 1);
    assert_eq!(dp.network_drops(0)?[network_drop::ICC], 1);
    let broadcast = dp.from_container(&c1_syn(Ipv4Addr::new(10, 77, 255, 255), 80))?;
    assert_eq!(
        broadcast.verdict, TC_ACT_SHOT,
        "the bridge would flood it to the others"
    );

    assert_eq!(
        dp.from_container(&c1_syn(GATEWAY_IP, 53))?.verdict,
        TC_ACT_OK,
        "the gateway is the host"
    );
    dp.publish(8080, C2_IP, 80, Proto::Tcp)?;
    let out = dp.from_container(&c1_syn(HOST_IP, 8080))?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(out.parsed().dst(), C2_IP);
    Ok(())
}

#[test]
fn an_internal_network_reaches_nothing_outside_its_subnet() -> Result<()> {
    let mut dp = datapath()?;
    dp.set_network(0, NETWORK_INTERNAL)?;
    dp.publish(8080, C2_IP, 80, Proto::Tcp)?;
    for (dst, dport, what) in [
        (OUTSIDE_IP, 443, "no masquerade"),
        (
            HOST_IP,
            8080,
            "no published port (the hairpin leaves the subnet)",
        ),
        (HOST_IP, 22, "no other address of the host"),
    ] {
        let out = dp.from_container(&c1_syn(dst, dport))?;
        assert_eq!(out.verdict, TC_ACT_SHOT, "{what}");
    }
    assert_eq!(dp.counter(stat::DROP_INTERNAL)?, 3);
    assert_eq!(dp.network_drops(0)?[network_drop::INTERNAL], 3);
    assert_eq!(dp.counter(stat::FLOW_CREATED)?, 0);

    assert_eq!(
        dp.from_container(&c1_syn(C2_IP, 80))?.verdict,
        TC_ACT_REDIRECT,
        "its containers reach each other"
    );
    assert_eq!(
        dp.from_container(&c1_syn(GATEWAY_IP, 53))?.verdict,
        TC_ACT_OK,
        "and its gateway"
    );
    Ok(())
}

#[test]
fn a_container_side_packet_of_a_published_flow_from_the_uplink_is_a_spoof() -> Result<()> {
    let mut dp = datapath()?;
    dp.publish(8080, C2_IP, 80, Proto::Tcp)?;
    let client_syn = Frame::new(
        OUTSIDE_IP,
        HOST_IP,
        L4::Tcp {
            sport: 50000,
            dport: 8080,
            flags: TCP_SYN,
        },
    );
    assert_eq!(
        dp.from_uplink(&client_syn.bytes())?.verdict,
        TC_ACT_REDIRECT
    );
    // The server's side of that flow, forged on the wire: it matches the
    // flow's reply tuple, and would reach the client as the host's answer.
    let forged = Frame::new(
        C2_IP,
        OUTSIDE_IP,
        L4::Tcp {
            sport: 80,
            dport: 50000,
            flags: TCP_SYN | TCP_ACK,
        },
    );
    let before = dp.counter(stat::DROP_MARTIAN_SOURCE)?;
    assert_eq!(dp.from_uplink(&forged.bytes())?.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(stat::DROP_MARTIAN_SOURCE)?, before + 1);
    Ok(())
}
