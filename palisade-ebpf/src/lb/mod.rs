//! The L4 load balancer (`[[lb.service]]`): an XDP stage entered by tail call once the
//! firewall (and the tracker, when on) allowed a packet to a VIP, and a TC egress program
//! that translates DNAT replies back to the VIP.
//!
//! The stage reads the live table slot once (`LB_CONTROL`), so a packet sees one whole table
//! (services, Maglev tables, backends) even while userspace writes the other slot. A flow
//! found in `LB_FLOWS` keeps its backend; a new one gets the Maglev table's choice, and is
//! put into the flow table only while the per-CPU insertion bucket has tokens (a flood of
//! new flows cannot push live flows out of the LRU).
//!
//! Verdicts: a service with no backend taking new flows drops (`lb-no-backend`), a frame
//! that cannot be grown for the outer header drops (`lb-rewrite`); frames it does not
//! handle (VLAN-tagged, non-first fragments, ICMP other than frag-needed / packet-too-big)
//! pass to the stack unchanged, counted in `unsupported`; internal errors pass (fail-open,
//! like the firewall).

pub mod decap;
pub mod reverse;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use palisade_common::{
    lb::{
        LS_ENCAP_V4, LS_ENCAP_V6, LS_FLOW_HITS, LS_ICMP_STEERED, LS_INSERT_GATED, LS_INSERTED,
        LS_NEW_FLOWS, LS_NO_BACKEND, LS_PACKETS, LS_REWRITE_FAILED, LS_TO_STACK, LS_TX,
        LS_UNSUPPORTED, LbFlow, LbFlowKey, LbGlobal, LbService, MODE_DNAT, MODE_DSR, NO_BACKEND,
        VipKey, backend_slot, encap_source, flow_hash, gate_admits, ring_index,
    },
    packet::{
        Bytes as _, ETH_HLEN, FAMILY_V4, FRAG_LATER, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, MAX_L4_OFFSET, Packet,
    },
    reason,
};

use crate::{
    bytes::XdpFrame,
    maps::{
        DNS_SCRATCH, LB_BACKENDS, LB_CONTROL, LB_FLOWS, LB_GATE, LB_GLOBAL, LB_RINGS, LB_SCRATCH,
        LB_STATS, LB_VIPS, REASON_STATS, SLOT_XDP, bump,
    },
    verdict,
};

/// `LB_SCRATCH` slot of the XDP stage; the TC reverse translation uses the next one.
pub const SCRATCH_XDP: u32 = 0;
pub const SCRATCH_TC: u32 = 1;

/// Per-CPU working space (`LB_SCRATCH`): keys and the route lookup's parameters, kept off
/// the 512-byte stack.
#[repr(C)]
pub struct Scratch {
    pub vip: VipKey,
    /// The service `is_vip` found, so the stage does not look it up again.
    pub svc: LbService,
    pub flow: LbFlowKey,
    pub fib: FibParams,
}

/// ICMP type and code (`Packet::dport` of an ICMP packet) of IPv4 frag-needed and IPv6
/// packet-too-big.
const ICMP_FRAG_NEEDED: u16 = 3 << 8 | 4;
const ICMPV6_PACKET_TOO_BIG: u16 = 2 << 8;
/// Protocol numbers of the outer headers.
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
/// `bpf_fib_lookup` families.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// TTL / hop limit of the outer header.
const OUTER_TTL: u8 = 64;

