//! DNS on cgroup egress: queries sent by local processes, attributed to the process, user
//! and cgroup that sent them.
//!
//! The hook sees every packet the cgroup sends, so anything that is not a DNS query leaves
//! at once. A blocked query is dropped; the kernel then fails the sender's `sendmsg` with
//! `EPERM`, so resolvers give up at once instead of waiting for a timeout. Malformed queries
//! follow the scope's `malformed` setting.
//!
//! # What the hook does when it cannot decide
//!
//! One place, [`unchecked`], decides for every packet the hook could not inspect: the
//! packet cannot be parsed (a raw socket can build an IPv6 extension chain longer than the
//! parser follows), every scratch slot of the CPU is taken (reason `dns-busy`), or a map
//! that should always answer did not (`dns-internal`). The scope's mode decides:
//!
//! - **allowlist: fail closed.** Only listed names may leave, so a packet the hook cannot
//!   show to be something else is refused, counted under its reason and reported.
//! - **blocklist: fail open.** Everything not listed may leave; the packet passes (internal
//!   conditions are counted as `internal`).
//! - **allowlist with audit**: the packet passes and is reported as an audit with the
//!   reason.
//!
//! Without a loaded policy (no configuration at all) there is nothing to enforce: the
//! packet passes and `internal` is counted.
//!
//! # Refused whatever the mode
//!
//! A UDP send to a DNS port that the kernel would segment (UDP GSO: `UDP_SEGMENT` on the
//! socket or in a control message) leaves as several datagrams, each a query of its own to
//! the resolver, while this hook sees one packet. No resolver client sends that way; it is
//! refused with reason `dns-gso`.
//!
//! # Scratch slots
//!
//! The inspector's working space is per CPU. The program runs with migration disabled but
//! can be preempted (on fully preemptible kernels) and interrupted by a softirq that sends,
//! so inspections on one CPU overlap in any order, not only nested. Each run claims a free
//! slot with an atomic compare-and-exchange on the slot's busy flag ([`DNS_EGRESS_BUSY`])
//! and frees it when done; the slot number, not a depth counter, tells the inspector where
//! its data is. Per-task storage would not do: a softirq runs on top of whatever task it
//! interrupted, possibly in the middle of that task's own inspection.
//!
//! # Query rate
//!
//! The rate buckets of the egress scope are per cgroup (the sending socket's), not per
//! address: every local process shares the host's addresses.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_skb_cgroup_id, bpf_skb_load_bytes},
    programs::SkBuffContext,
};
use palisade_common::{
    dns::{
        maps::{
            DnsGlobal, MODE_ALLOWLIST, MODE_OFF, SCOPE_AUDIT, SCOPE_BLOCK_MALFORMED, SCOPE_EGRESS,
            SCOPE_LOG_ALLOWED, SCOPES, STAT_ALLOWED, STAT_AUDITED, STAT_BLOCKED, STAT_QUERIES,
            ScopeConfig,
        },
        wire::INSPECT_LEN,
    },
    event::{DNS_VERDICT_ALLOW, DNS_VERDICT_AUDIT, DNS_VERDICT_DROP},
    packet::{self, FRAG_LATER, IPPROTO_TCP, IPPROTO_UDP, Packet},
    reason, stats,
};

use super::{
    inspect::{self, Decision, Request},
    report::{self, Origin},
    stream::{self, Judged},
};
use crate::{
    atomic,
    bytes::SkbBytes,
    maps::{
        CONTROL, DNS_EGRESS_BUSY, DNS_GLOBAL, DNS_SCOPES, DNS_SCRATCH, EGRESS_SLOTS, SLOT_EGRESS,
        STATS, bump,
    },
};

/// Parses the packet (it starts at the IP header) into `out`, or says why it cannot be.
/// Not inlined: its temporaries get their own stack frame.
#[inline(never)]
fn parse_into(ctx: &SkBuffContext, out: &mut Packet) -> Result<(), u32> {
    let ethertype = u16::from_be(ctx.skb.protocol() as u16);
    // In place: the packet's copies on the stack would not fit under the inspector's frames.
    if packet::parse_l3_into(&SkbBytes(ctx), ethertype, out)? {
        Ok(())
    } else {
        // Sockets of the inet families send nothing but IP.
        Err(reason::MALFORMED_L3)
    }
}

/// cgroup_skb verdicts.
const ALLOW: i32 = 1;
const DROP: i32 = 0;

/// The identity of the sending socket.
struct Sender {
    cgroup_id: u64,
    socket_uid: u32,
}

