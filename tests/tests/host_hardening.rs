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
