//! End to end, DNS on ingress: a real resolver (unbound) in namespace B behind the real
//! `palisade` binary on B's veth, a real client (`dig`) in namespace A, over IPv4 and IPv6,
//! UDP and TCP.
//!
//! Every name the tests ask for exists in the resolver's zone, so the resolver itself would
//! answer NOERROR with an address: an NXDOMAIN can only come from Palisade, and the resolver's
//! query log shows which queries got past it.

#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::time::Duration;

use dns_support::{
    TempDir, check_policy,
    dig::{Dig, dig},
    dns_events, require_tools, run_args,
    unbound::{Unbound, zone_answer},
    xdp::XdpPass,
};
use serde_json::Value;
use support::{daemon::Daemon, netns::NetnsPair};

/// dig's timeout for one try, in seconds.
const TIMEOUT: u32 = 2;

/// One namespace pair with unbound serving the test zone in B on both of B's addresses.
struct Setup {
    unbound: Unbound,
    pair: NetnsPair,
    dir: TempDir,
}

impl Setup {
    fn new(tag: &str) -> Self {
        require_tools();
        let pair = NetnsPair::new();
        let unbound = Unbound::start(&pair, &pair.ns_b, &[&pair.v4_b, &pair.v6_b]);
        Self {
            unbound,
            pair,
            dir: TempDir::new(tag),
        }
    }

    /// Starts palisade in B on B's veth with `policy`, after checking `palisade check` takes it.
    fn palisade(&self, policy: &str) -> Daemon {
        let path = self.dir.write("policy.toml", policy);
        check_policy(&path);
        let args = run_args(&self.dir, &path, &self.pair.if_b);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start(&self.pair, &self.pair.ns_b, &args)
    }

    /// `dig @server name qtype` from A.
    fn dig(&self, server: &str, name: &str, qtype: &str, extra: &[&str]) -> Dig {
        dig(
            &self.pair,
            &self.pair.ns_a,
            server,
            name,
            qtype,
            TIMEOUT,
            extra,
        )
    }

    /// Asks `name` before palisade runs: the resolver answers it with its zone data.
    fn baseline(&self, name: &str) {
        let d = self.dig(&self.pair.v4_b, name, "A", &[]);
        assert_eq!(
            d.status.as_deref(),
            Some("NOERROR"),
            "resolver without palisade: {d}"
        );
        assert_eq!(
            d.answers,
            [zone_answer(name, "A")],
            "resolver without palisade: {d}"
        );
    }
}

/// The resolver's real answer.
fn assert_resolves(d: &Dig, name: &str, qtype: &str) {
    assert_eq!(d.status.as_deref(), Some("NOERROR"), "{d}");
    assert_eq!(d.answers, [zone_answer(name, qtype)], "{d}");
    assert!(
        d.has_flag("aa"),
        "the resolver's answers are authoritative: {d}"
    );
}

/// Palisade's NXDOMAIN: fast, not authoritative (the resolver's would be), no records, the
/// question echoed exactly as sent.
fn assert_palisade_nxdomain(d: &Dig, name: &str, qtype: &str) {
    assert_eq!(d.status.as_deref(), Some("NXDOMAIN"), "{d}");
    assert!(d.answers.is_empty(), "{d}");
    for f in ["qr", "rd", "ra"] {
        assert!(d.has_flag(f), "flag {f} in {:?}: {d}", d.flags);
    }
    assert!(
        !d.has_flag("aa") && !d.has_flag("tc"),
        "Palisade's answer is not authoritative: {d}"
    );
    let q = d.question.as_deref().unwrap_or_default();
    let f: Vec<&str> = q.split_whitespace().collect();
    assert_eq!(
        f,
        [format!(";{name}.").as_str(), "IN", qtype],
        "question echoed as sent: {d}"
    );
    let qt = d.query_time.expect("dig reports the query time");
    assert!(qt < Duration::from_millis(500), "answered in {qt:?}: {d}");
    assert!(d.elapsed < Duration::from_secs(u64::from(TIMEOUT)), "{d}");
}

/// dig got no answer at all and gave up after its timeout.
fn assert_no_answer(d: &Dig) {
    assert!(!d.answered(), "{d}");
    assert_ne!(d.exit_code, Some(0), "{d}");
    assert!(
        d.elapsed >= Duration::from_millis(u64::from(TIMEOUT) * 1000 - 100),
        "{d}"
    );
}

