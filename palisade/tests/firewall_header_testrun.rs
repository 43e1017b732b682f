//! DSCP, ECN, TTL / hop-limit and IP length conditions through the real XDP program (`BPF_PROG_TEST_RUN`):
//! a policy written as text (what `palisade check` reads), crafted IPv4 and IPv6 frames on
//! and beside every edge, and for each the kernel's verdict, the rule its event names, the
//! rule's counters and the unchanged bytes of a passed frame, next to the reference.
//!
//! Needs root (or CAP_BPF) and the kernel object; run with `--release`.

use std::path::Path;

use palisade::{
    craft::Frame,
    firewall::reference,
    policy::{config, model::Policy},
    testrun::Bench,
};
use palisade_common::{
    event::KIND_FIREWALL,
    firewall::DEFAULT_SLOT,
    packet::{self, ETH_HLEN},
    reason,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const POLICY: &str = r#"
[firewall]
default = "allow"
log_default = false

# 0: traceroute probes and expiring packets.
[[firewall.rule]]
name = "low-ttl"
action = "drop"
log = true
ttl = "0-2"

# 1: expedited forwarding that is also congestion-marked.
[[firewall.rule]]
name = "ef-ce"
action = "drop"
log = true
dscp = "ef"
ecn = "ce"

# 2: UDP to 53 in class selector 1 (scavenger), hop limits 60 to 70 only.
[[firewall.rule]]
name = "cs1-dns"
action = "drop"
log = true
proto = "udp"
dport = 53
dscp = "cs1"
ttl = "60-70"

# 3: every other ECN-capable transport (ECT(0)).
[[firewall.rule]]
name = "ect0"
action = "drop"
log = true
ecn = "ect0"
"#;

fn policy() -> Policy {
    config::parse_policy(POLICY, "header.toml", Path::new("/")).expect("the policy parses")
}

/// A UDP frame to port `dport` with the given TOS / traffic class and TTL / hop limit.
fn frame(v6: bool, dport: u16, tos: u8, ttl: u8) -> Vec<u8> {
    let (src, dst) = if v6 {
        ("2001:db8::1", "2001:db8::2")
    } else {
        ("192.0.2.1", "198.51.100.2")
    };
    let mut f = Frame::udp(src, dst, 40000, dport);
    f.tos = tos;
    f.ttl = ttl;
    f.build()
}

const EF: u8 = 46 << 2;
const CS1: u8 = 8 << 2;
const CE: u8 = 3;
const ECT0: u8 = 2;
const ECT1: u8 = 1;

#[test]
fn dscp_ecn_and_ttl_decide_in_the_kernel_as_in_the_reference() {
    let p = policy();
    let mut bench = Bench::new().expect("loading the kernel object (needs root)");
    bench.install(&p).expect("install");
    // (dport, tos, ttl, the rule that must match)
    let cases: [(u16, u8, u8, Option<u32>); 18] = [
        (80, 0, 0, Some(0)),
        (80, 0, 2, Some(0)),
        (80, EF | CE, 2, Some(0)),
        (80, 0, 3, None),
        (80, 0, 64, None),
        (80, EF | CE, 64, Some(1)),
        (80, EF | ECT0, 64, Some(3)),
        (80, EF | ECT1, 64, None),
        (80, (46 ^ 1) << 2 | CE, 64, None),
        (53, CS1, 60, Some(2)),
        (53, CS1, 70, Some(2)),
        (53, CS1, 59, None),
        (53, CS1, 71, None),
        (53, CS1 | ECT0, 64, Some(2)),
        (53, CS1 | ECT1, 255, None),
        (54, CS1, 64, None),
        (53, 0, 64, None),
        (80, 0xff, 255, None),
    ];
    for v6 in [false, true] {
        for &(dport, tos, ttl, want) in &cases {
            let bytes = frame(v6, dport, tos, ttl);
            let pkt = match packet::parse(&bytes[..]) {
                Ok(packet::Frame::Ip(pkt)) => pkt,
                other => panic!("crafted frame does not parse: {other:?}"),
            };
            assert_eq!(
                (pkt.tos, pkt.ttl),
                (tos, ttl),
                "the parser reads both fields"
            );
            assert_eq!(
                reference::first_match(&p, &pkt),
                want,
                "reference, v6 {v6} dport {dport} tos {tos:#04x} ttl {ttl}"
            );
            let before = want.map(|r| bench.rule_hits(r).unwrap());
            let default_before = bench.rule_hits(DEFAULT_SLOT).unwrap();
            let (action, out) = bench.run_with_output(&bytes).expect("test run");
            let events: Vec<_> = bench
                .drain_events()
                .into_iter()
                .filter(|e| e.kind == KIND_FIREWALL)
                .collect();
            let what = format!("kernel, v6 {v6} dport {dport} tos {tos:#04x} ttl {ttl}");
            match want {
                Some(rule) => {
                    assert_eq!(action, XDP_DROP, "{what}");
                    assert_eq!(events.len(), 1, "{what}: {events:?}");
                    assert_eq!(
                        (events[0].rule, events[0].reason),
                        (rule, reason::RULE),
                        "{what}"
                    );
                    let after = bench.rule_hits(rule).unwrap();
                    let before = before.unwrap();
                    assert_eq!(after.packets, before.packets + 1, "{what}");
                    assert_eq!(after.bytes, before.bytes + bytes.len() as u64, "{what}");
                }
                None => {
                    assert_eq!(action, XDP_PASS, "{what}");
                    assert!(events.is_empty(), "{what}: {events:?}");
                    assert_eq!(out, bytes, "{what}: a passed frame is not rewritten");
                    let after = bench.rule_hits(DEFAULT_SLOT).unwrap();
                    assert_eq!(after.packets, default_before.packets + 1, "{what}");
                }
            }
        }
    }
}

#[test]
fn the_ipv6_traffic_class_is_read_across_its_two_bytes() {
    // Traffic class EF + CE with the flow label's bits all set around it: only the class
    // bits may count.
    let p = policy();
    let mut bench = Bench::new().expect("loading the kernel object (needs root)");
    bench.install(&p).expect("install");
    let mut bytes = frame(true, 80, EF | CE, 64);
    bytes[ETH_HLEN + 1] |= 0x0f;
    bytes[ETH_HLEN + 2] = 0xff;
    bytes[ETH_HLEN + 3] = 0xff;
    let (action, _) = bench.run_with_output(&bytes).expect("test run");
    let events = bench.drain_events();
    assert_eq!(action, XDP_DROP);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].rule, 1, "rule ef-ce");
    // The same frame one class bit off passes.
    bytes[ETH_HLEN + 1] ^= 0x40;
    let (action, _) = bench.run_with_output(&bytes).expect("test run");
    assert_eq!(action, XDP_PASS);
    assert!(bench.drain_events().is_empty());
}

