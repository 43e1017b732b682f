//! Threat-intelligence feeds (`[intel]`): lists of addresses, CIDRs and domains, loaded from
//! files or from HTTP servers on the local network, matched in the kernel (see
//! `docs/design/intel.md`).
//!
//! - [`parse`] reads a feed (plain, CSV, STIX 2) into indicators, counting every line it
//!   could not use with its place;
//! - [`fetch`] gets a feed's bytes (a file, or a plain HTTP/1.1 GET);
//! - [`load`] sizes the maps, writes the idle generation and flips it live;
//! - [`Feeds`] keeps the last good version of every feed, so a feed that cannot be loaded
//!   keeps matching with what it had.

pub mod fetch;
pub mod load;
pub mod parse;
pub mod runtime;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use palisade_common::intel::{ACTION_ALERT, ACTION_DROP, ACTION_TAG};

pub use parse::{BadLine, Indicators, parse};

/// The TC egress program that checks destinations (`[intel] egress = true`).
pub const EGRESS: &str = "palisade_intel_egress";

/// Default capacity of the exact address tables (`[intel] max_ips`).
pub const DEFAULT_MAX_IPS: u32 = 1 << 20;
/// Default capacity of the CIDR tries (`[intel] max_cidrs`).
pub const DEFAULT_MAX_CIDRS: u32 = 1 << 18;
/// The largest capacity either may be given (the bench loads 10M addresses and 1M CIDRs).
pub const MAX_CAPACITY: u32 = 1 << 25;
/// Capacity of the exact tables when the policy has no feeds: room for feeds added by a
/// reload (restart with `[intel]` in the policy for more).
pub const STANDBY_IPS: u32 = 1 << 14;
/// Capacity of the CIDR tables when the policy has no feeds.
pub const STANDBY_CIDRS: u32 = 1 << 12;
/// Default refresh interval.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);

/// What a feed's matches do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    #[default]
    Drop,
    Alert,
    Tag,
}

impl Action {
    /// The kernel's code for it.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            Self::Drop => ACTION_DROP,
            Self::Alert => ACTION_ALERT,
            Self::Tag => ACTION_TAG,
        }
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Alert => "alert",
            Self::Tag => "tag",
        }
    }
}

/// How a feed is written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Format {
    /// One indicator a line; `#` starts a comment.
    #[default]
    Plain,
    /// Comma-separated, the indicator in `column` (0-based) or in the column whose header
    /// names it.
    Csv { column: Column },
    /// A STIX 2 bundle: indicators whose pattern is one simple comparison.
    Stix,
}

/// Where a CSV feed holds its indicator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    Index(usize),
    /// A header name: the first line is the header.
    Name(String),
}

impl Default for Column {
    fn default() -> Self {
        Self::Index(0)
    }
}

/// Where a feed comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// `http://host[:port]/path`.
    Http(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Http(u) => f.write_str(u),
        }
    }
}

/// One `[[intel.feed]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    pub name: String,
    pub source: Source,
    pub format: Format,
    pub action: Action,
    pub refresh: Duration,
    /// Line of the policy file.
    pub line: usize,
}

/// The `[intel]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Intel {
    pub feeds: Vec<Feed>,
    /// Capacity of each generation's exact address table and bloom filter.
    pub max_ips: u32,
    /// Capacity of each generation's CIDR trie.
    pub max_cidrs: u32,
    /// Whether TC egress checks destinations too.
    pub egress: bool,
}

impl Intel {
    /// The map capacities this section asks for: without feeds, [`STANDBY_IPS`] and
    /// [`STANDBY_CIDRS`] (under 1 MiB of kernel memory for both generations), so that
    /// `[intel]` can be added by a reload; a reload whose feeds need more is refused.
    #[must_use]
    pub fn sizes(&self) -> load::Sizes {
        if self.feeds.is_empty() {
            load::Sizes {
                ips: STANDBY_IPS,
                cidrs: STANDBY_CIDRS,
            }
        } else {
            load::Sizes {
                ips: self.max_ips.max(1),
                cidrs: self.max_cidrs.max(1),
            }
        }
    }
}

/// The last good indicators of every feed, by name, and what the last attempt said.
#[derive(Debug, Default, Clone)]
pub struct Feeds {
    pub loaded: BTreeMap<String, Loaded>,
}

/// One feed as last loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub indicators: Indicators,
    /// When the good version was read (seconds since the epoch).
    pub at: u64,
    /// The last attempt's error, when it failed (the good version stays).
    pub last_error: Option<String>,
}

/// What one read of a feed gave: its indicators, or why it failed.
pub type Fetched = Result<Indicators, String>;

/// Reads and parses `feed` (no state: this runs on the daemon's feed worker).
pub fn fetch_feed(feed: &Feed) -> Fetched {
    let label = feed.source.to_string();
    fetch::fetch(&feed.source)
        .and_then(|bytes| {
            let text = String::from_utf8_lossy(&bytes);
            parse(&text, &feed.format, &label)
        })
        .map_err(|e| format!("{e:#}"))
}

impl Feeds {
    /// Reads every feed of `intel` (or the one named `only`); a feed that cannot be read or
    /// parsed keeps its last good version (and says so in the returned notes).
    pub fn refresh(&mut self, intel: &Intel, only: Option<&str>) -> Vec<String> {
        let fetched: Vec<(String, Fetched)> = intel
            .feeds
            .iter()
            .filter(|f| only.is_none_or(|n| n == f.name))
            .map(|f| (f.name.clone(), fetch_feed(f)))
            .collect();
        self.apply(intel, fetched)
    }

