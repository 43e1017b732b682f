//! The answers XDP gives blocked queries besides NXDOMAIN: `sinkhole` (A and AAAA answered
//! with configured addresses, other questions with NODATA) and `refused` (RCODE 5), run on
//! crafted frames through `BPF_PROG_TEST_RUN`.
//!
//! Each answer is compared byte for byte with the frame this file builds on its own from the
//! query (headers, lengths and both checksums computed here), parsed again with
//! hickory-proto, and checked against the counters and the event it produced.
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN). The tests share one loaded object and take
//! turns.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, OnceLock};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{RData, RecordType},
};
use palisade::{
    craft::{DNS_FLAG_CD, DNS_FLAG_RD, DnsQuery, DnsQuestion, Frame, dns_labels},
    policy::model::{
        AnswerBudget, Dns, DnsAction, DnsMode, DnsScope, Firewall, NameEntry, NameList, NameMatch,
        Policy, Sinkhole,
    },
    policy::namelist,
    testrun::{Bench, Counters},
};
use palisade_common::{
    dns::maps::{
        DNS_STATS_PER_SCOPE, SCOPE_INGRESS, STAT_BLOCKED, STAT_NXDOMAIN_SENT, STAT_QUERIES,
        STAT_REFUSED_SENT, STAT_SINKHOLE_SENT,
    },
    reason, stats,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const A: u16 = 1;
const MX: u16 = 15;
const TXT: u16 = 16;
const AAAA: u16 = 28;
const HTTPS: u16 = 65;

const CLIENT: &str = "192.0.2.10";
const RESOLVER: &str = "198.51.100.53";
const CLIENT6: &str = "2001:db8::10";
const RESOLVER6: &str = "2001:db8:53::1";

// ---------------------------------------------------------------------------------------
// Policies

fn blocked(name: &str) -> NameEntry {
    NameEntry {
        kind: NameMatch::ApexAndSubdomains,
        ..namelist::entry(name, false, 0).expect("a valid name")
    }
}

/// A blocklist on ingress with `action`, over `*.blocked.test` and `blocked.test`.
fn policy(action: DnsAction, answers: AnswerBudget) -> Policy {
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
            cache: None,
            events: palisade::policy::model::DnsEvents::EVERY_QUERY,
            ports: vec![53],
            answers,
            ingress: Some(DnsScope {
                mode: DnsMode::Blocklist,
                action,
                audit: false,
                lists: vec![0],
                block_malformed: true,
                rate: None,
                log_allowed: false,
            }),
            egress: None,
            lists: vec![NameList {
                name: "test".into(),
                entries: vec![blocked("blocked.test")],
            }],
        },
    }
}

fn sinkhole(v4: &str, v6: &str, ttl: u32) -> DnsAction {
    DnsAction::Sinkhole(Sinkhole {
        v4: v4.parse().expect("IPv4"),
        v6: v6.parse().expect("IPv6"),
        ttl,
    })
}

// ---------------------------------------------------------------------------------------
// Harness

static BENCH: OnceLock<Mutex<Bench>> = OnceLock::new();

fn bench(policy: &Policy) -> MutexGuard<'static, Bench> {
    let mut b = BENCH
        .get_or_init(|| {
            Mutex::new(
                Bench::new().expect("loading and verifying the kernel programs (needs root)"),
            )
        })
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    b.install(policy).expect("installing the policy");
    b.drain_dns_events();
    b.drain_events();
    b
}

fn counters(b: &Bench) -> Counters {
    b.counters().expect("counter maps")
}

fn ingress(stat: u32) -> usize {
    (u32::from(SCOPE_INGRESS) * DNS_STATS_PER_SCOPE + stat) as usize
}

/// Runs a blocked query that must be answered: XDP_TX, the counters of an answer of this
/// kind (`stat`), one event with `verdict`. Returns the answer frame.
#[track_caller]
fn answered(b: &mut Bench, frame: &[u8], stat: u32, verdict: &str) -> Vec<u8> {
    let before = counters(b);
    let (action, out) = b.run_with_output(frame).expect("BPF_PROG_TEST_RUN");
    let after = counters(b);
    assert_eq!(action, XDP_TX, "answered: {frame:02x?}");
    let mut x = before.clone();
    x.stats[stats::PACKETS as usize] += 1;
    x.stats[stats::ANSWERED as usize] += 1;
    x.reasons[reason::DNS_BLOCKED as usize] += 1;
    x.dns[ingress(STAT_QUERIES)] += 1;
    x.dns[ingress(STAT_BLOCKED)] += 1;
    x.dns[ingress(stat)] += 1;
    assert_eq!(after, x, "counters (before {before:?})");
    let events = b.drain_dns_events();
    assert_eq!(events.len(), 1, "one event: {events:?}");
    assert_eq!(
        (events[0].verdict, events[0].reason),
        (verdict, "dns-blocked"),
        "{events:?}"
    );
    out
}

