//! `netpath top`: flow rates from two successive reads of the conntrack
//! table's counters, and the rates of the verdict and drop counters.
use std::{collections::HashMap, time::Duration};

use netpath_common::{Addr, FlowEntry, FlowKey, Ip6, host::HostAddr};
use serde::Serialize;

use crate::{
    flows::{FlowView, monotonic_ns},
    tables::{Counters, Tables, TablesError},
};

/// What flows are ordered by, highest rate (or lowest address) first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SortBy {
    #[default]
    Packets,
    Bytes,
    /// The original source address and port.
    Source,
}

impl SortBy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Packets => "packets",
            Self::Bytes => "bytes",
            Self::Source => "source",
        }
    }
}

/// One read of the maps: both families' flows.
pub struct Sample {
    at_ns: u64,
    flows: Vec<(FlowKey, FlowEntry)>,
    flows6: Vec<(FlowKey<Ip6>, FlowEntry<Ip6>)>,
    counters: Counters,
}

impl Sample {
    pub fn read(tables: &Tables) -> Result<Self, TablesError> {
        Ok(Self {
            flows: tables.flows()?,
            flows6: tables.flows()?,
            counters: tables.counters()?,
            at_ns: monotonic_ns(),
        })
    }
}

/// A flow with its rates over the interval, both directions together.
#[derive(Clone, Debug, Serialize)]
pub struct FlowRate {
    #[serde(flatten)]
    pub flow: FlowView,
    pub packets_per_sec: f64,
    pub bytes_per_sec: f64,
}

impl FlowRate {
    pub fn packets(&self) -> u64 {
        self.flow.packets_original + self.flow.packets_reply
    }

    pub fn bytes(&self) -> u64 {
        self.flow.bytes_original + self.flow.bytes_reply
    }
}

/// A datapath counter and its rate over the interval.
#[derive(Clone, Debug, Serialize)]
pub struct CounterRate {
    pub name: &'static str,
    pub value: u64,
    pub per_sec: f64,
}

/// What `top` shows for one interval.
#[derive(Clone, Debug, Serialize)]
pub struct TopView {
    pub interval_secs: f64,
    pub sort: SortBy,
    /// Of both families' tables.
    pub conntrack_entries: usize,
    pub conntrack_capacity: u32,
    pub flows: Vec<FlowRate>,
    pub counters: Vec<CounterRate>,
}

fn totals<A: Addr>(entry: &FlowEntry<A>) -> (u64, u64) {
    (
        entry.packets.iter().fold(0, |a, b| a.wrapping_add(*b)),
        entry.bytes.iter().fold(0, |a, b| a.wrapping_add(*b)),
    )
}

/// The rates of one family's flows between two reads, `earlier` first,
/// `secs` apart.
fn rates<A: HostAddr>(
    earlier: &[(FlowKey<A>, FlowEntry<A>)],
    later: &[(FlowKey<A>, FlowEntry<A>)],
    later_ns: u64,
    secs: f64,
) -> Vec<FlowRate> {
    let before: HashMap<&FlowKey<A>, &FlowEntry<A>> =
        earlier.iter().map(|(key, entry)| (key, entry)).collect();
    later
        .iter()
        .map(|(key, entry)| {
            // A flow new in the interval (or a key reused by a new flow)
            // counts from zero.
            let base = before
                .get(key)
                .filter(|old| old.created_ns == entry.created_ns)
                .map_or((0, 0), |old| totals(old));
            let now = totals(entry);
            FlowRate {
                flow: FlowView::new(key, entry, later_ns),
                packets_per_sec: now.0.saturating_sub(base.0) as f64 / secs,
                bytes_per_sec: now.1.saturating_sub(base.1) as f64 / secs,
            }
        })
        .collect()
}

/// The rates between two samples of the same maps, `earlier` first.
/// `capacity`: of both families' tables.
pub fn compare(earlier: &Sample, later: &Sample, capacity: u32, sort: SortBy) -> TopView {
    let secs = Duration::from_nanos(later.at_ns.saturating_sub(earlier.at_ns))
        .as_secs_f64()
        .max(1e-3);
    let mut flows = rates(&earlier.flows, &later.flows, later.at_ns, secs);
    flows.extend(rates(&earlier.flows6, &later.flows6, later.at_ns, secs));
    sort_flows(&mut flows, sort);
    let counters = later
        .counters
        .iter()
        .map(|&(name, value)| {
            let old = earlier
                .counters
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, v)| *v);
            CounterRate {
                name,
                value,
                per_sec: value.saturating_sub(old) as f64 / secs,
            }
        })
        .collect();
    TopView {
        interval_secs: secs,
        sort,
        conntrack_entries: later.flows.len() + later.flows6.len(),
        conntrack_capacity: capacity,
        flows,
        counters,
    }
}

