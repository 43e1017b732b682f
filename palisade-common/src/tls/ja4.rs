//! JA4 (FoxIO's TLS client fingerprint) of a ClientHello, over TCP.
//!
//! `t13d1516h2_8daaf6152771_e5627efa2ab1`:
//! - `t`: TLS over TCP; `13`: the highest version offered (`supported_versions` if present,
//!   else the hello's version); `d`: a `server_name` extension is present (`i` otherwise);
//!   `15`: non-GREASE cipher suites; `16`: non-GREASE extensions (both capped at 99); `h2`:
//!   the first and last characters of the first ALPN protocol (`00` without one; the first
//!   and last hex digits of it when either end is not ASCII alphanumeric);
//! - the first 12 hex digits of the SHA-256 of the cipher suites, sorted, as 4-digit hex
//!   joined by commas (`000000000000` when there are none);
//! - the same of the sorted extension types without `server_name` and ALPN, then `_` and the
//!   signature algorithms in the order sent (the `_` and the list only when there are any);
//!   `000000000000` when no extension is left.
//!
//! Sorting makes the fingerprint independent of extension order, so the permutation Chrome
//! applies to every hello gives one JA4.

use super::hello::{ClientHello, EXT_ALPN, EXT_SERVER_NAME, MAX_CIPHERS, MAX_EXTENSIONS};
use super::sha256::Sha256;

/// The length of a JA4 string.
pub const JA4_LEN: usize = 36;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The two characters JA4 writes for a TLS version.
const fn version_code(v: u16) -> [u8; 2] {
    match v {
        0x0304 => *b"13",
        0x0303 => *b"12",
        0x0302 => *b"11",
        0x0301 => *b"10",
        0x0300 => *b"s3",
        0x0002 => *b"s2",
        0xfeff => *b"d1",
        0xfefd => *b"d2",
        0xfefc => *b"d3",
        _ => *b"00",
    }
}

fn two_digits(n: usize) -> [u8; 2] {
    let n = n.min(99);
    // `n` is at most 99, so both digits are in range.
    [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]
}

fn alpn_code(alpn: &[u8]) -> [u8; 2] {
    match (alpn.first(), alpn.last()) {
        (Some(&a), Some(&b)) if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => [a, b],
        (Some(&a), Some(&b)) => [HEX[usize::from(a >> 4)], HEX[usize::from(b & 15)]],
        _ => *b"00",
    }
}

/// Appends `items` to `h` as 4-digit lower-case hex joined by commas; returns whether any
/// item was written.
fn hash_list(h: &mut Sha256, items: &[u16]) -> bool {
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            h.update(b",");
        }
        let b = v.to_be_bytes();
        h.update(&[
            HEX[usize::from(b[0] >> 4)],
            HEX[usize::from(b[0] & 15)],
            HEX[usize::from(b[1] >> 4)],
            HEX[usize::from(b[1] & 15)],
        ]);
    }
    !items.is_empty()
}

fn truncated_hex(digest: [u8; 32], out: &mut [u8]) {
    for (i, slot) in out.iter_mut().enumerate().take(12) {
        let byte = digest[i / 2];
        *slot = HEX[usize::from(if i % 2 == 0 { byte >> 4 } else { byte & 15 })];
    }
}

/// The JA4 fingerprint of `hello` (ASCII).
#[must_use]
pub fn ja4(hello: &ClientHello) -> [u8; JA4_LEN] {
    let mut out = [b'0'; JA4_LEN];
    out[0] = b't';
    out[1..3].copy_from_slice(&version_code(hello.max_version));
    out[3] = if hello.has_sni { b'd' } else { b'i' };
    out[4..6].copy_from_slice(&two_digits(hello.cipher_count));
    out[6..8].copy_from_slice(&two_digits(hello.extension_count));
    out[8..10].copy_from_slice(&alpn_code(hello.alpn()));
    out[10] = b'_';
    out[23] = b'_';

    let mut ciphers = [0u16; MAX_CIPHERS];
    let n = hello.ciphers().len();
    ciphers[..n].copy_from_slice(hello.ciphers());
    ciphers[..n].sort_unstable();
    let mut h = Sha256::new();
    if hash_list(&mut h, &ciphers[..n]) {
        truncated_hex(h.finish(), &mut out[11..23]);
    }

    let mut exts = [0u16; MAX_EXTENSIONS];
    let mut m = 0;
    for &e in hello.extensions() {
        if e != EXT_SERVER_NAME && e != EXT_ALPN {
            exts[m] = e;
            m += 1;
        }
    }
    exts[..m].sort_unstable();
    let mut h = Sha256::new();
    if hash_list(&mut h, &exts[..m]) {
        if !hello.sig_algs().is_empty() {
            h.update(b"_");
            hash_list(&mut h, hello.sig_algs());
        }
        truncated_hex(h.finish(), &mut out[24..36]);
    }
    out
}
