//! Rate limits with one bucket per source country (`per = "country"`), through
//! `BPF_PROG_TEST_RUN` on the XDP firewall: two sources of one country (and of both
//! families) share a bucket, another country has its own, sources of no country share the
//! "unknown" one; the buckets' keys in `FW_RATE` carry the countries' indexes; a `[geoip]`
//! refresh that moves a network to another country moves its sources to that country's
//! bucket, in one generation switch.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test geoip_rate_testrun`.

use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData};
use palisade::{
    craft::Frame,
    firewall::apply,
    geoip::{Refresher, Tick, country_index},
    policy::config,
    testrun::Bench,
};
use palisade_common::{
    firewall::{COUNTRY_UNKNOWN, RateBucket, RateKey},
    reason,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// One packet a second, two at once: a full bucket lets two packets through, then drops.
const RULES: &str = "[[firewall.rule]]\nname = \"per-country\"\naction = \"rate-limit\"\n\
    proto = \"udp\"\ndport = 53\nrate = { pps = 1, burst = 2, per = \"country\" }\n";

fn udp(src: &str) -> Vec<u8> {
    let dst = if src.contains(':') {
        "fd00::53"
    } else {
        "10.0.0.53"
    };
    Frame::udp(src, dst, 40000, 53).build()
}

/// Runs the sources' packets in order and checks each verdict, then the rule's and the
/// rate-limit reason's counters.
#[track_caller]
fn expect(bench: &Bench, cases: &[(&str, u32)]) {
    let hits = bench.rule_hits(0).expect("rule stats").packets;
    let drops = bench
        .reason_count(reason::RATE_LIMIT)
        .expect("REASON_STATS");
    let got: Vec<(&str, u32)> = cases
        .iter()
        .map(|(src, _)| (*src, bench.run(&udp(src)).expect("test_run")))
        .collect();
    assert_eq!(got, cases, "verdicts in order");
    let want_drops = cases.iter().filter(|(_, v)| *v == XDP_DROP).count() as u64;
    assert_eq!(
        bench.rule_hits(0).expect("rule stats").packets - hits,
        cases.len() as u64,
        "every packet counted by the rule"
    );
    assert_eq!(
        bench
            .reason_count(reason::RATE_LIMIT)
            .expect("REASON_STATS")
            - drops,
        want_drops,
        "drops counted as rate-limit"
    );
}

/// The first address bytes of every bucket in `FW_RATE`, sorted.
fn bucket_countries(bench: &mut Bench) -> Vec<[u8; 16]> {
    let map: BpfHashMap<&MapData, RateKey, RateBucket> =
        BpfHashMap::try_from(bench.ebpf.map("FW_RATE").expect("FW_RATE")).expect("FW_RATE type");
    let mut v: Vec<[u8; 16]> = map.keys().map(|k| k.expect("key").addr).collect();
    v.sort_unstable();
    v
}

fn addr_of(country: u8) -> [u8; 16] {
    palisade_common::firewall::country_rate_addr(country)
}

#[test]
fn sources_share_their_countrys_bucket_and_a_refresh_moves_them() {
    let dir = std::env::temp_dir().join(format!("palisade-geoip-rate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("db.csv");
    // CN: an IPv4 /24 and an IPv6 /48; US: two /24s; JP: one address (the host hash).
    let before = "192.0.2.0,192.0.2.255,CN\n2001:db8:1::,2001:db8:1:ffff:ffff:ffff:ffff:ffff,CN\n\
                  198.51.100.0,198.51.100.255,US\n198.18.0.0,198.18.0.255,US\n\
                  203.0.113.7,203.0.113.7,JP\n";
    std::fs::write(&file, before).expect("write");
    let text = format!("[geoip]\nformat = \"dbip\"\nfiles = [\"db.csv\"]\nrefresh = 1\n{RULES}");
    let policy = config::parse_policy(&text, "p.toml", &dir)
        .unwrap_or_else(|e| panic!("policy:\n{e}\n{text}"));
    let mut bench = Bench::new().expect("load and verify the kernel programs (needs root)");
    bench.install(&policy).expect("install");

    // Two CN sources (one of each family) share one bucket: two pass, the third drops.
    expect(
        &bench,
        &[
            ("192.0.2.9", XDP_PASS),
            ("2001:db8:1::9", XDP_PASS),
            ("192.0.2.200", XDP_DROP),
            ("2001:db8:1::9", XDP_DROP),
        ],
    );
    // US has its own bucket, full; so has JP (a single address, in the host hash).
    expect(
        &bench,
        &[
            ("198.51.100.9", XDP_PASS),
            ("198.18.0.1", XDP_PASS),
            ("198.51.100.10", XDP_DROP),
            ("203.0.113.7", XDP_PASS),
            ("203.0.113.7", XDP_PASS),
            ("203.0.113.7", XDP_DROP),
        ],
    );
    // Sources of no country (JP's neighbour included) share the unknown bucket.
    expect(
        &bench,
        &[
            ("10.1.1.1", XDP_PASS),
            ("203.0.113.8", XDP_PASS),
            ("fd00::99", XDP_DROP),
        ],
    );
    let idx = |c: &[u8; 2]| country_index(*c).expect("an ISO code");
    let mut want = vec![
        addr_of(COUNTRY_UNKNOWN),
        addr_of(idx(b"CN")),
        addr_of(idx(b"US")),
        addr_of(idx(b"JP")),
    ];
    want.sort_unstable();
    assert_eq!(bucket_countries(&mut bench), want, "one bucket per country");

    // 198.51.100.0/24 moves to CN.
    let mut refresher = Refresher::default();
    let t0 = Instant::now();
    assert!(matches!(refresher.tick(&policy, t0), Tick::Idle));
    std::fs::write(
        &file,
        before.replace("198.51.100.255,US", "198.51.100.255,CN"),
    )
    .expect("write");
    let Tick::Changed(next) = refresher.tick(&policy, t0 + Duration::from_secs(2)) else {
        panic!("the changed file is read again");
    };
    let gen_before = apply::control(&bench.ebpf)
        .expect("CONTROL")
        .generation_counter;
    bench
        .install(&next)
        .expect("install the refreshed country map");
    assert_eq!(
        apply::control(&bench.ebpf)
            .expect("CONTROL")
            .generation_counter,
        gen_before + 1,
        "one generation switch"
    );
    // Every bucket refills fully in two seconds (1/s, two deep).
    std::thread::sleep(Duration::from_millis(2100));
    // The moved source now takes from CN's bucket, and US keeps its own.
    expect(
        &bench,
        &[
            ("192.0.2.9", XDP_PASS),
            ("198.51.100.9", XDP_PASS),
            ("198.51.100.9", XDP_DROP),
            ("2001:db8:1::9", XDP_DROP),
            ("198.18.0.1", XDP_PASS),
            ("198.18.0.1", XDP_PASS),
            ("198.18.0.1", XDP_DROP),
        ],
    );
    assert_eq!(bucket_countries(&mut bench), want, "no bucket was added");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn per_country_needs_geoip_and_is_refused_without() {
    let err =
        config::parse_policy(RULES, "p.toml", std::path::Path::new(".")).expect_err("no [geoip]");
    let text = err.to_string();
    assert!(
        text.contains("p.toml:6:") && text.contains("`per = \"country\"` needs a [geoip] section"),
        "{text}"
    );
}
