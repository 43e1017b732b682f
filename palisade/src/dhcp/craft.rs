//! DHCPv4, DHCPv6 and router-advertisement messages built byte by byte, for the tests of
//! the reader and of the kernel hooks.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::craft::{Frame, L4};

/// A DHCPv4 message: the fixed header and the options area as given (options are written
/// raw so that tests can break them).
#[derive(Debug, Clone)]
pub struct V4 {
    pub op: u8,
    pub xid: u32,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub sname: [u8; 64],
    pub file: [u8; 128],
    /// Bytes after the magic cookie.
    pub options: Vec<u8>,
    pub cookie: bool,
}

impl V4 {
    /// A server's message of type `msg_type` giving `yiaddr` to `chaddr`, with a lease time
    /// and server identifier, and the end option.
    #[must_use]
    pub fn reply(msg_type: u8, chaddr: [u8; 6], yiaddr: Ipv4Addr, lease: u32) -> Self {
        let mut options = vec![53, 1, msg_type, 54, 4, 10, 0, 0, 1, 51, 4];
        options.extend_from_slice(&lease.to_be_bytes());
        options.push(255);
        Self {
            op: 2,
            xid: 0x1234_5678,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr,
            chaddr,
            sname: [0; 64],
            file: [0; 128],
            options,
            cookie: true,
        }
    }

    /// A client's message of type `msg_type` with a hostname (option 12) when given.
    #[must_use]
    pub fn request(msg_type: u8, chaddr: [u8; 6], hostname: Option<&str>) -> Self {
        let mut options = vec![53, 1, msg_type];
        if let Some(h) = hostname {
            options.push(12);
            options.push(h.len() as u8);
            options.extend_from_slice(h.as_bytes());
        }
        options.push(255);
        Self {
            op: 1,
            options,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            ..Self::reply(msg_type, chaddr, Ipv4Addr::UNSPECIFIED, 0)
        }
    }

    #[must_use]
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = vec![self.op, 1, 6, 0];
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.ciaddr.octets());
        b.extend_from_slice(&self.yiaddr.octets());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.chaddr);
        b.extend_from_slice(&[0; 10]);
        b.extend_from_slice(&self.sname);
        b.extend_from_slice(&self.file);
        if self.cookie {
            b.extend_from_slice(&[99, 130, 83, 99]);
        }
        b.extend_from_slice(&self.options);
        b
    }

    /// The message in a UDP frame from `src` (port 67 for a reply, 68 for a request).
    #[must_use]
    pub fn frame(&self, src: &str, dst: &str) -> Vec<u8> {
        let (sport, dport) = if self.op == 2 { (67, 68) } else { (68, 67) };
        Frame::udp(src, dst, sport, dport)
            .with_payload(&self.bytes())
            .build()
    }
}

/// A DHCPv6 option.
#[must_use]
pub fn v6_option(code: u16, value: &[u8]) -> Vec<u8> {
    let mut b = code.to_be_bytes().to_vec();
    b.extend_from_slice(&(value.len() as u16).to_be_bytes());
    b.extend_from_slice(value);
    b
}

/// A DUID-LL of an Ethernet address.
#[must_use]
pub fn duid_ll(mac: [u8; 6]) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&mac);
    d
}

/// An IA_NA holding one IAADDR.
#[must_use]
pub fn ia_na(iaid: u32, addr: Ipv6Addr, preferred: u32, valid: u32) -> Vec<u8> {
    let mut iaaddr = addr.octets().to_vec();
    iaaddr.extend_from_slice(&preferred.to_be_bytes());
    iaaddr.extend_from_slice(&valid.to_be_bytes());
    let mut ia = iaid.to_be_bytes().to_vec();
    ia.extend_from_slice(&[0, 0, 0, 100, 0, 0, 0, 200]);
    ia.extend_from_slice(&v6_option(5, &iaaddr));
    v6_option(3, &ia)
}

/// A DHCPv6 message: type, transaction id, options.
#[must_use]
pub fn v6_message(msg_type: u8, options: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![msg_type, 0xab, 0xcd, 0xef];
    for o in options {
        b.extend_from_slice(o);
    }
    b
}

/// The message in a UDP frame (server port to client port for server types).
#[must_use]
pub fn v6_frame(src: &str, dst: &str, msg: &[u8]) -> Vec<u8> {
    let server = matches!(msg.first(), Some(2 | 7 | 10 | 13));
    let (sport, dport) = if server { (547, 546) } else { (546, 547) };
    Frame::udp(src, dst, sport, dport).with_payload(msg).build()
}

/// A router advertisement (from its ICMPv6 type byte) with a router lifetime and options.
#[must_use]
pub fn ra(lifetime: u16, options: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![134, 0, 0, 0, 64, 0];
    b.extend_from_slice(&lifetime.to_be_bytes());
    b.extend_from_slice(&[0; 8]);
    for o in options {
        b.extend_from_slice(o);
    }
    b
}

/// RA option: source link-layer address.
#[must_use]
pub fn ra_source(mac: [u8; 6]) -> Vec<u8> {
    let mut b = vec![1, 1];
    b.extend_from_slice(&mac);
    b
}

/// RA option: prefix information.
#[must_use]
pub fn ra_prefix(prefix: Ipv6Addr, len: u8, valid: u32, preferred: u32) -> Vec<u8> {
    let mut b = vec![3, 4, len, 0xc0];
    b.extend_from_slice(&valid.to_be_bytes());
    b.extend_from_slice(&preferred.to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&prefix.octets());
    b
}

/// The RA in an IPv6 frame (ICMPv6, hop limit 255; the checksum is left 0, which neither
/// the kernel hooks nor the reader check).
#[must_use]
pub fn ra_frame(src: &str, dst: &str, ra: &[u8]) -> Vec<u8> {
    let mut f = Frame::new(
        crate::craft::ip(src),
        crate::craft::ip(dst),
        L4::Raw {
            proto: palisade_common::packet::IPPROTO_ICMPV6,
        },
    )
    .with_payload(ra);
    f.ttl = 255;
    f.build()
}

/// `frame` with its Ethernet source set to `mac`.
#[must_use]
pub fn from_mac(mut frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    frame[6..12].copy_from_slice(&mac);
    frame
}
