//! Bulk TCP transfers for the path MTU tests: a known pattern, a sink that answers with the
//! byte count and a checksum of what arrived, and a source that sends the pattern.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpStream},
};

/// Bytes per transfer: thousands of full-size segments, far beyond any initial window.
pub const BULK: usize = 8 << 20;

/// `len` bytes of a pattern that repeats only every 251 * 256 bytes.
#[must_use]
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The checksum [`sink`] answers with.
#[must_use]
pub fn fold(data: &[u8]) -> u64 {
    fold_into(0, data)
}

fn fold_into(sum: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(sum, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)))
}

/// Receives until EOF and answers with the byte count and the checksum of what arrived
/// (16 bytes, big-endian).
pub fn sink(mut c: TcpStream) {
    let mut buf = vec![0u8; 65_536];
    let (mut n, mut sum) = (0u64, 0u64);
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                sum = fold_into(sum, &buf[..k]);
                n += k as u64;
            }
            Err(_) => return,
        }
    }
    let _ = c.write_all(&n.to_be_bytes());
    let _ = c.write_all(&sum.to_be_bytes());
}

/// Sends [`BULK`] bytes of the pattern, then closes its side.
pub fn source(mut c: TcpStream) {
    let data = pattern(BULK);
    let _ = c.write_all(&data);
    let _ = c.shutdown(Shutdown::Write);
}
