//! Networks: `network create`, `ls` and `rm`. Each network of an instance is
//! a bridge and a subnet; one datapath serves them all (`NETWORKS`,
//! `SUBNETS`) and keeps them apart. The first, `bridge` (id 0), is the one
//! `up` makes; `network connect` and `disconnect` are containers' business
//! (see `container`).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use netpath_common::{NETWORKS_MAX, network_drop};

use crate::{
    config::stable_hash,
    directories::Instance,
    ipam::{self, IpamError},
    lifecycle::{self, InstanceError},
    rollback::Rollback,
    state::{self, DEFAULT_NETWORK, NetworkRecord, State, StateError},
    tables::{Tables, TablesError},
    topology::{self, TopologyError},
};

/// Where networks created without `--subnet` get theirs: the first free /24.
pub const SUBNET_POOL: &str = "10.78.0.0/16";
/// Prefix length of the subnets taken from `SUBNET_POOL`.
const POOL_PREFIX_LEN: u8 = 24;
/// Longest network name.
pub const MAX_NAME_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "invalid network name {0:?}: use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.', starting with a letter or digit"
    )]
    BadName(String),
    #[error("network {0} already exists: pick another name or `netpath network rm {0}` first")]
    Duplicate(String),
    #[error("no network named {0}: see `netpath network ls`")]
    Unknown(String),
    #[error(
        "subnet {subnet} overlaps {other_subnet} of network {other}: pass --subnet with another range"
    )]
    Overlap {
        subnet: Ipv4Net,
        other: String,
        other_subnet: Ipv4Net,
    },
    #[error(
        "IPv6 subnet {subnet6} overlaps {other_subnet6} of network {other}: pass --subnet6 with another range"
    )]
    Overlap6 {
        subnet6: Ipv6Net,
        other: String,
        other_subnet6: Ipv6Net,
    },
    #[error("no free /{POOL_PREFIX_LEN} left in {SUBNET_POOL}: pass --subnet")]
    NoFreeSubnet,
    #[error("no free /64 left in {0}: pass --subnet6")]
    NoFreeSubnet6(Ipv6Net),
    #[error("the instance is IPv4 only (up --ipv6=false): drop --subnet6")]
    Ipv4Only,
    #[error("the instance has {NETWORKS_MAX} networks already: remove one first")]
    TooMany,
    #[error("network {name} is used by {containers}: disconnect or remove them first")]
    InUse { name: String, containers: String },
    #[error("network {DEFAULT_NETWORK} is the instance's own: it goes with `netpath down`")]
    Default,
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Tables(#[from] TablesError),
}

type Result<T> = std::result::Result<T, NetworkError>;

/// What `network create` was asked for.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    /// Ignored (must be None) when the instance is IPv4 only.
    pub subnet6: Option<Ipv6Net>,
    pub internal: bool,
    pub icc: bool,
    pub bridge: Option<String>,
}

/// A network as `network ls` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NetworkView {
    pub name: String,
    pub id: u16,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub subnet6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    pub bridge: String,
    pub internal: bool,
    pub icc: bool,
    /// The containers with an address on it.
    pub containers: Vec<String>,
}

/// Checks a network name.
pub fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(NetworkError::BadName(name.to_owned()))
    }
}

/// The first /24 of `SUBNET_POOL` that overlaps none of `taken`.
pub fn pick_subnet(taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    let pool: Ipv4Net = SUBNET_POOL.parse().expect("a valid CIDR");
    pool.subnets(POOL_PREFIX_LEN)
        .ok()?
        .find(|candidate| !taken.iter().any(|t| lifecycle::overlaps(*candidate, *t)))
}

/// The lowest network id no network of `state` has.
fn free_id(state: &State) -> Option<u16> {
    (1..NETWORKS_MAX as u16).find(|id| state.networks.values().all(|n| n.id != *id))
}

/// The bridge of network `id` without `--bridge`: `np<id>-<hash of the
/// instance>`, apart from other instances' and from containers' `np-NAME`.
fn default_bridge_name(instance: &str, id: u16) -> String {
    format!("np{id}-{:04x}", stable_hash(instance) & 0xffff)
}

