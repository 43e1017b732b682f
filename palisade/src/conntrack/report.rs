//! What the tracker reports to operators: `palisade ct list|flush|stats`, the connection
//! tracking part of `palisade status`, and the `palisade_ct_*` metrics. The daemon builds
//! these from the datapath ([`snapshot`], [`list`], [`flush`]); the commands print them
//! ([`print_flows`], [`print_stats`], [`status_lines`]) and the metrics endpoint renders
//! them ([`metric_families`]).

use std::{collections::HashMap, fmt::Write as _, net::IpAddr};

use anyhow::{Result, anyhow};
use palisade_common::conntrack::{
    CS_EXPIRED_LOOKUP_EST, CS_EXPIRED_LOOKUP_NEW, CS_OVERLOAD_ADDED, CS_OVERLOAD_FULL,
    CT_STAT_NAMES, CtCensus, ENTRY_STATE_NAMES, ENTRY_STATES, PROTO_CLASS_NAMES, PROTO_CLASSES,
    REPLIED, SWEEP_EXPIRE, SWEEP_FLUSH, SweepRequest, TABLE_EST, TABLE_NEW, UNREPLIED,
};
use serde::{Deserialize, Serialize};

use super::{
    filter::FlowFilter,
    table::{Flow, flows, originator, read_stats, walk},
};
use crate::{datapath::Datapath, metrics::Family, stats::Named};

/// How many sources `ct stats` and the metrics name.
pub const TOP_SOURCES: usize = 10;

/// Entries of one protocol class in one state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCount {
    /// `tcp`, `udp`, `icmp` (ICMP and ICMPv6) or `other`.
    pub proto: String,
    pub state: String,
    pub entries: u64,
}

/// The tables as the last sweep counted them, with what left them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    pub entries: u64,
    /// Entries in the table of validated flows.
    pub validated: u64,
    /// Entries in the (LRU) table of flows not validated yet.
    pub unvalidated: u64,
    /// Live entries by protocol class and state; every state a protocol can be in, zeros
    /// included, so series do not come and go.
    pub by_state: Vec<StateCount>,
    /// Entries removed because they timed out, by the sweep.
    pub expired_by_sweep: u64,
    /// Expired entries removed by the packet that found them.
    pub expired_on_lookup: u64,
    /// Entries removed by `palisade ct flush`.
    pub flushed: u64,
    /// Unvalidated entries the LRU table evicted to make room (derived, see [`evictions`]).
    pub evictions: u64,
    pub sweeps: u64,
    /// Members of the overload set (`[conntrack] overload_set`) at the last sweep.
    #[serde(default)]
    pub overload_members: u64,
    /// Addresses added to the overload set.
    #[serde(default)]
    pub overload_added: u64,
    /// Addresses over a limit that found the overload set's map full.
    #[serde(default)]
    pub overload_full: u64,
    /// Members removed by the sweep when their time was over.
    #[serde(default)]
    pub overload_expired: u64,
    /// Members removed by `palisade ct overload flush`.
    #[serde(default)]
    pub overload_flushed: u64,
}

/// `palisade ct stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtStats {
    /// Every datapath counter, by its name in `CT_STAT_NAMES`.
    pub counters: Vec<Named>,
    pub census: Census,
    /// The addresses that opened the most tracked flows, most first.
    pub top_sources: Vec<SourceCount>,
}

/// Tracked flows opened by one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCount {
    pub src: IpAddr,
    pub entries: u64,
}

/// `palisade ct list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowList {
    pub flows: Vec<Flow>,
}

/// `palisade ct flush`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    /// Entries removed.
    pub removed: u64,
    /// Entries left in the tables.
    pub remaining: u64,
}

