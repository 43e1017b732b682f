//! DNS events under a flood: the event budget (`[dns] event_rate`), the aggregate maps and
//! the summaries collected from them, through `BPF_PROG_TEST_RUN` on the real programs.
//!
//! Every test installs its own policy, clears the budget and the aggregate maps, pins itself
//! to one CPU (the budget is per CPU) and checks the exact accounting: every query is either
//! an event within the budget or a count in the aggregate maps, every name reaches an event,
//! samples are counted.
//!
//! The last test runs the real daemon behind a veth pair and floods it from the other end: its
//! JSON output must account for every query, as events and `dns_summary` counts.
//!
//! Needs root. The test-run tests share one loaded object and take turns.

#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, MutexGuard, OnceLock},
};

use aya::maps::{PerCpuArray, PerCpuValues};
use palisade::{
    craft::{DnsQuery, Frame},
    dns::summary::{Collected, Collector},
    events::DnsDecision,
    policy::{
        model::{
            Dns, DnsAction, DnsEvents, DnsMode, DnsScope, Firewall, NameEntry, NameList, Policy,
        },
        namelist,
    },
    testrun::Bench,
};
use palisade_common::{event::DnsEventBudget, reason, stats};

const XDP_DROP: u32 = 1;
const A: u16 = 1;
const RESOLVER: &str = "198.51.100.53";

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

/// Runs the calling thread on CPU 0 only: the budget and the sample countdown are per CPU.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
            0,
            "pinning the test to CPU 0"
        );
    }
}

fn entry(text: &str) -> NameEntry {
    namelist::entry(text, false, 0).unwrap_or_else(|e| panic!("bad test name {text}: {e}"))
}

/// A blocklist on ingress dropping `names`, with the event budget `events`.
fn policy(names: &[&str], events: DnsEvents) -> Policy {
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
            ports: vec![53],
            ingress: Some(DnsScope {
                mode: DnsMode::Blocklist,
                action: DnsAction::Drop,
                audit: false,
                lists: vec![0],
                block_malformed: false,
                rate: None,
                log_allowed: false,
            }),
            egress: None,
            answers: palisade::policy::model::AnswerBudget::UNLIMITED,
            lists: vec![NameList {
                name: "flood".into(),
                entries: names.iter().map(|n| entry(n)).collect(),
            }],
            events,
        },
    }
}

/// The shared object with `policy` installed, its budget full, its aggregate maps and its
/// ring empty.
fn setup(policy: &Policy) -> MutexGuard<'static, Bench> {
    pin_to_cpu0();
    let mut b = bench();
    b.install(policy).expect("installing the policy");
    {
        let m = b.map_mut("DNS_EVENT_BUDGET").expect("DNS_EVENT_BUDGET");
        let mut budget: PerCpuArray<&mut aya::maps::MapData, DnsEventBudget> =
            PerCpuArray::try_from(m).expect("DNS_EVENT_BUDGET is a per-CPU array");
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        let zero = PerCpuValues::try_from(vec![DnsEventBudget::default(); cpus])
            .expect("one value per CPU");
        budget.set(0, zero, 0).expect("clearing the budget");
    }
    Collector::open(&b.ebpf)
        .expect("opening the aggregate maps")
        .collect_all()
        .expect("clearing the aggregate maps");
    b.drain_dns_events();
    b
}

fn frame(client: &str, name: &str) -> Vec<u8> {
    Frame::dns_udp(client, RESOLVER, 40000, &DnsQuery::name(name, A).build()).build()
}

fn collect(b: &Bench) -> Collected {
    Collector::open(&b.ebpf)
        .expect("opening the aggregate maps")
        .collect_all()
        .expect("reading the aggregate maps")
}

fn stat(b: &Bench, i: u32) -> u64 {
    b.stat(i).expect("reading STATS")
}

