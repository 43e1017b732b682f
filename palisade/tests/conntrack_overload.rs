//! The overload set of `[conntrack]` in the kernel, through `BPF_PROG_TEST_RUN`: an address
//! over a per-source limit joins the set named by `overload_set`, and a rule naming that set
//! then drops its new packets with the rule's own reason, until `overload_ttl` is over.
//!
//! Frames arriving from outside go through the XDP firewall (which tail-calls the tracker);
//! replies the host sends go through the TC egress tracker. The guarded host is 10.0.0.1.
//!
//! The last test runs a daemon on one end of a veth pair and checks `palisade ct overload`
//! (list and flush), `ct stats` and the metrics against a real flood of UDP flows, across a
//! `kill -9` and restart.
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN); each test loads its own copy of the object.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{path::Path, time::Duration};

use control::{Bg, HTTP_GET, Proc, Scratch, UDP_ECHO, cli, cli_json, py, sample};
use support::netns::NetnsPair;

use aya::maps::HashMap;
use palisade::{
    conntrack::{
        carry::now_ns,
        overload::{Member, members},
        read_stats, sweep, sweep_program,
    },
    craft::{Frame, ip},
    policy::config,
    testrun::Bench,
};
use palisade_common::{
    conntrack::{
        CS_OVERLOAD_ADDED, CS_OVERLOAD_FULL, OVER_MAX_PER_SOURCE, OverloadEntry, SWEEP_EXPIRE,
        SWEEP_FLUSH, SWEEP_OVERLOAD_FLUSH, SweepRequest,
    },
    firewall::SetKey,
    packet::{FAMILY_V4, TCP_SYN},
    reason,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// The TC verdict of the egress tracker, whatever it sees (`TC_ACT_UNSPEC`).
const TC_CONTINUE: i32 = -1;

const HOST: &str = "10.0.0.1";
const FLOODER: &str = "10.0.0.2";
const OTHER: &str = "10.0.0.3";

/// How the firewall must treat a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Pass,
    /// Dropped before the rules as a new flow over a per-source limit (`conn-limit`).
    Limit,
    /// Dropped by a rule (`rule`): the rule naming the overload set.
    Rule,
}

/// A loaded object with a policy installed.
struct Ct {
    bench: Bench,
}

/// Drops every member of the overload set; everything else passes, and established flows
/// pass before any rule.
fn policy(conntrack: &str) -> String {
    format!(
        r#"
[firewall]
default = "allow"
stateful = true

[[firewall.rule]]
name = "shut-out"
action = "drop"
src = "@flooders"

[sets.flooders]

[conntrack]
{conntrack}
"#
    )
}

fn install(bench: &mut Bench, toml: &str) {
    let p = config::parse_policy(toml, "test.toml", Path::new("."))
        .unwrap_or_else(|e| panic!("test policy is invalid:\n{e}\n{toml}"));
    bench.install(&p).expect("installing the policy");
}

impl Ct {
    fn load(toml: &str) -> Self {
        let mut bench =
            Bench::new().expect("loading and verifying the kernel programs (needs root)");
        install(&mut bench, toml);
        Self { bench }
    }

    fn stat(&self, i: u32) -> u64 {
        read_stats(&self.bench.ebpf).expect("reading CT_STATS")[i as usize]
    }

    fn reasons(&self) -> [u64; 3] {
        [reason::RULE, reason::CT_LIMIT, reason::DEFAULT]
            .map(|r| self.bench.reason_count(r).expect("REASON_STATS"))
    }

    /// Runs a frame arriving from outside and checks its verdict, the drop reason counted and
    /// how many addresses joined the overload set.
    #[track_caller]
    fn ingress(&self, what: &str, frame: &Frame, want: Want, added: u64) {
        let before = (self.reasons(), self.stat(CS_OVERLOAD_ADDED));
        let action = self
            .bench
            .run(&frame.build())
            .expect("BPF_PROG_TEST_RUN (XDP)");
        let after = (self.reasons(), self.stat(CS_OVERLOAD_ADDED));
        let mut reasons = before.0;
        match want {
            Want::Pass => {}
            Want::Rule => reasons[0] += 1,
            Want::Limit => reasons[1] += 1,
        }
        let action_want = if want == Want::Pass {
            XDP_PASS
        } else {
            XDP_DROP
        };
        assert_eq!(action, action_want, "verdict of {what} (wanted {want:?})");
        assert_eq!(
            after,
            (reasons, before.1 + added),
            "drops by [rule, conn-limit, default] and overload additions after {what}"
        );
    }

