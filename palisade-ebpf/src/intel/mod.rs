//! Threat-intelligence indicators (`[intel]`): the source address of what arrives is looked
//! up in the live generation's indicator maps, a bloom filter in front of an exact table,
//! then, for IPv4, the CIDR tables at the /16 and /24 strides (a trie only past /24), for
//! IPv6 the table at the /64 stride (a trie only past /64 and below /49).
//!
//! The filter answers "surely not" for almost every clean address without touching the
//! table's buckets; "maybe" is confirmed in the exact table (never an LRU: an indicator is
//! never forgotten). CIDRs cannot go through a filter keyed by whole addresses, so they
//! have a trie of their own, walked only when the generation holds CIDRs.
//!
//! With `[intel] egress = true`, `egress` checks the destination of what the host sends
//! (TC egress) the same way.

pub mod egress;

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use palisade_common::{
    event::{FLAG_INTEL_TAGGED, FirewallEvent},
    intel::{
        ACTION_ALERT, ACTION_DROP, ACTION_TAG, AddrWords, HAS_CIDRS, HAS_CIDRS_V4, HAS_CIDRS_V6_64,
        HAS_CIDRS_V6_SHORT, HAS_IPS, IS_ALERTED, IS_BLOOM_FALSE, IS_BLOOM_MAYBE, IS_CHECKED,
        IS_DROPPED, IS_EVENTS_LOST, IS_FEED_HITS, IS_HIT_CIDR, IS_HIT_IP, IS_TAGGED, IntelHit,
        KIND_INTEL, MAX_FEEDS, V6Block, bloom_hash_words, bloom_test, stride_match, v6_filter_slot,
        v6_match,
    },
    packet::Packet,
    reason,
};

use crate::maps::{
    INTEL_BLOOM_0, INTEL_BLOOM_1, INTEL_CIDRS_0, INTEL_CIDRS_1, INTEL_CONTROL, INTEL_IPS_0,
    INTEL_IPS_1, INTEL_SCRATCH, INTEL_STATS, INTEL_TAGGED, INTEL_V4_16, INTEL_V4_24_0,
    INTEL_V4_24_1, INTEL_V6_64_0, INTEL_V6_64_1, INTEL_V6_FILTER_0, INTEL_V6_FILTER_1, bump,
    event_flags, reserve_event,
};

/// The value of a tagged address in `INTEL_TAGGED`: the feed and when it was last seen.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tagged {
    pub hit: IntelHit,
    pub _pad: u32,
    pub last_seen_ns: u64,
}

/// [`FLAG_INTEL_TAGGED`] when `addr` (a map value: the handoff slot, a scratch slot) is in
/// `INTEL_TAGGED`, else 0: how the events of the other engines carry the tag.
#[inline(always)]
pub fn tag_flag(addr: &[u8; 16]) -> u8 {
    // SAFETY: only the presence of the value is used.
    if unsafe { INTEL_TAGGED.get(addr) }.is_some() {
        FLAG_INTEL_TAGGED
    } else {
        0
    }
}

/// The live generation, what it holds, its bloom filter's block mask and its /64 filter's
/// word mask, when it holds indicators.
#[inline(always)]
pub fn live() -> Option<(u32, u32, u32, u32)> {
    let control = INTEL_CONTROL.get(0)?;
    let generation = control.active & 1;
    let enabled = if generation == 0 {
        control.enabled[0]
    } else {
        control.enabled[1]
    };
    if enabled & (HAS_IPS | HAS_CIDRS | HAS_CIDRS_V4 | HAS_CIDRS_V6_64) == 0 {
        return None;
    }
    Some((
        generation,
        enabled,
        control.bloom_mask,
        control.v6_filter_mask,
    ))
}

/// `addr`, an address field of a [`Packet`] (2-aligned: the struct has 16-bit members), read
/// once as words with eight 16-bit loads: every later step hashes and compares the words,
/// where reading the bytes one by one cost a load, a shift and an or each, and spills.
#[inline(always)]
fn words(addr: &[u8; 16]) -> AddrWords {
    let p = addr.as_ptr().cast::<u16>();
    // SAFETY: 8 reads of 2 bytes within the 16; `addr` is 2-aligned (a `Packet` field).
    let h = |i: usize| u64::from(unsafe { p.add(i).read() });
    AddrWords {
        lo: h(0) | h(1) << 16 | h(2) << 32 | h(3) << 48,
        hi: h(4) | h(5) << 16 | h(6) << 32 | h(7) << 48,
    }
}

/// The packet's address fields are 4-aligned when the packet starts 4-aligned: the XDP
/// handoff slot's packet starts its map value, which the kernel aligns to 8.
const _: () = assert!(
    core::mem::offset_of!(Packet, src) % 4 == 0 && core::mem::offset_of!(Packet, dst) % 4 == 0
);
const _: () = assert!(core::mem::offset_of!(crate::dns::inspect::Scratch, packet) % 8 == 0);

