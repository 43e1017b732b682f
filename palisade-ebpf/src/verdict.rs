//! The one exit path of the XDP firewall: every verdict goes through here so that every drop
//! is counted under its reason and, when asked, reported as an event. The TC programs that
//! drop (the TLS gate, the DHCP snooper, the indicator check) count theirs through
//! [`tc_drop`], so that `dropped` holds every packet any hook dropped.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, xdp_action},
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use palisade_common::{
    event::{FirewallEvent, KIND_FIREWALL},
    packet::Packet,
    reason, stats,
};

use crate::maps::{REASON_STATS, STATS, bump, event_flags, reserve_event};

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

/// A TC program's drop: counted with the other drops and under its reason, as
/// [`drop`] counts XDP's.
#[inline(always)]
pub fn tc_drop(reason: u32) -> i32 {
    bump(&STATS, stats::DROPPED);
    bump(&REASON_STATS, reason);
    TC_ACT_SHOT
}

#[inline(always)]
pub fn drop(ctx: &XdpContext, p: Option<&Packet>, d: &Decision) -> u32 {
    bump(&STATS, stats::DROPPED);
    bump(&REASON_STATS, d.reason);
    if d.log {
        // The length is taken here: the verifier refuses arithmetic on the packet's end
        // pointer that the compiler may emit for it in a function of its own.
        let len = (ctx.data_end() - ctx.data()) as u32;
        emit(ctx, p, d, xdp_action::XDP_DROP as u8, len);
    }
    xdp_action::XDP_DROP
}

/// An event for a packet a rule let through and acted on (`mark` with `log = true`): the
/// event's action is `XDP_PASS`, its reason `rule`.
#[inline(always)]
pub fn note_pass(ctx: &XdpContext, p: Option<&Packet>, d: &Decision) {
    let len = (ctx.data_end() - ctx.data()) as u32;
    emit(ctx, p, d, xdp_action::XDP_PASS as u8, len);
}

/// An event for a packet a `redirect` rule sent out of another interface (with `log =
/// true`): the event's action is `XDP_REDIRECT`, its reason `rule`.
#[inline(always)]
pub fn note_redirect(ctx: &XdpContext, p: Option<&Packet>, d: &Decision) {
    let len = (ctx.data_end() - ctx.data()) as u32;
    emit(ctx, p, d, xdp_action::XDP_REDIRECT as u8, len);
}

/// Writes a firewall event straight into the ring. Not inlined, and the record is filled in
/// place rather than built first: a record staged on the stack took a third of the XDP
/// entry's 512 bytes, which the parser and the rule search, called from the same frame, need.
#[inline(never)]
fn emit(ctx: &XdpContext, p: Option<&Packet>, d: &Decision, action: u8, packet_len: u32) {
    let Some(mut entry) = reserve_event::<FirewallEvent>() else {
        bump(&STATS, stats::EVENTS_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: the reserved record, ours until submitted; plain data, every field written (a
    // zeroing of the whole record would become a byte loop). `src` and `dst` sit 2-aligned in
    // the packet and 4-aligned in the record (8-aligned in the ring), so they are copied by
    // 16-bit words and cleared by 32-bit ones.
    unsafe {
        (*ev).kind = KIND_FIREWALL;
        (*ev).reason = d.reason;
        (*ev).timestamp_ns = bpf_ktime_get_ns();
        (*ev).rule = d.rule;
        (*ev).ifindex = ctx.ingress_ifindex() as u32;
        (*ev).generation = d.generation;
        (*ev).action = action;
        (*ev).packet_len = packet_len;
        if let Some(p) = p {
            (*ev).flags = crate::intel::tag_flag(&p.src);
            (*ev).family = p.family;
            (*ev).proto = p.proto;
            (*ev).sport = p.sport;
            (*ev).dport = p.dport;
            let (from, to) = (
                p.src.as_ptr().cast::<u16>(),
                (*ev).src.as_mut_ptr().cast::<u16>(),
            );
            let (from6, to6) = (
                p.dst.as_ptr().cast::<u16>(),
                (*ev).dst.as_mut_ptr().cast::<u16>(),
            );
            let mut i = 0;
            while i < 8 {
                to.add(i).write(from.add(i).read());
                to6.add(i).write(from6.add(i).read());
                i += 1;
            }
        } else {
            // Volatile: plain stores of zeros would be merged into a byte-loop memset.
            core::ptr::write_volatile(&raw mut (*ev).flags, 0);
            core::ptr::write_volatile(&raw mut (*ev).family, 0);
            core::ptr::write_volatile(&raw mut (*ev).proto, 0);
            core::ptr::write_volatile(&raw mut (*ev).sport, 0);
            core::ptr::write_volatile(&raw mut (*ev).dport, 0);
            let (src, dst) = (
                (*ev).src.as_mut_ptr().cast::<u32>(),
                (*ev).dst.as_mut_ptr().cast::<u32>(),
            );
            let mut i = 0;
            while i < 4 {
                src.add(i).write_volatile(0);
                dst.add(i).write_volatile(0);
                i += 1;
            }
        }
    }
    entry.submit(event_flags());
}

/// No rule involved (malformed packets).
pub const NO_RULE: u32 = u32::MAX;

const _: () = assert!(reason::COUNT > reason::FRAGMENT);
