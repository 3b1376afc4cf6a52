//! The compared datapaths. Each is set up on the shared [`Lab`], measured by
//! the one driver in `mod.rs`, and torn down by [`Active`]'s `Drop`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::exec::{Proc, in_ns, run_bounded, wait_tcp};
use super::topo::{
    BASE_BRIDGE, BASE_IP, BASE_SUBNET, CLIENT_IP, CONTAINER_IFNAME, DIRECT_IP, HOST_HTTP_PORT,
    HOST_IP, HTTP_PORT, IPERF_PORT, Lab, NETPATH_IP, OUTSIDE_HTTP_PORTS, SCALE_BASE_PORT, TW_REUSE,
    UPLINK,
};

/// Bound for one netpath command or ruleset load: publishing 10000 ports
/// is slow (see the README's benchmark analysis), but must still end.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The limit: client and server on one veth, no hop, no NAT.
    Direct,
    Route,
    Iptables,
    Nftables,
    NetpathTc,
    NetpathXdp,
}

impl Mode {
    pub const ALL: [Mode; 6] = [
        Mode::Direct,
        Mode::Route,
        Mode::Iptables,
        Mode::Nftables,
        Mode::NetpathTc,
        Mode::NetpathXdp,
    ];

    /// The modes named in `only` (all when empty), in [`Mode::ALL`]'s order.
    pub fn select(only: &[String]) -> Result<Vec<Mode>> {
        if let Some(unknown) = only
            .iter()
            .find(|n| !Mode::ALL.iter().any(|m| m.name() == n.as_str()))
        {
            bail!(
                "unknown bench mode {unknown:?}: use direct, route, iptables, nftables, netpath-tc or netpath-xdp"
            );
        }
        Ok(Mode::ALL
            .into_iter()
            .filter(|m| only.is_empty() || only.iter().any(|n| n == m.name()))
            .collect())
    }

    /// The port of C's nginx this mode's masquerade runs dial. C keeps the
    /// tuples of the connections it closed in TIME_WAIT for 60 s; a mode
    /// whose containers (other address, other TCP timestamps) reused them
    /// right after another mode would see its SYNs rejected (PAWS) and
    /// retried a second later. A port of its own keeps the modes apart.
    pub fn outside_http_port(self) -> u16 {
        let idx = Mode::ALL.iter().position(|m| *m == self).unwrap_or(0);
        OUTSIDE_HTTP_PORTS[idx]
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Route => "route",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::NetpathTc => "netpath-tc",
            Mode::NetpathXdp => "netpath-xdp",
        }
    }

    pub fn netpath_accel(self) -> Option<&'static str> {
        match self {
            Mode::NetpathTc => Some("tc"),
            Mode::NetpathXdp => Some("xdp"),
            _ => None,
        }
    }

    /// Plain routing and `direct` publish nothing, so they have no
    /// port-scale numbers.
    pub fn publishes(self) -> bool {
        !matches!(self, Mode::Direct | Mode::Route)
    }

    /// Builds the mode and starts the container's servers; netpath with a
    /// conntrack table of `conntrack_size` flows if given.
    pub fn setup<'a>(
        self,
        lab: &'a Lab,
        bin: &'a Path,
        server_ports: &[u16],
        conntrack_size: Option<u32>,
    ) -> Result<Active<'a>> {
        let mut active = Active {
            mode: self,
            lab,
            bin,
            instance: format!("b{}", lab.sfx),
            container: format!("web{}", lab.sfx),
            netpath_up: false,
            client_csum_off: false,
            servers: Vec::new(),
            conntrack_size,
        };
        active
            .build(server_ports)
            .with_context(|| format!("setting up mode {}", self.name()))?;
        Ok(active)
    }
}

/// A mode that is set up; `Drop` tears it down (servers first).
pub struct Active<'a> {
    pub mode: Mode,
    lab: &'a Lab,
    bin: &'a Path,
    instance: String,
    container: String,
    netpath_up: bool,
    client_csum_off: bool,
    servers: Vec<Proc>,
    conntrack_size: Option<u32>,
}

