//! cgroup sock_addr hooks: host processes reaching a published port (on the
//! host's address, the gateway or loopback) are sent to the container when they
//! connect or send, with no packet NAT (the seed's OUTPUT-chain DNAT). UDP
//! replies and getpeername are translated back so the application sees the
//! address it asked for. The hooks sit on a cgroup, which spans network
//! namespaces: they act only in this instance's host netns.
//!
//! The IPv6 hooks serve AF_INET6 sockets. With IPv6 on (`CONFIG_FLAG_IPV6`)
//! a published port on the host's IPv6 address, a network's IPv6 gateway or
//! `[::1]` leads to the container's IPv6 address (`PORTS6`, remembered in
//! `SOCK_REVNAT6`). Otherwise (an IPv4-only container, or IPv6 off) and for
//! v4-mapped addresses (`::ffff:a.b.c.d`), `[::1]` is taken as 127.0.0.1 and
//! `connect6` rewrites to the container's v4-mapped address: a dual-stack
//! socket goes on over IPv4. `sendmsg6` cannot do that: the kernel sends a
//! v4-mapped destination through the IPv4 path (where `sendmsg4` runs)
//! before the sendmsg6 hook, and refuses a sendmsg6 rewrite to a v4-mapped
//! address (ENOTSUPP); it only rewrites to IPv6 containers.
use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use netpath_common::{
    Addr, Config, IPPROTO_TCP, IPPROTO_UDP, Ip6, PortKey, PortTarget, SOCK_ORIG_IPV6_LOOPBACK,
    SockRevNatKey, SockRevNatKey6, SockRevNatValue, SockRevNatValue6, stat,
};

use super::{
    family::{Family, V4, V6},
    maps::{CONFIG, SOCK_REVNAT, SOCK_REVNAT6, config, count},
    networks,
};

/// Verdict that lets the syscall go on.
const ALLOW: i32 = 1;

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

/// The destination port (wire order) of a connect/sendmsg.
#[inline(always)]
fn user_port(ctx: &SockAddrContext) -> u16 {
    unsafe { (*ctx.sock_addr).user_port as u16 }
}

/// The config and protocol of a connect/sendmsg that may go to a published
/// port: TCP or UDP, from the host netns. None leaves it alone. Until the
/// host netns is known, `v4` (the IPv4 address asked for) may be netpath's
/// probe.
#[inline(always)]
fn host_request(ctx: &SockAddrContext, v4: Option<u32>) -> Option<(&'static Config, u8)> {
    let cfg = config()?;
    if cfg.netns_cookie == 0 {
        if let Some(ip) = v4 {
            learn_host_netns(ctx, ip, user_port(ctx));
        }
        return None;
    }
    if !in_host_netns(ctx, cfg.netns_cookie) {
        return None;
    }
    match unsafe { (*ctx.sock_addr).protocol } {
        p if p == u32::from(IPPROTO_TCP) => Some((cfg, IPPROTO_TCP)),
        p if p == u32::from(IPPROTO_UDP) => Some((cfg, IPPROTO_UDP)),
        _ => None,
    }
}

/// Where `dst` `port` (wire order) over `proto` is published: a mapping
/// bound to `dst`, else one on every host address if `dst` is the host's.
#[inline(always)]
fn published<F: Family>(
    cfg: &Config,
    dst: F::Addr,
    port: u16,
    proto: u8,
) -> Option<PortTarget<F::Addr>> {
    let key = |host_ip| PortKey {
        host_ip,
        host_port: port,
        proto,
        _pad: 0,
    };
    if let Some(target) = unsafe { F::ports().get(key(dst)) } {
        return Some(*target);
    }
    // `::` is no address of the host (`host_ip6` is `::` when there is none).
    let host = (dst == F::Addr::host_of(cfg) && dst != F::Addr::UNSPECIFIED)
        || F::is_loopback(dst)
        || networks::is_gateway::<F>(dst);
    if !host {
        return None;
    }
    unsafe { F::ports().get(key(F::Addr::UNSPECIFIED)) }.copied()
}

