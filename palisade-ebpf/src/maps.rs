//! Every map the kernel programs use, in one place, so the names userspace looks up are easy
//! to find. Sizes here are defaults; userspace may resize the large ones at load time.
//!
//! The policy tables that grow with the policy (`FW_RULES`, `FW_SET_HOSTS`, `FW_SETS`,
//! `DNS_NAMES`, `FW_RULE_META`, `FW_RULE_STATS`) are arrays of maps: one table per generation, which the daemon creates
//! sized for the policy it holds (`palisade::capacity`) and swaps in before that generation
//! goes live.

use aya_ebpf::{
    bindings::{
        BPF_F_INNER_MAP, BPF_F_NO_PREALLOC, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP,
        BPF_RB_NO_WAKEUP,
    },
    btf_maps,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use palisade_common::{
    event::{EVENT_RING_BYTES, EVENT_WAKEUP_BYTES},
    firewall::{
        Control, FlowKey, GENERATIONS, MAX_SETS, MAX_TUPLES, PORT_SPACE, PolicyHeader, RateKey,
        RuleMeta, RuleRef, RuleStats, SetKey, Tuple,
    },
    reason, stats,
};

/// The flags of every policy table: hash buckets up front, entries on demand (an LPM trie
/// allows no other).
const TABLE_FLAGS: usize = BPF_F_NO_PREALLOC as usize;

/// A generation's rule entries (the template: the daemon creates each with its own size).
pub type RuleTable = btf_maps::HashMap<FlowKey, RuleRef, 1, TABLE_FLAGS>;
/// A generation's set members that are single addresses.
pub type SetHostTable = btf_maps::HashMap<SetKey, u8, 1, TABLE_FLAGS>;
/// A generation's set members that are shorter prefixes.
pub type SetPrefixTable = btf_maps::LpmTrie<SetKey, u8, 1, TABLE_FLAGS>;
/// A generation's DNS name entries.
pub type NameTable = btf_maps::HashMap<NameKey, NameValue, 1, TABLE_FLAGS>;

/// Arrays in an array of maps may differ in size only with this flag (which also keeps the
/// verifier from inlining their lookups).
const INNER_ARRAY_FLAGS: usize = BPF_F_INNER_MAP as usize;
/// A generation's rule actions, by evaluation index.
pub type RuleMetaTable = btf_maps::Array<RuleMeta, 1, INNER_ARRAY_FLAGS>;
/// A generation's per-rule packet and byte counters: a run of slots per CPU
/// (`rule_stats_slot`), since only plain arrays may vary in size in an array of maps.
pub type RuleStatsTable = btf_maps::Array<RuleStats, 1, INNER_ARRAY_FLAGS>;

/// Policy tables, one per generation.
const GENERATION_SLOTS: usize = GENERATIONS as usize;

/// Which generation is live.
#[map]
pub static CONTROL: Array<Control> = Array::with_max_entries(1, 0);

/// Per-generation policy header.
#[map]
pub static FW_HEADER: Array<PolicyHeader> = Array::with_max_entries(GENERATIONS, 0);

/// Rule shapes, `gen * MAX_TUPLES + i`, sorted by their best rule.
#[map]
pub static FW_TUPLES: Array<Tuple> = Array::with_max_entries(GENERATIONS * MAX_TUPLES, 0);

/// Rule entries of every tuple, one table per generation.
#[btf_map]
pub static FW_RULES: btf_maps::ArrayOfMaps<RuleTable, GENERATION_SLOTS> =
    btf_maps::ArrayOfMaps::new();

/// A filter of each generation's `FW_RULES` keys (`KeyFilter`: the masks, then each
/// generation's words): the search skips the hash lookup of a tuple whose key the filter
/// says is absent. Declared at the largest size; the daemon creates it sized by its policy.
#[map]
pub static FW_RULE_FILTER: Array<u64> = Array::with_max_entries(
    palisade_common::firewall::key_filter_entries(palisade_common::firewall::KEY_FILTER_MAX_WORDS),
    0,
);

/// A filter of the granules (IPv4 /24, IPv6 /64) of each generation's set prefixes
/// (`KeyFilter`, laid out as `FW_RULE_FILTER`): a set's trie is walked only for an address
/// whose granule may hold one of its prefixes (sets with shorter prefixes always walk it).
#[map]
pub static FW_SET_FILTER: Array<u64> = Array::with_max_entries(
    palisade_common::firewall::key_filter_entries(palisade_common::firewall::KEY_FILTER_MAX_WORDS),
    0,
);

/// Rule actions, one table per generation, by evaluation index: read only when a rule
/// matched.
#[btf_map]
pub static FW_RULE_META: btf_maps::ArrayOfMaps<RuleMetaTable, GENERATION_SLOTS> =
    btf_maps::ArrayOfMaps::new();

/// Port -> source-port class and the tuples it may match (`port_word`),
/// `gen * PORT_SPACE + port`.
#[map]
pub static FW_SPORT_CLASS: Array<u64> = Array::with_max_entries(GENERATIONS * PORT_SPACE, 0);

/// Port (or ICMP `type << 8 | code`) -> destination-port class and its tuples.
#[map]
pub static FW_DPORT_CLASS: Array<u64> = Array::with_max_entries(GENERATIONS * PORT_SPACE, 0);

/// Members of every named set that are shorter prefixes than one address: key
/// `(set id, family, address)`, prefix length `40 + stored bits`; one trie per generation.
#[btf_map]
pub static FW_SETS: btf_maps::ArrayOfMaps<SetPrefixTable, GENERATION_SLOTS> =
    btf_maps::ArrayOfMaps::new();

/// Members of every named set that are single addresses (IPv4 /32, IPv6 /128): the same key,
/// matched exactly, one table per generation. A hash lookup stays flat as a blocklist grows;
/// a trie walk does not.
#[btf_map]
pub static FW_SET_HOSTS: btf_maps::ArrayOfMaps<SetHostTable, GENERATION_SLOTS> =
    btf_maps::ArrayOfMaps::new();

/// What each set holds (`SET_HOSTS`, `SET_PREFIXES`), `set_kind_slot(set id)`: a set without
/// prefixes never walks the trie, one without hosts never probes the hash.
#[map]
pub static FW_SET_KIND: Array<u8> = Array::with_max_entries(GENERATIONS * MAX_SETS, 0);

/// Per-CPU keys of the tuple search (`firewall::classify`), kept off the stack: one entry.
#[map]
pub static FW_SEARCH: PerCpuArray<crate::firewall::classify::SearchKeys> =
    PerCpuArray::with_max_entries(1, 0);

/// Token buckets of rate-limit rules, keyed by rule identity (kept across reloads) and source
/// prefix: the GCRA clock and the interval it ran at (65 536 entries, LRU).
#[map]
pub static FW_RATE: LruHashMap<RateKey, palisade_common::firewall::RateBucket> =
    LruHashMap::with_max_entries(65_536, 0);

/// Per-rule packet and byte counters, one table per generation, by CPU and evaluation index
/// (`rule_stats_slot`): counted only when a rule matched.
#[btf_map]
pub static FW_RULE_STATS: btf_maps::ArrayOfMaps<RuleStatsTable, GENERATION_SLOTS> =
    btf_maps::ArrayOfMaps::new();

/// The default action's packet and byte counters, by generation: a plain array, so the
/// packets no rule matches pay one inlined lookup.
#[map]
pub static FW_DEFAULT_STATS: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(GENERATIONS, 0);

/// Drops per reason.
#[map]
pub static REASON_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(reason::COUNT, 0);

/// Global counters (see `palisade_common::stats`).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// Events to userspace.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Reserves a record of `T` on [`EVENTS`]; `None` when the ring has no room for it (the
/// caller counts the lost event).
///
/// A ring the reader has fallen behind on is seen from its positions first
/// (`BPF_RB_AVAIL_DATA`, read without a lock): a reservation takes the ring's spinlock even to
/// fail, and under a flood with nobody reading every event would pay for it. The check can
/// only be stale towards "full" by what the reader consumed in the last instant.
#[inline(always)]
pub fn reserve_event<T>() -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<T>> {
    // A record takes its 8-byte header and is padded to 8 bytes.
    let need = (size_of::<T>() as u64 + 8 + 7) & !7;
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) + need > u64::from(EVENT_RING_BYTES) {
        return None;
    }
    EVENTS.reserve::<T>(0)
}

