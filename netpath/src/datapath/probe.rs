//! What the kernel can do, asked before and while loading: its version and
//! helpers, tcx, the interface driver, and the netns-cookie probe for kernels
//! that cannot tell userspace the cookie.
use std::{
    fs,
    io::{self, Read, Write},
    os::fd::AsRawFd,
    path::Path,
};

use aya::util::KernelVersion;

use super::{DatapathError, io_err};
use crate::tables::Tables;

/// The netns cookie of the calling thread's network namespace, which the
/// socket hooks compare against to act only in the host netns.
pub(super) fn netns_cookie() -> Result<u64, DatapathError> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .map_err(io_err("opening a socket to read the netns cookie"))?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, output buffer of the advertised size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io_err(
            "reading the netns cookie (SO_NETNS_COOKIE needs Linux 5.14 or newer)",
        )(io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// For tests only, not a setting: `NETPATH_FORCE_NETNS_PROBE=PORT` makes `up`
/// learn the netns cookie through the socket hooks (the path of kernels before
/// 5.14) even where SO_NETNS_COOKIE works, probing on PORT rather than a
/// random port, so a test can run that path on any kernel and race it.
pub(super) fn forced_probe_port() -> Option<u16> {
    std::env::var("NETPATH_FORCE_NETNS_PROBE")
        .ok()?
        .parse()
        .ok()
        .filter(|&port| port != 0)
}

/// Kernels before 5.14 can't give userspace a netns cookie, but the socket
/// hooks can read it: a child process joins the hooked cgroup, opens a UDP
/// socket and tells us its socket cookie; once CONFIG names that socket and a
/// random probe port, the child connects it (nothing is sent) to 127.0.0.1 on
/// that port, and `sock_connect4` records the cookie of the netns it ran in,
/// ours. Naming the socket matters: the cgroup spans namespaces, and any
/// process in it could connect to the probe address first.
pub(super) fn learn_netns_cookie(
    tables: &mut Tables,
    cgroup: &Path,
    port: Option<u16>,
) -> Result<u64, DatapathError> {
    let probe_port = match port {
        Some(port) => port,
        None => {
            let mut random = [0u8; 2];
            fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut random))
                .map_err(io_err("reading /dev/urandom"))?;
            1024 + u16::from_ne_bytes(random) % (u16::MAX - 1024)
        }
    };
    let procs = std::ffi::CString::new(
        cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .map_err(|_| DatapathError::Io {
        what: format!("cgroup path {}", cgroup.display()),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: probe_port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    // The child sends its socket's cookie on one pipe, then waits on the
    // other until CONFIG names that socket before it connects.
    let (mut cookie_rx, cookie_tx) =
        io::pipe().map_err(io_err("opening the netns probe's pipe"))?;
    let (go_rx, mut go_tx) = io::pipe().map_err(io_err("opening the netns probe's pipe"))?;
    let (cookie_fd, go_rx_fd, go_tx_fd) =
        (cookie_tx.as_raw_fd(), go_rx.as_raw_fd(), go_tx.as_raw_fd());
    // SAFETY: the child only makes async-signal-safe syscalls on data
    // prepared before the fork, then _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            // Our copy of the write end would keep the read below from
            // seeing the end of a parent that gave up.
            libc::close(go_tx_fd);
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            let joined = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            // A socket answers to the hooks of the cgroup it was created in:
            // join first, then open it.
            let sock = if joined {
                libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
            } else {
                -1
            };
            let mut cookie: u64 = 0;
            let mut len = size_of::<u64>() as libc::socklen_t;
            let told = sock >= 0
                && libc::getsockopt(
                    sock,
                    libc::SOL_SOCKET,
                    libc::SO_COOKIE,
                    (&raw mut cookie).cast(),
                    &mut len,
                ) == 0
                && libc::write(cookie_fd, (&raw const cookie).cast(), size_of::<u64>())
                    == size_of::<u64>() as isize;
            let mut go = 0u8;
            let connected = told
                && libc::read(go_rx_fd, (&raw mut go).cast(), 1) == 1
                && libc::connect(
                    sock,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ) == 0;
            libc::_exit(if connected { 0 } else { 1 });
        }
    }
    // The child's ends now live only in the child: a child that dies early
    // reads as end of file.
    drop((cookie_tx, go_rx));
    if pid < 0 {
        return Err(io_err("forking the netns probe")(io::Error::last_os_error()));
    }
    let armed = (|| -> Result<(), DatapathError> {
        let mut cookie = [0u8; size_of::<u64>()];
        cookie_rx.read_exact(&mut cookie).map_err(io_err(
            "reading the netns probe socket's cookie (joining the cgroup, socket or SO_COOKIE failed)",
        ))?;
        let mut config = tables.config()?;
        config.netns_cookie = 0;
        config.probe_port = probe_port;
        config.probe_cookie = u64::from_ne_bytes(cookie);
        tables.set_config(&config)?;
        go_tx
            .write_all(&[1])
            .map_err(io_err("starting the netns probe"))
    })();
    // A child still waiting for its go (we failed) sees end of file and exits.
    drop(go_tx);
    let mut status = 0;
    // SAFETY: waiting for the child we just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    armed?;
    let config = tables.config()?;
    if config.netns_cookie == 0 {
        return Err(DatapathError::Io {
            what: "learning the host netns cookie through the socket hooks".to_string(),
            source: io::Error::other("the probe connect was not seen"),
        });
    }
    Ok(config.netns_cookie)
}

/// Before 5.11 BPF memory counts against RLIMIT_MEMLOCK, which starts tiny.
pub(super) fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!("raising RLIMIT_MEMLOCK: {}", io::Error::last_os_error());
    }
}

pub(super) fn check_kernel() -> Result<(), DatapathError> {
    match KernelVersion::current() {
        Ok(v) if v < KernelVersion::new(5, 10, 0) => {
            Err(DatapathError::KernelTooOld(format!("{v:?}")))
        }
        _ => Ok(()),
    }
}

/// 1 where the kernel has `bpf_ktime_get_coarse_ns` (5.11), for the
/// datapath's `HAS_COARSE_CLOCK`.
pub fn has_coarse_clock() -> u8 {
    u8::from(KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 11, 0)))
}

pub(super) fn use_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// The interface's driver name (ETHTOOL_GDRVINFO), e.g. "veth".
pub(super) fn driver_of(ifname: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return None;
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    // SAFETY: SIOCETHTOOL with a valid ifreq pointing at a buffer of the
    // size ETHTOOL_GDRVINFO writes.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0)?;
    String::from_utf8(info.driver[..end].to_vec()).ok()
}

pub(super) fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the size if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    String::from_utf8(buf[..end].to_vec()).ok()
}
