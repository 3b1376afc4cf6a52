//! The map types in host terms, for userspace: constructors and accessors that
//! take and give `Ipv4Addr` and host-order ports, so no caller converts byte
//! orders by hand. The records themselves keep the wire order the datapath
//! reads (see the crate doc).
use core::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use crate::{
    Addr, AllowKey, Config, Endpoint, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, Ip6, Network, PORT_RESTRICTED, PortKey, PortTarget,
};

/// The wire-order `u32` a map holds for `ip` (e.g. an `ENDPOINTS` key).
pub fn ip_to_wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The address a wire-order `u32` of a map holds.
pub fn ip_from_wire(wire: u32) -> Ipv4Addr {
    Ipv4Addr::from(wire.to_ne_bytes())
}

/// The wire-order words a map holds for `ip` (e.g. an `ENDPOINTS6` key).
pub fn ip6_to_wire(ip: Ipv6Addr) -> Ip6 {
    let o = ip.octets();
    core::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The address wire-order words of a map hold.
pub fn ip6_from_wire(wire: Ip6) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, word) in wire.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// A map address in host terms: `Ipv4Addr` for `u32`, `Ipv6Addr` for `Ip6`.
pub trait HostAddr: Addr {
    type Ip: HostIp<Wire = Self>;
    fn to_host(self) -> Self::Ip;
}

/// An address as userspace spells it, and how a map holds it. Constructors
/// take this side, so the family follows from the arguments.
pub trait HostIp:
    Copy + fmt::Display + fmt::Debug + PartialEq + Eq + core::hash::Hash + Into<IpAddr>
{
    type Wire: HostAddr<Ip = Self>;
    fn to_wire(self) -> Self::Wire;
}

impl HostAddr for u32 {
    type Ip = Ipv4Addr;
    fn to_host(self) -> Ipv4Addr {
        ip_from_wire(self)
    }
}

impl HostIp for Ipv4Addr {
    type Wire = u32;
    fn to_wire(self) -> u32 {
        ip_to_wire(self)
    }
}

impl HostAddr for Ip6 {
    type Ip = Ipv6Addr;
    fn to_host(self) -> Ipv6Addr {
        ip6_from_wire(self)
    }
}

impl HostIp for Ipv6Addr {
    type Wire = Ip6;
    fn to_wire(self) -> Ip6 {
        ip6_to_wire(self)
    }
}

/// The transport protocols the datapath tracks.
// No doc comments on the variants: clap would print them as per-value help
// and change `--help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    pub const ALL: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Icmp];

    /// The IP header's protocol number (`IPPROTO_*`).
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
            Proto::Icmp => IPPROTO_ICMP,
        }
    }

    /// The protocol number in a record of address family `A`: ICMP is
    /// ICMPv6 over IPv6.
    pub fn number_in<A: Addr>(self) -> u8 {
        match self {
            Proto::Icmp if A::AF == crate::AF_INET6 => IPPROTO_ICMPV6,
            _ => self.number(),
        }
    }

    /// Either family's numbers: ICMPv6 is `Icmp` too.
    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            IPPROTO_TCP => Some(Proto::Tcp),
            IPPROTO_UDP => Some(Proto::Udp),
            IPPROTO_ICMP | IPPROTO_ICMPV6 => Some(Proto::Icmp),
            _ => None,
        }
    }

    /// Lower case, as the command line and the output spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A protocol name other than tcp, udp or icmp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownProto;

impl fmt::Display for UnknownProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown protocol: use tcp, udp or icmp")
    }
}

impl core::error::Error for UnknownProto {}

impl FromStr for Proto {
    type Err = UnknownProto;

    /// Exact lower-case names only, as the command line always accepted.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Proto::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or(UnknownProto)
    }
}

