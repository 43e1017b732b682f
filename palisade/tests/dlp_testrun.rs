//! The `reset` action of `[dlp]` in the kernel, through `BPF_PROG_TEST_RUN` on its TC egress
//! program: a TCP packet of a flow listed in `DLP_RESET` is dropped (`TC_ACT_SHOT`, reason
//! `dlp-reset`, counter `reset_drops`), the frame left byte for byte as it came; the other
//! direction is dropped only when listed too; other ports, addresses, UDP, IPv6 flows not
//! listed, non-IP frames and frames cut inside the TCP header go on untouched (fail-open).
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test dlp_testrun`.

use aya::maps::HashMap;
use palisade::{
    craft::{Frame, ip},
    testrun::{Bench, sum_counter},
};
use palisade_common::{
    dlp::{ResetKey, stat},
    packet::v4_mapped,
    reason,
};

const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
const ACK: u8 = 0x10;

fn key(src: &str, sport: u16, dst: &str, dport: u16) -> ResetKey {
    let a = |s: &str| match ip(s) {
        std::net::IpAddr::V4(v) => v4_mapped(v.octets()),
        std::net::IpAddr::V6(v) => v.octets(),
    };
    ResetKey {
        saddr: a(src),
        daddr: a(dst),
        sport,
        dport,
    }
}

fn list(b: &mut Bench, k: ResetKey) {
    let mut m: HashMap<_, ResetKey, u64> =
        HashMap::try_from(b.map_mut("DLP_RESET").unwrap()).unwrap();
    m.insert(k, 1, 0).unwrap();
}

fn counts(b: &Bench) -> (u64, u64) {
    (
        sum_counter(&b.ebpf, "DLP_STATS", stat::RESET_DROPS).unwrap(),
        sum_counter(&b.ebpf, "REASON_STATS", reason::DLP_RESET).unwrap(),
    )
}

/// Runs the program; asserts the frame comes back as it went in.
fn run(b: &Bench, frame: &[u8]) -> i32 {
    let (verdict, out) = b.run_tc(palisade::dlp::probe::RESET, frame).unwrap();
    assert_eq!(out, frame, "the program rewrote the frame");
    verdict
}

#[test]
fn listed_flows_are_dropped_and_everything_else_goes_on() {
    let mut b = Bench::new().unwrap();
    let flow = Frame::tcp("10.0.0.1", "10.0.0.2", 40_000, 443, ACK)
        .with_payload(b"\x17\x03\x03\x00\x10after-the-match!")
        .build();
    let back = Frame::tcp("10.0.0.2", "10.0.0.1", 443, 40_000, ACK).build();
    // Nothing listed: every frame goes on.
    assert_eq!(run(&b, &flow), TC_ACT_UNSPEC);
    assert_eq!(counts(&b), (0, 0));

    list(&mut b, key("10.0.0.1", 40_000, "10.0.0.2", 443));
    assert_eq!(run(&b, &flow), TC_ACT_SHOT);
    assert_eq!(counts(&b), (1, 1));
    // The other direction is its own entry (userspace lists both).
    assert_eq!(run(&b, &back), TC_ACT_UNSPEC);
    list(&mut b, key("10.0.0.2", 443, "10.0.0.1", 40_000));
    assert_eq!(run(&b, &back), TC_ACT_SHOT);
    assert_eq!(counts(&b), (2, 2));

    // Near misses go on: another source port, another address, UDP on the same tuple.
    for f in [
        Frame::tcp("10.0.0.1", "10.0.0.2", 40_001, 443, ACK).build(),
        Frame::tcp("10.0.0.3", "10.0.0.2", 40_000, 443, ACK).build(),
        Frame::udp("10.0.0.1", "10.0.0.2", 40_000, 443).build(),
    ] {
        assert_eq!(run(&b, &f), TC_ACT_UNSPEC);
    }
    assert_eq!(counts(&b), (2, 2));

    // IPv6: listed by its own addresses.
    let v6 = Frame::tcp("2001:db8::1", "2001:db8::2", 50_000, 8443, ACK).build();
    assert_eq!(run(&b, &v6), TC_ACT_UNSPEC);
    list(&mut b, key("2001:db8::1", 50_000, "2001:db8::2", 8443));
    assert_eq!(run(&b, &v6), TC_ACT_SHOT);
    assert_eq!(counts(&b), (3, 3));

    // Frames it cannot parse go on (fail-open): cut inside the TCP header, not IP at all.
    // (An IPv4 frame cut inside its IP header cannot be run: test_run refuses to build its
    // skb with EINVAL.)
    assert_eq!(run(&b, &flow[..14 + 20 + 2]), TC_ACT_UNSPEC, "cut in TCP");
    assert!(
        b.run_tc(palisade::dlp::probe::RESET, &flow[..14 + 10])
            .is_err(),
        "test_run now takes a frame cut inside its IP header: test the program on it"
    );
    let mut arp = flow.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(run(&b, &arp), TC_ACT_UNSPEC);
    assert_eq!(counts(&b), (3, 3));
}

/// A listed flow's entry keeps the time of the last packet it stopped; the watcher's sweep
/// (`expire_resets`) lets go of the flows that stopped nothing for the hold time, and only
/// those.
#[test]
fn flows_that_stop_nothing_for_the_hold_time_are_let_go() {
    use palisade::dlp::probe::{expire_resets, monotonic_ns};
    use std::time::Duration;

    let mut b = Bench::new().unwrap();
    let live = key("10.0.0.1", 40_000, "10.0.0.2", 443);
    let gone = key("10.0.0.1", 40_001, "10.0.0.2", 443);
    // Both listed long ago (1 ns after boot).
    list(&mut b, live);
    list(&mut b, gone);
    let before = monotonic_ns();
    let frame = Frame::tcp("10.0.0.1", "10.0.0.2", 40_000, 443, ACK).build();
    assert_eq!(run(&b, &frame), TC_ACT_SHOT);
    let after = monotonic_ns();

    let mut m: HashMap<_, ResetKey, u64> =
        HashMap::try_from(b.map_mut("DLP_RESET").unwrap()).unwrap();
    let stamped = m.get(&live, 0).unwrap();
    assert!(
        (before..=after).contains(&stamped),
        "the stopped packet's time {stamped} is not within {before}..={after}"
    );
    assert_eq!(
        m.get(&gone, 0).unwrap(),
        1,
        "a flow that stopped nothing keeps its time"
    );

    let hold = Duration::from_secs(60);
    assert_eq!(expire_resets(&mut m, after, hold).unwrap(), 1);
    assert!(m.get(&gone, 0).is_err(), "the idle flow is still listed");
    assert_eq!(
        m.get(&live, 0).unwrap(),
        stamped,
        "the live flow was let go"
    );
    // Not yet at the hold time after its packet; then gone.
    assert_eq!(
        expire_resets(&mut m, stamped + hold.as_nanos() as u64 - 1, hold).unwrap(),
        0
    );
    assert_eq!(
        expire_resets(&mut m, stamped + hold.as_nanos() as u64, hold).unwrap(),
        1
    );
    assert!(m.keys().next().is_none(), "the map is not empty");
}
