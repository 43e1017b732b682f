//! The DNS response cache (`[dns.cache]`) on crafted frames through `BPF_PROG_TEST_RUN`:
//! answers leave through the TC fill program, queries come in through the XDP firewall and
//! its DNS stage.
//!
//! A served answer is compared byte for byte with the frame this file builds on its own
//! (the query's ID and letter case, the resolver's records with their TTLs aged, both
//! checksums computed here), and parsed again with hickory-proto. Answers that must not be
//! cached (TC bit, another source, unsolicited, NXDOMAIN) are checked not to be, by the
//! counters and by the next query going on to the resolver.
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN). The tests share one loaded object and take
//! turns; the eviction test loads its own, with a cache of 4 entries.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard, OnceLock};

use aya::maps::{HashMap, MapData};
use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::RData,
};
use palisade::{
    craft::{DNS_FLAG_RD, DnsQuery, Frame},
    dns::cache::{self as dcache, DnsCache},
    policy::model::{
        AnswerBudget, Dns, DnsAction, DnsMode, DnsScope, Firewall, NameEntry, NameList, NameMatch,
        Policy,
    },
    policy::namelist,
    testrun::Bench,
};
use palisade_common::dns::cache::{
    CSTAT_DECLINED, CSTAT_HITS, CSTAT_INSERTED_NEW, CSTAT_INSERTS, CSTAT_MISSES, CSTAT_REJECTED,
    CSTAT_REMOVED, CacheEntry, CacheKey, Reject,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const A: u16 = 1;
const AAAA: u16 = 28;

const CLIENT: &str = "192.0.2.10";
const RESOLVER: &str = "198.51.100.53";
const OTHER: &str = "198.51.100.99";
const CLIENT6: &str = "2001:db8::10";
const RESOLVER6: &str = "2001:db8:53::1";

// ---------------------------------------------------------------------------------------
// Policy and harness

fn blocked(name: &str) -> NameEntry {
    NameEntry {
        kind: NameMatch::ApexAndSubdomains,
        ..namelist::entry(name, false, 0).expect("a valid name")
    }
}

/// A blocklist on ingress over `blocked.test` (and below), the cache in front of
/// `resolver`; `budget` answers a second per client prefix (0: none).
fn policy(resolver: &str, budget: u32, extra_block: Option<&str>) -> Policy {
    let mut entries = vec![blocked("blocked.test")];
    if let Some(n) = extra_block {
        entries.push(blocked(n));
    }
    Policy {
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
        conntrack: Default::default(),
        sets: vec![],
        dns: Dns {
            rate_prefix: Default::default(),
            capacity_names: 0,
            bind: None,
            dga: None,
            cache: Some(DnsCache::new(resolver.parse().expect("resolver"))),
            events: palisade::policy::model::DnsEvents::default(),
            ports: vec![53],
            answers: AnswerBudget {
                per_second: budget,
                burst: budget,
                ..AnswerBudget::default()
            },
            ingress: Some(DnsScope {
                mode: DnsMode::Blocklist,
                action: DnsAction::Nxdomain,
                audit: false,
                lists: vec![0],
                block_malformed: true,
                rate: None,
                log_allowed: false,
            }),
            egress: None,
            lists: vec![NameList {
                name: "test".into(),
                entries,
            }],
        },
    }
}

static BENCH: OnceLock<Mutex<Bench>> = OnceLock::new();

/// The shared object with `p` installed and the cache emptied.
fn bench(p: &Policy) -> MutexGuard<'static, Bench> {
    let mut b = BENCH
        .get_or_init(|| {
            Mutex::new(
                Bench::new().expect("loading and verifying the kernel programs (needs root)"),
            )
        })
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    b.install(p).expect("installing the policy");
    clear(&mut b);
    b
}

fn clear(b: &mut Bench) {
    let mut m: HashMap<&mut MapData, CacheKey, CacheEntry> =
        HashMap::try_from(b.map_mut(dcache::MAP).expect("cache map")).expect("typed");
    let keys: Vec<CacheKey> = m.keys().filter_map(Result::ok).collect();
    for k in keys {
        let _ = m.remove(&k);
    }
}

fn stats(b: &Bench) -> Vec<u64> {
    dcache::counters(&b.ebpf).expect("cache counters").to_vec()
}

fn rejected(r: Reject) -> usize {
    (CSTAT_REJECTED + r as u32) as usize
}