// By hand: the derive names `::std`, which this no_std crate does not have.
#[cfg(feature = "clap")]
impl clap::ValueEnum for Proto {
    fn value_variants<'a>() -> &'a [Self] {
        &Proto::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

impl<A: HostAddr> FlowKey<A> {
    /// Ports in host order; for ICMP echo both are the echo identifier.
    /// `Proto::Icmp` is ICMPv6 in an IPv6 key.
    pub fn new<I: HostIp<Wire = A>>(src: I, dst: I, sport: u16, dport: u16, proto: Proto) -> Self {
        Self {
            saddr: src.to_wire(),
            daddr: dst.to_wire(),
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto: proto.number_in::<A>(),
            _pad: [0; 3],
        }
    }

    pub fn src(&self) -> A::Ip {
        self.saddr.to_host()
    }

    pub fn dst(&self) -> A::Ip {
        self.daddr.to_host()
    }

    /// Host order.
    pub fn sport(&self) -> u16 {
        u16::from_be(self.sport)
    }

    /// Host order.
    pub fn dport(&self) -> u16 {
        u16::from_be(self.dport)
    }

    /// `None`: a protocol number the datapath does not track.
    pub fn proto(&self) -> Option<Proto> {
        Proto::from_number(self.proto)
    }
}

impl<A: HostAddr> PortKey<A> {
    /// `host_ip` `None`: the port on every host address. `Proto::Icmp` is
    /// never published.
    pub fn new<I: HostIp<Wire = A>>(host_ip: Option<I>, host_port: u16, proto: Proto) -> Self {
        Self {
            host_ip: host_ip.map_or(A::UNSPECIFIED, I::to_wire),
            host_port: host_port.to_be(),
            proto: proto.number(),
            _pad: 0,
        }
    }

    /// `None`: every host address.
    pub fn host_ip(&self) -> Option<A::Ip> {
        (self.host_ip != A::UNSPECIFIED).then(|| self.host_ip.to_host())
    }

    /// Host order.
    pub fn host_port(&self) -> u16 {
        u16::from_be(self.host_port)
    }

    pub fn proto(&self) -> Option<Proto> {
        Proto::from_number(self.proto)
    }
}

impl<A: HostAddr> PortTarget<A> {
    pub fn new<I: HostIp<Wire = A>>(container_ip: I, container_port: u16) -> Self {
        Self {
            container_ip: container_ip.to_wire(),
            container_port: container_port.to_be(),
            flags: 0,
        }
    }

    /// The same target, taking new flows only from what `ALLOWED` admits.
    #[must_use]
    pub fn restricted(self) -> Self {
        Self {
            flags: self.flags | PORT_RESTRICTED,
            ..self
        }
    }

    pub fn container_ip(&self) -> A::Ip {
        self.container_ip.to_host()
    }

    /// Host order.
    pub fn container_port(&self) -> u16 {
        u16::from_be(self.container_port)
    }
}

impl AllowKey {
    /// `port`'s entry for sources starting with `source` (the prefix's
    /// network address).
    pub fn new(port: PortKey, source: Ipv4Addr) -> Self {
        Self {
            port,
            saddr: ip_to_wire(source),
            _pad: 0,
        }
    }

    pub fn source(&self) -> Ipv4Addr {
        ip_from_wire(self.saddr)
    }
}

impl Endpoint {
    /// The endpoint on host-side veth `ifindex` of network `network_id`.
    pub fn new(ifindex: u32, mac: [u8; 6], network_id: u16) -> Self {
        Self {
            ifindex,
            mac,
            network_id,
        }
    }
}

impl Network {
    /// Network `subnet_addr/prefix_len` on bridge `bridge_ifindex`, with
    /// `NETWORK_*` flags.
    pub fn new(
        subnet_addr: Ipv4Addr,
        prefix_len: u8,
        gateway_ip: Ipv4Addr,
        bridge_ifindex: u32,
        flags: u32,
    ) -> Self {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        Self {
            subnet_addr: ip_to_wire(subnet_addr) & mask.to_be(),
            subnet_mask: mask.to_be(),
            gateway_ip: ip_to_wire(gateway_ip),
            bridge_ifindex,
            flags,
            ..Self::default()
        }
    }

    /// The same network with IPv6 subnet `subnet6_addr/prefix_len` and
    /// gateway `gateway6`.
    #[must_use]
    pub fn with_ipv6(self, subnet6_addr: Ipv6Addr, prefix_len: u8, gateway6: Ipv6Addr) -> Self {
        let mask = u128::MAX
            .checked_shl(128 - u32::from(prefix_len))
            .unwrap_or(0);
        Self {
            subnet6_addr: ip6_to_wire(Ipv6Addr::from(u128::from(subnet6_addr) & mask)),
            subnet6_mask: ip6_to_wire(Ipv6Addr::from(mask)),
            gateway6: ip6_to_wire(gateway6),
            ..self
        }
    }

    /// The IPv6 subnet and its prefix length, if the network has one.
    pub fn subnet6(&self) -> Option<(Ipv6Addr, u8)> {
        self.has_ipv6().then(|| {
            (
                ip6_from_wire(self.subnet6_addr),
                u128::from(ip6_from_wire(self.subnet6_mask)).count_ones() as u8,
            )
        })
    }

    pub fn gateway6(&self) -> Ipv6Addr {
        ip6_from_wire(self.gateway6)
    }

    pub fn subnet_addr(&self) -> Ipv4Addr {
        ip_from_wire(self.subnet_addr)
    }

    pub fn prefix_len(&self) -> u8 {
        u32::from_be(self.subnet_mask).count_ones() as u8
    }

    pub fn gateway_ip(&self) -> Ipv4Addr {
        ip_from_wire(self.gateway_ip)
    }

    /// Whether `addr` is in the subnet.
    pub fn has(&self, addr: Ipv4Addr) -> bool {
        self.contains(ip_to_wire(addr))
    }
}

impl Config {
    /// The host's address; every other field 0, to be filled with struct
    /// update syntax (`Config { uplink_ifindex, ..Config::new(..) }`).
    pub fn new(host_ip: Ipv4Addr) -> Self {
        Self {
            host_ip: ip_to_wire(host_ip),
            ..Self::default()
        }
    }

    pub fn host_ip(&self) -> Ipv4Addr {
        ip_from_wire(self.host_ip)
    }

    /// The uplink's global IPv6 address, if it has one.
    pub fn host_ip6(&self) -> Option<Ipv6Addr> {
        (self.host_ip6 != Ip6::UNSPECIFIED).then(|| ip6_from_wire(self.host_ip6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_give_back_what_constructors_took() {
        let (a, b) = (Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(1, 2, 3, 4));
        let key = FlowKey::new(a, b, 33000, 80, Proto::Tcp);
        assert_eq!(
            (key.src(), key.dst(), key.sport(), key.dport(), key.proto()),
            (a, b, 33000, 80, Some(Proto::Tcp))
        );
        // The wire bytes, as the packet carries them.
        assert_eq!(key.saddr.to_ne_bytes(), [10, 77, 0, 2]);
        assert_eq!(key.dport.to_ne_bytes(), [0, 80]);

        let port = PortKey::new(None::<Ipv4Addr>, 8080, Proto::Udp);
        assert_eq!(port.host_ip, 0);
        assert_eq!((port.host_ip(), port.host_port()), (None, 8080));
        assert_eq!(PortKey::new(Some(b), 1, Proto::Tcp).host_ip(), Some(b));

        let target = PortTarget::new(a, 80);
        assert_eq!((target.container_ip(), target.container_port()), (a, 80));
    }

    #[test]
    fn networks_contain_their_subnet_only() {
        let net = Network::new(
            Ipv4Addr::new(10, 88, 1, 7),
            24,
            Ipv4Addr::new(10, 88, 1, 1),
            5,
            0,
        );
        assert_eq!(
            (net.subnet_addr(), net.prefix_len()),
            (Ipv4Addr::new(10, 88, 1, 0), 24)
        );
        assert!(net.has(Ipv4Addr::new(10, 88, 1, 200)));
        assert!(!net.has(Ipv4Addr::new(10, 88, 2, 1)));
        assert!(!Network::default().has(Ipv4Addr::new(0, 0, 0, 0)));
    }

    #[test]
    fn proto_names_and_numbers() {
        for proto in Proto::ALL {
            assert_eq!(proto.name().parse(), Ok(proto));
            assert_eq!(Proto::from_number(proto.number()), Some(proto));
        }
        assert_eq!("TCP".parse::<Proto>(), Err(UnknownProto));
        assert_eq!(Proto::from_number(47), None);
    }
}
