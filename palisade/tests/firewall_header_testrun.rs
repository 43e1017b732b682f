//! DSCP, ECN, TTL / hop-limit, IP length, MAC, VLAN, interface and negated conditions through
//! the real XDP program (`BPF_PROG_TEST_RUN`): a policy written as text (what `palisade check`
//! reads), crafted IPv4 and IPv6 frames on and beside every edge, and for each the kernel's
//! verdict, the rule its event names, the rule's counters and the unchanged bytes of a passed
//! frame, next to the reference.
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
    firewall::{
        DEFAULT_SLOT, LINK_DST_MAC, LINK_IFACE, LINK_SRC_MAC, LINK_VLAN, VLAN_UNTAGGED, read_link,
    },
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

/// (src MAC, dst MAC, dport, VLAN tags, the rule that must match).
type MacCase = (u8, u8, u16, &'static [u16], Option<u32>);
/// (src, dst, protocol, sport, dport, the rule that must match).
type NotCase = (
    &'static str,
    &'static str,
    &'static str,
    u16,
    u16,
    Option<u32>,
);

const MAC_POLICY: &str = r#"
[firewall]
default = "allow"
log_default = false

# 0: everything from one host's MAC.
[[firewall.rule]]
name = "from-aa"
action = "drop"
log = true
src_mac = "02:00:00:00:00:aa"

# 1: DNS to one gateway's MAC (written with dashes, upper case).
[[firewall.rule]]
name = "dns-to-bb"
action = "drop"
log = true
proto = "udp"
dport = 53
dst_mac = "02-00-00-00-00-BB"

# 2: SSH from cc to dd is allowed, before rule 3 drops the rest of SSH.
[[firewall.rule]]
name = "ssh-cc-dd"
action = "allow"
proto = "tcp"
dport = 22
src_mac = "02:00:00:00:00:cc"
dst_mac = "02:00:00:00:00:dd"

# 3: every other SSH.
[[firewall.rule]]
name = "ssh"
action = "drop"
log = true
proto = "tcp"
dport = 22
"#;

/// A UDP (or TCP, for port 22) frame to `dport` from MAC `src` to MAC `dst` (last bytes of
/// `02:00:00:00:00:xx`), behind `vlans`.
fn mac_frame(v6: bool, src: u8, dst: u8, dport: u16, vlans: &[u16]) -> Vec<u8> {
    let (s, d) = if v6 {
        ("2001:db8::1", "2001:db8::2")
    } else {
        ("192.0.2.1", "198.51.100.2")
    };
    let f = if dport == 22 {
        Frame::tcp(s, d, 40000, dport, packet::TCP_SYN)
    } else {
        Frame::udp(s, d, 40000, dport)
    };
    let mut bytes = f.with_vlans(vlans, false).build();
    bytes[..12].copy_from_slice(&[2, 0, 0, 0, 0, dst, 2, 0, 0, 0, 0, src]);
    bytes
}

fn mac_addresses_decide_in_the_kernel_as_in_the_reference(bench: &mut Bench) {
    let p =
        config::parse_policy(MAC_POLICY, "mac.toml", Path::new("/")).expect("the policy parses");
    let c = palisade::firewall::compile::compile(&p).expect("compiles");
    // Every distinct MAC condition is a shape of its own: from-aa, dns-to-bb, ssh-cc-dd, ssh.
    assert_eq!(c.tuples.len(), 4);
    bench.install(&p).expect("install");
    // (src MAC, dst MAC, dport, VLAN tags, the rule that must match)
    let cases: &[MacCase] = &[
        (0xaa, 0x01, 80, &[], Some(0)),
        (0xaa, 0xbb, 53, &[], Some(0)),
        (0xaa, 0x01, 22, &[7], Some(0)),
        (0xab, 0x01, 80, &[], None),
        (0xa9, 0xaa, 80, &[], None),
        (0x01, 0xbb, 53, &[], Some(1)),
        (0x01, 0xbb, 53, &[7, 8], Some(1)),
        (0x01, 0xbb, 54, &[], None),
        (0x01, 0xba, 53, &[], None),
        (0xbb, 0x01, 53, &[], None),
        (0xcc, 0xdd, 22, &[], Some(2)),
        (0xcc, 0xdd, 22, &[7], Some(2)),
        (0xcc, 0xde, 22, &[], Some(3)),
        (0xdd, 0xcc, 22, &[], Some(3)),
        (0x01, 0xdd, 22, &[], Some(3)),
        (0xcc, 0xdd, 23, &[], None),
    ];
    for v6 in [false, true] {
        for &(src, dst, dport, vlans, want) in cases {
            let bytes = mac_frame(v6, src, dst, dport, vlans);
            let pkt = match packet::parse(&bytes[..]) {
                Ok(packet::Frame::Ip(pkt)) => pkt,
                other => panic!("crafted frame does not parse: {other:?}"),
            };
            let link = read_link(&bytes[..]).expect("an Ethernet header");
            assert_eq!(
                (link.src_mac[5], link.dst_mac[5]),
                (src, dst),
                "the link reader"
            );
            let what = format!("v6 {v6} src {src:#x} dst {dst:#x} dport {dport} vlans {vlans:?}");
            assert_eq!(
                reference::first_match_link(&p, &pkt, &link),
                want,
                "reference, {what}"
            );
            assert_eq!(
                palisade::firewall::classify::first_match_link(&c, &pkt, &link),
                want,
                "userspace tuple search, {what}"
            );
            let drops = want.is_some_and(|r| r != 2);
            let slot = want.unwrap_or(DEFAULT_SLOT);
            let before = bench.rule_hits(slot).unwrap();
            let (action, out) = bench.run_with_output(&bytes).expect("test run");
            let events: Vec<_> = bench
                .drain_events()
                .into_iter()
                .filter(|e| e.kind == KIND_FIREWALL)
                .collect();
            let what = format!("kernel, {what}");
            if drops {
                assert_eq!(action, XDP_DROP, "{what}");
                assert_eq!(events.len(), 1, "{what}: {events:?}");
                assert_eq!(
                    (events[0].rule, events[0].reason),
                    (slot, reason::RULE),
                    "{what}"
                );
            } else {
                assert_eq!(action, XDP_PASS, "{what}");
                assert!(events.is_empty(), "{what}: {events:?}");
                assert_eq!(out, bytes, "{what}: a passed frame is not rewritten");
            }
            let after = bench.rule_hits(slot).unwrap();
            assert_eq!(after.packets, before.packets + 1, "{what}");
            assert_eq!(after.bytes, before.bytes + bytes.len() as u64, "{what}");
        }
    }
}

fn a_policy_without_link_conditions_never_reads_the_link_layer(bench: &mut Bench) {
    // The header's link bits are what the kernel tests before reading MACs: none without a
    // MAC rule, both with the MAC policy.
    let plain = config::parse_policy(LENGTH_POLICY, "length.toml", Path::new("/"))
        .expect("the policy parses");
    let c = palisade::firewall::compile::compile(&plain).expect("compiles");
    assert_eq!(c.header.link, 0);
    assert!(c.tuples.iter().all(|t| t.link == 0));
    let macs =
        config::parse_policy(MAC_POLICY, "mac.toml", Path::new("/")).expect("the policy parses");
    let c = palisade::firewall::compile::compile(&macs).expect("compiles");
    assert_eq!(c.header.link, LINK_SRC_MAC | LINK_DST_MAC);
    // A frame from aa is dropped by the MAC policy; after a reload to the plain policy the
    // same frame passes: the link record left in the per-CPU slot is not consulted.
    bench.install(&macs).expect("install");
    let bytes = mac_frame(false, 0xaa, 0x01, 80, &[]);
    assert_eq!(bench.run_with_output(&bytes).expect("test run").0, XDP_DROP);
    bench.install(&plain).expect("reload");
    assert_eq!(bench.run_with_output(&bytes).expect("test run").0, XDP_PASS);
    bench.drain_events();
}

const VLAN_POLICY: &str = r#"
[firewall]
default = "allow"
log_default = false

# 0: DNS on VLAN 7 (the outermost tag).
[[firewall.rule]]
name = "dns-on-7"
action = "drop"
log = true
proto = "udp"
dport = 53
vlan = 7

# 1: SSH on untagged frames only.
[[firewall.rule]]
name = "ssh-untagged"
action = "drop"
log = true
proto = "tcp"
dport = 22
vlan = "untagged"

# 2: priority-tagged frames (id 0).
[[firewall.rule]]
name = "prio-tag"
action = "drop"
log = true
vlan = 0

# 3: VLAN 4095 from one MAC.
[[firewall.rule]]
name = "4095-from-aa"
action = "drop"
log = true
vlan = 4095
src_mac = "02:00:00:00:00:aa"
"#;

fn vlan_ids_decide_in_the_kernel_as_in_the_reference(bench: &mut Bench) {
    let p =
        config::parse_policy(VLAN_POLICY, "vlan.toml", Path::new("/")).expect("the policy parses");
    let c = palisade::firewall::compile::compile(&p).expect("compiles");
    assert_eq!(c.tuples.len(), 4);
    assert_eq!(c.header.link, LINK_VLAN | LINK_SRC_MAC);
    bench.install(&p).expect("install");
    // (src MAC, dport, VLAN tags outermost first, the rule that must match)
    let cases: [(u8, u16, &[u16], Option<u32>); 17] = [
        (0x01, 53, &[7], Some(0)),
        (0x01, 53, &[7, 8], Some(0)),
        (0x01, 53, &[8, 7], None),
        (0x01, 53, &[6], None),
        (0x01, 53, &[], None),
        (0x01, 54, &[7], None),
        (0x01, 22, &[], Some(1)),
        (0x01, 22, &[7], None),
        (0x01, 22, &[0], Some(2)),
        (0x01, 80, &[0], Some(2)),
        (0x01, 80, &[0, 5], Some(2)),
        (0x01, 80, &[5, 0], None),
        (0x01, 80, &[1], None),
        (0xaa, 80, &[4095], Some(3)),
        (0xaa, 80, &[4094], None),
        (0xab, 80, &[4095], None),
        (0xaa, 80, &[], None),
    ];
    for v6 in [false, true] {
        for &(src, dport, vlans, want) in &cases {
            for qinq in [false, true] {
                if qinq && vlans.len() < 2 {
                    continue;
                }
                let mut bytes = mac_frame(v6, src, 0x01, dport, vlans);
                if qinq {
                    // An 802.1ad outer tag: the id is read the same.
                    bytes[12..14].copy_from_slice(&packet::ETH_P_8021AD.to_be_bytes());
                }
                let pkt = match packet::parse(&bytes[..]) {
                    Ok(packet::Frame::Ip(pkt)) => pkt,
                    other => panic!("crafted frame does not parse: {other:?}"),
                };
                let link = read_link(&bytes[..]).expect("an Ethernet header");
                assert_eq!(
                    link.vlan,
                    vlans.first().copied().unwrap_or(VLAN_UNTAGGED),
                    "the link reader"
                );
                let what =
                    format!("v6 {v6} src {src:#x} dport {dport} vlans {vlans:?} qinq {qinq}");
                assert_eq!(
                    reference::first_match_link(&p, &pkt, &link),
                    want,
                    "reference, {what}"
                );
                assert_eq!(
                    palisade::firewall::classify::first_match_link(&c, &pkt, &link),
                    want,
                    "userspace tuple search, {what}"
                );
                let slot = want.unwrap_or(DEFAULT_SLOT);
                let before = bench.rule_hits(slot).unwrap();
                let (action, out) = bench.run_with_output(&bytes).expect("test run");
                let events: Vec<_> = bench
                    .drain_events()
                    .into_iter()
                    .filter(|e| e.kind == KIND_FIREWALL)
                    .collect();
                let what = format!("kernel, {what}");
                if want.is_some() {
                    assert_eq!(action, XDP_DROP, "{what}");
                    assert_eq!(events.len(), 1, "{what}: {events:?}");
                    assert_eq!(
                        (events[0].rule, events[0].reason),
                        (slot, reason::RULE),
                        "{what}"
                    );
                } else {
                    assert_eq!(action, XDP_PASS, "{what}");
                    assert!(events.is_empty(), "{what}: {events:?}");
                    assert_eq!(out, bytes, "{what}: a passed frame is not rewritten");
                }
                let after = bench.rule_hits(slot).unwrap();
                assert_eq!(after.packets, before.packets + 1, "{what}");
                assert_eq!(after.bytes, before.bytes + bytes.len() as u64, "{what}");
            }
        }
    }
}

/// A veth pair for the test's life: frames "arrive" on its first end by `ingress_ifindex`.
struct Dummy(String);

impl Dummy {
    fn new(name: &str) -> Self {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", name])
            .output();
        let ok = std::process::Command::new("ip")
            .args(["link", "add", name, "type", "veth", "peer", "name"])
            .arg(format!("{name}p"))
            .status()
            .expect("ip")
            .success();
        assert!(ok, "ip link add {name} type veth");
        Self(name.to_owned())
    }

    fn index(&self) -> u32 {
        palisade::attach::ifindex(&self.0).expect("the dummy exists")
    }
}

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}

