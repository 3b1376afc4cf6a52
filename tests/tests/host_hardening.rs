//! Host-side hardening, end to end: what an admin or a second `up` on the
//! same host can do to an instance, and what an instance may do to the host.
//! Each test attacks one way and checks that the instance and the host come
//! out whole.
use std::thread;

use netpath_tests::Lab;

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
