//! The effective policy of a node: its base policy (the TOML file the daemon reads) with
//! every `PalisadePolicy` that selects the node merged over it.
//!
//! # Order and conflicts
//! - The policies whose `nodeSelector` matches the node's labels (every node without one)
//!   are taken in order of `spec.priority`, lower first, ties by name: the order does not
//!   depend on when the objects were created or listed.
//! - Rules are appended after the base policy's rules, in that order, each named
//!   `POLICY.RULE`. A rule without `priority` runs after the rules before it (the policy
//!   file's "position in file" default), so by default overlays add to the base policy and
//!   never jump ahead of it; a rule with a `priority` takes its place among all rules.
//! - `firewall.default`: the last policy in order that sets it wins over the base policy.
//! - Sets and DNS lists of the same name are unions: entries and names are added to the
//!   base's (or an earlier overlay's), so no overlay can remove what another put there.
//! - Each policy is tried on top of the base and the policies accepted before it, and
//!   compiled by the daemon's own compiler; one that does not compile is skipped, reported
//!   with the path of the error (`spec.firewall.rules[1].dport: ...`), and does not stop the
//!   others.

use std::{collections::BTreeMap, fmt::Write as _};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{
    ResourceExt as _,
    core::{Selector, SelectorExt as _},
};
use toml::{Table, Value};

use super::crd::{DefaultAction, PalisadePolicy, RatePer, RuleAction, RuleSpec};
use crate::policy::{config, model::Policy};

/// The file name diagnostics of the merged policy carry.
pub const MERGED_NAME: &str = "<merged policy>";

/// The base policy: the text of the file the daemon reads and the directory its relative
/// set and list files are taken from.
#[derive(Debug, Clone)]
pub struct Base {
    /// The TOML text.
    pub text: String,
    /// Where relative `files` paths are looked up.
    pub dir: std::path::PathBuf,
}

/// A policy object left out of the merge, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The object's name.
    pub name: String,
    /// Every problem, one a line, each starting with its path in the object.
    pub error: String,
}

/// The outcome of a merge.
#[derive(Debug, Clone)]
pub struct Merged {
    /// The effective policy as TOML (what the node enforces, and what is persisted).
    pub text: String,
    /// The compiled policy.
    pub policy: Policy,
    /// The objects merged, in merge order.
    pub applied: Vec<String>,
    /// The objects that select the node but were left out.
    pub rejected: Vec<Rejected>,
}

/// Whether `p` selects a node with these labels.
///
/// # Errors
/// When its selector is malformed (e.g. `In` without values).
pub fn selects(p: &PalisadePolicy, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    match &p.spec.node_selector {
        None => Ok(true),
        Some(s) => Selector::try_from(s.clone())
            .map(|sel| sel.matches(labels))
            .map_err(|e| format!("spec.nodeSelector: {e}")),
    }
}

/// Merges every policy of `policies` that selects a node with `labels` over `base`.
///
/// # Errors
/// When the base policy itself does not compile: nothing can be merged over it.
pub fn merge(
    base: &Base,
    labels: &BTreeMap<String, String>,
    policies: &[PalisadePolicy],
) -> Result<Merged, String> {
    let table: Table = base
        .text
        .parse()
        .map_err(|e| format!("the base policy is not valid TOML: {e}"))?;
    let mut rejected = Vec::new();
    let mut selected = Vec::new();
    for p in policies {
        match selects(p, labels) {
            Ok(true) => selected.push(p),
            Ok(false) => {}
            Err(error) => rejected.push(Rejected {
                name: p.name_any(),
                error,
            }),
        }
    }
    selected.sort_by_key(|p| (p.spec.priority, p.name_any()));
    let first = render(&table, &[])?;
    let mut policy = config::parse_policy(&first.text, MERGED_NAME, &base.dir)
        .map_err(|e| format!("the base policy does not compile: {e}"))?;
    let mut text = first.text;
    let mut accepted: Vec<&PalisadePolicy> = Vec::new();
    for p in selected {
        accepted.push(p);
        let r = render(&table, &accepted)?;
        match config::parse_policy(&r.text, MERGED_NAME, &base.dir) {
            Ok(compiled) => {
                policy = compiled;
                text = r.text;
            }
            Err(e) => {
                accepted.pop();
                rejected.push(Rejected {
                    name: p.name_any(),
                    error: describe(&e, &r.origins),
                });
            }
        }
    }
    Ok(Merged {
        text,
        policy,
        applied: accepted.iter().map(|p| p.name_any()).collect(),
        rejected,
    })
}

/// A rendered policy and, for the lines that came from an object's rules, their path in it.
struct Rendered {
    text: String,
    /// 1-based line → path in the object (`spec.firewall.rules[0].dport`), in line order.
    origins: Vec<(usize, String)>,
}

