//! NAT (`[nat]`): masquerade/SNAT of a subnet behind the host and DNAT port forwards, done by
//! TC programs on the outside interface. The settings as the kernel reads them, the mapping
//! tables' keys and values, the counters, the port choice and the one's-complement checksum
//! arithmetic, shared by the kernel and the userspace tests.
//!
//! Both tables are keyed by the packet as it is seen on the outside interface's wire side
//! *before* the program rewrites it: `NAT_EGRESS` by what leaves (inside source, not yet
//! translated), `NAT_INGRESS` by what arrives (outside tuple, destination not yet
//! translated). The key of an `NAT_INGRESS` entry is therefore the flow's outside tuple,
//! the one the connection tracker keys the flow by (see [`ct_key`]).

use crate::{
    conntrack::CtKey,
    map_type,
    packet::{FAMILY_V4, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};

/// `NatConfig::flags`: NAT is on in this generation.
pub const NAT_ON: u32 = 1;
/// IPv4 sources of `subnets` are masqueraded to `addr_v4`.
pub const NAT_V4: u32 = 2;
/// IPv6 sources of `subnets` are masqueraded to `addr_v6` (NAT66).
pub const NAT_V6: u32 = 4;

/// Source subnets one policy may masquerade (a bounded scan per new flow).
pub const MAX_SUBNETS: usize = 16;
/// Port forwards one policy may hold (per generation; `NAT_FORWARDS` holds two).
pub const MAX_FORWARDS: u32 = 1024;
/// Ports tried for one new flow before it is dropped with `nat-port-exhausted`: the original
/// source port first, then random ones. Cilium found more than ~25 random retries never
/// help; 32 keeps the chance of a false exhaustion below 1e-6 up to 65 % occupancy of the
/// range towards one remote endpoint.
pub const PORT_RETRIES: u32 = 32;
/// Capacity of each mapping table (`NAT_EGRESS`, `NAT_INGRESS`): flows through the NAT at
/// once. Entries are allocated as mappings are made (about 200 bytes a flow for both).
pub const MAX_ENTRIES: u32 = 262_144;
/// A mapping whose flow the connection tracker does not (yet) hold survives the sweep this
/// long: the tracker commits the flow's entry after the mapping is made, on the same packet,
/// and a sweep may fall in between.
pub const CT_GRACE_NS: u64 = 5_000_000_000;

/// One source subnet: `addr & mask == addr`, both in the 16-byte stored form as words.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatSubnet {
    pub addr: [u32; 4],
    pub mask: [u32; 4],
}
map_type!(NatSubnet, 32);

impl NatSubnet {
    #[inline(always)]
    #[must_use]
    pub const fn contains(&self, a: &[u32; 4]) -> bool {
        a[0] & self.mask[0] == self.addr[0]
            && a[1] & self.mask[1] == self.addr[1]
            && a[2] & self.mask[2] == self.addr[2]
            && a[3] & self.mask[3] == self.addr[3]
    }
}

/// One generation's NAT settings (`NAT_CONFIG`, one slot per policy generation).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatConfig {
    pub flags: u32,
    /// The outside interface: the programs translate there only.
    pub out_ifindex: u32,
    /// External ports handed out, inclusive.
    pub port_lo: u16,
    pub port_hi: u16,
    pub n_subnets: u32,
    /// The external addresses (stored form; IPv4 mapped).
    pub addr_v4: [u32; 4],
    pub addr_v6: [u32; 4],
    pub subnets: [NatSubnet; MAX_SUBNETS],
}
map_type!(NatConfig, 560);

impl NatConfig {
    /// The external address for `family`, when that family is translated.
    #[inline(always)]
    #[must_use]
    pub const fn external(&self, family: u8) -> Option<[u32; 4]> {
        if family == FAMILY_V4 {
            if self.flags & NAT_V4 != 0 {
                return Some(self.addr_v4);
            }
        } else if self.flags & NAT_V6 != 0 {
            return Some(self.addr_v6);
        }
        None
    }

