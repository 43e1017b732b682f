//! Packet parsing from Ethernet to layer 4, shared by the kernel programs and the userspace
//! reference.
//!
//! The parser is generic over [`Bytes`]: in the kernel it reads through bounds-checked
//! pointers into the XDP/skb frame, in userspace through a slice. Every loop is bounded by a
//! named constant and every offset stays below [`MAX_L4_OFFSET`], which is what lets the
//! verifier accept variable offsets.

use crate::reason;

/// Read access to a frame. `load` returns `None` when `N` bytes at `offset` are not all inside
/// the frame.
pub trait Bytes {
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    /// The `W` four-byte words from `offset` on, each in frame order (`to_ne_bytes` gives
    /// its bytes back in the frame's order); `None` when they are not all inside the frame.
    /// The parser reads its headers this way: a frame where whole words may be loaded (XDP,
    /// direct packet access in TC) overrides it with one bounds check and one instruction
    /// per word, where `load` of an array takes one load per byte on the BPF target and
    /// spills each byte to the stack.
    #[inline(always)]
    fn words32<const W: usize>(&self, offset: usize) -> Option<[u32; W]> {
        let mut out = [0u32; W];
        let mut i = 0;
        while i < W {
            out[i] = u32::from_ne_bytes(self.load::<4>(offset + 4 * i)?);
            i += 1;
        }
        Some(out)
    }

    /// The `W` eight-byte words from `offset` on, as [`Bytes::words32`].
    #[inline(always)]
    fn words64<const W: usize>(&self, offset: usize) -> Option<[u64; W]> {
        let mut out = [0u64; W];
        let mut i = 0;
        while i < W {
            out[i] = u64::from_ne_bytes(self.load::<8>(offset + 8 * i)?);
            i += 1;
        }
        Some(out)
    }
}

