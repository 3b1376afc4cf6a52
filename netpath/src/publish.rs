//! Published ports: Docker's `-p` syntax, and the `PORTS` map as the one
//! record of what is published (so `publish ls` and the datapath cannot
//! disagree). Changes happen under the instance lock; the map insert itself
//! uses `BPF_NOEXIST`, so a port is never published twice. A port published
//! with `--allow` is restricted: its allow-list lives in the `ALLOWED` map,
//! likewise the one record of it.
use std::{
    fmt, fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::Ipv4Net;
use netpath_common::{Ip6, PortKey, PortTarget, Proto, host::HostIp};
use serde::Serialize;

use crate::{
    directories::{Instance, NotUp},
    host::{self, HostError},
    state::{self, InstanceLock, State, StateError},
    tables::{Family, Tables, TablesError},
};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "invalid port mapping {0:?}: use [hostIP:]hostPort[-end]:containerPort[-end][/tcp|udp], e.g. 8080:80, 127.0.0.1:5353:53/udp or [2001:db8::1]:8080:80"
    )]
    BadSpec(String),
    #[error("invalid port range in {0:?}: host and container ranges must have the same length")]
    RangeMismatch(String),
    #[error(
        "invalid --allow {0:?}: use an IPv4 address or prefix, e.g. 203.0.113.0/24 or 198.51.100.7"
    )]
    BadAllow(String),
    #[error("{0} is already published: `netpath publish rm {0}` first, or pick another host port")]
    Taken(String),
    #[error("{0} is in use by a process on the host: stop it or pick another host port")]
    HostSocket(String),
    #[error("host port {0} is inside netpath's SNAT range {1}-{2}: pick a port outside it")]
    InSnatRange(u16, u16, u16),
    #[error("container {0} has no address of its own to publish to (mode none or host)")]
    NoAddress(String),
    #[error(
        "{0} is an IPv6 mapping and container {1} has no IPv6 address (or the instance runs with --ipv6=false): publish on IPv4"
    )]
    NoIpv6(String, String),
    #[error(
        "{0} is an IPv6 mapping: --allow lists are IPv4 only, publish a port with an allow-list on IPv4"
    )]
    AllowIpv6(String),
    #[error("no container named {0}: see `netpath container ls`")]
    UnknownContainer(String),
    #[error(
        "network {0} is internal: published ports need the container on a network that is not (`netpath network connect`)"
    )]
    Internal(String),
    #[error(transparent)]
    NotUp(#[from] NotUp),
    #[error("{0} is not published: see `netpath publish ls`")]
    NotPublished(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tables(#[from] TablesError),
    #[error(transparent)]
    Host(#[from] HostError),
}

type Result<T> = std::result::Result<T, PublishError>;

/// Only protocols with ports can be published.
fn publishable(proto: Proto) -> bool {
    matches!(proto, Proto::Tcp | Proto::Udp)
}

/// The host side of a mapping: `[hostIP:]hostPort/proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HostPort {
    /// `None`: every host address of both families. As in Docker,
    /// `0.0.0.0` is every IPv4 address, `::` every IPv6 address, and any
    /// other address that one alone.
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:{}/{}", self.port, self.proto),
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}/{}", self.port, self.proto),
            None => write!(f, "{}/{}", self.port, self.proto),
        }
    }
}

impl HostPort {
    /// The `PORTS` key of the mapping, if it binds IPv4 addresses.
    pub fn key(&self) -> Option<PortKey> {
        match self.ip {
            None => Some(PortKey::new(None::<Ipv4Addr>, self.port, self.proto)),
            Some(IpAddr::V4(ip)) => Some(self.key_of(ip)),
            Some(IpAddr::V6(_)) => None,
        }
    }

    /// The `PORTS6` key of the mapping, if it binds IPv6 addresses.
    pub fn key6(&self) -> Option<PortKey<Ip6>> {
        match self.ip {
            None => Some(PortKey::new(None::<Ipv6Addr>, self.port, self.proto)),
            Some(IpAddr::V6(ip)) => Some(self.key_of(ip)),
            Some(IpAddr::V4(_)) => None,
        }
    }

