//! `netpath container add | attach | detach | rm | ls`.
use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use super::{
    CliError, Result,
    args::{AddArgs, AttachArgs, ContainerCommand},
    output::{Column, Output, Table, dash},
    runtime,
};
use crate::{
    container::{self, AddRequest, ContainerView},
    directories::Instance,
    netns,
    publish::{self, Mapping},
    state::{Mode, Origin},
};

pub(super) fn run(instance: &Instance, command: ContainerCommand, out: Output) -> Result<()> {
    match command {
        ContainerCommand::Add(args) => add(instance, args, out),
        ContainerCommand::Rm { name, time } => {
            container::remove(instance, &name, Duration::from_secs(time))?;
            out.show(&serde_json::json!({ "removed": name }), |_| {
                println!("container {name} removed");
            })
        }
        ContainerCommand::Attach(args) => attach(instance, args, out),
        ContainerCommand::Detach { name } => {
            container::detach(instance, &name)?;
            out.show(&serde_json::json!({ "detached": name }), |_| {
                println!("container {name} detached");
            })
        }
        ContainerCommand::Ls => out.show(&container::list(instance)?, |c| print_table(c)),
    }
}

fn add(instance: &Instance, args: AddArgs, out: Output) -> Result<()> {
    let request = AddRequest {
        mode: parse_mode(&args.mode)?,
        ip: args.ip.as_deref().map(parse_ip).transpose()?,
        name: args.name,
        publish: parse_publish(&args.publish)?,
        allow: publish::parse_allow(&args.allow)?,
        origin: Origin::Created,
        network: args.network,
    };
    build(instance, request, "added", out)
}

fn attach(instance: &Instance, args: AttachArgs, out: Output) -> Result<()> {
    // A bare name is an `ip netns` one.
    let netns = if args.netns.components().count() == 1 && args.netns.is_relative() {
        netns::named_netns_path(&args.netns.to_string_lossy())
    } else {
        args.netns
    };
    let request = AddRequest {
        mode: Mode::Bridge,
        ip: args.ip.as_deref().map(parse_ip).transpose()?,
        name: args.name,
        publish: parse_publish(&args.publish)?,
        allow: Vec::new(),
        origin: Origin::Attached {
            netns: absolute(netns),
        },
        network: args.network,
    };
    build(instance, request, "attached", out)
}

/// The path as given when absolute, else from the current directory (the
/// state outlives this command's working directory).
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

fn build(instance: &Instance, request: AddRequest, done: &str, out: Output) -> Result<()> {
    let added = runtime()?.block_on(container::add(instance, request))?;
    out.show(&added, |added| {
        let ip6 = added.ip6.map(|ip6| format!(" {ip6}")).unwrap_or_default();
        println!(
            "container {} {done} ({}, ip {}{ip6})",
            added.name,
            added.mode,
            dash(&added.ip)
        );
    })
}

fn parse_publish(specs: &[String]) -> Result<Vec<Mapping>> {
    let mut mappings = Vec::new();
    for spec in specs {
        mappings.extend(publish::parse_spec(spec)?);
    }
    Ok(mappings)
}

/// The containers table, also part of `status`.
pub(super) fn print_table(containers: &[ContainerView]) {
    const TABLE: Table<8> = Table {
        columns: [
            Column::left("NAME", 12),
            Column::left("MODE", 22),
            Column::left("ORIGIN", 16),
            Column::left("IP", 15),
            Column::left("IPV6", 24),
            Column::left("MAC", 17),
            Column::left("VETH", 12),
            Column::left("NETWORKS", 0),
        ],
        separator: "  ",
    };
    TABLE.print(containers.iter().map(|c| {
        [
            c.name.clone(),
            c.mode.clone(),
            origin(c),
            dash(&c.ip),
            dash(&c.ip6),
            dash(&c.mac),
            dash(&c.host_veth),
            networks(c),
        ]
    }));
}

/// `NET=IP` (`NET=IP IP6` with IPv6) for each address, comma-separated;
/// `-` for none.
fn networks(c: &ContainerView) -> String {
    if c.networks.is_empty() {
        return "-".to_owned();
    }
    c.networks
        .iter()
        .map(|a| match a.ip6 {
            Some(ip6) => format!("{}={} {ip6}", a.network, a.ip),
            None => format!("{}={}", a.network, a.ip),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `created`, `attached`, or `cni:` and the start of the container ID.
fn origin(c: &ContainerView) -> String {
    match &c.container_id {
        Some(id) => format!("cni:{}", id.get(..12).unwrap_or(id)),
        None => c.origin.to_owned(),
    }
}

pub(super) fn parse_ip(text: &str) -> Result<Ipv4Addr> {
    text.parse().map_err(|_| CliError::BadInput {
        what: "--ip",
        value: text.to_owned(),
        hint: "expected an IPv4 address such as 10.77.0.10".to_owned(),
    })
}

fn parse_mode(text: &str) -> Result<Mode> {
    text.parse().map_err(|_| CliError::BadInput {
        what: "--mode",
        value: text.to_owned(),
        hint: "use bridge, none, host or container:NAME".to_owned(),
    })
}
