//! Published ports: Docker's `-p` syntax, and the `PORTS` map as the one
//! record of what is published (so `publish ls` and the datapath cannot
//! disagree). Changes happen under the instance lock; the map insert itself
//! uses `BPF_NOEXIST`, so a port is never published twice. A port published
//! with `--allow` is restricted: its allow-list lives in the `ALLOWED` map,
//! likewise the one record of it.
use std::{fmt, fs, net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;
use netpath_common::{PortKey, PortTarget, Proto};
use serde::Serialize;

use crate::{
    directories::{Instance, NotUp},
    host::{self, HostError},
    state::{self, InstanceLock, State, StateError},
    tables::{Tables, TablesError},
};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "invalid port mapping {0:?}: use [hostIP:]hostPort[-end]:containerPort[-end][/tcp|udp], e.g. 8080:80 or 127.0.0.1:5353:53/udp"
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
    /// `None`: every host address.
    pub ip: Option<Ipv4Addr>,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{ip}:{}/{}", self.port, self.proto),
            None => write!(f, "{}/{}", self.port, self.proto),
        }
    }
}

impl HostPort {
    pub fn key(&self) -> PortKey {
        PortKey::new(self.ip, self.port, self.proto)
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

/// Parses `[hostIP:]hostPort[-end]:containerPort[-end][/tcp|udp]`.
pub fn parse_spec(spec: &str) -> Result<Vec<Mapping>> {
    let bad = || PublishError::BadSpec(spec.to_string());
    let (rest, proto) = parse_proto(spec).ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [host, container] => (None, *host, *container),
        [ip, host, container] => (
            Some(Ipv4Addr::from_str(ip).map_err(|_| bad())?),
            *host,
            *container,
        ),
        _ => return Err(bad()),
    };
    let ip = ip.filter(|ip| !ip.is_unspecified());
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
        Some((ip, ports)) => (Some(Ipv4Addr::from_str(ip).map_err(|_| bad())?), ports),
        None => (None, rest),
    };
    let ip = ip.filter(|ip| !ip.is_unspecified());
    let (start, end) = parse_range(ports).ok_or_else(bad)?;
    Ok((start..=end)
        .map(|port| HostPort { ip, port, proto })
        .collect())
}

/// Host sockets bound to a port (TCP listening, or UDP bound), read once from
/// /proc/net of the host netns, IPv4 and IPv6 alike: (protocol, local
/// address, port). A socket on `[::]` takes the port on every IPv4 address
/// too (dual-stack) and shows as 0.0.0.0; one on `::ffff:a.b.c.d` as
/// a.b.c.d; one on another IPv6 address cannot receive IPv4 and is left out.
fn host_sockets() -> Vec<(Proto, Ipv4Addr, u16)> {
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
            let (Some(addr), Ok(port)) = (proc_ipv4(addr_hex), u16::from_str_radix(port_hex, 16))
            else {
                continue;
            };
            if proto == Proto::Tcp && *st != "0A" {
                continue; // not listening
            }
            out.push((proto, addr, port));
        }
    }
    out
}

/// The IPv4 address a /proc/net address stands for. /proc prints each 32-bit
/// word of the address as the host-order u32 of its wire bytes: 8 hex digits
/// for IPv4, 32 for IPv6.
fn proc_ipv4(hex: &str) -> Option<Ipv4Addr> {
    let words: Vec<[u8; 4]> = (0..hex.len() / 8)
        .map(|i| {
            let word = hex.get(i * 8..i * 8 + 8)?;
            u32::from_str_radix(word, 16).ok().map(u32::to_ne_bytes)
        })
        .collect::<Option<_>>()?;
    match words.as_slice() {
        [v4] => Some(Ipv4Addr::from(*v4)),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, word) in bytes.chunks_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(word);
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            if v6.is_unspecified() {
                Some(Ipv4Addr::UNSPECIFIED)
            } else {
                v6.to_ipv4_mapped()
            }
        }
        _ => None,
    }
}

/// Is a host socket bound to this port on this address or on every address?
fn host_socket_uses(sockets: &[(Proto, Ipv4Addr, u16)], host: &HostPort) -> bool {
    sockets.iter().any(|(proto, addr, port)| {
        *proto == host.proto
            && *port == host.port
            && (addr.is_unspecified() || host.ip.is_none() || host.ip == Some(*addr))
    })
}

/// A published port as `publish ls` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Published {
    pub host: HostPort,
    pub container: Option<String>,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
    /// The sources admitted; `None`: open to all.
    pub allow: Option<Vec<Ipv4Net>>,
    /// First packets the allow-list refused.
    pub refused: u64,
}

/// The address a container's published ports lead to: its address on its
/// first network that is not internal.
pub fn container_ip(state: &State, name: &str) -> Result<Ipv4Addr> {
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
        (Some(address), _) => Ok(address.ip),
        (None, Some(internal)) => Err(PublishError::Internal(internal.network.clone())),
        (None, None) => Err(PublishError::NoAddress(name.to_string())),
    }
}

