//! Issue 2, topology and CLI: what `up`, `container add/rm/ls`, `exec` and
//! `down` build and remove, observed with `ip` and ping from the namespaces.
//!
//! Every test has its own [`Lab`] (its own host netns, instance and
//! container names), so they run in parallel; the lab's `Drop` cleans up
//! after a failing test.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use netpath_tests::{Lab, Netns, Place, Server, http_source, ping, ping_ok, run};
use serde_json::Value;

const GATEWAY: &str = "10.77.0.1";

/// `container ls --json` as (name -> entry).
fn containers(lab: &Lab) -> Vec<Value> {
    match lab.netpath_json(&["container", "ls"]) {
        Value::Array(entries) => entries,
        other => panic!("container ls --json is not an array: {other}"),
    }
}

/// The address `ls` shows for container `name`.
fn listed_ip(lab: &Lab, name: &str) -> Option<String> {
    containers(lab)
        .into_iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["ip"].as_str().map(str::to_owned))
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(format!("np-{name}")).exists()
}

/// Waits (pidfd, no polling) until process `pid` has exited.
fn wait_for_exit(pid: i32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags; it returns an fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return true; // ESRCH: already gone (and reaped)
    }
    let fd = fd as i32;
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; fd is closed right after.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    // SAFETY: fd came from pidfd_open above and is not used again.
    unsafe { libc::close(fd) };
    n > 0
}

#[test]
fn two_containers_reach_each_other_and_the_gateway() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    let b = lab.container_name("b");
    lab.container_add_ok(&a, &[]);
    lab.container_add_ok(&b, &[]);

    let ip_a = lab.container_ip(&a).expect("a has an address on eth0");
    let ip_b = lab.container_ip(&b).expect("b has an address on eth0");
    assert_ne!(ip_a, ip_b);
    assert_eq!(listed_ip(&lab, &a).as_deref(), Some(ip_a.as_str()));
    assert_eq!(listed_ip(&lab, &b).as_deref(), Some(ip_b.as_str()));

    ping(lab.container(&a), &ip_b).expect_ok("a pings b");
    ping(lab.container(&b), &ip_a).expect_ok("b pings a");
    ping(lab.container(&a), GATEWAY).expect_ok("a pings the gateway");
    ping(&lab.host, &ip_a).expect_ok("H pings a");

    // The container side: lo up, eth0 with a default route via the gateway.
    let routes = lab
        .container(&a)
        .exec("ip", &["-4", "route", "show", "default"]);
    assert!(
        routes.stdout.contains(&format!("via {GATEWAY} dev eth0")),
        "{routes}"
    );
    let lo = lab.container(&a).exec("ip", &["-o", "link", "show", "lo"]);
    assert!(lo.stdout.contains("UP"), "{lo}");
    // The host side: np-NAME enslaved to the bridge.
    let port = lab
        .host
        .exec(&["ip", "-o", "link", "show", &format!("np-{a}")]);
    let bridge = lab.bridge();
    assert!(port.stdout.contains(&format!("master {bridge}")), "{port}");
}

#[test]
fn exec_runs_in_the_container_and_passes_the_exit_code() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let ip_a = lab.container_ip(&a).expect("a has an address");

    let out = lab.netpath(&[
        "exec", &a, "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0",
    ]);
    out.expect_ok("exec ip addr");
    assert!(out.stdout.contains(&ip_a), "{out}");

    let out = lab.netpath(&["exec", &a, "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.code(), Some(7), "{out}");
}

#[test]
fn an_address_released_by_rm_is_reused() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    let b = lab.container_name("b");
    let c = lab.container_name("c");
    lab.container_add_ok(&a, &[]);
    lab.container_add_ok(&b, &[]);
    let ip_a = listed_ip(&lab, &a).expect("a has an address");
    assert_eq!(
        ip_a, "10.77.0.2",
        "the first container gets the lowest address"
    );

    lab.netpath(&["container", "rm", &a]).expect_ok("rm a");
    assert!(!netns_exists(&a), "rm removes the netns");
    assert!(
        !lab.host_links().contains(&format!("np-{a}")),
        "rm removes the veth"
    );

    lab.container_add_ok(&c, &[]);
    assert_eq!(listed_ip(&lab, &c), Some(ip_a), "c reuses a's address");

    // --ip picks a given free address.
    let d = lab.container_name("d");
    lab.container_add_ok(&d, &["--ip", "10.77.3.4"]);
    assert_eq!(lab.container_ip(&d).as_deref(), Some("10.77.3.4"));
}

