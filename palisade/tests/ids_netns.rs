//! End to end: `[ids]` with the real daemon, Python's `http.server` in the guarded namespace
//! and `curl` on the other side of a veth pair.
//! - a request whose URI an `alert` rule matches raises an `ids` event (sid, msg, classtype),
//!   and `palisade ids flows` shows the flow's coverage with the sid;
//! - a `drop` rule that matches a request header cuts the download it started: curl fails,
//!   the event says `drop` with reason `ids-drop` and the match-to-drop latency, the client's
//!   later packets are dropped in XDP (reason `ids-drop`), and other flows, even from the same
//!   client to the same server, go on;
//! - a reload with a rule file that uses an unsupported keyword is refused at `file:line` and
//!   the running rules keep alerting;
//! - `palisade stats`, `palisade status` and the metrics endpoint carry the counters, and
//!   alerts reach an OTLP collector in the daemon's namespace like the other events.
//!
//! Needs root, `curl` and `python3`. Run with
//! `cargo test --release -p palisade --test ids_netns -- --test-threads=1`.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use control::{BgCli, GuardedHost, cli, cli_json, eventually, wait_for_streams};
use palisade_common::{
    ids::{IS_FLOW_DROPS, IS_RECORDS},
    reason,
};
use support::{
    netns::{NetnsPair, command_in, exec_in},
    otlp::{Collector, attrs, records},
};

const RULES: &str = r#"# The lab's rules.
alert tcp any any -> any 8080 (msg:"admin page probed"; flow:established,to_server; content:"GET"; depth:3; content:"/secret-admin"; distance:1; within:20; classtype:web-application-attack; sid:1001; rev:2;)
drop tcp any any -> any 8080 (msg:"exfiltration tool"; flow:established,to_server; content:"user-agent: evil-exfil"; nocase; classtype:policy-violation; sid:1002; rev:1;)
"#;

const BAD_RULES: &str = r#"alert tcp any any -> any 8080 (msg:"fine"; content:"GET"; sid:1;)
alert tcp any any -> any 8080 (msg:"not supported"; content:"x"; byte_test:1,>,2,0; sid:2;)
"#;

const POLICY: &str = "[ids]\nrules = [\"ids.rules\"]\nports = [8080]\n";

/// `python3 -m http.server 8080` in `ns`, serving `dir` (which holds an 8 MiB file).
struct Server(Child);

