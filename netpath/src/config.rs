//! What an instance can be configured with, and the defaults: the bottom
//! floor every other module may import, which imports none of them.
use std::{fmt, fs, str::FromStr, time::Duration};

use netpath_common::{Addr, FLOW_SEEN_REPLY, FlowEntry, FlowKey, IPPROTO_TCP, tcp_state};

/// Container subnet of a new instance; the gateway is its first address.
pub const DEFAULT_SUBNET: &str = "10.77.0.0/16";
/// Bridge of a new instance named `default` (see `default_bridge_name`).
pub const DEFAULT_BRIDGE: &str = "np0";
/// Name of the instance used when `--instance` is not given.
pub const DEFAULT_INSTANCE: &str = "default";
/// Start of the bridge name of every other instance. Not `np-`: that is the
/// host side of a container's veth (`np-CONTAINER`), which could take it.
const BRIDGE_PREFIX: &str = "npbr-";
/// Longest interface name (IFNAMSIZ less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Default SNAT port range (host order, inclusive); the range is written to
/// `ip_local_reserved_ports` so host sockets never take these ports.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (40000, 49999);

/// The bridge of a new instance without `--bridge`: `np0` for the default
/// instance, `npbr-INSTANCE` for the others, so instances in one network
/// namespace do not collide. A name too long for an interface keeps its
/// first letters and gets a hash of the whole name (stable across builds and
/// versions: FNV-1a, not std's hasher), so it stays deterministic and
/// distinct.
pub fn default_bridge_name(instance: &str) -> String {
    if instance == DEFAULT_INSTANCE {
        return DEFAULT_BRIDGE.to_owned();
    }
    let whole = format!("{BRIDGE_PREFIX}{instance}");
    if whole.len() <= MAX_IFNAME_LEN {
        return whole;
    }
    let hash = stable_hash(instance);
    // npbr- + 4 letters + - + 5 hex digits = 15.
    let kept: String = instance.chars().take(4).collect();
    format!("{BRIDGE_PREFIX}{kept}-{:05x}", hash & 0xf_ffff)
}

/// FNV-1a of `text`: stable across builds and versions (std's hasher is
/// not), for names derived from an instance's name.
pub fn stable_hash(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// Where the uplink ingress translations run.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    #[default]
    Tc,
    Xdp,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Tc => "tc",
            Accel::Xdp => "xdp",
        })
    }
}

/// How many flows one address may hold in the conntrack table: a container
/// (what it opens), an outside source (what it opens to published ports).
/// `None`: a share of the table; `Some(0)`: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowLimits {
    pub per_container: Option<u32>,
    pub per_source: Option<u32>,
    /// SNAT ports one container may hold toward one destination.
    #[serde(default)]
    pub snat_ports_per_container: Option<u32>,
}

impl FlowLimits {
    /// The limits for a table of `capacity` flows, as the datapath takes
    /// them (0: none). By default one container may fill half the table,
    /// one outside source a quarter: generous for real clients (a busy one
    /// opens tens of thousands of connections a second, each new flow
    /// counting until the agent's next recount), and no single address can
    /// crowd everyone out. Floors keep small test tables usable.
    pub fn resolved(self, capacity: u32) -> (u32, u32) {
        (
            self.per_container.unwrap_or((capacity / 2).max(1024)),
            self.per_source.unwrap_or((capacity / 4).max(256)),
        )
    }

    /// The SNAT share for a range of `snat_ports` ports (0: none). By
    /// default half the range: a container may keep thousands of
    /// connections open to one server, and can't take every port the
    /// others need to reach it.
    pub fn snat_share(self, snat_ports: u32) -> u32 {
        self.snat_ports_per_container
            .unwrap_or((snat_ports / 2).max(1))
    }
}

/// Map sizes; 0 means "scale with the host's memory".
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MapSizes {
    /// The conntrack budget, in IPv4 flows: with IPv6 on, both families'
    /// tables share that memory (see `resolved`).
    pub conntrack: u32,
    pub ports: u32,
    pub endpoints: u32,
    /// Whether IPv6 is on: only then do its tables get room.
    #[serde(default)]
    pub ipv6: bool,
}

/// What the kernel takes for one entry of a preallocated hash map with
/// `key` and `value` bytes: its element (a 48-byte header, then key and
/// value, each rounded up to 8 bytes) and its share of the buckets (16
/// bytes each, one per entry, give or take the power-of-two rounding).
const fn hash_entry_bytes(key: usize, value: usize) -> usize {
    const fn round8(n: usize) -> usize {
        n.div_ceil(8) * 8
    }
    48 + round8(key) + round8(value) + 16
}

/// The kernel memory of one flow of family `A`: its `CONNTRACK` entry
/// and its `CT_REPLY` entry. 320 bytes for IPv4, 416 for IPv6.
pub const fn flow_bytes<A: Addr>() -> usize {
    use std::mem::size_of;
    hash_entry_bytes(size_of::<FlowKey<A>>(), size_of::<FlowEntry<A>>())
        + hash_entry_bytes(size_of::<FlowKey<A>>(), size_of::<FlowKey<A>>())
}

