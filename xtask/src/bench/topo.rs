//! The one topology every mode is measured on.
//!
//! ```text
//!  C (client, "outside")           H (host)                        B (baseline container)
//!  out0 198.18.0.2/24 <-- veth --> up0 198.18.0.1/24
//!       2001:db8::2/64                 2001:db8::1/64
//!  10.78.0.0/24 via 198.18.0.1     brb0 10.78.0.1/24 <-- veth --> eth0 10.78.0.2/24
//!                                       fd00:78::1/64                  fd00:78::2/64
//!                                  np0 10.77.0.1/16  <-- veth --> np-<name>: 10.77.0.2 (netpath modes)
//!                                      (+ netpath's IPv6 subnet)       (+ its IPv6 address)
//!  dir0 10.79.0.1/24 <-- veth --> D (direct container): eth0 10.79.0.2/24
//! ```
//!
//! D is the `direct` mode's server: one veth from the client, no forwarding
//! hop, no NAT, the best this topology can do. The IPv6 addresses ([`V6`])
//! carry the IPv6 rows of the modes that have them
//! ([`Mode::families`](super::modes::Mode::families)); D is IPv4 only.
//!
//! Only namespaces created here are touched. [`Lab`]'s `Drop` removes them
//! (after the servers, killed by pid), also when the bench fails midway.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use netpath_tests::cgroup2_mount;

use super::exec::{Proc, in_ns, run_bounded, wait_tcp};
use crate::util::short_suffix;

pub const HOST_IP: &str = "198.18.0.1";
pub const CLIENT_IP: &str = "198.18.0.2";
pub const BASE_IP: &str = "10.78.0.2";
pub const BASE_SUBNET: &str = "10.78.0.0/24";
pub const BASE_BRIDGE: &str = "brb0";
pub const NETPATH_IP: &str = "10.77.0.2";
pub const DIRECT_IP: &str = "10.79.0.2";

/// One address family's side of the topology: the IPv4 rows run on [`V4`],
/// their IPv6 twins on [`V6`], over the same links and namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    /// H's address on the uplink: published ports, masquerade source.
    pub host_ip: &'static str,
    /// C's address on the uplink: the client, and the outside servers.
    pub client_ip: &'static str,
    /// The baseline container's address, behind `brb0`.
    pub base_ip: &'static str,
    pub base_gateway: &'static str,
    pub base_subnet: &'static str,
    /// The prefix length of the uplink's and `brb0`'s subnets.
    pub prefix_len: u8,
    /// `ip addr add` flags: IPv6 addresses skip duplicate address detection,
    /// which would leave them unusable (tentative) for a second.
    addr_flags: &'static str,
    /// H's forwarding sysctl.
    forwarding: &'static str,
    /// Loads this family's rules (the iptables mode).
    pub iptables_restore: &'static str,
    /// Appended to this family's metric ids ([`Family::metric`]).
    pub metric_suffix: &'static str,
}

pub const V4: Family = Family {
    name: "IPv4",
    host_ip: HOST_IP,
    client_ip: CLIENT_IP,
    base_ip: BASE_IP,
    base_gateway: "10.78.0.1",
    base_subnet: BASE_SUBNET,
    prefix_len: 24,
    addr_flags: "",
    forwarding: "net.ipv4.ip_forward=1",
    iptables_restore: "iptables-restore",
    metric_suffix: "",
};

/// Documentation addresses outside, unique-local ones behind the bridge
/// (netpath's own IPv6 subnet is a unique-local /64 derived from its
/// instance name: apart from this one).
pub const V6: Family = Family {
    name: "IPv6",
    host_ip: "2001:db8::1",
    client_ip: "2001:db8::2",
    base_ip: "fd00:78::2",
    base_gateway: "fd00:78::1",
    base_subnet: "fd00:78::/64",
    prefix_len: 64,
    addr_flags: " nodad",
    forwarding: "net.ipv6.conf.all.forwarding=1",
    iptables_restore: "ip6tables-restore",
    metric_suffix: V6_METRIC_SUFFIX,
};

/// What an IPv6 row's id has that its IPv4 twin's has not.
pub const V6_METRIC_SUFFIX: &str = "_v6";

impl Family {
    /// This family's id of metric `id` (IPv4's are the ids as they were).
    pub fn metric(self, id: &str) -> String {
        format!("{id}{}", self.metric_suffix)
    }
}

