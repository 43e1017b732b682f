//! The DNS response cache (`[dns.cache]`, see `palisade_common::dns::cache`).
//!
//! Fill (TC egress, [`fill`]): the configured resolver's answers leaving this host are
//! matched with a query seen at XDP ingress (a pending entry, removed when matched) and,
//! when they qualify, stored. Never drops: fail-open for everything.
//!
//! Serve (XDP ingress, [`lookup`]): a query the policy passed whose key is cached and fresh
//! is answered in place by the answer rewrite (`answer::rewrite` with [`ACTION_CACHE`]);
//! otherwise it is recorded as pending and goes on to the resolver.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_csum_diff, bpf_loop, bpf_skb_load_bytes, bpf_xdp_store_bytes},
    },
    programs::{TcContext, XdpContext},
};
use palisade_common::{
    dns::{
        cache::{
            CSTAT_DECLINED, CSTAT_HITS, CSTAT_INSERTED_NEW, CSTAT_INSERTS, CSTAT_MISSES,
            CSTAT_REJECTED, CSTAT_REMOVED, CacheConfig, CacheKey, KEY_DO, KEY_EDNS, MAX_MESSAGE,
            MAX_RECORDS, MAX_SCAN_STEPS, MAX_SECTION, PENDING_MAX_AGE_NS, PendingKey, PendingValue,
            Reject, SCAN_DONE, Scan, aged_ttl, check_answer_header, clamp_ttl, fresh, record_count,
        },
        wire::{HEADER_LEN, MAX_NAME_WIRE, fold16},
    },
    packet::{self, FRAG_NONE, Frame, IPPROTO_UDP, MAX_L4_OFFSET},
};

use crate::{
    bytes::TcBytes,
    maps::{
        CONTROL, DNS_CACHE, DNS_CACHE_CFG, DNS_CACHE_PENDING, DNS_CACHE_SCRATCH, DNS_CACHE_STATS,
        DNS_GLOBAL, DNS_SCRATCH, SLOT_XDP, bump,
    },
};

/// `answer::rewrite`'s action for an answer from the cache (an internal value, never in a
/// policy).
pub const ACTION_CACHE: u8 = 0xff;

/// Scratch slot of the XDP lookup.
const SLOT_SERVE: u32 = 0;
/// Scratch slot of the TC fill.
const SLOT_FILL: u32 = 1;
/// Scratch slots.
pub const CACHE_SLOTS: u32 = 2;

/// Per-CPU working space.
#[repr(C)]
pub struct Scratch {
    /// Fill: the answer as it left; serve: the section as served, then zeros.
    pub msg: [u8; MAX_MESSAGE],
    pub entry: palisade_common::dns::cache::CacheEntry,
    pub scan: Scan,
    pub key: CacheKey,
    pub pending: PendingKey,
    pub waiting: PendingValue,
    /// Serve: the cached header bytes 2..12 and the section's length.
    pub header: [u8; 10],
    pub out_len: u16,
}

#[inline(always)]
fn count(counter: u32) {
    bump(&DNS_CACHE_STATS, counter);
}

#[inline(always)]
fn reject(r: Reject) {
    count(CSTAT_REJECTED + r as u32);
}

#[inline(always)]
fn same_addr(family: u8, a: &[u8; 16], cfg: &CacheConfig) -> bool {
    family == cfg.family && *a == cfg.resolver
}

// ---------------------------------------------------------------------------------------
// Serve (XDP ingress)