/// The share of the conntrack memory IPv6 gets when it is on: IPv4 still
/// carries most traffic (and every container has IPv4), so it keeps three
/// quarters.
const IPV6_SHARE: u32 = 4;

/// Map sizes with every unset one filled (see `MapSizes::resolved`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedSizes {
    /// `CONNTRACK` and `CT_REPLY`.
    pub conntrack: u32,
    /// `CONNTRACK6` and `CT_REPLY6`.
    pub conntrack6: u32,
    /// `FLOW_COUNTS6` and `SNAT_SHARES6`: never more entries than IPv6
    /// flows, nor than the object's 16 Ki (a quarter of IPv4's fixed 64 Ki).
    pub counts6: u32,
    /// `PORTS`; `PORTS6` and `ENDPOINTS6` alike when IPv6 is on.
    pub ports: u32,
    pub ports6: u32,
    pub endpoints: u32,
    pub endpoints6: u32,
}

impl MapSizes {
    /// Fills unset sizes. The conntrack budget defaults to memory / 100 KiB
    /// IPv4 flows (about 1/320 of memory at 320 bytes a flow), clamped to
    /// [64 Ki, 4 Mi] flows. With IPv6 off, IPv4 has all of it; with IPv6
    /// on, IPv6 takes a quarter of that memory (as many 416-byte IPv6 flows
    /// as fit) and IPv4 the rest, so both tables together take what IPv4's
    /// alone did. The tables of a family that is off get one entry (a map
    /// can't have none).
    pub fn resolved(self) -> ResolvedSizes {
        let mem_bytes = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(1 << 30, |kb| kb * 1024);
        let flows = (mem_bytes / 512 / 200).clamp(1 << 16, 1 << 22) as u32;
        self.resolved_with(flows)
    }

    /// `resolved`, with `default_flows` the budget when none is set.
    fn resolved_with(self, default_flows: u32) -> ResolvedSizes {
        let or = |value: u32, default: u32| if value == 0 { default } else { value };
        let budget = or(self.conntrack, default_flows);
        let ports = or(self.ports, 65536);
        let endpoints = or(self.endpoints, 4096);
        if !self.ipv6 {
            return ResolvedSizes {
                conntrack: budget,
                conntrack6: 1,
                counts6: 1,
                ports,
                ports6: 1,
                endpoints,
                endpoints6: 1,
            };
        }
        let share6 = budget / IPV6_SHARE;
        let conntrack6 = (u64::from(share6) * flow_bytes::<u32>() as u64
            / flow_bytes::<netpath_common::Ip6>() as u64)
            .max(1) as u32;
        ResolvedSizes {
            conntrack: (budget - share6).max(1),
            conntrack6,
            counts6: conntrack6.min(16384),
            ports,
            ports6: ports,
            endpoints,
            endpoints6: endpoints,
        }
    }
}

/// How long an idle flow lives, in seconds, by protocol and TCP state
/// (nf_conntrack's spirit, shorter where a NAT port is at stake). Set with
/// `up --ct-timeout NAME=SECS`; kept in the state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Timeouts {
    pub syn: u64,
    pub established: u64,
    pub fin: u64,
    pub time_wait: u64,
    pub close: u64,
    /// UDP and ICMP flows that never saw a reply.
    pub unreplied: u64,
    /// UDP streams and answered pings.
    pub replied: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            syn: 60,
            established: 6 * 3600,
            fin: 120,
            // As long as a Linux peer holds the tuple: until then the SNAT
            // port must not go to another connection (see the datapath's
            // `conntrack::reclaim_finished`).
            time_wait: 60,
            close: 10,
            unreplied: 30,
            replied: 120,
        }
    }
}

/// A field of `Timeouts`, for the table of names below.
type TimeoutField = fn(&mut Timeouts) -> &mut u64;

/// Every timeout by the name `--ct-timeout` knows it: the one list of names.
const TIMEOUT_FIELDS: [(&str, TimeoutField); 7] = [
    ("syn", |t| &mut t.syn),
    ("established", |t| &mut t.established),
    ("fin", |t| &mut t.fin),
    ("time_wait", |t| &mut t.time_wait),
    ("close", |t| &mut t.close),
    ("unreplied", |t| &mut t.unreplied),
    ("replied", |t| &mut t.replied),
];

impl Timeouts {
    /// These timeouts with `settings` applied in order.
    #[must_use]
    pub fn with(mut self, settings: &[TimeoutSetting]) -> Self {
        for setting in settings {
            *(TIMEOUT_FIELDS[setting.field].1)(&mut self) = setting.secs;
        }
        self
    }

