//! Live changes: a copy of the running policy with one change applied, checked by the same
//! parser as the policy file, or a refusal that says what is wrong. The daemon then compiles
//! and installs the copy exactly like a reloaded file, so a change that would break the
//! policy is refused whole and nothing in the kernel moves.
//!
//! Rules and DNS entries added at run time carry line 0 (the model's "built in code"), which
//! is how listings tell them from the file's.

use std::{fmt::Write as _, path::Path};

use crate::{
    api::proto::RuleSpec,
    policy::{
        config::{self, ConfigError, MAX_RULES},
        model::{
            Action, AddrMatch, Family, NameEntry, NameMatch, Negation, Policy, Protocol, RatePer,
            Rule,
        },
        namelist::{format_name, parse_name},
        setfile::{format_cidr, parse_cidr},
    },
};

/// A change applied to a copy, or `None` when it changes nothing; with a message either way.
pub type Outcome = (Option<Policy>, String);

fn diagnostics(e: &ConfigError) -> String {
    e.errors
        .iter()
        .map(|d| d.message.clone())
        .collect::<Vec<_>>()
        .join("; ")
}

fn known(names: impl Iterator<Item = String>, what: &str) -> String {
    let v: Vec<String> = names.take(20).collect();
    if v.is_empty() {
        format!("there are no {what}")
    } else {
        format!("{what}: {}", v.join(", "))
    }
}

/// A TOML value for a command-line word: integers stay integers, the rest strings.
fn word(text: &str) -> toml::Value {
    match text.parse::<i64>() {
        Ok(n) if !text.starts_with('+') => toml::Value::Integer(n),
        _ => toml::Value::String(text.to_string()),
    }
}

/// The rule `spec` as the policy file's parser reads it, with the policy's sets known.
fn parse_rule(policy: &Policy, spec: &RuleSpec, priority: u32) -> Result<Rule, String> {
    use toml::{Table, Value};
    let mut rule = Table::new();
    rule.insert("name".into(), Value::String(spec.name.clone()));
    rule.insert("priority".into(), Value::Integer(i64::from(priority)));
    rule.insert("action".into(), Value::String(spec.action.clone()));
    if let Some(p) = &spec.proto {
        rule.insert("proto".into(), word(p));
    }
    for (key, list) in [("src", &spec.src), ("dst", &spec.dst)] {
        match list.len() {
            0 => {}
            1 => {
                rule.insert(key.into(), Value::String(list[0].clone()));
            }
            _ => {
                rule.insert(
                    key.into(),
                    Value::Array(list.iter().cloned().map(Value::String).collect()),
                );
            }
        }
    }
    for (key, v) in [("sport", &spec.sport), ("dport", &spec.dport)] {
        if let Some(v) = v {
            rule.insert(key.into(), word(v));
        }
    }
    if let Some(f) = &spec.tcp_flags {
        rule.insert("tcp_flags".into(), Value::String(f.clone()));
    }
    if let Some(t) = spec.icmp_type {
        rule.insert("icmp_type".into(), Value::Integer(i64::from(t)));
    }
    if let Some(c) = spec.icmp_code {
        rule.insert("icmp_code".into(), Value::Integer(i64::from(c)));
    }
    if spec.log {
        rule.insert("log".into(), Value::Boolean(true));
    }
    // Header and link conditions: numbers as integers, names and ranges as strings, as a
    // policy file writes them.
    for (key, v) in [
        ("dscp", &spec.dscp),
        ("ecn", &spec.ecn),
        ("ttl", &spec.ttl),
        ("length", &spec.length),
        ("vlan", &spec.vlan),
    ] {
        if let Some(v) = v {
            rule.insert(key.into(), word(v));
        }
    }
    for (key, v) in [
        ("src_mac", &spec.src_mac),
        ("dst_mac", &spec.dst_mac),
        ("iface", &spec.iface),
    ] {
        if let Some(v) = v {
            rule.insert(key.into(), Value::String(v.clone()));
        }
    }
    if let Some(m) = &spec.set_mark {
        // `0x2a` as TOML writes it: an integer.
        let hex = m
            .strip_prefix("0x")
            .or_else(|| m.strip_prefix("0X"))
            .and_then(|h| i64::from_str_radix(h, 16).ok());
        rule.insert(
            "set_mark".into(),
            hex.map_or_else(|| word(m), Value::Integer),
        );
    }
    if let Some(d) = &spec.set_dscp {
        rule.insert("set_dscp".into(), word(d));
    }
    if let Some(i) = &spec.mirror_to {
        rule.insert("mirror_to".into(), Value::String(i.clone()));
    }
    if let Some(i) = &spec.redirect_to {
        rule.insert("redirect_to".into(), Value::String(i.clone()));
    }
    if let Some(t) = spec.route_table {
        rule.insert("route_table".into(), Value::Integer(i64::from(t)));
    }
    if !spec.cpus.is_empty() {
        rule.insert(
            "cpus".into(),
            Value::Array(
                spec.cpus
                    .iter()
                    .map(|c| Value::Integer(i64::from(*c)))
                    .collect(),
            ),
        );
    }
    if let Some(q) = spec.queue_size {
        rule.insert("queue_size".into(), Value::Integer(i64::from(q)));
    }
    if !spec.not.is_empty() {
        rule.insert(
            "not".into(),
            Value::Array(spec.not.iter().cloned().map(Value::String).collect()),
        );
    }
    if spec.rate_pps.is_some() || spec.rate_burst.is_some() || spec.rate_per.is_some() {
        let mut rate = Table::new();
        if let Some(p) = spec.rate_pps {
            rate.insert("pps".into(), Value::Integer(i64::from(p)));
        }
        if let Some(b) = spec.rate_burst {
            rate.insert("burst".into(), Value::Integer(i64::from(b)));
        }
        if let Some(p) = &spec.rate_per {
            rate.insert("per".into(), Value::String(p.clone()));
        }
        rule.insert("rate".into(), Value::Table(rate));
    }
    // The sets, each with one member per family it holds: enough for the parser to resolve
    // `@name` and to check address families, without copying large sets.
    let mut sets = Table::new();
    for s in &policy.sets {
        let mut sample: Vec<Value> = Vec::new();
        for fam in [Family::V4, Family::V6] {
            if let Some(c) = s.entries.iter().find(|c| c.family == fam) {
                sample.push(Value::String(format_cidr(c)));
            }
        }
        let mut t = Table::new();
        t.insert("entries".into(), Value::Array(sample));
        sets.insert(s.name.clone(), Value::Table(t));
    }
    let mut firewall = Table::new();
    firewall.insert("rule".into(), Value::Array(vec![Value::Table(rule)]));
    let mut doc = Table::new();
    doc.insert("sets".into(), Value::Table(sets));
    doc.insert("firewall".into(), Value::Table(firewall));
    let text = toml::to_string(&doc).map_err(|e| format!("cannot encode the rule: {e}"))?;
    let parsed =
        config::parse_policy(&text, "rule", Path::new("/")).map_err(|e| diagnostics(&e))?;
    let mut rule = parsed
        .firewall
        .rules
        .into_iter()
        .next()
        .ok_or("the rule did not parse")?;
    let remap = |m: &mut AddrMatch| {
        if let AddrMatch::Set(i) = m {
            let name = &parsed.sets[*i].name;
            *i = policy
                .sets
                .iter()
                .position(|s| &s.name == name)
                .unwrap_or(*i);
        }
    };
    remap(&mut rule.src);
    remap(&mut rule.dst);
    rule.line = 0;
    Ok(rule)
}

