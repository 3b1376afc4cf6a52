//! Prometheus metrics, served by the agent on `up --metrics ADDR`: a minimal
//! HTTP/1.x server that answers `GET /metrics` in the text exposition format
//! (0.0.4), computed from the pinned maps at each scrape.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use netpath_common::{
    Addr, DIR_ORIGINAL, DIR_REPLY, FlowEntry, FlowKey, Ip6, SnatDestination, host::HostAddr,
    nat_kind,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    directories::Instance,
    flows::proto_name,
    network, state,
    tables::{Counters, Tables, TablesError},
};

/// A scraper gets this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head we read; a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 8192;
/// Pause after a failed accept (out of fds) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A published port as the metrics label it: the original destination port
/// (the host port) and the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortLabel {
    pub port: u16,
    pub proto: u8,
}

/// Packets and bytes per direction (`DIR_ORIGINAL`, `DIR_REPLY`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

impl Traffic {
    fn add<A: Addr>(&mut self, entry: &FlowEntry<A>) {
        for dir in [DIR_ORIGINAL, DIR_REPLY] {
            self.packets[dir] = self.packets[dir].wrapping_add(entry.packets[dir]);
            self.bytes[dir] = self.bytes[dir].wrapping_add(entry.bytes[dir]);
        }
    }
}

pub type PortTraffic = BTreeMap<PortLabel, Traffic>;

/// Traffic of flows the agent's GC removed, so per-port counters keep
/// counting after a flow expires instead of going down. (Flows flushed by
/// other commands, `publish rm` or `container rm`, are not carried over: a
/// scraper sees a counter reset then.)
pub type Retired = Arc<Mutex<PortTraffic>>;

/// The published port a flow went through, if it is one (DNAT from the
/// outside, or hairpin from a container).
pub fn published_port<A: HostAddr>(key: &FlowKey<A>, entry: &FlowEntry<A>) -> Option<PortLabel> {
    matches!(entry.nat_kind, nat_kind::DNAT | nat_kind::HAIRPIN).then(|| PortLabel {
        port: key.dport(),
        proto: key.proto,
    })
}

/// Adds a flow's traffic to `totals` if it went through a published port.
/// Both families' flows count under the same label: a host port is
/// published on both with one mapping.
pub fn account<A: HostAddr>(totals: &mut PortTraffic, key: &FlowKey<A>, entry: &FlowEntry<A>) {
    if let Some(port) = published_port(key, entry) {
        totals.entry(port).or_default().add(entry);
    }
}

/// Builds the exposition text: one `# HELP`/`# TYPE` header per family.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let _ = write!(self.0, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// What a scrape reads from the maps.
pub struct Snapshot {
    pub counters: Counters,
    /// The IPv4 and the IPv6 conntrack table, and their sizes.
    pub flows: Vec<(FlowKey, FlowEntry)>,
    pub flows6: Vec<(FlowKey<Ip6>, FlowEntry<Ip6>)>,
    pub conntrack_capacity: u32,
    pub conntrack6_capacity: u32,
    /// How many ports the SNAT range holds.
    pub snat_range_size: u32,
    /// First packets each restricted port's allow-list refused.
    pub refused: BTreeMap<PortLabel, u64>,
    /// Isolation refusals by network name, then `network_drop` reason.
    pub network_drops: BTreeMap<String, BTreeMap<&'static str, u64>>,
}

/// The most SNAT ports any one destination (address, port, protocol) holds:
/// a translated flow's reply tuple must be unique, so the range runs out
/// per destination (`drop_no_snat_port`), not for the host as a whole.
pub fn snat_ports_busiest_destination<A: Addr>(flows: &[(FlowKey<A>, FlowEntry<A>)]) -> u64 {
    let mut per_destination = std::collections::HashMap::<SnatDestination<A>, u64>::new();
    for (_, entry) in flows {
        if matches!(entry.nat_kind, nat_kind::MASQUERADE | nat_kind::HAIRPIN) {
            *per_destination
                .entry(SnatDestination::of_reply(&entry.reply))
                .or_default() += 1;
        }
    }
    per_destination.into_values().max().unwrap_or(0)
}

