//! The `[tls]` gate on the guarded interfaces: TC programs, one per direction, that hold a
//! TCP flow to a watched port until the daemon has read the client's ClientHello, then
//! enforce its verdict (see `docs/design/tls.md`).
//!
//! - A client's SYN to a watched port puts the flow in `TLS_FLOWS` as pending.
//! - While pending, the client's segments pass and are copied to the daemon on
//!   `TLS_SEGMENTS`; the server's segments that carry data are dropped, so nothing of the
//!   server reaches the client before the verdict (the server retransmits them once the flow
//!   is allowed).
//! - Allowed: everything passes. Blocked: everything but resets is dropped, both ways.
//! - UDP to a watched port is QUIC: dropped when the policy says so.
//!
//! Fail-open: packets the gate cannot parse, flows it has no entry for, and internal errors
//! pass (counted). Fail-closed: what the daemon refused, and server data before a verdict.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use palisade_common::{
    packet::{self, FRAG_NONE, Frame, IPPROTO_TCP, IPPROTO_UDP, Packet, TCP_ACK, TCP_RST, TCP_SYN},
    reason, stats,
    tls::gate::{
        FLOW_ALLOWED, FLOW_BLOCKED, FLOW_PENDING, GATE_BLOCK_QUIC, GATE_FAIL_CLOSED, GATE_ON,
        GateFlow, GateKey, MAX_SEGMENT_RECORDS, PENDING_LIMIT, SEGMENT_BYTES, SINCE_SHIFT,
        SegmentRecord, TS_ADOPTED, TS_BLOCKED_DROPS, TS_FLOWS, TS_NOT_PARSED, TS_QUIC_DROPS,
        TS_RECORD_LOST, TS_RECORDS, TS_SERVER_HELD, TS_STALE, TS_UNTRACKED,
    },
};

use crate::{
    bytes::TcBytes,
    maps::{CONTROL, STATS, TLS_CONFIG, TLS_FLOWS, TLS_SEGMENTS, TLS_STATS, bump},
};

/// What the gate does with a packet.
enum Verdict {
    Pass,
    /// Dropped with a reason (`reason::TLS_*`), counted under a gate counter.
    Drop {
        reason: u32,
        counter: u32,
    },
}

/// The gate, for either direction: the client and the server are told apart by the watched
/// port, so the same code serves a guarded host that is the server, the client, or a router
/// between them.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    // The one exit: a drop is counted (with every drop, and by reason) here.
    match decide(ctx) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop { reason, counter } => {
            bump(&TLS_STATS, counter);
            crate::verdict::tc_drop(reason)
        }
    }
}

