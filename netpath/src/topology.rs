//! Interfaces, addresses and routes through rtnetlink: the bridge, the veth
//! pairs, and the look-ups `up` needs (default-route interface, primary IPv4,
//! MAC, ifindex). Creation and queries are async (rtnetlink); link deletion
//! also has a blocking form so rollback guards can run it from `Drop`.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::Path,
};

use futures::TryStreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressHeaderFlags, AddressScope},
    link::{LinkAttribute, LinkMessage, State},
    neighbour::NeighbourState,
    route::{RouteAttribute, RouteHeader},
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns::{NetnsError, NetnsGuard};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(io::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    NetlinkSync { what: String, source: io::Error },
    #[error("interface {0} does not exist")]
    NoSuchLink(String),
    #[error("no IPv4 default route in this network namespace: pass --uplink IF")]
    NoDefaultRoute,
    #[error("interface {0} has no IPv4 address: give it one or pass another --uplink")]
    NoIpv4(String),
    #[error("interface {0} has no MAC address")]
    NoMac(String),
}

type Result<T> = std::result::Result<T, TopologyError>;

fn netlink_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> TopologyError {
    let what = what.into();
    move |source| TopologyError::Netlink { what, source }
}

/// The errno of a netlink error reply, if `e` is one.
fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A netlink handle bound to the calling thread's network namespace. Must be
/// called inside the tokio runtime: the connection task is spawned on it.
pub fn connect() -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(TopologyError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A netlink handle bound to the network namespace at `netns`. A netlink
/// socket belongs to the netns it was created in, so the thread enters
/// `netns` just long enough to create it, then comes back.
pub fn connect_in(netns: &Path) -> Result<Handle> {
    let (connection, handle, _) = {
        let _inside = NetnsGuard::enter(netns)?;
        rtnetlink::new_connection().map_err(TopologyError::Socket)?
    };
    tokio::spawn(connection);
    Ok(handle)
}

/// The link named `name`, or None when there is none.
pub async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let found = handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await;
    match found {
        Ok(link) => Ok(link),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(netlink_err(format!("cannot look up interface {name}"))(e)),
    }
}

/// The link named `name`, which must exist.
pub async fn get_link(handle: &Handle, name: &str) -> Result<LinkMessage> {
    find_link(handle, name)
        .await?
        .ok_or_else(|| TopologyError::NoSuchLink(name.to_owned()))
}

/// The link with index `index`, which must exist.
pub async fn get_link_by_index(handle: &Handle, index: u32) -> Result<LinkMessage> {
    let found = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await;
    match found {
        Ok(Some(link)) => Ok(link),
        Ok(None) => Err(TopologyError::NoSuchLink(format!("#{index}"))),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => {
            Err(TopologyError::NoSuchLink(format!("#{index}")))
        }
        Err(e) => Err(netlink_err(format!("cannot look up interface #{index}"))(e)),
    }
}

/// The interface name carried by a link message.
pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

/// The Ethernet address carried by a link message.
pub fn link_mac(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(bytes) => bytes.as_slice().try_into().ok(),
        _ => None,
    })
}

/// Formats a MAC the usual way (`02:00:5e:10:00:01`).
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a MAC written by [`format_mac`].
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    bytes.try_into().ok()
}

/// Creates an up bridge named `name` with a fixed MAC. A bridge with no
/// fixed MAC takes the lowest MAC of its ports, so the gateway MAC the
/// datapath was told about would change whenever a container comes or goes.
pub async fn create_bridge(handle: &Handle, name: &str, mac: [u8; 6]) -> Result<u32> {
    handle
        .link()
        .add(LinkBridge::new(name).address(mac.to_vec()).build())
        .execute()
        .await
        .map_err(netlink_err(format!("cannot create bridge {name}")))?;
    Ok(get_link(handle, name).await?.header.index)
}

/// Adds `ip/prefix_len` to the interface `index`; an address that is
/// already there is fine (adopting a bridge made by an earlier `up`).
pub async fn add_ipv4(handle: &Handle, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
    handle
        .address()
        .add(index, IpAddr::V4(ip), prefix_len)
        .replace()
        .execute()
        .await
        .map_err(netlink_err(format!(
            "cannot add {ip}/{prefix_len} to interface #{index}"
        )))
}

