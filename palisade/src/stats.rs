//! Reading the kernel's per-CPU counters, and per-rule totals that survive policy changes.
//!
//! Rule counters live per generation, in the generation's `FW_RULE_STATS` table (the default
//! action's in `FW_DEFAULT_STATS`), and are zeroed when a new policy is written into it. [`RuleTotals`] folds a generation's counts
//! into running totals, by rule name, just before its slots are reused, so a rule's packets
//! and bytes keep counting up across reloads and live changes.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::AsFd as _,
};

use anyhow::Result;
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use palisade_common::{
    dns::maps::{DNS_STATS_PER_SCOPE, SCOPES, STAT_NAMES},
    firewall::{DEFAULT_SLOT, PolicyHeader, RuleStats, rule_stats_slot},
    reason,
    shield::SH_NAMES,
    stats,
};
use serde::{Deserialize, Serialize};

use crate::maps::map;

/// The rule counters of one generation, read at once.
pub struct GenerationCounters {
    /// The generation's counter table, slot by slot (`rule_stats_slot`).
    slots: Vec<RuleStats>,
    /// Slots per CPU.
    stride: u32,
    default: RuleStats,
}

impl GenerationCounters {
    /// Reads generation `generation`'s counters in `ebpf`.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn open(ebpf: &Ebpf, generation: u32) -> Result<Self> {
        let generation = generation & 1;
        let defaults: PerCpuArray<&MapData, RuleStats> =
            PerCpuArray::try_from(map(ebpf, "FW_DEFAULT_STATS")?)?;
        let default = summed_stats(defaults.get(&generation, 0)?.iter());
        let header: aya::maps::Array<&MapData, PolicyHeader> =
            aya::maps::Array::try_from(map(ebpf, "FW_HEADER")?)?;
        let stride = header.get(&generation, 0)?.rule_stride;
        let mut slots = Vec::new();
        if let Some(t) = crate::capacity::table(ebpf, crate::capacity::Kind::RuleStats, generation)?
        {
            let (ks, vs) = (size_of::<u32>(), size_of::<RuleStats>());
            crate::pin::map_chunks_batch(t.fd().as_fd(), ks, vs, 1 << 16, |k, v| {
                for (k, v) in k.chunks_exact(ks).zip(v.chunks_exact(vs)) {
                    let slot = u32::from_ne_bytes([k[0], k[1], k[2], k[3]]) as usize;
                    if slots.len() <= slot {
                        slots.resize(slot + 1, RuleStats::default());
                    }
                    // SAFETY: the bytes of one value, written by the kernel.
                    slots[slot] = unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) };
                }
            })
            .map_err(|e| anyhow::anyhow!("reading the rule counters: {e}"))?;
        }
        Ok(Self {
            slots,
            stride,
            default,
        })
    }

    /// Packets and bytes that hit `rule` (evaluation index or `DEFAULT_SLOT`), summed over
    /// CPUs; zero for a rule past the table.
    #[must_use]
    pub fn get(&self, rule: u32) -> RuleStats {
        if rule == DEFAULT_SLOT {
            return self.default;
        }
        if rule >= self.stride {
            return RuleStats::default();
        }
        let runs = (0..crate::capacity::possible_cpus()).filter_map(|cpu| {
            self.slots
                .get(rule_stats_slot(self.stride, cpu, rule) as usize)
        });
        summed_stats(runs)
    }
}

fn summed_stats<'a>(v: impl IntoIterator<Item = &'a RuleStats>) -> RuleStats {
    v.into_iter().fold(RuleStats::default(), |a, s| RuleStats {
        packets: a.packets + s.packets,
        bytes: a.bytes + s.bytes,
    })
}

/// Packets and bytes that hit `rule` (evaluation index or `DEFAULT_SLOT`) in `generation`,
/// summed over CPUs.
///
/// # Errors
/// When the maps cannot be read.
pub fn rule_stats(ebpf: &Ebpf, generation: u32, rule: u32) -> Result<RuleStats> {
    Ok(GenerationCounters::open(ebpf, generation)?.get(rule))
}

