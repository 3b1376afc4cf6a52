//! `netpath network create | ls | rm | connect | disconnect`.
use super::{
    Result,
    args::{NetworkCommand, NetworkCreateArgs},
    container::parse_ip,
    output::{Column, Output, Table, dash},
    runtime,
    up::{parse_subnet, parse_subnet6},
};
use crate::{
    container,
    directories::Instance,
    network::{self, CreateRequest, NetworkView},
};

pub(super) fn run(instance: &Instance, command: NetworkCommand, out: Output) -> Result<()> {
    match command {
        NetworkCommand::Create(args) => create(instance, args, out),
        NetworkCommand::Ls => out.show(&network::list(instance)?, |n| print_table(n)),
        NetworkCommand::Rm { name } => {
            network::remove(instance, &name)?;
            out.show(&serde_json::json!({ "removed": name }), |_| {
                println!("network {name} removed");
            })
        }
        NetworkCommand::Connect {
            network,
            container,
            ip,
        } => {
            let ip = ip.as_deref().map(parse_ip).transpose()?;
            let view =
                runtime()?.block_on(container::connect(instance, &network, &container, ip))?;
            out.show(&view, |view| {
                let ip = view.networks.iter().find(|a| a.network == network);
                match ip {
                    Some(a) => println!(
                        "container {container} connected to {network} ({} {}{})",
                        a.ifname,
                        a.ip,
                        a.ip6.map(|ip6| format!(" {ip6}")).unwrap_or_default()
                    ),
                    None => println!("container {container} connected to {network}"),
                }
            })
        }
        NetworkCommand::Disconnect { network, container } => {
            runtime()?.block_on(container::disconnect(instance, &network, &container))?;
            out.show(
                &serde_json::json!({ "disconnected": container, "network": network }),
                |_| println!("container {container} disconnected from {network}"),
            )
        }
    }
}

fn create(instance: &Instance, args: NetworkCreateArgs, out: Output) -> Result<()> {
    let request = CreateRequest {
        name: args.name,
        subnet: args.subnet.as_deref().map(parse_subnet).transpose()?,
        subnet6: args.subnet6.as_deref().map(parse_subnet6).transpose()?,
        internal: args.internal,
        icc: args.icc,
        bridge: args.bridge,
    };
    let created = runtime()?.block_on(network::create(instance, request))?;
    out.show(&created, |n| {
        let flags = flags(n);
        let ipv6 = match (n.gateway6, n.subnet6) {
            (Some(gateway6), Some(subnet6)) => format!(" {gateway6}/{}", subnet6.prefix_len()),
            _ => String::new(),
        };
        println!(
            "network {} created: bridge {} {}/{}{ipv6}{}",
            n.name,
            n.bridge,
            n.gateway,
            n.subnet.prefix_len(),
            if flags.is_empty() {
                String::new()
            } else {
                format!(" ({flags})")
            }
        );
    })
}

/// `internal, icc off`, or nothing for a plain network.
fn flags(n: &NetworkView) -> String {
    let mut flags = Vec::new();
    if n.internal {
        flags.push("internal");
    }
    if !n.icc {
        flags.push("icc off");
    }
    flags.join(", ")
}

/// The networks table, also part of `status`.
pub(super) fn print_table(networks: &[NetworkView]) {
    const TABLE: Table<8> = Table {
        columns: [
            Column::left("NAME", 16),
            Column::right("ID", 3),
            Column::left("SUBNET", 18),
            Column::left("GATEWAY", 15),
            Column::left("SUBNET6", 24),
            Column::left("BRIDGE", 15),
            Column::left("FLAGS", 18),
            Column::left("CONTAINERS", 0),
        ],
        separator: "  ",
    };
    TABLE.print(networks.iter().map(|n| {
        let flags = flags(n);
        [
            n.name.clone(),
            n.id.to_string(),
            n.subnet.to_string(),
            n.gateway.to_string(),
            dash(&n.subnet6),
            n.bridge.clone(),
            if flags.is_empty() {
                "-".to_owned()
            } else {
                flags
            },
            if n.containers.is_empty() {
                "-".to_owned()
            } else {
                n.containers.join(",")
            },
        ]
    }));
}
