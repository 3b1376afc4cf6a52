//! The one list of the commands netpath's tasks run, the Debian package of
//! each, and the preflight that checks them before a task starts.
//!
//! A fresh machine (a clone, rustup, nothing else) must get through
//! `cargo xtask demo` and `test`: as root where apt-get exists, missing
//! packages are installed; anywhere else the task stops at once, with one
//! line naming what is missing, instead of failing halfway through.

use std::{env, ffi::OsStr, fmt, os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{is_root, status_ok};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Task {
    Demo,
    Test,
    Bench,
    VmTest,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::Demo => "demo",
            Task::Test => "test",
            Task::Bench => "bench",
            Task::VmTest => "vm-test",
        })
    }
}

/// Whether `vm-test` takes a tool into the VM image, as the distribution's
/// binary at this path: busybox's applets cannot stand in for it (its `ip`
/// has no netns support, and its shell runs its own applets whatever PATH
/// says, so no busybox link may shadow these).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InVm {
    No,
    /// The image cannot be built without it.
    Required(&'static str),
    /// Taken along when this machine has it.
    IfPresent(&'static str),
}

#[derive(Debug)]
pub struct Tool {
    /// The command as the tasks run it (looked up in PATH).
    pub command: &'static str,
    /// The Debian/Ubuntu package that provides it.
    pub package: &'static str,
    /// The tasks that run it on this machine.
    pub tasks: &'static [Task],
    pub vm: InVm,
}

const fn tool(
    command: &'static str,
    package: &'static str,
    tasks: &'static [Task],
    vm: InVm,
) -> Tool {
    Tool {
        command,
        package,
        tasks,
        vm,
    }
}

#[rustfmt::skip] // a table: one tool a line
pub const TOOLS: &[Tool] = {
    use InVm::{IfPresent, No, Required};
    use Task::{Bench, Demo, Test, VmTest};
    &[
        tool("ip", "iproute2", &[Demo, Test, Bench, VmTest], Required("/usr/sbin/ip")),
        tool("tc", "iproute2", &[VmTest], Required("/usr/sbin/tc")),
        tool("bridge", "iproute2", &[VmTest], Required("/usr/sbin/bridge")),
        tool("ss", "iproute2", &[VmTest], Required("/usr/bin/ss")),
        tool("ping", "iputils-ping", &[Demo, Test, VmTest], Required("/usr/bin/ping")),
        tool("curl", "curl", &[Demo, Test, VmTest], Required("/usr/bin/curl")),
        tool("python3", "python3", &[Demo, Test, VmTest], Required("/usr/bin/python3")),
        tool("nsenter", "util-linux", &[Test, Bench, VmTest], Required("/usr/bin/nsenter")),
        tool("unshare", "util-linux", &[VmTest], Required("/usr/bin/unshare")),
        tool("setpriv", "util-linux", &[Test, VmTest], Required("/usr/bin/setpriv")),
        tool("dash", "dash", &[VmTest], Required("/usr/bin/dash")),
        tool("bash", "bash", &[Bench, VmTest], Required("/usr/bin/bash")),
        tool("tcpdump", "tcpdump", &[Test], IfPresent("/usr/bin/tcpdump")),
        tool("ethtool", "ethtool", &[Test, Bench], IfPresent("/usr/sbin/ethtool")),
        tool("iptables", "iptables", &[Bench], IfPresent("/usr/sbin/iptables")),
        tool("iptables-save", "iptables", &[Demo, Test], IfPresent("/usr/sbin/iptables-save")),
        tool("iptables-restore", "iptables", &[Bench], No),
        tool("ip6tables-restore", "iptables", &[Bench], No),
        tool("nft", "nftables", &[Bench], No),
        tool("bpftool", "bpftool", &[Test], IfPresent("/usr/sbin/bpftool")),
        tool("promtool", "prometheus", &[Test], No),
        tool("prometheus", "prometheus", &[Test], No),
        tool("systemd-analyze", "systemd", &[Test], No),
        // The real container runtimes of tests/tests/runtimes.rs, each run by
        // the test inside the lab's namespaces with its own directories.
        tool("podman", "podman", &[Test], No),
        tool("runc", "runc", &[Test], No),
        tool("containerd", "containerd", &[Test], No),
        tool("ctr", "containerd", &[Test], No),
        tool("wrk", "wrk", &[Bench], No),
        tool("nginx", "nginx", &[Bench], No),
        tool("iperf3", "iperf3", &[Bench], No),
        // vm-test on this machine: the VM, its busybox (also the rootfs of the
        // runtimes' containers in test), and the private apt
        // that fetches and unpacks Debian's kernels and modules.
        tool("qemu-system-x86_64", "qemu-system-x86", &[VmTest], No),
        tool("busybox", "busybox-static", &[Test, VmTest], No),
        tool("apt-get", "apt", &[VmTest], No),
        tool("dpkg-deb", "dpkg", &[VmTest], No),
        tool("depmod", "kmod", &[VmTest], No),
        tool("xz", "xz-utils", &[VmTest], No),
        tool("zstd", "zstd", &[VmTest], No),
        tool("ldd", "libc-bin", &[VmTest], No),
        // Debugging aids in the VM; no task needs them.
        tool("socat", "socat", &[], IfPresent("/usr/bin/socat")),
        tool("strace", "strace", &[], IfPresent("/usr/bin/strace")),
    ]
};

/// The VM image's tools at their paths: those it needs (`required`) or
/// those it takes when present.
pub fn vm_paths(required: bool) -> impl Iterator<Item = &'static str> {
    TOOLS.iter().filter_map(move |t| match t.vm {
        InVm::Required(path) if required => Some(path),
        InVm::IfPresent(path) if !required => Some(path),
        _ => None,
    })
}

