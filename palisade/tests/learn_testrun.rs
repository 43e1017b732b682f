//! `palisade learn`: captures written by the test (training and held-out traffic of one
//! host, with DNS answers) are learned from; the proposal's content is checked (names over
//! addresses, wildcards only over three siblings, rare flows held, the never-allow policy
//! honoured, evidence in comments), it is loaded as a policy, and the evaluation's two
//! shares are measured through the kernel programs and held to their targets.
//!
//! The evaluation needs root (or CAP_BPF) and the kernel object.

use std::{net::Ipv4Addr, path::Path, process::Command};

use palisade::{
    craft::{DnsQuery, Frame},
    learn::{self, evaluate, observe, propose},
    policy::{config::parse_policy, model::AddrMatch},
    replay::{
        self,
        capture::{self, LINKTYPE_ETHERNET, write},
    },
};

const HOST: &str = "10.0.0.2";
const RESOLVER: &str = "10.0.0.53";
/// 2025-12-05T00:00:00Z.
const T0: u64 = 1_764_892_800_000_000_000;
const SECOND: u64 = 1_000_000_000;

const NEVER: &str = r#"
[[firewall.rule]]
name = "no-66"
action = "drop"
dst = "203.0.113.66"

[[firewall.rule]]
name = "no-bad-client"
action = "drop"
src = "192.0.2.66"

[dns.egress]
mode = "blocklist"
lists = ["never"]

[dns.lists.never]
names = ["bad.example.com"]
"#;

/// Frames of one host's traffic, in order, with a clock.
struct Traffic {
    frames: Vec<(u64, Vec<u8>)>,
    t: u64,
    port: u16,
    id: u16,
}

impl Traffic {
    fn new(start: u64) -> Self {
        Self {
            frames: Vec::new(),
            t: start,
            port: 40_000,
            id: 1,
        }
    }

    fn push(&mut self, f: Vec<u8>) {
        self.t += SECOND;
        self.frames.push((self.t, f));
    }

    fn eph(&mut self) -> u16 {
        self.port += 1;
        self.port
    }

    /// The host resolves `name` to `addr`.
    fn resolve(&mut self, name: &str, addr: &str) {
        let p = self.eph();
        self.id += 1;
        let q = DnsQuery::name(name, 1).with_id(self.id).build();
        let a = evaluate::answer_message(self.id, name, &[addr.parse::<Ipv4Addr>().unwrap()], 300);
        self.push(Frame::dns_udp(HOST, RESOLVER, p, &q).build());
        self.push(Frame::udp(RESOLVER, HOST, 53, p).with_payload(&a).build());
    }

    /// `n` UDP exchanges from the host to `addr:port`, each from its own port.
    fn out_udp(&mut self, addr: &str, port: u16, n: usize) {
        for _ in 0..n {
            let p = self.eph();
            self.push(
                Frame::udp(HOST, addr, p, port)
                    .with_payload(b"hello")
                    .build(),
            );
            self.push(
                Frame::udp(addr, HOST, port, p)
                    .with_payload(b"world")
                    .build(),
            );
        }
    }

    /// A peer opens a TCP connection to the host's `port`.
    fn in_tcp(&mut self, peer: &str, port: u16) {
        let p = self.eph();
        self.push(Frame::tcp(peer, HOST, p, port, 0x02).build());
        self.push(Frame::tcp(HOST, peer, port, p, 0x12).build());
    }

    fn pcap(&self) -> Vec<u8> {
        write::pcap(LINKTYPE_ETHERNET, false, true, &self.frames)
    }
}

