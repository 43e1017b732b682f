//! The in-agent controller against a fake Kubernetes API server: a small HTTP server in
//! this file that serves list and watch (chunked JSON lines, replayed from a resource
//! version) for `palisadepolicies` and `nodes`, records Event POSTs and every other write,
//! and can be stopped and started again on the same port to play an outage. The daemon's
//! side is a channel that records what it is asked to apply. No kernel needed. Run with
//! `cargo test --release -p palisade --test fleet_controller`.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use fake_apiserver::{FakeApi, NODES, POLICIES, node, policy};
use palisade::fleet::controller::{self, ApplyRequest, Settings, Shared};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

const NODE: &str = "node-a";

fn rule(name: &str, dport: u16) -> Value {
    json!({"name": name, "action": "drop", "proto": "tcp", "dport": dport})
}

/// The daemon's side: records each merged policy and takes it.
struct Daemon {
    rx: mpsc::Receiver<ApplyRequest>,
}

impl Daemon {
    async fn next(&mut self, within: Duration) -> Option<String> {
        let req = tokio::time::timeout(within, self.rx.recv()).await.ok()??;
        let text = req.text.clone();
        let _ = req.reply.send(Ok(1));
        Some(text)
    }

    async fn expect(&mut self, what: &str) -> String {
        self.next(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("no policy applied after {what}"))
    }

    async fn expect_none(&mut self, what: &str) {
        if let Some(t) = self.next(Duration::from_millis(1500)).await {
            panic!("a policy was applied after {what}:\n{t}");
        }
    }
}

