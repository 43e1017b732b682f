//! Events sent from the kernel programs to userspace over the ring buffer.

use crate::map_type;

/// [`FirewallEvent::kind`]: a firewall verdict.
pub const KIND_FIREWALL: u32 = 1;

/// A firewall decision worth reporting (a drop by a `log` rule or a logged default).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirewallEvent {
    /// Always [`KIND_FIREWALL`]; first so a reader can tell event types apart.
    pub kind: u32,
    /// Drop reason (see [`crate::reason`]).
    pub reason: u32,
    /// `bpf_ktime_get_ns` at the decision (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// Rule evaluation index, or [`crate::firewall::DEFAULT_SLOT`] for the default action,
    /// or `u32::MAX` when no rule was involved (malformed packets).
    pub rule: u32,
    pub ifindex: u32,
    pub generation: u32,
    pub sport: u16,
    pub dport: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub family: u8,
    pub proto: u8,
    pub action: u8,
    pub _pad: [u8; 1],
    pub packet_len: u32,
}
map_type!(FirewallEvent, 72);
