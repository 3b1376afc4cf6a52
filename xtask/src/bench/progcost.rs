//! Program cost: nanoseconds per packet of each datapath program through
//! BPF_PROG_TEST_RUN, against a program that only passes the packet.
//!
//! The object is loaded privately (maps pinned in a bpffs directory of our
//! own) on a thread that sits in a netns of its own, where veths and a
//! permanent neighbour give `bpf_fib_lookup` a deterministic answer - the
//! approach of tests/tests/packets.rs.
//!
//! Each measurement is many runs with `repeat = 1` on a fresh copy of the
//! frame: the translating programs rewrite the skb in place, so a kernel-side
//! `repeat = N` would time the rewritten packet (a different path) N-1 times.
//! The kernel's per-run timer overhead is the same for every case and cancels
//! in "minus no-op".

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap};
use aya::programs::{SchedClassifier, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader, TestRun};
use netpath_common::{Config, Endpoint, IPPROTO_TCP, PortKey, PortTarget, names};
use serde_json::{Value, json};

use super::exec::run_bounded;

const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const CONTAINER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const CONTAINER_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 1];
const GATEWAY_MAC: [u8; 6] = [0x02, 0x9a, 0, 0, 0, 1];
const OUTSIDE_MAC: [u8; 6] = [0x02, 0x0e, 0, 0, 0, 2];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const PUBLISHED: u16 = 8080;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// One timed case.
struct Case {
    name: &'static str,
    ns: f64,
}

/// Runs every case `iters` times; JSON rows `{program, case, ns, ns_over_noop}`.
pub fn measure(object: &Path, iters: usize, scratch: &Path) -> Result<Value> {
    let ns = format!("npb-p-{}", crate::util::short_suffix());
    let _guard = NsGuard::create(&ns, scratch)?;
    let object = fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let ns_path = PathBuf::from("/run/netns").join(&ns);
    // A thread of its own: setns affects only the calling thread, and the
    // rest of the bench must stay where it is.
    let cases = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<Case>> {
            enter_netns(&ns_path)?;
            run_cases(&object, iters)
        })
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

struct NsGuard {
    name: String,
}

impl NsGuard {
    fn create(name: &str, scratch: &Path) -> Result<Self> {
        let ip = |args: &str| -> Result<()> {
            let mut cmd = std::process::Command::new("ip");
            cmd.args(args.split_whitespace());
            run_bounded(&mut cmd, std::time::Duration::from_secs(10), scratch).map(drop)
        };
        ip(&format!("netns add {name}"))?;
        let guard = Self {
            name: name.to_string(),
        };
        let mac = OUTSIDE_MAC.map(|b| format!("{b:02x}")).join(":");
        for cmd in [
            "link add c0 type veth peer name c1".to_string(),
            "link add u0 type veth peer name u1".to_string(),
            "link set c0 up".to_string(),
            "link set c1 up".to_string(),
            "link set u0 up".to_string(),
            "link set u1 up".to_string(),
            format!("addr add {HOST_IP}/24 dev u0"),
            format!("addr add {GATEWAY_IP}/16 dev c0"),
            format!("neigh replace {OUTSIDE_IP} lladdr {mac} dev u0 nud permanent"),
        ] {
            ip(&format!("-n {name} {cmd}"))?;
        }
        let mut sysctl = super::exec::in_ns(name, "sysctl");
        sysctl.args(["-qw", "net.ipv4.conf.all.forwarding=1"]);
        run_bounded(&mut sysctl, std::time::Duration::from_secs(10), scratch)?;
        Ok(guard)
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn enter_netns(path: &Path) -> Result<()> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a valid fd; affects only this thread, which ends after use.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("no interface {name}"),
        i => Ok(i),
    }
}

fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// A private bpffs pin directory, removed with everything in it.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Bench {
    ebpf: Ebpf,
    uplink: u32,
    container: u32,
    iters: usize,
}

impl Bench {
    /// Runs a classifier once on `frame` arriving on `ifindex`.
    fn tc(
        &mut self,
        prog: &str,
        ifindex: u32,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(u32, u64)> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(prog)
            .with_context(|| format!("no program {prog}"))?
            .try_into()?;
        // struct __sk_buff with only ifindex set (offset 40).
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        out.resize(frame.len() + 256, 0);
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, r.duration.as_nanos() as u64))
    }

    fn xdp(&mut self, prog: &str, frame: &[u8]) -> Result<u64> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(prog)
            .with_context(|| format!("no program {prog}"))?
            .try_into()?;
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })?;
        Ok(r.duration.as_nanos() as u64)
    }

    /// Median ns of `iters` runs; `frame(i)` gives the i-th frame (distinct
    /// frames time the first-packet path, one frame the established one).
    fn time_tc(
        &mut self,
        prog: &str,
        ifindex: u32,
        frame: impl Fn(usize) -> Vec<u8>,
    ) -> Result<f64> {
        let mut out = Vec::new();
        let mut ns = Vec::with_capacity(self.iters);
        for i in 0..self.iters {
            ns.push(self.tc(prog, ifindex, &frame(i), &mut out)?.1);
        }
        Ok(median_u64(&mut ns))
    }
}

