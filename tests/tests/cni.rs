//! Issue 13, the CNI plugin: `netpath-cni` run the way a runtime runs it
//! (CNI_* environment, the network configuration on stdin) on network
//! namespaces the test makes in the lab's host netns, as a runtime would.
//! Podman and containerd themselves are tested elsewhere.

use std::collections::HashSet;
use std::time::Duration;

use netpath_tests::{
    CmdOutput, Lab, Netns, Server, curl, http_source, netpath_cni_bin, ping, ping_ok,
    run_with_input,
};
use serde_json::{Value, json};

const GATEWAY: &str = "10.77.0.1";
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The network configuration a runtime would send for the lab's instance,
/// with `extra` merged in (runtimeConfig, prevResult, ...).
fn conf(lab: &Lab, extra: Value) -> Value {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "netpath-test",
        "type": "netpath-cni",
        "instance": lab.instance(),
    });
    if let (Some(conf), Value::Object(extra)) = (conf.as_object_mut(), extra) {
        conf.extend(extra);
    }
    conf
}

/// One plugin call in the lab's host netns. `env`: CNI_* variables besides
/// CNI_COMMAND (an empty value is set as empty); `stdin`: raw input.
fn plugin(lab: &Lab, command: &str, env: &[(&str, &str)], stdin: &str) -> CmdOutput {
    let bin = netpath_cni_bin();
    assert!(
        bin.exists(),
        "netpath-cni not found at {}: build it (`cargo build -p netpath`) or set NETPATH_CNI_BIN",
        bin.display()
    );
    let mut cmd = lab.host.place().command(&bin);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_PATH", "/opt/cni/bin");
    for (name, value) in env {
        cmd.env(name, value);
    }
    run_with_input(&mut cmd, Some(stdin), PLUGIN_TIMEOUT)
}

/// A runtime's view of one attachment: container ID, netns, interface.
struct Attachment<'a> {
    id: String,
    netns: &'a Netns,
    ifname: &'a str,
}

impl<'a> Attachment<'a> {
    fn new(id: impl Into<String>, netns: &'a Netns) -> Self {
        Self {
            id: id.into(),
            netns,
            ifname: "eth0",
        }
    }

    fn call(&self, lab: &Lab, command: &str, conf: &Value) -> CmdOutput {
        let netns = self.netns.path();
        let env = [
            ("CNI_CONTAINERID", self.id.as_str()),
            ("CNI_NETNS", netns.to_str().expect("UTF-8 path")),
            ("CNI_IFNAME", self.ifname),
        ];
        plugin(lab, command, &env, &conf.to_string())
    }

    /// ADD that must succeed; returns the result.
    #[track_caller]
    fn add(&self, lab: &Lab, conf: &Value) -> Value {
        let out = self.call(lab, "ADD", conf);
        out.expect_ok("CNI ADD");
        out.json()
    }

    /// DEL (with CNI_NETNS) that must succeed and print nothing.
    #[track_caller]
    fn del(&self, lab: &Lab, conf: &Value) {
        let out = self.call(lab, "DEL", conf);
        out.expect_ok("CNI DEL");
        assert_eq!(out.stdout_trim(), "", "DEL prints nothing\n{out}");
    }
}

