//! The `redirect` action in the kernel, through `BPF_PROG_TEST_RUN` on the XDP firewall, in a
//! network namespace of its own with real routes and neighbours:
//! - route-to (`route_table`): the verdict (`XDP_REDIRECT`), the MACs rewritten from the fib
//!   lookup (the egress interface's own address as the source: the target), the TTL / hop
//!   limit decremented with the IPv4 checksum equal to a full recompute, every other byte
//!   untouched; no route, no neighbour and a TTL of 1 pass unchanged; too big for the
//!   route's MTU is dropped with `redirect-too-big`;
//! - direct (`redirect_to`): `XDP_REDIRECT` with the frame untouched; too big for that
//!   interface's MTU (and only that interface's) is dropped;
//! - the counters of each outcome and the events of a `log = true` rule;
//! - the config errors a bad `redirect` rule gets, each at its line.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test action_redirect_testrun`.

mod support;

use std::{path::Path, process::Command};

use palisade::{
    craft::{Frame, checksum},
    policy::config,
    testrun::{Bench, sum_counter},
};
use palisade_common::{
    reason,
    redirect::{RS_MATCHED, RS_NO_NEIGH, RS_NO_ROUTE, RS_SENT, RS_TOO_BIG, RS_TTL_EXPIRED},
};
use support::netns::in_netns;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x02];

const POLICY: &str = r#"
[firewall]
default = "allow"

[[firewall.rule]]
name = "via100"
action = "redirect"
proto = "udp"
dport = 5000
route_table = 100
log = true

[[firewall.rule]]
name = "out-b"
action = "redirect"
proto = "udp"
dport = 5001
redirect_to = "rdt-b"

[[firewall.rule]]
name = "out-a"
action = "redirect"
proto = "udp"
dport = 5002
redirect_to = "rdt-a"
"#;

/// A namespace with a veth pair `rdt-a` (MTU 1400, the routes' interface) / `rdt-b` (MTU
/// 1500), forwarding on, and routing table 100 with a resolved and an unresolved next hop.
struct Lab {
    ns: String,
}

impl Lab {
    fn new() -> Self {
        let lab = Self {
            ns: format!("pal-rdt-{}", std::process::id()),
        };
        let ns = lab.ns.as_str();
        ip(&["netns", "add", ns]);
        for args in [
            vec!["link", "set", "lo", "up"],
            vec![
                "link", "add", "rdt-a", "mtu", "1400", "type", "veth", "peer", "name", "rdt-b",
            ],
            vec!["link", "set", "rdt-a", "up"],
            vec!["link", "set", "rdt-b", "up"],
            vec!["addr", "add", "10.77.0.1/24", "dev", "rdt-a"],
            vec!["-6", "addr", "add", "fd77::1/64", "dev", "rdt-a", "nodad"],
            vec![
                "neigh",
                "add",
                "10.77.0.2",
                "lladdr",
                "02:aa:bb:cc:dd:02",
                "dev",
                "rdt-a",
                "nud",
                "permanent",
            ],
            vec![
                "-6",
                "neigh",
                "add",
                "fd77::2",
                "lladdr",
                "02:aa:bb:cc:dd:02",
                "dev",
                "rdt-a",
                "nud",
                "permanent",
            ],
            vec![
                "route",
                "add",
                "198.51.100.0/24",
                "via",
                "10.77.0.2",
                "dev",
                "rdt-a",
                "table",
                "100",
            ],
            vec![
                "route",
                "add",
                "203.0.113.0/24",
                "via",
                "10.77.0.3",
                "dev",
                "rdt-a",
                "table",
                "100",
            ],
            vec![
                "-6",
                "route",
                "add",
                "2001:db8:100::/48",
                "via",
                "fd77::2",
                "dev",
                "rdt-a",
                "table",
                "100",
            ],
        ] {
            let mut a = vec!["-n", ns];
            a.extend(args);
            ip(&a);
        }
        for s in [
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv6.conf.all.forwarding=1",
        ] {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw", s])
                .output()
                .unwrap();
            assert!(out.status.success(), "sysctl {s}");
        }
        lab
    }

