//! Connection tracking: the table layout shared by the kernel programs and userspace, and the
//! per-packet state machine, written once here so that the XDP and TC programs and the
//! userspace tests run the same code (see `docs/design/conntrack.md`).
//!
//! A flow has one entry, keyed by its two endpoints in a canonical order ([`CtKey::of`]), so
//! both directions find it with one lookup. The entry remembers which endpoint opened the
//! flow. Entries live in two tables: flows that have not been validated yet (a SYN, an
//! unanswered UDP datagram or echo request) in an LRU table that a flood may churn, and
//! validated flows (a completed handshake, an answer) in a table that only validated flows
//! can enter, so spoofed sources can never evict them.

use crate::{
    map_type,
    packet::{
        Bytes, FAMILY_V4, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Packet, TCP_ACK,
        TCP_FIN, TCP_RST, TCP_SYN, TCP_URG,
    },
};

/// Bits of the state a packet is classified as; rules match on them (`state = [...]`) and
/// [`Packet::ct_state`] carries one of them.
pub const STATE_NEW: u8 = 1;
pub const STATE_ESTABLISHED: u8 = 2;
pub const STATE_RELATED: u8 = 4;
pub const STATE_INVALID: u8 = 8;
/// Not a state: marks the packet of a new flow over a per-source limit (`[conntrack]
/// max_per_source`, `new_per_source`), which the rules stage drops before any rule.
pub const STATE_OVER_LIMIT: u8 = 0x80;
/// Every state bit.
pub const STATE_ALL: u8 = STATE_NEW | STATE_ESTABLISHED | STATE_RELATED | STATE_INVALID;
/// Stable names of the state bits, lowest bit first.
pub const STATE_NAMES: [&str; 4] = ["new", "established", "related", "invalid"];

/// Version of [`CtEntry`]'s layout; bumped with every change so that an upgrade can convert
/// the pinned entries of an older build instead of losing them.
pub const ENTRY_VERSION: u32 = 1;

/// An entry of a table written by a build whose entries have layout `version`, as this
/// build's [`CtEntry`]; `None` when this build cannot read that layout. Every layout change
/// bumps [`ENTRY_VERSION`] and adds its conversion here, so an upgrade keeps the flows.
#[must_use]
pub fn convert_entry(version: u32, bytes: &[u8]) -> Option<CtEntry> {
    match version {
        ENTRY_VERSION if bytes.len() == core::mem::size_of::<CtEntry>() => {
            // SAFETY: the length was checked; `CtEntry` is plain data, valid for any bits.
            Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) })
        }
        _ => None,
    }
}

/// [`CtEntry::state`] values. TCP follows the handshake and the teardown; other protocols
/// only know whether an answer was seen.
pub const TCP_SYN_SENT: u8 = 1;
/// Both sides sent a SYN without an ACK (simultaneous open).
pub const TCP_SYN_SENT2: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_ESTABLISHED: u8 = 4;
/// One side sent a FIN.
pub const TCP_FIN_WAIT: u8 = 5;
/// Both sides sent a FIN; the last one is not acknowledged yet.
pub const TCP_LAST_ACK: u8 = 6;
pub const TCP_TIME_WAIT: u8 = 7;
/// Reset (in window).
pub const TCP_CLOSE: u8 = 8;
/// UDP, ICMP echo and other protocols: only one direction seen so far.
pub const UNREPLIED: u8 = 9;
/// Both directions seen.
pub const REPLIED: u8 = 10;
/// Number of entry states (including 0, unused).
pub const ENTRY_STATES: usize = 11;
/// Stable names of the entry states, by value.
pub const ENTRY_STATE_NAMES: [&str; ENTRY_STATES] = [
    "none",
    "syn-sent",
    "syn-sent2",
    "syn-recv",
    "established",
    "fin-wait",
    "last-ack",
    "time-wait",
    "close",
    "unreplied",
    "replied",
];

/// Timeout classes, indexes of [`CtConfig::timeout_ns`].
pub const T_TCP_SYN: usize = 0;
pub const T_TCP_ESTABLISHED: usize = 1;
pub const T_TCP_CLOSING: usize = 2;
pub const T_TCP_TIME_WAIT: usize = 3;
pub const T_TCP_CLOSE: usize = 4;
pub const T_UDP: usize = 5;
pub const T_UDP_REPLIED: usize = 6;
pub const T_ICMP: usize = 7;
pub const T_OTHER: usize = 8;
pub const TIMEOUTS: usize = 9;
/// Default timeouts in seconds, by class (documented in `docs/design/conntrack.md`).
pub const DEFAULT_TIMEOUTS_S: [u64; TIMEOUTS] = [60, 21_600, 120, 120, 10, 30, 180, 30, 600];
/// Names of the timeout classes as the `[conntrack]` section spells them.
pub const TIMEOUT_NAMES: [&str; TIMEOUTS] = [
    "tcp_syn",
    "tcp_established",
    "tcp_closing",
    "tcp_time_wait",
    "tcp_close",
    "udp",
    "udp_replied",
    "icmp",
    "other",
];

