//! Address and port translation: choosing NAT ports and rewriting a packet to
//! the tuple its flow says it must carry.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use netpath_common::{Config, FlowKey, SNAT_POOL_PORTS, SnatDestination, stat};

use super::{
    conntrack::{self, CreateError, Flow},
    csum::{self, RewriteResult, Side},
    ctx::Packet as Ctx,
    family::Family,
    limits::{self, Opener},
    maps::forget_bounds,
    parse::{L4, Packet},
    snat_ports,
};

/// Random probes for a free SNAT port before the pool's lowest free one.
const RANDOM_PROBES: u32 = 4;
/// Probes in all: the last ones take the ports the pool marks free (one
/// marked free but taken after all is marked and the next one tried).
/// Each probe multiplies what the verifier walks: at 16 (8 random) the
/// new-flow programs took 488 k (IPv4) and 675 k (IPv6) instructions to
/// verify, and `up` 2.5 times as long; at 8, 72 k and 81 k.
const PROBES: u32 = 8;

/// Rewrites the packet from its tuple (`pkt.key`) to `target`. A later
/// fragment has only addresses: its ports, and the L4 checksum that covers
/// them and the addresses, were translated in the first fragment.
#[inline(always)]
pub fn rewrite<F: Family, C: Ctx>(
    ctx: &mut C,
    pkt: &Packet<F::Addr>,
    target: &FlowKey<F::Addr>,
) -> RewriteResult {
    if pkt.l4_kind == L4::Fragment {
        csum::set_l3_addr::<F, C>(ctx, pkt.l3, Side::Source, pkt.key.saddr, target.saddr)?;
        return csum::set_l3_addr::<F, C>(
            ctx,
            pkt.l3,
            Side::Destination,
            pkt.key.daddr,
            target.daddr,
        );
    }
    csum::set_addr::<F, C>(ctx, pkt, Side::Source, pkt.key.saddr, target.saddr)?;
    csum::set_addr::<F, C>(ctx, pkt, Side::Destination, pkt.key.daddr, target.daddr)?;
    csum::set_port(ctx, pkt, Side::Source, pkt.key.sport, target.sport)?;
    if pkt.l4_kind != L4::IcmpEcho {
        csum::set_port(ctx, pkt, Side::Destination, pkt.key.dport, target.dport)?;
    }
    Ok(())
}

/// Creates a flow whose source is translated to `nat_addr` and a port from the
/// SNAT range, and whose destination is `(dst_addr, dst_port)` after any DNAT.
/// Keeps the original source port when it lies in the range and is free;
/// finds a free port while the range has one (see `snat_ports`).
/// `Err(reason)`: no flow, the packet is dropped.
///
/// The search only looks ports up; one claim (two if a full table made
/// room, or another CPU took the port in between) creates the flow. A claim
/// per probe would have the verifier walk the whole of `create` per probe.
#[inline(always)]
pub fn create_snat_flow<F: Family>(
    cfg: &Config,
    pkt: &Packet<F::Addr>,
    nat_addr: F::Addr,
    dst_addr: F::Addr,
    dst_port: u16,
    nat_kind: u8,
) -> Result<Flow<F::Addr>, u32> {
    let is_echo = pkt.l4_kind == L4::IcmpEcho;
    let dest = SnatDestination {
        nat_addr,
        dst_addr,
        dst_port: if is_echo { 0 } else { dst_port },
        proto: pkt.key.proto,
        _pad: 0,
    };
    if conntrack::opens_flow::<F>(pkt) && snat_ports::share_full::<F>(cfg, pkt.key.saddr, &dest) {
        return Err(stat::DROP_SNAT_SHARE);
    }
    limits::admit::<F>(cfg, pkt, Opener::Container)?;
    let range = PortRange::of(cfg);
    let mut made_room = false;
    for _ in 0..2 {
        let offset = free_port::<F>(pkt, &dest, &range);
        if offset == NO_FREE_PORT {
            return Err(stat::DROP_NO_SNAT_PORT);
        }
        let reply = snat_reply(&dest, range.port(offset));
        match conntrack::create::<F>(&pkt.key, &reply, nat_kind, pkt) {
            Ok(flow) => {
                snat_ports::share_add::<F>(cfg, pkt.key.saddr, &dest, 1);
                return Ok(flow);
            }
            Err(CreateError::Refused(reason)) => return Err(reason),
            // Full: one early drop, then once more.
            Err(CreateError::Full) => {
                if made_room || !conntrack::early_drop::<F>() {
                    return Err(stat::DROP_CT_FULL);
                }
                made_room = true;
            }
            // Another CPU claimed the port since we looked: once more.
            Err(CreateError::ReplyTaken) => {}
        }
    }
    Err(stat::DROP_NO_SNAT_PORT)
}

/// The SNAT range as offsets from its first port.
struct PortRange {
    min: u32,
    span: u32,
}

