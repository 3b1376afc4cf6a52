//! Whether the datapath is whole, as the kernel sees it: every map and shared
//! program pinned, and every program on every hook the instance calls for.
//! A hook counts as held when the kernel says so: the pinned link's target
//! (its interface or cgroup; a link whose target went away, or that someone
//! detached, has none), or, for TC without links (kernels before 6.6), our
//! clsact filter on the interface. `status` reports what is missing.
use std::{
    ffi::CString,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::Path,
};

use aya::maps::MapData;
use aya_obj::generated::{bpf_cmd, bpf_link_info, bpf_link_type};
use futures::TryStreamExt;
use netlink_packet_route::tc::TcAttribute;
use netpath_common::{CONFIG_FLAG_XDP, names};

use super::{
    UPLINK_TC_PROGRAMS,
    attach::{CONTAINER_IFNAME, NL_PRIORITY, SOCK_HOOKS},
    link_pin::{LinkPin, TcDirection},
    probe::use_tcx,
};
use crate::{directories::Instance, tables::Tables};

/// What the instance's state says must be attached.
pub struct Expected<'a> {
    pub uplink: &'a str,
    /// The cgroup the socket hooks attach to.
    pub cgroup: &'a Path,
    /// Host-side veths of the containers with an address of their own.
    pub container_veths: Vec<&'a str>,
}

