//! DNS on XDP ingress, for resolvers and gateways. Reached by tail call from the firewall
//! for packets the firewall passed whose destination port is a DNS port.
//!
//! Fail-open on internal errors (the firewall already allowed the packet); malformed
//! queries follow the scope's `malformed` setting.

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use palisade_common::{
    dns::{
        maps::{
            ACTION_NXDOMAIN, MODE_OFF, SCOPE_AUDIT, SCOPE_BLOCK_MALFORMED, SCOPE_INGRESS,
            SCOPE_LOG_ALLOWED, SCOPES, STAT_ALLOWED, STAT_AUDITED, STAT_BLOCKED,
            STAT_NXDOMAIN_SENT, STAT_QUERIES, STAT_TCP,
        },
        wire::INSPECT_LEN,
    },
    event::{DNS_VERDICT_ALLOW, DNS_VERDICT_AUDIT, DNS_VERDICT_DROP, DNS_VERDICT_NXDOMAIN},
    packet::{FRAG_LATER, IPPROTO_TCP, IPPROTO_UDP, Packet},
    reason,
};

use super::{
    inspect::{self, Decision, Request},
    nxdomain,
    report::{self, Origin},
};
use crate::{
    maps::{CONTROL, DNS_GLOBAL, DNS_SCOPES, DNS_SCRATCH, SLOT_XDP},
    verdict,
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(control) = CONTROL.get(0) else {
        return verdict::internal_error();
    };
    let generation = control.active_gen & 1;
    let (Some(global), Some(cfg)) = (
        DNS_GLOBAL.get(generation),
        DNS_SCOPES.get(generation * SCOPES + u32::from(SCOPE_INGRESS)),
    ) else {
        return verdict::internal_error();
    };
    if cfg.mode == MODE_OFF {
        return verdict::pass();
    }
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(SLOT_XDP) else {
        return verdict::internal_error();
    };
    // The firewall left the parsed packet in the per-CPU scratch just before the tail call
    // (same CPU, no preemption in between), which also keeps this frame small for the
    // callees' stack.
    // SAFETY: per-CPU scratch, used by one program at a time on this CPU.
    let p = unsafe { &(*scratch).packet };
    if p.frag == FRAG_LATER
        || !(p.proto == IPPROTO_UDP || p.proto == IPPROTO_TCP)
        || !global.is_dns_port(p.dport)
    {
        return verdict::pass();
    }
    let tcp = p.proto == IPPROTO_TCP;
    let Some((msg_off, msg_len, whole)) = locate_message(ctx, p) else {
        // A TCP segment without payload (handshake, ACK): nothing to inspect.
        return verdict::pass();
    };
    report::count(SCOPE_INGRESS, STAT_QUERIES);
    if tcp {
        report::count(SCOPE_INGRESS, STAT_TCP);
    }
    if !copy_message(ctx, msg_off, msg_len) {
        return verdict::internal_error();
    }
    // SAFETY: as above.
    unsafe { (*scratch).rate_key = (*scratch).packet.src };
    let mut d = Decision::malformed(cfg.flags & SCOPE_BLOCK_MALFORMED != 0);
    // A TCP query not whole in this segment is never passed by accident: it is judged as
    // malformed.
    if whole {
        let req = Request {
            slot: SLOT_XDP,
            scope: SCOPE_INGRESS,
            generation,
            msg_len: msg_len.min(INSPECT_LEN),
        };
        if !inspect::inspect(cfg, &req, &mut d) {
            return verdict::internal_error();
        }
    }
    let origin = Origin {
        slot: SLOT_XDP,
        tcp,
        ifindex: ctx.ingress_ifindex() as u32,
        generation,
        cgroup_id: 0,
        task: false,
        socket_uid: 0,
    };
    if d.reason == reason::PASS {
        report::count(SCOPE_INGRESS, STAT_ALLOWED);
        if cfg.flags & SCOPE_LOG_ALLOWED != 0 {
            report::emit(SCOPE_INGRESS, DNS_VERDICT_ALLOW, &d, &origin);
        }
        return verdict::pass();
    }
    if cfg.flags & SCOPE_AUDIT != 0 {
        report::count(SCOPE_INGRESS, STAT_AUDITED);
        report::emit(SCOPE_INGRESS, DNS_VERDICT_AUDIT, &d, &origin);
        return verdict::pass();
    }
    report::count(SCOPE_INGRESS, STAT_BLOCKED);
    report::count_reason(d.reason);
    // Rate-limited and malformed queries are dropped: answering them would amplify.
    let answer = cfg.action == ACTION_NXDOMAIN
        && !tcp
        && d.reason != reason::DNS_RATE
        && d.reason != reason::DNS_MALFORMED;
    if answer && nxdomain::rewrite(ctx, p, &d) {
        report::count(SCOPE_INGRESS, STAT_NXDOMAIN_SENT);
        report::emit(SCOPE_INGRESS, DNS_VERDICT_NXDOMAIN, &d, &origin);
        return verdict::tx();
    }
    report::emit(SCOPE_INGRESS, DNS_VERDICT_DROP, &d, &origin);
    verdict::drop_counted()
}

/// Offset and length of the DNS message in the frame, and whether the whole message is
/// there. `None` for a TCP segment with no payload.
#[inline(always)]
fn locate_message(ctx: &XdpContext, p: &Packet) -> Option<(usize, usize, bool)> {
    let frame_len = ctx.data_end() - ctx.data();
    let l4 = usize::from(p.l4_offset);
    let ip_end = (l4 + usize::from(p.l4_len)).min(frame_len);
    if p.proto == IPPROTO_UDP {
        let off = l4 + 8;
        return Some((off, ip_end.saturating_sub(off), true));
    }
    let tcp: [u8; 13] = load(ctx, l4)?;
    let payload = l4 + usize::from(tcp[12] >> 4) * 4;
    if payload >= ip_end {
        return None;
    }
    let avail = ip_end - payload;
    if avail < 2 {
        return Some((payload, 0, false));
    }
    let prefix: [u8; 2] = load(ctx, payload)?;
    let claimed = usize::from(u16::from_be_bytes(prefix));
    // Exactly one whole message in this segment, nothing else: anything else cannot be
    // inspected from one packet.
    let whole = claimed == avail - 2;
    Some((payload + 2, avail - 2, whole))
}

/// Reads `N` bytes at a variable offset through the helper, which checks the range itself.
#[inline(always)]
fn load<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    // SAFETY: `out` is N writable bytes.
    let r = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx.cast(),
            off as u32,
            out.as_mut_ptr().cast(),
            N as u32,
        )
    };
    (r == 0).then_some(out)
}

/// Copies up to `INSPECT_LEN` bytes of the message into the scratch.
#[inline(always)]
fn copy_message(ctx: &XdpContext, off: usize, len: usize) -> bool {
    let Some(s) = DNS_SCRATCH.get_ptr_mut(SLOT_XDP) else {
        return false;
    };
    if len == 0 {
        return true;
    }
    // `(n - 1) % 512 + 1` keeps n in 1..=512 in a form the verifier can follow.
    let len = ((len.min(INSPECT_LEN) - 1) & (INSPECT_LEN - 1)) + 1;
    // SAFETY: the destination is the per-CPU scratch buffer of INSPECT_LEN bytes and `len`
    // is in 1..=INSPECT_LEN; the helper checks the packet range itself.
    let r = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx.cast(),
            off as u32,
            (*s).msg.as_mut_ptr().cast(),
            len as u32,
        )
    };
    r == 0
}
