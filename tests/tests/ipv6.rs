//! Issue 14, IPv6 dual stack: the address plan. `up` gives the bridge an
//! IPv6 subnet (a unique-local /64 by default, `--subnet6`, none with
//! `--ipv6=false`), containers get an IPv6 address beside their IPv4 one
//! with a default route, usable at once (no duplicate address detection),
//! and `status`, `container ls` and `network ls` show them. Refusals are
//! one line and leave nothing behind.
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError};
use netpath_common::host::{ip_to_wire, ip6_to_wire};
use netpath_common::{
    CONFIG_FLAG_IPV6, CONFIG_FLAG_IPV6_ROUTED, Config, Endpoint, Ip6, LAYOUT_VERSION, Network,
    names,
};
use netpath_tests::{
    Lab, NeighbourInstance, Netns, Server, curl, http_source, ping, unique_name, url,
};
use serde_json::Value;

const FORWARDING6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// `container ls --json` entry of container `name`.
#[track_caller]
fn listed(lab: &Lab, name: &str) -> Value {
    let list = lab.netpath_json(&["container", "ls"]);
    list.as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name).cloned())
        .unwrap_or_else(|| panic!("container {name} is not listed: {list}"))
}

/// `network ls --json` entry of network `name`.
#[track_caller]
fn network(lab: &Lab, name: &str) -> Value {
    let list = lab.netpath_json(&["network", "ls"]);
    list.as_array()
        .and_then(|all| all.iter().find(|n| n["name"] == name).cloned())
        .unwrap_or_else(|| panic!("network {name} is not listed: {list}"))
}

/// A JSON string field as an IPv6 network's address and prefix length.
#[track_caller]
fn subnet6(value: &Value) -> (Ipv6Addr, u8) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not an IPv6 subnet: {value}"));
    let (address, len) = text.split_once('/').expect("CIDR");
    (address.parse().expect("IPv6"), len.parse().expect("length"))
}

/// The instance's pinned maps, read as the datapath sees them.
struct Pinned {
    dir: PathBuf,
}

impl Pinned {
    fn of(lab: &Lab) -> Self {
        Self {
            dir: PathBuf::from("/sys/fs/bpf/netpath")
                .join(lab.instance())
                .join(format!("v{LAYOUT_VERSION}")),
        }
    }

    #[track_caller]
    fn map(&self, name: &str) -> Map {
        let path = self.dir.join(name);
        let data =
            MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        Map::from_map_data(data).expect("a map")
    }

    fn config(&self) -> Config {
        let config: Array<MapData, Config> =
            Array::try_from(self.map(names::CONFIG)).expect("CONFIG");
        config.get(&0, 0).expect("CONFIG[0]")
    }

    fn network(&self, id: u32) -> Network {
        let networks: Array<MapData, Network> =
            Array::try_from(self.map(names::NETWORKS)).expect("NETWORKS");
        networks.get(&id, 0).expect("NETWORKS[id]")
    }

    /// The network id `SUBNETS6` has for `subnet/len`, if any.
    fn subnet6_id(&self, subnet: Ipv6Addr, len: u8) -> Option<u32> {
        let trie: LpmTrie<MapData, Ip6, u32> =
            LpmTrie::try_from(self.map(names::SUBNETS6)).expect("SUBNETS6");
        found(trie.get(&Key::new(u32::from(len), ip6_to_wire(subnet)), 0))
    }

    fn endpoint(&self, ip: Ipv4Addr) -> Option<Endpoint> {
        let map: HashMap<MapData, u32, Endpoint> =
            HashMap::try_from(self.map(names::ENDPOINTS)).expect("ENDPOINTS");
        found(map.get(&ip_to_wire(ip), 0))
    }

    fn endpoint6(&self, ip: Ipv6Addr) -> Option<Endpoint> {
        let map: HashMap<MapData, Ip6, Endpoint> =
            HashMap::try_from(self.map(names::ENDPOINTS6)).expect("ENDPOINTS6");
        found(map.get(&ip6_to_wire(ip), 0))
    }
}