    /// Whether `src` lies in one of the masqueraded subnets.
    #[inline(always)]
    #[must_use]
    pub fn masquerades(&self, src: &[u32; 4]) -> bool {
        let mut i = 0;
        while i < MAX_SUBNETS {
            if i as u32 >= self.n_subnets {
                return false;
            }
            if self.subnets[i].contains(src) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// A packet's tuple in its direction (not canonical, unlike `CtKey`). For ICMP echo both
/// ports hold the identifier.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
map_type!(NatKey, 40);

/// `NatEntry::flags`: made by masquerade (a flow from inside).
pub const ENTRY_SNAT: u8 = 1;
/// Made by a port forward (a flow from outside).
pub const ENTRY_DNAT: u8 = 2;

/// What a mapping rewrites: the address and port the packet's inside-facing endpoint becomes
/// (the source on egress, the destination on ingress).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub addr: [u32; 4],
    pub port: u16,
    pub flags: u8,
    pub _pad: [u8; 5],
    /// When the mapping was made (coarse clock).
    pub created_ns: u64,
}
map_type!(NatEntry, 32);

/// The key of the `NAT_EGRESS` entry that pairs with the `NAT_INGRESS` entry `(k, e)`: the
/// inside endpoint (`e`) talking to the remote one (`k`'s source).
#[inline(always)]
#[must_use]
pub const fn egress_pair(k: &NatKey, e: &NatEntry) -> NatKey {
    NatKey {
        src: e.addr,
        dst: k.src,
        sport: e.port,
        dport: k.sport,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    }
}

/// The connection tracker's key of the flow an `NAT_INGRESS` key belongs to: the outside
/// tuple, in the tracker's canonical order.
#[inline(always)]
#[must_use]
pub fn ct_key(k: &NatKey) -> CtKey {
    let mut c = CtKey {
        a: k.src,
        b: k.dst,
        a_port: k.sport,
        b_port: k.dport,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    };
    c.canonicalize();
    c
}

/// A port forward's key (`NAT_FORWARDS`): generation, family, protocol and external port.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ForwardKey {
    pub generation: u8,
    pub family: u8,
    pub proto: u8,
    pub _pad: u8,
    pub port: u16,
    pub _pad2: u16,
}
map_type!(ForwardKey, 8);

/// A port forward's inside endpoint.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardTarget {
    pub addr: [u32; 4],
    pub port: u16,
    pub _pad: [u8; 6],
}
map_type!(ForwardTarget, 24);

/// Whether `proto` is translated at all (TCP, UDP, ICMP echo and errors).
#[inline(always)]
#[must_use]
pub const fn translated_proto(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6
    )
}

/// The `i`-th port to try for a new mapping in `lo..=hi`: the original port first when it
/// lies in the range (RFC 4787 port preservation, which keeps most flows' ports), then the
/// random draw `rnd`.
#[inline(always)]
#[must_use]
pub const fn candidate(i: u32, orig: u16, lo: u16, hi: u16, rnd: u32) -> u16 {
    if i == 0 && orig >= lo && orig <= hi {
        return orig;
    }
    let span = (hi as u32).wrapping_sub(lo as u32).wrapping_add(1);
    if span == 0 || span > 65_536 {
        return lo;
    }
    (lo as u32 + rnd % span) as u16
}

/// Counters of `NAT_STATS` (per CPU).
/// Mappings made for flows from the masqueraded subnets.
pub const NS_SNAT_NEW: u32 = 0;
/// Mappings made for flows to a port forward.
pub const NS_DNAT_NEW: u32 = 1;
/// Packets translated on egress (sources rewritten).
pub const NS_EGRESS: u32 = 2;
/// Packets translated on ingress (destinations rewritten).
pub const NS_INGRESS: u32 = 3;
/// ICMP errors whose quoted packet was translated with them.
pub const NS_ICMP_ERRORS: u32 = 4;
/// New flows dropped: no free port in `PORT_RETRIES` tries (`nat-port-exhausted`).
pub const NS_EXHAUSTED: u32 = 5;
/// Ports tried for new mappings (divided by the mappings made: tries per mapping).
pub const NS_PROBES: u32 = 6;
/// Ports passed over because a local socket holds them.
pub const NS_LOCAL_SOCKET: u32 = 7;
/// Ports passed over because a port forward uses them.
pub const NS_FORWARD_PORT: u32 = 8;
/// New flows dropped because a mapping table is full (`nat-table-full`).
pub const NS_TABLE_FULL: u32 = 9;
/// Frames left alone because their headers could not be parsed.
pub const NS_NOT_PARSED: u32 = 10;
/// Rewrites the kernel refused (a store or checksum helper failed).
pub const NS_REWRITE_FAILED: u32 = 11;
/// Fragments after the first, which carry no ports: left as they are.
pub const NS_FRAGMENTS: u32 = 12;
/// Mappings removed by the sweep because their flow left the connection tracker.
pub const NS_SWEPT: u32 = 13;
/// Mappings made by another CPU for the same flow at the same moment (this CPU's was undone).
pub const NS_RACES: u32 = 14;
pub const NS_COUNT: u32 = 15;

/// Names of the `NS_*` counters.
pub const NS_NAMES: [&str; NS_COUNT as usize] = [
    "snat_mappings",
    "dnat_mappings",
    "egress_translated",
    "ingress_translated",
    "icmp_errors_translated",
    "port_exhausted",
    "port_probes",
    "local_socket_skipped",
    "forward_port_skipped",
    "table_full",
    "not_parsed",
    "rewrite_failed",
    "fragments_untranslated",
    "swept",
    "allocation_races",
];

