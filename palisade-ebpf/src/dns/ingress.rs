//! DNS on XDP ingress, for resolvers and gateways. Reached by tail call from the firewall
//! for packets the firewall passed whose destination port is a DNS port.
//!
//! Fail-open on internal errors (the firewall already allowed the packet); malformed
//! queries follow the scope's `malformed` setting. A fragmented query is malformed: it is
//! not reassembled (a question fits any MTU, so only evasion fragments one), and dropping
//! its first fragment is enough for the datagram never to be whole.
//!
//! DNS over TCP is judged as the resolver reads the stream (`stream`): every message of a
//! segment, and only segments that start where Palisade knows the stream's boundaries.
//!
//! A blocked query is answered only when the answer goes back to one host that has
//! answers left in its budget: never to or from a broadcast, multicast or unspecified
//! address (reason `dns-group-address`), and at most `[dns] answer_rate` answers a second
//! per client prefix (reason `dns-answer-budget`); otherwise it is dropped.
//!
//! A query the policy passed may be answered from the response cache (`cache`), under the
//! same two rules; when it is not, it goes on to the resolver.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_xdp_load_bytes},
    programs::XdpContext,
};
use palisade_common::{
    dns::{
        maps::{
            ACTION_DROP, ACTION_REFUSED, ACTION_SINKHOLE, DnsGlobal, MODE_OFF, SCOPE_AUDIT,
            SCOPE_BLOCK_MALFORMED, SCOPE_INGRESS, SCOPE_LOG_ALLOWED, SCOPES, STAT_ALLOWED,
            STAT_AUDITED, STAT_BLOCKED, STAT_NXDOMAIN_SENT, STAT_QUERIES, STAT_REFUSED_SENT,
            STAT_SINKHOLE_SENT,
        },
        wire::INSPECT_LEN,
    },
    event::{
        DNS_VERDICT_ALLOW, DNS_VERDICT_AUDIT, DNS_VERDICT_DROP, DNS_VERDICT_NXDOMAIN,
        DNS_VERDICT_REFUSED, DNS_VERDICT_SINKHOLE,
    },
    firewall::rate_conforms,
    packet::{
        Bytes as _, FAMILY_V4, FRAG_LATER, FRAG_NONE, IPPROTO_TCP, IPPROTO_UDP, MAX_L4_OFFSET,
        Packet, cut_to_prefix, is_group_or_unspecified, rate_prefix_bits,
    },
    reason,
};

