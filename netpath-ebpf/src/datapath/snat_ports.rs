//! Which SNAT ports are taken toward each destination, and each container's
//! share of them.
//!
//! A new SNAT flow tries a few random ports first (unpredictable ports, RFC
//! 6056); when they are all taken, the destination's pool names the lowest
//! port not taken, which exists while any port is free. nf_nat and Cilium
//! stop after a bounded number of random tries, and so fail by chance on a
//! nearly full range.
//!
//! The pool is a hint; the claim of the reply tuple in `CT_REPLY` decides.
//! Bits are set here when a port is claimed (a plain read-modify-write:
//! racing CPUs may lose a bit, which only costs one failed claim that sets
//! it again), and the agent rewrites every pool from the conntrack table on
//! each GC pass, which is also when the ports of flows gone are cleared.
//!
//! A container's share is counted in `SNAT_SHARES`: up here when it opens an
//! SNAT flow or reopens a finished TCP one, down when a TCP flow finishes,
//! and recounted by the agent's GC, which is what brings UDP and ICMP flows
//! down when they expire.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::BPF_NOEXIST;
use netpath_common::{
    Config, SNAT_POOL_WORDS, SnatDestination, SnatPortPool, SnatShareKey, nat_kind,
};

use super::{
    family::Family,
    maps::{EMPTY_SNAT_POOL, forget_bounds},
};

/// Words of `SnatPortPool::full`.
const SUMMARY_WORDS: usize = SNAT_POOL_WORDS / 64;

/// The pool of `dest`, made empty if it has none yet. None when the map is
/// full: the random probes alone then.
#[inline(never)]
pub fn pool<F: Family>(dest: &SnatDestination<F::Addr>) -> Option<*mut SnatPortPool> {
    if let Some(pool) = F::snat_ports().get_ptr_mut(dest) {
        return Some(pool);
    }
    let empty = EMPTY_SNAT_POOL.get(0)?;
    // A racing CPU may make it first: either way there is one now.
    let _ = F::snat_ports().insert(dest, empty, u64::from(BPF_NOEXIST));
    F::snat_ports().get_ptr_mut(dest)
}

/// [`lowest_free`]: a summary bit was stale and is now set, look again.
pub const SEARCH_AGAIN: u32 = u32::MAX;
/// [`lowest_free`]: no port in the range is free.
pub const SEARCH_EXHAUSTED: u32 = u32::MAX - 1;

/// The lowest port offset below `span` that `pool` marks free, or
/// [`SEARCH_AGAIN`] or [`SEARCH_EXHAUSTED`].
#[inline(never)]
pub fn lowest_free(pool: &mut SnatPortPool, span: u32) -> u32 {
    for s in 0..SUMMARY_WORDS {
        let open_words = !pool.full[s];
        if open_words == 0 {
            continue;
        }
        let word = s * 64 + lowest_bit(open_words) as usize;
        let free = !pool.used[word % SNAT_POOL_WORDS];
        if free == 0 {
            pool.full[s] |= 1 << (word % 64);
            return SEARCH_AGAIN;
        }
        // Ports past the range are never claimed, so the first clear bit
        // past it means every port in it is taken.
        let offset = word as u32 * 64 + lowest_bit(free);
        return if offset < span {
            forget_bounds(offset)
        } else {
            SEARCH_EXHAUSTED
        };
    }
    SEARCH_EXHAUSTED
}

/// The index of the lowest set bit of `x` (not 0). Without branches: BPF
/// has no count-trailing-zeros instruction, and a binary search would give
/// the verifier 64 paths to walk per call. The bits below the lowest set
/// one, counted (popcount is shifts and adds).
#[inline(always)]
fn lowest_bit(x: u64) -> u32 {
    ((x & x.wrapping_neg()).wrapping_sub(1)).count_ones()
}

/// Whether container `source` holds its whole share of the ports toward
/// `dest` already. Not inlined, as the other share functions: the callers'
/// frames are near the stack limit, and the keys live here instead (built
/// once, in place: an IPv6 key is 56 bytes).
#[inline(never)]
pub fn share_full<F: Family>(
    cfg: &Config,
    source: F::Addr,
    dest: &SnatDestination<F::Addr>,
) -> bool {
    if cfg.snat_ports_per_container == 0 {
        return false;
    }
    let key = SnatShareKey {
        container: source,
        destination: *dest,
    };
    #[allow(
        clippy::needless_borrows_for_generic_args,
        reason = "the key where it is, not a second copy on the stack"
    )]
    let count = F::snat_shares().get_ptr(&key);
    count.is_some_and(|count| {
        // SAFETY: a live map value.
        let count = unsafe { *count };
        // A count past 2^31 is one taken down twice by racing CPUs (a flow
        // finishing in both directions at once): 0 until the agent's
        // recount.
        count >= cfg.snat_ports_per_container && count < 1 << 31
    })
}

/// Counts a flow of `source` toward `dest` into (`delta` 1) or out of
/// (`delta` -1) its share.
#[inline(never)]
pub fn share_add<F: Family>(
    cfg: &Config,
    source: F::Addr,
    dest: &SnatDestination<F::Addr>,
    delta: i32,
) {
    if cfg.snat_ports_per_container == 0 {
        return;
    }
    let key = SnatShareKey {
        container: source,
        destination: *dest,
    };
    add::<F>(&key, delta);
}

/// Adds `delta` to the share `key` counts (only where a limit applies).
#[inline(always)]
pub fn add<F: Family>(key: &SnatShareKey<F::Addr>, delta: i32) {
    match F::snat_shares().get_ptr_mut(key) {
        // SAFETY: a live map value, only changed by atomic adds here and
        // whole writes by the agent.
        Some(count) => unsafe {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(count, delta as u32);
        },
        None if delta > 0 => {
            let _ = F::snat_shares().insert(key, 1u32, u64::from(BPF_NOEXIST));
        }
        None => {}
    }
}

/// Whether flows of this kind hold an SNAT port.
#[inline(always)]
pub fn holds_port(kind: u8) -> bool {
    kind == nat_kind::MASQUERADE || kind == nat_kind::HAIRPIN
}
