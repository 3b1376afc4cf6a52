//! `netpath flows`: the conntrack table, or with `--watch` its events.
use std::net::IpAddr;

use super::{
    Result,
    args::FlowsArgs,
    output::{self, Column, Output, Table},
    runtime,
};
use crate::{
    container,
    directories::Instance,
    flows::{self, FlowFilter, FlowView},
    publish::PublishError,
    state,
    tables::Tables,
    watch,
};

pub(super) fn run(instance: &Instance, args: FlowsArgs, out: Output) -> Result<()> {
    let state = state::load_required(instance)?;
    // Every address of the container, of both families.
    let ips = match &args.container {
        Some(name) => {
            let view = container::view(&state, name);
            view.ip
                .ok_or_else(|| PublishError::UnknownContainer(name.clone()))?;
            view.networks
                .iter()
                .flat_map(|a| [Some(IpAddr::V4(a.ip)), a.ip6.map(IpAddr::V6)])
                .flatten()
                .collect()
        }
        None => Vec::new(),
    };
    let filter = FlowFilter {
        ips,
        port: args.port,
        proto: args.proto,
    };
    if args.watch {
        runtime()?.block_on(watch::watch(instance, &state, &filter, out.json))?;
        return Ok(());
    }
    let tables = Tables::open(instance)?;
    let mut list = flows::list(&tables, &filter)?;
    for flow in &mut list {
        flow.network = flows::network_of(&state, &flow.original, &flow.translated);
    }
    out.show(&list, |list| print_table(list))
}

fn print_table(list: &[FlowView]) {
    const TABLE: Table<10> = Table {
        columns: [
            Column::left("NETWORK", 12),
            Column::left("PROTO", 5),
            Column::left("KIND", 10),
            Column::left("ORIGINAL", 44),
            Column::left("TRANSLATED", 44),
            Column::left("STATE", 12),
            Column::right("AGE", 7),
            Column::right("IDLE", 7),
            Column::right("PKTS ORIG/REP", 14),
            Column::right("BYTES ORIG/REP", 14),
        ],
        separator: " ",
    };
    TABLE.print(list.iter().map(|f| {
        [
            output::dash(&f.network),
            f.proto.to_owned(),
            f.kind.to_owned(),
            f.original.to_string(),
            f.translated.to_string(),
            f.state.to_owned(),
            format!("{:.0}s", f.age_secs),
            format!("{:.0}s", f.idle_secs),
            format!("{}/{}", f.packets_original, f.packets_reply),
            format!("{}/{}", f.bytes_original, f.bytes_reply),
        ]
    }));
}
