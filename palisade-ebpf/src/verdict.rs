//! The one exit path of the XDP firewall: every verdict goes through here so that every drop
//! is counted under its reason and, when asked, reported as an event.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, programs::XdpContext};
use palisade_common::{
    event::{FirewallEvent, KIND_FIREWALL},
    packet::Packet,
    reason, stats,
};

use crate::maps::{EVENTS, REASON_STATS, STATS, bump, event_flags};

/// Who decided, for counters and events.
pub struct Decision {
    pub reason: u32,
    pub rule: u32,
    pub generation: u32,
    pub log: bool,
}

#[inline(always)]
pub fn pass() -> u32 {
    bump(&STATS, stats::PASSED);
    xdp_action::XDP_PASS
}

/// Fail-open exit for failures of Palisade itself (never of the packet).
#[inline(always)]
pub fn internal_error() -> u32 {
    bump(&STATS, stats::INTERNAL);
    pass()
}

/// The packet leaves by the interface it came in on (an answer Palisade wrote).
#[inline(always)]
pub fn tx() -> u32 {
    bump(&STATS, stats::ANSWERED);
    xdp_action::XDP_TX
}

/// Drop whose reason the caller has already counted.
#[inline(always)]
pub fn drop_counted() -> u32 {
    bump(&STATS, stats::DROPPED);
    xdp_action::XDP_DROP
}

#[inline(always)]
pub fn drop(ctx: &XdpContext, p: Option<&Packet>, d: &Decision) -> u32 {
    bump(&STATS, stats::DROPPED);
    bump(&REASON_STATS, d.reason);
    if d.log {
        emit(ctx, p, d, xdp_action::XDP_DROP as u8);
    }
    xdp_action::XDP_DROP
}

#[inline(always)]
fn emit(ctx: &XdpContext, p: Option<&Packet>, d: &Decision, action: u8) {
    let Some(mut entry) = EVENTS.reserve::<FirewallEvent>(0) else {
        bump(&STATS, stats::EVENTS_LOST);
        return;
    };
    let mut ev = FirewallEvent {
        kind: KIND_FIREWALL,
        reason: d.reason,
        // SAFETY: a helper with no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        rule: d.rule,
        ifindex: ctx.ingress_ifindex() as u32,
        generation: d.generation,
        action,
        packet_len: (ctx.data_end() - ctx.data()) as u32,
        ..FirewallEvent::default()
    };
    if let Some(p) = p {
        ev.family = p.family;
        ev.proto = p.proto;
        ev.sport = p.sport;
        ev.dport = p.dport;
        ev.src = p.src;
        ev.dst = p.dst;
    }
    entry.write(ev);
    entry.submit(event_flags());
}

/// No rule involved (malformed packets).
pub const NO_RULE: u32 = u32::MAX;

const _: () = assert!(reason::COUNT > reason::FRAGMENT);
