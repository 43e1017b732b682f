//! DNS binding: a cgroup in bind mode may connect only to addresses it received in a DNS
//! answer (within the answer's TTL plus a grace period), or to addresses allowed explicitly.
//!
//! This module holds the map layouts shared by the kernel programs and userspace, and the
//! answer walker: a state machine that advances one name label or one fixed record part per
//! [`step`], so the kernel can run it inside `bpf_loop` (verified once) and userspace runs
//! the very same code as its reference.

use crate::map_type;

/// Bytes of a DNS answer the kernel copies and walks. Records past them are not seen: their
/// addresses are not bound (fail closed: connecting to them is refused).
pub const ANSWER_BUF: usize = 1024;
const MASK: usize = ANSWER_BUF - 1;
const _: () = assert!(ANSWER_BUF.is_power_of_two());

/// Answer records walked per answer; an answer with more has the rest ignored (not bound).
pub const MAX_ANSWER_RECORDS: u16 = 64;
/// Addresses bound per answer; more are ignored (not bound).
pub const MAX_BOUND_PER_ANSWER: usize = 16;
const _: () = assert!(MAX_BOUND_PER_ANSWER.is_power_of_two());
/// Steps of the walk (one label or one fixed part each). A message of [`ANSWER_BUF`] bytes
/// has fewer: every label step consumes at least 2 bytes, every fixed part 4 or 10.
pub const MAX_WALK_STEPS: u32 = 640;

/// CNAME records an answer may hold (a chain of this many hops); more and the answer is
/// refused (reason `dns-answer-chain`) when answers are checked.
pub const MAX_CNAME_HOPS: u32 = 8;
/// Distinct names an answer may hold (question, owners, CNAME targets) for the answer
/// check; more and the answer is refused (`dns-answer-chain`) when answers are checked.
pub const MAX_CHECKED_NAMES: usize = 16;
const _: () = assert!(MAX_CHECKED_NAMES.is_power_of_two());
/// [`AnswerWalk::flags`]: more than [`MAX_CNAME_HOPS`] CNAME records.
pub const WALK_CHAIN_TOO_LONG: u32 = 1;
/// [`AnswerWalk::flags`]: more than [`MAX_CHECKED_NAMES`] distinct names.
pub const WALK_TOO_MANY_NAMES: u32 = 2;
/// [`AnswerWalk::flags`]: an A or AAAA record (bound or past the cap) holds a private
/// address ([`is_private`]).
pub const WALK_PRIVATE: u32 = 4;

/// Capacity of the bindings map (`BIND_ADDRS`, LRU). When full, the least recently used
/// binding is evicted: its address is refused until it is resolved again (fail closed).
pub const BIND_CAPACITY: u32 = 262_144;
/// Capacity of the explicit allow list (`BIND_ALLOW`, an LPM trie), loopback included.
pub const MAX_BIND_ALLOW: u32 = 4_096;
/// Capacity of the resolver-pinning table (`BIND_PIN`, an LPM trie): `[dns.bind] resolvers`
/// and `doh_endpoints` together.
pub const MAX_BIND_PIN: u32 = 1_024;
/// Capacity of `BIND_CGROUPS`, the ids of the `[dns.bind]` cgroups (a hash), which the
/// canary answer (`palisade_bind_canary`, tcx egress) checks a socket's cgroup and its
/// ancestors against; a policy with more cgroups is refused before anything changes.
pub const MAX_BIND_CGROUPS: u32 = 256;
/// Cgroup levels (the root is level 0) the canary answer looks at, from the root down: a
/// socket deeper than this is judged by its first levels only.
pub const MAX_CGROUP_LEVELS: u32 = 32;
/// `BIND_PIN` values: a configured resolver (plain DNS to it passes, its answers bind).
pub const PIN_RESOLVER: u8 = 1;
/// `BIND_PIN` values: a known DNS-over-HTTPS endpoint (every connect to it is refused).
pub const PIN_DOH: u8 = 2;
/// The plain DNS port (UDP and TCP).
pub const DNS_PORT: u16 = 53;
/// DNS over TLS (TCP) and DNS over QUIC (UDP).
pub const DOT_PORT: u16 = 853;

/// What resolver pinning makes of a destination: `reason::PASS` when pinning has no say,
/// or the reason of the refusal. `kind` is the `BIND_PIN` value of the destination (0 when
/// it is in neither list). Shared by the kernel's connect hooks and the userspace reference.
#[must_use]
pub const fn pin_verdict(kind: u8, port: u16) -> u32 {
    if kind == PIN_DOH || port == DOT_PORT {
        crate::reason::DNS_ENCRYPTED
    } else if port == DNS_PORT && kind != PIN_RESOLVER {
        crate::reason::DNS_RESOLVER_PINNED
    } else {
        crate::reason::PASS
    }
}

/// The longest TTL honoured (seven days); longer ones are cut to it.
pub const MAX_TTL_SECS: u32 = 7 * 24 * 3600;
/// The largest grace period accepted (one hour).
pub const MAX_GRACE_SECS: u32 = 3600;

