//! Bounds-checked reads from packet memory for the shared parser.

use aya_ebpf::programs::XdpContext;
use palisade_common::packet::Bytes;

/// The frame an XDP program sees.
pub struct XdpBytes<'a>(pub &'a XdpContext);

impl Bytes for XdpBytes<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        let end = self.0.data_end();
        // The explicit comparison against data_end is what the verifier needs to see before
        // the read; offsets were bounded by the parser.
        if start + offset + N > end {
            return None;
        }
        // SAFETY: the range was just checked to lie inside the frame.
        Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
    }

    #[inline(always)]
    fn words32<const W: usize>(&self, offset: usize) -> Option<[u32; W]> {
        XdpFrame::of(self.0).words32(offset)
    }

    #[inline(always)]
    fn words64<const W: usize>(&self, offset: usize) -> Option<[u64; W]> {
        XdpFrame::of(self.0).words64(offset)
    }
}

/// The packet a socket-buffer program (cgroup_skb, TC) sees.
pub struct SkbBytes<'a>(pub &'a aya_ebpf::programs::SkBuffContext);

impl Bytes for SkbBytes<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // bpf_skb_load_bytes checks the range itself.
        self.0.load::<[u8; N]>(offset).ok()
    }

    /// One helper call for all the words (the default would make one per word).
    #[inline(always)]
    fn words32<const W: usize>(&self, offset: usize) -> Option<[u32; W]> {
        self.0.load::<[u32; W]>(offset).ok()
    }

    /// One helper call for all the words.
    #[inline(always)]
    fn words64<const W: usize>(&self, offset: usize) -> Option<[u64; W]> {
        self.0.load::<[u64; W]>(offset).ok()
    }
}

/// The linear part of the frame a TC program sees (from the Ethernet header), read directly
/// like XDP's. Headers that lie beyond the linear part read as missing: pulling them in would
/// copy the head of every cloned skb (every TCP segment the host sends). The bounds are read
/// once, like [`XdpFrame`]'s, so the struct can be handed to non-inlined functions.
pub struct TcBytes {
    start: usize,
    end: usize,
}

impl TcBytes {
    #[inline(always)]
    pub fn of(ctx: &aya_ebpf::programs::TcContext) -> Self {
        let skb = ctx.skb.skb;
        // SAFETY: `skb` is the program's context; its fields are plain reads.
        unsafe {
            Self {
                start: core::ptr::read_volatile(&raw const (*skb).data) as usize,
                end: core::ptr::read_volatile(&raw const (*skb).data_end) as usize,
            }
        }
    }
}

impl Bytes for TcBytes {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if self.start + offset + N > self.end {
            return None;
        }
        // SAFETY: the range was just checked to lie inside the linear data.
        Some(unsafe { core::ptr::read_unaligned((self.start + offset) as *const [u8; N]) })
    }

    #[inline(always)]
    fn words32<const W: usize>(&self, offset: usize) -> Option<[u32; W]> {
        words_in(self.start, self.end, offset)
    }

    #[inline(always)]
    fn words64<const W: usize>(&self, offset: usize) -> Option<[u64; W]> {
        words_in(self.start, self.end, offset)
    }
}

/// An XDP frame's bounds read once, with volatile loads, inside the function that uses
/// them. A non-inlined function that takes the context would otherwise have the loads
/// hoisted into its caller (argument promotion), and the verifier refuses the widening the
/// callee then does on the frame-end pointer.
pub struct XdpFrame {
    start: usize,
    end: usize,
}

impl XdpFrame {
    #[inline(always)]
    pub fn of(ctx: &XdpContext) -> Self {
        let md = ctx.ctx;
        // SAFETY: `md` is the program's context; its fields are plain reads.
        unsafe {
            Self {
                start: core::ptr::read_volatile(&raw const (*md).data) as usize,
                end: core::ptr::read_volatile(&raw const (*md).data_end) as usize,
            }
        }
    }
}

impl XdpFrame {
    /// Writes `v` at `offset`; false when the range is not inside the frame.
    #[inline(always)]
    pub fn store<const N: usize>(&self, offset: usize, v: &[u8; N]) -> bool {
        if self.start + offset + N > self.end {
            return false;
        }
        // SAFETY: the range was just checked to lie inside the frame.
        unsafe { core::ptr::write_unaligned((self.start + offset) as *mut [u8; N], *v) };
        true
    }
}

impl XdpFrame {
    /// Bytes in the frame.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// A pointer to the `N` bytes at `offset`, for helpers that read a header in place;
    /// `None` when they are not all inside the frame.
    #[inline(always)]
    pub fn ptr<const N: usize>(&self, offset: usize) -> Option<*mut u8> {
        if self.start + offset + N > self.end {
            return None;
        }
        Some((self.start + offset) as *mut u8)
    }
}

impl Bytes for XdpFrame {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if self.start + offset + N > self.end {
            return None;
        }
        // SAFETY: the range was just checked to lie inside the frame.
        Some(unsafe { core::ptr::read_unaligned((self.start + offset) as *const [u8; N]) })
    }

    #[inline(always)]
    fn words32<const W: usize>(&self, offset: usize) -> Option<[u32; W]> {
        words_in(self.start, self.end, offset)
    }

    #[inline(always)]
    fn words64<const W: usize>(&self, offset: usize) -> Option<[u64; W]> {
        words_in(self.start, self.end, offset)
    }
}

