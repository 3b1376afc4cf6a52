//! Program entry points. Each program is a short sequence of the shared steps in
//! `parse`, `conntrack`, `nat` and `fwd`, and ends in a `Verdict`, which
//! counts it. The uplink is untrusted: what arrives there reaches a container
//! only as part of a tracked flow or as the first packet of a new flow to a
//! published port. What a container sends must carry its own addresses, and
//! leaves the host only translated.
mod allow;
mod baseline;
mod conntrack;
mod csum;
mod ctx;
mod family;
mod fragments;
mod fwd;
mod limits;
mod maps;
mod nat;
mod networks;
mod offload;
mod parse;
mod snat_ports;
mod sock;
mod verdict;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use netpath_common::{
    Addr, Config, DIR_ORIGINAL, Endpoint, FlowKey, IPPROTO_TCP, IPPROTO_UDP, PortKey, PortTarget,
    SLOW_PATH_FROM_CONTAINER6, SLOW_PATH_FROM_UPLINK6, SLOW_PATH_ICMP_ERROR6, SLOW_PATH_TO_UPLINK6,
    nat_kind, network_drop, stat,
};

use conntrack::{Flow, Likely};
use csum::Side;
use family::{Family, V4, V6};
use fwd::{Egress, Hop};
use maps::{NewFlowRequest, SLOW_PATHS, config, now_ns, scratch};
use networks::{Net, Reach};
use parse::{ETH_P_IPV6, L4, Packet, Parsed};
use verdict::Verdict;

/// TC ingress of each container's host-side veth: everything a container
/// sends. IPv6 goes on to `from_container6`.
#[classifier]
pub fn from_container(mut ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return Verdict::pass(stat::PASS).tc();
    };
    // A VLAN tag: the kernel took it off into the skb before TC ran.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return Verdict::drop(stat::DROP_ETHERTYPE).tc();
    }
    ctx::linearize_headers(&mut ctx);
    from_container_verdict::<V4>(&mut ctx, cfg).tc()
}

/// `from_container` for IPv6, reached by tail call.
#[classifier]
pub fn from_container6(mut ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return Verdict::pass(stat::PASS).tc();
    };
    from_container_verdict::<V6>(&mut ctx, cfg).tc()
}

/// Hands an IPv6 frame to the IPv6 program in `SLOW_PATHS[slot]`, if
/// IPv6 is on; `otherwise` if not (or the program is missing).
#[inline(always)]
fn to_ipv6_program(ctx: &TcContext, cfg: &Config, slot: u32, otherwise: Verdict) -> Verdict {
    if cfg.ipv6() {
        // SAFETY: a tail call; it returns only when it fails.
        unsafe { SLOW_PATHS.tail_call(ctx, slot) };
    }
    otherwise
}

#[inline(always)]
fn from_container_verdict<F: Family>(ctx: &mut TcContext, cfg: &Config) -> Verdict {
    let (mut parsed, translatable) = match parse::parse::<F, TcContext>(ctx) {
        Parsed::Ours(pkt) => (pkt, true),
        Parsed::Other(other) => (other, false),
        Parsed::Arp => return arp_from_container(ctx),
        Parsed::OtherL2 if parse::ethertype(ctx) == ETH_P_IPV6 => {
            return to_ipv6_program(
                ctx,
                cfg,
                SLOW_PATH_FROM_CONTAINER6,
                Verdict::drop(stat::DROP_ETHERTYPE),
            );
        }
        // VLAN tags, anything else: a container on a bridge network speaks
        // IP, ARP and neighbour discovery.
        Parsed::OtherL2 => return Verdict::drop(stat::DROP_ETHERTYPE),
        Parsed::Malformed => return Verdict::drop(stat::DROP_MALFORMED),
    };
    let pkt = keep::<F>(&mut parsed, Kept::Packet);
    if let Some(verdict) = F::screen_from_container(ctx, pkt) {
        return verdict;
    }
    // Every IP packet, whatever its protocol, carries the container's own
    // address and MAC, which also tell its network.
    let Some(from) = source_network::<F>(ctx, pkt.key.saddr) else {
        // Rare (a misconfigured or hostile container), so worth a record; at
        // debug, which the loader switches off below the agent's level.
        aya_log_ebpf::debug!(ctx, "drop: spoofed source from ifindex {}", unsafe {
            (*ctx.skb.skb).ifindex
        });
        return Verdict::drop(stat::DROP_SPOOFED);
    };
    if F::is_link_scope(pkt.key.daddr) {
        // Multicast and link-local: neighbour discovery, the bridge's.
        return Verdict::pass(stat::PASS_NOT_OURS);
    }
    if !translatable {
        return other_from_container::<F>(cfg, &from, pkt);
    }
    if pkt.l4_kind == L4::Fragment {
        return later_fragment_from_container::<F>(ctx, cfg, &from, pkt);
    }
    F::record_fragment(pkt);
    let dst = pkt.key.daddr;
    if F::is_loopback(dst) {
        return Verdict::drop(stat::DROP_MARTIAN_DESTINATION);
    }
    // Traffic leaving the network (the common case) needs no ENDPOINTS
    // lookup here; a container of another network is not in this subnet.
    if dst.in_subnet(from.net)
        && let Some(ep) = unsafe { F::endpoints().get(dst) }
    {
        // Same network: straight into the peer's netns, no NAT, no TTL
        // change. Checked first: no translated flow is ever addressed to a
        // container's own address from another container (hairpin goes
        // through the host's address, its replies to the gateway's).
        if !from.net.allows_icc() {
            return networks::refuse(&from, network_drop::ICC);
        }
        let ep = *ep;
        return fwd::send::<F>(ctx, cfg, pkt, &Egress::Container(ep), Hop::Bridged);
    }
    if let Some(flow) = conntrack::lookup::<F>(&pkt.key, Likely::from_container(cfg, pkt)) {
        return forward_flow::<F>(ctx, cfg, pkt, &flow);
    }
    if pkt.l4_kind == L4::IcmpError {
        return icmp_error_apart::<F, _>(ctx, cfg, pkt, || {
            untranslated_from_container::<F>(cfg, &from, pkt)
        });
    }
    if from.net.is_internal() && !dst.in_subnet(from.net) {
        // Not even a published port: those are reached through the host.
        return networks::refuse(&from, network_drop::INTERNAL);
    }
    if let Some(Published { target, .. }) = published::<F>(cfg, pkt) {
        return hairpin::<F>(ctx, pkt, &target);
    }
    match networks::reach::<F>(cfg, &from, dst) {
        // The host itself, or broadcast/unknown on the bridge: the kernel's job.
        Reach::Local => Verdict::pass(stat::PASS),
        Reach::OffHost => masquerade::<F>(ctx, cfg, pkt, F::SLOW_PATH_FROM_CONTAINER),
        Reach::Refused(verdict) => verdict,
    }
}