// ---------------------------------------------------------------------------------------
// The answer this file expects, built from the query on its own

/// The one's-complement sum of big-endian 16-bit words, folded (an odd byte is padded).
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

/// The answer to the UDP query `query` (with `vlans` tags): RCODE `rcode` and, when given,
/// one answer record after the question.
fn expected(query: &[u8], vlans: usize, rcode: u8, record: Option<&[u8]>) -> Vec<u8> {
    let l3 = 14 + 4 * vlans;
    let v6 = query[l3] >> 4 == 6;
    let l4 = l3 + if v6 { 40 } else { 20 };
    let dns = l4 + 8;
    let q = &query[dns..];
    // The question as it lies in the query: labels up to the root byte or a pointer.
    let mut end = 12;
    loop {
        match q[end] {
            0 => {
                end += 1;
                break;
            }
            b if b & 0xc0 == 0xc0 => {
                end += 2;
                break;
            }
            len => end += 1 + usize::from(len),
        }
    }
    let question = &q[12..end + 4];
    let mut msg = vec![
        q[0],
        q[1],
        // QR; opcode and RD as asked; AA and TC clear.
        0x80 | (q[2] & 0x79),
        // RA; Z and AD clear; CD as asked; the RCODE.
        0x80 | (q[3] & 0x10) | rcode,
        0,
        1,
        0,
        u8::from(record.is_some()),
        0,
        0,
        0,
        0,
    ];
    msg.extend_from_slice(question);
    if let Some(r) = record {
        msg.extend_from_slice(r);
    }

    let mut out = Vec::new();
    out.extend_from_slice(&query[6..12]);
    out.extend_from_slice(&query[0..6]);
    out.extend_from_slice(&query[12..l3]);
    let udp_len = 8 + msg.len();
    let (src, dst) = if v6 {
        let qh = &query[l3..l4];
        let mut h = qh.to_vec();
        h[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        h[7] = 64;
        h[8..24].copy_from_slice(&qh[24..40]);
        h[24..40].copy_from_slice(&qh[8..24]);
        out.extend_from_slice(&h);
        (qh[24..40].to_vec(), qh[8..24].to_vec())
    } else {
        let qh = &query[l3..l4];
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
    udp.extend_from_slice(&query[l4 + 2..l4 + 4]);
    udp.extend_from_slice(&query[l4..l4 + 2]);
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&msg);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
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

/// The sinkhole record this file expects for an A (4-byte) or AAAA (16-byte) address.
fn record(qtype: u16, ttl: u32, addr: &[u8]) -> Vec<u8> {
    let mut r = vec![0xc0, 12];
    r.extend_from_slice(&qtype.to_be_bytes());
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&(addr.len() as u16).to_be_bytes());
    r.extend_from_slice(addr);
    r
}

#[track_caller]
fn same_bytes(got: &[u8], want: &[u8]) {
    assert_eq!(
        got.len(),
        want.len(),
        "length: got {got:02x?}, want {want:02x?}"
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "byte {i}: got {got:02x?}, want {want:02x?}");
    }
}

/// The DNS message of an answer frame, parsed by hickory.
fn parsed(frame: &[u8], vlans: usize) -> Message {
    let l3 = 14 + 4 * vlans;
    let dns = l3 + if frame[l3] >> 4 == 6 { 40 } else { 20 } + 8;
    Message::from_vec(&frame[dns..]).expect("hickory parses the answer")
}

