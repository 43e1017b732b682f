//! The XDP firewall: parse, pick the live policy generation, classify, act.

pub mod action;
pub mod classify;
mod ratelimit;
pub mod redirect;
mod steer;

use aya_ebpf::programs::XdpContext;
use palisade_common::{
    conntrack::STATE_OVER_LIMIT,
    dns::maps::{MODE_OFF, SCOPE_INGRESS, SCOPES},
    firewall::{
        ACTION_ALLOW, ACTION_DROP, ACTION_RATE_LIMIT, DEFAULT_SLOT, FRAGMENTS_DROP,
        POLICY_CT_TRACK, POLICY_LOG_DEFAULT, POLICY_LOG_FRAGMENTS, POLICY_LOG_MALFORMED,
        POLICY_SHIELD, PolicyHeader, RULE_LOG, read_link, rule_stats_slot,
    },
    packet::{self, FRAG_LATER, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_RST, TCP_SYN},
    reason, stats,
};

use crate::{
    bytes::XdpFrame,
    ct, lb,
    maps::{
        CONTROL, DNS_GLOBAL, DNS_SCOPES, DNS_SCRATCH, FW_DEFAULT_STATS, FW_HEADER, FW_RULE_META,
        FW_RULE_STATS, SLOT_XDP, STATS, TAIL_CT, TAIL_DNS, TAIL_LB, TAIL_SYNCOOKIE, XDP_TAILS,
        bump,
    },
    shield,
    verdict::{self, Decision, NO_RULE},
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    bump(&STATS, stats::PACKETS);
    let Some(control) = CONTROL.get(0) else {
        return verdict::internal_error();
    };
    let generation = control.active_gen & 1;
    let Some(header) = FW_HEADER.get(generation) else {
        return verdict::internal_error();
    };
    // The packet is parsed straight into the per-CPU handoff slot, where the search, the
    // tracker and the DNS stage read it: no copy of it lives on this frame.
    let Some(s) = DNS_SCRATCH.get_ptr_mut(SLOT_XDP) else {
        return verdict::internal_error();
    };
    // SAFETY: per-CPU slot, used by one XDP stage at a time on this CPU.
    let p = unsafe { &mut (*s).packet };
    match parse_into(ctx, p) {
        PARSED => {
            if header.link != 0 {
                // Some rule has a link condition: the search reads the frame's link layer
                // from the slot. A policy without one never reads it.
                // SAFETY: the same per-CPU slot.
                unsafe {
                    (*s).link = read_link(&XdpFrame::of(ctx)).unwrap_or_default();
                    (*s).link.ifindex = ctx.ingress_ifindex() as u32;
                }
            }
        }
        NOT_IP => {
            bump(&STATS, stats::NOT_IP);
            return verdict::pass();
        }
        reason => {
            let log = header.flags & POLICY_LOG_MALFORMED != 0;
            return drop_before_rules(ctx, None, reason, generation, log);
        }
    }
    if p.frag == FRAG_LATER {
        bump(&STATS, stats::FRAGMENTS);
        if header.fragments == FRAGMENTS_DROP {
            let log = header.flags & POLICY_LOG_FRAGMENTS != 0;
            return drop_before_rules(ctx, Some(p), reason::FRAGMENT, generation, log);
        }
    }
    let listed = crate::intel::check_ingress(ctx, p, palisade_common::intel::DIR_INGRESS);
    if listed != 0 {
        // The source is an indicator of a feed that drops (`[intel]`); the match was
        // reported with its feed already.
        return drop_before_rules(ctx, Some(p), listed, generation, false);
    }
    let refused = crate::tls::refused_at_xdp(generation, p);
    if refused != 0 {
        // A flow the TLS gate's verdict refused: dropped here, before anything else looks
        // at it (its resets and new SYNs go on to the gate in TC).
        return drop_before_rules(ctx, Some(p), refused, generation, false);
    }
    let cut = crate::ids::dropped_at_xdp(p);
    if cut != 0 {
        // A flow an IDS `drop` rule matched (`[ids]`): dropped here, before anything else
        // looks at it.
        return drop_before_rules(ctx, Some(p), cut, generation, false);
    }
    let rogue = crate::dhcp::at_xdp(ctx, generation, p);
    if rogue != 0 {
        // A DHCP server or router not on `[dhcp]`'s trusted list, under "block": dropped
        // before any socket (a DHCP client's packet socket) sees it.
        return drop_before_rules(ctx, Some(p), rogue, generation, false);
    }
    if header.flags & POLICY_CT_TRACK != 0 {
        // The tracker is a stage of its own (its code would not fit this program's stack):
        // it reads the packet from the handoff slot and goes on to `run_rules`.
        // SAFETY: a tail call with this program's own context.
        unsafe { XDP_TAILS.tail_call(ctx, TAIL_CT) };
        // Only reached when the tracker is missing: the packet goes on untracked.
        bump(&STATS, stats::INTERNAL);
    }
    decide(ctx, generation, header, p, false)
}