/// Everything a scrape shows, from already-read tables. `started`: when
/// the agent started, in seconds since the epoch.
pub fn render(snapshot: &Snapshot, retired: &PortTraffic, started: u64) -> String {
    let Snapshot {
        counters,
        flows,
        flows6,
        conntrack_capacity: capacity,
        conntrack6_capacity: capacity6,
        snat_range_size,
        refused,
        network_drops,
    } = snapshot;
    const PACKETS: &str = "netpath_packets_total";
    const DROPS: &str = "netpath_drops_total";
    const CREATED: &str = "netpath_conntrack_flows_created_total";
    let mut out = Exposition::default();
    // The STATS slots fall into three families: drop reasons, the flow
    // creation count (flows, not packets), and the other packet outcomes.
    out.family(
        PACKETS,
        "counter",
        "Packets seen by the eBPF datapath, by verdict (a packet may count under more than one).",
    );
    for (name, value) in counters {
        if !name.starts_with("drop_") && *name != "flow_created" {
            out.sample(PACKETS, &[("verdict", name)], *value);
        }
    }
    out.family(
        DROPS,
        "counter",
        "Packets the eBPF datapath dropped, by reason.",
    );
    for (name, value) in counters {
        if let Some(reason) = name.strip_prefix("drop_") {
            out.sample(DROPS, &[("reason", reason)], *value);
        }
    }
    out.family(
        CREATED,
        "counter",
        "Conntrack entries created by the datapath.",
    );
    let created = counters.iter().find(|(n, _)| *n == "flow_created");
    out.sample(CREATED, &[], created.map_or(0, |(_, v)| *v));
    out.family(
        "netpath_conntrack_entries",
        "gauge",
        "Flows in the conntrack table, by address family.",
    );
    const IPV4: &[(&str, &str)] = &[("family", "ipv4")];
    const IPV6: &[(&str, &str)] = &[("family", "ipv6")];
    out.sample("netpath_conntrack_entries", IPV4, flows.len() as u64);
    out.sample("netpath_conntrack_entries", IPV6, flows6.len() as u64);
    out.family(
        "netpath_conntrack_capacity",
        "gauge",
        "Size of the conntrack table, in flows, by address family.",
    );
    out.sample("netpath_conntrack_capacity", IPV4, u64::from(*capacity));
    out.sample("netpath_conntrack_capacity", IPV6, u64::from(*capacity6));
    out.family(
        "netpath_snat_port_range_size",
        "gauge",
        "Ports in the range masquerade and hairpin SNAT take ports from.",
    );
    out.sample(
        "netpath_snat_port_range_size",
        &[],
        u64::from(*snat_range_size),
    );
    out.family(
        "netpath_snat_ports_busiest_destination",
        "gauge",
        "SNAT ports in use toward the destination (address, port, protocol) that holds the most.",
    );
    out.sample(
        "netpath_snat_ports_busiest_destination",
        &[],
        snat_ports_busiest_destination(flows).max(snat_ports_busiest_destination(flows6)),
    );
    out.family(
        "netpath_agent_start_time_seconds",
        "gauge",
        "When the agent serving these metrics started, in seconds since the epoch.",
    );
    out.sample("netpath_agent_start_time_seconds", &[], started);

    let mut ports = retired.clone();
    for (key, entry) in flows {
        account(&mut ports, key, entry);
    }
    for (key, entry) in flows6 {
        account(&mut ports, key, entry);
    }
    for (unit, help) in [
        (
            "packets",
            "Packets of flows through a published port, by host port, protocol and direction.",
        ),
        (
            "bytes",
            "Bytes of flows through a published port, by host port, protocol and direction.",
        ),
    ] {
        let name = format!("netpath_published_port_{unit}_total");
        out.family(&name, "counter", help);
        for (label, traffic) in &ports {
            let values = if unit == "packets" {
                traffic.packets
            } else {
                traffic.bytes
            };
            let port = label.port.to_string();
            for (dir, direction) in [(DIR_ORIGINAL, "original"), (DIR_REPLY, "reply")] {
                let labels = [
                    ("port", port.as_str()),
                    ("proto", proto_name(label.proto)),
                    ("direction", direction),
                ];
                out.sample(&name, &labels, values[dir]);
            }
        }
    }
    const REFUSED: &str = "netpath_published_port_refused_total";
    out.family(
        REFUSED,
        "counter",
        "New flows to a published port its allow-list refused, by host port and protocol.",
    );
    for (label, value) in refused {
        let port = label.port.to_string();
        let labels = [("port", port.as_str()), ("proto", proto_name(label.proto))];
        out.sample(REFUSED, &labels, *value);
    }
    const NETWORK_DROPS: &str = "netpath_network_drops_total";
    out.family(
        NETWORK_DROPS,
        "counter",
        "Packets refused by network isolation, by the sender's network and reason.",
    );
    for (network, reasons) in network_drops {
        for (reason, value) in reasons {
            let labels = [("network", network.as_str()), ("reason", *reason)];
            out.sample(NETWORK_DROPS, &labels, *value);
        }
    }
    out.0
}

