//! End to end: the `redirect` action with the real daemon on a router with two uplinks.
//!
//! The routed lab of `support/routed.rs` (guarded host -> router -> outside host over
//! `veth-ro`) with a second uplink from the router to the outside host (`pal-up2` /
//! `pal-up2o`, 10.71.3.0/24 and fd71:3::/64, MTU 1400) and routing table 100 in the router
//! whose default route leaves by that uplink. Palisade guards the router's `veth-rg`. The
//! guarded host sends UDP, both families, to the outside host's address 10.71.2.1 /
//! fd71:2::1:
//! - port 7003 (no rule) follows the main table: seen on `veth-o` only;
//! - port 7004 (`route_table = 100`) leaves by the second uplink, MACs rewritten to the
//!   outside host's `pal-up2o`, TTL decremented: seen on `pal-up2o` only and delivered to
//!   the outside host's socket;
//! - port 7005 (`redirect_to = "pal-up2"`) leaves by the second uplink as it came (its
//!   destination MAC is the router's): seen on `pal-up2o` by a packet socket;
//! - before the router knows its next hop's MAC, route-to passes the packet to the stack
//!   (`no_neigh`), which sends it by the main table;
//! - a datagram over the uplink's MTU is dropped (`redirect-too-big`) and arrives nowhere;
//! - a policy naming an interface that does not exist is refused, the running one stays.
//!
//! A frame redirected from XDP into a veth is delivered only when the peer of the target
//! has NAPI running (an XDP program attached, or GRO on): the lab turns GRO on on
//! `pal-up2o`, and the test checks first that without it the redirected frames are lost.
//! A redirected frame also leaves without its skb, so a checksum left to offload would arrive
//! unfinished: the guarded host sends with tx checksum offload off, as a NIC receives.
//!
//! Needs root. Run with `cargo test --release -p palisade --test action_redirect_netns`.

#[path = "support/control.rs"]
mod control;
mod support;

use std::time::Duration;

use control::{GuardedHost, cli, cli_json};
use palisade_common::{
    reason,
    redirect::{RS_NO_NEIGH, RS_SENT, RS_TOO_BIG},
};
use support::routed::{Listener, Routed, run_ok};

const SENT: usize = 10;

fn policy(direct: &str) -> String {
    format!(
        "[firewall]\ndefault = \"allow\"\n\n\
         [[firewall.rule]]\nname = \"up2\"\naction = \"redirect\"\nproto = \"udp\"\n\
         dport = 7004\nroute_table = 100\n\n\
         [[firewall.rule]]\nname = \"direct\"\naction = \"redirect\"\nproto = \"udp\"\n\
         dport = 7005\nredirect_to = \"{direct}\"\n"
    )
}

/// Until the stop file exists: counts UDP datagrams by interface, family and destination
/// port on packet sockets of the interfaces given, and on sockets bound to ports 7003-7005
/// (as `rx`). Prints one JSON object of counts, e.g. `{"veth-o:4:7003": 10}`.
const COUNT: &str = r#"
import json, os, select, socket, struct, sys
stop, ifaces = sys.argv[1], sys.argv[2:]
seen = {}
def bump(k):
    seen[k] = seen.get(k, 0) + 1
socks = []
for i in ifaces:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((i, 0))
    socks.append((i, None, s))
for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for port in (7003, 7004, 7005):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port))
        socks.append(("rx", (4 if fam == socket.AF_INET else 6, port), s))
print("ready", flush=True)
while not os.path.exists(stop):
    ready, _, _ = select.select([s for _, _, s in socks], [], [], 0.05)
    for name, bound, s in socks:
        if s not in ready:
            continue
        f, addr = s.recvfrom(65535)
        if bound is not None:
            bump("rx:%d:%d" % bound)
            continue
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        et = struct.unpack("!H", f[12:14])[0]
        if et == 0x0800 and f[23] == 17:
            ihl = (f[14] & 15) * 4
            bump("%s:4:%d" % (name, struct.unpack("!H", f[14 + ihl + 2:14 + ihl + 4])[0]))
            bump("%s:ttl4:%d" % (name, f[22]))
        elif et == 0x86dd and f[20] == 17:
            bump("%s:6:%d" % (name, struct.unpack("!H", f[56:58])[0]))
            bump("%s:ttl6:%d" % (name, f[21]))