/// Drops a packet before the rules look at it (malformed, a fragment, or condemned by an
/// earlier stage): no rule decided, `reason` says who did.
#[inline(always)]
fn drop_before_rules(
    ctx: &XdpContext,
    p: Option<&packet::Packet>,
    reason: u32,
    generation: u32,
    log: bool,
) -> u32 {
    let d = Decision {
        reason,
        rule: NO_RULE,
        generation,
        log,
    };
    verdict::drop(ctx, p, &d)
}

/// Reports a packet that a logging rule let through and acted on: an event with reason
/// `rule` and action `XDP_PASS` (`mark`, `mirror`), or `XDP_REDIRECT` when `redirected`.
#[inline(always)]
fn note_action(ctx: &XdpContext, p: &packet::Packet, rule: u32, generation: u32, redirected: bool) {
    let d = Decision {
        reason: reason::RULE,
        rule,
        generation,
        log: true,
    };
    if redirected {
        verdict::note_redirect(ctx, Some(p), &d);
    } else {
        verdict::note_pass(ctx, Some(p), &d);
    }
}

/// What [`parse_into`] returns for an IP packet.
const PARSED: u32 = u32::MAX;
/// What [`parse_into`] returns for a frame that is not IP.
const NOT_IP: u32 = u32::MAX - 1;

/// Parses the frame into `out`, in place: [`PARSED`], [`NOT_IP`], or the reason a malformed
/// frame is dropped for. Inlined: written in place, the parser keeps few temporaries, and a
/// call of its own (frame, saved registers, return) cost about 2.5 ns a packet (the bench's
/// policy without rules, measured).
#[inline(always)]
fn parse_into(ctx: &XdpContext, out: &mut packet::Packet) -> u32 {
    match packet::parse_into(&XdpFrame::of(ctx), out) {
        Ok(true) => PARSED,
        Ok(false) => NOT_IP,
        Err(reason) => reason,
    }
}

/// The rules stage after the tracker: entered by tail call from `ct::ingress` with the
/// classified packet in the handoff slot.
#[inline(always)]
pub fn run_rules(ctx: &XdpContext) -> u32 {
    let Some(control) = CONTROL.get(0) else {
        return verdict::internal_error();
    };
    let generation = control.active_gen & 1;
    let Some(header) = FW_HEADER.get(generation) else {
        return verdict::internal_error();
    };
    let Some(s) = DNS_SCRATCH.get_ptr(SLOT_XDP) else {
        return verdict::internal_error();
    };
    // SAFETY: per-CPU slot written by the earlier stages of this packet.
    let p = unsafe { &(*s).packet };
    if p.shield != 0 {
        // Condemned by a shield in the tracker's stage.
        return drop_before_rules(ctx, Some(p), u32::from(p.shield), generation, true);
    }
    if p.ct_state & STATE_OVER_LIMIT != 0 {
        return drop_before_rules(ctx, Some(p), reason::CT_LIMIT, generation, true);
    }
    decide(ctx, generation, header, p, true)
}

