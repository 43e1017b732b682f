//! Scrub (pf's semantics) on the guarded interfaces: TC programs, one per direction, that
//! raise low TTLs and hop limits, clamp the MSS of SYNs and SYN-ACKs, clear the IPv4
//! don't-fragment bit and give unfragmented IPv4 packets a random identification.
//!
//! Scrub never drops: every outcome, including packets it cannot parse and internal errors,
//! is "continue" (fail-open), with a counter. It rewrites through the skb helpers, which keep
//! the buffer's checksum state right (`bpf_l3_csum_replace` / `bpf_l4_csum_replace` leave a
//! TCP checksum the device still has to fill in alone, and update a complete one), and it
//! reads everything it needs before the first write: a write moves the packet, so no packet
//! pointer survives it.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_skb_load_bytes},
    programs::TcContext,
};
use palisade_common::{
    packet::{self, Bytes as _, FAMILY_V4, FRAG_NONE, Frame, IPPROTO_TCP, Packet, TCP_SYN},
    scrub::{
        SC_DF_CLEARED, SC_FRAGMENT_ID_KEPT, SC_HOP_LIMIT_RAISED, SC_ID_RANDOMIZED,
        SC_MSS_CLAMPED_V4, SC_MSS_CLAMPED_V6, SC_NOT_PARSED, SC_REWRITE_FAILED, SC_TTL_RAISED,
        SCRUB_CLEAR_DF, SCRUB_RANDOM_ID, ScrubConfig, counter_base, mss_index,
    },
    stats,
};

use crate::{
    bytes::TcBytes,
    maps::{CONTROL, SCRUB_CONFIG, SCRUB_SCRATCH, SCRUB_STATS, STATS, bump},
};

/// The verdict of every packet: let the next program (or the stack) decide.
const CONTINUE: i32 = TC_ACT_UNSPEC;
/// `bpf_skb_store_bytes`: update `skb->csum` for the bytes written (a rewrite no checksum
/// in the packet makes up for, under `CHECKSUM_COMPLETE`).
const BPF_F_RECOMPUTE_CSUM: u64 = 1;
/// `bpf_l4_csum_replace`: the changed field is 2 bytes.
const L4_FIELD_2: u64 = 2;
/// IPv4 flags and fragment offset: don't fragment, more fragments, the offset.
const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// Where the TCP options of a SYN are copied for the walk (one per CPU, `SCRUB_SCRATCH`).
/// Bytes past the copied options may be stale: the walk reads only the copied ones.
#[repr(C)]
pub struct Scratch {
    /// A power of two above the 40 option bytes: the copy's size is bounded by a mask.
    opts: [u8; 64],
    /// The walk's state in memory (see `mss_index`).
    skip: u8,
}

/// The rewrites one IPv4 header gets, decided before the first write.
struct V4Plan {
    /// Old and new 16-bit words at header offsets 4 (id), 6 (flags) and 8 (TTL, protocol),
    /// in network order as they sit in memory.
    id: (u16, u16),
    flags: (u16, u16),
    ttl: (u16, u16),
    /// Whether a random identification was drawn (it may equal the old one).
    drew_id: bool,
}

/// Scrubs one packet of `direction` (`SCRUB_INGRESS` or `SCRUB_EGRESS`).
#[inline(always)]
pub fn run(ctx: &TcContext, direction: u32) -> i32 {
    let Some(control) = CONTROL.get(0) else {
        bump(&STATS, stats::INTERNAL);
        return CONTINUE;
    };
    let Some(cfg) = SCRUB_CONFIG.get(control.active_gen & 1) else {
        bump(&STATS, stats::INTERNAL);
        return CONTINUE;
    };
    if !cfg.scrubs(direction) {
        return CONTINUE;
    }
    let cfg = *cfg;
    let base = counter_base(direction);
    let bytes = TcBytes::of(ctx);
    let p = match packet::parse(&bytes) {
        Ok(Frame::Ip(p)) => p,
        Ok(Frame::NotIp) => return CONTINUE,
        Err(_) => {
            bump(&SCRUB_STATS, base + SC_NOT_PARSED);
            return CONTINUE;
        }
    };
    // Everything is read now: the MSS option, then the IP header.
    let mss = find_mss(ctx, &p, &cfg);
    let l3 = usize::from(p.l3_offset);
    if p.family == FAMILY_V4 {
        let Some(plan) = plan_v4(&bytes, l3, &cfg, base) else {
            bump(&SCRUB_STATS, base + SC_NOT_PARSED);
            return CONTINUE;
        };
        rewrite_v4(ctx, l3, &plan, base);
    } else {
        let Some([hop]) = bytes.load::<1>(l3 + 7) else {
            bump(&SCRUB_STATS, base + SC_NOT_PARSED);
            return CONTINUE;
        };
        if hop < cfg.min_ttl {
            let counter = if ctx
                .store(l3 + 7, &cfg.min_ttl, BPF_F_RECOMPUTE_CSUM)
                .is_ok()
            {
                SC_HOP_LIMIT_RAISED
            } else {
                SC_REWRITE_FAILED
            };
            bump(&SCRUB_STATS, base + counter);
        }
    }
    if let Some((at, old, new)) = mss {
        clamp_mss(ctx, &p, at, old, new, base);
    }
    CONTINUE
}

