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
    /// `up` failed in the detached agent, with this error.
    #[error("{0}")]
    Up(String),
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
        let _ = self.0.write_all(READY);
    }

    /// Tells `up --detach` why `up` failed, for it to print as its error.
    pub fn fail(mut self, error: &str) {
        let _ = self.0.write_all(FAILED);
        let _ = self.0.write_all(error.as_bytes());
    }
}

/// What a detached agent writes on the readiness pipe: READY, or FAILED and
/// its error, then it closes the pipe.
const READY: &[u8] = b"R";
const FAILED: &[u8] = b"E";

/// Sends this process's stdout and stderr to the instance's agent log. A
/// detached agent calls it once it holds the instance lock and knows the
/// instance is its own: an `up` that loses a race never touches the log.
pub fn log_to_file(instance: &Instance) -> Result<()> {
    let path = instance.log_file();
    let log = File::create(&path)
        .map_err(|e| DaemonError::AgentStart(format!("cannot create {}: {e}", path.display())))?;
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 onto the standard fds, from an fd we own; Rust's
        // stdout/stderr handles keep writing to the fd numbers.
        if unsafe { libc::dup2(log.as_raw_fd(), target) } < 0 {
            return Err(DaemonError::AgentStart(format!(
                "cannot log to {}: {}",
                path.display(),
                io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// `netpath up --detach`: starts `netpath up` (same arguments) as a daemon
/// in its own session and returns once it reports readiness on a pipe, or
/// fails with its error. Until the agent knows the instance is its own (see
/// `log_to_file`), its output comes back to us, not to the agent log: this
/// process creates nothing, so an `up` that loses a race leaves no trace.
pub fn start_detached(instance: &Instance) -> Result<u32> {
    check_not_running(instance)?;
    let start_err = |what: &str| {
        let what = what.to_owned();
        move |e: io::Error| DaemonError::AgentStart(format!("{what}: {e}"))
    };
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| start_err("cannot make a pipe")(e.into()));
    let (read_end, write_end): (OwnedFd, OwnedFd) = pipe()?;
    let (early_read, early_write): (OwnedFd, OwnedFd) = pipe()?;
    let early_for_stderr = early_write
        .try_clone()
        .map_err(start_err("cannot make a pipe"))?;
    let exe = std::env::current_exe().map_err(start_err("cannot find our executable"))?;
    let args = std::env::args_os().skip(1).filter(|arg| arg != "--detach");
    let ready_fd = write_end.as_raw_fd();
    let mut command = Command::new(exe);
    command
        .args(args)
        .env(READY_FD_ENV, ready_fd.to_string())
        .stdin(Stdio::null())
        .stdout(early_write)
        .stderr(early_for_stderr);
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
    // The command holds our copies of the pipes' write ends: close them, so
    // that the child's exit is an EOF.
    drop(command);
    drop(write_end);
    let early = std::thread::spawn(move || {
        let mut output = Vec::new();
        let _ = File::from(early_read).read_to_end(&mut output);
        output
    });

    let mut report = Vec::new();
    let _ = File::from(read_end).read_to_end(&mut report);
    if report.starts_with(READY) {
        return Ok(child.id());
    }
    let _ = child.wait();
    if let Some(error) = report.strip_prefix(FAILED) {
        return Err(DaemonError::Up(String::from_utf8_lossy(error).into_owned()));
    }
    // Died without a word on the pipe (a crash): its last words, if any.
    let output = early.join().unwrap_or_default();
    let log = std::fs::read_to_string(instance.log_file()).unwrap_or_default();
    let last_line = |text: &str| {
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_owned)
    };
    let line = last_line(&String::from_utf8_lossy(&output))
        .or_else(|| last_line(&log))
        .unwrap_or_else(|| "it exited without a word".to_owned());
    Err(DaemonError::AgentStart(
        line.trim_start_matches("error: ").to_owned(),
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
