//! The two address families. Every step of the datapath (parse, conntrack,
//! NAT, checksums, forwarding) is written once, generic over [`Family`];
//! what differs between IPv4 and IPv6 (the IP header, the maps, which
//! checksums cover the addresses) is here. Each family's programs are
//! verified apart: the IPv4 entry points tail-call the IPv6 ones.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, bpf_redir_neigh},
    btf_maps::{Array, HashMap, LruHashMap},
    maps::lpm_trie::Key,
};
use netpath_common::{
    Addr, Config, Endpoint, FlowEntry, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, Ip6, PortKey,
    PortTarget, SLOW_PATH_FROM_CONTAINER, SLOW_PATH_FROM_CONTAINER6, SLOW_PATH_NEW_FLOW,
    SLOW_PATH_NEW_FLOW6, SLOW_PATH_TO_UPLINK, SLOW_PATH_TO_UPLINK6, SNAT_POOLS_MAX,
    SnatDestination, SnatPortPool, SnatShareKey, stat,
};

use super::{
    Kept, KeptKey, allow, conntrack,
    csum::{self, RewriteResult},
    ctx::Packet as Ctx,
    fragments,
    maps::{
        CONNTRACK, CONNTRACK6, CT_RECENT, CT_RECENT_NEXT, CT_RECENT_NEXT6, CT_RECENT_SLOTS,
        CT_RECENT6, CT_REPLY, CT_REPLY6, ENDPOINTS, ENDPOINTS6, FLOW_COUNTS, FLOW_COUNTS6,
        NO_PREALLOC, NewFlowRequest, PORTS, PORTS6, SNAT_PORTS, SNAT_PORTS6, SNAT_SHARES,
        SNAT_SHARES6, SUBNETS, SUBNETS6, Scratch,
    },
    parse::{self, Header, L4, Packet, Parsed},
    verdict::Verdict,
};

/// Capacities the maps are declared with (the loader sets the real ones).
pub const ENDPOINTS_MAX: usize = 4096;
pub const PORTS_MAX: usize = 65536;
pub const FLOWS_MAX: usize = 65536;