/// The timeout class of an entry state.
#[inline(always)]
#[must_use]
pub const fn timeout_class(proto: u8, state: u8) -> usize {
    match state {
        TCP_SYN_SENT | TCP_SYN_SENT2 | TCP_SYN_RECV => T_TCP_SYN,
        TCP_ESTABLISHED => T_TCP_ESTABLISHED,
        TCP_FIN_WAIT | TCP_LAST_ACK => T_TCP_CLOSING,
        TCP_TIME_WAIT => T_TCP_TIME_WAIT,
        TCP_CLOSE => T_TCP_CLOSE,
        _ => match proto {
            IPPROTO_UDP => {
                if state == REPLIED {
                    T_UDP_REPLIED
                } else {
                    T_UDP
                }
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => T_ICMP,
            _ => T_OTHER,
        },
    }
}

/// Whether an entry in `state` belongs in the table of validated flows.
#[inline(always)]
#[must_use]
pub const fn is_validated(state: u8) -> bool {
    !matches!(
        state,
        TCP_SYN_SENT | TCP_SYN_SENT2 | TCP_SYN_RECV | UNREPLIED
    )
}

/// Settings the datapath reads on every tracked packet (one slot, written by userspace).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtConfig {
    /// Timeouts by class, nanoseconds.
    pub timeout_ns: [u64; TIMEOUTS],
    /// [`ENTRY_VERSION`] of the tables this datapath writes.
    pub version: u32,
    /// Validated flows one outside address may have open at once; 0 for no limit.
    pub max_per_source: u32,
    /// New flows one outside address may open per second (a token bucket holding as many);
    /// 0 for no limit.
    pub new_per_source: u32,
    pub _pad: u32,
    /// How long an address stays in the overload set once over a per-source limit
    /// (`[conntrack] overload_ttl`); 0 when the policy names no overload set.
    pub overload_ttl_ns: u64,
}
map_type!(CtConfig, 96);

impl CtConfig {
    /// The configuration with [`DEFAULT_TIMEOUTS_S`].
    #[must_use]
    pub const fn defaults() -> Self {
        let mut timeout_ns = [0u64; TIMEOUTS];
        let mut i = 0;
        while i < TIMEOUTS {
            timeout_ns[i] = DEFAULT_TIMEOUTS_S[i] * 1_000_000_000;
            i += 1;
        }
        Self {
            timeout_ns,
            version: ENTRY_VERSION,
            max_per_source: 0,
            new_per_source: 0,
            _pad: 0,
            overload_ttl_ns: 0,
        }
    }
}

/// [`OverloadEntry::limit`]: the address had `max_per_source` validated flows open.
pub const OVER_MAX_PER_SOURCE: u8 = 1;
/// [`OverloadEntry::limit`]: the address opened more than `new_per_source` flows a second.
pub const OVER_NEW_PER_SOURCE: u8 = 2;
/// Names of the limits, by [`OverloadEntry::limit`] (0 is not a limit).
pub const OVER_LIMIT_NAMES: [&str; 3] = ["unknown", "max_per_source", "new_per_source"];

/// A dynamic member of the overload set (`CT_OVERLOAD`, keyed by a [`crate::firewall::SetKey`]
/// whose set id is 0: membership belongs to the address, not to one generation's set id, so
/// it survives reloads).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverloadEntry {
    /// When membership ends (`bpf_ktime_get_coarse_ns`); a lookup at or after it misses.
    pub expires_ns: u64,
    /// When the address was added.
    pub added_ns: u64,
    /// The limit's value when the address went over it.
    pub limit_value: u32,
    /// Which limit ([`OVER_MAX_PER_SOURCE`], [`OVER_NEW_PER_SOURCE`]).
    pub limit: u8,
    pub _pad: [u8; 3],
}
map_type!(OverloadEntry, 24);

impl OverloadEntry {
    /// Whether the entry still makes its address a member at time `t`.
    #[inline(always)]
    #[must_use]
    pub const fn live(&self, t: u64) -> bool {
        t < self.expires_ns
    }
}

/// What the tracker keeps per outside address (`CT_SOURCES`), for the per-source limits.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceEntry {
    /// Validated flows this address opened that are in the table now.
    pub flows: u32,
    /// Tokens left for new flows (refilled at `new_per_source` a second).
    pub tokens: u32,
    /// When the tokens were last refilled (`bpf_ktime_get_coarse_ns`).
    pub refill_ns: u64,
}
map_type!(SourceEntry, 16);

