//! Map keys and values shared by netpath's eBPF programs and its userspace.
//!
//! Every type is `#[repr(C)]`, padded explicitly and `Pod`, so both sides agree on
//! the bytes and the maps carry BTF that `bpftool map dump` can print. IPv4
//! addresses and ports are kept in network byte order exactly as they sit in the
//! packet (a `u32`/`u16` holding the wire bytes), so the datapath never swaps.
#![no_std]

use bytemuck::{Pod, Zeroable};

#[cfg(feature = "user")]
pub mod host;
#[cfg(feature = "user")]
pub mod load;
#[cfg(feature = "user")]
pub use host::Proto;

/// Bumped whenever a map's key or value layout, or a map's kind, changes. Pins
/// live under a directory named after it, so a netpath never adopts maps laid out
/// by another version.
pub const LAYOUT_VERSION: u32 = 7;

/// An IPv6 address: four `u32`s holding its 16 wire bytes in order.
pub type Ip6 = [u32; 4];

/// The address of one family as the maps hold it: `u32` (IPv4) or [`Ip6`].
pub trait Addr:
    Copy + Default + PartialEq + Eq + core::hash::Hash + core::fmt::Debug + Pod + 'static
{
    /// `AF_INET` or `AF_INET6`.
    const AF: u8;
    /// The unspecified address (0.0.0.0, ::): "none" or "every" in a record.
    const UNSPECIFIED: Self;
    /// Whether `self` is in `net`'s subnet of this family.
    fn in_subnet(self, net: &Network) -> bool;
    /// `net`'s gateway address of this family.
    fn gateway_of(net: &Network) -> Self;
    /// The host's address of this family: the masquerade source.
    fn host_of(cfg: &Config) -> Self;
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

impl Addr for u32 {
    const AF: u8 = AF_INET;
    const UNSPECIFIED: Self = 0;
    #[inline(always)]
    fn in_subnet(self, net: &Network) -> bool {
        net.contains(self)
    }
    #[inline(always)]
    fn gateway_of(net: &Network) -> Self {
        net.gateway_ip
    }
    #[inline(always)]
    fn host_of(cfg: &Config) -> Self {
        cfg.host_ip
    }
}

impl Addr for Ip6 {
    const AF: u8 = AF_INET6;
    const UNSPECIFIED: Self = [0; 4];
    #[inline(always)]
    fn in_subnet(self, net: &Network) -> bool {
        net.contains6(self)
    }
    #[inline(always)]
    fn gateway_of(net: &Network) -> Self {
        net.gateway6
    }
    #[inline(always)]
    fn host_of(cfg: &Config) -> Self {
        cfg.host_ip6
    }
}

/// `unsafe impl Pod + Zeroable` for the instantiations of a generic record,
/// each checked to have no implicit padding: its size is the sum of its
/// fields'. (bytemuck's derive can't check a generic struct.)
macro_rules! pod_for {
    ($name:ident { $($field:ident: $ty:ty),+ $(,)? }) => {
        pod_for!(@one $name, u32, { $($ty),+ });
        pod_for!(@one $name, Ip6, { $($ty),+ });
    };
    (@one $name:ident, $addr:ty, { $($ty:ty),+ }) => {
        const _: () = {
            type A = $addr;
            assert!(core::mem::size_of::<$name<A>>() == 0 $(+ core::mem::size_of::<$ty>())+);
            // SAFETY: repr(C), every field Pod, no padding (asserted above).
            unsafe impl Zeroable for $name<A> {}
            unsafe impl Pod for $name<A> {}
        };
    };
}

/// Names of the pinned maps and programs, shared so userspace finds what the
/// object declares.
pub mod names {
    pub const CONFIG: &str = "CONFIG";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const PORTS: &str = "PORTS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const CT_REPLY: &str = "CT_REPLY";
    pub const STATS: &str = "STATS";
    pub const EVENTS: &str = "EVENTS";
    pub const SOCK_REVNAT: &str = "SOCK_REVNAT";
    pub const ROUTE_GEN: &str = "ROUTE_GEN";
    pub const FLOW_COUNTS: &str = "FLOW_COUNTS";
    pub const SNAT_PORTS: &str = "SNAT_PORTS";
    pub const SNAT_SHARES: &str = "SNAT_SHARES";
    pub const SLOW_PATHS: &str = "SLOW_PATHS";
    pub const ALLOWED: &str = "ALLOWED";
    pub const NETWORKS: &str = "NETWORKS";
    pub const SUBNETS: &str = "SUBNETS";
    pub const NETWORK_DROPS: &str = "NETWORK_DROPS";
    /// The IPv6 twins of the maps above: the same records over `Ip6`.
    pub const ENDPOINTS6: &str = "ENDPOINTS6";
    pub const PORTS6: &str = "PORTS6";
    pub const CONNTRACK6: &str = "CONNTRACK6";
    pub const CT_REPLY6: &str = "CT_REPLY6";
    pub const SUBNETS6: &str = "SUBNETS6";
    pub const SNAT_PORTS6: &str = "SNAT_PORTS6";
    pub const SNAT_SHARES6: &str = "SNAT_SHARES6";
    pub const FLOW_COUNTS6: &str = "FLOW_COUNTS6";
    pub const SOCK_REVNAT6: &str = "SOCK_REVNAT6";
    /// Every map, each pinned under its name.
    pub const MAPS: [&str; 26] = [
        CONFIG,
        ENDPOINTS,
        PORTS,
        CONNTRACK,
        CT_REPLY,
        STATS,
        EVENTS,
        SOCK_REVNAT,
        ROUTE_GEN,
        FLOW_COUNTS,
        SNAT_PORTS,
        SNAT_SHARES,
        SLOW_PATHS,
        ALLOWED,
        NETWORKS,
        SUBNETS,
        NETWORK_DROPS,
        ENDPOINTS6,
        PORTS6,
        CONNTRACK6,
        CT_REPLY6,
        SUBNETS6,
        SNAT_PORTS6,
        SNAT_SHARES6,
        FLOW_COUNTS6,
        SOCK_REVNAT6,
    ];

    pub const PROG_FROM_CONTAINER: &str = "from_container";
    /// The first packet of a flow from a container: `from_container` and
    /// `to_uplink` tail-call it (`SLOW_PATHS[SLOW_PATH_NEW_FLOW]`), attached
    /// nowhere.
    pub const PROG_FROM_CONTAINER_NEW_FLOW: &str = "from_container_new_flow";
    pub const PROG_FROM_UPLINK: &str = "from_uplink";
    /// The IPv6 programs: the IPv4 entry points tail-call them
    /// (`SLOW_PATHS[SLOW_PATH_*6]`) for IPv6 frames, so each family's
    /// program is verified apart. Attached nowhere.
    pub const PROG_FROM_CONTAINER6: &str = "from_container6";
    pub const PROG_FROM_CONTAINER6_NEW_FLOW: &str = "from_container6_new_flow";
    pub const PROG_FROM_UPLINK6: &str = "from_uplink6";
    pub const PROG_TO_UPLINK6: &str = "to_uplink6";
    /// ICMPv6 errors from containers and the uplink, in a program (and a
    /// stack) of their own.
    pub const PROG_ICMP_ERROR6: &str = "icmp_error6";
    pub const PROG_TO_UPLINK: &str = "to_uplink";
    pub const PROG_XDP_UPLINK: &str = "xdp_uplink";
    pub const PROG_XDP_PASS: &str = "xdp_pass";
    /// Returns TC_ACT_OK without reading the packet: the baseline of program
    /// cost measurements, attached nowhere.
    pub const PROG_TC_PASS: &str = "tc_pass";
    pub const PROG_CONNECT4: &str = "sock_connect4";
    pub const PROG_SENDMSG4: &str = "sock_sendmsg4";
    pub const PROG_RECVMSG4: &str = "sock_recvmsg4";
    pub const PROG_GETPEERNAME4: &str = "sock_getpeername4";
    pub const PROG_CONNECT6: &str = "sock_connect6";
    pub const PROG_RECVMSG6: &str = "sock_recvmsg6";
    pub const PROG_GETPEERNAME6: &str = "sock_getpeername6";
    pub const PROG_SENDMSG6: &str = "sock_sendmsg6";
}

/// `SLOW_PATHS` index of `from_container_new_flow`.
pub const SLOW_PATH_NEW_FLOW: u32 = 0;
/// `SLOW_PATHS` indexes of the programs that ask for new flows, where the
/// slow path returns.
pub const SLOW_PATH_FROM_CONTAINER: u32 = 1;
pub const SLOW_PATH_TO_UPLINK: u32 = 2;
/// `SLOW_PATHS` indexes of the IPv6 programs (see `names::PROG_*6`).
pub const SLOW_PATH_NEW_FLOW6: u32 = 3;
pub const SLOW_PATH_FROM_CONTAINER6: u32 = 4;
pub const SLOW_PATH_TO_UPLINK6: u32 = 5;
pub const SLOW_PATH_FROM_UPLINK6: u32 = 6;
pub const SLOW_PATH_ICMP_ERROR6: u32 = 7;
/// Slots of `SLOW_PATHS`.
pub const SLOW_PATHS_LEN: u32 = 8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// `Config::flags`: the uplink ingress translations run in XDP, so the TC
/// ingress program on the uplink only passes what XDP handed up.
pub const CONFIG_FLAG_XDP: u32 = 1 << 0;
/// `Config::flags`, set by `xdp_uplink` itself: the uplink delivers frames
/// whose checksum is left to offload (CHECKSUM_PARTIAL, from a veth peer
/// with TX checksumming on). XDP sees neither that state nor can it keep
/// it through a redirect, so from then on it passes every frame up to the
/// TC program, which handles such frames.
pub const CONFIG_FLAG_XDP_FALLBACK: u32 = 1 << 1;
/// `Config::flags`: IPv6 is on (`up --ipv6`, the default); without it the
/// datapath drops containers' IPv6 as before.
pub const CONFIG_FLAG_IPV6: u32 = 1 << 2;
/// `Config::flags`: `--ipv6-mode routed`: containers' IPv6 addresses are
/// routed as they are, no NAT66 (the host owns the prefix).
pub const CONFIG_FLAG_IPV6_ROUTED: u32 = 1 << 3;

/// Instance-wide settings, the single element of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct Config {
    /// The uplink's primary IPv4 address: the masquerade source and the address
    /// published ports answer on.
    pub host_ip: u32,
    pub uplink_ifindex: u32,
    /// `bpf_get_netns_cookie` of the host netns: the socket hooks act only there.
    pub netns_cookie: u64,
    /// Host byte order: the reserved range SNAT ports are taken from.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub flags: u32,
    /// The MAC of every bridge of the instance (each is its own L2 segment,
    /// so they can share it): the source MAC of frames redirected into
    /// containers, whichever network they are on.
    pub gateway_mac: [u8; 6],
    /// Host order. While `netns_cookie` is 0 (kernels without
    /// SO_NETNS_COOKIE), netpath's probe connect to 127.0.0.1 on this port
    /// (the socket `probe_cookie` names) teaches the socket hooks the host
    /// netns's cookie.
    pub probe_port: u16,
    /// Most flows one container may hold open (0: no limit).
    pub max_flows_per_container: u32,
    /// Most flows one outside source may hold open to published ports (0: no
    /// limit).
    pub max_flows_per_source: u32,
    /// The socket cookie (SO_COOKIE) of netpath's probe socket: only that
    /// socket's connect to the probe port counts, for any process of the
    /// hooked cgroup, in any netns, can connect to 127.0.0.1 too.
    pub probe_cookie: u64,
    /// Most SNAT ports one container may hold open toward one destination
    /// (0: no limit), so that one container can't take every port to a
    /// server the others use too.
    pub snat_ports_per_container: u32,
    pub _pad: u32,
    /// The uplink's global IPv6 address: the NAT66 masquerade source and
    /// the address published ports answer on over IPv6 (:: if it has none).
    pub host_ip6: Ip6,
}

