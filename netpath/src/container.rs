//! Containers: `container add`, `attach`, `detach`, `rm`, `ls` and `exec`,
//! and the CNI plugin's ADD/DEL/GC, which are `attach`/`detach` keyed by
//! container ID and interface name.
//!
//! `add` is all or nothing: each completed step registers its undo in a
//! [`Rollback`] guard, which runs the undos in reverse unless the state file
//! was written. `rm` and `down` tear a container down with the same [`Undo`]
//! steps.
//!
//! An attached (or CNI) container lives in a netns netpath did not make: its
//! netns and processes belong to whoever made them, so `rm`, `detach` and
//! `down` only take netpath's veth, endpoint and ports away.
//!
//! Removing a container that others share (`--mode container:NAME`) is
//! refused: the dependents would silently lose their network, so they must be
//! removed first. `down` removes everything, dependents included.
use std::{
    convert::Infallible,
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    datapath::{self, DatapathError, EndpointSpec},
    directories::Instance,
    ipam::{self, IpamError},
    netns::{self, NetnsError, NetnsGuard},
    netns_processes,
    publish::{self, Mapping, PublishError},
    rollback::Rollback,
    state::{
        self, ContainerRecord, InstanceLock, Interface, Mode, NetworkRecord, Origin, State,
        StateError,
    },
    tables::{Tables, TablesError},
    topology::{self, TopologyError},
};

/// How long `add` waits for a new veth pair to carry packets.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest container name: the host-side veth is `np-NAME`, and interface
/// names are at most 15 bytes.
pub const MAX_NAME_LEN: usize = 12;
/// Prefix of a container's netns name and of its host-side veth.
const NAME_PREFIX: &str = "np-";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("datapath: {0}")]
    Datapath(#[from] DatapathError),
    #[error(
        "invalid container name {0:?}: use 1 to {MAX_NAME_LEN} letters, digits, '-' or '_', starting with a letter or digit"
    )]
    BadName(String),
    #[error("container {0} already exists: pick another name or `netpath container rm {0}` first")]
    Duplicate(String),
    #[error("no container named {0}: see `netpath container ls`")]
    Unknown(String),
    #[error("--ip only applies to bridge mode, not {0}")]
    IpNeedsBridge(Mode),
    #[error("an existing netns can only be attached in bridge mode, not {0}")]
    AttachNeedsBridge(Mode),
    #[error(
        "interface {ifname} already exists in {netns}: pick another interface name or remove it"
    )]
    ContainerLinkTaken { ifname: String, netns: String },
    #[error("{0} is netpath's own network namespace: attach a container's netns")]
    OwnNetns(String),
    #[error(
        "container {0} was created by netpath, not attached: remove it with `netpath container rm {0}`"
    )]
    NotAttached(String),
    #[error(
        "container {name} is used by {dependents} (--mode container:{name}): remove them first"
    )]
    SharedBy { name: String, dependents: String },
    #[error(
        "interface {0} already exists in the host netns: remove it or pick another container name"
    )]
    HostLinkTaken(String),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Tables(#[from] TablesError),
    #[error(transparent)]
    Sysctl(#[from] crate::sysctl::SysctlError),
    #[error("no network named {0}: see `netpath network ls`")]
    UnknownNetwork(String),
    #[error("container {container} is on network {network} already")]
    AlreadyOn { container: String, network: String },
    #[error("container {container} is not on network {network}: see `netpath container ls`")]
    NotOn { container: String, network: String },
    #[error(
        "network {network} is container {container}'s first network: remove the container instead"
    )]
    FirstNetwork { container: String, network: String },
    #[error(
        "container {0} has no interface of its own (mode {1}): connect a bridge-mode container"
    )]
    ConnectNeedsBridge(String, Mode),
    #[error(
        "container {container} publishes ports on {ip} (network {network}): `netpath publish rm` them first"
    )]
    PublishedOn {
        container: String,
        network: String,
        ip: Ipv4Addr,
    },
    #[error("cannot run {command}: {source}")]
    Exec {
        command: String,
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, ContainerError>;

/// What `container add` or `attach` (or a CNI ADD) was asked for.
#[derive(Clone, Debug)]
pub struct AddRequest {
    pub name: String,
    pub mode: Mode,
    pub ip: Option<Ipv4Addr>,
    /// Parsed before anything is built, so a bad one leaves nothing behind.
    pub publish: Vec<Mapping>,
    /// `--allow`: who may open flows to the published ports (empty: all).
    pub allow: Vec<ipnet::Ipv4Net>,
    /// `Created` makes a netns; the others attach the netns they name.
    pub origin: Origin,
    /// `--network`: the network of the container's first interface.
    pub network: String,
}

/// A container as shown by `ls`: addresses resolved through `container:`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContainerView {
    pub name: String,
    pub mode: String,
    /// "created" (netpath made the netns), "attached" or "cni".
    pub origin: &'static str,
    /// The runtime's container ID, for CNI attachments.
    pub container_id: Option<String>,
    /// The container's interface.
    pub ifname: String,
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
    pub mac: Option<String>,
    pub host_veth: Option<String>,
    /// netpath's `np-NAME`, or the path of an attached netns.
    pub netns: Option<String>,
    /// Every address, one per network, the first network first.
    pub networks: Vec<state::Address>,
}

