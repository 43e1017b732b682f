//! End to end, Firefox's DoH canary under resolver pinning: the real `palisade` binary with
//! a throw-away cgroup v2 directory pinned to its resolvers (unbound in namespace B, over
//! IPv4 and IPv6, and a second unbound on 127.0.0.53 in namespace A, reached over `lo`).
//!
//! - `dig use-application-dns.net` from the pinned cgroup gets NXDOMAIN from the resolver's
//!   address, its question echoed as asked (mixed case included), over IPv4, IPv6 and `lo`;
//!   none of those queries reaches unbound;
//! - other names resolve through unbound from the same cgroup;
//! - the same canary query from outside the cgroup reaches unbound (which refuses it: it
//!   serves only the test zone);
//! - every canary answered is an event (verdict `nxdomain`, reason `dns-doh-canary`) naming
//!   the cgroup, and the `canary_answered` counter says how many.

#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::process::{Command, Output, Stdio};

use dns_support::{
    TempDir,
    cgroup::{TestCgroup, palisade_with_cgroups},
    check_policy, dns_events, require, run_args,
    unbound::Unbound,
};
use support::{daemon::Daemon, netns::NetnsPair};

const CANARY: &str = "use-application-dns.net";
/// A local resolver in namespace A (queries to it leave by `lo`).
const LOCAL: &str = "127.0.0.53";

/// Runs `argv` in namespace A, in the pinned cgroup or outside it.
fn run(pair: &NetnsPair, cg: Option<&TestCgroup>, argv: &[&str]) -> Output {
    let mut cmd = match cg {
        Some(cg) => cg.command_in_ns(&pair.ns_a, argv),
        None => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &pair.ns_a]).args(argv);
            c
        }
    };
    cmd.stdin(Stdio::null()).output().expect("run")
}

/// `dig` of `name`/`qtype` at `server`; its whole output.
fn dig(pair: &NetnsPair, cg: Option<&TestCgroup>, server: &str, name: &str, qtype: &str) -> String {
    let at = format!("@{server}");
    let out = run(pair, cg, &["dig", "+time=2", "+tries=1", &at, name, qtype]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that `out` is dig's report of an NXDOMAIN answer from `server` to `name`/`qtype`
/// (the question echoed as asked).
fn assert_nxdomain(out: &str, server: &str, name: &str, qtype: &str) {
    assert!(out.contains("status: NXDOMAIN"), "NXDOMAIN: {out}");
    assert!(
        out.contains("flags: qr rd ra;") && out.contains("QUERY: 1, ANSWER: 0, AUTHORITY: 0"),
        "an answer's flags and counts: {out}"
    );
    let question = format!(";{name}.\t\t\tIN\t{qtype}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(question.split_whitespace())),
        "the question echoed ({question:?}): {out}"
    );
    let from = if server.contains(':') {
        format!("SERVER: {server}#53")
    } else {
        format!("SERVER: {server}#53({server})")
    };
    assert!(out.contains(&from), "from the resolver {server}: {out}");
}

#[test]
fn the_canary_answers_nxdomain_for_the_pinned_cgroup_only() {
    require("ip", "iproute2");
    require("unbound", "unbound");
    require("dig", "dnsutils");
    let pair = NetnsPair::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new("dns-canary");
    let remote = Unbound::start_in(&pair.ns_b, &[&pair.v4_b, &pair.v6_b]);
    let local = Unbound::start_in(&pair.ns_a, &[LOCAL]);

    let text = format!(
        r#"
[dns.bind]
cgroups = ["{cg}"]
resolvers = ["{v4}", "{v6}", "{LOCAL}"]
"#,
        cg = cg.path.display(),
        v4 = pair.v4_b,
        v6 = pair.v6_b,
    );
    let path = dir.write("policy.toml", &text);
    check_policy(&path);
    let args = run_args(&dir, &path, &pair.if_a);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_command(palisade_with_cgroups(&pair, &pair.ns_a, &args));

    // --- from the pinned cgroup: the canary is answered, over IPv4, IPv6 and lo ---
    let cases = [
        (pair.v4_b.as_str(), CANARY, "A"),
        (pair.v4_b.as_str(), "Use-Application-DNS.NET", "AAAA"),
        (pair.v6_b.as_str(), CANARY, "AAAA"),
        (pair.v6_b.as_str(), "USE-application-dns.net.", "A"),
        (LOCAL, CANARY, "A"),
        (LOCAL, "use-APPLICATION-dns.Net", "HTTPS"),
    ];
    for (server, name, qtype) in cases {
        let out = dig(&pair, Some(&cg), server, name, qtype);
        assert_nxdomain(&out, server, name.trim_end_matches('.'), qtype);
    }
    assert!(
        remote.queries_for(CANARY).is_empty() && local.queries_for(CANARY).is_empty(),
        "no canary query reached a resolver: {}{}",
        remote.log_text(),
        local.log_text()
    );

    // --- other names resolve through the resolvers from the same cgroup ---
    for server in [pair.v4_b.as_str(), pair.v6_b.as_str(), LOCAL] {
        let out = dig(&pair, Some(&cg), server, "allowed.test", "A");
        assert!(
            out.contains("status: NOERROR") && out.contains("192.0.2.1"),
            "allowed.test through {server}: {out}"
        );
    }
    assert_eq!(remote.queries_for("allowed.test").len(), 2);
    assert_eq!(local.queries_for("allowed.test").len(), 1);

    // --- outside the cgroup the canary goes to the resolver ---
    let out = dig(&pair, None, &pair.v4_b, CANARY, "A");
    assert!(
        out.contains("status: REFUSED"),
        "unbound's own answer: {out}"
    );
    let out = dig(&pair, None, LOCAL, CANARY, "A");
    assert!(
        out.contains("status: REFUSED"),
        "unbound's own answer: {out}"
    );
    assert_eq!(remote.queries_for(CANARY).len(), 1, "{}", remote.log_text());
    assert_eq!(local.queries_for(CANARY).len(), 1, "{}", local.log_text());

    let stats = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["stats", "--json", "--socket"])
        .arg(dir.path().join("palisade.sock"))
        .output()
        .expect("palisade stats");
    let stats_text = String::from_utf8_lossy(&stats.stdout).into_owned();

    let t = daemon.stop();
    assert!(t.success, "{:?}", t.stderr);
    let events = dns_events(&t.stdout);
    let canary: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["reason"] == "dns-doh-canary")
        .collect();
    assert_eq!(
        canary.len(),
        cases.len(),
        "one event per answered canary: {events:?}"
    );
    for e in &canary {
        assert_eq!(e["verdict"], "nxdomain", "{e}");
        assert_eq!(e["scope"], "egress", "{e}");
        assert_eq!(e["name"], format!("{CANARY}."), "{e}");
        assert_eq!(e["cgroup_id"], cg.id(), "{e}");
    }
    let clients: Vec<&str> = canary.iter().filter_map(|e| e["client"].as_str()).collect();
    for c in [pair.v4_a.as_str(), pair.v6_a.as_str(), "127.0.0.1"] {
        assert!(
            clients.contains(&c),
            "an event for the stub at {c}: {clients:?}"
        );
    }
    let v: serde_json::Value =
        serde_json::from_str(&stats_text).unwrap_or_else(|e| panic!("{e}: {stats_text}"));
    let answered = v["counters"]["bind"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "canary_answered"))
        .map(|c| c["value"].clone());
    assert_eq!(
        answered,
        Some(serde_json::json!(cases.len())),
        "canary_answered in {stats_text}"
    );
}
