//! The IPv6 datapath run through BPF_PROG_TEST_RUN on crafted frames, as
//! `packets.rs` runs the IPv4 one: every IPv6 rewrite (NAT66 masquerade,
//! published ports, hairpin, ICMPv6 errors) with its output bytes and
//! checksums (TCP, UDP and ICMPv6 all cover the IPv6 pseudo-header), and
//! what never leaves (spoofed sources, router messages, extension headers,
//! fragments).
//!
//! The frames go to the IPv4 entry points (`from_container`, `from_uplink`,
//! `to_uplink`), which tail-call the IPv6 programs through `SLOW_PATHS` as
//! they do on the wire: the whole chain runs, slow paths included.
use std::net::Ipv6Addr;

use anyhow::Result;
use netpath::datapath::{EBPF_OBJECT, has_coarse_clock};
use netpath_common::{FlowKey, Proto, stat};
use netpath_tests::{
    packet::{Frame, HOP_BY_HOP_ROUTER_ALERT, L4, Parsed, TCP_ACK, TCP_SYN},
    testrun::{
        C1_IP, C1_IP6, C1_MAC, C2_IP6, C2_MAC, GATEWAY_IP6, GATEWAY_MAC, HOST_IP, HOST_IP6,
        HOST_MAC, OUTSIDE_IP, OUTSIDE_IP6, OUTSIDE_MAC, SNAT_RANGE, TC_ACT_OK, TC_ACT_REDIRECT,
        TC_ACT_SHOT, TcProgram, TestDatapath,
    },
};

/// C1's link-local address, which neighbour discovery speaks from.
const C1_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xc1);
/// A router beyond the uplink's neighbour (the one with the smaller MTU).
const ROUTER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
/// All nodes (ff02::1).
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The datapath every test starts from: netpath's object as netpath loads
/// it (IPv6 on, NAT66 to HOST_IP6), C1 and C2 with both families'
/// addresses.
fn datapath() -> Result<TestDatapath> {
    let mut dp = TestDatapath::load(EBPF_OBJECT, has_coarse_clock())?;
    dp.add_endpoint(C1_IP, C1_MAC)?;
    dp.add_endpoint(C1_IP6, C1_MAC)?;
    dp.add_endpoint(C2_IP6, C2_MAC)?;
    Ok(dp)
}

/// A frame from C1 (its IPv6 address and MAC) to the outside.
fn from_c1(l4: L4) -> Frame<Ipv6Addr> {
    Frame::new(C1_IP6, OUTSIDE_IP6, l4).macs(C1_MAC, GATEWAY_MAC)
}

/// A frame from the outside to the host's IPv6 address.
fn from_outside(l4: L4) -> Frame<Ipv6Addr> {
    Frame::new(OUTSIDE_IP6, HOST_IP6, l4).macs(OUTSIDE_MAC, HOST_MAC)
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp {
        sport,
        dport,
        zero_csum: false,
    }
}

fn assert_valid(out: &Parsed<'_, Ipv6Addr>) {
    assert_eq!(out.ethertype(), 0x86dd, "{:02x?}", out.frame);
    assert!(
        out.l4_csum_ok(),
        "L4 checksum (IPv6 pseudo-header) is wrong: {:02x?}",
        out.frame
    );
}

fn assert_in_snat_range(port: u16) {
    assert!(
        (SNAT_RANGE.0..=SNAT_RANGE.1).contains(&port),
        "SNAT port {port} outside the range"
    );
}

#[test]
fn masquerade_tcp6_rewrites_source_and_checksum_and_reply_comes_back() -> Result<()> {
    let dp = datapath()?;
    let syn = from_c1(tcp(33000, 80, TCP_SYN));
    let out = dp.from_container(&syn.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "NAT66 to the uplink");
    let out = out.parsed6();
    assert_eq!(out.src(), HOST_IP6, "the uplink's global address");
    assert_eq!(out.dst(), OUTSIDE_IP6);
    let nat_port = out.sport();
    assert_in_snat_range(nat_port);
    assert_eq!(out.dport(), 80);
    assert_eq!(out.ttl(), 63, "a routed packet loses one hop");
    assert_eq!(out.dst_mac(), OUTSIDE_MAC, "the FIB's IPv6 neighbour");
    assert_valid(&out);
    let key = FlowKey::new(C1_IP6, OUTSIDE_IP6, 33000, 80, Proto::Tcp);
    assert!(dp.flow(key)?.is_some(), "tracked in CONNTRACK6");

    let reply = from_outside(tcp(80, nat_port, TCP_SYN | TCP_ACK));
    let back = dp.from_uplink(&reply.bytes())?;
    assert_eq!(back.verdict, TC_ACT_REDIRECT, "straight into the container");
    let back = back.parsed6();
    assert_eq!((back.src(), back.sport()), (OUTSIDE_IP6, 80));
    assert_eq!((back.dst(), back.dport()), (C1_IP6, 33000));
    assert_eq!(back.ttl(), 63);
    assert_eq!(back.dst_mac(), C1_MAC);
    assert_eq!(back.src_mac(), GATEWAY_MAC);
    assert_valid(&back);
    Ok(())
}

