//! Networks: one datapath serves every network (bridge and subnet) of an
//! instance. A container's packets carry its network in its `ENDPOINTS`
//! entry; `SUBNETS` finds the network of any other address. Networks are
//! isolated as Docker's are: a container reaches the containers of its own
//! network directly (unless the network has ICC off), other networks only
//! through published ports of the host, and an internal network nothing
//! outside its subnet. Each refusal is counted per sending network.
use netpath_common::{Addr, Config, Network, network_drop, stat};

use super::{
    family::Family,
    maps::{NETWORK_DROPS, NETWORKS},
    verdict::Verdict,
};

/// A network in `NETWORKS`, with its id. A reference into the map, not a
/// copy: a network with both families' subnets is 72 bytes, which the
/// programs' stacks can't spare.
#[derive(Clone, Copy)]
pub struct Net {
    pub id: u32,
    pub net: &'static Network,
}

/// Network `id`, if it exists.
#[inline(always)]
pub fn by_id(id: u16) -> Option<Net> {
    let id = u32::from(id);
    let net = NETWORKS.get(id)?;
    (net.subnet_mask != 0).then_some(Net { id, net })
}

/// The network whose subnet holds `addr`.
#[inline(always)]
pub fn containing<F: Family>(addr: F::Addr) -> Option<Net> {
    let id = F::network_of(addr)?;
    let net = NETWORKS.get(id)?;
    addr.in_subnet(net).then_some(Net { id, net })
}

/// Whether `addr` is in some network (a container's address, a gateway).
#[inline(always)]
pub fn is_container_network<F: Family>(addr: F::Addr) -> bool {
    F::network_of(addr).is_some()
}

/// Whether `addr` is the gateway of some network: an address of the host.
#[inline(always)]
pub fn is_gateway<F: Family>(addr: F::Addr) -> bool {
    containing::<F>(addr).is_some_and(|n| F::Addr::gateway_of(n.net) == addr)
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
pub fn reach<F: Family>(cfg: &Config, from: &Net, dst: F::Addr) -> Reach {
    if dst.in_subnet(from.net) {
        // With ICC off only the gateway: the bridge would flood broadcasts,
        // and deliver frames to another container's address, in the kernel.
        if from.net.allows_icc() || dst == F::Addr::gateway_of(from.net) {
            return Reach::Local;
        }
        return Reach::Refused(refuse(from, network_drop::ICC));
    }
    if from.net.is_internal() {
        return Reach::Refused(refuse(from, network_drop::INTERNAL));
    }
    if dst == F::Addr::host_of(cfg) {
        return Reach::Local;
    }
    match containing::<F>(dst) {
        // Another network's gateway is an address of the host, as in Docker.
        Some(other) if F::Addr::gateway_of(other.net) == dst => Reach::Local,
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