pub trait Family: 'static {
    type Addr: Addr;
    /// The EtherType of this family's frames.
    const ETH_P: u16;
    /// Whether the IP header has a checksum of its own (IPv4).
    const IP_HEADER_CSUM: bool;
    /// Whether rare paths run in frames of their own (IPv6, whose larger
    /// addresses would take the programs past BPF's 512-byte stack).
    const OUTLINE: bool;
    /// The ICMP of this family: its protocol number and echo types.
    const ICMP: u8;
    const ECHO_REQUEST: u8;
    const ECHO_REPLY: u8;
    /// Offsets in the IP header.
    const SRC_OFF: usize;
    const DST_OFF: usize;
    const TTL_OFF: usize;
    /// Whether the ICMP checksum covers the addresses (ICMPv6 has a
    /// pseudo-header, ICMPv4 none).
    const ICMP_PSEUDO_HEADER: bool;
    /// `SLOW_PATHS` slots of this family's programs.
    const SLOW_PATH_NEW_FLOW: u32;
    const SLOW_PATH_FROM_CONTAINER: u32;
    const SLOW_PATH_TO_UPLINK: u32;

    fn endpoints() -> &'static HashMap<Self::Addr, Endpoint, ENDPOINTS_MAX>;
    fn ports() -> &'static HashMap<PortKey<Self::Addr>, PortTarget<Self::Addr>, PORTS_MAX>;
    fn conntrack() -> &'static HashMap<FlowKey<Self::Addr>, FlowEntry<Self::Addr>, FLOWS_MAX>;
    fn ct_reply() -> &'static HashMap<FlowKey<Self::Addr>, FlowKey<Self::Addr>, FLOWS_MAX>;
    fn ct_recent() -> &'static Array<FlowKey<Self::Addr>, { CT_RECENT_SLOTS as usize }>;
    fn ct_recent_next() -> &'static Array<u32, 1>;
    /// [`conntrack::early_drop`] for this family, as a global BPF function.
    fn early_drop() -> bool;
    fn flow_counts() -> &'static LruHashMap<Self::Addr, u32, FLOWS_MAX>;
    fn snat_ports()
    -> &'static HashMap<SnatDestination<Self::Addr>, SnatPortPool, SNAT_POOLS_MAX, NO_PREALLOC>;
    fn snat_shares() -> &'static LruHashMap<SnatShareKey<Self::Addr>, u32, FLOWS_MAX>;
    /// This CPU's scratch slots of this family.
    fn scratch_entry(scratch: &mut Scratch) -> &mut FlowEntry<Self::Addr>;
    fn scratch_request(scratch: &mut Scratch) -> &mut NewFlowRequest<Self::Addr>;
    /// This CPU's slot for a parsed packet (see `keep`); IPv6 only.
    fn scratch_packet(scratch: &mut Scratch, which: Kept) -> &mut Packet<Self::Addr>;
    /// This CPU's slot for a tuple (see `keep_key`); IPv6 only.
    fn scratch_key(scratch: &mut Scratch, which: KeptKey) -> &mut FlowKey<Self::Addr>;

    /// The id of the network whose subnet holds `addr` (`SUBNETS`).
    fn network_of(addr: Self::Addr) -> Option<u32>;
    /// 127.0.0.0/8, ::1.
    fn is_loopback(addr: Self::Addr) -> bool;
    /// Parses the IP header at `l3` and the L4 fields after it.
    fn parse_l3<C: Ctx>(ctx: &C, l3: usize, header: Header) -> Parsed<Self::Addr>;
    /// Fixes the IP header's own checksum for an address change (IPv6 has
    /// none).
    fn fix_ip_csum<C: Ctx>(
        ctx: &mut C,
        l3: usize,
        old: Self::Addr,
        new: Self::Addr,
    ) -> RewriteResult;
    /// Fixes the L4 checksum at `csum_off` for an address change; `flags`
    /// as for `bpf_l4_csum_replace`, without the size.
    fn fix_l4_csum<C: Ctx>(
        ctx: &mut C,
        csum_off: usize,
        old: Self::Addr,
        new: Self::Addr,
        flags: u64,
    ) -> RewriteResult;
    /// The one's-complement sum of an address as it sits in memory (for a
    /// pseudo-header).
    fn addr_sum(addr: Self::Addr) -> u32;
    /// Fills the FIB lookup's family and addresses.
    fn fib_addrs(params: &mut bpf_fib_lookup, src: Self::Addr, dst: Self::Addr);
    /// The next hop a FIB lookup returned.
    fn fib_nexthop(params: &bpf_fib_lookup) -> Self::Addr;
    /// Fills `bpf_redirect_neigh`'s next hop.
    fn set_neigh(nh: &mut bpf_redir_neigh, addr: Self::Addr);
    /// Fragments: a first fragment records its ports, a later one takes
    /// them (IPv4; IPv6 fragments are never followed, see `parse`).
    fn record_fragment(pkt: &Packet<Self::Addr>);
    fn resolve_fragment(pkt: &mut Packet<Self::Addr>) -> bool;
    /// What a container's packet meets before its source is checked:
    /// IPv6's neighbour discovery, which speaks from link-local addresses,
    /// and the RA guard.
    fn screen_from_container<C: Ctx>(ctx: &C, pkt: &Packet<Self::Addr>) -> Option<Verdict>;
    /// A UDP datagram whose checksum is 0: "none" over IPv4, invalid over
    /// IPv6 (RFC 8200, 8.1), where it is never translated.
    fn udp_csum_missing<C: Ctx>(ctx: &C, pkt: &Packet<Self::Addr>) -> bool;
    /// Multicast and link-local destinations (IPv6): the bridge's and the
    /// kernel's, never translated.
    fn is_link_scope(addr: Self::Addr) -> bool;
    /// Whether containers' addresses of this family leave as they are
    /// (`--ipv6-mode routed`).
    fn routed(cfg: &Config) -> bool;
    /// Whether a published port's allow-list admits a new flow from `saddr`.
    fn admits(
        port: &PortKey<Self::Addr>,
        target: &PortTarget<Self::Addr>,
        saddr: Self::Addr,
    ) -> bool;
}

pub struct V4;
pub struct V6;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `sum` folded to 16 bits, one's complement.
#[inline(always)]
fn fold(mut sum: u32) -> u32 {
    sum = (sum & 0xffff) + (sum >> 16);
    (sum & 0xffff) + (sum >> 16)
}

/// Sums the two 16-bit halves of `word`.
#[inline(always)]
fn halves(word: u32) -> u32 {
    (word & 0xffff) + (word >> 16)
}