/// Events for `name` (the lower-case dotted form palisade prints).
fn events_for<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["name"] == name).collect()
}

fn assert_event(e: &Value, verdict: &str, reason: &str, qtype: &str, client: &str, tcp: bool) {
    assert_eq!(e["scope"], "ingress", "{e}");
    assert_eq!(e["verdict"], verdict, "{e}");
    assert_eq!(e["reason"], reason, "{e}");
    assert_eq!(e["qtype"], qtype, "{e}");
    assert_eq!(e["client"], client, "{e}");
    assert_eq!(e["tcp"], tcp, "{e}");
    assert!(
        e.get("pid").is_none() && e.get("comm").is_none(),
        "no process on ingress: {e}"
    );
}

#[test]
fn blocklist_answers_nxdomain_over_udp_and_drops_tcp() {
    let s = Setup::new("dns-blocklist");
    let p = &s.pair;
    // Palisade's XDP_TX answer crosses the veth only if A's end has an XDP program.
    let _xdp = XdpPass::attach(&p.ns_a, &p.if_a);
    s.baseline("blocked.test");
    let before = s.unbound.queries().len();

    let daemon = s.palisade(
        r#"
[dns.ingress]
mode = "blocklist"
action = "nxdomain"
lists = ["bad"]
log_allowed = true

[dns.lists.bad]
names = ["blocked.test"]
"#,
    );

    // Blocked, over both families; letter case is kept in the echoed question.
    let v4 = s.dig(&p.v4_b, "BloCked.TEST", "A", &[]);
    assert_palisade_nxdomain(&v4, "BloCked.TEST", "A");
    let v6 = s.dig(&p.v6_b, "blocked.test", "AAAA", &[]);
    assert_palisade_nxdomain(&v6, "blocked.test", "AAAA");
    // Allowed: the resolver's own answer, both families.
    assert_resolves(
        &s.dig(&p.v4_b, "allowed.test", "A", &[]),
        "allowed.test",
        "A",
    );
    assert_resolves(
        &s.dig(&p.v6_b, "allowed.test", "AAAA", &[]),
        "allowed.test",
        "AAAA",
    );
    // A name below a blocked one is not blocked without a wildcard or `subdomains`.
    assert_resolves(
        &s.dig(&p.v4_b, "ads.blocked.test", "A", &[]),
        "ads.blocked.test",
        "A",
    );
    // TCP: a blocked query is dropped (never answered), an allowed one resolves.
    let tcp = s.dig(&p.v4_b, "blocked.test", "A", &["+tcp"]);
    assert_no_answer(&tcp);
    assert_resolves(
        &s.dig(&p.v6_b, "allowed.test", "A", &["+tcp"]),
        "allowed.test",
        "A",
    );

    let t = daemon.stop();
    assert!(t.success, "palisade exited with an error: {:?}", t.stderr);
    assert!(
        t.stderr.iter().any(|l| l.contains("0 events lost")),
        "{:?}",
        t.stderr
    );
    let events = dns_events(&t.stdout);

    let blocked = events_for(&events, "blocked.test.");
    let udp: Vec<_> = blocked.iter().filter(|e| e["tcp"] == false).collect();
    assert_eq!(
        udp.len(),
        2,
        "one event per blocked UDP query: {:#?}",
        t.stdout
    );
    assert_event(udp[0], "nxdomain", "dns-blocked", "A", &p.v4_a, false);
    assert_eq!(udp[0]["list"], 0, "{}", udp[0]);
    assert_event(udp[1], "nxdomain", "dns-blocked", "AAAA", &p.v6_a, false);
    let tcp_events: Vec<_> = blocked.iter().filter(|e| e["tcp"] == true).collect();
    assert!(
        !tcp_events.is_empty(),
        "the TCP query was reported: {:#?}",
        t.stdout
    );
    for e in tcp_events {
        assert_event(e, "drop", "dns-blocked", "A", &p.v4_a, true);
    }
    let allowed = events_for(&events, "allowed.test.");
    assert_eq!(
        allowed.len(),
        3,
        "log_allowed reports each allowed query: {:#?}",
        t.stdout
    );
    assert_event(allowed[0], "allow", "pass", "A", &p.v4_a, false);
    assert_event(allowed[1], "allow", "pass", "AAAA", &p.v6_a, false);
    assert_event(allowed[2], "allow", "pass", "A", &p.v6_a, true);

    // The resolver saw every allowed query and no blocked one.
    let seen = &s.unbound.queries()[before..];
    assert!(
        seen.iter()
            .all(|q| !q.name.eq_ignore_ascii_case("blocked.test.")),
        "a blocked query reached the resolver: {seen:?}"
    );
    let allowed_seen = seen.iter().filter(|q| q.name == "allowed.test.").count();
    assert_eq!(allowed_seen, 3, "{seen:?}");
    assert!(
        seen.iter()
            .any(|q| q.name == "ads.blocked.test." && q.client == p.v4_a),
        "{seen:?}"
    );
}

