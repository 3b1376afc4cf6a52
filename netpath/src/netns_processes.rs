//! Stopping the processes that still run in containers' network namespaces
//! (`container rm`, `down`), as `docker stop` does: SIGTERM, a grace period,
//! then SIGKILL. A process is in a netns when its `/proc/PID/ns/net` is that
//! netns (same device and inode as the netns handle). Signals go through
//! pidfds, so a pid reused meanwhile is never signalled; processes outside
//! those namespaces, and netpath itself, never are.
use std::{
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::Path,
    time::{Duration, Instant},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::signal::Signal,
};

/// How long `container rm` (without `--time`) and `down` wait after SIGTERM.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for killed processes to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Rounds of looking again for processes forked while we were killing.
const KILL_ROUNDS: usize = 5;

/// A process found in one of the namespaces, held by its pidfd.
struct Target {
    pid: i32,
    pidfd: OwnedFd,
}

/// Stops every process in the network namespaces whose handles are
/// `netns_paths` (missing handles are skipped): SIGTERM, up to `grace` for
/// them to exit, then SIGKILL for what is left (and whatever they forked).
/// Returns the pids of the processes that would not die (stuck in the
/// kernel): their namespace outlives its handle until they do.
pub fn stop(netns_paths: &[&Path], grace: Duration) -> Vec<i32> {
    let namespaces: Vec<(u64, u64)> = netns_paths
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    if namespaces.is_empty() {
        return Vec::new();
    }
    let terminated = find(&namespaces);
    if terminated.is_empty() {
        return Vec::new();
    }
    for target in &terminated {
        log::info!("stopping pid {} (SIGTERM)", target.pid);
        send(target, Signal::SIGTERM);
    }
    wait_for_exit(terminated, grace);
    let mut left = Vec::new();
    for _ in 0..KILL_ROUNDS {
        let targets = find(&namespaces);
        if targets.is_empty() {
            return Vec::new();
        }
        for target in &targets {
            log::warn!("pid {} did not stop: SIGKILL", target.pid);
            send(target, Signal::SIGKILL);
        }
        left = wait_for_exit(targets, KILL_TIMEOUT);
    }
    left.iter().map(|target| target.pid).collect()
}

/// The processes in `namespaces` now, other than this one.
fn find(namespaces: &[(u64, u64)]) -> Vec<Target> {
    let me = std::process::id();
    let in_namespaces = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|m| namespaces.contains(&(m.dev(), m.ino())))
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && in_namespaces(pid))
        .filter_map(|pid| {
            let pid = i32::try_from(pid).ok()?;
            // SAFETY: pidfd_open takes a pid and flags, returns a new fd or -1.
            let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            // SAFETY: pidfd_open just returned this fd, owned by nobody else.
            let pidfd =
                unsafe { OwnedFd::from_raw_fd(i32::try_from(raw).ok().filter(|&fd| fd >= 0)?) };
            // The pid could have been reused between the look and the open.
            in_namespaces(pid.unsigned_abs()).then_some(Target { pid, pidfd })
        })
        .collect()
}

fn send(target: &Target, signal: Signal) {
    // SAFETY: pidfd_send_signal on a pidfd we own, without siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            target.pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// Waits up to `timeout` for the targets to exit (a pidfd turns readable
/// then); returns those still running.
fn wait_for_exit(mut targets: Vec<Target>, timeout: Duration) -> Vec<Target> {
    let deadline = Instant::now() + timeout;
    while !targets.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds: Vec<PollFd<'_>> = targets
            .iter()
            .map(|t| PollFd::new(t.pidfd.as_fd(), PollFlags::POLLIN))
            .collect();
        if poll(&mut fds, PollTimeout::from(millis)).is_err() {
            break;
        }
        let exited: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut exited = exited.into_iter();
        targets.retain(|_| !exited.next().unwrap_or(false));
    }
    targets
}
