//! Delivery: into a local container through its veth peer, or out through the
//! FIB to a neighbour. What can't be fast-pathed (TTL about to expire, MTU
//! exceeded, no route) goes to the kernel's stack untouched, so the kernel sends
//! the ICMP errors a router must.
use core::mem;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup, bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use netpath_common::{Addr, Config, Endpoint, FlowKey, NextHop, next_hop, stat};

use super::{
    conntrack::Flow,
    csum,
    ctx::Packet as Ctx,
    family::Family,
    maps::{route_gen, scratch},
    parse::{ETH_HLEN, Packet},
    verdict::Verdict,
};

const PACKET_HOST: u32 = 0;
const VLAN_HLEN: u32 = 4;
/// A cached next hop is looked up again after this long even if no route
/// change was announced (the agent, which announces them, may not run).
const NEXT_HOP_MAX_AGE_NS: u64 = 1_000_000_000;

/// Where a packet with a given destination leaves.
pub enum Egress<A: Addr = u32> {
    /// A local container: redirect into its netns.
    Container(Endpoint),
    /// Out of an interface, MACs known.
    Neighbour {
        ifindex: u32,
        dmac: [u8; 6],
        smac: [u8; 6],
        /// The device's MTU; 0 where the kernel does not report it (< 5.12).
        mtu: u16,
    },
    /// Out of an interface, neighbour to resolve.
    Resolve { ifindex: u32, nexthop: A },
}

/// Decides where `tuple` (a packet's tuple after translation) leaves, or
/// `Err(reason)` when the kernel's stack must handle it (the packet passes,
/// counted under the reason).
#[inline(always)]
pub fn route<F: Family, C: Ctx>(ctx: &C, tuple: &FlowKey<F::Addr>) -> Result<Egress<F::Addr>, u32> {
    if let Some(ep) = unsafe { F::endpoints().get(tuple.daddr) } {
        return Ok(Egress::Container(*ep));
    }
    fib::<F, C>(ctx, tuple)
}

/// Asks the kernel's FIB where `tuple` leaves.
#[inline(always)]
fn fib<F: Family, C: Ctx>(ctx: &C, tuple: &FlowKey<F::Addr>) -> Result<Egress<F::Addr>, u32> {
    // Every input field set (a map value needs no zeroing for the verifier,
    // and zeroing 64 bytes would be a memset call).
    let params = &mut scratch().ok_or(stat::PASS_NO_ROUTE)?.fib;
    params.__bindgen_anon_2.flowinfo = 0; // tos
    params.__bindgen_anon_1.tot_len = 0;
    params.l4_protocol = tuple.proto;
    params.sport = tuple.sport;
    params.dport = tuple.dport;
    // tot_len 0: let the kernel judge the skb itself, which handles GSO packets.
    params.ifindex = ctx.ifindex();
    F::fib_addrs(params, tuple.saddr, tuple.daddr);
    let rc = unsafe {
        fib_lookup(
            ctx.as_raw().cast(),
            params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    } as u32;
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        Ok(Egress::Neighbour {
            ifindex: params.ifindex,
            dmac: params.dmac,
            smac: params.smac,
            mtu: unsafe { params.__bindgen_anon_1.mtu_result },
        })
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
        Ok(Egress::Resolve {
            ifindex: params.ifindex,
            nexthop: F::fib_nexthop(params),
        })
    } else if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED {
        Err(stat::PASS_FRAG_NEEDED)
    } else {
        Err(stat::PASS_NO_ROUTE)
    }
}

/// [`route`] for a packet of `flow` (its tuple once translated: `tuple`),
/// through the next hop cached in the flow for this direction while that is
/// valid: established flows skip the FIB and the `ENDPOINTS` lookup. The
/// cached MTU keeps oversized packets going to the kernel, as the FIB lookup
/// would.
#[inline(always)]
pub fn route_flow<F: Family>(
    ctx: &TcContext,
    flow: &Flow<F::Addr>,
    tuple: &FlowKey<F::Addr>,
    now: u64,
) -> Result<Egress<F::Addr>, u32> {
    let generation = route_gen();
    // SAFETY: entry points into a live map value; dir is 0 or 1.
    let cached = unsafe { &(*flow.entry).nexthop[flow.dir & 1] };
    if generation != 0
        && cached.route_gen == generation
        && now.wrapping_sub(cached.looked_up_ns) < NEXT_HOP_MAX_AGE_NS
    {
        match cached.kind {
            next_hop::CONTAINER => {
                return Ok(Egress::Container(Endpoint {
                    ifindex: cached.ifindex,
                    mac: cached.dmac,
                    network_id: 0,
                }));
            }
            next_hop::NEIGHBOUR => {
                if !fits(ctx, cached.mtu) {
                    return Err(stat::PASS_FRAG_NEEDED);
                }
                return Ok(Egress::Neighbour {
                    ifindex: cached.ifindex,
                    dmac: cached.dmac,
                    smac: cached.smac,
                    mtu: cached.mtu,
                });
            }
            _ => {}
        }
    }
    let egress = route::<F, TcContext>(ctx, tuple)?;
    remember(flow, &egress, generation, now);
    Ok(egress)
}

