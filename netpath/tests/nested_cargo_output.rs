//! The build script's filter of the nested eBPF build's output
//! (`build/nested_cargo_output.rs`), on lines as cargo prints them.
#[path = "../build/nested_cargo_output.rs"]
mod nested_cargo_output;

use std::path::PathBuf;

use nested_cargo_output::{Message, is_progress, lines_to_show, parse_message};

const ARTIFACT: &str = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/netpath-ebpf#0.1.0","manifest_path":"/w/netpath-ebpf/Cargo.toml","target":{"kind":["bin"],"crate_types":["bin"],"name":"netpath","src_path":"/w/netpath-ebpf/src/main.rs","edition":"2024","doc":true,"doctest":false,"test":true},"profile":{"opt_level":"3"},"features":[],"filenames":["/o/ebpf-target/bpfel-unknown-none/release/netpath"],"executable":"/o/ebpf-target/bpfel-unknown-none/release/netpath","fresh":false}"#;
const LIBRARY: &str = r#"{"reason":"compiler-artifact","package_id":"registry+https://github.com/rust-lang/crates.io-index#aya-ebpf@0.2.1","target":{"kind":["lib"],"name":"aya_ebpf"},"filenames":["/o/libaya_ebpf.rlib"],"executable":null,"fresh":false}"#;
const ERROR: &str = r#"{"reason":"compiler-message","package_id":"path+file:///w/netpath-ebpf#0.1.0","target":{"kind":["bin"],"name":"netpath"},"message":{"rendered":"error[E0425]: cannot find value `x` in this scope\n --> netpath-ebpf/src/main.rs:3:5\n  |\n3 |     x\n  |     ^ not found in this scope\n\n","$message_type":"diagnostic","children":[],"code":{"code":"E0425","explanation":null},"level":"error","message":"cannot find value `x` in this scope","spans":[]}}"#;
const WARNING: &str = r#"{"reason":"compiler-message","target":{"kind":["bin"],"name":"netpath"},"message":{"rendered":"warning: unused variable: `y`\n --> netpath-ebpf/src/main.rs:4:9\n","level":"warning","message":"unused variable: `y`","spans":[]}}"#;
const BUILD_FINISHED: &str = r#"{"reason":"build-finished","success":false}"#;

/// stderr of a nested build that failed on the error above.
fn failed_stderr() -> Vec<String> {
    [
        "   Compiling aya-ebpf v0.2.1",
        "    Blocking waiting for file lock on build directory",
        "   Compiling netpath-ebpf v0.1.0 (/w/netpath-ebpf)",
        "error: could not compile `netpath-ebpf` (bin \"netpath\") due to 1 previous error",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn messages(lines: &[&str]) -> Vec<Message> {
    lines.iter().map(|line| parse_message(line)).collect()
}

#[test]
fn json_messages_are_read_for_binaries_and_diagnostics() {
    assert_eq!(
        parse_message(ARTIFACT),
        Message::Executable {
            target: "netpath".to_owned(),
            path: PathBuf::from("/o/ebpf-target/bpfel-unknown-none/release/netpath"),
        }
    );
    assert_eq!(parse_message(LIBRARY), Message::Other);
    assert_eq!(parse_message(BUILD_FINISHED), Message::Other);
    assert!(matches!(
        parse_message(ERROR),
        Message::Diagnostic { is_error: true, rendered } if rendered.ends_with("not found in this scope")
    ));
    assert_eq!(
        parse_message("not json"),
        Message::Text("not json".to_owned())
    );
}

#[test]
fn progress_lines_are_told_from_errors_and_their_details() {
    for progress in [
        "   Compiling netpath-ebpf v0.1.0 (/w/netpath-ebpf)",
        "    Finished `release` profile [optimized] target(s) in 19.98s",
        "    Blocking waiting for file lock on package cache",
        "    Updating crates.io index",
        " Downloading crates ...",
    ] {
        assert!(is_progress(progress), "{progress:?}");
    }
    for kept in [
        "error: could not compile `netpath-ebpf`",
        "error: linker `bpf-linker` not found",
        "warning: unused manifest key: package.foo",
        "Caused by:",
        "  process didn't exit successfully: `build-script-build` (exit status: 101)",
        "  --- stderr",
        "",
    ] {
        assert!(!is_progress(kept), "{kept:?}");
    }
}

#[test]
fn a_successful_build_shows_nothing_but_compiler_warnings() {
    let ok_stderr = [
        "   Compiling netpath-ebpf v0.1.0 (/w/netpath-ebpf)",
        "    Finished `release` profile [optimized] target(s) in 19.98s",
    ]
    .map(str::to_owned);
    assert!(lines_to_show(true, &messages(&[LIBRARY, ARTIFACT]), &ok_stderr).is_empty());
    assert_eq!(
        lines_to_show(true, &messages(&[WARNING, ARTIFACT]), &ok_stderr),
        [
            "warning: unused variable: `y`",
            " --> netpath-ebpf/src/main.rs:4:9"
        ]
    );
}

#[test]
fn a_failed_build_shows_its_errors_without_the_progress() {
    let shown = lines_to_show(
        false,
        &messages(&[LIBRARY, ERROR, BUILD_FINISHED]),
        &failed_stderr(),
    );
    assert_eq!(
        shown[0],
        "error[E0425]: cannot find value `x` in this scope"
    );
    assert!(shown.iter().any(|l| l.contains("not found in this scope")));
    assert_eq!(
        shown.last().map(String::as_str),
        Some("error: could not compile `netpath-ebpf` (bin \"netpath\") due to 1 previous error")
    );
    assert!(!shown.iter().any(|l| is_progress(l)), "{shown:#?}");
}
