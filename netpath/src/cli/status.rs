//! `netpath status`: the instance, its agent, attachments and containers,
//! and whether all is well: exits with an error naming what is wrong when
//! not, so that it serves as a health check.
use super::{CliError, Result, container, network, output::Output, runtime};
use crate::{
    directories::Instance,
    lifecycle::{self, StatusView},
};

pub(super) fn run(instance: &Instance, out: Output) -> Result<()> {
    let status = runtime()?.block_on(lifecycle::status(instance))?;
    out.show(&status, print)?;
    if status.healthy {
        Ok(())
    } else {
        Err(CliError::Unhealthy {
            instance: status.instance,
            problems: status.problems.join("; "),
        })
    }
}

fn print(status: &StatusView) {
    let agent = match (status.agent_pid, status.agent_alive) {
        (Some(pid), true) => format!("running (pid {pid})"),
        (Some(pid), false) => format!("not running (stale pid {pid})"),
        (None, _) => "not running".to_owned(),
    };
    let since = status
        .agent_started_at
        .as_ref()
        .map(|t| format!(" since {t}"))
        .unwrap_or_default();
    println!("instance:   {}", status.instance);
    println!("uplink:     {} ({})", status.uplink, status.host_ip);
    println!("bridge:     {} gateway {}", status.bridge, status.gateway);
    println!("subnet:     {}", status.subnet);
    match (status.subnet6, status.gateway6, status.ipv6_mode) {
        (Some(subnet6), Some(gateway6), Some(mode)) => {
            let host_ip6 = status.host_ip6.map_or(
                "none: the uplink has no global IPv6 address".to_owned(),
                |ip| ip.to_string(),
            );
            println!("subnet6:    {subnet6} gateway {gateway6}");
            println!("ipv6:       {mode}, uplink {host_ip6}");
        }
        _ => println!("ipv6:       off"),
    }
    if status.xdp_fallen_back_to_tc {
        println!(
            "accel:      {} (translating in tc: the uplink delivers partial checksums)",
            status.accel
        );
    } else {
        println!("accel:      {}", status.accel);
    }
    println!("cgroup:     {}", status.cgroup.display());
    println!("pins:       {}", status.pin_dir.display());
    println!("agent:      {agent}{since}");
    println!("restarts:   {}", status.agent_restarts);
    println!("programs:");
    for a in &status.attachments {
        println!("  {:<18} {:<20} {}", a.program, a.hook, a.target);
    }
    println!("networks:   {}", status.networks.len());
    network::print_table(&status.networks);
    println!("containers: {}", status.containers.len());
    if !status.containers.is_empty() {
        container::print_table(&status.containers);
    }
    if status.healthy {
        println!("health:     ok");
    } else {
        println!("health:     {} problem(s)", status.problems.len());
        for problem in &status.problems {
            println!("  {problem}");
        }
    }
}
