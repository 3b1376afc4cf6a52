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
    net::Ipv4Addr,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    time::Duration,
};

use rtnetlink::Handle;

use crate::{
    datapath::{self, DatapathError, EndpointSpec},
    directories::Instance,
    ipam::{self, IpamError},
    netns::{self, NetnsError, NetnsGuard},
    netns_processes,
    publish::{self, Mapping, PublishError},
    rollback::Rollback,
    state::{self, ContainerRecord, InstanceLock, Mode, Origin, State, StateError},
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
    /// `Created` makes a netns; the others attach the netns they name.
    pub origin: Origin,
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
    pub mac: Option<String>,
    pub host_veth: Option<String>,
    /// netpath's `np-NAME`, or the path of an attached netns.
    pub netns: Option<String>,
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
                mac: record
                    .mac
                    .as_deref()
                    .and_then(topology::parse_mac)
                    .unwrap_or_default(),
                container_netns: netns_path(record),
                container_ifname: record.origin.ifname().to_owned(),
            };
            steps.push(Undo::Endpoint(spec));
        }
    }
    steps
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
fn lock_and_load(instance: &Instance) -> Result<(InstanceLock, State)> {
    let lock =
        InstanceLock::acquire(instance)?.ok_or_else(|| StateError::from(instance.not_up()))?;
    let state = state::load(instance)?.ok_or_else(|| StateError::from(instance.not_up()))?;
    Ok((lock, state))
}

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
    if request.ip.is_some() && request.mode != Mode::Bridge {
        return Err(ContainerError::IpNeedsBridge(request.mode));
    }
    if request.origin != Origin::Created && request.mode != Mode::Bridge {
        return Err(ContainerError::AttachNeedsBridge(request.mode));
    }
    let (_lock, mut state) = lock_and_load(instance)?;
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
            name: request.name.clone(),
            mode: request.mode.clone(),
            origin: Origin::Created,
            netns: None,
            ip: None,
            mac: None,
            host_veth: None,
            host_ifindex: None,
        },
    };
    state.containers.insert(record.name.clone(), record);
    let published_ip = view(&state, &request.name).ip;
    if !mappings.is_empty() {
        let ip = published_ip.ok_or_else(|| PublishError::NoAddress(request.name.clone()))?;
        publish::publish_locked(open_once(&mut tables, instance)?, ip, &mappings)?;
    }
    let saved = match tables.as_ref().filter(|_| !mappings.is_empty()) {
        Some(tables) => publish::reserve_published(instance, tables, state.clone())
            .map_err(ContainerError::from),
        None => state::save(instance, &state).map_err(ContainerError::from),
    };
    if let Err(e) = saved {
        if let (Some(ip), Some(tables)) = (published_ip, tables.as_mut())
            && !mappings.is_empty()
        {
            let _ = publish::remove_for_ip_locked(tables, ip);
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
        name: request.name.clone(),
        mode: Mode::None,
        origin: Origin::Created,
        netns: Some(netns_name),
        ip: None,
        mac: None,
        host_veth: None,
        host_ifindex: None,
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
/// (veth peer of `np-NAME` on the bridge), an address, a default route via
/// the gateway, and the datapath endpoint.
async fn add_bridged<'a>(
    instance: &'a Instance,
    tables: &mut Tables,
    state: &State,
    request: &AddRequest,
    rollback: &mut Rollback<'a>,
) -> Result<ContainerRecord> {
    let used = state
        .containers
        .values()
        .filter_map(|c| c.ip.map(|ip| (ip, c.name.as_str())));
    let ip = ipam::allocate(state.subnet, used, request.ip)?;

    let host = topology::connect()?;
    let host_veth = prefixed(&request.name);
    if topology::find_link(&host, &host_veth).await?.is_some() {
        return Err(ContainerError::HostLinkTaken(host_veth));
    }
    let ifname = request.origin.ifname().to_owned();
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
    let inside = topology::connect_in(&netns_path)?;
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
            netns: netns_path.clone(),
            name: ifname.clone(),
        },
    );
    let host_end = topology::get_link(&inside, &host_veth).await?.header.index;
    let host_netns = netns::open_current_netns()?;
    topology::move_to_netns(&inside, host_end, &host_netns).await?;

    let host_ifindex = topology::get_link(&host, &host_veth).await?.header.index;
    topology::attach_to_bridge(&host, host_ifindex, state.bridge_ifindex).await?;

    let index = topology::get_link(&inside, &ifname).await?.header.index;
    let mac = container_mac(ip);
    topology::set_mac(&inside, index, mac).await?;
    configure_container_side(&inside, index, ip, state).await?;
    use_snat_ports_for_ephemeral(&netns_path, state)?;

    let spec = EndpointSpec {
        host_ifname: host_veth.clone(),
        host_ifindex,
        ip,
        mac,
        container_netns: Some(netns_path.clone()),
        container_ifname: ifname,
    };
    datapath::attach_endpoint(instance, tables, &spec)?;
    push_undo(rollback, instance, Undo::Endpoint(spec));
    for (handle, index) in [(&inside, index), (&host, host_ifindex)] {
        if !topology::wait_operational(handle, index, LINK_UP_TIMEOUT).await? {
            log::warn!("{host_veth}: the veth pair is not up yet; its first packets may be lost");
        }
    }

    Ok(ContainerRecord {
        name: request.name.clone(),
        mode: Mode::Bridge,
        origin: request.origin.clone(),
        netns: netns_name,
        ip: Some(ip),
        mac: Some(topology::format_mac(&mac)),
        host_veth: Some(host_veth),
        host_ifindex: Some(host_ifindex),
    })
}