/// How the hooks of one socket family spell an IPv4 address. The verifier
/// refuses `user_ip4` in IPv6 hooks and `user_ip6` in IPv4 ones, so each
/// hook is built for one family (a type, not a run-time branch).
trait SockFamily {
    /// Puts IPv4 address `ip`, spelled as `flags` (`SockRevNatValue::flags`)
    /// says, into `sa`.
    fn write(sa: *mut bpf_sock_addr, ip: u32, flags: u16);
}

struct Sock4;

impl SockFamily for Sock4 {
    #[inline(always)]
    fn write(sa: *mut bpf_sock_addr, ip: u32, _flags: u16) {
        unsafe { (*sa).user_ip4 = ip };
    }
}

/// `user_ip6` word 2 of a v4-mapped address (`::ffff:0:0/96`).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
/// `::1` as `Ip6`.
const IPV6_LOOPBACK: Ip6 = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// `user_ip6`, word by word, volatile: 5.10 takes 4-byte accesses to it
/// (8-byte ones only aligned), and LLVM must not merge them.
#[inline(always)]
fn read_ip6(sa: *const bpf_sock_addr) -> Ip6 {
    let word = |i: usize| unsafe { read_volatile(addr_of!((*sa).user_ip6[i])) };
    [word(0), word(1), word(2), word(3)]
}

/// Writes `user_ip6` as `read_ip6` reads it.
#[inline(always)]
fn write_ip6(sa: *mut bpf_sock_addr, ip: Ip6) {
    for (i, word) in ip.into_iter().enumerate() {
        unsafe { write_volatile(addr_of_mut!((*sa).user_ip6[i]), word) };
    }
}

/// The IPv4 address in a v4-mapped `ip`.
#[inline(always)]
fn v4_mapped(ip: Ip6) -> Option<u32> {
    (ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD).then_some(ip[3])
}

/// The IPv4 address an IPv6 socket's destination stands for (v4-mapped, or
/// `[::1]` as 127.0.0.1) and how it was spelled (`SockRevNatValue::flags`).
#[inline(always)]
fn as_ipv4(ip: Ip6) -> Option<(u32, u16)> {
    if ip == IPV6_LOOPBACK {
        return Some((LOOPBACK_PROBE_IP, SOCK_ORIG_IPV6_LOOPBACK));
    }
    v4_mapped(ip).map(|v4| (v4, 0))
}

struct Sock6;

impl SockFamily for Sock6 {
    #[inline(always)]
    fn write(sa: *mut bpf_sock_addr, ip: u32, flags: u16) {
        let ip6 = if flags & SOCK_ORIG_IPV6_LOOPBACK != 0 {
            IPV6_LOOPBACK
        } else {
            [0, 0, V4_MAPPED_WORD, ip]
        };
        write_ip6(sa, ip6);
    }
}

/// Rewrites the destination of an IPv4 connect/sendmsg when it is a
/// published port.
#[inline(always)]
fn to_container4(ctx: &SockAddrContext) -> i32 {
    let ip = unsafe { (*ctx.sock_addr).user_ip4 };
    let Some((cfg, proto)) = host_request(ctx, Some(ip)) else {
        return ALLOW;
    };
    to_ipv4_container::<Sock4>(ctx, cfg, ip, 0, proto)
}

/// Rewrites a host request for IPv4 address `ip` (spelled as `flags` says)
/// to the IPv4 container it is published to, if any.
#[inline(always)]
fn to_ipv4_container<S: SockFamily>(
    ctx: &SockAddrContext,
    cfg: &Config,
    ip: u32,
    flags: u16,
    proto: u8,
) -> i32 {
    let port = user_port(ctx);
    let Some(target) = published::<V4>(cfg, ip, port, proto) else {
        return ALLOW;
    };
    let rev_key = SockRevNatKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
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
    let sa = ctx.sock_addr;
    S::write(sa, target.container_ip, 0);
    unsafe { (*sa).user_port = u32::from(target.container_port) };
    count(stat::SOCK_REWRITE);
    ALLOW
}

/// The `SOCK_REVNAT6` key of this socket and a container's address. Its
/// padding comes from a zeroed whole key: set alone (`_pad: [0; 3]`), LLVM
/// makes it a call to `memset`.
#[inline(always)]
fn rev_key6(ctx: &SockAddrContext, container_ip: Ip6, container_port: u16) -> SockRevNatKey6 {
    SockRevNatKey6 {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        container_ip,
        container_port,
        ..Default::default()
    }
}

