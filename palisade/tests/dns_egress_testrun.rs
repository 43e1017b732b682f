//! The cgroup egress DNS program (`palisade_dns_egress`), run on crafted IP packets through
//! `BPF_PROG_TEST_RUN`, as a local process would send them.
//!
//! Every check asserts the verdict (1 allow, 0 drop), the exact movement of the egress DNS
//! counters, the drops per reason and the global counters (which the egress program leaves
//! alone), and the event.
//!
//! What the process fields of an event hold in a test run: the kernel runs the program in
//! the context of the thread that issued `BPF_PROG_TEST_RUN`, so `pid` is this test
//! process, `comm` the name of the calling thread (what `/proc/thread-self/comm` shows), `uid`
//! ours, and the socket cgroup that of the dummy socket the kernel makes for the run, which is
//! created in the caller's cgroup v2.
//!
//! Needs root. The tests share one loaded object and take turns.
//!
//! Two stress tests (ignored by default, see [`race`]) run the egress program where it really
//! runs, attached to a cgroup, while XDP runs on the same CPU, and check that its decisions
//! do not change.

use std::{
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    sync::{Mutex, MutexGuard, OnceLock},
};

use palisade::{
    craft::{DNS_FLAG_QR, DnsQuery, DnsQuestion, Frame, dns_labels, dns_tcp_payload},
    events::DnsDecision,
    firewall::apply,
    policy::{
        model::{
            AnswerBudget, Dns, DnsAction, DnsEgress, DnsMode, DnsScope, Firewall, NameEntry,
            NameList, Policy, QueryRate,
        },
        namelist,
    },
    testrun::{Bench, Counters, DNS_EGRESS, sum_counter},
};
use palisade_common::{
    dns::maps::{
        DNS_STATS_PER_SCOPE, SCOPE_EGRESS, SCOPE_INGRESS, STAT_ALLOWED, STAT_AUDITED, STAT_BLOCKED,
        STAT_QUERIES, STAT_TCP,
    },
    packet::{TCP_ACK, TCP_PSH, TCP_SYN},
    reason, stats,
};

const ALLOW: u32 = 1;
const DROP: u32 = 0;
const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;

const A: u16 = 1;
const AAAA: u16 = 28;

const HOST: &str = "10.1.2.3";
const RESOLVER: &str = "10.1.0.53";
const HOST6: &str = "fd00::3";
const RESOLVER6: &str = "fd00::53";

fn entry(text: &str) -> NameEntry {
    namelist::entry(text, false, 0).unwrap_or_else(|e| panic!("bad test name {text}: {e}"))
}

fn scope(mode: DnsMode) -> DnsScope {
    DnsScope {
        mode,
        action: DnsAction::Drop,
        audit: false,
        lists: vec![0],
        block_malformed: mode == DnsMode::Allowlist,
        rate: None,
        log_allowed: false,
    }
}

/// Egress `egress` over list 0, ingress `ingress` over list 1.
fn policy(
    egress: Option<DnsScope>,
    ingress: Option<DnsScope>,
    list0: Vec<NameEntry>,
    list1: Vec<NameEntry>,
) -> Policy {
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
            answers: AnswerBudget::UNLIMITED,
            ingress,
            egress: egress.map(|scope| DnsEgress {
                scope,
                cgroups: vec![],
            }),
            lists: vec![
                NameList {
                    name: "egress".into(),
                    entries: list0,
                },
                NameList {
                    name: "ingress".into(),
                    entries: list1,
                },
            ],
        },
    }
}

fn query(name: &str, qtype: u16) -> Vec<u8> {
    DnsQuery::name(name, qtype).build()
}

/// A UDP query as a local process sends it, from the IP header on.
fn udp(msg: &[u8]) -> Vec<u8> {
    Frame::dns_udp(HOST, RESOLVER, 33000, msg).build_ip()
}

fn udp6(msg: &[u8]) -> Vec<u8> {
    Frame::dns_udp(HOST6, RESOLVER6, 33000, msg).build_ip()
}

fn tcp(payload: &[u8]) -> Vec<u8> {
    Frame::tcp(HOST, RESOLVER, 33000, 53, TCP_PSH | TCP_ACK)
        .with_payload(payload)
        .build_ip()
}

fn q(name: &str, qtype: u16) -> Vec<u8> {
    udp(&query(name, qtype))
}

// ---------------------------------------------------------------------------------------
// Harness

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Allow,
    /// Dropped for this reason.
    Drop(u32),
    Audit(u32),
    /// Not a DNS query to inspect: allowed, nothing counted.
    Untouched,
}

use Want::{Allow, Audit, Drop, Untouched};

fn counters(b: &Bench) -> Counters {
    b.counters().expect("counter maps")
}

fn stat(scope: u8, stat: u32) -> usize {
    (u32::from(scope) * DNS_STATS_PER_SCOPE + stat) as usize
}

static BENCH: OnceLock<Mutex<Bench>> = OnceLock::new();

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

struct T {
    b: MutexGuard<'static, Bench>,
    policy: Policy,
}

fn setup(egress: DnsScope, entries: Vec<NameEntry>) -> T {
    setup_policy(policy(Some(egress), None, entries, vec![]))
}