    /// The key of this port on `ip` (unspecified: every address).
    fn key_of<I: HostIp>(&self, ip: I) -> PortKey<I::Wire> {
        let ip = Some(ip).filter(|ip| !(*ip).into().is_unspecified());
        PortKey::new(ip, self.port, self.proto)
    }
}

/// One published port, as parsed from a spec (one per port of a range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub host: HostPort,
    pub container_port: u16,
}

fn parse_range(text: &str) -> Option<(u16, u16)> {
    let (start, end) = match text.split_once('-') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let p = text.parse().ok()?;
            (p, p)
        }
    };
    (start != 0 && start <= end).then_some((start, end))
}

fn parse_proto(text: &str) -> Option<(&str, Proto)> {
    match text.rsplit_once('/') {
        Some((rest, name)) => {
            let proto = name.parse().ok().filter(|p| publishable(*p))?;
            Some((rest, proto))
        }
        None => Some((text, Proto::Tcp)),
    }
}

/// A host IP of a spec: `a.b.c.d`, or `[v6]` (Docker's syntax).
fn parse_host_ip(text: &str) -> Option<IpAddr> {
    match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// Splits `[hostIP:]rest` at the host IP's colon (an IPv6 one is in
/// brackets, colons and all): (host IP, rest).
fn split_host_ip(text: &str) -> Option<(Option<IpAddr>, &str)> {
    if text.starts_with('[') {
        let end = text.find("]:")?;
        return Some((Some(parse_host_ip(&text[..=end])?), &text[end + 2..]));
    }
    Some((None, text))
}

/// Parses `[hostIP:]hostPort[-end]:containerPort[-end][/tcp|udp]`.
pub fn parse_spec(spec: &str) -> Result<Vec<Mapping>> {
    let bad = || PublishError::BadSpec(spec.to_string());
    let (rest, proto) = parse_proto(spec).ok_or_else(bad)?;
    let (ip6, rest) = split_host_ip(rest).ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (ip6, parts.as_slice()) {
        (ip6, [host, container]) => (ip6, *host, *container),
        (None, [ip, host, container]) => (
            Some(IpAddr::V4(Ipv4Addr::from_str(ip).map_err(|_| bad())?)),
            *host,
            *container,
        ),
        _ => return Err(bad()),
    };
    let (hs, he) = parse_range(host).ok_or_else(bad)?;
    let (cs, ce) = parse_range(container).ok_or_else(bad)?;
    if he - hs != ce - cs {
        return Err(PublishError::RangeMismatch(spec.to_string()));
    }
    Ok((0..=he - hs)
        .map(|i| Mapping {
            host: HostPort {
                ip,
                port: hs + i,
                proto,
            },
            container_port: cs + i,
        })
        .collect())
}

/// Parses `--allow` values: IPv4 prefixes, or addresses (/32). Host bits
/// are dropped (203.0.113.9/24 is 203.0.113.0/24); sorted, without repeats.
pub fn parse_allow(texts: &[String]) -> Result<Vec<Ipv4Net>> {
    let mut nets = texts
        .iter()
        .map(|text| {
            let net = match text.parse::<Ipv4Net>() {
                Ok(net) => net,
                Err(_) => Ipv4Net::from(
                    Ipv4Addr::from_str(text).map_err(|_| PublishError::BadAllow(text.clone()))?,
                ),
            };
            Ok(net.trunc())
        })
        .collect::<Result<Vec<_>>>()?;
    nets.sort();
    nets.dedup();
    Ok(nets)
}

/// Parses the host side alone (`[hostIP:]hostPort[-end][/proto]`), or a whole
/// spec, for `publish rm`.
pub fn parse_host_side(spec: &str) -> Result<Vec<HostPort>> {
    if let Ok(mappings) = parse_spec(spec) {
        return Ok(mappings.into_iter().map(|m| m.host).collect());
    }
    let bad = || PublishError::BadSpec(spec.to_string());
    let (rest, proto) = parse_proto(spec).ok_or_else(bad)?;
    let (ip, ports) = match rest.rsplit_once(':') {
        Some((ip, ports)) => (Some(parse_host_ip(ip).ok_or_else(bad)?), ports),
        None => (None, rest),
    };
    let (start, end) = parse_range(ports).ok_or_else(bad)?;
    Ok((start..=end)
        .map(|port| HostPort { ip, port, proto })
        .collect())
}

/// Host sockets bound to a port (TCP listening, or UDP bound), read once from
/// /proc/net of the host netns, IPv4 and IPv6 alike: (protocol, local
/// address, port). A socket on `[::]` takes the port on every address of
/// both families (dual-stack) and shows as both 0.0.0.0 and `::`; one on
/// `::ffff:a.b.c.d` as a.b.c.d.
fn host_sockets() -> Vec<(Proto, IpAddr, u16)> {
    let mut out = Vec::new();
    for (proto, file) in [
        (Proto::Tcp, "/proc/net/tcp"),
        (Proto::Udp, "/proc/net/udp"),
        (Proto::Tcp, "/proc/net/tcp6"),
        (Proto::Udp, "/proc/net/udp6"),
    ] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(st)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let Some((addr_hex, port_hex)) = local.split_once(':') else {
                continue;
            };
            let (Some(addr), Ok(port)) = (proc_addr(addr_hex), u16::from_str_radix(port_hex, 16))
            else {
                continue;
            };
            if proto == Proto::Tcp && *st != "0A" {
                continue; // not listening
            }
            if addr == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
                out.push((proto, IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
            }
            out.push((proto, addr, port));
        }
    }
    out
}

