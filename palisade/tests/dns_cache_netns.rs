//! End to end, the DNS response cache (`[dns.cache]`): a real resolver (unbound) in namespace
//! B behind the real daemon on B's veth, a real client (`dig`) in namespace A.
//!
//! unbound logs every query it receives, so a query the cache answered is one that never
//! reached it. Each test checks both sides: what `dig` got, and whether unbound saw it.

#[path = "support/control.rs"]
mod control;
#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use control::{GuardedHost, cli, cli_json};
use dns_support::{
    dig::{Dig, dig},
    require, require_tools,
    unbound::Unbound,
    xdp::XdpPass,
};
use support::netns::{NetnsPair, command_in};

/// dig's timeout for one try, in seconds.
const TIMEOUT: u32 = 2;
/// The TTL of the short-lived record, in seconds.
const SHORT_TTL: u32 = 2;

/// Namespaces, unbound in B (with a short-lived record besides the test zone) and the daemon
/// on B's veth with the cache in front of unbound.
struct Lab {
    host: GuardedHost,
    unbound: Unbound,
    /// Answers from the cache leave with `XDP_TX`: the client's veth needs an XDP program
    /// for them to arrive (see `support/dns/xdp.rs`).
    _xdp: XdpPass,
    pair: NetnsPair,
}

/// The cache's capacity in the tests' policy.
const CAPACITY: u32 = 512;

fn policy(resolver: &str, enabled: bool) -> String {
    policy_sized(resolver, enabled, CAPACITY)
}

fn policy_sized(resolver: &str, enabled: bool, capacity: u32) -> String {
    format!(
        "[dns.ingress]\nmode = \"blocklist\"\nlists = [\"bad\"]\n\n\
         [dns.lists.bad]\nnames = [\"blocked.test\"]\n\n\
         [dns.cache]\nenabled = {enabled}\nresolver = \"{resolver}:53\"\ncapacity = {capacity}\n"
    )
}

impl Lab {
    fn new(tag: &str) -> Self {
        require_tools();
        let pair = NetnsPair::new();
        let unbound = Unbound::start_with(
            &pair.ns_b,
            &[&pair.v4_b],
            &[format!("short.test. {SHORT_TTL} IN A 192.0.2.77")],
        );
        let mut host = GuardedHost::new(tag, &policy(&pair.v4_b, true), &pair.ns_b, &pair.if_b);
        host.start();
        let xdp = XdpPass::attach(&pair.ns_a, &pair.if_a);
        Self {
            host,
            unbound,
            _xdp: xdp,
            pair,
        }
    }

    fn dig(&self, name: &str, extra: &[&str]) -> Dig {
        dig(
            &self.pair,
            &self.pair.ns_a,
            &self.pair.v4_b,
            name,
            "A",
            TIMEOUT,
            extra,
        )
    }

    /// Queries unbound logged for `name`.
    fn seen(&self, name: &str) -> usize {
        self.unbound.queries_for(name).len()
    }

    /// The cache counter `name` from `palisade stats --json`.
    fn counter(&self, name: &str) -> u64 {
        let json = cli_json(&self.host.socket(), &["stats", "--json"]);
        json["counters"]["dns_cache"]
            .as_array()
            .expect("counters.dns_cache")
            .iter()
            .find(|n| n["name"] == name)
            .and_then(|n| n["value"].as_u64())
            .unwrap_or_else(|| panic!("no cache counter {name} in {json}"))
    }

    /// The capacity the pinned map of cached answers was created with.
    fn capacity(&self) -> u32 {
        aya::maps::MapData::from_pin(self.host.scratch.pinned_map("DNS_CACHE"))
            .expect("pinned DNS_CACHE")
            .info()
            .expect("map info")
            .max_entries()
    }

    /// The pinned link of the cache's fill on B's veth.
    fn link_pin(&self) -> PathBuf {
        let maps = self.host.scratch.pinned_map("DNS_CACHE");
        maps.parent()
            .and_then(|m| m.parent())
            .expect("layout directory")
            .join("links")
            .join(format!("tcx-dnscache-{}", self.pair.if_b))
    }

