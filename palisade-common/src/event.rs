//! Events sent from the kernel programs to userspace over the ring buffer.

use crate::map_type;

/// [`FirewallEvent::kind`]: a firewall verdict.
pub const KIND_FIREWALL: u32 = 1;

/// Bytes of the kernel's event ring (`EVENTS`), shared by every program that reports.
pub const EVENT_RING_BYTES: u32 = 1 << 20;

/// The kernel programs wake the event reader only once this many bytes wait in the ring
/// (`BPF_RB_FORCE_WAKEUP`); below it they submit without a wakeup (`BPF_RB_NO_WAKEUP`). A
/// wakeup per record costs the CPU that handles the packet several microseconds (measured in
/// the dnsperf benchmark: more than the whole DNS inspection), so readers are woken for
/// batches, and drain the ring every [`EVENT_DRAIN_INTERVAL_MS`] besides, which bounds how
/// long a record of a quiet stream waits.
pub const EVENT_WAKEUP_BYTES: u64 = 64 * 1024;

/// How often an event reader drains the ring without being woken (see
/// [`EVENT_WAKEUP_BYTES`]).
pub const EVENT_DRAIN_INTERVAL_MS: u64 = 100;

/// A firewall decision worth reporting (a drop by a `log` rule or a logged default).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirewallEvent {
    /// Always [`KIND_FIREWALL`]; first so a reader can tell event types apart.
    pub kind: u32,
    /// Drop reason (see [`crate::reason`]).
    pub reason: u32,
    /// `bpf_ktime_get_ns` at the decision (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// Rule evaluation index, or [`crate::firewall::DEFAULT_SLOT`] for the default action,
    /// or `u32::MAX` when no rule was involved (malformed packets).
    pub rule: u32,
    pub ifindex: u32,
    pub generation: u32,
    pub sport: u16,
    pub dport: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub family: u8,
    pub proto: u8,
    pub action: u8,
    /// [`FLAG_INTEL_TAGGED`]: the packet's source was tagged by an `[intel]` feed with
    /// `action = "tag"` (it is in `INTEL_TAGGED`) when the event was written.
    pub flags: u8,
    pub packet_len: u32,
}
map_type!(FirewallEvent, 72);

/// [`FirewallEvent::flags`] and [`DnsEvent::flags`]: the peer (the packet's source, the
/// query's client) is an address an `[intel]` feed with `action = "tag"` marked.
pub const FLAG_INTEL_TAGGED: u8 = 1;
/// [`DnsEvent::flags`]: the query's name is listed by an `[intel]` feed with
/// `action = "alert"` (the query passed; [`DnsEvent::list`] is the feed's list).
pub const FLAG_INTEL_NAME_ALERT: u8 = 2;
/// [`DnsEvent::flags`]: the query's name is listed by an `[intel]` feed with `action = "tag"`
/// (the query passed; [`DnsEvent::list`] is the feed's list).
pub const FLAG_INTEL_NAME_TAG: u8 = 4;

/// [`DnsEvent::kind`]: a DNS decision.
pub const KIND_DNS: u32 = 2;

/// [`DnsEvent::verdict`].
pub const DNS_VERDICT_ALLOW: u8 = 0;
pub const DNS_VERDICT_DROP: u8 = 1;
pub const DNS_VERDICT_NXDOMAIN: u8 = 2;
/// Audit mode: would have been blocked, was let through.
pub const DNS_VERDICT_AUDIT: u8 = 3;
/// Answered from the sinkhole's addresses (or NODATA).
pub const DNS_VERDICT_SINKHOLE: u8 = 4;
/// Answered REFUSED.
pub const DNS_VERDICT_REFUSED: u8 = 5;

/// The name of a [`DnsEvent::verdict`] in events and summaries.
#[must_use]
pub const fn dns_verdict_name(verdict: u8) -> &'static str {
    match verdict {
        DNS_VERDICT_DROP => "drop",
        DNS_VERDICT_NXDOMAIN => "nxdomain",
        DNS_VERDICT_AUDIT => "audit",
        DNS_VERDICT_SINKHOLE => "sinkhole",
        DNS_VERDICT_REFUSED => "refused",
        _ => "allow",
    }
}

/// A DNS decision: the query, who sent it, what was decided and why.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsEvent {
    /// Always [`KIND_DNS`].
    pub kind: u32,
    /// Reason (see [`crate::reason`]); [`crate::reason::PASS`] for allowed queries.
    pub reason: u32,
    pub timestamp_ns: u64,
    /// Socket cgroup id (egress), 0 on ingress.
    pub cgroup_id: u64,
    /// Process id (thread group) and thread id of the sender (egress), 0 on ingress.
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub ifindex: u32,
    pub generation: u32,
    /// Client address (the query's source).
    pub client: [u8; 16],
    pub comm: [u8; 16],
    pub client_port: u16,
    pub qtype: u16,
    /// Wire length of `name` (0 when the name could not be parsed).
    pub name_len: u16,
    pub family: u8,
    pub scope: u8,
    pub verdict: u8,
    /// 1 when the query came over TCP.
    pub tcp: u8,
    /// List index of the matching entry, `u16::MAX` when none matched.
    pub list: u16,
    /// Why this event was sent while its scope is over the event budget:
    /// [`DNS_SENT_IN_BUDGET`], [`DNS_SENT_FIRST`] or [`DNS_SENT_SAMPLE`].
    pub sent: u8,
    /// [`FLAG_INTEL_TAGGED`] when the client is a tagged address (XDP ingress scope).
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Case-folded wire-format question name (8-aligned, so it is copied by words); only
    /// its first `name_len` bytes are meaningful.
    pub name: [u8; 256],
}
map_type!(DnsEvent, 352);