/// Unvalidated entries evicted by the LRU table. The kernel does not report LRU evictions,
/// so they are what is missing from that table's books: entries inserted, less those
/// promoted, expired (by the sweep or by the packet that found them), flushed and still
/// present. Counters and census must come from the same moment (see [`snapshot`]).
#[must_use]
pub fn evictions(counters: &[u64], census: &CtCensus) -> u64 {
    // The validated table balances on its own (nothing leaves it unseen), so what the books
    // of both tables miss is what the LRU table evicted.
    u64::try_from(super::table::balance(counters, census).evicted).unwrap_or(0)
}

/// The states an entry of protocol class `pc` can be in.
fn states_of(pc: usize) -> impl Iterator<Item = usize> {
    let tcp = pc == 0;
    (1..ENTRY_STATES).filter(move |s| {
        let other = *s == usize::from(UNREPLIED) || *s == usize::from(REPLIED);
        tcp != other
    })
}

impl Census {
    /// The census of a sweep, with the counters read right after it.
    #[must_use]
    pub fn of(c: &CtCensus, counters: &[u64]) -> Self {
        let table = |t: usize| -> u64 { c.live[t].iter().flatten().map(|n| u64::from(*n)).sum() };
        let mut by_state = Vec::new();
        for (pc, proto) in PROTO_CLASS_NAMES.iter().enumerate().take(PROTO_CLASSES) {
            for s in states_of(pc) {
                by_state.push(StateCount {
                    proto: (*proto).to_string(),
                    state: ENTRY_STATE_NAMES[s].to_string(),
                    entries: u64::from(c.live[TABLE_EST][pc][s])
                        + u64::from(c.live[TABLE_NEW][pc][s]),
                });
            }
        }
        let (validated, unvalidated) = (table(TABLE_EST), table(TABLE_NEW));
        let stat = |i: u32| counters.get(i as usize).copied().unwrap_or(0);
        Self {
            entries: validated + unvalidated,
            validated,
            unvalidated,
            by_state,
            expired_by_sweep: c.expired.iter().sum(),
            expired_on_lookup: [CS_EXPIRED_LOOKUP_NEW, CS_EXPIRED_LOOKUP_EST]
                .iter()
                .map(|i| counters.get(*i as usize).copied().unwrap_or(0))
                .sum(),
            flushed: c.flushed.iter().sum(),
            evictions: evictions(counters, c),
            sweeps: c.sweeps,
            overload_members: c.overload_members,
            overload_added: stat(CS_OVERLOAD_ADDED),
            overload_full: stat(CS_OVERLOAD_FULL),
            overload_expired: c.overload_expired,
            overload_flushed: c.overload_flushed,
        }
    }
}

/// Sweeps now (expired entries go) and reads the counters right after, so the census and
/// the counters describe the same moment. Returns the raw census too, for the daemon to keep.
///
/// # Errors
/// When the sweep or the counters cannot be read.
pub fn snapshot(dp: &Datapath) -> Result<(Census, Vec<u64>, CtCensus)> {
    let raw = dp.sweep(&SweepRequest {
        op: SWEEP_EXPIRE,
        ..SweepRequest::default()
    })?;
    let counters = read_stats(&dp.ebpf)?;
    Ok((Census::of(&raw, &counters), counters, raw))
}

/// `ct stats`: every counter, the census and the top sources.
///
/// # Errors
/// When the tables cannot be swept or read.
pub fn stats(dp: &Datapath) -> Result<(CtStats, CtCensus)> {
    let (census, counters, raw) = snapshot(dp)?;
    let mut by_src: HashMap<IpAddr, u64> = HashMap::new();
    walk(&dp.ebpf, |k, e, _| {
        *by_src.entry(originator(k, e)).or_default() += 1;
    })?;
    let mut top: Vec<SourceCount> = by_src
        .into_iter()
        .map(|(src, entries)| SourceCount { src, entries })
        .collect();
    top.sort_by(|a, b| b.entries.cmp(&a.entries).then(a.src.cmp(&b.src)));
    top.truncate(TOP_SOURCES);
    let counters = CT_STAT_NAMES
        .iter()
        .zip(&counters)
        .filter(|(n, _)| !n.starts_with("reserved"))
        .map(|(n, v)| Named {
            name: (*n).to_string(),
            value: *v,
        })
        .collect();
    Ok((
        CtStats {
            counters,
            census,
            top_sources: top,
        },
        raw,
    ))
}

