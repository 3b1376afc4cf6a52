//! Crafting and checking raw Ethernet/IPv4 and Ethernet/IPv6 frames for
//! BPF_PROG_TEST_RUN tests. One [`Frame`] and one [`Parsed`] for both
//! families, generic over the address type ([`Ip`]); the family follows from
//! the addresses a frame is made with.
use std::fmt::Debug;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_HLEN: usize = 14;

/// One's-complement sum of 16-bit words, folded.
pub fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

pub fn sum_words(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    sum
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !csum_fold(sum_words(data))
}

/// The sum of a pseudo-header: the addresses, the protocol and the L4
/// length. IPv4's (RFC 793) and IPv6's (RFC 8200, 8.1) differ in their
/// layout but not in their sum, with 16-bit lengths.
fn pseudo_sum<A: Ip>(src: A, dst: A, proto: u8, len: usize) -> u32 {
    sum_words(&src.bytes()) + sum_words(&dst.bytes()) + u32::from(proto) + len as u32
}

/// L4 checksum with the pseudo-header of `A`'s family.
pub fn l4_checksum<A: Ip>(src: A, dst: A, proto: u8, segment: &[u8]) -> u16 {
    !csum_fold(pseudo_sum(src, dst, proto, segment.len()) + sum_words(segment))
}

/// An IP address, and with it what a frame of its family looks like.
pub trait Ip: Copy + Debug + PartialEq {
    const ETHERTYPE: u16;
    /// ICMP's protocol number: 1, or 58 (ICMPv6).
    const ICMP: u8;
    const ECHO_REQUEST: u8;
    const ECHO_REPLY: u8;
    /// Whether the ICMP checksum covers a pseudo-header (ICMPv6).
    const ICMP_PSEUDO_HEADER: bool;
    /// Whether a UDP checksum of 0 means "none" (IPv4); over IPv6 it is
    /// invalid.
    const UDP_CHECKSUM_OPTIONAL: bool;
    /// Offsets of the addresses and the TTL (hop limit) in the header.
    const SRC_OFF: usize;
    const DST_OFF: usize;
    const TTL_OFF: usize;
    fn bytes(self) -> Vec<u8>;
    fn from_bytes(bytes: &[u8]) -> Self;
    /// The IP header (with options or extension headers) of `frame`, whose
    /// L4 segment is `l4_len` bytes long.
    fn header(frame: &Frame<Self>, l4_len: usize) -> Vec<u8>;
    /// Of the IP packet `ip`: the length of its headers up to L4, its L4
    /// protocol, and where it ends (a quoted packet may be cut short).
    fn locate_l4(ip: &[u8]) -> (usize, u8, usize);
    /// Whether the IP header's own checksum verifies (IPv6 has none).
    fn header_checksum_ok(header: &[u8]) -> bool;
}

impl Ip for Ipv4Addr {
    const ETHERTYPE: u16 = 0x0800;
    const ICMP: u8 = 1;
    const ECHO_REQUEST: u8 = 8;
    const ECHO_REPLY: u8 = 0;
    const ICMP_PSEUDO_HEADER: bool = false;
    const UDP_CHECKSUM_OPTIONAL: bool = true;
    const SRC_OFF: usize = 12;
    const DST_OFF: usize = 16;
    const TTL_OFF: usize = 8;

    fn bytes(self) -> Vec<u8> {
        self.octets().to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[..4]).expect("4 bytes"))
    }

    fn header(frame: &Frame<Self>, l4_len: usize) -> Vec<u8> {
        let ihl = 20 + frame.options.len();
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        let frag = (u16::from(frame.frag.0) << 13) | frame.frag.1;
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = frame.ttl;
        ip[9] = frame.proto();
        ip[12..16].copy_from_slice(&frame.src.octets());
        ip[16..20].copy_from_slice(&frame.dst.octets());
        ip.extend_from_slice(&frame.options);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip
    }

    fn locate_l4(ip: &[u8]) -> (usize, u8, usize) {
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let end = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        (ihl, ip[9], end)
    }

    fn header_checksum_ok(header: &[u8]) -> bool {
        csum_fold(sum_words(header)) == 0xffff
    }
}

/// IPv6 extension headers: hop-by-hop options, routing, destination
/// options (length in 8-byte units after the first 8), and the fragment
/// header (8 bytes).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;

/// Hop-by-hop options as MLD sends them: router alert (RFC 2711), then
/// two bytes of padding (PadN) to fill the header's 8 bytes.
pub const HOP_BY_HOP_ROUTER_ALERT: [u8; 6] = [5, 2, 0, 0, 1, 0];