/// Puts each problem with the path of the object's field it came from.
fn describe(e: &config::ConfigError, origins: &[(usize, String)]) -> String {
    let mut out = String::new();
    for d in &e.errors {
        if !out.is_empty() {
            out.push('\n');
        }
        let path = (d.file == MERGED_NAME)
            .then(|| {
                origins
                    .iter()
                    .rev()
                    .find(|(line, _)| *line <= d.line)
                    .map(|(_, p)| p.as_str())
            })
            .flatten();
        match path {
            Some(p) => {
                let _ = write!(out, "{p}: {}", d.message);
            }
            None => out.push_str(&d.message),
        }
    }
    out
}

fn table_mut<'a>(t: &'a mut Table, key: &str) -> Result<&'a mut Table, String> {
    t.entry(key.to_owned())
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| format!("the base policy's `{key}` is not a table"))
}

fn extend_list(t: &mut Table, key: &str, add: &[String], what: &str) -> Result<(), String> {
    let list = t
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| format!("{what}.{key} is not a list"))?;
    for a in add {
        let v = Value::String(a.clone());
        if !list.contains(&v) {
            list.push(v);
        }
    }
    Ok(())
}

/// The merged TOML: the base table with defaults, sets and lists merged, then every rule,
/// the base's first, written out one key a line so errors point at a rule's key.
fn render(base: &Table, overlays: &[&PalisadePolicy]) -> Result<Rendered, String> {
    let mut t = base.clone();
    let base_rules = match table_mut(&mut t, "firewall")?.remove("rule") {
        None => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("the base policy's firewall.rule is not a list of tables".into()),
    };
    for p in overlays {
        let name = p.name_any();
        if let Some(d) = p.spec.firewall.as_ref().and_then(|f| f.default) {
            let word = match d {
                DefaultAction::Allow => "allow",
                DefaultAction::Drop => "drop",
            };
            table_mut(&mut t, "firewall")?.insert("default".into(), Value::String(word.into()));
        }
        for (set, spec) in &p.spec.sets {
            let sets = table_mut(&mut t, "sets")?;
            let s = table_mut(sets, set)?;
            extend_list(s, "entries", &spec.entries, &format!("[sets.{set}]"))
                .map_err(|e| format!("PalisadePolicy/{name}: {e}"))?;
        }
        for (list, spec) in p.spec.dns.iter().flat_map(|d| &d.lists) {
            let dns = table_mut(&mut t, "dns")?;
            let lists = table_mut(dns, "lists")?;
            let l = table_mut(lists, list)?;
            extend_list(l, "names", &spec.names, &format!("[dns.lists.{list}]"))
                .map_err(|e| format!("PalisadePolicy/{name}: {e}"))?;
            if let Some(s) = spec.subdomains {
                l.insert("subdomains".into(), Value::Boolean(s));
            }
        }
    }
    if t.get("firewall")
        .and_then(Value::as_table)
        .is_some_and(Table::is_empty)
    {
        t.remove("firewall");
        if !base_rules.is_empty() || overlays.iter().any(|p| p.spec.firewall.is_some()) {
            t.insert("firewall".into(), Value::Table(Table::new()));
        }
    }
    let mut text = toml::to_string(&t).map_err(|e| format!("writing the merged policy: {e}"))?;
    let mut origins = Vec::new();
    for rule in &base_rules {
        let Some(rule) = rule.as_table() else {
            return Err("the base policy's firewall.rule holds something else than tables".into());
        };
        text.push_str("\n[[firewall.rule]]\n");
        for (k, v) in rule {
            let _ = writeln!(text, "{} = {v}", Value::String(k.clone()));
        }
    }
    for p in overlays {
        let name = p.name_any();
        for (i, r) in p.spec.firewall.iter().flat_map(|f| &f.rules).enumerate() {
            let at = format!("PalisadePolicy/{name}: spec.firewall.rules[{i}]");
            text.push_str("\n[[firewall.rule]]\n");
            origins.push((line_count(&text), at.clone()));
            for (key, field, value) in rule_keys(&name, r) {
                text.push_str(&format!("{key} = {value}\n"));
                origins.push((line_count(&text), format!("{at}.{field}")));
            }
        }
    }
    Ok(Rendered { text, origins })
}

/// The 1-based number of the last complete line of `text`.
fn line_count(text: &str) -> usize {
    text.bytes().filter(|b| *b == b'\n').count()
}

fn addr_value(list: &[String]) -> Value {
    match list {
        [one] => Value::String(one.clone()),
        many => Value::Array(many.iter().cloned().map(Value::String).collect()),
    }
}