fn setup_policy(policy: Policy) -> T {
    let mut b = bench();
    b.install(&policy).expect("installing the policy");
    b.drain_dns_events();
    b.drain_events();
    T { b, policy }
}

#[derive(Clone, Copy, Debug)]
struct Ev<'a> {
    name: &'a str,
    qtype: &'a str,
}

const MALFORMED: Ev<'static> = Ev {
    name: ".",
    qtype: "TYPE0",
};

fn ev<'a>(name: &'a str, qtype: &'a str) -> Ev<'a> {
    Ev { name, qtype }
}

/// The calling thread's command name, as the kernel keeps it.
fn thread_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .expect("comm")
        .trim_end_matches('\n')
        .to_string()
}

/// The id of this process's cgroup v2 (the inode number of its directory), if cgroup v2 is
/// mounted.
fn own_cgroup_id() -> Option<u64> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let root = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(std::fs::metadata(format!("{root}{path}")).ok()?.ino())
}

impl T {
    fn egress(&self) -> &DnsScope {
        &self
            .policy
            .dns
            .egress
            .as_ref()
            .expect("an egress scope")
            .scope
    }

    #[track_caller]
    fn check(&mut self, packet: &[u8], want: Want, e: Ev<'_>) -> Option<DnsDecision> {
        self.check_gso(packet, (0, 0), want, e)
    }

    /// As [`Self::check`], the packet marked for segmentation: `(gso_size, gso_segs)`.
    #[track_caller]
    fn check_gso(
        &mut self,
        packet: &[u8],
        (gso_size, gso_segs): (u32, u32),
        want: Want,
        e: Ev<'_>,
    ) -> Option<DnsDecision> {
        let what = format!("{want:?} {e:?} gso {gso_size}x{gso_segs} for packet {packet:02x?}");
        let before = counters(&self.b);
        let verdict = self
            .b
            .run_egress_gso(packet, gso_size, gso_segs)
            .expect("BPF_PROG_TEST_RUN");
        let after = counters(&self.b);
        let events = self.b.drain_dns_events();
        assert_eq!(self.b.drain_events(), vec![], "no firewall events: {what}");

        let want_verdict = if matches!(want, Drop(_)) { DROP } else { ALLOW };
        assert_eq!(verdict, want_verdict, "verdict: {what}");

        let is_tcp = packet[if packet[0] >> 4 == 4 { 9 } else { 6 }] == 6;
        let mut x = before.clone();
        if want != Untouched {
            x.dns[stat(SCOPE_EGRESS, STAT_QUERIES)] += 1;
            if is_tcp {
                x.dns[stat(SCOPE_EGRESS, STAT_TCP)] += 1;
            }
        }
        match want {
            Allow => x.dns[stat(SCOPE_EGRESS, STAT_ALLOWED)] += 1,
            Audit(_) => x.dns[stat(SCOPE_EGRESS, STAT_AUDITED)] += 1,
            Drop(r) => {
                x.stats[stats::DROPPED as usize] += 1;
                x.dns[stat(SCOPE_EGRESS, STAT_BLOCKED)] += 1;
                x.reasons[r as usize] += 1;
            }
            Untouched => {}
        }
        assert_eq!(after, x, "counters (before {before:?}): {what}");

        let (verdict, r) = match want {
            Allow => ("allow", reason::PASS),
            Drop(r) => ("drop", r),
            Audit(r) => ("audit", r),
            Untouched => ("", 0),
        };
        let logged = match want {
            Allow => self
                .policy
                .dns
                .egress
                .as_ref()
                .is_some_and(|s| s.scope.log_allowed),
            Untouched => false,
            _ => true,
        };
        if !logged {
            assert_eq!(events, vec![], "no DNS event: {what}");
            return None;
        }
        assert_eq!(events.len(), 1, "one DNS event: {what}: {events:?}");
        let got = events.into_iter().next().expect("one event");
        let parsed = e.name != ".";
        let list = match r {
            reason::DNS_BLOCKED | reason::DNS_ENTROPY | reason::DNS_EXPIRED => Some(0),
            reason::PASS if parsed && self.egress().mode == DnsMode::Allowlist => Some(0),
            _ => None,
        };
        let (src, sport): (IpAddr, u16) = if packet[0] >> 4 == 4 {
            (
                IpAddr::from([packet[12], packet[13], packet[14], packet[15]]),
                u16::from_be_bytes([packet[20], packet[21]]),
            )
        } else {
            let a: [u8; 16] = packet[8..24].try_into().expect("16 bytes");
            // Past the options headers, if any.
            let (mut next, mut l4) = (packet[6], 40);
            while matches!(next, 0 | 43 | 60) {
                next = packet[l4];
                l4 += (usize::from(packet[l4 + 1]) + 1) * 8;
            }
            (
                IpAddr::from(a),
                u16::from_be_bytes([packet[l4], packet[l4 + 1]]),
            )
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
            ("dns", "egress", verdict, reason::name(r), e.name, e.qtype),
            "event: {what}: {got:?}"
        );
        assert_eq!(
            (
                got.client,
                got.client_port,
                got.tcp,
                got.list,
                got.generation
            ),
            (Some(src), sport, is_tcp, list, generation),
            "event origin: {what}: {got:?}"
        );
        // The process that ran the test: see the module documentation.
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        assert_eq!(
            (got.pid, got.uid, got.comm.clone()),
            (Some(std::process::id()), Some(uid), Some(thread_comm())),
            "event process: {got:?}"
        );
        if let Some(id) = own_cgroup_id() {
            assert_eq!(got.cgroup_id, Some(id), "socket cgroup: {got:?}");
        } else {
            assert!(got.cgroup_id.is_some());
        }
        Some(got)
    }

