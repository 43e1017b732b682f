//! DLP on TLS plaintext: uprobes on OpenSSL's `SSL_write`, `SSL_write_ex`, `SSL_read` and
//! `SSL_read_ex` hand the plaintext of each call to userspace, which runs the detectors.
//!
//! - Writes are captured by the entry probe ([`enter`]), from the call's arguments: the buffer
//!   holds what is about to be sent. It sits on the first instruction of `SSL_write[_ex]`
//!   the kernel emulates (a branch a few bytes in), so a call costs one trap and no
//!   single-step, and no return probe. Which function a probe sits on comes from the attach
//!   cookie (`COOKIE_EX`, `COOKIE_READ`, `COOKIE_FREE`), so one program serves all of them.
//! - For reads it remembers the call's `SSL*`, buffer and (for `SSL_read_ex`) length pointer
//!   under the thread's `pid_tgid`; the return probe ([`leave`]) reads the bytes the call
//!   really moved (its return value, or `*len_out`): up to `MAX_CHUNKS` records of
//!   `CAPTURE_BYTES` each go to `DLP_RECORDS`.
//! - Tracepoints fill in the flow of a call from the socket: the TCP send or receive of an
//!   `SSL_*` call runs on the same thread within it. Receives are seen on
//!   `sock:sock_recv_length` ([`on_sock`]), sends on the raw tracepoint
//!   `tcp:tcp_sendmsg_locked` ([`on_tcp_send`]; `sock:sock_send_length` on kernels before
//!   6.8). (Tracepoints rather than `fentry` on `tcp_sendmsg`: this kernel refuses to load
//!   tracing programs, and has no kprobes.) The flow is remembered per `SSL*`
//!   (`DLP_SSL_FLOW`, forgotten on `SSL_free`), for writes and for reads that OpenSSL
//!   answers from its own buffer. A write before the first send of its `SSL*` goes out
//!   without a flow and is left pending (`DLP_PENDING`); that send then sends a `DIR_FLOW`
//!   record naming it.
//!
//! Uprobes cannot block: the probes only observe (fail-open for everything). The `reset`
//! action is carried out by [`reset`], a TC egress program, on flows userspace names.

pub mod reset;

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns,
        generated::{bpf_get_attach_cookie, bpf_probe_read_kernel, bpf_probe_read_user},
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext},
};
use palisade_common::dlp::{
    CAPTURE_BYTES, COOKIE_EX, COOKIE_FREE, COOKIE_READ, DIR_EXEC, DIR_FLOW, DIR_READ, DIR_WRITE,
    Flow, Inflight, MAX_CHUNKS, MAX_INFLIGHT, MAX_RESETS, MAX_SSL_FLOWS, RECORD_HEADER, RING_BYTES,
    Record, ResetKey, SIZE_CLASSES, stat,
};

/// Reads between entry and return, by `pid_tgid`. LRU: a thread killed inside a call leaves
/// an entry that ages out.
#[map]
pub static DLP_INFLIGHT: LruHashMap<u64, Inflight> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// Writes captured at their entry before the first send of their connection, by
/// `pid_tgid`: the call's `SSL*`, whose flow that send names (a `DIR_FLOW` record). LRU: a
/// thread killed inside the call leaves an entry that ages out.
#[map]
pub static DLP_PENDING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// One slot: entries put into `DLP_PENDING` less those taken out, so at least what it holds
/// (an entry the LRU evicts leaves it higher). While it is 0 no thread has a pending write:
/// the send hooks and the calls' entries look nothing up, the common case once every
/// connection has sent.
#[map]
pub static DLP_PENDING_LIVE: Array<u64> = Array::with_max_entries(1, 0);

/// The last flow seen for an `SSL*` (keyed by `tgid << 64 | ssl` folded into one u64 pair).
#[map]
pub static DLP_SSL_FLOW: LruHashMap<[u64; 2], Flow> =
    LruHashMap::with_max_entries(MAX_SSL_FLOWS, 0);

