//! Instance life cycle: `up` (build or adopt the topology, set the host up,
//! load the datapath, run the agent), `up --detach`, `down` and `status`.
//! Starting and stopping the agent as a process is `daemon`'s.
use std::{
    hash::{DefaultHasher, Hash, Hasher},
    io::{self, Write},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::unistd::geteuid;

use crate::{
    agent::{Agent, AgentError, AgentOptions},
    config::{
        Accel, DEFAULT_SNAT_PORTS, DEFAULT_SUBNET, FlowLimits, MAX_IFNAME_LEN, MapSizes,
        TimeoutSetting, Timeouts, default_bridge_name,
    },
    container::{self, ContainerError, ContainerView},
    daemon::{self, DaemonError, ReadyNotifier},
    datapath::{self, Datapath, DatapathConfig, DatapathError},
    directories::{self, Instance},
    host::{self, HostError},
    ipam::{self, IpamError},
    netns::{self, NetnsError},
    rollback::Rollback,
    state::{self, InstanceLock, Ipv6Mode, Ipv6Settings, NetworkRecord, State, StateError},
    tables::Tables,
    topology::{self, TopologyError},
};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("netpath must run as root (try sudo)")]
    NotRoot,
    #[error(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error(
        "instance {instance} exists with {what} {existing}: run `netpath down` first to change it"
    )]
    Conflict {
        instance: String,
        what: &'static str,
        existing: String,
    },
    #[error(
        "subnet {subnet} overlaps {other_subnet} of instance {other} in this network namespace: pass --subnet with another range"
    )]
    SubnetTaken {
        subnet: Ipv4Net,
        other: String,
        other_subnet: Ipv4Net,
    },
    #[error(
        "IPv6 subnet {subnet6} overlaps {other_subnet6} of instance {other} in this network namespace: pass --subnet6 with another range"
    )]
    Subnet6Taken {
        subnet6: Ipv6Net,
        other: String,
        other_subnet6: Ipv6Net,
    },
    #[error("--subnet6 and --ipv6-mode need IPv6: drop them, or drop --ipv6=false")]
    Ipv6Off,
    #[error(
        "this kernel has IPv6 off (no /proc/sys/net/ipv6): pass --ipv6=false, or boot without ipv6.disable=1"
    )]
    NoKernelIpv6,
    #[error("interface {0} already exists: pass --bridge NAME or remove it")]
    BridgeExists(String),
    #[error("invalid bridge name {0:?}: use 1 to 15 letters, digits, '-', '_' or '.'")]
    BadBridgeName(String),
    #[error("no cgroup2 mount found in /proc/mounts: mount one or pass --cgroup PATH")]
    NoCgroup2,
    #[error("cgroup {0} does not exist: pass an existing cgroup v2 directory with --cgroup")]
    NoSuchCgroup(PathBuf),
    #[error(
        "{0} is not in a cgroup v2 hierarchy: pass a directory under the cgroup2 mount (see /proc/mounts) with --cgroup"
    )]
    NotCgroup2(PathBuf),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("agent: {0}")]
    Agent(#[from] AgentError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("datapath: {0}")]
    Datapath(#[from] DatapathError),
}

type Result<T> = std::result::Result<T, InstanceError>;

/// What `up` was asked for; None means "the default, or what the instance
/// already has when adopting".
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    pub uplink: Option<String>,
    pub subnet: Option<Ipv4Net>,
    /// `--ipv6`: Some(false) is `--ipv6=false`.
    pub ipv6: Option<bool>,
    pub subnet6: Option<Ipv6Net>,
    pub ipv6_mode: Option<Ipv6Mode>,
    pub bridge: Option<String>,
    pub accel: Option<Accel>,
    pub cgroup: Option<PathBuf>,
    pub conntrack_size: Option<u32>,
    pub flow_limits: FlowLimits,
    pub snat_ports: Option<(u16, u16)>,
    /// Overrides of the conntrack timeouts, applied in order.
    pub ct_timeouts: Vec<TimeoutSetting>,
    pub agent: AgentOptions,
}

