//! Loading, attaching and pinning the eBPF programs and maps.
//!
//! Everything lives under `/sys/fs/bpf/netpath/<instance>/v<LAYOUT_VERSION>/`:
//! maps, the container program and the links that attach programs, so the
//! datapath outlives the process that set it up, and any later netpath command
//! (or a restarted agent) works on the same objects. On kernels without tcx
//! (before 6.6) TC programs attach as clsact filters with a fixed handle, which
//! stay attached by themselves and which a second attach recognises.
//!
//! `attach` puts programs on hooks, `link_pin` names the links that keep them
//! there, `health` checks they still are, `probe` asks the kernel what it can
//! do. Host settings the datapath
//! relies on (`ip_forward`, the reserved SNAT ports) belong to the instance's
//! life cycle, not to loading.
mod attach;
mod health;
mod link_pin;
mod probe;

use std::{
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::ProgramArray,
    programs::{SchedClassifier, tc},
    util::KernelVersion,
};
use netpath_common::load::load_program;
use netpath_common::{
    CONFIG_FLAG_IPV6, CONFIG_FLAG_IPV6_ROUTED, CONFIG_FLAG_XDP, Config, Endpoint, LAYOUT_VERSION,
    Network, SLOW_PATH_FROM_CONTAINER, SLOW_PATH_FROM_CONTAINER6, SLOW_PATH_FROM_UPLINK6,
    SLOW_PATH_ICMP_ERROR6, SLOW_PATH_NEW_FLOW, SLOW_PATH_NEW_FLOW6, SLOW_PATH_TO_UPLINK,
    SLOW_PATH_TO_UPLINK6, names,
};

use self::{
    attach::{
        CONTAINER_IFNAME, SOCK_HOOKS, attach_sock_hooks, attach_tc, attach_xdp, attach_xdp_pass,
    },
    probe::{
        check_kernel, forced_probe_port, ifname_of, learn_netns_cookie, netns_cookie,
        raise_memlock, use_tcx,
    },
};
pub use self::{
    health::{Expected, problems},
    link_pin::{LinkPin, TcDirection},
    probe::has_coarse_clock,
};
use crate::{
    config::{Accel, FlowLimits, MapSizes},
    directories::{self, Instance, NotUp},
    state::{Ipv6Mode, Ipv6Settings},
    tables::{Tables, TablesError},
};

/// The eBPF object built from netpath-ebpf by the build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpath"));

/// The TC programs on the uplink, and which way each sees traffic.
const UPLINK_TC_PROGRAMS: [(&str, TcDirection); 2] = [
    (names::PROG_FROM_UPLINK, TcDirection::Ingress),
    (names::PROG_TO_UPLINK, TcDirection::Egress),
];

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "{path} holds a datapath pinned by another netpath version (layout {found}, this one is {LAYOUT_VERSION}): run `netpath down` with that version, or remove the directory"
    )]
    LayoutMismatch { path: String, found: String },
    #[error(transparent)]
    NotUp(#[from] NotUp),
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "{what}: the kernel ({kernel}) refused the program ({reason}); netpath needs Linux 5.10 or newer with BTF"
    )]
    Refused {
        what: String,
        kernel: String,
        reason: String,
    },
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("pinning {path}: {message}")]
    Pin { path: String, message: String },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Tables(#[from] TablesError),
    #[error(
        "kernel {0} is too old: netpath needs Linux 5.10 or newer (bpf_redirect_peer, bpf_redirect_neigh)"
    )]
    KernelTooOld(String),
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Io { what, source }
}

fn prog_err(what: impl Into<String>) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError {
    let what = what.into();
    move |source| match source {
        // One line that names the kernel and the verifier's complaint, never
        // a verifier dump (which goes to the log at debug).
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            log::debug!("{what}: the verifier's log:\n{log}");
            DatapathError::Refused {
                what,
                kernel: KernelVersion::current()
                    .map_or_else(|_| "?".to_string(), |v| format!("{v:?}")),
                reason: verifier_complaint(&log)
                    .map_or_else(|| io_error.to_string(), str::to_owned),
            }
        }
        source => DatapathError::Program { what, source },
    }
}

