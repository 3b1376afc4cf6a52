use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;

use crate::cgroup::TestCgroup;
use crate::cmd::{CmdOutput, Place, run_timeout};
use crate::names::unique_name;
use crate::netns::{Netns, kill_netns_processes};

/// Timeout for one netpath invocation.
const NETPATH_TIMEOUT: Duration = Duration::from_secs(120);

/// The netpath binary under test: `$NETPATH_BIN`, else `target/<profile>/netpath`
/// next to the test executable (`target/<profile>/deps/<test>`).
pub fn netpath_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETPATH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.join("netpath")
}

/// The CNI plugin under test: `$NETPATH_CNI_BIN`, else `netpath-cni` next
/// to [`netpath_bin`] (cargo builds both into one directory).
pub fn netpath_cni_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETPATH_CNI_BIN") {
        return PathBuf::from(p);
    }
    netpath_bin().with_file_name("netpath-cni")
}

/// The standard topology: a netns H that plays the host, a netns O that
/// plays the outside world, and a veth between them.
///
/// ```text
///  H (host)                                O (outside)
///  up0 198.18.0.1/24  <-- veth -->  out0 198.18.0.2/24
///      2001:db8::1/64                      2001:db8::2/64
///  default via 198.18.0.2                lo: 198.19.0.2/32 (REMOTE_IP)
///  default via 2001:db8::2                   2001:db8:ffff::2/128 (REMOTE_IP6)
/// ```
///
/// The IPv6 addresses are documentation ones (2001:db8::/32), added without
/// duplicate address detection so they are usable at once.
///
/// netpath runs in H with a unique `--instance` and a cgroup2 directory of
/// the lab's own. Drop: `netpath down` (errors ignored), kill what the lab
/// started, remove leftovers of the instance, the recorded container netns,
/// H, O and the cgroup.
pub struct Lab {
    instance: String,
    bin: PathBuf,
    recorded_netns: Mutex<Vec<String>>,
    children: Mutex<Vec<Child>>,
    /// Fields below drop after `Drop::drop`, in this order.
    pub host: Netns,
    pub outside: Netns,
    cgroup: TestCgroup,
}

impl Lab {
    pub const UPLINK: &'static str = "up0";
    pub const OUTSIDE_IF: &'static str = "out0";
    /// H's uplink address: what masqueraded traffic arrives from.
    pub const HOST_IP: &'static str = "198.18.0.1";
    /// O's address on the veth; H's default gateway.
    pub const OUTSIDE_IP: &'static str = "198.18.0.2";
    /// An address on O's lo, reached from H through the default route.
    pub const REMOTE_IP: &'static str = "198.19.0.2";
    /// H's uplink IPv6 address: what NAT66-masqueraded traffic arrives from.
    pub const HOST_IP6: &'static str = "2001:db8::1";
    /// O's IPv6 address on the veth; H's IPv6 default gateway.
    pub const OUTSIDE_IP6: &'static str = "2001:db8::2";
    /// An IPv6 address on O's lo, reached from H through the default route.
    pub const REMOTE_IP6: &'static str = "2001:db8:ffff::2";

    /// Builds the topology; panics with the reason on failure.
    #[track_caller]
    #[allow(clippy::new_without_default)] // builds namespaces: not a Default
    pub fn new() -> Self {
        crate::require_root();
        Self::try_new().unwrap_or_else(|e| panic!("building the lab: {e:#}"))
    }

