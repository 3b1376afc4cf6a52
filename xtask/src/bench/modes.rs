//! The compared datapaths. Each is set up on the shared [`Lab`], measured by
//! the one driver in `mod.rs`, and torn down by [`Active`]'s `Drop`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::exec::{Proc, in_ns, run_bounded, wait_tcp};
use super::topo::{
    BASE_BRIDGE, BASE_IP, BASE_SUBNET, CONTAINER_IFNAME, DIRECT_IP, Family, HOST_HTTP_PORT,
    HTTP_PORT, HTTP_PORTS, IPERF_PORT, Lab, NETPATH_IP, OUTSIDE_HTTP_PORTS, SCALE_BASE_PORT,
    SCALE_SNAT_PORTS, TW_REUSE, UPLINK, V4, V6, is_standard_port, socket,
};

/// Bound for one netpath command or ruleset load: 65000 ports take seconds
/// at most (iptables-restore: about 1.6 s on 2 vCPUs), but a hung load
/// must still end.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// How netpath is started beyond its defaults (the other modes ignore it).
#[derive(Clone, Copy, Debug, Default)]
pub struct UpOptions {
    /// `--conntrack-size`: the flow-table step.
    pub conntrack_size: Option<u32>,
    /// `--snat-ports`: the scale phase moves the SNAT range out of the way
    /// of its port blocks ([`SCALE_SNAT_PORTS`]).
    pub snat_ports: Option<(u16, u16)>,
}