/// [`words`] of an address field of the handoff slot's packet, with four 32-bit loads.
#[inline(always)]
fn slot_words(addr: &[u8; 16]) -> AddrWords {
    let p = addr.as_ptr().cast::<u32>();
    // SAFETY: 4 reads of 4 bytes within the 16; `addr` is 4-aligned (asserted above).
    let h = |i: usize| u64::from(unsafe { p.add(i).read() });
    AddrWords {
        lo: h(0) | h(1) << 32,
        hi: h(2) | h(3) << 32,
    }
}

/// Looks `addr` (a [`Packet`] field in a map value or on the stack; `w`, its words) up in
/// generation `generation`, whose contents `enabled` describes; `slot` is the hook's
/// trie-key slot in `INTEL_SCRATCH`.
#[inline(always)]
fn lookup(
    addr: &[u8; 16],
    w: AddrWords,
    dir: u32,
    (generation, enabled, mask, v6_mask): (u32, u32, u32, u32),
    slot: u32,
) -> Option<IntelHit> {
    bump(&INTEL_STATS, dir + IS_CHECKED);
    if enabled & HAS_IPS != 0 {
        let (b, positions) = bloom_hash_words(w, mask);
        let block = if generation == 0 {
            INTEL_BLOOM_0.get(b)
        } else {
            INTEL_BLOOM_1.get(b)
        };
        let maybe = block.is_some_and(|bl| bloom_test(bl, positions));
        if maybe {
            bump(&INTEL_STATS, dir + IS_BLOOM_MAYBE);
            // SAFETY: plain data read from a map value.
            let hit = unsafe {
                if generation == 0 {
                    INTEL_IPS_0.get(addr).copied()
                } else {
                    INTEL_IPS_1.get(addr).copied()
                }
            };
            if let Some(h) = hit {
                bump(&INTEL_STATS, dir + IS_HIT_IP);
                return Some(h);
            }
            bump(&INTEL_STATS, dir + IS_BLOOM_FALSE);
        }
    }
    let hit = if w.is_mapped_v4() {
        if enabled & HAS_CIDRS_V4 == 0 {
            return None;
        }
        stride_match(
            w.v4(),
            |i| {
                INTEL_V4_16
                    .get(generation)
                    .and_then(|t| t.get(i))
                    .copied()
                    .unwrap_or_default()
            },
            |k| {
                // SAFETY: plain data read from a map value.
                let b = unsafe {
                    if generation == 0 {
                        INTEL_V4_24_0.get(&k)
                    } else {
                        INTEL_V4_24_1.get(&k)
                    }
                };
                b.copied().unwrap_or_default()
            },
            || trie(w, generation, slot),
        )
    } else if enabled & HAS_CIDRS_V6_64 != 0 {
        v6_match(
            w.slash64(),
            |k| {
                // The filter first: a /64 it says is absent has no entry (a word that
                // cannot be read lets the lookup through).
                let (w, bits) = v6_filter_slot(k, v6_mask);
                let word = if generation == 0 {
                    INTEL_V6_FILTER_0.get(w)
                } else {
                    INTEL_V6_FILTER_1.get(w)
                };
                if word.is_some_and(|x| *x & bits != bits) {
                    return V6Block::default();
                }
                // SAFETY: plain data read from a map value.
                let b = unsafe {
                    if generation == 0 {
                        INTEL_V6_64_0.get(&k)
                    } else {
                        INTEL_V6_64_1.get(&k)
                    }
                };
                b.copied().unwrap_or_default()
            },
            || trie(w, generation, slot),
            enabled & HAS_CIDRS_V6_SHORT != 0,
        )
    } else if enabled & HAS_CIDRS != 0 {
        trie(w, generation, slot)
    } else {
        return None;
    };
    if hit.action == 0 {
        return None;
    }
    bump(&INTEL_STATS, dir + IS_HIT_CIDR);
    Some(hit)
}

/// The longest CIDR of generation `generation`'s trie covering the address `w` (`action` 0:
/// none); `slot` is the hook's trie-key slot in `INTEL_SCRATCH`.
#[inline(always)]
fn trie(w: AddrWords, generation: u32, slot: u32) -> IntelHit {
    let Some(k) = INTEL_SCRATCH.get_ptr_mut(slot) else {
        return IntelHit::default();
    };
    // SAFETY: per-CPU slot, used by one hook at a time on this CPU (XDP and TC egress
    // have one each: XDP may interrupt the egress hook). The address follows the 32-bit
    // prefix length in the key, so it is 4-aligned: written as four 32-bit words.
    let key = unsafe {
        (*k).prefix_len = 128;
        let a = (*k).data.addr.as_mut_ptr().cast::<u32>();
        a.write(w.lo as u32);
        a.add(1).write((w.lo >> 32) as u32);
        a.add(2).write(w.hi as u32);
        a.add(3).write((w.hi >> 32) as u32);
        &*k
    };
    let h = if generation == 0 {
        INTEL_CIDRS_0.get(key)
    } else {
        INTEL_CIDRS_1.get(key)
    };
    h.copied().unwrap_or_default()
}