/// The subnet of a new network: `requested` if it overlaps none of `own`
/// (this instance's networks) and `elsewhere` (other instances' here),
/// else the first free one of the pool.
fn choose_subnet(
    requested: Option<Ipv4Net>,
    own: &State,
    elsewhere: &[(String, NetworkRecord)],
) -> Result<Ipv4Net> {
    let Some(subnet) = requested.map(|s| s.trunc()) else {
        let taken: Vec<Ipv4Net> = own
            .networks
            .values()
            .chain(elsewhere.iter().map(|(_, n)| n))
            .map(|n| n.subnet)
            .collect();
        return pick_subnet(&taken).ok_or(NetworkError::NoFreeSubnet);
    };
    if let Some((other, n)) = own
        .networks
        .iter()
        .find(|(_, n)| lifecycle::overlaps(subnet, n.subnet))
    {
        return Err(NetworkError::Overlap {
            subnet,
            other: other.clone(),
            other_subnet: n.subnet,
        });
    }
    if let Some((other, n)) = elsewhere
        .iter()
        .find(|(_, n)| lifecycle::overlaps(subnet, n.subnet))
    {
        return Err(InstanceError::SubnetTaken {
            subnet,
            other: other.clone(),
            other_subnet: n.subnet,
        }
        .into());
    }
    Ok(subnet)
}

/// The IPv6 subnet of a new network with IPv4 subnet `subnet`: none when
/// the instance is IPv4 only; else `requested` if it overlaps no IPv6
/// subnet of `own` and `elsewhere` and holds `subnet`'s twins, else the
/// first free /64 of the instance's unique-local /48.
fn choose_subnet6(
    instance: &Instance,
    requested: Option<Ipv6Net>,
    subnet: Ipv4Net,
    own: &State,
    elsewhere: &[(String, NetworkRecord)],
) -> Result<Option<Ipv6Net>> {
    if own.ipv6.is_none() {
        return match requested {
            Some(_) => Err(NetworkError::Ipv4Only),
            None => Ok(None),
        };
    }
    let taken = || {
        own.networks
            .iter()
            .map(|(name, n)| (name, n, false))
            .chain(elsewhere.iter().map(|(name, n)| (name, n, true)))
            .filter_map(|(name, n, other_instance)| Some((name, n.subnet6?, other_instance)))
    };
    let Some(subnet6) = requested.map(|s| s.trunc()) else {
        let pool = ipam::ula_prefix(instance.name());
        return pool
            .subnets(64)
            .expect("a /48 has /64s")
            .find(|candidate| !taken().any(|(_, t, _)| lifecycle::overlaps(*candidate, t)))
            .map(Some)
            .ok_or(NetworkError::NoFreeSubnet6(pool));
    };
    if let Some((other, other_subnet6, other_instance)) =
        taken().find(|(_, t, _)| lifecycle::overlaps(subnet6, *t))
    {
        let other = other.clone();
        return Err(match other_instance {
            false => NetworkError::Overlap6 {
                subnet6,
                other,
                other_subnet6,
            },
            true => InstanceError::Subnet6Taken {
                subnet6,
                other,
                other_subnet6,
            }
            .into(),
        });
    }
    ipam::check_subnet6(subnet6, subnet)?;
    Ok(Some(subnet6))
}

/// `netpath network create`.
pub async fn create(instance: &Instance, request: CreateRequest) -> Result<NetworkView> {
    validate_name(&request.name)?;
    if let Some(bridge) = &request.bridge {
        lifecycle::validate_bridge_name(bridge)?;
    }
    let (_lock, mut state) = state::lock_and_load(instance)?;
    if state.networks.contains_key(&request.name) {
        return Err(NetworkError::Duplicate(request.name));
    }
    let host = topology::connect()?;
    let elsewhere = lifecycle::networks_of_other_instances(&host, instance).await?;
    let subnet = choose_subnet(request.subnet, &state, &elsewhere)?;
    let gateway = ipam::gateway(subnet)?;
    let subnet6 = choose_subnet6(instance, request.subnet6, subnet, &state, &elsewhere)?;
    let gateway6 = subnet6.map(ipam::gateway6);
    let id = free_id(&state).ok_or(NetworkError::TooMany)?;
    let bridge = request
        .bridge
        .clone()
        .unwrap_or_else(|| default_bridge_name(instance.name(), id));
    if topology::find_link(&host, &bridge).await?.is_some() {
        return Err(InstanceError::BridgeExists(bridge).into());
    }
    let mac = topology::parse_mac(&state.bridge_mac)
        .ok_or_else(|| TopologyError::NoMac(format!("{} (state)", state.bridge)))?;

    let mut rollback = Rollback::default();
    let created = bridge.clone();
    rollback.push(move || {
        let _ = topology::delete_link_blocking(&created);
    });
    let bridge_ifindex = lifecycle::set_up_bridge(
        &host,
        &bridge,
        mac,
        (gateway, subnet),
        gateway6.zip(subnet6),
    )
    .await?;
    let record = NetworkRecord {
        subnet6,
        gateway6,
        id,
        subnet,
        gateway,
        bridge,
        bridge_ifindex,
        internal: request.internal,
        icc: request.icc,
    };
    let mut tables = Tables::open(instance)?;
    tables.reset_network_drops(id)?;
    tables.set_network(id, &record.datapath())?;
    rollback.push(move || {
        if let Ok(mut tables) = Tables::open(instance) {
            let _ = tables.remove_network(id);
        }
    });
    state.networks.insert(request.name.clone(), record);
    state::save(instance, &state)?;
    rollback.commit();
    Ok(view(&state, &request.name))
}

