//! NAT on the outside interface (`[nat]`): TC programs, one per direction.
//!
//! - Egress: a packet with a mapping (`NAT_EGRESS`, keyed by the untranslated tuple) gets its
//!   source rewritten. A packet from a masqueraded subnet without one gets a new mapping: an
//!   external port unique for (protocol, external address, external port, remote address,
//!   remote port), which is exactly the key of the reverse entry (`NAT_INGRESS`), inserted
//!   with `BPF_NOEXIST` so two flows can never share it, even when two CPUs race.
//! - Ingress: a packet with a mapping (`NAT_INGRESS`, keyed by the outside tuple) gets its
//!   destination rewritten; a packet to a port forward gets a new pair of mappings first.
//! - ICMP errors quoting a translated packet are translated with the packet they quote.
//!
//! The programs run before the egress connection tracker (first in the tcx chain) and after
//! the XDP ingress one, so the tracker sees every flow by its outside tuple, which is the
//! key of its `NAT_INGRESS` entry: the sweep removes a mapping once the tracker no longer
//! holds that flow (`ct::sweep`).
//!
//! Fail-open for what NAT cannot parse or does not translate (the packet goes on as it is),
//! fail-closed for a new flow that cannot be given a mapping (no free port, a full table):
//! sending it on untranslated would leak an inside address and remap nothing.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    cty::c_void,
    helpers::{
        bpf_get_prandom_u32,
        generated::{
            bpf_csum_diff, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_sk_lookup_udp,
            bpf_sk_release, bpf_skc_lookup_tcp,
        },
    },
    programs::TcContext,
};
use palisade_common::{
    conntrack::words_to_bytes,
    event::{FirewallEvent, KIND_FIREWALL},
    nat::{
        ENTRY_DNAT, ENTRY_SNAT, ForwardKey, NAT_ON, NS_DNAT_NEW, NS_EGRESS, NS_EXHAUSTED,
        NS_FORWARD_PORT, NS_FRAGMENTS, NS_ICMP_ERRORS, NS_INGRESS, NS_LOCAL_SOCKET, NS_NOT_PARSED,
        NS_PROBES, NS_RACES, NS_REWRITE_FAILED, NS_SNAT_NEW, NS_TABLE_FULL, NatConfig, NatEntry,
        NatKey, PORT_RETRIES, candidate, replace_addr, replace16,
    },
    packet::{
        self, FAMILY_V4, FRAG_LATER, Frame, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
        Packet,
    },
    reason, stats,
};

use crate::{
    bytes::TcBytes,
    maps::{
        CONTROL, NAT_CONFIG, NAT_EGRESS, NAT_FORWARDS, NAT_INGRESS, NAT_SCRATCH, NAT_STATS,
        REASON_STATS, STATS, bump, event_flags, reserve_event,
    },
};

/// Let the next program (or the stack) decide.
const CONTINUE: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT as i32;
/// `bpf_l4_csum_replace` flags: the field is part of the pseudo header; a zero (UDP "no
/// checksum") stays zero and a computed zero is written as 0xffff.
const F_PSEUDO_HDR: u64 = 0x10;
const F_MARK_MANGLED_0: u64 = 0x20;
/// `bpf_skb_store_bytes`: keep `skb->csum` right for the bytes written.
const F_RECOMPUTE_CSUM: u64 = 1;
/// `BPF_NOEXIST` for map inserts.
const NOEXIST: u64 = 1;
/// `-EEXIST`, what an insert with `BPF_NOEXIST` returns when the key is taken.
const EEXIST: i32 = -17;
/// `BPF_F_CURRENT_NETNS` for the socket lookups.
const CURRENT_NETNS: u64 = u64::MAX;

/// How a packet's tuple was read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TCP or UDP: ports at the header's first four bytes.
    Ports,
    /// ICMP echo request: the identifier at offset 4 is the "port".
    EchoRequest,
    EchoReply,
}

