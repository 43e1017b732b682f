//! Connection tracking in the kernel: the ingress side runs inside the XDP firewall, the
//! egress side in a TC program on the same interfaces (XDP never sees what the host sends).
//! The state machine itself is `palisade_common::conntrack`, shared with userspace.
//!
//! An entry of an existing flow is updated when the packet is seen (as netfilter does); an
//! entry for a new flow is prepared in a per-CPU slot and inserted only once the packet is
//! allowed ([`commit`]), so dropped packets never create state.

pub mod egress;
pub mod ingress;
pub mod overload;
pub mod sweep;

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use palisade_common::{
    conntrack::{
        CS_ESTABLISHED, CS_EXPIRED_LOOKUP_EST, CS_EXPIRED_LOOKUP_NEW, CS_INSERT_EST,
        CS_INSERT_FAIL_EST, CS_INSERT_FAIL_NEW, CS_INSERT_NEW, CS_INVALID, CS_NEW, CS_PICKUP,
        CS_PROMOTED, CS_RELATED, CS_REOPENED, CS_REOPENED_EST, CS_UNTRACKED, CtConfig, CtDir,
        CtEntry, CtKey, ENTRY_LOCAL, ENTRY_ORIG_B, ENTRY_PICKUP, HOOK_EGRESS, HOOK_INGRESS,
        IcmpKind, OVER_MAX_PER_SOURCE, OVER_NEW_PER_SOURCE, STATE_ESTABLISHED, STATE_INVALID,
        STATE_NEW, STATE_RELATED, Segment, SourceEntry, TCP_CLOSE, TCP_ESTABLISHED, TCP_TIME_WAIT,
        TIMEOUTS, UNREPLIED, icmp_kind, is_validated, originator, other_step, quoted_flow,
        read_segment, tcp_open, tcp_open_cookie, tcp_step, timeout_class,
    },
    packet::{
        Bytes, FRAG_LATER, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, MAX_L4_OFFSET, Packet,
        TCP_ACK, TCP_SYN,
    },
};

use crate::maps::{CT_CONFIG, CT_EST, CT_NEW, CT_PENDING, CT_SOURCES, CT_STATS, bump};

/// A new flow's entry, waiting for the packet's verdict (one per CPU, XDP only).
#[repr(C)]
pub struct Pending {
    pub key: CtKey,
    pub entry: CtEntry,
    /// 1 when `key`/`entry` hold a flow to insert.
    pub armed: u32,
    /// 1 when it goes straight into the table of validated flows.
    pub validated: u32,
    /// 1 when it replaces a closed flow on the same ports (a new SYN in TIME_WAIT or CLOSE);
    /// 2 when that flow was in the table of validated flows.
    pub reopens: u32,
    pub _pad: u32,
    /// The `jiffies` value [`now`] last read the clock at, and what the clock said then.
    pub clock_tick: u64,
    pub clock_ns: u64,
}

/// Coarse monotonic time (`bpf_ktime_get_coarse_ns`): a tick of precision is plenty for
/// timeouts of seconds. The coarse clock moves only when the timekeeping tick moves
/// `jiffies`, and the verifier turns a read of `jiffies` into one load, while the clock's
/// helper is a call into timekeeping (about 12 ns an established packet, a quarter of what
/// tracking adds). So each CPU keeps the clock's value for the tick it last read it in, and
/// calls the helper only when `jiffies` moved.
///
/// The kernel moves `jiffies` a moment before it updates the clock (on another CPU, maybe):
/// a CPU that reads the clock in that moment gets the previous tick's time. When that is
/// the time it holds already, it keeps asking; otherwise it keeps that time for this tick.
/// Stamps may so lag the clock by a tick (10 ms at the lowest `HZ`), which the carry across
/// restarts allows for (`STAMP_LAG_NS` in `palisade/src/conntrack/carry.rs`); timeouts of
/// seconds do not notice.
#[inline(always)]
fn now(pending: &mut Pending) -> u64 {
    // SAFETY: a helper with no preconditions (inlined by the verifier).
    let tick = unsafe { bpf_jiffies64() };
    if tick != pending.clock_tick {
        // SAFETY: a helper with no preconditions.
        let ns = unsafe { bpf_ktime_get_coarse_ns() };
        if ns == pending.clock_ns {
            // Read between the two updates: `jiffies` moved, the clock not yet. Not kept
            // for this tick, so the next packet reads the clock again.
            return ns;
        }
        pending.clock_ns = ns;
        pending.clock_tick = tick;
    }
    pending.clock_ns
}

