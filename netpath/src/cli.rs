//! Command line: parsing, the mount-namespace fix-up, the runtime, output.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use netpath_common::Proto;

use crate::{
    agent::AgentOptions,
    config::{Accel, TimeoutSetting},
    container::{self, AddRequest, ContainerError, ContainerView},
    daemon::ReadyNotifier,
    directories::{BadInstanceName, Instance},
    flows::{self, FlowFilter},
    lifecycle::{self, InstanceError, StatusView, UpOptions},
    netns::{self, NetnsError},
    publish::{self, PublishError},
    state::{self, Mode, StateError},
    tables::{Tables, TablesError},
    watch::{self, WatchError},
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
    Tables(#[from] TablesError),
    #[error(transparent)]
    Watch(#[from] WatchError),
}

type Result<T> = std::result::Result<T, CliError>;

/// Docker-style bridge networking for containers, with NAT, conntrack and
/// forwarding in eBPF.
#[derive(Debug, Parser)]
#[command(name = "netpath", version)]
struct Cli {
    /// Instance to act on; everything of one netpath lives under its name.
    #[arg(
        long,
        global = true,
        env = "NETPATH_INSTANCE",
        default_value = "default"
    )]
    instance: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the bridge, load the datapath and run the agent.
    Up(UpArgs),
    /// Stop the agent and remove containers, bridge, pins and state.
    Down,
    /// Manage containers.
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Run a command in a container's network namespace.
    Exec(ExecArgs),
    /// Show the instance, its agent and its containers.
    Status,
    /// Publish container ports on the host (Docker's -p).
    #[command(subcommand)]
    Publish(PublishCommand),
    /// Show the conntrack table: one line per flow, with its counters.
    Flows(FlowsArgs),
    /// Show the datapath's verdict and drop counters.
    Stats,
}

#[derive(Debug, Subcommand)]
enum PublishCommand {
    /// Publish ports of a container: [hostIP:]hostPort[-end]:containerPort[-end][/tcp|udp].
    Add {
        name: String,
        #[arg(required = true)]
        specs: Vec<String>,
    },
    /// Unpublish: [hostIP:]hostPort[-end][/tcp|udp] (or a whole spec).
    Rm { spec: String },
    /// List published ports (read from the datapath's port map).
    Ls,
}