fn training() -> Traffic {
    let mut t = Traffic::new(T0);
    t.resolve("api.example.com", "198.51.100.10");
    t.out_udp("198.51.100.10", 443, 5);
    for (n, a) in [
        ("a.cdn.example.net", "198.51.100.21"),
        ("b.cdn.example.net", "198.51.100.22"),
        ("c.cdn.example.net", "198.51.100.23"),
    ] {
        t.resolve(n, a);
        t.out_udp(a, 443, 2);
    }
    for (n, a) in [
        ("x.two.example.org", "198.51.100.31"),
        ("y.two.example.org", "198.51.100.32"),
    ] {
        t.resolve(n, a);
        t.out_udp(a, 443, 3);
    }
    t.resolve("rare.example.com", "198.51.100.40");
    t.out_udp("198.51.100.40", 443, 1);
    t.resolve("bad.example.com", "198.51.100.50");
    t.out_udp("198.51.100.50", 443, 4);
    t.out_udp("203.0.113.7", 123, 4);
    t.out_udp("203.0.113.66", 9999, 4);
    for peer in ["192.0.2.10", "192.0.2.11", "192.0.2.10", "192.0.2.11"] {
        t.in_tcp(peer, 22);
    }
    for peer in [
        "192.0.2.20",
        "192.0.2.21",
        "192.0.2.22",
        "192.0.2.23",
        "192.0.2.24",
        "192.0.2.66",
    ] {
        t.in_tcp(peer, 80);
    }
    let p = t.eph();
    t.push(Frame::udp("192.0.2.99", HOST, p, 5353).build());
    t
}

/// The next day: the same services, new ports, a fourth CDN name at a new address, and a
/// web client never seen before.
fn held_out() -> Traffic {
    let mut t = Traffic::new(T0 + 86_400 * SECOND);
    t.port = 50_000;
    t.resolve("api.example.com", "198.51.100.10");
    t.out_udp("198.51.100.10", 443, 3);
    t.resolve("d.cdn.example.net", "198.51.100.24");
    t.out_udp("198.51.100.24", 443, 2);
    t.resolve("b.cdn.example.net", "198.51.100.22");
    t.out_udp("198.51.100.22", 443, 1);
    t.resolve("y.two.example.org", "198.51.100.32");
    t.out_udp("198.51.100.32", 443, 2);
    t.out_udp("203.0.113.7", 123, 2);
    t.in_tcp("192.0.2.10", 22);
    t.in_tcp("192.0.2.200", 80);
    t.in_tcp("192.0.2.21", 80);
    t
}

fn records(raw: &[u8]) -> Vec<capture::Record> {
    let mut r = capture::read(raw).expect("capture");
    replay::mark_sent_by(
        &mut r,
        &[palisade::policy::setfile::parse_cidr(HOST).unwrap()],
    );
    r
}

fn learned() -> (
    Vec<capture::Record>,
    observe::Observations,
    propose::Proposal,
) {
    let recs = records(&training().pcap());
    let obs = observe::observe(&recs);
    let never = parse_policy(NEVER, "never.toml", Path::new("/")).expect("never-allow policy");
    let opts = propose::Options {
        min_flows: learn::DEFAULT_MIN_FLOWS,
        cgroups: vec![learn::DEFAULT_CGROUP.into()],
        sources: vec!["train.pcap".into()],
    };
    let p = propose::propose(&obs, &recs, Some(&never), &opts);
    (recs, obs, p)
}

/// The proposal's text up to the held-for-review heading, and after it.
fn split(text: &str) -> (&str, &str) {
    text.split_once("# ---- Held for review")
        .unwrap_or((text, ""))
}

