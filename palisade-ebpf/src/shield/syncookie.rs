//! The SYN-cookie answer: an XDP stage entered by tail call when the rules allowed a SYN
//! that [`super::answer_with_cookie`] said to answer. The SYN becomes its SYN-ACK in place
//! and leaves by the interface it came in on; nothing is kept, so a flood of spoofed SYNs
//! costs no memory. The kernel accepts the connection when the client's ACK brings the
//! cookie back (`docs/design/shield.md`).
//!
//! Fail-open: a SYN that cannot be answered here (a header the helper refuses, a frame that
//! cannot be resized) goes on to the stack with its flow committed, as if cookies were off.

use aya_ebpf::{
    helpers::generated::{
        bpf_ktime_get_ns, bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6,
        bpf_xdp_adjust_tail, bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use palisade_common::{
    conntrack::{STATE_NEW, STATE_OVER_LIMIT, Segment},
    packet::{Bytes, FAMILY_V4, IPPROTO_TCP, Packet, TCP_SYN},
    shield::{
        SH_COOKIE_INVALID, SH_COOKIE_SENT, SH_COOKIE_UNANSWERED, SH_COOKIE_VALID,
        SYNACK_OPTIONS_MAX, ShieldConfig, SynOptions, TCP_MAX_HEADER, cookie_timestamp,
        linux_syn_options, read_syn_options, synack_options, synack_window,
    },
    stats,
};

use crate::{
    bytes::XdpFrame,
    ct,
    maps::{
        CONTROL, DNS_SCRATCH, SHIELD_CONFIG, SHIELD_SCRATCH, SHIELD_STATS, SLOT_XDP, STATS,
        TAIL_RULES, XDP_TAILS, bump,
    },
    verdict,
};

/// Bytes of the answer from its IP header on: an IPv6 header and a TCP header with every
/// option the answer may carry.
const OUT_MAX: usize = 40 + 20 + SYNACK_OPTIONS_MAX;

/// Where the answer is put together (one per CPU): the helpers take the SYN's headers from
/// here, where the verifier knows their size whatever the TCP header's length.
#[repr(C)]
pub struct Scratch {
    /// The SYN's fixed IP header (20 bytes for IPv4, 40 for IPv6).
    ip: [u8; 40],
    /// The SYN's TCP header with its options.
    th: [u8; TCP_MAX_HEADER],
    /// The answer's IP and TCP headers.
    out: [u8; OUT_MAX],
    /// The answer's options, before they are placed.
    opts: [u8; SYNACK_OPTIONS_MAX],
    /// What the SYN offered.
    syn: SynOptions,
    /// The SYN's TCP header length, read back from here (see [`answer`]).
    th_len: u32,
    /// The answer's options length, read back from here (see [`answer`]).
    opt_len: u32,
    /// The option walk's position state (see `read_syn_options`).
    skip: u8,
    /// 1 once [`answer`] resized the frame and until it has written the answer.
    resized: u32,
}

/// Offsets the verifier can bound (headers start far below this).
const OFFSET_MASK: usize = 0xfff;

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(control) = CONTROL.get(0) else {
        return verdict::internal_error();
    };
    let generation = control.active_gen & 1;
    let Some(cfg) = SHIELD_CONFIG.get(generation) else {
        return verdict::internal_error();
    };
    let Some(s) = DNS_SCRATCH.get_ptr_mut(SLOT_XDP) else {
        return verdict::internal_error();
    };
    let Some(scratch) = SHIELD_SCRATCH.get_ptr_mut(0) else {
        return verdict::internal_error();
    };
    // SAFETY: per-CPU slots: the packet handed over by the earlier stages of this packet,
    // and this stage's own scratch.
    let (p, scratch) = unsafe { (&mut (*s).packet, &mut *scratch) };
    if p.tcp_flags & TCP_SYN == 0 {
        // An ACK of no flow, from the tracker's stage: its cookie decides, then the rules.
        check_ack(ctx, cfg, p, scratch);
        // SAFETY: a tail call with this program's own context.
        unsafe { XDP_TAILS.tail_call(ctx, TAIL_RULES) };
        // Only reached when the rules stage is missing: fail open.
        return verdict::internal_error();
    }
    if answer(ctx, cfg, p, scratch) {
        bump(&SHIELD_STATS, SH_COOKIE_SENT);
        return verdict::tx();
    }
    if scratch.resized != 0 {
        // The frame was resized but not rewritten: it is neither the SYN nor its answer.
        bump(&STATS, stats::INTERNAL);
        return verdict::drop_counted();
    }
    // Not answerable here: the stack answers it, and the tracker follows the flow.
    bump(&SHIELD_STATS, SH_COOKIE_UNANSWERED);
    ct::commit();
    verdict::pass()
}

/// An ACK of no tracked flow to a port with SYN cookies: with a valid cookie its flow is
/// prepared, both directions as the handshake made them (the client's window scale comes
/// back in the echoed timestamp), and it goes to the rules as a new flow's first packet;
/// otherwise it stays invalid (dropped first by the rules with `tcp_invalid = "drop"`).
#[inline(never)]
fn check_ack(ctx: &XdpContext, cfg: &ShieldConfig, p: &mut Packet, s: &mut Scratch) {
    let frame = XdpFrame::of(ctx);
    if !super::cookie_valid(&frame, p) {
        bump(&SHIELD_STATS, SH_COOKIE_INVALID);
        super::condemn_invalid(cfg, p);
        return;
    }
    // The segment from the copy of its header (the tracker's reader would walk the options
    // again, for a window scale only a SYN has).
    let Some(th_len) = copy_header(&frame, p, s) else {
        super::condemn_invalid(cfg, p);
        return;
    };
    let word = |at: usize| {
        u32::from_be_bytes([
            s.th[at % TCP_MAX_HEADER],
            s.th[(at + 1) % TCP_MAX_HEADER],
            s.th[(at + 2) % TCP_MAX_HEADER],
            s.th[(at + 3) % TCP_MAX_HEADER],
        ])
    };
    let seg = Segment {
        flags: s.th[13],
        seq: word(4),
        ack: word(8),
        window: u16::from_be_bytes([s.th[14], s.th[15]]),
        payload: u32::from(p.l4_len).saturating_sub(th_len as u32),
        wscale: None,
    };
    read_syn_options(&s.th, TCP_MAX_HEADER, &mut s.syn, &mut s.skip);
    let client_wscale = s.syn.echoed_wscale();
    let mss = if p.family == FAMILY_V4 {
        cfg.mss_v4
    } else {
        cfg.mss_v6
    };
    if ct::open_from_cookie(&seg, p, client_wscale, cfg.wscale, synack_window(mss)) {
        bump(&SHIELD_STATS, SH_COOKIE_VALID);
        // The flow's first validated packet: the rules decide it as a new one, and the
        // per-source limits of `[conntrack]` count it.
        p.ct_state = STATE_NEW;
        if !ct::admit(p) {
            p.ct_state |= STATE_OVER_LIMIT;
        }
    } else {
        super::condemn_invalid(cfg, p);
    }
}

/// Copies the segment's TCP header, with its options, into the scratch (zeroed past it, so
/// the option walk finds end-of-list bytes there and needs no bound of its own, which would
/// multiply the verifier's states). Returns the header's length, 20 to 60.
#[inline(always)]
fn copy_header(frame: &XdpFrame, p: &Packet, s: &mut Scratch) -> Option<usize> {
    let l4 = usize::from(p.l4_offset) & OFFSET_MASK;
    let fixed = frame.load::<20>(l4)?;
    let th_len = usize::from(fixed[12] >> 4) * 4;
    if th_len < 20 {
        return None;
    }
    zero_words(s.th.as_mut_ptr(), TCP_MAX_HEADER / 4);
    let mut w = 0;
    while w < TCP_MAX_HEADER / 4 {
        if w * 4 >= th_len {
            break;
        }
        let word = frame.load::<4>(l4 + w * 4)?;
        if let Some(d) = s.th.get_mut(w * 4..w * 4 + 4) {
            d.copy_from_slice(&word);
        }
        w += 1;
    }
    // Read back from memory: the verifier then knows only its bounds, not which of the
    // eleven header lengths this path took, so what follows is verified once rather than
    // for each of them. Masked where it is read, so the bound is on the very register the
    // helpers get.
    s.th_len = th_len as u32;
    // SAFETY: a field of the scratch, just written.
    let th_len = (unsafe { core::ptr::read_volatile(&raw const s.th_len) } & 0x3f) as usize;
    if (20..=TCP_MAX_HEADER).contains(&th_len) {
        Some(th_len)
    } else {
        None
    }
}

/// Turns the SYN into its cookie SYN-ACK. False when it cannot; the frame is then untouched
/// unless `resized` says otherwise.
#[inline(never)]
fn answer(ctx: &XdpContext, cfg: &ShieldConfig, p: &Packet, s: &mut Scratch) -> bool {
    s.resized = 0;
    let frame = XdpFrame::of(ctx);
    let v4 = p.family == FAMILY_V4;
    let l3 = usize::from(p.l3_offset) & OFFSET_MASK;
    // The SYN's TCP header, with its options, into the scratch.
    let Some(th_len) = copy_header(&frame, p, s) else {
        return false;
    };
    // The SYN's fixed IP header, and the cookie.
    // SAFETY: the helpers read the headers from the scratch (40 and 60 bytes, more than they
    // read); `th_len` is 20 to 60, the TCP header's own length, as they require.
    let cookie = unsafe {
        if v4 {
            let Some(ip) = frame.load::<20>(l3) else {
                return false;
            };
            s.ip[..20].copy_from_slice(&ip);
            bpf_tcp_raw_gen_syncookie_ipv4(
                s.ip.as_mut_ptr().cast(),
                s.th.as_mut_ptr().cast(),
                th_len as u32,
            )
        } else {
            let Some(ip) = frame.load::<40>(l3) else {
                return false;
            };
            s.ip = ip;
            bpf_tcp_raw_gen_syncookie_ipv6(
                s.ip.as_mut_ptr().cast(),
                s.th.as_mut_ptr().cast(),
                th_len as u32,
            )
        }
    };
    if cookie < 0 {
        return false;
    }
    // Linux's layout is read at once; any other is walked.
    match linux_syn_options(&s.th, th_len) {
        Some(o) => s.syn = o,
        None => read_syn_options(&s.th, TCP_MAX_HEADER, &mut s.syn, &mut s.skip),
    }
    let o = s.syn;
    // SAFETY: a helper with no preconditions. The TCP clock is the monotonic clock in
    // milliseconds (with `tcp_timestamps = 2`, no offset per connection).
    let now_ms = (unsafe { bpf_ktime_get_ns() } / 1_000_000) as u32;
    let tsval = cookie_timestamp(now_ms, &o);
    let mss = if v4 { cfg.mss_v4 } else { cfg.mss_v6 };
    zero_words(s.opts.as_mut_ptr(), SYNACK_OPTIONS_MAX / 4);
    s.opt_len = synack_options(&o, mss, cfg.wscale, tsval, &mut s.opts) as u32;
    // Read back, as the header length is: the paths of the option combinations (4, 16 or
    // 20 bytes) then join here instead of each being verified through the rest.
    // SAFETY: a field of the scratch, just written.
    let opt_len = (unsafe { core::ptr::read_volatile(&raw const s.opt_len) } & 0x1c) as usize;
    if opt_len > SYNACK_OPTIONS_MAX {
        return false;
    }
    let tcp_len = 20 + opt_len;
    let ip_len = if v4 { 20 } else { 40 };
    // The IP header: addresses swapped, from the SYN's.
    zero_words(s.out.as_mut_ptr(), OUT_MAX / 4);
    let seq = s.th[4..8].try_into().map_or(0, u32::from_be_bytes);
    // Checksums are summed by 32-bit words in the machine's byte order (RFC 1071: the sum
    // in one byte order is the byte swap of the sum in the other), and stored as they are.
    let mut sum = if v4 {
        let total = ((ip_len + tcp_len) as u16).to_be_bytes();
        let h = &mut s.out[..20];
        h[0] = 0x45;
        h[2] = total[0];
        h[3] = total[1];
        h[6] = 0x40; // don't fragment
        h[8] = 64;
        h[9] = IPPROTO_TCP;
        h[12..16].copy_from_slice(&s.ip[16..20]);
        h[16..20].copy_from_slice(&s.ip[12..16]);
        // SAFETY: 20 bytes at the start of `out`, a 4-aligned field (see `Scratch`).
        let c = csum_fold(unsafe { sum_words(h.as_ptr(), 5) }).to_ne_bytes();
        h[10] = c[0];
        h[11] = c[1];
        // SAFETY: the SYN's addresses, bytes 12 to 20 of the 4-aligned `ip`.
        unsafe { sum_words(s.ip.as_ptr().add(12), 2) }
    } else {
        let payload = (tcp_len as u16).to_be_bytes();
        let h = &mut s.out[..40];
        h[0] = 0x60;
        h[4] = payload[0];
        h[5] = payload[1];
        h[6] = IPPROTO_TCP;
        h[7] = 64;
        h[8..24].copy_from_slice(&s.ip[24..40]);
        h[24..40].copy_from_slice(&s.ip[8..24]);
        // SAFETY: the SYN's addresses, bytes 8 to 40 of the 4-aligned `ip`.
        unsafe { sum_words(s.ip.as_ptr().add(8), 8) }
    };
    sum += u64::from(u16::from(IPPROTO_TCP).to_be()) + u64::from((tcp_len as u16).to_be());
    // The TCP header: ports swapped, the cookie as our sequence number, the SYN acknowledged.
    {
        let (sport, dport) = ([s.th[0], s.th[1]], [s.th[2], s.th[3]]);
        let Some(t) = s.out.get_mut(ip_len..ip_len + 20 + SYNACK_OPTIONS_MAX) else {
            return false;
        };
        t[0] = dport[0];
        t[1] = dport[1];
        t[2] = sport[0];
        t[3] = sport[1];
        t[4..8].copy_from_slice(&(cookie as u32).to_be_bytes());
        t[8..12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
        t[12] = ((tcp_len / 4) as u8) << 4;
        t[13] = 0x12; // SYN, ACK
        let window = synack_window(mss);
        t[14..16].copy_from_slice(&window.to_be_bytes());
        t[20..].copy_from_slice(&s.opts);
        // Unwritten option bytes are zero and add nothing to the sum.
        // SAFETY: the 40-byte TCP slot of `out`, at 20 or 40: 4-aligned.
        let c = csum_fold(sum + unsafe { sum_words(t.as_ptr(), 10) }).to_ne_bytes();
        t[16] = c[0];
        t[17] = c[1];
    }
    // Resize the frame to the answer's length, then write it.
    let frame_len = frame.len();
    let want = l3 + ip_len + tcp_len;
    // SAFETY: the program's own context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - frame_len as i32) } != 0 {
        return false;
    }
    s.resized = 1;
    let frame = XdpFrame::of(ctx);
    let Some(eth) = frame.load::<12>(0) else {
        return false;
    };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&eth[6..]);
    swapped[6..].copy_from_slice(&eth[..6]);
    if !frame.store(0, &swapped) {
        return false;
    }
    let len = (ip_len + tcp_len) as u32;
    if len as usize > OUT_MAX {
        return false;
    }
    // SAFETY: `len` bytes of the scratch (bounded above) are written at `l3`, which the
    // helper checks against the frame.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, l3 as u32, s.out.as_mut_ptr().cast(), len) } != 0 {
        return false;
    }
    s.resized = 0;
    true
}

