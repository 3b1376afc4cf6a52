//! Crafting and checking raw Ethernet/IPv4 frames for BPF_PROG_TEST_RUN tests.
use std::net::Ipv4Addr;

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

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    sum_words(&p)
}

/// L4 checksum with the IPv4 pseudo-header.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    !csum_fold(pseudo_sum(src, dst, proto, segment.len()) + sum_words(segment))
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
    /// An ICMP error (type, code) quoting `quoted` (an IPv4 packet, truncated by
    /// the caller as a router would).
    IcmpError {
        icmp_type: u8,
        code: u8,
        quoted: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// IPv4 options (a multiple of 4 bytes).
    pub options: Vec<u8>,
    /// (more fragments, offset in 8-byte units)
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

impl Frame {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
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

    /// The IPv4 packet (no Ethernet header), checksums valid.
    pub fn ip_bytes(&self) -> Vec<u8> {
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
                let mut h = vec![if *request { 8 } else { 0 }, 0, 0, 0];
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
        };
        let proto = self.proto();
        match &self.l4 {
            L4::Tcp { .. } => {
                let c = l4_checksum(self.src, self.dst, proto, &l4);
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
            L4::Udp { zero_csum, .. } => {
                if !zero_csum {
                    let c = l4_checksum(self.src, self.dst, proto, &l4);
                    l4[6..8].copy_from_slice(&c.to_be_bytes());
                }
            }
            L4::IcmpEcho { .. } | L4::IcmpError { .. } => {
                let c = checksum(&l4);
                l4[2..4].copy_from_slice(&c.to_be_bytes());
            }
        }
        let ihl = 20 + self.options.len();
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        let frag = (u16::from(self.frag.0) << 13) | self.frag.1;
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.options);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&l4);
        ip
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::IcmpEcho { .. } | L4::IcmpError { .. } => 1,
        }
    }

    /// The whole Ethernet frame.
    pub fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
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

/// A parsed view of an output frame, for assertions.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub frame: &'a [u8],
    pub ihl: usize,
}

impl<'a> Parsed<'a> {
    pub fn new(frame: &'a [u8]) -> Self {
        let ihl = ((frame[ETH_HLEN] & 0x0f) as usize) * 4;
        Self { frame, ihl }
    }
    pub fn dst_mac(&self) -> [u8; 6] {
        self.frame[0..6].try_into().expect("6 bytes")
    }
    pub fn src_mac(&self) -> [u8; 6] {
        self.frame[6..12].try_into().expect("6 bytes")
    }
    fn ip(&self) -> &[u8] {
        &self.frame[ETH_HLEN..]
    }
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::from(<[u8; 4]>::try_from(&self.ip()[12..16]).expect("4 bytes"))
    }
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(<[u8; 4]>::try_from(&self.ip()[16..20]).expect("4 bytes"))
    }
    pub fn ttl(&self) -> u8 {
        self.ip()[8]
    }
    pub fn l4(&self) -> &[u8] {
        // A quoted packet is cut short: stop at what is there.
        let tot = (u16::from_be_bytes([self.ip()[2], self.ip()[3]]) as usize).min(self.ip().len());
        &self.ip()[self.ihl..tot]
    }
    pub fn sport(&self) -> u16 {
        u16::from_be_bytes([self.l4()[0], self.l4()[1]])
    }
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes([self.l4()[2], self.l4()[3]])
    }
    pub fn echo_id(&self) -> u16 {
        u16::from_be_bytes([self.l4()[4], self.l4()[5]])
    }
    pub fn ip_header_ok(&self) -> bool {
        csum_fold(sum_words(&self.ip()[..self.ihl])) == 0xffff
    }
    /// TCP/UDP checksum (with pseudo-header) verifies; a UDP checksum of 0
    /// counts as valid ("none").
    pub fn l4_csum_ok(&self) -> bool {
        let proto = self.ip()[9];
        let seg = self.l4();
        match proto {
            17 if seg[6..8] == [0, 0] => true,
            6 | 17 => {
                csum_fold(pseudo_sum(self.src(), self.dst(), proto, seg.len()) + sum_words(seg))
                    == 0xffff
            }
            1 => csum_fold(sum_words(seg)) == 0xffff,
            _ => false,
        }
    }
    pub fn udp_csum(&self) -> u16 {
        u16::from_be_bytes([self.l4()[6], self.l4()[7]])
    }
    /// The IPv4 header an ICMP error quotes.
    pub fn quoted(&self) -> Parsed<'a> {
        // Re-frame the quoted packet behind a fake Ethernet header offset.
        let start = ETH_HLEN + self.ihl + 8 - ETH_HLEN;
        Parsed::new(&self.frame[start..])
    }
}
