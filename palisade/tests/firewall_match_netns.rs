//! End to end: the header and link matches with the real daemon and real pings.
//!
//! The daemon guards `veth-b`; the peer pings it from several addresses of `veth-a`, whose MAC
//! the test sets. Each rule names one source address, so each ping meets one rule only:
//! - `ttl = "0-9"`: `ping -t 5` is dropped, the same ping with the default TTL answered;
//! - `dscp = "ef"`: `ping -Q 0xb8` (DSCP 46) is dropped;
//! - `src_mac`: the peer's MAC drops, another MAC on the same kind of rule does not;
//! - `iface = [...]`: a list naming `veth-b` (second) drops, one naming two other interfaces
//!   does not;
//! - `vlan = 10` on an 802.1Q-tagged link: VLAN 10 pings are dropped, untagged and VLAN 20
//!   ones answered.
//!
//! The peer sees the answers (or none), and `palisade stats` counts each rule's packets.

#[path = "support/control.rs"]
mod control;
mod support;

use control::{GuardedHost, cli_json};
use support::netns::{NetnsPair, exec_in, ping_counts};

const PEER_MAC: &str = "02:00:5e:19:00:01";
const OTHER_MAC: &str = "02:00:5e:19:00:99";

/// `(sent, received)` of `ping -c 3` from `from` to `to`, with `extra` options.
fn ping(ns: &str, from: &str, to: &str, extra: &[&str]) -> (u32, u32) {
    let mut args = vec!["-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-I", from];
    args.extend_from_slice(extra);
    args.push(to);
    ping_counts(ns, &args)
}

