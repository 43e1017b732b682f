//! The XDP DNS inspector (`palisade_dns_ingress`, tail-called by the firewall), run on
//! crafted frames through `BPF_PROG_TEST_RUN`.
//!
//! Every check is build → run → check: the XDP action, the exact movement of the global
//! counters, the drops per reason and the per-scope DNS counters, and the DNS event (scope,
//! verdict, reason, name, query type, client, list). NXDOMAIN answers are checked byte by
//! byte and parsed again with hickory-proto.
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN). Loading and verifying the object takes seconds,
//! so the tests of this file share one loaded object and take turns: each installs its own
//! policy first. Rate-limit buckets outlive a policy, so each test that uses them has its
//! own client addresses.

use std::sync::{Mutex, MutexGuard, OnceLock};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::RecordType,
};
use palisade::{
    craft::{
        DNS_FLAG_AD, DNS_FLAG_CD, DNS_FLAG_QR, DNS_FLAG_RD, DnsQuery, DnsQuestion, ExtHeader,
        Frame, dns_labels,
    },
    dns::reference,
    events::DnsDecision,
    firewall::apply,
    policy::{
        model::{
            AnswerBudget, Dns, DnsAction, DnsMode, DnsScope, Firewall, NameEntry, NameList,
            NameMatch, Policy, QueryRate, SourcePrefix,
        },
        namelist::{self, parse_name},
    },
    testrun::{Bench, Counters, DNS_EGRESS, DNS_INGRESS, FIREWALL},
};
use palisade_common::{
    dns::{
        entropy,
        maps::{
            DNS_STATS_PER_SCOPE, FILTER_MIN_WORDS, SCOPE_INGRESS, STAT_ALLOWED, STAT_AUDITED,
            STAT_BLOCKED, STAT_NXDOMAIN_SENT, STAT_QUERIES, STAT_TCP,
        },
    },
    packet::{self, Frame as Parsed, IPPROTO_TCP, TCP_SYN},
    reason, stats,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const A: u16 = 1;
const MX: u16 = 15;
const TXT: u16 = 16;
const AAAA: u16 = 28;

const CLIENT: &str = "192.0.2.10";
const RESOLVER: &str = "198.51.100.53";
const CLIENT6: &str = "2001:db8::10";
const RESOLVER6: &str = "2001:db8:53::1";

// ---------------------------------------------------------------------------------------
// Policies

/// One list entry from its text as a policy file writes it (`*.name` for subdomains).
fn entry(text: &str) -> NameEntry {
    namelist::entry(text, false, 0).unwrap_or_else(|e| panic!("bad test name {text}: {e}"))
}

/// `text` and every name below it.
fn apex_and_below(text: &str) -> NameEntry {
    NameEntry {
        kind: NameMatch::ApexAndSubdomains,
        ..entry(text)
    }
}

fn with_qtypes(e: NameEntry, qtypes: &[u16]) -> NameEntry {
    NameEntry {
        qtypes: qtypes.to_vec(),
        ..e
    }
}

fn with_expiry(e: NameEntry, unix: u64) -> NameEntry {
    NameEntry {
        expires: Some(unix),
        ..e
    }
}

fn with_entropy(e: NameEntry, bits: u32) -> NameEntry {
    NameEntry {
        max_entropy_bits: Some(bits),
        ..e
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An ingress scope with the policy file's defaults: NXDOMAIN answers, malformed queries
/// blocked (in both modes), list 0.
fn scope(mode: DnsMode) -> DnsScope {
    DnsScope {
        mode,
        action: DnsAction::Nxdomain,
        audit: false,
        lists: vec![0],
        block_malformed: true,
        rate: None,
        log_allowed: false,
    }
}

fn allowlist() -> DnsScope {
    scope(DnsMode::Allowlist)
}

fn blocklist() -> DnsScope {
    scope(DnsMode::Blocklist)
}

/// An allow-everything firewall with `scope` on ingress over `entries` (list 0). No answer
/// budget: the tests here answer far more than one client prefix's default budget; the
/// budget has its own test.
fn policy(scope: Option<DnsScope>, entries: Vec<NameEntry>, ports: &[u16]) -> Policy {
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
            ports: ports.to_vec(),
            answers: AnswerBudget::UNLIMITED,
            ingress: scope,
            egress: None,
            lists: vec![NameList {
                name: "test".into(),
                entries,
            }],
        },
    }
}

// ---------------------------------------------------------------------------------------
// Frames

fn query(name: &str, qtype: u16) -> Vec<u8> {
    DnsQuery::name(name, qtype).build()
}

fn udp(msg: &[u8]) -> Vec<u8> {
    Frame::dns_udp(CLIENT, RESOLVER, 40000, msg).build()
}

fn udp_from(client: &str, msg: &[u8]) -> Vec<u8> {
    let resolver = if client.contains(':') {
        RESOLVER6
    } else {
        RESOLVER
    };
    Frame::dns_udp(client, resolver, 40001, msg).build()
}

fn udp6(msg: &[u8]) -> Vec<u8> {
    Frame::dns_udp(CLIENT6, RESOLVER6, 40000, msg).build()
}

/// A PSH+ACK segment from `sport` with sequence number `seq` carrying `payload`.
fn tcp_at(sport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    use palisade_common::packet::{TCP_ACK, TCP_PSH};
    Frame::tcp(CLIENT, RESOLVER, sport, 53, TCP_PSH | TCP_ACK)
        .with_tcp_seq(seq)
        .with_payload(payload)
        .build()
}

/// Opens a DNS-over-TCP stream from `sport` (its SYN is not a query); its first data
/// segment has sequence number 1.
fn open_tcp(t: &mut T, sport: u16) {
    t.check(
        &Frame::dns_tcp_syn(CLIENT, RESOLVER, sport).build(),
        Untouched,
        MALFORMED,
    );
}

fn q(name: &str, qtype: u16) -> Vec<u8> {
    udp(&query(name, qtype))
}

/// Labels given one by one (a label may contain a dot).
fn raw(labels: &[&[u8]]) -> Vec<Vec<u8>> {
    labels.iter().map(|l| l.to_vec()).collect()
}

// ---------------------------------------------------------------------------------------
// Harness

/// What must happen to one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Inspected and allowed: XDP_PASS.
    Allow,
    /// Blocked for this reason and answered NXDOMAIN: XDP_TX.
    Nx(u32),
    /// Blocked for this reason and dropped.
    Drop(u32),
    /// Audit mode: would have been blocked for this reason, passed.
    Audit(u32),
    /// Not a DNS query the inspector counts (other port, DNS off, TCP without payload):
    /// passed by the firewall, no DNS counter moves, no event.
    Untouched,
}

use Want::{Allow, Audit, Drop, Nx, Untouched};

fn counters(b: &Bench) -> Counters {
    b.counters().expect("counter maps")
}

fn ingress_stat(stat: u32) -> usize {
    (u32::from(SCOPE_INGRESS) * DNS_STATS_PER_SCOPE + stat) as usize
}

static BENCH: OnceLock<Mutex<Bench>> = OnceLock::new();

/// The loaded object, for this test alone until the guard drops.
fn bench() -> MutexGuard<'static, Bench> {
    BENCH
        .get_or_init(|| {
            Mutex::new(
                Bench::new().expect("loading and verifying the kernel programs (needs root)"),
            )
        })
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The shared object with a policy installed.
struct T {
    b: MutexGuard<'static, Bench>,
    policy: Policy,
}

fn setup(scope: DnsScope, entries: Vec<NameEntry>) -> T {
    setup_policy(policy(Some(scope), entries, &[53]))
}

fn setup_policy(policy: Policy) -> T {
    let mut b = bench();
    b.install(&policy).expect("installing the policy");
    // Whatever an earlier (possibly failed) test left behind.
    b.drain_dns_events();
    b.drain_events();
    T { b, policy }
}

/// What the event of a check must say besides verdict and reason.
#[derive(Clone, Copy, Debug)]
struct Ev<'a> {
    /// Zone-file text of the case-folded name, `.` when it could not be parsed.
    name: &'a str,
    qtype: &'a str,
}

/// The event of a query that could not be parsed.
const MALFORMED: Ev<'static> = Ev {
    name: ".",
    qtype: "TYPE0",
};

fn ev<'a>(name: &'a str, qtype: &'a str) -> Ev<'a> {
    Ev { name, qtype }
}

impl T {
    /// Replaces the policy (the lock is kept).
    fn again(&mut self, scope: DnsScope, entries: Vec<NameEntry>) {
        self.again_policy(policy(Some(scope), entries, &[53]));
    }

    fn again_policy(&mut self, policy: Policy) {
        self.b.install(&policy).expect("installing the policy");
        self.policy = policy;
    }

    fn scope(&self) -> &DnsScope {
        self.policy.dns.ingress.as_ref().expect("an ingress scope")
    }

    /// Runs `frame` and checks the action, every counter and the event. Returns the frame
    /// as the program left it and the event, if any.
    #[track_caller]
    fn check(&mut self, frame: &[u8], want: Want, e: Ev<'_>) -> (Vec<u8>, Option<DnsDecision>) {
        let what = format!("{want:?} {e:?} for frame {frame:02x?}");
        let before = counters(&self.b);
        let (action, out) = self.b.run_with_output(frame).expect("BPF_PROG_TEST_RUN");
        let after = counters(&self.b);
        let events = self.b.drain_dns_events();
        assert_eq!(self.b.drain_events(), vec![], "no firewall events: {what}");

        let Ok(Parsed::Ip(p)) = packet::parse(frame) else {
            panic!("test frame does not parse: {what}")
        };
        let is_tcp = p.proto == IPPROTO_TCP;
        let log_allowed = self
            .policy
            .dns
            .ingress
            .as_ref()
            .is_some_and(|s| s.log_allowed);

        let want_action = match want {
            Allow | Audit(_) | Untouched => XDP_PASS,
            Nx(_) => XDP_TX,
            Drop(_) => XDP_DROP,
        };
        assert_eq!(action, want_action, "XDP action: {what}");

        let mut x = before.clone();
        x.stats[stats::PACKETS as usize] += 1;
        if want != Untouched {
            x.dns[ingress_stat(STAT_QUERIES)] += 1;
            if is_tcp {
                x.dns[ingress_stat(STAT_TCP)] += 1;
            }
        }
        match want {
            Allow => {
                x.stats[stats::PASSED as usize] += 1;
                x.dns[ingress_stat(STAT_ALLOWED)] += 1;
            }
            Untouched => x.stats[stats::PASSED as usize] += 1,
            Audit(_) => {
                x.stats[stats::PASSED as usize] += 1;
                x.dns[ingress_stat(STAT_AUDITED)] += 1;
            }
            Nx(r) => {
                x.stats[stats::ANSWERED as usize] += 1;
                x.reasons[r as usize] += 1;
                x.dns[ingress_stat(STAT_BLOCKED)] += 1;
                x.dns[ingress_stat(STAT_NXDOMAIN_SENT)] += 1;
            }
            Drop(r) => {
                x.stats[stats::DROPPED as usize] += 1;
                x.reasons[r as usize] += 1;
                x.dns[ingress_stat(STAT_BLOCKED)] += 1;
            }
        }
        assert_eq!(after, x, "counters (before {before:?}): {what}");

        let (verdict, r) = match want {
            Allow => ("allow", reason::PASS),
            Nx(r) => ("nxdomain", r),
            Drop(r) => ("drop", r),
            Audit(r) => ("audit", r),
            Untouched => ("", 0),
        };
        let logged = match want {
            Allow => log_allowed,
            Untouched => false,
            _ => true,
        };
        if !logged {
            assert_eq!(events, vec![], "no DNS event: {what}");
            return (out, None);
        }
        assert_eq!(events.len(), 1, "one DNS event: {what}: {events:?}");
        let got = events.into_iter().next().expect("one event");
        // The deciding entry's list: the only list (0) when an entry decided, none when no
        // entry matched, the query was malformed or rate-limited.
        let parsed = e.name != ".";
        let list = match r {
            reason::DNS_BLOCKED | reason::DNS_ENTROPY | reason::DNS_EXPIRED => Some(0),
            // Not answered though blocked: the blocking entry's list (the tests of these
            // block by a blocklist entry).
            reason::DNS_GROUP_ADDRESS | reason::DNS_ANSWER_BUDGET => Some(0),
            reason::PASS if parsed && self.scope().mode == DnsMode::Allowlist => Some(0),
            _ => None,
        };
        let generation = apply::control(&self.b.ebpf).expect("CONTROL").active_gen;
        assert_eq!(
            (
                got.kind,
                got.scope,
                got.verdict,
                got.reason,
                got.name.as_str(),
                got.qtype.as_str()
            ),
            ("dns", "ingress", verdict, reason::name(r), e.name, e.qtype),
            "event: {what}: {got:?}"
        );
        let client = addr(p.family, p.src);
        assert_eq!(
            (
                got.client,
                got.client_port,
                got.tcp,
                got.list,
                got.generation
            ),
            (Some(client), p.sport, is_tcp, list, generation),
            "event origin: {what}: {got:?}"
        );
        assert_eq!(
            (got.pid, got.uid, got.comm.as_deref(), got.cgroup_id),
            (None, None, None, None),
            "no process on ingress: {got:?}"
        );
        (out, Some(got))
    }