/// Translates one packet in `direction` (`ingress` true: what arrives on the outside
/// interface).
#[inline(always)]
pub fn run(ctx: &TcContext, ingress: bool) -> i32 {
    let Some(control) = CONTROL.get(0) else {
        bump(&STATS, stats::INTERNAL);
        return CONTINUE;
    };
    let generation = control.active_gen & 1;
    let Some(cfg) = NAT_CONFIG.get(generation) else {
        bump(&STATS, stats::INTERNAL);
        return CONTINUE;
    };
    if cfg.flags & NAT_ON == 0 {
        return CONTINUE;
    }
    // SAFETY: reading the skb's interface index has no preconditions.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if ifindex != cfg.out_ifindex {
        return CONTINUE;
    }
    let bytes = TcBytes::of(ctx);
    let mut p = core::mem::MaybeUninit::<Packet>::uninit();
    match parse_into(&bytes, &mut p) {
        1 => {}
        0 => return CONTINUE,
        _ => {
            bump(&NAT_STATS, NS_NOT_PARSED);
            return CONTINUE;
        }
    }
    // SAFETY: parse_into wrote the whole packet when it returned 1.
    let p = unsafe { p.assume_init() };
    if p.frag == FRAG_LATER {
        bump(&NAT_STATS, NS_FRAGMENTS);
        return CONTINUE;
    }
    if is_icmp_error(&p) {
        // Its own call from here: its frame is big, and the chain under the entry must stay
        // within 512 bytes.
        icmp_error(ctx, &p, ingress);
        return CONTINUE;
    }
    let r = if ingress {
        ingress_packet(ctx, &p, cfg, generation)
    } else {
        egress_packet(ctx, &p, cfg, generation)
    };
    if r == 0 {
        return CONTINUE;
    }
    bump(&STATS, stats::DROPPED);
    bump(&REASON_STATS, r);
    emit_drop(ctx, &p, r, generation);
    DROP
}

