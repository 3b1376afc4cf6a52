//! The agent: what `netpath up` runs in the foreground once the topology and
//! the datapath are in place. The lead engineer owns its body (conntrack GC,
//! log forwarding, metrics); this stub keeps the datapath alive until
//! SIGINT or SIGTERM.
use tokio::signal::unix::{SignalKind, signal};

use crate::{datapath::Datapath, state::State};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(state: &State, datapath: Datapath) -> Result<(), AgentError> {
    let _datapath = datapath;
    let mut terminate = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    log::info!("agent of instance {} running", state.instance);
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    log::info!("agent of instance {} stopping", state.instance);
    Ok(())
}
