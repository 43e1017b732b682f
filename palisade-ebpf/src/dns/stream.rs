//! DNS over TCP in the hooks: finds a segment's payload, checks it against the flow's
//! stream position ([`palisade_common::dns::stream`]) and splits it into messages. The hook
//! inspects each message and records the segment once it has passed.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use palisade_common::{
    dns::stream::{self, Messages, Segment, StreamKey, StreamState},
    packet::{Bytes, MAX_L4_OFFSET, Packet},
};

use crate::maps::DNS_STREAMS;

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