/// Reports a drop as a firewall event (`rule` = `u32::MAX`: no rule decided). NAT drops
/// are new flows that found no port or no room, rare by nature, so every one is sent.
#[inline(never)]
fn emit_drop(ctx: &TcContext, p: &Packet, reason: u32, generation: u32) {
    let Some(mut entry) = reserve_event::<FirewallEvent>() else {
        bump(&STATS, stats::EVENTS_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: the reserved record, ours until submitted; every field is written. Addresses
    // are copied by 16-bit words (the packet's are 2-aligned).
    unsafe {
        (*ev).kind = KIND_FIREWALL;
        (*ev).reason = reason;
        (*ev).timestamp_ns = bpf_ktime_get_ns();
        (*ev).rule = u32::MAX;
        (*ev).ifindex = (*ctx.skb.skb).ifindex;
        (*ev).generation = generation;
        (*ev).sport = p.sport;
        (*ev).dport = p.dport;
        (*ev).family = p.family;
        (*ev).proto = p.proto;
        (*ev).action = 1;
        (*ev).flags = 0;
        (*ev).packet_len = (*ctx.skb.skb).len;
        let (from, to) = (
            p.src.as_ptr().cast::<u16>(),
            (*ev).src.as_mut_ptr().cast::<u16>(),
        );
        let (from6, to6) = (
            p.dst.as_ptr().cast::<u16>(),
            (*ev).dst.as_mut_ptr().cast::<u16>(),
        );
        let mut i = 0;
        while i < 8 {
            to.add(i).write(from.add(i).read());
            to6.add(i).write(from6.add(i).read());
            i += 1;
        }
    }
    entry.submit(event_flags());
}

/// 1 for an IP packet (written to `out`), 0 for a frame that is not IP, 2 for a malformed
/// one. Not inlined: the parser's temporaries get their own frame.
#[inline(never)]
fn parse_into(b: &TcBytes, out: &mut core::mem::MaybeUninit<Packet>) -> u32 {
    match packet::parse(b) {
        Ok(Frame::Ip(p)) => {
            out.write(p);
            1
        }
        Ok(Frame::NotIp) => 0,
        Err(_) => 2,
    }
}

/// Whether `p` is an ICMP or ICMPv6 error (destination unreachable, packet too big, time
/// exceeded, parameter problem; IPv4 source quench too).
#[inline(always)]
fn is_icmp_error(p: &Packet) -> bool {
    let ty = (p.dport >> 8) as u8;
    match p.proto {
        IPPROTO_ICMP => matches!(ty, 3 | 4 | 11 | 12),
        IPPROTO_ICMPV6 => matches!(ty, 1..=4),
        _ => false,
    }
}

/// The tuple of `p` and how it was read; `None` for what NAT leaves alone. ICMP errors are
/// handled by [`icmp_error`] (`Some(Err(()))`).
#[inline(always)]
fn tuple(ctx: &TcContext, p: &Packet) -> Option<Result<(NatKey, Kind), ()>> {
    let mut k = NatKey {
        src: p.src_words(),
        dst: p.dst_words(),
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        family: p.family,
        _pad: [0; 2],
    };
    let kind = match p.proto {
        IPPROTO_TCP | IPPROTO_UDP => Kind::Ports,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let ty = (p.dport >> 8) as u8;
            let v4 = p.proto == IPPROTO_ICMP;
            let kind = match (v4, ty) {
                (true, 8) | (false, 128) => Kind::EchoRequest,
                (true, 0) | (false, 129) => Kind::EchoReply,
                (true, 3 | 4 | 11 | 12) | (false, 1..=4) => return Some(Err(())),
                _ => return None,
            };
            let h = ctx.load::<[u8; 8]>(usize::from(p.l4_offset)).ok()?;
            let id = u16::from_be_bytes([h[4], h[5]]);
            k.sport = id;
            k.dport = id;
            kind
        }
        _ => return None,
    };
    Some(Ok((k, kind)))
}

/// Egress: translate the source; a new flow from a masqueraded subnet gets a mapping.
/// Returns 0 or the reason of a drop. Not inlined: the entry's frame holds the packet,
/// and the parser's frame is stacked on it.
#[inline(never)]
fn egress_packet(ctx: &TcContext, p: &Packet, cfg: &NatConfig, generation: u32) -> u32 {
    let (k, kind) = match tuple(ctx, p) {
        Some(Ok(t)) => t,
        Some(Err(())) | None => return 0,
    };
    // SAFETY: a value of the map, read before it could be removed (the sweep removes entries
    // whose flow has been gone for seconds).
    let found = unsafe { NAT_EGRESS.get(&k) }.copied();
    let m = match found {
        Some(m) => m,
        None => {
            if kind == Kind::EchoReply || !cfg.masquerades(&k.src) {
                return 0;
            }
            if cfg.external(k.family).is_none() {
                return 0;
            }
            let mut m = NatEntry::default();
            let r = allocate(ctx, &k, cfg, generation, &mut m);
            if r != 0 {
                return r;
            }
            m
        }
    };
    let change = Change {
        kind,
        dst: false,
        old: k.src,
        new: m.addr,
        old_port: k.sport,
        new_port: m.port,
    };
    rewrite(ctx, p, &change);
    bump(&NAT_STATS, NS_EGRESS);
    0
}

/// Ingress: translate the destination; a new flow to a port forward gets its mappings.
#[inline(never)]
fn ingress_packet(ctx: &TcContext, p: &Packet, cfg: &NatConfig, generation: u32) -> u32 {
    let (k, kind) = match tuple(ctx, p) {
        Some(Ok(t)) => t,
        Some(Err(())) | None => return 0,
    };
    // SAFETY: as in `egress_packet`.
    let found = unsafe { NAT_INGRESS.get(&k) }.copied();
    let m = match found {
        Some(m) => m,
        None => {
            if kind != Kind::Ports || cfg.external(k.family) != Some(k.dst) {
                return 0;
            }
            match forward(&k, generation) {
                Ok(Some(m)) => m,
                Ok(None) => return 0,
                Err(r) => return r,
            }
        }
    };
    let change = Change {
        kind,
        dst: true,
        old: k.dst,
        new: m.addr,
        old_port: k.dport,
        new_port: m.port,
    };
    rewrite(ctx, p, &change);
    bump(&NAT_STATS, NS_INGRESS);
    0
}

/// A new flow to a port forward: both mappings, or `None` when no forward matches.
#[inline(never)]
fn forward(k: &NatKey, generation: u32) -> Result<Option<NatEntry>, u32> {
    let fk = ForwardKey {
        generation: generation as u8,
        family: k.family,
        proto: k.proto,
        _pad: 0,
        port: k.dport,
        _pad2: 0,
    };
    // SAFETY: a value read at once.
    let Some(target) = (unsafe { NAT_FORWARDS.get(&fk) }).copied() else {
        return Ok(None);
    };
    // SAFETY: a helper with no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let inward = NatEntry {
        addr: target.addr,
        port: target.port,
        flags: ENTRY_DNAT,
        _pad: [0; 5],
        created_ns: now,
    };
    let back = NatKey {
        src: target.addr,
        dst: k.src,
        sport: target.port,
        dport: k.sport,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    };
    let outward = NatEntry {
        addr: k.dst,
        port: k.dport,
        flags: ENTRY_DNAT,
        _pad: [0; 5],
        created_ns: now,
    };
    match NAT_INGRESS.insert(k, &inward, NOEXIST) {
        Ok(()) => {}
        Err(e) if e == EEXIST => {
            bump(&NAT_STATS, NS_RACES);
            return Ok(Some(inward));
        }
        Err(_) => {
            bump(&NAT_STATS, NS_TABLE_FULL);
            return Err(reason::NAT_TABLE_FULL);
        }
    }
    match NAT_EGRESS.insert(&back, &outward, NOEXIST) {
        Ok(()) => {}
        Err(e) if e == EEXIST => {
            // The inside endpoint already talks to this client from that port through a
            // mapping of its own: the forward cannot be told apart on the way back.
            let _ = NAT_INGRESS.remove(k);
            bump(&NAT_STATS, NS_RACES);
            return Ok(None);
        }
        Err(_) => {
            let _ = NAT_INGRESS.remove(k);
            bump(&NAT_STATS, NS_TABLE_FULL);
            return Err(reason::NAT_TABLE_FULL);
        }
    }
    bump(&NAT_STATS, NS_DNAT_NEW);
    Ok(Some(inward))
}