fn ip(ns: &str, args: &[&str]) {
    let out = exec_in(ns, "ip", args);
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

#[test]
fn ttl_dscp_mac_and_iface_lists_drop_real_pings() {
    let pair = NetnsPair::new();
    let net = pair.v4_a.strip_suffix(".1").expect("x.y.z.1").to_owned();
    let addr = |n: u32| format!("{net}.{n}");
    for n in [3, 4, 5, 6] {
        ip(
            &pair.ns_a,
            &["addr", "add", &format!("{}/24", addr(n)), "dev", &pair.if_a],
        );
    }
    ip(
        &pair.ns_a,
        &["link", "set", &pair.if_a, "address", PEER_MAC],
    );
    // Another interface of the guarded side, which no ping arrives on.
    ip(
        &pair.ns_b,
        &[
            "link", "add", "veth-c", "type", "veth", "peer", "name", "veth-cp",
        ],
    );
    let policy = format!(
        "[firewall]\ndefault = \"allow\"\n\n\
         [[firewall.rule]]\nname = \"low-ttl\"\naction = \"drop\"\nproto = \"icmp\"\nsrc = \"{one}\"\nttl = \"0-9\"\n\n\
         [[firewall.rule]]\nname = \"ef\"\naction = \"drop\"\nproto = \"icmp\"\nsrc = \"{one}\"\ndscp = \"ef\"\n\n\
         [[firewall.rule]]\nname = \"mac-hit\"\naction = \"drop\"\nproto = \"icmp\"\nsrc = \"{four}\"\nsrc_mac = \"{PEER_MAC}\"\n\n\
         [[firewall.rule]]\nname = \"mac-miss\"\naction = \"drop\"\nproto = \"icmp\"\nsrc = \"{five}\"\nsrc_mac = \"{OTHER_MAC}\"\n\n\
         [[firewall.rule]]\nname = \"iface-hit\"\naction = \"drop\"\nproto = \"icmp\"\nsrc = \"{three}\"\niface = [\"veth-c\", \"{if_b}\"]\n\n\
         [[firewall.rule]]\nname = \"iface-miss\"\naction = \"drop\"\nproto = \"icmp\"\nsrc = \"{six}\"\niface = [\"veth-c\", \"lo\"]\n",
        one = pair.v4_a,
        three = addr(3),
        four = addr(4),
        five = addr(5),
        six = addr(6),
        if_b = pair.if_b,
    );
    let mut host = GuardedHost::new("match-netns", &policy, &pair.ns_b, &pair.if_b);
    host.start();

    let b = pair.v4_b.as_str();
    let cases: [(&str, String, &[&str], u32); 7] = [
        ("default TTL", pair.v4_a.clone(), &[], 3),
        ("TTL 5", pair.v4_a.clone(), &["-t", "5"], 0),
        ("DSCP ef", pair.v4_a.clone(), &["-Q", "0xb8"], 0),
        ("the peer's MAC", addr(4), &[], 0),
        ("another rule's MAC", addr(5), &[], 3),
        ("iface list with veth-b", addr(3), &[], 0),
        ("iface list without it", addr(6), &[], 3),
    ];
    for (what, from, extra, want) in &cases {
        assert_eq!(
            ping(&pair.ns_a, from, b, extra),
            (3, *want),
            "{what}: ping from {from}"
        );
    }

    let json = cli_json(&host.socket(), &["stats", "--json"]);
    let rules = json["counters"]["rules"]
        .as_array()
        .expect("counters.rules");
    let packets = |name: &str| {
        rules
            .iter()
            .find(|r| r["rule"] == name)
            .and_then(|r| r["packets"].as_u64())
            .unwrap_or_else(|| panic!("rule {name} in {json}"))
    };
    for (name, want) in [
        ("low-ttl", 3),
        ("ef", 3),
        ("mac-hit", 3),
        ("mac-miss", 0),
        ("iface-hit", 3),
        ("iface-miss", 0),
    ] {
        assert_eq!(packets(name), want, "rule {name}: {json}");
    }
    ip(&pair.ns_b, &["link", "del", "veth-c"]);
}

/// `vlan = 10` on real 802.1Q frames. This kernel has no VLAN devices (`8021q`), so the link
/// is tagged by `support/vlan.rs` (tcx taggers on both ends, `txvlan` off so that the tag is
/// in the frame XDP sees): pings over the link untagged are answered, tagged with VLAN 10
/// dropped by the rule, tagged with VLAN 20 answered; only the VLAN 10 pings count on the
/// rule.
#[test]
fn a_vlan_rule_drops_pings_on_its_vlan_only() {
    use support::vlan::VlanEnd;
    let pair = NetnsPair::new();
    let policy = "[firewall]\ndefault = \"allow\"\n\n\
                  [[firewall.rule]]\nname = \"vlan-10\"\naction = \"drop\"\nproto = \"icmp\"\nvlan = 10\n";
    let mut host = GuardedHost::new("match-vlan", policy, &pair.ns_b, &pair.if_b);
    host.start();
    let (a, b) = (pair.v4_a.as_str(), pair.v4_b.as_str());
    let packets = || {
        let json = cli_json(&host.socket(), &["stats", "--json"]);
        json["counters"]["rules"]
            .as_array()
            .expect("counters.rules")
            .iter()
            .find(|r| r["rule"] == "vlan-10")
            .and_then(|r| r["packets"].as_u64())
            .unwrap_or_else(|| panic!("rule vlan-10 in {json}"))
    };
    assert_eq!(ping(&pair.ns_a, a, b, &[]), (3, 3), "untagged");
    assert_eq!(packets(), 0);
    for (vid, want, hits) in [(10u16, 0u32, 3u64), (20, 3, 3)] {
        let ends = [
            VlanEnd::attach(&pair.ns_a, &pair.if_a, vid),
            VlanEnd::attach(&pair.ns_b, &pair.if_b, vid),
        ];
        assert_eq!(ping(&pair.ns_a, a, b, &[]), (3, want), "VLAN {vid}");
        assert_eq!(packets(), hits, "after the pings on VLAN {vid}");
        drop(ends);
    }
    assert_eq!(ping(&pair.ns_a, a, b, &[]), (3, 3), "untagged again");
    assert_eq!(packets(), 3);
}