use super::{
    answer,
    cache::{self, ACTION_CACHE},
    inspect::{self, Decision, Request},
    report::{self, Origin},
    stream::{self, Judged},
};
use crate::{
    bytes::XdpFrame,
    maps::{CONTROL, DNS_ANSWERS, DNS_GLOBAL, DNS_SCOPES, DNS_SCRATCH, SLOT_XDP},
    verdict,
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(control) = CONTROL.get(0) else {
        return verdict::internal_error();
    };
    let generation = control.active_gen & 1;
    let (Some(global), Some(cfg)) = (
        DNS_GLOBAL.get(generation),
        DNS_SCOPES.get(generation * SCOPES + u32::from(SCOPE_INGRESS)),
    ) else {
        return verdict::internal_error();
    };
    if cfg.mode == MODE_OFF {
        return verdict::pass();
    }
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(SLOT_XDP) else {
        return verdict::internal_error();
    };
    // The firewall left the parsed packet in the per-CPU scratch just before the tail call
    // (same CPU, no preemption in between), which also keeps this frame small for the
    // callees' stack.
    // SAFETY: per-CPU scratch, used by one program at a time on this CPU.
    let p = unsafe { &(*scratch).packet };
    if p.frag == FRAG_LATER
        || !(p.proto == IPPROTO_UDP || p.proto == IPPROTO_TCP)
        || !global.is_dns_port(p.dport)
    {
        return verdict::pass();
    }
    let tcp = p.proto == IPPROTO_TCP;
    let bits = rate_prefix_bits(
        p.family == FAMILY_V4,
        global.rate_prefix_v4,
        global.rate_prefix_v6,
    );
    // One bucket per client prefix (a client owning an IPv6 /64 must not get a fresh bucket
    // for each address in it), cut in place: this frame has no stack to spare.
    // SAFETY: as above.
    unsafe {
        (*scratch).rate_key = (*scratch).packet.src;
        cut_to_prefix(&mut (*scratch).rate_key, bits);
    }
    let mut d = Decision::malformed(cfg.flags & SCOPE_BLOCK_MALFORMED != 0);
    if tcp {
        match judge_tcp(ctx, generation, cfg.flags & SCOPE_AUDIT != 0, &mut d) {
            // No payload, or a header the firewall parsed but the payload's offset cannot
            // be read from: nothing to inspect.
            Judged::Empty | Judged::Unreadable => return verdict::pass(),
            Judged::Internal => return verdict::internal_error(),
            Judged::Judged => {}
        }
    } else {
        let (msg_off, msg_len, whole) = locate_udp(ctx, p);
        report::count(SCOPE_INGRESS, STAT_QUERIES);
        if !copy_message(ctx, msg_off, msg_len) {
            return verdict::internal_error();
        }
        // A query not whole in this packet (a first fragment, a UDP length the packet does
        // not hold) is never passed by accident: it is judged as malformed.
        if !decide(generation, msg_len, whole && p.frag == FRAG_NONE, &mut d) {
            return verdict::internal_error();
        }
    }
    let origin = Origin {
        slot: SLOT_XDP,
        tcp,
        ifindex: ctx.ingress_ifindex() as u32,
        generation,
        cgroup_id: 0,
        task: false,
        socket_uid: 0,
    };
    if d.reason == reason::PASS {
        report::count(SCOPE_INGRESS, STAT_ALLOWED);
        // A name of an `[intel]` alert or tag feed is reported whatever `log_allowed`.
        if cfg.flags & SCOPE_LOG_ALLOWED != 0 || inspect::intel_flags(origin.slot, &d) != 0 {
            report::emit(SCOPE_INGRESS, DNS_VERDICT_ALLOW, &d, &origin);
        }
        // The response cache, for what the policy passed: a fresh answer is sent back from
        // here under the same rules as a blocked query's (never to a group address, within
        // the client's answer budget); otherwise the query goes on to the resolver.
        if !tcp && cache::lookup(generation, d.wire_len, d.in_message, d.qtype) {
            let ok = !group_addressed(ctx, p)
                && answer_budget_ok(global, p)
                && answer::rewrite(ctx, p, &d, ACTION_CACHE, global);
            cache::served_count(ok);
            if ok {
                return verdict::tx();
            }
        }
        return verdict::pass();
    }
    if cfg.flags & SCOPE_AUDIT != 0 {
        report::count(SCOPE_INGRESS, STAT_AUDITED);
        report::emit(SCOPE_INGRESS, DNS_VERDICT_AUDIT, &d, &origin);
        return verdict::pass();
    }
    report::count(SCOPE_INGRESS, STAT_BLOCKED);
    // Rate-limited and malformed queries are dropped: answering them would amplify.
    let mut reply = cfg.action != ACTION_DROP
        && !tcp
        && d.reason != reason::DNS_RATE
        && d.reason != reason::DNS_MALFORMED;
    if reply {
        if group_addressed(ctx, p) {
            d.reason = reason::DNS_GROUP_ADDRESS;
            reply = false;
        } else if !answer_budget_ok(global, p) {
            d.reason = reason::DNS_ANSWER_BUDGET;
            reply = false;
        }
    }
    report::count_reason(d.reason);
    if reply && answer::rewrite(ctx, p, &d, cfg.action, global) {
        let (stat, kind) = match cfg.action {
            ACTION_SINKHOLE => (STAT_SINKHOLE_SENT, DNS_VERDICT_SINKHOLE),
            ACTION_REFUSED => (STAT_REFUSED_SENT, DNS_VERDICT_REFUSED),
            _ => (STAT_NXDOMAIN_SENT, DNS_VERDICT_NXDOMAIN),
        };
        report::count(SCOPE_INGRESS, stat);
        report::emit(SCOPE_INGRESS, kind, &d, &origin);
        return verdict::tx();
    }
    report::emit(SCOPE_INGRESS, DNS_VERDICT_DROP, &d, &origin);
    verdict::drop_counted()
}

/// Runs the inspector. Not inlined: the request stays out of the hook's frame, on which the
/// answer rewrite's large frame is stacked.
#[inline(never)]
fn decide(generation: u32, msg_len: usize, whole: bool, d: &mut Decision) -> bool {
    let req = Request {
        slot: SLOT_XDP,
        scope: SCOPE_INGRESS,
        generation,
        msg_len: msg_len.min(INSPECT_LEN),
        total_len: msg_len,
        whole,
    };
    inspect::inspect(&req, d)
}