fn the_input_interface_decides_in_the_kernel_as_in_the_reference(bench: &mut Bench) {
    let dummy = Dummy::new("m19fw0");
    let text = r#"
[firewall]
default = "allow"
log_default = false

# 0: DNS arriving on the dummy.
[[firewall.rule]]
name = "dns-on-dummy"
action = "drop"
log = true
proto = "udp"
dport = 53
iface = "m19fw0"

# 1: port 80 on loopback, tagged 7.
[[firewall.rule]]
name = "web-lo-7"
action = "drop"
log = true
proto = "udp"
dport = 80
iface = "lo"
vlan = 7

# 2: port 99 on either of two interfaces (a list).
[[firewall.rule]]
name = "on-two"
action = "drop"
log = true
proto = "udp"
dport = 99
iface = ["m19fw0", "lo"]
"#;
    let p = config::parse_policy(text, "iface.toml", Path::new("/")).expect("the policy parses");
    let other = Dummy::new("m19fw1");
    let (lo, dm, ot) = (1, dummy.index(), other.index());
    assert_eq!(p.firewall.rules[0].link.iface, Some(dm));
    assert_eq!(p.firewall.rules[1].link.iface, Some(lo));
    assert_eq!(p.firewall.rules[2].link.ifaces(), vec![dm, lo]);
    let c = palisade::firewall::compile::compile(&p).expect("compiles");
    assert_eq!(c.header.link, LINK_IFACE | LINK_VLAN);
    bench.install(&p).expect("install");
    // (input interface, dport, VLAN tags, the rule that must match)
    let cases: [(u32, u16, &[u16], Option<u32>); 12] = [
        (dm, 99, &[], Some(2)),
        (lo, 99, &[5], Some(2)),
        (ot, 99, &[], None),
        (ot, 53, &[], None),
        (dm, 53, &[], Some(0)),
        (dm, 53, &[7], Some(0)),
        (lo, 53, &[], None),
        (dm, 54, &[], None),
        (lo, 80, &[7], Some(1)),
        (lo, 80, &[], None),
        (dm, 80, &[7], None),
        (lo, 80, &[8], None),
    ];
    for v6 in [false, true] {
        for &(ifindex, dport, vlans, want) in &cases {
            let bytes = mac_frame(v6, 0x01, 0x02, dport, vlans);
            let pkt = match packet::parse(&bytes[..]) {
                Ok(packet::Frame::Ip(pkt)) => pkt,
                other => panic!("crafted frame does not parse: {other:?}"),
            };
            let mut link = read_link(&bytes[..]).expect("an Ethernet header");
            link.ifindex = ifindex;
            let what = format!("v6 {v6} ifindex {ifindex} dport {dport} vlans {vlans:?}");
            assert_eq!(
                reference::first_match_link(&p, &pkt, &link),
                want,
                "reference, {what}"
            );
            assert_eq!(
                palisade::firewall::classify::first_match_link(&c, &pkt, &link),
                want,
                "userspace tuple search, {what}"
            );
            let slot = want.unwrap_or(DEFAULT_SLOT);
            let before = bench.rule_hits(slot).unwrap();
            let action = bench.run_on(ifindex, &bytes).expect("test run");
            let events: Vec<_> = bench
                .drain_events()
                .into_iter()
                .filter(|e| e.kind == KIND_FIREWALL)
                .collect();
            let what = format!("kernel, {what}");
            if want.is_some() {
                assert_eq!(action, XDP_DROP, "{what}");
                assert_eq!(events.len(), 1, "{what}: {events:?}");
                assert_eq!(events[0].rule, slot, "{what}");
                assert_eq!(events[0].ifindex, ifindex, "{what}: the event's interface");
            } else {
                assert_eq!(action, XDP_PASS, "{what}");
                assert!(events.is_empty(), "{what}: {events:?}");
            }
            let after = bench.rule_hits(slot).unwrap();
            assert_eq!(after.packets, before.packets + 1, "{what}");
        }
    }
    // A name with no interface is an error at its place, and nothing loads.
    let missing = text.replace("\"m19fw0\"", "\"m19nosuch\"");
    let err = config::parse_policy(&missing, "iface.toml", Path::new("/"))
        .expect_err("no such interface");
    assert!(
        err.to_string().contains(
            "iface.toml:13:9: no interface named `m19nosuch` on this host (`iface` is resolved \
             when the policy is loaded)"
        ),
        "{err}"
    );
    // An `iface` list: each name resolved, each once, at most eight.
    for (list, want) in [
        (
            "[\"m19fw0\", \"m19nosuch\"]",
            "iface.toml:32:20: no interface named `m19nosuch`",
        ),
        (
            "[\"lo\", \"lo\"]",
            "iface.toml:32:16: this interface is already in the `iface` list",
        ),
        (
            "[]",
            "iface.toml:32:9: `iface` lists 1 to 8 interfaces, found 0",
        ),
    ] {
        let bad = text.replace("[\"m19fw0\", \"lo\"]", list);
        let err =
            config::parse_policy(&bad, "iface.toml", Path::new("/")).expect_err("a bad iface list");
        assert!(err.to_string().contains(want), "{err}");
    }
}

