//! The state maps of the engines a policy may leave unused: flow tables, per-client buckets
//! and record rings that only an engine's own programs touch.
//!
//! The daemon creates them when it starts, sized by the policy it starts with: an engine the
//! policy uses gets its maps at the capacity the object declares (the documented capacity),
//! one it does not use gets [`EngineMap::idle`] entries (a ring buffer: bytes), enough for a
//! reload or live edit that turns it on to work, not to run at scale. The default policy uses
//! none of them. A restart sizes them again: a pin of another size is removed and the map
//! created anew, empty (what it held belonged to an engine that was not in use, or is no
//! longer). A reload that turns on an engine whose maps were created idle says so, and names
//! the restart that gives them their full size ([`grown_by`]). A daemon whose policy comes
//! from the cluster (`--kubernetes`) creates every map here at full size ([`full_sizes`]).
//!
//! Maps indexed by position (arrays of rules, services or sketch cells) are not here: their
//! size is part of their addressing. The DNS event aggregation's direct-mapped slots are the
//! exception: a slot they cannot read has a fallback that is always correct. Nor are hash maps that userspace fills and that must
//! hold all it writes (the load balancer's reverse table, written at each install; DLP's
//! reset list): a small one would make a reload fail half-way, not run small.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::{pin, policy::model::Policy};

/// An engine with maps sized by use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Engine {
    /// `rate-limit` rules: per-source token buckets.
    RateRules,
    /// `mark` and `mirror` rules: the actions handed from XDP to TC on kernels without XDP
    /// metadata.
    PacketActions,
    /// `[dns.ingress]` or `[dns.egress]`: query buckets, answer budgets, TCP streams and
    /// event aggregation.
    DnsInspection,
    /// `[dns.bind]`: resolved addresses and the queries waiting for answers.
    DnsBind,
    /// `[dns.cache]`: queries waiting for the resolver's answer.
    DnsCache,
    /// `[conntrack] max_per_source` or `new_per_source`: per-source counts and the overload set.
    SourceLimits,
    /// `[shield]` per-source limits (`source_rate`, `icmp_echo_*`): the heavy hitters.
    ShieldSources,
    /// `[nat]`: the translation tables.
    Nat,
    /// `[lb]` services: the flow tables.
    Lb,
    /// `[tls]`: handshakes being followed and the segments handed to the daemon.
    Tls,
    /// `[dhcp]`: the records handed to the daemon.
    Dhcp,
    /// `[intel]` feeds: flows tagged by an indicator.
    Intel,
    /// `[ids]`: flows followed and the records handed to the daemon.
    Ids,
    /// `[dlp]`: TLS plaintext in flight and the records handed to the daemon.
    Dlp,
}

impl Engine {
    /// Whether `policy` uses the engine.
    #[must_use]
    pub fn used_by(self, policy: &Policy) -> bool {
        use crate::policy::model::Action;
        match self {
            Self::RateRules => policy
                .firewall
                .rules
                .iter()
                .any(|r| matches!(r.action, Action::RateLimit(_))),
            Self::PacketActions => policy
                .firewall
                .rules
                .iter()
                .any(|r| matches!(r.action, Action::Mark(_) | Action::Mirror(_))),
            Self::DnsInspection => policy.dns.ingress.is_some() || policy.dns.egress.is_some(),
            Self::DnsBind => policy.dns.bind.is_some(),
            Self::DnsCache => policy.dns.cache.as_ref().is_some_and(|c| c.enabled),
            Self::SourceLimits => {
                policy.conntrack.max_per_source != 0 || policy.conntrack.new_per_source != 0
            }
            Self::ShieldSources => policy.shield.sources_on(),
            Self::Nat => policy.nat.any(),
            Self::Lb => !policy.lb.services.is_empty(),
            Self::Tls => policy.tls.enabled,
            Self::Dhcp => policy.dhcp.enabled,
            Self::Intel => !policy.intel.feeds.is_empty(),
            Self::Ids => policy.ids.enabled,
            Self::Dlp => policy.dlp.enabled,
        }
    }

    /// How the policy turns it on, for messages.
    #[must_use]
    pub const fn what(self) -> &'static str {
        match self {
            Self::RateRules => "rate-limit rules",
            Self::PacketActions => "mark and mirror rules",
            Self::DnsInspection => "[dns.ingress]/[dns.egress]",
            Self::DnsBind => "[dns.bind]",
            Self::DnsCache => "[dns.cache]",
            Self::SourceLimits => "[conntrack] per-source limits",
            Self::ShieldSources => "[shield] per-source limits",
            Self::Nat => "[nat]",
            Self::Lb => "[lb] services",
            Self::Tls => "[tls]",
            Self::Dhcp => "[dhcp]",
            Self::Intel => "[intel] feeds",
            Self::Ids => "[ids]",
            Self::Dlp => "[dlp]",
        }
    }
}

