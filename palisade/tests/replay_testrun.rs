//! `palisade replay`: captures written by the tests go through the kernel programs, and what
//! each packet got is checked against the userspace reference classifier; the command's JSON
//! shape and exit codes are checked by running the binary.
//!
//! Needs root (or CAP_BPF) and the kernel object.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use palisade::{
    craft::{DnsQuery, Frame},
    firewall::reference::{self, Verdict},
    policy::{config::parse_policy, model::Policy},
    replay::{
        self,
        capture::{self, LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, write},
    },
};
use palisade_common::{
    packet::{self, Frame as Parsed},
    reason,
};

const POLICY: &str = r#"
[firewall]
default = "drop"

[[firewall.rule]]
name = "ssh-from-admin"
action = "allow"
proto = "tcp"
src = "192.0.2.0/28"
dport = 22

[[firewall.rule]]
name = "no-telnet"
action = "drop"
proto = "tcp"
dport = 23

[[firewall.rule]]
name = "web"
action = "allow"
proto = "tcp"
dport = "80-443"

[[firewall.rule]]
action = "allow"
proto = "udp"
dport = "1000-2000"

[[firewall.rule]]
name = "ping"
action = "allow"
proto = "icmp"
icmp_type = 8
"#;

fn policy(text: &str) -> Policy {
    parse_policy(text, "p.toml", Path::new("/")).expect("valid test policy")
}

/// A mix aimed at every rule's edges, both families, and a non-IP frame.
fn frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for src in ["192.0.2.1", "192.0.2.15", "192.0.2.16", "203.0.113.9"] {
        for dport in [21, 22, 23, 79, 80, 443, 444] {
            out.push(Frame::tcp(src, "198.51.100.1", 40000, dport, 0x02).build());
        }
    }
    for dport in [999, 1000, 1500, 2000, 2001] {
        out.push(Frame::udp("192.0.2.3", "198.51.100.1", 5000, dport).build());
        out.push(Frame::udp("2001:db8::3", "2001:db8::1", 5000, dport).build());
    }
    out.push(Frame::icmp("192.0.2.3", "198.51.100.1", 8, 0).build());
    out.push(Frame::icmp("192.0.2.3", "198.51.100.1", 13, 0).build());
    out.push(Frame::tcp("2001:db8::5", "2001:db8::1", 40000, 443, 0x02).build());
    // ARP: not IP, never filtered.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 9, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    out.push(arp);
    out
}

/// What the reference classifier says of a frame: verdict, reason and rule label.
fn expected(p: &Policy, frame: &[u8]) -> (&'static str, Option<&'static str>, String) {
    let label = |rule: Option<u32>| match rule {
        None => "default".to_string(),
        Some(i) => p.firewall.rules[i as usize]
            .name
            .clone()
            .unwrap_or_else(|| format!("#{i}")),
    };
    match packet::parse(frame).expect("well-formed test frame") {
        Parsed::NotIp => ("pass", None, String::new()),
        Parsed::Ip(pk) => match reference::verdict(p, &pk) {
            Verdict::Pass { rule } => ("pass", None, label(rule)),
            Verdict::Drop { rule, reason: r } => ("drop", Some(reason::name(r)), label(rule)),
            Verdict::RateLimit { .. } => panic!("no rate limits in the test policy"),
        },
    }
}

fn check_against_reference(p: &Policy, records: &[capture::Record], frames: &[Vec<u8>]) {
    let got = replay::run(p, records).expect("replay");
    assert_eq!(got.len(), frames.len());
    let mut drops = 0;
    for (o, f) in got.iter().zip(frames) {
        let (verdict, why, rule) = expected(p, f);
        assert_eq!(o.verdict, verdict, "packet {} {:?}", o.packet, o.flow);
        assert_eq!(o.reason, why, "packet {} {:?}", o.packet, o.flow);
        if !rule.is_empty() {
            assert_eq!(
                o.rule.as_deref(),
                Some(rule.as_str()),
                "packet {}",
                o.packet
            );
        } else {
            assert_eq!(o.rule, None, "packet {}: not IP, no rule", o.packet);
        }
        drops += u32::from(verdict == "drop");
    }
    // The mix exercises both outcomes.
    assert!(
        drops > 5 && (drops as usize) < frames.len() - 5,
        "{drops} drops"
    );
}

