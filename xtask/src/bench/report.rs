//! Medians, ratios, and the three outputs: bench.md, bench.json, bench.png.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::modes::Mode;
use super::topo::V6_METRIC_SUFFIX;
use super::{Plan, Results, probe};

/// (id prefix, label, unit, higher is better), in table order. Scale and
/// UDP ids carry the port count or offered rate as a suffix (`N` in the
/// label); an IPv6 row's id is its IPv4 twin's plus [`V6_METRIC_SUFFIX`]
/// (labelled `IPv6:`, after every IPv4 row). `cpu_*`: kernel CPU time (system + softirq, all CPUs) of the run
/// above it, per unit of work.
const METRICS: &[(&str, &str, &str, bool)] = &[
    (
        "conn_rate",
        "new TCP connections/s via published port",
        "conn/s",
        true,
    ),
    ("cpu_conn", "kernel CPU per connection", "us/conn", false),
    (
        "conn_errors",
        "socket errors during the connection run",
        "count",
        false,
    ),
    (
        "latency_p50",
        "HTTP request latency p50 (1 keep-alive conn)",
        "us",
        false,
    ),
    (
        "latency_p99",
        "HTTP request latency p99 (1 keep-alive conn)",
        "us",
        false,
    ),
    (
        "tcp_in",
        "TCP throughput client -> container",
        "Gbit/s",
        true,
    ),
    (
        "cpu_tcp_in",
        "kernel CPU per GB client -> container",
        "ms/GB",
        false,
    ),
    (
        "tcp_out",
        "TCP throughput container -> client (-R)",
        "Gbit/s",
        true,
    ),
    (
        "cpu_tcp_out",
        "kernel CPU per GB container -> client",
        "ms/GB",
        false,
    ),
    (
        "udp_sent",
        "UDP 64 B sent by the client, N pkt/s offered",
        "pkt/s",
        true,
    ),
    (
        "udp_pps",
        "UDP 64 B delivered at the container's eth0, N pkt/s offered",
        "pkt/s",
        true,
    ),
    (
        "udp_loss",
        "UDP 64 B lost before eth0, N pkt/s offered",
        "%",
        false,
    ),
    (
        "cpu_udp",
        "kernel CPU per delivered UDP packet, N pkt/s offered",
        "ns/pkt",
        false,
    ),
    (
        "masq_conn_rate",
        "masquerade: container -> outside connections/s",
        "conn/s",
        true,
    ),
    (
        "cpu_masq_conn",
        "kernel CPU per masquerade connection",
        "us/conn",
        false,
    ),
    (
        "masq_tcp",
        "masquerade: container -> outside TCP",
        "Gbit/s",
        true,
    ),
    (
        "cpu_masq_tcp",
        "kernel CPU per masquerade GB",
        "ms/GB",
        false,
    ),
    (
        "scale_conn",
        "connections/s to the last of N more published ports",
        "conn/s",
        true,
    ),
    (
        "scale_cpu",
        "kernel CPU per connection, N more published ports",
        "us/conn",
        false,
    ),
    (
        "scale_install",
        "installing N more published ports",
        "ms",
        false,
    ),
    (
        "flows_conn_rate",
        "connections/s, conntrack table 90 % full (netpath only)",
        "conn/s",
        true,
    ),
    (
        "flows_cpu_conn",
        "kernel CPU per connection, conntrack table 90 % full",
        "us/conn",
        false,
    ),
    (
        "flows_filled",
        "flows in the full conntrack table",
        "flows",
        true,
    ),
    (
        "flows_agent_cpu",
        "agent CPU, full conntrack table (expiry)",
        "% of a core",
        false,
    ),
    (
        "flows_agent_rss",
        "agent peak RSS, full conntrack table",
        "MiB",
        false,
    ),
    (
        "flows_map_mib",
        "conntrack maps' kernel memory (CONNTRACK + CT_REPLY)",
        "MiB",
        false,
    ),
];

fn describe(id: &str) -> (String, &'static str, bool) {
    if let Some(v4) = id.strip_suffix(V6_METRIC_SUFFIX) {
        let (label, unit, higher) = describe(v4);
        return (format!("IPv6: {label}"), unit, higher);
    }
    for &(prefix, label, unit, higher) in METRICS {
        if id == prefix {
            return (label.to_string(), unit, higher);
        }
        if let Some(n) = id.strip_prefix(prefix).and_then(|s| s.strip_prefix('_')) {
            return (label.replace('N', n), unit, higher);
        }
    }
    (id.to_string(), "", true)
}

