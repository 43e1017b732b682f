//! Threat-intelligence indicators (`[intel]`): the map layout shared by the kernel's match and
//! the daemon's feed loader.
//!
//! Addresses are keyed as [`crate::packet::Packet`] holds them: 16 bytes, IPv4 mapped into
//! IPv6 (`::ffff:a.b.c.d`). An IPv4 CIDR `a.b.c.d/n` is the trie prefix `96 + n` of the
//! mapped address, so one set of maps serves both families; IPv4 CIDRs are expanded into
//! tables at the /16 and /24 strides ([`stride_match`]).
//!
//! Every indicator map exists twice, one per generation ([`GENERATIONS`]); the daemon fills
//! the idle one (its bloom filter built anew, [`bloom_hash`]) and flips
//! [`IntelControl::active`], so a refresh is atomic and an indicator removed from a feed stops
//! matching at the flip.

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
/// The generation's CIDRs cover IPv4 addresses: the stride tables hold them.
pub const HAS_CIDRS_V4: u32 = 8;

/// Which generation is live and what each holds (one entry).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntelControl {
    /// The live generation (0 or 1).
    pub active: u32,
    /// Per generation, [`HAS_IPS`] | [`HAS_CIDRS`] | [`CHECK_EGRESS`]: a generation without
    /// CIDRs never walks the trie, one without addresses never probes the filter.
    pub enabled: [u32; GENERATIONS as usize],
    /// Blocks of each generation's bloom filter, less one (a power of two less one; both
    /// generations have the same size): the mask [`bloom_hash`] takes.
    pub bloom_mask: u32,
    /// Words of each generation's IPv6 /64 filter (`INTEL_V6_FILTER_g`), less one (a power of
    /// two less one; both generations have the same size): the mask [`v6_filter_slot`] takes.
    pub v6_filter_mask: u32,
}
map_type!(IntelControl, 20);

/// Words (64-bit) of a generation's IPv6 /64 filter for a /64 table of `entries` entries: one
/// word per two entries, a power of two (4 bytes per entry of room: 4 MiB for 1M). Each /64
/// sets two bits of one word, so at a full table about 0.4 % of absent /64s pass the filter.
#[must_use]
pub fn v6_filter_words(entries: u32) -> u32 {
    (entries / 2).max(1).next_power_of_two()
}

/// The word (under `mask`) and the two bits of /64 `key` ([`slash64`]) in a /64 filter: the
/// kernel looks a /64 up in the /64 table only when both bits are set, so an IPv6 address
/// whose /64 holds no CIDR costs an array word instead of a hash-map lookup.
#[inline(always)]
#[must_use]
pub const fn v6_filter_slot(key: u64, mask: u32) -> (u32, u64) {
    let mut h = key.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 32;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 29;
    let word = (h >> 32) as u32 & mask;
    (word, (1u64 << (h & 63)) | (1u64 << ((h >> 6) & 63)))
}

/// What an indicator maps to (exact table and trie alike).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntelHit {
    /// [`ACTION_DROP`], [`ACTION_ALERT`] or [`ACTION_TAG`].
    pub action: u8,
    /// [`HIT_V4_LONG`] on a trie entry that is an IPv4 prefix longer than /24; 0 elsewhere.
    pub flags: u8,
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

// ---- The bloom filter in front of the exact table ----
//
// A blocked bloom filter in a plain array map (`INTEL_BLOOM_g`): each address sets and tests
// [`BLOOM_HASHES`] bits of one 512-bit block (a cache line), chosen by [`bloom_hash`]. The
// daemon builds a generation's filter whole in memory from that generation's addresses and
// writes it over the array, so every refresh starts from a fresh filter (the kernel's
// `BPF_MAP_TYPE_BLOOM_FILTER` cannot be cleared). One map read per lookup.

/// 64-bit words of one filter block.
pub const BLOOM_BLOCK_WORDS: usize = 8;
/// One filter block: 512 bits.
pub type BloomBlock = [u64; BLOOM_BLOCK_WORDS];
/// Bits each address sets.
pub const BLOOM_HASHES: u32 = 6;
/// Filter bits per address, at least (the block count is rounded up to a power of two).
pub const BLOOM_BITS_PER_ENTRY: u64 = 12;