impl Active<'_> {
    pub fn container_ns(&self) -> String {
        match self.mode {
            Mode::Direct => self.lab.direct.clone(),
            Mode::NetpathTc | Mode::NetpathXdp => format!("np-{}", self.container),
            Mode::Route | Mode::Iptables | Mode::Nftables => self.lab.base.clone(),
        }
    }

    fn container_ip(&self) -> &'static str {
        match self.mode {
            Mode::Direct => DIRECT_IP,
            Mode::NetpathTc | Mode::NetpathXdp => NETPATH_IP,
            Mode::Route | Mode::Iptables | Mode::Nftables => BASE_IP,
        }
    }

    /// Packets the container's `eth0` has received: what UDP delivery is
    /// counted by, so that the receiving iperf3's drain rate does not
    /// decide the row (read over rtnetlink in the container's netns; /sys
    /// would show the netns it was mounted in).
    pub fn container_rx_packets(&self) -> Result<u64> {
        let out = self.lab.sh(
            &self.container_ns(),
            "ip",
            &["-j", "-s", "link", "show", "dev", CONTAINER_IFNAME],
        )?;
        let links: serde_json::Value =
            serde_json::from_str(&out).context("`ip -j -s link` output is not JSON")?;
        links[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .with_context(|| format!("no rx packet count in `ip -j -s link`: {out}"))
    }

    /// Address and port C dials for a service on `container_port` that is
    /// published as `host_port`.
    pub fn dial(&self, host_port: u16, container_port: u16) -> (String, u16) {
        match self.mode {
            Mode::Direct | Mode::Route => (self.container_ip().to_string(), container_port),
            Mode::Iptables | Mode::Nftables | Mode::NetpathTc | Mode::NetpathXdp => {
                (HOST_IP.to_string(), host_port)
            }
        }
    }

    pub fn http(&self) -> (String, u16) {
        self.dial(HOST_HTTP_PORT, HTTP_PORT)
    }

    pub fn iperf(&self) -> (String, u16) {
        self.dial(IPERF_PORT, IPERF_PORT)
    }

    fn netpath(&self, args: &[&str]) -> Result<String> {
        let mut cmd = in_ns(&self.lab.host, &self.bin.to_string_lossy());
        cmd.args(["--instance", &self.instance]).args(args);
        run_bounded(&mut cmd, INSTALL_TIMEOUT, &self.lab.scratch)
    }

    fn build(&mut self, server_ports: &[u16]) -> Result<()> {
        match self.mode {
            Mode::Direct | Mode::Route => {}
            Mode::Iptables | Mode::Nftables => drop(self.install_ports(0)?),
            Mode::NetpathTc | Mode::NetpathXdp => {
                let accel = self.mode.netpath_accel().unwrap_or("tc");
                let cgroup = self.lab.cgroup.to_string_lossy().into_owned();
                self.netpath_up = true;
                let mut up = vec![
                    "up", "--detach", "--uplink", UPLINK, "--accel", accel, "--cgroup", &cgroup,
                ];
                let size = self.conntrack_size.map(|n| n.to_string());
                if let Some(size) = &size {
                    up.extend(["--conntrack-size", size]);
                }
                self.netpath(&up)?;
                self.netpath(&["container", "add", &self.container, "--ip", NETPATH_IP])?;
                // The same client settings as the baseline container (topo.rs).
                let ns = self.container_ns();
                self.lab.sh(&ns, "sysctl", &["-qw", TW_REUSE]).map(drop)?;
                let http = format!("{HOST_HTTP_PORT}:{HTTP_PORT}/tcp");
                let tcp = format!("{IPERF_PORT}:{IPERF_PORT}/tcp");
                let udp = format!("{IPERF_PORT}:{IPERF_PORT}/udp");
                self.netpath(&["publish", "add", &self.container, &http, &tcp, &udp])?;
                if self.mode == Mode::NetpathXdp {
                    self.client_tx_csum(false)?;
                }
            }
        }
        let ns = self.container_ns();
        let ip = self.container_ip();
        self.servers
            .push(self.lab.nginx(&ns, "0.0.0.0", server_ports)?);
        self.servers.push(self.lab.iperf_server(&ns, IPERF_PORT)?);
        wait_tcp(&ns, ip, HTTP_PORT, &self.lab.scratch)?;
        wait_tcp(&ns, ip, IPERF_PORT, &self.lab.scratch)?;
        // Both directions must work before anything is timed: a mode that
        // drops everything would otherwise cost every tool's full timeout.
        let (addr, port) = self.http();
        wait_tcp(&self.lab.client, &addr, port, &self.lab.scratch)
            .context("no connection from the client to the published port")?;
        wait_tcp(
            &ns,
            CLIENT_IP,
            self.mode.outside_http_port(),
            &self.lab.scratch,
        )
        .context("no connection from the container to the outside")?;
        Ok(())
    }

    /// Publishes `n` extra TCP ports 1:1 (the block [`scale_block`]`(n)`,
    /// on top of the standard ones) and returns how long installing them
    /// took. For iptables and nftables the whole NAT ruleset is reloaded in
    /// one transaction (`iptables-restore`, `nft -f`), the fastest way each
    /// offers; netpath gets one `publish add` of the range. Each scale step
    /// runs on a mode set up for it alone, whose teardown removes the ports.
    pub fn install_ports(&self, n: u16) -> Result<Duration> {
        match self.mode {
            Mode::Direct | Mode::Route => bail!("{} publishes no ports", self.mode.name()),
            Mode::Iptables => {
                let file = self.write_rules("iptables.rules", &iptables_rules(n))?;
                self.timed("iptables-restore", &file)
            }
            Mode::Nftables => {
                let file = self.write_rules("nft.rules", &nft_rules(n))?;
                self.timed("nft", &file)
            }
            Mode::NetpathTc | Mode::NetpathXdp => {
                let spec = scale_spec(n);
                let start = Instant::now();
                self.netpath(&["publish", "add", &self.container, &spec])?;
                Ok(start.elapsed())
            }
        }
    }

    /// Where netpath pins its maps (netpath modes only).
    pub fn netpath_pins(&self) -> PathBuf {
        Path::new("/sys/fs/bpf/netpath")
            .join(&self.instance)
            .join(format!("v{}", netpath_common::LAYOUT_VERSION))
    }

    /// The pid of netpath's agent (netpath modes only).
    pub fn netpath_agent_pid(&self) -> Result<u32> {
        let out = self.netpath(&["status", "--json"])?;
        let status: serde_json::Value =
            serde_json::from_str(&out).context("`netpath status --json` output is not JSON")?;
        status["agent_pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .with_context(|| format!("no agent pid in `netpath status --json`: {out}"))
    }

    /// `netpath stats --json` (netpath modes only).
    pub fn netpath_stats(&self) -> Option<serde_json::Value> {
        self.mode.netpath_accel()?;
        let out = self.netpath(&["stats", "--json"]).ok()?;
        serde_json::from_str(&out).ok()
    }

    fn write_rules(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.lab.scratch.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Loads a ruleset file in H (`iptables-restore FILE`, `nft -f FILE`).
    fn timed(&self, program: &str, file: &Path) -> Result<Duration> {
        let mut cmd = in_ns(&self.lab.host, program);
        if program == "nft" {
            cmd.arg("-f");
        }
        cmd.arg(file);
        let start = Instant::now();
        run_bounded(&mut cmd, INSTALL_TIMEOUT, &self.lab.scratch)?;
        Ok(start.elapsed())
    }

    /// The client's veth hands frames over CHECKSUM_PARTIAL (L4 checksum
    /// not filled in). XDP has no skb to carry that state, so a frame the
    /// uplink XDP program redirects reaches the container with a bad TCP
    /// checksum and is dropped. A NIC delivers complete checksums; here the
    /// `netpath-xdp` mode turns the client's TX checksum offload (and with it
    /// TSO) off to get there, which makes its TCP throughput not comparable.
    fn client_tx_csum(&mut self, on: bool) -> Result<()> {
        self.client_csum_off = !on;
        let state = if on { "on" } else { "off" };
        self.lab
            .sh(&self.lab.client, "ethtool", &["-K", "out0", "tx", state])
            .map(drop)
    }

    fn teardown(&mut self) -> Result<()> {
        self.servers.clear();
        if self.client_csum_off {
            self.client_tx_csum(true)?;
        }
        match self.mode {
            Mode::Direct | Mode::Route => Ok(()),
            Mode::Iptables => {
                let file = self.write_rules("iptables.empty", "*nat\nCOMMIT\n")?;
                self.timed("iptables-restore", &file).map(drop)
            }
            Mode::Nftables => self
                .lab
                .sh(&self.lab.host, "nft", &["delete", "table", "ip", "npbench"])
                .map(drop),
            Mode::NetpathTc | Mode::NetpathXdp => {
                self.netpath_up = false;
                self.netpath(&["down"]).map(drop)
            }
        }
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        let netpath = self.netpath_up;
        if let Err(e) = self.teardown() {
            eprintln!("bench: tearing down {}: {e:#}", self.mode.name());
            if netpath {
                // One more try: a leftover instance would break the next mode.
                let _ = self.netpath(&["down"]);
            }
        }
    }
}

/// The ports of the `n`-port scale step: disjoint blocks per step size
/// (1 -> 20000, 1000 -> 21000.., 10000 -> 22000..31999), all below
/// netpath's SNAT range and H's ephemeral ports.
pub fn scale_block(n: u16) -> std::ops::RangeInclusive<u16> {
    let first = match n {
        0..=1 => SCALE_BASE_PORT,
        2..=1000 => SCALE_BASE_PORT + 1000,
        _ => SCALE_BASE_PORT + 2000,
    };
    first..=first + n.max(1) - 1
}

fn scale_spec(n: u16) -> String {
    let (first, last) = scale_block(n).into_inner();
    if n == 1 {
        format!("{first}:{first}/tcp")
    } else {
        format!("{first}-{last}:{first}-{last}/tcp")
    }
}

/// The last of `n` scale ports: what the scale measurement dials.
pub fn last_scale_port(n: u16) -> u16 {
    *scale_block(n).end()
}

/// Docker's NAT rules: PREROUTING/OUTPUT jump to DOCKER for local
/// destinations, one DNAT rule per published port, MASQUERADE for the subnet.
fn iptables_rules(n: u16) -> String {
    let mut s = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n",
    );
    let _ = writeln!(
        s,
        "-A POSTROUTING -s {BASE_SUBNET} ! -o {BASE_BRIDGE} -j MASQUERADE"
    );
    let mut dnat = |proto: &str, host: u16, port: u16| {
        let _ = writeln!(
            s,
            "-A DOCKER ! -i {BASE_BRIDGE} -p {proto} -m {proto} --dport {host} -j DNAT --to-destination {BASE_IP}:{port}"
        );
    };
    dnat("tcp", HOST_HTTP_PORT, HTTP_PORT);
    dnat("tcp", IPERF_PORT, IPERF_PORT);
    dnat("udp", IPERF_PORT, IPERF_PORT);
    if n > 0 {
        for p in scale_block(n) {
            dnat("tcp", p, p);
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// nftables: one DNAT rule looking up a `proto . port` map (a hash, so the
/// lookup cost does not grow with the number of ports), and masquerade.
fn nft_rules(n: u16) -> String {
    let mut elems = vec![
        format!("tcp . {HOST_HTTP_PORT} : {BASE_IP} . {HTTP_PORT}"),
        format!("tcp . {IPERF_PORT} : {BASE_IP} . {IPERF_PORT}"),
        format!("udp . {IPERF_PORT} : {BASE_IP} . {IPERF_PORT}"),
    ];
    if n > 0 {
        elems.extend(scale_block(n).map(|p| format!("tcp . {p} : {BASE_IP} . {p}")));
    }
    format!(
        "table ip npbench\ndelete table ip npbench\ntable ip npbench {{\n\
         map ports {{\n type inet_proto . inet_service : ipv4_addr . inet_service\n\
         elements = {{ {} }}\n }}\n\
         chain prerouting {{\n type nat hook prerouting priority dstnat; policy accept;\n\
         fib daddr type local dnat ip to meta l4proto . th dport map @ports\n }}\n\
         chain postrouting {{\n type nat hook postrouting priority srcnat; policy accept;\n\
         ip saddr {BASE_SUBNET} oifname != \"{BASE_BRIDGE}\" masquerade\n }}\n}}\n",
        elems.join(",\n ")
    )
}
