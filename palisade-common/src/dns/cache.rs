//! The DNS response cache (`[dns.cache]`): what is cached, under which key, and how a cached
//! answer is aged and served. Both the kernel programs (fill at TC egress, serve at XDP
//! ingress) and the userspace reference use these functions.
//!
//! An answer is cached when it is a NOERROR response without the TC bit, to a query seen at
//! ingress (a [`PendingKey`] recorded then, removed when matched), whose whole message fits
//! [`MAX_MESSAGE`] bytes, whose question lies uncompressed right after the header, and whose
//! records (at most [`MAX_RECORDS`] carrying a TTL) all parse. The entry holds the header's
//! flags and counts, the bytes after the question (answer, authority and additional
//! sections, compression pointers included: served after a question of the same length,
//! they point at the same bytes) and where each TTL lies in them.

use super::wire::{HEADER_LEN, RCODE_NOERROR, TYPE_OPT};
use crate::map_type;

/// Most entries a cache may hold (`[dns.cache] capacity`).
pub const MAX_CAPACITY: u32 = 1 << 16;
/// Entries when `capacity` is not set.
pub const DEFAULT_CAPACITY: u32 = 4096;
/// Queries waiting for their answer, at most (an LRU map: the oldest are forgotten).
pub const PENDING_CAPACITY: u32 = 16384;
/// A pending query older than this is not matched any more (its answer is not cached).
pub const PENDING_MAX_AGE_NS: u64 = 5_000_000_000;

/// Largest DNS message cached: what any client may receive over UDP, with or without EDNS.
pub const MAX_MESSAGE: usize = 512;
/// Bytes after the question an entry holds: the message less the header and the smallest
/// question (the root name, type and class), rounded up to words.
pub const MAX_SECTION: usize = 496;
const _: () = assert!(MAX_SECTION >= MAX_MESSAGE - HEADER_LEN - 5 && MAX_SECTION.is_multiple_of(8));
/// Records with a TTL an entry holds at most (the OPT record has none).
pub const MAX_RECORDS: usize = 16;
/// Records of all kinds an answer may have (OPT included).
pub const MAX_ALL_RECORDS: usize = 24;
/// Steps of [`Scan::step`] that parse any answer [`MAX_MESSAGE`] bytes long: one per label
/// (each takes at least two bytes) and one per record.
pub const MAX_SCAN_STEPS: usize = MAX_MESSAGE / 2 + MAX_ALL_RECORDS;

/// [`CacheKey::flags`]: the query carries an OPT record.
pub const KEY_EDNS: u8 = 1;
/// [`CacheKey::flags`]: the query's DO bit (DNSSEC OK).
pub const KEY_DO: u8 = 2;

/// Counters of the cache (a per-CPU array of this many `u64`).
pub const CSTAT_HITS: u32 = 0;
/// Queries the cache could have answered (policy passed them) but did not hold, or held
/// expired.
pub const CSTAT_MISSES: u32 = 1;
/// Answers stored (new keys and refreshed ones).
pub const CSTAT_INSERTS: u32 = 2;
/// Answers stored under a key the cache did not hold: with [`CSTAT_REMOVED`] and the
/// entries present, gives the evictions (`inserted_new - removed - present`).
pub const CSTAT_INSERTED_NEW: u32 = 3;
/// Entries removed because they expired.
pub const CSTAT_REMOVED: u32 = 4;
/// Fresh answers found but not served: the query came from or went to a group address, the
/// client's answer budget was spent, or the frame could not be rewritten. The query went on
/// to the resolver.
pub const CSTAT_DECLINED: u32 = 5;
/// Answers not cached, by [`Reject`] (`CSTAT_REJECTED + reject as u32`).
pub const CSTAT_REJECTED: u32 = 6;
/// Number of counters.
pub const CACHE_STATS: u32 = CSTAT_REJECTED + REJECTS;