impl Config {
    /// Whether `xdp_uplink` passes everything up to TC for good (see
    /// `CONFIG_FLAG_XDP_FALLBACK`).
    #[inline(always)]
    pub fn xdp_fell_back(&self) -> bool {
        self.flags & CONFIG_FLAG_XDP_FALLBACK != 0
    }

    #[inline(always)]
    pub fn ipv6(&self) -> bool {
        self.flags & CONFIG_FLAG_IPV6 != 0
    }

    #[inline(always)]
    pub fn ipv6_routed(&self) -> bool {
        self.flags & CONFIG_FLAG_IPV6_ROUTED != 0
    }
}

/// `ENDPOINTS` key is the container's IPv4 (wire order), `ENDPOINTS6`'s its
/// IPv6 ([`Ip6`]); this is the value of both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct Endpoint {
    /// ifindex of the host-side veth: `bpf_redirect_peer` target, and the only
    /// interface this address may come from.
    pub ifindex: u32,
    /// MAC of the container's interface.
    pub mac: [u8; 6],
    /// The network this address is on: its index in `NETWORKS`.
    pub network_id: u16,
}

/// Most networks one instance has: network ids are below this.
pub const NETWORKS_MAX: u32 = 256;

/// `Network::flags`: no way out of the subnet (no masquerade, no published
/// ports, no host address but its gateway), as Docker's `--internal`.
pub const NETWORK_INTERNAL: u32 = 1 << 0;
/// `Network::flags`: containers on it may not reach each other directly
/// (Docker's `--icc=false`); published ports and the gateway still work.
pub const NETWORK_NO_ICC: u32 = 1 << 1;