impl Server {
    fn start(ns: &str, dir: &std::path::Path) -> Self {
        std::fs::write(dir.join("big.bin"), vec![b'x'; 8 << 20]).unwrap();
        std::fs::write(dir.join("index.html"), "hello from the lab\n").unwrap();
        let server = Self(
            command_in(ns, "python3")
                .args([
                    "-m",
                    "http.server",
                    "8080",
                    "--bind",
                    "0.0.0.0",
                    "--directory",
                ])
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 -m http.server"),
        );
        let up = eventually(Duration::from_secs(10), || {
            let out = exec_in(ns, "ss", &["-ltn", "sport = :8080"]);
            String::from_utf8_lossy(&out.stdout).contains(":8080")
        });
        assert!(up, "http.server did not listen");
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `curl` from `ns` with `args`; returns (exit status, stdout, stderr).
fn curl(ns: &str, args: &[&str]) -> (i32, String, String) {
    let out = command_in(ns, "curl")
        .args(["-sS", "--http1.1"])
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lab: a server namespace guarded by the daemon with the rules, a client namespace.
/// With `otlp`, a collector in the daemon's namespace receives its events.
fn lab(tag: &str, otlp: bool) -> (NetnsPair, GuardedHost, Server, Option<Collector>) {
    let pair = NetnsPair::new();
    let collector = otlp.then(|| Collector::start(tag, Some(&pair.ns_a)));
    let endpoint = collector
        .as_ref()
        .map(|c| format!("http://127.0.0.1:{}", c.http));
    let mut host = GuardedHost::new(tag, POLICY, &pair.ns_a, &pair.if_a);
    std::fs::write(host.scratch.file("ids.rules"), RULES).unwrap();
    match &endpoint {
        Some(e) => host.start_with(&["--otlp-endpoint", e, "--otlp-protocol", "http/protobuf"]),
        None => host.start(),
    }
    let www = host.scratch.file("www");
    std::fs::create_dir_all(&www).unwrap();
    let server = Server::start(&pair.ns_a, &www);
    (pair, host, server, collector)
}

fn events_of(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn alert_rule_raises_an_event_and_flows_show_the_coverage() {
    // Alerts are exported over OTLP like the daemon's other events.
    let (pair, host, _server, collector) = lab("ids-netns-alert", true);
    let events = BgCli::start(&host.socket(), &["events", "--kind", "ids", "--json"]);
    wait_for_streams(&host.socket(), 1);
    let base = format!("http://{}:8080", pair.v4_a);
    // A plain request: served, no alert.
    let (code, body, log) = curl(&pair.ns_b, &[&format!("{base}/")]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(body, "hello from the lab\n");
    // The probed URI: served too (404), and alerted on.
    let (code, _, log) = curl(&pair.ns_b, &[&format!("{base}/secret-admin/login")]);
    assert_eq!(code, 0, "{log}");
    let ok = eventually(Duration::from_secs(5), || {
        events_of(&events.lines.lock().unwrap())
            .iter()
            .any(|e| e["sid"] == 1001)
    });
    let lines = events.finish(Duration::from_millis(200));
    assert!(ok, "no alert for sid 1001: {lines:?}");
    let evs = events_of(&lines);
    assert_eq!(
        evs.len(),
        1,
        "one alert, none for the plain request: {lines:?}"
    );
    let e = &evs[0];
    assert_eq!(e["kind"], "ids");
    assert_eq!(e["verdict"], "alert");
    assert_eq!(e["action"], "alert");
    assert_eq!(e["msg"], "admin page probed");
    assert_eq!(e["classtype"], "web-application-attack");
    assert_eq!(e["rev"], 2);
    assert_eq!(e["client"], pair.v4_b.as_str());
    assert_eq!(e["server"], pair.v4_a.as_str());
    assert_eq!(e["server_port"], 8080);
    assert_eq!(e["direction"], "to_server");
    assert!(e.get("reason").is_none(), "{e}");
    // The flows, from the daemon: both requests' flows, the second with its sid.
    let flows = cli_json(&host.socket(), &["ids", "flows", "--json"]);
    let flows = flows.as_array().unwrap();
    let probed: Vec<_> = flows
        .iter()
        .filter(|f| f["sids"].as_array().unwrap().contains(&1001.into()))
        .collect();
    assert_eq!(probed.len(), 1, "{flows:?}");
    let f = probed[0];
    assert_eq!(f["server_port"], 8080);
    assert_eq!(f["client"], pair.v4_b.as_str());
    // Rule 1002's content is not anchored in the first bytes: port 8080's group sends
    // every flow.
    assert_eq!(f["state"], "port-group-all");
    assert_eq!(f["dropped"], false);
    assert!(f["inspected_bytes"].as_u64().unwrap() > 0, "{f}");
    assert!(
        f["packets"].as_u64().unwrap() >= 2,
        "request and response: {f}"
    );
    assert!(flows.len() >= 2, "the plain request's flow too: {flows:?}");
    // Counters: in `palisade stats` and in Prometheus.
    let stats = cli_json(&host.socket(), &["stats", "--json"]);
    let ids = stats["counters"]["ids"].as_array().unwrap();
    let value = |name: &str| {
        ids.iter()
            .find(|n| n["name"] == name)
            .and_then(|n| n["value"].as_u64())
    };
    assert_eq!(value("sid_1001"), Some(1), "{ids:?}");
    assert_eq!(value("alerts"), Some(1), "{ids:?}");
    assert!(value("records").unwrap() >= 2, "{ids:?}");
    assert_eq!(value("events_lost"), Some(0), "{ids:?}");
    assert!(value("payloads_truncated").is_some(), "{ids:?}");
    assert!(value("flows_sampled_out").is_some(), "{ids:?}");
    assert!(
        host.scratch.counter("IDS_STATS", IS_RECORDS) >= 2,
        "the kernel sent the requests"
    );
    // `palisade status` shows the IDS's counters.
    let status = cli_json(&host.socket(), &["status", "--json"]);
    let ids = status["ids"].as_array().unwrap();
    assert!(
        ids.iter()
            .any(|n| n["name"] == "sid_1001" && n["value"] == 1),
        "{status}"
    );
    let text = cli(&host.socket(), &["status"]).stdout;
    let line = text
        .lines()
        .find(|l| l.starts_with("ids"))
        .unwrap_or_default();
    assert!(line.contains("alerts 1"), "{text}");
    // The alert reached the OTLP collector as a log record of its own (INFO: an alert).
    let collector = collector.unwrap();
    let ok = eventually(Duration::from_secs(10), || {
        collector
            .requests()
            .iter()
            .flat_map(records)
            .any(|r| r["eventName"] == "palisade.ids")
    });
    let recs: Vec<serde_json::Value> = collector.requests().iter().flat_map(records).collect();
    assert!(ok, "no palisade.ids record: {recs:?}");
    let alert = recs
        .iter()
        .find(|r| r["eventName"] == "palisade.ids")
        .unwrap();
    let a = attrs(&alert["attributes"]);
    assert_eq!(a["palisade.sid"], "1001", "{alert}");
    assert_eq!(a["palisade.msg"], "admin page probed", "{alert}");
    assert_eq!(a["palisade.verdict"], "alert", "{alert}");
    assert_eq!(alert["severityNumber"], "SEVERITY_NUMBER_INFO", "{alert}");
    // A reload with an unsupported keyword is refused at its line; the rules in force stay.
    std::fs::write(host.scratch.file("ids.rules"), BAD_RULES).unwrap();
    let r = cli(&host.socket(), &["reload"]);
    assert!(!r.ok, "{r:?}");
    let text = format!("{}{}", r.stdout, r.stderr);
    assert!(text.contains("ids.rules:2"), "{text}");
    assert!(text.contains("byte_test"), "{text}");
    let events = BgCli::start(&host.socket(), &["events", "--kind", "ids", "--json"]);
    wait_for_streams(&host.socket(), 1);
    let (code, _, log) = curl(&pair.ns_b, &[&format!("{base}/secret-admin/")]);
    assert_eq!(code, 0, "{log}");
    let ok = eventually(Duration::from_secs(5), || {
        events_of(&events.lines.lock().unwrap())
            .iter()
            .any(|e| e["sid"] == 1001)
    });
    assert!(ok, "the running rules still alert after the refused reload");
}

#[test]
fn drop_rule_cuts_its_flow_in_xdp_and_leaves_the_others() {
    let (pair, host, _server, _) = lab("ids-netns-drop", false);
    let events = BgCli::start(&host.socket(), &["events", "--kind", "ids", "--json"]);
    wait_for_streams(&host.socket(), 1);
    let base = format!("http://{}:8080", pair.v4_a);
    // A slow download that the drop rule matches (its User-Agent): cut within moments.
    let cut = command_in(&pair.ns_b, "curl")
        .args([
            "-sS",
            "--http1.1",
            "--limit-rate",
            "500k",
            "--max-time",
            "6",
            "-A",
            "Evil-Exfil/1.0",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
        ])
        .arg(format!("{base}/big.bin"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");
    // Meanwhile, the same client's other flows to the same server are served.
    thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let (code, body, log) = curl(&pair.ns_b, &[&format!("{base}/")]);
        assert_eq!(code, 0, "{log}");
        assert_eq!(body, "hello from the lab\n");
    }
    let (code, size, log) = curl(
        &pair.ns_b,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("{base}/big.bin"),
        ],
    );
    assert_eq!(code, 0, "a download without the header is whole: {log}");
    assert_eq!(size, (8 << 20).to_string());
    let out = cut.wait_with_output().unwrap();
    let got: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        !out.status.success(),
        "the matched download must fail; it got {got} bytes"
    );
    assert!(got < 8 << 20, "{got}");
    eprintln!(
        "matched download: curl exit {:?} after {got} of {} bytes",
        out.status.code(),
        8 << 20
    );
    let lines = events.finish(Duration::from_millis(300));
    let evs = events_of(&lines);
    let drops: Vec<_> = evs.iter().filter(|e| e["sid"] == 1002).collect();
    assert_eq!(drops.len(), 1, "{lines:?}");
    let e = drops[0];
    assert_eq!(e["verdict"], "drop");
    assert_eq!(e["action"], "drop");
    assert_eq!(e["reason"], "ids-drop");
    assert_eq!(e["msg"], "exfiltration tool");
    assert_eq!(e["classtype"], "policy-violation");
    let latency_us = e["match_to_drop_us"].as_f64().unwrap();
    assert!(latency_us > 0.0, "{e}");
    eprintln!("match to drop: {latency_us:.0} us");
    assert_eq!(evs.len(), 1, "only the matched flow alerted: {lines:?}");
    // The client's later packets of that flow (its ACKs, retransmissions) were dropped in
    // XDP, by reason.
    let xdp = host.scratch.counter("IDS_STATS", IS_FLOW_DROPS);
    let by_reason = host.scratch.counter("REASON_STATS", reason::IDS_DROP);
    eprintln!("dropped in XDP: {xdp}, by reason ids-drop (XDP and tcx): {by_reason}");
    assert!(xdp > 0, "nothing of the flow was dropped in XDP");
    assert!(by_reason >= xdp);
    let flows = cli_json(&host.socket(), &["ids", "flows", "--json"]);
    let dropped: Vec<_> = flows
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["dropped"] == true)
        .collect();
    assert_eq!(dropped.len(), 1, "{flows}");
    assert_eq!(dropped[0]["sids"], serde_json::json!([1002]));
    let stats = cli_json(&host.socket(), &["stats", "--json"]);
    let text = Command::new(control::BIN)
        .arg("--socket")
        .arg(host.socket())
        .args(["stats"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("ids-drop"), "{text}");
    let ids = stats["counters"]["ids"].as_array().unwrap();
    let value = |name: &str| {
        ids.iter()
            .find(|n| n["name"] == name)
            .and_then(|n| n["value"].as_u64())
    };
    assert_eq!(value("drops_installed"), Some(1), "{ids:?}");
    assert_eq!(value("sid_1002"), Some(1), "{ids:?}");
}
