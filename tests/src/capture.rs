use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cmd::Place;

type Lines = Arc<(Mutex<Vec<String>>, Condvar)>;

/// `tcpdump --immediate-mode -n -l -i IFACE FILTER` in a namespace, started
/// and ready (we read its "listening on" line, printed once the capture is
/// attached). Packets reach us asynchronously: use [`Capture::wait_for`]
/// before asserting, and for "never seen" checks send a marker packet last
/// and wait for it. `stop()` returns the lines; drop kills tcpdump.
pub struct Capture {
    child: Child,
    lines: Lines,
    done: mpsc::Receiver<()>,
}

impl Capture {
    #[track_caller]
    pub fn start(place: impl Into<Place>, iface: &str, filter: &str) -> Self {
        Self::try_start(place, iface, filter)
            .unwrap_or_else(|e| panic!("tcpdump on {iface}: {e:#}"))
    }

    pub fn try_start(place: impl Into<Place>, iface: &str, filter: &str) -> anyhow::Result<Self> {
        let mut cmd = place.into().command("tcpdump");
        cmd.args(["--immediate-mode", "-n", "-l", "-i", iface]);
        cmd.args(filter.split_whitespace());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawning tcpdump (is it installed?)")?;
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        std::thread::spawn(move || {
            let mut seen = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on") {
                    let _ = ready_tx.send(Ok(()));
                } else {
                    seen.push_str(&line);
                    seen.push('\n');
                }
            }
            let _ = ready_tx.send(Err(seen));
        });
        let lines: Lines = Arc::default();
        let (done_tx, done) = mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut v) = lines.0.lock() {
                        v.push(line);
                    }
                    lines.1.notify_all();
                }
                let _ = done_tx.send(());
            });
        }
        let cap = Self { child, lines, done };
        match ready_rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Ok(())) => Ok(cap),
            Ok(Err(err)) => bail!("tcpdump exited: {err}"),
            Err(_) => bail!("tcpdump not ready after 15 s"),
        }
    }

    /// The packet lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until a line satisfies `pred` (true) or `timeout` passes (false).
    pub fn wait_for(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.lines;
        let Ok(mut v) = lock.lock() else { return false };
        let mut checked = 0;
        loop {
            if v[checked..].iter().any(|l| pred(l)) {
                return true;
            }
            checked = v.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            v = match cv.wait_timeout(v, left) {
                Ok((v, _)) => v,
                Err(_) => return false,
            };
        }
    }

    /// Stops the capture (SIGINT, so tcpdump flushes) and returns one line
    /// per packet.
    pub fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
        let _ = self.done.recv_timeout(Duration::from_secs(5));
        self.lines()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
