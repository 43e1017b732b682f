//! The chart's DaemonSet pod under podman, with the real binary in the real image
//! (deploy/podman/build-image.sh): what a node of a cluster does, short of a kubelet.
//!
//! The pod spec is the one `helm template` renders (charts/palisade), turned into a Pod
//! (podman 4.3's `kube play` has no DaemonSet), with two changes a kubelet makes
//! unnecessary: the legacy seccomp annotation (podman 4.3 ignores `seccompProfile`), and the
//! ConfigMap volume replaced by a hostPath to a directory this test updates the way kubelet
//! updates a ConfigMap volume (podman copies a ConfigMap once, at play time); and the
//! downward API's `spec.nodeName`, `metadata.namespace` and `metadata.uid`, which podman 4.3 cannot resolve, given
//! as values.
//! - the pod enforces with exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, not privileged;
//!   the chart's readiness probe, run inside the container, passes;
//! - a continuous UDP stream to a dropped and an allowed port runs while the pod is
//!   deleted, the node runs without an agent, and a pod of another image replaces it: not
//!   one datagram to the dropped port arrives, and the allowed port sees no gap;
//! - the new pod, confined by the chart's Localhost seccomp profile (deploy/seccomp/),
//!   adopts the pinned link (no gap) and reloads on a ConfigMap change;
//! - the chart's cleanup mode removes the policy, and its container keeps running.
//!
//! Needs root, podman, runc and catatonit, helm and the test venv (`cargo xtask setup`):
//!
//!     cargo test --release -p palisade --test pod_e2e -- --test-threads=1

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use control::BIN;
use serde_json::{Value, json};
use support::otlp::{Collector, records};

const IMAGE: &str = "localhost/palisade-e2e";
/// UDP ports of the continuous stream: the policy drops the first.
const DROPPED_PORT: u16 = 7302;
const ALLOWED_PORT: u16 = 7301;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn containers_conf() -> PathBuf {
    root().join("deploy/podman/containers.conf")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", containers_conf());
    c
}

fn policy(with_icmp_drop: bool) -> String {
    let mut p = format!(
        "[firewall]\ndefault = \"allow\"\n\n[[firewall.rule]]\nname = \"drop-stream\"\naction = \"drop\"\nproto = \"udp\"\ndport = {DROPPED_PORT}\n"
    );
    if with_icmp_drop {
        p.push_str(
            "\n[[firewall.rule]]\nname = \"drop-icmp\"\naction = \"drop\"\nproto = \"icmp\"\nlog = true\n",
        );
    }
    p
}

/// Everything the test creates, removed on drop (also when it panics).
struct Lab {
    tag: String,
    ns: String,
    host_if: String,
    peer_if: String,
    dir: PathBuf,
    pin_dir: PathBuf,
    pods: Vec<PathBuf>,
    images: Vec<String>,
}

impl Lab {
    fn new() -> Self {
        let tag = format!("{}", std::process::id() % 100_000);
        let lab = Self {
            ns: format!("pal-pod-{tag}"),
            host_if: format!("pdh{tag}"),
            peer_if: format!("pdp{tag}"),
            dir: std::env::temp_dir().join(format!("palisade-pod-e2e-{tag}")),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/palisade-pod-e2e-{tag}")),
            pods: Vec::new(),
            images: Vec::new(),
            tag,
        };
        let _ = std::fs::remove_dir_all(&lab.dir);
        std::fs::create_dir_all(lab.dir.join("run")).unwrap();
        run(Command::new("ip").args(["netns", "add", &lab.ns]));
        run(Command::new("ip").args([
            "link",
            "add",
            &lab.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &lab.peer_if,
        ]));
        run(Command::new("ip").args(["link", "set", &lab.peer_if, "netns", &lab.ns]));
        run(Command::new("ip").args(["addr", "add", "10.252.7.1/24", "dev", &lab.host_if]));
        run(Command::new("ip").args(["link", "set", &lab.host_if, "up"]));
        run(Command::new("ip").args([
            "-n",
            &lab.ns,
            "addr",
            "add",
            "10.252.7.2/24",
            "dev",
            &lab.peer_if,
        ]));
        run(Command::new("ip").args(["-n", &lab.ns, "link", "set", &lab.peer_if, "up"]));
        lab
    }

