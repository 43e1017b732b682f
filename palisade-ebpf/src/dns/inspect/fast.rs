//! The fast walk: a plain question name of at most [`LABELS`] labels and [`WIRE`] wire
//! bytes, read a word at a time in straight-line code instead of one byte per step in
//! `bpf_loop` callbacks. Most queries are such names. Anything else (a compression pointer,
//! a reserved label type, more labels, a longer name, a name that does not end inside the
//! message) is left to the byte walker, which decides it exactly as before.
//!
//! It fills the scratch as the byte walker does (folded and raw name, label starts and
//! hashes, wire length, the raw question sum), with the same shared pieces: the word folding
//! (`name::fold_word`) and the label hash (`hash::LabelHasher`), whose word and byte feeds
//! agree.

use palisade_common::dns::{
    hash::{HashKey, LabelHasher, tail_mask},
    name::fold_word,
    wire::{HEADER_LEN, MAX_LABEL},
};

use super::{Scratch, match_one};
use crate::maps::{DNS_KEY, DNS_SCRATCH};

/// Labels the fast walk takes, at most.
pub const LABELS: usize = 4;
/// Wire bytes of the name the fast walk takes, root byte included, at most.
pub const WIRE: usize = 64;
/// Words of [`WIRE`] bytes.
const WORDS: usize = WIRE / 8;

// The word loads below read whole aligned words of `msg` and `name`: both must start on
// a word boundary of the (8-aligned) scratch value, and the loads past the name's end must
// stay inside them.
const _: () = assert!(core::mem::offset_of!(Scratch, msg) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Scratch, name) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Scratch, raw_name) % 8 == 0);
const _: () = assert!(HEADER_LEN == 12);
const _: () = assert!(WIRE % 8 == 0 && WIRE + 16 <= 256);

/// Walks the question name of the message in the scratch slot `slot` when it is one the
/// fast walk takes; `false` leaves it to the byte walker (nothing it wrote is then relied
/// on). A subprogram of its own, taking scalars: its locals stay out of the inspector's
/// frame, which the hooks' frames are stacked under.
#[inline(never)]
pub fn walk(slot: u32, msg_len: usize) -> bool {
    let (Some(key), Some(s)) = (DNS_KEY.get(0), DNS_SCRATCH.get_ptr_mut(slot)) else {
        return false;
    };
    // SAFETY: this hook's per-CPU scratch slot.
    let s = unsafe { &mut *s };
    let msg = s.msg.as_ptr().cast::<u64>();
    let raw = s.raw_name.as_mut_ptr().cast::<u64>();
    let name = s.name.as_mut_ptr().cast::<u64>();
    // The name starts at message offset 12, half a word in: each name word is the high
    // half of one aligned message word and the low half of the next. Bytes past the message
    // are stale, but nothing past the name's root byte is used, and the root byte is
    // checked to lie inside the message.
    let mut k = 0;
    while k < WORDS {
        // SAFETY: words 1..=WORDS + 1 of the 512-byte `msg`, words 0..WORDS of the 256-byte
        // names; all aligned (asserted above). Volatile, so the word is stored before the
        // next is loaded: with all sixteen held at once, the registers spill onto a stack
        // that the hooks' frames have already nearly filled.
        unsafe {
            let lo = core::ptr::read_volatile(msg.add(k + 1));
            let hi = core::ptr::read_volatile(msg.add(k + 2));
            let w = (lo >> 32) | (hi << 32);
            core::ptr::write_volatile(raw.add(k), w);
            core::ptr::write_volatile(name.add(k), fold_word(w));
        }
        k += 1;
    }

    // The offset of each label's length byte goes through the scratch: read back from a
    // map value it is unknown to the verifier, so the states left by the previous label's
    // different lengths meet as one instead of multiplying label by label. Volatile, so the
    // compiler keeps the round trip.
    // SAFETY: a plain store into the scratch.
    unsafe { core::ptr::write_volatile(&raw mut s.walk.walker.at, 0) };
    let mut hashes_done = 0;
    let mut wire_len = 0;
    let mut i = 0;
    while i <= LABELS {
        // SAFETY: a plain load from the scratch.
        let at = usize::from(unsafe { core::ptr::read_volatile(&raw const s.walk.walker.at) });
        if at >= WIRE {
            return false;
        }
        let len = usize::from(s.name[at]);
        if len == 0 {
            wire_len = at + 1;
            hashes_done = i;
            break;
        }
        // A pointer, a reserved label type, a fifth label: the byte walker's case.
        if i == LABELS || len > MAX_LABEL {
            return false;
        }
        let next = at + 1 + len;
        if next >= WIRE {
            return false;
        }
        s.starts[i] = at as u8;
        s.hashes[i] = {
            let h = label_hash(s, key, at + 1, len);
            [h.0, h.1]
        };
        // SAFETY: a plain store into the scratch.
        unsafe { core::ptr::write_volatile(&raw mut s.walk.walker.at, next as u16) };
        i += 1;
    }
    if wire_len == 0 || HEADER_LEN + wire_len > msg_len {
        return false;
    }
    let w = &mut s.walk;
    w.failed = false;
    w.wire_len = wire_len as u16;
    w.walker.in_message = wire_len as u16;
    w.walker.labels = hashes_done as u8;
    w.raw_sum = raw_sum(raw, wire_len);
    true
}

