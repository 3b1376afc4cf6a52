//! The instance's state file, `/run/netpath/<instance>/state.json`, its lock
//! and the agent's pid file and record. Every mutating command holds the lock for its
//! whole read-modify-write, and the file is replaced atomically, so parallel
//! commands see each other's changes and a crash never leaves half a file.
use std::{
    collections::BTreeMap,
    fmt,
    fs::File,
    io::{self, Write},
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnet::{Ipv4Net, Ipv6Net};
use nix::{
    fcntl::{Flock, FlockArg},
    sys::signal::kill,
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Accel, DEFAULT_SNAT_PORTS, FlowLimits, Timeouts},
    directories::{Instance, NotUp},
    host::HostChanges,
};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    NotUp(#[from] NotUp),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("state file {path} is corrupt ({source}): run `netpath down` to clean up")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, StateError>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_owned();
    move |source| StateError::Io { what, path, source }
}

/// How a container is networked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Mode {
    /// Own netns, veth into the bridge, an address from the subnet.
    Bridge,
    /// Own netns with only `lo`.
    None,
    /// The host's network namespace.
    Host,
    /// The network namespace of another container.
    Container(String),
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Bridge => f.write_str("bridge"),
            Mode::None => f.write_str("none"),
            Mode::Host => f.write_str("host"),
            Mode::Container(other) => write!(f, "container:{other}"),
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "bridge" => Ok(Mode::Bridge),
            "none" => Ok(Mode::None),
            "host" => Ok(Mode::Host),
            other => match other.strip_prefix("container:") {
                Some(name) if !name.is_empty() => Ok(Mode::Container(name.to_owned())),
                _ => Err(format!(
                    "invalid mode {s:?}: use bridge, none, host or container:NAME"
                )),
            },
        }
    }
}

impl From<Mode> for String {
    fn from(mode: Mode) -> Self {
        mode.to_string()
    }
}

impl TryFrom<String> for Mode {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, Self::Error> {
        s.parse()
    }
}

/// Who made a container's network namespace, and so who owns it (and the
/// processes in it): netpath only stops and deletes what it created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Origin {
    /// `container add`: netpath made the netns (`np-NAME`).
    #[default]
    Created,
    /// `container attach --netns PATH`: a netns someone else made.
    Attached { netns: PathBuf },
    /// A CNI ADD: the runtime's netns, found again by container ID and ifname.
    Cni {
        container_id: String,
        ifname: String,
        netns: PathBuf,
        /// The network config's `name`: GC looks at its own network only.
        network: String,
    },
}

impl Origin {
    fn is_created(&self) -> bool {
        *self == Origin::Created
    }

    /// The netns of an attached or CNI container (not netpath's to delete).
    pub fn foreign_netns(&self) -> Option<&Path> {
        match self {
            Origin::Created => None,
            Origin::Attached { netns } | Origin::Cni { netns, .. } => Some(netns),
        }
    }

    /// The container's interface: CNI_IFNAME for CNI, else `eth0`.
    pub fn ifname(&self) -> &str {
        match self {
            Origin::Cni { ifname, .. } => ifname,
            _ => "eth0",
        }
    }

    /// "created", "attached" or "cni", as `container ls` shows it.
    pub fn kind(&self) -> &'static str {
        match self {
            Origin::Created => "created",
            Origin::Attached { .. } => "attached",
            Origin::Cni { .. } => "cni",
        }
    }
}

/// One container as recorded by `container add`, `attach` or a CNI ADD.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Origin::is_created")]
    pub origin: Origin,
    /// Named netns (`np-NAME`) for bridge and none modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The IPv6 address beside `ip`, on the same interface (networks with
    /// IPv6 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// MAC of the container's interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_veth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifindex: Option<u32>,
    /// The network of the interface above (`ip`, `host_veth`): the one
    /// `container add --network` named.
    #[serde(default = "default_network_name")]
    pub network: String,
    /// The interfaces `network connect` added (eth1, eth2, ...), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connected: Vec<Interface>,
}

