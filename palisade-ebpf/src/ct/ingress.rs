//! The ingress half of connection tracking: an XDP stage between the parser and the rules,
//! entered by tail call from the firewall when the policy tracks connections.
//!
//! Fail-open like the firewall: a tracker that cannot read its maps, or a rules stage missing
//! from its slot, lets the packet through, counted in `internal_errors`. A new flow from an
//! address over a per-source limit (`[conntrack] max_per_source`, `new_per_source`) is
//! marked here and dropped by the rules stage before any rule, with reason `conn-limit`.

use aya_ebpf::programs::XdpContext;
use palisade_common::{
    conntrack::{
        CS_ACCEPTED, HOOK_INGRESS, STATE_ESTABLISHED, STATE_NEW, STATE_OVER_LIMIT, STATE_RELATED,
    },
    firewall::{POLICY_SHIELD, POLICY_STATEFUL},
    stats,
};

use crate::{
    bytes::XdpFrame,
    firewall,
    maps::{
        CONTROL, CT_STATS, DNS_SCRATCH, FW_HEADER, SLOT_XDP, STATS, TAIL_RULES, TAIL_SYNCOOKIE,
        XDP_TAILS, bump,
    },
    shield, verdict,
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(control) = CONTROL.get(0) else {
        return verdict::internal_error();
    };
    let generation = control.active_gen & 1;
    let Some(header) = FW_HEADER.get(generation) else {
        return verdict::internal_error();
    };
    let Some(s) = DNS_SCRATCH.get_ptr_mut(SLOT_XDP) else {
        return verdict::internal_error();
    };
    // SAFETY: per-CPU handoff slot, written by the firewall stage of this very packet.
    let p = unsafe { &mut (*s).packet };
    let tracked = super::track(
        &XdpFrame::of(ctx),
        p,
        HOOK_INGRESS,
        ctx.ingress_ifindex() as u32,
    );
    if tracked && header.flags & POLICY_SHIELD != 0 && shield::screen(p, generation) {
        // An ACK that may carry a SYN cookie: the cookie stage checks it, then the rules.
        // SAFETY: a tail call with this program's own context.
        unsafe { XDP_TAILS.tail_call(ctx, TAIL_SYNCOOKIE) };
        // Only reached when the stage is missing: the ACK stays invalid.
        bump(&STATS, stats::INTERNAL);
    }
    if !tracked {
        // The tracker's maps are unreadable: the packet goes on unclassified.
        bump(&STATS, stats::INTERNAL);
    } else if header.flags & POLICY_STATEFUL != 0
        && p.ct_state & (STATE_ESTABLISHED | STATE_RELATED) != 0
        && p.shield == 0
    {
        // (A packet a shield condemned, such as an echo request over its rate on a known
        // echo flow, goes on to the rules stage, which drops it.)
        bump(&CT_STATS, CS_ACCEPTED);
        // Nothing to commit: only a new flow's packet prepares an entry.
        return firewall::allowed(ctx, generation, p, false, false);
    } else if p.ct_state == STATE_NEW && !super::admit(p) {
        // Over a per-source limit: the rules stage drops it, before any rule, with its own
        // reason (dropping here would stack the drop path on the tracker's frames).
        p.ct_state |= STATE_OVER_LIMIT;
    }
    // SAFETY: a tail call with this program's own context.
    unsafe { XDP_TAILS.tail_call(ctx, TAIL_RULES) };
    // Only reached when the rules stage is missing: fail open.
    verdict::internal_error()
}
