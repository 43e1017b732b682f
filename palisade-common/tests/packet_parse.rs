//! Byte-level tests of the shared packet parser (`packet::parse` over a `[u8]`).
//!
//! Frames are assembled here from raw header bytes, independently of the frame builder in the
//! `palisade` crate, and every `Ok` result is compared field by field with the whole expected
//! `Packet`.

use palisade_common::{
    packet::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, FAMILY_V4, FAMILY_V6,
        FRAG_FIRST, FRAG_LATER, FRAG_NONE, Frame, IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
        IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP,
        MAX_IPV6_EXT_HEADERS, MAX_L4_OFFSET, Packet, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN,
        VLAN_MAX_DEPTH, parse, v4_mapped,
    },
    reason::{self, IPV6_EXT_CHAIN, MALFORMED_L2, MALFORMED_L3, MALFORMED_L4},
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Frame assembly

const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_GRE: u8 = 47;
const IPPROTO_NONE: u8 = 59;

const SRC4: [u8; 4] = [192, 0, 2, 1];
const DST4: [u8; 4] = [198, 51, 100, 2];
const SRC6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
];
const DST6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
];

/// Ethernet header (with one 4-byte tag per TPID in `tags`) ending in `ethertype`.
fn eth(tags: &[u16], ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    for (i, tpid) in tags.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 8, 0, 0]);
    u
}

fn icmp(icmp_type: u8, code: u8) -> Vec<u8> {
    vec![icmp_type, code, 0, 0, 0, 1, 0, 1]
}

/// An IPv4 header: `ihl` in 32-bit words (options are NOPs), `total` as written.
fn ipv4_header(ihl: u8, total: u16, frag_field: u16, proto: u8) -> Vec<u8> {
    let mut h = vec![0x40 | ihl, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frag_field.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&SRC4);
    h.extend_from_slice(&DST4);
    h.resize(usize::from(ihl.max(5)) * 4, 1);
    h
}

/// A whole IPv4 frame with a consistent total length.
fn frame4(tags: &[u16], ihl: u8, frag_field: u16, proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = (usize::from(ihl) * 4 + l4.len()) as u16;
    let mut f = eth(tags, ETH_P_IP);
    f.extend_from_slice(&ipv4_header(ihl, total, frag_field, proto));
    f.extend_from_slice(l4);
    f
}

/// An IPv6 extension header in a chain.
#[derive(Clone, Copy, Debug)]
enum Ext {
    /// Hop-by-hop, routing or destination options: `(len8 + 1) * 8` bytes.
    Opt(u8, u8),
    /// Fragment header: offset in 8-byte units, more-fragments flag.
    Frag(u16, bool),
    /// Authentication header with payload length `len`: `(len + 2) * 4` bytes.
    Ah(u8),
}

impl Ext {
    fn kind(self) -> u8 {
        match self {
            Self::Opt(kind, _) => kind,
            Self::Frag(..) => IPPROTO_FRAGMENT,
            Self::Ah(_) => IPPROTO_AH,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Self::Opt(_, len8) => {
                let mut b = vec![next, len8, 1, 4, 0, 0, 0, 0];
                b.resize((usize::from(len8) + 1) * 8, 0);
                b
            }
            Self::Frag(offset, more) => {
                let field = offset << 3 | u16::from(more);
                let mut b = vec![next, 0];
                b.extend_from_slice(&field.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0x56, 0x78]);
                b
            }
            Self::Ah(len) => {
                let mut b = vec![next, len, 0, 0, 0, 0, 1, 0];
                b.resize((usize::from(len) + 2) * 4, 0xaa);
                b
            }
        }
    }
}

fn hbh(len8: u8) -> Ext {
    Ext::Opt(IPPROTO_HOPOPTS, len8)
}
fn rt(len8: u8) -> Ext {
    Ext::Opt(IPPROTO_ROUTING, len8)
}
fn dst(len8: u8) -> Ext {
    Ext::Opt(IPPROTO_DSTOPTS, len8)
}

/// The extension headers and layer 4 of an IPv6 packet, with the first next-header value.
fn ipv6_payload(exts: &[Ext], proto: u8, l4: &[u8]) -> (u8, Vec<u8>) {
    let mut body = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, |n| n.kind());
        body.extend_from_slice(&e.bytes(next));
    }
    body.extend_from_slice(l4);
    (exts.first().map_or(proto, |e| e.kind()), body)
}

fn ipv6_header(payload_len: u16, next: u8, src: [u8; 16]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&payload_len.to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&DST6);
    h
}

/// A whole IPv6 frame with a consistent payload length.
fn frame6(tags: &[u16], exts: &[Ext], proto: u8, l4: &[u8]) -> Vec<u8> {
    let (first, body) = ipv6_payload(exts, proto, l4);
    let mut f = eth(tags, ETH_P_IPV6);
    f.extend_from_slice(&ipv6_header(body.len() as u16, first, SRC6));
    f.extend_from_slice(&body);
    f
}

fn arp(tags: &[u16]) -> Vec<u8> {
    let mut f = eth(tags, ETH_P_ARP);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 192, 0, 2, 1]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 51, 100, 2]);
    f
}

