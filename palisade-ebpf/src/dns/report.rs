//! DNS counters and events.
//!
//! Every reported decision is an event while its CPU is within the event budget
//! (`[dns] event_rate`). Over the budget a query is counted per (name, verdict, reason,
//! client) in the aggregate maps instead, which the daemon turns into summary events; the
//! first query of each name in a summary interval, and one in every `event_sample`, are still
//! sent in full. See `docs/design/dns.md`.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        generated::bpf_get_current_cgroup_id,
    },
    maps::ring_buf::RingBufEntry,
};
use palisade_common::{
    dns::{
        hash::fmix,
        maps::{DNS_STATS_PER_SCOPE, SCOPE_INGRESS},
    },
    event::{
        DNS_AGG_COUNT_BANKS, DNS_AGG_COUNT_SLOTS, DNS_SENT_FIRST, DNS_SENT_IN_BUDGET,
        DNS_SENT_SAMPLE, DnsAggClient, DnsAggName, DnsAggNameInfo, DnsEvent, KIND_DNS,
    },
    stats,
};

/// Fills the sender's identity into an event.
#[inline(always)]
fn process_fields(ev: &mut DnsEvent, task: bool, cgroup_id: u64, socket_uid: u32) {
    // The socket's owner is always right; the current task is the sender only when the
    // packet is sent from the sender's own context (UDP sendmsg, a TCP write). TCP
    // retransmissions leave from a timer, in whatever task happens to run: the task's cgroup
    // then differs from the socket's, and pid/comm are left at 0 (unknown).
    // Volatile: next to the zeroed pid, tid and gid, a plain store is merged into a
    // byte-by-byte `memset` call.
    // SAFETY: a field of the event.
    unsafe { core::ptr::write_volatile(&raw mut ev.uid, socket_uid) };
    // SAFETY: a helper with no preconditions.
    let current_cgroup = if task {
        unsafe { bpf_get_current_cgroup_id() }
    } else {
        0
    };
    if task && current_cgroup == cgroup_id {
        let pid_tgid = bpf_get_current_pid_tgid();
        ev.pid = (pid_tgid >> 32) as u32;
        ev.tid = pid_tgid as u32;
        let uid_gid = bpf_get_current_uid_gid();
        ev.gid = (uid_gid >> 32) as u32;
        ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    } else {
        // SAFETY: fields of the event (volatile, as above).
        unsafe {
            core::ptr::write_volatile(&raw mut ev.pid, 0);
            core::ptr::write_volatile(&raw mut ev.tid, 0);
            core::ptr::write_volatile(&raw mut ev.gid, 0);
        }
        put16(&mut ev.comm, [0; 4]);
    }
}

use super::inspect::{Decision, Scratch};
use crate::maps::{
    DNS_AGG_SCRATCH, DNS_EVENT_BUDGET, DNS_EVENT_CLIENTS, DNS_EVENT_COUNTS, DNS_EVENT_EPOCH,
    DNS_EVENT_NAMES, DNS_EVENT_SEEN, DNS_GLOBAL, DNS_KEY, DNS_SCRATCH, DNS_STATS, EVENTS,
    REASON_STATS, STATS, bump, event_flags, reserve_event,
};

/// Adds one to a scope's DNS counter.
#[inline(always)]
pub fn count(scope: u8, counter: u32) {
    bump(&DNS_STATS, u32::from(scope) * DNS_STATS_PER_SCOPE + counter);
}

/// Counts a block under its reason.
#[inline(always)]
pub fn count_reason(reason: u32) {
    bump(&REASON_STATS, reason);
}

/// Who sent the query, where the hook can tell (addresses come from the scratch packet).
pub struct Origin {
    /// Scratch slot of the calling hook (the packet and the name are there).
    pub slot: u32,
    pub tcp: bool,
    pub ifindex: u32,
    pub generation: u32,
    /// Socket cgroup (egress).
    pub cgroup_id: u64,
    /// Read the current task's pid, gid and comm (process context hooks only).
    pub task: bool,
    /// Owner of the sending socket (egress), 0 on ingress.
    pub socket_uid: u32,
}

