//! Compiles the firewall part of a [`Policy`] into the contents of the kernel maps.
//!
//! The output is generation-neutral: [`crate::firewall::apply`] stamps a generation on keys
//! and set ids when it writes them. The same output drives the userspace tuple-space
//! classifier in [`crate::firewall::classify`], so the map layout is exercised without a kernel.

use std::collections::{BTreeMap, HashMap};

use palisade_common::{
    firewall::{
        ACTION_ALLOW, ACTION_DROP, ACTION_RATE_LIMIT, FRAGMENTS_DROP, FRAGMENTS_MATCH_L3, FlowKey,
        MAX_RULES, MAX_SETS, MAX_TUPLES, POLICY_LOG_DEFAULT, POLICY_LOG_FRAGMENTS,
        POLICY_LOG_MALFORMED, PORT_SPACE, PolicyHeader, RULE_LOG, RULE_RATE_PER_SOURCE, RuleMeta,
        TUPLE_DPORT, TUPLE_DST_SET, TUPLE_PROTO, TUPLE_SPORT, TUPLE_SRC_SET, Tuple,
    },
    packet::{FAMILY_V4, FAMILY_V6},
};

use crate::policy::model::{
    Action, AddrMatch, Cidr, Family, FragmentPolicy, Policy, PortRange, RatePer, Rule, TcpFlags,
    prefix_mask,
};

/// Rule entries per generation. The hash map holds two generations.
pub const MAX_ENTRIES: usize = 2 * 1024 * 1024;

/// Why a valid policy still cannot be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("{count} rules; at most {MAX_RULES} are supported")]
    TooManyRules { count: usize },
    #[error(
        "the rules have {count} distinct shapes (address prefix lengths, sets, protocol, port \
         and flag conditions); at most {MAX_TUPLES} are supported. Rules with the same prefix \
         lengths and the same kinds of condition share a shape"
    )]
    TooManyTuples { count: usize },
    #[error(
        "rule {rule} (line {line}) expands to too many entries: the policy would need more than \
         {MAX_ENTRIES} (wide port ranges crossed with many distinct port boundaries multiply)"
    )]
    TooManyEntries { rule: String, line: usize },
    #[error("{count} sets; at most {MAX_SETS} are supported")]
    TooManySets { count: usize },
}

/// Everything the kernel needs for one generation of the firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledFirewall {
    pub header: PolicyHeader,
    /// Sorted by `best_rule`; `src_set`/`dst_set` hold set indices.
    pub tuples: Vec<Tuple>,
    /// Keys carry the tuple index only (no generation); values are rule indices.
    pub entries: HashMap<FlowKey, u32>,
    /// Indexed by rule evaluation index.
    pub rules: Vec<RuleMeta>,
    /// `PORT_SPACE` entries each.
    pub sport_class: Vec<u16>,
    pub dport_class: Vec<u16>,
    /// Members of each set, by set index.
    pub sets: Vec<Vec<Cidr>>,
}

/// The shape of one expanded rule condition: what decides which tuple it lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Shape {
    family: u8,
    src: Side,
    dst: Side,
    proto: bool,
    sport: bool,
    dport: bool,
    tcp_flags_mask: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Side {
    Any,
    Prefix(u8),
    Set(u32),
}

/// One alternative of a rule's source or destination.
#[derive(Clone, Copy)]
enum Alt {
    Any,
    Cidr(Cidr),
    Set(u32),
}

impl Alt {
    fn family(self) -> Option<Family> {
        match self {
            Self::Cidr(c) => Some(c.family),
            Self::Any | Self::Set(_) => None,
        }
    }

    fn side(self) -> Side {
        match self {
            Self::Any => Side::Any,
            Self::Cidr(c) => Side::Prefix(c.stored_prefix_len()),
            Self::Set(s) => Side::Set(s),
        }
    }

    fn addr(self) -> [u8; 16] {
        match self {
            Self::Cidr(c) => c.addr,
            Self::Any | Self::Set(_) => [0; 16],
        }
    }
}

fn alternatives(m: &AddrMatch) -> Vec<Alt> {
    match m {
        AddrMatch::Any => vec![Alt::Any],
        AddrMatch::Cidrs(cidrs) => cidrs.iter().copied().map(Alt::Cidr).collect(),
        AddrMatch::Set(s) => vec![Alt::Set(*s as u32)],
    }
}

