//! Scanning per stream: each `(tgid, SSL*, direction)` keeps the last [`TAIL`] bytes it sent
//! (or received), and each new window is scanned behind them, so a secret split over two
//! `SSL_write` calls is whole in one scan. A hit lying wholly in the kept tail was reported
//! with the window before and is not reported again.

use std::collections::HashMap;

use super::detect::{Detectors, Hit};

/// Bytes kept per stream: longer than any built-in secret's identifying part (a PEM header,
/// a card number with separators, a 40-hex key id with its JSON key).
pub const TAIL: usize = 256;
/// Streams tracked at once; past it the least recently used is forgotten.
pub const MAX_STREAMS: usize = 4096;

/// A stream's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub tgid: u32,
    pub ssl: u64,
    pub dir: u8,
}

#[derive(Default)]
struct Stream {
    tail: Vec<u8>,
    used: u64,
}

/// The scanner of every stream.
pub struct Scanner {
    detectors: Detectors,
    streams: HashMap<StreamKey, Stream>,
    clock: u64,
    /// Streams forgotten for room.
    pub evicted: u64,
}

impl Scanner {
    #[must_use]
    pub fn new(detectors: Detectors) -> Self {
        Self {
            detectors,
            streams: HashMap::new(),
            clock: 0,
            evicted: 0,
        }
    }

    /// Scans `data`, the next bytes of stream `key`; returns the new hits, their ranges
    /// relative to the scanned buffer (tail + data) and the tail's length.
    pub fn push(&mut self, key: StreamKey, data: &[u8]) -> Vec<Hit> {
        self.clock += 1;
        if !self.streams.contains_key(&key)
            && self.streams.len() >= MAX_STREAMS
            && let Some(old) = self
                .streams
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| *k)
        {
            self.streams.remove(&old);
            self.evicted += 1;
        }
        let s = self.streams.entry(key).or_default();
        s.used = self.clock;
        let kept = s.tail.len();
        let mut buf = std::mem::take(&mut s.tail);
        buf.extend_from_slice(data);
        let hits: Vec<Hit> = self
            .detectors
            .scan(&buf)
            .into_iter()
            .filter(|h| h.end > kept)
            .collect();
        let from = buf.len().saturating_sub(TAIL);
        s.tail = buf.split_off(from);
        hits
    }

    /// Forgets the streams of a process that exited.
    pub fn forget_process(&mut self, tgid: u32) {
        self.streams.retain(|k, _| k.tgid != tgid);
    }

    #[must_use]
    pub fn streams(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlp::{Builtin, Dlp};

    fn scanner() -> Scanner {
        Scanner::new(
            Detectors::new(&Dlp {
                enabled: true,
                builtins: Builtin::ALL.to_vec(),
                ..Dlp::default()
            })
            .unwrap(),
        )
    }

    #[test]
    fn a_secret_split_over_two_writes_is_found_once() {
        let mut s = scanner();
        let k = StreamKey {
            tgid: 1,
            ssl: 7,
            dir: 0,
        };
        assert!(
            s.push(k, b"POST /x HTTP/1.1\r\n\r\nkey=AKIAIOSFO")
                .is_empty()
        );
        let h = s.push(k, b"DNN7EXAMPLE&more");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].kind, "aws-access-key-id");
        // Already reported: the next write does not repeat it.
        assert!(s.push(k, b"&tail").is_empty());
        // Another stream does not see this one's tail.
        let other = StreamKey {
            tgid: 1,
            ssl: 8,
            dir: 0,
        };
        assert!(s.push(other, b"DNN7EXAMPLE").is_empty());
    }

    #[test]
    fn streams_are_bounded() {
        let mut s = scanner();
        for i in 0..(MAX_STREAMS as u64 + 10) {
            s.push(
                StreamKey {
                    tgid: 1,
                    ssl: i,
                    dir: 0,
                },
                b"x",
            );
        }
        assert_eq!(s.streams(), MAX_STREAMS);
        assert_eq!(s.evicted, 10);
    }
}
