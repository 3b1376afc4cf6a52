//! Connection tracking in `CONNTRACK` (original tuple → flow) and `CT_REPLY`
//! (reply tuple → original tuple). Both directions of a flow reach us on
//! different CPUs, so the shared counters use atomic adds; the state byte is
//! written plainly (a lost update only delays a transition by one packet).
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use netpath_common::{
    Addr, Config, DIR_ORIGINAL, DIR_REPLY, EVENT_CLOSED, EVENT_OPENED, FLOW_FIN_ORIGINAL,
    FLOW_FIN_REPLY, FLOW_REPLY_SEQ_KNOWN, FLOW_SEEN_REPLY, FlowEntry, FlowEvent, FlowKey,
    IPPROTO_TCP, SnatDestination, SnatShareKey, stat, tcp_state,
};

use super::{
    family::{Family, V4, V6},
    maps::{CT_RECENT_SLOTS, EVENTS, config, count, now_ns, scratch},
    parse::{L4, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    snat_ports,
};

/// A tracked flow as a packet found it.
pub struct Flow<A: Addr = u32> {
    pub entry: *mut FlowEntry<A>,
    /// The flow's original tuple (the `CONNTRACK` key): the packet's own,
    /// or the `CT_REPLY` value that led to the flow. A pointer, not a copy:
    /// an IPv6 tuple is 40 bytes of the programs' 512-byte stack.
    orig: *const FlowKey<A>,
    /// Which direction this packet travels.
    pub dir: usize,
}

impl<A: Addr> Flow<A> {
    #[inline(always)]
    pub fn orig(&self) -> &FlowKey<A> {
        // SAFETY: points to the packet's tuple or into a live map value,
        // both there until the program ends.
        unsafe { &*self.orig }
    }

    /// The tuple this packet must carry once translated: the reverse of the
    /// other direction's tuple.
    #[inline(always)]
    pub fn target(&self) -> FlowKey<A> {
        if self.dir == DIR_ORIGINAL {
            // SAFETY: entry points into a live map value.
            unsafe { (*self.entry).reply.reversed() }
        } else {
            self.orig().reversed()
        }
    }
}

/// Which direction a packet most likely travels: where [`lookup`] looks
/// first. A reply found on the first try costs two lookups (`CT_REPLY`,
/// then the flow), not three; a wrong guess costs one more.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Likely {
    Original,
    Reply,
}

impl Likely {
    /// What a packet from a container most likely is: from one of its
    /// ephemeral ports (which are the SNAT range) the start of a flow it
    /// opened, else a server's answer in a flow to a published port.
    #[inline(always)]
    pub fn from_container<A: Addr>(cfg: &Config, pkt: &Packet<A>) -> Self {
        if in_snat_range(cfg, pkt.key.sport) {
            Likely::Original
        } else {
            Likely::Reply
        }
    }

    /// What a packet from the uplink most likely is: to an SNAT port of the
    /// host's address, the answer to a masqueraded flow; else a client's
    /// packet to a published port.
    #[inline(always)]
    pub fn from_uplink<A: Addr>(cfg: &Config, pkt: &Packet<A>) -> Self {
        if pkt.key.daddr == A::host_of(cfg) && in_snat_range(cfg, pkt.key.dport) {
            Likely::Reply
        } else {
            Likely::Original
        }
    }
}

/// Whether `port` (wire order) is in the SNAT range.
#[inline(always)]
fn in_snat_range(cfg: &Config, port: u16) -> bool {
    let port = u16::from_be(port);
    port >= cfg.snat_port_min && port <= cfg.snat_port_max
}

/// Finds the flow a packet belongs to, in either direction, looking where
/// it `likely` is first.
#[inline(always)]
pub fn lookup<F: Family>(key: &FlowKey<F::Addr>, likely: Likely) -> Option<Flow<F::Addr>> {
    if likely == Likely::Reply {
        return lookup_reply::<F>(key).or_else(|| lookup_original::<F>(key));
    }
    lookup_original::<F>(key).or_else(|| lookup_reply::<F>(key))
}

