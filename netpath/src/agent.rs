//! The agent: what `netpath up` runs in the foreground once the topology and
//! the datapath are in place. It expires conntrack entries (both keys of a
//! flow together) and repairs dangling reply keys, forwards the datapath's
//! log records, and serves Prometheus metrics. Everything else lives in
//! pinned maps, so the datapath runs on when the agent stops.
use std::{
    net::SocketAddr,
    sync::{Arc, PoisonError},
    time::Duration,
};

use netpath_common::{Config, FlowEntry, FlowKey, Ip6};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::Notify,
};

use crate::{
    config::Timeouts,
    datapath::Datapath,
    directories::Instance,
    ebpf_log,
    flows::{FlowView, datapath_clock_ns, monotonic_ns, thread_cpu_ns},
    metrics::{self, Retired},
    state::State,
    tables::{Family, FlowTally, Tables, TablesError},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot watch route and neighbour changes (rtnetlink): {0}")]
    RouteWatch(std::io::Error),
    #[error("cannot open the maps for metrics: {0}")]
    MetricsTables(#[from] TablesError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The conntrack GC, with what it keeps between passes for each address
/// family: both families' tables are collected alike.
#[derive(Default)]
pub struct Collector {
    v4: FamilyCollector<u32>,
    v6: FamilyCollector<Ip6>,
    passes: u64,
}

/// What the GC keeps between passes for one family's tables: buffers sized
/// for the table.
struct FamilyCollector<A: Family> {
    tally: FlowTally<A>,
    candidates: Vec<FlowKey<A>>,
    /// Reply keys of the flows the last walk found, sorted.
    replies: Vec<A::KeyBits>,
}

impl<A: Family> Default for FamilyCollector<A> {
    fn default() -> Self {
        Self {
            tally: FlowTally::default(),
            candidates: Vec::new(),
            replies: Vec::new(),
        }
    }
}

/// Every how many passes the GC also walks `CT_REPLY` for reply keys whose
/// original is gone: only a crash between a flow's two deletes leaves
/// one, and the datapath deletes those it finds itself.
const DANGLING_EVERY: u64 = 16;

impl Collector {
    /// One garbage-collection pass over both families' tables; returns how
    /// many flows it removed. The traffic of removed flows through
    /// published ports goes to `retired`, so the per-port metrics keep
    /// counting.
    pub fn collect(
        &mut self,
        datapath: &mut Datapath,
        retired: &Retired,
        timeouts: &Timeouts,
    ) -> Result<usize, TablesError> {
        let look_for_dangling = self.passes.is_multiple_of(DANGLING_EVERY);
        self.passes += 1;
        let tables = &mut datapath.tables;
        let config = tables.config()?;
        let v4 = self
            .v4
            .collect(tables, &config, retired, timeouts, look_for_dangling)?;
        let v6 = self
            .v6
            .collect(tables, &config, retired, timeouts, look_for_dangling)?;
        Ok(v4 + v6)
    }
}

impl<A: Family> FamilyCollector<A> {
    /// One pass over this family's tables.
    ///
    /// One walk of the table (batched reads) judges every flow and counts
    /// those that stay for the datapath's limits and SNAT pools. The
    /// datapath keeps updating entries while it runs, so each candidate is
    /// read again right before it is deleted and judged on that fresh copy:
    /// a flow that saw a packet since (its `last_seen_ns` moved) is kept,
    /// unless it is a handshake past its lifetime, which no packet extends
    /// (`Timeouts::expired`).
    fn collect(
        &mut self,
        tables: &mut Tables,
        config: &Config,
        retired: &Retired,
        timeouts: &Timeouts,
        look_for_dangling: bool,
    ) -> Result<usize, TablesError> {
        let started = std::time::Instant::now();
        let now = monotonic_ns();
        self.tally.clear(config);
        let read_from = datapath_clock_ns();
        tables.read_counts(&mut self.tally)?;
        self.tally.counts_read(read_from, datapath_clock_ns());
        self.candidates.clear();
        self.replies.clear();
        let mut walked = 0;
        tables.for_each_flow::<A>(|key, entry| {
            walked += 1;
            if timeouts.expired(key, entry, now) {
                self.candidates.push(*key);
            } else {
                self.tally.add(key, entry);
                if look_for_dangling {
                    self.replies.push(A::key_bits(&entry.reply));
                }
            }
        })?;
        let mut expired: Vec<(FlowKey<A>, FlowEntry<A>)> = Vec::new();
        for key in &self.candidates {
            let Some(entry) = tables.flow(key)? else {
                continue;
            };
            if !timeouts.expired(key, &entry, monotonic_ns()) {
                self.tally.add(key, &entry);
                continue;
            }
            tables.remove_flow(key, &entry.reply)?;
            log::trace!(
                "conntrack GC: expired {}",
                FlowView::new(key, &entry, now).original
            );
            expired.push((*key, entry));
        }
        tables.write_tally(&self.tally)?;
        if !expired.is_empty() {
            let mut totals = retired.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, entry) in &expired {
                metrics::account(&mut totals, key, entry);
            }
        }
        if look_for_dangling {
            self.remove_dangling_replies(tables)?;
        }
        if walked > 0 {
            log::trace!(
                "conntrack GC ({}): walked {walked} flows in {:?}, removed {}",
                A::NAMES.conntrack,
                started.elapsed(),
                expired.len()
            );
        }
        Ok(expired.len())
    }

    /// Removes reply keys whose original is gone. A reply key that no flow
    /// of the walk has is looked up once more: its flow may be newer than
    /// the walk.
    fn remove_dangling_replies(&mut self, tables: &mut Tables) -> Result<(), TablesError> {
        self.replies.sort_unstable();
        let mut unknown = Vec::new();
        tables.for_each_reply::<A>(|reply, original| {
            if self.replies.binary_search(&A::key_bits(reply)).is_err() {
                unknown.push((*reply, *original));
            }
        })?;
        let mut dangling = 0;
        for (reply, original) in unknown {
            if tables.flow(&original)?.is_none() {
                tables.remove_reply(&reply);
                dangling += 1;
            }
        }
        if dangling > 0 {
            log::debug!(
                "conntrack GC: {dangling} dangling reply keys removed from {}",
                A::NAMES.ct_reply
            );
        }
        Ok(())
    }
}

/// The shortest time between two GC passes.
const GC_INTERVAL: Duration = Duration::from_secs(2);
/// The GC takes at most 1/GC_CPU_SHARE of a core: a pass that cost more
/// than that share of `GC_INTERVAL` (a large table) pushes the next one
/// further out.
const GC_CPU_SHARE: u32 = 50;

/// Watches the host netns for link, address, route and neighbour changes,
/// any of which can change where a flow leaves, and wakes `changed` for each
/// burst of them. The datapath's cached next hops are then invalidated by a
/// new route generation.
fn watch_routes(changed: Arc<Notify>) -> Result<(), AgentError> {
    use futures::StreamExt;
    use netlink_sys::{AsyncSocket, SocketAddr};
    use rtnetlink::constants::{
        RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE, RTMGRP_IPV6_IFADDR,
        RTMGRP_IPV6_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH,
    };

    let (mut connection, _handle, mut messages) =
        rtnetlink::new_connection().map_err(AgentError::RouteWatch)?;
    let groups = RTMGRP_LINK
        | RTMGRP_NEIGH
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV4_RULE
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV6_ROUTE;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .map_err(AgentError::RouteWatch)?;
    tokio::spawn(connection);
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            changed.notify_one();
        }
        // Events may have been lost on the way out (say ENOBUFS).
        changed.notify_one();
        log::warn!("route watch ended: cached next hops now expire by age only (1 s)");
    });
    Ok(())
}

