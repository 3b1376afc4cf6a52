//! The agent: what `netpath up` runs in the foreground once the topology and
//! the datapath are in place. It expires conntrack entries (both keys of a
//! flow together) and repairs dangling reply keys. Everything else lives in
//! pinned maps, so the datapath runs on when the agent stops.
use std::time::Duration;

use netpath_common::{FlowEntry, FlowKey, IPPROTO_TCP, tcp_state};
use tokio::signal::unix::{SignalKind, signal};

use crate::{datapath::Datapath, flows::monotonic_ns, state::State, tables::TablesError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// How long an idle flow lives, by protocol and TCP state (nf_conntrack's
/// spirit, shorter where a NAT port is at stake).
pub fn timeout(key: &FlowKey, entry: &FlowEntry) -> Duration {
    const SEC: u64 = 1;
    let secs = if key.proto == IPPROTO_TCP {
        match entry.tcp_state {
            tcp_state::SYN_SENT | tcp_state::SYN_RECV => 60 * SEC,
            tcp_state::ESTABLISHED => 6 * 3600 * SEC,
            tcp_state::FIN_WAIT => 120 * SEC,
            tcp_state::TIME_WAIT => 30 * SEC,
            tcp_state::CLOSED => 10 * SEC,
            _ => 300 * SEC,
        }
    } else if entry.flags & netpath_common::FLOW_SEEN_REPLY != 0 {
        // UDP streams and answered pings.
        120 * SEC
    } else {
        30 * SEC
    };
    Duration::from_secs(secs)
}

/// One garbage-collection pass; returns how many flows it removed.
pub fn collect_garbage(datapath: &mut Datapath) -> Result<usize, TablesError> {
    let now = monotonic_ns();
    let tables = &mut datapath.tables;
    let removed = tables.flush_flows(|key, entry| {
        let idle = Duration::from_nanos(now.saturating_sub(entry.last_seen_ns));
        idle > timeout(key, entry)
    })?;
    for reply in tables.dangling_replies() {
        tables.remove_reply(&reply);
    }
    Ok(removed)
}

const GC_INTERVAL: Duration = Duration::from_secs(2);

/// Runs until SIGINT or SIGTERM.
pub async fn run(state: &State, mut datapath: Datapath) -> Result<(), AgentError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let mut gc = tokio::time::interval(GC_INTERVAL);
    log::info!("agent of instance {} running", state.instance);
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = gc.tick() => match collect_garbage(&mut datapath) {
                Ok(0) => {}
                Ok(n) => log::info!("conntrack GC: {n} expired flows removed"),
                Err(e) => log::warn!("conntrack GC: {e}"),
            },
        }
    }
    log::info!("agent of instance {} stopping; the datapath stays", state.instance);
    Ok(())
}