/// A map look-up's value, None for no such key.
#[track_caller]
fn found<V>(result: Result<V, MapError>) -> Option<V> {
    match result {
        Ok(value) => Some(value),
        Err(MapError::KeyNotFound) => None,
        Err(e) => panic!("map look-up: {e}"),
    }
}

/// `net.ipv6.conf.all.forwarding` in the lab's host netns.
fn forwarding6(lab: &Lab) -> String {
    let out = lab.host.exec(&["cat", FORWARDING6]);
    out.expect_ok("reading IPv6 forwarding in H");
    out.stdout_trim().to_owned()
}

#[test]
fn a_container_gets_its_ipv6_address_and_default_route_at_once() {
    let lab = Lab::new();
    let forwarding_before = forwarding6(&lab);
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);

    // Read as soon as `add` returned: usable already, not tentative.
    let (ip6, tentative) = lab.container_ip6(&a).expect("a has a global IPv6 address");
    assert!(!tentative, "{ip6} is still tentative");

    let status = lab.netpath_json(&["status"]);
    let (prefix, len) = subnet6(&status["subnet6"]);
    assert_eq!(len, 64, "{status}");
    assert_eq!(prefix.octets()[0], 0xfd, "a unique-local prefix: {status}");
    let gateway6 = Ipv6Addr::from(u128::from(prefix) + 1);
    assert_eq!(status["gateway6"], gateway6.to_string(), "{status}");
    assert_eq!(status["ipv6_mode"], "nat", "{status}");
    assert_eq!(status["host_ip6"], Lab::HOST_IP6, "{status}");

    // The IPv6 address has the IPv4 one's offset in its subnet.
    let entry = listed(&lab, &a);
    assert_eq!(entry["ip6"], ip6, "{entry}");
    assert_eq!(entry["networks"][0]["ip6"], ip6, "{entry}");
    let ip4: Ipv4Addr = entry["ip"].as_str().expect("ip").parse().expect("IPv4");
    let offset = u32::from(ip4) - u32::from(Ipv4Addr::new(10, 77, 0, 0));
    assert_eq!(
        ip6,
        Ipv6Addr::from(u128::from(prefix) + u128::from(offset)).to_string()
    );

    let routes = lab
        .container(&a)
        .exec("ip", &["-6", "route", "show", "default"]);
    assert!(
        routes.stdout.contains(&format!("via {gateway6} dev eth0")),
        "{routes}"
    );
    // The bridge has the gateway, not tentative either.
    let bridge = lab.host.exec(&[
        "ip",
        "-6",
        "-o",
        "addr",
        "show",
        "dev",
        &lab.bridge(),
        "scope",
        "global",
    ]);
    assert!(
        bridge.stdout.contains(&format!("{gateway6}/64")) && !bridge.stdout.contains("tentative"),
        "{bridge}"
    );

    assert_eq!(forwarding6(&lab), "1", "up turns IPv6 forwarding on");
    lab.down().expect_ok("netpath down");
    assert_eq!(forwarding6(&lab), forwarding_before, "down gives it back");
    lab.assert_clean();
}

