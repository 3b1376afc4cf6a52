//! Host-side hardening, end to end: what an admin or a second `up` on the
//! same host can do to an instance, and what an instance may do to the host.
//! Each test attacks one way and checks that the instance and the host come
//! out whole.
use std::{
    thread,
    time::{Duration, Instant},
};

use netpath_tests::{Lab, Server, udp_request_from};

#[test]
fn two_racing_ups_of_a_new_instance_leave_one_whole_instance() {
    let lab = Lab::new();
    // Each round is a fresh instance of the same name, raced for again.
    for round in 0..3 {
        let outs = thread::scope(|s| {
            let handles: Vec<_> = (0..2).map(|_| s.spawn(|| lab.up(&[]))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("up thread"))
                .collect::<Vec<_>>()
        });
        let winners = outs.iter().filter(|o| o.success()).count();
        assert_eq!(
            winners,
            1,
            "round {round}: exactly one `up` wins\n{}\n{}\n--- agent log\n{}",
            outs[0],
            outs[1],
            lab.agent_log()
        );
        let loser = outs.iter().find(|o| !o.success()).expect("a loser");
        assert!(!loser.timed_out, "{loser}");
        assert_eq!(
            loser.stderr.trim().lines().count(),
            1,
            "round {round}: the loser says why in one line\n{loser}"
        );
        assert!(
            loser.stderr.contains("already up"),
            "round {round}: the loser names the running instance\n{loser}"
        );
        let log = lab.agent_log();
        assert!(
            log.contains(" up: bridge ") && !log.contains("already up"),
            "round {round}: the loser wrote into the winner's log\n{log}"
        );
        let status = lab.netpath_json(&["status"]);
        assert_eq!(status["agent_alive"], true, "round {round}: {status}");
        lab.down().expect_ok("down after the race");
        lab.assert_clean();
    }
}

/// Reads a sysctl of H (`net/ipv4/...`).
fn host_sysctl(lab: &Lab, key: &str) -> String {
    let out = lab.host.exec(&["cat", &format!("/proc/sys/{key}")]);
    out.expect_ok("reading a sysctl of H");
    out.stdout.trim().to_owned()
}

fn set_host_sysctl(lab: &Lab, key: &str, value: &str) {
    let script = format!("echo '{value}' > /proc/sys/{key}");
    lab.host
        .exec(&["sh", "-c", &script])
        .expect_ok("setting a sysctl of H");
}

const RESERVED: &str = "net/ipv4/ip_local_reserved_ports";
const FORWARD: &str = "net/ipv4/ip_forward";

#[test]
fn up_merges_host_settings_reserves_published_ports_and_down_gives_back_exactly_its_own() {
    let lab = Lab::new();
    // The admin's own reservations, one inside netpath's SNAT range.
    set_host_sysctl(&lab, RESERVED, "5000,6000-6010,45000");
    set_host_sysctl(&lab, FORWARD, "0");

    lab.up_ok(&[]);
    assert_eq!(
        host_sysctl(&lab, RESERVED),
        "5000,6000-6010,40000-49999",
        "up adds its SNAT range to the admin's ports"
    );
    assert_eq!(host_sysctl(&lab, FORWARD), "1");

    let a = lab.container_name("a");
    lab.container_add_ok(&a, &["--publish", "9300:80"]);
    lab.netpath(&["publish", "add", &a, "9200:80", "6005:81/udp"])
        .expect_ok("publish");
    assert_eq!(
        host_sysctl(&lab, RESERVED),
        "5000,6000-6010,9200,9300,40000-49999",
        "published host ports are reserved while published"
    );
    lab.netpath(&["publish", "rm", "9200"])
        .expect_ok("unpublish");
    lab.netpath(&["publish", "rm", "6005/udp"])
        .expect_ok("unpublish the admin's port");
    assert_eq!(
        host_sysctl(&lab, RESERVED),
        "5000,6000-6010,9300,40000-49999",
        "an unpublished port is released, the admin's stays"
    );

    lab.down().expect_ok("down");
    lab.assert_clean();
    assert_eq!(
        host_sysctl(&lab, RESERVED),
        "5000,6000-6010,45000",
        "down gives back exactly what the admin had"
    );
    assert_eq!(host_sysctl(&lab, FORWARD), "0", "and ip_forward as it was");
}