/// One binding: this cgroup received this address (IPv4 as `::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BindKey {
    pub cgroup_id: u64,
    pub addr: [u8; 16],
}
map_type!(BindKey, 24);

/// When a binding expires: the answer's TTL plus the grace period, `bpf_ktime_get_boot_ns`
/// clock (it counts suspended time, as TTLs do).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindValue {
    pub expires_ns: u64,
}
map_type!(BindValue, 8);

/// `BindConfig::enabled`: the policy has a `[dns.bind]` section.
pub const BIND_ON: u32 = 1;
/// `BindConfig::pinned`: `[dns.bind] resolvers` is set; DNS goes only to them.
pub const PIN_ON: u32 = 1;
/// `BindConfig::rebinding`: `[dns.bind] rebinding = "refuse"`; answers with private
/// addresses behind names not on `rebinding_allow` are dropped.
pub const REBIND_REFUSE: u32 = 1;

/// The bind settings (`BIND_CONFIG`, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindConfig {
    /// Added to every answer's TTL.
    pub grace_ns: u64,
    pub enabled: u32,
    /// [`PIN_ON`] when the cgroups are pinned to their resolvers.
    pub pinned: u32,
    /// [`REBIND_REFUSE`] when rebinding protection is on.
    pub rebinding: u32,
    pub _pad: u32,
}
map_type!(BindConfig, 24);

/// Counters (`BIND_STATS`, per CPU).
pub const STAT_CONNECT_CHECKED: u32 = 0;
pub const STAT_CONNECT_BOUND: u32 = 1;
pub const STAT_CONNECT_EXPLICIT: u32 = 2;
pub const STAT_CONNECT_DENIED: u32 = 3;
pub const STAT_ANSWERS: u32 = 4;
pub const STAT_ANSWERS_MALFORMED: u32 = 5;
pub const STAT_ADDRS_BOUND: u32 = 6;
/// Addresses past [`MAX_BOUND_PER_ANSWER`], or whose binding could not be written.
pub const STAT_ADDRS_SKIPPED: u32 = 7;
/// Answers not walked because the CPU's scratch was in use, or a map did not answer.
pub const STAT_INTERNAL: u32 = 8;
/// Answers dropped by the answer check (a blocked name, a chain too long).
pub const STAT_ANSWERS_REFUSED: u32 = 9;
/// Connects and sends refused by resolver pinning (DNS to another server, DoT, DoQ, DoH).
pub const STAT_PIN_REFUSED: u32 = 10;
/// Answers from a source that is not a configured resolver, not bound (pinning on).
pub const STAT_ANSWERS_UNPINNED: u32 = 11;
/// Answers dropped by rebinding protection (a private address behind a name not allowed
/// to carry one).
pub const STAT_ANSWERS_REBINDING: u32 = 12;
/// Length-prefixed messages of TCP segments from port 53 walked as answers (also counted
/// in `answers`): whole ones, and split ones once their last segment arrived.
pub const STAT_ANSWERS_TCP: u32 = 13;
/// TCP answer data not walked, nothing bound: messages past `MAX_TCP_MESSAGES` in a
/// segment, a length prefix split between segments, a kept message forgotten because a
/// segment came out of sequence or the table refused it.
pub const STAT_ANSWERS_TCP_UNWALKED: u32 = 14;
/// Queries for `use-application-dns.net` from a pinned cgroup, answered NXDOMAIN in the
/// kernel (`palisade_bind_canary`).
pub const STAT_CANARY_ANSWERED: u32 = 15;
/// Queries for the canary from a cgroup not in `[dns.bind]`: passed to the resolver.
pub const STAT_CANARY_UNPINNED: u32 = 16;
/// Queries (UDP or TCP to port 53) from a cgroup in bind mode recorded as pending
/// (`BIND_QUERIES`).
pub const STAT_QUERIES_RECORDED: u32 = 17;
/// Queries that could not be recorded (a question past [`QUERY_BUF`], the CPU's query
/// scratch in use, a map that refused): their answers bind nothing.
pub const STAT_QUERIES_UNRECORDED: u32 = 18;
/// Answers that answer no pending query of the receiving cgroup (spoofed, unsolicited, a
/// second copy): UDP ones dropped (reason `dns-answer-unsolicited`), TCP ones passed; none
/// binds anything.
pub const STAT_ANSWERS_UNSOLICITED: u32 = 19;
/// TCP answer messages that did not end in their segment, kept (`BIND_TCP_PARTIAL`) until
/// their last segment arrives.
pub const STAT_ANSWERS_TCP_PARTIAL: u32 = 20;
pub const BIND_STATS_COUNT: u32 = 21;
/// Names of the counters, by index.
pub const BIND_STAT_NAMES: [&str; BIND_STATS_COUNT as usize] = [
    "connect_checked",
    "connect_bound",
    "connect_explicit",
    "connect_denied",
    "answers",
    "answers_malformed",
    "addrs_bound",
    "addrs_skipped",
    "internal",
    "answers_refused",
    "pin_refused",
    "answers_unpinned",
    "answers_rebinding",
    "answers_tcp",
    "answers_tcp_unwalked",
    "canary_answered",
    "canary_unpinned",
    "queries_recorded",
    "queries_unrecorded",
    "answers_unsolicited",
    "answers_tcp_partial",
];

