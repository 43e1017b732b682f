//! The query recorder (cgroup_skb egress on the cgroups in bind mode): every DNS query a
//! socket of the cgroup sends to port 53 (a UDP datagram, or each whole length-prefixed
//! message of a TCP segment, at most `MAX_TCP_MESSAGES`) is recorded as pending in
//! `BIND_QUERIES`: (cgroup, resolver address and port, local port, id, hash of the question,
//! protocol). The answer path ([`super::answer`]) binds only what answers a pending query,
//! and consumes it.
//!
//! A query is recorded when its header and question are in the datagram or segment (a TCP
//! query split after its question is recorded from its first segment). A query that cannot
//! be recorded (a question that does not parse, the CPU's query scratch in use, a map that
//! refuses) is counted as `queries_unrecorded`: its answer binds nothing (fail closed).
//!
//! The recorder never drops: every packet passes.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{bpf_loop, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    },
    programs::SkBuffContext,
};
use palisade_common::{
    dnsbind::{
        DNS_PORT, MAX_QUESTION, MAX_QUESTION_LABELS, MAX_TCP_MESSAGES, QUERY_BUF,
        QUESTION_HASH_START, QueryKey, QueryValue, QuestionStep, STAT_INTERNAL,
        STAT_QUERIES_RECORDED, STAT_QUERIES_UNRECORDED, hash_byte, is_standard_query,
        question_step,
    },
    packet::{Bytes as _, FRAG_NONE, IPPROTO_TCP, IPPROTO_UDP, Packet},
};

use super::count;
use crate::{
    bytes::SkbBytes,
    maps::{BIND_QUERIES, QUERY_BUSY, QUERY_SCRATCH},
};

/// The recorder's per-CPU working space.
#[repr(C)]
pub struct Scratch {
    pub msg: [u8; QUERY_BUF],
    pub packet: Packet,
    /// The question's hash, as far as it goes.
    pub hash: u64,
    /// Bytes of the message in `msg`.
    pub len: u32,
    /// The next label of the question ([`label_step`]).
    pub off: u32,
    /// Where the question ends (past its class); 0 when it cannot be read.
    pub end: u32,
    pub _pad: u32,
}

/// cgroup_skb verdict: pass.
const PASS: i32 = 1;

#[inline(always)]
pub fn run(ctx: &SkBuffContext) -> i32 {
    super::claimed(&QUERY_BUSY, PASS, |_| {
        record_packet(ctx);
        PASS
    })
}

#[inline(never)]
fn record_packet(ctx: &SkBuffContext) {
    let Some(s) = QUERY_SCRATCH.get_ptr_mut(0) else {
        count(STAT_INTERNAL);
        return;
    };
    // SAFETY: this CPU's scratch, claimed above.
    let s = unsafe { &mut *s };
    if !super::answer::parse_into(ctx, &mut s.packet) {
        return;
    }
    let p = &s.packet;
    let tcp = p.proto == IPPROTO_TCP;
    if (p.proto != IPPROTO_UDP && !tcp) || p.dport != DNS_PORT || p.frag != FRAG_NONE {
        return;
    }
    let l4 = usize::from(p.l4_offset);
    let l4_len = usize::from(p.l4_len);
    if !tcp {
        let udp_len = match SkbBytes(ctx).load::<2>(l4 + 4) {
            Some(b) => usize::from(u16::from_be_bytes(b)),
            None => 0,
        };
        if udp_len >= 8 + 12 && udp_len <= l4_len {
            record_message(ctx, l4 + 8, udp_len - 8);
        }
        return;
    }
    let Some([off_byte]) = SkbBytes(ctx).load::<1>(l4 + 12) else {
        return;
    };
    let doff = usize::from(off_byte >> 4) * 4;
    if doff < 20 || doff >= l4_len {
        return;
    }
    let end = l4 + l4_len;
    let mut pos = l4 + doff;
    let mut i = 0;
    while i < MAX_TCP_MESSAGES {
        let Some(prefix) = SkbBytes(ctx).load::<2>(pos) else {
            break;
        };
        let len = usize::from(u16::from_be_bytes(prefix));
        let start = pos + 2;
        if start >= end {
            break;
        }
        // What of the message this segment holds: a split query is recorded from its first
        // segment when its question is there.
        let avail = len.min(end - start);
        if avail >= 12 {
            record_message(ctx, start, avail);
        }
        pos = start + len;
        if pos >= end {
            break;
        }
        i += 1;
    }
}

