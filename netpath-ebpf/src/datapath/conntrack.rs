//! Connection tracking in `CONNTRACK` (original tuple → flow) and `CT_REPLY`
//! (reply tuple → original tuple). Both directions of a flow reach us on
//! different CPUs, so the shared counters use atomic adds; the state byte is
//! written plainly (a lost update only delays a transition by one packet).
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::BPF_NOEXIST;
use netpath_common::{
    DIR_ORIGINAL, DIR_REPLY, EVENT_CLOSED, EVENT_OPENED, FLOW_FIN_ORIGINAL, FLOW_FIN_REPLY,
    FLOW_SEEN_REPLY, FlowEntry, FlowEvent, FlowKey, IPPROTO_TCP, stat, tcp_state,
};

use super::{
    maps::{CONNTRACK, CT_REPLY, EVENTS, count, now_ns, scratch},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// A tracked flow as a packet found it.
pub struct Flow {
    pub entry: *mut FlowEntry,
    /// The flow's original tuple (the `CONNTRACK` key).
    pub orig: FlowKey,
    /// Which direction this packet travels.
    pub dir: usize,
}

impl Flow {
    /// The tuple this packet must carry once translated: the reverse of the
    /// other direction's tuple.
    #[inline(always)]
    pub fn target(&self) -> FlowKey {
        if self.dir == DIR_ORIGINAL {
            // SAFETY: entry points into a live map value.
            unsafe { (*self.entry).reply.reversed() }
        } else {
            self.orig.reversed()
        }
    }
}

/// Finds the flow a packet belongs to, in either direction.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<Flow> {
    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        return Some(Flow {
            entry,
            orig: *key,
            dir: DIR_ORIGINAL,
        });
    }
    let orig = unsafe { *CT_REPLY.get_ptr(key)? };
    match CONNTRACK.get_ptr_mut(orig) {
        Some(entry) => Some(Flow {
            entry,
            orig,
            dir: DIR_REPLY,
        }),
        None => {
            // A reply key whose flow is gone (GC removed it between our two
            // lookups, or a creator lost a race): drop the dangling half.
            let _ = CT_REPLY.remove(key);
            None
        }
    }
}

const EEXIST: i32 = 17;

pub enum CreateError {
    /// The reply tuple is taken: try another NAT port.
    ReplyTaken,
    Full,
}

/// Creates a flow, claiming its reply tuple first (which is how NAT ports are
/// reserved). If another CPU created the same flow meanwhile, returns that one.
#[inline(always)]
pub fn create(
    orig: &FlowKey,
    reply: &FlowKey,
    nat_kind: u8,
    pkt: &Packet,
) -> Result<Flow, CreateError> {
    match CT_REPLY.insert(reply, orig, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => return Err(CreateError::ReplyTaken),
        Err(_) => {
            count(stat::DROP_CT_FULL);
            return Err(CreateError::Full);
        }
    }
    let now = now_ns();
    let Some(scratch) = scratch() else {
        let _ = CT_REPLY.remove(reply);
        return Err(CreateError::Full);
    };
    let entry = &mut scratch.entry;
    *entry = FlowEntry {
        reply: *reply,
        created_ns: now,
        last_seen_ns: now,
        nat_kind,
        tcp_state: initial_tcp_state(orig.proto, pkt.tcp_flags),
        ..FlowEntry::default()
    };
    if CONNTRACK.insert(orig, &*entry, BPF_NOEXIST as u64).is_err() {
        // Lost a race for the same flow, or the table is full: give the reply
        // tuple back, then use whoever won.
        let _ = CT_REPLY.remove(reply);
        return match CONNTRACK.get_ptr_mut(orig) {
            Some(entry) => Ok(Flow {
                entry,
                orig: *orig,
                dir: DIR_ORIGINAL,
            }),
            None => {
                count(stat::DROP_CT_FULL);
                Err(CreateError::Full)
            }
        };
    }
    count(stat::FLOW_CREATED);
    emit(EVENT_OPENED, orig, entry);
    match CONNTRACK.get_ptr_mut(orig) {
        Some(entry) => Ok(Flow {
            entry,
            orig: *orig,
            dir: DIR_ORIGINAL,
        }),
        None => Err(CreateError::Full),
    }
}

/// How long a Linux peer keeps a closed connection's tuple in TIME_WAIT
/// (`TCP_TIMEWAIT_LEN`).
const PEER_TIME_WAIT_NS: u64 = 60 * 1_000_000_000;

