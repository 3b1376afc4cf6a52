//! Forged frames, sent raw: how the attack tests put on the wire what no
//! well-behaved stack would (spoofed sources, blind resets, fragments,
//! ARP lies). The sender is a thread that enters the attacker's network
//! namespace for the duration (setns changes only the calling thread).
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::cmd::Place;

/// Sends each frame (a whole Ethernet frame) out of `iface` in the network
/// namespace at `netns` (e.g. `/run/netns/NAME`), in order.
pub fn send_frames(netns: &Path, iface: &str, frames: &[Vec<u8>]) -> Result<()> {
    let netns = netns.to_path_buf();
    let iface = iface.to_string();
    std::thread::scope(|scope| {
        scope
            .spawn(|| send_from_netns(&netns, &iface, frames))
            .join()
            .map_err(|_| anyhow::anyhow!("the frame sender panicked"))?
    })
}

fn send_from_netns(netns: &Path, iface: &str, frames: &[Vec<u8>]) -> Result<()> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    // SAFETY: a valid namespace fd; affects only this thread, which ends
    // with the send.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns {}: {}",
            netns.display(),
            std::io::Error::last_os_error()
        );
    }
    let name = CString::new(iface)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface} in {}", netns.display());
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if raw < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    for frame in frames {
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and addr are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            bail!(
                "sending a frame on {iface}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// The MAC address of `iface` in `place`, read with `ip`.
pub fn mac_of(place: impl Into<Place>, iface: &str) -> Result<[u8; 6]> {
    let out = place
        .into()
        .exec("ip", &["-br", "link", "show", "dev", iface]);
    if !out.success() {
        bail!("ip link show {iface}: {out}");
    }
    let word = out
        .stdout
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("no MAC in {out}"))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(word.split(':')) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC {word}"))?;
    }
    Ok(mac)
}