/// Whether an IPv6 hook may rewrite to an IPv4 container's v4-mapped address
/// (`connect6`; not `sendmsg6`, see the module doc).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ToIpv4 {
    Allowed,
    Refused,
}

/// Rewrites the destination of an IPv6 connect/sendmsg when it is a
/// published port: to the container's IPv6 address, else (`to_ipv4`) to its
/// IPv4 one.
#[inline(always)]
fn to_container6(ctx: &SockAddrContext, to_ipv4: ToIpv4) -> i32 {
    let sa = ctx.sock_addr;
    let dst = read_ip6(sa);
    let v4 = as_ipv4(dst);
    let Some((cfg, proto)) = host_request(ctx, v4.map(|(ip, _)| ip)) else {
        return ALLOW;
    };
    let port = user_port(ctx);
    if let Some(target) = cfg
        .ipv6()
        .then(|| published::<V6>(cfg, dst, port, proto))
        .flatten()
    {
        let rev_key = rev_key6(ctx, target.container_ip, target.container_port);
        let rev = SockRevNatValue6 {
            orig_ip: dst,
            orig_port: port,
            _pad: 0,
        };
        let _ = SOCK_REVNAT6.insert(rev_key, rev, 0);
        write_ip6(sa, target.container_ip);
        unsafe { (*sa).user_port = u32::from(target.container_port) };
        count(stat::SOCK_REWRITE);
        return ALLOW;
    }
    match v4 {
        Some((ip, flags)) if to_ipv4 == ToIpv4::Allowed => {
            to_ipv4_container::<Sock6>(ctx, cfg, ip, flags, proto)
        }
        _ => ALLOW,
    }
}

/// Rewrites a container address back to the published one the socket used
/// (recvmsg, getpeername).
#[inline(always)]
fn from_container4(ctx: &SockAddrContext) -> i32 {
    if host_config(ctx).is_some() {
        let container_ip = unsafe { (*ctx.sock_addr).user_ip4 };
        from_ipv4_container::<Sock4>(ctx, container_ip);
    }
    ALLOW
}

/// The config, for a socket of the host netns.
#[inline(always)]
fn host_config(ctx: &SockAddrContext) -> Option<&'static Config> {
    config().filter(|cfg| in_host_netns(ctx, cfg.netns_cookie))
}

/// Rewrites IPv4 container address `container_ip` back to what the socket
/// asked for.
#[inline(always)]
fn from_ipv4_container<S: SockFamily>(ctx: &SockAddrContext, container_ip: u32) {
    let sa = ctx.sock_addr;
    let key = SockRevNatKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        container_ip,
        container_port: user_port(ctx),
        _pad: 0,
    };
    if let Some(orig) = unsafe { SOCK_REVNAT.get(key) } {
        S::write(sa, orig.orig_ip, orig.flags);
        unsafe { (*sa).user_port = u32::from(orig.orig_port) };
    }
}

/// `from_container` for an IPv6 socket: a v4-mapped peer through
/// `SOCK_REVNAT`, an IPv6 one through `SOCK_REVNAT6`.
#[inline(always)]
fn from_container6(ctx: &SockAddrContext) -> i32 {
    let Some(cfg) = host_config(ctx) else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    let peer = read_ip6(sa);
    match v4_mapped(peer) {
        Some(container_ip) => from_ipv4_container::<Sock6>(ctx, container_ip),
        None if cfg.ipv6() => {
            let key = rev_key6(ctx, peer, user_port(ctx));
            if let Some(orig) = unsafe { SOCK_REVNAT6.get(key) } {
                write_ip6(sa, orig.orig_ip);
                unsafe { (*sa).user_port = u32::from(orig.orig_port) };
            }
        }
        None => {}
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    to_container4(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_container4(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    from_container4(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    from_container4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    to_container6(&ctx, ToIpv4::Allowed)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    to_container6(&ctx, ToIpv4::Refused)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    from_container6(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    from_container6(&ctx)
}
