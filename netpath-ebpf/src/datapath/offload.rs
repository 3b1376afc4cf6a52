//! Frames whose checksum is left to offload. A veth peer with TX
//! checksumming on hands over TCP segments as CHECKSUM_PARTIAL: the
//! checksum field holds only the pseudo-header's sum, for a NIC (or the
//! kernel) to finish. The skb says so, and TC programs keep it right; XDP
//! sees only bytes, and a redirect drops the skb's state, so the container
//! would get a segment with a checksum that is never finished. `xdp_uplink`
//! recognises such a frame by its handshake segments and falls back to TC.
use aya_ebpf::programs::XdpContext;
use netpath_common::{CONFIG_FLAG_XDP_FALLBACK, stat};

use super::{
    ctx::Packet as _,
    family::Family,
    maps::CONFIG,
    parse::{L4, Packet, TCP_SYN},
    verdict::Verdict,
};

/// The longest TCP header, in 16-bit words.
const TCP_HEADER_MAX_WORDS: usize = 30;

/// Whether `pkt` is a TCP SYN or SYN-ACK without payload whose checksum
/// is partial: the field holds the folded pseudo-header sum, and the whole
/// segment does not check out (a real checksum could equal that sum by
/// chance; then it checks out).
#[inline(always)]
pub fn has_partial_checksum<F: Family>(ctx: &XdpContext, pkt: &Packet<F::Addr>) -> bool {
    if pkt.l4_kind != L4::Tcp || pkt.tcp_flags & TCP_SYN == 0 || pkt.tcp_seq_len != 1 {
        return false;
    }
    let (Ok(offset_byte), Ok(check)) = (ctx.load::<u8>(pkt.l4 + 12), ctx.load::<u16>(pkt.l4 + 16))
    else {
        return false;
    };
    let header_len = usize::from(offset_byte >> 4) * 4;
    // Words as they sit in memory: a one's-complement sum is the same in
    // either byte order, as long as every word is taken alike.
    let pseudo = F::addr_sum(pkt.key.saddr)
        + F::addr_sum(pkt.key.daddr)
        + u32::from(u16::from(pkt.key.proto).to_be())
        + u32::from((header_len as u16).to_be());
    if u32::from(check) != fold(pseudo) {
        return false;
    }
    let mut sum = pseudo;
    for word in 0..TCP_HEADER_MAX_WORDS {
        if word * 2 >= header_len {
            break;
        }
        let Ok(w) = ctx.load::<u16>(pkt.l4 + word * 2) else {
            return false;
        };
        sum += u32::from(w);
    }
    fold(sum) != 0xffff
}

/// `sum` folded to 16 bits, one's complement.
#[inline(always)]
fn fold(mut sum: u32) -> u32 {
    sum = (sum & 0xffff) + (sum >> 16);
    (sum & 0xffff) + (sum >> 16)
}

/// Falls back to TC for good (until `up` writes the configuration again,
/// and the next such frame brings it back): this frame and every later one
/// goes up to `from_uplink`.
#[inline(always)]
pub fn fall_back() -> Verdict {
    if let Some(cfg) = CONFIG.get_ptr_mut(0) {
        // SAFETY: a live map value; a plain write, as userspace writes
        // the configuration only at `up`.
        unsafe { (*cfg).flags |= CONFIG_FLAG_XDP_FALLBACK };
    }
    Verdict::pass(stat::XDP_PASS_FALLBACK)
}