/// Capacity of the pending queries (`BIND_QUERIES`, LRU): queries sent by the cgroups in
/// bind mode and not answered yet. When full, the least recently sent goes: its answer binds
/// nothing (fail closed; the stub's retry is recorded again).
pub const QUERY_CAPACITY: u32 = 65_536;
/// How long a pending query waits for its answer; a later answer binds nothing.
pub const QUERY_WINDOW_NS: u64 = 30_000_000_000;
/// Bytes of a query the kernel copies to find its question: the header and the longest
/// name (255 bytes) with its type and class fit.
pub const QUERY_BUF: usize = 512;
const _: () = assert!(QUERY_BUF.is_power_of_two() && QUERY_BUF >= 12 + 255 + 4);
/// The longest question (name, type, class) hashed, in bytes.
pub const MAX_QUESTION: usize = 255 + 4;

/// A pending query: this cgroup asked this resolver (address, port), from this local port,
/// with this id, this question ([`question_hash`]), over this protocol (17 or 6). The
/// answer path looks up the same key built from the answer, and consumes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QueryKey {
    pub cgroup_id: u64,
    pub question: u64,
    pub resolver: [u8; 16],
    pub resolver_port: u16,
    pub local_port: u16,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}
map_type!(QueryKey, 40);

/// When a pending query was sent (`bpf_ktime_get_boot_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryValue {
    pub sent_ns: u64,
}
map_type!(QueryValue, 8);

/// Whole length-prefixed DNS messages walked per TCP segment (queries recorded, answers
/// bound); messages past them in the same segment are not (answers past them bind nothing).
pub const MAX_TCP_MESSAGES: usize = 4;

/// TCP flows whose answer message is split across segments, kept until it is whole
/// (`BIND_TCP_PARTIAL`, LRU): when full, the least recently used flow's partial message is
/// lost and binds nothing.
pub const MAX_TCP_PARTIAL: u32 = 1_024;

/// A TCP flow from a resolver to a socket of a cgroup in bind mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub cgroup_id: u64,
    pub resolver: [u8; 16],
    pub local: [u8; 16],
    pub resolver_port: u16,
    pub local_port: u16,
    pub _pad: u32,
}
map_type!(FlowKey, 48);

/// A DNS message split across TCP segments, as far as it has arrived: the first
/// [`ANSWER_BUF`] bytes are kept (the buffer is twice that, so that a copy at any offset
/// below [`ANSWER_BUF`] of up to [`ANSWER_BUF`] bytes stays inside it, as the verifier
/// requires).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partial {
    /// The sequence number of the next byte of the stream expected.
    pub next_seq: u32,
    /// The message's length (its 2-byte prefix).
    pub want: u32,
    /// Bytes of the message arrived so far.
    pub have: u32,
    pub _pad: u32,
    pub buf: [u8; 2 * ANSWER_BUF],
}
map_type!(Partial, 16 + 2 * ANSWER_BUF);

/// FNV-1a, 64 bits.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One byte of [`question_hash`]: ASCII letters folded to lower case.
#[inline(always)]
#[must_use]
pub const fn hash_byte(h: u64, b: u8) -> u64 {
    let b = if b.is_ascii_uppercase() { b | 0x20 } else { b };
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

/// The hash of a question: the `len` bytes from `at` in `msg` (the name in wire form, type
/// and class), ASCII letters folded to lower case (resolvers echo the question's case, some
/// not exactly). `len` is cut to [`MAX_QUESTION`]. The userspace reference; the kernel
/// runs [`hash_byte`] in `bpf_loop`, one byte per step, starting from [`QUESTION_HASH_START`].
#[must_use]
pub fn question_hash<const N: usize>(msg: &[u8; N], at: usize, len: usize) -> u64 {
    let mut h = QUESTION_HASH_START;
    for i in 0..len.min(MAX_QUESTION) {
        h = hash_byte(h, msg[(at + i) & (N - 1)]);
    }
    h
}

/// The hash of an empty question (FNV-1a's offset basis).
pub const QUESTION_HASH_START: u64 = FNV_OFFSET;

/// Whether the message in `msg` (`len` bytes) is a standard query: QR clear, opcode QUERY,
/// exactly one question.
#[inline(always)]
#[must_use]
pub fn is_standard_query(msg: &[u8; QUERY_BUF], len: usize) -> bool {
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    len >= 12 && flags & 0x8000 == 0 && flags & 0x7800 == 0 && qdcount == 1
}

/// [`question_step`]'s result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuestionStep {
    /// The next label starts here.
    Next(usize),
    /// The question ends here (past its class).
    End(usize),
    /// No question: compressed, reserved label type, too long, cut.
    Bad,
}

