//! `netpath-cni`: the CNI plugin (see `netpath::cni`).
fn main() -> std::process::ExitCode {
    netpath::cni::main()
}
