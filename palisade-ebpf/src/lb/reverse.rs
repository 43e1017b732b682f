//! DNAT: the destination of a VIP packet rewritten to its backend in XDP (checksums updated
//! incrementally), and the backend's replies given the VIP back as their source in TC
//! egress on the guarded interfaces.
//!
//! The reverse translation is decided from the table and the flow table alone: a reply from
//! a DNAT backend's address and port (`LB_REVERSE`, written with the services) to a client
//! is translated when that client's flow to the VIP is on this backend, by the flow table
//! or, for a flow the insertion gate left out, by the Maglev table. Traffic the backend
//! sends from the same port to anyone else (a client that reached it directly) is left
//! alone. The TC program never drops (fail-open).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_UNSPEC},
    programs::{TcContext, XdpContext},
};
use palisade_common::{
    lb::{LS_DNAT_V4, LS_DNAT_V6, LS_REVERSE},
    packet::{
        self, Bytes as _, ETH_HLEN, FAMILY_V4, FRAG_LATER, Frame, IPPROTO_TCP, IPPROTO_UDP,
        MAX_L4_OFFSET, Packet,
    },
};

use super::{SCRATCH_TC, copy16, maglev, words};
use crate::{
    bytes::{TcBytes, XdpFrame},
    maps::{LB_CONTROL, LB_FLOWS, LB_GLOBAL, LB_REVERSE, LB_SCRATCH, LB_STATS, LB_VIPS, bump},
};

/// Where the layer-4 checksum of `p` is, if it has one that covers the addresses.
#[inline(always)]
fn l4_check(p: &Packet) -> Option<usize> {
    let l4 = usize::from(p.l4_offset);
    match p.proto {
        IPPROTO_TCP => Some(l4 + 16),
        IPPROTO_UDP => Some(l4 + 6),
        _ => None,
    }
}