// ---------------------------------------------------------------------------------------
// Expected packets

/// The packet a TCP/IPv4 frame from `frame4(tags, ihl, ..)` parses to.
fn v4(proto: u8, l3: usize, ihl: u8, l4_len: u16) -> Packet {
    Packet {
        family: FAMILY_V4,
        proto,
        frag: FRAG_NONE,
        tcp_flags: 0,
        ct_state: 0,
        shield: 0,
        tos: 0,
        ttl: 64,
        src: v4_mapped(SRC4),
        dst: v4_mapped(DST4),
        sport: 0,
        dport: 0,
        l3_offset: l3 as u16,
        l4_offset: (l3 + usize::from(ihl) * 4) as u16,
        l4_len,
    }
}

fn v6(proto: u8, l3: usize, ext_len: usize, l4_len: u16) -> Packet {
    Packet {
        family: FAMILY_V6,
        proto,
        frag: FRAG_NONE,
        tcp_flags: 0,
        ct_state: 0,
        shield: 0,
        tos: 0,
        ttl: 64,
        src: SRC6,
        dst: DST6,
        sport: 0,
        dport: 0,
        l3_offset: l3 as u16,
        l4_offset: (l3 + 40 + ext_len) as u16,
        l4_len,
    }
}

fn ports(mut p: Packet, sport: u16, dport: u16) -> Packet {
    p.sport = sport;
    p.dport = dport;
    p
}

fn flags(mut p: Packet, f: u8) -> Packet {
    p.tcp_flags = f;
    p
}

fn frag(mut p: Packet, f: u8) -> Packet {
    p.frag = f;
    p
}

#[track_caller]
fn ok(bytes: &[u8], want: Packet) {
    assert_eq!(parse(bytes), Ok(Frame::Ip(want)), "frame {bytes:02x?}");
}

#[track_caller]
fn err(bytes: &[u8], reason: u32) {
    assert_eq!(
        parse(bytes),
        Err(reason),
        "want {} for frame {bytes:02x?}",
        reason::name(reason)
    );
}

// ---------------------------------------------------------------------------------------
// Layer 2

#[test]
fn shorter_than_ethernet_is_malformed_l2() {
    let f = frame4(&[], 5, 0, IPPROTO_TCP, &tcp(1, 2, 0));
    for n in 0..ETH_HLEN {
        err(&f[..n], MALFORMED_L2);
    }
    // Exactly an Ethernet header of an IPv4 frame: the IPv4 header is what is missing.
    err(&f[..ETH_HLEN], MALFORMED_L3);
}

#[test]
fn non_ip_frames_are_not_ip() {
    assert_eq!(parse(&arp(&[])[..]), Ok(Frame::NotIp));
    assert_eq!(parse(&arp(&[ETH_P_8021Q])[..]), Ok(Frame::NotIp));
    assert_eq!(
        parse(&arp(&[ETH_P_8021AD, ETH_P_8021Q])[..]),
        Ok(Frame::NotIp)
    );
    // Only the Ethernet header is needed to know a frame is not IP.
    assert_eq!(parse(&eth(&[], ETH_P_ARP)[..]), Ok(Frame::NotIp));
    // LLDP, an 802.3 length field, and the pre-standard 0x9100 QinQ tag: not parsed as IP.
    for ethertype in [0x88cc, 0x0040, 0x9100] {
        let mut f = eth(&[], ethertype);
        f.extend_from_slice(&[0x45; 40]);
        assert_eq!(
            parse(&f[..]),
            Ok(Frame::NotIp),
            "ethertype {ethertype:#06x}"
        );
    }
}

#[test]
fn vlan_tags_shift_offsets_only() {
    let l4 = tcp(40000, 22, TCP_SYN);
    let want = |tags: usize| {
        flags(
            ports(v4(IPPROTO_TCP, ETH_HLEN + 4 * tags, 5, 20), 40000, 22),
            TCP_SYN,
        )
    };
    ok(&frame4(&[], 5, 0, IPPROTO_TCP, &l4), want(0));
    ok(&frame4(&[ETH_P_8021Q], 5, 0, IPPROTO_TCP, &l4), want(1));
    ok(&frame4(&[ETH_P_8021AD], 5, 0, IPPROTO_TCP, &l4), want(1));
    for tags in [
        [ETH_P_8021AD, ETH_P_8021Q],
        [ETH_P_8021Q, ETH_P_8021Q],
        [ETH_P_8021AD, ETH_P_8021AD],
    ] {
        ok(&frame4(&tags, 5, 0, IPPROTO_TCP, &l4), want(2));
    }
    let l6 = udp(5353, 53);
    ok(
        &frame6(&[ETH_P_8021AD, ETH_P_8021Q], &[], IPPROTO_UDP, &l6),
        ports(v6(IPPROTO_UDP, ETH_HLEN + 8, 0, 8), 5353, 53),
    );
}

