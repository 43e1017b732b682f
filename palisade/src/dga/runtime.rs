//! The daemon's side of `[dns.dga]`: names from DNS events are scored once each (a bounded
//! cache), high scores become `dga` events, and, with `list`, the names are added to a DNS
//! list for `ttl` seconds.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::Model;

/// Names whose score is remembered. When full, the oldest name is forgotten (and would be
/// scored, and reported, again).
pub const CACHE_CAPACITY: usize = 16_384;
/// Names added to `list` per [`LIST_WINDOW`] at most: each addition installs the policy
/// again, so a flood of generated names must not turn into a flood of reinstalls. Names
/// over the budget are still reported (`dga` events), not listed, and counted
/// (`list_limited`).
pub const LIST_BUDGET: usize = 600;
/// The window of [`LIST_BUDGET`].
pub const LIST_WINDOW: Duration = Duration::from_secs(60);
/// Additions are applied as one batch at most this often.
pub const LIST_BATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Default `[dns.dga] threshold`: the score above which a name is reported (chosen from
/// the measurement in `bench/results/dga-*.md`: at most 0.1 % of benign test names above).
pub const DEFAULT_THRESHOLD: u16 = 900;
/// Default `[dns.dga] ttl` (seconds) of names added to `list`.
pub const DEFAULT_TTL: u64 = 3600;

/// `[dns.dga]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DgaPolicy {
    pub enabled: bool,
    /// Names scoring above this (`0..=999`) are reported.
    pub threshold: u16,
    /// A `[dns.lists.NAME]` that reported names are added to.
    pub list: Option<String>,
    /// How long names stay in `list`, seconds.
    pub ttl: u64,
}

impl Default for DgaPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: DEFAULT_THRESHOLD,
            list: None,
            ttl: DEFAULT_TTL,
        }
    }
}

/// What the scorer counted (in `palisade stats` and Prometheus).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DgaStats {
    /// Names scored (cache misses).
    pub scored: u64,
    /// Events whose name was already scored.
    pub cached: u64,
    /// Names above the threshold (each reported once while cached).
    pub reported: u64,
    /// Names added to the `list`.
    pub listed: u64,
    /// Additions to the list that were refused.
    pub list_failed: u64,
    /// Names not listed because the [`LIST_BUDGET`] of their window was spent.
    #[serde(default)]
    pub list_limited: u64,
}

/// A high score, reported as a `dga` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DgaEvent {
    /// Always `dga`.
    pub kind: &'static str,
    pub timestamp_ns: u64,
    /// The question name, as in the `dns` event.
    pub name: String,
    /// The label that was scored.
    pub label: String,
    pub score: u16,
    pub threshold: u16,
    /// The DNS event's scope and verdict.
    pub scope: &'static str,
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<std::net::IpAddr>,
    /// The list the name is being added to, when `[dns.dga] list` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
}

impl std::fmt::Display for DgaEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dga {} {} {} label={} score={} threshold={}",
            self.scope, self.verdict, self.name, self.label, self.score, self.threshold
        )?;
        if let Some(c) = self.client {
            write!(f, " client={c}")?;
        }
        if let Some(l) = &self.list {
            write!(f, " list={l}")?;
        }
        Ok(())
    }
}

/// Scores names once each.
#[derive(Debug, Default)]
pub struct Scorer {
    cache: HashMap<String, u16>,
    order: VecDeque<String>,
    pub stats: DgaStats,
    /// Names waiting to be added to the list.
    pub pending: Vec<String>,
    /// The current [`LIST_WINDOW`]: when it started and how many names it listed.
    window: Option<(Instant, usize)>,
    /// When the last batch was taken.
    last_batch: Option<Instant>,
}

/// A name the daemon saw in a `dns` event or a `dns_summary`, with what the `dga` event
/// repeats of it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub name: &'a str,
    pub timestamp_ns: u64,
    pub scope: &'static str,
    pub verdict: &'static str,
    pub client: Option<std::net::IpAddr>,
}

/// What scoring one name found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scored {
    pub label: String,
    pub score: u16,
    /// The name was scored now (not from the cache) and is above the threshold.
    pub report: bool,
}

