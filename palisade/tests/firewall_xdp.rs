//! The XDP firewall program, run on crafted frames through `BPF_PROG_TEST_RUN`.
//!
//! Every check is build → run → check: one frame goes through the kernel program, then the
//! verdict and the exact movement of every counter are asserted (global stats, drops per
//! reason, packets and bytes of every rule and of the default slot), as well as the events in
//! the ring buffer. Each check also cross-checks the userspace parser and the linear reference
//! classifier against what the kernel did.
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN); each test loads its own copy of the object.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;

use palisade::{
    craft::{ExtHeader, Frame, L4, ip},
    firewall::{
        apply,
        reference::{self, Verdict},
    },
    guard::FIREWALL,
    policy::{
        config,
        model::{Action, Policy},
    },
    testrun::Bench,
};
use palisade_common::{
    event::{EVENT_WAKEUP_BYTES, FirewallEvent, KIND_FIREWALL},
    firewall::{DEFAULT_SLOT, RuleStats},
    packet::{
        self, ETH_HLEN, FAMILY_V4, FAMILY_V6, FRAG_LATER, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS,
        IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, MAX_IPV6_EXT_HEADERS, TCP_ACK, TCP_FIN, TCP_PSH,
        TCP_RST, TCP_SYN, v4_mapped,
    },
    reason::{self, IPV6_EXT_CHAIN, MALFORMED_L2, MALFORMED_L3, MALFORMED_L4},
    stats,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// `rule` of events for drops no rule was involved in (malformed packets, fragments).
const NO_RULE: u32 = u32::MAX;
/// BPF_PROG_TEST_RUN runs XDP programs on the loopback device of the caller's namespace.
const LOOPBACK_IFINDEX: u32 = 1;

// ---------------------------------------------------------------------------------------
// Harness

/// What must happen to one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Rule `name` matched and passed it (an allow rule, or a rate-limit rule within rate).
    Allow(&'static str),
    /// Rule `name` (action drop) matched and dropped it.
    Drop(&'static str),
    /// Rate-limit rule `name` matched and its bucket was empty.
    Limited(&'static str),
    /// No rule matched; the default action (allow) passed it.
    DefaultPass,
    /// No rule matched; the default action (drop) dropped it.
    DefaultDrop,
    /// Dropped before classification, for this reason.
    Malformed(u32),
    /// A non-first fragment dropped by `fragments = "drop"`.
    Fragment,
    /// Not IPv4/IPv6: passed without classification.
    NotIp,
}

use Want::{Allow, DefaultDrop, DefaultPass, Drop, Fragment, Limited, Malformed, NotIp};

/// Every counter the firewall moves.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Counters {
    stats: Vec<u64>,
    reasons: Vec<u64>,
    /// Each rule by evaluation index, then the default slot.
    rules: Vec<RuleStats>,
}

/// A loaded firewall with a policy installed.
struct Fw {
    bench: Bench,
    policy: Policy,
}

/// Loads the programs and installs the policy given as TOML.
fn fw(toml: &str) -> Fw {
    let bench = Bench::new().expect("loading and verifying the kernel programs (needs root)");
    let mut fw = Fw {
        bench,
        policy: config::default_policy(),
    };
    fw.install(toml);
    fw
}

impl Fw {
    /// Replaces the policy (the idle generation is filled, then made live).
    fn install(&mut self, toml: &str) {
        let policy = config::parse_policy(toml, "test.toml", Path::new("."))
            .unwrap_or_else(|e| panic!("test policy is invalid:\n{e}\n{toml}"));
        self.bench.install(&policy).expect("installing the policy");
        self.policy = policy;
        assert_eq!(
            self.bench.drain_events(),
            vec![],
            "events before any packet"
        );
    }

    /// The evaluation index of the rule called `name`.
    fn rule(&self, name: &str) -> u32 {
        self.policy
            .firewall
            .rules
            .iter()
            .position(|r| r.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no rule named {name}")) as u32
    }

    fn generation(&self) -> u32 {
        apply::control(&self.bench.ebpf)
            .expect("reading CONTROL")
            .active_gen
    }

    fn hits(&self, rule: u32) -> RuleStats {
        self.bench.rule_hits(rule).expect("reading rule counters")
    }

    fn hits_of(&self, name: &str) -> RuleStats {
        self.hits(self.rule(name))
    }

    fn counters(&self) -> Counters {
        let b = &self.bench;
        let slots = (0..self.policy.firewall.rules.len() as u32).chain([DEFAULT_SLOT]);
        Counters {
            stats: (0..stats::COUNT)
                .map(|i| b.stat(i).expect("STATS"))
                .collect(),
            reasons: (0..reason::COUNT)
                .map(|i| b.reason_count(i).expect("REASON_STATS"))
                .collect(),
            rules: slots.map(|r| self.hits(r)).collect(),
        }
    }

    /// Whether `want` must produce an event under the current policy.
    fn logged(&self, want: Want) -> bool {
        let fw = &self.policy.firewall;
        match want {
            Drop(n) | Limited(n) => fw.rules[self.rule(n) as usize].log,
            // Malformed packets and dropped fragments are logged with the default drops.
            DefaultDrop | Malformed(_) | Fragment => fw.log_default,
            Allow(_) | DefaultPass | NotIp => false,
        }
    }

    /// What the linear reference classifier must say for a packet that gets `want`.
    fn reference_verdict(&self, want: Want) -> Verdict {
        let drop = |rule, reason| Verdict::Drop { rule, reason };
        match want {
            Allow(n) => match self.policy.firewall.rules[self.rule(n) as usize].action {
                Action::RateLimit(_) => Verdict::RateLimit { rule: self.rule(n) },
                _ => Verdict::Pass {
                    rule: Some(self.rule(n)),
                },
            },
            Limited(n) => Verdict::RateLimit { rule: self.rule(n) },
            Drop(n) => drop(Some(self.rule(n)), reason::RULE),
            DefaultPass => Verdict::Pass { rule: None },
            DefaultDrop => drop(None, reason::DEFAULT),
            Fragment => drop(None, reason::FRAGMENT),
            Malformed(_) | NotIp => unreachable!("never classified"),
        }
    }

    /// Runs `frame` once and checks the verdict, every counter and the events. Returns the
    /// event when the policy asks for one.
    #[track_caller]
    fn check(&mut self, frame: &[u8], want: Want) -> Option<FirewallEvent> {
        self.run_check(frame, want, want == Fragment)
    }

    /// As [`Fw::check`], for a non-first fragment (which also moves the `fragments` counter).
    #[track_caller]
    fn check_later(&mut self, frame: &[u8], want: Want) -> Option<FirewallEvent> {
        self.run_check(frame, want, true)
    }

    /// Checks every `(frame, want)` pair in order.
    #[track_caller]
    fn checks(&mut self, cases: &[(Vec<u8>, Want)]) {
        for (frame, want) in cases {
            self.check(frame, *want);
        }
    }

    #[track_caller]
    fn run_check(&mut self, frame: &[u8], want: Want, later: bool) -> Option<FirewallEvent> {
        let what = format!("{want:?} for {} bytes {frame:02x?}", frame.len());
        let before = self.counters();
        let action = self.bench.run(frame).expect("BPF_PROG_TEST_RUN");
        let after = self.counters();
        let events = self.bench.drain_events();

        let drop_reason = match want {
            Drop(_) => Some(reason::RULE),
            Limited(_) => Some(reason::RATE_LIMIT),
            DefaultDrop => Some(reason::DEFAULT),
            Malformed(r) => Some(r),
            Fragment => Some(reason::FRAGMENT),
            Allow(_) | DefaultPass | NotIp => None,
        };
        let slot = match want {
            Allow(n) | Drop(n) | Limited(n) => Some(self.rule(n) as usize),
            DefaultPass | DefaultDrop => Some(self.policy.firewall.rules.len()),
            Malformed(_) | Fragment | NotIp => None,
        };
        let mut expected = before.clone();
        expected.stats[stats::PACKETS as usize] += 1;
        match drop_reason {
            Some(r) => {
                expected.stats[stats::DROPPED as usize] += 1;
                expected.reasons[r as usize] += 1;
            }
            None => expected.stats[stats::PASSED as usize] += 1,
        }
        if want == NotIp {
            expected.stats[stats::NOT_IP as usize] += 1;
        }
        if later {
            expected.stats[stats::FRAGMENTS as usize] += 1;
        }
        if let Some(s) = slot {
            expected.rules[s].packets += 1;
            expected.rules[s].bytes += frame.len() as u64;
        }
        let want_action = if drop_reason.is_some() {
            XDP_DROP
        } else {
            XDP_PASS
        };
        assert_eq!(action, want_action, "XDP action: {what}");
        assert_eq!(after, expected, "counters: {what}");

        // The userspace parser and the reference classifier must agree with the kernel.
        let parsed = packet::parse(frame);
        match (want, parsed) {
            (Malformed(r), p) => assert_eq!(p, Err(r), "userspace parser: {what}"),
            (NotIp, p) => assert_eq!(p, Ok(packet::Frame::NotIp), "userspace parser: {what}"),
            (_, Ok(packet::Frame::Ip(p))) => {
                assert_eq!(p.frag == FRAG_LATER, later, "fragment state {p:?}: {what}");
                assert_eq!(
                    reference::verdict(&self.policy, &p),
                    self.reference_verdict(want),
                    "reference classifier: {what}"
                );
            }
            (_, p) => panic!("userspace parser says {p:?}: {what}"),
        }

        if !self.logged(want) {
            assert_eq!(events, vec![], "no event expected: {what}");
            return None;
        }
        assert_eq!(events.len(), 1, "one event expected: {what}");
        let ev = events[0];
        let rule = match want {
            Drop(n) | Limited(n) => self.rule(n),
            DefaultDrop => DEFAULT_SLOT,
            _ => NO_RULE,
        };
        assert_eq!(
            (ev.kind, ev.reason, ev.rule, ev.action),
            (
                KIND_FIREWALL,
                drop_reason.unwrap_or(0),
                rule,
                XDP_DROP as u8
            ),
            "event header: {what}"
        );
        assert_eq!(
            (ev.packet_len, ev.generation, ev.ifindex),
            (frame.len() as u32, self.generation(), LOOPBACK_IFINDEX),
            "event context: {what}"
        );
        assert_ne!(ev.timestamp_ns, 0);
        let fields = (ev.family, ev.proto, ev.sport, ev.dport, ev.src, ev.dst);
        match packet::parse(frame) {
            Ok(packet::Frame::Ip(p)) => assert_eq!(
                fields,
                (p.family, p.proto, p.sport, p.dport, p.src, p.dst),
                "event packet fields: {what}"
            ),
            _ => assert_eq!(fields, (0, 0, 0, 0, [0; 16], [0; 16]), "{what}"),
        }
        Some(ev)
    }

    /// A frame shorter than an Ethernet header: the kernel refuses to run XDP on it, and the
    /// userspace parser calls it malformed-l2. Nothing moves.
    #[track_caller]
    fn check_refused(&mut self, frame: &[u8]) {
        assert!(frame.len() < ETH_HLEN);
        assert_eq!(packet::parse(frame), Err(MALFORMED_L2));
        let before = self.counters();
        assert!(
            self.bench.run(frame).is_err(),
            "the kernel ran XDP on a {}-byte frame",
            frame.len()
        );
        assert_eq!(self.counters(), before);
        assert_eq!(self.bench.drain_events(), vec![]);
    }
}

// ---------------------------------------------------------------------------------------
// Frames

const SPORT: u16 = 40000;

fn tcp(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    Frame::tcp(src, dst, SPORT, dport, TCP_SYN).build()
}

fn tcp_ports(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    Frame::tcp(src, dst, sport, dport, TCP_SYN).build()
}

fn tcp_flags(src: &str, dst: &str, flags: u8) -> Vec<u8> {
    Frame::tcp(src, dst, SPORT, 443, flags).build()
}

fn udp(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    Frame::udp(src, dst, SPORT, dport).build()
}

fn icmp(src: &str, dst: &str, icmp_type: u8, code: u8) -> Vec<u8> {
    Frame::icmp(src, dst, icmp_type, code).build()
}

/// A frame of another IP protocol with a few bytes of payload.
fn raw(src: &str, dst: &str, proto: u8) -> Vec<u8> {
    Frame::new(ip(src), ip(dst), L4::Raw { proto })
        .with_payload(&[0, 0, 0x08, 0x00, 1, 2, 3, 4])
        .build()
}

/// An ARP request with the given VLAN tags.
fn arp(vlans: &[u16], qinq: bool) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    for (i, vid) in vlans.iter().enumerate() {
        let tpid: u16 = if i == 0 && qinq { 0x88a8 } else { 0x8100 };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 192, 0, 2, 1]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 2]);
    f
}

fn hbh(len8: u8) -> ExtHeader {
    ExtHeader::Options {
        kind: IPPROTO_HOPOPTS,
        len8,
    }
}

fn routing(len8: u8) -> ExtHeader {
    ExtHeader::Options {
        kind: IPPROTO_ROUTING,
        len8,
    }
}

fn dstopts(len8: u8) -> ExtHeader {
    ExtHeader::Options {
        kind: IPPROTO_DSTOPTS,
        len8,
    }
}

fn frag6(offset: u16, more: bool) -> ExtHeader {
    ExtHeader::Fragment { offset, more }
}

fn with_ext(mut f: Frame, ext: &[ExtHeader]) -> Frame {
    f.ipv6_ext = ext.to_vec();
    f
}

fn with_frag4(mut f: Frame, offset: u16, more: bool) -> Frame {
    f.ipv4_frag = Some((offset, more));
    f
}

