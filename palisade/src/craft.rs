//! Building frames byte by byte, for tests, benchmarks and the differential checks.
//!
//! Only what Palisade parses is modelled; checksums are computed so that frames crafted here
//! are also valid on a real interface.

use std::net::IpAddr;

use palisade_common::packet::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_FRAGMENT, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

/// An IPv6 extension header to put between the fixed header and layer 4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtHeader {
    /// Hop-by-hop (0), routing (43) or destination options (60), `len8` extra 8-byte units.
    Options { kind: u8, len8: u8 },
    /// Fragment header with this offset (in 8-byte units) and more-fragments flag.
    Fragment { offset: u16, more: bool },
}

/// Layer 4 of a crafted frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP (IPv4) or ICMPv6 (IPv6), by the frame's family.
    Icmp {
        icmp_type: u8,
        code: u8,
    },
    /// Another protocol number with raw bytes after the IP header.
    Raw {
        proto: u8,
    },
}

/// A frame to build.
#[derive(Debug, Clone)]
pub struct Frame {
    pub vlans: Vec<u16>,
    /// Use 802.1ad for the outer tag when there are two.
    pub qinq: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv4 options (padded to 4 bytes).
    pub ipv4_options: Vec<u8>,
    /// IPv4: (offset in 8-byte units, more fragments).
    pub ipv4_frag: Option<(u16, bool)>,
    pub ipv6_ext: Vec<ExtHeader>,
    pub ttl: u8,
    /// IPv4 type of service / IPv6 traffic class (DSCP and ECN).
    pub tos: u8,
    /// TCP sequence number (layer 4 `Tcp` only).
    pub tcp_seq: u32,
}

