//! IDS preselection (TC, ingress and egress of the guarded interfaces): port groups, then
//! the multi-pattern prefilter over the first bytes of each payload
//! (`palisade_common::ids::prefilter`, the same code userspace replays), then payload windows
//! to userspace on `IDS_RECORDS` for the full match.
//!
//! Backpressure: a per-CPU token bucket (`IdsConfig::budget_per_sec`) and the ring's fill
//! (`ring_high_water`). When either says no, a flow about to be selected is sampled out
//! (remembered, so its later packets are skipped too) and a selected flow's packet is skipped;
//! both are counted, as are records the full ring refused and payloads cut to
//! `IDS_RECORD_BYTES`.
//!
//! Fail-open: the preselection never drops. The one drop is of flows a `drop` rule matched
//! in userspace (`IDS_DROPS`, keyed like the connection tracker's flows): what arrives is
//! dropped in XDP by the firewall ([`dropped_at_xdp`]), what the host sends here at tcx.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, TC_ACT_UNSPEC},
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use palisade_common::{
    conntrack::CtKey,
    ids::{
        IDS_FLOW_SAMPLED_OUT, IDS_FLOW_SELECTED, IDS_MODE_ALL, IDS_MODE_PREFILTER, IDS_ON,
        IDS_PF_HIT, IDS_PF_MISS, IDS_RECORD_BYTES, IDS_SCAN_BYTES, IDS_WHY_GROUP_ALL,
        IDS_WHY_PREFILTER, IDS_WHY_SHORT, IDS_WINDOW, IS_FLOWS_SAMPLED_OUT, IS_FLOWS_SELECTED,
        IS_LOST, IS_NO_GROUP, IS_NOT_PARSED, IS_PACKETS, IS_PREFILTER_MISS, IS_RECORDS,
        IS_SAMPLED_PACKETS, IS_TRUNCATED, IdsConfig, IdsFlowKey, IdsFlowState, IdsPortKey,
        IdsRecord, prefilter,
    },
    ids::{IS_FLOW_DROPS, IS_FLOW_DROPS_TC},
    packet::{
        self, FRAG_LATER, FRAG_NONE, Frame, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
        Packet,
    },
    reason,
};

use crate::{
    bytes::TcBytes,
    maps::{
        IDS_BUDGET, IDS_CONFIG, IDS_DROPS, IDS_FLOWS, IDS_GRAMS, IDS_PACKET, IDS_PORT_GROUPS,
        IDS_RECORDS, IDS_SCRATCH, IDS_STATS, bump,
    },
};

/// A CPU's record budget.
#[repr(C)]
pub struct Budget {
    /// Tokens in nanosecond-scaled units: one record costs `NS_PER_SEC`.
    tokens: u64,
    last_ns: u64,
}

const NS_PER_SEC: u64 = 1_000_000_000;

/// The one exit: the packet continues, unless its flow was dropped by a `drop` rule.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let reason = inspect(ctx);
    if reason != 0 {
        bump(&IDS_STATS, IS_FLOW_DROPS_TC);
        return crate::verdict::tc_drop(reason);
    }
    TC_ACT_UNSPEC
}

/// The ports a flow is keyed by: TCP's and UDP's, 0 for the rest (the userspace side keys
/// the drop table the same way).
#[inline(always)]
fn flow_ports(p: &Packet) -> (u16, u16) {
    if p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP {
        (p.sport, p.dport)
    } else {
        (0, 0)
    }
}

/// Whether `p`'s flow is in `IDS_DROPS` (counting the drop on the entry). Not inlined: the
/// key gets a frame of its own, off the preselection's.
#[inline(never)]
fn flow_dropped(p: &Packet) -> bool {
    let (sport, dport) = flow_ports(p);
    let (key, _) = CtKey::of(p, sport, dport);
    let Some(d) = IDS_DROPS.get_ptr_mut(&key) else {
        return false;
    };
    // SAFETY: a map value; a lost increment between CPUs only undercounts.
    unsafe { (*d).dropped += 1 };
    true
}

/// For the XDP firewall: `reason::IDS_DROP` when a packet arriving on a guarded interface
/// belongs to a flow a `drop` rule matched, else 0. Inline (one array read while IDS is
/// off); the flow lookup is a call of its own, so the firewall's frame stays as it was.
#[inline(always)]
pub fn dropped_at_xdp(p: &Packet) -> u32 {
    let Some(cfg) = IDS_CONFIG.get(0) else {
        return 0;
    };
    if cfg.flags & IDS_ON == 0 || p.frag == FRAG_LATER {
        return 0;
    }
    if flow_dropped(p) {
        bump(&IDS_STATS, IS_FLOW_DROPS);
        return reason::IDS_DROP;
    }
    0
}

/// 0 (the packet continues) or the reason it is dropped.
#[inline(always)]
fn inspect(ctx: &TcContext) -> u32 {
    let Some(cfg) = IDS_CONFIG.get(0) else {
        return 0;
    };
    if cfg.flags & IDS_ON == 0 {
        return 0;
    }
    // The settings are read in place (a map value): a copy would cost the stack 64 bytes.
    bytes_and_flow(ctx, cfg)
}