#[test]
fn the_proposal_prefers_names_holds_rare_flows_and_honours_never_allow() {
    let (_, obs, p) = learned();
    assert_eq!(obs.answers.len(), 8);
    let policy = learn::parse_proposal(&p.text).unwrap_or_else(|e| panic!("{e}\n{}", p.text));
    let (active, held) = split(&p.text);
    let list = policy
        .dns
        .lists
        .iter()
        .find(|l| l.name == propose::LIST)
        .expect("the learned list");
    let mut names: Vec<String> = list
        .entries
        .iter()
        .map(|e| {
            let n: Vec<String> = e
                .labels
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect();
            match e.kind {
                palisade::policy::model::NameMatch::Subdomains => format!("*.{}", n.join(".")),
                _ => n.join("."),
            }
        })
        .collect();
    names.sort();
    // Names, not their addresses; the three CDN siblings as one wildcard; two siblings stay
    // two names; the rare name held; the never-allowed name withheld.
    assert_eq!(
        names,
        [
            "*.cdn.example.net",
            "api.example.com",
            "x.two.example.org",
            "y.two.example.org"
        ],
        "{}",
        p.text
    );
    let bind = policy.dns.bind.as_ref().expect("[dns.bind]");
    let allow: Vec<String> = bind
        .allow
        .iter()
        .map(|c| {
            let a = Ipv4Addr::new(c.addr[12], c.addr[13], c.addr[14], c.addr[15]);
            format!("{a}/{}", c.prefix_len)
        })
        .collect();
    assert_eq!(allow, ["10.0.0.53/32", "203.0.113.7/32"]);
    let settings: String = active
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !settings.contains("198.51.100."),
        "no resolved address is allowed by address"
    );
    assert!(!p.text.contains("*.two.example.org"));
    // The rare name is held, commented out, under the heading.
    assert!(held.contains("# [[dns.lists.learned.entry]]\n# name = \"rare.example.com\""));
    assert!(!settings.contains("rare.example.com"));
    // Rare inbound datagram held as a commented rule.
    assert!(held.contains("# name = \"in-udp-5353\""), "{held}");
    // Inbound: SSH from its two clients named, the web port from anyone (five sources).
    let rules: Vec<(Option<String>, usize)> = policy
        .firewall
        .rules
        .iter()
        .map(|r| {
            let n = match &r.src {
                AddrMatch::Cidrs(c) => c.len(),
                _ => 0,
            };
            (r.name.clone(), n)
        })
        .collect();
    assert_eq!(
        rules,
        [(Some("in-tcp-22".into()), 2), (Some("in-tcp-80".into()), 0)]
    );
    // Never-allow: the denied name, address and client are withheld and reported.
    let withheld: Vec<(&str, &str, u64)> = p
        .withheld
        .iter()
        .map(|w| (w.what.as_str(), w.why.as_str(), w.flows))
        .collect();
    assert!(withheld.contains(&(
        "in tcp/80 from 192.0.2.66",
        "never-allow rule no-bad-client",
        1
    )));
    assert!(withheld.contains(&("out udp/9999 to 203.0.113.66", "never-allow rule no-66", 4)));
    assert!(withheld.contains(&(
        "out udp/443 to 198.51.100.50 (bad.example.com)",
        "never-allow DNS list",
        4
    )));
    assert!(!settings.contains("bad.example.com") && !settings.contains("203.0.113.66"));
    assert!(!settings.contains("192.0.2.66"));
    assert!(
        p.text
            .contains("# Withheld: the never-allow policy denies these")
    );
    // Evidence: counts, first and last seen, services, peers.
    let evidence = active
        .lines()
        .find(|l| l.contains("# name api.example.com:"))
        .expect("evidence comment");
    assert!(
        evidence
            .contains("5 flows, 10 packets, first 2025-12-05T00:00:03Z, last 2025-12-05T00:00:12Z")
            && evidence.contains("services udp/443")
            && evidence.contains("peers 198.51.100.10")
            && evidence.contains("process unknown"),
        "{evidence}"
    );
    let wildcard = active
        .lines()
        .find(|l| l.contains("# name *.cdn.example.net:"))
        .expect("wildcard evidence");
    assert!(
        wildcard.contains("6 flows")
            && wildcard.contains("names a.cdn.example.net, b.cdn.example.net, c.cdn.example.net"),
        "{wildcard}"
    );
}

