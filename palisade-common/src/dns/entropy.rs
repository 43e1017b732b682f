//! Shannon entropy of a byte string in fixed point, without floating point.
//!
//! For counts `c_i` over `n` bytes, `H = log2(n) - (1/n) * sum(c_i * log2(c_i))`. With the
//! table `T[c] = round(c * log2(c) * 2^16)` this is `H * n * 2^16 = T[n] - sum(T[c_i])`, so
//! "H exceeds `bound` bits per character" is `T[n] - sum > bound_fp * n` in integers. The sum
//! is kept incrementally: when a byte's count goes from `c` to `c + 1` the sum grows by
//! `T[c + 1] - T[c]`.

/// Fixed-point scale: 16 fractional bits.
pub const SCALE: u64 = 1 << 16;
/// Table size: counts up to 255 characters (a 255-byte name has fewer).
pub const TABLE_LEN: usize = 256;

/// `bits` (bits per character) in fixed point.
#[must_use]
pub fn bound_fp(bits: f64) -> u32 {
    // `as` saturates; adding 0.5 rounds the non-negative values that matter.
    (bits * SCALE as f64 + 0.5).clamp(0.0, f64::from(u32::MAX - 1)) as u32
}

/// Whether the entropy of the counted bytes exceeds `bound_fp` (see the module doc).
#[inline(always)]
#[must_use]
pub const fn exceeds(t_n: u64, sum: u64, n: u64, bound_fp: u32) -> bool {
    t_n.saturating_sub(sum) > bound_fp as u64 * n
}

/// Integer `c * log2(c) * 2^16`, rounded, from an integer binary logarithm (no floating
/// point, so the kernel table and the reference agree bit for bit).
#[must_use]
pub const fn nlogn(c: u64) -> u64 {
    if c < 2 {
        return 0;
    }
    // log2(c) in 32.32 fixed point by the shift-and-square method.
    let int = 63 - c.leading_zeros() as u64;
    // Normalise c into [1, 2) as a 1.62 fixed-point mantissa.
    let mut m: u128 = (c as u128) << (62 - int);
    let mut frac: u64 = 0;
    let mut bit = 31;
    loop {
        m = (m * m) >> 62;
        if m >= 2u128 << 62 {
            m >>= 1;
            frac |= 1 << bit;
        }
        if bit == 0 {
            break;
        }
        bit -= 1;
    }
    let log2_q32 = (int << 32) | frac;
    // c * log2(c) * 2^16 = c * log2_q32 / 2^16, rounded.
    ((c as u128 * log2_q32 as u128 + (1 << 15)) >> 16) as u64
}

/// The whole table.
#[must_use]
pub const fn table() -> [u64; TABLE_LEN] {
    let mut t = [0u64; TABLE_LEN];
    let mut c = 0;
    while c < TABLE_LEN {
        t[c] = nlogn(c as u64);
        c += 1;
    }
    t
}

/// The table, computed at compile time for both sides.
pub static NLOGN: [u64; TABLE_LEN] = table();

/// Entropy check of a byte string, the reference way (counts, then the sum).
#[must_use]
pub fn exceeds_bound(bytes: &[u8], bound_fp: u32) -> bool {
    let mut counts = [0u8; 256];
    let mut sum = 0u64;
    for &b in bytes {
        let c = counts[usize::from(b)];
        sum += NLOGN[usize::from(c) + 1] - NLOGN[usize::from(c)];
        counts[usize::from(b)] = c.saturating_add(1);
    }
    let n = bytes.len().min(TABLE_LEN - 1);
    exceeds(NLOGN[n], sum, n as u64, bound_fp)
}

/// Entropy in bits per character, for messages and tests.
#[must_use]
pub fn bits_per_char(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[usize::from(b)] += 1;
    }
    let n = bytes.len() as f64;
    let mut h = 0.0;
    let mut i = 0;
    while i < 256 {
        let c = counts[i];
        if c > 0 {
            let p = f64::from(c) / n;
            h -= p * log2_approx(p);
        }
        i += 1;
    }
    h
}

/// log2 for the no_std reference: `nlogn` based, enough precision for messages.
fn log2_approx(p: f64) -> f64 {
    // p = c/n; log2(p) = log2(c) - log2(n), with each via nlogn(x)/x/2^16 at 2^20 scale.
    let scaled = (p * f64::from(1u32 << 20)).max(1.0) as u64;
    nlogn(scaled) as f64 / scaled as f64 / SCALE as f64 - 20.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_floating_point() {
        extern crate std;
        for c in 2..TABLE_LEN as u64 {
            let exact = c as f64 * std::primitive::f64::log2(c as f64) * SCALE as f64;
            let got = NLOGN[c as usize] as f64;
            assert!((got - exact).abs() <= 1.5, "c={c}: {got} vs {exact}");
        }
        assert_eq!(NLOGN[0], 0);
        assert_eq!(NLOGN[1], 0);
    }

    #[test]
    fn bounds() {
        // "aaaa": entropy 0; "abcd": 2 bits; "abcdefgh": 3 bits.
        assert!(!exceeds_bound(b"aaaa", 0));
        assert!(exceeds_bound(b"abcd", bound_fp(1.99)));
        assert!(!exceeds_bound(b"abcd", bound_fp(2.01)));
        assert!(exceeds_bound(b"abcdefgh", bound_fp(2.99)));
        assert!(!exceeds_bound(b"abcdefgh", bound_fp(3.01)));
        assert!(!exceeds_bound(b"", 0));
    }
}
