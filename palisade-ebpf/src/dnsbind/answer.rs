//! The answer path (cgroup_skb ingress): every UDP datagram from port 53 delivered to a
//! socket of a cgroup in bind mode, and every length-prefixed message of the TCP segments
//! from port 53 ([`walk_tcp`]: up to `MAX_TCP_MESSAGES` whole messages per segment, and a
//! message split across segments once its last segment has arrived), is walked as a DNS
//! answer. An answer that reads to its end and answers a query the cgroup sent
//! ([`matched`], `BIND_QUERIES`, recorded by [`super::query`]) binds each of its A/AAAA
//! addresses to the socket's cgroup until the record's TTL plus the grace period has
//! passed.
//!
//! An answer it cannot read (malformed, cut, scratch in use) passes and binds nothing,
//! which is fail closed for the connects that would have needed it. A UDP answer that
//! answers no pending query is dropped (`dns-answer-unsolicited`); a TCP one passes, unbound.
//! Under a `[dns.egress]` blocklist every name of an answer is checked first
//! ([`super::check`]); an answer with a blocked name, or a chain too long to check, is
//! dropped. Only the first [`ANSWER_BUF`] bytes are walked; records after them are not
//! bound. With resolver pinning on, only answers whose source is a configured resolver are
//! walked; others pass unbound (counted as `answers_unpinned`). With rebinding protection
//! on, an answer holding a private address (any of its A/AAAA records, bound or past the
//! cap) is dropped unless its question is on `rebinding_allow` ([`check::rebinding`];
//! reason `dns-rebinding`).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{bpf_loop, bpf_probe_read_kernel, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    },
    programs::SkBuffContext,
};
use palisade_common::{
    dns::maps::SCOPE_EGRESS,
    dnsbind::{
        self, ANSWER_BUF, AnswerWalk, BindConfig, BindKey, BindValue, FlowKey,
        MAX_BOUND_PER_ANSWER, MAX_QUESTION, MAX_TCP_MESSAGES, MAX_WALK_STEPS, PIN_ON, PIN_RESOLVER,
        Partial, QUERY_WINDOW_NS, QUESTION_HASH_START, QueryKey, REBIND_REFUSE, STAT_ADDRS_BOUND,
        STAT_ADDRS_SKIPPED, STAT_ANSWERS, STAT_ANSWERS_MALFORMED, STAT_ANSWERS_REBINDING,
        STAT_ANSWERS_REFUSED, STAT_ANSWERS_TCP, STAT_ANSWERS_TCP_PARTIAL,
        STAT_ANSWERS_TCP_UNWALKED, STAT_ANSWERS_UNPINNED, STAT_ANSWERS_UNSOLICITED, STAT_INTERNAL,
        WALK_DONE, WALK_MORE, WALK_PRIVATE, hash_byte,
    },
    event::DNS_VERDICT_DROP,
    packet::{self, Bytes as _, FRAG_NONE, Frame, IPPROTO_TCP, IPPROTO_UDP, Packet},
    reason, stats,
};

use super::{add, check, count};

use crate::{
    bytes::SkbBytes,
    maps::{
        BIND_ADDRS, BIND_BUSY, BIND_PIN, BIND_QUERIES, BIND_SCRATCH, BIND_TCP_PARTIAL,
        REASON_STATS, STATS, bump, event_flags,
    },
};

/// The walker's per-CPU working space.
#[repr(C)]
pub struct Scratch {
    pub msg: [u8; ANSWER_BUF],
    pub walk: AnswerWalk,
    pub packet: Packet,
    pub expand: super::check::Expand,
    /// The receiving socket's cgroup.
    pub cgroup_id: u64,
    /// The grace period past an answer's TTL.
    pub grace_ns: u64,
    /// 1 with rebinding protection on.
    pub rebinding: u32,
    pub _pad: u32,
    /// The question's hash ([`matched`]).
    pub hash: u64,
    /// The pending query the answer was looked up under ([`matched`]).
    pub qkey: QueryKey,
    /// The start of a TCP message split across segments, before it is kept in
    /// `BIND_TCP_PARTIAL`.
    pub partial: Partial,
}

