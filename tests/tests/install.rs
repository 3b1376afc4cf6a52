//! `netpath install` into a staging directory (nothing is written outside
//! it), the installed unit checked by `systemd-analyze verify`, and
//! `netpath --version`. Host only (xtask's HOST_ONLY_TESTS): the VMs have
//! neither systemd-analyze nor git.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use netpath_tests::{netpath_bin, run, unique_name};

/// A directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("inst-"));
        fs::create_dir_all(&dir).expect("creating a temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze verify UNIT` with man pages looked up in `man_dir`
/// (its Documentation= lines must name pages that exist).
fn verify(unit: &Path, man_dir: &Path) -> netpath_tests::CmdOutput {
    run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .env("MANPATH", man_dir))
}

#[test]
fn install_into_a_destdir_puts_binary_unit_completions_and_man_pages_and_the_unit_verifies() {
    let destdir = TempDir::new();
    let install = || {
        run(Command::new(netpath_bin())
            .args(["--json", "install", "--prefix", "/usr", "--destdir"])
            .arg(&destdir.0))
    };
    let out = install();
    out.expect_ok("netpath install");
    let root = destdir.0.join("usr");
    let listed: Vec<PathBuf> = out
        .json()
        .as_array()
        .expect("a list of installed files")
        .iter()
        .map(|p| PathBuf::from(p.as_str().expect("a path")))
        .collect();
    for file in [
        "bin/netpath",
        "lib/systemd/system/netpath@.service",
        "share/bash-completion/completions/netpath",
        "share/zsh/site-functions/_netpath",
        "share/fish/vendor_completions.d/netpath.fish",
        "share/man/man1/netpath.1",
        "share/man/man1/netpath-up.1",
        "share/man/man1/netpath-container-add.1",
    ] {
        assert!(listed.contains(&root.join(file)), "{file} in {listed:?}");
    }
    for path in &listed {
        assert!(
            path.starts_with(&destdir.0),
            "{} outside DESTDIR",
            path.display()
        );
        assert!(path.is_file(), "{} was installed", path.display());
    }

    let binary = root.join("bin/netpath");
    assert_eq!(
        fs::read(&binary).expect("installed binary"),
        fs::read(netpath_bin()).expect("built binary"),
        "the installed binary is this netpath"
    );
    let mode = fs::metadata(&binary).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o755);

    let unit_path = root.join("lib/systemd/system/netpath@.service");
    let unit = read(&unit_path);
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/netpath --instance %i up $NETPATH_UP_ARGS"),
        "the unit runs PREFIX/bin/netpath up in the foreground:\n{unit}"
    );
    assert!(unit.lines().any(|l| l == "Restart=on-failure"), "{unit}");
    assert!(
        unit.lines()
            .any(|l| l == "EnvironmentFile=-/etc/netpath/%i.env"),
        "{unit}"
    );
    assert!(
        !unit
            .lines()
            .any(|l| l.starts_with("ExecStop") || (l.starts_with("Exec") && l.contains(" down"))),
        "stopping the unit never removes the datapath:\n{unit}"
    );

    assert!(read(&root.join("share/zsh/site-functions/_netpath")).starts_with("#compdef netpath"));
    let fish = read(&root.join("share/fish/vendor_completions.d/netpath.fish"));
    assert!(
        fish.contains("complete -c netpath") && fish.contains("container"),
        "{fish}"
    );
    let bash = read(&root.join("share/bash-completion/completions/netpath"));
    assert!(bash.contains("complete -F _netpath"), "{bash}");
    assert!(read(&root.join("share/man/man1/netpath-up.1")).contains("uplink"));

    // systemd-analyze verify needs ExecStart's binary to exist: a copy of
    // the unit naming the staged one. Its man pages are the staged ones.
    let man_dir = root.join("share/man");
    let check_dir = destdir.0.join("verify");
    fs::create_dir_all(&check_dir).expect("mkdir");
    let check_unit = check_dir.join("netpath@.service");
    let staged = binary.display().to_string();
    fs::write(&check_unit, unit.replace("/usr/bin/netpath", &staged)).expect("write");
    let verified = verify(&check_unit, &man_dir);
    verified.expect_ok("systemd-analyze verify");
    assert_eq!(verified.stderr, "", "no warnings: {verified}");
    // ... and it does object to what is wrong: a binary that is not there.
    fs::write(
        &check_unit,
        unit.replace("/usr/bin/netpath", "/nonexistent/netpath"),
    )
    .expect("write");
    let broken = verify(&check_unit, &man_dir);
    broken.expect_fail("systemd-analyze verify of a unit without its binary");
    assert!(broken.stderr.contains("is not executable"), "{broken}");

    // Installing again replaces everything (a running binary too: by rename).
    install().expect_ok("netpath install, again");
}

#[test]
fn install_refuses_a_relative_prefix_in_one_line() {
    let out = run(Command::new(netpath_bin()).args(["install", "--prefix", "usr"]));
    out.expect_fail("install --prefix usr");
    assert_eq!(
        out.stderr,
        "error: invalid --prefix \"usr\": use an absolute path such as /usr/local\n"
    );
}

#[test]
fn version_names_the_release_the_commit_and_the_map_layout() {
    let git = run(Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    let commit = if git.success() {
        git.stdout_trim().to_owned()
    } else {
        "unknown".to_owned()
    };
    let out = run(Command::new(netpath_bin()).arg("--version"));
    out.expect_ok("netpath --version");
    assert_eq!(
        out.stdout,
        format!(
            "netpath {} (commit {commit}, map layout {})\n",
            env!("CARGO_PKG_VERSION"),
            netpath_common::LAYOUT_VERSION
        )
    );
}

#[test]
fn install_cni_puts_the_plugin_and_an_example_conflist() {
    let destdir = TempDir::new();
    let out = run(Command::new(netpath_bin())
        .args([
            "--json",
            "install",
            "--prefix",
            "/usr",
            "--cni",
            "--destdir",
        ])
        .arg(&destdir.0));
    out.expect_ok("netpath install --cni");
    let plugin = destdir.0.join("opt/cni/bin/netpath-cni");
    assert_eq!(
        fs::read(&plugin).expect("installed plugin"),
        fs::read(netpath_tests::netpath_cni_bin()).expect("built plugin"),
        "the installed plugin is the built one"
    );
    let mode = fs::metadata(&plugin).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let conflist = read(&destdir.0.join("usr/share/netpath/cni/netpath.conflist"));
    let conflist: serde_json::Value = serde_json::from_str(&conflist).expect("JSON");
    let netpath = &conflist["plugins"][0];
    assert_eq!(netpath["type"], "netpath-cni", "{conflist}");
    assert_eq!(netpath["capabilities"]["portMappings"], true, "{conflist}");
    assert_eq!(conflist["cniVersion"], "1.0.0", "{conflist}");
}
