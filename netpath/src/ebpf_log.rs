//! Forwards the datapath's aya-log records to the agent's logger.
//!
//! Each load of the eBPF object makes its own (unpinned) `AYA_LOGS` ring
//! buffer. An agent that adopted a running datapath did not load the
//! programs that are attached (an earlier `up` did), so rather than take the
//! map of its own load, it finds every `AYA_LOGS` map used by a program of
//! this instance (one that uses the instance's pinned `CONFIG` map) and reads
//! each through `EbpfLogger::init_from_id`. Programs without log calls have
//! no such map; then there is nothing to forward.
use std::collections::BTreeMap;

use crate::{directories::Instance, watch::readable};
use aya::{
    maps::{MapData, MapInfo},
    programs::loaded_programs,
};
use aya_log::EbpfLogger;
use netpath_common::names;

/// The map aya-log-ebpf writes records to.
const LOG_MAP: &str = "AYA_LOGS";

/// For each `AYA_LOGS` map of this instance's programs, one program using it.
fn log_maps(instance: &Instance) -> BTreeMap<u32, u32> {
    let config_id = match MapData::from_pin(instance.map_pin(names::CONFIG)).and_then(|m| m.info())
    {
        Ok(info) => info.id(),
        Err(e) => {
            log::debug!("eBPF logs: cannot open the CONFIG map: {e}");
            return BTreeMap::new();
        }
    };
    let mut found = BTreeMap::new();
    for prog in loaded_programs().filter_map(Result::ok) {
        let Ok(Some(map_ids)) = prog.map_ids() else {
            continue;
        };
        if !map_ids.contains(&config_id) {
            continue;
        }
        for id in map_ids {
            let is_log = MapInfo::from_id(id).is_ok_and(|m| m.name_as_str() == Some(LOG_MAP));
            if is_log {
                found.entry(id).or_insert(prog.id());
            }
        }
    }
    found
}

/// Starts one task per log map that moves its records to `log`; the tasks
/// (and the loggers they own) live as long as the runtime. Returns how many.
pub fn forward(instance: &Instance) -> usize {
    let mut started = 0;
    for (map_id, prog_id) in log_maps(instance) {
        let logger = match EbpfLogger::init_from_id(prog_id) {
            Ok(logger) => logger,
            Err(e) => {
                log::warn!("eBPF logs: cannot read log map {map_id}: {e}");
                continue;
            }
        };
        let mut logger = match readable(logger) {
            Ok(fd) => fd,
            Err(e) => {
                log::warn!("eBPF logs: cannot poll log map {map_id}: {e}");
                continue;
            }
        };
        tokio::spawn(async move {
            // Records written before we started.
            logger.get_mut().flush();
            loop {
                match logger.readable_mut().await {
                    Ok(mut guard) => {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                    Err(e) => {
                        log::warn!("eBPF logs: log map {map_id}: {e}");
                        return;
                    }
                }
            }
        });
        started += 1;
    }
    started
}