/// Submit flags for a record on [`EVENTS`]: wake the reader only once a batch waits (see
/// `palisade_common::event::EVENT_WAKEUP_BYTES`).
#[inline(always)]
pub fn event_flags() -> u64 {
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= EVENT_WAKEUP_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Add one to a per-CPU counter.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

const _: () = assert!(MAX_SETS > 0);

// ---- DNS ----

use aya_ebpf::maps::ProgramArray;
use palisade_common::dns::{
    hash::HashKey,
    maps::{ClientKey, DNS_STATS_PER_SCOPE, DnsGlobal, NameKey, NameValue, SCOPES, ScopeConfig},
};

/// The secret key of the name hashes (set once when the maps are created).
#[map]
pub static DNS_KEY: Array<HashKey> = Array::with_max_entries(1, 0);

/// Per-generation DNS settings.
#[map]
pub static DNS_GLOBAL: Array<DnsGlobal> = Array::with_max_entries(GENERATIONS, 0);

/// Per-generation, per-scope DNS policy: `gen * SCOPES + scope`.
#[map]
pub static DNS_SCOPES: Array<ScopeConfig> = Array::with_max_entries(GENERATIONS * SCOPES, 0);

/// Every name entry of every scope, one table per generation.
#[btf_map]
pub static DNS_NAMES: btf_maps::ArrayOfMaps<NameTable, GENERATION_SLOTS> =
    btf_maps::ArrayOfMaps::new();

/// Per generation, a filter of `DNS_NAMES`' keys (`NameFilter`: the masks, then each
/// generation's words): a suffix whose bits are not set is not looked up. Declared at
/// `FILTER_DECLARED_WORDS` a generation; the daemon creates it sized by its policy's names.
#[map]
pub static DNS_FILTER: Array<u64> = Array::with_max_entries(
    palisade_common::firewall::key_filter_entries(
        palisade_common::dns::maps::FILTER_DECLARED_WORDS,
    ),
    0,
);

/// Per-client query buckets (GCRA time).
#[map]
pub static DNS_RATE: LruHashMap<ClientKey, u64> = LruHashMap::with_max_entries(65_536, 0);

/// Answer budgets (GCRA time) per client prefix (`[dns] answer_prefix_v4`/`_v6`), ingress
/// only. 65,536 prefixes: LRU, so under a spread of forged sources the least recently seen
/// prefix is forgotten first, and forgetting one only gives it a fresh burst.
#[map]
pub static DNS_ANSWERS: LruHashMap<ClientKey, u64> = LruHashMap::with_max_entries(65_536, 0);

/// Stream position of every DNS-over-TCP flow a hook judges (`dns::stream`), keyed by the
/// flow as its sender sees it and the scope. LRU: a flow evicted under pressure has its
/// next data segment rejected (`dns-stream`), never passed unjudged.
#[map]
pub static DNS_STREAMS: LruHashMap<
    palisade_common::dns::stream::StreamKey,
    palisade_common::dns::stream::StreamState,
> = LruHashMap::with_max_entries(65_536, 0);

/// Per-scope DNS counters.
#[map]
pub static DNS_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(SCOPES * DNS_STATS_PER_SCOPE, 0);

/// Per-CPU working space of the DNS inspector (far larger than the 512-byte stack), one
/// slot per hook that can be running on a CPU at once: see [`SLOT_XDP`].
#[map]
pub static DNS_SCRATCH: PerCpuArray<crate::dns::inspect::Scratch> =
    PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// Per-CPU state of the DNS event budget (see `report::aggregate`).
#[map]
pub static DNS_EVENT_BUDGET: PerCpuArray<palisade_common::event::DnsEventBudget> =
    PerCpuArray::with_max_entries(1, 0);

/// The current summary interval of the DNS aggregate maps, advanced by the daemon.
#[map]
pub static DNS_EVENT_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// Names aggregated over the event budget, in the current and the last interval; capacity
/// [`palisade_common::event::DNS_AGG_NAMES`].
#[map]
pub static DNS_EVENT_NAMES: LruHashMap<
    palisade_common::event::DnsAggName,
    palisade_common::event::DnsAggNameInfo,
> = LruHashMap::with_max_entries(palisade_common::event::DNS_AGG_NAMES, 0);

/// Aggregated query counts per name and client, per CPU; capacity
/// [`palisade_common::event::DNS_AGG_CLIENTS`].
#[map]
pub static DNS_EVENT_CLIENTS: LruPerCpuHashMap<palisade_common::event::DnsAggClient, u64> =
    LruPerCpuHashMap::with_max_entries(palisade_common::event::DNS_AGG_CLIENTS, 0);

/// Aggregated query counts per CPU in plain array slots, direct-mapped by the (name,
/// client) key's fingerprint: [`palisade_common::event::DNS_AGG_COUNT_BANKS`] banks (one per
/// interval, in turn) of [`palisade_common::event::DNS_AGG_COUNT_SLOTS`] slots of 16 bytes
/// per CPU. A key whose slot another key of the interval holds is counted in
/// [`DNS_EVENT_CLIENTS`].
#[map]
pub static DNS_EVENT_COUNTS: PerCpuArray<palisade_common::event::DnsAggCount> =
    PerCpuArray::with_max_entries(
        palisade_common::event::DNS_AGG_COUNT_BANKS * palisade_common::event::DNS_AGG_COUNT_SLOTS,
        0,
    );

/// Per CPU, the names this CPU sent or counted lately over the event budget, direct-mapped
/// by the name's hash; [`crate::dns::report::SEEN_SLOTS`] slots (40 bytes each per CPU).
#[map]
pub static DNS_EVENT_SEEN: PerCpuArray<crate::dns::report::Seen> =
    PerCpuArray::with_max_entries(crate::dns::report::SEEN_SLOTS, 0);

/// Per-CPU working space of the event budget (keys, a new name's value), one slot per
/// scratch slot.
#[map]
pub static DNS_AGG_SCRATCH: PerCpuArray<crate::dns::report::AggScratch> =
    PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// Busy flags of the egress scratch slots on this CPU: `DNS_EGRESS_BUSY[i]` is not 0 while
/// an egress inspection owns slot `SLOT_EGRESS + i`. Claimed with an atomic compare-and-exchange
/// (see `dns::egress`): the egress program runs with migration disabled but can be preempted
/// (and interrupted by a softirq that sends), so inspections on one CPU do not nest in order.
#[map]
pub static DNS_EGRESS_BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(EGRESS_SLOTS, 0);

/// Scratch slot of the XDP inspector. XDP runs in softirq and can interrupt an egress
/// inspection in process context on the same CPU, so the hooks never share a slot.
pub const SLOT_XDP: u32 = 0;
/// First scratch slot of the egress inspector.
pub const SLOT_EGRESS: u32 = 1;
/// Egress inspections that may be under way on one CPU at once: tasks preempted in the
/// middle of the program, plus a softirq on top. When all are taken the packet is not
/// inspected (an allowlist refuses it, reason `dns-busy`). Each slot costs one `Scratch`
/// and one event per CPU (about 4 KiB).
pub const EGRESS_SLOTS: u32 = 4;
/// Scratch slots in all.
pub const SCRATCH_SLOTS: u32 = SLOT_EGRESS + EGRESS_SLOTS;

/// Tail-call targets of the XDP pipeline: the firewall tail-calls the connection tracker and
/// the DNS inspector (see `docs/design/conntrack.md` and `docs/design/dns.md`).
#[map]
pub static XDP_TAILS: ProgramArray = ProgramArray::with_max_entries(5, 0);

/// Slot of the DNS ingress inspector in [`XDP_TAILS`].
pub const TAIL_DNS: u32 = 0;
/// Slot of the connection tracker's ingress stage.
pub const TAIL_CT: u32 = 1;
/// Slot of the rules stage that follows the tracker.
pub const TAIL_RULES: u32 = 2;
/// Slot of the SYN-cookie answer (`shield::syncookie`).
pub const TAIL_SYNCOOKIE: u32 = 3;
/// Slot of the load balancer's stage (`lb`).
pub const TAIL_LB: u32 = 4;

// ---- Shields ----

use palisade_common::shield::{
    HITTER_SLOTS, HitterEntry, LISTENER_SLOTS, PORT_SLOTS, PortState, SH_COUNT, SKETCH_CELLS,
    ShieldConfig, SourceKey,
};

/// Shield settings, one slot per policy generation (`[shield]`).
#[map]
pub static SHIELD_CONFIG: Array<ShieldConfig> = Array::with_max_entries(GENERATIONS, 0);

/// The SYN rate and engagement of each destination port slot, shared by every CPU so the
/// rate that engages cookies is the host's, not one CPU's (128 KiB).
#[map]
pub static SHIELD_PORTS: Array<PortState> = Array::with_max_entries(PORT_SLOTS, 0);

/// When a SYN last went on to the stack while cookies were engaged, per destination address
/// and port hash (32 KiB).
#[map]
pub static SHIELD_LISTENERS: Array<u64> = Array::with_max_entries(LISTENER_SLOTS, 0);

/// The count-min sketch of the per-source limits (`shield::sources`): 4 rows of 65 536
/// window-stamped counters, and the global echo counter; shared by every CPU (2 MiB). One
/// size, so its lookups stay inlined.
pub type SketchTable = btf_maps::Array<u64, { SKETCH_CELLS as usize }, 0>;

/// Slot 0 holds the sketch while the policy has per-source limits, and nothing otherwise:
/// the daemon creates it before a generation that uses it goes live, and removes it once
/// none does, so a policy without them pins none of its memory.
#[btf_map]
pub static SHIELD_SKETCH: btf_maps::ArrayOfMaps<SketchTable, 1> = btf_maps::ArrayOfMaps::new();

/// The heavy hitters: source prefixes that went over `source_rate`, blocked while their
/// block lasts; the least recently updated are evicted when full (65 536 entries, 3.4 MiB
/// with the kernel's per-entry overhead).
#[map]
pub static SHIELD_HITTERS: LruHashMap<SourceKey, HitterEntry> =
    LruHashMap::with_max_entries(HITTER_SLOTS, 0);

/// Shield counters (`palisade_common::shield::SH_*`).
#[map]
pub static SHIELD_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SH_COUNT, 0);