/// The flow whose original tuple is `key`.
#[inline(always)]
fn lookup_original<F: Family>(key: &FlowKey<F::Addr>) -> Option<Flow<F::Addr>> {
    let entry = F::conntrack().get_ptr_mut(key)?;
    Some(Flow {
        entry,
        orig: key,
        dir: DIR_ORIGINAL,
    })
}

/// The flow whose reply tuple is `key`.
#[inline(always)]
fn lookup_reply<F: Family>(key: &FlowKey<F::Addr>) -> Option<Flow<F::Addr>> {
    let orig = F::ct_reply().get_ptr(key)?;
    // SAFETY: a live map value.
    #[allow(
        clippy::needless_borrows_for_generic_args,
        reason = "a pointer into the map value, not a copy on the stack"
    )]
    let entry = F::conntrack().get_ptr_mut(unsafe { &*orig });
    match entry {
        Some(entry) => Some(Flow {
            entry,
            orig,
            dir: DIR_REPLY,
        }),
        None => {
            // A reply key whose flow is gone (GC removed it between our two
            // lookups, or a creator lost a race): drop the dangling half.
            let _ = F::ct_reply().remove(key);
            None
        }
    }
}

const EEXIST: i32 = 17;
/// What a hash map insert fails with when the map is full.
const E2BIG: i32 = 7;

pub enum CreateError {
    /// The reply tuple is taken: try another NAT port.
    ReplyTaken,
    /// The table is full: [`early_drop`] may make room for one more try.
    Full,
    /// No flow: the packet is dropped, counted under the reason.
    Refused(u32),
}

/// Whether a packet in no flow may open one: a TCP SYN (without ACK), an
/// echo request, any UDP datagram. Anything else opening a flow would let one
/// packet per forged tuple hold an entry (nf_conntrack: "invalid").
#[inline(always)]
pub fn opens_flow<F: Family>(pkt: &Packet<F::Addr>) -> bool {
    match pkt.l4_kind {
        L4::Tcp => pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN,
        // The family's own echo request only: one more value to compare
        // here is a branch more for the verifier at each of its callers.
        L4::IcmpEcho => pkt.icmp_type == F::ECHO_REQUEST,
        L4::Udp => true,
        L4::IcmpError | L4::Fragment => false,
    }
}

/// Creates a flow, claiming its reply tuple first (which is how NAT ports are
/// reserved). If another CPU created the same flow meanwhile, returns that one.
#[inline(always)]
pub fn create<F: Family>(
    orig: &FlowKey<F::Addr>,
    reply: &FlowKey<F::Addr>,
    nat_kind: u8,
    pkt: &Packet<F::Addr>,
) -> Result<Flow<F::Addr>, CreateError> {
    if !opens_flow::<F>(pkt) {
        return Err(CreateError::Refused(stat::DROP_NOT_INITIAL));
    }
    claim_reply::<F>(reply, orig)?;
    let now = now_ns();
    let Some(scratch) = scratch() else {
        let _ = F::ct_reply().remove(reply);
        return Err(CreateError::Refused(stat::DROP_CT_FULL));
    };
    let entry = F::scratch_entry(scratch);
    *entry = FlowEntry {
        reply: *reply,
        created_ns: now,
        last_seen_ns: now,
        nat_kind,
        tcp_state: if orig.proto == IPPROTO_TCP {
            tcp_state::SYN_SENT
        } else {
            tcp_state::NONE
        },
        seq_end: [pkt.tcp_seq.wrapping_add(pkt.tcp_seq_len), 0],
        ..FlowEntry::default()
    };
    let entry: &FlowEntry<F::Addr> = entry;
    if F::conntrack()
        .insert(orig, entry, u64::from(BPF_NOEXIST))
        .is_err()
    {
        // Lost a race for the same flow, or the table is full: give the reply
        // tuple back, then use whoever won.
        let _ = F::ct_reply().remove(reply);
        return match F::conntrack().get_ptr_mut(orig) {
            Some(entry) => Ok(Flow {
                entry,
                orig,
                dir: DIR_ORIGINAL,
            }),
            None => Err(CreateError::Refused(stat::DROP_CT_FULL)),
        };
    }
    count(stat::FLOW_CREATED);
    remember_candidate::<F>(orig);
    emit(EVENT_OPENED, orig, entry);
    match F::conntrack().get_ptr_mut(orig) {
        Some(entry) => Ok(Flow {
            entry,
            orig,
            dir: DIR_ORIGINAL,
        }),
        // Removed by the GC or an early drop in the instant between.
        None => Err(CreateError::Refused(stat::DROP_CT_FULL)),
    }
}

