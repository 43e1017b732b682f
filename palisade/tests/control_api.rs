//! The control plane end to end: a daemon in a network namespace, the `palisade` commands
//! over its socket, real traffic from another namespace, and the metrics endpoint.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{thread, time::Duration};

use control::{
    BgCli, Proc, Scratch, cli, cli_as_nobody, cli_json, delivered, py, sample, wait_for_streams,
};
use support::netns::NetnsPair;

const POLICY: &str = r#"
[sets.blocked]
entries = ["192.0.2.1"]

[[firewall.rule]]
name = "drop-blocked"
action = "drop"
src = "@blocked"

[[firewall.rule]]
name = "count-udp-7000"
action = "allow"
proto = "udp"
dport = 7000

[dns.ingress]
mode = "blocklist"
action = "drop"
lists = ["ads"]

[dns.lists.ads]
names = ["ads.example"]
"#;

const RELOADED: &str = r#"
[sets.blocked]
entries = ["192.0.2.1"]

[[firewall.rule]]
name = "drop-blocked"
action = "drop"
src = "@blocked"

[[firewall.rule]]
name = "count-udp-7000"
action = "allow"
proto = "udp"
dport = 7000

[[firewall.rule]]
name = "drop-udp-7002"
action = "drop"
proto = "udp"
dport = 7002

[dns.ingress]
mode = "blocklist"
action = "drop"
lists = ["ads"]

[dns.lists.ads]
names = ["ads.example"]
"#;

fn generation(socket: &std::path::Path) -> u64 {
    cli_json(socket, &["status", "--json"])["generation"]
        .as_u64()
        .unwrap()
}

/// An HTTP request: prints the status code, then the body.
const HTTP: &str = r"
import sys, urllib.request, urllib.error
url, method = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, method=method, data=b'' if method == 'POST' else None)
try:
    r = urllib.request.urlopen(req, timeout=5)
    print(r.status)
    sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
";