    /// Runs a frame the host sends through the egress tracker.
    #[track_caller]
    fn egress(&self, what: &str, frame: &Frame) {
        let v = self
            .bench
            .run_ct_egress(&frame.build())
            .expect("BPF_PROG_TEST_RUN (TC)");
        assert_eq!(v, TC_CONTINUE, "egress {what}");
    }

    fn members(&self) -> Vec<Member> {
        members(&self.bench.ebpf, None, now_ns()).expect("reading CT_OVERLOAD")
    }

    /// The addresses in the set.
    fn member_addrs(&self) -> Vec<String> {
        let mut v: Vec<String> = self.members().iter().map(|m| m.addr.to_string()).collect();
        v.sort();
        v
    }

    /// Writes a member as the kernel would, with its expiry `expires_ns`.
    fn put_member(&mut self, addr: &str, expires_ns: u64) {
        let std::net::IpAddr::V4(a) = ip(addr) else {
            panic!("IPv4 only")
        };
        let mut m: HashMap<_, SetKey, OverloadEntry> =
            HashMap::try_from(self.bench.map_mut("CT_OVERLOAD").expect("CT_OVERLOAD"))
                .expect("CT_OVERLOAD is a hash");
        let entry = OverloadEntry {
            expires_ns,
            added_ns: now_ns(),
            limit_value: 1,
            limit: OVER_MAX_PER_SOURCE,
            _pad: [0; 3],
        };
        m.insert(
            SetKey::new(0, FAMILY_V4, a.to_ipv6_mapped().octets()),
            entry,
            0,
        )
        .expect("writing a member");
    }

    fn sweep(&self, op: u32) -> palisade_common::conntrack::CtCensus {
        let prog = sweep_program(&self.bench.ebpf).expect("sweep program");
        sweep(
            prog,
            &self.bench.ebpf,
            &SweepRequest {
                op,
                ..SweepRequest::default()
            },
        )
        .expect("sweep")
    }
}

fn syn(src: &str, sport: u16) -> Frame {
    Frame::tcp(src, HOST, sport, 22, TCP_SYN)
}

#[test]
fn over_new_per_source_joins_the_set_and_the_rule_drops_it() {
    let ct = Ct::load(&policy(
        "new_per_source = 2\noverload_set = \"flooders\"\noverload_ttl = 600",
    ));
    ct.ingress("first SYN", &syn(FLOODER, 40_001), Want::Pass, 0);
    ct.ingress("second SYN", &syn(FLOODER, 40_002), Want::Pass, 0);
    assert_eq!(ct.member_addrs(), Vec::<String>::new(), "within the rate");
    ct.ingress(
        "third new flow in a second",
        &syn(FLOODER, 40_003),
        Want::Limit,
        1,
    );
    let m = ct.members();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].addr, ip(FLOODER));
    assert_eq!(
        (m[0].limit.as_str(), m[0].limit_value),
        ("new_per_source", 2)
    );
    assert!((599..=600).contains(&m[0].remaining_s), "{m:?}");
    // Going over again neither adds it twice nor extends its time.
    ct.ingress("fourth new flow", &syn(FLOODER, 40_004), Want::Limit, 0);
    assert_eq!(ct.members().len(), 1);
    // A packet of a flow it opened before is not a new flow: the limits let it through, the
    // rule naming the set does not.
    ct.ingress(
        "retransmitted first SYN",
        &syn(FLOODER, 40_001),
        Want::Rule,
        0,
    );
    ct.ingress("another source", &syn(OTHER, 40_005), Want::Pass, 0);
    ct.ingress("another source, again", &syn(OTHER, 40_006), Want::Pass, 0);
    // Once the bucket refills (two a second) its new flows pass the limit, and the rule
    // drops them.
    std::thread::sleep(Duration::from_millis(1100));
    ct.ingress(
        "a new flow a second later",
        &syn(FLOODER, 40_007),
        Want::Rule,
        0,
    );
    ct.ingress(
        "the other source a second later",
        &syn(OTHER, 40_008),
        Want::Pass,
        0,
    );
    assert_eq!(ct.stat(CS_OVERLOAD_FULL), 0);
    let c = ct.sweep(SWEEP_EXPIRE);
    assert_eq!((c.overload_members, c.overload_expired), (1, 0), "{c:?}");
}

