//! From observations to a proposed policy: connections grouped by what the policy language
//! can allow (an inbound service, a DNS name, an address), with their evidence; rare groups
//! held for review, and whatever a never-allow policy denies withheld.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use palisade_common::packet::{self, Frame};
use serde::Serialize;

use super::observe::{Connection, DNS_PORT, Direction, Observations, names_by_addr};
use crate::{
    craft::DnsQuery,
    dns::reference as dns_reference,
    firewall::reference::{self, Verdict},
    policy::model::Policy,
    replay::capture::Record,
};

/// Siblings (names directly below one parent) needed before a wildcard is written.
pub const WILDCARD_SIBLINGS: usize = 3;
/// Distinct sources of an inbound service below which the rule names them.
pub const LISTED_SOURCES: usize = 3;
/// The DNS list the proposal writes its names into.
pub const LIST: &str = "learned";

/// What learning may and may not do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connections a group needs to be allowed; rarer ones are held for review.
    pub min_flows: u64,
    /// cgroup v2 directories for `[dns.egress]` and `[dns.bind]`.
    pub cgroups: Vec<String>,
    /// Where the traffic came from (capture files, or "live"), for the header.
    pub sources: Vec<String>,
}

/// Counts and times behind one entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub flows: u64,
    pub packets: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// `proto/port` of the connections.
    pub services: BTreeSet<String>,
    /// Peers: sources of an inbound service, addresses of a name.
    pub peers: BTreeSet<String>,
    pub processes: BTreeSet<String>,
    pub cgroups: BTreeSet<String>,
    /// For a wildcard: the names seen below it.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub names: BTreeSet<String>,
}

impl Evidence {
    fn add(&mut self, c: &Connection) {
        if self.flows == 0 {
            self.first_ns = c.first_ns;
            self.last_ns = c.last_ns;
        }
        self.flows += 1;
        self.packets += c.packets;
        self.first_ns = self.first_ns.min(c.first_ns);
        self.last_ns = self.last_ns.max(c.last_ns);
        self.services
            .insert(format!("{}/{}", proto_name(c.proto), c.service_port()));
        if let Some(p) = &c.process {
            self.processes.insert(p.clone());
        }
        if let Some(g) = &c.cgroup {
            self.cgroups.insert(g.clone());
        }
    }

    fn merge(&mut self, o: &Self) {
        if self.flows == 0 {
            self.first_ns = o.first_ns;
            self.last_ns = o.last_ns;
        } else if o.flows > 0 {
            self.first_ns = self.first_ns.min(o.first_ns);
            self.last_ns = self.last_ns.max(o.last_ns);
        }
        self.flows += o.flows;
        self.packets += o.packets;
        for (a, b) in [
            (&mut self.services, &o.services),
            (&mut self.peers, &o.peers),
            (&mut self.processes, &o.processes),
            (&mut self.cgroups, &o.cgroups),
            (&mut self.names, &o.names),
        ] {
            a.extend(b.iter().cloned());
        }
    }

    /// The evidence as one comment line (without the leading `# `).
    #[must_use]
    pub fn comment(&self) -> String {
        let mut s = format!(
            "{} flow{}, {} packet{}, first {}, last {}",
            self.flows,
            if self.flows == 1 { "" } else { "s" },
            self.packets,
            if self.packets == 1 { "" } else { "s" },
            utc(self.first_ns),
            utc(self.last_ns)
        );
        let list = |s: &mut String, what: &str, set: &BTreeSet<String>| {
            if !set.is_empty() {
                let v: Vec<&str> = set.iter().map(String::as_str).take(8).collect();
                let more = if set.len() > 8 { ", ..." } else { "" };
                let _ = write!(s, "; {what} {}{more}", v.join(", "));
            }
        };
        list(&mut s, "services", &self.services);
        list(&mut s, "peers", &self.peers);
        list(&mut s, "names", &self.names);
        list(&mut s, "process", &self.processes);
        list(&mut s, "cgroup", &self.cgroups);
        if self.processes.is_empty() {
            s.push_str("; process unknown");
        }
        // A comment ends at the line's end: nothing it quotes may end it early.
        s.replace(|c: char| c.is_control(), " ")
    }
}