/// Entry `index` of the per-CPU `u64` array `name`, summed over CPUs (0 when unreadable).
#[must_use]
pub fn sum_u64(ebpf: &Ebpf, name: &str, index: u32) -> u64 {
    let Ok(m) = map(ebpf, name) else { return 0 };
    let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(m) else {
        return 0;
    };
    arr.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// Every entry of the per-CPU `u64` array `name` (a feature's counters), summed over CPUs.
///
/// # Errors
/// When the map cannot be read.
pub fn summed<const N: usize>(ebpf: &Ebpf, name: &str) -> Result<[u64; N]> {
    let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(ebpf, name)?)?;
    let mut out = [0u64; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = m.get(&(i as u32), 0)?.iter().sum();
    }
    Ok(out)
}

/// `values` under `names`, in order; empty when the counters could not be read.
#[must_use]
pub fn named<const N: usize>(names: &[&str], values: Result<[u64; N]>) -> Vec<Named> {
    let Ok(values) = values else {
        return Vec::new();
    };
    names
        .iter()
        .zip(values)
        .map(|(name, value)| Named {
            name: (*name).to_string(),
            value,
        })
        .collect()
}

/// One named counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    pub name: String,
    pub value: u64,
}

/// One DNS counter of one scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCounter {
    pub scope: String,
    pub name: String,
    pub value: u64,
}

/// A rule's running totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounter {
    /// The rule's name, `#index` for an unnamed rule, or `default`.
    pub rule: String,
    /// `allow`, `drop`, `rate-limit` (or `gone` for a rule no longer in the policy).
    pub action: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Every counter, as `palisade stats` and the metrics endpoint show them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// `packets`, `passed`, `dropped`, `not_ip`, `events_lost`, ... (see `palisade_common::stats`).
    pub global: Vec<Named>,
    /// Drops by reason, every reason but `pass`.
    pub reasons: Vec<Named>,
    pub dns: Vec<DnsCounter>,
    pub rules: Vec<RuleCounter>,
    /// The shields' counters (`palisade_common::shield::SH_NAMES`).
    #[serde(default)]
    pub shield: Vec<Named>,
    /// The scrub's counters, `<direction>_<event>` (see `crate::scrub::named_counters`).
    #[serde(default)]
    pub scrub: Vec<Named>,
    /// The NAT's counters (`palisade_common::nat::NS_NAMES`).
    #[serde(default)]
    pub nat: Vec<Named>,
    /// The load balancer's counters (`palisade_common::lb::LS_NAMES`).
    #[serde(default)]
    pub lb: Vec<Named>,
    /// The TLS gate's counters (`palisade_common::tls::gate::TS_NAMES`).
    #[serde(default)]
    pub tls: Vec<Named>,
    /// DHCP snooping's counters (`palisade_common::dhcp::DS_NAMES`).
    #[serde(default)]
    pub dhcp: Vec<Named>,
    /// The indicator match's counters, `<direction>_<event>` and `feed_<id>_hits` (see
    /// `crate::intel::named_counters`).
    #[serde(default)]
    pub intel: Vec<Named>,
    /// DNS binding's counters (`palisade_common::dnsbind::BIND_STAT_NAMES`).
    #[serde(default)]
    pub bind: Vec<Named>,
    /// The DNS response cache's counters (`palisade_common::dns::cache::CACHE_STAT_NAMES`),
    /// then `entries` (a gauge) and `evictions` (see `crate::dns::cache::named_counters`).
    #[serde(default)]
    pub dns_cache: Vec<Named>,
    /// The firewall's actions beyond allow and drop (`palisade_common::action::AS_NAMES`).
    #[serde(default)]
    pub actions: Vec<Named>,
    /// The `redirect` action (`palisade_common::redirect::RS_NAMES`).
    #[serde(default)]
    pub redirect: Vec<Named>,
    /// The `steer` action (`palisade_common::steer::SS_NAMES`).
    #[serde(default)]
    pub steer: Vec<Named>,
    /// The IDS's counters, when the policy has `[ids]`: the kernel's
    /// (`palisade_common::ids::IS_NAMES`), the daemon's, then `sid_<sid>` alerts per rule
    /// (see `crate::ids::runtime::Runtime::named_counters`).
    #[serde(default)]
    pub ids: Vec<Named>,
    /// DLP's counters, when the policy has `[dlp]` (see
    /// `crate::dlp::probe::Watcher::all_counters`): the probes', the watcher's, and
    /// `matches_<detector>` per detector.
    #[serde(default)]
    pub dlp: Vec<Named>,
}

