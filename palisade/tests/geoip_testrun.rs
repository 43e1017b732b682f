//! Country sets (`@country:XX`) in the kernel, through `BPF_PROG_TEST_RUN` on the XDP
//! firewall: the committed synthetic databases in both formats (GeoLite2 and DB-IP lite)
//! become sets that drop by source and destination in both families, with the rules'
//! counters; a refresh that moves a network to another country swaps the sets in one
//! generation switch.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test geoip_testrun`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use palisade::{
    craft::Frame,
    firewall::apply,
    geoip::{self, Refresher, Tick},
    policy::{config, model::Policy},
    testrun::Bench,
};
use palisade_common::{packet::TCP_SYN, reason};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/geoip")
}

const RULES: &str = "[[firewall.rule]]\nname = \"from-cn\"\naction = \"drop\"\nsrc = \"@country:cn\"\n\
    [[firewall.rule]]\nname = \"to-de\"\naction = \"drop\"\nproto = \"tcp\"\ndst = \"@country:DE\"\n";

fn syn(src: &str, dst: &str) -> Vec<u8> {
    Frame::tcp(src, dst, 40000, 443, TCP_SYN).build()
}

fn load(text: &str, dir: &Path) -> (Bench, Policy) {
    let policy = config::parse_policy(text, "p.toml", dir)
        .unwrap_or_else(|e| panic!("policy:\n{e}\n{text}"));
    let mut bench = Bench::new().expect("load and verify the kernel programs (needs root)");
    bench.install(&policy).expect("install");
    (bench, policy)
}

/// Runs each frame and checks the verdicts, then the rules' and reasons' counters.
#[track_caller]
fn check(bench: &Bench, cases: &[(Vec<u8>, u32, Option<u32>)], before: &[u64; 2]) -> [u64; 2] {
    let mut want = *before;
    let rule_drops_before = bench.reason_count(reason::RULE).expect("REASON_STATS");
    let mut drops = 0;
    for (i, (frame, verdict, rule)) in cases.iter().enumerate() {
        assert_eq!(bench.run(frame).expect("test_run"), *verdict, "case {i}");
        if let Some(r) = rule {
            want[*r as usize] += 1;
            drops += 1;
        }
    }
    let got = [0, 1].map(|r| bench.rule_hits(r).expect("rule stats").packets);
    assert_eq!(got, want, "packets counted by rule");
    assert_eq!(
        bench.reason_count(reason::RULE).expect("REASON_STATS") - rule_drops_before,
        drops
    );
    got
}

#[test]
fn countries_from_both_formats_drop_by_source_and_destination() {
    let geolite2 = "[geoip]\nformat = \"geolite2\"\nblocks = [\"GeoLite2-Country-Blocks-IPv4.csv\", \
                    \"GeoLite2-Country-Blocks-IPv6.csv\"]\nlocations = \"GeoLite2-Country-Locations-en.csv\"\n";
    let dbip = "[geoip]\nformat = \"dbip\"\nfiles = [\"dbip-country-lite.csv\"]\n";
    // One load of the programs for both (loading is what takes time here).
    let mut bench = Bench::new().expect("load and verify the kernel programs (needs root)");
    for (name, head) in [("geolite2", geolite2), ("dbip", dbip)] {
        eprintln!("{name}");
        let text = format!("{head}{RULES}");
        let policy = config::parse_policy(&text, "p.toml", &fixtures())
            .unwrap_or_else(|e| panic!("policy:\n{e}\n{text}"));
        bench.install(&policy).expect("install");
        let base = [0, 1].map(|r| bench.rule_hits(r).expect("rule stats").packets);
        let host = "10.0.0.1";
        let host6 = "fd00::1";
        let mut cases = vec![
            // CN: 192.0.2.0/25 and 2001:db8:1::/48, edges included.
            (syn("192.0.2.0", host), XDP_DROP, Some(0)),
            (syn("192.0.2.127", host), XDP_DROP, Some(0)),
            (syn("2001:db8:1::5", host6), XDP_DROP, Some(0)),
            (
                syn("2001:db8:1:ffff:ffff:ffff:ffff:ffff", host6),
                XDP_DROP,
                Some(0),
            ),
            // US (one of them only registered there) and KR pass.
            (syn("192.0.2.128", host), XDP_PASS, None),
            (syn("198.51.100.7", host), XDP_PASS, None),
            (syn("2001:db8:2::5", host6), XDP_PASS, None),
            (syn("2001:db8:3::5", host6), XDP_PASS, None),
            // An IPv4-mapped IPv6 source is not the IPv4 address.
            (syn("::ffff:192.0.2.1", host6), XDP_PASS, None),
            // To DE over TCP.
            (syn(host, "203.0.113.50"), XDP_DROP, Some(1)),
            (syn(host, "203.0.113.5"), XDP_DROP, Some(1)),
            (syn(host, "203.0.113.100"), XDP_DROP, Some(1)),
            (
                Frame::udp(host, "203.0.113.50", 1, 53).build(),
                XDP_PASS,
                None,
            ),
        ];
        // DB-IP lists DE as 203.0.113.5-100 only; GeoLite2 as the whole /24.
        let edge = if name == "dbip" {
            (XDP_PASS, None)
        } else {
            (XDP_DROP, Some(1))
        };
        cases.push((syn(host, "203.0.113.4"), edge.0, edge.1));
        cases.push((syn(host, "203.0.113.101"), edge.0, edge.1));
        check(&bench, &cases, &base);
    }
}

