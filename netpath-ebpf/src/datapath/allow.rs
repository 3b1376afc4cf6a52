//! Published-port allow-lists (`publish add --allow CIDR`): a restricted
//! port takes new flows from outside only from the sources its list admits.
//! The datapath runs before the host's firewall, so this is where such a
//! rule has to live. Only a flow's first packet is judged: a flow once
//! admitted goes on. Containers and the host reach published ports through
//! the hairpin and the socket hooks, which are not judged here (Docker's
//! `DOCKER-USER` rules, written for the external interface, don't judge
//! them either).
use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr,
};

use aya_ebpf::maps::lpm_trie::Key;
use netpath_common::{ALLOW_PORT_BITS, AllowKey, PortKey, PortTarget};

use super::maps::ALLOWED;

/// Whether a new flow from `saddr` may open to the published `port`. Ports
/// without a list (`PORT_RESTRICTED` clear) cost nothing more; restricted
/// ones one trie lookup, which also counts the rule that decided. A
/// restricted port whose rules are not (yet) written admits nobody.
#[inline(always)]
pub fn admits(port: &PortKey, target: &PortTarget, saddr: u32) -> bool {
    if !target.is_restricted() {
        return true;
    }
    restricted_admits(port, saddr)
}

/// The trie lookup of [`admits`]. Not inlined: the key is built in this
/// frame, which ends here, so the verifier sees paths through a restricted
/// and an open port meet again with the same stack and prunes them (inlined,
/// from_uplink took 35% more instructions to verify). Its frame (the key,
/// 20 bytes) adds to the caller's: from_uplink 328 + 32 of 512.
#[inline(never)]
fn restricted_admits(port: &PortKey, saddr: u32) -> bool {
    let key = Key::new(
        ALLOW_PORT_BITS + 32,
        AllowKey {
            port: *port,
            saddr,
            _pad: 0,
        },
    );
    let Some(rule) = ALLOWED.get(&key) else {
        return false;
    };
    // SAFETY: a live map value shared by all CPUs; only ever changed by
    // atomic adds here, and whole writes by userspace.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            ptr::from_ref(&rule.packets).cast_mut(),
            1,
        );
    }
    rule.allow != 0
}