/// Claims `reply` for `orig` in `CT_REPLY`. The two maps hold one entry per
/// flow each, so this is where a full table shows.
#[inline(always)]
fn claim_reply<F: Family>(
    reply: &FlowKey<F::Addr>,
    orig: &FlowKey<F::Addr>,
) -> Result<(), CreateError> {
    match F::ct_reply().insert(reply, orig, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        Err(e) if e == -EEXIST => Err(CreateError::ReplyTaken),
        Err(e) if e == -E2BIG => Err(CreateError::Full),
        Err(_) => Err(CreateError::Refused(stat::DROP_CT_FULL)),
    }
}

/// A flow that the table may give up for a new one when full: it never saw
/// a reply, its TCP handshake never completed, or it is closing (what
/// nf_conntrack calls not assured). Established flows are never dropped.
#[inline(always)]
fn unassured<A: Addr>(orig: &FlowKey<A>, entry: &FlowEntry<A>) -> bool {
    if entry.flags & FLOW_SEEN_REPLY == 0 {
        return true;
    }
    orig.proto == IPPROTO_TCP && entry.tcp_state != tcp_state::ESTABLISHED
}

/// Notes a flow as a candidate for [`early_drop`]: a new flow (most become
/// assured within a round trip and are skipped when probed) and a TCP
/// connection that just finished (what nf_conntrack's early drop also
/// takes: a table full of closed connections must give way). The cursor is
/// advanced without an atomic (5.10 has no fetching one): racing CPUs may
/// write the same slot, which only loses a hint, and a torn key finds no
/// flow.
#[inline(always)]
fn remember_candidate<F: Family>(orig: &FlowKey<F::Addr>) {
    let Some(next) = F::ct_recent_next().get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a live array slot.
    let slot = unsafe {
        let slot = *next;
        *next = slot.wrapping_add(1);
        slot
    };
    if let Some(candidate) = F::ct_recent().get_ptr_mut(slot % CT_RECENT_SLOTS) {
        // SAFETY: a live array slot.
        unsafe { *candidate = *orig };
    }
}

/// How many of the most recent candidates [`early_drop`] looks at first.
const EARLY_DROP_NEWEST: u32 = 4;
/// How many candidates in all: the rest at random among those written.
const EARLY_DROP_PROBES: u32 = 8;

/// nf_conntrack's early_drop: removes one unassured or closing flow (both
/// its keys) so that a new flow fits into a full table. The newest
/// candidates first: a flood of forged first packets is what fills the ring
/// of candidates, and its unanswered or half-open flows are what goes. Then
/// some at random: a few established connections opened last must not
/// shield a table full of closed ones. Established flows stay. Returns
/// whether a flow was removed. Callers try it at most once per packet.
#[inline(always)]
pub fn early_drop<F: Family>() -> bool {
    F::early_drop()
}

/// [`early_drop`] for IPv4 as a global BPF function: the verifier walks it
/// once, on its own, not once for every way the new-flow program reaches
/// it. Before 6.3 the inlined probe loop was most of the new-flow programs'
/// verification: under TCG on 6.1 they took 6.2 s each, 2.6 s (IPv4) and
/// 1.5 s (IPv6) with early drop global.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_early_drop4() -> u32 {
    u32::from(probe_for_early_drop::<V4>())
}

