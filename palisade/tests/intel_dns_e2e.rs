//! End to end, `[intel]` domains with the real daemon: a real resolver (unbound) in namespace
//! B behind `palisade` on B's veth, `dig` in namespace A. Three feed files list one name
//! each, one feed per action: the drop feed's name is answered NXDOMAIN by Palisade, the
//! alert and tag feeds' names reach the resolver and are answered, and each of the three
//! queries is one DNS event naming its feed (`intel` says `alert` or `tag` for the two that
//! passed), although the scope does not log allowed queries.

#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use dns_support::{
    TempDir, check_policy, dig::dig, require_tools, run_args, unbound::Unbound,
    unbound::zone_answer, xdp::XdpPass,
};
use serde_json::Value;
use support::{daemon::Daemon, netns::NetnsPair};

const POLICY: &str = r#"
[dns.ingress]
mode = "blocklist"
action = "nxdomain"
lists = []

[intel]
max_ips = 64
max_cidrs = 16

[[intel.feed]]
name = "block"
source = "block.txt"
action = "drop"

[[intel.feed]]
name = "watch"
source = "watch.txt"
action = "alert"

[[intel.feed]]
name = "label"
source = "label.txt"
action = "tag"
"#;

#[test]
fn feed_domains_block_alert_and_tag_dns_queries_through_the_daemon() {
    require_tools();
    let pair = NetnsPair::new();
    let unbound = Unbound::start(&pair, &pair.ns_b, &[&pair.v4_b]);
    // Palisade's XDP_TX answer crosses the veth only if A's end has an XDP program.
    let _xdp = XdpPass::attach(&pair.ns_a, &pair.if_a);
    let dir = TempDir::new("intel-dns-e2e");
    dir.write("block.txt", "blocked.test\n");
    dir.write("watch.txt", "# watched, not blocked\nOther.Test.\n");
    dir.write("label.txt", "allowed.test\n");
    let path = dir.write("policy.toml", POLICY);
    check_policy(&path);
    let args = run_args(&dir, &path, &pair.if_b);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&pair, &pair.ns_b, &args);

    let ask = |name: &str| dig(&pair, &pair.ns_a, &pair.v4_b, name, "A", 2, &[]);
    let blocked = ask("blocked.test");
    assert_eq!(blocked.status.as_deref(), Some("NXDOMAIN"), "{blocked}");
    assert!(!blocked.has_flag("aa"), "answered by palisade: {blocked}");
    for name in ["other.test", "allowed.test"] {
        let r = ask(name);
        assert_eq!(r.status.as_deref(), Some("NOERROR"), "{r}");
        assert!(r.has_flag("aa"), "answered by the resolver: {r}");
        assert!(
            r.answers.iter().any(|a| a.contains(zone_answer(name, "A"))),
            "{r}"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(unbound.queries_for("blocked.test").is_empty());
    assert_eq!(unbound.queries_for("other.test").len(), 1);
    assert_eq!(unbound.queries_for("allowed.test").len(), 1);

    let t = daemon.stop();
    let events: Vec<Value> = t
        .stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == "dns")
        .collect();
    let of = |name: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["name"] == format!("{name}."))
            .collect()
    };
    let b = of("blocked.test");
    assert_eq!(b.len(), 1, "{events:?}");
    assert_eq!(b[0]["verdict"], "nxdomain");
    assert_eq!(b[0]["reason"], "dns-blocked");
    assert_eq!(b[0]["feed"], "block");
    assert!(b[0].get("intel").is_none(), "{}", b[0]);
    for (name, feed, intel) in [
        ("other.test", "watch", "alert"),
        ("allowed.test", "label", "tag"),
    ] {
        let e = of(name);
        assert_eq!(e.len(), 1, "{name}: {events:?}");
        assert_eq!(e[0]["verdict"], "allow", "{}", e[0]);
        assert_eq!(e[0]["reason"], "pass", "{}", e[0]);
        assert_eq!(e[0]["feed"], feed, "{}", e[0]);
        assert_eq!(e[0]["intel"], intel, "{}", e[0]);
    }
    assert_eq!(
        events.len(),
        3,
        "only the listed names are reported: {events:?}"
    );
    assert!(t.success, "{:?}", t.stderr);
}