/// Overwrites `bytes` at `at`.
fn patch(mut frame: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    frame[at..at + bytes.len()].copy_from_slice(bytes);
    frame
}

/// The policy most parsing tests use.
const PORTS: &str = r#"
[firewall]
default = "allow"

[[firewall.rule]]
name = "ssh"
action = "drop"
proto = "tcp"
dport = 22

[[firewall.rule]]
name = "ntp"
action = "allow"
proto = "udp"
dport = 123

[[firewall.rule]]
name = "echo"
action = "drop"
proto = "icmp"
icmp_type = 8

[[firewall.rule]]
name = "echo6"
action = "drop"
proto = "icmpv6"
icmp_type = 128
"#;

// ---------------------------------------------------------------------------------------
// Smoke

#[test]
fn empty_policy_passes_everything_to_the_default_slot() {
    let mut fw = fw("");
    fw.checks(&[
        (tcp("10.0.0.1", "10.0.0.2", 22), DefaultPass),
        (udp("2001:db8::1", "2001:db8::2", 123), DefaultPass),
        (icmp("10.0.0.1", "10.0.0.2", 8, 0), DefaultPass),
        (arp(&[], false), NotIp),
    ]);
    assert_eq!(fw.generation(), 1, "one install flips generation 0 to 1");
}

// ---------------------------------------------------------------------------------------
// Addresses

/// `(cidr, last address before it, first inside, last inside, first after it)`.
type Edges = (
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
    Option<&'static str>,
);

/// Installs a drop rule on `side` (`src` or `dst`) for each block in turn and checks the
/// addresses at and around its edges, plus an address of the other family.
fn cidr_edges(side: &str, cases: &[Edges], other_family: &str, peer: &str) {
    let mut fw = fw("");
    for &(cidr, before, first, last, after) in cases {
        fw.install(&format!(
            "[[firewall.rule]]\nname = \"r\"\naction = \"drop\"\n{side} = \"{cidr}\"\n"
        ));
        let frame = |addr: &str| {
            if side == "src" {
                tcp(addr, peer, 80)
            } else {
                tcp(peer, addr, 80)
            }
        };
        let mut cases = vec![(frame(first), Drop("r")), (frame(last), Drop("r"))];
        for outside in [before, after].into_iter().flatten() {
            cases.push((frame(outside), DefaultPass));
        }
        fw.checks(&cases);
        let other = if side == "src" {
            tcp(other_family, &other_peer(other_family), 80)
        } else {
            tcp(&other_peer(other_family), other_family, 80)
        };
        fw.check(&other, DefaultPass);
        let sent: u64 = cases
            .iter()
            .filter(|c| c.1 == Drop("r"))
            .map(|c| c.0.len() as u64)
            .sum();
        assert_eq!(
            fw.hits_of("r"),
            RuleStats {
                packets: 2,
                bytes: sent
            },
            "{cidr}"
        );
    }
}

fn other_peer(addr: &str) -> String {
    if ip(addr).is_ipv4() {
        "192.0.2.99".into()
    } else {
        "2001:db8:ffff::99".into()
    }
}

#[rustfmt::skip]
const V4_EDGES: &[Edges] = &[
    ("10.1.2.0/23", Some("10.1.1.255"), "10.1.2.0", "10.1.3.255", Some("10.1.4.0")),
    ("192.0.2.7/32", Some("192.0.2.6"), "192.0.2.7", "192.0.2.7", Some("192.0.2.8")),
    ("10.128.0.0/9", Some("10.127.255.255"), "10.128.0.0", "10.255.255.255", Some("11.0.0.0")),
    ("172.16.0.0/12", Some("172.15.255.255"), "172.16.0.0", "172.31.255.255", Some("172.32.0.0")),
    ("128.0.0.0/1", Some("127.255.255.255"), "128.0.0.0", "255.255.255.255", None),
    ("0.0.0.0/0", None, "0.0.0.0", "255.255.255.255", None),
];

const V6_MAX: &str = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";

#[rustfmt::skip]
const V6_EDGES: &[Edges] = &[
    ("2001:db8::2/127", Some("2001:db8::1"), "2001:db8::2", "2001:db8::3", Some("2001:db8::4")),
    ("2001:db8::5/128", Some("2001:db8::4"), "2001:db8::5", "2001:db8::5", Some("2001:db8::6")),
    (
        "2001:c00::/23",
        Some("2001:bff:ffff:ffff:ffff:ffff:ffff:ffff"),
        "2001:c00::",
        "2001:dff:ffff:ffff:ffff:ffff:ffff:ffff",
        Some("2001:e00::"),
    ),
    (
        "2001:db8:0:1:8000::/65",
        Some("2001:db8:0:1:7fff:ffff:ffff:ffff"),
        "2001:db8:0:1:8000::",
        "2001:db8:0:1:ffff:ffff:ffff:ffff",
        Some("2001:db8:0:2::"),
    ),
    ("8000::/1", Some("7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), "8000::", V6_MAX, None),
    ("::/0", None, "::", V6_MAX, None),
];

#[test]
fn src_cidr_ipv4_edges() {
    cidr_edges("src", V4_EDGES, "2001:db8::1", "192.0.2.200");
}

#[test]
fn dst_cidr_ipv4_edges() {
    cidr_edges("dst", V4_EDGES, "2001:db8::1", "192.0.2.200");
}

#[test]
fn src_cidr_ipv6_edges() {
    cidr_edges("src", V6_EDGES, "192.0.2.1", "2001:db8:ffff::200");
}

#[test]
fn dst_cidr_ipv6_edges() {
    cidr_edges("dst", V6_EDGES, "192.0.2.1", "2001:db8:ffff::200");
}

#[test]
fn src_and_dst_must_both_match() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "r"
action = "drop"
src = "10.0.0.0/8"
dst = "192.168.0.0/16"
"#);
    fw.checks(&[
        (tcp("10.9.9.9", "192.168.1.1", 80), Drop("r")),
        (tcp("10.9.9.9", "192.169.1.1", 80), DefaultPass),
        (tcp("11.9.9.9", "192.168.1.1", 80), DefaultPass),
        (tcp("192.168.1.1", "10.9.9.9", 80), DefaultPass),
    ]);
}

#[test]
fn src_list_of_cidrs() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "list"
action = "drop"
src = ["10.0.0.0/24", "192.168.1.128/25", "2001:db8::/64", "203.0.113.9"]
"#);
    let d4 = "198.51.100.1";
    let d6 = "2001:db8:ffff::1";
    fw.checks(&[
        (tcp("10.0.0.0", d4, 80), Drop("list")),
        (tcp("10.0.0.255", d4, 80), Drop("list")),
        (tcp("10.0.1.0", d4, 80), DefaultPass),
        (tcp("192.168.1.127", d4, 80), DefaultPass),
        (tcp("192.168.1.128", d4, 80), Drop("list")),
        (tcp("192.168.1.255", d4, 80), Drop("list")),
        (tcp("203.0.113.9", d4, 80), Drop("list")),
        (tcp("203.0.113.8", d4, 80), DefaultPass),
        (tcp("203.0.113.10", d4, 80), DefaultPass),
        (tcp("2001:db8::1", d6, 80), Drop("list")),
        (tcp("2001:db8::ffff:ffff:ffff:ffff", d6, 80), Drop("list")),
        (tcp("2001:db8:0:1::", d6, 80), DefaultPass),
        (
            tcp("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", d6, 80),
            DefaultPass,
        ),
    ]);
    assert_eq!(fw.hits_of("list").packets, 7);
}