#[test]
fn parallel_adds_get_distinct_addresses() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let names: Vec<String> = (0..4).map(|_| lab.container_name("p")).collect();
    std::thread::scope(|s| {
        for name in &names {
            let lab = &lab;
            s.spawn(move || {
                lab.container_add_ok(name, &[]);
            });
        }
    });
    let mut ips: Vec<String> = names
        .iter()
        .map(|n| listed_ip(&lab, n).expect("every container is listed"))
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), names.len(), "addresses are distinct: {ips:?}");
}

#[test]
fn mode_none_has_only_lo() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let n = lab.container_name("n");
    lab.container_add_ok(&n, &["--mode", "none"]);
    let links = lab.container(&n).exec("ip", &["-o", "link", "show"]);
    links.expect_ok("ip link in the none container");
    let names: Vec<&str> = links
        .stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(str::trim)
        .collect();
    assert_eq!(names, ["lo"], "{links}");
    assert!(links.stdout.contains("UP"), "lo is up\n{links}");
    assert!(
        !lab.host_links().contains(&format!("np-{n}")),
        "no veth for none"
    );
    assert_eq!(listed_ip(&lab, &n), None);
}

#[test]
fn mode_host_runs_in_the_host_netns() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let h = lab.container_name("h");
    lab.container_add_ok(&h, &["--mode", "host"]);
    assert!(!netns_exists(&h), "host mode makes no netns");
    let out = lab.netpath(&["exec", &h, "--", "ip", "-o", "link", "show", Lab::UPLINK]);
    out.expect_ok("exec in host mode sees H's uplink");
    let entry = containers(&lab)
        .into_iter()
        .find(|c| c["name"] == h.as_str())
        .expect("listed");
    assert_eq!(entry["mode"], "host");
    assert!(entry["ip"].is_null());
}

#[test]
fn mode_container_shares_the_other_netns() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let x = lab.container_name("x");
    let y = lab.container_name("y");
    lab.container_add_ok(&x, &[]);
    lab.container_add_ok(&y, &["--mode", &format!("container:{x}")]);
    let ip_x = lab.container_ip(&x).expect("x has an address");

    assert!(
        !netns_exists(&y),
        "container mode makes no netns of its own"
    );
    let out = lab.netpath(&[
        "exec", &y, "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0",
    ]);
    out.expect_ok("exec in y sees x's eth0");
    assert!(out.stdout.contains(&ip_x), "{out}");
    assert_eq!(
        listed_ip(&lab, &y),
        Some(ip_x),
        "ls shows x's address for y"
    );

    // x cannot go while y uses its netns; after y, it can.
    lab.netpath(&["container", "rm", &x])
        .expect_one_line_error("remove them first");
    assert!(netns_exists(&x));
    lab.netpath(&["container", "rm", &y]).expect_ok("rm y");
    lab.netpath(&["container", "rm", &x]).expect_ok("rm x");
    assert!(!netns_exists(&x));
}

#[test]
fn down_leaves_nothing_and_is_idempotent() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    let n = lab.container_name("n");
    let h = lab.container_name("h");
    let s = lab.container_name("s");
    lab.container_add_ok(&a, &[]);
    lab.container_add_ok(&n, &["--mode", "none"]);
    lab.container_add_ok(&h, &["--mode", "host"]);
    lab.container_add_ok(&s, &["--mode", &format!("container:{a}")]);
    let status = lab.netpath_json(&["status"]);
    assert_eq!(status["agent_alive"], true, "{status}");
    let pid = status["agent_pid"].as_i64().expect("agent pid") as i32;

    lab.down().expect_ok("down");
    assert!(
        wait_for_exit(pid, Duration::from_secs(5)),
        "down stops the agent"
    );
    lab.assert_clean();
    lab.down().expect_ok("a second down");
    lab.assert_clean();
    lab.netpath(&["container", "ls"])
        .expect_one_line_error("is not up");
}