/// Events by how they were sent: within the budget, first of a name, sample.
fn split(events: &[DnsDecision]) -> (Vec<&DnsDecision>, Vec<&DnsDecision>, Vec<&DnsDecision>) {
    let of = |s: Option<&str>| events.iter().filter(|e| e.sent == s).collect::<Vec<_>>();
    (of(None), of(Some("first")), of(Some("sample")))
}

#[test]
fn flood_over_budget_is_counted_per_name_and_client() {
    const NAMES: [&str; 5] = [
        "ads.example",
        "tracker.example",
        "malware.example",
        "c2.example",
        "phish.example",
    ];
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 10;
    const SAMPLE: u32 = 7;
    // One event per second: the first query is within the budget, the flood is not.
    let mut b = setup(&policy(
        &NAMES,
        DnsEvents {
            rate: 1,
            sample: SAMPLE,
        },
    ));
    let before = (
        stat(&b, stats::EVENTS_AGGREGATED),
        stat(&b, stats::EVENTS_SAMPLED),
        stat(&b, stats::EVENTS_LOST),
    );
    let mut sent: BTreeMap<(String, String), u64> = BTreeMap::new();
    for _ in 0..ROUNDS {
        for c in 0..CLIENTS {
            let client = format!("10.0.0.{}", c + 1);
            for n in NAMES {
                assert_eq!(b.run(&frame(&client, n)).expect("test run"), XDP_DROP);
                *sent.entry((format!("{n}."), client.clone())).or_default() += 1;
            }
        }
    }
    let total = (ROUNDS * CLIENTS * NAMES.len()) as u64;
    let aggregated = stat(&b, stats::EVENTS_AGGREGATED) - before.0;
    let sampled = stat(&b, stats::EVENTS_SAMPLED) - before.1;
    assert_eq!(stat(&b, stats::EVENTS_LOST), before.2, "no event lost");
    let events = b.drain_dns_events();
    let (in_budget, first, samples) = split(&events);
    assert_eq!(events.len(), in_budget.len() + first.len() + samples.len());

    // Every query is an event within the budget or a count.
    assert!(
        !in_budget.is_empty(),
        "the first query is within the budget"
    );
    assert!(
        in_budget.len() < 5,
        "one event per second: {} within the budget",
        in_budget.len()
    );
    assert_eq!(in_budget.len() as u64 + aggregated, total);

    // Every name aggregated is reported once in full, the first time.
    let first_names: Vec<&str> = first.iter().map(|e| e.name.as_str()).collect();
    let distinct: BTreeSet<&str> = first_names.iter().copied().collect();
    assert_eq!(
        first_names.len(),
        distinct.len(),
        "one first event per name"
    );
    let all: BTreeSet<String> = NAMES.iter().map(|n| format!("{n}.")).collect();
    assert_eq!(
        distinct
            .iter()
            .map(|s| (*s).to_string())
            .collect::<BTreeSet<_>>(),
        all,
        "every name reaches an event"
    );
    for e in &events {
        assert_eq!(e.verdict, "drop");
        assert_eq!(e.reason, reason::name(reason::DNS_BLOCKED));
    }

    // Samples: every SAMPLE-th aggregated query, unless it was also a name's first.
    assert_eq!(samples.len() as u64, sampled, "every sample is counted");
    let positions = aggregated.div_ceil(u64::from(SAMPLE));
    assert!(
        sampled <= positions && sampled + first.len() as u64 >= positions,
        "{sampled} samples for {aggregated} aggregated queries"
    );

    // The counts: per (name, client), exactly the queries that were not sent as events.
    // Every query is reported once: as an event, or in a summary's count.
    let collected = collect(&b);
    assert_eq!(
        collected.queries,
        aggregated - first.len() as u64 - samples.len() as u64
    );
    let mut expected = sent.clone();
    for e in &events {
        let client = e.client.expect("client address").to_string();
        *expected
            .get_mut(&(e.name.clone(), client))
            .expect("a sent key") -= 1;
    }
    expected.retain(|_, n| *n > 0);
    for s in &collected.summaries {
        assert_eq!(s.kind, "dns_summary");
        assert_eq!(s.verdict, "drop");
        assert_eq!(s.scope, "ingress");
        assert_eq!(s.reason, reason::name(reason::DNS_BLOCKED));
        assert_eq!(s.qtype, "A");
    }
    assert_eq!(summarized(&collected), expected);
    assert!(
        collect(&b).summaries.is_empty(),
        "collecting clears the maps"
    );
}