    /// Takes in what reading feeds gave (by feed name): a good read replaces the feed's
    /// version, a failed one keeps the last good version. Feeds no longer in `intel` are
    /// forgotten.
    pub fn apply(&mut self, intel: &Intel, fetched: Vec<(String, Fetched)>) -> Vec<String> {
        let mut notes = Vec::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (name, result) in fetched {
            let Some(feed) = intel.feeds.iter().find(|f| f.name == name) else {
                continue;
            };
            let label = feed.source.to_string();
            match result {
                Ok(ind) => {
                    for b in ind.bad.iter().take(20) {
                        notes.push(format!("intel feed {}: {b}", feed.name));
                    }
                    if ind.bad.len() > 20 {
                        notes.push(format!(
                            "intel feed {}: {} more bad lines",
                            feed.name,
                            ind.bad.len() - 20
                        ));
                    }
                    self.loaded.insert(
                        feed.name.clone(),
                        Loaded {
                            indicators: ind,
                            at: now,
                            last_error: None,
                        },
                    );
                }
                Err(e) => {
                    let kept = self.loaded.get_mut(&feed.name).map(|l| {
                        l.last_error = Some(e.clone());
                        l.at
                    });
                    notes.push(match kept {
                        Some(at) => format!(
                            "intel feed {} could not be loaded from {label} ({e}); keeping the version read at {at}",
                            feed.name
                        ),
                        None => format!(
                            "intel feed {} could not be loaded from {label} ({e}); it matches nothing until it loads",
                            feed.name
                        ),
                    });
                }
            }
        }
        let names: Vec<&str> = intel.feeds.iter().map(|f| f.name.as_str()).collect();
        self.loaded.retain(|n, _| names.contains(&n.as_str()));
        notes
    }
}

/// Decodes an indicator match from the event ring (kind `KIND_INTEL`): an event of kind
/// `intel` whose verdict is the feed's action and whose `rule` is the feed's name (from
/// `feed_name`, by feed id).
#[must_use]
pub fn decode_event(
    bytes: &[u8],
    feed_name: &dyn Fn(u32) -> Option<String>,
) -> Option<crate::events::Event> {
    use palisade_common::{event::FirewallEvent, intel::KIND_INTEL};
    if bytes.len() < size_of::<FirewallEvent>() {
        return None;
    }
    // SAFETY: FirewallEvent is plain old data and the length was checked.
    let e: FirewallEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if e.kind != KIND_INTEL {
        return None;
    }
    Some(crate::events::Event {
        kind: "intel",
        timestamp_ns: e.timestamp_ns,
        verdict: match e.action {
            ACTION_DROP => "drop",
            ACTION_ALERT => "alert",
            ACTION_TAG => "tag",
            _ => "unknown",
        },
        reason: palisade_common::reason::name(e.reason),
        rule: Some(feed_name(e.rule).unwrap_or_else(|| format!("feed#{}", e.rule))),
        generation: e.generation,
        ifindex: e.ifindex,
        src: Some(parse::ip_of(e.src)),
        dst: Some(parse::ip_of(e.dst)),
        proto: e.proto,
        sport: e.sport,
        dport: e.dport,
        len: e.packet_len,
        intel_tagged: e.flags & palisade_common::event::FLAG_INTEL_TAGGED != 0,
    })
}

/// The addresses in `INTEL_TAGGED` (tagged by a feed with `action = "tag"`), keyed as the
/// maps key them; empty when the map cannot be read.
#[must_use]
pub fn tagged(ebpf: &aya::Ebpf) -> std::collections::HashSet<[u8; 16]> {
    use aya::maps::{HashMap, MapData};
    let Ok(m) = crate::maps::map(ebpf, "INTEL_TAGGED") else {
        return std::collections::HashSet::new();
    };
    let Ok(t) = HashMap::<&MapData, [u8; 16], [u8; 16]>::try_from(m) else {
        return std::collections::HashSet::new();
    };
    t.keys().filter_map(Result::ok).collect()
}

/// Whether `addr` (keyed as the maps key it) is in `INTEL_TAGGED`; false when the map
/// cannot be read.
#[must_use]
pub fn is_tagged(ebpf: &aya::Ebpf, addr: &[u8; 16]) -> bool {
    use aya::maps::{HashMap, MapData};
    crate::maps::map(ebpf, "INTEL_TAGGED")
        .ok()
        .and_then(|m| HashMap::<&MapData, [u8; 16], [u8; 16]>::try_from(m).ok())
        .is_some_and(|t| t.get(addr, 0).is_ok())
}

/// The kernel's indicator counters by name: `<direction>_<event>` (`ingress_hit_ip`, ...)
/// and `feed_<id>_hits` for every feed that matched.
#[must_use]
pub fn named_counters(ebpf: &aya::Ebpf) -> Vec<crate::stats::Named> {
    use palisade_common::intel::{COUNTER_NAMES, IS_FEED_HITS, IS_PER_DIRECTION};
    let Ok(c) = load::counters(ebpf) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (d, dir) in ["ingress", "egress"].iter().enumerate() {
        for (i, name) in COUNTER_NAMES.iter().enumerate() {
            out.push(crate::stats::Named {
                name: format!("{dir}_{name}"),
                value: c[d * IS_PER_DIRECTION as usize + i],
            });
        }
    }
    for (id, v) in c.iter().enumerate().skip(IS_FEED_HITS as usize) {
        if *v > 0 {
            out.push(crate::stats::Named {
                name: format!("feed_{}_hits", id - IS_FEED_HITS as usize),
                value: *v,
            });
        }
    }
    out
}