    /// Runs one TCP segment and checks the action, the reason counter and how many queries
    /// were counted (every message of the segment that was looked at).
    #[track_caller]
    fn run_tcp(&mut self, sport: u16, seq: u32, flags: u8, payload: &[u8], want: Want, n: u64) {
        let frame = Frame::tcp(CLIENT, RESOLVER, sport, 53, flags)
            .with_tcp_seq(seq)
            .with_payload(payload)
            .build();
        let what = format!("{want:?} for port {sport} seq {seq} flags {flags:#x}");
        let before = counters(&self.b);
        let (action, _) = self.b.run_with_output(&frame).expect("BPF_PROG_TEST_RUN");
        let after = counters(&self.b);
        self.b.drain_dns_events();
        let (want_action, r) = match want {
            Allow => (XDP_PASS, reason::PASS),
            Drop(r) => (XDP_DROP, r),
            other => panic!("run_tcp checks passes and drops only, not {other:?}"),
        };
        assert_eq!(action, want_action, "XDP action: {what}");
        if r != reason::PASS {
            assert_eq!(
                after.reasons[r as usize],
                before.reasons[r as usize] + 1,
                "reason counter: {what}"
            );
        }
        let q = ingress_stat(STAT_QUERIES);
        assert_eq!(after.dns[q], before.dns[q] + n, "queries counted: {what}");
    }