/// An interface a container has on a network besides its first one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub network: String,
    /// The container's name for it.
    pub ifname: String,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub mac: String,
    pub host_veth: String,
    pub host_ifindex: u32,
}

/// One address of a container: its network and interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Address {
    pub network: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
}

impl ContainerRecord {
    /// The container's own addresses (none for host and `container:`
    /// modes), first network first.
    pub fn addresses(&self) -> Vec<Address> {
        let first = self.ip.map(|ip| Address {
            network: self.network.clone(),
            ifname: self.origin.ifname().to_owned(),
            ip,
            ip6: self.ip6,
        });
        first
            .into_iter()
            .chain(self.connected.iter().map(|i| Address {
                network: i.network.clone(),
                ifname: i.ifname.clone(),
                ip: i.ip,
                ip6: i.ip6,
            }))
            .collect()
    }
}

/// The name of the instance's first network, the one `up` makes (Docker's
/// default network is called so too).
pub const DEFAULT_NETWORK: &str = "bridge";

fn default_network_name() -> String {
    DEFAULT_NETWORK.to_owned()
}

/// One network of the instance: a bridge and its subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Index in the datapath's `NETWORKS`; 0 is the `up` network.
    pub id: u16,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub bridge_ifindex: u32,
    /// `--internal`: no way out of the subnet.
    #[serde(default)]
    pub internal: bool,
    /// false for `--icc=false`.
    #[serde(default = "yes")]
    pub icc: bool,
    /// The IPv6 subnet and the bridge's address in it; None: IPv4 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
}

fn yes() -> bool {
    true
}

impl NetworkRecord {
    /// The datapath's view of it.
    pub fn datapath(&self) -> netpath_common::Network {
        let mut flags = 0;
        if self.internal {
            flags |= netpath_common::NETWORK_INTERNAL;
        }
        if !self.icc {
            flags |= netpath_common::NETWORK_NO_ICC;
        }
        let network = netpath_common::Network::new(
            self.subnet.network(),
            self.subnet.prefix_len(),
            self.gateway,
            self.bridge_ifindex,
            flags,
        );
        match (self.subnet6, self.gateway6) {
            (Some(subnet6), Some(gateway6)) => {
                network.with_ipv6(subnet6.network(), subnet6.prefix_len(), gateway6)
            }
            _ => network,
        }
    }
}

/// Everything `up` decided, and the containers added since.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub instance: String,
    pub uplink: String,
    pub uplink_ifindex: u32,
    pub host_ip: Ipv4Addr,
    pub bridge: String,
    pub bridge_ifindex: u32,
    pub bridge_mac: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The `up` network's IPv6 subnet and gateway (None: IPv4 only), as
    /// `subnet` and `gateway` above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    pub accel: Accel,
    pub cgroup: PathBuf,
    #[serde(default)]
    pub conntrack_size: u32,
    /// `up --max-flows-per-container/--max-flows-per-source`.
    #[serde(default)]
    pub flow_limits: FlowLimits,
    /// Conntrack timeouts the agent's GC applies.
    #[serde(default)]
    pub ct_timeouts: Timeouts,
    /// The SNAT port range (host order, inclusive).
    #[serde(default = "default_snat_ports")]
    pub snat_ports: (u16, u16),
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerRecord>,
    /// What `up` and `publish` changed on the host, for `down` to give back.
    #[serde(default)]
    pub host: HostChanges,
    /// Every network by name, `bridge` (the one above: `subnet`, `bridge`,
    /// ...) included; see `sync_default_network`.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkRecord>,
    /// `up`'s IPv6 settings; None: `--ipv6=false`, IPv4 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Settings>,
}

/// How containers' IPv6 leaves the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6Mode {
    /// NAT66: masqueraded to the uplink's IPv6 address, as Docker does.
    #[default]
    Nat,
    /// Routed as they are: the host owns the prefix.
    Routed,
}

