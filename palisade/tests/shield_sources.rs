//! The per-source and ICMP shields of `[shield]` in the kernel, through `BPF_PROG_TEST_RUN`:
//! new flows limited per source prefix (IPv4 /24, IPv6 /64 rotation) at the configured rate
//! however many CPUs count, established flows and ICMP errors of live flows never limited,
//! heavy hitters recorded and blocked for `source_block`, reloads that neither refill the
//! counts nor keep stale limits, echo limited per source, globally and by size, and the
//! sketch's accuracy under many thousands of sources.
//!
//! The counters count in windows of 2^30 ns of the kernel's coarse monotonic clock; each test
//! starts its bursts at the start of a window so that a burst stays within one.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test shield_sources`.

use std::{collections::HashMap, path::Path, time::Duration};

use palisade::{craft::Frame, policy::config, testrun::Bench};
use palisade_common::{
    reason,
    shield::{
        SH_ECHO_GLOBAL_LIMITED, SH_ECHO_OVERSIZED, SH_ECHO_SOURCE_LIMITED, SH_HITTERS,
        SH_SOURCE_BLOCKED, SH_SOURCE_LIMITED, WINDOW_SHIFT, window_limit,
    },
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const SERVER: &str = "192.0.2.1";
const SERVER6: &str = "2001:db8::1";

fn bench(shield: &str) -> Bench {
    let mut b = Bench::new().expect("load");
    b.install(&policy(shield)).expect("install");
    b
}

fn policy(shield: &str) -> palisade::policy::model::Policy {
    let text = format!("[firewall]\ndefault = \"allow\"\n[shield]\n{shield}");
    config::parse_policy(&text, "shield.toml", Path::new("/")).expect("valid policy")
}

fn counter(b: &Bench, i: u32) -> u64 {
    palisade::shield::counters(&b.ebpf).expect("shield counters")[i as usize]
}

fn reasons(b: &Bench, r: u32) -> u64 {
    b.reason_count(r).expect("reason counter")
}

/// The kernel's coarse monotonic clock (`bpf_ktime_get_coarse_ns`).
fn coarse_ns() -> u64 {
    palisade::conntrack::carry::now_ns()
}

/// Waits for the start of the next counting window, so what follows has most of a window.
fn fresh_window() {
    let window = 1u64 << WINDOW_SHIFT;
    let into = coarse_ns() % window;
    std::thread::sleep(Duration::from_nanos(window - into + 20_000_000));
    assert!(
        coarse_ns() % window < 200_000_000,
        "woke late in the window"
    );
}

/// Runs the test's thread on `cpu` only.
fn pin(cpu: usize) {
    // SAFETY: a zeroed set with one bit, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
            0,
            "pinning to CPU {cpu}"
        );
    }
}

fn unpin() {
    // SAFETY: as in `pin`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn udp(src: &str, dst: &str, sport: u16) -> Vec<u8> {
    Frame::udp(src, dst, sport, 7000).build()
}

#[test]
fn new_flows_are_limited_per_prefix_over_all_cpus_and_established_flows_are_not() {
    let b = bench("source_rate = 50\nsource_prefix_v4 = 24\nsource_prefix_v6 = 64\n");
    let limit = window_limit(50) as usize;
    assert_eq!(limit, 54, "50 a second is 54 a window of 1.07 s");
    fresh_window();
    // A flow from the /24 that the host answered: established.
    let opened = udp("203.0.113.200", SERVER, 5000);
    assert_eq!(b.run(&opened).unwrap(), XDP_PASS);
    b.run_ct_egress(&Frame::udp(SERVER, "203.0.113.200", 7000, 5000).build())
        .unwrap();

    // New flows from every address of the /24, each CPU in turn: the prefix's rate is the
    // configured one, not that rate per CPU.
    let mut passed = 1;
    for i in 0..120u16 {
        pin(usize::from(i) % cpus());
        let src = format!("203.0.113.{}", i % 200 + 1);
        if b.run(&udp(&src, SERVER, 10_000 + i)).unwrap() == XDP_PASS {
            passed += 1;
        }
    }
    unpin();
    assert_eq!(passed, limit, "new flows the /24 opened in one window");
    assert_eq!(
        reasons(&b, reason::SHIELD_SOURCE_RATE),
        (121 - limit) as u64
    );
    assert_eq!(counter(&b, SH_SOURCE_LIMITED), (121 - limit) as u64);

    // The established flow carries on, and another /24 is not limited.
    assert_eq!(b.run(&opened).unwrap(), XDP_PASS);
    assert_eq!(b.run(&udp("203.0.114.1", SERVER, 1)).unwrap(), XDP_PASS);

    // IPv6: a new address of the same /64 for every flow is still one source.
    let mut passed6 = 0;
    for i in 0..100u32 {
        let src = format!(
            "2001:db8:7:1:{:x}:{:x}::{:x}",
            (i * 7919) & 0xffff,
            i ^ 0x5a5a,
            i + 1
        );
        if b.run(&udp(&src, SERVER6, 20_000 + i as u16)).unwrap() == XDP_PASS {
            passed6 += 1;
        }
    }
    assert_eq!(passed6, limit, "new flows the /64 opened in one window");
    assert_eq!(
        b.run(&udp("2001:db8:7:2::1", SERVER6, 1)).unwrap(),
        XDP_PASS
    );

    // Both prefixes are heavy hitters, listed with their drops; nothing else is.
    let now = coarse_ns();
    let hitters = palisade::shield::hitters::list(&b.ebpf, now).expect("hitters");
    let by_prefix: HashMap<String, u64> = hitters
        .iter()
        .map(|h| (h.prefix.clone(), h.drops))
        .collect();
    assert_eq!(
        by_prefix,
        HashMap::from([
            ("203.0.113.0/24".to_owned(), (121 - limit) as u64),
            ("2001:db8:7:1::/64".to_owned(), (100 - limit) as u64),
        ]),
        "{hitters:#?}"
    );
    assert!(hitters.iter().all(|h| h.blocked_s.is_none()), "no blocking");
    assert_eq!(counter(&b, SH_HITTERS), 2);
}

