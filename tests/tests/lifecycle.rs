//! The datapath's life outside the agent: restarts that keep every connection
//! (by hand and by the supervisor), `status` as a health check, pins of
//! another version refused, full tables and exhausted SNAT ranges that
//! drop and count instead of breaking, concurrent CLI calls, bpftool views.
use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Stdio},
    thread,
    time::{Duration, Instant},
};

use netpath_tests::{Lab, Place, Server, udp_request_from};

/// A long-lived TCP connection to a `Server::tcp_echo`, driven line by line.
struct Stream {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// What the server said on connect: the source "ip:port" it saw.
    greeting: String,
}

const STREAM_PY: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
f = s.makefile("rb")
print(f.readline().decode().strip(), flush=True)
for line in sys.stdin:
    s.sendall(line.encode())
    print(f.readline().decode().strip(), flush=True)
"#;

impl Stream {
    fn connect(place: impl Into<Place>, addr: &str, port: u16) -> Self {
        let mut child = place
            .into()
            .command("python3")
            .args(["-u", "-c", STREAM_PY, addr, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn stream client");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut greeting = String::new();
        stdout.read_line(&mut greeting).expect("greeting");
        assert!(!greeting.is_empty(), "connection to {addr}:{port} failed");
        Self {
            child,
            stdin,
            stdout,
            greeting: greeting.trim().to_string(),
        }
    }

    /// Sends a line on the same connection and returns the echo ("" when the
    /// connection is gone).
    fn roundtrip(&mut self, msg: &str) -> String {
        writeln!(self.stdin, "{msg}").expect("write to client");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read echo");
        line.trim().to_string()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.counter(name)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[test]
fn killing_the_agent_and_starting_it_again_keeps_every_connection() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);

    // A masqueraded connection: container → outside.
    let outside_server = Server::tcp_echo(&lab.outside, "0.0.0.0", 0);
    let mut masq = Stream::connect(lab.container(&a), Lab::OUTSIDE_IP, outside_server.port());
    assert!(
        masq.greeting.starts_with(&format!("{}:", Lab::HOST_IP)),
        "{}",
        masq.greeting
    );
    // A connection through a published port: outside → container.
    let inside_server = Server::tcp_echo(lab.container(&a), "0.0.0.0", 7000);
    lab.netpath(&["publish", "add", &a, "17000:7000"])
        .expect_ok("publish");
    let mut dnat = Stream::connect(&lab.outside, Lab::HOST_IP, 17000);
    assert!(
        dnat.greeting.starts_with(&format!("{}:", Lab::OUTSIDE_IP)),
        "{}",
        dnat.greeting
    );
    assert_eq!(masq.roundtrip("before"), "before");
    assert_eq!(dnat.roundtrip("before"), "before");

    lab.kill_agent();
    assert_eq!(
        masq.roundtrip("no agent"),
        "no agent",
        "the pinned datapath runs on alone"
    );
    assert_eq!(dnat.roundtrip("no agent"), "no agent");

    lab.up_ok(&[]);
    assert_eq!(masq.roundtrip("adopted"), "adopted");
    assert_eq!(dnat.roundtrip("adopted"), "adopted");
    // Still the very same connections.
    assert_eq!(outside_server.clients().len(), 1);
    assert_eq!(inside_server.clients().len(), 1);
}

#[test]
fn pins_of_another_layout_are_reported_not_reused() {
    let lab = Lab::new();
    let foreign = format!("/sys/fs/bpf/netpath/{}/v0", lab.instance());
    std::fs::create_dir_all(&foreign).expect("fake old pin dir");
    let out = lab.up(&[]);
    out.expect_fail("up over pins of another version");
    assert!(out.stderr.contains("another netpath version"), "{out}");
    std::fs::remove_dir(&foreign).expect("remove fake pin dir");
}

#[test]
fn a_full_conntrack_table_drops_new_flows_counted_and_recovers() {
    let lab = Lab::new();
    lab.up_ok(&["--conntrack-size", "4"]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let echo = Server::udp_echo(&lab.outside, "0.0.0.0", 0);
    // The budget of four flows is IPv4's alone, or with IPv6 on three
    // quarters of it (IPv6 has the rest of the memory).
    let capacity = lab.netpath_json(&["stats"])["conntrack_capacity"]
        .as_u64()
        .expect("conntrack_capacity");
    assert!(matches!(capacity, 3 | 4), "{capacity}");
    let last = 31000 + capacity as u16;
    for src in 31001..=last {
        udp_request_from(lab.container(&a), src, Lab::OUTSIDE_IP, echo.port(), "x")
            .expect_ok("a flow that fits");
    }
    let full = udp_request_from(
        lab.container(&a),
        last + 1,
        Lab::OUTSIDE_IP,
        echo.port(),
        "x",
    );
    assert!(!full.success(), "one flow more than the table holds");
    assert!(counter(&lab, "drop_conntrack_full") >= 1);
    let stats = lab.netpath_json(&["stats"]);
    assert_eq!(stats["conntrack_entries"], capacity);
    // Existing flows still work, and freeing entries lets new flows in.
    udp_request_from(lab.container(&a), 31001, Lab::OUTSIDE_IP, echo.port(), "x")
        .expect_ok("existing flow");
    lab.netpath(&["container", "rm", &a])
        .expect_ok("rm flushes the container's flows");
    let b = lab.container_name("b");
    lab.container_add_ok(&b, &[]);
    udp_request_from(lab.container(&b), 31006, Lab::OUTSIDE_IP, echo.port(), "x")
        .expect_ok("room again");
    lab.netpath(&["status"]).expect_ok("the instance is fine");
}

#[test]
fn an_exhausted_snat_range_drops_counted_and_the_rest_keeps_working() {
    let lab = Lab::new();
    // No share: one container may take the whole (tiny) range here.
    lab.up_ok(&[
        "--snat-ports",
        "40000-40001",
        "--snat-ports-per-container",
        "0",
    ]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let echo = Server::udp_echo(&lab.outside, "0.0.0.0", 0);
    let mut seen = Vec::new();
    for src in [32001, 32002] {
        let out = udp_request_from(lab.container(&a), src, Lab::OUTSIDE_IP, echo.port(), "x");
        out.expect_ok("a port left");
        seen.push(out.stdout.lines().next().unwrap_or_default().to_string());
    }
    let ports: Vec<&str> = seen
        .iter()
        .map(|s| s.rsplit(':').next().unwrap_or_default())
        .collect();
    assert_eq!(ports.len(), 2);
    assert!(
        ports.iter().all(|p| *p == "40000" || *p == "40001"),
        "{seen:?}"
    );
    let third = udp_request_from(lab.container(&a), 32003, Lab::OUTSIDE_IP, echo.port(), "x");
    assert!(!third.success(), "no SNAT port left for a third flow");
    assert!(counter(&lab, "drop_no_snat_port") >= 1);
    udp_request_from(lab.container(&a), 32001, Lab::OUTSIDE_IP, echo.port(), "x")
        .expect_ok("flows with a port go on");
}

#[test]
fn concurrent_publish_calls_end_consistent() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let distinct: Vec<bool> = thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let lab = &lab;
                let a = &a;
                s.spawn(move || {
                    lab.netpath(&["publish", "add", a, &format!("{}:80", 20000 + i)])
                        .success()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(
        distinct.iter().all(|ok| *ok),
        "every distinct port publishes once"
    );
    let same: Vec<(bool, String)> = thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let lab = &lab;
                let a = &a;
                s.spawn(move || {
                    let out = lab.netpath(&["publish", "add", a, "21000:80"]);
                    (out.success(), out.stderr)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(
        same.iter().filter(|(ok, _)| *ok).count(),
        1,
        "exactly one wins"
    );
    assert!(
        same.iter()
            .filter(|(ok, _)| !ok)
            .all(|(_, err)| err.contains("already published"))
    );
    let listed = lab.netpath_json(&["publish", "ls"]);
    assert_eq!(listed.as_array().expect("list").len(), 21);
    // The map itself, as bpftool sees it (with field names from BTF).
    let pin = format!(
        "/sys/fs/bpf/netpath/{}/v{}/PORTS",
        lab.instance(),
        netpath_common::LAYOUT_VERSION
    );
    let dump = Place::here().exec("bpftool", &["-j", "map", "dump", "pinned", &pin]);
    dump.expect_ok("bpftool map dump");
    let entries = dump.json();
    let entries = entries.as_array().expect("bpftool list");
    assert_eq!(entries.len(), 21, "publish ls and the PORTS map agree");
    assert!(
        entries[0]["formatted"]["key"]["host_port"].is_number(),
        "BTF gives named fields: {}",
        entries[0]
    );
    let _ = Duration::ZERO;
}

#[test]
fn tcp_states_are_tracked_and_the_agent_collects_expired_flows() {
    let lab = Lab::new();
    lab.up_ok(&[
        "--ct-timeout",
        "unreplied=1",
        "--ct-timeout",
        "replied=1",
        "--ct-timeout",
        "time_wait=1",
    ]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let tcp = Server::tcp_echo(&lab.outside, "0.0.0.0", 0);
    let state_of = |lab: &Lab, dport: u16| -> Option<String> {
        lab.netpath_json(&["flows", "--proto", "tcp", "--port", &dport.to_string()])
            .as_array()
            .expect("list")
            .first()
            .map(|f| f["state"].as_str().unwrap_or_default().to_string())
    };
    {
        let mut stream = Stream::connect(lab.container(&a), Lab::OUTSIDE_IP, tcp.port());
        assert_eq!(stream.roundtrip("hi"), "hi");
        assert_eq!(state_of(&lab, tcp.port()).as_deref(), Some("established"));
    } // Dropping the client closes it: FIN (or RST) from both ends.
    // A closed port answers a SYN with RST.
    let refused = netpath_tests::curl(
        lab.container(&a),
        &[&format!("http://{}:9/", Lab::OUTSIDE_IP)],
    );
    assert!(!refused.success());
    assert_eq!(
        state_of(&lab, 9).as_deref(),
        Some("closed"),
        "RST closes the flow"
    );

    // UDP: the agent's GC removes the flow once its (1 s) timeout passes.
    // There is no event for "removed": poll with a bounded deadline.
    let echo = Server::udp_echo(&lab.outside, "0.0.0.0", 0);
    udp_request_from(lab.container(&a), 35000, Lab::OUTSIDE_IP, echo.port(), "x").expect_ok("udp");
    let udp_flows = |lab: &Lab| {
        lab.netpath_json(&["flows", "--proto", "udp"])
            .as_array()
            .expect("list")
            .len()
    };
    assert_eq!(udp_flows(&lab), 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while udp_flows(&lab) != 0 {
        assert!(
            Instant::now() < deadline,
            "GC did not remove an expired UDP flow"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let bad = lab.netpath(&["up", "--ct-timeout", "forever=1"]);
    assert!(
        !bad.success() && bad.stderr.contains("--ct-timeout"),
        "{bad}"
    );
}

netpath_tests::with_each_accel!(
    status_is_healthy_after_up_and_names_a_detached_program_or_a_lost_map_pin
);

/// With `--accel xdp` the XDP programs on the uplink and on the containers'
/// `eth0` are among the hooks checked.
fn status_is_healthy_after_up_and_names_a_detached_program_or_a_lost_map_pin(accel: &str) {
    let lab = Lab::new();
    lab.up_ok(&["--accel", accel]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let status = lab.status();
    status.expect_ok("status of a healthy instance");
    let view = status.json();
    assert_eq!(view["healthy"], true, "{view}");
    assert_eq!(view["problems"], serde_json::json!([]), "{view}");
    assert_eq!(view["agent_restarts"], 0, "{view}");
    assert!(view["agent_started_at"].is_string(), "{view}");

    // Take the container's program off its veth, as an admin's slip would:
    // its pinned link where TC has links (tcx), else its clsact filter.
    let veth = format!("np-{a}");
    let pins = format!(
        "/sys/fs/bpf/netpath/{}/v{}",
        lab.instance(),
        netpath_common::LAYOUT_VERSION
    );
    let link = format!("{pins}/link_tc_{veth}_ingress");
    if Path::new(&link).exists() {
        std::fs::remove_file(&link).expect("removing the veth's link pin");
    } else {
        lab.host
            .exec(&["tc", "filter", "del", "dev", &veth, "ingress"])
            .expect_ok("deleting the veth's clsact filter");
    }
    let status = lab.status();
    assert_eq!(
        status.code(),
        Some(1),
        "a detached program: unhealthy\n{status}"
    );
    let reason = status.stderr.trim();
    assert!(
        !reason.contains('\n')
            && reason.contains("unhealthy")
            && reason.contains(&format!(
                "from_container is not attached (tc ingress of {veth})"
            )),
        "one line naming the program and its hook\n{status}"
    );
    assert_eq!(status.json()["healthy"], false);

    // The IPv6 socket hooks are checked as the IPv4 ones are.
    std::fs::remove_file(format!("{pins}/link_sock_connect6")).expect("removing a cgroup link pin");
    let status = lab.status();
    assert!(
        status
            .stdout
            .contains("sock_connect6 is not attached (cgroup connect6 of "),
        "{status}"
    );

    std::fs::remove_file(format!("{pins}/FLOW_COUNTS")).expect("removing a map pin");
    let status = lab.status();
    assert_eq!(status.code(), Some(1), "{status}");
    let problems = status.json()["problems"].clone();
    assert_eq!(problems.as_array().map(Vec::len), Some(3), "{problems}");
    assert!(
        problems[0]
            .as_str()
            .is_some_and(|p| p.starts_with("map FLOW_COUNTS is not pinned")),
        "{problems}"
    );
    lab.down().expect_ok("down of a damaged instance");
    lab.assert_clean();
}

#[test]
fn the_supervisor_restarts_a_killed_agent_status_counts_it_and_connections_stay() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let server = Server::tcp_echo(&lab.outside, "0.0.0.0", 0);
    let mut stream = Stream::connect(lab.container(&a), Lab::OUTSIDE_IP, server.port());
    assert_eq!(stream.roundtrip("before"), "before");
    let first = lab.kill_agent();
    let status = lab.poll_status("the agent started again, healthy", |status| {
        let view = status.json();
        status.success()
            && view["agent_restarts"] == 1
            && view["agent_pid"]
                .as_i64()
                .is_some_and(|pid| pid != i64::from(first))
    });
    let view = status.json();
    assert_eq!(view["healthy"], true, "{view}");
    assert!(view["agent_started_at"].is_string(), "{view}");
    assert_eq!(
        stream.roundtrip("after"),
        "after",
        "the connection survives"
    );
    assert_eq!(server.clients().len(), 1, "the very same connection");
}
