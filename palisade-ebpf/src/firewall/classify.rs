//! Tuple-space search over the live generation (see `docs/design/firewall.md`).
//!
//! The search runs inside `bpf_loop`: the verifier checks the callback once instead of
//! unrolling `MAX_TUPLES` iterations of a branchy body, which would exceed its budget.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_loop},
    maps::lpm_trie::Key,
};
use palisade_common::{
    firewall::{
        MAX_TUPLES, PORT_SPACE, PolicyHeader, SET_HOSTS, SET_KEY_PREFIX_BITS, SET_OVERLOAD,
        SET_PREFIXES, SetKey, TUPLE_DST_SET, TUPLE_SRC_SET, flow_key, set_kind_slot, tuple_applies,
    },
    packet::{FRAG_LATER, Packet},
};

use crate::maps::{
    FW_DPORT_CLASS, FW_RULES, FW_SET_HOSTS, FW_SET_KIND, FW_SETS, FW_SPORT_CLASS, FW_TUPLES,
};

/// State shared between `first_match` and the loop callback (lives on the caller's stack).
/// It points at the caller's packet rather than copying it: the callback's stack counts
/// against the caller's, and both share the 512-byte budget.
struct Search {
    packet: *const Packet,
    generation: u32,
    count: u32,
    best: u32,
    sport_class: u16,
    dport_class: u16,
}

/// The evaluation index of the first rule that matches `p`, if any.
#[inline(always)]
pub fn first_match(generation: u32, header: &PolicyHeader, p: &Packet) -> Option<u32> {
    let (sport_class, dport_class) = if p.frag == FRAG_LATER {
        (0, 0)
    } else {
        let base = generation * PORT_SPACE;
        (
            FW_SPORT_CLASS
                .get(base + u32::from(p.sport))
                .copied()
                .unwrap_or(0),
            FW_DPORT_CLASS
                .get(base + u32::from(p.dport))
                .copied()
                .unwrap_or(0),
        )
    };
    let mut s = Search {
        packet: p,
        generation,
        count: header.tuple_count,
        best: u32::MAX,
        sport_class,
        dport_class,
    };
    // SAFETY: the callback has the signature bpf_loop expects and only touches `s`, which
    // outlives the call.
    unsafe {
        bpf_loop(
            MAX_TUPLES,
            visit_tuple as *mut c_void,
            (&raw mut s).cast(),
            0,
        );
    }
    if s.best == u32::MAX {
        None
    } else {
        Some(s.best)
    }
}

/// One tuple: returns 1 to stop the loop, 0 to go on.
extern "C" fn visit_tuple(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Search` that `first_match` passed.
    let s = unsafe { &mut *ctx.cast::<Search>() };
    let i = index as u32;
    if i >= s.count {
        return 1;
    }
    let Some(t) = FW_TUPLES.get(s.generation * MAX_TUPLES + i) else {
        return 1;
    };
    // Tuples are sorted by their best rule: once a match beats it, none that follows can.
    if t.best_rule >= s.best {
        return 1;
    }
    // SAFETY: `first_match`'s caller keeps the packet alive for the whole loop.
    let p = unsafe { &*s.packet };
    if !tuple_applies(t, p)
        || (t.flags & TUPLE_SRC_SET != 0 && !in_set(t.src_set, p.family, &p.src))
        || (t.flags & TUPLE_DST_SET != 0 && !in_set(t.dst_set, p.family, &p.dst))
    {
        return 0;
    }
    let key = flow_key(s.generation, i, t, p, s.sport_class, s.dport_class);
    // SAFETY: the value is copied out at once; entries are never mutated in place.
    if let Some(r) = unsafe { FW_RULES.get(&key) } {
        if r.rule < s.best {
            s.best = r.rule;
        }
    }
    0
}

/// Whether `addr` is a member of set `set`: an exact lookup among its single addresses,
/// then, if it has any, a longest-prefix lookup among its prefixes, then, for the overload
/// set of `[conntrack]` only, a lookup among its dynamic members.
#[inline(always)]
fn in_set(set: u32, family: u8, addr: &[u8; 16]) -> bool {
    // A set that was never written (cannot happen for a live tuple) counts as holding both.
    let kind = FW_SET_KIND
        .get(set_kind_slot(set))
        .copied()
        .unwrap_or(SET_HOSTS | SET_PREFIXES);
    // One key for every map: the callback's stack is counted against the caller's.
    let mut key = Key::new(SET_KEY_PREFIX_BITS + 128, SetKey::new(set, family, *addr));
    // SAFETY: the value is only tested for presence.
    if kind & SET_HOSTS != 0 && unsafe { FW_SET_HOSTS.get(&key.data) }.is_some() {
        return true;
    }
    if kind & SET_PREFIXES != 0 && FW_SETS.get(&key).is_some() {
        return true;
    }
    // SAFETY: a helper with no preconditions.
    kind & SET_OVERLOAD != 0
        && crate::ct::overload::member(&mut key.data, unsafe { bpf_ktime_get_coarse_ns() })
}
