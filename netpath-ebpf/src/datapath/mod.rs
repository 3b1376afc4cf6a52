//! Program entry points. Each program is a short sequence of the shared steps in
//! `parse`, `conntrack`, `nat` and `fwd`; see DESIGN.md section 2 for the table
//! of hooks.
mod conntrack;
mod csum;
mod ctx;
mod fwd;
mod maps;
mod nat;
mod parse;
mod sock;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use netpath_common::{
    Config, FlowKey, IPPROTO_TCP, IPPROTO_UDP, PortKey, PortTarget, nat_kind, stat,
};

use conntrack::Flow;
use fwd::Egress;
use maps::{ENDPOINTS, PORTS, config, count, now_ns, route_gen};
use parse::{L4, Packet, Parsed};

/// TC ingress of each container's host-side veth: everything a container sends.
#[classifier]
pub fn from_container(mut ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return TC_ACT_OK as i32;
    };
    ctx::linearize_headers(&mut ctx);
    let pkt = match parse::parse(&ctx) {
        Parsed::Ours(pkt) => pkt,
        Parsed::NotOurs => return fwd::pass(stat::PASS_NOT_OURS),
        Parsed::Fragment => return fwd::pass(stat::DROP_FRAGMENT),
        Parsed::Malformed => return drop(stat::DROP_MALFORMED),
    };
    if !source_is_endpoint(&ctx, &pkt) {
        // Rare (a misconfigured or hostile container), so worth a record; at
        // debug, which the loader switches off below the agent's level.
        aya_log_ebpf::debug!(
            &ctx,
            "drop: spoofed source {:i} from ifindex {}",
            u32::from_be(pkt.key.saddr),
            unsafe { (*ctx.skb.skb).ifindex }
        );
        return drop(stat::DROP_SPOOFED);
    }
    let dst = pkt.key.daddr;
    // Containers' addresses are all in the subnet: traffic leaving it (the
    // common case) needs no ENDPOINTS lookup here.
    if cfg.in_subnet(dst)
        && let Some(ep) = unsafe { ENDPOINTS.get(dst) }
    {
        // Same network: straight into the peer's netns, no NAT, no TTL
        // change. Checked first: no translated flow is ever addressed to a
        // container's own address from another container (hairpin goes
        // through the host's address, its replies to the gateway's).
        let ep = *ep;
        return fwd::send(&mut ctx, cfg, &pkt, &Egress::Container(ep), false);
    }
    if let Some(flow) = conntrack::lookup(&pkt.key) {
        return forward_flow(&mut ctx, cfg, &pkt, &flow);
    }
    if pkt.l4_kind == L4::IcmpError {
        return icmp_error(&mut ctx, cfg, &pkt);
    }
    let host_local = dst == cfg.host_ip || dst == cfg.gateway_ip;
    if let Some(target) = published(cfg, &pkt) {
        // Hairpin: DNAT to the target and SNAT to the gateway, so the target's
        // reply comes back through us even when it is the sender itself.
        if pkt.ttl <= 1 {
            return fwd::pass(stat::PASS_TTL);
        }
        let Some(flow) = nat::create_snat_flow(
            cfg,
            &pkt,
            cfg.gateway_ip,
            target.container_ip,
            target.container_port,
            nat_kind::HAIRPIN,
        ) else {
            return TC_ACT_SHOT as i32;
        };
        return forward_flow(&mut ctx, cfg, &pkt, &flow);
    }
    if host_local || cfg.in_subnet(dst) {
        // The host itself, or broadcast/unknown on the bridge: the kernel's job.
        return fwd::pass(stat::PASS);
    }
    masquerade(&mut ctx, cfg, &pkt, true)
}

/// What arrives on the uplink, once looked up. Shared by the TC and XDP
/// programs there, which differ only in how they send.
enum UplinkPacket {
    /// A packet of a tracked flow (a reply to a masqueraded flow, or a flow to
    /// a published port, new or established).
    Flow(Packet, Flow),
    IcmpError(Packet),
    /// Not ours: the host's own traffic.
    Pass(u32),
    Drop,
}

#[inline(always)]
fn classify_uplink<C: ctx::Packet>(ctx: &C, cfg: &Config) -> UplinkPacket {
    let pkt = match parse::parse(ctx) {
        Parsed::Ours(pkt) => pkt,
        // Not addressed to anything we translate until proven otherwise: the
        // host's own traffic must never suffer from our parser.
        Parsed::NotOurs | Parsed::Fragment | Parsed::Malformed => {
            return UplinkPacket::Pass(stat::PASS_NOT_OURS);
        }
    };
    if let Some(flow) = conntrack::lookup(&pkt.key) {
        return UplinkPacket::Flow(pkt, flow);
    }
    if pkt.l4_kind == L4::IcmpError {
        return UplinkPacket::IcmpError(pkt);
    }
    let Some(target) = published(cfg, &pkt) else {
        return UplinkPacket::Pass(stat::PASS_NOT_OURS);
    };
    if pkt.ttl <= 1 {
        return UplinkPacket::Pass(stat::PASS_TTL);
    }
    match nat::create_dnat_flow(
        &pkt,
        target.container_ip,
        target.container_port,
        nat_kind::DNAT,
    ) {
        Some(flow) => UplinkPacket::Flow(pkt, flow),
        None => UplinkPacket::Drop,
    }
}