impl fmt::Display for Ipv6Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ipv6Mode::Nat => "nat",
            Ipv6Mode::Routed => "routed",
        })
    }
}

/// `up --ipv6`'s settings (the subnets are the networks').
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Settings {
    pub mode: Ipv6Mode,
    /// The uplink's global IPv6 address: the NAT66 source, and what
    /// published ports answer on over IPv6. None: the uplink has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip6: Option<Ipv6Addr>,
}

impl State {
    /// Records the `up` network (the top-level `bridge`, `subnet`, ...) as
    /// network `bridge`, id 0: after `up` built or adopted it, and for
    /// state files written before networks existed.
    pub fn sync_default_network(&mut self) {
        let record = NetworkRecord {
            subnet6: self.subnet6,
            gateway6: self.gateway6,
            id: 0,
            subnet: self.subnet,
            gateway: self.gateway,
            bridge: self.bridge.clone(),
            bridge_ifindex: self.bridge_ifindex,
            internal: false,
            icc: true,
        };
        self.networks.insert(DEFAULT_NETWORK.to_owned(), record);
    }

    /// The network named `name`.
    pub fn network(&self, name: &str) -> Option<&NetworkRecord> {
        self.networks.get(name)
    }

    /// The name of the network with id `id`.
    pub fn network_name(&self, id: u16) -> Option<&str> {
        self.networks
            .iter()
            .find(|(_, n)| n.id == id)
            .map(|(name, _)| name.as_str())
    }

    /// The network an address of a container (or gateway) is in.
    pub fn network_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.networks
            .iter()
            .find(|(_, n)| n.subnet.contains(&ip))
            .map(|(name, _)| name.as_str())
    }
}

fn default_snat_ports() -> (u16, u16) {
    DEFAULT_SNAT_PORTS
}

/// Creates the instance's run-time directory (for `up`).
pub fn create_run_dir(instance: &Instance) -> Result<()> {
    let dir = instance.run_dir();
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))
}

/// The exclusive lock of an instance, held until dropped.
pub struct InstanceLock {
    _lock: Flock<File>,
}

impl InstanceLock {
    /// Waits for and takes the instance lock. Only `up` creates the instance
    /// directory; every other command gets None when it does not exist, so
    /// a command on an instance that is not up leaves nothing behind.
    pub fn acquire(instance: &Instance) -> Result<Option<Self>> {
        loop {
            if !instance.run_dir().is_dir() {
                return Ok(None);
            }
            match Self::try_lock(instance)? {
                Locked::Held(lock) => return Ok(Some(lock)),
                Locked::Gone => {}
            }
        }
    }

    /// For `up`: creates the instance directory if needed, then waits for
    /// and takes the lock.
    pub fn acquire_creating(instance: &Instance) -> Result<Self> {
        loop {
            create_run_dir(instance)?;
            if let Locked::Held(lock) = Self::try_lock(instance)? {
                return Ok(lock);
            }
        }
    }

    /// Locks the lock file. `down` and a failed fresh `up` remove the
    /// directory while they hold the lock, so whoever waited meanwhile holds
    /// a lock on a file nobody else can open any more: `Gone`, look again.
    fn try_lock(instance: &Instance) -> Result<Locked> {
        let path = instance.lock_file();
        let file = match File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Locked::Gone),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err("lock", &path)(errno.into()))?;
        let held = lock.metadata().map_err(io_err("stat", &path))?;
        let same = std::fs::metadata(&path)
            .is_ok_and(|now| (now.dev(), now.ino()) == (held.dev(), held.ino()));
        Ok(if same {
            Locked::Held(Self { _lock: lock })
        } else {
            Locked::Gone
        })
    }
}

enum Locked {
    Held(InstanceLock),
    Gone,
}

/// Reads the instance's state; None when the instance is not up.
pub fn load(instance: &Instance) -> Result<Option<State>> {
    let path = instance.state_file();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let mut state: State =
        serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path, source })?;
    state.sync_default_network();
    Ok(Some(state))
}

