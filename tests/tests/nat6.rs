//! Issue 14: the IPv6 twins of the NAT suite (nat.rs) on real namespaces,
//! real programs and real packets: NAT66 masquerade of TCP, UDP and ping,
//! published ports on both families with the same host port, binding to the
//! host's IPv6 address, hairpin, Path MTU discovery through NAT66, and a
//! container that lies (a spoofed source, a router advertisement). The
//! address plan and container to container are in ipv6.rs.
use std::time::Duration;

use netpath_tests::{Lab, Netns, Server, curl, http_source, ping, run_timeout, udp_source, url};

netpath_tests::with_each_accel!(
    containers_masquerade_tcp_udp_and_ping_to_the_hosts_ipv6_address,
    a_published_port_answers_on_both_families_with_the_clients_address,
    a_mapping_bound_to_the_hosts_ipv6_address_answers_there_only,
    hairpin_over_ipv6_reaches_the_container_from_its_gateway,
    path_mtu_discovery_works_through_nat66,
    a_container_cannot_spoof_its_ipv6_source_or_advertise_itself_as_router,
);

/// The address part of a server's "ip:port" record; an IPv4 client of a
/// server bound to `::` shows as `::ffff:a.b.c.d`.
fn source_ip(source: &str) -> &str {
    let ip = source.rsplit_once(':').map_or(source, |(ip, _)| ip);
    ip.strip_prefix("::ffff:").unwrap_or(ip)
}

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.counter(name).unwrap_or(0)
}

/// netpath up in `accel` with `n` containers; the outside wire delivers
/// full checksums, as a NIC does.
fn lab_with(accel: &str, n: usize) -> (Lab, Vec<String>) {
    let lab = Lab::new();
    lab.outside
        .exec(&["ethtool", "-K", Lab::OUTSIDE_IF, "tx", "off"])
        .expect_ok("checksums on the outside wire");
    lab.up_ok(&["--accel", accel]);
    let names: Vec<String> = (0..n)
        .map(|i| {
            let name = lab.container_name(&format!("c{i}"));
            lab.container_add_ok(&name, &[]);
            name
        })
        .collect();
    (lab, names)
}

fn ip6_of(lab: &Lab, name: &str) -> String {
    lab.container_ip6(name).expect("the container has IPv6").0
}

fn gateway6(lab: &Lab) -> String {
    lab.netpath_json(&["status"])["gateway6"]
        .as_str()
        .expect("status has gateway6")
        .to_owned()
}

fn containers_masquerade_tcp_udp_and_ping_to_the_hosts_ipv6_address(accel: &str) {
    let (lab, names) = lab_with(accel, 2);
    let http = Server::http(&lab.outside, "::", 0);
    let udp = Server::udp_echo(&lab.outside, "::", 0);
    for name in &names {
        let seen = http_source(lab.container(name), &url(Lab::OUTSIDE_IP6, http.port()))
            .expect("TCP over NAT66");
        assert_eq!(source_ip(&seen), Lab::HOST_IP6, "{seen}");
        let seen =
            udp_source(lab.container(name), Lab::OUTSIDE_IP6, udp.port()).expect("UDP over NAT66");
        assert_eq!(source_ip(&seen), Lab::HOST_IP6, "{seen}");
        ping(lab.container(name), Lab::REMOTE_IP6).expect_ok("ping6 through NAT66");
    }
    let flows = lab.netpath_json(&["flows"]);
    let flows = flows.as_array().expect("flows is a list");
    assert!(
        flows.iter().any(|f| f["kind"] == "masquerade"
            && f["proto"] == "tcp"
            && f["translated"]["src"] == Lab::HOST_IP6),
        "an IPv6 masquerade flow to the host's address: {flows:?}"
    );
    assert!(
        flows
            .iter()
            .any(|f| f["proto"] == "icmp" && f["translated"]["src"] == Lab::HOST_IP6),
        "the ping's flow: {flows:?}"
    );
}

