//! Program cost: nanoseconds per packet of each datapath program through
//! BPF_PROG_TEST_RUN, against a program that only passes the packet.
//!
//! The programs run in the harness of the packet tests
//! ([`netpath_tests::testrun`]): the object loaded privately in a netns of
//! its own, where veths and a permanent neighbour give `bpf_fib_lookup` a
//! deterministic answer.
//!
//! Each measurement is many runs with `repeat = 1` on a fresh copy of the
//! frame: the translating programs rewrite the skb in place, so a kernel-side
//! `repeat = N` would time the rewritten packet (a different path) N-1 times.
//! The kernel's per-run timer overhead is the same for every case and cancels
//! in "minus no-op".

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use aya::util::KernelVersion;
use netpath_common::Proto;
use netpath_tests::packet::{Frame, L4, TCP_ACK, TCP_SYN};
use netpath_tests::testrun::{
    C1_IP, C1_MAC, GATEWAY_MAC, HOST_IP, HOST_MAC, OUTSIDE_IP, OUTSIDE_MAC, RunOutput, TcProgram,
    TestDatapath, XdpProgram,
};
use serde_json::{Value, json};

/// The one container the cases talk to, and its published port.
const CONTAINER_IP: Ipv4Addr = C1_IP;
const CONTAINER_MAC: [u8; 6] = C1_MAC;
const PUBLISHED: u16 = 8080;
/// The container's client port in the masquerade cases: in the SNAT range
/// (`SNAT_RANGE`), as netpath sets containers' ephemeral ports.
const CLIENT_PORT: u16 = 44444;

/// One timed case.
struct Case {
    name: &'static str,
    ns: f64,
}

/// Runs every case `iters` times; JSON rows `{case, ns, ns_over_noop}`.
pub fn measure(object: &Path, iters: usize) -> Result<Value> {
    let object = fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    // A thread of its own: the harness moves the calling thread into its
    // netns, and the rest of the bench must stay where it is.
    let cases = std::thread::scope(|s| {
        s.spawn(|| run_cases(&object, iters))
            .join()
            .map_err(|_| anyhow!("the program-cost thread panicked"))?
    })?;
    let noop = |prefix: &str| {
        cases
            .iter()
            .find(|c| c.name.starts_with(prefix) && c.name.contains("no-op"))
            .map(|c| c.ns)
            .unwrap_or(0.0)
    };
    let (tc_noop, xdp_noop) = (noop("tc"), noop("xdp"));
    let rows: Vec<Value> = cases
        .iter()
        .map(|c| {
            let base = if c.name.starts_with("xdp") {
                xdp_noop
            } else {
                tc_noop
            };
            json!({"case": c.name, "ns": c.ns, "ns_over_noop": c.ns - base})
        })
        .collect();
    Ok(Value::Array(rows))
}

/// Median ns of `iters` runs; `run(i)` runs the i-th time.
fn median_ns(iters: usize, mut run: impl FnMut(usize) -> Result<RunOutput>) -> Result<f64> {
    let mut ns = (0..iters)
        .map(|i| run(i).map(|out| out.duration))
        .collect::<Result<Vec<Duration>>>()?;
    ns.sort_unstable();
    Ok(ns.get(ns.len() / 2).map_or(0.0, |d| d.as_nanos() as f64))
}

/// A TCP segment without payload.
fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Frame {
    Frame::new(
        src,
        dst,
        L4::Tcp {
            sport,
            dport,
            flags,
        },
    )
    .payload(&[])
}

fn from_outside(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    tcp(OUTSIDE_IP, HOST_IP, sport, dport, flags)
        .macs(OUTSIDE_MAC, HOST_MAC)
        .bytes()
}

fn from_container(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    tcp(CONTAINER_IP, OUTSIDE_IP, sport, dport, flags)
        .macs(CONTAINER_MAC, GATEWAY_MAC)
        .bytes()
}