#[test]
fn named_sets_as_src_and_dst() {
    let mut fw = fw(r#"
[sets.blocked]
entries = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::1"]

[sets.servers]
entries = ["192.0.2.0/24", "2001:db8:ffff::/48"]

[sets.empty]

[[firewall.rule]]
name = "from-blocked"
action = "drop"
src = "@blocked"

[[firewall.rule]]
name = "to-servers"
action = "drop"
dst = ["@servers"]

[[firewall.rule]]
name = "from-empty"
action = "drop"
src = "@empty"
"#);
    let out4 = "198.51.100.1";
    let out6 = "2001:db9::1";
    fw.checks(&[
        // Source set: every nesting level, both families, and the edges of the outer blocks.
        (tcp("10.0.0.0", out4, 80), Drop("from-blocked")),
        (tcp("10.1.2.3", out4, 80), Drop("from-blocked")),
        (tcp("10.1.2.4", out4, 80), Drop("from-blocked")),
        (tcp("10.1.255.255", out4, 80), Drop("from-blocked")),
        (tcp("10.255.255.255", out4, 80), Drop("from-blocked")),
        (tcp("9.255.255.255", out4, 80), DefaultPass),
        (tcp("11.0.0.0", out4, 80), DefaultPass),
        (tcp("2001:db8::", out6, 80), Drop("from-blocked")),
        (tcp("2001:db8:1::1", out6, 80), Drop("from-blocked")),
        (tcp("2001:db8:1::2", out6, 80), Drop("from-blocked")),
        (
            tcp("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", out6, 80),
            Drop("from-blocked"),
        ),
        (
            tcp("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", out6, 80),
            DefaultPass,
        ),
        (tcp("2001:db9::", out6, 80), DefaultPass),
        // Destination set.
        (tcp(out4, "192.0.2.0", 80), Drop("to-servers")),
        (tcp(out4, "192.0.2.255", 80), Drop("to-servers")),
        (tcp(out4, "192.0.3.0", 80), DefaultPass),
        (tcp(out6, "2001:db8:ffff:ffff::1", 80), Drop("to-servers")),
        (tcp(out6, "2001:db8:fffe::1", 80), DefaultPass),
        // A set member as the destination does not make the source rule match.
        (tcp(out4, "10.1.2.3", 80), DefaultPass),
        // Both rules match: the first one wins.
        (tcp("10.0.0.1", "192.0.2.1", 80), Drop("from-blocked")),
    ]);
    assert_eq!(fw.hits_of("from-empty").packets, 0);
}

#[test]
fn keyless_tuples_take_their_first_rule() {
    // Rules whose key takes nothing from the packet (a set and nothing else, no condition at
    // all) are decided without a key lookup: the tuple's first rule. Two rules share each
    // such tuple here; the first must win, and a rule with a key field between them must
    // still be searched.
    let mut fw = fw(r#"
[sets.hosts]
entries = ["192.0.2.7", "2001:db8::7", "198.51.100.0/24"]

[[firewall.rule]]
name = "hosts-web"
action = "allow"
src = "@hosts"
proto = "tcp"
dport = 443

[[firewall.rule]]
name = "hosts"
action = "drop"
src = "@hosts"

[[firewall.rule]]
name = "hosts-again"
action = "allow"
src = "@hosts"

[[firewall.rule]]
name = "ssh"
action = "allow"
proto = "tcp"
dport = 22

[[firewall.rule]]
name = "everything"
action = "drop"

[[firewall.rule]]
name = "everything-again"
action = "allow"
"#);
    let c = palisade::firewall::compile::compile(&fw.policy).expect("compiles");
    assert_eq!(
        c.tuples.iter().filter(|t| t.keyless != 0).count(),
        2,
        "{:?}",
        c.tuples
    );
    fw.checks(&[
        (tcp("192.0.2.7", "203.0.113.1", 443), Allow("hosts-web")),
        (tcp("192.0.2.7", "203.0.113.1", 22), Drop("hosts")),
        (udp("198.51.100.9", "203.0.113.1", 53), Drop("hosts")),
        (tcp("2001:db8::7", "2001:db8:1::1", 80), Drop("hosts")),
        (tcp("203.0.113.9", "203.0.113.1", 22), Allow("ssh")),
        (tcp("203.0.113.9", "203.0.113.1", 80), Drop("everything")),
        (tcp("2001:db8::8", "2001:db8:1::1", 443), Drop("everything")),
    ]);
    assert_eq!(fw.hits_of("hosts-again").packets, 0);
    assert_eq!(fw.hits_of("everything-again").packets, 0);
}

#[test]
fn ipv6_packets_with_a_v4_mapped_source() {
    // An IPv6 packet from ::ffff:10.0.0.1 carries the same 16 address bytes as an IPv4 packet
    // from 10.0.0.1; only the family differs. What matches it:
    //  - IPv4 CIDR rules: no (they carry family 4);
    //  - IPv6 CIDR rules over the mapped range: yes, and they do not match real IPv4 packets;
    //  - sets: no, set membership is per family like CIDR rules: an IPv4 entry never contains
    //    an IPv6 packet's address, mapped or not.
    let mut fw = fw(r#"
[sets.nets]
entries = ["10.0.0.0/8"]

[[firewall.rule]]
name = "v4-cidr"
action = "drop"
proto = "tcp"
src = "10.0.0.0/8"

[[firewall.rule]]
name = "mapped-cidr"
action = "drop"
proto = "udp"
src = "::ffff:10.0.0.0/104"

[[firewall.rule]]
name = "set"
action = "drop"
proto = "icmpv6"
src = "@nets"
"#);
    let mapped = "::ffff:10.0.0.1";
    let peer = "2001:db8::1";
    fw.checks(&[
        (tcp(mapped, peer, 80), DefaultPass),
        (tcp("10.0.0.1", "192.0.2.1", 80), Drop("v4-cidr")),
        (udp(mapped, peer, 80), Drop("mapped-cidr")),
        (udp("10.0.0.1", "192.0.2.1", 80), DefaultPass),
        (icmp(mapped, peer, 128, 0), DefaultPass),
        (icmp("::ffff:11.0.0.1", peer, 128, 0), DefaultPass),
    ]);
}

#[test]
fn set_of_ipv6_prefixes_does_not_match_ipv4_packets() {
    // `::ffff:0:0/96` (IPv4-mapped) and `::/8` appear in common IPv6 bogon lists, and the
    // config checker treats a set with only IPv6 entries as IPv6-only (it rejects such a set
    // as `src` against an IPv4 `dst` as never matching). An IPv4 packet must not be a member.
    let mut fw = fw(r#"
[sets.bogons6]
entries = ["::ffff:0:0/96", "::/8", "2001:db8::/32"]

[[firewall.rule]]
name = "bogons"
action = "drop"
src = "@bogons6"
"#);
    fw.checks(&[
        (tcp("2001:db8::1", "2001:db8:ffff::1", 80), Drop("bogons")),
        (tcp("::1", "2001:db8:ffff::1", 80), Drop("bogons")),
        (tcp("192.0.2.1", "198.51.100.1", 80), DefaultPass),
    ]);
}

#[test]
fn set_members_move_between_the_host_hash_and_the_prefix_trie_across_reloads() {
    // Single addresses live in an exact hash, shorter prefixes in the trie, and each set
    // records which of the two it uses. Reload the same set names through every combination:
    // a member of the previous policy must never match, whichever map held it.
    let hosts_only = r#"
[sets.s]
entries = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "::ffff:198.51.100.9/128"]

[[firewall.rule]]
name = "s"
action = "drop"
src = "@s"
"#;
    let prefixes_only = r#"
[sets.s]
entries = ["203.0.113.0/24", "2001:db8:aa::/48"]

[[firewall.rule]]
name = "s"
action = "drop"
src = "@s"
"#;
    let mixed = r#"
[sets.s]
entries = ["192.0.2.2", "203.0.113.0/25", "203.0.113.200", "2001:db8:aa::/48", "2001:db8::2"]

[[firewall.rule]]
name = "s"
action = "drop"
src = "@s"
"#;
    let dst4 = "198.51.100.1";
    let dst6 = "2001:db8:ffff::1";
    let mut fw = fw(hosts_only);
    let check_hosts_only = |fw: &mut Fw| {
        fw.checks(&[
            (tcp("192.0.2.1", dst4, 80), Drop("s")),
            (tcp("192.0.2.2", dst4, 80), Drop("s")),
            (tcp("192.0.2.3", dst4, 80), DefaultPass),
            (tcp("2001:db8::1", dst6, 80), Drop("s")),
            (tcp("2001:db8::3", dst6, 80), DefaultPass),
            // An IPv6 host written v4-mapped is an IPv6 member only.
            (tcp("::ffff:198.51.100.9", dst6, 80), Drop("s")),
            (tcp("198.51.100.9", dst4, 80), DefaultPass),
            (tcp("203.0.113.7", dst4, 80), DefaultPass),
        ]);
    };
    check_hosts_only(&mut fw);
    fw.install(prefixes_only);
    fw.checks(&[
        (tcp("192.0.2.1", dst4, 80), DefaultPass),
        (tcp("2001:db8::1", dst6, 80), DefaultPass),
        (tcp("203.0.113.7", dst4, 80), Drop("s")),
        (tcp("2001:db8:aa::7", dst6, 80), Drop("s")),
    ]);
    fw.install(mixed);
    fw.checks(&[
        (tcp("192.0.2.1", dst4, 80), DefaultPass),
        (tcp("192.0.2.2", dst4, 80), Drop("s")),
        (tcp("203.0.113.7", dst4, 80), Drop("s")),
        (tcp("203.0.113.199", dst4, 80), DefaultPass),
        (tcp("203.0.113.200", dst4, 80), Drop("s")),
        (tcp("2001:db8:aa::7", dst6, 80), Drop("s")),
        (tcp("2001:db8::2", dst6, 80), Drop("s")),
        (tcp("2001:db8::1", dst6, 80), DefaultPass),
    ]);
    // Both generations have now held other members: back to hosts only, twice.
    fw.install(hosts_only);
    check_hosts_only(&mut fw);
    fw.install(hosts_only);
    check_hosts_only(&mut fw);
}

/// Large sets and name lists are written and cleared in batches. Policies of 200k hosts and
/// 200k names follow each other until both generations have been rewritten twice: after each
/// install the maps hold exactly the running and the previous policy's entries (the one
/// before was cleared), the new members match and the old ones no longer do.
#[test]
fn big_sets_and_name_lists_reload_without_stale_entries() {
    use palisade::maps;
    use palisade_common::{
        dns::maps::{NameKey, NameValue},
        firewall::SetKey,
    };
    const N: u32 = 200_000;
    let dir = std::env::temp_dir().join(format!("palisade-big-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let host = |p: u32, i: u32| format!("10.{}.{}.{}", p * 4 + i / 65_536, i / 256 % 256, i % 256);
    let policy = |p: u32| {
        let hosts = dir.join(format!("hosts-{p}.txt"));
        let names = dir.join(format!("names-{p}.txt"));
        let h: String = (0..N).map(|i| host(p, i) + "\n").collect();
        std::fs::write(&hosts, h).expect("hosts file");
        let n: String = (0..N).map(|i| format!("n{i}.p{p}.example\n")).collect();
        std::fs::write(&names, n).expect("names file");
        format!(
            r#"
[sets.big]
files = ["{}"]

[[firewall.rule]]
name = "big"
action = "drop"
src = "@big"

[dns.ingress]
mode = "blocklist"
lists = ["big"]

[dns.lists.big]
files = ["{}"]
"#,
            hosts.display(),
            names.display()
        )
    };
    // Entries held by the host tables and the name tables of both generations.
    let count = |fw: &Fw| -> (usize, usize) {
        use palisade::capacity::{Kind, table};
        let tables = |kind| {
            (0..2).filter_map(move |g| table(&fw.bench.ebpf, kind, g).expect("reading a slot"))
        };
        let hosts: usize = tables(Kind::SetHosts)
            .map(|t| {
                maps::keys_batch::<SetKey, u8>(&t, |_| true)
                    .expect("hosts")
                    .len()
            })
            .sum();
        let names: usize = tables(Kind::Names)
            .map(|t| {
                maps::keys_batch::<NameKey, NameValue>(&t, |_| true)
                    .expect("names")
                    .len()
            })
            .sum();
        (hosts, names)
    };
    let dst = "198.51.100.1";
    let mut fw = fw(&policy(0));
    assert_eq!(count(&fw), (N as usize, N as usize));
    for (p, before) in [(1u32, 0u32), (2, 1), (3, 2), (0, 3)] {
        let started = Instant::now();
        fw.install(&policy(p));
        eprintln!(
            "install of {N} hosts and {N} names: {:?}",
            started.elapsed()
        );
        assert_eq!(
            count(&fw),
            (2 * N as usize, 2 * N as usize),
            "policy {p}: the running and the previous generation only"
        );
        fw.checks(&[
            (tcp(&host(p, 0), dst, 80), Drop("big")),
            (tcp(&host(p, N - 1), dst, 80), Drop("big")),
            (tcp(&host(before, 0), dst, 80), DefaultPass),
            (tcp(&host(before, N - 1), dst, 80), DefaultPass),
        ]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload brings each table of the idle generation to the new policy entry by entry:
/// the entries it already holds with the same value are left alone, those not wanted are
/// deleted, the missing ones and those with another value are written, and entries the sync
/// is not about (another generation's keys) are never touched. Checked on the exact hash and on the LPM trie
/// (whose batch operations the kernel runs key by key), by what the kernel holds after each
/// step.
#[test]
fn a_reload_writes_only_what_differs_and_never_the_other_generation() {
    use aya::maps::lpm_trie::Key;
    use palisade::maps::{self, Synced};
    use palisade_common::firewall::{SET_KEY_PREFIX_BITS, SetKey, set_id};
    let mut fw = fw("");
    let addr = |i: u32| v4_mapped([10, 9, (i >> 8) as u8, i as u8]);
    let host = |generation: u32, i: u32| SetKey::new(set_id(generation, 3), FAMILY_V4, addr(i));
    let prefix = |generation: u32, i: u32| {
        Key::new(
            SET_KEY_PREFIX_BITS + 96 + 24,
            SetKey::new(
                set_id(generation, 3),
                FAMILY_V4,
                v4_mapped([10, i as u8, (i >> 8) as u8, 0]),
            ),
        )
    };
    let gen0 = |set: [u8; 4]| u32::from_be_bytes(set) >> 31 == 0;
    // Everything each map holds, as (key bytes, value).
    fn held<K: aya::Pod>(m: &aya::maps::MapData) -> Vec<(Vec<u8>, u8)> {
        let (keys, values) = palisade::pin::map_entries_batch(
            std::os::fd::AsFd::as_fd(m.fd()),
            size_of::<K>(),
            1,
            4096,
        )
        .expect("reading the map");
        let mut out: Vec<(Vec<u8>, u8)> = keys
            .chunks_exact(size_of::<K>())
            .map(<[u8]>::to_vec)
            .zip(values)
            .collect();
        out.sort();
        out
    }
    fn bytes_of<K: aya::Pod>(k: &K) -> Vec<u8> {
        // SAFETY: map keys are plain data without padding.
        unsafe { std::slice::from_raw_parts((k as *const K).cast::<u8>(), size_of::<K>()) }.to_vec()
    }
    // What a map must hold: the other generation's entries (value 7) and the wanted ones,
    // as `held` lists them.
    fn expected<K: aya::Pod>(
        other: &[K],
        wanted: impl Iterator<Item = (K, u8)>,
    ) -> Vec<(Vec<u8>, u8)> {
        let mut out: Vec<(Vec<u8>, u8)> = other
            .iter()
            .map(|k| (bytes_of(k), 7))
            .chain(wanted.map(|(k, v)| (bytes_of(&k), v)))
            .collect();
        out.sort();
        out
    }
    // Generation 0's tables (idle: the policy went into generation 1), new and empty.
    let table = |ebpf: &mut aya::Ebpf, kind| {
        let before = palisade::capacity::table(ebpf, kind, 0).expect("reading the slot");
        assert!(before.is_none(), "generation 0 had no table yet");
        let mut t =
            palisade::capacity::tables_for(ebpf, 0, &[(kind, 2000, 4096)]).expect("a table");
        t.remove(0)
    };
    let hosts = &table(&mut fw.bench.ebpf, palisade::capacity::Kind::SetHosts);
    let trie = &table(&mut fw.bench.ebpf, palisade::capacity::Kind::SetPrefixes);
    // Entries of the other generation's set (as a table shared by both would hold them): 100
    // of the same set index in each map, which the sync must leave alone.
    let other_hosts: Vec<SetKey> = (0..100).map(|i| host(1, i)).collect();
    let other_prefixes: Vec<Key<SetKey>> = (0..100).map(|i| prefix(1, i)).collect();
    maps::update_batch(hosts, &other_hosts, &[7u8; 100]).expect("writing generation 1");
    for k in &other_prefixes {
        palisade::pin::map_update(std::os::fd::AsFd::as_fd(trie.fd()), &bytes_of(k), &[7], 0)
            .expect("writing generation 1");
    }
    // First: 0..1000 into an empty generation 0. Then 500..1500, with 700..800 of another
    // value.
    let value = |step: u32, i: u32| {
        if step == 1 && (700..800).contains(&i) {
            2u8
        } else {
            1
        }
    };
    for (step, range, want) in [
        (
            0u32,
            0..1000u32,
            Synced {
                kept: 0,
                written: 1000,
                deleted: 0,
            },
        ),
        (
            1,
            500..1500,
            Synced {
                kept: 400,
                written: 600,
                deleted: 500,
            },
        ),
        // The same again: nothing to write.
        (
            1,
            500..1500,
            Synced {
                kept: 1000,
                written: 0,
                deleted: 0,
            },
        ),
    ] {
        let values: Vec<u8> = range.clone().map(|i| value(step, i)).collect();
        let keys: Vec<SetKey> = range.clone().map(|i| host(0, i)).collect();
        let got = maps::sync_batch(hosts, |k: &SetKey| gen0(k.set), &keys, &values)
            .expect("syncing the hash");
        assert_eq!(got, want, "hash, step {step} {range:?}");
        let keys: Vec<Key<SetKey>> = range.clone().map(|i| prefix(0, i)).collect();
        let got = maps::sync_batch(trie, |k: &Key<SetKey>| gen0(k.data().set), &keys, &values)
            .expect("syncing the trie");
        assert_eq!(got, want, "trie, step {step} {range:?}");
        // The maps hold exactly generation 1's entries and the wanted ones.
        assert_eq!(
            held::<SetKey>(hosts),
            expected(
                &other_hosts,
                range.clone().map(|i| (host(0, i), value(step, i)))
            ),
            "hash after step {step}"
        );
        assert_eq!(
            held::<Key<SetKey>>(trie),
            expected(
                &other_prefixes,
                range.clone().map(|i| (prefix(0, i), value(step, i)))
            ),
            "trie after step {step}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Protocols, ports, flags, ICMP

#[test]
fn protocols() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "tcp"
action = "drop"
proto = "tcp"
dst = "192.0.2.6"

[[firewall.rule]]
name = "udp"
action = "drop"
proto = 17
dst = "192.0.2.17"

[[firewall.rule]]
name = "icmp"
action = "drop"
proto = "icmp"
dst = "192.0.2.1"

[[firewall.rule]]
name = "icmpv6"
action = "drop"
proto = "icmpv6"
dst = "2001:db8::58"

[[firewall.rule]]
name = "gre"
action = "drop"
proto = 47
dst = ["192.0.2.47", "2001:db8::47"]
"#);
    let s4 = "198.51.100.1";
    let s6 = "2001:db8:ffff::1";
    let v4 = |dst: &str| {
        vec![
            ("tcp", tcp(s4, dst, 80)),
            ("udp", udp(s4, dst, 80)),
            ("icmp", icmp(s4, dst, 8, 0)),
            ("gre", raw(s4, dst, 47)),
            ("other", raw(s4, dst, 50)),
        ]
    };
    for (dst, rule) in [
        ("192.0.2.6", "tcp"),
        ("192.0.2.17", "udp"),
        ("192.0.2.1", "icmp"),
        ("192.0.2.47", "gre"),
    ] {
        for (kind, frame) in v4(dst) {
            let want = if kind == rule {
                Drop(rule)
            } else {
                DefaultPass
            };
            fw.check(&frame, want);
        }
    }
    fw.checks(&[
        (icmp(s6, "2001:db8::58", 128, 0), Drop("icmpv6")),
        (tcp(s6, "2001:db8::58", 80), DefaultPass),
        (udp(s6, "2001:db8::58", 80), DefaultPass),
        (raw(s6, "2001:db8::58", 47), DefaultPass),
        (raw(s6, "2001:db8::47", 47), Drop("gre")),
        (icmp(s6, "2001:db8::47", 128, 0), DefaultPass),
        // proto = "icmp" is ICMP for IPv4, not ICMPv6.
        (icmp(s6, "::ffff:192.0.2.1", 128, 0), DefaultPass),
    ]);
}

#[test]
fn port_ranges_and_single_ports() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "sport-range"
action = "drop"
proto = "tcp"
sport = "1000-2000"
dst = "192.0.2.1"

[[firewall.rule]]
name = "dport-range"
action = "drop"
proto = "udp"
dport = "5000-5100"
dst = "192.0.2.2"

[[firewall.rule]]
name = "single"
action = "drop"
proto = "tcp"
dport = 22
dst = "192.0.2.3"

[[firewall.rule]]
name = "zero"
action = "drop"
proto = "udp"
dport = "0"
dst = "192.0.2.4"

[[firewall.rule]]
name = "max"
action = "drop"
proto = "tcp"
sport = 65535
dst = "192.0.2.5"

[[firewall.rule]]
name = "all"
action = "drop"
proto = "tcp"
dport = "0-65535"
dst = "192.0.2.6"

[[firewall.rule]]
name = "top"
action = "drop"
proto = "udp"
dport = 65535
dst = "192.0.2.7"

[[firewall.rule]]
name = "sport-zero"
action = "drop"
proto = "tcp"
sport = 0
dst = "192.0.2.8"
"#);
    let s = "198.51.100.1";
    fw.checks(&[
        (tcp_ports(s, "192.0.2.1", 999, 80), DefaultPass),
        (tcp_ports(s, "192.0.2.1", 1000, 80), Drop("sport-range")),
        (tcp_ports(s, "192.0.2.1", 2000, 80), Drop("sport-range")),
        (tcp_ports(s, "192.0.2.1", 2001, 80), DefaultPass),
        // A destination port in the range is not a source port.
        (tcp_ports(s, "192.0.2.1", 80, 1500), DefaultPass),
        (Frame::udp(s, "192.0.2.1", 1500, 80).build(), DefaultPass),
        (udp(s, "192.0.2.2", 4999), DefaultPass),
        (udp(s, "192.0.2.2", 5000), Drop("dport-range")),
        (udp(s, "192.0.2.2", 5100), Drop("dport-range")),
        (udp(s, "192.0.2.2", 5101), DefaultPass),
        (tcp(s, "192.0.2.2", 5050), DefaultPass),
        (tcp(s, "192.0.2.3", 21), DefaultPass),
        (tcp(s, "192.0.2.3", 22), Drop("single")),
        (tcp(s, "192.0.2.3", 23), DefaultPass),
        (udp(s, "192.0.2.4", 0), Drop("zero")),
        (udp(s, "192.0.2.4", 1), DefaultPass),
        (tcp_ports(s, "192.0.2.5", 65534, 80), DefaultPass),
        (tcp_ports(s, "192.0.2.5", 65535, 80), Drop("max")),
        (tcp(s, "192.0.2.6", 0), Drop("all")),
        (tcp(s, "192.0.2.6", 31337), Drop("all")),
        (tcp(s, "192.0.2.6", 65535), Drop("all")),
        (udp(s, "192.0.2.6", 80), DefaultPass),
        (icmp(s, "192.0.2.6", 8, 0), DefaultPass),
        (udp(s, "192.0.2.7", 65534), DefaultPass),
        (udp(s, "192.0.2.7", 65535), Drop("top")),
        (tcp_ports(s, "192.0.2.8", 0, 80), Drop("sport-zero")),
        (tcp_ports(s, "192.0.2.8", 1, 80), DefaultPass),
    ]);
}

#[test]
fn overlapping_port_ranges_first_match_wins() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "inner"
priority = 1
action = "allow"
proto = "tcp"
dport = 1500

[[firewall.rule]]
name = "outer"
priority = 2
action = "drop"
proto = "tcp"
dport = "1000-2000"

[[firewall.rule]]
name = "overlap"
priority = 3
action = "drop"
proto = "tcp"
dport = "1999-3000"

[[firewall.rule]]
name = "both"
priority = 4
action = "drop"
proto = "tcp"
sport = "1-1023"
dport = "3001-4000"
"#);
    let (s, d) = ("198.51.100.1", "192.0.2.1");
    fw.checks(&[
        (tcp(s, d, 999), DefaultPass),
        (tcp(s, d, 1000), Drop("outer")),
        (tcp(s, d, 1499), Drop("outer")),
        (tcp(s, d, 1500), Allow("inner")),
        (tcp(s, d, 1501), Drop("outer")),
        (tcp(s, d, 1999), Drop("outer")),
        (tcp(s, d, 2000), Drop("outer")),
        (tcp(s, d, 2001), Drop("overlap")),
        (tcp(s, d, 3000), Drop("overlap")),
        (tcp(s, d, 3001), DefaultPass),
        (tcp_ports(s, d, 1023, 3001), Drop("both")),
        (tcp_ports(s, d, 1, 4000), Drop("both")),
        (tcp_ports(s, d, 1024, 3500), DefaultPass),
        (tcp_ports(s, d, 0, 3500), DefaultPass),
        (tcp_ports(s, d, 500, 4001), DefaultPass),
    ]);
}

#[test]
fn tcp_flags_value_and_mask() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "syn-no-ack"
action = "drop"
proto = "tcp"
tcp_flags = "syn/syn,ack"
dst = "192.0.2.1"

[[firewall.rule]]
name = "no-syn"
action = "drop"
proto = "tcp"
tcp_flags = "/syn"
dst = "192.0.2.2"

[[firewall.rule]]
name = "syn-ack"
action = "drop"
proto = "tcp"
tcp_flags = "syn,ack"
dst = "192.0.2.3"
"#);
    let s = "198.51.100.1";
    fw.checks(&[
        (tcp_flags(s, "192.0.2.1", TCP_SYN), Drop("syn-no-ack")),
        (
            tcp_flags(s, "192.0.2.1", TCP_SYN | TCP_FIN),
            Drop("syn-no-ack"),
        ),
        (
            tcp_flags(s, "192.0.2.1", TCP_SYN | TCP_PSH | TCP_RST),
            Drop("syn-no-ack"),
        ),
        (tcp_flags(s, "192.0.2.1", TCP_SYN | TCP_ACK), DefaultPass),
        (tcp_flags(s, "192.0.2.1", TCP_ACK), DefaultPass),
        (tcp_flags(s, "192.0.2.1", 0), DefaultPass),
        (udp(s, "192.0.2.1", 443), DefaultPass),
        (tcp_flags(s, "192.0.2.2", TCP_ACK), Drop("no-syn")),
        (tcp_flags(s, "192.0.2.2", 0), Drop("no-syn")),
        (tcp_flags(s, "192.0.2.2", !TCP_SYN), Drop("no-syn")),
        (tcp_flags(s, "192.0.2.2", TCP_SYN), DefaultPass),
        (tcp_flags(s, "192.0.2.2", TCP_SYN | TCP_ACK), DefaultPass),
        (
            tcp_flags(s, "192.0.2.3", TCP_SYN | TCP_ACK),
            Drop("syn-ack"),
        ),
        (
            tcp_flags(s, "192.0.2.3", TCP_SYN | TCP_ACK | TCP_PSH),
            Drop("syn-ack"),
        ),
        (tcp_flags(s, "192.0.2.3", 0xff), Drop("syn-ack")),
        (tcp_flags(s, "192.0.2.3", TCP_SYN), DefaultPass),
        (tcp_flags(s, "192.0.2.3", TCP_ACK), DefaultPass),
    ]);
}

#[test]
fn icmp_type_and_code() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "echo"
action = "drop"
proto = "icmp"
icmp_type = 8
dst = "192.0.2.1"

[[firewall.rule]]
name = "port-unreachable"
action = "drop"
proto = "icmp"
icmp_type = 3
icmp_code = 3
dst = "192.0.2.2"

[[firewall.rule]]
name = "echo6"
action = "drop"
proto = "icmpv6"
icmp_type = 128
"#);
    let s = "198.51.100.1";
    fw.checks(&[
        (icmp(s, "192.0.2.1", 8, 0), Drop("echo")),
        (icmp(s, "192.0.2.1", 8, 1), Drop("echo")),
        (icmp(s, "192.0.2.1", 8, 255), Drop("echo")),
        (icmp(s, "192.0.2.1", 0, 0), DefaultPass),
        (icmp(s, "192.0.2.1", 7, 255), DefaultPass),
        (icmp(s, "192.0.2.1", 9, 0), DefaultPass),
        // Type and code travel as dport = type << 8 | code; ports never match ICMP rules.
        (tcp(s, "192.0.2.1", 0x0800), DefaultPass),
        (udp(s, "192.0.2.2", 0x0303), DefaultPass),
        (icmp(s, "192.0.2.2", 3, 3), Drop("port-unreachable")),
        (icmp(s, "192.0.2.2", 3, 2), DefaultPass),
        (icmp(s, "192.0.2.2", 3, 4), DefaultPass),
        (icmp(s, "192.0.2.2", 2, 3), DefaultPass),
        (icmp(s, "192.0.2.2", 4, 3), DefaultPass),
        (icmp("2001:db8::1", "2001:db8::2", 128, 0), Drop("echo6")),
        (icmp("2001:db8::1", "2001:db8::2", 128, 9), Drop("echo6")),
        (icmp("2001:db8::1", "2001:db8::2", 129, 0), DefaultPass),
        (icmp("2001:db8::1", "2001:db8::2", 8, 0), DefaultPass),
    ]);
}

// ---------------------------------------------------------------------------------------
// Order, default action, counters

#[test]
fn lower_priority_number_beats_file_order() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "allow-ssh"
priority = 20
action = "allow"
proto = "tcp"
dport = 22

[[firewall.rule]]
name = "drop-ten"
priority = 10
action = "drop"
src = "10.0.0.0/8"
"#);
    assert_eq!((fw.rule("drop-ten"), fw.rule("allow-ssh")), (0, 1));
    fw.checks(&[
        (tcp("10.0.0.1", "192.0.2.1", 22), Drop("drop-ten")),
        (tcp("11.0.0.1", "192.0.2.1", 22), Allow("allow-ssh")),
        (tcp("10.0.0.1", "192.0.2.1", 80), Drop("drop-ten")),
    ]);
}

#[test]
fn equal_priority_keeps_file_order() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "allow-ssh"
priority = 5
action = "allow"
proto = "tcp"
dport = 22

[[firewall.rule]]
name = "drop-ten"
priority = 5
action = "drop"
src = "10.0.0.0/8"

[[firewall.rule]]
name = "implicit-first"
action = "drop"
proto = "udp"

[[firewall.rule]]
name = "implicit-second"
action = "allow"
proto = "udp"
dport = 123
"#);
    fw.checks(&[
        (tcp("10.0.0.1", "192.0.2.1", 22), Allow("allow-ssh")),
        (tcp("10.0.0.1", "192.0.2.1", 23), Drop("drop-ten")),
        // Rules without a priority run in file order, after the explicit ones.
        (udp("11.0.0.1", "192.0.2.1", 123), Drop("implicit-first")),
        (udp("10.0.0.1", "192.0.2.1", 123), Drop("drop-ten")),
    ]);
    assert_eq!(fw.hits_of("implicit-second").packets, 0);
}

#[test]
fn best_rule_is_found_across_rule_shapes() {
    // Rules 0 and 3 share a shape (proto + dport), rule 1 has another (source /8), rule 2 a
    // third. A packet matching rules 3, 1 and 2 must get rule 1 even though the shape holding
    // rule 0 is searched first.
    let mut fw = fw(r#"
[[firewall.rule]]
name = "web"
action = "allow"
proto = "tcp"
dport = 80

[[firewall.rule]]
name = "ten"
action = "drop"
src = "10.0.0.0/8"

[[firewall.rule]]
name = "host"
action = "allow"
src = "10.0.0.1"
dst = "192.0.2.1"

[[firewall.rule]]
name = "ssh"
action = "allow"
proto = "tcp"
dport = 22
"#);
    fw.checks(&[
        (tcp("10.0.0.1", "192.0.2.1", 22), Drop("ten")),
        (tcp("10.0.0.1", "192.0.2.1", 80), Allow("web")),
        (tcp("11.0.0.1", "192.0.2.1", 22), Allow("ssh")),
        (udp("10.0.0.1", "192.0.2.1", 22), Drop("ten")),
        (udp("11.0.0.1", "192.0.2.1", 22), DefaultPass),
    ]);
}

#[test]
fn default_action_drop_and_allow() {
    let rules = r#"
[[firewall.rule]]
name = "ssh"
action = "allow"
proto = "tcp"
dport = 22
"#;
    let mut fw = fw(&format!("[firewall]\ndefault = \"drop\"\n{rules}"));
    fw.checks(&[
        (tcp("10.0.0.1", "10.0.0.2", 22), Allow("ssh")),
        (tcp("10.0.0.1", "10.0.0.2", 23), DefaultDrop),
        (udp("2001:db8::1", "2001:db8::2", 22), DefaultDrop),
        (icmp("10.0.0.1", "10.0.0.2", 8, 0), DefaultDrop),
        // Non-IP traffic is never filtered, whatever the default.
        (arp(&[], false), NotIp),
    ]);
    let dropped = [
        tcp("10.0.0.1", "10.0.0.2", 23),
        udp("2001:db8::1", "2001:db8::2", 22),
        icmp("10.0.0.1", "10.0.0.2", 8, 0),
    ];
    let bytes: u64 = dropped.iter().map(|f| f.len() as u64).sum();
    assert_eq!(fw.hits(DEFAULT_SLOT), RuleStats { packets: 3, bytes });

    fw.install(&format!("[firewall]\ndefault = \"allow\"\n{rules}"));
    assert_eq!(
        fw.hits(DEFAULT_SLOT),
        RuleStats::default(),
        "a new policy starts at zero"
    );
    fw.checks(&[
        (tcp("10.0.0.1", "10.0.0.2", 22), Allow("ssh")),
        (tcp("10.0.0.1", "10.0.0.2", 23), DefaultPass),
    ]);
    assert_eq!(
        fw.generation(),
        0,
        "the second install flips back to generation 0"
    );
}

#[test]
fn rule_counters_equal_what_was_sent() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "web"
action = "allow"
proto = "tcp"
dport = 80

[[firewall.rule]]
name = "drop-udp"
action = "drop"
proto = "udp"
"#);
    let (mut web, mut udp_bytes, mut other) = (0u64, 0u64, 0u64);
    for (i, size) in [0usize, 1, 17, 100, 1000, 1400].into_iter().enumerate() {
        let payload = vec![i as u8; size];
        let f = Frame::tcp("10.0.0.1", "10.0.0.2", 1234, 80, TCP_ACK)
            .with_payload(&payload)
            .build();
        web += f.len() as u64;
        fw.check(&f, Allow("web"));
        let f = Frame::udp("2001:db8::1", "2001:db8::2", 1234, 80)
            .with_payload(&payload)
            .build();
        udp_bytes += f.len() as u64;
        fw.check(&f, Drop("drop-udp"));
        let f = Frame::tcp("10.0.0.1", "10.0.0.2", 1234, 81, TCP_ACK)
            .with_payload(&payload)
            .build();
        other += f.len() as u64;
        fw.check(&f, DefaultPass);
    }
    assert_eq!(
        fw.hits_of("web"),
        RuleStats {
            packets: 6,
            bytes: web
        }
    );
    assert_eq!(
        fw.hits_of("drop-udp"),
        RuleStats {
            packets: 6,
            bytes: udp_bytes
        }
    );
    assert_eq!(
        fw.hits(DEFAULT_SLOT),
        RuleStats {
            packets: 6,
            bytes: other
        }
    );
    assert_eq!(web, 6 * 54 + 2518);
    assert_eq!(fw.bench.stat(stats::PACKETS).unwrap(), 18);
    assert_eq!(fw.bench.stat(stats::PASSED).unwrap(), 12);
    assert_eq!(fw.bench.stat(stats::DROPPED).unwrap(), 6);
    assert_eq!(fw.bench.reason_count(reason::RULE).unwrap(), 6);
}

// ---------------------------------------------------------------------------------------
// Events

#[test]
fn event_reader_is_woken_for_batches_not_for_each_record() {
    // A reader asleep on the ring is woken once `EVENT_WAKEUP_BYTES` wait, not per record:
    // a wakeup per record costs the packet's CPU more than the record. Readers drain on a
    // timer besides (the daemon every `EVENT_DRAIN_INTERVAL_MS`).
    let mut fw = fw(r#"
[[firewall.rule]]
name = "ssh"
action = "drop"
proto = "tcp"
dport = 22
log = true
"#);
    let frame = Frame::tcp("192.0.2.1", "198.51.100.2", 50000, 22, TCP_SYN).build();
    let fd = fw.bench.events_fd().expect("the event ring");
    let timeout = Duration::from_secs(2);
    // How long a reader waiting in poll() sleeps while `records` logged drops are written.
    let sleep_of_reader = |bench: &Bench, records: u32| {
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let t = Instant::now();
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&raw mut p, 1, timeout.as_millis() as i32) };
                t.elapsed()
            });
            // Let the reader fall asleep on the empty ring first.
            std::thread::sleep(Duration::from_millis(300));
            let out = bench.run_prog(FIREWALL, &frame, records).expect("test run");
            assert_eq!(out.action, XDP_DROP);
            reader.join().expect("reader")
        })
    };
    let one = sleep_of_reader(&fw.bench, 1);
    assert!(
        one >= timeout - Duration::from_millis(100),
        "one record woke the reader after {one:?}"
    );
    assert_eq!(fw.bench.drain_events().len(), 1);
    // 80 bytes a record on the ring: 1000 records pass the threshold.
    let per_record = (std::mem::size_of::<FirewallEvent>() + 8) as u64;
    assert!(1000 * per_record > EVENT_WAKEUP_BYTES);
    let batch = sleep_of_reader(&fw.bench, 1000);
    assert!(
        batch < timeout / 2,
        "a batch past the threshold did not wake the reader ({batch:?})"
    );
    assert_eq!(fw.bench.drain_events().len(), 1000);
}