/// Runs `f` and checks that exactly the counters in `bumped` moved, by one each.
#[track_caller]
fn expect_counts<T>(b: &Bench, bumped: &[u32], f: impl FnOnce() -> T) -> T {
    let before = stats(b);
    let out = f();
    let after = stats(b);
    let mut want = before.clone();
    for &i in bumped {
        want[i as usize] += 1;
    }
    assert_eq!(after, want, "cache counters (before {before:?})");
    out
}

// ---------------------------------------------------------------------------------------
// Messages

/// A query for `name` (letter case as given) from `client`:`port`.
fn query(client: &str, resolver: &str, port: u16, id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let msg = DnsQuery::name(name, qtype)
        .with_id(id)
        .with_flags(DNS_FLAG_RD)
        .build();
    Frame::dns_udp(client, resolver, port, &msg).build()
}

/// The resolver's answer to `query_msg`: its question echoed, then a CNAME to
/// `web.example.test` (TTL `ttl1`) and an address record for it (TTL `ttl2`).
fn answer_msg(query_msg: &[u8], flags: u16, ttl1: u32, ttl2: u32, addr: &[u8]) -> Vec<u8> {
    let mut m = query_msg[..2].to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 2, 0, 0, 0, 0]);
    m.extend_from_slice(&query_msg[12..]);
    let qtype = u16::from_be_bytes([
        query_msg[query_msg.len() - 4],
        query_msg[query_msg.len() - 3],
    ]);
    m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1]);
    m.extend_from_slice(&ttl1.to_be_bytes());
    let target = b"\x03web\x07example\x04test\x00";
    m.extend_from_slice(&(target.len() as u16).to_be_bytes());
    let target_at = m.len();
    m.extend_from_slice(target);
    m.extend_from_slice(&[0xc0, target_at as u8]);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(&ttl2.to_be_bytes());
    m.extend_from_slice(&(addr.len() as u16).to_be_bytes());
    m.extend_from_slice(addr);
    m
}

const L4_V4: usize = 14 + 20;
const L4_V6: usize = 14 + 40;

fn dns_of(frame: &[u8]) -> &[u8] {
    let l4 = if frame[12..14] == [0x86, 0xdd] {
        L4_V6
    } else {
        L4_V4
    };
    &frame[l4 + 8..]
}

/// The answer frame leaving the resolver for the query `q` (a frame).
fn answer_frame(q: &[u8], from: &str, msg: &[u8]) -> Vec<u8> {
    let v6 = q[12..14] == [0x86, 0xdd];
    let l3 = 14;
    let (client, port) = if v6 {
        let a: [u8; 16] = q[l3 + 8..l3 + 24].try_into().expect("16 bytes");
        (
            Ipv6Addr::from(a).to_string(),
            u16::from_be_bytes([q[L4_V6], q[L4_V6 + 1]]),
        )
    } else {
        let a: [u8; 4] = q[l3 + 12..l3 + 16].try_into().expect("4 bytes");
        (
            Ipv4Addr::from(a).to_string(),
            u16::from_be_bytes([q[L4_V4], q[L4_V4 + 1]]),
        )
    };
    Frame::udp(from, &client, 53, port)
        .with_payload(msg)
        .build()
}

fn fill(b: &Bench, frame: &[u8]) {
    let (verdict, _) = b
        .run_tc(dcache::FILL, frame)
        .expect("BPF_PROG_TEST_RUN (TC)");
    assert_eq!(verdict, -1, "the fill never drops (TC_ACT_UNSPEC)");
}