/// Loads the eight bytes at packet address `at` as one little-endian word, whatever its
/// alignment. The compiler splits an unaligned load into eight byte loads on this target;
/// the kernel allows unaligned packet loads on the architectures it runs this on, so the
/// single instruction is written out here.
///
/// # Safety
/// `at..at + 8` must have been checked against the frame's end.
#[inline(always)]
unsafe fn load_word(at: usize) -> u64 {
    let v: u64;
    // SAFETY: the caller checked the range; the instruction only reads.
    unsafe {
        core::arch::asm!(
            "{v} = *(u64 *)({p} + 0)",
            p = in(reg) at,
            v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    v
}

/// Loads the four bytes at packet address `at` as one word, whatever its alignment, as
/// [`load_word`] does eight.
///
/// # Safety
/// `at..at + 4` must have been checked against the frame's end.
#[inline(always)]
unsafe fn load_half(at: usize) -> u32 {
    let v: u64;
    // SAFETY: the caller checked the range; the instruction only reads.
    unsafe {
        core::arch::asm!(
            "{v} = *(u32 *)({p} + 0)",
            p = in(reg) at,
            v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    // The load zero-extends: the high half is 0.
    v as u32
}

/// A word the frame is read in: what [`words_in`] loads.
trait Word: Copy + Default {
    const SIZE: usize;

    /// The word at packet address `at`, whatever its alignment.
    ///
    /// # Safety
    /// `at..at + SIZE` must have been checked against the frame's end.
    unsafe fn load(at: usize) -> Self;
}

impl Word for u32 {
    const SIZE: usize = 4;

    #[inline(always)]
    unsafe fn load(at: usize) -> Self {
        // SAFETY: the caller's contract.
        unsafe { load_half(at) }
    }
}

impl Word for u64 {
    const SIZE: usize = 8;

    #[inline(always)]
    unsafe fn load(at: usize) -> Self {
        // SAFETY: the caller's contract.
        unsafe { load_word(at) }
    }
}

/// [`Bytes::words32`] and [`Bytes::words64`] for packet memory from `start` to `end`: one
/// bounds check, then one load per word. The first word's address is made opaque before the
/// check, so that the check and every load use that one register (plus a constant): the
/// verifier then knows all of them lie inside the frame. Left to itself, the compiler folds
/// each word's constant into the variable offset, and the verifier sees unrelated pointers.
#[inline(always)]
fn words_in<T: Word, const W: usize>(start: usize, end: usize, offset: usize) -> Option<[T; W]> {
    let mut at = start + offset;
    opaque(&mut at);
    if at + T::SIZE * W > end {
        return None;
    }
    let mut out = [T::default(); W];
    let mut i = 0;
    while i < W {
        // SAFETY: `at..at + SIZE * W` was just checked to lie inside the frame.
        out[i] = unsafe { T::load(at + T::SIZE * i) };
        i += 1;
    }
    Some(out)
}

/// Hides where `v` came from from the compiler, which otherwise folds arithmetic into
/// forms the verifier refuses. One register move: the verifier still knows the value.
#[inline(always)]
fn opaque(v: &mut usize) {
    let mut x = *v;
    // SAFETY: a register moved onto itself.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) x, options(pure, nomem, nostack)) };
    *v = x;
}

/// The furthest offset [`XdpFrame::copy_words`] reads at.
const LAST_WORD_MAX: usize = 0x3fff;

impl XdpFrame {
    /// The word at `offset`, if it lies in the frame.
    #[inline(always)]
    fn word_at(&self, offset: usize) -> Option<u64> {
        if self.start + offset + 8 > self.end {
            return None;
        }
        // SAFETY: the range was just checked to lie inside the frame.
        Some(unsafe { load_word(self.start + offset) })
    }

    /// Copies the `len` bytes at `offset` (8 to `8 * WORDS`) into `dst` by whole words,
    /// instead of through `bpf_xdp_load_bytes` (a helper call and two more inside it). The
    /// last word may take bytes past `len` that lie in the frame; when `len` runs to the
    /// frame's end, the last word is read ending there instead. False, with `dst` partly
    /// written, when the range is not in the frame.
    #[inline(always)]
    pub fn copy_words<const WORDS: usize>(&self, offset: usize, len: usize, dst: *mut u64) -> bool {
        // The offset's bound is repeated by a mask: the verifier marks no range on a
        // pointer that may lie 64 KiB in.
        if len < 8 || len > 8 * WORDS || offset > LAST_WORD_MAX {
            return false;
        }
        let offset = offset & LAST_WORD_MAX;
        if self.start + offset + len > self.end {
            return false;
        }
        let mut k = 0;
        while k < WORDS {
            let done = 8 * k;
            if done >= len {
                break;
            }
            let w = match self.word_at(offset + done) {
                Some(w) => w,
                None => {
                    // The frame ends within this word: read the word that ends with the
                    // frame, and drop the bytes before this one's start. The frame's length
                    // goes through an opaque register: folded back into `end - 8`, the
                    // verifier refuses arithmetic on the frame-end pointer.
                    let mut frame_len = self.end - self.start;
                    opaque(&mut frame_len);
                    // The message (at least 8 bytes) starts at or before `frame_len - 8`,
                    // so `back` is 1 to 7. Longer frames take the helper; the mask is for
                    // the verifier, as above.
                    let last = frame_len.wrapping_sub(8);
                    if last > LAST_WORD_MAX {
                        return false;
                    }
                    let mut last = last & LAST_WORD_MAX;
                    // Opaque again, or `start + last + 8` is folded into `start + frame_len`
                    // and the checked pointer is not the loaded one.
                    opaque(&mut last);
                    let back = (offset + done).wrapping_sub(last) & 7;
                    match self.word_at(last) {
                        Some(w) => w >> (8 * back),
                        None => return false,
                    }
                }
            };
            // SAFETY: word `k` < WORDS of the caller's buffer. Volatile, so the words are not
            // gathered into registers (spilled onto a small stack) before the stores.
            unsafe { core::ptr::write_volatile(dst.add(k), w) };
            k += 1;
        }
        true
    }
}