#[test]
fn up_after_the_agent_died_adopts_the_instance() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &[]);
    let ip_a = lab.container_ip(&a).expect("a has an address");
    let status = lab.netpath_json(&["status"]);
    let pid = status["agent_pid"].as_i64().expect("agent pid") as i32;

    lab.up(&[]).expect_one_line_error("already up");

    // Its supervisor too: else it starts the agent again, and the `up`
    // below finds the instance up (it did under TCG).
    assert_eq!(lab.kill_agent_and_supervisor(), pid);
    let status = lab.status();
    assert_eq!(
        status.code(),
        Some(1),
        "a dead agent is unhealthy\n{status}"
    );
    assert_eq!(status.json()["agent_alive"], false);

    lab.up_ok(&[]);
    assert_eq!(lab.netpath_json(&["status"])["agent_alive"], true);
    assert_eq!(listed_ip(&lab, &a), Some(ip_a), "the container stays");
    assert!(ping_ok(lab.container(&a), GATEWAY), "and keeps its network");
}

#[test]
fn bad_input_fails_with_one_line_and_leaves_nothing() {
    let lab = Lab::new();
    let x = lab.container_name("x");

    // Before up: nothing exists, and nothing is created.
    lab.container_add(&x, &[])
        .expect_one_line_error("run `netpath up` first");
    assert!(!Path::new("/run/netpath").join(lab.instance()).exists());
    assert!(!netns_exists(&x));
    lab.up(&["--subnet", "10.77.0.0/33"])
        .expect_one_line_error("--subnet");
    lab.up(&["--subnet", "bogus"])
        .expect_one_line_error("--subnet");
    let cgroup = lab.cgroup_path().to_string_lossy().into_owned();
    let bad_uplink = [
        "up",
        "--detach",
        "--uplink",
        "nosuchif0",
        "--cgroup",
        &cgroup,
    ];
    lab.netpath(&bad_uplink).expect_one_line_error("nosuchif0");
    // A directory that is no cgroup v2 (the socket hooks need one).
    let not_a_cgroup = [
        "up",
        "--detach",
        "--uplink",
        Lab::UPLINK,
        "--cgroup",
        "/tmp",
    ];
    lab.netpath(&not_a_cgroup)
        .expect_one_line_error("cgroup v2");
    Lab::assert_no_leftovers(lab.instance());
    assert_eq!(
        lab.host_links(),
        ["lo", Lab::UPLINK],
        "failed ups left links"
    );

    lab.up_ok(&[]);
    let a = lab.container_name("a");
    lab.container_add_ok(&a, &["--ip", "10.77.0.9"]);
    let before = containers(&lab);
    let links_before = lab.host_links();

    let x_ns = format!("container:{x}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["container", "add", &x, "--ip", "10.77.0.9"],
            "already used",
        ),
        (
            vec!["container", "add", &x, "--ip", "10.99.0.2"],
            "outside the subnet",
        ),
        (vec!["container", "add", &x, "--ip", GATEWAY], "reserved"),
        (
            vec!["container", "add", &x, "--ip", "10.77.0.256"],
            "invalid --ip",
        ),
        (
            vec!["container", "add", &x, "--mode", "bogus"],
            "invalid --mode",
        ),
        (
            vec![
                "container",
                "add",
                &x,
                "--mode",
                "none",
                "--ip",
                "10.77.0.3",
            ],
            "bridge mode",
        ),
        (vec!["container", "add", &a], "already exists"),
        (
            vec!["container", "add", "bad.name"],
            "invalid container name",
        ),
        (vec!["container", "add", "-x"], ""),
        (
            vec!["container", "add", "abcdefghijklm"],
            "invalid container name",
        ),
        (
            vec!["container", "add", &x, "--mode", &x_ns],
            "no container named",
        ),
        (
            vec!["container", "add", &x, "-p", "80"],
            "invalid port mapping",
        ),
        (
            vec!["container", "add", &x, "-p", "45000:80"],
            "inside netpath's SNAT range",
        ),
        (vec!["container", "rm", &x], "no container named"),
        (vec!["exec", &x, "--", "true"], "no container named"),
        (vec!["up"], "already up"),
    ];
    for (args, needle) in cases {
        lab.record_netns(format!("np-{x}"));
        let out = lab.netpath(&args);
        if needle.is_empty() {
            // Rejected by the argument parser: still one line, non-zero.
            out.expect_fail(&args.join(" "));
            assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
        } else {
            out.expect_one_line_error(needle);
        }
        assert!(!netns_exists(&x), "{args:?} left a netns");
        assert_eq!(containers(&lab), before, "{args:?} changed the state");
        assert_eq!(lab.host_links(), links_before, "{args:?} changed H's links");
    }
}

