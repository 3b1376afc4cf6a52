//! `netpath publish add | rm | ls`.
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
    TABLE.print(list.iter().map(|p| {
        [
            p.host.to_string(),
            dash(&p.container),
            p.container_ip.to_string(),
            p.container_port.to_string(),
            p.allow.as_ref().map_or_else(
                || "all".to_owned(),
                |nets| {
                    let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
                    nets.join(",")
                },
            ),
        ]
    }));
}
