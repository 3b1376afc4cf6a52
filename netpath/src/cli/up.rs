//! `netpath up`: build the instance and run its agent, in the foreground or
//! detached.
use ipnet::{Ipv4Net, Ipv6Net};
use netpath_common::SNAT_POOL_PORTS;

use super::{CliError, Result, args::UpArgs, output::Output, runtime};
use crate::{
    agent::AgentOptions,
    config::FlowLimits,
    daemon::ReadyNotifier,
    directories::Instance,
    lifecycle::{self, UpOptions},
};

pub(super) fn run(instance: &Instance, args: UpArgs, out: Output) -> Result<()> {
    let options = UpOptions {
        uplink: args.uplink,
        subnet: args.subnet.as_deref().map(parse_subnet).transpose()?,
        ipv6: args.ipv6,
        subnet6: args.subnet6.as_deref().map(parse_subnet6).transpose()?,
        ipv6_mode: args.ipv6_mode,
        bridge: args.bridge,
        accel: args.accel,
        cgroup: args.cgroup,
        conntrack_size: args.conntrack_size,
        flow_limits: FlowLimits {
            per_container: args.max_flows_per_container,
            per_source: args.max_flows_per_source,
            snat_ports_per_container: args.snat_ports_per_container,
        },
        snat_ports: args
            .snat_ports
            .as_deref()
            .map(parse_port_range)
            .transpose()?,
        ct_timeouts: args.ct_timeouts,
        agent: AgentOptions {
            metrics: args.metrics,
        },
    };
    if args.detach {
        let pid = lifecycle::up_detached(instance)?;
        let log = instance.log_file();
        return out.show(
            &serde_json::json!({
                "instance": instance.name(),
                "agent_pid": pid,
                "log": log,
            }),
            |_| {
                println!(
                    "instance {instance} up, agent pid {pid}, log {}",
                    log.display()
                );
            },
        );
    }
    let ready = ReadyNotifier::from_env();
    runtime()?.block_on(lifecycle::up(instance, &options, ready, out.json))?;
    Ok(())
}

fn parse_port_range(text: &str) -> Result<(u16, u16)> {
    let bad = || CliError::BadInput {
        what: "port range",
        value: text.to_owned(),
        hint: format!(
            "use MIN-MAX with 1024 <= MIN <= MAX <= 65535 and at most {SNAT_POOL_PORTS} ports, \
             e.g. 40000-49999"
        ),
    };
    let (min, max) = text.split_once('-').ok_or_else(bad)?;
    let (min, max): (u16, u16) = (
        min.parse().map_err(|_| bad())?,
        max.parse().map_err(|_| bad())?,
    );
    if min < 1024 || min > max || u32::from(max - min) >= SNAT_POOL_PORTS {
        return Err(bad());
    }
    Ok((min, max))
}

pub(super) fn parse_subnet(text: &str) -> Result<Ipv4Net> {
    let bad = |hint: String| CliError::BadInput {
        what: "--subnet",
        value: text.to_owned(),
        hint,
    };
    let subnet: Ipv4Net = text
        .parse()
        .map_err(|_| bad("expected an IPv4 network such as 10.77.0.0/16".to_owned()))?;
    if subnet.trunc() != subnet {
        return Err(bad(format!(
            "host bits are set: did you mean {}?",
            subnet.trunc()
        )));
    }
    Ok(subnet)
}

/// Shortest and longest prefix of an IPv6 subnet: a /64 as SLAAC networks
/// have, down to a /120 (256 addresses).
const SUBNET6_PREFIX_LENS: std::ops::RangeInclusive<u8> = 64..=120;

pub(super) fn parse_subnet6(text: &str) -> Result<Ipv6Net> {
    let bad = |hint: String| CliError::BadInput {
        what: "--subnet6",
        value: text.to_owned(),
        hint,
    };
    let subnet: Ipv6Net = text
        .parse()
        .map_err(|_| bad("expected an IPv6 network such as fd00:77::/64".to_owned()))?;
    if !SUBNET6_PREFIX_LENS.contains(&subnet.prefix_len()) {
        return Err(bad(format!(
            "use a /{} to /{} prefix",
            SUBNET6_PREFIX_LENS.start(),
            SUBNET6_PREFIX_LENS.end()
        )));
    }
    if subnet.trunc() != subnet {
        return Err(bad(format!(
            "host bits are set: did you mean {}?",
            subnet.trunc()
        )));
    }
    let address = subnet.network();
    if address.is_multicast() || address.is_loopback() || address.is_unicast_link_local() {
        return Err(bad(
            "use a unique-local (fd00::/8) or global unicast prefix".to_owned(),
        ));
    }
    Ok(subnet)
}