impl Ip for Ipv6Addr {
    const ETHERTYPE: u16 = 0x86dd;
    const ICMP: u8 = 58;
    const ECHO_REQUEST: u8 = 128;
    const ECHO_REPLY: u8 = 129;
    const ICMP_PSEUDO_HEADER: bool = true;
    const UDP_CHECKSUM_OPTIONAL: bool = false;
    const SRC_OFF: usize = 8;
    const DST_OFF: usize = 24;
    const TTL_OFF: usize = 7;

    fn bytes(self) -> Vec<u8> {
        self.octets().to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..16]).expect("16 bytes"))
    }

    /// `options` become a hop-by-hop header, `frag` a fragment header
    /// (identification 0x1234, as IPv4's), in that order (RFC 8200, 4.1).
    fn header(frame: &Frame<Self>, l4_len: usize) -> Vec<u8> {
        let mut next = frame.proto();
        let mut fragment = Vec::new();
        if frame.frag != (false, 0) {
            let offset = (frame.frag.1 << 3) | u16::from(frame.frag.0);
            fragment = vec![next, 0];
            fragment.extend_from_slice(&offset.to_be_bytes());
            fragment.extend_from_slice(&0x1234u32.to_be_bytes());
            next = IPV6_FRAGMENT;
        }
        let mut hop_by_hop = Vec::new();
        if !frame.options.is_empty() {
            let len = frame.options.len() + 2;
            assert_eq!(len % 8, 0, "hop-by-hop options fill 8-byte units");
            hop_by_hop = vec![next, (len / 8 - 1) as u8];
            hop_by_hop.extend_from_slice(&frame.options);
            next = IPV6_HOP_BY_HOP;
        }
        let payload_len = hop_by_hop.len() + fragment.len() + l4_len;
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(payload_len as u16).to_be_bytes());
        ip.extend_from_slice(&[next, frame.ttl]);
        ip.extend_from_slice(&frame.src.octets());
        ip.extend_from_slice(&frame.dst.octets());
        ip.extend_from_slice(&hop_by_hop);
        ip.extend_from_slice(&fragment);
        ip
    }

    fn locate_l4(ip: &[u8]) -> (usize, u8, usize) {
        let end = (40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]))).min(ip.len());
        let (mut len, mut next) = (40, ip[6]);
        loop {
            let ext_len = match next {
                IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS => {
                    (usize::from(ip[len + 1]) + 1) * 8
                }
                IPV6_FRAGMENT => 8,
                _ => return (len, next, end),
            };
            next = ip[len];
            len += ext_len;
        }
    }

    fn header_checksum_ok(_header: &[u8]) -> bool {
        true
    }
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    /// `zero_csum`: send with checksum 0 ("no checksum").
    Udp {
        sport: u16,
        dport: u16,
        zero_csum: bool,
    },
    IcmpEcho {
        request: bool,
        id: u16,
        seq: u16,
    },
    /// An ICMP error (type, code) quoting `quoted` (an IP packet, truncated by
    /// the caller as a router would), its MTU field 1500.
    IcmpError {
        icmp_type: u8,
        code: u8,
        quoted: Vec<u8>,
    },
    /// Any ICMP message: type, code, the four bytes after the checksum and
    /// what follows them (see the constructors below).
    Icmp {
        icmp_type: u8,
        code: u8,
        rest: [u8; 4],
        body: Vec<u8>,
    },
}

impl L4 {
    /// ICMPv6 Packet Too Big (RFC 4443, 3.2) with `mtu`, quoting `quoted`.
    pub fn packet_too_big(mtu: u32, quoted: Vec<u8>) -> Self {
        Self::Icmp {
            icmp_type: 2,
            code: 0,
            rest: mtu.to_be_bytes(),
            body: quoted,
        }
    }

    /// ICMPv6 router advertisement (RFC 4861, 4.2): hop limit 64, router
    /// lifetime 1800 s, no options.
    pub fn router_advertisement() -> Self {
        Self::Icmp {
            icmp_type: 134,
            code: 0,
            rest: [64, 0, 0x07, 0x08],
            body: vec![0; 8],
        }
    }

    /// ICMPv6 redirect (RFC 4861, 4.5): `dst` is better reached via
    /// `target`.
    pub fn redirect(target: Ipv6Addr, dst: Ipv6Addr) -> Self {
        let mut body = target.octets().to_vec();
        body.extend_from_slice(&dst.octets());
        Self::Icmp {
            icmp_type: 137,
            code: 0,
            rest: [0; 4],
            body,
        }
    }

