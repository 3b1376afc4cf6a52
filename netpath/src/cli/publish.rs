//! `netpath publish add | rm | ls`.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    Result,
    args::PublishCommand,
    output::{Column, Output, Table, dash, print_json},
};
use crate::{directories::Instance, publish, tables::Tables};

pub(super) fn run(instance: &Instance, command: PublishCommand, out: Output) -> Result<()> {
    match command {
        PublishCommand::Add { name, specs, allow } => {
            let mut tables = Tables::open(instance)?;
            let mappings = publish::add(instance, &mut tables, &name, &specs, &allow)?;
            // JSON shows the whole list after the change, text what was added.
            if out.json {
                print_json(&publish::list(instance, &tables)?)
            } else {
                for m in mappings {
                    println!("published {} -> {name}:{}", m.host, m.container_port);
                }
                Ok(())
            }
        }
        PublishCommand::Rm { spec } => {
            let removed = publish::remove(instance, &mut Tables::open(instance)?, &spec)?;
            out.show(&removed, |removed| {
                for host in removed {
                    println!("unpublished {host}");
                }
            })
        }
        PublishCommand::Ls => {
            let list = publish::list(instance, &Tables::open(instance)?)?;
            out.show(&list, |list| print_table(list))
        }
    }
}

/// One line per family a mapping is published on, the host side as Docker
/// prints it for IPv6 (`[::]:8080/tcp`).
fn print_table(list: &[publish::Published]) {
    const TABLE: Table<5> = Table {
        columns: [
            Column::left("HOST", 24),
            Column::left("CONTAINER", 14),
            Column::left("IP", 16),
            Column::left("PORT", 6),
            Column::left("ALLOW", 0),
        ],
        separator: " ",
    };
    TABLE.print(list.iter().flat_map(|p| {
        // Docker's 0.0.0.0 beside [::] when the mapping has both.
        let every = |ip: IpAddr| match p.host.ip {
            None if p.container_ip.is_some() && p.container_ip6.is_some() => publish::HostPort {
                ip: Some(ip),
                ..p.host
            },
            _ => p.host,
        };
        let v4 = p.container_ip.map(|ip| {
            let allow = p.allow.as_ref().map_or_else(
                || "all".to_owned(),
                |nets| {
                    let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
                    format!("{} (IPv4 only)", nets.join(","))
                },
            );
            (
                every(Ipv4Addr::UNSPECIFIED.into()).to_string(),
                ip.to_string(),
                allow,
            )
        });
        let v6 = p.container_ip6.map(|ip| {
            let host = match p.host.ip {
                None => publish::HostPort {
                    ip: Some(Ipv6Addr::UNSPECIFIED.into()),
                    ..p.host
                },
                Some(_) => p.host,
            };
            (host.to_string(), ip.to_string(), "all".to_owned())
        });
        [v4, v6].into_iter().flatten().map(|(host, ip, allow)| {
            [
                host,
                dash(&p.container),
                ip,
                p.container_port.to_string(),
                allow,
            ]
        })
    }));
}