/// Checks a container name: it ends up in a netns name and an interface name.
pub fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ContainerError::BadName(name.to_owned()))
    }
}

/// The name of a container's netns and of its host-side veth.
fn prefixed(name: &str) -> String {
    format!("{NAME_PREFIX}{name}")
}

/// One undoable step of building a container.
#[derive(Debug)]
enum Undo {
    NetnsHandle(String),
    HostLink(String),
    /// An interface inside the container's netns (with its veth peer,
    /// wherever that is by now).
    LinkIn {
        netns: PathBuf,
        name: String,
    },
    /// The ephemeral port range of the container's netns, as it was (an
    /// attached netns outlives a failed attach).
    PortRange {
        netns: PathBuf,
        range: String,
    },
    Endpoint(EndpointSpec),
}

impl Undo {
    /// Undoes the step. All undos are blocking (no runtime needed) so they
    /// can run from `Drop`, and tolerate the thing being gone already.
    /// `tables`: the command's open maps, None when the datapath is gone.
    fn run(
        &self,
        instance: &Instance,
        tables: Option<&mut Tables>,
    ) -> std::result::Result<(), ContainerError> {
        match self {
            Undo::NetnsHandle(name) => netns::delete_named_netns(name)?,
            Undo::HostLink(name) => {
                // Deleting the host end deletes the pair now; leaving it to
                // the netns teardown would take an unknown while.
                topology::delete_link_blocking(name)?;
            }
            Undo::LinkIn { netns, name } => {
                let _inside = NetnsGuard::enter(netns)?;
                topology::delete_link_blocking(name)?;
            }
            Undo::PortRange { netns, range } => {
                let _inside = NetnsGuard::enter(netns)?;
                crate::sysctl::write(PORT_RANGE_SYSCTL, range)?;
            }
            Undo::Endpoint(spec) => datapath::detach_endpoint(instance, tables, spec)?,
        }
        Ok(())
    }
}

/// Runs `undos` in reverse order, all of them even when some fail; returns
/// the first failure.
fn run_undos(
    instance: &Instance,
    mut tables: Option<&mut Tables>,
    undos: impl DoubleEndedIterator<Item = Undo>,
) -> Result<()> {
    let mut first_error = None;
    for undo in undos.rev() {
        if let Err(e) = undo.run(instance, tables.as_deref_mut()) {
            log::warn!("cleanup step {undo:?} failed: {e}");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Registers `undo` for a failed `container add`.
fn push_undo<'a>(rollback: &mut Rollback<'a>, instance: &'a Instance, undo: Undo) {
    rollback.push(move || {
        // A failure path: the maps are opened again rather than borrowed
        // from the command, which still holds them.
        let mut tables = match undo {
            Undo::Endpoint(_) => Tables::open(instance).ok(),
            _ => None,
        };
        let _ = run_undos(instance, tables.as_mut(), std::iter::once(undo));
    });
}

/// The undos that take a recorded container apart, in build order.
fn teardown_steps(record: &ContainerRecord) -> Vec<Undo> {
    let mut steps = Vec::new();
    if let Some(netns) = &record.netns {
        steps.push(Undo::NetnsHandle(netns.clone()));
    }
    if let Some(host_veth) = &record.host_veth {
        steps.push(Undo::HostLink(host_veth.clone()));
        if let (Some(ifindex), Some(ip)) = (record.host_ifindex, record.ip) {
            let spec = EndpointSpec {
                host_ifname: host_veth.clone(),
                host_ifindex: ifindex,
                ip,
                ip6: record.ip6,
                mac: record
                    .mac
                    .as_deref()
                    .and_then(topology::parse_mac)
                    .unwrap_or_default(),
                container_netns: netns_path(record),
                container_ifname: record.origin.ifname().to_owned(),
                network_id: 0,
            };
            steps.push(Undo::Endpoint(spec));
        }
    }
    for interface in &record.connected {
        steps.extend(interface_teardown_steps(record, interface));
    }
    steps
}

/// The undos that take one `network connect` interface apart.
fn interface_teardown_steps(record: &ContainerRecord, interface: &Interface) -> [Undo; 2] {
    [
        Undo::HostLink(interface.host_veth.clone()),
        Undo::Endpoint(EndpointSpec {
            host_ifname: interface.host_veth.clone(),
            host_ifindex: interface.host_ifindex,
            ip: interface.ip,
            ip6: interface.ip6,
            mac: topology::parse_mac(&interface.mac).unwrap_or_default(),
            container_netns: netns_path(record),
            container_ifname: interface.ifname.clone(),
            network_id: 0,
        }),
    ]
}

/// Where a container's netns is: netpath's `np-NAME` handle, or the netns
/// it was attached to. None for `host` and `container:OTHER`.
fn netns_path(record: &ContainerRecord) -> Option<PathBuf> {
    match &record.netns {
        Some(name) => Some(netns::named_netns_path(name)),
        None => record.origin.foreign_netns().map(Path::to_owned),
    }
}

/// Stops the processes in the network namespaces of `records` (those with
/// one of their own that netpath created: a `host` container's processes
/// are the host's, a `container:OTHER` one's are OTHER's, and those of an
/// attached netns its owner's), all in one grace period.
pub fn stop_processes(records: &[ContainerRecord], grace: Duration) {
    let paths: Vec<PathBuf> = records
        .iter()
        .filter_map(|record| record.netns.as_deref())
        .map(netns::named_netns_path)
        .collect();
    let paths: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let stuck = netns_processes::stop(&paths, grace);
    if !stuck.is_empty() {
        log::warn!(
            "processes {stuck:?} would not die: their network namespaces stay until they do"
        );
    }
}

/// Takes a recorded container apart (datapath endpoint, veth, netns).
/// `tables`: the command's open maps, None when the datapath is gone.
pub fn teardown(
    instance: &Instance,
    tables: Option<&mut Tables>,
    record: &ContainerRecord,
) -> Result<()> {
    run_undos(instance, tables, teardown_steps(record).into_iter())
}

/// Takes the instance lock and loads the state, which must exist.
/// The command's maps, opened on first use: modes without an endpoint and
/// without published ports never need them.
fn open_once<'t>(tables: &'t mut Option<Tables>, instance: &Instance) -> Result<&'t mut Tables> {
    if tables.is_none() {
        *tables = Some(Tables::open(instance)?);
    }
    Ok(tables.as_mut().expect("opened just above"))
}

