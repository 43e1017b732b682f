//! The firewall's map layout and the key construction both classifiers share.
//!
//! Classification is a tuple-space search (see `docs/design/firewall.md`): rules are grouped
//! by the *shape* of their match (address prefix lengths or sets, protocol present or not,
//! which port dimensions are used, TCP-flag mask). Each shape is a [`Tuple`]; all rules of one
//! shape live in a single hash map keyed by the packet's fields masked to that shape. A packet
//! costs one hash lookup per tuple, whatever the number of rules.
//!
//! Every policy map is split into two generations; userspace fills the idle one and then
//! flips [`Control::active_gen`], so a packet always sees one whole policy.

use crate::{map_type, packet::Packet};

/// Tuples (distinct rule shapes) per generation.
pub const MAX_TUPLES: u32 = 256;
/// Rules per generation (after nothing: a rule with a list of CIDRs is still one rule).
pub const MAX_RULES: u32 = 131_072;
/// The rule index that stands for the default action (in events and counters): past every
/// rule. Its counters are kept apart (`FW_DEFAULT_STATS`), the rules' in a table per generation.
pub const DEFAULT_SLOT: u32 = MAX_RULES;
/// Ports (and ICMP type/code pairs) per port-class array per generation.
pub const PORT_SPACE: u32 = 65_536;
/// Named sets per generation.
pub const MAX_SETS: u32 = 1024;

/// The entries of the port-class arrays (`FW_SPORT_CLASS`, `FW_DPORT_CLASS`): the port's
/// class in the low 16 bits, and above it one bit for each of the first [`port_word::TUPLES`]
/// tuples that may hold a rule for a packet with this port: a tuple that ignores the port,
/// or one with a rule on the port's class. The search skips a tuple whose bit is clear in
/// either word before building its key (the key could not be in the table).
pub mod port_word {
    /// The first tuples of a generation the words know: a tuple past them is searched for
    /// every packet its other conditions allow.
    pub const TUPLES: u32 = 48;
    /// Every tuple may match: what a packet without ports (a non-first fragment) searches.
    pub const ALL: u64 = u64::MAX >> 16;

    /// The word of a port in class `class` that tuples `tuples` may match.
    #[inline(always)]
    #[must_use]
    pub const fn new(class: u16, tuples: u64) -> u64 {
        class as u64 | (tuples & ALL) << 16
    }

    #[inline(always)]
    #[must_use]
    pub const fn class(word: u64) -> u16 {
        word as u16
    }

    #[inline(always)]
    #[must_use]
    pub const fn tuples(word: u64) -> u64 {
        word >> 16
    }

    /// Whether tuple `index` may match a packet whose ports allow `tuples` (the tuple bits
    /// of its two words, and-ed): always past the first [`TUPLES`].
    #[inline(always)]
    #[must_use]
    pub const fn may_match(tuples: u64, index: u32) -> bool {
        index >= TUPLES || tuples >> index & 1 != 0
    }
}
/// Set members one generation may ever hold that are single addresses (`FW_SET_HOSTS`), and
/// members that are shorter prefixes (`FW_SETS`): the hard maxima of `[firewall]
/// capacity_set_hosts` and `capacity_set_prefixes`. Each map holds two generations of the room
/// the daemon sizes it with, so that the next policy is written next to the running one.
pub const MAX_SET_HOSTS: u32 = 1 << 24;
pub const MAX_SET_PREFIXES: u32 = 1 << 24;
/// Rule entries one generation may ever hold (`FW_RULES`): the hard maximum of `[firewall]
/// capacity_rules`.
pub const MAX_RULE_ENTRIES: u32 = 1 << 21;
/// Room per generation the kernel object declares in the set maps and the rule map: what a
/// load that does not size them gets (tests, benchmarks). The daemon creates them with the
/// room the policy needs instead.
pub const DECLARED_SET_ROOM: u32 = 1 << 20;
pub const DECLARED_RULE_ROOM: u32 = 1 << 21;
/// Generations of every policy map.
pub const GENERATIONS: u32 = 2;

/// Action codes in [`RuleMeta::action`] and [`PolicyHeader::default_action`].
pub const ACTION_ALLOW: u8 = 0;
pub const ACTION_DROP: u8 = 1;
pub const ACTION_RATE_LIMIT: u8 = 2;
/// Allow, setting the mark and/or the DSCP (see [`crate::action`]).
pub const ACTION_MARK: u8 = 3;
/// Allow, and a copy out of another interface (see [`crate::action`]).
pub const ACTION_MIRROR: u8 = 4;

/// [`RuleMeta::flags`]: emit an event when this rule drops a packet.
pub const RULE_LOG: u8 = 1;
/// [`RuleMeta::flags`]: the token bucket is per source address, not per rule.
pub const RULE_RATE_PER_SOURCE: u8 = 2;
/// [`RuleMeta::flags`]: a rate-limit rule keeps one bucket per source country (the country
/// map named by [`PolicyHeader::country_set`]); sources of no country share one bucket.
pub const RULE_RATE_PER_COUNTRY: u8 = 128;