impl Counters {
    /// A global counter by name (0 when unknown).
    #[must_use]
    pub fn global(&self, name: &str) -> u64 {
        self.global
            .iter()
            .find(|n| n.name == name)
            .map_or(0, |n| n.value)
    }
}

/// Reads the global, reason and DNS counters.
#[must_use]
pub fn read_kernel_counters(ebpf: &Ebpf) -> Counters {
    let global = (0..stats::COUNT)
        .map(|i| Named {
            name: stats::NAMES[i as usize].to_string(),
            value: sum_u64(ebpf, "STATS", i),
        })
        .collect();
    let reasons = (1..reason::COUNT)
        .filter(|&r| reason::name(r) != "reserved")
        .map(|r| Named {
            name: reason::name(r).to_string(),
            value: sum_u64(ebpf, "REASON_STATS", r),
        })
        .collect();
    let mut dns = Vec::new();
    for scope in 0..SCOPES {
        for c in 0..DNS_STATS_PER_SCOPE {
            let name = STAT_NAMES[c as usize];
            if name.starts_with("reserved") {
                continue;
            }
            dns.push(DnsCounter {
                scope: if scope == 0 { "ingress" } else { "egress" }.to_string(),
                name: name.to_string(),
                value: sum_u64(ebpf, "DNS_STATS", scope * DNS_STATS_PER_SCOPE + c),
            });
        }
    }
    Counters {
        global,
        reasons,
        dns,
        rules: Vec::new(),
        shield: shield_counters(ebpf),
        scrub: crate::scrub::named_counters(ebpf),
        nat: crate::nat::named_counters(ebpf),
        lb: crate::lb::named_counters(ebpf),
        tls: crate::tls::named_counters(ebpf),
        dhcp: crate::dhcp::named_counters(ebpf),
        intel: crate::intel::named_counters(ebpf),
        bind: crate::dnsbind::named_counters(ebpf),
        dns_cache: crate::dns::cache::named_counters(ebpf),
        actions: action_counters(ebpf),
        redirect: redirect_counters(ebpf),
        steer: steer_counters(ebpf),
        ids: Vec::new(),
        dlp: Vec::new(),
    }
}

/// The actions' counters (`palisade_common::action::AS_NAMES`), by name; the reserved slots
/// left out.
#[must_use]
pub fn action_counters(ebpf: &Ebpf) -> Vec<Named> {
    use palisade_common::action::AS_NAMES;
    AS_NAMES
        .iter()
        .enumerate()
        .filter(|(_, name)| !name.starts_with("reserved"))
        .map(|(i, name)| Named {
            name: (*name).to_string(),
            value: sum_u64(ebpf, "ACTION_STATS", i as u32),
        })
        .collect()
}

/// The `redirect` action's counters (`palisade_common::redirect::RS_NAMES`), by name.
#[must_use]
pub fn redirect_counters(ebpf: &Ebpf) -> Vec<Named> {
    palisade_common::redirect::RS_NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| Named {
            name: (*name).to_string(),
            value: sum_u64(ebpf, "REDIRECT_STATS", i as u32),
        })
        .collect()
}

/// The `steer` action's counters (`palisade_common::steer::SS_NAMES`), by name, summed over
/// CPUs.
#[must_use]
pub fn steer_counters(ebpf: &Ebpf) -> Vec<Named> {
    palisade_common::steer::SS_NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| Named {
            name: (*name).to_string(),
            value: sum_u64(ebpf, "STEER_STATS", i as u32),
        })
        .collect()
}

