//! Threat-intelligence matching (`[intel]`) in the kernel, through `BPF_PROG_TEST_RUN` on
//! the XDP firewall: exact addresses and CIDRs of both families drop, alert or tag with their
//! counters and events; a refresh swaps generations, so an indicator removed from a feed
//! stops matching; a feed set that does not fit is refused before anything changes.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test intel_testrun`.

use std::{path::Path, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng};

use aya::maps::{HashMap, MapData};
use palisade::{
    craft::{Frame, ip},
    intel::{
        Action, Feed, Feeds, Format, Intel, Loaded, Source,
        load::{self, Sizes},
        parse,
        parse::key_of,
    },
    maps::map,
    policy::config,
    testrun::Bench,
};
use palisade_common::{
    dns::maps::{
        DNS_STATS_PER_SCOPE, SCOPE_EGRESS, SCOPE_INGRESS, STAT_INTEL_ALERTED, STAT_INTEL_TAGGED,
    },
    event::{FLAG_INTEL_TAGGED, FirewallEvent, KIND_FIREWALL},
    intel::{
        ACTION_ALERT, ACTION_DROP, ACTION_TAG, DIR_EGRESS, DIR_INGRESS, IS_ALERTED, IS_BLOOM_MAYBE,
        IS_CHECKED, IS_DROPPED, IS_FEED_HITS, IS_HIT_CIDR, IS_HIT_IP, IS_TAGGED, IntelHit,
        KIND_INTEL,
    },
    reason, stats,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const SIZES: Sizes = Sizes { ips: 64, cidrs: 16 };

/// The loaded programs with an empty (allow-all) policy and indicator maps of [`SIZES`].
fn bench() -> Bench {
    let mut b = Bench::sized(&SIZES.for_loader()).expect("load and verify the kernel programs");
    let p = config::parse_policy("", "p.toml", Path::new("/")).expect("valid policy");
    b.install(&p).expect("install");
    b
}

/// An `[intel]` with one feed per `(name, action, text)`, parsed as plain lists.
fn feeds(list: &[(&str, Action, &str)]) -> (Intel, Feeds) {
    let mut intel = Intel {
        max_ips: SIZES.ips,
        max_cidrs: SIZES.cidrs,
        ..Intel::default()
    };
    let mut loaded = Feeds::default();
    for (name, action, text) in list {
        intel.feeds.push(Feed {
            name: (*name).to_string(),
            source: Source::File(format!("/feeds/{name}").into()),
            format: Format::Plain,
            action: *action,
            refresh: Duration::from_secs(60),
            line: 1,
        });
        let indicators = parse(text, &Format::Plain, name).expect("parse");
        assert!(indicators.bad.is_empty(), "{:?}", indicators.bad);
        loaded.loaded.insert(
            (*name).to_string(),
            Loaded {
                indicators,
                at: 0,
                last_error: None,
            },
        );
    }
    (intel, loaded)
}

/// Compiles and writes `list`; the live generation afterwards.
fn write(b: &mut Bench, list: &[(&str, Action, &str)]) -> u32 {
    write_with(b, list, false)
}

/// [`write`], with `[intel] egress` set to `egress`.
fn write_with(b: &mut Bench, list: &[(&str, Action, &str)], egress: bool) -> u32 {
    let (mut intel, loaded) = feeds(list);
    intel.egress = egress;
    let c = load::compile(&intel, &loaded, SIZES).expect("fits");
    load::write(&mut b.ebpf, &c).expect("write").0
}

fn udp_from(src: &str) -> Vec<u8> {
    let dst = if src.contains(':') {
        "2001:db8:1::1"
    } else {
        "10.0.0.1"
    };
    Frame::udp(src, dst, 40_000, 9).build()
}

fn intel_counter(b: &Bench, i: u32) -> u64 {
    palisade::testrun::sum_counter(&b.ebpf, "INTEL_STATS", i).expect("counter")
}

fn intel_events(b: &mut Bench) -> Vec<FirewallEvent> {
    b.drain_events()
        .into_iter()
        .filter(|e| e.kind == KIND_INTEL)
        .collect()
}

#[test]
fn listed_sources_of_both_families_drop_with_reason_counter_and_event() {
    let mut b = bench();
    write(
        &mut b,
        &[(
            "block",
            Action::Drop,
            "192.0.2.1\n2001:db8::66\n198.51.100.0/24\n2001:db8:bad::/48\n",
        )],
    );
    let before = b.reason_count(reason::INTEL_DROP).unwrap();
    for src in [
        "192.0.2.1",
        "2001:db8::66",
        "198.51.100.77",
        "2001:db8:bad:1::9",
    ] {
        assert_eq!(b.run(&udp_from(src)).unwrap(), XDP_DROP, "{src} is listed");
    }
    for src in [
        "192.0.2.2",
        "2001:db8::67",
        "198.51.101.1",
        "2001:db8:bae::1",
        "10.9.9.9",
    ] {
        assert_eq!(
            b.run(&udp_from(src)).unwrap(),
            XDP_PASS,
            "{src} is not listed"
        );
    }
    // Only the source is checked on ingress: a listed destination passes.
    assert_eq!(
        b.run(&Frame::udp("10.0.0.2", "192.0.2.1", 1, 2).build())
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(b.reason_count(reason::INTEL_DROP).unwrap() - before, 4);
    assert_eq!(intel_counter(&b, DIR_INGRESS + IS_CHECKED), 10);
    assert_eq!(intel_counter(&b, DIR_INGRESS + IS_HIT_IP), 2);
    assert_eq!(intel_counter(&b, DIR_INGRESS + IS_HIT_CIDR), 2);
    assert_eq!(intel_counter(&b, DIR_INGRESS + IS_DROPPED), 4);
    assert_eq!(intel_counter(&b, IS_FEED_HITS), 4);
    assert!(intel_counter(&b, DIR_INGRESS + IS_BLOOM_MAYBE) >= 2);
    let events = intel_events(&mut b);
    assert_eq!(events.len(), 4, "{events:?}");
    for (e, src) in events.iter().zip([
        "192.0.2.1",
        "2001:db8::66",
        "198.51.100.77",
        "2001:db8:bad:1::9",
    ]) {
        assert_eq!(e.reason, reason::INTEL_DROP);
        assert_eq!(e.action, ACTION_DROP);
        assert_eq!(e.rule, 0, "feed id");
        assert_eq!(e.src, key_of(ip(src)));
        assert_eq!(e.proto, 17);
        assert_eq!(e.dport, 9);
    }
}

#[test]
fn alert_and_tag_pass_with_an_event_and_tag_marks_the_address() {
    let mut b = bench();
    write(
        &mut b,
        &[
            ("watch", Action::Alert, "203.0.113.5\n"),
            ("mark", Action::Tag, "2001:db8:77::/64\n"),
        ],
    );
    assert_eq!(b.run(&udp_from("203.0.113.5")).unwrap(), XDP_PASS);
    assert_eq!(b.run(&udp_from("2001:db8:77::5")).unwrap(), XDP_PASS);
    assert_eq!(intel_counter(&b, DIR_INGRESS + IS_ALERTED), 1);
    assert_eq!(intel_counter(&b, DIR_INGRESS + IS_TAGGED), 1);
    assert_eq!(intel_counter(&b, DIR_INGRESS + IS_DROPPED), 0);
    assert_eq!(intel_counter(&b, IS_FEED_HITS), 1);
    assert_eq!(intel_counter(&b, IS_FEED_HITS + 1), 1);
    let events = intel_events(&mut b);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (events[0].action, events[0].rule, events[0].reason),
        (ACTION_ALERT, 0, reason::PASS)
    );
    assert_eq!(
        (events[1].action, events[1].rule, events[1].reason),
        (ACTION_TAG, 1, reason::PASS)
    );
    let tagged: HashMap<&MapData, [u8; 16], [u8; 16]> =
        HashMap::try_from(map(&b.ebpf, "INTEL_TAGGED").unwrap()).unwrap();
    let keys: Vec<[u8; 16]> = tagged.keys().map(Result::unwrap).collect();
    assert_eq!(keys, [key_of(ip("2001:db8:77::5"))]);
    let v = tagged.get(&key_of(ip("2001:db8:77::5")), 0).unwrap();
    assert_eq!(v[0], ACTION_TAG, "action");
    assert_eq!(u16::from_ne_bytes([v[2], v[3]]), 1, "feed id");
    assert_ne!(&v[8..16], &[0; 8], "last seen");
}

#[test]
fn a_tagged_source_is_marked_in_the_firewall_and_dns_events_of_its_later_packets() {
    let mut b = Bench::sized(&SIZES.for_loader()).expect("load and verify the kernel programs");
    let p = config::parse_policy(
        r#"
[[firewall.rule]]
name = "nine"
action = "drop"
proto = "udp"
dport = 9
log = true

[dns.lists.bad]
names = ["bad.example"]

[dns.ingress]
mode = "blocklist"
action = "drop"
lists = ["bad"]
"#,
        "p.toml",
        Path::new("/"),
    )
    .expect("valid policy");
    b.install(&p).expect("install");
    write(
        &mut b,
        &[("mark", Action::Tag, "192.0.2.77\n2001:db8:77::/64\n")],
    );
    // Tagged, then dropped by the rule in the same pass: the intel event and the rule's
    // event both carry the tag.
    for src in ["192.0.2.77", "2001:db8:77::9"] {
        assert_eq!(b.run(&udp_from(src)).unwrap(), XDP_DROP, "{src}: the rule");
    }
    // Not tagged: the same rule's event without it.
    for src in ["192.0.2.78", "2001:db8:78::9"] {
        assert_eq!(b.run(&udp_from(src)).unwrap(), XDP_DROP, "{src}: the rule");
    }
    let events = b.drain_events();
    let seen: Vec<(u32, [u8; 16], u8)> = events.iter().map(|e| (e.kind, e.src, e.flags)).collect();
    let t = FLAG_INTEL_TAGGED;
    assert_eq!(
        seen,
        [
            (KIND_INTEL, key_of(ip("192.0.2.77")), t),
            (KIND_FIREWALL, key_of(ip("192.0.2.77")), t),
            (KIND_INTEL, key_of(ip("2001:db8:77::9")), t),
            (KIND_FIREWALL, key_of(ip("2001:db8:77::9")), t),
            (KIND_FIREWALL, key_of(ip("192.0.2.78")), 0),
            (KIND_FIREWALL, key_of(ip("2001:db8:78::9")), 0),
        ]
    );
    // The decoded form `palisade events` prints.
    let line = palisade::events::decode(&as_bytes(&events[1]), &|_| Some("nine".to_string()))
        .expect("a firewall event");
    assert!(line.intel_tagged);
    assert!(line.to_string().ends_with(" intel=tagged"), "{line}");
    let untagged = palisade::events::decode(&as_bytes(&events[4]), &|_| None).unwrap();
    assert!(!untagged.intel_tagged);
    assert!(!untagged.to_string().contains("intel="), "{untagged}");
    // DNS: a blocked query from the tagged address, and from one that is not.
    let dns = |src: &str| {
        let msg = palisade::craft::DnsQuery::name("bad.example", 1).build();
        Frame::dns_udp(src, "10.0.0.53", 40_000, &msg).build()
    };
    assert_eq!(b.run(&dns("192.0.2.77")).unwrap(), XDP_DROP);
    assert_eq!(b.run(&dns("192.0.2.78")).unwrap(), XDP_DROP);
    let dns_events = b.drain_dns_events();
    let tagged: Vec<(Option<std::net::IpAddr>, bool)> = dns_events
        .iter()
        .map(|e| (e.client, e.intel_tagged))
        .collect();
    assert_eq!(
        tagged,
        [
            (Some(ip("192.0.2.77")), true),
            (Some(ip("192.0.2.78")), false)
        ]
    );
    assert!(dns_events[0].to_string().contains(" intel=tagged"));
    // The tagged query's own intel event (the tag feed matched its source again).
    let intel: Vec<(u32, u8)> = b.drain_events().iter().map(|e| (e.kind, e.flags)).collect();
    assert_eq!(intel, [(KIND_INTEL, FLAG_INTEL_TAGGED)]);
    // A tag the table no longer holds is no longer reported.
    let mut table: HashMap<&mut MapData, [u8; 16], [u8; 16]> =
        HashMap::try_from(palisade::maps::map_mut(&mut b.ebpf, "INTEL_TAGGED").unwrap()).unwrap();
    table.remove(&key_of(ip("192.0.2.77"))).unwrap();
    write(&mut b, &[("mark", Action::Tag, "")]);
    assert_eq!(b.run(&udp_from("192.0.2.77")).unwrap(), XDP_DROP);
    let events = b.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].kind, events[0].flags), (KIND_FIREWALL, 0));
}

