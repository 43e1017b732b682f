//! The `mark` action (see `palisade_common::action`): the DSCP rewritten in the frame, the
//! mark handed to `palisade_action_ingress` through the frame's metadata.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::generated::bpf_xdp_adjust_meta,
    programs::{TcContext, XdpContext},
};
use palisade_common::{
    action::{
        ACTION_META_MAGIC, AS_DSCP_REWRITTEN, AS_DSCP_SKIPPED, AS_MARK_APPLIED, AS_MARK_MATCHED,
        AS_MARK_META_WRITTEN, AS_MARK_NO_ROOM, AS_MIRROR_FAILED, AS_MIRROR_MATCHED,
        AS_MIRROR_NO_ROOM, AS_MIRROR_SENT, ActionMeta, META_MARK, META_MIRROR, RULE_SET_DSCP,
        RULE_SET_MARK, v4_set_dscp, v6_set_dscp,
    },
    firewall::RuleMeta,
    packet::{FAMILY_V4, Packet},
};

use crate::{
    bytes::XdpFrame,
    maps::{ACTION_STATS, bump},
};

/// Bytes of the metadata area a mark takes.
const META_LEN: usize = core::mem::size_of::<ActionMeta>();
/// The furthest the parser puts the IP header (Ethernet and two VLAN tags); a mask on the
/// offset tells the verifier so.
const L3_OFFSET_MASK: usize = 0x3f;

/// Applies a `mark` rule to the frame the firewall is letting through. Never fails the
/// packet: a rewrite or a mark that cannot be done is counted and the packet goes on.
#[inline(always)]
pub fn mark(ctx: &XdpContext, meta: &RuleMeta, p: &Packet) {
    bump(&ACTION_STATS, AS_MARK_MATCHED);
    if meta.flags & RULE_SET_DSCP != 0 {
        if set_dscp(ctx, meta.dscp, p) {
            bump(&ACTION_STATS, AS_DSCP_REWRITTEN);
        } else {
            bump(&ACTION_STATS, AS_DSCP_SKIPPED);
        }
    }
    if meta.flags & RULE_SET_MARK != 0 {
        if write_meta(ctx, META_MARK, meta.mark, 0) {
            bump(&ACTION_STATS, AS_MARK_META_WRITTEN);
        } else {
            bump(&ACTION_STATS, AS_MARK_NO_ROOM);
        }
    }
}

/// Applies a `mirror` rule: the interface to copy to, for `palisade_action_ingress`.
#[inline(always)]
pub fn mirror(ctx: &XdpContext, meta: &RuleMeta) {
    bump(&ACTION_STATS, AS_MIRROR_MATCHED);
    if !write_meta(ctx, META_MIRROR, 0, meta.ifindex) {
        bump(&ACTION_STATS, AS_MIRROR_NO_ROOM);
    }
}

/// Rewrites the DSCP of the IP header at `p.l3_offset` (and, for IPv4, its checksum).
#[inline(always)]
fn set_dscp(ctx: &XdpContext, dscp: u8, p: &Packet) -> bool {
    let frame = XdpFrame::of(ctx);
    let l3 = usize::from(p.l3_offset) & L3_OFFSET_MASK;
    let Some(h) = frame.ptr::<12>(l3) else {
        return false;
    };
    // SAFETY: the 12 bytes at `h` were just checked to lie in the frame.
    unsafe {
        let w0 = u16::from_be_bytes([*h, *h.add(1)]);
        if p.family == FAMILY_V4 {
            let check = u16::from_be_bytes([*h.add(10), *h.add(11)]);
            let (w, c) = v4_set_dscp(w0, check, dscp);
            let (w, c) = (w.to_be_bytes(), c.to_be_bytes());
            *h.add(1) = w[1];
            *h.add(10) = c[0];
            *h.add(11) = c[1];
        } else {
            let w = v6_set_dscp(w0, dscp).to_be_bytes();
            *h = w[0];
            *h.add(1) = w[1];
        }
    }
    true
}

/// Puts an [`ActionMeta`] in front of the frame: false when the driver has no room for it.
#[inline(always)]
fn write_meta(ctx: &XdpContext, flags: u32, mark: u32, ifindex: u32) -> bool {
    // SAFETY: the program's own context; the helper moves `data_meta` or fails.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(META_LEN as i32)) } != 0 {
        return false;
    }
    let md = ctx.ctx;
    // SAFETY: plain reads of the context after the helper (the packet pointers are new).
    let (meta, data) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*md).data_meta) as usize,
            core::ptr::read_volatile(&raw const (*md).data) as usize,
        )
    };
    if meta + META_LEN > data {
        return false;
    }
    // SAFETY: `meta..meta + META_LEN` was just checked to lie before `data`.
    unsafe {
        core::ptr::write_unaligned(
            meta as *mut ActionMeta,
            ActionMeta {
                magic: ACTION_META_MAGIC,
                flags,
                mark,
                ifindex,
            },
        );
    }
    true
}

/// `palisade_action_ingress`: the mark the firewall left in the metadata, set on the socket
/// buffer. Never drops; returns "next program" whatever it finds.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the program's context; plain reads.
    let (meta, data) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*skb).data_meta) as usize,
            core::ptr::read_volatile(&raw const (*skb).data) as usize,
        )
    };
    if meta + META_LEN <= data {
        // SAFETY: the metadata's bytes were just checked to lie before `data`.
        let m = unsafe { core::ptr::read_unaligned(meta as *const ActionMeta) };
        if m.magic == ACTION_META_MAGIC {
            if m.flags & META_MARK != 0 {
                // SAFETY: `mark` is writable from TC programs.
                unsafe { core::ptr::write_volatile(&raw mut (*skb).mark, m.mark) };
                bump(&ACTION_STATS, AS_MARK_APPLIED);
            }
            if m.flags & META_MIRROR != 0 {
                // The copy leaves by the interface's egress; the original goes on here.
                if ctx.clone_redirect(m.ifindex, 0).is_ok() {
                    bump(&ACTION_STATS, AS_MIRROR_SENT);
                } else {
                    bump(&ACTION_STATS, AS_MIRROR_FAILED);
                }
            }
        }
    }
    TC_ACT_UNSPEC
}