/// The MSS option of a SYN or SYN-ACK over its family's limit: where its value is in the
/// frame, the value and the limit.
#[inline(always)]
fn find_mss(ctx: &TcContext, p: &Packet, cfg: &ScrubConfig) -> Option<(usize, u16, u16)> {
    let limit = if p.family == FAMILY_V4 {
        cfg.max_mss_v4
    } else {
        cfg.max_mss_v6
    };
    if limit == 0 || p.proto != IPPROTO_TCP || p.frag != FRAG_NONE || p.tcp_flags & TCP_SYN == 0 {
        return None;
    }
    let l4 = usize::from(p.l4_offset);
    let doff = ctx.load::<u8>(l4 + 12).ok()?;
    // The parser saw a data offset of at least 5 words: at most 40 bytes of options.
    let len = (usize::from(doff >> 4) * 4).saturating_sub(20);
    if len == 0 {
        return None;
    }
    // `(n - 1) % 64 + 1` keeps the copy's size in 1..=64 in a form the verifier can follow.
    let n = (((len - 1) & 63) + 1) as u32;
    let s = SCRUB_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU slot is this program's alone while it runs.
    let s = unsafe { &mut *s };
    // SAFETY: `n` bytes fit in `opts`; the helper checks the packet range.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            (l4 + 20) as u32,
            s.opts.as_mut_ptr().cast(),
            n,
        )
    };
    if rc != 0 {
        return None;
    }
    let i = mss_index(&s.opts, n as usize, &mut s.skip)?;
    let old = u16::from_be_bytes([*s.opts.get(i)?, *s.opts.get(i + 1)?]);
    (old > limit).then_some((l4 + 20 + i, old, limit))
}

/// The IPv4 rewrites `cfg` asks for; `None` when the header cannot be read.
#[inline(always)]
fn plan_v4(b: &TcBytes, l3: usize, cfg: &ScrubConfig, base: u32) -> Option<V4Plan> {
    let h = b.load::<10>(l3)?;
    let word = |i: usize| u16::from_ne_bytes([h[i], h[i + 1]]);
    let mut plan = V4Plan {
        id: (word(4), word(4)),
        flags: (word(6), word(6)),
        ttl: (word(8), word(8)),
        drew_id: false,
    };
    let flags = u16::from_be_bytes([h[6], h[7]]);
    if cfg.flags & SCRUB_CLEAR_DF != 0 && flags & IP_DF != 0 {
        plan.flags.1 = (flags & !IP_DF).to_be();
    }
    if cfg.flags & SCRUB_RANDOM_ID != 0 {
        if flags & (IP_MF | IP_OFFSET) == 0 {
            // SAFETY: the helper has no preconditions.
            plan.id.1 = unsafe { bpf_get_prandom_u32() } as u16;
            plan.drew_id = true;
        } else {
            bump(&SCRUB_STATS, base + SC_FRAGMENT_ID_KEPT);
        }
    }
    if h[8] < cfg.min_ttl {
        plan.ttl.1 = u16::from_ne_bytes([cfg.min_ttl, h[9]]);
    }
    Some(plan)
}

/// Writes the planned words, each with its share of the header checksum.
#[inline(always)]
fn rewrite_v4(ctx: &TcContext, l3: usize, plan: &V4Plan, base: u32) {
    for (field, (old, new), counter) in [
        (4, plan.id, SC_ID_RANDOMIZED),
        (6, plan.flags, SC_DF_CLEARED),
        (8, plan.ttl, SC_TTL_RAISED),
    ] {
        if old == new {
            // A random identification that happens to be the old one still counts.
            if counter == SC_ID_RANDOMIZED && plan.drew_id {
                bump(&SCRUB_STATS, base + counter);
            }
            continue;
        }
        let ok = ctx.store(l3 + field, &new.to_ne_bytes(), 0).is_ok()
            && ctx
                .l3_csum_replace(l3 + 10, u64::from(old), u64::from(new), 2)
                .is_ok();
        bump(
            &SCRUB_STATS,
            base + if ok { counter } else { SC_REWRITE_FAILED },
        );
    }
}

/// Lowers the MSS at `at` from `old` to `new`, with the TCP checksum.
#[inline(always)]
fn clamp_mss(ctx: &TcContext, p: &Packet, at: usize, old: u16, new: u16, base: u32) {
    let check = usize::from(p.l4_offset) + 16;
    let (old_w, new_w) = (old.to_be(), new.to_be());
    let ok = ctx.store(at, &new_w.to_ne_bytes(), 0).is_ok()
        && ctx
            .l4_csum_replace(check, u64::from(old_w), u64::from(new_w), L4_FIELD_2)
            .is_ok();
    let counter = if !ok {
        SC_REWRITE_FAILED
    } else if p.family == FAMILY_V4 {
        SC_MSS_CLAMPED_V4
    } else {
        SC_MSS_CLAMPED_V6
    };
    bump(&SCRUB_STATS, base + counter);
}