print(json.dumps(seen), flush=True)
"#;

/// Sends `count` datagrams of `size` bytes to each port given, both families.
const SEND: &str = r#"
import socket, sys, time
v4, v6, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ports = [int(p) for p in sys.argv[5:]]
for fam, dst in ((socket.AF_INET, v4), (socket.AF_INET6, v6)):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    for i in range(count):
        for port in ports:
            s.sendto(b"r" * size, (dst, port))
        time.sleep(0.002)
"#;

struct Counter(Listener);

impl Counter {
    fn start(ns: &str, ifaces: &[&str], stop: std::path::PathBuf) -> Self {
        let mut args = vec![stop.to_str().unwrap()];
        args.extend(ifaces);
        Self(Listener::start(ns, COUNT, &args, stop.clone()))
    }

    fn finish(self) -> serde_json::Value {
        serde_json::from_str(&self.0.finish()).expect("counts")
    }
}

fn n(counts: &serde_json::Value, key: &str) -> usize {
    counts[key].as_u64().unwrap_or(0) as usize
}

/// Sends `count` datagrams of `size` bytes to `ports` from the guarded host and counts what
/// the outside host sees.
fn exchange(
    r: &Routed,
    host: &GuardedHost,
    tag: &str,
    count: usize,
    size: usize,
    ports: &[&str],
) -> serde_json::Value {
    let rx = Counter::start(
        &r.outside,
        &[Routed::OUTSIDE_IF, "pal-up2o"],
        host.scratch.file(&format!("stop-{tag}")),
    );
    let mut args = vec![
        "-c".to_string(),
        SEND.to_string(),
        Routed::OUTSIDE_V4.into(),
        Routed::OUTSIDE_V6.into(),
        count.to_string(),
        size.to_string(),
    ];
    args.extend(ports.iter().map(|p| (*p).to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&r.guarded, "python3", &args);
    std::thread::sleep(Duration::from_millis(300));
    rx.finish()
}

#[test]
fn redirect_rules_send_traffic_out_of_the_other_uplink() {
    let r = Routed::new();
    let (router, outside) = (r.router.clone(), r.outside.clone());
    r.add_uplink(
        ("pal-up2", "pal-up2o"),
        "1400",
        ("10.71.3.254/24", "fd71:3::fe/64"),
        ("10.71.3.1/24", "fd71:3::1/64"),
    );
    r.route_in_table("-4", "100", "default", Some("10.71.3.1"), "pal-up2");
    r.route_in_table("-6", "100", "default", Some("fd71:3::1"), "pal-up2");
    // Replies to the guarded host leave the outside host by its default route (veth-o): the
    // path is asymmetric, so the outside host must not filter by reverse path.
    for s in [
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv4.conf.pal-up2o.rp_filter=0",
    ] {
        run_ok(&outside, "sysctl", &["-qw", s]);
    }
    // A redirected frame leaves XDP without its skb: a checksum the sender's veth left for
    // offload (CHECKSUM_PARTIAL) would arrive unfinished and the outside host's stack would
    // drop the datagram. A NIC receives finished checksums; so does the lab, with tx
    // offload off on the sending side.
    run_ok(
        &r.guarded,
        "ethtool",
        &["-K", Routed::GUARDED_IF, "tx", "off"],
    );
    let mut host = GuardedHost::new("action-redirect", &policy("pal-up2"), &router, "veth-rg");
    host.start();
    let rules = cli(&host.socket(), &["list", "rules"]);
    assert!(
        rules.ok
            && rules.stdout.contains("redirect via table 100")
            && rules.stdout.contains("redirect to pal-up2"),
        "{rules:?}"
    );

    // The next hop not resolved yet: the stack gets route-to's packets, sends them by the
    // main table and resolves nothing for table 100.
    let no_neigh = host.scratch.counter("REDIRECT_STATS", RS_NO_NEIGH);
    let seen = exchange(&r, &host, "neigh", 2, 64, &["7004"]);
    assert_eq!(n(&seen, "veth-o:4:7004"), 2, "{seen}");
    assert_eq!(n(&seen, "veth-o:6:7004"), 2, "{seen}");
    assert_eq!(n(&seen, "rx:4:7004") + n(&seen, "rx:6:7004"), 4, "{seen}");
    assert!(host.scratch.counter("REDIRECT_STATS", RS_NO_NEIGH) - no_neigh >= 4);
    run_ok(&router, "ping", &["-c1", "-W2", "10.71.3.1"]);
    run_ok(&router, "ping", &["-6", "-c1", "-W2", "fd71:3::1"]);

    // Without NAPI on the target's peer, native XDP redirect into a veth loses the frame.
    run_ok(&outside, "ethtool", &["-K", "pal-up2o", "gro", "off"]);
    let sent = host.scratch.counter("REDIRECT_STATS", RS_SENT);
    let seen = exchange(&r, &host, "nonapi", 2, 64, &["7004"]);
    assert_eq!(
        n(&seen, "pal-up2o:4:7004") + n(&seen, "veth-o:4:7004"),
        0,
        "{seen}"
    );
    assert!(host.scratch.counter("REDIRECT_STATS", RS_SENT) - sent >= 4);
    run_ok(&outside, "ethtool", &["-K", "pal-up2o", "gro", "on"]);

    let seen = exchange(&r, &host, "main", SENT, 64, &["7003", "7004", "7005"]);
    for v in [4, 6] {
        assert_eq!(n(&seen, &format!("veth-o:{v}:7003")), SENT, "{seen}");
        assert_eq!(n(&seen, &format!("pal-up2o:{v}:7003")), 0, "{seen}");
        assert_eq!(n(&seen, &format!("rx:{v}:7003")), SENT, "{seen}");
        assert_eq!(n(&seen, &format!("pal-up2o:{v}:7004")), SENT, "{seen}");
        assert_eq!(n(&seen, &format!("veth-o:{v}:7004")), 0, "{seen}");
        assert_eq!(n(&seen, &format!("rx:{v}:7004")), SENT, "{seen}");
        // Direct: out of pal-up2 as it came in, for the router's MAC: the outside host's
        // stack does not take it, its packet socket sees it.
        assert_eq!(n(&seen, &format!("pal-up2o:{v}:7005")), SENT, "{seen}");
        assert_eq!(n(&seen, &format!("veth-o:{v}:7005")), 0, "{seen}");
        assert_eq!(n(&seen, &format!("rx:{v}:7005")), 0, "{seen}");
    }
    // Hop limits: 64 from the guarded host; route-to decrements (63), direct does not (64);
    // the stack's forwarding decrements 7003's (63, on veth-o).
    assert_eq!(n(&seen, "pal-up2o:ttl4:63"), SENT, "{seen}");
    assert_eq!(n(&seen, "pal-up2o:ttl4:64"), SENT, "{seen}");
    assert_eq!(n(&seen, "pal-up2o:ttl6:63"), SENT, "{seen}");
    assert_eq!(n(&seen, "pal-up2o:ttl6:64"), SENT, "{seen}");

    // Over the uplink's MTU (1400): dropped, arrives nowhere.
    let too_big = host.scratch.counter("REDIRECT_STATS", RS_TOO_BIG);
    let seen = exchange(&r, &host, "big", 3, 1420, &["7004", "7005"]);
    assert_eq!(
        seen.as_object().map_or(0, |o| o.len()),
        0,
        "nothing arrives: {seen}"
    );
    assert_eq!(
        host.scratch.counter("REDIRECT_STATS", RS_TOO_BIG) - too_big,
        12,
        "3 of each port and family"
    );
    let json = cli_json(&host.socket(), &["stats", "--json"]);
    assert!(
        json["counters"]["redirect"]
            .as_array()
            .expect("counters.redirect")
            .iter()
            .any(|c| c["name"] == "too_big" && c["value"].as_u64() >= Some(12)),
        "{json}"
    );
    assert!(
        host.scratch
            .counter("REASON_STATS", reason::REDIRECT_TOO_BIG)
            >= 12
    );

    // A policy naming an interface that is not there is refused; the running one stays.
    std::fs::write(&host.policy, policy("pal-gone")).unwrap();
    let reload = cli(&host.socket(), &["reload"]);
    let text = format!("{}{}", reload.stdout, reload.stderr);
    assert!(
        !reload.ok && text.contains("policy.toml:16:15:") && text.contains("`pal-gone`"),
        "{reload:?}"
    );
    let rules = cli(&host.socket(), &["list", "rules"]);
    assert!(
        rules.ok && rules.stdout.contains("redirect to pal-up2"),
        "{rules:?}"
    );
}
