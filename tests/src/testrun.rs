//! BPF_PROG_TEST_RUN on netpath's datapath programs: the one harness of the
//! packet tests (`tests/tests/packets.rs`) and of the benchmark's program
//! cost (`cargo xtask bench`).
//!
//! A test reads as build a frame ([`Frame`](crate::packet::Frame)), run a
//! program on it ([`TestDatapath::from_container`], [`from_uplink`],
//! [`run_tc`], [`run_xdp`]), check what came out ([`RunOutput`]):
//!
//! ```no_run
//! # use netpath_tests::{packet::*, testrun::*};
//! # fn f(object: &[u8]) -> anyhow::Result<()> {
//! let mut dp = TestDatapath::load(object, 1)?;
//! dp.add_endpoint(C1_IP, C1_MAC)?;
//! let syn = Frame::new(C1_IP, OUTSIDE_IP, L4::Tcp { sport: 33000, dport: 80, flags: TCP_SYN })
//!     .macs(C1_MAC, GATEWAY_MAC);
//! let out = dp.from_container(&syn.bytes())?;
//! assert_eq!(out.verdict, TC_ACT_REDIRECT);
//! assert_eq!(out.parsed().src(), HOST_IP);
//! # Ok(()) }
//! ```
//!
//! [`TestDatapath::load`] gives the programs a world of their own, a network
//! namespace with
//!
//! ```text
//!  c0 GATEWAY_IP/16, GATEWAY_IP6/64  (veth, peer c1): where containers are
//!  u0 HOST_IP/24, HOST_IP6/64        (veth, peer u1): the uplink; OUTSIDE_IP
//!                                    and OUTSIDE_IP6 are permanent neighbours,
//!                                    so bpf_fib_lookup answers the same
//!                                    every time
//! ```
//!
//! and the object loaded with its maps pinned in a private bpffs directory
//! and CONFIG filled for that topology, dual stack as `up` makes it by
//! default (IPv6 on, NAT66 to HOST_IP6). IPv6 frames run through the IPv4
//! entry points, which tail-call the IPv6 programs as they do in the kernel. The calling thread stays in the
//! namespace (`bpf_fib_lookup` and ifindexes are per namespace) until the
//! datapath drops, which also removes the pins and the namespace.
//!
//! [`from_uplink`]: TestDatapath::from_uplink
//! [`run_tc`]: TestDatapath::run_tc
//! [`run_xdp`]: TestDatapath::run_xdp
use std::ffi::CString;
use std::fs;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray};
use aya::programs::{SchedClassifier, TestRunOptions, TestRunResult, Xdp};
use aya::{Ebpf, EbpfLoader, TestRun};
use netpath_common::host::{HostAddr, HostIp, ip_to_wire, ip6_to_wire};
use netpath_common::load::load_program;
use netpath_common::{
    CONFIG_FLAG_IPV6, Config, Endpoint, FlowEntry, FlowKey, Ip6, Network, NetworkDrops, PortKey,
    PortTarget, Proto, SLOW_PATH_FROM_CONTAINER, SLOW_PATH_FROM_CONTAINER6, SLOW_PATH_FROM_UPLINK6,
    SLOW_PATH_ICMP_ERROR6, SLOW_PATH_NEW_FLOW, SLOW_PATH_NEW_FLOW6, SLOW_PATH_TO_UPLINK,
    SLOW_PATH_TO_UPLINK6, names, network_drop,
};

use crate::names::unique_name;
use crate::netns::Netns;
use crate::packet::Parsed;

/// The host's address, on the uplink `u0`.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The uplink's neighbour: the outside world's next hop.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const OUTSIDE_MAC: [u8; 6] = [0x02, 0x0e, 0, 0, 0, 2];
/// What frames from the outside carry as destination MAC.
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
/// The containers' gateway, on `c0`; the subnet is 10.77.0.0/16.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x9a, 0, 0, 0, 1];
const SUBNET_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);
const SUBNET_PREFIX: u8 = 16;
/// `set_network` flags for a network without any.
pub const NETWORK_FLAGS_NONE: u32 = 0;

/// The subnet of network `id` > 0: 10.(77 + id).0.0/16.
pub fn other_subnet(id: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 77 + id as u8, 0, 0)
}