/// TC ingress of the uplink: replies to masqueraded flows, and new and
/// established flows to published ports.
#[classifier]
pub fn from_uplink(mut ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return TC_ACT_OK as i32;
    };
    ctx::linearize_headers(&mut ctx);
    match classify_uplink(&ctx, cfg) {
        UplinkPacket::Flow(pkt, flow) => forward_flow(&mut ctx, cfg, &pkt, &flow),
        UplinkPacket::IcmpError(pkt) => icmp_error(&mut ctx, cfg, &pkt),
        UplinkPacket::Pass(reason) => fwd::pass(reason),
        UplinkPacket::Drop => TC_ACT_SHOT as i32,
    }
}

/// XDP on the uplink (`--accel xdp`): the same translations before an skb
/// exists, redirected straight into the container's veth. What XDP can't
/// finish (ICMP errors, anything not bound for a container) it passes up to
/// the TC program, which handles it as usual.
#[xdp]
pub fn xdp_uplink(mut ctx: XdpContext) -> u32 {
    let Some(cfg) = config() else {
        return xdp_action::XDP_PASS;
    };
    let UplinkPacket::Flow(pkt, flow) = classify_uplink(&ctx, cfg) else {
        count(stat::XDP_PASS);
        return xdp_action::XDP_PASS;
    };
    if pkt.ttl <= 1 {
        count(stat::XDP_PASS);
        return xdp_action::XDP_PASS;
    }
    let target = flow.target();
    let Some(ep) = (unsafe { ENDPOINTS.get(target.daddr) }) else {
        count(stat::XDP_PASS);
        return xdp_action::XDP_PASS;
    };
    let ep = *ep;
    conntrack::update(&flow, &pkt, now_ns());
    let rewritten = nat::rewrite(&mut ctx, &pkt, &target)
        .and_then(|()| csum::dec_ttl(&mut ctx, &pkt))
        .and_then(|()| csum::set_macs(&mut ctx, &ep.mac, &cfg.gateway_mac));
    if rewritten.is_err() {
        count(stat::DROP_MALFORMED);
        return xdp_action::XDP_DROP;
    }
    count(stat::XDP_REDIRECT);
    unsafe { aya_ebpf::helpers::bpf_redirect(ep.ifindex, 0) as u32 }
}

/// TC egress of the uplink, the safety net: a container's packet that took the
/// kernel's path out (say after the kernel fragmented it) is still masqueraded.
#[classifier]
pub fn to_uplink(mut ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return TC_ACT_OK as i32;
    };
    ctx::linearize_headers(&mut ctx);
    let Parsed::Ours(pkt) = parse::parse(&ctx) else {
        return TC_ACT_OK as i32;
    };
    if !cfg.in_subnet(pkt.key.saddr) || cfg.in_subnet(pkt.key.daddr) {
        return TC_ACT_OK as i32;
    }
    masquerade(&mut ctx, cfg, &pkt, false)
}

/// Keeps NAPI on for a veth that receives XDP-redirected frames.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn drop(reason: u32) -> i32 {
    count(reason);
    TC_ACT_SHOT as i32
}

/// Anti-spoofing: the source address must be the endpoint on this veth, with
/// its MAC.
#[inline(always)]
fn source_is_endpoint(ctx: &TcContext, pkt: &Packet) -> bool {
    let Some(ep) = (unsafe { ENDPOINTS.get(pkt.key.saddr) }) else {
        return false;
    };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Ok(smac) = ctx.load::<[u8; 6]>(6) else {
        return false;
    };
    ep.ifindex == ifindex && ep.mac == smac
}

/// The published port a packet is addressed to: a mapping bound to the
/// destination address, or one bound to every address when the destination is
/// one of the host's.
#[inline(always)]
fn published(cfg: &Config, pkt: &Packet) -> Option<PortTarget> {
    if pkt.key.proto != IPPROTO_TCP && pkt.key.proto != IPPROTO_UDP {
        return None;
    }
    let mut key = PortKey {
        host_ip: pkt.key.daddr,
        host_port: pkt.key.dport,
        proto: pkt.key.proto,
        _pad: 0,
    };
    if let Some(target) = unsafe { PORTS.get(key) } {
        return Some(*target);
    }
    if pkt.key.daddr != cfg.host_ip && pkt.key.daddr != cfg.gateway_ip {
        return None;
    }
    key.host_ip = 0;
    unsafe { PORTS.get(key) }.copied()
}