/// One place a program must sit.
enum Hook<'a> {
    Tc(&'a str, TcDirection),
    XdpUplink(&'a str),
    /// The pass-through program on the `eth0` of the container whose
    /// host-side veth is named.
    XdpContainer(&'a str),
    Cgroup(&'static str),
}

/// What is missing, one line each; empty when the datapath is whole.
pub async fn problems(
    instance: &Instance,
    host: &rtnetlink::Handle,
    expected: &Expected<'_>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for map in names::MAPS {
        let path = instance.map_pin(map);
        if MapData::from_pin(&path).is_err() {
            problems.push(format!("map {map} is not pinned ({})", path.display()));
        }
    }
    // Without the CONFIG map nothing says whether XDP is on: its hooks are
    // not checked, the missing map is reported already.
    let xdp = Tables::open(instance)
        .and_then(|tables| tables.config())
        .is_ok_and(|config| config.flags & CONFIG_FLAG_XDP != 0);
    let mut shared_programs = vec![names::PROG_FROM_CONTAINER];
    if xdp {
        shared_programs.push(names::PROG_XDP_PASS);
    }
    for program in shared_programs {
        let path = instance.prog_pin(program);
        if !path.exists() {
            problems.push(format!(
                "program {program} is not pinned ({})",
                path.display()
            ));
        }
    }

    let mut hooks: Vec<(&str, Hook<'_>)> = UPLINK_TC_PROGRAMS
        .into_iter()
        .map(|(program, direction)| (program, Hook::Tc(expected.uplink, direction)))
        .collect();
    if xdp {
        hooks.push((names::PROG_XDP_UPLINK, Hook::XdpUplink(expected.uplink)));
    }
    hooks.extend(SOCK_HOOKS.map(|program| (program, Hook::Cgroup(program))));
    for veth in &expected.container_veths {
        hooks.push((
            names::PROG_FROM_CONTAINER,
            Hook::Tc(veth, TcDirection::Ingress),
        ));
        if xdp {
            hooks.push((names::PROG_XDP_PASS, Hook::XdpContainer(veth)));
        }
    }
    for (program, hook) in hooks {
        if !is_attached(instance, host, expected, &hook).await {
            problems.push(format!(
                "{program} is not attached ({})",
                describe(expected, &hook)
            ));
        }
    }
    problems
}

fn describe(expected: &Expected<'_>, hook: &Hook<'_>) -> String {
    match hook {
        Hook::Tc(ifname, direction) => format!("tc {} of {ifname}", direction.name()),
        Hook::XdpUplink(ifname) => format!("xdp of {ifname}"),
        Hook::XdpContainer(veth) => format!("xdp of the {CONTAINER_IFNAME} behind {veth}"),
        Hook::Cgroup(program) => format!(
            "cgroup {} of {}",
            program.trim_start_matches("sock_"),
            expected.cgroup.display()
        ),
    }
}

async fn is_attached(
    instance: &Instance,
    host: &rtnetlink::Handle,
    expected: &Expected<'_>,
    hook: &Hook<'_>,
) -> bool {
    let ifindex = |name: &str| nix::net::if_::if_nametoindex(name).ok().map(u64::from);
    match *hook {
        Hook::Tc(ifname, direction) if use_tcx() => {
            let target = link_target(&LinkPin::tc(ifname, direction).path(instance));
            target.is_some() && target == ifindex(ifname)
        }
        Hook::Tc(ifname, direction) => has_clsact_filter(host, ifname, direction).await,
        Hook::XdpUplink(ifname) => {
            let target = link_target(&LinkPin::xdp(ifname).path(instance));
            target.is_some() && target == ifindex(ifname)
        }
        // The eth0 lives in the container's netns; attached to anything
        // means attached to it, the only interface the link ever had.
        Hook::XdpContainer(veth) => {
            link_target(&LinkPin::xdp(veth).path(instance)).is_some_and(|target| target != 0)
        }
        // A cgroup's id is its directory's inode number.
        Hook::Cgroup(program) => {
            let target = link_target(&LinkPin::cgroup(program).path(instance));
            target.is_some_and(|id| id != 0)
                && target == std::fs::metadata(expected.cgroup).ok().map(|m| m.ino())
        }
    }
}

/// Whether our clsact filter (a bpf filter at our priority) is on the hook.
async fn has_clsact_filter(host: &rtnetlink::Handle, ifname: &str, direction: TcDirection) -> bool {
    let Ok(ifindex) = nix::net::if_::if_nametoindex(ifname) else {
        return false;
    };
    let Ok(ifindex) = i32::try_from(ifindex) else {
        return false;
    };
    let request = host.traffic_filter(ifindex).get();
    let request = match direction {
        TcDirection::Ingress => request.ingress(),
        TcDirection::Egress => request.egress(),
    };
    let Ok(filters) = request.execute().try_collect::<Vec<_>>().await else {
        return false;
    };
    filters.iter().any(|filter| {
        filter.header.info >> 16 == u32::from(NL_PRIORITY)
            && filter
                .attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(kind) if kind == "bpf"))
    })
}

/// What the kernel says the link pinned at `path` is attached to: an
/// interface index (TC, XDP) or a cgroup id, 0 once it is detached. None
/// when no link is pinned there.
fn link_target(path: &Path) -> Option<u64> {
    /// `union bpf_attr` for BPF_OBJ_GET.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    /// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    fn bpf<T>(cmd: bpf_cmd, attr: &mut T) -> libc::c_long {
        // SAFETY: `attr` is the bpf_attr layout of `cmd`, as large as we say.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd as libc::c_int,
                std::ptr::from_mut(attr),
                size_of::<T>(),
            )
        }
    }

    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut get = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = i32::try_from(bpf(bpf_cmd::BPF_OBJ_GET, &mut get)).ok()?;
    if fd < 0 {
        return None;
    }
    // SAFETY: BPF_OBJ_GET just returned this fd, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a plain C struct of integers and a union of such: all zero is
    // a valid value.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut get_info = InfoByFd {
        bpf_fd: u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd)).ok()?,
        info_len: u32::try_from(size_of::<bpf_link_info>()).ok()?,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    if bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut get_info) < 0 {
        return None;
    }
    let kind = info.type_;
    // SAFETY: the member read is the one the kernel filled in for `kind`.
    unsafe {
        if kind == bpf_link_type::BPF_LINK_TYPE_TCX as u32 {
            Some(u64::from(info.__bindgen_anon_1.tcx.ifindex))
        } else if kind == bpf_link_type::BPF_LINK_TYPE_XDP as u32 {
            Some(u64::from(info.__bindgen_anon_1.xdp.ifindex))
        } else if kind == bpf_link_type::BPF_LINK_TYPE_CGROUP as u32 {
            Some(info.__bindgen_anon_1.cgroup.cgroup_id)
        } else {
            Some(0)
        }
    }
}
