//! End to end: what the agent and `flows --watch` let people observe, with
//! real traffic through a published port.
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netpath_tests::{Lab, Server, curl, http_source};

/// Bound on waiting for a line a process is expected to print.
const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// A lab with netpath up (`extra` passed to `up`), a container running an
/// HTTP server on 8080, published on `host_port`. Returns the container name.
fn lab_with_published_web(extra: &[&str], host_port: u16) -> (Lab, String, Server) {
    let lab = Lab::new();
    lab.up_ok(extra);
    let web = lab.container_name("w");
    lab.container_add_ok(&web, &[]);
    let server = Server::http(lab.container(&web), "0.0.0.0", 8080);
    lab.netpath(&["publish", "add", &web, &format!("{host_port}:8080")])
        .expect_ok("publish");
    (lab, web, server)
}

fn published_url(port: u16) -> String {
    format!("http://{}:{port}/", Lab::HOST_IP)
}

/// A child process whose stdout and stderr are read line by line on
/// threads; killed by pid (SIGKILL) on drop if still running.
struct Watched {
    child: Option<Child>,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

fn line_reader(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Watched {
    fn spawn(lab: &Lab, args: &[&str]) -> Self {
        let mut cmd = lab.netpath_cmd();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning netpath");
        let stdout = line_reader(child.stdout.take().expect("piped stdout"));
        let stderr = line_reader(child.stderr.take().expect("piped stderr"));
        Self {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// The first line of `rx` that satisfies `pred`, within `LINE_TIMEOUT`;
    /// every line read is kept in `seen` for the failure message.
    fn next_matching(
        rx: &mpsc::Receiver<String>,
        seen: &mut Vec<String>,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).ok()?;
            seen.push(line.clone());
            if pred(&line) {
                return Some(line);
            }
        }
    }

    /// SIGTERM, then the exit status (within `LINE_TIMEOUT`, else SIGKILL
    /// and `None`).
    fn terminate(mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(LINE_TIMEOUT) {
            Ok(status) => status.ok(),
            Err(_) => {
                // SAFETY: as above; the waiter thread reaps it.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                None
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn watch_json_streams_opened_and_closed_events_of_a_published_port() {
    let (lab, web, _server) = lab_with_published_web(&[], 18080);
    let web_ip = lab.container_ip(&web).expect("container address");
    let watch = Watched::spawn(&lab, &["--json", "flows", "--watch", "--port", "18080"]);
    let mut seen = Vec::new();
    Watched::next_matching(&watch.stderr, &mut seen, |l| l.contains("watching"))
        .unwrap_or_else(|| panic!("the watcher never said it was ready: {seen:?}"));

    let src =
        http_source(&lab.outside, &published_url(18080)).expect("curl via the published port");
    let sport: u64 = src
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the server saw ip:port");
    let ours = |l: &str, event: &str| {
        let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
        v["event"] == event && v["original"]["sport"] == sport
    };
    let mut seen = Vec::new();
    let opened = Watched::next_matching(&watch.stdout, &mut seen, |l| ours(l, "opened"))
        .unwrap_or_else(|| panic!("no opened event for source port {sport}; got {seen:?}"));
    let opened: serde_json::Value = serde_json::from_str(&opened).expect("JSON");
    assert_eq!(opened["proto"], "tcp");
    assert_eq!(opened["kind"], "dnat");
    assert_eq!(opened["original"]["src"], Lab::OUTSIDE_IP);
    assert_eq!(opened["original"]["dst"], Lab::HOST_IP);
    assert_eq!(opened["original"]["dport"], 18080);
    assert_eq!(opened["translated"]["dst"], web_ip.as_str());
    assert_eq!(opened["translated"]["dport"], 8080);
    assert!(
        opened["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{opened}"
    );
    // HTTP/1.0: the server closes, both sides FIN, the flow is done.
    Watched::next_matching(&watch.stdout, &mut seen, |l| ours(l, "closed"))
        .unwrap_or_else(|| panic!("no closed event for source port {sport}; got {seen:?}"));

    let status = watch.terminate().expect("the watcher stops on SIGTERM");
    assert!(
        status.success(),
        "the watcher exits cleanly on SIGTERM: {status}"
    );
}

#[test]
fn watch_filters_by_port_in_text_lines() {
    let (lab, web, _server) = lab_with_published_web(&[], 18082);
    lab.netpath(&["publish", "add", &web, "18083:8080"])
        .expect_ok("publish a second port");
    let watch = Watched::spawn(&lab, &["flows", "--watch", "--port", "18083"]);
    let mut seen = Vec::new();
    Watched::next_matching(&watch.stderr, &mut seen, |l| l.contains("watching"))
        .unwrap_or_else(|| panic!("watcher not ready: {seen:?}"));
    // Events leave the ring in order: were 18082's let through, its opened
    // line would come before 18083's.
    http_source(&lab.outside, &published_url(18082)).expect("curl via 18082");
    http_source(&lab.outside, &published_url(18083)).expect("curl via 18083");
    let first = Watched::next_matching(&watch.stdout, &mut seen, |_| true)
        .unwrap_or_else(|| panic!("no event line: {seen:?}"));
    assert!(
        first.contains(" opened ") && first.contains(" tcp ") && first.contains(" dnat "),
        "{first}"
    );
    assert!(
        first.contains(":18083 ") && !first.contains(":18082"),
        "{first}"
    );
}

/// `[2026-05-20T10:11:12.345Z LEVEL target] message`: env_logger's format
/// with millisecond timestamps.
fn timestamped(line: &str, level: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let b = rest.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    b.len() > 25
        && digits(0..4)
        && b[4] == b'-'
        && b[10] == b'T'
        && digits(11..13)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
        && rest[24..].trim_start().starts_with(level)
}

#[test]
fn metrics_endpoint_serves_counters_and_published_port_traffic() {
    const METRICS: &str = "127.0.0.1:9477";
    let (lab, _web, _server) = lab_with_published_web(&["--metrics", METRICS], 18081);
    for _ in 0..3 {
        http_source(&lab.outside, &published_url(18081)).expect("curl via the published port");
    }
    let scrape = curl(&lab.host, &[&format!("http://{METRICS}/metrics")]);
    scrape.expect_ok("scraping the agent's metrics");
    let text = &scrape.stdout;
    let value = |sample: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    };
    for family in [
        "# TYPE netpath_packets_total counter",
        "# TYPE netpath_drops_total counter",
        "# TYPE netpath_conntrack_entries gauge",
        "# TYPE netpath_conntrack_capacity gauge",
        "# TYPE netpath_published_port_packets_total counter",
        "# TYPE netpath_published_port_bytes_total counter",
        "# HELP netpath_published_port_packets_total ",
    ] {
        assert!(text.contains(family), "no {family:?} in\n{text}");
    }
    assert!(
        value("netpath_drops_total{reason=\"spoofed_source\"}").is_some(),
        "{text}"
    );
    assert!(
        value("netpath_conntrack_capacity").is_some_and(|c| c > 0),
        "{text}"
    );
    assert!(
        value("netpath_conntrack_entries").is_some_and(|c| c >= 3),
        "{text}"
    );
    let port = |unit: &str, dir: &str| {
        value(&format!(
            "netpath_published_port_{unit}_total{{port=\"18081\",proto=\"tcp\",direction=\"{dir}\"}}"
        ))
    };
    // Three connections: at least SYN, ACK, request, ACK of the answer, FIN each.
    assert!(
        port("packets", "original").is_some_and(|p| p >= 12),
        "{text}"
    );
    assert!(port("packets", "reply").is_some_and(|p| p >= 6), "{text}");
    assert!(port("bytes", "reply").is_some_and(|b| b > 0), "{text}");
    assert!(
        value("netpath_packets_total{verdict=\"redirect_peer\"}").is_some_and(|p| p > 0),
        "DNAT to the container redirects into its netns\n{text}"
    );

    let missing = curl(
        &lab.host,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{METRICS}/"),
        ],
    );
    assert_eq!(missing.stdout_trim(), "404", "{missing}");

    // The default level: timestamped INFO lines, no DEBUG ones.
    wait_for_log_line(&lab, "timestamped INFO line", |l| timestamped(l, "INFO"));
    let log = lab.agent_log();
    assert!(!log.lines().any(|l| timestamped(l, "DEBUG")), "{log}");
}

#[test]
fn metrics_address_in_use_fails_up_cleanly() {
    let lab = Lab::new();
    // Something in H already listens there.
    let _taken = Server::http(&lab.host, "127.0.0.1", 9478);
    let out = lab.up(&["--metrics", "127.0.0.1:9478"]);
    out.expect_fail("up with a taken metrics address");
    assert!(out.stderr.contains("127.0.0.1:9478"), "{out}");
    Lab::assert_no_leftovers(lab.instance());
}

/// Waits (bounded) for a line of the agent log that satisfies `pred`. The
/// agent writes some lines after `up --detach` returned, and nothing signals
/// when a line reaches the file: bounded polling of the file.
#[track_caller]
fn wait_for_log_line(lab: &Lab, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + LINE_TIMEOUT;
    loop {
        let log = lab.agent_log();
        if log.lines().any(&pred) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in the agent log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn log_level_debug_writes_timestamped_lines_and_forwards_datapath_records() {
    let lab = Lab::new();
    lab.up_ok(&["--log-level", "debug"]);
    wait_for_log_line(&lab, "timestamped DEBUG line", |l| timestamped(l, "DEBUG"));
    wait_for_log_line(&lab, "timestamped INFO line", |l| timestamped(l, "INFO"));

    // A container sending from an address that is not its own: the datapath
    // drops it and writes an aya-log record, which the agent forwards.
    let c = lab.container_name("s");
    lab.container_add_ok(&c, &[]);
    const SPOOFED: &str = "10.77.250.250";
    lab.container(&c)
        .exec(
            "ip",
            &["addr", "add", &format!("{SPOOFED}/32"), "dev", "eth0"],
        )
        .expect_ok("adding a second address in the container");
    let ping = lab.container(&c).exec(
        "ping",
        &["-c", "1", "-W", "1", "-I", SPOOFED, Lab::OUTSIDE_IP],
    );
    assert!(
        !ping.success(),
        "a spoofed source must not get through\n{ping}"
    );
    let wanted = format!("spoofed source {SPOOFED}");
    wait_for_log_line(&lab, "forwarded datapath record", |l| {
        timestamped(l, "DEBUG") && l.contains(&wanted)
    });
}

/// A route or neighbour change in the host netns invalidates the next hops
/// flows cached: the agent bumps the route generation the datapath checks.
#[test]
fn route_and_neighbour_changes_bump_the_route_generation() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let generation = || {
        lab.netpath_json(&["stats"])["route_generation"]
            .as_u64()
            .expect("stats has route_generation")
    };
    let before = generation();
    assert!(before > 0, "the loader sets a generation");
    let wait_for_bump = |after: u64, what: &str| -> u64 {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let now = generation();
            if now > after {
                return now;
            }
            assert!(Instant::now() < deadline, "{what}: generation still {now}");
            // Nothing signals the agent's update: bounded polling.
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    lab.host
        .ip(&[
            "neigh",
            "replace",
            "198.18.0.99",
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            Lab::UPLINK,
        ])
        .expect_ok("a neighbour entry");
    let after_neigh = wait_for_bump(before, "after a neighbour change");
    lab.host
        .ip(&["route", "add", "198.20.0.0/16", "via", Lab::OUTSIDE_IP])
        .expect_ok("a route");
    wait_for_bump(after_neigh, "after a route change");
}