/// An inbound service: what a peer may open to the host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Service {
    pub proto: u8,
    /// The port (TCP, UDP) or ICMP type.
    pub port: u16,
}

/// One entry of the proposal with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// `in tcp/22`, `name api.example.com`, `name *.cdn.example.com`, `resolver 10.0.0.53`,
    /// `addr 198.51.100.7`.
    pub what: String,
    pub evidence: Evidence,
}

/// Something the never-allow policy denies, left out.
#[derive(Debug, Clone, Serialize)]
pub struct Withheld {
    pub what: String,
    pub why: String,
    pub flows: u64,
}

/// The proposal: the policy text and what went into it.
#[derive(Debug, Clone, Serialize)]
pub struct Proposal {
    /// The policy text.
    #[serde(rename = "policy")]
    pub text: String,
    pub allowed: Vec<Entry>,
    pub held: Vec<Entry>,
    pub withheld: Vec<Withheld>,
}

#[must_use]
pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// Nanoseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
#[must_use]
pub fn utc(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), for dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Why the never-allow policy denies a connection, if it does: its firewall drops the
/// first packet of either direction.
fn denied_flow(never: &Policy, c: &Connection, records: &[Record]) -> Option<String> {
    let mut seen = [false; 2];
    for &i in &c.records {
        let r = &records[i];
        let dir = usize::from(r.outgoing);
        if seen[dir] {
            continue;
        }
        seen[dir] = true;
        if let Ok(Frame::Ip(p)) = packet::parse(r.frame.as_slice())
            && let Verdict::Drop { rule, .. } = reference::verdict(never, &p)
        {
            return Some(match rule {
                Some(i) => format!(
                    "never-allow rule {}",
                    never.firewall.rules[i as usize]
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("#{i}"))
                ),
                None => "never-allow default".into(),
            });
        }
    }
    None
}

/// Whether the never-allow policy's DNS scopes block a query for `name`.
fn denied_name(never: &Policy, name: &str) -> bool {
    let msg = DnsQuery::name(name, 1).build();
    let scopes = never
        .dns
        .ingress
        .iter()
        .chain(never.dns.egress.iter().map(|e| &e.scope));
    scopes
        .into_iter()
        .any(|s| dns_reference::decide(never, s, &msg, 0).reason != palisade_common::reason::PASS)
}

/// Whether the never-allow policy has a DNS list entry at or below `parent` (so a
/// wildcard over it could allow what it blocks).
fn never_lists_below(never: &Policy, parent: &str) -> bool {
    let want: Vec<Vec<u8>> = parent
        .split('.')
        .rev()
        .map(|l| l.as_bytes().to_ascii_lowercase())
        .collect();
    never.dns.lists.iter().any(|l| {
        l.entries.iter().any(|e| {
            // Entry labels are stored in name order; compare from the root.
            let rev: Vec<Vec<u8>> = e.labels.iter().rev().cloned().collect();
            rev.len() >= want.len() && rev[..want.len()] == want[..]
        })
    })
}

/// The parent of a name that may carry a wildcard: at least two labels remain.
fn parent(name: &str) -> Option<&str> {
    let (_, p) = name.split_once('.')?;
    p.contains('.').then_some(p)
}

