//! DNS binding (`[dns.bind]`): a cgroup in bind mode connects only to what it resolved.
//!
//! - [`answer`] (cgroup_skb ingress) walks every DNS answer delivered to a socket of the
//!   cgroup and writes a binding (cgroup, address, expiry) for each A/AAAA record before the
//!   application can read the answer: there is no race between the answer and the connect.
//! - [`connect`] (cgroup sock_addr `connect4/6`, `sendmsg4/6`) lets a connect, or a send on
//!   an unconnected UDP socket, through only to a bound address or an explicitly allowed
//!   prefix; anything else fails with `EPERM` (reason `bind-unresolved`).
//! - [`query`] (cgroup_skb egress) records every query the cgroup sends; an answer binds
//!   only when it answers one of them (and consumes it).
//! - [`canary`] (tcx egress) answers Firefox's DoH canary NXDOMAIN for pinned cgroups.

pub mod answer;
pub mod canary;
pub(crate) mod check;
pub mod connect;
pub mod query;

use aya_ebpf::maps::PerCpuArray;
use palisade_common::dnsbind::{BIND_ON, BindConfig, STAT_INTERNAL};

use crate::{
    atomic,
    maps::{BIND_CONFIG, BIND_STATS},
};

/// Runs `walk` on the configuration with this CPU's scratch claimed through its flag in `busy`, when `[dns.bind]`
/// is on; `idle` otherwise. A run preempted (threaded softirqs) or interrupted on this CPU
/// (a softirq's TCP retransmit) keeps the scratch; the other does nothing and is counted as
/// `internal`, as is a missing configuration or flag.
#[inline(always)]
fn claimed(busy: &PerCpuArray<u64>, idle: i32, walk: impl FnOnce(&BindConfig) -> i32) -> i32 {
    let Some(cfg) = BIND_CONFIG.get(0) else {
        count(STAT_INTERNAL);
        return idle;
    };
    if cfg.enabled != BIND_ON {
        return idle;
    }
    let Some(flag) = busy.get_ptr_mut(0) else {
        count(STAT_INTERNAL);
        return idle;
    };
    // SAFETY: an aligned u64 in a map value.
    if !unsafe { atomic::compare_exchange(flag, 0, 1) } {
        count(STAT_INTERNAL);
        return idle;
    }
    let verdict = walk(cfg);
    // SAFETY: as above.
    unsafe { atomic::exchange(flag, 0) };
    verdict
}

/// Counts one event in the binding counters. Atomic: the sock_addr hooks run preemptibly,
/// and a softirq on the same CPU may count at the same time.
#[inline(always)]
fn count(index: u32) {
    add(index, 1);
}

/// Adds `n` to one of the binding counters (atomic, as [`count`]).
#[inline(always)]
fn add(index: u32, n: u64) {
    if let Some(c) = BIND_STATS.get_ptr_mut(index) {
        // SAFETY: an aligned u64 in a map value.
        unsafe { atomic::add(c, n) };
    }
}