/// `netpath container add`.
pub async fn add(instance: &Instance, request: AddRequest) -> Result<ContainerView> {
    validate_name(&request.name)?;
    let mappings = request.publish.clone();
    let allow = request.allow.clone();
    if request.ip.is_some() && request.mode != Mode::Bridge {
        return Err(ContainerError::IpNeedsBridge(request.mode));
    }
    if request.origin != Origin::Created && request.mode != Mode::Bridge {
        return Err(ContainerError::AttachNeedsBridge(request.mode));
    }
    let (_lock, mut state) = state::lock_and_load(instance)?;
    if state.containers.contains_key(&request.name) {
        return Err(ContainerError::Duplicate(request.name));
    }
    if let Mode::Container(other) = &request.mode
        && !state.containers.contains_key(other)
    {
        return Err(ContainerError::Unknown(other.clone()));
    }

    let mut tables = None;
    let mut rollback = Rollback::default();
    let record = match &request.mode {
        Mode::Bridge => {
            let tables = open_once(&mut tables, instance)?;
            add_bridged(instance, tables, &state, &request, &mut rollback).await?
        }
        Mode::None => add_isolated(instance, &request, &mut rollback).await?,
        Mode::Host | Mode::Container(_) => ContainerRecord {
            ip6: None,
            name: request.name.clone(),
            mode: request.mode.clone(),
            origin: Origin::Created,
            netns: None,
            ip: None,
            mac: None,
            host_veth: None,
            host_ifindex: None,
            network: request.network.clone(),
            connected: Vec::new(),
        },
    };
    state.containers.insert(record.name.clone(), record);
    let published_to = match mappings.is_empty() {
        true => None,
        false => Some(publish::container_target(&state, &request.name)?),
    };
    if let Some(target) = published_to {
        publish::publish_locked(
            open_once(&mut tables, instance)?,
            target,
            &request.name,
            &mappings,
            &allow,
        )?;
    }
    let saved = match tables.as_ref().filter(|_| !mappings.is_empty()) {
        Some(tables) => publish::reserve_published(instance, tables, state.clone())
            .map_err(ContainerError::from),
        None => state::save(instance, &state).map_err(ContainerError::from),
    };
    if let Err(e) = saved {
        if let (Some(target), Some(tables)) = (published_to, tables.as_mut())
            && !mappings.is_empty()
        {
            let _ = publish::remove_for_target_locked(tables, target);
        }
        return Err(e);
    }
    rollback.commit();
    Ok(view(&state, &request.name))
}