/// Reads the instance's pinned maps and renders them.
pub fn scrape(
    instance: &Instance,
    tables: &Tables,
    retired: &Retired,
    started: u64,
) -> Result<String, TablesError> {
    let config = tables.config()?;
    let mut refused = BTreeMap::<PortLabel, u64>::new();
    for (port, list) in tables.allow_lists()? {
        let label = PortLabel {
            port: port.host_port(),
            proto: port.proto,
        };
        *refused.entry(label).or_default() += list.refused;
    }
    // Network names live in the state file; without it (a race with
    // `down`) the scrape goes on without them.
    let network_drops = match state::load(instance) {
        Ok(Some(state)) => network::drops(tables, &state)?,
        _ => BTreeMap::new(),
    };
    let snapshot = Snapshot {
        refused,
        network_drops,
        counters: tables.counters()?,
        flows: tables.flows()?,
        flows6: tables.flows()?,
        conntrack_capacity: tables.conntrack_capacity::<u32>(),
        conntrack6_capacity: tables.conntrack_capacity::<Ip6>(),
        snat_range_size: u32::from(config.snat_port_max)
            .saturating_sub(u32::from(config.snat_port_min))
            + 1,
    };
    let retired = retired
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Ok(render(&snapshot, &retired, started))
}

/// Seconds since the epoch, now: the agent's start time for
/// `netpath_agent_start_time_seconds`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a scrape reads: the instance (for its state file), the agent's own
/// read-only handle on the maps, opened once, what expired flows left, and
/// the agent's start time ([`unix_now`] then).
#[derive(Clone)]
pub struct Source {
    pub instance: Instance,
    pub tables: Arc<Tables>,
    pub retired: Retired,
    pub started: u64,
}

impl Source {
    fn scrape(&self) -> Result<String, TablesError> {
        scrape(&self.instance, &self.tables, &self.retired, self.started)
    }
}

/// Serves scrapes until the task is dropped.
pub async fn serve(listener: TcpListener, source: Source) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let source = source.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, source).await {
                        log::debug!("metrics: request from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Reads the request head: up to the blank line, EOF or `MAX_REQUEST`.
async fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while head.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    Ok(head)
}

/// What to send back for a request line.
enum Route {
    Metrics { head_only: bool },
    MethodNotAllowed,
    NotFound,
    BadRequest,
}

fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return Route::BadRequest;
    };
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head_only: false },
        ("HEAD", "/metrics") => Route::Metrics { head_only: true },
        (_, "/metrics") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

