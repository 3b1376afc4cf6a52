//! Header rewrites with their checksum fixes, through the kernel's csum helpers:
//! they know whether the skb is CHECKSUM_PARTIAL (veth traffic usually is), in
//! which case the L4 field holds only the pseudo-header sum and must be fixed
//! for address changes (`BPF_F_PSEUDO_HDR`) but not for port changes.
use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};

use super::{
    ctx::Packet as Ctx,
    family::Family,
    parse::{L4, Packet},
};

/// The IPv4 header checksum.
pub const IP_CSUM_OFF: usize = 10;

/// Offset of the L4 checksum and the flags its fixes need, for a packet whose
/// L4 header starts at `l4`.
#[inline(always)]
fn l4_csum(kind: L4, l4: usize) -> (usize, u64) {
    match kind {
        L4::Tcp => (l4 + 16, 0),
        // A UDP checksum of 0 means "none" and stays 0.
        L4::Udp => (l4 + 6, u64::from(BPF_F_MARK_MANGLED_0)),
        L4::IcmpEcho | L4::IcmpError => (l4 + 2, 0),
        // No L4 header here: never rewritten (see `nat::rewrite`).
        L4::Fragment => (l4, 0),
    }
}

pub type RewriteResult = Result<(), i64>;

/// Which end of a header a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl Side {
    #[inline(always)]
    fn addr_off<F: Family>(self) -> usize {
        match self {
            Self::Source => F::SRC_OFF,
            Self::Destination => F::DST_OFF,
        }
    }
}

/// Rewrites the source or destination address.
#[inline(always)]
pub fn set_addr<F: Family, C: Ctx>(
    ctx: &mut C,
    pkt: &Packet<F::Addr>,
    side: Side,
    old: F::Addr,
    new: F::Addr,
) -> RewriteResult {
    if old == new {
        return Ok(());
    }
    let off = pkt.l3 + side.addr_off::<F>();
    // ICMPv4's checksum has no pseudo-header: an address change leaves it
    // alone. ICMPv6's has one.
    let pseudo_header = match pkt.l4_kind {
        L4::Tcp | L4::Udp => true,
        L4::IcmpEcho | L4::IcmpError => F::ICMP_PSEUDO_HEADER,
        L4::Fragment => false,
    };
    if pseudo_header {
        let (csum_off, flags) = l4_csum(pkt.l4_kind, pkt.l4);
        F::fix_l4_csum(ctx, csum_off, old, new, flags | u64::from(BPF_F_PSEUDO_HDR))?;
    }
    F::fix_ip_csum(ctx, pkt.l3, old, new)?;
    ctx.store(off, &new)?;
    Ok(())
}

/// Rewrites the source or destination port (the echo id for ICMP echo, where
/// the side is ignored: there is one id field).
#[inline(always)]
pub fn set_port<A: netpath_common::Addr, C: Ctx>(
    ctx: &mut C,
    pkt: &Packet<A>,
    side: Side,
    old: u16,
    new: u16,
) -> RewriteResult {
    if old == new {
        return Ok(());
    }
    let off = match (pkt.l4_kind, side) {
        (L4::IcmpEcho, _) => pkt.l4 + 4,
        (_, Side::Source) => pkt.l4,
        (_, Side::Destination) => pkt.l4 + 2,
    };
    let (csum_off, flags) = l4_csum(pkt.l4_kind, pkt.l4);
    ctx.l4_csum_replace(csum_off, u32::from(old), u32::from(new), flags | 2)?;
    ctx.store(off, &new)?;
    Ok(())
}

/// Decrements the TTL (hop limit) as a router must when we forward between
/// L3 networks.
#[inline(always)]
pub fn dec_ttl<F: Family, C: Ctx>(ctx: &mut C, pkt: &Packet<F::Addr>) -> RewriteResult {
    let off = pkt.l3 + F::TTL_OFF;
    // With the byte after it: IPv4's checksum is over 16-bit words.
    let old: u16 = ctx.load(off)?;
    let mut bytes = old.to_ne_bytes();
    bytes[0] = bytes[0].wrapping_sub(1);
    let new = u16::from_ne_bytes(bytes);
    if F::IP_HEADER_CSUM {
        ctx.l3_csum_replace(pkt.l3 + IP_CSUM_OFF, u32::from(old), u32::from(new), 2)?;
    }
    ctx.store(off, &new)?;
    Ok(())
}

/// Sets both MACs of the Ethernet header.
#[inline(always)]
pub fn set_macs<C: Ctx>(ctx: &mut C, dst: &[u8; 6], src: &[u8; 6]) -> RewriteResult {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dst);
    macs[6..].copy_from_slice(src);
    ctx.store(0, &macs)?;
    Ok(())
}

/// Rewrites an address of the IP header at `l3`, fixing only that
/// header's checksum: for a later IPv4 fragment (whose L4 checksum sits in
/// the first).
#[inline(always)]
pub fn set_l3_addr<F: Family, C: Ctx>(
    ctx: &mut C,
    l3: usize,
    side: Side,
    old: F::Addr,
    new: F::Addr,
) -> RewriteResult {
    if old == new {
        return Ok(());
    }
    let off = l3 + side.addr_off::<F>();
    F::fix_ip_csum(ctx, l3, old, new)?;
    ctx.store(off, &new)?;
    Ok(())
}

/// Rewrites an address of the header an ICMP error (`outer`) quotes at
/// `l3`. An IPv4 header's own checksum is fixed, and then the ICMP
/// checksum over it stays valid (the sum over a header whose checksum is
/// correct is constant); an IPv6 header has none, so the ICMPv6 checksum
/// is fixed instead.
#[inline(always)]
pub fn set_quoted_addr<F: Family, C: Ctx>(
    ctx: &mut C,
    outer: &Packet<F::Addr>,
    l3: usize,
    side: Side,
    old: F::Addr,
    new: F::Addr,
) -> RewriteResult {
    if old == new {
        return Ok(());
    }
    if !F::IP_HEADER_CSUM {
        F::fix_l4_csum(ctx, outer.l4 + 2, old, new, 0)?;
    }
    set_l3_addr::<F, C>(ctx, l3, side, old, new)
}

/// Rewrites a port (or echo id) of the quoted packet at `off`, fixing the outer
/// ICMP checksum, which covers it.
#[inline(always)]
pub fn set_quoted_port<A: netpath_common::Addr, C: Ctx>(
    ctx: &mut C,
    outer: &Packet<A>,
    off: usize,
    old: u16,
    new: u16,
) -> RewriteResult {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(outer.l4 + 2, u32::from(old), u32::from(new), 2)?;
    ctx.store(off, &new)?;
    Ok(())
}