/// Records the query whose first `avail` bytes start at `off` in the packet.
#[inline(never)]
fn record_message(ctx: &SkBuffContext, off: usize, avail: usize) {
    let Some(s) = QUERY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch, claimed by the caller.
    let s = unsafe { &mut *s };
    let avail = avail.min((ctx.len() as usize).saturating_sub(off));
    if avail < 12 {
        return;
    }
    let copied = avail.min(QUERY_BUF);
    // `(n - 1) % QUERY_BUF + 1` keeps n in 1..=QUERY_BUF in a form the verifier follows.
    let n = ((copied - 1) & (QUERY_BUF - 1)) + 1;
    // SAFETY: the destination is the scratch's buffer of QUERY_BUF bytes.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            off as u32,
            s.msg.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if r != 0 {
        count(STAT_INTERNAL);
        return;
    }
    // Answers (QR set) sent to port 53 are not queries: not recorded, not counted.
    if s.msg[2] & 0x80 != 0 {
        return;
    }
    if !is_standard_query(&s.msg, n) {
        count(STAT_QUERIES_UNRECORDED);
        return;
    }
    // The question's end, one label per step, then its hash, one byte per step (both in
    // `bpf_loop`: the verifier checks each body once).
    s.len = n as u32;
    s.off = 12;
    s.end = 0;
    s.hash = QUESTION_HASH_START;
    // SAFETY: the callbacks' signatures are the ones bpf_loop expects; they find their
    // state in the scratch.
    unsafe {
        bpf_loop(
            MAX_QUESTION_LABELS,
            label_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let q_len = (s.end as usize).saturating_sub(12);
    if q_len == 0 || q_len > MAX_QUESTION {
        count(STAT_QUERIES_UNRECORDED);
        return;
    }
    // SAFETY: as above.
    unsafe {
        bpf_loop(
            q_len as u32,
            hash_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let p = &s.packet;
    let key = QueryKey {
        // SAFETY: the context pointer is the program's own skb.
        cgroup_id: unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) },
        question: s.hash,
        resolver: p.dst,
        resolver_port: p.dport,
        local_port: p.sport,
        id: u16::from_be_bytes([s.msg[0], s.msg[1]]),
        proto: p.proto,
        _pad: 0,
    };
    // SAFETY: a helper with no preconditions.
    let sent_ns = unsafe { bpf_ktime_get_boot_ns() };
    if BIND_QUERIES
        .insert(&key, &QueryValue { sent_ns }, 0)
        .is_ok()
    {
        count(STAT_QUERIES_RECORDED);
    } else {
        count(STAT_QUERIES_UNRECORDED);
    }
}

/// One label of the question (`bpf_loop` callback): 0 to go on, 1 to stop.
extern "C" fn label_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = QUERY_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch, claimed by the program's run.
    let s = unsafe { &mut *s };
    match question_step(&s.msg, s.off as usize, s.len as usize) {
        QuestionStep::Next(n) => {
            s.off = n as u32;
            0
        }
        QuestionStep::End(e) => {
            s.end = e as u32;
            1
        }
        QuestionStep::Bad => 1,
    }
}

/// One byte of the question's hash (`bpf_loop` callback; `index` counts from 0).
extern "C" fn hash_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = QUERY_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch, claimed by the program's run.
    let s = unsafe { &mut *s };
    let b = s.msg[(12 + index as usize) & (QUERY_BUF - 1)];
    s.hash = hash_byte(s.hash, b);
    0
}
