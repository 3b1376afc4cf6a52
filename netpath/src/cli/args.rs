//! The command line as clap parses it. Doc comments here are the `--help`
//! text.
use std::{net::SocketAddr, path::PathBuf, sync::LazyLock};

use clap::{Args, Parser, Subcommand, ValueEnum};
use netpath_common::{LAYOUT_VERSION, Proto};

use crate::{
    config::{Accel, DEFAULT_INSTANCE, TimeoutSetting},
    netns_processes::DEFAULT_GRACE,
    state::Ipv6Mode,
};

/// `netpath --version`: the release, the commit it was built from and the
/// layout of its pinned maps (a datapath pinned by another layout is not
/// adopted).
static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} (commit {}, map layout {LAYOUT_VERSION})",
        env!("CARGO_PKG_VERSION"),
        env!("NETPATH_GIT_COMMIT")
    )
});

/// Docker-style bridge networking for containers, with NAT, conntrack and
/// forwarding in eBPF.
#[derive(Debug, Parser)]
#[command(name = "netpath", version = VERSION.as_str())]
pub(super) struct Cli {
    /// Instance to act on; everything of one netpath lives under its name.
    #[arg(
        long,
        global = true,
        env = "NETPATH_INSTANCE",
        default_value = DEFAULT_INSTANCE
    )]
    pub instance: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Build the bridge, load the datapath and run the agent.
    Up(UpArgs),
    /// Stop the agent and remove containers, bridge, pins and state.
    Down {
        /// Seconds to wait after SIGTERM before SIGKILL for the processes in
        /// the containers' namespaces.
        #[arg(short = 't', long = "time", value_name = "SECS", default_value_t = DEFAULT_GRACE.as_secs())]
        time: u64,
    },
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
    /// Manage networks: several isolated bridges and subnets per instance.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Show the conntrack table: one line per flow, with its counters.
    Flows(FlowsArgs),
    /// Show the datapath's verdict and drop counters.
    Stats,
    /// Install this binary, the systemd unit netpath@.service, shell
    /// completions (bash, zsh, fish) and man pages; with --cni, the CNI
    /// plugin and an example conflist too.
    Install(InstallArgs),
    /// Live view of the flows with the highest packet or byte rates, and
    /// the counters' rates, refreshed from the maps (keys: p, b, s sort by
    /// packets, bytes, source; q quits).
    Top(TopArgs),
}