/// Blocks of a filter for `entries` addresses: a power of two, at least one.
#[must_use]
pub fn bloom_blocks(entries: u32) -> u32 {
    let bits = u64::from(entries.max(1)) * BLOOM_BITS_PER_ENTRY;
    let blocks = bits.div_ceil(BLOOM_BLOCK_WORDS as u64 * 64);
    let mut n = 1u64;
    while n < blocks && n < 1 << 31 {
        n <<= 1;
    }
    n as u32
}

/// An address key (`[u8; 16]`, IPv4 mapped) as two little-endian words: bytes 0 to 7 in
/// `lo`, 8 to 15 in `hi`. The kernel reads them with word loads once per packet, and every
/// step of a lookup (filter hash, family, strides) works on the words instead of re-reading
/// bytes; [`AddrWords::of`] is the byte-wise reference the daemon and the tests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrWords {
    pub lo: u64,
    pub hi: u64,
}

impl AddrWords {
    #[inline(always)]
    #[must_use]
    pub fn of(addr: &[u8; 16]) -> Self {
        let mut lo = 0u64;
        let mut hi = 0u64;
        let mut i = 0;
        while i < 8 {
            lo |= u64::from(addr[i]) << (8 * i);
            hi |= u64::from(addr[8 + i]) << (8 * i);
            i += 1;
        }
        Self { lo, hi }
    }

    /// Whether the address is IPv4 as the maps key it (`::ffff:a.b.c.d`).
    #[inline(always)]
    #[must_use]
    pub const fn is_mapped_v4(self) -> bool {
        self.lo == 0 && self.hi as u32 == 0xffff_0000
    }

    /// The IPv4 address of a mapped key, `a.b.c.d` as `a << 24 | b << 16 | c << 8 | d`.
    #[inline(always)]
    #[must_use]
    pub const fn v4(self) -> u32 {
        ((self.hi >> 32) as u32).swap_bytes()
    }

    /// The /64: the first 8 bytes as a big-endian `u64` (the /64 table's key).
    #[inline(always)]
    #[must_use]
    pub const fn slash64(self) -> u64 {
        self.lo.swap_bytes()
    }
}

/// The block (`mask`: blocks less one) and the bit positions (9 bits each, [`BLOOM_HASHES`]
/// of them) of `addr`. The two halves are multiplied independently (their products are
/// computed side by side), folded, and mixed once for the block and once more for the
/// positions: three multiplications in a row, where composing full 64-bit finalisers took six.
#[inline(always)]
#[must_use]
pub fn bloom_hash(addr: &[u8; 16], mask: u32) -> (u32, u64) {
    bloom_hash_words(AddrWords::of(addr), mask)
}