/// Environment variable that turns the installing off (`1`): the preflight
/// then only checks.
const NO_INSTALL: &str = "NETPATH_NO_INSTALL";

/// Makes sure every command `task` runs is in PATH, installing the missing
/// ones' packages with apt-get where it can (root, apt-get present,
/// `NETPATH_NO_INSTALL` unset); otherwise fails with one line naming the
/// missing commands and their packages.
pub fn preflight(task: Task) -> Result<()> {
    let path = env::var_os("PATH").unwrap_or_default();
    let missing = missing(task, &path);
    if missing.is_empty() {
        return Ok(());
    }
    if let Some(reason) = why_not_install(&path) {
        bail!(missing_line(task, &missing, reason));
    }
    install(task, &missing)?;
    let still = self::missing(task, &path);
    if !still.is_empty() {
        bail!(missing_line(task, &still, "apt-get did not provide them"));
    }
    Ok(())
}

/// The tools of `task` that no directory of `path` holds.
fn missing(task: Task, path: &OsStr) -> Vec<&'static Tool> {
    TOOLS
        .iter()
        .filter(|t| t.tasks.contains(&task))
        .filter(|t| !env::split_paths(path).any(|dir| dir.join(t.command).is_file()))
        .collect()
}

/// Why the preflight may not install packages here, if it may not.
fn why_not_install(path: &OsStr) -> Option<&'static str> {
    if env::var_os(NO_INSTALL).is_some_and(|v| !v.is_empty() && v != "0") {
        Some("not installing them because NETPATH_NO_INSTALL is set")
    } else if !is_root() {
        Some("run as root on Debian/Ubuntu to have them installed")
    } else if !env::split_paths(path).any(|dir| dir.join("apt-get").is_file()) {
        Some("no apt-get here: install them with this system's package manager")
    } else {
        None
    }
}

/// The one line a task stops with.
fn missing_line(task: Task, missing: &[&Tool], remedy: &str) -> String {
    let commands: Vec<_> = missing.iter().map(|t| t.command).collect();
    format!(
        "cargo xtask {task}: missing commands {} (Debian/Ubuntu packages {}); {remedy}",
        commands.join(", "),
        packages(missing).join(", ")
    )
}

/// The packages of `tools`, each once, in list order.
fn packages(tools: &[&Tool]) -> Vec<&'static str> {
    let mut packages = Vec::new();
    for t in tools {
        if !packages.contains(&t.package) {
            packages.push(t.package);
        }
    }
    packages
}

/// `apt-get install` of the packages of `missing`, with package scripts
/// kept from starting daemons (nginx, iperf3, prometheus) in this machine's
/// own namespace: the tasks start their own, inside namespaces.
fn install(task: Task, missing: &[&Tool]) -> Result<()> {
    let packages = packages(missing);
    let commands: Vec<_> = missing.iter().map(|t| t.command).collect();
    println!(
        "xtask: cargo xtask {task} needs {}: installing {} with apt-get (no daemons started)",
        commands.join(", "),
        packages.join(" ")
    );
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    status_ok(&mut apt(&["update", "-qq"]))?;
    let _no_daemons = NoDaemons::new()?;
    let mut cmd = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    cmd.args(&packages);
    status_ok(&mut cmd).with_context(|| format!("installing what {task} needs"))
}

/// Debian's `policy-rc.d` hook answering 101 ("action forbidden") to every
/// service start of package scripts, for as long as it lives; removed only
/// when we made it.
struct NoDaemons {
    made: bool,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoDaemons {
    fn new() -> Result<Self> {
        let path = Path::new(POLICY_RC_D);
        if path.exists() {
            return Ok(Self { made: false });
        }
        std::fs::write(path, "#!/bin/sh\nexit 101\n")
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)))
            .with_context(|| format!("writing {POLICY_RC_D}"))?;
        Ok(Self { made: true })
    }
}

impl Drop for NoDaemons {
    fn drop(&mut self) {
        if self.made {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

/// `cargo xtask tools`: the list, one tool a line.
pub fn print() {
    let width = TOOLS.iter().map(|t| t.command.len()).max().unwrap_or(0);
    let pwidth = TOOLS.iter().map(|t| t.package.len()).max().unwrap_or(0);
    for t in TOOLS {
        let tasks: Vec<_> = t.tasks.iter().map(ToString::to_string).collect();
        let vm = match t.vm {
            InVm::No => "",
            InVm::Required(_) => " (in the VM)",
            InVm::IfPresent(_) => " (in the VM if present)",
        };
        let tasks = if tasks.is_empty() {
            "-".to_owned()
        } else {
            tasks.join(",")
        };
        println!("{:width$}  {:pwidth$}  {tasks}{vm}", t.command, t.package);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vm_path_ends_in_its_command() {
        for t in TOOLS {
            if let InVm::Required(p) | InVm::IfPresent(p) = t.vm {
                assert!(p.ends_with(&format!("/{}", t.command)), "{t:?}");
            }
        }
    }

    #[test]
    fn a_command_is_listed_once() {
        for (i, t) in TOOLS.iter().enumerate() {
            assert!(
                TOOLS[i + 1..].iter().all(|u| u.command != t.command),
                "{} twice",
                t.command
            );
        }
    }

    #[test]
    fn the_missing_line_names_each_package_once() {
        let path = std::ffi::OsString::from("/nonexistent-netpath-dir");
        let missing = missing(Task::Demo, &path);
        let line = missing_line(Task::Demo, &missing, "R");
        assert_eq!(
            line,
            "cargo xtask demo: missing commands ip, ping, curl, python3, iptables-save \
             (Debian/Ubuntu packages iproute2, iputils-ping, curl, python3, iptables); R"
        );
    }
}