const LENGTH_POLICY: &str = r#"
[firewall]
default = "allow"
log_default = false

# 0: UDP to port 9 of exactly 100 bytes.
[[firewall.rule]]
name = "exact-100"
action = "drop"
log = true
proto = "udp"
dport = 9
length = 100

# 1: to port 80, from 576 to 1500 bytes.
[[firewall.rule]]
name = "mid"
action = "drop"
log = true
dport = 80
proto = "udp"
length = "576-1500"

# 2: anything above 1500 bytes.
[[firewall.rule]]
name = "big"
action = "drop"
log = true
length = "1501-65535"
"#;

/// A UDP frame to port `dport` whose IP packet is `length` bytes long, behind `vlans`.
fn sized_frame(v6: bool, dport: u16, length: u16, vlans: &[u16]) -> Vec<u8> {
    let (src, dst, headers) = if v6 {
        ("2001:db8::1", "2001:db8::2", 48)
    } else {
        ("192.0.2.1", "198.51.100.2", 28)
    };
    let payload = vec![0xa5; usize::from(length - headers)];
    Frame::udp(src, dst, 40000, dport)
        .with_payload(&payload)
        .with_vlans(vlans, false)
        .build()
}

#[test]
fn length_decides_in_the_kernel_as_in_the_reference() {
    let p = config::parse_policy(LENGTH_POLICY, "length.toml", Path::new("/"))
        .expect("the policy parses");
    let mut bench = Bench::new().expect("loading the kernel object (needs root)");
    bench.install(&p).expect("install");
    // (dport, IP length, VLAN tags, the rule that must match)
    let cases: [(u16, u16, &[u16], Option<u32>); 15] = [
        (9, 99, &[], None),
        (9, 100, &[], Some(0)),
        (9, 101, &[], None),
        (10, 100, &[], None),
        // Tags are link layer: the length is the IP packet's.
        (9, 100, &[7], Some(0)),
        (9, 96, &[7], None),
        (80, 575, &[], None),
        (80, 576, &[], Some(1)),
        (80, 1024, &[], Some(1)),
        (80, 1500, &[], Some(1)),
        (80, 1500, &[7, 8], Some(1)),
        (80, 1501, &[], Some(2)),
        (9, 1501, &[], Some(2)),
        (443, 3000, &[], Some(2)),
        (80, 64, &[], None),
    ];
    for v6 in [false, true] {
        for &(dport, length, vlans, want) in &cases {
            let bytes = sized_frame(v6, dport, length, vlans);
            let pkt = match packet::parse(&bytes[..]) {
                Ok(packet::Frame::Ip(pkt)) => pkt,
                other => panic!("crafted frame does not parse: {other:?}"),
            };
            assert_eq!(pkt.ip_len(), length, "the parser's IP length");
            let what = format!("v6 {v6} dport {dport} length {length} vlans {vlans:?}");
            assert_eq!(reference::first_match(&p, &pkt), want, "reference, {what}");
            let before = want.map(|r| bench.rule_hits(r).unwrap());
            let default_before = bench.rule_hits(DEFAULT_SLOT).unwrap();
            let (action, out) = bench.run_with_output(&bytes).expect("test run");
            let events: Vec<_> = bench
                .drain_events()
                .into_iter()
                .filter(|e| e.kind == KIND_FIREWALL)
                .collect();
            let what = format!("kernel, {what}");
            match want {
                Some(rule) => {
                    assert_eq!(action, XDP_DROP, "{what}");
                    assert_eq!(events.len(), 1, "{what}: {events:?}");
                    assert_eq!(
                        (events[0].rule, events[0].reason),
                        (rule, reason::RULE),
                        "{what}"
                    );
                    let after = bench.rule_hits(rule).unwrap();
                    let before = before.unwrap();
                    assert_eq!(after.packets, before.packets + 1, "{what}");
                    assert_eq!(after.bytes, before.bytes + bytes.len() as u64, "{what}");
                }
                None => {
                    assert_eq!(action, XDP_PASS, "{what}");
                    assert!(events.is_empty(), "{what}: {events:?}");
                    assert_eq!(out, bytes, "{what}: a passed frame is not rewritten");
                    let after = bench.rule_hits(DEFAULT_SLOT).unwrap();
                    assert_eq!(after.packets, default_before.packets + 1, "{what}");
                }
            }
        }
    }
}

#[test]
fn the_length_is_the_headers_not_the_frames() {
    // Ethernet padding after the IP packet (a short frame padded to 60 bytes, or trailing
    // bytes) does not count: the rule sees the header's length.
    let p = config::parse_policy(LENGTH_POLICY, "length.toml", Path::new("/"))
        .expect("the policy parses");
    let mut bench = Bench::new().expect("loading the kernel object (needs root)");
    bench.install(&p).expect("install");
    let mut bytes = sized_frame(false, 9, 100, &[]);
    bytes.extend_from_slice(&[0; 40]);
    let (action, _) = bench.run_with_output(&bytes).expect("test run");
    let events = bench.drain_events();
    assert_eq!(action, XDP_DROP, "100 bytes of IP in a 154-byte frame");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].rule, 0, "rule exact-100");
    // The same trailer behind a 99-byte packet: no rule.
    let mut bytes = sized_frame(false, 9, 99, &[]);
    bytes.extend_from_slice(&[0; 41]);
    let (action, _) = bench.run_with_output(&bytes).expect("test run");
    assert_eq!(action, XDP_PASS);
    assert!(bench.drain_events().is_empty());
}