impl Family for V4 {
    type Addr = u32;
    const ETH_P: u16 = parse::ETH_P_IP;
    const IP_HEADER_CSUM: bool = true;
    const OUTLINE: bool = false;
    const ICMP: u8 = IPPROTO_ICMP;
    const ECHO_REQUEST: u8 = 8;
    const ECHO_REPLY: u8 = 0;
    const SRC_OFF: usize = 12;
    const DST_OFF: usize = 16;
    const TTL_OFF: usize = 8;
    const ICMP_PSEUDO_HEADER: bool = false;
    const SLOW_PATH_NEW_FLOW: u32 = SLOW_PATH_NEW_FLOW;
    const SLOW_PATH_FROM_CONTAINER: u32 = SLOW_PATH_FROM_CONTAINER;
    const SLOW_PATH_TO_UPLINK: u32 = SLOW_PATH_TO_UPLINK;

    #[inline(always)]
    fn endpoints() -> &'static HashMap<u32, Endpoint, ENDPOINTS_MAX> {
        &ENDPOINTS
    }
    #[inline(always)]
    fn ports() -> &'static HashMap<PortKey, PortTarget, PORTS_MAX> {
        &PORTS
    }
    #[inline(always)]
    fn conntrack() -> &'static HashMap<FlowKey, FlowEntry, FLOWS_MAX> {
        &CONNTRACK
    }
    #[inline(always)]
    fn ct_reply() -> &'static HashMap<FlowKey, FlowKey, FLOWS_MAX> {
        &CT_REPLY
    }
    #[inline(always)]
    fn ct_recent() -> &'static Array<FlowKey, { CT_RECENT_SLOTS as usize }> {
        &CT_RECENT
    }
    #[inline(always)]
    fn ct_recent_next() -> &'static Array<u32, 1> {
        &CT_RECENT_NEXT
    }
    #[inline(always)]
    fn early_drop() -> bool {
        conntrack::netpath_early_drop4() != 0
    }
    #[inline(always)]
    fn flow_counts() -> &'static LruHashMap<u32, u32, FLOWS_MAX> {
        &FLOW_COUNTS
    }
    #[inline(always)]
    fn snat_ports() -> &'static HashMap<SnatDestination, SnatPortPool, SNAT_POOLS_MAX, NO_PREALLOC>
    {
        &SNAT_PORTS
    }
    #[inline(always)]
    fn snat_shares() -> &'static LruHashMap<SnatShareKey, u32, FLOWS_MAX> {
        &SNAT_SHARES
    }
    #[inline(always)]
    fn scratch_entry(scratch: &mut Scratch) -> &mut FlowEntry {
        &mut scratch.entry
    }
    #[inline(always)]
    fn scratch_request(scratch: &mut Scratch) -> &mut NewFlowRequest<u32> {
        &mut scratch.new_flow
    }
    /// IPv4 keeps its packets on the stack (`OUTLINE` is false): the new
    /// flow request's packet stands in, never used.
    #[inline(always)]
    fn scratch_packet(scratch: &mut Scratch, _which: Kept) -> &mut Packet<u32> {
        &mut scratch.new_flow.pkt
    }
    /// Likewise never used.
    #[inline(always)]
    fn scratch_key(scratch: &mut Scratch, _which: KeptKey) -> &mut FlowKey {
        &mut scratch.new_flow.pkt.key
    }
    #[inline(always)]
    fn network_of(addr: u32) -> Option<u32> {
        SUBNETS.get(&Key::new(32, addr)).copied()
    }
    #[inline(always)]
    fn is_loopback(addr: u32) -> bool {
        addr.to_ne_bytes()[0] == 127
    }
    #[inline(always)]
    fn parse_l3<C: Ctx>(ctx: &C, l3: usize, header: Header) -> Parsed<u32> {
        parse::parse_ipv4(ctx, l3, header)
    }
    #[inline(always)]
    fn fix_ip_csum<C: Ctx>(ctx: &mut C, l3: usize, old: u32, new: u32) -> RewriteResult {
        ctx.l3_csum_replace(l3 + csum::IP_CSUM_OFF, old, new, 4)
    }
    #[inline(always)]
    fn fix_l4_csum<C: Ctx>(
        ctx: &mut C,
        csum_off: usize,
        old: u32,
        new: u32,
        flags: u64,
    ) -> RewriteResult {
        ctx.l4_csum_replace(csum_off, old, new, flags | 4)
    }
    #[inline(always)]
    fn addr_sum(addr: u32) -> u32 {
        halves(addr)
    }
    #[inline(always)]
    fn fib_addrs(params: &mut bpf_fib_lookup, src: u32, dst: u32) {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = src;
        params.__bindgen_anon_4.ipv4_dst = dst;
    }
    #[inline(always)]
    fn fib_nexthop(params: &bpf_fib_lookup) -> u32 {
        unsafe { params.__bindgen_anon_4.ipv4_dst }
    }
    #[inline(always)]
    fn set_neigh(nh: &mut bpf_redir_neigh, addr: u32) {
        nh.nh_family = u32::from(AF_INET);
        nh.__bindgen_anon_1.ipv4_nh = addr;
    }
    #[inline(always)]
    fn record_fragment(pkt: &Packet<u32>) {
        fragments::record(pkt);
    }
    #[inline(always)]
    fn resolve_fragment(pkt: &mut Packet<u32>) -> bool {
        fragments::resolve(pkt)
    }
    #[inline(always)]
    fn screen_from_container<C: Ctx>(_ctx: &C, _pkt: &Packet<u32>) -> Option<Verdict> {
        None
    }
    #[inline(always)]
    fn udp_csum_missing<C: Ctx>(_ctx: &C, _pkt: &Packet<u32>) -> bool {
        false
    }
    #[inline(always)]
    fn is_link_scope(_addr: u32) -> bool {
        false
    }
    #[inline(always)]
    fn routed(_cfg: &Config) -> bool {
        false
    }
    #[inline(always)]
    fn admits(port: &PortKey, target: &PortTarget, saddr: u32) -> bool {
        allow::admits(port, target, saddr)
    }
}

