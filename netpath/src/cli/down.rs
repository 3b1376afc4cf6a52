//! `netpath down`: remove the instance.
use std::time::Duration;

use super::{Result, output::Output};
use crate::{directories::Instance, lifecycle};

pub(super) fn run(instance: &Instance, grace: Duration, out: Output) -> Result<()> {
    let removed = lifecycle::down(instance, grace)?;
    out.show(
        &serde_json::json!({ "instance": instance.name(), "removed": removed }),
        |_| {
            if removed {
                println!("instance {instance} removed");
            } else {
                println!("instance {instance} was not up: nothing to remove");
            }
        },
    )
}
