//! The kernel gate of `[tls]`: the settings, flow table and segment records the TC programs
//! and the daemon share (see `docs/design/tls.md`).
//!
//! The gate holds a flow's server data back while the flow is [`FLOW_PENDING`], copies the
//! client's bytes out to the daemon, and enforces the verdict the daemon writes back
//! ([`FLOW_ALLOWED`] or [`FLOW_BLOCKED`]).

use crate::map_type;

/// TCP ports the gate watches, at most.
pub const MAX_GATE_PORTS: usize = 8;
/// Client bytes one segment record carries; a longer segment (GRO) is split into records.
pub const SEGMENT_BYTES: usize = 1024;
/// Records one packet may give; what lies beyond is not copied (counted, and the flow's
/// hello then never completes: incomplete).
pub const MAX_SEGMENT_RECORDS: u32 = 16;
/// Flows in the gate's table (LRU: an evicted pending flow is no longer held back, and is
/// counted by the daemon's timeout as incomplete).
pub const GATE_FLOWS: u32 = 65_536;

/// [`TlsGateConfig::flags`]: the gate is on.
pub const GATE_ON: u32 = 1;
/// Drop UDP to the ports (QUIC), so that clients fall back to TCP.
pub const GATE_BLOCK_QUIC: u32 = 2;
/// A flow still pending after [`PENDING_LIMIT`] is refused (`[tls] malformed = "block"`);
/// without this flag it is let through. Either way the gate stops waiting for a daemon
/// that is not answering (stopped, restarted, or its ring overflowed).
pub const GATE_FAIL_CLOSED: u32 = 4;

/// [`GateFlow::since`] counts in units of 2^20 ns (about 1.05 ms).
pub const SINCE_SHIFT: u32 = 20;
/// How long the gate holds a pending flow before deciding it alone, in those units: about
/// 3 s, past the daemon's own 2 s bound for a hello.
pub const PENDING_LIMIT: u32 = 2900;

/// The gate's settings, one slot per policy generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsGateConfig {
    pub flags: u32,
    pub port_count: u32,
    pub ports: [u16; MAX_GATE_PORTS],
}
map_type!(TlsGateConfig, 24);

impl TlsGateConfig {
    /// Whether `port` is one of the watched ports.
    #[inline(always)]
    #[must_use]
    pub fn watches(&self, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_GATE_PORTS {
            if (i as u32) < self.port_count && self.ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// A flow as the gate keys it: the client's and the server's endpoints (IPv4 mapped into
/// IPv6), whichever direction the packet goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GateKey {
    pub client: [u8; 16],
    pub server: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    pub _pad: u32,
}
map_type!(GateKey, 40);

/// [`GateFlow::state`]: the client's hello is being gathered; server data is held back.
pub const FLOW_PENDING: u32 = 1;
/// The daemon allowed the flow: nothing more to do.
pub const FLOW_ALLOWED: u32 = 2;
/// The daemon refused the flow: every packet but resets is dropped, both ways.
pub const FLOW_BLOCKED: u32 = 3;

/// One flow's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateFlow {
    pub state: u32,
    /// Sequence number of the client's first byte (its SYN's plus one).
    pub base: u32,
    /// Why a blocked flow was refused (a `reason::TLS_*`).
    pub reason: u32,
    /// When the flow's SYN was seen: the monotonic clock in units of 2^[`SINCE_SHIFT`] ns,
    /// wrapping (compared by difference).
    pub since: u32,
}
map_type!(GateFlow, 16);

/// A piece of the client's bytes, sent to the daemon on `TLS_SEGMENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SegmentRecord {
    pub key: GateKey,
    pub base: u32,
    /// Sequence number of `data[0]`.
    pub seq: u32,
    /// Bytes of `data` that are the client's.
    pub len: u32,
    /// The segment's acknowledgement number: the next byte the client expects of the
    /// server, where a reset towards the client must sit.
    pub ack: u32,
    pub data: [u8; SEGMENT_BYTES],
}
map_type!(SegmentRecord, 40 + 16 + SEGMENT_BYTES);

/// `TLS_STATS` counters.
/// SYNs to a watched port: flows the gate started holding.
pub const TS_FLOWS: u32 = 0;
/// Client segments copied to the daemon (records).
pub const TS_RECORDS: u32 = 1;
/// Records lost: the ring buffer was full, or the segment was longer than the records
/// one packet may give.
pub const TS_RECORD_LOST: u32 = 2;
/// Server segments with data held back (dropped) while the flow was pending.
pub const TS_SERVER_HELD: u32 = 3;
/// Packets of blocked flows dropped.
pub const TS_BLOCKED_DROPS: u32 = 4;
/// Packets on a watched port of no flow in the table (opened before the policy, or
/// evicted): let through.
pub const TS_UNTRACKED: u32 = 5;
/// UDP datagrams to a watched port dropped (QUIC).
pub const TS_QUIC_DROPS: u32 = 6;
/// Packets the gate could not parse (let through).
pub const TS_NOT_PARSED: u32 = 7;
/// Packets of flows pending past [`PENDING_LIMIT`], decided by the gate alone.
pub const TS_STALE: u32 = 8;
/// Client segments of no flow in the table that begin a ClientHello (a handshake record
/// whose first message is a ClientHello): the flow was evicted between its SYN and its hello
/// (or its SYN was missed), so the gate starts holding it there.
pub const TS_ADOPTED: u32 = 9;
pub const TS_COUNT: u32 = 10;
/// Stable names of the counters.
pub const TS_NAMES: [&str; TS_COUNT as usize] = [
    "flows",
    "records",
    "record_lost",
    "server_held",
    "blocked_drops",
    "untracked",
    "quic_drops",
    "not_parsed",
    "stale",
    "adopted",
];
