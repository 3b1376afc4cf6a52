//! Builds the eBPF object (netpath-ebpf, for the bpf target, with the nightly
//! toolchain and bpf-linker) and leaves it in OUT_DIR for `include_bytes!`.
//!
//! A fresh machine has neither the nightly's rust-src nor bpf-linker; both are
//! set up here so `cargo build` is the only step, and a step that cannot be done
//! fails the build with what to do about it.
//!
//! The nested `cargo build` is ours rather than aya-build's (whose flags it
//! keeps): aya-build forwards every line the nested cargo prints as a
//! `cargo:warning`, about fifty on each build; we show only what
//! `nested_cargo_output` keeps.
use std::{
    env,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

#[path = "build/nested_cargo_output.rs"]
mod nested_cargo_output;

use nested_cargo_output::Message;

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const EBPF_PACKAGE: &str = "netpath-ebpf";

fn main() -> Result<()> {
    embed_git_commit();
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../netpath-ebpf");
    let common_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../netpath-common");
    // The build-dependency on netpath-ebpf reruns us when its library side
    // changes; the programs are its binary, so watch its sources too.
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-changed={}", common_dir.display());
    build_ebpf()
        .context("building the eBPF programs (netpath-ebpf) failed; the lines above say why")
}

/// `NETPATH_GIT_COMMIT` for `netpath --version`: the commit of the checkout
/// being built, "unknown" outside a git checkout (a source tarball).
fn embed_git_commit() {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    println!(
        "cargo:rustc-env=NETPATH_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    // Rebuilt when HEAD moves: a checkout (HEAD) or a commit (the branch's
    // ref, loose or packed; in a worktree HEAD is its own, refs are shared).
    if let (Some(git_dir), Some(common_dir)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={common_dir}/packed-refs");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={common_dir}/{branch}");
        }
    }
}

/// `rustup run nightly cargo build` of netpath-ebpf for the bpf target, as
/// aya-build 0.2 runs it, then copies each binary to `OUT_DIR/<target name>`.
fn build_ebpf() -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => "bpfel-unknown-none",
        Ok("big") => "bpfeb-unknown-none",
        other => bail!("unsupported target endianness {other:?}"),
    };
    // The programs read pt_regs laid out for the arch they will run on.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let mut cmd = rustup(&["run", NIGHTLY, "cargo", "build"]);
    cmd.args(["--package", EBPF_PACKAGE, "--bins", "--release"])
        .args(["--message-format=json", "--target", target])
        .args(["-Z", "build-std=core"])
        // Apart from OUT_DIR's copies: cargo locks its target directory,
        // and the outer cargo holds ours.
        .arg("--target-dir")
        .arg(out_dir.join("ebpf-target"))
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                format!("--cfg=bpf_target_arch=\"{arch}\""),
                "-Cdebuginfo=2".to_owned(),
                "-Clink-arg=--btf".to_owned(),
            ]
            .join("\x1f"),
        )
        // The outer (stable) cargo's compiler must not stand in for the nightly.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        // Plain lines: they end up in cargo's own output, not on a terminal.
        .env("CARGO_TERM_COLOR", "never")
        .env("CARGO_TERM_PROGRESS_WHEN", "never")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let stderr = BufReader::new(child.stderr.take().context("no stderr pipe")?);
    let stderr = std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect());
    let stdout = BufReader::new(child.stdout.take().context("no stdout pipe")?);
    let messages: Vec<Message> = stdout
        .lines()
        .map_while(Result::ok)
        .map(|line| nested_cargo_output::parse_message(&line))
        .collect();
    let status = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    let stderr: Vec<String> = stderr.join().unwrap_or_default();

    let shown = nested_cargo_output::lines_to_show(status.success(), &messages, &stderr);
    if !status.success() {
        // A failing build script's stderr is what cargo shows of it.
        for line in shown {
            eprintln!("{line}");
        }
        bail!("`cargo build --package {EBPF_PACKAGE}` for {target} failed ({status})");
    }
    for line in shown {
        println!("cargo:warning={line}");
    }
    for message in messages {
        if let Message::Executable { target, path } = message {
            let copy = out_dir.join(&target);
            std::fs::copy(&path, &copy)
                .with_context(|| format!("cannot copy {} to {}", path.display(), copy.display()))?;
        }
    }
    Ok(())
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

/// The nested cargo finds bpf-linker through PATH, which does not always
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