impl Family for V6 {
    type Addr = Ip6;
    const ETH_P: u16 = parse::ETH_P_IPV6;
    const IP_HEADER_CSUM: bool = false;
    const OUTLINE: bool = true;
    const ICMP: u8 = IPPROTO_ICMPV6;
    const ECHO_REQUEST: u8 = 128;
    const ECHO_REPLY: u8 = 129;
    const SRC_OFF: usize = 8;
    const DST_OFF: usize = 24;
    const TTL_OFF: usize = 7;
    const ICMP_PSEUDO_HEADER: bool = true;
    const SLOW_PATH_NEW_FLOW: u32 = SLOW_PATH_NEW_FLOW6;
    const SLOW_PATH_FROM_CONTAINER: u32 = SLOW_PATH_FROM_CONTAINER6;
    const SLOW_PATH_TO_UPLINK: u32 = SLOW_PATH_TO_UPLINK6;

    #[inline(always)]
    fn endpoints() -> &'static HashMap<Ip6, Endpoint, ENDPOINTS_MAX> {
        &ENDPOINTS6
    }
    #[inline(always)]
    fn ports() -> &'static HashMap<PortKey<Ip6>, PortTarget<Ip6>, PORTS_MAX> {
        &PORTS6
    }
    #[inline(always)]
    fn conntrack() -> &'static HashMap<FlowKey<Ip6>, FlowEntry<Ip6>, FLOWS_MAX> {
        &CONNTRACK6
    }
    #[inline(always)]
    fn ct_reply() -> &'static HashMap<FlowKey<Ip6>, FlowKey<Ip6>, FLOWS_MAX> {
        &CT_REPLY6
    }
    #[inline(always)]
    fn ct_recent() -> &'static Array<FlowKey<Ip6>, { CT_RECENT_SLOTS as usize }> {
        &CT_RECENT6
    }
    #[inline(always)]
    fn ct_recent_next() -> &'static Array<u32, 1> {
        &CT_RECENT_NEXT6
    }
    #[inline(always)]
    fn early_drop() -> bool {
        conntrack::netpath_early_drop6() != 0
    }
    #[inline(always)]
    fn flow_counts() -> &'static LruHashMap<Ip6, u32, FLOWS_MAX> {
        &FLOW_COUNTS6
    }
    #[inline(always)]
    fn snat_ports()
    -> &'static HashMap<SnatDestination<Ip6>, SnatPortPool, SNAT_POOLS_MAX, NO_PREALLOC> {
        &SNAT_PORTS6
    }
    #[inline(always)]
    fn snat_shares() -> &'static LruHashMap<SnatShareKey<Ip6>, u32, FLOWS_MAX> {
        &SNAT_SHARES6
    }
    #[inline(always)]
    fn scratch_entry(scratch: &mut Scratch) -> &mut FlowEntry<Ip6> {
        &mut scratch.entry6
    }
    #[inline(always)]
    fn scratch_request(scratch: &mut Scratch) -> &mut NewFlowRequest<Ip6> {
        &mut scratch.new_flow6
    }
    #[inline(always)]
    fn scratch_packet(scratch: &mut Scratch, which: Kept) -> &mut Packet<Ip6> {
        match which {
            Kept::Packet => &mut scratch.packet6,
            Kept::Quoted => &mut scratch.quoted6,
        }
    }
    #[inline(always)]
    fn scratch_key(scratch: &mut Scratch, which: KeptKey) -> &mut FlowKey<Ip6> {
        &mut scratch.keys6[which as usize % 3]
    }
    #[inline(always)]
    fn network_of(addr: Ip6) -> Option<u32> {
        SUBNETS6.get(&Key::new(128, addr)).copied()
    }
    #[inline(always)]
    fn is_loopback(addr: Ip6) -> bool {
        addr == [0, 0, 0, 1u32.to_be()]
    }
    #[inline(always)]
    fn parse_l3<C: Ctx>(ctx: &C, l3: usize, header: Header) -> Parsed<Ip6> {
        parse::parse_ipv6(ctx, l3, header)
    }
    #[inline(always)]
    fn fix_ip_csum<C: Ctx>(_ctx: &mut C, _l3: usize, _old: Ip6, _new: Ip6) -> RewriteResult {
        Ok(())
    }
    #[inline(always)]
    fn fix_l4_csum<C: Ctx>(
        ctx: &mut C,
        csum_off: usize,
        old: Ip6,
        new: Ip6,
        flags: u64,
    ) -> RewriteResult {
        // The difference as one 16-bit sum, added in one update (from 0):
        // four updates would keep both addresses live across four helper
        // calls, spilled to a stack IPv6 can't spare. The sum is over
        // words as they sit in memory, as the helper takes them.
        let mut diff = 0;
        for i in 0..4 {
            diff += halves(!old[i]) + halves(new[i]);
        }
        ctx.l4_csum_replace(csum_off, 0, fold(diff), flags | 4)
    }
    #[inline(always)]
    fn addr_sum(addr: Ip6) -> u32 {
        halves(addr[0]) + halves(addr[1]) + halves(addr[2]) + halves(addr[3])
    }
    #[inline(always)]
    fn fib_addrs(params: &mut bpf_fib_lookup, src: Ip6, dst: Ip6) {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = src;
        params.__bindgen_anon_4.ipv6_dst = dst;
    }
    #[inline(always)]
    fn fib_nexthop(params: &bpf_fib_lookup) -> Ip6 {
        unsafe { params.__bindgen_anon_4.ipv6_dst }
    }
    #[inline(always)]
    fn set_neigh(nh: &mut bpf_redir_neigh, addr: Ip6) {
        nh.nh_family = u32::from(AF_INET6);
        nh.__bindgen_anon_1.ipv6_nh = addr;
    }
    #[inline(always)]
    fn record_fragment(_pkt: &Packet<Ip6>) {}
    #[inline(always)]
    fn resolve_fragment(_pkt: &mut Packet<Ip6>) -> bool {
        false
    }
    #[inline(always)]
    fn screen_from_container<C: Ctx>(ctx: &C, pkt: &Packet<Ip6>) -> Option<Verdict> {
        // NAT's incremental update would turn the 0 into a checksum that
        // looks computed and is wrong; the receiver drops it anyway.
        if Self::udp_csum_missing(ctx, pkt) {
            return Some(Verdict::drop(stat::DROP_MALFORMED));
        }
        if pkt.key.proto == IPPROTO_ICMPV6 {
            if is_router_message(pkt.icmp_type) {
                return Some(Verdict::drop(stat::DROP_ROUTER_MESSAGE));
            }
            // Whatever its source and destination: the host learns
            // neighbours from a message to its own global address too.
            if is_neighbour_message(pkt.icmp_type) && !speaks_for_itself(ctx, pkt.icmp_type) {
                return Some(Verdict::drop(stat::DROP_SPOOFED_ND));
            }
        }
        if pkt.extension {
            match behind_extensions(ctx, pkt) {
                // RFC 7113: such a packet to the link goes to the kernel
                // and the bridge, which would accept it. (Elsewhere
                // receivers take router messages only from link-local
                // addresses, which may speak only to the link, below.)
                Behind::Icmpv6(icmp_type)
                    if is_router_message(icmp_type) && Self::is_link_scope(pkt.key.daddr) =>
                {
                    return Some(Verdict::drop(stat::DROP_ROUTER_MESSAGE));
                }
                Behind::Unseen if Self::is_link_scope(pkt.key.daddr) => {
                    return Some(Verdict::drop(stat::DROP_ROUTER_MESSAGE));
                }
                // No stack sends neighbour discovery behind extension
                // headers; the kernel would take it, unchecked here.
                Behind::Icmpv6(icmp_type) if is_neighbour_message(icmp_type) => {
                    return Some(Verdict::drop(stat::DROP_SPOOFED_ND));
                }
                // Elsewhere too: it could hide neighbour discovery to the
                // host's own address.
                Behind::Unseen => return Some(Verdict::drop(stat::DROP_EXTENSION_HEADER)),
                _ => {}
            }
        }
        let saddr = pkt.key.saddr;
        if !is_link_local(saddr) && saddr != Ip6::UNSPECIFIED {
            return None;
        }
        // Neighbour discovery, duplicate address detection, MLD: from a
        // link-local (or no) address, to the link only.
        Some(if Self::is_link_scope(pkt.key.daddr) {
            Verdict::pass(stat::PASS_NOT_OURS)
        } else {
            Verdict::drop(stat::DROP_SPOOFED)
        })
    }
    #[inline(always)]
    fn udp_csum_missing<C: Ctx>(ctx: &C, pkt: &Packet<Ip6>) -> bool {
        pkt.l4_kind == L4::Udp && ctx.load::<[u8; 2]>(pkt.l4 + UDP_CSUM_OFF) == Ok([0, 0])
    }
    #[inline(always)]
    fn routed(cfg: &Config) -> bool {
        cfg.ipv6_routed()
    }
    #[inline(always)]
    fn is_link_scope(addr: Ip6) -> bool {
        is_link_local(addr) || addr[0].to_ne_bytes()[0] == 0xff
    }
    /// Allow-lists hold IPv4 prefixes: a restricted port is IPv4 only
    /// (userspace publishes none on IPv6; should one be there, it admits
    /// nobody).
    #[inline(always)]
    fn admits(_port: &PortKey<Ip6>, target: &PortTarget<Ip6>, _saddr: Ip6) -> bool {
        !target.is_restricted()
    }
}