/// The port answers come from.
const DNS_PORT: u16 = 53;
/// cgroup_skb verdicts.
const PASS: i32 = 1;
const DROP: i32 = 0;

#[inline(always)]
pub fn run(ctx: &SkBuffContext) -> i32 {
    super::claimed(&BIND_BUSY, PASS, |cfg| walk_answer(ctx, cfg))
}

/// The answer walk with this CPU's scratch claimed.
#[inline(always)]
fn walk_answer(ctx: &SkBuffContext, cfg: &BindConfig) -> i32 {
    // Read back as pass or drop. The walk ends in a global function whose result the
    // verifier sees as any scalar, while the compiler knows it is 0 or 1 and would fold a
    // plain comparison away: `black_box` keeps the comparison in the program.
    let walked = core::hint::black_box(walk_packet(
        ctx,
        cfg.grace_ns,
        cfg.pinned == PIN_ON,
        cfg.rebinding == REBIND_REFUSE,
    ));
    if walked == DROP { DROP } else { PASS }
}

/// Parses the packet into the scratch. Not inlined: its temporaries get their own frame.
#[inline(never)]
pub(crate) fn parse_into(ctx: &SkBuffContext, out: &mut Packet) -> bool {
    let ethertype = u16::from_be(ctx.skb.protocol() as u16);
    match packet::parse_l3(&SkbBytes(ctx), ethertype) {
        Ok(Frame::Ip(p)) => {
            *out = p;
            true
        }
        _ => false,
    }
}

#[inline(never)]
fn walk_packet(ctx: &SkBuffContext, grace_ns: u64, pinned: bool, rebinding: bool) -> i32 {
    let Some(s) = BIND_SCRATCH.get_ptr_mut(0) else {
        count(STAT_INTERNAL);
        return PASS;
    };
    // SAFETY: this CPU's scratch, claimed above.
    let s = unsafe { &mut *s };
    if !parse_into(ctx, &mut s.packet) {
        return PASS;
    }
    let p = &s.packet;
    let tcp = p.proto == IPPROTO_TCP;
    if (p.proto != IPPROTO_UDP && !tcp) || p.sport != DNS_PORT || p.frag != FRAG_NONE {
        return PASS;
    }
    // SAFETY: the context pointer is the program's own skb.
    s.cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) };
    s.grace_ns = grace_ns;
    s.rebinding = u32::from(rebinding);
    let l4 = usize::from(p.l4_offset);
    if tcp {
        return walk_tcp(ctx, l4, usize::from(p.l4_len), pinned);
    }
    // The message is what UDP's length says: the socket layer trims what follows it, and
    // refuses a datagram whose length claims more than the IP packet holds.
    let udp_len = match SkbBytes(ctx).load::<2>(l4 + 4) {
        Some(b) => usize::from(u16::from_be_bytes(b)),
        None => 0,
    };
    count(STAT_ANSWERS);
    if udp_len < 8 || udp_len > usize::from(p.l4_len) {
        count(STAT_ANSWERS_MALFORMED);
        return PASS;
    }
    if pinned && !from_resolver(&p.src) {
        count(STAT_ANSWERS_UNPINNED);
        return PASS;
    }
    let msg_off = l4 + 8;
    let avail = (ctx.len() as usize)
        .saturating_sub(msg_off)
        .min(udp_len - 8);
    let copied = avail.min(ANSWER_BUF);
    if copied < 12 {
        count(STAT_ANSWERS_MALFORMED);
        return PASS;
    }
    // `(n - 1) % ANSWER_BUF + 1` keeps n in 1..=ANSWER_BUF in a form the verifier follows.
    let n = ((copied - 1) & (ANSWER_BUF - 1)) + 1;
    // SAFETY: the destination is the scratch's buffer of ANSWER_BUF bytes.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            msg_off as u32,
            s.msg.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if r != 0 {
        count(STAT_INTERNAL);
        return PASS;
    }
    // The global function's result is any scalar to the verifier: pass or drop from here.
    if palisade_bind_judge(n as u32, 0) == DROP {
        DROP
    } else {
        PASS
    }
}

