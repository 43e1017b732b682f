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

impl Bytes for XdpFrame {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if self.start + offset + N > self.end {
            return None;
        }
        // SAFETY: the range was just checked to lie inside the frame.
        Some(unsafe { core::ptr::read_unaligned((self.start + offset) as *const [u8; N]) })
    }
}