/// Neighbour discovery messages only a router sends: a container sending
/// one tries to become the others' router (RA guard, RFC 6105).
#[inline(always)]
fn is_router_message(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        parse::ICMPV6_ROUTER_ADVERTISEMENT | parse::ICMPV6_REDIRECT
    )
}

/// Neighbour discovery messages a host sends, which teach their receivers
/// (the host, the other containers) an address's link-layer address.
#[inline(always)]
fn is_neighbour_message(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        parse::ICMPV6_ROUTER_SOLICITATION
            | parse::ICMPV6_NEIGHBOUR_SOLICITATION
            | parse::ICMPV6_NEIGHBOUR_ADVERTISEMENT
    )
}

/// Where a container's neighbour discovery message starts: right after the
/// fixed header (behind extension headers it is dropped, see
/// `screen_from_container`). A constant offset keeps the checks cheap to
/// verify.
const ND_L4: usize = parse::ETH_HLEN + parse::IPV6_HLEN;

/// Neighbour discovery options looked at; a message with more is judged
/// spoofed (the kernel takes the first of a kind, wherever it is). Hosts
/// send one or two: a link-layer address, a DAD nonce.
const ND_OPTIONS_SEEN: usize = 3;

/// ND option kinds carrying a link-layer address (RFC 4861, 4.6.1).
const ND_OPT_SOURCE_LL_ADDR: u8 = 1;
const ND_OPT_TARGET_LL_ADDR: u8 = 2;

