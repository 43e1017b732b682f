//! Threat-intelligence indicators (`[intel]`): the map layout shared by the kernel's match and
//! the daemon's feed loader.
//!
//! Addresses are keyed as [`crate::packet::Packet`] holds them: 16 bytes, IPv4 mapped into
//! IPv6 (`::ffff:a.b.c.d`). An IPv4 CIDR `a.b.c.d/n` is the trie prefix `96 + n` of the
//! mapped address, so one trie and one hash table serve both families.
//!
//! Every indicator map exists twice, one per generation ([`GENERATIONS`]); the daemon fills
//! the idle one and flips [`IntelControl::active`], so a refresh is atomic and an indicator
//! removed from a feed stops matching at the flip (a bloom filter cannot delete: the idle
//! generation's filter keeps the bits of what it held, which only raises its false
//! positives, [`IS_BLOOM_FALSE`]).

use crate::map_type;

/// Generations of the indicator maps.
pub const GENERATIONS: u32 = 2;

/// Feeds a policy may list: feed ids index [`IS_FEED_HITS`]-based counters.
pub const MAX_FEEDS: u32 = 64;

/// What a match does.
pub const ACTION_DROP: u8 = 1;
/// An event, and the packet passes.
pub const ACTION_ALERT: u8 = 2;
/// The packet passes, its source is written to `INTEL_TAGGED` (read by the firewall and DNS
/// events, [`crate::event::FLAG_INTEL_TAGGED`], and `palisade ct list`), and an event.
pub const ACTION_TAG: u8 = 3;

/// [`IntelControl::enabled`] bits: the generation holds exact addresses.
pub const HAS_IPS: u32 = 1;
/// The generation holds CIDRs.
pub const HAS_CIDRS: u32 = 2;
/// Check the destination of what leaves (TC egress) as well as the source of what arrives.
pub const CHECK_EGRESS: u32 = 4;

/// Which generation is live and what each holds (one entry).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntelControl {
    /// The live generation (0 or 1).
    pub active: u32,
    /// Per generation, [`HAS_IPS`] | [`HAS_CIDRS`] | [`CHECK_EGRESS`]: a generation without
    /// CIDRs never walks the trie, one without addresses never probes the filter.
    pub enabled: [u32; GENERATIONS as usize],
    pub _pad: u32,
}
map_type!(IntelControl, 16);

/// What an indicator maps to (exact table and trie alike).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntelHit {
    /// [`ACTION_DROP`], [`ACTION_ALERT`] or [`ACTION_TAG`].
    pub action: u8,
    pub _pad: u8,
    /// The feed's id (its index in the policy), for counters and events.
    pub feed: u16,
}
map_type!(IntelHit, 4);

/// The data part of a trie key: the address, IPv4 mapped.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CidrData {
    pub addr: [u8; 16],
}
map_type!(CidrData, 16);

/// Bits of the mapping prefix `::ffff:0:0/96` in front of an IPv4 address.
pub const V4_MAPPED_BITS: u32 = 96;

/// An IPv4 address as the maps key it.
#[must_use]
pub const fn mapped_v4(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// `addr` with every bit past `bits` cleared (a CIDR's network address).
#[must_use]
pub fn network(mut addr: [u8; 16], bits: u32) -> [u8; 16] {
    let mut i = 0;
    while i < 16 {
        let start = i as u32 * 8;
        if start >= bits {
            addr[i] = 0;
        } else if bits - start < 8 {
            addr[i] &= 0xffu8 << (8 - (bits - start));
        }
        i += 1;
    }
    addr
}

// ---- Counters (`INTEL_STATS`, per CPU; ingress then egress) ----

/// Packets whose address was checked.
pub const IS_CHECKED: u32 = 0;
/// The bloom filter said "maybe" (the exact table was probed).
pub const IS_BLOOM_MAYBE: u32 = 1;
/// The filter said "maybe" and the exact table had no entry (a false positive).
pub const IS_BLOOM_FALSE: u32 = 2;
/// Matched an exact address.
pub const IS_HIT_IP: u32 = 3;
/// Matched a CIDR.
pub const IS_HIT_CIDR: u32 = 4;
/// Dropped (`action = "drop"`).
pub const IS_DROPPED: u32 = 5;
/// Reported and passed (`action = "alert"`).
pub const IS_ALERTED: u32 = 6;
/// Marked and passed (`action = "tag"`).
pub const IS_TAGGED: u32 = 7;
/// Events the ring had no room for.
pub const IS_EVENTS_LOST: u32 = 8;
/// Counters per direction.
pub const IS_PER_DIRECTION: u32 = 9;
/// First per-feed hit counter: `IS_FEED_HITS + feed`.
pub const IS_FEED_HITS: u32 = 2 * IS_PER_DIRECTION;
/// Size of `INTEL_STATS`.
pub const IS_COUNT: u32 = IS_FEED_HITS + MAX_FEEDS;

/// Counter offset of the ingress direction (XDP, source addresses).
pub const DIR_INGRESS: u32 = 0;
/// Counter offset of the egress direction (TC, destination addresses).
pub const DIR_EGRESS: u32 = IS_PER_DIRECTION;

/// Names of the per-direction counters, for listings and metrics.
pub const COUNTER_NAMES: [&str; IS_PER_DIRECTION as usize] = [
    "checked",
    "bloom_maybe",
    "bloom_false_positive",
    "hit_ip",
    "hit_cidr",
    "dropped",
    "alerted",
    "tagged",
    "events_lost",
];

/// [`crate::event::FirewallEvent::kind`] of an indicator match: `rule` holds the feed id,
/// `action` the intel action, `reason` [`crate::reason::INTEL_DROP`] or
/// [`crate::reason::PASS`].
pub const KIND_INTEL: u32 = 7;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_clears_host_bits() {
        let a = mapped_v4([10, 1, 2, 3]);
        assert_eq!(network(a, 96 + 8), mapped_v4([10, 0, 0, 0]));
        assert_eq!(network(a, 96 + 23), mapped_v4([10, 1, 2, 0]));
        assert_eq!(network(a, 96 + 32), a);
        assert_eq!(network(a, 0), [0; 16]);
        let mut v6 = [0xffu8; 16];
        v6 = network(v6, 65);
        assert_eq!(v6[7], 0xff);
        assert_eq!(v6[8], 0x80);
        assert_eq!(v6[9], 0);
    }
}
