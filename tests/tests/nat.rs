//! End to end: the seed's NAT scenario on real namespaces, real programs and
//! real packets, with netpath's eBPF datapath in place of iptables.
use std::{thread, time::Duration};

use netpath_tests::{
    Lab, Place, Server, curl, http_source, ipv6_client, ping, ping_ok, udp_request_from, udp_source,
};

const WAIT: Duration = Duration::from_secs(10);

netpath_tests::with_each_accel!(
    containers_masquerade_to_the_outside_as_the_host,
    published_port_reaches_the_container_with_the_client_address,
    port_range_and_host_ip_binding,
    host_reaches_published_ports_through_socket_hooks_only_in_its_netns,
    hairpin_through_the_host_address_works_for_others_and_itself,
    same_source_port_from_several_containers_gets_distinct_snat_ports,
    container_to_container_takes_the_redirect_peer_path,
    removing_a_mapping_flushes_its_flows_and_nothing_of_iptables_is_used,
    fragmented_datagrams_are_translated_both_ways,
);

/// A lab with netpath up (uplink translations in `accel`) and two
/// containers; returns their names.
fn lab_with_two_containers(accel: &str) -> (Lab, String, String) {
    let lab = Lab::new();
    // The outside is a real wire: frames arrive with full checksums, as from
    // a NIC, not veth's CHECKSUM_PARTIAL (which XDP cannot see or keep).
    lab.outside
        .exec(&["ethtool", "-K", Lab::OUTSIDE_IF, "tx", "off"])
        .expect_ok("checksums on the outside wire");
    lab.up_ok(&["--accel", accel]);
    let a = lab.container_name("a");
    let b = lab.container_name("b");
    lab.container_add_ok(&a, &[]);
    lab.container_add_ok(&b, &[]);
    (lab, a, b)
}

/// `n` HTTP/1.0 requests in a row (the server closes first, so it keeps each
/// connection's tuple in TIME_WAIT); prints the source the server saw for each.
const SEQUENTIAL_GETS_PY: &str = r#"
import socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    s = socket.create_connection((ip, port), timeout=5)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        data += d
    s.close()
    print(data.split(b"\r\n\r\n", 1)[1].decode())
"#;