/// Whether a container's router solicitation, neighbour solicitation or
/// advertisement speaks for itself (the idea of RFC 6620, as ARP in
/// `arp_from_container`): an advertisement's target is its own address on
/// this veth (or a link-local one, which nothing ties to a MAC), and every
/// link-layer address option names the frame's source MAC. Otherwise it
/// could take over another container's or the gateway's address in the
/// host's and the other containers' neighbour caches. A solicitation from
/// :: (duplicate address detection) carries no such option and passes.
/// Not inlined: the verifier walks the rest of the program once after it,
/// not once per way through the options (inlined, from_container6 took half
/// again as many instructions to verify).
#[inline(never)]
fn speaks_for_itself<C: Ctx>(ctx: &C, icmp_type: u8) -> bool {
    let (Ok(smac), Ok(payload_len)) = (
        ctx.load::<[u8; 6]>(6),
        ctx.load::<[u8; 2]>(parse::ETH_HLEN + IPV6_PAYLOAD_LEN_OFF),
    ) else {
        return false;
    };
    // Type, code, checksum and 4 bytes (flags or reserved); then the
    // target address of a solicitation or advertisement.
    let mut off = ND_L4 + 8;
    if icmp_type != parse::ICMPV6_ROUTER_SOLICITATION {
        if icmp_type == parse::ICMPV6_NEIGHBOUR_ADVERTISEMENT {
            let Ok(target) = ctx.load::<Ip6>(off) else {
                return false;
            };
            if !is_link_local(target)
                && super::endpoint_on_this_veth::<V6, C>(ctx, target, &smac).is_none()
            {
                return false;
            }
        }
        off += 16;
    }
    let end = ND_L4 + usize::from(u16::from_be_bytes(payload_len));
    for _ in 0..ND_OPTIONS_SEEN {
        if off >= end {
            return true;
        }
        let Ok([kind, len]) = ctx.load::<[u8; 2]>(off) else {
            return false;
        };
        // Length in 8-byte units; 0 is invalid (the kernel drops it too).
        if len == 0 {
            return false;
        }
        if matches!(kind, ND_OPT_SOURCE_LL_ADDR | ND_OPT_TARGET_LL_ADDR)
            && ctx.load::<[u8; 6]>(off + 2) != Ok(smac)
        {
            return false;
        }
        off += usize::from(len) * 8;
    }
    off >= end
}