impl SourceEntry {
    /// Takes a token for a new flow at time `t`, refilling first; false when the bucket
    /// (`rate` tokens a second, holding at most `rate`) is empty.
    #[inline(always)]
    pub fn take_token(&mut self, rate: u32, t: u64) -> bool {
        // A bucket filled under a higher rate (before a reload lowered it) holds no more
        // than the new rate allows.
        if self.tokens > rate {
            self.tokens = rate;
        }
        if t > self.refill_ns {
            let elapsed = t - self.refill_ns;
            // A second refills the whole bucket; below that the product stays under 2^50
            // (no 128-bit multiply, which BPF lacks).
            let earned = if elapsed >= 1_000_000_000 {
                u64::from(rate)
            } else {
                elapsed * u64::from(rate) / 1_000_000_000
            };
            if earned > 0 {
                let tokens = u64::from(self.tokens) + earned;
                if tokens >= u64::from(rate) {
                    self.tokens = rate;
                    self.refill_ns = t;
                } else {
                    self.tokens = tokens as u32;
                    // Only the time the earned tokens took is spent: the rest of `elapsed`
                    // counts toward the next token, else sources asking faster than `rate`
                    // would get fewer than `rate` (`earned > 0` means `rate > 0`).
                    self.refill_ns += earned * 1_000_000_000 / u64::from(rate);
                }
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// The address that opened the flow of `k`, as stored.
#[inline(always)]
#[must_use]
pub fn originator(k: &CtKey, e: &CtEntry) -> [u32; 4] {
    if e.flags & ENTRY_ORIG_B != 0 {
        k.b
    } else {
        k.a
    }
}

/// A flow's key: its two endpoints, lower one first (address words, then port), so both
/// directions of the flow have the same key. Addresses are the 16-byte stored form (IPv4
/// IPv4-mapped) as four native-endian words: words copy and compare in registers, where
/// byte arrays are split into bytes the BPF backend spills. For ICMP echo both ports hold
/// the echo identifier.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub a: [u32; 4],
    pub b: [u32; 4],
    pub a_port: u16,
    pub b_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
map_type!(CtKey, 40);

impl CtKey {
    /// The key of packet `p`'s flow with the given ports, and whether the sender is side `b`.
    #[inline(always)]
    #[must_use]
    pub fn of(p: &Packet, sport: u16, dport: u16) -> (Self, bool) {
        let mut k = Self {
            a: p.src_words(),
            b: p.dst_words(),
            a_port: sport,
            b_port: dport,
            proto: p.proto,
            family: p.family,
            _pad: [0; 2],
        };
        let swap = k.canonicalize();
        (k, swap)
    }

    /// Puts the lower endpoint first, in place; true when the two were swapped.
    #[inline(always)]
    pub fn canonicalize(&mut self) -> bool {
        let swap = match cmp_words(&self.a, &self.b) {
            core::cmp::Ordering::Less => false,
            core::cmp::Ordering::Greater => true,
            core::cmp::Ordering::Equal => self.a_port > self.b_port,
        };
        if swap {
            core::mem::swap(&mut self.a, &mut self.b);
            core::mem::swap(&mut self.a_port, &mut self.b_port);
        }
        swap
    }

    /// Endpoint `a`'s address in the 16-byte stored form.
    #[must_use]
    pub fn a_bytes(&self) -> [u8; 16] {
        words_to_bytes(&self.a)
    }

    /// Endpoint `b`'s address in the 16-byte stored form.
    #[must_use]
    pub fn b_bytes(&self) -> [u8; 16] {
        words_to_bytes(&self.b)
    }
}

/// The stored form of an address as the words a key holds.
#[inline(always)]
#[must_use]
pub fn bytes_to_words(b: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// The reverse of [`bytes_to_words`].
#[must_use]
pub fn words_to_bytes(w: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

/// Word-wise comparison: any total order serves, as long as both sides use this one.
#[inline(always)]
fn cmp_words(x: &[u32; 4], y: &[u32; 4]) -> core::cmp::Ordering {
    let mut i = 0;
    while i < 4 {
        if x[i] != y[i] {
            return if x[i] < y[i] {
                core::cmp::Ordering::Less
            } else {
                core::cmp::Ordering::Greater
            };
        }
        i += 1;
    }
    core::cmp::Ordering::Equal
}

/// [`CtDir::flags`]: this direction has sent a packet.
pub const DIR_SEEN: u8 = 1;
/// [`CtDir::flags`]: this direction sent a FIN.
pub const DIR_FIN: u8 = 2;
/// [`CtDir::flags`]: this direction's FIN was acknowledged.
pub const DIR_FIN_ACKED: u8 = 4;
/// [`CtDir::flags`]: this direction offered window scaling in its SYN.
pub const DIR_WSCALE: u8 = 8;
/// [`CtDir::flags`]: this direction has acknowledged something (`ackend` is valid).
pub const DIR_ACKED: u8 = 16;

/// What one direction of a TCP flow has sent. Every field is written only by packets of its
/// own direction, so the ingress and egress programs never write the same bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtDir {
    /// Highest sequence number sent, plus one (SYN and FIN count).
    pub end: u32,
    /// Highest `ack + window` this direction advertised: how far the other side may send.
    pub ackend: u32,
    /// Largest (scaled) window this direction advertised.
    pub maxwin: u32,
    /// Sequence number just past this direction's FIN.
    pub fin_end: u32,
    /// Window scale from its SYN (valid with [`DIR_WSCALE`]).
    pub wscale: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    pub packets: u32,
    pub bytes: u64,
}
map_type!(CtDir, 32);

/// [`CtEntry::flags`]: opened by this host (first seen on egress).
pub const ENTRY_LOCAL: u8 = 1;
/// [`CtEntry::flags`]: picked up in the middle (egress, no SYN seen): windows not checked.
pub const ENTRY_PICKUP: u8 = 2;
/// [`CtEntry::flags`]: the originator is side `b` of the key.
pub const ENTRY_ORIG_B: u8 = 4;

/// One tracked flow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_coarse_ns` when the entry was made.
    pub created_ns: u64,
    /// ... and when it last saw a valid packet.
    pub last_ns: u64,
    /// Originator first, then responder.
    pub dirs: [CtDir; 2],
    pub state: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Interface where the first packet was seen.
    pub ifindex: u32,
}
map_type!(CtEntry, 88);

/// Per-CPU counters of the tracker (index into `CT_STATS`).
pub const CS_NEW: u32 = 0;
pub const CS_ESTABLISHED: u32 = 1;
pub const CS_RELATED: u32 = 2;
pub const CS_INVALID: u32 = 3;
/// Entries inserted into the table of unvalidated flows.
pub const CS_INSERT_NEW: u32 = 4;
/// Entries inserted into the table of validated flows (promotions and egress pickups).
pub const CS_INSERT_EST: u32 = 5;
pub const CS_INSERT_FAIL_NEW: u32 = 6;
/// A validated flow could not enter its table (full); it stays in the other one.
pub const CS_INSERT_FAIL_EST: u32 = 7;
/// Entries moved out of the unvalidated table when validated.
pub const CS_PROMOTED: u32 = 8;
/// Expired entries of the unvalidated table found (and removed) by a packet.
pub const CS_EXPIRED_LOOKUP_NEW: u32 = 9;
/// Packets accepted by `stateful = true` before the rules.
pub const CS_ACCEPTED: u32 = 10;
/// Flows picked up in the middle from egress packets.
pub const CS_PICKUP: u32 = 11;
/// TIME_WAIT or closed flows reopened by a new SYN.
pub const CS_REOPENED: u32 = 12;
/// Packets the tracker did not look at (non-first fragments without a known first one).
pub const CS_UNTRACKED: u32 = 13;
/// Expired entries of the validated table found (and removed) by a packet.
pub const CS_EXPIRED_LOOKUP_EST: u32 = 14;
/// Validated flows that left their table because a new SYN reopened them (they start over
/// in the unvalidated table).
pub const CS_REOPENED_EST: u32 = 15;
/// Addresses added to the overload set (`[conntrack] overload_set`) on going over a
/// per-source limit.
pub const CS_OVERLOAD_ADDED: u32 = 16;
/// Addresses that went over a limit but could not join the overload set (its map was full).
pub const CS_OVERLOAD_FULL: u32 = 17;
/// Size of `CT_STATS`.
pub const CT_STATS: u32 = 18;
/// Stable names of the counters.
pub const CT_STAT_NAMES: [&str; CT_STATS as usize] = [
    "new",
    "established",
    "related",
    "invalid",
    "insert_new",
    "insert_established",
    "insert_failed_new",
    "insert_failed_established",
    "promoted",
    "expired_on_lookup_new",
    "accepted",
    "picked_up",
    "reopened",
    "untracked",
    "expired_on_lookup_established",
    "reopened_established",
    "overload_added",
    "overload_full",
];

/// Tables of `CT_GC_STATS`: unvalidated flows, validated flows.
pub const TABLE_NEW: usize = 0;
pub const TABLE_EST: usize = 1;
/// Protocol classes of `CT_GC_STATS`.
pub const PROTO_CLASSES: usize = 4;
pub const PROTO_CLASS_NAMES: [&str; PROTO_CLASSES] = ["tcp", "udp", "icmp", "other"];

#[inline(always)]
#[must_use]
pub const fn proto_class(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => 0,
        IPPROTO_UDP => 1,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => 2,
        _ => 3,
    }
}

/// What one sweep of the tables found (written by the sweep program, read by userspace).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtCensus {
    /// Live entries by table, protocol class and entry state.
    pub live: [[[u32; ENTRY_STATES + 1]; PROTO_CLASSES]; 2],
    /// Entries removed because they expired, by table.
    pub expired: [u64; 2],
    /// Entries removed because they matched a flush filter, by table.
    pub flushed: [u64; 2],
    /// `bpf_ktime_get_coarse_ns` of the sweep.
    pub now_ns: u64,
    pub sweeps: u64,
    /// Live members of the overload set.
    pub overload_members: u64,
    /// Members removed because their time in the set was over.
    pub overload_expired: u64,
    /// Members removed by `palisade ct overload flush`.
    pub overload_flushed: u64,
}
map_type!(CtCensus, 2 * PROTO_CLASSES * (ENTRY_STATES + 1) * 4 + 72);

impl Default for CtCensus {
    fn default() -> Self {
        Self {
            live: [[[0; ENTRY_STATES + 1]; PROTO_CLASSES]; 2],
            expired: [0; 2],
            flushed: [0; 2],
            now_ns: 0,
            sweeps: 0,
            overload_members: 0,
            overload_expired: 0,
            overload_flushed: 0,
        }
    }
}

/// [`SweepRequest::op`]: remove expired entries and count the rest.
pub const SWEEP_EXPIRE: u32 = 1;
/// [`SweepRequest::op`]: also remove every entry that matches the filter.
pub const SWEEP_FLUSH: u32 = 2;
/// [`SweepRequest::op`]: remove expired entries, and every member of the overload set that
/// matches the filter ([`SweepRequest::matches_member`]); no flow is flushed.
pub const SWEEP_OVERLOAD_FLUSH: u32 = 3;

/// [`SweepRequest::match_flags`]: compare the address (either endpoint).
pub const MATCH_ADDR: u32 = 1;
/// [`SweepRequest::match_flags`]: compare the port (either endpoint).
pub const MATCH_PORT: u32 = 2;
/// [`SweepRequest::match_flags`]: compare the protocol.
pub const MATCH_PROTO: u32 = 4;
/// [`SweepRequest::match_flags`]: compare the entry state.
pub const MATCH_STATE: u32 = 8;
/// [`SweepRequest::match_flags`]: compare the originator's address with `src`.
pub const MATCH_SRC: u32 = 16;
/// [`SweepRequest::match_flags`]: compare the responder's address with `dst`.
pub const MATCH_DST: u32 = 32;
/// [`SweepRequest::match_flags`]: compare the originator's port with `sport`.
pub const MATCH_SPORT: u32 = 64;
/// [`SweepRequest::match_flags`]: compare the responder's port with `dport`.
pub const MATCH_DPORT: u32 = 128;
/// [`SweepRequest::match_flags`]: the entry state is one of `states` (bit `1 << state`).
pub const MATCH_STATES: u32 = 256;

/// What userspace asks of a sweep; it travels as the test-run packet of the sweep program.
/// The filter is also what `palisade ct list` applies, so a listing shows exactly what a
/// flush with the same filter removes. Every condition given must hold; addresses are all
/// of `family`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepRequest {
    pub op: u32,
    pub match_flags: u32,
    pub addr: [u8; 16],
    /// Prefix length of `addr` in bits of the 16-byte form.
    pub prefix_len: u32,
    pub port: u16,
    pub proto: u8,
    pub state: u8,
    pub family: u8,
    pub _pad: [u8; 7],
    /// `addr` (as words) masked to its prefix: what the matcher compares, without a loop
    /// over bits (the sweep's callback must stay small for the verifier).
    pub addr_mask: [u32; 4],
    /// The originator's address block (stored form, as words) and its mask.
    pub src: [u32; 4],
    pub src_mask: [u32; 4],
    /// The responder's address block and its mask.
    pub dst: [u32; 4],
    pub dst_mask: [u32; 4],
    /// The originator's port.
    pub sport: u16,
    /// The responder's port.
    pub dport: u16,
    /// Entry states, bit `1 << state`.
    pub states: u16,
    pub _pad2: [u8; 2],
}
map_type!(SweepRequest, 128);

impl SweepRequest {
    /// Whether the entry matches the filter.
    #[inline(always)]
    #[must_use]
    pub fn matches(&self, k: &CtKey, e: &CtEntry) -> bool {
        let f = self.match_flags;
        if f & MATCH_PROTO != 0 && k.proto != self.proto {
            return false;
        }
        if f & MATCH_STATE != 0 && e.state != self.state {
            return false;
        }
        // States past the mask's 16 bits never match.
        if f & MATCH_STATES != 0 && (e.state >= 16 || self.states & (1u16 << e.state) == 0) {
            return false;
        }
        if f & MATCH_PORT != 0 && k.a_port != self.port && k.b_port != self.port {
            return false;
        }
        let orig_b = e.flags & ENTRY_ORIG_B != 0;
        let (sport, dport) = if orig_b {
            (k.b_port, k.a_port)
        } else {
            (k.a_port, k.b_port)
        };
        if f & MATCH_SPORT != 0 && sport != self.sport {
            return false;
        }
        if f & MATCH_DPORT != 0 && dport != self.dport {
            return false;
        }
        if f & (MATCH_ADDR | MATCH_SRC | MATCH_DST) == 0 {
            return true;
        }
        if k.family != self.family {
            return false;
        }
        if f & MATCH_ADDR != 0 {
            let addr = bytes_to_words(&self.addr);
            if !masked_eq(&k.a, &addr, &self.addr_mask) && !masked_eq(&k.b, &addr, &self.addr_mask)
            {
                return false;
            }
        }
        let (orig, resp) = if orig_b { (&k.b, &k.a) } else { (&k.a, &k.b) };
        if f & MATCH_SRC != 0 && !masked_eq(orig, &self.src, &self.src_mask) {
            return false;
        }
        if f & MATCH_DST != 0 && !masked_eq(resp, &self.dst, &self.dst_mask) {
            return false;
        }
        true
    }
}

impl SweepRequest {
    /// Whether a member of the overload set (its family and stored address) matches the
    /// filter: only [`MATCH_ADDR`] applies.
    #[inline(always)]
    #[must_use]
    pub fn matches_member(&self, family: u8, addr: &[u8; 16]) -> bool {
        self.match_flags & MATCH_ADDR == 0
            || (family == self.family
                && masked_eq(
                    &bytes_to_words(addr),
                    &bytes_to_words(&self.addr),
                    &self.addr_mask,
                ))
    }
}

/// Whether `x` and `y` agree on the bits of `mask`: straight-line code, no loop.
#[inline(always)]
fn masked_eq(x: &[u32; 4], y: &[u32; 4], mask: &[u32; 4]) -> bool {
    ((x[0] ^ y[0]) & mask[0])
        | ((x[1] ^ y[1]) & mask[1])
        | ((x[2] ^ y[2]) & mask[2])
        | ((x[3] ^ y[3]) & mask[3])
        == 0
}

/// Where a packet travels relative to the guarded host.
pub const HOOK_INGRESS: u8 = 0;
pub const HOOK_EGRESS: u8 = 1;

/// The TCP fields the state machine needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// Payload bytes (after the TCP header).
    pub payload: u32,
    /// Window scale option, when the segment carries one.
    pub wscale: Option<u8>,
}