/// [`netpath_early_drop4`] for IPv6.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_early_drop6() -> u32 {
    u32::from(probe_for_early_drop::<V6>())
}

#[inline(always)]
fn probe_for_early_drop<F: Family>() -> bool {
    let newest = F::ct_recent_next().get(0).copied().unwrap_or(0);
    let written = newest.min(CT_RECENT_SLOTS);
    for i in 0..EARLY_DROP_PROBES {
        let back = if i < EARLY_DROP_NEWEST {
            i + 1
        } else {
            // SAFETY: a helper without arguments. (`checked_rem`: no panic
            // path for the verifier to refuse.)
            let random = unsafe { bpf_get_prandom_u32() };
            1 + random.checked_rem(written).unwrap_or(0)
        };
        if drop_if_unassured::<F>(newest.wrapping_sub(back) % CT_RECENT_SLOTS) {
            count(stat::CT_EARLY_DROP);
            return true;
        }
    }
    false
}

/// One probe of [`early_drop`]: drops the flow in `CT_RECENT[slot]` if it is
/// still there and unassured. Not inlined: its branches end in its own
/// frame, so the verifier sees each probe return only a bool, and the probes
/// add up instead of multiplying.
#[inline(never)]
fn drop_if_unassured<F: Family>(slot: u32) -> bool {
    // Keys are passed as pointers into the map values, not copied: this
    // frame adds to the caller's, and old kernels cap the sum at 512 bytes.
    let Some(orig) = F::ct_recent().get(slot) else {
        return false;
    };
    let Some(entry) = F::conntrack().get_ptr(orig) else {
        return false;
    };
    // SAFETY: entry points into a live map value.
    let entry = unsafe { &*entry };
    if !unassured(orig, entry) {
        return false;
    }
    // The reply key first: it lives in the entry, gone once the entry is.
    #[allow(
        clippy::needless_borrows_for_generic_args,
        reason = "a pointer into the map value, not a copy on the stack"
    )]
    let _ = F::ct_reply().remove(&entry.reply);
    F::conntrack().remove(orig).is_ok()
}