#[test]
fn masquerade_udp6_fixes_the_checksum_both_ways() -> Result<()> {
    let dp = datapath()?;
    // A source port outside the SNAT range: the port changes too.
    let query = from_c1(udp(5353, 53)).payload(b"an IPv6 query");
    let out = dp.from_container(&query.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed6();
    assert_eq!(out.src(), HOST_IP6);
    let nat_port = out.sport();
    assert_in_snat_range(nat_port);
    assert_eq!(out.dport(), 53);
    assert_eq!(out.ttl(), 63);
    assert_ne!(out.udp_csum(), 0, "over IPv6 a UDP checksum is mandatory");
    assert_valid(&out);

    let answer = from_outside(udp(53, nat_port)).payload(b"an IPv6 answer");
    let back = dp.from_uplink(&answer.bytes())?;
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    let back = back.parsed6();
    assert_eq!((back.dst(), back.dport()), (C1_IP6, 5353));
    assert_eq!((back.src(), back.sport()), (OUTSIDE_IP6, 53));
    assert_ne!(back.udp_csum(), 0);
    assert_valid(&back);
    Ok(())
}

/// RFC 8200, 8.1: over IPv6 a UDP checksum of 0 makes a datagram invalid
/// (IPv4's "no checksum" is in packets.rs), and NAT's incremental update
/// would turn the 0 into a wrong checksum that looks computed. Such a
/// datagram is never translated: a container's is dropped, and one from
/// outside toward a container too (`DROP_MALFORMED`); one to the host's
/// address, a reply to a masqueraded flow among them, goes to the kernel
/// untouched, which drops it unless a tunnel of its own takes it.
#[test]
fn ipv6_udp_with_checksum_zero_is_never_translated() -> Result<()> {
    let dp = datapath()?;
    let zero = |sport, dport| L4::Udp {
        sport,
        dport,
        zero_csum: true,
    };
    let before = dp.counter(stat::DROP_MALFORMED)?;
    let out = dp.from_container(&from_c1(zero(5353, 53)).bytes())?;
    assert_eq!(out.verdict, TC_ACT_SHOT, "a container's");
    assert_eq!(dp.counter(stat::DROP_MALFORMED)?, before + 1);
    assert_eq!(dp.counter(stat::FLOW_CREATED)?, 0, "it opened no flow");

    let toward_c1 = Frame::new(OUTSIDE_IP6, C1_IP6, zero(53, 5353)).macs(OUTSIDE_MAC, HOST_MAC);
    let out = dp.from_uplink(&toward_c1.bytes())?;
    assert_eq!(out.verdict, TC_ACT_SHOT, "from outside toward a container");
    assert_eq!(dp.counter(stat::DROP_MALFORMED)?, before + 2);

    // A masqueraded flow, and a reply in it with checksum 0.
    let out = dp.from_container(&from_c1(udp(5353, 53)).bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let nat_port = out.parsed6().sport();
    let reply = from_outside(zero(53, nat_port)).bytes();
    let back = dp.from_uplink(&reply)?;
    assert_eq!(
        back.verdict, TC_ACT_OK,
        "to the host's address: the kernel's"
    );
    assert_eq!(back.frame, reply, "untranslated");
    assert_eq!(dp.counter(stat::DROP_MALFORMED)?, before + 2);
    Ok(())
}

#[test]
fn ping6_is_masqueraded_with_a_translated_echo_id() -> Result<()> {
    let dp = datapath()?;
    let echo = from_c1(L4::IcmpEcho {
        request: true,
        id: 7,
        seq: 1,
    });
    let out = dp.from_container(&echo.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed6();
    assert_eq!(out.proto(), 58);
    assert_eq!(out.icmp_type(), 128, "still an echo request");
    assert_eq!(out.src(), HOST_IP6);
    assert_eq!(out.ttl(), 63);
    let id = out.echo_id();
    assert_in_snat_range(id);
    assert_valid(&out);

    let reply = from_outside(L4::IcmpEcho {
        request: false,
        id,
        seq: 1,
    });
    let back = dp.from_uplink(&reply.bytes())?;
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    let back = back.parsed6();
    assert_eq!(back.icmp_type(), 129);
    assert_eq!((back.src(), back.dst()), (OUTSIDE_IP6, C1_IP6));
    assert_eq!(back.echo_id(), 7);
    assert_valid(&back);
    Ok(())
}

#[test]
fn published_port6_is_dnated_keeping_the_client_address() -> Result<()> {
    let mut dp = datapath()?;
    // PORTS6 with host_ip ::, as `-p 8080:80` publishes on IPv6.
    dp.publish(8080, C2_IP6, 80, Proto::Tcp)?;
    let syn = from_outside(tcp(50000, 8080, TCP_SYN));
    let out = dp.from_uplink(&syn.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed6();
    assert_eq!(
        out.src(),
        OUTSIDE_IP6,
        "the container sees the client's real address"
    );
    assert_eq!(out.sport(), 50000);
    assert_eq!((out.dst(), out.dport()), (C2_IP6, 80));
    assert_eq!(out.dst_mac(), C2_MAC);
    assert_eq!(out.ttl(), 63);
    assert_valid(&out);

    let reply = Frame::new(C2_IP6, OUTSIDE_IP6, tcp(80, 50000, TCP_SYN | TCP_ACK))
        .macs(C2_MAC, GATEWAY_MAC);
    let back = dp.from_container(&reply.bytes())?;
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    let back = back.parsed6();
    assert_eq!((back.src(), back.sport()), (HOST_IP6, 8080));
    assert_eq!((back.dst(), back.dport()), (OUTSIDE_IP6, 50000));
    assert_eq!(back.dst_mac(), OUTSIDE_MAC);
    assert_eq!(back.ttl(), 63);
    assert_valid(&back);
    Ok(())
}

#[test]
fn hairpin6_to_a_published_port_is_snated_to_the_gateway() -> Result<()> {
    let mut dp = datapath()?;
    dp.publish(8080, C2_IP6, 80, Proto::Tcp)?;
    let syn = Frame::new(C1_IP6, HOST_IP6, tcp(33333, 8080, TCP_SYN)).macs(C1_MAC, GATEWAY_MAC);
    let out = dp.from_container(&syn.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed6();
    assert_eq!((out.dst(), out.dport()), (C2_IP6, 80));
    assert_eq!(
        out.src(),
        GATEWAY_IP6,
        "SNAT to the network's gateway6 so the reply comes back through us"
    );
    assert_eq!(out.dst_mac(), C2_MAC);
    assert_valid(&out);
    let nat_port = out.sport();

    let reply = Frame::new(C2_IP6, GATEWAY_IP6, tcp(80, nat_port, TCP_SYN | TCP_ACK))
        .macs(C2_MAC, GATEWAY_MAC);
    let back = dp.from_container(&reply.bytes())?;
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    let back = back.parsed6();
    assert_eq!((back.src(), back.sport()), (HOST_IP6, 8080));
    assert_eq!((back.dst(), back.dport()), (C1_IP6, 33333));
    assert_eq!(back.dst_mac(), C1_MAC);
    assert_valid(&back);
    Ok(())
}

/// PMTU discovery through NAT66: a router past the uplink sends Packet Too
/// Big about what it got (the masqueraded packet); the container must get
/// it about what it sent.
#[test]
fn packet_too_big_about_a_masqueraded_packet_is_translated_inward() -> Result<()> {
    let dp = datapath()?;
    let syn = from_c1(tcp(34000, 443, TCP_SYN)).payload(&[]);
    assert_eq!(dp.from_container(&syn.bytes())?.verdict, TC_ACT_REDIRECT);
    // A full-size segment (1460 bytes of IPv6) for a path of 1280.
    let segment = from_c1(tcp(34000, 443, TCP_ACK)).payload(&[0x42; 1400]);
    let out = dp.from_container(&segment.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let nat_port = out.parsed6().sport();
    // As a router quotes it: as much of the packet as it got (one hop
    // further on) as fits in 1280 bytes with its own headers (RFC 4443).
    let mut quoted = out.frame[14..14 + 1280 - 48].to_vec();
    quoted[7] -= 1;
    let ptb = Frame::new(ROUTER_IP6, HOST_IP6, L4::packet_too_big(1280, quoted))
        .macs(OUTSIDE_MAC, HOST_MAC);
    let before = dp.counter(stat::ICMP_ERROR_TRANSLATED)?;
    let back = dp.from_uplink(&ptb.bytes())?;
    assert_eq!(back.verdict, TC_ACT_REDIRECT, "into the container");
    assert_eq!(dp.counter(stat::ICMP_ERROR_TRANSLATED)?, before + 1);
    let back = back.parsed6();
    assert_eq!(back.src(), ROUTER_IP6, "the router still speaks");
    assert_eq!(back.dst(), C1_IP6);
    assert_eq!(back.ttl(), 63);
    assert_eq!(back.dst_mac(), C1_MAC);
    assert_eq!(back.icmp_type(), 2, "still Packet Too Big");
    assert_eq!(back.l4()[4..8], 1280u32.to_be_bytes(), "with its MTU");
    assert_valid(&back);
    let inner = back.quoted();
    assert_eq!(
        (inner.src(), inner.sport()),
        (C1_IP6, 34000),
        "the quoted packet is the container's again (port {nat_port} undone)"
    );
    assert_eq!((inner.dst(), inner.dport()), (OUTSIDE_IP6, 443));
    assert_eq!(back.frame.len(), 14 + 1280, "nothing added or cut");
    Ok(())
}

#[test]
fn a_containers_ipv6_with_another_source_is_dropped() -> Result<()> {
    let dp = datapath()?;
    let before = dp.counter(stat::DROP_SPOOFED)?;
    for (src, mac, what) in [
        (
            Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x99),
            C1_MAC,
            "an address of its subnet nobody has",
        ),
        (C2_IP6, C1_MAC, "its neighbour's address"),
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x55),
            C1_MAC,
            "an outside address",
        ),
        (
            C1_IP6,
            [0x02, 0xde, 0xad, 0, 0, 1],
            "its address, another MAC",
        ),
        (
            C1_LINK_LOCAL,
            C1_MAC,
            "a link-local address beyond the link",
        ),
    ] {
        let spoofed = Frame::new(src, OUTSIDE_IP6, udp(1, 2)).macs(mac, GATEWAY_MAC);
        let out = dp.from_container(&spoofed.bytes())?;
        assert_eq!(out.verdict, TC_ACT_SHOT, "{what}");
    }
    assert_eq!(dp.counter(stat::DROP_SPOOFED)?, before + 5);
    assert_eq!(dp.counter(stat::FLOW_CREATED)?, 0);
    Ok(())
}

#[test]
fn router_advertisements_and_redirects_from_a_container_are_dropped() -> Result<()> {
    let dp = datapath()?;
    let before = dp.counter(stat::DROP_ROUTER_MESSAGE)?;
    for (frame, what) in [
        (
            Frame::new(C1_LINK_LOCAL, ALL_NODES, L4::router_advertisement()),
            "a router advertisement",
        ),
        (
            Frame::new(C1_IP6, ALL_NODES, L4::router_advertisement()),
            "a router advertisement from its global address",
        ),
        (
            Frame::new(
                C1_LINK_LOCAL,
                Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xc2),
                L4::redirect(C1_LINK_LOCAL, OUTSIDE_IP6),
            ),
            "a redirect",
        ),
    ] {
        let mut frame = frame.macs(C1_MAC, [0x33, 0x33, 0, 0, 0, 1]);
        frame.ttl = 255;
        let out = dp.from_container(&frame.bytes())?;
        assert_eq!(out.verdict, TC_ACT_SHOT, "{what}");
    }
    assert_eq!(dp.counter(stat::DROP_ROUTER_MESSAGE)?, before + 3);
    // Nor behind an extension header (RFC 7113), which the kernel would
    // look through and the bridge flood to the other containers.
    let mut hidden = Frame::new(C1_LINK_LOCAL, ALL_NODES, L4::router_advertisement())
        .macs(C1_MAC, [0x33, 0x33, 0, 0, 0, 1]);
    hidden.ttl = 255;
    hidden.options = HOP_BY_HOP_ROUTER_ALERT.to_vec();
    let out = dp.from_container(&hidden.bytes())?;
    assert_eq!(out.verdict, TC_ACT_SHOT, "an RA behind hop-by-hop options");
    assert_eq!(dp.counter(stat::DROP_ROUTER_MESSAGE)?, before + 4);

    // MLD, behind the same header, joins groups: the kernel's.
    let mld_report = L4::Icmp {
        icmp_type: 143,
        code: 0,
        rest: [0; 4],
        body: Vec::new(),
    };
    let mut mld = Frame::new(
        C1_LINK_LOCAL,
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16),
        mld_report,
    )
    .macs(C1_MAC, [0x33, 0x33, 0, 0, 0, 0x16]);
    mld.ttl = 1;
    mld.options = HOP_BY_HOP_ROUTER_ALERT.to_vec();
    let bytes = mld.bytes();
    let out = dp.from_container(&bytes)?;
    assert_eq!(out.verdict, TC_ACT_OK, "an MLD report");
    assert_eq!(out.frame, bytes, "untouched");
    assert_eq!(dp.counter(stat::DROP_ROUTER_MESSAGE)?, before + 4);

    // Neighbour discovery itself is the kernel's: a solicitation for the
    // gateway from C1's link-local address, and duplicate address
    // detection (from ::), pass untouched.
    let solicited_node = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1);
    for (src, mac) in [(C1_LINK_LOCAL, Some(C1_MAC)), (Ipv6Addr::UNSPECIFIED, None)] {
        let mut ns = Frame::new(
            src,
            solicited_node,
            L4::neighbour_solicitation(GATEWAY_IP6, mac),
        )
        .macs(C1_MAC, [0x33, 0x33, 0xff, 0, 0, 1]);
        ns.ttl = 255;
        let bytes = ns.bytes();
        let out = dp.from_container(&bytes)?;
        assert_eq!(out.verdict, TC_ACT_OK, "a solicitation from {src}");
        assert_eq!(out.frame, bytes, "untouched");
    }
    assert_eq!(dp.counter(stat::DROP_ROUTER_MESSAGE)?, before + 4);
    Ok(())
}

