use std::ffi::CString;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::netns::Netns;

/// Default limit for one command run through [`run`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for stdout/stderr to reach EOF after the process exited.
/// A process that leaves a child holding them (a daemon that did not redirect
/// its stdio) is reported through [`CmdOutput::pipes_held_open`].
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Where to run a command: the current namespace, or a named netns, and
/// optionally inside a cgroup2 directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    /// Name under /run/netns; `None` = the test process's own netns.
    pub netns: Option<String>,
    /// cgroup2 directory the process is moved into before it execs.
    pub cgroup: Option<PathBuf>,
}

impl Place {
    /// The test process's own namespaces. Only for read-only commands.
    pub fn here() -> Self {
        Self::default()
    }

    pub fn netns(name: impl Into<String>) -> Self {
        Self {
            netns: Some(name.into()),
            cgroup: None,
        }
    }

    /// The same place, with processes moved into `cgroup` before exec.
    pub fn in_cgroup(mut self, cgroup: impl Into<PathBuf>) -> Self {
        self.cgroup = Some(cgroup.into());
        self
    }

    /// A `Command` that runs `program` here. Add arguments with `.arg(s)`.
    ///
    /// In a netns this is `nsenter --net=/run/netns/NAME -- program`:
    /// nsenter execs `program`, so the child's pid is the program's pid.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        if let Some(cg) = &self.cgroup {
            move_into_cgroup_before_exec(&mut cmd, cg);
        }
        cmd
    }

    /// Runs `program args...` here with the default timeout.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, program: &str, args: &[S]) -> CmdOutput {
        run(self.command(program).args(args))
    }
}

impl From<&Place> for Place {
    fn from(p: &Place) -> Self {
        p.clone()
    }
}

impl From<&Netns> for Place {
    fn from(ns: &Netns) -> Self {
        Place::netns(ns.name())
    }
}

/// A bare netns name, e.g. a container's `np-web`.
impl From<&str> for Place {
    fn from(name: &str) -> Self {
        Place::netns(name)
    }
}

impl From<String> for Place {
    fn from(name: String) -> Self {
        Place::netns(name)
    }
}

impl From<&String> for Place {
    fn from(name: &String) -> Self {
        Place::netns(name.clone())
    }
}

/// Makes the child write "0" to `<cgroup>/cgroup.procs` between fork and exec,
/// which moves the child itself (and everything it execs) into the cgroup.
pub(crate) fn move_into_cgroup_before_exec(cmd: &mut Command, cgroup: &Path) {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())
        .expect("cgroup path contains a NUL byte");
    // SAFETY: the closure only calls open/write/close, which are
    // async-signal-safe, on memory allocated before fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
}

/// What a finished command left behind.
#[derive(Clone, Debug)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit status; `None` if it could not be spawned. After a timeout it is
    /// the SIGKILL status and `timed_out` is set.
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    /// stdout or stderr were still open [`DRAIN_GRACE`] after the process
    /// exited: something it started kept them (e.g. a detached daemon).
    pub pipes_held_open: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success()) && !self.timed_out
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Panics, showing everything, unless the command succeeded.
    #[track_caller]
    pub fn expect_ok(&self, what: &str) -> &Self {
        assert!(self.success(), "{what}: command failed\n{self}");
        self
    }

    /// Panics, showing everything, if the command succeeded.
    #[track_caller]
    pub fn expect_fail(&self, what: &str) -> &Self {
        assert!(
            !self.success() && !self.timed_out,
            "{what}: command should have failed (and not by timing out)\n{self}"
        );
        self
    }

    /// Panics unless the command failed with a one-line `error: ...`
    /// naming `needle`: what netpath prints for every error a user can hit.
    #[track_caller]
    pub fn expect_one_line_error(&self, needle: &str) -> &Self {
        self.expect_fail(needle);
        let stderr = self.stderr.trim();
        assert!(
            stderr.starts_with("error: ") && stderr.lines().count() == 1,
            "expected a one-line `error: ...`\n{self}"
        );
        assert!(
            stderr.contains(needle),
            "expected {needle:?} in the error\n{self}"
        );
        self
    }

    /// stdout parsed as JSON; panics with the whole output if it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }

    pub fn stdout_trim(&self) -> &str {
        self.stdout.trim()
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}", self.cmdline)?;
        match (self.timed_out, self.status) {
            (true, _) => writeln!(f, "result: TIMED OUT (killed)")?,
            (false, Some(s)) => writeln!(f, "result: {s}")?,
            (false, None) => writeln!(f, "result: not run")?,
        }
        if self.pipes_held_open {
            writeln!(f, "note: stdout/stderr were still held open after exit")?;
        }
        writeln!(f, "--- stdout\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr\n{}", self.stderr.trim_end())
    }
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains([' ', '\'', '"', '\n']) {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

type Buf = Arc<Mutex<Vec<u8>>>;

fn drain(mut r: impl Read + Send + 'static, done: mpsc::Sender<()>) -> Buf {
    let buf: Buf = Arc::default();
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => b
                    .lock()
                    .expect("output buffer lock")
                    .extend_from_slice(&chunk[..n]),
            }
        }
        let _ = done.send(());
    });
    buf
}

/// Runs `cmd` (stdin from /dev/null) with [`DEFAULT_TIMEOUT`].
pub fn run(cmd: &mut Command) -> CmdOutput {
    run_timeout(cmd, DEFAULT_TIMEOUT)
}

/// Runs `cmd` (stdin from /dev/null), capturing stdout and stderr; kills it
/// by pid if it is still running after `timeout`. Never panics.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    run_with_input(cmd, None, timeout)
}

/// As [`run_timeout`], with `input` (when given) written to the command's
/// stdin, which is then closed.
pub fn run_with_input(cmd: &mut Command, input: Option<&str>, timeout: Duration) -> CmdOutput {
    let cmdline = describe(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return CmdOutput {
                cmdline,
                status: None,
                timed_out: false,
                pipes_held_open: false,
                stdout: String::new(),
                stderr: format!("failed to spawn: {e}"),
            };
        }
    };
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let input = input.as_bytes().to_vec();
        // A thread, so a child that does not read cannot block us.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let (done_tx, done_rx) = mpsc::channel();
    let out = drain(child.stdout.take().expect("piped stdout"), done_tx.clone());
    let err = drain(child.stderr.take().expect("piped stderr"), done_tx);
    let pid = child.id() as libc::pid_t;
    let (st_tx, st_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = st_tx.send(child.wait());
    });
    let (status, timed_out) = match st_rx.recv_timeout(timeout) {
        Ok(r) => (r.ok(), false),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped
            // (the waiter thread reaps it after this).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            (st_rx.recv().ok().and_then(Result::ok), true)
        }
    };
    let deadline = std::time::Instant::now() + DRAIN_GRACE;
    let mut closed = 0;
    while closed < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(()) => closed += 1,
            Err(_) => break,
        }
    }
    let text =
        |b: &Buf| String::from_utf8_lossy(&b.lock().expect("output buffer lock")).into_owned();
    CmdOutput {
        cmdline,
        status,
        timed_out,
        pipes_held_open: closed < 2,
        stdout: text(&out),
        stderr: text(&err),
    }
}