/// One's-complement sum of big-endian words, folded.
fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|c| u64::from(c[0]) << 8 | u64::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The served answer this file expects for the query frame `q`: the query's ID, RD and
/// question bytes, the cached header's other flags and counts, `records` (TTLs already
/// aged by the caller), addresses, ports and MACs swapped, both checksums.
fn expected(q: &[u8], cached_flags: u16, records: &[u8]) -> Vec<u8> {
    let v6 = q[12..14] == [0x86, 0xdd];
    let l3 = 14;
    let l4 = if v6 { L4_V6 } else { L4_V4 };
    let qm = &q[l4 + 8..];
    let mut msg = qm[..2].to_vec();
    let flags = (cached_flags & !0x0110) | (u16::from_be_bytes([qm[2], qm[3]]) & 0x0110);
    msg.extend_from_slice(&flags.to_be_bytes());
    msg.extend_from_slice(&[0, 1, 0, 2, 0, 0, 0, 0]);
    msg.extend_from_slice(&qm[12..]);
    msg.extend_from_slice(records);

    let mut out = Vec::new();
    out.extend_from_slice(&q[6..12]);
    out.extend_from_slice(&q[0..6]);
    out.extend_from_slice(&q[12..14]);
    let udp_len = 8 + msg.len();
    let (src, dst) = if v6 {
        let qh = &q[l3..l4];
        let mut h = qh.to_vec();
        h[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        h[7] = 64;
        h[8..24].copy_from_slice(&qh[24..40]);
        h[24..40].copy_from_slice(&qh[8..24]);
        out.extend_from_slice(&h);
        (qh[24..40].to_vec(), qh[8..24].to_vec())
    } else {
        let qh = &q[l3..l4];
        let mut h = qh.to_vec();
        h[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        h[6..8].copy_from_slice(&[0x40, 0]);
        h[8] = 64;
        h[10..12].copy_from_slice(&[0, 0]);
        h[12..16].copy_from_slice(&qh[16..20]);
        h[16..20].copy_from_slice(&qh[12..16]);
        let c = !ones_sum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&h);
        (qh[16..20].to_vec(), qh[12..16].to_vec())
    };
    let mut udp = Vec::new();
    udp.extend_from_slice(&q[l4 + 2..l4 + 4]);
    udp.extend_from_slice(&q[l4..l4 + 2]);
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&msg);
    let mut pseudo = src;
    pseudo.extend_from_slice(&dst);
    if v6 {
        pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
    } else {
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    }
    pseudo.extend_from_slice(&udp);
    let mut c = !ones_sum(&pseudo);
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&udp);
    out
}

/// The records of `answer` (after its question) with the two TTLs replaced.
fn records_with_ttls(answer: &[u8], qlen: usize, ttl1: u32, ttl2: u32) -> Vec<u8> {
    let mut r = answer[12 + qlen..].to_vec();
    r[6..10].copy_from_slice(&ttl1.to_be_bytes());
    let second = 12 + 18;
    r[second + 6..second + 10].copy_from_slice(&ttl2.to_be_bytes());
    r
}

/// Moves every entry's storing time `secs` seconds back.
fn age_entries(b: &mut Bench, secs: u64) {
    let mut m: HashMap<&mut MapData, CacheKey, CacheEntry> =
        HashMap::try_from(b.map_mut(dcache::MAP).expect("cache map")).expect("typed");
    let keys: Vec<CacheKey> = m.keys().filter_map(Result::ok).collect();
    assert!(!keys.is_empty(), "the cache holds entries");
    for k in keys {
        let mut e = m.get(&k, 0).expect("entry");
        e.stored_ns -= secs * 1_000_000_000;
        m.insert(k, e, 0).expect("entry written back");
    }
}

// ---------------------------------------------------------------------------------------
// Tests

/// Miss, fill, then a hit for another client with another ID and another letter case:
/// answered in place, byte for byte, over IPv4 and IPv6.
#[test]
fn fresh_answer_served_with_the_querys_id_and_case() {
    for (client, resolver, qtype, addr) in [
        (CLIENT, RESOLVER, A, vec![192, 0, 2, 80]),
        (
            CLIENT6,
            RESOLVER6,
            AAAA,
            "2001:db8::80"
                .parse::<Ipv6Addr>()
                .expect("v6")
                .octets()
                .to_vec(),
        ),
    ] {
        let p = policy(
            &format!("{}", SocketAddr::new(resolver.parse().expect("ip"), 53)),
            0,
            None,
        );
        let b = bench(&p);
        let q1 = query(client, resolver, 40000, 0x1111, "www.example.test", qtype);
        let (verdict, _) =
            expect_counts(&b, &[CSTAT_MISSES], || b.run_with_output(&q1).expect("run"));
        assert_eq!(verdict, XDP_PASS, "a miss goes on to the resolver");
        let msg = answer_msg(dns_of(&q1), 0x8180, 3600, 300, &addr);
        expect_counts(&b, &[CSTAT_INSERTS, CSTAT_INSERTED_NEW], || {
            fill(&b, &answer_frame(&q1, resolver, &msg));
        });

        let q2 = query(client, resolver, 40001, 0xbeef, "WwW.eXaMpLe.TeSt", qtype);
        let (verdict, out) =
            expect_counts(&b, &[CSTAT_HITS], || b.run_with_output(&q2).expect("run"));
        assert_eq!(verdict, XDP_TX, "served from the cache");
        let qlen = "www.example.test".len() + 2 + 4;
        let want = expected(&q2, 0x8180, &records_with_ttls(&msg, qlen, 3600, 300));
        assert_eq!(out, want, "the served frame, byte for byte");

        let m = Message::from_vec(dns_of(&out)).expect("hickory parses the answer");
        assert_eq!(m.metadata.id, 0xbeef);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.queries[0].name().to_ascii(), "WwW.eXaMpLe.TeSt.");
        assert_eq!(m.answers.len(), 2);
        match &m.answers[1].data {
            RData::A(a) => assert_eq!(a.0.octets().to_vec(), addr),
            RData::AAAA(a) => assert_eq!(a.0.octets().to_vec(), addr),
            other => panic!("unexpected record {other:?}"),
        }
    }
}