/// A failed call: non-zero exit and a CNI error object with `code` on
/// stdout. Returns the error.
#[track_caller]
fn expect_cni_error(out: &CmdOutput, code: u64) -> Value {
    out.expect_fail("the plugin call");
    let error = out.json();
    assert_eq!(error["code"], code, "error code\n{out}");
    assert!(
        error["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "msg\n{out}"
    );
    assert!(error["cniVersion"].is_string(), "cniVersion\n{out}");
    assert!(error.get("details").is_some(), "details\n{out}");
    error
}

/// The address (without prefix) of a result's first IP.
fn result_ip(result: &Value) -> String {
    let address = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips[0].address in {result}"));
    address.split('/').next().unwrap_or_default().to_owned()
}

/// The interfaces in a netns, by name.
fn links(netns: &Netns) -> Vec<String> {
    let out = netns.exec(&["ip", "-o", "link", "show"]);
    out.expect_ok("ip link");
    out.stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .collect()
}

/// `container ls --json`.
fn containers(lab: &Lab) -> Vec<Value> {
    match lab.netpath_json(&["container", "ls"]) {
        Value::Array(entries) => entries,
        other => panic!("container ls --json is not an array: {other}"),
    }
}

/// `publish ls --json`.
fn published(lab: &Lab) -> Vec<Value> {
    match lab.netpath_json(&["publish", "ls"]) {
        Value::Array(entries) => entries,
        other => panic!("publish ls --json is not an array: {other}"),
    }
}

/// The flows of the datapath that involve `ip`.
fn flows_of(lab: &Lab, ip: &str) -> Vec<Value> {
    match lab.netpath_json(&["flows"]) {
        Value::Array(flows) => flows
            .into_iter()
            .filter(|f| f.to_string().contains(&format!("\"{ip}\"")))
            .collect(),
        other => panic!("flows --json is not an array: {other}"),
    }
}

/// `status` reports no problem (every endpoint's veth and hook present).
#[track_caller]
fn assert_healthy(lab: &Lab) {
    let status = lab.status();
    let json = status.json();
    assert_eq!(json["healthy"], true, "status is unhealthy\n{status}");
}

netpath_tests::with_each_accel!(add_check_del_with_a_published_port);

/// The whole life of one attachment, on an interface not named eth0 (the
/// XDP pass-through program goes on it with `--accel xdp`).
fn add_check_del_with_a_published_port(accel: &str) {
    let lab = Lab::new();
    // A real wire's full checksums (see nat.rs).
    lab.outside
        .exec(&["ethtool", "-K", Lab::OUTSIDE_IF, "tx", "off"])
        .expect_ok("checksums on the outside wire");
    lab.up_ok(&["--accel", accel]);
    let netns = Netns::new("cn");
    let attachment = Attachment {
        ifname: "net1",
        ..Attachment::new(netpath_tests::unique_name("ctr"), &netns)
    };
    let ports = json!({"runtimeConfig": {"portMappings": [
        {"hostPort": 18080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}
    ]}});
    let conf = conf(&lab, ports);
    let result = attachment.add(&lab, &conf);

    // The result: host veth, then the container's interface with its netns
    // and MAC, the address on it, the default route.
    assert_eq!(result["cniVersion"], "1.0.0", "{result}");
    let interfaces = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(interfaces.len(), 2, "{result}");
    let host_veth = interfaces[0]["name"].as_str().expect("host veth name");
    assert!(lab.host_links().contains(&host_veth.to_owned()), "{result}");
    assert!(interfaces[0]["sandbox"].is_null(), "{result}");
    assert_eq!(interfaces[1]["name"], "net1", "{result}");
    assert_eq!(
        interfaces[1]["sandbox"],
        netns.path().to_str().expect("UTF-8"),
        "{result}"
    );
    let mac = interfaces[1]["mac"].as_str().expect("container MAC");
    let net1 = netns.exec(&["ip", "-o", "link", "show", "net1"]);
    assert!(
        net1.stdout.contains(mac),
        "the result's MAC is net1's\n{net1}"
    );
    assert_healthy(&lab);
    assert_eq!(result["ips"][0]["interface"], 1, "{result}");
    assert_eq!(result["ips"][0]["gateway"], GATEWAY, "{result}");
    assert!(
        result["ips"][0].get("version").is_none(),
        "1.0.0 has no version"
    );
    // Dual stack: the IPv6 address and default route beside the IPv4 ones.
    let gateway6 = lab.netpath_json(&["status"])["gateway6"].clone();
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}, {"dst": "::/0", "gw": gateway6}]),
        "{result}"
    );
    let ip = result_ip(&result);
    assert!(ip.starts_with("10.77."), "{result}");
    assert_eq!(result["ips"][1]["gateway"], gateway6, "{result}");
    let ip6 = result["ips"][1]["address"]
        .as_str()
        .expect("an IPv6 address");
    let ip6 = ip6.split('/').next().expect("address/len");
    let net1 = netns.exec(&["ip", "-6", "-o", "addr", "show", "net1"]);
    assert!(net1.stdout.contains(ip6), "net1 has {ip6}\n{net1}");

    // Reachable from the host, reaching the outside through masquerade.
    ping(&lab.host, &ip).expect_ok("the host pings the container");
    let outside = Server::http(&lab.outside, "0.0.0.0", 0);
    let url = format!("http://{}:{}/", Lab::REMOTE_IP, outside.port());
    let source = http_source(netns.place(), &url).expect("the container reaches the outside");
    assert!(
        source.starts_with(&format!("{}:", Lab::HOST_IP)),
        "masqueraded to the host's address: {source}"
    );
    // The port mapping is published, and sees the client's own address.
    let _web = Server::http(netns.place(), "0.0.0.0", 80);
    let published_url = format!("http://{}:18080/", Lab::HOST_IP);
    let client = http_source(&lab.outside, &published_url).expect("the published port answers");
    assert!(
        client.starts_with(&format!("{}:", Lab::OUTSIDE_IP)),
        "the container sees the client's address: {client}"
    );

    // ls says who made it.
    let listed = containers(&lab);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["origin"], "cni", "{listed:?}");
    assert_eq!(
        listed[0]["container_id"],
        attachment.id.as_str(),
        "{listed:?}"
    );
    assert_eq!(listed[0]["ip"], ip.as_str(), "{listed:?}");
    let table = lab.netpath(&["container", "ls"]);
    assert!(
        table.stdout.contains(&format!("cni:{}", attachment.id)),
        "the ORIGIN column names the container ID\n{table}"
    );
    let exec = lab.netpath(&[
        "exec",
        listed[0]["name"].as_str().expect("a name"),
        "--",
        "ip",
        "-o",
        "link",
        "show",
        "net1",
    ]);
    exec.expect_ok("exec enters the runtime's netns");

    // CHECK against the result: nothing on stdout.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    let check = attachment.call(&lab, "CHECK", &check_conf);
    check.expect_ok("CNI CHECK");
    assert_eq!(check.stdout_trim(), "", "{check}");

    // ADD again: an error, and the first attachment keeps working.
    let again = attachment.call(&lab, "ADD", &conf);
    expect_cni_error(&again, 100);
    assert_eq!(containers(&lab).len(), 1);
    assert!(ping_ok(&lab.host, &ip), "the first ADD still works");

    // DEL: endpoint, veth, port and flows gone; the netns is the runtime's.
    assert!(!flows_of(&lab, &ip).is_empty(), "the requests made flows");
    attachment.del(&lab, &conf);
    assert!(containers(&lab).is_empty());
    assert!(published(&lab).is_empty(), "DEL unpublishes");
    assert!(flows_of(&lab, &ip).is_empty(), "DEL flushes the flows");
    assert!(!lab.host_links().contains(&host_veth.to_owned()));
    assert_eq!(links(&netns), ["lo"], "net1 left the container");
    assert!(
        netns.path().exists(),
        "DEL leaves the runtime's netns alone"
    );
    assert!(!ping_ok(&lab.host, &ip));
    assert_healthy(&lab);
    // DEL again: still fine. CHECK now: the container is unknown.
    attachment.del(&lab, &conf);
    expect_cni_error(&attachment.call(&lab, "CHECK", &check_conf), 3);

    // The runtime recreates the container: same address and MAC, and the
    // host reaches it at once, although its neighbour entry for the address
    // failed just above.
    let recreated_netns = Netns::new("cn");
    let recreated = Attachment {
        ifname: "net1",
        ..Attachment::new(netpath_tests::unique_name("ctr"), &recreated_netns)
    };
    let result = recreated.add(&lab, &conf);
    assert_eq!(result_ip(&result), ip, "the freed address is reused");
    assert_eq!(result["interfaces"][1]["mac"], mac, "with the same MAC");
    ping(&lab.host, &ip).expect_ok("the host reaches the recreated container");
}