/// One label of a query's question name at `off` (12 for the first). The kernel runs it in
/// `bpf_loop` (at most 128 steps).
#[inline(always)]
#[must_use]
pub fn question_step(msg: &[u8; QUERY_BUF], off: usize, len: usize) -> QuestionStep {
    if off >= len || off >= 12 + 255 {
        return QuestionStep::Bad;
    }
    let l = msg[off & (QUERY_BUF - 1)];
    if l == 0 {
        let end = off + 1 + 4;
        return if end <= len {
            QuestionStep::End(end)
        } else {
            QuestionStep::Bad
        };
    }
    if l & 0xc0 != 0 {
        return QuestionStep::Bad;
    }
    QuestionStep::Next(off + 1 + usize::from(l))
}

/// Labels a question name may have (255 bytes, two per label at least).
pub const MAX_QUESTION_LABELS: u32 = 128;

/// Where the question of the message in `msg` (`len` bytes) ends (past its class), when
/// the message is a standard query ([`is_standard_query`]) whose question is uncompressed
/// and within [`MAX_QUESTION`] bytes; `None` otherwise. The userspace reference of the
/// query recorder's parser.
#[must_use]
pub fn query_question_end(msg: &[u8; QUERY_BUF], len: usize) -> Option<usize> {
    if !is_standard_query(msg, len) {
        return None;
    }
    let mut off = 12;
    for _ in 0..MAX_QUESTION_LABELS {
        match question_step(msg, off, len) {
            QuestionStep::Next(n) => off = n,
            QuestionStep::End(e) => return Some(e),
            QuestionStep::Bad => return None,
        }
    }
    None
}

/// Walk phases.
const Q_NAME: u32 = 0;
const Q_TAIL: u32 = 1;
const R_NAME: u32 = 2;
const R_FIXED: u32 = 3;
// The name phases advance to the part after them by one.
const _: () = assert!(Q_TAIL == Q_NAME + 1 && R_FIXED == R_NAME + 1);

/// [`step`] results.
pub const WALK_MORE: u32 = 0;
/// Every answer record was walked and the message is consistent.
pub const WALK_DONE: u32 = 1;
/// The message cannot be read as an answer: nothing of it is bound.
pub const WALK_MALFORMED: u32 = 2;

/// An address found in an answer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub addr: [u8; 16],
    pub ttl: u32,
    pub _pad: u32,
}
map_type!(Found, 24);

/// The walk's state, kept in the per-CPU scratch in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnswerWalk {
    /// Bytes of the message in the buffer (at most [`ANSWER_BUF`]).
    pub len: u32,
    pub off: u32,
    pub phase: u32,
    /// [`WALK_MORE`], [`WALK_DONE`] or [`WALK_MALFORMED`].
    pub state: u32,
    pub records: u32,
    /// Addresses in `found`.
    pub found_len: u32,
    /// Addresses seen beyond `found`.
    pub skipped: u32,
    pub steps: u32,
    pub found: [Found; MAX_BOUND_PER_ANSWER],
    /// Where the current record's owner name starts.
    pub name_at: u32,
    /// CNAME records seen.
    pub cnames: u32,
    /// `WALK_CHAIN_TOO_LONG`, `WALK_TOO_MANY_NAMES`.
    pub flags: u32,
    /// Names in `names`.
    pub names_len: u32,
    /// The question's type.
    pub qtype: u32,
    /// Where the question ends (past its class): the question is `12..q_end`.
    pub q_end: u32,
    /// Where each distinct name starts in the message (a name that is only a compression
    /// pointer is recorded as the name it points to): the question, every owner, every
    /// CNAME target.
    pub names: [u16; MAX_CHECKED_NAMES],
}
map_type!(
    AnswerWalk,
    32 + 24 * MAX_BOUND_PER_ANSWER + 24 + 2 * MAX_CHECKED_NAMES
);

/// Records the name at `at` for the answer check, once.
#[inline(always)]
fn note_name(w: &mut AnswerWalk, msg: &[u8; ANSWER_BUF], at: usize) {
    let b = byte(msg, at);
    let at = if b & 0xc0 == 0xc0 {
        (usize::from(b & 0x3f) << 8) | usize::from(byte(msg, at + 1))
    } else {
        at
    };
    let mut i = 0;
    while i < MAX_CHECKED_NAMES {
        if i >= w.names_len as usize {
            break;
        }
        if usize::from(w.names[i]) == at {
            return;
        }
        i += 1;
    }
    if (w.names_len as usize) < MAX_CHECKED_NAMES {
        // Read again (volatile) and masked: the compiler would otherwise reuse the search
        // loop's bound as the index, which the verifier cannot bound.
        // SAFETY: a plain read of a field.
        let n = unsafe { core::ptr::read_volatile(&raw const w.names_len) } as usize;
        w.names[n & (MAX_CHECKED_NAMES - 1)] = at as u16;
        w.names_len += 1;
    } else {
        w.flags |= WALK_TOO_MANY_NAMES;
    }
}

#[inline(always)]
fn byte(msg: &[u8; ANSWER_BUF], at: usize) -> u8 {
    msg[at & MASK]
}

#[inline(always)]
fn be16(msg: &[u8; ANSWER_BUF], at: usize) -> u16 {
    u16::from_be_bytes([byte(msg, at), byte(msg, at + 1)])
}