/// [`Tuple::flags`]: the protocol is part of the key.
pub const TUPLE_PROTO: u8 = 1;
/// [`Tuple::flags`]: the source port class is part of the key.
pub const TUPLE_SPORT: u8 = 2;
/// [`Tuple::flags`]: the destination port (or ICMP type/code) class is part of the key.
pub const TUPLE_DPORT: u8 = 4;
/// [`Tuple::flags`]: the source address must be in set `src_set`.
pub const TUPLE_SRC_SET: u8 = 8;
/// [`Tuple::flags`]: the destination address must be in set `dst_set`.
pub const TUPLE_DST_SET: u8 = 16;
/// [`Tuple::flags`]: the connection-tracking state is part of the key.
pub const TUPLE_CT_STATE: u8 = 32;
/// [`Tuple::flags`], with [`TUPLE_SRC_SET`]: the source address must *not* be in `src_set`
/// (a negated `src`, its CIDRs written as a set of their own).
pub const TUPLE_SRC_NOT: u8 = 64;
/// [`Tuple::flags`], with [`TUPLE_DST_SET`]: the destination must not be in `dst_set`.
pub const TUPLE_DST_NOT: u8 = 128;

/// [`PolicyHeader::fragments`]: drop non-first fragments.
pub const FRAGMENTS_DROP: u8 = 0;
/// [`PolicyHeader::fragments`]: match non-first fragments against layer-3-only tuples.
pub const FRAGMENTS_MATCH_L3: u8 = 1;

/// [`PolicyHeader::flags`]: emit an event when the default action drops a packet.
pub const POLICY_LOG_DEFAULT: u8 = 1;
/// [`PolicyHeader::flags`]: emit an event for every malformed packet dropped.
pub const POLICY_LOG_MALFORMED: u8 = 2;
/// [`PolicyHeader::flags`]: emit an event for every non-first fragment dropped.
pub const POLICY_LOG_FRAGMENTS: u8 = 4;
/// [`PolicyHeader::flags`]: track connections (ingress and egress).
pub const POLICY_CT_TRACK: u8 = 8;
/// [`PolicyHeader::flags`]: accept established and related packets before the rules.
pub const POLICY_STATEFUL: u8 = 16;
/// Some shield of `[shield]` is on (its settings are in `SHIELD_CONFIG`).
pub const POLICY_SHIELD: u8 = 32;

/// Global control word: which generation the datapath uses.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Control {
    pub active_gen: u32,
    /// Incremented by userspace on every swap; reported in status and metrics.
    pub generation_counter: u32,
}
map_type!(Control, 8);

/// Per-generation policy header.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyHeader {
    pub tuple_count: u32,
    pub rule_count: u32,
    pub default_action: u8,
    pub fragments: u8,
    pub flags: u8,
    /// Prefix length that groups IPv4 sources under one per-source rate bucket (see
    /// [`crate::packet::rate_prefix_bits`]; 0 keeps the whole address).
    pub rate_prefix_v4: u8,
    /// The same for IPv6 sources.
    pub rate_prefix_v6: u8,
    /// The `LINK_*` bits any tuple uses: 0 spares every packet the reading of its link
    /// layer ([`Link`]).
    pub link: u8,
    /// The set index (without the generation bit) of the country map that `per = "country"`
    /// rate limits look sources up in; its members' values are country indexes (1 and up;
    /// [`COUNTRY_UNKNOWN`] is no country). Only
    /// read for a rule with [`RULE_RATE_PER_COUNTRY`].
    pub country_set: u16,
    /// The generation's rule counter table holds one run of this many slots per CPU: rule
    /// `r`'s counters on CPU `c` are at [`rule_stats_slot`]`(stride, c, r)`. Set when the
    /// policy is written (0 in the compiler's header).
    pub rule_stride: u32,
}
map_type!(PolicyHeader, 20);

/// The slot of rule `rule`'s counters on CPU `cpu` in a rule counter table of `stride` slots
/// per CPU: each CPU has a run of its own, so no two CPUs write one cache line (but at the
/// runs' ends).
#[inline(always)]
#[must_use]
pub const fn rule_stats_slot(stride: u32, cpu: u32, rule: u32) -> u32 {
    cpu.wrapping_mul(stride).wrapping_add(rule)
}

