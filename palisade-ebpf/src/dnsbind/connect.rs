//! The connect path (cgroup sock_addr `connect4/6`, `sendmsg4/6`): a destination passes when
//! it is allowed explicitly (`BIND_ALLOW`, loopback included) or bound to the caller's cgroup
//! by an answer that has not expired; anything else is refused, which the kernel turns into
//! `EPERM` for the `connect()` or `sendmsg()`.
//!
//! The caller's cgroup is the calling task's: the hook runs in the process that connects.
//! Answers are bound to the receiving socket's cgroup; the two agree unless a process moves
//! to another cgroup between creating a socket and connecting it (refused: fail closed).
//!
//! With resolver pinning on (`[dns.bind] resolvers`), port 53 (UDP and TCP) reaches only the
//! configured resolvers, and port 853 (DoT, DoQ) and the known DoH endpoints nothing: those
//! are refused first, whatever the bindings say (reasons `dns-resolver-pinned`,
//! `dns-encrypted`). A configured resolver is reachable without an answer.
//!
//! Fail-open vs fail-closed: without a loaded `[dns.bind]` (no settings) the hook passes
//! everything; once on, a destination the maps do not vouch for is refused.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, generated::bpf_get_current_cgroup_id,
    },
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use palisade_common::{
    dns::maps::SCOPE_EGRESS,
    dnsbind::{
        BIND_ON, BindKey, PIN_ON, PIN_RESOLVER, STAT_CONNECT_BOUND, STAT_CONNECT_CHECKED,
        STAT_CONNECT_DENIED, STAT_CONNECT_EXPLICIT, STAT_INTERNAL, STAT_PIN_REFUSED, pin_verdict,
    },
    event::DNS_VERDICT_DROP,
    reason,
};

use super::count;
use crate::maps::{BIND_ADDRS, BIND_ALLOW, BIND_CONFIG, BIND_PIN, REASON_STATS, bump, event_flags};

/// sock_addr verdicts.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
/// `SOCK_STREAM`.
const SOCK_STREAM: u32 = 1;
/// Bits of [`emit`]'s `how` (BPF functions take at most five arguments): the family is
/// IPv6, the socket is TCP.
const HOW_V6: u8 = 1;
const HOW_TCP: u8 = 2;

#[inline(always)]
pub fn run(ctx: &SockAddrContext, v6: bool) -> i32 {
    let Some(cfg) = BIND_CONFIG.get(0) else {
        count(STAT_INTERNAL);
        return ALLOW;
    };
    if cfg.enabled != BIND_ON {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    // SAFETY: fields of the program's own context, read with the widths the kernel allows.
    let (addr, port, sock_type) = unsafe {
        let addr = if v6 {
            let w = [
                core::ptr::read_volatile(&raw const (*sa).user_ip6[0]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[1]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[2]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[3]),
            ];
            core::mem::transmute::<[u32; 4], [u8; 16]>(w)
        } else {
            let ip = core::ptr::read_volatile(&raw const (*sa).user_ip4).to_ne_bytes();
            palisade_common::dnsbind::mapped_v4(ip)
        };
        let port = u16::from_be(core::ptr::read_volatile(&raw const (*sa).user_port) as u16);
        (addr, port, core::ptr::read_volatile(&raw const (*sa).type_))
    };
    count(STAT_CONNECT_CHECKED);
    // SAFETY: a helper with no preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let how = u8::from(v6) * HOW_V6 | u8::from(sock_type == SOCK_STREAM) * HOW_TCP;
    if cfg.pinned == PIN_ON {
        let kind = BIND_PIN.get(&Key::new(128, addr)).copied().unwrap_or(0);
        let why = pin_verdict(kind, port);
        if why != reason::PASS {
            count(STAT_PIN_REFUSED);
            bump(&REASON_STATS, why);
            emit(cgroup_id, &addr, port, how, why);
            return REFUSE;
        }
        if kind == PIN_RESOLVER {
            count(STAT_CONNECT_EXPLICIT);
            return ALLOW;
        }
    }
    if BIND_ALLOW.get(&Key::new(128, addr)).is_some() {
        count(STAT_CONNECT_EXPLICIT);
        return ALLOW;
    }
    let key = BindKey { cgroup_id, addr };
    // SAFETY: the value is only read.
    if let Some(b) = unsafe { BIND_ADDRS.get(&key) } {
        // SAFETY: a helper with no preconditions.
        if b.expires_ns > unsafe { bpf_ktime_get_boot_ns() } {
            count(STAT_CONNECT_BOUND);
            return ALLOW;
        }
    }
    count(STAT_CONNECT_DENIED);
    bump(&REASON_STATS, reason::BIND_UNRESOLVED);
    emit(cgroup_id, &addr, port, how, reason::BIND_UNRESOLVED);
    REFUSE
}

/// Reports a refused destination: a DNS event (egress scope, verdict drop, reason
/// `bind-unresolved`, `dns-resolver-pinned` or `dns-encrypted`) whose `client` and `client_port` are the refused destination, with the
/// calling process.
#[inline(never)]
fn emit(cgroup_id: u64, addr: &[u8; 16], port: u16, how: u8, why: u32) {
    let Some(mut entry) = crate::dns::report::reserve_zeroed(why) else {
        return;
    };
    // SAFETY: the record is reserved for us and initialised by `reserve_zeroed`.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.cgroup_id = cgroup_id;
    e.scope = SCOPE_EGRESS;
    e.verdict = DNS_VERDICT_DROP;
    e.list = u16::MAX;
    e.tcp = u8::from(how & HOW_TCP != 0);
    e.client = *addr;
    e.client_port = port;
    e.family = if how & HOW_V6 != 0 { 6 } else { 4 };
    let pid_tgid = bpf_get_current_pid_tgid();
    e.pid = (pid_tgid >> 32) as u32;
    e.tid = pid_tgid as u32;
    let uid_gid = bpf_get_current_uid_gid();
    e.uid = uid_gid as u32;
    e.gid = (uid_gid >> 32) as u32;
    e.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    entry.submit(event_flags());
}
