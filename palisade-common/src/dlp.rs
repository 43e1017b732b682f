//! DLP on TLS plaintext: the record that the `SSL_*` probes hand to userspace, the in-flight
//! call state they keep between entry and return, and the flow-reset key of the TC program.
//!
//! The probes capture at most [`CAPTURE_BYTES`] of a call in each record and at most
//! [`MAX_CHUNKS`] records per call; the rest of a larger call is counted as truncated.

use crate::map_type;

/// Bytes of plaintext one record carries.
pub const CAPTURE_BYTES: usize = 4096;
/// Bytes of a [`Record`] before its `data`.
pub const RECORD_HEADER: usize = 104;
/// Lengths of `data` a record is sent with in the ring buffer: the smallest that holds the
/// captured bytes (the last is [`CAPTURE_BYTES`]). Userspace reads `len` bytes of it.
pub const SIZE_CLASSES: [usize; 4] = [128, 512, 1024, CAPTURE_BYTES];
const _: () = assert!(SIZE_CLASSES[3] == CAPTURE_BYTES);
/// Records one `SSL_*` call may produce (so up to `CAPTURE_BYTES * MAX_CHUNKS` bytes of it are
/// inspected; one TLS record holds at most 16 KiB).
pub const MAX_CHUNKS: u32 = 4;
/// Reads in flight (between a probe's entry and its return) tracked at once, and as many
/// writes waiting for their connection's first send.
pub const MAX_INFLIGHT: u32 = 16_384;
/// `SSL*` -> flow entries remembered, for reads answered from OpenSSL's own buffer (no
/// `tcp_recvmsg` inside the call).
pub const MAX_SSL_FLOWS: u32 = 16_384;
/// Flows a `reset` action may hold at once.
pub const MAX_RESETS: u32 = 4_096;
/// Bytes of the plaintext ring buffer.
pub const RING_BYTES: u32 = 4 << 20;

/// Attach cookie bit: the probe sits on an `_ex` variant (`SSL_write_ex`/`SSL_read_ex`), whose
/// return value is 1/0 and whose length is written through the fourth argument.
pub const COOKIE_EX: u64 = 1;
/// Attach cookie bit: the probe sits on a read (`SSL_read`/`SSL_read_ex`).
pub const COOKIE_READ: u64 = 2;
/// Attach cookie bit: the probe sits on `SSL_free` (forgets the `SSL*`'s flow, so a new
/// connection whose `SSL*` reuses the address does not inherit it).
pub const COOKIE_FREE: u64 = 4;

/// Direction of a record: plaintext the process wrote.
pub const DIR_WRITE: u8 = 0;
/// Direction of a record: plaintext the process read.
pub const DIR_READ: u8 = 1;
/// Kind of a record that carries no plaintext: the flow of an `SSL*` whose write was captured
/// at entry before its first send (`Record::flow`, `Record::ssl`, `Record::pid_tgid`).
pub const DIR_FLOW: u8 = 2;
/// Kind of a record that carries no plaintext: a process exec'd (`Record::pid_tgid`,
/// `Record::ts_ns`, `Record::comm`), from the `sched:sched_process_exec` tracepoint.
pub const DIR_EXEC: u8 = 3;

/// Counter slots of `DLP_STATS`.
pub mod stat {
    /// Calls seen returning.
    pub const CALLS: u32 = 0;
    /// Records emitted.
    pub const RECORDS: u32 = 1;
    /// Records lost because the ring buffer was full.
    pub const LOST: u32 = 2;
    /// Calls longer than the captured window.
    pub const TRUNCATED_CALLS: u32 = 3;
    /// Bytes of those calls not captured.
    pub const TRUNCATED_BYTES: u32 = 4;
    /// Calls whose entry was not seen (probe attached mid-call, or the table was full).
    pub const NO_ENTRY: u32 = 5;
    /// Calls with no known flow (no TCP socket seen within the call, none remembered).
    pub const NO_FLOW: u32 = 6;
    /// Packets dropped by the reset program.
    pub const RESET_DROPS: u32 = 7;
    /// Reads of user memory that failed (the record is still sent, with zero bytes).
    pub const READ_FAULTS: u32 = 8;
    /// Number of slots.
    pub const COUNT: u32 = 9;
}

/// The 5-tuple of a TCP flow as the local socket sees it. Addresses are IPv6 or v4-mapped
/// IPv6; ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// `AF_INET` (2) or `AF_INET6` (10); 0 when unknown.
    pub family: u16,
    pub _pad: u16,
}
map_type!(Flow, 40);

/// A call between its entry probe and its return probe, keyed by `pid_tgid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Inflight {
    /// The `SSL*` argument.
    pub ssl: u64,
    /// The user buffer.
    pub buf: u64,
    /// The `size_t *` of the `_ex` variants (0 otherwise).
    pub len_out: u64,
    /// The flow of the first TCP send/receive within the call.
    pub flow: Flow,
    /// 1 once `flow` is set.
    pub has_flow: u32,
    pub _pad: u32,
}
map_type!(Inflight, 72);

/// One captured window of plaintext, as the ring buffer carries it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Record {
    pub pid_tgid: u64,
    pub ssl: u64,
    pub cgroup: u64,
    /// `bpf_ktime_get_ns` at an exec (`DIR_EXEC`, `DIR_FLOW`); 0 in records of plaintext.
    pub ts_ns: u64,
    pub flow: Flow,
    pub comm: [u8; 16],
    /// Bytes the call moved in total.
    pub call_len: u32,
    /// Offset of this window in the call.
    pub offset: u32,
    /// Valid bytes in `data`.
    pub len: u32,
    /// [`DIR_WRITE`] or [`DIR_READ`].
    pub dir: u8,
    /// 1 when `flow` is known.
    pub has_flow: u8,
    pub _pad: [u8; 2],
    pub data: [u8; CAPTURE_BYTES],
}
map_type!(Record, RECORD_HEADER + CAPTURE_BYTES);

/// Key of `DLP_RESET`: a TCP flow as it appears in an outgoing packet (the local socket's
/// source and destination), addresses v4-mapped for IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResetKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}
map_type!(ResetKey, 36);