#[test]
fn within_budget_every_query_is_an_event() {
    let mut b = setup(&policy(
        &["ads.example"],
        DnsEvents {
            rate: 100_000,
            sample: 10,
        },
    ));
    let aggregated = stat(&b, stats::EVENTS_AGGREGATED);
    for i in 0..200 {
        let client = format!("10.1.{}.{}", i / 200, i % 200 + 1);
        assert_eq!(
            b.run(&frame(&client, "ads.example")).expect("test run"),
            XDP_DROP
        );
    }
    let events = b.drain_dns_events();
    assert_eq!(events.len(), 200);
    assert!(events.iter().all(|e| e.sent.is_none()));
    assert_eq!(stat(&b, stats::EVENTS_AGGREGATED), aggregated);
    assert!(collect(&b).summaries.is_empty());
}

#[test]
fn rate_zero_never_aggregates_and_repeat_floods_are_counted() {
    let f = frame("10.2.0.1", "ads.example");
    {
        let mut b = setup(&policy(&["ads.example"], DnsEvents::EVERY_QUERY));
        let aggregated = stat(&b, stats::EVENTS_AGGREGATED);
        let r = b
            .run_prog(palisade::testrun::FIREWALL, &f, 500)
            .expect("test run");
        assert_eq!(r.action, XDP_DROP);
        assert_eq!(b.drain_dns_events().len(), 500);
        assert_eq!(stat(&b, stats::EVENTS_AGGREGATED), aggregated);
    }
    let mut b = setup(&policy(&["ads.example"], DnsEvents { rate: 1, sample: 0 }));
    let aggregated = stat(&b, stats::EVENTS_AGGREGATED);
    let r = b
        .run_prog(palisade::testrun::FIREWALL, &f, 100_000)
        .expect("test run");
    assert_eq!(r.action, XDP_DROP);
    let aggregated = stat(&b, stats::EVENTS_AGGREGATED) - aggregated;
    let events = b.drain_dns_events();
    let (in_budget, first, samples) = split(&events);
    assert!(samples.is_empty(), "sampling is off");
    assert_eq!(first.len(), 1);
    assert_eq!(in_budget.len() as u64 + aggregated, 100_000);
    let collected = collect(&b);
    assert_eq!(collected.summaries.len(), 1);
    assert_eq!(collected.summaries[0].count, aggregated - 1);
    assert_eq!(collected.summaries[0].name, "ads.example.");
}

/// With nobody reading, the ring takes exactly what the kernel's reservation would take,
/// every query after that is a lost event (counted), and a drained ring takes events again:
/// the programs look at the ring's free room before they reserve.
#[test]
fn a_full_ring_loses_the_rest_and_takes_events_again_once_drained() {
    const QUERIES: u32 = 5_000;
    let f = frame("10.2.0.9", "ads.example");
    let mut b = setup(&policy(&["ads.example"], DnsEvents::EVERY_QUERY));
    let lost = stat(&b, stats::EVENTS_LOST);
    let r = b
        .run_prog(palisade::testrun::FIREWALL, &f, QUERIES)
        .expect("test run");
    assert_eq!(r.action, XDP_DROP);
    let lost = stat(&b, stats::EVENTS_LOST) - lost;
    let held = b.drain_dns_events().len() as u64;
    // A record is its 8-byte header and the event, padded to 8 bytes; the kernel refuses a
    // reservation that would fill the ring to its last byte.
    let record = (size_of::<palisade_common::event::DnsEvent>() as u64 + 8).div_ceil(8) * 8;
    let fits = (u64::from(palisade_common::event::EVENT_RING_BYTES) - 1) / record;
    assert!(u64::from(QUERIES) > fits, "the flood must outgrow the ring");
    assert_eq!(
        held, fits,
        "the ring held fewer records than it has room for"
    );
    assert_eq!(
        held + lost,
        u64::from(QUERIES),
        "every query an event or a lost one"
    );
    let lost = stat(&b, stats::EVENTS_LOST);
    let r = b
        .run_prog(palisade::testrun::FIREWALL, &f, 3)
        .expect("test run");
    assert_eq!(r.action, XDP_DROP);
    assert_eq!(
        b.drain_dns_events().len(),
        3,
        "a drained ring takes events again"
    );
    assert_eq!(stat(&b, stats::EVENTS_LOST), lost);
}

