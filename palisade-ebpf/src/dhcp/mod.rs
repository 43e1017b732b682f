//! DHCP snooping on the guarded interfaces (see `docs/design/dhcp.md`): DHCPv4, DHCPv6 and
//! router-advertisement frames are copied to the daemon, which keeps the lease table; a
//! server's message or a router advertisement from a source not on the trusted list is
//! flagged (and dropped under `rogue = "block"`).
//!
//! Ingress runs inside the XDP firewall ([`at_xdp`]), before every other stage, so that a
//! rogue offer is dropped before any socket sees it (DHCP clients read with packet sockets,
//! which the stack serves before TC ingress). Egress is a TC program of its own ([`run`]).
//! Nothing here reads a DHCP option: parsing is the daemon's.
//!
//! Fail-open: packets the parser refuses, internal errors and a full ring buffer pass
//! (counted). Fail-closed: a judged message from an untrusted source under "block".

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    cty::c_void,
    helpers::{bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use palisade_common::{
    dhcp::{
        BY_IP, BY_MAC, DHCP_BLOCK, DHCP_ON, DS_COPIED, DS_CUT, DS_LOST, DS_ROGUE, DS_ROGUE_DROPPED,
        DS_SHORT, DS_TRUSTED, DhcpRecord, KIND_NONE, KIND_RA, REC_CUT, REC_DROPPED, REC_INGRESS,
        REC_ROGUE, RECORD_BYTES, TrustKey, classify, judged, role_of,
    },
    packet::{self, FRAG_NONE, Frame, IPPROTO_UDP, Packet},
    reason, stats,
};

use crate::{
    bytes::TcBytes,
    maps::{CONTROL, DHCP_CONFIG, DHCP_RECORDS, DHCP_STATS, DHCP_TRUSTED, STATS, bump},
};

/// Where a frame's bytes are read from: the XDP buffer or the skb, through the helpers
/// (which check the range themselves), so that the same code serves both hooks.
trait Source {
    /// Copies `len` bytes at `offset` to `to`; 0 on success.
    fn copy(&self, offset: u32, to: *mut u8, len: u32) -> i64;
    /// The frame's whole length.
    fn frame_len(&self) -> u32;
    fn ifindex(&self) -> u32;
}

impl Source for XdpContext {
    #[inline(always)]
    fn copy(&self, offset: u32, to: *mut u8, len: u32) -> i64 {
        // SAFETY: `to` has room for `len` bytes (callers bound it); the helper checks the
        // frame's range.
        unsafe { bpf_xdp_load_bytes(self.ctx, offset, to.cast::<c_void>(), len) }
    }

    #[inline(always)]
    fn frame_len(&self) -> u32 {
        // SAFETY: the program's own context.
        unsafe { bpf_xdp_get_buff_len(self.ctx) as u32 }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }
}

impl Source for TcContext {
    #[inline(always)]
    fn copy(&self, offset: u32, to: *mut u8, len: u32) -> i64 {
        // SAFETY: as for XDP.
        unsafe { bpf_skb_load_bytes(self.skb.skb as *const c_void, offset, to.cast(), len) }
    }

    #[inline(always)]
    fn frame_len(&self) -> u32 {
        self.len()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: a plain read of the program's context.
        unsafe { (*self.skb.skb).ifindex }
    }
}

/// For the XDP firewall: snoops an arriving frame; returns the reason to drop it (a rogue
/// server or router under "block") or 0. Inline (one array read while snooping is off); the
/// snooping is a call of its own, so the firewall's frame stays as it was.
#[inline(always)]
pub fn at_xdp(ctx: &XdpContext, generation: u32, p: &Packet) -> u32 {
    match DHCP_CONFIG.get(generation & 1) {
        Some(cfg) if cfg.flags & DHCP_ON != 0 => snoop_xdp(ctx, generation, cfg.flags, p),
        _ => 0,
    }
}

/// [`at_xdp`] while snooping is on: `flags` is the generation's configuration's, read once
/// by the caller.
#[inline(never)]
fn snoop_xdp(ctx: &XdpContext, generation: u32, flags: u32, p: &Packet) -> u32 {
    snoop(ctx, generation, flags, p, REC_INGRESS)
}

/// The egress hook: snoops a leaving frame; the one exit of the TC program.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let Some(control) = CONTROL.get(0) else {
        bump(&STATS, stats::INTERNAL);
        return TC_ACT_UNSPEC;
    };
    let generation = control.active_gen & 1;
    let Some(cfg) = DHCP_CONFIG.get(generation) else {
        bump(&STATS, stats::INTERNAL);
        return TC_ACT_UNSPEC;
    };
    if cfg.flags & DHCP_ON == 0 {
        return TC_ACT_UNSPEC;
    }
    let flags = cfg.flags;
    let bytes = TcBytes::of(ctx);
    let Ok(Frame::Ip(p)) = packet::parse(&bytes) else {
        return TC_ACT_UNSPEC;
    };
    match snoop(ctx, generation, flags, &p, 0) {
        0 => TC_ACT_UNSPEC,
        reason => crate::verdict::tc_drop(reason),
    }
}