/// Captured plaintext, for the detectors.
#[map]
pub static DLP_RECORDS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Counters, `dlp::stat::*`.
#[map]
pub static DLP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Flows to reset (written by userspace on a match under `action = "reset"`).
#[map]
pub static DLP_RESET: HashMap<ResetKey, u64> =
    HashMap::with_max_entries(MAX_RESETS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// `struct sock_common` offsets (stable since the structure's first member is the address
/// pair; checked against this kernel's BTF in the tests through real flows).
const SKC_DADDR: usize = 0;
const SKC_RCV_SADDR: usize = 4;
const SKC_DPORT: usize = 12;
const SKC_NUM: usize = 14;
const SKC_FAMILY: usize = 16;
const SKC_V6_DADDR: usize = 56;
const SKC_V6_RCV_SADDR: usize = 72;
const _: () = assert!(SKC_V6_RCV_SADDR == SKC_V6_DADDR + 16);
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[inline(always)]
pub(crate) fn bump(slot: u32, v: u64) {
    if let Some(p) = DLP_STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, valid for the program's run; no one else writes it here.
        unsafe { *p = (*p).wrapping_add(v) };
    }
}

/// Entry of `SSL_write[_ex]` / `SSL_read[_ex]` (and `SSL_free`).
///
/// - A write is captured here, from its arguments: the buffer holds what is about to be sent,
///   and no return probe is needed (on writes the probe sits on the first branch the kernel
///   emulates, see `palisade/src/dlp/prologue.rs`: one trap per call, no single-step). Its
///   flow is the one last seen for the `SSL*`; before the first send of a connection it is
///   not known yet, so the write is left pending in `DLP_PENDING` for that send to name.
/// - A read is remembered for its return probe, which captures what it moved.
/// - `SSL_free` forgets the `SSL*`'s flow.
#[inline(always)]
pub fn enter(ctx: &ProbeContext) -> u32 {
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    // SAFETY: the helper only reads the program's own attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let id = bpf_get_current_pid_tgid();
    let key = [id >> 32, ssl];
    // The thread is in no other `SSL_*` call now, so a write it left pending is stale.
    forget_pending(id);
    if cookie & COOKIE_FREE != 0 {
        let _ = DLP_SSL_FLOW.remove(&key);
    } else if cookie & COOKIE_READ == 0 {
        let buf: u64 = ctx.arg(1).unwrap_or(0);
        let num: u64 = ctx.arg(2).unwrap_or(0);
        // `_ex`: a size_t; the plain variant: an int, nothing to send when <= 0.
        let moved = if cookie & COOKIE_EX != 0 {
            num
        } else if (num as i32) <= 0 {
            0
        } else {
            u64::from(num as u32)
        };
        bump(stat::CALLS, 1);
        if moved != 0 {
            // SAFETY: the value is copied out at once.
            let known = unsafe { DLP_SSL_FLOW.get(&key) }.copied();
            let (flow, has_flow) = match known {
                Some(f) => (f, 1u8),
                None => {
                    // The connection has not sent yet: its first send names the flow.
                    add_pending(id, ssl);
                    (Flow::default(), 0u8)
                }
            };
            capture(id, ssl, buf, moved, flow, has_flow, DIR_WRITE);
        }
    } else {
        let buf: u64 = ctx.arg(1).unwrap_or(0);
        let len_out: u64 = if cookie & COOKIE_EX != 0 {
            ctx.arg(3).unwrap_or(0)
        } else {
            0
        };
        let v = Inflight {
            ssl,
            buf,
            len_out,
            flow: Flow::default(),
            has_flow: 0,
            _pad: 0,
        };
        let _ = DLP_INFLIGHT.insert(&id, &v, 0);
    }
    0
}

/// The `SSL*` of the write thread `id` left pending, if any: one array read while no thread
/// has one.
#[inline(always)]
fn pending_of(id: u64) -> Option<u64> {
    if DLP_PENDING_LIVE.get(0).is_none_or(|n| *n == 0) {
        return None;
    }
    // SAFETY: the value is copied out at once.
    unsafe { DLP_PENDING.get(&id) }.copied()
}

/// A write of thread `id` on `ssl` is pending. The count goes up first, so it is never
/// below what the map holds.
#[inline(always)]
fn add_pending(id: u64, ssl: u64) {
    if let Some(n) = DLP_PENDING_LIVE.get_ptr_mut(0) {
        // SAFETY: the slot is a valid, 8-aligned map value.
        unsafe { crate::atomic::add(n, 1) };
    }
    let _ = DLP_PENDING.insert(&id, &ssl, 0);
}

/// Takes thread `id`'s pending write out, if it has one. Only the thread's own probes
/// touch its entry, so the count goes down once per entry taken.
#[inline(always)]
fn forget_pending(id: u64) {
    if pending_of(id).is_some()
        && DLP_PENDING.remove(&id).is_ok()
        && let Some(n) = DLP_PENDING_LIVE.get_ptr_mut(0)
    {
        // SAFETY: as in `add_pending`; adding all ones takes one away.
        unsafe { crate::atomic::add(n, u64::MAX) };
    }
}