#[test]
fn del_without_netns_after_the_netns_is_gone() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let netns = Netns::new("cn");
    let id = netpath_tests::unique_name("ctr");
    let ports = json!({"runtimeConfig": {"portMappings": [
        {"hostPort": 18081, "containerPort": 80, "protocol": "udp"}
    ]}});
    let conf = conf(&lab, ports);
    let result = Attachment::new(id.clone(), &netns).add(&lab, &conf);
    let ip = result_ip(&result);
    assert!(ping_ok(&lab.host, &ip));
    assert_eq!(published(&lab).len(), 1);
    let netns_path = netns.path();
    drop(netns);
    assert!(!netns_path.exists());

    // containerd's DEL after the task exited: CNI_NETNS empty.
    let env = [
        ("CNI_CONTAINERID", id.as_str()),
        ("CNI_NETNS", ""),
        ("CNI_IFNAME", "eth0"),
    ];
    let out = plugin(&lab, "DEL", &env, &conf.to_string());
    out.expect_ok("DEL without a netns");
    assert_eq!(out.stdout_trim(), "", "{out}");
    assert!(containers(&lab).is_empty());
    assert!(published(&lab).is_empty());
    assert_healthy(&lab);
    plugin(&lab, "DEL", &env, &conf.to_string()).expect_ok("DEL again");
}

