//! The host's IPv6 sockets reaching published ports through the socket hooks
//! (`connect6`, `sendmsg6`, `recvmsg6`, `getpeername6`): on the host's IPv6
//! address, a network's IPv6 gateway and `[::1]`, to the container's IPv6
//! address, seeing the address they asked for; only in the instance's host
//! netns, only with IPv6 on.
//!
//! The hooks alone, as the datapath's tables drive them: the IPv6 container
//! is a namespace of the test's behind a veth of its own (no datapath
//! program on it), and the test writes what IPv6 `up`, `container add` and
//! `publish` will (CONFIG's IPv6 flag and address, network 0's IPv6 gateway,
//! PORTS6) into the instance's pinned maps.
use std::net::Ipv6Addr;
use std::path::PathBuf;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData};
use netpath_common::{
    CONFIG_FLAG_IPV6, Config, Ip6, LAYOUT_VERSION, Network, PortKey, PortTarget, Proto,
    host::ip6_to_wire, names,
};
use netpath_tests::{Lab, Netns, Place, Server, ipv6_client};

/// The host's global IPv6 address, on the uplink (`Config::host_ip6`).
const HOST_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// Network 0's IPv6 subnet, its gateway (on the host's end of the veth) and
/// the container's address.
const SUBNET6: Ipv6Addr = Ipv6Addr::new(0xfd77, 6, 0, 0, 0, 0, 0, 0);
const SUBNET6_PREFIX: u8 = 64;
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd77, 6, 0, 0, 0, 0, 0, 1);
const CONTAINER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 6, 0, 0, 0, 0, 0, 2);
/// The host's end of the IPv6 container's veth.
const HOST_VETH: &str = "np6c";

/// The instance's pinned maps, opened by name.
struct Pins(PathBuf);

impl Pins {
    fn of(lab: &Lab) -> Self {
        Self(
            PathBuf::from("/sys/fs/bpf/netpath")
                .join(lab.instance())
                .join(format!("v{LAYOUT_VERSION}")),
        )
    }

    fn open(&self, name: &str) -> MapData {
        let path = self.0.join(name);
        MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
    }

    fn config(&self) -> Array<MapData, Config> {
        Array::try_from(Map::Array(self.open(names::CONFIG))).expect("CONFIG")
    }

    /// Turns IPv6 on or off, with `HOST_IP6` as the host's address.
    fn set_ipv6(&self, on: bool) {
        let mut config = self.config();
        let mut cfg = config.get(&0, 0).expect("reading CONFIG");
        cfg.host_ip6 = ip6_to_wire(HOST_IP6);
        if on {
            cfg.flags |= CONFIG_FLAG_IPV6;
        } else {
            cfg.flags &= !CONFIG_FLAG_IPV6;
        }
        config.set(0, cfg, 0).expect("writing CONFIG");
    }

    /// Gives network 0 `SUBNET6` with `GATEWAY6`.
    fn add_subnet6(&self) {
        let mut networks: Array<MapData, Network> =
            Array::try_from(Map::Array(self.open(names::NETWORKS))).expect("NETWORKS");
        let net = networks.get(&0, 0).expect("network 0");
        networks
            .set(0, net.with_ipv6(SUBNET6, SUBNET6_PREFIX, GATEWAY6), 0)
            .expect("writing network 0");
        let mut subnets: LpmTrie<MapData, Ip6, u32> =
            LpmTrie::try_from(Map::LpmTrie(self.open(names::SUBNETS6))).expect("SUBNETS6");
        subnets
            .insert(
                &Key::new(u32::from(SUBNET6_PREFIX), ip6_to_wire(SUBNET6)),
                0,
                0,
            )
            .expect("writing SUBNETS6");
    }

    /// Publishes `host_port` on `host_ip` (None: every host address) to
    /// `CONTAINER6`:`port`.
    fn publish6(&self, host_ip: Option<Ipv6Addr>, host_port: u16, port: u16, proto: Proto) {
        let mut ports: HashMap<MapData, PortKey<Ip6>, PortTarget<Ip6>> =
            HashMap::try_from(Map::HashMap(self.open(names::PORTS6))).expect("PORTS6");
        ports
            .insert(
                PortKey::new(host_ip, host_port, proto),
                PortTarget::new(CONTAINER6, port),
                0,
            )
            .expect("writing PORTS6");
    }
}