/// Fails with a one-line hint unless we are root: namespaces, netlink
/// changes, bpffs and the state directory all need it.
pub fn check_root() -> Result<()> {
    if geteuid().is_root() {
        Ok(())
    } else {
        Err(InstanceError::NotRoot)
    }
}

/// Fails with a one-line hint unless we are root on a kernel with BTF.
pub fn check_prerequisites() -> Result<()> {
    check_root()?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(InstanceError::NoBtf);
    }
    Ok(())
}

/// Whether `dir` lives on a cgroup2 filesystem.
fn is_cgroup2(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The first cgroup2 mount listed in /proc/mounts.
fn find_cgroup2_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|_| InstanceError::NoCgroup2)?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let mount_point = fields.nth(1)?;
            (fields.next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .next()
        .ok_or(InstanceError::NoCgroup2)
}

pub(crate) fn validate_bridge_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(InstanceError::BadBridgeName(name.to_owned()))
    }
}

/// A locally administered unicast MAC for the bridge, stable per instance
/// and bridge name (see `topology::create_bridge` for why it is fixed).
pub(crate) fn bridge_mac(instance: &str, bridge: &str) -> [u8; 6] {
    let mut hasher = DefaultHasher::new();
    (instance, bridge).hash(&mut hasher);
    let h = hasher.finish().to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// `netpath up`: builds (or adopts) the instance, loads the datapath, then
/// runs the agent until SIGINT/SIGTERM. A detached agent (`ready` is Some)
/// reports success or its error on the readiness pipe.
pub async fn up(
    instance: &Instance,
    options: &UpOptions,
    ready: Option<ReadyNotifier>,
    json: bool,
) -> Result<()> {
    let (agent, state, datapath) = match start(instance, options, ready.is_some(), json).await {
        Ok(started) => started,
        Err(e) => {
            if let Some(ready) = ready {
                ready.fail(&e.to_string());
            }
            return Err(e);
        }
    };
    if let Some(ready) = ready {
        ready.signal();
    }
    let pid = std::process::id();
    let result = agent.run(&state, datapath).await;
    state::remove_pid_if_ours(instance, pid);
    Ok(result?)
}

/// Everything `up` does before the agent runs.
async fn start(
    instance: &Instance,
    options: &UpOptions,
    detached: bool,
    json: bool,
) -> Result<(Agent, State, Datapath)> {
    check_prerequisites()?;
    netns::ensure_bpffs()?;
    let mut rollback = Rollback::default();
    let lock = InstanceLock::acquire_creating(instance)?;
    // The rollback owns the lock: on failure it is released after the undos
    // below it, so no other command sees a half-removed instance; on success
    // the commit releases it.
    rollback.push(move || drop(lock));
    // Before anything of ours exists: an `up` racing another one for the
    // same instance leaves with this error and touches nothing.
    daemon::check_not_running(instance)?;
    let existing = state::load(instance)?;
    let fresh = existing.is_none();
    if fresh && daemon::is_restart() {
        // A supervisor restarting a dead agent of an instance `down` removed
        // meanwhile: there is nothing left to adopt.
        let _ = std::fs::remove_dir_all(instance.run_dir());
        return Err(StateError::from(instance.not_up()).into());
    }
    if fresh {
        // Under the lock, without a state file, the directory is ours: a
        // failed fresh `up` removes it (and anyone waiting for the lock
        // notices, see `InstanceLock`).
        rollback.push(|| {
            let _ = std::fs::remove_dir_all(instance.run_dir());
        });
    }
    if detached {
        daemon::log_to_file(instance)?;
    }
    // Before anything is built: a taken metrics address fails `up` cleanly.
    let agent = Agent::prepare(instance, &options.agent).await?;

    let host = topology::connect()?;
    // A failed fresh `up` removes what it made, pins included; a failed
    // adopt leaves everything as it found it, so no flow is lost.
    let state = match existing {
        Some(existing) => adopt(&host, existing, options).await?,
        None => {
            let state = build(&host, instance, options, &mut rollback).await?;
            let uplink = state.uplink.clone();
            rollback.push(move || {
                let _ = datapath::remove(instance, Some(&uplink));
            });
            state
        }
    };

    if state
        .ipv6
        .as_ref()
        .is_some_and(|ipv6| ipv6.host_ip6.is_none())
    {
        log::warn!(
            "uplink {} has no global IPv6 address: containers' IPv6 reaches the host and each other, not the outside",
            state.uplink
        );
    }
    // Host settings the datapath relies on, in place before it runs, and
    // recorded at once: only the state says what to give back.
    let mut state = state;
    let claims = host::claims(&state, Tables::open(instance).ok().as_ref());
    host::apply(instance, &mut state, &claims, true)?;
    state::save(instance, &state)?;
    if fresh {
        let mut undo_state = state.clone();
        rollback.push(move || {
            let none = host::PortSet::new();
            if let Err(e) = host::apply(instance, &mut undo_state, &none, false) {
                log::warn!("cannot restore the host settings: {e}");
            }
        });
    }
    let datapath = Datapath::load_or_adopt(instance, &datapath_config(&state)?)?;
    let pid = std::process::id();
    state::write_agent(
        instance,
        &state::AgentRecord {
            pid,
            started_at: jiff::Timestamp::now().as_second(),
            restarts: daemon::restart_count(),
        },
    )?;
    rollback.commit();

    print_up_summary(&state, pid, json);
    let _ = io::stdout().flush();
    Ok((agent, state, datapath))
}

/// What `up` prints once the instance is up (in the agent log when detached).
fn print_up_summary(state: &State, pid: u32, json: bool) {
    if json {
        let summary = serde_json::json!({
            "instance": state.instance,
            "bridge": state.bridge,
            "gateway": state.gateway,
            "subnet": state.subnet,
            "subnet6": state.subnet6,
            "gateway6": state.gateway6,
            "uplink": state.uplink,
            "host_ip": state.host_ip,
            "agent_pid": pid,
        });
        println!("{summary}");
    } else {
        let ipv6 = match (state.gateway6, state.subnet6) {
            (Some(gateway6), Some(subnet6)) => format!(" {gateway6}/{}", subnet6.prefix_len()),
            _ => String::new(),
        };
        println!(
            "instance {} up: bridge {} {}/{}{ipv6} via uplink {} ({}), agent pid {pid}",
            state.instance,
            state.bridge,
            state.gateway,
            state.subnet.prefix_len(),
            state.uplink,
            state.host_ip
        );
    }
}

fn datapath_config(state: &State) -> Result<DatapathConfig> {
    let gateway_mac = topology::parse_mac(&state.bridge_mac).ok_or_else(|| {
        TopologyError::NoMac(format!(
            "{} (state has {:?})",
            state.bridge, state.bridge_mac
        ))
    })?;
    Ok(DatapathConfig {
        uplink_name: state.uplink.clone(),
        uplink_ifindex: state.uplink_ifindex,
        host_ip: state.host_ip,
        gateway_mac,
        networks: state
            .networks
            .values()
            .map(|network| (network.id, network.datapath()))
            .collect(),
        accel: state.accel,
        cgroup: state.cgroup.clone(),
        map_sizes: MapSizes {
            conntrack: state.conntrack_size,
            ipv6: state.ipv6.is_some(),
            ..MapSizes::default()
        },
        snat_ports: state.snat_ports,
        flow_limits: state.flow_limits,
        ipv6: state.ipv6.clone(),
    })
}

/// The uplink named `name`, or the default route's: (name, ifindex, IPv4).
async fn resolve_uplink(
    host: &rtnetlink::Handle,
    name: Option<&str>,
) -> Result<(String, u32, Ipv4Addr)> {
    let link = match name {
        Some(name) => topology::get_link(host, name).await?,
        None => {
            let index = topology::default_route_ifindex(host).await?;
            topology::get_link_by_index(host, index).await?
        }
    };
    let index = link.header.index;
    let name = topology::link_name(&link).unwrap_or_default().to_owned();
    let ip = topology::primary_ipv4(host, index)
        .await?
        .ok_or_else(|| TopologyError::NoIpv4(name.clone()))?;
    Ok((name, index, ip))
}

fn resolve_cgroup(requested: Option<&Path>) -> Result<PathBuf> {
    let cgroup = match requested {
        Some(path) => path.to_owned(),
        None => find_cgroup2_mount()?,
    };
    if !cgroup.is_dir() {
        return Err(InstanceError::NoSuchCgroup(cgroup));
    }
    // The socket hooks attach to cgroup v2 only; a v1 hierarchy or a plain
    // directory would fail later with a bare EBADF from bpf_link_create.
    if !is_cgroup2(&cgroup) {
        return Err(InstanceError::NotCgroup2(cgroup));
    }
    Ok(cgroup)
}

/// Fails unless `subnet` and `subnet6` are apart from the subnets of every
/// other instance in this network namespace: two bridges routing one range
/// would split it.
async fn check_subnet_free(
    host: &rtnetlink::Handle,
    instance: &Instance,
    subnet: Ipv4Net,
    subnet6: Option<Ipv6Net>,
) -> Result<()> {
    for (other, network) in networks_of_other_instances(host, instance).await? {
        if overlaps(subnet, network.subnet) {
            return Err(InstanceError::SubnetTaken {
                subnet,
                other,
                other_subnet: network.subnet,
            });
        }
        if let (Some(subnet6), Some(other_subnet6)) = (subnet6, network.subnet6)
            && overlaps(subnet6, other_subnet6)
        {
            return Err(InstanceError::Subnet6Taken {
                subnet6,
                other,
                other_subnet6,
            });
        }
    }
    Ok(())
}

/// Whether two subnets (of one family) share an address.
pub(crate) fn overlaps(a: impl Into<IpNet>, b: impl Into<IpNet>) -> bool {
    let (a, b) = (a.into(), b.into());
    a.contains(&b) || b.contains(&a)
}

/// Every network of the other instances in this network namespace, with
/// the instance's name.
///
/// Another instance is in this netns when its bridge is here, under the name
/// and with the MAC its state records: netpath sets that MAC, derived from
/// the instance's name, so nothing else makes that pair. Weaker tests fail:
/// names and ifindexes repeat in every netns built the same way (every test
/// lab has an `up0` with ifindex 2), and a netns inode number is reused once
/// its netns is gone, so a stale state file could seem to live here. The
/// state files are replaced atomically, so they are read without their
/// locks. (Two fresh `up`s racing in one netns can still both pass.)
pub(crate) async fn networks_of_other_instances(
    host: &rtnetlink::Handle,
    instance: &Instance,
) -> Result<Vec<(String, NetworkRecord)>> {
    let mut taken = Vec::new();
    let Ok(entries) = std::fs::read_dir(directories::run_root()) else {
        return Ok(taken);
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(other) = name.to_str().and_then(|n| Instance::new(n).ok()) else {
            continue;
        };
        if other == *instance {
            continue;
        }
        // Unreadable or corrupt: that instance's own commands report it.
        let Ok(Some(other_state)) = state::load(&other) else {
            continue;
        };
        if bridge_is_here(host, &other_state).await? {
            taken.extend(
                other_state
                    .networks
                    .into_values()
                    .map(|n| (other.name().to_owned(), n)),
            );
        }
    }
    Ok(taken)
}

/// Whether the bridge `state` records is in this netns (see
/// `check_subnet_free`).
async fn bridge_is_here(host: &rtnetlink::Handle, state: &State) -> Result<bool> {
    let Some(link) = topology::find_link(host, &state.bridge).await? else {
        return Ok(false);
    };
    Ok(topology::link_mac(&link)
        .is_some_and(|mac| topology::parse_mac(&state.bridge_mac) == Some(mac)))
}

/// A fresh instance: resolve the uplink, create the bridge with the gateway.
async fn build<'a>(
    host: &rtnetlink::Handle,
    instance: &Instance,
    options: &UpOptions,
    rollback: &mut Rollback<'a>,
) -> Result<State> {
    let subnet = match options.subnet {
        Some(subnet) => subnet,
        None => DEFAULT_SUBNET
            .parse()
            .map_err(|_| IpamError::Exhausted(Ipv4Net::default()))?,
    };
    let gateway = ipam::gateway(subnet)?;
    let ipv6_mode = ipv6_mode(options)?;
    let subnet6 = ipv6_mode.map(|_| {
        options
            .subnet6
            .unwrap_or_else(|| ipam::ula_subnet(instance.name(), 0))
    });
    if let Some(subnet6) = subnet6 {
        ipam::check_subnet6(subnet6, subnet)?;
    }
    let bridge = options
        .bridge
        .clone()
        .unwrap_or_else(|| default_bridge_name(instance.name()));
    validate_bridge_name(&bridge)?;
    let cgroup = resolve_cgroup(options.cgroup.as_deref())?;
    let (uplink, uplink_ifindex, host_ip) = resolve_uplink(host, options.uplink.as_deref()).await?;
    check_subnet_free(host, instance, subnet, subnet6).await?;
    let ipv6 = match ipv6_mode {
        Some(mode) => Some(Ipv6Settings {
            mode,
            host_ip6: topology::global_ipv6(host, uplink_ifindex).await?,
        }),
        None => None,
    };
    if topology::find_link(host, &bridge).await?.is_some() {
        return Err(InstanceError::BridgeExists(bridge));
    }

    let mac = bridge_mac(instance.name(), &bridge);
    let created = bridge.clone();
    rollback.push(move || {
        let _ = topology::delete_link_blocking(&created);
    });
    let gateway6 = subnet6.map(ipam::gateway6);
    let bridge_ifindex =
        set_up_bridge(host, &bridge, mac, (gateway, subnet), gateway6.zip(subnet6)).await?;

    let mut state = State {
        ipv6,
        subnet6,
        gateway6,
        instance: instance.name().to_owned(),
        uplink,
        uplink_ifindex,
        host_ip,
        bridge: bridge.clone(),
        bridge_ifindex,
        bridge_mac: topology::format_mac(&mac),
        subnet,
        gateway,
        accel: options.accel.unwrap_or_default(),
        cgroup,
        conntrack_size: options.conntrack_size.unwrap_or(0),
        flow_limits: options.flow_limits,
        snat_ports: options.snat_ports.unwrap_or(DEFAULT_SNAT_PORTS),
        ct_timeouts: Timeouts::default().with(&options.ct_timeouts),
        containers: Default::default(),
        host: Default::default(),
        networks: Default::default(),
    };
    state.sync_default_network();
    Ok(state)
}

