//! The per-source shields for operators, end to end: a daemon guards one end of a veth
//! pair with `[shield] source_rate`, `source_block` and `icmp_echo_rate`; the other end opens
//! too many flows, pings too fast, and is blocked; `palisade status`, `palisade shield
//! hitters` (and its `flush`, which lifts the block), `palisade stats` and the metrics show
//! it.

#[path = "support/control.rs"]
mod control;
mod support;

use std::time::Duration;

use control::{Bg, GuardedHost, HTTP_GET, UDP_ECHO, cli, cli_json, eventually, py, sample};
use palisade_common::shield::window_limit;
use support::netns::NetnsPair;

const POLICY: &str = r#"
[firewall]
default = "drop"
stateful = true

[[firewall.rule]]
action = "allow"
proto = "udp"
dport = 7000

[[firewall.rule]]
action = "allow"
proto = "tcp"
dport = 8080

[[firewall.rule]]
action = "allow"
proto = "icmp"
icmp_type = 8

[shield]
source_rate = 20
source_prefix_v4 = 24
source_block = 600
icmp_echo_rate = 5
"#;

/// Sends one datagram from each of `n` sockets to `host:port` at once, then counts the
/// answers that arrive within a second.
const UDP_BURST: &str = r"
import socket, sys, time, select
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)
    s.sendto(b'q', (host, port)); socks.append(s)
got, end = 0, time.time() + 1.0
while socks and time.time() < end:
    r, _, _ = select.select(socks, [], [], 0.05)
    for s in r:
        s.recv(64); got += 1; socks.remove(s)
print(got)
";

/// Accepts TCP connections on `addr:port` and closes them, until `stopfile` exists.
const TCP_ACCEPT: &str = r"
import socket, sys, os
addr, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((addr, port)); l.listen(64); l.settimeout(0.05)
print('ready', flush=True)
while not os.path.exists(stop):
    try:
        l.accept()[0].close()
    except socket.timeout:
        pass
";

/// Whether a TCP connection to `host:port` completes within a second.
const TCP_TRY: &str = r"
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close(); print('yes')
except OSError:
    print('no')
";

fn ping_replies(pair: &NetnsPair, to: &str, count: &str) -> u64 {
    let out = pair.exec(
        &pair.ns_a,
        "ping",
        &["-c", count, "-i", "0.01", "-W", "1", "-q", to],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(", ")
        .find_map(|p| p.strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("ping output: {text}"))
}

#[test]
fn a_flooding_network_is_limited_blocked_listed_and_forgiven() {
    let pair = NetnsPair::new();
    let mut host = GuardedHost::new("shield-cli", POLICY, &pair.ns_b, &pair.if_b);
    let metrics = format!("127.0.0.1:{}", 19_500 + std::process::id() % 400);
    host.start_with(&["--metrics", &metrics]);
    let socket = host.socket();
    let scratch = &host.scratch;
    let b = pair.v4_b.as_str();
    let stop = scratch.file("stop");
    let _udp = Bg::start(
        &pair,
        &pair.ns_b,
        UDP_ECHO,
        &[b, "7000", stop.to_str().unwrap()],
    )
    .ready();
    let _tcp = Bg::start(
        &pair,
        &pair.ns_b,
        TCP_ACCEPT,
        &[b, "8080", stop.to_str().unwrap()],
    )
    .ready();

    // Before: a connection and pings go through; the shields are idle.
    assert_eq!(py(&pair, &pair.ns_a, TCP_TRY, &[b, "8080"]), "yes");
    let status = cli(&socket, &["status"]);
    assert!(
        status.stdout.contains("shields     idle"),
        "{}",
        status.stdout
    );

    // A burst of 100 new flows: at most the rate's worth a window is answered (two windows'
    // worth if the burst straddles two; the connection above may have counted in the first),
    // and the network is then blocked.
    let answered: u64 = py(&pair, &pair.ns_a, UDP_BURST, &[b, "7000", "100"])
        .parse()
        .unwrap();
    let per_window = u64::from(window_limit(20));
    assert!(
        (per_window - 1..=2 * per_window).contains(&answered),
        "{answered} of 100 answered"
    );
    assert_eq!(
        py(&pair, &pair.ns_a, TCP_TRY, &[b, "8080"]),
        "no",
        "blocked"
    );
    assert_eq!(
        ping_replies(&pair, b, "3"),
        0,
        "echo from a blocked network"
    );

    let status = cli(&socket, &["status"]);
    assert!(
        status
            .stdout
            .contains("shields     1 heavy hitters (1 blocked)"),
        "{}",
        status.stdout
    );
    let list = cli_json(&socket, &["shield", "hitters", "--json"]);
    let hitters = list["hitters"].as_array().unwrap();
    assert_eq!(hitters.len(), 1, "{list}");
    let prefix = format!("{}.0/24", pair.v4_a.rsplit_once('.').unwrap().0);
    assert_eq!(hitters[0]["prefix"], prefix.as_str(), "{list}");
    assert!(hitters[0]["blocked_s"].as_u64().unwrap() > 590, "{list}");
    assert!(
        hitters[0]["drops"].as_u64().unwrap() >= 100 - answered,
        "{list}"
    );
    assert_eq!(list["source_rate"], 20);
    assert_eq!(list["block_s"], 600);
    let text = cli(&socket, &["shield", "hitters"]).stdout;
    assert!(text.contains(&prefix) && text.contains("s left"), "{text}");

    let stats = cli(&socket, &["stats"]).stdout;
    assert!(stats.contains("shield-source-rate"), "{stats}");
    assert!(stats.contains("shield-source-blocked"), "{stats}");
    let m = py(
        &pair,
        &pair.ns_b,
        HTTP_GET,
        &[&format!("http://{metrics}/metrics")],
    );
    assert!(
        sample(&m, "palisade_shield_total{event=\"source_blocked\"}").unwrap_or(0) > 0,
        "{m}"
    );

    // Forgiven: the block ends at once.
    let out = cli(&socket, &["shield", "hitters", "flush"]);
    assert_eq!(out.stdout.trim(), "forgot 1 heavy hitter", "{}", out.stderr);
    assert!(
        eventually(Duration::from_secs(3), || py(
            &pair,
            &pair.ns_a,
            TCP_TRY,
            &[b, "8080"]
        ) == "yes"),
        "connections after the flush"
    );

    // Echo at 100 a second against a rate of 5: about a window's worth answered.
    let replies = ping_replies(&pair, b, "40");
    let echo_window = u64::from(window_limit(5));
    assert!(
        (echo_window..=2 * echo_window).contains(&replies),
        "{replies} of 40 pings answered"
    );
    let stats = cli(&socket, &["stats"]).stdout;
    assert!(stats.contains("shield-icmp-rate"), "{stats}");
    std::fs::write(&stop, "").unwrap();
}
