//! The host settings netpath changes, in the host netns and through
//! /proc/sys only: `ip_forward` and, with IPv6, `conf.all.forwarding` (the
//! bridge is the slow path and routes; the datapath's FIB look-ups need
//! forwarding on) and
//! `ip_local_reserved_ports` (the SNAT range and every published port, so
//! the host never hands one out as an ephemeral port).
//!
//! Whatever the admin had stays: netpath merges its ports into the list and
//! records in the instance's state what it added (`HostChanges`), and gives
//! back exactly that. Several instances may share a netns, and a port or
//! the forwarding switch may be claimed by more than one of them: each
//! records it, and the last one to let go restores it. What belongs to the
//! admin is what is set and recorded by no instance of this netns.
use std::{collections::BTreeSet, fs::File, os::unix::fs::MetadataExt};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use netpath_common::{Addr, PortKey, PortTarget};

use crate::{
    directories::{self, Instance},
    publish::is_routed_entry,
    state::{self, State},
    sysctl::{self, SysctlError},
    tables::Tables,
};

const FORWARDING: &str = "net.ipv4.ip_forward";
const FORWARDING6: &str = "net.ipv6.conf.all.forwarding";
const RESERVED_PORTS: &str = "net.ipv4.ip_local_reserved_ports";

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error("cannot lock {path} for host settings: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {RESERVED_PORTS} ({0:?}): fix it by hand, then retry")]
    BadPortList(String),
}

/// What an instance changed on its host, kept in its state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostChanges {
    /// The network namespace (inode of its nsfs file) the changes are in.
    pub netns: u64,
    /// `ip_forward` was 0 and netpath set it to 1.
    pub forwarding: bool,
    /// The same for `net.ipv6.conf.all.forwarding` (instances with IPv6).
    pub forwarding6: bool,
    /// Ports netpath added to `ip_local_reserved_ports`, as `5000,6000-6010`.
    pub reserved_ports: String,
}

impl HostChanges {
    pub fn is_empty(&self) -> bool {
        !self.forwarding && !self.forwarding6 && self.reserved_ports.is_empty()
    }
}

/// A set of ports, as `ip_local_reserved_ports` lists them.
pub type PortSet = BTreeSet<u16>;

/// Parses `5000,6000-6010` (empty: no port).
pub fn parse_ports(text: &str) -> Option<PortSet> {
    let mut set = PortSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi): (u16, u16) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse().ok()?, hi.parse().ok()?),
            None => {
                let port = part.parse().ok()?;
                (port, port)
            }
        };
        if lo > hi {
            return None;
        }
        set.extend(lo..=hi);
    }
    Some(set)
}

/// Formats a set as the kernel does: ascending, runs as ranges.
pub fn format_ports(set: &PortSet) -> String {
    let mut parts = Vec::new();
    let mut ports = set.iter().copied().peekable();
    while let Some(lo) = ports.next() {
        let mut hi = lo;
        while ports.peek() == Some(&(hi.wrapping_add(1))) && hi != u16::MAX {
            hi += 1;
            ports.next();
        }
        parts.push(if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        });
    }
    parts.join(",")
}

/// What the instance needs reserved: its SNAT range and every published
/// host port (TCP and UDP share the list). `tables`: None before the
/// datapath exists.
pub fn claims(state: &State, tables: Option<&Tables>) -> PortSet {
    let (min, max) = state.snat_ports;
    let mut set: PortSet = (min..=max).collect();
    // Both families' ports: a port published on IPv6 only is reserved too
    // (routed entries bind no host port).
    if let Some(Ok(ports)) = tables.map(Tables::ports::<u32>) {
        set.extend(ports.iter().filter_map(host_port_of));
    }
    if let Some(Ok(ports)) = tables.map(Tables::ports::<netpath_common::Ip6>) {
        set.extend(ports.iter().filter_map(host_port_of));
    }
    set
}

/// The host port a published port binds, if any.
fn host_port_of<A: Addr>((key, target): &(PortKey<A>, PortTarget<A>)) -> Option<u16> {
    (!is_routed_entry(key, target)).then(|| u16::from_be(key.host_port))
}

/// The inode of our network namespace: which instances share the host.
fn current_netns() -> u64 {
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
}