/// `ct list`: the flows that match.
///
/// # Errors
/// When the filter is invalid or the tables cannot be read.
pub fn list(dp: &Datapath, filter: &FlowFilter) -> Result<FlowList> {
    Ok(FlowList {
        flows: flows(&dp.ebpf, filter)?,
    })
}

/// `ct flush`: one run of the kernel sweep removes every entry that matches (every entry
/// with an empty filter) and counts them, whatever the table size.
///
/// # Errors
/// When the filter is invalid or the sweep fails.
pub fn flush(dp: &Datapath, filter: &FlowFilter) -> Result<(Flushed, CtCensus)> {
    let req = filter.request(SWEEP_FLUSH).map_err(|e| anyhow!(e))?;
    let before = super::census(&dp.ebpf)?;
    let after = dp.sweep(&req)?;
    let flushed = |c: &CtCensus| c.flushed.iter().sum::<u64>();
    let remaining = after
        .live
        .iter()
        .flatten()
        .flatten()
        .map(|n| u64::from(*n))
        .sum();
    Ok((
        Flushed {
            removed: flushed(&after).saturating_sub(flushed(&before)),
            remaining,
        },
        after,
    ))
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}:{port}"),
        IpAddr::V6(_) => format!("[{a}]:{port}"),
    }
}

/// The flows as a table, one line each.
#[must_use]
pub fn print_flows(l: &FlowList) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 8]> = l
        .flows
        .iter()
        .map(|f| {
            [
                proto_name(f.proto),
                endpoint(f.orig_addr, f.orig_port),
                endpoint(f.reply_addr, f.reply_port),
                format!(
                    "{}{}{}",
                    f.state,
                    if f.local { " local" } else { "" },
                    if f.intel_tagged { " intel-tagged" } else { "" }
                ),
                format!("{}s", f.age_s),
                format!("{}s", f.idle_s),
                format!("{}/{}", f.packets_orig, f.packets_reply),
                format!("{}/{}", f.bytes_orig, f.bytes_reply),
            ]
        })
        .collect();
    let head = [
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "STATE",
        "AGE",
        "IDLE",
        "PACKETS",
        "BYTES",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |out: &mut String, cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&mut out, &head);
    for r in &rows {
        line(&mut out, &r.each_ref().map(String::as_str));
    }
    let _ = writeln!(
        out,
        "{} flow{}",
        l.flows.len(),
        if l.flows.len() == 1 { "" } else { "s" }
    );
    out
}

/// The census in a few lines: totals, then the states that hold entries.
#[must_use]
pub fn census_lines(c: &Census) -> Vec<String> {
    let mut lines = vec![format!(
        "{} entries ({} validated, {} unvalidated); {} expired, {} flushed, {} evicted",
        c.entries,
        c.validated,
        c.unvalidated,
        c.expired_by_sweep + c.expired_on_lookup,
        c.flushed,
        c.evictions
    )];
    let mut by_proto: Vec<(String, Vec<String>)> = Vec::new();
    for s in c.by_state.iter().filter(|s| s.entries > 0) {
        let text = format!("{} {}", s.state, s.entries);
        match by_proto.iter_mut().find(|(p, _)| *p == s.proto) {
            Some((_, v)) => v.push(text),
            None => by_proto.push((s.proto.clone(), vec![text])),
        }
    }
    for (p, v) in by_proto {
        lines.push(format!("{p}: {}", v.join(", ")));
    }
    if c.overload_members + c.overload_added + c.overload_full > 0 {
        lines.push(format!(
            "overload set: {} members; {} added, {} expired, {} flushed, {} refused (map full)",
            c.overload_members,
            c.overload_added,
            c.overload_expired,
            c.overload_flushed,
            c.overload_full
        ));
    }
    lines
}