/// `NETWORKS` value, indexed by network id: one bridge and its subnet. Every
/// network of an instance shares the one datapath; `SUBNETS` finds a
/// network by address. Networks are isolated from each other: a container
/// reaches another network only through a published port of the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct Network {
    /// The subnet's network address and mask (wire order); mask 0: no
    /// network has this id.
    pub subnet_addr: u32,
    pub subnet_mask: u32,
    /// The bridge's address, the containers' gateway: a host address.
    pub gateway_ip: u32,
    pub bridge_ifindex: u32,
    /// `NETWORK_*`.
    pub flags: u32,
    pub _pad: u32,
    /// The IPv6 subnet (wire order), as above; mask all 0: the network has
    /// no IPv6.
    pub subnet6_addr: Ip6,
    pub subnet6_mask: Ip6,
    /// The bridge's IPv6 address, the containers' IPv6 gateway.
    pub gateway6: Ip6,
}

impl Network {
    #[inline(always)]
    pub fn contains(&self, addr: u32) -> bool {
        self.subnet_mask != 0 && addr & self.subnet_mask == self.subnet_addr
    }

    #[inline(always)]
    pub fn has_ipv6(&self) -> bool {
        self.subnet6_mask[0] != 0
    }

    #[inline(always)]
    pub fn contains6(&self, addr: Ip6) -> bool {
        self.has_ipv6()
            && addr[0] & self.subnet6_mask[0] == self.subnet6_addr[0]
            && addr[1] & self.subnet6_mask[1] == self.subnet6_addr[1]
            && addr[2] & self.subnet6_mask[2] == self.subnet6_addr[2]
            && addr[3] & self.subnet6_mask[3] == self.subnet6_addr[3]
    }

