//! `cargo xtask clippy`: clippy on the host workspace and on netpath-ebpf for
//! the bpf target, both with `-D warnings`.
//!
//! On the host netpath-ebpf is an empty `main` (the datapath is
//! `cfg(target_arch = "bpf")`), so `cargo clippy --workspace` never sees the
//! eBPF code. The second run lints it as netpath/build.rs builds it: the
//! nightly toolchain, `-Z build-std=core`, `--release`,
//! `--cfg bpf_target_arch="<host arch>"`; in a target directory of its own,
//! so it neither invalidates nor waits for the normal builds.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{cargo, describe, status_ok, workspace_root};

const NIGHTLY: &str = "nightly";

/// The bpf target of this host's byte order, as netpath/build.rs picks it.
const BPF_TARGET: &str = if cfg!(target_endian = "big") {
    "bpfeb-unknown-none"
} else {
    "bpfel-unknown-none"
};

/// Runs both lints (the second also when the first fails, so one run shows
/// everything); each step's name and whether it passed.
pub fn clippy() -> Vec<(&'static str, bool)> {
    let mut results = Vec::new();
    for (name, lint) in [
        ("clippy (host workspace)", host as fn() -> Result<()>),
        ("clippy (netpath-ebpf, bpf target)", bpf),
    ] {
        println!("xtask: {name}");
        let ok = lint()
            .inspect_err(|e| eprintln!("xtask: {name}: {e:#}"))
            .is_ok();
        results.push((name, ok));
    }
    results
}

fn host() -> Result<()> {
    status_ok(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

fn bpf() -> Result<()> {
    ensure_nightly_components(&["clippy", "rust-src"])?;
    let mut cmd = bpf_command();
    println!("xtask: {}", describe_with_env(&cmd));
    status_ok(&mut cmd)
}

/// `rustup run nightly cargo clippy` for netpath-ebpf on the bpf target,
/// with netpath/build.rs's flags (see the module doc).
fn bpf_command() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", NIGHTLY, "cargo", "clippy"])
        .args(["--package", "netpath-ebpf", "--bins", "--release"])
        .args(["--target", BPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir())
        .args(["--", "-D", "warnings"])
        .current_dir(workspace_root())
        // netpath/build.rs passes the arch the programs are built for (the
        // host's: it picks the pt_regs layout); aya-ebpf's build script would
        // derive the same, but the flag keeps this run identical to the build.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        )
        // The outer (stable) cargo's compiler settings must not leak into
        // the nightly run; netpath/build.rs removes the same.
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd
}

/// `target/bpf-clippy` (under `$CARGO_TARGET_DIR` when set).
fn target_dir() -> PathBuf {
    crate::target_dir().join("bpf-clippy")
}

fn describe_with_env(cmd: &Command) -> String {
    let env: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}='{}'", k.to_str()?, v?.to_str()?)))
        .collect();
    format!("{} {}", env.join(" "), describe(cmd))
}

/// A fresh machine's nightly may lack them; netpath/build.rs adds rust-src
/// the same way.
fn ensure_nightly_components(wanted: &[&str]) -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", NIGHTLY, "--installed"])
        .output()
        .context("running rustup (install it from rustup.rs)")?;
    if !out.status.success() {
        bail!(
            "no {NIGHTLY} toolchain: run `rustup toolchain install {NIGHTLY} --component clippy,rust-src`"
        );
    }
    let installed = String::from_utf8_lossy(&out.stdout);
    // Listed as `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l == *c || l.starts_with(&format!("{c}-")))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "xtask: adding {} to the {NIGHTLY} toolchain",
        missing.join(", ")
    );
    status_ok(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", NIGHTLY])
            .args(&missing),
    )
}