/// One map sized by its engine's use.
#[derive(Debug, Clone, Copy)]
pub struct EngineMap {
    pub map: &'static str,
    pub engine: Engine,
    /// Entries (bytes for a ring buffer) when the engine is not in use.
    pub idle: u32,
}

/// Least-recently-used tables keep working at this size (the kernel hands free entries to
/// each CPU in batches of 128).
const IDLE_TABLE: u32 = 1024;
/// Ring buffers: four pages.
const IDLE_RING: u32 = 16 << 10;

const fn table(map: &'static str, engine: Engine) -> EngineMap {
    EngineMap {
        map,
        engine,
        idle: IDLE_TABLE,
    }
}

const fn small(map: &'static str, engine: Engine, idle: u32) -> EngineMap {
    EngineMap { map, engine, idle }
}

const fn ring(map: &'static str, engine: Engine) -> EngineMap {
    EngineMap {
        map,
        engine,
        idle: IDLE_RING,
    }
}

/// Every map sized by use, with its engine.
pub const MAPS: [EngineMap; 30] = [
    table("FW_RATE", Engine::RateRules),
    table("ACTION_HANDOFF", Engine::PacketActions),
    table("DNS_RATE", Engine::DnsInspection),
    table("DNS_ANSWERS", Engine::DnsInspection),
    table("DNS_STREAMS", Engine::DnsInspection),
    table("DNS_EVENT_NAMES", Engine::DnsInspection),
    table("DNS_EVENT_CLIENTS", Engine::DnsInspection),
    // Direct-mapped by hash, yet sized here: a slot past an idle map's end cannot be read,
    // and the programs then take the slower way that is always there (a name sent in full
    // instead of counted, a count in `DNS_EVENT_CLIENTS` instead of its slot).
    small("DNS_EVENT_SEEN", Engine::DnsInspection, 1),
    small("DNS_EVENT_COUNTS", Engine::DnsInspection, 1),
    table("BIND_ADDRS", Engine::DnsBind),
    table("BIND_QUERIES", Engine::DnsBind),
    // Its entries hold a partial TCP message each (2 KiB).
    small("BIND_TCP_PARTIAL", Engine::DnsBind, 128),
    table("DNS_CACHE_PENDING", Engine::DnsCache),
    table("CT_SOURCES", Engine::SourceLimits),
    table("CT_OVERLOAD", Engine::SourceLimits),
    table("SHIELD_HITTERS", Engine::ShieldSources),
    table("NAT_EGRESS", Engine::Nat),
    table("NAT_INGRESS", Engine::Nat),
    table("LB_FLOWS", Engine::Lb),
    table("TLS_FLOWS", Engine::Tls),
    ring("TLS_SEGMENTS", Engine::Tls),
    ring("DHCP_RECORDS", Engine::Dhcp),
    table("INTEL_TAGGED", Engine::Intel),
    table("IDS_FLOWS", Engine::Ids),
    table("IDS_DROPS", Engine::Ids),
    ring("IDS_RECORDS", Engine::Ids),
    table("DLP_INFLIGHT", Engine::Dlp),
    table("DLP_PENDING", Engine::Dlp),
    table("DLP_SSL_FLOW", Engine::Dlp),
    ring("DLP_RECORDS", Engine::Dlp),
];

/// Whether `name` is one of [`MAPS`].
#[must_use]
pub fn is_sized_map(name: &str) -> bool {
    MAPS.iter().any(|m| m.map == name)
}

