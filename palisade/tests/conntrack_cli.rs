//! Connection tracking for operators, end to end: a daemon with a stateful policy guards
//! one end of a veth pair; real TCP, UDP and ICMP flows cross it in both directions; then
//! `palisade ct list|flush|stats`, `palisade status` and the metrics endpoint are checked
//! against those flows.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{path::Path, thread, time::Duration};

use control::{Bg, HTTP_GET, Proc, Scratch, UDP_ECHO, cli, cli_json, eventually, py, sample};
use serde_json::Value;
use support::netns::NetnsPair;

/// Default drop, replies accepted by the tracker, and a few services open on B.
const POLICY: &str = r#"
[firewall]
default = "drop"
stateful = true

[[firewall.rule]]
name = "tcp-8080"
action = "allow"
proto = "tcp"
dport = 8080

[[firewall.rule]]
name = "udp-7000"
action = "allow"
proto = "udp"
dport = 7000

[[firewall.rule]]
name = "ping"
action = "allow"
proto = "icmp"
icmp_type = 8
"#;

/// Accepts TCP connections on `addr:port` and echoes what they send, until `stopfile`
/// exists. Prints `ready` once listening.
const TCP_ECHO: &str = r"
import socket, sys, os, select
addr, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((addr, port)); l.listen(16); l.setblocking(False)
print('ready', flush=True)
conns = []
while not os.path.exists(stop):
    r, _, _ = select.select([l] + conns, [], [], 0.05)
    for s in r:
        if s is l:
            c, _ = l.accept(); conns.append(c)
        else:
            d = s.recv(4096)
            if d:
                s.sendall(d)
            else:
                conns.remove(s); s.close()
";

/// Opens `n` TCP connections to `host:port`, sends and reads back a line on each, closes
/// the first `closed` of them, prints `ready`, and keeps the rest open until `stopfile`.
const TCP_HOLD: &str = r"
import socket, sys, os, time
host, port, n, closed, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
socks = []
for i in range(n):
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b'hello\n'); assert s.recv(64) == b'hello\n'
    socks.append(s)
for s in socks[:closed]:
    s.close()
print('ready', flush=True)
while not os.path.exists(stop):
    time.sleep(0.05)
";

/// Sends one datagram from each of `n` sockets to `host:port`; prints how many were answered.
const UDP_ASK: &str = r"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
got = 0
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(b'q', (host, port))
    try:
        s.recv(64); got += 1
    except socket.timeout:
        pass
print(got)
";

