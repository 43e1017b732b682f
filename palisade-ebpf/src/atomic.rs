//! Atomic read-modify-write on map values: compare-and-exchange and exchange, which
//! `core::sync::atomic` does not offer on the BPF target. Both compile to single BPF atomic
//! instructions (`BPF_CMPXCHG`, `BPF_XCHG`), so nothing running on the same CPU (a
//! preempting task, a softirq) can come between the read and the write.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xchg};

/// Stores `new` in `*dst` if it holds `old`; true when it did.
///
/// # Safety
/// `dst` is a valid, 8-aligned pointer into a map value.
#[inline(always)]
pub unsafe fn compare_exchange(dst: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: as the caller promises.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::AcqRel }, { AtomicOrdering::Relaxed }>(dst, old, new)
            .1
    }
}

/// Stores `new` in `*dst`, returning what was there.
///
/// # Safety
/// As for [`compare_exchange`].
#[inline(always)]
pub unsafe fn exchange(dst: *mut u64, new: u64) -> u64 {
    // SAFETY: as the caller promises.
    unsafe { atomic_xchg::<u64, { AtomicOrdering::AcqRel }>(dst, new) }
}

/// Adds `v` to `*dst` (one `BPF_XADD`; its old value is not returned: the instruction set
/// this builds for has no fetching add).
///
/// # Safety
/// As for [`compare_exchange`].
#[inline(always)]
pub unsafe fn add(dst: *mut u64, v: u64) {
    // SAFETY: as the caller promises.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v);
    }
}