/// What every step of one packet's tracking shares (BPF functions take at most five
/// arguments).
struct Env<'a> {
    cfg: &'a CtConfig,
    pending: &'a mut Pending,
    t: u64,
    ifindex: u32,
    hook: u8,
}

/// Where an entry was found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    New,
    Est,
}

/// Classifies `p` (its `ct_state` is set) and updates or prepares its flow's entry.
/// Returns false on an internal error (a map that cannot be read); the packet is then left
/// unclassified.
///
/// Inlined into each hook's program: a BPF-to-BPF call costs an established packet about
/// 20 ns here (argument spills, and a return through the kernel's return thunk), a third of
/// what the tracker cost before. Its own frame is small; the big one is [`tcp`]'s, which
/// stays a call of its own (inlined, it would stack on the caller's frame and multiply the
/// verifier's states with the window-scale option loop).
#[inline(always)]
pub fn track<B: Bytes + ?Sized>(b: &B, p: &mut Packet, hook: u8, ifindex: u32) -> bool {
    let Some(pending) = CT_PENDING.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot; the XDP and TC hooks run with bottom halves off and never nest
    // on one CPU.
    let pending = unsafe { &mut *pending };
    pending.armed = 0;
    let Some(cfg) = CT_CONFIG.get(0) else {
        return false;
    };
    if p.frag == FRAG_LATER {
        // No ports: the flow is unknown. Left unclassified (rules without `state` decide).
        bump(&CT_STATS, CS_UNTRACKED);
        return true;
    }
    let t = now(pending);
    let mut env = Env {
        cfg,
        pending,
        t,
        ifindex,
        hook,
    };
    let state = match p.proto {
        IPPROTO_TCP => match tcp(b, p, &mut env) {
            Some(state) => state,
            None => {
                bump(&CT_STATS, CS_UNTRACKED);
                return true;
            }
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Read at the header's own offset (see `read_segment`), bounded so the verifier
            // can prove the read inside the packet.
            let at = usize::from(p.l4_offset);
            let id = if at > MAX_L4_OFFSET {
                0
            } else {
                b.load::<8>(at)
                    .map_or(0, |h| u16::from_be_bytes([h[4], h[5]]))
            };
            match icmp_kind(p.proto, (p.dport >> 8) as u8, id) {
                IcmpKind::EchoRequest(id) => flow(p, id, id, Kind::EchoRequest, &mut env),
                IcmpKind::EchoReply(id) => flow(p, id, id, Kind::EchoReply, &mut env),
                IcmpKind::Error => related(b, p, &env),
                IcmpKind::Other => {
                    bump(&CT_STATS, CS_UNTRACKED);
                    return true;
                }
            }
        }
        _ => flow(p, p.sport, p.dport, Kind::Datagram, &mut env),
    };
    p.ct_state = state;
    bump(
        &CT_STATS,
        match state {
            STATE_NEW => CS_NEW,
            STATE_ESTABLISHED => CS_ESTABLISHED,
            STATE_RELATED => CS_RELATED,
            _ => CS_INVALID,
        },
    );
    true
}