    pub fn try_new() -> anyhow::Result<Self> {
        let cgroup = TestCgroup::new().context("creating the lab's cgroup")?;
        let host = Netns::try_new("nph")?;
        let outside = Netns::try_new("npo")?;
        let lab = Self {
            instance: unique_name("t"),
            bin: netpath_bin(),
            recorded_netns: Mutex::default(),
            children: Mutex::default(),
            host,
            outside,
            cgroup,
        };
        let h = &lab.host;
        let o = &lab.outside;
        let steps: [(&Netns, &[&str]); 11] = [
            (
                h,
                &[
                    "link",
                    "add",
                    Self::UPLINK,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    Self::OUTSIDE_IF,
                    "netns",
                    o.name(),
                ],
            ),
            (h, &["addr", "add", "198.18.0.1/24", "dev", Self::UPLINK]),
            (
                h,
                &[
                    "addr",
                    "add",
                    "2001:db8::1/64",
                    "dev",
                    Self::UPLINK,
                    "nodad",
                ],
            ),
            (h, &["link", "set", Self::UPLINK, "up"]),
            (
                o,
                &["addr", "add", "198.18.0.2/24", "dev", Self::OUTSIDE_IF],
            ),
            (
                o,
                &[
                    "addr",
                    "add",
                    "2001:db8::2/64",
                    "dev",
                    Self::OUTSIDE_IF,
                    "nodad",
                ],
            ),
            (o, &["addr", "add", "198.19.0.2/32", "dev", "lo"]),
            (o, &["addr", "add", "2001:db8:ffff::2/128", "dev", "lo"]),
            (o, &["link", "set", Self::OUTSIDE_IF, "up"]),
            (h, &["route", "add", "default", "via", Self::OUTSIDE_IP]),
            (
                h,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    Self::OUTSIDE_IP6,
                    "dev",
                    Self::UPLINK,
                ],
            ),
        ];
        for (ns, args) in steps {
            let out = ns.exec(&[&["ip"], args].concat());
            anyhow::ensure!(out.success(), "lab setup step failed:\n{out}");
        }
        Ok(lab)
    }

    /// The interfaces in H, by name (`ip -o link show`).
    pub fn host_links(&self) -> Vec<String> {
        let out = self.host.exec(&["ip", "-o", "link", "show"]);
        out.expect_ok("listing links in H");
        out.stdout
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
            .collect()
    }

    /// The unique `--instance` name this lab gives netpath.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The lab's cgroup2 directory (passed to `up --cgroup`).
    pub fn cgroup_path(&self) -> &Path {
        self.cgroup.path()
    }

    /// A netpath `Command` in H: `BIN --instance I` (add args yourself).
    pub fn netpath_cmd(&self) -> Command {
        assert!(
            self.bin.exists(),
            "netpath binary not found at {}: build it (`cargo build -p netpath`) or set NETPATH_BIN; `cargo xtask test` does both",
            self.bin.display()
        );
        let mut cmd = self.host.place().command(&self.bin);
        cmd.arg("--instance").arg(&self.instance);
        cmd
    }

    /// Runs `netpath --instance I ARGS` in H.
    pub fn netpath(&self, args: &[&str]) -> CmdOutput {
        run_timeout(self.netpath_cmd().args(args), NETPATH_TIMEOUT)
    }

    /// Runs `netpath --instance I --json ARGS` in H, requires success and
    /// returns stdout parsed as JSON.
    #[track_caller]
    pub fn netpath_json(&self, args: &[&str]) -> serde_json::Value {
        let out = run_timeout(self.netpath_cmd().arg("--json").args(args), NETPATH_TIMEOUT);
        out.expect_ok("netpath --json");
        out.json()
    }

    /// `netpath --json status`, whatever its exit status (1 when the
    /// instance is unhealthy, with the JSON on stdout all the same).
    pub fn status(&self) -> CmdOutput {
        self.netpath(&["--json", "status"])
    }

    /// `netpath up --detach --uplink up0 --cgroup <lab cgroup> EXTRA`.
    pub fn up(&self, extra: &[&str]) -> CmdOutput {
        let args = self.up_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.netpath(&args)
    }

    /// The arguments of [`Lab::up`], for tests that run `up` their own way.
    pub fn up_args(&self, extra: &[&str]) -> Vec<String> {
        let cgroup = self.cgroup.path().to_string_lossy().into_owned();
        [
            "up",
            "--detach",
            "--uplink",
            Self::UPLINK,
            "--cgroup",
            &cgroup,
        ]
        .iter()
        .chain(extra)
        .map(|a| (*a).to_owned())
        .collect()
    }

    /// A datapath counter from `netpath stats`, if the netpath under test
    /// has it.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.netpath_json(&["stats"])["counters"][name].as_u64()
    }

    /// Waits until counter `name` reaches `at_least` (the datapath counts
    /// in softirq context, a moment after the sender returns) and returns
    /// it; fails the test after 5 s.
    #[track_caller]
    pub fn wait_counter(&self, name: &str, at_least: u64) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.counter(name).unwrap_or(0);
            if now >= at_least {
                return now;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "counter {name} stayed at {now}, expected at least {at_least}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `up` that must succeed. `up --detach` must also return with its
    /// stdout/stderr closed (the agent must not keep the caller's pipes).
    #[track_caller]
    pub fn up_ok(&self, extra: &[&str]) -> CmdOutput {
        let out = self.up(extra);
        assert!(
            out.success(),
            "netpath up failed\n{out}\n--- agent log\n{}",
            self.agent_log()
        );
        assert!(
            !out.pipes_held_open,
            "netpath up --detach returned, but the agent kept its stdout/stderr open\n{out}"
        );
        out
    }

    /// `netpath --json status` until `done` holds for its output, or panics
    /// after 3 minutes showing the last one (a restarted agent has the
    /// kernel verify every program again, which takes minutes in an
    /// emulated VM).
    #[track_caller]
    pub fn poll_status(&self, what: &str, done: impl Fn(&CmdOutput) -> bool) -> CmdOutput {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not seen in 3 minutes\n{status}\n--- agent log\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid in the instance's agent pid file.
    #[track_caller]
    pub fn agent_pid(&self) -> i32 {
        let path = Path::new("/run/netpath")
            .join(&self.instance)
            .join("agent.pid");
        fs::read_to_string(&path)
            .expect("agent pid file")
            .trim()
            .parse()
            .expect("pid")
    }

    /// SIGKILLs the instance's agent and waits until it is gone (its pidfd
    /// becomes readable); returns its pid. Its supervisor (`up --detach`)
    /// starts it again.
    #[track_caller]
    pub fn kill_agent(&self) -> i32 {
        let pid = self.agent_pid();
        kill_and_wait(pid, "agent");
        pid
    }

    /// SIGKILLs the supervisor of `up --detach`, then the agent, so nothing
    /// starts the agent again (as after both crashed); returns the agent's
    /// pid.
    #[track_caller]
    pub fn kill_agent_and_supervisor(&self) -> i32 {
        let pid = self.agent_pid();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("the agent's stat");
        // After the command's ")" come the state, then the parent's pid.
        let supervisor: i32 = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse().ok())
            .unwrap_or_else(|| panic!("no parent pid in {stat:?}"));
        let comm = fs::read_to_string(format!("/proc/{supervisor}/comm")).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "netpath",
            "the agent's parent {supervisor} is not its supervisor"
        );
        kill_and_wait(supervisor, "supervisor");
        kill_and_wait(pid, "agent");
        pid
    }

    /// The instance's bridge, as `status` reports it (the default name is
    /// derived from the instance name).
    #[track_caller]
    pub fn bridge(&self) -> String {
        let status = self.netpath_json(&["status"]);
        status["bridge"]
            .as_str()
            .unwrap_or_else(|| panic!("status has no bridge: {status}"))
            .to_owned()
    }

    /// The agent's log, `/run/netpath/<instance>/agent.log` ("" if none).
    pub fn agent_log(&self) -> String {
        fs::read_to_string(
            Path::new("/run/netpath")
                .join(&self.instance)
                .join("agent.log"),
        )
        .unwrap_or_default()
    }

    pub fn down(&self) -> CmdOutput {
        self.netpath(&["down"])
    }

    /// A unique container name: `prefix` (≤ 6 chars, keep it ≤ 3 so
    /// derived interface names fit) + 6 chars.
    pub fn container_name(&self, prefix: &str) -> String {
        unique_name(prefix)
    }

    /// `netpath container add NAME EXTRA`; records `np-NAME` for cleanup.
    pub fn container_add(&self, name: &str, extra: &[&str]) -> CmdOutput {
        self.record_netns(format!("np-{name}"));
        let mut args = vec!["container", "add", name];
        args.extend_from_slice(extra);
        self.netpath(&args)
    }

    /// `container add` that must succeed.
    #[track_caller]
    pub fn container_add_ok(&self, name: &str, extra: &[&str]) -> CmdOutput {
        let out = self.container_add(name, extra);
        out.expect_ok("netpath container add");
        out
    }

    /// Where container `name` runs: netns `np-NAME`.
    pub fn container(&self, name: &str) -> Place {
        Place::netns(format!("np-{name}"))
    }

    /// The IPv4 address of `eth0` in container `name`, read with `ip`.
    pub fn container_ip(&self, name: &str) -> Option<String> {
        let mut cmd = self.container(name).command("ip");
        cmd.args(["-4", "-o", "addr", "show", "dev", "eth0"]);
        let out = run_timeout(&mut cmd, Duration::from_secs(10));
        let word = out
            .stdout
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)?;
        Some(word.split('/').next()?.to_string())
    }

    /// The global IPv6 address of `eth0` in container `name` and whether it
    /// is still tentative (duplicate address detection running), read with
    /// `ip`.
    pub fn container_ip6(&self, name: &str) -> Option<(String, bool)> {
        let mut cmd = self.container(name).command("ip");
        cmd.args(["-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"]);
        let out = run_timeout(&mut cmd, Duration::from_secs(10));
        let line = out.stdout.lines().next()?;
        let word = line
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)?;
        let tentative = line.split_whitespace().any(|w| w == "tentative");
        Some((word.split('/').next()?.to_string(), tentative))
    }

    /// The link-local IPv6 address of `eth0` in container `name`, which its
    /// neighbour discovery speaks from.
    pub fn container_link_local(&self, name: &str) -> Option<String> {
        let mut cmd = self.container(name).command("ip");
        cmd.args(["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]);
        let out = run_timeout(&mut cmd, Duration::from_secs(10));
        let word = out
            .stdout
            .split_whitespace()
            .find(|w| w.starts_with("fe80:"))?;
        Some(word.split('/').next()?.to_string())
    }

    /// Records a netns name (e.g. `np-web`) to delete on drop if it exists.
    pub fn record_netns(&self, name: impl Into<String>) {
        let name = name.into();
        let mut v = self.recorded_netns.lock().expect("recorded netns lock");
        if !v.contains(&name) {
            v.push(name);
        }
    }

    /// H, with processes moved into the lab's cgroup before they exec (what
    /// the cgroup sock_addr hooks see).
    pub fn host_in_cgroup(&self) -> Place {
        self.host.place().in_cgroup(self.cgroup.path())
    }

    /// A `Command` for `program` in H inside the lab's cgroup.
    pub fn host_cmd_in_cgroup(&self, program: &str) -> Command {
        self.host_in_cgroup().command(program)
    }

    /// Spawns `cmd` and keeps it; killed by pid on drop. Returns its pid.
    #[track_caller]
    pub fn spawn(&self, cmd: &mut Command) -> u32 {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?}: {e}", cmd.get_program()));
        let pid = child.id();
        self.children.lock().expect("children lock").push(child);
        pid
    }

    /// Panics unless netpath left nothing of `instance` behind: no
    /// `/run/netpath/<instance>`, no `/sys/fs/bpf/netpath/<instance>`.
    #[track_caller]
    pub fn assert_no_leftovers(instance: &str) {
        for p in leftover_paths(instance) {
            assert!(!p.exists(), "leftover after netpath down: {}", p.display());
        }
    }

    /// [`Lab::assert_no_leftovers`] for this lab's instance, plus: every
    /// recorded container netns is gone and H holds only `lo` and `up0`.
    #[track_caller]
    pub fn assert_clean(&self) {
        Self::assert_no_leftovers(&self.instance);
        for ns in self
            .recorded_netns
            .lock()
            .expect("recorded netns lock")
            .iter()
        {
            let p = Path::new("/run/netns").join(ns);
            assert!(!p.exists(), "leftover container netns {}", p.display());
        }
        let out = self.host.exec(&["ip", "-o", "link", "show"]);
        out.expect_ok("listing links in H");
        let links: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or(""))
            .collect();
        assert!(
            links.iter().all(|n| *n == "lo" || *n == Self::UPLINK),
            "leftover interfaces in the host netns: {links:?}"
        );
    }
}

