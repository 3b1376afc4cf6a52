//! The load generators (wrk, iperf3), their output parsers, and the
//! kernel CPU time a run cost.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::exec::{in_ns, run_bounded};
use super::topo::socket;

/// Slack on top of a tool's own duration before we kill it.
const SLACK: Duration = Duration::from_secs(20);

pub struct Wrk {
    /// Completed requests: with `Connection: close`, connections.
    pub requests: u64,
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub socket_errors: u64,
}

/// wrk from `ns` against `http://addr:port/`. `close` sends
/// `Connection: close`, so every request is a new TCP connection.
pub fn wrk(
    ns: &str,
    (addr, port): (&str, u16),
    conns: u32,
    close: bool,
    secs: u64,
    scratch: &Path,
) -> Result<Wrk> {
    let mut cmd = in_ns(ns, "wrk");
    cmd.args(["-t1", "--latency", "--timeout", "2s"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"));
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{}/", socket(addr, port)));
    let out = run_bounded(&mut cmd, Duration::from_secs(secs) + SLACK, scratch)?;
    parse_wrk(&out).with_context(|| format!("parsing wrk output:\n{out}"))
}

fn parse_wrk(out: &str) -> Result<Wrk> {
    let (mut rps, mut requests) = (None, None);
    let (mut p50, mut p99, mut errors) = (None, None, 0);
    for line in out.lines().map(str::trim) {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Requests/sec:"), Some(v)) => rps = v.parse::<f64>().ok(),
            // "9000 requests in 1.00s, 1.00MB read"
            (Some(n), Some("requests")) => requests = n.parse::<u64>().ok(),
            (Some("50%"), Some(v)) => p50 = parse_duration_us(v),
            (Some("99%"), Some(v)) => p99 = parse_duration_us(v),
            (Some("Socket"), Some("errors:")) => {
                // "connect 0, read 0, write 0, timeout 0"
                errors = line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    let requests_per_s = rps.context("no Requests/sec line")?;
    if requests_per_s <= 0.0 {
        bail!("wrk completed no request");
    }
    Ok(Wrk {
        requests: requests.context("no \"N requests in\" line")?,
        requests_per_s,
        p50_us: p50.context("no 50% line")?,
        p99_us: p99.context("no 99% line")?,
        socket_errors: errors,
    })
}

/// "812.00us", "1.23ms", "2.00s" -> microseconds.
fn parse_duration_us(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    let scale = match unit {
        "ns" => 1e-3,
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    Some(num * scale)
}

pub enum Iperf {
    /// TCP, `reverse`: the server sends.
    Tcp { reverse: bool },
    /// 64-byte datagrams paced at `pps` packets/s (`-b`).
    Udp { pps: u32 },
}

/// UDP payload per datagram.
const UDP_PAYLOAD: u32 = 64;

pub struct IperfRun {
    /// TCP: Gbit/s received.
    pub gbps: f64,
    /// TCP: bytes received.
    pub bytes: f64,
    /// UDP: datagrams the client sent.
    pub packets_sent: f64,
    /// How long the client sent.
    pub seconds: f64,
}

/// iperf3 client in `ns`.
pub fn iperf(
    ns: &str,
    (addr, port): (&str, u16),
    kind: Iperf,
    secs: u64,
    scratch: &Path,
) -> Result<IperfRun> {
    let mut cmd = in_ns(ns, "iperf3");
    cmd.args(["-J", "--connect-timeout", "3000", "-c", addr])
        .args(["-p", &port.to_string(), "-t", &secs.to_string()]);
    match kind {
        Iperf::Tcp { reverse: true } => {
            cmd.arg("-R");
        }
        Iperf::Tcp { reverse: false } => {}
        Iperf::Udp { pps } => {
            // -b counts payload bits.
            let bits = u64::from(pps) * u64::from(UDP_PAYLOAD) * 8;
            cmd.args([
                "-u",
                "-l",
                &UDP_PAYLOAD.to_string(),
                "-b",
                &bits.to_string(),
            ]);
        }
    }
    // An iperf3 server closes and reopens its listening socket between
    // tests, and is not listening yet right after it starts: a refused
    // connect is retried (bounded), anything else is an error.
    let mut attempts = 0;
    let v: Value = loop {
        attempts += 1;
        let out = run_bounded(&mut cmd, Duration::from_secs(secs) + SLACK, scratch)?;
        let v: Value = serde_json::from_str(&out).context("iperf3 -J output is not JSON")?;
        match v.get("error").and_then(Value::as_str) {
            Some(err) if err.contains("unable to connect") && attempts < 5 => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Some(err) => bail!("iperf3: {err}"),
            None => break v,
        }
    };
    let (sent, received) = (&v["end"]["sum_sent"], &v["end"]["sum_received"]);
    let seconds = sent["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .context("no end.sum_sent.seconds")?;
    Ok(IperfRun {
        gbps: received["bits_per_second"]
            .as_f64()
            .context("no end.sum_received.bits_per_second")?
            / 1e9,
        bytes: received["bytes"]
            .as_f64()
            .context("no end.sum_received.bytes")?,
        // Only UDP counts datagrams.
        packets_sent: sent["packets"].as_f64().unwrap_or(0.0),
        seconds,
    })
}

/// /proc/stat counts in USER_HZ, which is 100 on every Linux architecture.
const USER_HZ: f64 = 100.0;

/// Kernel CPU time so far, in seconds: system + softirq of all CPUs
/// (/proc/stat's `cpu` line). Machine-wide: the client's and servers'
/// socket work is in it too, alike in every mode.
fn kernel_cpu_s() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    // cpu user nice system idle iowait irq softirq ...
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    let (system, softirq) = (ticks.get(2), ticks.get(6));
    match (system, softirq) {
        (Some(system), Some(softirq)) => Ok((system + softirq) / USER_HZ),
        _ => bail!("short cpu line in /proc/stat: {line}"),
    }
}

/// Runs `f` and returns its result with the kernel CPU seconds spent
/// meanwhile ([`kernel_cpu_s`]).
pub fn with_kernel_cpu<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let before = kernel_cpu_s()?;
    let out = f()?;
    Ok((out, kernel_cpu_s()? - before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() {
        let out = "Running 1s test @ http://198.18.0.1:8080/\n  1 threads and 16 connections\n  \
                   Latency Distribution\n     50%  812.00us\n     75%    1.00ms\n     90%    1.20ms\n     \
                   99%    2.50ms\n  9000 requests in 1.00s, 1.00MB read\n  \
                   Socket errors: connect 0, read 3, write 0, timeout 1\nRequests/sec:   8999.50\n";
        let w = parse_wrk(out).expect("parse");
        assert_eq!(w.requests, 9000);
        assert_eq!(w.requests_per_s, 8999.5);
        assert_eq!(w.p50_us, 812.0);
        assert_eq!(w.p99_us, 2500.0);
        assert_eq!(w.socket_errors, 4);
    }
}
