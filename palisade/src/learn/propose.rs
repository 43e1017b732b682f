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
        s
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
    let mut denied_names: BTreeSet<String> = BTreeSet::new();
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
                            denied_names.insert(n.clone());
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
    for n in &denied_names {
        withheld
            .entry((format!("name {n}"), "never-allow DNS list".into()))
            .or_default();
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
        let blocked = denied_names.iter().any(|d| d.ends_with(&format!(".{p}")))
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
    let _ = writeln!(s, "proto = \"{proto}\"");
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
    let cgroups: Vec<String> = opts.cgroups.iter().map(|c| format!("\"{c}\"")).collect();
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