/// The gateway of network `id` > 0: 10.(77 + id).0.1.
pub fn other_gateway(id: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 77 + id as u8, 0, 1)
}
/// Two container addresses; a container exists once [`TestDatapath::add_endpoint`]
/// registers it.
pub const C1_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const C1_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 1];
pub const C2_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
pub const C2_MAC: [u8; 6] = [0x02, 0xc2, 0, 0, 0, 2];

/// The host's global IPv6 address on the uplink: the NAT66 source.
pub const HOST_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The uplink's IPv6 neighbour.
pub const OUTSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The containers' IPv6 gateway, on `c0`; network 0's subnet is
/// fd00:77::/64.
pub const GATEWAY_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
const SUBNET6_PREFIX: u8 = 64;
/// C1's and C2's IPv6 addresses ([`TestDatapath::add_endpoint`] with them).
pub const C1_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);
pub const C2_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 3);

/// The IPv6 subnet of network `id`: fd00:77:0:`id`::/64.
pub fn subnet6(id: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x77, 0, id, 0, 0, 0, 0)
}

/// The IPv6 gateway of network `id`: fd00:77:0:`id`::1.
pub fn gateway6(id: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x77, 0, id, 0, 0, 0, 1)
}

/// An address family's maps: IPv4 (`u32`) or IPv6 (`Ip6`), so the helpers
/// below take either family's addresses.
pub trait MapFamily: HostAddr + aya::Pod {
    const ENDPOINTS: &'static str;
    const PORTS: &'static str;
    const CONNTRACK: &'static str;
}

impl MapFamily for u32 {
    const ENDPOINTS: &'static str = names::ENDPOINTS;
    const PORTS: &'static str = names::PORTS;
    const CONNTRACK: &'static str = names::CONNTRACK;
}

impl MapFamily for Ip6 {
    const ENDPOINTS: &'static str = names::ENDPOINTS6;
    const PORTS: &'static str = names::PORTS6;
    const CONNTRACK: &'static str = names::CONNTRACK6;
}
/// The SNAT port range CONFIG starts with (host byte order, inclusive).
pub const SNAT_RANGE: (u16, u16) = (40000, 49999);

/// TC verdicts (`linux/pkt_cls.h`).
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// The classifiers, each with the interface its packets arrive on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcProgram {
    /// Ingress of the container side (`c0`).
    FromContainer,
    /// Ingress of the uplink (`u0`).
    FromUplink,
    /// Egress of the uplink (`u0`): the host's own traffic.
    ToUplink,
    /// Passes every packet unread: the baseline of a cost measurement.
    Pass,
}

impl TcProgram {
    pub const ALL: [TcProgram; 4] = [
        Self::FromContainer,
        Self::FromUplink,
        Self::ToUplink,
        Self::Pass,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::FromContainer => names::PROG_FROM_CONTAINER,
            Self::FromUplink => names::PROG_FROM_UPLINK,
            Self::ToUplink => names::PROG_TO_UPLINK,
            Self::Pass => names::PROG_TC_PASS,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpProgram {
    /// The uplink's XDP fast path.
    Uplink,
    /// Passes every packet: the baseline of a cost measurement.
    Pass,
}

impl XdpProgram {
    pub const ALL: [XdpProgram; 2] = [Self::Uplink, Self::Pass];

    pub fn name(self) -> &'static str {
        match self {
            Self::Uplink => names::PROG_XDP_UPLINK,
            Self::Pass => names::PROG_XDP_PASS,
        }
    }
}

/// What one run gave back.
#[derive(Debug)]
pub struct RunOutput {
    /// The program's return value (`TC_ACT_*`, `XDP_*`).
    pub verdict: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// The run's time as the kernel measured it.
    pub duration: Duration,
}

impl RunOutput {
    /// The output IPv4 frame, for assertions on its headers.
    pub fn parsed(&self) -> Parsed<'_> {
        Parsed::new(&self.frame)
    }

    /// The output IPv6 frame.
    pub fn parsed6(&self) -> Parsed<'_, Ipv6Addr> {
        Parsed::new(&self.frame)
    }
}

/// netpath's datapath object loaded in a namespace of its own (see the
/// module doc). Not `Send`: the thread that loaded it is the one inside the
/// namespace, and the one that must leave it.
pub struct TestDatapath {
    ebpf: Ebpf,
    container_ifindex: u32,
    uplink_ifindex: u32,
    _pins: PinDir,
    // Field order: leave the netns before deleting it.
    _inside: InNetns,
    netns: Netns,
}

