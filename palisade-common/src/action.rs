//! What a firewall rule does to a packet it lets through, beyond allowing it: `mark` sets the
//! socket buffer's mark and rewrites the DSCP code point (see `docs/design/firewall.md`,
//! "Actions").
//!
//! XDP has no socket buffer, so the mark travels in the frame's metadata area
//! (`bpf_xdp_adjust_meta`): the firewall writes an [`ActionMeta`] in front of the frame, and
//! the TC ingress program `palisade_action_ingress` reads it back and sets `skb->mark`, where
//! `ip rule fwmark`, tc filters and nftables see it. The DSCP rewrite is a change of packet
//! bytes, done in XDP itself, so that every later stage and the stack see the new value.
//!
//! Some kernels do not let XDP programs call `bpf_xdp_adjust_meta` (the loader probes it). There
//! the firewall hands the action over through a table instead, `ACTION_HANDOFF`, keyed by the
//! packet's own bytes ([`HandoffKey`]: the first 48 bytes from its IP header, or 28 when the
//! frame is shorter), which the TC program reads from the socket buffer the same way and
//! takes the entry it finds. Two packets with the same 48 bytes (the same flow, IP id or
//! sequence number, lengths and checksums: a retransmission) match the same rule and share
//! one entry, so the second one gets no mark; a packet dropped between XDP and TC leaves its
//! entry behind until the table's least recently used entries make room.

use crate::map_type;

/// [`ActionMeta::magic`]: tells what Palisade wrote from metadata something else left.
pub const ACTION_META_MAGIC: u32 = 0x5041_4c31;
/// [`ActionMeta::flags`]: set `skb->mark` to [`ActionMeta::mark`].
pub const META_MARK: u32 = 1;
/// [`ActionMeta::flags`]: send a copy out of interface [`ActionMeta::ifindex`].
pub const META_MIRROR: u32 = 2;

/// The metadata the firewall puts in front of a frame that TC has work to do on (16 bytes:
/// the metadata area takes multiples of 4, at most 32).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActionMeta {
    pub magic: u32,
    /// `META_*` bits: what the TC program does.
    pub flags: u32,
    /// The value for `skb->mark` (with [`META_MARK`]).
    pub mark: u32,
    /// The interface a copy goes out of (with [`META_MIRROR`]).
    pub ifindex: u32,
}
map_type!(ActionMeta, 16);

impl ActionMeta {
    /// Palisade's action (magic set): `META_*` bits `flags`, with its mark and interface.
    #[must_use]
    pub const fn new(flags: u32, mark: u32, ifindex: u32) -> Self {
        Self {
            magic: ACTION_META_MAGIC,
            flags,
            mark,
            ifindex,
        }
    }
}

/// Bytes of a packet that identify it to the handoff table: from the start of its IP header
/// (the IPv6 header and 8 bytes of the next, or the IPv4 header, options and the start of
/// the transport header).
pub const HANDOFF_LEN: usize = 48;
/// The fewest bytes a packet's key holds: an IPv4 header and 8 bytes after it; a frame
/// shorter than [`HANDOFF_LEN`] from its IP header is keyed by these, the rest zero.
pub const HANDOFF_SHORT_LEN: usize = 28;
/// Entries of `ACTION_HANDOFF` (LRU: an entry a dropped packet left behind goes first).
pub const HANDOFF_ENTRIES: u32 = 8192;

/// The key of `ACTION_HANDOFF`: [`HANDOFF_LEN`] bytes of the packet from its IP header (or
/// [`HANDOFF_SHORT_LEN`], the rest zero).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffKey {
    pub bytes: [u8; HANDOFF_LEN],
}
map_type!(HandoffKey, 48);

impl HandoffKey {
    /// The key of a packet given its bytes from the start of its IP header, as the kernel
    /// builds it: the first [`HANDOFF_LEN`] bytes, or [`HANDOFF_SHORT_LEN`] of a shorter
    /// packet (the rest zero); `None` below that.
    #[must_use]
    pub fn of(ip: &[u8]) -> Option<Self> {
        let n = if ip.len() >= HANDOFF_LEN {
            HANDOFF_LEN
        } else if ip.len() >= HANDOFF_SHORT_LEN {
            HANDOFF_SHORT_LEN
        } else {
            return None;
        };
        let mut bytes = [0; HANDOFF_LEN];
        bytes[..n].copy_from_slice(&ip[..n]);
        Some(Self { bytes })
    }
}

/// [`crate::firewall::RuleMeta::flags`]: a `mark` rule sets the packet's mark.
pub const RULE_SET_MARK: u8 = 4;
/// [`crate::firewall::RuleMeta::flags`]: a `mark` rule rewrites the packet's DSCP.
pub const RULE_SET_DSCP: u8 = 8;