impl Frame {
    /// A frame from `src` to `dst` with the given layer 4 and no payload.
    #[must_use]
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        Self {
            vlans: Vec::new(),
            qinq: false,
            src,
            dst,
            l4,
            payload: Vec::new(),
            ipv4_options: Vec::new(),
            ipv4_frag: None,
            ipv6_ext: Vec::new(),
            ttl: 64,
            tos: 0,
            tcp_seq: 1,
        }
    }

    #[must_use]
    pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Self {
        Self::new(
            ip(src),
            ip(dst),
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    #[must_use]
    pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Self {
        Self::new(ip(src), ip(dst), L4::Udp { sport, dport })
    }

    #[must_use]
    pub fn icmp(src: &str, dst: &str, icmp_type: u8, code: u8) -> Self {
        Self::new(ip(src), ip(dst), L4::Icmp { icmp_type, code })
    }

    #[must_use]
    pub fn with_vlans(mut self, vlans: &[u16], qinq: bool) -> Self {
        self.vlans = vlans.to_vec();
        self.qinq = qinq;
        self
    }

    /// The TCP sequence number (1 unless set).
    #[must_use]
    pub fn with_tcp_seq(mut self, seq: u32) -> Self {
        self.tcp_seq = seq;
        self
    }

    #[must_use]
    pub fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// The frame's bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        let ethertype = if self.src.is_ipv4() {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        };
        for (i, vid) in self.vlans.iter().enumerate() {
            let tpid = if i == 0 && self.qinq && self.vlans.len() > 1 {
                ETH_P_8021AD
            } else {
                ETH_P_8021Q
            };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        let l4 = self.l4_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut opts = self.ipv4_options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let ihl = 20 + opts.len();
                let total = (ihl + l4.len()) as u16;
                let (off, more) = self.ipv4_frag.unwrap_or((0, false));
                let frag = off & 0x1fff | if more { 0x2000 } else { 0 };
                let mut h = vec![0x40 | (ihl / 4) as u8, self.tos];
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&[0x12, 0x34]);
                h.extend_from_slice(&frag.to_be_bytes());
                h.extend_from_slice(&[self.ttl, self.proto(), 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&opts);
                let sum = checksum(&h, 0);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                f.extend_from_slice(&h);
                f.extend_from_slice(&l4);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut ext = Vec::new();
                let mut next_kinds: Vec<u8> = self
                    .ipv6_ext
                    .iter()
                    .map(|e| match e {
                        ExtHeader::Options { kind, .. } => *kind,
                        ExtHeader::Fragment { .. } => IPPROTO_FRAGMENT,
                    })
                    .collect();
                next_kinds.push(self.proto());
                for (i, e) in self.ipv6_ext.iter().enumerate() {
                    let next = next_kinds[i + 1];
                    match e {
                        ExtHeader::Options { len8, .. } => {
                            let mut b = vec![next, *len8, 1, 4, 0, 0, 0, 0];
                            b.resize(8 + usize::from(*len8) * 8, 0);
                            ext.extend_from_slice(&b);
                        }
                        ExtHeader::Fragment { offset, more } => {
                            let field = offset << 3 | u16::from(*more);
                            ext.extend_from_slice(&[next, 0]);
                            ext.extend_from_slice(&field.to_be_bytes());
                            ext.extend_from_slice(&[0, 0, 0x56, 0x78]);
                        }
                    }
                }
                let payload_len = (ext.len() + l4.len()) as u16;
                let mut h = vec![0x60 | self.tos >> 4, self.tos << 4, 0, 0];
                h.extend_from_slice(&payload_len.to_be_bytes());
                h.push(next_kinds[0]);
                h.push(self.ttl);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                f.extend_from_slice(&h);
                f.extend_from_slice(&ext);
                f.extend_from_slice(&l4);
            }
            _ => panic!("crafted frame mixes address families"),
        }
        f
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            L4::Icmp { .. } if self.src.is_ipv4() => IPPROTO_ICMP,
            L4::Icmp { .. } => IPPROTO_ICMPV6,
            L4::Raw { proto } => proto,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut b = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut t = Vec::with_capacity(20);
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&self.tcp_seq.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
                t
            }
            L4::Udp { sport, dport } => {
                let mut u = Vec::with_capacity(8);
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u
            }
            L4::Icmp { icmp_type, code } => vec![icmp_type, code, 0, 0, 0, 0, 0, 0],
            L4::Raw { .. } => Vec::new(),
        };
        b.extend_from_slice(&self.payload);
        if let Some(off) = self.l4_checksum_offset() {
            let sum = checksum(&b, self.pseudo_header_sum(b.len()));
            let sum = if sum == 0 && matches!(self.l4, L4::Udp { .. }) {
                0xffff
            } else {
                sum
            };
            b[off..off + 2].copy_from_slice(&sum.to_be_bytes());
        }
        b
    }

    fn l4_checksum_offset(&self) -> Option<usize> {
        match self.l4 {
            L4::Tcp { .. } => Some(16),
            L4::Udp { .. } => Some(6),
            L4::Icmp { .. } => Some(2),
            L4::Raw { .. } => None,
        }
    }

    fn pseudo_header_sum(&self, len: usize) -> u32 {
        if matches!(self.l4, L4::Icmp { .. }) && self.src.is_ipv4() {
            return 0;
        }
        let mut sum = 0u32;
        let mut add = |bytes: &[u8]| {
            for c in bytes.chunks(2) {
                sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                add(&s.octets());
                add(&d.octets());
                add(&[0, self.proto()]);
                add(&(len as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                add(&s.octets());
                add(&d.octets());
                add(&(len as u32).to_be_bytes());
                add(&[0, 0, 0, self.proto()]);
            }
            _ => {}
        }
        sum
    }
}

/// Parses an address literal; panics on a bad literal (test input).
#[must_use]
pub fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|_| panic!("bad address literal {s}"))
}