    #[track_caller]
    fn checks(&mut self, cases: &[(Vec<u8>, Want, Ev<'_>)]) {
        for (frame, want, e) in cases {
            self.check(frame, *want, *e);
        }
    }
}

/// An address as the parser stores it (IPv4 mapped into IPv6).
fn addr(family: u8, a: [u8; 16]) -> std::net::IpAddr {
    if family == packet::FAMILY_V4 {
        std::net::Ipv4Addr::new(a[12], a[13], a[14], a[15]).into()
    } else {
        std::net::Ipv6Addr::from(a).into()
    }
}

// ---------------------------------------------------------------------------------------
// Loading

#[test]
fn programs_load_within_the_verifier_budget() {
    use aya::programs::{CgroupSkb, Xdp};
    let b = bench();
    let xdp = |name: &str| -> u32 {
        let p: &Xdp = b
            .ebpf
            .program(name)
            .expect("program")
            .try_into()
            .expect("XDP");
        p.info()
            .expect("program info")
            .verified_instruction_count()
            .expect("kernel reports it")
    };
    let ingress = xdp(DNS_INGRESS);
    let firewall = xdp(FIREWALL);
    let egress = {
        let p: &CgroupSkb = b
            .ebpf
            .program(DNS_EGRESS)
            .expect("program")
            .try_into()
            .expect("cgroup_skb");
        p.info()
            .expect("program info")
            .verified_instruction_count()
            .expect("kernel reports it")
    };
    println!(
        "verified instructions: {DNS_INGRESS} {ingress}, {DNS_EGRESS} {egress}, {FIREWALL} {firewall}"
    );
    for (name, n) in [(DNS_INGRESS, ingress), (DNS_EGRESS, egress)] {
        assert!(n > 0, "{name}: {n}");
        assert!(
            n < 500_000,
            "{name} needs {n} verified instructions: too close to the 1,000,000 limit"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Matching

#[test]
fn blocklist_exact_wildcard_and_apex_and_subdomains() {
    let mut t = setup(
        blocklist(),
        vec![
            entry("ads.example"),
            entry("*.tracker.example"),
            apex_and_below("malware.example"),
        ],
    );
    let blocked = Nx(reason::DNS_BLOCKED);
    t.checks(&[
        (q("ads.example", A), blocked, ev("ads.example.", "A")),
        // Exact: nothing below it.
        (q("www.ads.example", A), Allow, ev("www.ads.example.", "A")),
        // `*.tracker.example`: everything below, not the apex.
        (q("tracker.example", A), Allow, ev("tracker.example.", "A")),
        (
            q("a.tracker.example", A),
            blocked,
            ev("a.tracker.example.", "A"),
        ),
        (
            q("a.b.c.tracker.example", AAAA),
            blocked,
            ev("a.b.c.tracker.example.", "AAAA"),
        ),
        // Apex and subdomains.
        (
            q("malware.example", A),
            blocked,
            ev("malware.example.", "A"),
        ),
        (
            q("x.y.malware.example", TXT),
            blocked,
            ev("x.y.malware.example.", "TXT"),
        ),
        // Label boundaries: a longer label is another name.
        (
            q("notmalware.example", A),
            Allow,
            ev("notmalware.example.", "A"),
        ),
        (q("ads.example.com", A), Allow, ev("ads.example.com.", "A")),
        (q("example", A), Allow, ev("example.", "A")),
        (q("other.example", A), Allow, ev("other.example.", "A")),
    ]);
}

#[test]
fn blocklist_with_drop_action() {
    let mut t = setup(
        DnsScope {
            action: DnsAction::Drop,
            ..blocklist()
        },
        vec![entry("ads.example")],
    );
    t.check(
        &q("ads.example", A),
        Drop(reason::DNS_BLOCKED),
        ev("ads.example.", "A"),
    );
    t.check(&q("good.example", A), Allow, ev("good.example.", "A"));
}

#[test]
fn allowlist_exact_wildcard_and_apex_and_subdomains() {
    let mut t = setup(
        allowlist(),
        vec![
            entry("example.com"),
            entry("*.corp.example"),
            apex_and_below("cdn.example.net"),
        ],
    );
    let no = Nx(reason::DNS_NOT_ALLOWED);
    t.checks(&[
        (q("example.com", A), Allow, ev("example.com.", "A")),
        (q("www.example.com", A), no, ev("www.example.com.", "A")),
        (q("com", A), no, ev("com.", "A")),
        (q("corp.example", A), no, ev("corp.example.", "A")),
        (
            q("mail.corp.example", MX),
            Allow,
            ev("mail.corp.example.", "MX"),
        ),
        (
            q("a.b.corp.example", A),
            Allow,
            ev("a.b.corp.example.", "A"),
        ),
        (
            q("cdn.example.net", AAAA),
            Allow,
            ev("cdn.example.net.", "AAAA"),
        ),
        (
            q("img.cdn.example.net", A),
            Allow,
            ev("img.cdn.example.net.", "A"),
        ),
        (q("xcdn.example.net", A), no, ev("xcdn.example.net.", "A")),
        (q("example.net", A), no, ev("example.net.", "A")),
    ]);
}

#[test]
fn an_empty_allowlist_blocks_everything() {
    let mut t = setup(allowlist(), vec![]);
    t.check(
        &q("example.com", A),
        Nx(reason::DNS_NOT_ALLOWED),
        ev("example.com.", "A"),
    );
}

#[test]
fn the_most_specific_entry_wins() {
    let bound = 16;
    let mut t = setup(
        allowlist(),
        vec![
            with_entropy(entry("*.example.com"), bound),
            // More specific and without a bound: this random-looking name is allowed.
            entry("x7kq9zj2mv.example.com"),
            // More specific and expired: reported as expired, the wildcard does not rescue it.
            with_expiry(entry("old.example.com"), unix_now() - 3600),
        ],
    );
    // Ten distinct characters: 10 * log2(10) = 33.2 bits.
    assert!(entropy::bits(b"x7kq9zj2mv") > f64::from(bound));
    t.checks(&[
        (
            q("x7kq9zj2mv.example.com", A),
            Allow,
            ev("x7kq9zj2mv.example.com.", "A"),
        ),
        (
            q("x7kq9zj2mw.example.com", A),
            Nx(reason::DNS_ENTROPY),
            ev("x7kq9zj2mw.example.com.", "A"),
        ),
        (q("www.example.com", A), Allow, ev("www.example.com.", "A")),
        (
            q("old.example.com", A),
            Nx(reason::DNS_EXPIRED),
            ev("old.example.com.", "A"),
        ),
        // Below the exact entry only the wildcard matches, with its bound: "xyzwold" has
        // 19.7 bits, "wwwold" 10.8.
        (
            q("xyzw.old.example.com", A),
            Nx(reason::DNS_ENTROPY),
            ev("xyzw.old.example.com.", "A"),
        ),
        (
            q("www.old.example.com", A),
            Allow,
            ev("www.old.example.com.", "A"),
        ),
    ]);
}

#[test]
fn an_expired_specific_blocklist_entry_leaves_the_wildcard_in_force() {
    let past = unix_now() - 60;
    let mut t = setup(
        blocklist(),
        vec![
            entry("*.example.com"),
            with_expiry(entry("www.example.com"), past),
            with_expiry(entry("gone.example"), past),
        ],
    );
    t.checks(&[
        (
            q("www.example.com", A),
            Nx(reason::DNS_BLOCKED),
            ev("www.example.com.", "A"),
        ),
        (q("gone.example", A), Allow, ev("gone.example.", "A")),
    ]);
}

#[test]
fn qtype_limited_entries() {
    let mut t = setup(
        blocklist(),
        vec![with_qtypes(entry("ads.example"), &[A, AAAA])],
    );
    t.checks(&[
        (
            q("ads.example", A),
            Nx(reason::DNS_BLOCKED),
            ev("ads.example.", "A"),
        ),
        (
            q("ads.example", AAAA),
            Nx(reason::DNS_BLOCKED),
            ev("ads.example.", "AAAA"),
        ),
        (q("ads.example", TXT), Allow, ev("ads.example.", "TXT")),
        (q("ads.example", 65), Allow, ev("ads.example.", "HTTPS")),
        (
            q("ads.example", 4242),
            Allow,
            ev("ads.example.", "TYPE4242"),
        ),
    ]);

    t.again(
        allowlist(),
        vec![
            with_qtypes(entry("mail.example"), &[MX]),
            // A qtype-limited specific entry; other types fall back to the wildcard and its bound.
            with_entropy(entry("*.example.org"), 1),
            with_qtypes(entry("xyz.example.org"), &[A]),
        ],
    );
    t.checks(&[
        (q("mail.example", MX), Allow, ev("mail.example.", "MX")),
        (
            q("mail.example", A),
            Nx(reason::DNS_NOT_ALLOWED),
            ev("mail.example.", "A"),
        ),
        (q("xyz.example.org", A), Allow, ev("xyz.example.org.", "A")),
        (
            q("xyz.example.org", AAAA),
            Nx(reason::DNS_ENTROPY),
            ev("xyz.example.org.", "AAAA"),
        ),
        (
            q("aaa.example.org", AAAA),
            Allow,
            ev("aaa.example.org.", "AAAA"),
        ),
    ]);
}

impl T {
    /// [`T::checks`], and the userspace reference, which takes every entry on its own (their
    /// union), decides each query the same way.
    #[track_caller]
    fn union_checks(&mut self, cases: &[(&str, u16, Want)]) {
        for &(name, qtype, want) in cases {
            let msg = query(name, qtype);
            let verdict = reference::decide(&self.policy, self.scope(), &msg, unix_now());
            let want_reason = match want {
                Nx(r) | Drop(r) | Audit(r) => r,
                Allow | Untouched => reason::PASS,
            };
            assert_eq!(
                verdict.reason, want_reason,
                "reference for {name} type {qtype}"
            );
            let text = format!("{name}.");
            let qtype_text = palisade::events::qtype_name(qtype);
            self.check(&udp(&msg), want, ev(&text, &qtype_text));
        }
    }
}

#[test]
fn duplicate_entries_merge_into_their_union() {
    let now = unix_now();
    // Same name, same coverage, same terms: one map entry covering A and MX.
    let mut t = setup(
        allowlist(),
        vec![
            with_qtypes(entry("mx.example"), &[A]),
            with_qtypes(entry("mx.example"), &[MX]),
        ],
    );
    t.union_checks(&[
        ("mx.example", A, Allow),
        ("mx.example", MX, Allow),
        ("mx.example", TXT, Nx(reason::DNS_NOT_ALLOWED)),
    ]);

    // One covers the other (every type, never expires, the looser bound): it alone decides,
    // which is what the two allow together.
    t.again(
        allowlist(),
        vec![
            with_expiry(
                with_entropy(with_qtypes(entry("*.cdn.example"), &[A]), 16),
                now - 60,
            ),
            with_entropy(entry("*.cdn.example"), 40),
            with_qtypes(entry("*.cdn.example"), &[]),
        ],
    );
    t.union_checks(&[
        // 33 bits: over the first bound, under the others.
        ("x7kq9zj2mv.cdn.example", A, Allow),
        ("x7kq9zj2mv.cdn.example", AAAA, Allow),
    ]);
    t.again(
        allowlist(),
        vec![
            with_expiry(
                with_entropy(with_qtypes(entry("*.cdn.example"), &[A]), 16),
                now - 60,
            ),
            with_entropy(entry("*.cdn.example"), 40),
        ],
    );
    t.union_checks(&[
        ("x7kq9zj2mv.cdn.example", A, Allow),
        // 12 distinct characters, 43 bits.
        ("x7kq9zj2mvbw.cdn.example", TXT, Nx(reason::DNS_ENTROPY)),
        ("www.cdn.example", MX, Allow),
    ]);

    // What one map entry cannot hold is refused with both entries' places, and the policy
    // in force stays.
    let mut list = t.policy.clone();
    list.dns.lists[0].entries = vec![
        NameEntry {
            line: 4,
            ..with_entropy(entry("*.cdn.example"), 256)
        },
        NameEntry {
            line: 9,
            ..with_qtypes(entry("*.cdn.example"), &[TXT])
        },
    ];
    let err = t.b.install(&list).expect_err("conflicting duplicates");
    assert_eq!(
        format!("{err:#}"),
        "compiling the DNS policy: list `test` line 9: `*.cdn.example` is also listed in list \
         `test` line 4, with a different expiry or entropy bound and other query types; one \
         name holds one entry, so give both the same `expires` and `max_entropy_bits`, or let \
         one cover the other (all its query types, an expiry no earlier and a bound no lower)"
    );
    list.dns.lists[0].entries = [A, AAAA, MX, TXT, 65]
        .iter()
        .map(|&q| with_qtypes(entry("*.cdn.example"), &[q]))
        .collect();
    let err = t.b.install(&list).expect_err("five query types");
    assert!(
        format!("{err:#}").contains("together they name more than 4 query types"),
        "{err:#}"
    );
    t.union_checks(&[
        ("x7kq9zj2mvbw.cdn.example", TXT, Nx(reason::DNS_ENTROPY)),
        ("www.cdn.example", 65, Allow),
    ]);
}

#[test]
fn expired_entries() {
    let now = unix_now();
    let mut t = setup(
        blocklist(),
        vec![
            with_expiry(entry("old.example"), now - 1),
            with_expiry(entry("new.example"), now + 3600),
        ],
    );
    t.check(&q("old.example", A), Allow, ev("old.example.", "A"));
    t.check(
        &q("new.example", A),
        Nx(reason::DNS_BLOCKED),
        ev("new.example.", "A"),
    );

    t.again(
        allowlist(),
        vec![
            with_expiry(entry("old.example"), now - 1),
            with_expiry(entry("new.example"), now + 3600),
        ],
    );
    t.check(
        &q("old.example", A),
        Nx(reason::DNS_EXPIRED),
        ev("old.example.", "A"),
    );
    t.check(&q("new.example", A), Allow, ev("new.example.", "A"));
}

/// `n` base32 characters of a deterministic pseudo-random stream, like a DNS tunnel's data.
fn base32ish(n: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(ALPHABET[(x >> 59) as usize])
        })
        .collect()
}

#[test]
fn entropy_bound_blocks_a_tunnel_under_an_allowed_suffix() {
    // The bound the documentation recommends.
    let bound = 256;
    let mut t = setup(
        allowlist(),
        vec![with_entropy(apex_and_below("example.com"), bound)],
    );
    let data = base32ish(52, 7);
    let more = base32ish(30, 8);
    let tunnel = format!("{data}.{more}.t.example.com");
    let below = format!("{data}{more}t");
    let h = entropy::bits(below.as_bytes());
    assert!(h > f64::from(bound), "the crafted tunnel name has {h} bits");
    let name = format!("{tunnel}.");
    t.checks(&[
        (q(&tunnel, TXT), Nx(reason::DNS_ENTROPY), ev(&name, "TXT")),
        (q("www.example.com", A), Allow, ev("www.example.com.", "A")),
        (
            q("static-assets.eu-west.example.com", A),
            Allow,
            ev("static-assets.eu-west.example.com.", "A"),
        ),
        // The apex has no labels below the entry: nothing to measure.
        (q("example.com", A), Allow, ev("example.com.", "A")),
    ]);
    // All in upper case it is the same tunnel.
    let upper = tunnel.to_ascii_uppercase();
    t.check(&q(&upper, TXT), Nx(reason::DNS_ENTROPY), ev(&name, "TXT"));
}

#[test]
fn letter_case_and_padding_do_not_hide_a_tunnel() {
    let bound = 40;
    let mut t = setup(
        allowlist(),
        vec![with_entropy(entry("*.example.com"), bound)],
    );
    // Four symbols, 16 characters: 32 bits. Letter case doubles the symbols: 48 bits.
    assert!(entropy::bits(b"abcdabcdabcdabcd") < f64::from(bound));
    assert!(entropy::bits(b"aBcDAbCdabcdABCD") > f64::from(bound));
    t.checks(&[
        (
            q("abcdabcdabcdabcd.example.com", A),
            Allow,
            ev("abcdabcdabcdabcd.example.com.", "A"),
        ),
        // The case channel: counted as sent.
        (
            q("aBcDAbCdabcdABCD.example.com", A),
            Nx(reason::DNS_ENTROPY),
            ev("abcdabcdabcdabcd.example.com.", "A"),
        ),
        // The same case throughout carries nothing more.
        (
            q("ABCDABCDABCDABCD.example.com", A),
            Allow,
            ev("abcdabcdabcdabcd.example.com.", "A"),
        ),
        // 12 distinct characters, 43 bits: over.
        (
            q("x7kq9zj2mvbw.example.com", A),
            Nx(reason::DNS_ENTROPY),
            ev("x7kq9zj2mvbw.example.com.", "A"),
        ),
        // Padding labels or characters only add to the total.
        (
            q(
                "aaaaaaaaaaaaaaaaaaaa.x7kq9zj2mvbw.aaaaaaaaaaaa.example.com",
                A,
            ),
            Nx(reason::DNS_ENTROPY),
            ev(
                "aaaaaaaaaaaaaaaaaaaa.x7kq9zj2mvbw.aaaaaaaaaaaa.example.com.",
                "A",
            ),
        ),
        (
            q("xa7aka9azaja2amavabawa.example.com", A),
            Nx(reason::DNS_ENTROPY),
            ev("xa7aka9azaja2amavabawa.example.com.", "A"),
        ),
    ]);
}

#[test]
fn audit_mode_reports_but_passes() {
    let mut t = setup(
        DnsScope {
            audit: true,
            ..allowlist()
        },
        vec![entry("ok.example")],
    );
    t.checks(&[
        (q("ok.example", A), Allow, ev("ok.example.", "A")),
        (
            q("bad.example", A),
            Audit(reason::DNS_NOT_ALLOWED),
            ev("bad.example.", "A"),
        ),
        (
            udp(&DnsQuery::name("x.example", A).with_qdcount(2).build()),
            Audit(reason::DNS_MALFORMED),
            MALFORMED,
        ),
    ]);
}

#[test]
fn log_allowed_reports_allowed_queries() {
    let mut t = setup(
        DnsScope {
            log_allowed: true,
            ..allowlist()
        },
        vec![entry("ok.example")],
    );
    let (_, e) = t.check(&q("OK.example", A), Allow, ev("ok.example.", "A"));
    assert_eq!(e.expect("event").list, Some(0));
    t.check(
        &q("bad.example", A),
        Nx(reason::DNS_NOT_ALLOWED),
        ev("bad.example.", "A"),
    );

    t.again(
        DnsScope {
            log_allowed: true,
            ..blocklist()
        },
        vec![entry("bad.example")],
    );
    let (_, e) = t.check(&q("ok.example", A), Allow, ev("ok.example.", "A"));
    assert_eq!(e.expect("event").list, None, "no entry matched");
    // Malformed queries let through (`malformed = "allow"`) are reported with log_allowed.
    t.again(
        DnsScope {
            log_allowed: true,
            block_malformed: false,
            ..blocklist()
        },
        vec![entry("bad.example")],
    );
    t.check(&udp(&[0u8; 5]), Allow, MALFORMED);
}

#[test]
fn per_client_rate_limit() {
    let rate = QueryRate { qps: 1, burst: 3 };
    let mut t = setup(
        DnsScope {
            rate: Some(rate),
            ..allowlist()
        },
        vec![entry("ok.example")],
    );
    let a = "192.0.2.201";
    let b = "192.0.2.202";
    let ok = || query("ok.example", A);
    // A burst of 3 passes (one of them blocked by the policy, which still costs a token)...
    t.check(&udp_from(a, &ok()), Allow, ev("ok.example.", "A"));
    t.check(
        &udp_from(a, &query("no.example", A)),
        Nx(reason::DNS_NOT_ALLOWED),
        ev("no.example.", "A"),
    );
    t.check(&udp_from(a, &ok()), Allow, ev("ok.example.", "A"));
    // ...then the client is limited: dropped, never answered, whatever the name. The limit
    // comes before parsing, so the event has no name.
    t.check(&udp_from(a, &ok()), Drop(reason::DNS_RATE), MALFORMED);
    t.check(
        &udp_from(a, &query("no.example", AAAA)),
        Drop(reason::DNS_RATE),
        MALFORMED,
    );
    // Another client has its own bucket, per address family too.
    t.check(&udp_from(b, &ok()), Allow, ev("ok.example.", "A"));
    t.check(
        &udp_from("2001:db8::202", &ok()),
        Allow,
        ev("ok.example.", "A"),
    );
    // A limited client's malformed queries are rate-limited too.
    t.check(&udp_from(a, &[0u8; 4]), Drop(reason::DNS_RATE), MALFORMED);
}

#[test]
fn per_client_rate_limit_groups_clients_by_prefix() {
    let rate = QueryRate { qps: 1, burst: 2 };
    let scope = DnsScope {
        rate: Some(rate),
        ..allowlist()
    };
    let ok = || query("ok.example", A);
    let a = "2001:db8:7:1::a";
    let b = "2001:db8:7:1:8000::b";
    // By default one IPv6 /64 shares a bucket, and IPv4 clients have one each.
    let mut t = setup(scope.clone(), vec![entry("ok.example")]);
    for _ in 0..2 {
        t.check(&udp_from(a, &ok()), Allow, ev("ok.example.", "A"));
    }
    t.check(&udp_from(b, &ok()), Drop(reason::DNS_RATE), MALFORMED);
    t.check(
        &udp_from("2001:db8:7:2::a", &ok()),
        Allow,
        ev("ok.example.", "A"),
    );
    for _ in 0..2 {
        t.check(
            &udp_from("192.0.2.71", &ok()),
            Allow,
            ev("ok.example.", "A"),
        );
    }
    t.check(
        &udp_from("192.0.2.72", &ok()),
        Allow,
        ev("ok.example.", "A"),
    );

    // `[dns] rate_prefix_v6 = 128`, `rate_prefix_v4 = 24`: the other way round.
    let mut p = policy(Some(scope), vec![entry("ok.example")], &[53]);
    p.dns.rate_prefix = SourcePrefix { v4: 24, v6: 128 };
    t.again_policy(p);
    for _ in 0..2 {
        t.check(&udp_from(a, &ok()), Allow, ev("ok.example.", "A"));
    }
    t.check(&udp_from(b, &ok()), Allow, ev("ok.example.", "A"));
    for _ in 0..2 {
        t.check(
            &udp_from("192.0.2.71", &ok()),
            Allow,
            ev("ok.example.", "A"),
        );
    }
    t.check(
        &udp_from("192.0.2.72", &ok()),
        Drop(reason::DNS_RATE),
        MALFORMED,
    );
}

#[test]
fn malformed_queries_spend_rate_tokens() {
    let rate = QueryRate { qps: 1, burst: 3 };
    let mut t = setup(
        DnsScope {
            rate: Some(rate),
            ..blocklist()
        },
        vec![entry("bad.example")],
    );
    let c = "192.0.2.203";
    // A flood of unparsable queries (TCP fragments of a message, a bare header, a forward
    // pointer) uses up the burst...
    let forward = DnsQuery::new(vec![], A).with_pointer(40).build();
    t.check(
        &udp_from(c, &[0u8; 4]),
        Drop(reason::DNS_MALFORMED),
        MALFORMED,
    );
    t.check(
        &udp_from(c, &forward),
        Drop(reason::DNS_MALFORMED),
        MALFORMED,
    );
    t.check(
        &Frame::dns_tcp_syn(c, RESOLVER, 40001).build(),
        Untouched,
        MALFORMED,
    );
    t.check(
        &Frame::tcp(c, RESOLVER, 40001, 53, packet::TCP_ACK)
            .with_payload(&[0, 40, 1])
            .build(),
        Drop(reason::DNS_MALFORMED),
        MALFORMED,
    );
    // ...so the client's next well-formed query finds no token left.
    t.check(
        &udp_from(c, &query("good.example", A)),
        Drop(reason::DNS_RATE),
        MALFORMED,
    );
}

// ---------------------------------------------------------------------------------------
// Bypass attempts

#[test]
fn letter_case_is_no_bypass() {
    let mut t = setup(blocklist(), vec![entry("www.example.com")]);
    let msg = query("WwW.ExAmPlE.CoM", A);
    let (out, _) = t.check(
        &udp(&msg),
        Nx(reason::DNS_BLOCKED),
        ev("www.example.com.", "A"),
    );
    // The answer echoes the question as the client wrote it.
    assert!(
        out.windows(17)
            .any(|w| w == b"\x03WwW\x07ExAmPlE\x03CoM\x00"),
        "{out:02x?}"
    );
}

#[test]
fn a_dot_inside_a_label_is_part_of_the_label() {
    let mut t = setup(
        allowlist(),
        vec![entry("www.example.com"), entry(r"dotted\.label.example")],
    );
    let dotted = DnsQuery::new(raw(&[b"www.example", b"com"]), A).build();
    let split = DnsQuery::new(raw(&[b"www", b"example.com"]), A).build();
    let as_one = DnsQuery::new(raw(&[b"www.example.com"]), A).build();
    t.checks(&[
        (
            udp(&dotted),
            Nx(reason::DNS_NOT_ALLOWED),
            ev(r"www\.example.com.", "A"),
        ),
        (
            udp(&split),
            Nx(reason::DNS_NOT_ALLOWED),
            ev(r"www.example\.com.", "A"),
        ),
        (
            udp(&as_one),
            Nx(reason::DNS_NOT_ALLOWED),
            ev(r"www\.example\.com.", "A"),
        ),
        (q("www.example.com", A), Allow, ev("www.example.com.", "A")),
        // An escaped dot in the policy matches exactly the one label with a dot in it.
        (
            udp(&DnsQuery::new(raw(&[b"dotted.label", b"example"]), A).build()),
            Allow,
            ev(r"dotted\.label.example.", "A"),
        ),
        (
            q("dotted.label.example", A),
            Nx(reason::DNS_NOT_ALLOWED),
            ev("dotted.label.example.", "A"),
        ),
    ]);
    t.again(blocklist(), vec![entry("www.example.com")]);
    t.check(&udp(&dotted), Allow, ev(r"www\.example.com.", "A"));
}

#[test]
fn a_trailing_dot_or_upper_case_in_the_policy_is_normalised() {
    assert_eq!(
        parse_name("WWW.Example.COM.").expect("valid"),
        parse_name("www.example.com").expect("valid")
    );
    let mut t = setup(
        blocklist(),
        vec![entry("WWW.Example.COM."), entry("*.Tracker.Example.")],
    );
    t.check(
        &q("www.example.com", A),
        Nx(reason::DNS_BLOCKED),
        ev("www.example.com.", "A"),
    );
    t.check(
        &q("a.tracker.example.", A),
        Nx(reason::DNS_BLOCKED),
        ev("a.tracker.example.", "A"),
    );
}

/// Labels making a name of exactly `wire` bytes in wire form, with `label` bytes per label
/// where possible.
fn labels_of_wire_len(wire: usize, label: usize) -> Vec<Vec<u8>> {
    let mut left = wire - 1;
    let mut out = Vec::new();
    let mut i = 0u8;
    while left > 0 {
        let n = (left - 1).min(label);
        assert!(n > 0, "cannot make {wire} bytes");
        out.push(vec![b'a' + i % 26; n]);
        left -= n + 1;
        i += 1;
    }
    out
}

fn wire_len(labels: &[Vec<u8>]) -> usize {
    labels.iter().map(|l| l.len() + 1).sum::<usize>() + 1
}

fn text(labels: &[Vec<u8>]) -> String {
    let mut s: String = labels
        .iter()
        .map(|l| format!("{}.", String::from_utf8_lossy(l)))
        .collect();
    if s.is_empty() {
        s.push('.');
    }
    s
}

#[test]
fn name_and_label_length_limits() {
    let long_label = vec![vec![b'l'; 63], b"example".to_vec()];
    let too_long_label = vec![vec![b'l'; 64], b"example".to_vec()];
    let name255 = labels_of_wire_len(255, 63);
    let many255 = labels_of_wire_len(255, 1);
    assert_eq!(
        (wire_len(&name255), wire_len(&many255), many255.len()),
        (255, 255, 127)
    );
    let mut name256 = name255.clone();
    name256[0].push(b'x');
    assert_eq!(wire_len(&name256), 256);

    let mut t = setup(
        allowlist(),
        vec![
            entry(&text(&long_label)),
            entry(&text(&name255)),
            entry(&text(&many255)),
        ],
    );
    let m = |labels: &Vec<Vec<u8>>| udp(&DnsQuery::new(labels.clone(), A).build());
    t.checks(&[
        (m(&long_label), Allow, ev(&text(&long_label), "A")),
        (m(&name255), Allow, ev(&text(&name255), "A")),
        (m(&many255), Allow, ev(&text(&many255), "A")),
        // One byte more: malformed, dropped (malformed queries are never answered).
        (m(&too_long_label), Drop(reason::DNS_MALFORMED), MALFORMED),
        (m(&name256), Drop(reason::DNS_MALFORMED), MALFORMED),
    ]);
    // 128 labels: 257 bytes.
    let mut many = many255.clone();
    many.push(b"z".to_vec());
    t.check(&m(&many), Drop(reason::DNS_MALFORMED), MALFORMED);
}

#[test]
fn a_second_question_is_malformed() {
    let two = DnsQuery::name("ok.example", A)
        .with_qdcount(2)
        .with_question(DnsQuestion::new(dns_labels("blocked.example"), A))
        .build();
    let mut t = setup(allowlist(), vec![entry("ok.example")]);
    t.check(&udp(&two), Drop(reason::DNS_MALFORMED), MALFORMED);
    // QDCOUNT 0, and QDCOUNT 1 in a header with two questions (the second is trailing data).
    t.check(
        &udp(&DnsQuery::name("ok.example", A).with_qdcount(0).build()),
        Drop(reason::DNS_MALFORMED),
        MALFORMED,
    );
    let trailing = DnsQuery::name("ok.example", A)
        .with_question(DnsQuestion::new(dns_labels("blocked.example"), A))
        .build();
    t.check(&udp(&trailing), Drop(reason::DNS_MALFORMED), MALFORMED);

    // The blocklist default drops them too.
    t.again(blocklist(), vec![entry("blocked.example")]);
    t.check(&udp(&two), Drop(reason::DNS_MALFORMED), MALFORMED);
    t.check(&udp(&trailing), Drop(reason::DNS_MALFORMED), MALFORMED);
    // `malformed = "allow"` lets them through.
    t.again(
        DnsScope {
            block_malformed: false,
            ..blocklist()
        },
        vec![entry("blocked.example")],
    );
    t.check(&udp(&two), Allow, MALFORMED);
}

#[test]
fn compression_and_reserved_label_types_in_the_question_are_malformed() {
    let mut t = setup(allowlist(), vec![entry("www.example.com")]);
    let pointer_only = DnsQuery::new(vec![], A).with_pointer(12).build();
    let pointer_after_label = DnsQuery::new(dns_labels("www"), A).with_pointer(12).build();
    let mut reserved40 = query("www.example.com", A);
    reserved40[12 + 4] = 0x47; // "example" length byte with the 0x40 label type
    let mut reserved80 = query("www.example.com", A);
    reserved80[12 + 4] = 0x87;
    t.checks(&[
        (udp(&pointer_only), Drop(reason::DNS_MALFORMED), MALFORMED),
        (
            udp(&pointer_after_label),
            Drop(reason::DNS_MALFORMED),
            MALFORMED,
        ),
        (udp(&reserved40), Drop(reason::DNS_MALFORMED), MALFORMED),
        (udp(&reserved80), Drop(reason::DNS_MALFORMED), MALFORMED),
    ]);
}

#[test]
fn responses_other_opcodes_and_truncated_messages_are_malformed() {
    let mut t = setup(allowlist(), vec![entry("ok.example")]);
    let ok = query("ok.example", A);
    let response = DnsQuery::name("ok.example", A)
        .with_flags(DNS_FLAG_QR | DNS_FLAG_RD)
        .build();
    let notify = DnsQuery::name("ok.example", A).with_flags(4 << 11).build();
    let update = DnsQuery::name("ok.example", A).with_flags(5 << 11).build();
    let cases = [
        (response, "QR=1"),
        (notify, "opcode NOTIFY"),
        (update, "opcode UPDATE"),
        (vec![], "empty"),
        (ok[..11].to_vec(), "short header"),
        (ok[..12].to_vec(), "header only"),
        (ok[..20].to_vec(), "name cut"),
        (ok[..23].to_vec(), "no root byte"),
        (ok[..24].to_vec(), "no qtype and qclass"),
        (ok[..ok.len() - 1].to_vec(), "qclass cut"),
    ];
    for (msg, what) in cases {
        eprintln!("{what}");
        t.check(&udp(&msg), Drop(reason::DNS_MALFORMED), MALFORMED);
    }
    t.check(&udp(&ok), Allow, ev("ok.example.", "A"));
    // In blocklist mode too, by default, they are dropped; `malformed = "allow"` passes
    // them (counted as allowed).
    let response = DnsQuery::name("ok.example", A)
        .with_flags(DNS_FLAG_QR)
        .build();
    t.again(blocklist(), vec![entry("ok.example")]);
    t.check(&udp(&response), Drop(reason::DNS_MALFORMED), MALFORMED);
    t.again(
        DnsScope {
            block_malformed: false,
            ..blocklist()
        },
        vec![entry("ok.example")],
    );
    t.check(&udp(&response), Allow, MALFORMED);
}

#[test]
fn tcp_queries() {
    let mut t = setup(allowlist(), vec![entry("ok.example")]);
    let ok = query("ok.example", A);
    let bad = query("bad.example", A);
    let framed = |m: &[u8]| palisade::craft::dns_tcp_payload(m);
    // Whole queries on streams whose handshake was seen: allowed, or blocked and dropped
    // (no NXDOMAIN over TCP).
    open_tcp(&mut t, 41001);
    t.check(
        &tcp_at(41001, 1, &framed(&ok)),
        Allow,
        ev("ok.example.", "A"),
    );
    open_tcp(&mut t, 41002);
    t.check(
        &tcp_at(41002, 1, &framed(&bad)),
        Drop(reason::DNS_NOT_ALLOWED),
        ev("bad.example.", "A"),
    );
    // The first segment carries the length prefix and part of the message: malformed.
    let whole = framed(&ok);
    for (port, part) in [
        (41003, &whole[..whole.len() - 3]),
        (41004, &whole[..2]),
        (41005, &whole[..1]),
        // The rest of a message without its prefix.
        (41006, &ok[2..]),
    ] {
        open_tcp(&mut t, port);
        t.check(
            &tcp_at(port, 1, part),
            Drop(reason::DNS_MALFORMED),
            MALFORMED,
        );
    }
    // A prefix that claims less than the segment carries.
    let mut extra = framed(&ok);
    extra.push(0);
    open_tcp(&mut t, 41007);
    t.check(
        &tcp_at(41007, 1, &extra),
        Drop(reason::DNS_MALFORMED),
        MALFORMED,
    );
    // Mixed case over TCP.
    open_tcp(&mut t, 41008);
    t.check(
        &tcp_at(41008, 1, &framed(&query("OK.Example", A))),
        Allow,
        ev("ok.example.", "A"),
    );

    // Blocklist, NXDOMAIN action: still dropped over TCP.
    t.again(blocklist(), vec![entry("bad.example")]);
    open_tcp(&mut t, 41009);
    t.check(
        &tcp_at(41009, 1, &framed(&bad)),
        Drop(reason::DNS_BLOCKED),
        ev("bad.example.", "A"),
    );
}

/// DNS over TCP is judged as the resolver reads the stream: every message of a segment,
/// each byte range once, at the position where it will be read.
#[test]
fn tcp_streams() {
    let mut t = setup(blocklist(), vec![entry("bad.example")]);
    let good = palisade::craft::dns_tcp_payload(&query("good.example", A));
    let good6 = palisade::craft::dns_tcp_payload(&query("good.example", AAAA));
    let bad = palisade::craft::dns_tcp_payload(&query("bad.example", A));
    let cat = |parts: &[&[u8]]| parts.concat();
    let stream = Drop(reason::DNS_STREAM);
    let blocked = Drop(reason::DNS_BLOCKED);

    // A data segment on a flow whose handshake was not seen: its boundaries are unknown.
    t.run_tcp(42001, 1, 0x18, &good, stream, 1);

    // glibc's `use-vc` writes A and AAAA queries in one segment: both inspected, both pass.
    open_tcp(&mut t, 42002);
    t.run_tcp(42002, 1, 0x18, &cat(&[&good, &good6]), Allow, 2);
    // ... and a blocked query behind an allowed one is found (it used to pass in blocklist
    // mode as an unparsable segment).
    open_tcp(&mut t, 42003);
    t.run_tcp(42003, 1, 0x18, &cat(&[&good, &bad]), blocked, 2);
    // The segment after a pass continues the stream; more messages than a segment may carry
    // are malformed.
    open_tcp(&mut t, 42004);
    t.run_tcp(42004, 1, 0x18, &good, Allow, 1);
    let next = 1 + good.len() as u32;
    t.run_tcp(42004, next, 0x18, &good6, Allow, 1);
    let five = cat(&[&good, &good, &good, &good, &good]);
    let next = next + good6.len() as u32;
    t.run_tcp(42004, next, 0x18, &five, Drop(reason::DNS_MALFORMED), 1);

    // Overlaps: a segment that starts inside judged data is rejected; one that starts where
    // a judged segment started is judged again, and must break where the receiver may
    // switch from the first copy to this one.
    open_tcp(&mut t, 42005);
    t.run_tcp(42005, 1, 0x18, &good, Allow, 1);
    t.run_tcp(42005, 5, 0x18, &bad, stream, 1);
    t.run_tcp(42005, 1, 0x18, &bad, blocked, 1);
    // One message that runs across the end of the judged `good`: the resolver would read
    // its tail as the next message.
    let long = palisade::craft::dns_tcp_payload(&query("long-enough-to-overlap.example", A));
    assert!(long.len() > good.len());
    t.run_tcp(42005, 1, 0x18, &long, stream, 1);
    // A retransmission with the same boundaries passes.
    t.run_tcp(42005, 1, 0x18, &cat(&[&good, &good6]), Allow, 2);
    // A gap ahead of the stream.
    let next = 1 + (good.len() + good6.len()) as u32;
    t.run_tcp(42005, next + 7, 0x18, &good, stream, 1);
    t.run_tcp(42005, next, 0x18, &good, Allow, 1);

    // A SYN in the middle of a live stream does not move it.
    open_tcp(&mut t, 42006);
    t.run_tcp(42006, 1, 0x18, &good, Allow, 1);
    t.check(
        &Frame::tcp(CLIENT, RESOLVER, 42006, 53, TCP_SYN)
            .with_tcp_seq(4)
            .build(),
        Untouched,
        MALFORMED,
    );
    t.run_tcp(42006, 5, 0x18, &good, stream, 1);

    // Urgent data leaves the stream the resolver reads.
    open_tcp(&mut t, 42007);
    t.run_tcp(42007, 1, 0x38, &good, stream, 1);
    t.run_tcp(42007, 1, 0x18, &good, Allow, 1);

    // Data after the FIN is never read; a SYN after it starts a new stream.
    let fin = 1 + good.len() as u32;
    t.check(
        &Frame::tcp(CLIENT, RESOLVER, 42007, 53, 0x11)
            .with_tcp_seq(fin)
            .build(),
        Untouched,
        MALFORMED,
    );
    t.run_tcp(42007, fin, 0x18, &good, stream, 1);
    open_tcp(&mut t, 42007);
    t.run_tcp(42007, 1, 0x18, &bad, blocked, 1);
}

#[test]
fn vlan_tagged_queries() {
    let mut t = setup(blocklist(), vec![entry("bad.example")]);
    for (vlans, qinq) in [
        (&[100u16][..], false),
        (&[100, 200][..], true),
        (&[100, 200][..], false),
    ] {
        let f = |name: &str| {
            Frame::dns_udp(CLIENT, RESOLVER, 40000, &query(name, A))
                .with_vlans(vlans, qinq)
                .build()
        };
        let frame = f("bad.example");
        let (out, _) = t.check(&frame, Nx(reason::DNS_BLOCKED), ev("bad.example.", "A"));
        check_nxdomain(&frame, &out, vlans.len());
        t.check(&f("good.example"), Allow, ev("good.example.", "A"));
    }
}

#[test]
fn ipv6_queries() {
    let mut t = setup(allowlist(), vec![entry("ok.example")]);
    t.check(
        &udp6(&query("ok.example", AAAA)),
        Allow,
        ev("ok.example.", "AAAA"),
    );
    let frame = udp6(&query("bad.example", AAAA));
    let (out, _) = t.check(
        &frame,
        Nx(reason::DNS_NOT_ALLOWED),
        ev("bad.example.", "AAAA"),
    );
    check_nxdomain(&frame, &out, 0);
    t.check(
        &Frame::dns_tcp_syn(CLIENT6, RESOLVER6, 43001).build(),
        Untouched,
        MALFORMED,
    );
    let tcp6 = Frame::dns_tcp(CLIENT6, RESOLVER6, 43001, &query("bad.example", A)).build();
    t.check(
        &tcp6,
        Drop(reason::DNS_NOT_ALLOWED),
        ev("bad.example.", "A"),
    );
}

#[test]
fn only_plain_packets_are_answered() {
    let mut t = setup(blocklist(), vec![entry("bad.example")]);
    let msg = query("bad.example", A);
    let blocked = Drop(reason::DNS_BLOCKED);
    let e = ev("bad.example.", "A");
    // IPv4 with options (a router alert).
    let mut f = Frame::dns_udp(CLIENT, RESOLVER, 40000, &msg);
    f.ipv4_options = vec![0x94, 0x04, 0, 0];
    t.check(&f.build(), blocked, e);
    // IPv6 with a destination options header.
    let mut f = Frame::dns_udp(CLIENT6, RESOLVER6, 40000, &msg);
    f.ipv6_ext = vec![ExtHeader::Options { kind: 60, len8: 0 }];
    t.check(&f.build(), blocked, e);
    // A first fragment (the whole query happens to be in it): fragmented queries are not
    // reassembled, they are malformed.
    let mut f = Frame::dns_udp(CLIENT, RESOLVER, 40000, &msg);
    f.ipv4_frag = Some((0, true));
    t.check(&f.build(), Drop(reason::DNS_MALFORMED), MALFORMED);
    // Plain: answered.
    t.check(&udp(&msg), Nx(reason::DNS_BLOCKED), e);
}

#[test]
fn non_dns_traffic_is_untouched() {
    let mut t = setup_policy(policy(
        Some(blocklist()),
        vec![entry("bad.example")],
        &[53, 5353],
    ));
    let msg = query("bad.example", A);
    t.checks(&[
        (
            Frame::udp(CLIENT, RESOLVER, 40000, 5300)
                .with_payload(&msg)
                .build(),
            Untouched,
            MALFORMED,
        ),
        // From port 53 (a resolver's answer to a query it sent): not to a DNS port.
        (
            Frame::udp(RESOLVER, CLIENT, 53, 40000)
                .with_payload(&msg)
                .build(),
            Untouched,
            MALFORMED,
        ),
        (
            Frame::icmp(CLIENT, RESOLVER, 8, 0).build(),
            Untouched,
            MALFORMED,
        ),
        // Every configured port is inspected.
        (
            Frame::udp(CLIENT, RESOLVER, 40000, 5353)
                .with_payload(&msg)
                .build(),
            Nx(reason::DNS_BLOCKED),
            ev("bad.example.", "A"),
        ),
        (udp(&msg), Nx(reason::DNS_BLOCKED), ev("bad.example.", "A")),
    ]);
    // Without an ingress scope nothing is inspected.
    t.again_policy(policy(None, vec![entry("bad.example")], &[53]));
    t.check(&udp(&msg), Untouched, MALFORMED);
}

// ---------------------------------------------------------------------------------------
// The NXDOMAIN answer, byte by byte

/// The one's-complement sum of 16-bit big-endian words, folded (an odd byte is padded).
fn ones_complement_sum(parts: &[&[u8]]) -> u16 {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(p);
    }
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|c| u64::from(c[0]) << 8 | u64::from(c[1]))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Checks that `answer` is the NXDOMAIN answer to the UDP query `query` (with `vlans` tags),
/// byte by byte and as hickory-proto reads it.
#[track_caller]
fn check_nxdomain(query: &[u8], answer: &[u8], vlans: usize) {
    check_nxdomain_bytes(query, answer, vlans);
    let l3 = 14 + 4 * vlans;
    let dns = l3 + if query[l3] >> 4 == 6 { 40 } else { 20 } + 8;
    check_nxdomain_parsed(&query[dns..], &answer[dns..]);
}

/// The byte-by-byte half of [`check_nxdomain`], for questions a DNS library refuses (a
/// compression pointer into the middle of a label).
#[track_caller]
fn check_nxdomain_bytes(query: &[u8], answer: &[u8], vlans: usize) {
    let l3 = 14 + 4 * vlans;
    let v6 = query[l3] >> 4 == 6;
    let ip_len = if v6 { 40 } else { 20 };
    assert_eq!(
        query[l3] & 0x0f,
        if v6 { 0 } else { 5 },
        "plain query expected"
    );
    let l4 = l3 + ip_len;
    let dns = l4 + 8;
    let q = &query[dns..];
    let a = &answer[dns.min(answer.len())..];
    // The question of the query as it lies in the message: the name up to its root byte or
    // its first compression pointer, then type and class.
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

    assert_eq!(
        answer.len(),
        dns + 12 + question.len(),
        "the answer ends after the question"
    );
    assert!(answer.len() <= query.len());

    // Ethernet: MACs swapped, tags and ethertype kept.
    assert_eq!(&answer[0..6], &query[6..12], "destination MAC");
    assert_eq!(&answer[6..12], &query[0..6], "source MAC");
    assert_eq!(&answer[12..l3], &query[12..l3], "VLAN tags and ethertype");

    let udp_len = answer.len() - l4;
    let (src, dst) = if v6 {
        let (h, qh) = (&answer[l3..l4], &query[l3..l4]);
        assert_eq!(&h[0..4], &qh[0..4], "version, traffic class, flow label");
        assert_eq!(
            usize::from(u16::from_be_bytes([h[4], h[5]])),
            udp_len,
            "payload length"
        );
        assert_eq!(h[6], 17, "next header");
        assert_eq!(h[7], 64, "hop limit");
        assert_eq!(&h[8..24], &qh[24..40], "source address");
        assert_eq!(&h[24..40], &qh[8..24], "destination address");
        (h[8..24].to_vec(), h[24..40].to_vec())
    } else {
        let (h, qh) = (&answer[l3..l4], &query[l3..l4]);
        assert_eq!(h[0], 0x45);
        assert_eq!(h[1], qh[1], "TOS");
        assert_eq!(
            usize::from(u16::from_be_bytes([h[2], h[3]])),
            answer.len() - l3,
            "total length"
        );
        assert_eq!(&h[4..6], &qh[4..6], "identification");
        assert_eq!(&h[6..8], &[0x40, 0], "DF, not a fragment");
        assert_eq!(h[8], 64, "TTL");
        assert_eq!(h[9], 17, "protocol");
        assert_eq!(
            ones_complement_sum(&[h]),
            0xffff,
            "IPv4 header checksum {:02x?}",
            &h[10..12]
        );
        assert_eq!(&h[12..16], &qh[16..20], "source address");
        assert_eq!(&h[16..20], &qh[12..16], "destination address");
        (h[12..16].to_vec(), h[16..20].to_vec())
    };

    let (u, qu) = (&answer[l4..dns], &query[l4..dns]);
    assert_eq!(&u[0..2], &qu[2..4], "source port");
    assert_eq!(&u[2..4], &qu[0..2], "destination port");
    assert_eq!(
        usize::from(u16::from_be_bytes([u[4], u[5]])),
        udp_len,
        "UDP length"
    );
    assert_ne!(&u[6..8], &[0, 0], "a UDP checksum is present");
    let len_bytes = (udp_len as u32).to_be_bytes();
    let pseudo: Vec<u8> = if v6 {
        [&src[..], &dst[..], &len_bytes[..], &[0, 0, 0, 17][..]].concat()
    } else {
        [&src[..], &dst[..], &[0, 17][..], &len_bytes[2..]].concat()
    };
    assert_eq!(
        ones_complement_sum(&[&pseudo, &answer[l4..]]),
        0xffff,
        "UDP checksum {:02x?}",
        &u[6..8]
    );

    // DNS header.
    assert_eq!(&a[0..2], &q[0..2], "ID echoed");
    let (q2, q3) = (q[2], q[3]);
    let want2 = 0x80 | (q2 & 0x01); // QR, opcode 0, AA 0, TC 0, RD as asked
    let want3 = 0x80 | (q3 & 0x10) | 3; // RA, Z 0, AD 0, CD as asked, NXDOMAIN
    assert_eq!(
        (a[2], a[3]),
        (want2, want3),
        "flags {:08b} {:08b}",
        a[2],
        a[3]
    );
    assert_eq!(
        &a[4..12],
        &[0, 1, 0, 0, 0, 0, 0, 0],
        "QDCOUNT 1, nothing else"
    );
    assert_eq!(&a[12..], question, "question echoed byte for byte");
}

/// The same, as an independent DNS library reads it.
#[track_caller]
fn check_nxdomain_parsed(q: &[u8], a: &[u8]) {
    let m = Message::from_vec(a).expect("hickory parses the answer");
    let qm = Message::from_vec(q).expect("hickory parses the query");
    assert_eq!(m.metadata.id, qm.metadata.id);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.metadata.op_code, OpCode::Query);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(!m.metadata.authoritative && !m.metadata.truncation && m.metadata.recursion_available);
    assert!(!m.metadata.authentic_data);
    assert_eq!(m.metadata.recursion_desired, qm.metadata.recursion_desired);
    assert_eq!(m.metadata.checking_disabled, qm.metadata.checking_disabled);
    assert_eq!(m.queries.len(), 1);
    let (got, asked) = (&m.queries[0], &qm.queries[0]);
    assert_eq!(
        got.name().cmp_case(asked.name()),
        std::cmp::Ordering::Equal,
        "name, case included"
    );
    assert_eq!(
        (got.query_type(), got.query_class()),
        (asked.query_type(), asked.query_class())
    );
    assert!(m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty());
    assert!(m.edns.is_none(), "no OPT record in the answer");
}

#[test]
fn nxdomain_answer_ipv4() {
    let mut t = setup(blocklist(), vec![apex_and_below("bad.example")]);
    for (name, flags, id) in [
        ("bad.example", DNS_FLAG_RD, 0x1234),
        // Odd and even name lengths, so the checksum sees both parities.
        ("Bad.Example", 0, 0xbeef),
        ("a.bad.example", DNS_FLAG_RD | DNS_FLAG_CD, 0),
        ("bb.bad.example", DNS_FLAG_RD, 0x0102),
        // AD, AA, TC and Z set in a query: cleared in the answer.
        (
            "bad.example",
            DNS_FLAG_AD | 0x0400 | 0x0200 | 0x0040,
            0xffff,
        ),
    ] {
        let msg = DnsQuery::name(name, A)
            .with_flags(flags)
            .with_id(id)
            .build();
        let frame = udp(&msg);
        let lower = format!("{}.", name.to_ascii_lowercase());
        let (out, _) = t.check(&frame, Nx(reason::DNS_BLOCKED), ev(&lower, "A"));
        check_nxdomain(&frame, &out, 0);
    }
    // An allowed query leaves unchanged.
    let frame = q("good.example", A);
    let (out, _) = t.check(&frame, Allow, ev("good.example.", "A"));
    assert_eq!(out, frame);
}

/// The message is read straight from the frame by words when it is short, the last word
/// ending with the frame when the message does; longer messages go through the helper. Every
/// message length modulo 8, with and without bytes after the message in the frame (Ethernet
/// padding), over both families and across the 128-byte switch to the helper, decides and
/// answers from the whole message.
#[test]
fn messages_of_every_length_are_read_whole() {
    let mut t = setup(blocklist(), vec![entry("*.blocked.test")]);
    let long = "b".repeat(63);
    let mut names: Vec<String> = (1..=63)
        .map(|n| format!("{}.blocked.test", "a".repeat(n)))
        .collect();
    // Messages of 126 to 134 bytes, around the switch.
    names.extend((43..=51).map(|n| format!("{}.{long}.blocked.test", "c".repeat(n))));
    for name in &names {
        for padding in [0, 1, 7] {
            for v6 in [false, true] {
                let msg = DnsQuery::name(name, AAAA).with_id(0x5a5a).build();
                let mut frame = if v6 { udp6(&msg) } else { udp(&msg) };
                // Bytes after the IP packet: not part of the message.
                frame.extend(std::iter::repeat_n(0xee, padding));
                let fqdn = format!("{name}.");
                let (out, _) = t.check(&frame, Nx(reason::DNS_BLOCKED), ev(&fqdn, "AAAA"));
                // The answer ends after the question: the padding is cut.
                check_nxdomain(&frame[..frame.len() - padding], &out, 0);
                // One letter off in the last label: not listed.
                let other = format!(
                    "{}.blocked.tesu",
                    &name[..name.len() - ".blocked.test".len()]
                );
                let msg = DnsQuery::name(&other, AAAA).build();
                let mut frame = if v6 { udp6(&msg) } else { udp(&msg) };
                frame.extend(std::iter::repeat_n(0xee, padding));
                t.check(&frame, Allow, ev(&format!("{other}."), "AAAA"));
            }
        }
    }
}

#[test]
fn nxdomain_answer_ipv6() {
    let mut t = setup(allowlist(), vec![]);
    for (name, flags) in [
        ("x.example", DNS_FLAG_RD),
        ("Xy.Example", DNS_FLAG_CD),
        ("xyz.example", 0),
    ] {
        let frame = udp6(
            &DnsQuery::name(name, AAAA)
                .with_flags(flags)
                .with_id(0x4242)
                .build(),
        );
        let lower = format!("{}.", name.to_ascii_lowercase());
        let (out, _) = t.check(&frame, Nx(reason::DNS_NOT_ALLOWED), ev(&lower, "AAAA"));
        check_nxdomain(&frame, &out, 0);
    }
}

#[test]
fn nxdomain_answer_drops_the_opt_record() {
    let mut t = setup(allowlist(), vec![]);
    let with_opt = DnsQuery::name("Edns.Example", A).with_edns(1232).build();
    for frame in [udp(&with_opt), udp6(&with_opt)] {
        let (out, _) = t.check(
            &frame,
            Nx(reason::DNS_NOT_ALLOWED),
            ev("edns.example.", "A"),
        );
        check_nxdomain(&frame, &out, 0);
        assert_eq!(out.len(), frame.len() - 11, "the OPT record is cut off");
    }
    // Trailing bytes after the question (no ARCOUNT) make the query malformed (see
    // `bytes_after_the_question`).
    let mut junk = query("junk.example", A);
    junk.extend_from_slice(&[0xde, 0xad, 0xbe]);
    t.check(&udp(&junk), Drop(reason::DNS_MALFORMED), MALFORMED);
    // A long name: the answer is still exactly header + question.
    let long = labels_of_wire_len(255, 63);
    let frame = udp(&DnsQuery::new(long.clone(), TXT).with_edns(4096).build());
    let (out, _) = t.check(&frame, Nx(reason::DNS_NOT_ALLOWED), ev(&text(&long), "TXT"));
    check_nxdomain(&frame, &out, 0);
}

#[test]
fn nxdomain_answer_with_a_vlan_tag() {
    let mut t = setup(blocklist(), vec![entry("*.example")]);
    for src in [(CLIENT, RESOLVER), (CLIENT6, RESOLVER6)] {
        let frame = Frame::dns_udp(
            src.0,
            src.1,
            5353,
            &DnsQuery::name("A.Example", A).with_edns(512).build(),
        )
        .with_vlans(&[42], false)
        .build();
        let (out, _) = t.check(&frame, Nx(reason::DNS_BLOCKED), ev("a.example.", "A"));
        check_nxdomain(&frame, &out, 1);
    }
}

#[test]
fn crafted_queries_parse_with_hickory() {
    // A sanity check of the crafted messages themselves.
    let m = Message::from_vec(
        &DnsQuery::name("www.example.com", AAAA)
            .with_edns(1232)
            .build(),
    )
    .expect("valid");
    assert_eq!(m.queries.len(), 1);
    assert_eq!(m.queries[0].query_type(), RecordType::AAAA);
    assert_eq!(m.queries[0].name().to_ascii(), "www.example.com.");
    assert!(m.edns.is_some());
    let m = Message::from_vec(&DnsQuery::new(raw(&[b"www.example", b"com"]), A).build())
        .expect("valid");
    let labels: Vec<&[u8]> = m.queries[0].name().iter().collect();
    assert_eq!(labels, vec![&b"www.example"[..], b"com"]);
}

#[test]
fn nxdomain_answer_whose_udp_checksum_computes_to_zero() {
    // A computed UDP checksum of 0 must go out as 0xffff (0 means "no checksum"). The DNS
    // ID is the only answer byte the client chooses freely, so pick the one that makes it 0.
    let mut t = setup(blocklist(), vec![entry("bad.example")]);
    for v6 in [false, true] {
        let frame_for = |id: u16| {
            let msg = DnsQuery::name("bad.example", A).with_id(id).build();
            if v6 { udp6(&msg) } else { udp(&msg) }
        };
        let frame = frame_for(0);
        let (out, _) = t.check(&frame, Nx(reason::DNS_BLOCKED), ev("bad.example.", "A"));
        let l4 = 14 + if v6 { 40 } else { 20 };
        let mut segment = out[l4..].to_vec();
        segment[6] = 0;
        segment[7] = 0;
        let udp_len = (segment.len() as u32).to_be_bytes();
        let pseudo: Vec<u8> = if v6 {
            [&out[22..54], &udp_len[..], &[0, 0, 0, 17][..]].concat()
        } else {
            [&out[26..34], &[0, 17][..], &udp_len[2..]].concat()
        };
        let without_id = ones_complement_sum(&[&pseudo, &segment]);
        let id = 0xffff - without_id;
        let frame = frame_for(id);
        let (out, _) = t.check(&frame, Nx(reason::DNS_BLOCKED), ev("bad.example.", "A"));
        assert_eq!(
            &out[l4 + 6..l4 + 8],
            &[0xff, 0xff],
            "id {id:#06x}: a zero checksum is sent as 0xffff"
        );
        check_nxdomain(&frame, &out, 0);
    }
}

#[test]
fn a_new_policy_leaves_no_stale_names_behind() {
    // Each install fills the idle generation; the one before last must be gone entirely.
    let mut t = setup(blocklist(), vec![entry("one.example")]);
    t.check(
        &q("one.example", A),
        Nx(reason::DNS_BLOCKED),
        ev("one.example.", "A"),
    );
    t.again(blocklist(), vec![entry("two.example")]);
    t.check(&q("one.example", A), Allow, ev("one.example.", "A"));
    t.check(
        &q("two.example", A),
        Nx(reason::DNS_BLOCKED),
        ev("two.example.", "A"),
    );
    // Back in the generation that held `one.example`.
    t.again(blocklist(), vec![entry("three.example")]);
    t.checks(&[
        (q("one.example", A), Allow, ev("one.example.", "A")),
        (q("two.example", A), Allow, ev("two.example.", "A")),
        (
            q("three.example", A),
            Nx(reason::DNS_BLOCKED),
            ev("three.example.", "A"),
        ),
    ]);
}

#[test]
fn a_name_filter_sized_for_few_names_hides_none_of_many() {
    use palisade_common::firewall::key_filter_entries;
    // The smallest filter (64 words a generation), as a daemon started with a few names has
    // it: 20,000 names fill it past 300 keys a word, where most absent suffixes pass it too.
    // Its own object: the shared one has the declared size.
    let small = key_filter_entries(FILTER_MIN_WORDS);
    let mut b = Bench::sized(&[("DNS_FILTER", small)])
        .expect("loading and verifying the kernel programs (needs root)");
    let masks = |b: &Bench| -> Vec<u64> {
        let a: aya::maps::Array<_, u64> =
            aya::maps::Array::try_from(b.ebpf.map("DNS_FILTER").expect("DNS_FILTER")).unwrap();
        (0..2).map(|g| a.get(&g, 0).unwrap()).collect()
    };
    // Never written: both masks 0, which filter nothing.
    assert_eq!(masks(&b), [0, 0]);
    let names: Vec<String> = (0..20_000).map(|i| format!("n{i}.big.example")).collect();
    let p = policy(
        Some(blocklist()),
        names.iter().map(|n| entry(n)).collect(),
        &[53],
    );
    b.install(&p).expect("installing the policy");
    let live = apply::control(&b.ebpf).unwrap().active_gen;
    assert_eq!(masks(&b)[live as usize], u64::from(FILTER_MIN_WORDS - 1));
    // `T` checks through a lock on a bench of the whole run's life: this one lives as long.
    let own: &'static Mutex<Bench> = Box::leak(Box::new(Mutex::new(b)));
    let mut t = T {
        b: own
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        policy: p,
    };
    t.b.drain_dns_events();
    t.b.drain_events();
    for n in ["n0.big.example", "n12345.big.example", "n19999.big.example"] {
        t.check(&q(n, A), Nx(reason::DNS_BLOCKED), ev(&format!("{n}."), "A"));
    }
    for n in ["n20000.big.example", "big.example", "other.example"] {
        t.check(&q(n, A), Allow, ev(&format!("{n}."), "A"));
    }
}

#[test]
fn nxdomain_answer_to_a_padded_frame() {
    // Ethernet padding after the IP packet: not part of the query, not part of the answer.
    let mut t = setup(blocklist(), vec![entry("p.example")]);
    let mut frame = q("p.example", A);
    frame.extend_from_slice(&[0; 12]);
    let (out, _) = t.check(&frame, Nx(reason::DNS_BLOCKED), ev("p.example.", "A"));
    check_nxdomain(&frame, &out, 0);
}

// ---------------------------------------------------------------------------------------
// Compression pointers, bytes after the question, group addresses, the answer budget

/// A header (one question, RD) followed by `name` and type A, class IN: names built byte
/// by byte, compression pointers included.
fn raw_query(name: &[u8]) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(name);
    m.extend_from_slice(&[0, 1, 0, 1]);
    m
}