fn median_u64(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0) as f64
}

fn run_cases(object: &[u8], iters: usize) -> Result<Vec<Case>> {
    let pins = PinDir(
        PathBuf::from("/sys/fs/bpf").join(format!("npbench-{}", crate::util::short_suffix())),
    );
    fs::create_dir_all(&pins.0).with_context(|| format!("creating {}", pins.0.display()))?;
    // As netpath's loader does: the cheaper clock where the kernel has it.
    let coarse_clock = u8::from(
        aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 11, 0)),
    );
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.0)
        .override_global("HAS_COARSE_CLOCK", &coarse_clock, true)
        .load(object)
        .context("loading the eBPF object")?;
    let (uplink, container) = (ifindex("u0")?, ifindex("c0")?);
    fill_maps(&mut ebpf, uplink, container)?;
    for name in [
        names::PROG_FROM_CONTAINER,
        names::PROG_FROM_UPLINK,
        names::PROG_TO_UPLINK,
    ] {
        let p: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        p.load().with_context(|| format!("loading {name}"))?;
    }
    for name in [names::PROG_XDP_UPLINK, names::PROG_XDP_PASS] {
        let p: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        p.load().with_context(|| format!("loading {name}"))?;
    }
    let mut b = Bench {
        ebpf,
        uplink,
        container,
        iters,
    };
    let (up, ct) = (b.uplink, b.container);
    let (fc, fu, tu) = (
        names::PROG_FROM_CONTAINER,
        names::PROG_FROM_UPLINK,
        names::PROG_TO_UPLINK,
    );
    let mut cases = Vec::new();
    let mut add = |name, ns| cases.push(Case { name, ns });

    // No object program returns TC_ACT_OK without looking at the packet, so
    // the TC baseline is a non-IP frame (ARP) through from_uplink's first
    // check; for XDP the object has the pass-through xdp_pass.
    let arp = arp_frame();
    add(
        "tc no-op: ARP through from_uplink",
        b.time_tc(fu, up, |_| arp.clone())?,
    );
    let miss = tcp(OUTSIDE_IP, HOST_IP, 5555, 22, ACK).eth(OUTSIDE_MAC, HOST_MAC);
    add(
        "from_uplink: host traffic, no flow/port (pass)",
        b.time_tc(fu, up, |_| miss.clone())?,
    );
    // Distinct source ports: every run is a new flow (DNAT + conntrack insert).
    let new_in = |i: usize| {
        tcp(
            OUTSIDE_IP,
            HOST_IP,
            1024 + (i % 30000) as u16,
            PUBLISHED,
            SYN,
        )
        .eth(OUTSIDE_MAC, HOST_MAC)
    };
    add(
        "from_uplink: published port, new flow (DNAT + CT insert)",
        b.time_tc(fu, up, new_in)?,
    );

    // An established published flow: SYN in, SYN-ACK out, then ACKs.
    let mut out = Vec::new();
    let syn = tcp(OUTSIDE_IP, HOST_IP, 33333, PUBLISHED, SYN).eth(OUTSIDE_MAC, HOST_MAC);
    b.tc(fu, up, &syn, &mut out)?;
    let synack =
        tcp(CONTAINER_IP, OUTSIDE_IP, 80, 33333, SYN | ACK).eth(CONTAINER_MAC, GATEWAY_MAC);
    b.tc(fc, ct, &synack, &mut out)?;
    let ack_in = tcp(OUTSIDE_IP, HOST_IP, 33333, PUBLISHED, ACK).eth(OUTSIDE_MAC, HOST_MAC);
    add(
        "from_uplink: published port, established (DNAT)",
        b.time_tc(fu, up, |_| ack_in.clone())?,
    );
    let ack_out = tcp(CONTAINER_IP, OUTSIDE_IP, 80, 33333, ACK).eth(CONTAINER_MAC, GATEWAY_MAC);
    add(
        "from_container: reply of published flow (reverse DNAT)",
        b.time_tc(fc, ct, |_| ack_out.clone())?,
    );

    // Masquerade: new flows (SNAT port allocation), then an established one.
    let new_out = |i: usize| {
        tcp(CONTAINER_IP, OUTSIDE_IP, 1024 + (i % 30000) as u16, 81, SYN)
            .eth(CONTAINER_MAC, GATEWAY_MAC)
    };
    add(
        "from_container: masquerade, new flow (SNAT alloc + CT insert)",
        b.time_tc(fc, ct, new_out)?,
    );
    let syn = tcp(CONTAINER_IP, OUTSIDE_IP, 34444, 80, SYN).eth(CONTAINER_MAC, GATEWAY_MAC);
    b.tc(fc, ct, &syn, &mut out)?;
    // The SNAT port the program chose: TCP source port of its output.
    let nat_port = out
        .get(34..36)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .context("masquerade output too short")?;
    let synack = tcp(OUTSIDE_IP, HOST_IP, 80, nat_port, SYN | ACK).eth(OUTSIDE_MAC, HOST_MAC);
    b.tc(fu, up, &synack, &mut out)?;
    let ack = tcp(CONTAINER_IP, OUTSIDE_IP, 34444, 80, ACK).eth(CONTAINER_MAC, GATEWAY_MAC);
    add(
        "from_container: masquerade, established (SNAT)",
        b.time_tc(fc, ct, |_| ack.clone())?,
    );
    let reply = tcp(OUTSIDE_IP, HOST_IP, 80, nat_port, ACK).eth(OUTSIDE_MAC, HOST_MAC);
    add(
        "from_uplink: masquerade reply (reverse SNAT)",
        b.time_tc(fu, up, |_| reply.clone())?,
    );
    let host_out = tcp(HOST_IP, OUTSIDE_IP, 5555, 22, ACK).eth(HOST_MAC, OUTSIDE_MAC);
    add(
        "to_uplink: host traffic (pass)",
        b.time_tc(tu, up, |_| host_out.clone())?,
    );

    let mut xdp = |prog: &str, frame: &[u8]| -> Result<f64> {
        let mut ns = (0..b.iters)
            .map(|_| b.xdp(prog, frame))
            .collect::<Result<Vec<_>>>()?;
        Ok(median_u64(&mut ns))
    };
    add("xdp no-op: xdp_pass", xdp(names::PROG_XDP_PASS, &ack_in)?);
    add(
        "xdp_uplink: published port, established",
        xdp(names::PROG_XDP_UPLINK, &ack_in)?,
    );
    Ok(cases)
}

