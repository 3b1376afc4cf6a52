//! Developer tasks: `cargo xtask build | run | clippy | test | demo | bench | vm-test |
//! install | tools`.

mod bench;
mod demo;
mod lint;
mod tools;
mod util;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::{
    tools::Task,
    util::{cargo, is_root, status_ok, workspace_root},
};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "netpath developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build netpath (its build script also builds the eBPF programs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run netpath with ARGS as root (via `sudo -E` if needed).
    Run {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Clippy with -D warnings on the host workspace and on netpath-ebpf
    /// for the bpf target (nightly, as netpath's build script builds it).
    Clippy,
    /// Lint (as `clippy`), build netpath, run its unit tests and the
    /// end-to-end tests (root). ARGS go to the end-to-end test binaries
    /// (filters, --nocapture, ...).
    Test {
        #[arg(long)]
        release: bool,
        /// Skip `cargo test -p netpath`.
        #[arg(long)]
        no_unit: bool,
        /// Skip the clippy step.
        #[arg(long)]
        no_lint: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show netpath in throw-away namespaces: a host, the outside, two
    /// containers (root). Cleans up, also on Ctrl-C. Uses $NETPATH_BIN
    /// instead of building when set.
    Demo {
        #[arg(long)]
        release: bool,
    },
    /// netpath vs the topology's limit (direct), plain routing, iptables
    /// and nftables on one namespace topology (root); results in target/bench/.
    Bench {
        /// Short smoke run (CI): 1 round, 1 s runs, scale up to 1000 ports.
        #[arg(long)]
        quick: bool,
        /// Rounds (modes interleaved per round) [default: 5, 1 with --quick].
        #[arg(long)]
        rounds: Option<usize>,
        /// Only these modes (comma-separated: direct, route, iptables,
        /// nftables, netpath-tc, netpath-xdp) [default: all].
        #[arg(long, value_delimiter = ',')]
        modes: Vec<String>,
        /// Only the program cost (BPF_PROG_TEST_RUN), printed; no topology,
        /// no report files.
        #[arg(long, conflicts_with_all = ["rounds", "modes", "scale"])]
        prog_cost_only: bool,
        /// Conntrack table size of the flow-table step [default: 1000000,
        /// 200000 with --quick].
        #[arg(long, value_name = "N")]
        flow_table: Option<u32>,
        /// Only these scale steps (comma-separated numbers of published
        /// ports, at most 65089) [default: 1,1000,10000,65000; 1,1000
        /// with --quick].
        #[arg(long, value_delimiter = ',', value_name = "N")]
        scale: Vec<u16>,
    },
    /// The test suite in qemu on Debian's cloud kernels. ARGS go to every
    /// test binary in the VMs.
    VmTest {
        /// 5.10, 6.1, 6.12 or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the release binaries, then install netpath with its systemd
    /// unit, shell completions and man pages (`netpath install`); with
    /// --cni also the CNI plugin in /opt/cni/bin and an example conflist.
    /// Installs $NETPATH_BIN (and the netpath-cni next to it) instead of
    /// building when set.
    Install {
        /// Installation prefix.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Staging directory prepended to every path (for packaging).
        #[arg(long)]
        destdir: Option<PathBuf>,
        /// Also the CNI plugin and the example conflist.
        #[arg(long)]
        cni: bool,
    },
    /// The commands demo, test, bench and vm-test run, with their Debian
    /// packages (what those tasks check, and install, before they start).
    Tools,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Build { release } => {
            let bin = build(release)?;
            println!("xtask: built {}", bin.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { release, args } => run(release, &args),
        Cmd::Clippy => Ok(summary("clippy", &lint::clippy())),
        Cmd::Test {
            release,
            no_unit,
            no_lint,
            args,
        } => test(release, no_unit, no_lint, &args),
        Cmd::Demo { release } => {
            tools::preflight(Task::Demo)?;
            require_root("demo")?;
            demo::run(&netpath_bin_or_build(release)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench {
            quick,
            rounds,
            modes,
            prog_cost_only,
            flow_table,
            scale,
        } => {
            if !prog_cost_only {
                tools::preflight(Task::Bench)?;
            }
            require_root("bench")?;
            if prog_cost_only {
                bench::run_prog_cost_only(quick)?;
            } else {
                bench::run(quick, rounds, &modes, flow_table, &scale)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::VmTest { kernel, args } => {
            tools::preflight(Task::VmTest)?;
            vm::vm_test(&kernel, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Install {
            prefix,
            destdir,
            cni,
        } => install(&prefix, destdir.as_deref(), cni),
        Cmd::Tools => {
            tools::print();
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {what}` needs root (network namespaces, eBPF, cgroups); run it as root, e.g. `sudo -E cargo xtask {what}`"
        );
    }
    Ok(())
}

/// cargo's target directory: `$CARGO_TARGET_DIR` or `target/`.
fn target_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    if target.is_relative() {
        workspace_root().join(target)
    } else {
        target
    }
}

fn profile_dir(release: bool) -> PathBuf {
    target_dir().join(if release { "release" } else { "debug" })
}

/// `cargo build -p netpath` (netpath and netpath-cni); returns netpath's path.
fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "netpath"]);
    if release {
        cmd.arg("--release");
    }
    status_ok(&mut cmd).context("building netpath")?;
    let bin = profile_dir(release).join("netpath");
    if !bin.exists() {
        bail!("cargo build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

fn run(release: bool, args: &[String]) -> Result<ExitCode> {
    let bin = build(release)?;
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else if util::in_path("sudo") {
        eprintln!("xtask: not root, re-running through sudo -E");
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&bin);
        c
    } else {
        bail!("netpath needs root and sudo is not installed: run `cargo xtask run` as root");
    };
    let status = cmd
        .args(args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(exit_code(status))
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}

fn test(release: bool, no_unit: bool, no_lint: bool, args: &[String]) -> Result<ExitCode> {
    tools::preflight(Task::Test)?;
    require_root("test")?;
    // A lint failure is reported with the test results, not instead of them.
    let mut results = if no_lint { Vec::new() } else { lint::clippy() };
    let bin = build(release)?;

    if !no_unit {
        println!("xtask: unit tests (cargo test -p netpath -p xtask)");
        let mut cmd = cargo();
        cmd.args(["test", "-p", "netpath", "-p", "xtask"]);
        if release {
            cmd.arg("--release");
        }
        results.push(("unit (netpath, xtask)", status_ok(&mut cmd).is_ok()));
    }

    println!(
        "xtask: end-to-end tests (cargo test -p netpath-tests), NETPATH_BIN={}",
        bin.display()
    );
    let mut cmd = cargo();
    cmd.args(["test", "-p", "netpath-tests"]);
    if release {
        cmd.arg("--release");
    }
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    cmd.env("NETPATH_BIN", &bin);
    results.push(("end-to-end (netpath-tests)", status_ok(&mut cmd).is_ok()));

    Ok(summary("test", &results))
}

/// `$NETPATH_BIN`, a netpath built elsewhere (no build here), or the build.
fn netpath_bin_or_build(release: bool) -> Result<PathBuf> {
    match std::env::var_os("NETPATH_BIN") {
        Some(p) => Ok(PathBuf::from(p)),
        None => build(release),
    }
}

/// `cargo xtask install`: the release build (or `$NETPATH_BIN`), installed
/// by itself (`netpath install`).
fn install(prefix: &Path, destdir: Option<&Path>, cni: bool) -> Result<ExitCode> {
    let bin = netpath_bin_or_build(true)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("install").arg("--prefix").arg(prefix);
    if let Some(destdir) = destdir {
        cmd.arg("--destdir").arg(destdir);
    }
    if cni {
        cmd.arg("--cni");
    }
    status_ok(&mut cmd)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints each step's outcome; failure if any step failed.
fn summary(task: &str, results: &[(&str, bool)]) -> ExitCode {
    println!();
    for (name, ok) in results {
        println!(
            "xtask {task}: {name}: {}",
            if *ok { "ok" } else { "FAILED" }
        );
    }
    if results.iter().all(|(_, ok)| *ok) {
        println!("xtask {task}: all passed");
        ExitCode::SUCCESS
    } else {
        println!("xtask {task}: FAILED");
        ExitCode::FAILURE
    }
}