#[test]
fn more_vlan_tags_than_parsed_are_malformed_l2() {
    assert_eq!(VLAN_MAX_DEPTH, 2);
    let l4 = tcp(1, 22, 0);
    err(
        &frame4(
            &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
            5,
            0,
            IPPROTO_TCP,
            &l4,
        ),
        MALFORMED_L2,
    );
    err(
        &frame4(&[ETH_P_8021Q; 3], 5, 0, IPPROTO_TCP, &l4),
        MALFORMED_L2,
    );
    err(&arp(&[ETH_P_8021Q; 4]), MALFORMED_L2);
    // The third tag is refused from its TPID alone, even with nothing after it.
    err(&eth(&[ETH_P_8021Q, ETH_P_8021Q], ETH_P_8021Q), MALFORMED_L2);
}

#[test]
fn truncated_vlan_tag_is_malformed_l2() {
    let f = frame4(
        &[ETH_P_8021AD, ETH_P_8021Q],
        5,
        0,
        IPPROTO_TCP,
        &tcp(1, 2, 0),
    );
    for n in ETH_HLEN..ETH_HLEN + 8 {
        err(&f[..n], MALFORMED_L2);
    }
    err(&f[..ETH_HLEN + 8], MALFORMED_L3);
}

// ---------------------------------------------------------------------------------------
// IPv4

#[test]
fn ipv4_tcp_udp_icmp_and_other() {
    ok(
        &frame4(&[], 5, 0, IPPROTO_TCP, &tcp(1234, 443, TCP_SYN | TCP_ACK)),
        flags(
            ports(v4(IPPROTO_TCP, 14, 5, 20), 1234, 443),
            TCP_SYN | TCP_ACK,
        ),
    );
    ok(
        &frame4(&[], 5, 0, IPPROTO_UDP, &udp(0, 65535)),
        ports(v4(IPPROTO_UDP, 14, 5, 8), 0, 65535),
    );
    // ICMP: type and code travel in `dport`, `sport` stays 0.
    ok(
        &frame4(&[], 5, 0, IPPROTO_ICMP, &icmp(8, 0)),
        ports(v4(IPPROTO_ICMP, 14, 5, 8), 0, 0x0800),
    );
    ok(
        &frame4(&[], 5, 0, IPPROTO_ICMP, &icmp(3, 4)),
        ports(v4(IPPROTO_ICMP, 14, 5, 8), 0, 0x0304),
    );
    // GRE: no ports, and its bytes are not read.
    ok(
        &frame4(&[], 5, 0, IPPROTO_GRE, &[0xff; 12]),
        v4(IPPROTO_GRE, 14, 5, 12),
    );
    ok(
        &frame4(&[], 5, 0, IPPROTO_GRE, &[]),
        v4(IPPROTO_GRE, 14, 5, 0),
    );
}

#[test]
fn tcp_flags_are_the_flags_byte() {
    for f in [
        0,
        TCP_SYN,
        TCP_SYN | TCP_ACK,
        TCP_FIN | TCP_PSH | TCP_ACK,
        0xff,
    ] {
        ok(
            &frame4(&[], 5, 0, IPPROTO_TCP, &tcp(1, 2, f)),
            flags(ports(v4(IPPROTO_TCP, 14, 5, 20), 1, 2), f),
        );
    }
}

#[test]
fn ipv4_options_every_ihl() {
    for ihl in 5..=15u8 {
        for tags in [&[][..], &[ETH_P_8021Q][..]] {
            let l3 = ETH_HLEN + 4 * tags.len();
            ok(
                &frame4(tags, ihl, 0, IPPROTO_TCP, &tcp(999, 22, TCP_SYN)),
                flags(ports(v4(IPPROTO_TCP, l3, ihl, 20), 999, 22), TCP_SYN),
            );
            ok(
                &frame4(tags, ihl, 0, IPPROTO_UDP, &udp(53, 5353)),
                ports(v4(IPPROTO_UDP, l3, ihl, 8), 53, 5353),
            );
        }
    }
}

#[test]
fn ipv4_ihl_below_five_is_malformed_l3() {
    for ihl in 0..5u8 {
        let mut f = frame4(&[], 5, 0, IPPROTO_TCP, &tcp(1, 22, 0));
        f[ETH_HLEN] = 0x40 | ihl;
        err(&f, MALFORMED_L3);
    }
}

#[test]
fn ipv4_bad_version_or_lengths_are_malformed_l3() {
    let good = frame4(&[], 5, 0, IPPROTO_TCP, &tcp(1, 22, 0));
    for version in [0u8, 5, 6, 15] {
        let mut f = good.clone();
        f[ETH_HLEN] = version << 4 | 5;
        err(&f, MALFORMED_L3);
    }
    // Total length shorter than the header itself.
    for total in [0u16, 1, 19] {
        let mut f = good.clone();
        f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
        err(&f, MALFORMED_L3);
    }
    let mut f = frame4(&[], 8, 0, IPPROTO_TCP, &tcp(1, 22, 0));
    f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&31u16.to_be_bytes());
    err(&f, MALFORMED_L3);
}

#[test]
fn ipv4_header_cut_inside_options_is_malformed_l3() {
    let f = frame4(&[], 15, 0, IPPROTO_TCP, &tcp(1, 22, 0));
    for n in ETH_HLEN..ETH_HLEN + 60 {
        err(&f[..n], MALFORMED_L3);
    }
    err(&f[..ETH_HLEN + 60], MALFORMED_L4);
}