/// Why an answer was not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Reject {
    /// The TC bit is set.
    Truncated = 0,
    /// An RCODE other than NOERROR, an opcode other than QUERY, not a response.
    Rcode = 1,
    /// From an address or port other than `[dns.cache] resolver`.
    Source = 2,
    /// No query seen at ingress waits for it (unsolicited, or its wait timed out).
    Unsolicited = 3,
    /// The message is larger than [`MAX_MESSAGE`] or has more records than an entry holds.
    TooLarge = 4,
    /// Records that do not parse, a question other than the query's.
    Malformed = 5,
    /// A TTL of zero (after the `min_ttl` clamp): not to be cached.
    ZeroTtl = 6,
}
/// Number of [`Reject`] kinds.
pub const REJECTS: u32 = 7;

/// Counter names, in index order.
pub const CACHE_STAT_NAMES: [&str; CACHE_STATS as usize] = [
    "hits",
    "misses",
    "inserts",
    "inserted_new",
    "removed",
    "declined",
    "rejected_truncated",
    "rejected_rcode",
    "rejected_source",
    "rejected_unsolicited",
    "rejected_too_large",
    "rejected_malformed",
    "rejected_zero_ttl",
];

/// Key of a cached answer: the question's case-folded name (its 128-bit suffix hash, see
/// [`super::hash`], and wire length), type, class and EDNS flags.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub a: u64,
    pub b: u64,
    pub wire_len: u16,
    pub qtype: u16,
    pub qclass: u16,
    /// [`KEY_EDNS`], [`KEY_DO`].
    pub flags: u8,
    pub _pad: u8,
}
map_type!(CacheKey, 24);

/// A query seen at ingress, waiting for its answer: the client's address and port and the
/// query ID, as the answer carries them back (destination).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PendingKey {
    pub client: [u8; 16],
    pub port: u16,
    pub id: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}
map_type!(PendingKey, 24);

/// What is known of a pending query.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingValue {
    pub key: CacheKey,
    /// When it was seen (`bpf_ktime_get_ns`).
    pub seen_ns: u64,
}
map_type!(PendingValue, 32);

/// The cache's settings, one per generation.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheConfig {
    /// The resolver's address (IPv4 v4-mapped, as `packet::Packet` holds addresses).
    pub resolver: [u8; 16],
    pub port: u16,
    /// 0: the cache is off.
    pub enabled: u8,
    pub family: u8,
    /// TTLs below this are raised to it (seconds).
    pub min_ttl: u32,
    /// TTLs above this are lowered to it (seconds).
    pub max_ttl: u32,
    pub _pad: u32,
}
map_type!(CacheConfig, 32);

/// A cached answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CacheEntry {
    /// When it was stored (`bpf_ktime_get_ns`).
    pub stored_ns: u64,
    /// Its lifetime: the smallest clamped TTL (seconds).
    pub lifetime: u32,
    /// Length of [`CacheEntry::section`] in use.
    pub section_len: u16,
    /// TTLs in [`CacheEntry::ttl_at`] in use.
    pub records: u8,
    pub _pad: u8,
    /// The header's bytes 2..12: flags and the four counts.
    pub header: [u8; 10],
    pub _pad2: [u8; 6],
    /// Offset of each TTL in `section`.
    pub ttl_at: [u16; MAX_RECORDS],
    /// Each TTL, clamped, as stored.
    pub ttls: [u32; MAX_RECORDS],
    /// The bytes after the question.
    pub section: [u8; MAX_SECTION],
}
map_type!(
    CacheEntry,
    32 + 2 * MAX_RECORDS + 4 * MAX_RECORDS + MAX_SECTION
);

impl Default for CacheEntry {
    fn default() -> Self {
        Self {
            stored_ns: 0,
            lifetime: 0,
            section_len: 0,
            records: 0,
            _pad: 0,
            header: [0; 10],
            _pad2: [0; 6],
            ttl_at: [0; MAX_RECORDS],
            ttls: [0; MAX_RECORDS],
            section: [0; MAX_SECTION],
        }
    }
}