/// TTLs are served aged by the entry's age; at the smallest TTL it expires (removed, a
/// miss, the query goes on).
#[test]
fn ttls_age_and_entries_expire_at_the_smallest_ttl() {
    let p = policy(&format!("{RESOLVER}:53"), 0, None);
    let mut b = bench(&p);
    let q1 = query(CLIENT, RESOLVER, 40010, 7, "age.example.test", A);
    assert_eq!(b.run_with_output(&q1).expect("run").0, XDP_PASS);
    let msg = answer_msg(dns_of(&q1), 0x8580, 3600, 100, &[192, 0, 2, 9]);
    fill(&b, &answer_frame(&q1, RESOLVER, &msg));

    age_entries(&mut b, 30);
    let q2 = query(CLIENT, RESOLVER, 40011, 8, "age.example.test", A);
    let (verdict, out) = b.run_with_output(&q2).expect("run");
    assert_eq!(verdict, XDP_TX);
    let qlen = "age.example.test".len() + 2 + 4;
    let want = expected(&q2, 0x8580, &records_with_ttls(&msg, qlen, 3570, 70));
    assert_eq!(out, want, "TTLs aged by 30 s");

    age_entries(&mut b, 70);
    let q3 = query(CLIENT, RESOLVER, 40012, 9, "age.example.test", A);
    let (verdict, _) = expect_counts(&b, &[CSTAT_REMOVED, CSTAT_MISSES], || {
        b.run_with_output(&q3).expect("run")
    });
    assert_eq!(verdict, XDP_PASS, "expired at 100 s");
    assert_eq!(dcache::entries(&b.ebpf).expect("entries"), 0);
}

/// Answers that must not be cached: the TC bit, NXDOMAIN, another server, no query
/// waiting for it (and a query's pending entry is used once).
#[test]
fn truncated_foreign_and_unsolicited_answers_are_not_cached() {
    let p = policy(&format!("{RESOLVER}:53"), 0, None);
    let b = bench(&p);
    let cases: [(&str, u16, &str, Reject); 3] = [
        ("tc.example.test", 0x8380, RESOLVER, Reject::Truncated),
        ("nx.example.test", 0x8183, RESOLVER, Reject::Rcode),
        ("other.example.test", 0x8180, OTHER, Reject::Source),
    ];
    for (i, (name, flags, from, why)) in cases.into_iter().enumerate() {
        let q = query(CLIENT, RESOLVER, 41000 + i as u16, 100 + i as u16, name, A);
        assert_eq!(b.run_with_output(&q).expect("run").0, XDP_PASS);
        let msg = answer_msg(dns_of(&q), flags, 600, 600, &[192, 0, 2, 1]);
        let before = stats(&b);
        fill(&b, &answer_frame(&q, from, &msg));
        let after = stats(&b);
        assert_eq!(
            after[rejected(why)],
            before[rejected(why)] + 1,
            "{name}: {why:?}"
        );
        assert_eq!(
            after[CSTAT_INSERTS as usize], before[CSTAT_INSERTS as usize],
            "{name}"
        );
        let again = query(CLIENT, RESOLVER, 42000 + i as u16, 200 + i as u16, name, A);
        assert_eq!(
            b.run_with_output(&again).expect("run").0,
            XDP_PASS,
            "{name}"
        );
    }

    // An answer nobody asked for (another ID than the query's).
    let q = query(CLIENT, RESOLVER, 43000, 300, "spoof.example.test", A);
    assert_eq!(b.run_with_output(&q).expect("run").0, XDP_PASS);
    let mut msg = answer_msg(dns_of(&q), 0x8180, 600, 600, &[203, 0, 113, 66]);
    msg[..2].copy_from_slice(&301u16.to_be_bytes());
    expect_counts(&b, &[CSTAT_REJECTED + Reject::Unsolicited as u32], || {
        fill(&b, &answer_frame(&q, RESOLVER, &msg));
    });
    // The real answer is cached once; a second copy of it finds no query waiting.
    let msg = answer_msg(dns_of(&q), 0x8180, 600, 600, &[192, 0, 2, 66]);
    expect_counts(&b, &[CSTAT_INSERTS, CSTAT_INSERTED_NEW], || {
        fill(&b, &answer_frame(&q, RESOLVER, &msg));
    });
    expect_counts(&b, &[CSTAT_REJECTED + Reject::Unsolicited as u32], || {
        fill(&b, &answer_frame(&q, RESOLVER, &msg));
    });
    assert_eq!(dcache::entries(&b.ebpf).expect("entries"), 1);
}

