//! Control of the agent as a process: starting it detached (`up --detach`)
//! with a readiness pipe, its pid, and stopping it (`down`).
use std::{
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::{Child, Command, Stdio},
    time::Duration,
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, fcntl},
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::signal::{Signal, kill},
    unistd::{ForkResult, Pid, fork, pipe2},
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
    // A restarted agent adds to the log of the one before it.
    let log = File::options()
        .create(true)
        .write(true)
        .append(is_restart())
        .truncate(!is_restart())
        .open(&path)
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

/// `netpath up --detach`: forks a supervisor in its own session, which
/// starts `netpath up` (same arguments) as the agent and, once it runs,
/// starts it again whenever it dies (see `supervise`). Returns the agent's
/// pid once it reports readiness, or fails with its error. Until the agent
/// knows the instance is its own (see `log_to_file`), its output comes back
/// to us, not to the agent log: an `up` that loses a race leaves no trace.
pub fn start_detached(instance: &Instance) -> Result<u32> {
    check_not_running(instance)?;
    let pipe = || {
        pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| DaemonError::AgentStart(format!("cannot make a pipe: {e}")))
    };
    let (read_end, write_end): (OwnedFd, OwnedFd) = pipe()?;
    let (early_read, early_write): (OwnedFd, OwnedFd) = pipe()?;
    // SAFETY: the CLI has started no thread and no runtime before this, so
    // the child is a whole copy of a single-threaded process.
    let supervisor = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(read_end);
            drop(early_read);
            std::process::exit(supervise(instance, write_end, early_write));
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(DaemonError::AgentStart(format!("cannot fork: {e}"))),
    };
    drop(write_end);
    drop(early_write);
    let early = std::thread::spawn(move || {
        let mut output = Vec::new();
        let _ = File::from(early_read).read_to_end(&mut output);
        output
    });

    let mut report = Vec::new();
    let _ = File::from(read_end).read_to_end(&mut report);
    if let Some(pid) = report.strip_prefix(READY) {
        if let Some(pid) = std::str::from_utf8(pid).ok().and_then(|p| p.parse().ok()) {
            return Ok(pid);
        }
    }
    let _ = nix::sys::wait::waitpid(supervisor, None);
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

/// Set in the environment of an agent the supervisor starts again, to the
/// number of restarts so far: it must adopt the instance, never build a new
/// one (`down` may be removing it), and it records the count for `status`.
const RESTART_ENV: &str = "NETPATH_RESTART";
/// Wait before starting a dead agent again: doubles up to the maximum, back
/// to the minimum once an agent ran for `STABLE_RUN`.
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
const STABLE_RUN: Duration = Duration::from_secs(60);

/// How many times the supervisor restarted the agent before this one (0 for
/// an agent it did not restart).
pub fn restart_count() -> u32 {
    std::env::var(RESTART_ENV)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Whether this agent was started again by its supervisor.
pub fn is_restart() -> bool {
    restart_count() > 0
}

/// A line from the supervisor in the agent log.
fn supervisor_log(instance: &Instance, line: &str) {
    if let Ok(mut log) = File::options().append(true).open(instance.log_file()) {
        let _ = writeln!(log, "netpath supervisor: {line}");
    }
}

/// An agent process with its readiness report.
fn spawn_agent(output: OwnedFd, restarts: u32) -> io::Result<(Child, Vec<u8>)> {
    let (read_end, write_end): (OwnedFd, OwnedFd) = pipe2(OFlag::O_CLOEXEC)?;
    let exe = std::env::current_exe()?;
    let args = std::env::args_os().skip(1).filter(|arg| arg != "--detach");
    let ready_fd = write_end.as_raw_fd();
    let mut command = Command::new(exe);
    command
        .args(args)
        .env(READY_FD_ENV, ready_fd.to_string())
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);
    if restarts > 0 {
        command.env(RESTART_ENV, restarts.to_string());
    }
    // SAFETY: between fork and exec only fcntl is called, on no memory but
    // the fd number copied in.
    unsafe {
        command.pre_exec(move || {
            // Let the readiness pipe's write end survive exec.
            if libc::fcntl(ready_fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    // Our copies of the write ends: closed, so the child's exit is an EOF.
    drop(command);
    drop(write_end);
    let mut report = Vec::new();
    File::from(read_end).read_to_end(&mut report)?;
    Ok((child, report))
}

/// The supervisor of a detached agent (a forked child of `up --detach`, in
/// its own session): starts the agent, passes its first report on to `up
/// --detach`, then starts it again with backoff whenever it dies by a signal
/// or an error, until it exits cleanly (`down`, SIGTERM) or the instance is
/// gone. Flows survive a restart: they live in pinned maps, and the new
/// agent adopts them. Returns the exit code.
fn supervise(instance: &Instance, report: OwnedFd, early: OwnedFd) -> i32 {
    // SAFETY: setsid and dup2 onto the standard fds, single-threaded.
    unsafe {
        libc::setsid();
        // Let go of the caller's terminal or pipes.
        if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
            for fd in 0..=2 {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
    let mut report = Some(File::from(report));
    let mut early = Some(early);
    let mut backoff = RESTART_BACKOFF_MIN;
    // Agents started after the first, counting failed starts.
    let mut restarts = 0;
    loop {
        let restart = report.is_none();
        if restart {
            restarts += 1;
        }
        let output = match early.take() {
            Some(fd) => Ok(fd),
            None => File::options()
                .append(true)
                .open(instance.log_file())
                .map(OwnedFd::from),
        };
        let started = output.and_then(|output| spawn_agent(output, restarts));
        let first_start = report.take();
        let (mut child, first_start) = match (started, first_start) {
            (Ok((child, ready)), first) if ready.starts_with(READY) => (child, first),
            (result, Some(mut first)) => {
                // The first start failed: `up --detach` says why.
                match result {
                    Ok((mut child, ready)) => {
                        let _ = child.wait();
                        let _ = first.write_all(&ready);
                    }
                    Err(e) => {
                        let _ = write!(first, "E the agent failed to start: {e}");
                    }
                }
                return 1;
            }
            (result, None) => {
                let why = match result {
                    Ok((mut child, _)) => {
                        let _ = child.wait();
                        "it failed to start".to_owned()
                    }
                    Err(e) => format!("cannot start it: {e}"),
                };
                if !instance.state_file().exists() {
                    return 0;
                }
                supervisor_log(instance, &format!("{why}; trying again in {backoff:?}"));
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                continue;
            }
        };
        let pid = child.id();
        if let Some(mut first) = first_start {
            let _ = first.write_all(READY);
            let _ = write!(first, "{pid}");
        }
        if restart {
            supervisor_log(instance, &format!("agent started again, pid {pid}"));
        }
        let since = std::time::Instant::now();
        let status = child.wait();
        if status.as_ref().is_ok_and(std::process::ExitStatus::success)
            || !instance.state_file().exists()
        {
            return 0;
        }
        if since.elapsed() >= STABLE_RUN {
            backoff = RESTART_BACKOFF_MIN;
        }
        let how = match status {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        };
        supervisor_log(
            instance,
            &format!("agent pid {pid} died ({how}); restarting it in {backoff:?}"),
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    }
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
