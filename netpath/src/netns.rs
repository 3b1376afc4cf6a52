//! Namespaces: named network namespaces (the iproute2 `/run/netns` layout),
//! a per-thread guard for entering one, and the mount-namespace fix-up that
//! has to run before anything else in `main`.
use std::{
    fs::File,
    io,
    marker::PhantomData,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use crate::directories::BPFFS_ROOT;

/// Where iproute2 (and so `ip netns exec`) looks for named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: Errno },
    #[error("cannot return to the original network namespace: {0}")]
    Restore(Errno),
    #[error("network namespace {0} already exists: remove it or pick another container name")]
    Exists(String),
    #[error("cannot create network namespace {name}: {what}: {source}")]
    Create {
        name: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot delete network namespace {name}: {source}")]
    Delete { name: String, source: io::Error },
    #[error("cannot switch to the mount namespace netpath was started from ({what}): {source}")]
    MountNamespace {
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "cannot mount bpffs at {BPFFS_ROOT}: {0} (mount it by hand: mount -t bpf bpf {BPFFS_ROOT})"
    )]
    Bpffs(Errno),
}

/// Path of the handle of the named network namespace `name`.
pub fn named_netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Enters a network namespace on the current thread and goes back to the one
/// the thread was in when dropped. Network namespaces are per thread, so the
/// guard is neither `Send` nor `Sync`: it must be dropped on the thread that
/// made it.
pub struct NetnsGuard {
    original: File,
    _not_send: PhantomData<*const ()>,
}

impl NetnsGuard {
    /// Moves the calling thread into the network namespace at `path`
    /// (a `/run/netns/NAME` handle or a `/proc/PID/ns/net` link).
    pub fn enter(path: &Path) -> Result<Self, NetnsError> {
        let target = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::enter_fd(&target, path)
    }

    fn enter_fd(target: &File, path: &Path) -> Result<Self, NetnsError> {
        let own = current_thread_netns_path();
        let original = File::open(&own).map_err(|source| NetnsError::Open { path: own, source })?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            original,
            _not_send: PhantomData,
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Continuing in the wrong namespace would apply later netlink
            // requests to the wrong interfaces: stop instead.
            log::error!("{}", NetnsError::Restore(e));
            std::process::abort();
        }
    }
}

/// The network namespace of the calling thread (not of the process: another
/// thread may have entered a different one).
pub fn current_thread_netns_path() -> PathBuf {
    PathBuf::from("/proc/thread-self/ns/net")
}

/// Opens the network namespace of the calling thread, to hand its fd to
/// netlink (moving an interface into it) or to come back to it later.
pub fn open_current_netns() -> Result<File, NetnsError> {
    let path = current_thread_netns_path();
    File::open(&path).map_err(|source| NetnsError::Open { path, source })
}

/// Creates the named network namespace `name` exactly as `ip netns add` does,
/// so `ip netns exec NAME` works on it: an empty file under `/run/netns`
/// bind-mounted from a fresh netns. `/run/netns` is made a shared mount so the
/// handle shows in every mount namespace that has a slave copy of it.
pub fn create_named_netns(name: &str) -> Result<PathBuf, NetnsError> {
    let create_err = |what: &'static str| {
        move |source: io::Error| NetnsError::Create {
            name: name.to_owned(),
            what,
            source,
        }
    };
    std::fs::create_dir_all(NETNS_RUN_DIR).map_err(create_err("mkdir /run/netns"))?;
    make_run_netns_shared().map_err(create_err("make /run/netns a shared mount"))?;

    let path = named_netns_path(name);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::Exists(name.to_owned()));
        }
        Err(e) => return Err(create_err("create the handle file")(e)),
    }

    // unshare(CLONE_NEWNET) changes only the calling thread; a throwaway
    // thread keeps the main thread (and the netlink sockets it owns) where it is.
    let target = path.clone();
    let bound = std::thread::spawn(move || -> Result<(), Errno> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join()
    .unwrap_or(Err(Errno::EINTR));

    if let Err(errno) = bound {
        let _ = std::fs::remove_file(&path);
        return Err(create_err("bind-mount a new netns")(errno.into()));
    }
    Ok(path)
}