/// The wire form of a dotted name, root byte included.
fn wire(name: &str) -> Vec<u8> {
    let mut w = Vec::new();
    for l in dns_labels(name) {
        w.push(l.len() as u8);
        w.extend_from_slice(&l);
    }
    w.push(0);
    w
}

/// A name whose first label's bytes spell `target` in wire form, followed by a pointer to
/// them: the logical name is that label, then `target` (the bypass dnsmasq answers).
fn pointer_into_first_label(target: &str) -> (Vec<u8>, Vec<u8>) {
    let inner = wire(target);
    let mut name = vec![inner.len() as u8];
    name.extend_from_slice(&inner);
    name.extend_from_slice(&[0xc0, 13]);
    let mut logical = name[..1 + inner.len()].to_vec();
    logical.extend_from_slice(&inner);
    (name, logical)
}

fn text_of(wire: &[u8]) -> String {
    palisade::events::wire_name_to_text(&wire.to_ascii_lowercase())
}

#[test]
fn names_behind_backward_pointers_are_matched() {
    let mut t = setup(
        blocklist(),
        vec![
            apex_and_below("ads.example.com"),
            entry("*.tracker.example"),
        ],
    );
    // One hop, the listed name in mixed case.
    let (name, logical) = pointer_into_first_label("AdS.Example.COM");
    let text = text_of(&logical);
    let frame = udp(&raw_query(&name));
    let (out, _) = t.check(&frame, Nx(reason::DNS_BLOCKED), ev(&text, "A"));
    // The answer echoes the question with its pointer, which still points at the same bytes.
    // (hickory-proto refuses a pointer into the middle of a label, and within one question
    // every backward pointer lands inside a label or the header, so only the bytes are
    // checked here.)
    check_nxdomain_bytes(&frame, &out, 0);
    let frame6 = udp6(&raw_query(&name));
    let (out, _) = t.check(&frame6, Nx(reason::DNS_BLOCKED), ev(&text, "A"));
    check_nxdomain_bytes(&frame6, &out, 0);

    // Two hops, each landing lower: L1 = "\x07tracker\x07example\x00", L2 = "\x01x" + a
    // pointer to L1's bytes; then a pointer to L2's bytes.
    let mut name = vec![17];
    name.extend_from_slice(&wire("tracker.example"));
    let l2 = 12 + name.len() as u8 + 1;
    name.extend_from_slice(&[4, 1, b'x', 0xc0, 13]);
    name.extend_from_slice(&[0xc0, l2]);
    let mut logical = name[..name.len() - 2].to_vec();
    logical.extend_from_slice(&[1, b'x']);
    logical.extend_from_slice(&wire("tracker.example"));
    let text = text_of(&logical);
    t.check(
        &udp(&raw_query(&name)),
        Nx(reason::DNS_BLOCKED),
        ev(&text, "A"),
    );

    // Names that are not listed pass, pointers or not.
    let (name, logical) = pointer_into_first_label("fine.example.com");
    t.check(&udp(&raw_query(&name)), Allow, ev(&text_of(&logical), "A"));

    // An allowlist reads the same logical name.
    t.again(allowlist(), vec![apex_and_below("ok.example")]);
    let (name, logical) = pointer_into_first_label("ok.example");
    t.check(&udp(&raw_query(&name)), Allow, ev(&text_of(&logical), "A"));
    let (name, logical) = pointer_into_first_label("no.example");
    t.check(
        &udp(&raw_query(&name)),
        Nx(reason::DNS_NOT_ALLOWED),
        ev(&text_of(&logical), "A"),
    );
}

