//! IDS preselection: the multi-pattern prefilter over the first bytes of a flow's payload and
//! the port groups, shared by the kernel program and the userspace engine (which replays the
//! same decision offline, so both sides agree on which flows reach the full match).
//!
//! The prefilter is a bitmap of hashed, case-folded grams of 2 to 4 bytes: each rule that can be
//! preselected contributes the first bytes of one content that must lie within the first
//! [`IDS_WINDOW`] bytes of a payload. The scan hashes the gram starting at every position of the
//! window, for every gram length in use, and tests one bit each. A hit sends the flow to the
//! full match; a miss is exact for those rules (no false negatives), false positives only cost a
//! trip to userspace.

use crate::map_type;

/// Bytes of a payload the prefilter scans (grams must start and end inside it).
pub const IDS_WINDOW: usize = 64;
/// The longest gram; shorter contents contribute a gram of their own length.
pub const IDS_GRAM_MAX: usize = 4;
/// The shortest gram: a rule whose chosen content is shorter is not preselected by content.
pub const IDS_GRAM_MIN: usize = 2;
/// log2 of the bitmap's size in bits.
pub const IDS_GRAM_BITS: u32 = 16;
/// 64-bit words in the bitmap (65,536 bits, 8 KiB).
pub const IDS_GRAM_WORDS: usize = 1 << (IDS_GRAM_BITS - 6);

/// `IdsPortGroup::mode`: the group's flows are preselected by the gram prefilter.
pub const IDS_MODE_PREFILTER: u32 = 1;
/// Every flow of the group goes to the full match (a rule of the group has no content that
/// the prefilter can anchor in the window).
pub const IDS_MODE_ALL: u32 = 2;

/// [`prefilter`]'s answer: no gram of the window is in the bitmap.
pub const IDS_PF_MISS: u32 = 0;
/// A gram of the window is in the bitmap.
pub const IDS_PF_HIT: u32 = 1;
/// The window is shorter than [`IDS_WINDOW`]: a content could straddle this segment and the
/// next one, so the flow is sent rather than judged on a fragment.
pub const IDS_PF_SHORT: u32 = 2;

/// The gram bitmap (one entry of an array map, read whole by the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdsGrams {
    /// Bit `n` set: grams of `n` bytes are in use (n in 2..=4).
    pub lens: u32,
    pub _pad: u32,
    pub words: [u64; IDS_GRAM_WORDS],
}
map_type!(IdsGrams, 8 + 8 * IDS_GRAM_WORDS);

impl Default for IdsGrams {
    fn default() -> Self {
        Self {
            lens: 0,
            _pad: 0,
            words: [0; IDS_GRAM_WORDS],
        }
    }
}

/// Bytes of the buffer [`prefilter`] scans: the window and room for the last gram. Bytes
/// past the payload must be zero.
pub const IDS_SCAN_BYTES: usize = IDS_WINDOW + IDS_GRAM_MAX;

impl IdsGrams {
    /// Adds the gram `bytes` (2 to 4 bytes; longer input is cut to 4). Returns false, adding
    /// nothing, for input shorter than [`IDS_GRAM_MIN`].
    pub fn insert(&mut self, bytes: &[u8]) -> bool {
        let len = if bytes.len() > IDS_GRAM_MAX {
            IDS_GRAM_MAX
        } else {
            bytes.len()
        };
        if len < IDS_GRAM_MIN {
            return false;
        }
        let mut g = [0u8; IDS_GRAM_MAX];
        g[..len].copy_from_slice(&bytes[..len]);
        let packed = (u32::from_le_bytes(g) | FOLD) & gram_mask(len as u32);
        let bit = gram_bit(len as u32, packed);
        self.words[(bit >> 6) as usize] |= 1u64 << (bit & 63);
        self.lens |= 1 << len;
        true
    }

    /// The bit, as 0 or 1 (arithmetic only: no branch for the verifier to follow).
    #[inline(always)]
    #[must_use]
    pub fn bit(&self, bit: u32) -> u64 {
        let word = ((bit >> 6) as usize) & (IDS_GRAM_WORDS - 1);
        (self.words[word] >> (bit & 63)) & 1
    }
}

/// Case folding of four packed bytes: bit 0x20 set in each. ASCII letters fold to lower case;
/// a few other byte pairs (such as `@` and a backquote) fold together too, which can only
/// add false positives.
pub const FOLD: u32 = 0x2020_2020;

/// The mask keeping the first `len` (2 to 4) of four packed bytes.
#[inline(always)]
#[must_use]
pub const fn gram_mask(len: u32) -> u32 {
    ((1u64 << (8 * len)) - 1) as u32
}

/// The bitmap bit of a gram of `len` bytes, packed little-endian, folded and masked.
#[inline(always)]
#[must_use]
pub const fn gram_bit(len: u32, packed: u32) -> u32 {
    let h = (packed ^ len.wrapping_mul(0x9E37_79B1)).wrapping_mul(0x85EB_CA77);
    let h = (h ^ (h >> 15)).wrapping_mul(0xC2B2_AE3D);
    (h ^ (h >> 13)) >> (32 - IDS_GRAM_BITS)
}