#[test]
fn ipv4_total_length_decides_l4_len_not_the_frame() {
    // Ethernet padding after the IP packet is legal: l4_len follows the header.
    let mut f = frame4(&[], 5, 0, IPPROTO_ICMP, &icmp(8, 0));
    f.resize(60, 0);
    ok(&f, ports(v4(IPPROTO_ICMP, 14, 5, 8), 0, 0x0800));

    // A total length beyond the frame is not checked against it: the header is believed as
    // long as the layer-4 header the parser reads is present.
    let mut f = frame4(&[], 5, 0, IPPROTO_TCP, &tcp(1, 22, 0));
    f[16..18].copy_from_slice(&1500u16.to_be_bytes());
    ok(&f, ports(v4(IPPROTO_TCP, 14, 5, 1480), 1, 22));

    // A total length too short for the layer-4 header is malformed-l4 even though the bytes
    // are in the frame.
    for (proto, l4, min) in [
        (IPPROTO_TCP, tcp(1, 22, 0), 20u16),
        (IPPROTO_UDP, udp(1, 53), 8),
        (IPPROTO_ICMP, icmp(8, 0), 4),
    ] {
        for l4_len in 0..min {
            let mut f = frame4(&[], 5, 0, proto, &l4);
            f[16..18].copy_from_slice(&(20 + l4_len).to_be_bytes());
            err(&f, MALFORMED_L4);
        }
        let mut f = frame4(&[], 5, 0, proto, &l4);
        f[16..18].copy_from_slice(&(20 + min).to_be_bytes());
        assert!(matches!(parse(&f[..]), Ok(Frame::Ip(p)) if p.l4_len == min));
    }
}

#[test]
fn tcp_data_offset_below_five_is_malformed_l4() {
    for doff in 0..5u8 {
        let mut f = frame4(&[], 5, 0, IPPROTO_TCP, &tcp(1, 22, 0));
        f[ETH_HLEN + 20 + 12] = doff << 4;
        err(&f, MALFORMED_L4);
    }
    // Data offsets above 5 are not checked against the frame (options are not read).
    let mut f = frame4(&[], 5, 0, IPPROTO_TCP, &tcp(1, 22, 0));
    f[ETH_HLEN + 20 + 12] = 15 << 4;
    ok(&f, ports(v4(IPPROTO_TCP, 14, 5, 20), 1, 22));
}

#[test]
fn ipv4_fragments() {
    let l4 = tcp(1234, 22, TCP_SYN);
    let full = flags(ports(v4(IPPROTO_TCP, 14, 5, 20), 1234, 22), TCP_SYN);
    // DF alone is not a fragment.
    ok(&frame4(&[], 5, 0x4000, IPPROTO_TCP, &l4), full);
    // First fragment: offset 0, more fragments; layer 4 is parsed.
    ok(
        &frame4(&[], 5, 0x2000, IPPROTO_TCP, &l4),
        frag(full, FRAG_FIRST),
    );
    // Later fragments: no ports, no flags, whatever the bytes after the header say.
    let later = frag(v4(IPPROTO_TCP, 14, 5, 20), FRAG_LATER);
    for field in [0x0001, 0x2001, 0x1fff, 0x3fff, 0x00b9] {
        ok(&frame4(&[], 5, field, IPPROTO_TCP, &l4), later);
    }
    // A later fragment needs no layer-4 bytes at all, not even a minimum length.
    ok(
        &frame4(&[], 5, 0x0010, IPPROTO_UDP, &[]),
        frag(v4(IPPROTO_UDP, 14, 5, 0), FRAG_LATER),
    );
    ok(
        &frame4(&[], 5, 0x0010, IPPROTO_TCP, &[0xde, 0xad]),
        frag(v4(IPPROTO_TCP, 14, 5, 2), FRAG_LATER),
    );
    // A first fragment too short for its TCP header is malformed (tiny-fragment attack).
    err(&frame4(&[], 5, 0x2000, IPPROTO_TCP, &l4[..8]), MALFORMED_L4);
}

// ---------------------------------------------------------------------------------------
// IPv6

#[test]
fn ipv6_basic() {
    ok(
        &frame6(&[], &[], IPPROTO_TCP, &tcp(1, 2, TCP_ACK)),
        flags(ports(v6(IPPROTO_TCP, 14, 0, 20), 1, 2), TCP_ACK),
    );
    ok(
        &frame6(&[], &[], IPPROTO_UDP, &udp(3, 4)),
        ports(v6(IPPROTO_UDP, 14, 0, 8), 3, 4),
    );
    ok(
        &frame6(&[], &[], IPPROTO_ICMPV6, &icmp(128, 0)),
        ports(v6(IPPROTO_ICMPV6, 14, 0, 8), 0, 0x8000),
    );
    ok(
        &frame6(&[], &[], IPPROTO_NONE, &[]),
        v6(IPPROTO_NONE, 14, 0, 0),
    );
    ok(
        &frame6(&[ETH_P_8021Q], &[], IPPROTO_GRE, &[0; 4]),
        v6(IPPROTO_GRE, 18, 0, 4),
    );
}