/// A TCP segment; `None` when its header cannot be read. Not inlined: its frame is not
/// stacked on the caller's (the verifier's 512-byte budget covers the whole call chain).
#[inline(never)]
fn tcp<B: Bytes + ?Sized>(b: &B, p: &Packet, env: &mut Env<'_>) -> Option<u8> {
    let (cfg, t, hook, ifindex) = (env.cfg, env.t, env.hook, env.ifindex);
    let pending = &mut *env.pending;
    let seg = read_segment(b, p)?;
    let (key, swap) = CtKey::of(p, p.sport, p.dport);
    Some(match find(&key, cfg, t) {
        Some((e, table)) => {
            // SAFETY: a live map value; concurrent writers touch other directions.
            let e = unsafe { &mut *e };
            let reply = swap != (e.flags & ENTRY_ORIG_B != 0);
            let cls = tcp_step(e, reply, &seg);
            if cls == STATE_NEW
                && (e.state == TCP_TIME_WAIT || e.state == TCP_CLOSE)
                && seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            {
                // A new connection on the ports of a closed one. Like any new flow it is
                // prepared aside and replaces the old entry only once the packet is allowed:
                // a SYN the rules drop leaves the closed flow as it was.
                let Some((state, cls, dir)) = tcp_open(&seg, hook) else {
                    return Some(STATE_INVALID);
                };
                arm(pending, &key, swap, state, dir, hook, ifindex, t, p);
                pending.reopens = if table == Table::Est { 2 } else { 1 };
                return Some(cls);
            }
            touch(e, cls, reply, p, t);
            if table == Table::New {
                promote(&key, e);
            }
            cls
        }
        None => match tcp_open(&seg, hook) {
            Some((state, cls, dir)) => {
                arm(pending, &key, swap, state, dir, hook, ifindex, t, p);
                if state == TCP_ESTABLISHED {
                    pending.entry.flags |= ENTRY_PICKUP;
                    pending.validated = 1;
                    bump(&CT_STATS, CS_PICKUP);
                }
                cls
            }
            None => STATE_INVALID,
        },
    })
}

/// Prepares the entry of a flow whose ACK carried a valid SYN cookie (see `shield`), with
/// both directions as the handshake made them (`tcp_open_cookie`), inserted straight into
/// the table of validated flows once the rules allow the packet. False when the segment
/// cannot open one.
#[inline(always)]
pub fn open_from_cookie(
    seg: &Segment,
    p: &Packet,
    client_wscale: Option<u8>,
    server_wscale: u8,
    server_window: u16,
) -> bool {
    let Some(pending) = CT_PENDING.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, see `track`.
    let pending = unsafe { &mut *pending };
    let Some((state, client, server)) =
        tcp_open_cookie(seg, client_wscale, server_wscale, server_window)
    else {
        return false;
    };
    let t = now(pending);
    let (key, swap) = CtKey::of(p, p.sport, p.dport);
    arm(pending, &key, swap, state, client, HOOK_INGRESS, 0, t, p);
    pending.entry.dirs[1] = server;
    pending.validated = 1;
    true
}

/// An ICMP error: related when the flow it quotes is tracked.
#[inline(never)]
fn related<B: Bytes + ?Sized>(b: &B, p: &Packet, env: &Env<'_>) -> u8 {
    match quoted_flow(b, p) {
        Some(k) if find(&k, env.cfg, env.t).is_some() => STATE_RELATED,
        _ => STATE_INVALID,
    }
}

/// What a packet of a flow without TCP's state machine is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// UDP and other protocols: either side may send anything.
    Datagram,
    /// An ICMP echo request: only the flow's opener sends them.
    EchoRequest,
    /// An ICMP echo reply: only the answering side sends them, and never first.
    EchoReply,
}

/// UDP, ICMP echo and other protocols: only whether an answer was seen.
#[inline(never)]
fn flow(p: &Packet, sport: u16, dport: u16, kind: Kind, env: &mut Env<'_>) -> u8 {
    let (cfg, t, hook, ifindex) = (env.cfg, env.t, env.hook, env.ifindex);
    let pending = &mut *env.pending;
    let (key, swap) = CtKey::of(p, sport, dport);
    if let Some((e, table)) = find(&key, cfg, t) {
        // SAFETY: a live map value.
        let e = unsafe { &mut *e };
        let reply = swap != (e.flags & ENTRY_ORIG_B != 0);
        // Echo messages keep their direction (netfilter's tuple holds the type): a request
        // from the answering side is a ping of its own, new and left to the rules (the key
        // is taken by this flow, so it is not tracked); a reply from the opener is invalid.
        match kind {
            Kind::EchoRequest if reply => return STATE_NEW,
            Kind::EchoReply if !reply => return STATE_INVALID,
            _ => {}
        }
        let cls = other_step(e, reply);
        touch(e, cls, reply, p, t);
        if table == Table::New {
            promote(&key, e);
        }
        return cls;
    }
    if kind == Kind::EchoReply {
        return STATE_INVALID;
    }
    let dir = CtDir {
        flags: palisade_common::conntrack::DIR_SEEN,
        ..CtDir::default()
    };
    arm(pending, &key, swap, UNREPLIED, dir, hook, ifindex, t, p);
    STATE_NEW
}