/// One rule shape. `src_mask`/`dst_mask` are over the 16-byte address form.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tuple {
    pub src_mask: [u8; 16],
    pub dst_mask: [u8; 16],
    /// Set ids (already combined with the generation, see [`set_id`]) when the matching
    /// `TUPLE_*_SET` flag is on.
    pub src_set: u32,
    pub dst_set: u32,
    /// The smallest evaluation index of any rule in this tuple; tuples are sorted by it so
    /// the search can stop once a match beats every remaining tuple.
    pub best_rule: u32,
    /// 0 for any family, else [`crate::packet::FAMILY_V4`] or `FAMILY_V6`.
    pub family: u8,
    pub flags: u8,
    pub tcp_flags_mask: u8,
    /// 0xff when the tuple keys on the connection-tracking state ([`TUPLE_CT_STATE`]), else
    /// 0: a mask rather than a flag test keeps the key construction branch-free.
    pub ct_state_mask: u8,
    /// The bits of the packet's TOS / traffic class byte the key holds: `0xfc` for a `dscp`
    /// condition, `0x03` for `ecn`, both or 0 (no condition, the key's byte stays 0).
    pub tos_mask: u8,
    /// The bits of the packet's TTL / hop limit the key holds: a `ttl` range is split into
    /// aligned blocks, each a value under a mask of high bits (see `docs/design/firewall.md`).
    pub ttl_mask: u8,
    /// The bits of the packet's IP length ([`crate::packet::Packet::ip_len`]) the key holds:
    /// a `length` range is split into aligned blocks like a `ttl` range, 0 without one.
    pub length_mask: u16,
    /// The source MAC address the frame must carry, under [`LINK_SRC_MAC`] in `link`.
    pub src_mac: [u8; 6],
    /// The destination MAC address the frame must carry, under [`LINK_DST_MAC`].
    pub dst_mac: [u8; 6],
    /// Which link-layer values of this tuple the frame must carry (`LINK_*` bits): a tuple
    /// has one value of each, so they are checked before its lookup, as a set is, and the
    /// key does not grow. 0 for a tuple without link conditions.
    pub link: u8,
    /// 1 when the tuple's key takes nothing from the packet ([`Tuple::is_keyless`]): every
    /// packet the tuple applies to has the same key, whose rule is `best_rule`, so the search
    /// takes that rule without building the key or looking it up. Set by the compiler.
    pub keyless: u8,
    /// The VLAN id the frame must carry ([`Link::vlan`]), under [`LINK_VLAN`].
    pub vlan: u16,
    /// The interface the frame must arrive on ([`Link::ifindex`]), under [`LINK_IFACE`].
    pub ifindex: u32,
}
map_type!(Tuple, 72);

impl Tuple {
    /// Whether the tuple's key holds no value from the packet: no address bits, protocol,
    /// ports, TCP flags, connection state, TOS, TTL or length (its conditions, if any, are
    /// the family, sets and link values, checked before the key). Such a tuple has one key,
    /// the same for every packet, and so one entry: its rules share it, and the entry's rule
    /// is the first of them, `best_rule`.
    #[must_use]
    pub fn is_keyless(&self) -> bool {
        self.src_mask == [0; 16]
            && self.dst_mask == [0; 16]
            && self.flags & (TUPLE_PROTO | TUPLE_SPORT | TUPLE_DPORT | TUPLE_CT_STATE) == 0
            && self.tcp_flags_mask == 0
            && self.ct_state_mask == 0
            && self.tos_mask == 0
            && self.ttl_mask == 0
            && self.length_mask == 0
    }
}

/// [`Tuple::link`] and [`PolicyHeader::link`]: the frame's source MAC must be
/// [`Tuple::src_mac`].
pub const LINK_SRC_MAC: u8 = 1;
/// [`Tuple::link`] and [`PolicyHeader::link`]: the frame's destination MAC must be
/// [`Tuple::dst_mac`].
pub const LINK_DST_MAC: u8 = 2;
/// [`Tuple::link`] and [`PolicyHeader::link`]: the frame's VLAN id must be [`Tuple::vlan`].
pub const LINK_VLAN: u8 = 4;
/// [`Tuple::link`] and [`PolicyHeader::link`]: the frame must arrive on interface
/// [`Tuple::ifindex`].
pub const LINK_IFACE: u8 = 8;
/// [`Link::vlan`] of a frame without a VLAN tag (ids are 12 bits).
pub const VLAN_UNTAGGED: u16 = 0xffff;

/// What the firewall knows of a frame below IP, read only when some tuple of the policy has a
/// link condition ([`PolicyHeader::link`]): kept apart from [`Packet`], whose copies other
/// hooks cannot afford to grow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Link {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The id (low 12 bits of the TCI) of the frame's outermost 802.1Q / 802.1ad tag, or
    /// [`VLAN_UNTAGGED`]. A tag the NIC took off on receive (VLAN offload) is not in the
    /// frame and not seen here.
    pub vlan: u16,
    pub _pad: u16,
    /// The interface the frame arrived on (XDP's `ingress_ifindex`); [`read_link`] leaves it
    /// 0 for its caller to fill.
    pub ifindex: u32,
}

/// The link-layer values of an Ethernet frame; `None` when the frame is shorter than its
/// Ethernet header or its first tag (the parser drops those as `malformed-l2` before any
/// rule).
#[inline(always)]
#[must_use]
pub fn read_link<B: crate::packet::Bytes + ?Sized>(b: &B) -> Option<Link> {
    let eth: [u8; crate::packet::ETH_HLEN] = b.load(0)?;
    let mut l = Link {
        vlan: VLAN_UNTAGGED,
        ..Link::default()
    };
    let mut i = 0;
    while i < 6 {
        l.dst_mac[i] = eth[i];
        l.src_mac[i] = eth[6 + i];
        i += 1;
    }
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    if ethertype == crate::packet::ETH_P_8021Q || ethertype == crate::packet::ETH_P_8021AD {
        let tci: [u8; 2] = b.load(crate::packet::ETH_HLEN)?;
        l.vlan = u16::from_be_bytes(tci) & 0x0fff;
    }
    Some(l)
}

/// Whether two MAC addresses are equal, without a call to `memcmp` (which BPF has not).
#[inline(always)]
fn mac_eq(a: &[u8; 6], b: &[u8; 6]) -> bool {
    let mut diff = 0;
    let mut i = 0;
    while i < 6 {
        diff |= a[i] ^ b[i];
        i += 1;
    }
    diff == 0
}