/// Reports `d` with `verdict`: an event within the budget, a count (and maybe an event) over
/// it. The event is written in the ring buffer in place, field by field, and only the
/// name's own words are copied.
#[inline(always)]
pub fn emit(scope: u8, verdict: u8, d: &Decision, o: &Origin) {
    let Some(s) = DNS_SCRATCH.get_ptr(o.slot) else {
        return;
    };
    // SAFETY: per-CPU scratch value.
    let s = unsafe { &*s };
    // Without a budget every query is an event: no call into the aggregation.
    let budget = DNS_GLOBAL
        .get(o.generation)
        .is_some_and(|g| g.event_interval_ns != 0);
    let sent = if budget {
        aggregate(
            o.slot,
            o.generation,
            // SAFETY: a helper with no preconditions.
            unsafe { bpf_ktime_get_ns() },
            d,
            u32::from(scope) << 8 | u32::from(verdict),
        )
    } else {
        DNS_SENT_IN_BUDGET
    };
    if sent == COUNTED {
        return;
    }
    // Ingress takes the lockless look at the ring first: a flood from outside with nobody
    // reading would otherwise take the ring's lock for every record it cannot have. Egress
    // (local senders) reserves at once: its deepest call chain has no stack left for the
    // check's live values.
    let reserved = if scope == SCOPE_INGRESS {
        reserve_event::<DnsEvent>()
    } else {
        EVENTS.reserve::<DnsEvent>(0)
    };
    let Some(mut entry) = reserved else {
        bump(&STATS, stats::EVENTS_LOST);
        return;
    };
    // SAFETY: the record is reserved for this program; every field is written below (the
    // name up to its length, which is all a reader takes of it).
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.kind = KIND_DNS;
    ev.reason = d.reason;
    // The clock is read once the record is had (a second time for a query over the budget
    // that is still sent): it costs about as much as the rest of a lost event, which a flood
    // with nobody reading pays for every query.
    // SAFETY: a helper with no preconditions.
    ev.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    ev.cgroup_id = o.cgroup_id;
    ev.ifindex = o.ifindex;
    ev.generation = o.generation;
    put16(&mut ev.client, s.packet.src_words());
    ev.client_port = s.packet.sport;
    ev.qtype = d.qtype;
    ev.name_len = d.wire_len;
    ev.family = s.packet.family;
    ev.scope = scope;
    ev.verdict = verdict;
    ev.tcp = u8::from(o.tcp);
    ev.list = d.list;
    ev.sent = sent;
    ev.flags = crate::intel::tag_flag(&s.packet.src) | super::inspect::intel_flags(o.slot, d);
    process_fields(ev, o.task, o.cgroup_id, o.socket_uid);
    copy_name_words(&s.name, &mut ev.name, d.wire_len);
    entry.submit(event_flags());
}

/// What [`over_budget`] returns when the query was only counted.
const COUNTED: u8 = u8::MAX;

/// Per-CPU working space of [`aggregate`]: its inputs, its result and the map keys and value
/// it builds (the hook's own stack is nearly full).
pub struct AggScratch {
    key: DnsAggClient,
    info: DnsAggNameInfo,
    reason: u32,
    generation: u32,
    now: u64,
    qtype: u16,
    wire_len: u16,
    list: u16,
    scope: u8,
    verdict: u8,
}

/// Charges one report to this CPU's event budget. The `DNS_SENT_*` value when the event is
/// to be sent (within the budget, the first of its name in the interval, or a sample),
/// [`COUNTED`] when the query was only counted.
///
/// A function of its own (a BPF subprogram with its own stack frame): the hooks' frames have
/// no room left for its keys and spills. It takes scalars and the decision, which already
/// lives on the hook's stack, so the hook's frame does not grow.
#[inline(never)]
fn aggregate(slot: u32, generation: u32, now: u64, d: &Decision, scope_verdict: u32) -> u8 {
    let (Some(a), Some(s)) = (DNS_AGG_SCRATCH.get_ptr_mut(slot), DNS_SCRATCH.get_ptr(slot)) else {
        return DNS_SENT_IN_BUDGET;
    };
    // SAFETY: per-CPU scratch values.
    let (a, s) = unsafe { (&mut *a, &*s) };
    a.reason = d.reason;
    a.generation = generation;
    a.now = now;
    a.qtype = d.qtype;
    a.wire_len = d.wire_len;
    a.list = d.list;
    a.scope = (scope_verdict >> 8) as u8;
    a.verdict = scope_verdict as u8;
    over_budget(a, s, slot)
}

