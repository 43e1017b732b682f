//! DNS over TCP in the hooks: finds a segment's payload, checks it against the flow's
//! stream position ([`palisade_common::dns::stream`]) and splits it into messages. The hook
//! inspects each message and records the segment once it has passed.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use palisade_common::{
    dns::{
        maps::{STAT_QUERIES, STAT_TCP},
        stream::{self, MAX_MESSAGES, Messages, Segment, StreamKey, StreamState},
        wire::INSPECT_LEN,
    },
    packet::{Bytes, MAX_L4_OFFSET, Packet},
    reason,
};

use super::{
    inspect::{self, Decision, Request},
    report,
};
use crate::maps::{DNS_SCRATCH, DNS_STREAMS};

/// The hook that judges a segment: its scratch slot, its scope, the policy generation, and
/// whether the scope only audits.
pub struct Hook {
    pub slot: u32,
    pub scope: u8,
    pub generation: u32,
    pub audit: bool,
}

/// What became of a TCP segment.
pub enum Judged {
    /// No payload (handshake, ACK, FIN): nothing to judge.
    Empty,
    /// Judged: the decision is in the hook's `Decision`.
    Judged,
    /// The TCP header cannot be read.
    Unreadable,
    /// Palisade itself failed.
    Internal,
}

/// Judges a TCP segment as the resolver will read the stream: every message in it (glibc's
/// `use-vc` writes its A and AAAA queries in one segment), the first that is not passed
/// deciding; a segment the stream cannot place is `dns-stream`, one that is not whole
/// messages is malformed (after the rate limit took its token). A segment that passes (or
/// is audited) moves the stream on. `copy(off, len)` copies the message at frame offset
/// `off` into the hook's scratch and returns the bytes copied.
#[inline(always)]
pub fn judge<B: Bytes>(
    b: &B,
    frame_len: usize,
    h: &Hook,
    d: &mut Decision,
    mut copy: impl FnMut(usize, usize) -> Option<usize>,
) -> Judged {
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(h.slot) else {
        return Judged::Internal;
    };
    // SAFETY: the hook's own per-CPU scratch slot.
    let s = unsafe { &mut *scratch };
    let Some(seg) = payload(b, &s.packet, frame_len) else {
        return Judged::Unreadable;
    };
    s.segment = seg;
    let what = plan(b, &s.packet, h.scope, &s.segment, &mut s.messages);
    if what == Plan::Empty {
        return Judged::Empty;
    }
    let mut req = Request {
        slot: h.slot,
        scope: h.scope,
        generation: h.generation,
        msg_len: 0,
        total_len: 0,
        whole: false,
    };
    if what == Plan::Inspect {
        let mut k = 0;
        while k < MAX_MESSAGES && k < usize::from(s.messages.count) {
            report::count(h.scope, STAT_QUERIES);
            report::count(h.scope, STAT_TCP);
            let len = usize::from(s.messages.lens[k]);
            let Some(copied) = copy(s.segment.off + usize::from(s.messages.offsets[k]), len) else {
                return Judged::Internal;
            };
            req.msg_len = copied.min(INSPECT_LEN);
            req.total_len = len;
            req.whole = true;
            if !inspect::inspect(&req, d) {
                return Judged::Internal;
            }
            if d.reason != reason::PASS {
                break;
            }
            k += 1;
        }
    } else {
        report::count(h.scope, STAT_QUERIES);
        report::count(h.scope, STAT_TCP);
        if what == Plan::Reject {
            d.reason = reason::DNS_STREAM;
        } else if !inspect::inspect(&req, d) {
            return Judged::Internal;
        }
    }
    if d.reason == reason::PASS || h.audit {
        passed(&s.packet, h.scope, &s.segment);
    }
    Judged::Judged
}

/// Length prefixes are read up to this offset in the frame; a segment whose messages run
/// past it is malformed (queries are small; a segment of 4 of them stays far below).
const MAX_PREFIX_OFFSET: usize = 8192;

/// A TCP segment's payload.
#[derive(Clone, Copy)]
pub struct Payload {
    /// Offset of the payload in the frame.
    pub off: usize,
    pub len: usize,
    pub seq: u32,
}

/// What the hook does with a segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// No payload: pass, nothing to judge.
    Empty,
    /// Not at a position where Palisade knows how the resolver will read it: drop.
    Reject,
    /// Not a sequence of whole messages: judged as malformed.
    Malformed,
    /// Inspect the messages [`plan`] wrote out (offsets relative to the payload).
    Inspect,
}

/// Locates the payload of the TCP segment `p`; `None` when the header cannot be read.
#[inline(always)]
pub fn payload<B: Bytes>(b: &B, p: &Packet, frame_len: usize) -> Option<Payload> {
    let l4 = usize::from(p.l4_offset);
    if l4 > MAX_L4_OFFSET {
        return None;
    }
    let h: [u8; 13] = b.load(l4)?;
    let off = l4 + usize::from(h[12] >> 4) * 4;
    let ip_end = (l4 + usize::from(p.l4_len)).min(frame_len);
    Some(Payload {
        off,
        len: ip_end.saturating_sub(off),
        seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
    })
}

#[inline(always)]
fn key(p: &Packet, scope: u8) -> StreamKey {
    StreamKey {
        src: p.src_words(),
        dst: p.dst_words(),
        sport: p.sport,
        dport: p.dport,
        scope: u32::from(scope),
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper with no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Checks the segment against the flow's stream and splits its payload into messages.
/// Not inlined: the flow's key and state stay out of the frames under the inspector.
#[inline(never)]
pub fn plan<B: Bytes>(b: &B, p: &Packet, scope: u8, seg: &Payload, out: &mut Messages) -> Plan {
    let k = key(p, scope);
    // SAFETY: the value is copied out at once.
    let mut state = unsafe { DNS_STREAMS.get(&k) }.copied();
    let len = seg.len.min(usize::from(u16::MAX));
    let (what, store) = stream::classify(&mut state, seg.seq, p.tcp_flags, len as u32, now());
    if store {
        if let Some(s) = &state {
            // A full map evicts its least recently used flow; that flow's next data
            // segment is then rejected (its boundaries are unknown), never passed.
            let _ = DNS_STREAMS.insert(&k, s, 0);
        }
    }
    match what {
        Segment::Empty => Plan::Empty,
        Segment::Reject => Plan::Reject,
        Segment::Inspect => {
            let off = seg.off;
            if off > MAX_L4_OFFSET + 64 {
                return Plan::Malformed;
            }
            let Some(m) = stream::split(len, |rel| {
                let at = off + rel;
                // For the verifier: packet offsets must stay below 64 KiB.
                if at > MAX_PREFIX_OFFSET {
                    return None;
                }
                b.load::<2>(at).map(u16::from_be_bytes)
            }) else {
                return Plan::Malformed;
            };
            match &state {
                Some(s) if !s.aligned(seg.seq, len as u32, &m) => Plan::Reject,
                _ => {
                    *out = m;
                    Plan::Inspect
                }
            }
        }
    }
}

/// Records a segment the hook passed: the stream moves past it.
#[inline(always)]
pub fn passed(p: &Packet, scope: u8, seg: &Payload) {
    let k = key(p, scope);
    if let Some(s) = DNS_STREAMS.get_ptr_mut(&k) {
        // SAFETY: pointer from a successful lookup; a concurrent update of the same flow
        // (two CPUs) can only lose a position, which makes later segments rejected, never
        // passed unjudged.
        let s: &mut StreamState = unsafe { &mut *s };
        s.judged(seg.seq, seg.len as u32, now());
    }
}