    /// Checks a packet the hook cannot inspect (see the module documentation of the egress
    /// program): `Drop(r)` refused under reason `r`, `Audit(r)` reported and passed,
    /// `Untouched` passed without a count or an event (with `internal` counted or not). Such
    /// packets are not counted as queries, and their event has no address and no name.
    #[track_caller]
    fn check_unchecked(&mut self, packet: &[u8], want: Want, internal: bool) {
        let what = format!("{want:?} for packet {packet:02x?}");
        let before = counters(&self.b);
        let verdict = self.b.run_egress(packet).expect("BPF_PROG_TEST_RUN");
        let after = counters(&self.b);
        let events = self.b.drain_dns_events();
        let want_verdict = if matches!(want, Drop(_)) { DROP } else { ALLOW };
        assert_eq!(verdict, want_verdict, "verdict: {what}");
        let mut x = before.clone();
        if internal {
            x.stats[stats::INTERNAL as usize] += 1;
        }
        let (verdict, r) = match want {
            Drop(r) => {
                x.stats[stats::DROPPED as usize] += 1;
                x.dns[stat(SCOPE_EGRESS, STAT_BLOCKED)] += 1;
                x.reasons[r as usize] += 1;
                ("drop", r)
            }
            Audit(r) => {
                x.dns[stat(SCOPE_EGRESS, STAT_AUDITED)] += 1;
                ("audit", r)
            }
            Allow | Untouched => {
                assert_eq!(after, x, "counters: {what}");
                assert_eq!(events, vec![], "no event: {what}");
                return;
            }
        };
        assert_eq!(after, x, "counters (before {before:?}): {what}");
        assert_eq!(events.len(), 1, "one event: {what}: {events:?}");
        let e = &events[0];
        assert_eq!(
            (
                e.scope,
                e.verdict,
                e.reason,
                e.name.as_str(),
                e.qtype.as_str()
            ),
            ("egress", verdict, reason::name(r), ".", "TYPE0"),
            "event: {what}: {e:?}"
        );
        assert_eq!(
            (e.client, e.client_port, e.tcp, e.list),
            (None, 0, false, None),
            "no address in the event: {what}: {e:?}"
        );
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        assert_eq!(
            (e.pid, e.uid, e.comm.clone()),
            (Some(std::process::id()), Some(uid), Some(thread_comm())),
            "the sender is named: {e:?}"
        );
        if let Some(id) = own_cgroup_id() {
            assert_eq!(e.cgroup_id, Some(id), "socket cgroup: {e:?}");
        }
    }

    #[track_caller]
    fn checks(&mut self, cases: &[(Vec<u8>, Want, Ev<'_>)]) {
        for (p, want, e) in cases {
            self.check(p, *want, *e);
        }
    }

    fn again(&mut self, egress: DnsScope, entries: Vec<NameEntry>) {
        self.again_policy(policy(Some(egress), None, entries, vec![]));
    }

    fn again_policy(&mut self, policy: Policy) {
        self.b.install(&policy).expect("installing the policy");
        self.policy = policy;
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn egress_program_loads() {
    use aya::programs::CgroupSkb;
    let b = bench();
    let p: &CgroupSkb = b
        .ebpf
        .program(DNS_EGRESS)
        .expect("program")
        .try_into()
        .expect("cgroup_skb");
    let n = p
        .info()
        .expect("info")
        .verified_instruction_count()
        .expect("reported");
    println!("{DNS_EGRESS}: {n} verified instructions");
    assert!(n > 0 && n < 1_000_000);
}

#[test]
fn allowlist_allows_listed_names_and_drops_the_rest() {
    let mut t = setup(
        DnsScope {
            log_allowed: true,
            ..scope(DnsMode::Allowlist)
        },
        vec![entry("ok.example"), entry("*.corp.example")],
    );
    let e = t
        .check(&q("ok.example", A), Allow, ev("ok.example.", "A"))
        .expect("event");
    println!("allowed: {e:?}");
    let e = t
        .check(
            &q("bad.example", A),
            Drop(reason::DNS_NOT_ALLOWED),
            ev("bad.example.", "A"),
        )
        .expect("event");
    println!("dropped: {e:?}");
    t.checks(&[
        (
            q("Host.Corp.Example", AAAA),
            Allow,
            ev("host.corp.example.", "AAAA"),
        ),
        (
            q("corp.example", A),
            Drop(reason::DNS_NOT_ALLOWED),
            ev("corp.example.", "A"),
        ),
    ]);
}

#[test]
fn the_process_fields_are_those_of_the_calling_thread() {
    let mut t = setup(scope(DnsMode::Allowlist), vec![]);
    // Run from a thread with a name of our choosing: comm is the calling thread's.
    let b: &mut Bench = &mut t.b;
    let (events, comm) = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("dns-egress-probe".into())
            .spawn_scoped(s, || {
                let v = b.run_egress(&q("x.example", A)).expect("run");
                assert_eq!(v, DROP);
                (b.drain_dns_events(), thread_comm())
            })
            .expect("spawn")
            .join()
            .expect("join")
    });
    assert_eq!(
        comm, "dns-egress-prob",
        "the kernel keeps 15 bytes of a thread name"
    );
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].comm.as_deref(), Some("dns-egress-prob"));
    assert_eq!(events[0].pid, Some(std::process::id()));
}