/// A container's new flow to a published port: DNAT to the target and SNAT
/// to the gateway of the target's network, so the target's reply comes
/// back through us even when it is the sender itself, and from another
/// network it sees its own gateway, not a stranger.
#[inline(always)]
fn hairpin<F: Family>(
    ctx: &TcContext,
    pkt: &Packet<F::Addr>,
    target: &PortTarget<F::Addr>,
) -> Verdict {
    if pkt.ttl <= 1 {
        return Verdict::pass(stat::PASS_TTL);
    }
    let Some(to) = networks::containing::<F>(target.container_ip) else {
        // A port whose container's network is gone: nothing to reach.
        return Verdict::drop(stat::DROP_UNTRANSLATED);
    };
    new_flow::<F>(
        ctx,
        pkt,
        NewFlow {
            nat_addr: F::Addr::gateway_of(to.net),
            dst_addr: target.container_ip,
            dst_port: target.container_port,
            nat_kind: nat_kind::HAIRPIN,
            then: F::SLOW_PATH_FROM_CONTAINER,
        },
    )
}

/// The first packet of a flow from a container: the flow is made in a
/// program of its own, `from_container_new_flow`, which the verifier walks
/// apart from the asking one (the port search would take that one past its
/// budget, walked once per state a packet can reach it in; here it is
/// walked once). The request goes through this CPU's scratch space, which
/// the tail call keeps.
#[inline(always)]
fn new_flow<F: Family>(ctx: &TcContext, pkt: &Packet<F::Addr>, flow: NewFlow<F::Addr>) -> Verdict {
    let Some(scratch) = scratch() else {
        return Verdict::drop(stat::DROP_NO_SLOW_PATH);
    };
    // Field by field, into the map: a request built on the stack first
    // would take IPv6's programs past their 512 bytes.
    let request = F::scratch_request(scratch);
    request.pkt = *pkt;
    request.nat_addr = flow.nat_addr;
    request.dst_addr = flow.dst_addr;
    request.dst_port = flow.dst_port;
    request.nat_kind = flow.nat_kind;
    request.then = flow.then;
    // SAFETY: a tail call; it returns only when it fails.
    unsafe { SLOW_PATHS.tail_call(ctx, F::SLOW_PATH_NEW_FLOW) };
    Verdict::drop(stat::DROP_NO_SLOW_PATH)
}

/// The slow path for the first packet of a flow from a container: makes the
/// flow `from_container` or `to_uplink` asked for, then runs that program
/// again, which now finds it. Attached nowhere; reached by tail call only.
#[classifier]
pub fn from_container_new_flow(ctx: TcContext) -> i32 {
    new_flow_slow_path::<V4>(&ctx)
}

/// The same for IPv6 (`from_container6`, `to_uplink6`).
#[classifier]
pub fn from_container6_new_flow(ctx: TcContext) -> i32 {
    new_flow_slow_path::<V6>(&ctx)
}

#[inline(always)]
fn new_flow_slow_path<F: Family>(ctx: &TcContext) -> i32 {
    let Some(cfg) = config() else {
        return Verdict::pass(stat::PASS).tc();
    };
    let Some(scratch) = scratch() else {
        return Verdict::drop(stat::DROP_NO_SLOW_PATH).tc();
    };
    // IPv4's request is copied to the stack, where the verifier keeps what
    // each branch learnt of it (read from the map, the packet's kind is
    // judged again at every use: 60% more paths to walk). IPv6's is read
    // where it is: a copy would take its stack past 512 bytes.
    let copy;
    let request = if F::OUTLINE {
        F::scratch_request(scratch)
    } else {
        copy = *F::scratch_request(scratch);
        &copy
    };
    if let Err(reason) = create_flow::<F>(cfg, request) {
        return Verdict::drop(reason).tc();
    }
    // SAFETY: a tail call; it returns only when it fails.
    unsafe { SLOW_PATHS.tail_call(ctx, request.then) };
    Verdict::drop(stat::DROP_NO_SLOW_PATH).tc()
}