impl Segment {
    /// Sequence space the segment occupies: its payload, plus one each for SYN and FIN.
    #[inline(always)]
    #[must_use]
    pub const fn end(&self) -> u32 {
        let mut end = self.seq.wrapping_add(self.payload);
        if self.flags & TCP_SYN != 0 {
            end = end.wrapping_add(1);
        }
        if self.flags & TCP_FIN != 0 {
            end = end.wrapping_add(1);
        }
        end
    }
}

/// TCP option kinds the parser knows.
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_WSCALE: u8 = 3;
/// TCP options are at most 40 bytes; each step consumes at least one.
pub const TCP_OPTION_STEPS: usize = 40;
/// The largest window scale RFC 7323 allows.
pub const MAX_WSCALE: u8 = 14;

/// Reads the TCP header fields at `p.l4_offset`; `None` when the header is cut short. SYN
/// segments have their options read for the window scale.
#[inline(always)]
pub fn read_segment<B: Bytes + ?Sized>(b: &B, p: &Packet) -> Option<Segment> {
    let off = usize::from(p.l4_offset);
    if off > crate::packet::MAX_L4_OFFSET {
        return None;
    }
    // One read at the header's own offset: the verifier ties the bounds check to that
    // pointer, and a read at `off + k` would need its own.
    let t: [u8; 16] = b.load(off)?;
    let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
    let (doff, flags) = (t[12], t[13]);
    let window = u16::from_be_bytes([t[14], t[15]]);
    let doff = usize::from(doff >> 4) * 4;
    let payload = u32::from(p.l4_len).saturating_sub(doff as u32);
    let mut s = Segment {
        flags,
        seq,
        ack,
        window,
        payload,
        wscale: None,
    };
    if s.flags & TCP_SYN != 0 && doff > 20 {
        s.wscale = window_scale(b, off + 20, doff - 20);
    }
    Some(s)
}

