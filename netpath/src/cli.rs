use std::process::ExitCode;

pub fn main() -> ExitCode {
    println!("netpath: {} bytes of eBPF", crate::datapath::EBPF_OBJECT.len());
    ExitCode::SUCCESS
}
