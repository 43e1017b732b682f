//! DDoS shields (`[shield]`, see `docs/design/shield.md`), in two places of the XDP pipeline:
//!
//! - [`screen`], in the tracker's stage once the packet is classified: an ACK of no tracked
//!   flow to a port with SYN cookies goes to the cookie stage, which opens its flow when the
//!   cookie is valid; what is still invalid TCP, unsolicited datagrams from reflector ports,
//!   and what goes over a per-source or echo limit ([`sources`]) are marked for the rules
//!   stage to drop first.
//! - [`answer_with_cookie`], when the rules have allowed a SYN: while cookies are engaged
//!   for its port, the SYN-ACK is sent from XDP ([`syncookie`]) and nothing is kept.
//!
//! Fail-open like the firewall: a shield that cannot read its maps lets the packet go on.

pub mod sources;
pub mod syncookie;

use aya_ebpf::helpers::generated::{
    bpf_ktime_get_coarse_ns, bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
};
use palisade_common::{
    conntrack::{STATE_INVALID, STATE_NEW},
    packet::{FAMILY_V4, IPPROTO_TCP, IPPROTO_UDP, Packet, TCP_ACK, TCP_RST, TCP_SYN},
    reason,
    shield::{
        LISTENER_SLOTS, PORT_SLOTS, SH_AMPLIFICATION_DROPPED, SH_ENGAGED, SH_SYN, SH_SYN_TO_STACK,
        SH_TCP_INVALID_DROPPED, SHIELD_AMPLIFICATION, SHIELD_SOURCES, SHIELD_SYN, SHIELD_SYN_FORCE,
        SHIELD_TCP_INVALID, ShieldConfig, port_bit,
    },
};

use crate::{
    atomic,
    bytes::XdpFrame,
    maps::{SHIELD_CONFIG, SHIELD_LISTENERS, SHIELD_PORTS, SHIELD_STATS, bump},
};

const NS_PER_S: u64 = 1_000_000_000;

/// Offsets the verifier can bound (headers start far below this).
const OFFSET_MASK: usize = 0xfff;

/// Judges a packet the tracker has classified (`p.ct_state`), for a policy with shields.
/// True when it is an ACK of no flow to a port with SYN cookies: the caller hands it to the
/// cookie stage ([`syncookie`]), which checks the cookie.
#[inline(never)]
pub fn screen(p: &mut Packet, generation: u32) -> bool {
    let Some(cfg) = SHIELD_CONFIG.get(generation) else {
        return false;
    };
    if cfg.flags & SHIELD_SOURCES != 0 {
        let r = sources::limit(cfg, p);
        if r != 0 {
            p.shield = r as u8;
            return false;
        }
    }
    if p.proto == IPPROTO_TCP && p.ct_state == STATE_INVALID {
        if cfg.flags & SHIELD_SYN != 0
            && p.tcp_flags & (TCP_ACK | TCP_SYN | TCP_RST) == TCP_ACK
            && port_bit(&cfg.syn_ports, p.dport)
        {
            return true;
        }
        condemn_invalid(cfg, p);
    } else if p.proto == IPPROTO_UDP
        && p.ct_state == STATE_NEW
        && cfg.flags & SHIELD_AMPLIFICATION != 0
        && port_bit(&cfg.amp_ports, p.sport)
    {
        // A datagram from a reflector port that answers nothing this host sent (the host's
        // own queries made their flow on the way out, so their answers are established).
        bump(&SHIELD_STATS, SH_AMPLIFICATION_DROPPED);
        p.shield = reason::SHIELD_AMPLIFICATION as u8;
    }
    false
}

/// Marks invalid TCP for the rules stage to drop, when `tcp_invalid = "drop"`.
#[inline(always)]
pub fn condemn_invalid(cfg: &ShieldConfig, p: &mut Packet) {
    // The client's side of a DSR flow is all the tracker sees of it when the backends answer
    // the clients directly (see `lb::is_dsr_vip`): its segments go on to the rules, which
    // judge VIP traffic by address and port.
    if cfg.flags & SHIELD_TCP_INVALID != 0 && !crate::lb::is_dsr_vip(p) {
        bump(&SHIELD_STATS, SH_TCP_INVALID_DROPPED);
        p.shield = reason::SHIELD_TCP_INVALID as u8;
    }
}