/// The line of a verifier log that says why: the last one before the
/// closing statistics (verification time, stack depth, instructions
/// processed).
fn verifier_complaint(log: &str) -> Option<&str> {
    const STATISTICS: [&str; 3] = ["verification time", "stack depth", "processed "];
    log.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !STATISTICS.iter().any(|s| l.starts_with(s)))
}

/// What `up` knows once the topology exists.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    pub uplink_name: String,
    pub uplink_ifindex: u32,
    pub host_ip: Ipv4Addr,
    /// The MAC of every bridge of the instance.
    pub gateway_mac: [u8; 6],
    /// Every network of the instance, by id.
    pub networks: Vec<(u16, Network)>,
    pub accel: Accel,
    /// cgroup v2 directory the socket hooks attach to.
    pub cgroup: PathBuf,
    pub map_sizes: MapSizes,
    /// SNAT port range, host order, inclusive.
    pub snat_ports: (u16, u16),
    pub flow_limits: FlowLimits,
    /// `up`'s IPv6 settings; None: IPv4 only.
    pub ipv6: Option<Ipv6Settings>,
}

impl DatapathConfig {
    /// `Config::flags` and `Config::host_ip6` for `ipv6`.
    fn ipv6_config(&self) -> (u32, Option<Ipv6Addr>) {
        match &self.ipv6 {
            None => (0, None),
            Some(settings) => {
                let routed = match settings.mode {
                    Ipv6Mode::Nat => 0,
                    Ipv6Mode::Routed => CONFIG_FLAG_IPV6_ROUTED,
                };
                (CONFIG_FLAG_IPV6 | routed, settings.host_ip6)
            }
        }
    }
}

/// A container's attachment point: its host-side veth and its address.
#[derive(Clone, Debug)]
pub struct EndpointSpec {
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub ip: Ipv4Addr,
    /// The IPv6 address beside `ip`, on networks with IPv6.
    pub ip6: Option<Ipv6Addr>,
    /// MAC of the container's interface.
    pub mac: [u8; 6],
    /// The container's netns, where its interface gets the XDP pass-through
    /// program in `--accel xdp` mode.
    pub container_netns: Option<PathBuf>,
    /// The container's interface (`eth0`, or a CNI_IFNAME).
    pub container_ifname: String,
    /// The network the address is on (its id in `NETWORKS`).
    pub network_id: u16,
}

/// Fails when the instance's pin directory holds another layout version.
fn check_layout(instance: &Instance) -> Result<(), DatapathError> {
    let dir = instance.pin_root();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
    };
    let ours = Instance::layout_dir_name();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != ours {
            return Err(DatapathError::LayoutMismatch {
                path: dir.display().to_string(),
                found: name,
            });
        }
    }
    Ok(())
}

/// A loaded (or adopted) datapath, kept by the agent.
pub struct Datapath {
    /// Keeps the freshly loaded programs and maps open for the agent's life.
    _ebpf: Ebpf,
    pub tables: Tables,
}