#[test]
fn heavy_hitters_are_blocked_for_source_block_and_a_reload_keeps_no_stale_limit() {
    let mut b = bench("source_rate = 20\nsource_block = 3\n");
    let limit = window_limit(20) as usize;
    let flooder = "198.51.100.9";
    fresh_window();
    let verdicts: Vec<u32> = (0..30u16)
        .map(|i| b.run(&udp(flooder, SERVER, 3000 + i)).unwrap())
        .collect();
    assert!(
        verdicts[..limit].iter().all(|&v| v == XDP_PASS),
        "{verdicts:?}"
    );
    assert!(
        verdicts[limit..].iter().all(|&v| v == XDP_DROP),
        "{verdicts:?}"
    );
    // The first over the rate blocks the prefix; the rest are refused as blocked.
    assert_eq!(reasons(&b, reason::SHIELD_SOURCE_RATE), 1);
    assert_eq!(
        reasons(&b, reason::SHIELD_SOURCE_BLOCKED),
        (29 - limit) as u64
    );

    // A new window does not lift the block, nor does a reload of the same policy; segments
    // of no flow and echo requests from it are refused too, though `tcp_invalid` is not set.
    fresh_window();
    assert_eq!(b.run(&udp(flooder, SERVER, 4000)).unwrap(), XDP_DROP);
    b.install(&policy("source_rate = 20\nsource_block = 3\n"))
        .unwrap();
    assert_eq!(b.run(&udp(flooder, SERVER, 4001)).unwrap(), XDP_DROP);
    let ack = Frame::tcp(flooder, SERVER, 5555, 80, 0x10).build();
    assert_eq!(b.run(&ack).unwrap(), XDP_DROP);
    assert_eq!(b.run(&echo(flooder, SERVER, 56)).unwrap(), XDP_DROP);
    assert_eq!(counter(&b, SH_SOURCE_BLOCKED), (29 - limit + 4) as u64);
    let listed = palisade::shield::hitters::list(&b.ebpf, coarse_ns()).unwrap();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0].prefix, "198.51.100.9/32");
    let left = listed[0].blocked_s.expect("blocked");
    assert!((1..=3).contains(&left), "{left}s of the block left");
    // Others pass.
    assert_eq!(
        b.run(&udp("198.51.100.10", SERVER, 4002)).unwrap(),
        XDP_PASS
    );

    // A reload with a shorter block applies at once: more than a second has gone by since
    // the block began, so a 1 s block is over and the prefix is counted afresh.
    b.install(&policy("source_rate = 20\nsource_block = 1\n"))
        .unwrap();
    assert_eq!(b.run(&udp(flooder, SERVER, 4003)).unwrap(), XDP_PASS);
    assert!(
        palisade::shield::hitters::list(&b.ebpf, coarse_ns()).unwrap()[0]
            .blocked_s
            .is_none()
    );
}