#[test]
fn bad_pointers_are_malformed_and_dropped_by_default() {
    use palisade_common::dns::name::MAX_POINTER_HOPS;
    let mut t = setup(blocklist(), vec![apex_and_below("ads.example.com")]);
    let malformed = Drop(reason::DNS_MALFORMED);
    // A forward pointer, to the listed name placed after the question (trailing bytes that
    // a lenient resolver would read as the name).
    let mut forward = raw_query(&[1, b'x', 0xc0, 20]);
    forward.extend_from_slice(&wire("ads.example.com"));
    // At itself; back to the start of the name (a loop through the same pointer); a second
    // pointer whose target is not below the first one's (13, then 17: a loop otherwise).
    let at_itself = raw_query(&[1, b'x', 0xc0, 14]);
    let looping = raw_query(&[1, b'x', 0xc0, 12]);
    let not_lower = raw_query(&[2, 0xc0, 17, 1, b'x', 1, b'y', 0xc0, 13]);
    // A pointer cut short.
    let mut cut = raw_query(&[1, b'x', 0xc0]);
    cut.truncate(12 + 3);
    for msg in [forward, at_itself.clone(), looping, not_lower, cut] {
        t.check(&udp(&msg), malformed, MALFORMED);
    }

    // A chain of `hops` pointers: a label holding a root byte (offset 13) and pointers, each
    // to the one before it, then a pointer to the last of them.
    let chain = |hops: u8| {
        let m = hops - 1;
        let mut content = vec![0u8];
        for k in 0..m {
            content.extend_from_slice(&[0xc0, if k == 0 { 13 } else { 14 + 2 * (k - 1) }]);
        }
        let mut name = vec![content.len() as u8];
        name.extend_from_slice(&content);
        name.extend_from_slice(&[0xc0, if m == 0 { 13 } else { 14 + 2 * (m - 1) }]);
        raw_query(&name)
    };
    t.check(&udp(&chain(1)), Allow, MALFORMED);
    t.check(&udp(&chain(MAX_POINTER_HOPS)), Allow, MALFORMED);
    t.check(&udp(&chain(MAX_POINTER_HOPS + 1)), malformed, MALFORMED);

    // With `malformed = "allow"` they pass.
    t.again(
        DnsScope {
            block_malformed: false,
            ..blocklist()
        },
        vec![apex_and_below("ads.example.com")],
    );
    t.check(&udp(&at_itself), Allow, MALFORMED);
}