/// The Internet checksum of `data`, starting from a partial sum.
#[must_use]
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Frame {
    /// The packet without its Ethernet and VLAN headers (starting at the IP header), as a
    /// local socket hands it to the cgroup hooks.
    #[must_use]
    pub fn build_ip(&self) -> Vec<u8> {
        let mut f = self.build();
        f.drain(..14 + 4 * self.vlans.len());
        f
    }

    /// A UDP datagram carrying the DNS message `msg` to port 53.
    #[must_use]
    pub fn dns_udp(src: &str, dst: &str, sport: u16, msg: &[u8]) -> Self {
        Self::udp(src, dst, sport, 53).with_payload(msg)
    }

    /// A TCP segment (PSH+ACK) carrying the DNS message `msg` behind its 2-byte length
    /// prefix (RFC 1035 §4.2.2) to port 53.
    #[must_use]
    pub fn dns_tcp(src: &str, dst: &str, sport: u16, msg: &[u8]) -> Self {
        use palisade_common::packet::{TCP_ACK, TCP_PSH};
        Self::tcp(src, dst, sport, 53, TCP_PSH | TCP_ACK).with_payload(&dns_tcp_payload(msg))
    }
}

impl Frame {
    /// The SYN (sequence number 0) that opens a DNS-over-TCP stream to port 53: the first
    /// data segment of the stream has sequence number 1, as [`Frame::dns_tcp`] builds it.
    #[must_use]
    pub fn dns_tcp_syn(src: &str, dst: &str, sport: u16) -> Self {
        use palisade_common::packet::TCP_SYN;
        Self::tcp(src, dst, sport, 53, TCP_SYN).with_tcp_seq(0)
    }
}

/// `msg` behind its 2-byte big-endian length prefix, as DNS over TCP sends it.
#[must_use]
pub fn dns_tcp_payload(msg: &[u8]) -> Vec<u8> {
    let mut p = (msg.len() as u16).to_be_bytes().to_vec();
    p.extend_from_slice(msg);
    p
}

/// A name in text form as raw labels: split at every `.`, a trailing dot ignored. Use
/// [`DnsQuestion::labels`] directly for labels that contain a dot.
#[must_use]
pub fn dns_labels(name: &str) -> Vec<Vec<u8>> {
    name.strip_suffix('.')
        .unwrap_or(name)
        .split('.')
        .filter(|l| !l.is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

/// RD: recursion desired, the flags of an ordinary stub query.
pub const DNS_FLAG_RD: u16 = 0x0100;
/// CD: checking disabled.
pub const DNS_FLAG_CD: u16 = 0x0010;
/// AD: authentic data.
pub const DNS_FLAG_AD: u16 = 0x0020;
/// QR: the message is a response.
pub const DNS_FLAG_QR: u16 = 0x8000;

/// One question of a crafted DNS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuestion {
    /// Raw labels, most significant last; a `.` byte inside a label stays inside it. Lengths
    /// are written as given (`len as u8`), so over-long labels can be crafted on purpose.
    pub labels: Vec<Vec<u8>>,
    /// End the name with a compression pointer to this offset instead of the root byte.
    pub pointer: Option<u16>,
    pub qtype: u16,
    pub qclass: u16,
}

impl DnsQuestion {
    /// A question of class IN for `labels` and `qtype`.
    #[must_use]
    pub fn new(labels: Vec<Vec<u8>>, qtype: u16) -> Self {
        Self {
            labels,
            pointer: None,
            qtype,
            qclass: 1,
        }
    }

    /// The question's wire bytes: the name, then qtype and qclass.
    #[must_use]
    pub fn wire(&self) -> Vec<u8> {
        let mut b = Vec::new();
        for l in &self.labels {
            b.push(l.len() as u8);
            b.extend_from_slice(l);
        }
        match self.pointer {
            Some(off) => b.extend_from_slice(&(0xc000 | (off & 0x3fff)).to_be_bytes()),
            None => b.push(0),
        }
        b.extend_from_slice(&self.qtype.to_be_bytes());
        b.extend_from_slice(&self.qclass.to_be_bytes());
        b
    }
}

/// A DNS query message to build (RFC 1035 §4.1), malformed on request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    pub id: u16,
    /// Header bytes 2..4 (QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE).
    pub flags: u16,
    /// QDCOUNT as written, whatever `questions` holds.
    pub qdcount: u16,
    pub questions: Vec<DnsQuestion>,
    /// An EDNS OPT record (RFC 6891) in the additional section with this UDP payload size.
    pub edns: Option<u16>,
}