#[test]
fn the_conntrack_listing_marks_flows_whose_peer_is_tagged() {
    let mut b = Bench::sized(&SIZES.for_loader()).expect("load and verify the kernel programs");
    let p = config::parse_policy(
        "[firewall]\ndefault = \"drop\"\nstateful = true\n\n[[firewall.rule]]\nname = \"nine\"\naction = \"allow\"\nproto = \"udp\"\ndport = 9\n",
        "p.toml",
        Path::new("/"),
    )
    .expect("valid policy");
    b.install(&p).expect("install");
    write(&mut b, &[("mark", Action::Tag, "192.0.2.77\n")]);
    for src in ["192.0.2.77", "192.0.2.78"] {
        assert_eq!(b.run(&udp_from(src)).unwrap(), XDP_PASS, "{src}: allowed");
    }
    let flows = palisade::conntrack::table::flows(
        &b.ebpf,
        &palisade::conntrack::filter::FlowFilter::default(),
    )
    .expect("the tracker's tables");
    let mut seen: Vec<(std::net::IpAddr, bool)> = flows
        .iter()
        .map(|f| (f.orig_addr, f.intel_tagged))
        .collect();
    seen.sort();
    assert_eq!(seen, [(ip("192.0.2.77"), true), (ip("192.0.2.78"), false)]);
    let list = palisade::conntrack::report::FlowList { flows };
    let text = palisade::conntrack::report::print_flows(&list);
    let marked: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("intel-tagged"))
        .collect();
    assert_eq!(marked.len(), 1, "{text}");
    assert!(marked[0].contains("192.0.2.77:40000"), "{text}");
}