/// Adds a rule. Without a priority it runs after every existing rule.
///
/// # Errors
/// When the rule is invalid, its name is taken, or the policy is full.
pub fn add_rule(policy: &Policy, spec: &RuleSpec) -> Result<Outcome, String> {
    if spec.name.is_empty() {
        return Err(
            "a rule added at run time needs a name (--name), so it can be listed and deleted"
                .into(),
        );
    }
    if let Some(r) = policy
        .firewall
        .rules
        .iter()
        .find(|r| r.name.as_deref() == Some(spec.name.as_str()))
    {
        return Err(format!(
            "a rule named `{}` already exists (priority {}); delete it first or pick another name",
            spec.name, r.priority
        ));
    }
    if policy.firewall.rules.len() >= MAX_RULES {
        return Err(format!(
            "the policy already holds the most rules allowed ({MAX_RULES})"
        ));
    }
    let priority = spec.priority.unwrap_or_else(|| {
        policy
            .firewall
            .rules
            .last()
            .map_or(config::IMPLICIT_PRIORITY_BASE, |r| {
                r.priority
                    .saturating_add(1)
                    .max(config::IMPLICIT_PRIORITY_BASE)
            })
    });
    let rule =
        parse_rule(policy, spec, priority).map_err(|e| format!("rule `{}`: {e}", spec.name))?;
    let mut next = policy.clone();
    let at = next
        .firewall
        .rules
        .iter()
        .position(|r| r.priority > rule.priority)
        .unwrap_or(next.firewall.rules.len());
    next.firewall.rules.insert(at, rule);
    Ok((
        Some(next),
        format!(
            "added rule `{}` at position {at} (priority {priority})",
            spec.name
        ),
    ))
}

