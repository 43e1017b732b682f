//! DHCP snooping (`[dhcp]`): what the kernel hooks copy to the daemon and how they tell a
//! server's message from a client's, shared by the kernel programs and the daemon's parser.
//!
//! The kernel never reads a DHCP option: it classifies a packet by its ports (or ICMPv6
//! type) and the first byte of the UDP payload, copies the frame to the daemon, and, when
//! the packet is a server's or a router's message from a source not on the trusted list,
//! reports it and (with `rogue = "block"`) drops it.

use crate::{
    map_type,
    packet::{FAMILY_V6, IPPROTO_ICMPV6, IPPROTO_UDP},
};

/// DHCPv4 ports.
pub const PORT_V4_SERVER: u16 = 67;
pub const PORT_V4_CLIENT: u16 = 68;
/// DHCPv6 ports.
pub const PORT_V6_CLIENT: u16 = 546;
pub const PORT_V6_SERVER: u16 = 547;
/// ICMPv6 router advertisement.
pub const ICMPV6_RA: u8 = 134;
/// DHCPv4 `op` of a server's message.
pub const BOOTREPLY: u8 = 2;
/// DHCPv6 message types a server (or a relay toward a client) sends: ADVERTISE, REPLY,
/// RECONFIGURE, RELAY-REPL.
pub const V6_ADVERTISE: u8 = 2;
pub const V6_REPLY: u8 = 7;
pub const V6_RECONFIGURE: u8 = 10;
pub const V6_RELAY_REPL: u8 = 13;

/// What a packet is to the snooper ([`classify`]).
pub const KIND_NONE: u8 = 0;
/// A DHCPv4 client's (or relay's request toward a server) message: copied.
pub const KIND_V4_CLIENT: u8 = 1;
/// A DHCPv4 server's message (BOOTREPLY from port 67): copied, judged.
pub const KIND_V4_SERVER: u8 = 2;
/// A DHCPv6 client's (or relay-forward) message: copied.
pub const KIND_V6_CLIENT: u8 = 3;
/// A DHCPv6 server's message (ADVERTISE, REPLY, RECONFIGURE, RELAY-REPL from port 547):
/// copied, judged.
pub const KIND_V6_SERVER: u8 = 4;
/// An IPv6 router advertisement: copied, judged against the trusted routers.
pub const KIND_RA: u8 = 5;

/// Classifies a packet from its parsed header fields: `proto`, `family`, ports (for ICMPv6
/// `dport` is `type << 8 | code`, as the packet parser gives it) and `first`, the first
/// byte of the UDP payload (DHCPv4 `op`, DHCPv6 `msg-type`; 0 when there is none).
#[inline(always)]
#[must_use]
pub const fn classify(proto: u8, family: u8, sport: u16, dport: u16, first: u8) -> u8 {
    if proto == IPPROTO_ICMPV6 {
        return if (dport >> 8) as u8 == ICMPV6_RA {
            KIND_RA
        } else {
            KIND_NONE
        };
    }
    if proto != IPPROTO_UDP {
        return KIND_NONE;
    }
    if family != FAMILY_V6 {
        if sport == PORT_V4_SERVER && first == BOOTREPLY {
            return KIND_V4_SERVER;
        }
        if dport == PORT_V4_SERVER
            || (sport == PORT_V4_CLIENT && dport == PORT_V4_CLIENT)
            || (sport == PORT_V4_SERVER && dport == PORT_V4_CLIENT)
        {
            return KIND_V4_CLIENT;
        }
        return KIND_NONE;
    }
    if sport == PORT_V6_SERVER
        && matches!(
            first,
            V6_ADVERTISE | V6_REPLY | V6_RECONFIGURE | V6_RELAY_REPL
        )
    {
        return KIND_V6_SERVER;
    }
    if dport == PORT_V6_SERVER || dport == PORT_V6_CLIENT || sport == PORT_V6_CLIENT {
        return KIND_V6_CLIENT;
    }
    KIND_NONE
}

/// Whether a kind is judged against the trusted list.
#[inline(always)]
#[must_use]
pub const fn judged(kind: u8) -> bool {
    matches!(kind, KIND_V4_SERVER | KIND_V6_SERVER | KIND_RA)
}

/// `DhcpConfig::flags`: snooping is on.
pub const DHCP_ON: u32 = 1;
/// Server messages and router advertisements from untrusted sources are dropped.
pub const DHCP_BLOCK: u32 = 2;

/// One generation's `[dhcp]` settings (`DHCP_CONFIG`, one slot per policy generation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DhcpConfig {
    pub flags: u32,
    pub _pad: u32,
}
map_type!(DhcpConfig, 8);

/// `TrustKey::role`: a DHCPv4 or DHCPv6 server.
pub const ROLE_SERVER: u8 = 1;
/// An IPv6 router (router advertisements).
pub const ROLE_ROUTER: u8 = 2;
/// `TrustKey::by`: the Ethernet source address (in the first 6 bytes of `addr`).
pub const BY_MAC: u8 = 1;
/// The IP source address (IPv4 as IPv4-mapped IPv6, like the packet parser).
pub const BY_IP: u8 = 2;

/// The role a judged kind is trusted under.
#[inline(always)]
#[must_use]
pub const fn role_of(kind: u8) -> u8 {
    if kind == KIND_RA {
        ROLE_ROUTER
    } else {
        ROLE_SERVER
    }
}