/// Partition of the port space into classes: every range used by a rule is a union of
/// whole classes, so a packet's class decides every port condition at once.
struct PortClasses {
    class: Vec<u16>,
}

impl PortClasses {
    fn new(ranges: impl Iterator<Item = PortRange>) -> Self {
        let mut starts = vec![false; PORT_SPACE as usize + 1];
        for r in ranges {
            starts[usize::from(r.lo)] = true;
            starts[usize::from(r.hi) + 1] = true;
        }
        let mut class = Vec::with_capacity(PORT_SPACE as usize);
        let mut id: u16 = 0;
        for port in 0..PORT_SPACE as usize {
            if port > 0 && starts[port] {
                // At most 65536 intervals, so ids fit in u16.
                id += 1;
            }
            class.push(id);
        }
        Self { class }
    }

    fn classes_of(&self, r: PortRange) -> std::ops::RangeInclusive<u16> {
        self.class[usize::from(r.lo)]..=self.class[usize::from(r.hi)]
    }
}

/// The port range a rule's destination dimension matches: ports for TCP/UDP, `type << 8 | code`
/// for ICMP.
fn dport_range(rule: &Rule) -> Option<PortRange> {
    if let Some(icmp) = rule.icmp {
        let base = u16::from(icmp.icmp_type) << 8;
        return Some(match icmp.code {
            Some(code) => PortRange {
                lo: base | u16::from(code),
                hi: base | u16::from(code),
            },
            None => PortRange {
                lo: base,
                hi: base | 0xff,
            },
        });
    }
    rule.dst_ports
}

const fn family_code(f: Family) -> u8 {
    match f {
        Family::V4 => FAMILY_V4,
        Family::V6 => FAMILY_V6,
    }
}

fn rule_meta(rule: &Rule) -> RuleMeta {
    let mut meta = RuleMeta {
        flags: if rule.log { RULE_LOG } else { 0 },
        ..RuleMeta::default()
    };
    match rule.action {
        Action::Allow => meta.action = ACTION_ALLOW,
        Action::Drop => meta.action = ACTION_DROP,
        Action::RateLimit(rl) => {
            meta.action = ACTION_RATE_LIMIT;
            if rl.per == RatePer::Source {
                meta.flags |= RULE_RATE_PER_SOURCE;
            }
            let interval = 1_000_000_000 / u64::from(rl.pps.max(1));
            meta.rate_interval_ns = interval;
            meta.rate_tolerance_ns = interval * u64::from(rl.burst.max(1) - 1);
        }
    }
    meta
}