#[inline(always)]
fn decide(ctx: &TcContext) -> Verdict {
    let Some(control) = CONTROL.get(0) else {
        bump(&STATS, stats::INTERNAL);
        return Verdict::Pass;
    };
    let Some(cfg) = TLS_CONFIG.get(control.active_gen & 1) else {
        bump(&STATS, stats::INTERNAL);
        return Verdict::Pass;
    };
    if cfg.flags & GATE_ON == 0 {
        return Verdict::Pass;
    }
    let bytes = TcBytes::of(ctx);
    let p = match packet::parse(&bytes) {
        Ok(Frame::Ip(p)) => p,
        Ok(Frame::NotIp) => return Verdict::Pass,
        Err(_) => {
            bump(&TLS_STATS, TS_NOT_PARSED);
            return Verdict::Pass;
        }
    };
    if p.frag != FRAG_NONE {
        return Verdict::Pass;
    }
    if p.proto == IPPROTO_UDP {
        if cfg.flags & GATE_BLOCK_QUIC != 0 && cfg.watches(p.dport) {
            return Verdict::Drop {
                reason: reason::TLS_QUIC,
                counter: TS_QUIC_DROPS,
            };
        }
        return Verdict::Pass;
    }
    if p.proto != IPPROTO_TCP {
        return Verdict::Pass;
    }
    let to_server = cfg.watches(p.dport);
    if !to_server && !cfg.watches(p.sport) {
        return Verdict::Pass;
    }
    let key = if to_server {
        GateKey {
            client: p.src,
            server: p.dst,
            client_port: p.sport,
            server_port: p.dport,
            _pad: 0,
        }
    } else {
        GateKey {
            client: p.dst,
            server: p.src,
            client_port: p.dport,
            server_port: p.sport,
            _pad: 0,
        }
    };
    let l4 = usize::from(p.l4_offset);
    let Ok(head) = ctx.load::<[u8; 13]>(l4) else {
        bump(&TLS_STATS, TS_NOT_PARSED);
        return Verdict::Pass;
    };
    let seq = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let ack = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    if to_server && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        let flow = GateFlow {
            state: FLOW_PENDING,
            base: seq.wrapping_add(1),
            reason: 0,
            since: now_units(),
        };
        // A retransmitted SYN (or a new connection on the same ports) starts over.
        if TLS_FLOWS.insert(&key, &flow, 0).is_ok() {
            bump(&TLS_STATS, TS_FLOWS);
        }
        return Verdict::Pass;
    }
    let header = usize::from(head[12] >> 4) * 4;
    let payload = usize::from(p.l4_len).saturating_sub(header);
    // SAFETY: the entry is read by value right away; the daemon only ever replaces it.
    let Some(flow) = (unsafe { TLS_FLOWS.get(&key) }).copied() else {
        if to_server && begins_hello(ctx, l4 + header, payload) {
            // A flow whose entry was evicted (a flood of SYNs to the watched ports fills
            // the table) or whose SYN was missed: were it let through untracked, evicting
            // one's own entry would pass any hello. The hello starts here, so the gate holds
            // the flow from this byte on.
            let flow = GateFlow {
                state: FLOW_PENDING,
                base: seq,
                reason: 0,
                since: now_units(),
            };
            if TLS_FLOWS.insert(&key, &flow, 0).is_ok() {
                bump(&TLS_STATS, TS_ADOPTED);
                copy_out(ctx, &key, &flow, (seq, ack), l4 + header, payload);
                return Verdict::Pass;
            }
        }
        bump(&TLS_STATS, TS_UNTRACKED);
        return Verdict::Pass;
    };
    match flow.state {
        FLOW_BLOCKED if p.tcp_flags & TCP_RST != 0 && payload == 0 => Verdict::Pass,
        FLOW_BLOCKED => Verdict::Drop {
            reason: flow.reason,
            counter: TS_BLOCKED_DROPS,
        },
        FLOW_PENDING if payload == 0 => Verdict::Pass,
        // The daemon did not answer in time: the gate decides alone, as `malformed` says.
        FLOW_PENDING if now_units().wrapping_sub(flow.since) > PENDING_LIMIT => {
            if cfg.flags & GATE_FAIL_CLOSED != 0 {
                Verdict::Drop {
                    reason: reason::TLS_INCOMPLETE,
                    counter: TS_STALE,
                }
            } else {
                bump(&TLS_STATS, TS_STALE);
                Verdict::Pass
            }
        }
        FLOW_PENDING if to_server => {
            copy_out(ctx, &key, &flow, (seq, ack), l4 + header, payload);
            Verdict::Pass
        }
        FLOW_PENDING => Verdict::Drop {
            reason: reason::TLS_INCOMPLETE,
            counter: TS_SERVER_HELD,
        },
        FLOW_ALLOWED => Verdict::Pass,
        _ => Verdict::Pass,
    }
}

/// Whether the segment's payload (`len` bytes at frame offset `at`) begins a ClientHello: a
/// TLS handshake record (type 22, version 3.0 to 3.4, a length a record can have) whose
/// first message is a ClientHello (type 1) shorter than 64 KiB. The record header and the
/// message header together leave an encrypted handshake record (a TLS 1.2 renegotiation)
/// about one chance in 65,536 to pass for a hello.
#[inline(always)]
fn begins_hello(ctx: &TcContext, at: usize, len: usize) -> bool {
    if len < 9 {
        return false;
    }
    let Ok(b) = ctx.load::<[u8; 9]>(at) else {
        return false;
    };
    let record = u16::from_be_bytes([b[3], b[4]]);
    b[0] == 22 && b[1] == 3 && b[2] <= 4 && (4..=18_432).contains(&record) && b[5] == 1 && b[6] == 0
}

