//! Test harness: namespaces, netpath instances and servers with RAII cleanup.
//!
//! Everything here runs inside network namespaces the harness creates; nothing
//! touches the machine's own interfaces, routes or sysctls. Every resource is
//! owned by a guard whose `Drop` removes it, so a failing test cleans up too.
//!
//! Commands are run in a namespace with `nsenter --net=/run/netns/NAME`, not
//! with `ip netns exec`: the latter also unshares the mount namespace and
//! remounts `/sys`, which hides `/sys/fs/bpf` and the cgroup2 mount from the
//! child and keeps the `/run/netns` bind mounts it creates (container
//! namespaces) from propagating back. `nsenter --net` switches the network
//! namespace only, which is what "netpath runs in a netns that plays the host"
//! means.

mod capture;
mod cgroup;
mod client;
mod cmd;
mod lab;
mod names;
mod netns;
mod server;

pub use capture::Capture;
pub use cgroup::{TestCgroup, cgroup2_mount};
pub use client::{
    curl, http_source, ipv6_client, ping, ping_ok, udp_request, udp_request_from, udp_source, url,
};
pub use cmd::{CmdOutput, Place, run, run_timeout, run_with_input};
pub use lab::{Lab, NeighbourInstance, netpath_bin, netpath_cni_bin};
pub use names::unique_name;
pub use netns::{Netns, kill_netns_processes};
pub use server::{Server, ServerKind};

/// Panics with a clear message unless the tests run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the netpath end-to-end tests need root (network namespaces, eBPF); run `cargo xtask test` as root"
    );
}
pub mod flowfill;
pub mod inject;
pub mod packet;
pub mod runtime;
pub mod testrun;

/// Runs each named scenario (a `fn(accel: &str)` in the calling module) as
/// two tests, with the uplink translations in TC and in XDP:
/// `tc::NAME` and `xdp::NAME`.
#[macro_export]
macro_rules! with_each_accel {
    ($($scenario:ident),* $(,)?) => {
        mod tc {
            $(#[test] fn $scenario() { super::$scenario("tc") })*
        }
        mod xdp {
            $(#[test] fn $scenario() { super::$scenario("xdp") })*
        }
    };
}