#[test]
fn version_lists_the_spec_versions() {
    // VERSION needs no instance, netns or configuration beyond its version.
    let lab = Lab::new();
    let out = plugin(&lab, "VERSION", &[], r#"{"cniVersion":"1.0.0"}"#);
    out.expect_ok("VERSION");
    let versions = out.json();
    assert_eq!(
        versions["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
        "{out}"
    );
    assert!(versions["cniVersion"].is_string(), "{out}");
}

#[test]
fn status_and_add_say_when_the_instance_is_not_up() {
    let lab = Lab::new();
    let netns = Netns::new("cn");
    let attachment = Attachment::new("ctr-early", &netns);
    let conf = conf(&lab, json!({}));
    let status = plugin(&lab, "STATUS", &[], &conf.to_string());
    let error = expect_cni_error(&status, 50);
    assert!(
        error["msg"].as_str().unwrap_or("").contains("netpath up"),
        "{status}"
    );
    let add = attachment.call(&lab, "ADD", &conf);
    let error = expect_cni_error(&add, 11);
    assert!(
        error["msg"].as_str().unwrap_or("").contains("netpath up"),
        "{add}"
    );
    assert_eq!(links(&netns), ["lo"], "a failed ADD leaves nothing");
    // DEL of what was never added, on an instance that is not up: fine.
    attachment.del(&lab, &conf);

    // A /30 holds one container: STATUS is fine, then says it is full.
    lab.up_ok(&["--subnet", "10.99.0.0/30"]);
    let status = plugin(&lab, "STATUS", &[], &conf.to_string());
    status.expect_ok("STATUS of an instance with room");
    assert_eq!(status.stdout_trim(), "", "{status}");
    attachment.add(&lab, &conf);
    let full = plugin(&lab, "STATUS", &[], &conf.to_string());
    let error = expect_cni_error(&full, 50);
    assert!(
        error["msg"]
            .as_str()
            .unwrap_or("")
            .contains("no free address"),
        "{full}"
    );
    let second = Netns::new("cn");
    let add = Attachment::new("ctr-second", &second).call(&lab, "ADD", &conf);
    expect_cni_error(&add, 100);
    assert_eq!(links(&second), ["lo"], "a failed ADD leaves nothing");
    assert_eq!(containers(&lab).len(), 1);
}

#[test]
fn bad_requests_fail_with_error_json_and_leave_nothing() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let netns = Netns::new("cn");
    let attachment = Attachment::new("ctr-bad", &netns);
    let path = netns.path();
    let path = path.to_str().expect("UTF-8");
    let good = conf(&lab, json!({}));
    let port_range = || {
        netns
            .exec(&["cat", "/proc/sys/net/ipv4/ip_local_port_range"])
            .stdout
    };
    let port_range_before = port_range();
    assert!(
        !port_range_before.trim().is_empty(),
        "the netns' port range is read"
    );
    let full_env = [
        ("CNI_CONTAINERID", "ctr-bad"),
        ("CNI_NETNS", path),
        ("CNI_IFNAME", "eth0"),
    ];

    let cases: Vec<(&str, CmdOutput, u64)> = vec![
        ("bad JSON", plugin(&lab, "ADD", &full_env, "{not json"), 6),
        (
            "no CNI_CONTAINERID",
            plugin(&lab, "ADD", &full_env[1..], &good.to_string()),
            4,
        ),
        (
            "no CNI_IFNAME",
            plugin(&lab, "ADD", &full_env[..2], &good.to_string()),
            4,
        ),
        (
            "no CNI_NETNS",
            plugin(&lab, "ADD", &[full_env[0], full_env[2]], &good.to_string()),
            4,
        ),
        (
            "unknown command",
            plugin(&lab, "FROB", &full_env, &good.to_string()),
            4,
        ),
        (
            "unsupported version",
            attachment.call(&lab, "ADD", &conf(&lab, json!({"cniVersion": "0.2.0"}))),
            1,
        ),
        (
            "an ipam section",
            attachment.call(
                &lab,
                "ADD",
                &conf(&lab, json!({"ipam": {"type": "host-local"}})),
            ),
            2,
        ),
        (
            "a host IP that is no address",
            attachment.call(
                &lab,
                "ADD",
                &conf(
                    &lab,
                    json!({"runtimeConfig": {"portMappings": [
                        {"hostPort": 8080, "containerPort": 80, "hostIP": "localhost"}
                    ]}}),
                ),
            ),
            7,
        ),
        (
            // Fails late, once the veth and the endpoint exist: the port is
            // in the SNAT range, refused when it is published.
            "a port in the SNAT range",
            attachment.call(
                &lab,
                "ADD",
                &conf(
                    &lab,
                    json!({"runtimeConfig": {"portMappings": [
                        {"hostPort": 40001, "containerPort": 80}
                    ]}}),
                ),
            ),
            100,
        ),
    ];
    for (what, out, code) in &cases {
        assert!(!out.success(), "{what}: should fail\n{out}");
        let error = out.json();
        assert_eq!(error["code"], *code, "{what}\n{out}");
    }
    let missing_command = {
        let mut cmd = lab.host.place().command(netpath_cni_bin());
        cmd.env_remove("CNI_COMMAND");
        run_with_input(&mut cmd, Some(&good.to_string()), PLUGIN_TIMEOUT)
    };
    expect_cni_error(&missing_command, 4);

    // Nothing was left anywhere.
    assert_eq!(links(&netns), ["lo"]);
    assert_eq!(
        port_range(),
        port_range_before,
        "the netns' port range is back"
    );
    assert!(containers(&lab).is_empty());
    assert!(published(&lab).is_empty());
    let bridge = lab.bridge();
    let host_links = lab.host_links();
    assert!(
        host_links
            .iter()
            .all(|l| l == "lo" || l == Lab::UPLINK || *l == bridge),
        "leftover interfaces: {host_links:?}"
    );
    assert_healthy(&lab);
    // The same attachment works once the request is right.
    let result = attachment.add(&lab, &good);
    assert!(ping_ok(&lab.host, &result_ip(&result)));
}

#[test]
fn gc_keeps_only_the_valid_attachments() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let namespaces: Vec<Netns> = (0..3).map(|_| Netns::new("cn")).collect();
    let attachments: Vec<Attachment<'_>> = namespaces
        .iter()
        .enumerate()
        .map(|(i, netns)| Attachment::new(format!("ctr-gc-{i}"), netns))
        .collect();
    let conf = conf(&lab, json!({}));
    let ips: Vec<String> = attachments
        .iter()
        .map(|a| result_ip(&a.add(&lab, &conf)))
        .collect();

    // An attachment of another network on the same instance is not this
    // network's to collect.
    let other_netns = Netns::new("cn");
    let other = Attachment::new("ctr-other", &other_netns);
    let mut other_conf = conf.clone();
    other_conf["name"] = json!("another-network");
    other.add(&lab, &other_conf);

    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([
        {"containerID": attachments[0].id, "ifname": "eth0"}
    ]);
    let gc = plugin(&lab, "GC", &[], &gc_conf.to_string());
    gc.expect_ok("GC");
    assert_eq!(gc.stdout_trim(), "", "{gc}");

    let left: HashSet<String> = containers(&lab)
        .iter()
        .filter_map(|c| c["container_id"].as_str().map(str::to_owned))
        .collect();
    let expected: HashSet<String> = [attachments[0].id.clone(), "ctr-other".to_owned()].into();
    assert_eq!(left, expected);
    assert!(ping_ok(&lab.host, &ips[0]), "the valid one still works");
    for (netns, ip) in namespaces.iter().zip(&ips).skip(1) {
        assert_eq!(links(netns), ["lo"], "collected: {ip}");
    }
    assert_healthy(&lab);
}