    /// Whether the GC removes this flow at `now_ns` (`bpf_ktime_get_ns`
    /// time). A TCP flow still in its handshake lives `syn` from its first
    /// packet, not from its last: retransmitted SYNs and SYN-ACKs of a
    /// handshake that never completes (a SYN flood) do not keep it, as
    /// nf_conntrack caps them. Every other flow expires by idle time.
    pub fn expired<A: Addr>(&self, key: &FlowKey<A>, entry: &FlowEntry<A>, now_ns: u64) -> bool {
        let handshake = key.proto == IPPROTO_TCP
            && matches!(entry.tcp_state, tcp_state::SYN_SENT | tcp_state::SYN_RECV);
        let since = if handshake {
            entry.created_ns
        } else {
            entry.last_seen_ns
        };
        Duration::from_nanos(now_ns.saturating_sub(since)) > self.of(key, entry)
    }

    /// The time after which the GC removes this flow (see `expired`).
    pub fn of<A: Addr>(&self, key: &FlowKey<A>, entry: &FlowEntry<A>) -> Duration {
        let secs = if key.proto == IPPROTO_TCP {
            match entry.tcp_state {
                tcp_state::SYN_SENT | tcp_state::SYN_RECV => self.syn,
                tcp_state::ESTABLISHED => self.established,
                tcp_state::FIN_WAIT => self.fin,
                tcp_state::TIME_WAIT => self.time_wait,
                tcp_state::CLOSED => self.close,
                _ => self.syn,
            }
        } else if entry.flags & FLOW_SEEN_REPLY != 0 {
            self.replied
        } else {
            self.unreplied
        };
        Duration::from_secs(secs)
    }
}

/// One `--ct-timeout NAME=SECS`, checked when the command line is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeoutSetting {
    /// Index into `TIMEOUT_FIELDS`.
    field: usize,
    secs: u64,
}

impl FromStr for TimeoutSetting {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let parsed = spec.split_once('=').and_then(|(name, secs)| {
            Some(Self {
                field: TIMEOUT_FIELDS.iter().position(|(n, _)| *n == name)?,
                secs: secs.parse().ok()?,
            })
        });
        parsed.ok_or_else(|| {
            let names: Vec<&str> = TIMEOUT_FIELDS.iter().map(|(name, _)| *name).collect();
            format!("use NAME=SECS, NAME one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_bridge_names_fit_and_differ_per_instance() {
        assert_eq!(default_bridge_name("default"), "np0");
        assert_eq!(default_bridge_name("web"), "npbr-web");
        assert_eq!(default_bridge_name("abcdefghij"), "npbr-abcdefghij");
        let long = default_bridge_name("staging-frontend");
        assert_eq!(long, default_bridge_name("staging-frontend"));
        assert!(long.starts_with("npbr-stag-"), "{long}");
        assert_eq!(long.len(), MAX_IFNAME_LEN);
        assert_ne!(long, default_bridge_name("staging-backend"));
        assert!(default_bridge_name(&"x".repeat(32)).len() <= MAX_IFNAME_LEN);
    }

    #[test]
    fn both_families_share_the_conntrack_memory() {
        assert_eq!(flow_bytes::<u32>(), 320);
        assert_eq!(flow_bytes::<netpath_common::Ip6>(), 416);
        let v4_only = MapSizes::default().resolved_with(1 << 20);
        assert_eq!((v4_only.conntrack, v4_only.conntrack6), (1 << 20, 1));
        let dual = MapSizes {
            ipv6: true,
            ..MapSizes::default()
        }
        .resolved_with(1 << 20);
        let bytes = |sizes: ResolvedSizes| {
            sizes.conntrack as usize * flow_bytes::<u32>()
                + sizes.conntrack6 as usize * flow_bytes::<netpath_common::Ip6>()
        };
        assert!(bytes(dual) <= bytes(v4_only), "{dual:?}");
        assert!(bytes(dual) * 100 >= bytes(v4_only) * 99, "{dual:?}");
        assert_eq!(dual.conntrack, 3 << 18, "IPv4 keeps three quarters");
        assert_eq!(dual.counts6, 16384);
        // An explicit size is the budget, however small.
        let tiny = MapSizes {
            conntrack: 4,
            ipv6: true,
            ..MapSizes::default()
        }
        .resolved_with(1 << 20);
        assert_eq!((tiny.conntrack, tiny.conntrack6), (3, 1));
    }

    #[test]
    fn timeout_settings_parse_and_apply() {
        let settings: Vec<TimeoutSetting> = ["syn=5", "replied=7", "syn=6"]
            .iter()
            .map(|s| s.parse().expect("valid"))
            .collect();
        let timeouts = Timeouts::default().with(&settings);
        assert_eq!((timeouts.syn, timeouts.replied), (6, 7));
        assert_eq!(timeouts.established, Timeouts::default().established);
        for bad in ["forever=1", "syn", "syn=x", "=1"] {
            let err = bad.parse::<TimeoutSetting>().expect_err(bad);
            assert!(err.contains("time_wait"), "{err}");
        }
    }
}
