//! `netpath stats`: the datapath's counters.
use super::{Result, output::Output};
use crate::{
    directories::Instance,
    flows::{self, StatsView},
    tables::Tables,
};

pub(super) fn run(instance: &Instance, out: Output) -> Result<()> {
    out.show(&flows::stats(&Tables::open(instance)?)?, print)
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
}