#[test]
fn ipv6_bad_version_or_short_header_is_malformed_l3() {
    let good = frame6(&[], &[], IPPROTO_TCP, &tcp(1, 2, 0));
    for version in [0u8, 4, 7, 15] {
        let mut f = good.clone();
        f[ETH_HLEN] = version << 4;
        err(&f, MALFORMED_L3);
    }
    for n in ETH_HLEN..ETH_HLEN + 40 {
        err(&good[..n], MALFORMED_L3);
    }
    // An IPv4 header behind the IPv6 ethertype and vice versa.
    let mut f = frame4(&[], 5, 0, IPPROTO_TCP, &tcp(1, 2, 0));
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    err(&f, MALFORMED_L3);
    let mut f = good;
    f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    err(&f, MALFORMED_L3);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let l4 = tcp(5000, 22, TCP_SYN);
    let cases: [(&[Ext], usize, u8); 8] = [
        (&[hbh(0)], 8, FRAG_NONE),
        (&[rt(2)], 24, FRAG_NONE),
        (&[dst(1)], 16, FRAG_NONE),
        (&[Ext::Ah(4)], 24, FRAG_NONE),
        (&[Ext::Frag(0, true)], 8, FRAG_FIRST),
        // An atomic fragment (offset 0, no more fragments) carries layer 4 as well.
        (&[Ext::Frag(0, false)], 8, FRAG_FIRST),
        (&[hbh(0), rt(1), Ext::Frag(0, true), dst(0)], 40, FRAG_FIRST),
        (
            &[hbh(1), dst(0), rt(0), Ext::Ah(1), dst(2), dst(0)],
            76,
            FRAG_NONE,
        ),
    ];
    for (exts, ext_len, fr) in cases {
        for tags in [&[][..], &[ETH_P_8021AD, ETH_P_8021Q][..]] {
            let l3 = ETH_HLEN + 4 * tags.len();
            let want = flags(ports(v6(IPPROTO_TCP, l3, ext_len, 20), 5000, 22), TCP_SYN);
            ok(&frame6(tags, exts, IPPROTO_TCP, &l4), frag(want, fr));
        }
    }
}

#[test]
fn ipv6_chain_bound() {
    assert_eq!(MAX_IPV6_EXT_HEADERS, 6);
    let l4 = udp(1, 53);
    // Exactly the bound: parsed.
    let six = [dst(0); MAX_IPV6_EXT_HEADERS];
    ok(
        &frame6(&[], &six, IPPROTO_UDP, &l4),
        ports(v6(IPPROTO_UDP, 14, 48, 8), 1, 53),
    );
    // One more, of any kind: refused.
    for seventh in [
        hbh(0),
        rt(0),
        dst(0),
        Ext::Ah(1),
        Ext::Frag(0, true),
        Ext::Frag(9, false),
    ] {
        let mut seven = six.to_vec();
        seven.push(seventh);
        err(&frame6(&[], &seven, IPPROTO_UDP, &l4), IPV6_EXT_CHAIN);
    }
    // A later-fragment header ends the walk, so it may be the sixth.
    let mut five_and_frag = [dst(0); MAX_IPV6_EXT_HEADERS].to_vec();
    five_and_frag[5] = Ext::Frag(10, true);
    ok(
        &frame6(&[], &five_and_frag, IPPROTO_UDP, &l4),
        frag(v6(IPPROTO_UDP, 14, 48, 8), FRAG_LATER),
    );
}

#[test]
fn ipv6_later_fragment_has_no_layer4() {
    for exts in [
        &[Ext::Frag(1, true)][..],
        &[Ext::Frag(8191, false)][..],
        &[hbh(0), Ext::Frag(100, true)][..],
    ] {
        let ext_len = exts.len() * 8;
        ok(
            &frame6(&[], exts, IPPROTO_TCP, &tcp(1, 22, TCP_SYN)),
            frag(v6(IPPROTO_TCP, 14, ext_len, 20), FRAG_LATER),
        );
        // Nothing after the fragment header is read: not even what follows it.
        ok(
            &frame6(&[], exts, IPPROTO_HOPOPTS, &[]),
            frag(v6(IPPROTO_HOPOPTS, 14, ext_len, 0), FRAG_LATER),
        );
    }
}

#[test]
fn ipv6_chain_longer_than_payload_is_ext_chain() {
    let mut f = frame6(&[], &[hbh(1)], IPPROTO_NONE, &[]);
    ok(&f, v6(IPPROTO_NONE, 14, 16, 0));
    f[18..20].copy_from_slice(&15u16.to_be_bytes());
    err(&f, IPV6_EXT_CHAIN);
    // Payload length too short for TCP once the chain is subtracted.
    let mut f = frame6(&[], &[dst(0)], IPPROTO_TCP, &tcp(1, 22, 0));
    f[18..20].copy_from_slice(&27u16.to_be_bytes());
    err(&f, MALFORMED_L4);
    // Payload length beyond the frame: believed, like the IPv4 total length.
    let mut f = frame6(&[], &[dst(0)], IPPROTO_TCP, &tcp(1, 22, 0));
    f[18..20].copy_from_slice(&9000u16.to_be_bytes());
    ok(&f, ports(v6(IPPROTO_TCP, 14, 8, 8992), 1, 22));
}

