use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::names::unique_name;

/// The first cgroup2 mount in /proc/mounts (`/sys/fs/cgroup/unified` on a
/// hybrid machine, `/sys/fs/cgroup` on a pure v2 one).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

/// A cgroup2 directory `<mount>/netpath-test-<unique>` of its own. Drop kills
/// the processes in it (only tests put processes there) and removes it.
/// Never the root cgroup.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> anyhow::Result<Self> {
        let mount = cgroup2_mount().context("no cgroup2 mount in /proc/mounts")?;
        let path = mount.join(format!("netpath-test-{}", unique_name("")));
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        if path.parent() != Some(mount.as_path()) || path == mount {
            bail!("refusing cgroup path {}", path.display());
        }
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pids currently in this cgroup.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let me = std::process::id();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids: Vec<u32> = self.pids().into_iter().filter(|&p| p != me).collect();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
            }
            if Instant::now() > deadline {
                eprintln!("warning: processes still in {}", self.path.display());
                break;
            }
            // Cleanup only: waiting for killed processes to leave the cgroup.
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!("warning: rmdir {}: {e}", self.path.display());
        }
    }
}