/// A new mapping for the flow `k` leaving from a masqueraded subnet. The port is taken by
/// inserting the reverse entry with `BPF_NOEXIST`: it either makes the tuple this flow's
/// or fails because another flow holds it. Ports of port forwards and of local sockets are
/// passed over. No port in [`PORT_RETRIES`] tries: `nat-port-exhausted`.
#[inline(never)]
fn allocate(
    ctx: &TcContext,
    k: &NatKey,
    cfg: &NatConfig,
    generation: u32,
    out: &mut NatEntry,
) -> u32 {
    let Some(ext) = cfg.external(k.family) else {
        return 0;
    };
    // The keys and values live in a per-CPU slot: this frame is stacked on the entry's and
    // the egress step's, and the three must stay within 512 bytes.
    let Some(s) = NAT_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU slot is this program's alone while it runs.
    let s = unsafe { &mut *s };
    // SAFETY: a helper with no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    s.inward = NatEntry {
        addr: k.src,
        port: k.sport,
        flags: ENTRY_SNAT,
        _pad: [0; 5],
        created_ns: now,
    };
    s.back = NatKey {
        src: k.dst,
        dst: ext,
        sport: k.dport,
        dport: 0,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    };
    let echo = k.proto == IPPROTO_ICMP || k.proto == IPPROTO_ICMPV6;
    let mut port = 0u16;
    let mut i = 0;
    let mut got = false;
    while i < PORT_RETRIES {
        // SAFETY: a helper with no preconditions.
        let rnd = unsafe { bpf_get_prandom_u32() };
        let c = candidate(i, k.sport, cfg.port_lo, cfg.port_hi, rnd);
        i += 1;
        bump(&NAT_STATS, NS_PROBES);
        if !echo {
            let fk = ForwardKey {
                generation: generation as u8,
                family: k.family,
                proto: k.proto,
                _pad: 0,
                port: c,
                _pad2: 0,
            };
            if NAT_FORWARDS.get_ptr(&fk).is_some() {
                bump(&NAT_STATS, NS_FORWARD_PORT);
                continue;
            }
            if local_socket(ctx, &s.back, &mut s.tuple, c) {
                bump(&NAT_STATS, NS_LOCAL_SOCKET);
                continue;
            }
            s.back.dport = c;
        } else {
            s.back.sport = c;
            s.back.dport = c;
        }
        match NAT_INGRESS.insert(&s.back, &s.inward, NOEXIST) {
            Ok(()) => {
                port = c;
                got = true;
                break;
            }
            Err(e) if e == EEXIST => {}
            Err(_) => {
                bump(&NAT_STATS, NS_TABLE_FULL);
                return reason::NAT_TABLE_FULL;
            }
        }
    }
    if !got {
        bump(&NAT_STATS, NS_EXHAUSTED);
        return reason::NAT_PORT_EXHAUSTED;
    }
    let outward = NatEntry {
        addr: ext,
        port,
        flags: ENTRY_SNAT,
        _pad: [0; 5],
        created_ns: now,
    };
    match NAT_EGRESS.insert(k, &outward, NOEXIST) {
        Ok(()) => {
            bump(&NAT_STATS, NS_SNAT_NEW);
            *out = outward;
            0
        }
        Err(e) if e == EEXIST => {
            // Another CPU mapped this flow meanwhile: keep its mapping, undo ours.
            let _ = NAT_INGRESS.remove(&s.back);
            bump(&NAT_STATS, NS_RACES);
            // SAFETY: a value read at once.
            match unsafe { NAT_EGRESS.get(k) } {
                Some(m) => {
                    *out = *m;
                    0
                }
                None => reason::NAT_TABLE_FULL,
            }
        }
        Err(_) => {
            let _ = NAT_INGRESS.remove(&s.back);
            bump(&NAT_STATS, NS_TABLE_FULL);
            reason::NAT_TABLE_FULL
        }
    }
}

