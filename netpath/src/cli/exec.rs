//! `netpath exec NAME -- CMD...`.
use super::{Result, args::ExecArgs};
use crate::{container, directories::Instance};

pub(super) fn run(instance: &Instance, args: ExecArgs) -> Result<()> {
    // Returns only when the command could not be started.
    match container::exec(instance, &args.name, &args.command)? {}
}