/// Caches where this direction of `flow` leaves (see [`route_flow`]).
#[inline(always)]
fn remember<A: Addr>(flow: &Flow<A>, egress: &Egress<A>, generation: u32, now: u64) {
    let (kind, ifindex, dmac, smac, mtu) = match *egress {
        Egress::Container(ep) => (next_hop::CONTAINER, ep.ifindex, ep.mac, [0; 6], 0),
        // Without the MTU (kernels before 5.12) the size check can't be
        // made from the cache: look up every time.
        Egress::Neighbour {
            ifindex,
            dmac,
            smac,
            mtu,
        } if mtu != 0 => (next_hop::NEIGHBOUR, ifindex, dmac, smac, mtu),
        _ => return,
    };
    if generation == 0 {
        return;
    }
    // SAFETY: entry points into a live map value; dir is 0 or 1. Two CPUs
    // may write at once; both write what the same lookup said. Field by
    // field: a NextHop built on the stack would not fit beside the rest of
    // the program's frame.
    unsafe {
        let cached: *mut NextHop = &raw mut (*flow.entry).nexthop[flow.dir & 1];
        (*cached).dmac = dmac;
        (*cached).smac = smac;
        (*cached).ifindex = ifindex;
        (*cached).mtu = mtu;
        (*cached).kind = kind;
        (*cached).looked_up_ns = now;
        (*cached).route_gen = generation;
    }
}

/// Whether the packet fits the egress MTU, as the kernel judges forwarding
/// (`is_skb_forwardable`): a GSO packet is segmented to fit later.
#[inline(always)]
fn fits(ctx: &TcContext, mtu: u16) -> bool {
    let skb = ctx.skb.skb;
    let (len, gso_size) = unsafe { ((*skb).len, (*skb).gso_size) };
    len <= u32::from(mtu) + ETH_HLEN as u32 + VLAN_HLEN || gso_size != 0
}

/// Whether sending a packet crosses an L3 hop, which costs it one TTL.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Routed between networks (NAT paths): TTL down by one.
    Routed,
    /// Within the container network, as a bridge would: TTL untouched.
    Bridged,
}

/// Sends an already translated packet where `route` said.
#[inline(always)]
pub fn send<F: Family>(
    ctx: &mut TcContext,
    cfg: &Config,
    pkt: &Packet<F::Addr>,
    egress: &Egress<F::Addr>,
    hop: Hop,
) -> Verdict {
    if hop == Hop::Routed && csum::dec_ttl::<F, TcContext>(ctx, pkt).is_err() {
        return Verdict::drop(stat::DROP_MALFORMED);
    }
    match egress {
        Egress::Container(ep) => {
            if csum::set_macs(ctx, &ep.mac, &cfg.gateway_mac).is_err() {
                return Verdict::drop(stat::DROP_MALFORMED);
            }
            // A frame for another container arrived here as PACKET_OTHERHOST
            // (not for this veth's MAC); kernels before 5.16 keep that across
            // bpf_redirect_peer and the peer's IP layer would drop it.
            if unsafe { (*ctx.skb.skb).pkt_type } != PACKET_HOST {
                let _ = ctx.change_type(PACKET_HOST);
            }
            Verdict::redirect(stat::REDIRECT_PEER, unsafe {
                bpf_redirect_peer(ep.ifindex, 0)
            })
        }
        Egress::Neighbour {
            ifindex,
            dmac,
            smac,
            ..
        } => {
            if csum::set_macs(ctx, dmac, smac).is_err() {
                return Verdict::drop(stat::DROP_MALFORMED);
            }
            Verdict::redirect(stat::REDIRECT, unsafe { bpf_redirect(*ifindex, 0) })
        }
        Egress::Resolve { ifindex, nexthop } => {
            let mut nh: bpf_redir_neigh = unsafe { mem::zeroed() };
            F::set_neigh(&mut nh, *nexthop);
            Verdict::redirect(stat::REDIRECT_NEIGH, unsafe {
                bpf_redirect_neigh(*ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0)
            })
        }
    }
}