#[test]
fn ipv6_chain_beyond_max_l4_offset_is_ext_chain() {
    assert_eq!(MAX_L4_OFFSET, 4096);
    // Two 2 KiB headers put layer 4 at 14 + 40 + 4096, past the bound; the frame only needs
    // the two bytes of the second header that are read before the bound is checked.
    let f = frame6(&[], &[dst(255), dst(255)], IPPROTO_UDP, &udp(1, 2));
    err(&f, IPV6_EXT_CHAIN);
    // One 2 KiB header is fine.
    let f = frame6(&[], &[dst(255)], IPPROTO_UDP, &udp(1, 2));
    ok(&f, ports(v6(IPPROTO_UDP, 14, 2048, 8), 1, 2));
}

#[test]
fn ipv6_truncated_chain_is_ext_chain() {
    // Cut inside the hop-by-hop header (54..62) or the fragment header (62..70): the chain
    // is truncated. Cut inside TCP (70..90): layer 4 is.
    let f = frame6(
        &[],
        &[hbh(0), Ext::Frag(0, true)],
        IPPROTO_TCP,
        &tcp(1, 22, 0),
    );
    for n in 54..70 {
        err(&f[..n], IPV6_EXT_CHAIN);
    }
    for n in 70..90 {
        err(&f[..n], MALFORMED_L4);
    }
}

#[test]
fn ipv6_extension_header_cut_inside_its_body_is_ext_chain() {
    // Only the first two bytes of an options header are read to find the next one, but the
    // whole header must be in the frame: otherwise a chain cut short would pass with layer 4
    // past the end of the frame whenever the protocol behind it is one the parser does not
    // read (GRE, no-next-header, ESP...).
    for proto in [IPPROTO_NONE, IPPROTO_GRE, IPPROTO_TCP] {
        let f = frame6(&[], &[hbh(1)], proto, &[]);
        for n in 56..70 {
            err(&f[..n], IPV6_EXT_CHAIN);
        }
        let f = frame6(&[], &[Ext::Ah(4)], proto, &[]);
        for n in 56..78 {
            err(&f[..n], IPV6_EXT_CHAIN);
        }
    }
}

#[test]
fn ipv6_v4_mapped_source_keeps_family_six() {
    // An IPv6 packet whose source is ::ffff:192.0.2.1 carries exactly the 16 bytes an IPv4
    // packet from 192.0.2.1 is given; only `family` tells them apart.
    let mut f = frame6(&[], &[], IPPROTO_UDP, &udp(1, 2));
    f[22..38].copy_from_slice(&v4_mapped(SRC4));
    let mut want = ports(v6(IPPROTO_UDP, 14, 0, 8), 1, 2);
    want.src = v4_mapped(SRC4);
    ok(&f, want);
    let Ok(Frame::Ip(p4)) = parse(&frame4(&[], 5, 0, IPPROTO_UDP, &udp(1, 2))[..]) else {
        panic!("IPv4 frame must parse");
    };
    assert_eq!(p4.src, want.src);
    assert_eq!((p4.family, want.family), (FAMILY_V4, FAMILY_V6));
}

#[test]
fn padding_after_the_ip_packet_is_legal() {
    for pad in [1usize, 6, 100] {
        let mut f = frame6(&[], &[hbh(0)], IPPROTO_UDP, &udp(7, 8));
        f.extend(std::iter::repeat_n(0, pad));
        ok(&f, ports(v6(IPPROTO_UDP, 14, 8, 8), 7, 8));
        let mut f = frame4(&[ETH_P_8021Q], 6, 0, IPPROTO_TCP, &tcp(7, 8, 0));
        f.extend(std::iter::repeat_n(0xee, pad));
        ok(&f, ports(v4(IPPROTO_TCP, 18, 6, 20), 7, 8));
    }
}

// ---------------------------------------------------------------------------------------
// Every cut of valid frames

/// Cuts `f` at every length below its own and checks each against `expect(n)`; `None`
/// means the prefix still parses to the same packet as the whole frame.
#[track_caller]
fn every_cut(f: &[u8], expect: impl Fn(usize) -> Option<u32>) {
    let Ok(Frame::Ip(whole)) = parse(f) else {
        panic!("the whole frame must parse");
    };
    for n in 0..f.len() {
        let got = parse(&f[..n]);
        match expect(n) {
            Some(r) => assert_eq!(got, Err(r), "cut at {n} of {}", f.len()),
            None => assert_eq!(got, Ok(Frame::Ip(whole)), "cut at {n} of {}", f.len()),
        }
    }
}

#[test]
fn every_cut_of_tcp_ipv4_with_payload() {
    let mut l4 = tcp(1, 22, TCP_SYN);
    l4.extend_from_slice(b"payload");
    let f = frame4(&[], 5, 0, IPPROTO_TCP, &l4);
    every_cut(&f, |n| match n {
        0..14 => Some(MALFORMED_L2),
        14..34 => Some(MALFORMED_L3),
        34..54 => Some(MALFORMED_L4),
        // The payload is never read.
        _ => None,
    });
}

