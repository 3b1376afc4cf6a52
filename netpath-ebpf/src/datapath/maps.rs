//! The maps. BTF-defined, so `bpftool map dump` shows named fields; the loader
//! pins each one under the instance's directory so userspace and later loads
//! share them. Sizes here are defaults; the loader sets the real ones.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use netpath_common::{
    Config, Endpoint, FlowEntry, FlowEvent, FlowKey, PortKey, PortTarget, SockRevNatKey,
    SockRevNatValue, stat,
};

#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
pub static ENDPOINTS: HashMap<u32, Endpoint, 4096> = HashMap::new();

#[btf_map]
pub static PORTS: HashMap<PortKey, PortTarget, 65536> = HashMap::new();

/// Original tuple → flow. A plain hash, see `FlowEntry`.
#[btf_map]
pub static CONNTRACK: HashMap<FlowKey, FlowEntry, 65536> = HashMap::new();

/// Reply tuple → original tuple. Inserting here is also how a NAT port is
/// claimed: the reply tuple contains it, and `BPF_NOEXIST` makes the claim atomic.
#[btf_map]
pub static CT_REPLY: HashMap<FlowKey, FlowKey, 65536> = HashMap::new();

#[btf_map]
pub static STATS: PerCpuArray<u64, { stat::STATS_LEN as usize }> = PerCpuArray::new();

#[btf_map]
pub static EVENTS: RingBuf<FlowEvent, { 256 * 1024 }> = RingBuf::new();

/// Socket cookie + container address → the published address the application
/// asked for. LRU: an entry is one socket's, and sockets close without telling us.
#[btf_map]
pub static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue, 65536> = LruHashMap::new();

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