/// The bytes of an event record, as the ring delivers them.
fn as_bytes(e: &FirewallEvent) -> Vec<u8> {
    // SAFETY: plain old data, read as bytes.
    unsafe {
        std::slice::from_raw_parts(
            (e as *const FirewallEvent).cast::<u8>(),
            size_of::<FirewallEvent>(),
        )
    }
    .to_vec()
}

/// Whether generation `generation` holds an IPv4 /16 array.
fn has_slash16(b: &Bench, generation: u32) -> bool {
    let (outer, names) = load::SLASH16;
    palisade::capacity::slot_table(&b.ebpf, outer, names[generation as usize], generation)
        .expect("reading INTEL_V4_16")
        .is_some()
}

#[test]
fn a_refresh_swaps_generations_and_removed_indicators_stop_matching() {
    let mut b = bench();
    let g1 = write(
        &mut b,
        &[("f", Action::Drop, "192.0.2.10\n198.51.100.0/24\n")],
    );
    assert_eq!(b.run(&udp_from("192.0.2.10")).unwrap(), XDP_DROP);
    assert_eq!(b.run(&udp_from("198.51.100.1")).unwrap(), XDP_DROP);
    assert_eq!(b.run(&udp_from("192.0.2.11")).unwrap(), XDP_PASS);
    assert!(has_slash16(&b, g1), "IPv4 CIDRs have their /16 array");
    let g2 = write(&mut b, &[("f", Action::Drop, "192.0.2.11\n")]);
    assert_ne!(g1, g2);
    assert_eq!(load::control(&b.ebpf).unwrap().active, g2);
    assert!(!has_slash16(&b, g2), "no IPv4 CIDR, no /16 array");
    assert_eq!(b.run(&udp_from("192.0.2.10")).unwrap(), XDP_PASS, "removed");
    assert_eq!(
        b.run(&udp_from("198.51.100.1")).unwrap(),
        XDP_PASS,
        "removed"
    );
    assert_eq!(b.run(&udp_from("192.0.2.11")).unwrap(), XDP_DROP, "added");
    // The third write reuses the first generation: what it held before is gone, even
    // though its bloom filter still has the bits.
    let g3 = write(&mut b, &[("f", Action::Drop, "2001:db8::1\n")]);
    assert_eq!(g3, g1);
    assert!(
        !has_slash16(&b, g3),
        "the earlier /16 array is gone with its CIDRs"
    );
    for src in ["192.0.2.10", "198.51.100.1", "192.0.2.11"] {
        assert_eq!(b.run(&udp_from(src)).unwrap(), XDP_PASS, "{src}");
    }
    assert_eq!(b.run(&udp_from("2001:db8::1")).unwrap(), XDP_DROP);
    // An empty feed set leaves nothing to check.
    write(&mut b, &[("f", Action::Drop, "")]);
    let checked = intel_counter(&b, DIR_INGRESS + IS_CHECKED);
    assert_eq!(b.run(&udp_from("2001:db8::1")).unwrap(), XDP_PASS);
    assert_eq!(intel_counter(&b, DIR_INGRESS + IS_CHECKED), checked);
}

#[test]
fn a_feed_set_that_does_not_fit_is_refused_before_anything_changes() {
    let mut b = bench();
    let live = write(&mut b, &[("f", Action::Drop, "192.0.2.10\n")]);
    let many: String = (0..=SIZES.ips)
        .map(|i| format!("10.1.{}.{}\n", i / 256, i % 256))
        .collect();
    let (intel, loaded) = feeds(&[("f", Action::Drop, &many)]);
    let err = load::compile(&intel, &loaded, SIZES)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_ips"), "{err}");
    let cidrs: String = (0..=SIZES.cidrs)
        .map(|i| format!("10.{i}.0.0/16\n"))
        .collect();
    let (intel, loaded) = feeds(&[("f", Action::Drop, &cidrs)]);
    let err = load::compile(&intel, &loaded, SIZES)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_cidrs"), "{err}");
    // Few CIDRs, but more /24 blocks than the table holds: a /20 is 16 of them.
    let (intel, loaded) = feeds(&[(
        "f",
        Action::Drop,
        "10.16.0.0/20
10.99.1.0/24
",
    )]);
    let err = load::compile(&intel, &loaded, SIZES)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/24 blocks") && err.contains("max_cidrs"),
        "{err}"
    );
    assert_eq!(load::control(&b.ebpf).unwrap().active, live);
    assert_eq!(b.run(&udp_from("192.0.2.10")).unwrap(), XDP_DROP);
    // Exactly the capacity fits.
    let full: String = (0..SIZES.ips).map(|i| format!("10.1.0.{i}\n")).collect();
    write(&mut b, &[("f", Action::Drop, &full)]);
    assert_eq!(b.run(&udp_from("10.1.0.63")).unwrap(), XDP_DROP);
    assert_eq!(b.run(&udp_from("192.0.2.10")).unwrap(), XDP_PASS);
}