impl TestDatapath {
    /// Sets up the namespace, loads `object` (the eBPF ELF) with the
    /// `HAS_COARSE_CLOCK` global netpath's loader would give it on this
    /// kernel, fills CONFIG and loads (verifies) the classifiers.
    pub fn load(object: &[u8], has_coarse_clock: u8) -> Result<Self> {
        ensure_bpffs()?;
        let netns = Netns::try_new("trun")?;
        for cmd in [
            "ip link add c0 type veth peer name c1".to_string(),
            "ip link add u0 type veth peer name u1".to_string(),
            "ip link set c0 up".to_string(),
            "ip link set c1 up".to_string(),
            "ip link set u0 up".to_string(),
            "ip link set u1 up".to_string(),
            format!("ip addr add {HOST_IP}/24 dev u0"),
            format!("ip addr add {GATEWAY_IP}/16 dev c0"),
            // nodad: usable at once, as the FIB needs them.
            format!("ip addr add {HOST_IP6}/64 dev u0 nodad"),
            format!("ip addr add {GATEWAY_IP6}/{SUBNET6_PREFIX} dev c0 nodad"),
            format!(
                "ip neigh replace {OUTSIDE_IP} lladdr {} dev u0 nud permanent",
                OUTSIDE_MAC.map(|b| format!("{b:02x}")).join(":")
            ),
            format!(
                "ip neigh replace {OUTSIDE_IP6} lladdr {} dev u0 nud permanent",
                OUTSIDE_MAC.map(|b| format!("{b:02x}")).join(":")
            ),
            "sysctl -qw net.ipv4.conf.all.forwarding=1".to_string(),
            // bpf_fib_lookup answers IPv6 only with forwarding on.
            "sysctl -qw net.ipv6.conf.all.forwarding=1".to_string(),
        ] {
            let argv: Vec<&str> = cmd.split_whitespace().collect();
            let out = netns.exec(&argv);
            if !out.success() {
                bail!("`{cmd}` in netns {}:\n{out}", netns.name());
            }
        }
        let inside = InNetns::enter(&netns)?;
        let pins = PinDir::create(&Path::new("/sys/fs/bpf").join(unique_name("nptrun")))?;
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins.0)
            .override_global("HAS_COARSE_CLOCK", &has_coarse_clock, true)
            .load(object)
            .context("loading the eBPF object")?;
        let mut dp = Self {
            ebpf,
            container_ifindex: ifindex("c0")?,
            uplink_ifindex: ifindex("u0")?,
            _pins: pins,
            _inside: inside,
            netns,
        };
        dp.fill_config()?;
        // As netpath's loader does: flows may cache next hops from here on.
        dp.set_route_generation(1)?;
        for prog in TcProgram::ALL {
            let classifier = dp.classifier_mut(prog)?;
            load_program(|| classifier.load())
                .with_context(|| format!("the verifier rejected {}", prog.name()))?;
        }
        dp.link_slow_paths()?;
        Ok(dp)
    }

    /// Loads the programs reached by tail call (the new-flow slow paths,
    /// the IPv6 programs) and fills `SLOW_PATHS` as netpath's loader does:
    /// first packets of flows, and IPv6 frames, run through them.
    fn link_slow_paths(&mut self) -> Result<()> {
        for name in [
            names::PROG_FROM_CONTAINER_NEW_FLOW,
            names::PROG_FROM_CONTAINER6_NEW_FLOW,
            names::PROG_FROM_CONTAINER6,
            names::PROG_FROM_UPLINK6,
            names::PROG_TO_UPLINK6,
            names::PROG_ICMP_ERROR6,
        ] {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()?;
            load_program(|| prog.load())
                .with_context(|| format!("the verifier rejected {name}"))?;
        }
        let mut fds = Vec::new();
        for (index, name) in [
            (SLOW_PATH_NEW_FLOW, names::PROG_FROM_CONTAINER_NEW_FLOW),
            (SLOW_PATH_FROM_CONTAINER, names::PROG_FROM_CONTAINER),
            (SLOW_PATH_TO_UPLINK, names::PROG_TO_UPLINK),
            (SLOW_PATH_NEW_FLOW6, names::PROG_FROM_CONTAINER6_NEW_FLOW),
            (SLOW_PATH_FROM_CONTAINER6, names::PROG_FROM_CONTAINER6),
            (SLOW_PATH_TO_UPLINK6, names::PROG_TO_UPLINK6),
            (SLOW_PATH_FROM_UPLINK6, names::PROG_FROM_UPLINK6),
            (SLOW_PATH_ICMP_ERROR6, names::PROG_ICMP_ERROR6),
        ] {
            let prog: &SchedClassifier = self
                .ebpf
                .program(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()?;
            fds.push((index, prog.fd()?.try_clone()?));
        }
        let mut slow_paths = ProgramArray::try_from(self.map_mut(names::SLOW_PATHS)?)?;
        for (index, fd) in &fds {
            slow_paths.set(*index, fd, 0)?;
        }
        Ok(())
    }

    /// Loads (verifies) the XDP programs too; only cost measurements run them.
    pub fn load_xdp_programs(&mut self) -> Result<()> {
        for prog in XdpProgram::ALL {
            let xdp: &mut Xdp = self
                .ebpf
                .program_mut(prog.name())
                .with_context(|| format!("no program {}", prog.name()))?
                .try_into()?;
            load_program(|| xdp.load())
                .with_context(|| format!("the verifier rejected {}", prog.name()))?;
        }
        Ok(())
    }

    /// The namespace the programs run in (to change its routes or neighbours).
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    fn fill_config(&mut self) -> Result<()> {
        let uplink_ifindex = self.uplink_ifindex;
        self.config()?.set(
            0,
            Config {
                uplink_ifindex,
                snat_port_min: SNAT_RANGE.0,
                snat_port_max: SNAT_RANGE.1,
                gateway_mac: GATEWAY_MAC,
                flags: CONFIG_FLAG_IPV6,
                host_ip6: ip6_to_wire(HOST_IP6),
                ..Config::new(HOST_IP)
            },
            0,
        )?;
        self.set_network(0, NETWORK_FLAGS_NONE)
    }

    /// Network `id` with `NETWORK_*` flags, dual stack: network 0 (C1's
    /// and C2's) is 10.77.0.0/16 and fd00:77::/64, the others
    /// [`other_subnet`] and [`subnet6`].
    pub fn set_network(&mut self, id: u16, flags: u32) -> Result<()> {
        let (addr, gateway) = if id == 0 {
            (SUBNET_ADDR, GATEWAY_IP)
        } else {
            (other_subnet(id), other_gateway(id))
        };
        let network = Network::new(addr, SUBNET_PREFIX, gateway, 0, flags).with_ipv6(
            subnet6(id),
            SUBNET6_PREFIX,
            gateway6(id),
        );
        Array::<_, Network>::try_from(self.map_mut(names::NETWORKS)?)?.set(
            u32::from(id),
            network,
            0,
        )?;
        LpmTrie::<_, u32, u32>::try_from(self.map_mut(names::SUBNETS)?)?.insert(
            &Key::new(u32::from(SUBNET_PREFIX), network.subnet_addr),
            u32::from(id),
            0,
        )?;
        LpmTrie::<_, Ip6, u32>::try_from(self.map_mut(names::SUBNETS6)?)?.insert(
            &Key::new(u32::from(SUBNET6_PREFIX), network.subnet6_addr),
            u32::from(id),
            0,
        )?;
        Ok(())
    }

    /// A container at `ip` (either family) behind `c0`, on network 0.
    pub fn add_endpoint<I: HostIp>(&mut self, ip: I, mac: [u8; 6]) -> Result<()>
    where
        I::Wire: MapFamily,
    {
        self.add_endpoint_on(ip, mac, 0)
    }

    /// A container at `ip` behind `c0`, on network `network_id`.
    pub fn add_endpoint_on<I: HostIp>(&mut self, ip: I, mac: [u8; 6], network_id: u16) -> Result<()>
    where
        I::Wire: MapFamily,
    {
        let ifindex = self.container_ifindex;
        self.endpoints::<I::Wire>()?.insert(
            ip.to_wire(),
            Endpoint::new(ifindex, mac, network_id),
            0,
        )?;
        Ok(())
    }

    /// Network `id`'s isolation refusals, by `network_drop` index.
    pub fn network_drops(&self, id: u16) -> Result<[u64; network_drop::LEN]> {
        let map = self
            .ebpf
            .map(names::NETWORK_DROPS)
            .with_context(|| format!("no map {}", names::NETWORK_DROPS))?;
        let drops: PerCpuArray<_, NetworkDrops> = PerCpuArray::try_from(map)?;
        let mut sum = [0; network_drop::LEN];
        for cpu in drops.get(&u32::from(id), 0)?.iter() {
            for (total, n) in sum.iter_mut().zip(cpu.packets) {
                *total += n;
            }
        }
        Ok(sum)
    }

    /// Changes a registered container's MAC behind the flows' back.
    pub fn set_endpoint_mac(&mut self, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let mut endpoints = self.endpoints::<u32>()?;
        let mut endpoint = endpoints
            .get(&ip_to_wire(ip), 0)
            .with_context(|| format!("no endpoint {ip}"))?;
        endpoint.mac = mac;
        endpoints.insert(ip_to_wire(ip), endpoint, 0)?;
        Ok(())
    }

    /// Publishes `host_port` (any host address of `target`'s family: the
    /// `PORTS` or `PORTS6` key with host_ip unspecified) to `target:port`.
    pub fn publish<I: HostIp>(
        &mut self,
        host_port: u16,
        target: I,
        port: u16,
        proto: Proto,
    ) -> Result<()>
    where
        I::Wire: MapFamily,
        PortKey<I::Wire>: aya::Pod,
        PortTarget<I::Wire>: aya::Pod,
    {
        let mut ports: HashMap<_, PortKey<I::Wire>, PortTarget<I::Wire>> =
            HashMap::try_from(self.map_mut(I::Wire::PORTS)?)?;
        ports.insert(
            PortKey::new(None::<I>, host_port, proto),
            PortTarget::new(target, port),
            0,
        )?;
        Ok(())
    }

    pub fn set_snat_range(&mut self, min: u16, max: u16) -> Result<()> {
        let mut config = self.config()?;
        let mut c = config.get(&0, 0)?;
        c.snat_port_min = min;
        c.snat_port_max = max;
        config.set(0, c, 0)?;
        Ok(())
    }

    /// Switches IPv6 off (`up --ipv6=false`) or back on.
    pub fn set_ipv6(&mut self, on: bool) -> Result<()> {
        let mut config = self.config()?;
        let mut c = config.get(&0, 0)?;
        c.flags = if on {
            c.flags | CONFIG_FLAG_IPV6
        } else {
            c.flags & !CONFIG_FLAG_IPV6
        };
        config.set(0, c, 0)?;
        Ok(())
    }

    /// What the agent does on route and link changes: cached next hops and
    /// endpoints are stale once the generation differs.
    pub fn set_route_generation(&mut self, generation: u32) -> Result<()> {
        let mut route_gen: Array<_, u32> = Array::try_from(self.map_mut(names::ROUTE_GEN)?)?;
        route_gen.set(0, generation, 0)?;
        Ok(())
    }

    /// Sets the last-seen time of the flow whose original tuple is `key`.
    pub fn age_flow(&mut self, key: FlowKey, last_seen_ns: u64) -> Result<()> {
        let mut conntrack: HashMap<_, FlowKey, FlowEntry> =
            HashMap::try_from(self.map_mut(names::CONNTRACK)?)?;
        let mut entry = conntrack.get(&key, 0).context("no such flow")?;
        entry.last_seen_ns = last_seen_ns;
        conntrack.insert(key, entry, 0)?;
        Ok(())
    }

    /// The flow whose original tuple is `key` (either family's
    /// `CONNTRACK`), if tracked.
    pub fn flow<A: MapFamily>(&self, key: FlowKey<A>) -> Result<Option<FlowEntry<A>>>
    where
        FlowKey<A>: aya::Pod,
        FlowEntry<A>: aya::Pod,
    {
        let map = self
            .ebpf
            .map(A::CONNTRACK)
            .with_context(|| format!("no map {}", A::CONNTRACK))?;
        let conntrack: HashMap<_, FlowKey<A>, FlowEntry<A>> = HashMap::try_from(map)?;
        match conntrack.get(&key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A STATS counter (`netpath_common::stat::*`), summed over the CPUs.
    pub fn counter(&self, idx: u32) -> Result<u64> {
        let map = self
            .ebpf
            .map(names::STATS)
            .with_context(|| format!("no map {}", names::STATS))?;
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(stats.get(&idx, 0)?.iter().sum())
    }

    /// [`TcProgram::FromContainer`] on `frame`.
    pub fn from_container(&self, frame: &[u8]) -> Result<RunOutput> {
        self.run_tc(TcProgram::FromContainer, frame)
    }

    /// [`TcProgram::FromUplink`] on `frame`.
    pub fn from_uplink(&self, frame: &[u8]) -> Result<RunOutput> {
        self.run_tc(TcProgram::FromUplink, frame)
    }

    /// Runs `prog` once on `frame` as if it arrived on the program's
    /// interface.
    pub fn run_tc(&self, prog: TcProgram, frame: &[u8]) -> Result<RunOutput> {
        let ifindex = match prog {
            TcProgram::FromContainer => self.container_ifindex,
            TcProgram::FromUplink | TcProgram::ToUplink | TcProgram::Pass => self.uplink_ifindex,
        };
        let classifier: &SchedClassifier = self
            .ebpf
            .program(prog.name())
            .with_context(|| format!("no program {}", prog.name()))?
            .try_into()?;
        // A struct __sk_buff with only ifindex (offset 40) set: the kernel
        // takes the rest from the frame, and zeroes are what it accepts.
        let mut skb = [0u8; 192];
        skb[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        run(classifier, frame, Some(&skb))
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", prog.name()))
    }

    /// Runs `prog` once on `frame` (after [`Self::load_xdp_programs`]).
    pub fn run_xdp(&self, prog: XdpProgram, frame: &[u8]) -> Result<RunOutput> {
        let xdp: &Xdp = self
            .ebpf
            .program(prog.name())
            .with_context(|| format!("no program {}", prog.name()))?
            .try_into()?;
        run(xdp, frame, None).with_context(|| format!("BPF_PROG_TEST_RUN of {}", prog.name()))
    }

    fn classifier_mut(&mut self, prog: TcProgram) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(prog.name())
            .with_context(|| format!("no program {}", prog.name()))?
            .try_into()?)
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("no map {name}"))
    }

    fn config(&mut self) -> Result<Array<&mut MapData, Config>> {
        Ok(Array::try_from(self.map_mut(names::CONFIG)?)?)
    }

    fn endpoints<A: MapFamily>(&mut self) -> Result<HashMap<&mut MapData, A, Endpoint>> {
        Ok(HashMap::try_from(self.map_mut(A::ENDPOINTS)?)?)
    }
}

