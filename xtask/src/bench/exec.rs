//! Running things in namespaces with bounded durations, and background
//! processes that are killed by pid when their guard drops.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::describe;

/// `nsenter --net=/run/netns/NS PROGRAM`: switches only the network
/// namespace (unlike `ip netns exec`, which also remounts /sys and so hides
/// bpffs and the cgroup2 mount from netpath).
pub fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}")).arg(program);
    cmd
}

/// Runs `cmd` to completion within `timeout` (killed by pid after that);
/// returns stdout, or an error with stderr unless it exits 0.
pub fn run_bounded(cmd: &mut Command, timeout: Duration, scratch: &Path) -> Result<String> {
    let what = describe(cmd);
    // Files, not pipes: nothing to drain while we poll for the deadline.
    let out_path = scratch.join(format!("out-{}", unique_counter()));
    let err_path = out_path.with_extension("err");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).context("creating a scratch file")?)
        .stderr(File::create(&err_path).context("creating a scratch file")?)
        .spawn()
        .with_context(|| format!("spawning `{what}`"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a child")? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{what}` did not finish within {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    if !status.success() {
        let stderr = stderr.trim_end();
        let sep = if stderr.is_empty() { "" } else { ": " };
        bail!("`{what}` failed: {status}{sep}{stderr}");
    }
    Ok(stdout)
}

fn unique_counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A long-running process we started (server); SIGKILLed by pid on drop.
pub struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Result<Self> {
        let what = describe(&cmd);
        let log = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = log.try_clone().context("cloning a log fd")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning `{what}`"))?;
        Ok(Self { child, what })
    }

    /// Error if the process already exited (bad config, port taken).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("try_wait")? {
            bail!("`{}` exited early: {status}", self.what);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to exactly this pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until a TCP port accepts connections inside `ns` (servers take a
/// moment to bind), bounded.
pub fn wait_tcp(ns: &str, addr: &str, port: u16, scratch: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // bash's /dev/tcp: no extra tool needed inside the namespace.
        let probe = format!("exec 3<>/dev/tcp/{addr}/{port}");
        let ok = run_bounded(
            in_ns(ns, "bash").args(["-c", &probe]),
            Duration::from_secs(2),
            scratch,
        )
        .is_ok();
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing accepts on {addr}:{port} in netns {ns} after 5 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