/// Deletes the rule called `name`.
///
/// # Errors
/// When there is no such rule.
pub fn delete_rule(policy: &Policy, name: &str) -> Result<Outcome, String> {
    let Some(at) = policy
        .firewall
        .rules
        .iter()
        .position(|r| r.name.as_deref() == Some(name))
    else {
        return Err(format!(
            "no rule named `{name}`; {}",
            known(
                policy.firewall.rules.iter().filter_map(|r| r.name.clone()),
                "named rules"
            )
        ));
    };
    let mut next = policy.clone();
    next.firewall.rules.remove(at);
    Ok((Some(next), format!("deleted rule `{name}`")))
}

fn set_index(policy: &Policy, set: &str) -> Result<usize, String> {
    let set = set.strip_prefix('@').unwrap_or(set);
    policy
        .sets
        .iter()
        .position(|s| s.name == set)
        .ok_or_else(|| {
            format!(
                "no set named `{set}`; {}",
                known(policy.sets.iter().map(|s| s.name.clone()), "sets")
            )
        })
}

fn parse_members(members: &[String]) -> Result<Vec<crate::policy::model::Cidr>, String> {
    if members.is_empty() {
        return Err("no addresses given".into());
    }
    let mut bad = Vec::new();
    let mut ok = Vec::new();
    for m in members {
        match parse_cidr(m) {
            Ok(c) => ok.push(c),
            Err(e) => bad.push(e.to_string()),
        }
    }
    if bad.is_empty() {
        Ok(ok)
    } else {
        Err(format!("{}; nothing changed", bad.join("; ")))
    }
}

/// Adds members to a set; members already in it are skipped.
///
/// # Errors
/// When the set does not exist or a member is not an address or CIDR block.
pub fn add_members(policy: &Policy, set: &str, members: &[String]) -> Result<Outcome, String> {
    let i = set_index(policy, set)?;
    let cidrs = parse_members(members)?;
    let mut next = policy.clone();
    let entries = &mut next.sets[i].entries;
    let (mut added, mut present) = (0, 0);
    for c in cidrs {
        if entries.contains(&c) {
            present += 1;
        } else {
            entries.push(c);
            added += 1;
        }
    }
    let name = &policy.sets[i].name;
    let msg = format!(
        "added {added} member(s) to set `{name}`{}",
        if present > 0 {
            format!(" ({present} already present)")
        } else {
            String::new()
        }
    );
    Ok((if added > 0 { Some(next) } else { None }, msg))
}

/// Removes members from a set; every one must be in it.
///
/// # Errors
/// When the set does not exist, a member is malformed, or a member is not in the set.
pub fn delete_members(policy: &Policy, set: &str, members: &[String]) -> Result<Outcome, String> {
    let i = set_index(policy, set)?;
    let cidrs = parse_members(members)?;
    let name = &policy.sets[i].name;
    let missing: Vec<String> = cidrs
        .iter()
        .filter(|c| !policy.sets[i].entries.contains(c))
        .map(format_cidr)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "not in set `{name}`: {}; nothing changed",
            missing.join(", ")
        ));
    }
    let mut next = policy.clone();
    next.sets[i].entries.retain(|c| !cidrs.contains(c));
    Ok((
        Some(next),
        format!("removed {} member(s) from set `{name}`", cidrs.len()),
    ))
}

fn list_index(policy: &Policy, list: &str) -> Result<usize, String> {
    policy
        .dns
        .lists
        .iter()
        .position(|l| l.name == list)
        .ok_or_else(|| {
            format!(
                "no DNS list named `{list}`; {}",
                known(policy.dns.lists.iter().map(|l| l.name.clone()), "lists")
            )
        })
}