const NOT_POLICY: &str = r#"
[firewall]
default = "allow"
log_default = false

[sets.office]
entries = ["10.0.0.0/8", "2001:db8:10::/48"]

# 0: SSH from anywhere but the office.
[[firewall.rule]]
name = "ssh-not-office"
action = "drop"
log = true
proto = "tcp"
dport = 22
src = "@office"
not = ["src"]

# 1: UDP to these networks on any port but 53.
[[firewall.rule]]
name = "udp-not-dns"
action = "drop"
log = true
proto = "udp"
dport = 53
dst = ["192.0.2.0/24", "2001:db8:2::/48"]
not = ["dport"]

# 2: anything but UDP from 198.51.100.0/24.
[[firewall.rule]]
name = "non-udp-from-198"
action = "drop"
log = true
proto = "udp"
src = "198.51.100.0/24"
not = "proto"

# 3: TCP from ports 1000-2000 to anywhere outside 203.0.113.0/24 (either family).
[[firewall.rule]]
name = "tcp-out-not-203"
action = "drop"
log = true
proto = "tcp"
sport = "1000-2000"
dst = "203.0.113.0/24"
not = ["dst"]
"#;

/// [`NOT_POLICY`] with each negation written as `!` in front of its condition (line for
/// line: each `not` line left as a comment).
fn bang_policy() -> String {
    NOT_POLICY
        .replace(
            "src = \"@office\"\nnot = [\"src\"]",
            "src = \"!@office\"\n# not",
        )
        .replace("dport = 53\ndst", "dport = \"!53\"\ndst")
        .replace("not = [\"dport\"]", "# not")
        .replace(
            "proto = \"udp\"\nsrc = \"198",
            "proto = \"!udp\"\nsrc = \"198",
        )
        .replace("not = \"proto\"", "# not")
        .replace(
            "dst = \"203.0.113.0/24\"\nnot = [\"dst\"]",
            "dst = \"! 203.0.113.0/24\"\n# not",
        )
}