/// Whether IPv6 is on, and how, from `up`'s options (a fresh instance).
fn ipv6_mode(options: &UpOptions) -> Result<Option<Ipv6Mode>> {
    let kernel_has_ipv6 = Path::new("/proc/sys/net/ipv6").exists();
    match options.ipv6 {
        Some(false) if options.subnet6.is_some() || options.ipv6_mode.is_some() => {
            Err(InstanceError::Ipv6Off)
        }
        Some(false) => Ok(None),
        _ if kernel_has_ipv6 => Ok(Some(options.ipv6_mode.unwrap_or_default())),
        None if options.subnet6.is_none() && options.ipv6_mode.is_none() => {
            log::warn!("this kernel has IPv6 off: the instance is IPv4 only");
            Ok(None)
        }
        _ => Err(InstanceError::NoKernelIpv6),
    }
}

/// Makes the bridge `name` of a network (or finds it, made by an earlier
/// `up`), with the instance's bridge MAC, the gateway addresses (`ipv4`,
/// and `ipv6` for a network with IPv6), up: the same for the `up` network
/// and every other one.
pub(crate) async fn set_up_bridge(
    host: &rtnetlink::Handle,
    name: &str,
    mac: [u8; 6],
    (gateway, subnet): (Ipv4Addr, Ipv4Net),
    ipv6: Option<(Ipv6Addr, Ipv6Net)>,
) -> Result<u32> {
    let index = match topology::find_link(host, name).await? {
        Some(link) => link.header.index,
        None => topology::create_bridge(host, name, mac).await?,
    };
    topology::add_ipv4(host, index, gateway, subnet.prefix_len()).await?;
    if let Some((gateway6, subnet6)) = ipv6 {
        topology::add_ipv6(host, index, gateway6, subnet6.prefix_len()).await?;
    }
    topology::set_up(host, index).await?;
    Ok(index)
}