/// Where the SYN-cookie answer is put together (one per CPU).
#[map]
pub static SHIELD_SCRATCH: PerCpuArray<crate::shield::syncookie::Scratch> =
    PerCpuArray::with_max_entries(1, 0);

// ---- Scrub ----

use palisade_common::scrub::{SC_COUNT, ScrubConfig};

/// Scrub settings, one slot per policy generation (`[scrub]`, 16 bytes each).
#[map]
pub static SCRUB_CONFIG: Array<ScrubConfig> = Array::with_max_entries(GENERATIONS, 0);

/// Scrub counters (`palisade_common::scrub::SC_*`), ingress then egress, per CPU.
#[map]
pub static SCRUB_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SC_COUNT, 0);

/// Where scrub walks a SYN's TCP options (one per CPU, 65 bytes).
#[map]
pub static SCRUB_SCRATCH: PerCpuArray<crate::scrub::Scratch> = PerCpuArray::with_max_entries(1, 0);

// ---- NAT ----

use palisade_common::nat::{
    ForwardKey, ForwardTarget, MAX_FORWARDS, NS_COUNT, NatCensus, NatConfig, NatEntry, NatKey,
};

/// NAT settings, one slot per policy generation (`[nat]`, 560 bytes each).
#[map]
pub static NAT_CONFIG: Array<NatConfig> = Array::with_max_entries(GENERATIONS, 0);