/// The address a /proc/net address stands for. /proc prints each 32-bit
/// word of the address as the host-order u32 of its wire bytes: 8 hex digits
/// for IPv4, 32 for IPv6. A v4-mapped IPv6 address is its IPv4 address.
fn proc_addr(hex: &str) -> Option<IpAddr> {
    let words: Vec<[u8; 4]> = (0..hex.len() / 8)
        .map(|i| {
            let word = hex.get(i * 8..i * 8 + 8)?;
            u32::from_str_radix(word, 16).ok().map(u32::to_ne_bytes)
        })
        .collect::<Option<_>>()?;
    match words.as_slice() {
        [v4] => Some(IpAddr::V4(Ipv4Addr::from(*v4))),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, word) in bytes.chunks_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(word);
            }
            let v6 = Ipv6Addr::from(bytes);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

/// Is a host socket bound to this port on an address the mapping binds
/// (the same family's: the address itself, or every address)?
fn host_socket_uses(sockets: &[(Proto, IpAddr, u16)], host: &HostPort) -> bool {
    sockets.iter().any(|(proto, addr, port)| {
        let binds = match host.ip {
            None => true,
            Some(ip) => {
                ip.is_ipv4() == addr.is_ipv4()
                    && (ip.is_unspecified() || addr.is_unspecified() || ip == *addr)
            }
        };
        *proto == host.proto && *port == host.port && binds
    })
}

/// A published port as `publish ls` shows it: one mapping, on one or both
/// families (a mapping on every address of both has `host.ip` None and
/// both container addresses).
#[derive(Clone, Debug, Serialize)]
pub struct Published {
    pub host: HostPort,
    pub container: Option<String>,
    /// Where the IPv4 side leads; None: the mapping is IPv6 only.
    pub container_ip: Option<Ipv4Addr>,
    /// Where the IPv6 side leads; None: the mapping is IPv4 only (with an
    /// allow-list, or no IPv6 on the container).
    pub container_ip6: Option<Ipv6Addr>,
    pub container_port: u16,
    /// The sources admitted; `None`: open to all. IPv4 only.
    pub allow: Option<Vec<Ipv4Net>>,
    /// First packets the allow-list refused.
    pub refused: u64,
}

