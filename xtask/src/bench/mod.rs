//! `cargo xtask bench [--quick]`: netpath against plain routing, iptables and
//! nftables, measured in the same run on the same namespaces.
//!
//! One driver ([`measure_mode`]) measures every mode; the modes differ only
//! in how they are set up ([`modes`]). Rounds interleave the modes (rotated
//! each round) so that drift hits all of them alike; the report takes
//! medians. Two phases: every row on each mode's one-port state, then the
//! scale steps ([`measure_scale`]), each on a mode set up for it alone.
//! Results: `target/bench/bench.{md,json,png}`.

mod exec;
mod modes;
mod progcost;
mod report;
mod tools;
mod topo;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use modes::{Active, Mode, UpOptions, last_scale_port, max_scale_ports};
use netpath_common::names::{CONNTRACK, CONNTRACK6, CT_REPLY, CT_REPLY6};
use netpath_tests::flowfill::{Published, fill_published_flows};
use tools::{Iperf, iperf, with_kernel_cpu, wrk};
use topo::{
    CLIENT_IP, HOST_HTTP_PORT, HOST_IP, HTTP_PORTS, Lab, NETPATH_IP, OUTSIDE_IPERF_PORT, V4,
};

use crate::util::cargo;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// `cargo xtask bench --prog-cost-only`: the program cost alone (no
/// topology, no traffic tools), printed; a quick check of a datapath change.
pub fn run_prog_cost_only(quick: bool) -> Result<()> {
    let plan = Plan::new(quick, None, None, &[]);
    let (_, object) = build_release()?;
    println!(
        "bench: program cost (BPF_PROG_TEST_RUN, {} runs per case)",
        plan.prog_iters
    );
    let prog = progcost::measure(&object, plan.prog_iters)?;
    print!("{}", report::prog_cost_table(&prog, plan.prog_iters));
    Ok(())
}

/// How long and how often.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub secs: u64,
    pub scale: Vec<u16>,
    /// Offered rates of the paced UDP runs, packets/s.
    pub udp_rates: Vec<u32>,
    pub prog_iters: usize,
    /// Concurrent connections of the connection-rate runs.
    pub conns: u32,
    /// Capacity of the conntrack table in the flow-table step (netpath).
    pub flow_table: u32,
    /// Seconds over which the agent's CPU is measured with the table full.
    pub flow_window: u64,
}

impl Plan {
    /// `scale`: the scale steps, empty for the default ones.
    pub fn new(quick: bool, rounds: Option<usize>, flow_table: Option<u32>, scale: &[u16]) -> Self {
        let (r, secs, default_scale, udp_rates, prog_iters) = if quick {
            (1, 1, vec![1, 1000], vec![50_000], 1000)
        } else {
            (
                5,
                3,
                vec![1, 1000, 10000, 65000],
                vec![50_000, 100_000, 200_000],
                5000,
            )
        };
        Self {
            quick,
            rounds: rounds.unwrap_or(r).max(1),
            secs,
            scale: if scale.is_empty() {
                default_scale
            } else {
                scale.to_vec()
            },
            udp_rates,
            prog_iters,
            conns: 16,
            flow_table: flow_table.unwrap_or(if quick { 200_000 } else { 1_000_000 }),
            flow_window: if quick { 4 } else { 30 },
        }
    }
}

/// Samples per metric and mode, plus what failed.
#[derive(Default)]
pub struct Results {
    pub samples: BTreeMap<String, BTreeMap<&'static str, Vec<f64>>>,
    pub errors: Vec<String>,
    pub netpath_stats: BTreeMap<&'static str, Value>,
    /// 1-minute load average before and after the rounds: other load on the machine
    /// (builds, VMs) skews every number, so the report shows it.
    pub loadavg: Vec<String>,
}

impl Results {
    /// Runs one measurement; a failure is recorded, not fatal, so the other
    /// modes and metrics still get measured (and the run still cleans up).
    fn record(&mut self, mode: Mode, what: &str, f: impl FnOnce() -> Result<Vec<(String, f64)>>) {
        match f() {
            Ok(values) => {
                for (id, v) in values {
                    self.samples
                        .entry(id)
                        .or_default()
                        .entry(mode.name())
                        .or_default()
                        .push(v);
                }
            }
            Err(e) => {
                let msg = format!("{}: {what}: {e:#}", mode.name());
                eprintln!("bench: FAILED {msg}");
                self.errors.push(msg);
            }
        }
    }
}