impl Bytes for [u8] {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        let s = self.get(offset..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Some(out)
    }
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// VLAN tags parsed (802.1Q and 802.1ad); a frame with more is dropped as `malformed-l2`.
pub const VLAN_MAX_DEPTH: usize = 2;
/// IPv6 extension headers walked before the chain is declared hostile (`ipv6-ext-chain`).
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// No layer-4 header may start beyond this offset. Real headers stay far below it (2 VLAN
/// tags + 40 + 6 extension headers of at most 2 KiB is the theoretical worst); the bound
/// exists so the verifier can prove every variable offset is finite.
pub const MAX_L4_OFFSET: usize = 4096;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// Address family codes used in packets, tuples and events.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Fragment state of a packet.
pub const FRAG_NONE: u8 = 0;
/// First fragment: offset 0, more-fragments set (or an atomic IPv6 fragment). Has layer 4.
pub const FRAG_FIRST: u8 = 1;
/// Non-first fragment: no layer-4 header; ports, flags and ICMP type are unknown.
pub const FRAG_LATER: u8 = 2;

/// Whether an address (IPv4 mapped into IPv6, as [`Packet`] holds it) is one nothing
/// should ever be answered at or from: IPv4 multicast, the reserved 240/4 block and the
/// limited broadcast `255.255.255.255`, IPv6 multicast, and the unspecified address.
#[inline(always)]
#[must_use]
pub fn is_group_or_unspecified(family: u8, a: &[u8; 16]) -> bool {
    if family == FAMILY_V4 {
        a[12] >= 224 || (a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 0)
    } else {
        let mut zero = true;
        let mut i = 0;
        while i < 16 {
            zero &= a[i] == 0;
            i += 1;
        }
        a[0] == 0xff || zero
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// What the classifier needs to know about an IP packet.
///
/// Addresses are 16 bytes: IPv6 as is, IPv4 as `::ffff:a.b.c.d`, so one set of maps and one
/// key layout serve both families. The tracker reads the addresses as words
/// ([`Packet::src_words`]): byte arrays copied by value are split into single bytes, each
/// spilled to the BPF stack. (Not aligned beyond its fields' 2: a 4-aligned packet grows the
/// parser's frame, which the egress hook's call chain cannot afford.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    pub frag: u8,
    pub tcp_flags: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Source port; 0 for ICMP and for protocols without ports.
    pub sport: u16,
    /// Destination port; for ICMP/ICMPv6 `type << 8 | code`.
    pub dport: u16,
    /// Offset of the IP header in the frame.
    pub l3_offset: u16,
    /// Offset of the layer-4 header (meaningless for `FRAG_LATER`).
    pub l4_offset: u16,
    /// Bytes of IP payload from `l4_offset` to the end of the IP packet as the header says.
    pub l4_len: u16,
    /// Connection-tracking state bit (`conntrack::STATE_*`) once the tracker has classified
    /// the packet; 0 before (the parser leaves it 0).
    pub ct_state: u8,
    /// A reason code (`reason::SHIELD_*`) when a shield condemned the packet in the tracker's
    /// stage; the rules stage drops it before any rule. 0 otherwise (the parser leaves it 0).
    pub shield: u8,
    /// IPv4 type of service or IPv6 traffic class: DSCP in the high six bits, ECN in the low
    /// two.
    pub tos: u8,
    /// IPv4 time to live or IPv6 hop limit.
    pub ttl: u8,
}

impl Packet {
    /// All fields zero.
    pub const EMPTY: Self = Self {
        family: 0,
        proto: 0,
        frag: 0,
        tcp_flags: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        l3_offset: 0,
        l4_offset: 0,
        l4_len: 0,
        ct_state: 0,
        shield: 0,
        tos: 0,
        ttl: 0,
    };

    /// The IP packet's length as its header gives it (IPv4 total length, IPv6 40 plus the
    /// payload length), without the link layer: the header's bytes up to layer 4 plus the
    /// layer-4 bytes. Wrapping, as the verifier cannot see the parser's bounds.
    #[inline(always)]
    #[must_use]
    pub const fn ip_len(&self) -> u16 {
        self.l4_offset
            .wrapping_sub(self.l3_offset)
            .wrapping_add(self.l4_len)
    }

    /// The source address as four native-endian words.
    #[inline(always)]
    #[must_use]
    pub const fn src_words(&self) -> [u32; 4] {
        // SAFETY: 16 readable bytes; the read makes no alignment assumption.
        unsafe { core::ptr::read_unaligned(self.src.as_ptr().cast::<[u32; 4]>()) }
    }

    /// The destination address as four native-endian words.
    #[inline(always)]
    #[must_use]
    pub const fn dst_words(&self) -> [u32; 4] {
        // SAFETY: as for `src_words`.
        unsafe { core::ptr::read_unaligned(self.dst.as_ptr().cast::<[u32; 4]>()) }
    }

    /// Writes both addresses from their native-endian words, a 16-bit word at a time (the
    /// fields' alignment): no byte of them is built, or spilled, on its own. The writes are
    /// volatile so that the compiler does not turn an IPv4 address's run of zero words into
    /// a call of `memset` (which on the BPF target is a function of its own, called per
    /// packet).
    #[inline(always)]
    pub fn set_addresses(&mut self, src: [u32; 4], dst: [u32; 4]) {
        let (src, dst) = (halves(src), halves(dst));
        let s = self.src.as_mut_ptr().cast::<u16>();
        let d = self.dst.as_mut_ptr().cast::<u16>();
        let mut i = 0;
        while i < 8 {
            // SAFETY: `src` and `dst` sit at even offsets of a 2-aligned struct, so both are
            // 2-aligned, and each is 16 writable bytes: eight 16-bit words.
            unsafe {
                s.add(i).write_volatile(src[i]);
                d.add(i).write_volatile(dst[i]);
            }
            i += 1;
        }
    }

    /// Clears what the parser's layer-4 step and the later stages fill (ports, TCP flags,
    /// the tracker's state, a shield's reason) and sets the IP header's `tos` and `ttl`.
    #[inline(always)]
    pub const fn set_l4_rest(&mut self, tos: u8, ttl: u8) {
        self.tcp_flags = 0;
        self.sport = 0;
        self.dport = 0;
        self.ct_state = 0;
        self.shield = 0;
        self.tos = tos;
        self.ttl = ttl;
    }
}

/// The result of parsing a frame that is not malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): never filtered.
    NotIp,
    Ip(Packet),
}

/// Parses Ethernet, VLAN tags, IPv4/IPv6 (with options and extension headers) and the first
/// bytes of TCP/UDP/ICMP/ICMPv6. The error is a drop reason from [`crate::reason`].
#[inline(always)]
pub fn parse<B: Bytes + ?Sized>(b: &B) -> Result<Frame, u32> {
    let mut p = Packet::EMPTY;
    if parse_frame::<false, B>(b, &mut p)? {
        Ok(Frame::Ip(p))
    } else {
        Ok(Frame::NotIp)
    }
}

/// [`parse`] writing the packet into `out` in place (a map slot): `Ok(true)` for an IP
/// packet, `Ok(false)` for a frame that is not IP (`out` is then unchanged). The XDP
/// firewall parses this way: the addresses are written a 16-bit word at a time, where a
/// packet built whole and then copied costs a store and a stack spill per address byte.
/// (Only into a map value: on the stack, the verifier's walk of the TC programs that parse
/// grows past its limit with these writes.)
///
/// # Errors
/// A drop reason from [`crate::reason`]; `out` then holds no packet.
#[inline(always)]
pub fn parse_into<B: Bytes + ?Sized>(b: &B, out: &mut Packet) -> Result<bool, u32> {
    parse_frame::<true, B>(b, out)
}

/// [`parse`] into `out`; `IN_PLACE` writes the addresses by 16-bit words ([`parse_into`]).
#[inline(always)]
fn parse_frame<const IN_PLACE: bool, B: Bytes + ?Sized>(
    b: &B,
    out: &mut Packet,
) -> Result<bool, u32> {
    // The last word of the Ethernet header: its load checks the whole header is there.
    let [eth] = b.words32::<1>(ETH_HLEN - 4).ok_or(reason::MALFORMED_L2)?;
    let eth = eth.to_ne_bytes();
    let mut ethertype = u16::from_be_bytes([eth[2], eth[3]]);
    let mut off = ETH_HLEN;
    let mut depth = 0;
    // Bounded by VLAN_MAX_DEPTH + 1 so a third tag is seen and rejected.
    while depth <= VLAN_MAX_DEPTH {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        if depth == VLAN_MAX_DEPTH {
            return Err(reason::MALFORMED_L2);
        }
        let [tag] = b.words32::<1>(off).ok_or(reason::MALFORMED_L2)?;
        let tag = tag.to_ne_bytes();
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
        depth += 1;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4_into::<IN_PLACE, B>(b, off, out).map(|()| true),
        ETH_P_IPV6 => parse_ipv6_into::<IN_PLACE, B>(b, off, out).map(|()| true),
        _ => Ok(false),
    }
}

/// [`parse_l3`] writing the packet into `out` in place (a map slot), for hooks whose call
/// chain cannot afford the packet's copies on the stack: `Ok(false)` for a frame that is not
/// IP (`out` is then unchanged).
///
/// # Errors
/// A drop reason from [`crate::reason`], as [`parse_l3`]; `out` then holds no packet.
#[inline(always)]
pub fn parse_l3_into<B: Bytes + ?Sized>(
    b: &B,
    ethertype: u16,
    out: &mut Packet,
) -> Result<bool, u32> {
    match ethertype {
        ETH_P_IP => parse_ipv4_into::<false, B>(b, 0, out).map(|()| true),
        ETH_P_IPV6 => parse_ipv6_into::<false, B>(b, 0, out).map(|()| true),
        _ => Ok(false),
    }
}

/// Parses a frame that starts with the IP header (what cgroup and some TC hooks see);
/// `ethertype` says which IP version to expect.
#[inline(always)]
pub fn parse_l3<B: Bytes + ?Sized>(b: &B, ethertype: u16) -> Result<Frame, u32> {
    let mut p = Packet::EMPTY;
    if parse_l3_into(b, ethertype, &mut p)? {
        Ok(Frame::Ip(p))
    } else {
        Ok(Frame::NotIp)
    }
}

#[inline(always)]
fn parse_ipv4_into<const IN_PLACE: bool, B: Bytes + ?Sized>(
    b: &B,
    off: usize,
    out: &mut Packet,
) -> Result<(), u32> {
    let [h, frag_word, ttl_proto, src, dst] = b.words32::<5>(off).ok_or(reason::MALFORMED_L3)?;
    let [h, frag_word, ttl_proto] = [h, frag_word, ttl_proto].map(u32::to_ne_bytes);
    if h[0] >> 4 != 4 {
        return Err(reason::MALFORMED_L3);
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if ihl < 20 || total < ihl {
        return Err(reason::MALFORMED_L3);
    }
    // The whole header, options included, must be in the frame; the payload may be cut
    // short only where the L4 checks below notice.
    if b.load::<1>(off + ihl - 1).is_none() {
        return Err(reason::MALFORMED_L3);
    }
    let frag_field = u16::from_be_bytes([frag_word[2], frag_word[3]]);
    let more = frag_field & 0x2000 != 0;
    let frag_off = frag_field & 0x1fff;
    out.family = FAMILY_V4;
    out.proto = ttl_proto[1];
    out.frag = if frag_off != 0 {
        FRAG_LATER
    } else if more {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    if IN_PLACE {
        out.set_addresses(v4_mapped_words(src), v4_mapped_words(dst));
    } else {
        out.src = v4_mapped(src.to_ne_bytes());
        out.dst = v4_mapped(dst.to_ne_bytes());
    }
    out.l3_offset = off as u16;
    out.l4_offset = (off + ihl) as u16;
    out.l4_len = (total - ihl) as u16;
    out.set_l4_rest(h[1], ttl_proto[0]);
    parse_l4(b, out)
}

#[inline(always)]
fn parse_ipv6_into<const IN_PLACE: bool, B: Bytes + ?Sized>(
    b: &B,
    off: usize,
    out: &mut Packet,
) -> Result<(), u32> {
    let [h, src_high, src_low, dst_high, dst_low] =
        b.words64::<5>(off).ok_or(reason::MALFORMED_L3)?;
    let h = h.to_ne_bytes();
    if h[0] >> 4 != 6 {
        return Err(reason::MALFORMED_L3);
    }
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let mut next = h[6];
    let mut l4 = off + 40;
    let mut frag = FRAG_NONE;
    let mut i = 0;
    while i < MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let e: [u8; 2] = b.load(l4).ok_or(reason::IPV6_EXT_CHAIN)?;
                // AH counts its length in 4-octet units minus 2, the others in 8-octet units
                // not counting the first 8.
                l4 += if next == IPPROTO_AH {
                    (usize::from(e[1]) + 2) * 4
                } else {
                    (usize::from(e[1]) + 1) * 8
                };
                next = e[0];
            }
            IPPROTO_FRAGMENT => {
                let e: [u8; 8] = b.load(l4).ok_or(reason::IPV6_EXT_CHAIN)?;
                next = e[0];
                let field = u16::from_be_bytes([e[2], e[3]]);
                l4 += 8;
                if field & 0xfff8 != 0 {
                    frag = FRAG_LATER;
                    break;
                }
                frag = FRAG_FIRST;
            }
            _ => break,
        }
        if l4 > MAX_L4_OFFSET {
            return Err(reason::IPV6_EXT_CHAIN);
        }
        // Only the first bytes of an options header are read, but the whole header must be
        // in the frame, as IPv4 options must: otherwise a chain cut short would pass, with
        // layer 4 beyond the frame, whenever the protocol behind it is one not read here.
        if b.load::<1>(l4 - 1).is_none() {
            return Err(reason::IPV6_EXT_CHAIN);
        }
        i += 1;
    }
    if i == MAX_IPV6_EXT_HEADERS && is_ext_header(next) {
        return Err(reason::IPV6_EXT_CHAIN);
    }
    let ext_len = l4 - off - 40;
    if ext_len > payload {
        return Err(reason::IPV6_EXT_CHAIN);
    }
    out.family = FAMILY_V6;
    out.proto = next;
    out.frag = frag;
    if IN_PLACE {
        out.set_addresses(
            address_words(src_high, src_low),
            address_words(dst_high, dst_low),
        );
    } else {
        out.src = words_to_address(src_high, src_low);
        out.dst = words_to_address(dst_high, dst_low);
    }
    out.l3_offset = off as u16;
    out.l4_offset = l4 as u16;
    out.l4_len = (payload - ext_len) as u16;
    out.set_l4_rest(h[0] << 4 | h[1] >> 4, h[7]);
    parse_l4(b, out)
}