#[test]
fn blocklist_and_nxdomain_falls_back_to_drop() {
    let mut t = setup(
        DnsScope {
            action: DnsAction::Nxdomain,
            ..scope(DnsMode::Blocklist)
        },
        vec![entry("*.ads.example")],
    );
    t.checks(&[
        (
            q("x.ads.example", A),
            Drop(reason::DNS_BLOCKED),
            ev("x.ads.example.", "A"),
        ),
        (q("ads.example", A), Allow, ev("ads.example.", "A")),
        (q("news.example", A), Allow, ev("news.example.", "A")),
    ]);
}

#[test]
fn ipv6_and_tcp_queries() {
    let mut t = setup(scope(DnsMode::Allowlist), vec![entry("ok.example")]);
    let ok = query("ok.example", AAAA);
    let bad = query("bad.example", AAAA);
    let whole = dns_tcp_payload(&ok);
    t.checks(&[
        // The handshakes that open the two TCP streams: not queries.
        (
            Frame::dns_tcp_syn(HOST, RESOLVER, 33000).build_ip(),
            Untouched,
            MALFORMED,
        ),
        (
            Frame::dns_tcp_syn(HOST6, RESOLVER6, 33000).build_ip(),
            Untouched,
            MALFORMED,
        ),
        (udp6(&ok), Allow, ev("ok.example.", "AAAA")),
        (
            udp6(&bad),
            Drop(reason::DNS_NOT_ALLOWED),
            ev("bad.example.", "AAAA"),
        ),
        (
            Frame::dns_tcp(HOST, RESOLVER, 33000, &ok).build_ip(),
            Allow,
            ev("ok.example.", "AAAA"),
        ),
        (
            Frame::dns_tcp(HOST6, RESOLVER6, 33000, &bad).build_ip(),
            Drop(reason::DNS_NOT_ALLOWED),
            ev("bad.example.", "AAAA"),
        ),
        // Split across segments (retransmitted from the stream's start): the first one is
        // malformed, so is the rest.
        (
            tcp(&whole[..whole.len() - 4]),
            Drop(reason::DNS_MALFORMED),
            MALFORMED,
        ),
        (
            tcp(&whole[whole.len() - 4..]),
            Drop(reason::DNS_MALFORMED),
            MALFORMED,
        ),
        (tcp(&whole[..1]), Drop(reason::DNS_MALFORMED), MALFORMED),
        // Handshake: not a query.
        (
            Frame::tcp(HOST, RESOLVER, 33000, 53, TCP_SYN).build_ip(),
            Untouched,
            MALFORMED,
        ),
    ]);
}

#[test]
fn malformed_queries_follow_the_scope_setting() {
    let two = DnsQuery::name("ok.example", A)
        .with_qdcount(2)
        .with_question(DnsQuestion::new(dns_labels("bad.example"), A))
        .build();
    let response = DnsQuery::name("ok.example", A)
        .with_flags(DNS_FLAG_QR)
        .build();
    let pointer = DnsQuery::new(dns_labels("ok"), A).with_pointer(12).build();
    let mut long = vec![vec![b'x'; 64]];
    long.push(b"example".to_vec());
    let long = DnsQuery::new(long, A).build();
    let cases = [two, response, pointer, long, vec![0; 11], vec![]];

    let mut t = setup(scope(DnsMode::Allowlist), vec![entry("ok.example")]);
    for m in &cases {
        t.check(&udp(m), Drop(reason::DNS_MALFORMED), MALFORMED);
    }
    t.again(scope(DnsMode::Blocklist), vec![entry("bad.example")]);
    for m in &cases {
        t.check(&udp(m), Allow, MALFORMED);
    }
    t.again(
        DnsScope {
            block_malformed: true,
            ..scope(DnsMode::Blocklist)
        },
        vec![entry("bad.example")],
    );
    for m in &cases {
        t.check(&udp(m), Drop(reason::DNS_MALFORMED), MALFORMED);
    }
}

