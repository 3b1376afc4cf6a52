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
    Config, DIR_ORIGINAL, Endpoint, FlowKey, IPPROTO_TCP, IPPROTO_UDP, PortKey, PortTarget,
    SLOW_PATH_FROM_CONTAINER, SLOW_PATH_NEW_FLOW, SLOW_PATH_TO_UPLINK, nat_kind, network_drop,
    stat,
};

use conntrack::{Flow, Likely};
use csum::Side;
use fwd::{Egress, Hop};
use maps::{ENDPOINTS, NewFlowRequest, PORTS, SLOW_PATHS, config, now_ns, scratch};
use networks::{Net, Reach};
use parse::{L4, Packet, Parsed};
use verdict::Verdict;

/// TC ingress of each container's host-side veth: everything a container sends.
#[classifier]
pub fn from_container(mut ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return Verdict::pass(stat::PASS).tc();
    };
    ctx::linearize_headers(&mut ctx);
    from_container_verdict(&mut ctx, cfg).tc()
}

#[inline(always)]
fn from_container_verdict(ctx: &mut TcContext, cfg: &Config) -> Verdict {
    let (pkt, translatable) = match parse::parse(ctx) {
        Parsed::Ours(pkt) => (pkt, true),
        Parsed::OtherIpv4(other) => (other, false),
        Parsed::Arp => return arp_from_container(ctx),
        // IPv6 (until netpath translates it), VLAN tags, anything else: a
        // container on a bridge network speaks IPv4 and ARP.
        Parsed::OtherL2 => return Verdict::drop(stat::DROP_ETHERTYPE),
        Parsed::Malformed => return Verdict::drop(stat::DROP_MALFORMED),
    };
    // Every IPv4 packet, whatever its protocol, carries the container's
    // own address and MAC, which also tell its network.
    let Some(from) = source_network(ctx, pkt.key.saddr) else {
        // Rare (a misconfigured or hostile container), so worth a record; at
        // debug, which the loader switches off below the agent's level.
        aya_log_ebpf::debug!(
            ctx,
            "drop: spoofed source {:i} from ifindex {}",
            u32::from_be(pkt.key.saddr),
            unsafe { (*ctx.skb.skb).ifindex }
        );
        return Verdict::drop(stat::DROP_SPOOFED);
    };
    if !translatable {
        return other_from_container(cfg, &from, &pkt);
    }
    if pkt.l4_kind == L4::Fragment {
        return later_fragment_from_container(ctx, cfg, &from, pkt);
    }
    fragments::record(&pkt);
    let dst = pkt.key.daddr;
    if is_loopback(dst) {
        return Verdict::drop(stat::DROP_MARTIAN_DESTINATION);
    }
    // Traffic leaving the network (the common case) needs no ENDPOINTS
    // lookup here; a container of another network is not in this subnet.
    if from.net.contains(dst)
        && let Some(ep) = unsafe { ENDPOINTS.get(dst) }
    {
        // Same network: straight into the peer's netns, no NAT, no TTL
        // change. Checked first: no translated flow is ever addressed to a
        // container's own address from another container (hairpin goes
        // through the host's address, its replies to the gateway's).
        if !from.net.allows_icc() {
            return networks::refuse(&from, network_drop::ICC);
        }
        let ep = *ep;
        return fwd::send(ctx, cfg, &pkt, &Egress::Container(ep), Hop::Bridged);
    }
    if let Some(flow) = conntrack::lookup(&pkt.key, Likely::from_container(cfg, &pkt)) {
        return forward_flow(ctx, cfg, &pkt, &flow);
    }
    if pkt.l4_kind == L4::IcmpError {
        return icmp_error(ctx, cfg, &pkt)
            .unwrap_or_else(|| untranslated_from_container(cfg, &from, &pkt));
    }
    if from.net.is_internal() && !from.net.contains(dst) {
        // Not even a published port: those are reached through the host.
        return networks::refuse(&from, network_drop::INTERNAL);
    }
    if let Some(Published { target, .. }) = published(cfg, &pkt) {
        return hairpin(ctx, pkt, &target);
    }
    match networks::reach(cfg, &from, dst) {
        // The host itself, or broadcast/unknown on the bridge: the kernel's job.
        Reach::Local => Verdict::pass(stat::PASS),
        Reach::OffHost => masquerade(ctx, cfg, &pkt, SLOW_PATH_FROM_CONTAINER),
        Reach::Refused(verdict) => verdict,
    }
}

