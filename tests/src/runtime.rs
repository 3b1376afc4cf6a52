//! Real container runtimes with netpath as their network, through the CNI
//! plugin `netpath-cni`: Podman and containerd (`ctr run --cni`).
//!
//! Each runs in a [`Lab`]'s host netns (`nsenter --net`), with a temp dir of
//! its own for everything it keeps (storage, state, sockets, its CNI config
//! and plugin directories), never the system's: its containers live in the
//! lab and the guards remove them (and with them their attachments) before
//! the lab goes down. No image registry: containers run on a busybox-static
//! rootfs ([`BusyboxRootfs`]).

use std::fs::File;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cmd::{CmdOutput, run, run_timeout};
use crate::lab::{Lab, netpath_cni_bin};
use crate::names::unique_name;

/// Bound on one runtime command (a `podman run` includes the CNI ADD).
const RUNTIME_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on containerd's start.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a test of a runtime cannot run here: the commands of `commands` that
/// no PATH directory holds, as one line, or `None` when all are there.
pub fn missing_runtime(commands: &[&str]) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = commands
        .iter()
        .copied()
        .filter(|c| !std::env::split_paths(&path).any(|d| d.join(c).is_file()))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not installed (`cargo xtask test` installs them as root on Debian/Ubuntu)",
            missing.join(", ")
        )
    })
}

/// A directory `/tmp/netpath-<prefix><unique>` removed with its contents on
/// drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("netpath-{}", unique_name(prefix)));
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Creates `rel` (and its parents) inside; returns its path.
    fn subdir(&self, rel: &str) -> anyhow::Result<PathBuf> {
        let dir = self.0.join(rel);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: removing {}: {e}", self.0.display());
        }
    }
}

/// A container root filesystem made of busybox-static: every applet, and a
/// web root for `httpd -f -p 0.0.0.0:80 -h /www` whose `/cgi-bin/addr` answers with
/// the client's "ip:port" as the server saw it (as [`crate::Server::http`]
/// does).
pub struct BusyboxRootfs {
    dir: TempDir,
}

/// The CGI behind `/cgi-bin/addr`.
const ADDR_CGI: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s:%s' \"$REMOTE_ADDR\" \"$REMOTE_PORT\"\n";

impl BusyboxRootfs {
    pub fn new() -> anyhow::Result<Self> {
        let dir = TempDir::new("rfs")?;
        let busybox = which("busybox").context("busybox (Debian package busybox-static)")?;
        let bin = dir.subdir("rootfs/bin")?;
        std::fs::copy(&busybox, bin.join("busybox")).context("copying busybox")?;
        let list = run(Command::new(&busybox).arg("--list"));
        if !list.success() {
            bail!("busybox --list failed:\n{list}");
        }
        for applet in list.stdout.lines().filter(|a| *a != "busybox") {
            std::os::unix::fs::symlink("busybox", bin.join(applet))
                .with_context(|| format!("linking applet {applet}"))?;
        }
        for d in ["proc", "sys", "dev", "tmp", "run", "etc", "www/cgi-bin"] {
            dir.subdir(&format!("rootfs/{d}"))?;
        }
        let rootfs = dir.path().join("rootfs");
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
        std::fs::write(rootfs.join("www/index.html"), "netpath\n")?;
        let cgi = rootfs.join("www/cgi-bin/addr");
        std::fs::write(&cgi, ADDR_CGI)?;
        std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }
}

/// `command`'s path in PATH.
fn which(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(command))
        .find(|p| p.is_file())
}

/// The example network config list the project ships (and `netpath
/// install --cni` installs).
const SHIPPED_CONFLIST: &str = include_str!("../../deploy/cni/netpath.conflist");

