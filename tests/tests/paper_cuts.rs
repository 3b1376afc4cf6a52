//! Paper cuts a newcomer meets first: netpath started under `ip netns exec`
//! through a wrapper (as `cargo xtask run` is), and a second instance next
//! to the first in one network namespace.
use std::{process::Command, time::Duration};

use netpath_tests::{CmdOutput, Lab, run_timeout};

/// Runs its arguments as a child and exits with the child's code. Before
/// that it checks that it sits where cargo sits under
/// `ip netns exec H cargo xtask run -- up`: in the private mount namespace
/// `ip netns exec` made, which its own parent (the test) is not in.
const WRAPPER_PY: &str = r#"
import os, subprocess, sys
ns = lambda pid: os.stat("/proc/%s/ns/mnt" % pid).st_ino
if ns("self") == ns(os.getppid()):
    sys.exit("wrapper: not in a private mount namespace")
sys.exit(subprocess.call(sys.argv[1:]))
"#;

/// `ip netns exec H python3 WRAPPER netpath --instance I ARGS`.
///
/// Equivalent to `ip netns exec H cargo xtask run -- ARGS` for what matters
/// here: `ip` execs the wrapper (as it execs cargo), the wrapper forks
/// netpath and waits (as cargo does), so netpath's parent shares its private
/// mount namespace and only a further ancestor is outside it. A shell that
/// execs its last command would not do: netpath would be `ip`'s direct child
/// of the test. Real cargo is left out because it takes minutes to start.
fn netpath_under_wrapper(lab: &Lab, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        lab.host.name(),
        "python3",
        "-c",
        WRAPPER_PY,
    ])
    .arg(lab.bin())
    .args(["--instance", lab.instance()])
    .args(args);
    run_timeout(&mut cmd, Duration::from_secs(120))
}

#[test]
fn up_and_down_work_under_ip_netns_exec_through_a_wrapper_process() {
    let lab = Lab::new();
    let cgroup = lab.cgroup_path().to_string_lossy().into_owned();
    let up = netpath_under_wrapper(
        &lab,
        &[
            "up",
            "--detach",
            "--uplink",
            Lab::UPLINK,
            "--cgroup",
            &cgroup,
        ],
    );
    up.expect_ok("netpath up under ip netns exec and a wrapper");
    // The pins and the state are in the real mount namespace, where every
    // later command (here: the lab's, through nsenter) looks for them.
    let status = lab.netpath_json(&["status"]);
    assert_eq!(status["agent_alive"], true, "{status}");

    netpath_under_wrapper(&lab, &["down"])
        .expect_ok("netpath down under ip netns exec and a wrapper");
    lab.assert_clean();
}