/// An instance whose agent died: keep its bridge and containers, refresh
/// what may have changed (interface indexes, the uplink's address), and
/// recreate the bridge if it vanished.
async fn adopt(host: &rtnetlink::Handle, mut state: State, options: &UpOptions) -> Result<State> {
    let conflict = |what: &'static str, existing: String| InstanceError::Conflict {
        instance: state.instance.clone(),
        what,
        existing,
    };
    if options.subnet.is_some_and(|s| s != state.subnet) {
        return Err(conflict("subnet", state.subnet.to_string()));
    }
    if options.bridge.as_ref().is_some_and(|b| *b != state.bridge) {
        return Err(conflict("bridge", state.bridge.clone()));
    }
    if options.uplink.as_ref().is_some_and(|u| *u != state.uplink) {
        return Err(conflict("uplink", state.uplink.clone()));
    }
    let on_off = |on: bool| if on { "on" } else { "off" }.to_owned();
    if options.ipv6.is_some_and(|on| on != state.ipv6.is_some()) {
        return Err(conflict("IPv6", on_off(state.ipv6.is_some())));
    }
    if options.subnet6.is_some() && options.subnet6 != state.subnet6 {
        let existing = state.subnet6.map_or("none".to_owned(), |s| s.to_string());
        return Err(conflict("IPv6 subnet", existing));
    }
    let mode = state.ipv6.as_ref().map(|settings| settings.mode);
    if options.ipv6_mode.is_some() && options.ipv6_mode != mode {
        let existing = mode.map_or("none (IPv6 is off)".to_owned(), |m| m.to_string());
        return Err(conflict("IPv6 mode", existing));
    }
    if let Some(accel) = options.accel {
        state.accel = accel;
    }
    if let Some(size) = options.conntrack_size {
        state.conntrack_size = size;
    }
    if options.flow_limits.per_container.is_some() {
        state.flow_limits.per_container = options.flow_limits.per_container;
    }
    if options.flow_limits.per_source.is_some() {
        state.flow_limits.per_source = options.flow_limits.per_source;
    }
    if options.flow_limits.snat_ports_per_container.is_some() {
        state.flow_limits.snat_ports_per_container = options.flow_limits.snat_ports_per_container;
    }
    if let Some(range) = options.snat_ports {
        state.snat_ports = range;
    }
    state.ct_timeouts = state.ct_timeouts.with(&options.ct_timeouts);
    if options.cgroup.is_some() {
        state.cgroup = resolve_cgroup(options.cgroup.as_deref())?;
    }
    let (uplink, uplink_ifindex, host_ip) = resolve_uplink(host, Some(&state.uplink)).await?;
    (state.uplink, state.uplink_ifindex, state.host_ip) = (uplink, uplink_ifindex, host_ip);
    if let Some(settings) = state.ipv6.as_mut() {
        settings.host_ip6 = topology::global_ipv6(host, uplink_ifindex).await?;
    }

    let mac = topology::parse_mac(&state.bridge_mac)
        .unwrap_or_else(|| bridge_mac(&state.instance, &state.bridge));
    state.sync_default_network();
    for network in state.networks.values_mut() {
        network.bridge_ifindex = set_up_bridge(
            host,
            &network.bridge,
            mac,
            (network.gateway, network.subnet),
            network.gateway6.zip(network.subnet6),
        )
        .await?;
    }
    state.bridge_ifindex = state
        .network(state::DEFAULT_NETWORK)
        .map_or(state.bridge_ifindex, |n| n.bridge_ifindex);
    let bridge_of = |state: &State, network: &str| {
        state
            .network(network)
            .map_or(state.bridge_ifindex, |n| n.bridge_ifindex)
    };
    let containers: Vec<String> = state.containers.keys().cloned().collect();
    for name in containers {
        let record = &state.containers[&name];
        let first_bridge = bridge_of(&state, &record.network);
        let connected_bridges: Vec<u32> = record
            .connected
            .iter()
            .map(|i| bridge_of(&state, &i.network))
            .collect();
        let record = state.containers.get_mut(&name).expect("listed above");
        if let Some(veth) = &record.host_veth
            && let Some(link) = topology::find_link(host, veth).await?
        {
            record.host_ifindex = Some(link.header.index);
            topology::attach_to_bridge(host, link.header.index, first_bridge).await?;
        }
        for (interface, bridge) in record.connected.iter_mut().zip(connected_bridges) {
            if let Some(link) = topology::find_link(host, &interface.host_veth).await? {
                interface.host_ifindex = link.header.index;
                topology::attach_to_bridge(host, link.header.index, bridge).await?;
            }
        }
    }
    Ok(state)
}

