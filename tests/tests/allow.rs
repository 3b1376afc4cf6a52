//! Published-port allow-lists (`--allow`): two outside sources (O's wire
//! address and an address on its lo), one admitted and one refused by each
//! list; the datapath counts what it refused, the admitted client shows its
//! own address to the container, and a bad prefix changes nothing.
use std::time::{Duration, Instant};

use netpath_tests::{Lab, Server, curl, http_source};

netpath_tests::with_each_accel!(an_allow_list_admits_its_sources_and_counts_the_refused);

/// The container's HTTP server port, published three times.
const SERVER_PORT: u16 = 80;

/// `drop_not_allowed`, 0 while the netpath under test has none.
fn refused(lab: &Lab) -> u64 {
    lab.counter("drop_not_allowed").unwrap_or(0)
}

/// Waits until `drop_not_allowed` passes `before` (the datapath counts in
/// softirq context, a moment after the sender gave up).
#[track_caller]
fn wait_refused_past(lab: &Lab, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused(lab) <= before {
        assert!(
            Instant::now() < deadline,
            "drop_not_allowed stayed at {before}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GETs `http://HOST_IP:port/` from O with source address `source`: the
/// source the server saw, or None when no connection was made.
fn get_from(lab: &Lab, source: &str, port: u16) -> Option<String> {
    let url = format!("http://{}:{port}/", Lab::HOST_IP);
    let out = curl(
        &lab.outside,
        &["--interface", source, "--connect-timeout", "2", &url],
    );
    out.success().then(|| out.stdout.trim().to_owned())
}

/// The `publish ls --json` entry of host port `port`.
#[track_caller]
fn listed(lab: &Lab, port: u16) -> serde_json::Value {
    let ls = lab.netpath_json(&["publish", "ls"]);
    ls.as_array()
        .and_then(|ls| ls.iter().find(|p| p["host"]["port"] == port).cloned())
        .unwrap_or_else(|| panic!("port {port} not in publish ls: {ls}"))
}

fn an_allow_list_admits_its_sources_and_counts_the_refused(accel: &str) {
    let lab = Lab::new();
    // A real wire: full checksums, as from a NIC (see nat.rs).
    lab.outside
        .exec(&["ethtool", "-K", Lab::OUTSIDE_IF, "tx", "off"])
        .expect_ok("checksums on the outside wire");
    lab.up_ok(&["--accel", accel]);
    let web = lab.container_name("w");
    let peer = lab.container_name("p");
    // 8080 admits O's wire address (and a prefix it is not in), 8081 only
    // the address on O's lo, 8082 everyone.
    let only_wire = format!("--allow={}", Lab::OUTSIDE_IP);
    lab.container_add_ok(
        &web,
        &["-p", "8080:80", &only_wire, "--allow", "203.0.113.0/24"],
    );
    lab.netpath(&["publish", "add", &web, "8081:80", "--allow", Lab::REMOTE_IP])
        .expect_ok("publish add --allow");
    lab.netpath(&["publish", "add", &web, "8082:80"])
        .expect_ok("publish add, open to all");
    lab.container_add_ok(&peer, &[]);
    let server = Server::http(lab.container(&web), "0.0.0.0", SERVER_PORT);

    for (served, (port, admitted, refused_source)) in [
        (8080, Lab::OUTSIDE_IP, Lab::REMOTE_IP),
        (8081, Lab::REMOTE_IP, Lab::OUTSIDE_IP),
    ]
    .into_iter()
    .enumerate()
    {
        let seen = get_from(&lab, admitted, port)
            .unwrap_or_else(|| panic!("{admitted} is on {port}'s list but got no answer"));
        assert!(
            seen.starts_with(&format!("{admitted}:")),
            "the container must see the client's own address, saw {seen}"
        );
        // The server logs a client after answering it: wait for this one.
        let clients = server.wait_clients(served + 1, Duration::from_secs(5));
        let last = clients
            .last()
            .and_then(|c| c.rsplit_once(':'))
            .map(|(ip, _)| ip);
        assert_eq!(last, Some(admitted), "{clients:?}");

        let before = refused(&lab);
        let port_refused_before = listed(&lab, port)["refused"].as_u64().unwrap_or(0);
        assert_eq!(
            get_from(&lab, refused_source, port),
            None,
            "{refused_source} is not on {port}'s list"
        );
        wait_refused_past(&lab, before);
        let entry = listed(&lab, port);
        assert!(
            entry["refused"].as_u64().unwrap_or(0) > port_refused_before,
            "the port's own refused count moves: {entry}"
        );
    }
    for source in [Lab::OUTSIDE_IP, Lab::REMOTE_IP] {
        assert!(
            get_from(&lab, source, 8082).is_some(),
            "a port without --allow is open to {source}"
        );
    }
    // Containers reach a restricted port through the host's address
    // (hairpin): the list is about the outside, as DOCKER-USER rules on
    // the external interface are.
    let url = format!("http://{}:8081/", Lab::HOST_IP);
    assert!(
        http_source(lab.container(&peer), &url).is_some(),
        "a container reaches a restricted port by the host's address"
    );

    assert_eq!(
        listed(&lab, 8080)["allow"],
        serde_json::json!([format!("{}/32", Lab::OUTSIDE_IP), "203.0.113.0/24"])
    );
    assert_eq!(
        listed(&lab, 8081)["allow"],
        serde_json::json!([format!("{}/32", Lab::REMOTE_IP)])
    );
    assert_eq!(listed(&lab, 8082)["allow"], serde_json::Value::Null);
    let text = lab.netpath(&["publish", "ls"]);
    text.expect_ok("publish ls");
    assert!(
        text.stdout.contains("203.0.113.0/24") && text.stdout.contains("all"),
        "publish ls shows each port's list:\n{}",
        text.stdout
    );

    // Unpublished, a port's rules go with it: published again open, it
    // takes everyone.
    lab.netpath(&["publish", "rm", "8081"])
        .expect_ok("publish rm");
    lab.netpath(&["publish", "add", &web, "8081:80"])
        .expect_ok("publish add again without --allow");
    assert!(
        get_from(&lab, Lab::OUTSIDE_IP, 8081).is_some(),
        "the old list is gone with the mapping"
    );
}

#[test]
fn a_bad_allow_prefix_is_refused_in_one_line_and_publishes_nothing() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let web = lab.container_name("w");
    let bad = lab.container_add(&web, &["-p", "8080:80", "--allow", "203.0.113.0/33"]);
    bad.expect_fail("container add with a bad --allow");
    assert_eq!(
        bad.stderr.trim().lines().count(),
        1,
        "one line:\n{}",
        bad.stderr
    );
    assert!(bad.stderr.contains("--allow"), "{}", bad.stderr);
    let containers = lab.netpath_json(&["container", "ls"]);
    assert_eq!(containers, serde_json::json!([]), "no container was added");

    lab.container_add_ok(&web, &[]);
    for value in ["example.com", "10.0.0.1/8/8", ""] {
        let bad = lab.netpath(&["publish", "add", &web, "8080:80", "--allow", value]);
        bad.expect_fail("publish add with a bad --allow");
        assert_eq!(
            bad.stderr.trim().lines().count(),
            1,
            "one line:\n{}",
            bad.stderr
        );
        assert!(bad.stderr.contains("--allow"), "{}", bad.stderr);
    }
    assert_eq!(
        lab.netpath_json(&["publish", "ls"]),
        serde_json::json!([]),
        "nothing was published"
    );
    // --allow says who may reach published ports: alone it is a mistake.
    lab.container_add(&lab.container_name("x"), &["--allow", "203.0.113.0/24"])
        .expect_fail("--allow without -p");
}
