//! `netpath install [--prefix P] [--destdir D]`: this binary, the systemd
//! unit, shell completions and man pages, where a distribution package would
//! put them under P (`/usr/local` by default). D is prepended to every path
//! written (a staging directory for packaging) but not to the paths the
//! files name: the unit runs `P/bin/netpath`. `--cni` adds the CNI plugin
//! (`/opt/cni/bin/netpath-cni`) and an example conflist.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::{
    CliError, Result,
    args::{Cli, InstallArgs},
    output::Output,
};

/// The unit, with `@BINDIR@` where the binary's directory goes.
const UNIT: &str = include_str!("../../../deploy/netpath@.service");
const UNIT_NAME: &str = "netpath@.service";
/// The example network configuration for CNI runtimes.
const CONFLIST: &str = include_str!("../../../deploy/cni/netpath.conflist");
/// The CNI plugin's binary, built next to `netpath`; also the `type` the
/// conflist names.
const CNI_PLUGIN: &str = "netpath-cni";

pub(super) fn run(args: &InstallArgs, out: Output) -> Result<()> {
    let prefix = &args.prefix;
    if !prefix.is_absolute() {
        return Err(CliError::BadInput {
            what: "--prefix",
            value: prefix.display().to_string(),
            hint: "use an absolute path such as /usr/local".to_owned(),
        });
    }
    let staged = |path: PathBuf| match &args.destdir {
        Some(destdir) => destdir.join(path.strip_prefix("/").unwrap_or(&path)),
        None => path,
    };
    let bin_dir = prefix.join("bin");
    let share = prefix.join("share");
    let mut installed = Vec::new();
    let mut put = |path: PathBuf, content: &[u8], mode: u32| -> Result<()> {
        let path = staged(path);
        write_file(&path, content, mode)?;
        installed.push(path);
        Ok(())
    };

    let exe = std::env::current_exe().map_err(|e| install_error(Path::new("netpath"), e))?;
    let binary = fs::read(&exe).map_err(|e| install_error(&exe, e))?;
    put(bin_dir.join("netpath"), &binary, 0o755)?;

    if args.cni {
        if !args.cni_bin_dir.is_absolute() {
            return Err(CliError::BadInput {
                what: "--cni-bin-dir",
                value: args.cni_bin_dir.display().to_string(),
                hint: "use an absolute path such as /opt/cni/bin".to_owned(),
            });
        }
        let plugin_path = exe.with_file_name(CNI_PLUGIN);
        let plugin = fs::read(&plugin_path).map_err(|e| install_error(&plugin_path, e))?;
        put(args.cni_bin_dir.join(CNI_PLUGIN), &plugin, 0o755)?;
        let conflist = share.join("netpath/cni/netpath.conflist");
        put(conflist, CONFLIST.as_bytes(), 0o644)?;
    }

    let unit = UNIT.replace("@BINDIR@", &bin_dir.display().to_string());
    let unit_path = prefix.join("lib/systemd/system").join(UNIT_NAME);
    put(unit_path, unit.as_bytes(), 0o644)?;

    for (shell, path) in [
        (Shell::Bash, "bash-completion/completions/netpath"),
        (Shell::Zsh, "zsh/site-functions/_netpath"),
        (Shell::Fish, "fish/vendor_completions.d/netpath.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "netpath", &mut script);
        put(share.join(path), &script, 0o644)?;
    }

    // One page per command: netpath.1, netpath-up.1, netpath-container-add.1, ...
    let man_dir = share.join("man/man1");
    for (file_name, page) in man_pages(Cli::command()) {
        put(man_dir.join(file_name), &page, 0o644)?;
    }

    out.show(&installed, |paths| {
        for path in paths {
            println!("installed {}", path.display());
        }
        println!(
            "run an instance as a service: systemctl enable --now netpath@default (up's flags: \
             NETPATH_UP_ARGS in /etc/netpath/default.env)"
        );
        if args.cni {
            println!(
                "CNI: copy share/netpath/cni/netpath.conflist into your runtime's CNI config \
                 directory (e.g. /etc/cni/net.d) once `netpath up` runs"
            );
        }
    })
}

/// The man page of `cmd` and of each of its subcommands (`netpath-up.1`,
/// `netpath-container-add.1`, ...), as file name and page, rendered as
/// `clap_mangen::generate_to` renders them, into memory.
fn man_pages(cmd: clap::Command) -> Vec<(String, Vec<u8>)> {
    fn collect(cmd: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            collect(sub, pages);
        }
        let man = clap_mangen::Man::new(cmd.clone());
        let mut page = Vec::new();
        // Rendering into memory cannot fail.
        let _ = man.render(&mut page);
        pages.push((man.get_filename(), page));
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect(&cmd, &mut pages);
    pages
}

/// Writes `path` whole or not at all: a temporary file renamed over it, so
/// an installed binary that is running (the service's) is replaced, not
/// rewritten in place (which fails with "text file busy").
fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|e| install_error(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let written = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(content)?;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        install_error(path, e)
    })
}

fn install_error(path: &Path, source: std::io::Error) -> CliError {
    CliError::Install {
        path: path.to_owned(),
        source,
    }
}
