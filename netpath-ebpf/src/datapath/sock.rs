//! cgroup sock_addr hooks: host processes reaching a published port (on the
//! host's address, the gateway or loopback) are sent to the container when they
//! connect or send, with no packet NAT (the seed's OUTPUT-chain DNAT). UDP
//! replies and getpeername are translated back so the application sees the
//! address it asked for. The hooks sit on a cgroup, which spans network
//! namespaces: they act only in this instance's host netns.
//!
//! The IPv6 hooks serve AF_INET6 sockets asking for an IPv4 address
//! (v4-mapped `::ffff:a.b.c.d`) or `[::1]` (taken as 127.0.0.1): they rewrite
//! to the container's v4-mapped address, and a dual-stack socket goes on over
//! IPv4. There is no `sendmsg6`: the kernel sends a v4-mapped destination
//! through the IPv4 path (where `sendmsg4` runs) before the sendmsg6 hook, and
//! refuses a sendmsg6 rewrite to a v4-mapped address (ENOTSUPP).
use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use netpath_common::{
    IPPROTO_TCP, IPPROTO_UDP, PortKey, SOCK_ORIG_IPV6_LOOPBACK, SockRevNatKey, SockRevNatValue,
    stat,
};

use super::{
    family::V4,
    maps::{CONFIG, PORTS, SOCK_REVNAT, config, count},
    networks,
};

/// Verdict that lets the syscall go on.
const ALLOW: i32 = 1;
const LOOPBACK_NET: u32 = 127;

/// netpath's own probe connect (see `Config::probe_port`) tells us which
/// netns is the host's: nothing is rewritten until then. The address alone
/// proves nothing (the cgroup spans namespaces, anyone in it may connect
/// there first), so the socket must be the probe's own (`probe_cookie`).
#[inline(always)]
fn learn_host_netns(ctx: &SockAddrContext, ip: u32, port: u16) {
    let Some(cfg) = CONFIG.get_ptr_mut(0) else {
        return;
    };
    let (probe, probe_cookie) = unsafe { ((*cfg).probe_port, (*cfg).probe_cookie) };
    if probe != 0
        && ip == LOOPBACK_PROBE_IP
        && port == probe.to_be()
        && unsafe { bpf_get_socket_cookie(ctx.as_ptr()) } == probe_cookie
    {
        unsafe {
            (*cfg).netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
            (*cfg).probe_port = 0;
        }
    }
}

/// 127.0.0.1 in wire order.
const LOOPBACK_PROBE_IP: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

#[inline(always)]
fn in_host_netns(ctx: &SockAddrContext, netns_cookie: u64) -> bool {
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) == netns_cookie }
}

/// The address field of one hook family, seen as IPv4. The verifier refuses
/// `user_ip4` in IPv6 hooks and `user_ip6` in IPv4 ones, so each hook is
/// built for one family (a type, not a run-time branch).
trait Family {
    /// The IPv4 address (wire order) `sa` holds and how it was spelled
    /// (`SockRevNatValue::flags`), or None for an address left alone.
    fn read(sa: *const bpf_sock_addr) -> Option<(u32, u16)>;
    /// Puts IPv4 address `ip`, spelled as `flags` says, into `sa`.
    fn write(sa: *mut bpf_sock_addr, ip: u32, flags: u16);
}

struct Ipv4;

impl Family for Ipv4 {
    #[inline(always)]
    fn read(sa: *const bpf_sock_addr) -> Option<(u32, u16)> {
        Some((unsafe { (*sa).user_ip4 }, 0))
    }

    #[inline(always)]
    fn write(sa: *mut bpf_sock_addr, ip: u32, _flags: u16) {
        unsafe { (*sa).user_ip4 = ip };
    }
}

/// `user_ip6` word 2 of a v4-mapped address (`::ffff:0:0/96`).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
/// `user_ip6` word 3 of `::1`.
const IPV6_LOOPBACK_WORD: u32 = u32::from_ne_bytes([0, 0, 0, 1]);

struct Ipv6;