#[inline(always)]
pub fn run(ctx: &SkBuffContext) -> i32 {
    let Some(control) = CONTROL.get(0) else {
        bump(&STATS, stats::INTERNAL);
        return ALLOW;
    };
    let generation = control.active_gen & 1;
    let (Some(global), Some(cfg)) = (
        DNS_GLOBAL.get(generation),
        DNS_SCOPES.get(generation * SCOPES + u32::from(SCOPE_EGRESS)),
    ) else {
        bump(&STATS, stats::INTERNAL);
        return ALLOW;
    };
    if cfg.mode == MODE_OFF {
        return ALLOW;
    }
    let sender = Sender {
        // SAFETY: the context pointer is the program's own skb.
        cgroup_id: unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) },
        socket_uid: ctx.get_socket_uid(),
    };
    let Some(slot) = claim_slot() else {
        return unchecked(cfg, generation, reason::DNS_BUSY, &sender);
    };
    let verdict = inspect_egress(ctx, global, cfg, generation, slot, &sender);
    release_slot(slot);
    verdict
}

const _: () = assert!(EGRESS_SLOTS.is_power_of_two());

/// Claims a free scratch slot of this CPU: its busy flag goes from 0 to the slot's index
/// plus one.
#[inline(always)]
pub(crate) fn claim_slot() -> Option<u32> {
    let mut i = 0;
    while i < EGRESS_SLOTS {
        if let Some(flag) = DNS_EGRESS_BUSY.get_ptr_mut(i) {
            // One instruction: no run that preempts or interrupts this one can come between
            // the test and the set.
            // SAFETY: an aligned u64 in a map value.
            if unsafe { atomic::compare_exchange(flag, 0, u64::from(i) + 1) } {
                // The owner's mark read back: a value from a map is unknown to the verifier,
                // so what follows is verified once for every slot, not once per slot. No
                // other run changes a claimed flag, so the mark is the one just written.
                // SAFETY: as above.
                let mark = unsafe { core::ptr::read_volatile(flag) };
                return Some(SLOT_EGRESS + (mark.wrapping_sub(1) as u32 & (EGRESS_SLOTS - 1)));
            }
        }
        i += 1;
    }
    None
}

/// Frees a slot claimed by [`claim_slot`].
#[inline(always)]
pub(crate) fn release_slot(slot: u32) {
    if let Some(flag) = DNS_EGRESS_BUSY.get_ptr_mut(slot.wrapping_sub(SLOT_EGRESS)) {
        // SAFETY: as in `claim_slot`.
        unsafe { atomic::exchange(flag, 0) };
    }
}

/// The one place that decides what becomes of a packet the hook could not inspect (see the
/// module documentation): refused under an allowlist (reported and passed under an
/// allowlist in audit mode), passed under a blocklist.
#[inline(never)]
fn unchecked(cfg: &ScopeConfig, generation: u32, why: u32, sender: &Sender) -> i32 {
    if cfg.mode != MODE_ALLOWLIST {
        if why == reason::DNS_BUSY || why == reason::DNS_INTERNAL {
            bump(&STATS, stats::INTERNAL);
        }
        return ALLOW;
    }
    let verdict = if cfg.flags & SCOPE_AUDIT != 0 {
        report::count(SCOPE_EGRESS, STAT_AUDITED);
        DNS_VERDICT_AUDIT
    } else {
        report::count(SCOPE_EGRESS, STAT_BLOCKED);
        report::count_reason(why);
        DNS_VERDICT_DROP
    };
    report::emit_unchecked(
        SCOPE_EGRESS,
        verdict,
        why,
        generation,
        sender.cgroup_id,
        sender.socket_uid,
    );
    if verdict == DNS_VERDICT_DROP {
        bump(&STATS, stats::DROPPED);
        DROP
    } else {
        ALLOW
    }
}

