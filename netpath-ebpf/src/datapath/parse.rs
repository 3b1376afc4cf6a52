//! Packet parsing: Ethernet, IPv4 and the L4 fields the datapath needs.
//! Anything we can't vouch for comes back as `Parsed::NotOurs` (pass) or
//! `Parsed::Malformed` (drop, counted) — never a half-understood packet.
use super::ctx::Packet as Ctx;
use netpath_common::{FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What kind of L4 payload the flow key describes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    /// Echo request or reply: the identifier stands in for both ports.
    IcmpEcho,
    /// An ICMP error quoting one of our packets: its inner header sits at
    /// `Packet::inner_l3`.
    IcmpError,
}

#[derive(Clone, Copy)]
pub struct Packet {
    pub l3: usize,
    pub l4: usize,
    pub key: FlowKey,
    pub l4_kind: L4,
    pub ttl: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// Offset of the quoted IPv4 header of an ICMP error.
    pub inner_l3: usize,
    /// Bytes on the wire, for the flow counters.
    pub len: u32,
}

pub enum Parsed {
    Ours(Packet),
    NotOurs,
    Malformed,
    /// A fragment: its L4 header is elsewhere (or not all here).
    Fragment,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Fixed {
    vihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frags: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    saddr: u32,
    daddr: u32,
}

/// Parses an IPv4 header at `l3` and the L4 ports after it.
#[inline(always)]
fn parse_ipv4<C: Ctx>(ctx: &C, l3: usize, inner: bool) -> Parsed {
    let Ok(ip) = ctx.load::<Ipv4Fixed>(l3) else {
        return Parsed::Malformed;
    };
    if ip.vihl >> 4 != 4 {
        return Parsed::Malformed;
    }
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Parsed::Malformed;
    }
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    // A quoted packet is cut short by design; ours must be whole.
    if tot_len < ihl || (!inner && (ctx.len() as usize) < l3 + tot_len) {
        return Parsed::Malformed;
    }
    let frags = u16::from_be_bytes(ip.frags);
    // More-fragments set, or a non-zero offset.
    if frags & 0x3fff != 0 {
        return Parsed::Fragment;
    }
    let l4 = l3 + ihl;
    let mut pkt = Packet {
        l3,
        l4,
        key: FlowKey {
            saddr: ip.saddr,
            daddr: ip.daddr,
            proto: ip.proto,
            ..FlowKey::default()
        },
        l4_kind: L4::Tcp,
        ttl: ip.ttl,
        tcp_flags: 0,
        icmp_type: 0,
        inner_l3: 0,
        len: ctx.len(),
    };
    match ip.proto {
        IPPROTO_TCP => {
            // Ports, and the flags byte at offset 13.
            let Ok(ports) = ctx.load::<[u16; 2]>(l4) else {
                return Parsed::Malformed;
            };
            pkt.key.sport = ports[0];
            pkt.key.dport = ports[1];
            if !inner {
                // Data offset and flags as one 2-byte read: a 1-byte
                // bounds check compiles to a form the verifier rejects.
                let Ok([_, flags]) = ctx.load::<[u8; 2]>(l4 + 12) else {
                    return Parsed::Malformed;
                };
                pkt.tcp_flags = flags;
            }
        }
        IPPROTO_UDP => {
            let Ok(ports) = ctx.load::<[u16; 2]>(l4) else {
                return Parsed::Malformed;
            };
            pkt.key.sport = ports[0];
            pkt.key.dport = ports[1];
            pkt.l4_kind = L4::Udp;
        }
        IPPROTO_ICMP => {
            let Ok(hdr) = ctx.load::<[u8; 8]>(l4) else {
                return Parsed::Malformed;
            };
            pkt.icmp_type = hdr[0];
            match hdr[0] {
                ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => {
                    let id = u16::from_ne_bytes([hdr[4], hdr[5]]);
                    pkt.key.sport = id;
                    pkt.key.dport = id;
                    pkt.l4_kind = L4::IcmpEcho;
                }
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED if !inner => {
                    pkt.l4_kind = L4::IcmpError;
                    pkt.inner_l3 = l4 + 8;
                }
                _ => return Parsed::NotOurs,
            }
        }
        _ => return Parsed::NotOurs,
    }
    Parsed::Ours(pkt)
}

/// Parses an Ethernet frame carrying IPv4.
#[inline(always)]
pub fn parse<C: Ctx>(ctx: &C) -> Parsed {
    let Ok(proto) = ctx.load::<u16>(12) else {
        return Parsed::NotOurs;
    };
    if u16::from_be(proto) != ETH_P_IP {
        return Parsed::NotOurs;
    }
    parse_ipv4(ctx, ETH_HLEN, false)
}

/// Parses the packet an ICMP error quotes (only the first 8 L4 bytes need be
/// there, as RFC 792 promises). Errors about errors are not ours.
#[inline(always)]
pub fn parse_inner<C: Ctx>(ctx: &C, inner_l3: usize) -> Parsed {
    parse_ipv4(ctx, inner_l3, true)
}