/// Groups the observations and writes the proposal.
#[must_use]
pub fn propose(
    obs: &Observations,
    records: &[Record],
    never: Option<&Policy>,
    opts: &Options,
) -> Proposal {
    let by_addr = names_by_addr(&obs.answers);
    let mut inbound: BTreeMap<Service, Evidence> = BTreeMap::new();
    let mut names: BTreeMap<String, Evidence> = BTreeMap::new();
    let mut resolvers: BTreeMap<IpAddr, Evidence> = BTreeMap::new();
    let mut addrs: BTreeMap<IpAddr, Evidence> = BTreeMap::new();
    let mut withheld: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut denied_names: BTreeMap<String, u64> = BTreeMap::new();
    for c in &obs.connections {
        if let Some(why) = never.and_then(|n| denied_flow(n, c, records)) {
            let what = match c.direction {
                Direction::In => format!(
                    "in {}/{} from {}",
                    proto_name(c.proto),
                    c.local_port,
                    c.remote
                ),
                Direction::Out => format!(
                    "out {}/{} to {}",
                    proto_name(c.proto),
                    c.remote_port,
                    c.remote
                ),
            };
            *withheld.entry((what, why)).or_default() += 1;
            continue;
        }
        match c.direction {
            Direction::In => {
                let e = inbound
                    .entry(Service {
                        proto: c.proto,
                        port: c.local_port,
                    })
                    .or_default();
                e.add(c);
                e.peers.insert(c.remote.to_string());
            }
            Direction::Out if c.remote_port == DNS_PORT && matches!(c.proto, 6 | 17) => {
                let e = resolvers.entry(c.remote).or_default();
                e.add(c);
                e.names.extend(c.queries.iter().cloned());
            }
            Direction::Out => match by_addr.get(&c.remote) {
                Some(ns) => {
                    let mut any = false;
                    for n in ns {
                        if never.is_some_and(|p| denied_name(p, n)) {
                            *denied_names.entry(n.clone()).or_default() += 1;
                            continue;
                        }
                        any = true;
                        let e = names.entry(n.clone()).or_default();
                        e.add(c);
                        e.peers.insert(c.remote.to_string());
                    }
                    if !any {
                        *withheld
                            .entry((
                                format!(
                                    "out {}/{} to {} ({})",
                                    proto_name(c.proto),
                                    c.remote_port,
                                    c.remote,
                                    ns.iter().cloned().collect::<Vec<_>>().join(", ")
                                ),
                                "never-allow DNS list".into(),
                            ))
                            .or_default() += 1;
                    }
                }
                None => addrs.entry(c.remote).or_default().add(c),
            },
        }
    }
    for (n, flows) in &denied_names {
        *withheld
            .entry((format!("name {n}"), "never-allow DNS list".into()))
            .or_default() += flows;
    }
    // Wildcards: three or more siblings under one parent, none of them (nor anything the
    // never-allow lists name under the parent) denied.
    let mut by_parent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in names.keys() {
        if let Some(p) = parent(n) {
            by_parent.entry(p.to_string()).or_default().push(n.clone());
        }
    }
    let mut name_entries: BTreeMap<String, Evidence> = BTreeMap::new();
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for (p, kids) in &by_parent {
        if kids.len() < WILDCARD_SIBLINGS {
            continue;
        }
        let blocked = denied_names.keys().any(|d| d.ends_with(&format!(".{p}")))
            || never.is_some_and(|n| never_lists_below(n, p));
        if blocked {
            continue;
        }
        let mut e = Evidence::default();
        for k in kids {
            e.merge(&names[k]);
            e.names.insert(k.clone());
            covered.insert(k.clone());
        }
        name_entries.insert(format!("*.{p}"), e);
    }
    for (n, e) in names {
        if !covered.contains(&n) {
            name_entries.insert(n, e);
        }
    }
    let (mut allowed, mut held) = (Vec::new(), Vec::new());
    let mut sort = |what: String, evidence: Evidence| {
        let entry = Entry { what, evidence };
        if entry.evidence.flows >= opts.min_flows {
            allowed.push(entry);
        } else {
            held.push(entry);
        }
    };
    for (s, e) in inbound {
        sort(format!("in {}/{}", proto_name(s.proto), s.port), e);
    }
    for (n, e) in name_entries {
        sort(format!("name {n}"), e);
    }
    for (a, e) in resolvers {
        sort(format!("resolver {a}"), e);
    }
    for (a, e) in addrs {
        sort(format!("addr {a}"), e);
    }
    let withheld: Vec<Withheld> = withheld
        .into_iter()
        .map(|((what, why), flows)| Withheld { what, why, flows })
        .collect();
    let text = render(obs, &allowed, &held, &withheld, opts);
    Proposal {
        text,
        allowed,
        held,
        withheld,
    }
}