/// Whether `p` (allowed by the firewall) goes to a VIP of the live table: a service's
/// address, protocol and port, or an ICMP error to a VIP address. Leaves the key and the
/// service in the XDP scratch for the stage (the tail call follows at once on this CPU).
/// Costs one array read when no service is configured.
#[inline(always)]
pub fn is_vip(p: &Packet) -> bool {
    let Some(c) = LB_CONTROL.get(0) else {
        return false;
    };
    let slot = c.active & 1;
    let services = if slot == 0 {
        c.services[0]
    } else {
        c.services[1]
    };
    if services == 0 || p.frag == FRAG_LATER {
        return false;
    }
    let Some(s) = LB_SCRATCH.get_ptr_mut(SCRATCH_XDP) else {
        return false;
    };
    // SAFETY: per-CPU slot, used by one XDP program at a time on this CPU.
    let s = unsafe { &mut *s };
    s.vip.slot = slot as u8;
    s.vip.family = p.family;
    s.vip.proto = p.proto;
    s.vip._pad = 0;
    s.vip._pad2 = 0;
    s.vip.port = if p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6 {
        0
    } else {
        p.dport
    };
    copy16(s.vip.addr.as_mut_ptr(), p.dst.as_ptr());
    // SAFETY: a live map value, copied at once.
    match unsafe { LB_VIPS.get(&s.vip) } {
        Some(v) => {
            s.svc = *v;
            true
        }
        None => false,
    }
}

/// Whether `p` goes to a VIP of a DSR service: its replies go from the backend to the
/// client directly, so the tracker never sees the flow answered and its segments after the
/// SYN are `invalid` by design. Not inlined: the tracker's stage calls it only for invalid
/// TCP, with its own frame.
#[inline(never)]
pub fn is_dsr_vip(p: &Packet) -> bool {
    if !is_vip(p) {
        return false;
    }
    LB_SCRATCH
        .get(SCRATCH_XDP)
        .is_some_and(|s| s.svc.mode == MODE_DSR)
}

/// Copies 16 bytes by 16-bit words (both sides are 2-aligned): a plain copy of a byte array
/// becomes single bytes.
#[inline(always)]
pub fn copy16(dst: *mut u8, src: *const u8) {
    let (d, s) = (dst.cast::<u16>(), src.cast::<u16>());
    let mut i = 0;
    while i < 8 {
        // SAFETY: the callers pass 16-byte fields at even offsets.
        unsafe { d.add(i).write(s.add(i).read()) };
        i += 1;
    }
}

/// The stage: the packet in the XDP handoff slot goes to a VIP (`is_vip` said so, and left
/// its key in the scratch).
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(control) = LB_CONTROL.get(0) else {
        return verdict::internal_error();
    };
    let slot = control.active & 1;
    let Some(global) = LB_GLOBAL.get(slot) else {
        return verdict::internal_error();
    };
    let Some(s) = LB_SCRATCH.get_ptr_mut(SCRATCH_XDP) else {
        return verdict::internal_error();
    };
    // SAFETY: per-CPU slot, see `is_vip`.
    let s = unsafe { &mut *s };
    let Some(ps) = DNS_SCRATCH.get_ptr(SLOT_XDP) else {
        return verdict::internal_error();
    };
    // SAFETY: per-CPU slot written by the earlier stages of this packet.
    let p = unsafe { &(*ps).packet };
    bump(&LB_STATS, LS_PACKETS);
    if usize::from(p.l3_offset) != ETH_HLEN {
        // VLAN-tagged: the outer header would go between the tags; not handled.
        bump(&LB_STATS, LS_UNSUPPORTED);
        return verdict::pass();
    }
    let svc = s.svc;
    let icmp = svc.mode == 0;
    if icmp {
        if !icmp_flow(ctx, p, slot, s) {
            bump(&LB_STATS, LS_UNSUPPORTED);
            return verdict::pass();
        }
    } else {
        s.flow.family = p.family;
        s.flow.proto = p.proto;
        s.flow._pad = 0;
        s.flow.sport = p.sport;
        s.flow.dport = p.dport;
        copy16(s.flow.src.as_mut_ptr(), p.src.as_ptr());
        copy16(s.flow.dst.as_mut_ptr(), p.dst.as_ptr());
    }
    // For an ICMP error, the service of the flow it is about.
    let svc = if icmp {
        // SAFETY: as above.
        match unsafe { LB_VIPS.get(&s.vip) } {
            Some(v) if v.mode == MODE_DSR || v.mode == MODE_DNAT => *v,
            _ => {
                bump(&LB_STATS, LS_UNSUPPORTED);
                return verdict::pass();
            }
        }
    } else {
        svc
    };
    let Some(flow) = choose(slot, global, &svc, &s.flow, !icmp) else {
        bump(&LB_STATS, LS_NO_BACKEND);
        return drop(reason::LB_NO_BACKEND);
    };
    if icmp {
        bump(&LB_STATS, LS_ICMP_STEERED);
    }
    let family = p.family;
    let sent = if svc.mode == MODE_DNAT && icmp {
        reverse::dnat_icmp(ctx, p, &flow.backend)
    } else if svc.mode == MODE_DNAT {
        reverse::dnat(ctx, p, &flow.backend)
    } else {
        encapsulate(ctx, family, global, &flow)
    };
    if !sent {
        bump(&LB_STATS, LS_REWRITE_FAILED);
        return drop(reason::LB_REWRITE);
    }
    route(ctx, family, s)
}