/// Where a container's published ports lead: its address on its first
/// network that is not internal, and that interface's IPv6 address when
/// the instance has IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishTarget {
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
}

/// The addresses a container's published ports lead to (see
/// [`PublishTarget`]).
pub fn container_target(state: &State, name: &str) -> Result<PublishTarget> {
    let record = state
        .containers
        .get(name)
        .ok_or_else(|| PublishError::UnknownContainer(name.to_string()))?;
    let owner = match &record.mode {
        state::Mode::Container(other) => state.containers.get(other).unwrap_or(record),
        _ => record,
    };
    let addresses = owner.addresses();
    let open = addresses
        .iter()
        .find(|a| state.network(&a.network).is_some_and(|n| !n.internal));
    match (open, addresses.first()) {
        (Some(address), _) => Ok(PublishTarget {
            ip: address.ip,
            ip6: address.ip6.filter(|_| state.ipv6.is_some()),
        }),
        (None, Some(internal)) => Err(PublishError::Internal(internal.network.clone())),
        (None, None) => Err(PublishError::NoAddress(name.to_string())),
    }
}

/// One mapping's port on one family: the key and where it leads.
struct Publication<A: netpath_common::Addr> {
    host: HostPort,
    key: PortKey<A>,
    target: PortTarget<A>,
}

/// Whether `key` would shadow, or be shadowed by, a port of `existing`: a
/// wildcard mapping and an address-bound one on the same port would, and
/// Docker refuses that too.
fn clashes<A: netpath_common::Addr>(existing: &[PortKey<A>], key: &PortKey<A>) -> bool {
    existing.iter().any(|k| {
        k.host_port == key.host_port
            && k.proto == key.proto
            && (k.host_ip == A::UNSPECIFIED
                || key.host_ip == A::UNSPECIFIED
                || k.host_ip == key.host_ip)
    })
}

/// Routed IPv6 (`--ipv6-mode routed`): as in Docker's routed mode, a
/// published container port is also reachable on the container's own
/// address, which the upstream routes to the host, and its other ports are
/// not. Such a port is a `PORTS6` entry keyed by the container's address
/// and port, leading to itself; [`sync_routed`] keeps them in step with the
/// mappings. They bind no host port.
pub fn is_routed_entry<A: netpath_common::Addr>(key: &PortKey<A>, target: &PortTarget<A>) -> bool {
    key.host_ip == target.container_ip
}

/// Adds the routed entries the IPv6 mappings call for and removes those no
/// mapping calls for any more (see [`is_routed_entry`]); nothing unless
/// IPv6 is routed.
fn sync_routed(tables: &mut Tables) -> Result<()> {
    if !tables.config()?.ipv6_routed() {
        return Ok(());
    }
    let ports = tables.ports::<Ip6>()?;
    let wanted: std::collections::HashSet<PortKey<Ip6>> = ports
        .iter()
        .filter(|(key, target)| !is_routed_entry(key, target))
        .map(|(key, target)| PortKey {
            host_ip: target.container_ip,
            host_port: target.container_port,
            proto: key.proto,
            _pad: 0,
        })
        .collect();
    let stale: Vec<PortKey<Ip6>> = ports
        .iter()
        .filter(|(key, target)| is_routed_entry(key, target) && !wanted.contains(key))
        .map(|(key, _)| *key)
        .collect();
    tables.unpublish(&stale)?;
    for key in wanted {
        let target = PortTarget {
            container_ip: key.host_ip,
            container_port: key.host_port,
            flags: 0,
        };
        // Ok(false): there already.
        tables.publish(&key, &target)?;
    }
    Ok(())
}

/// A family's published keys that bind host ports (routed entries don't).
fn host_keys<A: Family>(tables: &Tables) -> Result<Vec<PortKey<A>>> {
    Ok(tables
        .ports::<A>()?
        .into_iter()
        .filter(|(key, target)| !is_routed_entry(key, target))
        .map(|(key, _)| key)
        .collect())
}

