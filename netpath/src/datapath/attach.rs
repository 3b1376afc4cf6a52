//! Attaching programs to interfaces and the cgroup, each once: a program
//! whose link is pinned already (or whose clsact filter is there) is left
//! as it is, which is how a restarted `up` adopts without dropping a flow.
use std::{fs, io, os::fd::AsFd, path::Path};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, Xdp, XdpMode,
        tc::{self, NlOptions, TcAttachOptions},
    },
};
use netpath_common::names;

use super::{
    DatapathError, io_err,
    link_pin::{LinkPin, TcDirection},
    load_program,
    probe::{driver_of, use_tcx},
    prog_err, program,
};
use crate::directories::Instance;

/// The container side of every veth pair.
pub(super) const CONTAINER_IFNAME: &str = "eth0";

/// The cgroup socket hooks, each pinned as `LinkPin::Cgroup`.
pub(super) const SOCK_HOOKS: [&str; 8] = [
    names::PROG_CONNECT4,
    names::PROG_SENDMSG4,
    names::PROG_RECVMSG4,
    names::PROG_GETPEERNAME4,
    names::PROG_CONNECT6,
    names::PROG_SENDMSG6,
    names::PROG_RECVMSG6,
    names::PROG_GETPEERNAME6,
];

/// Handle and priority of our clsact filters on kernels without tcx: fixed, so
/// a second attach finds the first instead of stacking another.
pub(super) const NL_PRIORITY: u16 = 0xe000;
const NL_HANDLE: u32 = 0xe000;

/// Attaches a TC program to `ifname` unless it already is (an adopted pin, or
/// our clsact filter), and pins the link where links exist.
pub(super) fn attach_tc(
    prog: &mut SchedClassifier,
    instance: &Instance,
    ifname: &str,
    direction: TcDirection,
) -> Result<(), DatapathError> {
    let attach_type = direction.attach_type();
    if use_tcx() {
        let pin = LinkPin::tc(ifname, direction);
        if pin.is_pinned(instance) {
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
                direction.name()
            )))?;
        return pin.pin(
            instance,
            prog.take_link(id).map_err(prog_err("taking the TC link"))?,
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

/// Attaches the uplink XDP program and pins the pass-through program for the
/// containers' side. Returns false, with a warning, where the driver refuses.
pub(super) fn attach_xdp(
    ebpf: &mut Ebpf,
    instance: &Instance,
    uplink: &str,
) -> Result<bool, DatapathError> {
    let pass_pin = instance.prog_pin(names::PROG_XDP_PASS);
    if !pass_pin.exists() {
        let pass: &mut Xdp = program(ebpf, names::PROG_XDP_PASS)?;
        load_program(|| pass.load()).map_err(prog_err("loading xdp_pass"))?;
        pass.pin(&pass_pin).map_err(|e| DatapathError::Pin {
            path: pass_pin.display().to_string(),
            message: e.to_string(),
        })?;
    }
    let pin = LinkPin::xdp(uplink);
    if pin.is_pinned(instance) {
        return Ok(true);
    }
    let prog: &mut Xdp = program(ebpf, names::PROG_XDP_UPLINK)?;
    load_program(|| prog.load()).map_err(prog_err("loading xdp_uplink"))?;
    if driver_of(uplink).as_deref() == Some("veth") {
        // A veth's frames come from another stack with the L4 checksum left
        // to offload (CHECKSUM_PARTIAL), which XDP can neither see nor keep.
        log::warn!(
            "{uplink} is a veth: XDP translates its frames only when its peer sends full checksums (ethtool -K PEER tx off); on the first frame with a partial one, XDP hands everything to TC"
        );
    }
    let id = match prog.attach(uplink, XdpMode::default()) {
        Ok(id) => id,
        Err(e) => {
            log::warn!(
                "the driver of {uplink} refused XDP ({e}): the uplink translations stay in TC"
            );
            return Ok(false);
        }
    };
    pin.pin(
        instance,
        prog.take_link(id)
            .map_err(prog_err("taking the XDP link"))?,
    )?;
    Ok(true)
}

pub(super) fn attach_sock_hooks(
    ebpf: &mut Ebpf,
    instance: &Instance,
    cgroup: &Path,
) -> Result<(), DatapathError> {
    let cgroup_dir =
        fs::File::open(cgroup).map_err(io_err(format!("opening cgroup {}", cgroup.display())))?;
    for name in SOCK_HOOKS {
        let pin = LinkPin::cgroup(name);
        if pin.is_pinned(instance) {
            continue;
        }
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        load_program(|| prog.load()).map_err(prog_err(format!("loading {name}")))?;
        let id = prog
            .attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
            .map_err(prog_err(format!(
                "attaching {name} to {}",
                cgroup.display()
            )))?;
        pin.pin(
            instance,
            prog.take_link(id)
                .map_err(prog_err("taking the cgroup link"))?,
        )?;
    }
    Ok(())
}

/// XDP_REDIRECT into a veth delivers to its peer only when the peer runs an
/// XDP program (that is what switches its NAPI on): give the container's
/// `eth0` one that passes everything.
pub(super) fn attach_xdp_pass(
    instance: &Instance,
    netns: &Path,
    container_ifname: &str,
    host_ifname: &str,
) -> Result<(), DatapathError> {
    let pin = LinkPin::xdp(host_ifname);
    if pin.is_pinned(instance) {
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
        .attach(container_ifname, XdpMode::default())
        .map_err(prog_err(format!(
            "attaching xdp_pass to {container_ifname} in {}",
            netns.display()
        )))?;
    pin.pin(
        instance,
        prog.take_link(id)
            .map_err(prog_err("taking the XDP link"))?,
    )
}