fn udp_query(v6: bool, msg: &[u8]) -> Vec<u8> {
    if v6 {
        Frame::dns_udp(CLIENT6, RESOLVER6, 40000, msg).build()
    } else {
        Frame::dns_udp(CLIENT, RESOLVER, 40000, msg).build()
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn sinkhole_answers_a_and_aaaa_with_the_configured_addresses() {
    let p = policy(
        sinkhole("203.0.113.7", "2001:db8::7", 300),
        AnswerBudget::UNLIMITED,
    );
    let mut b = bench(&p);
    // Odd and even question lengths (the record's checksum share lands on both parities),
    // both transports, with and without an OPT record (never echoed: the answer may then
    // be shorter than the query), letter case kept.
    for name in [
        "blocked.test",
        "A.Blocked.Test",
        "xy.blocked.test",
        "b.blocked.test",
    ] {
        for v6 in [false, true] {
            for edns in [None, Some(1232)] {
                for (qtype, addr) in [
                    (A, Ipv4Addr::new(203, 0, 113, 7).octets().to_vec()),
                    (
                        AAAA,
                        "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec(),
                    ),
                ] {
                    let mut q = DnsQuery::name(name, qtype).with_id(0xa55a);
                    if let Some(size) = edns {
                        q = q.with_edns(size);
                    }
                    let frame = udp_query(v6, &q.build());
                    let out = answered(&mut b, &frame, STAT_SINKHOLE_SENT, "sinkhole");
                    let rr = record(qtype, 300, &addr);
                    same_bytes(&out, &expected(&frame, 0, 0, Some(&rr)));
                    if edns.is_none() {
                        assert_eq!(out.len(), frame.len() + rr.len(), "grown by the record");
                    }

                    let m = parsed(&out, 0);
                    assert_eq!(m.metadata.message_type, MessageType::Response);
                    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                    assert_eq!(m.metadata.id, 0xa55a);
                    assert_eq!(m.answers.len(), 1, "{m:?}");
                    let a = &m.answers[0];
                    assert_eq!(a.ttl, 300);
                    assert_eq!(a.name, m.queries[0].name().clone(), "owner is the question");
                    match (&a.data, qtype) {
                        (RData::A(ip), A) => assert_eq!(ip.0, Ipv4Addr::new(203, 0, 113, 7)),
                        (RData::AAAA(ip), AAAA) => {
                            assert_eq!(ip.0, "2001:db8::7".parse::<Ipv6Addr>().unwrap());
                        }
                        other => panic!("unexpected record {other:?}"),
                    }
                    assert!(m.edns.is_none() && m.additionals.is_empty());
                }
            }
        }
    }
    // An allowed name is untouched.
    let frame = udp_query(false, &DnsQuery::name("fine.test", A).build());
    let (action, out) = b.run_with_output(&frame).expect("test_run");
    assert_eq!((action, out), (XDP_PASS, frame));
}

#[test]
fn sinkhole_defaults_to_unspecified_addresses() {
    let p = policy(
        DnsAction::Sinkhole(Sinkhole::default()),
        AnswerBudget::UNLIMITED,
    );
    let mut b = bench(&p);
    for (qtype, addr) in [(A, vec![0u8; 4]), (AAAA, vec![0u8; 16])] {
        let frame = udp_query(false, &DnsQuery::name("blocked.test", qtype).build());
        let out = answered(&mut b, &frame, STAT_SINKHOLE_SENT, "sinkhole");
        let rr = record(qtype, Sinkhole::DEFAULT_TTL, &addr);
        same_bytes(&out, &expected(&frame, 0, 0, Some(&rr)));
    }
}

#[test]
fn sinkhole_gives_nodata_to_other_questions() {
    let p = policy(sinkhole("10.9.8.7", "fd00::1", 60), AnswerBudget::UNLIMITED);
    let mut b = bench(&p);
    for qtype in [MX, TXT, HTTPS, 255] {
        for v6 in [false, true] {
            let frame = udp_query(v6, &DnsQuery::name("c.blocked.test", qtype).build());
            let out = answered(&mut b, &frame, STAT_SINKHOLE_SENT, "sinkhole");
            same_bytes(&out, &expected(&frame, 0, 0, None));
            let m = parsed(&out, 0);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.answers.is_empty(), "NODATA: {m:?}");
        }
    }
    // An A question of another class (CHAOS) is not given an IN address.
    let mut q = DnsQuestion::new(dns_labels("blocked.test"), A);
    q.qclass = 3;
    let mut msg = DnsQuery::name("x", A);
    msg.questions = vec![q];
    let frame = udp_query(false, &msg.build());
    let out = answered(&mut b, &frame, STAT_SINKHOLE_SENT, "sinkhole");
    same_bytes(&out, &expected(&frame, 0, 0, None));
}

#[test]
fn sinkhole_through_a_vlan_tag_and_behind_a_pointer() {
    let p = policy(sinkhole("192.0.2.99", "::", 5), AnswerBudget::UNLIMITED);
    let mut b = bench(&p);
    for (src, dst) in [(CLIENT, RESOLVER), (CLIENT6, RESOLVER6)] {
        let frame = Frame::dns_udp(
            src,
            dst,
            5353,
            &DnsQuery::name("Vlan.Blocked.Test", A)
                .with_flags(DNS_FLAG_RD | DNS_FLAG_CD)
                .with_edns(512)
                .build(),
        )
        .with_vlans(&[42], false)
        .build();
        let out = answered(&mut b, &frame, STAT_SINKHOLE_SENT, "sinkhole");
        let rr = record(A, 5, &[192, 0, 2, 99]);
        same_bytes(&out, &expected(&frame, 1, 0, Some(&rr)));
        let m = parsed(&out, 1);
        assert!(m.metadata.checking_disabled && m.metadata.recursion_desired);
    }
    // A name that ends in a compression pointer (to the header's QDCOUNT high byte, a zero:
    // the root) is echoed with its pointer, and the record's owner points at it.
    for v6 in [false, true] {
        let frame = udp_query(
            v6,
            &DnsQuery::name("p.blocked.test", AAAA)
                .with_pointer(4)
                .build(),
        );
        let out = answered(&mut b, &frame, STAT_SINKHOLE_SENT, "sinkhole");
        let rr = record(AAAA, 5, &[0; 16]);
        same_bytes(&out, &expected(&frame, 0, 0, Some(&rr)));
    }
}

#[test]
fn refused_answers_with_rcode_5() {
    let p = policy(DnsAction::Refused, AnswerBudget::UNLIMITED);
    let mut b = bench(&p);
    for name in ["blocked.test", "Ab.blocked.test"] {
        for qtype in [A, AAAA, MX] {
            for v6 in [false, true] {
                let frame = udp_query(
                    v6,
                    &DnsQuery::name(name, qtype)
                        .with_id(7)
                        .with_edns(4096)
                        .build(),
                );
                let out = answered(&mut b, &frame, STAT_REFUSED_SENT, "refused");
                same_bytes(&out, &expected(&frame, 0, 5, None));
                assert!(out.len() < frame.len(), "never larger than the query");
                let m = parsed(&out, 0);
                assert_eq!(m.metadata.response_code, ResponseCode::Refused);
                assert!(m.answers.is_empty());
                assert_eq!(m.queries[0].query_type(), RecordType::from(qtype));
            }
        }
    }
}

#[test]
fn nxdomain_counts_apart_from_the_new_answers() {
    let p = policy(DnsAction::Nxdomain, AnswerBudget::UNLIMITED);
    let mut b = bench(&p);
    let frame = udp_query(false, &DnsQuery::name("blocked.test", A).build());
    let out = answered(&mut b, &frame, STAT_NXDOMAIN_SENT, "nxdomain");
    same_bytes(&out, &expected(&frame, 0, 3, None));
}

/// The sinkhole spends the same answer budget as NXDOMAIN, and never answers a group
/// address: past the budget or to a broadcast, a blocked query is dropped.
#[test]
fn sinkhole_answers_follow_the_budget_and_the_group_rule() {
    let budget = AnswerBudget {
        per_second: 1,
        burst: 2,
        prefix_v4: 24,
        prefix_v6: 56,
    };
    let p = policy(sinkhole("0.0.0.0", "::", 60), budget);
    let mut b = bench(&p);
    // A prefix of its own (budgets outlive a policy).
    let client = format!("203.0.113.{}", std::process::id() % 200 + 1);
    let frame = Frame::dns_udp(
        &client,
        RESOLVER,
        40002,
        &DnsQuery::name("blocked.test", A).build(),
    )
    .build();
    let mut answers = 0;
    let mut drops = 0;
    let before = counters(&b);
    for _ in 0..5 {
        let (action, _) = b.run_with_output(&frame).expect("test_run");
        match action {
            XDP_TX => answers += 1,
            XDP_DROP => drops += 1,
            other => panic!("action {other}"),
        }
    }
    let after = counters(&b);
    assert_eq!((answers, drops), (2, 3), "a burst of 2, then dropped");
    assert_eq!(
        after.reasons[reason::DNS_ANSWER_BUDGET as usize]
            - before.reasons[reason::DNS_ANSWER_BUDGET as usize],
        3
    );
    assert_eq!(
        after.dns[ingress(STAT_SINKHOLE_SENT)] - before.dns[ingress(STAT_SINKHOLE_SENT)],
        2
    );
    b.drain_dns_events();

    let p = policy(sinkhole("0.0.0.0", "::", 60), AnswerBudget::UNLIMITED);
    b.install(&p).expect("install");
    let bcast = Frame::dns_udp(
        CLIENT,
        "255.255.255.255",
        40003,
        &DnsQuery::name("blocked.test", A).build(),
    )
    .build();
    let before = counters(&b);
    let (action, _) = b.run_with_output(&bcast).expect("test_run");
    let after = counters(&b);
    assert_eq!(action, XDP_DROP);
    assert_eq!(
        after.reasons[reason::DNS_GROUP_ADDRESS as usize]
            - before.reasons[reason::DNS_GROUP_ADDRESS as usize],
        1
    );
    assert_eq!(
        after.dns[ingress(STAT_SINKHOLE_SENT)],
        before.dns[ingress(STAT_SINKHOLE_SENT)]
    );
    b.drain_dns_events();
}
