//! Differential check of the DNS datapath: random and mutated DNS messages go through the
//! XDP inspector and the cgroup egress inspector (`BPF_PROG_TEST_RUN`), through the
//! userspace reference (`dns::reference::decide`, label comparison, no hashing), and through
//! hickory-proto's message parser, an independent DNS implementation.
//!
//! For every message:
//! - both kernel programs reach exactly the reference's decision (reason, name, query type);
//!   the name in the event is the reference's name, so the kernel never decides on a
//!   different name than the one asked;
//! - whenever hickory parses a single-question query whose name has no compression pointer,
//!   with no records but an OPT record and nothing after the message's end, the kernel does
//!   not call it malformed, and the reference's labels are hickory's labels in lower case
//!   with the same query type;
//! - names with compression pointers (backward into a label that spells a pool name, chains
//!   of two hops, forward, self and looping pointers) and messages with bytes after the
//!   question (OPT records with options, RDLENGTHs that miss the end, ARCOUNT mismatches) are
//!   generated too: kernel and reference read the same logical name or both call it
//!   malformed;
//! - an allowed query leaves the XDP program unchanged; an NXDOMAIN answer carries the
//!   question byte for byte, correct checksums, and parses with hickory as NXDOMAIN;
//! - the DNS counters moved by exactly the number of decisions of each kind.
//!
//! The policy is an allowlist (then a blocklist) over names drawn from the same pool as the
//! queries, with wildcards, apex-and-subdomain entries, query types, expiry and entropy
//! bounds, so decisions depend on the name. Seeded and reproducible: set
//! `PALISADE_DNS_SEED` to replay a seed, `PALISADE_DNS_CASES` for the number of messages per
//! mode. Needs root.

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    serialize::binary::{BinDecodable, BinDecoder},
};
use palisade::{
    craft::{DnsQuery, Frame},
    dns::{
        compile::{Clock, DnsCompileError, compile},
        reference,
    },
    events::{DnsDecision, qtype_name, wire_name_to_text},
    policy::model::{
        AnswerBudget, Dns, DnsAction, DnsEgress, DnsMode, DnsScope, Firewall, NameEntry, NameList,
        NameMatch, Policy,
    },
    testrun::{Bench, sum_counter},
};
use palisade_common::{
    dns::hash::HashKey,
    dns::maps::{
        DNS_STATS_PER_SCOPE, SCOPE_EGRESS, SCOPE_INGRESS, STAT_ALLOWED, STAT_BLOCKED,
        STAT_NXDOMAIN_SENT, STAT_QUERIES,
    },
    reason,
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

// ---------------------------------------------------------------------------------------
// Generation

/// Labels the pool names are built from: few, so that names share suffixes.
const WORDS: &[&[u8]] = &[
    b"com",
    b"net",
    b"example",
    b"corp",
    b"www",
    b"api",
    b"a",
    b"b",
    b"mail",
    b"cdn",
    b"x.y",
    b"tld",
    b"\xc3\xa9t\xc3\xa9",
    b"_srv",
    b"0",
    b"long-label-long-label-long-label",
];

fn pool_name(rng: &mut StdRng) -> Vec<Vec<u8>> {
    let n = rng.gen_range(1..=4);
    (0..n)
        .map(|_| WORDS.choose(rng).expect("non-empty").to_vec())
        .collect()
}

/// A random label: mostly letters and digits in both cases, sometimes a dot, a random byte,
/// or a length at the edges (0 ends the name early, over 63 is a reserved label type).
fn random_label(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.gen_range(0..100) {
        0..=2 => 0,
        3..=8 => 63,
        9..=10 => rng.gen_range(64..=70),
        11..=20 => rng.gen_range(16..=63),
        _ => rng.gen_range(1..=12),
    };
    (0..len)
        .map(|_| match rng.gen_range(0..100) {
            0..=4 => b'.',
            5..=9 => rng.r#gen(),
            10..=29 => rng.gen_range(b'A'..=b'Z'),
            30..=39 => rng.gen_range(b'0'..=b'9'),
            40..=42 => b'-',
            _ => rng.gen_range(b'a'..=b'z'),
        })
        .collect()
}

fn random_case(rng: &mut StdRng, labels: &mut [Vec<u8>]) {
    for l in labels.iter_mut() {
        for b in l.iter_mut() {
            if rng.gen_bool(0.3) {
                *b = if b.is_ascii_lowercase() {
                    b.to_ascii_uppercase()
                } else {
                    b.to_ascii_lowercase()
                };
            }
        }
    }
}

fn qtype(rng: &mut StdRng) -> u16 {
    *[1u16, 1, 1, 28, 28, 15, 16, 65, 255, 12]
        .choose(rng)
        .map_or(&1, |q| q)
}

/// A query for a name related to the pool: one of them, a name below, a parent, with the
/// letter case shuffled.
fn pool_query(rng: &mut StdRng, pool: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
    let mut labels = pool.choose(rng).expect("non-empty pool").clone();
    match rng.gen_range(0..10) {
        0..=3 => {
            for _ in 0..rng.gen_range(1..=3) {
                let l = if rng.gen_bool(0.5) {
                    WORDS.choose(rng).expect("words").to_vec()
                } else {
                    random_label(rng)
                };
                if !l.is_empty() && l.len() <= 63 {
                    labels.insert(0, l);
                }
            }
        }
        4 if labels.len() > 1 => {
            labels.remove(0);
        }
        _ => {}
    }
    random_case(rng, &mut labels);
    labels
}

/// A DNS message: valid, mutated, or garbage.
fn message(rng: &mut StdRng, pool: &[Vec<Vec<u8>>]) -> Vec<u8> {
    let kind = rng.gen_range(0..100);
    if kind < 5 {
        let n = rng.gen_range(0..300);
        return (0..n).map(|_| rng.r#gen()).collect();
    }
    if kind < 15 {
        let mut m = pointer_message(rng, pool);
        if rng.gen_bool(0.2) {
            mutate(rng, &mut m);
        }
        return m;
    }
    if kind < 22 {
        return additional_message(rng, pool);
    }
    let labels = if kind < 60 {
        pool_query(rng, pool)
    } else {
        (0..rng.gen_range(0..=6))
            .map(|_| random_label(rng))
            .collect()
    };
    let mut q = DnsQuery::new(labels, qtype(rng)).with_id(rng.r#gen());
    q.flags = *[0x0100u16, 0x0000, 0x0110, 0x0120, 0x0300]
        .choose(rng)
        .map_or(&0x0100, |f| f);
    if rng.gen_bool(0.3) {
        q = q.with_edns(rng.gen_range(512..=4096));
    }
    if rng.gen_bool(0.05) {
        q = q.with_pointer(rng.gen_range(0..64));
    }
    let mut m = q.build();
    if kind >= 75 {
        mutate(rng, &mut m);
    }
    m
}

/// A header for one question, ARCOUNT `ar`.
fn header(rng: &mut StdRng, ar: u16) -> Vec<u8> {
    let mut h = rng.r#gen::<u16>().to_be_bytes().to_vec();
    h.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0]);
    h.extend_from_slice(&ar.to_be_bytes());
    h
}

/// The wire form of a pool name short enough to be the bytes of one label.
fn short_pool_wire(rng: &mut StdRng, pool: &[Vec<Vec<u8>>]) -> Vec<u8> {
    let mut labels = pool_query(rng, pool);
    while wire(&labels).len() > 40 && labels.len() > 1 {
        labels.remove(0);
    }
    let mut w = wire(&labels);
    w.truncate(40);
    w
}

/// A query whose name uses compression pointers: mostly backward ones that resolvers follow
/// (the listed name spelled inside a label, then a pointer to it), also chains of two, and
/// forward, self and looping ones.
fn pointer_message(rng: &mut StdRng, pool: &[Vec<Vec<u8>>]) -> Vec<u8> {
    let mut m = header(rng, 0);
    // Plain labels first, so the pointers are not always at the same offsets.
    for _ in 0..rng.gen_range(0..=2) {
        let l = random_label(rng);
        m.push(l.len() as u8);
        m.extend_from_slice(&l);
    }
    let ptr = |at: usize| [0xc0 | (at >> 8) as u8, at as u8];
    match rng.gen_range(0..10) {
        0..=5 => {
            // A label holding a pool name's wire form, then a pointer into it (at its start
            // or at one of its labels).
            let inner = short_pool_wire(rng, pool);
            let start = m.len() + 1;
            m.push(inner.len() as u8);
            m.extend_from_slice(&inner);
            let mut at = start;
            while rng.gen_bool(0.3) && inner[at - start] != 0 {
                at += 1 + usize::from(inner[at - start]);
            }
            m.extend_from_slice(&ptr(at));
        }
        6 => {
            // Two hops, the second landing below the first.
            let inner = short_pool_wire(rng, pool);
            let first = m.len() + 1;
            m.push(inner.len() as u8);
            m.extend_from_slice(&inner);
            let l = random_label(rng);
            let l = &l[..l.len().min(20)];
            let second = m.len() + 1;
            m.push((l.len() + 3) as u8);
            m.push(l.len() as u8);
            m.extend_from_slice(l);
            m.extend_from_slice(&ptr(first));
            m.extend_from_slice(&ptr(second));
        }
        7 => {
            // Forward: to a name placed after the question.
            let at = m.len() + 6;
            m.extend_from_slice(&ptr(at));
            m.extend_from_slice(&[0, 1, 0, 1]);
            m.extend_from_slice(&short_pool_wire(rng, pool));
            return m;
        }
        8 => {
            // At itself or back to the start of the name (a loop).
            let at = if rng.gen_bool(0.5) { m.len() } else { 12 };
            m.extend_from_slice(&ptr(at));
        }
        _ => {
            let at = rng.gen_range(0..m.len() + 4);
            m.extend_from_slice(&ptr(at));
        }
    }
    m.extend_from_slice(&qtype(rng).to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m
}

/// A query with something after the question: an OPT record with options, possibly with
/// an RDLENGTH that misses the end, a count that does not match, or a record of another
/// type.
fn additional_message(rng: &mut StdRng, pool: &[Vec<Vec<u8>>]) -> Vec<u8> {
    let ar = *[1u16, 1, 1, 0, 2].choose(rng).expect("counts");
    let mut m = header(rng, ar);
    m.extend_from_slice(&wire(&pool_query(rng, pool)));
    m.extend_from_slice(&qtype(rng).to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    let options: Vec<u8> = match rng.gen_range(0..3) {
        0 => vec![],
        1 => [&[0, 10, 0, 8][..], &rng.r#gen::<[u8; 8]>()[..]].concat(),
        _ => [&[0, 12, 0, 4][..], &[0; 4][..]].concat(),
    };
    let rdlength = match rng.gen_range(0..6) {
        0 => options.len() + 1,
        1 if !options.is_empty() => options.len() - 1,
        _ => options.len(),
    };
    let owner: &[u8] = if rng.gen_bool(0.1) {
        b"\x01x\x00"
    } else {
        &[0]
    };
    let rtype: u16 = if rng.gen_bool(0.1) { 1 } else { 41 };
    m.extend_from_slice(owner);
    m.extend_from_slice(&rtype.to_be_bytes());
    m.extend_from_slice(&1232u16.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&(rdlength as u16).to_be_bytes());
    m.extend_from_slice(&options);
    if rng.gen_bool(0.1) {
        m.push(0);
    }
    m
}

fn mutate(rng: &mut StdRng, m: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..=3) {
        match rng.gen_range(0..8) {
            0 | 1 if !m.is_empty() => {
                let i = rng.gen_range(0..m.len());
                m[i] ^= 1 << rng.gen_range(0..8);
            }
            2 if !m.is_empty() => {
                let n = rng.gen_range(0..m.len());
                m.truncate(n);
            }
            3 if m.len() >= 6 => {
                m[4] = 0;
                m[5] = rng.gen_range(0..=3);
            }
            4 if m.len() > 13 => {
                // A pointer (or reserved label type) where a length byte may be.
                let i = rng.gen_range(12..m.len() - 1);
                m[i] = (0x40 * rng.gen_range(1..=3)) | rng.gen_range(0..0x40);
            }
            5 if !m.is_empty() => {
                let i = rng.gen_range(0..m.len());
                m[i] = rng.r#gen();
            }
            6 => m.extend((0..rng.gen_range(1..40)).map(|_| rng.r#gen::<u8>())),
            7 if m.len() > 3 => m[2] ^= 0x80 | (rng.gen_range(0..16) << 3),
            _ => {}
        }
    }
}

/// The policy: entries over part of the pool, with every kind of option.
fn entries(rng: &mut StdRng, pool: &[Vec<Vec<u8>>], mode: DnsMode, now: u64) -> Vec<NameEntry> {
    let mut out = Vec::new();
    for name in pool {
        if rng.gen_bool(0.35) {
            continue;
        }
        let mut first: Option<(Option<u64>, Option<u32>)> = None;
        for _ in 0..if rng.gen_bool(0.15) { 2 } else { 1 } {
            let kind = *[
                NameMatch::Exact,
                NameMatch::Subdomains,
                NameMatch::ApexAndSubdomains,
            ]
            .choose(rng)
            .expect("kinds");
            let qtypes = if rng.gen_bool(0.25) {
                let mut q: Vec<u16> = (0..rng.gen_range(1..=3)).map(|_| qtype(rng)).collect();
                q.sort_unstable();
                q.dedup();
                q
            } else {
                vec![]
            };
            let expires = match rng.gen_range(0..20) {
                0 | 1 => Some(now - rng.gen_range(1000..100_000)),
                2 => Some(now + rng.gen_range(1000..100_000)),
                _ => None,
            };
            let max_entropy_bits =
                (mode == DnsMode::Allowlist && rng.gen_bool(0.3)).then(|| rng.gen_range(0..300));
            // A duplicate often has the same terms, so that its query types are joined.
            let (expires, max_entropy_bits) = match first {
                Some(terms) if rng.gen_bool(0.5) => terms,
                _ => (expires, max_entropy_bits),
            };
            first = Some((expires, max_entropy_bits));
            out.push(NameEntry {
                labels: name.iter().map(|l| l.to_ascii_lowercase()).collect(),
                kind,
                qtypes,
                expires,
                max_entropy_bits,
                // Which entry a refused duplicate is (see `without_conflicts`).
                line: out.len() + 1,
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Checks

fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|c| u64::from(c[0]) << 8 | u64::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Bytes of the question as it lies in the message: the name up to its root byte or its
/// first compression pointer, then type and class.
fn question_len(msg: &[u8]) -> usize {
    let mut i = 12;
    loop {
        match msg[i] {
            0 => return i + 1 + 4 - 12,
            b if b & 0xc0 == 0xc0 => return i + 2 + 4 - 12,
            len => i += 1 + usize::from(len),
        }
    }
}

/// The NXDOMAIN answer to the plain IPv4/IPv6 UDP query `frame` carrying `msg`, whose
/// question is `question_len` bytes.
#[track_caller]
fn check_answer(frame: &[u8], answer: &[u8], msg: &[u8], question_len: usize, what: &str) {
    let v6 = frame[14] >> 4 == 6;
    let l4 = 14 + if v6 { 40 } else { 20 };
    let dns = l4 + 8;
    assert_eq!(
        answer.len(),
        dns + 12 + question_len,
        "answer length: {what}"
    );
    let a = &answer[dns..];
    assert_eq!(&a[..2], &msg[..2], "ID: {what}");
    assert_eq!(
        (a[2], a[3]),
        (0x80 | (msg[2] & 0x01), 0x80 | (msg[3] & 0x10) | 3),
        "flags: {what}"
    );
    assert_eq!(&a[4..12], &[0, 1, 0, 0, 0, 0, 0, 0], "counts: {what}");
    assert_eq!(&a[12..], &msg[12..12 + question_len], "question: {what}");
    let udp_len = (answer.len() - l4) as u32;
    let pseudo: Vec<u8> = if v6 {
        [&answer[22..54], &udp_len.to_be_bytes()[..], &[0, 0, 0, 17]].concat()
    } else {
        assert_eq!(
            ones_complement_sum(&answer[14..34]),
            0xffff,
            "IPv4 checksum: {what}"
        );
        [&answer[26..34], &[0, 17], &udp_len.to_be_bytes()[2..]].concat()
    };
    assert_eq!(
        ones_complement_sum(&[&pseudo[..], &answer[l4..]].concat()),
        0xffff,
        "UDP checksum: {what}"
    );
    // hickory-proto refuses pointers that do not point before the name's start, which any
    // pointer in a question name does (it lands in the name itself).
    if name_has_pointer(msg) {
        return;
    }
    let m = Message::from_vec(a)
        .unwrap_or_else(|e| panic!("hickory cannot parse the answer ({e}): {what}"));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{what}");
    assert_eq!(m.metadata.message_type, MessageType::Response, "{what}");
    assert_eq!(m.queries.len(), 1, "{what}");
}

/// Whether the question name at offset 12 uses a compression pointer (or a reserved label
/// type) before its end.
fn name_has_pointer(msg: &[u8]) -> bool {
    let mut i = 12;
    while let Some(&len) = msg.get(i) {
        if len == 0 {
            return false;
        }
        if len & 0xc0 != 0 {
            return true;
        }
        i += 1 + usize::from(len);
    }
    false
}

fn wire(labels: &[Vec<u8>]) -> Vec<u8> {
    let mut w = Vec::new();
    for l in labels {
        w.push(l.len() as u8);
        w.extend_from_slice(l);
    }
    w.push(0);
    w
}

#[derive(Debug, Clone, Copy)]
struct Tally {
    cases: u64,
    allowed: u64,
    blocked: u64,
    nxdomain: u64,
    malformed: u64,
    hickory_checked: u64,
    egress_blocked: u64,
    /// Names read through compression pointers, and of those the ones an entry blocked.
    pointer_names: u64,
    pointer_blocked: u64,
    /// Decisions by reason code.
    reasons: [u64; reason::COUNT as usize],
}

impl Default for Tally {
    // Arrays over 32 elements have no derived `Default`.
    fn default() -> Self {
        Self {
            cases: 0,
            allowed: 0,
            blocked: 0,
            nxdomain: 0,
            malformed: 0,
            hickory_checked: 0,
            egress_blocked: 0,
            pointer_names: 0,
            pointer_blocked: 0,
            reasons: [0; reason::COUNT as usize],
        }
    }
}

fn stat(b: &Bench, scope: u8, s: u32) -> u64 {
    sum_counter(
        &b.ebpf,
        "DNS_STATS",
        u32::from(scope) * DNS_STATS_PER_SCOPE + s,
    )
    .expect("DNS_STATS")
}

#[track_caller]
fn one_event(b: &mut Bench, what: &str) -> DnsDecision {
    let mut ev = b.drain_dns_events();
    assert_eq!(ev.len(), 1, "one event: {what}: {ev:?}");
    ev.remove(0)
}

/// `policy` without the duplicate entries the compiler refuses (those whose union one map
/// entry cannot hold); the reference still takes every remaining entry on its own.
fn without_conflicts(mut policy: Policy) -> Policy {
    let clock = Clock::now();
    loop {
        match compile(&policy, &HashKey::default(), &clock) {
            Ok(_) => return policy,
            Err(DnsCompileError::ConflictingDuplicates { line, .. }) => {
                policy.dns.lists[0].entries.retain(|e| e.line != line);
            }
            Err(e) => panic!("the generated policy does not compile: {e}"),
        }
    }
}

fn run_mode(b: &mut Bench, seed: u64, mode: DnsMode, cases: usize) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let pool: Vec<Vec<Vec<u8>>> = (0..40).map(|_| pool_name(&mut rng)).collect();
    let scope = DnsScope {
        mode,
        action: DnsAction::Nxdomain,
        audit: false,
        lists: vec![0],
        block_malformed: mode == DnsMode::Allowlist,
        rate: None,
        log_allowed: true,
    };
    let policy = Policy {
        shield: palisade::shield::Shield::default(),
        scrub: palisade::scrub::Scrub::default(),
        nat: palisade::nat::Nat::default(),
        lb: palisade::lb::Lb::default(),
        tls: palisade::tls::Tls::default(),
        dhcp: palisade::dhcp::Dhcp::default(),
        intel: palisade::intel::Intel::default(),
        dlp: palisade::dlp::Dlp::default(),
        geoip: None,
        ids: palisade::ids::Ids::default(),
        firewall: Firewall::default(),
        sets: vec![],
        conntrack: palisade::policy::model::Conntrack::default(),
        dns: Dns {
            rate_prefix: Default::default(),
            capacity_names: 0,
            bind: None,
            dga: None,
            cache: None,
            events: palisade::policy::model::DnsEvents::EVERY_QUERY,
            ports: vec![53],
            answers: AnswerBudget::UNLIMITED,
            ingress: Some(scope.clone()),
            egress: Some(DnsEgress {
                scope: DnsScope {
                    action: DnsAction::Drop,
                    ..scope.clone()
                },
                cgroups: vec![],
            }),
            lists: vec![NameList {
                name: "pool".into(),
                entries: entries(&mut rng, &pool, mode, now),
            }],
        },
    };
    let policy = without_conflicts(policy);
    b.install(&policy).expect("install");
    b.drain_dns_events();
    b.drain_events();

    let before: Vec<u64> = [STAT_QUERIES, STAT_ALLOWED, STAT_BLOCKED, STAT_NXDOMAIN_SENT]
        .iter()
        .map(|&s| stat(b, SCOPE_INGRESS, s))
        .collect();
    let before_egress = [
        stat(b, SCOPE_EGRESS, STAT_QUERIES),
        stat(b, SCOPE_EGRESS, STAT_BLOCKED),
    ];

    let mut t = Tally::default();
    for case in 0..cases {
        let msg = message(&mut rng, &pool);
        let transport = rng.gen_range(0..10);
        let (frame, tcp) = match transport {
            0 => (
                Frame::dns_udp("2001:db8::1", "2001:db8::53", 1053, &msg).build(),
                false,
            ),
            1 => {
                // Each TCP query on a stream of its own, opened by a SYN (not a query).
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let port = 20_000 + (n % 40_000) as u16;
                let syn = Frame::dns_tcp_syn("192.0.2.1", "192.0.2.53", port).build();
                b.run_with_output(&syn).expect("test run");
                (
                    Frame::dns_tcp("192.0.2.1", "192.0.2.53", port, &msg).build(),
                    true,
                )
            }
            _ => (
                Frame::dns_udp("192.0.2.1", "192.0.2.53", 1053, &msg).build(),
                false,
            ),
        };
        let what = format!("seed {seed} {mode:?} case {case}: message {msg:02x?}");
        let want = reference::decide(&policy, &scope, &msg, now);

        let (action, out) = b.run_with_output(&frame).expect("test run");
        let got = one_event(b, &what);
        assert_eq!(
            got.reason,
            reason::name(want.reason),
            "XDP decision vs reference: {what}: {got:?} {want:?}"
        );
        let (name, qtype) = match &want.labels {
            Some(l) => (wire_name_to_text(&wire(l)), qtype_name(want.qtype)),
            None => (".".to_string(), qtype_name(0)),
        };
        assert_eq!(
            (got.name.as_str(), got.qtype.as_str()),
            (name.as_str(), qtype.as_str()),
            "name: {what}"
        );
        let answerable = !tcp && want.reason != reason::DNS_MALFORMED;
        let want_action = match want.reason {
            reason::PASS => XDP_PASS,
            _ if answerable => XDP_TX,
            _ => XDP_DROP,
        };
        assert_eq!(action, want_action, "XDP action: {what}");
        assert_eq!(
            got.verdict,
            match action {
                XDP_PASS => "allow",
                XDP_TX => "nxdomain",
                _ => "drop",
            },
            "{what}"
        );
        match action {
            XDP_PASS => {
                assert_eq!(out, frame, "an allowed query is not modified: {what}");
                t.allowed += 1;
            }
            XDP_TX => {
                assert!(want.labels.is_some(), "answered queries parsed: {what}");
                check_answer(&frame, &out, &msg, question_len(&msg), &what);
                t.nxdomain += 1;
                t.blocked += 1;
            }
            _ => t.blocked += 1,
        }
        if want.reason == reason::DNS_MALFORMED
            || (want.reason == reason::PASS && want.labels.is_none())
        {
            t.malformed += 1;
        }

        // The same message from a local process.
        let ip = Frame::dns_udp("192.0.2.1", "192.0.2.53", 1053, &msg).build_ip();
        let verdict = b.run_egress(&ip).expect("egress test run");
        let got = one_event(b, &what);
        assert_eq!(
            (got.scope, got.reason, got.name.as_str()),
            ("egress", reason::name(want.reason), name.as_str()),
            "egress: {what}"
        );
        assert_eq!(
            verdict,
            u32::from(want.reason == reason::PASS),
            "egress verdict: {what}"
        );
        t.egress_blocked += u64::from(verdict == 0);

        // hickory-proto's reading of the same bytes, when it reads the whole message.
        let mut decoder = BinDecoder::new(&msg);
        if let Ok(m) = Message::read(&mut decoder) {
            let single = m.queries.len() == 1
                && m.metadata.message_type == MessageType::Query
                && m.metadata.op_code == OpCode::Query
                && m.answers.is_empty()
                && m.authorities.is_empty()
                && m.additionals.is_empty()
                && decoder.is_empty();
            if single && !name_has_pointer(&msg) {
                t.hickory_checked += 1;
                assert_ne!(
                    want.reason,
                    reason::DNS_MALFORMED,
                    "hickory reads a plain query the datapath calls malformed: {what}"
                );
                let labels = want.labels.as_ref().unwrap_or_else(|| {
                    panic!("reference could not parse what hickory parses: {what}")
                });
                let theirs: Vec<Vec<u8>> = m.queries[0]
                    .name()
                    .iter()
                    .map(<[u8]>::to_ascii_lowercase)
                    .collect();
                assert_eq!(labels, &theirs, "labels vs hickory: {what}");
                assert_eq!(
                    want.qtype,
                    u16::from(m.queries[0].query_type()),
                    "qtype vs hickory: {what}"
                );
            }
        }
        if want.labels.is_some() && name_has_pointer(&msg) {
            t.pointer_names += 1;
            t.pointer_blocked += u64::from(want.reason != reason::PASS);
        }
        t.reasons[want.reason as usize] += 1;
        t.cases += 1;
    }

    let after: Vec<u64> = [STAT_QUERIES, STAT_ALLOWED, STAT_BLOCKED, STAT_NXDOMAIN_SENT]
        .iter()
        .map(|&s| stat(b, SCOPE_INGRESS, s))
        .collect();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        delta,
        vec![t.cases, t.allowed, t.blocked, t.nxdomain],
        "ingress counters"
    );
    let after_egress = [
        stat(b, SCOPE_EGRESS, STAT_QUERIES),
        stat(b, SCOPE_EGRESS, STAT_BLOCKED),
    ];
    assert_eq!(
        [
            after_egress[0] - before_egress[0],
            after_egress[1] - before_egress[1]
        ],
        [t.cases, t.egress_blocked],
        "egress counters"
    );
    t
}

#[test]
fn kernel_reference_and_hickory_agree() {
    let seed: u64 = std::env::var("PALISADE_DNS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_d115);
    let cases: usize = std::env::var("PALISADE_DNS_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let mut b = Bench::new().expect("loading and verifying the kernel programs (needs root)");
    let start = std::time::Instant::now();
    for (i, mode) in [DnsMode::Allowlist, DnsMode::Blocklist]
        .into_iter()
        .enumerate()
    {
        let s = seed.wrapping_add(i as u64);
        let t = run_mode(&mut b, s, mode, cases);
        println!("seed {s} {mode:?}: {t:?}");
        // The generator must exercise every outcome.
        assert!(t.allowed > 0 && t.blocked > 0 && t.malformed > 0, "{t:?}");
        assert!(t.hickory_checked > t.cases / 3, "{t:?}");
        assert!(t.pointer_names > 0 && t.pointer_blocked > 0, "{t:?}");
        if mode == DnsMode::Allowlist {
            assert!(t.nxdomain > 0, "{t:?}");
            for r in [
                reason::DNS_NOT_ALLOWED,
                reason::DNS_ENTROPY,
                reason::DNS_EXPIRED,
                reason::DNS_MALFORMED,
            ] {
                assert!(
                    t.reasons[r as usize] > 0,
                    "no {} decision: {t:?}",
                    reason::name(r)
                );
            }
        } else {
            assert!(t.reasons[reason::DNS_BLOCKED as usize] > 0, "{t:?}");
        }
    }
    println!("{} cases in {:?}", 2 * cases, start.elapsed());
}

#[test]
fn reference_agrees_with_hickory_on_crafted_edge_cases() {
    // No kernel here: the reference parser alone on names at the limits.
    let scope = DnsScope {
        mode: DnsMode::Allowlist,
        action: DnsAction::Drop,
        audit: false,
        lists: vec![],
        block_malformed: true,
        rate: None,
        log_allowed: false,
    };
    let policy = Policy {
        shield: palisade::shield::Shield::default(),
        scrub: palisade::scrub::Scrub::default(),
        nat: palisade::nat::Nat::default(),
        lb: palisade::lb::Lb::default(),
        tls: palisade::tls::Tls::default(),
        dhcp: palisade::dhcp::Dhcp::default(),
        intel: palisade::intel::Intel::default(),
        dlp: palisade::dlp::Dlp::default(),
        geoip: None,
        ids: palisade::ids::Ids::default(),
        firewall: Firewall::default(),
        sets: vec![],
        conntrack: palisade::policy::model::Conntrack::default(),
        dns: Dns {
            rate_prefix: Default::default(),
            capacity_names: 0,
            bind: None,
            dga: None,
            cache: None,
            events: palisade::policy::model::DnsEvents::EVERY_QUERY,
            ports: vec![53],
            answers: AnswerBudget::UNLIMITED,
            ingress: Some(scope.clone()),
            egress: None,
            lists: vec![],
        },
    };
    let cases: Vec<Vec<Vec<u8>>> = vec![
        vec![],
        vec![vec![b'a'; 63]],
        vec![
            vec![b'a'; 63],
            vec![b'b'; 63],
            vec![b'c'; 63],
            vec![b'd'; 61],
        ],
        vec![
            vec![b'a'; 63],
            vec![b'b'; 63],
            vec![b'c'; 63],
            vec![b'd'; 62],
        ],
        (0..127).map(|_| vec![b'x']).collect(),
        (0..128).map(|_| vec![b'x']).collect(),
        vec![b"A.B".to_vec(), b"\x00\xff".to_vec()],
    ];
    for labels in cases {
        let msg = DnsQuery::new(labels.clone(), 1).build();
        let v = reference::decide(&policy, &scope, &msg, 0);
        let h = Message::from_vec(&msg);
        match (&v.labels, &h) {
            (Some(l), Ok(m)) => {
                let theirs: Vec<Vec<u8>> = m.queries[0]
                    .name()
                    .iter()
                    .map(<[u8]>::to_ascii_lowercase)
                    .collect();
                assert_eq!(l, &theirs);
            }
            (None, Err(_)) => {}
            _ => panic!(
                "reference {:?} vs hickory {:?} for {} bytes",
                v.labels.is_some(),
                h.is_ok(),
                wire(&labels).len()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The inspector's fast path (plain names of up to 4 labels and 64 wire bytes) and its
// boundaries: every case, on both sides of each limit, must decide as the reference does.

/// A label of `len` bytes that differs from every other such label by `tag`.
fn label_of(len: usize, tag: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[(i * 7 + usize::from(tag)) % 36])
        .collect()
}

/// A name of labels of the given lengths (the last one `com`-like).
fn name_of(lens: &[usize], tag: u8) -> Vec<Vec<u8>> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| label_of(n, tag.wrapping_add(i as u8)))
        .collect()
}

fn query(name_wire: &[u8]) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(name_wire);
    m.extend_from_slice(&[0, 1, 0, 1]);
    m
}

/// Runs `msg` through the XDP hook (IPv4 and IPv6) and the egress hook, and checks each
/// decision, its event and an NXDOMAIN answer against the reference. Returns the reason.
fn judge_like_the_reference(
    b: &mut Bench,
    policy: &Policy,
    scope: &DnsScope,
    msg: &[u8],
    what: &str,
) -> u32 {
    let want = reference::decide(policy, scope, msg, 0);
    let name = match &want.labels {
        Some(l) => wire_name_to_text(&wire(l)),
        None => ".".to_string(),
    };
    for (src, dst) in [("192.0.2.1", "192.0.2.53"), ("2001:db8::1", "2001:db8::53")] {
        let frame = Frame::dns_udp(src, dst, 1053, msg).build();
        let (action, out) = b.run_with_output(&frame).expect("test run");
        let got = one_event(b, what);
        assert_eq!(
            (got.reason, got.name.as_str()),
            (reason::name(want.reason), name.as_str()),
            "XDP vs reference from {src}: {what}"
        );
        let want_action = match want.reason {
            reason::PASS => XDP_PASS,
            reason::DNS_MALFORMED => XDP_DROP,
            _ if scope.action == DnsAction::Nxdomain => XDP_TX,
            _ => XDP_DROP,
        };
        assert_eq!(action, want_action, "XDP action from {src}: {what}");
        if action == XDP_TX {
            check_answer(&frame, &out, msg, question_len(msg), what);
        }
    }
    let ip = Frame::dns_udp("192.0.2.1", "192.0.2.53", 1053, msg).build_ip();
    let verdict = b.run_egress(&ip).expect("egress test run");
    let got = one_event(b, what);
    assert_eq!(
        (got.reason, got.name.as_str()),
        (reason::name(want.reason), name.as_str()),
        "egress vs reference: {what}"
    );
    assert_eq!(
        verdict,
        u32::from(want.reason == reason::PASS),
        "egress: {what}"
    );
    want.reason
}

#[test]
fn fast_path_boundaries_decide_as_the_reference() {
    let mut b = Bench::new().expect("loading and verifying the kernel programs (needs root)");
    // (what, labels): each listed exactly, and once more below a listed wildcard suffix.
    let listed: Vec<(&str, Vec<Vec<u8>>)> = vec![
        // 1+20 + 1+20 + 1+15 + 1+4 + 1 = 64 wire bytes: the longest fast-path name.
        ("4 labels, 64 bytes", name_of(&[20, 20, 15, 4], 1)),
        // One byte more: the byte walker's.
        ("4 labels, 65 bytes", name_of(&[20, 20, 16, 4], 2)),
        ("5 labels", name_of(&[3, 4, 5, 6, 3], 3)),
        ("1 label of 62 bytes (64 wire bytes)", name_of(&[62], 4)),
        ("1 label of 63 bytes", name_of(&[63], 5)),
        ("labels across word boundaries", name_of(&[7, 8, 9, 15], 6)),
        ("labels of 1 byte", name_of(&[1, 1, 1, 1], 7)),
    ];
    let suffix = name_of(&[9, 3], 40);
    let mut entries = Vec::new();
    for (_, labels) in &listed {
        entries.push(NameEntry {
            labels: labels.clone(),
            kind: NameMatch::Exact,
            qtypes: vec![],
            expires: None,
            max_entropy_bits: None,
            line: entries.len() + 1,
        });
    }
    entries.push(NameEntry {
        labels: suffix.clone(),
        kind: NameMatch::Subdomains,
        qtypes: vec![],
        expires: None,
        max_entropy_bits: None,
        line: entries.len() + 1,
    });

    // The messages: every listed name as sent (upper case too), unlisted neighbours, names
    // below the wildcard at the fast path's limits, and the shapes the fast path leaves to
    // the byte walker.
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for (what, labels) in &listed {
        cases.push(((*what).to_string(), query(&wire(labels))));
        let upper: Vec<Vec<u8>> = labels.iter().map(|l| l.to_ascii_uppercase()).collect();
        cases.push((format!("{what}, upper case"), query(&wire(&upper))));
        let mut other = labels.clone();
        other[0][0] ^= 1;
        cases.push((format!("{what}, one letter changed"), query(&wire(&other))));
    }
    for (what, below) in [
        // 1+24 + 1+23 + 1+9 + 1+3 + 1 = 64 wire bytes, then one more.
        (
            "below the wildcard, 4 labels, 64 bytes",
            name_of(&[24, 23], 50),
        ),
        (
            "below the wildcard, 4 labels, 65 bytes",
            name_of(&[24, 24], 51),
        ),
        ("below the wildcard, 5 labels", name_of(&[2, 2, 2], 52)),
        ("below the wildcard, 3 labels", name_of(&[5], 53)),
    ] {
        let mut labels = below;
        labels.extend(suffix.iter().cloned());
        let mut mixed = labels.clone();
        mixed[0] = mixed[0].to_ascii_uppercase();
        cases.push((what.to_string(), query(&wire(&labels))));
        cases.push((format!("{what}, upper case"), query(&wire(&mixed))));
    }
    // The suffix itself: a wildcard does not match its apex.
    cases.push(("the wildcard's apex".into(), query(&wire(&suffix))));
    // The root name: no label at all.
    cases.push(("the root name".into(), query(&[0])));
    // An empty label ends the name early: what follows is trailing bytes.
    let mut early = wire(&listed[0].1[..2]);
    early.truncate(early.len() - 1);
    early.extend_from_slice(&[0, 3, b'c', b'o', b'm', 0]);
    cases.push(("an empty label inside the name".into(), query(&early)));
    // A listed name behind a compression pointer: its wire form as one label's bytes, then a
    // pointer to them.
    let inner = wire(&listed[5].1);
    let mut pointed = vec![inner.len() as u8];
    pointed.extend_from_slice(&inner);
    pointed.extend_from_slice(&[0xc0, 13]);
    cases.push((
        "a compression pointer to a listed name".into(),
        query(&pointed),
    ));
    // A pointer as the name's first byte, back into the header (which reads as the root).
    cases.push(("a pointer into the header".into(), query(&[0xc0, 4])));
    // The reserved label types.
    cases.push(("a 0x40 label type".into(), query(&[0x41, b'a', 0])));
    // A name that does not end inside the message (no root byte, no question tail).
    let mut cut = query(&wire(&listed[0].1));
    cut.truncate(12 + 30);
    cases.push(("a name cut by the message's end".into(), cut));
    // The root byte is the message's last byte: no room for the type and class.
    let mut short = query(&wire(&listed[5].1));
    short.truncate(short.len() - 4);
    cases.push(("no type and class".into(), short));

    for (mode, action) in [
        (DnsMode::Blocklist, DnsAction::Nxdomain),
        (DnsMode::Blocklist, DnsAction::Drop),
        (DnsMode::Allowlist, DnsAction::Nxdomain),
    ] {
        let scope = DnsScope {
            mode,
            action,
            audit: false,
            lists: vec![0],
            block_malformed: true,
            rate: None,
            log_allowed: true,
        };
        let policy = Policy {
            shield: palisade::shield::Shield::default(),
            scrub: palisade::scrub::Scrub::default(),
            nat: palisade::nat::Nat::default(),
            lb: palisade::lb::Lb::default(),
            tls: palisade::tls::Tls::default(),
            dhcp: palisade::dhcp::Dhcp::default(),
            intel: palisade::intel::Intel::default(),
            dlp: palisade::dlp::Dlp::default(),
            geoip: None,
            ids: palisade::ids::Ids::default(),
            firewall: Firewall::default(),
            sets: vec![],
            conntrack: palisade::policy::model::Conntrack::default(),
            dns: Dns {
                events: palisade::policy::model::DnsEvents::EVERY_QUERY,
                capacity_names: 0,
                rate_prefix: Default::default(),
                bind: None,
                dga: None,
                cache: None,
                ports: vec![53],
                answers: AnswerBudget::UNLIMITED,
                ingress: Some(scope.clone()),
                egress: Some(DnsEgress {
                    scope: DnsScope {
                        action: DnsAction::Drop,
                        ..scope.clone()
                    },
                    cgroups: vec![],
                }),
                lists: vec![NameList {
                    name: "boundaries".into(),
                    entries: entries.clone(),
                }],
            },
        };
        b.install(&policy).expect("install");
        b.drain_dns_events();
        let mut blocked = 0;
        for (what, msg) in &cases {
            let what = format!("{mode:?} {action:?}: {what}: {msg:02x?}");
            let r = judge_like_the_reference(&mut b, &policy, &scope, msg, &what);
            blocked += usize::from(r != reason::PASS);
        }
        // Both outcomes occur in every mode: the cases test the match, not only the parse.
        assert!(blocked > 0 && blocked < cases.len(), "{mode:?}: {blocked}");
    }
}