#[inline(always)]
fn create_flow<F: Family>(
    cfg: &Config,
    request: &NewFlowRequest<F::Addr>,
) -> Result<Flow<F::Addr>, u32> {
    if F::routed(cfg) && request.nat_kind == nat_kind::ROUTED {
        // Nothing translated: the flow's reply is its own tuple reversed.
        return nat::create_dnat_flow::<F>(
            cfg,
            &request.pkt,
            request.dst_addr,
            request.dst_port,
            nat_kind::ROUTED,
        );
    }
    nat::create_snat_flow::<F>(
        cfg,
        &request.pkt,
        request.nat_addr,
        request.dst_addr,
        request.dst_port,
        request.nat_kind,
    )
}

/// IPv4 from a container that we don't translate (another protocol, an ICMP
/// type we leave alone, a fragment of one): it may go to the host or its
/// own network only.
#[inline(always)]
fn other_from_container<F: Family>(cfg: &Config, from: &Net, other: &Packet<F::Addr>) -> Verdict {
    if F::is_loopback(other.key.daddr) {
        return Verdict::drop(stat::DROP_MARTIAN_DESTINATION);
    }
    untranslated_from_container::<F>(cfg, from, other)
}

/// A container's packet that no flow translates and none may open: into
/// the kernel where the container may reach untranslated, else dropped.
#[inline(always)]
fn untranslated_from_container<F: Family>(
    cfg: &Config,
    from: &Net,
    pkt: &Packet<F::Addr>,
) -> Verdict {
    match networks::reach::<F>(cfg, from, pkt.key.daddr) {
        Reach::Local => Verdict::pass(stat::PASS_NOT_OURS),
        Reach::OffHost if pkt.fragment || pkt.l4_kind == L4::Fragment => {
            Verdict::drop(stat::DROP_FRAGMENT)
        }
        Reach::OffHost if pkt.extension => Verdict::drop(stat::DROP_EXTENSION_HEADER),
        Reach::OffHost => Verdict::drop(stat::DROP_UNTRANSLATED),
        Reach::Refused(verdict) => verdict,
    }
}

/// A later fragment from a container: it follows its datagram's flow, or
/// goes where an untranslated packet may (another container, the host).
/// A path of its own: the main path's many branches need not be walked
/// again for a packet that can only follow a flow.
#[inline(always)]
fn later_fragment_from_container<F: Family>(
    ctx: &mut TcContext,
    cfg: &Config,
    from: &Net,
    pkt: &mut Packet<F::Addr>,
) -> Verdict {
    let dst = pkt.key.daddr;
    if F::is_loopback(dst) {
        return Verdict::drop(stat::DROP_MARTIAN_DESTINATION);
    }
    if F::resolve_fragment(pkt)
        && let Some(flow) = conntrack::lookup::<F>(&pkt.key, Likely::from_container(cfg, pkt))
    {
        return forward_flow::<F>(ctx, cfg, pkt, &flow);
    }
    if dst.in_subnet(from.net)
        && from.net.allows_icc()
        && let Some(ep) = unsafe { F::endpoints().get(dst) }
    {
        let ep = *ep;
        return fwd::send::<F>(ctx, cfg, pkt, &Egress::Container(ep), Hop::Bridged);
    }
    untranslated_from_container::<F>(cfg, from, pkt)
}

/// ARP from a container must speak for itself: its sender MAC is the frame's
/// source, and its sender IP (0 in an address probe) belongs to that MAC on
/// this veth. Otherwise it could take over another container's address in
/// the host's neighbour table.
#[inline(always)]
fn arp_from_container(ctx: &TcContext) -> Verdict {
    // The sender's hardware and protocol addresses follow the 8-byte ARP
    // header; Ethernet/IPv4 ARP is the only kind a container has reason to send.
    let (Ok(smac), Ok(sha), Ok(spa)) = (
        ctx.load::<[u8; 6]>(6),
        ctx.load::<[u8; 6]>(ETH_ARP_SHA),
        ctx.load::<u32>(ETH_ARP_SHA + 6),
    ) else {
        return Verdict::drop(stat::DROP_MALFORMED);
    };
    if sha != smac {
        return Verdict::drop(stat::DROP_SPOOFED_ARP);
    }
    if spa != 0 && endpoint_on_this_veth::<V4, _>(ctx, spa, &smac).is_none() {
        aya_log_ebpf::debug!(
            ctx,
            "drop: spoofed source {:i} in ARP from ifindex {}",
            u32::from_be(spa),
            unsafe { (*ctx.skb.skb).ifindex }
        );
        return Verdict::drop(stat::DROP_SPOOFED_ARP);
    }
    Verdict::pass(stat::PASS)
}

/// Offset of an Ethernet/IPv4 ARP frame's sender hardware address.
const ETH_ARP_SHA: usize = parse::ETH_HLEN + 8;

/// How a program on the uplink finishes a packet once classified: the TC
/// and XDP programs there share the classification and differ only in how
/// they send. (A trait, not an enum of outcomes: an enum holding a flow
/// pointer in one variant and numbers in another compiles to registers the
/// verifier rejects.)
trait UplinkHook: ctx::Packet {
    /// A packet of a tracked flow (a reply to a masqueraded flow, or a flow
    /// to a published port, new or established).
    fn forward<F: Family>(
        &mut self,
        cfg: &Config,
        pkt: &Packet<F::Addr>,
        flow: &Flow<F::Addr>,
    ) -> Verdict;
    /// An ICMP error that may quote one of our flows; `otherwise` when it
    /// quotes none.
    fn icmp_error<F: Family, U: FnOnce() -> Verdict>(
        &mut self,
        cfg: &Config,
        pkt: &Packet<F::Addr>,
        otherwise: U,
    ) -> Verdict;
    /// What to do with a frame this hook can't translate correctly: a
    /// frame whose checksum is left to offload, in XDP (see `offload`).
    fn cannot_translate<F: Family>(&self, pkt: &Packet<F::Addr>) -> Option<Verdict>;
}

