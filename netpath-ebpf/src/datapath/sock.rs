//! cgroup sock_addr hooks: host processes reaching a published port (on the
//! host's address, the gateway or loopback) are sent to the container when they
//! connect or send, with no packet NAT (the seed's OUTPUT-chain DNAT). UDP
//! replies and getpeername are translated back so the application sees the
//! address it asked for. The hooks sit on a cgroup, which spans network
//! namespaces: they act only in this instance's host netns.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use netpath_common::{IPPROTO_TCP, IPPROTO_UDP, PortKey, SockRevNatKey, SockRevNatValue, stat};

use super::maps::{CONFIG, PORTS, SOCK_REVNAT, config, count};

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

/// Rewrites the destination of connect/sendmsg when it is a published port.
#[inline(always)]
fn to_container(ctx: &SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    let (ip, port, protocol) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol) };
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
            if !(ip == cfg.host_ip || ip == cfg.gateway_ip || loopback) {
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
        _pad: 0,
    };
    let _ = SOCK_REVNAT.insert(rev_key, rev, 0);
    unsafe {
        (*sa).user_ip4 = target.container_ip;
        (*sa).user_port = u32::from(target.container_port);
    }
    count(stat::SOCK_REWRITE);
    ALLOW
}

/// Rewrites a container address back to the published one the socket used.
#[inline(always)]
fn from_container(ctx: &SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    if !in_host_netns(ctx, cfg.netns_cookie) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    let key = SockRevNatKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        container_ip: unsafe { (*sa).user_ip4 },
        container_port: unsafe { (*sa).user_port as u16 },
        _pad: 0,
    };
    if let Some(orig) = unsafe { SOCK_REVNAT.get(key) } {
        unsafe {
            (*sa).user_ip4 = orig.orig_ip;
            (*sa).user_port = u32::from(orig.orig_port);
        }
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    to_container(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_container(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    from_container(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    from_container(&ctx)
}