    /// ICMPv6 neighbour solicitation (RFC 4861, 4.3) for `target`, with
    /// the sender's link-layer address option when it has an address
    /// (duplicate address detection, from ::, has none).
    pub fn neighbour_solicitation(target: Ipv6Addr, mac: Option<[u8; 6]>) -> Self {
        let mut body = target.octets().to_vec();
        if let Some(mac) = mac {
            body.extend_from_slice(&[1, 1]);
            body.extend_from_slice(&mac);
        }
        Self::Icmp {
            icmp_type: 135,
            code: 0,
            rest: [0; 4],
            body,
        }
    }

    /// ICMPv6 neighbour advertisement (RFC 4861, 4.4) for `target`, with
    /// the override flag (the receiver replaces what it knew) and the
    /// target link-layer address option `mac`.
    pub fn neighbour_advertisement(target: Ipv6Addr, mac: [u8; 6]) -> Self {
        let mut body = target.octets().to_vec();
        body.extend_from_slice(&[2, 1]);
        body.extend_from_slice(&mac);
        Self::Icmp {
            icmp_type: 136,
            code: 0,
            rest: [0x20, 0, 0, 0],
            body,
        }
    }
}

/// An Ethernet frame carrying IPv4 (`Frame`, `A` = `Ipv4Addr`) or IPv6
/// (`Frame<Ipv6Addr>`).
#[derive(Clone, Debug)]
pub struct Frame<A: Ip = Ipv4Addr> {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: A,
    pub dst: A,
    /// TTL, or hop limit.
    pub ttl: u8,
    /// IPv4 options (a multiple of 4 bytes), or IPv6 hop-by-hop options
    /// (6 bytes more than a multiple of 8).
    pub options: Vec<u8>,
    /// (more fragments, offset in 8-byte units); IPv6: a fragment header
    /// unless (false, 0).
    pub frag: (bool, u16),
    pub l4: L4,
    pub payload: Vec<u8>,
    /// TCP sequence and acknowledgement numbers.
    pub seq: u32,
    pub ack: u32,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

impl<A: Ip> Frame<A> {
    pub fn new(src: A, dst: A, l4: L4) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0xaa],
            src_mac: [0x02, 0, 0, 0, 0, 0xbb],
            src,
            dst,
            ttl: 64,
            options: Vec::new(),
            frag: (false, 0),
            l4,
            payload: b"netpath".to_vec(),
            seq: 1,
            ack: 0,
        }
    }

    /// Sets the TCP sequence and acknowledgement numbers.
    pub fn seq(mut self, seq: u32, ack: u32) -> Self {
        self.seq = seq;
        self.ack = ack;
        self
    }

    /// The sequence space a TCP segment of this frame takes: its payload,
    /// plus one for SYN and one for FIN.
    pub fn seq_len(&self) -> u32 {
        let L4::Tcp { flags, .. } = self.l4 else {
            return 0;
        };
        self.payload.len() as u32
            + u32::from(flags & TCP_SYN != 0)
            + u32::from(flags & TCP_FIN != 0)
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// The L4 segment, checksum valid.
    fn l4_bytes(&self) -> Vec<u8> {
        let mut l4 = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..8].copy_from_slice(&self.seq.to_be_bytes());
                h[8..12].copy_from_slice(&self.ack.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = *flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h.extend_from_slice(&self.payload);
                h
            }
            L4::Udp { sport, dport, .. } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend_from_slice(&self.payload);
                h
            }
            L4::IcmpEcho { request, id, seq } => {
                let icmp_type = if *request {
                    A::ECHO_REQUEST
                } else {
                    A::ECHO_REPLY
                };
                let mut h = vec![icmp_type, 0, 0, 0];
                h.extend_from_slice(&id.to_be_bytes());
                h.extend_from_slice(&seq.to_be_bytes());
                h.extend_from_slice(&self.payload);
                h
            }
            L4::IcmpError {
                icmp_type,
                code,
                quoted,
            } => {
                let mut h = vec![*icmp_type, *code, 0, 0, 0, 0, 0x05, 0xdc];
                h.extend_from_slice(quoted);
                h
            }
            L4::Icmp {
                icmp_type,
                code,
                rest,
                body,
            } => {
                let mut h = vec![*icmp_type, *code, 0, 0];
                h.extend_from_slice(rest);
                h.extend_from_slice(body);
                h
            }
        };
        let proto = self.proto();
        let (csum_off, pseudo_header) = match &self.l4 {
            L4::Tcp { .. } => (16, true),
            L4::Udp {
                zero_csum: true, ..
            } => return l4,
            L4::Udp { .. } => (6, true),
            L4::IcmpEcho { .. } | L4::IcmpError { .. } | L4::Icmp { .. } => {
                (2, A::ICMP_PSEUDO_HEADER)
            }
        };
        let c = if pseudo_header {
            l4_checksum(self.src, self.dst, proto, &l4)
        } else {
            checksum(&l4)
        };
        l4[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
        l4
    }

    /// The IP packet (no Ethernet header), checksums valid.
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let mut ip = A::header(self, l4.len());
        ip.extend_from_slice(&l4);
        ip
    }

    /// The L4 protocol number.
    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::IcmpEcho { .. } | L4::IcmpError { .. } | L4::Icmp { .. } => A::ICMP,
        }
    }

    /// The whole Ethernet frame.
    pub fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&A::ETHERTYPE.to_be_bytes());
        f.extend_from_slice(&self.ip_bytes());
        f
    }
}