/// What the agent does besides GC.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Serve Prometheus metrics here (in the host netns).
    pub metrics: Option<SocketAddr>,
}

/// The agent, set up before `up` builds anything so that what can fail
/// (binding the metrics address) fails first.
pub struct Agent {
    instance: Instance,
    metrics: Option<TcpListener>,
}

impl Agent {
    pub async fn prepare(instance: &Instance, options: &AgentOptions) -> Result<Self, AgentError> {
        let metrics = match options.metrics {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::Metrics { addr, source })?,
            ),
            None => None,
        };
        log::debug!(
            "agent of instance {instance}: log level {}, metrics {}",
            log::max_level(),
            options
                .metrics
                .map_or_else(|| "off".to_owned(), |a| a.to_string())
        );
        Ok(Self {
            instance: instance.clone(),
            metrics,
        })
    }

    /// Runs until SIGINT or SIGTERM.
    pub async fn run(self, state: &State, mut datapath: Datapath) -> Result<(), AgentError> {
        let mut terminate = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
        let retired = Retired::default();
        let started = metrics::unix_now();
        if let Some(listener) = self.metrics {
            if let Ok(addr) = listener.local_addr() {
                log::info!("serving Prometheus metrics on http://{addr}/metrics");
            }
            let source = metrics::Source {
                instance: self.instance.clone(),
                tables: Arc::new(Tables::open(&self.instance)?),
                retired: retired.clone(),
                started,
            };
            tokio::spawn(metrics::serve(listener, source));
        }
        match ebpf_log::forward(&self.instance) {
            0 => log::debug!("the datapath has no log maps: no eBPF log records to forward"),
            n => log::debug!("forwarding eBPF log records from {n} log map(s)"),
        }
        let routes_changed = Arc::new(Notify::new());
        watch_routes(routes_changed.clone())?;
        let mut collector = Collector::default();
        let gc = tokio::time::sleep(GC_INTERVAL);
        tokio::pin!(gc);
        let mut xdp_fallback_told = false;
        log::info!("agent of instance {} running", state.instance);
        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                () = routes_changed.notified() => match datapath.tables.bump_route_generation() {
                    Ok(generation) => log::debug!("routes or neighbours changed: route generation {generation}"),
                    Err(e) => log::warn!("invalidating cached next hops: {e}"),
                },
                () = &mut gc => {
                    // The pass runs on this thread, without awaiting.
                    let cpu = thread_cpu_ns();
                    match collector.collect(&mut datapath, &retired, &state.ct_timeouts) {
                        Ok(0) => {}
                        Ok(n) => log::info!("conntrack GC: {n} expired flows removed"),
                        Err(e) => log::warn!("conntrack GC: {e}"),
                    }
                    if !xdp_fallback_told
                        && datapath.tables.config().is_ok_and(|cfg| cfg.xdp_fell_back())
                    {
                        xdp_fallback_told = true;
                        log::warn!(
                            "uplink {} delivers frames with partial checksums (a veth peer with TX \
                             checksumming on), which XDP can't translate: the uplink's translations \
                             run in TC from now on (turn the peer's TX checksumming off to keep XDP)",
                            state.uplink
                        );
                    }
                    let spent = Duration::from_nanos(thread_cpu_ns().saturating_sub(cpu));
                    let next = GC_INTERVAL.max(spent * GC_CPU_SHARE);
                    gc.as_mut().reset(tokio::time::Instant::now() + next);
                }
            }
        }
        log::info!(
            "agent of instance {} stopping; the datapath stays",
            state.instance
        );
        Ok(())
    }
}