#[test]
fn an_indicator_in_several_feeds_takes_the_first_feeds_action() {
    let mut b = bench();
    write(
        &mut b,
        &[
            ("first", Action::Alert, "192.0.2.20\n"),
            ("second", Action::Drop, "192.0.2.20\n192.0.2.21\n"),
        ],
    );
    assert_eq!(b.run(&udp_from("192.0.2.20")).unwrap(), XDP_PASS);
    assert_eq!(b.run(&udp_from("192.0.2.21")).unwrap(), XDP_DROP);
    let events = intel_events(&mut b);
    assert_eq!(
        events
            .iter()
            .map(|e| (e.rule, e.action))
            .collect::<Vec<_>>(),
        [(0, ACTION_ALERT), (1, ACTION_DROP)]
    );
}

/// TC's "continue" and "shot".
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;

#[test]
fn egress_checks_destinations_when_the_policy_asks() {
    let mut b = bench();
    let egress = palisade::intel::EGRESS;
    let to = |dst: &str| {
        let src = if dst.contains(':') {
            "2001:db8:1::1"
        } else {
            "10.0.0.1"
        };
        Frame::tcp(src, dst, 40_000, 443, 0x02).build()
    };
    write_with(
        &mut b,
        &[("f", Action::Drop, "192.0.2.30\n2001:db8:dead::/48\n")],
        false,
    );
    assert_eq!(
        b.run_tc(egress, &to("192.0.2.30")).unwrap().0,
        TC_ACT_UNSPEC,
        "egress off"
    );
    assert_eq!(intel_counter(&b, DIR_EGRESS + IS_CHECKED), 0);
    write_with(
        &mut b,
        &[("f", Action::Drop, "192.0.2.30\n2001:db8:dead::/48\n")],
        true,
    );
    let before = b.reason_count(reason::INTEL_DROP).unwrap();
    let dropped_before = b.stat(stats::DROPPED).unwrap();
    let (verdict, out) = b.run_tc(egress, &to("192.0.2.30")).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(out, to("192.0.2.30"), "never rewritten");
    assert_eq!(
        b.run_tc(egress, &to("2001:db8:dead:1::2")).unwrap().0,
        TC_ACT_SHOT
    );
    assert_eq!(
        b.run_tc(egress, &to("192.0.2.31")).unwrap().0,
        TC_ACT_UNSPEC
    );
    // A listed source leaving (the host holds the address) is not what egress checks.
    let from_listed = Frame::tcp("192.0.2.30", "10.0.0.9", 443, 40_000, 0x12).build();
    assert_eq!(b.run_tc(egress, &from_listed).unwrap().0, TC_ACT_UNSPEC);
    // Not IP, and a truncated TCP header: passed, never judged.
    let mut arp = to("192.0.2.30");
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(b.run_tc(egress, &arp).unwrap().0, TC_ACT_UNSPEC);
    assert_eq!(
        b.run_tc(egress, &to("192.0.2.30")[..14 + 20 + 4])
            .unwrap()
            .0,
        TC_ACT_UNSPEC
    );
    assert_eq!(b.reason_count(reason::INTEL_DROP).unwrap() - before, 2);
    assert_eq!(
        b.stat(stats::DROPPED).unwrap() - dropped_before,
        2,
        "TC drops count with every other drop"
    );
    assert_eq!(intel_counter(&b, DIR_EGRESS + IS_DROPPED), 2);
    assert_eq!(intel_counter(&b, DIR_EGRESS + IS_HIT_IP), 1);
    assert_eq!(intel_counter(&b, DIR_EGRESS + IS_HIT_CIDR), 1);
    assert_eq!(
        intel_counter(&b, DIR_INGRESS + IS_CHECKED),
        0,
        "ingress untouched"
    );
    let events = intel_events(&mut b);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].generation, 1, "the egress direction");
    assert_eq!(events[0].dst, key_of(ip("192.0.2.30")));
    assert_eq!(events[0].reason, reason::INTEL_DROP);
}

/// `[intel]` of this file's sizes (no egress check) with a plain-text feed `dir/NAME.txt` of
/// each `(NAME, action)`, read every minute.
fn file_feeds(dir: &Path, list: &[(&str, Action)]) -> Intel {
    Intel {
        max_ips: SIZES.ips,
        max_cidrs: SIZES.cidrs,
        feeds: list
            .iter()
            .map(|&(name, action)| Feed {
                name: name.to_string(),
                source: Source::File(dir.join(format!("{name}.txt"))),
                format: Format::Plain,
                action,
                refresh: Duration::from_secs(60),
                line: 1,
            })
            .collect(),
        egress: false,
    }
}

#[test]
fn domains_of_drop_feeds_join_the_dns_block_lists() {
    let mut b = bench();
    let tmp = TempDir::new("palisade-intel-dns");
    let dir = tmp.0.clone();
    std::fs::write(dir.join("drop.txt"), "Evil.Example.\n192.0.2.40\n").unwrap();
    std::fs::write(dir.join("alert.txt"), "watched.example\n").unwrap();
    let policy = config::parse_policy(
        "[dns.ingress]\nmode = \"blocklist\"\naction = \"drop\"\nlists = []\n",
        "p.toml",
        Path::new("/"),
    )
    .expect("valid policy");
    let intel = file_feeds(&dir, &[("drop", Action::Drop), ("alert", Action::Alert)]);
    let mut rt = palisade::intel::runtime::Runtime::new(SIZES);
    let out = rt.refresh(&mut b.ebpf, &intel);
    assert!(out.domains_changed, "{:?}", out.notes);
    b.install(&rt.with_domains(&policy)).expect("install");
    let dns = |name: &str| {
        let msg = palisade::craft::DnsQuery::name(name, 1).build();
        Frame::dns_udp("10.0.0.2", "10.0.0.53", 40_000, &msg).build()
    };
    let before = b.reason_count(reason::DNS_BLOCKED).unwrap();
    assert_eq!(b.run(&dns("evil.example")).unwrap(), XDP_DROP);
    assert_eq!(
        b.run(&dns("www.EVIL.example")).unwrap(),
        XDP_DROP,
        "and below it"
    );
    assert_eq!(b.run(&dns("notevil.example")).unwrap(), XDP_PASS);
    assert_eq!(
        b.run(&dns("watched.example")).unwrap(),
        XDP_PASS,
        "alert feeds do not block"
    );
    assert_eq!(b.reason_count(reason::DNS_BLOCKED).unwrap() - before, 2);
    // The address of the same feed is matched in the kernel.
    assert_eq!(b.run(&udp_from("192.0.2.40")).unwrap(), XDP_DROP);
    // A refresh that removes the domain changes the lists; the same feeds do not.
    assert!(!rt.refresh(&mut b.ebpf, &intel).domains_changed);
    std::fs::write(dir.join("drop.txt"), "192.0.2.40\n").unwrap();
    assert!(rt.refresh(&mut b.ebpf, &intel).domains_changed);
    b.install(&rt.with_domains(&policy)).expect("install");
    assert_eq!(b.run(&dns("evil.example")).unwrap(), XDP_PASS);
    // A feed whose file is gone keeps its last good version.
    std::fs::remove_file(dir.join("drop.txt")).unwrap();
    let out = rt.refresh(&mut b.ebpf, &intel);
    assert!(
        out.notes
            .iter()
            .any(|n| n.contains("could not be loaded") && n.contains("keeping")),
        "{:?}",
        out.notes
    );
    assert_eq!(b.run(&udp_from("192.0.2.40")).unwrap(), XDP_DROP);
}