/// For a UDP query the policy passed (its parse in the inspector's scratch): true when the
/// cache holds a fresh answer, now ready in the cache scratch for `answer::rewrite`; false
/// when the query is to go on to the resolver (then it is recorded as pending). Not inlined:
/// its frame stays off the hook's.
#[inline(never)]
pub fn lookup(generation: u32, wire_len: u16, in_message: u16, qtype: u16) -> bool {
    let Some(cfg) = DNS_CACHE_CFG.get(generation & 1) else {
        return false;
    };
    if cfg.enabled == 0 {
        return false;
    }
    let (Some(s), Some(c)) = (
        DNS_SCRATCH.get_ptr(SLOT_XDP),
        DNS_CACHE_SCRATCH.get_ptr_mut(SLOT_SERVE),
    ) else {
        return false;
    };
    // SAFETY: this hook's per-CPU scratch slots.
    let (s, c) = unsafe { (&*s, &mut *c) };
    let p = &s.packet;
    // Only queries to the resolver, whose question is not compressed (its answers'
    // pointers are served after a question of the same layout).
    if p.dport != cfg.port
        || !same_addr(p.family, &p.dst, cfg)
        || wire_len == 0
        || in_message != wire_len
        || usize::from(wire_len) > MAX_NAME_WIRE
    {
        return false;
    }
    // Hidden from the compiler, which would drop the masks below as it knows `q` is small;
    // the verifier does not, and needs them.
    let q = core::hint::black_box(HEADER_LEN + usize::from(wire_len));
    let m = &s.msg;
    let qclass = u16::from_be_bytes([m[(q + 2) & 511], m[(q + 3) & 511]]);
    // The header checks let at most one additional record through: the OPT record, right
    // after the question. Its flags' high byte holds DO.
    let mut flags = 0;
    if m[11] != 0 {
        flags = KEY_EDNS;
        if m[(q + 4 + 7) & 511] & 0x80 != 0 {
            flags |= KEY_DO;
        }
    }
    let (a, b) = super::inspect::name_hash(SLOT_XDP);
    c.key = CacheKey {
        a,
        b,
        wire_len,
        qtype,
        qclass,
        flags,
        _pad: 0,
    };
    // SAFETY: a helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: read at once; the map value stays valid under RCU for the program's run.
    if let Some(e) = DNS_CACHE.get_ptr(&c.key) {
        // SAFETY: as above.
        let e = unsafe { &*e };
        let age = now.wrapping_sub(e.stored_ns) / 1_000_000_000;
        let age = if age > u64::from(u32::MAX) {
            u32::MAX
        } else {
            age as u32
        };
        if fresh(e.lifetime, age) {
            serve_copy(e, age, c);
            return true;
        }
        let _ = DNS_CACHE.remove(&c.key);
        count(CSTAT_REMOVED);
    }
    count(CSTAT_MISSES);
    let mut id = [0u8; 2];
    id.copy_from_slice(&m[..2]);
    c.pending = PendingKey {
        client: p.src,
        port: p.sport,
        id: u16::from_be_bytes(id),
        family: p.family,
        _pad: [0; 3],
    };
    c.waiting = PendingValue {
        key: c.key,
        seen_ns: now,
    };
    let _ = DNS_CACHE_PENDING.insert(&c.pending, &c.waiting, 0);
    false
}

/// Copies the entry's section into the scratch with its TTLs aged by `age` seconds, and
/// zeros the bytes after it up to the next word (the checksum reads whole words).
#[inline(always)]
fn serve_copy(e: &palisade_common::dns::cache::CacheEntry, age: u32, c: &mut Scratch) {
    let from = e.section.as_ptr().cast::<u64>();
    let to = c.msg.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < MAX_SECTION / 8 {
        // SAFETY: word `i` of two 8-aligned buffers of at least MAX_SECTION bytes. Volatile,
        // so the words are not merged into a `memcpy` call.
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i))) };
        i += 1;
    }
    let records = usize::from(e.records);
    let mut r = 0;
    while r < MAX_RECORDS {
        if r >= records {
            break;
        }
        // Masked for the compiler, which otherwise keeps a bounds check (a panic call the
        // verifier refuses) although `r < MAX_RECORDS`.
        let j = r & (MAX_RECORDS - 1);
        let at = usize::from(e.ttl_at[j]);
        let ttl = aged_ttl(e.ttls[j], age).to_be_bytes();
        let mut k = 0;
        while k < 4 {
            c.msg[(at + k) & (MAX_MESSAGE - 1)] = ttl[k];
            k += 1;
        }
        r += 1;
    }
    let len = usize::from(e.section_len);
    let mut k = 0;
    while k < 4 {
        c.msg[(len + k) & (MAX_MESSAGE - 1)] = 0;
        k += 1;
    }
    c.header = e.header;
    c.out_len = e.section_len;
}

/// The cached header bytes and the section's length, for the rewrite.
#[inline(always)]
pub fn served() -> Option<([u8; 10], usize)> {
    let c = DNS_CACHE_SCRATCH.get_ptr(SLOT_SERVE)?;
    // SAFETY: per-CPU scratch, filled by `lookup` in this run.
    let c = unsafe { &*c };
    Some((c.header, usize::from(c.out_len)))
}

/// What [`append`] returns when the section could not be written.
pub const NOT_WRITTEN: u64 = u64::MAX;