#[test]
fn allowlist_with_drop_action_leaves_other_names_unanswered() {
    let s = Setup::new("dns-allowlist");
    let p = &s.pair;
    s.baseline("other.test");
    let before = s.unbound.queries().len();

    let daemon = s.palisade(
        r#"
[dns.ingress]
mode = "allowlist"
action = "drop"
lists = ["good"]

[dns.lists.good]
names = ["allowed.test"]
"#,
    );

    assert_resolves(
        &s.dig(&p.v4_b, "allowed.test", "A", &[]),
        "allowed.test",
        "A",
    );
    assert_resolves(
        &s.dig(&p.v6_b, "ALLOWED.test", "AAAA", &[]),
        "allowed.test",
        "AAAA",
    );
    assert_no_answer(&s.dig(&p.v4_b, "other.test", "A", &[]));
    assert_no_answer(&s.dig(&p.v6_b, "blocked.test", "AAAA", &[]));
    assert_no_answer(&s.dig(&p.v4_b, "blocked.test", "A", &["+tcp"]));

    let t = daemon.stop();
    assert!(t.success, "palisade exited with an error: {:?}", t.stderr);
    let events = dns_events(&t.stdout);
    // Allowed queries are not reported without log_allowed.
    assert!(
        events_for(&events, "allowed.test.").is_empty(),
        "{:#?}",
        t.stdout
    );
    let other = events_for(&events, "other.test.");
    assert_eq!(other.len(), 1, "{:#?}", t.stdout);
    assert_event(other[0], "drop", "dns-not-allowed", "A", &p.v4_a, false);
    assert!(
        other[0].get("list").is_none(),
        "no list matched: {}",
        other[0]
    );
    let blocked = events_for(&events, "blocked.test.");
    assert!(
        blocked
            .iter()
            .any(|e| e["qtype"] == "AAAA" && e["client"] == p.v6_a.as_str() && e["tcp"] == false),
        "{:#?}",
        t.stdout
    );
    for e in &blocked {
        assert_eq!(e["verdict"], "drop", "{e}");
        assert_eq!(e["reason"], "dns-not-allowed", "{e}");
    }
    assert!(blocked.iter().any(|e| e["tcp"] == true), "{:#?}", t.stdout);
    assert!(
        t.stderr
            .iter()
            .any(|l| l.split_whitespace().last() == Some("dns-not-allowed")),
        "summary counts the reason: {:?}",
        t.stderr
    );

    let seen = &s.unbound.queries()[before..];
    let names: Vec<&str> = seen.iter().map(|q| q.name.as_str()).collect();
    assert!(
        names
            .iter()
            .all(|n| n.eq_ignore_ascii_case("allowed.test.")),
        "only allowed queries reach the resolver: {seen:?}"
    );
    assert_eq!(names.len(), 2, "{seen:?}");
}

/// Palisade's NOERROR answer: fast, not authoritative, the question echoed as sent, and
/// exactly `answers` as its answer records.
fn assert_palisade_noerror(d: &Dig, name: &str, qtype: &str, answers: &[&str]) {
    assert_eq!(d.status.as_deref(), Some("NOERROR"), "{d}");
    assert_eq!(d.answers, answers, "{d}");
    assert!(
        d.has_flag("qr") && d.has_flag("ra") && !d.has_flag("aa"),
        "Palisade's answer, not the resolver's: {d}"
    );
    let q = d.question.as_deref().unwrap_or_default();
    let f: Vec<&str> = q.split_whitespace().collect();
    assert_eq!(f, [format!(";{name}.").as_str(), "IN", qtype], "{d}");
    let qt = d.query_time.expect("dig reports the query time");
    assert!(qt < Duration::from_millis(500), "answered in {qt:?}: {d}");
}

