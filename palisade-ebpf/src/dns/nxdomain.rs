//! Turns a UDP DNS query into an NXDOMAIN answer in place, for `XDP_TX`.
//!
//! The answer is the query's own bytes up to the end of the question (so the ID and the
//! question, with the client's letter case, are echoed, and the answer is never larger than
//! the query), with addresses, ports and MACs swapped and a response header. Only plain
//! packets are answered (IPv4 without options, IPv6 without extension headers, not a
//! fragment); the caller drops the rest.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
use palisade_common::{
    dns::wire::{HEADER_LEN, fold_checksum, make_nxdomain_header, sum16},
    packet::{Bytes as _, FAMILY_V4, FRAG_NONE, MAX_L4_OFFSET, Packet},
};

use super::inspect::Decision;
use crate::bytes::XdpFrame;

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
    // The headers are read and written in place, not through the load/store helpers (a
    // call each). Their offsets depend on the VLAN depth and must be seen bounded by the
    // verifier: read again (volatile) and checked, as the compiler would drop a check it
    // can deduce from the ones above, and the verifier cannot.
    // SAFETY: fields of the packet in the scratch.
    let (l3, l4) = unsafe {
        (
            usize::from(core::ptr::read_volatile(&raw const p.l3_offset)),
            usize::from(core::ptr::read_volatile(&raw const p.l4_offset)),
        )
    };
    if l3 > MAX_L4_OFFSET || l4 > MAX_L4_OFFSET {
        return false;
    }
    let dns = l4 + 8;
    // Read after the cut: it moved the frame's end.
    let f = XdpFrame::of(ctx);

    let Some(eth) = f.load::<12>(0) else {
        return false;
    };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&eth[6..12]);
    swapped[6..].copy_from_slice(&eth[..6]);
    if !f.store(0, &swapped) {
        return false;
    }

    let mut sum: u64;
    if v4 {
        let Some(mut h) = f.load::<20>(l3) else {
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
        if !f.store(l3, &h) {
            return false;
        }
        sum = u64::from(sum16(&src)) + u64::from(sum16(&dst)) + 17 + u64::from(udp_len);
    } else {
        let Some(mut h) = f.load::<40>(l3) else {
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
        if !f.store(l3, &h) {
            return false;
        }
        sum = u64::from(sum16(&src)) + u64::from(sum16(&dst)) + 17 + u64::from(udp_len);
    }

    let Some(mut u) = f.load::<8>(l4) else {
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

    let Some(mut h) = f.load::<HEADER_LEN>(dns) else {
        return false;
    };
    make_nxdomain_header(&mut h);
    if !f.store(dns, &h) {
        return false;
    }

    sum += u64::from(sum16(&u)) + u64::from(sum16(&h)) + u64::from(d.question_sum);
    let mut c = fold_checksum(sum);
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    f.store(l4, &u)
}