/// Drops with `reason`, counted under it like the firewall's drops (no event: a flood at a
/// service without backends must not flood the ring).
#[inline(always)]
fn drop(reason: u32) -> u32 {
    bump(&REASON_STATS, reason);
    verdict::drop_counted()
}

/// The backend of the flow `key` of `svc`: the flow table's, or the Maglev table's for a new
/// flow (inserted when `insert` and the bucket allows). `None` when the service has no
/// backend taking new flows.
#[inline(always)]
pub fn choose(
    slot: u32,
    global: &LbGlobal,
    svc: &LbService,
    key: &LbFlowKey,
    insert: bool,
) -> Option<LbFlow> {
    // SAFETY: a live map value, copied at once.
    if let Some(f) = unsafe { LB_FLOWS.get(key) } {
        bump(&LB_STATS, LS_FLOW_HITS);
        return Some(*f);
    }
    bump(&LB_STATS, LS_NEW_FLOWS);
    let flow = maglev(slot, global, svc, key)?;
    if insert {
        let Some(g) = LB_GATE.get_ptr_mut(0) else {
            return Some(flow);
        };
        // SAFETY: per-CPU slot.
        let g = unsafe { &mut *g };
        // SAFETY: the helper has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if gate_admits(
            &mut g.tat,
            now,
            global.insert_interval_ns,
            global.insert_burst_ns,
        ) {
            if LB_FLOWS.insert(key, &flow, 0).is_ok() {
                bump(&LB_STATS, LS_INSERTED);
            }
        } else {
            bump(&LB_STATS, LS_INSERT_GATED);
        }
    }
    Some(flow)
}

/// The Maglev table's backend for `key`.
#[inline(always)]
pub fn maglev(slot: u32, global: &LbGlobal, svc: &LbService, key: &LbFlowKey) -> Option<LbFlow> {
    if svc.live == 0 {
        return None;
    }
    let hash = flow_hash(
        global.seed,
        key.proto,
        words(&key.src),
        words(&key.dst),
        key.sport,
        key.dport,
    );
    let ring = LB_RINGS.get(slot & 1)?.get(svc.index)?;
    let b = *ring.slots.get(ring_index(hash) as usize)?;
    if b == NO_BACKEND {
        return None;
    }
    let backend = LB_BACKENDS.get(backend_slot(slot, svc.index, u32::from(b)))?;
    Some(LbFlow {
        backend: backend.addr,
        hash,
        service: svc.index,
    })
}

/// An address as the four native-endian words `Packet::src_words` gives.
#[inline(always)]
pub fn words(a: &[u8; 16]) -> [u32; 4] {
    let p = a.as_ptr().cast::<u16>();
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        // SAFETY: 16 bytes at an even offset.
        let (lo, hi) = unsafe { (p.add(2 * i).read(), p.add(2 * i + 1).read()) };
        out[i] = u32::from(lo) | u32::from(hi) << 16;
        i += 1;
    }
    out
}

