//! Host-side hardening, end to end: what an admin or a second `up` on the
//! same host can do to an instance, and what an instance may do to the host.
//! Each test attacks one way and checks that the instance and the host come
//! out whole.
use std::thread;

use netpath_tests::Lab;

#[test]
fn two_racing_ups_of_a_new_instance_leave_one_whole_instance() {
    let lab = Lab::new();
    // Each round is a fresh instance of the same name, raced for again.
    for round in 0..3 {
        let outs = thread::scope(|s| {
            let handles: Vec<_> = (0..2).map(|_| s.spawn(|| lab.up(&[]))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("up thread"))
                .collect::<Vec<_>>()
        });
        let winners = outs.iter().filter(|o| o.success()).count();
        assert_eq!(
            winners,
            1,
            "round {round}: exactly one `up` wins\n{}\n{}\n--- agent log\n{}",
            outs[0],
            outs[1],
            lab.agent_log()
        );
        let loser = outs.iter().find(|o| !o.success()).expect("a loser");
        assert!(!loser.timed_out, "{loser}");
        assert_eq!(
            loser.stderr.trim().lines().count(),
            1,
            "round {round}: the loser says why in one line\n{loser}"
        );
        assert!(
            loser.stderr.contains("already up"),
            "round {round}: the loser names the running instance\n{loser}"
        );
        let log = lab.agent_log();
        assert!(
            log.contains(" up: bridge ") && !log.contains("already up"),
            "round {round}: the loser wrote into the winner's log\n{log}"
        );
        let status = lab.netpath_json(&["status"]);
        assert_eq!(status["agent_alive"], true, "round {round}: {status}");
        lab.down().expect_ok("down after the race");
        lab.assert_clean();
    }
}