#[inline(always)]
fn over_budget(a: &mut AggScratch, s: &Scratch, slot: u32) -> u8 {
    let Some(g) = DNS_GLOBAL.get(a.generation) else {
        return DNS_SENT_IN_BUDGET;
    };
    let interval = g.event_interval_ns;
    if interval == 0 {
        return DNS_SENT_IN_BUDGET;
    }
    let Some(b) = DNS_EVENT_BUDGET.get_ptr_mut(0) else {
        return DNS_SENT_IN_BUDGET;
    };
    // SAFETY: per-CPU value; hooks nesting on a CPU can only lose an update of it.
    let b = unsafe { &mut *b };
    let now = a.now;
    let tat = if b.tat_ns > now { b.tat_ns } else { now };
    if tat - now <= g.event_tolerance_ns {
        b.tat_ns = tat + interval;
        return DNS_SENT_IN_BUDGET;
    }
    bump(&STATS, stats::EVENTS_AGGREGATED);
    let sample = if g.event_sample == 0 {
        false
    } else if b.until_sample <= 1 {
        b.until_sample = g.event_sample;
        true
    } else {
        b.until_sample -= 1;
        false
    };
    let k = &mut a.key;
    k.name.reason = a.reason;
    k.name.name_len = a.wire_len;
    k.name.scope = a.scope;
    k.name.verdict = a.verdict;
    k.name.epoch = DNS_EVENT_EPOCH.get(0).copied().unwrap_or(0);
    k.name._pad = [0; 4];
    k.client = s.packet.src;
    k.family = s.packet.family;
    k._pad = [0; 7];
    let hash = palisade_dns_event_hash(slot, u32::from(a.wire_len));
    if hash == 0 {
        return DNS_SENT_IN_BUDGET;
    }
    a.key.name.hash = [hash, 0];
    let k = &a.key;
    let Some(seen) = DNS_EVENT_SEEN.get_ptr_mut((k.name.hash[0] as u32) & (SEEN_SLOTS - 1)) else {
        return DNS_SENT_IN_BUDGET;
    };
    // SAFETY: this CPU's slot of a per-CPU array.
    let seen = unsafe { &mut *seen };
    if !same_name(&seen.name, &k.name) {
        // The first of its name on this CPU in this interval (or its slot was taken by
        // another name since): sent in full, and remembered.
        seen.name = k.name;
        seen.named = 0;
        return DNS_SENT_FIRST;
    }
    // Every query is reported once: in full, or in its summary's count.
    if sample {
        bump(&STATS, stats::EVENTS_SAMPLED);
        return DNS_SENT_SAMPLE;
    }
    if seen.named == 0 {
        // The name's first count on this CPU: the summary needs its bytes. Another CPU may
        // have added them already.
        let v = &mut a.info;
        v.first_ns = now;
        v.qtype = a.qtype;
        v.list = a.list;
        v.generation = a.generation;
        copy_name_words(&s.name, &mut v.name, a.wire_len);
        let _ = DNS_EVENT_NAMES.insert(&k.name, v, u64::from(BPF_NOEXIST));
        seen.named = 1;
    }
    count_key(slot);
    COUNTED
}

