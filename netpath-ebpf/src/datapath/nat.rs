//! Address and port translation: choosing NAT ports and rewriting a packet to
//! the tuple its flow says it must carry.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use netpath_common::{Config, FlowKey, stat};

use super::{
    conntrack::{self, CreateError, Flow},
    csum::{self, RewriteResult, Side},
    ctx::Packet as Ctx,
    limits,
    parse::{L4, Packet},
};

/// Random probes for a free SNAT port before giving up (a counted drop).
const SNAT_PROBES: u32 = 16;

/// Rewrites the packet from its tuple (`pkt.key`) to `target`. A later
/// fragment has only addresses: its ports, and the L4 checksum that covers
/// them and the addresses, were translated in the first fragment.
#[inline(always)]
pub fn rewrite<C: Ctx>(ctx: &mut C, pkt: &Packet, target: &FlowKey) -> RewriteResult {
    if pkt.l4_kind == L4::Fragment {
        csum::set_l3_addr(ctx, pkt.l3, Side::Source, pkt.key.saddr, target.saddr)?;
        return csum::set_l3_addr(ctx, pkt.l3, Side::Destination, pkt.key.daddr, target.daddr);
    }
    csum::set_addr(ctx, pkt, Side::Source, pkt.key.saddr, target.saddr)?;
    csum::set_addr(ctx, pkt, Side::Destination, pkt.key.daddr, target.daddr)?;
    csum::set_port(ctx, pkt, Side::Source, pkt.key.sport, target.sport)?;
    if pkt.l4_kind != L4::IcmpEcho {
        csum::set_port(ctx, pkt, Side::Destination, pkt.key.dport, target.dport)?;
    }
    Ok(())
}

/// Creates a flow whose source is translated to `nat_addr` and a port from the
/// SNAT range, and whose destination is `(dst_addr, dst_port)` after any DNAT.
/// Keeps the original source port when it lies in the range and is free.
/// `Err(reason)`: no flow, the packet is dropped.
#[inline(always)]
pub fn create_snat_flow(
    cfg: &Config,
    pkt: &Packet,
    nat_addr: u32,
    dst_addr: u32,
    dst_port: u16,
    nat_kind: u8,
) -> Result<Flow, u32> {
    let min = u32::from(cfg.snat_port_min);
    let span = u32::from(cfg.snat_port_max).saturating_sub(min) + 1;
    let orig_port = u32::from(u16::from_be(pkt.key.sport));
    let mut candidate = if orig_port >= min && orig_port - min < span {
        orig_port
    } else {
        min + unsafe { bpf_get_prandom_u32() } % span
    };
    limits::admit(cfg, pkt)?;
    let is_echo = pkt.l4_kind == L4::IcmpEcho;
    let mut made_room = false;
    for _ in 0..SNAT_PROBES {
        let port = (candidate as u16).to_be();
        let reply = FlowKey {
            saddr: dst_addr,
            daddr: nat_addr,
            // Echo replies carry the (translated) id in both "ports".
            sport: if is_echo { port } else { dst_port },
            dport: port,
            proto: pkt.key.proto,
            _pad: [0; 3],
        };
        match conntrack::create(&pkt.key, &reply, nat_kind, pkt) {
            Ok(flow) => return Ok(flow),
            Err(CreateError::Refused(reason)) => return Err(reason),
            // Full: one early drop, then the same port again.
            Err(CreateError::Full) => {
                if made_room || !conntrack::early_drop() {
                    return Err(stat::DROP_CT_FULL);
                }
                made_room = true;
            }
            Err(CreateError::ReplyTaken) => {
                // Try the same port again once its finished holder is gone.
                if !conntrack::reclaim_finished(&reply, pkt) {
                    candidate = min + unsafe { bpf_get_prandom_u32() } % span;
                }
            }
        }
    }
    Err(stat::DROP_NO_SNAT_PORT)
}

/// Creates a flow that only translates the destination (a published port
/// reached from outside): the container sees the client's real address.
#[inline(always)]
pub fn create_dnat_flow(
    cfg: &Config,
    pkt: &Packet,
    dst_addr: u32,
    dst_port: u16,
    nat_kind: u8,
) -> Result<Flow, u32> {
    let reply = FlowKey {
        saddr: dst_addr,
        daddr: pkt.key.saddr,
        sport: dst_port,
        dport: pkt.key.sport,
        proto: pkt.key.proto,
        _pad: [0; 3],
    };
    limits::admit(cfg, pkt)?;
    let mut created = conntrack::create(&pkt.key, &reply, nat_kind, pkt);
    if matches!(created, Err(CreateError::Full)) && conntrack::early_drop() {
        created = conntrack::create(&pkt.key, &reply, nat_kind, pkt);
    }
    match created {
        Ok(flow) => Ok(flow),
        // Another flow already answers from that tuple: not ours to steal.
        Err(CreateError::ReplyTaken) => Err(stat::DROP_NO_SNAT_PORT),
        Err(CreateError::Full) => Err(stat::DROP_CT_FULL),
        Err(CreateError::Refused(reason)) => Err(reason),
    }
}