fn run_cases(object: &[u8], iters: usize) -> Result<Vec<Case>> {
    // As netpath's loader does: the cheaper clock where the kernel has it.
    let has_coarse_clock =
        u8::from(KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 11, 0)));
    let mut dp = TestDatapath::load(object, has_coarse_clock)?;
    dp.add_endpoint(CONTAINER_IP, CONTAINER_MAC)?;
    dp.publish(PUBLISHED, CONTAINER_IP, 80, Proto::Tcp)?;
    dp.load_xdp_programs()?;
    let time_tc =
        |prog, frame: &dyn Fn(usize) -> Vec<u8>| median_ns(iters, |i| dp.run_tc(prog, &frame(i)));
    let (fc, fu, tu) = (
        TcProgram::FromContainer,
        TcProgram::FromUplink,
        TcProgram::ToUplink,
    );
    let mut cases = Vec::new();
    let mut add = |name, ns| cases.push(Case { name, ns });

    // The baselines: tc_pass and xdp_pass return without reading the
    // packet. The frame is the one the first measured cases see.
    let miss = from_outside(5555, 22, TCP_ACK);
    add(
        "tc no-op: tc_pass",
        time_tc(TcProgram::Pass, &|_| miss.clone())?,
    );
    add(
        "from_uplink: host traffic, no flow/port (pass)",
        time_tc(fu, &|_| miss.clone())?,
    );
    // Distinct source ports: every run is a new flow (DNAT + conntrack insert).
    add(
        "from_uplink: published port, new flow (DNAT + CT insert)",
        time_tc(fu, &|i| {
            from_outside(1024 + (i % 30000) as u16, PUBLISHED, TCP_SYN)
        })?,
    );

    // An established published flow: SYN in, SYN-ACK out, then ACKs.
    dp.from_uplink(&from_outside(33333, PUBLISHED, TCP_SYN))?;
    dp.from_container(&from_container(80, 33333, TCP_SYN | TCP_ACK))?;
    let ack_in = from_outside(33333, PUBLISHED, TCP_ACK);
    add(
        "from_uplink: published port, established (DNAT)",
        time_tc(fu, &|_| ack_in.clone())?,
    );
    let ack_out = from_container(80, 33333, TCP_ACK);
    add(
        "from_container: reply of published flow (reverse DNAT)",
        time_tc(fc, &|_| ack_out.clone())?,
    );

    // Masquerade: new flows (SNAT port allocation), then an established one.
    add(
        "from_container: masquerade, new flow (SNAT alloc + CT insert)",
        time_tc(fc, &|i| {
            from_container(1024 + (i % 30000) as u16, 81, TCP_SYN)
        })?,
    );
    // A port of the SNAT range, where a container's ephemeral ports are.
    let syn = dp.from_container(&from_container(CLIENT_PORT, 80, TCP_SYN))?;
    // The SNAT port the program chose.
    let nat_port = syn.parsed().sport();
    dp.from_uplink(&from_outside(80, nat_port, TCP_SYN | TCP_ACK))?;
    let ack = from_container(CLIENT_PORT, 80, TCP_ACK);
    add(
        "from_container: masquerade, established (SNAT)",
        time_tc(fc, &|_| ack.clone())?,
    );
    let reply = from_outside(80, nat_port, TCP_ACK);
    add(
        "from_uplink: masquerade reply (reverse SNAT)",
        time_tc(fu, &|_| reply.clone())?,
    );
    let host_out = tcp(HOST_IP, OUTSIDE_IP, 5555, 22, TCP_ACK)
        .macs(HOST_MAC, OUTSIDE_MAC)
        .bytes();
    add(
        "to_uplink: host traffic (pass)",
        time_tc(tu, &|_| host_out.clone())?,
    );

    let time_xdp = |prog, frame: &[u8]| median_ns(iters, |_| dp.run_xdp(prog, frame));
    add("xdp no-op: xdp_pass", time_xdp(XdpProgram::Pass, &ack_in)?);
    add(
        "xdp_uplink: published port, established",
        time_xdp(XdpProgram::Uplink, &ack_in)?,
    );
    Ok(cases)
}
