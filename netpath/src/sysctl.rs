//! Writes to /proc/sys. Entries under /proc/sys/net belong to the network
//! namespace of the thread that opens them, so these act on the namespace
//! netpath runs in, never on another one by accident.
use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot set {key} to {value}: {source}")]
pub struct SysctlError {
    key: String,
    value: String,
    source: io::Error,
}

/// Path under /proc/sys of a dotted key (`net.ipv4.ip_forward`).
fn proc_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Sets the sysctl `key` (dotted form) to `value`.
pub fn write(key: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(proc_path(key), value).map_err(|source| SysctlError {
        key: key.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Turns on IPv4 forwarding in the current network namespace: the bridge is
/// the slow path and must route between containers and the uplink.
pub fn enable_ipv4_forwarding() -> Result<(), SysctlError> {
    write("net.ipv4.ip_forward", "1")
}

/// Reserves the SNAT port range (host order, inclusive) in the current
/// network namespace: host sockets must never be given a port our SNAT may
/// hand out.
pub fn reserve_local_ports((min, max): (u16, u16)) -> Result<(), SysctlError> {
    write("net.ipv4.ip_local_reserved_ports", &format!("{min}-{max}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dotted_keys_map_to_proc_paths() {
        assert_eq!(
            super::proc_path("net.ipv4.ip_forward"),
            std::path::Path::new("/proc/sys/net/ipv4/ip_forward")
        );
    }
}
