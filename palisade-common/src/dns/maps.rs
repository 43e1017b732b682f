//! DNS map keys and values. Like the firewall's, every policy map is split into two
//! generations selected by `Control::active_gen`.

use crate::{firewall::KeyFilter, map_type};

/// Scope of a DNS policy: where the query was seen.
pub const SCOPE_INGRESS: u8 = 0;
pub const SCOPE_EGRESS: u8 = 1;
/// Number of scopes.
pub const SCOPES: u32 = 2;
/// [`NameKey::scope`] of the names that `[dns.bind] rebinding_allow` lets carry private
/// addresses. A list of its own in `DNS_NAMES`, matched like the scopes' lists; it has no
/// `ScopeConfig` (it is not a scope where queries are seen).
pub const SCOPE_REBIND: u8 = 2;

/// [`NameKey::kind`]: the entry matches the name itself.
pub const KIND_APEX: u8 = 0;
/// [`NameKey::kind`]: the entry matches names strictly below it.
pub const KIND_BELOW: u8 = 1;

/// Destination ports recognised as DNS, at most.
pub const MAX_PORTS: usize = 8;
/// Query types an entry may be limited to, at most.
pub const MAX_QTYPES: usize = 4;

/// [`ScopeConfig::mode`].
pub const MODE_OFF: u8 = 0;
pub const MODE_BLOCKLIST: u8 = 1;
pub const MODE_ALLOWLIST: u8 = 2;

/// [`ScopeConfig::action`].
pub const ACTION_DROP: u8 = 0;
pub const ACTION_NXDOMAIN: u8 = 1;
/// Answer REFUSED (RCODE 5).
pub const ACTION_REFUSED: u8 = 2;
/// Answer A/AAAA questions with [`DnsGlobal::sinkhole_v4`] / [`DnsGlobal::sinkhole_v6`],
/// others with NODATA.
pub const ACTION_SINKHOLE: u8 = 3;

/// [`ScopeConfig::flags`]: report, never block.
pub const SCOPE_AUDIT: u8 = 1;
/// [`ScopeConfig::flags`]: block queries that cannot be parsed safely.
pub const SCOPE_BLOCK_MALFORMED: u8 = 2;
/// [`ScopeConfig::flags`]: emit events for allowed queries too.
pub const SCOPE_LOG_ALLOWED: u8 = 4;
/// [`ScopeConfig::flags`]: per-client rate limit on.
pub const SCOPE_RATE: u8 = 8;

/// Key of the name map: a suffix hash (see [`super::hash`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NameKey {
    pub a: u64,
    pub b: u64,
    /// Wire length of the suffix (length bytes and the root byte included).
    pub wire_len: u16,
    pub scope: u8,
    pub kind: u8,
    pub generation: u8,
    pub _pad: [u8; 3],
}
map_type!(NameKey, 24);

impl NameKey {
    /// The key as three words, the way the kernel builds it: a struct with a byte array of
    /// padding is zeroed through a byte-by-byte `memset` call there, the words are not.
    /// `key_words(..)` has the same bytes as the `NameKey` with these fields (checked by a
    /// test), so either can be passed as the key.
    #[inline(always)]
    #[must_use]
    pub const fn key_words(
        a: u64,
        b: u64,
        wire_len: u16,
        scope: u8,
        kind: u8,
        generation: u8,
    ) -> [u64; 3] {
        let tail = u16::to_ne_bytes(wire_len);
        [
            a,
            b,
            u64::from_ne_bytes([tail[0], tail[1], scope, kind, generation, 0, 0, 0]),
        ]
    }
}

/// Name keys one generation may ever hold: the hard maximum of `[dns] capacity_names`. Two
/// generations share `DNS_NAMES`, created with twice the room the daemon sizes for the
/// policy, so a new policy is written in full next to the running one.
pub const MAX_NAME_KEYS: usize = 1 << 24;
/// Room per generation the kernel object declares in `DNS_NAMES`: what a load that does not
/// size it gets (tests, benchmarks).
pub const DECLARED_NAME_ROOM: u32 = 1 << 21;

/// The fewest bit words of a generation's name filter (512 bytes).
pub const FILTER_MIN_WORDS: u32 = 1 << 6;
/// The most bit words of a generation's name filter (32 MiB, for 16M keys).
pub const FILTER_MAX_WORDS: u32 = 1 << 22;

/// Bit words of the name filter of a generation of `keys` name keys: a quarter of a word
/// (16 bits) per key, rounded up to a power of two, within [`FILTER_MIN_WORDS`] and
/// [`FILTER_MAX_WORDS`]. With two bits per key that keeps about 2 % of the lookups of absent
/// suffixes passing at any size, as 2 MiB did for 1M keys when the filter had one size.
#[must_use]
pub const fn filter_words(keys: u32) -> u32 {
    crate::pow2_within(keys.div_ceil(4), FILTER_MIN_WORDS, FILTER_MAX_WORDS)
}

