//! Turns a blocked UDP DNS query into an answer in place, for `XDP_TX`: NXDOMAIN, REFUSED,
//! or a sinkhole's address.
//!
//! The answer is the query's own bytes up to the end of the question (so the ID and the
//! question, with the client's letter case, are echoed), with addresses, ports and MACs
//! swapped and a response header; a sinkhole adds one answer record after the question (16
//! bytes for A, 28 for AAAA; other questions get NODATA, no record). NXDOMAIN and REFUSED
//! answers are never larger than the query; a sinkhole answer is at most 28 bytes larger
//! (and usually smaller, since the query's OPT record is not echoed). Only plain packets are
//! answered (IPv4 without options, IPv6 without extension headers, not a fragment); the
//! caller drops the rest.
//!
//! An answer from the response cache (`super::cache`, action [`ACTION_CACHE`]) is built the
//! same way: the query's bytes up to the end of the question, the cached header's flags and
//! counts, and the cached records after the question, TTLs aged.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
use palisade_common::{
    dns::{
        cache::serve_header,
        maps::{ACTION_REFUSED, ACTION_SINKHOLE, DnsGlobal},
        wire::{
            HEADER_LEN, MAX_NAME_WIRE, RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_REFUSED,
            SINKHOLE_RECORD_V4, SINKHOLE_RECORD_V6, TYPE_A, fold_checksum, fold16,
            make_response_header, sinkhole_record, sinkhole_record_len, sum16,
        },
    },
    packet::{Bytes as _, FAMILY_V4, FRAG_NONE, MAX_L4_OFFSET, Packet},
};

use super::{
    cache::{self, ACTION_CACHE},
    inspect::Decision,
};
use crate::bytes::XdpFrame;

/// Hop limit / TTL of the answer.
const ANSWER_TTL: u8 = 64;

/// Answers the query with `action` (`ACTION_NXDOMAIN`, `ACTION_REFUSED` or
/// `ACTION_SINKHOLE`, whose addresses and TTL `g` holds). Not inlined, for the same stack
/// reason as the inspector.
#[inline(never)]
pub fn rewrite(ctx: &XdpContext, p: &Packet, d: &Decision, action: u8, g: &DnsGlobal) -> bool {
    let l3 = usize::from(p.l3_offset);
    let l4 = usize::from(p.l4_offset);
    let v4 = p.family == FAMILY_V4;
    if p.frag != FRAG_NONE
        || l4 != l3 + if v4 { 20 } else { 40 }
        || d.wire_len == 0
        || usize::from(d.in_message) > MAX_NAME_WIRE
    {
        return false;
    }
    let dns = l4 + 8;
    // The question as it lies in the message: a name that ends in a compression pointer
    // is echoed with the pointer, which points at the same bytes in the answer.
    let question_end = dns + HEADER_LEN + usize::from(d.in_message) + 4;
    let len = ctx.data_end() - ctx.data();
    if question_end > len || question_end > 4096 {
        return false;
    }
    let (rcode, record) = match action {
        ACTION_REFUSED => (RCODE_REFUSED, 0),
        ACTION_SINKHOLE => {
            let Some(q) = XdpFrame::of(ctx).load::<4>(question_end - 4) else {
                return false;
            };
            let qclass = u16::from_be_bytes([q[2], q[3]]);
            (RCODE_NOERROR, sinkhole_record_len(d.qtype, qclass))
        }
        ACTION_CACHE => {
            let Some((_, n)) = cache::served() else {
                return false;
            };
            (RCODE_NOERROR, n)
        }
        _ => (RCODE_NXDOMAIN, 0),
    };
    let end = question_end + record;
    if end != len {
        // SAFETY: resizing the frame; the helper validates the delta (a sinkhole record
        // may need tailroom the frame does not have, and then nothing is answered).
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
    if action == ACTION_CACHE {
        let Some((cached, _)) = cache::served() else {
            return false;
        };
        serve_header(&mut h, &cached);
    } else {
        make_response_header(&mut h, rcode, u8::from(record != 0));
    }
    if !f.store(dns, &h) {
        return false;
    }

    sum += u64::from(sum16(&u)) + u64::from(sum16(&h)) + u64::from(d.question_sum);
    if record != 0 {
        let share = if action == ACTION_CACHE {
            append_cached(ctx, dns, d)
        } else {
            append_record(&f, dns, d, g)
        };
        if share == NOT_WRITTEN {
            return false;
        }
        sum += share;
    }
    let mut c = fold_checksum(sum);
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    f.store(l4, &u)
}

/// Writes the cached records after the question; their share of the checksum, or
/// [`NOT_WRITTEN`]. Not inlined, as [`append_record`].
#[inline(never)]
fn append_cached(ctx: &XdpContext, dns: usize, d: &Decision) -> u64 {
    // Read again, bounded where the verifier sees it (see the headers above).
    // SAFETY: a field of the decision in the scratch.
    let in_message = usize::from(unsafe { core::ptr::read_volatile(&raw const d.in_message) });
    if in_message > MAX_NAME_WIRE || dns > MAX_L4_OFFSET + 8 {
        return NOT_WRITTEN;
    }
    let share = cache::append(
        ctx,
        dns + HEADER_LEN + in_message + 4,
        (HEADER_LEN + in_message + 4) % 2 == 1,
    );
    if share == cache::NOT_WRITTEN {
        NOT_WRITTEN
    } else {
        share
    }
}

/// What [`append_record`] returns when the record could not be written.
const NOT_WRITTEN: u64 = u64::MAX;

/// Writes the sinkhole's answer record after the question and returns its share of the UDP
/// checksum, or [`NOT_WRITTEN`]. Not inlined: the record stays out of the rewrite's frame.
#[inline(never)]
fn append_record(f: &XdpFrame, dns: usize, d: &Decision, g: &DnsGlobal) -> u64 {
    // Read again, bounded where the verifier sees it (see the headers above).
    // SAFETY: a field of the decision in the scratch.
    let in_message = usize::from(unsafe { core::ptr::read_volatile(&raw const d.in_message) });
    if in_message > MAX_NAME_WIRE || dns > MAX_L4_OFFSET + 8 {
        return NOT_WRITTEN;
    }
    let at = dns + HEADER_LEN + in_message + 4;
    let mut rr = [0u8; SINKHOLE_RECORD_V6];
    sinkhole_record(
        &mut rr,
        d.qtype,
        g.sinkhole_ttl,
        &g.sinkhole_v4,
        &g.sinkhole_v6,
    );
    let stored = if d.qtype == TYPE_A {
        let mut short = [0u8; SINKHOLE_RECORD_V4];
        short.copy_from_slice(&rr[..SINKHOLE_RECORD_V4]);
        f.store(at, &short)
    } else {
        f.store(at, &rr)
    };
    if !stored {
        return NOT_WRITTEN;
    }
    // The record's words start at an odd offset of the message when the question's length
    // is odd: its sum, byte-swapped, is then its share of the checksum.
    let s = fold16(u64::from(sum16(&rr)));
    u64::from(if (HEADER_LEN + in_message + 4) % 2 == 1 {
        s.swap_bytes()
    } else {
        s
    })
}