#[test]
fn twenty_parallel_adds_get_distinct_reachable_addresses() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let namespaces: Vec<Netns> = (0..20).map(|_| Netns::new("cn")).collect();
    let conf = conf(&lab, json!({}));
    let attachments: Vec<Attachment<'_>> = namespaces
        .iter()
        .enumerate()
        .map(|(i, netns)| Attachment::new(format!("ctr-par-{i}"), netns))
        .collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = attachments
            .iter()
            .map(|a| {
                let (lab, conf) = (&lab, &conf);
                s.spawn(move || result_ip(&a.add(lab, conf)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), ips.len(), "distinct addresses: {ips:?}");
    for (netns, ip) in namespaces.iter().zip(&ips) {
        ping(&lab.host, ip).expect_ok("the host reaches every container");
        ping(netns.place(), GATEWAY).expect_ok("every container reaches the gateway");
    }
    assert_healthy(&lab);

    std::thread::scope(|s| {
        for a in &attachments {
            let (lab, conf) = (&lab, &conf);
            s.spawn(move || a.del(lab, conf));
        }
    });
    assert!(containers(&lab).is_empty());
    for netns in &namespaces {
        assert_eq!(links(netns), ["lo"]);
    }
}

/// Issue 16 for runtimes: the network configuration's `allow` list limits
/// who may reach the port mappings from outside, as `publish add --allow`
/// does; a bad entry is an invalid configuration and leaves nothing.
#[test]
fn the_network_configurations_allow_list_restricts_the_port_mappings() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let netns = Netns::new("cn");
    let attachment = Attachment::new(netpath_tests::unique_name("ctr"), &netns);
    let _web = Server::http(netns.place(), "0.0.0.0", 80);
    let mut conf = conf(
        &lab,
        json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 18083, "containerPort": 80, "protocol": "tcp"}
        ]}}),
    );
    conf["allow"] = json!(["bogus"]);
    let out = attachment.call(&lab, "ADD", &conf);
    expect_cni_error(&out, 7);
    assert!(containers(&lab).is_empty());

    conf["allow"] = json!([Lab::REMOTE_IP]);
    attachment.add(&lab, &conf);
    let url = format!("http://{}:18083/", Lab::HOST_IP);
    let get_from = |source: &str| {
        let out = curl(
            &lab.outside,
            &["--interface", source, "--connect-timeout", "2", &url],
        );
        out.success().then(|| out.stdout.trim().to_owned())
    };
    let admitted = get_from(Lab::REMOTE_IP).expect("the allowed source gets through");
    assert!(admitted.starts_with(Lab::REMOTE_IP), "{admitted}");
    let refused_before = lab.counter("drop_not_allowed").unwrap_or(0);
    assert_eq!(
        get_from(Lab::OUTSIDE_IP),
        None,
        "another source got through"
    );
    assert!(lab.counter("drop_not_allowed").unwrap_or(0) > refused_before);
    attachment.del(&lab, &conf);
    assert!(published(&lab).is_empty());
}