/// Whether the frame's link-layer values meet the tuple's link conditions (always, for a
/// tuple without any).
#[inline(always)]
#[must_use]
pub fn link_applies(t: &Tuple, l: &Link) -> bool {
    (t.link & LINK_SRC_MAC == 0 || mac_eq(&t.src_mac, &l.src_mac))
        && (t.link & LINK_DST_MAC == 0 || mac_eq(&t.dst_mac, &l.dst_mac))
        && (t.link & LINK_VLAN == 0 || t.vlan == l.vlan)
        && (t.link & LINK_IFACE == 0 || t.ifindex == l.ifindex)
}

/// The hash key of a rule entry: a packet's fields masked to one tuple's shape.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// `generation << 16 | tuple index`.
    pub tuple: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Port classes (see the port-class arrays), 0 when the tuple ignores the dimension.
    pub sport_class: u16,
    pub dport_class: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// The packet's connection-tracking state bit, 0 when the tuple ignores it.
    pub ct_state: u8,
    /// The packet's TOS / traffic class under [`Tuple::tos_mask`].
    pub tos: u8,
    /// The packet's TTL / hop limit under [`Tuple::ttl_mask`].
    pub ttl: u8,
    pub _pad: [u8; 1],
    /// The packet's IP length under [`Tuple::length_mask`].
    pub length: u16,
}
map_type!(FlowKey, 48);

impl FlowKey {
    /// A hash of the whole key (all 48 bytes, read as twelve native 32-bit words, paired
    /// into six 64-bit lanes, each multiplied by its own odd constant, summed, then mixed):
    /// what [`KeyFilter`] places the key by. The high bits are the well-mixed ones.
    #[inline(always)]
    #[must_use]
    pub fn filter_hash(&self) -> u64 {
        // SAFETY: 48 bytes of plain integers with no implicit padding (checked by
        // `map_type!`), alignment 4 as `[u32; 12]`.
        let w: [u32; 12] = unsafe { core::mem::transmute(*self) };
        let lane = |i: usize| u64::from(w[2 * i]) | u64::from(w[2 * i + 1]) << 32;
        // Six independent products (no chain between them), then one multiply to mix.
        let h = lane(0)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(lane(1).wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
            .wrapping_add(lane(2).wrapping_mul(0x1656_67b1_9e37_79f9))
            .wrapping_add(lane(3).wrapping_mul(0x85eb_ca77_c2b2_ae63))
            .wrapping_add(lane(4).wrapping_mul(0x27d4_eb2f_1656_67c5))
            .wrapping_add(lane(5).wrapping_mul(0xff51_afd7_ed55_8ccd));
        (h ^ h >> 31).wrapping_mul(0xc4ce_b9fe_1a85_ec53)
    }
}

/// The most 64-bit words of a generation's [`KeyFilter`]: 4M bits, 512 KiB.
pub const KEY_FILTER_MAX_WORDS: u32 = 1 << 16;
/// The fewest words of a generation's [`KeyFilter`]: 2 KiB.
pub const KEY_FILTER_MIN_WORDS: u32 = 1 << 8;
/// Entries before the words of a filter map: the mask of generation 0's words, then
/// generation 1's (0: that generation's words were never written in this map).
pub const KEY_FILTER_HEADER: u32 = 2;

/// Words per generation of a filter sized for `keys` keys: half a word (32 bits) per key,
/// rounded up to a power of two, within [`KEY_FILTER_MIN_WORDS`] and
/// [`KEY_FILTER_MAX_WORDS`] (the density the filters had at 100k keys when they had one size).
#[must_use]
pub const fn key_filter_words(keys: u32) -> u32 {
    crate::pow2_within(keys.div_ceil(2), KEY_FILTER_MIN_WORDS, KEY_FILTER_MAX_WORDS)
}

/// Entries of a filter map holding two generations of `words` words.
#[must_use]
pub const fn key_filter_entries(words: u32) -> u32 {
    KEY_FILTER_HEADER + 2 * words
}

/// A per-generation filter of keys, a Bloom filter blocked by word: each key (by a 64-bit
/// hash of it) sets two bits of one 64-bit word. Two filters use it: the rule keys
/// (`FW_RULE_FILTER`: the search looks a tuple's key up in `FW_RULES` only when both of its
/// bits are set, so a tuple that cannot match costs an array word instead of a hash-map
/// lookup) and the granules of the sets' prefixes (`FW_SET_FILTER`, [`prefix_granule_hash`]:
/// a set's trie is walked only for an address whose /24 or /64 may hold one of its prefixes).
/// False positives cost a lookup and change nothing; there are no false negatives, as every
/// key of a generation is added before the generation goes live.
///
/// Each map is a plain array of words, sized when the daemon creates it
/// ([`key_filter_words`] of the policy it starts with, or of the configured capacity): its
/// [`KEY_FILTER_HEADER`] entries hold each generation's mask (its word count, a power of two,
/// minus one), written after its words; generation `g`'s words follow at
/// `KEY_FILTER_HEADER + g * words`. A mask of 0 (a map created since that generation was
/// written) lets every key through. A policy with more keys than the map was sized for fills
/// it more densely: more false positives, never a false negative.
pub struct KeyFilter;

impl KeyFilter {
    /// Where a key's two bits are: a 16-bit hash that picks the word (see [`Self::index`])
    /// and the mask of both bits, from the top bits of the key's hash.
    #[inline(always)]
    #[must_use]
    pub const fn slot(h: u64) -> (u32, u64) {
        let word = (h >> 48) as u32;
        let bits = (1u64 << ((h >> 42) & 63)) | (1u64 << ((h >> 36) & 63));
        (word, bits)
    }