#[test]
fn every_cut_of_udp_ipv6() {
    let f = frame6(&[], &[], IPPROTO_UDP, &udp(1, 53));
    every_cut(&f, |n| match n {
        0..14 => Some(MALFORMED_L2),
        14..54 => Some(MALFORMED_L3),
        _ => Some(MALFORMED_L4),
    });
}

#[test]
fn every_cut_of_icmp_ipv4() {
    let f = frame4(&[ETH_P_8021Q], 5, 0, IPPROTO_ICMP, &icmp(8, 0));
    every_cut(&f, |n| match n {
        0..18 => Some(MALFORMED_L2),
        18..38 => Some(MALFORMED_L3),
        38..42 => Some(MALFORMED_L4),
        // Only type, code and checksum (4 bytes) are required of an ICMP header.
        _ => None,
    });
}

#[test]
fn every_cut_of_qinq_tcp_ipv6_with_extension_headers() {
    let f = frame6(
        &[ETH_P_8021AD, ETH_P_8021Q],
        &[hbh(0), rt(1), Ext::Frag(0, true), dst(0)],
        IPPROTO_TCP,
        &tcp(1, 22, TCP_SYN),
    );
    assert_eq!(f.len(), 122);
    every_cut(&f, |n| match n {
        // Ethernet 0..14, tags 14..22.
        0..22 => Some(MALFORMED_L2),
        // IPv6 22..62.
        22..62 => Some(MALFORMED_L3),
        // Hop-by-hop 62..70, routing 70..86, fragment 86..94, destination options 94..102.
        62..102 => Some(IPV6_EXT_CHAIN),
        // TCP 102..122.
        _ => Some(MALFORMED_L4),
    });
}

// ---------------------------------------------------------------------------------------
// Properties

/// Checks the invariants of a parse result on `b`: never a panic, errors are parser reasons,
/// and every offset of an `Ok` packet lies inside the buffer.
fn check_invariants(b: &[u8]) -> Result<(), TestCaseError> {
    match parse(b) {
        Err(r) => prop_assert!(
            [MALFORMED_L2, MALFORMED_L3, IPV6_EXT_CHAIN, MALFORMED_L4].contains(&r),
            "unexpected reason {r}"
        ),
        Ok(Frame::NotIp) => prop_assert!(b.len() >= ETH_HLEN),
        Ok(Frame::Ip(p)) => {
            let l3 = usize::from(p.l3_offset);
            let l4 = usize::from(p.l4_offset);
            prop_assert!([ETH_HLEN, ETH_HLEN + 4, ETH_HLEN + 8].contains(&l3));
            let min_l3 = match p.family {
                FAMILY_V4 => 20,
                FAMILY_V6 => 40,
                other => return Err(TestCaseError::fail(format!("family {other}"))),
            };
            prop_assert!(l3 + min_l3 <= l4, "l3 {l3} l4 {l4}");
            prop_assert!(l4 <= b.len(), "l4 offset {l4} beyond {} bytes", b.len());
            prop_assert!(p.frag <= FRAG_LATER);
            if p.family == FAMILY_V4 {
                prop_assert_eq!(&p.src[..12], &v4_mapped([0; 4])[..12]);
                prop_assert_eq!(&p.dst[..12], &v4_mapped([0; 4])[..12]);
            }
            if p.frag == FRAG_LATER {
                prop_assert_eq!((p.sport, p.dport, p.tcp_flags), (0, 0, 0));
            } else {
                let need = match p.proto {
                    IPPROTO_TCP => 20,
                    IPPROTO_UDP => 8,
                    IPPROTO_ICMP | IPPROTO_ICMPV6 => 4,
                    _ => 0,
                };
                prop_assert!(l4 + need <= b.len());
                prop_assert!(usize::from(p.l4_len) >= need);
                if need == 0 {
                    prop_assert_eq!((p.sport, p.dport, p.tcp_flags), (0, 0, 0));
                }
            }
        }
    }
    Ok(())
}