/// The live entry of `key`, validated flows first. An expired entry is removed and not
/// returned.
#[inline(always)]
fn find(key: &CtKey, cfg: &CtConfig, t: u64) -> Option<(*mut CtEntry, Table)> {
    let (e, table) = match CT_EST.get_ptr_mut(key) {
        Some(e) => (e, Table::Est),
        None => (CT_NEW.get_ptr_mut(key)?, Table::New),
    };
    // SAFETY: a live map value, read once.
    let (last, state, flags) = unsafe { ((*e).last_ns, (*e).state, (*e).flags) };
    let class = timeout_class(key.proto, state);
    let timeout = if class < TIMEOUTS {
        cfg.timeout_ns[class]
    } else {
        0
    };
    if t > last && t - last > timeout {
        // Counted only when this packet removed it (the sweep may be at it too).
        let _ = match table {
            Table::Est => CT_EST.remove(key).map(|()| {
                bump(&CT_STATS, CS_EXPIRED_LOOKUP_EST);
                release_source(key, flags);
            }),
            Table::New => CT_NEW
                .remove(key)
                .map(|()| bump(&CT_STATS, CS_EXPIRED_LOOKUP_NEW)),
        };
        return None;
    }
    Some((e, table))
}

/// Records a packet that was not invalid in its flow's entry.
#[inline(always)]
fn touch(e: &mut CtEntry, cls: u8, reply: bool, p: &Packet, t: u64) {
    if cls == STATE_INVALID {
        return;
    }
    e.last_ns = t;
    let d = &mut e.dirs[usize::from(reply)];
    d.packets = d.packets.wrapping_add(1);
    d.bytes = d.bytes.wrapping_add(u64::from(p.l4_len));
}

/// Moves a flow that has just been validated into the table of validated flows. When that
/// table is full it stays where it is (counted), and keeps working until evicted.
#[inline(always)]
fn promote(key: &CtKey, e: &CtEntry) {
    // A flow closed during its handshake (refused, or aborted by its opener) was never
    // validated by an answer worth protecting: it stays with the unvalidated flows, so a
    // flood of SYNs to closed ports (or SYN-RST pairs) cannot fill the validated table.
    if !is_validated(e.state) || e.state == TCP_CLOSE {
        return;
    }
    if CT_EST.insert(key, e, 0).is_ok() {
        bump(&CT_STATS, CS_INSERT_EST);
        bump(&CT_STATS, CS_PROMOTED);
        if e.flags & ENTRY_LOCAL == 0
            && let Some(s) = CT_SOURCES.get_ptr_mut(&originator(key, e))
        {
            // SAFETY: a live map value; see `CT_SOURCES` on races.
            unsafe { (*s).flows = (*s).flows.saturating_add(1) };
        }
        let _ = CT_NEW.remove(key);
    } else {
        bump(&CT_STATS, CS_INSERT_FAIL_EST);
    }
}

/// Prepares a new flow's entry in the per-CPU slot.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "fills one record; inlined")]
fn arm(
    pending: &mut Pending,
    key: &CtKey,
    swap: bool,
    state: u8,
    dir: CtDir,
    hook: u8,
    ifindex: u32,
    t: u64,
    p: &Packet,
) {
    pending.key = *key;
    let e = &mut pending.entry;
    e.created_ns = t;
    e.last_ns = t;
    e.dirs[0] = dir;
    e.dirs[0].packets = 1;
    e.dirs[0].bytes = u64::from(p.l4_len);
    e.dirs[1] = CtDir::default();
    e.state = state;
    e.flags = 0;
    if swap {
        e.flags |= ENTRY_ORIG_B;
    }
    if hook == HOOK_EGRESS {
        e.flags |= ENTRY_LOCAL;
    }
    e._pad = [0; 2];
    e.ifindex = ifindex;
    pending.validated = 0;
    pending.reopens = 0;
    pending.armed = 1;
}