/// Where a new mapping is put together (one per CPU, `NAT_SCRATCH`).
#[repr(C)]
pub struct Scratch {
    back: NatKey,
    inward: NatEntry,
    tuple: SockTuple,
}

/// `struct bpf_sock_tuple` (its IPv6 arm; the IPv4 arm is the first 12 bytes).
#[repr(C)]
struct SockTuple {
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
}

/// Whether a socket of this host would receive the reply of `k` mapped to `ext:port`: a
/// listener on the port, or a connection to the same remote endpoint from it. Such a port
/// is never handed out.
#[inline(always)]
fn local_socket(ctx: &TcContext, back: &NatKey, t: &mut SockTuple, port: u16) -> bool {
    // The reply's tuple: from the remote endpoint (`back`'s source) to the external address
    // and the candidate port.
    let size = if back.family == FAMILY_V4 {
        // The IPv4 arm: saddr, daddr, sport, dport packed in 12 bytes.
        t.saddr[0] = back.src[3];
        t.saddr[1] = back.dst[3];
        let s = back.sport.to_be_bytes();
        let d = port.to_be_bytes();
        t.saddr[2] = u32::from_ne_bytes([s[0], s[1], d[0], d[1]]);
        12
    } else {
        t.saddr = back.src;
        t.daddr = back.dst;
        t.sport = back.sport.to_be();
        t.dport = port.to_be();
        36
    };
    let skb = ctx.skb.skb.cast::<c_void>();
    let tp = core::ptr::from_mut(t).cast();
    // SAFETY: the tuple is per-CPU memory of `size` bytes; a socket found is released.
    unsafe {
        let sk = if back.proto == IPPROTO_TCP {
            bpf_skc_lookup_tcp(skb, tp, size, CURRENT_NETNS, 0).cast::<c_void>()
        } else {
            bpf_sk_lookup_udp(skb, tp, size, CURRENT_NETNS, 0).cast::<c_void>()
        };
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk);
    }
    true
}

/// Offset of the checksum in an L4 header.
#[inline(always)]
const fn check_offset(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => 2,
    }
}

/// One endpoint's rewrite: the source on egress, the destination on ingress (`dst`).
struct Change {
    kind: Kind,
    dst: bool,
    old: [u32; 4],
    new: [u32; 4],
    /// The port, or the echo identifier.
    old_port: u16,
    new_port: u16,
}