/// Zeroes `words` 32-bit words at `p` (4-aligned) with word stores: a plain assignment of
/// zeros becomes a byte-by-byte memset loop, which the verifier walks on every path.
#[inline(always)]
fn zero_words(p: *mut u8, words: usize) {
    let p = p.cast::<u32>();
    let mut i = 0;
    while i < words {
        // SAFETY: the caller passes a field of the scratch at least `words * 4` bytes long,
        // at a 4-aligned offset of the map value.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

/// The sum of `words` 32-bit words at `p`, in the machine's byte order, unfolded.
///
/// # Safety
/// `p` is 4-aligned with `words * 4` readable bytes.
#[inline(always)]
unsafe fn sum_words(p: *const u8, words: usize) -> u64 {
    let p = p.cast::<u32>();
    let mut sum = 0u64;
    let mut i = 0;
    while i < words {
        // SAFETY: as the caller promises.
        sum += u64::from(unsafe { p.add(i).read() });
        i += 1;
    }
    sum
}

/// The checksum of a sum of [`sum_words`]: folded to 16 bits with the carries, complemented.
#[inline(always)]
fn csum_fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

// The checksums read `ip` and `out` by aligned 32-bit words.
const _: () = assert!(
    core::mem::offset_of!(Scratch, ip) % 4 == 0 && core::mem::offset_of!(Scratch, out) % 4 == 0
);
