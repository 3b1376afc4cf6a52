//! Command line: parsing, the mount-namespace fix-up, the runtime, and the
//! dispatch to one module per command (or command group), each of which
//! runs its command and prints the result. `args` holds what clap parses,
//! `output` the JSON/text choice and the table printer.
mod args;
mod container;
mod down;
mod exec;
mod flows;
mod install;
mod network;
mod output;
mod publish;
mod stats;
mod status;
mod top;
mod up;

use std::{process::ExitCode, time::Duration};

use clap::Parser;

use self::{
    args::{Cli, Command, ContainerCommand, NetworkCommand, PublishCommand},
    output::Output,
};
use crate::{
    container::ContainerError,
    directories::{BadInstanceName, Instance},
    lifecycle::{self, InstanceError},
    netns::{self, NetnsError},
    publish::PublishError,
    state::StateError,
    tables::TablesError,
    watch::WatchError,
};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("invalid {what} {value:?}: {hint}")]
    BadInput {
        what: &'static str,
        value: String,
        hint: String,
    },
    #[error(transparent)]
    InstanceName(#[from] BadInstanceName),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot write JSON output: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error(transparent)]
    Tables(#[from] TablesError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("cannot install {}: {source}", path.display())]
    Install {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// `status` found something wrong (printed after the status itself).
    #[error("instance {instance} is unhealthy: {problems}")]
    Unhealthy { instance: String, problems: String },
    #[error("terminal: {0}")]
    Terminal(std::io::Error),
}

type Result<T> = std::result::Result<T, CliError>;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

impl Command {
    /// Everything but reading the state changes namespaces, links or /run
    /// (`status` reads bpffs and asks the kernel about the programs).
    fn needs_root(&self) -> bool {
        !matches!(
            self,
            Command::Install(_)
                | Command::Container(ContainerCommand::Ls)
                | Command::Publish(PublishCommand::Ls)
                | Command::Network(NetworkCommand::Ls)
        )
    }
}

fn run(cli: Cli) -> Result<()> {
    let instance = &Instance::new(&cli.instance)?;
    if cli.command.needs_root() {
        lifecycle::check_root()?;
    }
    let out = Output { json: cli.json };
    match cli.command {
        Command::Up(args) => up::run(instance, args, out),
        Command::Down { time } => down::run(instance, Duration::from_secs(time), out),
        Command::Container(command) => container::run(instance, command, out),
        Command::Exec(args) => exec::run(instance, args),
        Command::Status => status::run(instance, out),
        Command::Publish(command) => publish::run(instance, command, out),
        Command::Network(command) => network::run(instance, command, out),
        Command::Flows(args) => flows::run(instance, args, out),
        Command::Stats => stats::run(instance, out),
        Command::Install(args) => install::run(&args, out),
        Command::Top(args) => top::run(instance, args, out),
    }
}

/// Exit status for errors of our own (bad input, failures).
const EXIT_FAILURE: u8 = 1;
/// Exit status when clap rejects the command line.
const EXIT_USAGE: u8 = 2;
/// Exit status when `exec` cannot start the command (as a shell does).
const EXIT_EXEC_FAILED: u8 = 127;

/// The agent (`up`) logs with timestamps at `--log-level` (RUST_LOG when the
/// flag is absent, else info); other commands only warn, as before.
fn init_logging(command: &Command) {
    let env = env_logger::Env::default();
    let mut builder = match command {
        Command::Up(args) => {
            let mut builder = env_logger::Builder::from_env(env.default_filter_or("info"));
            if let Some(level) = args.log_level {
                builder.filter_level(level.into());
            }
            builder.format_timestamp_millis();
            builder
        }
        _ => env_logger::Builder::from_env(env.default_filter_or("warn")),
    };
    builder.init();
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other error.
            let text = e.to_string();
            let line = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("{line}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Must come before any thread or runtime exists: see its doc comment.
    if let Err(e) = netns::join_outer_mount_namespace_if_private() {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    init_logging(&cli.command);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                CliError::Container(ContainerError::Exec { .. }) => {
                    ExitCode::from(EXIT_EXEC_FAILED)
                }
                _ => ExitCode::from(EXIT_FAILURE),
            }
        }
    }
}