    #[inline(always)]
    pub fn is_internal(&self) -> bool {
        self.flags & NETWORK_INTERNAL != 0
    }

    #[inline(always)]
    pub fn allows_icc(&self) -> bool {
        self.flags & NETWORK_NO_ICC == 0
    }
}

/// Indexes of `NetworkDrops::packets`: the isolation refusals, counted per
/// network of the sending container (and in `STATS` as every verdict).
pub mod network_drop {
    /// To a container or address of another network.
    pub const OTHER_NETWORK: usize = 0;
    /// To another container of a `--icc=false` network.
    pub const ICC: usize = 1;
    /// Out of an `--internal` network.
    pub const INTERNAL: usize = 2;
    pub const LEN: usize = 4;
    /// Names for output, indexed like the counters; empty = unused slot.
    pub const NAMES: [&str; LEN] = ["other_network", "icc", "internal", ""];
}

/// `NETWORK_DROPS` value (per-CPU array indexed by network id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct NetworkDrops {
    pub packets: [u64; network_drop::LEN],
}

/// `PORTS` (`PORTS6`) key: a published host port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey<A: Addr = u32> {
    /// The host address the mapping is bound to, unspecified for every host
    /// address.
    pub host_ip: A,
    /// Wire order.
    pub host_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// `PortTarget::flags`: the port has an allow-list, so a new flow to it
/// needs its source admitted by `ALLOWED` (see `AllowKey`). Ports without
/// one (the common case) cost no lookup there.
pub const PORT_RESTRICTED: u16 = 1 << 0;

pod_for!(PortKey {
    host_ip: A,
    host_port: u16,
    proto: u8,
    _pad: u8
});

/// `PORTS` (`PORTS6`) value: where a published port leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTarget<A: Addr = u32> {
    pub container_ip: A,
    /// Wire order.
    pub container_port: u16,
    /// `PORT_RESTRICTED`.
    pub flags: u16,
}

pod_for!(PortTarget {
    container_ip: A,
    container_port: u16,
    flags: u16
});

impl<A: Addr> PortTarget<A> {
    #[inline(always)]
    pub fn is_restricted(&self) -> bool {
        self.flags & PORT_RESTRICTED != 0
    }
}

/// `ALLOWED` key data, behind the LPM trie's prefix length: a restricted
/// port's `PORTS` key, then an outside source prefix. Every entry covers
/// the whole port key, so its prefix length is `ALLOW_PORT_BITS` plus the
/// source prefix's; the datapath looks up `ALLOW_PORT_BITS + 32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct AllowKey {
    pub port: PortKey,
    /// Wire order.
    pub saddr: u32,
    /// Never matched (prefixes end within `saddr`); makes the key data 16
    /// bytes, so the trie keeps the value right after it 8-aligned.
    pub _pad: u32,
}