/// Mappings by the untranslated tuple of what leaves through the outside interface: the
/// source it gets (`palisade_common::nat::MAX_ENTRIES`, allocated as mappings are made).
#[map]
pub static NAT_EGRESS: HashMap<NatKey, NatEntry> = HashMap::with_max_entries(
    palisade_common::nat::MAX_ENTRIES,
    aya_ebpf::bindings::BPF_F_NO_PREALLOC,
);

/// Mappings by the outside tuple of what arrives: the destination it gets. Its keys are the
/// external tuples handed out, unique by construction (inserted with `BPF_NOEXIST`).
#[map]
pub static NAT_INGRESS: HashMap<NatKey, NatEntry> = HashMap::with_max_entries(
    palisade_common::nat::MAX_ENTRIES,
    aya_ebpf::bindings::BPF_F_NO_PREALLOC,
);

/// Port forwards of both generations (written by the daemon; allocated as they are).
#[map]
pub static NAT_FORWARDS: HashMap<ForwardKey, ForwardTarget> =
    HashMap::with_max_entries(GENERATIONS * MAX_FORWARDS, BPF_F_NO_PREALLOC);

/// NAT counters (`palisade_common::nat::NS_*`), per CPU.
#[map]
pub static NAT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NS_COUNT, 0);

/// What the sweep counted of the mappings.
#[map]
pub static NAT_CENSUS: Array<NatCensus> = Array::with_max_entries(1, 0);

/// Where a new mapping is put together (one per CPU).
#[map]
pub static NAT_SCRATCH: PerCpuArray<crate::nat::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Where the sweep builds the keys of a mapping it checks (one per CPU).
#[map]
pub static NAT_SWEEP_SCRATCH: PerCpuArray<crate::ct::sweep::SweepScratch> =
    PerCpuArray::with_max_entries(1, 0);

// ---- Connection tracking ----

use palisade_common::conntrack::{
    CT_STATS as CT_STAT_COUNT, CtCensus, CtConfig, CtEntry, CtKey, OverloadEntry, SourceEntry,
};

/// Default capacity of [`CT_EST`]; userspace sets the real one from `[conntrack]
/// max_entries` when it creates the map.
pub const CT_EST_DEFAULT: u32 = 262_144;
/// Default capacity of [`CT_NEW`] (`[conntrack] max_unvalidated`).
pub const CT_NEW_DEFAULT: u32 = 16_384;