/// Checks an answer's header: a response to a standard query, NOERROR, not truncated, one
/// question.
///
/// # Errors
/// The reason not to cache it.
#[inline(always)]
pub fn check_answer_header(h: &[u8; HEADER_LEN]) -> Result<(), Reject> {
    // QR, opcode; then TC; then RCODE.
    if h[2] & 0x80 == 0 || h[2] & 0x78 != 0 {
        return Err(Reject::Rcode);
    }
    if h[2] & 0x02 != 0 {
        return Err(Reject::Truncated);
    }
    if h[3] & 0x0f != RCODE_NOERROR {
        return Err(Reject::Rcode);
    }
    if h[4] != 0 || h[5] != 1 {
        return Err(Reject::Malformed);
    }
    Ok(())
}

/// Records of all sections an answer announces; [`Reject::TooLarge`] past
/// [`MAX_ALL_RECORDS`].
///
/// # Errors
/// As said.
#[inline(always)]
pub fn record_count(h: &[u8; HEADER_LEN]) -> Result<u16, Reject> {
    let an = u16::from_be_bytes([h[6], h[7]]);
    let ns = u16::from_be_bytes([h[8], h[9]]);
    let ar = u16::from_be_bytes([h[10], h[11]]);
    let all = u32::from(an) + u32::from(ns) + u32::from(ar);
    if all > MAX_ALL_RECORDS as u32 {
        return Err(Reject::TooLarge);
    }
    Ok(all as u16)
}

/// The walk over an answer's records, one step at a time (a label or a record's fixed part),
/// so that the kernel runs it in a bounded loop. Offsets are message offsets.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Scan {
    /// Next byte to read.
    pub pos: u16,
    /// End of the message.
    pub end: u16,
    /// Records still to walk.
    pub left: u16,
    /// Records with a TTL found.
    pub records: u8,
    /// 0 while walking, 1 done, 2 + reject when refused.
    pub state: u8,
    /// Smallest TTL found, before clamping.
    pub min_ttl: u32,
    /// Message offset of each TTL found.
    pub ttl_at: [u16; MAX_RECORDS],
}

/// [`Scan::state`] while walking.
pub const SCAN_WALKING: u8 = 0;
/// [`Scan::state`] when every record parsed.
pub const SCAN_DONE: u8 = 1;
/// [`Scan::state`] `SCAN_REFUSED + reject`: refused.
pub const SCAN_REFUSED: u8 = 2;

/// Byte `at` of `msg`, the index masked into [`MAX_MESSAGE`] where the compiler cannot
/// drop the mask: it would, knowing the index small from the compares before, and the
/// kernel's verifier, which does not follow those, needs it.
#[inline(always)]
fn byte(msg: &[u8; MAX_MESSAGE], at: usize) -> u8 {
    msg[core::hint::black_box(at) & (MAX_MESSAGE - 1)]
}

/// Reads a big-endian `u16` at `at` of `msg` (see [`byte`]).
#[inline(always)]
fn be16(msg: &[u8; MAX_MESSAGE], at: usize) -> u16 {
    u16::from_be_bytes([byte(msg, at), byte(msg, at + 1)])
}

impl Scan {
    /// A walk of the records from `start` (the first byte after the question) to `end`.
    #[must_use]
    pub fn new(start: u16, end: u16, records: u16) -> Self {
        Self {
            pos: start,
            end,
            left: records,
            records: 0,
            state: SCAN_WALKING,
            min_ttl: u32::MAX,
            ttl_at: [0; MAX_RECORDS],
        }
    }

    fn refuse(&mut self, r: Reject) -> bool {
        self.state = SCAN_REFUSED + r as u8;
        false
    }

