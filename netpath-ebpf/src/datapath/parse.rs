//! Packet parsing: Ethernet, IPv4 or IPv6, and the L4 fields the datapath
//! needs, once for both families (`parse_l4`). Anything we can't translate
//! comes back as `Parsed::Other` (with its addresses, which every IP packet
//! is checked on), `Parsed::Arp`, `Parsed::OtherL2` or `Parsed::Malformed`
//! — never a half-understood packet.
use super::{ctx::Packet as Ctx, family::Family};
use netpath_common::{Addr, FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ip6};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_PARAM_PROBLEM: u8 = 4;
/// Neighbour discovery messages only a router sends: a container sending
/// one tries to become the others' router (RA guard, RFC 6105).
pub const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
pub const ICMPV6_REDIRECT: u8 = 137;
/// Neighbour discovery messages a host sends.
pub const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
pub const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;
pub const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// IPv6's fragment header; the other extension headers are below.
const IPV6_FRAGMENT: u8 = 44;
/// The extension headers a router message may hide behind (length in
/// 8-byte units after the first 8).
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_DEST_OPTIONS: u8 = 60;
const IPV6_EXTENSION_HEADERS: [u8; 7] = [0, 43, 50, 51, 60, 135, 139];
/// The fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;

const IP_MORE_FRAGMENTS: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

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
    /// A later fragment of a TCP, UDP or ICMP datagram: no L4 header. Its
    /// ports are 0 until `fragments` fills in those of the first fragment.
    Fragment,
}

#[derive(Clone, Copy)]
pub struct Packet<A: Addr = u32> {
    pub l3: usize,
    pub l4: usize,
    pub key: FlowKey<A>,
    pub l4_kind: L4,
    pub ttl: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// Offset of the quoted IPv4 header of an ICMP error.
    pub inner_l3: usize,
    /// Bytes on the wire, for the flow counters.
    pub len: u32,
    /// TCP only (host order): sequence and acknowledgement numbers, the raw
    /// (unscaled) window, and the sequence space the segment takes (payload,
    /// plus one for SYN and for FIN). For window tracking.
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub tcp_window: u16,
    pub tcp_seq_len: u32,
    /// The first fragment of a datagram (offset 0, more to come): it
    /// carries the L4 header, and `fragments` records its ports.
    pub first_fragment: bool,
    /// The IPv4 identification (wire order): with the addresses and the
    /// protocol, what ties a datagram's fragments together.
    pub ip_id: u16,
    /// A fragment of another protocol, or any IPv6 fragment (`Parsed::Other`
    /// only).
    pub fragment: bool,
    /// IPv6 with an extension header before its L4 header (`Parsed::Other`
    /// only): never translated.
    pub extension: bool,
}

impl<A: Addr> Packet<A> {
    /// A packet whose IP header (at `l3`, its L4 header at `l4`) is read:
    /// addresses, protocol and TTL; the L4 fields still to parse.
    #[inline(always)]
    #[allow(clippy::too_many_arguments, reason = "the IP header's fields")]
    fn of_ip<C: Ctx>(
        ctx: &C,
        l3: usize,
        l4: usize,
        saddr: A,
        daddr: A,
        proto: u8,
        ttl: u8,
    ) -> Self {
        Self {
            l3,
            l4,
            key: FlowKey {
                saddr,
                daddr,
                proto,
                ..FlowKey::default()
            },
            l4_kind: L4::Tcp,
            ttl,
            tcp_flags: 0,
            icmp_type: 0,
            inner_l3: 0,
            len: ctx.len(),
            tcp_seq: 0,
            tcp_ack: 0,
            tcp_window: 0,
            tcp_seq_len: 0,
            first_fragment: false,
            ip_id: 0,
            fragment: false,
            extension: false,
        }
    }
}

pub enum Parsed<A: Addr = u32> {
    /// TCP, UDP or an ICMP message we translate.
    Ours(Packet<A>),
    /// IP we don't translate: another protocol (whole or fragmented), an
    /// ICMP type we leave alone, IPv6 behind an extension header. Only the
    /// addresses, protocol, TTL, `icmp_type` and `fragment`/`extension` are
    /// set. A `Packet` like `Ours`'s: variants whose payloads differ in
    /// layout compile to registers the verifier finds uninitialised on one
    /// path.
    Other(Packet<A>),
    /// ARP.
    Arp,
    /// Neither IPv4 nor ARP (IPv6, a VLAN tag, anything else). No payload:
    /// an enum payload some variants leave unset compiles to a register the
    /// verifier rejects as uninitialised.
    OtherL2,
    Malformed,
}

