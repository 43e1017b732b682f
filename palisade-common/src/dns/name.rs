//! The QNAME walker: a state machine fed one message byte at a time, so the kernel can run
//! it inside `bpf_loop` (a few bytes per iteration, verified once) and the userspace
//! reference can run it in a plain loop. Labels are compared as length-prefixed wire
//! labels: a `.` byte inside a label is just a byte. Letters are folded to lower case, so
//! 0x20 randomisation does not change the lookup.
//!
//! The walker reads the *logical* name, as a resolver does: compression pointers are
//! followed. A pointer must point strictly backward, before the pointer itself and before
//! every earlier pointer's target, and at most [`MAX_POINTER_HOPS`] are followed. So a
//! walk always ends, loops and forward or self pointers are errors, and every name a
//! resolver could read from the question is the name that is matched. The caller asks
//! [`Walker::at`] for the message offset of the next byte and feeds it.

use super::{
    hash::{HashKey, LabelHasher},
    wire::{MAX_LABELS, MAX_NAME_WIRE},
};

/// Compression pointers followed in one question name, at most. A client never compresses
/// its question; resolvers follow pointers there, so Palisade does too, up to this bound.
pub const MAX_POINTER_HOPS: u8 = 16;

/// Message bytes a walk reads, at most: the logical name (its 256th byte is already an
/// error) and two bytes for each pointer followed, plus the pointer that is refused.
pub const MAX_WALK_BYTES: usize = MAX_NAME_WIRE + 1 + 2 * (MAX_POINTER_HOPS as usize + 1);

/// Why a name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// A compression pointer that does not point strictly backward (forward, at itself, or
    /// not before an earlier pointer's target: a loop).
    BadPointer,
    /// More than [`MAX_POINTER_HOPS`] pointers.
    TooManyPointers,
    /// The reserved 0x40/0x80 label types.
    LabelType,
    /// More than 255 wire bytes.
    TooLong,
    /// The message ended inside the name.
    Truncated,
}

/// What one byte did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A name byte: store it at the logical position it was fed at, keep feeding.
    More,
    /// A label ended: its index, the logical offset of its length byte, and its hash.
    Label {
        index: u8,
        start: u8,
        hash: (u64, u64),
    },
    /// The root byte: the name is complete (`wire_len` logical bytes, root included).
    End {
        wire_len: u16,
    },
    /// A pointer byte: not part of the logical name; keep feeding (at [`Walker::at`]).
    Pointer,
    Error(NameError),
}

/// Walker state. Small and `Copy` so it can live in a `bpf_loop` context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walker {
    /// Message offset of the next byte to feed.
    pub at: u16,
    /// Logical name bytes consumed so far (the position of the next name byte).
    pub pos: u16,
    /// Bytes left in the current label; 0 = the next byte is a length byte.
    pub left: u8,
    /// Length of the current label.
    pub len: u8,
    /// Labels completed.
    pub labels: u8,
    /// Logical offset of the current label's length byte.
    pub start: u8,
    /// Pointers followed.
    pub hops: u8,
    /// First byte of a pointer whose second byte comes next; 0 when none.
    pub pointer: u8,
    /// A pointer's target must be below this: the last target (no bound before the first).
    pub bound: u16,
    /// Bytes the name takes in the message itself (up to its first pointer, or its root
    /// byte); 0 until known.
    pub in_message: u16,
    /// Message offset of the name.
    pub origin: u16,
    pub hasher: LabelHasher,
}

impl Walker {
    /// A walker for the name at message offset `origin`.
    #[inline(always)]
    #[must_use]
    pub const fn new(key: &HashKey, origin: u16) -> Self {
        Self {
            at: origin,
            pos: 0,
            left: 0,
            len: 0,
            labels: 0,
            start: 0,
            hops: 0,
            pointer: 0,
            bound: u16::MAX,
            in_message: 0,
            origin,
            hasher: LabelHasher::new(key),
        }
    }

