//! What `palisade top` shows, computed from what the daemon's socket gives: counter snapshots
//! (taken every interval) and the event stream. Nothing here draws or does I/O, so every
//! number on the screen can be checked from its inputs.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

/// Samples of each series kept for sparklines and drill-in (two minutes at the default
/// interval).
pub const HISTORY: usize = 120;
/// Keys one event-fed table holds at most (talkers, names, processes, cgroups). When it
/// fills, it keeps the busiest half ([`TOP_KEEP`]); the figures of the rest are forgotten.
pub const TABLE_CAPACITY: usize = 4096;
/// Keys kept when a full table is pruned.
pub const TOP_KEEP: usize = TABLE_CAPACITY / 2;
/// Recent events kept for drill-in.
pub const RECENT_EVENTS: usize = 512;

/// The views, in the order of the tab bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Rules,
    Reasons,
    Talkers,
    Names,
    Processes,
    Cgroups,
    Conntrack,
}

impl View {
    pub const ALL: [View; 7] = [
        View::Rules,
        View::Reasons,
        View::Talkers,
        View::Names,
        View::Processes,
        View::Cgroups,
        View::Conntrack,
    ];

    /// The tab's title.
    #[must_use]
    pub fn title(self) -> &'static str {
        match self {
            View::Rules => "Rules",
            View::Reasons => "Drops",
            View::Talkers => "Talkers",
            View::Names => "Names",
            View::Processes => "Procs",
            View::Cgroups => "Cgroups",
            View::Conntrack => "Conntrack",
        }
    }

    /// Column headers: key, first count, second count, rate, note.
    #[must_use]
    pub fn headers(self) -> [&'static str; 5] {
        match self {
            View::Rules => ["RULE", "PACKETS", "BYTES", "PKT/S", "ACTION"],
            View::Reasons => ["DROP REASON", "DROPS", "", "DROP/S", ""],
            View::Talkers => ["SOURCE", "EVENTS", "DROPS", "EV/S", "LAST"],
            View::Names => ["DNS NAME", "QUERIES", "BLOCKED", "Q/S", "LAST"],
            View::Processes => ["PROCESS", "QUERIES", "BLOCKED", "Q/S", "LAST"],
            View::Cgroups => ["CGROUP", "QUERIES", "BLOCKED", "Q/S", "LAST"],
            View::Conntrack => ["PROTO/STATE", "ENTRIES", "", "", ""],
        }
    }

    /// The next view (`Tab`), wrapping.
    #[must_use]
    pub fn next(self) -> View {
        let i = View::ALL.iter().position(|v| *v == self).unwrap_or(0);
        View::ALL[(i + 1) % View::ALL.len()]
    }

    /// The previous view (`Shift-Tab`), wrapping.
    #[must_use]
    pub fn prev(self) -> View {
        let i = View::ALL.iter().position(|v| *v == self).unwrap_or(0);
        View::ALL[(i + View::ALL.len() - 1) % View::ALL.len()]
    }
}

/// The column rows are sorted by (descending for numbers, ascending for the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    #[default]
    Rate,
    First,
    Second,
    Key,
}

impl SortBy {
    /// The next column (`s`).
    #[must_use]
    pub fn next(self) -> SortBy {
        match self {
            SortBy::Rate => SortBy::First,
            SortBy::First => SortBy::Second,
            SortBy::Second => SortBy::Key,
            SortBy::Key => SortBy::Rate,
        }
    }

    /// Which of the five columns is sorted on.
    #[must_use]
    pub fn column(self) -> usize {
        match self {
            SortBy::Key => 0,
            SortBy::First => 1,
            SortBy::Second => 2,
            SortBy::Rate => 3,
        }
    }
}

/// One row of a view.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: String,
    pub first: u64,
    /// `None` where the view has no second count.
    pub second: Option<u64>,
    /// Per second over the last interval (`None` where the view has no rate).
    pub rate: Option<f64>,
    pub note: String,
}

/// A counted key: running totals, the rate over the last interval and per-interval history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub first: u64,
    pub second: u64,
    pub note: String,
    /// `first` at the previous tick.
    mark: u64,
    pub rate: f64,
    /// Increase of `first` per interval, oldest first.
    pub history: VecDeque<u64>,
}

