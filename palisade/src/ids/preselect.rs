//! Builds the kernel's preselection tables from the rules: port groups and the gram bitmap.

use std::collections::BTreeMap;

use palisade_common::ids::{
    IDS_GRAM_MIN, IDS_MODE_ALL, IDS_MODE_PREFILTER, IDS_WINDOW, IdsGrams, IdsPortGroup, IdsPortKey,
};

use super::rules::{Content, PortSet, Proto, Rule};

/// Rules whose port set lists more ports than this join the `any` group (port 0).
pub const MAX_GROUP_PORTS: u32 = 64;
/// Port groups at most (the capacity of the kernel's port-group map).
pub const MAX_PORT_GROUPS: usize = 4096;

pub struct Preselect {
    pub grams: IdsGrams,
    pub groups: BTreeMap<IdsPortKey, IdsPortGroup>,
}

impl Preselect {
    #[must_use]
    pub fn build(rules: &[Rule]) -> Self {
        let mut grams = IdsGrams::default();
        let mut groups: BTreeMap<IdsPortKey, IdsPortGroup> = BTreeMap::new();
        for rule in rules {
            let mode = match fast_pattern(&rule.contents) {
                Some(c) if grams.insert(&c.bytes) => IDS_MODE_PREFILTER,
                _ => IDS_MODE_ALL,
            };
            let protos: &[u8] = match rule.proto {
                Proto::Tcp => &[6],
                Proto::Udp => &[17],
                Proto::Icmp => &[1, 58],
                Proto::Ip => &[0],
            };
            for &proto in protos {
                for port in group_ports(rule) {
                    let g = groups.entry(IdsPortKey {
                        proto,
                        _pad: 0,
                        port,
                    });
                    g.or_default().mode |= mode;
                }
            }
        }
        Self { grams, groups }
    }

    /// The union of the groups a packet falls in: (proto, dport), (proto, sport), (proto,
    /// any), (any, any) — the kernel's four lookups.
    #[must_use]
    pub fn mode(&self, proto: u8, sport: u16, dport: u16) -> u32 {
        let mut mode = 0;
        for (proto, port) in [(proto, dport), (proto, sport), (proto, 0), (0, 0)] {
            let proto = if proto == 58 { 1 } else { proto };
            if let Some(g) = self.groups.get(&IdsPortKey {
                proto,
                _pad: 0,
                port,
            }) {
                mode |= g.mode;
            }
        }
        mode
    }
}

/// The ports a rule is grouped under: its server-side port set when it is small and plain,
/// else the `any` group (port 0).
fn group_ports(rule: &Rule) -> Vec<u16> {
    if rule.bidirectional {
        return vec![0];
    }
    let small = |s: &PortSet| -> Option<Vec<u16>> {
        if s.is_any() || !s.exclude.is_empty() {
            return None;
        }
        let n: u32 = s
            .include
            .iter()
            .map(|&(a, b)| u32::from(b) - u32::from(a) + 1)
            .sum();
        if n > MAX_GROUP_PORTS || s.include.iter().any(|&(a, _)| a == 0) {
            return None;
        }
        Some(s.include.iter().flat_map(|&(a, b)| a..=b).collect())
    };
    match (small(&rule.dst_ports), small(&rule.src_ports)) {
        (Some(p), _) if rule.src_ports.is_any() => p,
        (None, Some(p)) if rule.dst_ports.is_any() => p,
        _ => vec![0],
    }
}

/// The content the prefilter keys a rule on: the longest one (of at least
/// [`IDS_GRAM_MIN`] bytes) that must end within the first [`IDS_WINDOW`] bytes of the
/// buffer, following `offset`/`depth` and the chain of `distance`/`within` before it.
/// None: the rule cannot be preselected by content (its group sends every flow).
#[must_use]
pub fn fast_pattern(contents: &[Content]) -> Option<&Content> {
    let mut best: Option<&Content> = None;
    // The furthest end of the previous content's match, if bounded.
    let mut prev_end: Option<i64> = None;
    for c in contents {
        let end = if c.relative() {
            match (prev_end, c.within) {
                (Some(e), Some(w)) => Some(e + i64::from(c.distance.unwrap_or(0)) + i64::from(w)),
                _ => None,
            }
        } else {
            c.depth
                .map(|d| i64::from(c.offset.unwrap_or(0)) + i64::from(d))
        };
        if let Some(e) = end
            && e <= IDS_WINDOW as i64
            && c.bytes.len() >= IDS_GRAM_MIN
            && best.is_none_or(|b| c.bytes.len() > b.bytes.len())
        {
            best = Some(c);
        }
        prev_end = end;
    }
    best
}
