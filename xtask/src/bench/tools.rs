//! The load generators (wrk, iperf3) and their output parsers.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::exec::{in_ns, run_bounded};

/// Slack on top of a tool's own duration before we kill it.
const SLACK: Duration = Duration::from_secs(20);

pub struct Wrk {
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
    cmd.arg(format!("http://{addr}:{port}/"));
    let out = run_bounded(&mut cmd, Duration::from_secs(secs) + SLACK, scratch)?;
    parse_wrk(&out).with_context(|| format!("parsing wrk output:\n{out}"))
}

fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut rps = None;
    let (mut p50, mut p99, mut errors) = (None, None, 0);
    for line in out.lines().map(str::trim) {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Requests/sec:"), Some(v)) => rps = v.parse::<f64>().ok(),
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

pub struct Udp {
    pub delivered_pps: f64,
    pub loss_pct: f64,
}

pub enum Iperf {
    /// TCP, `reverse`: the server sends.
    Tcp { reverse: bool },
    /// UDP flood of 64-byte datagrams at an unlimited rate.
    Udp,
}

/// iperf3 client in `ns`; TCP returns Gbit/s received, UDP the delivery.
pub fn iperf(
    ns: &str,
    (addr, port): (&str, u16),
    kind: Iperf,
    secs: u64,
    scratch: &Path,
) -> Result<(f64, Option<Udp>)> {
    let mut cmd = in_ns(ns, "iperf3");
    cmd.args(["-J", "--connect-timeout", "3000", "-c", addr])
        .args(["-p", &port.to_string(), "-t", &secs.to_string()]);
    match kind {
        Iperf::Tcp { reverse: true } => {
            cmd.arg("-R");
        }
        Iperf::Tcp { reverse: false } => {}
        Iperf::Udp => {
            cmd.args(["-u", "-l", "64", "-b", "0"]);
        }
    }
    let udp = matches!(kind, Iperf::Udp);
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
    let end = &v["end"];
    if udp {
        // iperf 3.12 puts the receiver's counts (fetched from the server) in
        // end.sum; newer versions have end.sum_received.
        let sum = if end["sum_received"]["packets"].is_u64() {
            &end["sum_received"]
        } else {
            &end["sum"]
        };
        let packets = sum["packets"].as_f64().context("no UDP packet count")?;
        let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
        let seconds = sum["seconds"]
            .as_f64()
            .filter(|s| *s > 0.0)
            .context("no seconds")?;
        let delivered = (packets - lost).max(0.0);
        let loss_pct = if packets > 0.0 {
            100.0 * lost / packets
        } else {
            100.0
        };
        let udp = Udp {
            delivered_pps: delivered / seconds,
            loss_pct,
        };
        return Ok((udp.delivered_pps, Some(udp)));
    }
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second")?;
    Ok((bps / 1e9, None))
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
        assert_eq!(w.requests_per_s, 8999.5);
        assert_eq!(w.p50_us, 812.0);
        assert_eq!(w.p99_us, 2500.0);
        assert_eq!(w.socket_errors, 4);
    }
}