/// The prefilter over a payload of `len` bytes whose first bytes are in `buf` (bytes past the
/// payload zero). The scan is straight-line arithmetic per position: every gram of every
/// length in use is tested and the hits are or-ed, so the verifier sees one path through a
/// loop bounded by [`IDS_WINDOW`].
#[inline(always)]
#[must_use]
pub fn prefilter(grams: &IdsGrams, buf: &[u8; IDS_SCAN_BYTES], len: usize) -> u32 {
    let lens = grams.lens;
    let mut hit = 0u64;
    let mut pos = 0;
    while pos < IDS_WINDOW {
        let w = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) | FOLD;
        let mut glen = IDS_GRAM_MIN as u32;
        while glen <= IDS_GRAM_MAX as u32 {
            let used = u64::from((lens >> glen) & 1);
            hit |= grams.bit(gram_bit(glen, w & gram_mask(glen))) & used;
            glen += 1;
        }
        pos += 1;
    }
    if hit != 0 {
        IDS_PF_HIT
    } else if len < IDS_WINDOW {
        IDS_PF_SHORT
    } else {
        IDS_PF_MISS
    }
}

/// Copies the first bytes of `payload` into a zeroed scan buffer (the userspace side of what
/// the kernel does with `bpf_skb_load_bytes`).
#[must_use]
pub fn scan_buffer(payload: &[u8]) -> [u8; IDS_SCAN_BYTES] {
    let mut b = [0u8; IDS_SCAN_BYTES];
    let n = if payload.len() > IDS_WINDOW {
        IDS_WINDOW
    } else {
        payload.len()
    };
    b[..n].copy_from_slice(&payload[..n]);
    b
}

/// Key of the port groups: a transport protocol and a port (0: the group of rules whose ports
/// are `any`, negated or too many to list).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdsPortKey {
    pub proto: u8,
    pub _pad: u8,
    pub port: u16,
}
map_type!(IdsPortKey, 4);

/// A port group: the union of its rules' modes (`IDS_MODE_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdsPortGroup {
    pub mode: u32,
}
map_type!(IdsPortGroup, 4);

/// Payload bytes one ring record carries; a longer payload is cut (counted `IS_TRUNCATED`).
pub const IDS_RECORD_BYTES: usize = 1024;

/// `IdsConfig::flags`: the IDS program inspects.
pub const IDS_ON: u32 = 1;

/// The IDS settings the kernel reads (`IDS_CONFIG`, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdsConfig {
    pub flags: u32,
    /// Records each CPU may send per second (a token bucket of one second's worth); past it,
    /// new flows are sampled out and selected flows' packets skipped, both counted.
    pub budget_per_sec: u32,
    /// Ring fill (bytes) past which the program behaves as if the budget were spent.
    pub ring_high_water: u32,
    pub _pad: u32,
    /// `[ids] ports`: only packets with one of these as source or destination port are
    /// looked at (ICMP and other protocols without ports are not, then). All 0: every port.
    pub ports: [u16; IDS_SCOPE_PORTS],
    /// `[ids] interfaces`: the interfaces (by index) the program inspects on. All 0: every
    /// interface it is attached to.
    pub ifindex: [u32; IDS_SCOPE_IFACES],
}
map_type!(IdsConfig, 16 + 2 * IDS_SCOPE_PORTS + 4 * IDS_SCOPE_IFACES);

/// Ports `[ids] ports` may list.
pub const IDS_SCOPE_PORTS: usize = 8;
/// Interfaces `[ids] interfaces` may list.
pub const IDS_SCOPE_IFACES: usize = 8;

impl IdsConfig {
    /// Whether a packet with these ports is in the `ports` scope.
    #[inline(always)]
    #[must_use]
    pub fn port_in_scope(&self, sport: u16, dport: u16) -> bool {
        if self.ports[0] == 0 {
            return true;
        }
        let mut hit = false;
        for i in 0..IDS_SCOPE_PORTS {
            let p = self.ports[i];
            hit |= p != 0 && (p == sport || p == dport);
        }
        hit
    }

    /// Whether interface `ifindex` is in the `interfaces` scope.
    #[inline(always)]
    #[must_use]
    pub fn iface_in_scope(&self, ifindex: u32) -> bool {
        if self.ifindex[0] == 0 {
            return true;
        }
        let mut hit = false;
        for i in 0..IDS_SCOPE_IFACES {
            hit |= self.ifindex[i] == ifindex;
        }
        hit
    }
}