/// `netpath up --detach`: checks what `up` would, then starts it as a daemon.
pub fn up_detached(instance: &Instance) -> Result<u32> {
    check_prerequisites()?;
    Ok(daemon::start_detached(instance)?)
}

/// `netpath down`: removes every trace of the instance, from whatever is
/// left (a crashed agent, a half-removed instance, or nothing at all).
pub fn down(instance: &Instance, grace: Duration) -> Result<bool> {
    let agent_was_running = daemon::stop_agent(instance)?.is_some();
    let pins_existed = instance.pin_root().exists();
    let lock = InstanceLock::acquire(instance)?;
    let state = match state::load(instance) {
        Ok(state) => state,
        Err(e) => {
            log::warn!("{e}; removing what can be found without it");
            None
        }
    };
    let had_something = agent_was_running || pins_existed || lock.is_some() || state.is_some();
    // Whatever is left of the maps; None when the datapath is gone already.
    let mut tables = Tables::open(instance).ok();
    let mut first_error: Option<InstanceError> = None;
    if let Some(state) = &state {
        let records: Vec<_> = state.containers.values().cloned().collect();
        container::stop_processes(&records, grace);
        for record in state.containers.values() {
            if let Err(e) = container::teardown(instance, tables.as_mut(), record) {
                first_error.get_or_insert(e.into());
            }
        }
        for network in state.networks.values() {
            if let Err(e) = topology::delete_link_blocking(&network.bridge) {
                first_error.get_or_insert(e.into());
            }
        }
        let mut state = state.clone();
        if let Err(e) = host::apply(instance, &mut state, &host::PortSet::new(), false) {
            first_error.get_or_insert(e.into());
        }
    }
    let uplink = tables.as_ref().and_then(datapath::configured_uplink);
    if let Err(e) = datapath::remove(instance, uplink.as_deref()) {
        first_error.get_or_insert(e.into());
    }
    if let Some(e) = first_error {
        // Keep the state so a second `down` can retry what failed.
        return Err(e);
    }
    let dir = instance.run_dir();
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StateError::Io {
                what: "remove",
                path: dir.to_owned(),
                source,
            }
            .into());
        }
    }
    drop(lock);
    Ok(had_something)
}

