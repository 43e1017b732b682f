//! The egress half of connection tracking: a TC program on the guarded interfaces that sees
//! what the host sends (and forwards) there, so replies arriving at XDP find their flow.
//!
//! It never drops: every outcome, including internal errors and packets it cannot parse, is
//! "continue" (fail-open). Enforcement is the ingress side's job.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, programs::TcContext};
use palisade_common::{
    conntrack::HOOK_EGRESS,
    firewall::POLICY_CT_TRACK,
    packet::{self, Frame, Packet},
    stats,
};

use crate::{
    bytes::TcBytes,
    maps::{CONTROL, FW_HEADER, STATS, bump},
};

/// The verdict of every egress packet: let the next program (or the stack) decide.
const CONTINUE: i32 = TC_ACT_UNSPEC;

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let Some(control) = CONTROL.get(0) else {
        bump(&STATS, stats::INTERNAL);
        return CONTINUE;
    };
    let Some(header) = FW_HEADER.get(control.active_gen & 1) else {
        bump(&STATS, stats::INTERNAL);
        return CONTINUE;
    };
    if header.flags & POLICY_CT_TRACK == 0 {
        return CONTINUE;
    }
    let bytes = TcBytes::of(ctx);
    let mut p = core::mem::MaybeUninit::<Packet>::uninit();
    if !parse_into(&bytes, &mut p) {
        return CONTINUE;
    }
    // SAFETY: parse_into wrote the whole packet when it returned true.
    let mut p = unsafe { p.assume_init() };
    // SAFETY: reading the skb's interface index has no preconditions.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if !super::track(&bytes, &mut p, HOOK_EGRESS, ifindex) {
        bump(&STATS, stats::INTERNAL);
        return CONTINUE;
    }
    super::commit();
    CONTINUE
}

/// Parses the frame into `out`; false for anything that is not a well-formed IP packet. Not
/// inlined: the parser's temporaries get their own frame.
#[inline(never)]
fn parse_into(b: &TcBytes, out: &mut core::mem::MaybeUninit<Packet>) -> bool {
    match packet::parse(b) {
        Ok(Frame::Ip(p)) => {
            out.write(p);
            true
        }
        _ => false,
    }
}