/// Whether a new flow may claim the reply tuple `reply`: no flow holds it,
/// or the finished connection that held it was just given up (see
/// [`reclaim_finished`]). A hint: the claim in [`create`] decides. Not
/// inlined: called from a loop, its branches end here.
#[inline(never)]
pub fn reply_claimable<F: Family>(reply: &FlowKey<F::Addr>, pkt: &Packet<F::Addr>) -> bool {
    F::ct_reply().get_ptr(reply).is_none() || reclaim_finished::<F>(reply, pkt)
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
fn reclaim_finished<F: Family>(reply: &FlowKey<F::Addr>, pkt: &Packet<F::Addr>) -> bool {
    if pkt.key.proto != IPPROTO_TCP || pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return false;
    }
    let Some(orig) = F::ct_reply().get_ptr(reply) else {
        return false;
    };
    let orig = unsafe { *orig };
    let reclaimable = match F::conntrack().get_ptr(orig) {
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
    let _ = F::conntrack().remove(orig);
    let _ = F::ct_reply().remove(reply);
    true
}

/// Reports a flow opening or closing to `flows --watch`. Written in place in
/// the ring buffer: a record built on the stack would crowd it.
#[inline(always)]
fn emit<A: Addr>(kind: u8, orig: &FlowKey<A>, entry: &FlowEntry<A>) {
    let Some(mut slot) = EVENTS.reserve_untyped::<FlowEvent<A>>(0) else {
        return;
    };
    let event: *mut FlowEvent<A> = slot.as_mut_ptr();
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

/// The largest window we believe a TCP receiver offers (we don't parse
/// window scaling): segments further than this from what a direction has
/// sent are not plausible, and an RST or FIN there is dropped. A blind
/// attacker lands inside with odds of 1 in 128 and even then changes
/// nothing (see [`judge_tcp`]).
const MAX_WINDOW: u32 = 1 << 24;

/// Whether `seq` lies in `[from, from + MAX_WINDOW]`, in sequence space.
#[inline(always)]
fn seq_within(seq: u32, from: u32) -> bool {
    seq.wrapping_sub(from) <= MAX_WINDOW
}

/// Whether `seq` lies within `MAX_WINDOW` of `end`, either way.
#[inline(always)]
fn seq_near(seq: u32, end: u32) -> bool {
    seq.wrapping_sub(end.wrapping_sub(MAX_WINDOW)) <= 2 * MAX_WINDOW
}

/// What window tracking makes of a TCP segment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Segment {
    /// Plausible: it may move the state and `seq_end`.
    InWindow,
    /// Let through to the endpoint, which judges it itself (an RST near but
    /// not exactly at the next sequence number gets a challenge ACK, RFC
    /// 5961; a stray SYN gets an ACK), but it changes nothing here.
    Near,
}

/// nf_conntrack's `tcp_in_window`, reduced to what keeps a flow from being
/// closed or bent by someone who can't see it: a segment moves the state
/// only if it acknowledges what the other direction sent and lies near
/// where this direction's data ends; an RST only if it is exactly at the
/// next sequence number (RFC 5961); a SYN only where the handshake expects
/// one. RST and FIN outside the window are dropped.
#[inline(always)]
fn judge_tcp<A: Addr>(entry: &FlowEntry<A>, dir: usize, pkt: &Packet<A>) -> Result<Segment, u32> {
    let flags = pkt.tcp_flags;
    let state = entry.tcp_state;
    let reply_known = entry.flags & FLOW_REPLY_SEQ_KNOWN != 0;
    if flags & TCP_SYN != 0 {
        let expected = if dir == DIR_ORIGINAL {
            // A retransmitted SYN, or one reopening a finished tuple.
            flags & TCP_ACK == 0
                && matches!(
                    state,
                    tcp_state::SYN_SENT | tcp_state::TIME_WAIT | tcp_state::CLOSED
                )
        } else {
            // A SYN-ACK acknowledging the SYN.
            flags & TCP_ACK != 0
                && matches!(state, tcp_state::SYN_SENT | tcp_state::SYN_RECV)
                && pkt.tcp_ack == entry.seq_end[DIR_ORIGINAL]
        };
        return Ok(if expected {
            Segment::InWindow
        } else {
            Segment::Near
        });
    }
    if dir == DIR_REPLY && !reply_known {
        // Before the SYN-ACK the reply side's sequence is unknown: only an
        // RST acknowledging the SYN (a refused connection) counts.
        return if flags & TCP_RST == 0 {
            Ok(Segment::Near)
        } else if flags & TCP_ACK != 0 && pkt.tcp_ack == entry.seq_end[DIR_ORIGINAL] {
            Ok(Segment::InWindow)
        } else {
            Err(stat::DROP_TCP_OUT_OF_WINDOW)
        };
    }
    let end = entry.seq_end[dir & 1];
    let near = seq_near(pkt.tcp_seq, end);
    if flags & TCP_RST != 0 {
        return if pkt.tcp_seq == end {
            Ok(Segment::InWindow)
        } else if near {
            Ok(Segment::Near)
        } else {
            Err(stat::DROP_TCP_OUT_OF_WINDOW)
        };
    }
    let other = dir ^ 1;
    let ack_ok = flags & TCP_ACK == 0
        || (other == DIR_REPLY && !reply_known)
        || seq_near(pkt.tcp_ack, entry.seq_end[other & 1]);
    if near && ack_ok {
        Ok(Segment::InWindow)
    } else if flags & TCP_FIN != 0 {
        Err(stat::DROP_TCP_OUT_OF_WINDOW)
    } else {
        Ok(Segment::Near)
    }
}

/// Accounts a packet to its flow (at `now`, from `now_ns`) and advances
/// the TCP state. `Err(reason)`: the packet is to be dropped (an RST or FIN
/// outside the window).
#[inline(always)]
pub fn update<F: Family>(flow: &Flow<F::Addr>, pkt: &Packet<F::Addr>, now: u64) -> Result<(), u32> {
    let entry = flow.entry;
    // Masked: an index the verifier can see is 0 or 1 needs no bounds check
    // (whose panic path it would reject).
    let dir = flow.dir & 1;
    // SAFETY: entry points into a live map value; the counters are only ever
    // changed with atomic adds.
    unsafe {
        if flow.orig().proto == IPPROTO_TCP {
            let segment = judge_tcp(&*entry, dir, pkt)?;
            if segment == Segment::InWindow {
                advance_tcp::<F>(flow, pkt);
            }
        }
        (*entry).last_seen_ns = now;
        // Result unused: compiles to BPF's atomic add, which 5.10 has.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).packets[dir], 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*entry).bytes[dir],
            u64::from(pkt.len),
        );
        if dir == DIR_REPLY && (*entry).flags & FLOW_SEEN_REPLY == 0 {
            (*entry).flags |= FLOW_SEEN_REPLY;
        }
    }
    Ok(())
}