#[test]
fn sinkhole_and_refused_answers_reach_dig() {
    let s = Setup::new("dns-sinkhole");
    let p = &s.pair;
    let _xdp = XdpPass::attach(&p.ns_a, &p.if_a);
    s.baseline("blocked.test");
    let before = s.unbound.queries().len();

    let daemon = s.palisade(
        r#"
[dns.ingress]
mode = "blocklist"
action = "sinkhole"
sinkhole_ipv4 = "192.0.2.1"
sinkhole_ipv6 = "2001:db8::1"
sinkhole_ttl = 120
lists = ["bad"]

[dns.lists.bad]
names = ["blocked.test"]
subdomains = true
"#,
    );
    // A and AAAA get the sinkhole's addresses, over both families, with +dnssec's OPT
    // record and without; other types get NODATA; an allowed name still resolves.
    let a = s.dig(&p.v4_b, "Blocked.Test", "A", &[]);
    assert_palisade_noerror(&a, "Blocked.Test", "A", &["192.0.2.1"]);
    assert!(
        a.stdout.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 5 && f[1..] == ["120", "IN", "A", "192.0.2.1"]
        }),
        "an answer record with TTL 120: {a}"
    );
    let aaaa = s.dig(&p.v6_b, "www.blocked.test", "AAAA", &["+dnssec"]);
    assert_palisade_noerror(&aaaa, "www.blocked.test", "AAAA", &["2001:db8::1"]);
    let mx = s.dig(&p.v4_b, "blocked.test", "MX", &[]);
    assert_palisade_noerror(&mx, "blocked.test", "MX", &[]);
    assert_resolves(
        &s.dig(&p.v4_b, "allowed.test", "A", &[]),
        "allowed.test",
        "A",
    );
    let t = daemon.stop();
    assert!(t.success, "palisade exited with an error: {:?}", t.stderr);
    let events = dns_events(&t.stdout);
    let blocked = events_for(&events, "blocked.test.");
    assert!(!blocked.is_empty(), "{:#?}", t.stdout);
    for e in &blocked {
        assert_eq!(e["verdict"], "sinkhole", "{e}");
    }

    let daemon = s.palisade(
        r#"
[dns.ingress]
mode = "blocklist"
action = "refused"
lists = ["bad"]

[dns.lists.bad]
names = ["blocked.test"]
"#,
    );
    for (server, qtype) in [(&p.v4_b, "A"), (&p.v6_b, "AAAA")] {
        let d = s.dig(server, "blocked.test", qtype, &[]);
        assert_eq!(d.status.as_deref(), Some("REFUSED"), "{d}");
        assert!(d.answers.is_empty() && !d.has_flag("aa"), "{d}");
        let qt = d.query_time.expect("dig reports the query time");
        assert!(qt < Duration::from_millis(500), "answered in {qt:?}: {d}");
    }
    let t = daemon.stop();
    assert!(t.success, "palisade exited with an error: {:?}", t.stderr);
    let events = dns_events(&t.stdout);
    assert!(
        events_for(&events, "blocked.test.")
            .iter()
            .all(|e| e["verdict"] == "refused"),
        "{:#?}",
        t.stdout
    );

    // Only the allowed query reached the resolver.
    let seen = &s.unbound.queries()[before..];
    let names: Vec<&str> = seen.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["allowed.test."], "{seen:?}");
}