/// What the sweep counted of the mapping tables (`NAT_CENSUS`, one slot).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatCensus {
    /// Mappings (`NAT_INGRESS` entries) alive after the last sweep.
    pub live: u64,
    /// Mappings the sweeps removed, in all.
    pub removed: u64,
}
map_type!(NatCensus, 16);

// ---- One's-complement checksum arithmetic (RFC 1071, RFC 1624) ----

/// Folds a 32-bit sum into 16 bits.
#[inline(always)]
#[must_use]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum field `check` (as read, big-endian value) after a 16-bit word of the
/// covered data went from `old` to `new` (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
#[inline(always)]
#[must_use]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32 & 0xffff) + new as u32;
    !fold(sum)
}

/// [`replace16`] for a run of words (an address): `old` and `new` as big-endian 16-bit words.
#[inline(always)]
#[must_use]
pub fn replace_words<const N: usize>(check: u16, old: &[u16; N], new: &[u16; N]) -> u16 {
    let mut sum = !check as u32;
    let mut i = 0;
    while i < N {
        sum += (!old[i] as u32) & 0xffff;
        sum += new[i] as u32;
        i += 1;
    }
    !fold(sum)
}

/// The big-endian 16-bit words of the address in stored form, for `family`: the last two
/// words of an IPv4-mapped address are the IPv4 address (the mapped prefix is not on the
/// wire, and as constant words it would cancel anyway).
#[inline(always)]
#[must_use]
pub fn addr_words(a: &[u32; 4]) -> [u16; 8] {
    let mut out = [0u16; 8];
    let mut i = 0;
    while i < 4 {
        let b = a[i].to_ne_bytes();
        out[i * 2] = u16::from_be_bytes([b[0], b[1]]);
        out[i * 2 + 1] = u16::from_be_bytes([b[2], b[3]]);
        i += 1;
    }
    out
}

/// The checksum after the address `old` became `new` in data it covers (or in the pseudo
/// header): all eight words; an IPv4-mapped address changes only in its last two.
#[inline(always)]
#[must_use]
pub fn replace_addr(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    replace_words(check, &addr_words(old), &addr_words(new))
}

/// The full one's-complement checksum of `data` plus `initial` (a pseudo-header sum):
/// the userspace reference the tests check the kernel's incremental updates against.
#[must_use]
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Incremental updates agree with a full recomputation.
    #[test]
    fn incremental_checksums_match_recomputation() {
        let mut data = [0u8; 40];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        let before = checksum(&data, 0);
        let old = u16::from_be_bytes([data[6], data[7]]);
        data[6..8].copy_from_slice(&0xbeefu16.to_be_bytes());
        assert_eq!(replace16(before, old, 0xbeef), checksum(&data, 0));
        // An IPv4-mapped address in words: only its last two words count.
        let a = crate::conntrack::bytes_to_words(&crate::packet::v4_mapped([10, 0, 0, 1]));
        let b = crate::conntrack::bytes_to_words(&crate::packet::v4_mapped([192, 0, 2, 7]));
        let mut d = [0u8; 8];
        d[0..4].copy_from_slice(&[10, 0, 0, 1]);
        d[4..8].copy_from_slice(&[1, 2, 3, 4]);
        let c = checksum(&d, 0);
        d[0..4].copy_from_slice(&[192, 0, 2, 7]);
        assert_eq!(replace_addr(c, &a, &b), checksum(&d, 0));
    }

    #[test]
    fn candidates_start_with_the_original_port_and_stay_in_range() {
        assert_eq!(candidate(0, 40_000, 1024, 65_535, 7), 40_000);
        assert_eq!(candidate(0, 80, 1024, 65_535, 7), 1031);
        for r in [0u32, 1, 0xffff_ffff, 123_456_789] {
            let c = candidate(3, 80, 20_000, 29_999, r);
            assert!((20_000..=29_999).contains(&c));
        }
        assert_eq!(candidate(1, 5, 0, 65_535, 70_000), (70_000 % 65_536) as u16);
    }

    #[test]
    fn subnets_match_by_mask() {
        let mut c = NatConfig::default();
        let a = crate::conntrack::bytes_to_words(&crate::packet::v4_mapped([10, 1, 0, 0]));
        let m = crate::conntrack::bytes_to_words(&[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ]);
        c.subnets[0] = NatSubnet { addr: a, mask: m };
        c.n_subnets = 1;
        let inside = crate::conntrack::bytes_to_words(&crate::packet::v4_mapped([10, 1, 2, 3]));
        let outside = crate::conntrack::bytes_to_words(&crate::packet::v4_mapped([10, 2, 2, 3]));
        assert!(c.masquerades(&inside));
        assert!(!c.masquerades(&outside));
    }
}