pub fn run(
    quick: bool,
    rounds: Option<usize>,
    only: &[String],
    flow_table: Option<u32>,
    scale: &[u16],
) -> Result<()> {
    let plan = Plan::new(quick, rounds, flow_table, scale);
    let modes = Mode::select(only)?;
    let max = max_scale_ports();
    if let Some(n) = plan.scale.iter().find(|&&n| n == 0 || usize::from(n) > max) {
        bail!("--scale {n}: a scale step publishes 1 to {max} ports");
    }
    ensure_run_netns()?;
    let (bin, object) = build_release()?;
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    let started = std::time::Instant::now();
    let lab = Lab::new()?;
    println!(
        "bench: namespaces {} (client), {} (host), {} (baseline container), {} (direct container); {} round(s) of {} s runs",
        lab.client, lab.host, lab.base, lab.direct, plan.rounds, plan.secs
    );
    let mut results = Results::default();
    results.loadavg.push(loadavg());
    let server_ports = server_ports(&plan);
    // Phase 1: every row but the scale steps, each mode in its one-port state.
    for round in 0..plan.rounds {
        // Rotate the order so no mode is always first or last.
        let mut order = modes.clone();
        order.rotate_left(round % modes.len());
        for mode in order {
            check_interrupt()?;
            println!(
                "bench: round {}/{}: {}",
                round + 1,
                plan.rounds,
                mode.name()
            );
            let up = UpOptions::default();
            if let Some(active) = setup(mode, &lab, &bin, &server_ports, up, &mut results) {
                measure_mode(&lab, &active, &plan, &mut results)?;
                if round + 1 == plan.rounds
                    && let Some(stats) = active.netpath_stats()
                {
                    results.netpath_stats.insert(mode.name(), stats);
                }
            }
        }
    }
    // Phase 2: the scale steps, each on a mode set up for it alone, whose
    // teardown removes the ports again: no other row sees them.
    let publishing: Vec<Mode> = modes.into_iter().filter(|m| m.publishes()).collect();
    for round in 0..plan.rounds {
        let mut order = publishing.clone();
        order.rotate_left(round % publishing.len().max(1));
        for mode in order {
            // Steps above 1000 ports are slow to install: first round only.
            for &n in plan.scale.iter().filter(|&&n| n <= 1000 || round == 0) {
                check_interrupt()?;
                println!(
                    "bench: scale round {}/{}: {} with {n} more port(s)",
                    round + 1,
                    plan.rounds,
                    mode.name()
                );
                let up = UpOptions::scale();
                if let Some(active) = setup(mode, &lab, &bin, &server_ports, up, &mut results) {
                    results.record(mode, &format!("scale {n}"), || {
                        measure_scale(&lab, &active, &plan, n)
                    });
                }
            }
        }
    }
    // The flow-table step, first round's order, netpath only: filling
    // nf_conntrack to 1M needs nf_conntrack_max, which only the root
    // netns may set (global), and 1M real connections.
    for mode in publishing.iter().filter(|m| m.netpath_accel().is_some()) {
        check_interrupt()?;
        println!(
            "bench: flow table: {} with {} flows",
            mode.name(),
            plan.flow_table
        );
        let up = UpOptions {
            conntrack_size: Some(plan.flow_table),
            ..UpOptions::default()
        };
        if let Some(active) = setup(*mode, &lab, &bin, &server_ports, up, &mut results) {
            results.record(*mode, "flow table", || {
                measure_flow_table(&lab, &active, &plan)
            });
        }
    }
    results.loadavg.push(loadavg());
    check_interrupt()?;
    println!(
        "bench: program cost (BPF_PROG_TEST_RUN, {} runs per case)",
        plan.prog_iters
    );
    let prog = progcost::measure(&object, plan.prog_iters).unwrap_or_else(|e| {
        let msg = format!("program cost: {e:#}");
        eprintln!("bench: FAILED {msg}");
        results.errors.push(msg);
        Value::Null
    });
    drop(lab);
    let out_dir = crate::target_dir().join("bench");
    report::write(&out_dir, &plan, &results, &prog, started.elapsed())?;
    if !results.errors.is_empty() {
        bail!(
            "{} measurement(s) failed (the report marks them):\n  {}",
            results.errors.len(),
            results.errors.join("\n  ")
        );
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Ports the container's nginx listens on: 80 and the last scale port of
/// each scale step (published 1:1).
fn server_ports(plan: &Plan) -> Vec<u16> {
    let mut ports = HTTP_PORTS.to_vec();
    ports.extend(plan.scale.iter().map(|&n| last_scale_port(n)));
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Sets `mode` up (its `Drop` tears it down); a failed setup is recorded,
/// not fatal, so the other modes still get measured.
fn setup<'a>(
    mode: Mode,
    lab: &'a Lab,
    bin: &'a Path,
    server_ports: &[u16],
    up: UpOptions,
    res: &mut Results,
) -> Option<Active<'a>> {
    mode.setup(lab, bin, server_ports, up)
        .inspect_err(|e| {
            eprintln!("bench: FAILED {e:#}");
            res.errors.push(format!("{e:#}"));
        })
        .ok()
}

/// Kernel CPU microseconds per unit of work (connection, packet).
fn us_per(cpu_s: f64, count: f64) -> f64 {
    cpu_s * 1e6 / count.max(1.0)
}

/// Every metric but the scale steps, on one mode that is set up. The same
/// code for all modes: only the addresses differ ([`Active::http`],
/// [`Active::iperf`]). Each rate comes with the kernel CPU time its run
/// cost per connection, packet or GB ([`with_kernel_cpu`]). The connection
/// rates both ways also run on IPv6 for the modes that have it
/// ([`Mode::families`]), on the same state, right after IPv4's.
fn measure_mode(lab: &Lab, active: &Active<'_>, plan: &Plan, res: &mut Results) -> Result<()> {
    let mode = active.mode;
    let (c, secs, scratch) = (lab.client.as_str(), plan.secs, lab.scratch.as_path());
    let http = active.http(V4);
    let http = (http.0.as_str(), http.1);
    let ipf = active.iperf();
    let ipf = (ipf.0.as_str(), ipf.1);
    // TCP: Gbit/s and kernel milliseconds per GB received.
    let tcp = |id: &str, ns: &str, target: (&str, u16), reverse: bool| {
        let (run, cpu) =
            with_kernel_cpu(|| iperf(ns, target, Iperf::Tcp { reverse }, secs, scratch))?;
        Ok(vec![
            (id.to_string(), run.gbps),
            (format!("cpu_{id}"), cpu * 1e3 / (run.bytes / 1e9).max(1e-9)),
        ])
    };

    for &family in mode.families() {
        let http = active.http(family);
        let http = (http.0.as_str(), http.1);
        // Warm-up, not recorded: the first connections after a setup pay for
        // conntrack/ARP/socket-cache warm-up that no later run sees.
        let _ = wrk(c, http, plan.conns, true, 1, scratch);
        res.record(mode, &format!("{} connection rate", family.name), || {
            let (w, cpu) = with_kernel_cpu(|| wrk(c, http, plan.conns, true, secs, scratch))?;
            Ok(vec![
                (family.metric("conn_rate"), w.requests_per_s),
                (family.metric("cpu_conn"), us_per(cpu, w.requests as f64)),
                (family.metric("conn_errors"), w.socket_errors as f64),
            ])
        });
        check_interrupt()?;
    }
    res.record(mode, "latency", || {
        let w = wrk(c, http, 1, false, secs, scratch)?;
        Ok(vec![
            ("latency_p50".into(), w.p50_us),
            ("latency_p99".into(), w.p99_us),
        ])
    });
    check_interrupt()?;
    res.record(mode, "TCP in", || tcp("tcp_in", c, ipf, false));
    check_interrupt()?;
    res.record(mode, "TCP out", || tcp("tcp_out", c, ipf, true));
    for &pps in &plan.udp_rates {
        check_interrupt()?;
        res.record(mode, &format!("UDP 64 B at {pps} pkt/s"), || {
            // Counted where the container receives them, not by iperf3's
            // receiver, whose own drain rate would decide the row.
            let before = active.container_rx_packets()?;
            let (run, cpu) = with_kernel_cpu(|| iperf(c, ipf, Iperf::Udp { pps }, secs, scratch))?;
            let delivered = active.container_rx_packets()?.saturating_sub(before) as f64;
            if run.packets_sent <= 0.0 {
                bail!("iperf3 sent no datagram");
            }
            // eth0 also sees a few control packets: loss is clamped at 0.
            let loss = (100.0 * (1.0 - delivered / run.packets_sent)).max(0.0);
            // What the client managed to send: on a loaded machine less
            // than offered, and then the row did not test that rate.
            Ok(vec![
                (format!("udp_sent_{pps}"), run.packets_sent / run.seconds),
                (format!("udp_pps_{pps}"), delivered / run.seconds),
                (format!("udp_loss_{pps}"), loss),
                (format!("cpu_udp_{pps}"), us_per(cpu, delivered) * 1e3),
            ])
        });
    }
    check_interrupt()?;
    // Masquerade: the container is the client, C the server.
    let cns = active.container_ns();
    for &family in mode.families() {
        res.record(
            mode,
            &format!("{} masquerade connection rate", family.name),
            || {
                let outside = (family.client_ip, mode.outside_http_port());
                let (w, cpu) =
                    with_kernel_cpu(|| wrk(&cns, outside, plan.conns, true, secs, scratch))?;
                Ok(vec![
                    (family.metric("masq_conn_rate"), w.requests_per_s),
                    (
                        family.metric("cpu_masq_conn"),
                        us_per(cpu, w.requests as f64),
                    ),
                ])
            },
        );
        check_interrupt()?;
    }
    res.record(mode, "masquerade TCP", || {
        tcp("masq_tcp", &cns, (CLIENT_IP, OUTSIDE_IPERF_PORT), false)
    });
    Ok(())
}

/// One scale step on a freshly set up mode: publish `n` more ports, then
/// the connection rate (and its kernel CPU per connection) to the last.
fn measure_scale(
    lab: &Lab,
    active: &Active<'_>,
    plan: &Plan,
    n: u16,
) -> Result<Vec<(String, f64)>> {
    let (c, scratch) = (lab.client.as_str(), lab.scratch.as_path());
    let took = active.install_ports(n)?;
    let port = last_scale_port(n);
    let target = active.dial(V4, port, port);
    let target = (target.0.as_str(), target.1);
    // Warm-up, not recorded, as in measure_mode.
    let _ = wrk(c, target, plan.conns, true, 1, scratch);
    let (w, cpu) = with_kernel_cpu(|| wrk(c, target, plan.conns, true, plan.secs, scratch))?;
    Ok(vec![
        (format!("scale_conn_{n}"), w.requests_per_s),
        (format!("scale_cpu_{n}"), us_per(cpu, w.requests as f64)),
        (format!("scale_install_{n}"), took.as_secs_f64() * 1e3),
    ])
}

/// The flow-table step on netpath set up with a conntrack budget of
/// `plan.flow_table` flows: the connection rate with the IPv4 table 90 %
/// full (established flows written from userspace, see
/// [`netpath_tests::flowfill`]), then with it full the agent's CPU (GC
/// passes over every flow) over `plan.flow_window` seconds, its peak RSS
/// and the kernel memory of the conntrack maps of both families (with IPv6
/// on, the IPv4 table holds three quarters of the budget and IPv6's the
/// rest of its memory).
fn measure_flow_table(lab: &Lab, active: &Active<'_>, plan: &Plan) -> Result<Vec<(String, f64)>> {
    let (c, scratch) = (lab.client.as_str(), lab.scratch.as_path());
    let pins = active.netpath_pins();
    let to = Published {
        host: (HOST_IP.parse()?, HOST_HTTP_PORT),
        container: (NETPATH_IP.parse()?, active.mode.http_port()),
    };
    let size = aya::maps::MapData::from_pin(pins.join(CONNTRACK))
        .and_then(|map| map.info())
        .map(|info| info.max_entries())
        .context("reading the IPv4 conntrack table's size")?;
    let ninety = size / 10 * 9;
    let filled = fill_published_flows(&pins, 0..ninety, to)?;
    if filled < ninety {
        bail!("the conntrack table took {filled} of {ninety} flows");
    }
    let http = active.http(V4);
    let http = (http.0.as_str(), http.1);
    let _ = wrk(c, http, plan.conns, true, 1, scratch);
    let (w, cpu) = with_kernel_cpu(|| wrk(c, http, plan.conns, true, plan.secs, scratch))?;
    // Up to full: wrk's flows took some of the room.
    let flows = filled + fill_published_flows(&pins, ninety..size, to)?;
    let agent = active.netpath_agent_pid()?;
    let before = process_cpu_s(agent)?;
    let started = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_secs(plan.flow_window));
    let agent_cpu = (process_cpu_s(agent)? - before) / started.elapsed().as_secs_f64();
    let map_bytes: u64 = [CONNTRACK, CT_REPLY, CONNTRACK6, CT_REPLY6]
        .iter()
        .map(|map| map_memlock(&pins.join(map)))
        .sum::<Result<u64>>()?;
    Ok(vec![
        ("flows_conn_rate".into(), w.requests_per_s),
        ("flows_cpu_conn".into(), us_per(cpu, w.requests as f64)),
        ("flows_filled".into(), f64::from(flows)),
        ("flows_agent_cpu".into(), agent_cpu * 100.0),
        (
            "flows_agent_rss".into(),
            peak_rss_kib(agent)? as f64 / 1024.0,
        ),
        (
            "flows_map_mib".into(),
            map_bytes as f64 / f64::from(1 << 20),
        ),
    ])
}