/// A TCP SYN that needs a reply tuple held by another, finished connection
/// takes it over only once the peer cannot hold that tuple any more: the
/// holder was reset (no TIME_WAIT at either end), or has been idle for longer
/// than the peer's TIME_WAIT. Sooner, the peer would check the new SYN
/// against the old connection's timestamps, which came from another socket:
/// PAWS rejects it and the client retries a second later. (A container that
/// reuses its own tuple needs no takeover: it finds its flow by the original
/// key.) Returns whether the tuple was freed.
#[inline(always)]
pub fn reclaim_finished(reply: &FlowKey, pkt: &Packet) -> bool {
    if pkt.key.proto != IPPROTO_TCP || pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return false;
    }
    let Some(orig) = CT_REPLY.get_ptr(reply) else {
        return false;
    };
    let orig = unsafe { *orig };
    let reclaimable = match CONNTRACK.get_ptr(orig) {
        // SAFETY: entry points into a live map value.
        Some(entry) => unsafe {
            match (*entry).tcp_state {
                tcp_state::CLOSED => true,
                tcp_state::TIME_WAIT => {
                    now_ns().saturating_sub((*entry).last_seen_ns) > PEER_TIME_WAIT_NS
                }
                _ => false,
            }
        },
        // A dangling reply key: free as well.
        None => true,
    };
    if !reclaimable {
        return false;
    }
    let _ = CONNTRACK.remove(orig);
    let _ = CT_REPLY.remove(reply);
    true
}

#[inline(always)]
fn initial_tcp_state(proto: u8, flags: u8) -> u8 {
    if proto != IPPROTO_TCP {
        tcp_state::NONE
    } else if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
        tcp_state::SYN_SENT
    } else {
        // Picked up mid-stream (for example traffic the kernel path carried).
        tcp_state::ESTABLISHED
    }
}

/// Reports a flow opening or closing to `flows --watch`. Written in place in
/// the ring buffer: a record built on the stack would crowd it.
#[inline(always)]
fn emit(kind: u8, orig: &FlowKey, entry: &FlowEntry) {
    let Some(mut slot) = EVENTS.reserve(0) else {
        return;
    };
    let event: *mut FlowEvent = slot.as_mut_ptr();
    // SAFETY: a reserved record of FlowEvent's size, every field written
    // before it is submitted.
    unsafe {
        (*event).key = *orig;
        (*event).reply = entry.reply;
        (*event).ts_ns = entry.last_seen_ns;
        (*event).kind = kind;
        (*event).nat_kind = entry.nat_kind;
        (*event).tcp_state = entry.tcp_state;
        (*event)._pad = [0; 5];
    }
    slot.submit(0);
}

/// Accounts a packet to its flow (at `now`, from `now_ns`) and advances
/// the TCP state.
#[inline(always)]
pub fn update(flow: &Flow, pkt: &Packet, now: u64) {
    let entry = flow.entry;
    let dir = flow.dir;
    // SAFETY: entry points into a live map value; the counters are only ever
    // changed with atomic adds.
    unsafe {
        (*entry).last_seen_ns = now;
        // Result unused: compiles to BPF's atomic add, which 5.10 has.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).packets[dir], 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*entry).bytes[dir],
            pkt.len as u64,
        );
        if dir == DIR_REPLY && (*entry).flags & FLOW_SEEN_REPLY == 0 {
            (*entry).flags |= FLOW_SEEN_REPLY;
        }
        if flow.orig.proto == IPPROTO_TCP {
            let old = (*entry).tcp_state;
            let new = next_tcp_state(&mut *entry, dir, pkt.tcp_flags);
            if new != old {
                (*entry).tcp_state = new;
                if matches!(new, tcp_state::TIME_WAIT | tcp_state::CLOSED) {
                    emit(EVENT_CLOSED, &flow.orig, &*entry);
                }
            }
        }
    }
}

#[inline(always)]
fn next_tcp_state(entry: &mut FlowEntry, dir: usize, flags: u8) -> u8 {
    let state = entry.tcp_state;
    if flags & TCP_RST != 0 {
        return tcp_state::CLOSED;
    }
    if flags & TCP_SYN != 0 {
        if dir == DIR_ORIGINAL {
            // A new connection reusing the tuple of a finished one.
            if flags & TCP_ACK == 0 && matches!(state, tcp_state::TIME_WAIT | tcp_state::CLOSED) {
                entry.flags = 0;
                return tcp_state::SYN_SENT;
            }
            return state;
        }
        return if state == tcp_state::SYN_SENT {
            tcp_state::SYN_RECV
        } else {
            state
        };
    }
    if flags & TCP_FIN != 0 {
        entry.flags |= if dir == DIR_ORIGINAL {
            FLOW_FIN_ORIGINAL
        } else {
            FLOW_FIN_REPLY
        };
        return if entry.flags & (FLOW_FIN_ORIGINAL | FLOW_FIN_REPLY)
            == FLOW_FIN_ORIGINAL | FLOW_FIN_REPLY
        {
            tcp_state::TIME_WAIT
        } else {
            tcp_state::FIN_WAIT
        };
    }
    if flags & TCP_ACK != 0 && state == tcp_state::SYN_RECV && dir == DIR_ORIGINAL {
        return tcp_state::ESTABLISHED;
    }
    state
}
