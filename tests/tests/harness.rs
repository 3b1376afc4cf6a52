//! The harness itself, without netpath: topology, servers, clients, cleanup.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use netpath_tests::{
    Lab, Netns, Server, curl, http_source, ping, ping_ok, udp_request_from, udp_source, unique_name,
};

#[test]
fn unique_names_are_short_and_distinct() {
    let names: HashSet<String> = (0..1000).map(|_| unique_name("np")).collect();
    assert_eq!(names.len(), 1000);
    assert!(names.iter().all(|n| n.len() == 8 && n.starts_with("np")));
    assert!(unique_name("abcdef").len() <= 12);
}

#[test]
fn lab_host_reaches_outside() {
    let lab = Lab::new();
    ping(&lab.host, Lab::OUTSIDE_IP).expect_ok("H pings O");
    ping(&lab.host, Lab::REMOTE_IP).expect_ok("H pings O's remote address via the default route");
    ping(&lab.outside, Lab::HOST_IP).expect_ok("O pings H");
    // Nothing answers at an address outside the lab: the ping wrapper can fail.
    assert!(!ping_ok(&lab.host, "198.18.0.99"));
    // The namespaces are really separate.
    assert!(
        !lab.host
            .exec(&["ip", "link", "show", Lab::OUTSIDE_IF])
            .success()
    );
    assert!(
        lab.host
            .exec(&["ip", "link", "show", Lab::UPLINK])
            .success()
    );
}

#[test]
fn http_server_sees_host_uplink_address() {
    let lab = Lab::new();
    let server = Server::http(&lab.outside, "0.0.0.0", 0);
    let url = format!("http://{}:{}/", Lab::OUTSIDE_IP, server.port());
    let src = http_source(&lab.host, &url).expect("curl from H to O");
    let (ip, port) = src.rsplit_once(':').expect("body is ip:port");
    assert_eq!(ip, Lab::HOST_IP);
    assert!(port.parse::<u16>().expect("port") > 0);
    assert_eq!(server.wait_clients(1, Duration::from_secs(5)), vec![src]);
    assert_eq!(server.last_client_ip().as_deref(), Some(Lab::HOST_IP));

    let big = curl(
        &lab.host,
        &[&format!(
            "http://{}:{}/size/100000",
            Lab::OUTSIDE_IP,
            server.port()
        )],
    );
    big.expect_ok("large GET");
    assert_eq!(big.stdout.len(), 100_000);

    // A closed port fails (curl exit 7), so the wrapper can report failure.
    let closed = curl(&lab.host, &[&format!("http://{}:1/", Lab::OUTSIDE_IP)]);
    closed.expect_fail("curl to a closed port");
    assert_eq!(closed.code(), Some(7), "{closed}");
}

#[test]
fn udp_echo_sees_host_uplink_address() {
    let lab = Lab::new();
    let server = Server::udp_echo(&lab.outside, "0.0.0.0", 0);
    let out = udp_request_from(&lab.host, 40123, Lab::REMOTE_IP, server.port(), "payload-1");
    out.expect_ok("udp request");
    assert_eq!(out.stdout, format!("{}:40123\npayload-1", Lab::HOST_IP));
    assert_eq!(
        udp_source(&lab.host, Lab::OUTSIDE_IP, server.port())
            .expect("reply")
            .split(':')
            .next(),
        Some(Lab::HOST_IP)
    );
    assert_eq!(server.wait_clients(2, Duration::from_secs(5)).len(), 2);
    // No server on that port: the request times out and fails.
    udp_request_from(&lab.outside, 0, Lab::HOST_IP, 9, "x").expect_fail("udp to nothing");
}

#[test]
fn tcp_echo_server_echoes() {
    let lab = Lab::new();
    let server = Server::tcp_echo(&lab.host, Lab::HOST_IP, 0);
    let out = lab.outside.exec(&[
        "python3",
        "-c",
        "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); s.sendall(b'abc'); s.shutdown(socket.SHUT_WR); d=b''\nwhile True:\n    c=s.recv(100)\n    if not c: break\n    d+=c\nsys.stdout.write(d.decode())",
        Lab::HOST_IP,
        &server.port().to_string(),
    ]);
    out.expect_ok("tcp client");
    let mut lines = out.stdout.lines();
    assert!(
        lines
            .next()
            .expect("source line")
            .starts_with(&format!("{}:", Lab::OUTSIDE_IP))
    );
    assert_eq!(lines.next(), Some("abc"));
}

#[test]
fn host_cmd_in_cgroup_runs_in_the_lab_cgroup() {
    let lab = Lab::new();
    let leaf = lab
        .cgroup_path()
        .file_name()
        .expect("cgroup dir name")
        .to_string_lossy()
        .into_owned();
    let out = netpath_tests::run(lab.host_cmd_in_cgroup("cat").arg("/proc/self/cgroup"));
    out.expect_ok("cat /proc/self/cgroup");
    let v2 = out
        .stdout
        .lines()
        .find(|l| l.starts_with("0::"))
        .expect("cgroup2 line");
    assert!(
        v2.ends_with(&format!("/{leaf}")),
        "not in the lab cgroup: {v2}"
    );
    // It also runs in H.
    let out = netpath_tests::run(
        lab.host_cmd_in_cgroup("ip")
            .args(["link", "show", Lab::UPLINK]),
    );
    out.expect_ok("ip link in H");
    // Without the cgroup, it is not.
    let out = lab.host.exec(&["cat", "/proc/self/cgroup"]);
    assert!(!out.stdout.contains(&leaf), "{out}");
}

#[test]
fn netns_drop_kills_processes_and_deletes() {
    let ns = Netns::new("npt");
    let name = ns.name().to_string();
    // The child says when it is inside, so the drop can't race nsenter.
    let mut child = ns
        .command("sh")
        .args(["-c", "echo inside; exec sleep 1000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sleep in netns");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read readiness");
    assert_eq!(line.trim(), "inside");
    assert!(Path::new("/run/netns").join(&name).exists());
    drop(ns);
    assert!(!Path::new("/run/netns").join(&name).exists());
    let status = child.wait().expect("wait sleep");
    assert_eq!(status.signal(), Some(libc_sigkill()), "{status:?}");
}

fn libc_sigkill() -> i32 {
    9
}

#[test]
fn lab_drop_removes_everything() {
    let lab = Lab::new();
    let names = [lab.host.name().to_string(), lab.outside.name().to_string()];
    let cgroup = lab.cgroup_path().to_path_buf();
    let server = Server::http(&lab.outside, "0.0.0.0", 0);
    let pid = lab.spawn(lab.host_cmd_in_cgroup("sleep").arg("1000"));
    assert!(cgroup.exists());
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(server);
    drop(lab);
    for n in names {
        assert!(!Path::new("/run/netns").join(&n).exists(), "netns {n} left");
    }
    assert!(!cgroup.exists(), "cgroup {} left", cgroup.display());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty(), "process {pid} still exists: {stat}");
    Lab::assert_no_leftovers("never-created-instance");
}

#[test]
fn capture_sees_the_host_source_address() {
    let lab = Lab::new();
    let cap = netpath_tests::Capture::start(&lab.outside, Lab::OUTSIDE_IF, "icmp");
    ping(&lab.host, Lab::OUTSIDE_IP).expect_ok("ping");
    let lines = cap.stop();
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "{} > {}: ICMP echo request",
            Lab::HOST_IP,
            Lab::OUTSIDE_IP
        ))),
        "{lines:#?}"
    );
}