/// `ip:port`, the IPv6 address in brackets (URLs, nginx, DNAT targets).
pub fn socket(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}
/// Every container's interface (B, D and netpath's): where UDP is counted.
pub const CONTAINER_IFNAME: &str = "eth0";
pub const UPLINK: &str = "up0";
/// The published port (Docker's `-p 8080:80`) and the iperf3 ports.
pub const HOST_HTTP_PORT: u16 = 8080;
pub const HTTP_PORT: u16 = 80;
/// The container's nginx port each mode's connection rate reaches, in
/// [`Mode::ALL`](super::modes::Mode::ALL)'s order (see
/// [`Mode::http_port`](super::modes::Mode::http_port)): route, iptables
/// and nftables share one container, whose TIME_WAIT sockets must not be
/// handed from one mode to the next.
pub const HTTP_PORTS: [u16; 6] = [HTTP_PORT, 81, 82, 83, 84, 85];
pub const IPERF_PORT: u16 = 5201;
/// C's nginx for the masquerade direction: one port per mode (in
/// [`Mode::ALL`](super::modes::Mode::ALL)'s order, see
/// [`Mode::outside_http_port`](super::modes::Mode::outside_http_port)).
pub const OUTSIDE_HTTP_PORTS: [u16; 6] = [8101, 8102, 8103, 8104, 8105, 8106];
/// iperf3 in C for the masquerade direction.
pub const OUTSIDE_IPERF_PORT: u16 = 5202;
/// Scale ports are published 1:1 from here on (steps up to 10000 ports,
/// see [`scale_ports`](super::modes::scale_ports)).
pub const SCALE_BASE_PORT: u16 = 20000;
/// netpath's SNAT range in the scale phase (`up --snat-ports`): netpath
/// refuses to publish a host port inside it, and the default 40000-49999
/// would be in the way of a step of 65000 ports.
pub const SCALE_SNAT_PORTS: (u16, u16) = (65100, 65535);

/// The ports the bench uses besides the scale steps (the container's, H's
/// published ones and C's servers): no scale step publishes one of them.
pub fn is_standard_port(port: u16) -> bool {
    [HOST_HTTP_PORT, IPERF_PORT, OUTSIDE_IPERF_PORT].contains(&port)
        || HTTP_PORTS.contains(&port)
        || OUTSIDE_HTTP_PORTS.contains(&port)
}

/// Short connections at high rates: clients in the containers and in C
/// reuse TIME_WAIT ports (every container of every mode gets the same).
pub const TW_REUSE: &str = "net.ipv4.tcp_tw_reuse=1";

const CMD_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Lab {
    pub sfx: String,
    pub client: String,
    pub host: String,
    pub base: String,
    pub direct: String,
    pub scratch: PathBuf,
    pub cgroup: PathBuf,
    created_ns: Vec<String>,
    cgroup_created: bool,
    /// Servers in C; dropped (killed) before the namespaces go.
    servers: Vec<Proc>,
}

impl Lab {
    pub fn new() -> Result<Self> {
        let sfx = short_suffix();
        let cg2 = cgroup2_mount().context("no cgroup2 mount in /proc/mounts")?;
        let scratch = std::env::temp_dir().join(format!("npbench-{sfx}"));
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let mut lab = Self {
            client: format!("npb-c-{sfx}"),
            host: format!("npb-h-{sfx}"),
            base: format!("npb-b-{sfx}"),
            direct: format!("npb-d-{sfx}"),
            cgroup: cg2.join(format!("netpath-bench-{sfx}")),
            sfx,
            scratch,
            created_ns: Vec::new(),
            cgroup_created: false,
            servers: Vec::new(),
        };
        lab.build().context("building the bench topology")?;
        Ok(lab)
    }

    /// Runs `program args` in `ns`, bounded; stdout.
    pub fn sh(&self, ns: &str, program: &str, args: &[&str]) -> Result<String> {
        run_bounded(in_ns(ns, program).args(args), CMD_TIMEOUT, &self.scratch)
    }

    fn ip(&self, ns: &str, args: &str) -> Result<()> {
        let args: Vec<&str> = args.split_whitespace().collect();
        self.sh(ns, "ip", &args).map(drop)
    }

    fn sysctl(&self, ns: &str, kv: &str) -> Result<()> {
        self.sh(ns, "sysctl", &["-qw", kv]).map(drop)
    }