/// The shipped config list with the lab's instance in it, in `conf_dir`
/// (a directory of the test's own), and the plugin under test in `bin_dir`
/// under the name the list gives it (copied, not linked: the directory may
/// be bind-mounted where a link's target is hidden). Returns the network's
/// name.
fn install_network(conf_dir: &Path, bin_dir: &Path, lab: &Lab) -> anyhow::Result<String> {
    let mut conf: serde_json::Value =
        serde_json::from_str(SHIPPED_CONFLIST).context("deploy/cni/netpath.conflist")?;
    let network = conf["name"]
        .as_str()
        .context("the conflist has no name")?
        .to_owned();
    let plugin_conf = &mut conf["plugins"][0];
    let plugin_type = plugin_conf["type"]
        .as_str()
        .context("the conflist's plugin has no type")?
        .to_owned();
    plugin_conf["instance"] = lab.instance().into();
    let path = conf_dir.join(format!("{network}.conflist"));
    std::fs::write(&path, serde_json::to_vec_pretty(&conf)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let plugin = netpath_cni_bin();
    anyhow::ensure!(
        plugin.is_file(),
        "the CNI plugin is not at {}: build netpath (`cargo build -p netpath`) or set NETPATH_CNI_BIN",
        plugin.display()
    );
    std::fs::copy(&plugin, bin_dir.join(&plugin_type))
        .with_context(|| format!("copying {}", plugin.display()))?;
    Ok(network)
}

/// Polls `check` every 100 ms until it gives `Ok`, or fails with `what`
/// and its last error after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => {
                bail!("{what}: not within {timeout:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Podman (rootful, CNI backend) in the lab's host netns, with its config,
/// storage, run and temp dirs in a directory of its own, and one network:
/// deploy/cni/netpath.conflist for the lab's instance.
///
/// Drop: `podman rm -f --all` (the CNI DEL of each container), then the
/// directory.
pub struct Podman<'lab> {
    lab: &'lab Lab,
    dir: TempDir,
    network: String,
}

impl<'lab> Podman<'lab> {
    pub fn new(lab: &'lab Lab) -> anyhow::Result<Self> {
        let dir = TempDir::new("pod")?;
        let cni_conf = dir.subdir("cni/net.d")?;
        let cni_bin = dir.subdir("cni/bin")?;
        let network = install_network(&cni_conf, &cni_bin, lab)?;
        let d = dir.path().display();
        // CONTAINERS_CONF / CONTAINERS_STORAGE_CONF: these files only, none
        // of /etc/containers. The machines' quirks: crun refuses hybrid
        // cgroups (runc), no systemd (cgroupfs, events to a file), podman's
        // default rlimits exceed the hard limits here.
        let containers_conf = format!(
            r#"[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
runtime = "runc"
tmp_dir = "{d}/tmp"
volume_path = "{d}/volumes"

[network]
network_backend = "cni"
network_config_dir = "{conf}"
cni_plugin_dirs = ["{bin}"]
"#,
            conf = cni_conf.display(),
            bin = cni_bin.display(),
        );
        std::fs::write(dir.path().join("containers.conf"), containers_conf)?;
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/runroot\"\n"
        );
        std::fs::write(dir.path().join("storage.conf"), storage_conf)?;
        Ok(Self { lab, dir, network })
    }

    /// `podman` in the lab's host netns with this instance's config (add
    /// args yourself).
    pub fn command(&self) -> Command {
        let mut cmd = self.lab.host.command("podman");
        cmd.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            );
        cmd
    }

    /// `podman ARGS`.
    pub fn podman(&self, args: &[&str]) -> CmdOutput {
        run_timeout(self.command().args(args), RUNTIME_TIMEOUT)
    }

    /// `podman run -d --name NAME --network netpath -p PUBLISH... --rootfs
    /// ROOTFS ARGV...`, which must succeed.
    #[track_caller]
    pub fn run_detached(&self, name: &str, publish: &[&str], rootfs: &Path, argv: &[&str]) {
        let mut cmd = self.command();
        cmd.args(["run", "-d", "--name", name, "--network", &self.network]);
        for p in publish {
            cmd.args(["-p", p]);
        }
        cmd.arg("--rootfs").arg(rootfs).args(argv);
        run_timeout(&mut cmd, RUNTIME_TIMEOUT).expect_ok(&format!("podman run {name}"));
    }

    /// `podman exec NAME ARGV...`.
    pub fn exec(&self, name: &str, argv: &[&str]) -> CmdOutput {
        let mut args = vec!["exec", name];
        args.extend_from_slice(argv);
        self.podman(&args)
    }

    /// The container's address on the netpath network, as podman has it from
    /// the plugin's result.
    #[track_caller]
    pub fn ip(&self, name: &str) -> String {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network
        );
        let out = self.podman(&["inspect", "--format", &format, name]);
        out.expect_ok("podman inspect");
        let ip = out.stdout_trim().to_owned();
        assert!(!ip.is_empty(), "podman has no address for {name}\n{out}");
        ip
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let out = self.podman(&["rm", "--force", "--all", "--time", "0"]);
        if !out.success() {
            eprintln!("warning: removing podman's containers:\n{out}");
        }
    }
}

/// A containerd daemon in the lab's host netns with its root, state,
/// sockets and `/opt` of its own; `ctr` against it, in a namespace of its
/// own. Drop: every task killed and container deleted (through `ctr`, so
/// with its CNI DEL where `ctr run` still waits), then the daemon by pid.
pub struct Containerd<'lab> {
    lab: &'lab Lab,
    dir: TempDir,
    daemon: Child,
    namespace: String,
}

