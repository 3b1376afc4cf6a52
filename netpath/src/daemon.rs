//! Control of the agent as a process: starting it detached (`up --detach`)
//! with a readiness pipe, its pid, and stopping it (`down`).
use std::{
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::{Command, Stdio},
    time::Duration,
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, fcntl},
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::signal::{Signal, kill},
    unistd::{Pid, pipe2},
};

use crate::{
    directories::Instance,
    state::{self, StateError},
};

/// Environment variable naming the fd a detached agent reports readiness on.
const READY_FD_ENV: &str = "NETPATH_READY_FD";
/// How long `down` waits for the agent after SIGTERM, then after SIGKILL.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const AGENT_KILL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "instance {instance} is already up (agent pid {pid}): run `netpath down` first, or use another --instance"
    )]
    AlreadyUp { instance: String, pid: u32 },
    #[error("the agent failed to start: {0}")]
    AgentStart(String),
    #[error("cannot stop the agent (pid {pid}): {source}")]
    AgentStop { pid: u32, source: io::Error },
    #[error(transparent)]
    State(#[from] StateError),
}

type Result<T> = std::result::Result<T, DaemonError>;

/// Fails when the instance's agent is running: one agent per instance.
pub fn check_not_running(instance: &Instance) -> Result<()> {
    match state::live_agent_pid(instance) {
        Some(pid) => Err(DaemonError::AlreadyUp {
            instance: instance.to_string(),
            pid,
        }),
        None => Ok(()),
    }
}

/// The write end of the readiness pipe of a detached agent.
pub struct ReadyNotifier(File);

impl ReadyNotifier {
    /// Takes the readiness fd passed by `up --detach`, if we are its child.
    pub fn from_env() -> Option<Self> {
        let fd: i32 = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
        // SAFETY: the variable is removed from our environment just below,
        // while still single-threaded, so nothing else claims the fd.
        unsafe { std::env::remove_var(READY_FD_ENV) };
        // Make sure the number names an open fd before owning it.
        fcntl(
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            FcntlArg::F_GETFD,
        )
        .ok()?;
        // SAFETY: the parent passed us this open fd for us alone to own.
        let file = unsafe { File::from_raw_fd(fd) };
        Some(Self(file))
    }

    pub fn signal(mut self) {
        // If the parent is gone there is no one to tell; carry on.
        let _ = self.0.write_all(b"R");
    }
}

/// `netpath up --detach`: starts `netpath up` (same arguments) as a daemon
/// in its own session, logging to agent.log, and returns once it reports
/// readiness on a pipe, or fails with the end of its log if it dies first.
pub fn start_detached(instance: &Instance) -> Result<u32> {
    check_not_running(instance)?;
    let start_err = |what: &str| {
        let what = what.to_owned();
        move |e: io::Error| DaemonError::AgentStart(format!("{what}: {e}"))
    };
    let dir_existed = instance.run_dir().is_dir();
    state::create_run_dir(instance)?;
    let log_path = instance.log_file();
    let log = File::create(&log_path).map_err(start_err("cannot create the agent log"))?;
    let log_for_stderr = log
        .try_clone()
        .map_err(start_err("cannot create the agent log"))?;

    let (read_end, write_end): (OwnedFd, OwnedFd) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| start_err("cannot make a pipe")(e.into()))?;
    let exe = std::env::current_exe().map_err(start_err("cannot find our executable"))?;
    let args = std::env::args_os().skip(1).filter(|arg| arg != "--detach");
    let ready_fd = write_end.as_raw_fd();
    let mut command = Command::new(exe);
    command
        .args(args)
        .env(READY_FD_ENV, ready_fd.to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr);
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (setsid, fcntl), on no memory but the fd number copied in.
    unsafe {
        command.pre_exec(move || {
            // Own session: the agent survives the terminal that ran `up`.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Let the readiness pipe's write end survive exec.
            if libc::fcntl(ready_fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(start_err("cannot start the agent"))?;
    drop(write_end);

    let mut byte = [0u8; 1];
    let mut reader = File::from(read_end);
    let got = reader.read(&mut byte).unwrap_or(0);
    if got == 1 {
        return Ok(child.id());
    }
    // EOF: the child exited (or closed the pipe) before it was ready.
    let _ = child.wait();
    let last_line = std::fs::read_to_string(&log_path)
        .ok()
        .and_then(|log| {
            log.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("see {}", log_path.display()));
    if !dir_existed && state::load(instance).ok().flatten().is_none() {
        let _ = std::fs::remove_dir_all(instance.run_dir());
    }
    Err(DaemonError::AgentStart(
        last_line.trim_start_matches("error: ").to_owned(),
    ))
}

/// Waits up to `timeout` for process `pid` to exit. True when it did.
fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        // ESRCH: gone already. Anything else (pre-5.3 kernel): assume the
        // caller's kill() check decides.
        return Errno::last() == Errno::ESRCH || !state::process_alive(pid);
    }
    let Ok(raw) = i32::try_from(raw) else {
        return false;
    };
    // SAFETY: pidfd_open just returned this fd, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(
        std::os::fd::AsFd::as_fd(&pidfd),
        PollFlags::POLLIN,
    )];
    // A pidfd becomes readable when the process exits.
    matches!(poll(&mut fds, PollTimeout::from(millis)), Ok(n) if n > 0)
}

/// Stops the instance's agent if it runs: SIGTERM, then SIGKILL.
pub fn stop_agent(instance: &Instance) -> Result<Option<u32>> {
    let Some(pid) = state::live_agent_pid(instance) else {
        return Ok(None);
    };
    let target = Pid::from_raw(pid as i32);
    for (signal, timeout) in [
        (Signal::SIGTERM, AGENT_STOP_TIMEOUT),
        (Signal::SIGKILL, AGENT_KILL_TIMEOUT),
    ] {
        match kill(target, signal) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Ok(Some(pid)),
            Err(e) => {
                return Err(DaemonError::AgentStop {
                    pid,
                    source: e.into(),
                });
            }
        }
        if wait_for_exit(pid, timeout) {
            return Ok(Some(pid));
        }
    }
    Err(DaemonError::AgentStop {
        pid,
        source: io::Error::new(io::ErrorKind::TimedOut, "still running after SIGKILL"),
    })
}