#[test]
fn a_reload_neither_refills_the_counts_nor_keeps_an_old_rate() {
    let mut b = bench("source_rate = 20\n");
    let limit = window_limit(20);
    fresh_window();
    let src = "198.51.100.77";
    let mut sport = 0u16;
    let mut next = |b: &Bench| {
        sport += 1;
        b.run(&udp(src, SERVER, sport)).unwrap()
    };
    for _ in 0..limit {
        assert_eq!(next(&b), XDP_PASS);
    }
    assert_eq!(next(&b), XDP_DROP);
    // The same policy again: the window's count stays.
    b.install(&policy("source_rate = 20\n")).unwrap();
    assert_eq!(next(&b), XDP_DROP);
    // A higher rate applies to the count as it is.
    b.install(&policy("source_rate = 1000\n")).unwrap();
    assert_eq!(next(&b), XDP_PASS);
    // And the old rate again: still over it.
    b.install(&policy("source_rate = 20\n")).unwrap();
    assert_eq!(next(&b), XDP_DROP);
    assert!(
        has_sketch(&b),
        "a policy with per-source limits has its sketch"
    );
    // No limit at all: nothing counted nor dropped, and no sketch kept.
    b.install(&policy("tcp_invalid = \"drop\"\n")).unwrap();
    assert!(
        !has_sketch(&b),
        "the sketch goes with the last per-source limit"
    );
    let before = counter(&b, SH_SOURCE_LIMITED);
    assert_eq!(next(&b), XDP_PASS);
    assert_eq!(counter(&b, SH_SOURCE_LIMITED), before);
    // Limits again: a new sketch, counting from nothing.
    b.install(&policy("source_rate = 20\n")).unwrap();
    assert!(has_sketch(&b));
    fresh_window();
    for _ in 0..limit {
        assert_eq!(next(&b), XDP_PASS);
    }
    assert_eq!(next(&b), XDP_DROP);
}

/// Whether the per-source limits' sketch is in its slot.
fn has_sketch(b: &Bench) -> bool {
    let (outer, name) = palisade::shield::SKETCH;
    palisade::capacity::slot_table(&b.ebpf, outer, name, 0)
        .expect("reading SHIELD_SKETCH")
        .is_some()
}

/// An echo request (IPv4 type 8, IPv6 type 128) with `payload` bytes of payload.
fn echo(src: &str, dst: &str, payload: usize) -> Vec<u8> {
    let t = if src.contains(':') { 128 } else { 8 };
    Frame::icmp(src, dst, t, 0)
        .with_payload(&vec![0xa5; payload])
        .build()
}

#[test]
fn echo_is_limited_per_source_and_globally_and_by_size() {
    let b = bench(
        "icmp_echo_rate = 10\nicmp_echo_global_rate = 30\nicmp_echo_max_payload = 1000\n\
         source_prefix_v6 = 64\n",
    );
    let (per_source, global) = (window_limit(10), window_limit(30));
    // The expected verdicts, computed apart: size first, then the source's count, then the
    // count of all sources (which only echo requests within their source's rate reach).
    let mut sources: HashMap<String, u32> = HashMap::new();
    let mut all = 0;
    let mut expect = |src: &str, payload: usize| -> (u32, u32) {
        if payload > 1000 {
            return (XDP_DROP, reason::SHIELD_ICMP_OVERSIZED);
        }
        let key = if src.contains(':') {
            src.split(':').take(4).collect::<Vec<_>>().join(":")
        } else {
            src.to_owned()
        };
        let n = sources.entry(key).or_default();
        *n += 1;
        if *n > per_source {
            return (XDP_DROP, reason::SHIELD_ICMP_RATE);
        }
        all += 1;
        if all > global {
            return (XDP_DROP, reason::SHIELD_ICMP_RATE);
        }
        (XDP_PASS, 0)
    };
    let mut sent = Vec::new();
    for round in 0..15 {
        sent.push(("198.51.100.1".to_owned(), 56));
        sent.push(("2001:db8:5:5:0:0:0:1".to_owned(), 56));
        sent.push((format!("2001:db8:5:5:0:0:1:{round:x}"), 56));
        sent.push((
            "198.51.100.2".to_owned(),
            if round == 3 { 1001 } else { 1000 },
        ));
        sent.push(("198.51.100.3".to_owned(), 0));
    }
    fresh_window();
    let mut oversized = 0;
    for (src, payload) in &sent {
        let dst = if src.contains(':') { SERVER6 } else { SERVER };
        let before = reasons(&b, reason::SHIELD_ICMP_RATE);
        let got = b.run(&echo(src, dst, *payload)).unwrap();
        let (want, why) = expect(src, *payload);
        assert_eq!(got, want, "echo from {src} with {payload} bytes");
        if why == reason::SHIELD_ICMP_RATE {
            assert_eq!(reasons(&b, reason::SHIELD_ICMP_RATE), before + 1);
        }
        oversized += u64::from(why == reason::SHIELD_ICMP_OVERSIZED);
    }
    assert_eq!(oversized, 1);
    assert_eq!(reasons(&b, reason::SHIELD_ICMP_OVERSIZED), 1);
    assert_eq!(counter(&b, SH_ECHO_OVERSIZED), 1);
    let limited = counter(&b, SH_ECHO_SOURCE_LIMITED) + counter(&b, SH_ECHO_GLOBAL_LIMITED);
    assert_eq!(limited, reasons(&b, reason::SHIELD_ICMP_RATE));
    assert!(counter(&b, SH_ECHO_SOURCE_LIMITED) > 0 && counter(&b, SH_ECHO_GLOBAL_LIMITED) > 0);
}

