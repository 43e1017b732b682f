//! DNS over TCP as a stream: which bytes of a segment are judged, so that what the resolver
//! reads is what was judged.
//!
//! A TCP receiver keeps the first copy of every byte it accepts and trims overlapping
//! retransmissions, and it drops urgent bytes from the stream. Judging each segment on its
//! own therefore lets a sender show Palisade one query and the resolver another. The
//! tracker below keeps, per flow and direction, the next sequence number it expects and
//! the few most recent positions where a judged segment started (message boundaries). A
//! data segment is inspected only when it starts at one of those positions; every judged
//! segment must hold whole DNS messages, so each accepted byte range is read by the
//! resolver with the boundaries Palisade used.
//!
//! Shared by the kernel hooks and the userspace reference.

/// Segment starts remembered per flow for retransmissions.
pub const BOUNDARIES: usize = 4;
/// DNS messages inspected in one segment; a segment with more is judged malformed.
pub const MAX_MESSAGES: usize = 4;
/// After this long without traffic a SYN on a flow whose stream has advanced starts it
/// afresh (the old connection has closed: the client's TIME_WAIT is 60 s on Linux).
pub const IDLE_RESTART_NS: u64 = 60_000_000_000;

/// `StreamState::flags`: a FIN was seen at the expected position (the stream is over).
pub const STREAM_FIN: u32 = 1;
/// `StreamState::flags`: older segment starts than those in `starts` were forgotten, so the
/// stream's first byte is no longer a position a retransmission may start from.
pub const STREAM_FORGOT: u32 = 2;

/// Per-flow stream position (map value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct StreamState {
    /// First sequence number of the stream (ISN + 1).
    pub first: u32,
    /// Sequence number of the next byte not yet judged.
    pub next: u32,
    /// Starts of the most recent judged segments, newest first; `next` itself is always a
    /// boundary and is not stored here.
    pub starts: [u32; BOUNDARIES],
    /// How many of `starts` are valid.
    pub known: u32,
    pub flags: u32,
    /// Last time the flow was seen, ns on the tracker's clock.
    pub last_ns: u64,
}