#[test]
fn bytes_after_the_question() {
    let mut t = setup(blocklist(), vec![entry("bad.example")]);
    let base = || DnsQuery::name("bad.example", A).build();
    let blocked = Nx(reason::DNS_BLOCKED);
    let e = ev("bad.example.", "A");
    let malformed = Drop(reason::DNS_MALFORMED);
    // An OPT record, without and with options that end exactly at the end of the message.
    let plain_opt = DnsQuery::name("bad.example", A).with_edns(1232).build();
    t.check(&udp(&plain_opt), blocked, e);
    let mut cookie = plain_opt.clone();
    let n = cookie.len();
    cookie[n - 2..].copy_from_slice(&12u16.to_be_bytes());
    cookie.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
    let frame = udp(&cookie);
    let (out, _) = t.check(&frame, blocked, e);
    check_nxdomain(&frame, &out, 0);

    let set_count = |m: &mut Vec<u8>, at: usize, v: u16| {
        m[at..at + 2].copy_from_slice(&v.to_be_bytes());
    };
    let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
    let mut m = base();
    m.extend_from_slice(&[0xde, 0xad]);
    cases.push((m, "bytes after the question, ARCOUNT 0"));
    let mut m = plain_opt.clone();
    m.push(0);
    cases.push((m, "a byte after the OPT record"));
    let mut m = cookie.clone();
    m.pop();
    cases.push((m, "OPT RDLENGTH past the end"));
    let mut m = plain_opt.clone();
    m.truncate(m.len() - 1);
    cases.push((m, "OPT record cut"));
    let mut m = plain_opt.clone();
    let q_end = base().len();
    m[q_end + 2] = 1; // type A instead of OPT
    cases.push((m, "an additional record that is not OPT"));
    let mut m = plain_opt.clone();
    m.splice(q_end..q_end + 1, wire("x"));
    cases.push((m, "an OPT record with an owner name"));
    let mut m = base();
    set_count(&mut m, 10, 1);
    cases.push((m, "ARCOUNT 1, nothing after the question"));
    let mut m = plain_opt.clone();
    m.extend_from_slice(&plain_opt[q_end..]);
    set_count(&mut m, 10, 2);
    cases.push((m, "two OPT records"));
    let mut m = base();
    set_count(&mut m, 6, 1);
    cases.push((m, "ANCOUNT 1"));
    let mut m = base();
    set_count(&mut m, 8, 1);
    cases.push((m, "NSCOUNT 1"));
    for (i, (msg, what)) in cases.iter().enumerate() {
        eprintln!("{what}");
        t.check(&udp(msg), malformed, MALFORMED);
        let port = 44_000 + i as u16;
        open_tcp(&mut t, port);
        t.check(
            &Frame::dns_tcp(CLIENT, RESOLVER, port, msg).build(),
            malformed,
            MALFORMED,
        );
    }

    // The message is what the UDP length says (what the resolver gets): bytes after it in
    // the IP packet are not part of it...
    let mut f = udp(&base());
    let udp_at = 14 + 20;
    f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let ip_len = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    t.check(&f, blocked, e);
    // ...and a UDP length beyond the packet is not a whole message.
    let mut f = udp(&base());
    let claimed = u16::from_be_bytes([f[udp_at + 4], f[udp_at + 5]]) + 1;
    f[udp_at + 4..udp_at + 6].copy_from_slice(&claimed.to_be_bytes());
    t.check(&f, malformed, MALFORMED);
    let mut f = udp(&base());
    f[udp_at + 4..udp_at + 6].copy_from_slice(&4u16.to_be_bytes());
    t.check(&f, malformed, MALFORMED);
}