#[test]
fn without_never_allow_everything_frequent_is_allowed() {
    let recs = records(&training().pcap());
    let obs = observe::observe(&recs);
    let opts = propose::Options {
        min_flows: 1,
        cgroups: vec!["/sys/fs/cgroup/app.slice".into()],
        sources: vec!["t".into()],
    };
    let p = propose::propose(&obs, &recs, None, &opts);
    assert!(p.held.is_empty() && p.withheld.is_empty());
    let policy = learn::parse_proposal(&p.text).expect("loads");
    // api, rare and bad are three siblings under example.com: one wildcard covers them.
    assert!(p.text.contains("  \"*.example.com\",\n"), "{}", p.text);
    assert!(!p.text.contains("  \"rare.example.com\",\n"));
    assert_eq!(policy.firewall.rules.len(), 3, "{}", p.text);
    assert_eq!(
        policy.dns.bind.as_ref().unwrap().cgroups,
        [std::path::PathBuf::from("/sys/fs/cgroup/app.slice")]
    );
}

#[test]
fn the_evaluation_admits_held_out_traffic_and_refuses_never_seen_flows() {
    let (_, obs, p) = learned();
    let policy = learn::parse_proposal(&p.text).expect("loads");
    let held = records(&held_out().pcap());
    let seen = evaluate::Seen::from(&obs);
    let synth = evaluate::synthetic(&seen, 400, 7);
    let ev = evaluate::evaluate(&policy, &held, &synth, 7).expect("evaluation");
    eprintln!(
        "benign {}/{} ({:.2} %), synthetic {}/{} ({:.2} %)",
        ev.benign_admitted,
        ev.benign_flows,
        ev.benign_share,
        ev.synthetic_admitted,
        ev.synthetic_flows,
        ev.synthetic_share
    );
    // 4 resolutions, 10 outbound exchanges, 3 inbound connections.
    assert_eq!(ev.benign_flows, 17);
    assert_eq!(ev.benign_share, 100.0, "refused: {:?}", ev.benign_refused);
    assert_eq!(ev.synthetic_flows, 400);
    assert!(
        ev.synthetic_share <= 1.0,
        "let in: {:?}",
        ev.synthetic_let_in
    );
}

#[test]
fn the_evaluation_measures_what_a_too_narrow_proposal_refuses() {
    // Learned with a high bar (9 flows), the proposal allows only `*.example.com` (api, rare
    // and bad: 10 flows), not the resolver (8): the names cannot be resolved, so every
    // held-out flow is refused, and the benign share must show it.
    let recs = records(&training().pcap());
    let obs = observe::observe(&recs);
    let opts = propose::Options {
        min_flows: 9,
        cgroups: vec![learn::DEFAULT_CGROUP.into()],
        sources: vec!["t".into()],
    };
    let p = propose::propose(&obs, &recs, None, &opts);
    let allowed: Vec<&str> = p.allowed.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(allowed, ["name *.example.com"]);
    let policy = learn::parse_proposal(&p.text).expect("loads");
    let held = records(&held_out().pcap());
    let ev = evaluate::evaluate(&policy, &held, &[], 1).expect("evaluation");
    assert_eq!(ev.benign_flows, 17);
    assert_eq!(ev.benign_admitted, 0, "{:?}", ev.benign_refused);
    assert_eq!(ev.synthetic_flows, 0);
}

#[test]
fn the_synthetic_share_shows_a_permissive_policy() {
    // Everything allowed, no DNS scope, no binding: every never-seen flow gets in, and the
    // measurement must say so.
    let (_, obs, _) = learned();
    let open = parse_policy(
        "[firewall]\ndefault = \"allow\"\n",
        "open.toml",
        Path::new("/"),
    )
    .expect("policy");
    let synth = evaluate::synthetic(&evaluate::Seen::from(&obs), 100, 11);
    let ev = evaluate::evaluate(&open, &[], &synth, 11).expect("evaluation");
    assert_eq!((ev.synthetic_admitted, ev.synthetic_flows), (100, 100));
    assert_eq!(ev.synthetic_share, 100.0);
}