fn fill_maps(ebpf: &mut Ebpf, uplink: u32, container: u32) -> Result<()> {
    let mut config: Array<_, Config> =
        Array::try_from(ebpf.map_mut(names::CONFIG).context("no CONFIG map")?)?;
    config.set(
        0,
        Config {
            host_ip: wire(HOST_IP),
            gateway_ip: wire(GATEWAY_IP),
            subnet_addr: wire(Ipv4Addr::new(10, 77, 0, 0)),
            subnet_mask: wire(Ipv4Addr::new(255, 255, 0, 0)),
            uplink_ifindex: uplink,
            bridge_ifindex: 0,
            netns_cookie: 0,
            snat_port_min: 40000,
            snat_port_max: 49999,
            flags: 0,
            gateway_mac: GATEWAY_MAC,
            probe_port: 0,
        },
        0,
    )?;
    // As the loader does: flows may cache next hops from here on.
    let mut route_gen: Array<_, u32> =
        Array::try_from(ebpf.map_mut(names::ROUTE_GEN).context("no ROUTE_GEN map")?)?;
    route_gen.set(0, 1, 0)?;
    let mut endpoints: HashMap<_, u32, Endpoint> =
        HashMap::try_from(ebpf.map_mut(names::ENDPOINTS).context("no ENDPOINTS map")?)?;
    endpoints.insert(
        wire(CONTAINER_IP),
        Endpoint {
            ifindex: container,
            mac: CONTAINER_MAC,
            network_id: 0,
        },
        0,
    )?;
    let mut ports: HashMap<_, PortKey, PortTarget> =
        HashMap::try_from(ebpf.map_mut(names::PORTS).context("no PORTS map")?)?;
    ports.insert(
        PortKey {
            host_ip: 0,
            host_port: PUBLISHED.to_be(),
            proto: IPPROTO_TCP,
            _pad: 0,
        },
        PortTarget {
            container_ip: wire(CONTAINER_IP),
            container_port: 80u16.to_be(),
            _pad: 0,
        },
        0,
    )?;
    Ok(())
}

/// An IPv4/TCP packet without payload, checksums filled in.
struct Tcp(Vec<u8>);

fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Tcp {
    let mut ip = vec![0u8; 40];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = IPPROTO_TCP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(sum(&ip[..20]));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut ip[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let pseudo = sum(&src.octets()) + sum(&dst.octets()) + u32::from(IPPROTO_TCP) + 20;
    let c = checksum(pseudo + sum(t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    Tcp(ip)
}

impl Tcp {
    fn eth(self, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + self.0.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend_from_slice(&self.0);
        f
    }
}

fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&OUTSIDE_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&OUTSIDE_MAC);
    f.extend_from_slice(&OUTSIDE_IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&HOST_IP.octets());
    f
}

fn sum(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum()
}

fn checksum(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}
