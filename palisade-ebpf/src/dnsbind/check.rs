//! The answer check: every distinct name of an answer (the question, every owner, every
//! CNAME target; `palisade_common::dnsbind::AnswerWalk::names`) is judged by the DNS
//! inspector against the `[dns.egress]` lists, as if it had been asked. Under a blocklist a
//! listed name anywhere in the answer refuses it: an allowed name whose CNAME leads to a
//! blocked one (CNAME cloaking) is blocked. Under an allowlist the question decided already
//! (queries for unlisted names never leave), and CNAME targets are not required to be listed.
//!
//! Each name is expanded (compression pointers followed, backward only, at most 16) into a
//! query built in one of the inspector's egress scratch slots, which is then inspected with
//! the query rate left out. More than `MAX_CNAME_HOPS` CNAME records, or more names than the
//! walk records, refuse the answer (`dns-answer-chain`): what cannot be checked does not
//! pass a blocklist's promise.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use palisade_common::{
    dns::{
        maps::{MODE_BLOCKLIST, SCOPE_EGRESS, SCOPES},
        name::MAX_POINTER_HOPS,
        wire::{HEADER_LEN, INSPECT_LEN},
    },
    dnsbind::{ANSWER_BUF, MAX_CHECKED_NAMES, WALK_CHAIN_TOO_LONG, WALK_TOO_MANY_NAMES},
    event::DNS_VERDICT_DROP,
    reason,
};

use crate::{
    dns::{
        egress::{claim_slot, release_slot},
        inspect::{Decision, NOT_A_QUERY, REBIND_LIST, palisade_dns_inspect},
        report::{self, Origin},
    },
    maps::{BIND_SCRATCH, CONTROL, DNS_SCOPES, DNS_SCRATCH},
};

/// The longest name a query may carry, in wire bytes.
const MAX_NAME: usize = 255;
/// Labels and pointers an expansion may visit (one per `bpf_loop` step).
const MAX_EXPAND_STEPS: u32 = 128 + MAX_POINTER_HOPS as u32 + 1;

/// [`judge`]'s result when the name was not judged.
const NOT_JUDGED: u32 = u32::MAX;

/// Expansion state, in the bind scratch.
#[repr(C)]
pub struct Expand {
    /// Where the next label is read in the answer.
    src: u32,
    /// Where the next byte is written in the query (after the header).
    dst: u32,
    /// The lowest position a pointer may go to: every hop goes strictly backward.
    limit: u32,
    hops: u32,
    /// The inspector's scratch slot written into.
    slot: u32,
    /// 1 once the root label is written, 2 on an error.
    done: u32,
}

/// Judges every name of the walked answer; `reason::PASS` or why the answer is refused.
#[inline(never)]
pub fn names(cgroup_id: u64) -> u32 {
    let Some(control) = CONTROL.get(0) else {
        return reason::PASS;
    };
    let generation = control.active_gen & 1;
    let Some(cfg) = DNS_SCOPES.get(generation * SCOPES + u32::from(SCOPE_EGRESS)) else {
        return reason::PASS;
    };
    if cfg.mode != MODE_BLOCKLIST {
        return reason::PASS;
    }
    let Some(b) = BIND_SCRATCH.get_ptr_mut(0) else {
        return reason::PASS;
    };
    // SAFETY: this CPU's bind scratch, claimed by the caller.
    let b = unsafe { &mut *b };
    if b.walk.flags & (WALK_CHAIN_TOO_LONG | WALK_TOO_MANY_NAMES) != 0 {
        return reason::DNS_ANSWER_CHAIN;
    }
    // Every egress slot busy: the names cannot be judged; under a blocklist that passes
    // (fail open, as the egress hook does), counted as internal.
    let Some(slot) = claim_slot() else {
        super::count(palisade_common::dnsbind::STAT_INTERNAL);
        return reason::PASS;
    };
    let mut why = reason::PASS;
    let mut i = 0;
    while i < MAX_CHECKED_NAMES {
        if i >= b.walk.names_len as usize {
            break;
        }
        let at = u32::from(b.walk.names[i]);
        if judge(slot, at, b.walk.qtype as u16, generation, 0) == reason::DNS_BLOCKED {
            why = reason::DNS_ANSWER_BLOCKED;
            report_blocked(slot, generation, cgroup_id, why);
            break;
        }
        i += 1;
    }
    release_slot(slot);
    why
}

