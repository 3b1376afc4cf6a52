//! Loading, attaching and pinning the eBPF programs and maps.
//!
//! Everything lives under `/sys/fs/bpf/netpath/<instance>/v<LAYOUT_VERSION>/`:
//! maps, the container program and the links that attach programs, so the
//! datapath outlives the process that set it up, and any later netpath command
//! (or a restarted agent) works on the same objects. On kernels without tcx
//! (before 6.6) TC programs attach as clsact filters with a fixed handle, which
//! stay attached by themselves and which a second attach recognises.
use std::{
    fs, io,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, TcAttachOptions},
    },
    util::KernelVersion,
};
use ipnet::Ipv4Net;
use netpath_common::{CONFIG_FLAG_XDP, Config, Endpoint, LAYOUT_VERSION, names};

use crate::{
    config::{Accel, MapSizes},
    directories::{self, Instance, NotUp},
    tables::{Tables, TablesError},
};

/// The eBPF object built from netpath-ebpf by the build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpath"));

/// Handle and priority of our clsact filters on kernels without tcx: fixed, so
/// a second attach finds the first instead of stacking another.
const NL_PRIORITY: u16 = 0xe000;
const NL_HANDLE: u32 = 0xe000;

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
    #[error(transparent)]
    Tables(#[from] TablesError),
    #[error(
        "kernel {0} is too old: netpath needs Linux 5.10 or newer (bpf_redirect_peer, bpf_redirect_neigh)"
    )]
    KernelTooOld(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Io { what, source }
}

fn prog_err(what: impl Into<String>) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError {
    let what = what.into();
    move |source| match source {
        // One line that names the kernel, never a verifier dump.
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => DatapathError::Refused {
            what,
            kernel: KernelVersion::current().map_or_else(|_| "?".to_string(), |v| format!("{v:?}")),
            reason: verifier_log
                .to_string()
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map_or_else(|| io_error.to_string(), str::to_owned),
        },
        source => DatapathError::Program { what, source },
    }
}

/// What `up` knows once the topology exists.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    pub uplink_name: String,
    pub uplink_ifindex: u32,
    pub host_ip: Ipv4Addr,
    pub bridge_name: String,
    pub bridge_ifindex: u32,
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: [u8; 6],
    pub subnet: Ipv4Net,
    pub accel: Accel,
    /// cgroup v2 directory the socket hooks attach to.
    pub cgroup: PathBuf,
    pub map_sizes: MapSizes,
    /// SNAT port range, host order, inclusive.
    pub snat_ports: (u16, u16),
}