    fn mac(&self, iface: &str) -> [u8; 6] {
        let out = Command::new("ip")
            .args(["-n", &self.ns, "-j", "link", "show", iface])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let s = v[0]["address"].as_str().unwrap();
        let mut mac = [0u8; 6];
        for (m, part) in mac.iter_mut().zip(s.split(':')) {
            *m = u8::from_str_radix(part, 16).unwrap();
        }
        mac
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rs(b: &Bench, i: u32) -> u64 {
    sum_counter(&b.ebpf, "REDIRECT_STATS", i).expect("REDIRECT_STATS")
}

fn udp(src: &str, dst: &str, dport: u16, ttl: u8, payload: usize) -> Vec<u8> {
    let mut f = Frame::udp(src, dst, 40000, dport).with_payload(&vec![0x5a; payload]);
    f.ttl = ttl;
    f.build()
}

/// The frame a route-to redirect should produce from `frame`: MACs of the next hop and of
/// `egress`, TTL / hop limit less one, the IPv4 checksum recomputed from scratch.
fn routed(frame: &[u8], egress: [u8; 6]) -> Vec<u8> {
    let mut want = frame.to_vec();
    want[..6].copy_from_slice(&NEXT_HOP_MAC);
    want[6..12].copy_from_slice(&egress);
    if want[14] >> 4 == 4 {
        want[14 + 8] -= 1;
        want[24] = 0;
        want[25] = 0;
        let c = checksum(&want[14..34], 0);
        want[24..26].copy_from_slice(&c.to_be_bytes());
    } else {
        want[14 + 7] -= 1;
    }
    want
}

#[test]
fn redirects_route_rewrite_and_refuse_as_documented() {
    let lab = Lab::new();
    let (mac_a, mac_b) = (lab.mac("rdt-a"), lab.mac("rdt-b"));
    assert_ne!(mac_a, mac_b);
    let ns = lab.ns.clone();
    in_netns(&ns, move || {
        let policy = config::parse_policy(POLICY, "redirect.toml", Path::new("/")).expect("policy");
        let mut b = Bench::new().expect("load (needs root)");
        b.install(&policy).expect("install");
        b.drain_events();
        let c = |b: &Bench| {
            [
                RS_MATCHED,
                RS_SENT,
                RS_TOO_BIG,
                RS_NO_ROUTE,
                RS_NO_NEIGH,
                RS_TTL_EXPIRED,
            ]
            .map(|i| rs(b, i))
        };
        let too_big_reason = b.reason_count(reason::REDIRECT_TOO_BIG).unwrap();

        // Route-to, both families: rewritten byte by byte, out of rdt-a (its MAC as source).
        let before = c(&b);
        for frame in [
            udp("192.0.2.7", "198.51.100.1", 5000, 64, 32),
            udp("2001:db8::7", "2001:db8:100::1", 5000, 64, 32),
        ] {
            let (verdict, out) = b.run_with_output(&frame).expect("run");
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(out, routed(&frame, mac_a), "{frame:02x?}");
        }
        let after = c(&b);
        assert_eq!(after[0] - before[0], 2, "matched");
        assert_eq!(after[1] - before[1], 2, "sent");

        // No route in table 100 (the main table has none either), no neighbour, TTL 1: the
        // stack gets the frame unchanged.
        for (frame, counter) in [
            (udp("192.0.2.7", "10.99.0.1", 5000, 64, 32), 3),
            (udp("2001:db8::7", "2001:db8:200::1", 5000, 64, 32), 3),
            (udp("192.0.2.7", "203.0.113.9", 5000, 64, 32), 4),
            (udp("192.0.2.7", "198.51.100.1", 5000, 1, 32), 5),
            (udp("2001:db8::7", "2001:db8:100::1", 5000, 1, 32), 5),
        ] {
            let before = c(&b);
            let (verdict, out) = b.run_with_output(&frame).expect("run");
            assert_eq!((verdict, &out), (XDP_PASS, &frame), "{frame:02x?}");
            let after = c(&b);
            assert_eq!(after[counter] - before[counter], 1, "counter {counter}");
            assert_eq!(after[1], before[1], "not sent");
        }

        // Over the route's MTU (rdt-a: 1400): dropped with its reason.
        let before = c(&b);
        for frame in [
            udp("192.0.2.7", "198.51.100.1", 5000, 64, 1380),
            udp("2001:db8::7", "2001:db8:100::1", 5000, 64, 1380),
        ] {
            assert_eq!(b.run_with_output(&frame).expect("run").0, XDP_DROP);
        }
        // Exactly the MTU still goes: IPv4 20 + UDP 8 + 1372 = 1400.
        let fits = udp("192.0.2.7", "198.51.100.1", 5000, 64, 1372);
        let (verdict, out) = b.run_with_output(&fits).expect("run");
        assert_eq!((verdict, out), (XDP_REDIRECT, routed(&fits, mac_a)));
        let after = c(&b);
        assert_eq!(after[2] - before[2], 2, "too_big");
        assert_eq!(
            b.reason_count(reason::REDIRECT_TOO_BIG).unwrap() - too_big_reason,
            2
        );

        // The rule logs: redirects as XDP_REDIRECT, the too-big ones as drops.
        let ev = b.drain_events();
        let redirected = ev
            .iter()
            .filter(|e| u32::from(e.action) == XDP_REDIRECT)
            .count();
        let dropped: Vec<_> = ev
            .iter()
            .filter(|e| u32::from(e.action) == XDP_DROP)
            .collect();
        assert_eq!(redirected, 3, "{ev:?}");
        assert_eq!(dropped.len(), 2, "{ev:?}");
        assert!(ev.iter().all(|e| e.rule == 0));
        assert!(dropped.iter().all(|e| e.reason == reason::REDIRECT_TOO_BIG));

        // Direct: the frame as it is; the MTU checked is the named interface's own.
        let before = c(&b);
        let big_b = udp("192.0.2.7", "10.99.0.1", 5001, 64, 1420);
        assert_eq!(
            b.run_with_output(&big_b).expect("run"),
            (XDP_REDIRECT, big_b.clone()),
            "1448 bytes fit rdt-b (MTU 1500)"
        );
        let big_a = udp("192.0.2.7", "10.99.0.1", 5002, 64, 1420);
        assert_eq!(b.run_with_output(&big_a).expect("run").0, XDP_DROP);
        let small_a = udp("2001:db8::7", "2001:db8:200::1", 5002, 64, 100);
        assert_eq!(
            b.run_with_output(&small_a).expect("run"),
            (XDP_REDIRECT, small_a.clone())
        );
        let after = c(&b);
        assert_eq!(after[1] - before[1], 2, "sent");
        assert_eq!(after[2] - before[2], 1, "too_big");

        // Other traffic: untouched, not counted.
        let other = udp("192.0.2.7", "198.51.100.1", 6000, 64, 32);
        assert_eq!(b.run_with_output(&other).expect("run"), (XDP_PASS, other));
        assert_eq!(c(&b)[0], after[0]);
    });
}

fn errors(text: &str) -> String {
    config::parse_policy(text, "bad.toml", Path::new("/"))
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn bad_redirect_rules_are_refused_at_their_lines() {
    let head = "[firewall]\ndefault = \"allow\"\n\n[[firewall.rule]]\n";
    let e = errors(&format!("{head}action = \"redirect\"\nproto = \"udp\"\n"));
    assert!(
        e.contains("bad.toml:5") && e.contains("needs `redirect_to`"),
        "{e}"
    );
    let e = errors(&format!("{head}action = \"drop\"\nredirect_to = \"lo\"\n"));
    assert!(
        e.contains("bad.toml:6") && e.contains("`redirect_to` is only allowed with action"),
        "{e}"
    );
    let e = errors(&format!("{head}action = \"allow\"\nroute_table = 100\n"));
    assert!(
        e.contains("bad.toml:6") && e.contains("`route_table` is only allowed with action"),
        "{e}"
    );
    let e = errors(&format!(
        "{head}action = \"redirect\"\nredirect_to = \"pal-absent-if\"\n"
    ));
    assert!(
        e.contains("bad.toml:6") && e.contains("no network interface named `pal-absent-if`"),
        "{e}"
    );
    let e = errors(&format!(
        "{head}action = \"redirect\"\nredirect_to = \"lo\"\nroute_table = 100\n"
    ));
    assert!(
        e.contains("bad.toml:7") && e.contains("exclude each other"),
        "{e}"
    );
    let e = errors(&format!("{head}action = \"redirect\"\nroute_table = 0\n"));
    assert!(e.contains("bad.toml:6"), "{e}");
    let e = errors(&format!(
        "{head}action = \"redirect\"\nroute_table = 100\nmirror_to = \"lo\"\n"
    ));
    assert!(
        e.contains("bad.toml:7") && e.contains("`mirror_to` is only"),
        "{e}"
    );
}
