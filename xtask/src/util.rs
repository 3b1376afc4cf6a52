use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `cargo` (the one running us, if any) in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio; error unless it exits 0.
pub fn status_ok(cmd: &mut Command) -> Result<()> {
    let what = describe(cmd);
    let status = cmd.status().with_context(|| format!("spawning `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed: {status}");
    }
    Ok(())
}

/// Runs `cmd`, capturing stdout; error with stderr unless it exits 0.
pub fn output_ok(cmd: &mut Command) -> Result<String> {
    let what = describe(cmd);
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("spawning `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// 4 base36 characters from the pid and the clock.
pub fn short_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) ^ d.as_secs())
        .unwrap_or(0);
    let mut v =
        (u64::from(std::process::id()) << 32 ^ nanos).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20;
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..4)
        .map(|_| {
            let c = DIGITS[(v % 36) as usize] as char;
            v /= 36;
            c
        })
        .collect()
}