    /// Whether the next byte is part of the question as it lies in the message (before
    /// the first pointer has been followed).
    #[inline(always)]
    #[must_use]
    pub const fn in_message(&self) -> bool {
        self.hops == 0
    }

    /// Feeds the byte at message offset `self.at`. Returns the byte to store in the
    /// case-folded copy (at logical position `self.pos` as it was before the call) along
    /// with what happened.
    #[inline(always)]
    pub fn step(&mut self, byte: u8, key: &HashKey) -> (u8, Step) {
        let off = self.at;
        self.at = self.at.wrapping_add(1);
        if self.pointer != 0 {
            let target = (u16::from(self.pointer & 0x3f) << 8) | u16::from(byte);
            self.pointer = 0;
            // Strictly before the pointer and before the last target: each hop lands
            // lower, so no walk can come back to a pointer it has already taken.
            if target >= off - 1 || target >= self.bound {
                return (byte, Step::Error(NameError::BadPointer));
            }
            if self.hops >= MAX_POINTER_HOPS {
                return (byte, Step::Error(NameError::TooManyPointers));
            }
            if self.hops == 0 {
                self.in_message = off + 1 - self.origin;
            }
            self.hops += 1;
            self.bound = target;
            self.at = target;
            return (byte, Step::Pointer);
        }
        if self.left == 0 && byte & 0xc0 == 0xc0 {
            self.pointer = byte;
            return (byte, Step::Pointer);
        }
        if usize::from(self.pos) >= MAX_NAME_WIRE {
            return (byte, Step::Error(NameError::TooLong));
        }
        self.pos += 1;
        if self.left == 0 {
            if byte == 0 {
                if self.hops == 0 {
                    self.in_message = off + 1 - self.origin;
                }
                return (0, Step::End { wire_len: self.pos });
            }
            if byte & 0xc0 != 0 {
                return (byte, Step::Error(NameError::LabelType));
            }
            if usize::from(self.labels) >= MAX_LABELS {
                return (byte, Step::Error(NameError::TooLong));
            }
            self.left = byte;
            self.len = byte;
            self.start = (self.pos - 1) as u8;
            self.hasher = LabelHasher::new(key);
            return (byte, Step::More);
        }
        let lower = byte.to_ascii_lowercase();
        self.hasher.push(lower);
        self.left -= 1;
        if self.left == 0 {
            let index = self.labels;
            self.labels += 1;
            return (
                lower,
                Step::Label {
                    index,
                    start: self.start,
                    hash: self.hasher.finish(self.len),
                },
            );
        }
        (lower, Step::More)
    }
}

/// Folds the ASCII capitals among eight bytes to lower case, as `u8::to_ascii_lowercase`
/// does byte by byte (no other byte changes, so length bytes and pointers pass as they are).
/// The kernel's fast path folds a name a word at a time with it.
#[inline(always)]
#[must_use]
pub const fn fold_word(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x80 * ONES;
    // Each byte's low seven bits plus a constant: bit 7 of the sum tells whether the byte
    // is at least b'A' (resp. above b'Z'); the sums stay below 0x100, so no byte carries
    // into the next.
    let low = w & !HIGH;
    let from_a = low + (0x80 - b'A' as u64) * ONES;
    let past_z = low + (0x80 - b'Z' as u64 - 1) * ONES;
    let capital = from_a & !past_z & !w & HIGH;
    w | (capital >> 2)
}

/// A parsed question name, as the userspace reference sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// Case-folded logical wire form (pointers followed), root byte included.
    pub wire: [u8; MAX_NAME_WIRE],
    /// The same bytes as they were sent, letter case kept.
    pub raw: [u8; MAX_NAME_WIRE],
    /// Logical length.
    pub wire_len: u16,
    /// Bytes the name takes in the message (up to and including its first pointer).
    pub in_message: u16,
    /// Pointers followed.
    pub hops: u8,
    pub labels: u8,
    /// Logical offset of each label's length byte.
    pub starts: [u8; MAX_LABELS],
    /// Hash of each label.
    pub hashes: [(u64, u64); MAX_LABELS],
    /// One's-complement sum of the name's bytes as they lie in the message, the first byte
    /// at an even message offset counted as the high byte.
    pub raw_sum: u32,
}