fn negated_conditions_decide_in_the_kernel_as_in_the_reference(bench: &mut Bench) {
    let bang = bang_policy();
    assert!(!bang.contains("not ="), "every negation rewritten:\n{bang}");
    let p = config::parse_policy(&bang, "not.toml", Path::new("/")).expect("the policy parses");
    let list = config::parse_policy(NOT_POLICY, "not.toml", Path::new("/")).expect("parses");
    assert_eq!(p, list, "`!` and `not` make the same rules");
    // Both at once, and `!` where it cannot go, are errors at their place.
    for (from, to, want) in [
        (
            "src = \"!@office\"\n# not",
            "src = \"!@office\"\nnot = [\"src\"]",
            "not.toml:16:7: `src` is negated twice, by `!` and by `not`",
        ),
        (
            "proto = \"tcp\"\ndport = 22",
            "proto = \"!tcp\"\ndport = 22",
            "not.toml:14:9: `!` cannot negate `proto` in a rule with `dport`",
        ),
        (
            "proto = \"!udp\"",
            "proto = \"!any\"",
            "not.toml:34:9: `proto = \"!any\"` can never match",
        ),
        (
            "dport = \"!53\"",
            "dport = \"!5x\"",
            "not.toml:25:9: invalid port `5x` in `dport`",
        ),
    ] {
        assert!(bang.contains(from), "{from}");
        let bad = bang.replacen(from, to, 1);
        let err = config::parse_policy(&bad, "not.toml", Path::new("/")).expect_err(want);
        assert!(err.to_string().contains(want), "{err}");
    }
    let c = palisade::firewall::compile::compile(&p).expect("compiles");
    // The negated CIDR list of rule 3 is a set of its own, after the policy's one.
    assert_eq!(c.sets.len(), 2);
    bench.install(&p).expect("install");
    // (src, dst, protocol ("tcp", "udp" or "icmp"), sport, dport, the rule that must match)
    let cases: &[NotCase] = &[
        ("192.0.2.9", "10.1.1.1", "tcp", 40000, 22, Some(0)),
        ("10.1.2.3", "10.1.1.1", "tcp", 40000, 22, None),
        ("10.255.255.255", "10.1.1.1", "tcp", 40000, 22, None),
        ("11.0.0.0", "10.1.1.1", "tcp", 40000, 22, Some(0)),
        ("9.255.255.255", "10.1.1.1", "tcp", 40000, 22, Some(0)),
        ("2001:db8:10::1", "2001:db8::1", "tcp", 40000, 22, None),
        ("2001:db8:11::1", "2001:db8::1", "tcp", 40000, 22, Some(0)),
        ("10.1.2.3", "10.1.1.1", "tcp", 40000, 23, None),
        ("10.1.2.3", "192.0.2.7", "udp", 40000, 53, None),
        ("10.1.2.3", "192.0.2.7", "udp", 40000, 52, Some(1)),
        ("10.1.2.3", "192.0.2.7", "udp", 40000, 54, Some(1)),
        ("10.1.2.3", "192.0.3.7", "udp", 40000, 54, None),
        ("2001:db8:10::1", "2001:db8:2::9", "udp", 1, 0, Some(1)),
        ("198.51.100.1", "10.1.1.1", "udp", 40000, 80, None),
        ("198.51.100.1", "10.1.1.1", "tcp", 40000, 80, Some(2)),
        ("198.51.100.1", "10.1.1.1", "icmp", 0, 0, Some(2)),
        ("198.51.101.1", "10.1.1.1", "icmp", 0, 0, None),
        ("10.1.2.3", "8.8.8.8", "tcp", 1000, 443, Some(3)),
        ("10.1.2.3", "8.8.8.8", "tcp", 2001, 443, None),
        ("10.1.2.3", "203.0.113.200", "tcp", 1500, 443, None),
        ("10.1.2.3", "203.0.114.0", "tcp", 2000, 443, Some(3)),
        ("2001:db8:10::1", "2001:db8::1", "tcp", 1500, 443, Some(3)),
    ];
    for &(src, dst, proto, sport, dport, want) in cases {
        let frame = match proto {
            "tcp" => Frame::tcp(src, dst, sport, dport, packet::TCP_SYN),
            "udp" => Frame::udp(src, dst, sport, dport),
            _ => Frame::icmp(src, dst, 8, 0),
        };
        let bytes = frame.build();
        let pkt = match packet::parse(&bytes[..]) {
            Ok(packet::Frame::Ip(pkt)) => pkt,
            other => panic!("crafted frame does not parse: {other:?}"),
        };
        let what = format!("{proto} {src}:{sport} -> {dst}:{dport}");
        assert_eq!(reference::first_match(&p, &pkt), want, "reference, {what}");
        assert_eq!(
            palisade::firewall::classify::first_match(&c, &pkt),
            want,
            "userspace tuple search, {what}"
        );
        let slot = want.unwrap_or(DEFAULT_SLOT);
        let before = bench.rule_hits(slot).unwrap();
        let (action, out) = bench.run_with_output(&bytes).expect("test run");
        let events: Vec<_> = bench
            .drain_events()
            .into_iter()
            .filter(|e| e.kind == KIND_FIREWALL)
            .collect();
        let what = format!("kernel, {what}");
        if want.is_some() {
            assert_eq!(action, XDP_DROP, "{what}");
            assert_eq!(events.len(), 1, "{what}: {events:?}");
            assert_eq!(
                (events[0].rule, events[0].reason),
                (slot, reason::RULE),
                "{what}"
            );
        } else {
            assert_eq!(action, XDP_PASS, "{what}");
            assert!(events.is_empty(), "{what}: {events:?}");
            assert_eq!(out, bytes, "{what}: a passed frame is not rewritten");
        }
        let after = bench.rule_hits(slot).unwrap();
        assert_eq!(after.packets, before.packets + 1, "{what}");
        assert_eq!(after.bytes, before.bytes + bytes.len() as u64, "{what}");
    }
}

/// MAC, VLAN, interface and negated conditions, on one loaded object (loading it is most of
/// a test's time).
#[test]
fn link_and_negated_conditions_decide_in_the_kernel_as_in_the_reference() {
    let mut bench = Bench::new().expect("loading the kernel object (needs root)");
    mac_addresses_decide_in_the_kernel_as_in_the_reference(&mut bench);
    vlan_ids_decide_in_the_kernel_as_in_the_reference(&mut bench);
    the_input_interface_decides_in_the_kernel_as_in_the_reference(&mut bench);
    negated_conditions_decide_in_the_kernel_as_in_the_reference(&mut bench);
    a_policy_without_link_conditions_never_reads_the_link_layer(&mut bench);
}