/// The names of the containers with an address on `network`.
pub fn containers_on(state: &State, network: &str) -> Vec<String> {
    state
        .containers
        .values()
        .filter(|c| c.addresses().iter().any(|a| a.network == network))
        .map(|c| c.name.clone())
        .collect()
}

fn view(state: &State, name: &str) -> NetworkView {
    let record = &state.networks[name];
    NetworkView {
        name: name.to_owned(),
        id: record.id,
        subnet: record.subnet,
        gateway: record.gateway,
        subnet6: record.subnet6,
        gateway6: record.gateway6,
        bridge: record.bridge.clone(),
        internal: record.internal,
        icc: record.icc,
        containers: containers_on(state, name),
    }
}

/// Every network of the state, by id.
pub fn views(state: &State) -> Vec<NetworkView> {
    let mut views: Vec<NetworkView> = state.networks.keys().map(|n| view(state, n)).collect();
    views.sort_by_key(|v| v.id);
    views
}

/// Each network's isolation drops by reason (`network_drop::NAMES`), for
/// `stats` and the metrics.
pub fn drops(
    tables: &Tables,
    state: &State,
) -> std::result::Result<BTreeMap<String, BTreeMap<&'static str, u64>>, TablesError> {
    let mut out = BTreeMap::new();
    for (name, network) in &state.networks {
        let counts = tables.network_drops(network.id)?;
        let by_reason = network_drop::NAMES
            .iter()
            .zip(counts.packets)
            .filter(|(reason, _)| !reason.is_empty())
            .map(|(reason, count)| (*reason, count))
            .collect();
        out.insert(name.clone(), by_reason);
    }
    Ok(out)
}

/// `netpath network ls`.
pub fn list(instance: &Instance) -> Result<Vec<NetworkView>> {
    Ok(views(&state::load_required(instance)?))
}

/// `netpath network rm`: refused while containers are on it.
pub fn remove(instance: &Instance, name: &str) -> Result<()> {
    let (_lock, mut state) = state::lock_and_load(instance)?;
    if name == DEFAULT_NETWORK {
        return Err(NetworkError::Default);
    }
    let record = state
        .networks
        .get(name)
        .cloned()
        .ok_or_else(|| NetworkError::Unknown(name.to_owned()))?;
    let users = containers_on(&state, name);
    if !users.is_empty() {
        return Err(NetworkError::InUse {
            name: name.to_owned(),
            containers: users.join(", "),
        });
    }
    match Tables::open(instance) {
        Ok(mut tables) => tables.remove_network(record.id)?,
        // The datapath is gone: nothing to take out of it.
        Err(TablesError::NotUp(_)) => {}
        Err(e) => return Err(e.into()),
    }
    topology::delete_link_blocking(&record.bridge)?;
    state.networks.remove(name);
    state::save(instance, &state)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn picks_the_first_free_slash_24() {
        assert_eq!(pick_subnet(&[]), Some(net("10.78.0.0/24")));
        assert_eq!(
            pick_subnet(&[net("10.78.0.0/24"), net("10.78.1.128/25")]),
            Some(net("10.78.2.0/24"))
        );
        assert_eq!(
            pick_subnet(&[net("10.77.0.0/16")]),
            Some(net("10.78.0.0/24"))
        );
        assert_eq!(pick_subnet(&[net("10.0.0.0/8")]), None);
        assert_eq!(pick_subnet(&[net("10.78.0.0/16")]), None);
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "front-end", "db_2", "x.y", &"n".repeat(MAX_NAME_LEN)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a b", "a/b", "é", &"n".repeat(MAX_NAME_LEN + 1)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_bridge_names_fit_and_differ_from_containers() {
        let name = default_bridge_name("a-rather-long-instance-name", NETWORKS_MAX as u16 - 1);
        assert!(name.len() <= crate::config::MAX_IFNAME_LEN, "{name}");
        assert!(lifecycle::validate_bridge_name(&name).is_ok());
        assert!(!name.starts_with("np-"));
        assert_ne!(default_bridge_name("a", 1), default_bridge_name("b", 1));
    }
}