async fn answer(mut stream: TcpStream, source: Source) -> io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request in time"))??;
    let (status, content_type, body, head_only) = match route(&head) {
        Route::Metrics { head_only } => {
            // Walking a large conntrack table takes a while: off the runtime.
            let scraped = tokio::task::spawn_blocking(move || source.scrape()).await;
            match scraped {
                Ok(Ok(text)) => (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    text,
                    head_only,
                ),
                Ok(Err(e)) => (
                    "500 Internal Server Error",
                    "text/plain",
                    format!("{e}\n"),
                    false,
                ),
                Err(e) => (
                    "500 Internal Server Error",
                    "text/plain",
                    format!("{e}\n"),
                    false,
                ),
            }
        }
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "use GET /metrics\n".to_owned(),
            false,
        ),
        Route::NotFound => (
            "404 Not Found",
            "text/plain",
            "try /metrics\n".to_owned(),
            false,
        ),
        Route::BadRequest => ("400 Bad Request", "text/plain", String::new(), false),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if !head_only {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use netpath_common::Proto;

    use super::*;

    fn flow(dport: u16, kind: u8, packets: [u64; 2]) -> (FlowKey, FlowEntry) {
        let any = Ipv4Addr::UNSPECIFIED;
        let key = FlowKey::new(any, any, 0, dport, Proto::Tcp);
        let entry = FlowEntry {
            nat_kind: kind,
            packets,
            bytes: [packets[0] * 100, packets[1] * 100],
            ..FlowEntry::default()
        };
        (key, entry)
    }

    fn flow6(dport: u16, kind: u8, packets: [u64; 2]) -> (FlowKey<Ip6>, FlowEntry<Ip6>) {
        let any = std::net::Ipv6Addr::UNSPECIFIED;
        let key = FlowKey::new(any, any, 0, dport, Proto::Tcp);
        let entry = FlowEntry {
            nat_kind: kind,
            packets,
            bytes: [packets[0] * 100, packets[1] * 100],
            ..FlowEntry::default()
        };
        (key, entry)
    }

    #[test]
    fn exposition_has_families_and_per_port_sums() {
        let counters: Counters = vec![
            ("redirect_peer", 5),
            ("flow_created", 3),
            ("drop_spoofed_source", 2),
        ];
        let flows = [
            flow(8080, nat_kind::DNAT, [3, 2]),
            flow(8080, nat_kind::HAIRPIN, [1, 1]),
            flow(443, nat_kind::MASQUERADE, [9, 9]),
        ];
        let mut retired = PortTraffic::new();
        let (k, e) = flow(8080, nat_kind::DNAT, [10, 0]);
        account(&mut retired, &k, &e);
        let snapshot = Snapshot {
            counters,
            flows: flows.to_vec(),
            flows6: vec![flow6(8080, nat_kind::DNAT, [1, 1])],
            conntrack_capacity: 65536,
            conntrack6_capacity: 16384,
            snat_range_size: 10000,
            refused: BTreeMap::from([(
                PortLabel {
                    port: 8080,
                    proto: Proto::Tcp.number(),
                },
                4,
            )]),
            network_drops: BTreeMap::from([(
                "front".to_owned(),
                BTreeMap::from([("other_network", 6), ("icc", 0)]),
            )]),
        };
        let text = render(&snapshot, &retired, 1_700_000_000);
        for line in [
            "# TYPE netpath_packets_total counter",
            "netpath_packets_total{verdict=\"redirect_peer\"} 5",
            "netpath_drops_total{reason=\"spoofed_source\"} 2",
            "netpath_conntrack_flows_created_total 3",
            "netpath_conntrack_entries{family=\"ipv4\"} 3",
            "netpath_conntrack_entries{family=\"ipv6\"} 1",
            "netpath_conntrack_capacity{family=\"ipv4\"} 65536",
            "netpath_conntrack_capacity{family=\"ipv6\"} 16384",
            "netpath_snat_port_range_size 10000",
            // The hairpin and the masquerade flow (same, zeroed reply tuple).
            "netpath_snat_ports_busiest_destination 2",
            "netpath_agent_start_time_seconds 1700000000",
            // Both families' flows through the port.
            "netpath_published_port_packets_total{port=\"8080\",proto=\"tcp\",direction=\"original\"} 15",
            "netpath_published_port_packets_total{port=\"8080\",proto=\"tcp\",direction=\"reply\"} 4",
            "netpath_published_port_bytes_total{port=\"8080\",proto=\"tcp\",direction=\"original\"} 1500",
            "netpath_published_port_refused_total{port=\"8080\",proto=\"tcp\"} 4",
            "netpath_network_drops_total{network=\"front\",reason=\"other_network\"} 6",
            "netpath_network_drops_total{network=\"front\",reason=\"icc\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains("port=\"443\""),
            "masquerade is no published port"
        );
        assert!(!text.contains("verdict=\"flow_created\""));
        // Every sample's family is declared once, before its samples.
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!((types, helps), (12, 12));
    }

    #[test]
    fn snat_ports_are_counted_per_destination() {
        let snat = |daddr: [u8; 4], dport: u16, port: u16, kind: u8| {
            let (key, mut entry) = flow(dport, kind, [1, 1]);
            entry.reply = FlowKey::new(
                Ipv4Addr::from(daddr),
                Ipv4Addr::new(198, 18, 0, 1),
                dport,
                port,
                Proto::Tcp,
            );
            (key, entry)
        };
        let flows = [
            snat([1, 1, 1, 1], 443, 40000, nat_kind::MASQUERADE),
            snat([1, 1, 1, 1], 443, 40001, nat_kind::MASQUERADE),
            snat([1, 1, 1, 1], 443, 40002, nat_kind::HAIRPIN),
            // Another destination port, another address: other counts.
            snat([1, 1, 1, 1], 80, 40000, nat_kind::MASQUERADE),
            snat([2, 2, 2, 2], 443, 40000, nat_kind::MASQUERADE),
            // DNAT takes no SNAT port.
            snat([1, 1, 1, 1], 443, 40003, nat_kind::DNAT),
        ];
        assert_eq!(snat_ports_busiest_destination(&flows), 3);
        assert_eq!(snat_ports_busiest_destination::<u32>(&[]), 0);
    }

    #[test]
    fn routes() {
        assert!(matches!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        ));
        assert!(matches!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { .. }
        ));
        assert!(matches!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        ));
        assert!(matches!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound));
        assert!(matches!(route(b"\r\n"), Route::BadRequest));
    }
}