/// What the other instances in this netns recorded: their ports, and
/// `forwarding`/`forwarding6` if any of them set it.
fn others(instance: &Instance, netns: u64) -> (PortSet, HostChanges) {
    let mut ports = PortSet::new();
    let mut forwarding = HostChanges::default();
    let Ok(dirs) = std::fs::read_dir(directories::run_root()) else {
        return (ports, forwarding);
    };
    for dir in dirs.flatten() {
        let name = dir.file_name();
        let Some(other) = name.to_str().and_then(|n| Instance::new(n).ok()) else {
            continue;
        };
        if other == *instance {
            continue;
        }
        let Ok(Some(other)) = state::load(&other) else {
            continue;
        };
        if other.host.netns == netns {
            ports.extend(parse_ports(&other.host.reserved_ports).unwrap_or_default());
            forwarding.forwarding |= other.host.forwarding;
            forwarding.forwarding6 |= other.host.forwarding6;
        }
    }
    (ports, forwarding)
}

/// Serialises host-setting changes of every instance on this machine: each
/// is a read-modify-write of a list shared by all of them.
fn lock_host() -> Result<Flock<File>, HostError> {
    let root = directories::run_root();
    let lock_err = |source| HostError::Lock {
        path: root.display().to_string(),
        source,
    };
    let dir = File::open(root).map_err(lock_err)?;
    Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, errno)| lock_err(errno.into()))
}

/// Makes the host match what the instance needs: `claims` reserved and
/// forwarding on (`forward`; IPv6's too if the instance has IPv6), or,
/// with no claims and `forward` false, gives back everything the instance
/// had added. Updates `state.host`; the caller
/// saves the state.
pub fn apply(
    instance: &Instance,
    state: &mut State,
    claims: &PortSet,
    forward: bool,
) -> Result<(), HostError> {
    let _lock = lock_host()?;
    let netns = current_netns();
    let mine = if state.host.netns == netns {
        state.host.clone()
    } else {
        // Recorded in another netns (or never): nothing of it is here.
        HostChanges::default()
    };
    let my_ports = parse_ports(&mine.reserved_ports).unwrap_or_default();
    let (their_ports, theirs) = others(instance, netns);

    let text = sysctl::read(RESERVED_PORTS)?;
    let current = parse_ports(&text).ok_or(HostError::BadPortList(text))?;
    let admin: PortSet = current
        .iter()
        .filter(|p| !my_ports.contains(p) && !their_ports.contains(p))
        .copied()
        .collect();
    let added: PortSet = claims.difference(&admin).copied().collect();
    let wanted: PortSet = admin
        .iter()
        .chain(claims)
        .chain(&their_ports)
        .copied()
        .collect();
    if wanted != current {
        // "\n" empties the list; "" would leave it as it is.
        let text = format_ports(&wanted);
        sysctl::write(RESERVED_PORTS, &format!("{text}\n"))?;
    }

    let forwarding = switch_forwarding(FORWARDING, forward, mine.forwarding, theirs.forwarding)?;
    let forward6 = forward && state.ipv6.is_some();
    let forwarding6 =
        switch_forwarding(FORWARDING6, forward6, mine.forwarding6, theirs.forwarding6)?;
    state.host = HostChanges {
        netns,
        forwarding,
        forwarding6,
        reserved_ports: format_ports(&added),
    };
    Ok(())
}

/// Turns the forwarding switch `key` on (`on`), or off again if this
/// instance turned it on and no other one shares it. Returns whether the
/// instance now holds it (it turned it on, or shares it with the instance
/// that did).
fn switch_forwarding(key: &str, on: bool, mine: bool, theirs: bool) -> Result<bool, HostError> {
    if on {
        let was_on = sysctl::read(key)? != "0";
        if !was_on {
            sysctl::write(key, "1")?;
        }
        Ok(!was_on || mine || theirs)
    } else {
        if mine && !theirs {
            sysctl::write(key, "0")?;
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_round_trip() {
        let set = parse_ports("5000,6000-6010").expect("valid");
        assert_eq!(set.len(), 12);
        assert_eq!(format_ports(&set), "5000,6000-6010");
        assert_eq!(parse_ports("").expect("empty"), PortSet::new());
        assert_eq!(format_ports(&PortSet::new()), "");
        assert_eq!(format_ports(&[65534, 65535].into()), "65534-65535");
        assert!(parse_ports("10-5").is_none());
        assert!(parse_ports("x").is_none());
    }
}