#[test]
fn non_dns_packets_are_untouched() {
    let mut t = setup(scope(DnsMode::Allowlist), vec![]);
    let msg = query("bad.example", A);
    t.checks(&[
        (
            Frame::udp(HOST, RESOLVER, 33000, 5353)
                .with_payload(&msg)
                .build_ip(),
            Untouched,
            MALFORMED,
        ),
        (
            Frame::udp(HOST, RESOLVER, 53, 33000)
                .with_payload(&msg)
                .build_ip(),
            Untouched,
            MALFORMED,
        ),
        (
            Frame::icmp(HOST, RESOLVER, 8, 0).build_ip(),
            Untouched,
            MALFORMED,
        ),
        (
            Frame::tcp(HOST, RESOLVER, 33000, 443, TCP_SYN).build_ip(),
            Untouched,
            MALFORMED,
        ),
    ]);
    // Without an egress scope nothing is inspected.
    t.again_policy(policy(
        None,
        Some(scope(DnsMode::Allowlist)),
        vec![],
        vec![],
    ));
    t.check(&q("bad.example", A), Untouched, MALFORMED);
}

#[test]
fn audit_mode_reports_but_allows() {
    let mut t = setup(
        DnsScope {
            audit: true,
            ..scope(DnsMode::Allowlist)
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
        (udp(&[1, 2, 3]), Audit(reason::DNS_MALFORMED), MALFORMED),
    ]);
}

#[test]
fn egress_rate_limit_has_its_own_buckets() {
    let rate = QueryRate { qps: 1, burst: 2 };
    let egress = DnsScope {
        rate: Some(rate),
        ..scope(DnsMode::Blocklist)
    };
    let ingress = DnsScope {
        rate: Some(rate),
        action: DnsAction::Nxdomain,
        ..scope(DnsMode::Blocklist)
    };
    let mut t = setup_policy(policy(Some(egress), Some(ingress), vec![], vec![]));
    let host = "10.9.9.9";
    let p = || Frame::dns_udp(host, RESOLVER, 33000, &query("ok.example", A));
    t.check(&p().build_ip(), Allow, ev("ok.example.", "A"));
    t.check(&p().build_ip(), Allow, ev("ok.example.", "A"));
    // The rate limit comes before parsing, so a rate-limited query's event has no name.
    t.check(&p().build_ip(), Drop(reason::DNS_RATE), MALFORMED);
    // The same address arriving on XDP ingress has a bucket of its own.
    let before = sum_counter(
        &t.b.ebpf,
        "DNS_STATS",
        u32::from(SCOPE_INGRESS) * DNS_STATS_PER_SCOPE + STAT_ALLOWED,
    )
    .expect("stat");
    assert_eq!(t.b.run(&p().build()).expect("run"), XDP_PASS);
    assert_eq!(t.b.run(&p().build()).expect("run"), XDP_PASS);
    assert_eq!(t.b.run(&p().build()).expect("run"), XDP_DROP);
    let after = sum_counter(
        &t.b.ebpf,
        "DNS_STATS",
        u32::from(SCOPE_INGRESS) * DNS_STATS_PER_SCOPE + STAT_ALLOWED,
    )
    .expect("stat");
    assert_eq!(after - before, 2);
    let events = t.b.drain_dns_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].scope, events[0].verdict, events[0].reason),
        ("ingress", "drop", "dns-rate")
    );
}

#[test]
fn ingress_and_egress_scopes_have_their_own_lists() {
    // Egress: allowlist over list 0; ingress: blocklist over list 1.
    let mut t = setup_policy(policy(
        Some(scope(DnsMode::Allowlist)),
        Some(DnsScope {
            lists: vec![1],
            action: DnsAction::Drop,
            ..scope(DnsMode::Blocklist)
        }),
        vec![entry("corp.example")],
        vec![entry("corp.example"), entry("evil.example")],
    ));
    t.check(&q("corp.example", A), Allow, ev("corp.example.", "A"));
    t.check(
        &q("evil.example", A),
        Drop(reason::DNS_NOT_ALLOWED),
        ev("evil.example.", "A"),
    );
    let xdp = |name: &str| Frame::dns_udp(HOST, RESOLVER, 33000, &query(name, A)).build();
    assert_eq!(t.b.run(&xdp("corp.example")).expect("run"), XDP_DROP);
    assert_eq!(t.b.run(&xdp("other.example")).expect("run"), XDP_PASS);
    let events = t.b.drain_dns_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            events[0].scope,
            events[0].verdict,
            events[0].reason,
            events[0].name.as_str(),
            events[0].list
        ),
        ("ingress", "drop", "dns-blocked", "corp.example.", Some(1))
    );
}

// ---------------------------------------------------------------------------------------
// Sends the hook cannot judge as one query, and packets it cannot inspect

/// `[first || second]`, the first padded to `seg` bytes: what a `UDP_SEGMENT` send of `seg`
/// carries as two datagrams.
fn two_segments(first: &[u8], second: &[u8], seg: usize) -> Vec<u8> {
    let mut m = first.to_vec();
    assert!(m.len() <= seg);
    m.resize(seg, 0);
    m.extend_from_slice(second);
    m
}