/// A netns with only `lo` up.
async fn add_isolated<'a>(
    instance: &'a Instance,
    request: &AddRequest,
    rollback: &mut Rollback<'a>,
) -> Result<ContainerRecord> {
    let netns_name = prefixed(&request.name);
    let netns_path = create_netns(instance, &netns_name, rollback)?;
    let inside = topology::connect_in(&netns_path)?;
    topology::set_up_by_name(&inside, "lo").await?;
    Ok(ContainerRecord {
        ip6: None,
        name: request.name.clone(),
        mode: Mode::None,
        origin: Origin::Created,
        netns: Some(netns_name),
        ip: None,
        mac: None,
        host_veth: None,
        host_ifindex: None,
        network: request.network.clone(),
        connected: Vec::new(),
    })
}

fn create_netns<'a>(
    instance: &'a Instance,
    netns_name: &str,
    rollback: &mut Rollback<'a>,
) -> Result<PathBuf> {
    let path = netns::create_named_netns(netns_name)?;
    push_undo(rollback, instance, Undo::NetnsHandle(netns_name.to_owned()));
    Ok(path)
}

/// A netns (made here, or the one attached) with the container's interface
/// (veth peer of `np-NAME` on its network's bridge), an address, a default
/// route via the gateway, and the datapath endpoint.
async fn add_bridged<'a>(
    instance: &'a Instance,
    tables: &mut Tables,
    state: &State,
    request: &AddRequest,
    rollback: &mut Rollback<'a>,
) -> Result<ContainerRecord> {
    let network = network_record(state, &request.network)?;
    let (netns_name, netns_path) = match request.origin.foreign_netns() {
        None => {
            let name = prefixed(&request.name);
            let path = create_netns(instance, &name, rollback)?;
            (Some(name), path)
        }
        Some(path) => {
            check_not_own_netns(path)?;
            (None, path.to_owned())
        }
    };
    let wanted = Wanted {
        network: &request.network,
        ifname: request.origin.ifname().to_owned(),
        host_veth: prefixed(&request.name),
        ip: request.ip,
        default_route: !network.internal,
    };
    let interface = add_interface(instance, tables, state, &netns_path, wanted, rollback).await?;
    topology::set_up_by_name(&topology::connect_in(&netns_path)?, "lo").await?;
    let previous = use_snat_ports_for_ephemeral(&netns_path, state)?;
    push_undo(
        rollback,
        instance,
        Undo::PortRange {
            netns: netns_path.clone(),
            range: previous,
        },
    );

    Ok(ContainerRecord {
        ip6: interface.ip6,
        name: request.name.clone(),
        mode: Mode::Bridge,
        origin: request.origin.clone(),
        netns: netns_name,
        ip: Some(interface.ip),
        mac: Some(interface.mac),
        host_veth: Some(interface.host_veth),
        host_ifindex: Some(interface.host_ifindex),
        network: request.network.clone(),
        connected: Vec::new(),
    })
}

/// The network named `name`.
fn network_record<'s>(state: &'s State, name: &str) -> Result<&'s NetworkRecord> {
    state
        .network(name)
        .ok_or_else(|| ContainerError::UnknownNetwork(name.to_owned()))
}

/// An interface to make in a container's netns.
struct Wanted<'n> {
    network: &'n str,
    /// The container's name for it.
    ifname: String,
    host_veth: String,
    /// `--ip`, else the lowest free address of the network.
    ip: Option<Ipv4Addr>,
    /// Whether the container's default route goes through it.
    default_route: bool,
}

