//! Paper cuts a newcomer meets first: netpath started under `ip netns exec`
//! through a wrapper (as `cargo xtask run` is), and a second instance next
//! to the first in one network namespace.
use std::{process::Command, time::Duration};

use netpath_tests::{CmdOutput, Lab, NeighbourInstance, run_timeout, unique_name};

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
    let up_args = lab.up_args(&[]);
    let up_args: Vec<&str> = up_args.iter().map(String::as_str).collect();
    let up = netpath_under_wrapper(&lab, &up_args);
    up.expect_ok("netpath up under ip netns exec and a wrapper");
    // The pins and the state are in the real mount namespace, where every
    // later command (here: the lab's, through nsenter) looks for them.
    let status = lab.netpath_json(&["status"]);
    assert_eq!(status["agent_alive"], true, "{status}");

    netpath_under_wrapper(&lab, &["down"])
        .expect_ok("netpath down under ip netns exec and a wrapper");
    lab.assert_clean();
}

#[test]
fn two_instances_in_one_netns_come_up_with_their_own_bridges_and_subnets() {
    let lab = Lab::new();
    // The lab's instance has the bridge the default instance would get.
    lab.up_ok(&["--bridge", "np0"]);
    // Too long a name for `npbr-NAME`: the derived bridge is shortened.
    let second = NeighbourInstance::new(&lab, format!("{}-second", unique_name("t")));
    second
        .up(&["--subnet", "10.78.0.0/16"])
        .expect_ok("a second instance with its own subnet");

    let status = second.netpath(&["--json", "status"]);
    status.expect_ok("status of the second instance");
    let bridge = status.json()["bridge"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        bridge.starts_with("npbr-") && bridge.len() <= 15,
        "derived bridge name: {bridge:?}"
    );
    let links = lab.host_links();
    assert!(
        links.contains(&"np0".to_owned()) && links.contains(&bridge),
        "both bridges in H: {links:?}"
    );
    let gateway = lab
        .host
        .exec(&["ip", "-4", "-o", "addr", "show", "dev", &bridge]);
    assert!(gateway.stdout.contains("10.78.0.1/16"), "{gateway}");

    second
        .netpath(&["down"])
        .expect_ok("down of the second instance");
    lab.down().expect_ok("down of the lab's instance");
    lab.assert_clean();
    Lab::assert_no_leftovers(second.name());
}

#[test]
fn an_instance_whose_subnet_overlaps_another_in_its_netns_is_refused_whole() {
    let lab = Lab::new();
    lab.up_ok(&[]);
    let links_before = lab.host_links();
    for extra in [
        &[][..],
        &["--subnet", "10.77.128.0/17"],
        &["--subnet", "10.0.0.0/8"],
    ] {
        let third = NeighbourInstance::new(&lab, unique_name("t"));
        let out = third.up(extra);
        out.expect_fail("up with a subnet overlapping the lab's instance");
        let stderr = out.stderr.trim();
        assert!(
            stderr.starts_with("error: ") && stderr.lines().count() == 1,
            "expected a one-line `error: ...`\n{out}"
        );
        assert!(
            stderr.contains(&format!("instance {}", lab.instance())) && stderr.contains("--subnet"),
            "the error names the other instance and says to pass --subnet\n{out}"
        );
        Lab::assert_no_leftovers(third.name());
        assert_eq!(
            lab.host_links(),
            links_before,
            "{extra:?} left interfaces behind"
        );
    }
    // The lab's instance is untouched.
    assert_eq!(lab.netpath_json(&["status"])["agent_alive"], true);
}
