//! The maps, all pinned by name so userspace and later loads share them. Sizes
//! here are defaults; the loader sets the real ones.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use netpath_common::{
    Config, Endpoint, FlowEntry, FlowKey, PortKey, PortTarget, SockRevNatKey, SockRevNatValue, stat,
};

#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "ENDPOINTS")]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(4096, 0);

#[map(name = "PORTS")]
pub static PORTS: HashMap<PortKey, PortTarget> = HashMap::pinned(65536, 0);

/// Original tuple → flow. A plain hash, see `FlowEntry`.
#[map(name = "CONNTRACK")]
pub static CONNTRACK: HashMap<FlowKey, FlowEntry> = HashMap::pinned(65536, 0);

/// Reply tuple → original tuple. Inserting here is also how a NAT port is
/// claimed: the reply tuple contains it, and `BPF_NOEXIST` makes the claim atomic.
#[map(name = "CT_REPLY")]
pub static CT_REPLY: HashMap<FlowKey, FlowKey> = HashMap::pinned(65536, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::STATS_LEN, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

/// Socket cookie + container address → the published address the application
/// asked for. LRU: an entry is one socket's, and sockets close without telling us.
#[map(name = "SOCK_REVNAT")]
pub static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> = LruHashMap::pinned(65536, 0);

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// Bumps one verdict/drop counter.
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}
