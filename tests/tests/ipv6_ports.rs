//! Issue 14, IPv6 dual stack: published ports on both families. `-p
//! 8080:80` writes a `PORTS` and a `PORTS6` entry with the same host port,
//! `[v6]:port:port` one IPv6 address only, an allow-list keeps a port IPv4
//! only; `publish ls` shows each mapping's families, `publish rm` and
//! `container rm` take both away. Read from the pinned maps themselves.
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap, Map, MapData};
use netpath_common::{Ip6, LAYOUT_VERSION, PortKey, PortTarget, names};
use netpath_tests::Lab;
use serde_json::Value;

/// A published port in host terms: (host address, host port, protocol
/// number) and (container address, container port).
type Port<I> = ((Option<I>, u16, u8), (I, u16));

/// One family's published ports, as the pinned map `name` holds them.
fn ports<A>(lab: &Lab, name: &str) -> Vec<Port<A::Ip>>
where
    A: netpath_common::host::HostAddr,
    PortKey<A>: aya::Pod,
    PortTarget<A>: aya::Pod,
{
    let pin = format!(
        "/sys/fs/bpf/netpath/{}/v{LAYOUT_VERSION}/{name}",
        lab.instance()
    );
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("opening {pin}: {e}"));
    let map: HashMap<_, PortKey<A>, PortTarget<A>> =
        HashMap::try_from(Map::HashMap(data)).expect("a hash map of ports");
    map.iter()
        .map(|entry| {
            let (key, target) = entry.expect("reading a port");
            (
                (key.host_ip(), key.host_port(), key.proto),
                (target.container_ip(), target.container_port()),
            )
        })
        .collect()
}

fn ports4(lab: &Lab) -> Vec<Port<Ipv4Addr>> {
    ports::<u32>(lab, names::PORTS)
}

fn ports6(lab: &Lab) -> Vec<Port<Ipv6Addr>> {
    ports::<Ip6>(lab, names::PORTS6)
}

/// The `publish ls --json` entries of host port `port`.
fn listed(lab: &Lab, port: u16) -> Vec<Value> {
    let ls = lab.netpath_json(&["publish", "ls"]);
    ls.as_array()
        .expect("publish ls --json is a list")
        .iter()
        .filter(|p| p["host"]["port"] == port)
        .cloned()
        .collect()
}

const TCP: u8 = 6;
/// The lab host's uplink IPv6 address.
const HOST_IP6: &str = "2001:db8::1";

/// Container `name`'s IPv6 address, from `container ls --json`.
#[track_caller]
fn container_ip6(lab: &Lab, name: &str) -> Ipv6Addr {
    let list = lab.netpath_json(&["container", "ls"]);
    let entry = list
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("container {name} is not listed: {list}"));
    entry["ip6"]
        .as_str()
        .and_then(|ip6| ip6.parse().ok())
        .unwrap_or_else(|| panic!("container {name} has no IPv6 address: {entry}"))
}

#[test]
fn a_port_is_published_on_both_families_with_the_same_host_port() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let web = lab.container_name("w");
    lab.container_add_ok(&web, &["-p", "8080:80"]);
    let ip: Ipv4Addr = lab
        .container_ip(&web)
        .expect("IPv4 address")
        .parse()
        .expect("IPv4");
    let ip6 = container_ip6(&lab, &web);

    assert_eq!(ports4(&lab), [((None, 8080, TCP), (ip, 80))]);
    assert_eq!(ports6(&lab), [((None, 8080, TCP), (ip6, 80))]);
    let entries = listed(&lab, 8080);
    assert_eq!(entries.len(), 1, "one mapping, both families: {entries:?}");
    assert_eq!(entries[0]["host"]["ip"], Value::Null, "{entries:?}");
    assert_eq!(entries[0]["container_ip"], ip.to_string(), "{entries:?}");
    assert_eq!(entries[0]["container_ip6"], ip6.to_string(), "{entries:?}");
    let text = lab.netpath(&["publish", "ls"]);
    text.expect_ok("publish ls");
    for host in ["0.0.0.0:8080/tcp", "[::]:8080/tcp"] {
        assert!(text.stdout.contains(host), "no {host} in\n{}", text.stdout);
    }

    // Taken on either family: refused, whichever spelling.
    for taken in ["8080:81", "[::]:8080:81", "[2001:db8::1]:8080:81"] {
        let again = lab.netpath(&["publish", "add", &web, taken]);
        again.expect_one_line_error("already published");
    }

    // One IPv6 address only, and IPv4 only.
    lab.netpath(&["publish", "add", &web, "[2001:db8::1]:9090:90/udp"])
        .expect_ok("publish on one IPv6 address");
    lab.netpath(&["publish", "add", &web, "198.18.0.1:9191:91"])
        .expect_ok("publish on one IPv4 address");
    let host6: Ipv6Addr = HOST_IP6.parse().expect("IPv6");
    assert!(ports6(&lab).contains(&((Some(host6), 9090, 17), (ip6, 90))));
    assert!(!ports4(&lab).iter().any(|((_, port, _), _)| *port == 9090));
    assert!(!ports6(&lab).iter().any(|((_, port, _), _)| *port == 9191));
    let entries = listed(&lab, 9090);
    assert_eq!(entries[0]["host"]["ip"], HOST_IP6, "{entries:?}");
    assert_eq!(entries[0]["container_ip"], Value::Null, "{entries:?}");

    // An allow-list keeps a port IPv4 only, and says so.
    lab.netpath(&[
        "publish",
        "add",
        &web,
        "7070:70",
        "--allow",
        "203.0.113.0/24",
    ])
    .expect_ok("publish with an allow-list");
    assert!(!ports6(&lab).iter().any(|((_, port, _), _)| *port == 7070));
    assert_eq!(listed(&lab, 7070)[0]["container_ip6"], Value::Null);
    let text = lab.netpath(&["publish", "ls"]);
    assert!(text.stdout.contains("(IPv4 only)"), "{}", text.stdout);
    lab.netpath(&[
        "publish",
        "add",
        &web,
        "[::]:7171:71",
        "--allow",
        "203.0.113.0/24",
    ])
    .expect_one_line_error("IPv4 only");

    // rm of the port takes both families; of [::]:PORT the IPv6 one.
    lab.netpath(&["publish", "rm", "8080"])
        .expect_ok("unpublish both families");
    assert!(!ports4(&lab).iter().any(|((_, port, _), _)| *port == 8080));
    assert!(!ports6(&lab).iter().any(|((_, port, _), _)| *port == 8080));
    lab.netpath(&["publish", "add", &web, "8080:80"])
        .expect_ok("publish again");
    lab.netpath(&["publish", "rm", "[::]:8080"])
        .expect_ok("unpublish IPv6 only");
    assert!(ports4(&lab).iter().any(|((_, port, _), _)| *port == 8080));
    assert!(!ports6(&lab).iter().any(|((_, port, _), _)| *port == 8080));

    // Removing the container takes every port of both families.
    lab.netpath(&["container", "rm", &web])
        .expect_ok("container rm");
    assert_eq!(ports4(&lab), []);
    assert_eq!(ports6(&lab), []);
}
