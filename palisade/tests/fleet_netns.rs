//! End to end: `palisade run --kubernetes` with the real kernel, its policy from a fake
//! API server (`support/fake_apiserver.rs`) in the peer namespace.
//!
//! The guarded host (namespace A) runs the daemon on its veth with a base policy that drops
//! nothing; a `PalisadePolicy` dropping ICMP selects its node, and the peer's pings stop.
//! The daemon is killed, the API server goes away, a new daemon starts: it enforces the
//! last applied policy kept on the host, not the bare base. The policy is deleted while the
//! API server is away; when it comes back, the pings pass again. An invalid object gets an
//! Event and changes nothing. Run as root with
//! `cargo test --release -p palisade --test fleet_netns -- --test-threads=1`.

#[path = "support/control.rs"]
mod control;
#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;
mod support;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use control::{BIN, Proc, Scratch, cli, cli_json};
use fake_apiserver::{FakeApi, NODES, POLICIES, node, policy};
use serde_json::json;
use support::netns::{NetnsPair, exec_in, in_netns, nsenter};

const BASE: &str = "[firewall]\ndefault = \"allow\"\n\n[[firewall.rule]]\nname = \"count-ssh\"\naction = \"allow\"\nproto = \"tcp\"\ndport = 22\n";

/// The daemon under `--kubernetes`, unloaded on drop.
struct Agent {
    scratch: Scratch,
    daemon: Option<Proc>,
    ns: String,
    iface: String,
}

impl Agent {
    fn start(&mut self, kubeconfig: &Path) {
        let pin_dir = self.scratch.pin_dir();
        let mut cmd = nsenter(&self.ns, BIN);
        cmd.env("KUBECONFIG", kubeconfig)
            .env("K8S_NODE_NAME", "node-a")
            .env("K8S_POD_NAMESPACE", "palisade-system")
            .arg("--socket")
            .arg(self.scratch.socket())
            .args(["run", "--kubernetes", "--quiet", "--iface", &self.iface])
            .arg("--config")
            .arg(self.scratch.file("policy.toml"))
            .arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--applied-policy")
            .arg(self.state());
        self.daemon = Some(Proc::spawn(cmd));
    }

    fn state(&self) -> PathBuf {
        self.scratch.file("state/applied.toml")
    }

    fn rules(&self) -> Vec<String> {
        let v = cli_json(&self.scratch.socket(), &["list", "rules", "--json"]);
        v["rules"]
            .as_array()
            .unwrap_or_else(|| panic!("no rules in {v}"))
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.kill9();
        }
        let _ = cli(
            &self.scratch.socket(),
            &[
                "unload",
                "--pin-dir",
                self.scratch.pin_dir().to_str().unwrap(),
            ],
        );
    }
}

fn ping(ns: &str, addr: &str) -> bool {
    exec_in(ns, "ping", &["-c", "1", "-W", "1", addr])
        .status
        .success()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn a_cluster_policy_is_enforced_kept_on_the_host_and_followed_after_an_outage() {
    let pair = NetnsPair::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ns_b = pair.ns_b.clone();
    let at = format!("{}:0", pair.v4_b).parse().unwrap();
    // The server's socket lives in the peer's namespace; its tasks run on `rt`.
    let mut api = rt.block_on(async move {
        FakeApi::with_bind(
            at,
            Arc::new(move |a| {
                let ns = ns_b.clone();
                in_netns(&ns, move || std::net::TcpListener::bind(a).unwrap())
            }),
        )
    });
    api.change(|c| {
        c.put(NODES, "node-a", node(json!({"zone": "a"})));
        c.put(
            POLICIES,
            "no-ping",
            policy(json!({"firewall": {"rules": [{"name": "drop-icmp", "action": "drop", "proto": "icmp"}]}})),
        );
    });
    let mut agent = Agent {
        scratch: Scratch::new("fleet-netns"),
        daemon: None,
        ns: pair.ns_a.clone(),
        iface: pair.if_a.clone(),
    };
    std::fs::write(agent.scratch.file("policy.toml"), BASE).unwrap();
    let kubeconfig = agent.scratch.file("kubeconfig");
    api.kubeconfig(&kubeconfig);
    assert!(
        ping(&pair.ns_b, &pair.v4_a),
        "the base policy lets pings through"
    );

    agent.start(&kubeconfig);
    let took = wait_for(
        "the cluster's rule applied",
        Duration::from_secs(30),
        || agent.rules().iter().any(|r| r == "no-ping.drop-icmp"),
    );
    eprintln!("cluster policy enforced {took:?} after the daemon started");
    assert!(
        !ping(&pair.ns_b, &pair.v4_a),
        "the cluster's rule drops pings"
    );
    let kept = std::fs::read_to_string(agent.state()).unwrap();
    assert!(kept.contains("no-ping.drop-icmp"), "{kept}");

    // The daemon dies, the API server goes away: the pinned policy still drops.
    agent.daemon.take().unwrap().kill9();
    rt.block_on(api.stop());
    assert!(!ping(&pair.ns_b, &pair.v4_a), "enforced with no daemon");
    // A new daemon starts without the API server: it enforces the kept policy.
    agent.start(&kubeconfig);
    let said = agent.daemon.as_ref().unwrap().stderr_now().join("\n");
    assert!(said.contains("the last applied cluster policy"), "{said}");
    assert!(agent.rules().iter().any(|r| r == "no-ping.drop-icmp"));
    assert!(
        !ping(&pair.ns_b, &pair.v4_a),
        "the restart kept the cluster's policy"
    );

    // Meanwhile the policy is deleted; when the API server returns, pings pass again.
    api.change(|c| c.delete(POLICIES, "no-ping"));
    rt.block_on(async { api.start() });
    let took = wait_for("the deletion followed", Duration::from_secs(40), || {
        !agent.rules().iter().any(|r| r == "no-ping.drop-icmp")
    });
    eprintln!("deletion enforced {took:?} after the API server returned");
    assert!(ping(&pair.ns_b, &pair.v4_a), "pings pass again");
    assert!(
        !std::fs::read_to_string(agent.state())
            .unwrap()
            .contains("no-ping")
    );

    // An invalid object: an Event on it, the running policy unchanged.
    api.change(|c| {
        c.put(
            POLICIES,
            "bad",
            policy(json!({"firewall": {"rules": [{"name": "x", "action": "rate-limit", "proto": "icmp"}]}})),
        );
    });
    wait_for(
        "an Event for the invalid object",
        Duration::from_secs(20),
        || !api.cluster.lock().unwrap().events.is_empty(),
    );
    let ev = api.cluster.lock().unwrap().events[0].clone();
    assert_eq!(ev["involvedObject"]["name"], "bad");
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("spec.firewall.rules[0]"),
        "{ev}"
    );
    assert!(!agent.rules().iter().any(|r| r.starts_with("bad.")));
    assert!(ping(&pair.ns_b, &pair.v4_a));
    assert!(api.cluster.lock().unwrap().writes.is_empty());
    rt.block_on(api.stop());
}