/// Makes one interface of a container: a veth pair from the container's
/// netns into the network's bridge, the address, the route, the datapath
/// endpoint. Each step registers its undo in `rollback`.
async fn add_interface<'a>(
    instance: &'a Instance,
    tables: &mut Tables,
    state: &State,
    netns_path: &Path,
    wanted: Wanted<'_>,
    rollback: &mut Rollback<'a>,
) -> Result<Interface> {
    let network = network_record(state, wanted.network)?;
    let ip = allocate_address(state, network.subnet, wanted.ip)?;
    let (ifname, host_veth) = (wanted.ifname, wanted.host_veth);
    let host = topology::connect()?;
    if topology::find_link(&host, &host_veth).await?.is_some() {
        return Err(ContainerError::HostLinkTaken(host_veth));
    }
    let inside = topology::connect_in(netns_path)?;
    if topology::find_link(&inside, &ifname).await?.is_some() {
        return Err(ContainerError::ContainerLinkTaken {
            ifname,
            netns: netns_path.display().to_string(),
        });
    }

    // The pair is made inside the container's netns, where the container's
    // name for it is checked free just above, and the host end is then moved
    // out. Deleting the inside end deletes the pair wherever its peer is.
    topology::create_veth(&inside, &ifname, &host_veth).await?;
    push_undo(
        rollback,
        instance,
        Undo::LinkIn {
            netns: netns_path.to_owned(),
            name: ifname.clone(),
        },
    );
    let host_end = topology::get_link(&inside, &host_veth).await?.header.index;
    let host_netns = netns::open_current_netns()?;
    topology::move_to_netns(&inside, host_end, &host_netns).await?;

    let host_ifindex = topology::get_link(&host, &host_veth).await?.header.index;
    topology::attach_to_bridge(&host, host_ifindex, network.bridge_ifindex).await?;

    let index = topology::get_link(&inside, &ifname).await?.header.index;
    let mac = container_mac(ip);
    topology::set_mac(&inside, index, mac).await?;
    topology::add_ipv4(&inside, index, ip, network.subnet.prefix_len()).await?;
    // Before the link is up: its link-local address skips DAD too.
    let ip6 = match network.subnet6 {
        Some(subnet6) if ipv6_without_dad(netns_path, &ifname)? => {
            Some(ipam::address6(network.subnet, ip, subnet6))
        }
        _ => None,
    };
    topology::set_up(&inside, index).await?;
    if let (Some(ip6), Some(subnet6)) = (ip6, network.subnet6) {
        topology::add_ipv6(&inside, index, ip6, subnet6.prefix_len()).await?;
    }
    if wanted.default_route {
        add_default_routes(&inside, network.gateway, ip6.and(network.gateway6)).await?;
    }

    let spec = EndpointSpec {
        host_ifname: host_veth.clone(),
        host_ifindex,
        ip,
        ip6,
        mac,
        container_netns: Some(netns_path.to_owned()),
        container_ifname: ifname.clone(),
        network_id: network.id,
    };
    datapath::attach_endpoint(instance, tables, &spec)?;
    push_undo(rollback, instance, Undo::Endpoint(spec));
    for (handle, index) in [(&inside, index), (&host, host_ifindex)] {
        if !topology::wait_operational(handle, index, LINK_UP_TIMEOUT).await? {
            log::warn!("{host_veth}: the veth pair is not up yet; its first packets may be lost");
        }
    }
    topology::replace_neighbour(&host, network.bridge_ifindex, ip, mac).await?;
    if let Some(ip6) = ip6 {
        topology::replace_neighbour(&host, network.bridge_ifindex, ip6, mac).await?;
    }
    Ok(Interface {
        ip6,
        network: wanted.network.to_owned(),
        ifname,
        ip,
        mac: topology::format_mac(&mac),
        host_veth,
        host_ifindex,
    })
}

/// Whether the container's interface `ifname` can have IPv6 (a runtime
/// may have turned it off in its netns, `disable_ipv6`: the container then
/// stays IPv4 only); if so, turns duplicate address detection off on it
/// (`accept_dad`), so its link-local address is usable at once as its
/// other addresses are (added with IFA_F_NODAD): a container is ready as
/// soon as `add` returns. netpath hands out every address, so none is
/// taken.
fn ipv6_without_dad(netns_path: &Path, ifname: &str) -> Result<bool> {
    let _inside = NetnsGuard::enter(netns_path)?;
    let conf = format!("net/ipv6/conf/{ifname}");
    if crate::sysctl::read(&format!("{conf}/disable_ipv6")).is_ok_and(|off| off != "0") {
        log::info!("{ifname} in {}: IPv6 is off there", netns_path.display());
        return Ok(false);
    }
    crate::sysctl::write(&format!("{conf}/accept_dad"), "0")?;
    Ok(true)
}

/// The container's default routes: via `gateway`, and via `gateway6` if
/// its interface there has IPv6.
async fn add_default_routes(
    inside: &rtnetlink::Handle,
    gateway: Ipv4Addr,
    gateway6: Option<Ipv6Addr>,
) -> Result<()> {
    topology::add_default_route(inside, gateway.into()).await?;
    if let Some(gateway6) = gateway6 {
        topology::add_default_route(inside, gateway6.into()).await?;
    }
    Ok(())
}

/// The MAC of the container with address `ip`: derived from it, as Docker
/// does, so a container replaced by one with the same address (a runtime
/// recreating it) has the same MAC too, and no neighbour (the other
/// containers') still holds another one. The host's own entry is replaced
/// by `add` as well, in case earlier tries left it FAILED.
fn container_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x4e, a, b, c, d]
}

/// Refuses to attach the netns netpath runs in: the host's own interfaces
/// and routes would be changed.
fn check_not_own_netns(path: &Path) -> Result<()> {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    if id(path).is_some() && id(path) == id(&netns::current_thread_netns_path()) {
        return Err(ContainerError::OwnNetns(path.display().to_string()));
    }
    Ok(())
}

/// The container takes its ephemeral ports from the SNAT range, so
/// masquerade keeps them (as iptables' MASQUERADE keeps a free source port)
/// instead of handing out ports that a server may still hold in TIME_WAIT
/// for another connection.
/// Returns the range it replaced.
fn use_snat_ports_for_ephemeral(netns_path: &Path, state: &State) -> Result<String> {
    let _inside = NetnsGuard::enter(netns_path)?;
    let previous = crate::sysctl::read(PORT_RANGE_SYSCTL)?;
    let (min, max) = state.snat_ports;
    crate::sysctl::write(PORT_RANGE_SYSCTL, &format!("{min} {max}"))?;
    Ok(previous)
}

