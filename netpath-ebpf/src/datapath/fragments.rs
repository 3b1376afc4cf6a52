//! Fragmented datagrams. Only the first fragment carries the L4 header, so
//! it records its ports under the datagram's identity (addresses, protocol,
//! IP id) and the later fragments take them from there, to be looked up and
//! translated as the same flow (Cilium's IPv4 fragment map). A sender's
//! fragments leave it in order; a later fragment that arrives before its
//! first can't be matched and is dropped, as Cilium does.
use super::{
    maps::{FRAGMENTS, FragmentKey, FragmentPorts},
    parse::{L4, Packet},
};

#[inline(always)]
fn key_of(pkt: &Packet<u32>) -> FragmentKey {
    FragmentKey {
        saddr: pkt.key.saddr,
        daddr: pkt.key.daddr,
        id: pkt.ip_id,
        proto: pkt.key.proto,
        _pad: 0,
    }
}

/// Records a first fragment's ports (errors are never fragmented in
/// practice, and not followed).
#[inline(always)]
pub fn record(pkt: &Packet<u32>) {
    if !pkt.first_fragment || pkt.l4_kind == L4::IcmpError {
        return;
    }
    let ports = FragmentPorts {
        sport: pkt.key.sport,
        dport: pkt.key.dport,
    };
    // LRU: a full map forgets the oldest datagram, not this one.
    let _ = FRAGMENTS.insert(key_of(pkt), ports, 0);
}

/// Fills in a later fragment's ports from its first fragment. `false`: the
/// first was never seen.
#[inline(always)]
pub fn resolve(pkt: &mut Packet<u32>) -> bool {
    let Some(ports) = (unsafe { FRAGMENTS.get(key_of(pkt)) }) else {
        return false;
    };
    pkt.key.sport = ports.sport;
    pkt.key.dport = ports.dport;
    true
}