impl DnsQuery {
    /// A standard recursive query (RD set) with one question.
    #[must_use]
    pub fn new(labels: Vec<Vec<u8>>, qtype: u16) -> Self {
        Self {
            id: 0x1234,
            flags: DNS_FLAG_RD,
            qdcount: 1,
            questions: vec![DnsQuestion::new(labels, qtype)],
            edns: None,
        }
    }

    /// A standard query for a dotted name (see [`dns_labels`]).
    #[must_use]
    pub fn name(name: &str, qtype: u16) -> Self {
        Self::new(dns_labels(name), qtype)
    }

    #[must_use]
    pub fn with_id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }

    #[must_use]
    pub fn with_flags(mut self, flags: u16) -> Self {
        self.flags = flags;
        self
    }

    #[must_use]
    pub fn with_qdcount(mut self, qdcount: u16) -> Self {
        self.qdcount = qdcount;
        self
    }

    /// Adds a question (QDCOUNT is left as it is).
    #[must_use]
    pub fn with_question(mut self, q: DnsQuestion) -> Self {
        self.questions.push(q);
        self
    }

    #[must_use]
    pub fn with_edns(mut self, udp_size: u16) -> Self {
        self.edns = Some(udp_size);
        self
    }

    /// Ends the first question's name with a compression pointer to `offset`.
    #[must_use]
    pub fn with_pointer(mut self, offset: u16) -> Self {
        if let Some(q) = self.questions.first_mut() {
            q.pointer = Some(offset);
        }
        self
    }

    /// The message's bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(64);
        m.extend_from_slice(&self.id.to_be_bytes());
        m.extend_from_slice(&self.flags.to_be_bytes());
        m.extend_from_slice(&self.qdcount.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&u16::from(self.edns.is_some()).to_be_bytes());
        for q in &self.questions {
            m.extend_from_slice(&q.wire());
        }
        if let Some(size) = self.edns {
            // Root owner, TYPE OPT (41), CLASS = UDP payload size, TTL 0 (extended RCODE,
            // version 0, DO clear), no options.
            m.push(0);
            m.extend_from_slice(&41u16.to_be_bytes());
            m.extend_from_slice(&size.to_be_bytes());
            m.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        m
    }
}

/// A TCP segment's header fields, for frames whose sequence numbers matter (connection
/// tracking follows them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment {
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// Payload bytes after the header.
    pub payload: usize,
}

