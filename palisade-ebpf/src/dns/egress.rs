//! DNS on cgroup egress: queries sent by local processes, attributed to the process, user
//! and cgroup that sent them.
//!
//! The hook sees every packet the cgroup sends, so anything that is not a DNS query leaves
//! at once. A blocked query is dropped; the kernel then fails the sender's `sendmsg` with
//! `EPERM`, so resolvers give up at once instead of waiting for a timeout. Fail-open on
//! internal errors; malformed queries follow the scope's `malformed` setting.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_skb_cgroup_id, bpf_skb_load_bytes},
    programs::SkBuffContext,
};
use palisade_common::{
    dns::{
        maps::{
            MODE_OFF, SCOPE_AUDIT, SCOPE_BLOCK_MALFORMED, SCOPE_EGRESS, SCOPE_LOG_ALLOWED, SCOPES,
            STAT_ALLOWED, STAT_AUDITED, STAT_BLOCKED, STAT_QUERIES, STAT_TCP,
        },
        wire::INSPECT_LEN,
    },
    event::{DNS_VERDICT_ALLOW, DNS_VERDICT_AUDIT, DNS_VERDICT_DROP},
    packet::{self, FRAG_LATER, Frame, IPPROTO_TCP, IPPROTO_UDP, Packet},
    reason, stats,
};

use super::{
    inspect::{self, Decision, Request},
    report::{self, Origin},
};
use crate::{
    bytes::SkbBytes,
    maps::{
        CONTROL, DNS_EGRESS_DEPTH, DNS_GLOBAL, DNS_SCOPES, DNS_SCRATCH, EGRESS_MAX_DEPTH,
        SLOT_EGRESS, STATS, bump,
    },
};

/// Parses the packet (it starts at the IP header) into `out`; false for anything but IP.
/// Not inlined: its temporaries get their own stack frame.
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

/// cgroup_skb verdicts.
const ALLOW: i32 = 1;
const DROP: i32 = 0;

#[inline(always)]
pub fn run(ctx: &SkBuffContext) -> i32 {
    let Some(depth) = DNS_EGRESS_DEPTH.get_ptr_mut(0) else {
        bump(&STATS, stats::INTERNAL);
        return ALLOW;
    };
    // SAFETY: per-CPU counter. A nested run (a softirq sending while this CPU's process
    // context is mid-inspection) starts and ends entirely between two of our instructions,
    // so a plain load and store cannot lose an update that matters.
    let d = unsafe { *depth };
    if d >= EGRESS_MAX_DEPTH {
        // Deeper nesting than any send path produces: fail open, counted.
        bump(&STATS, stats::INTERNAL);
        return ALLOW;
    }
    unsafe { *depth = d + 1 };
    let verdict = inspect_egress(ctx, SLOT_EGRESS + d);
    unsafe { *depth = d };
    verdict
}

#[inline(always)]
fn inspect_egress(ctx: &SkBuffContext, slot: u32) -> i32 {
    let Some(control) = CONTROL.get(0) else {
        bump(&STATS, stats::INTERNAL);
        return ALLOW;
    };
    let generation = control.active_gen & 1;
    let (Some(global), Some(cfg)) = (
        DNS_GLOBAL.get(generation),
        DNS_SCOPES.get(generation * SCOPES + u32::from(SCOPE_EGRESS)),
    ) else {
        bump(&STATS, stats::INTERNAL);
        return ALLOW;
    };
    if cfg.mode == MODE_OFF {
        return ALLOW;
    }
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(slot) else {
        bump(&STATS, stats::INTERNAL);
        return ALLOW;
    };
    // SAFETY: this run's own per-CPU scratch slot.
    if !parse_into(ctx, unsafe { &mut (*scratch).packet }) {
        return ALLOW;
    }
    // SAFETY: as above.
    let p = unsafe { &(*scratch).packet };
    if p.frag == FRAG_LATER
        || !(p.proto == IPPROTO_UDP || p.proto == IPPROTO_TCP)
        || !global.is_dns_port(p.dport)
    {
        return ALLOW;
    }
    let tcp = p.proto == IPPROTO_TCP;
    let l4 = usize::from(p.l4_offset);
    let ip_end = l4 + usize::from(p.l4_len);
    let (msg_off, msg_len, whole) = if tcp {
        let Some(h) = packet::Bytes::load::<13>(&SkbBytes(ctx), l4) else {
            return ALLOW;
        };
        let payload = l4 + usize::from(h[12] >> 4) * 4;
        if payload >= ip_end {
            return ALLOW;
        }
        let avail = ip_end - payload;
        let claimed = packet::Bytes::load::<2>(&SkbBytes(ctx), payload)
            .map_or(usize::MAX, |b| usize::from(u16::from_be_bytes(b)));
        (
            payload + 2,
            avail.saturating_sub(2),
            avail >= 2 && claimed == avail - 2,
        )
    } else {
        (l4 + 8, ip_end.saturating_sub(l4 + 8), true)
    };
    report::count(SCOPE_EGRESS, STAT_QUERIES);
    if tcp {
        report::count(SCOPE_EGRESS, STAT_TCP);
    }
    let avail = (ctx.len() as usize)
        .saturating_sub(msg_off)
        .min(msg_len)
        .min(INSPECT_LEN);
    let copied = if avail == 0 {
        0
    } else {
        // `(n - 1) % 512 + 1` keeps n in 1..=512 in a form the verifier can follow.
        let len = ((avail - 1) & (INSPECT_LEN - 1)) + 1;
        // SAFETY: the destination is the per-CPU scratch buffer of INSPECT_LEN bytes.
        let r = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                msg_off as u32,
                (*scratch).msg.as_mut_ptr().cast(),
                len as u32,
            )
        };
        if r == 0 { len } else { 0 }
    };
    let mut d = Decision::malformed(cfg.flags & SCOPE_BLOCK_MALFORMED != 0);
    // A TCP query not whole in this segment is never passed by accident: it is judged as
    // malformed.
    if whole {
        let req = Request {
            slot,
            scope: SCOPE_EGRESS,
            generation,
            msg_len: copied.min(INSPECT_LEN),
            total_len: msg_len,
            whole: true,
        };
        if !inspect::inspect(cfg, &req, &mut d) {
            bump(&STATS, stats::INTERNAL);
            return ALLOW;
        }
    }
    let origin = Origin {
        slot,
        tcp,
        ifindex: 0,
        generation,
        // SAFETY: the context pointer is the program's own skb.
        cgroup_id: unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) },
        task: true,
        socket_uid: ctx.get_socket_uid(),
    };
    if d.reason == reason::PASS {
        report::count(SCOPE_EGRESS, STAT_ALLOWED);
        if cfg.flags & SCOPE_LOG_ALLOWED != 0 {
            report::emit(SCOPE_EGRESS, DNS_VERDICT_ALLOW, &d, &origin);
        }
        return ALLOW;
    }
    if cfg.flags & SCOPE_AUDIT != 0 {
        report::count(SCOPE_EGRESS, STAT_AUDITED);
        report::emit(SCOPE_EGRESS, DNS_VERDICT_AUDIT, &d, &origin);
        return ALLOW;
    }
    report::count(SCOPE_EGRESS, STAT_BLOCKED);
    report::count_reason(d.reason);
    report::emit(SCOPE_EGRESS, DNS_VERDICT_DROP, &d, &origin);
    DROP
}
