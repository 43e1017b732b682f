//! The `mark` action (see `palisade_common::action`): the DSCP rewritten in the frame, the
//! mark handed to `palisade_action_ingress` through the frame's metadata, or through
//! `ACTION_HANDOFF` on a kernel without XDP metadata.

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_md},
    helpers::generated::bpf_skb_load_bytes,
    helpers::generated::bpf_xdp_adjust_meta,
    programs::{TcContext, XdpContext},
};
use palisade_common::{
    action::{
        ACTION_META_MAGIC, AS_DSCP_REWRITTEN, AS_DSCP_SKIPPED, AS_HANDOFF_TAKEN,
        AS_HANDOFF_WRITTEN, AS_MARK_APPLIED, AS_MARK_MATCHED, AS_MARK_META_WRITTEN,
        AS_MARK_NO_ROOM, AS_MIRROR_FAILED, AS_MIRROR_MATCHED, AS_MIRROR_NO_ROOM, AS_MIRROR_SENT,
        ActionMeta, HANDOFF_LEN, HANDOFF_SHORT_LEN, HandoffKey, META_MARK, META_MIRROR,
        RULE_SET_DSCP, RULE_SET_MARK, v4_set_dscp, v6_set_dscp,
    },
    firewall::RuleMeta,
    packet::{FAMILY_V4, Packet},
};

use crate::{
    bytes::XdpFrame,
    maps::{ACTION_HANDOFF, ACTION_STATS, bump},
};

/// Whether this kernel lets XDP programs call `bpf_xdp_adjust_meta`: set by the loader from
/// its probe (`palisade::kernel::xdp_metadata`), read-only data the verifier reads as a
/// constant. Without the helper its call is never reached (so the programs load), and the
/// actions go through `ACTION_HANDOFF` instead.
#[unsafe(no_mangle)]
static PALISADE_XDP_META: u32 = 0;

/// [`PALISADE_XDP_META`], read as the verifier sees it.
#[inline(always)]
fn xdp_metadata() -> bool {
    // SAFETY: a plain read of a global the loader sets before the programs load.
    unsafe { core::ptr::read_volatile(&raw const PALISADE_XDP_META) != 0 }
}

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
        if write_meta(ctx, p, META_MARK, meta.mark, 0) {
            bump(&ACTION_STATS, AS_MARK_META_WRITTEN);
        } else {
            bump(&ACTION_STATS, AS_MARK_NO_ROOM);
        }
    }
}

