//! Every path netpath uses at run time, owned here so nobody rebuilds one
//! from an instance name.
//!
//! An instance keeps its state under `/run/netpath/<instance>/` and its pins
//! under `/sys/fs/bpf/netpath/<instance>/v<LAYOUT_VERSION>/`. The layout
//! version in the pin path keeps a netpath from adopting maps laid out by
//! another version; the pin layout itself must not change between releases,
//! or a running datapath could no longer be adopted.
use std::{
    fmt,
    path::{Path, PathBuf},
};

use netpath_common::LAYOUT_VERSION;

/// Where bpffs is mounted (`netns::ensure_bpffs` mounts it when it is not).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Parent of every instance's run-time directory.
const RUN_ROOT: &str = "/run/netpath";
/// Name of netpath's directory, in bpffs as under /run.
const NETPATH_DIR: &str = "netpath";
/// Longest instance name.
const MAX_INSTANCE_NAME_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
#[error("invalid instance name {0:?}: use letters, digits, '-' and '_' (at most 32)")]
pub struct BadInstanceName(String);

/// A command needs the instance's state or pins, and it has neither: the one
/// "not up" error of every area, so the user always reads the same line.
#[derive(Debug, thiserror::Error)]
#[error("instance {0} is not up: run `netpath up` first")]
pub struct NotUp(String);

/// `/run/netpath`, the parent of every instance's run-time directory.
pub fn run_root() -> &'static Path {
    Path::new(RUN_ROOT)
}

/// `/sys/fs/bpf/netpath`, shared by all instances.
pub fn pins_root() -> PathBuf {
    Path::new(BPFFS_ROOT).join(NETPATH_DIR)
}

/// An instance: its validated name and every path that belongs to it. Made
/// once, from the command line, and passed down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    name: String,
    run_dir: PathBuf,
    pin_root: PathBuf,
    pin_dir: PathBuf,
}

impl Instance {
    /// Checks the name before it becomes part of paths.
    pub fn new(name: &str) -> Result<Self, BadInstanceName> {
        let ok = !name.is_empty()
            && name.len() <= MAX_INSTANCE_NAME_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !name.starts_with('-');
        if !ok {
            return Err(BadInstanceName(name.to_owned()));
        }
        let pin_root = pins_root().join(name);
        Ok(Self {
            name: name.to_owned(),
            run_dir: Path::new(RUN_ROOT).join(name),
            pin_dir: pin_root.join(Self::layout_dir_name()),
            pin_root,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The error for a command run on this instance while it is not up.
    pub fn not_up(&self) -> NotUp {
        NotUp(self.name.clone())
    }

    /// `/run/netpath/<instance>`: state, lock, pid file, agent log.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn state_file(&self) -> PathBuf {
        self.run_dir.join("state.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.run_dir.join("lock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join("agent.pid")
    }

    /// The agent's start time and restart count (`state::AgentRecord`).
    pub fn agent_file(&self) -> PathBuf {
        self.run_dir.join("agent.json")
    }

    /// The log of an agent started with `up --detach`.
    pub fn log_file(&self) -> PathBuf {
        self.run_dir.join("agent.log")
    }

    /// `/sys/fs/bpf/netpath/<instance>`: holds one directory per layout version.
    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// Name of this version's directory under `pin_root`.
    pub fn layout_dir_name() -> String {
        format!("v{LAYOUT_VERSION}")
    }

    /// `/sys/fs/bpf/netpath/<instance>/v<LAYOUT_VERSION>`: maps, programs, and
    /// links (named by `datapath::LinkPin`).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// A map, pinned under its name (`netpath_common::names`).
    pub fn map_pin(&self, map: &str) -> PathBuf {
        self.pin_dir.join(map)
    }

    /// A loaded program that other processes attach (`prog_<name>`).
    pub fn prog_pin(&self, prog: &str) -> PathBuf {
        self.pin_dir.join(format!("prog_{prog}"))
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_checked() {
        assert!(Instance::new("default").is_ok());
        assert!(Instance::new("t-1_a").is_ok());
        assert!(Instance::new("").is_err());
        assert!(Instance::new("../x").is_err());
        assert!(Instance::new("-x").is_err());
        assert!(Instance::new(&"a".repeat(33)).is_err());
    }

    #[test]
    fn paths_keep_their_layout() {
        let instance = Instance::new("t1").expect("valid");
        assert_eq!(
            instance.state_file(),
            Path::new("/run/netpath/t1/state.json")
        );
        assert_eq!(instance.pin_root(), Path::new("/sys/fs/bpf/netpath/t1"));
        assert_eq!(
            instance.map_pin("CONFIG"),
            Path::new(&format!("/sys/fs/bpf/netpath/t1/v{LAYOUT_VERSION}/CONFIG"))
        );
        assert_eq!(
            instance.prog_pin("from_container"),
            Path::new(&format!(
                "/sys/fs/bpf/netpath/t1/v{LAYOUT_VERSION}/prog_from_container"
            ))
        );
    }
}
