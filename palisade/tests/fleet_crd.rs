//! The `PalisadePolicy` CRD: the generated definition matches the checked-in file, the
//! examples are valid against its schema (checked by Python's `jsonschema`, an independent
//! validator, from setup's `.tools/venv`) and compile over a base policy, the invalid
//! examples are rejected with the path of their error, and the merge follows its documented
//! order. No kernel needed. Run with
//! `cargo test --release -p palisade --test fleet_crd`.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use palisade::{
    fleet::{
        crd::{self, PalisadePolicy},
        merge::{self, Base},
    },
    policy::model::Action,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

fn python() -> PathBuf {
    let venv = root().join(".tools/venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Validates each document against the CRD's `openAPIV3Schema` with Python's jsonschema
/// (Draft 7); returns, per document, the paths of its errors (`spec.firewall.rules[1].action`).
fn schema_errors(docs: &[serde_json::Value]) -> Vec<Vec<String>> {
    let crd: serde_json::Value =
        serde_saphyr::from_str(&crd::crd_yaml().unwrap()).expect("the CRD is YAML");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let input = serde_json::json!({ "schema": schema, "docs": docs });
    let script = r#"
import json, sys
from jsonschema import Draft7Validator
data = json.load(sys.stdin)
v = Draft7Validator(data["schema"])
out = []
for d in data["docs"]:
    paths = []
    for e in v.iter_errors(d):
        p = ""
        for part in e.absolute_path:
            p += f"[{part}]" if isinstance(part, int) else (("." if p else "") + part)
        paths.append(p)
    out.append(sorted(paths))
print(json.dumps(out))
"#;
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (cargo xtask setup installs jsonschema in .tools/venv)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the schema check failed to run");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn base(text: &str) -> Base {
    Base {
        text: text.to_owned(),
        dir: PathBuf::from("."),
    }
}

fn builtin() -> Base {
    base(palisade::policy::config::DEFAULT_POLICY)
}

#[test]
fn generated_crd_is_the_checked_in_file() {
    let file = root().join("deploy/crd/palisadepolicy.yaml");
    let checked_in = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        crd::crd_yaml().unwrap(),
        checked_in,
        "run `palisade crd > deploy/crd/palisadepolicy.yaml`"
    );
    let v: serde_json::Value = serde_saphyr::from_str(&checked_in).unwrap();
    assert_eq!(v["spec"]["scope"], "Cluster");
    assert_eq!(v["metadata"]["name"], "palisadepolicies.palisade.io");
    // No status: nodes never write into the policy objects.
    assert!(v["spec"]["versions"][0]["subresources"].is_null());
}

#[test]
fn examples_are_valid_and_compile() {
    let files = yaml_files(&root().join("examples/palisadepolicy"));
    assert!(files.len() >= 3);
    let docs: Vec<serde_json::Value> = files
        .iter()
        .map(|f| serde_saphyr::from_str(&std::fs::read_to_string(f).unwrap()).unwrap())
        .collect();
    for (f, errors) in files.iter().zip(schema_errors(&docs)) {
        assert!(
            errors.is_empty(),
            "{}: schema errors at {errors:?}",
            f.display()
        );
    }
    for f in &files {
        let p = merge::parse_object(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let m =
            merge::check_object(&builtin(), &p).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let ours = p.spec.firewall.as_ref().map_or(0, |fw| fw.rules.len());
        assert_eq!(m.policy.firewall.rules.len(), 3 + ours, "{}", f.display());
        for r in p.spec.firewall.iter().flat_map(|fw| &fw.rules) {
            let name = format!("{}.{}", p.metadata.name.as_deref().unwrap(), r.name);
            assert!(
                m.policy
                    .firewall
                    .rules
                    .iter()
                    .any(|x| x.name.as_deref() == Some(name.as_str())),
                "{name} missing"
            );
        }
    }
}

#[test]
fn invalid_examples_are_rejected_with_their_path() {
    let files = yaml_files(&root().join("examples/palisadepolicy/invalid"));
    assert!(files.len() >= 5);
    let mut schema_cases = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| {
                panic!(
                    "{}: first line is `# expect: schema|compile PATH`",
                    f.display()
                )
            });
        let (kind, path) = expect.split_once(' ').unwrap();
        match kind {
            "schema" => {
                let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
                schema_cases.push((f.clone(), doc, path.to_owned()));
                // The daemon refuses it as well, reading or compiling it.
                let refused = merge::parse_object(&text)
                    .and_then(|p| merge::check_object(&builtin(), &p))
                    .is_err();
                assert!(refused, "{}", f.display());
            }
            "compile" => {
                let p = merge::parse_object(&text).unwrap();
                let e = merge::check_object(&builtin(), &p).unwrap_err();
                let name = p.metadata.name.clone().unwrap();
                assert!(
                    e.lines()
                        .any(|l| l.starts_with(&format!("PalisadePolicy/{name}: {path}"))),
                    "{}: expected an error at {path}, got:\n{e}",
                    f.display()
                );
            }
            other => panic!("{}: unknown expectation {other}", f.display()),
        }
    }
    let docs: Vec<_> = schema_cases.iter().map(|c| c.1.clone()).collect();
    for ((f, _, path), errors) in schema_cases.iter().zip(schema_errors(&docs)) {
        assert_eq!(errors, vec![path.clone()], "{}", f.display());
    }
}