/// Offsets in the `sock_send_length` / `sock_recv_length` tracepoint records (their
/// `format` files): `void *sk` at 8, `__u16 protocol` at 18.
const TP_SK: usize = 8;
const TP_PROTOCOL: usize = 18;
const IPPROTO_TCP: u16 = 6;

/// `sock:sock_recv_length` (and `sock:sock_send_length` where `tcp:tcp_sendmsg_locked` is
/// missing): the flow of the `SSL_*` call this thread is in, if any.
#[inline(always)]
pub fn on_sock(ctx: &TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let pending = pending_of(id);
    let call = DLP_INFLIGHT.get_ptr_mut(&id);
    if pending.is_none() && call.is_none() {
        return 0;
    }
    // SAFETY: the offsets are those of the tracepoint's record, inside it.
    let (sk, proto) = unsafe {
        (
            ctx.read_at::<u64>(TP_SK).unwrap_or(0),
            ctx.read_at::<u16>(TP_PROTOCOL).unwrap_or(0),
        )
    };
    if proto != IPPROTO_TCP {
        return 0;
    }
    let Some(flow) = read_flow(sk) else {
        return 0;
    };
    if let Some(ssl) = pending {
        name_pending(id, ssl, flow);
    }
    if let Some(call) = call {
        // SAFETY: a value of this map, valid for the program's run.
        let ssl = unsafe {
            if (*call).has_flow == 0 {
                (*call).flow = flow;
                (*call).has_flow = 1;
            }
            (*call).ssl
        };
        remember_flow(id, ssl, &flow);
    }
    0
}

/// `tcp:tcp_sendmsg_locked` (raw; its first argument is the socket, and it fires only for
/// TCP): the flow of the write this thread left pending, if any. Writes of connections whose
/// flow is known leave nothing pending, so their sends cost one array read.
#[inline(always)]
pub fn on_tcp_send(ctx: &RawTracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if let Some(ssl) = pending_of(id)
        && let Some(flow) = read_flow(ctx.arg::<u64>(0))
    {
        name_pending(id, ssl, flow);
    }
    0
}

/// The first send of the connection of the write thread `id` left pending on `ssl`: the
/// `SSL*`'s flow is remembered, and a `DIR_FLOW` record names it for the write's records.
#[inline(always)]
fn name_pending(id: u64, ssl: u64, flow: Flow) {
    remember_flow(id, ssl, &flow);
    forget_pending(id);
    send_flow(id, ssl, flow);
}

/// Keeps `flow` as the flow of thread `id`'s process's `ssl`. Every read of a connection
/// names the same flow: the LRU update (a bucket lock and a node) only when it is new.
#[inline(always)]
fn remember_flow(id: u64, ssl: u64, flow: &Flow) {
    let key = [id >> 32, ssl];
    // SAFETY: only compared, at once.
    if !unsafe { DLP_SSL_FLOW.get(&key) }.is_some_and(|f| same_flow(f, flow)) {
        let _ = DLP_SSL_FLOW.insert(&key, flow, 0);
    }
}

/// Whether two flows are equal, compared a word at a time (no `memcmp`, which this target
/// has not, and no vector code).
#[inline(always)]
fn same_flow(a: &Flow, b: &Flow) -> bool {
    let (x, y) = (words(a), words(b));
    ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0
}

/// The 40 bytes of a flow as five words.
#[inline(always)]
fn words(f: &Flow) -> [u64; 5] {
    let p = (&raw const *f).cast::<u64>();
    // SAFETY: `Flow` is 40 bytes of plain data (`map_type!` checks the size); the reads
    // are unaligned ones.
    unsafe {
        [
            p.read_unaligned(),
            p.add(1).read_unaligned(),
            p.add(2).read_unaligned(),
            p.add(3).read_unaligned(),
            p.add(4).read_unaligned(),
        ]
    }
}

/// `sched:sched_process_exec`: a `DIR_EXEC` record (the header only) naming the process, so
/// that userspace looks at its libraries at once.
#[inline(always)]
pub fn on_exec(_ctx: &TracePointContext) -> u32 {
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    send_header(
        bpf_get_current_pid_tgid(),
        0,
        Flow::default(),
        DIR_EXEC,
        comm,
    );
    0
}

/// A `DIR_FLOW` record (the header only): `ssl`'s flow, for the write records before it.
#[inline(always)]
fn send_flow(id: u64, ssl: u64, flow: Flow) {
    send_header(id, ssl, flow, DIR_FLOW, [0; 16]);
}