/// The hash of the folded label of `len` bytes (1 to 63) at name offset `from`, eight bytes
/// at a time; `from + len` is below [`WIRE`].
#[inline(always)]
fn label_hash(s: &Scratch, key: &HashKey, from: usize, len: usize) -> (u64, u64) {
    let name = s.name.as_ptr().cast::<u64>();
    // The key's words are read for each label rather than kept in registers across the
    // labels (volatile), for the same reason as the copy in `walk`.
    // SAFETY: fields of the key map's value.
    let key = unsafe {
        HashKey {
            k: [
                core::ptr::read_volatile(&raw const key.k[0]),
                core::ptr::read_volatile(&raw const key.k[1]),
                0,
                0,
            ],
        }
    };
    let mut h = LabelHasher::new(&key);
    let mut done = 0;
    while done < WIRE {
        if done >= len {
            break;
        }
        let at = (from + done) & (WIRE - 1);
        let word = at / 8;
        let shift = 8 * (at % 8);
        // SAFETY: words `word` and `word + 1` (at most WORDS) of the 256-byte name, aligned.
        let (lo, hi) = unsafe { (name.add(word).read(), name.add(word + 1).read()) };
        // The next word's bytes shifted in; two shifts, as a shift by 64 (`shift` = 0) is
        // not defined and must give 0.
        let mut w = (lo >> shift) | ((hi << 1) << (63 - shift));
        let left = len - done;
        if left < 8 {
            w &= tail_mask(left);
        }
        h.push_word(w);
        done += 8;
    }
    h.finish(len as u8)
}

/// The one's-complement sum of the name's first `wire_len` raw bytes as 16-bit big-endian
/// words from an even offset, as the byte walker accumulates it. Here it is summed as
/// little-endian words and swapped at the end: one's-complement sums do not depend on the
/// byte order (RFC 1071), so the result is equal modulo 0xffff, which is all the checksum
/// uses.
#[inline(always)]
fn raw_sum(raw: *const u64, wire_len: usize) -> u32 {
    let mut sum = 0u64;
    let mut k = 0;
    while k < WORDS {
        let done = 8 * k;
        if done >= wire_len {
            break;
        }
        // SAFETY: word k < WORDS of the 256-byte raw name, aligned. Volatile: read back
        // rather than kept in registers (spilled) since the copy.
        let mut w = unsafe { core::ptr::read_volatile(raw.add(k)) };
        let left = wire_len - done;
        if left < 8 {
            w &= tail_mask(left);
        }
        let pairs = (w & 0x0000_ffff_0000_ffff) + ((w >> 16) & 0x0000_ffff_0000_ffff);
        sum += (pairs & 0xffff_ffff) + (pairs >> 32);
        k += 1;
    }
    // At most 4 * 8 words of 16 bits: two folds bring it below 0x10000.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    u32::from((sum as u16).swap_bytes())
}

/// Looks up every suffix of a name of at most [`LABELS`] labels (the matcher's state is set
/// up in the scratch), in line rather than one `bpf_loop` callback per label. A subprogram
/// of its own for the same reason as [`walk`].
#[inline(never)]
pub fn match_suffixes(slot: u32) {
    let Some(s) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: this hook's per-CPU scratch slot.
    let s = unsafe { &mut *s };
    let labels = usize::from(s.matcher.labels);
    let mut i = 0;
    while i < LABELS {
        if i >= labels {
            break;
        }
        match_one(s, i as u64);
        i += 1;
    }
}
