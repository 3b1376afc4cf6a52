//! Typed access to the pinned maps: the port, endpoint and conntrack tables,
//! the counters and the configuration. Every command works through these, so
//! none needs the agent.
use std::{io, net::Ipv4Addr};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use netpath_common::{
    Config, Endpoint, FlowEntry, FlowKey, IPPROTO_TCP, PortKey, PortTarget, host::ip_to_wire,
    names, stat, tcp_state,
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

/// The instance's pinned maps, opened. A command opens them once and passes
/// this handle down.
pub struct Tables {
    config: Array<MapData, Config>,
    endpoints: HashMap<MapData, u32, Endpoint>,
    ports: HashMap<MapData, PortKey, PortTarget>,
    conntrack: HashMap<MapData, FlowKey, FlowEntry>,
    ct_reply: HashMap<MapData, FlowKey, FlowKey>,
    stats: PerCpuArray<MapData, u64>,
    route_gen: Array<MapData, u32>,
    flow_counts: HashMap<MapData, u32, u32>,
    conntrack_capacity: u32,
}

/// Verdict and drop counters summed over CPUs, by name.
pub type Counters = Vec<(&'static str, u64)>;

impl Tables {
    pub fn open(instance: &Instance) -> Result<Self, TablesError> {
        let open = |name: &str| -> Result<Map, TablesError> {
            let data = MapData::from_pin(instance.map_pin(name)).map_err(|_| instance.not_up())?;
            Map::from_map_data(data).map_err(map_err(name))
        };
        let conntrack_capacity = MapData::from_pin(instance.map_pin(names::CONNTRACK))
            .ok()
            .and_then(|m| m.info().ok())
            .map_or(0, |i| i.max_entries());
        Ok(Self {
            conntrack_capacity,
            config: Array::try_from(open(names::CONFIG)?).map_err(map_err(names::CONFIG))?,
            endpoints: HashMap::try_from(open(names::ENDPOINTS)?)
                .map_err(map_err(names::ENDPOINTS))?,
            ports: HashMap::try_from(open(names::PORTS)?).map_err(map_err(names::PORTS))?,
            conntrack: HashMap::try_from(open(names::CONNTRACK)?)
                .map_err(map_err(names::CONNTRACK))?,
            ct_reply: HashMap::try_from(open(names::CT_REPLY)?)
                .map_err(map_err(names::CT_REPLY))?,
            stats: PerCpuArray::try_from(open(names::STATS)?).map_err(map_err(names::STATS))?,
            route_gen: Array::try_from(open(names::ROUTE_GEN)?)
                .map_err(map_err(names::ROUTE_GEN))?,
            flow_counts: HashMap::try_from(open(names::FLOW_COUNTS)?)
                .map_err(map_err(names::FLOW_COUNTS))?,
        })
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

    /// Publishes a port. Fails with `Ok(false)` when the key is already there:
    /// `BPF_NOEXIST` makes the check and the insert one step.
    pub fn publish(&mut self, key: &PortKey, target: &PortTarget) -> Result<bool, TablesError> {
        const BPF_NOEXIST: u64 = 1;
        match self.ports.insert(key, target, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(false)
            }
            Err(e) => Err(map_err(names::PORTS)(e)),
        }
    }

    /// Unpublishes ports and flushes the flows that went through them, so no
    /// stale translation outlives a mapping.
    pub fn unpublish(&mut self, keys: &[PortKey]) -> Result<(), TablesError> {
        let mut removed = Vec::with_capacity(keys.len());
        for key in keys {
            let target = match self.ports.get(key, 0) {
                Ok(t) => t,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(names::PORTS)(e)),
            };
            match self.ports.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::PORTS)(e)),
            }
            removed.push((*key, target));
        }
        if removed.is_empty() {
            return Ok(());
        }
        // One pass over the conntrack table for all of them.
        self.flush_flows(|orig, entry| {
            removed.iter().any(|(key, target)| {
                orig.dport == key.host_port
                    && orig.proto == key.proto
                    && (key.host_ip == 0 || orig.daddr == key.host_ip)
                    && entry.reply.saddr == target.container_ip
                    && entry.reply.sport == target.container_port
            })
        })?;
        Ok(())
    }

    pub fn ports(&self) -> Result<Vec<(PortKey, PortTarget)>, TablesError> {
        self.ports
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(names::PORTS))
    }

    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry)>, TablesError> {
        // Entries can vanish between key iteration and lookup (GC, races):
        // skip those rather than fail.
        Ok(self
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .collect::<Vec<_>>())
    }

    /// Removes flows matching `pred`, both keys of each pair. Returns how many.
    pub fn flush_flows(
        &mut self,
        pred: impl Fn(&FlowKey, &FlowEntry) -> bool,
    ) -> Result<usize, TablesError> {
        let doomed: Vec<(FlowKey, FlowKey)> = self
            .flows()?
            .into_iter()
            .filter(|(k, e)| pred(k, e))
            .map(|(k, e)| (k, e.reply))
            .collect();
        for (orig, reply) in &doomed {
            self.remove_flow(orig, reply)?;
        }
        Ok(doomed.len())
    }

    /// Removes one flow: original key first, so a reply lookup that still finds
    /// its half sees a dangling key and deletes it itself.
    pub fn remove_flow(&mut self, orig: &FlowKey, reply: &FlowKey) -> Result<(), TablesError> {
        match self.conntrack.remove(orig) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(names::CONNTRACK)(e)),
        }
        match self.ct_reply.remove(reply) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::CT_REPLY)(e)),
        }
    }

    /// Writes the true number of open flows per original source (what the
    /// datapath's per-source and per-container limits count) from `flows`,
    /// the table as just read: the datapath only ever adds to these, so
    /// without a recount a source's count would never come down.
    pub fn recount_flow_sources(
        &mut self,
        flows: &[(FlowKey, FlowEntry)],
    ) -> Result<(), TablesError> {
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        // Finished connections don't count: they hold no peer's resources,
        // and a full table gives them up first (early drop).
        let finished = |key: &FlowKey, entry: &FlowEntry| {
            key.proto == IPPROTO_TCP
                && matches!(entry.tcp_state, tcp_state::TIME_WAIT | tcp_state::CLOSED)
        };
        for (key, entry) in flows {
            if !finished(key, entry) {
                *counts.entry(key.saddr).or_default() += 1;
            }
        }
        let gone: Vec<u32> = self
            .flow_counts
            .keys()
            .filter_map(Result::ok)
            .filter(|source| !counts.contains_key(source))
            .collect();
        for source in gone {
            match self.flow_counts.remove(&source) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::FLOW_COUNTS)(e)),
            }
        }
        for (source, count) in counts {
            self.flow_counts
                .insert(source, count, 0)
                .map_err(map_err(names::FLOW_COUNTS))?;
        }
        Ok(())
    }

    /// The conntrack entry of `key` as it is now; None when it is gone.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowEntry>, TablesError> {
        match self.conntrack.get(key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::CONNTRACK)(e)),
        }
    }

    /// Reply keys whose original is gone (a crash between the two deletes).
    pub fn dangling_replies(&self) -> Vec<FlowKey> {
        self.ct_reply
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, orig)| matches!(self.conntrack.get(orig, 0), Err(MapError::KeyNotFound)))
            .map(|(reply, _)| reply)
            .collect()
    }

    pub fn remove_reply(&mut self, reply: &FlowKey) {
        let _ = self.ct_reply.remove(reply);
    }

    /// Capacity of the conntrack table.
    pub fn conntrack_capacity(&self) -> u32 {
        self.conntrack_capacity
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
}