/// Bits of `AllowKey` a port's entries always match: the `PortKey`.
pub const ALLOW_PORT_BITS: u32 = 64;

/// `ALLOWED` value. A restricted port has one entry per allowed prefix and
/// one for 0.0.0.0/0 that refuses (unless 0.0.0.0/0 itself is allowed), so
/// a lookup always finds the rule that decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct AllowRule {
    /// First packets this rule decided (atomic adds): flows admitted, or
    /// for the refusing rule, packets refused.
    pub packets: u64,
    /// 1: admit, 0: refuse.
    pub allow: u8,
    pub _pad: [u8; 7],
}

/// A flow's 5-tuple as a packet carries it when it reaches one of our hooks.
/// ICMP echo uses the echo identifier as both ports, so the reversed tuple of a
/// request is the tuple of its reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey<A: Addr = u32> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

pod_for!(FlowKey {
    saddr: A,
    daddr: A,
    sport: u16,
    dport: u16,
    proto: u8,
    _pad: [u8; 3]
});

impl<A: Addr> FlowKey<A> {
    #[inline(always)]
    pub fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// Where SNAT flows go, and from which translated address: the reply tuples
/// of all SNAT flows toward one destination differ only in the SNAT port,
/// so the ports in use are counted per destination (`SNAT_PORTS` key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnatDestination<A: Addr = u32> {
    pub nat_addr: A,
    pub dst_addr: A,
    /// Wire order; 0 for ICMP echo, whose reply carries the SNAT id in both
    /// "ports".
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

pod_for!(SnatDestination {
    nat_addr: A,
    dst_addr: A,
    dst_port: u16,
    proto: u8,
    _pad: u8
});

impl<A: Addr> SnatDestination<A> {
    /// The destination of an SNAT flow, from its reply tuple.
    #[inline(always)]
    pub fn of_reply(reply: &FlowKey<A>) -> Self {
        Self {
            nat_addr: reply.daddr,
            dst_addr: reply.saddr,
            dst_port: if reply.proto == IPPROTO_ICMP || reply.proto == IPPROTO_ICMPV6 {
                0
            } else {
                reply.sport
            },
            proto: reply.proto,
            _pad: 0,
        }
    }
}

/// Capacity of `SNAT_PORTS`: destinations with a pool.
pub const SNAT_POOLS_MAX: usize = 4096;

/// The most ports an SNAT range may hold: what one `SnatPortPool` covers.
pub const SNAT_POOL_PORTS: u32 = 32768;
/// 64-bit words of `SnatPortPool::used`.
pub const SNAT_POOL_WORDS: usize = (SNAT_POOL_PORTS / 64) as usize;

/// `SNAT_PORTS` value: which SNAT ports toward one destination are taken.
/// Bit `i` of `used` is port `snat_port_min + i`; bit `w` of `full` says
/// word `w` of `used` has no clear bit, so a search reads at most
/// `full`'s words and one of `used`'s. Hints: the claim of the reply tuple
/// in `CT_REPLY` decides, and the agent rewrites both from the conntrack
/// table on every GC pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct SnatPortPool {
    pub used: [u64; SNAT_POOL_WORDS],
    pub full: [u64; SNAT_POOL_WORDS / 64],
}

impl SnatPortPool {
    /// Marks port offset `offset` (from `snat_port_min`) taken.
    #[inline(always)]
    pub fn mark_used(&mut self, offset: u32) {
        let word = Self::word_of(offset);
        self.used[word] |= 1 << (offset % 64);
        if self.used[word] == u64::MAX {
            self.full[word / 64] |= 1 << (word % 64);
        }
    }

    /// The word of `used` that holds `offset`'s bit. The mask is what lets
    /// the verifier see the index in bounds; read through a volatile load,
    /// LLVM can't prove it redundant (where the caller checked the offset
    /// against the range) and drop it.
    #[inline(always)]
    fn word_of(offset: u32) -> usize {
        // SAFETY: a read of a local.
        let offset = unsafe { core::ptr::read_volatile(&offset) };
        (offset / 64) as usize & (SNAT_POOL_WORDS - 1)
    }
}

/// `SNAT_SHARES` key: one container's SNAT flows toward one destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnatShareKey<A: Addr = u32> {
    pub container: A,
    pub destination: SnatDestination<A>,
}

pod_for!(SnatShareKey { container: A, destination: SnatDestination<A> });