fn a_published_port_answers_on_both_families_with_the_clients_address(accel: &str) {
    let (lab, names) = lab_with(accel, 1);
    let a = &names[0];
    let http = Server::http(lab.container(a), "::", 8001);
    let udp = Server::udp_echo(lab.container(a), "::", 5353);
    lab.netpath(&["publish", "add", a, "8001:8001", "15353:5353/udp"])
        .expect_ok("publish");
    // One host port, both families, each with the client's own address.
    let seen = http_source(&lab.outside, &url(Lab::HOST_IP6, 8001)).expect("IPv6 client");
    assert_eq!(source_ip(&seen), Lab::OUTSIDE_IP6, "{seen}");
    assert_eq!(http.last_client_ip().as_deref(), Some(Lab::OUTSIDE_IP6));
    let seen = http_source(&lab.outside, &url(Lab::HOST_IP, 8001)).expect("IPv4 client");
    assert_eq!(source_ip(&seen), Lab::OUTSIDE_IP, "{seen}");
    let seen = udp_source(&lab.outside, Lab::HOST_IP6, 15353).expect("UDP over IPv6");
    assert_eq!(source_ip(&seen), Lab::OUTSIDE_IP6, "{seen}");
    drop(udp);
    let flows = lab.netpath_json(&["flows"]);
    assert!(
        flows
            .as_array()
            .expect("list")
            .iter()
            .any(|f| f["kind"] == "dnat"
                && f["original"]["src"] == Lab::OUTSIDE_IP6
                && f["translated"]["dst"] == ip6_of(&lab, a)),
        "the IPv6 DNAT flow: {flows}"
    );
    if accel == "xdp" {
        // XDP passes IPv6 up to TC, which translates it.
        assert!(counter(&lab, "xdp_pass") > 0);
    }
}

fn a_mapping_bound_to_the_hosts_ipv6_address_answers_there_only(accel: &str) {
    let (lab, names) = lab_with(accel, 1);
    let a = &names[0];
    let _http = Server::http(lab.container(a), "::", 80);
    lab.netpath(&["publish", "add", a, &format!("[{}]:8081:80", Lab::HOST_IP6)])
        .expect_ok("publish on the host's IPv6 address");
    http_source(&lab.outside, &url(Lab::HOST_IP6, 8081)).expect("bound address answers");
    let v4 = curl(&lab.outside, &[&url(Lab::HOST_IP, 8081)]);
    assert!(!v4.success(), "IPv4 is not published: {v4}");
}

fn hairpin_over_ipv6_reaches_the_container_from_its_gateway(accel: &str) {
    let (lab, names) = lab_with(accel, 2);
    let (a, b) = (&names[0], &names[1]);
    let _http = Server::http(lab.container(a), "::", 80);
    lab.netpath(&["publish", "add", a, "8080:80"])
        .expect_ok("publish");
    let gateway6 = gateway6(&lab);
    for from in [b, a] {
        let seen = http_source(lab.container(from), &url(Lab::HOST_IP6, 8080))
            .expect("hairpin through the host's IPv6 address");
        assert_eq!(source_ip(&seen), gateway6, "from {from}: {seen}");
    }
}

/// The outside routes to a far side over a link 1280 bytes wide its way
/// and 1500 the other (so the far side's MSS says nothing of it): a
/// container's large upload there gets an ICMPv6 Packet Too Big from the
/// outside, addressed to the host's address (NAT66). Translated back to the
/// container, it lowers its path MTU and the upload completes; untranslated,
/// the upload would hang (a PMTU black hole).
fn path_mtu_discovery_works_through_nat66(accel: &str) {
    let (lab, names) = lab_with(accel, 1);
    let a = &names[0];
    let far = Netns::new("npr");
    let (o, r) = ("mtu0", "mtu1");
    lab.outside
        .exec(&[
            "ip",
            "link",
            "add",
            o,
            "mtu",
            "1280",
            "type",
            "veth",
            "peer",
            "name",
            r,
            "netns",
            far.name(),
        ])
        .expect_ok("the narrow link");
    for (ns, dev, addr) in [
        (&lab.outside, o, "2001:db8:1280::1/64"),
        (&far, r, "2001:db8:1280::2/64"),
    ] {
        ns.exec(&["ip", "addr", "add", addr, "dev", dev, "nodad"])
            .expect_ok("address");
        ns.exec(&["ip", "link", "set", dev, "up"]).expect_ok("up");
    }
    far.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:1280::1",
    ])
    .expect_ok("far side's route");
    lab.outside
        .exec(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        ])
        .expect_ok("the outside routes");
    let server = Server::http(&far, "::", 0);
    let before = counter(&lab, "icmp_error_translated");
    let upload = format!(
        "head -c 300000 /dev/zero | curl -g -s --max-time 20 --data-binary @- {}",
        url("2001:db8:1280::2", server.port())
    );
    let mut post = lab.container(a).command("sh");
    post.args(["-c", &upload]);
    let out = run_timeout(&mut post, Duration::from_secs(30));
    out.expect_ok("a large upload across the narrow link");
    assert!(
        out.stdout.trim().ends_with(" 300000"),
        "the server got every byte: {}",
        out.stdout
    );
    assert!(
        out.stdout.starts_with(&format!("{}:", Lab::HOST_IP6)),
        "through NAT66: {}",
        out.stdout
    );
    lab.wait_counter("icmp_error_translated", before + 1);
}