/// Whether an ACK's acknowledgement is a SYN cookie the kernel issued for its flow within
/// the last two minutes (`bpf_tcp_raw_check_syncookie_*`: the kernel's own check and secret).
#[inline(always)]
pub fn cookie_valid(frame: &XdpFrame, p: &Packet) -> bool {
    let (l3, l4) = (
        usize::from(p.l3_offset) & OFFSET_MASK,
        usize::from(p.l4_offset) & OFFSET_MASK,
    );
    let Some(th) = frame.ptr::<20>(l4) else {
        return false;
    };
    // SAFETY: each header was checked to lie inside the frame at its full fixed size; the
    // helpers only read them.
    let r = unsafe {
        if p.family == FAMILY_V4 {
            let Some(iph) = frame.ptr::<20>(l3) else {
                return false;
            };
            bpf_tcp_raw_check_syncookie_ipv4(iph.cast(), th.cast())
        } else {
            let Some(iph) = frame.ptr::<40>(l3) else {
                return false;
            };
            bpf_tcp_raw_check_syncookie_ipv6(iph.cast(), th.cast())
        }
    };
    r == 0
}

/// For a SYN the rules allowed: whether it is answered with a cookie from XDP. Counts the
/// port's SYN rate (over all sources and CPUs: a flood from random sources never trips a
/// per-source threshold), engages cookies for `[shield] syn_hold` seconds when it goes over
/// `syn_rate`, and while engaged lets one SYN per listener and `stack_every_ns` go on to the
/// stack, whose own cookie answer keeps the listener taking cookies back.
#[inline(never)]
pub fn answer_with_cookie(generation: u32, p: &Packet) -> bool {
    let Some(cfg) = SHIELD_CONFIG.get(generation) else {
        return false;
    };
    if cfg.flags & SHIELD_SYN == 0 || !port_bit(&cfg.syn_ports, p.dport) {
        return false;
    }
    bump(&SHIELD_STATS, SH_SYN);
    // SAFETY: a helper with no preconditions.
    let t = unsafe { bpf_ktime_get_coarse_ns() };
    let Some(s) = SHIELD_PORTS.get_ptr_mut(u32::from(p.dport) % PORT_SLOTS) else {
        return false;
    };
    // SAFETY: a live map value shared by every CPU. The window's restart may race with
    // another CPU's count (a SYN or two lost at a window's edge); the count is atomic.
    let engaged = unsafe {
        if t.wrapping_sub((*s).window_ns) >= NS_PER_S {
            (*s).window_ns = t;
            (*s).syns = 0;
        }
        atomic::add(&raw mut (*s).syns, 1);
        let n = (*s).syns;
        if cfg.syn_rate != 0 && n > u64::from(cfg.syn_rate) {
            if (*s).engaged_until_ns <= t {
                bump(&SHIELD_STATS, SH_ENGAGED);
                atomic::add(&raw mut (*s).engagements, 1);
            }
            (*s).engaged_until_ns = t + cfg.hold_ns;
        }
        cfg.flags & SHIELD_SYN_FORCE != 0 || t < (*s).engaged_until_ns
    };
    if !engaged {
        return false;
    }
    let [d0, d1, d2, d3] = p.dst_words();
    let h = (d0 ^ d1.rotate_left(7) ^ d2.rotate_left(13) ^ d3.rotate_left(19))
        .wrapping_add(u32::from(p.dport))
        .wrapping_mul(0x9e37_79b9);
    let Some(last) = SHIELD_LISTENERS.get_ptr_mut((h >> 20) % LISTENER_SLOTS) else {
        return true;
    };
    // SAFETY: a live map value; two CPUs racing here both pass one SYN, which is harmless.
    unsafe {
        if *last == 0 || t.wrapping_sub(*last) >= cfg.stack_every_ns {
            *last = t;
            bump(&SHIELD_STATS, SH_SYN_TO_STACK);
            return false;
        }
    }
    true
}