impl Entry {
    fn tick(&mut self, secs: f64) {
        let d = self.first.saturating_sub(self.mark);
        self.mark = self.first;
        self.rate = if secs > 0.0 { d as f64 / secs } else { 0.0 };
        push_bounded(&mut self.history, d);
    }
}

fn push_bounded(h: &mut VecDeque<u64>, v: u64) {
    if h.len() == HISTORY {
        h.pop_front();
    }
    h.push_back(v);
}

/// Keys and their counts, at most [`TABLE_CAPACITY`] of them.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub entries: HashMap<String, Entry>,
}

impl Table {
    /// Adds to a key fed by events; `second` counts the blocked ones.
    pub fn add(&mut self, key: &str, n: u64, blocked: bool, note: &str) {
        if !self.entries.contains_key(key) && self.entries.len() >= TABLE_CAPACITY {
            self.prune();
        }
        let e = self.entries.entry(key.to_string()).or_default();
        e.first = e.first.saturating_add(n);
        if blocked {
            e.second = e.second.saturating_add(n);
        }
        note.clone_into(&mut e.note);
    }

    /// Sets a key fed by counters to their current totals. A total that went down (a new
    /// daemon, a rule replaced) restarts the rate from there.
    pub fn set(&mut self, key: &str, first: u64, second: u64, note: &str) {
        let e = self.entries.entry(key.to_string()).or_default();
        if first < e.first {
            e.mark = first;
        }
        e.first = first;
        e.second = second;
        note.clone_into(&mut e.note);
    }

    /// Keeps the [`TOP_KEEP`] keys with the most counted.
    fn prune(&mut self) {
        let mut v: Vec<(String, u64)> = self
            .entries
            .iter()
            .map(|(k, e)| (k.clone(), e.first))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (k, _) in v.into_iter().skip(TOP_KEEP) {
            self.entries.remove(&k);
        }
    }

    fn tick(&mut self, secs: f64) {
        for e in self.entries.values_mut() {
            e.tick(secs);
        }
    }

    fn rows(&self, second: bool, rate: bool) -> Vec<Row> {
        self.entries
            .iter()
            .map(|(k, e)| Row {
                key: k.clone(),
                first: e.first,
                second: second.then_some(e.second),
                rate: rate.then_some(e.rate),
                note: e.note.clone(),
            })
            .collect()
    }
}

/// What one poll of the daemon returned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub packets: u64,
    pub dropped: u64,
    /// DNS queries seen, every scope.
    pub dns_queries: u64,
    pub dns_blocked: u64,
    pub generation: u32,
    pub uptime_secs: u64,
    /// `(rule, action, packets, bytes)`.
    pub rules: Vec<(String, String, u64, u64)>,
    /// `(reason, drops)`.
    pub reasons: Vec<(String, u64)>,
    /// `(rule, conditions)` from the rule list, for drill-in.
    pub rule_matches: Vec<(String, String)>,
    /// Tracked connections, when the policy tracks them: `(validated, unvalidated,
    /// [(proto/state, entries)])`.
    pub conntrack: Option<Conntrack>,
}

/// The connection tables as the daemon's last sweep counted them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conntrack {
    pub validated: u64,
    pub unvalidated: u64,
    /// The tables' capacities, when the daemon says.
    pub capacity: Option<(u64, u64)>,
    pub by_state: Vec<(String, u64)>,
}

/// One event, reduced to what the views count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    /// `firewall`, `dns`, `tls`, ...
    pub kind: String,
    pub verdict: String,
    pub reason: String,
    /// The firewall rule.
    pub rule: Option<String>,
    /// The DNS (or TLS server) name.
    pub name: Option<String>,
    /// The source (firewall) or client (DNS) address.
    pub src: Option<String>,
    /// `comm (pid)` of a DNS query sent by a local process.
    pub process: Option<String>,
    pub cgroup: Option<String>,
    /// How many queries it stands for (a `dns_summary` counts several).
    pub count: u64,
    /// The event as `palisade events` prints it, shortened.
    pub line: String,
}