    /// The map entry of word hash `word` of generation `generation`, whose mask is `mask`.
    #[inline(always)]
    #[must_use]
    pub const fn index(generation: u32, word: u32, mask: u32) -> u32 {
        KEY_FILTER_HEADER + generation * (mask + 1) + (word & mask)
    }

    /// Adds the key with hash `h` to a generation's `words` (a power of two of them).
    #[inline]
    pub fn insert_hash(words: &mut [u64], h: u64) {
        let (word, bits) = Self::slot(h);
        Self::set(words, word, bits);
    }

    /// Whether the key with hash `h` may have been added to `words`.
    #[inline]
    #[must_use]
    pub fn may_hold_hash(words: &[u64], h: u64) -> bool {
        let (word, bits) = Self::slot(h);
        Self::test(words, word, bits)
    }

    /// Sets `bits` in the word that word hash `word` picks among a generation's `words` (a
    /// power of two of them): the userspace side of every filter laid out as this one.
    #[inline]
    pub fn set(words: &mut [u64], word: u32, bits: u64) {
        let mask = words.len().saturating_sub(1) as u32;
        words[(word & mask) as usize] |= bits;
    }

    /// Whether all of `bits` are set in the word that word hash `word` picks.
    #[inline]
    #[must_use]
    pub fn test(words: &[u64], word: u32, bits: u64) -> bool {
        let mask = words.len().saturating_sub(1) as u32;
        words[(word & mask) as usize] & bits == bits
    }
}

/// The stored prefix length (bits of the 16-byte form) from which a set's prefix goes into
/// the set filter: IPv4 /24 and longer (96 + 24), IPv6 /64 and longer. A set with shorter
/// prefixes has [`SET_PREFIXES_SHORT`] and its trie is always walked.
#[must_use]
pub const fn prefix_granule_bits(family: u8) -> u32 {
    if family == crate::packet::FAMILY_V4 {
        96 + 24
    } else {
        64
    }
}

/// The hash of the granule of `addr` (16-byte stored form) in set `set` (its id, generation
/// bit included): the address's IPv4 /24 or IPv6 /64, with the set and the family mixed in.
/// A prefix of the set at least as long as the granule and the addresses it covers share it.
#[inline(always)]
#[must_use]
pub fn prefix_granule_hash(set: u32, family: u8, addr: &[u8; 16]) -> u64 {
    let granule = if family == crate::packet::FAMILY_V4 {
        u64::from(addr[12]) << 16 | u64::from(addr[13]) << 8 | u64::from(addr[14])
    } else {
        u64::from_be_bytes([
            addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
        ])
    };
    let h = granule.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (u64::from(set) << 8 | u64::from(family)).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    (h ^ h >> 29).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// The value of a rule entry: the first rule (in evaluation order) with that key.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleRef {
    /// Evaluation index within the generation (also the rule's slot).
    pub rule: u32,
    pub _pad: u32,
}
map_type!(RuleRef, 8);

/// What a rule does, per generation and slot.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleMeta {
    pub action: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    /// A rate-limit rule's identity across reloads (a hash of what it matches and whom it
    /// counts, not of its rate nor its place): its buckets' key, so a reload keeps them (no
    /// refill) and the new rate applies to them at once; buckets of rules gone age out of
    /// the LRU. Unique within a policy.
    pub rate_id: u32,
    /// Token-bucket emission interval: nanoseconds per packet (1e9 / pps).
    pub rate_interval_ns: u64,
    /// How far ahead of now the bucket's clock may run: `interval * (burst - 1)`.
    pub rate_tolerance_ns: u64,
    /// A `mark` rule's mark (with [`crate::action::RULE_SET_MARK`]).
    pub mark: u32,
    /// A `mark` rule's DSCP code point (with [`crate::action::RULE_SET_DSCP`]).
    pub dscp: u8,
    pub _pad2: [u8; 3],
    /// A `mirror` rule's interface, resolved when the policy was loaded.
    pub ifindex: u32,
    pub _pad3: u32,
}
map_type!(RuleMeta, 40);

/// A rate-limit bucket (`FW_RATE`): the GCRA clock, and the interval it runs at, so a
/// reload that changes the rule's rate carries what the bucket owes over to the new rate.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateBucket {
    /// The theoretical arrival time of the next packet.
    pub tat: u64,
    /// The emission interval `tat` was last advanced by.
    pub interval_ns: u64,
}
map_type!(RateBucket, 16);

