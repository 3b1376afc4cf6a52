//! The packet programs run directly through BPF_PROG_TEST_RUN on crafted frames:
//! what comes out (addresses, ports, TTL, MACs, every checksum) and the verdict.
//!
//! Each test loads its own copy of the object (maps pinned in a private bpffs
//! directory) and runs inside its own network namespace, where a veth pair and
//! a permanent neighbour give `bpf_fib_lookup` a deterministic answer.
use std::{fs, net::Ipv4Addr, os::fd::AsRawFd, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader, TestRun,
    maps::{Array, HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRunOptions},
};
use netpath::datapath::{EBPF_OBJECT, has_coarse_clock};
use netpath_common::{
    Config, Endpoint, FlowEntry, FlowKey, IPPROTO_TCP, PortKey, PortTarget, names, stat,
};
use netpath_tests::{
    Netns,
    packet::{Frame, L4, Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    unique_name,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const C1_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const C2_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const C1_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 1];
const C2_MAC: [u8; 6] = [0x02, 0xc2, 0, 0, 0, 2];
const GATEWAY_MAC: [u8; 6] = [0x02, 0x9a, 0, 0, 0, 1];
const OUTSIDE_MAC: [u8; 6] = [0x02, 0x0e, 0, 0, 0, 2];
const SNAT_RANGE: (u16, u16) = (40000, 49999);

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

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The calling thread inside a netns until dropped.
struct InNetns {
    original: fs::File,
}

impl InNetns {
    fn enter(ns: &Netns) -> Self {
        let original = fs::File::open("/proc/thread-self/ns/net").expect("own netns");
        let target = fs::File::open(ns.path()).expect("test netns");
        // SAFETY: valid fds; affects only this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        Self { original }
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        // SAFETY: valid fd.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// A private pin directory on bpffs, removed with everything in it.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ensure_bpffs() {
    let st = nix_statfs("/sys/fs/bpf");
    if st != Some(0xcafe4a11) {
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mounting bpffs: {}", std::io::Error::last_os_error());
    }
}

fn nix_statfs(path: &str) -> Option<i64> {
    let c = std::ffi::CString::new(path).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type)
}

/// One test's datapath: the object loaded, maps filled, in its own netns with
/// a container veth (`c0`) and an uplink veth (`u0`) whose neighbour is known.
struct Fixture {
    ebpf: Ebpf,
    container_ifindex: u32,
    uplink_ifindex: u32,
    _pins: PinDir,
    // Field order: leave the netns before deleting it.
    _inside: InNetns,
    ns: Netns,
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("name");
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(idx, 0, "no interface {name}");
    idx
}

impl Fixture {
    fn new() -> Self {
        ensure_bpffs();
        let ns = Netns::new("pk");
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        for cmd in [
            "ip link add c0 type veth peer name c1".to_string(),
            "ip link add u0 type veth peer name u1".to_string(),
            "ip link set c0 up".to_string(),
            "ip link set c1 up".to_string(),
            "ip link set u0 up".to_string(),
            "ip link set u1 up".to_string(),
            format!("ip addr add {HOST_IP}/24 dev u0"),
            format!("ip addr add {GATEWAY_IP}/16 dev c0"),
            format!(
                "ip neigh replace {OUTSIDE_IP} lladdr {} dev u0 nud permanent",
                mac(OUTSIDE_MAC)
            ),
            "sysctl -qw net.ipv4.conf.all.forwarding=1".to_string(),
        ] {
            let args: Vec<&str> = cmd.split_whitespace().collect();
            ns.exec(&args).expect_ok(&cmd);
        }
        let inside = InNetns::enter(&ns);
        let pins = PinDir(PathBuf::from("/sys/fs/bpf").join(unique_name("nppk")));
        fs::create_dir_all(&pins.0).expect("pin dir");
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins.0)
            .override_global("HAS_COARSE_CLOCK", &has_coarse_clock(), true)
            .load(EBPF_OBJECT)
            .expect("loading the eBPF object");
        let container_ifindex = ifindex("c0");
        let uplink_ifindex = ifindex("u0");
        let mut config: Array<_, Config> =
            Array::try_from(ebpf.map_mut(names::CONFIG).expect("CONFIG")).expect("CONFIG type");
        config
            .set(
                0,
                Config {
                    host_ip: wire(HOST_IP),
                    gateway_ip: wire(GATEWAY_IP),
                    subnet_addr: wire(Ipv4Addr::new(10, 77, 0, 0)),
                    subnet_mask: wire(Ipv4Addr::new(255, 255, 0, 0)),
                    uplink_ifindex,
                    bridge_ifindex: 0,
                    netns_cookie: 0,
                    snat_port_min: SNAT_RANGE.0,
                    snat_port_max: SNAT_RANGE.1,
                    flags: 0,
                    gateway_mac: GATEWAY_MAC,
                    probe_port: 0,
                },
                0,
            )
            .expect("set CONFIG");
        let mut route_gen: Array<_, u32> =
            Array::try_from(ebpf.map_mut(names::ROUTE_GEN).expect("ROUTE_GEN")).expect("type");
        route_gen.set(0, 1, 0).expect("set ROUTE_GEN");
        let mut endpoints: HashMap<_, u32, Endpoint> =
            HashMap::try_from(ebpf.map_mut(names::ENDPOINTS).expect("ENDPOINTS")).expect("type");
        for (ip, mac) in [(C1_IP, C1_MAC), (C2_IP, C2_MAC)] {
            endpoints
                .insert(
                    wire(ip),
                    Endpoint {
                        ifindex: container_ifindex,
                        mac,
                        network_id: 0,
                    },
                    0,
                )
                .expect("endpoint");
        }
        for name in [
            names::PROG_FROM_CONTAINER,
            names::PROG_FROM_UPLINK,
            names::PROG_TO_UPLINK,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("classifier");
            prog.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
        }
        Self {
            ebpf,
            container_ifindex,
            uplink_ifindex,
            _pins: pins,
            _inside: inside,
            ns,
        }
    }

    fn publish(&mut self, host_port: u16, target: Ipv4Addr, port: u16, proto: u8) {
        let mut ports: HashMap<_, PortKey, PortTarget> =
            HashMap::try_from(self.ebpf.map_mut(names::PORTS).expect("PORTS")).expect("type");
        ports
            .insert(
                PortKey {
                    host_ip: 0,
                    host_port: host_port.to_be(),
                    proto,
                    _pad: 0,
                },
                PortTarget {
                    container_ip: wire(target),
                    container_port: port.to_be(),
                    _pad: 0,
                },
                0,
            )
            .expect("publish");
    }

    fn set_snat_range(&mut self, min: u16, max: u16) {
        let mut config: Array<_, Config> =
            Array::try_from(self.ebpf.map_mut(names::CONFIG).expect("CONFIG")).expect("type");
        let mut c = config.get(&0, 0).expect("config");
        c.snat_port_min = min;
        c.snat_port_max = max;
        config.set(0, c, 0).expect("set CONFIG");
    }

    /// Sets the last-seen time of the flow whose original tuple is `key`.
    fn age_flow(&mut self, key: FlowKey, last_seen_ns: u64) {
        let mut conntrack: HashMap<_, FlowKey, FlowEntry> =
            HashMap::try_from(self.ebpf.map_mut(names::CONNTRACK).expect("CONNTRACK"))
                .expect("type");
        let mut entry = conntrack.get(&key, 0).expect("the flow exists");
        entry.last_seen_ns = last_seen_ns;
        conntrack.insert(key, entry, 0).expect("update the flow");
    }

    fn set_endpoint_mac(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        let mut endpoints: HashMap<_, u32, Endpoint> =
            HashMap::try_from(self.ebpf.map_mut(names::ENDPOINTS).expect("ENDPOINTS"))
                .expect("type");
        let mut ep = endpoints.get(&wire(ip), 0).expect("endpoint");
        ep.mac = mac;
        endpoints.insert(wire(ip), ep, 0).expect("update endpoint");
    }

    fn set_route_generation(&mut self, generation: u32) {
        let mut route_gen: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(names::ROUTE_GEN).expect("ROUTE_GEN")).expect("type");
        route_gen.set(0, generation, 0).expect("set ROUTE_GEN");
    }

    fn counter(&self, idx: u32) -> u64 {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::STATS).expect("STATS")).expect("type");
        stats.get(&idx, 0).expect("stat").iter().sum()
    }

    /// Runs `prog` on `frame` as if it arrived on `ifindex`; returns the
    /// verdict and the frame as the program left it.
    fn run(&mut self, prog: &str, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(prog)
            .expect("program")
            .try_into()
            .expect("classifier");
        // struct __sk_buff with only ifindex set (offset 40).
        let mut ctx = vec![0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn run_from_container(&mut self, frame: &Frame) -> (u32, Vec<u8>) {
        let ifindex = self.container_ifindex;
        self.run(names::PROG_FROM_CONTAINER, ifindex, &frame.bytes())
    }

    fn run_from_uplink(&mut self, frame: &Frame) -> (u32, Vec<u8>) {
        let ifindex = self.uplink_ifindex;
        self.run(names::PROG_FROM_UPLINK, ifindex, &frame.bytes())
    }
}

fn from_c1(l4: L4) -> Frame {
    Frame::new(C1_IP, OUTSIDE_IP, l4).macs(C1_MAC, GATEWAY_MAC)
}

fn assert_valid(out: &Parsed) {
    assert!(
        out.ip_header_ok(),
        "IPv4 header checksum is wrong: {:02x?}",
        out.frame
    );
    assert!(out.l4_csum_ok(), "L4 checksum is wrong: {:02x?}", out.frame);
}

#[test]
fn masquerade_tcp_rewrites_source_and_checksums_and_reply_comes_back() {
    let mut fx = Fixture::new();
    let syn = from_c1(L4::Tcp {
        sport: 33000,
        dport: 80,
        flags: TCP_SYN,
    });
    let (verdict, out) = fx.run_from_container(&syn);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "masquerade is fast-pathed to the uplink"
    );
    let out = Parsed::new(&out);
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
    .macs(OUTSIDE_MAC, [0x02, 0, 0, 0, 0, 0x01]);
    let (verdict, back) = fx.run_from_uplink(&reply);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "the reply goes straight into the container"
    );
    let back = Parsed::new(&back);
    assert_eq!(back.src(), OUTSIDE_IP);
    assert_eq!(back.dst(), C1_IP);
    assert_eq!(back.sport(), 80);
    assert_eq!(back.dport(), 33000);
    assert_eq!(back.dst_mac(), C1_MAC);
    assert_eq!(back.src_mac(), GATEWAY_MAC);
    assert_valid(&back);
}