impl Family for Ipv6 {
    /// Word by word, volatile: 5.10 takes 4-byte accesses to `user_ip6`
    /// (8-byte ones only aligned), and LLVM must not merge them.
    #[inline(always)]
    fn read(sa: *const bpf_sock_addr) -> Option<(u32, u16)> {
        let word = |i: usize| unsafe { read_volatile(addr_of!((*sa).user_ip6[i])) };
        if word(0) != 0 || word(1) != 0 {
            return None;
        }
        match (word(2), word(3)) {
            (V4_MAPPED_WORD, ip) => Some((ip, 0)),
            (0, IPV6_LOOPBACK_WORD) => Some((LOOPBACK_PROBE_IP, SOCK_ORIG_IPV6_LOOPBACK)),
            _ => None,
        }
    }

    #[inline(always)]
    fn write(sa: *mut bpf_sock_addr, ip: u32, flags: u16) {
        let (word2, word3) = if flags & SOCK_ORIG_IPV6_LOOPBACK != 0 {
            (0, IPV6_LOOPBACK_WORD)
        } else {
            (V4_MAPPED_WORD, ip)
        };
        for (i, word) in [0, 0, word2, word3].into_iter().enumerate() {
            unsafe { write_volatile(addr_of_mut!((*sa).user_ip6[i]), word) };
        }
    }
}

/// Rewrites the destination of connect/sendmsg when it is a published port.
#[inline(always)]
fn to_container<F: Family>(ctx: &SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    let Some((ip, flags)) = F::read(sa) else {
        return ALLOW;
    };
    let (port, protocol) = unsafe { ((*sa).user_port as u16, (*sa).protocol) };
    if cfg.netns_cookie == 0 {
        learn_host_netns(ctx, ip, port);
        return ALLOW;
    }
    if !in_host_netns(ctx, cfg.netns_cookie) {
        return ALLOW;
    }
    let proto = match protocol {
        p if p == u32::from(IPPROTO_TCP) => IPPROTO_TCP,
        p if p == u32::from(IPPROTO_UDP) => IPPROTO_UDP,
        _ => return ALLOW,
    };
    let mut key = PortKey {
        host_ip: ip,
        host_port: port,
        proto,
        _pad: 0,
    };
    let target = match unsafe { PORTS.get(key) } {
        Some(t) => *t,
        None => {
            let loopback = u32::from(ip.to_ne_bytes()[0]) == LOOPBACK_NET;
            if !(ip == cfg.host_ip || loopback || networks::is_gateway::<V4>(ip)) {
                return ALLOW;
            }
            key.host_ip = 0;
            match unsafe { PORTS.get(key) } {
                Some(t) => *t,
                None => return ALLOW,
            }
        }
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev_key = SockRevNatKey {
        cookie,
        container_ip: target.container_ip,
        container_port: target.container_port,
        _pad: 0,
    };
    let rev = SockRevNatValue {
        orig_ip: ip,
        orig_port: port,
        flags,
    };
    let _ = SOCK_REVNAT.insert(rev_key, rev, 0);
    F::write(sa, target.container_ip, 0);
    unsafe { (*sa).user_port = u32::from(target.container_port) };
    count(stat::SOCK_REWRITE);
    ALLOW
}

/// Rewrites a container address back to the published one the socket used.
#[inline(always)]
fn from_container<F: Family>(ctx: &SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    if !in_host_netns(ctx, cfg.netns_cookie) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    let Some((container_ip, _)) = F::read(sa) else {
        return ALLOW;
    };
    let key = SockRevNatKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        container_ip,
        container_port: unsafe { (*sa).user_port as u16 },
        _pad: 0,
    };
    if let Some(orig) = unsafe { SOCK_REVNAT.get(key) } {
        F::write(sa, orig.orig_ip, orig.flags);
        unsafe { (*sa).user_port = u32::from(orig.orig_port) };
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    to_container::<Ipv4>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_container::<Ipv4>(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    from_container::<Ipv4>(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    from_container::<Ipv4>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    to_container::<Ipv6>(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    from_container::<Ipv6>(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    from_container::<Ipv6>(&ctx)
}