/// What [`parse_into`] returns.
const PARSED: u32 = 0;
const NOT_IP: u32 = 1;
const NOT_PARSED: u32 = 2;

/// Parses the frame into `out`. Not inlined, and into a per-CPU slot: the parser's
/// temporaries get a frame of their own, and the packet none, so the preselection below fits
/// the stack beside them.
#[inline(never)]
fn parse_into(ctx: &TcContext, out: &mut Packet) -> u32 {
    match packet::parse(&TcBytes::of(ctx)) {
        Ok(Frame::Ip(p)) => {
            *out = p;
            PARSED
        }
        Ok(Frame::NotIp) => NOT_IP,
        Err(_) => NOT_PARSED,
    }
}

#[inline(always)]
fn bytes_and_flow(ctx: &TcContext, cfg: &IdsConfig) -> u32 {
    let Some(slot) = IDS_PACKET.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, used by one program at a time.
    let p = unsafe { &mut *slot };
    match parse_into(ctx, p) {
        PARSED => {}
        NOT_IP => return 0,
        _ => {
            bump(&IDS_STATS, IS_PACKETS);
            bump(&IDS_STATS, IS_NOT_PARSED);
            return 0;
        }
    }
    let p: &Packet = p;
    if p.frag != FRAG_LATER && flow_dropped(p) {
        return reason::IDS_DROP;
    }
    // SAFETY: the context's socket buffer, read once.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if !cfg.iface_in_scope(ifindex) {
        return 0;
    }
    bump(&IDS_STATS, IS_PACKETS);
    if p.frag != FRAG_NONE {
        return 0;
    }
    let (sport, dport) = flow_ports(p);
    if !cfg.port_in_scope(sport, dport) {
        return 0;
    }
    observe(ctx, cfg, p);
    0
}

/// The preselection of one parsed packet: records its payload when its flow is selected.
/// Not inlined: the parser's frame ([`parse_into`]) and this one are never on the stack
/// together, and the verifier adds the frames of a call chain.
#[inline(never)]
fn observe(ctx: &TcContext, cfg: &IdsConfig, p: &Packet) {
    let l4 = usize::from(p.l4_offset);
    let hdr = match p.proto {
        IPPROTO_TCP => {
            let Ok(doff) = ctx.load::<u8>(l4 + 12) else {
                bump(&IDS_STATS, IS_NOT_PARSED);
                return;
            };
            usize::from(doff >> 4) * 4
        }
        IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6 => 8,
        _ => return,
    };
    let l4_len = usize::from(p.l4_len);
    if l4_len <= hdr {
        return;
    }
    let at = l4 + hdr;
    let plen = l4_len - hdr;
    let (sport, dport) = if p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP {
        (p.sport, p.dport)
    } else {
        (0, 0)
    };
    let key = IdsFlowKey {
        family: p.family,
        proto: p.proto,
        _pad: [0; 2],
        sport,
        dport,
        src: p.src,
        dst: p.dst,
    };
    let known = IDS_FLOWS.get_ptr(&key).map(|s| {
        // SAFETY: a map value, read once.
        unsafe { *s }
    });
    let why = match known {
        Some(s) if s.state == IDS_FLOW_SAMPLED_OUT => {
            bump(&IDS_STATS, IS_SAMPLED_PACKETS);
            return;
        }
        Some(s) => {
            if !take_token(cfg) {
                bump(&IDS_STATS, IS_SAMPLED_PACKETS);
                return;
            }
            s.why as u8
        }
        None => {
            let Some(why) = preselect(ctx, p.proto, sport, dport, at, plen) else {
                return;
            };
            let state = if take_token(cfg) {
                bump(&IDS_STATS, IS_FLOWS_SELECTED);
                IDS_FLOW_SELECTED
            } else {
                bump(&IDS_STATS, IS_FLOWS_SAMPLED_OUT);
                IDS_FLOW_SAMPLED_OUT
            };
            let value = IdsFlowState {
                state,
                why: u32::from(why),
            };
            let reverse = IdsFlowKey {
                sport: key.dport,
                dport: key.sport,
                src: key.dst,
                dst: key.src,
                ..key
            };
            let _ = IDS_FLOWS.insert(&key, &value, 0);
            let _ = IDS_FLOWS.insert(&reverse, &value, 0);
            if state == IDS_FLOW_SAMPLED_OUT {
                return;
            }
            why
        }
    };
    let seq = if p.proto == IPPROTO_TCP {
        ctx.load::<u32>(l4 + 4).map_or(0, u32::from_be)
    } else {
        0
    };
    emit(ctx, &key, (why, p.tcp_flags, seq), at, plen);
}

