//! Per-source limits at scale (`[shield] source_rate`, `icmp_echo_*`): sources are
//! aggregated by prefix (`source_prefix_v4`/`_v6`, /24 and /64 say "one network") and counted
//! in a count-min sketch (`SHIELD_SKETCH`'s table) of fixed size, so a flood from millions of
//! addresses costs no memory per address; only the prefixes that go over the rate (the heavy
//! hitters) are remembered, in `SHIELD_HITTERS`, and blocked there for `source_block`.
//!
//! The counters are shared by every CPU (atomic adds), so the enforced rate is the configured
//! one, not that rate times the CPUs. They count in windows of `2^WINDOW_SHIFT` ns stamped in
//! the cell itself, so a policy reload neither refills them nor needs to clear them, and a
//! changed rate applies to the counts already made. A count-min sketch only overestimates:
//! a prefix is limited when all its counters are over, and another prefix only raises a
//! counter it shares by its own traffic.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use palisade_common::{
    conntrack::{STATE_INVALID, STATE_NEW},
    packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, Packet},
    reason,
    shield::{
        CLASS_ECHO, CLASS_FLOWS, HitterEntry, SH_ECHO_GLOBAL_LIMITED, SH_ECHO_OVERSIZED,
        SH_ECHO_SOURCE_LIMITED, SH_HITTERS, SH_SOURCE_BLOCKED, SH_SOURCE_LIMITED,
        SKETCH_GLOBAL_ECHO, ShieldConfig, SourceKey, prefix_words, sketch_cells, window_of,
    },
};

use crate::{
    atomic,
    maps::{SHIELD_HITTERS, SHIELD_SKETCH, SHIELD_STATS, bump},
};

/// ICMP echo request types, by protocol.
const ECHO_REQUEST_V4: u16 = 8;
const ECHO_REQUEST_V6: u16 = 128;
/// Bytes of the ICMP header before an echo's payload.
const ICMP_ECHO_HEADER: u16 = 8;

/// Applies the per-source limits to a classified packet; returns the reason to drop it
/// for, or 0. While its prefix is blocked, a packet that opens a flow (`new`), belongs to
/// none (`invalid`) or is an echo request is refused. Echo requests are limited per prefix
/// and globally and checked for size, whatever their flow's state; other packets count only
/// when they open a flow. Established and related packets (ICMP errors for PMTU discovery
/// among them) are never counted nor limited.
#[inline(never)]
pub fn limit(cfg: &ShieldConfig, p: &Packet) -> u32 {
    let echo_type = if p.proto == IPPROTO_ICMP {
        ECHO_REQUEST_V4
    } else {
        ECHO_REQUEST_V6
    };
    let echo = (p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6) && p.dport >> 8 == echo_type;
    let opening = p.ct_state & (STATE_NEW | STATE_INVALID) != 0;
    if !echo && (!opening || cfg.source_limit == 0) {
        // Established and related packets, or no flow limit: nothing to count, not even the
        // clock read (`source_block` needs `source_rate`).
        return 0;
    }
    // SAFETY: a helper with no preconditions.
    let t = unsafe { bpf_ktime_get_coarse_ns() };
    let key = key_of(cfg, p);
    if cfg.block_ns != 0 && blocked(&key, cfg.block_ns, t) {
        bump(&SHIELD_STATS, SH_SOURCE_BLOCKED);
        return reason::SHIELD_SOURCE_BLOCKED;
    }
    if echo {
        return echo_limits(cfg, &key, p, t);
    }
    if p.ct_state != STATE_NEW {
        return 0;
    }
    let n = count(&key, CLASS_FLOWS, cfg.seed, window_of(t));
    if n <= cfg.source_limit {
        return 0;
    }
    bump(&SHIELD_STATS, SH_SOURCE_LIMITED);
    record(&key, n, cfg.block_ns != 0, t);
    reason::SHIELD_SOURCE_RATE
}

