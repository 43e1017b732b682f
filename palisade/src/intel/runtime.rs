//! The daemon's side of `[intel]`: feeds read at start and on their schedule, each refresh
//! compiled and swapped in; domains handed to the DNS policy.

use std::time::{Duration, Instant};

use anyhow::Result;
use aya::Ebpf;

use palisade_common::intel::{ACTION_ALERT, ACTION_TAG};

use super::{Action, Feed, Feeds, Fetched, Intel, fetch_feed, load};
use crate::policy::model::{DnsMode, NameEntry, NameList, NameMatch, Policy};

/// What the daemon keeps between refreshes.
#[derive(Debug)]
pub struct Runtime {
    pub feeds: Feeds,
    /// When each feed (by index in the policy) is due next.
    due: Vec<Instant>,
    /// The capacities the maps were created with.
    pub sizes: load::Sizes,
    /// Counts of the live generation: addresses, CIDRs, domains.
    pub live: (usize, usize, usize),
    /// Successful swaps and refused ones.
    pub swaps: u64,
    pub refused: u64,
    pub last_error: Option<String>,
    /// The domains of the feeds as last compiled, to tell whether the DNS policy must be
    /// installed again.
    domains: Vec<(String, Vec<String>)>,
    /// The read of the due feeds running on the feed worker thread (which holds
    /// [`Runtime::feeds`] meanwhile).
    pending: Option<std::thread::JoinHandle<Read>>,
}

/// What the feed worker hands back: the feeds with the due ones read again, its notes, and
/// the merged indicators with the idle generation they were written into (not live yet).
struct Read {
    feeds: Feeds,
    notes: Vec<String>,
    written: Result<(load::Compiled, load::Written)>,
}

/// What a refresh changed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub notes: Vec<String>,
    /// The feeds' domains changed: the policy must be installed again for the DNS lists.
    pub domains_changed: bool,
    /// Why the read set was refused (it does not fit the maps); the live one stays.
    pub refused: Option<String>,
}

impl Runtime {
    #[must_use]
    pub fn new(sizes: load::Sizes) -> Self {
        Self {
            feeds: Feeds::default(),
            due: Vec::new(),
            sizes,
            live: (0, 0, 0),
            swaps: 0,
            refused: 0,
            last_error: None,
            domains: Vec::new(),
            pending: None,
        }
    }