/// Waits until the controller has written `text` as the kept policy (after the daemon took
/// it).
async fn kept(state: &std::path::Path, text: &str) {
    for _ in 0..100 {
        if std::fs::read_to_string(state).is_ok_and(|s| s == text) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never held the applied policy", state.display());
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(tag: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("palisade-fleet-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn start(api: &FakeApi, dir: &Scratch, base: &str) -> (Daemon, Arc<Shared>, PathBuf) {
    let base_file = dir.0.join("policy.toml");
    std::fs::write(&base_file, base).unwrap();
    let state = dir.0.join("state/applied.toml");
    let settings = Settings {
        node: NODE.into(),
        base: Some(base_file),
        state_file: state.clone(),
        event_namespace: "palisade-system".into(),
    };
    let (tx, rx) = mpsc::channel(1);
    let shared = Arc::new(Shared::default());
    tokio::spawn(controller::run(
        api.client(),
        settings,
        tx,
        shared.clone(),
        None,
    ));
    (Daemon { rx }, shared, state)
}

const BASE: &str = "[firewall]\ndefault = \"allow\"\n\n[[firewall.rule]]\nname = \"base-ssh\"\naction = \"allow\"\nproto = \"tcp\"\ndport = 22\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_follows_the_cluster_and_outlives_an_outage() {
    let mut api = FakeApi::new().await;
    let dir = scratch("follow");
    api.change(|c| {
        c.hold_nodes = true;
        c.put(NODES, NODE, node(json!({"zone": "a"})));
        c.put(NODES, "node-b", node(json!({"edge": "yes"})));
        c.put(POLICIES, "all", policy(json!({"firewall": {"rules": [rule("telnet", 23)]}})));
        c.put(
            POLICIES,
            "edge",
            policy(json!({"nodeSelector": {"matchLabels": {"edge": "yes"}}, "firewall": {"rules": [rule("smb", 445)]}})),
        );
    });
    let (mut daemon, shared, state) = start(&api, &dir, BASE);

    // Initial sync: the policies are listed, the node is not: nothing is applied.
    daemon.expect_none("listing only the policies").await;
    assert!(!shared.synced.load(Ordering::Relaxed));
    assert!(!state.exists());
    api.change(|c| c.hold_nodes = false);
    let t = daemon.expect("the first lists").await;
    assert!(
        t.contains("base-ssh") && t.contains("\"all.telnet\"") && t.contains("dport = 23"),
        "{t}"
    );
    assert!(!t.contains("edge.smb"), "node-a is not an edge node:\n{t}");
    kept(&state, &t).await;

    // Add.
    api.change(|c| {
        c.put(
            POLICIES,
            "web",
            policy(json!({"priority": -1, "firewall": {"rules": [rule("http", 80)]}})),
        )
    });
    let t = daemon.expect("an added policy").await;
    let (web, all) = (t.find("web.http").unwrap(), t.find("all.telnet").unwrap());
    assert!(web < all, "priority -1 merges before 0:\n{t}");

    // Change.
    api.change(|c| {
        c.put(
            POLICIES,
            "all",
            policy(json!({"firewall": {"rules": [rule("telnet", 2323)]}})),
        )
    });
    let t = daemon.expect("a changed policy").await;
    assert!(
        t.contains("dport = 2323") && !t.contains("dport = 23\n"),
        "{t}"
    );

    // Delete.
    api.change(|c| c.delete(POLICIES, "web"));
    let t = daemon.expect("a deleted policy").await;
    assert!(!t.contains("web.http"), "{t}");
    let good = t;

    // An invalid object: an Event names it and the error; the running policy stays.
    api.change(|c| {
        c.put(
            POLICIES,
            "broken",
            policy(json!({"firewall": {"rules": [{"name": "wide", "action": "allow", "src": ["10.0.0.1/8"]}]}})),
        );
    });
    daemon.expect_none("an invalid policy").await;
    assert_eq!(std::fs::read_to_string(&state).unwrap(), good);
    let events = api.cluster.lock().unwrap().events.clone();
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    assert_eq!(ev["involvedObject"]["kind"], "PalisadePolicy");
    assert_eq!(ev["involvedObject"]["name"], "broken");
    assert_eq!(ev["involvedObject"]["uid"], "uid-broken");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["metadata"]["namespace"], "palisade-system");
    let msg = ev["message"].as_str().unwrap();
    assert!(
        msg.contains("PalisadePolicy/broken: spec.firewall.rules[0].src"),
        "{msg}"
    );
    assert_eq!(shared.invalid.load(Ordering::Relaxed), 1);

    // A node label change selects the edge policy; the invalid one is not reported again.
    api.change(|c| c.put(NODES, NODE, node(json!({"zone": "a", "edge": "yes"}))));
    let t = daemon.expect("a node label change").await;
    assert!(t.contains("edge.smb") && t.contains("dport = 445"), "{t}");
    assert!(!t.contains("broken.wide"), "{t}");
    assert_eq!(api.cluster.lock().unwrap().events.len(), 1);

    kept(&state, &t).await;

    // Outage: the API server goes away; nothing is applied, the policy stays.
    let applied = shared.applied.load(Ordering::Relaxed);
    api.stop().await;
    daemon.expect_none("the API server went away").await;
    assert!(shared.watch_errors.load(Ordering::Relaxed) > 0);
    assert!(!shared.connected.load(Ordering::Relaxed));
    assert_eq!(shared.applied.load(Ordering::Relaxed), applied);
    // Meanwhile the cluster changes; on its return the controller catches up.
    api.change(|c| {
        c.put(
            POLICIES,
            "all",
            policy(json!({"firewall": {"rules": [rule("telnet", 2424)]}})),
        )
    });
    api.start();
    let t = daemon.expect("the API server came back").await;
    assert!(t.contains("dport = 2424"), "{t}");
    assert!(shared.connected.load(Ordering::Relaxed));
    kept(&state, &t).await;

    // Never a write into the policy objects (no status), only Event POSTs.
    assert_eq!(api.cluster.lock().unwrap().writes, Vec::<String>::new());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_applied_while_the_api_server_is_unreachable() {
    let mut api = FakeApi::new().await;
    api.stop().await;
    let dir = scratch("down");
    let (mut daemon, shared, state) = start(&api, &dir, BASE);
    daemon.expect_none("starting without an API server").await;
    assert!(!shared.synced.load(Ordering::Relaxed));
    assert!(shared.watch_errors.load(Ordering::Relaxed) > 0);
    assert!(!state.exists());
    // A base policy change alone does not apply either: the cluster is not known yet.
    std::fs::write(
        dir.0.join("policy.toml"),
        "[firewall]\ndefault = \"drop\"\n",
    )
    .unwrap();
    daemon
        .expect_none("a base change without the cluster")
        .await;
    api.change(|c| c.put(NODES, NODE, node(json!({}))));
    api.start();
    let t = daemon.expect("the API server came up").await;
    assert!(t.contains("default = \"drop\""), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_policy_change_is_merged_again() {
    let mut api = FakeApi::new().await;
    let dir = scratch("base");
    api.change(|c| {
        c.put(NODES, NODE, node(json!({})));
        c.put(
            POLICIES,
            "all",
            policy(json!({"firewall": {"rules": [rule("telnet", 23)]}})),
        );
    });
    let (mut daemon, _shared, _state) = start(&api, &dir, BASE);
    let t = daemon.expect("the first lists").await;
    assert!(t.contains("base-ssh"), "{t}");
    // kubelet swaps the ConfigMap's files; the overlays stay merged over the new base.
    std::fs::write(
        dir.0.join("policy.toml"),
        BASE.replace("base-ssh", "base-ssh2"),
    )
    .unwrap();
    let t = daemon.expect("a base change").await;
    assert!(t.contains("base-ssh2") && t.contains("all.telnet"), "{t}");
    api.stop().await;
}