#[test]
fn ipv6_false_keeps_the_instance_ipv4_only() {
    let lab = Lab::new();
    let forwarding_before = forwarding6(&lab);
    lab.up_ok(&["--ipv6=false"]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    assert!(lab.container_ip(&a).is_some(), "a has IPv4");
    assert_eq!(lab.container_ip6(&a), None, "a has no global IPv6");
    assert!(listed(&lab, &a)["ip6"].is_null());

    let status = lab.netpath_json(&["status"]);
    for field in ["subnet6", "gateway6", "ipv6_mode", "host_ip6"] {
        assert!(status[field].is_null(), "{field}: {status}");
    }
    assert_eq!(Pinned::of(&lab).config().flags & CONFIG_FLAG_IPV6, 0);
    assert!(!Pinned::of(&lab).network(0).has_ipv6());
    assert_eq!(
        forwarding6(&lab),
        forwarding_before,
        "IPv6 forwarding untouched"
    );

    let name = unique_name("n");
    lab.netpath(&["network", "create", &name, "--subnet6", "fd00:99::/64"])
        .expect_one_line_error("IPv4 only");
    lab.netpath(&["network", "create", &name])
        .expect_ok("an IPv4-only network");
    assert!(network(&lab, &name)["subnet6"].is_null());
}

#[test]
fn bad_or_overlapping_subnet6_is_refused_in_one_line_leaving_nothing() {
    let lab = Lab::new();
    for (args, needle) in [
        (&["--subnet6", "fd00:1::/48"][..], "/64 to /120"),
        (&["--subnet6", "fd00:1::/121"], "/64 to /120"),
        (&["--subnet6", "fd00:1::1/64"], "host bits"),
        (&["--subnet6", "fe80::/64"], "unique-local"),
        (&["--subnet6", "10.0.0.0/8"], "IPv6 network"),
        // A /16 of IPv4 needs a /112 at least.
        (&["--subnet6", "fd00:1::/113"], "/112"),
        (&["--ipv6=false", "--subnet6", "fd00:1::/64"], "need IPv6"),
        (&["--ipv6=false", "--ipv6-mode", "routed"], "need IPv6"),
    ] {
        lab.up(args).expect_one_line_error(needle);
        Lab::assert_no_leftovers(lab.instance());
        lab.assert_clean();
    }

    lab.up_ok(&["--subnet6", "fd00:77::/64"]);
    // Another instance in the same netns may not take an overlapping one.
    let other = NeighbourInstance::new(&lab, unique_name("t"));
    other
        .up(&["--subnet", "10.90.0.0/16", "--subnet6", "fd00:77::/96"])
        .expect_one_line_error("overlaps fd00:77::/64");
    Lab::assert_no_leftovers(other.name());
    // Nor a network of this one.
    let links = lab.host_links();
    let name = unique_name("n");
    lab.netpath(&["network", "create", &name, "--subnet6", "fd00:77::101/120"])
        .expect_one_line_error("host bits");
    lab.netpath(&["network", "create", &name, "--subnet6", "fd00:77::/120"])
        .expect_one_line_error("overlaps fd00:77::/64");
    assert_eq!(lab.host_links(), links, "no bridge left behind");
    let list = lab.netpath_json(&["network", "ls"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

#[test]
fn network_create_takes_the_next_slash_64_of_the_instance() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let (first, _) = subnet6(&network(&lab, "bridge")["subnet6"]);
    let (n1, n2) = (unique_name("n"), unique_name("n"));
    lab.netpath(&["network", "create", &n1])
        .expect_ok("network create");
    let (second, len) = subnet6(&network(&lab, &n1)["subnet6"]);
    assert_eq!(len, 64);
    assert_eq!(u128::from(second), u128::from(first) + (1 << 64));
    assert_eq!(
        network(&lab, &n1)["gateway6"],
        Ipv6Addr::from(u128::from(second) + 1).to_string()
    );

    // An explicit one, then the default skips it.
    let explicit = Ipv6Addr::from(u128::from(first) + (2 << 64));
    lab.netpath(&[
        "network",
        "create",
        &n2,
        "--subnet6",
        &format!("{explicit}/64"),
    ])
    .expect_ok("network create --subnet6");
    let n3 = unique_name("n");
    lab.netpath(&["network", "create", &n3])
        .expect_ok("network create");
    let (third, _) = subnet6(&network(&lab, &n3)["subnet6"]);
    assert_eq!(u128::from(third), u128::from(first) + (3 << 64));

    // Containers on it, first or connected later, get addresses in it.
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &["--network", &n1]);
    let (ip6, _) = lab.container_ip6(&a).expect("a has IPv6 on n1");
    let ip6: Ipv6Addr = ip6.parse().expect("IPv6");
    assert_eq!(u128::from(ip6) >> 64, u128::from(second) >> 64, "{ip6}");
    lab.netpath(&["network", "connect", &n2, &a])
        .expect_ok("network connect");
    let entry = listed(&lab, &a);
    let on_n2 = entry["networks"]
        .as_array()
        .and_then(|all| all.iter().find(|n| n["network"] == n2.as_str()))
        .unwrap_or_else(|| panic!("a is not on {n2}: {entry}"));
    let connected: Ipv6Addr = on_n2["ip6"].as_str().expect("ip6").parse().expect("IPv6");
    assert_eq!(u128::from(connected) >> 64, u128::from(explicit) >> 64);
    let eth1 = lab
        .container(&a)
        .exec("ip", &["-6", "-o", "addr", "show", "dev", "eth1"]);
    assert!(eth1.stdout.contains(&connected.to_string()), "{eth1}");
}

#[test]
fn routed_mode_is_recorded() {
    let lab = Lab::new();
    lab.up_ok(&["--ipv6-mode", "routed", "--subnet6", "2001:db8:77::/64"]);
    let status = lab.netpath_json(&["status"]);
    assert_eq!(status["ipv6_mode"], "routed", "{status}");
    let flags = Pinned::of(&lab).config().flags;
    assert_eq!(
        flags & (CONFIG_FLAG_IPV6 | CONFIG_FLAG_IPV6_ROUTED),
        CONFIG_FLAG_IPV6 | CONFIG_FLAG_IPV6_ROUTED
    );
    assert_eq!(status["subnet6"], "2001:db8:77::/64", "{status}");
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let (ip6, tentative) = lab.container_ip6(&a).expect("a has IPv6");
    assert_eq!(ip6, "2001:db8:77::2");
    assert!(!tentative);
}

#[test]
fn a_restarted_agent_keeps_the_ipv6_plan_and_gives_the_bridge_its_address_back() {
    let lab = Lab::new();
    lab.up_ok(&["--subnet6", "fd00:78::/64"]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let bridge = lab.bridge();
    lab.host
        .ip(&["-6", "addr", "del", "fd00:78::1/64", "dev", &bridge]);

    // The supervisor of `up --detach` adopts the instance again.
    let first = lab.kill_agent();
    let status = lab.poll_status("the agent started again, healthy", |status| {
        status.success()
            && status.json()["agent_pid"]
                .as_i64()
                .is_some_and(|pid| pid != i64::from(first))
    });
    let status = status.json();
    assert_eq!(status["subnet6"], "fd00:78::/64", "{status}");
    assert_eq!(status["gateway6"], "fd00:78::1", "{status}");
    assert_eq!(status["ipv6_mode"], "nat", "{status}");
    assert_eq!(status["host_ip6"], Lab::HOST_IP6, "{status}");
    let addresses = lab.host.ip(&[
        "-6", "-o", "addr", "show", "dev", &bridge, "scope", "global",
    ]);
    assert!(
        addresses.stdout.contains("fd00:78::1/64"),
        "adoption gives the bridge its IPv6 address back\n{addresses}"
    );
    let config = Pinned::of(&lab).config();
    assert_eq!(
        config.flags & CONFIG_FLAG_IPV6,
        CONFIG_FLAG_IPV6,
        "{config:?}"
    );
    assert_eq!(config.host_ip6(), Some(Lab::HOST_IP6.parse().unwrap()));
    assert_eq!(listed(&lab, &a)["ip6"], "fd00:78::2");
    let (ip6, _) = lab.container_ip6(&a).expect("a keeps its IPv6 address");
    assert_eq!(ip6, "fd00:78::2");
}

#[test]
fn a_netns_with_ipv6_turned_off_is_attached_ipv4_only() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let netns = Netns::new("no6");
    netns
        .exec(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6 \
             && echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
        ])
        .expect_ok("turning IPv6 off in the netns");
    let w = lab.container_name("w");
    let attached = lab.netpath_json(&["container", "attach", &w, "--netns", netns.name()]);
    assert!(attached["ip6"].is_null(), "{attached}");
    let ip = attached["ip"].as_str().expect("an IPv4 address");
    ping(&lab.host, ip).expect_ok("H pings the attached netns over IPv4");
    let routes = netns.exec(&["ip", "-6", "route", "show", "default"]);
    assert!(routes.stdout.trim().is_empty(), "{routes}");
}

#[test]
fn the_datapath_tables_hold_the_ipv6_plan() {
    let lab = Lab::new();
    lab.up_ok(&["--subnet6", "fd00:79::/64"]);
    let pinned = Pinned::of(&lab);
    let config = pinned.config();
    assert_eq!(
        config.flags & CONFIG_FLAG_IPV6,
        CONFIG_FLAG_IPV6,
        "{config:?}"
    );
    assert_eq!(config.flags & CONFIG_FLAG_IPV6_ROUTED, 0, "{config:?}");
    assert_eq!(config.host_ip6(), Some(Lab::HOST_IP6.parse().unwrap()));
    let subnet6: Ipv6Addr = "fd00:79::".parse().unwrap();
    let bridge = pinned.network(0);
    assert_eq!(bridge.subnet6(), Some((subnet6, 64)));
    assert_eq!(bridge.gateway6(), "fd00:79::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(pinned.subnet6_id(subnet6, 64), Some(0));

    // ENDPOINTS6 has the same value as ENDPOINTS, and goes with it.
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let entry = listed(&lab, &a);
    let ip: Ipv4Addr = entry["ip"].as_str().expect("ip").parse().expect("IPv4");
    let ip6: Ipv6Addr = entry["ip6"].as_str().expect("ip6").parse().expect("IPv6");
    let endpoint = pinned.endpoint(ip).expect("a's ENDPOINTS entry");
    assert_eq!(pinned.endpoint6(ip6), Some(endpoint));
    lab.netpath(&["container", "rm", &a])
        .expect_ok("container rm");
    assert_eq!(
        pinned.endpoint6(ip6),
        None,
        "rm removes the ENDPOINTS6 entry"
    );

    // A network's IPv6 subnet comes and goes with it.
    let n = unique_name("n");
    lab.netpath(&["network", "create", &n, "--subnet6", "fd00:79:1::/64"])
        .expect_ok("network create");
    let id = network(&lab, &n)["id"].as_u64().expect("id") as u32;
    let subnet6: Ipv6Addr = "fd00:79:1::".parse().unwrap();
    assert_eq!(pinned.network(id).subnet6(), Some((subnet6, 64)));
    assert_eq!(pinned.subnet6_id(subnet6, 64), Some(id));
    lab.netpath(&["network", "rm", &n]).expect_ok("network rm");
    assert_eq!(pinned.subnet6_id(subnet6, 64), None);
}

#[test]
fn host_ip6_is_the_uplinks_stable_global_address_or_none() {
    // A deprecated address (added last, so listed first) is passed over.
    let lab = Lab::new();
    lab.host.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8::100/64",
        "dev",
        Lab::UPLINK,
        "nodad",
        "preferred_lft",
        "0",
    ]);
    lab.up_ok(&[]);
    assert_eq!(lab.netpath_json(&["status"])["host_ip6"], Lab::HOST_IP6);
    drop(lab);

    // An uplink without a global IPv6 address: IPv6 stays on, inside.
    let lab = Lab::new();
    lab.host.ip(&[
        "-6",
        "addr",
        "del",
        &format!("{}/64", Lab::HOST_IP6),
        "dev",
        Lab::UPLINK,
    ]);
    lab.up_ok(&[]);
    let status = lab.netpath_json(&["status"]);
    assert!(status["host_ip6"].is_null(), "{status}");
    assert_eq!(status["ipv6_mode"], "nat", "{status}");
    assert_eq!(Pinned::of(&lab).config().host_ip6(), None);
    assert!(
        lab.agent_log().contains("has no global IPv6 address"),
        "{}",
        lab.agent_log()
    );
}

