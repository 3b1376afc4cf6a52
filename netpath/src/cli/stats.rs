//! `netpath stats`: the datapath's counters.
use super::{Result, output::Output};
use crate::{
    directories::Instance,
    flows::{self, StatsView},
    state,
    tables::Tables,
};

pub(super) fn run(instance: &Instance, out: Output) -> Result<()> {
    let state = state::load_required(instance)?;
    out.show(&flows::stats(&Tables::open(instance)?, &state)?, print)
}

fn print(stats: &StatsView) {
    let network_drops: Vec<(String, u64)> = stats
        .networks
        .iter()
        .flat_map(|(network, drops)| {
            drops
                .iter()
                .map(move |(reason, value)| (format!("{network}.drop_{reason}"), *value))
        })
        .collect();
    // One column for every name, however long a network's name is.
    let width = network_drops
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(0)
        .max(24);
    for (name, value) in &stats.counters {
        println!("{name:<width$} {value}");
    }
    println!(
        "{:<width$} {}/{}",
        "conntrack_entries", stats.conntrack_entries, stats.conntrack_capacity
    );
    println!(
        "{:<width$} {}/{}",
        "conntrack6_entries", stats.conntrack6_entries, stats.conntrack6_capacity
    );
    println!("{:<width$} {}", "route_generation", stats.route_generation);
    for (name, value) in &network_drops {
        println!("{name:<width$} {value}");
    }
}