#[test]
fn over_max_per_source_joins_the_set_and_its_open_flows_go_on() {
    let ct = Ct::load(&policy("max_per_source = 1\noverload_set = \"flooders\""));
    let query = |sport: u16| Frame::udp(FLOODER, HOST, sport, 53);
    let answer = |sport: u16| Frame::udp(HOST, FLOODER, 53, sport);
    ct.ingress("query", &query(5_001), Want::Pass, 0);
    ct.egress("answer", &answer(5_001));
    ct.ingress("second flow with one open", &query(5_002), Want::Limit, 1);
    let m = ct.members();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(
        (m[0].limit.as_str(), m[0].limit_value),
        ("max_per_source", 1)
    );
    assert!(
        (599..=600).contains(&m[0].remaining_s),
        "default ttl: {m:?}"
    );
    // The open flow is established: it passes before any rule.
    ct.ingress(
        "next datagram of the open flow",
        &query(5_001),
        Want::Pass,
        0,
    );
    // With its flow gone the address is under the limit again, and the rule drops it.
    let c = ct.sweep(SWEEP_FLUSH);
    assert_eq!(c.flushed.iter().sum::<u64>(), 1, "{c:?}");
    assert_eq!(
        c.overload_members, 1,
        "a flow flush keeps the members: {c:?}"
    );
    ct.ingress("new flow under the limit", &query(5_003), Want::Rule, 0);
    ct.ingress(
        "another source",
        &Frame::udp(OTHER, HOST, 5_004, 53),
        Want::Pass,
        0,
    );
}

#[test]
fn members_match_until_their_time_is_over() {
    let mut ct = Ct::load(&policy(
        "new_per_source = 1\noverload_set = \"flooders\"\noverload_ttl = 1",
    ));
    ct.ingress("first SYN", &syn(FLOODER, 41_001), Want::Pass, 0);
    ct.ingress("second SYN", &syn(FLOODER, 41_002), Want::Limit, 1);
    ct.ingress(
        "retransmitted first SYN",
        &syn(FLOODER, 41_001),
        Want::Rule,
        0,
    );
    // An entry whose expiry has passed, not swept yet: it must not match.
    ct.put_member(OTHER, now_ns().saturating_sub(1));
    ct.ingress(
        "expired member, not swept",
        &syn(OTHER, 41_003),
        Want::Pass,
        0,
    );
    assert_eq!(
        ct.member_addrs(),
        vec![FLOODER.to_string()],
        "listing skips it"
    );
    // The coarse clock moves by ticks; 1.5 s is past a one-second ttl on any of them.
    std::thread::sleep(Duration::from_millis(1500));
    ct.ingress(
        "retransmitted SYN after the ttl",
        &syn(FLOODER, 41_001),
        Want::Pass,
        0,
    );
    assert_eq!(ct.member_addrs(), Vec::<String>::new());
    let c = ct.sweep(SWEEP_EXPIRE);
    assert_eq!((c.overload_members, c.overload_expired), (0, 2), "{c:?}");
    // Over again after leaving: it joins again.
    ct.ingress(
        "new flow over the rate",
        &syn(FLOODER, 41_004),
        Want::Pass,
        0,
    );
    ct.ingress("and another", &syn(FLOODER, 41_005), Want::Limit, 1);
    assert_eq!(ct.member_addrs(), vec![FLOODER.to_string()]);
}

#[test]
fn membership_outlives_reloads_and_only_the_overload_set_sees_it() {
    let mut ct = Ct::load(&policy("new_per_source = 1\noverload_set = \"flooders\""));
    ct.ingress("first SYN", &syn(FLOODER, 42_001), Want::Pass, 0);
    ct.ingress("second SYN", &syn(FLOODER, 42_002), Want::Limit, 1);
    // A reload where the set has another index (a set declared before it) and the rule
    // another place: the member still matches.
    let reordered = r#"
[sets.aaa]
entries = ["192.0.2.0/24"]

[firewall]
default = "allow"
stateful = true

[[firewall.rule]]
name = "doc-net"
action = "drop"
src = "@aaa"

[[firewall.rule]]
name = "shut-out"
action = "drop"
src = "@flooders"

[sets.flooders]

[conntrack]
new_per_source = 1
overload_set = "flooders"
"#;
    install(&mut ct.bench, reordered);
    ct.ingress("after a reload", &syn(FLOODER, 42_001), Want::Rule, 0);
    ct.ingress(
        "another source after a reload",
        &syn(OTHER, 42_003),
        Want::Pass,
        0,
    );
    // The same rule on a set that is not the overload set: members are not its members.
    install(
        &mut ct.bench,
        &policy("new_per_source = 1\noverload_set = \"other\"\n\n[sets.other]\n"),
    );
    ct.ingress(
        "member, set not the overload set",
        &syn(FLOODER, 42_001),
        Want::Pass,
        0,
    );
    // A policy without overload: over the limit is dropped, nobody is added, and the
    // members kept meanwhile do not match.
    install(&mut ct.bench, &policy("new_per_source = 1"));
    // (A fresh address, its two SYNs back to back: the reloads may have taken a second.)
    ct.ingress(
        "within the rate, no overload",
        &syn("10.0.0.4", 42_004),
        Want::Pass,
        0,
    );
    ct.ingress(
        "over the limit, no overload",
        &syn("10.0.0.4", 42_006),
        Want::Limit,
        0,
    );
    ct.ingress("member, no overload", &syn(FLOODER, 42_001), Want::Pass, 0);
    assert_eq!(ct.member_addrs(), vec![FLOODER.to_string()]);
    // Back to the first policy: the member matches again.
    install(
        &mut ct.bench,
        &policy("new_per_source = 1\noverload_set = \"flooders\""),
    );
    ct.ingress(
        "member after two reloads",
        &syn(FLOODER, 42_001),
        Want::Rule,
        0,
    );
    // A member written with a live expiry matches like one the kernel added.
    ct.put_member("10.0.0.9", now_ns() + 60_000_000_000);
    ct.ingress(
        "member written by hand",
        &syn("10.0.0.9", 42_005),
        Want::Rule,
        0,
    );
}