    /// One step; false once the walk is over ([`Scan::state`] says how).
    #[inline(always)]
    pub fn step(&mut self, msg: &[u8; MAX_MESSAGE]) -> bool {
        if self.state != SCAN_WALKING {
            return false;
        }
        let pos = usize::from(self.pos);
        let end = usize::from(self.end);
        if self.left == 0 {
            if pos != end {
                return self.refuse(Reject::Malformed);
            }
            self.state = SCAN_DONE;
            return false;
        }
        if pos >= end || end > MAX_MESSAGE {
            return self.refuse(Reject::Malformed);
        }
        let b = byte(msg, pos);
        let fixed = match b & 0xc0 {
            0xc0 => pos + 2,
            0 if b == 0 => pos + 1,
            0 => {
                self.pos = (pos + 1 + usize::from(b)) as u16;
                return true;
            }
            _ => return self.refuse(Reject::Malformed),
        };
        if fixed + 10 > end {
            return self.refuse(Reject::Malformed);
        }
        let rtype = be16(msg, fixed);
        let rdlen = usize::from(be16(msg, fixed + 8));
        let next = fixed + 10 + rdlen;
        if next > end {
            return self.refuse(Reject::Malformed);
        }
        if rtype != TYPE_OPT {
            let i = usize::from(self.records);
            if i >= MAX_RECORDS {
                return self.refuse(Reject::TooLarge);
            }
            let ttl = u32::from(be16(msg, fixed + 4)) << 16 | u32::from(be16(msg, fixed + 6));
            self.ttl_at[i & (MAX_RECORDS - 1)] = (fixed + 4) as u16;
            self.min_ttl = self.min_ttl.min(ttl);
            self.records += 1;
        }
        self.pos = next as u16;
        self.left -= 1;
        true
    }

    /// Walks to the end (the userspace reference; the kernel calls [`Scan::step`] in a
    /// bounded loop).
    ///
    /// # Errors
    /// Why the answer is refused.
    pub fn run(&mut self, msg: &[u8; MAX_MESSAGE]) -> Result<(), Reject> {
        for _ in 0..MAX_SCAN_STEPS {
            if !self.step(msg) {
                break;
            }
        }
        self.outcome()
    }

    /// The walk's outcome once it stopped.
    ///
    /// # Errors
    /// Why the answer is refused (a walk still going needed more steps than any answer of
    /// [`MAX_MESSAGE`] bytes: malformed).
    pub fn outcome(&self) -> Result<(), Reject> {
        match self.state {
            SCAN_DONE => Ok(()),
            s if s == SCAN_REFUSED + Reject::Truncated as u8 => Err(Reject::Truncated),
            s if s == SCAN_REFUSED + Reject::TooLarge as u8 => Err(Reject::TooLarge),
            _ => Err(Reject::Malformed),
        }
    }
}

/// A TTL clamped into `[min_ttl, max_ttl]` (`max_ttl` wins when they cross).
#[inline(always)]
#[must_use]
pub fn clamp_ttl(ttl: u32, min_ttl: u32, max_ttl: u32) -> u32 {
    ttl.max(min_ttl).min(max_ttl)
}

/// The TTL to serve of a stored TTL after `age_s` seconds.
#[inline(always)]
#[must_use]
pub fn aged_ttl(stored: u32, age_s: u32) -> u32 {
    stored.saturating_sub(age_s)
}

/// Whether an entry of `lifetime` seconds is still fresh at `age_s`.
#[inline(always)]
#[must_use]
pub fn fresh(lifetime: u32, age_s: u32) -> bool {
    age_s < lifetime
}

/// The header of a served answer: the query's ID and RD and CD bits, the cached flags and
/// counts.
#[inline(always)]
pub fn serve_header(h: &mut [u8; HEADER_LEN], cached: &[u8; 10]) {
    let rd = h[2] & 0x01;
    let cd = h[3] & 0x10;
    h[2] = (cached[0] & !0x01) | rd;
    h[3] = (cached[1] & !0x10) | cd;
    h[4..12].copy_from_slice(&cached[2..10]);
}

/// Fills `e` from the answer `msg` (`len` bytes, `question_end` the offset after its
/// question), with TTLs clamped; `now_ns` is when it is stored. This is the whole fill as the
/// userspace reference does it; the kernel runs the same steps.
///
/// # Errors
/// Why the answer is not cached.
pub fn fill(
    msg: &[u8; MAX_MESSAGE],
    len: usize,
    question_end: usize,
    cfg: &CacheConfig,
    now_ns: u64,
    e: &mut CacheEntry,
) -> Result<(), Reject> {
    if len > MAX_MESSAGE {
        return Err(Reject::TooLarge);
    }
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&msg[..HEADER_LEN]);
    check_answer_header(&h)?;
    let records = record_count(&h)?;
    if question_end > len || question_end < HEADER_LEN + 5 {
        return Err(Reject::Malformed);
    }
    let mut scan = Scan::new(question_end as u16, len as u16, records);
    scan.run(msg)?;
    finish(&scan, msg, question_end, cfg, now_ns, &h, e)
}