/// What `status` reports.
#[derive(Debug, serde::Serialize)]
pub struct StatusView {
    pub instance: String,
    pub uplink: String,
    pub host_ip: Ipv4Addr,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The `up` network's IPv6 subnet and gateway; None: IPv4 only.
    pub subnet6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    /// `--ipv6-mode`; None: IPv4 only.
    pub ipv6_mode: Option<Ipv6Mode>,
    /// The uplink's IPv6 address masquerade and published ports use.
    pub host_ip6: Option<Ipv6Addr>,
    pub accel: Accel,
    /// `--accel xdp`, but XDP passes everything up to TC: the uplink
    /// delivers frames with partial checksums (a veth peer with TX
    /// checksumming on), which XDP can't translate.
    pub xdp_fallen_back_to_tc: bool,
    pub cgroup: PathBuf,
    pub agent_pid: Option<u32>,
    pub agent_alive: bool,
    /// When the running agent started (RFC 3339, UTC).
    pub agent_started_at: Option<String>,
    /// How many times the supervisor of `up --detach` restarted the agent.
    pub agent_restarts: u32,
    pub pin_dir: PathBuf,
    /// Which program sits on which hook.
    pub attachments: Vec<datapath::Attachment>,
    pub containers: Vec<ContainerView>,
    pub networks: Vec<crate::network::NetworkView>,
    /// The agent runs and the datapath is whole: nothing in `problems`.
    pub healthy: bool,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
}