/// The port group's mode, then the prefilter: Some(why) when the packet's flow is selected.
#[inline(always)]
fn preselect(
    ctx: &TcContext,
    proto: u8,
    sport: u16,
    dport: u16,
    at: usize,
    plen: usize,
) -> Option<u8> {
    let gproto = if proto == IPPROTO_ICMPV6 {
        IPPROTO_ICMP
    } else {
        proto
    };
    let mut mode = 0u32;
    for (proto, port) in [(gproto, dport), (gproto, sport), (gproto, 0), (0, 0)] {
        let k = IdsPortKey {
            proto,
            _pad: 0,
            port,
        };
        if let Some(g) = IDS_PORT_GROUPS.get_ptr(&k) {
            // SAFETY: a map value, read once.
            mode |= unsafe { (*g).mode };
        }
    }
    if mode == 0 {
        bump(&IDS_STATS, IS_NO_GROUP);
        return None;
    }
    if mode & IDS_MODE_ALL != 0 {
        return Some(IDS_WHY_GROUP_ALL);
    }
    if mode & IDS_MODE_PREFILTER == 0 {
        return None;
    }
    let buf = IDS_SCRATCH.get_ptr_mut(0)?;
    let grams = IDS_GRAMS.get(0)?;
    let n = if plen > IDS_WINDOW { IDS_WINDOW } else { plen };
    // In 1..=IDS_WINDOW, in a form the verifier follows.
    let size = (((n - 1) & (IDS_WINDOW - 1)) + 1) as u32;
    // SAFETY: the per-CPU scratch holds IDS_SCAN_BYTES bytes. It is zeroed first: the scan
    // reads past a short payload, and must not see the previous packet's bytes there. The
    // helper checks the packet range.
    let rc = unsafe {
        let bytes = buf.cast::<u8>();
        for i in 0..IDS_SCAN_BYTES {
            core::ptr::write_volatile(bytes.add(i), 0);
        }
        bpf_skb_load_bytes(ctx.skb.skb as *const c_void, at as u32, buf.cast(), size)
    };
    if rc != 0 {
        bump(&IDS_STATS, IS_NOT_PARSED);
        return None;
    }
    // SAFETY: the scratch, this CPU's, written just above.
    let r = prefilter(grams, unsafe { &*buf }, plen);
    if r == IDS_PF_HIT {
        Some(IDS_WHY_PREFILTER)
    } else if r == IDS_PF_MISS || proto != IPPROTO_TCP {
        bump(&IDS_STATS, IS_PREFILTER_MISS);
        None
    } else {
        Some(IDS_WHY_SHORT)
    }
}

/// Takes one record's token from this CPU's bucket; false when it is empty or the ring is
/// above its high-water mark.
#[inline(always)]
fn take_token(cfg: &IdsConfig) -> bool {
    if cfg.ring_high_water != 0
        && IDS_RECORDS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(cfg.ring_high_water)
    {
        return false;
    }
    let Some(b) = IDS_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let rate = u64::from(cfg.budget_per_sec);
    let cap = rate * NS_PER_SEC;
    // SAFETY: this CPU's slot; no other writer.
    unsafe {
        let mut elapsed = now.wrapping_sub((*b).last_ns);
        if elapsed > NS_PER_SEC {
            elapsed = NS_PER_SEC;
        }
        (*b).last_ns = now;
        let mut tokens = (*b).tokens + elapsed * rate;
        if tokens > cap {
            tokens = cap;
        }
        if tokens < NS_PER_SEC {
            (*b).tokens = tokens;
            return false;
        }
        (*b).tokens = tokens - NS_PER_SEC;
    }
    true
}

/// Sends the payload (up to `IDS_RECORD_BYTES`) on the ring.
#[inline(always)]
fn emit(
    ctx: &TcContext,
    key: &IdsFlowKey,
    (why, tcp_flags, seq): (u8, u8, u32),
    at: usize,
    plen: usize,
) {
    let Some(mut entry) = IDS_RECORDS.reserve::<IdsRecord>(0) else {
        bump(&IDS_STATS, IS_LOST);
        return;
    };
    let n = if plen > IDS_RECORD_BYTES {
        bump(&IDS_STATS, IS_TRUNCATED);
        IDS_RECORD_BYTES
    } else {
        plen
    };
    let size = (((n - 1) & (IDS_RECORD_BYTES - 1)) + 1) as u32;
    let rec = entry.as_mut_ptr();
    // SAFETY: the reserved record is ours until submitted or discarded; the helper checks the
    // packet range and `size` fits in `data`.
    let rc = unsafe {
        (*rec).family = key.family;
        (*rec).proto = key.proto;
        (*rec).tcp_flags = tcp_flags;
        (*rec).why = why;
        (*rec).sport = key.sport;
        (*rec).dport = key.dport;
        (*rec).src = key.src;
        (*rec).dst = key.dst;
        (*rec).seq = seq;
        (*rec).payload_len = plen as u32;
        (*rec).len = size;
        (*rec)._pad = 0;
        (*rec).ns = bpf_ktime_get_ns();
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            at as u32,
            (*rec).data.as_mut_ptr().cast(),
            size,
        )
    };
    if rc != 0 {
        entry.discard(0);
        bump(&IDS_STATS, IS_LOST);
        return;
    }
    entry.submit(0);
    bump(&IDS_STATS, IS_RECORDS);
}