/// Two words in frame order (as [`Bytes::words64`] reads them) as the 16 bytes they hold.
#[inline(always)]
fn words_to_address(high: u64, low: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&high.to_ne_bytes());
    out[8..].copy_from_slice(&low.to_ne_bytes());
    out
}

/// Two words in frame order (as [`Bytes::words64`] reads them) as the four native-endian
/// words of the address they hold.
#[inline(always)]
const fn address_words(high: u64, low: u64) -> [u32; 4] {
    let h = high.to_ne_bytes();
    let l = low.to_ne_bytes();
    [
        u32::from_ne_bytes([h[0], h[1], h[2], h[3]]),
        u32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
        u32::from_ne_bytes([l[0], l[1], l[2], l[3]]),
        u32::from_ne_bytes([l[4], l[5], l[6], l[7]]),
    ]
}

/// Four native-endian words as the eight native-endian 16-bit words of the same bytes.
#[inline(always)]
const fn halves(w: [u32; 4]) -> [u16; 8] {
    let [a, b, c, d] = [
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    ];
    [
        u16::from_ne_bytes([a[0], a[1]]),
        u16::from_ne_bytes([a[2], a[3]]),
        u16::from_ne_bytes([b[0], b[1]]),
        u16::from_ne_bytes([b[2], b[3]]),
        u16::from_ne_bytes([c[0], c[1]]),
        u16::from_ne_bytes([c[2], c[3]]),
        u16::from_ne_bytes([d[0], d[1]]),
        u16::from_ne_bytes([d[2], d[3]]),
    ]
}