/// User + system CPU seconds `pid` has used (`/proc/PID/stat`).
fn process_cpu_s(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // After the command name, which may hold spaces: state is field 3,
    // utime and stime fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("no field {i} in /proc/{pid}/stat"))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(14)? + ticks(15)?) / hz)
}

/// `VmHWM` of `pid`: its peak resident memory, KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))
}

/// The kernel memory of the map pinned at `pin`, bytes (`memlock` of its
/// fdinfo).
fn map_memlock(pin: &Path) -> Result<u64> {
    use std::os::fd::{AsFd, AsRawFd};
    let map =
        aya::maps::MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    let fd = map.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no memlock in the fdinfo of {}", pin.display()))
}

/// `ip netns add` needs /run/netns (the tools were checked before the
/// bench started, by `tools::preflight`).
fn ensure_run_netns() -> Result<()> {
    if !Path::new("/run/netns").exists() {
        std::fs::create_dir_all("/run/netns").context("creating /run/netns")?;
    }
    Ok(())
}

/// `cargo build --release -p netpath`; the binary and the eBPF object its
/// build script left in OUT_DIR (read from cargo's JSON messages, so xtask
/// need not link netpath itself).
///
/// `NETPATH_BIN` + `NETPATH_EBPF_OBJECT` skip the build (a prebuilt netpath,
/// e.g. in a VM or to compare two builds).
fn build_release() -> Result<(PathBuf, PathBuf)> {
    if let (Some(bin), Some(obj)) = (
        std::env::var_os("NETPATH_BIN"),
        std::env::var_os("NETPATH_EBPF_OBJECT"),
    ) {
        return Ok((bin.into(), obj.into()));
    }
    let out = cargo()
        .args([
            "build",
            "--release",
            "-p",
            "netpath",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .stdout(Stdio::piped())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build --release -p netpath failed");
    }
    let (mut bin, mut object) = (None, None);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let id = msg["package_id"].as_str().unwrap_or_default();
        let ours = id.contains("/netpath#") || id.starts_with("netpath ");
        if !ours {
            continue;
        }
        match msg["reason"].as_str() {
            Some("build-script-executed") => {
                object = msg["out_dir"]
                    .as_str()
                    .map(|d| Path::new(d).join("netpath"));
            }
            // The package has two binaries (netpath, netpath-cni): by name.
            Some("compiler-artifact") if msg["target"]["name"] == "netpath" => {
                if let Some(exe) = msg["executable"].as_str() {
                    bin = Some(PathBuf::from(exe));
                }
            }
            _ => {}
        }
    }
    let bin = bin.context("cargo reported no netpath executable")?;
    let object = object.context("cargo reported no netpath build-script OUT_DIR")?;
    if !object.exists() {
        bail!("the eBPF object {} does not exist", object.display());
    }
    Ok((bin, object))
}

/// Runs `cmd` quietly; stdout if it succeeded (machine description).
fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