#[test]
fn changing_commands_require_root() {
    let lab = Lab::new();
    let x = lab.container_name("x");
    let commands: [&[&str]; 4] = [
        &["up"],
        &["down"],
        &["container", "add", &x],
        &["container", "rm", &x],
    ];
    for args in commands {
        let mut cmd = lab.host.place().command("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(lab.bin())
            .args(["--instance", lab.instance()])
            .args(args);
        run(&mut cmd).expect_one_line_error("must run as root");
    }
    Lab::assert_no_leftovers(lab.instance());
    assert!(!netns_exists(&x));
}

/// `ip netns exec H netpath ...` gives netpath a private mount namespace;
/// netpath must still leave the container netns handle visible to everyone.
#[test]
fn container_netns_survives_ip_netns_exec() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    lab.record_netns(format!("np-{a}"));
    let mut cmd = Place::here().command("ip");
    cmd.args(["netns", "exec", lab.host.name()])
        .arg(lab.bin())
        .args(["--instance", lab.instance(), "container", "add", &a]);
    run(&mut cmd).expect_ok("container add through ip netns exec");
    assert!(netns_exists(&a), "the netns handle is visible outside");
    ping(lab.container(&a), GATEWAY).expect_ok("and the container works");
}

/// Starts `command` in container `name` with `netpath exec` (the lab kills
/// it on drop) and returns its pid once it runs in the container's netns
/// and `ready` holds for it (`netpath exec` has become the command).
#[track_caller]
fn exec_in_container(lab: &Lab, name: &str, command: &[&str], ready: fn(i32) -> bool) -> i32 {
    let pid = lab.spawn(lab.netpath_cmd().args(["exec", name, "--"]).args(command)) as i32;
    let netns = std::fs::metadata(format!("/run/netns/np-{name}"))
        .expect("the container's netns")
        .ino();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let inside =
            std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == netns);
        if inside && ready(pid) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{command:?} did not start in container {name}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const SLEEP: [&str; 2] = ["sleep", "300"];

fn is_sleep(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
}

/// A shell that ignores SIGTERM, forking sleeps (which inherit that) until
/// it is killed.
const STUBBORN_SHELL: [&str; 3] = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"];

/// Whether process `pid` ignores SIGTERM (/proc/PID/status SigIgn).
fn ignores_sigterm(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// The netns of container `name`, as (device, inode).
fn netns_id(name: &str) -> (u64, u64) {
    let m = std::fs::metadata(format!("/run/netns/np-{name}")).expect("the container's netns");
    (m.dev(), m.ino())
}

/// The pids of the processes in the netns `id` (forked ones included).
fn processes_in(id: (u64, u64)) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            std::fs::metadata(e.path().join("ns/net")).is_ok_and(|m| (m.dev(), m.ino()) == id)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn has_exited(pid: i32) -> bool {
    wait_for_exit(pid, Duration::ZERO)
}

#[test]
fn container_rm_stops_the_processes_in_its_netns_and_no_other() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    let b = lab.container_name("b");
    lab.container_add_ok(&a, &[]);
    lab.container_add_ok(&b, &[]);
    let polite = exec_in_container(&lab, &a, &SLEEP, is_sleep);
    let stubborn = exec_in_container(&lab, &a, &STUBBORN_SHELL, ignores_sigterm);
    let neighbour = exec_in_container(&lab, &b, &SLEEP, is_sleep);
    let on_host = lab.spawn(lab.host.place().command("sleep").arg("300")) as i32;
    let netns_a = netns_id(&a);

    let started = Instant::now();
    lab.netpath(&["container", "rm", "-t", "1", &a])
        .expect_ok("container rm");
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(8)).contains(&took),
        "SIGKILL after the 1 s of -t, not the 10 s default: took {took:?}"
    );
    assert!(has_exited(polite), "the process that heeds SIGTERM is gone");
    assert!(has_exited(stubborn), "the one ignoring SIGTERM is gone too");
    assert_eq!(
        processes_in(netns_a),
        Vec::<String>::new(),
        "and all they forked"
    );
    assert!(!netns_exists(&a), "the netns is gone");
    assert!(
        !lab.host_links().contains(&format!("np-{a}")),
        "and its veth"
    );
    assert!(
        !has_exited(neighbour),
        "another container's process runs on"
    );
    assert!(!has_exited(on_host), "a host process runs on");
}