/// What the datapath does to a flow.
pub mod nat_kind {
    /// Container to off-host: source rewritten to the host IP and an SNAT port.
    pub const MASQUERADE: u8 = 1;
    /// Outside to a published port: destination rewritten to the container.
    pub const DNAT: u8 = 2;
    /// Container to a published port of the host: DNAT to the target and SNAT to
    /// the gateway, so the reply comes back through us.
    pub const HAIRPIN: u8 = 3;
    /// Container to off-host over IPv6 in `--ipv6-mode routed`: nothing
    /// translated, tracked so that its replies come back in.
    pub const ROUTED: u8 = 4;
}

/// TCP states as the conntrack tracks them; each has its own timeout.
pub mod tcp_state {
    pub const NONE: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const SYN_RECV: u8 = 2;
    pub const ESTABLISHED: u8 = 3;
    pub const FIN_WAIT: u8 = 4;
    pub const TIME_WAIT: u8 = 5;
    pub const CLOSED: u8 = 6;
}

/// `FlowEntry::flags`.
pub const FLOW_SEEN_REPLY: u8 = 1 << 0;
pub const FLOW_FIN_ORIGINAL: u8 = 1 << 1;
pub const FLOW_FIN_REPLY: u8 = 1 << 2;
/// `FlowEntry::seq_end[DIR_REPLY]` is known (the reply's SYN was seen).
pub const FLOW_REPLY_SEQ_KNOWN: u8 = 1 << 3;

/// Direction indexes of `FlowEntry::packets` and `bytes`.
pub const DIR_ORIGINAL: usize = 0;
pub const DIR_REPLY: usize = 1;

/// `NextHop::kind`.
pub mod next_hop {
    /// Nothing cached.
    pub const NONE: u8 = 0;
    /// Out of `ifindex` to a neighbour, as `bpf_fib_lookup` said.
    pub const NEIGHBOUR: u8 = 1;
    /// Into a local container: `bpf_redirect_peer` to `ifindex`, `dmac` the
    /// container's MAC (from `ENDPOINTS`).
    pub const CONTAINER: u8 = 2;
}

/// Where one direction of a flow leaves once translated, cached in the flow so
/// an established flow skips the FIB and the `ENDPOINTS` lookup. Valid while
/// `route_gen` equals the `ROUTE_GEN` map's value (the agent bumps it on
/// every link, address, route, rule or neighbour change in the host netns,
/// which includes containers coming and going) and for at most a second (in
/// case no agent runs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct NextHop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub ifindex: u32,
    /// 0: nothing cached.
    pub route_gen: u32,
    /// The egress device's MTU (`NEIGHBOUR`): larger packets go to the
    /// kernel, which sends the ICMP error.
    pub mtu: u16,
    /// `next_hop::*`.
    pub kind: u8,
    pub _pad: u8,
    pub looked_up_ns: u64,
}

/// `CONNTRACK` value, keyed by the flow's original tuple. The reply direction has
/// a second key in `CT_REPLY` (reply tuple → original tuple); the agent's GC
/// removes the two together, and a reply key whose original is gone is deleted
/// where it is found. Both maps are plain hashes, not LRU: nothing evicts half a
/// pair behind our back, and a full table is a counted drop of new flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry<A: Addr = u32> {
    /// The tuple replies carry when they reach us, before reverse translation.
    pub reply: FlowKey<A>,
    /// `bpf_ktime_get_ns` at creation and at the last packet.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Per direction: `DIR_ORIGINAL`, `DIR_REPLY`.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub nat_kind: u8,
    pub tcp_state: u8,
    pub flags: u8,
    pub _pad: [u8; 5],
    /// Per direction: `DIR_ORIGINAL`, `DIR_REPLY`.
    pub nexthop: [NextHop; 2],
    /// TCP, per direction (host order): the end of the sequence space that
    /// direction has sent (highest seq + length seen), as nf_conntrack's
    /// `td_end`. RST and FIN are judged against it.
    pub seq_end: [u32; 2],
}

pod_for!(FlowEntry {
    reply: FlowKey<A>,
    created_ns: u64,
    last_seen_ns: u64,
    packets: [u64; 2],
    bytes: [u64; 2],
    nat_kind: u8,
    tcp_state: u8,
    flags: u8,
    _pad: [u8; 5],
    nexthop: [NextHop; 2],
    seq_end: [u32; 2],
});