#[test]
fn cooked_captures_carry_the_direction_themselves() {
    // The same training traffic as Linux cooked v2 in pcapng, with the host's packets
    // marked as sent (packet type 4): no --host needed, and the same proposal.
    let t = training();
    let host: std::net::IpAddr = HOST.parse().unwrap();
    let cooked: Vec<(Option<u32>, u64, Vec<u8>)> = t
        .frames
        .iter()
        .map(|(ts, f)| {
            let sent = observe::parse(f).is_some_and(|l| l.src == host);
            (Some(0), *ts, write::sll2(f, if sent { 4 } else { 0 }))
        })
        .collect();
    let raw = write::pcapng(&[capture::LINKTYPE_LINUX_SLL2], &cooked);
    let recs = capture::read(&raw).expect("capture");
    let opts = propose::Options {
        min_flows: 3,
        cgroups: vec![learn::DEFAULT_CGROUP.into()],
        sources: vec!["train.pcap".into()],
    };
    let from_cooked = propose::propose(&observe::observe(&recs), &recs, None, &opts);
    let plain = records(&t.pcap());
    let from_plain = propose::propose(&observe::observe(&plain), &plain, None, &opts);
    assert_eq!(from_cooked.text, from_plain.text);
    assert_eq!(from_cooked.allowed.len(), 9, "{}", from_cooked.text);
}

fn palisade() -> Command {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
}

#[test]
fn the_command_writes_a_policy_that_check_accepts_and_reports_json() {
    let dir = std::env::temp_dir().join(format!("palisade-learn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup(dir.clone());
    let (train, held, never, out) = (
        dir.join("train.pcap"),
        dir.join("held.pcap"),
        dir.join("never.toml"),
        dir.join("proposal.toml"),
    );
    std::fs::write(&train, training().pcap()).unwrap();
    std::fs::write(&held, held_out().pcap()).unwrap();
    std::fs::write(&never, NEVER).unwrap();
    let o = palisade()
        .args(["learn", "--capture"])
        .arg(&train)
        .args(["--host", HOST, "--never-allow"])
        .arg(&never)
        .arg("--output")
        .arg(&out)
        .arg("--evaluate")
        .arg(&held)
        .args(["--synthetic", "200", "--seed", "3", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["evaluation"]["benign_share"], 100.0);
    assert_eq!(v["evaluation"]["synthetic_flows"], 200);
    assert_eq!(v["evaluation"]["seed"], 3);
    assert!(v["evaluation"]["synthetic_share"].as_f64().unwrap() <= 1.0);
    assert_eq!(v["withheld"].as_array().unwrap().len(), 4);
    assert_eq!(
        v["policy"].as_str().unwrap(),
        std::fs::read_to_string(&out).unwrap()
    );
    let c = palisade().arg("check").arg(&out).output().unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));

    // A capture cut short: the error names the file, the packet and the offset.
    let mut bad = training().pcap();
    bad.truncate(bad.len() - 3);
    let cut = dir.join("cut.pcap");
    std::fs::write(&cut, bad).unwrap();
    let o = palisade()
        .args(["learn", "--capture"])
        .arg(&cut)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("cut.pcap") && err.contains("byte offset"),
        "{err}"
    );

    // A never-allow policy with an error: named with its line and column.
    let never_bad = dir.join("never-bad.toml");
    std::fs::write(&never_bad, "[firewall]\ndefault = \"deny\"\n").unwrap();
    let o = palisade()
        .args(["learn", "--capture"])
        .arg(&train)
        .arg("--never-allow")
        .arg(&never_bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("--never-allow") && err.contains("never-bad.toml:2:11"),
        "{err}"
    );
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn shell_completions_know_learn_and_its_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let out = palisade().args(["completions", shell]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        for word in [
            "learn",
            "never-allow",
            "min-flows",
            "evaluate",
            "synthetic",
            "duration",
        ] {
            assert!(text.contains(word), "{shell} completions lack {word}");
        }
    }
}