const PORT_RANGE_SYSCTL: &str = "net.ipv4.ip_local_port_range";

/// `netpath container rm`: stops the processes in the container's netns if
/// netpath created it (SIGTERM, up to `grace`, SIGKILL), then tears its
/// network down.
pub fn remove(instance: &Instance, name: &str, grace: Duration) -> Result<()> {
    let (_lock, mut state) = state::lock_and_load(instance)?;
    remove_locked(instance, &mut state, &[name.to_owned()], grace)
}

/// `netpath container detach`: takes netpath's network out of an attached
/// netns, leaving the netns and its processes alone.
pub fn detach(instance: &Instance, name: &str) -> Result<()> {
    let (_lock, mut state) = state::lock_and_load(instance)?;
    let record = state
        .containers
        .get(name)
        .ok_or_else(|| ContainerError::Unknown(name.to_owned()))?;
    if record.origin == Origin::Created {
        return Err(ContainerError::NotAttached(name.to_owned()));
    }
    remove_locked(instance, &mut state, &[name.to_owned()], Duration::ZERO)
}

/// CNI DEL: detaches what ADD attached for `container_id` and `ifname`, if
/// anything. Nothing to do (nothing attached, or the instance is down, which
/// took everything away) is success: DEL is idempotent.
pub fn remove_cni(instance: &Instance, container_id: &str, ifname: &str) -> Result<()> {
    remove_cni_where(instance, |origin| match origin {
        Origin::Cni {
            container_id: id,
            ifname: name,
            ..
        } => id == container_id && name == ifname,
        _ => false,
    })
}

/// CNI GC: detaches every CNI attachment of `network` for which `valid`
/// (container ID, ifname) is false.
pub fn gc_cni(
    instance: &Instance,
    network: &str,
    valid: impl Fn(&str, &str) -> bool,
) -> Result<()> {
    remove_cni_where(instance, |origin| match origin {
        Origin::Cni {
            container_id,
            ifname,
            network: of,
            ..
        } => of == network && !valid(container_id, ifname),
        _ => false,
    })
}

fn remove_cni_where(instance: &Instance, doomed: impl Fn(&Origin) -> bool) -> Result<()> {
    let Some(_lock) = InstanceLock::acquire(instance)? else {
        return Ok(());
    };
    let Some(mut state) = state::load(instance)? else {
        return Ok(());
    };
    let names: Vec<String> = state
        .containers
        .values()
        .filter(|record| doomed(&record.origin))
        .map(|record| record.name.clone())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    remove_locked(instance, &mut state, &names, Duration::ZERO)
}

