//! The policy tables sized from the policy, with the real daemon: a set of 1.2M hosts and a
//! list of 2.5M DNS names each install, reload, take a live edit and survive a restart; a
//! policy that outgrows the running tables gets new ones in the reload itself (the other
//! generation's table is left as it is), and a policy that shrank gets smaller ones again.
//! The engines' state maps are sized by use when the daemon starts (`capacity::engines`).
//!
//! Verdicts are read with test runs of the pinned firewall program against the pinned maps
//! (1 = `XDP_DROP`, 2 = `XDP_PASS`), so they are the ones real traffic gets.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{os::fd::AsFd as _, path::Path, time::Instant};

use control::{GuardedHost, cli, run_pinned};
use palisade::craft;
use support::netns::NetnsPair;

const HOSTS: u32 = 1_200_000;
const NAMES: u32 = 2_500_000;

/// Host `i` of the big set: `10.0.0.0` upwards.
fn host(i: u32) -> String {
    format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)
}

/// The capacities of the tables in the slots of the array of tables `map` the daemon pinned,
/// smallest first (one per generation that has one).
fn rooms(g: &GuardedHost, map: &str) -> Vec<u32> {
    use aya::maps::{ArrayOfMaps, Map, MapData};
    let data = MapData::from_pin(g.scratch.pinned_map(map)).expect("open the pinned map");
    let outer: ArrayOfMaps<MapData, MapData> =
        ArrayOfMaps::try_from(Map::ArrayOfMaps(data)).expect("an array of tables");
    let mut out: Vec<u32> = (0..2)
        .filter_map(|i| outer.get(&i, 0).ok())
        .map(|t| palisade::pin::map_info(t.fd().as_fd()).expect("map info").4)
        .collect();
    out.sort_unstable();
    out
}

/// A policy dropping sources in set `big`, read from `hosts`.
fn set_policy(hosts: &Path) -> String {
    format!(
        "[sets.big]\nfiles = [\"{}\"]\n\n[[firewall.rule]]\nname = \"big\"\naction = \"drop\"\nsrc = \"@big\"\n",
        hosts.display()
    )
}

fn write_hosts(path: &Path, n: u32) {
    let text: String = (0..n).map(|i| host(i) + "\n").collect();
    std::fs::write(path, text).expect("hosts file");
}

/// Kills the daemon (its pins stay, as after a crash) and starts it again; asserts that it said `expect` (how it took the
/// pinned link over) and prints how long the start took, as `what`.
fn restart(g: &mut GuardedHost, expect: &str, what: &str) {
    g.take_daemon().kill9();
    let t = Instant::now();
    g.start();
    eprintln!("{what}: {:?}", t.elapsed());
    assert!(stderr_has(g, expect), "{:?}", g.daemon().stderr_now());
}

/// Runs the CLI command `args`; asserts it succeeded (and, for a reload, said so) and prints
/// how long it took, as `what`.
fn timed(g: &GuardedHost, args: &[&str], what: &str) {
    let t = Instant::now();
    let r = cli(&g.socket(), args);
    assert!(
        r.ok && (args != ["reload"] || r.stdout.contains("reloaded")),
        "{r:?}"
    );
    eprintln!("{what}: {:?}", t.elapsed());
}

fn stderr_has(g: &GuardedHost, what: &str) -> bool {
    g.daemon().stderr_now().iter().any(|l| l.contains(what))
}