/// A query: its name, the XDP and egress verdicts, and the event: verdict, intel, list.
type Case<'a> = (&'a str, u32, u32, Option<(&'a str, Option<&'a str>, u16)>);

#[test]
fn domains_of_alert_and_tag_feeds_pass_with_an_event_naming_the_feed_in_both_dns_hooks() {
    let mut b = bench();
    let tmp = TempDir::new("palisade-intel-dns-actions");
    let dir = tmp.0.clone();
    std::fs::write(
        dir.join("blocked.txt"),
        "blocked.example\nbad.watched.example\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("watch.txt"),
        "watched.example\nblocked.example\nsub.blocked.example\n",
    )
    .unwrap();
    std::fs::write(dir.join("label.txt"), "tagged.example\n").unwrap();
    // Both hooks, in blocklist mode, with their default `log_allowed = false`: what an
    // alert or tag passes is reported all the same.
    let policy = config::parse_policy(
        "[dns.ingress]\nmode = \"blocklist\"\naction = \"drop\"\nlists = []\n\
         [dns.egress]\nmode = \"blocklist\"\nlists = []\n",
        "p.toml",
        Path::new("/"),
    )
    .expect("valid policy");
    let intel = file_feeds(
        &dir,
        &[
            ("watch", Action::Alert),
            ("blocked", Action::Drop),
            ("label", Action::Tag),
        ],
    );
    let mut rt = palisade::intel::runtime::Runtime::new(SIZES);
    assert!(rt.refresh(&mut b.ebpf, &intel).domains_changed);
    let installed = rt.with_domains(&policy);
    b.install(&installed).expect("install");
    let names: Vec<&str> = installed
        .dns
        .lists
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["intel-watch:alert", "intel-blocked", "intel-label:tag"]
    );
    b.drain_dns_events();
    let msg = |name: &str| palisade::craft::DnsQuery::name(name, 1).build();
    let xdp = |name: &str| Frame::dns_udp("10.0.0.2", "10.0.0.53", 40_000, &msg(name)).build();
    let egress =
        |name: &str| Frame::dns_udp("10.0.0.2", "10.0.0.53", 40_000, &msg(name)).build_ip();
    const ALLOW: u32 = 1;
    const DROP: u32 = 0;
    // (name, XDP verdict, egress verdict, event: (verdict, intel, list)).
    let cases: [Case; 8] = [
        (
            "watched.example",
            XDP_PASS,
            ALLOW,
            Some(("allow", Some("alert"), 0)),
        ),
        (
            "www.Watched.example",
            XDP_PASS,
            ALLOW,
            Some(("allow", Some("alert"), 0)),
        ),
        (
            "tagged.example",
            XDP_PASS,
            ALLOW,
            Some(("allow", Some("tag"), 2)),
        ),
        // On the drop feed and the alert feed: the block stays.
        ("blocked.example", XDP_DROP, DROP, Some(("drop", None, 1))),
        // A drop entry below an alert entry blocks...
        (
            "bad.watched.example",
            XDP_DROP,
            DROP,
            Some(("drop", None, 1)),
        ),
        (
            "x.bad.watched.example",
            XDP_DROP,
            DROP,
            Some(("drop", None, 1)),
        ),
        // ... and an alert entry below a drop entry does not lift it.
        (
            "sub.blocked.example",
            XDP_DROP,
            DROP,
            Some(("drop", None, 1)),
        ),
        ("clean.example", XDP_PASS, ALLOW, None),
    ];
    // The scope's `intel_alerted` and `intel_tagged` counters.
    let intel_counts = |b: &Bench, scope: u8| {
        let dns = b.counters().unwrap().dns;
        let at = |stat: u32| dns[(u32::from(scope) * DNS_STATS_PER_SCOPE + stat) as usize];
        (at(STAT_INTEL_ALERTED), at(STAT_INTEL_TAGGED))
    };
    for (name, want_xdp, want_egress, want_event) in cases {
        for hook in ["ingress", "egress"] {
            let scope = if hook == "ingress" {
                SCOPE_INGRESS
            } else {
                SCOPE_EGRESS
            };
            let before = intel_counts(&b, scope);
            let (verdict, want) = if hook == "ingress" {
                (b.run(&xdp(name)).unwrap(), want_xdp)
            } else {
                (b.run_egress(&egress(name)).unwrap(), want_egress)
            };
            assert_eq!(verdict, want, "{hook} {name}");
            // Each passed query for an alert or tag name is counted once, under its action.
            let after = intel_counts(&b, scope);
            let intel = want_event.and_then(|(_, intel, _)| intel);
            let want_counts = match intel {
                Some("alert") => (before.0 + 1, before.1),
                Some("tag") => (before.0, before.1 + 1),
                _ => before,
            };
            assert_eq!(after, want_counts, "{hook} {name}: (alerted, tagged)");
            let events = b.drain_dns_events();
            match want_event {
                None => assert!(events.is_empty(), "{hook} {name}: {events:?}"),
                Some((v, intel, list)) => {
                    assert_eq!(events.len(), 1, "{hook} {name}: {events:?}");
                    let e = &events[0];
                    assert_eq!(e.scope, hook, "{name}");
                    assert_eq!(e.verdict, v, "{hook} {name}");
                    assert_eq!(e.intel, intel, "{hook} {name}");
                    assert_eq!(e.list, Some(list), "{hook} {name}");
                    assert_eq!(
                        e.reason,
                        if v == "drop" { "dns-blocked" } else { "pass" },
                        "{hook} {name}"
                    );
                    assert_eq!(
                        e.name.trim_end_matches('.'),
                        name.to_ascii_lowercase(),
                        "{hook}"
                    );
                    // The daemon names the feed from the list.
                    let feed = rt.list_feed(&policy, list).map(|(f, a)| (f, a.name()));
                    let want_feed = match list {
                        0 => ("watch", "alert"),
                        1 => ("blocked", "drop"),
                        _ => ("label", "tag"),
                    };
                    assert_eq!(feed, Some(want_feed));
                }
            }
        }
    }
    // Text and JSON carry the action.
    b.run(&xdp("watched.example")).unwrap();
    let mut e = b.drain_dns_events().remove(0);
    e.feed = Some("watch".into());
    let text = e.to_string();
    assert!(text.contains(" intel=alert feed=watch"), "{text}");
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["intel"], "alert");
    assert_eq!(json["feed"], "watch");
    // Without `[intel]` lists, a scope whose name entries are its own is unchanged: the
    // alert list's name entry matches the scope's lists only.
    b.install(&policy).expect("install");
    assert_eq!(b.run(&xdp("watched.example")).unwrap(), XDP_PASS);
    assert!(b.drain_dns_events().is_empty());
}