/// `netpath status`: the instance, and whether it is healthy: its agent
/// alive, every map pinned and every program on its hook.
pub async fn status(instance: &Instance) -> Result<StatusView> {
    let state = state::load_required(instance)?;
    let agent_pid = state::read_pid(instance);
    let agent_alive = agent_pid.is_some_and(state::process_alive);
    let agent = state::read_agent(instance);
    let mut problems = Vec::new();
    match (agent_pid, agent_alive) {
        (_, true) => {}
        (Some(pid), false) => problems.push(format!("the agent (pid {pid}) is not running")),
        (None, false) => problems.push("the agent is not running".to_owned()),
    }
    let expected = datapath::Expected {
        uplink: &state.uplink,
        cgroup: &state.cgroup,
        container_veths: state
            .containers
            .values()
            .filter(|record| record.ip.is_some())
            .filter_map(|record| record.host_veth.as_deref())
            .chain(
                state
                    .containers
                    .values()
                    .flat_map(|record| record.connected.iter().map(|i| i.host_veth.as_str())),
            )
            .collect(),
    };
    let host = topology::connect()?;
    problems.extend(datapath::problems(instance, &host, &expected).await);
    Ok(StatusView {
        instance: state.instance.clone(),
        uplink: state.uplink.clone(),
        host_ip: state.host_ip,
        bridge: state.bridge.clone(),
        subnet: state.subnet,
        gateway: state.gateway,
        subnet6: state.subnet6,
        gateway6: state.gateway6,
        ipv6_mode: state.ipv6.as_ref().map(|settings| settings.mode),
        host_ip6: state.ipv6.as_ref().and_then(|settings| settings.host_ip6),
        accel: state.accel,
        xdp_fallen_back_to_tc: Tables::open(instance)
            .and_then(|tables| tables.config())
            .is_ok_and(|cfg| cfg.xdp_fell_back()),
        cgroup: state.cgroup.clone(),
        agent_pid,
        agent_alive,
        agent_started_at: agent.as_ref().filter(|_| agent_alive).and_then(|a| {
            jiff::Timestamp::from_second(a.started_at)
                .ok()
                .map(|t| t.to_string())
        }),
        agent_restarts: agent.map_or(0, |a| a.restarts),
        pin_dir: instance.pin_root().to_owned(),
        attachments: datapath::attachments(instance, &state.uplink),
        containers: state
            .containers
            .keys()
            .map(|name| container::view(&state, name))
            .collect(),
        networks: crate::network::views(&state),
        healthy: problems.is_empty(),
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_mac_is_local_unicast_and_stable() {
        let mac = bridge_mac("default", "np0");
        assert_eq!(mac[0] & 0x03, 0x02);
        assert_eq!(mac, bridge_mac("default", "np0"));
        assert_eq!(topology::parse_mac(&topology::format_mac(&mac)), Some(mac));
    }

    #[test]
    fn bridge_names_are_checked() {
        assert!(validate_bridge_name("np0").is_ok());
        assert!(validate_bridge_name("").is_err());
        assert!(validate_bridge_name("a234567890123456").is_err());
        assert!(validate_bridge_name("a/b").is_err());
    }
}