impl TcpSegment {
    /// A segment with a full window and no payload.
    #[must_use]
    pub const fn new(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Self {
        Self {
            sport,
            dport,
            flags,
            seq,
            ack,
            window: 65_535,
            payload: 0,
        }
    }

    /// The same segment carrying `n` bytes.
    #[must_use]
    pub const fn with_payload(mut self, n: usize) -> Self {
        self.payload = n;
        self
    }

    /// The Ethernet frame carrying this segment from `src` to `dst`, checksums included.
    #[must_use]
    pub fn frame(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        self.frame_with_options(src, dst, &[])
    }

    /// As [`Self::frame`], with TCP `options` (a multiple of four bytes, at most 40).
    #[must_use]
    pub fn frame_with_options(&self, src: IpAddr, dst: IpAddr, options: &[u8]) -> Vec<u8> {
        let mut t = Vec::with_capacity(20 + options.len() + self.payload);
        t.extend_from_slice(&self.sport.to_be_bytes());
        t.extend_from_slice(&self.dport.to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.extend_from_slice(&[((20 + options.len()) / 4) as u8 * 16, self.flags]);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(options);
        t.extend((0..self.payload).map(|i| i as u8));
        let mut f = Frame::new(src, dst, L4::Raw { proto: IPPROTO_TCP });
        let sum = checksum(&t, f.pseudo_header_sum(t.len()));
        t[16..18].copy_from_slice(&sum.to_be_bytes());
        f.payload = t;
        f.build()
    }
}

/// A TLS ClientHello, for tests and benchmarks: its handshake message (header included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHelloSpec {
    /// The server name; `None` for no `server_name` extension.
    pub sni: Option<Vec<u8>>,
    pub alpn: Vec<Vec<u8>>,
    pub ciphers: Vec<u16>,
    /// Further extensions (type, contents), after SNI and ALPN.
    pub extensions: Vec<(u16, Vec<u8>)>,
}

impl ClientHelloSpec {
    /// A TLS 1.3 hello to `sni` offering `h2` and `http/1.1`, with a post-quantum key share
    /// (X25519MLKEM768, 1216 bytes) among its four key shares that makes it about 1.6 KiB,
    /// more than one Ethernet segment carries, as current browsers' hellos are.
    #[must_use]
    pub fn modern(sni: &str) -> Self {
        let versions = vec![4, 0x03, 0x04, 0x03, 0x03];
        let mut shares = Vec::new();
        for (group, len) in [
            (0x11ecu16, 1216usize),
            (0x001d, 32),
            (0x0017, 65),
            (0x0018, 97),
        ] {
            shares.extend(group.to_be_bytes());
            shares.extend(u16::try_from(len).unwrap_or(0).to_be_bytes());
            shares.extend((0..len).map(|i| (i * 13 + 5) as u8));
        }
        let mut key_share = u16::try_from(shares.len())
            .unwrap_or(0)
            .to_be_bytes()
            .to_vec();
        key_share.extend(shares);
        let sig_algs = vec![0, 8, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03];
        Self {
            sni: Some(sni.as_bytes().to_vec()),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            ciphers: vec![0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030],
            extensions: vec![
                (0x000a, vec![0, 6, 0x11, 0xec, 0x00, 0x1d, 0x00, 0x17]),
                (0x000d, sig_algs),
                (0x002b, versions),
                (0x0033, key_share),
                (0x002d, vec![1, 1]),
            ],
        }
    }

    /// The handshake message.
    #[must_use]
    pub fn message(&self) -> Vec<u8> {
        let be16 = |n: usize| u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes();
        let mut exts: Vec<(u16, Vec<u8>)> = Vec::new();
        if let Some(name) = &self.sni {
            let mut d = be16(name.len() + 3).to_vec();
            d.push(0);
            d.extend(be16(name.len()));
            d.extend(name);
            exts.push((0, d));
        }
        if !self.alpn.is_empty() {
            let mut list = Vec::new();
            for p in &self.alpn {
                list.push(u8::try_from(p.len()).unwrap_or(u8::MAX));
                list.extend(p);
            }
            let mut d = be16(list.len()).to_vec();
            d.extend(list);
            exts.push((0x0010, d));
        }
        exts.extend(self.extensions.iter().cloned());
        let mut body = vec![0x03, 0x03];
        body.extend([0x5a; 32]);
        body.push(32);
        body.extend([0xa5; 32]);
        body.extend(be16(self.ciphers.len() * 2));
        for c in &self.ciphers {
            body.extend(c.to_be_bytes());
        }
        body.extend([1, 0]);
        let mut ext_bytes = Vec::new();
        for (kind, data) in &exts {
            ext_bytes.extend(kind.to_be_bytes());
            ext_bytes.extend(be16(data.len()));
            ext_bytes.extend(data);
        }
        body.extend(be16(ext_bytes.len()));
        body.extend(ext_bytes);
        let mut msg = vec![1];
        msg.extend(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    /// The message in TLS handshake records of at most `max` bytes each: what the client
    /// writes to its socket.
    #[must_use]
    pub fn records(&self, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in self.message().chunks(max.max(1)) {
            out.extend([22, 3, 1]);
            out.extend(u16::try_from(chunk.len()).unwrap_or(0).to_be_bytes());
            out.extend(chunk);
        }
        out
    }
}