impl UplinkHook for TcContext {
    #[inline(always)]
    fn forward<F: Family>(
        &mut self,
        cfg: &Config,
        pkt: &Packet<F::Addr>,
        flow: &Flow<F::Addr>,
    ) -> Verdict {
        forward_flow::<F>(self, cfg, pkt, flow)
    }
    #[inline(always)]
    fn icmp_error<F: Family, U: FnOnce() -> Verdict>(
        &mut self,
        cfg: &Config,
        pkt: &Packet<F::Addr>,
        otherwise: U,
    ) -> Verdict {
        icmp_error_apart::<F, U>(self, cfg, pkt, otherwise)
    }
    /// TC keeps the skb's checksum state: it translates everything.
    #[inline(always)]
    fn cannot_translate<F: Family>(&self, _pkt: &Packet<F::Addr>) -> Option<Verdict> {
        None
    }
}

impl UplinkHook for XdpContext {
    #[inline(always)]
    fn forward<F: Family>(
        &mut self,
        cfg: &Config,
        pkt: &Packet<F::Addr>,
        flow: &Flow<F::Addr>,
    ) -> Verdict {
        xdp_forward::<F>(self, cfg, pkt, flow)
    }
    /// Left to the TC program.
    #[inline(always)]
    fn icmp_error<F: Family, U: FnOnce() -> Verdict>(
        &mut self,
        _cfg: &Config,
        _pkt: &Packet<F::Addr>,
        _otherwise: U,
    ) -> Verdict {
        Verdict::pass(stat::XDP_PASS)
    }
    #[inline(always)]
    fn cannot_translate<F: Family>(&self, pkt: &Packet<F::Addr>) -> Option<Verdict> {
        offload::has_partial_checksum::<F>(self, pkt).then(offload::fall_back)
    }
}

/// Everything that arrives on the uplink: the host's own traffic passes,
/// tracked flows and new flows to published ports are translated, and
/// what can't come from outside or would reach the containers unasked is
/// dropped.
#[inline(always)]
fn from_uplink_verdict<F: Family, C: UplinkHook>(ctx: &mut C, cfg: &Config) -> Verdict {
    let mut parsed = match parse::parse::<F, C>(ctx) {
        Parsed::Ours(pkt) => pkt,
        Parsed::Other(other) => {
            return screen_uplink::<F>(cfg, &other)
                .or_else(|| screen_uplink_source::<F>(&other))
                .unwrap_or_else(|| unsolicited::<F>(&other));
        }
        // Not addressed to anything we translate: the host's own traffic
        // must never suffer from our parser.
        Parsed::Arp | Parsed::OtherL2 | Parsed::Malformed => {
            return Verdict::pass(stat::PASS_NOT_OURS);
        }
    };
    let pkt = keep::<F>(&mut parsed, Kept::Packet);
    if let Some(verdict) = screen_uplink::<F>(cfg, pkt) {
        return verdict;
    }
    if F::udp_csum_missing(ctx, pkt) {
        // Invalid over IPv6, never translated: to the host it is the
        // kernel's (a tunnel of its own may accept it, RFC 6935), toward a
        // container dropped.
        return if networks::is_container_network::<F>(pkt.key.daddr) {
            Verdict::drop(stat::DROP_MALFORMED)
        } else {
            Verdict::pass(stat::PASS_NOT_OURS)
        };
    }
    if let Some(verdict) = ctx.cannot_translate::<F>(pkt) {
        return verdict;
    }
    if pkt.l4_kind == L4::Fragment {
        // A later fragment follows its datagram's flow, or is the host's.
        if F::resolve_fragment(pkt)
            && let Some(flow) = conntrack::lookup::<F>(&pkt.key, Likely::from_uplink(cfg, pkt))
        {
            return forward_from_outside::<F, C>(ctx, cfg, pkt, &flow);
        }
        return if networks::is_container_network::<F>(pkt.key.daddr) {
            Verdict::drop(stat::DROP_FRAGMENT)
        } else {
            Verdict::pass(stat::PASS_NOT_OURS)
        };
    }
    F::record_fragment(pkt);
    if let Some(flow) = conntrack::lookup::<F>(&pkt.key, Likely::from_uplink(cfg, pkt)) {
        return forward_from_outside::<F, C>(ctx, cfg, pkt, &flow);
    }
    if let Some(verdict) = screen_uplink_source::<F>(pkt) {
        return verdict;
    }
    if pkt.l4_kind == L4::IcmpError {
        return ctx.icmp_error::<F, _>(cfg, pkt, || unsolicited::<F>(pkt));
    }
    let Some(Published { key, target }) = published::<F>(cfg, pkt) else {
        return unsolicited::<F>(pkt);
    };
    if !F::admits(&key, &target, pkt.key.saddr) {
        return Verdict::drop(stat::DROP_NOT_ALLOWED);
    }
    if pkt.ttl <= 1 {
        return Verdict::pass(stat::PASS_TTL);
    }
    match nat::create_dnat_flow::<F>(
        cfg,
        pkt,
        target.container_ip,
        target.container_port,
        nat_kind::DNAT,
    ) {
        Ok(flow) => ctx.forward::<F>(cfg, pkt, &flow),
        Err(reason) => Verdict::drop(reason),
    }
}