#[test]
fn a_flush_removes_the_members_it_names() {
    let mut ct = Ct::load(&policy("new_per_source = 100\noverload_set = \"flooders\""));
    let later = now_ns() + 600_000_000_000;
    for a in ["10.0.1.1", "10.0.1.2", "10.0.2.1"] {
        ct.put_member(a, later);
    }
    let prog = sweep_program(&ct.bench.ebpf).expect("sweep program");
    let flush = |addr: Option<&str>| {
        let req = palisade::conntrack::FlowFilter {
            addr: addr.map(str::to_owned),
            ..Default::default()
        }
        .request(SWEEP_OVERLOAD_FLUSH)
        .expect("filter");
        sweep(prog, &ct.bench.ebpf, &req).expect("sweep")
    };
    let c = flush(Some("10.0.1.0/24"));
    assert_eq!((c.overload_flushed, c.overload_members), (2, 1), "{c:?}");
    assert_eq!(ct.member_addrs(), vec!["10.0.2.1".to_string()]);
    ct.ingress("flushed member", &syn("10.0.1.1", 43_001), Want::Pass, 0);
    ct.ingress("member left", &syn("10.0.2.1", 43_002), Want::Rule, 0);
    let c = flush(None);
    assert_eq!((c.overload_flushed, c.overload_members), (3, 0), "{c:?}");
    ct.ingress(
        "every member flushed",
        &syn("10.0.2.1", 43_002),
        Want::Pass,
        0,
    );
}

#[test]
fn bad_overload_settings_are_located_errors() {
    for (text, want) in [
        (
            "[conntrack]\nnew_per_source = 5\noverload_set = \"ghosts\"\n",
            "test.toml:3:16: `overload_set` names no set",
        ),
        (
            "[sets.s]\n[conntrack]\nnew_per_source = 5\noverload_set = \"s\"\noverload_ttl = 86401\n",
            "test.toml:5:16: `overload_ttl` must be between 1 and 86400, found 86401",
        ),
        (
            "[sets.s]\n[conntrack]\nnew_per_source = 5\noverload_set = \"s\"\noverload_ttl = 0\n",
            "test.toml:5:16: `overload_ttl` must be between 1 and 86400, found 0",
        ),
        (
            "[sets.s]\n[conntrack]\nenabled = false\nnew_per_source = 5\noverload_set = \"s\"\n",
            "test.toml:5:16: `overload_set` needs connection tracking",
        ),
    ] {
        let e = config::parse_policy(text, "test.toml", Path::new("."))
            .expect_err(text)
            .to_string();
        assert!(e.contains(want), "for:\n{text}\nerror:\n{e}");
    }
}

/// Sends one datagram from each of `n` sockets (a new flow each) to `host:port`, all at
/// once, then prints how many were answered within a second.
const UDP_ASK: &str = r"
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)
    s.sendto(b'q', (host, port)); socks.append(s)
got, end = set(), time.time() + 1
while time.time() < end and len(got) < n:
    for i, s in enumerate(socks):
        try:
            s.recv(64); got.add(i)
        except BlockingIOError:
            pass
    time.sleep(0.01)
print(len(got))
";

