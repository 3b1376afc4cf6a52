//! The maps. BTF-defined, so `bpftool map dump` shows named fields; the loader
//! pins each one under the instance's directory so userspace and later loads
//! share them. Sizes here are defaults; the loader sets the real ones.
use super::parse::Packet;
use aya_ebpf::{
    bindings::bpf_fib_lookup,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::btf_map,
};
use netpath_common::{
    Addr, AllowKey, AllowRule, Config, Endpoint, FlowEntry, FlowEvent, FlowKey, Ip6, NETWORKS_MAX,
    Network, NetworkDrops, PortKey, PortTarget, SLOW_PATHS_LEN, SNAT_POOLS_MAX, SnatDestination,
    SnatPortPool, SnatShareKey, SockRevNatKey, SockRevNatKey6, SockRevNatValue, SockRevNatValue6,
    stat,
};

#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
pub static ENDPOINTS: HashMap<u32, Endpoint, 4096> = HashMap::new();

#[btf_map]
pub static PORTS: HashMap<PortKey, PortTarget, 65536> = HashMap::new();

/// The IPv6 twins of the maps above and below, over `Ip6`: each family has
/// its own tables, written by the same code (see `family`).
#[btf_map]
pub static ENDPOINTS6: HashMap<Ip6, Endpoint, 4096> = HashMap::new();

#[btf_map]
pub static PORTS6: HashMap<PortKey<Ip6>, PortTarget<Ip6>, 65536> = HashMap::new();

#[btf_map]
pub static SUBNETS6: LpmTrie<Ip6, u32, { NETWORKS_MAX as usize }> = LpmTrie::new();

#[btf_map]
pub static CONNTRACK6: HashMap<FlowKey<Ip6>, FlowEntry<Ip6>, 65536> = HashMap::new();

#[btf_map]
pub static CT_REPLY6: HashMap<FlowKey<Ip6>, FlowKey<Ip6>, 65536> = HashMap::new();

#[btf_map]
pub static FLOW_COUNTS6: LruHashMap<Ip6, u32, 65536> = LruHashMap::new();

#[btf_map]
pub static SNAT_PORTS6: HashMap<SnatDestination<Ip6>, SnatPortPool, SNAT_POOLS_MAX, NO_PREALLOC> =
    HashMap::new();

#[btf_map]
pub static SNAT_SHARES6: LruHashMap<SnatShareKey<Ip6>, u32, 65536> = LruHashMap::new();

#[btf_map]
pub static SOCK_REVNAT6: LruHashMap<SockRevNatKey6, SockRevNatValue6, 65536> = LruHashMap::new();

/// Network id → network (see `networks`).
#[btf_map]
pub static NETWORKS: Array<Network, { NETWORKS_MAX as usize }> = Array::new();

/// Subnet → network id: the network of an address.
#[btf_map]
pub static SUBNETS: LpmTrie<u32, u32, { NETWORKS_MAX as usize }> = LpmTrie::new();

/// Isolation refusals per network of the sender.
#[btf_map]
pub static NETWORK_DROPS: PerCpuArray<NetworkDrops, { NETWORKS_MAX as usize }> = PerCpuArray::new();

/// The allow-lists of restricted ports (see `AllowKey`, `allow`).
#[btf_map]
pub static ALLOWED: LpmTrie<AllowKey, AllowRule, 16384> = LpmTrie::new();

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

/// Slots of `CT_RECENT`.
pub const CT_RECENT_SLOTS: u32 = 1024;

/// The most recently created and finished flows (original tuples), a ring
/// written at `CT_RECENT_NEXT`: the candidates a full table gives up for a
/// new flow (see `conntrack::early_drop`). Neither is pinned: hints a
/// reload may lose.
#[btf_map]
pub static CT_RECENT: Array<FlowKey, { CT_RECENT_SLOTS as usize }> = Array::new();

/// The next slot of `CT_RECENT` to write, the single element.
#[btf_map]
pub static CT_RECENT_NEXT: Array<u32, 1> = Array::new();

/// The same for IPv6 flows.
#[btf_map]
pub static CT_RECENT6: Array<FlowKey<Ip6>, { CT_RECENT_SLOTS as usize }> = Array::new();

#[btf_map]
pub static CT_RECENT_NEXT6: Array<u32, 1> = Array::new();

/// Flows per original source address (see `limits`). LRU: under a flood
/// of forged sources the oldest counts go, which only ever lets more in.
#[btf_map]
pub static FLOW_COUNTS: LruHashMap<u32, u32, 65536> = LruHashMap::new();

/// Programs tail-called for rare, costly paths, which the verifier then
/// walks in a program of their own: `SLOW_PATH_NEW_FLOW`.
#[btf_map]
pub static SLOW_PATHS: ProgramArray<{ SLOW_PATHS_LEN as usize }> = ProgramArray::new();

/// `BPF_F_NO_PREALLOC`: memory for an entry is taken when it is made.
pub const NO_PREALLOC: usize = 1;

