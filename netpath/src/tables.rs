//! Typed access to the pinned maps: the port, endpoint and conntrack tables,
//! the counters and the configuration. Every command works through these, so
//! none needs the agent.
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
};

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{
    Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::Ipv4Net;
use netpath_common::{
    ALLOW_PORT_BITS, Addr, AllowKey, AllowRule, Config, Endpoint, FlowEntry, FlowKey, IPPROTO_TCP,
    Ip6, Network, NetworkDrops, PortKey, PortTarget, SNAT_POOL_PORTS, SNAT_POOLS_MAX,
    SnatDestination, SnatPortPool, SnatShareKey,
    host::{HostAddr, HostIp, ip_to_wire, ip6_to_wire},
    names, nat_kind, stat, tcp_state,
};

use crate::directories::{Instance, NotUp};

#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error(transparent)]
    NotUp(#[from] NotUp),
    #[error("pinned map {path}: {source}")]
    Map {
        path: String,
        #[source]
        source: MapError,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn map_err(path: &str) -> impl FnOnce(MapError) -> TablesError + '_ {
    move |source| TablesError::Map {
        path: path.to_string(),
        source,
    }
}

/// A finished TCP connection: it holds no peer's resources, and a full
/// table gives it up first (early drop), so it counts against no limit.
fn finished<A: Addr>(key: &FlowKey<A>, entry: &FlowEntry<A>) -> bool {
    key.proto == IPPROTO_TCP && matches!(entry.tcp_state, tcp_state::TIME_WAIT | tcp_state::CLOSED)
}

/// `SUBNETS` key of `network`'s subnet.
fn subnet_key(network: &Network) -> Key<u32> {
    Key::new(u32::from(network.prefix_len()), network.subnet_addr)
}

/// `SUBNETS6` key of `network`'s IPv6 subnet, if it has one.
fn subnet6_key(network: &Network) -> Option<Key<Ip6>> {
    let (_, prefix_len) = network.subnet6()?;
    Some(Key::new(u32::from(prefix_len), network.subnet6_addr))
}

/// Makes `map` hold exactly `wanted` (the SNAT pools, which are hints: a
/// bit the datapath set during the walk and lost here costs one failed
/// claim). Only entries that differ are written and only those not wanted
/// deleted: most stay as they are.
fn replace_all<K, V>(
    map: &mut HashMap<MapData, K, V>,
    name: &str,
    wanted: &std::collections::HashMap<K, V>,
) -> Result<(), TablesError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + PartialEq,
{
    let mut gone = Vec::new();
    let mut current = std::collections::HashSet::with_capacity(wanted.len());
    for_each_entry(map, |key: &K, value: &V| match wanted.get(key) {
        Some(want) if want == value => {
            current.insert(*key);
        }
        Some(_) => {}
        None => gone.push(*key),
    })
    .map_err(|e| TablesError::Io(io::Error::other(format!("reading {name}: {e}"))))?;
    for key in gone {
        match map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    for (key, value) in wanted.iter().filter(|(key, _)| !current.contains(key)) {
        match map.insert(key, value, 0) {
            Ok(()) => {}
            // Filled by the datapath since the walk (a plain hash): the
            // entry waits for the next pass.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(())
}

/// What a datapath count should be after a GC pass: `counted`, the open
/// flows the walk found that are older than the walk, plus what the
/// datapath added (or took away, a TCP flow finishing) since the walk
/// began: `now - before`, which counts the flows opened or finished
/// meanwhile. Writing the walk's number alone would lose those, and let a
/// source past its limit (the walk of a large table takes a while).
fn reconciled(counted: u32, before: u32, now: u32) -> u32 {
    // Wrapping: a count the datapath took below 0 reads past 2^31.
    let since = i64::from(now.wrapping_sub(before) as i32);
    (i64::from(counted) + since).clamp(0, i64::from(u32::MAX)) as u32
}

/// Brings a count map to what the walk counted, without losing what the
/// datapath counted meanwhile (see [`reconciled`]; `before` is the map as
/// read just before the walk). Each count to change is read again right
/// before it is written: only an increment between those two syscalls can
/// be lost, until the next pass.
fn reconcile_counts<K>(
    map: &mut HashMap<MapData, K, u32>,
    name: &str,
    before: &std::collections::HashMap<K, u32>,
    counted: &std::collections::HashMap<K, u32>,
) -> Result<(), TablesError>
where
    K: aya::Pod + Eq + std::hash::Hash,
{
    let want = |key: &K, now: u32| {
        reconciled(
            counted.get(key).copied().unwrap_or(0),
            before.get(key).copied().unwrap_or(0),
            now,
        )
    };
    let mut present = std::collections::HashSet::with_capacity(counted.len());
    let mut changes = Vec::new();
    for_each_entry(map, |key: &K, now: &u32| {
        present.insert(*key);
        if want(key, *now) != *now {
            changes.push(*key);
        }
    })
    .map_err(|e| TablesError::Io(io::Error::other(format!("reading {name}: {e}"))))?;
    // Counted, but gone from the map (an LRU map evicts): written anew.
    changes.extend(counted.keys().filter(|key| !present.contains(*key)));
    for key in changes {
        let (now, want) = match map.get(&key, 0) {
            Ok(now) => (now, want(&key, now)),
            // Evicted: what the walk counted.
            Err(MapError::KeyNotFound) => (0, counted.get(&key).copied().unwrap_or(0)),
            Err(e) => return Err(map_err(name)(e)),
        };
        let done = match want {
            _ if want == now => continue,
            0 => map.remove(&key),
            _ => map.insert(key, want, 0),
        };
        match done {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            // Filled by the datapath since the walk: the count waits for
            // the next pass.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(())
}

/// Reads a count map whole.
fn read_counts<K>(
    map: &HashMap<MapData, K, u32>,
    name: &str,
    into: &mut std::collections::HashMap<K, u32>,
) -> Result<(), TablesError>
where
    K: aya::Pod + Eq + std::hash::Hash,
{
    into.clear();
    for_each_entry(map, |key: &K, count: &u32| {
        into.insert(*key, *count);
    })
    .map_err(|e| TablesError::Io(io::Error::other(format!("reading {name}: {e}"))))
}

/// Entries per `BPF_MAP_LOOKUP_BATCH` call: more than any hash bucket holds.
const BATCH: usize = 4096;

/// Calls `each` with every entry of `map`, read with `BPF_MAP_LOOKUP_BATCH`
/// (hash maps, Linux 5.6): one syscall per [`BATCH`] entries where aya
/// 0.14's iterator makes two per entry. Entries the datapath adds or
/// removes meanwhile may be seen or not, as with any walk.
fn for_each_entry<K: aya::Pod, V: aya::Pod>(
    map: &impl IterableMap<K, V>,
    mut each: impl FnMut(&K, &V),
) -> io::Result<()> {
    /// `union bpf_attr`'s `batch` member.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let (key_size, value_size) = (size_of::<K>(), size_of::<V>());
    let mut keys = vec![0u8; BATCH * key_size];
    let mut values = vec![0u8; BATCH * value_size];
    // The kernel's cursor (a bucket index for hash maps): out of one call,
    // into the next.
    let (mut cursor_in, mut cursor_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &raw const cursor_in as u64
            },
            out_batch: &raw mut cursor_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: map.map().fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: attr points to buffers of `count` keys and values of the
        // map's sizes (aya checked them when it opened the map) and to the
        // cursors, all alive for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let done = ret < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT);
        if ret < 0 && !done {
            return Err(io::Error::last_os_error());
        }
        for i in 0..attr.count as usize {
            // SAFETY: the kernel wrote `count` whole keys and values; Pod
            // types have no invalid bit patterns.
            let (key, value) = unsafe {
                (
                    keys.as_ptr().add(i * key_size).cast::<K>().read_unaligned(),
                    values
                        .as_ptr()
                        .add(i * value_size)
                        .cast::<V>()
                        .read_unaligned(),
                )
            };
            each(&key, &value);
        }
        if done {
            return Ok(());
        }
        cursor_in = cursor_out;
        first = false;
    }
}

/// What the datapath's flow limits and SNAT pools count, from one walk of
/// the conntrack table ([`Tables::write_tally`] writes it). Kept across GC
/// passes: clearing keeps the allocations.
///
/// The datapath keeps counting during the walk. Its counts are read as the
/// walk begins; flows it opens after that read and TCP flows it finishes
/// after it are left to its own counts: the walk counts the flows older
/// than the read, and the write adds what the datapath counted since (see
/// `reconciled`). Where a flow's time stamp can't tell before from after
/// (the same clock tick, or the agent preempted during the read), the flow
/// is judged the way that counts too high until the next pass, never too
/// low.
pub struct FlowTally<A: Addr = u32> {
    /// The datapath's clock just before and just after the counts were
    /// read.
    read_from_ns: u64,
    read_until_ns: u64,
    /// Open flows per original source (see `recount`).
    sources: std::collections::HashMap<A, u32>,
    /// SNAT ports taken per destination.
    pools: std::collections::HashMap<SnatDestination<A>, Box<SnatPortPool>>,
    /// Open SNAT flows per container and destination.
    shares: std::collections::HashMap<SnatShareKey<A>, u32>,
    /// The datapath's `sources` and `shares` counts as the walk began.
    sources_before: std::collections::HashMap<A, u32>,
    shares_before: std::collections::HashMap<SnatShareKey<A>, u32>,
    /// The SNAT range: its first port and how many ports a pool covers.
    snat_min: u32,
    snat_span: u32,
}

impl<A: Addr> Default for FlowTally<A> {
    fn default() -> Self {
        Self {
            read_from_ns: 0,
            read_until_ns: 0,
            sources: Default::default(),
            pools: Default::default(),
            shares: Default::default(),
            sources_before: Default::default(),
            shares_before: Default::default(),
            snat_min: 0,
            snat_span: 0,
        }
    }
}

impl<A: Addr> FlowTally<A> {
    /// Starts a new count for the SNAT range of `cfg` (then read the
    /// datapath's counts with [`Tables::read_counts`] and say when with
    /// [`FlowTally::counts_read`]).
    pub fn clear(&mut self, cfg: &Config) {
        self.sources.clear();
        self.pools.clear();
        self.shares.clear();
        self.snat_min = u32::from(cfg.snat_port_min);
        self.snat_span =
            (u32::from(cfg.snat_port_max).saturating_sub(self.snat_min) + 1).min(SNAT_POOL_PORTS);
    }

    /// When the datapath's counts were read: between `from_ns` and
    /// `until_ns` on its clock.
    pub fn counts_read(&mut self, from_ns: u64, until_ns: u64) {
        self.read_from_ns = from_ns;
        self.read_until_ns = until_ns;
    }

    /// Counts one flow that stays.
    pub fn add(&mut self, key: &FlowKey<A>, entry: &FlowEntry<A>) {
        // Opened after the read: the datapath's count has it already.
        let newer = entry.created_ns > self.read_until_ns;
        let open = !newer && !finished(key, entry);
        if open {
            *self.sources.entry(key.saddr).or_default() += 1;
        }
        if !matches!(entry.nat_kind, nat_kind::MASQUERADE | nat_kind::HAIRPIN) {
            return;
        }
        let destination = SnatDestination::of_reply(&entry.reply);
        let port = u32::from(u16::from_be(entry.reply.dport));
        if let Some(offset) = port
            .checked_sub(self.snat_min)
            .filter(|offset| *offset < self.snat_span)
        {
            self.pools
                .entry(destination)
                .or_insert_with(|| Box::new(bytemuck::Zeroable::zeroed()))
                .mark_used(offset);
        }
        // The original source of an SNAT flow is always a container. One
        // that may have finished after the read still counts here: the
        // datapath took it out of its count then. (One finished before
        // that saw a packet since counts once too many until the next
        // pass.)
        if open || (!newer && entry.last_seen_ns >= self.read_from_ns) {
            let share = SnatShareKey {
                container: key.saddr,
                destination,
            };
            *self.shares.entry(share).or_default() += 1;
        }
    }
}

/// The instance's pinned maps, opened. A command opens them once and passes
/// this handle down.
pub struct Tables {
    config: Array<MapData, Config>,
    endpoints: HashMap<MapData, u32, Endpoint>,
    endpoints6: HashMap<MapData, Ip6, Endpoint>,
    stats: PerCpuArray<MapData, u64>,
    route_gen: Array<MapData, u32>,
    allowed: LpmTrie<MapData, AllowKey, AllowRule>,
    networks: Array<MapData, Network>,
    subnets: LpmTrie<MapData, u32, u32>,
    subnets6: LpmTrie<MapData, Ip6, u32>,
    network_drops: PerCpuArray<MapData, NetworkDrops>,
    v4: FamilyTables<u32>,
    v6: FamilyTables<Ip6>,
}

/// The maps one address family has of its own: the same records over `A`
/// (`PORTS` and `PORTS6`, ...), written and read by the same code
/// ([`FamilyMaps`]).
pub struct FamilyTables<A: Addr> {
    ports: HashMap<MapData, PortKey<A>, PortTarget<A>>,
    conntrack: HashMap<MapData, FlowKey<A>, FlowEntry<A>>,
    ct_reply: HashMap<MapData, FlowKey<A>, FlowKey<A>>,
    flow_counts: HashMap<MapData, A, u32>,
    snat_ports: HashMap<MapData, SnatDestination<A>, SnatPortPool>,
    snat_shares: HashMap<MapData, SnatShareKey<A>, u32>,
    conntrack_capacity: u32,
}

/// The names of one family's maps (see `FamilyTables`).
pub struct FamilyNames {
    pub ports: &'static str,
    pub conntrack: &'static str,
    pub ct_reply: &'static str,
    pub flow_counts: &'static str,
    pub snat_ports: &'static str,
    pub snat_shares: &'static str,
}

/// An address family with tables of its own: IPv4 (`u32`) or IPv6 (`Ip6`).
pub trait Family: HostAddr {
    const NAMES: FamilyNames;
    /// This family's maps. (An associated type, so that generic code knows
    /// what they can do: the records are `Pod` for each family, which a
    /// bound on `A` alone cannot say.)
    type Maps: FamilyMaps<Self>;
    /// A flow key as a value that sorts, for the GC's search of dangling
    /// reply keys (the key's bytes).
    type KeyBits: Ord + Copy;
    fn maps(tables: &Tables) -> &Self::Maps;
    fn maps_mut(tables: &mut Tables) -> &mut Self::Maps;
    fn key_bits(key: &FlowKey<Self>) -> Self::KeyBits;
    /// The port's key in `ALLOWED`: allow-lists are IPv4's only.
    fn allow_key(port: &PortKey<Self>) -> Option<PortKey>;
}

impl Family for u32 {
    const NAMES: FamilyNames = FamilyNames {
        ports: names::PORTS,
        conntrack: names::CONNTRACK,
        ct_reply: names::CT_REPLY,
        flow_counts: names::FLOW_COUNTS,
        snat_ports: names::SNAT_PORTS,
        snat_shares: names::SNAT_SHARES,
    };
    type Maps = FamilyTables<u32>;
    type KeyBits = u128;
    fn maps(tables: &Tables) -> &Self::Maps {
        &tables.v4
    }
    fn maps_mut(tables: &mut Tables) -> &mut Self::Maps {
        &mut tables.v4
    }
    fn key_bits(key: &FlowKey) -> u128 {
        bytemuck::cast(*key)
    }
    fn allow_key(port: &PortKey) -> Option<PortKey> {
        Some(*port)
    }
}

impl Family for Ip6 {
    const NAMES: FamilyNames = FamilyNames {
        ports: names::PORTS6,
        conntrack: names::CONNTRACK6,
        ct_reply: names::CT_REPLY6,
        flow_counts: names::FLOW_COUNTS6,
        snat_ports: names::SNAT_PORTS6,
        snat_shares: names::SNAT_SHARES6,
    };
    type Maps = FamilyTables<Ip6>;
    type KeyBits = [u64; 5];
    fn maps(tables: &Tables) -> &Self::Maps {
        &tables.v6
    }
    fn maps_mut(tables: &mut Tables) -> &mut Self::Maps {
        &mut tables.v6
    }
    fn key_bits(key: &FlowKey<Ip6>) -> [u64; 5] {
        bytemuck::cast(*key)
    }
    fn allow_key(_: &PortKey<Ip6>) -> Option<PortKey> {
        None
    }
}

/// Opens pinned map `name` of `instance`.
fn open_map(instance: &Instance, name: &str) -> Result<Map, TablesError> {
    let data = MapData::from_pin(instance.map_pin(name)).map_err(|_| instance.not_up())?;
    Map::from_map_data(data).map_err(map_err(name))
}

/// What [`Tables`] does with one family's maps (see `Family::Maps`).
pub trait FamilyMaps<A: Addr>: Sized {
    fn open(instance: &Instance) -> Result<Self, TablesError>;
    /// Inserts a port unless its key is there (`Ok(false)`).
    fn publish(&mut self, key: &PortKey<A>, target: &PortTarget<A>) -> Result<bool, TablesError>;
    /// Removes a port; `None`: it was not there.
    fn remove_port(&mut self, key: &PortKey<A>) -> Result<Option<PortTarget<A>>, TablesError>;
    fn ports(&self) -> Result<Ports<A>, TablesError>;
    fn for_each_flow(
        &self,
        each: impl FnMut(&FlowKey<A>, &FlowEntry<A>),
    ) -> Result<(), TablesError>;
    fn for_each_reply(&self, each: impl FnMut(&FlowKey<A>, &FlowKey<A>))
    -> Result<(), TablesError>;
    fn flow(&self, key: &FlowKey<A>) -> Result<Option<FlowEntry<A>>, TablesError>;
    fn remove_flow(&mut self, orig: &FlowKey<A>, reply: &FlowKey<A>) -> Result<(), TablesError>;
    fn remove_reply(&mut self, reply: &FlowKey<A>);
    fn read_counts(&self, tally: &mut FlowTally<A>) -> Result<(), TablesError>;
    fn write_tally(&mut self, tally: &FlowTally<A>) -> Result<(), TablesError>;
    fn conntrack_capacity(&self) -> u32;
}

/// `FamilyMaps` for each family's `FamilyTables`: one body, instantiated
/// where the records' types are concrete (and so known to be `Pod`).
macro_rules! family_maps {
    ($($addr:ty),+) => {$(
        impl FamilyMaps<$addr> for FamilyTables<$addr> {
            fn open(instance: &Instance) -> Result<Self, TablesError> {
                let names = <$addr as Family>::NAMES;
                let open = |name: &'static str| open_map(instance, name);
                let conntrack_capacity = MapData::from_pin(instance.map_pin(names.conntrack))
                    .ok()
                    .and_then(|m| m.info().ok())
                    .map_or(0, |i| i.max_entries());
                Ok(Self {
                    conntrack_capacity,
                    ports: HashMap::try_from(open(names.ports)?).map_err(map_err(names.ports))?,
                    conntrack: HashMap::try_from(open(names.conntrack)?)
                        .map_err(map_err(names.conntrack))?,
                    ct_reply: HashMap::try_from(open(names.ct_reply)?)
                        .map_err(map_err(names.ct_reply))?,
                    flow_counts: HashMap::try_from(open(names.flow_counts)?)
                        .map_err(map_err(names.flow_counts))?,
                    snat_ports: HashMap::try_from(open(names.snat_ports)?)
                        .map_err(map_err(names.snat_ports))?,
                    snat_shares: HashMap::try_from(open(names.snat_shares)?)
                        .map_err(map_err(names.snat_shares))?,
                })
            }

            fn publish(
                &mut self,
                key: &PortKey<$addr>,
                target: &PortTarget<$addr>,
            ) -> Result<bool, TablesError> {
                const BPF_NOEXIST: u64 = 1;
                match self.ports.insert(key, target, BPF_NOEXIST) {
                    Ok(()) => Ok(true),
                    Err(MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(map_err(<$addr as Family>::NAMES.ports)(e)),
                }
            }

            fn remove_port(
                &mut self,
                key: &PortKey<$addr>,
            ) -> Result<Option<PortTarget<$addr>>, TablesError> {
                let name = <$addr as Family>::NAMES.ports;
                let target = match self.ports.get(key, 0) {
                    Ok(t) => t,
                    Err(MapError::KeyNotFound) => return Ok(None),
                    Err(e) => return Err(map_err(name)(e)),
                };
                match self.ports.remove(key) {
                    Ok(()) | Err(MapError::KeyNotFound) => Ok(Some(target)),
                    Err(e) => Err(map_err(name)(e)),
                }
            }

            fn ports(&self) -> Result<Ports<$addr>, TablesError> {
                self.ports
                    .iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(map_err(<$addr as Family>::NAMES.ports))
            }

            fn for_each_flow(
                &self,
                each: impl FnMut(&FlowKey<$addr>, &FlowEntry<$addr>),
            ) -> Result<(), TablesError> {
                for_each_entry(&self.conntrack, each).map_err(|e| {
                    TablesError::Io(io::Error::other(format!(
                        "reading {}: {e}",
                        <$addr as Family>::NAMES.conntrack
                    )))
                })
            }

            fn for_each_reply(
                &self,
                each: impl FnMut(&FlowKey<$addr>, &FlowKey<$addr>),
            ) -> Result<(), TablesError> {
                for_each_entry(&self.ct_reply, each).map_err(|e| {
                    TablesError::Io(io::Error::other(format!(
                        "reading {}: {e}",
                        <$addr as Family>::NAMES.ct_reply
                    )))
                })
            }

            fn flow(
                &self,
                key: &FlowKey<$addr>,
            ) -> Result<Option<FlowEntry<$addr>>, TablesError> {
                match self.conntrack.get(key, 0) {
                    Ok(entry) => Ok(Some(entry)),
                    Err(MapError::KeyNotFound) => Ok(None),
                    Err(e) => Err(map_err(<$addr as Family>::NAMES.conntrack)(e)),
                }
            }

            fn remove_flow(
                &mut self,
                orig: &FlowKey<$addr>,
                reply: &FlowKey<$addr>,
            ) -> Result<(), TablesError> {
                let names = <$addr as Family>::NAMES;
                match self.conntrack.remove(orig) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(names.conntrack)(e)),
                }
                match self.ct_reply.remove(reply) {
                    Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                    Err(e) => Err(map_err(names.ct_reply)(e)),
                }
            }

            fn remove_reply(&mut self, reply: &FlowKey<$addr>) {
                let _ = self.ct_reply.remove(reply);
            }

            fn read_counts(&self, tally: &mut FlowTally<$addr>) -> Result<(), TablesError> {
                let names = <$addr as Family>::NAMES;
                read_counts(&self.flow_counts, names.flow_counts, &mut tally.sources_before)?;
                read_counts(&self.snat_shares, names.snat_shares, &mut tally.shares_before)
            }

            fn write_tally(&mut self, tally: &FlowTally<$addr>) -> Result<(), TablesError> {
                let names = <$addr as Family>::NAMES;
                reconcile_counts(
                    &mut self.flow_counts,
                    names.flow_counts,
                    &tally.sources_before,
                    &tally.sources,
                )?;
                reconcile_counts(
                    &mut self.snat_shares,
                    names.snat_shares,
                    &tally.shares_before,
                    &tally.shares,
                )?;
                // The map has room for so many pools: the busiest
                // destinations get them (the others' few ports are found by
                // random probes).
                let mut pools: Vec<_> = tally.pools.iter().collect();
                if pools.len() > SNAT_POOLS_MAX {
                    pools.sort_by_cached_key(|(_, pool)| {
                        std::cmp::Reverse(pool.used.iter().map(|w| w.count_ones()).sum::<u32>())
                    });
                    pools.truncate(SNAT_POOLS_MAX);
                }
                let pools = pools
                    .into_iter()
                    .map(|(destination, pool)| (*destination, **pool))
                    .collect();
                replace_all(&mut self.snat_ports, names.snat_ports, &pools)
            }

            fn conntrack_capacity(&self) -> u32 {
                self.conntrack_capacity
            }
        }
    )+};
}

family_maps!(u32, Ip6);

/// A restricted port's allow-list, as `ALLOWED` holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    /// The source prefixes admitted, sorted.
    pub admitted: Vec<Ipv4Net>,
    /// First packets refused so far.
    pub refused: u64,
}

/// A family's published ports: key and target.
pub type Ports<A = u32> = Vec<(PortKey<A>, PortTarget<A>)>;
/// A family's flows: original key and entry.
pub type Flows<A = u32> = Vec<(FlowKey<A>, FlowEntry<A>)>;

/// Verdict and drop counters summed over CPUs, by name.
pub type Counters = Vec<(&'static str, u64)>;

impl Tables {
    pub fn open(instance: &Instance) -> Result<Self, TablesError> {
        let open = |name: &str| open_map(instance, name);
        Ok(Self {
            config: Array::try_from(open(names::CONFIG)?).map_err(map_err(names::CONFIG))?,
            endpoints: HashMap::try_from(open(names::ENDPOINTS)?)
                .map_err(map_err(names::ENDPOINTS))?,
            endpoints6: HashMap::try_from(open(names::ENDPOINTS6)?)
                .map_err(map_err(names::ENDPOINTS6))?,
            stats: PerCpuArray::try_from(open(names::STATS)?).map_err(map_err(names::STATS))?,
            route_gen: Array::try_from(open(names::ROUTE_GEN)?)
                .map_err(map_err(names::ROUTE_GEN))?,
            allowed: LpmTrie::try_from(open(names::ALLOWED)?).map_err(map_err(names::ALLOWED))?,
            networks: Array::try_from(open(names::NETWORKS)?).map_err(map_err(names::NETWORKS))?,
            subnets: LpmTrie::try_from(open(names::SUBNETS)?).map_err(map_err(names::SUBNETS))?,
            subnets6: LpmTrie::try_from(open(names::SUBNETS6)?)
                .map_err(map_err(names::SUBNETS6))?,
            network_drops: PerCpuArray::try_from(open(names::NETWORK_DROPS)?)
                .map_err(map_err(names::NETWORK_DROPS))?,
            v4: FamilyMaps::open(instance)?,
            v6: FamilyMaps::open(instance)?,
        })
    }

    /// Writes network `id`: its `NETWORKS` slot, then its `SUBNETS` (and
    /// `SUBNETS6`) entry, so the datapath never finds an id whose slot is
    /// not written yet.
    pub fn set_network(&mut self, id: u16, network: &Network) -> Result<(), TablesError> {
        self.networks
            .set(u32::from(id), network, 0)
            .map_err(map_err(names::NETWORKS))?;
        self.subnets
            .insert(&subnet_key(network), u32::from(id), 0)
            .map_err(map_err(names::SUBNETS))?;
        if let Some(key) = subnet6_key(network) {
            self.subnets6
                .insert(&key, u32::from(id), 0)
                .map_err(map_err(names::SUBNETS6))?;
        }
        Ok(())
    }

    /// Removes network `id` (its subnet first, so nothing finds the id).
    pub fn remove_network(&mut self, id: u16) -> Result<(), TablesError> {
        let network = self
            .networks
            .get(&u32::from(id), 0)
            .map_err(map_err(names::NETWORKS))?;
        if network.subnet_mask == 0 {
            return Ok(());
        }
        match self.subnets.remove(&subnet_key(&network)) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(names::SUBNETS)(e)),
        }
        if let Some(key) = subnet6_key(&network) {
            match self.subnets6.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::SUBNETS6)(e)),
            }
        }
        self.networks
            .set(u32::from(id), Network::default(), 0)
            .map_err(map_err(names::NETWORKS))
    }

    /// The networks the datapath knows, by id.
    pub fn networks(&self) -> Result<Vec<(u16, Network)>, TablesError> {
        let mut found = Vec::new();
        for (id, network) in self.networks.iter().enumerate() {
            let network = network.map_err(map_err(names::NETWORKS))?;
            if network.subnet_mask != 0 {
                found.push((id as u16, network));
            }
        }
        Ok(found)
    }

    /// Network `id`'s isolation refusals, summed over CPUs, by
    /// `network_drop` index.
    pub fn network_drops(&self, id: u16) -> Result<NetworkDrops, TablesError> {
        let per_cpu = self
            .network_drops
            .get(&u32::from(id), 0)
            .map_err(map_err(names::NETWORK_DROPS))?;
        let mut sum = NetworkDrops::default();
        for cpu in per_cpu.iter() {
            for (total, count) in sum.packets.iter_mut().zip(cpu.packets) {
                *total += count;
            }
        }
        Ok(sum)
    }

    pub fn config(&self) -> Result<Config, TablesError> {
        self.config.get(&0, 0).map_err(map_err(names::CONFIG))
    }

    pub fn set_config(&mut self, config: &Config) -> Result<(), TablesError> {
        self.config
            .set(0, config, 0)
            .map_err(map_err(names::CONFIG))
    }

    /// The generation flows' cached next hops must carry (see `NextHop`).
    pub fn route_generation(&self) -> Result<u32, TablesError> {
        self.route_gen.get(&0, 0).map_err(map_err(names::ROUTE_GEN))
    }

    /// Invalidates every cached next hop: routes, neighbours, addresses or
    /// links changed. Skips 0, which means "nothing cached".
    pub fn bump_route_generation(&mut self) -> Result<u32, TablesError> {
        let next = self.route_generation()?.wrapping_add(1).max(1);
        self.route_gen
            .set(0, next, 0)
            .map_err(map_err(names::ROUTE_GEN))?;
        Ok(next)
    }

    pub fn add_endpoint(&mut self, ip: Ipv4Addr, ep: &Endpoint) -> Result<(), TablesError> {
        self.endpoints
            .insert(ip_to_wire(ip), ep, 0)
            .map_err(map_err(names::ENDPOINTS))
    }

    /// Whether the datapath has an endpoint for `ip` (CNI CHECK).
    pub fn has_endpoint(&self, ip: Ipv4Addr) -> Result<bool, TablesError> {
        match self.endpoints.get(&ip_to_wire(ip), 0) {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err(names::ENDPOINTS)(e)),
        }
    }

    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), TablesError> {
        match self.endpoints.remove(&ip_to_wire(ip)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::ENDPOINTS)(e)),
        }
    }

    /// `ENDPOINTS6`: the IPv6 address of an interface whose IPv4 one has
    /// `ep` in `ENDPOINTS` (the same value).
    pub fn add_endpoint6(&mut self, ip: Ipv6Addr, ep: &Endpoint) -> Result<(), TablesError> {
        self.endpoints6
            .insert(ip6_to_wire(ip), ep, 0)
            .map_err(map_err(names::ENDPOINTS6))
    }

    pub fn remove_endpoint6(&mut self, ip: Ipv6Addr) -> Result<(), TablesError> {
        match self.endpoints6.remove(&ip6_to_wire(ip)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::ENDPOINTS6)(e)),
        }
    }

    /// Publishes a port. Fails with `Ok(false)` when the key is already there:
    /// `BPF_NOEXIST` makes the check and the insert one step.
    pub fn publish<A: Family>(
        &mut self,
        key: &PortKey<A>,
        target: &PortTarget<A>,
    ) -> Result<bool, TablesError> {
        A::maps_mut(self).publish(key, target)
    }

    /// Unpublishes ports and flushes the flows that went through them, so no
    /// stale translation outlives a mapping.
    pub fn unpublish<A: Family>(&mut self, keys: &[PortKey<A>]) -> Result<(), TablesError> {
        let mut removed = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(target) = A::maps_mut(self).remove_port(key)? {
                removed.push((*key, target));
            }
        }
        if removed.is_empty() {
            return Ok(());
        }
        // After the ports: a port is never restricted without its rules.
        let allow_keys: Vec<PortKey> = removed
            .iter()
            .filter_map(|(key, _)| A::allow_key(key))
            .collect();
        if !allow_keys.is_empty() {
            self.remove_allow_lists(|port| allow_keys.contains(port))?;
        }
        // One pass over the conntrack table for all of them.
        self.flush_flows::<A>(|orig, entry| {
            removed.iter().any(|(key, target)| {
                orig.dport == key.host_port
                    && orig.proto == key.proto
                    && (key.host_ip == A::UNSPECIFIED || orig.daddr == key.host_ip)
                    && entry.reply.saddr == target.container_ip
                    && entry.reply.sport == target.container_port
            })
        })?;
        Ok(())
    }

    /// Writes `port`'s allow-list: a rule admitting each of `admitted`, and
    /// one refusing every other source (replaced by an admitting one if
    /// 0.0.0.0/0 is admitted). Rules an earlier list left are removed first.
    /// Publish the port (restricted) first: until its rules are complete it
    /// admits fewer sources, never more.
    pub fn set_allow_list(
        &mut self,
        port: &PortKey,
        admitted: &[Ipv4Net],
    ) -> Result<(), TablesError> {
        self.remove_allow_lists(|p| p == port)?;
        let rule = |net: Ipv4Net, allow: u8| {
            let key = Key::new(
                ALLOW_PORT_BITS + u32::from(net.prefix_len()),
                AllowKey::new(*port, net.network()),
            );
            let rule = AllowRule {
                allow,
                ..AllowRule::default()
            };
            (key, rule)
        };
        let refuse_all = rule(Ipv4Net::default(), 0);
        let admit = admitted.iter().map(|net| rule(net.trunc(), 1));
        for (key, rule) in std::iter::once(refuse_all).chain(admit) {
            self.allowed
                .insert(&key, rule, 0)
                .map_err(map_err(names::ALLOWED))?;
        }
        Ok(())
    }

    /// Removes every rule of the ports `pred` selects.
    fn remove_allow_lists(&mut self, pred: impl Fn(&PortKey) -> bool) -> Result<(), TablesError> {
        let doomed: Vec<Key<AllowKey>> = self
            .allowed
            .keys()
            .filter_map(Result::ok)
            .filter(|key| pred(&key.data().port))
            .collect();
        for key in doomed {
            match self.allowed.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::ALLOWED)(e)),
            }
        }
        Ok(())
    }

    /// The allow-lists of restricted ports, by port.
    pub fn allow_lists(
        &self,
    ) -> Result<std::collections::HashMap<PortKey, AllowList>, TablesError> {
        let mut lists = std::collections::HashMap::<PortKey, AllowList>::new();
        for entry in self.allowed.iter() {
            let (key, rule) = entry.map_err(map_err(names::ALLOWED))?;
            let data = key.data();
            let list = lists.entry(data.port).or_default();
            if rule.allow != 0 {
                let bits = key.prefix_len().saturating_sub(ALLOW_PORT_BITS);
                let net = u8::try_from(bits)
                    .ok()
                    .and_then(|bits| Ipv4Net::new(data.source(), bits).ok());
                list.admitted.extend(net);
            } else {
                list.refused += rule.packets;
            }
        }
        for list in lists.values_mut() {
            list.admitted.sort();
        }
        Ok(lists)
    }

    pub fn ports<A: Family>(&self) -> Result<Ports<A>, TablesError> {
        A::maps(self).ports()
    }

    pub fn flows<A: Family>(&self) -> Result<Flows<A>, TablesError> {
        let mut flows = Vec::new();
        self.for_each_flow::<A>(|key, entry| flows.push((*key, *entry)))?;
        Ok(flows)
    }

    /// Removes flows matching `pred`, both keys of each pair. Returns how many.
    pub fn flush_flows<A: Family>(
        &mut self,
        pred: impl Fn(&FlowKey<A>, &FlowEntry<A>) -> bool,
    ) -> Result<usize, TablesError> {
        let doomed: Vec<(FlowKey<A>, FlowKey<A>)> = self
            .flows::<A>()?
            .into_iter()
            .filter(|(k, e)| pred(k, e))
            .map(|(k, e)| (k, e.reply))
            .collect();
        for (orig, reply) in &doomed {
            self.remove_flow(orig, reply)?;
        }
        Ok(doomed.len())
    }

    /// Removes the flows of address `ip` (an endpoint going away): those it
    /// sent, those sent to it, those translated to it.
    pub fn flush_flows_of<I: HostIp>(&mut self, ip: I) -> Result<usize, TablesError>
    where
        I::Wire: Family,
    {
        self.flush_flows::<I::Wire>(|key, entry| {
            key.src() == ip || entry.reply.src() == ip || key.dst() == ip
        })
    }

    /// Removes one flow: original key first, so a reply lookup that still finds
    /// its half sees a dangling key and deletes it itself.
    pub fn remove_flow<A: Family>(
        &mut self,
        orig: &FlowKey<A>,
        reply: &FlowKey<A>,
    ) -> Result<(), TablesError> {
        A::maps_mut(self).remove_flow(orig, reply)
    }

    /// Reads the datapath's counts into `tally` as its walk begins.
    pub fn read_counts<A: Family>(&self, tally: &mut FlowTally<A>) -> Result<(), TablesError> {
        A::maps(self).read_counts(tally)
    }

    /// Writes what `tally` counted (the table as just walked) to the
    /// datapath's counts: the true number of open flows per original
    /// source (what the per-source and per-container limits count), the
    /// SNAT port pools (the ports taken toward each destination) and the
    /// containers' SNAT shares, each count with what the datapath added
    /// during the walk. The datapath only ever adds to these between
    /// passes (bar a TCP flow's share), so this is where counts come down,
    /// the ports of flows gone become free again, and pools of
    /// destinations no flow goes to any more are deleted.
    pub fn write_tally<A: Family>(&mut self, tally: &FlowTally<A>) -> Result<(), TablesError> {
        A::maps_mut(self).write_tally(tally)
    }

    /// Calls `each` with every flow of the conntrack table, read in batches.
    pub fn for_each_flow<A: Family>(
        &self,
        each: impl FnMut(&FlowKey<A>, &FlowEntry<A>),
    ) -> Result<(), TablesError> {
        A::maps(self).for_each_flow(each)
    }

    /// Calls `each` with every reply key and its original, read in batches.
    pub fn for_each_reply<A: Family>(
        &self,
        each: impl FnMut(&FlowKey<A>, &FlowKey<A>),
    ) -> Result<(), TablesError> {
        A::maps(self).for_each_reply(each)
    }

    /// The conntrack entry of `key` as it is now; None when it is gone.
    pub fn flow<A: Family>(&self, key: &FlowKey<A>) -> Result<Option<FlowEntry<A>>, TablesError> {
        A::maps(self).flow(key)
    }

    pub fn remove_reply<A: Family>(&mut self, reply: &FlowKey<A>) {
        A::maps_mut(self).remove_reply(reply);
    }

    /// Capacity of the family's conntrack table.
    pub fn conntrack_capacity<A: Family>(&self) -> u32 {
        A::maps(self).conntrack_capacity()
    }

    pub fn counters(&self) -> Result<Counters, TablesError> {
        let mut out = Vec::new();
        for (idx, name) in stat::NAMES.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let values = self
                .stats
                .get(&(idx as u32), 0)
                .map_err(map_err(names::STATS))?;
            out.push((*name, values.iter().sum()));
        }
        Ok(out)
    }

    /// Zeroes network `id`'s drop counters, so a new network with a reused
    /// id starts from nothing.
    pub fn reset_network_drops(&mut self, id: u16) -> Result<(), TablesError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| TablesError::Io(e))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![NetworkDrops::default(); cpus])
            .map_err(TablesError::Io)?;
        self.network_drops
            .set(u32::from(id), zeros, 0)
            .map_err(map_err(names::NETWORK_DROPS))
    }
}

#[cfg(test)]
mod tests {
    use super::reconciled;

    #[test]
    fn a_count_keeps_what_the_datapath_counted_during_the_walk() {
        // 20 flows older than the walk, 5 opened during it.
        assert_eq!(reconciled(20, 20, 25), 25);
        // 3 expired (the walk did not count them), 5 opened meanwhile.
        assert_eq!(reconciled(17, 20, 25), 22);
        // Nothing happened during the walk: the walk's count.
        assert_eq!(reconciled(4, 9, 9), 4);
    }

    #[test]
    fn a_flow_finished_during_the_walk_comes_off_once() {
        // The walk counted it (finished since it began), the datapath took
        // it off meanwhile.
        assert_eq!(reconciled(10, 10, 9), 9);
        // The datapath took a count below 0 (two CPUs finishing one flow).
        assert_eq!(reconciled(0, 0, u32::MAX), 0);
        assert_eq!(reconciled(3, 1, u32::MAX), 1);
    }
}
