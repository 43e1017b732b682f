//! The QNAME walker: a state machine fed one byte at a time, so the kernel can run it inside
//! `bpf_loop` (one byte per iteration, verified once) and the userspace reference can run it
//! in a plain loop. Labels are compared as length-prefixed wire labels: a `.` byte inside a
//! label is just a byte. Letters are folded to lower case, so 0x20 randomisation does not
//! change the lookup.

use super::{
    hash::{HashKey, LabelHasher},
    wire::{MAX_LABELS, MAX_NAME_WIRE},
};

/// Why a name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// A compression pointer (or the reserved 0x40/0x80 label types) in the question.
    Pointer,
    /// More than 255 wire bytes.
    TooLong,
    /// The message ended inside the name.
    Truncated,
}

/// What one byte did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep feeding.
    More,
    /// A label ended: its index, the offset of its length byte, and its hash.
    Label {
        index: u8,
        start: u8,
        hash: (u64, u64),
    },
    /// The root byte: the name is complete (`wire_len` bytes, root included).
    End {
        wire_len: u16,
    },
    Error(NameError),
}

/// Walker state. Small and `Copy` so it can live in a `bpf_loop` context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walker {
    /// Bytes consumed so far.
    pub pos: u16,
    /// Bytes left in the current label; 0 = the next byte is a length byte.
    pub left: u8,
    /// Length of the current label.
    pub len: u8,
    /// Labels completed.
    pub labels: u8,
    /// Offset of the current label's length byte.
    pub start: u8,
    pub hasher: LabelHasher,
}

impl Walker {
    #[inline(always)]
    #[must_use]
    pub const fn new(key: &HashKey) -> Self {
        Self {
            pos: 0,
            left: 0,
            len: 0,
            labels: 0,
            start: 0,
            hasher: LabelHasher::new(key),
        }
    }

    /// Feeds the byte at offset `self.pos` of the name. Returns the byte to store in the
    /// case-folded copy along with what happened.
    #[inline(always)]
    pub fn step(&mut self, byte: u8, key: &HashKey) -> (u8, Step) {
        if usize::from(self.pos) >= MAX_NAME_WIRE {
            return (byte, Step::Error(NameError::TooLong));
        }
        self.pos += 1;
        if self.left == 0 {
            if byte == 0 {
                return (0, Step::End { wire_len: self.pos });
            }
            if byte & 0xc0 != 0 {
                return (byte, Step::Error(NameError::Pointer));
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

/// A parsed question name, as the userspace reference sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// Case-folded wire form, root byte included.
    pub wire: [u8; MAX_NAME_WIRE],
    pub wire_len: u16,
    pub labels: u8,
    /// Offset of each label's length byte.
    pub starts: [u8; MAX_LABELS],
    /// Hash of each label.
    pub hashes: [(u64, u64); MAX_LABELS],
    /// One's-complement sum of the raw (not case-folded) name bytes, first byte even.
    pub raw_sum: u32,
}

/// Walks the name at the start of `bytes` (the reference loop).
///
/// # Errors
/// When the name is malformed or not whole in `bytes`.
pub fn walk(bytes: &[u8], key: &HashKey) -> Result<Name, NameError> {
    let mut w = Walker::new(key);
    let mut n = Name {
        wire: [0; MAX_NAME_WIRE],
        wire_len: 0,
        labels: 0,
        starts: [0; MAX_LABELS],
        hashes: [(0, 0); MAX_LABELS],
        raw_sum: 0,
    };
    loop {
        let pos = usize::from(w.pos);
        let Some(&byte) = bytes.get(pos) else {
            return Err(if pos >= MAX_NAME_WIRE {
                NameError::TooLong
            } else {
                NameError::Truncated
            });
        };
        let (stored, step) = w.step(byte, key);
        if let Some(slot) = n.wire.get_mut(pos) {
            *slot = stored;
        }
        n.raw_sum += if pos % 2 == 0 {
            u32::from(byte) << 8
        } else {
            u32::from(byte)
        };
        match step {
            Step::More => {}
            Step::Label { index, start, hash } => {
                n.starts[usize::from(index)] = start;
                n.hashes[usize::from(index)] = hash;
                n.labels = index + 1;
            }
            Step::End { wire_len } => {
                n.wire_len = wire_len;
                return Ok(n);
            }
            Step::Error(e) => return Err(e),
        }
    }
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