impl Scorer {
    /// Scores `name` (zone-file text) under `policy`; `None` when the name has no
    /// registrable label. A name above the threshold is reported the first time it is scored
    /// and queued for the list.
    pub fn score(&mut self, policy: &DgaPolicy, name: &str) -> Option<Scored> {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        let label = super::registrable(&key)?;
        if let Some(&score) = self.cache.get(&key) {
            self.stats.cached += 1;
            return Some(Scored {
                label,
                score,
                report: false,
            });
        }
        let score = Model::embedded().score_label(&label);
        self.stats.scored += 1;
        if self.cache.len() >= CACHE_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.cache.remove(&old);
        }
        self.cache.insert(key.clone(), score);
        self.order.push_back(key.clone());
        let report = score > policy.threshold;
        if report {
            self.stats.reported += 1;
            if policy.list.is_some() {
                self.pending.push(key);
            }
        }
        Some(Scored {
            label,
            score,
            report,
        })
    }

    /// Scores the name of a DNS event or summary (`scope`, `verdict`, `client` are the
    /// event's): its score, and a `dga` event when the name is newly above the threshold.
    pub fn check(&mut self, policy: &DgaPolicy, seen: Seen<'_>) -> Option<(u16, Option<DgaEvent>)> {
        let scored = self.score(policy, seen.name)?;
        let event = scored.report.then(|| DgaEvent {
            kind: "dga",
            timestamp_ns: seen.timestamp_ns,
            name: seen.name.to_owned(),
            label: scored.label,
            score: scored.score,
            threshold: policy.threshold,
            scope: seen.scope,
            verdict: seen.verdict,
            client: seen.client,
            list: policy.list.clone(),
        });
        Some((scored.score, event))
    }

    /// The pending names to add to the list now: none until [`LIST_BATCH_INTERVAL`] has
    /// passed since the last batch, and at most what is left of the window's
    /// [`LIST_BUDGET`] (the rest is dropped and counted in `list_limited`).
    pub fn take_listable(&mut self, now: Instant) -> Vec<String> {
        if self.pending.is_empty()
            || self
                .last_batch
                .is_some_and(|t| now.duration_since(t) < LIST_BATCH_INTERVAL)
        {
            return Vec::new();
        }
        self.last_batch = Some(now);
        let (start, used) = match self.window {
            Some((start, used)) if now.duration_since(start) < LIST_WINDOW => (start, used),
            _ => (now, 0),
        };
        let mut names = std::mem::take(&mut self.pending);
        let room = LIST_BUDGET.saturating_sub(used);
        if names.len() > room {
            self.stats.list_limited += (names.len() - room) as u64;
            names.truncate(room);
        }
        self.window = Some((start, used + names.len()));
        names
    }

    /// Names cached now.
    #[must_use]
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_scored_once_and_reported_once() {
        let policy = DgaPolicy {
            threshold: 500,
            list: Some("dga".into()),
            ..DgaPolicy::default()
        };
        let mut s = Scorer::default();
        let first = s.score(&policy, "xjwqkzvbtrplmn.com.").expect("scored");
        assert!(first.report, "{first:?}");
        let again = s.score(&policy, "XJWQKZVBTRPLMN.com").expect("scored");
        assert_eq!((again.score, again.report), (first.score, false));
        assert_eq!(s.stats.scored, 1);
        assert_eq!(s.stats.cached, 1);
        assert_eq!(s.stats.reported, 1);
        assert_eq!(s.pending, vec!["xjwqkzvbtrplmn.com".to_string()]);
        assert!(s.score(&policy, "com.").is_none());
    }

    #[test]
    fn a_summary_name_is_checked_like_an_event_name() {
        let policy = DgaPolicy {
            threshold: 850,
            list: Some("dga".into()),
            ..DgaPolicy::default()
        };
        let mut s = Scorer::default();
        let seen = |name| Seen {
            name,
            timestamp_ns: 7,
            scope: "ingress",
            verdict: "allowed",
            client: Some([192, 0, 2, 1].into()),
        };
        let (score, event) = s
            .check(&policy, seen("xkqzjvwptrbnmfdqzxkvw.test"))
            .expect("scored");
        let event = event.expect("newly high: a dga event");
        assert_eq!((event.score, event.threshold), (score, 850));
        assert_eq!(
            (event.scope, event.verdict, event.timestamp_ns),
            ("ingress", "allowed", 7)
        );
        assert_eq!(event.list.as_deref(), Some("dga"));
        assert_eq!(s.pending, vec!["xkqzjvwptrbnmfdqzxkvw.test".to_string()]);
        // Seen again (another summary interval): scored from the cache, not reported again.
        let (again, none) = s
            .check(&policy, seen("xkqzjvwptrbnmfdqzxkvw.test"))
            .expect("scored");
        assert_eq!((again, none.is_none()), (score, true));
        let (_, benign) = s.check(&policy, seen("allowed.test")).expect("scored");
        assert!(benign.is_none());
        assert_eq!(s.stats.reported, 1);
    }

    #[test]
    fn list_additions_are_batched_and_budgeted() {
        let policy = DgaPolicy {
            threshold: 0,
            list: Some("dga".into()),
            ..DgaPolicy::default()
        };
        let mut s = Scorer::default();
        let t0 = Instant::now();
        let flood = |s: &mut Scorer, from: usize, n: usize| {
            for i in from..from + n {
                s.score(&policy, &format!("qx{i}zkvwj.test"));
            }
        };
        flood(&mut s, 0, 10);
        assert_eq!(s.take_listable(t0).len(), 10);
        flood(&mut s, 10, 5);
        // Within a second of the last batch: kept for the next one.
        assert!(s.take_listable(t0 + Duration::from_millis(500)).is_empty());
        assert_eq!(s.pending.len(), 5);
        flood(&mut s, 15, LIST_BUDGET);
        let t1 = t0 + Duration::from_secs(1);
        let batch = s.take_listable(t1);
        assert_eq!(batch.len(), LIST_BUDGET - 10, "the window's budget");
        assert_eq!(s.stats.list_limited, 15);
        flood(&mut s, 10_000, 3);
        assert!(s.take_listable(t1 + Duration::from_secs(2)).is_empty());
        assert_eq!(s.stats.list_limited, 18);
        // A new window lists again.
        flood(&mut s, 20_000, 4);
        assert_eq!(s.take_listable(t0 + LIST_WINDOW).len(), 4);
    }

    #[test]
    fn the_cache_is_bounded() {
        let policy = DgaPolicy::default();
        let mut s = Scorer::default();
        for i in 0..CACHE_CAPACITY + 10 {
            s.score(&policy, &format!("name{i}.example.com"));
        }
        assert_eq!(s.cached(), CACHE_CAPACITY);
        // The oldest names were forgotten: scored again, not from the cache.
        let before = s.stats.scored;
        s.score(&policy, "name0.example.com");
        assert_eq!(s.stats.scored, before + 1);
    }
}
