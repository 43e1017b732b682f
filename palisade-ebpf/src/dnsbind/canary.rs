//! Firefox's DoH canary (tcx egress on the interfaces DNS leaves by, `lo` included): a UDP
//! query for `use-application-dns.net` from a socket of a `[dns.bind]` cgroup, while the
//! cgroups are pinned to their resolvers, is turned around in place into an NXDOMAIN
//! answer from the resolver it was sent to ([`palisade_common::dnscanary::rewrite`]) and
//! redirected to the ingress of the same interface, so the stub receives it from its
//! resolver's address and port. The query never reaches the resolver. On `lo` the answer
//! just goes on: what leaves by `lo` is received by it.
//!
//! A cgroup_skb program cannot write packets, so this runs at tcx, where the socket's cgroup
//! is still known (`bpf_skb_ancestor_cgroup_id`): the socket's cgroup and each of its
//! ancestors (at most `MAX_CGROUP_LEVELS`) are looked up in `BIND_CGROUPS`.
//!
//! Fail-open: everything that is not such a query, a query from another cgroup (counted as
//! `canary_unpinned`), and a rewrite the kernel refuses (counted as `internal`) go on
//! unchanged (to the resolver, which answers the canary as it likes).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_UNSPEC},
    helpers::generated::{
        bpf_redirect, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id, bpf_skb_load_bytes,
        bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use palisade_common::{
    dns::maps::SCOPE_EGRESS,
    dnsbind::{
        BIND_ON, MAX_CGROUP_LEVELS, PIN_ON, STAT_CANARY_ANSWERED, STAT_CANARY_UNPINNED,
        STAT_INTERNAL,
    },
    dnscanary::{BUF_LEN, CANARY_QNAME, Rewritten, V4_LEN, V4_STORE_LEN, V6_LEN, V6_STORE_LEN},
    event::DNS_VERDICT_NXDOMAIN,
    packet::{ETH_HLEN, ETH_P_IPV6},
    reason, stats,
};

use super::count;
use crate::maps::{BIND_CGROUPS, BIND_CONFIG, REASON_STATS, STATS, bump, event_flags};

/// Let the next program (or the stack) decide.
const CONTINUE: i32 = TC_ACT_UNSPEC;
/// `bpf_redirect`: to the interface's ingress.
const BPF_F_INGRESS: u64 = 1;
/// The loopback device's index, the same in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// `bpf_l4_csum_replace`: a 2-byte field; a zero UDP checksum (none) stays zero.
const L4_FIELD_2: u64 = 2;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let Some(cfg) = BIND_CONFIG.get(0) else {
        count(STAT_INTERNAL);
        return CONTINUE;
    };
    if cfg.enabled != BIND_ON || cfg.pinned != PIN_ON {
        return CONTINUE;
    }
    let frame_len = ctx.len() as usize;
    if frame_len < V4_LEN {
        return CONTINUE;
    }
    let skb = ctx.skb.skb.cast::<c_void>();
    let mut buf = [0u8; BUF_LEN];
    // SAFETY: `buf` has room for `V4_LEN` bytes; the helper checks the frame's range.
    if unsafe { bpf_skb_load_bytes(skb, 0, buf.as_mut_ptr().cast(), V4_LEN as u32) } != 0 {
        return CONTINUE;
    }
    if u16::from_be_bytes([buf[12], buf[13]]) == ETH_P_IPV6 {
        // SAFETY: as above, `V6_LEN <= BUF_LEN`.
        if frame_len < V6_LEN
            || unsafe { bpf_skb_load_bytes(skb, 0, buf.as_mut_ptr().cast(), V6_LEN as u32) } != 0
        {
            return CONTINUE;
        }
    }
    let Some(r) = palisade_common::dnscanary::rewrite(&mut buf, frame_len) else {
        return CONTINUE;
    };
    if !pinned_socket(ctx) {
        count(STAT_CANARY_UNPINNED);
        return CONTINUE;
    }
    let stored = if r.v6 {
        // SAFETY: `V6_STORE_LEN <= BUF_LEN`; the helper checks the frame's range.
        unsafe { bpf_skb_store_bytes(ctx.skb.skb, 0, buf.as_ptr().cast(), V6_STORE_LEN as u32, 0) }
    } else {
        // SAFETY: as above.
        unsafe { bpf_skb_store_bytes(ctx.skb.skb, 0, buf.as_ptr().cast(), V4_STORE_LEN as u32, 0) }
    };
    if stored != 0
        || ctx
            .l4_csum_replace(
                r.csum_off,
                u64::from(r.old_flags.to_be()),
                u64::from(r.new_flags.to_be()),
                L4_FIELD_2 | BPF_F_MARK_MANGLED_0,
            )
            .is_err()
    {
        // A half-written query would reach the resolver as garbage: drop it instead (the
        // stub retries or times out), counted.
        count(STAT_INTERNAL);
        bump(&STATS, stats::INTERNAL);
        return aya_ebpf::bindings::TC_ACT_SHOT;
    }
    count(STAT_CANARY_ANSWERED);
    bump(&REASON_STATS, reason::DNS_DOH_CANARY);
    emit(ctx, &buf, &r);
    // SAFETY: the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if ifindex == LOOPBACK_IFINDEX {
        // What leaves by `lo` comes back in by it, keeping its local route: the answer goes
        // on to the stub as it is. A redirect would drop the route, and the input route
        // lookup treats 127.0.0.0/8 sources as martians.
        return TC_ACT_OK;
    }
    // SAFETY: a helper with no preconditions.
    let _ = unsafe { bpf_redirect(ifindex, BPF_F_INGRESS) };
    TC_ACT_REDIRECT
}