/// Moves a TCP flow on by an in-window segment: its state, and where this
/// direction's sequence space ends.
#[inline(always)]
unsafe fn advance_tcp<F: Family>(flow: &Flow<F::Addr>, pkt: &Packet<F::Addr>) {
    let entry = flow.entry;
    let dir = flow.dir & 1;
    // SAFETY: the caller's: entry points into a live map value.
    unsafe {
        let end = pkt.tcp_seq.wrapping_add(pkt.tcp_seq_len);
        let flags = pkt.tcp_flags;
        if flags & TCP_SYN != 0 {
            // A direction's first sequence number (a SYN-ACK, or a SYN
            // reopening a finished tuple) sets where it starts.
            (*entry).seq_end[dir] = end;
            if dir == DIR_REPLY {
                (*entry).flags |= FLOW_REPLY_SEQ_KNOWN;
            }
        } else if seq_within(end, (*entry).seq_end[dir]) {
            (*entry).seq_end[dir] = end;
        }
        let old = (*entry).tcp_state;
        let new = next_tcp_state(&mut *entry, flow.dir, flags);
        if new != old {
            (*entry).tcp_state = new;
            match (finished(old), finished(new)) {
                (false, true) => {
                    emit(EVENT_CLOSED, flow.orig(), &*entry);
                    count_snat_share::<F>(flow, -1);
                    remember_candidate::<F>(flow.orig());
                }
                (true, false) => count_snat_share::<F>(flow, 1),
                _ => {}
            }
        }
    }
}

#[inline(always)]
fn finished(state: u8) -> bool {
    matches!(state, tcp_state::TIME_WAIT | tcp_state::CLOSED)
}

/// A TCP flow finished (`delta` -1) or was reopened (1): its SNAT port
/// leaves or rejoins its container's share. Not inlined: one copy for every
/// transition, and its key off the caller's stack.
#[inline(never)]
fn count_snat_share<F: Family>(flow: &Flow<F::Addr>, delta: i32) {
    // SAFETY: entry points into a live map value.
    let entry = unsafe { &*flow.entry };
    if !snat_ports::holds_port(entry.nat_kind) {
        return;
    }
    let Some(cfg) = config() else {
        return;
    };
    if cfg.snat_ports_per_container == 0 {
        return;
    }
    // Built here, once, and counted inline: a call to `share_add` would
    // stack a third frame on an IPv6 program's.
    let key = SnatShareKey {
        container: flow.orig().saddr,
        destination: SnatDestination::of_reply(&entry.reply),
    };
    snat_ports::add::<F>(&key, delta);
}

#[inline(always)]
fn next_tcp_state<A: Addr>(entry: &mut FlowEntry<A>, dir: usize, flags: u8) -> u8 {
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