    fn add_ns(&mut self, name: String) -> Result<()> {
        run_bounded(
            std::process::Command::new("ip").args(["netns", "add", &name]),
            CMD_TIMEOUT,
            &self.scratch,
        )?;
        self.created_ns.push(name);
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        std::fs::create_dir(&self.cgroup)
            .with_context(|| format!("creating cgroup {}", self.cgroup.display()))?;
        self.cgroup_created = true;
        let (c, h, b, d) = (
            self.client.clone(),
            self.host.clone(),
            self.base.clone(),
            self.direct.clone(),
        );
        for ns in [&c, &h, &b, &d] {
            self.add_ns(ns.clone())?;
        }
        for ns in [&c, &h, &b, &d] {
            self.ip(ns, "link set lo up")?;
        }
        // Uplink H <-> C, created in H and its peer moved to C, and the
        // baseline container on a plain Linux bridge, as Docker builds it.
        self.ip(
            &h,
            &format!("link add {UPLINK} type veth peer name out0 netns {c}"),
        )?;
        self.ip(&h, &format!("link set {UPLINK} up"))?;
        self.ip(&c, "link set out0 up")?;
        self.ip(&h, &format!("link add {BASE_BRIDGE} type bridge"))?;
        self.ip(&h, &format!("link set {BASE_BRIDGE} up"))?;
        self.ip(
            &h,
            &format!("link add vb0 type veth peer name eth0 netns {b}"),
        )?;
        self.ip(&h, &format!("link set vb0 master {BASE_BRIDGE} up"))?;
        self.ip(&b, "link set eth0 up")?;
        // Both families' addresses and routes; forwarding in our own H
        // (per-netns sysctls, never the machine's).
        for fam in [V4, V6] {
            let (len, flags) = (fam.prefix_len, fam.addr_flags);
            self.ip(
                &h,
                &format!("addr add {}/{len} dev {UPLINK}{flags}", fam.host_ip),
            )?;
            self.ip(
                &c,
                &format!("addr add {}/{len} dev out0{flags}", fam.client_ip),
            )?;
            self.ip(&h, &format!("route add default via {}", fam.client_ip))?;
            self.ip(
                &h,
                &format!(
                    "addr add {}/{len} dev {BASE_BRIDGE}{flags}",
                    fam.base_gateway
                ),
            )?;
            self.ip(
                &b,
                &format!("addr add {}/{len} dev eth0{flags}", fam.base_ip),
            )?;
            self.ip(&b, &format!("route add default via {}", fam.base_gateway))?;
            self.sysctl(&h, fam.forwarding)?;
        }
        // The `route` mode's path: C reaches the containers through H.
        self.ip(&c, &format!("route add {BASE_SUBNET} via {HOST_IP}"))?;
        // The direct container on a veth of C's own; it reaches C's servers
        // (CLIENT_IP, on out0) through C's local table.
        self.ip(
            &c,
            &format!("link add dir0 type veth peer name eth0 netns {d}"),
        )?;
        self.ip(&c, "addr add 10.79.0.1/24 dev dir0")?;
        self.ip(&c, "link set dir0 up")?;
        self.ip(&d, &format!("addr add {DIRECT_IP}/24 dev eth0"))?;
        self.ip(&d, "link set eth0 up")?;
        self.ip(&d, "route add default via 10.79.0.1")?;
        for ns in [&c, &b, &d] {
            self.sysctl(ns, TW_REUSE)?;
        }
        // The outside servers for the masquerade direction.
        let nginx = self.nginx(&c, &[V4.client_ip, V6.client_ip], &OUTSIDE_HTTP_PORTS)?;
        self.servers.push(nginx);
        let iperf = self.iperf_server(&c, OUTSIDE_IPERF_PORT)?;
        self.servers.push(iperf);
        for fam in [V4, V6] {
            wait_tcp(&c, fam.client_ip, OUTSIDE_HTTP_PORTS[0], &self.scratch)?;
        }
        wait_tcp(&c, CLIENT_IP, OUTSIDE_IPERF_PORT, &self.scratch)?;
        Ok(())
    }

    /// nginx as one process (no master, no daemon) in `ns`, answering `ok`
    /// on each of `ports` of each of `addrs`, with its config and logs in the
    /// scratch dir.
    pub fn nginx(&self, ns: &str, addrs: &[&str], ports: &[u16]) -> Result<Proc> {
        let dir = self.scratch.join(format!("nginx-{ns}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let d = dir.display();
        let listens: String = addrs
            .iter()
            .flat_map(|addr| ports.iter().map(move |&p| socket(addr, p)))
            .map(|listen| format!("    listen {listen} backlog=4096;\n"))
            .collect();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 10000000;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n  default_type text/plain;\n\
             server {{\n{listens}    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        let mut cmd = in_ns(ns, "nginx");
        cmd.arg("-c").arg(&path).arg("-p").arg(&dir);
        let mut proc = Proc::spawn(cmd, dir.join("stdout.log"))?;
        std::thread::sleep(Duration::from_millis(50));
        proc.check_alive()
            .with_context(|| format!("nginx in {ns}; see {d}/error.log"))?;
        Ok(proc)
    }

    pub fn iperf_server(&self, ns: &str, port: u16) -> Result<Proc> {
        let mut cmd = in_ns(ns, "iperf3");
        cmd.args(["-s", "-p", &port.to_string()]);
        Proc::spawn(cmd, self.scratch.join(format!("iperf3-{ns}-{port}.log")))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.clear();
        for ns in self.created_ns.iter().rev() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
        if self.cgroup_created {
            let _ = std::fs::remove_dir(&self.cgroup);
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}
