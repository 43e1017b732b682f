//! Country data: address ranges as CIDR prefixes, and country codes as two bytes.
//!
//! GeoIP databases list either prefixes (MaxMind GeoLite2) or `start,end` address ranges
//! (DB-IP lite). A range becomes the fewest aligned prefixes that cover it exactly
//! ([`range_prefixes`]); one function serves both address families.

/// The fewest prefixes that cover `lo..=hi` exactly, in an address space of `bits` bits
/// (32 for IPv4, 128 for IPv6), each handed to `out` as `(first address, prefix length)` in
/// ascending order. Nothing is emitted when `lo > hi` or when either end is outside the space.
///
/// Each step takes the largest aligned block that starts at `lo` and ends within `hi`, so a
/// range costs at most `2 * bits` prefixes; the loop is bounded by that.
pub fn range_prefixes(lo: u128, hi: u128, bits: u32, mut out: impl FnMut(u128, u8)) {
    if bits == 0 || bits > 128 || lo > hi {
        return;
    }
    let max = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    if hi > max {
        return;
    }
    let mut lo = lo;
    for _ in 0..2 * bits {
        // The block's size is 2^k: `lo` must be a multiple of it and `lo + 2^k - 1 <= hi`.
        let align = if lo == 0 {
            bits
        } else {
            lo.trailing_zeros().min(bits)
        };
        let span = hi - lo; // size - 1 of what is left
        // The largest k with 2^k - 1 <= span, i.e. k = floor(log2(span + 1)).
        let fit = if span == u128::MAX {
            128
        } else {
            127 - (span + 1).leading_zeros()
        };
        let k = align.min(fit);
        out(lo, (bits - k) as u8);
        let last = if k == 128 {
            u128::MAX
        } else {
            lo + ((1u128 << k) - 1)
        };
        if last >= hi {
            return;
        }
        lo = last + 1;
    }
}

/// A country code (ISO 3166-1 alpha-2, upper case) as the two bytes a map keeps; `None`
/// unless both are ASCII letters. Lower case is accepted and folded.
#[must_use]
pub const fn country_code(text: &[u8]) -> Option<[u8; 2]> {
    match text {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    fn prefixes(lo: u128, hi: u128, bits: u32) -> Vec<(u128, u8)> {
        let mut v = Vec::new();
        range_prefixes(lo, hi, bits, |a, l| v.push((a, l)));
        v
    }

    /// The same split by brute force: grow a block from each start one doubling at a time.
    fn brute(lo: u128, hi: u128, bits: u32) -> Vec<(u128, u8)> {
        let mut v = Vec::new();
        let mut at = lo;
        loop {
            let mut k = 0u32;
            while k < bits {
                let size = 1u128.checked_shl(k + 1).unwrap_or(0);
                let fits = if size == 0 {
                    at == 0 && hi == u128::MAX
                } else {
                    at.is_multiple_of(size) && at.checked_add(size - 1).is_some_and(|e| e <= hi)
                };
                if !fits {
                    break;
                }
                k += 1;
            }
            v.push((at, (bits - k) as u8));
            match 1u128.checked_shl(k).and_then(|s| at.checked_add(s)) {
                Some(next) if next <= hi && k < 128 => at = next,
                _ => break,
            }
        }
        v
    }

    #[test]
    fn every_range_of_an_8_bit_space_matches_brute_force() {
        for lo in 0..256u128 {
            for hi in lo..256 {
                let got = prefixes(lo, hi, 8);
                assert_eq!(got, brute(lo, hi, 8), "{lo}..={hi}");
                // Covered exactly, once: every address in the range is in exactly one block.
                let mut covered = [0u8; 256];
                for &(a, l) in &got {
                    let size = 1u128 << (8 - l);
                    assert_eq!(a % size, 0, "block {a}/{l} is aligned");
                    for x in a..a + size {
                        covered[x as usize] += 1;
                    }
                }
                for (x, &c) in covered.iter().enumerate() {
                    assert_eq!(
                        c,
                        u8::from((lo..=hi).contains(&(x as u128))),
                        "{lo}..={hi} at {x}"
                    );
                }
            }
        }
    }

    #[test]
    fn whole_spaces_and_edges() {
        assert_eq!(prefixes(0, u128::from(u32::MAX), 32), vec![(0, 0)]);
        assert_eq!(prefixes(0, u128::MAX, 128), vec![(0, 0)]);
        assert_eq!(prefixes(u128::MAX, u128::MAX, 128), vec![(u128::MAX, 128)]);
        assert_eq!(prefixes(1, u128::MAX, 128).len(), 128);
        assert_eq!(prefixes(1, u128::MAX - 1, 128).len(), 2 * 127);
        // 1.0.0.0 - 1.0.0.255 is one /24; 1.0.1.0 - 1.0.3.255 is a /24 and a /23.
        assert_eq!(
            prefixes(0x0100_0000, 0x0100_00ff, 32),
            vec![(0x0100_0000, 24)]
        );
        assert_eq!(
            prefixes(0x0100_0100, 0x0100_03ff, 32),
            vec![(0x0100_0100, 24), (0x0100_0200, 23)]
        );
        assert!(prefixes(5, 4, 32).is_empty());
        assert!(prefixes(0, 1 << 32, 32).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn wide_ranges_split_like_brute_force_below_the_top(
            lo in proptest::prelude::any::<u128>(), width in 0u128..5000, shift in 0u32..100
        ) {
            // Brute force walks block by block, so keep the block count small but the
            // addresses anywhere in the IPv6 space.
            let lo = lo >> shift;
            let hi = lo.saturating_add(width << (shift / 2));
            let got = prefixes(lo, hi, 128);
            proptest::prop_assert_eq!(&got, &brute(lo, hi, 128));
            proptest::prop_assert!(got.len() <= 256);
        }
    }

    #[test]
    fn country_codes_fold_case_and_refuse_the_rest() {
        assert_eq!(country_code(b"cn"), Some(*b"CN"));
        assert_eq!(country_code(b"Us"), Some(*b"US"));
        assert_eq!(country_code(b"C1"), None);
        assert_eq!(country_code(b"CHN"), None);
        assert_eq!(country_code(b""), None);
    }
}
