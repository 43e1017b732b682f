//! Keyed 128-bit hashes of DNS labels and name suffixes.
//!
//! A name is looked up as each of its suffixes, so the hash is built from the right: each
//! label is hashed on its own while the name is walked left to right, then the suffix hashes
//! are chained from the last label towards the first. One pass gives every suffix's key.
//!
//! The key is 256 random bits drawn when the maps are created, never exposed. Every step is
//! a bijection of the state mixed with multiplications, so two different labels collide only
//! if their state difference cancels exactly; with two independent 64-bit lanes and the
//! suffix's wire length also in the map key, an accidental collision among a million names
//! has probability around 2^-88, and an attacker who never sees a hash cannot aim for one.
//! This is not a cryptographic MAC; see `docs/design/dns.md`.

/// The secret key.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashKey {
    pub k: [u64; 4],
}
crate::map_type!(HashKey, 32);

const M1: u64 = 0x9e37_79b9_7f4a_7c15;
const M2: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// The 64-bit finaliser of MurmurHash3: a bijection with full avalanche.
#[inline(always)]
#[must_use]
pub const fn fmix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Hash state of one label being read.
///
/// A label is hashed eight bytes at a time: its bytes are packed into little-endian words,
/// the last one padded with zeros, and each word is mixed into both lanes. The walker feeds
/// bytes one by one ([`push`](Self::push) packs them); the kernel's fast path loads whole
/// words of the name and feeds them with [`push_word`](Self::push_word). Both give the same
/// hash for the same label. Padding is unambiguous because the length is folded in at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelHasher {
    pub a: u64,
    pub b: u64,
    /// Bytes of the word being packed (little-endian), not yet mixed.
    pub word: u64,
    /// How many bytes `word` holds (0 to 7).
    pub pending: u8,
}

impl LabelHasher {
    #[inline(always)]
    #[must_use]
    pub const fn new(key: &HashKey) -> Self {
        Self {
            a: key.k[0],
            b: key.k[1],
            word: 0,
            pending: 0,
        }
    }

    /// Feeds one (already case-folded) byte.
    ///
    /// Without a branch: the word is mixed in every time and the result kept only when the
    /// word is full. The kernel's byte walker runs this in `bpf_loop` callbacks, several
    /// bytes per callback; a branch here would double the verifier's paths at every byte.
    #[inline(always)]
    pub fn push(&mut self, byte: u8) {
        let pending = u64::from(self.pending & 7);
        let word = self.word | (u64::from(byte) << (8 * pending));
        // All ones when this byte fills the word, else zero.
        let full = 0u64.wrapping_sub((pending + 1) >> 3);
        let mut mixed = *self;
        mixed.push_word(word);
        self.a = (mixed.a & full) | (self.a & !full);
        self.b = (mixed.b & full) | (self.b & !full);
        self.word = word & !full;
        self.pending = ((pending + 1) & 7) as u8;
    }

    /// Feeds eight (already case-folded) bytes packed little-endian, or the label's last
    /// bytes zero-padded ([`tail_mask`]). Only between words: no byte may be pending.
    #[inline(always)]
    pub fn push_word(&mut self, w: u64) {
        let a = (self.a ^ w).wrapping_mul(M1);
        self.a = a ^ (a >> 32);
        let b = (self.b ^ w).wrapping_mul(M2);
        self.b = b ^ (b >> 29);
    }

    /// The label's hash, its length folded in.
    ///
    /// Not finalised: a label's hash is only ever used through [`extend`], whose `fmix` gives
    /// the suffix hash its avalanche. Every step before it is a bijection of the lane for a
    /// given word (an xor with the word, a multiplication by an odd constant, an xor-shift,
    /// the xor of the length), so two labels of one word and one length never share a lane;
    /// longer labels meet only as keyed hashes do. Finalising here too cost two `fmix` per
    /// label in the kernel's fast walk, the largest part of its time in samples of the
    /// JITed code.
    #[inline(always)]
    #[must_use]
    pub fn finish(&self, len: u8) -> (u64, u64) {
        // The partly filled last word, if any (without a branch, as in `push`).
        let mut tail = *self;
        tail.push_word(self.word);
        let some = 0u64.wrapping_sub((u64::from(self.pending & 7) + 7) >> 3);
        let a = (tail.a & some) | (self.a & !some);
        let b = (tail.b & some) | (self.b & !some);
        (a ^ u64::from(len), b ^ (u64::from(len) << 8))
    }
}

