//! `netpath container add | rm | ls`.
use std::{net::Ipv4Addr, time::Duration};

use super::{
    CliError, Result,
    args::{AddArgs, ContainerCommand},
    output::{Column, Output, Table, dash},
    runtime,
};
use crate::{
    container::{self, AddRequest, ContainerView},
    directories::Instance,
    state::Mode,
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
        ContainerCommand::Ls => out.show(&container::list(instance)?, |c| print_table(c)),
    }
}

fn add(instance: &Instance, args: AddArgs, out: Output) -> Result<()> {
    let request = AddRequest {
        mode: parse_mode(&args.mode)?,
        ip: args.ip.as_deref().map(parse_ip).transpose()?,
        name: args.name,
        publish: args.publish,
        allow: args.allow,
    };
    let added = runtime()?.block_on(container::add(instance, request))?;
    out.show(&added, |added| {
        println!(
            "container {} added ({}, ip {})",
            added.name,
            added.mode,
            dash(&added.ip)
        );
    })
}

/// The containers table, also part of `status`.
pub(super) fn print_table(containers: &[ContainerView]) {
    const TABLE: Table<5> = Table {
        columns: [
            Column::left("NAME", 12),
            Column::left("MODE", 22),
            Column::left("IP", 15),
            Column::left("MAC", 17),
            Column::left("VETH", 0),
        ],
        separator: "  ",
    };
    TABLE.print(containers.iter().map(|c| {
        [
            c.name.clone(),
            c.mode.clone(),
            dash(&c.ip),
            dash(&c.mac),
            dash(&c.host_veth),
        ]
    }));
}

fn parse_ip(text: &str) -> Result<Ipv4Addr> {
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