#[test]
fn down_stops_the_processes_of_every_container() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let a = lab.container_name("a");
    let n = lab.container_name("n");
    lab.container_add_ok(&a, &[]);
    lab.container_add_ok(&n, &["--mode", "none"]);
    let in_a = exec_in_container(&lab, &a, &SLEEP, is_sleep);
    let in_n = exec_in_container(&lab, &n, &STUBBORN_SHELL, ignores_sigterm);
    let on_host = lab.spawn(lab.host.place().command("sleep").arg("300")) as i32;
    let namespaces = [netns_id(&a), netns_id(&n)];

    let started = Instant::now();
    lab.netpath(&["down", "-t", "1"]).expect_ok("down -t 1");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "SIGKILL after the 1 s grace: took {took:?}"
    );
    assert!(has_exited(in_a) && has_exited(in_n), "no process left");
    for id in namespaces {
        assert_eq!(
            processes_in(id),
            Vec::<String>::new(),
            "nor any they forked"
        );
    }
    lab.assert_clean();
    assert!(!has_exited(on_host), "a host process runs on");
}

#[test]
fn attach_and_detach_an_ip_netns_with_a_published_port() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let netns = Netns::new("att");
    let sleeper = lab.spawn(netns.command("sleep").arg("300")) as i32;
    let w = lab.container_name("w");
    let attached = lab.netpath_json(&[
        "container",
        "attach",
        &w,
        "--netns",
        netns.name(),
        "-p",
        "18082:80",
    ]);
    assert_eq!(attached["origin"], "attached", "{attached}");
    let ip = attached["ip"].as_str().expect("an address").to_owned();
    let entry = containers(&lab)
        .into_iter()
        .find(|c| c["name"] == w.as_str())
        .expect("listed");
    assert_eq!(entry["origin"], "attached");
    assert_eq!(entry["netns"], netns.path().to_str().expect("UTF-8"));

    ping(&lab.host, &ip).expect_ok("H pings the attached netns");
    ping(netns.place(), GATEWAY).expect_ok("it pings the gateway");
    let _web = Server::http(netns.place(), "0.0.0.0", 80);
    let client = http_source(&lab.outside, &format!("http://{}:18082/", Lab::HOST_IP))
        .expect("the published port answers");
    assert!(
        client.starts_with(&format!("{}:", Lab::OUTSIDE_IP)),
        "with the client's address: {client}"
    );
    let out = lab.netpath(&["exec", &w, "--", "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(
        out.stdout.contains(&ip),
        "exec enters the attached netns\n{out}"
    );

    // Only attached containers detach; netpath's own netns is refused.
    let c = lab.container_name("c");
    lab.container_add_ok(&c, &[]);
    lab.netpath(&["container", "detach", &c])
        .expect_one_line_error("container rm");
    lab.netpath(&["container", "rm", &c]).expect_ok("rm c");
    lab.netpath(&[
        "container",
        "attach",
        "self",
        "--netns",
        "/proc/self/ns/net",
    ])
    .expect_one_line_error("own network namespace");

    // detach takes netpath's network away, and nothing of the owner's.
    lab.netpath(&["container", "detach", &w])
        .expect_ok("detach");
    let links = netns.exec(&["ip", "-o", "link", "show"]);
    assert_eq!(links.stdout.lines().count(), 1, "only lo is left\n{links}");
    assert!(netns.path().exists(), "the netns stays");
    assert!(!has_exited(sleeper), "its process runs on");
    assert!(!lab.host_links().contains(&format!("np-{w}")));
    assert_eq!(lab.netpath_json(&["publish", "ls"]), serde_json::json!([]));

    // Attached by /proc/PID/ns/net, on another network, then `down`: the
    // netns and its process are the owner's and stay.
    lab.netpath(&["network", "create", "natt", "--subnet", "10.67.0.0/24"])
        .expect_ok("network create");
    let again = lab.netpath_json(&[
        "container",
        "attach",
        &w,
        "--netns",
        &format!("/proc/{sleeper}/ns/net"),
        "--network",
        "natt",
    ]);
    let ip = again["ip"].as_str().expect("an address").to_owned();
    assert!(ip.starts_with("10.67.0."), "on natt: {again}");
    ping(&lab.host, &ip).expect_ok("attached again");
    ping(netns.place(), "10.67.0.1").expect_ok("it pings natt's gateway");
    lab.down().expect_ok("down");
    assert!(
        !has_exited(sleeper),
        "down leaves the attached netns' process"
    );
    assert!(netns.path().exists(), "and the netns");
    let links = netns.exec(&["ip", "-o", "link", "show"]);
    assert_eq!(links.stdout.lines().count(), 1, "only lo is left\n{links}");
    lab.assert_clean();
}