/// The header of a [`Record`] (its first `RECORD_HEADER` bytes, same layout), built on the
/// stack: alone for records without plaintext, copied into each [`Slot`] of a capture.
#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    pid_tgid: u64,
    ssl: u64,
    cgroup: u64,
    ts_ns: u64,
    flow: Flow,
    comm: [u8; 16],
    call_len: u32,
    offset: u32,
    len: u32,
    dir: u8,
    has_flow: u8,
    _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Header>() == RECORD_HEADER);

/// A record without plaintext (`DIR_FLOW`, `DIR_EXEC`): its header only.
#[inline(always)]
fn send_header(id: u64, ssl: u64, flow: Flow, dir: u8, comm: [u8; 16]) {
    let h = Header {
        pid_tgid: id,
        ssl,
        cgroup: 0,
        // SAFETY: the helper has no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        flow,
        comm,
        call_len: 0,
        offset: 0,
        len: 0,
        dir,
        has_flow: u8::from(dir == DIR_FLOW),
        _pad: [0; 2],
    };
    if DLP_RECORDS
        .output::<Header>(&h, u64::from(BPF_RB_NO_WAKEUP))
        .is_err()
    {
        bump(stat::LOST, 1);
    }
}

#[inline(always)]
fn kread<T: Default>(addr: u64) -> T {
    let mut v = T::default();
    // SAFETY: the helper copies at most size_of::<T>() bytes into `v`, faulting safely.
    unsafe {
        bpf_probe_read_kernel(
            (&raw mut v).cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const _,
        );
    }
    v
}

/// The head of `struct sock_common`: the IPv4 pair, the ports and the family (the bytes
/// from `SKC_DADDR` to `SKC_FAMILY`, read in one copy).
#[repr(C)]
#[derive(Default)]
struct SockHead {
    daddr: [u8; 4],
    rcv_saddr: [u8; 4],
    _hash: u32,
    dport: u16,
    num: u16,
    family: u16,
    _state: u16,
}
const _: () = assert!(
    core::mem::offset_of!(SockHead, rcv_saddr) == SKC_RCV_SADDR
        && core::mem::offset_of!(SockHead, dport) == SKC_DPORT
        && core::mem::offset_of!(SockHead, num) == SKC_NUM
        && core::mem::offset_of!(SockHead, family) == SKC_FAMILY
);

/// The flow of socket `sk`: two copies from the kernel at most (the head, then for IPv6
/// the address pair, `SKC_V6_DADDR` and `SKC_V6_RCV_SADDR` being adjacent).
#[inline(always)]
fn read_flow(sk: u64) -> Option<Flow> {
    if sk == 0 {
        return None;
    }
    let head: SockHead = kread(sk + SKC_DADDR as u64);
    let mut f = Flow {
        family: head.family,
        sport: head.num,
        dport: u16::from_be(head.dport),
        ..Flow::default()
    };
    if head.family == AF_INET {
        f.saddr = palisade_common::packet::v4_mapped(head.rcv_saddr);
        f.daddr = palisade_common::packet::v4_mapped(head.daddr);
    } else if head.family == AF_INET6 {
        let pair: [[u8; 16]; 2] = kread(sk + SKC_V6_DADDR as u64);
        f.daddr = pair[0];
        f.saddr = pair[1];
    } else {
        return None;
    }
    Some(f)
}

/// Return of `SSL_read[_ex]`.
#[inline(always)]
pub fn leave(ctx: &RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the helper only reads the program's own attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let Some(call) = (unsafe { DLP_INFLIGHT.get(&id) }).copied() else {
        bump(stat::NO_ENTRY, 1);
        return 0;
    };
    let _ = DLP_INFLIGHT.remove(&id);
    bump(stat::CALLS, 1);
    let rc: i64 = ctx.ret::<i64>();
    let moved: u64 = if cookie & COOKIE_EX != 0 {
        // `_ex`: 1 on success, the length behind the fourth argument.
        if rc as i32 != 1 || call.len_out == 0 {
            return 0;
        }
        let mut n: u64 = 0;
        // SAFETY: the helper copies 8 bytes from user memory, faulting safely.
        let r = unsafe { bpf_probe_read_user((&raw mut n).cast(), 8, call.len_out as *const _) };
        if r != 0 {
            bump(stat::READ_FAULTS, 1);
            return 0;
        }
        n
    } else {
        // The plain variants return an int: > 0 is the length moved.
        let v = rc as i32;
        if v <= 0 {
            return 0;
        }
        v as u64
    };
    let key = [id >> 32, call.ssl];
    let (flow, has_flow) = if call.has_flow != 0 {
        (call.flow, 1u8)
    // SAFETY: the value is copied out at once.
    } else if let Some(f) = unsafe { DLP_SSL_FLOW.get(&key) } {
        (*f, 1u8)
    } else {
        bump(stat::NO_FLOW, 1);
        (Flow::default(), 0u8)
    };
    capture(id, call.ssl, call.buf, moved, flow, has_flow, DIR_READ);
    0
}