/// An IPv4 address word in frame order (as [`Bytes::words32`] reads it) as the four
/// native-endian words of `::ffff:a.b.c.d`.
#[inline(always)]
const fn v4_mapped_words(addr: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), addr]
}

#[inline(always)]
const fn is_ext_header(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
    )
}

#[inline(always)]
fn parse_l4<B: Bytes + ?Sized>(b: &B, p: &mut Packet) -> Result<(), u32> {
    if p.frag == FRAG_LATER {
        return Ok(());
    }
    let off = usize::from(p.l4_offset);
    if off > MAX_L4_OFFSET {
        return Err(reason::MALFORMED_L4);
    }
    match p.proto {
        IPPROTO_TCP => {
            // The fixed header's five words; only the ports and the data offset and flags
            // are kept.
            let [ports, _, _, t, _] = b
                .words32::<5>(off)
                .ok_or(reason::MALFORMED_L4)?
                .map(u32::to_ne_bytes);
            if t[0] >> 4 < 5 || p.l4_len < 20 {
                return Err(reason::MALFORMED_L4);
            }
            p.sport = u16::from_be_bytes([ports[0], ports[1]]);
            p.dport = u16::from_be_bytes([ports[2], ports[3]]);
            p.tcp_flags = t[1];
        }
        IPPROTO_UDP => {
            let [u, _] = b
                .words32::<2>(off)
                .ok_or(reason::MALFORMED_L4)?
                .map(u32::to_ne_bytes);
            if p.l4_len < 8 {
                return Err(reason::MALFORMED_L4);
            }
            p.sport = u16::from_be_bytes([u[0], u[1]]);
            p.dport = u16::from_be_bytes([u[2], u[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let [i] = b
                .words32::<1>(off)
                .ok_or(reason::MALFORMED_L4)?
                .map(u32::to_ne_bytes);
            if p.l4_len < 4 {
                return Err(reason::MALFORMED_L4);
            }
            p.dport = u16::from_be_bytes([i[0], i[1]]);
        }
        _ => {}
    }
    Ok(())
}

/// Clears every bit of `addr` (the 16-byte form) past its first `bits`, in place (a copy
/// would cost the caller's stack, which is tight in the DNS programs).
#[inline(always)]
pub fn cut_to_prefix(addr: &mut [u8; 16], bits: u32) {
    let mut i = 0;
    while i < 16 {
        let first = (i as u32) * 8;
        if bits <= first {
            addr[i] = 0;
        } else if bits < first + 8 {
            addr[i] &= 0xffu8 << (8 - (bits - first));
        }
        i += 1;
    }
}

/// `addr` (the 16-byte form) with every bit past its first `bits` cleared.
#[inline(always)]
#[must_use]
pub fn keep_prefix(addr: &[u8; 16], bits: u32) -> [u8; 16] {
    let mut out = *addr;
    cut_to_prefix(&mut out, bits);
    out
}

/// How many leading bits of a source address (the 16-byte form) a per-source rate bucket
/// is kept for: `prefix_v4` bits of an IPv4 address (which sits in the last 32 bits) or
/// `prefix_v6` bits of an IPv6 one. A length of 0, as in a policy written before the setting
/// existed, keeps the whole address.
#[inline(always)]
#[must_use]
pub fn rate_prefix_bits(v4: bool, prefix_v4: u8, prefix_v6: u8) -> u32 {
    if v4 {
        if prefix_v4 == 0 || prefix_v4 >= 32 {
            128
        } else {
            96 + u32::from(prefix_v4)
        }
    } else if prefix_v6 == 0 || prefix_v6 >= 128 {
        128
    } else {
        u32::from(prefix_v6)
    }
}

/// `a.b.c.d` as `::ffff:a.b.c.d`.
#[inline(always)]
#[must_use]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// An Ethernet header with `tags` VLAN tags and the ethertype `ethertype`.
    fn eth(tags: usize, ethertype: u16) -> Vec<u8> {
        let mut f = std::vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for i in 0..tags {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// An IPv4 header (no options) for `payload` bytes of `proto`, `frag` its fragment field.
    fn ipv4(proto: u8, frag: u16, payload: usize) -> Vec<u8> {
        let total = (20 + payload) as u16;
        let mut h = std::vec![0x45, 0xb8];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0, 1]);
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[61, proto, 0, 0, 192, 0, 2, 7, 198, 51, 100, 9]);
        h
    }

    /// An IPv6 header for `payload` bytes, the first next header `next`.
    fn ipv6(next: u8, payload: usize) -> Vec<u8> {
        let mut h = std::vec![0x6a, 0x50, 0, 0];
        h.extend_from_slice(&(payload as u16).to_be_bytes());
        h.extend_from_slice(&[next, 17]);
        h.extend((0..16u8).map(|i| 0x20 + i));
        h.extend((0..16u8).map(|i| 0xf0 ^ i));
        h
    }

    fn tcp(flags: u8) -> Vec<u8> {
        let mut t = std::vec![0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags];
        t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        t
    }

    fn udp() -> Vec<u8> {
        std::vec![0x30, 0x39, 0x00, 0x35, 0, 12, 0, 0, 1, 2, 3, 4]
    }

    fn frames() -> Vec<Vec<u8>> {
        let t = tcp(TCP_SYN | TCP_ACK);
        let u = udp();
        let icmp = std::vec![128, 0, 0, 0, 0, 1, 0, 1];
        let hop = std::vec![IPPROTO_ICMPV6, 0, 1, 4, 0, 0, 0, 0];
        let frag = std::vec![IPPROTO_UDP, 0, 0, 1, 0, 0, 0, 7];
        std::vec![
            // IPv4 TCP; UDP behind two VLAN tags; a first and a later fragment.
            [eth(0, ETH_P_IP), ipv4(IPPROTO_TCP, 0, t.len()), t.clone()].concat(),
            [eth(2, ETH_P_IP), ipv4(IPPROTO_UDP, 0, u.len()), u.clone()].concat(),
            [
                eth(0, ETH_P_IP),
                ipv4(IPPROTO_UDP, 0x2000, u.len()),
                u.clone()
            ]
            .concat(),
            [
                eth(0, ETH_P_IP),
                ipv4(IPPROTO_UDP, 0x0010, u.len()),
                u.clone()
            ]
            .concat(),
            // IPv6 TCP; ICMPv6 behind a hop-by-hop header; UDP behind a first fragment
            // header.
            [eth(0, ETH_P_IPV6), ipv6(IPPROTO_TCP, t.len()), t].concat(),
            [eth(1, ETH_P_IPV6), ipv6(IPPROTO_HOPOPTS, 16), hop, icmp].concat(),
            [
                eth(0, ETH_P_IPV6),
                ipv6(IPPROTO_FRAGMENT, 8 + u.len()),
                frag,
                u
            ]
            .concat(),
        ]
    }

    /// A packet whose every field holds something the parser must overwrite (a slot's last
    /// packet, a shield's reason, the tracker's state).
    const STALE: Packet = Packet {
        family: 9,
        proto: 9,
        frag: 9,
        tcp_flags: 0xff,
        src: [0xaa; 16],
        dst: [0xbb; 16],
        sport: 1,
        dport: 2,
        l3_offset: 3,
        l4_offset: 4,
        l4_len: 5,
        ct_state: 6,
        shield: 7,
        tos: 8,
        ttl: 9,
    };

    /// The in-place parser leaves a slot exactly as the copying one builds the packet,
    /// whatever the slot held: every field is written.
    #[test]
    fn parse_into_writes_every_field_as_parse_builds_it() {
        for f in frames() {
            let Ok(Frame::Ip(want)) = parse(f.as_slice()) else {
                panic!("a well-formed IP frame: {f:02x?}");
            };
            let mut slot = STALE;
            assert_eq!(parse_into(f.as_slice(), &mut slot), Ok(true));
            assert_eq!(slot, want, "frame {f:02x?}");
            assert_eq!(
                parse_into(f.as_slice(), &mut Packet::EMPTY.clone()),
                Ok(true)
            );
        }
        // The addresses, as the classifier reads them.
        let mut slot = STALE;
        let f = &frames()[0];
        assert_eq!(parse_into(f.as_slice(), &mut slot), Ok(true));
        assert_eq!(slot.src, v4_mapped([192, 0, 2, 7]));
        assert_eq!(slot.dst, v4_mapped([198, 51, 100, 9]));
        assert_eq!(
            (slot.sport, slot.dport, slot.ttl, slot.tos),
            (40000, 443, 61, 0xb8)
        );
    }

    /// Not IP: the slot is left as it was. Malformed: the same reason as the copying parser.
    #[test]
    fn parse_into_leaves_other_frames_and_refuses_as_parse() {
        let arp = [eth(0, 0x0806), std::vec![0; 28]].concat();
        let mut slot = STALE;
        assert_eq!(parse_into(arp.as_slice(), &mut slot), Ok(false));
        assert_eq!(slot, STALE);
        for f in frames() {
            for cut in [10, 20, 30, 40, 50] {
                let short = &f[..cut.min(f.len())];
                let want = parse(short).map(|fr| matches!(fr, Frame::Ip(_)));
                assert_eq!(parse_into(short, &mut STALE.clone()), want, "{short:02x?}");
            }
        }
    }
}
