//! End to end: the `mirror` action with the real daemon on a router, the copies seen on the
//! mirror interface while the originals are delivered.
//!
//! The routed lab of `support/routed.rs` with Palisade on the router's interface towards
//! the guarded host (`veth-rg`), and a veth pair in the router (`pal-mir` and its peer
//! `pal-mirp`) as the mirror port. The guarded host sends UDP, both families, to ports 7004
//! (a `mirror_to = "pal-mir"` rule) and 7003 (no rule):
//! - a packet socket on `pal-mirp` sees one copy of every datagram to 7004 (as an Ethernet
//!   frame, cloned by the TC ingress program) and none to 7003;
//! - the outside host receives every datagram of both ports: the originals go on;
//! - with the mirror interface deleted, the copies fail (`mirror_failed`) and the originals
//!   are still delivered (fail-open);
//! - a policy naming an interface that does not exist is refused at its line, and the
//!   running policy stays.
//!
//! Needs root. Run with `cargo test --release -p palisade --test action_mirror_netns`.

#[path = "support/control.rs"]
mod control;
mod support;

use std::time::Duration;

use control::{GuardedHost, cli, cli_json};
use palisade_common::action::{AS_MIRROR_FAILED, AS_MIRROR_SENT};
use support::routed::{Listener, Routed, run_ok};

const SENT: usize = 20;

fn policy(mirror_to: &str) -> String {
    format!(
        "[firewall]\ndefault = \"allow\"\n\n\
         [[firewall.rule]]\nname = \"tap\"\naction = \"mirror\"\nproto = \"udp\"\ndport = 7004\n\
         mirror_to = \"{mirror_to}\"\n"
    )
}

/// Until the stop file exists: counts UDP datagrams by family and destination port, on a
/// packet socket of an interface (`packet IFACE STOP`) or on sockets bound to ports 7003 and
/// 7004 (`sockets - STOP`). Prints one JSON object of counts, e.g. `{"4:7004": 20}`.
const COUNT: &str = r#"
import json, os, select, socket, struct, sys
mode, iface, stop = sys.argv[1], sys.argv[2], sys.argv[3]
seen = {}
def bump(k):
    seen[k] = seen.get(k, 0) + 1
if mode == "packet":
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((iface, 0))
    socks = [(None, None, s)]
else:
    socks = []
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for port in (7003, 7004):
            s = socket.socket(fam, socket.SOCK_DGRAM)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, port))
            socks.append((4 if fam == socket.AF_INET else 6, port, s))
print("ready", flush=True)
while not os.path.exists(stop):
    ready, _, _ = select.select([s for _, _, s in socks], [], [], 0.05)
    for v, port, s in socks:
        if s not in ready:
            continue
        f = s.recv(65535)
        if v is not None:
            bump("%d:%d" % (v, port))
            continue
        et = struct.unpack("!H", f[12:14])[0]
        if et == 0x0800 and f[23] == 17:
            ihl = (f[14] & 15) * 4
            bump("4:%d" % struct.unpack("!H", f[14 + ihl + 2:14 + ihl + 4])[0])
        elif et == 0x86dd and f[20] == 17:
            bump("6:%d" % struct.unpack("!H", f[56:58])[0])
print(json.dumps(seen), flush=True)
"#;

/// Sends `count` datagrams to ports 7003 and 7004 of each family.
const SEND: &str = r#"
import socket, sys, time
v4, v6, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for fam, dst in ((socket.AF_INET, v4), (socket.AF_INET6, v6)):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    for i in range(count):
        for port in (7003, 7004):
            s.sendto(b"mirror test %d" % i, (dst, port))
        time.sleep(0.002)
"#;

struct Counter(Listener);

impl Counter {
    fn start(ns: &str, mode: &str, iface: &str, stop: std::path::PathBuf) -> Self {
        let args = [mode, iface, stop.to_str().unwrap()];
        Self(Listener::start(ns, COUNT, &args, stop.clone()))
    }

    fn finish(self) -> serde_json::Value {
        serde_json::from_str(&self.0.finish()).expect("counts")
    }
}

fn n(counts: &serde_json::Value, key: &str) -> usize {
    counts[key].as_u64().unwrap_or(0) as usize
}

fn send(r: &Routed) {
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
}

#[test]
fn copies_leave_by_the_mirror_interface_while_the_originals_are_delivered() {
    let r = Routed::new();
    let router = r.router.clone();
    r.add_router_port("pal-mir", "pal-mirp");
    let mut host = GuardedHost::new("action-mirror", &policy("pal-mir"), &router, "veth-rg");
    host.start();
    let rules = cli(&host.socket(), &["list", "rules"]);
    assert!(
        rules.ok && rules.stdout.contains("mirror to pal-mir"),
        "{rules:?}"
    );

    let tap = Counter::start(&router, "packet", "pal-mirp", host.scratch.file("stop-tap"));
    let rx = Counter::start(&r.outside, "sockets", "-", host.scratch.file("stop-rx"));
    send(&r);
    let (tapped, received) = (tap.finish(), rx.finish());
    for v in [4, 6] {
        assert_eq!(n(&tapped, &format!("{v}:7004")), SENT, "copies: {tapped}");
        assert_eq!(n(&tapped, &format!("{v}:7003")), 0, "copies: {tapped}");
        for port in [7003, 7004] {
            assert_eq!(
                n(&received, &format!("{v}:{port}")),
                SENT,
                "delivered: {received}"
            );
        }
    }
    let sent_copies = host.scratch.counter("ACTION_STATS", AS_MIRROR_SENT);
    assert!(sent_copies >= 2 * SENT as u64, "mirror_sent {sent_copies}");
    let json = cli_json(&host.socket(), &["stats", "--json"]);
    assert!(
        json["counters"]["actions"]
            .as_array()
            .expect("counters.actions")
            .iter()
            .any(|c| c["name"] == "mirror_sent" && c["value"].as_u64() >= Some(2 * SENT as u64)),
        "{json}"
    );

    // A policy naming an interface that is not there is refused; the running one stays.
    std::fs::write(&host.policy, policy("pal-gone")).unwrap();
    let reload = cli(&host.socket(), &["reload"]);
    let text = format!("{}{}", reload.stdout, reload.stderr);
    assert!(
        !reload.ok && text.contains("policy.toml:9:") && text.contains("`pal-gone`"),
        "{reload:?}"
    );
    let rules = cli(&host.socket(), &["list", "rules"]);
    assert!(
        rules.ok && rules.stdout.contains("mirror to pal-mir"),
        "{rules:?}"
    );

    // The mirror port vanishes under a running policy: copies fail, originals go on.
    run_ok(&router, "ip", &["link", "del", "pal-mir"]);
    let failed_before = host.scratch.counter("ACTION_STATS", AS_MIRROR_FAILED);
    let rx = Counter::start(&r.outside, "sockets", "-", host.scratch.file("stop-rx2"));
    send(&r);
    let received = rx.finish();
    for v in [4, 6] {
        assert_eq!(
            n(&received, &format!("{v}:7004")),
            SENT,
            "delivered: {received}"
        );
    }
    let failed = host.scratch.counter("ACTION_STATS", AS_MIRROR_FAILED) - failed_before;
    assert!(failed >= 2 * SENT as u64, "mirror_failed {failed}");
}