/// Policy first: a cached name blocked by a later policy gets the block's answer, never the
/// cached one. The answer budget and the group-address rule apply to cached answers too.
#[test]
fn policy_budget_and_group_addresses_come_before_the_cache() {
    let name = "later.example.test";
    let p = policy(&format!("{RESOLVER}:53"), 1, None);
    let mut b = bench(&p);
    let q = query(CLIENT, RESOLVER, 44000, 1, name, A);
    assert_eq!(b.run_with_output(&q).expect("run").0, XDP_PASS);
    let msg = answer_msg(dns_of(&q), 0x8180, 600, 600, &[192, 0, 2, 44]);
    fill(&b, &answer_frame(&q, RESOLVER, &msg));

    // To a broadcast MAC: not answered, counted, passed on.
    let mut bcast = query(CLIENT, RESOLVER, 44001, 2, name, A);
    bcast[..6].copy_from_slice(&[0xff; 6]);
    let (verdict, _) = expect_counts(&b, &[CSTAT_DECLINED], || {
        b.run_with_output(&bcast).expect("run")
    });
    assert_eq!(verdict, XDP_PASS);

    // A budget of one answer (burst 1): the second of two is passed on.
    let q2 = query(CLIENT, RESOLVER, 44002, 3, name, A);
    assert_eq!(b.run_with_output(&q2).expect("run").0, XDP_TX);
    let (verdict, _) = expect_counts(&b, &[CSTAT_DECLINED], || {
        b.run_with_output(&q2).expect("run")
    });
    assert_eq!(verdict, XDP_PASS, "budget spent");

    // The name blocked now: NXDOMAIN from the policy, the cache not consulted.
    let blocking = policy(&format!("{RESOLVER}:53"), 0, Some(name));
    b.install(&blocking).expect("install");
    let q3 = query(CLIENT, RESOLVER, 44003, 4, name, A);
    let (verdict, out) = expect_counts(&b, &[], || b.run_with_output(&q3).expect("run"));
    assert_eq!(verdict, XDP_TX);
    let m = Message::from_vec(dns_of(&out)).expect("parses");
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
}

/// A cache of 4 entries holding 6 answers: evictions counted (`inserted_new - removed -
/// entries`), and what is left is still served.
#[test]
fn capacity_evicts_and_counts() {
    let mut b = Bench::sized(&[(dcache::MAP, 4)]).expect("loading (needs root)");
    b.install(&policy(&format!("{RESOLVER}:53"), 0, None))
        .expect("install");
    for i in 0..6u16 {
        let name = format!("n{i}.example.test");
        let q = query(CLIENT, RESOLVER, 45000 + i, i, &name, A);
        assert_eq!(b.run_with_output(&q).expect("run").0, XDP_PASS);
        let msg = answer_msg(dns_of(&q), 0x8180, 600, 600, &[192, 0, 2, i as u8]);
        fill(&b, &answer_frame(&q, RESOLVER, &msg));
    }
    let c = dcache::counters(&b.ebpf).expect("counters");
    let entries = dcache::entries(&b.ebpf).expect("entries");
    assert_eq!(c[CSTAT_INSERTED_NEW as usize], 6);
    assert!(entries <= 4, "{entries} entries in a cache of 4");
    assert_eq!(dcache::evictions(&c, entries), 6 - entries);
    assert!(dcache::evictions(&c, entries) >= 2);
    // The newest answer is there.
    let q = query(CLIENT, RESOLVER, 45100, 99, "n5.example.test", A);
    assert_eq!(b.run_with_output(&q).expect("run").0, XDP_TX);
}
