//! Loading, attaching and pinning the eBPF programs and maps.

/// The eBPF object built from netpath-ebpf by the build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpath"));
