//! The destination of what the host sends, checked against the indicators (TC egress,
//! `[intel] egress = true`). Fail-open: a frame it cannot parse, and any internal error,
//! goes on; a listed destination of a drop feed is shot with `intel-drop`.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, programs::TcContext};
use palisade_common::{
    intel::{CHECK_EGRESS, DIR_EGRESS},
    packet::{self, Frame},
};

use crate::bytes::TcBytes;

/// The one exit of the hook: a drop is counted (with every drop, and by reason) here.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    match decide(ctx) {
        0 => TC_ACT_UNSPEC,
        reason => crate::verdict::tc_drop(reason),
    }
}

#[inline(always)]
fn decide(ctx: &TcContext) -> u32 {
    // Without indicators, or without `egress`, one array read and nothing else.
    let Some(live) = super::live() else {
        return 0;
    };
    if live.1 & CHECK_EGRESS == 0 {
        return 0;
    }
    let p = match packet::parse(&TcBytes::of(ctx)) {
        Ok(Frame::Ip(p)) => p,
        // Not IP, or not parsable: the stack sends what it built.
        Ok(Frame::NotIp) | Err(_) => return 0,
    };
    let Some(hit) = super::lookup(&p.dst, super::words(&p.dst), DIR_EGRESS, live, 1) else {
        return 0;
    };
    // SAFETY: the context's skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    super::act(&p, &p.dst, hit, DIR_EGRESS, ifindex, ctx.len())
}