#[test]
fn every_capture_format_gives_the_reference_verdicts() {
    let p = policy(POLICY);
    let f = frames();
    let stamped: Vec<(u64, Vec<u8>)> = f
        .iter()
        .enumerate()
        .map(|(i, b)| (1_700_000_000_000_000_000 + i as u64 * 1000, b.clone()))
        .collect();
    let mut captures = Vec::new();
    for be in [false, true] {
        for ns in [false, true] {
            captures.push(write::pcap(LINKTYPE_ETHERNET, be, ns, &stamped));
        }
    }
    captures.push(write::pcap(
        LINKTYPE_LINUX_SLL,
        false,
        false,
        &f.iter().map(|b| (0, write::sll(b, 0))).collect::<Vec<_>>(),
    ));
    // pcapng: three interfaces of three link types, and simple packet blocks.
    captures.push(write::pcapng(
        &[LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2],
        &f.iter()
            .enumerate()
            .map(|(i, b)| match i % 4 {
                0 => (Some(0), i as u64, b.clone()),
                1 => (Some(1), i as u64, write::sll(b, 0)),
                2 => (Some(2), i as u64, write::sll2(b, 0)),
                _ => (None, 0, b.clone()),
            })
            .collect::<Vec<_>>(),
    ));
    for (n, raw) in captures.iter().enumerate() {
        let records = capture::read(raw).unwrap_or_else(|e| panic!("capture {n}: {e}"));
        check_against_reference(&p, &records, &f);
    }
}

#[test]
fn connection_state_carries_from_packet_to_packet() {
    let p = policy(
        "[firewall]\ndefault = \"drop\"\nstateful = true\n\
         [[firewall.rule]]\naction = \"allow\"\nproto = \"tcp\"\ndport = 22\n",
    );
    // UDP: the tracker also checks TCP sequence numbers, which are not the point here.
    let out = Frame::udp("192.0.2.10", "198.51.100.1", 40000, 5300).build();
    let back = Frame::udp("198.51.100.1", "192.0.2.10", 5300, 40000).build();
    let stray = Frame::udp("198.51.100.1", "192.0.2.10", 5300, 40001).build();
    let raw = write::pcapng(
        &[LINKTYPE_LINUX_SLL2],
        &[
            // A reply before any request: dropped.
            (Some(0), 1, write::sll2(&back, 0)),
            // The host's request, then replies: passed.
            (Some(0), 2, write::sll2(&out, 4)),
            (Some(0), 3, write::sll2(&back, 0)),
            (Some(0), 4, write::sll2(&back, 0)),
            // Another port's reply: no connection, dropped.
            (Some(0), 5, write::sll2(&stray, 0)),
        ],
    );
    let records = capture::read(&raw).expect("capture");
    let got = replay::run(&p, &records).expect("replay");
    let summary: Vec<(&str, &str, Option<&str>)> = got
        .iter()
        .map(|o| (o.verdict, o.direction, o.reason))
        .collect();
    assert_eq!(
        summary,
        [
            ("drop", "in", Some("default")),
            ("pass", "out", None),
            ("pass", "in", None),
            ("pass", "in", None),
            ("drop", "in", Some("default")),
        ]
    );
    let report = replay::report(&records, got, None);
    let flows: Vec<(&str, u64, u64)> = report
        .broken_flows
        .iter()
        .map(|f| (f.flow.as_str(), f.packets, f.dropped))
        .collect();
    assert_eq!(
        flows,
        [
            ("udp 198.51.100.1:5300 <> 192.0.2.10:40000", 4, 1),
            ("udp 198.51.100.1:5300 <> 192.0.2.10:40001", 1, 1),
        ]
    );
}