/// The entry from a finished walk.
///
/// # Errors
/// [`Reject::ZeroTtl`] when there is no TTL, or the smallest clamped one is zero.
pub fn finish(
    scan: &Scan,
    msg: &[u8; MAX_MESSAGE],
    question_end: usize,
    cfg: &CacheConfig,
    now_ns: u64,
    h: &[u8; HEADER_LEN],
    e: &mut CacheEntry,
) -> Result<(), Reject> {
    let lifetime = clamp_ttl(scan.min_ttl, cfg.min_ttl, cfg.max_ttl);
    if scan.records == 0 || lifetime == 0 {
        return Err(Reject::ZeroTtl);
    }
    let section_len = usize::from(scan.end) - question_end;
    if section_len > MAX_SECTION {
        return Err(Reject::TooLarge);
    }
    e.stored_ns = now_ns;
    e.lifetime = lifetime;
    e.section_len = section_len as u16;
    e.records = scan.records;
    e.header.copy_from_slice(&h[2..]);
    e.section[..section_len].copy_from_slice(&msg[question_end..question_end + section_len]);
    for i in 0..usize::from(scan.records) {
        let at = usize::from(scan.ttl_at[i]) - question_end;
        e.ttl_at[i] = at as u16;
        let ttl = u32::from_be_bytes([
            e.section[at],
            e.section[at + 1],
            e.section[at + 2],
            e.section[at + 3],
        ]);
        e.ttls[i] = clamp_ttl(ttl, cfg.min_ttl, cfg.max_ttl);
    }
    Ok(())
}