impl RateBucket {
    /// [`rate_conforms`] for this bucket under the rule's current rate: when the rate changed
    /// since the bucket was last used, the packets it owes (its clock's lead on `now`, in
    /// its old intervals) are owed at the new interval, so a reload neither refills the
    /// bucket nor keeps the old rate. The updated bucket when the packet conforms.
    #[inline(always)]
    #[must_use]
    pub fn conforms(&self, now: u64, interval: u64, tolerance: u64) -> Option<Self> {
        let mut tat = self.tat;
        if self.interval_ns != interval && self.interval_ns != 0 && tat > now {
            // At most the burst is owed; bounded so the product cannot overflow (intervals
            // are under 2^31 ns).
            let owed = ((tat - now) / self.interval_ns).min(u64::from(u32::MAX));
            tat = now.saturating_add(owed.wrapping_mul(interval));
        }
        // Never further ahead than the rate allows (a bucket from a rate changed twice
        // between two of its packets owes no more than an empty bucket).
        let cap = now.saturating_add(tolerance).saturating_add(interval);
        if tat > cap {
            tat = cap;
        }
        rate_conforms(tat, now, interval, tolerance).map(|tat| Self {
            tat,
            interval_ns: interval,
        })
    }
}

/// Per-rule counters (per CPU).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleStats {
    pub packets: u64,
    pub bytes: u64,
}
map_type!(RuleStats, 16);

/// Key of the token-bucket map.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateKey {
    /// The rule's [`RuleMeta::rate_id`].
    pub rule: u32,
    pub _pad: u32,
    /// The source address cut to the policy's source prefix, all zero for a per-rule
    /// bucket, or [`country_rate_addr`] for a per-country one.
    pub addr: [u8; 16],
}
map_type!(RateKey, 24);

/// A set member's key, in the host hash as it is and as the data part of the prefix trie's
/// key: the set id, big-endian so it forms the first 32 bits of the prefix, then the address
/// family and three zero bytes, then the 16-byte address. The family is part of the key
/// because IPv4 addresses are stored IPv4-mapped: without it an IPv6 entry such as `::/8` or
/// `::ffff:0:0/96` (common in bogon lists) would contain every IPv4 address. The padding makes
/// the key a whole number of 32-bit words, which the kernel's hash tables hash faster.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetKey {
    pub set: [u8; 4],
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}
map_type!(SetKey, 24);

impl SetKey {
    /// The key of `addr` (16-byte stored form) of `family` in the set with id `set_id`.
    #[inline(always)]
    #[must_use]
    pub const fn new(set_id: u32, family: u8, addr: [u8; 16]) -> Self {
        Self {
            set: set_id.to_be_bytes(),
            family,
            pad: [0; 3],
            addr,
        }
    }
}

/// Bits of a [`SetKey`] before the address: set id, family and padding.
pub const SET_KEY_PREFIX_BITS: u32 = 64;

/// [`set_kind_slot`] bits: the set holds single addresses (IPv4 /32, IPv6 /128), kept in an
/// exact-match hash (`FW_SET_HOSTS`) so a blocklist of hosts costs one hash lookup whatever
/// its size.
pub const SET_HOSTS: u8 = 1;
/// [`set_kind_slot`] bits: the set holds shorter prefixes, kept in the LPM trie (`FW_SETS`).
pub const SET_PREFIXES: u8 = 2;
/// [`set_kind_slot`] bits: the set is the overload set of `[conntrack]`; its dynamic members
/// live in `CT_OVERLOAD`, consulted only for a set with this bit.
pub const SET_OVERLOAD: u8 = 4;
/// [`set_kind_slot`] bits: the set holds prefixes shorter than its family's granule
/// ([`prefix_granule_bits`]), which the set filter cannot place: its trie is walked for every
/// address not among its single addresses.
pub const SET_PREFIXES_SHORT: u8 = 8;

/// The slot of a set's kind bits (`FW_SET_KIND`) for the set id `id` (see [`set_id`]).
#[inline(always)]
#[must_use]
pub const fn set_kind_slot(id: u32) -> u32 {
    (id >> 31) * MAX_SETS + (id & 0x7fff_ffff)
}

/// The set id stored in tuples and set keys: generation in the top bit.
#[inline(always)]
#[must_use]
pub const fn set_id(generation: u32, set: u32) -> u32 {
    generation << 31 | set
}

/// Whether the tuple can match a packet at all, before any lookup.
///
/// A non-first fragment has no ports, flags or ICMP type, so it only meets tuples that use
/// none of them.
#[inline(always)]
#[must_use]
pub fn tuple_applies(t: &Tuple, p: &Packet) -> bool {
    if t.family != 0 && t.family != p.family {
        return false;
    }
    let needs_l4 = t.flags & (TUPLE_SPORT | TUPLE_DPORT) != 0 || t.tcp_flags_mask != 0;
    !(needs_l4 && p.frag == crate::packet::FRAG_LATER)
}

/// The key of `p` in tuple `index` of `generation`, given the packet's port classes.
#[inline(always)]
#[must_use]
pub fn flow_key(
    generation: u32,
    index: u32,
    t: &Tuple,
    p: &Packet,
    sport_class: u16,
    dport_class: u16,
) -> FlowKey {
    let mut k = FlowKey::default();
    let classes = u32::from(sport_class) << 16 | u32::from(dport_class);
    fill_flow_key(&mut k, generation << 16 | index, t, p, classes);
    k
}

const _: () = {
    assert!(align_of::<Packet>() >= 2 && align_of::<Tuple>() >= 2 && align_of::<FlowKey>() >= 2);
    assert!(core::mem::offset_of!(Packet, src) % 2 == 0);
    assert!(core::mem::offset_of!(Packet, dst) % 2 == 0);
    assert!(core::mem::offset_of!(Tuple, src_mask) % 2 == 0);
    assert!(core::mem::offset_of!(Tuple, dst_mask) % 2 == 0);
    assert!(core::mem::offset_of!(FlowKey, src) % 2 == 0);
    assert!(core::mem::offset_of!(FlowKey, dst) % 2 == 0);
};