/// Adds names to a DNS list, optionally only for `ttl` seconds from `now` (unix time). A
/// name already in the list with the same match kind is replaced (so a TTL can be renewed).
///
/// # Errors
/// When the list does not exist or a name, query type or TTL is invalid.
pub fn add_dns(
    policy: &Policy,
    list: &str,
    names: &[String],
    ttl: Option<u64>,
    qtypes: &[String],
    subdomains: bool,
    now: u64,
) -> Result<Outcome, String> {
    use toml::{Table, Value};
    let li = list_index(policy, list)?;
    if names.is_empty() {
        return Err("no names given".into());
    }
    if ttl == Some(0) {
        return Err("--ttl must be at least 1 second".into());
    }
    let expires = ttl.map(|t| now.saturating_add(t));
    let mut entries = Vec::new();
    for n in names {
        let mut e = Table::new();
        e.insert("name".into(), Value::String(n.clone()));
        if !qtypes.is_empty() {
            e.insert(
                "qtypes".into(),
                Value::Array(qtypes.iter().map(|q| word(q)).collect()),
            );
        }
        if let Some(x) = expires {
            e.insert(
                "expires".into(),
                Value::Integer(i64::try_from(x).unwrap_or(i64::MAX)),
            );
        }
        entries.push(Value::Table(e));
    }
    let mut l = Table::new();
    l.insert("subdomains".into(), Value::Boolean(subdomains));
    l.insert("entry".into(), Value::Array(entries));
    let mut lists = Table::new();
    lists.insert(list.to_string(), Value::Table(l));
    let mut dns = Table::new();
    dns.insert("lists".into(), Value::Table(lists));
    let mut doc = Table::new();
    doc.insert("dns".into(), Value::Table(dns));
    let text = toml::to_string(&doc).map_err(|e| format!("cannot encode the names: {e}"))?;
    let parsed = config::parse_policy(&text, "dns", Path::new("/")).map_err(|e| diagnostics(&e))?;
    let new_entries: Vec<NameEntry> = parsed
        .dns
        .lists
        .into_iter()
        .next()
        .map(|l| l.entries)
        .unwrap_or_default()
        .into_iter()
        .map(|mut e| {
            e.line = 0;
            e
        })
        .collect();
    let mut next = policy.clone();
    let target = &mut next.dns.lists[li].entries;
    let mut replaced = 0;
    for e in &new_entries {
        let before = target.len();
        target.retain(|x| !(x.labels == e.labels && x.kind == e.kind));
        replaced += before - target.len();
        target.push(e.clone());
    }
    let mut msg = format!("added {} name(s) to DNS list `{list}`", new_entries.len());
    if let Some(t) = ttl {
        let _ = write!(msg, " for {t} s");
    }
    if replaced > 0 {
        let _ = write!(msg, " (replacing {replaced} existing)");
    }
    Ok((Some(next), msg))
}

/// Removes names from a DNS list; every one must be in it. `*.example.com` removes the
/// entry for the names below; `example.com` the exact (or apex-and-below) entry.
///
/// # Errors
/// When the list does not exist, a name is malformed, or a name is not in the list.
pub fn delete_dns(policy: &Policy, list: &str, names: &[String]) -> Result<Outcome, String> {
    let li = list_index(policy, list)?;
    if names.is_empty() {
        return Err("no names given".into());
    }
    let mut wanted = Vec::new();
    let mut bad = Vec::new();
    for n in names {
        match parse_name(n) {
            Ok(p) => wanted.push((n, p)),
            Err(e) => bad.push(e.to_string()),
        }
    }
    if !bad.is_empty() {
        return Err(format!("{}; nothing changed", bad.join("; ")));
    }
    let hit = |e: &NameEntry, labels: &Vec<Vec<u8>>, wildcard: bool| {
        &e.labels == labels && (e.kind == NameMatch::Subdomains) == wildcard
    };
    let entries = &policy.dns.lists[li].entries;
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(_, (labels, w))| !entries.iter().any(|e| hit(e, labels, *w)))
        .map(|(n, _)| n.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "not in DNS list `{list}`: {}; nothing changed",
            missing.join(", ")
        ));
    }
    let mut next = policy.clone();
    let before = next.dns.lists[li].entries.len();
    next.dns.lists[li]
        .entries
        .retain(|e| !wanted.iter().any(|(_, (labels, w))| hit(e, labels, *w)));
    let removed = before - next.dns.lists[li].entries.len();
    Ok((
        Some(next),
        format!(
            "removed {removed} entr{} from DNS list `{list}`",
            if removed == 1 { "y" } else { "ies" }
        ),
    ))
}

/// Drops run-time DNS entries whose TTL ran out (the kernel already ignores them).
pub fn prune_expired(policy: &mut Policy, now: u64) -> usize {
    let mut n = 0;
    for l in &mut policy.dns.lists {
        let before = l.entries.len();
        l.entries
            .retain(|e| !(e.line == 0 && e.expires.is_some_and(|x| x <= now)));
        n += before - l.entries.len();
    }
    n
}

const TCP_FLAG_NAMES: [&str; 8] = ["fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"];

