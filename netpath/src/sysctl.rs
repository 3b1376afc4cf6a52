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

/// Path under /proc/sys of a dotted key (`net.ipv4.ip_forward`), or of a
/// key written with slashes, as sysctl(8) takes them, for a name holding a
/// dot (`net/ipv6/conf/eth0.5/accept_dad`).
fn proc_path(key: &str) -> PathBuf {
    let path = match key.contains('/') {
        true => key.to_owned(),
        false => key.replace('.', "/"),
    };
    PathBuf::from("/proc/sys").join(path)
}

/// Sets the sysctl `key` (dotted form) to `value`.
pub fn write(key: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(proc_path(key), value).map_err(|source| SysctlError {
        key: key.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Reads the sysctl `key` (dotted form), trimmed. In one `read`: some
/// handlers (`ip_local_reserved_ports`) answer a read at an offset with EOF,
/// so a value read in pieces comes back cut.
pub fn read(key: &str) -> Result<String, SysctlError> {
    let err = |source| SysctlError {
        key: key.to_owned(),
        value: "(read)".to_owned(),
        source,
    };
    let mut file = std::fs::File::open(proc_path(key)).map_err(err)?;
    // The longest list of ports, every other one of 65536, fits.
    let mut buf = vec![0u8; 256 * 1024];
    let n = io::Read::read(&mut file, &mut buf).map_err(err)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn dotted_keys_map_to_proc_paths() {
        assert_eq!(
            super::proc_path("net.ipv4.ip_forward"),
            std::path::Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            super::proc_path("net/ipv6/conf/eth0.5/accept_dad"),
            std::path::Path::new("/proc/sys/net/ipv6/conf/eth0.5/accept_dad")
        );
    }
}