#[test]
fn a_refresh_swaps_the_country_sets_in_one_generation() {
    let dir = std::env::temp_dir().join(format!("palisade-geoip-testrun-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("db.csv");
    std::fs::write(
        &file,
        "192.0.2.0,192.0.2.255,CN\n198.51.100.0,198.51.100.255,US\n",
    )
    .expect("write");
    let text = format!("[geoip]\nformat = \"dbip\"\nfiles = [\"db.csv\"]\nrefresh = 1\n{RULES}");
    let (mut bench, policy) = load(&text, &dir);
    let gen_before = apply::control(&bench.ebpf)
        .expect("CONTROL")
        .generation_counter;
    check(
        &bench,
        &[
            (syn("192.0.2.9", "10.0.0.1"), XDP_DROP, Some(0)),
            (syn("198.51.100.9", "10.0.0.1"), XDP_PASS, None),
        ],
        &[0, 0],
    );

    let mut refresher = Refresher::default();
    let t0 = Instant::now();
    assert!(
        matches!(refresher.tick(&policy, t0), Tick::Idle),
        "the first tick only stamps"
    );
    assert!(
        matches!(
            refresher.tick(&policy, t0 + Duration::from_secs(2)),
            Tick::Idle
        ),
        "unchanged files"
    );
    // 198.51.100.0/24 moves to CN, and the file grows a bad line: refused, nothing changes.
    std::fs::write(
        &file,
        "192.0.2.0,192.0.2.255,CN\n198.51.100.0,198.51.100.255,CN\nbad\n",
    )
    .expect("write");
    let Tick::Failed(msg) = refresher.tick(&policy, t0 + Duration::from_secs(4)) else {
        panic!("a bad file is refused");
    };
    assert!(
        msg.contains("db.csv:3:1: expected `start,end,country`"),
        "{msg}"
    );
    std::fs::write(
        &file,
        "192.0.2.0,192.0.2.255,CN\n198.51.100.0,198.51.100.255,CN\n",
    )
    .expect("write");
    assert!(
        matches!(
            refresher.tick(&policy, t0 + Duration::from_millis(4500)),
            Tick::Idle
        ),
        "not due yet"
    );
    let Tick::Changed(next) = refresher.tick(&policy, t0 + Duration::from_secs(6)) else {
        panic!("the changed file is read again");
    };
    assert_eq!(next.firewall, policy.firewall, "only the sets change");
    bench.install(&next).expect("install the refreshed sets");
    assert_eq!(
        apply::control(&bench.ebpf)
            .expect("CONTROL")
            .generation_counter,
        gen_before + 1,
        "one generation switch"
    );
    // The new generation's rule counters start from what the switch left in them.
    let base = [0, 1].map(|r| bench.rule_hits(r).expect("rule stats").packets);
    check(
        &bench,
        &[
            (syn("192.0.2.9", "10.0.0.1"), XDP_DROP, Some(0)),
            (syn("198.51.100.9", "10.0.0.1"), XDP_DROP, Some(0)),
        ],
        &base,
    );
    // Nothing left to do once the sets match the files.
    assert_eq!(geoip::refreshed(&next).expect("read").map(|_| ()), None);
    std::fs::remove_dir_all(&dir).expect("clean up");
}