/// Neighbour discovery from a container speaks for itself, the IPv6 twin
/// of ARP's check: an advertisement for another address (C2's, the
/// gateway's) or with a MAC not C1's, and a solicitation naming another
/// MAC, are dropped (`DROP_SPOOFED_ND`) from whichever source, as is one
/// hidden behind an extension header or too many options. C1's own
/// advertisements, solicitations with its MAC and duplicate address
/// detection pass untouched: the kernel's.
#[test]
fn neighbour_discovery_from_a_container_must_speak_for_itself() -> Result<()> {
    let dp = datapath()?;
    let other_mac = [0x02, 0xde, 0xad, 0, 0, 1];
    let all_nodes_mac = [0x33, 0x33, 0, 0, 0, 1];
    let solicited_node = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1);
    let solicited_node_mac = [0x33, 0x33, 0xff, 0, 0, 1];
    let nd = |src, dst, dst_mac, l4| {
        let mut frame = Frame::new(src, dst, l4).macs(C1_MAC, dst_mac);
        frame.ttl = 255;
        frame
    };
    let advertisement = |target| L4::neighbour_advertisement(target, C1_MAC);
    // A solicitation for the gateway with `options` after the target.
    let solicitation_with = |options: &[u8]| {
        let mut body = GATEWAY_IP6.octets().to_vec();
        body.extend_from_slice(options);
        L4::Icmp {
            icmp_type: 135,
            code: 0,
            rest: [0; 4],
            body,
        }
    };
    let nonce = [14, 1, 1, 2, 3, 4, 5, 6];
    let mut hidden_lla = [nonce; 4].concat();
    hidden_lla[24..].copy_from_slice(&[1, 1, 0x02, 0xde, 0xad, 0, 0, 1]);
    let mut behind_hop_by_hop = nd(
        C1_LINK_LOCAL,
        ALL_NODES,
        all_nodes_mac,
        advertisement(C2_IP6),
    );
    behind_hop_by_hop.options = HOP_BY_HOP_ROUTER_ALERT.to_vec();

    let before = dp.counter(stat::DROP_SPOOFED_ND)?;
    let spoofed = [
        (
            nd(
                C1_LINK_LOCAL,
                ALL_NODES,
                all_nodes_mac,
                advertisement(C2_IP6),
            ),
            "an advertisement for C2's address",
        ),
        (
            nd(C1_IP6, GATEWAY_IP6, GATEWAY_MAC, advertisement(C2_IP6)),
            "the same from C1's global address to the gateway",
        ),
        (
            nd(C1_IP6, ALL_NODES, all_nodes_mac, advertisement(GATEWAY_IP6)),
            "an advertisement for the gateway's address",
        ),
        (
            nd(
                C1_LINK_LOCAL,
                ALL_NODES,
                all_nodes_mac,
                L4::neighbour_advertisement(C1_IP6, other_mac),
            ),
            "an advertisement for its address with another MAC",
        ),
        (
            nd(
                C1_LINK_LOCAL,
                solicited_node,
                solicited_node_mac,
                L4::neighbour_solicitation(GATEWAY_IP6, Some(other_mac)),
            ),
            "a solicitation naming another MAC",
        ),
        (
            nd(
                C1_IP6,
                GATEWAY_IP6,
                GATEWAY_MAC,
                L4::neighbour_solicitation(GATEWAY_IP6, Some(other_mac)),
            ),
            "the same from C1's global address to the gateway",
        ),
        (
            nd(
                C1_LINK_LOCAL,
                solicited_node,
                solicited_node_mac,
                solicitation_with(&hidden_lla),
            ),
            "another MAC behind three options",
        ),
        (
            behind_hop_by_hop,
            "an advertisement behind hop-by-hop options",
        ),
    ];
    for (frame, what) in &spoofed {
        let out = dp.from_container(&frame.bytes())?;
        assert_eq!(out.verdict, TC_ACT_SHOT, "{what}");
    }
    assert_eq!(
        dp.counter(stat::DROP_SPOOFED_ND)?,
        before + spoofed.len() as u64
    );

    for (frame, what) in [
        (
            nd(
                C1_LINK_LOCAL,
                ALL_NODES,
                all_nodes_mac,
                advertisement(C1_IP6),
            ),
            "an advertisement for its own address",
        ),
        (
            nd(C1_IP6, GATEWAY_IP6, GATEWAY_MAC, advertisement(C1_IP6)),
            "the same from its global address to the gateway",
        ),
        (
            nd(
                C1_LINK_LOCAL,
                ALL_NODES,
                all_nodes_mac,
                advertisement(C1_LINK_LOCAL),
            ),
            "an advertisement for its link-local address",
        ),
        (
            nd(
                C1_LINK_LOCAL,
                solicited_node,
                solicited_node_mac,
                L4::neighbour_solicitation(GATEWAY_IP6, Some(C1_MAC)),
            ),
            "a solicitation with its MAC",
        ),
        (
            nd(
                Ipv6Addr::UNSPECIFIED,
                solicited_node,
                solicited_node_mac,
                solicitation_with(&nonce),
            ),
            "duplicate address detection (with a nonce)",
        ),
    ] {
        let bytes = frame.bytes();
        let out = dp.from_container(&bytes)?;
        assert_eq!(out.verdict, TC_ACT_OK, "{what}");
        assert_eq!(out.frame, bytes, "{what}: untouched");
    }
    assert_eq!(
        dp.counter(stat::DROP_SPOOFED_ND)?,
        before + spoofed.len() as u64
    );
    Ok(())
}