/// Bit words per generation the kernel object declares in `DNS_FILTER` (2 MiB): what a load
/// that does not size it gets (tests, benchmarks, a daemon whose policy comes later).
pub const FILTER_DECLARED_WORDS: u32 = 1 << 18;

/// A generation's filter of the name keys (a Bloom filter blocked by word: each key sets
/// two bits of one 64-bit word), in `DNS_FILTER`, laid out as the firewall's key filters
/// (`crate::firewall::KeyFilter`): each generation's mask first (its word count, a power of
/// two, minus one; 0 lets every suffix through), then generation 0's words and generation
/// 1's. The daemon sizes the map when it starts, by the policy's name keys
/// ([`filter_words`]). The inspector reads the mask once per query and looks a suffix up in
/// `DNS_NAMES` only when both of its bits are set, so a name on no list costs no hash-map
/// lookup, only one array word per suffix. False positives cost a lookup and change nothing;
/// there are no false negatives, as every key of a generation is added before its mask is
/// written and the generation goes live.
pub struct NameFilter;

impl NameFilter {
    /// Where a key's two bits are: a hash that picks the word (see [`Self::index`]), and the
    /// mask of both bits. From the suffix hash's first lane (already a full-avalanche mix)
    /// with the scope and the kind mixed in, so that an exact entry does not set the bits of
    /// the wildcard with the same suffix.
    #[inline(always)]
    #[must_use]
    pub const fn slot(a: u64, scope: u8, kind: u8) -> (u32, u64) {
        let h = a ^ ((((scope as u64) << 1) | kind as u64) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let word = (h >> 40) as u32;
        let bits = (1u64 << (h & 63)) | (1u64 << ((h >> 6) & 63));
        (word, bits)
    }

    /// The map entry of word hash `word` of generation `generation`, whose mask is `mask`.
    #[inline(always)]
    #[must_use]
    pub const fn index(generation: u32, word: u32, mask: u32) -> u32 {
        KeyFilter::index(generation, word, mask)
    }

    /// Adds the key to a generation's `words` (a power of two of them).
    #[inline]
    pub fn insert(words: &mut [u64], key: &NameKey) {
        let (word, bits) = Self::slot(key.a, key.scope, key.kind);
        KeyFilter::set(words, word, bits);
    }

    /// Whether a generation's `words` may hold the key.
    #[inline]
    #[must_use]
    pub fn may_hold(words: &[u64], a: u64, scope: u8, kind: u8) -> bool {
        let (word, bits) = Self::slot(a, scope, kind);
        KeyFilter::test(words, word, bits)
    }
}

/// What a matching name entry says.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NameValue {
    /// `CLOCK_BOOTTIME` nanoseconds after which the entry no longer applies; 0 = never.
    pub expires_boot_ns: u64,
    /// Allowlist: the most entropy the labels below may carry, in bits with 16 fractional
    /// bits (see [`super::entropy::bound_fp`]); `u32::MAX` = none.
    pub max_entropy_fp: u32,
    /// Query types the entry applies to; 0 marks an unused slot; all zero = every type.
    pub qtypes: [u16; MAX_QTYPES],
    /// Index of the list the entry came from (for events).
    pub list: u16,
    /// 0: the scope's mode decides (a blocklist blocks, an allowlist allows). Under a
    /// blocklist, [`crate::intel::ACTION_ALERT`] or [`crate::intel::ACTION_TAG`] (the names
    /// of an `[intel]` feed with that action): the query passes and is reported, with
    /// [`crate::event::FLAG_INTEL_NAME_ALERT`] or [`crate::event::FLAG_INTEL_NAME_TAG`]. A
    /// blocking entry on any suffix of the name wins over such an entry, however specific.
    pub intel: u8,
    pub _pad: [u8; 1],
}
map_type!(NameValue, 24);

impl NameValue {
    /// Whether the entry applies to query type `qtype`.
    #[inline(always)]
    #[must_use]
    pub fn applies_to(&self, qtype: u16) -> bool {
        let q = self.qtypes;
        (q[0] == 0 && q[1] == 0 && q[2] == 0 && q[3] == 0)
            || q[0] == qtype
            || q[1] == qtype
            || q[2] == qtype
            || q[3] == qtype
    }
}

/// Policy of one scope in one generation.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeConfig {
    pub mode: u8,
    pub action: u8,
    pub flags: u8,
    pub _pad: [u8; 5],
    pub rate_interval_ns: u64,
    pub rate_tolerance_ns: u64,
}
map_type!(ScopeConfig, 24);