/// Whether `src` is a configured resolver (`BIND_PIN`).
#[inline(always)]
fn from_resolver(src: &[u8; 16]) -> bool {
    BIND_PIN
        .get(&aya_ebpf::maps::lpm_trie::Key::new(128, *src))
        .copied()
        == Some(PIN_RESOLVER)
}

/// Walks the message in the scratch (`n` bytes, 12 at least), matches it to a pending
/// query, checks it and binds its addresses; the verdict (`PASS` or `DROP`). `tcp` is 1 for
/// a TCP message (an unsolicited one passes). The receiving socket's cgroup, the grace
/// period and the rebinding setting are in the scratch.
///
/// A global BPF function: the verifier checks it once, on its own, rather than at each of
/// the TCP walk's call sites. Only scalars cross the call.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn palisade_bind_judge(n: u32, tcp: u32) -> i32 {
    let Some(s) = BIND_SCRATCH.get_ptr_mut(0) else {
        return PASS;
    };
    // SAFETY: this CPU's scratch, claimed by the answer program's run.
    let s = unsafe { &mut *s };
    if n < 12 {
        count(STAT_ANSWERS_MALFORMED);
        return PASS;
    }
    // `(n - 1) % ANSWER_BUF + 1` keeps n in 1..=ANSWER_BUF in a form the verifier follows.
    let n = ((n as usize - 1) & (ANSWER_BUF - 1)) + 1;
    // A message longer than the buffer is walked as far as the buffer goes: a record cut
    // there makes the walk malformed, so a long answer binds nothing rather than a part
    // (the walker sees `len` = what was copied).
    dnsbind::begin(&mut s.walk, &s.msg, n);
    // SAFETY: the callback's signature is the one bpf_loop expects; it finds its state in
    // the scratch.
    unsafe {
        bpf_loop(
            MAX_WALK_STEPS + 1,
            walk_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if s.walk.state != WALK_DONE {
        count(STAT_ANSWERS_MALFORMED);
        return PASS;
    }
    let cgroup_id = s.cgroup_id;
    if !matched(cgroup_id, tcp) {
        count(STAT_ANSWERS_UNSOLICITED);
        if tcp != 0 {
            // A TCP answer arrives on a connection the socket made: passed (dropping a
            // segment stalls the stream), bound nothing.
            return PASS;
        }
        bump(&STATS, stats::DROPPED);
        bump(&REASON_STATS, reason::DNS_ANSWER_UNSOLICITED);
        report_unsolicited(cgroup_id);
        return DROP;
    }
    let mut why = check::names(cgroup_id);
    if why == reason::PASS && s.rebinding != 0 && s.walk.flags & WALK_PRIVATE != 0 {
        why = check::rebinding(cgroup_id);
        if why != reason::PASS {
            count(STAT_ANSWERS_REBINDING);
        }
    }
    if why != reason::PASS {
        count(STAT_ANSWERS_REFUSED);
        bump(&STATS, stats::DROPPED);
        bump(&REASON_STATS, why);
        return DROP;
    }
    if tcp != 0 {
        let _ = BIND_QUERIES.remove(&s.qkey);
    }
    bind_found(cgroup_id, s.grace_ns);
    PASS
}

/// Whether the walked answer in the scratch answers a query this cgroup sent and that is
/// still pending (`BIND_QUERIES`, within `QUERY_WINDOW_NS`). A UDP match is consumed here,
/// so a second copy of the answer matches nothing; a TCP one when it binds.
#[inline(never)]
fn matched(cgroup_id: u64, tcp: u32) -> bool {
    let Some(s) = BIND_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch, claimed by the caller.
    let s = unsafe { &mut *s };
    let q_end = s.walk.q_end as usize;
    if q_end <= 12 {
        return false;
    }
    // The question's hash, one byte per `bpf_loop` step.
    s.hash = QUESTION_HASH_START;
    // SAFETY: the callback's signature is the one bpf_loop expects; it finds its state in
    // the scratch.
    unsafe {
        bpf_loop(
            (q_end - 12).min(MAX_QUESTION) as u32,
            hash_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let p = &s.packet;
    let key = QueryKey {
        cgroup_id,
        question: s.hash,
        resolver: p.src,
        resolver_port: p.sport,
        local_port: p.dport,
        id: u16::from_be_bytes([s.msg[0], s.msg[1]]),
        proto: p.proto,
        _pad: 0,
    };
    s.qkey = key;
    // SAFETY: the value is copied out at once.
    let Some(sent_ns) = (unsafe { BIND_QUERIES.get(&key) }).map(|v| v.sent_ns) else {
        return false;
    };
    // A second copy racing on another CPU may find the entry too; only the one that removes
    // it matches. A TCP answer consumes its query only once it binds (the caller): a
    // refused one is refused again when the resolver retransmits it.
    if tcp == 0 && BIND_QUERIES.remove(&key).is_err() {
        return false;
    }
    // SAFETY: a helper with no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    now.wrapping_sub(sent_ns) <= QUERY_WINDOW_NS
}

/// Reports a dropped unsolicited answer: the receiving address and port as `client`, the
/// resolver's address is not carried (the event has no field for it), the cgroup, the
/// question's type.
#[inline(never)]
fn report_unsolicited(cgroup_id: u64) {
    let Some(s) = BIND_SCRATCH.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's scratch, claimed by the caller.
    let s = unsafe { &*s };
    let Some(mut entry) = crate::dns::report::reserve_zeroed(reason::DNS_ANSWER_UNSOLICITED) else {
        return;
    };
    // SAFETY: the record is reserved for us and initialised by `reserve_zeroed`.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.cgroup_id = cgroup_id;
    e.scope = SCOPE_EGRESS;
    e.verdict = DNS_VERDICT_DROP;
    e.list = u16::MAX;
    e.qtype = s.walk.qtype as u16;
    e.family = s.packet.family;
    e.client = s.packet.dst;
    e.client_port = s.packet.dport;
    entry.submit(event_flags());
}

/// DNS over TCP (RFC 1035 4.2.2, RFC 7766): every message is preceded by its length in two
/// bytes. A segment's data is walked message by message from its start: a message split by
/// earlier segments is continued first (`BIND_TCP_PARTIAL`, when this segment is the next in
/// sequence), then up to `MAX_TCP_MESSAGES` whole messages are walked, and a message that
/// does not end in the segment is kept (its first `ANSWER_BUF` bytes) until its last segment
/// arrives. A retransmission of what was seen passes unwalked; a segment out of sequence
/// forgets the kept message (not bound). Messages past the cap, a length prefix split
/// between segments, and a kept message the table refused are not walked
/// (`answers_tcp_unwalked`): not bound, fail closed. Not inlined: its own frame.
#[inline(never)]
fn walk_tcp(ctx: &SkBuffContext, l4: usize, l4_len: usize, pinned: bool) -> i32 {
    let Some([off_byte]) = SkbBytes(ctx).load::<1>(l4 + 12) else {
        return PASS;
    };
    let doff = usize::from(off_byte >> 4) * 4;
    if doff < 20 || doff >= l4_len {
        // No data (a handshake or a bare ACK), or a header that cannot be read.
        return PASS;
    }
    let Some(seq) = SkbBytes(ctx).load::<4>(l4 + 4) else {
        return PASS;
    };
    let seq = u32::from_be_bytes(seq);
    let Some(s) = BIND_SCRATCH.get_ptr_mut(0) else {
        return PASS;
    };
    // SAFETY: this CPU's scratch, claimed by the caller.
    let s = unsafe { &mut *s };
    if pinned && !from_resolver(&s.packet.src) {
        count(STAT_ANSWERS);
        count(STAT_ANSWERS_UNPINNED);
        return PASS;
    }
    let data = l4 + doff;
    let end = (l4 + l4_len).min(ctx.len() as usize);
    if data >= end {
        return PASS;
    }
    let key = FlowKey {
        cgroup_id: s.cgroup_id,
        resolver: s.packet.src,
        local: s.packet.dst,
        resolver_port: s.packet.sport,
        local_port: s.packet.dport,
        _pad: 0,
    };
    let mut pos = data;
    if let Some(st) = BIND_TCP_PARTIAL.get_ptr_mut(&key) {
        // SAFETY: a map value; a concurrent segment of the same flow on another CPU could
        // write it too, which at worst makes the message unreadable (not bound).
        let st = unsafe { &mut *st };
        let len = (end - data) as u32;
        if seq != st.next_seq {
            // Everything before `next_seq` was seen: a retransmission passes. Anything else
            // is out of sequence: the kept message is forgotten.
            if (st.next_seq.wrapping_sub(seq.wrapping_add(len)) as i32) < 0 {
                let _ = BIND_TCP_PARTIAL.remove(&key);
                count(STAT_ANSWERS_TCP_UNWALKED);
            }
            return PASS;
        }
        let need = st.want.wrapping_sub(st.have);
        let take = need.min(len);
        let have = st.have as usize;
        if have < ANSWER_BUF && take > 0 {
            let n = (take as usize).min(ANSWER_BUF - have);
            let n = ((n - 1) & (ANSWER_BUF - 1)) + 1;
            // SAFETY: `have < ANSWER_BUF` and `n <= ANSWER_BUF`: inside the buffer of twice
            // ANSWER_BUF bytes.
            let r = unsafe {
                bpf_skb_load_bytes(
                    ctx.skb.skb.cast(),
                    data as u32,
                    st.buf.as_mut_ptr().add(have & (ANSWER_BUF - 1)).cast(),
                    n as u32,
                )
            };
            if r != 0 {
                let _ = BIND_TCP_PARTIAL.remove(&key);
                count(STAT_INTERNAL);
                return PASS;
            }
        }
        st.have = st.have.wrapping_add(take);
        st.next_seq = st.next_seq.wrapping_add(take);
        if st.have < st.want {
            return PASS;
        }
        // The message is whole: walk what was kept of it.
        let want = st.want as usize;
        // SAFETY: both are map values of at least ANSWER_BUF bytes.
        let r = unsafe {
            bpf_probe_read_kernel(
                s.msg.as_mut_ptr().cast(),
                ANSWER_BUF as u32,
                st.buf.as_ptr().cast(),
            )
        };
        let _ = BIND_TCP_PARTIAL.remove(&key);
        count(STAT_ANSWERS);
        count(STAT_ANSWERS_TCP);
        if r != 0 {
            count(STAT_INTERNAL);
        } else if palisade_bind_judge(want.min(ANSWER_BUF) as u32, 1) == DROP {
            return DROP;
        }
        pos = data + take as usize;
    }
    let mut i = 0;
    while i < MAX_TCP_MESSAGES {
        if pos >= end {
            return PASS;
        }
        // A length prefix split between two segments is not followed.
        let Some(prefix) = SkbBytes(ctx).load::<2>(pos).filter(|_| pos + 2 <= end) else {
            count(STAT_ANSWERS_TCP_UNWALKED);
            return PASS;
        };
        let len = usize::from(u16::from_be_bytes(prefix));
        let start = pos + 2;
        if start + len > end {
            keep_partial(
                ctx,
                &key,
                seq.wrapping_add((end - data) as u32),
                len,
                start,
                end,
            );
            return PASS;
        }
        count(STAT_ANSWERS);
        count(STAT_ANSWERS_TCP);
        if len < 12 {
            count(STAT_ANSWERS_MALFORMED);
        } else {
            let n = len.min(ANSWER_BUF);
            let n = ((n - 1) & (ANSWER_BUF - 1)) + 1;
            // SAFETY: the destination is the scratch's buffer of ANSWER_BUF bytes.
            let r = unsafe {
                bpf_skb_load_bytes(
                    ctx.skb.skb.cast(),
                    start as u32,
                    s.msg.as_mut_ptr().cast(),
                    n as u32,
                )
            };
            if r != 0 {
                count(STAT_INTERNAL);
            } else if palisade_bind_judge(n as u32, 1) == DROP {
                return DROP;
            }
        }
        pos = start + len;
        i += 1;
    }
    if pos < end {
        // Messages past the cap.
        count(STAT_ANSWERS_TCP_UNWALKED);
    }
    PASS
}

/// Keeps the start of a message that does not end in this segment (`avail = end - start`
/// bytes of its `len`) until the segment starting at `next_seq` continues it. Inlined: six
/// arguments are more than a BPF call takes.
#[inline(always)]
fn keep_partial(
    ctx: &SkBuffContext,
    key: &FlowKey,
    next_seq: u32,
    len: usize,
    start: usize,
    end: usize,
) {
    let Some(s) = BIND_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch, claimed by the caller.
    let s = unsafe { &mut *s };
    let avail = end.saturating_sub(start);
    s.partial.next_seq = next_seq;
    s.partial.want = len as u32;
    s.partial.have = avail as u32;
    if avail > 0 {
        let n = avail.min(ANSWER_BUF);
        let n = ((n - 1) & (ANSWER_BUF - 1)) + 1;
        // SAFETY: the destination is the scratch's buffer of 2 * ANSWER_BUF bytes.
        let r = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                start as u32,
                s.partial.buf.as_mut_ptr().cast(),
                n as u32,
            )
        };
        if r != 0 {
            count(STAT_INTERNAL);
            return;
        }
    }
    if BIND_TCP_PARTIAL.insert(key, &s.partial, 0).is_ok() {
        count(STAT_ANSWERS_TCP_PARTIAL);
    } else {
        count(STAT_ANSWERS_TCP_UNWALKED);
    }
}

/// One byte of the question's hash (`bpf_loop` callback; `index` counts from 0).
extern "C" fn hash_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = BIND_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch, claimed by the answer program's run.
    let s = unsafe { &mut *s };
    let b = s.msg[(12 + index as usize) & (ANSWER_BUF - 1)];
    s.hash = hash_byte(s.hash, b);
    0
}