/// [`bloom_hash`] of an address already read as words.
#[inline(always)]
#[must_use]
pub const fn bloom_hash_words(w: AddrWords, mask: u32) -> (u32, u64) {
    let a = (w.lo ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let b = (w.hi ^ 0x2545_f491_4f6c_dd1d).wrapping_mul(0x94d0_49bb_1331_11eb);
    let mut h1 = a ^ b.rotate_left(32);
    h1 ^= h1 >> 31;
    h1 = h1.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h1 ^= h1 >> 33;
    let mut h2 = (h1 ^ 0x6a09_e667_f3bc_c909).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h2 ^= h2 >> 29;
    ((h1 >> 32) as u32 & mask, h2)
}

/// Whether every bit of `positions` is set in `block`.
#[inline(always)]
#[must_use]
pub fn bloom_test(block: &BloomBlock, positions: u64) -> bool {
    let mut i = 0;
    while i < BLOOM_HASHES {
        let p = (positions >> (9 * i)) & 511;
        if block[(p >> 6) as usize & (BLOOM_BLOCK_WORDS - 1)] & (1u64 << (p & 63)) == 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// Sets the bits of `positions` in `block`.
pub fn bloom_set(block: &mut BloomBlock, positions: u64) {
    let mut i = 0;
    while i < BLOOM_HASHES {
        let p = (positions >> (9 * i)) & 511;
        block[(p >> 6) as usize & (BLOOM_BLOCK_WORDS - 1)] |= 1u64 << (p & 63);
        i += 1;
    }
}

// ---- IPv4 CIDRs at fixed strides ----
//
// IPv4 CIDRs are not walked in the trie bit by bit: they are expanded, when a generation is
// written, into two hash-indexed strides, and a lookup is at most two table reads:
//
// - `INTEL_V4_16_g` (slot `g` of `INTEL_V4_16`, there while generation `g` holds IPv4
//   CIDRs): an array of [`V4_SLASH16_ENTRIES`] [`CidrBlock`]s, one per /16. Its hit
//   is the longest CIDR of length <= 16 covering the /16 (a /8 writes 256 entries); its
//   [`BLOCK_LONGER`] bit says that longer CIDRs lie inside.
// - `INTEL_V4_24_g`: a hash table keyed by the /24 (`a.b.c` as a `u32`), holding an entry for
//   every /24 that a CIDR longer than /16 touches. Its hit is the longest CIDR of length <= 24
//   covering the /24 (inherited from the /16 when no /17 to /24 does; a /20 writes 16
//   entries); [`BLOCK_LONGER`] says that CIDRs longer than /24 lie inside.
// - CIDRs longer than /24 stay in the trie, flagged [`HIT_V4_LONG`], and are walked only for
//   an address whose /24 entry has [`BLOCK_LONGER`].
//
// IPv6 CIDRs stay in the trie. An IPv6 CIDR shorter than /96 that covers the mapped range
// `::ffff:0:0/96` (`::/0`, `::/8`, ...) covers every IPv4 address: it is also expanded as an
// IPv4 `/0`, ranked by its own length. Expansion goes from the shortest CIDR to the longest,
// so a longer CIDR overrides a shorter one: the result is the longest-prefix match
// ([`stride_match`] against a trie of the same CIDRs, tested in both the userspace reference
// and the kernel).

/// Entries of each generation's /16 array: one per IPv4 /16.
pub const V4_SLASH16_ENTRIES: u32 = 65_536;

/// [`CidrBlock::flags`]: CIDRs longer than this stride's lie inside the block.
pub const BLOCK_LONGER: u32 = 1;

/// [`IntelHit::flags`] of a trie entry that is an IPv4 CIDR longer than /24: the only trie
/// matches an IPv4 address takes (a shorter covering IPv6 CIDR is already in its /24 entry).
pub const HIT_V4_LONG: u8 = 1;

/// CIDRs longer than /24 a /24 entry holds in place ([`CidrBlock::long`]); a /24 with more
/// has [`BLOCK_LONGER`] and is looked up in the trie.
pub const LONG_SLOTS: usize = 4;

/// One /16 or /24 of IPv4 space: the longest CIDR up to the stride covering it (`hit.action`
/// 0: none), [`BLOCK_LONGER`], and in a /24 entry the CIDRs longer than /24 inside it
/// ([`long_slot`]), so that most such CIDRs cost no trie walk.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CidrBlock {
    pub hit: IntelHit,
    pub flags: u32,
    /// [`long_slot`]s, 0 for a free one; in the /16 array always 0.
    pub long: [u32; LONG_SLOTS],
}
map_type!(CidrBlock, 24);

/// A CIDR `a.b.c.net/len` (`len` 25 to 32) of a /24, as a slot of [`CidrBlock::long`]: the
/// last octet of its network, its length, the action and the feed (below [`MAX_FEEDS`]).
#[must_use]
pub const fn long_slot(net: u8, len: u32, hit: IntelHit) -> u32 {
    net as u32 | (len & 0xff) << 8 | (hit.action as u32) << 16 | (hit.feed as u32 & 0xff) << 24
}

/// The longest CIDR of the slots of `b` covering the address whose last octet is `last`
/// (`action` 0: none).
#[inline(always)]
#[must_use]
pub fn long_match(b: &CidrBlock, last: u8) -> IntelHit {
    let mut best = IntelHit::default();
    let mut best_len = 0;
    let mut i = 0;
    while i < LONG_SLOTS {
        let s = b.long[i];
        let len = (s >> 8) & 0xff;
        // `len` is 25 to 32 in a used slot (the mask keeps the top `len - 24` bits of the
        // last octet), 0 in a free one (never better than `best_len`).
        let mask = (0xff00u32 >> len.saturating_sub(24).min(8)) as u8;
        if len > best_len && u32::from(last & mask) == s & 0xff {
            best_len = len;
            best = IntelHit {
                action: (s >> 16) as u8,
                flags: 0,
                feed: (s >> 24) as u16,
            };
        }
        i += 1;
    }
    best
}

/// Whether `addr` is an IPv4 address as the maps key it (`::ffff:a.b.c.d`).
#[inline(always)]
#[must_use]
pub fn is_mapped_v4(addr: &[u8; 16]) -> bool {
    AddrWords::of(addr).is_mapped_v4()
}

/// The /16 of a mapped IPv4 address: its index in the /16 array.
#[inline(always)]
#[must_use]
pub fn slash16(addr: &[u8; 16]) -> u32 {
    (u32::from(addr[12]) << 8) | u32::from(addr[13])
}

/// The /24 of a mapped IPv4 address: its key in the /24 table.
#[inline(always)]
#[must_use]
pub fn slash24(addr: &[u8; 16]) -> u32 {
    (u32::from(addr[12]) << 16) | (u32::from(addr[13]) << 8) | u32::from(addr[14])
}

/// Where a CIDR of a generation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrPlace {
    /// The IPv4 CIDR `(network, length)` the stride tables expand, when it covers IPv4.
    pub v4: Option<(u32, u32)>,
    /// Whether the trie holds it (IPv6 CIDRs, IPv4 ones longer than /24).
    pub trie: bool,
    /// [`IntelHit::flags`] of its trie entry.
    pub trie_flags: u8,
}

/// Where the CIDR `net/bits` (16 bytes, IPv4 mapped, host bits clear) goes.
#[must_use]
pub fn place(net: &[u8; 16], bits: u32) -> CidrPlace {
    let zero = mapped_v4([0; 4]);
    if bits >= V4_MAPPED_BITS && is_mapped_v4(net) {
        let len = bits - V4_MAPPED_BITS;
        let v4 = u32::from_be_bytes([net[12], net[13], net[14], net[15]]);
        let long = len > 24;
        CidrPlace {
            v4: Some((v4, len)),
            trie: long,
            trie_flags: if long { HIT_V4_LONG } else { 0 },
        }
    } else if bits < V4_MAPPED_BITS && network(zero, bits) == *net {
        CidrPlace {
            v4: Some((0, 0)),
            trie: true,
            trie_flags: 0,
        }
    } else {
        CidrPlace {
            v4: None,
            trie: true,
            trie_flags: 0,
        }
    }
}

/// The stride tables being built ([`expand_v4`]).
pub trait StrideTables {
    /// The /16 entry `index` (every one exists).
    fn block16(&mut self, index: u32) -> &mut CidrBlock;
    /// The /24 entry `key`, created as `fresh` when absent; `None` when it is absent and the
    /// table is full.
    fn block24(&mut self, key: u32, fresh: CidrBlock) -> Option<&mut CidrBlock>;
}

/// Writes the IPv4 CIDR `net/len` (host bits clear) with `hit` into `t`. Calls must come in
/// order of the CIDRs' own lengths (an IPv6 CIDR covering IPv4 ranks by its IPv6 length),
/// shortest first. `false` when the /24 table is full (the set does not fit).
pub fn expand_v4<T: StrideTables>(t: &mut T, net: u32, len: u32, hit: IntelHit) -> bool {
    if len <= 16 {
        let first = (net >> 16) & !(u32::MAX >> len >> 16);
        let count = 1u32 << (16 - len);
        let mut i = 0;
        while i < count {
            t.block16(first + i).hit = hit;
            i += 1;
        }
        return true;
    }
    let (first, count) = if len <= 24 {
        ((net >> 8) & !(u32::MAX >> len >> 8), 1u32 << (24 - len))
    } else {
        (net >> 8, 1)
    };
    let mut i = 0;
    while i < count {
        let key = first + i;
        let b16 = t.block16(key >> 8);
        b16.flags |= BLOCK_LONGER;
        let fresh = CidrBlock {
            hit: b16.hit,
            flags: 0,
            long: [0; LONG_SLOTS],
        };
        let Some(b24) = t.block24(key, fresh) else {
            return false;
        };
        if len <= 24 {
            b24.hit = hit;
        } else if b24.flags & BLOCK_LONGER == 0 {
            // In a free slot; with none left, the /24 is looked up in the trie (which holds
            // every CIDR longer than /24).
            match b24.long.iter_mut().find(|s| **s == 0) {
                Some(slot) => *slot = long_slot(net as u8, len, hit),
                None => b24.flags |= BLOCK_LONGER,
            }
        }
        i += 1;
    }
    true
}

/// The longest IPv4 CIDR covering the IPv4 address `v4` ([`AddrWords::v4`] of a mapped key),
/// from the stride tables (`action` 0: none): `get16` reads the /16 array, `get24` the /24 table, `trie` walks the trie (called
/// only when the /24 has longer CIDRs inside); each returns a zeroed value when it finds
/// nothing (plain values, not `Option`s: the verifier refuses the undefined payload of a
/// `None` that the compiler may copy). The kernel and the userspace reference both use it.
#[inline(always)]
pub fn stride_match(
    v4: u32,
    get16: impl FnOnce(u32) -> CidrBlock,
    get24: impl FnOnce(u32) -> CidrBlock,
    trie: impl FnOnce() -> IntelHit,
) -> IntelHit {
    let b16 = get16(v4 >> 16);
    let mut best = b16.hit;
    if b16.flags & BLOCK_LONGER != 0 {
        let b24 = get24(v4 >> 8);
        if b24.hit.action != 0 || b24.flags != 0 {
            best = b24.hit;
        }
        if b24.flags & BLOCK_LONGER != 0 {
            let h = trie();
            if h.action != 0 && h.flags & HIT_V4_LONG != 0 {
                best = IntelHit {
                    action: h.action,
                    flags: 0,
                    feed: h.feed,
                };
            }
        } else {
            let h = long_match(&b24, v4 as u8);
            if h.action != 0 {
                best = h;
            }
        }
    }
    best
}

// ---- IPv6 CIDRs at the /64 stride ----
//
// `INTEL_V6_64_g`: a hash table keyed by the /64 (the address's first 8 bytes as a big-endian
// `u64`), so that a hit on an IPv6 CIDR of /49 to /64 is one hash lookup instead of a trie
// walk. Its entries ([`V6Block`]):
//
// - every /64 that a CIDR of /[`V6_STRIDE_MIN`] to /64 covers (a /56 writes 256 entries), with
//   the longest such CIDR, and inheriting, when it is longer, the longest trie-held CIDR of
//   /64 or shorter covering the /64;
// - every /64 holding a CIDR longer than /64 ([`BLOCK_LONGER`]: the trie, which holds every
//   such CIDR flagged [`HIT_V6_LONG`], is walked for it).
//
// CIDRs shorter than /[`V6_STRIDE_MIN`] stay in the trie (walked only when the address's /64
// has no entry and the generation has such CIDRs, [`HAS_CIDRS_V6_SHORT`]). Expansion is
// bounded by the table's capacity: a CIDR whose /64s do not fit what is left of it stays in
// the trie as a short one (the daemon's plan, `intel::load`; the /64s of CIDRs longer than /64
// always fit, one each at most, as the table holds as many entries as the trie).

/// Shortest IPv6 CIDR expanded into the /64 table (a /49 takes 32,768 entries).
pub const V6_STRIDE_MIN: u32 = 49;
/// The stride of the IPv6 table.
pub const V6_STRIDE: u32 = 64;

/// [`IntelControl::enabled`]: the generation's /64 table holds IPv6 CIDRs ([`v6_match`]).
pub const HAS_CIDRS_V6_64: u32 = 16;
/// The trie holds IPv6 CIDRs of /64 or shorter the /64 table has no entry for (walked for an
/// IPv6 address whose /64 has no entry).
pub const HAS_CIDRS_V6_SHORT: u32 = 32;

/// [`IntelHit::flags`] of a trie entry that is an IPv6 CIDR longer than /64: the only trie
/// matches an IPv6 address with a /64 entry takes.
pub const HIT_V6_LONG: u8 = 2;

/// One IPv6 /64: the longest CIDR of /64 or shorter covering it (`hit.action` 0: none), that
/// CIDR's length, and [`BLOCK_LONGER`] when CIDRs longer than /64 lie inside. An entry that
/// exists has `len` or `flags` set.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V6Block {
    pub hit: IntelHit,
    pub len: u16,
    pub flags: u16,
}
map_type!(V6Block, 8);