/// Validated flows: a completed handshake, an answered datagram, or a flow this host sends
/// on. Only such flows enter, so a flood from spoofed sources cannot fill it; not an LRU, so
/// nothing is ever evicted unseen: entries leave by expiry, flush or teardown, and an insert
/// into a full table fails and is counted. Allocated as entries arrive.
#[map]
pub static CT_EST: HashMap<CtKey, CtEntry> =
    HashMap::with_max_entries(CT_EST_DEFAULT, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Flows not validated yet (a SYN, an unanswered datagram or echo request). An LRU: a flood
/// churns this table, never [`CT_EST`].
#[map]
pub static CT_NEW: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(CT_NEW_DEFAULT, 0);

/// Capacity of [`CT_SOURCES`].
pub const CT_SOURCES_MAX: u32 = 65_536;

/// Per outside address: its validated flows and its bucket of new flows, for the per-source
/// limits of `[conntrack]`. An LRU: under more distinct sources than this, the least recent
/// lose their count (their limits restart). Updated without atomics, like the rate-limit
/// buckets: two CPUs racing on one address can lose an update.
#[map]
pub static CT_SOURCES: LruHashMap<[u32; 4], SourceEntry> =
    LruHashMap::with_max_entries(CT_SOURCES_MAX, 0);

/// Capacity of [`CT_OVERLOAD`].
pub const CT_OVERLOAD_MAX: u32 = 65_536;

/// Dynamic members of the overload set (`[conntrack] overload_set`): addresses that went
/// over a per-source limit, with their expiry. Keyed by address (a `SetKey` with set id 0),
/// not by a generation's set id, so members stay through reloads. Not an LRU: a member is
/// never pushed out by a flood of others; when full, an address that goes over a limit is
/// refused the set (counted, `overload_full`) and still gets its `conn-limit` drops.
/// Preallocated, so the datapath never allocates; entries leave on expiry (sweep) or flush.
#[map]
pub static CT_OVERLOAD: HashMap<SetKey, OverloadEntry> =
    HashMap::with_max_entries(CT_OVERLOAD_MAX, 0);

/// Tracker settings (timeouts), written by userspace.
#[map]
pub static CT_CONFIG: Array<CtConfig> = Array::with_max_entries(1, 0);

/// The entry of a new flow waiting for its packet's verdict.
#[map]
pub static CT_PENDING: PerCpuArray<crate::ct::Pending> = PerCpuArray::with_max_entries(1, 0);

/// Tracker counters (see `palisade_common::conntrack::CS_*`).
#[map]
pub static CT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CT_STAT_COUNT, 0);

/// What the last sweep found.
#[map]
pub static CT_CENSUS: Array<CtCensus> = Array::with_max_entries(1, 0);

// ---- Load balancer ----

use palisade_common::lb::{
    FLOW_ENTRIES, LB_SLOTS, LS_COUNT, LbBackend, LbControl, LbFlow, LbFlowKey, LbGate, LbGlobal,
    LbReverse, LbService, MAX_BACKENDS, MAX_SERVICES, REVERSE_ENTRIES, Ring, VIP_ENTRIES, VipKey,
};

/// Which table slot is live, and how many services each holds.
#[map]
pub static LB_CONTROL: Array<LbControl> = Array::with_max_entries(1, 0);

/// Per slot: the hash seed, the insertion gate, the DSR source prefixes (64 bytes each).
#[map]
pub static LB_GLOBAL: Array<LbGlobal> = Array::with_max_entries(LB_SLOTS, 0);

/// Services by (slot, address, protocol, port), and one ICMP entry per VIP address (mode 0).
#[map]
pub static LB_VIPS: HashMap<VipKey, LbService> = HashMap::with_max_entries(VIP_ENTRIES, 0);

/// Backends, `backend_slot(slot, service, index)` (24 bytes each, 393 KiB).
#[map]
pub static LB_BACKENDS: Array<LbBackend> =
    Array::with_max_entries(LB_SLOTS * MAX_SERVICES * MAX_BACKENDS, 0);

/// A slot's Maglev tables, by service index: 65,537 backend indexes each (128 KiB). The
/// template: the daemon creates each slot's with room for its services.
pub type RingTable = btf_maps::Array<Ring, 1, INNER_ARRAY_FLAGS>;

/// Maglev tables, one array per slot (none while the slot has no service): 128 KiB per
/// service and slot.
#[btf_map]
pub static LB_RINGS: btf_maps::ArrayOfMaps<RingTable, { LB_SLOTS as usize }> =
    btf_maps::ArrayOfMaps::new();

/// Flows and their backends, kept across table changes. An LRU; insertions are rate-gated
/// per CPU (`LB_GATE`), so a flood of new flows cannot push the live ones out.
#[map]
pub static LB_FLOWS: LruHashMap<LbFlowKey, LbFlow> = LruHashMap::with_max_entries(FLOW_ENTRIES, 0);

/// DNAT backends by (slot, address, protocol, port): the VIP their replies come back from.
/// Written by the daemon at each install; allocated as entries are (buckets only while the
/// load balancer has no DNAT service).
#[map]
pub static LB_REVERSE: HashMap<VipKey, LbReverse> =
    HashMap::with_max_entries(REVERSE_ENTRIES, BPF_F_NO_PREALLOC);

/// The flow-insertion bucket of each CPU.
#[map]
pub static LB_GATE: PerCpuArray<LbGate> = PerCpuArray::with_max_entries(1, 0);

/// Load-balancer counters (`palisade_common::lb::LS_*`).
#[map]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LS_COUNT, 0);