#[test]
fn many_distinct_names_each_reach_an_event_every_interval() {
    let mut b = setup(&policy(
        &["*.flood.example"],
        DnsEvents { rate: 1, sample: 0 },
    ));
    let names: Vec<String> = (0..300).map(|i| format!("n{i}.flood.example")).collect();
    for n in &names {
        assert_eq!(b.run(&frame("10.3.0.1", n)).expect("test run"), XDP_DROP);
    }
    let events = b.drain_dns_events();
    let shown: BTreeSet<String> = events.iter().map(|e| e.name.clone()).collect();
    let want: BTreeSet<String> = names.iter().map(|n| format!("{n}.")).collect();
    assert_eq!(shown, want, "every distinct name is an event");
    assert_eq!(events.len(), 300, "each name once");
    // Each name's one query was its first, sent in full: nothing is left to summarise.
    let (in_budget, first, _) = split(&events);
    assert_eq!(in_budget.len() + first.len(), 300);
    let collected = collect(&b);
    assert!(collected.summaries.is_empty());

    // A new interval: the same names are new again, and reported in full again.
    for n in &names[..10] {
        assert_eq!(b.run(&frame("10.3.0.1", n)).expect("test run"), XDP_DROP);
    }
    let again = b.drain_dns_events();
    let (_, first, _) = split(&again);
    assert_eq!(first.len(), again.len());
    assert!(
        first.len() >= 9,
        "the names' first events of the new interval"
    );
}

/// The daemon, flooded over a veth pair with more blocked queries than its budget: its JSON
/// output shows the name's first query in full and a `dns_summary` whose count, with the
/// events, accounts for every query.
#[test]
fn daemon_reports_a_flood_as_events_and_summaries() {
    use dns_support::{TempDir, check_policy, run_args};
    use support::{daemon::Daemon, netns::NetnsPair};

    const QUERIES: usize = 300;
    let pair = NetnsPair::new();
    let dir = TempDir::new("dns-events-flood");
    let policy = dir.write(
        "policy.toml",
        r#"
[dns]
event_rate = 1
event_sample = 0

[dns.ingress]
mode = "blocklist"
action = "drop"
lists = ["bad"]

[dns.lists.bad]
names = ["blocked.test"]
"#,
    );
    check_policy(&policy);
    let args = run_args(&dir, &policy, &pair.if_b);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&pair, &pair.ns_b, &args);

    // QUERIES queries from one socket in A, as fast as it can send them, once a datagram to
    // another port has resolved B's address.
    let script = format!(
        "import socket, time\n\
         q = bytes.fromhex('12340100000100000000000007626c6f636b656404746573740000010001')\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.sendto(b'x', ('{b}', 9))\n\
         time.sleep(0.5)\n\
         for _ in range({QUERIES}):\n    s.sendto(q, ('{b}', 53))\n",
        b = pair.v4_b
    );
    let sent = pair
        .command(&pair.ns_a, "python3")
        .args(["-c", &script])
        .status()
        .expect("run python3 in A");
    assert!(sent.success(), "sending the queries");
    // Summaries come one to two intervals later, and at exit for the rest.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let t = daemon.stop();
    assert!(t.success, "palisade exited with an error: {:?}", t.stderr);

    let lines: Vec<serde_json::Value> = t
        .stdout
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let events: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|e| e["kind"] == "dns" && e["name"] == "blocked.test.")
        .collect();
    let summaries: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|e| e["kind"] == "dns_summary")
        .collect();
    // One first event and one summary per interval the flood touched (it lasts milliseconds,
    // so nearly always one).
    let firsts = events.iter().filter(|e| e["sent"] == "first").count();
    assert!(
        (1..=2).contains(&firsts),
        "the name's first query over the budget: {events:?}"
    );
    assert!(
        (1..=2).contains(&summaries.len()),
        "one name from one client: {summaries:?}"
    );
    let mut count = 0;
    for s in &summaries {
        assert_eq!(s["name"], "blocked.test.");
        assert_eq!(s["verdict"], "drop");
        assert_eq!(s["scope"], "ingress");
        assert_eq!(s["reason"], reason::name(reason::DNS_BLOCKED));
        assert_eq!(s["client"], pair.v4_a.as_str());
        count += s["count"].as_u64().expect("a count");
    }
    assert_eq!(
        events.len() as u64 + count,
        QUERIES as u64,
        "every query reported once: {} events, a count of {count}",
        events.len()
    );
}

