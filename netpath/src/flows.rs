//! `netpath flows` and `netpath stats`: the conntrack table and the counters,
//! read from the pinned maps.
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use netpath_common::{
    DIR_ORIGINAL, DIR_REPLY, EVENT_CLOSED, EVENT_OPENED, FlowEntry, FlowEvent, FlowKey,
    IPPROTO_TCP, Ip6, Proto, host::HostAddr, nat_kind, tcp_state,
};
use serde::Serialize;

use crate::{
    state::State,
    tables::{Family, Tables, TablesError},
};

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_MONOTONIC_COARSE`, the clock of `bpf_ktime_get_coarse_ns`: up to
/// a tick behind `monotonic_ns`, never ahead of it.
pub fn monotonic_coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// Now, on the clock the datapath stamps flows with (its `now_ns`: the
/// coarse clock where the kernel has it).
pub fn datapath_clock_ns() -> u64 {
    if crate::datapath::has_coarse_clock() != 0 {
        monotonic_coarse_ns()
    } else {
        monotonic_ns()
    }
}

/// CPU time of the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A flow's protocol number for output: protocols the datapath does not
/// track show as "other".
pub fn proto_name(proto: u8) -> &'static str {
    Proto::from_number(proto).map_or("other", Proto::name)
}

pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        nat_kind::MASQUERADE => "masquerade",
        nat_kind::DNAT => "dnat",
        nat_kind::HAIRPIN => "hairpin",
        nat_kind::ROUTED => "routed",
        _ => "none",
    }
}

pub fn state_name(proto: u8, state: u8) -> &'static str {
    if proto != IPPROTO_TCP {
        return "-";
    }
    match state {
        tcp_state::SYN_SENT => "syn_sent",
        tcp_state::SYN_RECV => "syn_recv",
        tcp_state::ESTABLISHED => "established",
        tcp_state::FIN_WAIT => "fin_wait",
        tcp_state::TIME_WAIT => "time_wait",
        tcp_state::CLOSED => "closed",
        _ => "none",
    }
}

/// One direction's addresses as the packet carries them, of either family.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

impl Tuple {
    pub fn of<A: HostAddr>(key: &FlowKey<A>) -> Self {
        Self {
            src: key.src().into(),
            sport: key.sport(),
            dst: key.dst().into(),
            dport: key.dport(),
        }
    }
}

impl std::fmt::Display for Tuple {
    /// `a.b.c.d:port`, `[v6]:port`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {}",
            SocketAddr::new(self.src, self.sport),
            SocketAddr::new(self.dst, self.dport)
        )
    }
}

/// A flow as `netpath flows` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FlowView {
    pub proto: &'static str,
    pub kind: &'static str,
    /// As the initiator sent it.
    pub original: Tuple,
    /// As it leaves us, translated (the reverse of the reply tuple).
    pub translated: Tuple,
    pub state: &'static str,
    pub age_secs: f64,
    pub idle_secs: f64,
    pub packets_original: u64,
    pub bytes_original: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
    /// The network of the flow's container address (filled from the
    /// state by `flows`).
    pub network: Option<String>,
}

impl FlowView {
    pub fn new<A: HostAddr>(key: &FlowKey<A>, entry: &FlowEntry<A>, now_ns: u64) -> Self {
        let secs = |ns: u64| Duration::from_nanos(now_ns.saturating_sub(ns)).as_secs_f64();
        Self {
            proto: proto_name(key.proto),
            kind: kind_name(entry.nat_kind),
            original: Tuple::of(key),
            translated: Tuple::of(&entry.reply.reversed()),
            state: state_name(key.proto, entry.tcp_state),
            age_secs: secs(entry.created_ns),
            idle_secs: secs(entry.last_seen_ns),
            packets_original: entry.packets[DIR_ORIGINAL],
            bytes_original: entry.bytes[DIR_ORIGINAL],
            packets_reply: entry.packets[DIR_REPLY],
            bytes_reply: entry.bytes[DIR_REPLY],
            network: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    /// Flows involving any of these addresses (of either family); empty:
    /// every flow.
    pub ips: Vec<IpAddr>,
    pub port: Option<u16>,
    pub proto: Option<Proto>,
}

impl FlowFilter {
    /// Does the flow of `key` (original tuple) and `reply` (reply tuple)
    /// involve the address, port (either side, either direction) and protocol
    /// asked for?
    pub fn matches<A: HostAddr>(&self, key: &FlowKey<A>, reply: &FlowKey<A>) -> bool {
        let tuples = [Tuple::of(key), Tuple::of(&reply.reversed())];
        let involves = |ip: &IpAddr| tuples.iter().any(|t| t.src == *ip || t.dst == *ip);
        (self.ips.is_empty() || self.ips.iter().any(involves))
            && self
                .port
                .is_none_or(|p| tuples.iter().any(|t| t.sport == p || t.dport == p))
            && self.proto.is_none_or(|p| key.proto() == Some(p))
    }
}

/// A flow event of the `EVENTS` ring buffer as `flows --watch` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FlowEventView {
    /// "opened" or "closed".
    pub event: &'static str,
    /// Wall-clock time of the event, RFC 3339 (UTC).
    pub time: String,
    pub proto: &'static str,
    pub kind: &'static str,
    pub original: Tuple,
    pub translated: Tuple,
    pub state: &'static str,
    /// The network of the flow's container address (see [`network_of`]).
    pub network: Option<String>,
}

/// The network of a flow's container side: the sender, else the translated
/// target of a published port, else the destination.
pub fn network_of(state: &State, original: &Tuple, translated: &Tuple) -> Option<String> {
    [original.src, translated.dst, original.dst]
        .into_iter()
        .find_map(|ip| match ip {
            IpAddr::V4(ip) => state.network_of(ip).map(str::to_owned),
            IpAddr::V6(ip) => state
                .networks
                .iter()
                .find(|(_, n)| n.subnet6.is_some_and(|s| s.contains(&ip)))
                .map(|(name, _)| name.clone()),
        })
}

impl FlowEventView {
    /// `wall_offset_ns`: `CLOCK_REALTIME - CLOCK_MONOTONIC`, to turn the
    /// event's `bpf_ktime_get_ns` stamp into a wall-clock time.
    pub fn new<A: HostAddr>(event: &FlowEvent<A>, wall_offset_ns: i128) -> Self {
        let wall_ns = i128::from(event.ts_ns) + wall_offset_ns;
        // Fixed microseconds, so text lines stay aligned.
        let time = jiff::Timestamp::from_nanosecond(wall_ns)
            .map_or_else(|_| format!("{}ns", event.ts_ns), |t| format!("{t:.6}"));
        Self {
            event: match event.kind {
                EVENT_OPENED => "opened",
                EVENT_CLOSED => "closed",
                _ => "unknown",
            },
            time,
            proto: proto_name(event.key.proto),
            kind: kind_name(event.nat_kind),
            original: Tuple::of(&event.key),
            translated: Tuple::of(&event.reply.reversed()),
            state: state_name(event.key.proto, event.tcp_state),
            network: None,
        }
    }
}

impl std::fmt::Display for FlowEventView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:<6} {:<5} {:<10} {} => {} {} {}",
            self.time,
            self.event,
            self.proto,
            self.kind,
            self.original,
            self.translated,
            self.state,
            self.network.as_deref().unwrap_or("-")
        )
    }
}

/// `CLOCK_REALTIME`, in nanoseconds since the epoch.
pub fn realtime_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Both families' flows, oldest first.
pub fn list(tables: &Tables, filter: &FlowFilter) -> Result<Vec<FlowView>, TablesError> {
    let now = monotonic_ns();
    let mut flows = views::<u32>(tables, filter, now)?;
    flows.extend(views::<Ip6>(tables, filter, now)?);
    flows.sort_by(|a, b| a.age_secs.total_cmp(&b.age_secs).reverse());
    Ok(flows)
}

fn views<A: Family>(
    tables: &Tables,
    filter: &FlowFilter,
    now: u64,
) -> Result<Vec<FlowView>, TablesError> {
    Ok(tables
        .flows::<A>()?
        .iter()
        .filter(|(k, e)| filter.matches(k, &e.reply))
        .map(|(k, e)| FlowView::new(k, e, now))
        .collect())
}

/// `netpath stats`.
#[derive(Clone, Debug, Serialize)]
pub struct StatsView {
    pub counters: std::collections::BTreeMap<&'static str, u64>,
    /// IPv4 flows, and the IPv4 table's size.
    pub conntrack_entries: usize,
    pub conntrack_capacity: u32,
    /// IPv6 flows, and the IPv6 table's size.
    pub conntrack6_entries: usize,
    pub conntrack6_capacity: u32,
    /// Bumped on every route, neighbour, address or link change the agent
    /// sees; flows re-resolve their cached next hop after each.
    pub route_generation: u32,
    /// Isolation drops by network and reason.
    pub networks: std::collections::BTreeMap<String, std::collections::BTreeMap<&'static str, u64>>,
}

/// Flows in the family's conntrack table.
pub fn flow_count<A: Family>(tables: &Tables) -> Result<usize, TablesError> {
    let mut count = 0;
    tables.for_each_flow::<A>(|_, _| count += 1)?;
    Ok(count)
}

pub fn stats(tables: &Tables, state: &State) -> Result<StatsView, TablesError> {
    Ok(StatsView {
        networks: crate::network::drops(tables, state)?,
        counters: tables.counters()?.into_iter().collect(),
        conntrack_entries: flow_count::<u32>(tables)?,
        conntrack_capacity: tables.conntrack_capacity::<u32>(),
        conntrack6_entries: flow_count::<Ip6>(tables)?,
        conntrack6_capacity: tables.conntrack_capacity::<Ip6>(),
        route_generation: tables.route_generation()?,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn ipv6_tuples_print_in_brackets_and_filters_take_either_family() {
        let (client, container): (Ipv6Addr, Ipv6Addr) = (
            "2001:db8::2".parse().expect("IPv6"),
            "fd00::2".parse().expect("IPv6"),
        );
        let key = FlowKey::new(client, container, 40000, 80, Proto::Tcp);
        let view = FlowView::new(&key, &FlowEntry::default(), 0);
        assert_eq!(
            view.original.to_string(),
            "[2001:db8::2]:40000 -> [fd00::2]:80"
        );
        let v4 = FlowKey::new(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::LOCALHOST,
            1,
            2,
            Proto::Udp,
        );
        assert_eq!(Tuple::of(&v4).to_string(), "10.0.0.1:1 -> 127.0.0.1:2");

        let by_ip = |ips: Vec<IpAddr>| FlowFilter {
            ips,
            ..FlowFilter::default()
        };
        let reply = key.reversed();
        assert!(by_ip(vec![container.into()]).matches(&key, &reply));
        assert!(by_ip(vec![Ipv4Addr::LOCALHOST.into(), client.into()]).matches(&key, &reply));
        assert!(!by_ip(vec![Ipv4Addr::LOCALHOST.into()]).matches(&key, &reply));
        // ICMPv6 is `icmp`.
        let ping = FlowKey::new(client, container, 7, 7, Proto::Icmp);
        let icmp = FlowFilter {
            proto: Some(Proto::Icmp),
            ..FlowFilter::default()
        };
        assert_eq!(ping.proto, netpath_common::IPPROTO_ICMPV6);
        assert!(icmp.matches(&ping, &ping.reversed()));
        assert_eq!(proto_name(ping.proto), "icmp");
    }
}