/// Checks the source of an arriving packet (`p`: the XDP handoff slot's): [`reason::INTEL_DROP`] when a feed with
/// `action = "drop"` lists it, 0 to go on (an alert or a tag has been reported and the
/// address tagged). The lookup is in line (a call and its return cost about as much as the
/// filter test of a miss); only a match calls out, so the event gets a frame of its own.
#[inline(always)]
pub fn check_ingress(ctx: &XdpContext, p: &Packet, dir: u32) -> u32 {
    let Some(live) = live() else {
        return 0;
    };
    let Some(hit) = lookup(&p.src, slot_words(&p.src), dir, live, 0) else {
        return 0;
    };
    report_ingress(
        ctx,
        p,
        dir,
        u32::from(hit.action) | u32::from(hit.flags) << 8 | u32::from(hit.feed) << 16,
    )
}

/// [`act`] on an arriving packet whose source matched: `hit` is the [`IntelHit`] as a word
/// (action, flags, feed from the low byte up), so that it travels in a register.
#[inline(never)]
fn report_ingress(ctx: &XdpContext, p: &Packet, dir: u32, hit: u32) -> u32 {
    let hit = IntelHit {
        action: hit as u8,
        flags: (hit >> 8) as u8,
        feed: (hit >> 16) as u16,
    };
    let len = (ctx.data_end() - ctx.data()) as u32;
    let ifindex = ctx.ingress_ifindex() as u32;
    act(p, &p.src, hit, dir, ifindex, len)
}

/// What a match does: counters, the tag, the event; the drop reason or 0.
#[inline(always)]
fn act(p: &Packet, addr: &[u8; 16], hit: IntelHit, dir: u32, ifindex: u32, len: u32) -> u32 {
    let feed = u32::from(hit.feed);
    if feed < MAX_FEEDS {
        bump(&INTEL_STATS, IS_FEED_HITS + feed);
    }
    let out = match hit.action {
        ACTION_DROP => {
            bump(&INTEL_STATS, dir + IS_DROPPED);
            reason::INTEL_DROP
        }
        ACTION_TAG => {
            bump(&INTEL_STATS, dir + IS_TAGGED);
            let t = Tagged {
                hit,
                _pad: 0,
                // SAFETY: no preconditions.
                last_seen_ns: unsafe { bpf_ktime_get_ns() },
            };
            // A full table evicts the least recently seen tag; the indicator itself stays.
            let _ = INTEL_TAGGED.insert(addr, &t, 0);
            0
        }
        ACTION_ALERT => {
            bump(&INTEL_STATS, dir + IS_ALERTED);
            0
        }
        _ => 0,
    };
    emit(p, hit, out, ifindex, len, dir);
    out
}

/// Reports a match: a firewall-shaped record of kind [`KIND_INTEL`] whose `rule` is the
/// feed id and `action` the feed's action.
#[inline(always)]
fn emit(p: &Packet, hit: IntelHit, reason_code: u32, ifindex: u32, packet_len: u32, dir: u32) {
    let Some(mut entry) = reserve_event::<FirewallEvent>() else {
        bump(&INTEL_STATS, dir + IS_EVENTS_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: the reserved record, ours until submitted; every field written. Addresses are
    // copied by 16-bit words, as in `verdict::emit` (2-aligned in the packet).
    unsafe {
        (*ev).flags = if hit.action == ACTION_TAG {
            FLAG_INTEL_TAGGED
        } else {
            0
        };
        (*ev).kind = KIND_INTEL;
        (*ev).reason = reason_code;
        (*ev).timestamp_ns = bpf_ktime_get_ns();
        (*ev).rule = u32::from(hit.feed);
        (*ev).ifindex = ifindex;
        // The direction: 0 for what arrives, 1 for what leaves.
        (*ev).generation = dir / palisade_common::intel::IS_PER_DIRECTION;
        (*ev).action = hit.action;
        (*ev).packet_len = packet_len;
        (*ev).family = p.family;
        (*ev).proto = p.proto;
        (*ev).sport = p.sport;
        (*ev).dport = p.dport;
        let (from, to) = (
            p.src.as_ptr().cast::<u16>(),
            (*ev).src.as_mut_ptr().cast::<u16>(),
        );
        let (from6, to6) = (
            p.dst.as_ptr().cast::<u16>(),
            (*ev).dst.as_mut_ptr().cast::<u16>(),
        );
        let mut i = 0;
        while i < 8 {
            to.add(i).write(from.add(i).read());
            to6.add(i).write(from6.add(i).read());
            i += 1;
        }
    }
    entry.submit(event_flags());
}
