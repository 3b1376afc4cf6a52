use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cmd::Place;

/// `tcpdump -n -l -i IFACE FILTER` in a namespace, started and ready (we read
/// its "listening on" line, printed once the capture is attached). `stop()`
/// returns the packet lines; drop kills it.
pub struct Capture {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
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
        cmd.args(["-n", "-l", "-i", iface]);
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
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (done_tx, done) = mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut v) = lines.lock() {
                        v.push(line);
                    }
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

    /// Stops the capture (SIGINT, so tcpdump flushes) and returns one line
    /// per packet.
    pub fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
        let _ = self.done.recv_timeout(Duration::from_secs(5));
        self.lines.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
