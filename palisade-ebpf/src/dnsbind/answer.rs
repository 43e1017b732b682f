//! The answer path (cgroup_skb ingress): every UDP datagram from port 53 delivered to a
//! socket of a cgroup in bind mode, and every TCP segment from port 53 that holds exactly
//! one whole length-prefixed message ([`tcp_message`]), is walked as a DNS answer, and each A/AAAA record of an
//! answer that reads to its end binds its address to the socket's cgroup until the record's
//! TTL plus the grace period has passed.
//!
//! An answer it cannot read (malformed, cut, scratch in use) passes and binds nothing,
//! which is fail closed for the connects that would have needed it. Under a `[dns.egress]`
//! blocklist every name of an answer is checked first ([`super::check`]); an answer with a
//! blocked name, or a chain too long to check, is dropped. Only the first
//! [`ANSWER_BUF`] bytes are walked; records after them are not bound. TCP answers split
//! across segments are not walked (not bound). With resolver pinning on, only answers whose source is a
//! configured resolver are walked; others pass unbound (counted as `answers_unpinned`).
//! With rebinding protection on, an answer holding a private address (any of its A/AAAA
//! records, bound or past the cap) is dropped unless its question is on
//! `rebinding_allow` ([`check::rebinding`]; reason `dns-rebinding`).

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
        self, ANSWER_BUF, AnswerWalk, BIND_ON, BindKey, BindValue, MAX_BOUND_PER_ANSWER,
        MAX_WALK_STEPS, PIN_ON, PIN_RESOLVER, REBIND_REFUSE, STAT_ADDRS_BOUND, STAT_ADDRS_SKIPPED,
        STAT_ANSWERS, STAT_ANSWERS_MALFORMED, STAT_ANSWERS_REBINDING, STAT_ANSWERS_REFUSED,
        STAT_ANSWERS_TCP, STAT_ANSWERS_TCP_UNWALKED, STAT_ANSWERS_UNPINNED, STAT_INTERNAL,
        WALK_DONE, WALK_MORE, WALK_PRIVATE,
    },
    packet::{self, Bytes as _, FRAG_NONE, Frame, IPPROTO_TCP, IPPROTO_UDP, Packet},
    reason, stats,
};

use super::{add, check, count};

use crate::{
    atomic,
    bytes::SkbBytes,
    maps::{BIND_ADDRS, BIND_BUSY, BIND_CONFIG, BIND_PIN, BIND_SCRATCH, REASON_STATS, STATS, bump},
};

/// The walker's per-CPU working space.
#[repr(C)]
pub struct Scratch {
    pub msg: [u8; ANSWER_BUF],
    pub walk: AnswerWalk,
    pub packet: Packet,
    pub expand: super::check::Expand,
}

/// The port answers come from.
const DNS_PORT: u16 = 53;
/// cgroup_skb verdicts.
const PASS: i32 = 1;
const DROP: i32 = 0;

#[inline(always)]
pub fn run(ctx: &SkBuffContext) -> i32 {
    let Some(cfg) = BIND_CONFIG.get(0) else {
        count(STAT_INTERNAL);
        return PASS;
    };
    if cfg.enabled != BIND_ON {
        return PASS;
    }
    let Some(busy) = BIND_BUSY.get_ptr_mut(0) else {
        count(STAT_INTERNAL);
        return PASS;
    };
    // A run preempted (threaded softirqs) or interrupted on this CPU keeps the scratch; the
    // other binds nothing.
    // SAFETY: an aligned u64 in a map value.
    if !unsafe { atomic::compare_exchange(busy, 0, 1) } {
        count(STAT_INTERNAL);
        return PASS;
    }
    let verdict = walk_packet(
        ctx,
        cfg.grace_ns,
        cfg.pinned == PIN_ON,
        cfg.rebinding == REBIND_REFUSE,
    );
    // SAFETY: as above.
    unsafe { atomic::exchange(busy, 0) };
    verdict
}

/// Parses the packet into the scratch. Not inlined: its temporaries get their own frame.
#[inline(never)]
fn parse_into(ctx: &SkBuffContext, out: &mut Packet) -> bool {
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
    let l4 = usize::from(p.l4_offset);
    // Where the message starts in the packet, and its length.
    let (msg_off, msg_len) = if tcp {
        match tcp_message(ctx, l4, usize::from(p.l4_len)) {
            TcpData::None => return PASS,
            TcpData::Unwalked => {
                count(STAT_ANSWERS_TCP_UNWALKED);
                return PASS;
            }
            TcpData::Message(off, len) => {
                count(STAT_ANSWERS_TCP);
                (off, len)
            }
        }
    } else {
        // The message is what UDP's length says: the socket layer trims what follows it,
        // and refuses a datagram whose length claims more than the IP packet holds.
        let udp_len = match SkbBytes(ctx).load::<2>(l4 + 4) {
            Some(b) => usize::from(u16::from_be_bytes(b)),
            None => 0,
        };
        if udp_len < 8 || udp_len > usize::from(p.l4_len) {
            count(STAT_ANSWERS);
            count(STAT_ANSWERS_MALFORMED);
            return PASS;
        }
        (l4 + 8, udp_len - 8)
    };
    count(STAT_ANSWERS);
    if pinned
        && BIND_PIN
            .get(&aya_ebpf::maps::lpm_trie::Key::new(128, p.src))
            .copied()
            != Some(PIN_RESOLVER)
    {
        count(STAT_ANSWERS_UNPINNED);
        return PASS;
    }
    let avail = (ctx.len() as usize).saturating_sub(msg_off).min(msg_len);
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
    // SAFETY: the context pointer is the program's own skb.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) };
    let mut why = check::names(cgroup_id);
    if why == reason::PASS && rebinding && s.walk.flags & WALK_PRIVATE != 0 {
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
    bind_found(cgroup_id, grace_ns);
    PASS
}

/// What a TCP segment from port 53 carries.
enum TcpData {
    /// No data (a handshake or a bare ACK), or a header that cannot be read: not an answer.
    None,
    /// Data that is not exactly one whole message.
    Unwalked,
    /// One whole DNS message: where it starts (past its 2-byte length) and its length.
    Message(usize, usize),
}

/// DNS over TCP (RFC 1035 4.2.2, RFC 7766): every message is preceded by its length in two
/// bytes. A segment is walked when its data is exactly one such message (as resolvers send
/// an answer that fits in one segment, and as GRO may have put a split one back together);
/// a message split across segments, or several in one, is not walked (not bound: fail
/// closed). Not inlined: its own frame.
#[inline(never)]
fn tcp_message(ctx: &SkBuffContext, l4: usize, l4_len: usize) -> TcpData {
    let Some([off_byte]) = SkbBytes(ctx).load::<1>(l4 + 12) else {
        return TcpData::None;
    };
    let doff = usize::from(off_byte >> 4) * 4;
    if doff < 20 || doff >= l4_len {
        return TcpData::None;
    }
    let data = l4_len - doff;
    let Some(prefix) = SkbBytes(ctx).load::<2>(l4 + doff) else {
        return TcpData::Unwalked;
    };
    if data < 2 || usize::from(u16::from_be_bytes(prefix)) != data - 2 {
        return TcpData::Unwalked;
    }
    TcpData::Message(l4 + doff + 2, data - 2)
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
