//! Issue 16, networks: several isolated networks in one instance, internal
//! networks, ICC off, a container on two networks, and `network rm`/`ls`.
//! Every refusal is checked with real TCP (and the drop counter it moves)
//! next to the traffic that must keep working.

use netpath_tests::{Lab, Place, Server, curl, ping_ok};
use serde_json::Value;

netpath_tests::with_each_accel!(two_networks_reach_each_other_only_through_published_ports);

/// The `up` network's name and default subnet.
const DEFAULT_NETWORK: &str = "bridge";
const DEFAULT_SUBNET: &str = "10.77.0.0/16";
const DEFAULT_GATEWAY: &str = "10.77.0.1";

/// Where every container's HTTP server listens.
const SERVER_PORT: u16 = 80;

/// A datapath counter; 0 while the netpath under test does not have it (the
/// waits below then fail with the counter's name).
fn counter(lab: &Lab, name: &str) -> u64 {
    lab.counter(name).unwrap_or(0)
}

/// `network create NAME --subnet SUBNET EXTRA` that must succeed.
#[track_caller]
fn network_create(lab: &Lab, name: &str, subnet: &str, extra: &[&str]) {
    let mut args = vec!["network", "create", name, "--subnet", subnet];
    args.extend_from_slice(extra);
    lab.netpath(&args).expect_ok("netpath network create");
}

/// `network ls --json`.
#[track_caller]
fn networks(lab: &Lab) -> Vec<Value> {
    match lab.netpath_json(&["network", "ls"]) {
        Value::Array(entries) => entries,
        other => panic!("network ls --json is not an array: {other}"),
    }
}

/// The `network ls --json` entry of network `name`, if listed.
fn network(lab: &Lab, name: &str) -> Option<Value> {
    networks(lab).into_iter().find(|n| n["name"] == name)
}

/// The names of an entry's `containers` (names, or objects with a name).
fn members(entry: &Value) -> Vec<String> {
    let list = entry["containers"]
        .as_array()
        .unwrap_or_else(|| panic!("no containers list in {entry}"));
    list.iter()
        .map(|c| {
            c.as_str()
                .or_else(|| c["name"].as_str())
                .unwrap_or_else(|| panic!("a container without a name in {entry}"))
                .to_owned()
        })
        .collect()
}

/// The IPv4 address of interface `dev` in container `name`, if it has one.
fn address_on(lab: &Lab, name: &str, dev: &str) -> Option<String> {
    let out = lab
        .container(name)
        .exec("ip", &["-4", "-o", "addr", "show", "dev", dev]);
    let word = out
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    Some(word.split('/').next()?.to_owned())
}

#[track_caller]
fn container_ip(lab: &Lab, name: &str) -> String {
    lab.container_ip(name)
        .unwrap_or_else(|| panic!("container {name} has no address on eth0"))
}

/// GETs `http://ADDR:PORT/` from `from` (a server of [`Server::http`]
/// answers with the client's "ip:port"): that body, or None without an
/// answer.
fn get(from: impl Into<Place>, addr: &str, port: u16) -> Option<String> {
    get_bound(from, None, addr, port)
}

/// [`get`] from local address `source` when given.
fn get_bound(
    from: impl Into<Place>,
    source: Option<&str>,
    addr: &str,
    port: u16,
) -> Option<String> {
    let url = format!("http://{addr}:{port}/");
    let mut args = vec!["--connect-timeout", "2", "--max-time", "4", &url];
    if let Some(source) = source {
        args.extend(["--interface", source]);
    }
    let out = curl(from, &args);
    out.success().then(|| out.stdout.trim().to_owned())
}

/// What a cell of a reachability matrix expects.
enum Expect {
    /// An answer, the server having seen this source address.
    Reach { seen_as: String },
    /// No answer, and the server saw nothing from the client's address.
    Refused,
}

/// One cell: a GET from `from` (from its address `from_ip`, bound to it
/// when `bind`) to `addr:port`, served by `server`.
struct Cell<'a> {
    label: String,
    from: Place,
    from_ip: String,
    bind: bool,
    addr: String,
    port: u16,
    server: &'a Server,
    expect: Expect,
}