/// Rewrites one endpoint of `p` as `c` says, with the IPv4 header checksum and the L4
/// checksum (pseudo header included) kept right through the skb helpers, which also handle
/// a checksum the device still has to complete (`CHECKSUM_PARTIAL`).
#[inline(never)]
fn rewrite(ctx: &TcContext, p: &Packet, c: &Change) {
    let (kind, dst, old, new, old_port, new_port) =
        (c.kind, c.dst, &c.old, &c.new, c.old_port, c.new_port);
    let l3 = usize::from(p.l3_offset);
    let l4 = usize::from(p.l4_offset);
    let check = l4 + check_offset(p.proto);
    let icmp = kind != Kind::Ports;
    let mangled = if p.proto == IPPROTO_UDP {
        F_MARK_MANGLED_0
    } else {
        0
    };
    let mut ok = true;
    if old != new {
        if p.family == FAMILY_V4 {
            let at = l3 + if dst { 16 } else { 12 };
            let (o, n) = (old[3], new[3]);
            ok &= ctx.store(at, &n, 0).is_ok();
            ok &= ctx
                .l3_csum_replace(l3 + 10, u64::from(o), u64::from(n), 4)
                .is_ok();
            if !icmp {
                ok &= ctx
                    .l4_csum_replace(
                        check,
                        u64::from(o),
                        u64::from(n),
                        F_PSEUDO_HDR | mangled | 4,
                    )
                    .is_ok();
            }
        } else {
            let at = l3 + if dst { 24 } else { 8 };
            let mut o = *old;
            let mut n = *new;
            // SAFETY: both buffers are 16 bytes on this frame.
            let diff = unsafe { bpf_csum_diff(o.as_mut_ptr(), 16, n.as_mut_ptr(), 16, 0) };
            ok &= ctx.store(at, &n, 0).is_ok();
            // ICMPv6's checksum covers the pseudo header too.
            ok &= ctx
                .l4_csum_replace(check, 0, diff as u64, F_PSEUDO_HDR | mangled)
                .is_ok();
        }
    }
    if old_port != new_port {
        let at = if icmp {
            l4 + 4
        } else if dst {
            l4 + 2
        } else {
            l4
        };
        let (o, n) = (old_port.to_be(), new_port.to_be());
        ok &= ctx.store(at, &n, 0).is_ok();
        ok &= ctx
            .l4_csum_replace(check, u64::from(o), u64::from(n), mangled | 2)
            .is_ok();
    }
    if !ok {
        bump(&NAT_STATS, NS_REWRITE_FAILED);
    }
}

/// Where the parts of an ICMP error's quoted packet are.
struct Quote {
    /// Offset of the quoted IP header and of its L4 header.
    ip: usize,
    l4: usize,
    proto: u8,
    /// Addresses and ports (or echo identifier, both) of the quoted packet.
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
}

/// Reads the packet an ICMP error quotes; `None` when it is cut short before its ports, of
/// another family, or carries IPv6 extension headers.
#[inline(always)]
fn quote(ctx: &TcContext, p: &Packet) -> Option<Quote> {
    let ip = usize::from(p.l4_offset) + 8;
    if ip > packet::MAX_L4_OFFSET {
        return None;
    }
    let mapped = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    let (src, dst, proto, l4) = if p.family == FAMILY_V4 {
        let h = ctx.load::<[u8; 20]>(ip).ok()?;
        if h[0] >> 4 != 4 || h[0] & 0x0f < 5 {
            return None;
        }
        let w = |o: usize| u32::from_ne_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        (
            [0, 0, mapped, w(12)],
            [0, 0, mapped, w(16)],
            h[9],
            ip + usize::from(h[0] & 0x0f) * 4,
        )
    } else {
        let h = ctx.load::<[u8; 40]>(ip).ok()?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let w = |o: usize| u32::from_ne_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        (
            [w(8), w(12), w(16), w(20)],
            [w(24), w(28), w(32), w(36)],
            h[6],
            ip + 40,
        )
    };
    let echo_proto = if p.family == FAMILY_V4 {
        IPPROTO_ICMP
    } else {
        IPPROTO_ICMPV6
    };
    let h = ctx.load::<[u8; 8]>(l4).ok()?;
    let (sport, dport) = if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[2], h[3]]),
        )
    } else if proto == echo_proto && matches!(h[0], 0 | 8 | 128 | 129) {
        let id = u16::from_be_bytes([h[4], h[5]]);
        (id, id)
    } else {
        return None;
    };
    Some(Quote {
        ip,
        l4,
        proto,
        src,
        dst,
        sport,
        dport,
    })
}