/// `ctr run --cni` uses go-cni's and libcni's fixed directories,
/// `/etc/cni/net.d`, `/opt/cni/bin` and the result cache `/var/lib/cni`,
/// and has no option for others: ctr runs in a mount namespace of its own
/// (slave: nothing mounted there reaches the system) where the test's
/// directories (under `$1`) are bind-mounted over those.
const CTR_IN_OWN_CNI_DIRS: &str = "mkdir -p /var/lib/cni \
    && mount --bind \"$1/cni/net.d\" /etc/cni/net.d \
    && mount --bind \"$1/opt\" /opt \
    && mount --bind \"$1/cni/cache\" /var/lib/cni \
    && shift && exec ctr \"$@\"";

impl<'lab> Containerd<'lab> {
    pub fn start(lab: &'lab Lab) -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new("/etc/cni/net.d").is_dir() && Path::new("/opt").is_dir(),
            "ctr run --cni needs /etc/cni/net.d and /opt to exist (the test mounts its own over them)"
        );
        let dir = TempDir::new("ctd")?;
        let cni_conf = dir.subdir("cni/net.d")?;
        let cni_bin = dir.subdir("opt/cni/bin")?;
        dir.subdir("cni/cache")?;
        install_network(&cni_conf, &cni_bin, lab)?;
        dir.subdir("fifo")?;
        let d = dir.path().display();
        // The CRI plugin (Kubernetes' side) is off: ctr does its own CNI
        // calls, and CRI would start servers and read the system's CNI dirs.
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt-containerd"
"#
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config)?;
        let log = File::create(dir.path().join("containerd.log"))?;
        let daemon = lab
            .host
            .command("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning containerd")?;
        let containerd = Self {
            lab,
            dir,
            daemon,
            namespace: unique_name("np"),
        };
        wait_for("containerd answers", DAEMON_TIMEOUT, || {
            let out = containerd.ctr(&["version"]);
            if out.success() {
                Ok(())
            } else {
                Err(format!("{out}\n--- containerd log\n{}", containerd.log()))
            }
        })?;
        Ok(containerd)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The containerd namespace of this test's containers.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `ctr --address A --namespace N` in the lab's host netns, with the
    /// test's CNI directories (add args yourself).
    pub fn command(&self) -> Command {
        let d = self.dir.path();
        let mut cmd = self.lab.host.command("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "slave",
            "sh",
            "-c",
            CTR_IN_OWN_CNI_DIRS,
            "sh",
        ])
        .arg(d)
        .arg("--address")
        .arg(d.join("containerd.sock"))
        .args(["--namespace", &self.namespace]);
        cmd
    }

    /// `ctr ARGS`.
    pub fn ctr(&self, args: &[&str]) -> CmdOutput {
        run_timeout(self.command().args(args), RUNTIME_TIMEOUT)
    }

    /// `ctr run --rm --cni --rootfs ROOTFS ID ARGV...` in the background:
    /// ctr sets the network up (ADD), starts the task, waits for it, and
    /// after it exits removes the network (DEL, with an empty netns: the
    /// task is gone) and the container.
    pub fn run_cni(&self, id: &str, rootfs: &Path, argv: &[&str]) -> anyhow::Result<CtrRun> {
        let d = self.dir.path();
        let output = d.join(format!("{id}.out"));
        let out = File::create(&output)?;
        let child = self
            .command()
            .args(["run", "--rm", "--cni", "--fifo-dir"])
            .arg(d.join("fifo"))
            .arg("--runc-root")
            .arg(d.join("runc"))
            .arg("--rootfs")
            .arg(rootfs)
            .arg(id)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning ctr run")?;
        Ok(CtrRun { child, output })
    }

    /// The ids of the tasks (`ctr task ls -q`).
    pub fn tasks(&self) -> Vec<String> {
        let out = self.ctr(&["task", "ls", "-q"]);
        out.stdout.lines().map(str::to_owned).collect()
    }

    /// The ids of the containers (`ctr container ls -q`).
    pub fn containers(&self) -> Vec<String> {
        let out = self.ctr(&["container", "ls", "-q"]);
        out.stdout.lines().map(str::to_owned).collect()
    }
}

impl Drop for Containerd<'_> {
    fn drop(&mut self) {
        for task in self.tasks() {
            let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", &task]);
            let _ = wait_for("task stopped", Duration::from_secs(10), || {
                let out = self.ctr(&["task", "delete", &task]);
                if out.success() || !self.tasks().contains(&task) {
                    Ok(())
                } else {
                    Err(out.to_string())
                }
            });
        }
        for container in self.containers() {
            let _ = self.ctr(&["container", "delete", &container]);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- containerd log (last {} lines)", tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A `ctr run` in the background, its output (the container's and ctr's
/// own) in a file. Drop: killed by pid if still running.
pub struct CtrRun {
    child: Child,
    output: PathBuf,
}

impl CtrRun {
    /// What the container and ctr wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Waits until ctr has exited (whatever its status).
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<()> {
        wait_for("ctr run exits", timeout, || match self.child.try_wait() {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(self.output()),
            Err(e) => Err(e.to_string()),
        })
    }
}

impl Drop for CtrRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