/// A scratch directory, removed on drop (also when the test fails).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The longest CIDR of `c` covering `addr`, by brute force: the reference the stride tables
/// and the kernel are held to.
fn reference(
    c: &load::Compiled,
    addr: &[u8; 16],
) -> Option<(u32, palisade_common::intel::IntelHit)> {
    c.cidrs
        .iter()
        .filter(|((net, bits), _)| palisade_common::intel::network(*addr, *bits) == *net)
        .max_by_key(|((_, bits), _)| *bits)
        .map(|((_, bits), h)| (*bits, *h))
}

/// A random CIDR set with much overlap: IPv4 prefixes of every length inside 10.0.0.0/8 (and
/// a few shorter ones over it), IPv6 ones in 2001:db8::/32, sometimes `::/0` or `::/8` (which
/// cover every IPv4 address), spread over three feeds.
fn random_cidrs(rng: &mut StdRng) -> [String; 3] {
    let mut out: [String; 3] = Default::default();
    let n = rng.gen_range(1..60);
    for _ in 0..n {
        let line = match rng.gen_range(0..12) {
            // IPv6 at the /64 stride: /49 to /64, and longer ones inside a few /64s.
            10 | 11 => random_v6_cidr(rng, 8),
            0 => {
                let bits = rng.gen_range(0..=8);
                format!("{}.0.0.0/{bits}", rng.gen_range(0..=12u8))
            }
            1 => {
                let bits = [0, 8, 16, 33, 48][rng.gen_range(0..5)];
                if bits == 0 {
                    "::/0".to_string()
                } else if bits == 8 {
                    "::/8".to_string()
                } else {
                    format!("2001:db8:{:x}::/{bits}", rng.gen_range(0..4u16))
                }
            }
            // CIDRs longer than /24 crowded into one /24: some sets fit its slots, others
            // overflow them into the trie.
            2 => {
                let bits = rng.gen_range(25..=31u32);
                let net = (0x0a00_0000u32 | rng.gen_range(0..256u32)) & !(u32::MAX >> bits);
                format!("{}/{bits}", std::net::Ipv4Addr::from(net))
            }
            _ => {
                let bits = rng.gen_range(9..=31u32);
                let a =
                    0x0a00_0000u32 | (rng.gen_range(0..4u32) << 16) | rng.gen_range(0..0x1_0000u32);
                let net = a & !(u32::MAX >> bits);
                format!("{}/{bits}", std::net::Ipv4Addr::from(net))
            }
        };
        let feed = &mut out[rng.gen_range(0..3)];
        feed.push_str(&line);
        feed.push('\n');
    }
    out
}

/// An IPv6 CIDR of 2001:db8:0::/48 to 2001:db8:2::/48: one of /49 to /64 (its fourth group
/// small or random) or, as often, one longer than /64 inside one of the first `spread` /64s.
fn random_v6_cidr(rng: &mut StdRng, spread: u16) -> String {
    let group4 = if rng.gen_bool(0.5) {
        rng.gen_range(0..32u16)
    } else {
        rng.r#gen()
    };
    let bits = if rng.gen_bool(0.5) {
        rng.gen_range(49..=64u32)
    } else {
        rng.gen_range(65..=127u32)
    };
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    a[5] = rng.gen_range(0..3u8);
    if bits > 64 {
        a[6..8].copy_from_slice(&rng.gen_range(0..spread).to_be_bytes());
        rng.fill(&mut a[8..]);
    } else {
        a[6..8].copy_from_slice(&group4.to_be_bytes());
    }
    let net = palisade_common::intel::network(a, bits);
    format!("{}/{bits}", std::net::Ipv6Addr::from(net))
}

/// What the tables of `c` answer for `addr`, read as the kernel reads them: the IPv4 strides,
/// the IPv6 /64 table, the trie (by brute force over its entries).
fn tables_match(c: &load::Compiled, addr: &[u8; 16]) -> IntelHit {
    use palisade_common::intel::{AddrWords, network, stride_match, v6_match};
    let trie = || {
        c.trie
            .iter()
            .filter(|((n, b), _)| network(*addr, *b) == *n)
            .max_by_key(|((_, b), _)| *b)
            .map(|(_, h)| *h)
            .unwrap_or_default()
    };
    let words = AddrWords::of(addr);
    if words.is_mapped_v4() {
        if c.v4_16.is_empty() {
            IntelHit::default()
        } else {
            stride_match(
                words.v4(),
                |i| c.v4_16[i as usize],
                |k| c.v4_24.get(&k).copied().unwrap_or_default(),
                trie,
            )
        }
    } else if !c.v6_64.is_empty() {
        v6_match(
            words.slash64(),
            |k| c.v6_64.get(&k).copied().unwrap_or_default(),
            trie,
            c.v6_short,
        )
    } else {
        trie()
    }
}