/// Key of the stream map: the flow as the sender sees it, and the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct StreamKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    /// The DNS scope (hook) that tracks it.
    pub scope: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` data without padding holes.
unsafe impl aya::Pod for StreamState {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for StreamKey {}

const _: () = assert!(core::mem::size_of::<StreamState>() == 40);
const _: () = assert!(core::mem::size_of::<StreamKey>() == 40);

/// What to do with one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// No payload (handshake, ACK, FIN): nothing to judge. The state may have changed.
    Empty,
    /// Judge the payload's messages; on a pass, call [`StreamState::judged`].
    Inspect,
    /// The segment cannot be judged as the receiver will read it: drop it (reason
    /// `dns-stream`). The sender retransmits from a position Palisade knows.
    Reject,
}

/// TCP flags the tracker looks at.
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;
const URG: u8 = 0x20;

/// Whether `a` is before `b` in sequence space.
#[inline(always)]
#[must_use]
pub const fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl StreamState {
    /// A stream starting after a SYN with sequence number `isn`.
    #[inline(always)]
    #[must_use]
    pub const fn opened(isn: u32, now: u64) -> Self {
        let first = isn.wrapping_add(1);
        Self {
            first,
            next: first,
            starts: [0; BOUNDARIES],
            known: 0,
            flags: 0,
            last_ns: now,
        }
    }

    /// Whether the stream has carried data (a SYN no longer restarts it unless it is over).
    #[inline(always)]
    #[must_use]
    pub const fn advanced(&self) -> bool {
        self.next != self.first
    }

    /// Whether `seq` is a position the tracker knows to be a message boundary.
    #[inline(always)]
    #[must_use]
    pub fn is_boundary(&self, seq: u32) -> bool {
        if seq == self.next || (seq == self.first && self.flags & STREAM_FORGOT == 0) {
            return true;
        }
        let mut i = 0;
        while i < BOUNDARIES {
            if (i as u32) < self.known && self.starts[i] == seq {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Records a judged, passed segment `[seq, seq + len)` holding whole messages.
    #[inline(always)]
    pub fn judged(&mut self, seq: u32, len: u32, now: u64) {
        if seq != self.first && !self.is_remembered(seq) {
            let mut i = BOUNDARIES - 1;
            while i > 0 {
                self.starts[i] = self.starts[i - 1];
                i -= 1;
            }
            self.starts[0] = seq;
            if (self.known as usize) < BOUNDARIES {
                self.known += 1;
            } else {
                self.flags |= STREAM_FORGOT;
            }
        }
        let end = seq.wrapping_add(len);
        if seq_before(self.next, end) {
            self.next = end;
        }
        self.last_ns = now;
    }

    /// Whether the messages `m` of a segment starting at `seq` break exactly where the
    /// receiver may switch from an earlier copy of the stream to this one: at every known
    /// boundary inside the segment. A retransmission that carries different bytes is thus
    /// read by the resolver with the same message boundaries Palisade judged.
    #[inline(always)]
    #[must_use]
    pub fn aligned(&self, seq: u32, len: u32, m: &Messages) -> bool {
        let mut i = 0;
        while i <= BOUNDARIES {
            let x = if i == BOUNDARIES {
                Some(self.next)
            } else if (i as u32) < self.known {
                Some(self.starts[i])
            } else {
                None
            };
            if let Some(x) = x {
                let rel = x.wrapping_sub(seq);
                if rel != 0 && rel < len && !m.starts_at(rel) {
                    return false;
                }
            }
            i += 1;
        }
        true
    }

    #[inline(always)]
    fn is_remembered(&self, seq: u32) -> bool {
        let mut i = 0;
        while i < BOUNDARIES {
            if (i as u32) < self.known && self.starts[i] == seq {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Decides what to do with a segment of a DNS flow and updates (or creates) its state.
///
/// `state` is the flow's state if the tracker has one; the result says whether the caller
/// must store `state` (`true`) afterwards. A data segment on a flow whose handshake was not
/// seen is rejected: its message boundaries are unknown (fail closed; the client's next
/// connection is tracked from its SYN).
#[inline(always)]
pub fn classify(
    state: &mut Option<StreamState>,
    seq: u32,
    flags: u8,
    payload: u32,
    now: u64,
) -> (Segment, bool) {
    if flags & SYN != 0 {
        let restart = match state {
            None => true,
            Some(s) => {
                !s.advanced()
                    || s.flags & STREAM_FIN != 0
                    || now.wrapping_sub(s.last_ns) > IDLE_RESTART_NS
            }
        };
        if restart {
            *state = Some(StreamState::opened(seq, now));
        }
        if payload == 0 {
            return (Segment::Empty, restart);
        }
        // Data on a SYN (TCP Fast Open) starts at ISN + 1.
        return match state {
            Some(s) if s.first == seq.wrapping_add(1) => (Segment::Inspect, restart),
            _ => (Segment::Reject, restart),
        };
    }
    let Some(s) = state else {
        return if payload == 0 {
            (Segment::Empty, false)
        } else {
            (Segment::Reject, false)
        };
    };
    if payload == 0 {
        if flags & FIN != 0 && flags & RST == 0 && seq == s.next {
            s.flags |= STREAM_FIN;
            s.last_ns = now;
            return (Segment::Empty, true);
        }
        return (Segment::Empty, false);
    }
    // An urgent byte leaves the stream the resolver reads (without SO_OOBINLINE), and data
    // after the FIN is never read at all.
    if flags & URG != 0 || s.flags & STREAM_FIN != 0 || !s.is_boundary(seq) {
        return (Segment::Reject, false);
    }
    (Segment::Inspect, false)
}

/// Where the messages of a segment are, from its payload length and a reader of the 2-byte
/// length prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Messages {
    /// Offset of each message (after its length prefix) from the payload start.
    pub offsets: [u16; MAX_MESSAGES],
    pub lens: [u16; MAX_MESSAGES],
    pub count: u8,
}

impl Messages {
    /// Whether a message's length prefix starts `rel` bytes into the payload.
    #[inline(always)]
    #[must_use]
    pub fn starts_at(&self, rel: u32) -> bool {
        let mut i = 0;
        while i < MAX_MESSAGES {
            if i < usize::from(self.count) && u32::from(self.offsets[i]) == rel + 2 {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Splits a payload of `len` bytes into whole length-prefixed messages; `None` when it is
/// not exactly a sequence of at most [`MAX_MESSAGES`] whole messages (a message split
/// across segments, a short prefix, or too many messages).
#[inline(always)]
pub fn split(len: usize, mut prefix_at: impl FnMut(usize) -> Option<u16>) -> Option<Messages> {
    let mut out = Messages::default();
    let mut off = 0usize;
    let mut i = 0;
    while i < MAX_MESSAGES {
        if off == len {
            break;
        }
        if off + 2 > len {
            return None;
        }
        let n = usize::from(prefix_at(off)?);
        let body = off + 2;
        if n == 0 || body + n > len {
            return None;
        }
        out.offsets[i] = body as u16;
        out.lens[i] = n as u16;
        out.count += 1;
        off = body + n;
        i += 1;
    }
    if off != len || out.count == 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISN: u32 = 1000;

    fn open() -> Option<StreamState> {
        let mut st = None;
        assert_eq!(classify(&mut st, ISN, SYN, 0, 0), (Segment::Empty, true));
        st
    }

    #[test]
    fn in_order_segments_are_inspected_and_advance() {
        let mut st = open();
        assert_eq!(classify(&mut st, ISN + 1, 0x18, 30, 1).0, Segment::Inspect);
        st.as_mut().unwrap().judged(ISN + 1, 30, 1);
        assert_eq!(st.unwrap().next, ISN + 31);
        assert_eq!(classify(&mut st, ISN + 31, 0x18, 20, 2).0, Segment::Inspect);
    }

    #[test]
    fn overlapping_or_gapped_segments_are_rejected() {
        let mut st = open();
        st.as_mut().unwrap().judged(ISN + 1, 30, 1);
        // Starts inside judged data.
        assert_eq!(classify(&mut st, ISN + 11, 0x18, 40, 2).0, Segment::Reject);
        // Starts past the next expected byte (the gap is unknown).
        assert_eq!(classify(&mut st, ISN + 41, 0x18, 10, 2).0, Segment::Reject);
        // A retransmission from a known boundary is judged again.
        assert_eq!(classify(&mut st, ISN + 1, 0x18, 30, 2).0, Segment::Inspect);
    }

    #[test]
    fn retransmissions_from_remembered_starts_are_judged_again() {
        let mut st = open();
        let s = st.as_mut().unwrap();
        let mut seq = ISN + 1;
        for _ in 0..6 {
            s.judged(seq, 10, 1);
            seq += 10;
        }
        let s = st.unwrap();
        for back in 1..=BOUNDARIES as u32 {
            assert!(s.is_boundary(seq - 10 * back), "{back}");
        }
        assert!(!s.is_boundary(seq - 10 * (BOUNDARIES as u32 + 1)));
        assert!(!s.is_boundary(s.first));
    }

    #[test]
    fn retransmissions_must_break_where_the_receiver_may_switch_copies() {
        let mut st = open();
        let s = st.as_mut().unwrap();
        s.judged(ISN + 1, 10, 1);
        s.judged(ISN + 11, 10, 1);
        let s = st.unwrap();
        // One 28-byte message over [ISN+1, ISN+31): its middle covers the known boundaries
        // ISN+11 and ISN+21, where the receiver may continue with this copy.
        let one = Messages {
            offsets: [2, 0, 0, 0],
            lens: [28, 0, 0, 0],
            count: 1,
        };
        assert!(!s.aligned(ISN + 1, 30, &one));
        // Messages at 0, 10 and 20: aligned.
        let three = Messages {
            offsets: [2, 12, 22, 0],
            lens: [8, 8, 8, 0],
            count: 3,
        };
        assert!(s.aligned(ISN + 1, 30, &three));
        // Boundaries outside the segment do not matter.
        assert!(s.aligned(ISN + 21, 10, &one));
    }

    #[test]
    fn the_first_byte_stops_being_a_boundary_once_starts_are_forgotten() {
        let mut st = open();
        let s = st.as_mut().unwrap();
        let mut seq = ISN + 1;
        // The first segment starts at `first`, which is not stored among the starts.
        for _ in 0..=BOUNDARIES {
            s.judged(seq, 10, 1);
            seq += 10;
        }
        assert!(s.is_boundary(ISN + 1));
        s.judged(seq, 10, 1);
        assert!(!s.is_boundary(ISN + 1));
    }

    #[test]
    fn urgent_data_and_data_after_fin_are_rejected() {
        let mut st = open();
        assert_eq!(classify(&mut st, ISN + 1, 0x38, 30, 1).0, Segment::Reject);
        assert_eq!(
            classify(&mut st, ISN + 1, FIN | 0x10, 0, 1),
            (Segment::Empty, true)
        );
        assert_eq!(classify(&mut st, ISN + 1, 0x18, 30, 1).0, Segment::Reject);
    }

    #[test]
    fn unknown_flows_are_rejected_and_syn_cannot_rewind_a_live_stream() {
        let mut st = None;
        assert_eq!(classify(&mut st, 5, 0x18, 30, 0), (Segment::Reject, false));
        let mut st = open();
        st.as_mut().unwrap().judged(ISN + 1, 30, 1);
        // A SYN in the middle of a live stream keeps the position.
        assert_eq!(
            classify(&mut st, ISN + 10, SYN, 0, 2),
            (Segment::Empty, false)
        );
        assert_eq!(st.unwrap().next, ISN + 31);
        // Idle long enough (a new connection on the same ports): restarted.
        let later = 2 + IDLE_RESTART_NS + 1;
        assert_eq!(classify(&mut st, 7, SYN, 0, later), (Segment::Empty, true));
        assert_eq!(st.unwrap().next, 8);
    }

    #[test]
    fn split_finds_whole_messages_only() {
        let payload = [0u8, 3, 1, 2, 3, 0, 2, 9, 9];
        let read = |o: usize| Some(u16::from_be_bytes([payload[o], payload[o + 1]]));
        let m = split(payload.len(), read).unwrap();
        assert_eq!(m.count, 2);
        assert_eq!((m.offsets[0], m.lens[0]), (2, 3));
        assert_eq!((m.offsets[1], m.lens[1]), (7, 2));
        assert_eq!(split(payload.len() - 1, read), None);
        assert_eq!(split(1, read), None);
        let many = [0u8, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0];
        let read = |o: usize| Some(u16::from_be_bytes([many[o], many[o + 1]]));
        assert_eq!(split(many.len(), read), None);
        assert_eq!(split(12, read).unwrap().count, 4);
    }
}
