//! End to end, DGA scoring: a real resolver (unbound) in namespace B behind the real
//! `palisade` binary on B's veth, `dig` in namespace A. `[dns.dga]` scores the names of the
//! DNS events (allowed ones too, with `log_allowed`), reports a random-looking name as a `dga`
//! event once, adds it to a DNS list with a TTL, and the next query for it is blocked.

#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use dns_support::{
    TempDir, check_policy, dig::dig, require_tools, run_args, unbound::Unbound, xdp::XdpPass,
};
use serde_json::Value;
use support::{daemon::Daemon, netns::NetnsPair};

/// A name no benign label looks like; not in the resolver's zone (it answers NXDOMAIN,
/// authoritatively), which does not matter: the scorer sees the allowed query's event.
const RANDOM: &str = "xkqzjvwptrbnmfdqzxkvw.test";
/// `[dns.dga] threshold` of the policy.
const THRESHOLD: u16 = 850;

const POLICY: &str = r#"
[dns.ingress]
mode = "blocklist"
action = "nxdomain"
lists = ["dga"]
log_allowed = true

[dns.lists.dga]
names = ["blocked.test"]

[dns.dga]
threshold = 850
list = "dga"
ttl = 600
"#;

fn cli_json(socket: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .arg("--json")
        .output()
        .expect("run palisade");
    assert!(
        out.status.success(),
        "palisade {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The `dga` list's entry for `name`, if any.
fn listed(socket: &std::path::Path, name: &str) -> Option<Value> {
    let v = cli_json(socket, &["dns", "list", "dga"]);
    let lists = v["lists"].as_array().cloned().unwrap_or_default();
    lists
        .iter()
        .flat_map(|l| l["entries"].as_array().cloned().unwrap_or_default())
        .find(|e| e["name"] == name)
}

#[test]
fn dga_a_random_looking_name_is_reported_once_and_blocked_for_its_ttl() {
    require_tools();
    // What the daemon must report, from the same embedded model.
    let model = palisade::dga::Model::embedded();
    let benign_score = model.score_name("allowed.test").expect("scored");
    let random_score = model.score_name(RANDOM).expect("scored");
    assert!(
        benign_score <= THRESHOLD && random_score > THRESHOLD,
        "{benign_score} {random_score}"
    );
    let pair = NetnsPair::new();
    let unbound = Unbound::start(&pair, &pair.ns_b, &[&pair.v4_b]);
    // Palisade's XDP_TX answer crosses the veth only if A's end has an XDP program.
    let _xdp = XdpPass::attach(&pair.ns_a, &pair.if_a);
    let dir = TempDir::new("dga-e2e");
    let path = dir.write("policy.toml", POLICY);
    check_policy(&path);
    let args = run_args(&dir, &path, &pair.if_b);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&pair, &pair.ns_b, &args);
    let socket = dir.path().join("palisade.sock");

    let ask = |name: &str| dig(&pair, &pair.ns_a, &pair.v4_b, name, "A", 2, &[]);
    let ok = ask("allowed.test");
    assert_eq!(ok.status.as_deref(), Some("NOERROR"), "{ok}");
    let first = ask(RANDOM);
    assert!(
        first.answered() && first.has_flag("aa"),
        "the first query passes to the resolver: {first}"
    );
    let logged = || {
        // unbound writes its query log as it answers; allow it a moment to reach the file.
        let start = Instant::now();
        loop {
            let n = unbound.queries_for(RANDOM).len();
            if n > 0 || start.elapsed() > Duration::from_secs(3) {
                return n;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(logged(), 1, "{}", unbound.log_text());

    // The daemon adds the name to the list after reading the event.
    let start = Instant::now();
    let entry = loop {
        if let Some(e) = listed(&socket, RANDOM) {
            break e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{RANDOM} never reached the list: {:?}",
            daemon.stderr_now()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let left = entry["ttl_left"].as_i64().expect("a TTL");
    assert!((590..=600).contains(&left), "{entry}");
    assert_eq!(entry["live"], true, "{entry}");
    assert!(listed(&socket, "allowed.test").is_none());

    let second = ask(RANDOM);
    assert_eq!(
        second.status.as_deref(),
        Some("NXDOMAIN"),
        "blocked once listed: {second}"
    );
    assert!(!second.has_flag("aa"), "answered by palisade: {second}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(logged(), 1, "the resolver did not see the second query");

    let stats = cli_json(&socket, &["stats"]);
    let d = &stats["dga"];
    assert_eq!(d["reported"], 1, "{stats}");
    assert_eq!(d["listed"], 1, "{stats}");
    assert_eq!(d["list_failed"], 0, "{stats}");
    assert_eq!(d["scored"], 2, "allowed.test and the random name: {stats}");

    let t = daemon.stop();
    let events: Vec<Value> = t
        .stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let dns = |name: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["kind"] == "dns" && e["name"] == format!("{name}."))
            .collect()
    };
    let benign = dns("allowed.test");
    assert_eq!(benign.len(), 1, "{events:?}");
    assert_eq!(benign[0]["verdict"], "allow");
    assert_eq!(
        benign[0]["dga_score"].as_u64(),
        Some(u64::from(benign_score)),
        "{}",
        benign[0]
    );

    let random = dns(RANDOM);
    assert_eq!(random.len(), 2, "{events:?}");
    assert_eq!(random[0]["verdict"], "allow");
    assert_eq!(random[1]["verdict"], "nxdomain");
    let high = u64::from(random_score);
    assert_eq!(random[0]["dga_score"].as_u64(), Some(high), "{}", random[0]);
    assert_eq!(
        random[1]["dga_score"].as_u64(),
        Some(high),
        "from the cache"
    );

    let dga: Vec<&Value> = events.iter().filter(|e| e["kind"] == "dga").collect();
    assert_eq!(dga.len(), 1, "reported once: {dga:?}");
    assert_eq!(dga[0]["name"], format!("{RANDOM}."));
    assert_eq!(dga[0]["label"], "xkqzjvwptrbnmfdqzxkvw");
    assert_eq!(dga[0]["score"].as_u64(), Some(high));
    assert_eq!(dga[0]["threshold"], THRESHOLD);
    assert_eq!(dga[0]["list"], "dga");
    assert_eq!(dga[0]["verdict"], "allow");
    assert_eq!(dga[0]["scope"], "ingress");
    assert!(t.success, "{:?}", t.stderr);
}