/// Writes the section of `e` as served after `age_s` seconds into `out` (TTLs aged).
pub fn serve_section(e: &CacheEntry, age_s: u32, out: &mut [u8; MAX_SECTION]) {
    out.copy_from_slice(&e.section);
    for i in 0..usize::from(e.records).min(MAX_RECORDS) {
        let at = usize::from(e.ttl_at[i]);
        if at + 4 <= MAX_SECTION {
            out[at..at + 4].copy_from_slice(&aged_ttl(e.ttls[i], age_s).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    /// `www.example.com A IN` answered with a CNAME and an A record, and an OPT record.
    fn answer() -> ([u8; MAX_MESSAGE], usize, usize) {
        let mut m = [0u8; MAX_MESSAGE];
        let mut v = std::vec![
            0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 1, // header
        ];
        v.extend_from_slice(b"\x03wWw\x07example\x03com\x00\x00\x01\x00\x01");
        let qend = v.len();
        // CNAME www -> web.example.com (label + pointer to "example" at 16).
        v.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0x0e, 0x10, 0, 6]);
        v.extend_from_slice(b"\x03web\xc0\x10");
        // A of web...: owner is a pointer to the CNAME's target.
        let web = (qend + 12) as u8;
        v.extend_from_slice(&[0xc0, web, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
        // OPT.
        v.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        m[..v.len()].copy_from_slice(&v);
        (m, v.len(), qend)
    }

    fn cfg() -> CacheConfig {
        CacheConfig {
            enabled: 1,
            min_ttl: 0,
            max_ttl: 86_400,
            ..CacheConfig::default()
        }
    }

    #[test]
    fn fill_finds_every_ttl_and_the_smallest() {
        let (m, len, qend) = answer();
        let mut e = CacheEntry::default();
        fill(&m, len, qend, &cfg(), 7, &mut e).expect("cacheable");
        assert_eq!(e.records, 2);
        assert_eq!(e.lifetime, 60);
        assert_eq!(&e.ttls[..2], &[3600, 60]);
        assert_eq!(&e.ttl_at[..2], &[6, 24]);
        assert_eq!(usize::from(e.section_len), len - qend);
        assert_eq!(&e.header, &m[2..12]);
    }

    #[test]
    fn clamps_apply_to_ttls_and_lifetime() {
        let (m, len, qend) = answer();
        let mut e = CacheEntry::default();
        let c = CacheConfig {
            min_ttl: 120,
            max_ttl: 600,
            ..cfg()
        };
        fill(&m, len, qend, &c, 0, &mut e).expect("cacheable");
        assert_eq!(&e.ttls[..2], &[600, 120]);
        assert_eq!(e.lifetime, 120);
    }

    #[test]
    fn refusals() {
        let (m, len, qend) = answer();
        let mut e = CacheEntry::default();
        let mut tc = m;
        tc[2] |= 0x02;
        assert_eq!(
            fill(&tc, len, qend, &cfg(), 0, &mut e),
            Err(Reject::Truncated)
        );
        let mut nx = m;
        nx[3] = 0x83;
        assert_eq!(fill(&nx, len, qend, &cfg(), 0, &mut e), Err(Reject::Rcode));
        let mut query = m;
        query[2] &= 0x7f;
        assert_eq!(
            fill(&query, len, qend, &cfg(), 0, &mut e),
            Err(Reject::Rcode)
        );
        // One record more than there is.
        let mut more = m;
        more[7] = 3;
        assert_eq!(
            fill(&more, len, qend, &cfg(), 0, &mut e),
            Err(Reject::Malformed)
        );
        // Bytes after the last record.
        assert_eq!(
            fill(&m, len + 1, qend, &cfg(), 0, &mut e),
            Err(Reject::Malformed)
        );
        // An RDLENGTH past the end.
        let mut long = m;
        long[qend + 11] = 200;
        assert_eq!(
            fill(&long, len, qend, &cfg(), 0, &mut e),
            Err(Reject::Malformed)
        );
        let mut zero = m;
        zero[qend + 24..qend + 28].fill(0);
        assert_eq!(
            fill(&zero, len, qend, &cfg(), 0, &mut e),
            Err(Reject::ZeroTtl)
        );
        assert_eq!(
            fill(&m, 513, qend, &cfg(), 0, &mut e),
            Err(Reject::TooLarge)
        );
        let mut many = m;
        many[11] = 30;
        assert_eq!(
            fill(&many, len, qend, &cfg(), 0, &mut e),
            Err(Reject::TooLarge)
        );
    }

    #[test]
    fn served_ttls_age_and_header_keeps_the_query_bits() {
        let (m, len, qend) = answer();
        let mut e = CacheEntry::default();
        fill(&m, len, qend, &cfg(), 0, &mut e).expect("cacheable");
        let mut out = [0u8; MAX_SECTION];
        serve_section(&e, 25, &mut out);
        assert_eq!(&out[6..10], &3575u32.to_be_bytes());
        assert_eq!(&out[24..28], &35u32.to_be_bytes());
        assert_eq!(&out[..6], &e.section[..6]);
        assert!(fresh(e.lifetime, 59));
        assert!(!fresh(e.lifetime, 60));
        let mut h = [0xab, 0xcd, 0x00, 0x10, 0, 1, 0, 0, 0, 0, 0, 1];
        serve_header(&mut h, &e.header);
        assert_eq!(h, [0xab, 0xcd, 0x80, 0x90, 0, 1, 0, 2, 0, 0, 0, 1]);
    }

    #[test]
    fn a_scan_never_needs_more_steps_than_the_bound() {
        // Labels of one letter fill a message with the most steps.
        let mut m = [0u8; MAX_MESSAGE];
        let start = 17;
        let mut p = start;
        while p + 2 + 10 < MAX_MESSAGE {
            m[p] = 1;
            m[p + 1] = b'a';
            p += 2;
        }
        m[p] = 0;
        let end = p + 11;
        let mut s = Scan::new(start as u16, end as u16, 1);
        assert_eq!(s.run(&m), Ok(()));
    }
}