/// The shields' counters, by name.
#[must_use]
pub fn shield_counters(ebpf: &Ebpf) -> Vec<Named> {
    SH_NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| Named {
            name: (*name).to_string(),
            value: sum_u64(ebpf, "SHIELD_STATS", i as u32),
        })
        .collect()
}

/// The rules of one installed generation: slot, name and action word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerationRules {
    pub generation: u32,
    /// `(slot, name, action)`, the default action last with slot `DEFAULT_SLOT`.
    pub rules: Vec<(u32, String, String)>,
}

impl GenerationRules {
    /// The rules of `policy` as installed in `generation`.
    #[must_use]
    pub fn of(generation: u32, policy: &crate::policy::model::Policy) -> Self {
        use crate::policy::model::Action;
        let word = |a: &Action| match a {
            Action::Allow => "allow",
            Action::Drop => "drop",
            Action::RateLimit(_) => "rate-limit",
            Action::Mark(_) => "mark",
            Action::Mirror(_) => "mirror",
            Action::Redirect(_) => "redirect",
            Action::Steer(_) => "steer",
        };
        let mut rules: Vec<(u32, String, String)> = policy
            .firewall
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    i as u32,
                    r.name.clone().unwrap_or_else(|| format!("#{i}")),
                    word(&r.action).to_string(),
                )
            })
            .collect();
        rules.push((
            DEFAULT_SLOT,
            "default".to_string(),
            word(&policy.firewall.default_action).to_string(),
        ));
        Self { generation, rules }
    }

    fn read(&self, ebpf: &Ebpf) -> Vec<(String, RuleStats)> {
        let counters = GenerationCounters::open(ebpf, self.generation).ok();
        self.rules
            .iter()
            .map(|(slot, name, _)| {
                (
                    name.clone(),
                    counters.as_ref().map(|c| c.get(*slot)).unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Per-rule totals across generations.
#[derive(Debug, Default)]
pub struct RuleTotals {
    /// Counts of generations whose slots have since been reused.
    folded: HashMap<String, RuleStats>,
    /// The generation before the active one: no longer used, not yet overwritten.
    retired: Option<GenerationRules>,
    /// The active generation.
    pub active: Option<GenerationRules>,
}

impl RuleTotals {
    /// Call just before writing a new policy into the idle generation: folds the retired
    /// generation (about to be overwritten) into the totals.
    pub fn before_install(&mut self, ebpf: &Ebpf) {
        if let Some(retired) = self.retired.take() {
            for (name, s) in retired.read(ebpf) {
                let e = self.folded.entry(name).or_default();
                e.packets += s.packets;
                e.bytes += s.bytes;
            }
        }
    }

    /// Call after an install: `next` is now active and the previous active generation is
    /// retired. After a failed install pass `None`: nothing changed but the retired
    /// generation, already folded, may be partly overwritten.
    pub fn after_install(&mut self, next: Option<GenerationRules>) {
        if let Some(next) = next {
            self.retired = self.active.replace(next);
        }
    }

    /// Every rule's totals: the active policy's rules first, in evaluation order, then rules
    /// that are gone but counted packets.
    #[must_use]
    pub fn totals(&self, ebpf: &Ebpf) -> Vec<RuleCounter> {
        let mut sum: HashMap<String, RuleStats> = self.folded.clone();
        for g in self.retired.iter().chain(self.active.iter()) {
            for (name, s) in g.read(ebpf) {
                let e = sum.entry(name).or_default();
                e.packets += s.packets;
                e.bytes += s.bytes;
            }
        }
        let mut out = Vec::new();
        if let Some(active) = &self.active {
            for (_, name, action) in &active.rules {
                let s = sum.remove(name).unwrap_or_default();
                out.push(RuleCounter {
                    rule: name.clone(),
                    action: action.clone(),
                    packets: s.packets,
                    bytes: s.bytes,
                });
            }
        }
        let gone: BTreeMap<String, RuleStats> =
            sum.into_iter().filter(|(_, s)| s.packets > 0).collect();
        for (name, s) in gone {
            out.push(RuleCounter {
                rule: name,
                action: "gone".to_string(),
                packets: s.packets,
                bytes: s.bytes,
            });
        }
        out
    }
}