/// Sends up to `MAX_CHUNKS` windows of `moved` bytes at `buf` (user memory) to `DLP_RECORDS`.
#[inline(always)]
fn capture(id: u64, ssl: u64, buf: u64, moved: u64, flow: Flow, has_flow: u8, dir: u8) {
    let window = CAPTURE_BYTES as u64 * MAX_CHUNKS as u64;
    if moved > window {
        bump(stat::TRUNCATED_CALLS, 1);
        bump(stat::TRUNCATED_BYTES, moved - window);
    }
    let mut h = Header {
        pid_tgid: id,
        ssl,
        // SAFETY: the helper has no preconditions.
        cgroup: unsafe { bpf_get_current_cgroup_id() },
        // Only exec records carry a time: a clock read per call is saved.
        ts_ns: 0,
        flow,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        call_len: moved as u32,
        offset: 0,
        len: 0,
        dir,
        has_flow,
        _pad: [0; 2],
    };
    let mut i: u32 = 0;
    while i < MAX_CHUNKS {
        let off = u64::from(i) * CAPTURE_BYTES as u64;
        if off >= moved {
            break;
        }
        let mut n = moved - off;
        if n > CAPTURE_BYTES as u64 {
            n = CAPTURE_BYTES as u64;
        }
        h.offset = off as u32;
        let (n, src) = (n as u32, buf + off);
        let sent = if n as usize <= SIZE_CLASSES[0] {
            emit::<{ SIZE_CLASSES[0] }>(&h, src, n)
        } else if n as usize <= SIZE_CLASSES[1] {
            emit::<{ SIZE_CLASSES[1] }>(&h, src, n)
        } else if n as usize <= SIZE_CLASSES[2] {
            emit::<{ SIZE_CLASSES[2] }>(&h, src, n)
        } else {
            emit::<{ SIZE_CLASSES[3] }>(&h, src, n)
        };
        bump(if sent { stat::RECORDS } else { stat::LOST }, 1);
        i += 1;
    }
}

/// A record as reserved in `DLP_RECORDS`: the header and `N` bytes of plaintext, `N` one of
/// `SIZE_CLASSES` (the layout of a [`Record`] cut after `N` bytes of `data`).
#[repr(C)]
struct Slot<const N: usize> {
    h: Header,
    data: [u8; N],
}

/// Reserves a `Slot<N>` in the ring buffer and copies the header and `len` (at most `N`)
/// bytes at `src` (user memory) straight into it: one copy of the plaintext, no per-CPU
/// scratch. The size is a constant per class, as the verifier wants for
/// `bpf_ringbuf_reserve`. The watcher polls the ring, so the commit wakes no one
/// (`BPF_RB_NO_WAKEUP`: no `irq_work` per record). Returns false when the ring is full.
#[inline(always)]
fn emit<const N: usize>(h: &Header, src: u64, len: u32) -> bool {
    let Some(mut e) = DLP_RECORDS.reserve::<Slot<N>>(0) else {
        return false;
    };
    let p = e.as_mut_ptr();
    // `len` is in 1..=N; the mask and the bound restate it for the verifier.
    let n = len & (2 * N as u32 - 1);
    let n = if n > N as u32 { N as u32 } else { n };
    // SAFETY: `p` is the reserved slot, valid and writable until it is submitted; the helper
    // copies at most `n <= N` bytes into its `data`, faulting safely.
    unsafe {
        (&raw mut (*p).h).write(*h);
        let got = bpf_probe_read_user((&raw mut (*p).data).cast(), n, src as *const _);
        (*p).h.len = if got == 0 {
            n
        } else {
            bump(stat::READ_FAULTS, 1);
            0
        };
    }
    e.submit(u64::from(BPF_RB_NO_WAKEUP));
    true
}
const _: () =
    assert!(core::mem::size_of::<Slot<CAPTURE_BYTES>>() == core::mem::size_of::<Record>());