/// The SNAT ports taken toward each destination (see `snat_ports`). Not
/// preallocated: a pool is 4 KiB, and only destinations with SNAT flows
/// have one (the agent deletes the others).
#[btf_map]
pub static SNAT_PORTS: HashMap<SnatDestination, SnatPortPool, SNAT_POOLS_MAX, NO_PREALLOC> =
    HashMap::new();

/// An empty pool, the single element, never written: what a destination's
/// first pool is copied from (4 KiB fit on no stack).
#[btf_map]
pub static EMPTY_SNAT_POOL: Array<SnatPortPool, 1> = Array::new();

/// Open SNAT flows per container and destination (see `snat_ports`). LRU
/// like `FLOW_COUNTS`: a lost count only ever lets more in.
#[btf_map]
pub static SNAT_SHARES: LruHashMap<SnatShareKey, u32, 65536> = LruHashMap::new();

/// A fragmented datagram's identity.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FragmentKey {
    pub saddr: u32,
    pub daddr: u32,
    /// IPv4 identification, wire order.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// The ports (or echo id) of a fragmented datagram, from its first fragment.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FragmentPorts {
    pub sport: u16,
    pub dport: u16,
}

/// Datagrams in fragments (see `fragments`). LRU: an entry lives as long as
/// its datagram's fragments are in flight, and nothing deletes it. Not
/// pinned: a reload loses only datagrams in flight.
#[btf_map]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts, 8192> = LruHashMap::new();

/// The route generation (see `NextHop`), the single element; never 0 once
/// loaded.
#[btf_map]
pub static ROUTE_GEN: Array<u32, 1> = Array::new();

/// Per-CPU scratch space for structs too big for the 512-byte stack beside
/// the rest of a program (each inlined use would take its own copy there).
/// Not pinned: nothing in it outlives one program run.
pub struct Scratch {
    /// `bpf_fib_lookup`'s argument.
    pub fib: bpf_fib_lookup,
    /// A flow being created, before it is copied into `CONNTRACK`
    /// (`CONNTRACK6`).
    pub entry: FlowEntry,
    pub entry6: FlowEntry<Ip6>,
    /// See [`forget_bounds`].
    pub opaque: u32,
    /// What `from_container` (`from_container6`) hands its new-flow slow
    /// path.
    pub new_flow: NewFlowRequest,
    pub new_flow6: NewFlowRequest<Ip6>,
    /// Parsed IPv6 packets (see `keep`): the one a program runs for, and
    /// the one an ICMP error quotes.
    pub packet6: Packet<Ip6>,
    pub quoted6: Packet<Ip6>,
    /// IPv6 tuples (see `keep_key`), indexed by `KeptKey`.
    pub keys6: [FlowKey<Ip6>; 3],
}

/// A flow `from_container` wants made: its first packet (as parsed) and
/// what `nat::create_snat_flow` takes besides.
#[derive(Clone, Copy)]
pub struct NewFlowRequest<A: Addr = u32> {
    pub pkt: Packet<A>,
    pub nat_addr: A,
    pub dst_addr: A,
    pub dst_port: u16,
    pub nat_kind: u8,
    /// The `SLOW_PATHS` index of the program to run the packet through
    /// again once the flow is made: the one that asked.
    pub then: u32,
}

#[btf_map]
pub static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// This CPU's scratch space.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: this CPU's slot. The TC and XDP programs, its only users, run
    // with bottom halves off: none of them starts on this CPU while another
    // is using the slot.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// `x`, with all the verifier knew of its range forgotten: a round trip
/// through this CPU's scratch space (it does not track what map memory
/// holds). For values that leave a loop by many ways with as many ranges:
/// forgotten, the states after the loop are one, not one per way out.
#[inline(always)]
pub fn forget_bounds(x: u32) -> u32 {
    let Some(scratch) = scratch() else {
        return x;
    };
    // SAFETY: this CPU's slot, as in `scratch`; volatile so that LLVM keeps
    // the round trip.
    unsafe {
        core::ptr::write_volatile(&raw mut scratch.opaque, x);
        core::ptr::read_volatile(&raw const scratch.opaque)
    }
}

#[inline(always)]
pub fn route_gen() -> u32 {
    ROUTE_GEN.get(0).copied().unwrap_or(0)
}

/// Set to 1 by the loader on kernels with `bpf_ktime_get_coarse_ns` (5.11+).
/// Read-only data: the verifier knows the value and skips the branch not
/// taken, so older kernels never see the newer helper.
#[unsafe(no_mangle)]
static HAS_COARSE_CLOCK: u8 = 0;

/// CLOCK_MONOTONIC in ns, at tick resolution where the kernel offers that
/// cheaper clock: flow timestamps only feed timeouts of seconds.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a plain read of a global; volatile so the loader's value is
    // read, not the compile-time 0.
    if unsafe { core::ptr::read_volatile(&raw const HAS_COARSE_CLOCK) } != 0 {
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        unsafe { bpf_ktime_get_ns() }
    }
}

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// Bumps one counter. Only `Verdict` and events beside a verdict (a flow
/// created, an early drop) call this.
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}
