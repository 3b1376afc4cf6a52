//! Per-source and per-container flow limits: one address must not fill the
//! conntrack table. The datapath counts each flow it opens against the
//! flow's original source (a container, for what containers open; the
//! client, for flows into published ports); the agent recounts the table on
//! every GC pass and writes the true numbers back, so between passes a count
//! can only be too high (never let too much in). nf_conntrack has no such
//! limit of its own; this is what `connlimit` rules give a Docker host.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::BPF_NOEXIST;
use netpath_common::{Config, stat};

use super::{conntrack, family::Family, parse::Packet};

/// Who opens a flow: the limit that applies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// A container (masquerade, hairpin).
    Container,
    /// An outside client of a published port.
    Outside,
}

/// Counts a new flow from `pkt`'s source, or `Err(reason)` when that source
/// already holds its limit (0: no limit).
#[inline(always)]
pub fn admit<F: Family>(cfg: &Config, pkt: &Packet<F::Addr>, opener: Opener) -> Result<(), u32> {
    // What can't open a flow is refused by conntrack, uncounted here.
    if !conntrack::opens_flow::<F>(pkt) {
        return Ok(());
    }
    let source = pkt.key.saddr;
    let (limit, reason) = if opener == Opener::Container {
        (cfg.max_flows_per_container, stat::DROP_CONTAINER_LIMIT)
    } else {
        (cfg.max_flows_per_source, stat::DROP_SOURCE_LIMIT)
    };
    if limit == 0 {
        return Ok(());
    }
    match F::flow_counts().get_ptr_mut(source) {
        // SAFETY: a live map value, only ever changed by atomic adds here
        // and whole writes by the agent.
        Some(count) => unsafe {
            if *count >= limit {
                return Err(reason);
            }
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(count, 1);
        },
        None => {
            // A racing first flow of the same source may win the insert;
            // one uncounted flow until the agent's next recount.
            let _ = F::flow_counts().insert(source, 1u32, u64::from(BPF_NOEXIST));
        }
    }
    Ok(())
}
