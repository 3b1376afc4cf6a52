//! Static builds of netpath and the test binaries for the VM.
//!
//! `+crt-static` on the gnu target gives static-pie binaries that need no
//! libraries in the image. `--target` is explicit so the flag reaches only
//! target code, not build scripts or proc macros (which cannot be static),
//! and the separate target dir keeps normal builds from being invalidated.

use std::{
    env,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Test binaries (tests/tests/NAME.rs) that run only on this machine, not in
/// the VMs: they need tools the VM's userland does not have (systemd-analyze,
/// prometheus, promtool, the container runtimes).
const HOST_ONLY_TESTS: &[&str] = &["install", "prometheus", "runtimes"];

pub struct TestBinary {
    /// Unique, file-name safe: `<kind>-<target>`, e.g. `test-e2e`.
    pub name: String,
    pub path: PathBuf,
}

pub struct Artifacts {
    /// netpath and the CNI plugin netpath-cni, for /usr/bin.
    pub binaries: Vec<PathBuf>,
    pub tests: Vec<TestBinary>,
}

/// Runs cargo with the static flags and returns the artifacts it reports.
fn cargo_json(workspace: &Path, args: &[&str]) -> Result<Vec<Value>> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args)
        .args([
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--target-dir")
        .arg(workspace.join("target/vm"))
        .current_dir(workspace)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        // No debug info: smaller images and faster links; backtraces still
        // name functions.
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_PROFILE_TEST_DEBUG", "0")
        .stdout(Stdio::piped());
    println!("vm-test: cargo {} (static, target/vm)", args.join(" "));
    let mut child = cmd.spawn().context("running cargo")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut artifacts = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let v: Value = match serde_json::from_str(&line?) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if v["reason"] == "compiler-artifact" && !v["executable"].is_null() {
            artifacts.push(v);
        }
    }
    if !child.wait()?.success() {
        bail!("cargo {} failed (static build for the VM)", args.join(" "));
    }
    Ok(artifacts)
}

pub fn build(workspace: &Path) -> Result<Artifacts> {
    let built_bins = cargo_json(
        workspace,
        &[
            "build",
            "-p",
            "netpath",
            "--bin",
            "netpath",
            "--bin",
            "netpath-cni",
        ],
    )?;
    let binaries: Vec<PathBuf> = built_bins
        .iter()
        .filter_map(|a| a["executable"].as_str())
        .map(PathBuf::from)
        .collect();
    if binaries.len() != 2 {
        bail!("cargo built {binaries:?}, not netpath and netpath-cni");
    }
    let mut tests = Vec::new();
    let built = cargo_json(
        workspace,
        &["test", "--no-run", "-p", "netpath-tests", "-p", "netpath"],
    )?;
    for a in built.iter().filter(|a| a["profile"]["test"] == true) {
        let target = a["target"]["name"].as_str().unwrap_or("unknown");
        let kind = a["target"]["kind"][0].as_str().unwrap_or("unknown");
        if kind == "test" && HOST_ONLY_TESTS.contains(&target) {
            continue;
        }
        let path = a["executable"].as_str().context("test artifact path")?;
        let mut name: String = format!("{kind}-{target}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        while tests.iter().any(|t: &TestBinary| t.name == name) {
            name.push('_');
        }
        tests.push(TestBinary {
            name,
            path: path.into(),
        });
    }
    Ok(Artifacts { binaries, tests })
}