/// Publishes `mappings` to the container at `ip`, all or nothing, open to
/// all or (with `allow` not empty) to those sources only. The caller holds
/// the instance lock.
pub fn publish_locked(
    tables: &mut Tables,
    ip: Ipv4Addr,
    mappings: &[Mapping],
    allow: &[Ipv4Net],
) -> Result<()> {
    // By (port, proto): the host addresses each is published on.
    let mut existing: std::collections::HashMap<(u16, u8), Vec<u32>> =
        std::collections::HashMap::new();
    for (k, _) in tables.ports()? {
        existing
            .entry((k.host_port, k.proto))
            .or_default()
            .push(k.host_ip);
    }
    let sockets = host_sockets();
    let config = tables.config()?;
    let (min, max) = (config.snat_port_min, config.snat_port_max);
    for m in mappings {
        if (min..=max).contains(&m.host.port) {
            return Err(PublishError::InSnatRange(m.host.port, min, max));
        }
        // A wildcard mapping and an address-bound one on the same port would
        // shadow each other: Docker refuses that too.
        let key = m.host.key();
        let clash = existing
            .get(&(key.host_port, key.proto))
            .is_some_and(|ips| {
                ips.iter()
                    .any(|ip| *ip == 0 || key.host_ip == 0 || *ip == key.host_ip)
            });
        if clash {
            return Err(PublishError::Taken(m.host.to_string()));
        }
        if host_socket_uses(&sockets, &m.host) {
            return Err(PublishError::HostSocket(m.host.to_string()));
        }
    }
    let mut done: Vec<PortKey> = Vec::new();
    for m in mappings {
        let key = m.host.key();
        let mut target = PortTarget::new(ip, m.container_port);
        if !allow.is_empty() {
            target = target.restricted();
        }
        let inserted = tables.publish(&key, &target);
        if !matches!(inserted, Ok(true)) {
            let _ = tables.unpublish(&done);
            return match inserted {
                Err(e) => Err(e.into()),
                _ => Err(PublishError::Taken(m.host.to_string())),
            };
        }
        done.push(key);
        if !allow.is_empty()
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
    let ip = container_ip(&state, name)?;
    publish_locked(tables, ip, &mappings, &allow)?;
    if let Err(e) = reserve_published(instance, tables, state) {
        let keys: Vec<PortKey> = mappings.iter().map(|m| m.host.key()).collect();
        let _ = tables.unpublish(&keys);
        return Err(e);
    }
    Ok(mappings)
}

/// Keeps `ip_local_reserved_ports` in step with the `PORTS` map and saves
/// the state with what was added (see `host`). The caller holds the lock.
pub fn reserve_published(instance: &Instance, tables: &Tables, mut state: State) -> Result<()> {
    let claims = host::claims(&state, Some(tables));
    host::apply(instance, &mut state, &claims, true)?;
    state::save(instance, &state)?;
    Ok(())
}

/// `netpath publish rm SPEC`: unpublishes and flushes the mapping's flows.
pub fn remove(instance: &Instance, tables: &mut Tables, spec: &str) -> Result<Vec<HostPort>> {
    let hosts = parse_host_side(spec)?;
    let _lock = InstanceLock::acquire(instance)?.ok_or_else(|| instance.not_up())?;
    let existing = tables.ports()?;
    for host in &hosts {
        let key = host.key();
        if !existing.iter().any(|(k, _)| *k == key) {
            return Err(PublishError::NotPublished(host.to_string()));
        }
    }
    let keys: Vec<PortKey> = hosts.iter().map(HostPort::key).collect();
    tables.unpublish(&keys)?;
    let state = state::load(instance)?.ok_or_else(|| instance.not_up())?;
    reserve_published(instance, tables, state)?;
    Ok(hosts)
}

/// Unpublishes every port leading to `ip` (a container going away). The
/// caller holds the instance lock.
pub fn remove_for_ip_locked(tables: &mut Tables, ip: Ipv4Addr) -> Result<()> {
    let keys: Vec<PortKey> = tables
        .ports()?
        .into_iter()
        .filter(|(_, target)| target.container_ip() == ip)
        .map(|(key, _)| key)
        .collect();
    tables.unpublish(&keys)?;
    Ok(())
}

/// `netpath publish ls`: straight from the `PORTS` and `ALLOWED` maps.
pub fn list(instance: &Instance, tables: &Tables) -> Result<Vec<Published>> {
    let state = state::load(instance)?.ok_or_else(|| instance.not_up())?;
    let mut allow_lists = tables.allow_lists()?;
    let mut out: Vec<Published> = tables
        .ports()?
        .into_iter()
        .filter_map(|(k, t)| {
            let container_ip = t.container_ip();
            let container = state
                .containers
                .values()
                .find(|c| c.ip == Some(container_ip))
                .map(|c| c.name.clone());
            let list = allow_lists.remove(&k).filter(|_| t.is_restricted());
            Some(Published {
                host: HostPort {
                    ip: k.host_ip(),
                    port: k.host_port(),
                    proto: k.proto().filter(|p| publishable(*p))?,
                },
                container,
                container_ip,
                container_port: t.container_port(),
                refused: list.as_ref().map_or(0, |l| l.refused),
                allow: list.map(|l| l.admitted),
            })
        })
        .collect();
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
        assert_eq!(m[0].host.ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(m[0].host.proto, Proto::Udp);

        let m = parse_spec("9000-9002:7000-7002").expect("valid");
        assert_eq!(
            m.iter()
                .map(|m| (m.host.port, m.container_port))
                .collect::<Vec<_>>(),
            vec![(9000, 7000), (9001, 7001), (9002, 7002)]
        );

        let m = parse_spec("0.0.0.0:80:80").expect("valid");
        assert_eq!(m[0].host.ip, None, "0.0.0.0 means every address");
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
        assert_eq!(proc_ipv4("0100007F"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(
            proc_ipv4("00000000000000000000000000000000"),
            Some(Ipv4Addr::UNSPECIFIED),
            "[::] takes the IPv4 port too"
        );
        assert_eq!(
            proc_ipv4("0000000000000000FFFF00000100007F"),
            Some(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(proc_ipv4("00000000000000000000000001000000"), None, "::1");
        assert_eq!(proc_ipv4("xyz"), None);
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
        assert_eq!(h[0].ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(h[0].proto, Proto::Udp);
    }
}