fn flag_list(bits: u8) -> String {
    TCP_FLAG_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// The action word of a rule.
#[must_use]
pub fn action_word(a: &Action) -> String {
    match a {
        Action::Allow => "allow".into(),
        Action::Drop => "drop".into(),
        Action::RateLimit(r) => format!(
            "rate-limit {}/s burst {} per {}",
            r.pps,
            r.burst,
            match r.per {
                RatePer::Source => "source",
                RatePer::Rule => "rule",
                RatePer::Country => "country",
            }
        ),
        Action::Mark(m) => {
            let mut w = String::from("mark");
            if let Some(mark) = m.mark {
                w.push_str(&format!(" set_mark {mark:#x}"));
            }
            if let Some(dscp) = m.dscp {
                w.push_str(&format!(" set_dscp {dscp}"));
            }
            w
        }
        Action::Mirror(m) => format!("mirror to {}", m.iface()),
        Action::Redirect(r) => format!("redirect {}", r.describe()),
        Action::Steer(s) => format!("steer to cpus {:?}", s.cpus()),
    }
}

/// A rule's conditions as text, in the words of `palisade rule add`.
#[must_use]
pub fn describe(rule: &Rule, policy: &Policy) -> String {
    let mut parts: Vec<String> = Vec::new();
    match rule.protocol {
        None => {}
        Some(Protocol::Tcp) => parts.push("tcp".into()),
        Some(Protocol::Udp) => parts.push("udp".into()),
        Some(Protocol::Icmp) => parts.push("icmp".into()),
        Some(Protocol::Icmpv6) => parts.push("icmpv6".into()),
        Some(Protocol::Other(n)) => parts.push(format!("proto {n}")),
    }
    for (word, m) in [("src", &rule.src), ("dst", &rule.dst)] {
        match m {
            AddrMatch::Any => {}
            AddrMatch::Cidrs(c) => {
                parts.push(format!(
                    "{word} {}",
                    c.iter().map(format_cidr).collect::<Vec<_>>().join(",")
                ));
            }
            AddrMatch::Set(i) => {
                parts.push(format!(
                    "{word} @{}",
                    policy.sets.get(*i).map_or("?", |s| s.name.as_str())
                ));
            }
        }
    }
    for (word, r) in [("sport", rule.src_ports), ("dport", rule.dst_ports)] {
        if let Some(r) = r {
            parts.push(if r.lo == r.hi {
                format!("{word} {}", r.lo)
            } else {
                format!("{word} {}-{}", r.lo, r.hi)
            });
        }
    }
    if let Some(f) = rule.tcp_flags {
        parts.push(format!(
            "tcp-flags {}/{}",
            flag_list(f.value),
            flag_list(f.mask)
        ));
    }
    if let Some(i) = rule.icmp {
        match i.code {
            Some(c) => parts.push(format!("icmp-type {} code {c}", i.icmp_type)),
            None => parts.push(format!("icmp-type {}", i.icmp_type)),
        }
    }
    let range = |(lo, hi): (u16, u16)| {
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        }
    };
    if let Some(d) = rule.ip.dscp {
        parts.push(format!("dscp {d}"));
    }
    if let Some(e) = rule.ip.ecn {
        parts.push(format!("ecn {e}"));
    }
    if let Some((lo, hi)) = rule.ip.ttl {
        parts.push(format!("ttl {}", range((lo.into(), hi.into()))));
    }
    if let Some(l) = rule.ip.length {
        parts.push(format!("length {}", range(l)));
    }
    if let Some(m) = rule.link.src_mac {
        parts.push(format!("src-mac {}", crate::policy::model::show_mac(&m)));
    }
    if let Some(m) = rule.link.dst_mac {
        parts.push(format!("dst-mac {}", crate::policy::model::show_mac(&m)));
    }
    match rule.link.vlan {
        None => {}
        Some(palisade_common::firewall::VLAN_UNTAGGED) => parts.push("vlan untagged".into()),
        Some(v) => parts.push(format!("vlan {v}")),
    }
    let ifaces: Vec<String> = rule
        .link
        .ifaces()
        .into_iter()
        .map(crate::attach::ifname)
        .collect();
    if !ifaces.is_empty() {
        parts.push(format!("iface {}", ifaces.join(",")));
    }
    let n = rule.not;
    let negated: Vec<&str> = Negation::NAMES
        .into_iter()
        .zip([n.src, n.dst, n.sport, n.dport, n.proto])
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
    if !negated.is_empty() {
        parts.push(format!("not {}", negated.join(",")));
    }
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(" ")
    }
}

