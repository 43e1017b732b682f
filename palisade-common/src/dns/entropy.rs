//! The entropy bound: how much information the labels below an allowed name can carry,
//! in fixed point, without floating point.
//!
//! The measure is the *total* empirical Shannon entropy of those bytes, in bits: for byte
//! counts `c_i` over `n` bytes, `n * H = n * log2(n) - sum(c_i * log2(c_i))`. Bytes are
//! counted as sent (letter case kept) and length bytes are left out; all the labels below
//! the matched suffix are counted together.
//!
//! Why the total rather than bits per character:
//! - `n * H` never decreases when bytes are added (it is the shortest code length for the
//!   bytes under the best fixed byte distribution, and adding a byte cannot shorten that),
//!   so padding labels or padding characters cannot bring a name under the bound;
//! - it is close to an upper bound on what any encoding can carry in those bytes: the
//!   arrangements of a multiset with counts `c_i` number at most `2^(n*H)`, so a tunnel
//!   pays in bits whatever alphabet (hex, base32, base64, letter case) it uses;
//! - a short name carries few bits and passes, which is the point: the bound is the data a
//!   single query can smuggle out. Averages let a name through whenever it was short.
//!
//! With the table `T[c] = round(c * log2(c) * 2^16)`, `n * H * 2^16 = T[n] - sum(T[c_i])`, so
//! "exceeds `bound` bits" is `T[n] - sum > bound * 2^16` in integers. The sum is kept
//! incrementally: when a byte's count goes from `c` to `c + 1` it grows by `T[c + 1] - T[c]`.

/// Fixed-point scale: 16 fractional bits.
pub const SCALE: u64 = 1 << 16;
/// Table size: counts up to 255 characters (a 255-byte name has fewer).
pub const TABLE_LEN: usize = 256;
/// The largest bound that means anything: 255 bytes of 8 bits each.
pub const MAX_BITS: u32 = 255 * 8;

/// A bound of `bits` bits in the fixed point of [`exceeds`].
#[must_use]
pub const fn bound_fp(bits: u32) -> u32 {
    let bits = if bits > MAX_BITS { MAX_BITS } else { bits };
    bits << 16
}

/// Whether the counted bytes carry more than `bound_fp` (from [`bound_fp`]): `t_n` is
/// `T[n]` for the number of bytes counted, `sum` the sum of `T[c_i]` over their counts.
#[inline(always)]
#[must_use]
pub const fn exceeds(t_n: u64, sum: u64, bound_fp: u32) -> bool {
    t_n.saturating_sub(sum) > bound_fp as u64
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

/// `n * H * 2^16` of `bytes`, the reference way (counts, then the sum), with the kernel's
/// saturations: counts and `n` stop at 255.
#[must_use]
pub fn total_fp(bytes: &[u8]) -> u64 {
    let mut counts = [0u8; 256];
    let mut sum = 0u64;
    let mut n = 0usize;
    for &b in bytes {
        let c = usize::from(counts[usize::from(b)]).min(TABLE_LEN - 2);
        sum += NLOGN[c + 1] - NLOGN[c];
        counts[usize::from(b)] = counts[usize::from(b)].saturating_add(1);
        n += 1;
    }
    NLOGN[n.min(TABLE_LEN - 1)].saturating_sub(sum)
}

/// Whether `bytes` (the labels below the matched name, concatenated, case kept) carry more
/// than `bound_fp` (see [`bound_fp`]).
#[must_use]
pub fn exceeds_bound(bytes: &[u8], bound_fp: u32) -> bool {
    total_fp(bytes) > u64::from(bound_fp)
}

/// The total entropy of `bytes` in bits, for messages and tests.
#[must_use]
pub fn bits(bytes: &[u8]) -> f64 {
    total_fp(bytes) as f64 / SCALE as f64
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
    fn totals() {
        // "aaaa": 0 bits; "abcd": 4 * 2 = 8 bits; "abcdefgh": 8 * 3 = 24 bits.
        assert!(!exceeds_bound(b"aaaa", 0));
        assert!(exceeds_bound(b"abcd", bound_fp(7)));
        assert!(!exceeds_bound(b"abcd", bound_fp(8)));
        assert!(exceeds_bound(b"abcdefgh", bound_fp(23)));
        assert!(!exceeds_bound(b"abcdefgh", bound_fp(24)));
        assert!(!exceeds_bound(b"", 0));
        assert!((bits(b"abcdefgh") - 24.0).abs() < 1e-3);
        assert_eq!(bound_fp(MAX_BITS + 1), bound_fp(MAX_BITS));
    }

    #[test]
    fn letter_case_counts() {
        // Folded, "abab" is 4 bits; as sent, "aBAb" has four symbols... of two letters in
        // two cases: 8 bits.
        assert!((bits(b"abab") - 4.0).abs() < 1e-3);
        assert!((bits(b"aBAb") - 8.0).abs() < 1e-3);
    }

    #[test]
    fn adding_bytes_never_lowers_the_total() {
        // Padding of any kind, anywhere: the total of the longer string is never lower.
        let base = b"mzxw6ytboi2dcnrtgq3tsmbr";
        let before = total_fp(base);
        for pad in [b'a', b'm', b'-', b'0', b'z'] {
            for at in 0..=base.len() {
                let mut v = base.to_vec();
                for k in 0..20 {
                    v.insert((at + k) % (v.len() + 1), pad);
                    assert!(total_fp(&v) >= before, "pad {pad} at {at}");
                }
            }
        }
    }
}
