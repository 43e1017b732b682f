//! An 802.1Q access link on a plain veth pair, for a kernel without VLAN devices (no
//! `8021q`) nor bridge VLAN filtering nor tc's `vlan` action, as on these machines.
//!
//! Each end gets two tcx programs, first in their chains: on egress, every frame is tagged
//! with the link's VLAN id (`bpf_skb_vlan_push`); on ingress, a frame tagged with that id is
//! untagged (`bpf_skb_vlan_pop`) and anything else is dropped, so an untagged frame never
//! reaches either host's stack. The tag travels inside the frame, where XDP sees it: a veth
//! hands its peer the tag as metadata (`skb->vlan_tci`, invisible to XDP but for the
//! `bpf_xdp_metadata_rx_vlan_tag` kfunc) while `tx-vlan-offload` is on, so it is turned off
//! and the stack writes the tag into the frame before the veth sends it.
//!
//! XDP runs before all of this on receive, so an XDP program on either veth sees the tagged
//! frame as a NIC would deliver it, and whatever it sends back with `XDP_TX` must carry the
//! tag to be accepted by the peer.

use super::{
    netns::exec_in,
    rawbpf::{self, BPF_F_BEFORE, BPF_PROG_TYPE_SCHED_CLS, BPF_TCX_EGRESS, BPF_TCX_INGRESS, insn},
};

/// `__sk_buff.vlan_tci` (`uapi/linux/bpf.h`).
const SKB_VLAN_TCI: i16 = 24;
const BPF_FUNC_SKB_VLAN_PUSH: i32 = 18;
const BPF_FUNC_SKB_VLAN_POP: i32 = 19;
/// `htons(ETH_P_8021Q)` as the helper takes it (little-endian host).
const ETH_P_8021Q_BE: i32 = 0x0081;
const TCX_NEXT: i32 = -1;
const TCX_DROP: i32 = 2;

/// The taggers of one end of the link; removed when dropped.
pub struct VlanEnd {
    _egress: rawbpf::Attached,
    _ingress: rawbpf::Attached,
}

impl VlanEnd {
    /// Makes `iface` in namespace `ns` an access port of VLAN `vid` (1 to 4094).
    pub fn attach(ns: &str, iface: &str, vid: u16) -> Self {
        assert!((1..4095).contains(&vid), "VLAN id {vid}");
        let vid = i32::from(vid);
        let out = exec_in(ns, "ethtool", &["-K", iface, "txvlan", "off"]);
        assert!(
            out.status.success(),
            "ethtool -K {iface} txvlan off in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let push = [
            insn(0xb7, 2, 0, 0, ETH_P_8021Q_BE), // r2 = vlan_proto
            insn(0xb7, 3, 0, 0, vid),            // r3 = vlan_tci
            insn(0x85, 0, 0, 0, BPF_FUNC_SKB_VLAN_PUSH),
            insn(0xb7, 0, 0, 0, TCX_NEXT),
            insn(0x95, 0, 0, 0, 0),
        ];
        let pop = [
            insn(0xbf, 6, 1, 0, 0),            // r6 = skb
            insn(0x61, 2, 1, SKB_VLAN_TCI, 0), // r2 = skb->vlan_tci
            insn(0x57, 2, 0, 0, 0xfff),        // the VLAN id
            insn(0x55, 2, 0, 4, vid),          // another id, or none: drop
            insn(0xbf, 1, 6, 0, 0),
            insn(0x85, 0, 0, 0, BPF_FUNC_SKB_VLAN_POP),
            insn(0xb7, 0, 0, 0, TCX_NEXT),
            insn(0x95, 0, 0, 0, 0),
            insn(0xb7, 0, 0, 0, TCX_DROP),
            insn(0x95, 0, 0, 0, 0),
        ];
        let tcx = |at, name, insns: &[u64]| {
            rawbpf::attach(
                ns,
                iface,
                BPF_PROG_TYPE_SCHED_CLS,
                at,
                BPF_F_BEFORE,
                name,
                insns,
            )
        };
        Self {
            _egress: tcx(BPF_TCX_EGRESS, "test_vlan_push", &push),
            _ingress: tcx(BPF_TCX_INGRESS, "test_vlan_pop", &pop),
        }
    }
}
