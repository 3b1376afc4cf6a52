//! netpath as the network of real container runtimes, through its CNI
//! plugin: Podman 4 (CNI backend) and containerd's `ctr run --cni`, each in
//! the lab's host netns with directories of its own, on a busybox rootfs
//! (tests/src/runtime.rs).
//!
//! Host only (xtask/src/vm/build.rs, `HOST_ONLY_TESTS`): the VM image has
//! no runtimes. Where one is not installed its test prints why and returns;
//! `cargo xtask test` installs them.
use std::io::Write as _;
use std::time::Duration;

use netpath_tests::runtime::{BusyboxRootfs, Containerd, Podman, missing_runtime, wait_for};
use netpath_tests::{Lab, Server, http_source, unique_name};
use serde_json::Value;

/// Bound on a container's server starting, or its task ending.
const WAIT: Duration = Duration::from_secs(30);

/// busybox httpd in the foreground on port 80, serving the rootfs's /www;
/// IPv4 only, so its CGIs see IPv4 client addresses (not `[::ffff:a.b.c.d]`).
const HTTPD: &[&str] = &["/bin/httpd", "-f", "-p", "0.0.0.0:80", "-h", "/www"];

/// True (after saying why, past the test harness's capture: a skipped
/// runtime test is never silent) when a command `test` needs is missing.
fn skipped(test: &str, commands: &[&str]) -> bool {
    let Some(reason) = missing_runtime(commands) else {
        return false;
    };
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
    true
}

/// The addresses of netpath's endpoints (`container ls --json`).
fn endpoint_ips(lab: &Lab) -> Vec<String> {
    lab.netpath_json(&["container", "ls"])
        .as_array()
        .expect("container ls --json is a list")
        .iter()
        .filter_map(|c| c["ip"].as_str().map(str::to_owned))
        .collect()
}

/// The flows (`flows --json`) that involve `ip`, on either side.
fn flows_of(lab: &Lab, ip: &str) -> Vec<Value> {
    let quoted = format!("\"{ip}\"");
    lab.netpath_json(&["flows"])
        .as_array()
        .expect("flows --json is a list")
        .iter()
        .filter(|f| f.to_string().contains(&quoted))
        .cloned()
        .collect()
}

/// netpath's endpoint (`container ls --json`) at `ip`.
#[track_caller]
fn endpoint(lab: &Lab, ip: &str) -> Value {
    let ls = lab.netpath_json(&["container", "ls"]);
    ls.as_array()
        .expect("container ls --json is a list")
        .iter()
        .find(|c| c["ip"] == ip)
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint {ip}: {ls}"))
}

/// Panics unless netpath holds no endpoint, published port or flow of any
/// of `ips`.
#[track_caller]
fn assert_nothing_left_of(lab: &Lab, ips: &[&str]) {
    let endpoints = endpoint_ips(lab);
    let published = lab.netpath_json(&["publish", "ls"]);
    for ip in ips {
        assert!(
            !endpoints.iter().any(|e| e == ip),
            "endpoint {ip} left: {endpoints:?}"
        );
        let flows = flows_of(lab, ip);
        assert!(flows.is_empty(), "flows of {ip} left: {flows:?}");
    }
    assert_eq!(
        published.as_array().map(Vec::len),
        Some(0),
        "published ports left: {published}"
    );
}

/// `wget -q -O - URL` inside a podman container, for at most 5 s (not
/// `wget -T`: busybox 1.35's static wget crashes on it).
fn podman_get(podman: &Podman<'_>, name: &str, url: &str) -> String {
    let out = podman.exec(name, &["timeout", "5", "wget", "-q", "-O", "-", url]);
    out.expect_ok(&format!("wget {url} in {name}"));
    out.stdout_trim().to_owned()
}