fn run<P>(prog: &P, frame: &[u8], ctx_in: Option<&[u8]>) -> Result<RunOutput>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    // Room for what the programs may add (encapsulation, ICMP errors).
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in,
        ..TestRunOptions::default()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok(RunOutput {
        verdict: result.return_value,
        frame: out,
        duration: result.duration,
    })
}

fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).context("interface name")?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("no interface {name}"),
        i => Ok(i),
    }
}

/// The calling thread inside a netns until dropped. Not `Send`: only the
/// thread that entered can leave.
struct InNetns {
    original: fs::File,
    _not_send: PhantomData<*const ()>,
}

impl InNetns {
    fn enter(netns: &Netns) -> Result<Self> {
        let original = fs::File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        let target = fs::File::open(netns.path())
            .with_context(|| format!("opening {}", netns.path().display()))?;
        // SAFETY: a valid fd; affects only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(Self {
            original,
            _not_send: PhantomData,
        })
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        // SAFETY: a valid fd; affects only this thread.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// A private pin directory on bpffs, removed with everything in it.
struct PinDir(PathBuf);

impl PinDir {
    fn create(path: &Path) -> Result<Self> {
        fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// bpffs is not mounted at boot on every machine.
fn ensure_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and out pointer.
    let rc = unsafe { libc::statfs(c"/sys/fs/bpf".as_ptr(), &mut st) };
    if rc == 0 && st.f_type == BPF_FS_MAGIC {
        return Ok(());
    }
    // SAFETY: valid C strings; no data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!("mounting bpffs: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
