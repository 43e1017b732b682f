//! The Helm chart (charts/palisade) and the plain manifests rendered from it
//! (deploy/kubernetes/): `helm lint`, the official Kubernetes schemas of several versions,
//! and the invariants the agent depends on that schemas cannot express.
//!
//! Needs helm at `.tools/helm/helm` and kubernetes-validate in `.tools/venv` (both from
//! `cargo xtask setup`). No root, no kernel:
//!
//!     cargo test --release -p palisade --test chart

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The `helm template` arguments of deploy/kubernetes/palisade.yaml (as in
/// xtask/src/package.rs).
const RENDER_ARGS: &[&str] = &[
    "template",
    "palisade",
    "charts/palisade",
    "--namespace",
    "palisade-system",
    "--set",
    "createNamespace=true",
    "--include-crds",
];
const MANIFESTS: &str = "deploy/kubernetes/palisade.yaml";

/// Kubernetes versions the rendered manifests are validated against (oldest supported, a
/// middle one, the newest kubernetes-validate ships).
const K8S_VERSIONS: &[&str] = &["1.30.0", "1.33.0", "1.37.0"];

/// Value sets every check runs over: the defaults and each mode.
const VARIANTS: &[&[&str]] = &[
    &[],
    &["--set", "cleanup=true"],
    &["--set", "policyReload=rollout"],
    &["--set", "kubernetes.enabled=false"],
    &[
        "--set",
        "seccompProfile.type=Localhost",
        "--set",
        "seccompProfile.localhostProfile=profiles/palisade.json",
        "--set",
        "interfaces={eth0,eth1}",
        "--set",
        "otlp.endpoint=http://collector:4317",
    ],
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(rel: &str) -> PathBuf {
    let p = root().join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup`",
        p.display()
    );
    p
}

fn helm(args: &[&str]) -> std::process::Output {
    Command::new(tool(".tools/helm/helm"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("run helm")
}

fn render(extra: &[&str]) -> String {
    let mut args = RENDER_ARGS.to_vec();
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm template {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The objects of a multi-document YAML stream, as JSON (PyYAML of the test venv).
fn objects(yaml: &str) -> Vec<Value> {
    let mut child = Command::new(tool(".tools/venv/bin/python3"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Every `privileged` key anywhere in `v`.
fn privileged(v: &Value, found: &mut Vec<Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "privileged" {
                    found.push(x.clone());
                }
                privileged(x, found);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| privileged(x, found)),
        _ => {}
    }
}

#[test]
fn helm_lint_passes_for_every_mode() {
    for extra in VARIANTS {
        let mut args = vec!["lint", "--strict", "charts/palisade"];
        args.extend_from_slice(extra);
        let out = helm(&args);
        assert!(
            out.status.success(),
            "helm lint {extra:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A template error is caught: lint is not a no-op.
    let out = helm(&["lint", "charts/palisade", "--set", "probes.startup=oops"]);
    assert!(!out.status.success(), "a broken value passed lint");
}

#[test]
fn checked_in_manifests_are_the_charts_rendering() {
    let file = std::fs::read_to_string(root().join(MANIFESTS)).unwrap();
    let body: String = file
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        body == render(&[]),
        "{MANIFESTS} differs from the chart's rendering: run `cargo xtask manifests`"
    );
    // The chart's copy of the CRD is the generated one.
    let crd = root().join("deploy/crd/palisadepolicy.yaml");
    let copy = root().join("charts/palisade/crds/palisadepolicy.yaml");
    if crd.exists() || copy.exists() {
        assert_eq!(
            std::fs::read(&crd).ok(),
            std::fs::read(&copy).ok(),
            "charts/palisade/crds/ differs from deploy/crd/: run `cargo xtask manifests`"
        );
    }
}

#[test]
fn rendered_manifests_pass_the_official_schemas_strictly() {
    let dir = std::env::temp_dir().join(format!("palisade-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (i, extra) in VARIANTS.iter().enumerate() {
        let f = dir.join(format!("variant-{i}.yaml"));
        std::fs::write(&f, render(extra)).unwrap();
        files.push(f);
    }
    // A field the schema does not know fails --strict: the validator is not a no-op.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        render(&[]).replace(
            "hostNetwork: true",
            "hostNetwork: true\n      hostNetwrk: true",
        ),
    )
    .unwrap();
    for v in K8S_VERSIONS {
        let out = Command::new(tool(".tools/venv/bin/kubernetes-validate"))
            .args(["--strict", "-k", v])
            .args(&files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes {v}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(tool(".tools/venv/bin/kubernetes-validate"))
            .args(["--strict", "-k", v])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "kubernetes {v} took an unknown field"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The pod's one container.
fn agent(ds: &Value) -> &Value {
    let c = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(c.len(), 1, "one container");
    &c[0]
}

#[test]
fn daemonset_invariants_hold_in_every_mode() {
    for extra in VARIANTS {
        let objs = objects(&render(extra));
        let ds = kind(&objs, "DaemonSet");
        let pod = &ds["spec"]["template"]["spec"];
        let c = agent(ds);
        let sc = &c["securityContext"];
        let ctx = format!("values {extra:?}");

        let mut p = Vec::new();
        privileged(ds, &mut p);
        assert!(
            p.iter().all(|v| v == &Value::Bool(false)),
            "{ctx}: privileged {p:?}"
        );
        assert_eq!(pod["hostNetwork"], true, "{ctx}");
        assert_eq!(
            strings(&sc["capabilities"]["add"])
                .into_iter()
                .collect::<BTreeSet<_>>(),
            ["BPF", "NET_ADMIN", "PERFMON"]
                .map(String::from)
                .into_iter()
                .collect(),
            "{ctx}: capabilities"
        );
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{ctx}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{ctx}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{ctx}");
        let ru = &ds["spec"]["updateStrategy"];
        assert_eq!(ru["type"], "RollingUpdate", "{ctx}");
        assert_eq!(ru["rollingUpdate"]["maxSurge"], 0, "{ctx}: maxSurge");
        assert_eq!(ru["rollingUpdate"]["maxUnavailable"], 1, "{ctx}");
        assert!(
            pod["tolerations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
            "{ctx}: tolerates every taint"
        );
        // The bpffs of the host, seen with the host's later mounts, never a subPath.
        let bpffs = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["hostPath"]["path"] == "/sys/fs/bpf")
            .expect("bpffs hostPath volume");
        let mounts = c["volumeMounts"].as_array().unwrap();
        let m = mounts
            .iter()
            .find(|m| m["name"] == bpffs["name"])
            .expect("bpffs mounted");
        assert_eq!(m["mountPath"], "/sys/fs/bpf", "{ctx}");
        assert_eq!(m["mountPropagation"], "HostToContainer", "{ctx}");
        assert!(
            mounts.iter().all(|m| m.get("subPath").is_none()),
            "{ctx}: a subPath mount never sees ConfigMap updates"
        );
        let policy_vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v.get("configMap").is_some())
            .expect("policy volume");
        let cm = kind(&objs, "ConfigMap");
        assert_eq!(
            policy_vol["configMap"]["name"], cm["metadata"]["name"],
            "{ctx}"
        );
        assert!(
            mounts.iter().any(|m| m["name"] == policy_vol["name"]
                && m["mountPath"] == "/etc/palisade"
                && m["readOnly"] == true),
            "{ctx}"
        );
        // Seccomp: Unconfined unless a Localhost profile is named.
        let seccomp = &sc["seccompProfile"];
        if extra.contains(&"seccompProfile.type=Localhost") {
            assert_eq!(seccomp["type"], "Localhost", "{ctx}");
            assert_eq!(
                seccomp["localhostProfile"], "profiles/palisade.json",
                "{ctx}"
            );
        } else {
            assert_eq!(seccomp["type"], "Unconfined", "{ctx}");
        }
        // The downward API for the resource attributes of exported events.
        let env = c["env"].as_array().unwrap();
        for (name, path) in [
            ("K8S_NODE_NAME", "spec.nodeName"),
            ("K8S_POD_NAME", "metadata.name"),
            ("K8S_POD_NAMESPACE", "metadata.namespace"),
            ("K8S_POD_UID", "metadata.uid"),
        ] {
            assert!(
                env.iter()
                    .any(|e| e["name"] == name && e["valueFrom"]["fieldRef"]["fieldPath"] == path),
                "{ctx}: {name}"
            );
        }
        let args = strings(&c["args"]);
        let pin = args
            .iter()
            .position(|a| a == "--pin-dir")
            .map(|i| args[i + 1].clone());
        assert_eq!(pin.as_deref(), Some("/sys/fs/bpf/palisade"), "{ctx}");
        let annotated = ds["spec"]["template"]["metadata"]["annotations"]
            .get("checksum/policy")
            .is_some();
        if extra.contains(&"cleanup=true") {
            assert_eq!(args[0], "cleanup", "{ctx}");
            assert!(c.get("readinessProbe").is_none(), "{ctx}");
            continue;
        }
        assert_eq!(args[0], "run", "{ctx}");
        let config = args
            .iter()
            .position(|a| a == "--config")
            .map(|i| args[i + 1].clone())
            .unwrap();
        // Readiness and startup: the daemon enforces the very file it was given.
        for probe in ["startupProbe", "readinessProbe"] {
            let cmd = strings(&c[probe]["exec"]["command"]);
            assert_eq!(cmd[1], "ready", "{ctx}: {probe}");
            let policy = cmd
                .iter()
                .position(|a| a == "--policy")
                .map(|i| &cmd[i + 1]);
            assert_eq!(policy, Some(&config), "{ctx}: {probe}");
        }
        let live = strings(&c["livenessProbe"]["exec"]["command"]);
        assert_eq!(
            live[1], "status",
            "{ctx}: liveness only asks whether the daemon answers"
        );
        let watch = args.iter().any(|a| a == "--watch-config");
        if extra.contains(&"policyReload=rollout") {
            assert!(
                annotated && !watch,
                "{ctx}: rollout mode rolls on a checksum"
            );
        } else {
            assert!(!annotated && watch, "{ctx}: watch mode reloads in place");
        }
        let state = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/var/lib/palisade");
        if extra.contains(&"kubernetes.enabled=false") {
            assert!(
                !args.iter().any(|a| a == "--kubernetes") && !state,
                "{ctx}: the ConfigMap's policy alone"
            );
        } else {
            assert!(
                args.windows(3).any(|w| w[0] == "--kubernetes"
                    && w[1] == "--applied-policy"
                    && w[2] == "/var/lib/palisade/applied.toml")
                    && state,
                "{ctx}: policy from the cluster, the last merge kept on the host"
            );
        }
        if extra.contains(&"interfaces={eth0,eth1}") {
            assert_eq!(args.iter().filter(|a| *a == "--iface").count(), 2, "{ctx}");
            assert!(
                env.iter()
                    .any(|e| e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT"
                        && e["value"] == "http://collector:4317"),
                "{ctx}"
            );
        }
    }
}

#[test]
fn rbac_grants_only_what_the_agent_reads_and_reports() {
    let objs = objects(&render(&[]));
    let role = kind(&objs, "ClusterRole");
    let mut grants = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    grants.insert(format!("{g}/{r}:{v}"));
                }
            }
        }
    }
    let want: BTreeSet<String> = [
        "palisade.io/palisadepolicies:get",
        "palisade.io/palisadepolicies:list",
        "palisade.io/palisadepolicies:watch",
        "/nodes:get",
        "/nodes:list",
        "/nodes:watch",
        "/events:create",
        "/events:patch",
        "events.k8s.io/events:create",
        "events.k8s.io/events:patch",
    ]
    .map(String::from)
    .into_iter()
    .collect();
    assert_eq!(grants, want);
    assert!(
        !objs
            .iter()
            .any(|o| o["kind"] == "Role" || o["kind"] == "RoleBinding"),
        "no namespaced grants"
    );
    let binding = kind(&objs, "ClusterRoleBinding");
    let sa = kind(&objs, "ServiceAccount");
    let ds = kind(&objs, "DaemonSet");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        sa["metadata"]["namespace"]
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
}

#[test]
fn the_base_policy_in_the_configmap_is_valid() {
    let objs = objects(&render(&[]));
    let toml = kind(&objs, "ConfigMap")["data"]["policy.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let f = std::env::temp_dir().join(format!("palisade-chart-policy-{}.toml", std::process::id()));
    std::fs::write(&f, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("check")
        .arg(&f)
        .output()
        .unwrap();
    std::fs::remove_file(&f).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
