//! The sweep: one run removes every expired entry from both tables (and, for `palisade ct
//! flush`, every entry matching a filter) and counts the rest by table, protocol and state.
//! Userspace runs it with `BPF_PROG_TEST_RUN` about once a second, so entries expire within
//! their timeout plus a second at one syscall per sweep whatever the table size. The same run
//! removes members of the overload set whose time is over (and, for `palisade ct overload
//! flush`, those matching an address filter) and counts the rest. The request travels as the
//! test-run packet.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_for_each_map_elem, bpf_ktime_get_coarse_ns, bpf_map_delete_elem},
    programs::XdpContext,
};
use palisade_common::{
    conntrack::{
        CtCensus, CtConfig, CtEntry, CtKey, ENTRY_STATES, OverloadEntry, PROTO_CLASSES,
        SWEEP_FLUSH, SWEEP_OVERLOAD_FLUSH, SweepRequest, TABLE_EST, TABLE_NEW, TIMEOUTS,
        proto_class, timeout_class,
    },
    firewall::SetKey,
    nat::{CT_GRACE_NS, NS_SWEPT, NatEntry, NatKey, ct_key, egress_pair},
    packet::Bytes,
};

use crate::{
    bytes::XdpBytes,
    maps::{
        CT_CENSUS, CT_CONFIG, CT_EST, CT_NEW, CT_OVERLOAD, NAT_CENSUS, NAT_EGRESS, NAT_INGRESS,
        NAT_STATS, NAT_SWEEP_SCRATCH, bump,
    },
};