/// Folds a one's-complement sum to 16 bits.
#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// A checksum (as it sits in memory) after 16-bit words summing to `old` became words
/// summing to `new` (RFC 1624: `HC' = ~(~HC + ~m + m')`).
#[inline(always)]
fn updated(check: u16, old: u32, new: u32) -> u16 {
    let old = fold(old);
    let new = fold(new);
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// The sum of the 16-bit words of `a` (`N` even), as they sit in memory.
#[inline(always)]
fn sum<const N: usize>(a: &[u8; N]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i + 1 < N {
        s += u32::from(u16::from_ne_bytes([a[i], a[i + 1]]));
        i += 2;
    }
    s
}

/// Rewrites the destination of `p` (in the XDP frame) to `backend`, with the IPv4 header
/// checksum and the TCP/UDP checksum (a UDP checksum of 0, "none", stays 0). False when the
/// headers are not in the frame.
#[inline(always)]
pub fn dnat(ctx: &XdpContext, p: &Packet, backend: &[u8; 16]) -> bool {
    let frame = XdpFrame::of(ctx);
    // The stage handles untagged frames only.
    let l3 = ETH_HLEN;
    let (old, new) = if p.family == FAMILY_V4 {
        let Some(old) = frame.load::<4>(l3 + 16) else {
            return false;
        };
        let new = [backend[12], backend[13], backend[14], backend[15]];
        let Some(c) = frame.load::<2>(l3 + 10) else {
            return false;
        };
        let c = updated(u16::from_ne_bytes(c), sum(&old), sum(&new));
        if !frame.store(l3 + 10, &c.to_ne_bytes()) || !frame.store(l3 + 16, &new) {
            return false;
        }
        bump(&LB_STATS, LS_DNAT_V4);
        (sum(&old), sum(&new))
    } else {
        let Some(old) = frame.load::<16>(l3 + 24) else {
            return false;
        };
        if !frame.store(l3 + 24, backend) {
            return false;
        }
        bump(&LB_STATS, LS_DNAT_V6);
        (sum(&old), sum(backend))
    };
    if p.frag == FRAG_LATER {
        return true;
    }
    if let Some(at) = l4_check(p) {
        // The parser keeps layer 4 below MAX_L4_OFFSET; the mask shows the verifier.
        let at = at & (MAX_L4_OFFSET * 2 - 1);
        let Some(c) = frame.load::<2>(at) else {
            return false;
        };
        let c = u16::from_ne_bytes(c);
        if p.proto == IPPROTO_UDP && c == 0 {
            return true;
        }
        let mut n = updated(c, old, new);
        if p.proto == IPPROTO_UDP && n == 0 {
            // A computed 0 is sent as all ones (0 means "no checksum").
            n = 0xffff;
        }
        return frame.store(at, &n.to_ne_bytes());
    }
    true
}

/// Sends an ICMP frag-needed / packet-too-big about a DNAT flow to its backend: the outer
/// destination and the quoted packet's source (both the VIP) become the backend, with the
/// outer IPv4 header checksum, the quoted IPv4 header checksum and the ICMP checksum (over
/// the pseudo-header too for ICMPv6) updated incrementally. The quote's own TCP/UDP checksum
/// lies past the 8 bytes of layer 4 the stage reads and is left as it is (the backend's
/// kernel finds its socket by addresses and ports). False when the headers are not in the
/// frame.
#[inline(always)]
pub fn dnat_icmp(ctx: &XdpContext, p: &Packet, backend: &[u8; 16]) -> bool {
    let frame = XdpFrame::of(ctx);
    let l3 = ETH_HLEN;
    // The parser keeps layer 4 below MAX_L4_OFFSET; the mask shows the verifier.
    let l4 = usize::from(p.l4_offset) & (MAX_L4_OFFSET * 2 - 1);
    let inner = l4 + 8;
    let Some(c) = frame.load::<2>(l4 + 2) else {
        return false;
    };
    let icmp_check = u16::from_ne_bytes(c);
    if p.family == FAMILY_V4 {
        let new = [backend[12], backend[13], backend[14], backend[15]];
        let (Some(vip), Some(outer_c), Some(h)) = (
            frame.load::<4>(l3 + 16),
            frame.load::<2>(l3 + 10),
            frame.load::<1>(inner),
        ) else {
            return false;
        };
        let ihl = usize::from(h[0] & 0x0f) * 4;
        if ihl < 20 {
            return false;
        }
        let Some(inner_c) = frame.load::<2>(inner + 10) else {
            return false;
        };
        let inner_old = u16::from_ne_bytes(inner_c);
        let inner_new = updated(inner_old, sum(&vip), sum(&new));
        let outer = updated(u16::from_ne_bytes(outer_c), sum(&vip), sum(&new));
        let icmp = updated(
            icmp_check,
            sum(&vip) + u32::from(inner_old),
            sum(&new) + u32::from(inner_new),
        );
        bump(&LB_STATS, LS_DNAT_V4);
        frame.store(l3 + 16, &new)
            && frame.store(l3 + 10, &outer.to_ne_bytes())
            && frame.store(inner + 12, &new)
            && frame.store(inner + 10, &inner_new.to_ne_bytes())
            && frame.store(l4 + 2, &icmp.to_ne_bytes())
    } else {
        let Some(vip) = frame.load::<16>(l3 + 24) else {
            return false;
        };
        // The VIP leaves the pseudo-header (outer destination) and the quote (its source).
        let icmp = updated(icmp_check, 2 * sum(&vip), 2 * sum(backend));
        bump(&LB_STATS, LS_DNAT_V6);
        frame.store(l3 + 24, backend)
            && frame.store(inner + 8, backend)
            && frame.store(l4 + 2, &icmp.to_ne_bytes())
    }
}

/// "Let the next program (or the stack) decide."
const CONTINUE: i32 = TC_ACT_UNSPEC;

/// The TC egress program: replies of DNAT backends leave with the VIP as their source.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let Some(control) = LB_CONTROL.get(0) else {
        return CONTINUE;
    };
    let slot = control.active & 1;
    let services = if slot == 0 {
        control.services[0]
    } else {
        control.services[1]
    };
    if services == 0 {
        return CONTINUE;
    }
    let bytes = TcBytes::of(ctx);
    let Ok(Frame::Ip(p)) = packet::parse(&bytes) else {
        return CONTINUE;
    };
    if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP) || p.frag == FRAG_LATER {
        return CONTINUE;
    }
    let Some(s) = LB_SCRATCH.get_ptr_mut(SCRATCH_TC) else {
        return CONTINUE;
    };
    // SAFETY: per-CPU slot of this program (TC egress does not nest in itself on a CPU in a
    // way that matters here: a nested run rewrites its own packet from its own keys, which
    // it fills before every use).
    let s = unsafe { &mut *s };
    s.vip.slot = slot as u8;
    s.vip.family = p.family;
    s.vip.proto = p.proto;
    s.vip._pad = 0;
    s.vip._pad2 = 0;
    s.vip.port = p.sport;
    copy16(s.vip.addr.as_mut_ptr(), p.src.as_ptr());
    // SAFETY: a live map value, copied at once.
    let Some(rev) = (unsafe { LB_REVERSE.get(&s.vip) }).copied() else {
        return CONTINUE;
    };
    s.flow.family = p.family;
    s.flow.proto = p.proto;
    s.flow._pad = 0;
    s.flow.sport = p.dport;
    s.flow.dport = rev.vport;
    copy16(s.flow.src.as_mut_ptr(), p.dst.as_ptr());
    s.flow.dst = rev.vip;
    let src = words(&p.src);
    // SAFETY: as above.
    let ours = if let Some(f) = unsafe { LB_FLOWS.get(&s.flow) } {
        words(&f.backend) == src
    } else {
        // A flow the gate left out of the table: the Maglev table says whose it is.
        s.vip.port = rev.vport;
        s.vip.addr = rev.vip;
        let (Some(global), Some(svc)) = (LB_GLOBAL.get(slot), unsafe { LB_VIPS.get(&s.vip) })
        else {
            return CONTINUE;
        };
        maglev(slot, global, svc, &s.flow).is_some_and(|f| words(&f.backend) == src)
    };
    if ours && rewrite_source(ctx, &p, &rev.vip) {
        bump(&LB_STATS, LS_REVERSE);
    }
    CONTINUE
}

/// Writes `vip` as the source of `p`, each 32-bit word with its share of the checksums.
#[inline(always)]
fn rewrite_source(ctx: &TcContext, p: &Packet, vip: &[u8; 16]) -> bool {
    let l3 = usize::from(p.l3_offset);
    let check = l4_check(p);
    let l4_flags = u64::from(BPF_F_PSEUDO_HDR)
        | 4
        | if p.proto == IPPROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
    let (at, first, count) = if p.family == FAMILY_V4 {
        (l3 + 12, 3usize, 1usize)
    } else {
        (l3 + 8, 0, 4)
    };
    let old = words(&p.src);
    let new = words(vip);
    let mut i = 0;
    while i < 4 {
        if i >= first && i < first + count {
            let (o, n) = (u64::from(old[i]), u64::from(new[i]));
            if p.family == FAMILY_V4 && ctx.l3_csum_replace(l3 + 10, o, n, 4).is_err() {
                return false;
            }
            if let Some(c) = check
                && ctx.l4_csum_replace(c, o, n, l4_flags).is_err()
            {
                return false;
            }
            if ctx
                .store(at + 4 * (i - first), &new[i].to_ne_bytes(), 0)
                .is_err()
            {
                return false;
            }
        }
        i += 1;
    }
    true
}