#[test]
fn masquerade_udp_keeps_a_zero_checksum_zero_and_fixes_a_real_one() {
    let mut fx = Fixture::new();
    let zero = from_c1(L4::Udp {
        sport: 41000,
        dport: 53,
        zero_csum: true,
    });
    let (verdict, out) = fx.run_from_container(&zero);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let out = Parsed::new(&out);
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
    let (_, out) = fx.run_from_container(&real);
    let out = Parsed::new(&out);
    assert_ne!(out.udp_csum(), 0);
    assert_valid(&out);
}

#[test]
fn same_source_port_from_two_containers_gets_distinct_snat_ports() {
    let mut fx = Fixture::new();
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
    let (_, oa) = fx.run_from_container(&a);
    let (_, ob) = fx.run_from_container(&b);
    let (pa, pb) = (Parsed::new(&oa).sport(), Parsed::new(&ob).sport());
    assert_eq!(pa, 42000);
    assert_ne!(
        pa, pb,
        "the second flow must not reuse the first one's port"
    );
    assert!((SNAT_RANGE.0..=SNAT_RANGE.1).contains(&pb));
}

#[test]
fn ping_is_masqueraded_with_a_translated_echo_id() {
    let mut fx = Fixture::new();
    let echo = from_c1(L4::IcmpEcho {
        request: true,
        id: 7,
        seq: 1,
    });
    let (verdict, out) = fx.run_from_container(&echo);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let out = Parsed::new(&out);
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
    let (verdict, back) = fx.run_from_uplink(&reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let back = Parsed::new(&back);
    assert_eq!(back.dst(), C1_IP);
    assert_eq!(back.echo_id(), 7);
    assert_valid(&back);
}

#[test]
fn published_port_is_dnated_keeping_the_client_address() {
    let mut fx = Fixture::new();
    fx.publish(8080, C2_IP, 80, 6);
    let syn = Frame::new(
        OUTSIDE_IP,
        HOST_IP,
        L4::Tcp {
            sport: 50000,
            dport: 8080,
            flags: TCP_SYN,
        },
    );
    let (verdict, out) = fx.run_from_uplink(&syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let out = Parsed::new(&out);
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
    let (verdict, back) = fx.run_from_container(&reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let back = Parsed::new(&back);
    assert_eq!(back.src(), HOST_IP);
    assert_eq!(back.sport(), 8080);
    assert_eq!(back.dst(), OUTSIDE_IP);
    assert_valid(&back);
}

#[test]
fn hairpin_to_a_published_port_is_dnated_and_snated_to_the_gateway() {
    let mut fx = Fixture::new();
    fx.publish(8080, C2_IP, 80, 6);
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
    let (verdict, out) = fx.run_from_container(&syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let out = Parsed::new(&out);
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
    let (verdict, back) = fx.run_from_container(&reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let back = Parsed::new(&back);
    assert_eq!((back.src(), back.sport()), (HOST_IP, 8080));
    assert_eq!((back.dst(), back.dport()), (C1_IP, 33333));
    assert_valid(&back);
}

#[test]
fn icmp_errors_quoting_a_masqueraded_packet_are_translated_inside_and_out() {
    let mut fx = Fixture::new();
    let probe = from_c1(L4::Udp {
        sport: 20000,
        dport: 33434,
        zero_csum: false,
    });
    let (_, out) = fx.run_from_container(&probe);
    let sent = Parsed::new(&out);
    let nat_port = sent.sport();
    // Frag-needed from a router, quoting the first 28 bytes of what we sent.
    let quoted = out[14..14 + 28].to_vec();
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
    let (verdict, back) = fx.run_from_uplink(&err);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let back = Parsed::new(&back);
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
}

#[test]
fn port_unreachable_and_time_exceeded_are_translated_too() {
    let mut fx = Fixture::new();
    // A container's UDP flow to a published port: the container's reply
    // direction is what the outside client hears from; here the outside
    // client's host answers the container's masqueraded probe instead.
    for (icmp_type, code) in [(3u8, 3u8), (11, 0)] {
        let probe = from_c1(L4::Udp {
            sport: 21000 + icmp_type as u16,
            dport: 33434,
            zero_csum: false,
        });
        let (_, out) = fx.run_from_container(&probe);
        let quoted = out[14..14 + 28].to_vec();
        let err = Frame::new(
            OUTSIDE_IP,
            HOST_IP,
            L4::IcmpError {
                icmp_type,
                code,
                quoted,
            },
        );
        let (verdict, back) = fx.run_from_uplink(&err);
        assert_eq!(verdict, TC_ACT_REDIRECT, "ICMP {icmp_type}/{code}");
        let back = Parsed::new(&back);
        assert_eq!(back.dst(), C1_IP);
        assert_valid(&back);
        let inner = back.quoted();
        assert_eq!(inner.src(), C1_IP);
        assert_eq!(inner.sport(), 21000 + icmp_type as u16);
        assert!(inner.ip_header_ok());
    }
}

#[test]
fn a_containers_port_unreachable_about_a_published_flow_goes_out_as_the_host() {
    let mut fx = Fixture::new();
    fx.publish(5353, C2_IP, 53, 17);
    let query = Frame::new(
        OUTSIDE_IP,
        HOST_IP,
        L4::Udp {
            sport: 50505,
            dport: 5353,
            zero_csum: false,
        },
    );
    let (_, delivered) = fx.run_from_uplink(&query);
    // Nothing listens in the container: it answers port unreachable, quoting
    // the packet as it received it (to 10.77.0.3:53).
    let quoted = delivered[14..14 + 28].to_vec();
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
    let (verdict, out) = fx.run_from_container(&err);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let out = Parsed::new(&out);
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
}

#[test]
fn a_snat_port_in_time_wait_goes_to_no_other_connection_until_the_peer_lets_go() {
    let mut fx = Fixture::new();
    fx.set_snat_range(40000, 40000);
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
    // SYN (seq 100, with the frame's 7-byte payload) answered by a SYN-ACK
    // (seq 500), then FIN each way: TIME_WAIT.
    let finish = |fx: &mut Fixture, sport| {
        let syn_ack = from_outside(TCP_SYN | TCP_ACK, 500, 108);
        assert_eq!(fx.run_from_uplink(&syn_ack).0, TC_ACT_REDIRECT);
        fx.run_from_container(&tcp(sport, TCP_FIN | TCP_ACK, 108, 508));
        assert_eq!(
            fx.run_from_uplink(&from_outside(TCP_FIN | TCP_ACK, 508, 116))
                .0,
            TC_ACT_REDIRECT
        );
    };
    let no_port = |fx: &mut Fixture, sport, why: &str| {
        let before = fx.counter(stat::DROP_NO_SNAT_PORT);
        assert_eq!(
            fx.run_from_container(&tcp(sport, TCP_SYN, 100, 0)).0,
            TC_ACT_SHOT,
            "{why}"
        );
        assert_eq!(fx.counter(stat::DROP_NO_SNAT_PORT), before + 1, "{why}");
    };
    let gets_the_port = |fx: &mut Fixture, sport, why: &str| {
        let (verdict, out) = fx.run_from_container(&tcp(sport, TCP_SYN, 100, 0));
        assert_eq!(verdict, TC_ACT_REDIRECT, "{why}");
        assert_eq!(Parsed::new(&out).sport(), 40000, "{why}");
    };
    gets_the_port(&mut fx, 33000, "the only port");
    no_port(&mut fx, 33001, "the only port is in use");
    // Both sides finish: FIN each way, TIME_WAIT.
    finish(&mut fx, 33000);
    no_port(
        &mut fx,
        33001,
        "the peer may hold 40000 in TIME_WAIT with another socket's timestamps",
    );
    gets_the_port(
        &mut fx,
        33000,
        "the same socket tuple reopening keeps its port",
    );
    // Reset (of the reopened connection, acknowledging its SYN): no
    // TIME_WAIT anywhere, so the port is free for another socket.
    assert_eq!(
        fx.run_from_uplink(&from_outside(TCP_RST | TCP_ACK, 0, 108))
            .0,
        TC_ACT_REDIRECT
    );
    gets_the_port(&mut fx, 33001, "a reset connection's port is taken over");
    // Once idle for longer than a peer's TIME_WAIT (60 s), a finished
    // connection's port is free too.
    finish(&mut fx, 33001);
    no_port(&mut fx, 33002, "TIME_WAIT, just now");
    let now = monotonic_ns();
    if now <= 61_000_000_000 {
        eprintln!(
            "skipping the idle takeover: booted {} s ago",
            now / 1_000_000_000
        );
        return;
    }
    let key = FlowKey {
        saddr: wire(C1_IP),
        daddr: wire(OUTSIDE_IP),
        sport: 33001u16.to_be(),
        dport: 80u16.to_be(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    fx.age_flow(key, now - 61_000_000_000);
    gets_the_port(&mut fx, 33002, "TIME_WAIT, idle 61 s");
}

#[test]
fn an_established_flow_leaves_by_its_cached_next_hop_until_routes_change() {
    let mut fx = Fixture::new();
    let tcp = |flags| {
        from_c1(L4::Tcp {
            sport: 40123,
            dport: 80,
            flags,
        })
    };
    let dmac = |out: &[u8]| -> [u8; 6] { out[..6].try_into().expect("6 bytes") };
    let (verdict, out) = fx.run_from_container(&tcp(TCP_SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dmac(&out), OUTSIDE_MAC);
    // The neighbour moves; the flow keeps its cached next hop...
    let moved = [0x02, 0x0e, 0, 0, 0, 0x99];
    fx.ns
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
    let (verdict, out) = fx.run_from_container(&tcp(TCP_ACK));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    if !kernel_at_least(5, 12) {
        // The FIB reports no egress MTU before 5.12, and the MTU check needs
        // it: nothing is cached, every packet asks the FIB.
        assert_eq!(dmac(&out), moved, "no cache without the FIB's MTU");
        return;
    }
    assert_eq!(
        dmac(&out),
        OUTSIDE_MAC,
        "the cached next hop, no FIB lookup"
    );
    // ...until the route generation changes (the agent's job on netlink
    // events).
    fx.set_route_generation(2);
    let (_, out) = fx.run_from_container(&tcp(TCP_ACK));
    assert_eq!(dmac(&out), moved, "looked up again after the change");
    let (_, out) = fx.run_from_container(&tcp(TCP_ACK));
    assert_eq!(dmac(&out), moved, "and cached again");
    // A packet over the egress MTU goes to the kernel untranslated (which
    // sends the ICMP error), cached next hop or not.
    let before = fx.counter(stat::PASS_FRAG_NEEDED);
    let mut big = tcp(TCP_ACK);
    big.payload = vec![0; 1600];
    let (verdict, out) = fx.run_from_container(&big);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(fx.counter(stat::PASS_FRAG_NEEDED), before + 1);
    assert_eq!(Parsed::new(&out).src(), C1_IP, "not translated");
}

#[test]
fn a_published_flow_reaches_its_container_by_the_cached_endpoint_until_routes_change() {
    let mut fx = Fixture::new();
    fx.publish(8080, C2_IP, 80, 6);
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
    let dst_mac = |fx: &mut Fixture, flags| {
        let (verdict, out) = fx.run_from_uplink(&from_outside(flags));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        Parsed::new(&out).dst_mac()
    };
    assert_eq!(dst_mac(&mut fx, TCP_SYN), C2_MAC);
    // The endpoint changes behind the flow's back: the cache still answers...
    let renewed = [0x02, 0xc2, 0, 0, 0, 0x99];
    fx.set_endpoint_mac(C2_IP, renewed);
    assert_eq!(
        dst_mac(&mut fx, TCP_ACK),
        C2_MAC,
        "cached, no ENDPOINTS lookup"
    );
    // ...until the route generation changes (containers coming and going are
    // link changes, which the agent turns into a new generation).
    fx.set_route_generation(2);
    assert_eq!(dst_mac(&mut fx, TCP_ACK), renewed);
}

#[test]
fn spoofed_source_is_dropped_and_counted() {
    let mut fx = Fixture::new();
    let before = fx.counter(stat::DROP_SPOOFED);
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
    assert_eq!(fx.run_from_container(&spoofed).0, TC_ACT_SHOT);
    // Right address, wrong MAC.
    let wrong_mac = from_c1(L4::Udp {
        sport: 1,
        dport: 2,
        zero_csum: false,
    })
    .macs([0x02, 0xde, 0xad, 0, 0, 1], GATEWAY_MAC);
    assert_eq!(fx.run_from_container(&wrong_mac).0, TC_ACT_SHOT);
    assert_eq!(fx.counter(stat::DROP_SPOOFED), before + 2);
}

#[test]
fn ip_options_are_parsed_with_the_real_header_length() {
    let mut fx = Fixture::new();
    let mut with_options = from_c1(L4::Tcp {
        sport: 40100,
        dport: 443,
        flags: TCP_SYN,
    });
    // Four NOPs and an end-of-list: 8 bytes of options, IHL 7.
    with_options.options = vec![1, 1, 1, 1, 0, 0, 0, 0];
    let (verdict, out) = fx.run_from_container(&with_options);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let out = Parsed::new(&out);
    assert_eq!(out.ihl, 28);
    assert_eq!(out.src(), HOST_IP);
    assert_eq!(out.sport(), 40100);
    assert_eq!(out.dport(), 443);
    assert_valid(&out);
}

#[test]
fn fragments_truncated_and_bogus_headers_are_never_rewritten() {
    let mut fx = Fixture::new();
    let mut fragment = from_c1(L4::Udp {
        sport: 40200,
        dport: 53,
        zero_csum: false,
    });
    fragment.frag = (true, 0);
    let bytes = fragment.bytes();
    let before = fx.counter(stat::DROP_FRAGMENT);
    let (verdict, _) = fx.run(names::PROG_FROM_CONTAINER, fx.container_ifindex, &bytes);
    assert_eq!(
        verdict, TC_ACT_SHOT,
        "a fragment we can't translate never leaves with the container's address"
    );
    assert_eq!(fx.counter(stat::DROP_FRAGMENT), before + 1);
    let mut local = fragment.clone();
    local.dst = GATEWAY_IP;
    let bytes = local.bytes();
    let (verdict, out) = fx.run(names::PROG_FROM_CONTAINER, fx.container_ifindex, &bytes);
    assert_eq!(verdict, TC_ACT_OK, "fragments to the host go to the kernel");
    assert_eq!(out, bytes, "and untouched");

    let mut truncated = from_c1(L4::Tcp {
        sport: 40300,
        dport: 80,
        flags: TCP_SYN,
    })
    .bytes();
    truncated.truncate(14 + 20 + 10);
    let before = fx.counter(stat::DROP_MALFORMED);
    let (verdict, _) = fx.run(names::PROG_FROM_CONTAINER, fx.container_ifindex, &truncated);
    assert_eq!(
        verdict, TC_ACT_SHOT,
        "a container's broken packet is ours to drop"
    );
    assert_eq!(fx.counter(stat::DROP_MALFORMED), before + 1);

    let mut bogus = from_c1(L4::Tcp {
        sport: 40400,
        dport: 80,
        flags: TCP_SYN,
    })
    .bytes();
    bogus[14] = 0x43; // IHL 3: shorter than the fixed header
    let (verdict, _) = fx.run(names::PROG_FROM_CONTAINER, fx.container_ifindex, &bogus);
    assert_eq!(verdict, TC_ACT_SHOT);

    // On the uplink, anything we don't understand belongs to the host.
    let (verdict, out) = fx.run(names::PROG_FROM_UPLINK, fx.uplink_ifindex, &bogus);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, bogus);
}