impl Datapath {
    /// Loads, attaches and pins everything, or adopts what an earlier `up` of
    /// this instance pinned (without detaching anything, so no flow drops).
    pub fn load_or_adopt(instance: &Instance, cfg: &DatapathConfig) -> Result<Self, DatapathError> {
        check_kernel()?;
        check_layout(instance)?;
        raise_memlock();
        let dir = instance.pin_dir();
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let sizes = cfg.map_sizes.resolved();
        let mut loader = EbpfLoader::new();
        // A pinned map is reused as it is: that is how a restart adopts the
        // tables (the directory's layout version guards against old ones).
        for name in names::MAPS {
            loader.map_pin_path(name, instance.map_pin(name));
        }
        // aya-log-ebpf records below the agent's level are not even written
        // (aya_log_common::Level counts like log::LevelFilter: error = 1).
        let log_level = log::max_level() as u8;
        let mut ebpf = loader
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .override_global("HAS_COARSE_CLOCK", &has_coarse_clock(), true)
            .map_max_entries(names::CONNTRACK, sizes.conntrack)
            .map_max_entries(names::CT_REPLY, sizes.conntrack)
            .map_max_entries(names::PORTS, sizes.ports)
            .map_max_entries(names::ENDPOINTS, sizes.endpoints)
            .map_max_entries(names::CONNTRACK6, sizes.conntrack6)
            .map_max_entries(names::CT_REPLY6, sizes.conntrack6)
            .map_max_entries(names::FLOW_COUNTS6, sizes.counts6)
            .map_max_entries(names::SNAT_SHARES6, sizes.counts6)
            .map_max_entries(names::PORTS6, sizes.ports6)
            .map_max_entries(names::ENDPOINTS6, sizes.endpoints6)
            .load(EBPF_OBJECT)?;

        let forced_probe = forced_probe_port();
        let netns_cookie = match forced_probe {
            Some(_) => Err(DatapathError::Io {
                what: "reading the netns cookie".to_string(),
                source: io::Error::other("NETPATH_FORCE_NETNS_PROBE is set"),
            }),
            None => netns_cookie(),
        };
        let (max_flows_per_container, max_flows_per_source) =
            cfg.flow_limits.resolved(sizes.conntrack);
        let (ipv6_flags, host_ip6) = cfg.ipv6_config();
        let config = Config {
            uplink_ifindex: cfg.uplink_ifindex,
            // 0 never matches: without a cookie the socket hooks stay off.
            netns_cookie: *netns_cookie.as_ref().unwrap_or(&0),
            snat_port_min: cfg.snat_ports.0,
            snat_port_max: cfg.snat_ports.1,
            flags: ipv6_flags,
            host_ip6: host_ip6.map_or([0; 4], netpath_common::host::ip6_to_wire),
            gateway_mac: cfg.gateway_mac,
            probe_port: 0,
            probe_cookie: 0,
            max_flows_per_container,
            max_flows_per_source,
            snat_ports_per_container: cfg
                .flow_limits
                .snat_share(u32::from(cfg.snat_ports.1 - cfg.snat_ports.0) + 1),
            ..Config::new(cfg.host_ip)
        };
        let mut tables = Tables::open(instance)?;
        tables.set_config(&config)?;
        for (id, network) in &cfg.networks {
            tables.set_network(*id, network)?;
        }
        // Loaded or adopted: whatever next hops flows cached may be stale.
        tables.bump_route_generation()?;

        // The container program is pinned so `container add`, a separate
        // process, can attach it to new veths.
        let from_container: &mut SchedClassifier = program(&mut ebpf, names::PROG_FROM_CONTAINER)?;
        let pin = instance.prog_pin(names::PROG_FROM_CONTAINER);
        if !pin.exists() {
            load_program(|| from_container.load()).map_err(prog_err("loading from_container"))?;
            from_container.pin(&pin).map_err(|e| DatapathError::Pin {
                path: pin.display().to_string(),
                message: e.to_string(),
            })?;
        }

        for (name, direction) in UPLINK_TC_PROGRAMS {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            load_program(|| prog.load()).map_err(prog_err(format!("loading {name}")))?;
            attach_tc(prog, instance, &cfg.uplink_name, direction)?;
        }
        link_slow_paths(&mut ebpf, &pin)?;
        if cfg.accel == Accel::Xdp && attach_xdp(&mut ebpf, instance, &cfg.uplink_name)? {
            let mut config = tables.config()?;
            config.flags |= CONFIG_FLAG_XDP;
            tables.set_config(&config)?;
        }
        attach_sock_hooks(&mut ebpf, instance, &cfg.cgroup)?;
        if netns_cookie.is_err() {
            // Until the cookie is known the hooks rewrite nothing.
            if let Err(e) = learn_netns_cookie(&mut tables, &cfg.cgroup, forced_probe) {
                log::warn!("{e}; the host's own access to published ports (socket hooks) is off");
            }
        }
        Ok(Self {
            _ebpf: ebpf,
            tables,
        })
    }
}