/// A tuple the outside server holds in TIME_WAIT for one container's
/// connection is not handed to another container's: the server would check
/// the new SYN against the old socket's timestamps (PAWS), reject it, and the
/// client would retry a second later.
#[test]
fn a_servers_time_wait_tuple_is_not_handed_to_another_container() {
    let lab = Lab::new();
    // 400 ports, of which Linux's connect() uses the even ones first: the
    // second container's choices collide with the first's.
    lab.up_ok(&["--snat-ports", "40000-40399"]);
    let a = lab.container_name("a");
    let b = lab.container_name("b");
    lab.container_add_ok(&a, &[]);
    lab.container_add_ok(&b, &[]);
    let http = Server::http(&lab.outside, "0.0.0.0", 0);
    let port = http.port().to_string();
    let sources = |name: &str| -> std::collections::HashSet<String> {
        let out = lab.container(name).exec(
            "python3",
            &["-c", SEQUENTIAL_GETS_PY, Lab::OUTSIDE_IP, &port, "100"],
        );
        out.expect_ok("100 requests in a row");
        assert_eq!(out.stdout.lines().count(), 100, "every request answered");
        // A container may reuse its own tuples: its timestamps go on.
        out.stdout.lines().map(|l| l.trim().to_string()).collect()
    };
    let from_a = sources(&a);
    let from_b = sources(&b);
    let shared: Vec<&String> = from_a.intersection(&from_b).collect();
    assert!(
        shared.is_empty(),
        "tuples still in the server's TIME_WAIT went to another container: {shared:?}"
    );
    let syn_retransmits = lab
        .container(&b)
        .exec("nstat", &["-asz", "TcpExtTCPSynRetrans"]);
    let retransmits: u64 = syn_retransmits
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("TcpExtTCPSynRetrans"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(
        retransmits, 0,
        "no SYN of the second container was rejected"
    );
}

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.counter(name)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

fn containers_masquerade_to_the_outside_as_the_host(accel: &str) {
    let (lab, a, b) = lab_with_two_containers(accel);
    let http = Server::http(&lab.outside, "0.0.0.0", 0);
    let udp = Server::udp_echo(&lab.outside, "0.0.0.0", 0);
    let url = format!("http://{}:{}/", Lab::OUTSIDE_IP, http.port());
    for name in [&a, &b] {
        let src =
            http_source(lab.container(name), &url).expect("container reaches the outside over TCP");
        assert!(
            src.starts_with(&format!("{}:", Lab::HOST_IP)),
            "server saw {src}, not the host's address"
        );
        let src =
            udp_source(lab.container(name), Lab::OUTSIDE_IP, udp.port()).expect("UDP round trip");
        assert!(
            src.starts_with(&format!("{}:", Lab::HOST_IP)),
            "UDP server saw {src}"
        );
        ping(lab.container(name), Lab::REMOTE_IP).expect_ok("ping through masquerade");
    }
    // Containers take ephemeral ports from the SNAT range, so masquerade keeps
    // their source ports.
    let range = lab
        .container(&a)
        .exec("cat", &["/proc/sys/net/ipv4/ip_local_port_range"]);
    assert_eq!(
        range.stdout.split_whitespace().collect::<Vec<_>>(),
        ["40000", "49999"]
    );
    // The flows are in the conntrack map, translated to the host's address.
    let flows = lab.netpath_json(&["flows"]);
    let flows = flows.as_array().expect("flows is a list");
    assert!(flows.iter().any(|f| f["kind"] == "masquerade"
        && f["proto"] == "tcp"
        && f["translated"]["src"] == Lab::HOST_IP
        && f["translated"]["sport"] == f["original"]["sport"]));
    assert!(flows.iter().any(|f| f["proto"] == "icmp"));
    assert!(
        counter(&lab, "redirect") + counter(&lab, "redirect_neigh") > 0,
        "fast path used"
    );
}

fn published_port_reaches_the_container_with_the_client_address(accel: &str) {
    let (lab, a, _b) = lab_with_two_containers(accel);
    let server = Server::http(lab.container(&a), "0.0.0.0", 8001);
    lab.netpath(&["publish", "add", &a, "8001:8001"])
        .expect_ok("publish");
    let url = format!("http://{}:8001/", Lab::HOST_IP);
    let src = http_source(&lab.outside, &url).expect("outside reaches the published port");
    assert!(
        src.starts_with(&format!("{}:", Lab::OUTSIDE_IP)),
        "the container must see the client's real address, saw {src}"
    );
    assert_eq!(server.last_client_ip().as_deref(), Some(Lab::OUTSIDE_IP));
    if accel == "xdp" {
        assert!(
            counter(&lab, "xdp_redirect") > 0,
            "the XDP program translated and redirected"
        );
    }

    // UDP, a range, and a mapping bound to one address.
    let udp = Server::udp_echo(lab.container(&a), "0.0.0.0", 5353);
    lab.netpath(&["publish", "add", &a, "15353:5353/udp"])
        .expect_ok("publish udp");
    let src = udp_source(&lab.outside, Lab::HOST_IP, 15353).expect("UDP through a published port");
    assert!(src.starts_with(Lab::OUTSIDE_IP));
    drop(udp);

    let ls = lab.netpath_json(&["publish", "ls"]);
    let ls = ls.as_array().expect("list");
    assert_eq!(ls.len(), 2, "publish ls shows what PORTS holds: {ls:?}");

    // Taken ports are refused.
    let again = lab.netpath(&["publish", "add", &a, "8001:80"]);
    again.expect_fail("publishing a taken port");
    assert!(
        again.stderr.contains("already published"),
        "{}",
        again.stderr
    );
}

fn port_range_and_host_ip_binding(accel: &str) {
    let (lab, a, _b) = lab_with_two_containers(accel);
    let s1 = Server::http(lab.container(&a), "0.0.0.0", 7001);
    let s2 = Server::http(lab.container(&a), "0.0.0.0", 7002);
    lab.netpath(&["publish", "add", &a, "9001-9002:7001-7002"])
        .expect_ok("range");
    for port in [9001, 9002] {
        http_source(&lab.outside, &format!("http://{}:{port}/", Lab::HOST_IP))
            .expect("range member");
    }
    drop((s1, s2));
    let bound = Server::http(lab.container(&a), "0.0.0.0", 7003);
    lab.netpath(&["publish", "add", &a, &format!("{}:9003:7003", Lab::HOST_IP)])
        .expect_ok("bound");
    http_source(&lab.outside, &format!("http://{}:9003/", Lab::HOST_IP))
        .expect("answers on its address");
    drop(bound);
}

fn host_reaches_published_ports_through_socket_hooks_only_in_its_netns(accel: &str) {
    let (lab, a, _b) = lab_with_two_containers(accel);
    let _server = Server::http(lab.container(&a), "0.0.0.0", 8080);
    lab.netpath(&["publish", "add", &a, "18080:8080"])
        .expect_ok("publish");
    let host = lab.host_in_cgroup();
    for addr in [Lab::HOST_IP, "127.0.0.1"] {
        let url = format!("http://{addr}:18080/");
        http_source(host.clone(), &url).unwrap_or_else(|| panic!("host process reaches {url}"));
    }
    // Another netns in the same cgroup: its 127.0.0.1:18080 is its own, and
    // nothing listens there.
    let other = Place::netns(lab.outside.name().to_string()).in_cgroup(lab.cgroup_path());
    let out = curl(other, &["http://127.0.0.1:18080/"]);
    assert!(
        !out.success(),
        "the hooks must leave other namespaces alone"
    );
}

/// Host IPv6 sockets asking for an IPv4 address (v4-mapped) or `[::1]` reach
/// published ports too, and see the address they asked for; only in the
/// instance's host netns. The servers are dual-stack: with IPv6 on, `[::1]`
/// leads to the container's IPv6 address (see `ipv6_host.rs`).
#[test]
fn host_ipv6_sockets_reach_published_ports_through_socket_hooks_only_in_its_netns() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let _http = Server::http(lab.container(&a), "::", 8080);
    let _echo = Server::udp_echo(lab.container(&a), "::", 5353);
    lab.netpath(&["publish", "add", &a, "18080:8080"])
        .expect_ok("publish tcp");
    lab.netpath(&["publish", "add", &a, "15353:5353/udp"])
        .expect_ok("publish udp");
    let host = lab.host_in_cgroup();
    let host_mapped = format!("::ffff:{}", Lab::HOST_IP);
    let cases = [
        ("tcp", "::ffff:127.0.0.1", 18080),
        ("tcp", host_mapped.as_str(), 18080),
        ("tcp", "::1", 18080),
        ("udp", "::ffff:127.0.0.1", 15353),
        ("udp", host_mapped.as_str(), 15353),
        ("udp-connected", "::1", 15353),
    ];
    for (mode, addr, port) in cases {
        let out = ipv6_client(host.clone(), mode, addr, port);
        out.expect_ok(&format!("{mode} to [{addr}]:{port} from the host"));
        let peer = out.stdout.lines().next().unwrap_or_default();
        assert_eq!(
            peer,
            format!("{addr} {port}"),
            "{mode}: the socket sees the address it asked for\n{out}"
        );
        assert!(
            out.stdout.lines().nth(1).is_some_and(|l| l.contains(':')),
            "{mode} to [{addr}]:{port}: the container answered with the source it saw\n{out}"
        );
    }
    // Another netns in the same cgroup: nothing listens on its own loopback.
    let other = Place::netns(lab.outside.name().to_string()).in_cgroup(lab.cgroup_path());
    for addr in ["::ffff:127.0.0.1", "::1"] {
        let out = ipv6_client(other.clone(), "tcp", addr, 18080);
        assert!(
            !out.success() && out.stderr.contains("ConnectionRefused"),
            "the hooks must leave other namespaces alone\n{out}"
        );
    }
}