/// Extension headers and fragments are never translated (see `parse`):
/// what carries one off the host is dropped and counted, never sent with
/// the container's address, whichever way it takes out.
#[test]
fn extension_headers_and_fragments_never_leave_untranslated() -> Result<()> {
    let dp = datapath()?;
    let mut hop_by_hop = from_c1(udp(40000, 53));
    hop_by_hop.options = HOP_BY_HOP_ROUTER_ALERT.to_vec();
    let mut fragment = from_c1(udp(40001, 53)).payload(&[0x5a; 24]);
    fragment.frag = (true, 0);
    for (frame, counter, what) in [
        (&hop_by_hop, stat::DROP_EXTENSION_HEADER, "hop-by-hop"),
        (&fragment, stat::DROP_FRAGMENT, "fragment"),
    ] {
        let bytes = frame.bytes();
        let parsed = Parsed::<Ipv6Addr>::new(&bytes);
        assert_eq!(parsed.proto(), 17, "{what}: UDP behind the header");
        assert!(parsed.l4_csum_ok(), "{what}: crafted right");
        let before = dp.counter(counter)?;
        let out = dp.from_container(&bytes)?;
        assert_eq!(out.verdict, TC_ACT_SHOT, "{what} from a container");
        assert_eq!(dp.counter(counter)?, before + 1, "{what} counted");
        // The kernel's way out: the uplink's egress drops it too.
        let out = dp.run_tc(TcProgram::ToUplink, &bytes)?;
        assert_eq!(out.verdict, TC_ACT_SHOT, "{what} on the uplink's egress");
        assert_eq!(dp.counter(counter)?, before + 2, "{what} counted there");

        // To the host itself it is the kernel's, untouched.
        let mut local = frame.clone();
        local.dst = GATEWAY_IP6;
        let bytes = local.bytes();
        let out = dp.from_container(&bytes)?;
        assert_eq!(out.verdict, TC_ACT_OK, "{what} to the gateway");
        assert_eq!(out.frame, bytes, "{what} untouched");
    }
    assert_eq!(dp.counter(stat::FLOW_CREATED)?, 0);
    Ok(())
}

