//! Sorting the output of the nested `cargo build` of the eBPF crate (see
//! `build.rs`): what a developer needs to read, out of what cargo says.
//!
//! A build script can only speak through `cargo:warning=` lines, which cargo
//! repeats on every later build too; forwarding the nested cargo's progress
//! ("Compiling ...", one line per crate) that way buried every build under
//! fifty warnings. Kept: compiler diagnostics, and on failure whatever cargo
//! said besides progress (a missing linker, a broken manifest). Shared by
//! `build.rs` and the tests in `tests/nested_cargo_output.rs`.
use std::path::PathBuf;

/// One line of the nested cargo's `--message-format=json` stdout, as far as
/// the build script cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A binary was built: where it is, under its target name.
    Executable { target: String, path: PathBuf },
    /// A compiler diagnostic, rendered as rustc prints it.
    Diagnostic { is_error: bool, rendered: String },
    /// Any other JSON message (build-script runs, the final verdict).
    Other,
    /// Not JSON: shown on failure in case it explains it.
    Text(String),
}

/// Parses one stdout line of `cargo build --message-format=json`.
pub fn parse_message(line: &str) -> Message {
    let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
        return Message::Text(line.to_owned());
    };
    match message["reason"].as_str() {
        Some("compiler-artifact") => {
            match (
                message["target"]["name"].as_str(),
                message["executable"].as_str(),
            ) {
                (Some(target), Some(path)) => Message::Executable {
                    target: target.to_owned(),
                    path: PathBuf::from(path),
                },
                _ => Message::Other,
            }
        }
        Some("compiler-message") => {
            let diagnostic = &message["message"];
            Message::Diagnostic {
                is_error: diagnostic["level"]
                    .as_str()
                    .is_some_and(|level| level.starts_with("error")),
                rendered: diagnostic["rendered"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_end()
                    .to_owned(),
            }
        }
        _ => Message::Other,
    }
}

/// Width cargo right-aligns its status words to ("   Compiling x").
const STATUS_WIDTH: usize = 12;

/// Whether a stderr line of cargo is a progress report: a capitalised
/// status word right-aligned to twelve columns, then a space ("   Compiling
/// foo", "    Finished `release` profile", "    Blocking waiting for file
/// lock"). Errors, warnings and their indented details are not.
pub fn is_progress(line: &str) -> bool {
    let word = line.trim_start_matches(' ');
    let indent = line.len() - word.len();
    let word_len = word
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(word.len());
    indent + word_len == STATUS_WIDTH
        && word.starts_with(|c: char| c.is_ascii_uppercase())
        && word[word_len..].starts_with(' ')
}

/// What to show of a nested build that `succeeded` or not, given its stdout
/// messages and stderr lines: on success only the compiler's warnings (about
/// our own eBPF code; cargo keeps dependencies quiet), on failure every
/// diagnostic and every stderr line that is not progress.
pub fn lines_to_show(succeeded: bool, messages: &[Message], stderr: &[String]) -> Vec<String> {
    let mut shown: Vec<String> = Vec::new();
    for message in messages {
        match message {
            Message::Diagnostic { is_error, rendered } if !succeeded || !is_error => {
                shown.extend(rendered.lines().map(str::to_owned));
            }
            Message::Text(line) if !succeeded => shown.push(line.clone()),
            _ => {}
        }
    }
    if !succeeded {
        shown.extend(stderr.iter().filter(|l| !is_progress(l)).cloned());
    }
    shown
}