/// For the XDP firewall: the reason a packet arriving on a guarded interface belongs to a
/// flow the gate refused, or 0. Resets and new SYNs are let on to the gate in TC (a reset
/// closes the flow; a SYN starts the ports over). What no gate can concern is decided here,
/// inline; the flow lookup is a call of its own, so the firewall's frame stays as it was and
/// a packet the gate is off for pays no call.
#[inline(always)]
pub fn refused_at_xdp(generation: u32, p: &Packet) -> u32 {
    if p.proto != IPPROTO_TCP || p.frag != FRAG_NONE || p.tcp_flags & (TCP_RST | TCP_SYN) != 0 {
        return 0;
    }
    match TLS_CONFIG.get(generation) {
        Some(cfg) if cfg.flags & GATE_ON != 0 => refused_flow(generation, p),
        _ => 0,
    }
}

/// [`refused_at_xdp`] past its checks: the flow's verdict, for a TCP segment (neither a reset
/// nor a SYN) while the gate is on. It reads the configuration again rather than taking the
/// caller's map-value pointer: with the pointer as an argument the verifier processed about
/// 65,000 more instructions for `palisade_firewall` (measured: 325k against 260k).
#[inline(never)]
fn refused_flow(generation: u32, p: &Packet) -> u32 {
    let Some(cfg) = TLS_CONFIG.get(generation) else {
        return 0;
    };
    let to_server = cfg.watches(p.dport);
    if !to_server && !cfg.watches(p.sport) {
        return 0;
    }
    let key = if to_server {
        GateKey {
            client: p.src,
            server: p.dst,
            client_port: p.sport,
            server_port: p.dport,
            _pad: 0,
        }
    } else {
        GateKey {
            client: p.dst,
            server: p.src,
            client_port: p.dport,
            server_port: p.sport,
            _pad: 0,
        }
    };
    // SAFETY: read by value at once.
    match unsafe { TLS_FLOWS.get(&key) } {
        Some(flow) if flow.state == FLOW_BLOCKED => {
            bump(&TLS_STATS, TS_BLOCKED_DROPS);
            flow.reason
        }
        _ => 0,
    }
}

/// The monotonic clock in the units of [`GateFlow::since`].
#[inline(always)]
fn now_units() -> u32 {
    // SAFETY: the helper has no preconditions.
    (unsafe { bpf_ktime_get_ns() } >> SINCE_SHIFT) as u32
}

/// Copies `len` client bytes at frame offset `at` (sequence number `seq`, acknowledging
/// `ack`) to the daemon, in records of [`SEGMENT_BYTES`].
#[inline(always)]
fn copy_out(
    ctx: &TcContext,
    key: &GateKey,
    flow: &GateFlow,
    (seq, ack): (u32, u32),
    at: usize,
    len: usize,
) {
    let mut done = 0usize;
    for _ in 0..MAX_SEGMENT_RECORDS {
        if done >= len {
            return;
        }
        let n = (len - done).min(SEGMENT_BYTES);
        let Some(mut entry) = TLS_SEGMENTS.reserve::<SegmentRecord>(0) else {
            bump(&TLS_STATS, TS_RECORD_LOST);
            return;
        };
        let rec = entry.as_mut_ptr();
        // `(n - 1) % SEGMENT_BYTES + 1` keeps the copy's size in 1..=SEGMENT_BYTES in a form
        // the verifier can follow.
        let size = (((n - 1) & (SEGMENT_BYTES - 1)) + 1) as u32;
        // SAFETY: the reserved record is this program's until submitted or discarded; the
        // helper checks the packet range and `size` fits in `data`.
        let rc = unsafe {
            (*rec).key = *key;
            (*rec).base = flow.base;
            (*rec).seq = seq.wrapping_add(done as u32);
            (*rec).len = size;
            (*rec).ack = ack;
            bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                (at + done) as u32,
                (*rec).data.as_mut_ptr().cast(),
                size,
            )
        };
        if rc != 0 {
            entry.discard(0);
            bump(&TLS_STATS, TS_RECORD_LOST);
            return;
        }
        entry.submit(0);
        bump(&TLS_STATS, TS_RECORDS);
        done += n;
    }
    if done < len {
        bump(&TLS_STATS, TS_RECORD_LOST);
    }
}