/// Offset of the payload length in the IPv6 header.
const IPV6_PAYLOAD_LEN_OFF: usize = 4;

/// Hop-by-hop, routing and destination options headers looked through for
/// an ICMPv6 message; a longer chain is not seen through.
const EXTENSION_HEADERS_SEEN: usize = 3;

/// What an IPv6 packet's extension headers hide.
enum Behind {
    /// An ICMPv6 message of this type.
    Icmpv6(u8),
    /// Another protocol, or a fragment: the kernel drops fragmented
    /// neighbour discovery itself (RFC 6980).
    Other,
    /// A chain too long, or too far into the frame, to tell (RFC 7113:
    /// what can't be seen through is dropped).
    Unseen,
}

/// Looks through the extension headers of an IPv6 packet that has them.
#[inline(always)]
fn behind_extensions<C: Ctx>(ctx: &C, pkt: &Packet<Ip6>) -> Behind {
    let mut next = pkt.key.proto;
    // `Parsed::Other` leaves `l4` at the first header after the fixed one.
    let mut off = pkt.l4;
    for _ in 0..=EXTENSION_HEADERS_SEEN {
        match next {
            parse::IPV6_HOP_BY_HOP | parse::IPV6_ROUTING | parse::IPV6_DEST_OPTIONS => {
                let Ok([next_header, len]) = ctx.load::<[u8; 2]>(off) else {
                    return Behind::Unseen;
                };
                next = next_header;
                off += (usize::from(len) + 1) * 8;
            }
            IPPROTO_ICMPV6 => {
                // Type and code: a one-byte load's bounds check compiles
                // to a form the verifier can't follow.
                return ctx
                    .load::<[u8; 2]>(off)
                    .map_or(Behind::Unseen, |[icmp_type, _]| Behind::Icmpv6(icmp_type));
            }
            _ => return Behind::Other,
        }
    }
    Behind::Unseen
}

/// Offset of the checksum in the UDP header.
const UDP_CSUM_OFF: usize = 6;

/// fe80::/10.
#[inline(always)]
fn is_link_local(addr: Ip6) -> bool {
    let b = addr[0].to_ne_bytes();
    b[0] == 0xfe && b[1] & 0xc0 == 0x80
}