/// Starts a walk of the `len` bytes of `msg` (a UDP payload from a DNS server). Answers
/// that are not responses to a standard query with one question are malformed; answers
/// with an error code, or without records, are done with nothing found once their question
/// is walked.
#[inline(always)]
pub fn begin(w: &mut AnswerWalk, msg: &[u8; ANSWER_BUF], len: usize) {
    w.len = len.min(ANSWER_BUF) as u32;
    w.off = 12;
    w.phase = Q_NAME;
    w.found_len = 0;
    w.skipped = 0;
    w.steps = 0;
    w.state = WALK_MORE;
    w.cnames = 0;
    w.flags = 0;
    w.names_len = 1;
    w.names[0] = 12;
    w.qtype = 0;
    w.q_end = 0;
    if len < 12 {
        w.state = WALK_MALFORMED;
        return;
    }
    let flags = be16(msg, 2);
    let qdcount = be16(msg, 4);
    let ancount = be16(msg, 6);
    // QR set, opcode QUERY, exactly one question.
    if flags & 0x8000 == 0 || flags & 0x7800 != 0 || qdcount != 1 {
        w.state = WALK_MALFORMED;
        return;
    }
    // An error code or no records: only the question is walked (the answer path matches
    // it to a pending query), nothing is found.
    w.records = if flags & 0x000f != 0 {
        0
    } else {
        u32::from(ancount.min(MAX_ANSWER_RECORDS))
    };
}

/// Advances the walk by one label or one fixed part; returns its state.
#[inline(always)]
pub fn step(w: &mut AnswerWalk, msg: &[u8; ANSWER_BUF]) -> u32 {
    if w.state != WALK_MORE {
        return w.state;
    }
    w.steps += 1;
    if w.steps > MAX_WALK_STEPS {
        w.state = WALK_MALFORMED;
        return w.state;
    }
    let len = w.len as usize;
    let off = w.off as usize;
    match w.phase {
        Q_NAME | R_NAME => {
            if off >= len {
                w.state = WALK_MALFORMED;
                return w.state;
            }
            let b = byte(msg, off);
            if b == 0 {
                w.off += 1;
                w.phase += 1;
            } else if b & 0xc0 == 0xc0 {
                // A compression pointer ends the name where it stands; where it points is
                // not needed to find the record's end. It must point backward, past the
                // header, as every resolver's own pointers do: a forward or self pointer is
                // malformed.
                let target = (usize::from(b & 0x3f) << 8) | usize::from(byte(msg, off + 1));
                if off + 2 > len || target < 12 || target >= off {
                    w.state = WALK_MALFORMED;
                } else {
                    w.off += 2;
                    w.phase += 1;
                }
            } else if b & 0xc0 != 0 {
                // Reserved label types.
                w.state = WALK_MALFORMED;
            } else {
                w.off += 1 + u32::from(b);
            }
        }
        Q_TAIL => {
            if off + 4 > len {
                w.state = WALK_MALFORMED;
            } else {
                w.qtype = u32::from(be16(msg, off));
                w.off += 4;
                w.q_end = w.off;
                w.phase = R_NAME;
                w.name_at = w.off;
                if w.records == 0 {
                    w.state = WALK_DONE;
                }
            }
        }
        _ => {
            if off + 10 > len {
                w.state = WALK_MALFORMED;
                return w.state;
            }
            let rtype = be16(msg, off);
            let class = be16(msg, off + 2);
            let ttl = (u32::from(be16(msg, off + 4)) << 16) | u32::from(be16(msg, off + 6));
            let rdlen = usize::from(be16(msg, off + 8));
            let rdata = off + 10;
            if rdata + rdlen > len {
                // A record cut by the end of what was copied (or of the message).
                w.state = WALK_MALFORMED;
                return w.state;
            }
            let v4 = rtype == 1 && rdlen == 4;
            let v6 = rtype == 28 && rdlen == 16;
            let cname = rtype == 5 && class == 1;
            if cname || (class == 1 && (v4 || v6)) {
                note_name(w, msg, w.name_at as usize);
            }
            if cname {
                w.cnames += 1;
                if w.cnames > MAX_CNAME_HOPS {
                    w.flags |= WALK_CHAIN_TOO_LONG;
                }
                if rdlen >= 1 {
                    note_name(w, msg, rdata);
                }
            }
            if class == 1 && (v4 || v6) {
                if record_is_private(msg, rdata, v4) {
                    w.flags |= WALK_PRIVATE;
                }
                if (w.found_len as usize) < MAX_BOUND_PER_ANSWER {
                    let f = &mut w.found[w.found_len as usize & (MAX_BOUND_PER_ANSWER - 1)];
                    f.ttl = ttl.min(MAX_TTL_SECS);
                    if v4 {
                        f.addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
                        let mut i = 0;
                        while i < 4 {
                            f.addr[12 + i] = byte(msg, rdata + i);
                            i += 1;
                        }
                    } else {
                        let mut i = 0;
                        while i < 16 {
                            f.addr[i] = byte(msg, rdata + i);
                            i += 1;
                        }
                    }
                    w.found_len += 1;
                } else {
                    w.skipped += 1;
                }
            }
            w.off = (rdata + rdlen) as u32;
            w.records = w.records.saturating_sub(1);
            if w.records == 0 {
                w.state = WALK_DONE;
            } else {
                w.phase = R_NAME;
                w.name_at = w.off;
            }
        }
    }
    w.state
}