fn order(id: &str) -> (bool, usize, u64) {
    if let Some(v4) = id.strip_suffix(V6_METRIC_SUFFIX) {
        let (_, i, n) = order(v4);
        return (true, i, n);
    }
    let i = METRICS
        .iter()
        .position(|(p, ..)| id == *p || id.starts_with(&format!("{p}_")))
        .unwrap_or(usize::MAX);
    let n = id
        .rsplit('_')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (false, i, n)
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn fmt(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "–".into(),
        Some(v) => match unit {
            "Gbit/s" => format!("{v:.2}"),
            "%" | "% of a core" => format!("{v:.2}"),
            "ms" | "us/conn" => format!("{v:.1}"),
            _ => format!("{v:.0}"),
        },
    }
}

/// The ratio columns: netpath to iptables (what it replaces), and every
/// mode to `direct` (the limit of the topology).
const RATIOS: [(&str, &str); 7] = [
    ("netpath-tc", "iptables"),
    ("netpath-xdp", "iptables"),
    ("route", "direct"),
    ("iptables", "direct"),
    ("nftables", "direct"),
    ("netpath-tc", "direct"),
    ("netpath-xdp", "direct"),
];

/// A mode's name in a ratio column's header.
fn short(mode: &str) -> &str {
    match mode {
        "iptables" => "ipt",
        "nftables" => "nft",
        "netpath-tc" => "tc",
        "netpath-xdp" => "xdp",
        m => m,
    }
}

/// The program-cost rows ([`super::progcost::measure`]) as a markdown table;
/// empty if they are missing (the measurement failed).
pub fn prog_cost_table(prog: &Value, iters: usize) -> String {
    let mut md = String::new();
    if let Value::Array(rows) = prog {
        let _ = writeln!(
            md,
            "Program cost (BPF_PROG_TEST_RUN, median of {iters} runs, repeat=1 each, fresh frame per run):\n"
        );
        let _ = writeln!(
            md,
            "| program / path | ns/packet | minus no-op |\n|---|---:|---:|"
        );
        for r in rows {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} |",
                r["case"].as_str().unwrap_or("?"),
                r["ns"].as_f64().unwrap_or(f64::NAN),
                r["ns_over_noop"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    md
}

pub fn write(dir: &Path, plan: &Plan, res: &Results, prog: &Value, took: Duration) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let machine = machine();
    let mut ids: Vec<&String> = res.samples.keys().collect();
    ids.sort_by_key(|id| order(id));

    let mut metrics = Vec::new();
    let modes: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}. Finished: {} after {} s. 1-min load average before/after the rounds: {} (the bench itself adds about 2). {} round(s), {} s per run{}, medians; modes interleaved round by round.\n",
        machine["summary"].as_str().unwrap_or("?"),
        machine["date"].as_str().unwrap_or("?"),
        took.as_secs(),
        res.loadavg.join(" / "),
        plan.rounds,
        plan.secs,
        if plan.quick { " (--quick)" } else { "" },
    );
    let ratio_names: Vec<String> = RATIOS
        .iter()
        .map(|(a, b)| format!("{}/{}", short(a), short(b)))
        .collect();
    let _ = writeln!(
        md,
        "| metric | unit | {} | {} |",
        modes.join(" | "),
        ratio_names.join(" | ")
    );
    let _ = writeln!(
        md,
        "|---|---|{}{}",
        "---:|".repeat(modes.len()),
        "---|".repeat(RATIOS.len())
    );
    for id in ids {
        let (label, unit, higher) = describe(id);
        let per_mode = &res.samples[id];
        let med = |m: &str| per_mode.get(m).and_then(|v| median(v));
        let ratio = |a: &str, b: &str| match (med(a), med(b)) {
            (Some(a), Some(b)) if b != 0.0 => Some(a / b),
            _ => None,
        };
        let arrow = if higher { "↑" } else { "↓" };
        let cells: Vec<String> = modes.iter().map(|m| fmt(med(m), unit)).collect();
        let ratio_cells: Vec<String> = RATIOS
            .iter()
            .map(|(a, b)| ratio(a, b).map_or("–".into(), |r| format!("{r:.2}")))
            .collect();
        let _ = writeln!(
            md,
            "| {label} {arrow} | {unit} | {} | {} |",
            cells.join(" | "),
            ratio_cells.join(" | ")
        );
        let values: serde_json::Map<String, Value> = per_mode
            .iter()
            .map(|(m, v)| (m.to_string(), json!({"median": median(v), "samples": v})))
            .collect();
        let ratios: serde_json::Map<String, Value> = RATIOS
            .iter()
            .map(|(a, b)| (format!("{a}/{b}"), json!(ratio(a, b))))
            .collect();
        metrics.push(json!({
            "id": id, "label": label, "unit": unit, "higher_is_better": higher,
            "values": values, "ratios": ratios,
        }));
    }
    let _ = writeln!(
        md,
        "\n↑ higher is better, ↓ lower is better. `–`: not applicable or failed. \
         Kernel CPU: system + softirq time of all CPUs from /proc/stat over the run, \
         the client's and servers' socket work included. Scale rows: each step on a \
         mode set up for it alone, removed after; every other row on the one-port state."
    );
    let _ = writeln!(
        md,
        "IPv6 rows: the same runs over IPv6 on the same state (2001:db8::/64 between client and \
         host), netpath-tc with its default IPv6 (NAT66) against ip6tables, which the iptables \
         mode loads beside iptables with the same ports, as Docker does (its column is \
         ip6tables there). netpath-xdp has none: its XDP program passes IPv6 to TC."
    );
    let _ = writeln!(
        md,
        "netpath-xdp runs with the client's TX checksum offload off (XDP cannot redirect \
         CHECKSUM_PARTIAL frames from a veth uplink; see modes.rs), which also disables TSO: \
         its TCP throughput is not comparable."
    );
    if plan.rounds > 1 && plan.scale.iter().any(|&n| n > 1000) {
        let _ = writeln!(
            md,
            "Scale steps above 1000 ports: first round only (one sample)."
        );
    }
    let _ = writeln!(md);
    md.push_str(&prog_cost_table(prog, plan.prog_iters));
    if !res.errors.is_empty() {
        let _ = writeln!(md, "\nFailures:\n");
        for e in &res.errors {
            let first = e.lines().next().unwrap_or_default();
            let _ = writeln!(md, "- {first}");
        }
    }
    let doc = json!({
        "machine": machine,
        "plan": {"quick": plan.quick, "rounds": plan.rounds, "secs": plan.secs,
                 "scale": plan.scale, "udp_rates": plan.udp_rates,
                 "prog_iters": plan.prog_iters, "conns": plan.conns},
        "modes": modes,
        "metrics": metrics,
        "prog_cost": prog,
        "netpath_stats": res.netpath_stats,
        "loadavg": res.loadavg,
        "errors": res.errors,
        "duration_s": took.as_secs_f64(),
    });
    let json_path = dir.join("bench.json");
    let text = serde_json::to_string_pretty(&doc).context("serializing bench.json")?;
    std::fs::write(&json_path, text).with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = dir.join("bench.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("\n{md}");
    println!(
        "bench: wrote {} and {}",
        md_path.display(),
        json_path.display()
    );
    chart(dir, &json_path);
    Ok(())
}