/// Valid-looking frames: random tags, family, options or extension headers and layer 4.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    let tags = prop::collection::vec(prop::sample::select(vec![ETH_P_8021Q, ETH_P_8021AD]), 0..=2);
    let l4 = prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u8>()).prop_map(|(s, d, f)| (IPPROTO_TCP, tcp(s, d, f))),
        (any::<u16>(), any::<u16>()).prop_map(|(s, d)| (IPPROTO_UDP, udp(s, d))),
        (any::<u8>(), any::<u8>()).prop_map(|(t, c)| (IPPROTO_ICMP, icmp(t, c))),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(|b| (IPPROTO_GRE, b)),
    ];
    let ext = prop_oneof![
        (
            prop::sample::select(vec![IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS]),
            0..4u8
        )
            .prop_map(|(k, l)| Ext::Opt(k, l)),
        (0..3u16, any::<bool>()).prop_map(|(o, m)| Ext::Frag(o, m)),
        (0..6u8).prop_map(Ext::Ah),
    ];
    let exts = prop::collection::vec(ext, 0..=7);
    let payload = prop::collection::vec(any::<u8>(), 0..24);
    (
        tags,
        any::<bool>(),
        5..=15u8,
        any::<u16>(),
        l4,
        exts,
        payload,
    )
        .prop_map(
            |(tags, v6, ihl, frag_field, (proto, mut l4), exts, payload)| {
                l4.extend_from_slice(&payload);
                if v6 {
                    let proto = if proto == IPPROTO_ICMP {
                        IPPROTO_ICMPV6
                    } else {
                        proto
                    };
                    frame6(&tags, &exts, proto, &l4)
                } else {
                    frame4(&tags, ihl, frag_field & 0x3fff, proto, &l4)
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..256)) {
        check_invariants(&b)?;
    }

    #[test]
    fn arbitrary_ip_like_bytes_never_panic(
        tags in prop::collection::vec(prop::sample::select(vec![ETH_P_8021Q, ETH_P_8021AD]), 0..=3),
        v6 in any::<bool>(),
        rest in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut b = eth(&tags, if v6 { ETH_P_IPV6 } else { ETH_P_IP });
        let mut rest = rest;
        if let Some(first) = rest.first_mut() {
            // Mostly the right version so the random bytes reach the deeper layers.
            *first = (if v6 { 0x60 } else { 0x40 }) | (*first & 0x0f);
        }
        b.extend_from_slice(&rest);
        check_invariants(&b)?;
    }

    #[test]
    fn mutated_and_cut_frames_never_panic(
        f in valid_frame(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut f = f;
        for (at, byte) in edits {
            let i = at.index(f.len());
            f[i] = byte;
        }
        check_invariants(&f)?;
        let n = cut.index(f.len() + 1);
        check_invariants(&f[..n])?;
    }

    /// Cutting a frame short never changes what it parses to: it parses the same or fails.
    #[test]
    fn a_prefix_parses_the_same_or_not_at_all(
        f in valid_frame(),
        cut in any::<prop::sample::Index>(),
    ) {
        let n = cut.index(f.len() + 1);
        if let Ok(prefix) = parse(&f[..n]) {
            prop_assert_eq!(Ok(prefix), parse(&f[..]));
        }
    }
}

/// Per-source rate buckets: the prefix lengths count within the family, and 0 (a policy
/// header written before the setting existed) keeps the whole address.
#[test]
fn rate_sources_are_cut_to_their_family_prefix() {
    use palisade_common::packet::{keep_prefix, rate_prefix_bits};
    assert_eq!(rate_prefix_bits(true, 24, 64), 96 + 24);
    assert_eq!(rate_prefix_bits(true, 32, 64), 128);
    assert_eq!(rate_prefix_bits(true, 0, 64), 128);
    assert_eq!(rate_prefix_bits(false, 24, 64), 64);
    assert_eq!(rate_prefix_bits(false, 24, 0), 128);
    assert_eq!(rate_prefix_bits(false, 24, 128), 128);
    let v4 = v4_mapped([203, 0, 113, 77]);
    assert_eq!(
        keep_prefix(&v4, rate_prefix_bits(true, 20, 64)),
        v4_mapped([203, 0, 112, 0])
    );
    let v6 = [
        0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4,
    ];
    assert_eq!(
        keep_prefix(&v6, rate_prefix_bits(false, 32, 64)),
        [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        keep_prefix(&v6, rate_prefix_bits(false, 32, 60)),
        [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(keep_prefix(&v6, rate_prefix_bits(false, 32, 0)), v6);
}

#[test]
fn tos_and_ttl_are_read_from_both_families() {
    // IPv4: the TOS byte and the TTL as they are.
    let mut f = frame4(&[], 5, 0, IPPROTO_UDP, &udp(1, 2));
    f[ETH_HLEN + 1] = 0xb9; // DSCP 46 (EF), ECN 1 (ECT(1))
    f[ETH_HLEN + 8] = 3;
    let mut want = ports(v4(IPPROTO_UDP, ETH_HLEN, 5, 8), 1, 2);
    want.tos = 0xb9;
    want.ttl = 3;
    ok(&f, want);
    // IPv6: the traffic class straddles the first two bytes; the hop limit is byte 7.
    let mut f = frame6(&[], &[], IPPROTO_UDP, &udp(1, 2));
    f[ETH_HLEN] = 0x6b;
    f[ETH_HLEN + 1] = 0x9f; // traffic class 0xb9, flow label bits left set
    f[ETH_HLEN + 7] = 255;
    let mut want = ports(v6(IPPROTO_UDP, ETH_HLEN, 0, 8), 1, 2);
    want.tos = 0xb9;
    want.ttl = 255;
    ok(&f, want);
    // A non-first fragment still has its layer-3 fields.
    let mut f = frame4(&[], 5, 0x0010, IPPROTO_UDP, &[0; 8]);
    f[ETH_HLEN + 1] = 0x03;
    f[ETH_HLEN + 8] = 1;
    let mut want = frag(v4(IPPROTO_UDP, ETH_HLEN, 5, 8), FRAG_LATER);
    want.tos = 0x03;
    want.ttl = 1;
    ok(&f, want);
}