fn ping(pair: &NetnsPair, ns: &str, to: &str) {
    let out = pair.exec(ns, "ping", &["-c", "2", "-i", "0.2", "-W", "2", to]);
    assert!(
        out.status.success(),
        "ping {to} from {ns}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn flows(socket: &Path, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["ct", "list", "--json"];
    args.extend_from_slice(filter);
    cli_json(socket, &args)
        .as_array()
        .expect("a JSON array")
        .clone()
}

fn by_proto(f: &[Value], proto: u64) -> Vec<&Value> {
    f.iter().filter(|x| x["proto"] == proto).collect()
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["value"].as_u64())
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

#[test]
fn operators_list_flush_and_count_tracked_flows() {
    let pair = NetnsPair::new();
    let scratch = Scratch::new("ct-cli");
    let policy = scratch.file("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let socket = scratch.socket();
    let pin_dir = scratch.pin_dir();
    let (a, b) = (pair.v4_a.as_str(), pair.v4_b.as_str());
    let metrics_port = 19_000 + std::process::id() % 1000;
    let metrics = format!("127.0.0.1:{metrics_port}");
    let _daemon = Proc::start(
        &pair,
        &pair.ns_b,
        &socket,
        &[
            "--config",
            policy.to_str().unwrap(),
            "--iface",
            &pair.if_b,
            "--pin-dir",
            pin_dir.to_str().unwrap(),
            "--metrics",
            &metrics,
            "--quiet",
        ],
    );
    let stop = scratch.file("stop");
    let stop_s = stop.to_str().unwrap();

    // Inbound TCP: A opens 3 connections to B:8080, closes one, holds two.
    let srv_b = Bg::start(&pair, &pair.ns_b, TCP_ECHO, &[b, "8080", stop_s]).ready();
    let hold_a = Bg::start(&pair, &pair.ns_a, TCP_HOLD, &[b, "8080", "3", "1", stop_s]).ready();
    // Outbound TCP: B (the guarded host) connects to A:9090; the answers come back in only
    // because the tracker recognises them.
    let srv_a = Bg::start(&pair, &pair.ns_a, TCP_ECHO, &[a, "9090", stop_s]).ready();
    let hold_b = Bg::start(&pair, &pair.ns_b, TCP_HOLD, &[a, "9090", "1", "0", stop_s]).ready();
    // UDP both ways: A asks B:7000 (allowed), B asks A:5353 (only its answers come back).
    let udp_b = Bg::start(&pair, &pair.ns_b, UDP_ECHO, &[b, "7000", stop_s]).ready();
    let udp_a = Bg::start(&pair, &pair.ns_a, UDP_ECHO, &[a, "5353", stop_s]).ready();
    assert_eq!(py(&pair, &pair.ns_a, UDP_ASK, &[b, "7000", "3"]), "3");
    assert_eq!(py(&pair, &pair.ns_b, UDP_ASK, &[a, "5353", "2"]), "2");
    // ICMP echo both ways.
    ping(&pair, &pair.ns_a, b);
    ping(&pair, &pair.ns_b, a);

    // --- ct list
    let all = flows(&socket, &[]);
    let tcp = by_proto(&all, 6);
    let udp = by_proto(&all, 17);
    let icmp = by_proto(&all, 1);
    let inbound: Vec<_> = tcp
        .iter()
        .filter(|f| f["reply_port"] == 8080 && f["orig_addr"] == a)
        .collect();
    assert_eq!(inbound.len(), 3, "three connections to B:8080: {all:#?}");
    assert_eq!(
        inbound
            .iter()
            .filter(|f| f["state"] == "established")
            .count(),
        2,
        "two held open: {inbound:#?}"
    );
    assert!(
        inbound.iter().all(|f| f["table"] == "validated"
            && f["local"] == false
            && f["packets_orig"].as_u64().unwrap() >= 3
            && f["packets_reply"].as_u64().unwrap() >= 2),
        "{inbound:#?}"
    );
    let outbound: Vec<_> = tcp
        .iter()
        .filter(|f| f["reply_port"] == 9090 && f["orig_addr"] == b)
        .collect();
    assert_eq!(outbound.len(), 1, "{all:#?}");
    assert_eq!(outbound[0]["state"], "established");
    assert_eq!(outbound[0]["local"], true, "opened by the guarded host");
    assert_eq!(udp.len(), 5, "3 + 2 UDP flows, one per socket: {all:#?}");
    assert!(
        udp.iter().all(|f| f["state"] == "replied"),
        "every datagram was answered: {udp:#?}"
    );
    assert_eq!(icmp.len(), 2, "one echo flow per ping: {all:#?}");
    assert!(icmp.iter().all(|f| f["state"] == "replied"), "{icmp:#?}");
    assert_eq!(all.len(), tcp.len() + udp.len() + icmp.len(), "{all:#?}");

    // Filters narrow: each result is exactly the matching part of the full list.
    let same = |filter: &[&str], want: &dyn Fn(&Value) -> bool| {
        let got = flows(&socket, filter);
        let expect: Vec<&Value> = all.iter().filter(|f| want(f)).collect();
        assert!(!expect.is_empty(), "{filter:?} selects something");
        assert_eq!(got.len(), expect.len(), "{filter:?}: {got:#?}");
        assert!(got.iter().all(want), "{filter:?}: {got:#?}");
    };
    same(&["--proto", "udp"], &|f| f["proto"] == 17);
    same(&["--proto", "icmp"], &|f| f["proto"] == 1);
    same(&["--dport", "8080"], &|f| f["reply_port"] == 8080);
    same(&["--port", "9090"], &|f| {
        f["reply_port"] == 9090 || f["orig_port"] == 9090
    });
    same(&["--src", b], &|f| f["orig_addr"] == b);
    same(&["--dst", &format!("{b}/32")], &|f| f["reply_addr"] == b);
    let net_a = format!("{}.0/24", a.rsplit_once('.').unwrap().0);
    same(&["--addr", &net_a], &|_| true);
    same(&["--proto", "tcp", "--state", "established"], &|f| {
        f["proto"] == 6 && f["state"] == "established"
    });
    same(&["--state", "established"], &|f| {
        f["state"] == "established" || f["state"] == "replied"
    });
    same(&["--state", "replied", "--src", a], &|f| {
        f["state"] == "replied" && f["orig_addr"] == a
    });
    assert!(flows(&socket, &["--addr", "192.0.2.0/24"]).is_empty());
    assert!(flows(&socket, &["--proto", "tcp", "--sport", "8080"]).is_empty());
    // The text form lists the same flows.
    let text = cli(
        &socket,
        &["ct", "list", "--proto", "tcp", "--dport", "9090"],
    );
    assert!(text.ok, "{text:?}");
    assert!(
        text.stdout.contains(&format!("{a}:9090")) && text.stdout.contains("1 flow\n"),
        "{text:?}"
    );

    // Bad filters are refused, naming the argument.
    for (args, want) in [
        (["--state", "bogus"], "unknown state `bogus`"),
        (["--state", "related"], "classifies packets"),
        (["--proto", "sctpx"], "unknown protocol `sctpx`"),
        (["--addr", "10.0.0.300"], "invalid address"),
    ] {
        let o = cli(&socket, &["ct", "list", args[0], args[1]]);
        assert!(!o.ok, "{args:?} accepted: {o:?}");
        assert!(
            o.stderr.contains(args[0]) && o.stderr.contains(want),
            "{args:?}: {o:?}"
        );
    }
    let o = cli(&socket, &["ct", "flush", "--src", a, "--dst", "fd00::1"]);
    assert!(
        !o.ok && o.stderr.contains("different address families"),
        "{o:?}"
    );

    // --- ct stats before any flush.
    let st0 = cli_json(&socket, &["ct", "stats", "--json"]);
    assert!(counter(&st0, "insert_new") >= 8, "{st0:#}");
    assert!(counter(&st0, "promoted") >= 8, "{st0:#}");
    assert!(counter(&st0, "accepted") > 0, "stateful accepts: {st0:#}");
    assert!(counter(&st0, "established") > 0, "{st0:#}");
    assert!(counter(&st0, "new") >= 8, "{st0:#}");
    assert!(
        st0["counters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| !c["name"].as_str().unwrap().starts_with("reserved")),
        "{st0:#}"
    );
    let census = &st0["census"];
    assert_eq!(
        census["entries"].as_u64(),
        Some(all.len() as u64),
        "{st0:#}"
    );
    assert_eq!(census["evictions"], 0, "nothing was evicted: {st0:#}");
    assert_eq!(census["flushed"], 0, "{st0:#}");
    let tops = st0["top_sources"].as_array().unwrap();
    assert_eq!(tops.len(), 2, "two addresses opened flows: {st0:#}");
    let top_a = tops.iter().find(|t| t["src"] == a).expect("A is a source");
    let from_a = all.iter().filter(|f| f["orig_addr"] == a).count() as u64;
    assert_eq!(top_a["entries"].as_u64(), Some(from_a), "{st0:#}");
    assert_eq!(tops[0]["src"], a, "A opened most: {st0:#}");
    let text = cli(&socket, &["ct", "stats"]);
    assert!(
        text.ok && text.stdout.contains("top sources:") && text.stdout.contains("promoted"),
        "{text:?}"
    );

    // --- status: the census by protocol and state.
    let js = cli_json(&socket, &["status", "--json"]);
    let ct = &js["conntrack"];
    assert_eq!(ct["entries"].as_u64(), Some(all.len() as u64), "{js:#}");
    let state = |proto: &str, state: &str| {
        ct["by_state"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["proto"] == proto && s["state"] == state)
            .and_then(|s| s["entries"].as_u64())
            .unwrap_or_else(|| panic!("no {proto} {state} in {ct:#}"))
    };
    assert_eq!(state("tcp", "established"), 3, "{ct:#}");
    assert_eq!(state("udp", "replied"), 5, "{ct:#}");
    assert_eq!(state("icmp", "replied"), 2, "{ct:#}");
    let st = cli(&socket, &["status"]);
    assert!(
        st.ok
            && st.stdout.contains("conntrack   ")
            && st.stdout.contains("tcp: ")
            && st.stdout.contains("udp: replied 5"),
        "{st:?}"
    );

    // --- metrics.
    let m = py(
        &pair,
        &pair.ns_b,
        HTTP_GET,
        &[&format!("http://{metrics}/metrics")],
    );
    assert_eq!(
        sample(&m, r#"palisade_ct_entries{proto="udp",state="replied"}"#),
        Some(5),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"palisade_ct_entries{proto="tcp",state="established"}"#
        ),
        Some(3),
        "{m}"
    );
    assert!(
        sample(&m, r#"palisade_ct_inserts_total{table="unvalidated"}"#).unwrap() >= 8,
        "{m}"
    );
    assert!(
        sample(&m, r#"palisade_ct_inserts_total{table="validated"}"#).unwrap() >= 8,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"palisade_ct_insert_failures_total{table="unvalidated"}"#
        ),
        Some(0),
        "{m}"
    );
    assert_eq!(sample(&m, "palisade_ct_evictions_total"), Some(0), "{m}");
    assert!(
        sample(&m, r#"palisade_ct_expirations_total{by="sweep"}"#).is_some(),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            &format!(r#"palisade_ct_top_source_entries{{src="{a}"}}"#)
        ),
        Some(from_a),
        "{m}"
    );
    assert!(sample(&m, "palisade_ct_sweeps_total").unwrap() > 0, "{m}");
    assert!(
        m.contains("# TYPE palisade_ct_evictions_total counter\n")
            && m.contains("# HELP palisade_ct_entries "),
        "{m}"
    );

    // --- ct flush with a filter removes only what it names.
    let udp_in = flows(&socket, &["--proto", "udp", "--dport", "7000"]);
    assert_eq!(udp_in.len(), 3);
    let fl = cli_json(
        &socket,
        &["ct", "flush", "--proto", "udp", "--dport", "7000", "--json"],
    );
    assert_eq!(fl["removed"].as_u64(), Some(3), "{fl:#}");
    assert_eq!(
        fl["remaining"].as_u64(),
        Some(all.len() as u64 - 3),
        "{fl:#}"
    );
    assert!(flows(&socket, &["--proto", "udp", "--dport", "7000"]).is_empty());
    assert_eq!(flows(&socket, &["--proto", "udp"]).len(), 2, "B's own stay");
    assert_eq!(flows(&socket, &[]).len(), all.len() - 3);
    // By state and side, in the text form.
    let o = cli(&socket, &["ct", "flush", "--proto", "icmp", "--src", a]);
    assert!(o.ok && o.stdout.starts_with("removed 1 flow ("), "{o:?}");
    let st1 = cli_json(&socket, &["ct", "stats", "--json"]);
    assert_eq!(st1["census"]["flushed"].as_u64(), Some(4), "{st1:#}");
    assert_eq!(
        st1["census"]["evictions"], 0,
        "flushes are no evictions: {st1:#}"
    );
    assert!(counter(&st1, "insert_new") >= counter(&st0, "insert_new"));
    // The held connections still work after the flush of other flows.
    assert_eq!(py(&pair, &pair.ns_a, UDP_ASK, &[b, "7000", "1"]), "1");
    let st2 = cli_json(&socket, &["ct", "stats", "--json"]);
    assert_eq!(
        counter(&st2, "insert_new"),
        counter(&st1, "insert_new") + 1,
        "a new flow after the flush: {st2:#}"
    );
    assert_eq!(
        flows(&socket, &["--proto", "udp", "--dport", "7000"]).len(),
        1
    );

    // Stop every flow, then flush everything: the count is what was listed.
    std::fs::write(&stop, b"").unwrap();
    for bg in [srv_b, hold_a, srv_a, hold_b, udp_b, udp_a] {
        bg.finish();
    }
    thread::sleep(Duration::from_millis(500));
    let before = flows(&socket, &[]).len() as u64;
    let fl = cli_json(&socket, &["ct", "flush", "--json"]);
    assert_eq!(fl["removed"].as_u64(), Some(before), "{fl:#}");
    assert_eq!(fl["remaining"], 0, "{fl:#}");
    assert!(
        eventually(Duration::from_secs(2), || flows(&socket, &[]).is_empty()),
        "tables empty after flushing everything"
    );
    let js = cli_json(&socket, &["status", "--json"]);
    assert_eq!(js["conntrack"]["entries"], 0, "{js:#}");
}