#[test]
fn logged_rule_drops_emit_events() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "ssh"
action = "drop"
proto = "tcp"
dport = 22
log = true

[[firewall.rule]]
name = "quiet"
action = "drop"
proto = "tcp"
dport = 23

[[firewall.rule]]
name = "logged-allow"
action = "allow"
proto = "udp"
log = true
"#);
    let f = Frame::tcp("192.0.2.1", "198.51.100.2", 50000, 22, TCP_SYN).build();
    let ev = fw.check(&f, Drop("ssh")).expect("event");
    assert_eq!(
        (
            ev.family,
            ev.proto,
            ev.sport,
            ev.dport,
            ev.rule,
            ev.generation
        ),
        (FAMILY_V4, IPPROTO_TCP, 50000, 22, 0, 1)
    );
    assert_eq!(ev.src, v4_mapped([192, 0, 2, 1]));
    assert_eq!(ev.dst, v4_mapped([198, 51, 100, 2]));
    assert_eq!(ev.packet_len, 54);

    let f = Frame::tcp("2001:db8::1", "2001:db8::2", 1, 22, TCP_SYN)
        .with_vlans(&[7], false)
        .build();
    let ev = fw.check(&f, Drop("ssh")).expect("event");
    assert_eq!((ev.family, ev.sport, ev.packet_len), (FAMILY_V6, 1, 78));
    assert_eq!(ev.src, ip6("2001:db8::1"));

    // Rules without `log`, and allow rules with it, emit nothing (the harness checks).
    fw.check(&tcp("192.0.2.1", "198.51.100.2", 23), Drop("quiet"));
    fw.check(
        &udp("192.0.2.1", "198.51.100.2", 123),
        Allow("logged-allow"),
    );
}