/// Removes the containers `names` (which must exist and not be shared by
/// others) and saves the state. The caller holds the lock. A container
/// whose teardown fails stays recorded, so removing it again retries.
fn remove_locked(
    instance: &Instance,
    state: &mut State,
    names: &[String],
    grace: Duration,
) -> Result<()> {
    let mut records = Vec::new();
    for name in names {
        let record = state
            .containers
            .get(name)
            .ok_or_else(|| ContainerError::Unknown(name.clone()))?;
        let dependents: Vec<&str> = state
            .containers
            .values()
            .filter(|c| c.mode == Mode::Container(name.clone()) && !names.contains(&c.name))
            .map(|c| c.name.as_str())
            .collect();
        if !dependents.is_empty() {
            return Err(ContainerError::SharedBy {
                name: name.clone(),
                dependents: dependents.join(", "),
            });
        }
        records.push(record.clone());
    }
    // Only a container with an address of its own has an endpoint and ports.
    let mut tables = match records.iter().any(|r| r.ip.is_some()) {
        false => None,
        true => match Tables::open(instance) {
            Ok(tables) => Some(tables),
            Err(TablesError::NotUp(_)) => None,
            Err(e) => return Err(e.into()),
        },
    };
    if let Some(tables) = tables.as_mut() {
        for record in &records {
            for address in record.addresses() {
                let target = publish::PublishTarget {
                    ip: address.ip,
                    ip6: address.ip6,
                };
                publish::remove_for_target_locked(tables, target)?;
            }
        }
    }
    stop_processes(&records, grace);
    let mut first_error = None;
    for record in &records {
        match teardown(instance, tables.as_mut(), record) {
            Ok(()) => {
                state.containers.remove(&record.name);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match &tables {
        // Gives back the host ports the containers' mappings reserved.
        Some(tables) => publish::reserve_published(instance, tables, state.clone())?,
        None => state::save(instance, state)?,
    }
    first_error.map_or(Ok(()), Err)
}

/// The record whose network a container uses: itself, or the end of its
/// `container:` chain. None when the chain is broken.
fn network_owner<'a>(state: &'a State, name: &str) -> Option<&'a ContainerRecord> {
    let mut current = state.containers.get(name)?;
    // A chain longer than the number of containers is a loop.
    for _ in 0..=state.containers.len() {
        match &current.mode {
            Mode::Container(other) => current = state.containers.get(other)?,
            _ => return Some(current),
        }
    }
    None
}

/// A container as `ls` shows it.
pub fn view(state: &State, name: &str) -> ContainerView {
    let record = state.containers.get(name);
    let owner = network_owner(state, name);
    let origin = record.map(|r| &r.origin);
    ContainerView {
        name: name.to_owned(),
        mode: record.map(|r| r.mode.to_string()).unwrap_or_default(),
        origin: origin.map_or("created", Origin::kind),
        container_id: match origin {
            Some(Origin::Cni { container_id, .. }) => Some(container_id.clone()),
            _ => None,
        },
        ifname: owner.map_or("eth0", |o| o.origin.ifname()).to_owned(),
        ip: owner.and_then(|o| o.ip),
        ip6: owner.and_then(|o| o.ip6),
        mac: owner.and_then(|o| o.mac.clone()),
        host_veth: owner.and_then(|o| o.host_veth.clone()),
        netns: owner.and_then(|o| {
            o.netns
                .clone()
                .or_else(|| Some(o.origin.foreign_netns()?.display().to_string()))
        }),
        networks: owner.map(ContainerRecord::addresses).unwrap_or_default(),
    }
}

/// `netpath network connect NET CONTAINER [--ip IP]`: a new interface
/// (eth1, eth2, ...) on that network. The container's default route goes
/// through it if none of its networks so far had one (all internal).
pub async fn connect(
    instance: &Instance,
    network: &str,
    name: &str,
    ip: Option<Ipv4Addr>,
) -> Result<ContainerView> {
    let (_lock, mut state) = state::lock_and_load(instance)?;
    let target = network_record(&state, network)?.clone();
    let record = state
        .containers
        .get(name)
        .ok_or_else(|| ContainerError::Unknown(name.to_owned()))?
        .clone();
    if record.mode != Mode::Bridge {
        return Err(ContainerError::ConnectNeedsBridge(
            name.to_owned(),
            record.mode.clone(),
        ));
    }
    let addresses = record.addresses();
    if addresses.iter().any(|a| a.network == network) {
        return Err(ContainerError::AlreadyOn {
            container: name.to_owned(),
            network: network.to_owned(),
        });
    }
    let netns_path = netns_path(&record).ok_or_else(|| ContainerError::Unknown(name.to_owned()))?;
    let has_default_route = default_network(&state, &record).is_some();
    let ifname = (1..)
        .map(|n| format!("eth{n}"))
        .find(|candidate| addresses.iter().all(|a| a.ifname != *candidate))
        .expect("some ethN is free");
    // The veth is named after the address: allocated first.
    let ip = allocate_address(&state, target.subnet, ip)?;
    let wanted = Wanted {
        network,
        ifname,
        host_veth: connected_veth_name(ip),
        ip: Some(ip),
        default_route: !has_default_route && !target.internal,
    };
    let mut tables = Tables::open(instance)?;
    let mut rollback = Rollback::default();
    let interface = add_interface(
        instance,
        &mut tables,
        &state,
        &netns_path,
        wanted,
        &mut rollback,
    )
    .await?;
    state
        .containers
        .get_mut(name)
        .expect("looked up above")
        .connected
        .push(interface);
    state::save(instance, &state)?;
    rollback.commit();
    Ok(view(&state, name))
}

/// The host-side veth of a `network connect` interface: `npx` and the
/// address in hex (11 letters), apart from containers' `np-NAME` and
/// bridges' `np<id>-...`; unique, as networks do not overlap.
fn connected_veth_name(ip: Ipv4Addr) -> String {
    format!("npx{:08x}", u32::from(ip))
}

/// `netpath network disconnect NET CONTAINER`: takes the interface
/// `network connect` made away. Refused for the container's first network
/// and while its published ports lead to that address.
pub async fn disconnect(instance: &Instance, network: &str, name: &str) -> Result<()> {
    let (_lock, mut state) = state::lock_and_load(instance)?;
    network_record(&state, network)?;
    let record = state
        .containers
        .get(name)
        .ok_or_else(|| ContainerError::Unknown(name.to_owned()))?
        .clone();
    if record.ip.is_some() && record.network == network {
        return Err(ContainerError::FirstNetwork {
            container: name.to_owned(),
            network: network.to_owned(),
        });
    }
    let Some(position) = record.connected.iter().position(|i| i.network == network) else {
        return Err(ContainerError::NotOn {
            container: name.to_owned(),
            network: network.to_owned(),
        });
    };
    let interface = &record.connected[position];
    let mut tables = Tables::open(instance)?;
    let published_v4 = tables
        .ports::<u32>()?
        .iter()
        .any(|(_, target)| target.container_ip() == interface.ip);
    let published_v6 = tables
        .ports::<netpath_common::Ip6>()?
        .iter()
        .any(|(_, target)| Some(target.container_ip()) == interface.ip6);
    if published_v4 || published_v6 {
        return Err(ContainerError::PublishedOn {
            container: name.to_owned(),
            network: network.to_owned(),
            ip: interface.ip,
        });
    }
    run_undos(
        instance,
        Some(&mut tables),
        interface_teardown_steps(&record, interface).into_iter(),
    )?;
    let mut remaining = record.clone();
    remaining.connected.remove(position);
    restore_default_route(&state, &record, &remaining).await?;
    state.containers.insert(name.to_owned(), remaining);
    state::save(instance, &state)?;
    Ok(())
}

/// The network of the container's default routes, its first network that
/// is not internal (`add` and `connect` keep it so), and the container's
/// address there.
fn default_network<'s>(
    state: &'s State,
    record: &ContainerRecord,
) -> Option<(&'s NetworkRecord, state::Address)> {
    record
        .addresses()
        .into_iter()
        .filter_map(|a| Some((state.network(&a.network)?, a)))
        .find(|(n, _)| !n.internal)
}

