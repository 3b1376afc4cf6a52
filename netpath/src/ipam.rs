//! Address management for the container subnet: the gateway takes the first
//! host address, containers get the lowest free one after it.
//!
//! IPv6 has no allocator of its own: a network's IPv6 subnet mirrors its
//! IPv4 one (the gateway is `prefix::1`, as it is the first address), and
//! an interface's IPv6 address is the IPv6 subnet's base plus its IPv4
//! address's offset, so the two never disagree.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::config::stable_hash;

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
    #[error(
        "IPv6 subnet {subnet6} is smaller than {subnet}: containers' IPv6 addresses follow their IPv4 ones, use a /{} or larger",
        128 - (32 - u32::from(subnet.prefix_len()))
    )]
    Subnet6TooSmall { subnet6: Ipv6Net, subnet: Ipv4Net },
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

/// The unique-local /48 (RFC 4193) of an instance: `fd` and 40 bits
/// derived from its name, so instances (on one host or several) don't
/// collide. Its /64s are the instance's networks' IPv6 subnets.
pub fn ula_prefix(instance: &str) -> Ipv6Net {
    let global_id = (u64::from(stable_hash(instance)) << 8)
        | u64::from(stable_hash(&format!("{instance}/ipv6")) & 0xff);
    let address = (0xfd_u128 << 120) | (u128::from(global_id) << 80);
    Ipv6Net::new(Ipv6Addr::from(address), 48).expect("48 is a valid prefix length")
}

/// Subnet `n` (a /64) of the instance's unique-local /48.
pub fn ula_subnet(instance: &str, n: u16) -> Ipv6Net {
    ula_prefix(instance)
        .subnets(64)
        .expect("a /48 has /64s")
        .nth(usize::from(n))
        .expect("a /48 has 65536 /64s")
}

/// The IPv6 gateway (bridge address) of `subnet6`: `prefix::1`, the twin
/// of the IPv4 gateway, the first host address.
pub fn gateway6(subnet6: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet6.network()) + 1)
}

/// Fails unless every address of `subnet` has its twin in `subnet6`.
pub fn check_subnet6(subnet6: Ipv6Net, subnet: Ipv4Net) -> Result<(), IpamError> {
    if 128 - subnet6.prefix_len() < 32 - subnet.prefix_len() {
        return Err(IpamError::Subnet6TooSmall { subnet6, subnet });
    }
    Ok(())
}

/// The IPv6 address of the interface with IPv4 address `ip` in `subnet`:
/// `subnet6`'s base plus `ip`'s offset (`check_subnet6` says it fits).
pub fn address6(subnet: Ipv4Net, ip: Ipv4Addr, subnet6: Ipv6Net) -> Ipv6Addr {
    let offset = u32::from(ip) - u32::from(subnet.network());
    Ipv6Addr::from(u128::from(subnet6.network()) + u128::from(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_follow_ipv4_ones() {
        let (subnet, subnet6) = (net("10.77.0.0/16"), "fd00:1:2::/64".parse().unwrap());
        assert_eq!(
            gateway6(subnet6),
            "fd00:1:2::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            address6(subnet, Ipv4Addr::new(10, 77, 1, 2), subnet6),
            "fd00:1:2::102".parse::<Ipv6Addr>().unwrap()
        );
        assert!(check_subnet6(subnet6, subnet).is_ok());
        assert!(check_subnet6("fd00::/112".parse().unwrap(), subnet).is_ok());
        assert_eq!(
            check_subnet6("fd00::/113".parse().unwrap(), subnet),
            Err(IpamError::Subnet6TooSmall {
                subnet6: "fd00::/113".parse().unwrap(),
                subnet
            })
        );
    }

    #[test]
    fn unique_local_prefixes_differ_per_instance() {
        let a = ula_prefix("default");
        assert_eq!(a.prefix_len(), 48);
        assert_eq!(a.network().octets()[0], 0xfd);
        assert_eq!(a, ula_prefix("default"));
        assert_ne!(a, ula_prefix("other"));
        assert_eq!(ula_subnet("default", 0).network(), a.network());
        assert_eq!(ula_subnet("default", 1).prefix_len(), 64);
        assert!(a.contains(&ula_subnet("default", 1)));
        assert_ne!(ula_subnet("default", 1), ula_subnet("default", 0));
    }

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
