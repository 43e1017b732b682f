//! End to end: the `mark` action with the real daemon on a router, seen in the router's
//! routing and on the wire.
//!
//! The routed lab of `support/routed.rs` with Palisade on the router's interface towards
//! the guarded host (`veth-rg`). The router has a policy route: `ip rule fwmark 0x2a lookup
//! 100`, and table 100 sends the outside host's addresses into another interface (a veth pair). What the
//! guarded host sends over UDP, both families, with ECN bits set:
//! - to port 7001, under a rule that marks 0x2a and sets DSCP EF: the mark, carried from XDP
//!   in the frame's metadata and set on the socket buffer by the TC ingress program, makes
//!   the router route it into that interface (its transmit counter grows by what was
//!   sent) and the outside host receives none of it;
//! - to port 7002, under a rule that sets DSCP AF41 only: it reaches the outside host with
//!   DSCP 34 and its ECN bits kept (read from each datagram's IP_TOS / IPV6_TCLASS), through
//!   the router's and the receiver's IPv4 header checksum checks (the router's header error
//!   counter stays put);
//! - to port 7003, under no rule: it arrives as sent.
//!
//! `palisade stats` reports the action counters.
//!
//! Needs root. Run with `cargo test --release -p palisade --test action_mark_netns`.

#[path = "support/control.rs"]
mod control;
mod support;

use std::time::{Duration, Instant};

use control::{GuardedHost, cli, cli_json};
use palisade_common::action::{AS_DSCP_REWRITTEN, AS_MARK_APPLIED};
use support::routed::{Listener, Routed, run_ok};

const MARK: u32 = 0x2a;
const SENT: usize = 20;
const AF41: u64 = 34;

fn policy() -> String {
    format!(
        "[firewall]\ndefault = \"allow\"\n\n\
         [[firewall.rule]]\nname = \"steer\"\naction = \"mark\"\nproto = \"udp\"\ndport = 7001\n\
         set_mark = {MARK}\nset_dscp = \"ef\"\n\n\
         [[firewall.rule]]\nname = \"video\"\naction = \"mark\"\nproto = \"udp\"\ndport = 7002\n\
         set_dscp = \"af41\"\n"
    )
}

/// Receives on ports 7001 to 7003 of both families until the stop file exists, then prints
/// one JSON line per datagram: family, port and the TOS / traffic class it arrived with.
const RECEIVE: &str = r#"
import json, os, select, socket, sys, time
stop = sys.argv[1]
socks = []
for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for port in (7001, 7002, 7003):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, 66, 1)  # IPV6_RECVTCLASS
        else:
            s.setsockopt(socket.IPPROTO_IP, 13, 1)  # IP_RECVTOS
        s.bind((addr, port))
        socks.append((fam, port, s))
print("ready", flush=True)
seen = []
while not os.path.exists(stop):
    ready, _, _ = select.select([s for _, _, s in socks], [], [], 0.05)
    for fam, port, s in socks:
        if s in ready:
            _, anc, _, _ = s.recvmsg(2048, 64)
            tos = None
            for _, _, data in anc:
                tos = data[0] if fam == socket.AF_INET else int.from_bytes(data[:4], sys.byteorder)
            seen.append({"v": 4 if fam == socket.AF_INET else 6, "port": port, "tos": tos})
for r in seen:
    print(json.dumps(r), flush=True)
"#;

/// Sends `count` datagrams to each port of each family, TOS / traffic class 0x01 (ECT(1)).
const SEND: &str = r#"
import socket, sys, time
v4, v6, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for fam, dst in ((socket.AF_INET, v4), (socket.AF_INET6, v6)):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 1)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, 67, 1)  # IPV6_TCLASS
    for i in range(count):
        for port in (7001, 7002, 7003):
            s.sendto(b"mark test %d" % i, (dst, port))
        time.sleep(0.002)
"#;