/// Writes the key of `p` in tuple `tuple` (`generation << 16 | index`) into `k`, in place
/// (the kernel keeps it off its stack); `classes` is the source port class in the high half,
/// the destination's in the low half.
#[inline(always)]
pub fn fill_flow_key(k: &mut FlowKey, tuple: u32, t: &Tuple, p: &Packet, classes: u32) {
    k.tuple = tuple;
    // By 16-bit words: the addresses and masks are 2-aligned in all three records (checked
    // below); byte by byte, the kernel's compiler spills every byte.
    let (ps, pd) = (p.src.as_ptr().cast::<u16>(), p.dst.as_ptr().cast::<u16>());
    let (ms, md) = (
        t.src_mask.as_ptr().cast::<u16>(),
        t.dst_mask.as_ptr().cast::<u16>(),
    );
    let (ks, kd) = (
        k.src.as_mut_ptr().cast::<u16>(),
        k.dst.as_mut_ptr().cast::<u16>(),
    );
    let mut i = 0;
    while i < 8 {
        // SAFETY: word `i < 8` of 16-byte arrays at 2-aligned offsets of 2-aligned records.
        unsafe {
            ks.add(i).write(ps.add(i).read() & ms.add(i).read());
            kd.add(i).write(pd.add(i).read() & md.add(i).read());
        }
        i += 1;
    }
    k.proto = if t.flags & TUPLE_PROTO != 0 {
        p.proto
    } else {
        0
    };
    k.sport_class = if t.flags & TUPLE_SPORT != 0 {
        (classes >> 16) as u16
    } else {
        0
    };
    k.dport_class = if t.flags & TUPLE_DPORT != 0 {
        classes as u16
    } else {
        0
    };
    k.tcp_flags = p.tcp_flags & t.tcp_flags_mask;
    k.ct_state = p.ct_state & t.ct_state_mask;
    k.tos = p.tos & t.tos_mask;
    k.ttl = p.ttl & t.ttl_mask;
    k._pad = [0];
    k.length = p.ip_len() & t.length_mask;
}

/// The fastest rate a token bucket takes, in tokens (packets, queries, answers, events) a
/// second.
///
/// A bucket stores the time between two tokens in whole nanoseconds (`1e9 / rate`, rounded
/// down), so it runs fast by the rounding: by less than 1 % up to this rate, but by up to
/// 2x between 5e8 and 1e9 a second, and above 1e9 the interval is 0 and nothing is ever
/// limited. Rates above it are refused by the policy checker.
pub const MAX_RATE: u32 = 10_000_000;

/// The GCRA parameters of a bucket of `rate` tokens a second holding at most `burst`:
/// (emission interval, burst tolerance), both in nanoseconds. `rate` and `burst` count from
/// 1 (0 is taken as 1); `rate` must be at most [`MAX_RATE`] to be kept within 1 %.
///
/// The tolerance is at most `1e9 * (2^32 - 2)` (under 2^62), so a bucket's clock
/// (`now + tolerance + interval`) cannot overflow.
#[must_use]
pub const fn gcra(rate: u32, burst: u32) -> (u64, u64) {
    let rate = if rate == 0 { 1 } else { rate };
    let burst = if burst == 0 { 1 } else { burst };
    let interval = 1_000_000_000 / rate as u64;
    (interval, interval * (burst as u64 - 1))
}

/// GCRA token bucket step. `tat` is the bucket's theoretical arrival time. Returns the new
/// `tat` when the packet conforms (passes), `None` when it must be dropped.
#[inline(always)]
#[must_use]
pub fn rate_conforms(tat: u64, now: u64, interval: u64, tolerance: u64) -> Option<u64> {
    let tat = if tat < now { now } else { tat };
    if tat - now > tolerance {
        return None;
    }
    Some(tat + interval)
}

/// The country of an address not in the country map: its `per = "country"` bucket is shared
/// by every such address.
pub const COUNTRY_UNKNOWN: u8 = 0;