/// The PNG, by python3 + matplotlib. A missing plotter is a warning, not
/// a failure: the numbers are in the .md and .json.
fn chart(dir: &Path, json_path: &Path) {
    let script = dir.join("chart.py");
    let png = dir.join("bench.png");
    if let Err(e) = std::fs::write(&script, include_str!("chart.py")) {
        eprintln!("bench: warning: writing {}: {e}", script.display());
        return;
    }
    // The distribution's python first: pyenv shims may lack matplotlib.
    for py in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(py)
            .arg(&script)
            .arg(json_path)
            .arg(&png)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            println!("bench: wrote {}", png.display());
            return;
        }
    }
    eprintln!(
        "bench: warning: no chart (needs python3 with matplotlib: apt-get install python3-matplotlib)"
    );
}

fn machine() -> Value {
    let kernel = probe(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb / 1024.0 / 1024.0)
        })
        .unwrap_or(0.0);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let date = probe(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let iptables = probe(Command::new("iptables").arg("-V")).unwrap_or_default();
    let nft = probe(Command::new("nft").arg("-v")).unwrap_or_default();
    let summary =
        format!("{cpus} vCPU ({cpu_model}), {mem_gib:.0} GiB, kernel {kernel}, {iptables}, {nft}");
    json!({"kernel": kernel, "cpus": cpus, "mem_gib": mem_gib, "cpu_model": cpu_model,
           "date": date, "iptables": iptables, "nft": nft, "summary": summary})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_rows_take_their_twins_labels_after_every_ipv4_row() {
        let (label, unit, higher) = describe("masq_conn_rate_v6");
        assert_eq!(
            label,
            "IPv6: masquerade: container -> outside connections/s"
        );
        assert_eq!((unit, higher), ("conn/s", true));
        assert_eq!(
            describe("scale_conn_1000").0,
            "connections/s to the last of 1000 more published ports"
        );
        let mut ids = [
            "cpu_conn_v6",
            "conn_rate_v6",
            "flows_map_mib",
            "conn_rate",
            "udp_pps_50000",
        ];
        ids.sort_by_key(|id| order(id));
        assert_eq!(
            ids,
            [
                "conn_rate",
                "udp_pps_50000",
                "flows_map_mib",
                "conn_rate_v6",
                "cpu_conn_v6"
            ]
        );
    }
}