/// Packets the other uplink (`pal-dummy`) transmitted.
fn dummy_tx(ns: &str) -> u64 {
    let out = run_ok(ns, "ip", &["-s", "-j", "link", "show", "dev", "pal-dummy"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .expect("tx packets")
}

/// The IPv4 `InHdrErrors` counter (header checksum errors among them) of namespace `ns`.
fn in_hdr_errors(ns: &str) -> u64 {
    let snmp = run_ok(ns, "cat", &["/proc/net/snmp"]);
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().expect("Ip names"), ip.next().expect("Ip values"));
    let i = names
        .split_whitespace()
        .position(|n| n == "InHdrErrors")
        .expect("InHdrErrors");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

struct Receiver(Listener);

impl Receiver {
    fn start(ns: &str, stop: std::path::PathBuf) -> Self {
        Self(Listener::start(
            ns,
            RECEIVE,
            &[stop.to_str().unwrap()],
            stop.clone(),
        ))
    }

    fn finish(self) -> Vec<serde_json::Value> {
        let out = self.0.finish();
        out.lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }
}

#[test]
fn marked_traffic_takes_the_fwmark_route_and_dscp_is_rewritten_on_the_wire() {
    let r = Routed::new();
    let router = r.router.clone();
    // The policy route the mark selects: table 100 sends the outside host into another
    // uplink, a veth pair with static neighbours, so that what is routed there is sent at
    // once (its transmit counter counts the packets).
    r.add_router_port("pal-dummy", "pal-dummyp");
    for addr in [Routed::OUTSIDE_V4, Routed::OUTSIDE_V6] {
        run_ok(
            &router,
            "ip",
            &[
                "neigh",
                "add",
                addr,
                "lladdr",
                "02:00:00:00:00:99",
                "dev",
                "pal-dummy",
                "nud",
                "permanent",
            ],
        );
    }
    for fam in ["-4", "-6"] {
        run_ok(
            &router,
            "ip",
            &[
                fam,
                "rule",
                "add",
                "fwmark",
                &MARK.to_string(),
                "lookup",
                "100",
            ],
        );
    }
    r.route_in_table("-4", "100", Routed::OUTSIDE_V4, None, "pal-dummy");
    r.route_in_table("-6", "100", Routed::OUTSIDE_V6, None, "pal-dummy");

    let mut host = GuardedHost::new("action-mark", &policy(), &router, "veth-rg");
    let started = Instant::now();
    host.start();
    eprintln!("daemon up in {:?}", started.elapsed());
    let check = cli(&host.socket(), &["list", "rules"]);
    assert!(
        check.ok && check.stdout.contains("mark set_mark 0x2a set_dscp 46"),
        "{check:?}"
    );

    let tx_before = dummy_tx(&router);
    let errors_before = in_hdr_errors(&router);
    let rx = Receiver::start(&r.outside, host.scratch.file("stop"));
    run_ok(
        &r.guarded,
        "python3",
        &[
            "-c",
            SEND,
            Routed::OUTSIDE_V4,
            Routed::OUTSIDE_V6,
            &SENT.to_string(),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let seen = rx.finish();
    let count = |v: u64, port: u64| {
        seen.iter()
            .filter(|s| s["v"] == v && s["port"] == port)
            .count()
    };
    for v in [4, 6] {
        assert_eq!(
            count(v, 7001),
            0,
            "marked IPv{v} traffic reached the outside host"
        );
        assert_eq!(count(v, 7002), SENT, "IPv{v} to 7002: {seen:?}");
        assert_eq!(count(v, 7003), SENT, "IPv{v} to 7003: {seen:?}");
    }
    for s in &seen {
        let tos = s["tos"].as_u64().expect("tos");
        match s["port"].as_u64() {
            Some(7002) => assert_eq!(tos, AF41 << 2 | 1, "DSCP AF41, ECN kept: {s}"),
            _ => assert_eq!(tos, 1, "untouched: {s}"),
        }
    }
    let routed_away = dummy_tx(&router) - tx_before;
    assert!(
        routed_away >= 2 * SENT as u64,
        "the dummy sent {routed_away} packets, expected the {} marked ones",
        2 * SENT
    );
    assert_eq!(
        in_hdr_errors(&router),
        errors_before,
        "header errors at the router"
    );

    assert!(host.scratch.counter("ACTION_STATS", AS_MARK_APPLIED) >= 2 * SENT as u64);
    assert!(host.scratch.counter("ACTION_STATS", AS_DSCP_REWRITTEN) >= 4 * SENT as u64);
    let json = cli_json(&host.socket(), &["stats", "--json"]);
    let applied = json["counters"]["actions"]
        .as_array()
        .expect("counters.actions")
        .iter()
        .find(|n| n["name"] == "mark_applied")
        .and_then(|n| n["value"].as_u64())
        .expect("mark_applied");
    assert!(applied >= 2 * SENT as u64, "{json}");

    // A bad `mark` rule: `palisade check` and a reload name its line, and the running
    // policy stays.
    let bad = policy().replace("set_dscp = \"af41\"", "set_dscp = 99");
    let line = bad.lines().position(|l| l == "set_dscp = 99").unwrap() + 1;
    std::fs::write(&host.policy, &bad).unwrap();
    let located = format!("policy.toml:{line}:");
    let check = cli(&host.socket(), &["check", host.policy.to_str().unwrap()]);
    let text = format!("{}{}", check.stdout, check.stderr);
    assert!(
        !check.ok
            && text.contains(&located)
            && text.contains("`set_dscp` must be between 0 and 63"),
        "{check:?}"
    );
    let reload = cli(&host.socket(), &["reload"]);
    let text = format!("{}{}", reload.stdout, reload.stderr);
    assert!(!reload.ok && text.contains(&located), "{reload:?}");
    let rules = cli(&host.socket(), &["list", "rules"]);
    assert!(
        rules.ok && rules.stdout.contains("set_dscp 34"),
        "{rules:?}"
    );
}