#[derive(Debug, Args)]
pub(super) struct InstallArgs {
    /// Installation prefix: PREFIX/bin/netpath, PREFIX/lib/systemd/system,
    /// PREFIX/share/{bash-completion,zsh,fish,man}.
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Staging directory prepended to every path written (packaging); the
    /// unit still names PREFIX/bin/netpath.
    #[arg(long)]
    pub destdir: Option<PathBuf>,
    /// Also install the CNI plugin netpath-cni (built next to this binary)
    /// into --cni-bin-dir, and an example conflist as
    /// PREFIX/share/netpath/cni/netpath.conflist.
    #[arg(long)]
    pub cni: bool,
    /// Where runtimes look for CNI plugins.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/opt/cni/bin",
        requires = "cni"
    )]
    pub cni_bin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct TopArgs {
    /// Order flows by packet or byte rate, or by source.
    #[arg(long, value_enum, default_value = "packets")]
    pub sort: TopSort,
    /// Seconds between refreshes (rates are over this interval).
    #[arg(long, value_name = "SECS", default_value = "1")]
    pub interval: f64,
    /// Print N plain-text snapshots (JSON under --json), one per interval,
    /// instead of the live view. Under --json or without a terminal,
    /// snapshots are printed until interrupted.
    #[arg(short = 'n', long, value_name = "N")]
    pub iterations: Option<u64>,
    /// Show at most N flows in a snapshot [default: all].
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum TopSort {
    Packets,
    Bytes,
    Source,
}

#[derive(Debug, Subcommand)]
pub(super) enum PublishCommand {
    /// Publish ports of a container: [hostIP:]hostPort[-end]:containerPort[-end][/tcp|udp].
    Add {
        name: String,
        #[arg(required = true)]
        specs: Vec<String>,
        /// Take new connections to these ports only from this source
        /// address or prefix (e.g. 203.0.113.0/24); repeatable. Without
        /// it the ports are open to all. Enforced in the datapath, which
        /// runs before the host's firewall.
        #[arg(long = "allow", value_name = "CIDR")]
        allow: Vec<String>,
    },
    /// Unpublish: [hostIP:]hostPort[-end][/tcp|udp] (or a whole spec).
    Rm { spec: String },
    /// List published ports (read from the datapath's port map).
    Ls,
}

#[derive(Debug, Args)]
pub(super) struct FlowsArgs {
    /// Only flows of this container.
    #[arg(long)]
    pub container: Option<String>,
    /// Only flows with this port on either side.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only tcp, udp or icmp flows.
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// Stream flow opened/closed events as they happen, until Ctrl-C. Events
    /// are consumed from one shared ring buffer: two watchers of one instance
    /// split the events between them.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum LogLevelArg {
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
pub(super) struct UpArgs {
    /// Uplink interface [default: the interface of the default route].
    #[arg(long, value_name = "IF")]
    pub uplink: Option<String>,
    /// Container subnet [default: 10.77.0.0/16]; the gateway is its first
    /// address. Instances in one network namespace need subnets apart.
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// IPv6 on (the default) or off (`--ipv6=false`: containers get IPv4
    /// only).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub ipv6: Option<bool>,
    /// Container IPv6 subnet, a /64 to /120 with room for every address of
    /// --subnet (containers' IPv6 addresses follow their IPv4 ones)
    /// [default: subnet 0 of a unique-local /48 derived from the instance
    /// name]; the gateway is prefix::1.
    #[arg(long, value_name = "CIDR")]
    pub subnet6: Option<String>,
    /// How containers' IPv6 leaves the host: nat (masqueraded to the
    /// uplink's IPv6 address) or routed (as they are, for a prefix the
    /// host owns) [default: nat].
    #[arg(long, value_enum, value_name = "MODE")]
    pub ipv6_mode: Option<Ipv6Mode>,
    /// Bridge name [default: np0 for the default instance, npbr-INSTANCE
    /// (shortened to 15 characters) for the others].
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// Where the uplink ingress translations run [default: tc].
    #[arg(long, value_enum)]
    pub accel: Option<Accel>,
    /// cgroup v2 directory for the socket hooks [default: the cgroup2 mount].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Run the agent in the background once the instance is up.
    #[arg(long)]
    pub detach: bool,
    /// Conntrack table size [default: scaled to the host's memory].
    #[arg(long, value_name = "N")]
    pub conntrack_size: Option<u32>,
    /// Most flows one container may hold, 0 for no limit [default: half
    /// the table, at least 1024].
    #[arg(long, value_name = "N")]
    pub max_flows_per_container: Option<u32>,
    /// Most flows one outside address may hold to published ports, 0 for
    /// no limit [default: a quarter of the table, at least 256].
    #[arg(long, value_name = "N")]
    pub max_flows_per_source: Option<u32>,
    /// Port range masquerade and hairpin SNAT take ports from; reserved for
    /// netpath in the host netns [default: 40000-49999].
    #[arg(long, value_name = "MIN-MAX")]
    pub snat_ports: Option<String>,
    /// Most SNAT ports one container may hold toward one destination, 0 for
    /// no limit [default: half the SNAT port range].
    #[arg(long, value_name = "N")]
    pub snat_ports_per_container: Option<u32>,
    /// Conntrack timeout in seconds, repeatable: syn, established, fin,
    /// time_wait, close, unreplied (UDP/ICMP), replied (UDP/ICMP).
    #[arg(long = "ct-timeout", value_name = "NAME=SECS")]
    pub ct_timeouts: Vec<TimeoutSetting>,
    /// Agent log level, also for the datapath's own log records
    /// [default: info, or RUST_LOG when set].
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevelArg>,
    /// Serve Prometheus metrics on ADDR (GET /metrics), e.g. 127.0.0.1:9477.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub(super) enum ContainerCommand {
    /// Create a container's network.
    Add(AddArgs),
    /// Stop the processes in the container's network namespace (SIGTERM,
    /// then SIGKILL after --time) and remove its network.
    Rm {
        name: String,
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(short = 't', long = "time", value_name = "SECS", default_value_t = DEFAULT_GRACE.as_secs())]
        time: u64,
    },
    /// Network an existing network namespace (a /proc/PID/ns/net, an `ip
    /// netns` name or path) like a bridge container; its processes and the
    /// netns stay its owner's.
    Attach(AttachArgs),
    /// Take netpath's network out of an attached netns (processes and netns
    /// are left alone).
    Detach { name: String },
    /// List containers, and whether netpath created, attached or networked
    /// them for a CNI runtime.
    Ls,
}

#[derive(Debug, Args)]
pub(super) struct AttachArgs {
    /// 1 to 12 letters, digits, '-' or '_'.
    pub name: String,
    /// The network namespace: a path (/proc/PID/ns/net, /run/netns/NAME) or
    /// an `ip netns` name.
    #[arg(long, value_name = "PATH")]
    pub netns: PathBuf,
    /// Address in the subnet [default: the lowest free one].
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<String>,
    /// Publish a port, as docker -p; repeatable.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// The network of the interface (see `network ls`).
    #[arg(long, default_value = "bridge", value_name = "NET")]
    pub network: String,
}

#[derive(Debug, Args)]
pub(super) struct AddArgs {
    /// 1 to 12 letters, digits, '-' or '_'.
    pub name: String,
    /// Address in the subnet [default: the lowest free one].
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<String>,
    /// bridge, none, host or container:NAME.
    #[arg(long, default_value = "bridge", value_name = "MODE")]
    pub mode: String,
    /// Publish a port, as docker -p: [hostIP:]hostPort[-end]:containerPort[-end][/tcp|udp]; repeatable.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Take new connections to the published ports only from this source
    /// address or prefix (e.g. 203.0.113.0/24); repeatable. Without it they
    /// are open to all.
    #[arg(long = "allow", value_name = "CIDR", requires = "publish")]
    pub allow: Vec<String>,
    /// The network of the container's first interface (see `network ls`).
    #[arg(long, default_value = "bridge", value_name = "NET")]
    pub network: String,
}

#[derive(Debug, Subcommand)]
pub(super) enum NetworkCommand {
    /// Create a network: a bridge and a subnet, isolated from the others.
    Create(NetworkCreateArgs),
    /// List the networks.
    Ls,
    /// Remove a network no container is on.
    Rm { name: String },
    /// Give a container an interface on a network.
    Connect {
        network: String,
        container: String,
        /// The address on that network (default: the lowest free one).
        #[arg(long, value_name = "ADDR")]
        ip: Option<String>,
    },
    /// Take a container's interface on a network away.
    Disconnect { network: String, container: String },
}

#[derive(Debug, Args)]
pub(super) struct NetworkCreateArgs {
    pub name: String,
    /// The subnet (default: the first free /24 of 10.78.0.0/16).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// The IPv6 subnet (default: the first free /64 of the instance's
    /// unique-local /48; none when the instance is IPv4 only).
    #[arg(long, value_name = "CIDR")]
    pub subnet6: Option<String>,
    /// No way out of the subnet: no masquerade, no published ports.
    #[arg(long)]
    pub internal: bool,
    /// Whether containers on it may reach each other directly.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub icc: bool,
    /// The bridge's name (default: np<id>-<hash of the instance>).
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct ExecArgs {
    pub name: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}
