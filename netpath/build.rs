//! Builds the eBPF object (netpath-ebpf, for the bpf target, with the nightly
//! toolchain and bpf-linker) and leaves it in OUT_DIR for `include_bytes!`.
//!
//! A fresh machine has neither the nightly's rust-src nor bpf-linker; both are
//! set up here so `cargo build` is the only step, and a step that cannot be done
//! fails the build with what to do about it.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../netpath-ebpf");
    let common_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../netpath-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let root_dir = ebpf_dir
        .to_str()
        .context("the netpath-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "netpath-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs (netpath-ebpf) failed; the lines above say why")
}

fn rustup(args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(args);
    cmd
}

/// `-Z build-std=core` needs the nightly's library sources.
fn ensure_rust_src() -> Result<()> {
    let out = rustup(&["run", NIGHTLY, "rustc", "--print", "sysroot"])
        .output()
        .context("rustup is needed to build the eBPF programs: install it from rustup.rs")?;
    if !out.status.success() {
        bail!(
            "no {NIGHTLY} toolchain: run `rustup toolchain install {NIGHTLY} --component rust-src`"
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    println!("cargo:warning=adding rust-src to the {NIGHTLY} toolchain");
    let status = rustup(&["component", "add", "rust-src", "--toolchain", NIGHTLY])
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("`rustup component add rust-src --toolchain {NIGHTLY}` failed: run it by hand");
    }
    Ok(())
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// aya-build's nested cargo finds bpf-linker through PATH, which does not always
/// hold cargo's bin directory (where it is installed).
fn add_to_path(dir: &Path) -> Result<()> {
    let mut paths: Vec<PathBuf> =
        env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect();
    if !paths.iter().any(|p| p == dir) {
        paths.insert(0, dir.to_path_buf());
        let joined = env::join_paths(paths)?;
        // SAFETY: build scripts are single-threaded here; nothing reads the
        // environment concurrently.
        unsafe { env::set_var("PATH", joined) };
    }
    Ok(())
}

/// bpf-linker has no prebuilt download here: build it against the nightly's own
/// libLLVM, which it keeps an rpath to (so the symlink directory must stay).
fn ensure_bpf_linker() -> Result<()> {
    let cargo_home = cargo_home()?;
    let installed = cargo_home.join("bin/bpf-linker");
    add_to_path(&cargo_home.join("bin"))?;
    if find_in_path("bpf-linker").is_some() {
        println!("cargo:rerun-if-changed={}", installed.display());
        return Ok(());
    }
    let out = rustup(&["run", NIGHTLY, "rustc", "--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let libllvm = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.ends_with("-nightly"))
        })
        .context("the nightly toolchain has no libLLVM.so.*-nightly to build bpf-linker against")?;
    let prefix = cargo_home.join("bpf-linker-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in [
        PathBuf::from("libLLVM.so"),
        PathBuf::from(libllvm.file_name().context("libLLVM name")?),
    ] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!(
        "cargo:warning=building bpf-linker {BPF_LINKER_VERSION} against {} (once, about two minutes)",
        libllvm.display()
    );
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
            "--root",
        ])
        .arg(&cargo_home)
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!(
            "building bpf-linker failed; run by hand: LLVM_PREFIX={} cargo install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features llvm-22",
            prefix.display()
        );
    }
    Ok(())
}