/// Working space: the XDP stage's, then the TC reverse translation's.
#[map]
pub static LB_SCRATCH: PerCpuArray<crate::lb::Scratch> = PerCpuArray::with_max_entries(2, 0);

// ---- TLS gate ----

use palisade_common::tls::gate::{GATE_FLOWS, GateFlow, GateKey, TS_COUNT, TlsGateConfig};

/// The TLS gate's settings, one slot per policy generation (`[tls]`, 24 bytes each).
#[map]
pub static TLS_CONFIG: Array<TlsGateConfig> = Array::with_max_entries(GENERATIONS, 0);

/// Flows to a watched port and their state (pending, allowed, blocked): 40-byte keys,
/// 16-byte values.
#[map]
pub static TLS_FLOWS: LruHashMap<GateKey, GateFlow> = LruHashMap::with_max_entries(GATE_FLOWS, 0);

/// The client bytes of pending flows, for the daemon (1 MiB: about 960 records of 1 KiB).
#[map]
pub static TLS_SEGMENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// TLS gate counters (`palisade_common::tls::gate::TS_*`), per CPU.
#[map]
pub static TLS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TS_COUNT, 0);

// ---- DHCP snooping ----

use palisade_common::dhcp::{DS_COUNT, DhcpConfig, MAX_TRUSTED, RING_BYTES, TrustKey};

/// `[dhcp]`'s settings, one slot per policy generation (8 bytes each).
#[map]
pub static DHCP_CONFIG: Array<DhcpConfig> = Array::with_max_entries(GENERATIONS, 0);

/// Trusted servers and routers of both generations (20-byte keys, `MAX_TRUSTED` each).
#[map]
pub static DHCP_TRUSTED: HashMap<TrustKey, u8> =
    HashMap::with_max_entries(GENERATIONS * MAX_TRUSTED, 0);

/// Copied DHCP, DHCPv6 and router-advertisement frames, for the daemon's lease table.
#[map]
pub static DHCP_RECORDS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// DHCP snooping counters (`palisade_common::dhcp::DS_*`), per CPU.
#[map]
pub static DHCP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DS_COUNT, 0);

// ---- Threat intelligence ----

use palisade_common::intel::{
    BloomBlock, CidrBlock, CidrData, IS_COUNT, IntelControl, IntelHit, V4_SLASH16_ENTRIES,
};

/// Which indicator generation is live and what each holds (`[intel]`).
#[map]
pub static INTEL_CONTROL: Array<IntelControl> = Array::with_max_entries(1, 0);

/// Bloom filters over the exact indicator addresses, one per generation: arrays of 512-bit
/// blocks (`palisade_common::intel::bloom_hash`) the daemon rewrites whole at each refresh.
/// Declared with one block: the daemon creates them with `bloom_blocks([intel] max_ips)`
/// (`intel::load::Sizes`), so no memory goes to indicators a policy does not have.
#[map]
pub static INTEL_BLOOM_0: Array<BloomBlock> = Array::with_max_entries(1, 0);
#[map]
pub static INTEL_BLOOM_1: Array<BloomBlock> = Array::with_max_entries(1, 0);