/// Per (name, client): the queries sent less those reported in full.
fn expected_counts(
    sent: &BTreeMap<(String, String), u64>,
    events: &[DnsDecision],
) -> BTreeMap<(String, String), u64> {
    let mut expected = sent.clone();
    for e in events {
        let client = e.client.expect("client address").to_string();
        *expected
            .get_mut(&(e.name.clone(), client))
            .expect("an event for a key that was sent") -= 1;
    }
    expected.retain(|_, n| *n > 0);
    expected
}

/// Per (name, client): the summaries' counts, one summary per key.
fn summarized(c: &Collected) -> BTreeMap<(String, String), u64> {
    let mut counted = BTreeMap::new();
    for s in &c.summaries {
        let key = (
            s.name.clone(),
            s.client.expect("client address").to_string(),
        );
        assert!(
            counted.insert(key, s.count).is_none(),
            "one summary per key"
        );
    }
    counted
}

/// Floods `names` from `clients` clients `rounds` times over: the queries sent per key.
fn flood_keys(
    b: &Bench,
    names: &[String],
    clients: usize,
    rounds: usize,
) -> BTreeMap<(String, String), u64> {
    let mut sent = BTreeMap::new();
    for _ in 0..rounds {
        for c in 0..clients {
            let client = format!("10.{}.{}.{}", 40 + c / 65_536, (c / 256) % 256, c % 256);
            for n in names {
                assert_eq!(b.run(&frame(&client, n)).expect("test run"), XDP_DROP);
                *sent.entry((format!("{n}."), client.clone())).or_default() += 1;
            }
        }
    }
    sent
}

/// This CPU's used slots of `DNS_EVENT_COUNTS` and the queries they hold, and the queries
/// counted in `DNS_EVENT_CLIENTS` (the keys whose slot another key held).
fn counted_where(b: &Bench) -> (u64, u64, u64) {
    use palisade_common::event::{DnsAggClient, DnsAggCount};
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    let fd = |name: &str| -> std::os::fd::OwnedFd {
        use std::os::fd::AsFd as _;
        let m = b.ebpf.map(name).unwrap_or_else(|| panic!("no {name} map"));
        match m {
            aya::maps::Map::PerCpuArray(m) | aya::maps::Map::PerCpuLruHashMap(m) => m
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .expect("duplicating the map's fd"),
            _ => panic!("{name} is not a per-CPU map"),
        }
    };
    let (mut used, mut in_slots) = (0, 0);
    let counts = fd("DNS_EVENT_COUNTS");
    let size = size_of::<DnsAggCount>();
    let (_, values) =
        palisade::pin::map_entries_batch(std::os::fd::AsFd::as_fd(&counts), 4, size * cpus, 4096)
            .expect("reading DNS_EVENT_COUNTS");
    for v in values.chunks_exact(size * cpus) {
        // CPU 0's slot (the tests run there).
        // SAFETY: plain old data of its size.
        let c: DnsAggCount = unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) };
        if c.count != 0 {
            used += 1;
            in_slots += u64::from(c.count);
        }
    }
    let clients = fd("DNS_EVENT_CLIENTS");
    let (_, values) = palisade::pin::map_entries_batch(
        std::os::fd::AsFd::as_fd(&clients),
        size_of::<DnsAggClient>(),
        8 * cpus,
        4096,
    )
    .expect("reading DNS_EVENT_CLIENTS");
    let in_map = values
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .sum();
    (used, in_slots, in_map)
}