/// Drops what can't come from outside, as far as it costs no lookup: the
/// host's own address or loopback as source (a spoof), and a loopback
/// destination (a frame aimed at what the host publishes on 127.0.0.1).
#[inline(always)]
fn screen_uplink<F: Family>(cfg: &Config, pkt: &Packet<F::Addr>) -> Option<Verdict> {
    let (saddr, daddr) = (pkt.key.saddr, pkt.key.daddr);
    let host = F::Addr::host_of(cfg);
    if (saddr == host && host != F::Addr::UNSPECIFIED) || F::is_loopback(saddr) {
        return Some(Verdict::drop(stat::DROP_MARTIAN_SOURCE));
    }
    if F::is_loopback(daddr) {
        return Some(Verdict::drop(stat::DROP_MARTIAN_DESTINATION));
    }
    None
}

/// Drops a packet from the uplink with a source in a container network (a
/// spoof, or a host routing into the containers) before it may open
/// anything. A packet of a flow needs no such lookup: see
/// `forward_from_outside`.
#[inline(always)]
fn screen_uplink_source<F: Family>(pkt: &Packet<F::Addr>) -> Option<Verdict> {
    networks::is_container_network::<F>(pkt.key.saddr)
        .then(|| Verdict::drop(stat::DROP_MARTIAN_SOURCE))
}

/// A packet from the uplink of a tracked flow, in a direction that comes
/// from outside: replies to masqueraded flows, and the client's side of a
/// flow to a published port. Anything else (a reply of a container, a
/// packet of a hairpin flow) can only be a spoof with a container's
/// address.
#[inline(always)]
fn forward_from_outside<F: Family, C: UplinkHook>(
    ctx: &mut C,
    cfg: &Config,
    pkt: &Packet<F::Addr>,
    flow: &Flow<F::Addr>,
) -> Verdict {
    // SAFETY: entry points into a live map value.
    let kind = unsafe { (*flow.entry).nat_kind };
    let from_outside = match flow.dir {
        DIR_ORIGINAL => kind == nat_kind::DNAT,
        _ => kind == nat_kind::MASQUERADE || kind == nat_kind::ROUTED,
    };
    if !from_outside {
        return Verdict::drop(stat::DROP_MARTIAN_SOURCE);
    }
    ctx.forward::<F>(cfg, pkt, flow)
}

/// A packet from the uplink in no flow that opens none: into a container
/// network it is unsolicited (IPv6 behind an extension header, which is
/// never translated, counted as such); the host's own traffic passes.
#[inline(always)]
fn unsolicited<F: Family>(pkt: &Packet<F::Addr>) -> Verdict {
    if !networks::is_container_network::<F>(pkt.key.daddr) {
        Verdict::pass(stat::PASS_NOT_OURS)
    } else if pkt.extension {
        Verdict::drop(stat::DROP_EXTENSION_HEADER)
    } else {
        Verdict::drop(stat::DROP_UNSOLICITED)
    }
}

/// TC ingress of the uplink: replies to masqueraded flows, and new and
/// established flows to published ports.
#[classifier]
pub fn from_uplink(mut ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return Verdict::pass(stat::PASS).tc();
    };
    ctx::linearize_headers(&mut ctx);
    if parse::ethertype(&ctx) == ETH_P_IPV6 {
        let passed = Verdict::pass(stat::PASS_NOT_OURS);
        return to_ipv6_program(&ctx, cfg, SLOW_PATH_FROM_UPLINK6, passed).tc();
    }
    from_uplink_verdict::<V4, TcContext>(&mut ctx, cfg).tc()
}

/// `from_uplink` for IPv6, reached by tail call.
#[classifier]
pub fn from_uplink6(mut ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return Verdict::pass(stat::PASS).tc();
    };
    from_uplink_verdict::<V6, TcContext>(&mut ctx, cfg).tc()
}

/// XDP on the uplink (`--accel xdp`): the same translations before an skb
/// exists, redirected straight into the container's veth. What XDP can't
/// finish (ICMP errors, anything not bound for a container) it passes up to
/// the TC program, which handles (and counts) it as usual.
#[xdp]
pub fn xdp_uplink(mut ctx: XdpContext) -> u32 {
    let Some(cfg) = config() else {
        return Verdict::pass(stat::XDP_PASS).xdp();
    };
    if cfg.xdp_fell_back() {
        return Verdict::pass(stat::XDP_PASS_FALLBACK).xdp();
    }
    // IPv6 goes up to TC (`from_uplink6`): its frames parse as not ours.
    let verdict = from_uplink_verdict::<V4, XdpContext>(&mut ctx, cfg);
    if verdict.is_pass() {
        return Verdict::pass(stat::XDP_PASS).xdp();
    }
    verdict.xdp()
}

/// A flow's packet into its container from XDP, or up to TC when the flow
/// doesn't lead into a container (or the TTL is about to expire).
#[inline(always)]
fn xdp_forward<F: Family>(
    ctx: &mut XdpContext,
    cfg: &Config,
    pkt: &Packet<F::Addr>,
    flow: &Flow<F::Addr>,
) -> Verdict {
    if pkt.ttl <= 1 {
        return Verdict::pass(stat::XDP_PASS);
    }
    let target = flow.target();
    let Some(ep) = (unsafe { F::endpoints().get(target.daddr) }) else {
        return Verdict::pass(stat::XDP_PASS);
    };
    let ep = *ep;
    if let Err(reason) = conntrack::update::<F>(flow, pkt, now_ns()) {
        return Verdict::drop(reason);
    }
    let rewritten = nat::rewrite::<F, XdpContext>(ctx, pkt, &target)
        .and_then(|()| csum::dec_ttl::<F, XdpContext>(ctx, pkt))
        .and_then(|()| csum::set_macs(ctx, &ep.mac, &cfg.gateway_mac));
    if rewritten.is_err() {
        return Verdict::drop(stat::DROP_MALFORMED);
    }
    Verdict::redirect(stat::XDP_REDIRECT, unsafe {
        aya_ebpf::helpers::bpf_redirect(ep.ifindex, 0)
    })
}