/// Walks the name at offset `origin` of the DNS message `msg` (the reference loop).
///
/// # Errors
/// When the name is malformed or not whole in `msg`.
pub fn walk(msg: &[u8], origin: u16, key: &HashKey) -> Result<Name, NameError> {
    let mut w = Walker::new(key, origin);
    let mut n = Name {
        wire: [0; MAX_NAME_WIRE],
        raw: [0; MAX_NAME_WIRE],
        wire_len: 0,
        in_message: 0,
        hops: 0,
        labels: 0,
        starts: [0; MAX_LABELS],
        hashes: [(0, 0); MAX_LABELS],
        raw_sum: 0,
    };
    // The walker bounds itself (hops, length); the loop bound only makes that visible.
    for _ in 0..MAX_WALK_BYTES {
        let at = usize::from(w.at);
        let Some(&byte) = msg.get(at) else {
            return Err(NameError::Truncated);
        };
        let pos = usize::from(w.pos);
        if w.in_message() {
            n.raw_sum += if at % 2 == 0 {
                u32::from(byte) << 8
            } else {
                u32::from(byte)
            };
        }
        let (stored, step) = w.step(byte, key);
        if !matches!(step, Step::Pointer | Step::Error(_)) {
            n.wire[pos] = stored;
            n.raw[pos] = byte;
        }
        match step {
            Step::More | Step::Pointer => {}
            Step::Label { index, start, hash } => {
                n.starts[usize::from(index)] = start;
                n.hashes[usize::from(index)] = hash;
                n.labels = index + 1;
            }
            Step::End { wire_len } => {
                n.wire_len = wire_len;
                n.in_message = w.in_message;
                n.hops = w.hops;
                return Ok(n);
            }
            Step::Error(e) => return Err(e),
        }
    }
    Err(NameError::TooLong)
}