impl PortRange {
    #[inline(always)]
    fn of(cfg: &Config) -> Self {
        let min = u32::from(cfg.snat_port_min);
        let span = u32::from(cfg.snat_port_max).saturating_sub(min) + 1;
        Self {
            min,
            span: span.min(SNAT_POOL_PORTS),
        }
    }

    /// Wire order.
    #[inline(always)]
    fn port(&self, offset: u32) -> u16 {
        ((self.min + offset) as u16).to_be()
    }

    #[inline(always)]
    fn random_offset(&self) -> u32 {
        // SAFETY: a helper without arguments. `checked_rem`: no division
        // by zero panic for the verifier to find (the span is never 0).
        (unsafe { bpf_get_prandom_u32() })
            .checked_rem(self.span)
            .unwrap_or(0)
    }
}

/// The reply tuple of an SNAT flow toward `dest` from SNAT port `port`.
#[inline(always)]
fn snat_reply<A: netpath_common::Addr>(dest: &SnatDestination<A>, port: u16) -> FlowKey<A> {
    FlowKey {
        saddr: dest.dst_addr,
        daddr: dest.nat_addr,
        // Echo replies carry the (translated) id in both "ports".
        sport: if dest.dst_port == 0 {
            port
        } else {
            dest.dst_port
        },
        dport: port,
        proto: dest.proto,
        _pad: [0; 3],
    }
}

/// [`free_port`]'s "the range is exhausted".
const NO_FREE_PORT: u32 = u32::MAX;

/// An SNAT port offset no flow toward `dest` holds, marked taken in the
/// destination's pool (before the claim: a port whose claim fails is
/// someone else's, or hidden until the agent's next recount): the packet's
/// own source port if it lies in the range, random ones, then the lowest
/// the pool marks free. [`NO_FREE_PORT`] when there is none. Not inlined,
/// and what it returns has no range the verifier knows: the rest of the
/// program is walked once after it, not once per way out of the loop.
#[inline(never)]
fn free_port<F: Family>(
    pkt: &Packet<F::Addr>,
    dest: &SnatDestination<F::Addr>,
    range: &PortRange,
) -> u32 {
    let pool = snat_ports::pool::<F>(dest);
    let own = u32::from(u16::from_be(pkt.key.sport));
    let mut offset = if own >= range.min && own - range.min < range.span {
        own - range.min
    } else {
        range.random_offset()
    };
    for probe in 0..PROBES {
        if conntrack::reply_claimable::<F>(&snat_reply(dest, range.port(offset)), pkt) {
            if let Some(pool) = pool {
                // SAFETY: a live map value; racing writers lose bits only.
                unsafe { (*pool).mark_used(offset) };
            }
            return forget_bounds(offset);
        }
        if probe + 1 < RANDOM_PROBES {
            offset = range.random_offset();
            continue;
        }
        // No pool (the map is full): the random probes alone.
        let Some(pool) = pool else {
            return NO_FREE_PORT;
        };
        // SAFETY: as above.
        let pool = unsafe { &mut *pool };
        pool.mark_used(offset);
        match snat_ports::lowest_free(pool, range.span) {
            // The same, taken port: marked, looked at again.
            snat_ports::SEARCH_AGAIN => {}
            snat_ports::SEARCH_EXHAUSTED => return NO_FREE_PORT,
            free => offset = free,
        }
    }
    NO_FREE_PORT
}

/// Creates a flow that only translates the destination (a published port
/// reached from outside): the container sees the client's real address.
/// Also a routed flow (`nat_kind::ROUTED`, which a container opens), whose
/// destination stays as it is.
#[inline(always)]
pub fn create_dnat_flow<F: Family>(
    cfg: &Config,
    pkt: &Packet<F::Addr>,
    dst_addr: F::Addr,
    dst_port: u16,
    nat_kind: u8,
) -> Result<Flow<F::Addr>, u32> {
    let reply = FlowKey {
        saddr: dst_addr,
        daddr: pkt.key.saddr,
        sport: dst_port,
        dport: pkt.key.sport,
        proto: pkt.key.proto,
        _pad: [0; 3],
    };
    let opener = if nat_kind == netpath_common::nat_kind::ROUTED {
        Opener::Container
    } else {
        Opener::Outside
    };
    limits::admit::<F>(cfg, pkt, opener)?;
    let mut created = conntrack::create::<F>(&pkt.key, &reply, nat_kind, pkt);
    if matches!(created, Err(CreateError::Full)) && conntrack::early_drop::<F>() {
        created = conntrack::create::<F>(&pkt.key, &reply, nat_kind, pkt);
    }
    match created {
        Ok(flow) => Ok(flow),
        // Another flow already answers from that tuple: not ours to steal.
        Err(CreateError::ReplyTaken) => Err(stat::DROP_NO_SNAT_PORT),
        Err(CreateError::Full) => Err(stat::DROP_CT_FULL),
        Err(CreateError::Refused(reason)) => Err(reason),
    }
}