#[test]
fn cli_and_api_end_to_end() {
    let pair = NetnsPair::new();
    let scratch = Scratch::new("ctl-api");
    let policy = scratch.file("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let socket = scratch.socket();
    let pin_dir = scratch.pin_dir();
    let mut daemon = Proc::start(
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
            "127.0.0.1:19477",
            "--quiet",
        ],
    );

    // status: what runs.
    let st = cli(&socket, &["status"]);
    assert!(st.ok, "{st:?}");
    assert!(
        st.stdout.contains(&format!("{} (ifindex", pair.if_b)) && st.stdout.contains("native XDP"),
        "{st:?}"
    );
    let js = cli_json(&socket, &["status", "--json"]);
    assert_eq!(js["interfaces"][0]["iface"], pair.if_b.as_str());
    assert_eq!(js["interfaces"][0]["origin"], "created");
    assert!(
        js["programs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "palisade_firewall")
    );
    assert_eq!(js["policy"]["rules"], 2);
    let mut sent_7000 = 0;

    // Baseline traffic flows.
    assert_eq!(delivered(&pair, &scratch, 7001, 5), 5);

    // A rule added live drops the traffic; its drops stream as events.
    wait_for_streams(&socket, 0);
    let events = BgCli::start(
        &socket,
        &[
            "events",
            "--json",
            "--kind",
            "firewall",
            "--verdict",
            "drop",
            "--name",
            "DROP-70",
            "--count",
            "3",
        ],
    );
    wait_for_streams(&socket, 1);
    let add = cli(
        &socket,
        &[
            "rule",
            "add",
            "--name",
            "drop-7001",
            "--action",
            "drop",
            "--proto",
            "udp",
            "--dport",
            "7001",
            "--log",
        ],
    );
    assert!(
        add.ok && add.stdout.contains("added rule `drop-7001`"),
        "{add:?}"
    );
    assert_eq!(
        delivered(&pair, &scratch, 7001, 5),
        0,
        "the live drop rule is enforced"
    );
    let lines = events.finish(Duration::from_secs(10));
    assert_eq!(lines.len(), 3, "events: {lines:?}");
    for l in &lines {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(
            (e["kind"].as_str(), e["rule"].as_str(), e["dport"].as_u64()),
            (Some("firewall"), Some("drop-7001"), Some(7001)),
            "{l}"
        );
    }
    wait_for_streams(&socket, 0);
    let text_events = BgCli::start(&socket, &["events", "--kind", "firewall", "--count", "1"]);
    wait_for_streams(&socket, 1);
    py(
        &pair,
        &pair.ns_a,
        control::UDP_SEND,
        &[&pair.v4_b, "7001", "1"],
    );
    let text = text_events.finish(Duration::from_secs(10));
    assert!(
        text.len() == 1 && text[0].starts_with("firewall drop reason=rule rule=drop-7001"),
        "{text:?}"
    );
    let rules = cli(&socket, &["list", "rules"]);
    assert!(
        rules
            .stdout
            .lines()
            .any(|l| l.contains("*2") && l.contains("drop-7001") && l.contains("udp dport 7001")),
        "{rules:?}"
    );
    let rows = cli_json(&socket, &["rule", "list", "--json"]);
    let row = rows["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "drop-7001")
        .unwrap()
        .clone();
    assert_eq!(
        (row["packets"].as_u64(), row["live"].as_bool()),
        (Some(6), Some(true)),
        "{row}"
    );

    // Bad input: every refusal names the problem, and nothing changes.
    let before = generation(&socket);
    for (args, expect) in [
        (
            vec![
                "rule", "add", "--name", "bad", "--action", "drop", "--dport", "22",
            ],
            "`dport` needs proto",
        ),
        (
            vec!["rule", "add", "--name", "drop-7001", "--action", "drop"],
            "already exists",
        ),
        (
            vec!["rule", "add", "--name", "x", "--action", "explode"],
            "explode",
        ),
        (
            vec![
                "rule", "add", "--name", "y", "--action", "drop", "--src", "@nope",
            ],
            "unknown set `@nope`",
        ),
        (vec!["rule", "delete", "nope"], "no rule named `nope`"),
        (
            vec!["set", "add", "blocked", "10.0.0.1/8", "10.9.9.9"],
            "did you mean 10.0.0.0/8",
        ),
        (
            vec!["set", "add", "nope", "10.0.0.1"],
            "no set named `nope`",
        ),
        (
            vec!["set", "delete", "blocked", "198.51.100.1"],
            "not in set `blocked`",
        ),
        (
            vec!["dns", "add", "nope", "x.example"],
            "no DNS list named `nope`",
        ),
        (vec!["dns", "add", "ads", "bad name.example"], "whitespace"),
        (
            vec!["dns", "delete", "ads", "never.example"],
            "not in DNS list `ads`",
        ),
        (
            vec!["dns", "add", "ads", "x.example", "--ttl", "5y"],
            "`5y` is not a duration",
        ),
        (vec!["events", "--kind", "tcp"], "tcp"),
    ] {
        let o = cli(&socket, &args);
        assert!(!o.ok && o.stderr.contains(expect), "{args:?}: {o:?}");
    }
    assert_eq!(
        generation(&socket),
        before,
        "refused changes left the policy alone"
    );

    // Deleting the rule lets the traffic through again.
    assert!(cli(&socket, &["rule", "delete", "drop-7001"]).ok);
    assert_eq!(delivered(&pair, &scratch, 7001, 5), 5);

    // Set members: A's address in the set drops everything from A; removing it restores.
    assert_eq!(delivered(&pair, &scratch, 7000, 4), 4);
    sent_7000 += 4;
    let add = cli(
        &socket,
        &["set", "add", "@blocked", &pair.v4_a, "198.51.100.0/24"],
    );
    assert!(
        add.ok && add.stdout.contains("added 2 member(s) to set `blocked`"),
        "{add:?}"
    );
    let sets = cli_json(&socket, &["set", "list", "blocked", "--json"]);
    assert_eq!(
        sets["sets"][0]["members"].as_array().unwrap().len(),
        3,
        "{sets}"
    );
    assert_eq!(sets["sets"][0]["used_by"][0], "drop-blocked");
    assert_eq!(
        delivered(&pair, &scratch, 7000, 4),
        0,
        "a live set member is enforced"
    );
    assert!(cli(&socket, &["set", "delete", "blocked", &pair.v4_a]).ok);
    assert_eq!(delivered(&pair, &scratch, 7000, 4), 4);
    sent_7000 += 4;

    // DNS: a name added live with a TTL is blocked, then applies no more.
    let q = |name: &str| {
        py(
            &pair,
            &pair.ns_a,
            control::DNS_QUERY,
            &[&pair.v4_b, name, "0.7"],
        )
    };
    assert_eq!(
        q("tracker.example"),
        "refused",
        "not listed: reaches B, where nothing listens"
    );
    assert_eq!(q("ads.example"), "timeout", "listed in the file: dropped");
    let add = cli(
        &socket,
        &["dns", "add", "ads", "tracker.example", "--ttl", "4"],
    );
    assert!(add.ok, "{add:?}");
    let added_at = std::time::Instant::now();
    let dns = cli_json(&socket, &["dns", "list", "ads", "--json"]);
    let entry = dns["lists"][0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "tracker.example")
        .unwrap()
        .clone();
    assert!(
        entry["live"].as_bool().unwrap() && entry["ttl_left"].as_i64().unwrap() <= 4,
        "{entry}"
    );
    assert!(
        cli(&socket, &["dns", "list"])
            .stdout
            .contains("*tracker.example  (expires in")
    );
    wait_for_streams(&socket, 0);
    let dns_events = BgCli::start(
        &socket,
        &[
            "events", "--json", "--kind", "dns", "--name", "TRACKER", "--count", "1",
        ],
    );
    wait_for_streams(&socket, 1);
    assert_eq!(
        q("tracker.example"),
        "timeout",
        "the live entry is enforced"
    );
    let ev = dns_events.finish(Duration::from_secs(10));
    assert!(
        ev.len() == 1
            && ev[0].contains("\"name\":\"tracker.example.\"")
            && ev[0].contains("\"verdict\":\"drop\""),
        "{ev:?}"
    );
    // Expiry is checked against whole seconds: 5 s after adding, a 4 s entry is gone.
    thread::sleep(Duration::from_millis(5000).saturating_sub(added_at.elapsed()));
    assert_eq!(
        q("tracker.example"),
        "refused",
        "the entry expires with its TTL"
    );

    // Reload: an invalid file changes nothing and says why; a valid one is swapped in.
    let gen_before = generation(&socket);
    assert!(
        cli(
            &socket,
            &[
                "rule", "add", "--name", "live-one", "--action", "allow", "--proto", "udp",
                "--dport", "7999"
            ]
        )
        .ok
    );
    std::fs::write(
        &policy,
        "[[firewall.rule]]\nname = \"broken\"\naction = \"drop\"\ndport = 1\n",
    )
    .unwrap();
    let r = cli(&socket, &["reload"]);
    assert!(
        !r.ok && r.stderr.contains("policy.toml:4:9: `dport` needs proto"),
        "{r:?}"
    );
    assert_eq!(
        generation(&socket),
        gen_before + 1,
        "only the live change moved the generation"
    );
    assert_eq!(
        delivered(&pair, &scratch, 7000, 3),
        3,
        "the old policy still runs"
    );
    sent_7000 += 3;
    std::fs::write(&policy, RELOADED).unwrap();
    let r = cli(&socket, &["reload"]);
    assert!(
        r.ok && r.stdout.contains("6 live change(s) discarded"),
        "{r:?}"
    );
    assert_eq!(
        delivered(&pair, &scratch, 7002, 5),
        0,
        "the reloaded policy runs"
    );
    assert_eq!(delivered(&pair, &scratch, 7000, 2), 2);
    sent_7000 += 2;
    assert!(!cli(&socket, &["list", "rules"]).stdout.contains("live-one"));

    // Stats and metrics agree with the traffic sent, across every policy change above.
    let stats = cli_json(&socket, &["stats", "--json"]);
    let rule = |name: &str| {
        stats["counters"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == name)
            .map(|r| r["packets"].as_u64().unwrap())
    };
    assert_eq!(rule("count-udp-7000"), Some(sent_7000), "{stats}");
    assert_eq!(
        rule("drop-7001"),
        Some(6),
        "a deleted rule keeps its count: {stats}"
    );
    assert_eq!(rule("drop-blocked"), Some(4), "{stats}");
    assert_eq!(rule("drop-udp-7002"), Some(5), "{stats}");
    let scrape = py(
        &pair,
        &pair.ns_b,
        HTTP,
        &["http://127.0.0.1:19477/metrics", "GET"],
    );
    let (status, m) = scrape.split_once('\n').unwrap_or((&scrape, ""));
    assert_eq!(status, "200", "scrape failed: {scrape}");
    let m = m.to_string();
    assert_eq!(
        sample(
            &m,
            "palisade_rule_packets_total{rule=\"count-udp-7000\",action=\"allow\"}"
        ),
        Some(sent_7000),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "palisade_rule_packets_total{rule=\"drop-udp-7002\",action=\"drop\"}"
        ),
        Some(5),
        "{m}"
    );
    assert_eq!(
        sample(&m, "palisade_drops_total{reason=\"rule\"}"),
        Some(6 + 4 + 5),
        "{m}"
    );
    assert_eq!(
        sample(&m, "palisade_drops_total{reason=\"dns-blocked\"}"),
        Some(2),
        "{m}"
    );
    assert_eq!(
        sample(&m, "palisade_dns_blocked_total{scope=\"ingress\"}"),
        Some(2),
        "{m}"
    );
    assert_eq!(sample(&m, "palisade_events_lost_total"), Some(0), "{m}");
    assert_eq!(
        sample(&m, "palisade_reloads_total{result=\"success\"}"),
        Some(1),
        "{m}"
    );
    assert_eq!(
        sample(&m, "palisade_reloads_total{result=\"failure\"}"),
        Some(1),
        "{m}"
    );
    assert_eq!(
        sample(&m, "palisade_policy_generation"),
        Some(generation(&socket)),
        "{m}"
    );
    assert!(
        sample(&m, "palisade_live_changes_total{result=\"refused\"}").unwrap() >= 11,
        "{m}"
    );
    let bad = py(
        &pair,
        &pair.ns_b,
        HTTP,
        &["http://127.0.0.1:19477/metrics", "POST"],
    );
    assert_eq!(bad, "405");
    let text_stats = cli(&socket, &["stats"]);
    assert!(
        text_stats.ok && text_stats.stdout.contains("count-udp-7000"),
        "{text_stats:?}"
    );

    // Only root: the socket's mode keeps others out, and SO_PEERCRED refuses them even when
    // the mode is widened by hand.
    let o = cli_as_nobody(&socket, &["status"]);
    assert!(
        !o.ok && o.stderr.contains("permission denied connecting to"),
        "{o:?}"
    );
    let mode = std::fs::metadata(&socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    for args in [
        &["status"][..],
        &["rule", "add", "--name", "evil", "--action", "drop"][..],
    ] {
        let o = cli_as_nobody(&socket, args);
        assert!(
            !o.ok && o.stderr.contains("permission denied: uid 65534"),
            "{args:?}: {o:?}"
        );
    }
    assert!(!cli(&socket, &["list", "rules"]).stdout.contains("evil"));

    // Shell completions.
    for (shell, marker) in [
        ("bash", "_palisade()"),
        ("zsh", "#compdef palisade"),
        ("fish", "complete -c palisade"),
    ] {
        let o = cli(&socket, &["completions", shell]);
        assert!(
            o.ok && o.stdout.contains(marker) && o.stdout.contains("unload"),
            "{shell}: {}",
            &o.stderr
        );
    }

    // Unload: the daemon detaches, removes its pins and exits; traffic is no longer filtered.
    let u = cli(&socket, &["unload"]);
    assert!(
        u.ok && u.stdout.contains(&format!("detached from {}", pair.if_b)),
        "{u:?}"
    );
    assert!(
        daemon.wait(Duration::from_secs(10)),
        "{:?}",
        daemon.stderr_now()
    );
    assert!(
        daemon
            .stderr_now()
            .iter()
            .any(|l| l == "palisade: detached")
    );
    assert!(!pin_dir.exists(), "pins removed");
    assert!(!socket.exists(), "socket removed");
    assert_eq!(delivered(&pair, &scratch, 7002, 3), 3);
    let o = cli(&socket, &["status"]);
    assert!(!o.ok && o.stderr.contains("no palisade daemon at"), "{o:?}");
}