/// Publishes `mappings` to the container at `target`, all or nothing,
/// open to all or (with `allow` not empty) to those sources only. A
/// mapping on every address goes on both families when the container has
/// IPv6, unless it has an allow-list (those are IPv4 only). The caller
/// holds the instance lock.
pub fn publish_locked(
    tables: &mut Tables,
    target: PublishTarget,
    container: &str,
    mappings: &[Mapping],
    allow: &[Ipv4Net],
) -> Result<()> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for m in mappings {
        let mut target4 = PortTarget::new(target.ip, m.container_port);
        if !allow.is_empty() {
            target4 = target4.restricted();
        }
        if let Some(key) = m.host.key() {
            v4.push(Publication {
                host: m.host,
                key,
                target: target4,
            });
        }
        let Some(key) = m.host.key6() else {
            continue;
        };
        // Asked for IPv6 by address: refused rather than dropped.
        let explicit = m.host.ip.is_some();
        match (target.ip6, allow.is_empty()) {
            (Some(ip6), true) => v6.push(Publication {
                host: m.host,
                key,
                target: PortTarget::new(ip6, m.container_port),
            }),
            (None, _) if explicit => {
                return Err(PublishError::NoIpv6(m.host.to_string(), container.into()));
            }
            (Some(_), false) if explicit => {
                return Err(PublishError::AllowIpv6(m.host.to_string()));
            }
            _ => {}
        }
    }
    let sockets = host_sockets();
    let config = tables.config()?;
    let (min, max) = (config.snat_port_min, config.snat_port_max);
    let existing: Vec<PortKey> = host_keys(tables)?;
    let existing6: Vec<PortKey<Ip6>> = host_keys(tables)?;
    for m in mappings {
        if (min..=max).contains(&m.host.port) {
            return Err(PublishError::InSnatRange(m.host.port, min, max));
        }
        if host_socket_uses(&sockets, &m.host) {
            return Err(PublishError::HostSocket(m.host.to_string()));
        }
    }
    let taken = v4
        .iter()
        .find(|p| clashes(&existing, &p.key))
        .map(|p| p.host)
        .or_else(|| {
            v6.iter()
                .find(|p| clashes(&existing6, &p.key))
                .map(|p| p.host)
        });
    if let Some(host) = taken {
        return Err(PublishError::Taken(host.to_string()));
    }
    insert_all(tables, &v4, allow)?;
    if let Err(e) = insert_all(tables, &v6, &[]).and_then(|()| sync_routed(tables)) {
        let keys: Vec<PortKey> = v4.iter().map(|p| p.key).collect();
        let keys6: Vec<PortKey<Ip6>> = v6.iter().map(|p| p.key).collect();
        let _ = tables.unpublish(&keys);
        let _ = tables.unpublish(&keys6);
        let _ = sync_routed(tables);
        return Err(e);
    }
    Ok(())
}

/// Inserts one family's ports, all or none (with `allow`'s rules on each).
fn insert_all<A: Family>(
    tables: &mut Tables,
    publications: &[Publication<A>],
    allow: &[Ipv4Net],
) -> Result<()> {
    let mut done: Vec<PortKey<A>> = Vec::new();
    for p in publications {
        let inserted = tables.publish(&p.key, &p.target);
        if !matches!(inserted, Ok(true)) {
            let _ = tables.unpublish(&done);
            return match inserted {
                Err(e) => Err(e.into()),
                _ => Err(PublishError::Taken(p.host.to_string())),
            };
        }
        done.push(p.key);
        if let (false, Some(key)) = (allow.is_empty(), A::allow_key(&p.key))
            && let Err(e) = tables.set_allow_list(&key, allow)
        {
            let _ = tables.unpublish(&done);
            return Err(e.into());
        }
    }
    Ok(())
}

