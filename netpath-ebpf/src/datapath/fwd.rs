//! Delivery: into a local container through its veth peer, or out through the
//! FIB to a neighbour. What can't be fast-pathed (TTL about to expire, MTU
//! exceeded, no route) goes to the kernel's stack untouched, so the kernel sends
//! the ICMP errors a router must.
use core::mem;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT,
        bpf_fib_lookup, bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use netpath_common::{Config, Endpoint, FlowKey, stat};

use super::{
    csum,
    ctx::Packet as Ctx,
    maps::{ENDPOINTS, count},
    parse::Packet,
};

const AF_INET: u8 = 2;
const PACKET_HOST: u32 = 0;

/// Where a packet with a given destination leaves.
pub enum Egress {
    /// A local container: redirect into its netns.
    Container(Endpoint),
    /// Out of an interface, MACs known.
    Neighbour {
        ifindex: u32,
        dmac: [u8; 6],
        smac: [u8; 6],
    },
    /// Out of an interface, neighbour to resolve.
    Resolve { ifindex: u32, nexthop: u32 },
}

/// Decides where `tuple` (a packet's tuple after translation) leaves, or `None`
/// when the kernel's stack must handle it.
#[inline(always)]
pub fn route<C: Ctx>(ctx: &C, tuple: &FlowKey) -> Option<Egress> {
    if let Some(ep) = unsafe { ENDPOINTS.get(tuple.daddr) } {
        return Some(Egress::Container(*ep));
    }
    let mut params: bpf_fib_lookup = unsafe { mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = tuple.proto;
    params.sport = tuple.sport;
    params.dport = tuple.dport;
    // tot_len 0: let the kernel judge the skb itself, which handles GSO packets.
    params.ifindex = ctx.ifindex();
    params.__bindgen_anon_3.ipv4_src = tuple.saddr;
    params.__bindgen_anon_4.ipv4_dst = tuple.daddr;
    let rc = unsafe {
        fib_lookup(
            ctx.as_raw().cast(),
            &mut params,
            mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    } as u32;
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        Some(Egress::Neighbour {
            ifindex: params.ifindex,
            dmac: params.dmac,
            smac: params.smac,
        })
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
        Some(Egress::Resolve {
            ifindex: params.ifindex,
            nexthop: unsafe { params.__bindgen_anon_4.ipv4_dst },
        })
    } else {
        count(if rc == aya_ebpf::bindings::BPF_FIB_LKUP_RET_FRAG_NEEDED {
            stat::PASS_FRAG_NEEDED
        } else {
            stat::DROP_NO_ROUTE
        });
        None
    }
}

/// Sends an already translated packet where `route` said. `routed`: the packet
/// crosses an L3 hop here, so its TTL goes down by one.
#[inline(always)]
pub fn send(ctx: &mut TcContext, cfg: &Config, pkt: &Packet, egress: &Egress, routed: bool) -> i32 {
    if routed && csum::dec_ttl(ctx, pkt).is_err() {
        count(stat::DROP_MALFORMED);
        return TC_ACT_SHOT as i32;
    }
    match egress {
        Egress::Container(ep) => {
            if csum::set_macs(ctx, &ep.mac, &cfg.gateway_mac).is_err() {
                return TC_ACT_SHOT as i32;
            }
            // A frame for another container arrived here as PACKET_OTHERHOST
            // (not for this veth's MAC); kernels before 5.16 keep that across
            // bpf_redirect_peer and the peer's IP layer would drop it.
            let _ = ctx.change_type(PACKET_HOST);
            count(stat::REDIRECT_PEER);
            unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 }
        }
        Egress::Neighbour {
            ifindex,
            dmac,
            smac,
        } => {
            if csum::set_macs(ctx, dmac, smac).is_err() {
                return TC_ACT_SHOT as i32;
            }
            count(stat::REDIRECT);
            unsafe { bpf_redirect(*ifindex, 0) as i32 }
        }
        Egress::Resolve { ifindex, nexthop } => {
            let mut nh: bpf_redir_neigh = unsafe { mem::zeroed() };
            nh.nh_family = AF_INET as u32;
            nh.__bindgen_anon_1.ipv4_nh = *nexthop;
            count(stat::REDIRECT_NEIGH);
            unsafe {
                bpf_redirect_neigh(
                    *ifindex,
                    &mut nh,
                    mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                ) as i32
            }
        }
    }
}

/// The packet goes on through the kernel's stack.
#[inline(always)]
pub fn pass(reason: u32) -> i32 {
    count(reason);
    TC_ACT_OK as i32
}