/// Classifies an IP packet against the rules and acts on the verdict.
#[inline(always)]
fn decide(
    ctx: &XdpContext,
    generation: u32,
    header: &PolicyHeader,
    p: &packet::Packet,
    track: bool,
) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let Some(rule) = classify::first_match(generation, header, p) else {
        count(FW_DEFAULT_STATS.get_ptr_mut(generation), len);
        if header.default_action == ACTION_ALLOW {
            return allowed(ctx, generation, p, track, header.flags & POLICY_SHIELD != 0);
        }
        let d = Decision {
            reason: reason::DEFAULT,
            rule: DEFAULT_SLOT,
            generation,
            log: header.flags & POLICY_LOG_DEFAULT != 0,
        };
        return verdict::drop(ctx, Some(p), &d);
    };
    // SAFETY: a helper with no preconditions.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    count(
        FW_RULE_STATS
            .get(generation)
            .and_then(|t| t.get_ptr_mut(rule_stats_slot(header.rule_stride, cpu, rule))),
        len,
    );
    let Some(meta) = FW_RULE_META.get(generation).and_then(|t| t.get(rule)) else {
        return verdict::internal_error();
    };
    let log = meta.flags & RULE_LOG != 0;
    match meta.action {
        ACTION_DROP => {
            let d = Decision {
                reason: reason::RULE,
                rule,
                generation,
                log,
            };
            verdict::drop(ctx, Some(p), &d)
        }
        ACTION_RATE_LIMIT => {
            if ratelimit::admit(generation, header, meta, p) {
                allowed(ctx, generation, p, track, header.flags & POLICY_SHIELD != 0)
            } else {
                let d = Decision {
                    reason: reason::RATE_LIMIT,
                    rule,
                    generation,
                    log,
                };
                verdict::drop(ctx, Some(p), &d)
            }
        }
        palisade_common::firewall::ACTION_MARK => {
            action::mark(ctx, meta, p);
            if log {
                note_action(ctx, p, rule, generation, false);
            }
            allowed(ctx, generation, p, track, header.flags & POLICY_SHIELD != 0)
        }
        palisade_common::firewall::ACTION_MIRROR => {
            action::mirror(ctx, meta, p);
            if log {
                note_action(ctx, p, rule, generation, false);
            }
            allowed(ctx, generation, p, track, header.flags & POLICY_SHIELD != 0)
        }
        palisade_common::redirect::ACTION_REDIRECT => {
            let outcome = redirect::redirect(ctx, meta, p);
            if outcome == redirect::TOO_BIG {
                let d = Decision {
                    reason: reason::REDIRECT_TOO_BIG,
                    rule,
                    generation,
                    log,
                };
                return verdict::drop(ctx, Some(p), &d);
            }
            if outcome != redirect::SENT {
                return allowed(ctx, generation, p, track, header.flags & POLICY_SHIELD != 0);
            }
            if track {
                ct::commit();
            }
            if log {
                note_action(ctx, p, rule, generation, true);
            }
            aya_ebpf::bindings::xdp_action::XDP_REDIRECT
        }
        palisade_common::steer::ACTION_STEER => {
            if !steer::steer(meta, p) {
                return allowed(ctx, generation, p, track, header.flags & POLICY_SHIELD != 0);
            }
            if track {
                ct::commit();
            }
            if log {
                note_action(ctx, p, rule, generation, true);
            }
            aya_ebpf::bindings::xdp_action::XDP_REDIRECT
        }
        _ => allowed(ctx, generation, p, track, header.flags & POLICY_SHIELD != 0),
    }
}

/// Counts a packet of `len` bytes into a rule's (or the default's) counters of this CPU.
#[inline(always)]
fn count(stats: Option<*mut palisade_common::firewall::RuleStats>, len: u64) {
    if let Some(s) = stats {
        // SAFETY: this CPU's value (a per-CPU map's, or this CPU's run of the rule table):
        // no other writer while this program runs.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
        }
    }
}

/// The firewall lets the packet through: a new flow's entry is inserted (or, for a SYN the
/// SYN shield answers, not), and DNS queries go on to the DNS inspector. `p` is the packet in
/// the XDP handoff slot; `shield` says whether the policy has shields (`POLICY_SHIELD`), so
/// that a policy without them pays nothing for a SYN.
#[inline(always)]
pub fn allowed(
    ctx: &XdpContext,
    generation: u32,
    p: &packet::Packet,
    track: bool,
    shield: bool,
) -> u32 {
    if track {
        if shield
            && p.proto == IPPROTO_TCP
            && p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
            && p.frag != FRAG_LATER
            && shield::answer_with_cookie(generation, p)
        {
            // Answered statelessly: the flow prepared for this SYN is not inserted.
            // SAFETY: a tail call with this program's own context.
            unsafe { XDP_TAILS.tail_call(ctx, TAIL_SYNCOOKIE) };
            // Only reached when the stage is missing: the stack answers.
            bump(&STATS, stats::INTERNAL);
        }
        ct::commit();
    }
    if lb::is_vip(p) {
        // To a service of the load balancer: balanced after the rules allowed it.
        // SAFETY: a tail call with this program's own context.
        unsafe { XDP_TAILS.tail_call(ctx, TAIL_LB) };
        // Only reached when the stage is missing: the stack gets the packet (fail-open).
        bump(&STATS, stats::INTERNAL);
    }
    if p.frag != FRAG_LATER
        && (p.proto == IPPROTO_UDP || p.proto == IPPROTO_TCP)
        && DNS_SCOPES
            .get(generation * SCOPES + u32::from(SCOPE_INGRESS))
            .is_some_and(|c| c.mode != MODE_OFF)
        && DNS_GLOBAL
            .get(generation)
            .is_some_and(|g| g.is_dns_port(p.dport))
    {
        // The parsed packet is in the handoff slot already; the DNS program runs next on
        // this CPU.
        // SAFETY: a tail call with this program's own context.
        unsafe { XDP_TAILS.tail_call(ctx, TAIL_DNS) };
        // Only reached when the slot is empty: DNS inspection is off, fail open.
        bump(&STATS, stats::INTERNAL);
    }
    verdict::pass()
}