#[test]
fn dns_names_are_reported_with_their_verdicts() {
    let p = policy(
        "[dns.ingress]\nmode = \"blocklist\"\naction = \"drop\"\nlists = [\"bad\"]\n\
         log_allowed = true\n[dns.lists.bad]\nnames = [\"blocked.test\"]\n",
    );
    let q = |name: &str| {
        Frame::dns_udp(
            "192.0.2.7",
            "198.51.100.53",
            5353,
            &DnsQuery::name(name, 1).build(),
        )
        .build()
    };
    let raw = write::pcap(
        LINKTYPE_ETHERNET,
        false,
        true,
        &[
            (0, q("blocked.test")),
            (1, q("fine.test")),
            (2, q("blocked.test")),
        ],
    );
    let records = capture::read(&raw).expect("capture");
    let got = replay::run(&p, &records).expect("replay");
    let verdicts: Vec<(&str, Option<&str>)> = got.iter().map(|o| (o.verdict, o.reason)).collect();
    assert_eq!(
        verdicts,
        [
            ("drop", Some(reason::name(reason::DNS_BLOCKED))),
            ("pass", None),
            ("drop", Some(reason::name(reason::DNS_BLOCKED))),
        ]
    );
    let report = replay::report(&records, got, None);
    let names: Vec<(&str, Vec<(&str, u64)>)> = report
        .names
        .iter()
        .map(|n| {
            (
                n.name.as_str(),
                n.verdicts.iter().map(|(k, v)| (*k, *v)).collect(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("blocked.test.", vec![("drop", 2)]),
            ("fine.test.", vec![("allow", 1)])
        ]
    );
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("palisade-replay-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        Self(d)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn palisade(args: &[&Path]) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("replay")
        .args(args)
        .output()
        .expect("run palisade");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = if stdout.trim_start().starts_with('{') {
        serde_json::from_str(&stdout).expect("one JSON object")
    } else {
        serde_json::Value::Null
    };
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_prints_one_json_object_and_exits_by_drops() {
    let s = Scratch::new("cli");
    let strict = s.file("strict.toml", POLICY.as_bytes());
    let open = s.file("open.toml", b"[firewall]\ndefault = \"allow\"\n");
    let f = frames();
    let stamped: Vec<(u64, Vec<u8>)> = f.iter().map(|b| (0, b.clone())).collect();
    let pcap = s.file(
        "t.pcap",
        &write::pcap(LINKTYPE_ETHERNET, false, false, &stamped),
    );
    let p = policy(POLICY);
    let want: Vec<_> = f.iter().map(|b| expected(&p, b)).collect();
    let want_drops = want.iter().filter(|w| w.0 == "drop").count() as u64;

    let flag = |s: &str| PathBuf::from(s);
    let (code, j, err) = palisade(&[
        &flag("--config"),
        &strict,
        &flag("--against"),
        &open,
        &flag("--json"),
        &pcap,
    ]);
    assert_eq!(code, 0, "{err}");
    let totals = &j["totals"];
    assert_eq!(totals["packets"], f.len() as u64);
    assert_eq!(totals["verdict"]["drop"], want_drops);
    assert_eq!(totals["verdict"]["pass"], f.len() as u64 - want_drops);
    assert_eq!(totals["verdict"]["tx"], 0);
    let by_reason = |r: u32| want.iter().filter(|w| w.1 == Some(reason::name(r))).count() as u64;
    assert_eq!(totals["reason"]["rule"], by_reason(reason::RULE));
    assert_eq!(totals["reason"]["default"], by_reason(reason::DEFAULT));
    assert_eq!(
        j["rules"]["no-telnet"],
        want.iter().filter(|w| w.2 == "no-telnet").count() as u64
    );
    assert_eq!(
        j["broken_flows"].as_array().expect("array").len() as u64,
        want_drops,
        "every dropped test packet is a flow of its own"
    );
    // Everything the strict policy drops, the open one passes: those are the differences.
    let diffs = j["against"]["differences"].as_array().expect("array");
    assert_eq!(diffs.len() as u64, want_drops);
    for d in diffs {
        assert_eq!(d["policy"]["verdict"], "drop");
        assert_eq!(d["against"]["verdict"], "pass");
    }
    assert_eq!(j["against"]["totals"]["verdict"]["drop"], 0);
    assert_eq!(j["packets"].as_array().expect("array").len(), f.len());

    // A CI step: drops make it fail with status 3; a policy that drops nothing passes.
    let (code, _, err) = palisade(&[
        &flag("--config"),
        &strict,
        &flag("--expect-no-drops"),
        &pcap,
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("{want_drops} of {} packets", f.len())),
        "{err}"
    );
    let (code, _, err) = palisade(&[&flag("--config"), &open, &flag("--expect-no-drops"), &pcap]);
    assert_eq!(code, 0, "{err}");

    // A capture cut inside its second packet is an error naming the place.
    let raw = write::pcap(LINKTYPE_ETHERNET, false, false, &stamped);
    let cut = 24 + 16 + f[0].len() + 16 + 3;
    let cut_file = s.file("cut.pcap", &raw[..cut]);
    let (code, _, err) = palisade(&[&flag("--config"), &strict, &cut_file]);
    assert_eq!(code, 1);
    assert!(err.contains("packet 2 (byte offset"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // A bad policy names its place and runs nothing.
    let bad = s.file("bad.toml", b"[firewall]\ndefault = \"maybe\"\n");
    let (code, _, err) = palisade(&[&flag("--config"), &bad, &pcap]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.toml") && err.contains("default"), "{err}");
}

#[test]
fn host_addresses_give_ethernet_captures_their_direction() {
    let s = Scratch::new("host");
    let stateful = s.file(
        "stateful.toml",
        b"[firewall]\ndefault = \"drop\"\nstateful = true\n",
    );
    let out = Frame::udp("192.0.2.10", "198.51.100.1", 40000, 5300).build();
    let back = Frame::udp("198.51.100.1", "192.0.2.10", 5300, 40000).build();
    let pcap = s.file(
        "eth.pcap",
        &write::pcap(
            LINKTYPE_ETHERNET,
            false,
            false,
            &[(0, out), (1, back.clone()), (2, back)],
        ),
    );
    let flag = |s: &str| PathBuf::from(s);
    let verdicts = |j: &serde_json::Value| -> Vec<(String, String)> {
        j["packets"]
            .as_array()
            .expect("packets")
            .iter()
            .map(|p| {
                (
                    p["direction"].as_str().unwrap_or_default().to_string(),
                    p["verdict"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let pair = |d: &str, v: &str| (d.to_string(), v.to_string());
    // Without --host every packet arrives: the request and its replies are all dropped.
    let (code, j, err) = palisade(&[&flag("--config"), &stateful, &flag("--json"), &pcap]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        verdicts(&j),
        [pair("in", "drop"), pair("in", "drop"), pair("in", "drop")]
    );
    // With it the request leaves the host, and its replies pass as replies.
    let (code, j, err) = palisade(&[
        &flag("--config"),
        &stateful,
        &flag("--host"),
        &flag("192.0.2.0/28"),
        &flag("--json"),
        &pcap,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        verdicts(&j),
        [pair("out", "pass"), pair("in", "pass"), pair("in", "pass")]
    );
    let (code, _, err) = palisade(&[
        &flag("--config"),
        &stateful,
        &flag("--host"),
        &flag("192.0.2.300"),
        &pcap,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--host 192.0.2.300"), "{err}");
}

#[test]
fn shell_completions_know_replay_and_its_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["completions", shell])
            .output()
            .expect("run palisade");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        for word in ["replay", "expect-no-drops", "against", "host"] {
            assert!(text.contains(word), "{shell} completions lack {word}");
        }
    }
}

/// What the host sends meets the cgroup DNS egress hook and the TC egress chain, and what
/// arrives meets TC ingress after XDP: a query to a blocked name leaves no further than the
/// DNS hook, and the TLS gate's verdict, decided from the ClientHello as the daemon decides
/// it, stops the server's answer and the client's next data.
#[test]
fn the_host_side_hooks_and_the_tls_gate_run_too() {
    use palisade::craft::ClientHelloSpec;
    const PSH_ACK: u8 = 0x18;
    let p = policy(
        "[dns.egress]\nmode = \"blocklist\"\nlists = [\"bad\"]\n\
         [dns.lists.bad]\nnames = [\"blocked.test\"]\n\
         [tls]\nmode = \"blocklist\"\nblock = [\"*.blocked.example\"]\n",
    );
    let q = |name: &str| {
        Frame::dns_udp(
            "192.0.2.10",
            "198.51.100.53",
            40000,
            &DnsQuery::name(name, 1).build(),
        )
        .build()
    };
    let (client, server, cport) = ("198.51.100.7", "192.0.2.10", 40001);
    let isn = 1000u32;
    let mut frames = vec![
        // Sent by the host: a blocked query, an allowed one.
        write::sll2(&q("blocked.test"), 4),
        write::sll2(&q("fine.test"), 4),
        // A client's connection to the host's port 443, its hello in two segments.
        write::sll2(
            &Frame::tcp(client, server, cport, 443, 0x02)
                .with_tcp_seq(isn)
                .build(),
            0,
        ),
    ];
    let hello = ClientHelloSpec::modern("www.blocked.example").records(16_384);
    for (k, chunk) in hello.chunks(1400).enumerate() {
        let f = Frame::tcp(client, server, cport, 443, PSH_ACK)
            .with_tcp_seq(isn + 1 + (k * 1400) as u32)
            .with_payload(chunk)
            .build();
        frames.push(write::sll2(&f, 0));
    }
    // The server's answer, then the client's next data.
    let answer = Frame::tcp(server, client, 443, cport, PSH_ACK)
        .with_payload(&[0x16, 3, 3, 0, 4, 2, 0, 0, 0])
        .build();
    frames.push(write::sll2(&answer, 4));
    let more = Frame::tcp(client, server, cport, 443, PSH_ACK)
        .with_payload(b"GET /")
        .build();
    frames.push(write::sll2(&more, 0));
    let packets: Vec<_> = frames
        .into_iter()
        .enumerate()
        .map(|(i, f)| (Some(0), i as u64, f))
        .collect();
    let records = capture::read(&write::pcapng(&[LINKTYPE_LINUX_SLL2], &packets)).expect("capture");
    let got = replay::run(&p, &records).expect("replay");
    let summary: Vec<(&str, &str, Option<&str>)> = got
        .iter()
        .map(|o| (o.direction, o.verdict, o.reason))
        .collect();
    let blocked = Some(reason::name(reason::DNS_BLOCKED));
    let tls_blocked = Some(reason::name(reason::TLS_SNI_BLOCKED));
    let n = got.len();
    assert_eq!(summary[0], ("out", "drop", blocked), "{got:#?}");
    assert_eq!(summary[1], ("out", "pass", None), "{got:#?}");
    for s in &summary[2..n - 2] {
        assert_eq!(
            *s,
            ("in", "pass", None),
            "SYN and hello segments pass: {got:#?}"
        );
    }
    assert_eq!(summary[n - 2], ("out", "drop", tls_blocked), "{got:#?}");
    assert_eq!(summary[n - 1], ("in", "drop", tls_blocked), "{got:#?}");
    // The DNS hook's names, and the gate's decision on the hello's last segment.
    assert_eq!(got[0].names[0].name, "blocked.test.");
    assert_eq!(got[0].names[0].verdict, "drop");
    let decided: Vec<_> = got.iter().filter(|o| !o.tls.is_empty()).collect();
    assert_eq!(decided.len(), 1, "{got:#?}");
    assert_eq!(decided[0].packet, n - 2, "the hello's last segment decides");
    assert_eq!(decided[0].tls[0].sni, "www.blocked.example");
    assert_eq!(decided[0].tls[0].verdict, "drop");
}