/// A DNS entry as written in a list.
#[must_use]
pub fn entry_text(e: &NameEntry) -> (String, &'static str) {
    let name = format_name(&e.labels);
    match e.kind {
        NameMatch::Exact => (name, "exact"),
        NameMatch::Subdomains => (format!("*.{name}"), "subdomains"),
        NameMatch::ApexAndSubdomains => (name, "apex-and-subdomains"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[sets.bad]
entries = ["203.0.113.0/24"]

[sets.v6only]
entries = ["2001:db8::/32"]

[[firewall.rule]]
name = "first"
priority = 10
action = "allow"
proto = "tcp"
dport = 22

[[firewall.rule]]
name = "late"
action = "drop"
src = "@bad"

[dns.ingress]
mode = "blocklist"
lists = ["ads"]

[dns.lists.ads]
names = ["ads.example.com"]
"#;

    fn policy() -> Policy {
        config::parse_policy(POLICY, "p.toml", Path::new("/")).unwrap()
    }

    fn spec(name: &str, action: &str) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            action: action.into(),
            ..RuleSpec::default()
        }
    }

    #[test]
    fn added_rules_go_by_priority_and_are_parsed_like_the_file() {
        let p = policy();
        let mut s = spec("block-dns", "drop");
        s.proto = Some("udp".into());
        s.dport = Some("53".into());
        s.src = vec!["@bad".into()];
        let (next, msg) = add_rule(&p, &s).unwrap();
        let next = next.unwrap();
        let last = next.firewall.rules.last().unwrap();
        assert_eq!(last.name.as_deref(), Some("block-dns"));
        assert_eq!(last.src, AddrMatch::Set(0));
        assert_eq!(last.line, 0);
        assert!(last.priority > next.firewall.rules[1].priority, "{msg}");
        assert_eq!(describe(last, &next), "udp src @bad dport 53");

        // Header and link conditions go through the file's parser too.
        let mut h = spec("marked", "drop");
        h.dscp = Some("ef".into());
        h.ecn = Some("3".into());
        h.ttl = Some("0-9".into());
        h.length = Some("1500".into());
        h.src_mac = Some("02:00:5E:10:00:01".into());
        h.dst_mac = Some("02-00-5e-10-00-02".into());
        h.vlan = Some("untagged".into());
        h.iface = Some("lo".into());
        let next = add_rule(&p, &h).unwrap().0.unwrap();
        let last = next.firewall.rules.last().unwrap();
        assert_eq!(
            describe(last, &next),
            "dscp 46 ecn 3 ttl 0-9 length 1500 src-mac 02:00:5e:10:00:01 \
             dst-mac 02:00:5e:10:00:02 vlan untagged iface lo"
        );
        let mut n = spec("not-office", "drop");
        n.proto = Some("tcp".into());
        n.dport = Some("22".into());
        n.src = vec!["10.0.0.0/8".into()];
        n.not = vec!["src".into(), "dport".into()];
        let next = add_rule(&p, &n).unwrap().0.unwrap();
        assert_eq!(
            describe(next.firewall.rules.last().unwrap(), &next),
            "tcp src 10.0.0.0/8 dport 22 not src,dport"
        );
        n.not = vec!["dst".into()];
        let e = add_rule(&p, &n).unwrap_err();
        assert!(
            e.contains("`not` negates `dst`, but the rule has no `dst` condition"),
            "{e}"
        );
        h.vlan = Some("100".into());
        let next = add_rule(&p, &h).unwrap().0.unwrap();
        assert_eq!(next.firewall.rules.last().unwrap().link.vlan, Some(100));
        for (field, value, message) in [
            (
                "vlan",
                "4096",
                "`vlan` must be between 0 and 4095, found 4096",
            ),
            (
                "src_mac",
                "02:00:5e",
                "invalid MAC address `02:00:5e` in `src_mac`",
            ),
            (
                "iface",
                "m19nosuch",
                "no interface named `m19nosuch` on this host",
            ),
            ("ttl", "9-0", "TTL range 9-0 is reversed"),
        ] {
            let mut bad = spec("bad", "drop");
            let v = Some(value.to_owned());
            match field {
                "vlan" => bad.vlan = v,
                "src_mac" => bad.src_mac = v,
                "iface" => bad.iface = v,
                _ => bad.ttl = v,
            }
            let e = add_rule(&p, &bad).unwrap_err();
            assert!(e.contains(message), "{field}: {e}");
        }

        let mut early = spec("early", "allow");
        early.priority = Some(5);
        let next = add_rule(&p, &early).unwrap().0.unwrap();
        assert_eq!(next.firewall.rules[0].name.as_deref(), Some("early"));
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let p = policy();
        let mut s = spec("x", "drop");
        s.dport = Some("22".into());
        let e = add_rule(&p, &s).unwrap_err();
        assert!(e.contains("`dport` needs proto"), "{e}");
        let e = add_rule(&p, &spec("first", "drop")).unwrap_err();
        assert!(e.contains("already exists"), "{e}");
        let e = add_rule(&p, &spec("", "drop")).unwrap_err();
        assert!(e.contains("needs a name"), "{e}");
        let mut s = spec("y", "drop");
        s.src = vec!["@nope".into()];
        assert!(
            add_rule(&p, &s)
                .unwrap_err()
                .contains("unknown set `@nope`")
        );
        let mut s = spec("z", "drop");
        s.src = vec!["@bad".into()];
        s.dst = vec!["@v6only".into()];
        let e = add_rule(&p, &s).unwrap_err();
        assert!(e.contains("never match"), "{e}");
        assert!(
            add_rule(&p, &spec("w", "explode"))
                .unwrap_err()
                .contains("explode")
        );
        let mut s = spec("bad name!", "drop");
        s.proto = Some("tcp".into());
        assert!(add_rule(&p, &s).unwrap_err().contains("invalid rule name"));
    }

    #[test]
    fn deleting_rules() {
        let p = policy();
        let next = delete_rule(&p, "late").unwrap().0.unwrap();
        assert_eq!(next.firewall.rules.len(), 1);
        let e = delete_rule(&p, "nope").unwrap_err();
        assert!(e.contains("first, late"), "{e}");
    }

    #[test]
    fn set_members_are_checked_and_refused_whole() {
        let p = policy();
        let (next, msg) =
            add_members(&p, "bad", &["198.51.100.7".into(), "203.0.113.0/24".into()]).unwrap();
        assert_eq!(next.unwrap().sets[0].entries.len(), 2);
        assert!(msg.contains("1 already present"), "{msg}");
        let e = add_members(&p, "bad", &["10.0.0.1/8".into(), "1.2.3.4".into()]).unwrap_err();
        assert!(
            e.contains("did you mean 10.0.0.0/8") && e.contains("nothing changed"),
            "{e}"
        );
        assert!(
            add_members(&p, "nope", &["1.2.3.4".into()])
                .unwrap_err()
                .contains("sets: bad, v6only")
        );
        let e =
            delete_members(&p, "@bad", &["203.0.113.0/24".into(), "1.2.3.4".into()]).unwrap_err();
        assert!(e.contains("1.2.3.4/32"), "{e}");
        let next = delete_members(&p, "bad", &["203.0.113.0/24".into()])
            .unwrap()
            .0
            .unwrap();
        assert!(next.sets[0].entries.is_empty());
        assert!(
            add_members(&p, "bad", &["203.0.113.0/24".into()])
                .unwrap()
                .0
                .is_none()
        );
    }

    #[test]
    fn dns_entries_with_ttl_and_removal() {
        let p = policy();
        let (next, _) = add_dns(
            &p,
            "ads",
            &["Tracker.Example".into(), "*.cdn.example".into()],
            Some(60),
            &["A".into(), "28".into()],
            false,
            1000,
        )
        .unwrap();
        let mut next = next.unwrap();
        let e = &next.dns.lists[0].entries;
        assert_eq!(e.len(), 3);
        assert_eq!(e[1].labels, vec![b"tracker".to_vec(), b"example".to_vec()]);
        assert_eq!(
            (e[1].expires, e[1].qtypes.clone(), e[1].line),
            (Some(1060), vec![1, 28], 0)
        );
        assert_eq!(e[2].kind, NameMatch::Subdomains);
        assert_eq!(entry_text(&e[2]).0, "*.cdn.example");
        assert!(
            add_dns(&p, "ads", &["bad name".into()], None, &[], false, 0)
                .unwrap_err()
                .contains("whitespace")
        );
        assert!(
            add_dns(
                &p,
                "ads",
                &["a.example".into()],
                None,
                &["BOGUS".into()],
                false,
                0
            )
            .is_err()
        );
        assert!(
            add_dns(&p, "nope", &["a.example".into()], None, &[], false, 0)
                .unwrap_err()
                .contains("lists: ads")
        );
        assert_eq!(prune_expired(&mut next.clone(), 1059), 0);
        assert_eq!(prune_expired(&mut next, 1060), 2);
        let p2 = delete_dns(&p, "ads", &["ads.example.com".into()])
            .unwrap()
            .0
            .unwrap();
        assert!(p2.dns.lists[0].entries.is_empty());
        assert!(
            delete_dns(&p, "ads", &["*.ads.example.com".into()])
                .unwrap_err()
                .contains("not in DNS list")
        );
    }

    #[test]
    fn added_rules_take_every_action_with_its_keys() {
        use crate::policy::model::{Mark, Redirect};
        let p = policy();
        let mut m = spec("voip", "mark");
        m.proto = Some("udp".into());
        m.dport = Some("5060".into());
        m.set_mark = Some("0x2a".into());
        m.set_dscp = Some("ef".into());
        let next = add_rule(&p, &m).unwrap().0.unwrap();
        let last = next.firewall.rules.last().unwrap();
        assert_eq!(
            last.action,
            Action::Mark(Mark {
                mark: Some(0x2a),
                dscp: Some(46)
            })
        );
        m.set_mark = Some("42".into());
        m.set_dscp = None;
        let next = add_rule(&p, &m).unwrap().0.unwrap();
        assert_eq!(
            next.firewall.rules.last().unwrap().action,
            Action::Mark(Mark {
                mark: Some(42),
                dscp: None
            })
        );
        let mut t = spec("tap", "mirror");
        t.mirror_to = Some("lo".into());
        let next = add_rule(&p, &t).unwrap().0.unwrap();
        match next.firewall.rules.last().unwrap().action {
            Action::Mirror(x) => assert_eq!((x.ifindex, x.iface()), (1, "lo")),
            other => panic!("{other:?}"),
        }
        let mut out = spec("out", "redirect");
        out.redirect_to = Some("lo".into());
        let next = add_rule(&p, &out).unwrap().0.unwrap();
        match next.firewall.rules.last().unwrap().action {
            Action::Redirect(Redirect::Iface(x)) => assert_eq!((x.ifindex, x.iface()), (1, "lo")),
            other => panic!("{other:?}"),
        }
        let mut via = spec("via", "redirect");
        via.route_table = Some(100);
        let next = add_rule(&p, &via).unwrap().0.unwrap();
        let last = next.firewall.rules.last().unwrap();
        assert_eq!(last.action, Action::Redirect(Redirect::Table(100)));
        assert_eq!(action_word(&last.action), "redirect via table 100");
        let mut st = spec("spread", "steer");
        st.cpus = vec![0];
        st.queue_size = Some(4096);
        let next = add_rule(&p, &st).unwrap().0.unwrap();
        match next.firewall.rules.last().unwrap().action {
            Action::Steer(s) => assert_eq!((s.cpus(), s.queue_size), (&[0u8][..], 4096)),
            other => panic!("{other:?}"),
        }
        // Each error names the key, in the file parser's words.
        let mut bare = spec("bare", "mark");
        bare.proto = Some("udp".into());
        let mut on_drop = spec("on-drop", "drop");
        on_drop.set_mark = Some("1".into());
        let mut dscp = spec("dscp", "mark");
        dscp.set_dscp = Some("64".into());
        let mut gone = spec("gone", "mirror");
        gone.mirror_to = Some("m19nosuch0".into());
        let mut copy_on_allow = spec("copy", "allow");
        copy_on_allow.mirror_to = Some("lo".into());
        let mut both = spec("both", "redirect");
        both.redirect_to = Some("lo".into());
        both.route_table = Some(100);
        let mut no_table = spec("table0", "redirect");
        no_table.route_table = Some(0);
        let mut nowhere_dev = spec("gone-out", "redirect");
        nowhere_dev.redirect_to = Some("m19nosuch0".into());
        let mut table_on_drop = spec("tdrop", "drop");
        table_on_drop.route_table = Some(100);
        let mut far_cpu = spec("far", "steer");
        far_cpu.cpus = vec![64];
        let mut twice = spec("twice", "steer");
        twice.cpus = vec![0, 0];
        let mut deep = spec("deep", "steer");
        deep.cpus = vec![0];
        deep.queue_size = Some(16385);
        let mut cpus_on_allow = spec("cpus-allow", "allow");
        cpus_on_allow.cpus = vec![0];
        for (s, want) in [
            (&bare, "action `mark` needs `set_mark`"),
            (
                &on_drop,
                "`set_mark` is only allowed with action = \"mark\"",
            ),
            (&dscp, "`set_dscp` must be between 0 and 63, found 64"),
            (&spec("nowhere", "mirror"), "`mirror_to`"),
            (&gone, "m19nosuch0"),
            (&copy_on_allow, "`mirror_to`"),
            (
                &spec("astray", "redirect"),
                "action `redirect` needs `redirect_to`",
            ),
            (&both, "`route_table` and `redirect_to` exclude each other"),
            (&no_table, "`route_table`"),
            (
                &nowhere_dev,
                "`redirect_to`: there is no network interface named `m19nosuch0`",
            ),
            (
                &table_on_drop,
                "`route_table` is only allowed with action = \"redirect\"",
            ),
            (&spec("nocpus", "steer"), "action `steer` needs `cpus`"),
            (&far_cpu, "`cpus`"),
            (&twice, "CPU 0 is named twice in `cpus`"),
            (&deep, "`queue_size`"),
            (
                &cpus_on_allow,
                "`cpus` is only allowed with action = \"steer\"",
            ),
        ] {
            let e = add_rule(&p, s).unwrap_err();
            assert!(e.starts_with(&format!("rule `{}`: ", s.name)), "{e}");
            assert!(e.contains(want), "{}: {e}", s.name);
        }
    }
}