fn ip6(s: &str) -> [u8; 16] {
    match ip(s) {
        std::net::IpAddr::V6(a) => a.octets(),
        std::net::IpAddr::V4(_) => panic!("{s} is not IPv6"),
    }
}

#[test]
fn log_default_covers_default_drops_malformed_and_fragments() {
    let mut fw = fw(r#"
[firewall]
default = "drop"
log_default = true
fragments = "drop"

[[firewall.rule]]
name = "web"
action = "allow"
proto = "tcp"
dport = 80
"#);
    let ev = fw
        .check(&udp("192.0.2.1", "192.0.2.2", 9), DefaultDrop)
        .expect("event");
    assert_eq!(
        (ev.rule, ev.proto, ev.dport),
        (DEFAULT_SLOT, IPPROTO_UDP, 9)
    );
    let bad = patch(tcp("192.0.2.1", "192.0.2.2", 80), ETH_HLEN, &[0x44]);
    let ev = fw.check(&bad, Malformed(MALFORMED_L3)).expect("event");
    assert_eq!((ev.rule, ev.family, ev.src), (NO_RULE, 0, [0; 16]));
    let later = with_frag4(Frame::udp("192.0.2.1", "192.0.2.2", 1, 2), 100, false).build();
    let ev = fw.check(&later, Fragment).expect("event");
    assert_eq!(
        (ev.rule, ev.family, ev.sport, ev.dport),
        (NO_RULE, FAMILY_V4, 0, 0)
    );
    fw.check(&tcp("192.0.2.1", "192.0.2.2", 80), Allow("web"));

    // Without log_default, none of them is reported.
    fw.install("[firewall]\ndefault = \"drop\"\nfragments = \"drop\"\n");
    fw.check(&udp("192.0.2.1", "192.0.2.2", 9), DefaultDrop);
    fw.check(&bad, Malformed(MALFORMED_L3));
    fw.check(&later, Fragment);
}

// ---------------------------------------------------------------------------------------
// Rate limits

#[test]
fn rate_limit_burst_then_drop() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "limit"
action = "rate-limit"
proto = "icmp"
rate = { pps = 1, burst = 5 }
log = true
"#);
    let f = icmp("192.0.2.1", "192.0.2.2", 8, 0);
    for _ in 0..5 {
        fw.check(&f, Allow("limit"));
    }
    for _ in 0..3 {
        let ev = fw.check(&f, Limited("limit")).expect("logged");
        assert_eq!(ev.reason, reason::RATE_LIMIT);
    }
    // Rule counters count every packet the rule matched, passed or not.
    assert_eq!(
        fw.hits_of("limit"),
        RuleStats {
            packets: 8,
            bytes: 8 * f.len() as u64
        }
    );
    // Other traffic is not affected.
    fw.check(&udp("192.0.2.1", "192.0.2.2", 123), DefaultPass);
}

