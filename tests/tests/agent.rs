//! End to end: what the agent, `flows --watch` and `top` let people observe,
//! with real traffic through a published port.
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
    assert_eq!(opened["network"], "bridge", "the container's network");
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
        "netpath_conntrack_entries{family=\"ipv6\"} ",
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
        value("netpath_conntrack_capacity{family=\"ipv4\"}").is_some_and(|c| c > 0),
        "{text}"
    );
    assert!(
        value("netpath_conntrack_entries{family=\"ipv4\"}").is_some_and(|c| c >= 3),
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

#[test]
fn top_puts_the_flow_with_traffic_first_with_a_rate() {
    let (lab, web, _server) = lab_with_published_web(&[], 18084);
    // A finished flow, idle from now on.
    http_source(&lab.outside, &published_url(18084)).expect("curl via the published port");
    // A flow with a packet each way every second for as long as the test runs.
    let web_ip = lab.container_ip(&web).expect("container address");
    lab.spawn(
        lab.container(&web)
            .command("ping")
            .arg(Lab::REMOTE_IP)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );

    // Over 2 s, the ping flow sees at least one echo and its reply.
    let out = lab.netpath(&["top", "--iterations", "1", "--interval", "2"]);
    out.expect_ok("netpath top --iterations 1");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("flows ")),
        "{out}"
    );
    assert!(
        lines.get(1).is_some_and(|l| l.starts_with("PROTO")),
        "{out}"
    );
    let first: Vec<&str> = lines.get(2).unwrap_or(&"").split_whitespace().collect();
    // PROTO KIND ORIGINAL(3 words) TRANSLATED(3) STATE PKT/S BYTES/S PKTS BYTES
    assert_eq!(first.len(), 13, "{out}");
    assert_eq!(&first[..2], ["icmp", "masquerade"], "{out}");
    assert!(first[2].starts_with(&format!("{web_ip}:")), "{out}");
    assert_ne!(first[9], "0", "the ping flow has a packet rate\n{out}");
    let idle = lines
        .iter()
        .find(|l| l.contains(":18084 "))
        .unwrap_or_else(|| panic!("no row of the finished HTTP flow\n{out}"));
    assert_eq!(idle.split_whitespace().nth(9), Some("0"), "{out}");
    assert!(
        lines.iter().any(|l| l.starts_with("COUNTER ")),
        "no counters\n{out}"
    );

    let view = lab.netpath_json(&[
        "top",
        "-n",
        "1",
        "--interval",
        "2",
        "--sort",
        "bytes",
        "--limit",
        "1",
    ]);
    let flows = view["flows"].as_array().expect("flows");
    assert_eq!(flows.len(), 1, "{view}");
    assert_eq!(flows[0]["proto"], "icmp", "{view}");
    assert!(
        flows[0]["bytes_per_sec"].as_f64().is_some_and(|r| r > 0.0),
        "{view}"
    );
    assert_eq!(view["sort"], "bytes", "{view}");
}

/// A child process, killed by pid (and reaped) on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pseudo-terminal of 160×40 for a program under test; what the program
/// writes is collected on a thread.
struct Pty {
    master: std::fs::File,
    slave: std::fs::File,
    screen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Pty {
    fn open() -> Self {
        use std::os::fd::FromRawFd;
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 160,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: valid out-pointers; no name buffer, default termios.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two open descriptors we now own.
        let (master, slave) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                std::fs::File::from_raw_fd(slave),
            )
        };
        let screen = std::sync::Arc::<std::sync::Mutex<Vec<u8>>>::default();
        let mut reader = master.try_clone().expect("pty master fd");
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            // EIO once the last slave descriptor is closed.
            while let Ok(n @ 1..) = reader.read(&mut chunk) {
                sink.lock()
                    .expect("screen lock")
                    .extend_from_slice(&chunk[..n]);
            }
        });
        Self {
            master,
            slave,
            screen,
        }
    }

    fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().expect("pty slave fd"))
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().expect("screen lock")).into_owned()
    }

    /// The screen as a terminal would show it now. Enough of a terminal for
    /// ratatui: printable characters, cursor positioning (CSI row;col H)
    /// and clearing (CSI J); other sequences (colours, modes) change no text.
    fn text(&self) -> String {
        const ROWS: usize = 40;
        const COLS: usize = 160;
        let mut grid = vec![[' '; COLS]; ROWS];
        let (mut row, mut col) = (0, 0);
        let screen = self.screen();
        let mut chars = screen.chars();
        while let Some(c) = chars.next() {
            match c {
                '\x1b' => {
                    if chars.next() != Some('[') {
                        continue;
                    }
                    let mut params = String::new();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            match c {
                                'H' => {
                                    let mut at = params.split(';').map(|n| n.parse().unwrap_or(1));
                                    row = at.next().unwrap_or(1_usize).max(1) - 1;
                                    col = at.next().unwrap_or(1_usize).max(1) - 1;
                                }
                                'J' => grid = vec![[' '; COLS]; ROWS],
                                _ => {}
                            }
                            break;
                        }
                        params.push(c);
                    }
                }
                '\r' => col = 0,
                '\n' => row += 1,
                c if !c.is_control() => {
                    if row < ROWS && col < COLS {
                        grid[row][col] = c;
                    }
                    col += 1;
                }
                _ => {}
            }
        }
        grid.iter()
            .map(|line| line.iter().collect::<String>().trim_end().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `pred` holds for the terminal.
    #[track_caller]
    fn wait_until(&self, what: &str, pred: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + LINE_TIMEOUT;
        while !pred(self) {
            assert!(
                Instant::now() < deadline,
                "{what} never showed on the terminal:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the screen shows `words`.
    #[track_caller]
    fn wait_for(&self, words: &str) {
        self.wait_until(words, |pty| pty.text().contains(words));
    }

    fn press(&mut self, key: &str) {
        use std::io::Write;
        self.master
            .write_all(key.as_bytes())
            .expect("writing to the pty");
    }
}

#[test]
fn top_live_view_sorts_on_keys_and_quits_on_q() {
    let (lab, _web, _server) = lab_with_published_web(&[], 18085);
    http_source(&lab.outside, &published_url(18085)).expect("curl via the published port");
    let mut pty = Pty::open();
    let mut cmd = lab.netpath_cmd();
    cmd.args(["top", "--interval", "0.5"])
        .stdin(pty.stdio())
        .stdout(pty.stdio())
        .stderr(pty.stdio());
    let mut top = KillOnDrop(cmd.spawn().expect("spawning netpath top"));
    pty.wait_for("sorted by packets");
    pty.wait_for(":18085");
    pty.press("b");
    pty.wait_for("sorted by bytes");
    pty.press("s");
    pty.wait_for("sorted by source");
    pty.press("q");
    let child = &mut top.0;
    let deadline = Instant::now() + LINE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for netpath top") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "top did not quit on q:\n{}",
            pty.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}\n{}", pty.text());
    // It gave the terminal back: left the alternate screen.
    pty.wait_until("leaving the alternate screen", |pty| {
        pty.screen().contains("\x1b[?1049l")
    });
}
