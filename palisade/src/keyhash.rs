//! One hasher for the userspace tables keyed by map keys (the install's read-back of a map,
//! the DNS compiler's name table).
//!
//! The keys are short, a few words apart, and they come from the operator's policy or are
//! hashed with the datapath's secret key, never straight from the network: nobody can aim
//! collisions at them. So a word-at-a-time mix (a multiply and a rotate per eight bytes) is
//! enough, where the standard library's keyed rounds cost several times more per key.

use std::hash::{BuildHasher, Hasher};

/// Builds [`KeyHasher`]s; the `S` of a `HashMap<K, V, S>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyHash;

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// See [`KeyHash`].
#[derive(Debug, Clone, Copy)]
pub struct KeyHasher(u64);

impl KeyHasher {
    /// One step: a word of input mixed into the state.
    #[inline]
    fn mix(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(29) ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Hasher for KeyHasher {
    /// Eight bytes per step, the last ones padded with zeros.
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, v: u8) {
        self.mix(u64::from(v));
    }

    fn write_u16(&mut self, v: u16) {
        self.mix(u64::from(v));
    }

    fn write_u32(&mut self, v: u32) {
        self.mix(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }

    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }

    /// Mixes every bit of the state into every bit of the hash (the finalizer of
    /// MurmurHash3): a multiply carries a difference only upwards, so keys that differ in the
    /// high half of their last word (the last bytes of an IPv4 address in a set key) would
    /// otherwise share the low bits a table indexes by, and pile into a few buckets.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn hash(bytes: &[u8]) -> u64 {
        let mut h = KeyHash.build_hasher();
        h.write(bytes);
        h.finish()
    }

    #[test]
    fn keys_a_word_apart_spread_over_the_low_bits() {
        // 65,536 keys that differ in one 16-bit field, as map keys of one set do: their
        // low 16 bits (what a table of 65,536 slots indexes by) must not pile up.
        let buckets: HashSet<u64> = (0u32..65_536)
            .map(|i| {
                let mut k = [0u8; 28];
                k[..4].copy_from_slice(&7u32.to_le_bytes());
                k[24..].copy_from_slice(&i.to_be_bytes());
                hash(&k) & 0xffff
            })
            .collect();
        // A uniform hash fills about 63 % of the slots (1 - 1/e).
        assert!(buckets.len() > 38_000, "{} slots of 65,536", buckets.len());
    }

    #[test]
    fn addresses_in_the_high_half_of_a_word_spread_over_the_low_bits() {
        // Set keys of consecutive IPv4 addresses (10.0.0.0 upwards, as v4-mapped IPv6): the
        // address is the high half of the key's last word. 262,144 of them must spread over
        // the low 18 bits as a uniform hash would (about 63 % of the slots).
        let buckets: HashSet<u64> = (0u32..1 << 18)
            .map(|i| {
                let mut k = [0u8; 24];
                k[..4].copy_from_slice(&3u32.to_be_bytes());
                k[4] = 4;
                k[18..20].copy_from_slice(&[0xff, 0xff]);
                k[20..].copy_from_slice(&(0x0a00_0000 | i).to_be_bytes());
                hash(&k) & ((1 << 18) - 1)
            })
            .collect();
        assert!(
            buckets.len() > 150_000,
            "{} slots of 262,144",
            buckets.len()
        );
    }

    #[test]
    fn every_byte_counts() {
        let a = hash(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let b = hash(&[1, 2, 3, 4, 5, 6, 7, 8, 10]);
        let c = hash(&[1, 2, 3, 4, 5, 6, 7, 9, 9]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
    }
}