    fn ping(&self) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "ping",
                "-c1",
                "-W1",
                "10.252.7.1",
            ])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// Builds image `IMAGE:tag` from the test's own binary.
    fn image(&mut self, tag: &str) -> String {
        let name = format!("{IMAGE}:{tag}-{}", self.tag);
        run(Command::new(root().join("deploy/podman/build-image.sh"))
            .env("CONTAINERS_CONF", containers_conf())
            .arg(BIN)
            .arg(&name));
        self.images.push(name.clone());
        name
    }

    /// Renders the chart with `values`, turns its DaemonSet into Pod `name`, starts it with
    /// `podman kube play` and returns the rendered container.
    fn play(&mut self, name: &str, image: &str, extra: &[&str]) -> Value {
        let (repo, tag) = image.rsplit_once(':').unwrap();
        let mut args = vec![
            "template".to_string(),
            "palisade".into(),
            "charts/palisade".into(),
            "--namespace".into(),
            "palisade-system".into(),
        ];
        for v in [
            format!("image.repository={repo}"),
            format!("image.tag={tag}"),
            format!("interfaces={{{}}}", self.host_if),
            format!("pinDir={}", self.pin_dir.display()),
            format!("runDir={}", self.dir.join("run").display()),
            "metrics.enabled=false".into(),
            // No API server under podman: the ConfigMap's policy alone.
            "kubernetes.enabled=false".into(),
        ] {
            args.push("--set".into());
            args.push(v);
        }
        args.extend(extra.iter().map(|s| (*s).to_string()));
        let rendered = run(Command::new(root().join(".tools/helm/helm"))
            .current_dir(root())
            .args(&args));
        let objs = yaml_objects(&rendered);
        let ds = objs
            .iter()
            .find(|o| o["kind"] == "DaemonSet")
            .expect("a DaemonSet");
        let mut spec = ds["spec"]["template"]["spec"].clone();
        // Values a kubelet resolves and podman 4.3 does not: given as the kubelet would.
        for e in spec["containers"][0]["env"].as_array_mut().unwrap() {
            let literal = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("spec.nodeName") => "e2e-node",
                Some("metadata.namespace") => "palisade-system",
                Some("metadata.uid") => "00000000-0000-4000-8000-000000000e2e",
                _ => continue,
            };
            *e = json!({"name": e["name"], "value": literal});
        }
        for v in spec["volumes"].as_array_mut().unwrap() {
            if v.get("configMap").is_some() {
                *v = json!({"name": v["name"], "hostPath": {"path": self.dir.join("configmap"), "type": "Directory"}});
            }
        }
        // podman 4.3 takes the profile from the legacy annotation only.
        let profile = &spec["containers"][0]["securityContext"]["seccompProfile"];
        let seccomp = match profile["type"].as_str() {
            Some("Localhost") => format!(
                "localhost/{}",
                profile["localhostProfile"].as_str().unwrap()
            ),
            Some("Unconfined") => "unconfined".to_string(),
            other => panic!("seccomp profile {other:?}"),
        };
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": ds["spec"]["template"]["metadata"]["labels"],
                "annotations": {"seccomp.security.alpha.kubernetes.io/pod": seccomp},
            },
            "spec": spec,
        });
        let file = self.dir.join(format!("{name}.json"));
        std::fs::write(&file, pod.to_string()).unwrap();
        // Before playing: a pod that fails half-way is removed too.
        self.pods.push(file.clone());
        run(podman()
            .args(["kube", "play", "--quiet", "--seccomp-profile-root"])
            .arg(root().join("deploy/seccomp"))
            .arg(&file));
        ds["spec"]["template"]["spec"]["containers"][0].clone()
    }

    /// `podman kube down` of the pod started last.
    fn down(&mut self) {
        let file = self.pods.pop().expect("a pod");
        run(podman().args(["kube", "down"]).arg(&file));
    }

    fn logs(&self, container: &str) -> String {
        let out = podman().args(["logs", container]).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in self.pods.drain(..).rev() {
            let _ = podman().args(["kube", "down"]).arg(&p).output();
        }
        for i in &self.images {
            let _ = podman().args(["rmi", "-f", i]).output();
        }
        let _ = Command::new(BIN)
            .args([
                "--socket",
                "/nonexistent/palisade.sock",
                "unload",
                "--pin-dir",
            ])
            .arg(&self.pin_dir)
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn yaml_objects(yaml: &str) -> Vec<Value> {
    let mut child = Command::new(root().join(".tools/venv/bin/python3"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A ConfigMap volume as kubelet writes it: `policy.toml` -> `..data/policy.toml`, and
/// `..data` swapped atomically to a new timestamped directory on each update.
fn configmap_update(dir: &Path, version: u32, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    let name = format!("..2026_12_05_21_00_00.{version}");
    std::fs::create_dir(dir.join(&name)).unwrap();
    std::fs::write(dir.join(&name).join("policy.toml"), text).unwrap();
    symlink(&name, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    match old {
        Some(old) => std::fs::remove_dir_all(dir.join(old)).unwrap(),
        None => symlink("..data/policy.toml", dir.join("policy.toml")).unwrap(),
    }
}

/// Whether a firewall drop of `rule` reached `collector`, with the pod's resource attributes.
fn has_drop(collector: &Collector, rule: &str) -> bool {
    let pod_logs = |req: &Value| {
        let logs: Vec<Value> = req["request"]["resourceLogs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|rl| {
                rl["resource"]["attributes"]
                    .to_string()
                    .contains("k8s.pod.name")
            })
            .cloned()
            .collect();
        json!({ "request": { "resourceLogs": logs } })
    };
    collector
        .requests()
        .iter()
        .flat_map(|req| records(&pod_logs(req)))
        .any(|r| {
            r["eventName"] == "palisade.firewall" && r["attributes"].to_string().contains(rule)
        })
}

/// Waits up to `limit` until `f` holds.
fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "never: {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// The `Seccomp:` mode the kernel reports for the container's main process (0 none, 2
/// filter).
fn seccomp_mode(container: &str) -> String {
    let inspect: Value = serde_json::from_str(&run(podman().args(["inspect", container]))).unwrap();
    let pid = inspect[0]["State"]["Pid"].as_u64().unwrap();
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .unwrap()
        .trim()
        .to_string()
}

/// The chart's readiness probe, run inside the container as the kubelet would.
fn probe(container: &str, command: &Value) -> (bool, String) {
    let cmd: Vec<String> = command
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let out = podman()
        .args(["exec", container])
        .args(&cmd)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Counts datagrams per port on the host side (10.252.7.1) until stdin closes, then prints
/// `port count` lines.
const RECEIVER: &str = r"
import socket, select, sys
socks = {}
for p in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('10.252.7.1', p)); socks[s] = p
counts = {p: 0 for p in socks.values()}
print('ready', flush=True)
while True:
    r, _, _ = select.select(list(socks) + [sys.stdin], [], [], 0.5)
    if sys.stdin in r:
        break
    for s in r:
        s.recv(2048); counts[socks[s]] += 1
for p, n in counts.items():
    print(p, n, flush=True)
";

/// Sends one datagram to each port every millisecond, numbered, until stdin closes; prints
/// how many it sent to each. Runs in the namespace behind the guarded interface.
const SENDER: &str = r"
import socket, select, sys, time
ports = list(map(int, sys.argv[1:]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = 0
print('ready', flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    for p in ports:
        s.sendto(b'%d' % n, ('10.252.7.1', p))
    n += 1
    time.sleep(0.001)
print(n, flush=True)
";

fn python(ns: Option<&str>, script: &str, ports: &[u16]) -> Child {
    let mut c = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "python3"]);
            c
        }
        None => Command::new("python3"),
    };
    let mut child = c
        .arg("-c")
        .arg(script)
        .args(ports.iter().map(u16::to_string))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

fn finish(mut child: Child) -> String {
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_charts_pod_enforces_hands_over_without_a_gap_reloads_and_cleans_up() {
    let started = Instant::now();
    let mut lab = Lab::new();
    let cm = lab.dir.join("configmap");
    configmap_update(&cm, 1, &policy(true));
    let image_a = lab.image("a");
    let image_b = lab.image("b");
    assert!(lab.ping(), "the lab passes pings before any policy");

    // 1. The first pod: enforcing with its declared capabilities only, ready, its events
    //    exported to an OTLP collector on the node (HTTP/protobuf, from the chart's values).
    let collector = Collector::start("pod-e2e", None);
    let endpoint = format!("otlp.endpoint=http://127.0.0.1:{}", collector.http);
    let agent = lab.play(
        "palisade-e2e",
        &image_a,
        &["--set", &endpoint, "--set", "otlp.protocol=http/protobuf"],
    );
    let ctr = "palisade-e2e-agent";
    let readiness = agent["readinessProbe"]["exec"]["command"].clone();
    eventually("the pod is ready", Duration::from_secs(60), || {
        probe(ctr, &readiness).0
    });
    let inspect: Value = serde_json::from_str(&run(podman().args(["inspect", ctr]))).unwrap();
    let mut caps: Vec<String> = inspect[0]["EffectiveCaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    caps.sort();
    assert_eq!(caps, ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
    assert_eq!(inspect[0]["HostConfig"]["Privileged"], false);
    assert_eq!(inspect[0]["HostConfig"]["NetworkMode"], "host");
    assert_eq!(seccomp_mode(ctr), "0", "Unconfined by default");
    assert!(!lab.ping(), "drop-icmp enforced by the pod");
    eventually(
        "the pod's drop event at the OTLP collector",
        Duration::from_secs(15),
        || has_drop(&collector, "drop-icmp"),
    );
    assert!(
        lab.logs(ctr)
            .contains("palisade: enforcing /etc/palisade/policy.toml")
    );

    // 2. A rollout under a continuous stream: pod deleted, no agent, a new image's pod.
    let receiver = python(None, RECEIVER, &[ALLOWED_PORT, DROPPED_PORT]);
    let sender = python(Some(&lab.ns), SENDER, &[ALLOWED_PORT, DROPPED_PORT]);
    thread::sleep(Duration::from_millis(300));
    lab.down();
    assert!(!lab.ping(), "enforced with no agent running");
    // The new pod runs under the chart's Localhost seccomp profile (deploy/seccomp/).
    let agent_b = lab.play(
        "palisade-e2e-b",
        &image_b,
        &[
            "--set",
            "seccompProfile.type=Localhost",
            "--set",
            "seccompProfile.localhostProfile=palisade.json",
        ],
    );
    let ctr_b = "palisade-e2e-b-agent";
    let readiness_b = agent_b["readinessProbe"]["exec"]["command"].clone();
    eventually("the new pod is ready", Duration::from_secs(60), || {
        probe(ctr_b, &readiness_b).0
    });
    thread::sleep(Duration::from_millis(300));
    let sent: u64 = finish(sender).trim().parse().unwrap();
    thread::sleep(Duration::from_millis(200));
    let received = finish(receiver);
    let count = |port: u16| -> u64 {
        received
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{port} ")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    eprintln!(
        "rollout under traffic: sent {sent} to each port; allowed port received {}, dropped port {}",
        count(ALLOWED_PORT),
        count(DROPPED_PORT)
    );
    assert!(sent > 500, "the stream ran through the rollout ({sent})");
    assert_eq!(count(DROPPED_PORT), 0, "a datagram passed unfiltered");
    assert_eq!(count(ALLOWED_PORT), sent, "the allowed port lost datagrams");
    assert_eq!(
        seccomp_mode(ctr_b),
        "2",
        "the daemon runs under a seccomp filter"
    );
    let logs = lab.logs(ctr_b);
    assert!(logs.contains("adopted the pinned link"), "{logs}");

    // 3. A ConfigMap update reaches the running pod: reloaded, ready on the new policy.
    configmap_update(&cm, 2, &policy(false));
    let start = Instant::now();
    while !lab.ping() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never: the pod reloaded\n{}",
            lab.logs(ctr_b)
        );
        thread::sleep(Duration::from_millis(200));
    }
    let (ready, line) = probe(ctr_b, &readiness_b);
    assert!(ready, "{line}");
    assert!(lab.logs(ctr_b).contains("the config changed; reloaded"));

    // 4. Uninstall: the policy outlives the pod; the cleanup mode removes it.
    lab.down();
    let probe_sender = python(Some(&lab.ns), SENDER, &[DROPPED_PORT]);
    let probe_receiver = python(None, RECEIVER, &[DROPPED_PORT]);
    thread::sleep(Duration::from_millis(200));
    let _ = finish(probe_sender);
    let got = finish(probe_receiver);
    assert_eq!(
        got.trim(),
        format!("{DROPPED_PORT} 0"),
        "enforced after the pod is gone"
    );
    lab.play("palisade-e2e-cleanup", &image_b, &["--set", "cleanup=true"]);
    let cleanup_ctr = "palisade-e2e-cleanup-agent";
    eventually("the cleanup pod unloaded", Duration::from_secs(30), || {
        lab.logs(cleanup_ctr)
            .contains("nothing of palisade is enforced")
    });
    assert!(!lab.pin_dir.exists(), "pins removed");
    let state: Value = serde_json::from_str(&run(podman().args(["inspect", cleanup_ctr]))).unwrap();
    assert_eq!(
        state[0]["State"]["Status"], "running",
        "the cleanup container waits"
    );
    let r_sender = python(Some(&lab.ns), SENDER, &[DROPPED_PORT]);
    let r_receiver = python(None, RECEIVER, &[DROPPED_PORT]);
    thread::sleep(Duration::from_millis(200));
    let _ = finish(r_sender);
    assert_ne!(
        finish(r_receiver).trim(),
        format!("{DROPPED_PORT} 0"),
        "the policy is gone"
    );
    lab.down();
    eprintln!("pod e2e took {:?}", started.elapsed());
}
