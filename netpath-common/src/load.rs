//! Loading programs, for every userspace loader (netpath's, the packet
//! tests' harness, the bench's).
use aya::programs::ProgramError;

/// How often [`load_program`] tries.
const LOAD_ATTEMPTS: u32 = 5;

/// EAGAIN, which BPF_PROG_LOAD returns when a signal interrupted the verifier.
const EAGAIN: i32 = 11;

/// Runs `load` (a program's BPF_PROG_LOAD) again while the verifier gives
/// up because a signal arrived during verification (EAGAIN, since Linux
/// 4.20: "bpf: check pending signals while verifying programs"), up to
/// [`LOAD_ATTEMPTS`] times, as libbpf does. A big program keeps the
/// verifier busy long enough for that to happen now and then.
pub fn load_program(
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}
