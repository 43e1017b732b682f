//! Turns a UDP DNS query into an NXDOMAIN answer in place, for `XDP_TX`.
//!
//! The answer is the query's own bytes up to the end of the question (so the ID and the
//! question, with the client's letter case, are echoed, and the answer is never larger than
//! the query), with addresses, ports and MACs swapped and a response header. Only plain
//! packets are answered (IPv4 without options, IPv6 without extension headers, not a
//! fragment); the caller drops the rest.

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use palisade_common::{
    dns::wire::{HEADER_LEN, fold_checksum, make_nxdomain_header, sum16},
    packet::{FAMILY_V4, FRAG_NONE, Packet},
};

use super::inspect::Decision;

/// Hop limit / TTL of the answer.
const ANSWER_TTL: u8 = 64;

/// Not inlined, for the same stack reason as the inspector.
#[inline(never)]
pub fn rewrite(ctx: &XdpContext, p: &Packet, d: &Decision) -> bool {
    let l3 = usize::from(p.l3_offset);
    let l4 = usize::from(p.l4_offset);
    let v4 = p.family == FAMILY_V4;
    if p.frag != FRAG_NONE || l4 != l3 + if v4 { 20 } else { 40 } || d.wire_len == 0 {
        return false;
    }
    let dns = l4 + 8;
    // The question as it lies in the message: a name that ends in a compression pointer
    // is echoed with the pointer, which points at the same bytes in the answer.
    let end = dns + HEADER_LEN + usize::from(d.in_message) + 4;
    let len = ctx.data_end() - ctx.data();
    if end > len || end > 4096 {
        return false;
    }
    if end < len {
        // SAFETY: shrinking the frame; the helper validates the delta.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx.cast(), end as i32 - len as i32) } != 0 {
            return false;
        }
    }
    let udp_len = (end - l4) as u16;

    let Some(eth) = load::<12>(ctx, 0) else {
        return false;
    };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&eth[6..12]);
    swapped[6..].copy_from_slice(&eth[..6]);
    if !store(ctx, 0, &swapped) {
        return false;
    }

    let mut sum: u64;
    if v4 {
        let Some(mut h) = load::<20>(ctx, l3) else {
            return false;
        };
        let mut src = [0u8; 4];
        src.copy_from_slice(&h[12..16]);
        let mut dst = [0u8; 4];
        dst.copy_from_slice(&h[16..20]);
        h[12..16].copy_from_slice(&dst);
        h[16..20].copy_from_slice(&src);
        h[2..4].copy_from_slice(&((end - l3) as u16).to_be_bytes());
        h[6] = 0x40; // DF, no fragment offset
        h[7] = 0;
        h[8] = ANSWER_TTL;
        h[10] = 0;
        h[11] = 0;
        let c = fold_checksum(u64::from(sum16(&h)));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        if !store(ctx, l3, &h) {
            return false;
        }
        sum = u64::from(sum16(&src)) + u64::from(sum16(&dst)) + 17 + u64::from(udp_len);
    } else {
        let Some(mut h) = load::<40>(ctx, l3) else {
            return false;
        };
        let mut src = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        let mut dst = [0u8; 16];
        dst.copy_from_slice(&h[24..40]);
        h[8..24].copy_from_slice(&dst);
        h[24..40].copy_from_slice(&src);
        h[4..6].copy_from_slice(&udp_len.to_be_bytes());
        h[7] = ANSWER_TTL;
        if !store(ctx, l3, &h) {
            return false;
        }
        sum = u64::from(sum16(&src)) + u64::from(sum16(&dst)) + 17 + u64::from(udp_len);
    }

    let Some(mut u) = load::<8>(ctx, l4) else {
        return false;
    };
    let sport = [u[0], u[1]];
    u[0] = u[2];
    u[1] = u[3];
    u[2] = sport[0];
    u[3] = sport[1];
    u[4..6].copy_from_slice(&udp_len.to_be_bytes());
    u[6] = 0;
    u[7] = 0;

    let Some(mut h) = load::<HEADER_LEN>(ctx, dns) else {
        return false;
    };
    make_nxdomain_header(&mut h);
    if !store(ctx, dns, &h) {
        return false;
    }

    sum += u64::from(sum16(&u)) + u64::from(sum16(&h)) + u64::from(d.question_sum);
    let mut c = fold_checksum(sum);
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    store(ctx, l4, &u)
}

// The offsets here depend on the VLAN depth; the load/store helpers check the range
// themselves, which spares the verifier from tracking variable packet offsets.

#[inline(always)]
fn load<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    // SAFETY: `out` is N writable bytes; the helper checks the packet range.
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

#[inline(always)]
fn store<const N: usize>(ctx: &XdpContext, off: usize, v: &[u8; N]) -> bool {
    // SAFETY: `v` is N readable bytes; the helper checks the packet range.
    unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx.cast(),
            off as u32,
            v.as_ptr().cast_mut().cast(),
            N as u32,
        ) == 0
    }
}