/// Reads the instance's state, which must exist.
pub fn load_required(instance: &Instance) -> Result<State> {
    Ok(load(instance)?.ok_or_else(|| instance.not_up())?)
}

/// Takes the instance lock and reads the state under it, for a
/// read-modify-write; the instance must be up.
pub fn lock_and_load(instance: &Instance) -> Result<(InstanceLock, State)> {
    let lock = InstanceLock::acquire(instance)?.ok_or_else(|| instance.not_up())?;
    Ok((lock, load_required(instance)?))
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, fsync, rename over the old one, fsync of the directory.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(contents).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("rename into", path))?;
    if let Some(dir) = path.parent() {
        // Makes the rename itself durable; failing here loses nothing now.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Saves the state (the caller holds the instance lock).
pub fn save(instance: &Instance, state: &State) -> Result<()> {
    let path = instance.state_file();
    let mut json = serde_json::to_vec_pretty(state).map_err(|source| StateError::Corrupt {
        path: path.clone(),
        source,
    })?;
    json.push(b'\n');
    write_atomically(&path, &json)
}

/// The running agent as it recorded itself, for `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentRecord {
    pub pid: u32,
    /// When it started, in seconds since the Unix epoch.
    pub started_at: i64,
    /// How many times the supervisor of `up --detach` started an agent again
    /// before this one.
    pub restarts: u32,
}

/// Writes the agent's record, then its pid file (which says the agent runs).
pub fn write_agent(instance: &Instance, record: &AgentRecord) -> Result<()> {
    let path = instance.agent_file();
    let json = serde_json::to_vec(record).map_err(|source| StateError::Corrupt {
        path: path.clone(),
        source,
    })?;
    write_atomically(&path, &json)?;
    write_atomically(&instance.pid_file(), format!("{}\n", record.pid).as_bytes())
}

/// The agent's record, if it is the one of the agent the pid file names.
pub fn read_agent(instance: &Instance) -> Option<AgentRecord> {
    let text = std::fs::read_to_string(instance.agent_file()).ok()?;
    let record: AgentRecord = serde_json::from_str(&text).ok()?;
    (read_pid(instance) == Some(record.pid)).then_some(record)
}

/// Removes the agent's pid file and record if they still name `pid`.
pub fn remove_pid_if_ours(instance: &Instance, pid: u32) {
    if read_pid(instance) == Some(pid) {
        let _ = std::fs::remove_file(instance.pid_file());
        let _ = std::fs::remove_file(instance.agent_file());
    }
}

/// The pid in the instance's pid file, if any.
pub fn read_pid(instance: &Instance) -> Option<u32> {
    std::fs::read_to_string(instance.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The command name and state letter of a process, from /proc/PID/stat.
fn proc_stat(pid: &str) -> Option<(String, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let state = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some((comm, state))
}

/// Whether a process with this pid runs and is a netpath like us. Guards
/// against a pid reused after the agent died without removing its pid file,
/// and counts a killed agent its parent has not reaped yet (zombie) as dead.
pub fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    let ours = proc_stat("self").map(|(comm, _)| comm);
    match proc_stat(&pid.to_string()) {
        Some((_, 'Z' | 'X')) => false,
        Some((comm, _)) => ours.is_none_or(|ours| ours == comm),
        // Exists (kill worked) but /proc is unreadable: believe kill.
        None => true,
    }
}

/// The pid of the instance's agent if it is running.
pub fn live_agent_pid(instance: &Instance) -> Option<u32> {
    read_pid(instance).filter(|pid| process_alive(*pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip() {
        for text in ["bridge", "none", "host", "container:web"] {
            let mode: Mode = text.parse().unwrap();
            assert_eq!(mode.to_string(), text);
        }
        assert!("container:".parse::<Mode>().is_err());
        assert!("macvlan".parse::<Mode>().is_err());
    }
}