pub fn sort_flows(flows: &mut [FlowRate], sort: SortBy) {
    match sort {
        SortBy::Packets => flows.sort_by(|a, b| {
            b.packets_per_sec
                .total_cmp(&a.packets_per_sec)
                .then(b.bytes_per_sec.total_cmp(&a.bytes_per_sec))
                .then(b.packets().cmp(&a.packets()))
        }),
        SortBy::Bytes => flows.sort_by(|a, b| {
            b.bytes_per_sec
                .total_cmp(&a.bytes_per_sec)
                .then(b.packets_per_sec.total_cmp(&a.packets_per_sec))
                .then(b.bytes().cmp(&a.bytes()))
        }),
        SortBy::Source => flows.sort_by(|a, b| {
            (a.flow.original.src, a.flow.original.sport)
                .cmp(&(b.flow.original.src, b.flow.original.sport))
        }),
    }
}

/// A rate in at most 6 characters: 0, 12.5, 980, 1.2k, 45.0M.
pub fn short(value: f64) -> String {
    match scaled(value) {
        Some(text) => text,
        None if value == 0.0 => "0".to_owned(),
        None if value < 100.0 => format!("{value:.1}"),
        None => format!("{value:.0}"),
    }
}

/// A count in at most 6 characters: 7, 980, 1.2k, 45.0M.
pub fn short_count(value: u64) -> String {
    scaled(value as f64).unwrap_or_else(|| value.to_string())
}

/// `value` in thousands, millions or billions, when it is that large.
fn scaled(value: f64) -> Option<String> {
    const UNITS: [(f64, &str); 3] = [(1e9, "G"), (1e6, "M"), (1e3, "k")];
    UNITS
        .iter()
        .find(|(scale, _)| value >= *scale)
        .map(|(scale, unit)| format!("{:.1}{unit}", value / scale))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use netpath_common::Proto;

    use super::*;

    fn flow(sport: u16, created_ns: u64, packets: u64) -> (FlowKey, FlowEntry) {
        let key = FlowKey::new(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            sport,
            80,
            Proto::Tcp,
        );
        let entry = FlowEntry {
            created_ns,
            packets: [packets, 0],
            bytes: [packets * 10 * u64::from(sport), 0],
            ..FlowEntry::default()
        };
        (key, entry)
    }

    fn sample(at_ns: u64, flows: Vec<(FlowKey, FlowEntry)>, drops: u64) -> Sample {
        Sample {
            at_ns,
            flows,
            flows6: Vec::new(),
            counters: vec![("drop_unsolicited", drops)],
        }
    }

    #[test]
    fn rates_come_from_the_difference_and_order_the_flows() {
        let second = 1_000_000_000;
        let earlier = sample(
            second,
            vec![flow(1000, 1, 100), flow(2000, 1, 100), flow(3000, 1, 100)],
            5,
        );
        let later = sample(
            3 * second,
            vec![
                // 20 packets in 2 s, small ones.
                flow(1000, 1, 120),
                // 4 packets in 2 s, large ones.
                flow(2000, 1, 104),
                // Idle.
                flow(3000, 1, 100),
                // New in the interval: all of its packets count.
                flow(4000, 2 * second, 6),
            ],
            11,
        );
        let view = compare(&earlier, &later, 1024, SortBy::Packets);
        let order =
            |v: &TopView| -> Vec<u16> { v.flows.iter().map(|f| f.flow.original.sport).collect() };
        assert_eq!(order(&view), [1000, 4000, 2000, 3000]);
        assert_eq!(view.flows[0].packets_per_sec, 10.0);
        assert_eq!(view.flows[1].packets_per_sec, 3.0);
        assert_eq!(view.flows[3].packets_per_sec, 0.0);
        assert_eq!(view.counters[0].per_sec, 3.0);
        assert_eq!((view.conntrack_entries, view.conntrack_capacity), (4, 1024));

        let view = compare(&earlier, &later, 1024, SortBy::Bytes);
        // 4000: 6 × 40 kB / 2 s, 1000: 20 × 10 kB / 2 s, 2000: 4 × 20 kB / 2 s.
        assert_eq!(order(&view), [4000, 1000, 2000, 3000]);
        let view = compare(&earlier, &later, 1024, SortBy::Source);
        assert_eq!(order(&view), [1000, 2000, 3000, 4000]);
    }

    #[test]
    fn a_reused_key_counts_from_zero() {
        let earlier = sample(0, vec![flow(1000, 1, 500)], 0);
        let later = sample(1_000_000_000, vec![flow(1000, 7, 2)], 0);
        let view = compare(&earlier, &later, 1, SortBy::Packets);
        assert_eq!(view.flows[0].packets_per_sec, 2.0);
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(980.0), "980");
        assert_eq!(short(1234.0), "1.2k");
        assert_eq!(short(45e6), "45.0M");
        assert_eq!(short_count(12), "12");
        assert_eq!(short_count(1000), "1.0k");
    }
}