/// Fills `SLOW_PATHS`: `from_container_new_flow` and the IPv6 programs,
/// freshly loaded, and the programs the new-flow slow paths return to:
/// `to_uplink`, loaded just before, and the pinned `from_container`, which
/// may be an adopted one (the instance's veths run it).
fn link_slow_paths(ebpf: &mut Ebpf, from_container_pin: &Path) -> Result<(), DatapathError> {
    let fd = |prog: &SchedClassifier, name: &str| {
        prog.fd()
            .map_err(prog_err(name.to_string()))?
            .try_clone()
            .map_err(io_err("duplicating a program fd"))
    };
    let mut load = |name: &'static str| {
        let prog: &mut SchedClassifier = program(ebpf, name)?;
        load_program(|| prog.load()).map_err(prog_err(format!("loading {name}")))?;
        fd(prog, name)
    };
    let new_flow = load(names::PROG_FROM_CONTAINER_NEW_FLOW)?;
    let new_flow6 = load(names::PROG_FROM_CONTAINER6_NEW_FLOW)?;
    let from_container6 = load(names::PROG_FROM_CONTAINER6)?;
    let from_uplink6 = load(names::PROG_FROM_UPLINK6)?;
    let to_uplink6 = load(names::PROG_TO_UPLINK6)?;
    let icmp_error6 = load(names::PROG_ICMP_ERROR6)?;
    let to_uplink = fd(program(ebpf, names::PROG_TO_UPLINK)?, names::PROG_TO_UPLINK)?;
    let from_container = fd(
        &SchedClassifier::from_pin(from_container_pin)
            .map_err(prog_err("opening the pinned from_container"))?,
        names::PROG_FROM_CONTAINER,
    )?;
    let map = ebpf
        .map_mut(names::SLOW_PATHS)
        .ok_or_else(|| DatapathError::Program {
            what: format!("the eBPF object has no map {}", names::SLOW_PATHS),
            source: aya::programs::ProgramError::NotLoaded,
        })?;
    let mut slow_paths = ProgramArray::try_from(map).map_err(map_err(names::SLOW_PATHS))?;
    for (index, prog) in [
        (SLOW_PATH_NEW_FLOW, &new_flow),
        (SLOW_PATH_FROM_CONTAINER, &from_container),
        (SLOW_PATH_TO_UPLINK, &to_uplink),
        (SLOW_PATH_NEW_FLOW6, &new_flow6),
        (SLOW_PATH_FROM_CONTAINER6, &from_container6),
        (SLOW_PATH_TO_UPLINK6, &to_uplink6),
        (SLOW_PATH_FROM_UPLINK6, &from_uplink6),
        (SLOW_PATH_ICMP_ERROR6, &icmp_error6),
    ] {
        slow_paths
            .set(index, prog, 0)
            .map_err(map_err(names::SLOW_PATHS))?;
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::Program {
            what: format!("the eBPF object has no program {name}"),
            source: aya::programs::ProgramError::NotLoaded,
        })?;
    prog.try_into().map_err(prog_err(format!("program {name}")))
}

/// Attaches the container program to a host-side veth and records the endpoint.
/// Works from any process: it opens the pinned program.
pub fn attach_endpoint(
    instance: &Instance,
    tables: &mut Tables,
    ep: &EndpointSpec,
) -> Result<(), DatapathError> {
    let pin = instance.prog_pin(names::PROG_FROM_CONTAINER);
    if !pin.exists() {
        return Err(instance.not_up().into());
    }
    raise_memlock();
    let endpoint = Endpoint::new(ep.host_ifindex, ep.mac, ep.network_id);
    tables.add_endpoint(ep.ip, &endpoint)?;
    if let Some(ip6) = ep.ip6 {
        tables.add_endpoint6(ip6, &endpoint)?;
    }
    let mut prog =
        SchedClassifier::from_pin(&pin).map_err(prog_err("opening the pinned from_container"))?;
    attach_tc(&mut prog, instance, &ep.host_ifname, TcDirection::Ingress)?;
    if tables.config()?.flags & CONFIG_FLAG_XDP != 0
        && let Some(netns) = &ep.container_netns
    {
        attach_xdp_pass(instance, netns, &ep.container_ifname, &ep.host_ifname)?;
    }
    Ok(())
}