/// Inserts the flow prepared by [`track`], if any: called once the packet is allowed.
#[inline(always)]
pub fn commit() {
    let Some(pending) = CT_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, see `track`.
    let pending = unsafe { &mut *pending };
    if pending.armed == 0 {
        return;
    }
    pending.armed = 0;
    if pending.reopens != 0 {
        bump(&CT_STATS, CS_REOPENED);
        if pending.reopens == 2 {
            // The closed flow leaves the validated table; the new one starts unvalidated.
            // SAFETY: a live map value, read once.
            let flags = unsafe { CT_EST.get(&pending.key) }.map_or(ENTRY_LOCAL, |e| e.flags);
            if CT_EST.remove(&pending.key).is_ok() {
                bump(&CT_STATS, CS_REOPENED_EST);
                release_source(&pending.key, flags);
            }
            insert_new(pending);
        } else if CT_NEW.insert(&pending.key, &pending.entry, 0).is_err() {
            // Overwritten in place (no entry added), or failed.
            bump(&CT_STATS, CS_INSERT_FAIL_NEW);
        }
        return;
    }
    if pending.validated != 0 {
        // NOEXIST: another CPU may have inserted the same flow a moment ago; that one stands.
        match CT_EST.insert(&pending.key, &pending.entry, NOEXIST) {
            Ok(()) => {
                bump(&CT_STATS, CS_INSERT_EST);
                return;
            }
            Err(EEXIST) => return,
            Err(_) => bump(&CT_STATS, CS_INSERT_FAIL_EST),
        }
    }
    insert_new(pending);
}

/// `BPF_NOEXIST`.
const NOEXIST: u64 = 1;
/// `-EEXIST`, as the map helpers return it.
const EEXIST: i32 = -17;

/// Inserts a new flow into the table of unvalidated flows, counting the outcome.
#[inline(always)]
fn insert_new(pending: &Pending) {
    match CT_NEW.insert(&pending.key, &pending.entry, NOEXIST) {
        Ok(()) => bump(&CT_STATS, CS_INSERT_NEW),
        Err(EEXIST) => {}
        Err(_) => bump(&CT_STATS, CS_INSERT_FAIL_NEW),
    }
}

/// A validated flow opened from the outside left its table: one flow less for its source.
#[inline(always)]
pub fn release_source(key: &CtKey, flags: u8) {
    if flags & ENTRY_LOCAL != 0 {
        return;
    }
    let src = if flags & ENTRY_ORIG_B != 0 {
        key.b
    } else {
        key.a
    };
    if let Some(s) = CT_SOURCES.get_ptr_mut(&src) {
        // SAFETY: a live map value; see `CT_SOURCES` on races.
        unsafe { (*s).flows = (*s).flows.saturating_sub(1) };
    }
}

/// The per-source limits of `[conntrack]` for the new flow [`track`] prepared from an outside
/// packet `p`: false when its source is over a limit (the flow is then not inserted). A source
/// met for the first time gets a full bucket.
#[inline(never)]
pub fn admit(p: &Packet) -> bool {
    let Some(pending) = CT_PENDING.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot, see `track`.
    let pending = unsafe { &mut *pending };
    if pending.armed == 0 {
        return true;
    }
    let Some(cfg) = CT_CONFIG.get(0) else {
        return true;
    };
    let (max, rate) = (cfg.max_per_source, cfg.new_per_source);
    if max == 0 && rate == 0 {
        return true;
    }
    let src = p.src_words();
    let t = now(pending);
    let over = match CT_SOURCES.get_ptr_mut(&src) {
        Some(s) => {
            // SAFETY: a live map value; see `CT_SOURCES` on races.
            let s = unsafe { &mut *s };
            if max != 0 && s.flows >= max {
                OVER_MAX_PER_SOURCE
            } else if rate != 0 && !s.take_token(rate, t) {
                OVER_NEW_PER_SOURCE
            } else {
                0
            }
        }
        None => {
            let fresh = SourceEntry {
                flows: 0,
                tokens: rate.saturating_sub(1),
                refill_ns: t,
            };
            let _ = CT_SOURCES.insert(&src, &fresh, 0);
            0
        }
    };
    if over == 0 {
        return true;
    }
    pending.armed = 0;
    if cfg.overload_ttl_ns != 0 {
        let value = if over == OVER_MAX_PER_SOURCE {
            max
        } else {
            rate
        };
        overload::add(p, over, value, cfg.overload_ttl_ns, t);
    }
    false
}