impl UpOptions {
    /// The scale phase's: every step of every size on the same setup.
    pub fn scale() -> Self {
        Self {
            snat_ports: Some(SCALE_SNAT_PORTS),
            ..Self::default()
        }
    }
}

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
        OUTSIDE_HTTP_PORTS[self.index()]
    }

    /// The container port this mode's connection-rate runs reach (published
    /// as `HOST_HTTP_PORT`). The same hazard in the other direction: the
    /// route, iptables and nftables modes share the baseline container,
    /// which keeps the tuples it closed in TIME_WAIT, and the client's TCP
    /// timestamps differ between dialling the container (route) and the
    /// host's address, so a mode reusing the previous one's tuples had its
    /// SYNs rejected and retried a second later (iptables' connection rate
    /// fell to a fifth). A port of its own keeps them apart.
    pub fn http_port(self) -> u16 {
        HTTP_PORTS[self.index()]
    }

    fn index(self) -> usize {
        Mode::ALL.iter().position(|m| *m == self).unwrap_or(0)
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

    /// The families this mode has connection-rate rows for: IPv6's twins
    /// compare netpath (with its default IPv6: NAT66 to the uplink's
    /// address, every port published on both families) with ip6tables,
    /// which the iptables mode loads beside iptables as Docker does. Not
    /// netpath-xdp: its XDP program passes IPv6 up to TC, so its IPv6 rows
    /// would measure netpath-tc's path again.
    pub fn families(self) -> &'static [Family] {
        match self {
            Mode::Iptables | Mode::NetpathTc => &[V4, V6],
            _ => &[V4],
        }
    }

    /// Plain routing and `direct` publish nothing, so they have no
    /// port-scale numbers.
    pub fn publishes(self) -> bool {
        !matches!(self, Mode::Direct | Mode::Route)
    }

    /// Builds the mode and starts the container's servers; netpath started
    /// with `up`.
    pub fn setup<'a>(
        self,
        lab: &'a Lab,
        bin: &'a Path,
        server_ports: &[u16],
        up: UpOptions,
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
            up,
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
    up: UpOptions,
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
    /// published as `host_port`, on `family` (direct and route: the
    /// container's IPv4 address, they have no IPv6 rows).
    pub fn dial(&self, family: Family, host_port: u16, container_port: u16) -> (String, u16) {
        match self.mode {
            Mode::Direct | Mode::Route => (self.container_ip().to_string(), container_port),
            Mode::Iptables | Mode::Nftables | Mode::NetpathTc | Mode::NetpathXdp => {
                (family.host_ip.to_string(), host_port)
            }
        }
    }

    pub fn http(&self, family: Family) -> (String, u16) {
        self.dial(family, HOST_HTTP_PORT, self.mode.http_port())
    }

    pub fn iperf(&self) -> (String, u16) {
        self.dial(V4, IPERF_PORT, IPERF_PORT)
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
                let size = self.up.conntrack_size.map(|n| n.to_string());
                if let Some(size) = &size {
                    up.extend(["--conntrack-size", size]);
                }
                let snat = self.up.snat_ports.map(|(min, max)| format!("{min}-{max}"));
                if let Some(snat) = &snat {
                    up.extend(["--snat-ports", snat]);
                }
                self.netpath(&up)?;
                self.netpath(&["container", "add", &self.container, "--ip", NETPATH_IP])?;
                // The same client settings as the baseline container (topo.rs).
                let ns = self.container_ns();
                self.lab.sh(&ns, "sysctl", &["-qw", TW_REUSE]).map(drop)?;
                let http = format!("{HOST_HTTP_PORT}:{}/tcp", self.mode.http_port());
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
            .push(self.lab.nginx(&ns, &["0.0.0.0", "::"], server_ports)?);
        self.servers.push(self.lab.iperf_server(&ns, IPERF_PORT)?);
        wait_tcp(&ns, ip, HTTP_PORT, &self.lab.scratch)?;
        wait_tcp(&ns, ip, IPERF_PORT, &self.lab.scratch)?;
        // Both directions must work before anything is timed: a mode that
        // drops everything would otherwise cost every tool's full timeout.
        for &family in self.mode.families() {
            let (addr, port) = self.http(family);
            wait_tcp(&self.lab.client, &addr, port, &self.lab.scratch).with_context(|| {
                format!(
                    "no {} connection from the client to the published port",
                    family.name
                )
            })?;
            wait_tcp(
                &ns,
                family.client_ip,
                self.mode.outside_http_port(),
                &self.lab.scratch,
            )
            .with_context(|| {
                format!(
                    "no {} connection from the container to the outside",
                    family.name
                )
            })?;
        }
        Ok(())
    }

    /// Publishes `n` extra TCP ports 1:1 ([`scale_ports`]`(n)`, on top of
    /// the standard ones) and returns how long installing them took. For
    /// iptables and nftables the whole NAT ruleset is reloaded in one
    /// transaction (`iptables-restore`, `nft -f`), the fastest way each
    /// offers; iptables' for both families (`ip6tables-restore` too), as
    /// netpath publishes every port on both; netpath gets one `publish add`
    /// of the block's ranges. Each scale step runs on a mode set up for it
    /// alone, whose teardown removes the ports.
    pub fn install_ports(&self, n: u16) -> Result<Duration> {
        match self.mode {
            Mode::Direct | Mode::Route => bail!("{} publishes no ports", self.mode.name()),
            Mode::Iptables => self
                .mode
                .families()
                .iter()
                .map(|&family| {
                    let rules = iptables_rules(n, self.mode, family);
                    let name = format!("{}.rules", family.iptables_restore);
                    let file = self.write_rules(&name, &rules)?;
                    self.timed(family.iptables_restore, &file)
                })
                .sum(),
            Mode::Nftables => {
                let file = self.write_rules("nft.rules", &nft_rules(n, self.mode))?;
                self.timed("nft", &file)
            }
            Mode::NetpathTc | Mode::NetpathXdp => {
                let specs = scale_specs(n);
                let mut args = vec!["publish", "add", &self.container];
                args.extend(specs.iter().map(String::as_str));
                let start = Instant::now();
                self.netpath(&args)?;
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
            Mode::Iptables => self.mode.families().iter().try_for_each(|family| {
                let name = format!("{}.empty", family.iptables_restore);
                let file = self.write_rules(&name, "*nat\nCOMMIT\n")?;
                self.timed(family.iptables_restore, &file).map(drop)
            }),
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

/// The ports of the `n`-port scale step, ascending: up to 10000 ports
/// disjoint blocks per step size (1 -> 20000, 1000 -> 21000.., 10000 ->
/// 22000..31999); more (65000) the `n` highest ports below the scale
/// phase's SNAT range. Never a standard port ([`is_standard_port`]);
/// fewer than `n` if that many do not fit ([`max_scale_ports`]).
pub fn scale_ports(n: u16) -> Vec<u16> {
    let n = usize::from(n);
    let usable = |p: &u16| !is_standard_port(*p);
    let first = match n {
        0..=1 => SCALE_BASE_PORT,
        2..=1000 => SCALE_BASE_PORT + 1000,
        1001..=10000 => SCALE_BASE_PORT + 2000,
        _ => {
            let mut ports: Vec<u16> = (1..SCALE_SNAT_PORTS.0)
                .rev()
                .filter(usable)
                .take(n)
                .collect();
            ports.reverse();
            return ports;
        }
    };
    (first..SCALE_SNAT_PORTS.0).filter(usable).take(n).collect()
}

/// The most ports a scale step can publish: every port below the scale
/// phase's SNAT range but the standard ones.
pub fn max_scale_ports() -> usize {
    (1..SCALE_SNAT_PORTS.0)
        .filter(|&p| !is_standard_port(p))
        .count()
}

/// The `publish add` specs of the `n`-port step: one range per run of
/// consecutive ports (four for 65000 ports, around the standard ones).
fn scale_specs(n: u16) -> Vec<String> {
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for p in scale_ports(n) {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == p => *last = p,
            _ => runs.push((p, p)),
        }
    }
    runs.into_iter()
        .map(|(first, last)| {
            if first == last {
                format!("{first}:{first}/tcp")
            } else {
                format!("{first}-{last}:{first}-{last}/tcp")
            }
        })
        .collect()
}

/// The last of `n` scale ports: what the scale measurement dials (for
/// iptables the last DNAT rule of the chain).
pub fn last_scale_port(n: u16) -> u16 {
    scale_ports(n).last().copied().unwrap_or(SCALE_BASE_PORT)
}

/// Docker's NAT rules of one family (`iptables-restore` or
/// `ip6tables-restore` syntax): PREROUTING/OUTPUT jump to DOCKER for local
/// destinations, one DNAT rule per published port, MASQUERADE for the subnet.
fn iptables_rules(n: u16, mode: Mode, family: Family) -> String {
    let mut s = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n",
    );
    let _ = writeln!(
        s,
        "-A POSTROUTING -s {} ! -o {BASE_BRIDGE} -j MASQUERADE",
        family.base_subnet
    );
    let mut dnat = |proto: &str, host: u16, port: u16| {
        let _ = writeln!(
            s,
            "-A DOCKER ! -i {BASE_BRIDGE} -p {proto} -m {proto} --dport {host} -j DNAT --to-destination {}",
            socket(family.base_ip, port)
        );
    };
    dnat("tcp", HOST_HTTP_PORT, mode.http_port());
    dnat("tcp", IPERF_PORT, IPERF_PORT);
    dnat("udp", IPERF_PORT, IPERF_PORT);
    for p in scale_ports(n) {
        dnat("tcp", p, p);
    }
    s.push_str("COMMIT\n");
    s
}

/// nftables: one DNAT rule looking up a `proto . port` map (a hash, so the
/// lookup cost does not grow with the number of ports), and masquerade.
fn nft_rules(n: u16, mode: Mode) -> String {
    let mut elems = vec![
        format!("tcp . {HOST_HTTP_PORT} : {BASE_IP} . {}", mode.http_port()),
        format!("tcp . {IPERF_PORT} : {BASE_IP} . {IPERF_PORT}"),
        format!("udp . {IPERF_PORT} : {BASE_IP} . {IPERF_PORT}"),
    ];
    elems.extend(
        scale_ports(n)
            .into_iter()
            .map(|p| format!("tcp . {p} : {BASE_IP} . {p}")),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_blocks_avoid_the_standard_ports_and_the_snat_range() {
        assert_eq!(scale_ports(1), vec![20000]);
        assert_eq!(scale_ports(10000), (22000..=31999).collect::<Vec<_>>());
        let ports = scale_ports(65000);
        assert_eq!(ports.len(), 65000);
        assert!(ports.windows(2).all(|w| w[0] < w[1]));
        assert!(ports.iter().all(|&p| !is_standard_port(p)));
        assert_eq!(last_scale_port(65000), SCALE_SNAT_PORTS.0 - 1);
        assert_eq!(
            scale_specs(65000),
            [
                "91-5200:91-5200/tcp",
                "5203-8079:5203-8079/tcp",
                "8081-8100:8081-8100/tcp",
                "8107-65099:8107-65099/tcp"
            ]
        );
        assert_eq!(scale_ports(65089).len(), max_scale_ports());
    }

    #[test]
    fn ip6tables_rules_are_iptables_rules_with_the_ipv6_addresses() {
        let v6 = iptables_rules(1, Mode::Iptables, V6);
        assert!(v6.contains("-A POSTROUTING -s fd00:78::/64 ! -o brb0 -j MASQUERADE\n"));
        assert!(v6.contains("--dport 8080 -j DNAT --to-destination [fd00:78::2]:82\n"));
        assert!(v6.contains("--dport 20000 -j DNAT --to-destination [fd00:78::2]:20000\n"));
        let v4 = iptables_rules(1, Mode::Iptables, V4);
        assert_eq!(
            v4.replace("10.78.0.2:", "[fd00:78::2]:")
                .replace(BASE_SUBNET, "fd00:78::/64"),
            v6
        );
    }
}
