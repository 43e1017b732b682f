//! Firefox's DoH canary for cgroups pinned to their resolvers: a query for
//! `use-application-dns.net` from such a cgroup is answered NXDOMAIN in the kernel, so the
//! browser keeps its DNS on the system's resolvers (see `docs/design/dns.md`, "The DoH
//! canary").
//!
//! [`rewrite`] turns the first bytes of an Ethernet frame holding such a query into the
//! answer's first bytes: addresses (link and network) and ports swapped, the header's
//! flags those of an NXDOMAIN answer. Everything after the flags stays as the query had it
//! (the counts, the question, an EDNS record if any), so the answer echoes the question and
//! has the query's length. The kernel program (`palisade-ebpf/src/dnsbind/canary.rs`) and
//! the tests use this one function.

use crate::packet::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6};

/// The canary's question name in wire form, lower case.
pub const CANARY_QNAME: [u8; 25] = *b"\x13use-application-dns\x03net\x00";

/// IPv4 header length the rewrite handles (no options: a stub's queries carry none).
const IPV4_HLEN: usize = 20;
/// IPv6 header length (no extension headers).
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const DNS_HLEN: usize = 12;
/// The question: the name, type and class.
const QUESTION_LEN: usize = CANARY_QNAME.len() + 4;

/// Bytes from the frame's start to the question's end, IPv4.
pub const V4_LEN: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN + DNS_HLEN + QUESTION_LEN;
/// Bytes from the frame's start to the question's end, IPv6.
pub const V6_LEN: usize = ETH_HLEN + IPV6_HLEN + UDP_HLEN + DNS_HLEN + QUESTION_LEN;
/// The buffer [`rewrite`] works on (room for an IPv6 query's first [`V6_LEN`] bytes).
pub const BUF_LEN: usize = 104;
const _: () = assert!(V6_LEN <= BUF_LEN && V4_LEN <= V6_LEN);

/// Bytes an IPv4 rewrite changes, from the frame's start (through the DNS flags).
pub const V4_STORE_LEN: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN + 4;
/// Bytes an IPv6 rewrite changes.
pub const V6_STORE_LEN: usize = ETH_HLEN + IPV6_HLEN + UDP_HLEN + 4;

const IPPROTO_UDP: u8 = 17;
const DNS_PORT: u16 = 53;
const CLASS_IN: u16 = 1;

/// Header flag bits.
const QR: u16 = 0x8000;
const OPCODE: u16 = 0x7800;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;
const CD: u16 = 0x0010;
const RCODE_NXDOMAIN: u16 = 3;

/// What [`rewrite`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Bytes from the frame's start that changed and must be stored back
    /// ([`V4_STORE_LEN`] or [`V6_STORE_LEN`]).
    pub store_len: usize,
    /// Offset of the UDP checksum in the frame.
    pub csum_off: usize,
    /// The header flags before and after (host order): the one change the UDP checksum
    /// sees (swapping addresses or ports leaves a ones' complement sum as it was).
    pub old_flags: u16,
    pub new_flags: u16,
    /// The query's question type.
    pub qtype: u16,
}

/// The flags of the NXDOMAIN answer to a query with `flags`: QR and RA set, RD and CD
/// copied, RCODE 3, the rest clear.
#[must_use]
pub const fn answer_flags(flags: u16) -> u16 {
    QR | (flags & (RD | CD)) | RA | RCODE_NXDOMAIN
}

