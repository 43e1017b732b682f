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

use crate::{atomic, maps::BIND_STATS};

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