#[test]
fn a_set_of_1_2m_hosts_grows_the_tables_in_a_reload_then_reloads_edits_restarts_and_shrinks() {
    let pair = NetnsPair::new();
    let udp = |src: &str| craft::Frame::udp(src, &pair.v4_b, 40000, 9000).build();
    let frames: Vec<Vec<u8>> = [
        host(5),
        host(1_000_000),
        host(HOSTS - 1),
        "10.250.0.1".into(),
        pair.v4_a.clone(),
    ]
    .iter()
    .map(|s| udp(s))
    .collect();
    let min = palisade::capacity::MIN_ROOM;
    let small = std::env::temp_dir().join(format!("palisade-cap-small-{}", std::process::id()));
    write_hosts(&small, 10);
    let mut g = GuardedHost::new("cap-set", &set_policy(&small), &pair.ns_b, &pair.if_b);
    let big = g.scratch.file("big-hosts.txt");
    write_hosts(&big, HOSTS);
    g.start();
    let prog = control::pinned_firewall(&g.scratch.pin_dir());
    // A small policy gets small tables: the live generation's, at the least room.
    assert_eq!(rooms(&g, "FW_SET_HOSTS"), vec![min]);
    assert_eq!(rooms(&g, "FW_RULES"), vec![min]);
    assert_eq!(run_pinned(&prog, &frames), vec![1, 2, 2, 2, 2]);

    // The big set outgrows them: the reload creates the idle generation's table for it
    // (2^21: 1.2M and a quarter, rounded up) and the running generation's stays as it was.
    std::fs::write(&g.policy, set_policy(&big)).unwrap();
    timed(&g, &["reload"], &format!("reload growing to {HOSTS} hosts"));
    assert_eq!(rooms(&g, "FW_SET_HOSTS"), vec![min, 1 << 21]);
    assert_eq!(run_pinned(&prog, &frames), vec![1, 1, 1, 2, 2]);

    // Reloads of the same policy: the other generation grows too, then both are reused.
    for _ in 0..2 {
        timed(&g, &["reload"], &format!("reload of {HOSTS} hosts"));
    }
    assert_eq!(rooms(&g, "FW_SET_HOSTS"), vec![1 << 21, 1 << 21]);
    assert_eq!(run_pinned(&prog, &frames), vec![1, 1, 1, 2, 2]);

    // A live edit is one more generation.
    timed(
        &g,
        &["set", "add", "big", "10.250.0.1"],
        &format!("live edit of {HOSTS} hosts"),
    );
    assert_eq!(run_pinned(&prog, &frames), vec![1, 1, 1, 1, 2]);

    // A restart adopts the pins, tables and all.
    restart(
        &mut g,
        "adopted the pinned link",
        &format!("adopting restart with {HOSTS} hosts"),
    );
    assert_eq!(rooms(&g, "FW_SET_HOSTS"), vec![1 << 21, 1 << 21]);
    // The file again: the live edit is gone, the big set enforced.
    assert_eq!(run_pinned(&prog, &frames), vec![1, 1, 1, 2, 2]);

    // Back to the small set: each generation gets a small table again as it is written.
    std::fs::write(&g.policy, set_policy(&small)).unwrap();
    for _ in 0..2 {
        timed(&g, &["reload"], "reload shrinking to 10 hosts");
    }
    assert_eq!(rooms(&g, "FW_SET_HOSTS"), vec![min, min]);
    assert_eq!(run_pinned(&prog, &frames), vec![1, 2, 2, 2, 2]);
    let _ = std::fs::remove_file(&small);
}

#[test]
fn a_list_of_2_5m_names_installs_reloads_takes_a_live_edit_and_survives_a_restart() {
    let pair = NetnsPair::new();
    let query = |name: &str| {
        craft::Frame::dns_udp(
            &pair.v4_a,
            &pair.v4_b,
            40000,
            &craft::DnsQuery::name(name, 1).build(),
        )
        .build()
    };
    let name = |i: u32| format!("n{i}.big.example");
    let queries: Vec<Vec<u8>> = [
        name(0),
        name(NAMES - 1),
        "added.example".into(),
        "fine.example".into(),
    ]
    .iter()
    .map(|n| query(n))
    .collect();
    let mut g = GuardedHost::new("cap-names", "", &pair.ns_b, &pair.if_b);
    let names = g.scratch.file("names.txt");
    let text: String = (0..NAMES).map(|i| name(i) + "\n").collect();
    std::fs::write(&names, text).expect("names file");
    std::fs::write(
        &g.policy,
        format!(
            "[dns.ingress]\nmode = \"blocklist\"\naction = \"drop\"\nlists = [\"big\"]\n\n[dns.lists.big]\nfiles = [\"{}\"]\n",
            names.display()
        ),
    )
    .unwrap();
    let t = Instant::now();
    g.start();
    eprintln!("start with {NAMES} names: {:?}", t.elapsed());
    // 2.5M exact names and a quarter, rounded up: 2^22 for the live generation.
    assert_eq!(rooms(&g, "DNS_NAMES"), vec![1 << 22]);
    let prog = control::pinned_firewall(&g.scratch.pin_dir());
    assert_eq!(run_pinned(&prog, &queries), vec![1, 1, 2, 2]);
    for _ in 0..2 {
        timed(&g, &["reload"], &format!("reload of {NAMES} names"));
    }
    assert_eq!(run_pinned(&prog, &queries), vec![1, 1, 2, 2]);
    timed(
        &g,
        &["dns", "add", "big", "added.example"],
        &format!("live edit of {NAMES} names"),
    );
    assert_eq!(run_pinned(&prog, &queries), vec![1, 1, 1, 2]);
    restart(
        &mut g,
        "adopted the pinned link",
        &format!("adopting restart with {NAMES} names"),
    );
    assert_eq!(rooms(&g, "DNS_NAMES"), vec![1 << 22, 1 << 22]);
    assert_eq!(run_pinned(&prog, &queries), vec![1, 1, 2, 2]);
}