/// TC egress of the uplink, the safety net: a container's packet that took the
/// kernel's path out (say after the kernel fragmented it) is still masqueraded,
/// and what can't be translated does not leave.
#[classifier]
pub fn to_uplink(mut ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return Verdict::pass(stat::PASS).tc();
    };
    ctx::linearize_headers(&mut ctx);
    if parse::ethertype(&ctx) == ETH_P_IPV6 {
        let passed = Verdict::pass(stat::PASS_NOT_OURS);
        return to_ipv6_program(&ctx, cfg, SLOW_PATH_TO_UPLINK6, passed).tc();
    }
    to_uplink_verdict::<V4>(&mut ctx, cfg).tc()
}

/// `to_uplink` for IPv6, reached by tail call (and again from its slow
/// path once a new flow is made).
#[classifier]
pub fn to_uplink6(mut ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return Verdict::pass(stat::PASS).tc();
    };
    to_uplink_verdict::<V6>(&mut ctx, cfg).tc()
}

#[inline(always)]
fn to_uplink_verdict<F: Family>(ctx: &mut TcContext, cfg: &Config) -> Verdict {
    // The uplink leads into no container network: a container's address
    // there is leaving the host. Translated packets (the host's address)
    // and the host's own traffic skip the lookup.
    let leaving = |pkt: &Packet<F::Addr>| {
        pkt.key.saddr != F::Addr::host_of(cfg) && networks::is_container_network::<F>(pkt.key.saddr)
    };
    let mut parsed = match parse::parse::<F, TcContext>(ctx) {
        Parsed::Ours(pkt) => pkt,
        Parsed::Other(other) if leaving(&other) => {
            return Verdict::drop(if other.fragment {
                stat::DROP_FRAGMENT
            } else if other.extension {
                stat::DROP_EXTENSION_HEADER
            } else {
                stat::DROP_UNTRANSLATED
            });
        }
        _ => return Verdict::pass(stat::PASS_NOT_OURS),
    };
    // Routed: a container's address may leave as it is.
    if !leaving(&parsed) || F::routed(cfg) {
        return Verdict::pass(stat::PASS_NOT_OURS);
    }
    let pkt = keep::<F>(&mut parsed, Kept::Packet);
    // A later fragment is masqueraded as its datagram's flow (addresses
    // only); one whose first we never saw can't be.
    if pkt.l4_kind == L4::Fragment && !F::resolve_fragment(pkt) {
        return Verdict::drop(stat::DROP_FRAGMENT);
    }
    F::record_fragment(pkt);
    if pkt.l4_kind == L4::IcmpError {
        // An error about a flow is translated on the container's veth; one
        // that got here is about nothing we track.
        return Verdict::drop(stat::DROP_UNTRANSLATED);
    }
    masquerade_on_uplink::<F>(ctx, cfg, pkt)
}

/// Keeps NAPI on for a veth that receives XDP-redirected frames.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Anti-spoofing: the source address must be the endpoint on this veth, with
/// its MAC as the frame's source. Gives the endpoint's network.
#[inline(always)]
fn source_network<F: Family>(ctx: &TcContext, saddr: F::Addr) -> Option<Net> {
    let smac = ctx.load::<[u8; 6]>(6).ok()?;
    let ep = endpoint_on_this_veth::<F, _>(ctx, saddr, &smac)?;
    networks::by_id(ep.network_id)
}

/// The endpoint `addr` if it is the one on this veth with MAC `mac`.
#[inline(always)]
fn endpoint_on_this_veth<F: Family, C: ctx::Packet>(
    ctx: &C,
    addr: F::Addr,
    mac: &[u8; 6],
) -> Option<Endpoint> {
    let ep = *unsafe { F::endpoints().get(addr) }?;
    (ep.ifindex == ctx.ifindex() && ep.mac == *mac).then_some(ep)
}

/// What [`new_flow`] asks of the slow path besides the packet.
struct NewFlow<A: Addr> {
    nat_addr: A,
    dst_addr: A,
    dst_port: u16,
    nat_kind: u8,
    then: u32,
}

/// Which parsed packet [`keep`] keeps.
#[derive(Clone, Copy)]
pub enum Kept {
    /// The packet a program runs for.
    Packet,
    /// The packet an ICMP error quotes.
    Quoted,
}

/// Where a parsed packet is kept while a program runs (see [`keep_in`]).
#[inline(always)]
fn keep<F: Family>(parsed: &mut Packet<F::Addr>, which: Kept) -> &mut Packet<F::Addr> {
    keep_in::<F, _>(parsed, |scratch| F::scratch_packet(scratch, which))
}

/// Where a value a program holds is kept: where it was made, on the stack
/// (IPv4), or in this CPU's scratch space, in `slot` (IPv6, whose larger
/// packets and tuples on the stack, or in registers spilled there across
/// helper calls, would take the programs past BPF's 512 bytes). Either way
/// the program holds a reference.
#[inline(always)]
fn keep_in<F: Family, T: Copy + 'static>(
    local: &mut T,
    slot: impl FnOnce(&'static mut maps::Scratch) -> &'static mut T,
) -> &mut T {
    if F::OUTLINE
        && let Some(scratch) = scratch()
    {
        let slot = slot(scratch);
        *slot = *local;
        return slot;
    }
    local
}

/// Which tuple [`keep_key`] keeps.
#[derive(Clone, Copy)]
pub enum KeptKey {
    /// The tuple a flow's packet is translated to.
    Target,
    /// What an ICMP error's quoted header becomes, and its outer one.
    Quoted,
    Outer,
}