/// The mask that keeps the first `n` bytes (1 to 8) of a little-endian word.
#[inline(always)]
#[must_use]
pub const fn tail_mask(n: usize) -> u64 {
    // The `& 63` changes nothing for n in 1..=8; it keeps the shift defined for the rest.
    u64::MAX >> (64usize.wrapping_sub(8 * n) & 63)
}

/// The empty suffix (the root) for `key`.
#[inline(always)]
#[must_use]
pub const fn root(key: &HashKey) -> (u64, u64) {
    (key.k[2], key.k[3])
}

/// The hash of `label.suffix` from the label's hash and the suffix's.
#[inline(always)]
#[must_use]
pub const fn extend(suffix: (u64, u64), label: (u64, u64)) -> (u64, u64) {
    (
        fmix(suffix.0.rotate_left(23) ^ label.0.wrapping_mul(M2)),
        fmix(suffix.1.rotate_left(41) ^ label.1.wrapping_mul(M1)),
    )
}

/// Hashes of every suffix of a name given as labels (most significant last), as the kernel
/// computes them: element `i` is the hash of `labels[i..]`.
#[inline]
pub fn suffix_hashes<'a, I>(key: &HashKey, labels: I, out: &mut [(u64, u64)])
where
    I: DoubleEndedIterator<Item = &'a [u8]> + ExactSizeIterator,
{
    let n = labels.len();
    let mut s = root(key);
    for (i, label) in labels.rev().enumerate() {
        // Eight bytes at a time, as the kernel's fast path feeds them (the byte feed gives
        // the same hash, and costs a word mix per byte).
        let mut h = LabelHasher::new(key);
        for chunk in label.chunks(8) {
            let mut w = [0u8; 8];
            for (to, b) in w.iter_mut().zip(chunk) {
                *to = b.to_ascii_lowercase();
            }
            h.push_word(u64::from_le_bytes(w));
        }
        s = extend(s, h.finish(label.len() as u8));
        if let Some(slot) = out.get_mut(n - 1 - i) {
            *slot = s;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const KEY: HashKey = HashKey {
        k: [
            0x0123_4567_89ab_cdef,
            0xfedc_ba98_7654_3210,
            0x0f1e_2d3c_4b5a_6978,
            0x8796_a5b4_c3d2_e1f0,
        ],
    };

    /// Words straight from the label, as the kernel's fast path feeds them.
    fn by_words(label: &[u8]) -> (u64, u64) {
        let mut h = LabelHasher::new(&KEY);
        for chunk in label.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h.push_word(u64::from_le_bytes(w) & tail_mask(chunk.len()));
        }
        h.finish(label.len() as u8)
    }

    fn by_bytes(label: &[u8]) -> (u64, u64) {
        let mut h = LabelHasher::new(&KEY);
        for &b in label {
            h.push(b);
        }
        h.finish(label.len() as u8)
    }

    #[test]
    fn words_and_bytes_hash_alike() {
        for len in 0..=63usize {
            let label: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(by_words(&label), by_bytes(&label), "length {len}");
        }
    }

    #[test]
    fn zero_padding_does_not_collide() {
        // A trailing zero byte is not the padding: the length tells them apart.
        assert_ne!(by_bytes(b"ab"), by_bytes(b"ab\0"));
        assert_ne!(by_bytes(b"abcdefgh"), by_bytes(b"abcdefgh\0"));
        assert_ne!(by_bytes(b""), by_bytes(b"\0"));
    }

    #[test]
    fn tail_masks() {
        assert_eq!(tail_mask(1), 0xff);
        assert_eq!(tail_mask(3), 0xff_ffff);
        assert_eq!(tail_mask(8), u64::MAX);
    }
}