#[test]
fn ipv6_between_two_containers_is_bridged_untouched() -> Result<()> {
    let dp = datapath()?;
    let syn = Frame::new(C1_IP6, C2_IP6, tcp(41000, 80, TCP_SYN)).macs(C1_MAC, GATEWAY_MAC);
    let out = dp.from_container(&syn.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "into the peer");
    let out = out.parsed6();
    assert_eq!((out.src(), out.sport()), (C1_IP6, 41000));
    assert_eq!((out.dst(), out.dport()), (C2_IP6, 80));
    assert_eq!(out.ttl(), 64, "bridged: no hop");
    assert_eq!(out.dst_mac(), C2_MAC);
    assert_valid(&out);
    Ok(())
}

/// With IPv6 on, IPv4 runs as ever beside it.
#[test]
fn ipv4_still_works_beside_ipv6() -> Result<()> {
    let dp = datapath()?;
    let syn6 = from_c1(tcp(33000, 80, TCP_SYN));
    assert_eq!(dp.from_container(&syn6.bytes())?.verdict, TC_ACT_REDIRECT);
    let syn = Frame::new(C1_IP, OUTSIDE_IP, tcp(33000, 80, TCP_SYN)).macs(C1_MAC, GATEWAY_MAC);
    let out = dp.from_container(&syn.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed();
    assert_eq!((out.src(), out.dst()), (HOST_IP, OUTSIDE_IP));
    assert_eq!(out.ttl(), 63);
    assert!(out.ip_header_ok() && out.l4_csum_ok());
    let key = FlowKey::new(C1_IP, OUTSIDE_IP, 33000, 80, Proto::Tcp);
    assert!(dp.flow(key)?.is_some(), "tracked in CONNTRACK");
    Ok(())
}

/// The other way: a container's Destination Unreachable about a packet of
/// a published flow leaves as the host's, quoting what the client sent.
#[test]
fn a_containers_port_unreachable_about_a_published_flow_goes_out_as_the_host() -> Result<()> {
    let mut dp = datapath()?;
    dp.publish(5353, C2_IP6, 53, Proto::Udp)?;
    let query = from_outside(udp(50505, 5353));
    let delivered = dp.from_uplink(&query.bytes())?;
    assert_eq!(delivered.verdict, TC_ACT_REDIRECT);
    // Nothing listens in the container: it quotes the packet as it got it
    // (to [fd00:77::3]:53).
    let quoted = delivered.frame[14..].to_vec();
    let unreachable = L4::Icmp {
        icmp_type: 1,
        code: 4,
        rest: [0; 4],
        body: quoted,
    };
    let err = Frame::new(C2_IP6, OUTSIDE_IP6, unreachable).macs(C2_MAC, GATEWAY_MAC);
    let out = dp.from_container(&err.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed6();
    assert_eq!(out.src(), HOST_IP6, "from the address the client talked to");
    assert_eq!(out.dst(), OUTSIDE_IP6);
    assert_eq!(out.ttl(), 63);
    assert_eq!((out.icmp_type(), out.l4()[1]), (1, 4));
    assert_valid(&out);
    let inner = out.quoted();
    assert_eq!((inner.src(), inner.sport()), (OUTSIDE_IP6, 50505));
    assert_eq!(
        (inner.dst(), inner.dport()),
        (HOST_IP6, 5353),
        "the quoted packet is what the client sent"
    );
    Ok(())
}

#[test]
fn the_uplink_lets_no_spoof_or_extension_header_into_the_containers() -> Result<()> {
    let mut dp = datapath()?;
    dp.publish(8080, C2_IP6, 80, Proto::Tcp)?;
    let before = dp.counter(stat::DROP_MARTIAN_SOURCE)?;
    for (src, what) in [
        (C1_IP6, "a container's address"),
        (HOST_IP6, "the host's own address"),
    ] {
        let spoof = Frame::new(src, HOST_IP6, tcp(50000, 8080, TCP_SYN));
        let out = dp.from_uplink(&spoof.bytes())?;
        assert_eq!(out.verdict, TC_ACT_SHOT, "{what} as source");
    }
    assert_eq!(dp.counter(stat::DROP_MARTIAN_SOURCE)?, before + 2);

    let mut hop_by_hop = Frame::new(OUTSIDE_IP6, C2_IP6, tcp(50000, 80, TCP_SYN));
    hop_by_hop.options = HOP_BY_HOP_ROUTER_ALERT.to_vec();
    let before = dp.counter(stat::DROP_EXTENSION_HEADER)?;
    assert_eq!(dp.from_uplink(&hop_by_hop.bytes())?.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(stat::DROP_EXTENSION_HEADER)?, before + 1);

    // The host's own IPv6 is the kernel's, extension header or not.
    let mut to_host = from_outside(tcp(50000, 22, TCP_SYN));
    to_host.options = HOP_BY_HOP_ROUTER_ALERT.to_vec();
    let bytes = to_host.bytes();
    let out = dp.from_uplink(&bytes)?;
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(out.frame, bytes, "untouched");
    assert_eq!(dp.counter(stat::FLOW_CREATED)?, 0);
    Ok(())
}

/// `up --ipv6=false`: containers' IPv6 is dropped as before IPv6 existed.
#[test]
fn with_ipv6_off_a_containers_ipv6_is_dropped() -> Result<()> {
    let mut dp = datapath()?;
    dp.set_ipv6(false)?;
    let before = dp.counter(stat::DROP_ETHERTYPE)?;
    let syn = from_c1(tcp(33000, 80, TCP_SYN));
    assert_eq!(dp.from_container(&syn.bytes())?.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(stat::DROP_ETHERTYPE)?, before + 1);
    dp.set_ipv6(true)?;
    assert_eq!(dp.from_container(&syn.bytes())?.verdict, TC_ACT_REDIRECT);
    Ok(())
}

/// traceroute6 and errors from the far end: Time Exceeded and Destination
/// Unreachable are translated as Packet Too Big is, and so is an error
/// about the reply direction of a published flow (the server's packet).
#[test]
fn icmpv6_errors_about_either_kind_of_flow_reach_the_container() -> Result<()> {
    let mut dp = datapath()?;
    for (icmp_type, code) in [(3u8, 0u8), (1, 4)] {
        let sport = 21000 + u16::from(icmp_type);
        let probe = from_c1(udp(sport, 33434));
        let out = dp.from_container(&probe.bytes())?;
        assert_eq!(out.verdict, TC_ACT_REDIRECT);
        let error = L4::Icmp {
            icmp_type,
            code,
            rest: [0; 4],
            body: out.frame[14..].to_vec(),
        };
        let err = Frame::new(ROUTER_IP6, HOST_IP6, error).macs(OUTSIDE_MAC, HOST_MAC);
        let back = dp.from_uplink(&err.bytes())?;
        assert_eq!(back.verdict, TC_ACT_REDIRECT, "ICMPv6 {icmp_type}/{code}");
        let back = back.parsed6();
        assert_eq!((back.src(), back.dst()), (ROUTER_IP6, C1_IP6));
        assert_eq!((back.icmp_type(), back.l4()[1]), (icmp_type, code));
        assert_valid(&back);
        let inner = back.quoted();
        assert_eq!((inner.src(), inner.sport()), (C1_IP6, sport));
    }

    // The server behind a published port answers with more than the path
    // takes: Packet Too Big about HOST_IP6:8080 -> client goes to it.
    dp.publish(8080, C2_IP6, 80, Proto::Tcp)?;
    let syn = from_outside(tcp(50000, 8080, TCP_SYN));
    assert_eq!(dp.from_uplink(&syn.bytes())?.verdict, TC_ACT_REDIRECT);
    let reply = Frame::new(C2_IP6, OUTSIDE_IP6, tcp(80, 50000, TCP_SYN | TCP_ACK))
        .macs(C2_MAC, GATEWAY_MAC)
        .payload(&[0x24; 64]);
    let out = dp.from_container(&reply.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let ptb = Frame::new(
        ROUTER_IP6,
        HOST_IP6,
        L4::packet_too_big(1280, out.frame[14..].to_vec()),
    );
    let back = dp.from_uplink(&ptb.bytes())?;
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    let back = back.parsed6();
    assert_eq!((back.src(), back.dst()), (ROUTER_IP6, C2_IP6));
    assert_eq!(back.dst_mac(), C2_MAC);
    assert_valid(&back);
    let inner = back.quoted();
    assert_eq!(
        (inner.src(), inner.sport()),
        (C2_IP6, 80),
        "what the server sent"
    );
    assert_eq!((inner.dst(), inner.dport()), (OUTSIDE_IP6, 50000));
    Ok(())
}

/// A container's ICMPv6 error about a packet netpath never tracked can't
/// be translated: it never leaves with the container's address.
#[test]
fn an_icmpv6_error_about_an_untracked_packet_never_leaves_untranslated() -> Result<()> {
    let dp = datapath()?;
    let quoted = Frame::new(OUTSIDE_IP6, C1_IP6, udp(53, 41234)).ip_bytes();
    let unreachable = L4::Icmp {
        icmp_type: 1,
        code: 4,
        rest: [0; 4],
        body: quoted,
    };
    let err = from_c1(unreachable).bytes();
    let before = dp.counter(stat::DROP_UNTRANSLATED)?;
    assert_eq!(dp.from_container(&err)?.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(stat::DROP_UNTRANSLATED)?, before + 1);
    let out = dp.run_tc(TcProgram::ToUplink, &err)?;
    assert_eq!(out.verdict, TC_ACT_SHOT, "nor by the kernel's way out");
    assert_eq!(dp.counter(stat::DROP_UNTRANSLATED)?, before + 2);
    Ok(())
}

/// A container's packet the kernel routed out (the stack's path, not the
/// fast path) is masqueraded on the uplink's egress, new flow and all.
#[test]
fn the_uplinks_egress_masquerades_what_the_kernel_routed() -> Result<()> {
    let dp = datapath()?;
    let syn = from_c1(tcp(35000, 80, TCP_SYN)).macs(HOST_MAC, OUTSIDE_MAC);
    let out = dp.run_tc(TcProgram::ToUplink, &syn.bytes())?;
    assert_eq!(out.verdict, TC_ACT_OK, "the kernel sends it on");
    let out = out.parsed6();
    assert_eq!(out.src(), HOST_IP6);
    assert_in_snat_range(out.sport());
    assert_eq!((out.dst(), out.dport()), (OUTSIDE_IP6, 80));
    assert_eq!(out.ttl(), 64, "the kernel counted the hop");
    assert_valid(&out);
    let key = FlowKey::new(C1_IP6, OUTSIDE_IP6, 35000, 80, Proto::Tcp);
    assert!(dp.flow(key)?.is_some());
    Ok(())
}

#[test]
fn a_published_port6_is_reached_through_the_gateway_too() -> Result<()> {
    let mut dp = datapath()?;
    dp.publish(8080, C2_IP6, 80, Proto::Udp)?;
    let query = Frame::new(C1_IP6, GATEWAY_IP6, udp(44000, 8080)).macs(C1_MAC, GATEWAY_MAC);
    let out = dp.from_container(&query.bytes())?;
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let out = out.parsed6();
    assert_eq!((out.dst(), out.dport()), (C2_IP6, 80));
    assert_eq!(out.src(), GATEWAY_IP6);
    assert_valid(&out);
    Ok(())
}

#[test]
fn what_the_kernel_must_answer_or_nobody_asked_for_is_not_forwarded() -> Result<()> {
    let dp = datapath()?;
    // Hop limit 1: the kernel sends Time Exceeded.
    let mut last_hop = from_c1(tcp(36000, 80, TCP_SYN));
    last_hop.ttl = 1;
    let bytes = last_hop.bytes();
    let before = dp.counter(stat::PASS_TTL)?;
    let out = dp.from_container(&bytes)?;
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(out.frame, bytes, "untouched");
    assert_eq!(dp.counter(stat::PASS_TTL)?, before + 1);

    // From outside, into a container network, in no flow: dropped.
    let before = dp.counter(stat::DROP_UNSOLICITED)?;
    let stray = Frame::new(OUTSIDE_IP6, C1_IP6, tcp(50000, 22, TCP_SYN));
    assert_eq!(dp.from_uplink(&stray.bytes())?.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(stat::DROP_UNSOLICITED)?, before + 1);
    // To the host, no published port: the host's.
    let ping = from_outside(L4::IcmpEcho {
        request: true,
        id: 9,
        seq: 1,
    });
    let bytes = ping.bytes();
    let out = dp.from_uplink(&bytes)?;
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(out.frame, bytes);
    assert_eq!(dp.counter(stat::FLOW_CREATED)?, 0);
    Ok(())
}