/// The window scale option among `len` bytes of options at `off`.
#[inline(always)]
fn window_scale<B: Bytes + ?Sized>(b: &B, off: usize, len: usize) -> Option<u8> {
    let mut i = 0usize;
    let mut steps = 0;
    while steps < TCP_OPTION_STEPS {
        if i >= len || i >= 40 {
            return None;
        }
        let pos = off + i;
        if pos > crate::packet::MAX_L4_OFFSET + 60 {
            return None;
        }
        let [kind] = b.load::<1>(pos)?;
        match kind {
            TCPOPT_EOL => return None,
            TCPOPT_NOP => i += 1,
            _ => {
                let [k, l, v] = b.load::<3>(pos)?;
                if k == TCPOPT_WSCALE && l == 3 {
                    return Some(if v > MAX_WSCALE { MAX_WSCALE } else { v });
                }
                if l < 2 {
                    return None;
                }
                i += usize::from(l);
            }
        }
        steps += 1;
    }
    None
}

/// Flag combinations TCP uses (PSH, ECE and CWR ignored); anything else is invalid.
#[inline(always)]
#[must_use]
pub const fn valid_flags(flags: u8) -> bool {
    let f = flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK | TCP_URG);
    matches!(
        f,
        0x02 // SYN
        | 0x22 // SYN URG
        | 0x12 // SYN ACK
        | 0x04 // RST
        | 0x14 // RST ACK
        | 0x11 // FIN ACK
        | 0x31 // FIN ACK URG
        | 0x10 // ACK
        | 0x30 // ACK URG
    )
}