#[test]
fn udp_sends_the_kernel_would_segment_are_refused_in_every_mode() {
    const SEG: u32 = 64;
    let ok = query("ok.example", A);
    let bad = query("bad.example", A);
    let both = udp(&two_segments(&ok, &bad, SEG as usize));
    let gso = (SEG, 2);

    let mut t = setup(scope(DnsMode::Allowlist), vec![entry("ok.example")]);
    // As one datagram, the bytes after the first question make it malformed (the one-query
    // framing); with segmentation it is refused for the segmentation alone.
    t.check(&both, Drop(reason::DNS_MALFORMED), MALFORMED);
    t.check_gso(&both, gso, Drop(reason::DNS_GSO), MALFORMED);
    t.check_gso(
        &udp6(&two_segments(&ok, &bad, SEG as usize)),
        gso,
        Drop(reason::DNS_GSO),
        MALFORMED,
    );
    // Even a send whose every segment would be allowed: no resolver client sends so.
    t.check_gso(
        &udp(&two_segments(&ok, &ok, SEG as usize)),
        gso,
        Drop(reason::DNS_GSO),
        MALFORMED,
    );
    // TCP segmentation offload is how TCP leaves; a TCP query is judged as usual.
    t.check(
        &Frame::dns_tcp_syn(HOST, RESOLVER, 33100).build_ip(),
        Untouched,
        MALFORMED,
    );
    t.check_gso(
        &Frame::dns_tcp(HOST, RESOLVER, 33100, &ok).build_ip(),
        gso,
        Allow,
        ev("ok.example.", "A"),
    );
    // Not to a DNS port: untouched.
    t.check_gso(
        &Frame::udp(HOST, RESOLVER, 33000, 443)
            .with_payload(&two_segments(&ok, &bad, SEG as usize))
            .build_ip(),
        gso,
        Untouched,
        MALFORMED,
    );

    // A blocklist refuses it too: the second query could be a listed name.
    t.again(scope(DnsMode::Blocklist), vec![entry("bad.example")]);
    // (These test scopes pass malformed queries under a blocklist.)
    t.check(&both, Allow, MALFORMED);
    t.check_gso(&both, gso, Drop(reason::DNS_GSO), MALFORMED);
    // Audit reports it and lets it go.
    t.again(
        DnsScope {
            audit: true,
            ..scope(DnsMode::Allowlist)
        },
        vec![entry("ok.example")],
    );
    t.check_gso(&both, gso, Audit(reason::DNS_GSO), MALFORMED);
}

/// A UDP query over IPv6 with `n` extension headers (hop-by-hop, then destination options).
fn udp6_ext(msg: &[u8], n: usize) -> Vec<u8> {
    use palisade::craft::ExtHeader;
    let mut f = Frame::dns_udp(HOST6, RESOLVER6, 33000, msg);
    f.ipv6_ext = (0..n)
        .map(|i| ExtHeader::Options {
            kind: if i == 0 { 0 } else { 60 },
            len8: 0,
        })
        .collect();
    f.build_ip()
}

#[test]
fn packets_the_hook_cannot_parse_fail_closed_under_an_allowlist_only() {
    use palisade_common::packet::MAX_IPV6_EXT_HEADERS;
    let ok = query("ok.example", A);
    let bad = query("bad.example", A);
    let max = MAX_IPV6_EXT_HEADERS;
    // IPv4 with a header length below 20 bytes.
    let mut short_ihl = udp(&ok);
    short_ihl[0] = 0x44;

    let mut t = setup(scope(DnsMode::Allowlist), vec![entry("ok.example")]);
    // As long a chain as the parser follows: inspected as usual.
    t.check(&udp6_ext(&ok, max), Allow, ev("ok.example.", "A"));
    t.check(
        &udp6_ext(&bad, max),
        Drop(reason::DNS_NOT_ALLOWED),
        ev("bad.example.", "A"),
    );
    // One more: the hook cannot see whether it carries a query, so the allowlist refuses it,
    // even for an allowed name.
    t.check_unchecked(
        &udp6_ext(&bad, max + 1),
        Drop(reason::IPV6_EXT_CHAIN),
        false,
    );
    t.check_unchecked(&udp6_ext(&ok, max + 1), Drop(reason::IPV6_EXT_CHAIN), false);
    t.check_unchecked(&short_ihl, Drop(reason::MALFORMED_L3), false);

    // A blocklist lets what it cannot read through, unreported.
    t.again(scope(DnsMode::Blocklist), vec![entry("bad.example")]);
    t.check_unchecked(&udp6_ext(&bad, max + 1), Untouched, false);
    t.check_unchecked(&short_ihl, Untouched, false);
    // Audit reports what an allowlist would have refused.
    t.again(
        DnsScope {
            audit: true,
            ..scope(DnsMode::Allowlist)
        },
        vec![entry("ok.example")],
    );
    t.check_unchecked(
        &udp6_ext(&bad, max + 1),
        Audit(reason::IPV6_EXT_CHAIN),
        false,
    );
}

/// Sets every egress scratch slot's busy flag on every CPU to `busy`.
fn set_busy(b: &mut Bench, busy: u64) {
    use aya::maps::{PerCpuArray, PerCpuValues};
    let n = aya::util::nr_cpus().expect("CPUs");
    let mut m: PerCpuArray<_, u64> =
        PerCpuArray::try_from(b.ebpf.map_mut("DNS_EGRESS_BUSY").expect("DNS_EGRESS_BUSY"))
            .expect("per-CPU array");
    for i in 0..m.len() {
        let v = PerCpuValues::try_from(vec![busy; n]).expect("values");
        m.set(i, v, 0).expect("set");
    }
}