netpath_tests::with_each_accel!(
    containers_reach_the_gateway_each_other_and_the_outside_over_ipv6,
    routed_mode_keeps_the_containers_ipv6_address_outside,
    routed_mode_reaches_published_container_ports_on_the_containers_address
);

/// The address part of a server's "ip:port" record.
fn source_ip(source: &str) -> &str {
    source.rsplit_once(':').map_or(source, |(ip, _)| ip)
}

/// Needs the IPv6 datapath (the lead's part of issue 14).
fn containers_reach_the_gateway_each_other_and_the_outside_over_ipv6(accel: &str) {
    let lab = Lab::new();
    lab.up_ok(&["--accel", accel]);
    let (a, b) = (lab.container_name("a"), lab.container_name("b"));
    lab.container_add_ok(&a, &[]);
    lab.container_add_ok(&b, &[]);
    let (a6, _) = lab.container_ip6(&a).expect("a has IPv6");
    let (b6, _) = lab.container_ip6(&b).expect("b has IPv6");
    let gateway6 = lab.netpath_json(&["status"])["gateway6"]
        .as_str()
        .expect("gateway6")
        .to_owned();

    ping(lab.container(&a), &gateway6).expect_ok("a pings the gateway over IPv6");
    ping(&lab.host, &a6).expect_ok("H pings a over IPv6");
    // Container to container: no NAT, b sees a's own address.
    let server = Server::http(lab.container(&b), "::", 80);
    let seen =
        http_source(lab.container(&a), &url(&b6, server.port())).expect("a reaches b over IPv6");
    assert_eq!(source_ip(&seen), a6, "{seen}");
    // Out through NAT66: the outside sees the uplink's address.
    let outside = Server::http(&lab.outside, "::", 0);
    let seen = http_source(lab.container(&a), &url(Lab::REMOTE_IP6, outside.port()))
        .expect("a reaches the outside over IPv6");
    assert_eq!(source_ip(&seen), Lab::HOST_IP6, "{seen}");
}

