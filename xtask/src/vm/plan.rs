//! Which test binaries each kernel runs when the whole matrix runs.
//!
//! Under TCG each `netpath up` costs seconds of verifier time, more on
//! 5.10 and 6.1 than on 6.12 (see docs/kernels.md), and every test pays
//! for one. The whole suite on all three kernels took more than CI's 90
//! minutes on two cores, so `--kernel all` shares it out:
//!
//! - every kernel runs the unit tests and the packet programs byte for byte
//!   ([`EVERY_KERNEL`]);
//! - 5.10 and 6.1 run their [`PARTS`], chosen by what differs there: 5.10
//!   learns the netns cookie through the socket hooks, stamps flows with
//!   the precise clock and has no FIB MTU, so it runs the seed scenario
//!   (IPv4 NAT, the host's own access included) and the agent; 6.1 runs the
//!   IPv6 NAT and topology binaries;
//! - 6.12 runs every other binary.
//!
//! Each end-to-end binary thus runs on one VM kernel, and on the host's
//! (6.18 here) in CI's test stage; the parts are sized so the three VMs end
//! together. `--kernel K` for one kernel runs every binary.

use anyhow::{Result, bail};

use super::build::TestBinary;

/// Test targets (`tests/tests/NAME.rs`) every kernel runs.
const EVERY_KERNEL: &[&str] = &["packets", "packets6"];

/// (kernel series, the test targets it runs beyond [`EVERY_KERNEL`] in the
/// full matrix). The kernel not named here runs all the others.
const PARTS: &[(&str, &[&str])] = &[("5.10", &["nat", "agent"]), ("6.1", &["nat6", "ipv6"])];

/// The integration-test target a binary was built from (`test-nat` →
/// `nat`); `None` for unit tests (`lib-netpath`, `bin-…`).
fn test_target(t: &TestBinary) -> Option<&str> {
    t.name.strip_prefix("test-")
}

/// The binaries `series` runs: all of them for a single kernel, its share
/// of the full matrix otherwise. Fails on a name in the plan that matches
/// no built binary (none are built for `NETPATH_VM_SMOKE`), so the plan
/// cannot go stale in silence.
pub fn tests_for<'a>(
    series: &str,
    full_matrix: bool,
    tests: &'a [TestBinary],
) -> Result<Vec<&'a TestBinary>> {
    let in_parts = || PARTS.iter().flat_map(|(_, names)| names.iter());
    for name in EVERY_KERNEL.iter().chain(in_parts()) {
        if !tests.is_empty() && !tests.iter().any(|t| test_target(t) == Some(name)) {
            bail!("vm plan: no test binary {name} (xtask/src/vm/plan.rs)");
        }
    }
    let part = PARTS
        .iter()
        .find(|(s, _)| *s == series)
        .map(|(_, names)| *names);
    let runs = |t: &TestBinary| match test_target(t) {
        _ if !full_matrix => true,
        None => true,
        Some(target) if EVERY_KERNEL.contains(&target) => true,
        Some(target) => match part {
            Some(part) => part.contains(&target),
            None => !in_parts().any(|name| *name == target),
        },
    };
    Ok(tests.iter().filter(|t| runs(t)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built() -> Vec<TestBinary> {
        let planned = PARTS
            .iter()
            .flat_map(|(_, names)| names.iter())
            .map(|n| format!("test-{n}"));
        [
            "lib-netpath",
            "test-packets",
            "test-packets6",
            "test-attacks",
        ]
        .map(str::to_owned)
        .into_iter()
        .chain(planned)
        .map(|name| TestBinary {
            path: name.clone().into(),
            name,
        })
        .collect()
    }

    fn names(runs: &[&TestBinary]) -> Vec<String> {
        runs.iter().map(|t| t.name.clone()).collect()
    }

    #[test]
    fn each_end_to_end_binary_runs_on_one_kernel_and_one_kernel_alone_runs_all() {
        let tests = built();
        let every = ["lib-netpath", "test-packets", "test-packets6"];
        let on_510 = names(&tests_for("5.10", true, &tests).unwrap());
        assert_eq!(on_510, [&every[..], &["test-nat", "test-agent"]].concat());
        let on_61 = names(&tests_for("6.1", true, &tests).unwrap());
        assert_eq!(on_61, [&every[..], &["test-nat6", "test-ipv6"]].concat());
        let on_612 = names(&tests_for("6.12", true, &tests).unwrap());
        assert_eq!(on_612, [&every[..], &["test-attacks"]].concat());
        for kernel in ["5.10", "6.1", "6.12"] {
            assert_eq!(tests_for(kernel, false, &tests).unwrap().len(), tests.len());
        }
    }

    #[test]
    fn a_plan_naming_a_binary_that_was_not_built_is_refused() {
        let tests: Vec<_> = built()
            .into_iter()
            .filter(|t| t.name != "test-agent")
            .collect();
        let Err(err) = tests_for("6.12", true, &tests) else {
            panic!("a stale plan was taken");
        };
        assert!(err.to_string().contains("no test binary agent"), "{err}");
    }
}