#[test]
fn operators_list_and_flush_the_overload_set_through_the_daemon() {
    let pair = NetnsPair::new();
    let scratch = Scratch::new("ct-overload");
    let policy_file = scratch.file("policy.toml");
    std::fs::write(
        &policy_file,
        policy("new_per_source = 3\noverload_set = \"flooders\"\noverload_ttl = 600"),
    )
    .unwrap();
    let socket = scratch.socket();
    let pin_dir = scratch.pin_dir();
    let (a, b) = (pair.v4_a.clone(), pair.v4_b.clone());
    let metrics = format!("127.0.0.1:{}", 19_000 + std::process::id() % 1000);
    let start = || {
        Proc::start(
            &pair,
            &pair.ns_b,
            &socket,
            &[
                "--config",
                policy_file.to_str().unwrap(),
                "--iface",
                &pair.if_b,
                "--pin-dir",
                pin_dir.to_str().unwrap(),
                "--metrics",
                &metrics,
                "--quiet",
            ],
        )
    };
    let mut daemon = start();
    let stop = scratch.file("stop");
    let _echo = Bg::start(
        &pair,
        &pair.ns_b,
        UDP_ECHO,
        &[&b, "7000", stop.to_str().unwrap()],
    )
    .ready();
    let ask = |n: &str| py(&pair, &pair.ns_a, UDP_ASK, &[&b, "7000", n]);
    let list = || cli_json(&socket, &["ct", "overload", "--json"]);

    let none = list();
    assert_eq!(none["set"], "flooders", "{none:#}");
    assert_eq!(none["ttl_s"], 600, "{none:#}");
    assert_eq!(
        none["members"].as_array().map(Vec::len),
        Some(0),
        "{none:#}"
    );

    // Six new flows at once: three within the rate, then A goes over and joins the set.
    assert_eq!(ask("6"), "3", "the flows within the rate are answered");
    let l = list();
    let members = l["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{l:#}");
    assert_eq!(members[0]["addr"], a.as_str(), "{l:#}");
    assert_eq!(members[0]["limit"], "new_per_source", "{l:#}");
    assert_eq!(members[0]["limit_value"], 3, "{l:#}");
    let left = members[0]["remaining_s"].as_u64().unwrap();
    assert!((590..=600).contains(&left), "{l:#}");
    let text = cli(&socket, &["ct", "overload"]);
    assert!(
        text.ok
            && text
                .stdout
                .starts_with("overload set @flooders (members stay 600s)\n")
            && text.stdout.contains(&format!("{a} "))
            && text.stdout.contains("new_per_source 3")
            && text.stdout.ends_with("1 member\n"),
        "{text:?}"
    );

    let st = cli_json(&socket, &["ct", "stats", "--json"]);
    let counter = |name: &str| {
        st["counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_u64())
            .unwrap_or_else(|| panic!("no counter {name} in {st:#}"))
    };
    assert_eq!(counter("overload_added"), 1, "{st:#}");
    assert_eq!(counter("overload_full"), 0, "{st:#}");
    assert_eq!(st["census"]["overload_members"], 1, "{st:#}");
    let text = cli(&socket, &["ct", "stats"]);
    assert!(
        text.stdout
            .contains("overload set: 1 members; 1 added, 0 expired, 0 flushed, 0 refused"),
        "{text:?}"
    );
    let m = py(
        &pair,
        &pair.ns_b,
        HTTP_GET,
        &[&format!("http://{metrics}/metrics")],
    );
    assert_eq!(sample(&m, "palisade_ct_overload_members"), Some(1), "{m}");
    assert_eq!(
        sample(&m, "palisade_ct_overload_additions_total"),
        Some(1),
        "{m}"
    );

    // Membership is pinned: it outlives kill -9 and a restart.
    daemon.kill9();
    daemon = start();
    let l = list();
    assert_eq!(
        l["members"][0]["addr"],
        a.as_str(),
        "after a restart: {l:#}"
    );
    // Back under its rate a second later, A is still shut out by the rule on the set.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(ask("1"), "0", "a member's new flow is dropped by the rule");

    // Flushes take what they name.
    let f = cli_json(
        &socket,
        &[
            "ct",
            "overload",
            "flush",
            "--addr",
            "192.0.2.0/24",
            "--json",
        ],
    );
    assert!(f["removed"] == 0 && f["remaining"] == 1, "{f:#}");
    let f = cli(&socket, &["ct", "overload", "flush", "--addr", &a]);
    assert!(f.ok && f.stdout == "removed 1 address (0 left)\n", "{f:?}");
    assert_eq!(list()["members"].as_array().map(Vec::len), Some(0));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(ask("1"), "1", "flushed, A's new flow is answered");
    let bad = cli(
        &socket,
        &["ct", "overload", "flush", "--addr", "10.0.0.1/8"],
    );
    assert!(!bad.ok && bad.stderr.contains("--addr"), "{bad:?}");
    drop(daemon);
    std::fs::write(&stop, "").unwrap();
}