/// A lab up in routed IPv6 mode on `prefix`, which the outside routes to
/// the host as an upstream router would, with one container: its name and
/// IPv6 address.
fn routed_lab(accel: &str, prefix: &str) -> (Lab, String, String) {
    let lab = Lab::new();
    lab.up_ok(&[
        "--accel",
        accel,
        "--ipv6-mode",
        "routed",
        "--subnet6",
        prefix,
    ]);
    lab.outside
        .ip(&["-6", "route", "add", prefix, "via", Lab::HOST_IP6]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let (a6, _) = lab.container_ip6(&a).expect("a has IPv6");
    (lab, a, a6)
}

/// Needs the IPv6 datapath (the lead's part of issue 14).
fn routed_mode_keeps_the_containers_ipv6_address_outside(accel: &str) {
    let (lab, a, a6) = routed_lab(accel, "2001:db8:77::/64");
    let outside = Server::http(&lab.outside, "::", 0);
    let seen = http_source(lab.container(&a), &url(Lab::REMOTE_IP6, outside.port()))
        .expect("a reaches the outside over IPv6");
    assert_eq!(source_ip(&seen), a6, "{seen}");
}

/// Routed mode, as Docker's: a published container port is also reachable
/// on the container's own (routed) address, the client's address intact;
/// its other ports are not, nor that one once unpublished. The routed port
/// binds no host port and `publish ls` shows the one mapping.
fn routed_mode_reaches_published_container_ports_on_the_containers_address(accel: &str) {
    let (lab, a, a6) = routed_lab(accel, "2001:db8:78::/64");
    let _web = Server::http(lab.container(&a), "::", 8000);
    let _other = Server::http(lab.container(&a), "::", 8001);
    // A refused connection is dropped unanswered: a short wait is enough.
    let unreachable =
        |port: u16| !curl(&lab.outside, &["--max-time", "2", &url(&a6, port)]).success();

    let refused = lab.counter("drop_unsolicited").unwrap_or(0);
    assert!(unreachable(8000), "an unpublished port is reachable");
    lab.wait_counter("drop_unsolicited", refused + 1);

    lab.netpath(&["publish", "add", &a, "8080:8000"])
        .expect_ok("publish");
    let seen = http_source(&lab.outside, &url(&a6, 8000))
        .expect("the outside reaches the published port on a's address");
    assert_eq!(source_ip(&seen), Lab::OUTSIDE_IP6, "{seen}");
    let seen =
        http_source(&lab.outside, &url(Lab::HOST_IP6, 8080)).expect("and on the host's port");
    assert_eq!(source_ip(&seen), Lab::OUTSIDE_IP6, "{seen}");
    assert!(unreachable(8001), "a port a did not publish is reachable");

    let ls = lab.netpath_json(&["publish", "ls"]);
    assert_eq!(ls.as_array().map(Vec::len), Some(1), "{ls}");
    let reserved = lab
        .host
        .exec(&["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"]);
    assert!(reserved.stdout.contains("8080"), "{reserved}");
    assert!(!reserved.stdout.contains("8000"), "{reserved}");

    lab.netpath(&["publish", "rm", "8080"])
        .expect_ok("publish rm");
    assert!(unreachable(8000), "an unpublished port is still reachable");
}
