//! Address management for the container subnet: the gateway takes the first
//! host address, containers get the lowest free one after it.
use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error(
        "subnet {0} is too small: it needs room for a gateway and containers (use /30 or larger)"
    )]
    SubnetTooSmall(Ipv4Net),
    #[error("{ip} is outside the subnet {subnet}: pick an address inside it")]
    OutsideSubnet { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("{ip} is reserved in {subnet} (network, gateway or broadcast address): pick another")]
    Reserved { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("{ip} is already used by container {owner}: pick another address or remove {owner}")]
    Taken { ip: Ipv4Addr, owner: String },
    #[error("no free address left in {0}: remove a container or use a larger --subnet")]
    Exhausted(Ipv4Net),
}

/// The gateway (bridge) address of `subnet`: its first host address.
pub fn gateway(subnet: Ipv4Net) -> Result<Ipv4Addr, IpamError> {
    if subnet.prefix_len() > 30 {
        return Err(IpamError::SubnetTooSmall(subnet));
    }
    Ok(Ipv4Addr::from(u32::from(subnet.network()) + 1))
}

/// Picks an address for a new container: `requested` if it is usable and
/// free, otherwise the lowest free one. `used` lists (address, owner).
pub fn allocate<'a>(
    subnet: Ipv4Net,
    used: impl IntoIterator<Item = (Ipv4Addr, &'a str)>,
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    let gateway = gateway(subnet)?;
    let used: Vec<(Ipv4Addr, &str)> = used.into_iter().collect();
    if let Some(ip) = requested {
        if !subnet.contains(&ip) {
            return Err(IpamError::OutsideSubnet { ip, subnet });
        }
        if ip == subnet.network() || ip == subnet.broadcast() || ip == gateway {
            return Err(IpamError::Reserved { ip, subnet });
        }
        if let Some((_, owner)) = used.iter().find(|(taken, _)| *taken == ip) {
            return Err(IpamError::Taken {
                ip,
                owner: (*owner).to_owned(),
            });
        }
        return Ok(ip);
    }
    let taken: BTreeSet<u32> = used.iter().map(|(ip, _)| u32::from(*ip)).collect();
    (u32::from(gateway) + 1..u32::from(subnet.broadcast()))
        .find(|candidate| !taken.contains(candidate))
        .map(Ipv4Addr::from)
        .ok_or(IpamError::Exhausted(subnet))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn first_address_follows_the_gateway() {
        let subnet = net("10.77.0.0/16");
        assert_eq!(gateway(subnet), Ok(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(allocate(subnet, [], None), Ok(Ipv4Addr::new(10, 77, 0, 2)));
    }

    #[test]
    fn lowest_free_address_is_reused() {
        let subnet = net("10.77.0.0/16");
        let used = [(Ipv4Addr::new(10, 77, 0, 3), "b")];
        assert_eq!(
            allocate(subnet, used, None),
            Ok(Ipv4Addr::new(10, 77, 0, 2))
        );
    }

    #[test]
    fn requested_addresses_are_checked() {
        let subnet = net("10.77.0.0/24");
        let used = [(Ipv4Addr::new(10, 77, 0, 5), "a")];
        assert!(matches!(
            allocate(subnet, used, Some(Ipv4Addr::new(10, 78, 0, 5))),
            Err(IpamError::OutsideSubnet { .. })
        ));
        for reserved in [0, 1, 255] {
            assert!(matches!(
                allocate(subnet, used, Some(Ipv4Addr::new(10, 77, 0, reserved))),
                Err(IpamError::Reserved { .. })
            ));
        }
        assert!(matches!(
            allocate(subnet, used, Some(Ipv4Addr::new(10, 77, 0, 5))),
            Err(IpamError::Taken { .. })
        ));
        assert_eq!(
            allocate(subnet, used, Some(Ipv4Addr::new(10, 77, 0, 9))),
            Ok(Ipv4Addr::new(10, 77, 0, 9))
        );
    }

    #[test]
    fn small_subnets_run_out() {
        let subnet = net("10.0.0.0/30");
        let used = [(Ipv4Addr::new(10, 0, 0, 2), "a")];
        assert_eq!(
            allocate(subnet, used, None),
            Err(IpamError::Exhausted(subnet))
        );
        assert_eq!(
            gateway(net("10.0.0.0/31")),
            Err(IpamError::SubnetTooSmall(net("10.0.0.0/31")))
        );
    }
}