/// Sends raw frames from a container's eth0 (AF_PACKET): a UDP datagram
/// with a spoofed IPv6 source to the outside, and a router advertisement
/// to all nodes. Both must die on the container's veth.
const LIAR_PY: &str = r#"
import socket, struct, sys
own_mac, gw_mac, spoofed, outside, own_ll = sys.argv[1:6]
mac = lambda m: bytes.fromhex(m.replace(":", ""))
def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def ip6(src, dst, nh, payload):
    s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    pseudo = s + d + struct.pack("!I3xB", len(payload), nh)
    c = csum(pseudo + payload)
    payload = payload[:csum_off[nh]] + struct.pack("!H", c) + payload[csum_off[nh] + 2:]
    return struct.pack("!IHBB", 6 << 28, len(payload), nh, 255) + s + d + payload
csum_off = {17: 6, 58: 2}
udp = struct.pack("!HHHH", 40000, 9999, 8 + 5, 0) + b"spoof"
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind(("eth0", 0))
eth = lambda dst: mac(dst) + mac(own_mac) + b"\x86\xdd"
sock.send(eth(gw_mac) + ip6(spoofed, outside, 17, udp))
sock.send(eth("33:33:00:00:00:01") + ip6(own_ll, "ff02::1", 58, ra))
"#;

fn a_container_cannot_spoof_its_ipv6_source_or_advertise_itself_as_router(accel: &str) {
    let (lab, names) = lab_with(accel, 2);
    let (a, b) = (&names[0], &names[1]);
    let b6 = ip6_of(&lab, b);
    // MACs from `ip link` in each netns (sysfs shows the root netns's).
    let mac_in = |out: netpath_tests::CmdOutput| -> String {
        out.expect_ok("ip link show");
        out.stdout
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("an Ethernet address")
            .to_owned()
    };
    let own_mac = mac_in(lab.container(a).exec("ip", &["-o", "link", "show", "eth0"]));
    let bridge_mac = mac_in(lab.host.exec(&["ip", "-o", "link", "show", &lab.bridge()]));
    let own_ll = lab
        .container_link_local(a)
        .expect("a has a link-local address");
    // The outside listens on the datagram's port: nothing may arrive.
    let listener = Server::udp_echo(&lab.outside, "::", 9999);
    let spoofed_before = counter(&lab, "drop_spoofed_source");
    let ra_before = counter(&lab, "drop_router_message");
    lab.container(a)
        .exec(
            "python3",
            &[
                "-c",
                LIAR_PY,
                &own_mac,
                &bridge_mac,
                &b6,
                Lab::OUTSIDE_IP6,
                &own_ll,
            ],
        )
        .expect_ok("sending the frames");
    lab.wait_counter("drop_spoofed_source", spoofed_before + 1);
    lab.wait_counter("drop_router_message", ra_before + 1);
    assert_eq!(
        listener.last_client_ip(),
        None,
        "the spoofed datagram reached the outside"
    );
    // b took no route from a's advertisement.
    let routes = lab.container(b).exec("ip", &["-6", "route", "show"]);
    assert!(
        !routes.stdout.contains(&own_ll),
        "b routes through a: {routes}"
    );
    // Legitimate traffic flows on.
    let http = Server::http(&lab.outside, "::", 0);
    http_source(lab.container(a), &url(Lab::OUTSIDE_IP6, http.port()))
        .expect("a still reaches the outside");
}