#[inline(always)]
fn echo_limits(cfg: &ShieldConfig, key: &SourceKey, p: &Packet, t: u64) -> u32 {
    if cfg.echo_payload_over != 0
        && u32::from(p.l4_len.saturating_sub(ICMP_ECHO_HEADER)) >= cfg.echo_payload_over
    {
        bump(&SHIELD_STATS, SH_ECHO_OVERSIZED);
        return reason::SHIELD_ICMP_OVERSIZED;
    }
    let w = window_of(t);
    if cfg.echo_source_limit != 0 && count(key, CLASS_ECHO, cfg.seed, w) > cfg.echo_source_limit {
        bump(&SHIELD_STATS, SH_ECHO_SOURCE_LIMITED);
        return reason::SHIELD_ICMP_RATE;
    }
    if cfg.echo_global_limit != 0 && count_cell(SKETCH_GLOBAL_ECHO, w) > cfg.echo_global_limit {
        bump(&SHIELD_STATS, SH_ECHO_GLOBAL_LIMITED);
        return reason::SHIELD_ICMP_RATE;
    }
    0
}

#[inline(always)]
fn key_of(cfg: &ShieldConfig, p: &Packet) -> SourceKey {
    let plen = if p.family == palisade_common::packet::FAMILY_V4 {
        cfg.prefix_v4
    } else {
        cfg.prefix_v6
    };
    SourceKey {
        family: p.family,
        plen,
        _pad: [0; 2],
        prefix: prefix_words(p.family, p.src_words(), plen),
    }
}

/// Counts one packet of `key` in `class` in window `w`; returns the prefix's count in the
/// window so far (the smallest of its cells).
#[inline(always)]
fn count(key: &SourceKey, class: u32, seed: u32, w: u32) -> u32 {
    let cells = sketch_cells(key.prefix, key.plen, class, seed);
    let mut n = u32::MAX;
    for c in cells {
        n = n.min(count_cell(c, w));
    }
    n
}

/// Counts one packet in cell `i` for window `w`; returns the cell's count including it (0
/// when the cell cannot be read, or there is no sketch: fail-open).
#[inline(always)]
fn count_cell(i: u32, w: u32) -> u32 {
    let Some(c) = SHIELD_SKETCH.get(0).and_then(|t| t.get_ptr_mut(i)) else {
        return 0;
    };
    // SAFETY: a live map value shared by every CPU. Two CPUs restarting the same cell at a
    // window's start may lose a count or two of that window; within a window the adds are
    // atomic. The count cannot reach the window bits (2^32 packets in 1.07 s).
    unsafe {
        let v = core::ptr::read_volatile(c);
        if (v >> 32) as u32 != w {
            core::ptr::write_volatile(c, u64::from(w) << 32 | 1);
            1
        } else {
            atomic::add(c, 1);
            (v as u32).saturating_add(1)
        }
    }
}

/// Whether `key` is blocked at `t`: it went over the limit less than `block_ns` ago. A
/// blocked packet counts in the entry's drops.
#[inline(always)]
fn blocked(key: &SourceKey, block_ns: u64, t: u64) -> bool {
    let Some(e) = SHIELD_HITTERS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a live map value; its fields are updated in place (the drops atomically).
    unsafe {
        if t.wrapping_sub((*e).since_ns) >= block_ns {
            return false;
        }
        (*e).last_ns = t;
        atomic::add(&raw mut (*e).drops, 1);
    }
    true
}

/// Records that `key` went over its limit with count `n`: a new heavy hitter, or one seen
/// again (whose block, when blocking, starts again from now: its earlier one was over, or
/// the packet would not have been counted).
#[inline(never)]
fn record(key: &SourceKey, n: u32, blocking: bool, t: u64) {
    if let Some(e) = SHIELD_HITTERS.get_ptr_mut(key) {
        // SAFETY: as in `blocked`.
        unsafe {
            if blocking {
                (*e).since_ns = t;
                (*e).count = n;
                bump(&SHIELD_STATS, SH_HITTERS);
            }
            (*e).last_ns = t;
            atomic::add(&raw mut (*e).drops, 1);
        }
        return;
    }
    let e = HitterEntry {
        since_ns: t,
        last_ns: t,
        drops: 1,
        count: n,
        _pad: 0,
    };
    if SHIELD_HITTERS.insert(key, &e, 0).is_ok() {
        bump(&SHIELD_STATS, SH_HITTERS);
    }
}