/// Adds `ip/prefix_len` to the interface `index` with no duplicate address
/// detection (IFA_F_NODAD): usable at once, never tentative, as the IPv4
/// one. netpath hands out every address of the subnet, so none is taken.
/// An address that is already there is fine, as for `add_ipv4`.
pub async fn add_ipv6(handle: &Handle, index: u32, ip: Ipv6Addr, prefix_len: u8) -> Result<()> {
    let mut request = handle
        .address()
        .add(index, IpAddr::V6(ip), prefix_len)
        .replace();
    request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    request.execute().await.map_err(netlink_err(format!(
        "cannot add {ip}/{prefix_len} to interface #{index}"
    )))
}

/// Sets the Ethernet address of the interface `index`.
pub async fn set_mac(handle: &Handle, index: u32, mac: [u8; 6]) -> Result<()> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(netlink_err(format!(
            "cannot set the MAC of interface #{index}"
        )))
}

/// Brings the interface `index` up.
pub async fn set_up(handle: &Handle, index: u32) -> Result<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink_err(format!("cannot bring interface #{index} up")))
}

/// Brings the interface named `name` up.
pub async fn set_up_by_name(handle: &Handle, name: &str) -> Result<()> {
    let index = get_link(handle, name).await?.header.index;
    set_up(handle, index).await
}

/// Creates a veth pair `name` <-> `peer` in the handle's network namespace.
pub async fn create_veth(handle: &Handle, name: &str, peer: &str) -> Result<()> {
    handle
        .link()
        .add(LinkVeth::new(name, peer).build())
        .execute()
        .await
        .map_err(netlink_err(format!(
            "cannot create veth pair {name}/{peer}"
        )))
}

/// Moves the interface `index` into the network namespace open as `netns`.
pub async fn move_to_netns(handle: &Handle, index: u32, netns: &impl AsRawFd) -> Result<()> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(netns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(netlink_err(format!(
            "cannot move interface #{index} to another netns"
        )))
}

/// Records `ip` at `mac` on the interface `index` in the neighbour table
/// (`ip neigh replace ... nud stale`): the kernel uses it and confirms it
/// on first use, and an entry left FAILED by earlier tries (a removed
/// container with the same address) is gone.
pub async fn replace_neighbour(
    handle: &Handle,
    index: u32,
    ip: impl Into<IpAddr>,
    mac: [u8; 6],
) -> Result<()> {
    let ip = ip.into();
    handle
        .neighbours()
        .add(index, ip)
        .link_layer_address(&mac)
        .state(NeighbourState::Stale)
        .replace()
        .execute()
        .await
        .map_err(netlink_err(format!("cannot record the neighbour {ip}")))
}

/// Waits up to `timeout` for the interface `index` to be operationally up.
/// The kernel turns a new link's carrier on asynchronously (linkwatch, at
/// most once a second under load) and drops what is sent before: waiting
/// here means a container's first packets are not lost. Returns whether it
/// came up in time.
pub async fn wait_operational(
    handle: &Handle,
    index: u32,
    timeout: std::time::Duration,
) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let link = get_link_by_index(handle, index).await?;
        let up = link
            .attributes
            .iter()
            .any(|attr| matches!(attr, LinkAttribute::OperState(State::Up)));
        if up {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Enslaves the interface `index` to the bridge `bridge_index` and brings it up.
pub async fn attach_to_bridge(handle: &Handle, index: u32, bridge_index: u32) -> Result<()> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(bridge_index)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(netlink_err(format!(
            "cannot attach interface #{index} to the bridge"
        )))
}

/// Adds the default route of `gateway`'s family via `gateway`.
pub async fn add_default_route(handle: &Handle, gateway: IpAddr) -> Result<()> {
    let route = match gateway {
        IpAddr::V4(gateway) => RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build(),
        IpAddr::V6(gateway) => RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gateway)
            .build(),
    };
    handle
        .route()
        .add(route)
        .execute()
        .await
        .map_err(netlink_err(format!(
            "cannot add the default route via {gateway}"
        )))
}