fn object(yaml: &str) -> PalisadePolicy {
    merge::parse_object(yaml).unwrap()
}

#[test]
fn merge_follows_priority_then_name_and_skips_what_does_not_compile() {
    let base = base(
        r#"
[firewall]
default = "allow"

[sets.blocklist]
entries = ["192.0.2.1"]

[[firewall.rule]]
name = "base-ssh"
action = "allow"
proto = "tcp"
dport = 22
"#,
    );
    let objs = vec![
        object(
            "metadata: {name: b-late}\nspec:\n  priority: 10\n  firewall:\n    default: allow\n    rules: [{name: r, action: drop, proto: udp, dport: 53}]\n  sets: {blocklist: {entries: [\"192.0.2.1\", \"198.51.100.0/24\"]}}\n",
        ),
        object(
            "metadata: {name: a-early}\nspec:\n  priority: 10\n  firewall:\n    default: drop\n    rules: [{name: r, action: drop, proto: tcp, dport: 23}]\n",
        ),
        object(
            "metadata: {name: z-first}\nspec:\n  priority: -5\n  firewall:\n    rules: [{name: r, action: allow, proto: tcp, dport: 80}]\n",
        ),
        object(
            "metadata: {name: broken}\nspec:\n  firewall:\n    rules: [{name: r, action: rate-limit, proto: tcp}]\n",
        ),
        object(
            "metadata: {name: edge-only}\nspec:\n  nodeSelector: {matchLabels: {edge: \"yes\"}}\n  firewall:\n    rules: [{name: r, action: drop}]\n",
        ),
    ];
    let labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
    let m = merge::merge(&base, &labels, &objs).unwrap();
    // priority -5 first, then the two 10s by name; "broken" (0) is tried and left out.
    assert_eq!(m.applied, ["z-first", "a-early", "b-late"]);
    assert_eq!(m.rejected.len(), 1);
    assert_eq!(m.rejected[0].name, "broken");
    assert!(
        m.rejected[0]
            .error
            .starts_with("PalisadePolicy/broken: spec.firewall.rules[0]"),
        "{}",
        m.rejected[0].error
    );
    let names: Vec<_> = m
        .policy
        .firewall
        .rules
        .iter()
        .map(|r| r.name.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(names, ["base-ssh", "z-first.r", "a-early.r", "b-late.r"]);
    // The last in order that sets the default wins.
    assert_eq!(m.policy.firewall.default_action, Action::Allow);
    // Sets are unions, without duplicates.
    let blocklist = m
        .policy
        .sets
        .iter()
        .find(|s| s.name == "blocklist")
        .unwrap();
    assert_eq!(blocklist.entries.len(), 2);
    // The order does not depend on the order the objects came in.
    let mut reversed = objs.clone();
    reversed.reverse();
    assert_eq!(
        merge::merge(&base, &labels, &reversed).unwrap().text,
        m.text
    );
    // A node with the label also takes the edge-only policy (priority 0, after z-first).
    let edge = BTreeMap::from([("edge".to_owned(), "yes".to_owned())]);
    let m = merge::merge(&base, &edge, &objs).unwrap();
    assert_eq!(m.applied, ["z-first", "edge-only", "a-early", "b-late"]);
}

#[test]
fn an_uncompilable_base_is_an_error_and_a_bad_selector_is_reported() {
    assert!(
        merge::merge(
            &base("[firewall]\ndefault = \"explode\"\n"),
            &BTreeMap::new(),
            &[]
        )
        .is_err()
    );
    let bad = object(
        "metadata: {name: bad-selector}\nspec:\n  nodeSelector: {matchExpressions: [{key: k, operator: Sideways}]}\n",
    );
    let m = merge::merge(&builtin(), &BTreeMap::new(), &[bad]).unwrap();
    assert!(m.applied.is_empty());
    assert!(
        m.rejected[0].error.starts_with("spec.nodeSelector"),
        "{}",
        m.rejected[0].error
    );
}

#[test]
fn mark_and_mirror_rules_merge_with_their_keys_and_errors_name_their_field() {
    use palisade::policy::model::Mark;
    let ok = object(
        "metadata: {name: act}\nspec:\n  firewall:\n    rules:\n    - {name: voip, action: mark, proto: udp, dport: 5060, setMark: 42, setDscp: ef}\n    - {name: cs1, action: mark, setDscp: 8}\n    - {name: tap, action: mirror, proto: udp, dport: 53, mirrorTo: lo}\n",
    );
    let m = merge::check_object(&builtin(), &ok).unwrap();
    let action = |name: &str| {
        m.policy
            .firewall
            .rules
            .iter()
            .find(|r| r.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing"))
            .action
    };
    assert_eq!(
        action("act.voip"),
        Action::Mark(Mark {
            mark: Some(42),
            dscp: Some(46)
        })
    );
    assert_eq!(
        action("act.cs1"),
        Action::Mark(Mark {
            mark: None,
            dscp: Some(8)
        })
    );
    match action("act.tap") {
        Action::Mirror(x) => assert_eq!((x.ifindex, x.iface()), (1, "lo")),
        other => panic!("{other:?}"),
    }
    for (rule, path) in [
        (
            "{name: r, action: mark, proto: udp}",
            "spec.firewall.rules[0].action",
        ),
        (
            "{name: r, action: drop, setMark: 1}",
            "spec.firewall.rules[0].setMark",
        ),
        (
            "{name: r, action: mark, setDscp: 64}",
            "spec.firewall.rules[0].setDscp",
        ),
        (
            "{name: r, action: mark, setDscp: xx}",
            "spec.firewall.rules[0].setDscp",
        ),
        ("{name: r, action: mirror}", "spec.firewall.rules[0].action"),
        (
            "{name: r, action: mirror, mirrorTo: m19nosuch0}",
            "spec.firewall.rules[0].mirrorTo",
        ),
        (
            "{name: r, action: allow, mirrorTo: lo}",
            "spec.firewall.rules[0].mirrorTo",
        ),
        (
            "{name: r, action: rate-limit, rate: {pps: 1, burst: 1, per: country}}",
            "spec.firewall.rules[0].rate",
        ),
    ] {
        rule_is_refused_at(rule, path);
    }
}

#[test]
fn redirect_rules_merge_with_their_keys_and_errors_name_their_field() {
    use palisade::policy::model::Redirect;
    let ok = object(
        "metadata: {name: out}\nspec:\n  firewall:\n    rules:\n    - {name: direct, action: redirect, proto: udp, dport: 9000, redirectTo: lo}\n    - {name: via, action: redirect, dst: [198.51.100.0/24], routeTable: 100}\n",
    );
    let m = merge::check_object(&builtin(), &ok).unwrap();
    let action = |name: &str| {
        m.policy
            .firewall
            .rules
            .iter()
            .find(|r| r.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing"))
            .action
    };
    match action("out.direct") {
        Action::Redirect(Redirect::Iface(x)) => assert_eq!((x.ifindex, x.iface()), (1, "lo")),
        other => panic!("{other:?}"),
    }
    assert_eq!(action("out.via"), Action::Redirect(Redirect::Table(100)));
    // The schema knows the action and the keys: a valid object has no schema errors.
    let doc: serde_json::Value = serde_json::to_value(&ok).unwrap();
    assert_eq!(schema_errors(&[doc]), vec![Vec::<String>::new()]);
    for (rule, path) in [
        (
            "{name: r, action: redirect}",
            "spec.firewall.rules[0].action",
        ),
        (
            "{name: r, action: redirect, redirectTo: lo, routeTable: 100}",
            "spec.firewall.rules[0].routeTable",
        ),
        (
            "{name: r, action: redirect, redirectTo: m19nosuch0}",
            "spec.firewall.rules[0].redirectTo",
        ),
        (
            "{name: r, action: redirect, routeTable: 0}",
            "spec.firewall.rules[0].routeTable",
        ),
        (
            "{name: r, action: allow, redirectTo: lo}",
            "spec.firewall.rules[0].redirectTo",
        ),
        (
            "{name: r, action: drop, routeTable: 100}",
            "spec.firewall.rules[0].routeTable",
        ),
    ] {
        rule_is_refused_at(rule, path);
    }
}

#[test]
fn steer_rules_merge_with_their_keys_and_errors_name_their_field() {
    let ok = object(
        "metadata: {name: cpu}\nspec:\n  firewall:\n    rules:\n    - {name: spread, action: steer, proto: udp, dport: 514, cpus: [0], queueSize: 4096}\n",
    );
    let m = merge::check_object(&builtin(), &ok).unwrap();
    let rule = m
        .policy
        .firewall
        .rules
        .iter()
        .find(|r| r.name.as_deref() == Some("cpu.spread"))
        .expect("cpu.spread");
    match rule.action {
        Action::Steer(s) => assert_eq!((s.cpus(), s.queue_size), (&[0u8][..], 4096)),
        other => panic!("{other:?}"),
    }
    let doc: serde_json::Value = serde_json::to_value(&ok).unwrap();
    assert_eq!(schema_errors(&[doc]), vec![Vec::<String>::new()]);
    for (rule, path) in [
        ("{name: r, action: steer}", "spec.firewall.rules[0].action"),
        (
            "{name: r, action: steer, cpus: [0, 0]}",
            "spec.firewall.rules[0].cpus",
        ),
        (
            "{name: r, action: steer, cpus: [64]}",
            "spec.firewall.rules[0].cpus",
        ),
        (
            "{name: r, action: steer, cpus: [0], queueSize: 0}",
            "spec.firewall.rules[0].queueSize",
        ),
        (
            "{name: r, action: allow, cpus: [0]}",
            "spec.firewall.rules[0].cpus",
        ),
        (
            "{name: r, action: drop, queueSize: 8}",
            "spec.firewall.rules[0].queueSize",
        ),
    ] {
        rule_is_refused_at(rule, path);
    }
}

/// A PalisadePolicy whose one firewall rule is `rule` is refused with an error at `path`.
fn rule_is_refused_at(rule: &str, path: &str) {
    let bad = object(&format!(
        "metadata: {{name: bad}}\nspec:\n  firewall:\n    rules: [{rule}]\n"
    ));
    let e = merge::check_object(&builtin(), &bad).unwrap_err();
    assert!(
        e.lines()
            .any(|l| l.starts_with(&format!("PalisadePolicy/bad: {path}"))),
        "{rule}: expected an error at {path}, got:\n{e}"
    );
}