#[test]
fn podman_containers_publish_masquerade_reach_each_other_and_rm_leaves_nothing() {
    if skipped(
        "podman_containers_publish_masquerade_reach_each_other_and_rm_leaves_nothing",
        &["podman", "runc", "busybox"],
    ) {
        return;
    }
    let lab = Lab::new();
    lab.up_ok(&[]);
    let rootfs = BusyboxRootfs::new().expect("the busybox rootfs");
    let podman = Podman::new(&lab).expect("podman's directories");
    let web = unique_name("web");
    let cli = unique_name("cli");
    podman.run_detached(&web, &["18080:80"], &rootfs.path(), HTTPD);
    podman.run_detached(&cli, &[], &rootfs.path(), HTTPD);
    let web_ip = podman.ip(&web);
    let cli_ip = podman.ip(&cli);

    // netpath has what podman has: the endpoints of the containers at the
    // addresses of the plugin's results, and the published port.
    for (name, ip) in [(&web, &web_ip), (&cli, &cli_ip)] {
        let endpoint = endpoint(&lab, ip);
        let inspect = podman.podman(&["inspect", "--format", "{{.Id}}", name]);
        inspect.expect_ok("podman inspect");
        assert_eq!(endpoint["origin"], "cni", "{endpoint}");
        assert_eq!(
            endpoint["container_id"],
            inspect.stdout_trim(),
            "{endpoint}"
        );
    }
    let published = lab.netpath_json(&["publish", "ls"]);
    assert!(
        published.as_array().is_some_and(|p| p.len() == 1
            && p[0]["host"]["port"] == 18080
            && p[0]["container_ip"] == web_ip.as_str()
            && p[0]["container_port"] == 80),
        "publish ls: {published}"
    );

    // From the outside, the published port, with the client's own address
    // (the server may still be starting).
    let url = format!("http://{}:18080/cgi-bin/addr", Lab::HOST_IP);
    let seen = wait_for("the published port answers from the outside", WAIT, || {
        http_source(&lab.outside, &url).ok_or_else(|| "no answer".to_owned())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        seen.starts_with(&format!("{}:", Lab::OUTSIDE_IP)),
        "the container must see the client's real address, saw {seen}"
    );

    // From the host, on its address and on 127.0.0.1.
    for addr in [Lab::HOST_IP, "127.0.0.1"] {
        let url = format!("http://{addr}:18080/cgi-bin/addr");
        http_source(lab.host_in_cgroup(), &url)
            .unwrap_or_else(|| panic!("the host does not reach {url}"));
    }

    // Out through masquerade, as the host.
    let outside = Server::http(&lab.outside, "0.0.0.0", 0);
    let seen = podman_get(
        &podman,
        &cli,
        &format!("http://{}:{}/", Lab::OUTSIDE_IP, outside.port()),
    );
    assert!(
        seen.starts_with(&format!("{}:", Lab::HOST_IP)),
        "the outside saw {seen}, not the host's address"
    );

    // Container to container, untranslated.
    let seen = podman_get(&podman, &cli, &format!("http://{web_ip}/cgi-bin/addr"));
    assert!(
        seen.starts_with(&format!("{cli_ip}:")),
        "{web} saw {seen}, not {cli}'s address {cli_ip}"
    );

    // A restart is a DEL and an ADD of the same container: one endpoint
    // again, and its published port answers again.
    podman
        .podman(&["restart", "--time", "0", &web])
        .expect_ok("podman restart");
    let web_ip = podman.ip(&web);
    let endpoints = endpoint_ips(&lab);
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    assert!(endpoints.contains(&web_ip), "{endpoints:?}");
    wait_for("the published port answers after the restart", WAIT, || {
        http_source(&lab.outside, &url).ok_or_else(|| "no answer".to_owned())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    podman
        .podman(&["rm", "--force", "--time", "0", &web, &cli])
        .expect_ok("podman rm");
    assert_nothing_left_of(&lab, &[&web_ip, &cli_ip]);
    let out = lab.host.exec(&["ip", "-o", "link", "show", "type", "veth"]);
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "only the lab's uplink is a veth in the host:\n{out}"
    );
}

#[test]
fn ctr_run_cni_gets_an_address_reaches_the_outside_and_its_del_without_netns_cleans_up() {
    if skipped(
        "ctr_run_cni_gets_an_address_reaches_the_outside_and_its_del_without_netns_cleans_up",
        &["containerd", "ctr", "runc", "busybox"],
    ) {
        return;
    }
    let lab = Lab::new();
    lab.up_ok(&[]);
    let rootfs = BusyboxRootfs::new().expect("the busybox rootfs");
    let outside = Server::http(&lab.outside, "0.0.0.0", 0);
    let containerd = Containerd::start(&lab).unwrap_or_else(|e| panic!("{e:#}"));
    let id = unique_name("c");
    let script = format!(
        "ip -4 -o addr show dev eth0; ip route; timeout 5 wget -q -O - http://{}:{}/; echo; echo READY; exec sleep 3600",
        Lab::OUTSIDE_IP,
        outside.port()
    );
    let mut run = containerd
        .run_cni(&id, &rootfs.path(), &["/bin/sh", "-c", &script])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let output = wait_for("the container's report", WAIT, || {
        let output = run.output();
        if output.contains("READY") {
            Ok(output)
        } else {
            Err(output)
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // Its address (from netpath's IPAM, as netpath lists it), the default
    // route, and the outside reached as the host.
    let ip = output
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address on eth0:\n{output}"))
        .to_owned();
    let endpoint = endpoint(&lab, &ip);
    assert_eq!(endpoint["origin"], "cni", "{endpoint}");
    assert_eq!(
        endpoint["container_id"],
        format!("{}-{id}", containerd.namespace()),
        "ctr's CNI container ID is NAMESPACE-ID: {endpoint}"
    );
    assert!(
        output.contains("default via"),
        "no default route:\n{output}"
    );
    assert!(
        output.contains(&format!("{}:", Lab::HOST_IP)),
        "the outside did not answer, or saw another address than the host's:\n{output}"
    );
    assert!(!flows_of(&lab, &ip).is_empty(), "its flow is in the maps");

    // The task ends; ctr then sends DEL with an empty CNI_NETNS (the netns
    // went with the task) and deletes the container.
    containerd
        .ctr(&["task", "kill", "--signal", "SIGKILL", &id])
        .expect_ok("ctr task kill");
    run.wait(WAIT).unwrap_or_else(|e| panic!("{e:#}"));
    let output = run.output();
    assert!(
        !output.contains("network review"),
        "ctr's DEL failed:\n{output}"
    );
    assert!(
        containerd.containers().is_empty(),
        "ctr run --rm left its container"
    );
    assert_nothing_left_of(&lab, &[&ip]);
}