fn rule_text(what: &str, e: &Evidence) -> String {
    let mut s = String::new();
    let (_, svc) = what.split_once(' ').unwrap_or(("", what));
    let (proto, port) = svc.split_once('/').unwrap_or((svc, "0"));
    let _ = writeln!(s, "[[firewall.rule]]");
    let _ = writeln!(s, "name = \"in-{proto}-{port}\"");
    let _ = writeln!(s, "action = \"allow\"");
    if proto.parse::<u8>().is_ok() {
        let _ = writeln!(s, "proto = {proto}");
    } else {
        let _ = writeln!(s, "proto = \"{proto}\"");
    }
    match proto {
        "tcp" | "udp" => {
            let _ = writeln!(s, "dport = {port}");
        }
        "icmp" | "icmpv6" => {
            let _ = writeln!(s, "icmp_type = {port}");
        }
        _ => {}
    }
    if e.peers.len() < LISTED_SOURCES {
        let v: Vec<String> = e.peers.iter().map(|p| format!("\"{p}\"")).collect();
        let _ = writeln!(s, "src = [{}]", v.join(", "));
    }
    s
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn commented(text: &str) -> String {
    text.lines().map(|l| format!("# {l}\n")).collect()
}

fn quote_list(items: &[&Entry], key: impl Fn(&str) -> String) -> String {
    let mut s = String::new();
    for e in items {
        let _ = writeln!(s, "  # {}: {}", e.what, e.evidence.comment());
        let _ = writeln!(s, "  \"{}\",", key(&e.what));
    }
    s
}

fn render(
    obs: &Observations,
    allowed: &[Entry],
    held: &[Entry],
    withheld: &[Withheld],
    opts: &Options,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Proposed by `palisade learn` from {}: {} packets, {} connections, {} DNS answers.",
        opts.sources.join(", "),
        obs.packets,
        obs.connections.len(),
        obs.answers.len()
    );
    let _ = writeln!(
        s,
        "# Review it before use. Each entry's comment is its evidence: flows (connections),\n\
         # packets, first and last seen (UTC), services, peers, and the process and cgroup where\n\
         # known. Entries seen in fewer than {} flows are held for review at the end, not allowed.",
        opts.min_flows
    );
    let of = |prefix: &str| -> Vec<&Entry> {
        allowed
            .iter()
            .filter(|e| e.what.starts_with(prefix))
            .collect()
    };
    let _ = writeln!(
        s,
        "\n[firewall]\ndefault = \"drop\"\n\
         # Replies to connections the host opened pass; the rules say what peers may open.\n\
         stateful = true"
    );
    for e in of("in ") {
        let _ = writeln!(s, "\n# {}: {}", e.what, e.evidence.comment());
        s.push_str(&rule_text(&e.what, &e.evidence));
    }
    let cgroups: Vec<String> = opts.cgroups.iter().map(|c| toml_string(c)).collect();
    let _ = writeln!(
        s,
        "\n# Names the host resolved and then connected to. Only these resolve.\n\
         [dns.egress]\nmode = \"allowlist\"\nlists = [\"{LIST}\"]\nlog_allowed = true\n\
         cgroups = [{}]",
        cgroups.join(", ")
    );
    let _ = writeln!(s, "\n[dns.lists.{LIST}]\nnames = [");
    s.push_str(&quote_list(&of("name "), |w| {
        w.trim_start_matches("name ").to_string()
    }));
    s.push_str("]\n");
    let _ = writeln!(
        s,
        "\n# Connects only to addresses an answer for an allowed name gave, to the resolvers,\n\
         # and to the addresses below, which no answer named.\n\
         [dns.bind]\ncgroups = [{}]\nallow = [",
        cgroups.join(", ")
    );
    let mut bound = of("resolver ");
    bound.extend(of("addr "));
    s.push_str(&quote_list(&bound, |w| {
        w.split_once(' ').map_or(w, |(_, a)| a).to_string()
    }));
    s.push_str("]\n");
    if !withheld.is_empty() {
        s.push_str("\n# Withheld: the never-allow policy denies these; they are not allowed.\n");
        for w in withheld {
            let _ = writeln!(s, "#   {} ({} flows): {}", w.what, w.flows, w.why);
        }
    }
    if !held.is_empty() {
        let _ = writeln!(
            s,
            "\n# ---- Held for review: seen in fewer than {} flows, not allowed. ----",
            opts.min_flows
        );
        for e in held {
            let _ = writeln!(s, "#\n# {}: {}", e.what, e.evidence.comment());
            if e.what.starts_with("in ") {
                s.push_str(&commented(&rule_text(&e.what, &e.evidence)));
            } else if let Some(n) = e.what.strip_prefix("name ") {
                s.push_str(&commented(&format!(
                    "[[dns.lists.{LIST}.entry]]\nname = \"{n}\""
                )));
            } else {
                let a = e.what.split_once(' ').map_or("", |(_, a)| a);
                let _ = writeln!(s, "# (add to [dns.bind] allow) \"{a}\",");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{learn::observe::observe, policy::config::parse_policy, replay::capture::Record};

    fn rec(frame: Vec<u8>, outgoing: bool, t: u64) -> Record {
        Record {
            number: 0,
            offset: 0,
            interface: 0,
            timestamp_ns: t * 1_000_000_000,
            outgoing,
            frame,
        }
    }

    fn answer(name: &str, addr: &str, port: u16) -> Record {
        let msg = crate::learn::evaluate::answer_message(7, name, &[addr.parse().unwrap()], 60);
        rec(
            crate::craft::Frame::udp("10.0.0.53", "10.0.0.2", 53, port)
                .with_payload(&msg)
                .build(),
            false,
            1,
        )
    }

    fn out(addr: &str, sport: u16, dport: u16, t: u64) -> Record {
        rec(
            crate::craft::Frame::udp("10.0.0.2", addr, sport, dport).build(),
            true,
            t,
        )
    }

    fn opts(min: u64) -> Options {
        Options {
            min_flows: min,
            cgroups: vec!["/sys/fs/cgroup".into()],
            sources: vec!["t".into()],
        }
    }

    #[test]
    fn utc_formats_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_764_892_800_000_000_000), "2025-12-05T00:00:00Z");
        assert_eq!(
            utc(951_782_400_000_000_000 + 59_000_000_000),
            "2000-02-29T00:00:59Z"
        );
    }

    #[test]
    fn cgroup_paths_are_quoted_for_toml() {
        assert_eq!(
            toml_string("/sys/fs/cgroup/a\"b\\c\n"),
            "\"/sys/fs/cgroup/a\\\"b\\\\c\\u000A\""
        );
        let r = vec![out("203.0.113.1", 40_000, 123, 1)];
        let mut o = opts(1);
        o.cgroups = vec!["/sys/fs/cgroup/we\"ird\\".into()];
        let p = propose(&observe(&r), &r, None, &o);
        let policy = crate::learn::parse_proposal(&p.text).expect("loads");
        assert_eq!(
            policy.dns.bind.unwrap().cgroups,
            [std::path::PathBuf::from("/sys/fs/cgroup/we\"ird\\")]
        );
    }

    #[test]
    fn other_protocols_get_numbered_rules_that_load() {
        let mut f = crate::craft::Frame::udp("192.0.2.9", "10.0.0.2", 1, 2).build();
        f[14 + 9] = 47;
        let r: Vec<Record> = (0..3).map(|t| rec(f.clone(), false, t)).collect();
        let p = propose(&observe(&r), &r, None, &opts(1));
        assert!(p.text.contains("proto = 47\n"), "{}", p.text);
        let policy = crate::learn::parse_proposal(&p.text).expect("loads");
        assert_eq!(policy.firewall.rules.len(), 1);
    }

    #[test]
    fn parents_leave_two_labels() {
        assert_eq!(parent("a.cdn.example.net"), Some("cdn.example.net"));
        assert_eq!(parent("a.example.net"), Some("example.net"));
        // No wildcard directly under a top-level domain.
        assert_eq!(parent("example.net"), None);
        assert_eq!(parent("net"), None);
    }

    /// Connections to `n` sibling names, `flows` each; returns the allowed and held entries.
    fn siblings(n: usize, flows: u16, min: u64) -> (Vec<String>, Vec<String>) {
        let mut r = Vec::new();
        for i in 0..n {
            let addr = format!("198.51.100.{}", i + 1);
            r.push(answer(&format!("h{i}.example.net"), &addr, 30_000));
            for f in 0..flows {
                r.push(out(&addr, 40_000 + f, 443, 2 + u64::from(f)));
            }
        }
        let p = propose(&observe(&r), &r, None, &opts(min));
        let names = |v: &[Entry]| {
            v.iter()
                .filter(|e| e.what.starts_with("name "))
                .map(|e| e.what.clone())
                .collect()
        };
        (names(&p.allowed), names(&p.held))
    }

    #[test]
    fn a_wildcard_needs_three_siblings() {
        assert_eq!(
            siblings(2, 3, 3).0,
            ["name h0.example.net", "name h1.example.net"]
        );
        assert_eq!(siblings(3, 3, 3).0, ["name *.example.net"]);
        // Three siblings with one flow each: the wildcard's evidence is their sum.
        assert_eq!(siblings(3, 1, 3).0, ["name *.example.net"]);
        assert_eq!(siblings(3, 1, 4).1, ["name *.example.net"]);
    }

    #[test]
    fn flows_to_answered_addresses_count_for_the_name_and_the_rest_by_address() {
        let r = vec![
            answer("api.example.com", "198.51.100.7", 30_000),
            out("198.51.100.7", 40_000, 443, 2),
            out("198.51.100.7", 40_001, 443, 3),
            // The same connection again: one flow, two packets.
            out("198.51.100.7", 40_001, 443, 4),
            out("203.0.113.1", 40_002, 123, 5),
        ];
        let p = propose(&observe(&r), &r, None, &opts(1));
        let got: Vec<(String, u64, u64)> = p
            .allowed
            .iter()
            .map(|e| (e.what.clone(), e.evidence.flows, e.evidence.packets))
            .collect();
        assert_eq!(
            got,
            [
                ("name api.example.com".into(), 2, 3),
                // The answer's connection, its query not captured.
                ("resolver 10.0.0.53".into(), 1, 1),
                ("addr 203.0.113.1".into(), 1, 1),
            ]
        );
        let e = &p.allowed[0].evidence;
        assert_eq!((e.first_ns, e.last_ns), (2_000_000_000, 4_000_000_000));
    }

    #[test]
    fn a_never_allowed_name_blocks_the_wildcard_over_it() {
        let mut r = Vec::new();
        for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
            let addr = format!("198.51.100.{}", i + 1);
            r.push(answer(&format!("{n}.example.net"), &addr, 30_000));
            for f in 0..3 {
                r.push(out(&addr, 40_000 + f, 443, 2));
            }
        }
        let never = parse_policy(
            "[dns.ingress]\nmode = \"blocklist\"\nlists = [\"n\"]\n\
             [dns.lists.n]\nnames = [\"d.example.net\"]\n",
            "n.toml",
            Path::new("/"),
        )
        .unwrap();
        let p = propose(&observe(&r), &r, Some(&never), &opts(3));
        let allowed: Vec<&str> = p.allowed.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(
            allowed,
            [
                "name a.example.net",
                "name b.example.net",
                "name c.example.net"
            ]
        );
        let withheld: Vec<(&str, u64)> = p
            .withheld
            .iter()
            .map(|w| (w.what.as_str(), w.flows))
            .collect();
        assert!(
            withheld.contains(&("name d.example.net", 3)),
            "{withheld:?}"
        );
        // A never-allow entry below the parent blocks the wildcard even when unseen.
        let never = parse_policy(
            "[dns.ingress]\nmode = \"blocklist\"\nlists = [\"n\"]\n\
             [dns.lists.n]\nnames = [\"*.x.example.net\"]\n",
            "n.toml",
            Path::new("/"),
        )
        .unwrap();
        let p = propose(&observe(&r), &r, Some(&never), &opts(3));
        assert_eq!(
            p.allowed.len(),
            4,
            "four names; the resolver, one flow, is held"
        );
        assert!(p.allowed.iter().all(|e| !e.what.contains('*')));
    }
}