/// The `conntrack` lines of `palisade status`.
#[must_use]
pub fn status_lines(c: Option<&Census>) -> Vec<String> {
    let lines = c.map_or_else(|| vec!["not swept yet".to_string()], census_lines);
    lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "{}{l}",
                if i == 0 {
                    "conntrack   "
                } else {
                    "            "
                }
            )
        })
        .collect()
}

/// `palisade ct stats` as text.
#[must_use]
pub fn print_stats(s: &CtStats) -> String {
    let mut out = String::new();
    for l in census_lines(&s.census) {
        let _ = writeln!(out, "{l}");
    }
    let _ = writeln!(out, "sweeps {}", s.census.sweeps);
    let _ = writeln!(out, "counters:");
    let w = s.counters.iter().map(|n| n.name.len()).max().unwrap_or(0);
    for n in &s.counters {
        let _ = writeln!(out, "  {:<w$}  {:>12}", n.name, n.value);
    }
    let _ = writeln!(
        out,
        "  {:<w$}  {:>12}",
        "evicted (derived)", s.census.evictions
    );
    if !s.top_sources.is_empty() {
        let _ = writeln!(out, "top sources:");
        for t in &s.top_sources {
            let _ = writeln!(out, "  {:<40}  {:>8}", t.src.to_string(), t.entries);
        }
    }
    out
}

/// Datapath counters exported under another family: `expired_on_lookup` is
/// `palisade_ct_expirations_total{by="lookup"}`, the overload counters are
/// `palisade_ct_overload_*`.
const EXPORTED_ELSEWHERE: [&str; 4] = [
    "expired_on_lookup_new",
    "expired_on_lookup_established",
    "overload_added",
    "overload_full",
];

fn counter_help(name: &str) -> Option<(&'static str, &'static str, &'static str)> {
    // (metric, help, label=value) for each datapath counter.
    Some(match name {
        "new" | "established" | "related" | "invalid" => (
            "palisade_ct_packets_total",
            "Packets the tracker classified, by state.",
            "state",
        ),
        "insert_new" | "insert_established" => (
            "palisade_ct_inserts_total",
            "Entries inserted, by table (a promotion inserts into the validated table).",
            "table",
        ),
        "insert_failed_new" | "insert_failed_established" => (
            "palisade_ct_insert_failures_total",
            "Entries that could not be inserted because the table was full, by table.",
            "table",
        ),
        "promoted" => (
            "palisade_ct_promotions_total",
            "Flows moved to the validated table once answered.",
            "",
        ),
        "accepted" => (
            "palisade_ct_stateful_accepted_total",
            "Packets of established or related flows accepted before the rules (stateful = true).",
            "",
        ),
        "picked_up" => (
            "palisade_ct_pickups_total",
            "Flows picked up in the middle from packets this host sent.",
            "",
        ),
        "reopened" => (
            "palisade_ct_reopened_total",
            "Closed TCP flows started over by a new SYN on the same ports.",
            "",
        ),
        "reopened_established" => (
            "palisade_ct_reopened_validated_total",
            "Validated flows that left their table because a new SYN reopened them.",
            "",
        ),
        "untracked" => (
            "palisade_ct_untracked_packets_total",
            "Packets the tracker did not look at (non-first fragments).",
            "",
        ),
        _ => return None,
    })
}