/// Where a tuple is kept while the helpers run (see [`keep_in`]).
#[inline(always)]
fn keep_key<F: Family>(key: &mut FlowKey<F::Addr>, which: KeptKey) -> &mut FlowKey<F::Addr> {
    keep_in::<F, _>(key, |scratch| F::scratch_key(scratch, which))
}

/// A published port: its `PORTS` key and value.
struct Published<A: Addr> {
    key: PortKey<A>,
    target: PortTarget<A>,
}

/// The published port a packet opens a flow to: a mapping bound to the
/// destination address, or one bound to every address when the destination
/// is one of the host's. Only a first packet (a TCP SYN, a UDP datagram)
/// matches: the host's own connections may use a published number as their
/// local port, and their replies are not for the container.
#[inline(always)]
fn published<F: Family>(cfg: &Config, pkt: &Packet<F::Addr>) -> Option<Published<F::Addr>> {
    if pkt.key.proto != IPPROTO_TCP && pkt.key.proto != IPPROTO_UDP {
        return None;
    }
    if !conntrack::opens_flow::<F>(pkt) {
        return None;
    }
    let mut key = PortKey {
        host_ip: pkt.key.daddr,
        host_port: pkt.key.dport,
        proto: pkt.key.proto,
        _pad: 0,
    };
    if let Some(target) = unsafe { F::ports().get(key) } {
        let target = *target;
        return Some(Published { key, target });
    }
    if pkt.key.daddr != F::Addr::host_of(cfg) && !networks::is_gateway::<F>(pkt.key.daddr) {
        return None;
    }
    key.host_ip = F::Addr::UNSPECIFIED;
    let target = *unsafe { F::ports().get(key) }?;
    Some(Published { key, target })
}

/// A container's packet to off-host in no flow (`from_container` looked):
/// a new flow, SNAT to the host's address. The slow path makes it and runs
/// `from_container` again, which forwards the packet as any flow's (or,
/// when it can't route it itself, hands it to the stack untranslated, to be
/// translated on the uplink's egress).
#[inline(always)]
fn masquerade<F: Family>(
    ctx: &TcContext,
    cfg: &Config,
    pkt: &Packet<F::Addr>,
    then: u32,
) -> Verdict {
    if pkt.ttl <= 1 {
        return Verdict::pass(stat::PASS_TTL);
    }
    // Routed: tracked, not translated (the source stays the container's).
    let (nat_addr, nat_kind) = if F::routed(cfg) {
        (pkt.key.saddr, nat_kind::ROUTED)
    } else {
        (F::Addr::host_of(cfg), nat_kind::MASQUERADE)
    };
    if nat_addr == F::Addr::UNSPECIFIED {
        // No address to masquerade to (an uplink without IPv6).
        return Verdict::drop(stat::DROP_UNTRANSLATED);
    }
    new_flow::<F>(
        ctx,
        pkt,
        NewFlow {
            nat_addr,
            dst_addr: pkt.key.daddr,
            dst_port: pkt.key.dport,
            nat_kind,
            then,
        },
    )
}

/// A container's packet leaving by the uplink after the kernel's stack
/// routed it: translated as its flow's, or the first of a new one.
#[inline(always)]
fn masquerade_on_uplink<F: Family>(
    ctx: &mut TcContext,
    cfg: &Config,
    pkt: &Packet<F::Addr>,
) -> Verdict {
    let Some(flow) = conntrack::lookup::<F>(&pkt.key, Likely::Original) else {
        return masquerade::<F>(ctx, cfg, pkt, F::SLOW_PATH_TO_UPLINK);
    };
    if let Err(reason) = conntrack::update::<F>(&flow, pkt, now_ns()) {
        return Verdict::drop(reason);
    }
    if nat::rewrite::<F, TcContext>(ctx, pkt, &flow.target()).is_err() {
        return Verdict::drop(stat::DROP_MALFORMED);
    }
    Verdict::pass(stat::PASS)
}

/// A packet of a tracked flow: account it, translate it, send it on.
#[inline(always)]
fn forward_flow<F: Family>(
    ctx: &mut TcContext,
    cfg: &Config,
    pkt: &Packet<F::Addr>,
    flow: &Flow<F::Addr>,
) -> Verdict {
    if pkt.ttl <= 1 {
        return Verdict::pass(stat::PASS_TTL);
    }
    let mut target = flow.target();
    let target = keep_key::<F>(&mut target, KeptKey::Target);
    let now = now_ns();
    let egress = match fwd::route_flow::<F>(ctx, flow, target, now) {
        Ok(egress) => egress,
        Err(reason) => return Verdict::pass(reason),
    };
    if let Err(reason) = conntrack::update::<F>(flow, pkt, now) {
        return Verdict::drop(reason);
    }
    if nat::rewrite::<F, TcContext>(ctx, pkt, target).is_err() {
        return Verdict::drop(stat::DROP_MALFORMED);
    }
    fwd::send::<F>(ctx, cfg, pkt, &egress, Hop::Routed)
}