/// New flow from a container to off-host: SNAT to the host's address. From the
/// container's veth (`fast`), the packet is then sent straight out; from the
/// uplink's egress it just continues.
#[inline(always)]
fn masquerade(ctx: &mut TcContext, cfg: &Config, pkt: &Packet, fast: bool) -> i32 {
    let egress = if fast {
        if pkt.ttl <= 1 {
            return fwd::pass(stat::PASS_TTL);
        }
        // Route before translating: what we can't send ourselves goes to the
        // stack as the container sent it.
        let natted = FlowKey {
            saddr: cfg.host_ip,
            ..pkt.key
        };
        match fwd::route(ctx, &natted) {
            Some(egress) => Some(egress),
            None => return TC_ACT_OK as i32,
        }
    } else {
        None
    };
    let flow = match conntrack::lookup(&pkt.key) {
        Some(flow) => flow,
        None => match nat::create_snat_flow(
            cfg,
            pkt,
            cfg.host_ip,
            pkt.key.daddr,
            pkt.key.dport,
            nat_kind::MASQUERADE,
        ) {
            Some(flow) => flow,
            None => return TC_ACT_SHOT as i32,
        },
    };
    let now = now_ns();
    if let Some(egress) = &egress {
        fwd::remember(&flow, egress, route_gen(), now);
    }
    conntrack::update(&flow, pkt, now);
    if nat::rewrite(ctx, pkt, &flow.target()).is_err() {
        return drop(stat::DROP_MALFORMED);
    }
    match egress {
        Some(egress) => fwd::send(ctx, cfg, pkt, &egress, true),
        None => TC_ACT_OK as i32,
    }
}

/// A packet of a tracked flow: account it, translate it, send it on.
#[inline(always)]
fn forward_flow(ctx: &mut TcContext, cfg: &Config, pkt: &Packet, flow: &Flow) -> i32 {
    if pkt.ttl <= 1 {
        return fwd::pass(stat::PASS_TTL);
    }
    let target = flow.target();
    let now = now_ns();
    let Some(egress) = fwd::route_flow(ctx, flow, &target, now) else {
        return TC_ACT_OK as i32;
    };
    conntrack::update(flow, pkt, now);
    if nat::rewrite(ctx, pkt, &target).is_err() {
        return drop(stat::DROP_MALFORMED);
    }
    fwd::send(ctx, cfg, pkt, &egress, true)
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
    csum::set_quoted_addr(ctx, inner.l3, true, inner.key.saddr, quoted.saddr)?;
    csum::set_quoted_addr(ctx, inner.l3, false, inner.key.daddr, quoted.daddr)?;
    if inner.l4_kind == L4::IcmpEcho {
        csum::set_quoted_port(ctx, pkt, inner.l4 + 4, inner.key.sport, quoted.sport)?;
    } else {
        csum::set_quoted_port(ctx, pkt, inner.l4, inner.key.sport, quoted.sport)?;
        csum::set_quoted_port(ctx, pkt, inner.l4 + 2, inner.key.dport, quoted.dport)?;
    }
    csum::set_addr(ctx, pkt, true, pkt.key.saddr, outer.saddr)?;
    csum::set_addr(ctx, pkt, false, pkt.key.daddr, outer.daddr)
}

/// An ICMP error (unreachable, frag-needed, time exceeded) about a packet of a
/// translated flow: translate the outer header towards the flow's endpoint and
/// the quoted header back to what that endpoint sent, or PMTU discovery and
/// error reporting break.
#[inline(always)]
fn icmp_error(ctx: &mut TcContext, cfg: &Config, pkt: &Packet) -> i32 {
    let inner = match parse::parse_inner(ctx, pkt.inner_l3) {
        Parsed::Ours(inner) => inner,
        _ => return fwd::pass(stat::PASS_NOT_OURS),
    };
    // The quoted packet went out; a packet coming back the other way would carry
    // the reversed tuple, and its translation is what the error needs.
    let Some(flow) = conntrack::lookup(&inner.key.reversed()) else {
        return fwd::pass(stat::PASS_NOT_OURS);
    };
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
    let Some(egress) = fwd::route(ctx, &outer) else {
        return TC_ACT_OK as i32;
    };
    if rewrite_icmp_error(ctx, pkt, &inner, &quoted, &outer).is_err() {
        return drop(stat::DROP_MALFORMED);
    }
    count(stat::ICMP_ERROR_TRANSLATED);
    fwd::send(ctx, cfg, pkt, &egress, true)
}