/// The MAC of the container with address `ip`: derived from it, as Docker
/// does, so a container replaced by one with the same address (a runtime
/// recreating it) has the same MAC too, and no neighbour still holds the
/// old one.
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

/// Inside the container: address on its interface, it and lo up, default
/// route.
async fn configure_container_side(
    inside: &Handle,
    index: u32,
    ip: Ipv4Addr,
    state: &State,
) -> Result<()> {
    topology::add_ipv4(inside, index, ip, state.subnet.prefix_len()).await?;
    topology::set_up(inside, index).await?;
    topology::set_up_by_name(inside, "lo").await?;
    topology::add_default_route(inside, state.gateway).await?;
    Ok(())
}

/// The container takes its ephemeral ports from the SNAT range, so
/// masquerade keeps them (as iptables' MASQUERADE keeps a free source port)
/// instead of handing out ports that a server may still hold in TIME_WAIT
/// for another connection.
fn use_snat_ports_for_ephemeral(netns_path: &Path, state: &State) -> Result<()> {
    let _inside = NetnsGuard::enter(netns_path)?;
    let (min, max) = state.snat_ports;
    crate::sysctl::write("net.ipv4.ip_local_port_range", &format!("{min} {max}"))?;
    Ok(())
}

/// `netpath container rm`: stops the processes in the container's netns if
/// netpath created it (SIGTERM, up to `grace`, SIGKILL), then tears its
/// network down.
pub fn remove(instance: &Instance, name: &str, grace: Duration) -> Result<()> {
    let (_lock, mut state) = lock_and_load(instance)?;
    remove_locked(instance, &mut state, &[name.to_owned()], grace)
}

/// `netpath container detach`: takes netpath's network out of an attached
/// netns, leaving the netns and its processes alone.
pub fn detach(instance: &Instance, name: &str) -> Result<()> {
    let (_lock, mut state) = lock_and_load(instance)?;
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
            if let (Mode::Bridge, Some(ip)) = (&record.mode, record.ip) {
                publish::remove_for_ip_locked(tables, ip)?;
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
        mac: owner.and_then(|o| o.mac.clone()),
        host_veth: owner.and_then(|o| o.host_veth.clone()),
        netns: owner.and_then(|o| {
            o.netns
                .clone()
                .or_else(|| Some(o.origin.foreign_netns()?.display().to_string()))
        }),
    }
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