#[inline(always)]
fn inspect_egress(
    ctx: &SkBuffContext,
    global: &DnsGlobal,
    cfg: &ScopeConfig,
    generation: u32,
    slot: u32,
    sender: &Sender,
) -> i32 {
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return unchecked(cfg, generation, reason::DNS_INTERNAL, sender);
    };
    // SAFETY: this run's own per-CPU scratch slot.
    if let Err(why) = parse_into(ctx, unsafe { &mut (*scratch).packet }) {
        return unchecked(cfg, generation, why, sender);
    }
    // SAFETY: as above.
    let p = unsafe { &(*scratch).packet };
    if p.frag == FRAG_LATER
        || !(p.proto == IPPROTO_UDP || p.proto == IPPROTO_TCP)
        || !global.is_dns_port(p.dport)
    {
        return ALLOW;
    }
    let tcp = p.proto == IPPROTO_TCP;
    // SAFETY: this run's own scratch slot.
    unsafe { (*scratch).rate_key = cgroup_rate_key(sender.cgroup_id) };
    let mut d = Decision::malformed(cfg.flags & SCOPE_BLOCK_MALFORMED != 0);
    if tcp {
        match judge_tcp(ctx, slot, generation, cfg.flags & SCOPE_AUDIT != 0, &mut d) {
            Judged::Empty => return ALLOW,
            Judged::Unreadable => return unchecked(cfg, generation, reason::MALFORMED_L4, sender),
            Judged::Internal => return unchecked(cfg, generation, reason::DNS_INTERNAL, sender),
            Judged::Judged => {}
        }
    } else {
        let l4 = usize::from(p.l4_offset);
        let msg_off = l4 + 8;
        let msg_len = (l4 + usize::from(p.l4_len)).saturating_sub(msg_off);
        report::count(SCOPE_EGRESS, STAT_QUERIES);
        // SAFETY: a field of the program's own context (cgroup_skb may read it).
        let gso_size = unsafe { (*ctx.skb.skb).gso_size };
        if gso_size != 0 {
            // The kernel will cut this datagram into several, each a query of its own to the
            // resolver: the first alone can be inspected here.
            d.reason = reason::DNS_GSO;
        } else {
            let req = Request {
                slot,
                scope: SCOPE_EGRESS,
                generation,
                msg_len: copy_message(ctx, slot, msg_off, msg_len),
                total_len: msg_len,
                whole: true,
            };
            if !inspect::inspect(&req, &mut d) {
                return unchecked(cfg, generation, reason::DNS_INTERNAL, sender);
            }
        }
    }
    let origin = Origin {
        slot,
        tcp,
        ifindex: 0,
        generation,
        cgroup_id: sender.cgroup_id,
        task: true,
        socket_uid: sender.socket_uid,
    };
    if d.reason == reason::PASS {
        report::count(SCOPE_EGRESS, STAT_ALLOWED);
        // A name of an `[intel]` alert or tag feed is reported whatever `log_allowed`.
        if cfg.flags & SCOPE_LOG_ALLOWED != 0 || inspect::intel_flags(origin.slot, &d) != 0 {
            report::emit(SCOPE_EGRESS, DNS_VERDICT_ALLOW, &d, &origin);
        }
        return ALLOW;
    }
    if cfg.flags & SCOPE_AUDIT != 0 {
        report::count(SCOPE_EGRESS, STAT_AUDITED);
        report::emit(SCOPE_EGRESS, DNS_VERDICT_AUDIT, &d, &origin);
        return ALLOW;
    }
    report::count(SCOPE_EGRESS, STAT_BLOCKED);
    report::count_reason(d.reason);
    report::emit(SCOPE_EGRESS, DNS_VERDICT_DROP, &d, &origin);
    bump(&STATS, stats::DROPPED);
    DROP
}

/// Judges a TCP segment (see [`stream::judge`]). Not inlined: the segment's layout stays out
/// of the hook's frame.
#[inline(never)]
fn judge_tcp(
    ctx: &SkBuffContext,
    slot: u32,
    generation: u32,
    audit: bool,
    d: &mut Decision,
) -> Judged {
    let hook = stream::Hook {
        slot,
        scope: SCOPE_EGRESS,
        generation,
        audit,
    };
    stream::judge(&SkbBytes(ctx), ctx.len() as usize, &hook, d, |off, len| {
        Some(copy_message(ctx, slot, off, len))
    })
}

/// Copies up to `INSPECT_LEN` bytes of the message at `off` into the scratch slot; returns
/// the bytes copied (0 when nothing could be).
#[inline(always)]
fn copy_message(ctx: &SkBuffContext, slot: u32, off: usize, msg_len: usize) -> usize {
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return 0;
    };
    let avail = (ctx.len() as usize)
        .saturating_sub(off)
        .min(msg_len)
        .min(INSPECT_LEN);
    if avail == 0 {
        return 0;
    }
    // `(n - 1) % 512 + 1` keeps n in 1..=512 in a form the verifier can follow.
    let len = ((avail - 1) & (INSPECT_LEN - 1)) + 1;
    // SAFETY: the destination is the per-CPU scratch buffer of INSPECT_LEN bytes.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            off as u32,
            (*scratch).msg.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if r == 0 { len } else { 0 }
}

/// The egress rate bucket of a cgroup (see `ClientKey::addr`).
#[inline(always)]
fn cgroup_rate_key(cgroup_id: u64) -> [u8; 16] {
    // SAFETY: two u64s are 16 plain bytes.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([cgroup_id, 0]) }
}