impl Seen {
    /// Reads one JSON event line; `None` for lines that are not events (a `lost` note).
    #[must_use]
    pub fn parse(line: &str) -> Option<Seen> {
        let v: Value = serde_json::from_str(line).ok()?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let kind = s("kind")?;
        let kind = if kind == "dns_summary" {
            "dns".to_string()
        } else {
            kind
        };
        if kind == "lost" {
            return None;
        }
        let addr = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .filter(|a| !a.is_empty())
        };
        let process = s("comm").map(|c| match v.get("pid").and_then(Value::as_u64) {
            Some(p) => format!("{c} ({p})"),
            None => c,
        });
        let name = s("name").or_else(|| s("sni")).or_else(|| s("hostname"));
        let verdict = s("verdict").unwrap_or_default();
        let reason = s("reason").unwrap_or_default();
        let rule = s("rule");
        let src = addr("src").or_else(|| addr("client"));
        let mut line = format!("{kind} {verdict}");
        for part in [&rule, &name, &src].into_iter().flatten() {
            line.push(' ');
            line.push_str(part);
        }
        if !reason.is_empty() {
            line.push_str(" reason=");
            line.push_str(&reason);
        }
        Some(Seen {
            kind,
            verdict,
            reason,
            rule,
            name,
            src,
            process,
            cgroup: v
                .get("cgroup_id")
                .and_then(Value::as_u64)
                .map(|c| c.to_string()),
            count: v.get("count").and_then(Value::as_u64).unwrap_or(1).max(1),
            line,
        })
    }

    /// Whether the event reports traffic that was stopped.
    #[must_use]
    pub fn blocked(&self) -> bool {
        matches!(self.verdict.as_str(), "drop" | "nxdomain")
    }
}

/// Everything `top` knows, updated by [`Model::apply`] and [`Model::event`].
#[derive(Debug, Clone, Default)]
pub struct Model {
    last: Option<Snapshot>,
    pub packets_rate: VecDeque<u64>,
    pub drops_rate: VecDeque<u64>,
    pub dns_rate: VecDeque<u64>,
    pub rules: Table,
    pub reasons: Table,
    pub talkers: Table,
    pub names: Table,
    pub processes: Table,
    pub cgroups: Table,
    pub conntrack: Table,
    pub recent: VecDeque<Seen>,
    /// Events counted since `top` started.
    pub events: u64,
}

/// Per second, rounded, of an increase over `secs`.
fn per_sec(d: u64, secs: f64) -> u64 {
    if secs > 0.0 {
        (d as f64 / secs).round() as u64
    } else {
        0
    }
}

impl Model {
    /// Takes a new snapshot, `secs` after the one before (the first only sets the base).
    pub fn apply(&mut self, s: Snapshot, secs: f64) {
        if let Some(prev) = &self.last {
            let d = |now: u64, then: u64| per_sec(now.saturating_sub(then), secs);
            push_bounded(&mut self.packets_rate, d(s.packets, prev.packets));
            push_bounded(&mut self.drops_rate, d(s.dropped, prev.dropped));
            push_bounded(&mut self.dns_rate, d(s.dns_queries, prev.dns_queries));
        }
        let first = self.last.is_none();
        for (rule, action, packets, bytes) in &s.rules {
            self.rules.set(rule, *packets, *bytes, action);
        }
        // A rule gone from the policy (and its totals) leaves the view.
        self.rules
            .entries
            .retain(|k, _| s.rules.iter().any(|r| &r.0 == k));
        for (reason, drops) in &s.reasons {
            self.reasons.set(reason, *drops, 0, "");
        }
        self.conntrack.entries.clear();
        if let Some(c) = &s.conntrack {
            for (state, n) in &c.by_state {
                self.conntrack.set(state, *n, 0, "");
            }
        }
        if first {
            // The totals before `top` started are not this interval's traffic.
            for t in [&mut self.rules, &mut self.reasons] {
                for e in t.entries.values_mut() {
                    e.mark = e.first;
                }
            }
        } else {
            for t in self.tables_mut() {
                t.tick(secs);
            }
        }
        self.last = Some(s);
    }