/// What the callback needs; lives on the sweep program's stack.
struct Walk {
    req: SweepRequest,
    census: *mut CtCensus,
    cfg: *const CtConfig,
    now: u64,
    table: usize,
}

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(req) = XdpBytes(ctx).load::<{ core::mem::size_of::<SweepRequest>() }>(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: SweepRequest is plain bytes of this size.
    let req: SweepRequest = unsafe { core::mem::transmute(req) };
    let Some(census) = CT_CENSUS.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(cfg) = CT_CONFIG.get_ptr(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: the census slot is written only by sweeps, which userspace runs one at a time.
    unsafe {
        let c = &mut *census;
        let mut t = 0;
        while t < 2 {
            let mut pc = 0;
            while pc < PROTO_CLASSES {
                let mut s = 0;
                while s < ENTRY_STATES + 1 {
                    c.live[t][pc][s] = 0;
                    s += 1;
                }
                pc += 1;
            }
            t += 1;
        }
        c.overload_members = 0;
    }
    // SAFETY: a helper with no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let mut walk = Walk {
        req,
        census,
        cfg,
        now,
        table: TABLE_EST,
    };
    if let Some(nc) = NAT_CENSUS.get_ptr_mut(0) {
        // SAFETY: the census slot is written only by sweeps, one at a time.
        unsafe { (*nc).live = 0 };
    }
    // SAFETY: the callback has the signature bpf_for_each_map_elem expects and only touches
    // `walk`, which outlives both calls; the map pointers are the maps' definitions.
    unsafe {
        bpf_for_each_map_elem(
            (&raw const CT_EST).cast_mut().cast(),
            visit as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
        walk.table = TABLE_NEW;
        bpf_for_each_map_elem(
            (&raw const CT_NEW).cast_mut().cast(),
            visit as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
        bpf_for_each_map_elem(
            (&raw const CT_OVERLOAD).cast_mut().cast(),
            visit_member as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
        // After both tables: a mapping goes in the same run as its flow's entry.
        bpf_for_each_map_elem(
            (&raw const NAT_INGRESS).cast_mut().cast(),
            visit_mapping as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
        (*census).now_ns = now;
        (*census).sweeps += 1;
    }
    xdp_action::XDP_PASS
}

/// One entry: removes it when expired or flushed, counts it otherwise. Returns 0 to go on.
extern "C" fn visit(
    map: *mut c_void,
    key: *mut c_void,
    value: *mut c_void,
    ctx: *mut c_void,
) -> i64 {
    // SAFETY: `ctx` is the sweep's `Walk`; key and value are the current element's.
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    let k = unsafe { &*key.cast::<CtKey>() };
    let e = unsafe { &*value.cast::<CtEntry>() };
    let cfg = unsafe { &*w.cfg };
    let census = unsafe { &mut *w.census };
    let table = if w.table == TABLE_NEW {
        TABLE_NEW
    } else {
        TABLE_EST
    };
    let class = timeout_class(k.proto, e.state);
    let timeout = if class < TIMEOUTS {
        cfg.timeout_ns[class]
    } else {
        0
    };
    let expired = w.now > e.last_ns && w.now - e.last_ns > timeout;
    let flush = !expired && w.req.op == SWEEP_FLUSH && w.req.matches(k, e);
    if expired || flush {
        // SAFETY: deleting the element being visited is allowed for hash maps.
        let flags = e.flags;
        if unsafe { bpf_map_delete_elem(map, key) } == 0 {
            if table == TABLE_EST {
                super::release_source(k, flags);
            }
            if expired {
                census.expired[table] += 1;
            } else {
                census.flushed[table] += 1;
            }
            return 0;
        }
    }
    let pc = proto_class(k.proto);
    let st = usize::from(e.state);
    if pc < PROTO_CLASSES && st <= ENTRY_STATES {
        census.live[table][pc][st] += 1;
    }
    0
}

/// One member of the overload set: removes it when its time is over or it is flushed,
/// counts it otherwise. Returns 0 to go on.
extern "C" fn visit_member(
    map: *mut c_void,
    key: *mut c_void,
    value: *mut c_void,
    ctx: *mut c_void,
) -> i64 {
    // SAFETY: `ctx` is the sweep's `Walk`; key and value are the current element's.
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    let k = unsafe { &*key.cast::<SetKey>() };
    let e = unsafe { &*value.cast::<OverloadEntry>() };
    let census = unsafe { &mut *w.census };
    let expired = !e.live(w.now);
    let flush =
        !expired && w.req.op == SWEEP_OVERLOAD_FLUSH && w.req.matches_member(k.family, &k.addr);
    if expired || flush {
        // SAFETY: deleting the element being visited is allowed for hash maps.
        if unsafe { bpf_map_delete_elem(map, key) } == 0 {
            if expired {
                census.overload_expired += 1;
            } else {
                census.overload_flushed += 1;
            }
            return 0;
        }
    }
    census.overload_members += 1;
    0
}

/// One NAT mapping (`NAT_INGRESS`, keyed by the flow's outside tuple): removed with its
/// `NAT_EGRESS` pair when the tracker holds no entry for that tuple any more (expired or
/// flushed in this very run, or earlier), once it is older than `CT_GRACE_NS` (the tracker
/// commits a new flow after the mapping is made). Returns 0 to go on.
extern "C" fn visit_mapping(
    map: *mut c_void,
    key: *mut c_void,
    value: *mut c_void,
    ctx: *mut c_void,
) -> i64 {
    // SAFETY: `ctx` is the sweep's `Walk`; key and value are the current element's.
    let w = unsafe { &*ctx.cast::<Walk>() };
    let k = unsafe { &*key.cast::<NatKey>() };
    let e = unsafe { &*value.cast::<NatEntry>() };
    // The keys built here live in a per-CPU slot: this callback's frame is stacked on the
    // sweep's, and the two must stay within 512 bytes.
    let (Some(nc), Some(scratch)) = (NAT_CENSUS.get_ptr_mut(0), NAT_SWEEP_SCRATCH.get_ptr_mut(0))
    else {
        return 1;
    };
    // SAFETY: the census slot and the per-CPU scratch are the sweep's alone while it runs.
    let (nc, scratch) = unsafe { (&mut *nc, &mut *scratch) };
    let young = w.now <= e.created_ns || w.now - e.created_ns < CT_GRACE_NS;
    scratch.ct = ct_key(k);
    let tracked = CT_EST.get_ptr(&scratch.ct).is_some() || CT_NEW.get_ptr(&scratch.ct).is_some();
    if tracked || young {
        nc.live += 1;
        return 0;
    }
    scratch.pair = egress_pair(k, e);
    // SAFETY: deleting the element being visited is allowed for hash maps.
    if unsafe { bpf_map_delete_elem(map, key) } == 0 {
        let _ = NAT_EGRESS.remove(&scratch.pair);
        nc.removed += 1;
        bump(&NAT_STATS, NS_SWEPT);
    } else {
        nc.live += 1;
    }
    0
}

/// Where [`visit_mapping`] builds its keys (one per CPU).
#[repr(C)]
pub struct SweepScratch {
    ct: CtKey,
    pair: NatKey,
}
