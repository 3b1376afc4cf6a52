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
    for (name, value) in &stats.counters {
        println!("{name:<24} {value}");
    }
    println!(
        "{:<24} {}/{}",
        "conntrack_entries", stats.conntrack_entries, stats.conntrack_capacity
    );
    println!("{:<24} {}", "route_generation", stats.route_generation);
    for (network, drops) in &stats.networks {
        for (reason, value) in drops {
            println!("{:<24} {value}", format!("{network}.drop_{reason}"));
        }
    }
}