/// A broadcast ARP request: who has `target_ip`, tell `sender_ip`.
pub fn arp_request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    // Ethernet, IPv4, address lengths 6 and 4, request.
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip.octets());
    f
}

/// A parsed view of an output frame, for assertions: `Parsed` for IPv4,
/// `Parsed<Ipv6Addr>` for IPv6.
#[derive(Debug)]
pub struct Parsed<'a, A: Ip = Ipv4Addr> {
    pub frame: &'a [u8],
    /// The IP headers' length up to L4 (IPv4 options, IPv6 extension
    /// headers included).
    pub ihl: usize,
    proto: u8,
    end: usize,
    _family: PhantomData<A>,
}

impl<'a, A: Ip> Parsed<'a, A> {
    pub fn new(frame: &'a [u8]) -> Self {
        let (ihl, proto, end) = A::locate_l4(&frame[ETH_HLEN..]);
        Self {
            frame,
            ihl,
            proto,
            end,
            _family: PhantomData,
        }
    }
    pub fn dst_mac(&self) -> [u8; 6] {
        self.frame[0..6].try_into().expect("6 bytes")
    }
    pub fn src_mac(&self) -> [u8; 6] {
        self.frame[6..12].try_into().expect("6 bytes")
    }
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.frame[12], self.frame[13]])
    }
    fn ip(&self) -> &[u8] {
        &self.frame[ETH_HLEN..]
    }
    pub fn src(&self) -> A {
        A::from_bytes(&self.ip()[A::SRC_OFF..])
    }
    pub fn dst(&self) -> A {
        A::from_bytes(&self.ip()[A::DST_OFF..])
    }
    /// TTL, or hop limit.
    pub fn ttl(&self) -> u8 {
        self.ip()[A::TTL_OFF]
    }
    /// The L4 protocol (after any IPv6 extension headers).
    pub fn proto(&self) -> u8 {
        self.proto
    }
    pub fn l4(&self) -> &[u8] {
        // A quoted packet is cut short: stop at what is there.
        &self.ip()[self.ihl..self.end]
    }
    pub fn sport(&self) -> u16 {
        u16::from_be_bytes([self.l4()[0], self.l4()[1]])
    }
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes([self.l4()[2], self.l4()[3]])
    }
    /// ICMP type.
    pub fn icmp_type(&self) -> u8 {
        self.l4()[0]
    }
    pub fn echo_id(&self) -> u16 {
        u16::from_be_bytes([self.l4()[4], self.l4()[5]])
    }
    /// The IPv4 header checksum verifies (IPv6 has none: always true).
    pub fn ip_header_ok(&self) -> bool {
        A::header_checksum_ok(&self.ip()[..self.ihl])
    }
    /// TCP/UDP/ICMP checksum (with the family's pseudo-header where it
    /// has one) verifies; a UDP checksum of 0 counts as valid ("none")
    /// over IPv4 only.
    pub fn l4_csum_ok(&self) -> bool {
        let proto = self.proto;
        let seg = self.l4();
        let verifies = |pseudo| csum_fold(pseudo + sum_words(seg)) == 0xffff;
        match proto {
            17 if seg[6..8] == [0, 0] => A::UDP_CHECKSUM_OPTIONAL,
            6 | 17 => verifies(pseudo_sum(self.src(), self.dst(), proto, seg.len())),
            p if p == A::ICMP && A::ICMP_PSEUDO_HEADER => {
                verifies(pseudo_sum(self.src(), self.dst(), proto, seg.len()))
            }
            p if p == A::ICMP => verifies(0),
            _ => false,
        }
    }
    pub fn udp_csum(&self) -> u16 {
        u16::from_be_bytes([self.l4()[6], self.l4()[7]])
    }
    /// The IP packet an ICMP error quotes.
    pub fn quoted(&self) -> Parsed<'a, A> {
        // Re-frame the quoted packet behind a fake Ethernet header offset.
        let start = ETH_HLEN + self.ihl + 8 - ETH_HLEN;
        Parsed::new(&self.frame[start..])
    }
}