/// The IP packet in an Ethernet frame, as an ICMP error quotes it: its header and 8 bytes.
fn quote(frame: &[u8]) -> Vec<u8> {
    let ip = &frame[14..];
    let header = usize::from(ip[0] & 0x0f) * 4;
    ip[..header + 8].to_vec()
}

#[test]
fn icmp_errors_of_live_flows_pass_even_from_a_blocked_source() {
    let b = bench("source_rate = 5\nsource_block = 60\nicmp_echo_global_rate = 1\n");
    let router = "192.0.2.254";
    // A flow the host opened, and a packet of it as the router would quote it.
    let sent = Frame::udp(SERVER, "198.51.100.20", 40_000, 443)
        .with_payload(&[0u8; 1400])
        .build();
    b.run_ct_egress(&sent).unwrap();
    // The router's address opens too many flows and is blocked.
    fresh_window();
    for i in 0..10 {
        b.run(&udp(router, SERVER, 100 + i)).unwrap();
    }
    assert_eq!(b.run(&udp(router, SERVER, 200)).unwrap(), XDP_DROP);
    // Its "fragmentation needed" for the live flow passes, every time.
    // (The MTU field stays 0: the tracker reads the quoted packet, not the MTU.)
    let mut frag_needed = Frame::icmp(router, SERVER, 3, 4);
    frag_needed.payload = quote(&sent);
    let error = frag_needed.build();
    for _ in 0..50 {
        assert_eq!(
            b.run(&error).unwrap(),
            XDP_PASS,
            "PMTU error of a live flow"
        );
    }
    // An error about no flow of this host is a packet of no flow: refused while blocked.
    let stranger = Frame::udp(SERVER, "198.51.100.21", 40_001, 443).build();
    let mut unrelated = Frame::icmp(router, SERVER, 3, 4);
    unrelated.payload = quote(&stranger);
    assert_eq!(b.run(&unrelated.build()).unwrap(), XDP_DROP);
    // Flows 1 to 6 passed, the 7th went over and blocked the address; flows 8 to 11 and
    // the unrelated error were refused as blocked.
    assert_eq!(reasons(&b, reason::SHIELD_SOURCE_RATE), 1);
    assert_eq!(reasons(&b, reason::SHIELD_SOURCE_BLOCKED), 5);
}

#[test]
fn a_flood_from_many_thousands_of_sources_trips_no_one_but_the_heavy_hitter() {
    // 60 000 sources, one new flow each, and one /24 opening 200 in the same window: the
    // sketch's overcount stays far below a rate of 100 a second, so only the /24 is limited
    // (a window's overcount is about flows / 65 536 per row, and a prefix's count is the
    // smallest of its four rows).
    let b = bench("source_rate = 100\nsource_prefix_v4 = 24\n");
    let limit = u64::from(window_limit(100));
    let frames: Vec<Vec<u8>> = (0..60_000u32)
        .map(|i| {
            let a = (i.wrapping_mul(2_654_435_761) >> 8) | 0x0100_0000;
            let src = std::net::Ipv4Addr::from(a).to_string();
            udp(&src, SERVER, (i % 60_000) as u16 + 1)
        })
        .collect();
    let heavy: Vec<Vec<u8>> = (0..200u16)
        .map(|i| udp(&format!("203.0.113.{}", i % 250), SERVER, 1000 + i))
        .collect();
    fresh_window();
    let start = coarse_ns() >> WINDOW_SHIFT;
    let mut dropped = 0;
    for (i, f) in frames.iter().enumerate() {
        if b.run(f).unwrap() == XDP_DROP {
            dropped += 1;
        }
        // The heavy hitter's flows go among the first 4000 of the flood, well within the
        // window (the whole flood may take longer on a loaded machine).
        if i % 20 == 0 && i / 20 < heavy.len() {
            b.run(&heavy[i / 20]).unwrap();
        }
        if i / 20 == heavy.len() {
            assert_eq!(
                coarse_ns() >> WINDOW_SHIFT,
                start,
                "too slow for one window"
            );
        }
    }
    assert_eq!(dropped, 0, "sources of the random flood limited");
    assert_eq!(counter(&b, SH_SOURCE_LIMITED), 200 - limit);
    let hitters = palisade::shield::hitters::list(&b.ebpf, coarse_ns()).unwrap();
    assert_eq!(hitters.len(), 1, "{hitters:#?}");
    assert_eq!(hitters[0].prefix, "203.0.113.0/24");
}