impl Name {
    /// The case-folded label `i`.
    #[must_use]
    pub fn label(&self, i: usize) -> &[u8] {
        let start = usize::from(self.starts[i]);
        let len = usize::from(self.wire[start]);
        &self.wire[start + 1..start + 1 + len]
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;
    use crate::dns::wire::HEADER_LEN;

    const O: u16 = HEADER_LEN as u16;

    fn msg(name: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        m.extend_from_slice(name);
        m.extend_from_slice(&[0, 1, 0, 1]);
        m
    }

    fn labels(n: &Name) -> Vec<Vec<u8>> {
        (0..usize::from(n.labels))
            .map(|i| n.label(i).to_vec())
            .collect()
    }

    #[test]
    fn word_folding_matches_byte_folding() {
        for b in 0..=255u8 {
            for lane in 0..8 {
                // The byte in every lane, next to neighbours that must not change it.
                let mut bytes = [b'Z', b'A', 0x40, 0x5b, 0xc1, 0xff, b'@', b'['];
                bytes[lane] = b;
                let want = bytes.map(|x| x.to_ascii_lowercase());
                let got = fold_word(u64::from_le_bytes(bytes)).to_le_bytes();
                assert_eq!(got, want, "byte {b:#x} in lane {lane}");
            }
        }
    }

    #[test]
    fn a_plain_name() {
        let m = msg(b"\x03Ads\x07example\x03com\x00");
        let n = walk(&m, O, &HashKey::default()).expect("plain name");
        assert_eq!(labels(&n), [&b"ads"[..], b"example", b"com"]);
        assert_eq!((n.wire_len, n.in_message, n.hops), (17, 17, 0));
        assert_eq!(&n.raw[..4], b"\x03Ads");
    }

    #[test]
    fn a_backward_pointer_is_followed() {
        // One label whose bytes spell `ads.example.com`, then a pointer into it.
        let inner = b"\x03ADS\x07example\x03com\x00";
        let mut name = vec![inner.len() as u8];
        name.extend_from_slice(inner);
        name.extend_from_slice(&[0xc0, O as u8 + 1]);
        let m = msg(&name);
        let n = walk(&m, O, &HashKey::default()).expect("pointer name");
        assert_eq!(
            labels(&n),
            [
                &b"\x03ads\x07example\x03com\x00"[..],
                b"ads",
                b"example",
                b"com"
            ]
        );
        assert_eq!(n.in_message, name.len() as u16);
        assert_eq!(n.hops, 1);
        assert_eq!(n.wire_len, 1 + 17 + 17);
        // The raw copy keeps the letter case at the logical positions.
        assert_eq!(&n.raw[19..22], b"ADS");
        // The sum covers the bytes in the message, pointer included.
        let sum: u32 = name
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if i % 2 == 0 {
                    u32::from(b) << 8
                } else {
                    u32::from(b)
                }
            })
            .sum();
        assert_eq!(n.raw_sum, sum);
    }

    #[test]
    fn forward_self_and_looping_pointers_are_errors() {
        let k = HashKey::default();
        // At itself.
        assert_eq!(
            walk(&msg(&[0xc0, O as u8]), O, &k),
            Err(NameError::BadPointer)
        );
        // Forward, to a name after the question.
        let mut m = msg(&[0xc0, O as u8 + 6]);
        m.extend_from_slice(b"\x01a\x00");
        assert_eq!(walk(&m, O, &k), Err(NameError::BadPointer));
        // Back to the start of the name, which leads to the same pointer again.
        let m = msg(&[0x01, b'a', 0xc0, O as u8]);
        assert_eq!(walk(&m, O, &k), Err(NameError::BadPointer));
        // A pointer whose target is not below the last target.
        let m = msg(&[0x01, b'a', 0xc0, O as u8 + 4, 0xc0, O as u8 + 2]);
        assert!(walk(&m, O, &k).is_err());
    }

    #[test]
    fn pointer_hops_are_bounded() {
        let k = HashKey::default();
        // A chain of pointers, each to the one before, ending in the root at offset O.
        let chain = |hops: usize| {
            let mut name = vec![0u8];
            for i in 0..hops {
                let target = if i == 0 {
                    O
                } else {
                    O + 1 + 2 * (i as u16 - 1)
                };
                name.extend_from_slice(&[0xc0 | (target >> 8) as u8, target as u8]);
            }
            let m = msg(&name);
            // Start at the last pointer.
            let start = O + 1 + 2 * (hops as u16 - 1);
            walk(&m, start, &k)
        };
        let n = chain(usize::from(MAX_POINTER_HOPS)).expect("at the bound");
        assert_eq!((n.hops, n.wire_len, n.in_message), (MAX_POINTER_HOPS, 1, 2));
        assert_eq!(
            chain(usize::from(MAX_POINTER_HOPS) + 1),
            Err(NameError::TooManyPointers)
        );
    }

    #[test]
    fn reserved_label_types_and_truncation() {
        let k = HashKey::default();
        assert_eq!(walk(&msg(&[0x40, 0]), O, &k), Err(NameError::LabelType));
        assert_eq!(walk(&msg(&[0x80, 0]), O, &k), Err(NameError::LabelType));
        let mut m = vec![0u8; HEADER_LEN];
        m.extend_from_slice(b"\x03abc");
        assert_eq!(walk(&m, O, &k), Err(NameError::Truncated));
        m.push(0xc0);
        assert_eq!(walk(&m, O, &k), Err(NameError::Truncated));
    }
}
