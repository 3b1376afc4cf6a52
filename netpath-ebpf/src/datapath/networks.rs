//! Networks: one datapath serves every network (bridge and subnet) of an
//! instance. A container's packets carry its network in its `ENDPOINTS`
//! entry; `SUBNETS` finds the network of any other address. Networks are
//! isolated as Docker's are: a container reaches the containers of its own
//! network directly (unless the network has ICC off), other networks only
//! through published ports of the host, and an internal network nothing
//! outside its subnet. Each refusal is counted per sending network.
use aya_ebpf::maps::lpm_trie::Key;
use netpath_common::{Config, Network, network_drop, stat};

use super::{
    maps::{NETWORK_DROPS, NETWORKS, SUBNETS},
    verdict::Verdict,
};

/// A network, copied out of `NETWORKS`, with its id.
#[derive(Clone, Copy)]
pub struct Net {
    pub id: u32,
    pub net: Network,
}

/// Network `id`, if it exists.
#[inline(always)]
pub fn by_id(id: u16) -> Option<Net> {
    let id = u32::from(id);
    let net = *NETWORKS.get(id)?;
    (net.subnet_mask != 0).then_some(Net { id, net })
}

/// The network whose subnet holds `addr`.
#[inline(always)]
pub fn containing(addr: u32) -> Option<Net> {
    let id = *SUBNETS.get(&Key::new(32, addr))?;
    let net = *NETWORKS.get(id)?;
    net.contains(addr).then_some(Net { id, net })
}

/// Whether `addr` is in some network (a container's address, a gateway).
#[inline(always)]
pub fn is_container_network(addr: u32) -> bool {
    SUBNETS.get(&Key::new(32, addr)).is_some()
}

/// Whether `addr` is the gateway of some network: an address of the host.
#[inline(always)]
pub fn is_gateway(addr: u32) -> bool {
    containing(addr).is_some_and(|n| n.net.gateway_ip == addr)
}

/// Where an untranslated packet from a container may go.
pub enum Reach {
    /// Into the host's stack: its own subnet (the gateway, broadcast, a
    /// neighbour the kernel bridges) or an address of the host.
    Local,
    /// Off the host: masqueraded if it can be, else dropped.
    OffHost,
    /// Refused by isolation, counted.
    Refused(Verdict),
}

/// Where a packet from a container on `from` to `dst`, in no flow and not
/// to a published port, may go.
#[inline(always)]
pub fn reach(cfg: &Config, from: &Net, dst: u32) -> Reach {
    if from.net.contains(dst) {
        // With ICC off only the gateway: the bridge would flood broadcasts,
        // and deliver frames to another container's address, in the kernel.
        if from.net.allows_icc() || dst == from.net.gateway_ip {
            return Reach::Local;
        }
        return Reach::Refused(refuse(from, network_drop::ICC));
    }
    if from.net.is_internal() {
        return Reach::Refused(refuse(from, network_drop::INTERNAL));
    }
    if dst == cfg.host_ip {
        return Reach::Local;
    }
    match containing(dst) {
        // Another network's gateway is an address of the host, as in Docker.
        Some(other) if other.net.gateway_ip == dst => Reach::Local,
        Some(_) => Reach::Refused(refuse(from, network_drop::OTHER_NETWORK)),
        None => Reach::OffHost,
    }
}

/// A refusal of `from`'s packet for `reason` (a `network_drop` index),
/// counted for the network and in `STATS`.
#[inline(always)]
pub fn refuse(from: &Net, reason: usize) -> Verdict {
    if let Some(drops) = NETWORK_DROPS.get_ptr_mut(from.id) {
        // SAFETY: this CPU's slot; reason is a constant below LEN.
        unsafe { (*drops).packets[reason & (network_drop::LEN - 1)] += 1 };
    }
    Verdict::drop(match reason {
        network_drop::ICC => stat::DROP_ICC,
        network_drop::INTERNAL => stat::DROP_INTERNAL,
        _ => stat::DROP_OTHER_NETWORK,
    })
}