/// `ACTION_STATS`: packets a `mark` rule matched (XDP).
pub const AS_MARK_MATCHED: u32 = 0;
/// Mark metadata written in front of the frame for the TC program.
pub const AS_MARK_META_WRITTEN: u32 = 1;
/// `bpf_xdp_adjust_meta` refused (no headroom, or a driver without metadata): the packet
/// went on unmarked (fail-open).
pub const AS_MARK_NO_ROOM: u32 = 2;
/// DSCP code points rewritten (XDP).
pub const AS_DSCP_REWRITTEN: u32 = 3;
/// A frame too short for its parsed IP header to be rewritten (cannot happen for a frame the
/// parser accepted; counted rather than assumed): the DSCP was left alone.
pub const AS_DSCP_SKIPPED: u32 = 4;
/// Marks the TC ingress program set on a socket buffer.
pub const AS_MARK_APPLIED: u32 = 5;
/// Packets a `mirror` rule matched (XDP).
pub const AS_MIRROR_MATCHED: u32 = 6;
/// `bpf_xdp_adjust_meta` refused for a `mirror` rule: no copy (fail-open).
pub const AS_MIRROR_NO_ROOM: u32 = 7;
/// Copies sent out of the mirror interface (TC, `bpf_clone_redirect`).
pub const AS_MIRROR_SENT: u32 = 8;
/// Copies the kernel refused (the interface gone or down since the policy was loaded).
pub const AS_MIRROR_FAILED: u32 = 9;
/// Actions handed to TC through `ACTION_HANDOFF` (a kernel without XDP metadata).
pub const AS_HANDOFF_WRITTEN: u32 = 10;
/// Handed-over actions the TC program found and took.
pub const AS_HANDOFF_TAKEN: u32 = 11;
/// Slots of `ACTION_STATS`.
pub const AS_COUNT: u32 = 16;
/// Counter names, by index.
pub const AS_NAMES: [&str; AS_COUNT as usize] = [
    "mark_matched",
    "mark_meta_written",
    "mark_no_room",
    "mark_dscp_rewritten",
    "mark_dscp_skipped",
    "mark_applied",
    "mirror_matched",
    "mirror_no_room",
    "mirror_sent",
    "mirror_failed",
    "handoff_written",
    "handoff_taken",
    "reserved12",
    "reserved13",
    "reserved14",
    "reserved15",
];

/// The TOS / traffic class byte with its DSCP replaced by `dscp` (`0..=63`) and its ECN bits
/// kept.
#[must_use]
pub const fn with_dscp(tos: u8, dscp: u8) -> u8 {
    (dscp << 2) | (tos & 3)
}

/// RFC 1624 (eqn. 3): the Internet checksum `check` after one 16-bit word of what it covers
/// changed from `old` to `new`. All values in host order of the big-endian words.
#[must_use]
pub const fn csum_replace16(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check) as u32 + (!old) as u32 + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// IPv4: the header's first word (version, IHL, TOS) and its checksum after the DSCP is set
/// to `dscp`.
#[must_use]
pub const fn v4_set_dscp(word0: u16, check: u16, dscp: u8) -> (u16, u16) {
    let tos = with_dscp((word0 & 0xff) as u8, dscp);
    let new = (word0 & 0xff00) | tos as u16;
    (new, csum_replace16(check, word0, new))
}

/// IPv6: the header's first word (version, traffic class, the flow label's top bits) after
/// the DSCP is set to `dscp`. IPv6 has no header checksum, and no transport checksum covers
/// the traffic class.
#[must_use]
pub const fn v6_set_dscp(word0: u16, dscp: u8) -> u16 {
    let tc = with_dscp(((word0 >> 4) & 0xff) as u8, dscp);
    (word0 & 0xf00f) | (tc as u16) << 4
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn handoff_keys_take_48_bytes_or_28_and_nothing_shorter() {
        let ip: [u8; 60] = core::array::from_fn(|i| i as u8 + 1);
        let long = HandoffKey::of(&ip).expect("48 bytes");
        assert_eq!(&long.bytes[..], &ip[..48]);
        let short = HandoffKey::of(&ip[..40]).expect("28 bytes");
        assert_eq!(&short.bytes[..28], &ip[..28]);
        assert!(short.bytes[28..].iter().all(|&b| b == 0), "the rest zero");
        assert_eq!(HandoffKey::of(&ip[..27]), None);
        // Packets that differ past the bytes a key holds share it; before, they do not.
        let mut other = ip;
        other[50] ^= 1;
        assert_eq!(HandoffKey::of(&other), Some(long));
        other[47] ^= 1;
        assert_ne!(HandoffKey::of(&other), Some(long));
    }

    /// The checksum of an IPv4 header computed from scratch.
    pub(crate) fn full(h: &[u8; 20]) -> u16 {
        let mut sum = 0u32;
        for i in (0..20).step_by(2) {
            if i != 10 {
                sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
            }
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn incremental_checksum_matches_a_full_recompute() {
        // A small LCG walks many headers: every DSCP, random other fields.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..20_000u32 {
            let mut h = [0u8; 20];
            for b in &mut h {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                *b = (x >> 33) as u8;
            }
            h[0] = 0x45;
            let c = full(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let dscp = (round % 64) as u8;
            let (w, check) = v4_set_dscp(u16::from_be_bytes([h[0], h[1]]), c, dscp);
            h[..2].copy_from_slice(&w.to_be_bytes());
            assert_eq!(h[1] >> 2, dscp);
            // A correct checksum sums (with itself) to 0xffff; the incremental update may
            // give the other zero (0x0000 for 0xffff) only where a full recompute would too.
            assert_eq!(check, full(&h), "header {h:02x?}");
        }
    }

    #[test]
    fn dscp_rewrites_keep_ecn_and_flow_label() {
        assert_eq!(with_dscp(0b0000_0011, 46), 0b1011_1011);
        assert_eq!(with_dscp(0xff, 0), 0b0000_0011);
        // IPv6: version 6, traffic class 0x01 (ECN 1), flow label top nibble 0xa.
        assert_eq!(v6_set_dscp(0x601a, 10), 0x629a);
        assert_eq!(v6_set_dscp(0x6ffa, 0), 0x603a);
    }
}