/// The engines `policy` uses, among those with maps here.
#[must_use]
pub fn used(policy: &Policy) -> Vec<Engine> {
    let mut out: Vec<Engine> = MAPS
        .iter()
        .map(|m| m.engine)
        .filter(|e| e.used_by(policy))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `(map, capacity)` of every map here as a daemon starting with `policy` creates it:
/// `declared` gives the object's capacity of a map in use.
#[must_use]
pub fn sizes(policy: &Policy, declared: impl Fn(&str) -> Option<u32>) -> Vec<(&'static str, u32)> {
    let used = used(policy);
    MAPS.iter()
        .filter_map(|m| {
            if used.contains(&m.engine) {
                declared(m.map).map(|n| (m.map, n))
            } else {
                Some((m.map, m.idle))
            }
        })
        .collect()
}

/// [`sizes`] with the capacities of the embedded object.
///
/// # Errors
/// When the object cannot be parsed.
pub fn sizes_for(policy: &Policy) -> Result<Vec<(&'static str, u32)>> {
    let declared = declared()?;
    Ok(sizes(policy, |n| declared.get(n).copied()))
}

/// Every map here at the capacity the object declares, whatever the policy uses: for a
/// daemon whose policy comes later (`--kubernetes`, where the cluster may turn any engine on).
///
/// # Errors
/// When the object cannot be parsed.
pub fn full_sizes() -> Result<Vec<(&'static str, u32)>> {
    let declared = declared()?;
    Ok(MAPS
        .iter()
        .filter_map(|m| declared.get(m.map).map(|&n| (m.map, n)))
        .collect())
}

fn declared() -> Result<BTreeMap<String, u32>> {
    Ok(crate::loader::map_shapes()?
        .into_iter()
        .map(|s| (s.name, s.max_entries))
        .collect())
}

/// Removes the pins under `layout` of maps here whose capacity is not the one in `sizes`, so
/// that the load creates them anew. Returns a note per engine whose maps were resized.
///
/// # Errors
/// When a pin cannot be read or removed.
pub fn drop_resized(layout: &pin::Layout, sizes: &[(&'static str, u32)]) -> Result<Vec<String>> {
    let mut resized: BTreeMap<Engine, Vec<String>> = BTreeMap::new();
    for &(name, want) in sizes {
        let Some(max) = pin::drop_if_resized(&layout.map(name), want)? else {
            continue;
        };
        let engine = MAPS.iter().find(|m| m.map == name).map(|m| m.engine);
        if let Some(e) = engine {
            resized
                .entry(e)
                .or_default()
                .push(format!("{name} {max} -> {want}"));
        }
    }
    Ok(resized
        .into_iter()
        .map(|(e, maps)| {
            format!(
                "the maps of {} are created anew, empty, at the size its use asks for ({})",
                e.what(),
                maps.join(", ")
            )
        })
        .collect())
}

/// What a reload to `policy` says when it turns on engines whose maps were created idle
/// (`created`: the sizes the running daemon created its maps with): `None` when none.
#[must_use]
pub fn grown_by(policy: &Policy, created: &[(&'static str, u32)]) -> Option<String> {
    let mut short: Vec<String> = Vec::new();
    for e in used(policy) {
        let idle: Vec<String> = MAPS
            .iter()
            .filter(|m| m.engine == e)
            .filter(|m| created.iter().any(|&(n, c)| n == m.map && c == m.idle))
            .map(|m| format!("{} {}", m.map, m.idle))
            .collect();
        if !idle.is_empty() {
            short.push(format!("{} ({})", e.what(), idle.join(", ")));
        }
    }
    (!short.is_empty()).then(|| {
        format!(
            "{} not in use when the daemon started: their maps keep their idle sizes until it restarts",
            short.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::{default_policy, parse_policy};

    fn declared(_: &str) -> Option<u32> {
        Some(1 << 18)
    }

    #[test]
    fn the_default_policy_uses_no_engine_here_and_gets_idle_maps() {
        let p = default_policy();
        assert!(used(&p).is_empty());
        for (name, n) in sizes(&p, declared) {
            let m = MAPS.iter().find(|m| m.map == name).unwrap();
            assert_eq!(n, m.idle, "{name}");
        }
        assert_eq!(sizes(&p, declared).len(), MAPS.len());
    }

    #[test]
    fn an_engine_in_use_gets_the_declared_capacity_and_the_others_stay_idle() {
        let p = parse_policy(
            "[[firewall.rule]]\naction = \"rate-limit\"\nrate = { pps = 10, burst = 10 }\nproto = \"udp\"\n\n[dns.lists.bad]\nnames = [\"bad.example\"]\n\n[dns.ingress]\nmode = \"blocklist\"\nlists = [\"bad\"]\n",
            "t",
            std::path::Path::new("."),
        );
        let p = match p {
            Ok(p) => p,
            Err(e) => panic!("{e:#}"),
        };
        let s = sizes(&p, declared);
        let of = |n: &str| s.iter().find(|(m, _)| *m == n).unwrap().1;
        assert_eq!(of("FW_RATE"), 1 << 18);
        assert_eq!(of("DNS_STREAMS"), 1 << 18);
        assert_eq!(of("LB_FLOWS"), IDLE_TABLE);
        assert_eq!(of("IDS_RECORDS"), IDLE_RING);
        // A reload to it from a daemon started with the default policy says which maps are
        // still idle; from one started with it, nothing.
        let idle = sizes(&default_policy(), declared);
        let msg = grown_by(&p, &idle).unwrap();
        assert!(msg.contains("rate-limit rules (FW_RATE 1024)"), "{msg}");
        assert!(msg.contains("DNS_STREAMS 1024"), "{msg}");
        assert!(!msg.contains("LB_FLOWS"), "{msg}");
        assert_eq!(grown_by(&p, &s), None);
    }

    #[test]
    fn every_map_here_exists_in_the_object_and_is_pinned() {
        let Ok(shapes) = crate::loader::map_shapes() else {
            return; // a build without kernel programs
        };
        for m in MAPS {
            let shape = shapes.iter().find(|s| s.name == m.map);
            let Some(shape) = shape else {
                panic!("{} is not in the object", m.map)
            };
            assert!(pin::is_pinned_map(m.map));
            assert!(
                m.idle <= shape.max_entries,
                "{}: idle above declared",
                m.map
            );
        }
    }
}
