//! Fills an instance's conntrack table from userspace with established
//! flows into a published port: what a scale measurement needs (the
//! agent's GC at 1M flows, a new connection's cost in a nearly full table)
//! without opening that many connections. The flows are fresh and
//! established, so no GC removes them while they stay idle for less than
//! the established timeout.
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData, MapError};
use netpath_common::{
    FLOW_SEEN_REPLY, FlowEntry, FlowKey, IPPROTO_TCP, host::ip_to_wire, names, nat_kind, tcp_state,
};

/// Flows per source address: distinct sources keep every one of them
/// below the per-source flow limit.
pub const FLOWS_PER_SOURCE: u32 = 1000;
/// The fill's clients: 100.64.0.0/10 (shared address space), one address
/// per [`FLOWS_PER_SOURCE`] flows; no test or bench client uses it.
const FIRST_SOURCE: u32 = 0x6440_0000;

/// Where the filled flows go: `host` is what the clients dialled, `container`
/// what it is published to.
#[derive(Clone, Copy, Debug)]
pub struct Published {
    pub host: (Ipv4Addr, u16),
    pub container: (Ipv4Addr, u16),
}

/// Writes established TCP flows number `flows` to `to` (both keys of each)
/// into the maps pinned in `pins` (an instance's pin directory), until the
/// table is full; returns how many it wrote. Distinct numbers are distinct
/// flows, so a second call can add to a first.
pub fn fill_published_flows(pins: &Path, flows: Range<u32>, to: Published) -> Result<u32> {
    let open = |name: &str| -> Result<Map> {
        let path = pins.join(name);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Map::HashMap(data))
    };
    let mut conntrack: HashMap<MapData, FlowKey, FlowEntry> =
        HashMap::try_from(open(names::CONNTRACK)?)?;
    let mut ct_reply: HashMap<MapData, FlowKey, FlowKey> =
        HashMap::try_from(open(names::CT_REPLY)?)?;
    let now = monotonic_ns();
    let mut written = 0;
    for i in flows {
        let client = (FIRST_SOURCE + i / FLOWS_PER_SOURCE).to_be();
        let client_port = (1024 + i % FLOWS_PER_SOURCE) as u16;
        let original = FlowKey {
            saddr: client,
            daddr: ip_to_wire(to.host.0),
            sport: client_port.to_be(),
            dport: to.host.1.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let reply = FlowKey {
            saddr: ip_to_wire(to.container.0),
            daddr: client,
            sport: to.container.1.to_be(),
            dport: client_port.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let entry = FlowEntry {
            reply,
            created_ns: now,
            last_seen_ns: now,
            nat_kind: nat_kind::DNAT,
            tcp_state: tcp_state::ESTABLISHED,
            flags: FLOW_SEEN_REPLY,
            ..FlowEntry::default()
        };
        // As the datapath does: the reply key first.
        if !inserted(ct_reply.insert(reply, original, 0))? {
            break;
        }
        if !inserted(conntrack.insert(original, entry, 0))? {
            ct_reply.remove(&reply)?;
            break;
        }
        written += 1;
    }
    Ok(written)
}

/// Whether an insert went in; false when the map is full (`E2BIG`).
fn inserted(result: Result<(), MapError>) -> Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// `CLOCK_MONOTONIC`, the clock conntrack timestamps are taken on.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