/// Judges a TCP segment (see [`stream::judge`]). Not inlined: the segment's layout stays out
/// of the hook's frame, on which the answer rewrite's large frame is stacked.
#[inline(never)]
fn judge_tcp(ctx: &XdpContext, generation: u32, audit: bool, d: &mut Decision) -> Judged {
    let hook = stream::Hook {
        slot: SLOT_XDP,
        scope: SCOPE_INGRESS,
        generation,
        audit,
    };
    let frame_len = ctx.data_end() - ctx.data();
    stream::judge(&XdpFrame::of(ctx), frame_len, &hook, d, |off, len| {
        copy_message(ctx, off, len).then_some(len.min(INSPECT_LEN))
    })
}

/// Offset and length of the DNS message in a UDP datagram, and whether the whole message is
/// there.
#[inline(always)]
fn locate_udp(ctx: &XdpContext, p: &Packet) -> (usize, usize, bool) {
    let frame_len = ctx.data_end() - ctx.data();
    let l4 = usize::from(p.l4_offset);
    let ip_end = (l4 + usize::from(p.l4_len)).min(frame_len);
    let off = l4 + 8;
    let avail = ip_end.saturating_sub(off);
    // The receiver sees the UDP length's worth of message: that is what is inspected.
    // A length the packet does not hold (a first fragment, a lie) is not whole.
    // Read in place (not through the helper, a call) at an offset the verifier sees bounded.
    if l4 > MAX_L4_OFFSET {
        return (off, avail, false);
    }
    let Some(udp) = XdpFrame::of(ctx).load::<8>(l4) else {
        return (off, avail, false);
    };
    let claimed = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if claimed < 8 || claimed - 8 > avail {
        return (off, avail, false);
    }
    (off, claimed - 8, true)
}

/// Messages of up to this many words are copied without the helper.
const SHORT_WORDS: usize = 16;
const _: () = assert!(8 * SHORT_WORDS <= INSPECT_LEN);

/// Copies up to `INSPECT_LEN` bytes of the message into the scratch.
#[inline(always)]
fn copy_message(ctx: &XdpContext, off: usize, len: usize) -> bool {
    let Some(s) = DNS_SCRATCH.get_ptr_mut(SLOT_XDP) else {
        return false;
    };
    if len == 0 {
        return true;
    }
    // Most queries are short: copied by words straight from the frame.
    // SAFETY: the scratch buffer holds INSPECT_LEN bytes, 8-aligned.
    if XdpFrame::of(ctx)
        .copy_words::<SHORT_WORDS>(off, len, unsafe { (*s).msg.as_mut_ptr().cast() })
    {
        return true;
    }
    // `(n - 1) % 512 + 1` keeps n in 1..=512 in a form the verifier can follow.
    let len = ((len.min(INSPECT_LEN) - 1) & (INSPECT_LEN - 1)) + 1;
    // SAFETY: the destination is the per-CPU scratch buffer of INSPECT_LEN bytes and `len`
    // is in 1..=INSPECT_LEN; the helper checks the packet range itself.
    let r = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx.cast(),
            off as u32,
            (*s).msg.as_mut_ptr().cast(),
            len as u32,
        )
    };
    r == 0
}

/// Whether the frame comes from or goes to a group (broadcast or multicast) MAC or IP
/// address, or comes from the unspecified IP address: such a query is never answered.
/// Not inlined (nor is the budget): their locals stay out of the hook's frame, which the
/// inspector's frame is stacked on.
#[inline(never)]
fn group_addressed(ctx: &XdpContext, p: &Packet) -> bool {
    // The I/G bit of either MAC address; an unreadable header is not answered either.
    let Some(eth) = XdpFrame::of(ctx).load::<12>(0) else {
        return true;
    };
    eth[0] & 1 != 0
        || eth[6] & 1 != 0
        || is_group_or_unspecified(p.family, &p.dst)
        || is_group_or_unspecified(p.family, &p.src)
}

/// Takes one answer from the client prefix's budget; false when it has none left.
#[inline(never)]
fn answer_budget_ok(global: &DnsGlobal, p: &Packet) -> bool {
    if global.answer_interval_ns == 0 {
        return true;
    }
    let key = global.answer_key(&p.src, p.family == FAMILY_V4);
    // SAFETY: a helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(tat) = DNS_ANSWERS.get_ptr_mut(&key) {
        // SAFETY: pointer from a successful lookup, into the map value.
        match rate_conforms(
            unsafe { *tat },
            now,
            global.answer_interval_ns,
            global.answer_tolerance_ns,
        ) {
            Some(next) => {
                unsafe { *tat = next };
                true
            }
            None => false,
        }
    } else {
        let _ = DNS_ANSWERS.insert(&key, &(now + global.answer_interval_ns), 0);
        true
    }
}