/// The busy flags of every slot on every CPU.
fn busy_flags(b: &Bench) -> Vec<u64> {
    use aya::maps::PerCpuArray;
    let m: PerCpuArray<_, u64> =
        PerCpuArray::try_from(b.ebpf.map("DNS_EGRESS_BUSY").expect("DNS_EGRESS_BUSY"))
            .expect("per-CPU array");
    (0..m.len())
        .flat_map(|i| {
            m.get(&i, 0)
                .expect("get")
                .iter()
                .copied()
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn with_every_scratch_slot_taken_an_allowlist_refuses_and_a_blocklist_passes() {
    let ok = q("ok.example", A);
    let mut t = setup(scope(DnsMode::Allowlist), vec![entry("ok.example")]);
    // Every run gives its slot back.
    t.check(&ok, Allow, ev("ok.example.", "A"));
    t.check(
        &q("bad.example", A),
        Drop(reason::DNS_NOT_ALLOWED),
        ev("bad.example.", "A"),
    );
    let flags = busy_flags(&t.b);
    assert!(
        !flags.is_empty() && flags.iter().all(|&f| f == 0),
        "{flags:?}"
    );

    // As if every slot of the CPU belonged to a preempted or interrupted inspection.
    set_busy(&mut t.b, 1);
    t.check_unchecked(&ok, Drop(reason::DNS_BUSY), false);
    // Not even a packet that is not DNS can be told apart without a slot.
    t.check_unchecked(
        &Frame::tcp(HOST, RESOLVER, 33000, 443, TCP_SYN).build_ip(),
        Drop(reason::DNS_BUSY),
        false,
    );
    t.again(scope(DnsMode::Blocklist), vec![entry("bad.example")]);
    t.check_unchecked(&q("bad.example", A), Untouched, true);
    t.again(
        DnsScope {
            audit: true,
            ..scope(DnsMode::Allowlist)
        },
        vec![entry("ok.example")],
    );
    t.check_unchecked(&q("bad.example", A), Audit(reason::DNS_BUSY), false);
    // The flags were left as they were: a refused run claims nothing.
    assert!(busy_flags(&t.b).iter().all(|&f| f == 1));

    // One free slot is enough.
    set_busy(&mut t.b, 0);
    t.again(scope(DnsMode::Allowlist), vec![entry("ok.example")]);
    t.check(&ok, Allow, ev("ok.example.", "A"));
}

// ---------------------------------------------------------------------------------------
// Sharing the per-CPU scratch with the XDP program

#[path = "support/netns.rs"]
#[allow(dead_code, reason = "only the namespace pair is used here")]
mod netns;

/// Moves the calling thread into the named network namespace.
fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("open the namespace");
    // SAFETY: a valid namespace descriptor; only this thread changes namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; the set outlives the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// The id of the cgroup v2 mount, if any.
fn cgroup2_root() -> Option<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
        })
}

/// A throw-away cgroup v2 directory, removed on drop.
struct Cgroup(String);

impl std::ops::Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Python sending the query (hex) to 127.0.0.1:53 for some seconds; prints "sent eperm".
const SENDER: &str = r#"
import socket, sys, time
q = bytes.fromhex(sys.argv[1])
end = time.time() + float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = eperm = 0
while time.time() < end:
    for _ in range(200):
        try:
            s.sendto(q, ("127.0.0.1", 53))
        except PermissionError:
            eperm += 1
        sent += 1
print(sent, eperm)
"#;

/// What one race run saw.
struct Race {
    /// Queries the sender sent, and how many of them failed with `EPERM`.
    sent: u64,
    refused: u64,
    /// Egress events by (verdict, reason, name, client).
    events: std::collections::BTreeMap<(&'static str, &'static str, String, Option<IpAddr>), u64>,
}