/// An IPv6-only container: a namespace behind a veth from H, `GATEWAY6` on
/// H's end (no duplicate address detection: the addresses are usable at
/// once).
fn ipv6_container(lab: &Lab) -> Netns {
    let c = Netns::new("npc6");
    lab.host.ip(&[
        "link",
        "add",
        HOST_VETH,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        c.name(),
    ]);
    let gateway = format!("{GATEWAY6}/{SUBNET6_PREFIX}");
    lab.host
        .ip(&["addr", "add", &gateway, "dev", HOST_VETH, "nodad"]);
    lab.host.ip(&["link", "set", HOST_VETH, "up"]);
    let addr = format!("{CONTAINER6}/{SUBNET6_PREFIX}");
    c.ip(&["addr", "add", &addr, "dev", "eth0", "nodad"]);
    c.ip(&["link", "set", "eth0", "up"]);
    c.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &GATEWAY6.to_string(),
    ]);
    c
}

/// `mode` to `addr` `port` from `place` works, the socket sees `addr`
/// `port` as its peer, and the container answered with the source it saw.
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
    lab.host.ip(&[
        "addr",
        "add",
        &format!("{HOST_IP6}/64"),
        "dev",
        Lab::UPLINK,
        "nodad",
    ]);
    let c = ipv6_container(&lab);
    let _http = Server::http(&c, "::", 8080);
    let _echo = Server::udp_echo(&c, "::", 5353);
    // An IPv4-only container on a port PORTS6 lacks.
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let _http4 = Server::http(lab.container(&a), "0.0.0.0", 8081);
    lab.netpath(&["publish", "add", &a, "18081:8081"])
        .expect_ok("publish tcp");
    let pins = Pins::of(&lab);
    pins.set_ipv6(true);
    pins.add_subnet6();
    pins.publish6(None, 18080, 8080, Proto::Tcp);
    pins.publish6(None, 15353, 5353, Proto::Udp);
    pins.publish6(Some(HOST_IP6), 18082, 8080, Proto::Tcp);

    let host = lab.host_in_cgroup();
    let host_ip6 = HOST_IP6.to_string();
    let gateway6 = GATEWAY6.to_string();
    for addr in [host_ip6.as_str(), gateway6.as_str(), "::1"] {
        let seen = reaches(&host, "tcp", addr, 18080);
        assert!(
            seen.starts_with(&format!("{GATEWAY6}:")),
            "tcp to [{addr}]:18080 reached the IPv6 container from the host's address on its link, saw {seen}"
        );
        for mode in ["udp", "udp-connected"] {
            let seen = reaches(&host, mode, addr, 15353);
            assert!(
                seen.starts_with(&format!("{GATEWAY6}:")),
                "{mode} to [{addr}]:15353 reached the IPv6 container, saw {seen}"
            );
        }
    }
    // A mapping bound to the host's IPv6 address answers there only.
    reaches(&host, "tcp", &host_ip6, 18082);
    refused(&host, "::1", 18082, "a mapping bound to another address");
    // Without a PORTS6 entry, [::1] still leads to the IPv4 container.
    let seen = reaches(&host, "tcp", "::1", 18081);
    assert!(
        seen.contains('.'),
        "[::1]:18081 reached the IPv4 container over IPv4, saw {seen}"
    );

    // Another netns in the same cgroup: its [::1]:18080 is its own, and
    // nothing listens there.
    let other = Place::netns(lab.outside.name().to_string()).in_cgroup(lab.cgroup_path());
    refused(
        &other,
        "::1",
        18080,
        "the hooks must leave other namespaces alone",
    );

    // IPv6 off: PORTS6 is not looked at.
    pins.set_ipv6(false);
    refused(
        &host,
        "::1",
        18080,
        "with IPv6 off nothing is rewritten to IPv6",
    );
}