/// Adds one to this CPU's count of the (name, client) key in `DNS_AGG_SCRATCH[slot]`: in
/// the key's slot of `DNS_EVENT_COUNTS` when the slot is free or already the key's, in
/// `DNS_EVENT_CLIENTS` when another key of the interval holds it.
///
/// The slot is a plain per-CPU array value of 16 bytes (the key's fingerprint, its count and
/// interval): the count of a flood from many clients touches one small slot, where an
/// update of the LRU map hashed the 56-byte key, walked a bucket and read the element and
/// its per-CPU value, cache misses each once the keys outgrow the cache. The key itself
/// goes into `DNS_EVENT_CLIENTS` once, with a count of 0, when it takes its slot: that is
/// where the daemon finds the name and client of the slot's count.
///
/// A subprogram of its own: `aggregate`'s frame has no room for more values.
#[inline(never)]
fn count_key(slot: u32) {
    let Some(a) = DNS_AGG_SCRATCH.get_ptr(slot) else {
        return;
    };
    // SAFETY: per-CPU scratch value.
    let k = unsafe { &(*a).key };
    let fingerprint = k.fingerprint();
    let epoch = k.name.epoch;
    // The slot from the fingerprint's high half: its lowest bit is always 1.
    let index = (epoch % DNS_AGG_COUNT_BANKS) * DNS_AGG_COUNT_SLOTS
        + ((fingerprint >> 32) as u32 & (DNS_AGG_COUNT_SLOTS - 1));
    let Some(c) = DNS_EVENT_COUNTS.get_ptr_mut(index) else {
        count_client(k);
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array.
    let c = unsafe { &mut *c };
    if c.fingerprint == fingerprint && c.epoch == epoch {
        c.count += 1;
        return;
    }
    if c.count != 0 && c.epoch == epoch {
        // Another key of this interval holds the slot.
        count_client(k);
        return;
    }
    // A free slot (never used, cleared by the daemon, or left from an interval the daemon
    // collected: the bank of interval `e` last held `e - 3`, collected before `e` began).
    c.fingerprint = fingerprint;
    c.epoch = epoch;
    c.count = 1;
    // Another CPU may have put the key there already.
    let _ = DNS_EVENT_CLIENTS.insert(k, &0, u64::from(BPF_NOEXIST));
}

/// Slots of `DNS_EVENT_SEEN` per CPU (a power of two).
pub const SEEN_SLOTS: u32 = 4096;

/// A slot of `DNS_EVENT_SEEN`: a name this CPU met over the budget in an interval.
pub struct Seen {
    /// The name's aggregation key (its hash, reason, verdict, scope and interval).
    name: DnsAggName,
    /// 1 once the name's bytes were put in `DNS_EVENT_NAMES` for its summary.
    named: u32,
    _pad: u32,
}

/// Whether two aggregation keys are equal, compared by words.
#[inline(always)]
fn same_name(a: &DnsAggName, b: &DnsAggName) -> bool {
    let a = (&raw const *a).cast::<u64>();
    let b = (&raw const *b).cast::<u64>();
    let mut i = 0;
    while i < size_of::<DnsAggName>() / 8 {
        // SAFETY: word `i` of two 32-byte keys.
        if unsafe { a.add(i).read_unaligned() != b.add(i).read_unaligned() } {
            return false;
        }
        i += 1;
    }
    true
}

/// Adds one to this CPU's (name, client) count (a per-CPU map: no atomics, and no
/// increments lost between CPUs).
#[inline(always)]
fn count_client(key: &DnsAggClient) {
    if let Some(c) = DNS_EVENT_CLIENTS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of the value.
        unsafe { *c += 1 };
        return;
    }
    // Inserting sets this CPU's slot and zeroes the others. Another CPU may have inserted the
    // key since the lookup; then this CPU's slot is there, still 0.
    if DNS_EVENT_CLIENTS
        .insert(key, &1, u64::from(BPF_NOEXIST))
        .is_err()
        && let Some(c) = DNS_EVENT_CLIENTS.get_ptr_mut(key)
    {
        // SAFETY: as above.
        unsafe { *c += 1 };
    }
}

/// The keyed 64-bit hash of the first `len` bytes of the scratch name of `slot` (the rest of
/// the buffer holds whatever an earlier query left), from two 64-bit lanes. Keyed with the
/// name hashes' secret, so a sender cannot make two names share a count. 0 when a map could
/// not be read (a name whose hash is 0 is then sent in full).
///
/// A global function: the verifier checks it once, for any `len`, so the exits of its loop
/// do not multiply the states of the reporting around it (a plain loop there would), and it
/// costs none of the `bpf_loop` callback calls the hash once took (one per word). It returns
/// the hash rather than writing 128 bits into the scratch: a smaller frame, since the
/// egress hook's deepest call chain leaves it only a few bytes.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn palisade_dns_event_hash(slot: u32, len: u32) -> u64 {
    let Some(key) = DNS_KEY.get(0) else {
        return 0;
    };
    let mut h = [key.k[0], key.k[1]];
    let Some(s) = DNS_SCRATCH.get_ptr(slot) else {
        return 0;
    };
    let len = len.min(256) as usize;
    // SAFETY: a per-CPU scratch value; its name is 256 bytes, 32 words.
    let name = unsafe { (*s).name.as_ptr().cast::<u64>() };
    let mut i = 0;
    while i < 32 && i * 8 < len {
        // SAFETY: word `i < 32` of the 256-byte name.
        let mut w = unsafe { name.add(i).read_unaligned() };
        let left = len - i * 8;
        if left < 8 {
            w &= (1u64 << (left * 8)) - 1;
        }
        let x = (h[0] ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let y = (h[1] ^ w).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        h = [x ^ (x >> 32), y ^ (y >> 29)];
        i += 1;
    }
    let len = len as u64;
    fmix(h[0] ^ len) ^ fmix(h[1] ^ (len << 8)).rotate_left(32)
}