#[test]
fn fragmented_queries_are_malformed() {
    let mut t = setup(blocklist(), vec![entry("bad.example")]);
    // A first fragment holding the whole question (the rest would come later), and one
    // holding only part of the header: both are judged malformed, so the datagram can never
    // be reassembled behind Palisade's back.
    for msg in [
        query("good.example", A),
        query("good.example", A)[..6].to_vec(),
    ] {
        let mut f = Frame::dns_udp(CLIENT, RESOLVER, 40000, &msg);
        f.ipv4_frag = Some((0, true));
        t.check(&f.build(), Drop(reason::DNS_MALFORMED), MALFORMED);
        let mut f = Frame::dns_udp(CLIENT6, RESOLVER6, 40000, &msg);
        f.ipv6_ext = vec![ExtHeader::Fragment {
            offset: 0,
            more: true,
        }];
        t.check(&f.build(), Drop(reason::DNS_MALFORMED), MALFORMED);
    }
}

#[test]
fn queries_to_or_from_group_addresses_are_never_answered() {
    let mut t = setup(blocklist(), vec![entry("bad.example")]);
    let msg = query("bad.example", A);
    let e = ev("bad.example.", "A");
    let group = Drop(reason::DNS_GROUP_ADDRESS);
    let with_mac = |mut f: Vec<u8>, at: usize, mac: [u8; 6]| {
        f[at..at + 6].copy_from_slice(&mac);
        f
    };
    let bcast = [0xff; 6];
    let mcast4 = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
    let mcast6 = [0x33, 0x33, 0, 0, 0, 1];
    let cases = [
        (with_mac(udp(&msg), 0, bcast), "to the broadcast MAC"),
        (with_mac(udp(&msg), 0, mcast4), "to a multicast MAC"),
        (with_mac(udp(&msg), 6, mcast6), "from a multicast MAC"),
        (
            Frame::dns_udp(CLIENT, "255.255.255.255", 40000, &msg).build(),
            "to the limited broadcast",
        ),
        (
            Frame::dns_udp(CLIENT, "224.0.0.251", 40000, &msg).build(),
            "to IPv4 multicast",
        ),
        (
            Frame::dns_udp("239.1.2.3", RESOLVER, 40000, &msg).build(),
            "from IPv4 multicast",
        ),
        (
            Frame::dns_udp("0.0.0.0", RESOLVER, 40000, &msg).build(),
            "from 0.0.0.0",
        ),
        (
            Frame::dns_udp(CLIENT6, "ff02::fb", 40000, &msg).build(),
            "to IPv6 multicast",
        ),
        (
            Frame::dns_udp("ff05::1:3", RESOLVER6, 40000, &msg).build(),
            "from IPv6 multicast",
        ),
        (
            Frame::dns_udp("::", RESOLVER6, 40000, &msg).build(),
            "from ::",
        ),
    ];
    for (frame, what) in &cases {
        eprintln!("{what}");
        t.check(frame, group, e);
    }
    // Allowed queries to those addresses pass as before; only answers are refused.
    t.check(
        &with_mac(udp(&query("good.example", A)), 0, bcast),
        Allow,
        ev("good.example.", "A"),
    );
    // With action = "drop" the reason stays the block's own.
    t.again(
        DnsScope {
            action: DnsAction::Drop,
            ..blocklist()
        },
        vec![entry("bad.example")],
    );
    t.check(&cases[0].0, Drop(reason::DNS_BLOCKED), e);
}

