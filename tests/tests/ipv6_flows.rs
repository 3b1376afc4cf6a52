//! Issue 14, IPv6 dual stack: the IPv6 conntrack table as the agent and the
//! views see it. The agent's GC expires IPv6 flows (both keys) and recounts
//! `FLOW_COUNTS6` as it does IPv4's; `flows` and `stats` show IPv6 flows.
//! The flows are written into the pinned maps, as the datapath would: what
//! is checked here is userspace's side.
use std::{
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData, MapError};
use netpath_common::{
    FLOW_SEEN_REPLY, FlowEntry, FlowKey, Ip6, LAYOUT_VERSION, Proto, host::ip6_to_wire, names,
    nat_kind, tcp_state,
};
use netpath_tests::{Lab, flowfill::monotonic_ns};

/// Pinned map `name` of the lab's instance.
fn pinned(lab: &Lab, name: &str) -> MapData {
    let pin = format!(
        "/sys/fs/bpf/netpath/{}/v{LAYOUT_VERSION}/{name}",
        lab.instance()
    );
    MapData::from_pin(&pin).unwrap_or_else(|e| panic!("opening {pin}: {e}"))
}

fn conntrack6(lab: &Lab) -> HashMap<MapData, FlowKey<Ip6>, FlowEntry<Ip6>> {
    HashMap::try_from(Map::HashMap(pinned(lab, names::CONNTRACK6))).expect("CONNTRACK6")
}

fn ct_reply6(lab: &Lab) -> HashMap<MapData, FlowKey<Ip6>, FlowKey<Ip6>> {
    HashMap::try_from(Map::HashMap(pinned(lab, names::CT_REPLY6))).expect("CT_REPLY6")
}

fn flow_counts6(lab: &Lab) -> HashMap<MapData, Ip6, u32> {
    HashMap::try_from(Map::LruHashMap(pinned(lab, names::FLOW_COUNTS6))).expect("FLOW_COUNTS6")
}

/// Writes a flow as the datapath does: the reply key first.
fn insert_flow(lab: &Lab, key: FlowKey<Ip6>, entry: FlowEntry<Ip6>) {
    ct_reply6(lab)
        .insert(entry.reply, key, 0)
        .expect("reply key into CT_REPLY6");
    conntrack6(lab)
        .insert(key, entry, 0)
        .expect("flow into CONNTRACK6");
}

/// Polls `done` every 100 ms until it holds, for at most 15 s (several GC
/// passes, 2 s apart).
#[track_caller]
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        // Nothing signals a GC pass: bounded polling.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ip(text: &str) -> Ipv6Addr {
    text.parse().expect("IPv6 address")
}

#[test]
fn the_agent_collects_ipv6_flows_and_flows_and_stats_show_them() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let (container, outside, host, remote) = (
        ip("fd00:77::2"),
        ip("2001:db8::2"),
        ip("2001:db8::1"),
        ip("2001:db8:ffff::2"),
    );
    let now = monotonic_ns();
    let hour_ago = now.saturating_sub(3600 * 1_000_000_000);

    // A masqueraded UDP flow idle for an hour, and a count of flows for a
    // source that has none: the GC takes both away.
    let stale = FlowKey::new(container, remote, 33000, 53, Proto::Udp);
    let stale_entry = FlowEntry {
        reply: FlowKey::new(remote, host, 53, 40001, Proto::Udp),
        created_ns: hour_ago,
        last_seen_ns: hour_ago,
        nat_kind: nat_kind::MASQUERADE,
        ..FlowEntry::default()
    };
    insert_flow(&lab, stale, stale_entry);
    let nobody = ip6_to_wire(ip("fd00:77::99"));
    flow_counts6(&lab)
        .insert(nobody, 5, 0)
        .expect("a stale count");
    wait_until("the expired IPv6 flow removed, both keys", || {
        matches!(conntrack6(&lab).get(&stale, 0), Err(MapError::KeyNotFound))
            && matches!(
                ct_reply6(&lab).get(&stale_entry.reply, 0),
                Err(MapError::KeyNotFound)
            )
    });
    wait_until("the count of a source without flows removed", || {
        matches!(
            flow_counts6(&lab).get(&nobody, 0),
            Err(MapError::KeyNotFound)
        )
    });

    // An established flow to a published port stays, is counted for its
    // source, and shows in `flows` and `stats`.
    let open = FlowKey::new(outside, host, 50000, 8080, Proto::Tcp);
    let open_entry = FlowEntry {
        reply: FlowKey::new(container, outside, 80, 50000, Proto::Tcp),
        created_ns: now,
        last_seen_ns: now,
        nat_kind: nat_kind::DNAT,
        tcp_state: tcp_state::ESTABLISHED,
        flags: FLOW_SEEN_REPLY,
        ..FlowEntry::default()
    };
    insert_flow(&lab, open, open_entry);
    wait_until("the open flow counted for its source", || {
        flow_counts6(&lab).get(&ip6_to_wire(outside), 0).ok() == Some(1)
    });
    assert!(
        conntrack6(&lab).get(&open, 0).is_ok(),
        "the open flow stays"
    );

    let flows = lab.netpath_json(&["flows", "--proto", "tcp", "--port", "8080"]);
    let flows = flows.as_array().expect("flows --json is a list");
    assert_eq!(flows.len(), 1, "{flows:?}");
    let flow = &flows[0];
    assert_eq!(flow["kind"], "dnat", "{flow}");
    assert_eq!(flow["state"], "established", "{flow}");
    assert_eq!(flow["original"]["src"], outside.to_string(), "{flow}");
    assert_eq!(flow["original"]["dst"], host.to_string(), "{flow}");
    assert_eq!(flow["translated"]["dst"], container.to_string(), "{flow}");
    assert_eq!(flow["translated"]["dport"], 80, "{flow}");
    let text = lab.netpath(&["flows"]);
    text.expect_ok("flows");
    assert!(
        text.stdout
            .contains("[2001:db8::2]:50000 -> [2001:db8::1]:8080"),
        "IPv6 tuples in brackets:\n{}",
        text.stdout
    );
    let stats = lab.netpath_json(&["stats"]);
    assert_eq!(stats["conntrack6_entries"], 1, "{stats}");
    assert!(stats["conntrack6_capacity"].as_u64() >= Some(1), "{stats}");
}