/// A trusted source (`DHCP_TRUSTED`, a hash set; the value is unused): a message is from a
/// trusted source when its Ethernet source or its IP source is in the set for its role and
/// the running generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrustKey {
    pub generation: u8,
    pub role: u8,
    pub by: u8,
    pub _pad: u8,
    pub addr: [u8; 16],
}
map_type!(TrustKey, 20);

/// Trusted entries one policy may list (servers and routers together, counting an entry per
/// address); `DHCP_TRUSTED` holds two generations of them.
pub const MAX_TRUSTED: u32 = 256;

/// Frame bytes one record carries; longer frames are cut (and flagged [`REC_CUT`]). A
/// power of two so the copy's size can be bounded by a mask.
pub const RECORD_BYTES: usize = 2048;

/// `DhcpRecord::flags`: seen arriving (XDP); otherwise leaving (TC egress).
pub const REC_INGRESS: u32 = 1;
/// A judged message from a source not on the trusted list.
pub const REC_ROGUE: u32 = 2;
/// ... and dropped (`rogue = "block"`).
pub const REC_DROPPED: u32 = 4;
/// The frame was longer than [`RECORD_BYTES`].
pub const REC_CUT: u32 = 8;

/// One copied frame (`DHCP_RECORDS` ring buffer).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DhcpRecord {
    /// `REC_*`.
    pub flags: u32,
    /// The interface it was seen on.
    pub ifindex: u32,
    /// Bytes of `data` that hold the frame.
    pub len: u32,
    /// The frame's length on the wire.
    pub wire_len: u32,
    /// [`classify`]'s kind.
    pub kind: u8,
    pub _pad: [u8; 7],
    pub data: [u8; RECORD_BYTES],
}
map_type!(DhcpRecord, 24 + RECORD_BYTES);

/// Capacity of `DHCP_RECORDS` in bytes: 124 full records; a burst beyond it is counted
/// under [`DS_LOST`].
pub const RING_BYTES: u32 = 1 << 18;

/// Counters of `DHCP_STATS` (per CPU).
/// Frames copied to the daemon.
pub const DS_COPIED: u32 = 0;
/// Frames that did not fit the ring buffer (the daemon fell behind).
pub const DS_LOST: u32 = 1;
/// Frames longer than a record, copied in part.
pub const DS_CUT: u32 = 2;
/// Server messages and router advertisements from untrusted sources.
pub const DS_ROGUE: u32 = 3;
/// ... of which dropped.
pub const DS_ROGUE_DROPPED: u32 = 4;
/// Server messages and router advertisements from trusted sources.
pub const DS_TRUSTED: u32 = 5;
/// Packets on DHCP ports too short to classify (no first payload byte).
pub const DS_SHORT: u32 = 6;
pub const DS_COUNT: u32 = 7;
/// Counter names, by index.
pub const DS_NAMES: [&str; DS_COUNT as usize] = [
    "copied",
    "lost",
    "cut",
    "rogue",
    "rogue_dropped",
    "trusted",
    "short",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{FAMILY_V4, IPPROTO_TCP};

    #[test]
    fn kinds_by_ports_and_first_byte() {
        assert_eq!(classify(IPPROTO_UDP, FAMILY_V4, 67, 68, 2), KIND_V4_SERVER);
        // A server's reply to a relay agent goes to port 67.
        assert_eq!(classify(IPPROTO_UDP, FAMILY_V4, 67, 67, 2), KIND_V4_SERVER);
        assert_eq!(classify(IPPROTO_UDP, FAMILY_V4, 68, 67, 1), KIND_V4_CLIENT);
        assert_eq!(classify(IPPROTO_UDP, FAMILY_V4, 67, 67, 1), KIND_V4_CLIENT);
        // A BOOTREQUEST from the server port to a client port is nobody's server message.
        assert_eq!(classify(IPPROTO_UDP, FAMILY_V4, 67, 68, 1), KIND_V4_CLIENT);
        assert_eq!(classify(IPPROTO_UDP, FAMILY_V4, 53, 68, 2), KIND_NONE);
        assert_eq!(classify(IPPROTO_TCP, FAMILY_V4, 67, 68, 2), KIND_NONE);
        assert_eq!(
            classify(IPPROTO_UDP, FAMILY_V6, 547, 546, 7),
            KIND_V6_SERVER
        );
        assert_eq!(
            classify(IPPROTO_UDP, FAMILY_V6, 547, 546, 2),
            KIND_V6_SERVER
        );
        assert_eq!(
            classify(IPPROTO_UDP, FAMILY_V6, 547, 547, 13),
            KIND_V6_SERVER
        );
        assert_eq!(
            classify(IPPROTO_UDP, FAMILY_V6, 546, 547, 1),
            KIND_V6_CLIENT
        );
        assert_eq!(
            classify(IPPROTO_UDP, FAMILY_V6, 547, 547, 12),
            KIND_V6_CLIENT
        );
        assert_eq!(classify(IPPROTO_UDP, FAMILY_V6, 67, 68, 2), KIND_NONE);
        assert_eq!(classify(IPPROTO_ICMPV6, FAMILY_V6, 0, 134 << 8, 0), KIND_RA);
        assert_eq!(
            classify(IPPROTO_ICMPV6, FAMILY_V6, 0, 133 << 8, 0),
            KIND_NONE
        );
        assert!(judged(KIND_RA) && judged(KIND_V4_SERVER) && !judged(KIND_V6_CLIENT));
        assert_eq!(role_of(KIND_RA), ROLE_ROUTER);
        assert_eq!(role_of(KIND_V6_SERVER), ROLE_SERVER);
    }
}