#[derive(Debug, Args)]
struct FlowsArgs {
    /// Only flows of this container.
    #[arg(long)]
    container: Option<String>,
    /// Only flows with this port on either side.
    #[arg(long)]
    port: Option<u16>,
    /// Only tcp, udp or icmp flows.
    #[arg(long, value_enum)]
    proto: Option<Proto>,
    /// Stream flow opened/closed events as they happen, until Ctrl-C. Events
    /// are consumed from one shared ring buffer: two watchers of one instance
    /// split the events between them.
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogLevelArg {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevelArg> for log::LevelFilter {
    fn from(arg: LogLevelArg) -> Self {
        match arg {
            LogLevelArg::Error => Self::Error,
            LogLevelArg::Warn => Self::Warn,
            LogLevelArg::Info => Self::Info,
            LogLevelArg::Debug => Self::Debug,
            LogLevelArg::Trace => Self::Trace,
        }
    }
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Uplink interface [default: the interface of the default route].
    #[arg(long, value_name = "IF")]
    uplink: Option<String>,
    /// Container subnet [default: 10.77.0.0/16]; the gateway is its first address.
    #[arg(long, value_name = "CIDR")]
    subnet: Option<String>,
    /// Bridge name [default: np0].
    #[arg(long, value_name = "NAME")]
    bridge: Option<String>,
    /// Where the uplink ingress translations run [default: tc].
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// cgroup v2 directory for the socket hooks [default: the cgroup2 mount].
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Run the agent in the background once the instance is up.
    #[arg(long)]
    detach: bool,
    /// Conntrack table size [default: scaled to the host's memory].
    #[arg(long, value_name = "N")]
    conntrack_size: Option<u32>,
    /// Port range masquerade and hairpin SNAT take ports from; reserved for
    /// netpath in the host netns [default: 40000-49999].
    #[arg(long, value_name = "MIN-MAX")]
    snat_ports: Option<String>,
    /// Conntrack timeout in seconds, repeatable: syn, established, fin,
    /// time_wait, close, unreplied (UDP/ICMP), replied (UDP/ICMP).
    #[arg(long = "ct-timeout", value_name = "NAME=SECS")]
    ct_timeouts: Vec<TimeoutSetting>,
    /// Agent log level, also for the datapath's own log records
    /// [default: info, or RUST_LOG when set].
    #[arg(long, value_enum, value_name = "LEVEL")]
    log_level: Option<LogLevelArg>,
    /// Serve Prometheus metrics on ADDR (GET /metrics), e.g. 127.0.0.1:9477.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum ContainerCommand {
    /// Create a container's network.
    Add(AddArgs),
    /// Remove a container's network.
    Rm { name: String },
    /// List containers.
    Ls,
}

#[derive(Debug, Args)]
struct AddArgs {
    /// 1 to 12 letters, digits, '-' or '_'.
    name: String,
    /// Address in the subnet [default: the lowest free one].
    #[arg(long, value_name = "ADDR")]
    ip: Option<String>,
    /// bridge, none, host or container:NAME.
    #[arg(long, default_value = "bridge", value_name = "MODE")]
    mode: String,
    /// Publish a port, as docker -p: [hostIP:]hostPort[-end]:containerPort[-end][/tcp|udp]; repeatable.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    publish: Vec<String>,
}

#[derive(Debug, Args)]
struct ExecArgs {
    name: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn parse_port_range(text: &str) -> Result<(u16, u16)> {
    let bad = || CliError::BadInput {
        what: "port range",
        value: text.to_owned(),
        hint: "use MIN-MAX with 1024 <= MIN <= MAX <= 65535, e.g. 40000-49999".to_owned(),
    };
    let (min, max) = text.split_once('-').ok_or_else(bad)?;
    let (min, max): (u16, u16) = (
        min.parse().map_err(|_| bad())?,
        max.parse().map_err(|_| bad())?,
    );
    if min < 1024 || min > max {
        return Err(bad());
    }
    Ok((min, max))
}

fn parse_subnet(text: &str) -> Result<Ipv4Net> {
    let bad = |hint: String| CliError::BadInput {
        what: "--subnet",
        value: text.to_owned(),
        hint,
    };
    let subnet: Ipv4Net = text
        .parse()
        .map_err(|_| bad("expected an IPv4 network such as 10.77.0.0/16".to_owned()))?;
    if subnet.trunc() != subnet {
        return Err(bad(format!(
            "host bits are set: did you mean {}?",
            subnet.trunc()
        )));
    }
    Ok(subnet)
}

fn parse_ip(text: &str) -> Result<Ipv4Addr> {
    text.parse().map_err(|_| CliError::BadInput {
        what: "--ip",
        value: text.to_owned(),
        hint: "expected an IPv4 address such as 10.77.0.10".to_owned(),
    })
}

fn parse_mode(text: &str) -> Result<Mode> {
    text.parse().map_err(|_| CliError::BadInput {
        what: "--mode",
        value: text.to_owned(),
        hint: "use bridge, none, host or container:NAME".to_owned(),
    })
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn dash<T: ToString>(value: &Option<T>) -> String {
    value.as_ref().map_or_else(|| "-".to_owned(), T::to_string)
}

fn print_containers(containers: &[ContainerView]) {
    println!(
        "{:<12}  {:<22}  {:<15}  {:<17}  VETH",
        "NAME", "MODE", "IP", "MAC"
    );
    for c in containers {
        println!(
            "{:<12}  {:<22}  {:<15}  {:<17}  {}",
            c.name,
            c.mode,
            dash(&c.ip),
            dash(&c.mac),
            dash(&c.host_veth)
        );
    }
}

fn print_flows(list: &[flows::FlowView]) {
    println!(
        "{:<5} {:<10} {:<44} {:<44} {:<12} {:>7} {:>7} {:>14} {:>14}",
        "PROTO",
        "KIND",
        "ORIGINAL",
        "TRANSLATED",
        "STATE",
        "AGE",
        "IDLE",
        "PKTS ORIG/REP",
        "BYTES ORIG/REP"
    );
    for f in list {
        println!(
            "{:<5} {:<10} {:<44} {:<44} {:<12} {:>6.0}s {:>6.0}s {:>14} {:>14}",
            f.proto,
            f.kind,
            f.original.to_string(),
            f.translated.to_string(),
            f.state,
            f.age_secs,
            f.idle_secs,
            format!("{}/{}", f.packets_original, f.packets_reply),
            format!("{}/{}", f.bytes_original, f.bytes_reply),
        );
    }
}

fn print_status(status: &StatusView) {
    let agent = match (status.agent_pid, status.agent_alive) {
        (Some(pid), true) => format!("running (pid {pid})"),
        (Some(pid), false) => format!("not running (stale pid {pid})"),
        (None, _) => "not running".to_owned(),
    };
    println!("instance:   {}", status.instance);
    println!("uplink:     {} ({})", status.uplink, status.host_ip);
    println!("bridge:     {} gateway {}", status.bridge, status.gateway);
    println!("subnet:     {}", status.subnet);
    println!("accel:      {}", status.accel);
    println!("cgroup:     {}", status.cgroup.display());
    println!("pins:       {}", status.pin_dir.display());
    println!("agent:      {agent}");
    println!("programs:");
    for a in &status.attachments {
        println!("  {:<18} {:<20} {}", a.program, a.hook, a.target);
    }
    println!("containers: {}", status.containers.len());
    if !status.containers.is_empty() {
        print_containers(&status.containers);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let instance = &Instance::new(&cli.instance)?;
    // Everything but reading the state changes namespaces, links or /run.
    if !matches!(
        cli.command,
        Command::Status
            | Command::Container(ContainerCommand::Ls)
            | Command::Publish(PublishCommand::Ls)
    ) {
        lifecycle::check_root()?;
    }
    match cli.command {
        Command::Up(args) => {
            let options = UpOptions {
                uplink: args.uplink,
                subnet: args.subnet.as_deref().map(parse_subnet).transpose()?,
                bridge: args.bridge,
                accel: args.accel,
                cgroup: args.cgroup,
                conntrack_size: args.conntrack_size,
                snat_ports: args
                    .snat_ports
                    .as_deref()
                    .map(parse_port_range)
                    .transpose()?,
                ct_timeouts: args.ct_timeouts,
                agent: AgentOptions {
                    metrics: args.metrics,
                },
            };
            if args.detach {
                let pid = lifecycle::up_detached(instance)?;
                let log = instance.log_file();
                if cli.json {
                    print_json(&serde_json::json!({
                        "instance": instance.name(),
                        "agent_pid": pid,
                        "log": log,
                    }))?;
                } else {
                    println!(
                        "instance {instance} up, agent pid {pid}, log {}",
                        log.display()
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let ready = ReadyNotifier::from_env();
            runtime()?.block_on(lifecycle::up(instance, &options, ready, cli.json))?;
        }
        Command::Down => {
            let removed = lifecycle::down(instance)?;
            if cli.json {
                print_json(
                    &serde_json::json!({ "instance": instance.name(), "removed": removed }),
                )?;
            } else if removed {
                println!("instance {instance} removed");
            } else {
                println!("instance {instance} was not up: nothing to remove");
            }
        }
        Command::Container(ContainerCommand::Add(args)) => {
            let request = AddRequest {
                mode: parse_mode(&args.mode)?,
                ip: args.ip.as_deref().map(parse_ip).transpose()?,
                name: args.name,
                publish: args.publish,
            };
            let added = runtime()?.block_on(container::add(instance, request))?;
            if cli.json {
                print_json(&added)?;
            } else {
                println!(
                    "container {} added ({}, ip {})",
                    added.name,
                    added.mode,
                    dash(&added.ip)
                );
            }
        }
        Command::Container(ContainerCommand::Rm { name }) => {
            container::remove(instance, &name)?;
            if cli.json {
                print_json(&serde_json::json!({ "removed": name }))?;
            } else {
                println!("container {name} removed");
            }
        }
        Command::Container(ContainerCommand::Ls) => {
            let containers = container::list(instance)?;
            if cli.json {
                print_json(&containers)?;
            } else {
                print_containers(&containers);
            }
        }
        Command::Exec(args) => {
            // Returns only when the command could not be started.
            match container::exec(instance, &args.name, &args.command)? {}
        }
        Command::Publish(PublishCommand::Add { name, specs }) => {
            let mut tables = Tables::open(instance)?;
            let mappings = publish::add(instance, &mut tables, &name, &specs)?;
            if cli.json {
                print_json(&publish::list(instance, &tables)?)?;
            } else {
                for m in mappings {
                    println!("published {} -> {name}:{}", m.host, m.container_port);
                }
            }
        }
        Command::Publish(PublishCommand::Rm { spec }) => {
            let removed = publish::remove(instance, &mut Tables::open(instance)?, &spec)?;
            if cli.json {
                print_json(&removed)?;
            } else {
                for host in removed {
                    println!("unpublished {host}");
                }
            }
        }
        Command::Publish(PublishCommand::Ls) => {
            let list = publish::list(instance, &Tables::open(instance)?)?;
            if cli.json {
                print_json(&list)?;
            } else {
                println!("{:<24} {:<14} {:<16} PORT", "HOST", "CONTAINER", "IP");
                for p in list {
                    println!(
                        "{:<24} {:<14} {:<16} {}",
                        p.host.to_string(),
                        p.container.as_deref().unwrap_or("-"),
                        p.container_ip,
                        p.container_port
                    );
                }
            }
        }
        Command::Flows(args) => {
            let ip = match &args.container {
                Some(name) => Some(
                    container::view(&state::load_required(instance)?, name)
                        .ip
                        .ok_or_else(|| PublishError::UnknownContainer(name.clone()))?,
                ),
                None => None,
            };
            let filter = FlowFilter {
                ip,
                port: args.port,
                proto: args.proto,
            };
            if args.watch {
                runtime()?.block_on(watch::watch(instance, &filter, cli.json))?;
                return Ok(ExitCode::SUCCESS);
            }
            let tables = Tables::open(instance)?;
            let list = flows::list(&tables, &filter)?;
            if cli.json {
                print_json(&list)?;
            } else {
                print_flows(&list);
            }
        }
        Command::Stats => {
            let stats = flows::stats(&Tables::open(instance)?)?;
            if cli.json {
                print_json(&stats)?;
            } else {
                for (name, value) in &stats.counters {
                    println!("{name:<24} {value}");
                }
                println!(
                    "{:<24} {}/{}",
                    "conntrack_entries", stats.conntrack_entries, stats.conntrack_capacity
                );
                println!("{:<24} {}", "route_generation", stats.route_generation);
            }
        }
        Command::Status => {
            let status = lifecycle::status(instance)?;
            if cli.json {
                print_json(&status)?;
            } else {
                print_status(&status);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
    if let Err(e) = netns::join_parent_mount_namespace_if_private() {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    init_logging(&cli.command);
    match run(cli) {
        Ok(code) => code,
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