/// Runs every cell at once (a refused one takes its connect timeout) and
/// panics listing each cell that went otherwise than expected.
#[track_caller]
fn assert_matrix(cells: &[Cell<'_>]) {
    let answers: Vec<Option<String>> = std::thread::scope(|s| {
        let runs: Vec<_> = cells
            .iter()
            .map(|c| {
                s.spawn(|| {
                    let source = c.bind.then_some(c.from_ip.as_str());
                    get_bound(c.from.clone(), source, &c.addr, c.port)
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("a matrix cell's thread"))
            .collect()
    });
    let mut wrong = Vec::new();
    for (cell, answer) in cells.iter().zip(&answers) {
        match (&cell.expect, answer) {
            (Expect::Reach { seen_as }, Some(seen)) => {
                if !seen.starts_with(&format!("{seen_as}:")) {
                    wrong.push(format!(
                        "{}: reached, but the server saw {seen}, not {seen_as}",
                        cell.label
                    ));
                }
            }
            (Expect::Reach { .. }, None) => {
                wrong.push(format!("{}: no answer, must reach", cell.label));
            }
            (Expect::Refused, Some(seen)) => {
                wrong.push(format!(
                    "{}: answered (server saw {seen}), must be refused",
                    cell.label
                ));
            }
            (Expect::Refused, None) => {
                let prefix = format!("{}:", cell.from_ip);
                let leaked: Vec<String> = cell
                    .server
                    .clients()
                    .into_iter()
                    .filter(|c| c.starts_with(&prefix))
                    .collect();
                if !leaked.is_empty() {
                    wrong.push(format!(
                        "{}: no answer, but the server saw {leaked:?}",
                        cell.label
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "reachability matrix, {} of {} cells wrong:\n{}",
        wrong.len(),
        cells.len(),
        wrong.join("\n")
    );
}

/// A lab with netpath up (uplink translations in `accel`) and the outside
/// a real wire (full checksums, as from a NIC: see nat.rs).
fn lab_up(accel: &str) -> Lab {
    lab_up_with(&["--accel", accel])
}

fn lab_up_with(up_args: &[&str]) -> Lab {
    let lab = Lab::new();
    lab.outside
        .exec(&["ethtool", "-K", Lab::OUTSIDE_IF, "tx", "off"])
        .expect_ok("checksums on the outside wire");
    lab.up_ok(up_args);
    lab
}

/// Network A is `up`'s `bridge` (a1 by default, a2 named), network B one
/// made with `network create` (b1, b2). Every container serves HTTP; a1 is
/// published on 8080 and b1 on 8081. Cell by cell: within a network,
/// across (refused, `drop_other_network`), across through a published port
/// on the host's address and on either gateway, the host to every
/// container, the outside to every container directly (refused,
/// `drop_unsolicited`) and through the published ports, and every
/// container to the outside.
fn two_networks_reach_each_other_only_through_published_ports(accel: &str) {
    let lab = lab_up(accel);
    let (b_subnet, b_gateway) = ("10.62.0.0/24", "10.62.0.1");
    network_create(&lab, "nb", b_subnet, &[]);
    let [a1, a2, b1, b2] = ["a", "a", "b", "b"].map(|p| lab.container_name(p));
    lab.container_add_ok(&a1, &["-p", "8080:80"]);
    lab.container_add_ok(&a2, &["--network", DEFAULT_NETWORK]);
    lab.container_add_ok(&b1, &["--network", "nb", "-p", "8081:80"]);
    lab.container_add_ok(&b2, &["--network", "nb"]);
    let ip = |name: &String| container_ip(&lab, name);
    let (a1_ip, a2_ip, b1_ip, b2_ip) = (ip(&a1), ip(&a2), ip(&b1), ip(&b2));
    for (name, addr, subnet) in [
        (&a1, &a1_ip, "10.77."),
        (&a2, &a2_ip, "10.77."),
        (&b1, &b1_ip, "10.62.0."),
        (&b2, &b2_ip, "10.62.0."),
    ] {
        assert!(addr.starts_with(subnet), "{name} has {addr}");
    }
    let server = |name: &String| Server::http(lab.container(name), "0.0.0.0", SERVER_PORT);
    let (s_a1, s_a2, s_b1, s_b2) = (server(&a1), server(&a2), server(&b1), server(&b2));
    let outside_server = Server::http(&lab.outside, "0.0.0.0", 0);
    // The outside routes the container subnets via the host, as a neighbour
    // on the uplink's network could.
    for subnet in [DEFAULT_SUBNET, b_subnet] {
        lab.outside
            .exec(&["ip", "route", "add", subnet, "via", Lab::HOST_IP])
            .expect_ok("routing a container subnet via the host");
    }

    let other_network_before = counter(&lab, "drop_other_network");
    let unsolicited_before = counter(&lab, "drop_unsolicited");
    let reach = |seen_as: &str| Expect::Reach {
        seen_as: seen_as.to_owned(),
    };
    // A container as a client: its netns and its own address.
    let a = |name: &String, addr: &String| (lab.container(name), addr.clone(), false);
    let host = (lab.host.place(), Lab::HOST_IP.to_owned(), false);
    // The outside tries the containers directly from its wire address and
    // the published ports from the one on its lo, so that a server's
    // clients tell the two apart.
    let outside = (lab.outside.place(), Lab::OUTSIDE_IP.to_owned(), true);
    let outside_remote = (lab.outside.place(), Lab::REMOTE_IP.to_owned(), true);
    let mut matrix: Vec<Cell<'_>> = Vec::new();
    let mut add =
        |label: &str, from: (Place, String, bool), addr: &str, port: u16, server, expect| {
            matrix.push(Cell {
                label: label.to_owned(),
                from: from.0,
                from_ip: from.1,
                bind: from.2,
                addr: addr.to_owned(),
                port,
                server,
                expect,
            });
        };
    let p = SERVER_PORT;
    // Within a network: direct, no NAT.
    add("a1 -> a2", a(&a1, &a1_ip), &a2_ip, p, &s_a2, reach(&a1_ip));
    add("a2 -> a1", a(&a2, &a2_ip), &a1_ip, p, &s_a1, reach(&a2_ip));
    add("b1 -> b2", a(&b1, &b1_ip), &b2_ip, p, &s_b2, reach(&b1_ip));
    add("b2 -> b1", a(&b2, &b2_ip), &b1_ip, p, &s_b1, reach(&b2_ip));
    // Across networks, directly: refused.
    add(
        "a1 -> b2",
        a(&a1, &a1_ip),
        &b2_ip,
        p,
        &s_b2,
        Expect::Refused,
    );
    add(
        "a2 -> b1",
        a(&a2, &a2_ip),
        &b1_ip,
        p,
        &s_b1,
        Expect::Refused,
    );
    add(
        "b1 -> a2",
        a(&b1, &b1_ip),
        &a2_ip,
        p,
        &s_a2,
        Expect::Refused,
    );
    add(
        "b2 -> a1",
        a(&b2, &b2_ip),
        &a1_ip,
        p,
        &s_a1,
        Expect::Refused,
    );
    let refused_across = 4;
    // Across networks through a published port (hairpin: SNAT to the
    // target network's gateway), on the host's address and on either
    // network's gateway.
    for addr in [Lab::HOST_IP, DEFAULT_GATEWAY, b_gateway] {
        add(
            &format!("a2 -> {addr}:8081 (b1)"),
            a(&a2, &a2_ip),
            addr,
            8081,
            &s_b1,
            reach(b_gateway),
        );
        add(
            &format!("b2 -> {addr}:8080 (a1)"),
            a(&b2, &b2_ip),
            addr,
            8080,
            &s_a1,
            reach(DEFAULT_GATEWAY),
        );
    }
    // The host reaches every container directly.
    for (name, addr, server) in [
        ("a1", &a1_ip, &s_a1),
        ("a2", &a2_ip, &s_a2),
        ("b1", &b1_ip, &s_b1),
        ("b2", &b2_ip, &s_b2),
    ] {
        let gateway = if name.starts_with('a') {
            DEFAULT_GATEWAY
        } else {
            b_gateway
        };
        // The host's connection leaves from its address on the bridge.
        add(
            &format!("host -> {name}"),
            host.clone(),
            addr,
            p,
            server,
            reach(gateway),
        );
        add(
            &format!("outside -> {name} directly"),
            outside.clone(),
            addr,
            p,
            server,
            Expect::Refused,
        );
    }
    let refused_unsolicited = 4;
    // The outside through the published ports, seen with its own address.
    add(
        "outside -> host:8080 (a1)",
        outside_remote.clone(),
        Lab::HOST_IP,
        8080,
        &s_a1,
        reach(Lab::REMOTE_IP),
    );
    add(
        "outside -> host:8081 (b1)",
        outside_remote,
        Lab::HOST_IP,
        8081,
        &s_b1,
        reach(Lab::REMOTE_IP),
    );
    // Every container to the outside, masqueraded to the host's address.
    for (role, name, addr) in [
        ("a1", &a1, &a1_ip),
        ("a2", &a2, &a2_ip),
        ("b1", &b1, &b1_ip),
        ("b2", &b2, &b2_ip),
    ] {
        add(
            &format!("{role} -> outside"),
            a(name, addr),
            Lab::OUTSIDE_IP,
            outside_server.port(),
            &outside_server,
            reach(Lab::HOST_IP),
        );
    }
    assert_matrix(&matrix);

    lab.wait_counter("drop_other_network", other_network_before + refused_across);
    lab.wait_counter("drop_unsolicited", unsolicited_before + refused_unsolicited);
}

/// `--internal`: members reach each other and the gateway, nothing outside
/// the subnet (`drop_internal`), and `-p` is refused; a container of
/// another network reaches the same outside server all along.
#[test]
fn an_internal_network_has_no_way_out_and_refuses_published_ports() {
    let lab = lab_up("tc");
    network_create(&lab, "ni", "10.63.0.0/24", &["--internal"]);
    let [i1, i2, i3, free] = ["i", "i", "i", "f"].map(|p| lab.container_name(p));
    lab.container_add_ok(&i1, &["--network", "ni"]);
    lab.container_add_ok(&i2, &["--network", "ni"]);
    lab.container_add_ok(&free, &[]);
    let i2_ip = container_ip(&lab, &i2);
    let i2_server = Server::http(lab.container(&i2), "0.0.0.0", SERVER_PORT);
    let outside_server = Server::http(&lab.outside, "0.0.0.0", 0);

    // No route out: the way out is closed before the datapath.
    let routes = lab
        .container(&i1)
        .exec("ip", &["-4", "route", "show", "default"]);
    routes.expect_ok("ip route in i1");
    assert_eq!(
        routes.stdout.trim(),
        "",
        "an internal network's container has a default route"
    );
    assert_eq!(
        get(lab.container(&i1), Lab::OUTSIDE_IP, outside_server.port()),
        None,
        "a container of an internal network reached the outside"
    );
    // A container that makes its own route out (it may have CAP_NET_ADMIN
    // in its netns) meets the datapath.
    lab.container(&i1)
        .exec("ip", &["route", "add", "default", "via", "10.63.0.1"])
        .expect_ok("a route out, made in the container");
    let before = counter(&lab, "drop_internal");
    assert_eq!(
        get(lab.container(&i1), Lab::OUTSIDE_IP, outside_server.port()),
        None,
        "a container of an internal network reached the outside by its own route"
    );
    assert!(
        !ping_ok(lab.container(&i1), Lab::REMOTE_IP),
        "a container of an internal network pinged the outside"
    );
    lab.wait_counter("drop_internal", before + 2);
    assert!(
        outside_server.clients().is_empty(),
        "the outside saw {:?}",
        outside_server.clients()
    );
    let seen = get(lab.container(&free), Lab::OUTSIDE_IP, outside_server.port())
        .expect("a container of the default network reaches the outside");
    assert!(seen.starts_with(&format!("{}:", Lab::HOST_IP)), "{seen}");

    let i1_ip = container_ip(&lab, &i1);
    let seen = get(lab.container(&i1), &i2_ip, SERVER_PORT)
        .expect("members of an internal network reach each other");
    assert!(
        seen.starts_with(&format!("{i1_ip}:")),
        "no NAT inside: {seen}"
    );
    assert!(ping_ok(lab.container(&i1), "10.63.0.1"), "the gateway");
    drop(i2_server);

    let refused = lab.container_add(&i3, &["--network", "ni", "-p", "8090:80"]);
    refused.expect_one_line_error("internal");
    let ls = lab.netpath_json(&["container", "ls"]);
    assert!(
        !ls.to_string().contains(&i3),
        "a refused container was added: {ls}"
    );
    let refused = lab.netpath(&["publish", "add", &i1, "8090:80"]);
    refused.expect_one_line_error("internal");
    assert_eq!(
        lab.netpath_json(&["publish", "ls"]),
        serde_json::json!([]),
        "nothing was published"
    );
}

/// `--icc=false`: members cannot reach each other directly (`drop_icc`),
/// but through a published port on the host's address, and they reach the
/// gateway and the outside.
#[test]
fn icc_off_keeps_members_apart_except_through_published_ports() {
    const METRICS: &str = "127.0.0.1:9479";
    let lab = lab_up_with(&["--metrics", METRICS]);
    network_create(&lab, "nq", "10.64.0.0/24", &["--icc=false"]);
    let [c1, c2] = ["q", "q"].map(|p| lab.container_name(p));
    lab.container_add_ok(&c1, &["--network", "nq"]);
    lab.container_add_ok(&c2, &["--network", "nq", "-p", "8091:80"]);
    let c1_ip = container_ip(&lab, &c1);
    let c2_ip = container_ip(&lab, &c2);
    let c2_server = Server::http(lab.container(&c2), "0.0.0.0", SERVER_PORT);
    let outside_server = Server::http(&lab.outside, "0.0.0.0", 0);

    let before = counter(&lab, "drop_icc");
    assert_eq!(
        get(lab.container(&c1), &c2_ip, SERVER_PORT),
        None,
        "containers of a --icc=false network reached each other"
    );
    assert!(
        !ping_ok(lab.container(&c1), &c2_ip),
        "containers of a --icc=false network pinged each other"
    );
    lab.wait_counter("drop_icc", before + 2);
    // Counted for the network too: in stats and in the metrics.
    let stats = lab.netpath_json(&["stats"]);
    let icc = stats["networks"]["nq"]["icc"].as_u64().unwrap_or(0);
    assert!(
        icc >= 2,
        "per-network drops in stats: {}",
        stats["networks"]
    );
    assert_eq!(
        stats["networks"]["bridge"]["icc"], 0,
        "{}",
        stats["networks"]
    );
    let scrape = lab
        .host
        .exec(&["curl", "-sS", &format!("http://{METRICS}/metrics")]);
    scrape.expect_ok("scraping the agent's metrics");
    let sample = "netpath_network_drops_total{network=\"nq\",reason=\"icc\"} ";
    let scraped = scrape
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.parse::<u64>().ok());
    assert!(
        scraped.is_some_and(|n| n >= 2),
        "no {sample}>= 2 in\n{}",
        scrape.stdout
    );
    let from_c1 = format!("{c1_ip}:");
    assert!(
        !c2_server.clients().iter().any(|c| c.starts_with(&from_c1)),
        "c2 saw {:?}",
        c2_server.clients()
    );

    let seen = get(lab.container(&c1), Lab::HOST_IP, 8091)
        .expect("a published port is reached from the same --icc=false network");
    assert!(seen.starts_with("10.64.0.1:"), "hairpin SNAT: {seen}");
    assert!(ping_ok(lab.container(&c1), "10.64.0.1"), "the gateway");
    let seen = get(lab.container(&c1), Lab::OUTSIDE_IP, outside_server.port())
        .expect("a --icc=false network has a way out");
    assert!(seen.starts_with(&format!("{}:", Lab::HOST_IP)), "{seen}");
    let seen = get(&lab.outside, Lab::HOST_IP, 8091).expect("the outside reaches c2");
    assert!(seen.starts_with(&format!("{}:", Lab::OUTSIDE_IP)), "{seen}");
    let listed = network(&lab, "nq").expect("nq listed");
    assert_eq!(listed["icc"], false, "{listed}");
}

/// `network connect` gives a container a second interface on another
/// network, from which it reaches that network's containers; `network
/// disconnect` takes it away again, and the isolation is back.
#[test]
fn a_container_on_two_networks_reaches_both_until_disconnected() {
    let lab = lab_up("tc");
    network_create(&lab, "nc", "10.65.0.0/24", &[]);
    let [a, b, m] = ["a", "b", "m"].map(|p| lab.container_name(p));
    lab.container_add_ok(&a, &[]);
    lab.container_add_ok(&b, &["--network", "nc"]);
    lab.container_add_ok(&m, &[]);
    let (a_ip, b_ip, m_ip) = (
        container_ip(&lab, &a),
        container_ip(&lab, &b),
        container_ip(&lab, &m),
    );
    let servers: Vec<Server> = [&a, &b, &m]
        .map(|name| Server::http(lab.container(name), "0.0.0.0", SERVER_PORT))
        .into();
    let m_second_ip = "10.65.0.50";

    // Before: m is on `bridge` only.
    let before = counter(&lab, "drop_other_network");
    assert_eq!(get(lab.container(&m), &b_ip, SERVER_PORT), None);
    lab.wait_counter("drop_other_network", before + 1);
    assert!(get(lab.container(&m), &a_ip, SERVER_PORT).is_some());

    lab.netpath(&["network", "connect", "nc", &m, "--ip", m_second_ip])
        .expect_ok("netpath network connect");
    assert_eq!(address_on(&lab, &m, "eth0").as_deref(), Some(m_ip.as_str()));
    assert_eq!(address_on(&lab, &m, "eth1").as_deref(), Some(m_second_ip));
    let seen = get(lab.container(&m), &b_ip, SERVER_PORT)
        .expect("a container on two networks reaches the second one");
    assert!(seen.starts_with(&format!("{m_second_ip}:")), "{seen}");
    let seen = get(lab.container(&m), &a_ip, SERVER_PORT)
        .expect("a container on two networks reaches the first one");
    assert!(seen.starts_with(&format!("{m_ip}:")), "{seen}");
    let seen = get(lab.container(&b), m_second_ip, SERVER_PORT)
        .expect("the second network's containers reach the newcomer");
    assert!(seen.starts_with(&format!("{b_ip}:")), "{seen}");
    let listed = network(&lab, "nc").expect("nc listed");
    let mut on_nc = members(&listed);
    on_nc.sort();
    let mut expected = vec![b.clone(), m.clone()];
    expected.sort();
    assert_eq!(on_nc, expected, "{listed}");
    // a, on `bridge` only, is still kept from b.
    assert_eq!(get(lab.container(&a), &b_ip, SERVER_PORT), None);

    lab.netpath(&["network", "disconnect", "nc", &m])
        .expect_ok("netpath network disconnect");
    assert_eq!(address_on(&lab, &m, "eth1"), None, "eth1 is gone");
    let before = counter(&lab, "drop_other_network");
    assert_eq!(
        get(lab.container(&m), &b_ip, SERVER_PORT),
        None,
        "disconnected, m still reached b"
    );
    lab.wait_counter("drop_other_network", before + 1);
    assert!(
        get(lab.container(&m), &a_ip, SERVER_PORT).is_some(),
        "m still reaches its first network"
    );
    let listed = network(&lab, "nc").expect("nc listed");
    assert_eq!(members(&listed), vec![b.clone()], "{listed}");
    drop(servers);
}

/// `network rm` is refused while a container is on the network (and
/// changes nothing); once the container is gone it removes the network and
/// its bridge, and `down` leaves nothing of any network behind.
#[test]
fn network_rm_is_refused_while_in_use_and_clean_after() {
    let lab = lab_up("tc");
    let bridge = "npnr0";
    network_create(&lab, "nr", "10.66.0.0/24", &["--bridge", bridge]);
    let c = lab.container_name("r");
    lab.container_add_ok(&c, &["--network", "nr"]);
    assert!(lab.host_links().iter().any(|l| l == bridge), "bridge made");

    let refused = lab.netpath(&["network", "rm", "nr"]);
    refused.expect_one_line_error("nr");
    assert!(network(&lab, "nr").is_some(), "nr still listed");
    assert!(lab.host_links().iter().any(|l| l == bridge), "bridge kept");
    assert!(
        ping_ok(lab.container(&c), "10.66.0.1"),
        "the container still reaches its gateway"
    );

    lab.netpath(&["container", "rm", &c])
        .expect_ok("netpath container rm");
    lab.netpath(&["network", "rm", "nr"])
        .expect_ok("netpath network rm");
    assert!(network(&lab, "nr").is_none(), "nr still listed");
    assert!(
        !lab.host_links().iter().any(|l| l == bridge),
        "bridge {bridge} left behind: {:?}",
        lab.host_links()
    );
    // The name and the subnet are free again.
    network_create(&lab, "nr", "10.66.0.0/24", &[]);
    lab.down().expect_ok("netpath down");
    lab.assert_clean();
}

/// `network ls --json` shows `up`'s network and what `network create` made,
/// with their options and containers; the text form names them all.
#[test]
fn network_ls_shows_what_was_created() {
    let lab = lab_up("tc");
    network_create(&lab, "n1", "10.67.0.0/24", &["--internal"]);
    network_create(
        &lab,
        "n2",
        "10.68.0.0/24",
        &["--icc=false", "--bridge", "npn2x"],
    );
    let c = lab.container_name("l");
    lab.container_add_ok(&c, &["--network", "n1"]);

    let all = networks(&lab);
    assert_eq!(all.len(), 3, "{all:?}");
    let default = network(&lab, DEFAULT_NETWORK).expect("the up network is listed");
    assert_eq!(default["subnet"], DEFAULT_SUBNET, "{default}");
    assert_eq!(default["gateway"], DEFAULT_GATEWAY, "{default}");
    assert_eq!(default["bridge"], lab.bridge(), "{default}");
    assert_eq!(
        (&default["internal"], &default["icc"]),
        (&Value::Bool(false), &Value::Bool(true)),
        "{default}"
    );
    assert!(members(&default).is_empty(), "{default}");

    let n1 = network(&lab, "n1").expect("n1 listed");
    assert_eq!(n1["subnet"], "10.67.0.0/24", "{n1}");
    assert_eq!(n1["gateway"], "10.67.0.1", "{n1}");
    assert_eq!(
        (&n1["internal"], &n1["icc"]),
        (&Value::Bool(true), &Value::Bool(true)),
        "{n1}"
    );
    assert_eq!(members(&n1), vec![c.clone()], "{n1}");
    let n1_bridge = n1["bridge"].as_str().expect("n1 has a bridge");
    assert!(lab.host_links().iter().any(|l| l == n1_bridge), "{n1}");

    let n2 = network(&lab, "n2").expect("n2 listed");
    assert_eq!(n2["bridge"], "npn2x", "{n2}");
    assert_eq!(
        (&n2["internal"], &n2["icc"]),
        (&Value::Bool(false), &Value::Bool(false)),
        "{n2}"
    );
    assert!(members(&n2).is_empty(), "{n2}");

    let text = lab.netpath(&["network", "ls"]);
    text.expect_ok("netpath network ls");
    for name in [DEFAULT_NETWORK, "n1", "n2", "10.67.0.0/24", "npn2x"] {
        assert!(
            text.stdout.contains(name),
            "{name} missing:\n{}",
            text.stdout
        );
    }
    // A name or a subnet already taken is refused, and nothing changes.
    lab.netpath(&["network", "create", "n1", "--subnet", "10.69.0.0/24"])
        .expect_one_line_error("n1");
    lab.netpath(&["network", "create", "n3", "--subnet", "10.67.0.128/25"])
        .expect_fail("a subnet overlapping n1's");
    assert_eq!(networks(&lab).len(), 3, "nothing was added");
}