#[test]
fn wildcard_blocks_names_below_but_not_the_apex() {
    let s = Setup::new("dns-wildcard");
    let p = &s.pair;
    let _xdp = XdpPass::attach(&p.ns_a, &p.if_a);
    s.baseline("ads.blocked.test");
    let before = s.unbound.queries().len();

    let daemon = s.palisade(
        r#"
[dns.ingress]
mode = "blocklist"
lists = ["ads"]

[dns.lists.ads]
names = ["*.blocked.test"]
"#,
    );

    assert_palisade_nxdomain(
        &s.dig(&p.v4_b, "ads.blocked.test", "A", &[]),
        "ads.blocked.test",
        "A",
    );
    assert_palisade_nxdomain(
        &s.dig(&p.v6_b, "deep.ads.blocked.test", "A", &[]),
        "deep.ads.blocked.test",
        "A",
    );
    assert_palisade_nxdomain(
        &s.dig(&p.v6_b, "Ads.Blocked.Test", "AAAA", &[]),
        "Ads.Blocked.Test",
        "AAAA",
    );
    // `*.blocked.test` does not cover `blocked.test` itself.
    assert_resolves(
        &s.dig(&p.v4_b, "blocked.test", "A", &[]),
        "blocked.test",
        "A",
    );
    assert_resolves(
        &s.dig(&p.v6_b, "blocked.test", "AAAA", &[]),
        "blocked.test",
        "AAAA",
    );
    assert_resolves(
        &s.dig(&p.v4_b, "allowed.test", "A", &[]),
        "allowed.test",
        "A",
    );

    let t = daemon.stop();
    assert!(t.success, "palisade exited with an error: {:?}", t.stderr);
    let events = dns_events(&t.stdout);
    let ads = events_for(&events, "ads.blocked.test.");
    assert_eq!(ads.len(), 2, "{:#?}", t.stdout);
    assert_event(ads[0], "nxdomain", "dns-blocked", "A", &p.v4_a, false);
    assert_event(ads[1], "nxdomain", "dns-blocked", "AAAA", &p.v6_a, false);
    let deep = events_for(&events, "deep.ads.blocked.test.");
    assert_eq!(deep.len(), 1, "{:#?}", t.stdout);
    assert_event(deep[0], "nxdomain", "dns-blocked", "A", &p.v6_a, false);
    assert!(
        events_for(&events, "blocked.test.").is_empty(),
        "the apex is not blocked: {:#?}",
        t.stdout
    );

    let seen = &s.unbound.queries()[before..];
    assert!(
        seen.iter()
            .all(|q| !q.name.to_ascii_lowercase().ends_with(".blocked.test.")),
        "a blocked query reached the resolver: {seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|q| q.name == "blocked.test.").count(),
        2,
        "{seen:?}"
    );
}

/// dnsmasq serving local answers in a namespace, stopped on drop.
struct Dnsmasq {
    child: std::process::Child,
}

