//! DNS counters and events.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    generated::bpf_get_current_cgroup_id,
};
use palisade_common::{
    dns::maps::DNS_STATS_PER_SCOPE,
    event::{DnsEvent, KIND_DNS},
    stats,
};

/// Fills the sender's identity into an event.
#[inline(always)]
fn process_fields(ev: &mut DnsEvent, task: bool, cgroup_id: u64, socket_uid: u32) {
    // The socket's owner is always right; the current task is the sender only when the
    // packet is sent from the sender's own context (UDP sendmsg, a TCP write). TCP
    // retransmissions leave from a timer, in whatever task happens to run: the task's cgroup
    // then differs from the socket's, and pid/comm are left at 0 (unknown).
    ev.uid = socket_uid;
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
        ev.pid = 0;
        ev.tid = 0;
        ev.gid = 0;
        ev.comm = [0; 16];
    }
}

use super::inspect::Decision;
use crate::maps::{
    DNS_EVENT_SCRATCH, DNS_SCRATCH, DNS_STATS, EVENTS, REASON_STATS, STATS, bump, event_flags,
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

/// Emits an event for `d` with `verdict`.
#[inline(always)]
pub fn emit(scope: u8, verdict: u8, d: &Decision, o: &Origin) {
    let Some(ev) = DNS_EVENT_SCRATCH.get_ptr_mut(o.slot) else {
        return;
    };
    let Some(s) = DNS_SCRATCH.get_ptr(o.slot) else {
        return;
    };
    // SAFETY: per-CPU scratch values.
    let (ev, s) = unsafe { (&mut *ev, &*s) };
    ev.kind = KIND_DNS;
    ev.reason = d.reason;
    // SAFETY: a helper with no preconditions.
    ev.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    ev.cgroup_id = o.cgroup_id;
    ev.ifindex = o.ifindex;
    ev.generation = o.generation;
    ev.client = s.packet.src;
    ev.client_port = s.packet.sport;
    ev.qtype = d.qtype;
    ev.name_len = d.wire_len;
    ev.family = s.packet.family;
    ev.scope = scope;
    ev.verdict = verdict;
    ev.tcp = u8::from(o.tcp);
    ev.list = d.list;
    process_fields(ev, o.task, o.cgroup_id, o.socket_uid);
    // Word copies: a plain array assignment would stage 256 bytes on the stack.
    let from = s.name.as_ptr().cast::<u64>();
    let to = ev.name.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < 32 {
        // SAFETY: 32 words inside both 256-byte arrays.
        unsafe { to.add(i).write_unaligned(from.add(i).read_unaligned()) };
        i += 1;
    }
    if EVENTS.output::<DnsEvent>(ev, event_flags()).is_err() {
        bump(&STATS, stats::EVENTS_LOST);
    }
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
    let Some(mut entry) = EVENTS.reserve::<DnsEvent>(0) else {
        bump(&STATS, stats::EVENTS_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // Word stores: a zeroed `DnsEvent` value would be built on the stack first.
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
    e.cgroup_id = cgroup_id;
    e.generation = generation;
    e.scope = scope;
    e.verdict = verdict;
    e.list = u16::MAX;
    process_fields(e, true, cgroup_id, socket_uid);
    entry.submit(event_flags());
}