/// Classifies, copies and judges one parsed frame; returns the drop reason or 0.
#[inline(always)]
fn snoop<S: Source>(ctx: &S, generation: u32, flags: u32, p: &Packet, direction: u32) -> u32 {
    if p.frag != FRAG_NONE {
        return 0;
    }
    let mut first = [0u8; 1];
    if p.proto == IPPROTO_UDP {
        // The ports decide whether this is DHCP at all before the payload is read.
        let ports = [p.sport, p.dport];
        if !ports.iter().any(|&x| matches!(x, 67 | 68 | 546 | 547)) {
            return 0;
        }
        if p.l4_len < 9 || ctx.copy(u32::from(p.l4_offset) + 8, first.as_mut_ptr(), 1) != 0 {
            bump(&DHCP_STATS, DS_SHORT);
            return 0;
        }
    }
    let kind = classify(p.proto, p.family, p.sport, p.dport, first[0]);
    if kind == KIND_NONE {
        return 0;
    }
    let mut rec_flags = direction;
    let mut drop_reason = 0;
    if judged(kind) {
        if trusted(ctx, generation, kind, p) {
            bump(&DHCP_STATS, DS_TRUSTED);
        } else {
            bump(&DHCP_STATS, DS_ROGUE);
            rec_flags |= REC_ROGUE;
            if flags & DHCP_BLOCK != 0 {
                bump(&DHCP_STATS, DS_ROGUE_DROPPED);
                rec_flags |= REC_DROPPED;
                drop_reason = if kind == KIND_RA {
                    reason::DHCP_ROGUE_ROUTER
                } else {
                    reason::DHCP_ROGUE_SERVER
                };
            }
        }
    }
    copy_out(ctx, kind, rec_flags);
    drop_reason
}

/// Whether the frame's Ethernet or IP source is trusted for `kind`'s role.
#[inline(always)]
fn trusted<S: Source>(ctx: &S, generation: u32, kind: u8, p: &Packet) -> bool {
    let mut key = TrustKey {
        generation: generation as u8,
        role: role_of(kind),
        by: BY_IP,
        _pad: 0,
        addr: p.src,
    };
    // SAFETY: a lookup in a hash map; the value is not kept.
    if unsafe { DHCP_TRUSTED.get(&key) }.is_some() {
        return true;
    }
    key.by = BY_MAC;
    key.addr = [0; 16];
    if ctx.copy(6, key.addr.as_mut_ptr(), 6) != 0 {
        return false;
    }
    // SAFETY: as above.
    unsafe { DHCP_TRUSTED.get(&key) }.is_some()
}

/// Copies the frame (its first [`RECORD_BYTES`]) to the daemon.
#[inline(always)]
fn copy_out<S: Source>(ctx: &S, kind: u8, mut flags: u32) {
    let wire = ctx.frame_len();
    if wire == 0 {
        return;
    }
    let n = if wire as usize > RECORD_BYTES {
        flags |= REC_CUT;
        bump(&DHCP_STATS, DS_CUT);
        RECORD_BYTES as u32
    } else {
        wire
    };
    let Some(mut entry) = DHCP_RECORDS.reserve::<DhcpRecord>(0) else {
        bump(&DHCP_STATS, DS_LOST);
        return;
    };
    let rec = entry.as_mut_ptr();
    // `(n - 1) % RECORD_BYTES + 1` keeps the size in 1..=RECORD_BYTES in a form the verifier
    // can follow.
    let size = ((n - 1) & (RECORD_BYTES as u32 - 1)) + 1;
    // SAFETY: the reserved record is this program's until submitted or discarded; `size`
    // fits in `data`.
    let rc = unsafe {
        (*rec).flags = flags;
        (*rec).ifindex = ctx.ifindex();
        (*rec).len = size;
        (*rec).wire_len = wire;
        (*rec).kind = kind;
        (*rec)._pad = [0; 7];
        ctx.copy(0, (*rec).data.as_mut_ptr(), size)
    };
    if rc != 0 {
        entry.discard(0);
        bump(&DHCP_STATS, DS_LOST);
        return;
    }
    entry.submit(0);
    bump(&DHCP_STATS, DS_COPIED);
}