#[test]
fn rate_limit_per_source_gives_each_source_a_bucket() {
    let mut fw = fw(r#"
[[firewall.rule]]
name = "limit"
action = "rate-limit"
proto = "udp"
rate = { pps = 1, burst = 5, per = "source" }
"#);
    let a = udp("192.0.2.1", "198.51.100.1", 123);
    let b = udp("192.0.2.2", "198.51.100.1", 123);
    let c = udp("2001:db8::1", "2001:db8::2", 123);
    for _ in 0..5 {
        fw.check(&a, Allow("limit"));
    }
    fw.check(&a, Limited("limit"));
    for _ in 0..5 {
        fw.check(&b, Allow("limit"));
    }
    fw.check(&b, Limited("limit"));
    fw.check(&a, Limited("limit"));
    for _ in 0..5 {
        fw.check(&c, Allow("limit"));
    }
    fw.check(&c, Limited("limit"));

    // A reload keeps the buckets: no refill, for a source or for the rule.
    fw.install(&format!("# again\n{}", fw_policy_text_limit("source")));
    fw.check(&a, Limited("limit"));
    fw.check(&b, Limited("limit"));
    // Another rule (here: counting per rule) has buckets of its own.
    fw.install(&fw_policy_text_limit("rule"));
    fw.check(&a, Allow("limit"));
}

#[test]
fn a_reload_neither_refills_the_buckets_nor_keeps_an_old_rate() {
    let text = |pps: u32, burst: u32| {
        format!(
            "[[firewall.rule]]\nname = \"limit\"\naction = \"rate-limit\"\nproto = \"udp\"\n\
             rate = {{ pps = {pps}, burst = {burst} }}\n"
        )
    };
    let mut fw = fw(&text(1, 5));
    let f = udp("192.0.2.1", "198.51.100.1", 123);
    for _ in 0..5 {
        fw.check(&f, Allow("limit"));
    }
    fw.check(&f, Limited("limit"));
    // The same rule, moved and renumbered by other rules, keeps its empty bucket.
    fw.install(&format!(
        "[[firewall.rule]]\naction = \"allow\"\nproto = \"tcp\"\ndport = 22\n{}",
        text(1, 5)
    ));
    fw.check(&f, Limited("limit"));
    // A faster rate: the packets the bucket owes (four or so, as the reload took under a
    // second or two) are owed at a millisecond each, so the next five at once are not all
    // admitted (a refill would admit them), and after a few milliseconds the bucket has
    // refilled at the new rate, with the new burst.
    fw.install(&text(1000, 5));
    let admitted = (0..5)
        .filter(|_| fw.bench.run(&f).unwrap() == XDP_PASS)
        .count();
    assert!(
        admitted < 5,
        "{admitted} of 5 admitted right after the reload"
    );
    std::thread::sleep(Duration::from_millis(20));
    // Full again: the five of the burst pass however slowly they are sent.
    let started = Instant::now();
    for _ in 0..5 {
        fw.check(&f, Allow("limit"));
    }
    // Then one packet a millisecond at most: sent back to back, some are limited, and no more
    // pass than the time they took allows (a loaded machine only makes that time longer).
    let (mut admitted, mut limited) = (0u128, 0u128);
    while limited == 0 && started.elapsed() < Duration::from_secs(2) {
        for _ in 0..50 {
            if fw.bench.run(&f).unwrap() == XDP_PASS {
                admitted += 1;
            } else {
                limited += 1;
            }
        }
    }
    let ms = started.elapsed().as_millis();
    assert!(
        limited > 0,
        "{admitted} admitted and none limited in {ms} ms"
    );
    assert!(
        admitted <= ms + 1,
        "{admitted} admitted after the burst in {ms} ms at 1000 packets/s"
    );
}

#[test]
fn per_source_buckets_are_kept_per_source_prefix() {
    let limit =
        |firewall: &str| format!("[firewall]\n{firewall}\n{}", fw_policy_text_limit("source"));
    // By default an IPv6 client's whole /64 shares one bucket; IPv4 sources keep one each.
    let mut fw = fw(&limit(""));
    let a = udp("2001:db8:1:2::1", "2001:db8::53", 123);
    let b = udp("2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8::53", 123);
    let other64 = udp("2001:db8:1:3::1", "2001:db8::53", 123);
    let v4a = udp("192.0.2.1", "198.51.100.1", 123);
    let v4b = udp("192.0.2.2", "198.51.100.1", 123);
    for _ in 0..5 {
        fw.check(&a, Allow("limit"));
    }
    fw.check(&b, Limited("limit"));
    fw.check(&other64, Allow("limit"));
    for _ in 0..5 {
        fw.check(&v4a, Allow("limit"));
    }
    fw.check(&v4a, Limited("limit"));
    fw.check(&v4b, Allow("limit"));

    // /128: every address has its own bucket; IPv4 /24: the two addresses share one.
    fw.install(&limit(
        "rate_prefix_v6 = 128
rate_prefix_v4 = 24",
    ));
    for _ in 0..5 {
        fw.check(&a, Allow("limit"));
    }
    fw.check(&a, Limited("limit"));
    fw.check(&b, Allow("limit"));
    for _ in 0..5 {
        fw.check(&v4a, Allow("limit"));
    }
    fw.check(&v4b, Limited("limit"));
    fw.check(&udp("192.0.3.2", "198.51.100.1", 123), Allow("limit"));

    // A prefix that does not end on a byte boundary: 2001:db8:1::/60 holds :2:: and :f::.
    fw.install(&limit("rate_prefix_v6 = 60"));
    for _ in 0..5 {
        fw.check(&a, Allow("limit"));
    }
    fw.check(
        &udp("2001:db8:1:f::9", "2001:db8::53", 123),
        Limited("limit"),
    );
    fw.check(
        &udp("2001:db8:1:10::9", "2001:db8::53", 123),
        Allow("limit"),
    );

    // A per-rule bucket ignores the prefixes.
    fw.install(&format!(
        "[firewall]\nrate_prefix_v6 = 1\n{}",
        fw_policy_text_limit("rule")
    ));
    for _ in 0..5 {
        fw.check(&v4a, Allow("limit"));
    }
    fw.check(&other64, Limited("limit"));
}

/// Removes a pin when dropped.
struct PinFile(PathBuf);

impl std::ops::Drop for PinFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn reload_finishes_while_a_flood_churns_the_rate_buckets() {
    let policy = |n: u32| format!("# policy {n}\n{}", fw_policy_text_limit("source"));
    let mut fw = fw(&policy(0));
    let mut quiet = Duration::ZERO;
    for n in 1..=3 {
        let t = Instant::now();
        fw.install(&policy(n));
        quiet = quiet.max(t.elapsed());
    }
    // A second handle on the firewall program, for a thread that floods it from new sources
    // while this one reloads.
    let flood = {
        let pin = PinFile(PathBuf::from(format!(
            "/sys/fs/bpf/palisade-test-flood-{}",
            std::process::id()
        )));
        let prog: &mut Xdp = fw
            .bench
            .ebpf
            .program_mut(FIREWALL)
            .expect("the firewall program")
            .try_into()
            .expect("an XDP program");
        prog.pin(&pin.0).expect("pinning the firewall");
        Xdp::from_pin(&pin.0, XdpAttachType::Interface).expect("opening the pinned firewall")
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        std::thread::spawn(move || {
            let mut out = vec![0u8; 512];
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // A new /64 for every packet, as spoofed sources: each one makes a bucket,
                // and the LRU (65 536 buckets) evicts old ones all the time.
                let src = format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff);
                let frame = udp(&src, "2001:db8::53", 123);
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(&frame);
                opts.data_out = Some(&mut out);
                flood.test_run(opts).expect("a flood run");
                i = i.wrapping_add(1);
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Fill the LRU once before reloading.
    let start = Instant::now();
    while sent.load(Ordering::Relaxed) < 70_000 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the flood thread is stuck"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = sent.load(Ordering::Relaxed);
    let mut slowest = Duration::ZERO;
    let mut total = Duration::ZERO;
    for n in 1..=20 {
        let t = Instant::now();
        fw.install(&policy(n));
        slowest = slowest.max(t.elapsed());
        total += t.elapsed();
    }
    let during = sent.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    flooder.join().expect("the flood thread");
    eprintln!(
        "20 reloads under a flood of {during} packets from new sources: slowest {slowest:?}, \
         total {total:?} (slowest without the flood: {quiet:?})"
    );
    assert!(
        during >= 1_000,
        "the flood ran during the reloads ({during} packets)"
    );
    // Reloads never walk the buckets, so the flood only competes for the CPU. The bound is
    // loose for a loaded 2-CPU machine; a walk of the churning LRU could take forever.
    assert!(
        slowest < Duration::from_secs(5),
        "a reload under the flood took {slowest:?} (without it: {quiet:?})"
    );
    // The last policy starts with full buckets, and they work.
    let a = udp("2001:db8:ffff:1::1", "2001:db8::53", 123);
    for _ in 0..5 {
        fw.check(&a, Allow("limit"));
    }
    fw.check(&a, Limited("limit"));
}

fn fw_policy_text_limit(per: &str) -> String {
    format!(
        "[[firewall.rule]]\nname = \"limit\"\naction = \"rate-limit\"\nproto = \"udp\"\n\
         rate = {{ pps = 1, burst = 5, per = \"{per}\" }}\n"
    )
}

#[test]
fn rate_limit_per_rule_shares_one_bucket() {
    let mut fw = fw(&fw_policy_text_limit("rule"));
    let a = udp("192.0.2.1", "198.51.100.1", 123);
    let b = udp("192.0.2.2", "198.51.100.1", 123);
    for f in [&a, &b, &a, &b, &a] {
        fw.check(f, Allow("limit"));
    }
    fw.check(&b, Limited("limit"));
    fw.check(&a, Limited("limit"));
    fw.check(&udp("2001:db8::1", "2001:db8::2", 123), Limited("limit"));
}

// ---------------------------------------------------------------------------------------
// Layer 2

/// Frames whose verdict under [`PORTS`] does not depend on how they are tagged.
fn tagged_cases(vlans: &[u16], qinq: bool) -> Vec<(Vec<u8>, Want)> {
    let tag = |f: Frame| f.with_vlans(vlans, qinq).build();
    vec![
        (
            tag(Frame::tcp("10.0.0.1", "10.0.0.2", 1, 22, TCP_SYN)),
            Drop("ssh"),
        ),
        (
            tag(Frame::tcp("10.0.0.1", "10.0.0.2", 1, 80, TCP_SYN)),
            DefaultPass,
        ),
        (
            tag(Frame::tcp("2001:db8::1", "2001:db8::2", 1, 22, TCP_SYN)),
            Drop("ssh"),
        ),
        (
            tag(Frame::udp("10.0.0.1", "10.0.0.2", 1, 123)),
            Allow("ntp"),
        ),
        (
            tag(Frame::udp("2001:db8::1", "2001:db8::2", 1, 123)),
            Allow("ntp"),
        ),
        (tag(Frame::icmp("10.0.0.1", "10.0.0.2", 8, 0)), Drop("echo")),
        (
            tag(Frame::icmp("2001:db8::1", "2001:db8::2", 128, 0)),
            Drop("echo6"),
        ),
        (
            tag(with_ext(
                Frame::tcp("2001:db8::1", "2001:db8::2", 1, 22, TCP_SYN),
                &[hbh(0), frag6(0, true)],
            )),
            Drop("ssh"),
        ),
    ]
}

#[test]
fn zero_one_and_two_vlan_tags_classify_alike() {
    let mut fw = fw(PORTS);
    fw.checks(&tagged_cases(&[], false));
    fw.checks(&tagged_cases(&[100], false));
    fw.checks(&tagged_cases(&[100, 200], false));
    fw.checks(&tagged_cases(&[100, 200], true));
    fw.checks(&tagged_cases(&[4095, 0], true));
    assert_eq!(fw.hits_of("ssh").packets, 5 * 3);
}

#[test]
fn three_vlan_tags_are_malformed_l2() {
    let mut fw = fw(PORTS);
    for qinq in [false, true] {
        for (frame, _) in tagged_cases(&[100, 200, 300], qinq) {
            fw.check(&frame, Malformed(MALFORMED_L2));
        }
        fw.check(&arp(&[1, 2, 3], qinq), Malformed(MALFORMED_L2));
    }
}

#[test]
fn non_ip_frames_pass_as_not_ip() {
    let mut fw = fw("[firewall]\ndefault = \"drop\"\n");
    fw.checks(&[
        (arp(&[], false), NotIp),
        (arp(&[10], false), NotIp),
        (arp(&[10, 20], false), NotIp),
        (arp(&[10, 20], true), NotIp),
        // Only the Ethernet header is needed: a bare 14-byte ARP header still passes.
        (arp(&[], false)[..ETH_HLEN].to_vec(), NotIp),
    ]);
    assert_eq!(fw.bench.stat(stats::NOT_IP).unwrap(), 5);
    assert_eq!(fw.hits(DEFAULT_SLOT).packets, 0);
}

// ---------------------------------------------------------------------------------------
// IPv4 header

#[test]
fn ipv4_options_still_match_port_rules() {
    let mut fw = fw(PORTS);
    for ihl in 5..=15usize {
        let with_options = |mut f: Frame| {
            f.ipv4_options = vec![1; (ihl - 5) * 4];
            f.build()
        };
        let ssh = with_options(Frame::tcp("10.0.0.1", "10.0.0.2", 1, 22, TCP_SYN));
        assert_eq!(ssh[ETH_HLEN], 0x40 | ihl as u8);
        fw.checks(&[
            (ssh, Drop("ssh")),
            (
                with_options(Frame::tcp("10.0.0.1", "10.0.0.2", 1, 80, TCP_SYN)),
                DefaultPass,
            ),
            (
                with_options(Frame::udp("10.0.0.1", "10.0.0.2", 1, 123)),
                Allow("ntp"),
            ),
            (
                with_options(Frame::icmp("10.0.0.1", "10.0.0.2", 8, 0)),
                Drop("echo"),
            ),
        ]);
    }
}

#[test]
fn ipv4_ihl_below_five_is_malformed_l3() {
    let mut fw = fw(PORTS);
    for ihl in 0..5u8 {
        let f = patch(tcp("10.0.0.1", "10.0.0.2", 22), ETH_HLEN, &[0x40 | ihl]);
        fw.check(&f, Malformed(MALFORMED_L3));
    }
    // Wrong version nibble, and a total length below the header length.
    fw.check(
        &patch(tcp("10.0.0.1", "10.0.0.2", 22), ETH_HLEN, &[0x65]),
        Malformed(MALFORMED_L3),
    );
    fw.check(
        &patch(tcp("10.0.0.1", "10.0.0.2", 22), ETH_HLEN + 2, &[0, 19]),
        Malformed(MALFORMED_L3),
    );
}

#[test]
fn ipv4_total_length_beyond_the_frame_is_classified() {
    // The parser only requires the IP header and the layer-4 bytes it reads to be in the
    // frame; it believes the total length. A frame whose header claims more than it carries
    // is classified like the complete packet (here: dropped by the port rule; with a port the
    // policy allows, it passes).
    let mut fw = fw(PORTS);
    let claim_1500 = |f: Vec<u8>| patch(f, ETH_HLEN + 2, &1500u16.to_be_bytes());
    fw.checks(&[
        (claim_1500(tcp("10.0.0.1", "10.0.0.2", 22)), Drop("ssh")),
        (claim_1500(tcp("10.0.0.1", "10.0.0.2", 80)), DefaultPass),
        (claim_1500(udp("10.0.0.1", "10.0.0.2", 123)), Allow("ntp")),
    ]);
    // A payload cut short: same.
    let full = Frame::tcp("10.0.0.1", "10.0.0.2", 1, 22, TCP_SYN)
        .with_payload(&[7; 100])
        .build();
    fw.check(&full[..ETH_HLEN + 40 + 10], Drop("ssh"));
    // IPv6: a payload length beyond the frame is believed as well.
    let f6 = patch(
        tcp("2001:db8::1", "2001:db8::2", 22),
        ETH_HLEN + 4,
        &[0x23, 0x28],
    );
    fw.check(&f6, Drop("ssh"));
}

#[test]
fn ip_length_too_short_for_layer4_is_malformed_l4() {
    let mut fw = fw(PORTS);
    // IPv4 total length of header + 19 bytes: no room for a TCP header.
    fw.check(
        &patch(tcp("10.0.0.1", "10.0.0.2", 22), ETH_HLEN + 2, &[0, 39]),
        Malformed(MALFORMED_L4),
    );
    fw.check(
        &patch(udp("10.0.0.1", "10.0.0.2", 123), ETH_HLEN + 2, &[0, 27]),
        Malformed(MALFORMED_L4),
    );
    fw.check(
        &patch(icmp("10.0.0.1", "10.0.0.2", 8, 0), ETH_HLEN + 2, &[0, 23]),
        Malformed(MALFORMED_L4),
    );
    // IPv6 payload length of 7 for UDP.
    fw.check(
        &patch(
            udp("2001:db8::1", "2001:db8::2", 123),
            ETH_HLEN + 4,
            &[0, 7],
        ),
        Malformed(MALFORMED_L4),
    );
    // TCP data offset below 5.
    fw.check(
        &patch(tcp("10.0.0.1", "10.0.0.2", 22), ETH_HLEN + 20 + 12, &[0x40]),
        Malformed(MALFORMED_L4),
    );
}

#[test]
fn ethernet_padding_is_legal() {
    let mut fw = fw(PORTS);
    for (mut frame, want) in [
        (tcp("10.0.0.1", "10.0.0.2", 22), Drop("ssh")),
        (udp("2001:db8::1", "2001:db8::2", 123), Allow("ntp")),
        (icmp("10.0.0.1", "10.0.0.2", 8, 0), Drop("echo")),
        (icmp("10.0.0.1", "10.0.0.2", 0, 0), DefaultPass),
    ] {
        // To the 60-byte Ethernet minimum, then well beyond it.
        let min = frame.len().max(60);
        frame.resize(min, 0);
        fw.check(&frame, want);
        frame.extend_from_slice(&[0xa5; 33]);
        fw.check(&frame, want);
    }
}

// ---------------------------------------------------------------------------------------
// IPv6 extension headers

#[test]
fn ipv6_extension_header_chains_still_match_port_rules() {
    let mut fw = fw(PORTS);
    let chains: Vec<Vec<ExtHeader>> = vec![
        vec![hbh(0)],
        vec![routing(2)],
        vec![dstopts(1)],
        vec![frag6(0, true)],
        vec![hbh(0), routing(1), frag6(0, true), dstopts(0)],
        vec![
            hbh(1),
            dstopts(0),
            routing(0),
            frag6(0, false),
            dstopts(3),
            dstopts(0),
        ],
    ];
    assert_eq!(chains[5].len(), MAX_IPV6_EXT_HEADERS);
    for chain in &chains {
        let six = |f: Frame| with_ext(f, chain).build();
        fw.checks(&[
            (
                six(Frame::tcp("2001:db8::1", "2001:db8::2", 1, 22, TCP_SYN)),
                Drop("ssh"),
            ),
            (
                six(Frame::tcp("2001:db8::1", "2001:db8::2", 1, 80, TCP_SYN)),
                DefaultPass,
            ),
            (
                six(Frame::udp("2001:db8::1", "2001:db8::2", 1, 123)),
                Allow("ntp"),
            ),
            (
                six(Frame::icmp("2001:db8::1", "2001:db8::2", 128, 0)),
                Drop("echo6"),
            ),
        ]);
    }
}

#[test]
fn ipv6_authentication_header_is_walked() {
    // Built as a 16-byte options-shaped header, then relabelled: AH counts its length in
    // 4-byte units minus 2, so a length byte of 2 covers the same 16 bytes.
    let mut fw = fw(PORTS);
    let mut f = with_ext(
        Frame::tcp("2001:db8::1", "2001:db8::2", 1, 22, TCP_SYN),
        &[ExtHeader::Options { kind: 51, len8: 1 }],
    )
    .build();
    f[ETH_HLEN + 40 + 1] = 2;
    fw.check(&f, Drop("ssh"));
    // A length byte of 3 claims 20 bytes, leaving only 16 for the TCP header.
    f[ETH_HLEN + 40 + 1] = 3;
    fw.check(&f, Malformed(MALFORMED_L4));
}

#[test]
fn ipv4_authentication_header_is_a_protocol() {
    // IPv4 carries AH as its protocol; a rule limited to IPv4 matches it. The checker refuses
    // `proto = 51` on a rule that could match IPv6, where AH is an extension header.
    let mut fw = fw(r#"
[[firewall.rule]]
name = "ah"
action = "drop"
proto = 51
src = "0.0.0.0/0"

[[firewall.rule]]
name = "ssh"
action = "drop"
proto = "tcp"
dport = 22
"#);
    fw.checks(&[
        (raw("198.51.100.1", "192.0.2.51", 51), Drop("ah")),
        (raw("198.51.100.1", "192.0.2.51", 50), DefaultPass),
    ]);
    // In IPv6 the header is walked: the packet is matched by what it carries.
    let mut f = with_ext(
        Frame::tcp("2001:db8::1", "2001:db8::2", 1, 22, TCP_SYN),
        &[ExtHeader::Options { kind: 51, len8: 1 }],
    )
    .build();
    f[ETH_HLEN + 40 + 1] = 2;
    fw.check(&f, Drop("ssh"));
    assert!(
        config::parse_policy(
            "[[firewall.rule]]\naction = \"drop\"\nproto = 51\n",
            "test.toml",
            Path::new(".")
        )
        .is_err()
    );
}

#[test]
fn ipv6_chain_longer_than_the_bound_is_ext_chain() {
    let mut fw = fw(PORTS);
    let seven = [
        hbh(0),
        dstopts(0),
        routing(0),
        dstopts(0),
        dstopts(0),
        dstopts(0),
        dstopts(0),
    ];
    assert_eq!(seven.len(), MAX_IPV6_EXT_HEADERS + 1);
    fw.checks(&[
        (
            with_ext(
                Frame::tcp("2001:db8::1", "2001:db8::2", 1, 80, TCP_SYN),
                &seven,
            )
            .build(),
            Malformed(IPV6_EXT_CHAIN),
        ),
        (
            with_ext(
                Frame::udp("2001:db8::1", "2001:db8::2", 1, 123),
                &vec![dstopts(0); 10],
            )
            .build(),
            Malformed(IPV6_EXT_CHAIN),
        ),
    ]);
    // Layer 4 beyond MAX_L4_OFFSET: two 2 KiB headers put it at 14 + 40 + 4096. Such a frame
    // is larger than BPF_PROG_TEST_RUN takes without fragments, but the bound is hit after
    // reading the first two bytes of the second header, so the frame is cut after those.
    let big = with_ext(
        Frame::udp("2001:db8::1", "2001:db8::2", 1, 123),
        &[dstopts(255), dstopts(255)],
    )
    .build();
    fw.check(&big[..ETH_HLEN + 40 + 2048 + 64], Malformed(IPV6_EXT_CHAIN));
    let one = with_ext(
        Frame::udp("2001:db8::1", "2001:db8::2", 1, 123),
        &[dstopts(255)],
    )
    .build();
    fw.check(&one, Allow("ntp"));
}

#[test]
fn ipv6_extension_header_cut_inside_its_body_is_ext_chain() {
    // A hop-by-hop header that claims 16 bytes, followed by "no next header" (59), with only
    // 8 of its bytes in the frame. The chain is truncated, so this must not pass.
    let mut fw = fw("[firewall]\ndefault = \"allow\"\n");
    let f = with_ext(
        Frame::new(ip("2001:db8::1"), ip("2001:db8::2"), L4::Raw { proto: 59 }),
        &[hbh(1)],
    )
    .build();
    assert_eq!(f.len(), ETH_HLEN + 40 + 16);
    fw.check(&f, DefaultPass);
    fw.check(&f[..ETH_HLEN + 40 + 8], Malformed(IPV6_EXT_CHAIN));
}

// ---------------------------------------------------------------------------------------
// Fragments

const FRAGMENT_RULES: &str = r#"
[[firewall.rule]]
name = "ssh"
action = "drop"
proto = "tcp"
dport = 22

[[firewall.rule]]
name = "echo"
action = "drop"
proto = "icmp"
icmp_type = 8

[[firewall.rule]]
name = "syn"
action = "drop"
proto = "tcp"
tcp_flags = "syn/syn,ack"
dst = "192.0.2.99"

[[firewall.rule]]
name = "bad-src"
action = "drop"
src = ["203.0.113.0/24", "2001:db8:bad::/48"]

[[firewall.rule]]
name = "udp"
action = "drop"
proto = "udp"
dst = ["192.0.2.17", "2001:db8::17"]
"#;

fn fragment_policy(fragments: &str) -> String {
    format!("[firewall]\ndefault = \"allow\"\nfragments = \"{fragments}\"\n{FRAGMENT_RULES}")
}

#[test]
fn first_fragments_match_port_rules() {
    for policy in ["drop", "match-l3"] {
        let mut fw = fw(&fragment_policy(policy));
        fw.checks(&[
            (
                with_frag4(Frame::tcp("10.0.0.1", "10.0.0.2", 1, 22, TCP_SYN), 0, true).build(),
                Drop("ssh"),
            ),
            (
                with_frag4(Frame::tcp("10.0.0.1", "10.0.0.2", 1, 80, TCP_SYN), 0, true).build(),
                DefaultPass,
            ),
            (
                with_frag4(Frame::icmp("10.0.0.1", "10.0.0.2", 8, 0), 0, true).build(),
                Drop("echo"),
            ),
            (
                with_ext(
                    Frame::tcp("2001:db8::1", "2001:db8::2", 1, 22, TCP_SYN),
                    &[frag6(0, true)],
                )
                .build(),
                Drop("ssh"),
            ),
            (
                with_ext(
                    Frame::tcp("2001:db8::1", "2001:db8::2", 1, 80, TCP_SYN),
                    &[hbh(0), frag6(0, true)],
                )
                .build(),
                DefaultPass,
            ),
        ]);
        assert_eq!(fw.bench.stat(stats::FRAGMENTS).unwrap(), 0, "{policy}");
    }
}

/// Non-first fragments; their bytes after the IP header still look like TCP to port 22 with
/// SYN, ICMP echo or UDP, which must not be read.
fn later_fragments() -> Vec<(&'static str, Vec<u8>)> {
    let v4 = |f: Frame, off| with_frag4(f, off, true).build();
    let v6 = |f: Frame, ext: &[ExtHeader]| with_ext(f, ext).build();
    vec![
        (
            "v4-ssh",
            v4(Frame::tcp("10.0.0.1", "10.0.0.2", 1, 22, TCP_SYN), 1),
        ),
        (
            "v4-syn",
            v4(Frame::tcp("10.0.0.1", "192.0.2.99", 1, 80, TCP_SYN), 185),
        ),
        (
            "v4-echo",
            v4(Frame::icmp("10.0.0.1", "10.0.0.2", 8, 0), 8191),
        ),
        (
            "v4-bad-src",
            v4(Frame::tcp("203.0.113.5", "10.0.0.2", 1, 80, TCP_ACK), 2),
        ),
        (
            "v4-udp",
            v4(Frame::udp("10.0.0.1", "192.0.2.17", 1, 123), 3),
        ),
        (
            "v6-ssh",
            v6(
                Frame::tcp("2001:db8::1", "2001:db8::2", 1, 22, TCP_SYN),
                &[frag6(1, true)],
            ),
        ),
        (
            "v6-bad-src",
            v6(
                Frame::tcp("2001:db8:bad::5", "2001:db8::2", 1, 22, TCP_SYN),
                &[hbh(0), frag6(100, false)],
            ),
        ),
        (
            "v6-udp",
            v6(
                Frame::udp("2001:db8::1", "2001:db8::17", 1, 123),
                &[frag6(8191, true)],
            ),
        ),
    ]
}

#[test]
fn later_fragments_dropped_under_fragments_drop() {
    let mut fw = fw(&fragment_policy("drop"));
    for (_, frame) in later_fragments() {
        fw.check(&frame, Fragment);
    }
    // Even an allow-everything rule does not rescue them.
    fw.install(
        "[firewall]\nfragments = \"drop\"\n[[firewall.rule]]\nname = \"all\"\naction = \"allow\"\n",
    );
    for (_, frame) in later_fragments() {
        fw.check(&frame, Fragment);
    }
    assert_eq!(fw.hits_of("all").packets, 0);
    assert_eq!(fw.bench.stat(stats::FRAGMENTS).unwrap(), 16);
}

#[test]
fn later_fragments_match_only_layer3_rules_under_match_l3() {
    let mut fw = fw(&fragment_policy("match-l3"));
    for (name, frame) in later_fragments() {
        let want = match name {
            // Port, flag and ICMP-type rules cannot see a later fragment.
            "v4-ssh" | "v4-syn" | "v4-echo" | "v6-ssh" => DefaultPass,
            // Address and protocol rules can.
            "v4-bad-src" | "v6-bad-src" => Drop("bad-src"),
            "v4-udp" | "v6-udp" => Drop("udp"),
            _ => unreachable!(),
        };
        fw.check_later(&frame, want);
    }
    // Under a default drop, an address-only allow rule lets them through.
    fw.install(
        "[firewall]\ndefault = \"drop\"\n\
         [[firewall.rule]]\nname = \"ssh\"\naction = \"allow\"\nproto = \"tcp\"\ndport = 22\n\
         [[firewall.rule]]\nname = \"lan\"\naction = \"allow\"\nsrc = \"10.0.0.0/8\"\n",
    );
    let frames = later_fragments();
    fw.check_later(&frames[0].1, Allow("lan"));
    fw.check_later(&frames[3].1, DefaultDrop);
    fw.check_later(&frames[5].1, DefaultDrop);
}

// ---------------------------------------------------------------------------------------
// Truncation: every cut of a valid frame

/// Runs every prefix of `frame` (and the frame itself): prefixes shorter than Ethernet are
/// refused by the kernel, the others must give `expect(n)` (a drop reason), or `whole` when
/// `expect` returns `None`.
fn every_cut(fw: &mut Fw, frame: &[u8], whole: Want, expect: impl Fn(usize) -> Option<u32>) {
    for n in 0..frame.len() {
        let cut = &frame[..n];
        if n < ETH_HLEN {
            fw.check_refused(cut);
        } else {
            fw.check(cut, expect(n).map_or(whole, Malformed));
        }
    }
    fw.check(frame, whole);
}

/// Logs everything, so every cut also checks its event.
const LOG_ALL: &str = r#"
[firewall]
default = "drop"
log_default = true

[[firewall.rule]]
name = "ssh"
action = "drop"
proto = "tcp"
dport = 22
log = true

[[firewall.rule]]
name = "ntp"
action = "allow"
proto = "udp"
dport = 123

[[firewall.rule]]
name = "echo"
action = "drop"
proto = "icmp"
icmp_type = 8
log = true
"#;

#[test]
fn every_cut_of_tcp_ipv4() {
    let mut fw = fw(LOG_ALL);
    let f = Frame::tcp("10.0.0.1", "10.0.0.2", 1, 22, TCP_SYN)
        .with_payload(b"0123456789")
        .build();
    assert_eq!(f.len(), 64);
    every_cut(&mut fw, &f, Drop("ssh"), |n| match n {
        14..34 => Some(MALFORMED_L3),
        34..54 => Some(MALFORMED_L4),
        // Payload bytes are not read; a cut payload is classified (see
        // ipv4_total_length_beyond_the_frame_is_classified).
        _ => None,
    });
    assert_eq!(fw.hits_of("ssh").packets, 11);
}

#[test]
fn every_cut_of_udp_ipv6() {
    let mut fw = fw(LOG_ALL);
    let f = Frame::udp("2001:db8::1", "2001:db8::2", 1, 123)
        .with_payload(b"abcd")
        .build();
    assert_eq!(f.len(), 66);
    every_cut(&mut fw, &f, Allow("ntp"), |n| match n {
        14..54 => Some(MALFORMED_L3),
        54..62 => Some(MALFORMED_L4),
        _ => None,
    });
}

#[test]
fn every_cut_of_icmp_ipv4() {
    let mut fw = fw(LOG_ALL);
    let f = icmp("10.0.0.1", "10.0.0.2", 8, 0);
    assert_eq!(f.len(), 42);
    every_cut(&mut fw, &f, Drop("echo"), |n| match n {
        14..34 => Some(MALFORMED_L3),
        34..38 => Some(MALFORMED_L4),
        // Only type, code and checksum are required of the ICMP header.
        _ => None,
    });
}

#[test]
fn every_cut_of_qinq_tcp_ipv6_with_extension_headers() {
    let mut fw = fw(LOG_ALL);
    let f = with_ext(
        Frame::tcp("2001:db8::1", "2001:db8::2", 1, 22, TCP_SYN),
        &[hbh(0), routing(1), frag6(0, true), dstopts(0)],
    )
    .with_vlans(&[100, 200], true)
    .build();
    assert_eq!(f.len(), 122);
    every_cut(&mut fw, &f, Drop("ssh"), |n| match n {
        // The two tags, 14..22.
        14..22 => Some(MALFORMED_L2),
        // IPv6, 22..62.
        22..62 => Some(MALFORMED_L3),
        // Hop-by-hop 62..70, routing 70..86, fragment 86..94, destination options 94..102.
        62..102 => Some(IPV6_EXT_CHAIN),
        // TCP, 102..122.
        _ => Some(MALFORMED_L4),
    });
    // Padding after the complete frame is legal.
    let mut padded = f.clone();
    padded.extend_from_slice(&[0; 10]);
    fw.check(&padded, Drop("ssh"));
    assert_eq!(fw.hits_of("ssh").packets, 2);
}

/// Pins the calling thread to `cpu` (test runs execute on the caller's CPU).
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set outlives the call; 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "pinning to CPU {cpu}");
}

#[test]
fn rule_counters_live_in_tables_sized_by_the_rules_and_sum_every_cpu() {
    use palisade::capacity::{Kind, room_of, table};
    // 3,000 rules: the generation's rule tables are sized for them (a quarter more, rounded
    // up to 4,096), past the least room of 1,024 a small policy gets.
    let mut toml = String::from("[firewall]\ndefault = \"allow\"\n");
    for i in 0..3000 {
        toml.push_str(&format!(
            "[[firewall.rule]]\nname = \"r{i}\"\naction = \"{}\"\nproto = \"udp\"\ndport = {}\n",
            if i % 2 == 0 { "allow" } else { "drop" },
            10_000 + i
        ));
    }
    let mut fw = fw(&toml);
    let generation = fw.generation();
    let room = |fw: &Fw, kind: Kind| {
        let t = table(&fw.bench.ebpf, kind, fw.generation())
            .expect("reading the slot")
            .expect("a table in the live slot");
        room_of(&t, kind).expect("its capacity")
    };
    assert_eq!(room(&fw, Kind::RuleMeta), 4096);
    assert_eq!(room(&fw, Kind::RuleStats), 4096);
    let cpus = palisade::capacity::possible_cpus();
    let stats = table(&fw.bench.ebpf, Kind::RuleStats, generation)
        .unwrap()
        .unwrap();
    let (_, _, _, _, slots, _) =
        palisade::pin::map_info(std::os::fd::AsFd::as_fd(stats.fd())).unwrap();
    assert_eq!(slots, 4096 * cpus, "a run of 4,096 slots per CPU");

    // The last rule (a drop) and the first (an allow), hit on each CPU this machine has
    // online, a different number of times on each: the counters sum every CPU's run.
    let last = Frame::udp("192.0.2.1", "192.0.2.2", 5, 12_999).build();
    let first = Frame::udp("192.0.2.1", "192.0.2.2", 5, 10_000).build();
    let miss = Frame::udp("192.0.2.1", "192.0.2.2", 5, 9_999).build();
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sent = 0u64;
    for cpu in 0..online {
        pin_to(cpu);
        for _ in 0..=cpu {
            assert_eq!(fw.bench.run(&last).unwrap(), XDP_DROP);
            assert_eq!(fw.bench.run(&first).unwrap(), XDP_PASS);
            assert_eq!(fw.bench.run(&miss).unwrap(), XDP_PASS);
            sent += 1;
        }
    }
    let want = |n: u64, len: usize| RuleStats {
        packets: n,
        bytes: n * len as u64,
    };
    assert_eq!(fw.hits(2999), want(sent, last.len()));
    assert_eq!(fw.hits(0), want(sent, first.len()));
    assert_eq!(fw.hits(1), want(0, 0));
    assert_eq!(fw.hits(DEFAULT_SLOT), want(sent, miss.len()));
    let _ = fw.bench.drain_events();

    // A small policy: its generation's tables get the least room, its counters start at
    // zero, and the big policy's generation keeps its tables until it is written again.
    fw.install(
        "[[firewall.rule]]\nname = \"one\"\naction = \"drop\"\nproto = \"udp\"\ndport = 12999\n",
    );
    assert_eq!(room(&fw, Kind::RuleMeta), 1024);
    assert_eq!(room(&fw, Kind::RuleStats), 1024);
    assert_eq!(fw.hits(0), want(0, 0));
    assert_eq!(fw.hits(DEFAULT_SLOT), want(0, 0));
    assert_eq!(fw.bench.run(&last).unwrap(), XDP_DROP);
    assert_eq!(fw.bench.run(&miss).unwrap(), XDP_PASS);
    assert_eq!(fw.hits(0), want(1, last.len()));
    assert_eq!(fw.hits(DEFAULT_SLOT), want(1, miss.len()));
    assert_eq!(fw.generation(), generation ^ 1);
    let big = table(&fw.bench.ebpf, Kind::RuleStats, generation)
        .unwrap()
        .unwrap();
    assert_eq!(room_of(&big, Kind::RuleStats).unwrap(), 4096);
}

#[test]
fn port_words_skip_tuples_without_a_rule_for_the_port_and_keep_those_past_them() {
    // 60 shapes (one IPv6 source prefix length each, /32 to /91), rule `i` in tuple `i`
    // (tuples go by their first rule): 40 with a destination port, then 20 with a source
    // port. The port words know the first 48 tuples; the last 12 are searched for every
    // packet, so the rules there must match as the first ones do.
    let mut toml = String::from("[firewall]\ndefault = \"allow\"\n");
    for i in 0..60u16 {
        let side = if i < 40 { "dport" } else { "sport" };
        toml.push_str(&format!(
            "[[firewall.rule]]\nname = \"r{i}\"\naction = \"drop\"\nproto = \"tcp\"\n\
             src = [\"2001:db8::/{}\"]\n{side} = {}\n",
            32 + i,
            1000 + i
        ));
    }
    // And one with no port past them all: the words let it through for any port.
    toml.push_str(
        "[[firewall.rule]]\nname = \"tail\"\naction = \"drop\"\nproto = \"udp\"\n\
         src = [\"2001:db8::/92\"]\n",
    );
    let mut fw = fw(&toml);
    let src = "2001:db8::5";
    let dst = "2001:db8:1::1";
    for i in [0u16, 1, 39] {
        let f = tcp_ports(src, dst, SPORT, 1000 + i);
        assert_eq!(fw.bench.run(&f).unwrap(), XDP_DROP, "dport {}", 1000 + i);
        assert_eq!(fw.hits(fw.rule(&format!("r{i}"))).packets, 1, "r{i}");
    }
    // Source ports: tuples 40 to 47 (known to the words) and 48 to 59 (past them).
    for i in [40u16, 47, 48, 59] {
        let f = tcp_ports(src, dst, 1000 + i, 80);
        assert_eq!(fw.bench.run(&f).unwrap(), XDP_DROP, "sport {}", 1000 + i);
        assert_eq!(fw.hits(fw.rule(&format!("r{i}"))).packets, 1, "r{i}");
    }
    // A port no rule names: every tuple with ports is skipped, the packet takes the default.
    let miss = tcp_ports(src, dst, 999, 999);
    assert_eq!(fw.bench.run(&miss).unwrap(), XDP_PASS);
    assert_eq!(fw.hits(DEFAULT_SLOT).packets, 1);
    // A destination port of a rule from a source the rule's prefix does not cover.
    let other = tcp_ports("2001:db9::5", dst, SPORT, 1000);
    assert_eq!(fw.bench.run(&other).unwrap(), XDP_PASS);
    assert_eq!(fw.hits(DEFAULT_SLOT).packets, 2);
    let tail = Frame::udp(src, dst, 999, 999).build();
    assert_eq!(fw.bench.run(&tail).unwrap(), XDP_DROP);
    assert_eq!(fw.hits(fw.rule("tail")).packets, 1);
    let _ = fw.bench.drain_events();
}

#[test]
fn key_filters_sized_for_a_small_policy_hide_no_rule_of_a_larger_one() {
    use palisade_common::firewall::{KEY_FILTER_MIN_WORDS, key_filter_entries};
    // The smallest filters (256 words each), as a daemon started with a small policy has
    // them; before any install their masks are zero and let every key through.
    let small = key_filter_entries(KEY_FILTER_MIN_WORDS);
    let bench = Bench::sized(&[("FW_RULE_FILTER", small), ("FW_SET_FILTER", small)])
        .expect("loading and verifying the kernel programs (needs root)");
    let masks = |b: &Bench, name: &str| -> Vec<u64> {
        let a: aya::maps::Array<_, u64> =
            aya::maps::Array::try_from(b.ebpf.map(name).expect("the filter map")).unwrap();
        (0..2).map(|g| a.get(&g, 0).unwrap()).collect()
    };
    assert_eq!(masks(&bench, "FW_RULE_FILTER"), [0, 0]);
    let mut fw = Fw {
        bench,
        policy: config::default_policy(),
    };
    // 4,000 rules of one shape (one source address each) and a set of 4,000 /24s: over ten
    // keys a word, where the filters let most absent keys through too.
    let mut toml = String::from("[firewall]\ndefault = \"allow\"\n[sets.nets]\nentries = [");
    for i in 0..4000u32 {
        toml.push_str(&format!("\"10.{}.{}.0/24\",", i >> 8, i & 255));
    }
    toml.push_str("]\n");
    for i in 0..4000u32 {
        toml.push_str(&format!(
            "[[firewall.rule]]\nname = \"r{i}\"\naction = \"drop\"\nproto = \"udp\"\n\
             src = [\"192.0.{}.{}/32\"]\n",
            (i >> 8) + 100,
            i & 255
        ));
    }
    toml.push_str(
        "[[firewall.rule]]\nname = \"nets\"\naction = \"drop\"\nproto = \"tcp\"\nsrc = \"@nets\"\n",
    );
    fw.install(&toml);
    let live = palisade::firewall::apply::control(&fw.bench.ebpf)
        .unwrap()
        .active_gen;
    let rule_masks = masks(&fw.bench, "FW_RULE_FILTER");
    assert_eq!(
        rule_masks[live as usize],
        u64::from(KEY_FILTER_MIN_WORDS - 1)
    );
    assert_eq!(
        masks(&fw.bench, "FW_SET_FILTER")[live as usize],
        u64::from(KEY_FILTER_MIN_WORDS - 1)
    );
    // Every rule still matches, and an address no rule names does not.
    for i in [0u32, 1, 1234, 3999] {
        let src = format!("192.0.{}.{}", (i >> 8) + 100, i & 255);
        assert_eq!(
            fw.bench.run(&udp(&src, "198.51.100.1", 53)).unwrap(),
            XDP_DROP,
            "{src}"
        );
        assert_eq!(fw.hits(fw.rule(&format!("r{i}"))).packets, 1, "r{i}");
    }
    assert_eq!(
        fw.bench
            .run(&udp("192.0.200.1", "198.51.100.1", 53))
            .unwrap(),
        XDP_PASS
    );
    // Every /24 of the set still holds its addresses.
    for i in [0u32, 77, 3999] {
        let src = format!("10.{}.{}.9", i >> 8, i & 255);
        assert_eq!(
            fw.bench.run(&tcp(&src, "198.51.100.1", 80)).unwrap(),
            XDP_DROP,
            "{src}"
        );
    }
    assert_eq!(
        fw.bench
            .run(&tcp("10.200.0.9", "198.51.100.1", 80))
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(fw.hits(fw.rule("nets")).packets, 3);
}