/// Exact indicator addresses (IPv4 mapped) -> action and feed, one per generation; not an
/// LRU, allocated as entries arrive, capacity `[intel] max_ips`.
#[map]
pub static INTEL_IPS_0: HashMap<[u8; 16], IntelHit> =
    HashMap::with_max_entries(1, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
#[map]
pub static INTEL_IPS_1: HashMap<[u8; 16], IntelHit> =
    HashMap::with_max_entries(1, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Indicator CIDRs (IPv4 as `96 + n` bits of the mapped address), one per generation;
/// capacity `[intel] max_cidrs`.
#[map]
pub static INTEL_CIDRS_0: LpmTrie<CidrData, IntelHit> =
    LpmTrie::with_max_entries(1, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
#[map]
pub static INTEL_CIDRS_1: LpmTrie<CidrData, IntelHit> =
    LpmTrie::with_max_entries(1, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// A generation's IPv4 CIDRs per /16 (`palisade_common::intel::stride_match`): 65,536
/// entries (1.5 MiB). One size, so its lookups stay inlined.
pub type V4Slash16Table = btf_maps::Array<CidrBlock, { V4_SLASH16_ENTRIES as usize }, 0>;

/// Each generation's /16 array, in its slot only while that generation holds IPv4 CIDRs
/// (the daemon creates it with them): no memory for feeds without any, or no feeds.
#[btf_map]
pub static INTEL_V4_16: btf_maps::ArrayOfMaps<V4Slash16Table, GENERATION_SLOTS> =
    btf_maps::ArrayOfMaps::new();

/// IPv4 CIDRs per /24 (the /24s that CIDRs longer than /16 touch), one per generation;
/// capacity `[intel] max_cidrs`.
#[map]
pub static INTEL_V4_24_0: HashMap<u32, CidrBlock> =
    HashMap::with_max_entries(1, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
#[map]
pub static INTEL_V4_24_1: HashMap<u32, CidrBlock> =
    HashMap::with_max_entries(1, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Addresses that matched a feed with `action = "tag"`, with the feed and when last seen,
/// for the other engines and the daemon. An LRU of tags, not of indicators: a tag pushed
/// out is set again by the address's next packet (65,536 entries).
#[map]
pub static INTEL_TAGGED: LruHashMap<[u8; 16], crate::intel::Tagged> =
    LruHashMap::with_max_entries(65_536, 0);

/// The trie key of a lookup, per CPU: slot 0 for XDP, 1 for TC egress.
#[map]
pub static INTEL_SCRATCH: PerCpuArray<aya_ebpf::maps::lpm_trie::Key<CidrData>> =
    PerCpuArray::with_max_entries(2, 0);

/// Intel counters (`palisade_common::intel::IS_*`), per CPU.
#[map]
pub static INTEL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(IS_COUNT, 0);

// ---- DNS binding ----

use palisade_common::dnsbind::{
    BIND_CAPACITY, BIND_STATS_COUNT, BindConfig, BindKey, BindValue, MAX_BIND_ALLOW, MAX_BIND_PIN,
};

/// The `[dns.bind]` settings (one entry).
#[map]
pub static BIND_CONFIG: Array<BindConfig> = Array::with_max_entries(1, 0);

/// What each cgroup in bind mode received in DNS answers, until when (LRU: when full, the
/// least recently used binding goes and its address is refused until resolved again).
#[map]
pub static BIND_ADDRS: LruHashMap<BindKey, BindValue> =
    LruHashMap::with_max_entries(BIND_CAPACITY, 0);

/// Destinations allowed without a DNS answer (`[dns.bind] allow`, loopback): addresses as
/// the bindings store them, IPv4 under `::ffff:0:0/96`.
#[map]
pub static BIND_ALLOW: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(MAX_BIND_ALLOW, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Resolver pinning (`[dns.bind] resolvers`, `doh_endpoints`): prefix -> `PIN_RESOLVER` or
/// `PIN_DOH`, addresses as in `BIND_ALLOW`.
#[map]
pub static BIND_PIN: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(MAX_BIND_PIN, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Binding counters (`palisade_common::dnsbind::STAT_*`), per CPU.
#[map]
pub static BIND_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(BIND_STATS_COUNT, 0);

/// The answer walker's working space, one per CPU.
#[map]
pub static BIND_SCRATCH: PerCpuArray<crate::dnsbind::answer::Scratch> =
    PerCpuArray::with_max_entries(1, 0);

/// Whether this CPU's [`BIND_SCRATCH`] is in use (claimed by compare-and-exchange).
#[map]
pub static BIND_BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The pending queries of the cgroups in bind mode (`QUERY_CAPACITY`, LRU: when full, the
/// least recently sent goes and its answer binds nothing).
#[map]
pub static BIND_QUERIES: LruHashMap<
    palisade_common::dnsbind::QueryKey,
    palisade_common::dnsbind::QueryValue,
> = LruHashMap::with_max_entries(palisade_common::dnsbind::QUERY_CAPACITY, 0);

/// The query recorder's working space, one per CPU.
#[map]
pub static QUERY_SCRATCH: PerCpuArray<crate::dnsbind::query::Scratch> =
    PerCpuArray::with_max_entries(1, 0);

/// Whether this CPU's [`QUERY_SCRATCH`] is in use (claimed by compare-and-exchange).
#[map]
pub static QUERY_BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// TCP answer messages split across segments, kept per flow until whole
/// (`MAX_TCP_PARTIAL`, LRU: when full, the least recently used flow's message is lost and
/// binds nothing).
#[map]
pub static BIND_TCP_PARTIAL: LruHashMap<
    palisade_common::dnsbind::FlowKey,
    palisade_common::dnsbind::Partial,
> = LruHashMap::with_max_entries(palisade_common::dnsbind::MAX_TCP_PARTIAL, 0);

// The DNS response cache (`[dns.cache]`, see `dns::cache`).

/// The cache's settings, per generation.
#[map]
pub static DNS_CACHE_CFG: Array<palisade_common::dns::cache::CacheConfig> =
    Array::with_max_entries(GENERATIONS, 0);

/// Cached answers; `[dns.cache] capacity` entries (at most
/// `palisade_common::dns::cache::MAX_CAPACITY`), least recently used evicted first.
#[map]
pub static DNS_CACHE: LruHashMap<
    palisade_common::dns::cache::CacheKey,
    palisade_common::dns::cache::CacheEntry,
> = LruHashMap::with_max_entries(palisade_common::dns::cache::DEFAULT_CAPACITY, 0);

/// Queries seen at ingress waiting for the resolver's answer; an answer without one is not
/// cached. LRU: under a flood the oldest are forgotten (their answers are then not cached).
#[map]
pub static DNS_CACHE_PENDING: LruHashMap<
    palisade_common::dns::cache::PendingKey,
    palisade_common::dns::cache::PendingValue,
> = LruHashMap::with_max_entries(palisade_common::dns::cache::PENDING_CAPACITY, 0);

/// Cache counters (`palisade_common::dns::cache::CSTAT_*`), per CPU.
#[map]
pub static DNS_CACHE_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(palisade_common::dns::cache::CACHE_STATS, 0);

/// Working space of the cache's lookup (XDP) and fill (TC), one slot each per CPU.
#[map]
pub static DNS_CACHE_SCRATCH: PerCpuArray<crate::dns::cache::Scratch> =
    PerCpuArray::with_max_entries(crate::dns::cache::CACHE_SLOTS, 0);

// ---- IDS ----

use palisade_common::ids::{
    IS_COUNT as IDS_IS_COUNT, IdsConfig, IdsFlowKey, IdsFlowState, IdsGrams, IdsPortGroup,
    IdsPortKey,
};

/// IDS settings (`palisade_common::ids::IdsConfig`, one entry, 16 bytes).
#[map]
pub static IDS_CONFIG: Array<IdsConfig> = Array::with_max_entries(1, 0);

/// The prefilter's gram bitmap (one entry, 8,200 bytes).
#[map]
pub static IDS_GRAMS: Array<IdsGrams> = Array::with_max_entries(1, 0);

/// Port groups: (protocol, port) -> mode. 4,096 groups (`ids::preselect::MAX_PORT_GROUPS`),
/// written by the daemon and allocated as they are.
#[map]
pub static IDS_PORT_GROUPS: HashMap<IdsPortKey, IdsPortGroup> =
    HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Flows (each direction) selected or sampled out: 65,536 entries, LRU (an evicted flow is
/// judged again by its next packet).
#[map]
pub static IDS_FLOWS: LruHashMap<IdsFlowKey, IdsFlowState> =
    LruHashMap::with_max_entries(65_536, 0);

/// Payload windows for the full match in userspace (4 MiB: about 3,800 records of 1,080 bytes).
#[map]
pub static IDS_RECORDS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// IDS counters (`palisade_common::ids::IS_*`), per CPU.
#[map]
pub static IDS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(IDS_IS_COUNT, 0);

/// The per-CPU record budget (a token bucket).
#[map]
pub static IDS_BUDGET: PerCpuArray<crate::ids::Budget> = PerCpuArray::with_max_entries(1, 0);

/// Flows a `drop` rule matched, keyed like the connection tracker's flows (both directions one
/// key): 65,536 entries (`IDS_DROP_FLOWS`), LRU. Written by the daemon, read in XDP (what
/// arrives) and at tcx (what the host sends).
#[map]
pub static IDS_DROPS: LruHashMap<CtKey, palisade_common::ids::IdsDrop> =
    LruHashMap::with_max_entries(palisade_common::ids::IDS_DROP_FLOWS, 0);

/// Where the IDS program parses a packet (one per CPU).
#[map]
pub static IDS_PACKET: PerCpuArray<palisade_common::packet::Packet> =
    PerCpuArray::with_max_entries(1, 0);

/// Where the prefilter's window is copied (one per CPU, 68 bytes).
#[map]
pub static IDS_SCRATCH: PerCpuArray<[u8; palisade_common::ids::IDS_SCAN_BYTES]> =
    PerCpuArray::with_max_entries(1, 0);

// ---- Actions ----

/// Actions the firewall hands to `palisade_action_ingress` on a kernel without XDP metadata,
/// keyed by the packet's bytes (see `palisade_common::action`; 8,192 entries, LRU).
#[map]
pub static ACTION_HANDOFF: LruHashMap<
    palisade_common::action::HandoffKey,
    palisade_common::action::ActionMeta,
> = LruHashMap::with_max_entries(palisade_common::action::HANDOFF_ENTRIES, 0);

/// Counters of the firewall's actions beyond allow and drop (`palisade_common::action::AS_*`),
/// per CPU.
#[map]
pub static ACTION_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(palisade_common::action::AS_COUNT, 0);

/// The ids of the `[dns.bind]` cgroups (`MAX_BIND_CGROUPS`), for the canary answer, which
/// runs at tcx egress and so is not attached to the cgroups themselves.
#[map]
pub static BIND_CGROUPS: HashMap<u64, u8> =
    HashMap::with_max_entries(palisade_common::dnsbind::MAX_BIND_CGROUPS, 0);

// ---- Redirect ----

/// The interfaces `redirect_to` names, keyed by index (`palisade_common::redirect`):
/// `MAX_REDIRECT_IFACES` entries, written before a policy naming them goes live.
#[map]
pub static REDIRECT_DEVS: aya_ebpf::maps::DevMapHash =
    aya_ebpf::maps::DevMapHash::with_max_entries(palisade_common::redirect::MAX_REDIRECT_IFACES, 0);

/// Counters of the `redirect` action (`palisade_common::redirect::RS_*`), per CPU.
#[map]
pub static REDIRECT_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(palisade_common::redirect::RS_COUNT, 0);

/// The fib lookup's parameters of a route-to redirect, per CPU (64 bytes kept off the stack).
#[map]
pub static REDIRECT_FIB: PerCpuArray<palisade_common::redirect::FibParams> =
    PerCpuArray::with_max_entries(1, 0);

// ---- Steer ----

/// The CPUs `steer` rules hand packets to (`palisade_common::steer`): a CPU map of
/// `STEER_MAX_CPU` entries, each with its queue size and the program `palisade_steer_cpu`,
/// written before a policy naming the CPU goes live.
#[map]
pub static STEER_CPUS: aya_ebpf::maps::CpuMap =
    aya_ebpf::maps::CpuMap::with_max_entries(palisade_common::steer::STEER_MAX_CPU, 0);

/// Counters of the `steer` action (`palisade_common::steer::SS_*`), per CPU: `arrived` per
/// CPU tells where the steered packets were processed.
#[map]
pub static STEER_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(palisade_common::steer::SS_COUNT, 0);

// ---- Threat intelligence: IPv6 CIDRs at the /64 stride ----

/// IPv6 CIDRs per /64 (`palisade_common::intel::v6_match`: CIDRs of /49 to /64 expanded, the
/// /64s holding longer ones marked), one per generation; capacity `[intel] max_cidrs`.
#[map]
pub static INTEL_V6_64_0: HashMap<u64, palisade_common::intel::V6Block> =
    HashMap::with_max_entries(1, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
#[map]
pub static INTEL_V6_64_1: HashMap<u64, palisade_common::intel::V6Block> =
    HashMap::with_max_entries(1, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// A filter of the /64s in `INTEL_V6_64_g` (`palisade_common::intel::v6_filter_slot`: two
/// bits of one word per /64), one per generation; sized by the daemon with the /64 table
/// (`v6_filter_words`).
#[map]
pub static INTEL_V6_FILTER_0: Array<u64> = Array::with_max_entries(1, 0);
#[map]
pub static INTEL_V6_FILTER_1: Array<u64> = Array::with_max_entries(1, 0);