/// After an interface was taken away (`before` had it, `after` has not):
/// if the default route went with it, it goes through the next network
/// that is not internal.
async fn restore_default_route(
    state: &State,
    before: &ContainerRecord,
    after: &ContainerRecord,
) -> Result<()> {
    let (old, new) = (
        default_network(state, before).map(|(n, _)| n.id),
        default_network(state, after),
    );
    if let Some((new, address)) = new
        && old != Some(new.id)
        && let Some(netns) = netns_path(after)
    {
        let gateway6 = address.ip6.and(new.gateway6);
        add_default_routes(&topology::connect_in(&netns)?, new.gateway, gateway6).await?;
    }
    Ok(())
}

/// `netpath container ls`.
pub fn list(instance: &Instance) -> Result<Vec<ContainerView>> {
    let state = state::load_required(instance)?;
    Ok(state
        .containers
        .keys()
        .map(|name| view(&state, name))
        .collect())
}

/// `netpath exec NAME -- CMD...`: runs CMD in the container's network
/// namespace by replacing this process, so CMD's exit status is ours.
pub fn exec(instance: &Instance, name: &str, command: &[String]) -> Result<Infallible> {
    let state = state::load_required(instance)?;
    if !state.containers.contains_key(name) {
        return Err(ContainerError::Unknown(name.to_owned()));
    }
    let owner =
        network_owner(&state, name).ok_or_else(|| ContainerError::Unknown(name.to_owned()))?;
    // Host mode has no netns of its own: the command stays in the host's.
    let _inside = match netns_path(owner) {
        Some(path) => Some(NetnsGuard::enter(&path)?),
        None => None,
    };
    let (program, args) = command.split_first().ok_or_else(|| ContainerError::Exec {
        command: String::new(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given"),
    })?;
    let source = std::process::Command::new(program).args(args).exec();
    Err(ContainerError::Exec {
        command: program.clone(),
        source,
    })
}

/// An address in `subnet` for a new interface: `requested` if free, else
/// the lowest free one, against every address of every container.
fn allocate_address(
    state: &State,
    subnet: ipnet::Ipv4Net,
    requested: Option<Ipv4Addr>,
) -> std::result::Result<Ipv4Addr, IpamError> {
    let used: Vec<(Ipv4Addr, String)> = state
        .containers
        .values()
        .flat_map(|c| c.addresses().into_iter().map(|a| (a.ip, c.name.clone())))
        .collect();
    ipam::allocate(
        subnet,
        used.iter().map(|(ip, owner)| (*ip, owner.as_str())),
        requested,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_names() {
        for good in ["a", "web-1", "db_2", "A23456789012"] {
            assert!(validate_name(good).is_ok(), "{good}");
            assert!(prefixed(good).len() <= 15);
        }
        for bad in ["", "-a", "_a", "a.b", "a b", "a/b", "A234567890123", "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn container_macs_are_local_unicast_and_follow_the_address() {
        let mac = container_mac(Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(mac, [0x02, 0x4e, 10, 77, 0, 2]);
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered, unicast");
    }

    #[test]
    fn macs_round_trip() {
        let mac = [0x02, 0, 0x5e, 0x10, 0xab, 0xff];
        assert_eq!(topology::parse_mac(&topology::format_mac(&mac)), Some(mac));
        assert_eq!(topology::parse_mac("zz"), None);
    }
}