fn port_value(p: &IntOrString) -> Value {
    match p {
        IntOrString::Int(n) => Value::Integer(i64::from(*n)),
        IntOrString::String(s) => Value::String(s.clone()),
    }
}

/// A rule's keys as the policy file spells them: (file key, object field, value).
fn rule_keys(policy: &str, r: &RuleSpec) -> Vec<(&'static str, &'static str, Value)> {
    let mut out = vec![(
        "name",
        "name",
        Value::String(format!("{policy}.{}", r.name)),
    )];
    if let Some(p) = r.priority {
        out.push(("priority", "priority", Value::Integer(i64::from(p))));
    }
    let action = match r.action {
        RuleAction::Allow => "allow",
        RuleAction::Drop => "drop",
        RuleAction::RateLimit => "rate-limit",
        RuleAction::Mark => "mark",
        RuleAction::Mirror => "mirror",
        RuleAction::Redirect => "redirect",
        RuleAction::Steer => "steer",
    };
    out.push(("action", "action", Value::String(action.into())));
    if let Some(rate) = &r.rate {
        let mut t = Table::new();
        t.insert("pps".into(), Value::Integer(i64::from(rate.pps)));
        t.insert("burst".into(), Value::Integer(i64::from(rate.burst)));
        if let Some(per) = rate.per {
            let w = match per {
                RatePer::Source => "source",
                RatePer::Rule => "rule",
                RatePer::Country => "country",
            };
            t.insert("per".into(), Value::String(w.into()));
        }
        out.push(("rate", "rate", Value::Table(t)));
    }
    if let Some(m) = r.set_mark {
        out.push(("set_mark", "setMark", Value::Integer(i64::from(m))));
    }
    if let Some(d) = &r.set_dscp {
        out.push(("set_dscp", "setDscp", port_value(d)));
    }
    if let Some(i) = &r.mirror_to {
        out.push(("mirror_to", "mirrorTo", Value::String(i.clone())));
    }
    if let Some(i) = &r.redirect_to {
        out.push(("redirect_to", "redirectTo", Value::String(i.clone())));
    }
    if let Some(t) = r.route_table {
        out.push(("route_table", "routeTable", Value::Integer(i64::from(t))));
    }
    if !r.cpus.is_empty() {
        let cpus = r
            .cpus
            .iter()
            .map(|c| Value::Integer(i64::from(*c)))
            .collect();
        out.push(("cpus", "cpus", Value::Array(cpus)));
    }
    if let Some(q) = r.queue_size {
        out.push(("queue_size", "queueSize", Value::Integer(i64::from(q))));
    }
    if let Some(p) = &r.proto {
        out.push(("proto", "proto", Value::String(p.clone())));
    }
    if !r.src.is_empty() {
        out.push(("src", "src", addr_value(&r.src)));
    }
    if !r.dst.is_empty() {
        out.push(("dst", "dst", addr_value(&r.dst)));
    }
    if let Some(p) = &r.sport {
        out.push(("sport", "sport", port_value(p)));
    }
    if let Some(p) = &r.dport {
        out.push(("dport", "dport", port_value(p)));
    }
    if let Some(f) = &r.tcp_flags {
        out.push(("tcp_flags", "tcpFlags", Value::String(f.clone())));
    }
    if let Some(t) = r.icmp_type {
        out.push(("icmp_type", "icmpType", Value::Integer(i64::from(t))));
    }
    if let Some(c) = r.icmp_code {
        out.push(("icmp_code", "icmpCode", Value::Integer(i64::from(c))));
    }
    if !r.state.is_empty() {
        let words = r
            .state
            .iter()
            .map(|s| {
                let w = serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                Value::String(w)
            })
            .collect();
        out.push(("state", "state", Value::Array(words)));
    }
    if let Some(l) = r.log {
        out.push(("log", "log", Value::Boolean(l)));
    }
    out
}

/// Reads a policy object from YAML or JSON (an example file, a test fixture).
///
/// # Errors
/// With the path of the first field that does not fit the types.
pub fn parse_object(text: &str) -> Result<PalisadePolicy, String> {
    let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Compiles one object over `base` as if it selected the node: what `palisade crd check` and
/// the example tests use.
///
/// # Errors
/// With every problem, each with its path in the object.
pub fn check_object(base: &Base, p: &PalisadePolicy) -> Result<Merged, String> {
    let mut p = p.clone();
    p.spec.node_selector = None;
    let m = merge(base, &BTreeMap::new(), std::slice::from_ref(&p))?;
    match m.rejected.first() {
        Some(r) => Err(r.error.clone()),
        None => Ok(m),
    }
}