#[test]
fn answers_have_a_budget_per_client_prefix() {
    let mut p = policy(Some(blocklist()), vec![entry("bad.example")], &[53]);
    p.dns.answers = AnswerBudget {
        per_second: 1,
        burst: 3,
        prefix_v4: 24,
        prefix_v6: 56,
    };
    let mut t = setup_policy(p);
    let msg = query("bad.example", A);
    let e = ev("bad.example.", "A");
    let nx = Nx(reason::DNS_BLOCKED);
    let over = Drop(reason::DNS_ANSWER_BUDGET);
    // A burst of 3 answers to one /24, shared by its addresses...
    t.check(&udp_from("203.0.113.1", &msg), nx, e);
    t.check(&udp_from("203.0.113.2", &msg), nx, e);
    t.check(&udp_from("203.0.113.1", &msg), nx, e);
    // ...then blocked queries from it are dropped unanswered.
    t.check(&udp_from("203.0.113.1", &msg), over, e);
    t.check(&udp_from("203.0.113.254", &msg), over, e);
    // Allowed queries are not answered by Palisade and spend nothing.
    t.check(
        &udp_from("203.0.113.1", &query("good.example", A)),
        Allow,
        ev("good.example.", "A"),
    );
    // The next /24 has its own budget.
    t.check(&udp_from("203.0.114.1", &msg), nx, e);
    // IPv6: per /56.
    for c in [
        "2001:db8:aa:bb00::1",
        "2001:db8:aa:bbff::2",
        "2001:db8:aa:bb12::3",
    ] {
        t.check(&udp_from(c, &msg), nx, e);
    }
    t.check(&udp_from("2001:db8:aa:bb34::4", &msg), over, e);
    t.check(&udp_from("2001:db8:aa:cc00::1", &msg), nx, e);
    // The budget refills with time: one answer a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    t.check(&udp_from("203.0.113.9", &msg), nx, e);
    t.check(&udp_from("203.0.113.9", &msg), over, e);
}