fn addr_of(probe: &str) -> [u8; 16] {
    key_of(probe.parse().expect("an address"))
}

fn random_probe(rng: &mut StdRng, c: &load::Compiled) -> String {
    let cidrs: Vec<_> = c.cidrs.keys().collect();
    match rng.gen_range(0..4) {
        0 | 1 if !cidrs.is_empty() => {
            // Inside a listed CIDR, host bits random.
            let (net, bits) = cidrs[rng.gen_range(0..cidrs.len())];
            let mut a = *net;
            for (i, byte) in a.iter_mut().enumerate() {
                let start = i as u32 * 8;
                let keep = bits.saturating_sub(start).min(8);
                let mask = if keep == 8 { 0xff } else { !(0xffu8 >> keep) };
                *byte = (*byte & mask) | (rng.r#gen::<u8>() & !mask);
            }
            let ip = std::net::Ipv6Addr::from(a);
            ip.to_ipv4_mapped()
                .map_or_else(|| ip.to_string(), |v4| v4.to_string())
        }
        2 => std::net::Ipv4Addr::from(
            0x0a00_0000u32 | (rng.gen_range(0..4u32) << 16) | rng.gen_range(0..0x1_0000u32),
        )
        .to_string(),
        _ if rng.gen_bool(0.5) => format!(
            "2001:db8:{:x}::{:x}",
            rng.gen_range(0..4u16),
            rng.r#gen::<u16>()
        ),
        _ => format!(
            "2001:db8:{:x}:{:x}::{:x}",
            rng.gen_range(0..3u16),
            rng.gen_range(0..32u16),
            rng.r#gen::<u16>()
        ),
    }
}

const WIDE: Sizes = Sizes {
    ips: 64,
    cidrs: 1 << 16,
};

fn compile_wide(list: &[(&str, Action, &str)]) -> (load::Compiled, Intel, Feeds) {
    let (mut intel, loaded) = feeds(list);
    intel.max_cidrs = WIDE.cidrs;
    let c = load::compile(&intel, &loaded, WIDE).expect("fits");
    (c, intel, loaded)
}

#[test]
fn the_stride_tables_give_the_longest_prefix_match_of_a_reference() {
    let mut rng = StdRng::seed_from_u64(14);
    let (mut in_table, mut past_table) = (0, 0);
    for _ in 0..300 {
        let set = random_cidrs(&mut rng);
        let (c, _, _) = compile_wide(&[
            ("a", Action::Drop, &set[0]),
            ("b", Action::Alert, &set[1]),
            ("c", Action::Tag, &set[2]),
        ]);
        for _ in 0..200 {
            let probe = random_probe(&mut rng, &c);
            let addr = addr_of(&probe);
            let want = reference(&c, &addr).map(|(_, h)| (h.action, h.feed));
            let got = Some(tables_match(&c, &addr))
                .filter(|h| h.action != 0)
                .map(|h| (h.action, h.feed));
            assert_eq!(got, want, "{probe} in {set:?}");
        }
        in_table += usize::from(!c.v6_64.is_empty());
        past_table +=
            usize::from(c.trie.iter().any(|((n, b), _)| {
                (49..=64).contains(b) && !palisade_common::intel::is_mapped_v4(n)
            }));
    }
    // Sets with IPv6 CIDRs in the /64 table, and sets whose /49s and /50s did not all fit it.
    assert!(in_table > 200 && past_table >= 3, "{in_table} {past_table}");
}

/// Maps of 64 CIDRs, so that a /58 (64 /64s) or two /60s fill the /64 table.
const NARROW: Sizes = Sizes { ips: 64, cidrs: 64 };

#[test]
fn the_kernel_matches_ipv6_cidrs_at_the_slash64_stride_and_past_its_capacity() {
    use palisade_common::intel::{HAS_CIDRS_V6_64, HAS_CIDRS_V6_SHORT};
    let mut b = Bench::sized(&NARROW.for_loader()).expect("load and verify the kernel programs");
    let p = config::parse_policy("", "p.toml", Path::new("/")).expect("valid policy");
    b.install(&p).expect("install");
    let compile = |list: &[(&str, Action, &str)]| {
        let (mut intel, loaded) = feeds(list);
        intel.max_cidrs = NARROW.cidrs;
        load::compile(&intel, &loaded, NARROW).expect("fits")
    };
    // CIDRs in the stride tables only (an empty trie, no addresses) match too.
    for (cidr, inside, outside) in [
        ("10.9.0.0/16", "10.9.1.1", "10.8.1.1"),
        ("2001:db8:5:7::/64", "2001:db8:5:7::9", "2001:db8:5:8::9"),
    ] {
        let c = compile(&[("a", Action::Drop, cidr)]);
        assert!(c.trie.is_empty() && c.ips.is_empty(), "{cidr}");
        load::write(&mut b.ebpf, &c).expect("write");
        assert_eq!(b.run(&udp_from(inside)).unwrap(), XDP_DROP, "{inside}");
        assert_eq!(b.run(&udp_from(outside)).unwrap(), XDP_PASS, "{outside}");
    }
    let mut rng = StdRng::seed_from_u64(6464);
    let (mut fell_back, mut all_in, mut short) = (0, 0, 0);
    for _ in 0..30 {
        let mut set: [String; 3] = Default::default();
        // Small sets (whose /49 to /64 CIDRs often all fit) and large ones (which overflow).
        let most = if rng.gen_bool(0.5) { 6 } else { 40 };
        let lines = rng.gen_range(1..most);
        for _ in 0..lines {
            let line = if rng.gen_range(0..8) == 0 {
                format!(
                    "2001:db8:{:x}::/{}",
                    rng.gen_range(0..3u16),
                    [33, 47, 48][rng.gen_range(0..3)]
                )
            } else {
                random_v6_cidr(&mut rng, 40)
            };
            let feed = &mut set[rng.gen_range(0..3)];
            feed.push_str(&line);
            feed.push('\n');
        }
        let list = [
            ("a", Action::Drop, set[0].as_str()),
            ("b", Action::Alert, set[1].as_str()),
            ("c", Action::Tag, set[2].as_str()),
        ];
        let c = compile(&list);
        assert!(c.v6_64.len() <= NARROW.cidrs as usize, "{}", c.v6_64.len());
        load::write(&mut b.ebpf, &c).expect("write");
        let ctl = load::control(&b.ebpf).unwrap();
        let bits = ctl.enabled[ctl.active as usize];
        assert_eq!(bits & HAS_CIDRS_V6_64 != 0, !c.v6_64.is_empty());
        assert_eq!(bits & HAS_CIDRS_V6_SHORT != 0, c.v6_short);
        if c.trie.iter().any(|((_, bits), _)| (49..=64).contains(bits)) {
            fell_back += 1;
        } else if !c.v6_64.is_empty() {
            all_in += 1;
        }
        short += usize::from(c.v6_short);
        b.drain_events();
        for _ in 0..60 {
            let probe = random_probe(&mut rng, &c);
            let addr = addr_of(&probe);
            let want = reference(&c, &addr).map(|(_, h)| (h.action, h.feed));
            let table = Some(tables_match(&c, &addr))
                .filter(|h| h.action != 0)
                .map(|h| (h.action, h.feed));
            assert_eq!(table, want, "{probe} in {set:?}");
            let verdict = b.run(&udp_from(&probe)).unwrap();
            let got: Vec<_> = intel_events(&mut b)
                .iter()
                .map(|e| (e.action, e.rule as u16))
                .collect();
            assert_eq!(
                got,
                want.into_iter().collect::<Vec<_>>(),
                "{probe} in {set:?}"
            );
            let dropped = want.is_some_and(|(a, _)| a == ACTION_DROP);
            assert_eq!(
                verdict,
                if dropped { XDP_DROP } else { XDP_PASS },
                "{probe}"
            );
        }
    }
    // Sets whose /49 to /64 CIDRs all went into the table, sets where some stayed in the
    // trie for want of room, sets with short ones in the trie.
    assert!(
        fell_back > 3 && all_in > 3 && short > 3,
        "{fell_back} {all_in} {short}"
    );
}

#[test]
fn the_kernel_matches_random_cidr_sets_as_the_reference_does() {
    let mut b = Bench::sized(&WIDE.for_loader()).expect("load and verify the kernel programs");
    let p = config::parse_policy("", "p.toml", Path::new("/")).expect("valid policy");
    b.install(&p).expect("install");
    let mut rng = StdRng::seed_from_u64(1414);
    let (mut hits, mut misses) = (0, 0);
    for _ in 0..40 {
        let set = random_cidrs(&mut rng);
        let list = [
            ("a", Action::Drop, set[0].as_str()),
            ("b", Action::Alert, set[1].as_str()),
            ("c", Action::Tag, set[2].as_str()),
        ];
        let (c, _, _) = compile_wide(&list);
        load::write(&mut b.ebpf, &c).expect("write");
        b.drain_events();
        for _ in 0..60 {
            let probe = random_probe(&mut rng, &c);
            let want = reference(&c, &addr_of(&probe)).map(|(_, h)| (h.action, h.feed));
            let verdict = b.run(&udp_from(&probe)).unwrap();
            let got: Vec<_> = intel_events(&mut b)
                .iter()
                .map(|e| (e.action, e.rule as u16))
                .collect();
            assert_eq!(
                got,
                want.into_iter().collect::<Vec<_>>(),
                "{probe} in {set:?}"
            );
            let dropped = want.is_some_and(|(a, _)| a == ACTION_DROP);
            assert_eq!(
                verdict,
                if dropped { XDP_DROP } else { XDP_PASS },
                "{probe}"
            );
            if want.is_some() {
                hits += 1;
            } else {
                misses += 1;
            }
        }
    }
    assert!(hits > 500 && misses > 100, "{hits} hits, {misses} misses");
}

#[test]
fn every_refresh_starts_from_a_fresh_bloom_filter() {
    use palisade_common::intel::{IS_BLOOM_FALSE, bloom_blocks, bloom_hash, bloom_test};
    const SIZED: Sizes = Sizes {
        ips: 4096,
        cidrs: 16,
    };
    let mut b = Bench::sized(&SIZED.for_loader()).expect("load and verify the kernel programs");
    let p = config::parse_policy("", "p.toml", Path::new("/")).expect("valid policy");
    b.install(&p).expect("install");
    let blocks = bloom_blocks(SIZED.ips);
    let probes: Vec<String> = (0..2000u32)
        .map(|i| format!("172.16.{}.{}", i / 250, i % 250))
        .collect();
    let mut maybes = Vec::new();
    for round in 0..6u32 {
        // Each refresh replaces the whole set by a disjoint one that fills the table.
        let set: String = (0..SIZED.ips)
            .map(|i| format!("11.{round}.{}.{}\n", i / 256, i % 256))
            .collect();
        let (mut intel, loaded) = feeds(&[("f", Action::Drop, &set)]);
        intel.max_ips = SIZED.ips;
        let c = load::compile(&intel, &loaded, SIZED).expect("fits");
        load::write(&mut b.ebpf, &c).expect("write");
        assert_eq!(load::control(&b.ebpf).unwrap().bloom_mask, blocks - 1);
        // What a filter built from this set alone answers.
        let fresh = load::build_bloom(c.ips.keys(), blocks);
        let want = probes
            .iter()
            .filter(|p| {
                let (blk, pos) = bloom_hash(&addr_of(p), blocks - 1);
                bloom_test(&fresh[blk as usize], pos)
            })
            .count() as u64;
        let (maybe0, false0) = (
            intel_counter(&b, DIR_INGRESS + IS_BLOOM_MAYBE),
            intel_counter(&b, DIR_INGRESS + IS_BLOOM_FALSE),
        );
        for p in &probes {
            assert_eq!(b.run(&udp_from(p)).unwrap(), XDP_PASS, "{p}");
        }
        let maybe = intel_counter(&b, DIR_INGRESS + IS_BLOOM_MAYBE) - maybe0;
        let false_positives = intel_counter(&b, DIR_INGRESS + IS_BLOOM_FALSE) - false0;
        assert_eq!((maybe, false_positives), (want, want), "round {round}");
        // Every listed address is a "maybe" confirmed by the table.
        assert_eq!(
            b.run(&udp_from(&format!("11.{round}.3.7"))).unwrap(),
            XDP_DROP
        );
        maybes.push(maybe);
    }
    // A fresh filter at every refresh: the rate does not climb with the refreshes (a filter
    // keeping old bits would answer "maybe" for far more after 6 disjoint sets).
    let first = maybes[0];
    assert!(
        maybes.iter().all(|&m| m <= first * 2 + 20),
        "maybes per round: {maybes:?}"
    );
    assert!(maybes.iter().all(|&m| m < 100), "{maybes:?} of 2000");
}