/// Fills `s.vip` and `s.flow` from the packet an ICMP frag-needed / packet-too-big quotes
/// (which the VIP sent: its source is the VIP, its destination the client). False for any
/// other ICMP, or a quote too short to hold the ports.
#[inline(always)]
fn icmp_flow(ctx: &XdpContext, p: &Packet, slot: u32, s: &mut Scratch) -> bool {
    let frame = XdpFrame::of(ctx);
    // The parser keeps layer 4 below MAX_L4_OFFSET; the mask shows the verifier.
    let inner = (usize::from(p.l4_offset) & (2 * MAX_L4_OFFSET - 1)) + 8;
    if p.family == FAMILY_V4 {
        if p.proto != IPPROTO_ICMP || p.dport != ICMP_FRAG_NEEDED {
            return false;
        }
        let Some(h) = frame.load::<20>(inner) else {
            return false;
        };
        let ihl = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return false;
        }
        let Some(ports) = frame.load::<4>(inner + (ihl & 0x3c)) else {
            return false;
        };
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[10] = 0xff;
        src[11] = 0xff;
        dst[10] = 0xff;
        dst[11] = 0xff;
        src[12..].copy_from_slice(&h[12..16]);
        dst[12..].copy_from_slice(&h[16..20]);
        fill_icmp_keys(s, slot, p.family, h[9], &src, &dst, ports);
    } else {
        if p.proto != IPPROTO_ICMPV6 || p.dport != ICMPV6_PACKET_TOO_BIG {
            return false;
        }
        let Some(h) = frame.load::<40>(inner) else {
            return false;
        };
        // Extension headers in the quote are not walked.
        let Some(ports) = frame.load::<4>(inner + 40) else {
            return false;
        };
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        dst.copy_from_slice(&h[24..40]);
        fill_icmp_keys(s, slot, p.family, h[6], &src, &dst, ports);
    }
    s.vip.proto == IPPROTO_TCP || s.vip.proto == IPPROTO_UDP
}

/// The service and flow keys of a quoted packet from `vip` to `client`.
#[inline(always)]
fn fill_icmp_keys(
    s: &mut Scratch,
    slot: u32,
    family: u8,
    proto: u8,
    vip: &[u8; 16],
    client: &[u8; 16],
    ports: [u8; 4],
) {
    let vport = u16::from_be_bytes([ports[0], ports[1]]);
    let cport = u16::from_be_bytes([ports[2], ports[3]]);
    s.vip.slot = slot as u8;
    s.vip.family = family;
    s.vip.proto = proto;
    s.vip.port = vport;
    s.vip.addr = *vip;
    s.flow.family = family;
    s.flow.proto = proto;
    s.flow._pad = 0;
    s.flow.sport = cport;
    s.flow.dport = vport;
    s.flow.src = *client;
    s.flow.dst = *vip;
}

/// Puts an IPIP (IPv4) or IP6IP6 (IPv6) header in front of the packet, to the flow's backend
/// from an address of the configured prefix chosen by the flow hash. False when the frame
/// cannot be grown.
#[inline(always)]
fn encapsulate(ctx: &XdpContext, family: u8, global: &LbGlobal, flow: &LbFlow) -> bool {
    let v4 = family == FAMILY_V4;
    let grow: i32 = if v4 { 20 } else { 40 };
    let before = XdpFrame::of(ctx);
    let Some(eth) = before.load::<ETH_HLEN>(0) else {
        return false;
    };
    // The inner header's first 8 bytes: TOS / traffic class and the lengths.
    let Some(ip) = before.load::<8>(ETH_HLEN) else {
        return false;
    };
    // SAFETY: the context is this program's; the frame is re-read below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return false;
    }
    let frame = XdpFrame::of(ctx);
    if !frame.store(0, &eth) {
        return false;
    }
    if v4 {
        let src = encap_source(&global.src_v4, global.src_v4_host_bits, flow.hash);
        let total = u16::from_be_bytes([ip[2], ip[3]]).wrapping_add(20);
        let t = total.to_be_bytes();
        let hdr: [u8; 20] = [
            0x45,
            ip[1],
            t[0],
            t[1],
            0,
            0,
            0,
            0,
            OUTER_TTL,
            IPPROTO_IPIP,
            0,
            0,
            src[12],
            src[13],
            src[14],
            src[15],
            flow.backend[12],
            flow.backend[13],
            flow.backend[14],
            flow.backend[15],
        ];
        let c = checksum(&hdr);
        let mut hdr = hdr;
        hdr[10] = c[0];
        hdr[11] = c[1];
        bump(&LB_STATS, LS_ENCAP_V4);
        frame.store(ETH_HLEN, &hdr)
    } else {
        let src = encap_source(&global.src_v6, global.src_v6_host_bits, flow.hash);
        let payload = u16::from_be_bytes([ip[4], ip[5]]).wrapping_add(40);
        // The inner traffic class, and a flow label from the flow hash (receive hashing on
        // the backend may use it).
        let tc = (ip[0] & 0x0f) << 4 | ip[1] >> 4;
        let label = flow.hash & 0x000f_ffff;
        let l = payload.to_be_bytes();
        let head: [u8; 8] = [
            0x60 | tc >> 4,
            (tc & 0x0f) << 4 | (label >> 16) as u8,
            (label >> 8) as u8,
            label as u8,
            l[0],
            l[1],
            IPPROTO_IPV6,
            OUTER_TTL,
        ];
        bump(&LB_STATS, LS_ENCAP_V6);
        frame.store(ETH_HLEN, &head)
            && frame.store(ETH_HLEN + 8, &src)
            && frame.store(ETH_HLEN + 24, &flow.backend)
    }
}