/// A container's attachment point: its host-side veth and its address.
#[derive(Clone, Debug)]
pub struct EndpointSpec {
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub ip: Ipv4Addr,
    /// MAC of the container's eth0.
    pub mac: [u8; 6],
    /// The container's netns, where `eth0` gets the XDP pass-through program
    /// in `--accel xdp` mode.
    pub container_netns: Option<PathBuf>,
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

/// The netns cookie of the calling thread's network namespace, which the
/// socket hooks compare against to act only in the host netns.
fn netns_cookie() -> Result<u64, DatapathError> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .map_err(io_err("opening a socket to read the netns cookie"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, output buffer of the advertised size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io_err(
            "reading the netns cookie (SO_NETNS_COOKIE needs Linux 5.14 or newer)",
        )(io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// Kernels before 5.14 can't give userspace a netns cookie, but the socket
/// hooks can read it: a child process joins the hooked cgroup and connects a
/// UDP socket (nothing is sent) to 127.0.0.1 on a random probe port, and
/// `sock_connect4` records the cookie of the netns it ran in, ours.
fn learn_netns_cookie(tables: &mut Tables, cgroup: &Path) -> Result<u64, DatapathError> {
    let mut random = [0u8; 2];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut random))
        .map_err(io_err("reading /dev/urandom"))?;
    let probe_port = 1024 + u16::from_ne_bytes(random) % (u16::MAX - 1024);
    let mut config = tables.config()?;
    config.netns_cookie = 0;
    config.probe_port = probe_port;
    tables.set_config(&config)?;
    let procs = std::ffi::CString::new(
        cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .map_err(|_| DatapathError::Io {
        what: format!("cgroup path {}", cgroup.display()),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: probe_port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the child only makes async-signal-safe syscalls on data
    // prepared before the fork, then _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            let joined = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            let connected = joined
                && libc::connect(
                    sock,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ) == 0;
            libc::_exit(if connected { 0 } else { 1 });
        }
    }
    if pid < 0 {
        return Err(io_err("forking the netns probe")(io::Error::last_os_error()));
    }
    let mut status = 0;
    // SAFETY: waiting for the child we just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let config = tables.config()?;
    if config.netns_cookie == 0 {
        return Err(DatapathError::Io {
            what: "learning the host netns cookie through the socket hooks".to_string(),
            source: io::Error::other("the probe connect was not seen"),
        });
    }
    Ok(config.netns_cookie)
}

/// Before 5.11 BPF memory counts against RLIMIT_MEMLOCK, which starts tiny.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!("raising RLIMIT_MEMLOCK: {}", io::Error::last_os_error());
    }
}

fn check_kernel() -> Result<(), DatapathError> {
    match KernelVersion::current() {
        Ok(v) if v < KernelVersion::new(5, 10, 0) => {
            Err(DatapathError::KernelTooOld(format!("{v:?}")))
        }
        _ => Ok(()),
    }
}

/// 1 where the kernel has `bpf_ktime_get_coarse_ns` (5.11), for the
/// datapath's `HAS_COARSE_CLOCK`.
pub fn has_coarse_clock() -> u8 {
    u8::from(KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 11, 0)))
}

fn use_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

fn tc_attach_type_name(t: TcAttachType) -> &'static str {
    match t {
        TcAttachType::Egress => "egress",
        _ => "ingress",
    }
}