/// The capacity of the map the daemon pinned as `name`.
fn capacity(g: &GuardedHost, name: &str) -> u32 {
    palisade::pin::pinned_max_entries(&g.scratch.pinned_map(name))
        .expect("map info")
        .expect("a pinned map")
}

#[test]
fn the_maps_of_an_engine_are_small_until_a_start_with_a_policy_that_uses_it() {
    let pair = NetnsPair::new();
    let plain =
        "[[firewall.rule]]\nname = \"web\"\naction = \"allow\"\nproto = \"tcp\"\ndport = 80\n";
    let limited = "[[firewall.rule]]\nname = \"limit\"\naction = \"rate-limit\"\nrate = { pps = 1, burst = 2 }\nproto = \"udp\"\ndport = 9000\n";
    let mut g = GuardedHost::new("cap-engines", plain, &pair.ns_b, &pair.if_b);
    g.start();
    let prog = control::pinned_firewall(&g.scratch.pin_dir());
    let frame = craft::Frame::udp(&pair.v4_a, &pair.v4_b, 40000, 9000).build();
    let declared = |name: &str| {
        palisade::loader::map_shapes()
            .expect("shapes")
            .into_iter()
            .find(|s| s.name == name)
            .expect("in the object")
            .max_entries
    };
    // No engine in use: idle sizes, far below what the object declares.
    for name in ["FW_RATE", "LB_FLOWS", "BIND_ADDRS", "IDS_FLOWS"] {
        assert_eq!(capacity(&g, name), 1024, "{name}");
        assert!(declared(name) > 1024, "{name}");
    }
    assert_eq!(
        capacity(&g, "DNS_CACHE"),
        palisade::dns::cache::IDLE_CAPACITY
    );
    assert_eq!(run_pinned(&prog, std::slice::from_ref(&frame)), vec![2]);

    // A reload that turns rate limiting on works at once, and says its map is still small.
    std::fs::write(&g.policy, limited).unwrap();
    let r = cli(&g.socket(), &["reload"]);
    assert!(r.ok, "{r:?}");
    assert!(
        r.stdout.contains("rate-limit rules (FW_RATE 1024)") && r.stdout.contains("restarts"),
        "{r:?}"
    );
    assert_eq!(capacity(&g, "FW_RATE"), 1024);
    let burst = run_pinned(&prog, &vec![frame.clone(); 4]);
    assert_eq!(burst[..2], [2, 2], "{burst:?}");
    assert!(
        burst[2..].contains(&1),
        "over the burst: dropped ({burst:?})"
    );

    // A restart gives the map its full size (anew, empty); the other engines stay small.
    restart(&mut g, "created anew", "restart resizing FW_RATE");
    assert!(
        stderr_has(&g, "FW_RATE 1024 -> "),
        "{:?}",
        g.daemon().stderr_now()
    );
    assert_eq!(capacity(&g, "FW_RATE"), declared("FW_RATE"));
    assert_eq!(capacity(&g, "LB_FLOWS"), 1024);
    let prog = control::pinned_firewall(&g.scratch.pin_dir());
    let burst = run_pinned(&prog, &vec![frame.clone(); 4]);
    assert_eq!(burst[..2], [2, 2], "a fresh bucket: {burst:?}");
    assert!(burst[2..].contains(&1), "{burst:?}");
    let r = cli(&g.socket(), &["reload"]);
    assert!(r.ok && !r.stdout.contains("idle sizes"), "{r:?}");

    // Without the engine again, the next start gives the memory back.
    std::fs::write(&g.policy, plain).unwrap();
    restart(&mut g, "created anew", "restart shrinking FW_RATE");
    assert_eq!(capacity(&g, "FW_RATE"), 1024);
}