/// Whether the packet's socket is in a `[dns.bind]` cgroup or below one.
#[inline(always)]
fn pinned_socket(ctx: &TcContext) -> bool {
    let skb = ctx.skb.skb;
    // SAFETY: a helper with no preconditions; 0 without a socket.
    if unsafe { bpf_skb_cgroup_id(skb) } == 0 {
        return false;
    }
    let mut level = 0;
    while level < MAX_CGROUP_LEVELS {
        // SAFETY: as above; 0 past the socket's own level.
        let id = unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) };
        if id == 0 {
            return false;
        }
        // SAFETY: the value is not read.
        if unsafe { BIND_CGROUPS.get(&id) }.is_some() {
            return true;
        }
        level += 1;
    }
    false
}

/// Reports the answered canary: a DNS event (scope egress, verdict nxdomain, reason
/// `dns-doh-canary`) with the stub's address and port as `client`, the socket's cgroup and
/// the question.
#[inline(never)]
fn emit(ctx: &TcContext, buf: &[u8; BUF_LEN], r: &Rewritten) {
    let Some(mut entry) = crate::dns::report::reserve_zeroed(reason::DNS_DOH_CANARY) else {
        return;
    };
    // SAFETY: the record is reserved for us and initialised by `reserve_zeroed`.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: as above.
    e.cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    // SAFETY: the program's own context.
    e.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    e.scope = SCOPE_EGRESS;
    e.verdict = DNS_VERDICT_NXDOMAIN;
    e.list = u16::MAX;
    e.qtype = r.qtype;
    // After the rewrite the stub's address is the destination, its port the destination
    // port.
    let l4 = if r.v6 {
        e.family = 6;
        e.client.copy_from_slice(&buf[ETH_HLEN + 24..ETH_HLEN + 40]);
        ETH_HLEN + 40
    } else {
        e.family = 4;
        e.client[10] = 0xff;
        e.client[11] = 0xff;
        e.client[12..16].copy_from_slice(&buf[ETH_HLEN + 16..ETH_HLEN + 20]);
        ETH_HLEN + 20
    };
    e.client_port = u16::from_be_bytes([buf[l4 + 2], buf[l4 + 3]]);
    e.name[..CANARY_QNAME.len()].copy_from_slice(&CANARY_QNAME);
    e.name_len = CANARY_QNAME.len() as u16;
    entry.submit(event_flags());
}