/// Attaches a TC program to `ifname` unless it already is (an adopted pin, or
/// our clsact filter), and pins the link where links exist.
fn attach_tc(
    prog: &mut SchedClassifier,
    instance: &Instance,
    ifname: &str,
    attach_type: TcAttachType,
) -> Result<(), DatapathError> {
    let what = format!("tc_{ifname}_{}", tc_attach_type_name(attach_type));
    let pin = instance.link_pin(&what);
    if use_tcx() {
        if PinnedLink::from_pin(&pin).is_ok() {
            return Ok(());
        }
        let id = prog
            .attach_with_options(
                ifname,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(prog_err(format!(
                "attaching to {ifname} ({})",
                tc_attach_type_name(attach_type)
            )))?;
        return pin_link(
            prog.take_link(id).map_err(prog_err("taking the TC link"))?,
            &pin,
        );
    }
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => {}
        Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(tc::TcError::NetlinkError(_)) => {} // already there
        Err(e) => {
            return Err(DatapathError::Pin {
                path: ifname.to_string(),
                message: format!("adding the clsact qdisc: {e}"),
            });
        }
    }
    // Without links there is no handle to adopt: replace our filter (a moment
    // on the kernel's path, never two copies of the program).
    let prog_name = prog
        .info()
        .ok()
        .and_then(|i| i.name_as_str().map(str::to_owned));
    if let Some(name) = prog_name {
        let _ = tc::qdisc_detach_program(ifname, attach_type, &name);
    }
    let options = TcAttachOptions::Netlink(NlOptions {
        priority: NL_PRIORITY,
        handle: NL_HANDLE.into(),
        classid: None,
    });
    let id = prog
        .attach_with_options(ifname, attach_type, options)
        .map_err(prog_err(format!("attaching to {ifname}")))?;
    // A clsact filter stays without a process holding it; dropping the link
    // object would remove it.
    let link = prog.take_link(id).map_err(prog_err("taking the TC link"))?;
    std::mem::forget(link);
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
            .load(EBPF_OBJECT)?;

        let netns_cookie = netns_cookie();
        let config = Config {
            host_ip: u32::from_ne_bytes(cfg.host_ip.octets()),
            gateway_ip: u32::from_ne_bytes(cfg.gateway_ip.octets()),
            subnet_addr: u32::from_ne_bytes(cfg.subnet.network().octets()),
            subnet_mask: u32::from_ne_bytes(cfg.subnet.netmask().octets()),
            uplink_ifindex: cfg.uplink_ifindex,
            bridge_ifindex: cfg.bridge_ifindex,
            // 0 never matches: without a cookie the socket hooks stay off.
            netns_cookie: *netns_cookie.as_ref().unwrap_or(&0),
            snat_port_min: cfg.snat_ports.0,
            snat_port_max: cfg.snat_ports.1,
            flags: 0,
            gateway_mac: cfg.gateway_mac,
            probe_port: 0,
        };
        let mut tables = Tables::open(instance)?;
        tables.set_config(&config)?;
        // Loaded or adopted: whatever next hops flows cached may be stale.
        tables.bump_route_generation()?;
        // Host sockets must never be given a port our SNAT may hand out.
        crate::sysctl::write(
            "net.ipv4.ip_local_reserved_ports",
            &format!("{}-{}", cfg.snat_ports.0, cfg.snat_ports.1),
        )
        .map_err(|e| DatapathError::Io {
            what: "reserving the SNAT port range".to_string(),
            source: io::Error::other(e.to_string()),
        })?;

        // The container program is pinned so `container add`, a separate
        // process, can attach it to new veths.
        let from_container: &mut SchedClassifier = program(&mut ebpf, names::PROG_FROM_CONTAINER)?;
        let pin = instance.prog_pin(names::PROG_FROM_CONTAINER);
        if !pin.exists() {
            from_container
                .load()
                .map_err(prog_err("loading from_container"))?;
            from_container.pin(&pin).map_err(|e| DatapathError::Pin {
                path: pin.display().to_string(),
                message: e.to_string(),
            })?;
        }

        for (name, attach_type) in [
            (names::PROG_FROM_UPLINK, TcAttachType::Ingress),
            (names::PROG_TO_UPLINK, TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load().map_err(prog_err(format!("loading {name}")))?;
            attach_tc(prog, instance, &cfg.uplink_name, attach_type)?;
        }
        if cfg.accel == Accel::Xdp && attach_xdp(&mut ebpf, instance, &cfg.uplink_name)? {
            let mut config = tables.config()?;
            config.flags |= CONFIG_FLAG_XDP;
            tables.set_config(&config)?;
        }
        attach_sock_hooks(&mut ebpf, instance, &cfg.cgroup)?;
        if netns_cookie.is_err() {
            // Until the cookie is known the hooks rewrite nothing.
            if let Err(e) = learn_netns_cookie(&mut tables, &cfg.cgroup) {
                eprintln!(
                    "warning: {e}; the host's own access to published ports (socket hooks) is off"
                );
            }
        }
        Ok(Self {
            _ebpf: ebpf,
            tables,
        })
    }
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

/// Attaches the uplink XDP program and pins the pass-through program for the
/// containers' side. Returns false, with a warning, where the driver refuses.
fn attach_xdp(ebpf: &mut Ebpf, instance: &Instance, uplink: &str) -> Result<bool, DatapathError> {
    let pass_pin = instance.prog_pin(names::PROG_XDP_PASS);
    if !pass_pin.exists() {
        let pass: &mut Xdp = program(ebpf, names::PROG_XDP_PASS)?;
        pass.load().map_err(prog_err("loading xdp_pass"))?;
        pass.pin(&pass_pin).map_err(|e| DatapathError::Pin {
            path: pass_pin.display().to_string(),
            message: e.to_string(),
        })?;
    }
    let pin = instance.link_pin(&format!("xdp_{uplink}"));
    if PinnedLink::from_pin(&pin).is_ok() {
        return Ok(true);
    }
    let prog: &mut Xdp = program(ebpf, names::PROG_XDP_UPLINK)?;
    prog.load().map_err(prog_err("loading xdp_uplink"))?;
    if driver_of(uplink).as_deref() == Some("veth") {
        // A veth's frames come from another stack with the L4 checksum left
        // to offload (CHECKSUM_PARTIAL), which XDP can neither see nor keep.
        eprintln!(
            "warning: {uplink} is a veth: XDP translates its frames correctly only when its peer sends full checksums (ethtool -K PEER tx off); otherwise use --accel tc"
        );
    }
    let id = match prog.attach(uplink, XdpMode::default()) {
        Ok(id) => id,
        Err(e) => {
            eprintln!(
                "warning: the driver of {uplink} refused XDP ({e}): the uplink translations stay in TC"
            );
            return Ok(false);
        }
    };
    pin_link(
        prog.take_link(id)
            .map_err(prog_err("taking the XDP link"))?,
        &pin,
    )?;
    Ok(true)
}

fn attach_sock_hooks(
    ebpf: &mut Ebpf,
    instance: &Instance,
    cgroup: &Path,
) -> Result<(), DatapathError> {
    let cgroup_dir =
        fs::File::open(cgroup).map_err(io_err(format!("opening cgroup {}", cgroup.display())))?;
    for name in [
        names::PROG_CONNECT4,
        names::PROG_SENDMSG4,
        names::PROG_RECVMSG4,
        names::PROG_GETPEERNAME4,
    ] {
        let pin = instance.link_pin(name);
        if PinnedLink::from_pin(&pin).is_ok() {
            continue;
        }
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        prog.load().map_err(prog_err(format!("loading {name}")))?;
        let id = prog
            .attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
            .map_err(prog_err(format!(
                "attaching {name} to {}",
                cgroup.display()
            )))?;
        pin_link(
            prog.take_link(id)
                .map_err(prog_err("taking the cgroup link"))?,
            &pin,
        )?;
    }
    Ok(())
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
    tables.add_endpoint(
        ep.ip,
        &Endpoint {
            ifindex: ep.host_ifindex,
            mac: ep.mac,
            network_id: 0,
        },
    )?;
    let mut prog =
        SchedClassifier::from_pin(&pin).map_err(prog_err("opening the pinned from_container"))?;
    attach_tc(&mut prog, instance, &ep.host_ifname, TcAttachType::Ingress)?;
    if tables.config()?.flags & CONFIG_FLAG_XDP != 0
        && let Some(netns) = &ep.container_netns
    {
        attach_xdp_pass(instance, netns, &ep.host_ifname)?;
    }
    Ok(())
}

/// XDP_REDIRECT into a veth delivers to its peer only when the peer runs an
/// XDP program (that is what switches its NAPI on): give the container's
/// `eth0` one that passes everything.
fn attach_xdp_pass(
    instance: &Instance,
    netns: &Path,
    host_ifname: &str,
) -> Result<(), DatapathError> {
    let pin = instance.link_pin(&format!("xdp_{host_ifname}"));
    if PinnedLink::from_pin(&pin).is_ok() {
        return Ok(());
    }
    let mut prog = Xdp::from_pin(
        instance.prog_pin(names::PROG_XDP_PASS),
        aya_obj::programs::XdpAttachType::Interface,
    )
    .map_err(prog_err("opening the pinned xdp_pass"))?;
    let _inside = crate::netns::NetnsGuard::enter(netns).map_err(|e| DatapathError::Io {
        what: format!("entering {}", netns.display()),
        source: io::Error::other(e.to_string()),
    })?;
    let id = prog
        .attach(CONTAINER_IFNAME, XdpMode::default())
        .map_err(prog_err(format!(
            "attaching xdp_pass to {CONTAINER_IFNAME} in {}",
            netns.display()
        )))?;
    pin_link(
        prog.take_link(id)
            .map_err(prog_err("taking the XDP link"))?,
        &pin,
    )
}

/// The container side of every veth pair.
const CONTAINER_IFNAME: &str = "eth0";

/// Pins a link so it outlives this process.
fn pin_link<L>(link: L, pin: &Path) -> Result<(), DatapathError>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    let pin_error = |message: String| DatapathError::Pin {
        path: pin.display().to_string(),
        message,
    };
    let link = FdLink::try_from(link).map_err(|e| pin_error(e.to_string()))?;
    link.pin(pin).map_err(|e| pin_error(e.to_string()))?;
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
    let pin = instance.link_pin(&format!("tc_{}_ingress", ep.host_ifname));
    if let Ok(link) = PinnedLink::from_pin(&pin) {
        // Unpinned and dropped, the link detaches.
        drop(link.unpin());
    }
    if let Some(tables) = tables {
        tables.remove_endpoint(ep.ip)?;
        tables.flush_flows(|key, entry| {
            let ip = u32::from_ne_bytes(ep.ip.octets());
            key.saddr == ip || entry.reply.saddr == ip || key.daddr == ip
        })?;
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
    let dir = instance.pin_dir();
    let mut out = Vec::new();
    let names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("link_").map(str::to_owned))
        .collect();
    for name in names {
        let attachment = if let Some(rest) = name.strip_prefix("tc_") {
            let (ifname, direction) = rest.rsplit_once('_').unwrap_or((rest, ""));
            let program = match (ifname == uplink, direction) {
                (true, "egress") => names::PROG_TO_UPLINK,
                (true, _) => names::PROG_FROM_UPLINK,
                (false, _) => names::PROG_FROM_CONTAINER,
            };
            Attachment {
                program,
                hook: format!("tc {direction}"),
                target: ifname.to_owned(),
            }
        } else if let Some(ifname) = name.strip_prefix("xdp_") {
            if ifname == uplink {
                Attachment {
                    program: names::PROG_XDP_UPLINK,
                    hook: "xdp".to_owned(),
                    target: ifname.to_owned(),
                }
            } else {
                Attachment {
                    program: names::PROG_XDP_PASS,
                    hook: "xdp".to_owned(),
                    target: format!("{CONTAINER_IFNAME} (peer of {ifname})"),
                }
            }
        } else {
            let program = [
                names::PROG_CONNECT4,
                names::PROG_SENDMSG4,
                names::PROG_RECVMSG4,
                names::PROG_GETPEERNAME4,
            ]
            .into_iter()
            .find(|p| *p == name)
            .unwrap_or("unknown");
            Attachment {
                program,
                hook: format!("cgroup {}", name.trim_start_matches("sock_")),
                target: "cgroup".to_owned(),
            }
        };
        out.push(attachment);
    }
    if !use_tcx() && dir.exists() {
        for (program, hook) in [
            (names::PROG_FROM_UPLINK, "tc ingress (clsact)"),
            (names::PROG_TO_UPLINK, "tc egress (clsact)"),
        ] {
            out.push(Attachment {
                program,
                hook: hook.to_owned(),
                target: uplink.to_owned(),
            });
        }
    }
    out.sort_by(|a, b| (&a.target, &a.hook).cmp(&(&b.target, &b.hook)));
    out
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
        for (name, attach_type) in [
            (names::PROG_FROM_UPLINK, TcAttachType::Ingress),
            (names::PROG_TO_UPLINK, TcAttachType::Egress),
        ] {
            let _ = tc::qdisc_detach_program(uplink, attach_type, name);
        }
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_link = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"));
        if is_link && let Ok(link) = PinnedLink::from_pin(&path) {
            // Unpinned and dropped, the link detaches.
            drop(link.unpin());
            continue;
        }
        let _ = fs::remove_file(&path);
    }
    fs::remove_dir(dir).map_err(io_err(format!("removing {}", dir.display())))?;
    // The instance's directory and the shared parent go once empty.
    let _ = fs::remove_dir(instance.pin_root());
    let _ = fs::remove_dir(directories::pins_root());
    Ok(())
}

/// The interface's driver name (ETHTOOL_GDRVINFO), e.g. "veth".
fn driver_of(ifname: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return None;
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    // SAFETY: SIOCETHTOOL with a valid ifreq pointing at a buffer of the
    // size ETHTOOL_GDRVINFO writes.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0)?;
    String::from_utf8(info.driver[..end].to_vec()).ok()
}

fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the size if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    String::from_utf8(buf[..end].to_vec()).ok()
}