/// Which IPv4 header is parsed: a packet's own, or the one an ICMP error
/// quotes (cut short by design, and never itself an error we translate).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Header {
    Outer,
    Quoted,
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
pub fn parse_ipv4<C: Ctx>(ctx: &C, l3: usize, header: Header) -> Parsed<u32> {
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
    if tot_len < ihl || (header == Header::Outer && (ctx.len() as usize) < l3 + tot_len) {
        return Parsed::Malformed;
    }
    let mut pkt = Packet::of_ip(ctx, l3, l3 + ihl, ip.saddr, ip.daddr, ip.proto, ip.ttl);
    pkt.ip_id = u16::from_ne_bytes(ip.id);
    let frags = u16::from_be_bytes(ip.frags);
    if frags & (IP_OFFSET | IP_MORE_FRAGMENTS) != 0 {
        // A quoted packet is never a fragment we follow.
        if header == Header::Quoted || !matches!(ip.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP)
        {
            pkt.fragment = true;
            return Parsed::Other(pkt);
        }
        if frags & IP_OFFSET != 0 {
            pkt.l4_kind = L4::Fragment;
            return Parsed::Ours(pkt);
        }
        pkt.first_fragment = true;
    }
    parse_l4::<super::family::V4, C>(ctx, pkt, tot_len - ihl, header)
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Fixed {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    saddr: Ip6,
    daddr: Ip6,
}

/// Parses an IPv6 header at `l3` and the L4 ports after it. Extension
/// headers (fragments among them) are not walked: such a packet is
/// `Other`, which the datapath lets only the host's stack have.
#[inline(always)]
pub fn parse_ipv6<C: Ctx>(ctx: &C, l3: usize, header: Header) -> Parsed<Ip6> {
    let Ok(ip) = ctx.load::<Ipv6Fixed>(l3) else {
        return Parsed::Malformed;
    };
    if ip.version_class_flow[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    if header == Header::Outer && (ctx.len() as usize) < l3 + IPV6_HLEN + payload_len {
        return Parsed::Malformed;
    }
    let mut pkt = Packet::of_ip(
        ctx,
        l3,
        l3 + IPV6_HLEN,
        ip.saddr,
        ip.daddr,
        ip.next_header,
        ip.hop_limit,
    );
    pkt.fragment = ip.next_header == IPV6_FRAGMENT;
    pkt.extension = IPV6_EXTENSION_HEADERS.contains(&ip.next_header);
    parse_l4::<super::family::V6, C>(ctx, pkt, payload_len, header)
}

/// The L4 header at `pkt.l4`, `l4_len` bytes long (with its payload), of a
/// packet whose IP header is parsed into `pkt`.
#[inline(always)]
fn parse_l4<F: Family, C: Ctx>(
    ctx: &C,
    mut pkt: Packet<F::Addr>,
    l4_len: usize,
    header: Header,
) -> Parsed<F::Addr> {
    let l4 = pkt.l4;
    match pkt.key.proto {
        IPPROTO_TCP => {
            // Ports, and the flags byte at offset 13.
            let Ok(ports) = ctx.load::<[u16; 2]>(l4) else {
                return Parsed::Malformed;
            };
            pkt.key.sport = ports[0];
            pkt.key.dport = ports[1];
            if header == Header::Outer {
                let Ok(tcp) = ctx.load::<TcpFixed>(l4) else {
                    return Parsed::Malformed;
                };
                let doff = ((tcp.doff_flags[0] >> 4) as usize) * 4;
                if doff < 20 || doff > l4_len {
                    return Parsed::Malformed;
                }
                let flags = tcp.doff_flags[1];
                pkt.tcp_flags = flags;
                pkt.tcp_seq = u32::from_be_bytes(tcp.seq);
                pkt.tcp_ack = u32::from_be_bytes(tcp.ack);
                pkt.tcp_window = u16::from_be_bytes(tcp.window);
                pkt.tcp_seq_len = (l4_len - doff) as u32
                    + u32::from(flags & TCP_SYN != 0)
                    + u32::from(flags & TCP_FIN != 0);
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
        proto if proto == F::ICMP => {
            let Ok(hdr) = ctx.load::<[u8; 8]>(l4) else {
                return Parsed::Malformed;
            };
            pkt.icmp_type = hdr[0];
            if hdr[0] == F::ECHO_REQUEST || hdr[0] == F::ECHO_REPLY {
                let id = u16::from_ne_bytes([hdr[4], hdr[5]]);
                pkt.key.sport = id;
                pkt.key.dport = id;
                pkt.l4_kind = L4::IcmpEcho;
            } else if header == Header::Outer && is_icmp_error(proto, hdr[0]) {
                pkt.l4_kind = L4::IcmpError;
                pkt.inner_l3 = l4 + 8;
            } else {
                return Parsed::Other(pkt);
            }
        }
        _ => return Parsed::Other(pkt),
    }
    Parsed::Ours(pkt)
}

/// The ICMP errors that quote a packet we may have translated.
#[inline(always)]
fn is_icmp_error(proto: u8, icmp_type: u8) -> bool {
    if proto == IPPROTO_ICMP {
        matches!(icmp_type, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED)
    } else {
        matches!(
            icmp_type,
            ICMPV6_DEST_UNREACH
                | ICMPV6_PACKET_TOO_BIG
                | ICMPV6_TIME_EXCEEDED
                | ICMPV6_PARAM_PROBLEM
        )
    }
}

/// The TCP header up to the window.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpFixed {
    ports: [u8; 4],
    seq: [u8; 4],
    ack: [u8; 4],
    doff_flags: [u8; 2],
    window: [u8; 2],
}

/// The frame's EtherType (host order), 0 if it has none.
#[inline(always)]
pub fn ethertype<C: Ctx>(ctx: &C) -> u16 {
    ctx.load::<u16>(12).map_or(0, u16::from_be)
}

/// Parses an Ethernet frame carrying `F`'s IP.
#[inline(always)]
pub fn parse<F: Family, C: Ctx>(ctx: &C) -> Parsed<F::Addr> {
    match ethertype(ctx) {
        // ARP is IPv4's; IPv6's neighbour discovery is ICMPv6.
        ETH_P_ARP if F::ETH_P == ETH_P_IP => Parsed::Arp,
        t if t == F::ETH_P => F::parse_l3(ctx, ETH_HLEN, Header::Outer),
        0 => Parsed::Malformed,
        _ => Parsed::OtherL2,
    }
}

/// Parses the packet an ICMP error quotes (only the first 8 L4 bytes need be
/// there, as RFC 792 promises). Errors about errors are not ours.
#[inline(always)]
pub fn parse_inner<F: Family, C: Ctx>(ctx: &C, inner_l3: usize) -> Parsed<F::Addr> {
    F::parse_l3(ctx, inner_l3, Header::Quoted)
}
