//! The host's IPv6 sockets reaching published ports through the socket hooks
//! (`connect6`, `sendmsg6`, `recvmsg6`, `getpeername6`): on the host's IPv6
//! address, the IPv6 gateway and `[::1]` they reach the container's IPv6
//! address and see the address they asked for; a port published on IPv4
//! only is still reached on `[::1]`, over IPv4; only in the instance's host
//! netns.
use netpath_tests::{Lab, Place, Server, ipv6_client};

/// `mode` (see [`ipv6_client`]) to `addr` `port` from `place` works and the
/// socket sees `addr` `port` as its peer; returns the source the container
/// saw.
#[track_caller]
fn reaches(place: &Place, mode: &str, addr: &str, port: u16) -> String {
    let out = ipv6_client(place.clone(), mode, addr, port);
    out.expect_ok(&format!("{mode} to [{addr}]:{port}"));
    let mut lines = out.stdout.lines();
    assert_eq!(
        lines.next().unwrap_or_default(),
        format!("{addr} {port}"),
        "{mode} to [{addr}]:{port}: the socket sees the address it asked for\n{out}"
    );
    lines
        .next()
        .unwrap_or_else(|| panic!("{mode} to [{addr}]:{port}: no answer\n{out}"))
        .to_owned()
}

#[track_caller]
fn refused(place: &Place, addr: &str, port: u16, why: &str) {
    let out = ipv6_client(place.clone(), "tcp", addr, port);
    assert!(
        !out.success() && out.stderr.contains("ConnectionRefused"),
        "tcp to [{addr}]:{port}: {why}\n{out}"
    );
}

#[test]
fn host_ipv6_sockets_reach_ipv6_containers_on_published_ports_only_in_its_netns() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let status = lab.netpath_json(&["status"]);
    let ipv6 = |field: &str| {
        status[field]
            .as_str()
            .unwrap_or_else(|| panic!("status shows no {field}: {status}"))
            .to_owned()
    };
    let (host_ip6, gateway6) = (ipv6("host_ip6"), ipv6("gateway6"));
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    // Dual-stack servers: "::" takes IPv4 too, as v4-mapped clients.
    let _http = Server::http(lab.container(&a), "::", 8080);
    let _echo = Server::udp_echo(lab.container(&a), "::", 5353);
    let bound = format!("[{host_ip6}]:18082:8080");
    for spec in ["18080:8080", "15353:5353/udp", &bound, "0.0.0.0:18081:8080"] {
        lab.netpath(&["publish", "add", &a, spec])
            .expect_ok(&format!("publish {spec}"));
    }

    let host = lab.host_in_cgroup();
    let over_ipv6 = format!("{gateway6}:");
    for addr in [&host_ip6, &gateway6, "::1"] {
        for (mode, port) in [("tcp", 18080), ("udp", 15353), ("udp-connected", 15353)] {
            let seen = reaches(&host, mode, addr, port);
            assert!(
                seen.starts_with(&over_ipv6),
                "{mode} to [{addr}]:{port} reaches the container's IPv6 address, from the host's on its link; it saw {seen}"
            );
        }
    }
    // A mapping bound to the host's IPv6 address answers there only.
    reaches(&host, "tcp", &host_ip6, 18082);
    refused(&host, "::1", 18082, "a mapping bound to another address");
    // Published on IPv4 only: [::1] and v4-mapped addresses lead to the
    // container's IPv4 address, through a dual-stack socket.
    for addr in ["::1", "::ffff:127.0.0.1"] {
        let seen = reaches(&host, "tcp", addr, 18081);
        assert!(
            seen.starts_with("::ffff:"),
            "tcp to [{addr}]:18081 reaches the container over IPv4, it saw {seen}"
        );
    }

    // Another netns in the same cgroup: its [::1]:18080 is its own, and
    // nothing listens there.
    let other = Place::netns(lab.outside.name().to_string()).in_cgroup(lab.cgroup_path());
    refused(
        &other,
        "::1",
        18080,
        "the hooks must leave other namespaces alone",
    );
}