#[inline(always)]
const fn be16(b: &[u8; BUF_LEN], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn swap<const N: usize>(b: &mut [u8; BUF_LEN], a: usize, c: usize) {
    let mut i = 0;
    while i < N {
        b.swap(a + i, c + i);
        i += 1;
    }
}

/// Whether `b[at..at + 25]` is [`CANARY_QNAME`], ASCII case folded.
#[inline(always)]
fn is_canary(b: &[u8; BUF_LEN], at: usize) -> bool {
    let mut i = 0;
    while i < CANARY_QNAME.len() {
        if b[at + i].to_ascii_lowercase() != CANARY_QNAME[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// If the frame whose first bytes are in `b` (of `frame_len` bytes in all) is a UDP query
/// to port 53 for `use-application-dns.net` (any case, class IN, any type; opcode QUERY,
/// one question, no answer or authority records, at most one additional record), rewrites
/// those bytes into the NXDOMAIN answer's and says what changed; otherwise leaves `b` as it
/// was and returns `None`.
///
/// Handled: Ethernet without VLAN tags, IPv4 without options and not a fragment, IPv6
/// without extension headers. Anything else is not the canary here (it goes on to the
/// resolver).
#[must_use]
pub fn rewrite(b: &mut [u8; BUF_LEN], frame_len: usize) -> Option<Rewritten> {
    let (v6, l4) = match be16(b, 12) {
        ETH_P_IP => {
            if b[ETH_HLEN] != 0x45 || b[ETH_HLEN + 9] != IPPROTO_UDP {
                return None;
            }
            // More fragments, or an offset: not a whole datagram.
            if be16(b, ETH_HLEN + 6) & 0x3fff != 0 {
                return None;
            }
            let total = be16(b, ETH_HLEN + 2) as usize;
            if total < V4_LEN - ETH_HLEN || ETH_HLEN + total > frame_len {
                return None;
            }
            (false, ETH_HLEN + IPV4_HLEN)
        }
        ETH_P_IPV6 => {
            if b[ETH_HLEN] >> 4 != 6 || b[ETH_HLEN + 6] != IPPROTO_UDP {
                return None;
            }
            let payload = be16(b, ETH_HLEN + 4) as usize;
            if payload < V6_LEN - ETH_HLEN - IPV6_HLEN || ETH_HLEN + IPV6_HLEN + payload > frame_len
            {
                return None;
            }
            (true, ETH_HLEN + IPV6_HLEN)
        }
        _ => return None,
    };
    if be16(b, l4 + 2) != DNS_PORT
        || (be16(b, l4 + 4) as usize) < UDP_HLEN + DNS_HLEN + QUESTION_LEN
    {
        return None;
    }
    let dns = l4 + UDP_HLEN;
    let flags = be16(b, dns + 2);
    if flags & (QR | OPCODE) != 0
        || be16(b, dns + 4) != 1
        || be16(b, dns + 6) != 0
        || be16(b, dns + 8) != 0
        || be16(b, dns + 10) > 1
    {
        return None;
    }
    let q = dns + DNS_HLEN;
    if !is_canary(b, q) || be16(b, q + CANARY_QNAME.len() + 2) != CLASS_IN {
        return None;
    }
    let qtype = be16(b, q + CANARY_QNAME.len());
    swap::<6>(b, 0, 6);
    if v6 {
        swap::<16>(b, ETH_HLEN + 8, ETH_HLEN + 24);
    } else {
        swap::<4>(b, ETH_HLEN + 12, ETH_HLEN + 16);
    }
    swap::<2>(b, l4, l4 + 2);
    let new_flags = answer_flags(flags);
    let nf = new_flags.to_be_bytes();
    b[dns + 2] = nf[0];
    b[dns + 3] = nf[1];
    Some(Rewritten {
        v6,
        store_len: if v6 { V6_STORE_LEN } else { V4_STORE_LEN },
        csum_off: l4 + 6,
        old_flags: flags,
        new_flags,
        qtype,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;

    use super::*;

    fn query(v6: bool, name: &[u8], flags: u16, arcount: u16) -> ([u8; BUF_LEN], usize) {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        let mut dns = vec![0x12, 0x34];
        dns.extend_from_slice(&flags.to_be_bytes());
        dns.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, arcount as u8]);
        dns.extend_from_slice(name);
        dns.extend_from_slice(&[0, 1, 0, 1]);
        let udp_len = (8 + dns.len()) as u16;
        if v6 {
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&udp_len.to_be_bytes());
            f.extend_from_slice(&[17, 64]);
            f.extend_from_slice(&[0xfd; 16]);
            f.extend_from_slice(&[0xfe; 16]);
        } else {
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&(20 + udp_len).to_be_bytes());
            f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 53]);
        }
        f.extend_from_slice(&[0xc3, 0x50, 0, 53]);
        f.extend_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&dns);
        let mut b = [0u8; BUF_LEN];
        let n = f.len().min(BUF_LEN);
        b[..n].copy_from_slice(&f[..n]);
        (b, f.len())
    }

    #[test]
    fn the_canary_in_any_case_is_answered() {
        let mixed = *b"\x13Use-Application-DNS\x03NeT\x00";
        for v6 in [false, true] {
            let (mut b, len) = query(v6, &mixed, 0x0120, 0);
            let before = b;
            let r = rewrite(&mut b, len).expect("the canary");
            assert_eq!(r.v6, v6);
            assert_eq!(r.old_flags, 0x0120);
            assert_eq!(r.new_flags, 0x8183);
            assert_eq!(r.qtype, 1);
            assert_eq!(b[0..6], before[6..12]);
            assert_eq!(b[6..12], before[0..6]);
            let l4 = if v6 { 54 } else { 34 };
            assert_eq!(b[l4..l4 + 2], [0, 53]);
            assert_eq!(b[l4 + 2..l4 + 4], [0xc3, 0x50]);
            assert_eq!(b[l4 + 10..l4 + 12], [0x81, 0x83]);
            // The question is echoed as asked, case and all.
            assert_eq!(b[l4 + 20..l4 + 45], mixed);
        }
    }

    #[test]
    fn other_queries_are_left_alone() {
        let other = *b"\x13use-application-dns\x03org\x00";
        for (name, flags, ar) in [
            (other, 0x0100, 0),
            (CANARY_QNAME, 0x8180, 0), // an answer
            (CANARY_QNAME, 0x2800, 0), // opcode UPDATE
            (CANARY_QNAME, 0x0100, 2),
        ] {
            let (mut b, len) = query(false, &name, flags, ar);
            let before = b;
            assert_eq!(rewrite(&mut b, len), None);
            assert_eq!(b, before);
        }
        let (mut b, len) = query(false, &CANARY_QNAME, 0x0100, 0);
        assert_eq!(rewrite(&mut b, len - 1), None, "a cut datagram");
    }

    #[test]
    fn flags_keep_rd_and_cd_only() {
        assert_eq!(answer_flags(0), 0x8083);
        assert_eq!(answer_flags(!(QR | OPCODE)), 0x8193);
    }
}