fn same_source_port_from_several_containers_gets_distinct_snat_ports(accel: &str) {
    let (lab, a, b) = lab_with_two_containers(accel);
    let c = lab.container_name("c");
    lab.container_add_ok(&c, &[]);
    let echo = Server::udp_echo(&lab.outside, "0.0.0.0", 0);
    let seen: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = [&a, &b, &c]
            .into_iter()
            .map(|name| {
                let lab = &lab;
                let echo = &echo;
                s.spawn(move || {
                    let out = udp_request_from(
                        lab.container(name),
                        33333,
                        Lab::OUTSIDE_IP,
                        echo.port(),
                        "x",
                    );
                    out.expect_ok("UDP from a shared source port");
                    out.stdout
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let distinct: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 3, "three flows, three SNAT ports: {seen:?}");
    for src in &seen {
        let (ip, port) = src.rsplit_once(':').expect("ip:port");
        assert_eq!(ip, Lab::HOST_IP);
        let port: u16 = port.parse().expect("port");
        assert!(
            (40000..=49999).contains(&port),
            "SNAT port {port} from the reserved range"
        );
    }
}

fn hairpin_through_the_host_address_works_for_others_and_itself(accel: &str) {
    let (lab, a, b) = lab_with_two_containers(accel);
    let _server = Server::http(lab.container(&a), "0.0.0.0", 8002);
    lab.netpath(&["publish", "add", &a, "8002:8002"])
        .expect_ok("publish");
    let url = format!("http://{}:8002/", Lab::HOST_IP);
    let from_b =
        http_source(lab.container(&b), &url).expect("B reaches A through the host's address");
    assert!(
        from_b.starts_with("10.77.0.1:"),
        "hairpin SNATs to the gateway, saw {from_b}"
    );
    http_source(lab.container(&a), &url).expect("A reaches itself through the host's address");
    let flows = lab.netpath_json(&["flows"]);
    assert!(
        flows
            .as_array()
            .expect("list")
            .iter()
            .any(|f| f["kind"] == "hairpin")
    );
}

fn container_to_container_takes_the_redirect_peer_path(accel: &str) {
    let (lab, a, b) = lab_with_two_containers(accel);
    let b_ip = lab.container_ip(&b).expect("B has an address");
    let before = counter(&lab, "redirect_peer");
    assert!(ping_ok(lab.container(&a), &b_ip));
    let server = Server::http(lab.container(&b), "0.0.0.0", 80);
    let src = http_source(lab.container(&a), &format!("http://{b_ip}:80/"))
        .expect("TCP between containers");
    let a_ip = lab.container_ip(&a).expect("A's address");
    assert!(
        src.starts_with(&format!("{a_ip}:")),
        "no NAT between containers: {src}"
    );
    drop(server);
    assert!(
        counter(&lab, "redirect_peer") > before,
        "packets went through bpf_redirect_peer"
    );
}

fn removing_a_mapping_flushes_its_flows_and_nothing_of_iptables_is_used(accel: &str) {
    let (lab, a, _b) = lab_with_two_containers(accel);
    let udp = Server::udp_echo(lab.container(&a), "0.0.0.0", 6000);
    lab.netpath(&["publish", "add", &a, "16000:6000/udp"])
        .expect_ok("publish");
    udp_source(&lab.outside, Lab::HOST_IP, 16000).expect("UDP through the mapping");
    let dnat = |lab: &Lab| {
        lab.netpath_json(&["flows"])
            .as_array()
            .expect("list")
            .iter()
            .filter(|f| f["kind"] == "dnat" && f["original"]["dport"] == 16000)
            .count()
    };
    assert_eq!(dnat(&lab), 1);
    lab.netpath(&["publish", "rm", "16000/udp"])
        .expect_ok("unpublish");
    assert_eq!(
        dnat(&lab),
        0,
        "a removed mapping leaves no stale UDP flow (Docker's bug)"
    );
    drop(udp);
    assert!(
        udp_source(&lab.outside, Lab::HOST_IP, 16000).is_none(),
        "unpublished means unreachable"
    );

    let nat = lab.host.exec(&["iptables-save", "-t", "nat"]);
    assert!(
        !nat.stdout.contains("-j DNAT") && !nat.stdout.contains("MASQUERADE"),
        "{}",
        nat.stdout
    );
    let _ = WAIT;
}

/// Issue 10, item 6: a datagram larger than the MTU travels in fragments;
/// every fragment is translated as its flow, outbound (masquerade) and
/// inbound (a published port), and the replies, fragmented too, come back.
fn fragmented_datagrams_are_translated_both_ways(accel: &str) {
    let (lab, a, _b) = lab_with_two_containers(accel);
    let big = "x".repeat(3000);
    let prefix_len = |out: &str| out.find('\n').map_or(0, |i| i + 1);

    let outside_echo = Server::udp_echo(&lab.outside, "0.0.0.0", 0);
    let out = udp_request_from(
        lab.container(&a),
        0,
        Lab::OUTSIDE_IP,
        outside_echo.port(),
        &big,
    );
    out.expect_ok("a fragmented datagram out and its fragmented answer back");
    assert!(
        out.stdout.starts_with(&format!("{}:", Lab::HOST_IP)),
        "the outside saw {:?}, not the host's address",
        out.stdout.lines().next()
    );
    assert_eq!(out.stdout.len() - prefix_len(&out.stdout), big.len());

    let _echo = Server::udp_echo(lab.container(&a), "0.0.0.0", 5353);
    lab.netpath(&["publish", "add", &a, "15353:5353/udp"])
        .expect_ok("publish udp");
    let out = udp_request_from(&lab.outside, 0, Lab::HOST_IP, 15353, &big);
    out.expect_ok("a fragmented datagram to a published port and back");
    assert!(
        out.stdout.starts_with(&format!("{}:", Lab::OUTSIDE_IP)),
        "the container saw {:?}",
        out.stdout.lines().next()
    );
    assert_eq!(out.stdout.len() - prefix_len(&out.stdout), big.len());
}

/// A veth uplink whose peer leaves checksums to offload (veth's default)
/// hands XDP CHECKSUM_PARTIAL segments it can't translate: `xdp_uplink`
/// sees the first handshake segment with a partial checksum and passes
/// everything up to TC from then on, so published ports and masquerade
/// keep working, and `status` says so.
#[test]
fn xdp_falls_back_to_tc_when_the_uplink_delivers_partial_checksums() {
    let lab = Lab::new();
    lab.up_ok(&["--accel", "xdp"]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &["-p", "8002:8002"]);
    let server = Server::http(lab.container(&a), "0.0.0.0", 8002);
    let url = format!("http://{}:8002/", Lab::HOST_IP);
    let src = http_source(&lab.outside, &url)
        .expect("the published port works though the outside sends partial checksums");
    assert!(src.starts_with(&format!("{}:", Lab::OUTSIDE_IP)), "{src}");
    assert_eq!(server.last_client_ip().as_deref(), Some(Lab::OUTSIDE_IP));
    assert!(
        counter(&lab, "xdp_pass_fallback") > 0,
        "XDP passed the flow's later packets up"
    );
    let status = lab.netpath_json(&["status"]);
    assert_eq!(status["xdp_fallen_back_to_tc"], true, "{status}");

    let outside = Server::http(&lab.outside, "0.0.0.0", 0);
    let url = format!("http://{}:{}/", Lab::OUTSIDE_IP, outside.port());
    let src = http_source(lab.container(&a), &url).expect("masquerade works too");
    assert!(src.starts_with(&format!("{}:", Lab::HOST_IP)), "{src}");
}
