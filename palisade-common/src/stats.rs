//! Global per-CPU counters (index into the `STATS` map).

/// Packets the firewall program saw.
pub const PACKETS: u32 = 0;
/// Packets passed (including non-IP).
pub const PASSED: u32 = 1;
/// Packets dropped, for any reason.
pub const DROPPED: u32 = 2;
/// Frames that are not IPv4/IPv6 (ARP, LLDP...): always passed.
pub const NOT_IP: u32 = 3;
/// Events that could not be written because the ring buffer was full.
pub const EVENTS_LOST: u32 = 4;
/// Internal errors (a map lookup that cannot fail did); the packet passes (fail-open).
pub const INTERNAL: u32 = 5;
/// Non-first fragments seen.
pub const FRAGMENTS: u32 = 6;
/// Packets answered in place (DNS NXDOMAIN with `XDP_TX`).
pub const ANSWERED: u32 = 7;
/// DNS queries over the event budget: counted for a summary, or sent in full as a name's
/// first or a sample.
pub const EVENTS_AGGREGATED: u32 = 8;
/// Aggregated DNS queries still sent in full as samples (`[dns] event_sample`).
pub const EVENTS_SAMPLED: u32 = 9;
/// Size of the `STATS` array.
pub const COUNT: u32 = 10;

/// Stable names, indexed by counter.
pub const NAMES: [&str; COUNT as usize] = [
    "packets",
    "passed",
    "dropped",
    "not_ip",
    "events_lost",
    "internal_errors",
    "fragments",
    "answered",
    "events_aggregated",
    "events_sampled",
];