/// Rebinding protection (`[dns.bind] rebinding = "refuse"`): an answer whose walk found a
/// private address passes only when the name asked (the question) is on
/// `rebinding_allow`. The question, not an owner or CNAME target: a public name whose CNAME
/// leads to an allowed internal name is the very rebinding this refuses. `reason::PASS` or
/// `reason::DNS_REBINDING`.
///
/// A name that cannot be matched (no egress slot free, the inspector failing, a name it
/// cannot expand) is not on the list: the answer is refused (fail closed).
#[inline(never)]
pub fn rebinding(cgroup_id: u64) -> u32 {
    let generation = CONTROL.get(0).map_or(0, |c| c.active_gen & 1);
    let Some(b) = BIND_SCRATCH.get_ptr(0) else {
        return reason::DNS_REBINDING;
    };
    // SAFETY: this CPU's bind scratch, claimed by the caller.
    let qtype = unsafe { (*b).walk.qtype } as u16;
    let Some(slot) = claim_slot() else {
        super::count(palisade_common::dnsbind::STAT_INTERNAL);
        return reason::DNS_REBINDING;
    };
    // The question is always at the message's offset 12 (the first name recorded).
    let judged = judge(slot, HEADER_LEN as u32, qtype, generation, REBIND_LIST);
    if judged == NOT_JUDGED
        && let Some(q) = DNS_SCRATCH.get_ptr_mut(slot)
    {
        // The event then names no question rather than whatever the slot held before.
        // SAFETY: the claimed inspector slot.
        unsafe { (*q).decision = Decision::malformed(true) };
    }
    let allowed = judged != NOT_JUDGED && listed(slot);
    let why = if allowed {
        reason::PASS
    } else {
        reason::DNS_REBINDING
    };
    if why != reason::PASS {
        report_blocked(slot, generation, cgroup_id, why);
    }
    release_slot(slot);
    why
}

/// Whether the last inspection in `slot` matched a list entry.
#[inline(always)]
fn listed(slot: u32) -> bool {
    DNS_SCRATCH
        .get_ptr(slot)
        // SAFETY: the claimed inspector slot.
        .is_some_and(|q| unsafe { (*q).decision.list } != u16::MAX)
}