/// Applies a `mirror` rule: the interface to copy to, for `palisade_action_ingress`.
#[inline(always)]
pub fn mirror(ctx: &XdpContext, meta: &RuleMeta, p: &Packet) {
    bump(&ACTION_STATS, AS_MIRROR_MATCHED);
    if !write_meta(ctx, p, META_MIRROR, 0, meta.ifindex) {
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

/// Puts an [`ActionMeta`] in front of the frame (false when the driver has no room for it),
/// or, on a kernel without XDP metadata, into `ACTION_HANDOFF` under the packet's key.
#[inline(always)]
fn write_meta(ctx: &XdpContext, p: &Packet, flags: u32, mark: u32, ifindex: u32) -> bool {
    if !xdp_metadata() {
        return hand_off(ctx.ctx, u32::from(p.l3_offset), flags, mark, ifindex);
    }
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
    let action = ActionMeta::new(flags, mark, ifindex);
    // SAFETY: `meta..meta + META_LEN` was just checked to lie before `data`.
    unsafe { core::ptr::write_unaligned(meta as *mut ActionMeta, action) };
    true
}

/// Puts the action into `ACTION_HANDOFF` under the frame's key ([`frame_key`]): false when
/// the frame is too short for one or the table refuses it. A function of its own, so that
/// its key's bytes are on a stack frame of their own, not on the firewall's.
#[inline(never)]
fn hand_off(md: *mut xdp_md, l3: u32, flags: u32, mark: u32, ifindex: u32) -> bool {
    let ctx = XdpContext::new(md);
    let Some(key) = frame_key(&ctx, l3) else {
        return false;
    };
    let action = ActionMeta::new(flags, mark, ifindex);
    if ACTION_HANDOFF.insert(&key, &action, 0).is_err() {
        return false;
    }
    bump(&ACTION_STATS, AS_HANDOFF_WRITTEN);
    true
}

/// The handoff key of the frame (see [`HandoffKey`]): its bytes from the IP header at `l3`,
/// 48 of them, or 28 when the frame is shorter; `None` below that.
#[inline(always)]
fn frame_key(ctx: &XdpContext, l3: u32) -> Option<HandoffKey> {
    let frame = XdpFrame::of(ctx);
    let l3 = l3 as usize & L3_OFFSET_MASK;
    let mut key = HandoffKey {
        bytes: [0; HANDOFF_LEN],
    };
    if let Some(h) = frame.ptr::<HANDOFF_LEN>(l3) {
        // SAFETY: the bytes at `h` were just checked to lie in the frame.
        key.bytes = unsafe { core::ptr::read_unaligned(h.cast::<[u8; HANDOFF_LEN]>()) };
    } else {
        let h = frame.ptr::<HANDOFF_SHORT_LEN>(l3)?;
        // SAFETY: as above, for the shorter key.
        let short = unsafe { core::ptr::read_unaligned(h.cast::<[u8; HANDOFF_SHORT_LEN]>()) };
        key.bytes[..HANDOFF_SHORT_LEN].copy_from_slice(&short);
    }
    Some(key)
}

/// The handoff key of the socket buffer (as [`frame_key`] builds it from the frame): its IP
/// header found after the Ethernet header and up to two VLAN tags the stack left in it.
#[inline(always)]
fn skb_key(ctx: &TcContext) -> Option<HandoffKey> {
    let mut l3 = 12;
    let mut tags = 0;
    loop {
        let ethertype = u16::from_be(ctx.load::<u16>(l3).ok()?);
        if (ethertype == 0x8100 || ethertype == 0x88a8) && tags < 2 {
            l3 += 4;
            tags += 1;
            continue;
        }
        l3 += 2;
        break;
    }
    let mut key = HandoffKey {
        bytes: [0; HANDOFF_LEN],
    };
    // Fixed lengths: the helper copies all of them or fails (and then leaves zeros).
    let skb = ctx.skb.skb.cast::<core::ffi::c_void>();
    let to = key.bytes.as_mut_ptr().cast::<core::ffi::c_void>();
    // SAFETY: the program's socket buffer, and `to` has room for `HANDOFF_LEN` bytes.
    if unsafe { bpf_skb_load_bytes(skb, l3 as u32, to, HANDOFF_LEN as u32) } != 0 {
        key.bytes = [0; HANDOFF_LEN];
        // SAFETY: as above, for fewer bytes.
        if unsafe { bpf_skb_load_bytes(skb, l3 as u32, to, HANDOFF_SHORT_LEN as u32) } != 0 {
            return None;
        }
    }
    Some(key)
}

/// `palisade_action_ingress`: the mark the firewall left in the metadata, set on the socket
/// buffer. Never drops; returns "next program" whatever it finds.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> i32 {
    if !xdp_metadata() {
        // The action, if the firewall left one for this packet, is in the handoff table.
        if let Some(key) = skb_key(ctx)
            // SAFETY: the value is copied out at once.
            && let Some(m) = unsafe { ACTION_HANDOFF.get(&key) }.copied()
        {
            let _ = ACTION_HANDOFF.remove(&key);
            bump(&ACTION_STATS, AS_HANDOFF_TAKEN);
            apply(ctx, &m);
        }
        return TC_ACT_UNSPEC;
    }
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
        apply(ctx, &m);
    }
    TC_ACT_UNSPEC
}

/// Sets the mark, or sends the copy, that the firewall's action `m` asks for.
#[inline(always)]
fn apply(ctx: &TcContext, m: &ActionMeta) {
    if m.magic != ACTION_META_MAGIC {
        return;
    }
    if m.flags & META_MARK != 0 {
        // SAFETY: `mark` is writable from TC programs.
        unsafe { core::ptr::write_volatile(&raw mut (*ctx.skb.skb).mark, m.mark) };
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