/// The /64 of an address: its key in the /64 table.
#[inline(always)]
#[must_use]
pub fn slash64(addr: &[u8; 16]) -> u64 {
    u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ])
}

/// The /64 table being built ([`expand_v6`]).
pub trait V6Table {
    /// The /64 entry `key`, created as `fresh` when absent; `None` when it is absent and the
    /// table is full.
    fn block64(&mut self, key: u64, fresh: V6Block) -> Option<&mut V6Block>;
}

/// How many /64 entries the IPv6 CIDR of `len` bits writes: `2^(64 - len)` for /49 to /64,
/// one (its own /64, marked [`BLOCK_LONGER`]) past /64, none below /[`V6_STRIDE_MIN`].
#[must_use]
pub const fn v6_entries(len: u32) -> u64 {
    if len < V6_STRIDE_MIN {
        0
    } else if len <= V6_STRIDE {
        1 << (V6_STRIDE - len)
    } else {
        1
    }
}

/// Writes the IPv6 CIDR whose /64 prefix is `net` (host bits clear) and length `len`
/// (/[`V6_STRIDE_MIN`] or longer) with `hit` into `t`, in any order: a /49 to /64 becomes the
/// hit of each of its /64s where it is the longest, a longer one marks its /64
/// [`BLOCK_LONGER`]. `inherit(key)` gives a /64 created now its longest covering CIDR of /64
/// or shorter held by the trie (length, hit; `(0, default)`: none). `false` when the table is
/// full.
pub fn expand_v6<T: V6Table>(
    t: &mut T,
    net: u64,
    len: u32,
    hit: IntelHit,
    mut inherit: impl FnMut(u64) -> (u32, IntelHit),
) -> bool {
    let count = v6_entries(len);
    let mut i = 0;
    while i < count {
        let key = net.wrapping_add(i);
        let (ilen, ihit) = inherit(key);
        let fresh = V6Block {
            hit: ihit,
            len: ilen as u16,
            flags: 0,
        };
        let Some(b) = t.block64(key, fresh) else {
            return false;
        };
        if len > V6_STRIDE {
            b.flags |= BLOCK_LONGER as u16;
        } else if len as u16 >= b.len {
            b.hit = hit;
            b.len = len as u16;
        }
        i += 1;
    }
    true
}

