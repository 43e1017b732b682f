//! The `reset` action of `[dlp]` (TC egress): packets of a flow that userspace put in
//! `DLP_RESET` after a detector matched its plaintext are dropped with `dlp-reset`, so the
//! connection stalls and the data never leaves. Fail-open for everything else: a frame it
//! cannot parse, or any flow not listed, goes on. Each packet stopped writes the time into
//! the flow's entry, which userspace removes once nothing was stopped for `RESET_HOLD`.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, programs::TcContext};
use palisade_common::{
    dlp::{ResetKey, stat},
    packet::{self, Frame},
    reason,
};

use crate::bytes::TcBytes;

const IPPROTO_TCP: u8 = 6;

/// The one exit of the hook.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    if listed(ctx) {
        super::bump(stat::RESET_DROPS, 1);
        crate::verdict::tc_drop(reason::DLP_RESET)
    } else {
        TC_ACT_UNSPEC
    }
}

#[inline(always)]
fn listed(ctx: &TcContext) -> bool {
    let p = match packet::parse(&TcBytes::of(ctx)) {
        Ok(Frame::Ip(p)) => p,
        Ok(Frame::NotIp) | Err(_) => return false,
    };
    if p.proto != IPPROTO_TCP {
        return false;
    }
    let key = ResetKey {
        saddr: p.src,
        daddr: p.dst,
        sport: p.sport,
        dport: p.dport,
    };
    let Some(last) = super::DLP_RESET.get_ptr_mut(&key) else {
        return false;
    };
    // The time of the last packet stopped: userspace lets go of a flow that stopped
    // nothing for a while (`RESET_HOLD`), one whose connection is gone.
    // SAFETY: a value of this map, valid for the program's run; a plain 8-byte store.
    unsafe { *last = aya_ebpf::helpers::bpf_ktime_get_ns() };
    true
}