/// A flow a `drop` rule matched (`IDS_DROPS`, keyed by the connection tracker's flow key,
/// `conntrack::CtKey`, which both directions share).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdsDrop {
    /// The rule's sid.
    pub sid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` of the matched packet as the program saw it (its record's `ns`).
    pub matched_ns: u64,
    /// CLOCK_MONOTONIC when the daemon wrote this entry: from here on the flow is dropped.
    pub installed_ns: u64,
    /// Packets dropped since (XDP and tcx), racy across CPUs (a count, not an account).
    pub dropped: u64,
}
map_type!(IdsDrop, 32);

/// Capacity of `IDS_DROPS` (LRU: the oldest dropped flow is forgotten first).
pub const IDS_DROP_FLOWS: u32 = 65_536;

/// One direction of a flow, as the program sees its packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdsFlowKey {
    pub family: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
    pub sport: u16,
    pub dport: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
map_type!(IdsFlowKey, 40);

/// `IdsFlowState::state`: the flow's packets go to userspace.
pub const IDS_FLOW_SELECTED: u32 = 1;
/// The flow was selected while the budget was spent: it is not inspected (sampled out).
pub const IDS_FLOW_SAMPLED_OUT: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdsFlowState {
    pub state: u32,
    /// Why it was selected (`IDS_WHY_*`).
    pub why: u32,
}
map_type!(IdsFlowState, 8);

/// Why a flow was selected: its port group sends every flow.
pub const IDS_WHY_GROUP_ALL: u8 = 1;
/// The prefilter hit.
pub const IDS_WHY_PREFILTER: u8 = 2;
/// A TCP segment shorter than the window (a content could straddle segments).
pub const IDS_WHY_SHORT: u8 = 3;

/// One payload window sent to userspace (`IDS_RECORDS`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IdsRecord {
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    /// `IDS_WHY_*` of the flow.
    pub why: u8,
    pub sport: u16,
    pub dport: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// TCP sequence number of the payload's first byte (0 otherwise).
    pub seq: u32,
    /// The payload's full length.
    pub payload_len: u32,
    /// Bytes copied into `data`.
    pub len: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` when the program saw the packet (match-to-drop latency).
    pub ns: u64,
    pub data: [u8; IDS_RECORD_BYTES],
}
map_type!(IdsRecord, 64 + IDS_RECORD_BYTES);

/// Per-CPU counters (`IDS_STATS`).
pub const IS_PACKETS: u32 = 0;
/// Packets of no port group (no rule could match them).
pub const IS_NO_GROUP: u32 = 1;
/// Packets whose window the prefilter turned down.
pub const IS_PREFILTER_MISS: u32 = 2;
/// Flows selected (each direction counts once).
pub const IS_FLOWS_SELECTED: u32 = 3;
/// Records sent.
pub const IS_RECORDS: u32 = 4;
/// Payloads cut to `IDS_RECORD_BYTES`.
pub const IS_TRUNCATED: u32 = 5;
/// Records lost: the ring had no room.
pub const IS_LOST: u32 = 6;
/// Packets of selected flows skipped because the budget was spent or the ring was filling.
pub const IS_SAMPLED_PACKETS: u32 = 7;
/// Flows sampled out at selection (budget spent or ring filling).
pub const IS_FLOWS_SAMPLED_OUT: u32 = 8;
/// Frames the parser refused, fragments and packets without payload are not counted here.
pub const IS_NOT_PARSED: u32 = 9;
/// Packets of flows a `drop` rule matched, dropped in XDP as they arrived (by reason
/// `ids-drop` too).
pub const IS_FLOW_DROPS: u32 = 10;
/// ... and at tcx (what the host sends, and what XDP did not see).
pub const IS_FLOW_DROPS_TC: u32 = 11;
pub const IS_COUNT: u32 = 12;

/// Counter names for `palisade stats` and Prometheus, by index.
pub const IS_NAMES: [&str; IS_COUNT as usize] = [
    "packets",
    "no_port_group",
    "prefilter_miss",
    "flows_selected",
    "records",
    "payloads_truncated",
    "events_lost",
    "packets_sampled_out",
    "flows_sampled_out",
    "not_parsed",
    "flow_drops_xdp",
    "flow_drops_tc",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn window(s: &[u8]) -> ([u8; IDS_SCAN_BYTES], usize) {
        (scan_buffer(s), s.len())
    }

    #[test]
    fn a_gram_anywhere_in_the_window_hits_and_case_is_folded() {
        let mut g = IdsGrams::default();
        assert!(g.insert(b"GET /admin"));
        let mut payload = [b'x'; 100];
        payload[60..64].copy_from_slice(b"gEt ");
        let (b, n) = window(&payload);
        assert_eq!(prefilter(&g, &b, n), IDS_PF_HIT);
        payload[60..64].copy_from_slice(b"gEx ");
        let (b, n) = window(&payload);
        assert_eq!(prefilter(&g, &b, n), IDS_PF_MISS);
    }

    #[test]
    fn short_windows_are_reported_as_short() {
        let mut g = IdsGrams::default();
        g.insert(b"zz");
        let (b, n) = window(b"hello");
        assert_eq!(prefilter(&g, &b, n), IDS_PF_SHORT);
        let (b, n) = window(b"hezzo");
        assert_eq!(prefilter(&g, &b, n), IDS_PF_HIT);
    }

    #[test]
    fn one_byte_contents_are_not_grams() {
        let mut g = IdsGrams::default();
        assert!(!g.insert(b"a"));
        assert_eq!(g.lens, 0);
    }
}