/// `ip netns add` makes `/run/netns` a shared mount, bind-mounting it onto
/// itself first when it is not a mount point yet.
fn make_run_netns_shared() -> io::Result<()> {
    let shared = || {
        mount(
            Some("none"),
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            Ok(shared()?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the named network namespace handle (unmount + unlink). Missing
/// handles are fine, so cleanup can run more than once.
pub fn delete_named_netns(name: &str) -> Result<(), NetnsError> {
    let path = named_netns_path(name);
    let delete_err = |source: io::Error| NetnsError::Delete {
        name: name.to_owned(),
        source,
    };
    match umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-made handle); ENOENT: gone already.
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(delete_err(e.into())),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(delete_err(e)),
    }
}

/// Whether a named network namespace handle exists.
pub fn named_netns_exists(name: &str) -> bool {
    named_netns_path(name).exists()
}

fn is_bpffs(path: &str) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Joins the mount namespace we were started from when we run in a private
/// copy of it, as `ip netns exec H netpath ...` makes.
///
/// Why: `ip netns exec` unshares the mount namespace (recursively MS_SLAVE)
/// and remounts /sys for the target netns. In that copy (1) the bpffs at
/// /sys/fs/bpf and the cgroup2 mount are gone, so pins made by one command are
/// invisible to the next, and (2) bind mounts we make under /run/netns never
/// propagate back, so container netns handles would vanish when we exit.
/// The process that ran `ip` still is in the real mount namespace. It is not
/// always our parent: under `ip netns exec H cargo xtask run -- up` (or any
/// shell or script in between) the parent is a process `ip` became, inside
/// the private copy with us. So we walk up the ancestors to the first one in
/// another mount namespace; their `/proc/PID/ns/mnt` is readable where
/// `/proc/1`'s may not be (another pid namespace shows no real PID 1).
/// Only the mount namespace changes; the network namespace stays the one we
/// were started in. setns(CLONE_NEWNS) needs a single-threaded process, so
/// this must run first in `main`, before any thread or runtime exists.
pub fn join_outer_mount_namespace_if_private() -> Result<(), NetnsError> {
    if is_bpffs(BPFFS_ROOT) {
        return Ok(());
    }
    let mnt_err =
        |what: &'static str| move |source: io::Error| NetnsError::MountNamespace { what, source };
    let ours =
        std::fs::metadata("/proc/self/ns/mnt").map_err(mnt_err("stat our mount namespace"))?;
    let Some(outer) = first_ancestor_mount_namespace_other_than((ours.dev(), ours.ino())) else {
        // Every ancestor shares ours (a container's own namespace, or
        // `unshare -m` without `ip`): it is the namespace we were meant to use.
        return Ok(());
    };
    // setns(CLONE_NEWNS) resets the working directory to the new root: keep
    // the caller's, so relative paths on the command line still mean the same.
    let cwd = std::env::current_dir().ok();
    setns(outer.as_fd(), CloneFlags::CLONE_NEWNS)
        .map_err(|e| mnt_err("setns")(io::Error::from(e)))?;
    if let Some(dir) = cwd {
        let _ = std::env::set_current_dir(dir);
    }
    Ok(())
}

/// Ancestors further up than this are not looked at: `ip netns exec` is a
/// few levels above us at most, and a loop in a corrupt /proc must end.
const MAX_ANCESTORS: usize = 32;

/// The mount namespace of our nearest ancestor whose namespace is not `ours`
/// (dev, inode), opened; None when every ancestor we can inspect shares it.
/// Each namespace is opened before it is compared, so an ancestor that exits
/// meanwhile cannot make us join a namespace we did not compare.
fn first_ancestor_mount_namespace_other_than(ours: (u64, u64)) -> Option<File> {
    let mut pid = nix::unistd::getppid().as_raw();
    for _ in 0..MAX_ANCESTORS {
        if pid <= 0 {
            return None;
        }
        // An ancestor we cannot inspect (exited, or another user's): stop.
        let ns = File::open(format!("/proc/{pid}/ns/mnt")).ok()?;
        let theirs = ns.metadata().ok()?;
        if (theirs.dev(), theirs.ino()) != ours {
            return Some(ns);
        }
        pid = parent_pid(pid)?;
    }
    None
}

/// The parent of process `pid`, from the `PPid:` line of /proc/PID/status
/// (0 for the first process of a pid namespace).
fn parent_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Mounts bpffs at /sys/fs/bpf unless one is there already.
pub fn ensure_bpffs() -> Result<(), NetnsError> {
    if is_bpffs(BPFFS_ROOT) {
        return Ok(());
    }
    mount(
        Some("bpf"),
        BPFFS_ROOT,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(NetnsError::Bpffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_reads_the_status_file() {
        let ours = i32::try_from(std::process::id()).expect("pid fits i32");
        assert_eq!(parent_pid(ours), Some(nix::unistd::getppid().as_raw()));
        assert_eq!(parent_pid(i32::MAX), None);
    }

    #[test]
    fn an_ancestor_in_another_mount_namespace_is_found() {
        // No process is in a namespace with inode 0: the parent "differs".
        assert!(first_ancestor_mount_namespace_other_than((0, 0)).is_some());
    }
}
