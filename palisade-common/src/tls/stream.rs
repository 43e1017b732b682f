//! Bounded reassembly of the first bytes a TCP client sends, for reading its ClientHello.
//!
//! Segments arrive as (sequence number, bytes), in any order, repeated, overlapping, one byte
//! at a time. [`FirstBytes`] keeps the first [`WINDOW`] bytes of the stream with a bit per
//! byte saying whether it arrived, so neither the number of segments nor their sizes matter,
//! only the window. Bytes beyond the window are ignored (a hello that needs them is too large
//! anyway). A retransmission that changes bytes already received is a conflict: the receiver
//! keeps one version and an inspector another, the classic evasion, so the flow is refused
//! rather than guessed at.

/// The bytes of a stream kept for reassembly: the largest ClientHello
/// ([`super::hello::MAX_HELLO_LEN`]) plus 1 KiB for the headers of the records it spans.
pub const WINDOW: usize = 16_384 + 1024;

/// What [`FirstBytes::insert`] did with a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// Stored (or already there with the same bytes, or wholly outside the window).
    Stored,
    /// Bytes already received were sent again with other values; nothing was stored.
    Conflict,
}

/// The first [`WINDOW`] bytes of a TCP stream, as far as they have arrived.
#[derive(Clone)]
pub struct FirstBytes {
    /// Sequence number of the stream's first byte (the SYN's plus one).
    base: u32,
    bytes: [u8; WINDOW],
    present: [u64; WINDOW / 64],
    /// Bytes present from offset 0 without a hole.
    contiguous: usize,
}

impl FirstBytes {
    /// An empty stream whose first byte has sequence number `base`.
    #[must_use]
    pub const fn new(base: u32) -> Self {
        Self {
            base,
            bytes: [0; WINDOW],
            present: [0; WINDOW / 64],
            contiguous: 0,
        }
    }

    /// The sequence number of the stream's first byte.
    #[must_use]
    pub const fn base(&self) -> u32 {
        self.base
    }

    fn has(&self, i: usize) -> bool {
        self.present[i / 64] >> (i % 64) & 1 == 1
    }

    /// Adds the segment whose first byte has sequence number `seq`. Parts before the stream's
    /// first byte or beyond the window are ignored.
    pub fn insert(&mut self, seq: u32, data: &[u8]) -> Insert {
        // Offsets are taken modulo 2^32 like sequence numbers; a segment more than 2^31
        // bytes before the base reads as far beyond the window and is ignored.
        let offset = seq.wrapping_sub(self.base) as i32;
        let (skip, start) = if offset < 0 {
            (offset.unsigned_abs() as usize, 0usize)
        } else {
            (0, offset as usize)
        };
        let Some(data) = data.get(skip..) else {
            return Insert::Stored;
        };
        if start >= WINDOW {
            return Insert::Stored;
        }
        let end = start.saturating_add(data.len()).min(WINDOW);
        let data = &data[..end - start];
        for (k, &b) in data.iter().enumerate() {
            let i = start + k;
            if self.has(i) && self.bytes[i] != b {
                return Insert::Conflict;
            }
        }
        self.bytes[start..end].copy_from_slice(data);
        for i in start..end {
            self.present[i / 64] |= 1 << (i % 64);
        }
        while self.contiguous < WINDOW && self.has(self.contiguous) {
            self.contiguous += 1;
        }
        Insert::Stored
    }

    /// The bytes from the first one up to the first hole.
    #[must_use]
    pub fn contiguous(&self) -> &[u8] {
        &self.bytes[..self.contiguous]
    }
}