/// Rewrites an ICMP error: the quoted header to `quoted`, the outer addresses
/// to `outer`'s.
#[inline(always)]
fn rewrite_icmp_error<F: Family>(
    ctx: &mut TcContext,
    pkt: &Packet<F::Addr>,
    inner: &Packet<F::Addr>,
    quoted: &FlowKey<F::Addr>,
    outer: &FlowKey<F::Addr>,
) -> csum::RewriteResult {
    csum::set_quoted_addr::<F, TcContext>(
        ctx,
        pkt,
        inner.l3,
        Side::Source,
        inner.key.saddr,
        quoted.saddr,
    )?;
    csum::set_quoted_addr::<F, TcContext>(
        ctx,
        pkt,
        inner.l3,
        Side::Destination,
        inner.key.daddr,
        quoted.daddr,
    )?;
    if inner.l4_kind == L4::IcmpEcho {
        csum::set_quoted_port(ctx, pkt, inner.l4 + 4, inner.key.sport, quoted.sport)?;
    } else {
        csum::set_quoted_port(ctx, pkt, inner.l4, inner.key.sport, quoted.sport)?;
        csum::set_quoted_port(ctx, pkt, inner.l4 + 2, inner.key.dport, quoted.dport)?;
    }
    csum::set_addr::<F, TcContext>(ctx, pkt, Side::Source, pkt.key.saddr, outer.saddr)?;
    csum::set_addr::<F, TcContext>(ctx, pkt, Side::Destination, pkt.key.daddr, outer.daddr)
}

/// An ICMP error (unreachable, frag-needed, time exceeded) about a packet of a
/// translated flow: translate the outer header towards the flow's endpoint and
/// the quoted header back to what that endpoint sent, or PMTU discovery and
/// error reporting break. None for an error about nothing we track: the
/// caller judges it like any untracked packet.
/// [`icmp_error`], or `otherwise` when the error quotes nothing we track.
/// IPv6's runs in a program of its own, `icmp_error6` (by tail call): its
/// quoted packet and tuples, beside the rest of an IPv6 program, would not
/// fit in BPF's 512-byte stack. IPv4's is inlined as ever.
#[inline(always)]
fn icmp_error_apart<F: Family, U: FnOnce() -> Verdict>(
    ctx: &mut TcContext,
    cfg: &Config,
    pkt: &Packet<F::Addr>,
    otherwise: U,
) -> Verdict {
    if F::OUTLINE {
        // SAFETY: a tail call; it returns only when it fails.
        unsafe { SLOW_PATHS.tail_call(ctx, SLOW_PATH_ICMP_ERROR6) };
        return Verdict::drop(stat::DROP_NO_SLOW_PATH);
    }
    icmp_error::<F>(ctx, cfg, pkt).unwrap_or_else(otherwise)
}

/// An ICMPv6 error from a container or the uplink, which `from_container6`
/// or `from_uplink6` classified and handed over (see `icmp_error_apart`):
/// translated if it quotes one of our flows, else judged as they would.
#[classifier]
pub fn icmp_error6(mut ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return Verdict::pass(stat::PASS).tc();
    };
    let Parsed::Ours(mut parsed) = parse::parse::<V6, TcContext>(&ctx) else {
        return Verdict::drop(stat::DROP_MALFORMED).tc();
    };
    let pkt = keep::<V6>(&mut parsed, Kept::Packet);
    if let Some(verdict) = icmp_error::<V6>(&mut ctx, cfg, pkt) {
        return verdict.tc();
    }
    if ctx::Packet::ifindex(&ctx) == cfg.uplink_ifindex {
        return unsolicited::<V6>(pkt).tc();
    }
    match source_network::<V6>(&ctx, pkt.key.saddr) {
        Some(from) => untranslated_from_container::<V6>(cfg, &from, pkt).tc(),
        None => Verdict::drop(stat::DROP_SPOOFED).tc(),
    }
}

#[inline(always)]
fn icmp_error<F: Family>(
    ctx: &mut TcContext,
    cfg: &Config,
    pkt: &Packet<F::Addr>,
) -> Option<Verdict> {
    let Parsed::Ours(mut quoted) = parse::parse_inner::<F, TcContext>(ctx, pkt.inner_l3) else {
        return None;
    };
    let inner = keep::<F>(&mut quoted, Kept::Quoted);
    // The quoted packet went out; a packet coming back the other way would carry
    // the reversed tuple, and its translation is what the error needs.
    let flow = conntrack::lookup::<F>(&inner.key.reversed(), Likely::Reply)?;
    Some(translate_icmp_error::<F>(ctx, cfg, pkt, inner, &flow))
}

#[inline(always)]
fn translate_icmp_error<F: Family>(
    ctx: &mut TcContext,
    cfg: &Config,
    pkt: &Packet<F::Addr>,
    inner: &Packet<F::Addr>,
    flow: &Flow<F::Addr>,
) -> Verdict {
    // Forwarded like any packet: one whose TTL runs out here is the
    // kernel's (which sends no error about an error).
    if pkt.ttl <= 1 {
        return Verdict::pass(stat::PASS_TTL);
    }
    let back = flow.target();
    let mut quoted = back.reversed();
    let quoted = keep_key::<F>(&mut quoted, KeptKey::Quoted);
    let mut outer = FlowKey {
        // Errors from the quoted packet's destination itself speak for the
        // address the sender believes it talked to.
        saddr: if pkt.key.saddr == inner.key.daddr {
            quoted.daddr
        } else {
            pkt.key.saddr
        },
        daddr: back.daddr,
        ..pkt.key
    };
    let outer = keep_key::<F>(&mut outer, KeptKey::Outer);
    let egress = match fwd::route::<F, TcContext>(ctx, outer) {
        Ok(egress) => egress,
        Err(reason) => return Verdict::pass(reason),
    };
    if rewrite_icmp_error::<F>(ctx, pkt, inner, quoted, outer).is_err() {
        return Verdict::drop(stat::DROP_MALFORMED);
    }
    maps::count(stat::ICMP_ERROR_TRANSLATED);
    fwd::send::<F>(ctx, cfg, pkt, &egress, Hop::Routed)
}