/// Runs the egress program where it really runs, racing XDP on the same CPU.
///
/// The egress program runs in the sender's context: process context, bottom halves
/// enabled. XDP runs in softirq, which can run on top of it on the same CPU, here on return
/// from the IPI by which RPS hands packets arriving on a veth to CPU 0. `BPF_PROG_TEST_RUN`
/// runs programs with bottom halves disabled, so this needs the real path: the egress program
/// attached to a throw-away cgroup, a python3 process in it pinned to CPU 0 sending `sent`
/// to 127.0.0.1:53 (in namespace A) for some seconds, and paced queries for `flood` from CPU 1
/// to B's veth, whose RPS mask is CPU 0. The ingress scope inspects them but blocks nothing,
/// so the only events are egress drops.
fn race(t: &mut T, sent: &str, flood: &str, egress_list: Vec<NameEntry>) -> Race {
    use std::sync::atomic::{AtomicBool, Ordering};

    use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Xdp, XdpMode};
    use palisade::testrun::FIREWALL;

    let secs = std::env::var("PALISADE_RACE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10u64);
    let gap = std::time::Duration::from_micros(
        std::env::var("PALISADE_FLOOD_GAP_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
    );
    let pair = netns::NetnsPair::new();
    let rps = pair.exec(
        &pair.ns_b,
        "sh",
        &["-c", "echo 1 > /sys/class/net/veth-b/queues/rx-0/rps_cpus"],
    );
    assert!(rps.status.success(), "{rps:?}");
    t.again_policy(policy(
        Some(scope(DnsMode::Allowlist)),
        Some(DnsScope {
            lists: vec![1],
            ..scope(DnsMode::Blocklist)
        }),
        egress_list,
        vec![entry("nothing.invalid")],
    ));
    let b: &mut Bench = &mut t.b;
    b.drain_dns_events();
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&pair.ns_b);
            let p: &mut Xdp = b
                .ebpf
                .program_mut(FIREWALL)
                .expect("firewall")
                .try_into()
                .expect("xdp");
            p.attach(&pair.if_b, XdpMode::Skb)
                .expect("attach generic XDP");
        })
        .join()
        .expect("attach thread");
    });
    let root = cgroup2_root().expect("cgroup v2 mounted");
    let cg = Cgroup(format!("{root}/palisade-dns-race-{}", std::process::id()));
    std::fs::create_dir(&cg.0).expect("create the test cgroup");
    let link = {
        let dir = std::fs::File::open(&cg.0).expect("open the test cgroup");
        let p: &mut CgroupSkb = b
            .ebpf
            .program_mut(DNS_EGRESS)
            .expect("egress")
            .try_into()
            .expect("cgroup_skb");
        p.attach(&dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .expect("attach to the test cgroup")
    };
    let egress_queries = |b: &Bench| {
        sum_counter(
            &b.ebpf,
            "DNS_STATS",
            u32::from(SCOPE_EGRESS) * DNS_STATS_PER_SCOPE + STAT_QUERIES,
        )
        .expect("DNS_STATS")
    };
    let packets_before = b.stat(stats::PACKETS).expect("STATS");
    let queries_before = egress_queries(b);

    let stop = AtomicBool::new(false);
    let hex: String = query(sent, A).iter().map(|b| format!("{b:02x}")).collect();
    let output = std::thread::scope(|s| {
        s.spawn(|| {
            pin_to(1);
            enter_netns(&pair.ns_a);
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("socket");
            let msg = query(flood, AAAA);
            let to = format!("{}:53", pair.v4_b);
            let mut next = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let _ = sock.send_to(&msg, &to);
                next += gap;
                while std::time::Instant::now() < next {
                    std::hint::spin_loop();
                }
            }
        });
        // Into the cgroup first: `ip netns exec` mounts its own /sys.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec ip netns exec "$1" taskset -c 0 python3 -c "$2" "$3" "$4""#)
            .args([&cg.0, &pair.ns_a, SENDER, &hex, &secs.to_string()])
            .output()
            .expect("run the sender");
        stop.store(true, Ordering::Relaxed);
        out
    });
    {
        let p: &mut CgroupSkb = b
            .ebpf
            .program_mut(DNS_EGRESS)
            .expect("egress")
            .try_into()
            .expect("cgroup_skb");
        p.detach(link).expect("detach");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "sender: {output:?}");
    let counts: Vec<u64> = stdout
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [sent_n, refused] = counts[..] else {
        panic!("sender printed {stdout:?}")
    };
    let xdp_packets = b.stat(stats::PACKETS).expect("STATS") - packets_before;
    let inspected = egress_queries(b) - queries_before;
    let mut events = std::collections::BTreeMap::new();
    for e in b
        .drain_dns_events()
        .into_iter()
        .filter(|e| e.scope == "egress")
    {
        *events
            .entry((e.verdict, e.reason, e.name, e.client))
            .or_insert(0u64) += 1;
    }
    println!(
        "sent {sent:?} x {sent_n} from the cgroup ({inspected} inspected, {refused} refused) while XDP saw \
         {xdp_packets} packets for {flood:?} on the same CPU; egress events:"
    );
    for (k, n) in &events {
        println!("  {n} x {k:?}");
    }
    assert!(
        inspected >= sent_n,
        "every query went through the egress program"
    );
    assert!(
        xdp_packets > 10_000,
        "the flood did not reach XDP: {xdp_packets}"
    );
    Race {
        sent: sent_n,
        refused,
        events,
    }
}

/// An allowed query must stay allowed whatever XDP does on the same CPU.
#[test]
fn xdp_on_the_same_cpu_does_not_make_egress_refuse_allowed_queries() {
    let mut t = setup(scope(DnsMode::Allowlist), vec![]);
    let r = race(
        &mut t,
        "allowed.example",
        "a-much-longer-name-than-the-other-one.flood.example",
        vec![entry("allowed.example")],
    );
    assert_eq!(r.refused, 0, "allowed queries refused: {:?}", r.events);
    assert!(r.events.is_empty(), "{:?}", r.events);
}

/// A blocked query must stay blocked whatever XDP does on the same CPU: the allowlist
/// cannot be bypassed by racing inbound traffic for an allowed name.
#[test]
fn xdp_on_the_same_cpu_does_not_let_blocked_egress_queries_through() {
    let mut t = setup(scope(DnsMode::Allowlist), vec![]);
    let r = race(
        &mut t,
        "exfil.blocked.example",
        "allowed.example",
        vec![entry("allowed.example")],
    );
    assert_eq!(
        r.sent - r.refused,
        0,
        "blocked queries let through (allowlist bypass): {:?}",
        r.events
    );
}
