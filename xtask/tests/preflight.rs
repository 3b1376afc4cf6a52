//! The preflight of `cargo xtask test`, run as the real xtask binary with a
//! PATH that lacks one of its tools and with installing turned off.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Output},
};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn xtask(args: &[&str]) -> Command {
    let mut cmd = Command::new(XTASK);
    cmd.args(args);
    cmd
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("xtask-preflight-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).expect("creating a temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The commands `cargo xtask tools` lists for `task`.
fn tools_of(task: &str) -> Vec<String> {
    let out = xtask(&["tools"]).output().expect("running xtask tools");
    assert!(out.status.success(), "xtask tools: {out:?}");
    stdout_of(&out)
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let tasks = cols.get(2)?;
            tasks
                .split(',')
                .any(|t| t == task)
                .then(|| cols[0].to_owned())
        })
        .collect()
}

#[test]
fn test_stops_at_once_with_one_line_naming_the_missing_command_and_its_package() {
    let tools = tools_of("test");
    for expected in ["ping", "promtool", "prometheus", "systemd-analyze", "ip"] {
        assert!(
            tools.iter().any(|t| t == expected),
            "{expected} in {tools:?}"
        );
    }
    // Every tool of the task but ping, as a stand-in that does nothing.
    let bin = TempDir::new();
    for tool in tools.iter().filter(|t| *t != "ping") {
        std::os::unix::fs::symlink("/bin/true", bin.0.join(tool)).expect("symlink");
    }
    let out = xtask(&["test", "--no-lint"])
        .env("PATH", &bin.0)
        .env("NETPATH_NO_INSTALL", "1")
        .output()
        .expect("running xtask test");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "xtask: error: cargo xtask test: missing commands ping (Debian/Ubuntu packages \
         iputils-ping); not installing them because NETPATH_NO_INSTALL is set\n"
    );
    assert_eq!(stdout_of(&out), "", "nothing started");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn with_every_tool_present_the_preflight_lets_the_task_go_on() {
    // vm-test's next step names an unknown kernel: proof the preflight passed.
    let bin = TempDir::new();
    for tool in tools_of("vm-test") {
        std::os::unix::fs::symlink("/bin/true", bin.0.join(tool)).expect("symlink");
    }
    let out = xtask(&["vm-test", "--kernel", "0.1"])
        .env("PATH", &bin.0)
        .env("NETPATH_NO_INSTALL", "1")
        .output()
        .expect("running xtask vm-test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("xtask: error: unknown kernel \"0.1\""),
        "{stderr}"
    );
}