/// An ICMP error about a translated packet: the quoted packet is translated back the way
/// the packet went (on ingress its source, which this host wrote, on egress its
/// destination), with its IPv4 header and L4 checksums; the error's own destination
/// (ingress) or source (egress, when it is the quoted endpoint) follows, and the error's
/// checksum takes every changed word, and for ICMPv6 its pseudo header. A quote cut short
/// before its L4 checksum keeps that checksum (it cannot be verified anyway).
#[inline(never)]
fn icmp_error(ctx: &TcContext, p: &Packet, ingress: bool) {
    let Some(q) = quote(ctx, p) else {
        return;
    };
    // The mapping of the quoted packet's flow, keyed by the quoted packet reversed.
    let key = NatKey {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        family: p.family,
        _pad: [0; 2],
    };
    // SAFETY: values read at once.
    let m = if ingress {
        unsafe { NAT_INGRESS.get(&key) }.copied()
    } else {
        unsafe { NAT_EGRESS.get(&key) }.copied()
    };
    let Some(m) = m else {
        return;
    };
    let v4 = p.family == FAMILY_V4;
    // The quoted endpoint that changes: ingress its source, egress its destination.
    let (old_addr, old_port) = if ingress {
        (q.src, q.sport)
    } else {
        (q.dst, q.dport)
    };
    let echo = q.proto != IPPROTO_TCP && q.proto != IPPROTO_UDP;
    let addr_at = q.ip
        + match (v4, ingress) {
            (true, true) => 12,
            (true, false) => 16,
            (false, true) => 8,
            (false, false) => 24,
        };
    let port_at = q.l4
        + if echo {
            4
        } else if ingress {
            0
        } else {
            2
        };
    let l4 = usize::from(p.l4_offset);
    let Ok(outer_check) = ctx.load::<[u8; 2]>(l4 + 2) else {
        return;
    };
    let mut outer = u16::from_be_bytes(outer_check);
    let mut ok = true;
    // The quoted IPv4 header's checksum.
    if v4 {
        let Ok(c) = ctx.load::<[u8; 2]>(q.ip + 10) else {
            return;
        };
        let old = u16::from_be_bytes(c);
        let new = replace_addr(old, &old_addr, &m.addr);
        outer = replace16(outer, old, new);
        ok &= ctx
            .store(q.ip + 10, &new.to_be_bytes(), F_RECOMPUTE_CSUM)
            .is_ok();
    }
    // The quoted L4 checksum, when quoted: ICMPv4 echo has no pseudo header.
    let qcheck = q.l4 + check_offset(q.proto);
    if let Ok(c) = ctx.load::<[u8; 2]>(qcheck) {
        let old = u16::from_be_bytes(c);
        if !(q.proto == IPPROTO_UDP && old == 0) {
            let mut new = replace16(old, old_port, m.port);
            if q.proto != IPPROTO_ICMP {
                new = replace_addr(new, &old_addr, &m.addr);
            }
            if q.proto == IPPROTO_UDP && new == 0 {
                new = 0xffff;
            }
            outer = replace16(outer, old, new);
            ok &= ctx
                .store(qcheck, &new.to_be_bytes(), F_RECOMPUTE_CSUM)
                .is_ok();
        }
    }
    // The quoted address and port (or identifier).
    outer = replace_addr(outer, &old_addr, &m.addr);
    outer = replace16(outer, old_port, m.port);
    let bytes = words_to_bytes(&m.addr);
    if v4 {
        let a = [bytes[12], bytes[13], bytes[14], bytes[15]];
        ok &= ctx.store(addr_at, &a, F_RECOMPUTE_CSUM).is_ok();
    } else {
        ok &= ctx.store(addr_at, &bytes, F_RECOMPUTE_CSUM).is_ok();
    }
    ok &= ctx
        .store(port_at, &m.port.to_be_bytes(), F_RECOMPUTE_CSUM)
        .is_ok();
    // The error's own address: ingress its destination (this host's external address, the
    // quoted source); egress its source when it is the quoted destination (an inside host
    // answering), not when this host wrote the error itself.
    let (outer_old, outer_at) = if ingress {
        (p.dst_words(), if v4 { 16 } else { 24 })
    } else {
        (p.src_words(), if v4 { 12 } else { 8 })
    };
    let outer_at = usize::from(p.l3_offset) + outer_at;
    let moves = outer_old == old_addr;
    if moves && !v4 {
        outer = replace_addr(outer, &outer_old, &m.addr);
    }
    ok &= ctx
        .store(l4 + 2, &outer.to_be_bytes(), F_RECOMPUTE_CSUM)
        .is_ok();
    if moves {
        if v4 {
            let (o, n) = (outer_old[3], m.addr[3]);
            ok &= ctx.store(outer_at, &n, 0).is_ok();
            ok &= ctx
                .l3_csum_replace(usize::from(p.l3_offset) + 10, u64::from(o), u64::from(n), 4)
                .is_ok();
        } else {
            ok &= ctx.store(outer_at, &bytes, F_RECOMPUTE_CSUM).is_ok();
        }
    }
    bump(
        &NAT_STATS,
        if ok {
            NS_ICMP_ERRORS
        } else {
            NS_REWRITE_FAILED
        },
    );
}