    fn tables_mut(&mut self) -> [&mut Table; 6] {
        [
            &mut self.rules,
            &mut self.reasons,
            &mut self.talkers,
            &mut self.names,
            &mut self.processes,
            &mut self.cgroups,
        ]
    }

    /// Counts one event.
    pub fn event(&mut self, e: Seen) {
        let blocked = e.blocked();
        let n = e.count;
        let what = e
            .rule
            .clone()
            .or_else(|| e.name.clone())
            .unwrap_or_else(|| e.reason.clone());
        if let Some(src) = &e.src {
            self.talkers
                .add(src, n, blocked, &format!("{} {what}", e.verdict));
        }
        if e.kind == "dns" {
            if let Some(name) = &e.name {
                let note = format!("{} {}", e.verdict, e.src.as_deref().unwrap_or(""));
                self.names.add(name, n, blocked, note.trim_end());
            }
            if let Some(p) = &e.process {
                let note = format!("{} {}", e.verdict, e.name.as_deref().unwrap_or(""));
                self.processes.add(p, n, blocked, note.trim_end());
            }
            if let Some(c) = &e.cgroup {
                let note = format!(
                    "{} {}",
                    e.process.as_deref().unwrap_or(""),
                    e.name.as_deref().unwrap_or("")
                );
                self.cgroups.add(c, n, blocked, note.trim());
            }
        }
        self.events = self.events.saturating_add(n);
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(e);
    }

    /// The last snapshot.
    #[must_use]
    pub fn last(&self) -> Option<&Snapshot> {
        self.last.as_ref()
    }

    fn table(&self, v: View) -> &Table {
        match v {
            View::Rules => &self.rules,
            View::Reasons => &self.reasons,
            View::Talkers => &self.talkers,
            View::Names => &self.names,
            View::Processes => &self.processes,
            View::Cgroups => &self.cgroups,
            View::Conntrack => &self.conntrack,
        }
    }

    /// A key's entry in a view.
    #[must_use]
    pub fn entry(&self, v: View, key: &str) -> Option<&Entry> {
        self.table(v).entries.get(key)
    }

    /// A view's rows that contain `filter` (in the key or the note, any case), sorted.
    #[must_use]
    pub fn rows(&self, v: View, filter: &str, sort: SortBy) -> Vec<Row> {
        let (second, rate) = match v {
            View::Reasons => (false, true),
            View::Conntrack => (false, false),
            _ => (true, true),
        };
        let mut rows = self.table(v).rows(second, rate);
        if v == View::Reasons {
            // Forty-odd reasons: the ones that never dropped anything are noise.
            rows.retain(|r| r.first > 0);
        }
        let f = filter.to_lowercase();
        if !f.is_empty() {
            rows.retain(|r| {
                r.key.to_lowercase().contains(&f) || r.note.to_lowercase().contains(&f)
            });
        }
        rows.sort_by(|a, b| {
            let by = match sort {
                SortBy::Rate => b
                    .rate
                    .unwrap_or(0.0)
                    .total_cmp(&a.rate.unwrap_or(0.0))
                    .then(b.first.cmp(&a.first)),
                SortBy::First => b.first.cmp(&a.first),
                SortBy::Second => b.second.cmp(&a.second).then(b.first.cmp(&a.first)),
                SortBy::Key => std::cmp::Ordering::Equal,
            };
            by.then_with(|| a.key.cmp(&b.key))
        });
        rows
    }

