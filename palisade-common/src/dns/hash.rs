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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelHasher {
    pub a: u64,
    pub b: u64,
}

impl LabelHasher {
    #[inline(always)]
    #[must_use]
    pub const fn new(key: &HashKey) -> Self {
        Self {
            a: key.k[0],
            b: key.k[1],
        }
    }

    /// Feeds one (already case-folded) byte.
    #[inline(always)]
    pub fn push(&mut self, byte: u8) {
        let a = (self.a ^ u64::from(byte)).wrapping_mul(M1);
        self.a = a ^ (a >> 32);
        let b = (self.b ^ u64::from(byte)).wrapping_mul(M2);
        self.b = b ^ (b >> 29);
    }

    /// The label's hash, its length folded in.
    #[inline(always)]
    #[must_use]
    pub const fn finish(&self, len: u8) -> (u64, u64) {
        (
            fmix(self.a ^ len as u64),
            fmix(self.b ^ ((len as u64) << 8)),
        )
    }
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
        let mut h = LabelHasher::new(key);
        for &b in label {
            h.push(b.to_ascii_lowercase());
        }
        s = extend(s, h.finish(label.len() as u8));
        if let Some(slot) = out.get_mut(n - 1 - i) {
            *slot = s;
        }
    }
}