/// Runtimes reach the instance's other networks too: `netpathNetwork`
/// names one (`network create`), the result gives that network's subnet
/// and gateway, and isolation holds between it and `bridge`. An unknown
/// network is an error that leaves nothing.
#[test]
fn the_network_configuration_picks_the_instances_network() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    lab.netpath(&["network", "create", "cnet", "--subnet", "10.66.0.0/24"])
        .expect_ok("network create");
    let (front_ns, bridge_ns) = (Netns::new("cn"), Netns::new("cn"));
    let front = Attachment::new("ctr-net-front", &front_ns);
    let on_bridge = Attachment::new("ctr-net-bridge", &bridge_ns);
    let front_conf = conf(&lab, json!({ "netpathNetwork": "cnet" }));
    let bridge_conf = conf(&lab, json!({}));

    let result = front.add(&lab, &front_conf);
    assert_eq!(result["ips"][0]["gateway"], "10.66.0.1", "{result}");
    let front_ip = result_ip(&result);
    assert!(front_ip.starts_with("10.66.0."), "{result}");
    assert_eq!(result["routes"][0]["gw"], "10.66.0.1", "{result}");
    ping(front_ns.place(), "10.66.0.1").expect_ok("the network's gateway");
    let bridge_ip = result_ip(&on_bridge.add(&lab, &bridge_conf));
    assert!(
        !ping_ok(bridge_ns.place(), &front_ip),
        "a container on bridge reached one on cnet"
    );
    ping(bridge_ns.place(), GATEWAY).expect_ok("bridge's own gateway");
    let listed = containers(&lab);
    let front_record = listed
        .iter()
        .find(|c| c["ip"] == front_ip.as_str())
        .unwrap_or_else(|| panic!("{front_ip} in {listed:?}"));
    assert_eq!(
        front_record["networks"][0]["network"], "cnet",
        "{front_record}"
    );
    assert!(listed.iter().any(|c| c["ip"] == bridge_ip.as_str()));

    let missing = conf(&lab, json!({ "netpathNetwork": "nosuchnet" }));
    let other_ns = Netns::new("cn");
    let out = Attachment::new("ctr-net-missing", &other_ns).call(&lab, "ADD", &missing);
    let error = expect_cni_error(&out, 100);
    assert!(
        error["msg"]
            .as_str()
            .is_some_and(|m| m.contains("nosuchnet")),
        "{error}"
    );
    assert_eq!(links(&other_ns), ["lo"], "a failed ADD leaves nothing");

    front.del(&lab, &front_conf);
    on_bridge.del(&lab, &bridge_conf);
    assert!(containers(&lab).is_empty());
    lab.netpath(&["network", "rm", "cnet"])
        .expect_ok("the network is free again");
    assert_healthy(&lab);
}