    /// The recent events that concern `key` in view `v`, newest first.
    #[must_use]
    pub fn recent_for(&self, v: View, key: &str, max: usize) -> Vec<&Seen> {
        self.recent
            .iter()
            .rev()
            .filter(|e| match v {
                View::Rules => e.rule.as_deref() == Some(key),
                View::Reasons => e.reason == key,
                View::Talkers => e.src.as_deref() == Some(key),
                View::Names => e.name.as_deref() == Some(key),
                View::Processes => e.process.as_deref() == Some(key),
                View::Cgroups => e.cgroup.as_deref() == Some(key),
                View::Conntrack => false,
            })
            .take(max)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(packets: u64, dropped: u64, dns: u64, rule_packets: u64) -> Snapshot {
        Snapshot {
            packets,
            dropped,
            dns_queries: dns,
            rules: vec![
                (
                    "block".into(),
                    "drop".into(),
                    rule_packets,
                    rule_packets * 60,
                ),
                ("web".into(), "allow".into(), 7, 700),
            ],
            reasons: vec![("rule".into(), dropped), ("fragment".into(), 0)],
            ..Snapshot::default()
        }
    }

    #[test]
    fn rates_are_increases_per_second_and_the_first_snapshot_only_sets_the_base() {
        let mut m = Model::default();
        m.apply(snap(1000, 100, 10, 100), 1.0);
        assert!(m.packets_rate.is_empty());
        let r = m.rows(View::Rules, "", SortBy::Rate);
        assert_eq!(
            r[0].rate,
            Some(0.0),
            "totals before top started are no rate"
        );
        m.apply(snap(1500, 300, 30, 300), 0.5);
        assert_eq!(m.packets_rate.back(), Some(&1000));
        assert_eq!(m.drops_rate.back(), Some(&400));
        assert_eq!(m.dns_rate.back(), Some(&40));
        let r = m.rows(View::Rules, "", SortBy::Rate);
        assert_eq!(r[0].key, "block");
        assert_eq!(r[0].first, 300);
        assert_eq!(r[0].second, Some(18_000));
        assert_eq!(r[0].rate, Some(400.0));
        assert_eq!(r[0].note, "drop");
        assert_eq!(m.entry(View::Rules, "block").unwrap().history, [200]);
        // A counter that goes down (a new daemon) is no negative rate.
        m.apply(snap(10, 0, 0, 5), 1.0);
        assert_eq!(m.packets_rate.back(), Some(&0));
        assert_eq!(m.rows(View::Rules, "", SortBy::First)[0].rate, Some(0.0));
        m.apply(snap(20, 0, 0, 9), 1.0);
        assert_eq!(m.entry(View::Rules, "block").unwrap().rate, 4.0);
    }

    #[test]
    fn history_is_bounded() {
        let mut m = Model::default();
        for i in 0..(HISTORY as u64 + 50) {
            m.apply(snap(i * 10, i, 0, i), 1.0);
        }
        assert_eq!(m.packets_rate.len(), HISTORY);
        assert!(m.packets_rate.iter().all(|&r| r == 10));
        assert_eq!(
            m.entry(View::Rules, "block").unwrap().history.len(),
            HISTORY
        );
    }

    #[test]
    fn reasons_without_drops_stay_out_and_removed_rules_leave() {
        let mut m = Model::default();
        m.apply(snap(10, 4, 0, 4), 1.0);
        let r = m.rows(View::Reasons, "", SortBy::First);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].key.as_str(), r[0].first), ("rule", 4));
        let mut s = snap(20, 4, 0, 4);
        s.rules.remove(0);
        m.apply(s, 1.0);
        assert_eq!(m.rows(View::Rules, "", SortBy::First).len(), 1);
    }

    fn dns(name: &str, verdict: &str, client: &str, comm: &str, cgroup: u64) -> String {
        format!(
            r#"{{"kind":"dns","verdict":"{verdict}","reason":"dns-list","name":"{name}","client":"{client}","comm":"{comm}","pid":42,"cgroup_id":{cgroup}}}"#
        )
    }

    #[test]
    fn events_feed_talkers_names_processes_and_cgroups() {
        let mut m = Model::default();
        let fw = r#"{"kind":"firewall","verdict":"drop","reason":"rule","rule":"block","src":"10.0.0.2","dst":"10.0.0.1"}"#;
        for _ in 0..3 {
            m.event(Seen::parse(fw).unwrap());
        }
        m.event(Seen::parse(&dns("ads.example", "nxdomain", "10.0.0.3", "curl", 7)).unwrap());
        m.event(Seen::parse(&dns("ok.example", "allow", "10.0.0.3", "curl", 7)).unwrap());
        let summary = r#"{"kind":"dns_summary","verdict":"drop","reason":"dns-list","name":"ads.example","client":"10.0.0.4","count":5}"#;
        m.event(Seen::parse(summary).unwrap());
        assert!(Seen::parse(r#"{"kind":"lost","count":3}"#).is_none());
        assert!(Seen::parse("not json").is_none());
        assert_eq!(m.events, 10);

        let t = m.rows(View::Talkers, "", SortBy::First);
        assert_eq!(
            t.iter()
                .map(|r| (r.key.as_str(), r.first, r.second))
                .collect::<Vec<_>>(),
            [
                ("10.0.0.4", 5, Some(5)),
                ("10.0.0.2", 3, Some(3)),
                ("10.0.0.3", 2, Some(1))
            ]
        );
        assert_eq!(t[1].note, "drop block");
        let n = m.rows(View::Names, "", SortBy::Second);
        assert_eq!(
            (n[0].key.as_str(), n[0].first, n[0].second),
            ("ads.example", 6, Some(6))
        );
        assert_eq!((n[1].key.as_str(), n[1].second), ("ok.example", Some(0)));
        let p = m.rows(View::Processes, "", SortBy::First);
        assert_eq!(
            (p[0].key.as_str(), p[0].first, p[0].second),
            ("curl (42)", 2, Some(1))
        );
        let c = m.rows(View::Cgroups, "", SortBy::First);
        assert_eq!((c[0].key.as_str(), c[0].first), ("7", 2));
        // Drill-in finds the events of one key, newest first.
        let r = m.recent_for(View::Names, "ads.example", 10);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].count, 5);
        assert_eq!(m.recent_for(View::Rules, "block", 10).len(), 3);
    }

    #[test]
    fn event_tables_get_rates_per_interval() {
        let mut m = Model::default();
        m.apply(snap(0, 0, 0, 0), 1.0);
        for _ in 0..6 {
            m.event(Seen::parse(&dns("a.example", "drop", "10.0.0.2", "dig", 1)).unwrap());
        }
        m.apply(snap(0, 0, 0, 0), 2.0);
        assert_eq!(m.entry(View::Names, "a.example").unwrap().rate, 3.0);
        m.apply(snap(0, 0, 0, 0), 1.0);
        let e = m.entry(View::Names, "a.example").unwrap();
        assert_eq!(
            (e.rate, e.history.iter().copied().collect::<Vec<_>>()),
            (0.0, vec![6, 0])
        );
    }

    #[test]
    fn filters_narrow_and_sorts_order() {
        let mut m = Model::default();
        for (name, n) in [("b.example", 3), ("a.example", 1), ("c.other", 2)] {
            for _ in 0..n {
                m.event(Seen::parse(&dns(name, "drop", "10.0.0.9", "dig", 1)).unwrap());
            }
        }
        let keys = |f: &str, s: SortBy| -> Vec<String> {
            m.rows(View::Names, f, s)
                .into_iter()
                .map(|r| r.key)
                .collect()
        };
        assert_eq!(
            keys("", SortBy::First),
            ["b.example", "c.other", "a.example"]
        );
        assert_eq!(keys("", SortBy::Key), ["a.example", "b.example", "c.other"]);
        assert_eq!(keys("EXAMPLE", SortBy::First), ["b.example", "a.example"]);
        assert!(keys("nothing", SortBy::First).is_empty());
        let mut s = SortBy::default();
        let mut seen = vec![];
        for _ in 0..4 {
            seen.push(s.column());
            s = s.next();
        }
        assert_eq!(s, SortBy::default());
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2, 3]);
    }

    #[test]
    fn a_full_table_keeps_its_busiest_half() {
        let mut t = Table::default();
        t.add("busy", 1000, true, "");
        for i in 0..TABLE_CAPACITY * 3 {
            t.add(&format!("k{i}"), 1 + (i % 3) as u64, false, "");
            assert!(t.entries.len() <= TABLE_CAPACITY);
        }
        assert_eq!(t.entries["busy"].first, 1000);
    }

    #[test]
    fn views_cycle() {
        let mut v = View::Rules;
        for _ in 0..View::ALL.len() {
            assert_eq!(v.next().prev(), v);
            v = v.next();
        }
        assert_eq!(v, View::Rules);
    }
}
