//! The `redirect` action: a packet a rule matches leaves by another interface straight from
//! XDP, never entering the stack (see `docs/design/firewall.md`, "Actions").
//!
//! Two ways of choosing the interface:
//! - direct (`redirect_to = "IFACE"`): the frame goes out of `IFACE` as it is, through the
//!   device map `REDIRECT_DEVS` (`bpf_redirect_map`), after `bpf_check_mtu` on that device;
//! - route-to (`route_table = N`): `bpf_fib_lookup` in routing table `N` finds the next hop;
//!   the frame's MAC addresses are rewritten from its result, the TTL / hop limit
//!   decremented (the IPv4 checksum updated), and it leaves by the route's interface
//!   (`bpf_redirect`). The lookup checks the route's MTU.
//!
//! What happens when the packet cannot go (each counted in `REDIRECT_STATS`):
//! - too big for the interface or route: dropped, reason `redirect-too-big`;
//! - no route, or the route says blackhole / unreachable / prohibit / not forwarded: passed
//!   to the stack, which routes it by its own tables (fail-open);
//! - no neighbour entry for the next hop: passed to the stack (its routing may resolve it);
//! - a TTL / hop limit of 1 or less under route-to: passed to the stack, which answers
//!   "time exceeded";
//! - the interface gone from the device map: passed to the stack.

use crate::{action::csum_replace16, map_type};

/// `RuleMeta::action`: leave by another interface (see the module).
pub const ACTION_REDIRECT: u8 = 5;

/// `RuleMeta::flags` of a redirect rule: route-to; `RuleMeta::ifindex` holds the routing
/// table, not an interface.
pub const RULE_REDIRECT_FIB: u8 = 16;

/// Capacity of `REDIRECT_DEVS` (a device hash keyed by interface index): the interfaces the
/// `redirect_to` of one policy may name. A policy naming more is refused.
pub const MAX_REDIRECT_IFACES: u32 = 64;

/// `REDIRECT_STATS`: packets a redirect rule matched.
pub const RS_MATCHED: u32 = 0;
/// Packets sent out of the rule's interface (`XDP_REDIRECT` returned).
pub const RS_SENT: u32 = 1;
/// Too big for the interface (direct) or the route (route-to): dropped.
pub const RS_TOO_BIG: u32 = 2;
/// No usable route in the table (route-to): passed to the stack.
pub const RS_NO_ROUTE: u32 = 3;
/// No neighbour entry for the next hop (route-to): passed to the stack.
pub const RS_NO_NEIGH: u32 = 4;
/// TTL / hop limit would expire (route-to): passed to the stack.
pub const RS_TTL_EXPIRED: u32 = 5;
/// The interface missing from the device map, or the redirect refused: passed.
pub const RS_NO_DEVICE: u32 = 6;
/// Frames too short to rewrite (cannot happen for a frame the parser accepted; counted
/// rather than assumed): passed.
pub const RS_SKIPPED: u32 = 7;
/// Slots of `REDIRECT_STATS`.
pub const RS_COUNT: u32 = 8;
/// Counter names, by index.
pub const RS_NAMES: [&str; RS_COUNT as usize] = [
    "matched",
    "sent",
    "too_big",
    "no_route",
    "no_neigh",
    "ttl_expired",
    "no_device",
    "skipped",
];

/// `bpf_fib_lookup`'s parameters (`struct bpf_fib_lookup`, 64 bytes), with its unions laid
/// out as the fields this program uses.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FibParams {
    pub family: u8,
    pub l4_protocol: u8,
    /// Network order.
    pub sport: u16,
    /// Network order.
    pub dport: u16,
    /// In: the IP packet's length (host order), which makes the lookup check the MTU. Out,
    /// with `FIB_FRAG_NEEDED`: the route's MTU.
    pub tot_len: u16,
    /// In: the ingress interface. Out: the egress interface.
    pub ifindex: u32,
    /// IPv4 TOS, or the IPv6 flow information (network order).
    pub tos: u32,
    /// IPv4 in the first word (network order), or IPv6.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// In, with `FIB_LOOKUP_TBID`: the routing table. Out: the VLAN protocol and TCI.
    pub tbid: u32,
    /// Out: the source and destination MAC addresses of the next hop.
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}
map_type!(FibParams, 64);

/// `AF_INET`, `AF_INET6`, as `bpf_fib_lookup` takes them.
pub const FIB_AF_INET: u8 = 2;
pub const FIB_AF_INET6: u8 = 10;
/// `BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID`: table `tbid`, no policy rules.
pub const FIB_FLAGS_TABLE: u32 = 1 | 8;
/// `BPF_FIB_LKUP_RET_SUCCESS`.
pub const FIB_SUCCESS: i64 = 0;
/// `BPF_FIB_LKUP_RET_NO_NEIGH`.
pub const FIB_NO_NEIGH: i64 = 7;
/// `BPF_FIB_LKUP_RET_FRAG_NEEDED`.
pub const FIB_FRAG_NEEDED: i64 = 8;

/// IPv4: the header's TTL/protocol word and checksum after the TTL is decremented (the
/// caller has checked TTL > 1).
#[must_use]
pub const fn v4_dec_ttl(ttl_proto: u16, check: u16) -> (u16, u16) {
    let new = ttl_proto.wrapping_sub(0x100);
    (new, csum_replace16(check, ttl_proto, new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::tests::full;

    #[test]
    fn ttl_decrement_checksum_matches_a_full_recompute() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let mut h = [0u8; 20];
            for b in &mut h {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                *b = (x >> 33) as u8;
            }
            h[0] = 0x45;
            h[8] = h[8].max(2);
            let c = full(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let ttl = h[8];
            let (w, check) = v4_dec_ttl(u16::from_be_bytes([h[8], h[9]]), c);
            h[8..10].copy_from_slice(&w.to_be_bytes());
            assert_eq!(h[8], ttl - 1);
            assert_eq!(check, full(&h), "header {h:02x?}");
        }
    }

    #[test]
    fn fib_params_are_the_kernel_layout() {
        assert_eq!(core::mem::size_of::<FibParams>(), 64);
        assert_eq!(core::mem::offset_of!(FibParams, ifindex), 8);
        assert_eq!(core::mem::offset_of!(FibParams, src), 16);
        assert_eq!(core::mem::offset_of!(FibParams, dst), 32);
        assert_eq!(core::mem::offset_of!(FibParams, tbid), 48);
        assert_eq!(core::mem::offset_of!(FibParams, smac), 52);
        assert_eq!(core::mem::offset_of!(FibParams, dmac), 58);
    }
}
