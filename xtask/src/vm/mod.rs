//! `cargo xtask vm-test`: the test suite inside qemu on Debian's 5.10, 6.1
//! and 6.12 cloud kernels.
//!
//! The initramfs of a VM is three concatenated cpio archives (the kernel
//! unpacks them in order): the userland from this machine (cached), the
//! kernel's modules (cached per kernel package) and this run's binaries with
//! `/init`. Only the last is rebuilt on every run.
//!
//! Environment knobs: `NETPATH_VM_CACHE` (cache dir, default
//! `target/vm-cache`), `NETPATH_VM_TIMEOUT` (seconds per VM, default 3600),
//! `NETPATH_VM_TEST_TIMEOUT` (seconds per test binary, default 900),
//! `NETPATH_VM_MEMORY` (MiB, default 1536), `NETPATH_VM_OFFLINE` (no
//! `apt-get update`), `NETPATH_VM_SMOKE` (boot and load modules only, no
//! tests), `NETPATH_VM_DEBIAN_MIRROR`.

mod build;
mod image;
mod kernels;
mod plan;
mod qemu;
mod userland;

use std::{
    env,
    fmt::Write as _,
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use kernels::{Kernel, SERIES};
use qemu::{Report, VmConfig, VmRun};

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

/// Runs a command with inherited output; an error names the command.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// `kernel` is `5.10`, `6.1`, `6.12` or `all`; `extra_test_args` go to every
/// test binary (libtest filters and flags).
pub fn vm_test(kernel: &str, extra_test_args: &[String]) -> Result<()> {
    let series: Vec<_> = SERIES
        .iter()
        .filter(|s| kernel == "all" || s.name == kernel)
        .collect();
    if series.is_empty() {
        let names: Vec<_> = SERIES.iter().map(|s| s.name).collect();
        bail!(
            "unknown kernel {kernel:?}: use one of {} or all",
            names.join(", ")
        );
    }
    let workspace = workspace_root();
    let cache = env::var_os("NETPATH_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/vm-cache"));
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let smoke = env::var_os("NETPATH_VM_SMOKE").is_some();
    // Three TCG VMs share the machine's two cores; with the plan (see
    // `plan`) they ended in 23 to 29 minutes (dry run of 2026-12-02). 60
    // leaves CI's whole run (test and bench stages about 12 minutes) under
    // its 90 even when one hangs.
    let vm_timeout = Duration::from_secs(env_u64("NETPATH_VM_TIMEOUT", 3600)?);
    let test_timeout = env_u64("NETPATH_VM_TEST_TIMEOUT", 900)?;
    let memory = u32::try_from(env_u64("NETPATH_VM_MEMORY", 1536)?)?;

    let kernels = series
        .iter()
        .map(|s| kernels::prepare(s, &cache).with_context(|| format!("kernel {}", s.name)))
        .collect::<Result<Vec<_>>>()?;
    let base = base_cpio(&cache)?;

    let (binaries, tests) = if smoke {
        (Vec::new(), Vec::new())
    } else {
        let a = build::build(&workspace)?;
        (a.binaries, a.tests)
    };
    if !smoke && tests.is_empty() {
        eprintln!("vm-test: cargo reported no test executables; the VMs only boot");
    }
    let run_dir = cache.join("run");
    fs::create_dir_all(&run_dir)?;
    let tests_cpio = run_dir.join("tests.cpio");
    let size = userland::tests_image(&binaries, &tests)?.write_cpio(&tests_cpio)?;
    println!("vm-test: {} test binaries, {} MiB", tests.len(), size >> 20);

    let full_matrix = kernel == "all";
    let mut initrds = Vec::new();
    let mut planned = Vec::new();
    for k in &kernels {
        let runs = plan::tests_for(k.series, full_matrix, &tests)?;
        let init_cpio = run_dir.join(format!("init-{}.cpio", k.series));
        userland::init_image(&runs, extra_test_args, test_timeout)?.write_cpio(&init_cpio)?;
        let initrd = run_dir.join(format!("initrd-{}.cpio", k.series));
        concat(&[&base, &k.modules_cpio, &tests_cpio, &init_cpio], &initrd)?;
        let left: Vec<_> = tests
            .iter()
            .filter(|t| !runs.iter().any(|r| r.name == t.name))
            .map(|t| t.name.as_str())
            .collect();
        println!(
            "vm-test: {} ({}, {}): initramfs {} MiB, {} test binaries{}, booting",
            k.series,
            k.package,
            k.release,
            fs::metadata(&initrd)?.len() >> 20,
            runs.len(),
            if left.is_empty() {
                String::new()
            } else {
                format!(" (leaves to other kernels: {})", left.join(" "))
            }
        );
        initrds.push(initrd);
        planned.push(runs.len());
    }

    // One thread per VM: each qemu is single-vCPU, so they overlap well.
    let runs: Vec<Result<VmRun>> = thread::scope(|s| {
        let handles: Vec<_> = kernels
            .iter()
            .zip(&initrds)
            .map(|(k, initrd)| {
                let cfg = VmConfig {
                    vmlinuz: &k.vmlinuz,
                    initrd,
                    log: run_dir.join(format!("console-{}.log", k.series)),
                    memory_mib: memory,
                    timeout: vm_timeout,
                };
                s.spawn(move || qemu::run(&cfg))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("VM thread panicked")))
            })
            .collect()
    });

    let mut failed_kernels = Vec::new();
    let mut table = String::new();
    let mut details = String::new();
    let mut breakdown = String::new();
    writeln!(
        table,
        "{:<6} {:<32} {:>6} {:>6} {:>7} {:>8}  status",
        "kernel", "release", "passed", "failed", "skipped", "time"
    )?;
    for ((k, run), expected) in kernels.iter().zip(runs).zip(planned) {
        let run = run.with_context(|| format!("running the {} VM", k.series))?;
        let report = qemu::parse(&run.console);
        let status = verdict(k, &run, &report, smoke, expected);
        let sum = |f: fn(&qemu::BinaryResult) -> u32| report.binaries.iter().map(f).sum::<u32>();
        writeln!(
            table,
            "{:<6} {:<32} {:>6} {:>6} {:>7} {:>7.1}s  {}",
            k.series,
            k.release,
            sum(|b| b.passed),
            sum(|b| b.failed),
            sum(|b| b.skipped),
            run.elapsed.as_secs_f64(),
            status
        )?;
        for b in &report.binaries {
            writeln!(
                breakdown,
                "{:<6} {:<28} {:>4} passed {:>4} failed {:>4} skipped {:>7.1}s  exit {}",
                k.series,
                b.name,
                b.passed,
                b.failed,
                b.skipped,
                b.seconds,
                b.rc.map_or("none".into(), |c| c.to_string())
            )?;
        }
        if status != "ok" {
            failed_kernels.push(k.series);
            describe_failure(&mut details, k, &run, &report, test_timeout)?;
        }
    }
    print!("{details}");
    println!("\n{breakdown}\n{table}");
    println!("console logs: {}", run_dir.display());
    if !failed_kernels.is_empty() {
        bail!("vm-test failed on {}", failed_kernels.join(", "));
    }
    Ok(())
}