/// One step of the walk (`bpf_loop` callback): 0 to go on, 1 to stop.
#[inline(never)]
extern "C" fn walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = BIND_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch, claimed by the caller.
    let s = unsafe { &mut *s };
    i64::from(dnsbind::step(&mut s.walk, &s.msg) != WALK_MORE)
}

/// Writes a binding for every address the walk found.
#[inline(never)]
fn bind_found(cgroup_id: u64, grace_ns: u64) {
    let Some(s) = BIND_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch, claimed by the caller.
    let w = unsafe { &(*s).walk };
    // SAFETY: a helper with no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let mut i = 0;
    while i < MAX_BOUND_PER_ANSWER {
        if i >= w.found_len as usize {
            break;
        }
        let f = &w.found[i];
        let key = BindKey {
            cgroup_id,
            addr: f.addr,
        };
        let expires_ns = now
            .wrapping_add(u64::from(f.ttl).wrapping_mul(1_000_000_000))
            .wrapping_add(grace_ns);
        // A shorter TTL in a later answer does not cut an earlier, longer binding short.
        // SAFETY: the value is only read.
        let keep = unsafe { BIND_ADDRS.get(&key) }.is_some_and(|v| v.expires_ns >= expires_ns);
        if keep
            || BIND_ADDRS
                .insert(&key, &BindValue { expires_ns }, 0)
                .is_ok()
        {
            count(STAT_ADDRS_BOUND);
        } else {
            count(STAT_ADDRS_SKIPPED);
        }
        i += 1;
    }
    if w.skipped != 0 {
        add(STAT_ADDRS_SKIPPED, u64::from(w.skipped));
    }
}