/// [`DnsEvent::sent`]: within the event budget, every query is an event.
pub const DNS_SENT_IN_BUDGET: u8 = 0;
/// [`DnsEvent::sent`]: over the budget, the first query of its name (with this scope,
/// verdict and reason) in the current summary interval; later ones are only counted.
pub const DNS_SENT_FIRST: u8 = 1;
/// [`DnsEvent::sent`]: over the budget, one of every `event_sample` aggregated queries.
pub const DNS_SENT_SAMPLE: u8 = 2;

/// Capacity of the kernel's `DNS_EVENT_NAMES` map: the distinct names (per scope, verdict
/// and reason) an interval of aggregation remembers; past it the least recently used name is
/// forgotten and its next query is reported in full again.
pub const DNS_AGG_NAMES: u32 = 16_384;
/// Capacity of the kernel's `DNS_EVENT_CLIENTS` map: the distinct (name, client) counts of
/// one interval. An LRU: past it, the least recently used count is lost (the global
/// `events_aggregated` counter still has every query).
pub const DNS_AGG_CLIENTS: u32 = 65_536;
/// Slots per bank and CPU of the kernel's `DNS_EVENT_COUNTS` (a power of two): the (name,
/// client) keys of one interval a CPU counts in a plain array slot. A key whose slot another
/// key of the interval holds is counted in `DNS_EVENT_CLIENTS` instead.
pub const DNS_AGG_COUNT_SLOTS: u32 = 8_192;
/// Banks of `DNS_EVENT_COUNTS`: interval `e` counts into bank `e % 3`. The daemon collects
/// interval `e - 2` once it has started `e`, so the bank it reads and clears is never the one
/// the programs count into, nor the one a program that read the epoch just before the
/// advance may still be writing.
pub const DNS_AGG_COUNT_BANKS: u32 = 3;
/// How often the daemon turns the aggregated counts into summary events.
pub const DNS_SUMMARY_INTERVAL_MS: u64 = 1_000;

/// Per-CPU state of the DNS event budget.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsEventBudget {
    /// GCRA theoretical arrival time of the next full event, `bpf_ktime_get_ns` clock.
    pub tat_ns: u64,
    /// Aggregated queries until the next sample.
    pub until_sample: u32,
    pub _pad: [u8; 4],
}
map_type!(DnsEventBudget, 16);

/// Key of the aggregated names: one name with one outcome in one summary interval.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DnsAggName {
    /// Keyed hash of the case-folded wire name (the secret of the name hashes).
    pub hash: [u64; 2],
    pub reason: u32,
    /// Wire length of the name.
    pub name_len: u16,
    pub scope: u8,
    pub verdict: u8,
    /// The summary interval: the kernel's `DNS_EVENT_EPOCH` when the query was counted. The
    /// daemon advances it, then collects the interval before.
    pub epoch: u32,
    pub _pad: [u8; 4],
}
map_type!(DnsAggName, 32);

/// Value of the aggregated names: what a summary needs to show the name.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsAggNameInfo {
    /// `bpf_ktime_get_ns` of the first aggregated query.
    pub first_ns: u64,
    pub qtype: u16,
    /// List of the deciding entry, `u16::MAX` for none.
    pub list: u16,
    pub generation: u32,
    /// Case-folded wire name.
    pub name: [u8; 256],
}
map_type!(DnsAggNameInfo, 272);

/// Key of the aggregated counts: a name's key and one client.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DnsAggClient {
    pub name: DnsAggName,
    pub client: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 7],
}
map_type!(DnsAggClient, 56);

impl DnsAggClient {
    /// The key's fingerprint: a 64-bit mix of the name's keyed hash, the outcome, the
    /// interval and the client, never 0 (the value of a slot never used). It identifies the
    /// key in its `DNS_EVENT_COUNTS` slot (a plain array slot holds 16 bytes, not the
    /// 56-byte key) and picks the slot. The name's hash is keyed, so a sender choosing
    /// client addresses cannot make two keys share a fingerprint.
    #[inline(always)]
    #[must_use]
    pub fn fingerprint(&self) -> u64 {
        let n = &self.name;
        let outcome = u64::from(n.reason)
            | u64::from(n.name_len) << 32
            | u64::from(n.scope) << 48
            | u64::from(n.verdict) << 56;
        // The client address as two native-endian words (the kernel and the daemon share the
        // host's byte order), read as words: byte loads would cost the kernel 16 loads.
        let w = core::ptr::from_ref(self).cast::<u64>();
        // SAFETY: words 4 and 5 of the 8-aligned 56-byte key are its client address (offset
        // 32, checked below).
        let (c0, c1) = unsafe { (w.add(4).read(), w.add(5).read()) };
        let h =
            crate::dns::hash::fmix(n.hash[0] ^ u64::from(n.epoch) ^ u64::from(self.family) << 32);
        let h = crate::dns::hash::fmix(h ^ outcome ^ c0);
        crate::dns::hash::fmix(h ^ c1) | 1
    }
}

const _: () = assert!(
    core::mem::offset_of!(DnsAggClient, client) == 32 && core::mem::align_of::<DnsAggClient>() == 8
);

/// A slot of `DNS_EVENT_COUNTS`: one CPU's count of one (name, client) key in one interval.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsAggCount {
    /// [`DnsAggClient::fingerprint`] of the key, 0 for a slot never used or cleared.
    pub fingerprint: u64,
    /// Queries counted; 0 for a free slot.
    pub count: u32,
    /// The interval of the count (the key's `epoch`).
    pub epoch: u32,
}
map_type!(DnsAggCount, 16);