/// Walks a whole answer (the userspace reference; the kernel runs [`step`] in `bpf_loop`).
#[must_use]
pub fn walk(msg: &[u8; ANSWER_BUF], len: usize) -> AnswerWalk {
    let mut w = AnswerWalk::default();
    begin(&mut w, msg, len);
    let mut i = 0;
    while i <= MAX_WALK_STEPS && step(&mut w, msg) == WALK_MORE {
        i += 1;
    }
    w
}

/// Whether the address of the A (`v4`) or AAAA record whose data starts at `rdata` is
/// private ([`is_private`]).
#[inline(always)]
fn record_is_private(msg: &[u8; ANSWER_BUF], rdata: usize, v4: bool) -> bool {
    if v4 {
        is_private_v4([
            byte(msg, rdata),
            byte(msg, rdata + 1),
            byte(msg, rdata + 2),
            byte(msg, rdata + 3),
        ])
    } else {
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            a[i] = byte(msg, rdata + i);
            i += 1;
        }
        is_private(&a)
    }
}

/// Whether an IPv4 address is one a public name should not lead to: this network
/// (0.0.0.0/8), RFC 1918 (10/8, 172.16/12, 192.168/16), loopback (127/8), link-local
/// (169.254/16) or shared address space (CGNAT, 100.64/10).
#[must_use]
pub const fn is_private_v4(a: [u8; 4]) -> bool {
    matches!(a[0], 0 | 10 | 127)
        || (a[0] == 172 && a[1] & 0xf0 == 16)
        || (a[0] == 192 && a[1] == 168)
        || (a[0] == 169 && a[1] == 254)
        || (a[0] == 100 && a[1] & 0xc0 == 64)
}

/// Whether an IPv6 address (IPv4 as `::ffff:a.b.c.d`) is private for rebinding
/// protection: the unspecified address and loopback (`::`, `::1`), unique local
/// (fc00::/7), link-local (fe80::/10), and the IPv4-mapped and IPv4-compatible
/// (`::a.b.c.d`) forms of a private IPv4 address ([`is_private_v4`]).
#[must_use]
pub const fn is_private(a: &[u8; 16]) -> bool {
    let mut zero10 = true;
    let mut i = 0;
    while i < 10 {
        if a[i] != 0 {
            zero10 = false;
        }
        i += 1;
    }
    let v4 = [a[12], a[13], a[14], a[15]];
    if zero10 && ((a[10] == 0xff && a[11] == 0xff) || (a[10] == 0 && a[11] == 0)) {
        // `::ffff:a.b.c.d`, and `::a.b.c.d` (`::` and `::1` among them: 0.0.0.0/8).
        return is_private_v4(v4);
    }
    a[0] & 0xfe == 0xfc || (a[0] == 0xfe && a[1] & 0xc0 == 0x80)
}

