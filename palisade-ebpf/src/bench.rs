//! Traffic generation for the benchmarks (`palisade-bench --live`).
//!
//! Run with `BPF_PROG_TEST_RUN` in live-frames mode, this program turns one input frame into a
//! stream of different packets: each run overwrites the frame with the next of
//! [`BENCH_TEMPLATES`] templates and redirects it out of the interface in `BENCH_IFINDEX`. A
//! veth pair then carries the stream to the filter under test. The kernel has no pktgen here;
//! this is the fastest packet source it offers. The daemon never loads this program.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Bytes of every template, and of the frame the test run starts from.
pub const BENCH_FRAME_LEN: usize = 64;
/// Templates cycled through; a power of two so the index is a mask.
pub const BENCH_TEMPLATES: u32 = 64;

/// Where the frames go: the interface index, in the namespace of the thread running the test.
#[map]
static BENCH_IFINDEX: Array<u32> = Array::with_max_entries(1, 0);

/// The frames to send, in turn.
#[map]
static BENCH_FRAMES: Array<[u8; BENCH_FRAME_LEN]> = Array::with_max_entries(BENCH_TEMPLATES, 0);

/// Which template comes next, per CPU.
#[map]
static BENCH_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The traffic generator: next template, then `XDP_REDIRECT`. Aborts on anything unexpected,
/// so a misconfigured run shows up as a test-run error rather than as odd traffic.
#[xdp]
pub fn palisade_bench_redirect(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + BENCH_FRAME_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(cursor) = BENCH_CURSOR.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a per-CPU slot; nothing else on this CPU runs this program concurrently.
    let index = unsafe {
        let i = *cursor;
        *cursor = i.wrapping_add(1);
        i & (BENCH_TEMPLATES - 1)
    };
    let (Some(template), Some(ifindex)) = (BENCH_FRAMES.get(index), BENCH_IFINDEX.get(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: the frame holds BENCH_FRAME_LEN bytes (checked above) and the template is a map
    // value of that size; the two never overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(template.as_ptr(), start as *mut u8, BENCH_FRAME_LEN);
        bpf_redirect(*ifindex, 0) as u32
    }
}
