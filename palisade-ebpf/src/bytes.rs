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
}

/// The packet a socket-buffer program (cgroup_skb, TC) sees.
pub struct SkbBytes<'a>(pub &'a aya_ebpf::programs::SkBuffContext);

impl Bytes for SkbBytes<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // bpf_skb_load_bytes checks the range itself.
        self.0.load::<[u8; N]>(offset).ok()
    }
}
