//! Boots one kernel with the test initramfs under qemu (TCG: KVM does not
//! work on these machines) and reads the result lines off its console.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

pub struct VmConfig<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub log: PathBuf,
    pub memory_mib: u32,
    pub timeout: Duration,
}

pub struct VmRun {
    pub log: PathBuf,
    pub elapsed: Duration,
    pub timed_out: bool,
    pub console: String,
}

pub fn run(cfg: &VmConfig<'_>) -> Result<VmRun> {
    let log = File::create(&cfg.log).with_context(|| format!("creating {}", cfg.log.display()))?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-smp", "1", "-nographic", "-no-reboot"])
        // Without cx16: 6.12's SLUB per-cpu cmpxchg16b double-faults at
        // random under qemu 7.2's TCG (3 of 6 boots); with it off, 0 of 6.
        .args(["-cpu", "qemu64,-cx16"])
        .args(["-nic", "none", "-m", &cfg.memory_mib.to_string()])
        .arg("-kernel")
        .arg(cfg.vmlinuz)
        .arg("-initrd")
        .arg(cfg.initrd)
        // panic=-1 with -no-reboot: a panicking kernel ends qemu at once.
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > cfg.timeout {
            timed_out = true;
            // Our own child, by pid.
            let _ = child.kill();
            child.wait()?;
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    let elapsed = start.elapsed();
    let bytes = fs::read(&cfg.log)?;
    let console = String::from_utf8_lossy(&bytes).replace('\r', "");
    Ok(VmRun {
        log: cfg.log.clone(),
        elapsed,
        timed_out,
        console,
    })
}

/// What one test binary reported.
#[derive(Debug, Default)]
pub struct BinaryResult {
    pub name: String,
    pub rc: Option<i32>,
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    /// Lines between its BEGIN and END markers.
    pub output: String,
    /// Seconds of VM uptime it took.
    pub seconds: f64,
}

impl BinaryResult {
    pub fn ok(&self) -> bool {
        self.rc == Some(0) && self.failed == 0
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub booted_kernel: Option<String>,
    pub module_failures: Vec<String>,
    pub modules: String,
    /// `ok`, or the tools that failed their check in the VM.
    pub tools: String,
    pub binaries: Vec<BinaryResult>,
    /// The `NETPATH-VM-DONE` line was seen: every binary ran.
    pub done: bool,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`
fn libtest_summary(line: &str) -> Option<(u32, u32, u32)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |what: &str| -> u32 {
        rest.split(';')
            .find_map(|part| {
                let part = part
                    .trim()
                    .trim_start_matches("ok.")
                    .trim_start_matches("FAILED.");
                part.trim().strip_suffix(what)?.trim().parse().ok()
            })
            .unwrap_or(0)
    };
    Some((count(" passed"), count(" failed"), count(" ignored")))
}

pub fn parse(console: &str) -> Report {
    let mut report = Report::default();
    let mut current: Option<BinaryResult> = None;
    for raw in console.lines() {
        // Firmware escape sequences can precede the first marker on its line.
        let line = raw.find("NETPATH-VM-").map_or(raw, |i| &raw[i..]);
        if let Some(rest) = line.strip_prefix("NETPATH-VM-BOOT ") {
            report.booted_kernel = field(rest, "kernel").map(str::to_string);
        } else if let Some(rest) = line.strip_prefix("NETPATH-VM-MODULE-FAIL ") {
            report.module_failures.push(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("NETPATH-VM-TOOLS ") {
            report.tools = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("NETPATH-VM-MODULES ") {
            report.modules = rest.trim().to_string();
        } else if let Some(name) = line.strip_prefix("NETPATH-VM-BEGIN ") {
            current = Some(BinaryResult {
                name: name.trim().to_string(),
                ..Default::default()
            });
        } else if let Some(rest) = line.strip_prefix("NETPATH-VM-END ") {
            if let Some(mut b) = current.take() {
                b.rc = field(rest, "rc").and_then(|r| r.parse().ok());
                let t = |k| field(rest, k).and_then(|v| v.parse::<f64>().ok());
                b.seconds = t("end").unwrap_or(0.0) - t("start").unwrap_or(0.0);
                report.binaries.push(finish(b));
            }
        } else if line.starts_with("NETPATH-VM-DONE ") {
            report.done = true;
        } else if let Some(b) = current.as_mut() {
            b.output.push_str(raw);
            b.output.push('\n');
        }
    }
    // A binary that never ended (VM died or timed out) is a failure.
    if let Some(b) = current {
        report.binaries.push(finish(b));
    }
    report
}

fn finish(mut b: BinaryResult) -> BinaryResult {
    let summaries: Vec<_> = b.output.lines().filter_map(libtest_summary).collect();
    if summaries.is_empty() {
        // Killed or crashed before libtest's summary: count the per-test
        // lines it got to print; the test that was running failed.
        for line in b.output.lines().filter(|l| l.starts_with("test ")) {
            if line.ends_with(" ... ok") {
                b.passed += 1;
            } else if line.ends_with(" ... FAILED") {
                b.failed += 1;
            } else if line.contains(" ... ignored") {
                b.skipped += 1;
            }
        }
        if b.rc != Some(0) {
            b.failed += 1;
        } else if b.passed + b.failed + b.skipped == 0 {
            // Not a libtest binary: one test, judged by its exit code.
            b.passed = 1;
        }
        return b;
    }
    for (p, f, s) in &summaries {
        b.passed += p;
        b.failed += f;
        b.skipped += s;
    }
    if b.rc != Some(0) && b.failed == 0 {
        // Crashed after its summary: still a failure.
        b.failed = 1;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_results() {
        let console = "noise\n\x1b[2JNETPATH-VM-BOOT kernel=6.1.0-9-cloud-amd64 uptime=1.2\n\
            NETPATH-VM-TOOLS ok\nNETPATH-VM-BEGIN test-e2e\nrunning 2 tests\n\
            test result: FAILED. 1 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1s\n\
            NETPATH-VM-END test-e2e rc=101 start=2.0 end=5.5\n\
            NETPATH-VM-BEGIN lib-netpath\n\
            test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0s\n\
            NETPATH-VM-END lib-netpath rc=0 start=5.5 end=6.0\n\
            NETPATH-VM-BEGIN test-hang\nrunning 3 tests\ntest a ... ok\ntest b ... ignored, slow\ntest c ... ";
        let r = parse(console);
        assert_eq!(r.booted_kernel.as_deref(), Some("6.1.0-9-cloud-amd64"));
        assert!(!r.done);
        assert_eq!(r.tools, "ok");
        let b = &r.binaries;
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].passed, b[0].failed, b[0].skipped), (1, 1, 2));
        assert!(!b[0].ok());
        assert!((b[0].seconds - 3.5).abs() < 1e-9);
        assert_eq!((b[1].passed, b[1].failed), (4, 0));
        assert!(b[1].ok());
        assert_eq!(
            (b[2].rc, b[2].passed, b[2].failed, b[2].skipped),
            (None, 1, 1, 1)
        );
    }
}