/// The IPv4 header checksum of `h` (its checksum field zero).
#[inline(always)]
fn checksum(h: &[u8; 20]) -> [u8; 2] {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Sends the rewritten packet on: back out of the interface it came in on when the route
/// to its (new) destination leaves there and the neighbour is known (`XDP_TX`, the MACs
/// from the route lookup); otherwise to the stack, which routes it.
#[inline(always)]
fn route(ctx: &XdpContext, family: u8, s: &mut Scratch) -> u32 {
    let frame = XdpFrame::of(ctx);
    let ifindex = ctx.ingress_ifindex() as u32;
    let f = &mut s.fib;
    // The outer (or rewritten) addresses, straight from the frame.
    if family == FAMILY_V4 {
        let Some(h) = frame.load::<20>(ETH_HLEN) else {
            return to_stack();
        };
        f.family = AF_INET;
        f.l4_protocol = h[9];
        f.__bindgen_anon_1.tot_len = u16::from_be_bytes([h[2], h[3]]);
        f.__bindgen_anon_2.tos = h[1];
        f.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
        f.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    } else {
        let Some(h) = frame.load::<40>(ETH_HLEN) else {
            return to_stack();
        };
        f.family = AF_INET6;
        f.l4_protocol = h[6];
        f.__bindgen_anon_1.tot_len = u16::from_be_bytes([h[4], h[5]]).wrapping_add(40);
        f.__bindgen_anon_2.flowinfo = 0;
        let mut a = [0u32; 4];
        let mut b = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            a[i] = u32::from_ne_bytes([h[8 + 4 * i], h[9 + 4 * i], h[10 + 4 * i], h[11 + 4 * i]]);
            b[i] = u32::from_ne_bytes([h[24 + 4 * i], h[25 + 4 * i], h[26 + 4 * i], h[27 + 4 * i]]);
            i += 1;
        }
        f.__bindgen_anon_3.ipv6_src = a;
        f.__bindgen_anon_4.ipv6_dst = b;
    }
    f.sport = 0;
    f.dport = 0;
    f.ifindex = ifindex;
    // SAFETY: the parameters live in the per-CPU scratch, of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            (f as *mut FibParams).cast(),
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != 0 || f.ifindex != ifindex {
        return to_stack();
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&f.dmac);
    macs[6..].copy_from_slice(&f.smac);
    if !frame.store(0, &macs) {
        return to_stack();
    }
    bump(&LB_STATS, LS_TX);
    verdict::tx()
}

#[inline(always)]
fn to_stack() -> u32 {
    bump(&LB_STATS, LS_TO_STACK);
    verdict::pass()
}

const _: () = assert!(xdp_action::XDP_TX != xdp_action::XDP_PASS);