    /// The daemon loop's tick. When the worker thread has finished reading the due feeds,
    /// merging them and writing the idle generation, flips that generation live; while it
    /// works, nothing; else starts it on the feeds that are due. The loop never waits for a
    /// feed server nor for the maps' writes: it only flips the control word.
    pub fn tick(&mut self, ebpf: &mut Ebpf, intel: &Intel) -> Outcome {
        let mut out = Outcome::default();
        if let Some(h) = self.pending.take() {
            if !h.is_finished() {
                self.pending = Some(h);
                return out;
            }
            match h.join() {
                Ok(r) => {
                    self.feeds = r.feeds;
                    out.notes.extend(r.notes);
                    self.finish(ebpf, intel, r.written, &mut out);
                }
                Err(_) => {
                    // The worker held the feeds: read every one again at the next tick.
                    self.due.clear();
                    out.notes.push(
                        "intel: the feed worker failed; the live indicators stay".to_string(),
                    );
                }
            }
            return out;
        }
        let now = Instant::now();
        self.due.resize(intel.feeds.len(), now);
        let mut due: Vec<Feed> = Vec::new();
        for (i, feed) in intel.feeds.iter().enumerate() {
            if self.due[i] <= now {
                self.due[i] = now + feed.refresh;
                due.push(feed.clone());
            }
        }
        if due.is_empty() {
            return out;
        }
        let mut idle = match load::idle(ebpf) {
            Ok(i) => i,
            Err(e) => {
                out.notes.push(format!(
                    "intel: the idle generation cannot be opened ({e:#}); the live indicators stay"
                ));
                return out;
            }
        };
        let mut feeds = std::mem::take(&mut self.feeds);
        let intel = intel.clone();
        let sizes = self.sizes;
        let read = move || -> Read {
            let fetched: Vec<(String, Fetched)> = due
                .iter()
                .map(|f| (f.name.clone(), fetch_feed(f)))
                .collect();
            let notes = feeds.apply(&intel, fetched);
            let written = load::compile(&intel, &feeds, sizes).and_then(|c| {
                let w = load::fill(&mut idle, &c)?;
                Ok((c, w))
            });
            Read {
                feeds,
                notes,
                written,
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("palisade-feeds".to_string())
            .spawn(read)
            .map(|h| self.pending = Some(h))
        {
            // The closure, and the feeds with it, is gone: read every one again next tick.
            self.due.clear();
            out.notes.push(format!(
                "intel: the feed worker could not start ({e}); the feeds are read again at the next tick"
            ));
        }
        out
    }

    /// Waits for a read in progress on the worker and drops it (the caller reads every feed
    /// again).
    fn settle(&mut self) {
        if let Some(h) = self.pending.take()
            && let Ok(r) = h.join()
        {
            self.feeds = r.feeds;
        }
    }

    /// Reads every feed of `intel` now, on the calling thread (at start, before the programs
    /// attach, and on a reload), and swaps the result in. A feed that cannot be read keeps
    /// its last good version; a set that does not fit the maps is refused and the live one
    /// stays.
    pub fn refresh(&mut self, ebpf: &mut Ebpf, intel: &Intel) -> Outcome {
        self.settle();
        let now = Instant::now();
        self.due = intel.feeds.iter().map(|f| now + f.refresh).collect();
        let mut out = Outcome {
            notes: self.feeds.refresh(intel, None),
            ..Outcome::default()
        };
        let written = load::compile(intel, &self.feeds, self.sizes).and_then(|c| {
            let mut idle = load::idle(ebpf)?;
            let w = load::fill(&mut idle, &c)?;
            Ok((c, w))
        });
        self.finish(ebpf, intel, written, &mut out);
        out
    }

    /// A reload's change of `[intel]` to `intel`: reads every feed and swaps the result in,
    /// or refuses it (a set that does not fit the maps, created when the daemon started) with
    /// the live indicators and the feeds' last good versions as they were. A section without
    /// feeds empties both generations, so nothing of the old feeds stays in the kernel.
    ///
    /// # Errors
    /// The refusal, naming the capacity that cannot be met.
    pub fn change(&mut self, ebpf: &mut Ebpf, intel: &Intel) -> Result<Outcome, String> {
        self.settle();
        let saved = self.feeds.clone();
        let mut out = self.refresh(ebpf, intel);
        if let Some(why) = out.refused.take() {
            self.feeds = saved;
            let created = if self.sizes == intel.sizes() {
                String::new()
            } else {
                format!(
                    " (the maps were created for {} addresses and {} CIDRs when the daemon \
                     started; restart it to create them for `[intel] max_ips` and `max_cidrs`)",
                    self.sizes.ips, self.sizes.cidrs
                )
            };
            return Err(format!("{why}{created}"));
        }
        if intel.feeds.is_empty() {
            // The generation that was live until now holds the old feeds: empty it too.
            let again = self.refresh(ebpf, intel);
            out.notes.extend(again.notes);
            out.domains_changed |= again.domains_changed;
        }
        Ok(out)
    }

    /// Flips the generation `written` filled live, or reports why not.
    fn finish(
        &mut self,
        ebpf: &mut Ebpf,
        intel: &Intel,
        written: Result<(load::Compiled, load::Written)>,
        out: &mut Outcome,
    ) {
        match written.and_then(|(c, w)| self.swap(ebpf, c, &w)) {
            Ok(c) => {
                out.notes.push(format!(
                    "intel: {} addresses, {} CIDRs, {} domains live from {} feeds (generation {})",
                    c.ips.len(),
                    c.cidrs.len(),
                    c.domains.len(),
                    self.feeds.loaded.len(),
                    load::control(ebpf).map_or(0, |c| c.active)
                ));
                let domains = domain_lists(intel, &self.feeds);
                out.domains_changed = domains != self.domains;
                self.domains = domains;
            }
            Err(e) => {
                self.refused += 1;
                let msg = format!("intel: refresh refused, the live indicators stay: {e:#}");
                self.last_error = Some(msg.clone());
                out.notes.push(msg);
                out.refused = Some(format!("{e:#}"));
            }
        }
    }

    fn swap(
        &mut self,
        ebpf: &mut Ebpf,
        c: load::Compiled,
        w: &load::Written,
    ) -> Result<load::Compiled> {
        load::flip(ebpf, w)?;
        self.swaps += 1;
        self.live = (c.ips.len(), c.cidrs.len(), c.domains.len());
        Ok(c)
    }

    /// `policy` with the domains of its feeds as DNS lists, used by every DNS scope in
    /// blocklist mode: a drop feed's block, an alert or tag feed's pass and are reported
    /// ([`list_name`]).
    #[must_use]
    pub fn with_domains(&self, policy: &Policy) -> Policy {
        with_domains(policy, &self.domains)
    }

    /// The feed whose domains make DNS list `index` of the policy installed from `policy`
    /// (the feeds' lists come after the policy's own), with its action.
    #[must_use]
    pub fn list_feed(&self, policy: &Policy, index: u16) -> Option<(&str, Action)> {
        let (name, _) = self
            .domains
            .get(usize::from(index).checked_sub(policy.dns.lists.len())?)?;
        let action = match list_action(name) {
            ACTION_ALERT => Action::Alert,
            ACTION_TAG => Action::Tag,
            _ => Action::Drop,
        };
        let feed = name.strip_prefix("intel-")?;
        Some((feed.split(':').next().unwrap_or(feed), action))
    }
}

/// The DNS list of a feed's domains: `intel-<feed>` for a drop feed, `intel-<feed>:alert`
/// and `intel-<feed>:tag` for the others. No `[dns.lists]` name holds a `:`, so the DNS
/// compiler tells the feeds' alert and tag lists by it ([`list_action`]).
#[must_use]
pub fn list_name(feed: &Feed) -> String {
    match feed.action {
        Action::Drop => format!("intel-{}", feed.name),
        a => format!("intel-{}:{}", feed.name, a.name()),
    }
}

/// What the entries of DNS list `name` do under a blocklist: [`ACTION_ALERT`] or
/// [`ACTION_TAG`] for an alert or tag feed's list ([`list_name`]), 0 (block) for any other.
#[must_use]
pub fn list_action(name: &str) -> u8 {
    if !name.starts_with("intel-") {
        return 0;
    }
    if name.ends_with(":alert") {
        ACTION_ALERT
    } else if name.ends_with(":tag") {
        ACTION_TAG
    } else {
        0
    }
}

/// The DNS lists the feeds make: `(list name, domains)`, in policy order.
fn domain_lists(intel: &Intel, feeds: &Feeds) -> Vec<(String, Vec<String>)> {
    intel
        .feeds
        .iter()
        .filter_map(|f| {
            let l = feeds.loaded.get(&f.name)?;
            (!l.indicators.domains.is_empty())
                .then(|| (list_name(f), l.indicators.domains.iter().cloned().collect()))
        })
        .collect()
}

/// See [`Runtime::with_domains`].
#[must_use]
pub fn with_domains(policy: &Policy, lists: &[(String, Vec<String>)]) -> Policy {
    let mut p = policy.clone();
    if lists.is_empty() {
        return p;
    }
    for (name, domains) in lists {
        let index = p.dns.lists.len();
        p.dns.lists.push(NameList {
            name: name.clone(),
            entries: domains
                .iter()
                .map(|d| NameEntry {
                    labels: d.split('.').map(|l| l.as_bytes().to_vec()).collect(),
                    kind: NameMatch::ApexAndSubdomains,
                    qtypes: Vec::new(),
                    expires: None,
                    max_entropy_bits: None,
                    line: 0,
                })
                .collect(),
        });
        if let Some(s) = p.dns.ingress.as_mut()
            && s.mode == DnsMode::Blocklist
        {
            s.lists.push(index);
        }
        if let Some(e) = p.dns.egress.as_mut()
            && e.scope.mode == DnsMode::Blocklist
        {
            e.scope.lists.push(index);
        }
    }
    p
}

/// The interval of the daemon's check for feeds that are due.
pub const TICK: Duration = Duration::from_secs(1);