/// The `palisade_ct_*` metric families.
#[must_use]
pub fn metric_families(s: &CtStats) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    let mut add =
        |name: &str, kind: &str, help: &str, labels: Vec<(String, String)>, v: u64| match out
            .iter_mut()
            .find(|f| f.name == name)
        {
            Some(f) => f.samples.push((labels, v)),
            None => out.push(Family {
                name: name.to_string(),
                kind: kind.to_string(),
                help: help.to_string(),
                samples: vec![(labels, v)],
            }),
        };
    let c = &s.census;
    for st in &c.by_state {
        add(
            "palisade_ct_entries",
            "gauge",
            "Tracked flows, by protocol and entry state (at the last sweep).",
            vec![
                ("proto".into(), st.proto.clone()),
                ("state".into(), st.state.clone()),
            ],
            st.entries,
        );
    }
    for (table, v) in [("validated", c.validated), ("unvalidated", c.unvalidated)] {
        add(
            "palisade_ct_table_entries",
            "gauge",
            "Entries in each connection table (at the last sweep).",
            vec![("table".into(), table.into())],
            v,
        );
    }
    for n in &s.counters {
        if EXPORTED_ELSEWHERE.contains(&n.name.as_str()) {
            continue;
        }
        let Some((metric, help, label)) = counter_help(&n.name) else {
            continue;
        };
        let labels: Vec<(String, String)> = match label {
            "state" => vec![("state".into(), n.name.clone())],
            "table" => vec![(
                "table".into(),
                if n.name.ends_with("_new") {
                    "unvalidated".into()
                } else {
                    "validated".into()
                },
            )],
            _ => Vec::new(),
        };
        add(metric, "counter", help, labels, n.value);
    }
    let exp =
        "Entries removed because they timed out: by the sweep, or by the packet that found them.";
    add(
        "palisade_ct_expirations_total",
        "counter",
        exp,
        vec![("by".into(), "sweep".into())],
        c.expired_by_sweep,
    );
    add(
        "palisade_ct_expirations_total",
        "counter",
        exp,
        vec![("by".into(), "lookup".into())],
        c.expired_on_lookup,
    );
    add(
        "palisade_ct_flushed_total",
        "counter",
        "Entries removed by `palisade ct flush`.",
        Vec::new(),
        c.flushed,
    );
    add(
        "palisade_ct_evictions_total",
        "counter",
        "Unvalidated entries evicted by the LRU table to make room (derived: inserted - promoted - expired - flushed - present).",
        Vec::new(),
        c.evictions,
    );
    add(
        "palisade_ct_sweeps_total",
        "counter",
        "Sweeps of the connection tables.",
        Vec::new(),
        c.sweeps,
    );
    add(
        "palisade_ct_overload_members",
        "gauge",
        "Addresses in the overload set of [conntrack] (at the last sweep).",
        Vec::new(),
        c.overload_members,
    );
    add(
        "palisade_ct_overload_additions_total",
        "counter",
        "Addresses added to the overload set on going over a per-source limit.",
        Vec::new(),
        c.overload_added,
    );
    add(
        "palisade_ct_overload_full_total",
        "counter",
        "Addresses over a per-source limit that could not join the overload set (its map was full).",
        Vec::new(),
        c.overload_full,
    );
    let rm = "Members removed from the overload set: their time was over, or flushed.";
    add(
        "palisade_ct_overload_removals_total",
        "counter",
        rm,
        vec![("by".into(), "expiry".into())],
        c.overload_expired,
    );
    add(
        "palisade_ct_overload_removals_total",
        "counter",
        rm,
        vec![("by".into(), "flush".into())],
        c.overload_flushed,
    );
    let top = "Tracked flows opened by each of the addresses that opened the most (top 10).";
    for t in &s.top_sources {
        add(
            "palisade_ct_top_source_entries",
            "gauge",
            top,
            vec![("src".into(), t.src.to_string())],
            t.entries,
        );
    }
    if s.top_sources.is_empty() {
        out.push(Family {
            name: "palisade_ct_top_source_entries".into(),
            kind: "gauge".into(),
            help: top.into(),
            samples: Vec::new(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use palisade_common::conntrack::{
        CS_INSERT_EST, CS_INSERT_NEW, CS_PROMOTED, CT_STATS, PROTO_CLASSES, TCP_ESTABLISHED,
        TCP_SYN_SENT,
    };

    use super::*;

    #[test]
    fn evictions_are_what_the_lru_table_cannot_account_for() {
        let mut counters = vec![0u64; CT_STATS as usize];
        counters[CS_INSERT_NEW as usize] = 100;
        counters[CS_PROMOTED as usize] = 40;
        counters[CS_EXPIRED_LOOKUP_NEW as usize] = 5;
        let mut c = CtCensus::default();
        c.expired[TABLE_NEW] = 10;
        // The validated table balances on its own: 40 promotions and 1 460 pickups in, 1 000
        // expired and 500 present.
        counters[CS_INSERT_EST as usize] = 1_500;
        c.expired[TABLE_EST] = 1_000;
        c.flushed[TABLE_NEW] = 3;
        c.live[TABLE_NEW][0][usize::from(TCP_SYN_SENT)] = 30;
        c.live[TABLE_EST][0][usize::from(TCP_ESTABLISHED)] = 500;
        assert_eq!(evictions(&counters, &c), 100 - 40 - 5 - 10 - 3 - 30);
        // Never negative: a flow inserted between the sweep and the counters.
        c.live[TABLE_NEW][1][usize::from(UNREPLIED)] = 50;
        assert_eq!(evictions(&counters, &c), 0);
        let census = Census::of(&c, &counters);
        assert_eq!(census.evictions, 0);
        assert_eq!(census.validated, 500);
        assert_eq!(census.unvalidated, 80);
        assert_eq!(census.expired_by_sweep, 1_010);
        assert_eq!(census.expired_on_lookup, 5);
        // Every state a protocol can be in, and no other.
        assert_eq!(census.by_state.len(), 8 + (PROTO_CLASSES - 1) * 2);
        let get = |p: &str, s: &str| {
            census
                .by_state
                .iter()
                .find(|x| x.proto == p && x.state == s)
                .map(|x| x.entries)
        };
        assert_eq!(get("tcp", "syn-sent"), Some(30));
        assert_eq!(get("tcp", "established"), Some(500));
        assert_eq!(get("udp", "unreplied"), Some(50));
        assert_eq!(get("udp", "established"), None);
        assert_eq!(get("tcp", "replied"), None);
    }

    #[test]
    fn metrics_name_every_counter() {
        let s = CtStats {
            counters: CT_STAT_NAMES
                .iter()
                .filter(|n| !n.starts_with("reserved"))
                .enumerate()
                .map(|(i, n)| Named {
                    name: (*n).to_string(),
                    value: i as u64,
                })
                .collect(),
            census: Census::of(&CtCensus::default(), &[]),
            top_sources: vec![SourceCount {
                src: "10.0.0.1".parse().unwrap(),
                entries: 7,
            }],
        };
        let f = metric_families(&s);
        for n in &s.counters {
            assert!(
                counter_help(&n.name).is_some() || EXPORTED_ELSEWHERE.contains(&n.name.as_str()),
                "counter {} has no metric",
                n.name
            );
        }
        let names: Vec<&str> = f.iter().map(|x| x.name.as_str()).collect();
        for want in [
            "palisade_ct_entries",
            "palisade_ct_inserts_total",
            "palisade_ct_insert_failures_total",
            "palisade_ct_evictions_total",
            "palisade_ct_expirations_total",
            "palisade_ct_top_source_entries",
            "palisade_ct_overload_members",
            "palisade_ct_overload_additions_total",
        ] {
            assert_eq!(names.iter().filter(|n| **n == want).count(), 1, "{want}");
        }
        let inserts = f
            .iter()
            .find(|x| x.name == "palisade_ct_inserts_total")
            .unwrap();
        assert_eq!(inserts.samples.len(), 2);
    }
}
