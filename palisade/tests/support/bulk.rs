//! Bulk TCP transfers for the path MTU tests: a known pattern, a sink that answers with the
//! byte count and a checksum of what arrived, and a source that sends the pattern.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpStream},
    time::{Duration, Instant},
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

/// Uploads `data` on `c` (a connection to a [`sink`] across the routed lab's narrow hop) and
/// checks that all of it arrived intact and that the socket learned the hop's path MTU from
/// the ICMP error the firewall let in; `stalled` describes the datapath's state for a stall.
pub fn upload_through_narrow_hop(
    mut c: TcpStream,
    data: &[u8],
    to: &str,
    stalled: impl Fn() -> String,
) {
    let started = Instant::now();
    let mss_before = super::netns::tcp_info(&c).tcpi_snd_mss;
    c.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    c.write_all(data)
        .unwrap_or_else(|e| panic!("upload to {to} stalled: {e}; {}", stalled()));
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = [0u8; 16];
    c.read_exact(&mut answer)
        .unwrap_or_else(|e| panic!("upload to {to}: no answer: {e}"));
    let info = super::netns::tcp_info(&c);
    eprintln!(
        "{to}: {} MiB up in {:?}, MSS {mss_before} -> {}, path MTU {}, {} retransmitted",
        data.len() >> 20,
        started.elapsed(),
        info.tcpi_snd_mss,
        info.tcpi_pmtu,
        info.tcpi_total_retrans
    );
    assert_eq!(
        u64::from_be_bytes(answer[..8].try_into().unwrap()),
        data.len() as u64
    );
    assert_eq!(
        u64::from_be_bytes(answer[8..].try_into().unwrap()),
        fold(data)
    );
    let narrow = super::routed::Routed::NARROW_MTU;
    assert!(
        mss_before + 40 > narrow,
        "the handshake already fit the narrow hop (MSS {mss_before}): nothing to discover"
    );
    assert_eq!(info.tcpi_pmtu, narrow, "path MTU not learned");
}