/// Writes the served section at `at` of the frame and returns its share of the UDP
/// checksum (`odd`: it starts at an odd offset of the message), or [`NOT_WRITTEN`].
#[inline(never)]
pub fn append(ctx: &XdpContext, at: usize, odd: bool) -> u64 {
    let Some(c) = DNS_CACHE_SCRATCH.get_ptr_mut(SLOT_SERVE) else {
        return NOT_WRITTEN;
    };
    // SAFETY: per-CPU scratch, filled by `lookup` in this run.
    let c = unsafe { &mut *c };
    let len = usize::from(c.out_len);
    if len == 0 || len > MAX_SECTION || at > 4096 {
        return NOT_WRITTEN;
    }
    // `(n - 1) % 512 + 1` keeps the lengths in 1..=512 in a form the verifier follows.
    let n = ((core::hint::black_box(len) - 1) & (MAX_MESSAGE - 1)) + 1;
    // SAFETY: the source is the scratch buffer of MAX_MESSAGE bytes; the helper checks the
    // frame's range itself.
    let r = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx.cast(),
            at as u32,
            c.msg.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if r != 0 {
        return NOT_WRITTEN;
    }
    // Whole words: the zeros after the section add nothing.
    let words = (len + 3) & 0x1fc;
    // SAFETY: `words` bytes (at most 500) of the scratch buffer of MAX_MESSAGE bytes.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            c.msg.as_mut_ptr().cast(),
            words as u32,
            0,
        )
    };
    if sum < 0 {
        return NOT_WRITTEN;
    }
    // The helper sums 16-bit words as they lie in memory (little-endian here): swapped, the
    // sum is the one of big-endian words at an even offset; at an odd offset, it already is.
    let s = fold16(sum as u64);
    u64::from(if odd { s } else { s.swap_bytes() })
}

/// Counts an answer served from the cache, or one that was found but could not be served
/// (a group address, an exhausted answer budget, a frame that could not be rewritten).
#[inline(always)]
pub fn served_count(ok: bool) {
    count(if ok { CSTAT_HITS } else { CSTAT_DECLINED });
}

// ---------------------------------------------------------------------------------------
// Fill (TC egress)

/// The hook: never drops.
#[inline(always)]
pub fn fill(ctx: &TcContext) -> i32 {
    if let Err(r) = try_fill(ctx) {
        if let Some(r) = r {
            reject(r);
        }
    }
    TC_ACT_UNSPEC
}

/// `Err(Some(r))`: an answer refused for `r`; `Err(None)`: not an answer the cache looks
/// at (or an internal failure).
#[inline(always)]
fn try_fill(ctx: &TcContext) -> Result<(), Option<Reject>> {
    let control = CONTROL.get(0).ok_or(None)?;
    let generation = control.active_gen & 1;
    let cfg = DNS_CACHE_CFG.get(generation).ok_or(None)?;
    if cfg.enabled == 0 {
        return Err(None);
    }
    let p = match packet::parse(&TcBytes::of(ctx)) {
        Ok(Frame::Ip(p)) => p,
        Ok(Frame::NotIp) | Err(_) => return Err(None),
    };
    if p.proto != IPPROTO_UDP || p.frag != FRAG_NONE {
        return Err(None);
    }
    if p.sport != cfg.port || !same_addr(p.family, &p.src, cfg) {
        // Another DNS server's answer: counted, never cached.
        let global = DNS_GLOBAL.get(generation).ok_or(None)?;
        return Err(global.is_dns_port(p.sport).then_some(Reject::Source));
    }
    let c = DNS_CACHE_SCRATCH.get_ptr_mut(SLOT_FILL).ok_or(None)?;
    // SAFETY: this hook's per-CPU scratch slot.
    let c = unsafe { &mut *c };
    let l4 = usize::from(p.l4_offset);
    if l4 > MAX_L4_OFFSET {
        return Err(None);
    }
    let b = TcBytes::of(ctx);
    let udp: [u8; 8] = packet::Bytes::load(&b, l4).ok_or(None)?;
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let dns = l4 + 8;
    let h: [u8; HEADER_LEN] = packet::Bytes::load(&b, dns).ok_or(Some(Reject::Malformed))?;
    c.pending = PendingKey {
        client: p.dst,
        port: p.dport,
        id: u16::from_be_bytes([h[0], h[1]]),
        family: p.family,
        _pad: [0; 3],
    };
    // SAFETY: copied out at once.
    let waiting = unsafe { DNS_CACHE_PENDING.get(&c.pending) }
        .copied()
        .ok_or(Some(Reject::Unsolicited))?;
    let _ = DNS_CACHE_PENDING.remove(&c.pending);
    // SAFETY: a helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(waiting.seen_ns) > PENDING_MAX_AGE_NS {
        return Err(Some(Reject::Unsolicited));
    }
    c.key = waiting.key;
    check_answer_header(&h).map_err(Some)?;
    let records = record_count(&h).map_err(Some)?;
    if udp_len < 8 + HEADER_LEN || dns + (udp_len - 8) > ctx.len() as usize {
        return Err(Some(Reject::Malformed));
    }
    let msg_len = udp_len - 8;
    if msg_len > MAX_MESSAGE {
        return Err(Some(Reject::TooLarge));
    }
    let qend = HEADER_LEN + usize::from(c.key.wire_len) + 4;
    if qend > msg_len || c.key.wire_len == 0 {
        return Err(Some(Reject::Malformed));
    }
    // `(n - 1) % 512 + 1`, hidden from the compiler (which would drop it): 1..=512 where
    // the verifier sees it.
    let n = ((core::hint::black_box(msg_len) - 1) & (MAX_MESSAGE - 1)) + 1;
    // SAFETY: into the scratch buffer of MAX_MESSAGE bytes, `n` in 1..=512; the helper
    // checks the packet's range.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            dns as u32,
            c.msg.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if r != 0 {
        return Err(None);
    }
    // The question is the query's: uncompressed (the root byte where the query's ended),
    // with its type and class. The resolver echoes the name itself.
    let m = &c.msg;
    // Hidden from the compiler, as in `lookup`.
    let qend = core::hint::black_box(qend);
    let qtype = u16::from_be_bytes([m[(qend - 4) & 511], m[(qend - 3) & 511]]);
    let qclass = u16::from_be_bytes([m[(qend - 2) & 511], m[(qend - 1) & 511]]);
    if m[(qend - 5) & 511] != 0 || qtype != c.key.qtype || qclass != c.key.qclass {
        return Err(Some(Reject::Malformed));
    }
    c.scan = Scan::new(qend as u16, msg_len as u16, records);
    let slot = SLOT_FILL;
    // SAFETY: callback signature as bpf_loop expects; it finds its state in the scratch.
    unsafe {
        bpf_loop(
            MAX_SCAN_STEPS as u32,
            scan_step as *mut c_void,
            core::ptr::from_ref(&slot).cast_mut().cast(),
            0,
        )
    };
    if c.scan.state != SCAN_DONE {
        return Err(Some(c.scan.outcome().err().unwrap_or(Reject::Malformed)));
    }
    let lifetime = clamp_ttl(c.scan.min_ttl, cfg.min_ttl, cfg.max_ttl);
    if c.scan.records == 0 || lifetime == 0 {
        return Err(Some(Reject::ZeroTtl));
    }
    let section_len = msg_len - qend;
    if section_len == 0 || section_len > MAX_SECTION {
        return Err(Some(Reject::TooLarge));
    }
    c.entry.stored_ns = now;
    c.entry.lifetime = lifetime;
    c.entry.section_len = section_len as u16;
    let mut k = 0;
    while k < 10 {
        c.entry.header[k] = h[2 + k];
        k += 1;
    }
    store(ctx, c, dns + qend, cfg)
}