/// The address part of a `per = "country"` rate bucket's key ([`RateKey::addr`]): the
/// country's index ([`COUNTRY_UNKNOWN`] for none) in the first byte, the rest zero.
#[inline(always)]
#[must_use]
pub const fn country_rate_addr(country: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = country;
    a
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_bucket_owes_what_it_owed_at_a_new_rate() {
        // 1 packet a second, burst 5: five pass, the sixth does not.
        let (i1, t1) = gcra(1, 5);
        let mut b = RateBucket::default();
        let now = 100 * S;
        for _ in 0..5 {
            b = b.conforms(now, i1, t1).expect("within the burst");
        }
        assert!(b.conforms(now, i1, t1).is_none());
        // The same rate later: one packet a second again.
        assert!(b.conforms(now + S, i1, t1).is_some());
        // 1000 a second: the five packets owed are owed at a millisecond each; the bucket is
        // empty (no refill) and refills at the new rate.
        let (i2, t2) = gcra(1000, 5);
        assert!(b.conforms(now, i2, t2).is_none());
        let later = b
            .conforms(now + 2_000_000, i2, t2)
            .expect("refilled at the new rate");
        assert_eq!(later.interval_ns, i2);
        // Back to the slow rate: what the fast bucket owes is owed at a second each.
        let mut f = RateBucket::default();
        for _ in 0..5 {
            f = f.conforms(now, i2, t2).unwrap();
        }
        assert!(
            f.conforms(now, i1, t1).is_none(),
            "no refill from a rate change"
        );
    }

    /// A key shaped like the search's: tuple `t` of generation `g`, an IPv4 source under a
    /// /24 mask and a port class.
    fn key(g: u32, t: u32, src: u32, class: u16) -> FlowKey {
        let mut k = FlowKey {
            tuple: g << 16 | t,
            dport_class: class,
            proto: 6,
            ..FlowKey::default()
        };
        k.src[10..12].copy_from_slice(&[0xff, 0xff]);
        k.src[12..16].copy_from_slice(&(src & 0xffff_ff00).to_be_bytes());
        k
    }

    #[test]
    fn a_prefix_and_the_addresses_it_covers_share_their_granule() {
        use crate::packet::{FAMILY_V4, FAMILY_V6, v4_mapped};
        let set = set_id(1, 7);
        // 10.1.2.0/24, 10.1.2.128/25 and an address inside both.
        let h = |a: [u8; 4]| prefix_granule_hash(set, FAMILY_V4, &v4_mapped(a));
        assert_eq!(h([10, 1, 2, 0]), h([10, 1, 2, 200]));
        assert_eq!(h([10, 1, 2, 128]), h([10, 1, 2, 200]));
        assert_ne!(h([10, 1, 3, 0]), h([10, 1, 2, 0]));
        // The same /24 in another set, or the other generation's same set, is another key.
        let other = |s: u32| prefix_granule_hash(s, FAMILY_V4, &v4_mapped([10, 1, 2, 0]));
        assert_ne!(other(set_id(1, 8)), h([10, 1, 2, 0]));
        assert_ne!(other(set_id(0, 7)), h([10, 1, 2, 0]));
        // IPv6: the /64.
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2]);
        let mut b = a;
        b[15] = 9;
        assert_eq!(
            prefix_granule_hash(set, FAMILY_V6, &a),
            prefix_granule_hash(set, FAMILY_V6, &b)
        );
        b[7] = 3;
        assert_ne!(
            prefix_granule_hash(set, FAMILY_V6, &a),
            prefix_granule_hash(set, FAMILY_V6, &b)
        );
        assert_eq!(prefix_granule_bits(FAMILY_V4), 120);
        assert_eq!(prefix_granule_bits(FAMILY_V6), 64);
    }

    #[test]
    fn key_filters_are_sized_by_their_keys_and_generations_do_not_overlap() {
        assert_eq!(key_filter_words(0), KEY_FILTER_MIN_WORDS);
        assert_eq!(key_filter_words(3), KEY_FILTER_MIN_WORDS);
        assert_eq!(key_filter_words(1000), 512);
        assert_eq!(key_filter_words(100_000), KEY_FILTER_MAX_WORDS);
        assert_eq!(key_filter_words(u32::MAX), KEY_FILTER_MAX_WORDS);
        let words = 512;
        let mask = words - 1;
        let entries = key_filter_entries(words);
        for h in [0, u64::MAX, 0x1234_5678_9abc_def0] {
            let (w, _) = KeyFilter::slot(h);
            let g0 = KeyFilter::index(0, w, mask);
            let g1 = KeyFilter::index(1, w, mask);
            assert!((KEY_FILTER_HEADER..KEY_FILTER_HEADER + words).contains(&g0));
            assert!((KEY_FILTER_HEADER + words..entries).contains(&g1));
        }
    }

    #[test]
    fn the_rule_filter_holds_every_key_and_lets_few_others_through() {
        let mut f = std::vec![0u64; key_filter_words(100_000) as usize];
        assert_eq!(f.len(), KEY_FILTER_MAX_WORDS as usize);
        let may_hold = |f: &[u64], k: &FlowKey| KeyFilter::may_hold_hash(f, k.filter_hash());
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let held: Vec<FlowKey> = (0..100_000)
            .map(|_| {
                let r = next();
                key(0, (r % 10) as u32, (r >> 8) as u32, (r >> 40) as u16 % 64)
            })
            .collect();
        for k in &held {
            KeyFilter::insert_hash(&mut f, k.filter_hash());
        }
        assert!(held.iter().all(|k| may_hold(&f, k)), "no false negatives");
        // The same shapes in the other generation, and other addresses: absent keys.
        let probes = 100_000;
        let passed = (0..probes)
            .filter(|_| {
                let r = next();
                may_hold(
                    &f,
                    &key(1, (r % 10) as u32, (r >> 8) as u32, (r >> 40) as u16 % 64),
                )
            })
            .count();
        // Two bits of one word per key, 100k keys in 4M bits: about 0.2 % pass.
        assert!(
            passed * 100 < probes,
            "{passed} of {probes} absent keys passed"
        );
        // A key differing in one field from a held one is told apart as often.
        let near = held
            .iter()
            .filter(|k| {
                let mut other = **k;
                other.dport_class ^= 0x100;
                may_hold(&f, &other)
            })
            .count();
        assert!(near * 100 < held.len(), "{near} near keys passed");
    }
}