/// Undoes `attach_endpoint` (the veth's own deletion removes a clsact filter);
/// also flushes the endpoint's flows. `tables` is None when the datapath is
/// gone already.
pub fn detach_endpoint(
    instance: &Instance,
    tables: Option<&mut Tables>,
    ep: &EndpointSpec,
) -> Result<(), DatapathError> {
    LinkPin::tc(&ep.host_ifname, TcDirection::Ingress).unpin(instance);
    if let Some(tables) = tables {
        tables.remove_endpoint(ep.ip)?;
        tables.flush_flows_of(ep.ip)?;
        if let Some(ip6) = ep.ip6 {
            tables.remove_endpoint6(ip6)?;
            tables.flush_flows_of(ip6)?;
        }
    }
    Ok(())
}

/// Where a program of the instance is attached, as `status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attachment {
    pub program: &'static str,
    pub hook: String,
    pub target: String,
}

/// The instance's attachments, read from its link pins (on kernels without
/// tcx the uplink's clsact filters have none: they are listed from the state
/// by the caller's `uplink`).
pub fn attachments(instance: &Instance, uplink: &str) -> Vec<Attachment> {
    let mut out: Vec<Attachment> = LinkPin::list(instance)
        .into_iter()
        .map(|link| attachment(&link, uplink))
        .collect();
    if !use_tcx() && instance.pin_dir().exists() {
        for (program, direction) in UPLINK_TC_PROGRAMS {
            out.push(Attachment {
                program,
                hook: format!("tc {} (clsact)", direction.name()),
                target: uplink.to_owned(),
            });
        }
    }
    out.sort_by(|a, b| (&a.target, &a.hook).cmp(&(&b.target, &b.hook)));
    out
}

/// What a link pin attaches where.
fn attachment(link: &LinkPin, uplink: &str) -> Attachment {
    match link {
        LinkPin::Tc { ifname, direction } => Attachment {
            program: match (ifname == uplink, direction) {
                (true, TcDirection::Egress) => names::PROG_TO_UPLINK,
                (true, TcDirection::Ingress) => names::PROG_FROM_UPLINK,
                (false, _) => names::PROG_FROM_CONTAINER,
            },
            hook: format!("tc {}", direction.name()),
            target: ifname.clone(),
        },
        LinkPin::Xdp { ifname } if ifname == uplink => Attachment {
            program: names::PROG_XDP_UPLINK,
            hook: "xdp".to_owned(),
            target: ifname.clone(),
        },
        LinkPin::Xdp { ifname } => Attachment {
            program: names::PROG_XDP_PASS,
            hook: "xdp".to_owned(),
            target: format!("{CONTAINER_IFNAME} (peer of {ifname})"),
        },
        LinkPin::Cgroup { program } => Attachment {
            program: SOCK_HOOKS
                .into_iter()
                .find(|p| p == program)
                .unwrap_or("unknown"),
            hook: format!("cgroup {}", program.trim_start_matches("sock_")),
            target: "cgroup".to_owned(),
        },
    }
}

/// The name of the uplink the datapath was configured with, if it still exists.
pub fn configured_uplink(tables: &Tables) -> Option<String> {
    tables
        .config()
        .ok()
        .and_then(|c| ifname_of(c.uplink_ifindex))
}

/// Removes every pin of this layout version, which detaches its programs
/// (clsact filters on `uplink` are removed by name). Pins of another
/// version are never touched: that version's `down` owns them. Idempotent.
pub fn remove(instance: &Instance, uplink: Option<&str>) -> Result<(), DatapathError> {
    let dir = instance.pin_dir();
    if let Some(uplink) = uplink
        && !use_tcx()
    {
        for (name, direction) in UPLINK_TC_PROGRAMS {
            let _ = tc::qdisc_detach_program(uplink, direction.attach_type(), name);
        }
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
    };
    for entry in entries.flatten() {
        let link = entry.file_name().to_str().and_then(LinkPin::parse);
        if link.is_some_and(|link| link.unpin(instance)) {
            continue;
        }
        let _ = fs::remove_file(entry.path());
    }
    fs::remove_dir(dir).map_err(io_err(format!("removing {}", dir.display())))?;
    // The instance's directory and the shared parent go once empty.
    let _ = fs::remove_dir(instance.pin_root());
    let _ = fs::remove_dir(directories::pins_root());
    Ok(())
}