/// DNS settings shared by the scopes of one generation.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsGlobal {
    /// Destination ports carrying DNS; 0 marks an unused slot.
    pub ports: [u16; MAX_PORTS],
    /// The answer budget (GCRA): nanoseconds per NXDOMAIN answer to one client prefix;
    /// 0 = no budget.
    pub answer_interval_ns: u64,
    /// Burst tolerance of the answer budget, in nanoseconds.
    pub answer_tolerance_ns: u64,
    /// Event budget per CPU (GCRA): one full event per this many ns; 0 = never aggregate
    /// (see `crate::event::DnsAggName`).
    pub event_interval_ns: u64,
    /// How far ahead of now the budget may run: a burst of `tolerance / interval + 1` events.
    pub event_tolerance_ns: u64,
    /// Over the budget, every this many aggregated queries on a CPU one is still sent in
    /// full (a sample); 0 = never.
    pub event_sample: u32,
    /// Prefix length that groups IPv4 clients under one answer budget (0..=32).
    pub answer_prefix_v4: u8,
    /// Prefix length that groups IPv6 clients under one answer budget (0..=128).
    pub answer_prefix_v6: u8,
    /// Prefix lengths that group ingress clients under one query rate bucket (see
    /// [`crate::packet::rate_prefix_bits`]; 0 keeps the whole address).
    pub rate_prefix_v4: u8,
    pub rate_prefix_v6: u8,
    /// The address a sinkhole answers AAAA questions with.
    pub sinkhole_v6: [u8; 16],
    /// The address a sinkhole answers A questions with.
    pub sinkhole_v4: [u8; 4],
    /// TTL of sinkhole answers, seconds.
    pub sinkhole_ttl: u32,
}
map_type!(DnsGlobal, 80);

impl DnsGlobal {
    /// The answer budget key of a client: its address (IPv4 mapped into IPv6) cut to the
    /// configured prefix.
    #[inline(always)]
    #[must_use]
    pub fn answer_key(&self, addr: &[u8; 16], v4: bool) -> ClientKey {
        // An IPv4 address sits in the last 32 bits of the mapped form.
        let bits = if v4 {
            96 + u32::from(self.answer_prefix_v4.min(32))
        } else {
            u32::from(self.answer_prefix_v6.min(128))
        };
        ClientKey {
            addr: crate::packet::keep_prefix(addr, bits),
            scope: u32::from(SCOPE_INGRESS),
        }
    }
}

