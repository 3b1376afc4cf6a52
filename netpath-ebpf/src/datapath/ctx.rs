//! One packet interface over TC's skb and XDP's buffer, so parsing, conntrack
//! and NAT are written once. Both read and write headers in place (direct
//! packet access: no helper call per field; TC first pulls headers outside
//! the skb's linear part in, see [`linearize_headers`]) and fix the IPv4
//! header checksum by hand (RFC 1624 incremental updates). L4 checksums: TC uses the kernel's
//! helper, which knows whether the skb is CHECKSUM_PARTIAL; XDP sees whole
//! frames and fixes them by hand.
use core::{ffi::c_void, ptr};

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_MARK_MANGLED_0,
    programs::{TcContext, XdpContext},
};

/// Largest offset we read at: Ethernet + a full IPv4 header + an ICMP header +
/// a quoted full IPv4 header + 8 bytes. Bounds variable offsets for the verifier.
const MAX_OFFSET: usize = 14 + 60 + 8 + 60 + 8;

pub trait Packet {
    fn len(&self) -> u32;
    /// ifindex of the device the packet is on.
    fn ifindex(&self) -> u32;
    fn as_raw(&self) -> *mut c_void;
    fn load<T: Copy>(&self, off: usize) -> Result<T, i64>;
    fn store<T: Copy>(&mut self, off: usize, v: &T) -> Result<(), i64>;
    /// Fixes the checksum at `off` for `old` → `new` (`size` bytes, 2 or 4).
    #[inline(always)]
    fn l3_csum_replace(&mut self, off: usize, old: u32, new: u32, size: u64) -> Result<(), i64> {
        // Fields hold wire-order bytes; the arithmetic wants big-endian values.
        let (old, new) = wire_values(old, new, size);
        let csum = u16::from_be(self.load::<u16>(off)?);
        self.store(off, &csum_update(csum, old, new, size).to_be())
    }
    /// Same for an L4 checksum; `flags` as for `bpf_l4_csum_replace`.
    fn l4_csum_replace(&mut self, off: usize, old: u32, new: u32, flags: u64) -> Result<(), i64>;
}

impl Packet for TcContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn as_raw(&self) -> *mut c_void {
        EbpfContext::as_ptr(self)
    }
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, i64> {
        let at = in_frame::<T>(self.data(), self.data_end(), off).ok_or(-1i64)?;
        // SAFETY: in_frame checked the bounds.
        Ok(unsafe { ptr::read_unaligned(at) })
    }
    #[inline(always)]
    fn store<T: Copy>(&mut self, off: usize, v: &T) -> Result<(), i64> {
        let at = in_frame::<T>(self.data(), self.data_end(), off).ok_or(-1i64)?;
        // SAFETY: in_frame checked the bounds; the verifier unclones the skb
        // before a program that writes packet data runs.
        unsafe { ptr::write_unaligned(at, *v) };
        Ok(())
    }
    #[inline(always)]
    fn l4_csum_replace(&mut self, off: usize, old: u32, new: u32, flags: u64) -> Result<(), i64> {
        TcContext::l4_csum_replace(self, off, u64::from(old), u64::from(new), flags)
    }
}

/// Makes the headers we may read or write (up to [`MAX_OFFSET`] and the 8
/// bytes there, or the whole packet if shorter) part of the skb's linear
/// data, where direct packet access reaches them. They almost always are
/// already; a TC program calls this before parsing.
#[inline(always)]
pub fn linearize_headers(ctx: &mut TcContext) {
    let want = (TcContext::len(ctx) as usize).min(MAX_OFFSET + 8);
    if ctx.data() + want > ctx.data_end() {
        let _ = ctx.pull_data(want as u32);
    }
}

/// Where a `T` at `off` sits in the frame `[data, data_end)`, if wholly there.
#[inline(always)]
fn in_frame<T>(data: usize, data_end: usize, off: usize) -> Option<*mut T> {
    // Truncated to 16 bits first (no offset comes near): an offset read
    // back from map memory (IPv6 keeps its parsed packets there) is an
    // unknown 64-bit number, whose minimum 5.10's verifier doesn't learn
    // from the unsigned check below; a 16-bit one has both bounds.
    let off = usize::from(off as u16);
    if off > MAX_OFFSET {
        return None;
    }
    let start = data + off;
    if start + size_of::<T>() > data_end {
        return None;
    }
    Some(start as *mut T)
}

/// One's-complement incremental update of a checksum field (RFC 1624 eqn. 3).
#[inline(always)]
fn csum_update(csum: u16, old: u32, new: u32, size: u64) -> u16 {
    let mut sum = u32::from(!csum);
    if size == 4 {
        sum += !(old >> 16) & 0xffff;
        sum += !old & 0xffff;
        sum += new >> 16;
        sum += new & 0xffff;
    } else {
        sum += !old & 0xffff;
        sum += new & 0xffff;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

impl Packet for XdpContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        unsafe { (*self.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn as_raw(&self) -> *mut c_void {
        EbpfContext::as_ptr(self)
    }
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, i64> {
        let at = in_frame::<T>(self.data(), self.data_end(), off).ok_or(-1i64)?;
        // SAFETY: in_frame checked the bounds.
        Ok(unsafe { ptr::read_unaligned(at) })
    }
    #[inline(always)]
    fn store<T: Copy>(&mut self, off: usize, v: &T) -> Result<(), i64> {
        let at = in_frame::<T>(self.data(), self.data_end(), off).ok_or(-1i64)?;
        // SAFETY: in_frame checked the bounds.
        unsafe { ptr::write_unaligned(at, *v) };
        Ok(())
    }
    #[inline(always)]
    fn l4_csum_replace(&mut self, off: usize, old: u32, new: u32, flags: u64) -> Result<(), i64> {
        let size = flags & 0xf;
        let (old, new) = wire_values(old, new, size);
        let csum = u16::from_be(self.load::<u16>(off)?);
        let mangled_0 = flags & u64::from(BPF_F_MARK_MANGLED_0) != 0;
        if mangled_0 && csum == 0 {
            return Ok(());
        }
        let mut updated = csum_update(csum, old, new, size);
        if mangled_0 && updated == 0 {
            updated = 0xffff;
        }
        self.store(off, &updated.to_be())
    }
}

/// Values as the kernel helpers take them (wire bytes read as native ints)
/// turned into big-endian numbers.
#[inline(always)]
fn wire_values(old: u32, new: u32, size: u64) -> (u32, u32) {
    if size == 4 {
        (u32::from_be(old), u32::from_be(new))
    } else {
        (
            u32::from(u16::from_be(old as u16)),
            u32::from(u16::from_be(new as u16)),
        )
    }
}
