//! The `redirect` action (see `palisade_common::redirect`): the packet leaves by another
//! interface from XDP, directly (`redirect_to`) or to the next hop of a routing table
//! (`route_table`).

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::generated::{bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use palisade_common::{
    firewall::RuleMeta,
    packet::{FAMILY_V4, Packet},
    redirect::{
        FIB_AF_INET, FIB_AF_INET6, FIB_FLAGS_TABLE, FIB_FRAG_NEEDED, FIB_NO_NEIGH, FIB_SUCCESS,
        FibParams, RS_MATCHED, RS_NO_DEVICE, RS_NO_NEIGH, RS_NO_ROUTE, RS_SENT, RS_SKIPPED,
        RS_TOO_BIG, RS_TTL_EXPIRED, RULE_REDIRECT_FIB, v4_dec_ttl,
    },
};

use crate::{
    bytes::XdpFrame,
    maps::{REDIRECT_DEVS, REDIRECT_FIB, REDIRECT_STATS, bump},
};

/// [`redirect`]: the packet was handed to the interface; the hook returns `XDP_REDIRECT`.
pub const SENT: u32 = 0;
/// [`redirect`]: the packet cannot go; it goes on as an allowed packet (to the stack).
pub const PASS: u32 = 1;
/// [`redirect`]: too big for the interface or the route; it is dropped.
pub const TOO_BIG: u32 = 2;

/// `BPF_MTU_CHK_RET_FRAG_NEEDED`.
const MTU_FRAG_NEEDED: i64 = 1;
/// The furthest the parser puts the IP header (Ethernet and two VLAN tags); a mask on the
/// offset tells the verifier so.
const L3_OFFSET_MASK: usize = 0x3f;

/// Applies a `redirect` rule: [`SENT`], [`PASS`] or [`TOO_BIG`], each counted. Not inlined:
/// the fib lookup's work gets a frame of its own, beside the rule search's.
#[inline(never)]
pub fn redirect(ctx: &XdpContext, meta: &RuleMeta, p: &Packet) -> u32 {
    bump(&REDIRECT_STATS, RS_MATCHED);
    let (outcome, counter) = if meta.flags & RULE_REDIRECT_FIB != 0 {
        route_to(ctx, meta.ifindex, p)
    } else {
        direct(ctx, meta.ifindex)
    };
    bump(&REDIRECT_STATS, counter);
    outcome
}

/// Out of interface `ifindex` as the frame is, if it fits that interface's MTU.
#[inline(always)]
fn direct(ctx: &XdpContext, ifindex: u32) -> (u32, u32) {
    let mut mtu_len: u32 = 0;
    // SAFETY: the program's own context and a stack word for the helper's answer.
    let fits = unsafe { bpf_check_mtu(ctx.ctx.cast(), ifindex, &raw mut mtu_len, 0, 0) };
    if fits == MTU_FRAG_NEEDED {
        return (TOO_BIG, RS_TOO_BIG);
    }
    if fits != 0 {
        // No such interface any more.
        return (PASS, RS_NO_DEVICE);
    }
    match REDIRECT_DEVS.redirect(ifindex, u64::from(xdp_action::XDP_PASS)) {
        Ok(_) => (SENT, RS_SENT),
        Err(_) => (PASS, RS_NO_DEVICE),
    }
}

/// To the next hop of routing table `table`: MACs from the fib lookup, TTL / hop limit
/// decremented, out of the route's interface.
#[inline(always)]
fn route_to(ctx: &XdpContext, table: u32, p: &Packet) -> (u32, u32) {
    if p.ttl <= 1 {
        return (PASS, RS_TTL_EXPIRED);
    }
    let Some(f) = REDIRECT_FIB.get_ptr_mut(0) else {
        return (PASS, RS_SKIPPED);
    };
    let v4 = p.family == FAMILY_V4;
    // SAFETY: per-CPU slot, used by one packet at a time on this CPU; plain stores.
    unsafe {
        *f = FibParams::default();
        (*f).l4_protocol = p.proto;
        (*f).sport = p.sport.to_be();
        (*f).dport = p.dport.to_be();
        (*f).tot_len = p.ip_len();
        (*f).ifindex = ctx.ingress_ifindex() as u32;
        (*f).tbid = table;
        let (s, d) = (p.src_words(), p.dst_words());
        if v4 {
            (*f).family = FIB_AF_INET;
            (*f).tos = u32::from(p.tos);
            (*f).src[0] = s[3];
            (*f).dst[0] = d[3];
        } else {
            (*f).family = FIB_AF_INET6;
            (*f).src = s;
            (*f).dst = d;
        }
    }
    // SAFETY: the program's context and the 64-byte parameters in the per-CPU slot.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            f.cast::<bpf_fib_lookup>(),
            core::mem::size_of::<FibParams>() as i32,
            FIB_FLAGS_TABLE,
        )
    };
    match rc {
        FIB_SUCCESS => {}
        FIB_FRAG_NEEDED => return (TOO_BIG, RS_TOO_BIG),
        FIB_NO_NEIGH => return (PASS, RS_NO_NEIGH),
        _ => return (PASS, RS_NO_ROUTE),
    }
    let frame = XdpFrame::of(ctx);
    let l3 = usize::from(p.l3_offset) & L3_OFFSET_MASK;
    let (Some(eth), Some(h)) = (frame.ptr::<12>(0), frame.ptr::<12>(l3)) else {
        return (PASS, RS_SKIPPED);
    };
    // SAFETY: the 12 bytes at `eth` and at `h` were just checked to lie in the frame; `f` is
    // the per-CPU slot the lookup filled.
    unsafe {
        let (dmac, smac) = ((*f).dmac, (*f).smac);
        core::ptr::write_unaligned(eth.cast::<[u8; 6]>(), dmac);
        core::ptr::write_unaligned(eth.add(6).cast::<[u8; 6]>(), smac);
        if v4 {
            let word = u16::from_be_bytes([*h.add(8), *h.add(9)]);
            let check = u16::from_be_bytes([*h.add(10), *h.add(11)]);
            let (w, c) = v4_dec_ttl(word, check);
            let (w, c) = (w.to_be_bytes(), c.to_be_bytes());
            *h.add(8) = w[0];
            *h.add(10) = c[0];
            *h.add(11) = c[1];
        } else {
            *h.add(7) = (*h.add(7)).wrapping_sub(1);
        }
    }
    // SAFETY: a helper call with plain arguments.
    let out = unsafe { bpf_redirect((*f).ifindex, 0) };
    if out == i64::from(xdp_action::XDP_REDIRECT) {
        (SENT, RS_SENT)
    } else {
        (PASS, RS_NO_DEVICE)
    }
}