/// Expands the name at `at` into a query in `slot` and inspects it (with `flags` added to
/// the inspector's `total`); the decision's reason, [`NOT_JUDGED`] when the name cannot be
/// read or the inspector failed. (Five scalars in, one out: BPF calls take no more.)
#[inline(never)]
fn judge(slot: u32, at: u32, qtype: u16, generation: u32, flags: u32) -> u32 {
    let (Some(b), Some(q)) = (BIND_SCRATCH.get_ptr_mut(0), DNS_SCRATCH.get_ptr_mut(slot)) else {
        return NOT_JUDGED;
    };
    // SAFETY: this CPU's scratches, claimed.
    let (b, q) = unsafe { (&mut *b, &mut *q) };
    q.msg[..HEADER_LEN].copy_from_slice(&[0x50, 0x42, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    b.expand = Expand {
        src: at,
        dst: HEADER_LEN as u32,
        limit: at,
        hops: 0,
        slot,
        done: 0,
    };
    // SAFETY: callback signature as bpf_loop expects; it finds its state in the scratch.
    unsafe {
        bpf_loop(
            MAX_EXPAND_STEPS,
            expand_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if b.expand.done != 1 {
        // Names the walk recorded end inside the message, but a pointer may still go
        // forward or loop: such a name cannot be read, so neither could a resolver's client.
        return NOT_JUDGED;
    }
    let end = (b.expand.dst as usize) & (INSPECT_LEN - 1);
    if end + 4 > INSPECT_LEN {
        return NOT_JUDGED;
    }
    let t = qtype.to_be_bytes();
    q.msg[end] = t[0];
    q.msg[(end + 1) & (INSPECT_LEN - 1)] = t[1];
    q.msg[(end + 2) & (INSPECT_LEN - 1)] = 0;
    q.msg[(end + 3) & (INSPECT_LEN - 1)] = 1;
    let len = (end + 4) as u32;
    if palisade_dns_inspect(
        slot,
        u32::from(SCOPE_EGRESS),
        generation,
        len,
        len | (1 << 31) | NOT_A_QUERY | flags,
    ) == 0
    {
        return NOT_JUDGED;
    }
    q.decision.reason
}

/// One label or pointer of the expansion (`bpf_loop` callback): 0 to go on, 1 to stop.
extern "C" fn expand_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(b) = BIND_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's bind scratch.
    let b = unsafe { &mut *b };
    let e = &mut b.expand;
    let Some(q) = DNS_SCRATCH.get_ptr_mut(e.slot) else {
        e.done = 2;
        return 1;
    };
    // SAFETY: the claimed inspector slot.
    let q = unsafe { &mut *q };
    let len = b.walk.len as usize;
    let src = e.src as usize;
    if src >= len {
        e.done = 2;
        return 1;
    }
    let l = b.msg[src & (ANSWER_BUF - 1)];
    if l & 0xc0 == 0xc0 {
        let target =
            (usize::from(l & 0x3f) << 8) | usize::from(b.msg[(src + 1) & (ANSWER_BUF - 1)]);
        e.hops += 1;
        if src + 2 > len
            || target >= e.limit as usize
            || target < HEADER_LEN
            || e.hops > u32::from(MAX_POINTER_HOPS)
        {
            e.done = 2;
            return 1;
        }
        e.src = target as u32;
        e.limit = target as u32;
        return 0;
    }
    if l & 0xc0 != 0 {
        e.done = 2;
        return 1;
    }
    let dst = e.dst as usize;
    let n = usize::from(l);
    if dst + 1 + n > HEADER_LEN + MAX_NAME || src + 1 + n > len {
        e.done = 2;
        return 1;
    }
    q.msg[dst & (INSPECT_LEN - 1)] = l;
    let mut i = 0;
    while i < 63 {
        if i >= n {
            break;
        }
        q.msg[(dst + 1 + i) & (INSPECT_LEN - 1)] = b.msg[(src + 1 + i) & (ANSWER_BUF - 1)];
        i += 1;
    }
    e.dst = (dst + 1 + n) as u32;
    e.src = (src + 1 + n) as u32;
    if l == 0 {
        e.done = 1;
        return 1;
    }
    0
}

/// Reports a refused answer: the name that refused it (as the inspector read it), the
/// resolver's address and port, the receiving socket's cgroup, the reason `why`.
#[inline(never)]
fn report_blocked(slot: u32, generation: u32, cgroup_id: u64, why: u32) {
    let (Some(b), Some(q)) = (BIND_SCRATCH.get_ptr(0), DNS_SCRATCH.get_ptr_mut(slot)) else {
        return;
    };
    // SAFETY: this CPU's scratches, claimed.
    let (b, q) = unsafe { (&*b, &mut *q) };
    q.packet = b.packet;
    let mut d = q.decision;
    d.reason = why;
    report::emit(
        SCOPE_EGRESS,
        DNS_VERDICT_DROP,
        &d,
        &Origin {
            slot,
            tcp: false,
            ifindex: 0,
            generation,
            cgroup_id,
            task: false,
            socket_uid: 0,
        },
    );
}
