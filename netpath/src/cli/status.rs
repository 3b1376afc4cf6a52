//! `netpath status`: the instance, its agent, attachments and containers.
use super::{Result, container, output::Output};
use crate::{
    directories::Instance,
    lifecycle::{self, StatusView},
};

pub(super) fn run(instance: &Instance, out: Output) -> Result<()> {
    out.show(&lifecycle::status(instance)?, print)
}

fn print(status: &StatusView) {
    let agent = match (status.agent_pid, status.agent_alive) {
        (Some(pid), true) => format!("running (pid {pid})"),
        (Some(pid), false) => format!("not running (stale pid {pid})"),
        (None, _) => "not running".to_owned(),
    };
    println!("instance:   {}", status.instance);
    println!("uplink:     {} ({})", status.uplink, status.host_ip);
    println!("bridge:     {} gateway {}", status.bridge, status.gateway);
    println!("subnet:     {}", status.subnet);
    println!("accel:      {}", status.accel);
    println!("cgroup:     {}", status.cgroup.display());
    println!("pins:       {}", status.pin_dir.display());
    println!("agent:      {agent}");
    println!("programs:");
    for a in &status.attachments {
        println!("  {:<18} {:<20} {}", a.program, a.hook, a.target);
    }
    println!("containers: {}", status.containers.len());
    if !status.containers.is_empty() {
        container::print_table(&status.containers);
    }
}