extern "C" fn scan_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the loop passes a pointer to the slot number on the caller's stack.
    let slot = unsafe { *ctx.cast::<u32>() };
    let Some(c) = DNS_CACHE_SCRATCH.get_ptr_mut(slot) else {
        return 1;
    };
    // SAFETY: per-CPU scratch.
    let c = unsafe { &mut *c };
    i64::from(!c.scan.step(&c.msg))
}

/// Completes the entry in the scratch (its time, lifetime, length and header are set) with
/// the section at `section_at` of the packet and its TTLs, and stores it. Not inlined: its
/// frame stays off the hook's.
#[inline(never)]
fn store(
    ctx: &TcContext,
    c: &mut Scratch,
    section_at: usize,
    cfg: &CacheConfig,
) -> Result<(), Option<Reject>> {
    let section_len = usize::from(c.entry.section_len);
    if section_len == 0 {
        return Err(Some(Reject::TooLarge));
    }
    let n = ((core::hint::black_box(section_len) - 1) & (MAX_MESSAGE - 1)) + 1;
    if n > MAX_SECTION {
        return Err(Some(Reject::TooLarge));
    }
    // SAFETY: into the entry's section of MAX_SECTION bytes, `n` in 1..=MAX_SECTION.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            section_at as u32,
            c.entry.section.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if r != 0 {
        return Err(None);
    }
    let start = usize::from(c.scan.end) - section_len;
    let records = usize::from(c.scan.records);
    let mut i = 0;
    while i < MAX_RECORDS {
        if i >= records {
            break;
        }
        // Masked, as in `serve_copy`.
        let j = i & (MAX_RECORDS - 1);
        let at = usize::from(c.scan.ttl_at[j]);
        let m = &c.msg;
        let ttl = u32::from_be_bytes([
            m[at & 511],
            m[(at + 1) & 511],
            m[(at + 2) & 511],
            m[(at + 3) & 511],
        ]);
        c.entry.ttl_at[j] = at.wrapping_sub(start) as u16;
        c.entry.ttls[j] = clamp_ttl(ttl, cfg.min_ttl, cfg.max_ttl);
        i += 1;
    }
    c.entry.records = records as u8;
    let new = DNS_CACHE.get_ptr(&c.key).is_none();
    if DNS_CACHE.insert(&c.key, &c.entry, 0).is_err() {
        return Err(None);
    }
    count(CSTAT_INSERTS);
    if new {
        count(CSTAT_INSERTED_NEW);
    }
    Ok(())
}