/// `netpath publish add NAME SPEC...`.
pub fn add(
    instance: &Instance,
    tables: &mut Tables,
    name: &str,
    specs: &[String],
    allow: &[String],
) -> Result<Vec<Mapping>> {
    let mut mappings = Vec::new();
    for spec in specs {
        mappings.extend(parse_spec(spec)?);
    }
    let allow = parse_allow(allow)?;
    let _lock = InstanceLock::acquire(instance)?.ok_or_else(|| instance.not_up())?;
    let state = state::load(instance)?.ok_or_else(|| instance.not_up())?;
    let target = container_target(&state, name)?;
    publish_locked(tables, target, name, &mappings, &allow)?;
    if let Err(e) = reserve_published(instance, tables, state) {
        let hosts: Vec<HostPort> = mappings.iter().map(|m| m.host).collect();
        let _ = unpublish(tables, &hosts);
        return Err(e);
    }
    Ok(mappings)
}

/// Keeps `ip_local_reserved_ports` in step with the `PORTS` and `PORTS6`
/// maps and saves the state with what was added (see `host`). The caller
/// holds the lock.
pub fn reserve_published(instance: &Instance, tables: &Tables, mut state: State) -> Result<()> {
    let claims = host::claims(&state, Some(tables));
    host::apply(instance, &mut state, &claims, true)?;
    state::save(instance, &state)?;
    Ok(())
}

/// Unpublishes both families' ports of `hosts`, and their flows.
fn unpublish(tables: &mut Tables, hosts: &[HostPort]) -> Result<()> {
    let keys: Vec<PortKey> = hosts.iter().filter_map(HostPort::key).collect();
    let keys6: Vec<PortKey<Ip6>> = hosts.iter().filter_map(HostPort::key6).collect();
    tables.unpublish(&keys)?;
    tables.unpublish(&keys6)?;
    Ok(())
}

/// `netpath publish rm SPEC`: unpublishes and flushes the mapping's flows,
/// on each family it is published on.
pub fn remove(instance: &Instance, tables: &mut Tables, spec: &str) -> Result<Vec<HostPort>> {
    let hosts = parse_host_side(spec)?;
    let _lock = InstanceLock::acquire(instance)?.ok_or_else(|| instance.not_up())?;
    let existing: Vec<PortKey> = host_keys(tables)?;
    let existing6: Vec<PortKey<Ip6>> = host_keys(tables)?;
    for host in &hosts {
        let published = host.key().is_some_and(|k| existing.contains(&k))
            || host.key6().is_some_and(|k| existing6.contains(&k));
        if !published {
            return Err(PublishError::NotPublished(host.to_string()));
        }
    }
    unpublish(tables, &hosts)?;
    sync_routed(tables)?;
    let state = state::load(instance)?.ok_or_else(|| instance.not_up())?;
    reserve_published(instance, tables, state)?;
    Ok(hosts)
}

/// Unpublishes every port leading to `target`'s addresses (a container
/// going away). The caller holds the instance lock.
pub fn remove_for_target_locked(tables: &mut Tables, target: PublishTarget) -> Result<()> {
    let keys: Vec<PortKey> = tables
        .ports()?
        .into_iter()
        .filter(|(_, t)| t.container_ip() == target.ip)
        .map(|(key, _)| key)
        .collect();
    tables.unpublish(&keys)?;
    let keys6: Vec<PortKey<Ip6>> = tables
        .ports()?
        .into_iter()
        .filter(|(_, t)| Some(t.container_ip()) == target.ip6)
        .map(|(key, _)| key)
        .collect();
    tables.unpublish(&keys6)?;
    Ok(())
}