/// Another instance in the lab's host netns H, taken down on drop (also when
/// the test fails), then checked or swept like the lab's own.
pub struct NeighbourInstance<'lab> {
    lab: &'lab Lab,
    name: String,
}

impl<'lab> NeighbourInstance<'lab> {
    pub fn new(lab: &'lab Lab, name: String) -> Self {
        Self { lab, name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `netpath --instance NAME ARGS` in H.
    pub fn netpath(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = self.lab.host.place().command(self.lab.bin());
        cmd.args(["--instance", &self.name]).args(args);
        run_timeout(&mut cmd, Duration::from_secs(120))
    }

    /// `up --detach` on the lab's uplink and cgroup.
    pub fn up(&self, extra: &[&str]) -> CmdOutput {
        let args = self.lab.up_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.netpath(&args)
    }
}

impl Drop for NeighbourInstance<'_> {
    fn drop(&mut self) {
        let _ = self.netpath(&["down"]);
        for p in leftover_paths(&self.name) {
            let _ = fs::remove_dir_all(p);
        }
    }
}

fn leftover_paths(instance: &str) -> [PathBuf; 2] {
    [
        Path::new("/run/netpath").join(instance),
        Path::new("/sys/fs/bpf/netpath").join(instance),
    ]
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.agent_log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            if !tail.is_empty() {
                eprintln!(
                    "--- agent log of instance {} (last {} lines)",
                    self.instance,
                    tail.len()
                );
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        if self.bin.exists() {
            let _ = run_timeout(self.netpath_cmd().arg("down"), Duration::from_secs(60));
        }
        if let Ok(mut children) = self.children.lock() {
            for c in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            children.clear();
        }
        // A detached agent that `down` did not stop lives in H.
        kill_netns_processes(self.host.name());
        let recorded = self
            .recorded_netns
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        for ns in recorded {
            drop(Netns::adopt(ns));
        }
        for p in leftover_paths(&self.instance) {
            if p.exists() {
                eprintln!("warning: removing leftover {}", p.display());
                let _ = fs::remove_dir_all(&p);
            }
        }
    }
}

/// SIGKILLs `pid`, a process of the test's own, and waits until it is gone
/// (its pidfd becomes readable).
#[track_caller]
fn kill_and_wait(pid: i32, what: &str) {
    // SAFETY: plain syscalls on a pid of the test's own instance.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(
            fd >= 0,
            "pidfd_open {what}: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::kill(pid, libc::SIGKILL), 0);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        assert_eq!(libc::poll(&mut pfd, 1, 10_000), 1, "{what} did not die");
        libc::close(fd);
    }
}
