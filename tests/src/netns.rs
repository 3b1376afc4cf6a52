use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::cmd::{CmdOutput, Place, run};
use crate::names::unique_name;

/// RAII guard for a named network namespace (`ip netns add`), deleted with
/// `ip netns del` on drop after every process still inside it is killed.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix><6 random chars>` with `lo` up. Panics on failure.
    #[track_caller]
    pub fn new(prefix: &str) -> Self {
        Self::try_new(prefix).unwrap_or_else(|e| panic!("creating a netns: {e:#}"))
    }

    pub fn try_new(prefix: &str) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            let name = unique_name(prefix);
            if PathBuf::from("/run/netns").join(&name).exists() {
                continue;
            }
            let out = run(Command::new("ip").args(["netns", "add", &name]));
            if !out.success() {
                last = Some(out);
                continue;
            }
            let ns = Self { name };
            ns.exec(&["ip", "link", "set", "lo", "up"])
                .success()
                .then_some(())
                .context("bringing lo up")?;
            return Ok(ns);
        }
        match last {
            Some(out) => bail!("ip netns add failed:\n{out}"),
            None => bail!("no free netns name for prefix {prefix}"),
        }
    }

    /// Takes ownership of a netns someone else created (e.g. a container's
    /// `np-NAME` netns made by netpath): it is deleted on drop if it exists.
    pub fn adopt(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn place(&self) -> Place {
        Place::netns(self.name.clone())
    }

    /// A `Command` running `program` in this netns (add args yourself).
    pub fn command(&self, program: &str) -> Command {
        self.place().command(program)
    }

    /// Runs `argv` (program first) in this netns; default timeout.
    pub fn exec(&self, argv: &[&str]) -> CmdOutput {
        let (prog, args) = argv.split_first().expect("exec needs a program");
        run(self.command(prog).args(args))
    }

    /// `ip ARGS` in this netns, panicking with the output on failure.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> CmdOutput {
        let out = run(self.command("ip").args(args));
        out.expect_ok(&format!("ip {} in {}", args.join(" "), self.name));
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.path().exists() {
            return;
        }
        kill_netns_processes(&self.name);
        let out = run(Command::new("ip").args(["netns", "del", &self.name]));
        if !out.success() {
            eprintln!("warning: cleanup of netns {} failed:\n{out}", self.name);
        }
    }
}

/// SIGKILLs every process (except this one) whose network namespace is the
/// named netns under /run/netns. Only for namespaces the caller created (the
/// tests, xtask's demo): every process in them was started by the caller.
/// Returns how many were signalled.
pub fn kill_netns_processes(name: &str) -> usize {
    let Ok(target) = std::fs::metadata(PathBuf::from("/run/netns").join(name)) else {
        return 0;
    };
    if target.ino() == 0 {
        return 0;
    }
    let me = std::process::id();
    let mut killed = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(m) = std::fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if m.ino() == target.ino() && m.dev() == target.dev() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    killed
}