/// `a` comes before `b` in sequence space.
#[inline(always)]
#[must_use]
pub const fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a` comes after `b` in sequence space.
#[inline(always)]
#[must_use]
pub const fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// Smallest acceptance window for acknowledgements, as netfilter uses.
const MIN_ACK_WINDOW: u32 = 66_000;

/// The first direction record of a new flow's sender.
#[inline(always)]
fn open_dir(d: &mut CtDir, s: &Segment) {
    // The flow's packet and byte counts survive a retransmitted SYN.
    let (packets, bytes) = (d.packets, d.bytes);
    *d = CtDir {
        end: s.end(),
        ackend: 0,
        maxwin: if s.window == 0 {
            1
        } else {
            u32::from(s.window)
        },
        fin_end: 0,
        wscale: 0,
        flags: DIR_SEEN,
        _pad: [0; 2],
        packets,
        bytes,
    };
    if let Some(w) = s.wscale {
        d.wscale = w;
        d.flags |= DIR_WSCALE;
    }
}

/// Whether `s`, sent by `snd` to `rcv`, lies inside the windows both have advertised
/// (after netfilter's `tcp_in_window`, RFC 793 and RFC 5961: a reset or acknowledgement far
/// outside is refused).
#[inline(always)]
fn in_window(snd: &CtDir, rcv: &CtDir, s: &Segment) -> bool {
    let end = s.end();
    // Not beyond what the receiver has allowed.
    if rcv.flags & DIR_ACKED != 0 && after(s.seq, rcv.ackend) {
        return false;
    }
    // Not older than one window behind what this side has sent.
    let back = if rcv.maxwin == 0 { 1 } else { rcv.maxwin };
    if snd.flags & DIR_SEEN != 0 && before(end, snd.end.wrapping_sub(back)) {
        return false;
    }
    if s.flags & TCP_ACK != 0 && rcv.flags & DIR_SEEN != 0 {
        // Cannot acknowledge what was never sent, nor lag more than a window behind.
        if after(s.ack, rcv.end) {
            return false;
        }
        let lag = if snd.maxwin > MIN_ACK_WINDOW {
            snd.maxwin
        } else {
            MIN_ACK_WINDOW
        };
        if before(s.ack, rcv.end.wrapping_sub(lag)) {
            return false;
        }
    }
    true
}

/// Records a valid segment in its sender's direction.
#[inline(always)]
fn learn(snd: &mut CtDir, s: &Segment, win: u32) {
    let end = s.end();
    if after(end, snd.end) {
        snd.end = end;
    }
    if win > snd.maxwin {
        snd.maxwin = win;
    }
    if s.flags & TCP_ACK != 0 {
        let ackend = s.ack.wrapping_add(if win == 0 { 1 } else { win });
        if snd.flags & DIR_ACKED == 0 || after(ackend, snd.ackend) {
            snd.ackend = ackend;
        }
        snd.flags |= DIR_ACKED;
    }
    if s.flags & TCP_FIN != 0 && snd.flags & DIR_FIN == 0 {
        snd.flags |= DIR_FIN;
        snd.fin_end = end;
    }
}

/// The scaled window of a segment from `snd` (SYN windows are never scaled; scaling applies
/// only when both sides offered it).
#[inline(always)]
fn scaled_window(snd: &CtDir, rcv: &CtDir, s: &Segment) -> u32 {
    if s.flags & TCP_SYN != 0 || snd.flags & rcv.flags & DIR_WSCALE == 0 {
        u32::from(s.window)
    } else {
        u32::from(s.window) << (snd.wscale & 0x0f)
    }
}

/// Starts a TCP entry from a packet with no entry. `None` when the packet cannot open a
/// flow (only a SYN can, or, on egress, any packet but a reset: a pickup).
#[inline(always)]
#[must_use]
pub fn tcp_open(s: &Segment, hook: u8) -> Option<(u8, u8, CtDir)> {
    if !valid_flags(s.flags) {
        return None;
    }
    let mut d = CtDir::default();
    open_dir(&mut d, s);
    if s.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return Some((TCP_SYN_SENT, STATE_NEW, d));
    }
    if hook == HOOK_EGRESS && s.flags & (TCP_RST | TCP_SYN) == 0 {
        // This host sends on a connection it has: trusted, picked up as established.
        return Some((TCP_ESTABLISHED, STATE_NEW, d));
    }
    None
}

/// Starts a TCP entry from the ACK that brought back a valid SYN cookie: the handshake was
/// answered from XDP and left no entry, but the ACK tells all of it. The client's initial
/// sequence number is the ACK's `seq - 1`, the cookie is its `ack - 1`, the client's window
/// scale came back in the timestamp (`client_wscale`), and the SYN-ACK offered
/// `server_wscale` and a window of `server_window`. So both directions are known and the
/// windows are judged from the first segment on, as for a handshake seen whole. Returns the
/// state and the client's and the server's directions; `None` for anything but an ACK
/// without SYN or RST.
#[inline(always)]
#[must_use]
pub fn tcp_open_cookie(
    s: &Segment,
    client_wscale: Option<u8>,
    server_wscale: u8,
    server_window: u16,
) -> Option<(u8, CtDir, CtDir)> {
    if !valid_flags(s.flags) || s.flags & (TCP_SYN | TCP_RST | TCP_ACK) != TCP_ACK {
        return None;
    }
    let scaled = client_wscale.is_some();
    let mut client = CtDir {
        end: s.seq,
        maxwin: 1,
        flags: DIR_SEEN,
        ..CtDir::default()
    };
    let server_window = u32::from(server_window.max(1));
    let mut server = CtDir {
        end: s.ack,
        ackend: s.seq.wrapping_add(server_window),
        maxwin: server_window,
        flags: DIR_SEEN | DIR_ACKED,
        ..CtDir::default()
    };
    if let Some(w) = client_wscale {
        client.wscale = if w > MAX_WSCALE { MAX_WSCALE } else { w };
        client.flags |= DIR_WSCALE;
        server.wscale = if server_wscale > MAX_WSCALE {
            MAX_WSCALE
        } else {
            server_wscale
        };
        server.flags |= DIR_WSCALE;
    }
    let win = if scaled {
        u32::from(s.window) << client.wscale
    } else {
        u32::from(s.window)
    };
    learn(&mut client, s, win);
    Some((TCP_ESTABLISHED, client, server))
}

/// One TCP segment of a tracked flow; `reply` is true when it comes from the responder.
/// Returns the state bit the packet is classified as; the entry is updated only for packets
/// that are not invalid.
#[inline(always)]
pub fn tcp_step(e: &mut CtEntry, reply: bool, s: &Segment) -> u8 {
    if !valid_flags(s.flags) {
        return STATE_INVALID;
    }
    let (si, ri) = if reply { (1, 0) } else { (0, 1) };
    let syn = s.flags & TCP_SYN != 0;
    let ack = s.flags & TCP_ACK != 0;
    let rst = s.flags & TCP_RST != 0;
    let state = e.state;
    if e.flags & ENTRY_PICKUP != 0 && !syn {
        // No handshake seen: follow the teardown, learn the windows, do not judge them.
        let win = u32::from(s.window);
        learn(&mut e.dirs[si], s, win);
        e.dirs[si].flags |= DIR_SEEN;
        return advance_teardown(e, ri, s, rst);
    }
    match state {
        TCP_SYN_SENT => {
            if !reply {
                if syn && !ack {
                    // Retransmitted (or restarted) SYN.
                    open_dir(&mut e.dirs[0], s);
                    return STATE_NEW;
                }
                if rst && s.seq == e.dirs[0].end {
                    // The opener gives up its attempt, at its next sequence number. Nothing
                    // was answered: the reset is still `new`.
                    e.state = TCP_CLOSE;
                    return STATE_NEW;
                }
                return STATE_INVALID;
            }
            if syn && ack {
                if s.ack != e.dirs[0].end {
                    return STATE_INVALID;
                }
                open_dir(&mut e.dirs[1], s);
                scale_pair(e);
                let win = u32::from(s.window);
                learn(&mut e.dirs[1], s, win);
                e.state = TCP_SYN_RECV;
                return STATE_ESTABLISHED;
            }
            if syn {
                open_dir(&mut e.dirs[1], s);
                scale_pair(e);
                e.state = TCP_SYN_SENT2;
                return STATE_ESTABLISHED;
            }
            if rst && ack && s.ack == e.dirs[0].end {
                // Connection refused: let the opener learn it at once.
                e.dirs[1].flags |= DIR_SEEN;
                e.state = TCP_CLOSE;
                return STATE_ESTABLISHED;
            }
            STATE_INVALID
        }
        TCP_SYN_SENT2 => {
            // Simultaneous open: each side now acknowledges the other's SYN.
            if syn && ack && s.ack == e.dirs[ri].end {
                let win = u32::from(s.window);
                learn(&mut e.dirs[si], s, win);
                e.state = TCP_SYN_RECV;
                return STATE_ESTABLISHED;
            }
            if syn && !ack {
                return STATE_ESTABLISHED;
            }
            if rst && s.seq == e.dirs[si].end {
                // Either side aborts the simultaneous open at its next sequence number.
                e.state = TCP_CLOSE;
                return STATE_ESTABLISHED;
            }
            STATE_INVALID
        }
        TCP_TIME_WAIT | TCP_CLOSE if syn && !ack => {
            // A new connection on the same ports (RFC 6191 reuse): start over, the sender
            // is the new originator. The caller flips the entry's originator.
            STATE_NEW
        }
        _ => {
            if syn && !ack {
                // Retransmitted SYN of the originator before the handshake ends.
                if state == TCP_SYN_RECV && !reply && s.seq.wrapping_add(1) == e.dirs[0].end {
                    return STATE_ESTABLISHED;
                }
                return STATE_INVALID;
            }
            if syn {
                // SYN-ACK retransmitted by the responder.
                if state == TCP_SYN_RECV && s.ack == e.dirs[ri].end {
                    return STATE_ESTABLISHED;
                }
                return STATE_INVALID;
            }
            let win = scaled_window(&e.dirs[si], &e.dirs[ri], s);
            if !in_window(&e.dirs[si], &e.dirs[ri], s) {
                return STATE_INVALID;
            }
            learn(&mut e.dirs[si], s, win);
            if state == TCP_SYN_RECV && !reply && ack && !rst {
                e.state = TCP_ESTABLISHED;
            }
            advance_teardown(e, ri, s, rst)
        }
    }
}

/// FIN and RST handling once a segment is accepted.
#[inline(always)]
fn advance_teardown(e: &mut CtEntry, ri: usize, s: &Segment, rst: bool) -> u8 {
    if rst {
        e.state = TCP_CLOSE;
        return STATE_ESTABLISHED;
    }
    // The other side's FIN is acknowledged by this segment.
    if s.flags & TCP_ACK != 0
        && e.dirs[ri].flags & DIR_FIN != 0
        && !before(s.ack, e.dirs[ri].fin_end)
    {
        e.dirs[ri].flags |= DIR_FIN_ACKED;
    }
    let fins = (e.dirs[0].flags & DIR_FIN != 0) as u8 + (e.dirs[1].flags & DIR_FIN != 0) as u8;
    let acked = e.dirs[0].flags & e.dirs[1].flags & DIR_FIN_ACKED != 0;
    if e.state == TCP_ESTABLISHED || e.state == TCP_FIN_WAIT || e.state == TCP_LAST_ACK {
        e.state = match fins {
            0 => e.state,
            1 => TCP_FIN_WAIT,
            _ if acked => TCP_TIME_WAIT,
            _ => TCP_LAST_ACK,
        };
    }
    STATE_ESTABLISHED
}

/// Window scaling is used only when both SYNs offered it (RFC 7323).
#[inline(always)]
fn scale_pair(e: &mut CtEntry) {
    if e.dirs[0].flags & e.dirs[1].flags & DIR_WSCALE == 0 {
        e.dirs[0].flags &= !DIR_WSCALE;
        e.dirs[1].flags &= !DIR_WSCALE;
    }
}

/// Non-TCP flows: the state bit of a packet of a tracked flow, and the entry updated.
#[inline(always)]
pub fn other_step(e: &mut CtEntry, reply: bool) -> u8 {
    let si = if reply { 1 } else { 0 };
    e.dirs[si].flags |= DIR_SEEN;
    if reply {
        e.state = REPLIED;
    }
    if e.state == REPLIED {
        STATE_ESTABLISHED
    } else {
        STATE_NEW
    }
}

/// ICMP message kinds as the tracker sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// Echo request: opens (or continues) a flow keyed by its identifier.
    EchoRequest(u16),
    /// Echo reply: belongs to the flow of its identifier.
    EchoReply(u16),
    /// An error about another packet, whose headers it quotes.
    Error,
    /// Anything else (router advertisements, neighbour discovery, ...): not tracked.
    Other,
}

/// What kind of ICMP message `p` is; `id` is read by the caller from the header.
#[inline(always)]
#[must_use]
pub const fn icmp_kind(proto: u8, icmp_type: u8, id: u16) -> IcmpKind {
    if proto == IPPROTO_ICMP {
        match icmp_type {
            8 => IcmpKind::EchoRequest(id),
            0 => IcmpKind::EchoReply(id),
            3 | 4 | 11 | 12 => IcmpKind::Error,
            _ => IcmpKind::Other,
        }
    } else {
        match icmp_type {
            128 => IcmpKind::EchoRequest(id),
            129 => IcmpKind::EchoReply(id),
            1..=4 => IcmpKind::Error,
            _ => IcmpKind::Other,
        }
    }
}

/// The flow an ICMP error quotes, as the key of the quoted packet: the error must be
/// addressed to the quoted packet's sender. `None` when the quote is cut short, of another
/// family, or carries IPv6 extension headers.
#[inline(always)]
pub fn quoted_flow<B: Bytes + ?Sized>(b: &B, p: &Packet) -> Option<CtKey> {
    let inner = usize::from(p.l4_offset) + 8;
    if inner > crate::packet::MAX_L4_OFFSET {
        return None;
    }
    let mut k = CtKey {
        family: p.family,
        ..CtKey::default()
    };
    let l4 = if p.family == FAMILY_V4 {
        let h: [u8; 20] = b.load(inner)?;
        if h[0] >> 4 != 4 || h[0] & 0x0f < 5 {
            return None;
        }
        k.a = [
            0,
            0,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
        ];
        k.b = [
            0,
            0,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            u32::from_ne_bytes([h[16], h[17], h[18], h[19]]),
        ];
        k.proto = h[9];
        inner + usize::from(h[0] & 0x0f) * 4
    } else {
        // One read of the whole header, at its own offset (see read_segment).
        let h: [u8; 40] = b.load(inner)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let w = |o: usize| u32::from_ne_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        k.a = [w(8), w(12), w(16), w(20)];
        k.b = [w(24), w(28), w(32), w(36)];
        k.proto = h[6];
        inner + 40
    };
    if k.a != p.dst_words() || l4 > crate::packet::MAX_L4_OFFSET + 128 {
        return None;
    }
    let ports: [u8; 8] = b.load(l4)?;
    match k.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            k.a_port = u16::from_be_bytes([ports[0], ports[1]]);
            k.b_port = u16::from_be_bytes([ports[2], ports[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let id = u16::from_be_bytes([ports[4], ports[5]]);
            k.a_port = id;
            k.b_port = id;
        }
        _ => {}
    }
    k.canonicalize();
    Some(k)
}

#[cfg(test)]
mod tests {
    use super::SourceEntry;

    /// Asking every 0.7 of a token's time, a source gets exactly `rate` new flows a second
    /// once its bucket is empty: the part of a token's time left over at each refill is kept.
    #[test]
    fn new_flow_tokens_keep_the_time_left_over() {
        let rate = 1_000_000;
        let mut s = SourceEntry {
            flows: 0,
            tokens: 0,
            refill_ns: 0,
        };
        let mut admitted = 0u64;
        let mut t = 0;
        while t < 1_000_000_000 {
            t += 700;
            if s.take_token(rate, t) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, u64::from(rate));
        // A second idle refills the bucket to `rate`, no more.
        assert!(s.take_token(rate, t + 5_000_000_000));
        assert_eq!(s.tokens, rate - 1);
        // A reload that lowers the rate: the full bucket holds the new rate's burst at most.
        let t = t + 5_000_000_000;
        let admitted = (0..20).filter(|_| s.take_token(10, t)).count();
        assert_eq!(admitted, 10);
    }
}