const _: () = assert!(
    core::mem::offset_of!(DnsEvent, client) % 4 == 0
        && core::mem::offset_of!(DnsEvent, comm) % 4 == 0
        && core::mem::offset_of!(DnsEvent, name) % 8 == 0
        && core::mem::align_of::<DnsEvent>() == 8
        && core::mem::offset_of!(DnsAggNameInfo, name) % 8 == 0
        && core::mem::align_of::<DnsAggNameInfo>() == 8
);

/// Stores 16 bytes as four words. The source and the destination are different map values
/// the compiler cannot tell apart, so a plain array copy becomes a byte-by-byte `memmove`
/// call; volatile word stores stay stores. `to` must be 4-aligned (the event's address and
/// command fields are).
#[inline(always)]
fn put16(to: &mut [u8; 16], words: [u32; 4]) {
    let to = to.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < 4 {
        // SAFETY: word `i` of 16 bytes, 4-aligned as the caller guarantees.
        unsafe { core::ptr::write_volatile(to.add(i), words[i]) };
        i += 1;
    }
}

/// Copies the words of a name that hold its first `len` bytes (all 32 words when `len` is
/// 256 or more), in aligned 8-byte stores: `to` must be 8-aligned (the event's and the
/// aggregated name's are). Readers take only the first `len` bytes.
#[inline(always)]
fn copy_name_words(from: &[u8; 256], to: &mut [u8; 256], len: u16) {
    let from = from.as_ptr().cast::<u64>();
    let to = to.as_mut_ptr().cast::<u64>();
    let words = usize::from(len).div_ceil(8);
    let mut i = 0;
    while i < 32 {
        if i >= words {
            break;
        }
        // SAFETY: word `i < 32` of both 256-byte arrays, both 8-aligned.
        unsafe { to.add(i).write(from.add(i).read()) };
        i += 1;
    }
}

/// A `DnsEvent` reserved on the ring and zeroed in place, with its kind, reason and time
/// set; `None` when the ring is full, counted as a lost event. Word stores: a zeroed
/// `DnsEvent` value would be built on the stack first.
#[inline(always)]
pub fn reserve_zeroed(reason: u32) -> Option<RingBufEntry<DnsEvent>> {
    let Some(mut entry) = reserve_event::<DnsEvent>() else {
        bump(&STATS, stats::EVENTS_LOST);
        return None;
    };
    let ev = entry.as_mut_ptr();
    let words = ev.cast::<u64>();
    let mut i = 0;
    while i < size_of::<DnsEvent>() / 8 {
        // SAFETY: inside the reserved record, which is 8-aligned and a multiple of 8 long.
        unsafe { words.add(i).write(0) };
        i += 1;
    }
    // SAFETY: the record is reserved for us and now fully initialised.
    let e = unsafe { &mut *ev };
    e.kind = KIND_DNS;
    e.reason = reason;
    // SAFETY: a helper with no preconditions.
    e.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    Some(entry)
}

/// Emits an event for a packet the egress hook could not inspect (no scratch slot, not
/// parsable): no address, no name, only the reason and the sender. Assembled in the ring
/// buffer itself, so it needs no scratch slot.
#[inline(always)]
pub fn emit_unchecked(
    scope: u8,
    verdict: u8,
    reason: u32,
    generation: u32,
    cgroup_id: u64,
    socket_uid: u32,
) {
    let Some(mut entry) = reserve_zeroed(reason) else {
        return;
    };
    // SAFETY: the record is reserved for us and initialised by `reserve_zeroed`.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.cgroup_id = cgroup_id;
    e.generation = generation;
    e.scope = scope;
    e.verdict = verdict;
    e.list = u16::MAX;
    process_fields(e, true, cgroup_id, socket_uid);
    entry.submit(event_flags());
}