impl Dnsmasq {
    /// dnsmasq in `ns` on `addr`, answering every name at and below `names` (with the
    /// address given) and nothing else.
    fn start(ns: &str, addr: &str, names: &[(&str, &str)], dir: &TempDir) -> Self {
        dns_support::require("dnsmasq", "dnsmasq");
        let mut cmd = support::netns::command_in(ns, "dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
            "--user=root",
            "--pid-file=",
            "--log-queries",
        ])
        .arg(format!("--listen-address={addr}"))
        .arg(format!(
            "--log-facility={}",
            dir.path().join("dnsmasq.log").display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        for (name, a) in names {
            cmd.arg(format!("--address=/{name}/{a}"));
        }
        let child = cmd.spawn().expect("spawn dnsmasq");
        let me = Self { child };
        // Ready when it answers.
        let server = addr.to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let probe = udp_exchange(ns, &server, &plain_query(0x5151, names[0].0));
            if probe.is_some() {
                return me;
            }
        }
        panic!("dnsmasq did not answer within 5 s");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A standard query (RD) for `name`, type A.
fn plain_query(id: u16, name: &str) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

/// The bypass: a first label whose bytes spell `name` in wire form, then a compression
/// pointer to them. dnsmasq reads the name as that label followed by `name`.
fn pointer_query(id: u16, name: &str) -> Vec<u8> {
    let mut inner = Vec::new();
    for l in name.split('.') {
        inner.push(l.len() as u8);
        inner.extend_from_slice(l.as_bytes());
    }
    inner.push(0);
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    m.push(inner.len() as u8);
    m.extend_from_slice(&inner);
    m.extend_from_slice(&[0xc0, 13, 0, 1, 0, 1]);
    m
}

/// Sends `msg` over UDP from namespace `ns` to port 53 of `server`; the reply with the same
/// ID, if one comes within 1 s.
fn udp_exchange(ns: &str, server: &str, msg: &[u8]) -> Option<Vec<u8>> {
    let (server, msg) = (server.to_owned(), msg.to_vec());
    support::netns::in_netns(ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        s.send_to(&msg, (server.as_str(), 53)).expect("send");
        let mut buf = [0u8; 1500];
        loop {
            match s.recv(&mut buf) {
                Ok(n) if n >= 12 && buf[..2] == msg[..2] => return Some(buf[..n].to_vec()),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
}

#[test]
fn a_name_behind_a_compression_pointer_gets_no_answer_from_dnsmasq() {
    let pair = NetnsPair::new();
    let dir = TempDir::new("dns-pointer");
    let _dnsmasq = Dnsmasq::start(
        &pair.ns_b,
        &pair.v4_b,
        &[
            ("ok.example.com", "192.0.2.1"),
            ("ads.example.com", "192.0.2.99"),
        ],
        &dir,
    );
    let (a, b) = (&pair.ns_a, &pair.v4_b);
    // Without Palisade, dnsmasq answers the listed name behind a pointer with its address.
    let bypass = pointer_query(0x4242, "ads.example.com");
    let r = udp_exchange(a, b, &bypass).expect("dnsmasq answers the pointer query");
    assert_eq!((r[3] & 0x0f, r[7]), (0, 1), "NOERROR, one answer: {r:02x?}");
    assert!(r.ends_with(&[192, 0, 2, 99]), "{r:02x?}");

    let run = |policy: &str| {
        let path = dir.write("policy.toml", policy);
        check_policy(&path);
        let args = run_args(&dir, &path, &pair.if_b);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start(&pair, &pair.ns_b, &args)
    };
    // A blocklist with the defaults but `action = "drop"`: the query never reaches dnsmasq,
    // nor does one whose pointer points forward (malformed, dropped by default).
    let daemon = run(
        "[dns.ingress]\nmode = \"blocklist\"\naction = \"drop\"\nlists = [\"bad\"]\n\
         [dns.lists.bad]\nnames = [\"ads.example.com\"]\nsubdomains = true\n",
    );
    assert_eq!(udp_exchange(a, b, &bypass), None, "the bypass is dropped");
    let mut forward = plain_query(0x4343, "x");
    let at = forward.len() + 1;
    forward.truncate(12 + 2);
    forward.extend_from_slice(&[0xc0, at as u8, 0, 1, 0, 1]);
    forward.extend_from_slice(&pointer_query(0, "ads.example.com")[13..13 + 17]);
    assert_eq!(
        udp_exchange(a, b, &forward),
        None,
        "a forward pointer is dropped"
    );
    // Other names still resolve through Palisade.
    let ok = udp_exchange(a, b, &plain_query(0x4444, "ok.example.com"))
        .expect("an allowed name resolves");
    assert!(ok.ends_with(&[192, 0, 2, 1]), "{ok:02x?}");
    let t = daemon.stop();
    assert!(t.success, "palisade exited with an error: {:?}", t.stderr);
    let events = dns_events(&t.stdout);
    let blocked: Vec<_> = events
        .iter()
        .filter(|e| e["reason"] == "dns-blocked")
        .collect();
    assert_eq!(blocked.len(), 1, "{events:#?}");
    assert!(
        blocked[0]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with(".ads.example.com.")),
        "the event names the logical name: {}",
        blocked[0]
    );
    assert_eq!(blocked[0]["verdict"], "drop", "{}", blocked[0]);
    assert!(
        events.iter().any(|e| e["reason"] == "dns-malformed"),
        "{events:#?}"
    );

    // With the NXDOMAIN action the client gets Palisade's answer, not dnsmasq's address.
    let _xdp = XdpPass::attach(&pair.ns_a, &pair.if_a);
    let daemon = run("[dns.ingress]\nmode = \"blocklist\"\nlists = [\"bad\"]\n\
         [dns.lists.bad]\nnames = [\"ads.example.com\"]\nsubdomains = true\n");
    let r = udp_exchange(a, b, &bypass).expect("Palisade answers");
    assert_eq!((r[3] & 0x0f, r[7]), (3, 0), "NXDOMAIN, no answer: {r:02x?}");
    assert_eq!(
        &r[12..],
        &bypass[12..],
        "the question echoed, pointer included"
    );
    let t = daemon.stop();
    assert!(t.success, "palisade exited with an error: {:?}", t.stderr);
}