#[test]
fn publishing_over_an_ipv6_or_dual_stack_listener_is_refused() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    // A dual-stack TCP listener on [::]:9100 and a UDP socket on [::]:9101.
    let script = "import socket, sys, time\n\
        t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n\
        t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
        t.bind(('::', 9100)); t.listen()\n\
        u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
        u.bind(('::', 9101))\n\
        print('ready', flush=True)\n\
        time.sleep(600)\n";
    let mut cmd = lab.host.place().command("python3");
    cmd.args(["-u", "-c", script])
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("python listener");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut ready,
    )
    .expect("listener ready");
    let _listener = KillOnDrop(child);
    assert_eq!(ready.trim(), "ready");

    for spec in ["9100:80", "9101:53/udp"] {
        let out = lab.netpath(&["publish", "add", &a, spec]);
        out.expect_fail("publishing a port a host IPv6 socket holds");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
        assert!(out.stderr.contains("in use"), "{out}");
    }
    let listed = lab.netpath_json(&["publish", "ls"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
}

/// A child process killed (by pid) and reaped on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a bare SYN from SRC:SPORT to DST:DPORT every 200 ms, forever, the
/// same tuple each time (a SYN flood's retransmissions). The source is an
/// address nobody owns, so the SYN-ACKs go nowhere and nobody answers RST.
const SYN_SENDER_PY: &str = r#"
import socket, struct, sys, time
src, dst, sport, dport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
while True:
    s.sendto(ip + tcp, (dst, 0))
    time.sleep(0.2)
"#;

#[test]
fn a_half_open_flow_expires_by_its_age_however_often_it_is_refreshed() {
    let lab = Lab::new();
    lab.up_ok(&["--ct-timeout", "syn=2"]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let _server = Server::tcp_echo(lab.container(&a), "0.0.0.0", 7000);
    lab.netpath(&["publish", "add", &a, "17100:7000"])
        .expect_ok("publish");
    let mut sender = lab.outside.place().command("python3");
    sender.args([
        "-c",
        SYN_SENDER_PY,
        "198.18.0.77",
        Lab::HOST_IP,
        "41000",
        "17100",
    ]);
    lab.spawn(&mut sender);

    // (state, age) of the flood's flow, if it is in the table.
    let flow = || -> Option<(String, f64)> {
        let flows = lab.netpath_json(&["flows", "--proto", "tcp", "--port", "17100"]);
        let f = flows.as_array()?.first()?.clone();
        Some((f["state"].as_str()?.to_owned(), f["age_secs"].as_f64()?))
    };
    // syn=2 plus a GC interval (2 s) and slack: older means nothing expires it.
    let limit = 6.0;
    let mut seen = Vec::new();
    let mut renewed = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !renewed {
        if let Some((state, age)) = flow() {
            assert!(
                age <= limit,
                "a handshake that never completes lives on: {state} for {age} s (seen {seen:?})"
            );
            // A younger flow after an older one: the first was removed
            // while SYNs kept refreshing it.
            renewed = seen
                .last()
                .is_some_and(|(_, last): &(String, f64)| *last >= 2.0 && age < *last);
            seen.push((state, age));
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(
        seen.iter().any(|(state, _)| state == "syn_recv"),
        "the container answered the SYNs: {seen:?}"
    );
    assert!(renewed, "the half-open flow was never removed: {seen:?}");
}

fn agent_pid(lab: &Lab) -> Option<i32> {
    std::fs::read_to_string(format!("/run/netpath/{}/agent.pid", lab.instance()))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn a_killed_detached_agent_is_started_again_and_its_flows_stay() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let echo = Server::udp_echo(&lab.outside, "0.0.0.0", 0);
    udp_request_from(lab.container(&a), 36000, Lab::OUTSIDE_IP, echo.port(), "x")
        .expect_ok("a flow through the datapath");
    let udp_flows = || {
        lab.netpath_json(&["flows", "--proto", "udp"])
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(udp_flows(), 1);

    let first = agent_pid(&lab).expect("the agent's pid file");
    // SAFETY: kill(2) on the agent netpath started for this lab.
    assert_eq!(unsafe { libc::kill(first, libc::SIGKILL) }, 0);
    // Long: a new agent has the kernel verify every program again, which
    // takes minutes in an emulated VM of the matrix.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        // Unhealthy (exit 1) until the agent runs again.
        let status = lab.status().json();
        let pid = status["agent_pid"].as_i64();
        if status["agent_alive"] == true && pid.is_some_and(|p| p != i64::from(first)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed agent (pid {first}) was not started again: {status}\n--- log\n{}",
            lab.agent_log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(udp_flows(), 1, "the flow outlived its agent");
    let log = lab.agent_log();
    assert!(
        log.contains(&format!("agent pid {first} died")),
        "the restart is in the log\n{log}"
    );
    lab.down()
        .expect_ok("down stops the agent and its supervisor");
    lab.assert_clean();
}