/// More (name, client) keys in an interval than a CPU has count slots: the keys that find
/// their slot taken are counted in the LRU map, and the summaries still give every key its
/// exact count, the two places added up.
#[test]
fn keys_beyond_the_count_slots_are_counted_exactly() {
    const CLIENTS: usize = 400;
    let names: Vec<String> = (0..30).map(|i| format!("n{i}.slots.example")).collect();
    let mut b = setup(&policy(
        &["*.slots.example"],
        DnsEvents { rate: 1, sample: 0 },
    ));
    let aggregated = stat(&b, stats::EVENTS_AGGREGATED);
    let sent = flood_keys(&b, &names, CLIENTS, 2);
    let aggregated = stat(&b, stats::EVENTS_AGGREGATED) - aggregated;
    let events = b.drain_dns_events();
    let (in_budget, first, samples) = split(&events);
    assert!(samples.is_empty(), "sampling is off");
    assert_eq!(
        in_budget.len() as u64 + aggregated,
        (names.len() * CLIENTS * 2) as u64
    );

    let slots = u64::from(palisade_common::event::DNS_AGG_COUNT_SLOTS);
    let (used, in_slots, in_map) = counted_where(&b);
    assert!(
        used > slots / 2 && used <= slots,
        "{used} slots used by 12,000 keys"
    );
    assert!(
        in_map > 0,
        "keys whose slot was taken are counted in the map"
    );
    assert_eq!(
        in_slots + in_map,
        aggregated - first.len() as u64,
        "every aggregated query not sent in full is counted once"
    );

    let collected = collect(&b);
    assert_eq!(collected.unattributed, 0);
    assert_eq!(collected.queries, aggregated - first.len() as u64);
    assert_eq!(summarized(&collected), expected_counts(&sent, &events));
    assert_eq!(counted_where(&b), (0, 0, 0), "collecting clears the slots");
}

/// Each interval counts into its own bank of slots: collecting takes the interval before the
/// one just closed, exactly, while the next is being counted; a bank collected and cleared
/// is used again three intervals later.
#[test]
fn intervals_count_into_their_own_banks() {
    let names: Vec<String> = (0..5).map(|i| format!("n{i}.banks.example")).collect();
    let mut b = setup(&policy(
        &["*.banks.example"],
        DnsEvents { rate: 1, sample: 0 },
    ));
    let mut c = Collector::open(&b.ebpf).expect("opening the aggregate maps");
    let flood = |b: &mut Bench, rounds| {
        let sent = flood_keys(b, &names, 20, rounds);
        expected_counts(&sent, &b.drain_dns_events())
    };
    // Interval e.
    let first = flood(&mut b, 3);
    assert!(!first.is_empty());
    let got = c.collect().expect("collecting");
    assert!(
        got.summaries.is_empty(),
        "interval e is still open to stragglers"
    );
    // Interval e + 1.
    let second = flood(&mut b, 2);
    assert_eq!(summarized(&c.collect().expect("collecting")), first);
    assert_eq!(summarized(&c.collect().expect("collecting")), second);
    // Interval e + 3 counts into interval e's bank again, cleared.
    let fourth = flood(&mut b, 4);
    assert_eq!(summarized(&c.collect_all().expect("collecting")), fourth);
    assert_eq!(counted_where(&b), (0, 0, 0));
}