fn verdict(k: &Kernel, run: &VmRun, r: &Report, smoke: bool, expected: usize) -> String {
    if r.booted_kernel.as_deref() != Some(k.release.as_str()) {
        "no boot".into()
    } else if run.timed_out {
        "timeout".into()
    } else if !r.done {
        "VM died".into()
    } else if !r.module_failures.is_empty() {
        "modules failed".into()
    } else if r.tools != "ok" {
        format!("tools failed: {}", r.tools)
    } else if !smoke && r.binaries.len() != expected {
        "binaries missing".into()
    } else if r.binaries.iter().any(|b| !b.ok()) {
        "FAILED".into()
    } else {
        "ok".into()
    }
}

/// The output of what failed, or the end of the console when the VM itself
/// did not get through.
fn describe_failure(
    out: &mut String,
    k: &Kernel,
    run: &VmRun,
    r: &Report,
    test_timeout: u64,
) -> Result<()> {
    writeln!(out, "\n===== {} ({}) =====", k.series, k.release)?;
    for m in &r.module_failures {
        writeln!(out, "module failed to load: {m}")?;
    }
    for b in r.binaries.iter().filter(|b| !b.ok()) {
        writeln!(
            out,
            "--- {} (exit {}) ---\n{}",
            b.name,
            b.rc.map_or("none: did not finish".into(), |c| c.to_string()),
            b.output
        )?;
        if b.rc == Some(137) {
            writeln!(
                out,
                "(SIGKILL: most likely the {test_timeout} s per-binary timeout, NETPATH_VM_TEST_TIMEOUT; the test still running is the one without a result line above)"
            )?;
        }
    }
    if !r.done {
        let lines: Vec<_> = run.console.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        writeln!(
            out,
            "--- last console lines ({}) ---\n{}",
            run.log.display(),
            tail.join("\n")
        )?;
    }
    Ok(())
}

/// The userland archive, rebuilt only when the host files it is made of change.
fn base_cpio(cache: &Path) -> Result<PathBuf> {
    let path = cache.join("base.cpio");
    let stamp = cache.join("base.fingerprint");
    let fp = userland::base_fingerprint()?;
    if path.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == fp) {
        return Ok(path);
    }
    println!("vm-test: building the base userland archive");
    let size = userland::base_image()?.write_cpio(&path)?;
    fs::write(&stamp, fp)?;
    println!("vm-test: base userland {} MiB", size >> 20);
    Ok(path)
}

fn concat(parts: &[&Path], out: &Path) -> Result<()> {
    let mut w = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    for p in parts {
        let mut r = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        io::copy(&mut r, &mut w)?;
    }
    Ok(())
}