    /// Waits until the cache holds `n` entries (the fill runs as the answer leaves; `dig`
    /// may print before the daemon's read).
    fn wait_entries(&self, n: u64) {
        let start = Instant::now();
        while self.counter("entries") < n {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "the cache never held {n} entries (it holds {})",
                self.counter("entries")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn assert_answer(d: &Dig, addr: &str) {
    assert_eq!(d.status.as_deref(), Some("NOERROR"), "{d}");
    assert_eq!(d.answers, [addr], "{d}");
}

/// The TTL of the first answer record `dig` printed.
fn first_ttl(d: &Dig) -> u32 {
    let mut in_answer = false;
    for line in d.stdout.lines() {
        if line.starts_with(";; ANSWER SECTION:") {
            in_answer = true;
        } else if in_answer && !line.starts_with(';') && !line.trim().is_empty() {
            return line
                .split_whitespace()
                .nth(1)
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no TTL in {line:?}"));
        }
    }
    panic!("no answer record in {d}");
}

#[test]
fn answers_come_from_the_cache_in_the_querys_own_case_and_unbound_sees_none() {
    let lab = Lab::new("dnscache-hit");
    assert!(
        lab.link_pin().exists(),
        "the fill is attached and pinned: {}",
        lab.link_pin().display()
    );

    let first = lab.dig("allowed.test", &[]);
    assert_answer(&first, "192.0.2.1");
    assert_eq!(lab.seen("allowed.test"), 1, "{}", lab.unbound.log_text());
    lab.wait_entries(1);
    let hits = lab.counter("hits");

    for (i, name) in ["allowed.test", "aLLoWeD.TeSt", "ALLOWED.TEST"]
        .iter()
        .enumerate()
    {
        let qid = format!("+qid={}", 0x4a00 + i);
        let d = lab.dig(name, &[&qid]);
        assert_answer(&d, "192.0.2.1");
        let question = d.question.clone().unwrap_or_default();
        assert!(
            question.starts_with(&format!(";{name}.")),
            "the question comes back in the query's case: {d}"
        );
        assert!(d.has_flag("qr"), "{d}");
        assert!(first_ttl(&d) <= 60, "an aged TTL: {d}");
    }
    assert_eq!(
        lab.seen("allowed.test"),
        1,
        "three answers from the cache, none from unbound: {}",
        lab.unbound.log_text()
    );
    assert_eq!(lab.counter("hits"), hits + 3);

    // A name the cache does not hold goes on to unbound.
    assert_answer(&lab.dig("other.test", &[]), "192.0.2.5");
    assert_eq!(lab.seen("other.test"), 1);

    let stats = cli(&lab.host.socket(), &["stats"]);
    assert!(
        stats.ok && stats.stdout.contains("dns cache: ") && stats.stdout.contains("hits 3"),
        "{stats:?}"
    );

    // The map was sized by the policy. A capacity beyond the limit is refused with its
    // place, and the running policy stays; a new capacity waits for a restart.
    assert_eq!(lab.capacity(), CAPACITY);
    std::fs::write(&lab.host.policy, policy_sized(&lab.pair.v4_b, true, 70_000)).unwrap();
    let refused = cli(&lab.host.socket(), &["reload"]);
    assert!(
        !refused.ok && format!("{refused:?}").contains("[dns.cache].capacity"),
        "{refused:?}"
    );
    assert_answer(&lab.dig("allowed.test", &[]), "192.0.2.1");
    assert_eq!(lab.seen("allowed.test"), 1, "still served from the cache");
    std::fs::write(&lab.host.policy, policy_sized(&lab.pair.v4_b, true, 1024)).unwrap();
    let later = cli(&lab.host.socket(), &["reload"]);
    assert!(
        later.ok
            && later
                .stdout
                .contains("[dns.cache] capacity takes effect when the daemon restarts"),
        "{later:?}"
    );
    assert_eq!(lab.capacity(), CAPACITY);

    // A reload that turns the cache off detaches the fill; every query reaches unbound.
    lab.host.reload(&policy(&lab.pair.v4_b, false));
    assert!(!lab.link_pin().exists(), "the fill's link is gone");
    let before = lab.seen("allowed.test");
    assert_answer(&lab.dig("allowed.test", &[]), "192.0.2.1");
    assert_answer(&lab.dig("allowed.test", &[]), "192.0.2.1");
    assert_eq!(lab.seen("allowed.test"), before + 2, "no cache while off");

    // On again: attached again, and filling.
    lab.host.reload(&policy(&lab.pair.v4_b, true));
    assert!(lab.link_pin().exists(), "the fill is attached again");
    assert_answer(&lab.dig("short.test", &[]), "192.0.2.77");
    assert_answer(&lab.dig("short.test", &[]), "192.0.2.77");
    assert_eq!(
        lab.seen("short.test"),
        1,
        "the second query came from the cache"
    );
}

#[test]
fn an_entry_expires_with_its_ttl_and_a_restart_resizes_the_cache() {
    let lab = Lab::new("dnscache-ttl");
    assert_answer(&lab.dig("short.test", &[]), "192.0.2.77");
    lab.wait_entries(1);
    let cached = lab.dig("short.test", &[]);
    assert_answer(&cached, "192.0.2.77");
    assert!(first_ttl(&cached) <= SHORT_TTL, "{cached}");
    assert_eq!(lab.seen("short.test"), 1, "the second from the cache");

    thread::sleep(Duration::from_secs(u64::from(SHORT_TTL) + 1));
    assert_answer(&lab.dig("short.test", &[]), "192.0.2.77");
    assert_eq!(
        lab.seen("short.test"),
        2,
        "expired: the query went on to unbound"
    );
    // A restart with another capacity creates the map anew at that size, and the fill
    // (adopted from its pin) fills it.
    let mut lab = lab;
    lab.host.take_daemon().kill9();
    std::fs::write(&lab.host.policy, policy_sized(&lab.pair.v4_b, true, 1024)).unwrap();
    lab.host.start();
    assert_eq!(lab.capacity(), 1024);
    assert!(lab.link_pin().exists());
    assert_eq!(lab.counter("entries"), 0, "a new map starts empty");
    assert_answer(&lab.dig("other.test", &[]), "192.0.2.5");
    lab.wait_entries(1);
    assert_answer(&lab.dig("other.test", &[]), "192.0.2.5");
    assert_eq!(
        lab.seen("other.test"),
        1,
        "the second from the resized cache"
    );
}

/// A forged answer for the client's port and ID, sent by scapy from the resolver's address
/// and port through B's stack (so it leaves by B's veth, where the fill runs), with no query
/// waiting for it.
const SPOOF: &str = r#"
import sys
from scapy.all import IP, UDP, DNS, DNSQR, DNSRR, send
src, dst, dport, qid, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
for _ in range(3):
    send(IP(src=src, dst=dst) / UDP(sport=53, dport=dport) /
         DNS(id=qid, qr=1, aa=1, rd=1, qd=DNSQR(qname=name, qtype="A"),
             an=DNSRR(rrname=name, type="A", ttl=3600, rdata="203.0.113.66")), verbose=0)
"#;

#[test]
fn a_spoofed_answer_is_never_cached() {
    require("/usr/bin/python3", "python3-scapy");
    let lab = Lab::new("dnscache-spoof");
    let port = 30_000 + (std::process::id() % 20_000) as u16;
    let qid = 0x5151_u16;
    let rejected = lab.counter("rejected_unsolicited");

    // Debian's interpreter, which python3-scapy installs into.
    let out = command_in(&lab.pair.ns_b, "/usr/bin/python3")
        .args([
            "-c",
            SPOOF,
            &lab.pair.v4_b,
            &lab.pair.v4_a,
            &port.to_string(),
            &qid.to_string(),
            "allowed.test",
        ])
        .output()
        .expect("run scapy");
    assert!(
        out.status.success(),
        "scapy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    while lab.counter("rejected_unsolicited") < rejected + 3 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the forged answers were not seen leaving: {}",
            lab.counter("rejected_unsolicited")
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lab.counter("entries"), 0, "nothing cached");

    // The same client port and ID now: unbound answers, with its own record.
    let bind = format!("{}#{port}", lab.pair.v4_a);
    let qid_arg = format!("+qid={qid}");
    let d = lab.dig("allowed.test", &["-b", &bind, &qid_arg]);
    assert_answer(&d, "192.0.2.1");
    assert_eq!(lab.seen("allowed.test"), 1, "{}", lab.unbound.log_text());
}