/// Verdict counters, indexes into `STATS` (per-CPU array of u64). Every exit
/// of a TC or XDP program counts exactly one of them (see the eBPF crate's
/// `Verdict`), so `netpath stats` accounts for every packet the datapath saw.
pub mod stat {
    pub const PASS: u32 = 0;
    pub const REDIRECT_PEER: u32 = 1;
    pub const REDIRECT_NEIGH: u32 = 2;
    pub const REDIRECT: u32 = 3;
    pub const XDP_REDIRECT: u32 = 4;
    pub const BRIDGE_FALLBACK: u32 = 5;
    pub const SOCK_REWRITE: u32 = 6;
    pub const FLOW_CREATED: u32 = 7;
    /// A new flow took the place of an unassured one in a full table
    /// (nf_conntrack's early_drop). Counted beside the packet's verdict.
    pub const CT_EARLY_DROP: u32 = 8;
    pub const DROP_SPOOFED: u32 = 16;
    pub const DROP_NO_SNAT_PORT: u32 = 17;
    pub const DROP_MALFORMED: u32 = 18;
    pub const DROP_CT_FULL: u32 = 19;
    pub const DROP_FRAGMENT: u32 = 20;
    /// The FIB has no route the fast path can use (unreachable, blackhole,
    /// a local destination): the kernel's stack decides, and answers.
    pub const PASS_NO_ROUTE: u32 = 21;
    pub const PASS_NOT_OURS: u32 = 22;
    pub const PASS_TTL: u32 = 23;
    pub const PASS_FRAG_NEEDED: u32 = 24;
    pub const ICMP_ERROR_TRANSLATED: u32 = 25;
    pub const XDP_PASS: u32 = 26;
    /// From the uplink to the container network (a container or the
    /// gateway) in no flow and opening none: direct routing to containers.
    pub const DROP_UNSOLICITED: u32 = 27;
    /// From the uplink with a source that can't be outside: the container
    /// subnet, the host's own address, loopback.
    pub const DROP_MARTIAN_SOURCE: u32 = 28;
    /// To a loopback address (127.0.0.0/8) on a wire: never ours to route.
    pub const DROP_MARTIAN_DESTINATION: u32 = 29;
    /// A packet in no flow that cannot open one (TCP without a lone SYN, an
    /// echo reply): only a first packet opens a flow.
    pub const DROP_NOT_INITIAL: u32 = 30;
    /// An ARP frame from a container claiming another IP or MAC.
    pub const DROP_SPOOFED_ARP: u32 = 31;
    /// A frame from a container that is neither IPv4 nor ARP (IPv6, VLAN
    /// tags, anything else).
    pub const DROP_ETHERTYPE: u32 = 32;
    /// A container's packet that would leave untranslated (an ICMP error or
    /// another protocol we don't translate, addressed off-host).
    pub const DROP_UNTRANSLATED: u32 = 33;
    /// A TCP RST or FIN outside the receiver's window (a blind reset).
    pub const DROP_TCP_OUT_OF_WINDOW: u32 = 34;
    /// A new flow over the per-source limit for inbound flows.
    pub const DROP_SOURCE_LIMIT: u32 = 35;
    /// A new flow over the per-container limit.
    pub const DROP_CONTAINER_LIMIT: u32 = 36;
    /// A container's new SNAT flow toward a destination to which it holds
    /// its share of the SNAT ports already.
    pub const DROP_SNAT_SHARE: u32 = 37;
    /// `from_container` could not hand a new flow to its slow path (no
    /// program in `SLOW_PATHS`: never, once `up` has loaded it).
    pub const DROP_NO_SLOW_PATH: u32 = 38;
    /// A new flow to a published port from a source its allow-list does
    /// not admit.
    pub const DROP_NOT_ALLOWED: u32 = 39;
    /// From a container to a container or address of another network
    /// (network isolation).
    pub const DROP_OTHER_NETWORK: u32 = 40;
    /// From a container to another of its `--icc=false` network.
    pub const DROP_ICC: u32 = 41;
    /// From a container of an `--internal` network to outside its subnet.
    pub const DROP_INTERNAL: u32 = 42;
    /// Passed up from XDP to TC because the uplink delivers partial
    /// checksums (`CONFIG_FLAG_XDP_FALLBACK`).
    pub const XDP_PASS_FALLBACK: u32 = 43;
    /// A router advertisement or redirect from a container (RA guard): only
    /// the gateway routes.
    pub const DROP_ROUTER_MESSAGE: u32 = 44;
    /// IPv6 with extension headers the datapath does not translate, that
    /// would otherwise leave or arrive untranslated.
    pub const DROP_EXTENSION_HEADER: u32 = 45;
    /// Neighbour discovery from a container claiming another address or
    /// MAC: an advertisement for an address not its own, a link-layer
    /// address option not its MAC (the IPv6 twin of `DROP_SPOOFED_ARP`).
    pub const DROP_SPOOFED_ND: u32 = 46;
    pub const STATS_LEN: u32 = 48;

