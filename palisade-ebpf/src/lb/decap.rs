//! Decapsulation for DSR backends whose kernel has no IPIP / IP6IP6 tunnel devices
//! (`CONFIG_NET_IPIP`, `CONFIG_IPV6_TUNNEL`): a TC ingress program on the backend's
//! interface that removes the outer IPv4 header of an IPIP packet, or the outer IPv6
//! header of an IP6IP6 one, so the stack receives the client's packet to the VIP (held on
//! `lo`). Backends with the tunnel devices need none of this.
//!
//! Only untagged frames whose outer header has no options or extension headers are
//! decapsulated; everything else goes on unchanged. Never drops.

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    programs::TcContext,
};
use palisade_common::packet::{Bytes as _, ETH_HLEN, ETH_P_IP, ETH_P_IPV6};

use crate::bytes::TcBytes;

/// IP protocol numbers of the inner packet.
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let b = TcBytes::of(ctx);
    let Some(eth) = b.load::<ETH_HLEN>(0) else {
        return TC_ACT_UNSPEC;
    };
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let outer = if ethertype == ETH_P_IP {
        match b.load::<20>(ETH_HLEN) {
            // IPv4 in IPv4, no options, not a fragment.
            Some(h) if h[0] == 0x45 && h[9] == IPPROTO_IPIP && h[6] & 0x3f == 0 && h[7] == 0 => 20,
            _ => return TC_ACT_UNSPEC,
        }
    } else if ethertype == ETH_P_IPV6 {
        match b.load::<40>(ETH_HLEN) {
            Some(h) if h[0] >> 4 == 6 && h[6] == IPPROTO_IPV6 => 40,
            _ => return TC_ACT_UNSPEC,
        }
    } else {
        return TC_ACT_UNSPEC;
    };
    // Removes `outer` bytes right after the Ethernet header: the inner header follows it.
    let _ = ctx.adjust_room(-outer, BPF_ADJ_ROOM_MAC, 0);
    TC_ACT_UNSPEC
}