/// The interface of the IPv4 default route of the main table (the one with
/// the lowest metric when there are several).
pub async fn default_route_ifindex(handle: &Handle) -> Result<u32> {
    let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut routes = handle.route().get(query).execute();
    let mut best: Option<(u32, u32)> = None; // (metric, ifindex)
    while let Some(route) = routes
        .try_next()
        .await
        .map_err(netlink_err("cannot list routes"))?
    {
        let main_table = route.header.table == RouteHeader::RT_TABLE_MAIN
            || route
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Table(t) if *t == u32::from(RouteHeader::RT_TABLE_MAIN)));
        if route.header.destination_prefix_length != 0 || !main_table {
            continue;
        }
        let mut oif = None;
        let mut metric = 0;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(index) => oif = Some(*index),
                RouteAttribute::Priority(p) => metric = *p,
                _ => {}
            }
        }
        if let Some(index) = oif
            && best.is_none_or(|(best_metric, _)| metric < best_metric)
        {
            best = Some((metric, index));
        }
    }
    best.map(|(_, index)| index)
        .ok_or(TopologyError::NoDefaultRoute)
}

/// The primary (first non-secondary) IPv4 address of interface `index`.
pub async fn primary_ipv4(handle: &Handle, index: u32) -> Result<Option<Ipv4Addr>> {
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addresses
        .try_next()
        .await
        .map_err(netlink_err("cannot list addresses"))?
    {
        if msg.header.family != AddressFamily::Inet
            || msg.header.index != index
            || msg.header.flags.contains(AddressHeaderFlags::Secondary)
        {
            continue;
        }
        let local = msg.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let address = msg.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local.or(address) {
            return Ok(Some(ip));
        }
    }
    Ok(None)
}

/// The global-scope IPv6 address of interface `index` for NAT66 and
/// published ports: the first stable one (not a temporary privacy address,
/// not deprecated), else the first usable one; never one that is tentative
/// or failed duplicate address detection.
pub async fn global_ipv6(handle: &Handle, index: u32) -> Result<Option<Ipv6Addr>> {
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let unusable = AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed;
    // IFA_F_TEMPORARY shares its bit with IFA_F_SECONDARY.
    let unstable = AddressHeaderFlags::Secondary | AddressHeaderFlags::Deprecated;
    let mut fallback = None;
    while let Some(msg) = addresses
        .try_next()
        .await
        .map_err(netlink_err("cannot list addresses"))?
    {
        if msg.header.family != AddressFamily::Inet6
            || msg.header.index != index
            || msg.header.scope != AddressScope::Universe
            || msg.header.flags.intersects(unusable)
        {
            continue;
        }
        let Some(address) = msg.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
            _ => None,
        }) else {
            continue;
        };
        if !msg.header.flags.intersects(unstable) {
            return Ok(Some(address));
        }
        fallback.get_or_insert(address);
    }
    Ok(fallback)
}

/// Deletes the link named `name` in the calling thread's network namespace,
/// blocking, without the tokio runtime: rollback guards call it from `Drop`.
/// Returns false when there was no such link. Deleting one end of a veth
/// pair deletes both.
pub fn delete_link_blocking(name: &str) -> Result<bool> {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
    let sync_err =
        |what: String| move |source: io::Error| TopologyError::NetlinkSync { what, source };
    let what = format!("cannot delete interface {name}");

    let mut socket = Socket::new(NETLINK_ROUTE).map_err(TopologyError::Socket)?;
    socket.bind_auto().map_err(TopologyError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(TopologyError::Socket)?;

    let link = LinkUnspec::new_with_name(name).build();
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::DelLink(link));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0).map_err(sync_err(what.clone()))?;

    loop {
        let (reply, _) = socket.recv_from_full().map_err(sync_err(what.clone()))?;
        let mut offset = 0;
        while offset < reply.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..])
                .map_err(|e| sync_err(what.clone())(io::Error::other(e.to_string())))?;
            let len = msg.header.length as usize;
            if let NetlinkPayload::Error(err) = msg.payload {
                return match err.code.map(|c| -c.get()) {
                    None => Ok(true),
                    Some(libc::ENODEV) => Ok(false),
                    Some(errno) => Err(sync_err(what)(io::Error::from_raw_os_error(errno))),
                };
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}