    /// Names for output, indexed like the counters; empty = unused slot.
    pub const NAMES: [&str; STATS_LEN as usize] = [
        "pass",
        "redirect_peer",
        "redirect_neigh",
        "redirect",
        "xdp_redirect",
        "bridge_fallback",
        "sock_rewrite",
        "flow_created",
        "conntrack_early_drop",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "drop_spoofed_source",
        "drop_no_snat_port",
        "drop_malformed",
        "drop_conntrack_full",
        "drop_fragment",
        "pass_no_fast_route",
        "pass_not_ours",
        "pass_ttl_expiring",
        "pass_frag_needed",
        "icmp_error_translated",
        "xdp_pass",
        "drop_unsolicited",
        "drop_martian_source",
        "drop_martian_destination",
        "drop_not_initial",
        "drop_spoofed_arp",
        "drop_ethertype",
        "drop_untranslated",
        "drop_tcp_out_of_window",
        "drop_source_limit",
        "drop_container_limit",
        "drop_snat_share",
        "drop_no_slow_path",
        "drop_not_allowed",
        "drop_other_network",
        "drop_icc",
        "drop_internal",
        "xdp_pass_fallback",
        "drop_router_message",
        "drop_extension_header",
        "drop_spoofed_nd",
        "",
    ];
}

/// `SOCK_REVNAT` key: a host socket whose connect/sendmsg the socket hooks
/// rewrote to a container, and the container address it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct SockRevNatKey {
    pub cookie: u64,
    pub container_ip: u32,
    pub container_port: u16,
    pub _pad: u16,
}

/// `SOCK_REVNAT6` key: as `SockRevNatKey`, for an IPv6 socket rewritten to
/// a container's IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct SockRevNatKey6 {
    pub cookie: u64,
    pub container_ip: Ip6,
    pub container_port: u16,
    pub _pad: [u16; 3],
}

/// `SOCK_REVNAT6` value: the published IPv6 address the application asked
/// for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct SockRevNatValue6 {
    pub orig_ip: Ip6,
    pub orig_port: u16,
    pub _pad: u16,
}

/// `SOCK_REVNAT` value: the published address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct SockRevNatValue {
    pub orig_ip: u32,
    pub orig_port: u16,
    /// `SOCK_ORIG_*`: how an IPv6 socket spelled `orig_ip` (0: as is, or
    /// v4-mapped).
    pub flags: u16,
}

/// `SockRevNatValue::flags`: the IPv6 socket asked for `[::1]`, looked up as
/// 127.0.0.1.
pub const SOCK_ORIG_IPV6_LOOPBACK: u16 = 1;

/// `FlowEvent::kind`.
pub const EVENT_OPENED: u8 = 1;
pub const EVENT_CLOSED: u8 = 2;

/// One record of the `EVENTS` ring buffer. Both families share the ring:
/// a record's size tells which (`FlowEvent` or `FlowEvent<Ip6>`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent<A: Addr = u32> {
    pub key: FlowKey<A>,
    pub reply: FlowKey<A>,
    pub ts_ns: u64,
    pub kind: u8,
    pub nat_kind: u8,
    pub tcp_state: u8,
    pub _pad: [u8; 5],
}

pod_for!(FlowEvent {
    key: FlowKey<A>,
    reply: FlowKey<A>,
    ts_ns: u64,
    kind: u8,
    nat_kind: u8,
    tcp_state: u8,
    _pad: [u8; 5],
});

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: every type is repr(C), Pod, and has no implicit padding.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for Network {}
    unsafe impl aya::Pod for NetworkDrops {}
    unsafe impl aya::Pod for AllowKey {}
    unsafe impl aya::Pod for AllowRule {}
    unsafe impl aya::Pod for SockRevNatKey {}
    unsafe impl aya::Pod for SockRevNatValue {}
    unsafe impl aya::Pod for SockRevNatKey6 {}
    unsafe impl aya::Pod for SockRevNatValue6 {}
    unsafe impl aya::Pod for SnatPortPool {}
    unsafe impl<A: Addr> aya::Pod for PortKey<A> where Self: Pod {}
    unsafe impl<A: Addr> aya::Pod for PortTarget<A> where Self: Pod {}
    unsafe impl<A: Addr> aya::Pod for FlowKey<A> where Self: Pod {}
    unsafe impl<A: Addr> aya::Pod for FlowEntry<A> where Self: Pod {}
    unsafe impl<A: Addr> aya::Pod for FlowEvent<A> where Self: Pod {}
    unsafe impl<A: Addr> aya::Pod for SnatDestination<A> where Self: Pod {}
    unsafe impl<A: Addr> aya::Pod for SnatShareKey<A> where Self: Pod {}
}