/// `netpath publish ls`: straight from the `PORTS`, `PORTS6` and `ALLOWED`
/// maps. A port on every IPv4 address and the same on every IPv6 address
/// (to the same container port) are one mapping.
pub fn list(instance: &Instance, tables: &Tables) -> Result<Vec<Published>> {
    let state = state::load(instance)?.ok_or_else(|| instance.not_up())?;
    let mut allow_lists = tables.allow_lists()?;
    let owner = |found: &dyn Fn(&state::ContainerRecord) -> bool| {
        state
            .containers
            .values()
            .find(|c| found(c))
            .map(|c| c.name.clone())
    };
    let mut out: Vec<Published> = tables
        .ports()?
        .into_iter()
        .filter_map(|(k, t)| {
            let container_ip = t.container_ip();
            let list = allow_lists.remove(&k).filter(|_| t.is_restricted());
            Some(Published {
                host: HostPort {
                    ip: k.host_ip().map(IpAddr::V4),
                    port: k.host_port(),
                    proto: k.proto().filter(|p| publishable(*p))?,
                },
                container: owner(&|c| c.ip == Some(container_ip)),
                container_ip: Some(container_ip),
                container_ip6: None,
                container_port: t.container_port(),
                refused: list.as_ref().map_or(0, |l| l.refused),
                allow: list.map(|l| l.admitted),
            })
        })
        .collect();
    for (k, t) in tables.ports::<Ip6>()? {
        let Some(proto) = k.proto().filter(|p| publishable(*p)) else {
            continue;
        };
        if is_routed_entry(&k, &t) {
            continue;
        }
        let ip6 = t.container_ip();
        let container = owner(&|c| c.ip6 == Some(ip6));
        let both = out.iter_mut().find(|p| {
            k.host_ip().is_none()
                && p.host.ip.is_none()
                && p.allow.is_none()
                && p.container_ip6.is_none()
                && (p.host.port, p.host.proto) == (k.host_port(), proto)
                && p.container_port == t.container_port()
                && p.container == container
        });
        match both {
            Some(published) => published.container_ip6 = Some(ip6),
            None => out.push(Published {
                host: HostPort {
                    ip: Some(IpAddr::V6(k.host_ip().unwrap_or(Ipv6Addr::UNSPECIFIED))),
                    port: k.host_port(),
                    proto,
                },
                container,
                container_ip: None,
                container_ip6: Some(ip6),
                container_port: t.container_port(),
                allow: None,
                refused: 0,
            }),
        }
    }
    out.sort_by_key(|p| (p.host.port, p.host.proto.number(), p.host.ip));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_port_specs() {
        let m = parse_spec("8080:80").expect("valid");
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[0].host,
            HostPort {
                ip: None,
                port: 8080,
                proto: Proto::Tcp
            }
        );
        assert_eq!(m[0].container_port, 80);

        let m = parse_spec("127.0.0.1:5353:53/udp").expect("valid");
        assert_eq!(m[0].host.ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(m[0].host.proto, Proto::Udp);

        let m = parse_spec("9000-9002:7000-7002").expect("valid");
        assert_eq!(
            m.iter()
                .map(|m| (m.host.port, m.container_port))
                .collect::<Vec<_>>(),
            vec![(9000, 7000), (9001, 7001), (9002, 7002)]
        );

        let m = parse_spec("0.0.0.0:80:80").expect("valid");
        assert_eq!(m[0].host.ip, Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        let key = m[0].host.key().expect("IPv4");
        assert_eq!((key.host_ip(), m[0].host.key6()), (None, None));
    }

    #[test]
    fn publishes_on_both_families_or_the_one_of_the_host_ip() {
        let both = parse_spec("8080:80").expect("valid")[0].host;
        let (key, key6) = (both.key().expect("IPv4"), both.key6().expect("IPv6"));
        assert_eq!((key.host_ip(), key.host_port()), (None, 8080));
        assert_eq!((key6.host_ip(), key6.host_port()), (None, 8080));

        let one = parse_spec("[2001:db8::1]:8080:80/udp").expect("valid");
        let ip: Ipv6Addr = "2001:db8::1".parse().expect("address");
        assert_eq!(one[0].host.ip, Some(IpAddr::V6(ip)));
        assert_eq!(one[0].host.proto, Proto::Udp);
        assert_eq!(one[0].container_port, 80);
        assert_eq!(one[0].host.key(), None, "IPv6 only");
        assert_eq!(one[0].host.key6().and_then(|k| k.host_ip()), Some(ip));
        assert_eq!(one[0].host.to_string(), "[2001:db8::1]:8080/udp");

        let every6 = parse_spec("[::]:9000-9001:80-81").expect("valid");
        assert_eq!(every6.len(), 2);
        assert_eq!(every6[1].host.key6().map(|k| k.host_ip()), Some(None));
        assert_eq!(every6[1].host.key(), None);
        assert_eq!(every6[1].host.to_string(), "[::]:9001/tcp");

        let v4 = parse_spec("198.18.0.1:8080:80").expect("valid")[0].host;
        assert_eq!(v4.key6(), None, "IPv4 only");

        for bad in [
            "[2001:db8::1]8080:80",
            "[1.2.3.4]:8080:80",
            "[::1:8080:80",
            "2001:db8::1:8080:80",
            "[::1]:1.2.3.4:8080:80",
            "[fe80::1%eth0]:8080:80",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad:?} should be rejected");
        }
        let h = parse_host_side("[::1]:8080/udp").expect("valid");
        assert_eq!(h[0].ip, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(h[0].key(), None);
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "",
            "80",
            "a:80",
            "80:b",
            "0:80",
            "80:80/sctp",
            "80:80/icmp",
            "1.2.3:80:80",
            "9000-9001:80",
            "70000:80",
            "90-80:80-70",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn allow_lists_take_prefixes_and_addresses() {
        let texts = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let nets = parse_allow(&texts(&[
            "198.51.100.7",
            "203.0.113.9/24",
            "203.0.113.0/24",
        ]))
        .expect("valid");
        let want: Vec<Ipv4Net> = ["198.51.100.7/32", "203.0.113.0/24"]
            .iter()
            .map(|n| n.parse().expect("net"))
            .collect();
        assert_eq!(nets, want, "host bits dropped, repeats merged, sorted");
        for bad in ["", "203.0.113.0/33", "example.com", "::1", "10.0.0.0/8,"] {
            let err = parse_allow(&texts(&[bad])).expect_err(bad);
            assert!(matches!(err, PublishError::BadAllow(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn proc_net_addresses_of_both_families() {
        let v4 = |ip: Ipv4Addr| Some(IpAddr::V4(ip));
        assert_eq!(proc_addr("0100007F"), v4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            proc_addr("00000000000000000000000000000000"),
            Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
        );
        assert_eq!(
            proc_addr("0000000000000000FFFF00000100007F"),
            v4(Ipv4Addr::LOCALHOST),
            "v4-mapped"
        );
        assert_eq!(
            proc_addr("00000000000000000000000001000000"),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(proc_addr("xyz"), None);
    }

    #[test]
    fn host_sockets_take_the_ports_of_their_family() {
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let sockets = [
            (Proto::Tcp, loopback6, 8080),
            (Proto::Tcp, IpAddr::V4(Ipv4Addr::LOCALHOST), 9090),
        ];
        let host = |spec: &str| parse_spec(spec).expect("valid")[0].host;
        assert!(host_socket_uses(&sockets, &host("8080:80")));
        assert!(host_socket_uses(&sockets, &host("[::]:8080:80")));
        assert!(!host_socket_uses(&sockets, &host("0.0.0.0:8080:80")));
        assert!(!host_socket_uses(&sockets, &host("[2001:db8::1]:8080:80")));
        assert!(host_socket_uses(&sockets, &host("0.0.0.0:9090:80")));
        assert!(!host_socket_uses(&sockets, &host("[::]:9090:80")));
        assert!(host_socket_uses(
            &[(Proto::Tcp, any6, 7070)],
            &host("[::1]:7070:80")
        ));
    }

    #[test]
    fn host_side_for_rm() {
        let h = parse_host_side("8080").expect("valid");
        assert_eq!(
            h,
            vec![HostPort {
                ip: None,
                port: 8080,
                proto: Proto::Tcp
            }]
        );
        let h = parse_host_side("10.0.0.1:53/udp").expect("valid");
        assert_eq!(h[0].ip, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        assert_eq!(h[0].proto, Proto::Udp);
    }
}