impl DnsGlobal {
    #[inline(always)]
    #[must_use]
    pub fn is_dns_port(&self, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_PORTS {
            if port != 0 && self.ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Key of the per-client query rate buckets.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientKey {
    /// Who the bucket belongs to: the client address on ingress; on egress the sending
    /// socket's cgroup id (native-endian, in the first eight bytes, the rest zero), so one
    /// local process cannot spend the bucket of every other one.
    pub addr: [u8; 16],
    pub scope: u32,
}
map_type!(ClientKey, 20);

/// Per-scope DNS counters (index `scope * DNS_STATS_PER_SCOPE + counter`).
pub const STAT_QUERIES: u32 = 0;
pub const STAT_ALLOWED: u32 = 1;
pub const STAT_BLOCKED: u32 = 2;
pub const STAT_NXDOMAIN_SENT: u32 = 3;
/// Blocked in audit mode: would have been blocked, was let through.
pub const STAT_AUDITED: u32 = 4;
pub const STAT_TCP: u32 = 5;
pub const STAT_SINKHOLE_SENT: u32 = 6;
pub const STAT_REFUSED_SENT: u32 = 7;
/// Passed queries for a name of an `[intel]` feed whose action is `alert`.
pub const STAT_INTEL_ALERTED: u32 = 8;
/// Passed queries for a name of an `[intel]` feed whose action is `tag`.
pub const STAT_INTEL_TAGGED: u32 = 9;
pub const DNS_STATS_PER_SCOPE: u32 = 10;
/// Stable names, indexed by counter.
pub const STAT_NAMES: [&str; DNS_STATS_PER_SCOPE as usize] = [
    "queries",
    "allowed",
    "blocked",
    "nxdomain_sent",
    "audited",
    "tcp",
    "sinkhole_sent",
    "refused_sent",
    "intel_alerted",
    "intel_tagged",
];

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    fn empty_filter(keys: u32) -> std::vec::Vec<u64> {
        std::vec![0u64; filter_words(keys) as usize]
    }

    #[test]
    fn filter_holds_what_was_inserted_and_rejects_most_else() {
        let mut f = empty_filter(200_000);
        let mut x = 0x0123_4567_89ab_cdefu64;
        let mut next = || {
            x = crate::dns::hash::fmix(x.wrapping_add(0x9e37_79b9_7f4a_7c15));
            x
        };
        let keys: std::vec::Vec<NameKey> = (0..200_000)
            .map(|i| NameKey {
                a: next(),
                scope: (i % 2) as u8,
                kind: ((i / 2) % 2) as u8,
                ..NameKey::default()
            })
            .collect();
        for k in &keys {
            NameFilter::insert(&mut f, k);
        }
        assert!(
            keys.iter()
                .all(|k| NameFilter::may_hold(&f, k.a, k.scope, k.kind))
        );
        // The same hashes under the other kind, and fresh hashes: absent. With 200k keys in
        // 65,536 words (4M bits, 10 % density) about 1.5 % pass (two bits, or one when they
        // coincide); allow twice that.
        let absent = (0..100_000)
            .map(|i| (next(), (i % 2) as u8, (i / 2 % 2) as u8))
            .chain(keys.iter().map(|k| (k.a, k.scope, k.kind ^ 1)))
            .filter(|&(a, scope, kind)| NameFilter::may_hold(&f, a, scope, kind))
            .count();
        assert!(absent < 9_000, "{absent} false positives in 300k");
    }

    #[test]
    fn filter_sizes_follow_the_keys_as_powers_of_two() {
        assert_eq!(filter_words(0), FILTER_MIN_WORDS);
        assert_eq!(filter_words(3), FILTER_MIN_WORDS);
        assert_eq!(filter_words(257), 128);
        assert_eq!(filter_words(1 << 20), 1 << 18);
        assert_eq!(filter_words((1 << 20) + 1), 1 << 19);
        assert_eq!(filter_words(u32::MAX), FILTER_MAX_WORDS);
        assert_eq!(empty_filter(1000).len(), 256);
    }

    #[test]
    fn filter_slot_sets_one_or_two_bits_of_one_word() {
        for a in [0, 1, u64::MAX, 0x8000_0000_0000_0000] {
            for (scope, kind) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let (word, bits) = NameFilter::slot(a, scope, kind);
                assert!(word < 1 << 24);
                assert!((1..=2).contains(&bits.count_ones()));
                let g0 = NameFilter::index(0, word, FILTER_MIN_WORDS - 1);
                let g1 = NameFilter::index(1, word, FILTER_MIN_WORDS - 1);
                assert!((2..2 + FILTER_MIN_WORDS).contains(&g0));
                assert!((2 + FILTER_MIN_WORDS..2 + 2 * FILTER_MIN_WORDS).contains(&g1));
            }
        }
    }

    #[test]
    fn key_words_are_the_key_bytes() {
        let k = NameKey {
            a: 0x1122_3344_5566_7788,
            b: 0x99aa_bbcc_ddee_ff00,
            wire_len: 0x1234,
            scope: 1,
            kind: KIND_BELOW,
            generation: 1,
            _pad: [0; 3],
        };
        let w = NameKey::key_words(k.a, k.b, k.wire_len, k.scope, k.kind, k.generation);
        // SAFETY: both are 24 plain bytes.
        let as_words: [u64; 3] = unsafe { core::mem::transmute(k) };
        assert_eq!(w, as_words);
    }

    #[test]
    fn answer_keys_cut_addresses_to_the_prefix() {
        let g = DnsGlobal {
            answer_prefix_v4: 24,
            answer_prefix_v6: 56,
            ..DnsGlobal::default()
        };
        let mut v4 = [0u8; 16];
        v4[10] = 0xff;
        v4[11] = 0xff;
        v4[12..].copy_from_slice(&[203, 0, 113, 77]);
        let k = g.answer_key(&v4, true);
        assert_eq!(&k.addr[10..], &[0xff, 0xff, 203, 0, 113, 0]);
        assert_eq!(k.scope, u32::from(SCOPE_INGRESS));
        let v6 = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0xaa, 0xbb, 0x34, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        let k = g.answer_key(&v6, false);
        assert_eq!(
            k.addr,
            [
                0x20, 0x01, 0x0d, 0xb8, 0, 0xaa, 0xbb, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        // Prefixes that do not end on a byte boundary.
        let g = DnsGlobal {
            answer_prefix_v4: 20,
            answer_prefix_v6: 3,
            ..g
        };
        assert_eq!(&g.answer_key(&v4, true).addr[12..], &[203, 0, 112, 0]);
        assert_eq!(g.answer_key(&v6, false).addr[0], 0x20);
        assert_eq!(g.answer_key(&v6, false).addr[1..], [0; 15]);
    }
}