/// A container's new flow to a published port: DNAT to the target and SNAT
/// to the gateway of the target's network, so the target's reply comes
/// back through us even when it is the sender itself, and from another
/// network it sees its own gateway, not a stranger.
#[inline(always)]
fn hairpin(ctx: &TcContext, pkt: Packet, target: &PortTarget) -> Verdict {
    if pkt.ttl <= 1 {
        return Verdict::pass(stat::PASS_TTL);
    }
    let Some(to) = networks::containing(target.container_ip) else {
        // A port whose container's network is gone: nothing to reach.
        return Verdict::drop(stat::DROP_UNTRANSLATED);
    };
    new_flow(
        ctx,
        NewFlowRequest {
            pkt,
            nat_addr: to.net.gateway_ip,
            dst_addr: target.container_ip,
            dst_port: target.container_port,
            nat_kind: nat_kind::HAIRPIN,
            then: SLOW_PATH_FROM_CONTAINER,
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
fn new_flow(ctx: &TcContext, request: NewFlowRequest) -> Verdict {
    let Some(scratch) = scratch() else {
        return Verdict::drop(stat::DROP_NO_SLOW_PATH);
    };
    scratch.new_flow = request;
    // SAFETY: a tail call; it returns only when it fails.
    unsafe { SLOW_PATHS.tail_call(ctx, SLOW_PATH_NEW_FLOW) };
    Verdict::drop(stat::DROP_NO_SLOW_PATH)
}

/// The slow path for the first packet of a flow from a container: makes the
/// flow `from_container` or `to_uplink` asked for, then runs that program
/// again, which now finds it. Attached nowhere; reached by tail call only.
#[classifier]
pub fn from_container_new_flow(ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return Verdict::pass(stat::PASS).tc();
    };
    let Some(scratch) = scratch() else {
        return Verdict::drop(stat::DROP_NO_SLOW_PATH).tc();
    };
    let request = scratch.new_flow;
    if let Err(reason) = create_flow(cfg, &request) {
        return Verdict::drop(reason).tc();
    }
    // SAFETY: a tail call; it returns only when it fails.
    unsafe { SLOW_PATHS.tail_call(&ctx, request.then) };
    Verdict::drop(stat::DROP_NO_SLOW_PATH).tc()
}

#[inline(always)]
fn create_flow(cfg: &Config, request: &NewFlowRequest) -> Result<Flow, u32> {
    nat::create_snat_flow(
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
fn other_from_container(cfg: &Config, from: &Net, other: &Packet) -> Verdict {
    if is_loopback(other.key.daddr) {
        return Verdict::drop(stat::DROP_MARTIAN_DESTINATION);
    }
    untranslated_from_container(cfg, from, other)
}

/// A container's packet that no flow translates and none may open: into
/// the kernel where the container may reach untranslated, else dropped.
#[inline(always)]
fn untranslated_from_container(cfg: &Config, from: &Net, pkt: &Packet) -> Verdict {
    match networks::reach(cfg, from, pkt.key.daddr) {
        Reach::Local => Verdict::pass(stat::PASS_NOT_OURS),
        Reach::OffHost if pkt.fragment || pkt.l4_kind == L4::Fragment => {
            Verdict::drop(stat::DROP_FRAGMENT)
        }
        Reach::OffHost => Verdict::drop(stat::DROP_UNTRANSLATED),
        Reach::Refused(verdict) => verdict,
    }
}

/// A later fragment from a container: it follows its datagram's flow, or
/// goes where an untranslated packet may (another container, the host).
/// A path of its own: the main path's many branches need not be walked
/// again for a packet that can only follow a flow.
#[inline(always)]
fn later_fragment_from_container(
    ctx: &mut TcContext,
    cfg: &Config,
    from: &Net,
    mut pkt: Packet,
) -> Verdict {
    let dst = pkt.key.daddr;
    if is_loopback(dst) {
        return Verdict::drop(stat::DROP_MARTIAN_DESTINATION);
    }
    if fragments::resolve(&mut pkt)
        && let Some(flow) = conntrack::lookup(&pkt.key, Likely::from_container(cfg, &pkt))
    {
        return forward_flow(ctx, cfg, &pkt, &flow);
    }
    if from.net.contains(dst)
        && from.net.allows_icc()
        && let Some(ep) = unsafe { ENDPOINTS.get(dst) }
    {
        let ep = *ep;
        return fwd::send(ctx, cfg, &pkt, &Egress::Container(ep), Hop::Bridged);
    }
    untranslated_from_container(cfg, from, &pkt)
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
    if spa != 0 && endpoint_on_this_veth(ctx, spa, &smac).is_none() {
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
    fn forward(&mut self, cfg: &Config, pkt: &Packet, flow: &Flow) -> Verdict;
    /// An ICMP error that may quote one of our flows; None when it quotes
    /// none.
    fn icmp_error(&mut self, cfg: &Config, pkt: &Packet) -> Option<Verdict>;
    /// What to do with a frame this hook can't translate correctly: a
    /// frame whose checksum is left to offload, in XDP (see `offload`).
    fn cannot_translate(&self, pkt: &Packet) -> Option<Verdict>;
}

impl UplinkHook for TcContext {
    #[inline(always)]
    fn forward(&mut self, cfg: &Config, pkt: &Packet, flow: &Flow) -> Verdict {
        forward_flow(self, cfg, pkt, flow)
    }
    #[inline(always)]
    fn icmp_error(&mut self, cfg: &Config, pkt: &Packet) -> Option<Verdict> {
        icmp_error(self, cfg, pkt)
    }
    /// TC keeps the skb's checksum state: it translates everything.
    #[inline(always)]
    fn cannot_translate(&self, _pkt: &Packet) -> Option<Verdict> {
        None
    }
}

impl UplinkHook for XdpContext {
    #[inline(always)]
    fn forward(&mut self, cfg: &Config, pkt: &Packet, flow: &Flow) -> Verdict {
        xdp_forward(self, cfg, pkt, flow)
    }
    /// Left to the TC program.
    #[inline(always)]
    fn icmp_error(&mut self, _cfg: &Config, _pkt: &Packet) -> Option<Verdict> {
        Some(Verdict::pass(stat::XDP_PASS))
    }
    #[inline(always)]
    fn cannot_translate(&self, pkt: &Packet) -> Option<Verdict> {
        offload::has_partial_checksum(self, pkt).then(offload::fall_back)
    }
}

/// Everything that arrives on the uplink: the host's own traffic passes,
/// tracked flows and new flows to published ports are translated, and
/// what can't come from outside or would reach the containers unasked is
/// dropped.
#[inline(always)]
fn from_uplink_verdict<C: UplinkHook>(ctx: &mut C, cfg: &Config) -> Verdict {
    let mut pkt = match parse::parse(ctx) {
        Parsed::Ours(pkt) => pkt,
        Parsed::OtherIpv4(other) => {
            return screen_uplink(cfg, &other)
                .or_else(|| screen_uplink_source(&other))
                .unwrap_or_else(|| unsolicited(other.key.daddr));
        }
        // Not addressed to anything we translate: the host's own traffic
        // must never suffer from our parser.
        Parsed::Arp | Parsed::OtherL2 | Parsed::Malformed => {
            return Verdict::pass(stat::PASS_NOT_OURS);
        }
    };
    if let Some(verdict) = screen_uplink(cfg, &pkt) {
        return verdict;
    }
    if let Some(verdict) = ctx.cannot_translate(&pkt) {
        return verdict;
    }
    if pkt.l4_kind == L4::Fragment {
        // A later fragment follows its datagram's flow, or is the host's.
        if fragments::resolve(&mut pkt)
            && let Some(flow) = conntrack::lookup(&pkt.key, Likely::from_uplink(cfg, &pkt))
        {
            return forward_from_outside(ctx, cfg, &pkt, &flow);
        }
        return if networks::is_container_network(pkt.key.daddr) {
            Verdict::drop(stat::DROP_FRAGMENT)
        } else {
            Verdict::pass(stat::PASS_NOT_OURS)
        };
    }
    fragments::record(&pkt);
    if let Some(flow) = conntrack::lookup(&pkt.key, Likely::from_uplink(cfg, &pkt)) {
        return forward_from_outside(ctx, cfg, &pkt, &flow);
    }
    if let Some(verdict) = screen_uplink_source(&pkt) {
        return verdict;
    }
    if pkt.l4_kind == L4::IcmpError {
        return ctx
            .icmp_error(cfg, &pkt)
            .unwrap_or_else(|| unsolicited(pkt.key.daddr));
    }
    let Some(Published { key, target }) = published(cfg, &pkt) else {
        return unsolicited(pkt.key.daddr);
    };
    if !allow::admits(&key, &target, pkt.key.saddr) {
        return Verdict::drop(stat::DROP_NOT_ALLOWED);
    }
    if pkt.ttl <= 1 {
        return Verdict::pass(stat::PASS_TTL);
    }
    match nat::create_dnat_flow(
        cfg,
        &pkt,
        target.container_ip,
        target.container_port,
        nat_kind::DNAT,
    ) {
        Ok(flow) => ctx.forward(cfg, &pkt, &flow),
        Err(reason) => Verdict::drop(reason),
    }
}

/// Drops what can't come from outside, as far as it costs no lookup: the
/// host's own address or loopback as source (a spoof), and a loopback
/// destination (a frame aimed at what the host publishes on 127.0.0.1).
#[inline(always)]
fn screen_uplink(cfg: &Config, pkt: &Packet) -> Option<Verdict> {
    let (saddr, daddr) = (pkt.key.saddr, pkt.key.daddr);
    if saddr == cfg.host_ip || is_loopback(saddr) {
        return Some(Verdict::drop(stat::DROP_MARTIAN_SOURCE));
    }
    if is_loopback(daddr) {
        return Some(Verdict::drop(stat::DROP_MARTIAN_DESTINATION));
    }
    None
}

/// Drops a packet from the uplink with a source in a container network (a
/// spoof, or a host routing into the containers) before it may open
/// anything. A packet of a flow needs no such lookup: see
/// `forward_from_outside`.
#[inline(always)]
fn screen_uplink_source(pkt: &Packet) -> Option<Verdict> {
    networks::is_container_network(pkt.key.saddr).then(|| Verdict::drop(stat::DROP_MARTIAN_SOURCE))
}

/// A packet from the uplink of a tracked flow, in a direction that comes
/// from outside: replies to masqueraded flows, and the client's side of a
/// flow to a published port. Anything else (a reply of a container, a
/// packet of a hairpin flow) can only be a spoof with a container's
/// address.
#[inline(always)]
fn forward_from_outside<C: UplinkHook>(
    ctx: &mut C,
    cfg: &Config,
    pkt: &Packet,
    flow: &Flow,
) -> Verdict {
    // SAFETY: entry points into a live map value.
    let kind = unsafe { (*flow.entry).nat_kind };
    let from_outside = match flow.dir {
        DIR_ORIGINAL => kind == nat_kind::DNAT,
        _ => kind == nat_kind::MASQUERADE,
    };
    if !from_outside {
        return Verdict::drop(stat::DROP_MARTIAN_SOURCE);
    }
    ctx.forward(cfg, pkt, flow)
}

/// A packet from the uplink in no flow that opens none: into a container
/// network it is unsolicited; the host's own traffic passes.
#[inline(always)]
fn unsolicited(daddr: u32) -> Verdict {
    if networks::is_container_network(daddr) {
        Verdict::drop(stat::DROP_UNSOLICITED)
    } else {
        Verdict::pass(stat::PASS_NOT_OURS)
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
    from_uplink_verdict(&mut ctx, cfg).tc()
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
    let verdict = from_uplink_verdict(&mut ctx, cfg);
    if verdict.is_pass() {
        return Verdict::pass(stat::XDP_PASS).xdp();
    }
    verdict.xdp()
}

/// A flow's packet into its container from XDP, or up to TC when the flow
/// doesn't lead into a container (or the TTL is about to expire).
#[inline(always)]
fn xdp_forward(ctx: &mut XdpContext, cfg: &Config, pkt: &Packet, flow: &Flow) -> Verdict {
    if pkt.ttl <= 1 {
        return Verdict::pass(stat::XDP_PASS);
    }
    let target = flow.target();
    let Some(ep) = (unsafe { ENDPOINTS.get(target.daddr) }) else {
        return Verdict::pass(stat::XDP_PASS);
    };
    let ep = *ep;
    if let Err(reason) = conntrack::update(flow, pkt, now_ns()) {
        return Verdict::drop(reason);
    }
    let rewritten = nat::rewrite(ctx, pkt, &target)
        .and_then(|()| csum::dec_ttl(ctx, pkt))
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
    to_uplink_verdict(&mut ctx, cfg).tc()
}

#[inline(always)]
fn to_uplink_verdict(ctx: &mut TcContext, cfg: &Config) -> Verdict {
    // The uplink leads into no container network: a container's address
    // there is leaving the host. Translated packets (the host's address)
    // and the host's own traffic skip the lookup.
    let leaving = |pkt: &Packet| {
        pkt.key.saddr != cfg.host_ip && networks::is_container_network(pkt.key.saddr)
    };
    let mut pkt = match parse::parse(ctx) {
        Parsed::Ours(pkt) => pkt,
        Parsed::OtherIpv4(other) if leaving(&other) => {
            return Verdict::drop(if other.fragment {
                stat::DROP_FRAGMENT
            } else {
                stat::DROP_UNTRANSLATED
            });
        }
        _ => return Verdict::pass(stat::PASS_NOT_OURS),
    };
    if !leaving(&pkt) {
        return Verdict::pass(stat::PASS_NOT_OURS);
    }
    // A later fragment is masqueraded as its datagram's flow (addresses
    // only); one whose first we never saw can't be.
    if pkt.l4_kind == L4::Fragment && !fragments::resolve(&mut pkt) {
        return Verdict::drop(stat::DROP_FRAGMENT);
    }
    fragments::record(&pkt);
    if pkt.l4_kind == L4::IcmpError {
        // An error about a flow is translated on the container's veth; one
        // that got here is about nothing we track.
        return Verdict::drop(stat::DROP_UNTRANSLATED);
    }
    masquerade_on_uplink(ctx, cfg, &pkt)
}

/// Keeps NAPI on for a veth that receives XDP-redirected frames.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// 127.0.0.0/8 (wire order).
#[inline(always)]
fn is_loopback(addr: u32) -> bool {
    addr.to_ne_bytes()[0] == 127
}

/// Anti-spoofing: the source address must be the endpoint on this veth, with
/// its MAC as the frame's source. Gives the endpoint's network.
#[inline(always)]
fn source_network(ctx: &TcContext, saddr: u32) -> Option<Net> {
    let smac = ctx.load::<[u8; 6]>(6).ok()?;
    let ep = endpoint_on_this_veth(ctx, saddr, &smac)?;
    networks::by_id(ep.network_id)
}

/// The endpoint `addr` if it is the one on this veth with MAC `mac`.
#[inline(always)]
fn endpoint_on_this_veth(ctx: &TcContext, addr: u32, mac: &[u8; 6]) -> Option<Endpoint> {
    let ep = *unsafe { ENDPOINTS.get(addr) }?;
    (ep.ifindex == unsafe { (*ctx.skb.skb).ifindex } && ep.mac == *mac).then_some(ep)
}

/// A published port: its `PORTS` key and value.
struct Published {
    key: PortKey,
    target: PortTarget,
}

/// The published port a packet opens a flow to: a mapping bound to the
/// destination address, or one bound to every address when the destination
/// is one of the host's. Only a first packet (a TCP SYN, a UDP datagram)
/// matches: the host's own connections may use a published number as their
/// local port, and their replies are not for the container.
#[inline(always)]
fn published(cfg: &Config, pkt: &Packet) -> Option<Published> {
    if pkt.key.proto != IPPROTO_TCP && pkt.key.proto != IPPROTO_UDP {
        return None;
    }
    if !conntrack::opens_flow(pkt) {
        return None;
    }
    let mut key = PortKey {
        host_ip: pkt.key.daddr,
        host_port: pkt.key.dport,
        proto: pkt.key.proto,
        _pad: 0,
    };
    if let Some(target) = unsafe { PORTS.get(key) } {
        let target = *target;
        return Some(Published { key, target });
    }
    if pkt.key.daddr != cfg.host_ip && !networks::is_gateway(pkt.key.daddr) {
        return None;
    }
    key.host_ip = 0;
    let target = *unsafe { PORTS.get(key) }?;
    Some(Published { key, target })
}

/// A container's packet to off-host in no flow (`from_container` looked):
/// a new flow, SNAT to the host's address. The slow path makes it and runs
/// `from_container` again, which forwards the packet as any flow's (or,
/// when it can't route it itself, hands it to the stack untranslated, to be
/// translated on the uplink's egress).
#[inline(always)]
fn masquerade(ctx: &TcContext, cfg: &Config, pkt: &Packet, then: u32) -> Verdict {
    if pkt.ttl <= 1 {
        return Verdict::pass(stat::PASS_TTL);
    }
    new_flow(
        ctx,
        NewFlowRequest {
            pkt: *pkt,
            nat_addr: cfg.host_ip,
            dst_addr: pkt.key.daddr,
            dst_port: pkt.key.dport,
            nat_kind: nat_kind::MASQUERADE,
            then,
        },
    )
}

/// A container's packet leaving by the uplink after the kernel's stack
/// routed it: translated as its flow's, or the first of a new one.
#[inline(always)]
fn masquerade_on_uplink(ctx: &mut TcContext, cfg: &Config, pkt: &Packet) -> Verdict {
    let Some(flow) = conntrack::lookup(&pkt.key, Likely::Original) else {
        return masquerade(ctx, cfg, pkt, SLOW_PATH_TO_UPLINK);
    };
    if let Err(reason) = conntrack::update(&flow, pkt, now_ns()) {
        return Verdict::drop(reason);
    }
    if nat::rewrite(ctx, pkt, &flow.target()).is_err() {
        return Verdict::drop(stat::DROP_MALFORMED);
    }
    Verdict::pass(stat::PASS)
}

/// A packet of a tracked flow: account it, translate it, send it on.
#[inline(always)]
fn forward_flow(ctx: &mut TcContext, cfg: &Config, pkt: &Packet, flow: &Flow) -> Verdict {
    if pkt.ttl <= 1 {
        return Verdict::pass(stat::PASS_TTL);
    }
    let target = flow.target();
    let now = now_ns();
    let egress = match fwd::route_flow(ctx, flow, &target, now) {
        Ok(egress) => egress,
        Err(reason) => return Verdict::pass(reason),
    };
    if let Err(reason) = conntrack::update(flow, pkt, now) {
        return Verdict::drop(reason);
    }
    if nat::rewrite(ctx, pkt, &target).is_err() {
        return Verdict::drop(stat::DROP_MALFORMED);
    }
    fwd::send(ctx, cfg, pkt, &egress, Hop::Routed)
}

/// Rewrites an ICMP error: the quoted header to `quoted`, the outer addresses
/// to `outer`'s.
#[inline(always)]
fn rewrite_icmp_error(
    ctx: &mut TcContext,
    pkt: &Packet,
    inner: &Packet,
    quoted: &FlowKey,
    outer: &FlowKey,
) -> csum::RewriteResult {
    csum::set_l3_addr(ctx, inner.l3, Side::Source, inner.key.saddr, quoted.saddr)?;
    csum::set_l3_addr(
        ctx,
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
    csum::set_addr(ctx, pkt, Side::Source, pkt.key.saddr, outer.saddr)?;
    csum::set_addr(ctx, pkt, Side::Destination, pkt.key.daddr, outer.daddr)
}

/// An ICMP error (unreachable, frag-needed, time exceeded) about a packet of a
/// translated flow: translate the outer header towards the flow's endpoint and
/// the quoted header back to what that endpoint sent, or PMTU discovery and
/// error reporting break. None for an error about nothing we track: the
/// caller judges it like any untracked packet.
#[inline(always)]
fn icmp_error(ctx: &mut TcContext, cfg: &Config, pkt: &Packet) -> Option<Verdict> {
    let Parsed::Ours(inner) = parse::parse_inner(ctx, pkt.inner_l3) else {
        return None;
    };
    // The quoted packet went out; a packet coming back the other way would carry
    // the reversed tuple, and its translation is what the error needs.
    let flow = conntrack::lookup(&inner.key.reversed(), Likely::Reply)?;
    Some(translate_icmp_error(ctx, cfg, pkt, &inner, &flow))
}

#[inline(always)]
fn translate_icmp_error(
    ctx: &mut TcContext,
    cfg: &Config,
    pkt: &Packet,
    inner: &Packet,
    flow: &Flow,
) -> Verdict {
    // Forwarded like any packet: one whose TTL runs out here is the
    // kernel's (which sends no error about an error).
    if pkt.ttl <= 1 {
        return Verdict::pass(stat::PASS_TTL);
    }
    let back = flow.target();
    let quoted = back.reversed();
    let outer = FlowKey {
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
    let egress = match fwd::route(ctx, &outer) {
        Ok(egress) => egress,
        Err(reason) => return Verdict::pass(reason),
    };
    if rewrite_icmp_error(ctx, pkt, inner, &quoted, &outer).is_err() {
        return Verdict::drop(stat::DROP_MALFORMED);
    }
    maps::count(stat::ICMP_ERROR_TRANSLATED);
    fwd::send(ctx, cfg, pkt, &egress, Hop::Routed)
}