/// Compiles `policy`'s firewall.
///
/// # Errors
/// When the policy, although valid, exceeds what the maps can hold.
pub fn compile(policy: &Policy) -> Result<CompiledFirewall, CompileError> {
    let fw = &policy.firewall;
    if fw.rules.len() > MAX_RULES as usize {
        return Err(CompileError::TooManyRules {
            count: fw.rules.len(),
        });
    }
    if policy.sets.len() > MAX_SETS as usize {
        return Err(CompileError::TooManySets {
            count: policy.sets.len(),
        });
    }
    let sports = PortClasses::new(fw.rules.iter().filter_map(|r| r.src_ports));
    let dports = PortClasses::new(fw.rules.iter().filter_map(dport_range));

    let mut shapes: BTreeMap<Shape, u32> = BTreeMap::new();
    // (shape, key) -> first rule; insertion keeps the first because rules are visited in order.
    let mut keyed: HashMap<(Shape, FlowKey), u32> = HashMap::new();
    for (index, rule) in fw.rules.iter().enumerate() {
        let index = index as u32;
        let sport_range = rule.src_ports;
        let dport_range = dport_range(rule);
        let sport_classes = sport_range.map_or(0..=0, |r| sports.classes_of(r));
        let dport_classes = dport_range.map_or(0..=0, |r| dports.classes_of(r));
        let flags = rule.tcp_flags.unwrap_or(TcpFlags { value: 0, mask: 0 });
        for src in alternatives(&rule.src) {
            for dst in alternatives(&rule.dst) {
                let family = match (src.family(), dst.family()) {
                    (Some(a), Some(b)) if a != b => continue,
                    (Some(f), _) | (None, Some(f)) => family_code(f),
                    (None, None) => 0,
                };
                let shape = Shape {
                    family,
                    src: src.side(),
                    dst: dst.side(),
                    proto: rule.protocol.is_some(),
                    sport: sport_range.is_some(),
                    dport: dport_range.is_some(),
                    tcp_flags_mask: flags.mask,
                };
                let best = shapes.entry(shape).or_insert(index);
                *best = (*best).min(index);
                for sc in sport_classes.clone() {
                    for dc in dport_classes.clone() {
                        let key = FlowKey {
                            tuple: 0,
                            src: src.addr(),
                            dst: dst.addr(),
                            sport_class: sc,
                            dport_class: dc,
                            proto: rule.protocol.map_or(0, |p| p.number()),
                            tcp_flags: flags.value,
                            _pad: [0; 2],
                        };
                        keyed.entry((shape, key)).or_insert(index);
                        if keyed.len() > MAX_ENTRIES {
                            return Err(CompileError::TooManyEntries {
                                rule: rule.name.clone().unwrap_or_else(|| format!("#{index}")),
                                line: rule.line,
                            });
                        }
                    }
                }
            }
        }
    }
    if shapes.len() > MAX_TUPLES as usize {
        return Err(CompileError::TooManyTuples {
            count: shapes.len(),
        });
    }
    let mut ordered: Vec<(Shape, u32)> = shapes.into_iter().collect();
    ordered.sort_by_key(|&(shape, best)| (best, shape));
    let tuple_index: HashMap<Shape, u32> = ordered
        .iter()
        .enumerate()
        .map(|(i, (s, _))| (*s, i as u32))
        .collect();
    let tuples = ordered
        .iter()
        .map(|&(shape, best)| tuple_of(shape, best))
        .collect();
    let entries = keyed
        .into_iter()
        .map(|((shape, mut key), rule)| {
            key.tuple = tuple_index[&shape];
            (key, rule)
        })
        .collect();

    let mut flags = 0;
    if fw.log_default {
        flags |= POLICY_LOG_DEFAULT;
    }
    // Malformed packets and dropped fragments are reported with the default drops: all three
    // are drops no rule asked for.
    if fw.log_default {
        flags |= POLICY_LOG_MALFORMED | POLICY_LOG_FRAGMENTS;
    }
    let header = PolicyHeader {
        tuple_count: ordered.len() as u32,
        rule_count: fw.rules.len() as u32,
        default_action: if fw.default_action == Action::Drop {
            ACTION_DROP
        } else {
            ACTION_ALLOW
        },
        fragments: match fw.fragments {
            FragmentPolicy::Drop => FRAGMENTS_DROP,
            FragmentPolicy::MatchL3 => FRAGMENTS_MATCH_L3,
        },
        flags,
        ..PolicyHeader::default()
    };
    Ok(CompiledFirewall {
        header,
        tuples,
        entries,
        rules: fw.rules.iter().map(rule_meta).collect(),
        sport_class: sports.class,
        dport_class: dports.class,
        sets: policy.sets.iter().map(|s| s.entries.clone()).collect(),
    })
}

fn tuple_of(shape: Shape, best_rule: u32) -> Tuple {
    let mut t = Tuple {
        family: shape.family,
        best_rule,
        tcp_flags_mask: shape.tcp_flags_mask,
        ..Tuple::default()
    };
    for (side, mask, set, flag) in [
        (shape.src, &mut t.src_mask, &mut t.src_set, TUPLE_SRC_SET),
        (shape.dst, &mut t.dst_mask, &mut t.dst_set, TUPLE_DST_SET),
    ] {
        match side {
            Side::Any => {}
            Side::Prefix(bits) => *mask = prefix_mask(bits),
            Side::Set(s) => {
                *set = s;
                t.flags |= flag;
            }
        }
    }
    if shape.proto {
        t.flags |= TUPLE_PROTO;
    }
    if shape.sport {
        t.flags |= TUPLE_SPORT;
    }
    if shape.dport {
        t.flags |= TUPLE_DPORT;
    }
    t
}