/// The longest IPv6 CIDR covering an address (not IPv4 mapped) whose /64 is `key64`
/// ([`AddrWords::slash64`]), from the /64 table and the trie (`action` 0: none): `get64`
/// reads the /64 table (a zeroed value when it has no entry),
/// `trie` walks the trie, called only for a /64 with [`BLOCK_LONGER`], or for one without an
/// entry when `short_in_trie` ([`HAS_CIDRS_V6_SHORT`]). The kernel and the userspace reference
/// both use it.
#[inline(always)]
pub fn v6_match(
    key64: u64,
    get64: impl FnOnce(u64) -> V6Block,
    trie: impl FnOnce() -> IntelHit,
    short_in_trie: bool,
) -> IntelHit {
    let b = get64(key64);
    if b.len == 0 && b.flags == 0 {
        return if short_in_trie {
            trie()
        } else {
            IntelHit::default()
        };
    }
    let mut best = b.hit;
    if b.flags & BLOCK_LONGER as u16 != 0 {
        let h = trie();
        if h.action != 0 && h.flags & HIT_V6_LONG != 0 {
            best = IntelHit {
                action: h.action,
                flags: 0,
                feed: h.feed,
            };
        }
    }
    best
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
    fn the_v6_filter_holds_every_slash64_and_lets_few_others_through() {
        extern crate std;
        let entries = 200_000u32;
        let words = v6_filter_words(entries);
        assert!(words.is_power_of_two() && words >= entries / 2);
        let mut filter = std::vec![0u64; words as usize];
        // /64s as the feeds give them: consecutive ones in a few /48s.
        let held =
            |i: u32| 0x2001_0db8_0000_0000u64 | u64::from(i >> 16) << 16 | u64::from(i & 0xffff);
        for i in 0..entries {
            let (w, bits) = v6_filter_slot(held(i), words - 1);
            filter[w as usize] |= bits;
        }
        let maybe = |k: u64| {
            let (w, bits) = v6_filter_slot(k, words - 1);
            filter[w as usize] & bits == bits
        };
        assert!((0..entries).all(|i| maybe(held(i))), "no false negatives");
        // Neighbouring /64s and other prefixes: absent.
        let probes = 200_000u32;
        let passed = (0..probes)
            .filter(|&i| maybe(held(i) + (1 << 40)) || maybe(0x2a00_1450_0000_0000 | u64::from(i)))
            .count();
        // Two bits of one word per /64, one word per two /64s: well under 1 % each.
        assert!(
            passed * 100 < probes as usize,
            "{passed} of {probes} pairs of absent /64s passed"
        );
    }

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

    #[test]
    fn the_bloom_filter_holds_what_was_set_and_sizes_in_powers_of_two() {
        assert_eq!(bloom_blocks(0), 1);
        assert_eq!(bloom_blocks(42), 1);
        assert_eq!(bloom_blocks(43), 2);
        assert_eq!(bloom_blocks(10_000_000), 1 << 18);
        let mask = bloom_blocks(1000) - 1;
        let mut blocks = [[0u64; BLOOM_BLOCK_WORDS]; 32];
        for i in 0..1000u32 {
            let a = mapped_v4(i.to_be_bytes());
            let (b, pos) = bloom_hash(&a, mask);
            bloom_set(&mut blocks[b as usize], pos);
        }
        let mut false_positives = 0;
        for i in 0..1000u32 {
            let (b, pos) = bloom_hash(&mapped_v4(i.to_be_bytes()), mask);
            assert!(bloom_test(&blocks[b as usize], pos));
            let (b, pos) = bloom_hash(&mapped_v4((i + 1_000_000).to_be_bytes()), mask);
            false_positives += u32::from(bloom_test(&blocks[b as usize], pos));
        }
        // 16 bits an address here (1000 in 32 blocks): well under 2 %.
        assert!(false_positives < 20, "{false_positives}");
    }

    #[test]
    fn a_slash24_holds_longer_cidrs_in_its_slots_until_they_overflow_into_the_trie() {
        struct T {
            b16: CidrBlock,
            b24: Option<CidrBlock>,
        }
        impl StrideTables for T {
            fn block16(&mut self, _: u32) -> &mut CidrBlock {
                &mut self.b16
            }
            fn block24(&mut self, _: u32, fresh: CidrBlock) -> Option<&mut CidrBlock> {
                Some(self.b24.get_or_insert(fresh))
            }
        }
        let hit = |feed| IntelHit {
            action: ACTION_DROP,
            flags: 0,
            feed,
        };
        let mut t = T {
            b16: CidrBlock::default(),
            b24: None,
        };
        let base = 0x0a01_0200u32;
        // /25 .0, /26 .64, /28 .96, /32 .100: the four slots.
        for (i, (last, len)) in [(0u32, 25u32), (64, 26), (96, 28), (100, 32)]
            .iter()
            .enumerate()
        {
            assert!(expand_v4(&mut t, base | last, *len, hit(i as u16 + 1)));
        }
        let b = t.b24.unwrap();
        assert_eq!(b.flags & BLOCK_LONGER, 0);
        let feed_of = |last: u8| long_match(&b, last).feed;
        assert_eq!(
            [0, 63, 64, 95, 96, 99, 100, 101, 111, 112, 128, 255].map(feed_of),
            [1, 1, 2, 2, 3, 3, 4, 3, 3, 2, 0, 0]
        );
        // A fifth: the /24 goes to the trie, its slots no longer consulted.
        assert!(expand_v4(&mut t, base | 200, 29, hit(5)));
        assert_ne!(t.b24.unwrap().flags & BLOCK_LONGER, 0);
        assert_eq!(long_match(&CidrBlock::default(), 7), IntelHit::default());
    }

    #[test]
    fn a_slash64_takes_the_longest_cidr_over_it_and_marks_longer_ones_for_the_trie() {
        extern crate std;
        use std::collections::BTreeMap;
        struct T(BTreeMap<u64, V6Block>, usize);
        impl V6Table for T {
            fn block64(&mut self, key: u64, fresh: V6Block) -> Option<&mut V6Block> {
                if self.0.len() >= self.1 && !self.0.contains_key(&key) {
                    return None;
                }
                Some(self.0.entry(key).or_insert(fresh))
            }
        }
        let hit = |feed| IntelHit {
            action: ACTION_DROP,
            flags: 0,
            feed,
        };
        let none = |_| (0, IntelHit::default());
        let mut t = T(BTreeMap::new(), 300);
        let base = 0x2001_0db8_0000_0000u64;
        // A /56 (256 /64s), then a /60 inside it (longer: wins its 16), in either order.
        assert!(expand_v6(&mut t, base | 0x10, 60, hit(2), none));
        assert!(expand_v6(&mut t, base, 56, hit(1), none));
        assert_eq!(t.0.len(), 256);
        assert_eq!((t.0[&base].hit.feed, t.0[&base].len), (1, 56));
        assert_eq!(
            (t.0[&(base | 0x1f)].hit.feed, t.0[&(base | 0x1f)].len),
            (2, 60)
        );
        assert_eq!(t.0[&(base | 0x20)].hit.feed, 1);
        // A /80 marks its /64; a fresh one inherits the trie's CIDR over it.
        assert!(expand_v6(&mut t, base | 0x20, 80, hit(3), none));
        assert_eq!(t.0[&(base | 0x20)].flags, BLOCK_LONGER as u16);
        let far = 0x2001_0db9_0000_0000u64;
        assert!(expand_v6(&mut t, far, 96, hit(3), |_| (32, hit(4))));
        assert_eq!(
            t.0[&far],
            V6Block {
                hit: hit(4),
                len: 32,
                flags: BLOCK_LONGER as u16
            }
        );
        // Full: 300 entries, a /56 elsewhere does not fit.
        assert!(!expand_v6(&mut t, far | 0x100, 56, hit(5), none));
        assert_eq!(
            (
                v6_entries(48),
                v6_entries(49),
                v6_entries(64),
                v6_entries(65)
            ),
            (0, 32_768, 1, 1)
        );
        // Matching: the entry's hit, the trie's only when longer than /64 and marked.
        let mut addr = [0u8; 16];
        addr[..8].copy_from_slice(&(base | 0x20).to_be_bytes());
        let get = |k| t.0.get(&k).copied().unwrap_or_default();
        let long = IntelHit {
            flags: HIT_V6_LONG,
            ..hit(3)
        };
        let key = |a: &[u8; 16]| AddrWords::of(a).slash64();
        assert_eq!(v6_match(key(&addr), get, || long, false), hit(3));
        assert_eq!(v6_match(key(&addr), get, || hit(9), false), hit(1));
        addr[..8].copy_from_slice(&0x2001_0dba_0000_0000u64.to_be_bytes());
        assert_eq!(v6_match(key(&addr), get, || hit(9), true), hit(9));
        assert_eq!(
            v6_match(key(&addr), get, || hit(9), false),
            IntelHit::default()
        );
        assert_eq!(slash64(&addr), 0x2001_0dba_0000_0000);
        assert_eq!(key(&addr), slash64(&addr));
    }

    #[test]
    fn address_words_answer_as_the_bytes_do() {
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for i in 0..20_000 {
            let mut a = [0u8; 16];
            for b in &mut a {
                *b = next() as u8;
            }
            // Mostly near-mapped addresses: one byte of the prefix off at most.
            if i % 4 != 0 {
                a[..10].fill(0);
                a[10] = 0xff;
                a[11] = 0xff;
                if i % 4 == 2 {
                    a[(next() % 12) as usize] ^= 1 << (next() % 8);
                }
            }
            let w = AddrWords::of(&a);
            let mapped = a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff;
            assert_eq!(w.is_mapped_v4(), mapped, "{a:?}");
            assert_eq!(is_mapped_v4(&a), mapped);
            assert_eq!(w.v4(), u32::from_be_bytes([a[12], a[13], a[14], a[15]]));
            assert_eq!(w.slash64(), slash64(&a));
            assert_eq!(bloom_hash(&a, 1023), bloom_hash_words(w, 1023));
        }
    }

    #[test]
    fn cidrs_are_placed_by_family_and_length() {
        let v4 = |o, bits: u32| place(&network(mapped_v4(o), 96 + bits), 96 + bits);
        let p = v4([10, 1, 2, 0], 24);
        assert_eq!((p.v4, p.trie), (Some((0x0a01_0200, 24)), false));
        let p = v4([10, 1, 2, 128], 25);
        assert_eq!(
            (p.v4, p.trie, p.trie_flags),
            (Some((0x0a01_0280, 25)), true, HIT_V4_LONG)
        );
        // ::/0 and ::/8 cover the mapped range; 2001:db8::/32 does not.
        assert_eq!(place(&[0; 16], 0).v4, Some((0, 0)));
        assert_eq!(place(&[0; 16], 8).v4, Some((0, 0)));
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let p = place(&v6, 32);
        assert_eq!((p.v4, p.trie, p.trie_flags), (None, true, 0));
        let a = mapped_v4([1, 2, 3, 4]);
        assert!(is_mapped_v4(&a));
        assert!(!is_mapped_v4(&v6));
        assert_eq!((slash16(&a), slash24(&a)), (0x0102, 0x01_0203));
        let w = AddrWords::of(&a);
        assert!(w.is_mapped_v4() && !AddrWords::of(&v6).is_mapped_v4());
        assert_eq!(w.v4(), 0x0102_0304);
        assert_eq!(
            (w.v4() >> 16, w.v4() >> 8, w.v4() as u8),
            (0x0102, 0x01_0203, 4)
        );
    }
}