/// An IPv4 address as the bindings store it (`::ffff:a.b.c.d`).
#[must_use]
pub const fn mapped_v4(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn private_addresses() {
        use super::{is_private, is_private_v4, mapped_v4};
        let private4 = [
            [0, 0, 0, 0],
            [0, 255, 1, 2],
            [10, 0, 0, 1],
            [10, 255, 255, 255],
            [172, 16, 0, 1],
            [172, 31, 255, 255],
            [192, 168, 1, 1],
            [127, 0, 0, 1],
            [127, 9, 9, 9],
            [169, 254, 169, 254],
            [100, 64, 0, 1],
            [100, 127, 255, 255],
        ];
        let public4 = [
            [1, 1, 1, 1],
            [9, 255, 255, 255],
            [11, 0, 0, 0],
            [172, 15, 255, 255],
            [172, 32, 0, 0],
            [192, 167, 1, 1],
            [192, 169, 0, 0],
            [169, 253, 0, 1],
            [100, 63, 255, 255],
            [100, 128, 0, 0],
            [128, 0, 0, 1],
            [198, 51, 100, 1],
            [255, 255, 255, 255],
        ];
        for a in private4 {
            assert!(is_private_v4(a), "{a:?}");
            assert!(is_private(&mapped_v4(a)), "mapped {a:?}");
            let mut compat = [0u8; 16];
            compat[12..].copy_from_slice(&a);
            assert!(is_private(&compat), "compatible {a:?}");
        }
        for a in public4 {
            assert!(!is_private_v4(a), "{a:?}");
            assert!(!is_private(&mapped_v4(a)), "mapped {a:?}");
        }
        let v6 = |s: &str| -> [u8; 16] { s.parse::<std::net::Ipv6Addr>().unwrap().octets() };
        for s in [
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf:ffff::1",
            "::ffff:10.1.2.3",
        ] {
            assert!(is_private(&v6(s)), "{s}");
        }
        for s in [
            "2001:db8::1",
            "2606:4700::1111",
            "fec0::1",
            "fbff::1",
            "ff02::1",
            "::ffff:8.8.8.8",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_private(&v6(s)), "{s}");
        }
    }

    #[test]
    fn private_records_are_flagged() {
        let w = run(&answer(&[(1, &[198, 51, 100, 1], 60)]));
        assert_eq!(w.flags & super::WALK_PRIVATE, 0);
        let w = run(&answer(&[
            (1, &[198, 51, 100, 1], 60),
            (1, &[10, 0, 0, 1], 60),
        ]));
        assert_eq!(w.flags & super::WALK_PRIVATE, super::WALK_PRIVATE);
        let v6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let w = run(&answer(&[(28, &v6, 60)]));
        assert_eq!(w.flags & super::WALK_PRIVATE, super::WALK_PRIVATE);
        // Past the per-answer cap still counts.
        let mut recs: Vec<(u16, &[u8], u32)> = (0..MAX_BOUND_PER_ANSWER)
            .map(|_| (1u16, &[1u8, 2, 3, 4][..], 5))
            .collect();
        recs.push((1, &[127, 0, 0, 1], 5));
        let w = run(&answer(&recs));
        assert_eq!(w.skipped, 1);
        assert_eq!(w.flags & super::WALK_PRIVATE, super::WALK_PRIVATE);
    }

    #[test]
    fn pin_verdicts() {
        use super::{PIN_DOH, PIN_RESOLVER, pin_verdict};
        use crate::reason::{DNS_ENCRYPTED, DNS_RESOLVER_PINNED, PASS};
        // Plain DNS: only to a configured resolver.
        assert_eq!(pin_verdict(PIN_RESOLVER, 53), PASS);
        assert_eq!(pin_verdict(0, 53), DNS_RESOLVER_PINNED);
        // DoT / DoQ: never, not even to a configured resolver.
        assert_eq!(pin_verdict(PIN_RESOLVER, 853), DNS_ENCRYPTED);
        assert_eq!(pin_verdict(0, 853), DNS_ENCRYPTED);
        // A DoH endpoint: no port at all.
        assert_eq!(pin_verdict(PIN_DOH, 443), DNS_ENCRYPTED);
        assert_eq!(pin_verdict(PIN_DOH, 53), DNS_ENCRYPTED);
        // Anything else is left to the bindings.
        assert_eq!(pin_verdict(0, 443), PASS);
        assert_eq!(pin_verdict(PIN_RESOLVER, 443), PASS);
    }

    use super::*;

    extern crate std;
    use std::vec::Vec;

    fn name(out: &mut Vec<u8>, n: &str) {
        for l in n.split('.') {
            out.push(l.len() as u8);
            out.extend_from_slice(l.as_bytes());
        }
        out.push(0);
    }

    fn answer(records: &[(u16, &[u8], u32)]) -> Vec<u8> {
        let mut m = vec_header(records.len() as u16);
        name(&mut m, "example.test");
        m.extend_from_slice(&[0, 1, 0, 1]);
        for (t, data, ttl) in records {
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&[0, 1]);
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    fn vec_header(an: u16) -> Vec<u8> {
        let mut m = std::vec![0x12, 0x34, 0x81, 0x80, 0, 1];
        m.extend_from_slice(&an.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m
    }

    fn run(m: &[u8]) -> AnswerWalk {
        let mut buf = [0u8; ANSWER_BUF];
        let n = m.len().min(ANSWER_BUF);
        buf[..n].copy_from_slice(&m[..n]);
        walk(&buf, m.len())
    }

    #[test]
    fn finds_a_and_aaaa() {
        let v6 = [0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        let w = run(&answer(&[
            (1, &[10, 0, 0, 7], 300),
            (28, &v6, 60),
            (16, b"\x03abc", 1),
        ]));
        assert_eq!(w.state, WALK_DONE);
        assert_eq!(w.found_len, 2);
        assert_eq!(w.found[0].addr, mapped_v4([10, 0, 0, 7]));
        assert_eq!(w.found[0].ttl, 300);
        assert_eq!(w.found[1].addr, v6);
        assert_eq!(w.found[1].ttl, 60);
    }

    #[test]
    fn truncated_record_is_malformed() {
        let m = answer(&[(1, &[10, 0, 0, 7], 300)]);
        for cut in 12..m.len() {
            assert_eq!(run(&m[..cut]).state, WALK_MALFORMED, "cut at {cut}");
        }
    }

    #[test]
    fn queries_and_errors_bind_nothing() {
        let mut m = answer(&[(1, &[10, 0, 0, 7], 300)]);
        m[2] = 0x01;
        assert_eq!(run(&m).state, WALK_MALFORMED);
        let mut m = answer(&[(1, &[10, 0, 0, 7], 300)]);
        m[3] = 0x83;
        let w = run(&m);
        assert_eq!((w.state, w.found_len, w.q_end), (WALK_DONE, 0, 30));
        // An error answer whose question is cut is malformed.
        assert_eq!(run(&m[..20]).state, WALK_MALFORMED);
    }

    #[test]
    fn more_addresses_than_bound_are_counted() {
        let recs: Vec<(u16, &[u8], u32)> =
            (0..20).map(|_| (1u16, &[1u8, 2, 3, 4][..], 5)).collect();
        let w = run(&answer(&recs));
        assert_eq!(w.state, WALK_DONE);
        assert_eq!(w.found_len as usize, MAX_BOUND_PER_ANSWER);
        assert_eq!(w.skipped, 4);
    }

    #[test]
    fn forward_and_self_pointers_are_malformed() {
        let base = answer(&[(1, &[10, 0, 0, 7], 300)]);
        // The record's owner name is the pointer at offset 30.
        let at = 12 + 14 + 4;
        assert_eq!(&base[at..at + 2], &[0xc0, 12]);
        for target in [at as u8, at as u8 + 1, 200, 0, 11] {
            let mut m = base.clone();
            m[at + 1] = target;
            assert_eq!(run(&m).state, WALK_MALFORMED, "pointer to {target}");
        }
    }

    #[test]
    fn names_to_check_are_recorded_once() {
        // Question at 12; a CNAME owned by it (pointer to 12) pointing to a new name; an A
        // owned by a pointer to that target.
        let mut m = vec_header(2);
        name(&mut m, "www.example.test");
        m.extend_from_slice(&[0, 1, 0, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60]);
        let mut target = Vec::new();
        name(&mut target, "edge.cdn.test");
        m.extend_from_slice(&(target.len() as u16).to_be_bytes());
        let target_at = m.len();
        m.extend_from_slice(&target);
        m.extend_from_slice(&[
            0xc0,
            target_at as u8,
            0,
            1,
            0,
            1,
            0,
            0,
            0,
            60,
            0,
            4,
            1,
            2,
            3,
            4,
        ]);
        let w = run(&m);
        assert_eq!(w.state, WALK_DONE);
        assert_eq!(w.qtype, 1);
        assert_eq!(w.cnames, 1);
        assert_eq!(w.flags, 0);
        assert_eq!(&w.names[..w.names_len as usize], &[12, target_at as u16]);
    }

    #[test]
    fn long_chains_are_flagged() {
        let mut recs: Vec<(u16, &[u8], u32)> = Vec::new();
        for _ in 0..=MAX_CNAME_HOPS {
            recs.push((5, &[0xc0, 12], 5));
        }
        let w = run(&answer(&recs));
        assert_eq!(w.state, WALK_DONE);
        assert_eq!(w.flags & WALK_CHAIN_TOO_LONG, WALK_CHAIN_TOO_LONG);
        let w = run(&answer(&recs[..MAX_CNAME_HOPS as usize]));
        assert_eq!(w.flags, 0);
    }

    #[test]
    fn ttl_is_capped() {
        let w = run(&answer(&[(1, &[1, 2, 3, 4], u32::MAX)]));
        assert_eq!(w.found[0].ttl, MAX_TTL_SECS);
    }

    fn query(name: &[u8], flags: u16, qd: u16) -> ([u8; QUERY_BUF], usize) {
        let mut q = [0u8; QUERY_BUF];
        q[0] = 0xab;
        q[1] = 0xcd;
        q[2..4].copy_from_slice(&flags.to_be_bytes());
        q[4..6].copy_from_slice(&qd.to_be_bytes());
        q[12..12 + name.len()].copy_from_slice(name);
        q[12 + name.len()..16 + name.len()].copy_from_slice(&[0, 1, 0, 1]);
        (q, 16 + name.len())
    }

    #[test]
    fn query_questions_are_found_and_hashed_case_folded() {
        let (q, len) = query(b"\x03WwW\x07Example\x03org\x00", 0x0100, 1);
        assert_eq!(query_question_end(&q, len), Some(len));
        let (l, _) = query(b"\x03www\x07example\x03org\x00", 0x0100, 1);
        assert_eq!(
            question_hash(&q, 12, len - 12),
            question_hash(&l, 12, len - 12)
        );
        // Another type, another hash.
        let mut t = l;
        t[len - 3] = 28;
        assert_ne!(
            question_hash(&t, 12, len - 12),
            question_hash(&l, 12, len - 12)
        );
        // An answer, another opcode, two questions, a cut or compressed name: no question.
        assert_eq!(
            query_question_end(&query(b"\x01a\x00", 0x8100, 1).0, 17),
            None
        );
        assert_eq!(
            query_question_end(&query(b"\x01a\x00", 0x2800, 1).0, 17),
            None
        );
        assert_eq!(
            query_question_end(&query(b"\x01a\x00", 0x0100, 2).0, 17),
            None
        );
        assert_eq!(
            query_question_end(&query(b"\x01a\x00", 0x0100, 1).0, 16),
            None
        );
        assert_eq!(
            query_question_end(&query(b"\xc0\x0c", 0x0100, 1).0, 18),
            None
        );
        // The walk of an answer ends its question where the query's ends.
        let a = answer(&[(1, &[1, 2, 3, 4], 60)]);
        let w = run(&a);
        assert_eq!(w.q_end, 12 + 14 + 4);
    }
}
