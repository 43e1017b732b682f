//! A two-instruction `XDP_PASS` program attached to an interface in a namespace.
//!
//! Why the DNS tests need it: a veth delivers a frame sent back with `XDP_TX` into its peer's
//! XDP ring and wakes the peer's NAPI only when the peer has an XDP program of its own
//! (`veth_xdp_flush`). Without one the frame is dropped (`rx_queue_0_xdp_tx_errors`) or, with
//! GRO enabled on the peer, left in the ring until other traffic happens to wake it. So for
//! Palisade's NXDOMAIN answers (`XDP_TX` on the resolver's veth) to reach the client over a
//! veth pair, the client end needs an XDP program; this one passes everything.
//!
//! It goes away when the guard drops or the namespace is deleted (see `support/rawbpf.rs`).

use crate::support::rawbpf::{self, BPF_PROG_TYPE_XDP, BPF_XDP, insn};

pub struct XdpPass {
    _attached: rawbpf::Attached,
}

impl XdpPass {
    /// Attaches the pass program (native mode) to `iface` in namespace `ns`.
    pub fn attach(ns: &str, iface: &str) -> Self {
        // r0 = XDP_PASS; exit
        let insns = [insn(0xb7, 0, 0, 0, 2), insn(0x95, 0, 0, 0, 0)];
        Self {
            _attached: rawbpf::attach(
                ns,
                iface,
                BPF_PROG_TYPE_XDP,
                BPF_XDP,
                0,
                "test_pass",
                &insns,
            ),
        }
    }
}
