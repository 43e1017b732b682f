//! Compiles the firewall part of a [`Policy`] into the contents of the kernel maps.
//!
//! The output is generation-neutral: [`crate::firewall::apply`] stamps a generation on keys
//! and set ids when it writes them. The same output drives the userspace tuple-space
//! classifier in [`crate::firewall::classify`], so the map layout is exercised without a kernel.

use std::collections::{BTreeMap, HashMap};

use palisade_common::{
    firewall::{
        ACTION_ALLOW, ACTION_DROP, ACTION_RATE_LIMIT, FRAGMENTS_DROP, FRAGMENTS_MATCH_L3, FlowKey,
        LINK_DST_MAC, LINK_IFACE, LINK_SRC_MAC, LINK_VLAN, MAX_RATE, MAX_RULE_ENTRIES, MAX_RULES,
        MAX_SET_HOSTS, MAX_SET_PREFIXES, MAX_SETS, MAX_TUPLES, POLICY_CT_TRACK, POLICY_LOG_DEFAULT,
        POLICY_LOG_FRAGMENTS, POLICY_LOG_MALFORMED, POLICY_SHIELD, POLICY_STATEFUL, PORT_SPACE,
        PolicyHeader, RULE_LOG, RULE_RATE_PER_SOURCE, RuleMeta, TUPLE_CT_STATE, TUPLE_DPORT,
        TUPLE_DST_NOT, TUPLE_DST_SET, TUPLE_PROTO, TUPLE_SPORT, TUPLE_SRC_NOT, TUPLE_SRC_SET,
        Tuple, gcra, port_word,
    },
    packet::{FAMILY_V4, FAMILY_V6},
};

use crate::policy::model::{
    Action, AddrMatch, Cidr, Family, FragmentPolicy, IpHeaderMatch, LinkMatch, Negation, Policy,
    PortRange, RatePer, Rule, TcpFlags, prefix_mask,
};

/// Rule entries one generation may ever hold (the most `[firewall] capacity_rules` gives); the
/// rule map of a running daemon may have less room (`crate::capacity`).
pub const MAX_ENTRIES: usize = MAX_RULE_ENTRIES as usize;

/// Why a valid policy still cannot be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("{count} rules; at most {MAX_RULES} are supported")]
    TooManyRules { count: usize },
    #[error(
        "the rules have {count} distinct shapes (address prefix lengths, sets, protocol, port, \
         flag and state conditions, each MAC address, VLAN id and interface used); at most \
         {MAX_TUPLES} are supported. Rules with the same \
         prefix lengths and the same kinds of condition share a shape"
    )]
    TooManyTuples { count: usize },
    #[error(
        "rule {rule} (line {line}) expands to too many entries: the policy would need more than \
         {MAX_ENTRIES}, the most `[firewall] capacity_rules` can give (wide port ranges crossed \
         with many distinct port boundaries multiply)"
    )]
    TooManyEntries { rule: String, line: usize },
    #[error("{count} sets; at most {MAX_SETS} are supported")]
    TooManySets { count: usize },
    /// More set members than one generation's share of the set maps.
    #[error(
        "the sets hold {count} {what} in all; one policy generation may hold at most {limit}, \
         the most `{setting}` can give"
    )]
    TooManySetMembers {
        count: usize,
        what: &'static str,
        limit: u32,
        setting: &'static str,
    },
    #[error(
        "`stateful = true` needs connection tracking, but [conntrack] turns it off \
         (enabled = false)"
    )]
    StatefulWithoutTracking,
    #[error(
        "rule {rule} (line {line}) matches on `state`, which needs connection tracking, but \
         [conntrack] turns it off (enabled = false)"
    )]
    StateWithoutTracking { rule: String, line: usize },
    #[error(
        "rule {rule} (line {line}) limits to {pps} packets a second; at most {MAX_RATE} are \
         supported (the token bucket counts whole nanoseconds between packets)"
    )]
    RateTooHigh { rule: String, line: usize, pps: u32 },
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
    /// By port class: the tuples (bits of [`port_word`]) a packet whose source or
    /// destination port is in that class may match.
    pub sport_tuples: Vec<u64>,
    pub dport_tuples: Vec<u64>,
    /// Members of each set, by set index.
    pub sets: Vec<Vec<Cidr>>,
    /// The set index of `[conntrack] overload_set` when connections are tracked: rules
    /// naming it also match its dynamic members (`SET_OVERLOAD`).
    pub overload_set: Option<usize>,
    /// The country map of `per = "country"` rate limits, when a rule has one: its set index
    /// (also in [`PolicyHeader::country_set`]) and, for each of its members in order, the
    /// country index written as the member's value (every other set's members have value 1).
    pub country_map: Option<(usize, Vec<u8>)>,
    /// The CPUs of `steer` rules with the largest queue size a rule asks for each.
    pub steer_cpus: Vec<(u32, u32)>,
}

impl CompiledFirewall {
    /// The entries of the source (`dst` false) or destination port-class array: each
    /// port's [`port_word`], its class and the tuples its class may match.
    #[must_use]
    pub fn port_words(&self, dst: bool) -> Vec<u64> {
        let (class, tuples) = if dst {
            (&self.dport_class, &self.dport_tuples)
        } else {
            (&self.sport_class, &self.sport_tuples)
        };
        class
            .iter()
            .map(|&c| port_word::new(c, tuples[usize::from(c)]))
            .collect()
    }
}

/// By port class, the tuples (of the first [`port_word::TUPLES`]) a packet with a port of
/// that class may match in the dimension `flag` ([`TUPLE_SPORT`] or [`TUPLE_DPORT`]): the
/// tuples that ignore it, and those holding a key with the class (`class_of` the key's).
fn class_tuples(
    tuples: &[Tuple],
    entries: &HashMap<FlowKey, u32>,
    flag: u8,
    classes: &[u16],
    class_of: fn(&FlowKey) -> u16,
) -> Vec<u64> {
    let known = |i: usize| i < port_word::TUPLES as usize;
    let always = tuples
        .iter()
        .enumerate()
        .filter(|&(i, t)| known(i) && t.flags & flag == 0)
        .fold(0u64, |bits, (i, _)| bits | 1 << i);
    let count = classes.last().map_or(1, |&c| usize::from(c) + 1);
    let mut by_class = vec![always; count];
    for k in entries.keys() {
        let i = k.tuple as usize;
        if known(i)
            && tuples[i].flags & flag != 0
            && let Some(bits) = by_class.get_mut(usize::from(class_of(k)))
        {
            *bits |= 1 << i;
        }
    }
    by_class
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
    state: bool,
    tos_mask: u8,
    ttl_mask: u8,
    length_mask: u16,
    /// Link-layer values are part of the shape (a tuple holds one of each; see
    /// `palisade_common::firewall::link_applies`).
    link: LinkMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Side {
    Any,
    Prefix(u8),
    Set(u32),
    /// Not a member of the set (a negated `src` / `dst`).
    NotSet(u32),
}

/// One alternative of a rule's source or destination.
#[derive(Clone, Copy)]
enum Alt {
    Any,
    Cidr(Cidr),
    Set(u32),
    NotSet(u32),
}

impl Alt {
    fn family(self) -> Option<Family> {
        match self {
            Self::Cidr(c) => Some(c.family),
            Self::Any | Self::Set(_) | Self::NotSet(_) => None,
        }
    }

    fn side(self) -> Side {
        match self {
            Self::Any => Side::Any,
            Self::Cidr(c) => Side::Prefix(c.stored_prefix_len()),
            Self::Set(s) => Side::Set(s),
            Self::NotSet(s) => Side::NotSet(s),
        }
    }

    fn addr(self) -> [u8; 16] {
        match self {
            Self::Cidr(c) => c.addr,
            Self::Any | Self::Set(_) | Self::NotSet(_) => [0; 16],
        }
    }
}

/// The alternatives of a side; a negated side is one: not in its set, or in the set its
/// CIDRs make (`negated`, the id [`NegatedSets`] gave them).
fn side_alternatives(m: &AddrMatch, negated: Option<u32>) -> Vec<Alt> {
    match (m, negated) {
        (AddrMatch::Any, _) | (_, None) => alternatives(m),
        (_, Some(set)) => vec![Alt::NotSet(set)],
    }
}

/// The sets of a compiled policy: the policy's own, then one for each distinct CIDR list a
/// rule negates (a negated list is a tuple-level "not in this set" check, so the hash
/// lookup stays exact).
struct NegatedSets {
    sets: Vec<Vec<Cidr>>,
    /// (rule index, 0 for `src` / 1 for `dst`) -> set id.
    ids: HashMap<(usize, u8), u32>,
}

impl NegatedSets {
    fn new(policy: &Policy) -> Self {
        let mut sets: Vec<Vec<Cidr>> = policy.sets.iter().map(|s| s.entries.clone()).collect();
        let mut by_list: HashMap<Vec<Cidr>, u32> = HashMap::new();
        let mut ids = HashMap::new();
        for (i, rule) in policy.firewall.rules.iter().enumerate() {
            for (side, m, negated) in [(0, &rule.src, rule.not.src), (1, &rule.dst, rule.not.dst)] {
                if !negated {
                    continue;
                }
                let id = match m {
                    AddrMatch::Any => continue,
                    AddrMatch::Set(s) => *s as u32,
                    AddrMatch::Cidrs(list) => *by_list.entry(list.clone()).or_insert_with(|| {
                        sets.push(list.clone());
                        (sets.len() - 1) as u32
                    }),
                };
                ids.insert((i, side), id);
            }
        }
        Self { sets, ids }
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
        for (port, &start) in starts.iter().enumerate().take(PORT_SPACE as usize) {
            if port > 0 && start {
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

    /// The classes of a rule's port condition: `[0]` for none, the classes outside the range
    /// for a negated one (every range boundary is a class boundary, so that is exact).
    fn key_classes(&self, r: Option<PortRange>, negated: bool) -> Vec<u16> {
        match r {
            None => vec![0],
            Some(r) if !negated => self.classes_of(r).collect(),
            Some(r) => {
                let inside = self.classes_of(r);
                let last = self.class[PORT_SPACE as usize - 1];
                (0..=last).filter(|c| !inside.contains(c)).collect()
            }
        }
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

/// The TOS / traffic class value and mask a rule's `dscp` and `ecn` ask for ((0, 0) for
/// neither).
fn tos_match(rule: &Rule) -> (u8, u8) {
    let (mut value, mut mask) = (0, 0);
    if let Some(d) = rule.ip.dscp {
        value |= d << 2;
        mask |= 0xfc;
    }
    if let Some(e) = rule.ip.ecn {
        value |= e & 3;
        mask |= 0x03;
    }
    (value, mask)
}

/// A TTL range as the fewest aligned blocks, each `(value, mask)`: the values `v` with
/// `v & mask == value`. Like a CIDR over one byte, each block's mask is a run of high bits,
/// so a range costs at most 14 blocks (and as many shapes at most 8 distinct masks); `[(0,
/// 0)]` for no condition.
#[must_use]
pub fn ttl_blocks(range: Option<(u8, u8)>) -> Vec<(u8, u8)> {
    range.map_or_else(
        || vec![(0, 0)],
        |(lo, hi)| {
            aligned_blocks(u32::from(lo), u32::from(hi), 8)
                .into_iter()
                .map(|(v, m)| (v as u8, m as u8))
                .collect()
        },
    )
}

/// A `length` range as the fewest aligned blocks over the 16-bit IP length, as
/// [`ttl_blocks`]: at most 30 blocks, whose masks are among 17 runs of high bits; `[(0, 0)]`
/// for no condition.
#[must_use]
pub fn length_blocks(range: Option<(u16, u16)>) -> Vec<(u16, u16)> {
    range.map_or_else(
        || vec![(0, 0)],
        |(lo, hi)| {
            aligned_blocks(u32::from(lo), u32::from(hi), 16)
                .into_iter()
                .map(|(v, m)| (v as u16, m as u16))
                .collect()
        },
    )
}

/// `lo..=hi` (within `bits` bits) as the fewest blocks `(value, mask)` whose size is a power
/// of two and whose start is a multiple of it.
fn aligned_blocks(mut lo: u32, hi: u32, bits: u32) -> Vec<(u32, u32)> {
    let full = 1u32 << bits;
    let mut out = Vec::new();
    while lo <= hi {
        // The largest aligned block starting at `lo` that stays within the range.
        let mut size = 1u32;
        while size < full && lo.is_multiple_of(size * 2) && lo + size * 2 - 1 <= hi {
            size *= 2;
        }
        out.push((lo, !(size - 1) & (full - 1)));
        lo += size;
    }
    out
}

/// The family code used in tuples and set keys.
#[must_use]
pub const fn family_code(f: Family) -> u8 {
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
            if rl.per == RatePer::Country {
                meta.flags |= palisade_common::firewall::RULE_RATE_PER_COUNTRY;
            }
            (meta.rate_interval_ns, meta.rate_tolerance_ns) = gcra(rl.pps, rl.burst);
        }
        Action::Mark(m) => {
            meta.action = palisade_common::firewall::ACTION_MARK;
            if let Some(mark) = m.mark {
                meta.flags |= palisade_common::action::RULE_SET_MARK;
                meta.mark = mark;
            }
            if let Some(dscp) = m.dscp {
                meta.flags |= palisade_common::action::RULE_SET_DSCP;
                meta.dscp = dscp;
            }
        }
        Action::Mirror(m) => {
            meta.action = palisade_common::firewall::ACTION_MIRROR;
            meta.ifindex = m.ifindex;
        }
        Action::Redirect(r) => {
            meta.action = palisade_common::redirect::ACTION_REDIRECT;
            match r {
                crate::policy::model::Redirect::Iface(m) => meta.ifindex = m.ifindex,
                crate::policy::model::Redirect::Table(t) => {
                    meta.flags |= palisade_common::redirect::RULE_REDIRECT_FIB;
                    meta.ifindex = t;
                }
            }
        }
        Action::Steer(s) => {
            meta.action = palisade_common::steer::ACTION_STEER;
            (meta.mark, meta.ifindex, meta.dscp) = palisade_common::steer::pack_cpus(s.cpus());
        }
    }
    meta
}

/// The rules' metadata, each rate limit with its identity ([`rate_id`]), made unique within
/// the policy (two identical rules are two buckets).
fn rule_metas(rules: &[Rule]) -> Vec<RuleMeta> {
    let mut taken = std::collections::HashSet::new();
    rules
        .iter()
        .map(|r| {
            let mut m = rule_meta(r);
            if m.action == ACTION_RATE_LIMIT {
                let mut id = rate_id(r);
                while !taken.insert(id) {
                    id = id.wrapping_add(1);
                }
                m.rate_id = id;
            }
            m
        })
        .collect()
}

/// What identifies a rate-limit rule across reloads: what it matches and how it counts, not
/// its rate, burst, priority, line or logging. A reload that keeps the rule keeps its
/// buckets; one that changes its rate applies the new rate to them.
fn rate_id(rule: &Rule) -> u32 {
    use std::hash::{Hash as _, Hasher as _};
    let per = match rule.action {
        Action::RateLimit(rl) => Some(rl.per),
        _ => None,
    };
    let identity = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}{}{}",
        rule.name,
        per,
        rule.src,
        rule.dst,
        rule.protocol,
        rule.src_ports,
        rule.dst_ports,
        rule.tcp_flags,
        rule.icmp,
        rule.state,
        // Only a rule with a header condition adds to its identity: the buckets of rules
        // without one keep their identity across this version.
        // A `length` condition adds its own part, so rules with the others keep theirs.
        if rule.ip == IpHeaderMatch::default() {
            String::new()
        } else {
            let ip = IpHeaderMatch {
                length: None,
                ..rule.ip
            };
            match rule.ip.length {
                None => format!("|{ip:?}"),
                Some(length) => format!("|{ip:?}|length {length:?}"),
            }
        },
        // Link conditions and negations likewise, only when present.
        match (
            rule.link == LinkMatch::default(),
            rule.not == Negation::default()
        ) {
            (true, true) => String::new(),
            (false, true) => format!("|{:?}", rule.link),
            (true, false) => format!("|{:?}", rule.not),
            (false, false) => format!("|{:?}|{:?}", rule.link, rule.not),
        }
    );
    // SipHash with fixed keys: the same on every run of this build.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    identity.hash(&mut h);
    h.finish() as u32
}

/// The name of rule `index` in messages.
fn rule_label(rule: &Rule, index: usize) -> String {
    rule.name.clone().unwrap_or_else(|| format!("#{index}"))
}

/// The state bits a rule's `state` names, lowest first; `[0]` (the key's state byte left 0)
/// for a rule without `state`.
fn state_bits(rule: &Rule) -> Vec<u8> {
    match rule.state {
        None => vec![0],
        Some(mask) => (0..8).map(|i| 1u8 << i).filter(|b| mask & b != 0).collect(),
    }
}

/// Refuses set members past the hard maxima of one generation: `hosts` single addresses and
/// `prefixes` shorter prefixes, counted over every set. (What the running maps have room
/// for is checked when the policy is installed, `crate::capacity`.)
fn members_fit(hosts: usize, prefixes: usize) -> Result<(), CompileError> {
    for (count, what, limit, setting) in [
        (
            hosts,
            "single addresses",
            MAX_SET_HOSTS,
            "[firewall] capacity_set_hosts",
        ),
        (
            prefixes,
            "prefixes shorter than one address",
            MAX_SET_PREFIXES,
            "[firewall] capacity_set_prefixes",
        ),
    ] {
        if count > limit as usize {
            return Err(CompileError::TooManySetMembers {
                count,
                what,
                limit,
                setting,
            });
        }
    }
    Ok(())
}

/// Compiles `policy`'s firewall.
///
/// A rule with `state` expands, like a port range into its classes, into one key per state
/// bit it names, in a tuple that has [`TUPLE_CT_STATE`]. The header carries
/// [`POLICY_CT_TRACK`] when the policy tracks connections
/// ([`Policy::tracks_connections`]) and [`POLICY_STATEFUL`] with `stateful = true`.
///
/// # Errors
/// When the policy, although valid, exceeds what the maps can hold, or (for a policy built
/// in code, which the config checker would have refused) uses `stateful` or `state` while
/// `[conntrack]` turns tracking off.
pub fn compile(policy: &Policy) -> Result<CompiledFirewall, CompileError> {
    let fw = &policy.firewall;
    if !policy.conntrack.enabled {
        if fw.stateful {
            return Err(CompileError::StatefulWithoutTracking);
        }
        if let Some((index, rule)) = fw.rules.iter().enumerate().find(|(_, r)| r.state.is_some()) {
            return Err(CompileError::StateWithoutTracking {
                rule: rule_label(rule, index),
                line: rule.line,
            });
        }
    }
    for (index, rule) in fw.rules.iter().enumerate() {
        if let Action::RateLimit(rl) = rule.action
            && rl.pps > MAX_RATE
        {
            return Err(CompileError::RateTooHigh {
                rule: rule_label(rule, index),
                line: rule.line,
                pps: rl.pps,
            });
        }
    }
    if fw.rules.len() > MAX_RULES as usize {
        return Err(CompileError::TooManyRules {
            count: fw.rules.len(),
        });
    }
    let mut negated = NegatedSets::new(policy);
    let country_map = country_map(policy, &mut negated.sets);
    if negated.sets.len() > MAX_SETS as usize {
        return Err(CompileError::TooManySets {
            count: negated.sets.len(),
        });
    }
    let members = negated.sets.iter().flatten();
    let hosts = members
        .clone()
        .filter(|m| m.stored_prefix_len() == 128)
        .count();
    members_fit(hosts, members.count() - hosts)?;
    let sports = PortClasses::new(fw.rules.iter().filter_map(|r| r.src_ports));
    let dports = PortClasses::new(fw.rules.iter().filter_map(dport_range));

    let mut shapes: BTreeMap<Shape, u32> = BTreeMap::new();
    // (shape, key) -> first rule; insertion keeps the first because rules are visited in order.
    let mut keyed: HashMap<(Shape, FlowKey), u32> = HashMap::new();
    for (index, rule) in fw.rules.iter().enumerate() {
        let index = index as u32;
        let sport_range = rule.src_ports;
        let dport_range = dport_range(rule);
        let sport_classes = sports.key_classes(sport_range, rule.not.sport);
        let dport_classes = dports.key_classes(dport_range, rule.not.dport);
        // A negated protocol is every other number, one key each.
        let protos: Vec<u8> = match rule.protocol {
            None => vec![0],
            Some(p) if !rule.not.proto => vec![p.number()],
            Some(p) => (0..=255).filter(|&n| n != p.number()).collect(),
        };
        let flags = rule.tcp_flags.unwrap_or(TcpFlags { value: 0, mask: 0 });
        let states = state_bits(rule);
        let (tos, tos_mask) = tos_match(rule);
        let ttls = ttl_blocks(rule.ip.ttl);
        let lengths = length_blocks(rule.ip.length);
        if states.is_empty() {
            // `state` with no bit at all (never written by the config checker) matches
            // nothing, like the reference.
            continue;
        }
        // An `iface` list is one alternative per interface, each in shapes of its own.
        let links = rule.link.alternatives();
        let index_usize = index as usize;
        let src_alts = side_alternatives(&rule.src, negated.ids.get(&(index_usize, 0)).copied());
        let dst_alts = side_alternatives(&rule.dst, negated.ids.get(&(index_usize, 1)).copied());
        for &src in &src_alts {
            for &dst in &dst_alts {
                let family = match (src.family(), dst.family()) {
                    (Some(a), Some(b)) if a != b => continue,
                    (Some(f), _) | (None, Some(f)) => family_code(f),
                    (None, None) => 0,
                };
                for (&(ttl, ttl_mask), &(length, length_mask), link) in ttls
                    .iter()
                    .flat_map(|t| lengths.iter().map(move |l| (t, l)))
                    .flat_map(|(t, l)| links.iter().map(move |k| (t, l, *k)))
                {
                    let shape = Shape {
                        family,
                        src: src.side(),
                        dst: dst.side(),
                        proto: rule.protocol.is_some(),
                        sport: sport_range.is_some(),
                        dport: dport_range.is_some(),
                        tcp_flags_mask: flags.mask,
                        state: rule.state.is_some(),
                        tos_mask,
                        ttl_mask,
                        length_mask,
                        link,
                    };
                    let best = shapes.entry(shape).or_insert(index);
                    *best = (*best).min(index);
                    for &sc in &sport_classes {
                        for &dc in &dport_classes {
                            for (&ct_state, &proto) in states
                                .iter()
                                .flat_map(|s| protos.iter().map(move |p| (s, p)))
                            {
                                let key = FlowKey {
                                    tuple: 0,
                                    src: src.addr(),
                                    dst: dst.addr(),
                                    sport_class: sc,
                                    dport_class: dc,
                                    proto,
                                    tcp_flags: flags.value,
                                    ct_state,
                                    tos,
                                    ttl,
                                    _pad: [0],
                                    length,
                                };
                                keyed.entry((shape, key)).or_insert(index);
                                if keyed.len() > MAX_ENTRIES {
                                    return Err(CompileError::TooManyEntries {
                                        rule: rule_label(rule, index as usize),
                                        line: rule.line,
                                    });
                                }
                            }
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
    let tuples: Vec<Tuple> = ordered
        .iter()
        .map(|&(shape, best)| tuple_of(shape, best))
        .collect();
    let entries: HashMap<FlowKey, u32> = keyed
        .into_iter()
        .map(|((shape, mut key), rule)| {
            key.tuple = tuple_index[&shape];
            (key, rule)
        })
        .collect();
    let sport_tuples = class_tuples(&tuples, &entries, TUPLE_SPORT, &sports.class, |k| {
        k.sport_class
    });
    let dport_tuples = class_tuples(&tuples, &entries, TUPLE_DPORT, &dports.class, |k| {
        k.dport_class
    });

    let mut flags = 0;
    if fw.log_default {
        flags |= POLICY_LOG_DEFAULT;
    }
    // Malformed packets and dropped fragments are reported with the default drops: all three
    // are drops no rule asked for.
    if fw.log_default {
        flags |= POLICY_LOG_MALFORMED | POLICY_LOG_FRAGMENTS;
    }
    if policy.tracks_connections() {
        flags |= POLICY_CT_TRACK;
    }
    if fw.stateful {
        flags |= POLICY_STATEFUL;
    }
    if policy.shield.any() && policy.tracks_connections() {
        flags |= POLICY_SHIELD;
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
        rate_prefix_v4: fw.rate_prefix.v4,
        rate_prefix_v6: fw.rate_prefix.v6,
        link: tuples.iter().fold(0, |bits, t: &Tuple| bits | t.link),
        country_set: country_map.as_ref().map_or(0, |(i, _)| *i as u16),
        rule_stride: 0,
    };
    let mut steer_cpus = std::collections::BTreeMap::<u32, u32>::new();
    for r in &fw.rules {
        if let Action::Steer(s) = r.action {
            for &c in s.cpus() {
                let q = steer_cpus.entry(u32::from(c)).or_insert(0);
                *q = (*q).max(s.queue_size);
            }
        }
    }
    Ok(CompiledFirewall {
        steer_cpus: steer_cpus.into_iter().collect(),
        header,
        tuples,
        entries,
        rules: rule_metas(&fw.rules),
        sport_class: sports.class,
        dport_class: dports.class,
        sport_tuples,
        dport_tuples,
        sets: negated.sets,
        overload_set: policy
            .conntrack
            .overload_set
            .filter(|i| *i < policy.sets.len() && policy.tracks_connections()),
        country_map,
    })
}

/// For a policy with a `per = "country"` rate limit, the country map: every member of the
/// country sets (`country:XX`, each filled from `[geoip]` with all the countries of the
/// data), appended to `sets` as one more set, with each member's country index. The country
/// sets no rule names are emptied in `sets`: their members live once, in the map. `None`
/// (and `sets` untouched) for a policy without such a rule.
fn country_map(policy: &Policy, sets: &mut Vec<Vec<Cidr>>) -> Option<(usize, Vec<u8>)> {
    let per_country = policy
        .firewall
        .rules
        .iter()
        .any(|r| matches!(r.action, Action::RateLimit(rl) if rl.per == RatePer::Country));
    if !per_country {
        return None;
    }
    let named: std::collections::HashSet<usize> = policy
        .firewall
        .rules
        .iter()
        .flat_map(|r| [&r.src, &r.dst])
        .filter_map(|m| match m {
            AddrMatch::Set(s) => Some(*s),
            _ => None,
        })
        .collect();
    let mut members = Vec::new();
    let mut values = Vec::new();
    for (index, set) in policy.sets.iter().enumerate() {
        let Some(country) = crate::geoip::set_country(&set.name)
            .filter(|_| crate::geoip::canonical_set_name(&set.name).as_deref() == Some(&set.name))
            .and_then(crate::geoip::country_index)
        else {
            continue;
        };
        members.extend_from_slice(&set.entries);
        values.resize(members.len(), country);
        if !named.contains(&index)
            && policy.conntrack.overload_set != Some(index)
            && let Some(s) = sets.get_mut(index)
        {
            s.clear();
        }
    }
    sets.push(members);
    Some((sets.len() - 1, values))
}

fn tuple_of(shape: Shape, best_rule: u32) -> Tuple {
    let mut t = Tuple {
        family: shape.family,
        best_rule,
        tcp_flags_mask: shape.tcp_flags_mask,
        tos_mask: shape.tos_mask,
        ttl_mask: shape.ttl_mask,
        length_mask: shape.length_mask,
        ..Tuple::default()
    };
    if let Some(mac) = shape.link.src_mac {
        t.src_mac = mac;
        t.link |= LINK_SRC_MAC;
    }
    if let Some(mac) = shape.link.dst_mac {
        t.dst_mac = mac;
        t.link |= LINK_DST_MAC;
    }
    if let Some(vlan) = shape.link.vlan {
        t.vlan = vlan;
        t.link |= LINK_VLAN;
    }
    if let Some(ifindex) = shape.link.iface {
        t.ifindex = ifindex;
        t.link |= LINK_IFACE;
    }
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
            Side::NotSet(s) => {
                *set = s;
                t.flags |= flag
                    | if flag == TUPLE_SRC_SET {
                        TUPLE_SRC_NOT
                    } else {
                        TUPLE_DST_NOT
                    };
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
    if shape.state {
        t.flags |= TUPLE_CT_STATE;
        t.ct_state_mask = 0xff;
    }
    t.keyless = u8::from(t.is_keyless());
    t
}

#[cfg(test)]
mod tests {
    //! The compiler against the linear reference (through the userspace tuple-space
    //! classifier), and the details of what it emits.

    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use palisade_common::{
        conntrack::{STATE_ALL, STATE_ESTABLISHED, STATE_INVALID, STATE_NEW, STATE_RELATED},
        firewall::{MAX_SETS, MAX_TUPLES, TUPLE_DST_SET, TUPLE_SRC_SET},
        packet::{FRAG_FIRST, FRAG_LATER, FRAG_NONE, IPPROTO_ICMP, IPPROTO_TCP, Packet, v4_mapped},
    };
    use proptest::{prelude::*, sample::Index};

    use super::*;
    use crate::{
        firewall::{classify, reference},
        policy::model::{Conntrack, Firewall, IcmpMatch, IpSet, Protocol, RateLimit},
    };

    // ---------------------------------------------------------------- builders

    fn cidr(text: &str) -> Cidr {
        let (addr, len) = text.split_once('/').expect("CIDR literal");
        Cidr::new(addr.parse().expect("address"), len.parse().expect("prefix")).expect("prefix")
    }

    fn cidrs(list: &[&str]) -> AddrMatch {
        AddrMatch::Cidrs(list.iter().map(|c| cidr(c)).collect())
    }

    fn any_rule() -> Rule {
        Rule {
            name: None,
            priority: 0,
            action: Action::Drop,
            log: false,
            src: AddrMatch::Any,
            dst: AddrMatch::Any,
            protocol: None,
            src_ports: None,
            dst_ports: None,
            tcp_flags: None,
            icmp: None,
            state: None,
            ip: IpHeaderMatch::default(),
            link: LinkMatch::default(),
            not: Negation::default(),
            line: 0,
        }
    }

    fn tcp_rule(dst_ports: Option<(u16, u16)>) -> Rule {
        Rule {
            protocol: Some(Protocol::Tcp),
            dst_ports: dst_ports.map(|(lo, hi)| PortRange { lo, hi }),
            ..any_rule()
        }
    }

    fn policy(rules: Vec<Rule>, sets: Vec<IpSet>) -> Policy {
        Policy {
            shield: crate::shield::Shield::default(),
            scrub: crate::scrub::Scrub::default(),
            nat: crate::nat::Nat::default(),
            lb: crate::lb::Lb::default(),
            tls: crate::tls::Tls::default(),
            dhcp: crate::dhcp::Dhcp::default(),
            intel: crate::intel::Intel::default(),
            dlp: crate::dlp::Dlp::default(),
            geoip: None,
            ids: crate::ids::Ids::default(),
            firewall: Firewall {
                rate_prefix: Default::default(),
                capacity: Default::default(),
                default_action: Action::Drop,
                log_default: false,
                fragments: FragmentPolicy::MatchL3,
                stateful: false,
                rules,
            },
            sets,
            dns: Default::default(),
            conntrack: Conntrack::default(),
        }
    }

    fn set(name: &str, entries: &[&str]) -> IpSet {
        IpSet {
            name: name.to_owned(),
            entries: entries.iter().map(|c| cidr(c)).collect(),
        }
    }

    fn stored(addr: IpAddr) -> [u8; 16] {
        match addr {
            IpAddr::V4(a) => v4_mapped(a.octets()),
            IpAddr::V6(a) => a.octets(),
        }
    }

    /// A packet as `packet::parse` would produce it. The family follows the literal, so
    /// `::ffff:10.0.0.1` is an IPv6 packet carrying an IPv4-mapped address.
    fn packet(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Packet {
        let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "test packet mixes families");
        Packet {
            family: if src.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 },
            proto,
            frag: FRAG_NONE,
            tcp_flags: 0,
            ct_state: 0,
            shield: 0,
            tos: 0,
            ttl: 64,
            src: stored(src),
            dst: stored(dst),
            sport,
            dport,
            l3_offset: 14,
            l4_offset: 34,
            l4_len: 20,
        }
    }

    fn tcp(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
        packet(src, dst, IPPROTO_TCP, sport, dport)
    }

    /// Both classifiers on one packet; fails unless they agree, returns their answer.
    fn classify_both(p: &Policy, c: &CompiledFirewall, pkt: &Packet) -> Option<u32> {
        let fast = classify::first_match(c, pkt);
        let slow = reference::first_match(p, pkt);
        assert_eq!(fast, slow, "classifiers disagree on {pkt:?}");
        fast
    }

    fn entries_of_tuple(c: &CompiledFirewall, tuple: u32) -> Vec<(FlowKey, u32)> {
        c.entries
            .iter()
            .filter(|(k, _)| k.tuple == tuple)
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    // ---------------------------------------------------------------- port classes

    #[test]
    fn ttl_ranges_split_into_the_fewest_aligned_blocks() {
        assert_eq!(ttl_blocks(None), vec![(0, 0)]);
        assert_eq!(ttl_blocks(Some((0, 255))), vec![(0, 0)]);
        assert_eq!(ttl_blocks(Some((64, 64))), vec![(64, 0xff)]);
        assert_eq!(ttl_blocks(Some((0, 9))), vec![(0, 0xf8), (8, 0xfe)]);
        assert_eq!(ttl_blocks(Some((255, 255))), vec![(255, 0xff)]);
        // The worst case: 1..=254 needs 14 blocks.
        assert_eq!(ttl_blocks(Some((1, 254))).len(), 14);
        // Every range is covered exactly, value by value.
        for lo in 0..=255u8 {
            for hi in lo..=255u8 {
                let blocks = ttl_blocks(Some((lo, hi)));
                for v in 0..=255u8 {
                    let hits = blocks.iter().filter(|&&(b, m)| v & m == b).count();
                    assert_eq!(
                        hits,
                        usize::from((lo..=hi).contains(&v)),
                        "{lo}-{hi} at {v}"
                    );
                }
            }
        }
    }

    #[test]
    fn length_ranges_split_into_the_fewest_aligned_blocks() {
        assert_eq!(length_blocks(None), vec![(0, 0)]);
        assert_eq!(length_blocks(Some((0, 65535))), vec![(0, 0)]);
        assert_eq!(length_blocks(Some((1500, 1500))), vec![(1500, 0xffff)]);
        assert_eq!(length_blocks(Some((0, 1023))), vec![(0, 0xfc00)]);
        assert_eq!(length_blocks(Some((60, 63))), vec![(60, 0xfffc)]);
        assert_eq!(
            length_blocks(Some((1500, 1535))),
            vec![(1500, 0xfffc), (1504, 0xffe0)]
        );
        // The worst case: 1..=65534 needs 30 blocks.
        assert_eq!(length_blocks(Some((1, 65534))).len(), 30);
        // Ranges with edges on every side of a power of two are covered exactly.
        let edges: Vec<u16> = (0..16)
            .flat_map(|b| {
                let p = 1u32 << b;
                [p - 1, p, p + 1].map(|v| v.min(65535) as u16)
            })
            .chain([0, 1499, 1500, 1501, 65534, 65535])
            .collect();
        for &lo in &edges {
            for &hi in edges.iter().filter(|&&h| h >= lo) {
                let blocks = length_blocks(Some((lo, hi)));
                assert!(blocks.len() <= 30);
                for &v in &edges {
                    let hits = blocks.iter().filter(|&&(b, m)| v & m == b).count();
                    assert_eq!(
                        hits,
                        usize::from((lo..=hi).contains(&v)),
                        "{lo}-{hi} at {v}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_length_condition_keys_on_the_ip_length() {
        let rule = Rule {
            ip: IpHeaderMatch {
                length: Some((60, 63)),
                ..IpHeaderMatch::default()
            },
            ..any_rule()
        };
        let p = policy(vec![rule], vec![]);
        let c = compile(&p).unwrap();
        assert_eq!(c.tuples.len(), 1);
        assert_eq!(c.tuples[0].length_mask, 0xfffc);
        let keys: Vec<u16> = c.entries.keys().map(|k| k.length).collect();
        assert_eq!(keys, vec![60]);
        // No `length` condition: mask and key 0.
        let c0 = compile(&policy(vec![any_rule()], vec![])).unwrap();
        assert_eq!(c0.tuples[0].length_mask, 0);
        for length in [0u16, 20, 59, 60, 61, 63, 64, 1500, 65535] {
            let pkt = Packet {
                l4_len: length.wrapping_sub(20),
                ..tcp("192.0.2.1", "198.51.100.1", 1, 2)
            };
            assert_eq!(pkt.ip_len(), length);
            let want = (60..=63).contains(&length).then_some(0);
            assert_eq!(classify_both(&p, &c, &pkt), want, "length {length}");
        }
    }

    #[test]
    fn header_conditions_become_masks_and_key_bytes() {
        let rule = Rule {
            ip: IpHeaderMatch {
                dscp: Some(46),
                ecn: Some(3),
                ttl: Some((0, 9)),
                length: None,
            },
            ..any_rule()
        };
        let c = compile(&policy(vec![rule], vec![])).unwrap();
        assert_eq!(c.tuples.len(), 2);
        let mut seen: Vec<(u8, u8, u8, u8)> = c
            .entries
            .keys()
            .map(|k| {
                let t = c.tuples[k.tuple as usize];
                (t.tos_mask, k.tos, t.ttl_mask, k.ttl)
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            vec![(0xff, 46 << 2 | 3, 0xf8, 0), (0xff, 46 << 2 | 3, 0xfe, 8)]
        );
        // A rule without them leaves the masks and key bytes 0.
        let c = compile(&policy(vec![any_rule()], vec![])).unwrap();
        assert_eq!((c.tuples[0].tos_mask, c.tuples[0].ttl_mask), (0, 0));
        for ttl in [0u8, 9, 10, 255] {
            for tos in [0u8, 46 << 2, 46 << 2 | 3, 0xff] {
                let pkt = Packet {
                    tos,
                    ttl,
                    ..tcp("192.0.2.1", "198.51.100.1", 1, 2)
                };
                let p = policy(
                    vec![Rule {
                        ip: IpHeaderMatch {
                            dscp: Some(46),
                            ecn: Some(3),
                            ttl: Some((0, 9)),
                            length: None,
                        },
                        ..any_rule()
                    }],
                    vec![],
                );
                let want = (tos == 46 << 2 | 3 && ttl <= 9).then_some(0);
                assert_eq!(classify_both(&p, &compile(&p).unwrap(), &pkt), want);
            }
        }
    }

    #[test]
    fn port_classes_split_at_every_range_edge() {
        let p = policy(
            vec![
                tcp_rule(Some((80, 80))),
                tcp_rule(Some((1000, 2000))),
                tcp_rule(Some((1500, 65535))),
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        let expect = |port: usize| match port {
            0..=79 => 0,
            80 => 1,
            81..=999 => 2,
            1000..=1499 => 3,
            1500..=2000 => 4,
            _ => 5,
        };
        for port in 0..PORT_SPACE as usize {
            assert_eq!(c.dport_class[port], expect(port), "port {port}");
            // No rule has a source port condition: one class for everything.
            assert_eq!(c.sport_class[port], 0, "sport {port}");
        }
        assert_eq!(c.dport_class.len(), PORT_SPACE as usize);
        assert_eq!(c.sport_class.len(), PORT_SPACE as usize);
        // Rule 1 covers classes 3 and 4, rule 2 classes 4 and 5; class 4 is rule 1's.
        let classes_of = |rule: u32| {
            let mut v: Vec<u16> = c
                .entries
                .iter()
                .filter(|&(_, &r)| r == rule)
                .map(|(k, _)| k.dport_class)
                .collect();
            v.sort_unstable();
            v
        };
        assert_eq!(classes_of(0), [1]);
        assert_eq!(classes_of(1), [3, 4]);
        assert_eq!(classes_of(2), [5]);
    }

    #[test]
    fn port_words_carry_the_tuples_each_port_may_match() {
        // Tuple 0: TCP to port 80; tuple 1: any packet from 10/8 (no port); tuple 2: UDP
        // from source port 53.
        let p = policy(
            vec![
                tcp_rule(Some((80, 80))),
                Rule {
                    src: AddrMatch::Cidrs(vec![cidr("10.0.0.0/8")]),
                    ..any_rule()
                },
                Rule {
                    protocol: Some(Protocol::Udp),
                    src_ports: Some(PortRange { lo: 53, hi: 53 }),
                    ..any_rule()
                },
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        let (sports, dports) = (c.port_words(false), c.port_words(true));
        assert_eq!(sports.len(), PORT_SPACE as usize);
        assert_eq!(dports.len(), PORT_SPACE as usize);
        for port in [0usize, 53, 79, 80, 81, 65535] {
            assert_eq!(port_word::class(dports[port]), c.dport_class[port]);
            assert_eq!(port_word::class(sports[port]), c.sport_class[port]);
            let d = if port == 80 { 0b111 } else { 0b110 };
            let s = if port == 53 { 0b111 } else { 0b011 };
            assert_eq!(port_word::tuples(dports[port]), d, "dport {port}");
            assert_eq!(port_word::tuples(sports[port]), s, "sport {port}");
        }
        // Both words must allow a tuple: from port 53 to port 80, every tuple; from 53 to
        // 443, not the port-80 tuple.
        let both =
            |sp: usize, dp: usize| port_word::tuples(sports[sp]) & port_word::tuples(dports[dp]);
        assert_eq!(both(53, 80), 0b111);
        assert_eq!(both(53, 443), 0b110);
        assert_eq!(both(5, 443), 0b010);
        assert!(!port_word::may_match(both(5, 443), 0));
        assert!(
            port_word::may_match(0, port_word::TUPLES),
            "past the words: always"
        );
    }

    #[test]
    fn full_port_range_and_extremes() {
        let p = policy(
            vec![
                Rule {
                    src_ports: Some(PortRange { lo: 0, hi: 65535 }),
                    ..tcp_rule(Some((65535, 65535)))
                },
                tcp_rule(Some((0, 0))),
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        assert!(c.sport_class.iter().all(|&k| k == 0));
        assert_eq!(c.dport_class[0], 0);
        assert_eq!(c.dport_class[1], 1);
        assert_eq!(c.dport_class[65534], 1);
        assert_eq!(c.dport_class[65535], 2);
        for (dport, want) in [(65535, Some(0)), (0, Some(1)), (1, None), (65534, None)] {
            assert_eq!(
                classify_both(&p, &c, &tcp("10.0.0.1", "10.0.0.2", 9, dport)),
                want
            );
        }
    }

    #[test]
    fn icmp_type_and_code_are_destination_port_classes() {
        let icmp = |icmp_type, code| Rule {
            protocol: Some(Protocol::Icmp),
            icmp: Some(IcmpMatch { icmp_type, code }),
            ..any_rule()
        };
        let p = policy(
            vec![icmp(8, Some(0)), icmp(3, None), icmp(255, None)],
            vec![],
        );
        let c = compile(&p).unwrap();
        // Ranges 0x0800..=0x0800, 0x0300..=0x03ff and 0xff00..=0xffff.
        let k = &c.dport_class;
        assert_eq!(k[0x02ff], k[0]);
        assert_ne!(k[0x0300], k[0x02ff]);
        assert_eq!(k[0x0300], k[0x03ff]);
        assert_ne!(k[0x0400], k[0x03ff]);
        assert_ne!(k[0x0800], k[0x07ff]);
        assert_ne!(k[0x0800], k[0x0801]);
        assert_eq!(k[0xff00], k[0xffff]);
        let ping = |t: u8, code: u8| {
            packet(
                "10.0.0.1",
                "10.0.0.2",
                IPPROTO_ICMP,
                0,
                u16::from(t) << 8 | u16::from(code),
            )
        };
        assert_eq!(classify_both(&p, &c, &ping(8, 0)), Some(0));
        assert_eq!(classify_both(&p, &c, &ping(8, 1)), None);
        assert_eq!(classify_both(&p, &c, &ping(3, 0)), Some(1));
        assert_eq!(classify_both(&p, &c, &ping(3, 13)), Some(1));
        assert_eq!(classify_both(&p, &c, &ping(255, 255)), Some(2));
        assert_eq!(classify_both(&p, &c, &ping(4, 0)), None);
        // A TCP packet whose destination port spells 8/0 is not a ping.
        assert_eq!(
            classify_both(&p, &c, &tcp("10.0.0.1", "10.0.0.2", 0, 0x0800)),
            None
        );
    }

    fn arb_ranges() -> impl Strategy<Value = Vec<PortRange>> {
        prop::collection::vec(arb_port_range(), 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Every range a rule uses is exactly a run of whole classes, and classes only split
        /// where some range starts or ends (so there are as few as possible).
        #[test]
        fn every_range_is_a_union_of_classes(sports in arb_ranges(), dports in arb_ranges()) {
            let mut rules: Vec<Rule> = sports.iter().map(|r| Rule {
                src_ports: Some(*r),
                ..tcp_rule(None)
            }).collect();
            rules.extend(dports.iter().map(|r| Rule { dst_ports: Some(*r), ..tcp_rule(None) }));
            let c = compile(&policy(rules, vec![])).unwrap();
            for (ranges, class) in [(&sports, &c.sport_class), (&dports, &c.dport_class)] {
                prop_assert_eq!(class.len(), PORT_SPACE as usize);
                prop_assert_eq!(class[0], 0);
                let mut edges = vec![false; PORT_SPACE as usize + 1];
                for r in ranges.iter() {
                    edges[usize::from(r.lo)] = true;
                    edges[usize::from(r.hi) + 1] = true;
                }
                for port in 1..PORT_SPACE as usize {
                    let step = class[port] - class[port - 1];
                    prop_assert_eq!(step, u16::from(edges[port]), "class step at port {}", port);
                }
                for r in ranges.iter() {
                    let (lo, hi) = (class[usize::from(r.lo)], class[usize::from(r.hi)]);
                    for (port, k) in class.iter().enumerate() {
                        let inside = (usize::from(r.lo)..=usize::from(r.hi)).contains(&port);
                        prop_assert_eq!(
                            inside,
                            (lo..=hi).contains(k),
                            "range {:?}, port {}", r, port
                        );
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- tuples

    #[test]
    fn tuples_are_ordered_by_their_best_rule() {
        let src = |c: &str| Rule {
            src: cidrs(&[c]),
            ..any_rule()
        };
        let p = policy(
            vec![
                src("10.1.0.0/16"),
                src("10.2.3.0/24"),
                src("10.9.0.0/16"),
                src("10.0.0.0/8"),
                tcp_rule(Some((22, 22))),
                src("10.4.5.0/24"),
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        let summary: Vec<(u32, [u8; 16])> =
            c.tuples.iter().map(|t| (t.best_rule, t.src_mask)).collect();
        assert_eq!(
            summary,
            [
                (0, prefix_mask(96 + 16)),
                (1, prefix_mask(96 + 24)),
                (3, prefix_mask(96 + 8)),
                (4, [0; 16]),
            ]
        );
        assert_eq!(c.header.tuple_count, 4);
        assert_eq!(c.header.rule_count, 6);
        assert_eq!(c.tuples[0].family, FAMILY_V4);
        assert_eq!(c.tuples[3].family, 0);
        assert_eq!(c.tuples[3].flags, TUPLE_PROTO | TUPLE_DPORT);
        let mut in_first: Vec<u32> = entries_of_tuple(&c, 0).iter().map(|e| e.1).collect();
        in_first.sort_unstable();
        assert_eq!(in_first, [0, 2]);
        // The search stops at tuple 2 once rule 1 matched: rule 3 would match too.
        let p1 = tcp("10.2.3.4", "192.0.2.1", 1, 22);
        assert_eq!(classify_both(&p, &c, &p1), Some(1));
        assert_eq!(
            classify_both(&p, &c, &tcp("10.4.5.6", "192.0.2.1", 1, 22)),
            Some(3)
        );
        assert_eq!(
            classify_both(&p, &c, &tcp("11.4.5.6", "192.0.2.1", 1, 22)),
            Some(4)
        );
        assert_eq!(
            classify_both(&p, &c, &tcp("11.4.5.6", "192.0.2.1", 1, 23)),
            None
        );
    }

    #[test]
    fn tuples_whose_key_takes_nothing_from_the_packet_are_keyless() {
        let p = policy(
            vec![
                // A set and nothing else: keyless.
                Rule {
                    src: AddrMatch::Set(0),
                    ..any_rule()
                },
                tcp_rule(Some((22, 22))),
                // No condition at all: keyless, and shared with rule 4.
                any_rule(),
                // A set and a protocol: the protocol is in the key.
                Rule {
                    src: AddrMatch::Set(0),
                    ..tcp_rule(None)
                },
                any_rule(),
                // A prefix: its bits are in the key.
                Rule {
                    src: cidrs(&["10.0.0.0/8"]),
                    ..any_rule()
                },
            ],
            vec![set("blocked", &["203.0.113.9/32", "192.0.2.0/24"])],
        );
        let c = compile(&p).unwrap();
        let shapes: Vec<(u32, u8)> = c.tuples.iter().map(|t| (t.best_rule, t.keyless)).collect();
        assert_eq!(shapes, [(0, 1), (1, 0), (2, 1), (3, 0), (5, 0)]);
        for t in &c.tuples {
            assert_eq!(t.keyless != 0, t.is_keyless());
        }
        // The keyless tuple of rules 2 and 4 has one entry, for rule 2.
        assert_eq!(
            entries_of_tuple(&c, 2)
                .iter()
                .map(|e| e.1)
                .collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(
            classify_both(&p, &c, &tcp("203.0.113.9", "192.0.2.1", 1, 80)),
            Some(0)
        );
        assert_eq!(
            classify_both(&p, &c, &tcp("192.0.2.77", "10.0.0.1", 1, 22)),
            Some(0)
        );
        assert_eq!(
            classify_both(&p, &c, &tcp("198.51.100.1", "192.0.2.1", 1, 22)),
            Some(1)
        );
        assert_eq!(
            classify_both(&p, &c, &tcp("10.1.2.3", "192.0.2.1", 1, 80)),
            Some(2)
        );
    }

    #[test]
    fn a_later_tuple_can_only_improve_the_match() {
        // Tuple A (protocol only) holds rules 0 and 3, tuple B (protocol and port) rules 1
        // and 4. A TCP packet to port 80 matches 3 in A, then B must still be searched (its
        // best rule 1 beats 3) but its match, 4, must not replace 3.
        let udp = Rule {
            protocol: Some(Protocol::Udp),
            ..any_rule()
        };
        let p = policy(
            vec![
                udp.clone(),
                tcp_rule(Some((5, 5))),
                udp,
                tcp_rule(None),
                tcp_rule(Some((80, 80))),
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        assert_eq!(c.tuples.len(), 2);
        assert_eq!(
            classify_both(&p, &c, &tcp("10.0.0.1", "10.0.0.2", 1, 80)),
            Some(3)
        );
        assert_eq!(
            classify_both(&p, &c, &tcp("10.0.0.1", "10.0.0.2", 1, 5)),
            Some(1)
        );
    }

    #[test]
    fn one_rule_with_several_shapes_gives_tuples_with_the_same_best_rule() {
        let p = policy(
            vec![
                Rule {
                    src: cidrs(&["10.0.0.0/8", "10.1.2.0/24", "2001:db8::/32"]),
                    ..any_rule()
                },
                Rule {
                    src: cidrs(&["10.0.0.0/8"]),
                    ..tcp_rule(None)
                },
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        let best: Vec<u32> = c.tuples.iter().map(|t| t.best_rule).collect();
        assert_eq!(best, [0, 0, 0, 1]);
        assert!(
            c.tuples
                .windows(2)
                .all(|w| w[0].best_rule <= w[1].best_rule)
        );
    }

    // ---------------------------------------------------------------- entries

    #[test]
    fn duplicate_keys_keep_the_first_rule() {
        let web = |ports, action| Rule {
            action,
            src: cidrs(&["10.0.0.0/8"]),
            ..tcp_rule(Some(ports))
        };
        let p = policy(
            vec![
                web((80, 90), Action::Drop),
                web((85, 100), Action::Allow),
                web((80, 90), Action::Allow),
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        // Classes: 80-84, 85-90, 91-100. Rule 1 keeps only 91-100; rule 2 keeps nothing.
        assert_eq!(c.entries.len(), 3);
        let rule_at = |port: usize| {
            c.entries
                .iter()
                .find(|(k, _)| k.dport_class == c.dport_class[port])
                .map(|(_, &r)| r)
        };
        assert_eq!(rule_at(80), Some(0));
        assert_eq!(rule_at(85), Some(0));
        assert_eq!(rule_at(90), Some(0));
        assert_eq!(rule_at(91), Some(1));
        assert_eq!(rule_at(100), Some(1));
        assert!(!c.entries.values().any(|&r| r == 2));
        // The same packets through both classifiers.
        for (port, want) in [
            (79, None),
            (80, Some(0)),
            (88, Some(0)),
            (95, Some(1)),
            (101, None),
        ] {
            assert_eq!(
                classify_both(&p, &c, &tcp("10.7.7.7", "10.0.0.1", 5, port)),
                want
            );
        }
        // Metadata keeps one slot per rule, including the shadowed one.
        assert_eq!(c.rules.len(), 3);
        assert_eq!(c.rules[2].action, ACTION_ALLOW);
    }

    #[test]
    fn identical_rules_compile_to_the_first_ones_entries() {
        let r = Rule {
            src: cidrs(&["192.0.2.0/24", "2001:db8::/48"]),
            dst: cidrs(&["198.51.100.7/32"]),
            ..tcp_rule(Some((443, 443)))
        };
        let one = compile(&policy(vec![r.clone()], vec![])).unwrap();
        let two = compile(&policy(vec![r.clone(), r], vec![])).unwrap();
        assert_eq!(one.entries, two.entries);
        assert_eq!(one.tuples, two.tuples);
        assert_eq!(two.rules.len(), 2);
    }

    #[test]
    fn keys_hold_masked_addresses_and_the_flag_value() {
        let p = policy(
            vec![Rule {
                src: cidrs(&["10.1.2.3/16"]),
                dst: cidrs(&["2001:db8:1:2::/64"]),
                tcp_flags: Some(TcpFlags {
                    value: 0x02,
                    mask: 0x12,
                }),
                ..tcp_rule(None)
            }],
            vec![],
        );
        let c = compile(&p).unwrap();
        // A v4 source with a v6 destination can never match: no shape at all.
        assert!(c.tuples.is_empty());
        assert!(c.entries.is_empty());
        assert_eq!(c.header.tuple_count, 0);

        let p = policy(
            vec![Rule {
                src: cidrs(&["10.1.2.3/16"]),
                tcp_flags: Some(TcpFlags {
                    value: 0x02,
                    mask: 0x12,
                }),
                ..tcp_rule(None)
            }],
            vec![],
        );
        let c = compile(&p).unwrap();
        assert_eq!(c.tuples.len(), 1);
        let t = c.tuples[0];
        assert_eq!(t.tcp_flags_mask, 0x12);
        assert_eq!(t.flags, TUPLE_PROTO);
        let (key, rule) = c.entries.iter().next().map(|(k, v)| (*k, *v)).unwrap();
        assert_eq!(rule, 0);
        assert_eq!(key.src, v4_mapped([10, 1, 0, 0]));
        assert_eq!(key.dst, [0; 16]);
        assert_eq!(key.proto, IPPROTO_TCP);
        assert_eq!(key.tcp_flags, 0x02);
        let with_flags = |flags| Packet {
            tcp_flags: flags,
            ..tcp("10.1.200.1", "10.0.0.1", 1, 2)
        };
        assert_eq!(classify_both(&p, &c, &with_flags(0x02)), Some(0));
        assert_eq!(
            classify_both(&p, &c, &with_flags(0x02 | 0x08 | 0x01)),
            Some(0)
        );
        assert_eq!(classify_both(&p, &c, &with_flags(0x12)), None);
        assert_eq!(classify_both(&p, &c, &with_flags(0x10)), None);
    }

    #[test]
    fn non_first_fragments_only_meet_rules_without_layer4_conditions() {
        let p = policy(
            vec![
                tcp_rule(Some((80, 80))),
                Rule {
                    tcp_flags: Some(TcpFlags {
                        value: 0,
                        mask: 0x02,
                    }),
                    ..tcp_rule(None)
                },
                tcp_rule(None),
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        let later = Packet {
            frag: FRAG_LATER,
            ..tcp("10.0.0.1", "10.0.0.2", 0, 0)
        };
        assert_eq!(classify_both(&p, &c, &later), Some(2));
        let first = Packet {
            frag: FRAG_FIRST,
            ..tcp("10.0.0.1", "10.0.0.2", 0, 80)
        };
        assert_eq!(classify_both(&p, &c, &first), Some(0));
    }

    // ---------------------------------------------------------------- families

    #[test]
    fn mixed_family_lists_pair_only_within_a_family() {
        let p = policy(
            vec![Rule {
                src: cidrs(&["10.0.0.0/8", "2001:db8::/32"]),
                dst: cidrs(&["192.168.0.0/16", "2001:db8:ffff::/48"]),
                ..any_rule()
            }],
            vec![],
        );
        let c = compile(&p).unwrap();
        let mut shapes: Vec<(u8, [u8; 16], [u8; 16])> = c
            .tuples
            .iter()
            .map(|t| (t.family, t.src_mask, t.dst_mask))
            .collect();
        shapes.sort_unstable();
        assert_eq!(
            shapes,
            [
                (FAMILY_V4, prefix_mask(104), prefix_mask(112)),
                (FAMILY_V6, prefix_mask(32), prefix_mask(48)),
            ]
        );
        assert_eq!(c.entries.len(), 2);
        let cases = [
            ("10.1.1.1", "192.168.3.4", Some(0)),
            ("2001:db8:5::1", "2001:db8:ffff:1::9", Some(0)),
            // A v4-mapped IPv6 packet is not an IPv4 packet for a CIDR rule.
            ("::ffff:10.1.1.1", "::ffff:192.168.3.4", None),
            ("10.1.1.1", "192.169.0.1", None),
            ("2001:db9::1", "2001:db8:ffff::1", None),
        ];
        for (s, d, want) in cases {
            assert_eq!(classify_both(&p, &c, &tcp(s, d, 1, 2)), want, "{s} -> {d}");
        }
    }

    #[test]
    fn zero_prefixes_are_per_family_and_any_is_both() {
        let p = policy(
            vec![
                Rule {
                    src: cidrs(&["0.0.0.0/0"]),
                    ..tcp_rule(Some((1, 1)))
                },
                Rule {
                    src: cidrs(&["::/0"]),
                    ..tcp_rule(Some((1, 1)))
                },
                Rule {
                    src: cidrs(&["::ffff:0.0.0.0/96"]),
                    ..tcp_rule(Some((2, 2)))
                },
                tcp_rule(Some((3, 3))),
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        let families: Vec<u8> = c.tuples.iter().map(|t| t.family).collect();
        assert_eq!(families, [FAMILY_V4, FAMILY_V6, FAMILY_V6, 0]);
        assert_eq!(c.tuples[0].src_mask, prefix_mask(96));
        assert_eq!(c.tuples[1].src_mask, [0; 16]);
        let cases = [
            ("1.2.3.4", "5.6.7.8", 1, Some(0)),
            ("2001:db8::1", "::1", 1, Some(1)),
            ("::ffff:1.2.3.4", "::1", 1, Some(1)),
            // ::ffff:0:0/96 is an IPv6 block: mapped addresses in IPv6 packets only.
            ("::ffff:1.2.3.4", "::1", 2, Some(2)),
            ("1.2.3.4", "5.6.7.8", 2, None),
            ("1.2.3.4", "5.6.7.8", 3, Some(3)),
            ("2001:db8::1", "::1", 3, Some(3)),
        ];
        for (s, d, port, want) in cases {
            assert_eq!(
                classify_both(&p, &c, &tcp(s, d, 0, port)),
                want,
                "{s} port {port}"
            );
        }
    }

    // ---------------------------------------------------------------- sets

    #[test]
    fn set_conditions_become_set_tuples() {
        let p = policy(
            vec![
                Rule {
                    src: AddrMatch::Set(1),
                    dst: cidrs(&["10.0.0.0/24"]),
                    ..any_rule()
                },
                Rule {
                    src: AddrMatch::Set(0),
                    dst: AddrMatch::Set(1),
                    ..tcp_rule(Some((53, 53)))
                },
                Rule {
                    dst: AddrMatch::Set(0),
                    ..any_rule()
                },
                Rule {
                    src: AddrMatch::Set(2),
                    ..any_rule()
                },
            ],
            vec![
                set(
                    "blocked",
                    &["192.0.2.0/24", "2001:db8:bad::/48", "203.0.113.9/32"],
                ),
                set("partners", &["198.51.100.0/24", "10.0.0.0/8"]),
                set("empty", &[]),
            ],
        );
        let c = compile(&p).unwrap();
        assert_eq!(c.sets.len(), 3);
        assert_eq!(c.sets[0], p.sets[0].entries);
        assert_eq!(c.tuples.len(), 4);
        let t = &c.tuples;
        assert_eq!(t[0].flags, TUPLE_SRC_SET);
        assert_eq!(t[0].src_set, 1);
        assert_eq!(t[0].src_mask, [0; 16]);
        assert_eq!(t[0].dst_mask, prefix_mask(120));
        assert_eq!(t[0].family, FAMILY_V4);
        assert_eq!(
            t[1].flags,
            TUPLE_SRC_SET | TUPLE_DST_SET | TUPLE_PROTO | TUPLE_DPORT
        );
        assert_eq!((t[1].src_set, t[1].dst_set), (0, 1));
        assert_eq!(t[1].family, 0);
        assert_eq!(t[2].flags, TUPLE_DST_SET);
        assert_eq!(t[2].dst_set, 0);
        assert_eq!((t[3].flags, t[3].src_set), (TUPLE_SRC_SET, 2));
        for k in c.entries.keys() {
            if t[k.tuple as usize].flags & TUPLE_SRC_SET != 0 {
                assert_eq!(k.src, [0; 16]);
            }
            if t[k.tuple as usize].flags & TUPLE_DST_SET != 0 {
                assert_eq!(k.dst, [0; 16]);
            }
        }
        let cases = [
            ("198.51.100.1", "10.0.0.200", IPPROTO_TCP, 53, Some(0)),
            ("198.51.100.1", "10.0.1.200", IPPROTO_TCP, 53, None),
            ("192.0.2.77", "10.200.0.1", IPPROTO_TCP, 53, Some(1)),
            ("192.0.2.77", "10.200.0.1", IPPROTO_TCP, 54, None),
            ("192.0.2.77", "203.0.113.9", 17, 54, Some(2)),
            ("192.0.2.77", "203.0.113.8", 17, 54, None),
            ("2001:db8::1", "2001:db8:bad:1::1", 17, 0, Some(2)),
            // Set membership is per family: an IPv4-mapped address in an IPv6 packet is not
            // a member of an IPv4 entry (nor is an IPv4 packet a member of an IPv6 entry).
            ("::1", "::ffff:203.0.113.9", 17, 0, None),
            (
                "::ffff:198.51.100.1",
                "::ffff:10.0.0.1",
                IPPROTO_TCP,
                53,
                None,
            ),
        ];
        for (s, d, proto, port, want) in cases {
            let pkt = packet(s, d, proto, 1, port);
            assert_eq!(classify_both(&p, &c, &pkt), want, "{s} -> {d}:{port}");
        }
    }

    #[test]
    fn set_entries_hold_only_their_own_family() {
        // Bogon lists carry entries like ::/8 and ::ffff:0:0/96; IPv4 is stored mapped, yet
        // no IPv6 entry may hold an IPv4 packet, and no IPv4 entry an IPv6 packet.
        let p = policy(
            vec![
                Rule {
                    src: AddrMatch::Set(0),
                    ..any_rule()
                },
                Rule {
                    src: AddrMatch::Set(1),
                    ..any_rule()
                },
            ],
            vec![
                set("v6", &["::/8", "::ffff:0.0.0.0/96"]),
                set("v4", &["0.0.0.0/0"]),
            ],
        );
        let c = compile(&p).unwrap();
        let cases = [
            ("1.2.3.4", "5.6.7.8", Some(1)),
            ("::ffff:1.2.3.4", "::1", Some(0)),
            ("::1", "::2", Some(0)),
            ("2001:db8::1", "::2", None),
        ];
        for (s, d, want) in cases {
            assert_eq!(classify_both(&p, &c, &tcp(s, d, 1, 2)), want, "{s}");
        }
    }

    // ---------------------------------------------------------------- limits

    #[test]
    fn more_than_max_tuples_shapes_is_an_error() {
        // 129 source prefix lengths and 128 destination ones: 257 IPv6 shapes.
        let mut rules: Vec<Rule> = (0..=128)
            .map(|len| Rule {
                src: AddrMatch::Cidrs(vec![
                    Cidr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), len).unwrap(),
                ]),
                ..any_rule()
            })
            .collect();
        rules.extend((0..128).map(|len| Rule {
            dst: AddrMatch::Cidrs(vec![
                Cidr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), len).unwrap(),
            ]),
            ..any_rule()
        }));
        assert_eq!(rules.len(), MAX_TUPLES as usize + 1);
        let mut p = policy(rules, vec![]);
        assert_eq!(
            compile(&p),
            Err(CompileError::TooManyTuples {
                count: MAX_TUPLES as usize + 1
            })
        );
        // Rules of an existing shape do not count.
        p.firewall.rules.pop();
        p.firewall.rules.push(Rule {
            src: cidrs(&["2001:db8::/64"]),
            ..any_rule()
        });
        let c = compile(&p).unwrap();
        assert_eq!(c.tuples.len(), MAX_TUPLES as usize);
        assert_eq!(c.header.tuple_count, MAX_TUPLES);
    }

    #[test]
    fn more_than_max_rules_is_an_error() {
        let mut p = policy(vec![any_rule(); MAX_RULES as usize], vec![]);
        let c = compile(&p).unwrap();
        // All the same: one entry, owned by the first.
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.entries.values().copied().collect::<Vec<_>>(), [0]);
        assert_eq!(c.rules.len(), MAX_RULES as usize);
        p.firewall.rules.push(any_rule());
        assert_eq!(
            compile(&p),
            Err(CompileError::TooManyRules {
                count: MAX_RULES as usize + 1
            })
        );
    }

    #[test]
    fn more_than_max_sets_is_an_error() {
        let sets: Vec<IpSet> = (0..=MAX_SETS).map(|i| set(&format!("s{i}"), &[])).collect();
        assert_eq!(
            compile(&policy(vec![], sets)),
            Err(CompileError::TooManySets {
                count: MAX_SETS as usize + 1
            })
        );
    }

    /// Set members beyond the hard maxima of one generation are refused, hosts and prefixes
    /// each against their own; a policy within them compiles, and its members are counted
    /// over every set (the room of the running maps is checked at install, see
    /// `crate::capacity`).
    #[test]
    fn set_members_beyond_the_hard_maxima_are_refused() {
        assert_eq!(
            members_fit(MAX_SET_HOSTS as usize, MAX_SET_PREFIXES as usize),
            Ok(())
        );
        assert_eq!(
            members_fit(MAX_SET_HOSTS as usize + 1, 0),
            Err(CompileError::TooManySetMembers {
                count: MAX_SET_HOSTS as usize + 1,
                what: "single addresses",
                limit: MAX_SET_HOSTS,
                setting: "[firewall] capacity_set_hosts",
            })
        );
        let e = members_fit(0, MAX_SET_PREFIXES as usize + 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the sets hold {} prefixes shorter than one address in all; one policy \
                 generation may hold at most {MAX_SET_PREFIXES}, the most \
                 `[firewall] capacity_set_prefixes` can give",
                MAX_SET_PREFIXES + 1
            )
        );
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let hosts: Vec<String> = (0..3000)
            .map(|i| format!("10.0.{}.{}/32", i >> 8, i & 255))
            .collect();
        let sets = vec![
            set("a", &refs(&hosts[..1000])),
            set("b", &refs(&hosts[1000..])),
        ];
        let c = compile(&policy(vec![], sets)).expect("compiles");
        assert_eq!(c.sets.iter().map(Vec::len).sum::<usize>(), 3000);
    }

    #[test]
    fn too_many_entries_names_the_rule() {
        // 800 single source ports and 800 single destination ports make about 1600 classes
        // on each side; a rule with both full ranges then needs about 2.5 million entries.
        let mut rules: Vec<Rule> = (0..800u16)
            .map(|i| Rule {
                src_ports: Some(PortRange {
                    lo: i * 3,
                    hi: i * 3,
                }),
                ..tcp_rule(None)
            })
            .collect();
        rules.extend((0..800u16).map(|i| tcp_rule(Some((i * 3, i * 3)))));
        rules.push(Rule {
            name: Some("everything".to_owned()),
            line: 42,
            src_ports: Some(PortRange { lo: 0, hi: 65535 }),
            ..tcp_rule(Some((0, 65535)))
        });
        assert_eq!(
            compile(&policy(rules, vec![])),
            Err(CompileError::TooManyEntries {
                rule: "everything".to_owned(),
                line: 42
            })
        );
    }

    // ---------------------------------------------------------------- header and metadata

    #[test]
    fn header_and_rule_metadata() {
        let mut p = policy(
            vec![
                Rule {
                    log: true,
                    ..any_rule()
                },
                Rule {
                    action: Action::Allow,
                    ..any_rule()
                },
                Rule {
                    action: Action::RateLimit(RateLimit {
                        pps: 100,
                        burst: 200,
                        per: RatePer::Source,
                    }),
                    log: true,
                    ..any_rule()
                },
                Rule {
                    action: Action::RateLimit(RateLimit {
                        pps: 3,
                        burst: 1,
                        per: RatePer::Rule,
                    }),
                    ..any_rule()
                },
            ],
            vec![],
        );
        p.firewall.log_default = true;
        p.firewall.fragments = FragmentPolicy::Drop;
        let c = compile(&p).unwrap();
        assert_eq!(c.header.default_action, ACTION_DROP);
        assert_eq!(c.header.fragments, FRAGMENTS_DROP);
        assert_eq!(
            c.header.flags,
            POLICY_LOG_DEFAULT | POLICY_LOG_MALFORMED | POLICY_LOG_FRAGMENTS
        );
        assert_eq!(c.rules[0].action, ACTION_DROP);
        assert_eq!(c.rules[0].flags, RULE_LOG);
        assert_eq!(c.rules[1].action, ACTION_ALLOW);
        assert_eq!(c.rules[1].flags, 0);
        assert_eq!(c.rules[2].action, ACTION_RATE_LIMIT);
        assert_eq!(c.rules[2].flags, RULE_LOG | RULE_RATE_PER_SOURCE);
        assert_eq!(c.rules[2].rate_interval_ns, 10_000_000);
        assert_eq!(c.rules[2].rate_tolerance_ns, 10_000_000 * 199);
        assert_eq!(c.rules[3].flags, 0);
        assert_eq!(c.rules[3].rate_interval_ns, 333_333_333);
        assert_eq!(c.rules[3].rate_tolerance_ns, 0);
        // The fastest rate keeps its interval (100 ns); the largest burst does not overflow.
        assert_eq!(
            gcra(MAX_RATE, u32::MAX),
            (100, 100 * (u64::from(u32::MAX) - 1))
        );
        assert_eq!(
            gcra(1, u32::MAX),
            (1_000_000_000, 1_000_000_000 * (u64::from(u32::MAX) - 1))
        );

        // A policy built in code gets the same bound as the checker's.
        let mut fast = p.clone();
        fast.firewall.rules[3].action = Action::RateLimit(RateLimit {
            pps: MAX_RATE + 1,
            burst: 1,
            per: RatePer::Rule,
        });
        fast.firewall.rules[3].line = 9;
        assert_eq!(
            compile(&fast).unwrap_err().to_string(),
            "rule #3 (line 9) limits to 10000001 packets a second; at most 10000000 are \
             supported (the token bucket counts whole nanoseconds between packets)"
        );

        p.firewall.default_action = Action::Allow;
        p.firewall.log_default = false;
        p.firewall.fragments = FragmentPolicy::MatchL3;
        let c = compile(&p).unwrap();
        assert_eq!(c.header.default_action, ACTION_ALLOW);
        assert_eq!(c.header.fragments, FRAGMENTS_MATCH_L3);
        assert_eq!(c.header.flags, 0);
    }

    // ---------------------------------------------------------------- connection tracking

    fn with_state(ct_state: u8, pkt: Packet) -> Packet {
        Packet { ct_state, ..pkt }
    }

    #[test]
    fn state_conditions_expand_to_one_entry_per_state_bit() {
        let p = policy(
            vec![
                Rule {
                    state: Some(STATE_ESTABLISHED | STATE_RELATED),
                    action: Action::Allow,
                    ..tcp_rule(Some((80, 90)))
                },
                Rule {
                    state: Some(STATE_NEW),
                    ..tcp_rule(Some((85, 100)))
                },
                tcp_rule(Some((80, 100))),
                Rule {
                    state: Some(STATE_INVALID),
                    src: cidrs(&["10.0.0.0/8"]),
                    ..any_rule()
                },
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        // The two TCP state rules share a shape; the plain rule and the address rule do not.
        assert_eq!(c.tuples.len(), 3);
        assert_eq!(
            c.tuples[0].flags,
            TUPLE_PROTO | TUPLE_DPORT | TUPLE_CT_STATE
        );
        assert_eq!(c.tuples[1].flags, TUPLE_PROTO | TUPLE_DPORT);
        assert_eq!(c.tuples[2].flags, TUPLE_CT_STATE);
        assert_eq!(c.tuples[2].family, FAMILY_V4);
        // Classes 80-84, 85-90, 91-100: rule 0 has two classes times two states, rule 1
        // two classes times one state, rule 2 three classes, rule 3 one state.
        let mut keys: Vec<(u32, u16, u8)> = c
            .entries
            .iter()
            .map(|(k, &r)| (r, k.dport_class, k.ct_state))
            .collect();
        keys.sort_unstable();
        let (a, b, d) = (c.dport_class[80], c.dport_class[85], c.dport_class[91]);
        assert_eq!(
            keys,
            [
                (0, a, STATE_ESTABLISHED),
                (0, a, STATE_RELATED),
                (0, b, STATE_ESTABLISHED),
                (0, b, STATE_RELATED),
                (1, b, STATE_NEW),
                (1, d, STATE_NEW),
                (2, a, 0),
                (2, b, 0),
                (2, d, 0),
                (3, 0, STATE_INVALID),
            ]
        );
        let web = |ct, port| with_state(ct, tcp("192.0.2.1", "192.0.2.2", 1000, port));
        let cases = [
            (0, 80, Some(2)),
            (STATE_NEW, 80, Some(2)),
            (STATE_NEW, 85, Some(1)),
            (STATE_NEW, 95, Some(1)),
            (STATE_ESTABLISHED, 85, Some(0)),
            (STATE_RELATED, 90, Some(0)),
            (STATE_RELATED, 91, Some(2)),
            (STATE_INVALID, 85, Some(2)),
            (STATE_INVALID, 101, None),
        ];
        for (ct, port, want) in cases {
            assert_eq!(
                classify_both(&p, &c, &web(ct, port)),
                want,
                "{ct} port {port}"
            );
        }
        let from_ten = |ct| with_state(ct, packet("10.1.2.3", "192.0.2.2", 17, 5, 5));
        assert_eq!(classify_both(&p, &c, &from_ten(STATE_INVALID)), Some(3));
        assert_eq!(classify_both(&p, &c, &from_ten(STATE_NEW)), None);
        assert_eq!(classify_both(&p, &c, &from_ten(0)), None);
    }

    #[test]
    fn untracked_packets_never_meet_state_rules() {
        let p = policy(
            vec![
                Rule {
                    state: Some(STATE_ALL),
                    ..any_rule()
                },
                Rule {
                    action: Action::Allow,
                    ..any_rule()
                },
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        let pkt = tcp("10.0.0.1", "10.0.0.2", 1, 2);
        assert_eq!(classify_both(&p, &c, &pkt), Some(1));
        for bit in [STATE_NEW, STATE_ESTABLISHED, STATE_RELATED, STATE_INVALID] {
            assert_eq!(classify_both(&p, &c, &with_state(bit, pkt)), Some(0));
        }
        // Bits outside the four states belong to no rule.
        assert_eq!(classify_both(&p, &c, &with_state(16, pkt)), Some(1));
        // A non-first fragment keeps the state the tracker gave it (none, today).
        let later = Packet {
            frag: FRAG_LATER,
            ..pkt
        };
        assert_eq!(classify_both(&p, &c, &later), Some(1));
        assert_eq!(
            classify_both(&p, &c, &with_state(STATE_ESTABLISHED, later)),
            Some(0)
        );
    }

    #[test]
    fn a_state_mask_without_bits_matches_nothing() {
        // The checker never writes one; a policy built in code may.
        let p = policy(
            vec![
                Rule {
                    state: Some(0),
                    ..any_rule()
                },
                tcp_rule(None),
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        assert_eq!(c.tuples.len(), 1);
        for ct in [0, STATE_NEW, STATE_INVALID] {
            let pkt = with_state(ct, tcp("10.0.0.1", "10.0.0.2", 1, 2));
            assert_eq!(classify_both(&p, &c, &pkt), Some(1));
        }
    }

    #[test]
    fn header_flags_follow_tracking_and_stateful() {
        let flags = |p: &Policy| compile(p).unwrap().header.flags;
        let mut p = policy(vec![tcp_rule(None)], vec![]);
        assert_eq!(flags(&p), 0);
        p.conntrack.present = true;
        assert_eq!(flags(&p), POLICY_CT_TRACK);
        p.conntrack.present = false;
        p.firewall.stateful = true;
        assert_eq!(flags(&p), POLICY_CT_TRACK | POLICY_STATEFUL);
        p.firewall.stateful = false;
        p.firewall.rules[0].state = Some(STATE_NEW);
        assert_eq!(flags(&p), POLICY_CT_TRACK);
        p.firewall.log_default = true;
        assert_eq!(
            flags(&p),
            POLICY_CT_TRACK | POLICY_LOG_DEFAULT | POLICY_LOG_MALFORMED | POLICY_LOG_FRAGMENTS
        );
        // A present but disabled section keeps tracking off.
        let mut p = policy(vec![tcp_rule(None)], vec![]);
        p.conntrack.present = true;
        p.conntrack.enabled = false;
        assert_eq!(flags(&p), 0);
    }

    #[test]
    fn state_or_stateful_with_tracking_off_is_an_error() {
        let mut p = policy(
            vec![
                tcp_rule(None),
                Rule {
                    name: Some("est".to_owned()),
                    line: 7,
                    state: Some(STATE_ESTABLISHED),
                    ..any_rule()
                },
            ],
            vec![],
        );
        p.conntrack.enabled = false;
        assert_eq!(
            compile(&p),
            Err(CompileError::StateWithoutTracking {
                rule: "est".to_owned(),
                line: 7
            })
        );
        p.firewall.rules[1].name = None;
        assert_eq!(
            compile(&p),
            Err(CompileError::StateWithoutTracking {
                rule: "#1".to_owned(),
                line: 7
            })
        );
        p.firewall.stateful = true;
        assert_eq!(compile(&p), Err(CompileError::StatefulWithoutTracking));
        p.conntrack.enabled = true;
        assert!(compile(&p).is_ok());
    }

    #[test]
    fn the_built_in_policy_tracks_and_is_stateful() {
        let c = compile(&crate::policy::config::default_policy()).unwrap();
        assert_eq!(c.header.flags, POLICY_CT_TRACK | POLICY_STATEFUL);
        assert_eq!(c.header.default_action, ACTION_ALLOW);
        assert!(c.tuples.iter().all(|t| t.flags & TUPLE_CT_STATE == 0));
    }

    // ---------------------------------------------------------------- random policies

    fn arb_port_range() -> impl Strategy<Value = PortRange> {
        let lo = prop_oneof![
            prop::sample::select(vec![
                0u16, 1, 22, 53, 80, 443, 1023, 1024, 8080, 65534, 65535
            ]),
            any::<u16>(),
        ];
        let width = prop_oneof![
            prop::sample::select(vec![0u16, 1, 2, 10, 1000, 40000, u16::MAX]),
            any::<u16>(),
        ];
        (lo, width).prop_map(|(lo, w)| PortRange {
            lo,
            hi: lo.saturating_add(w),
        })
    }

    fn arb_v4_cidr() -> impl Strategy<Value = Cidr> {
        let len = prop_oneof![
            prop::sample::select(vec![0u8, 8, 16, 24, 28, 31, 32]),
            0u8..=32,
        ];
        let small = || prop_oneof![0u8..4, any::<u8>()];
        (
            len,
            prop::sample::select(vec![10u8, 192, 0, 255]),
            small(),
            small(),
            any::<u8>(),
        )
            .prop_map(|(len, a, b, c, d)| {
                Cidr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), len).unwrap()
            })
    }

    fn arb_v6_cidr() -> impl Strategy<Value = Cidr> {
        let len = prop_oneof![
            prop::sample::select(vec![0u8, 16, 32, 48, 64, 96, 112, 127, 128]),
            0u8..=128,
        ];
        prop_oneof![
            3 => (len, 0u8..3, 0u8..3, any::<[u8; 16]>()).prop_map(|(len, x, y, mut b)| {
                b[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, x, y]);
                Cidr::new(IpAddr::V6(Ipv6Addr::from(b)), len).unwrap()
            }),
            // Blocks of the v4-mapped space, written as IPv6.
            1 => (96u8..=128, arb_v4_cidr()).prop_map(|(len, v4)| {
                Cidr::new(IpAddr::V6(Ipv6Addr::from(v4.addr)), len).unwrap()
            }),
        ]
    }

    fn arb_cidr() -> impl Strategy<Value = Cidr> {
        prop_oneof![3 => arb_v4_cidr(), 2 => arb_v6_cidr()]
    }

    /// An address condition; a set is an index resolved once the sets are known.
    #[derive(Debug, Clone)]
    enum RawAddr {
        Any,
        Cidrs(Vec<Cidr>),
        Set(Index),
    }

    fn arb_addr() -> impl Strategy<Value = RawAddr> {
        prop_oneof![
            3 => Just(RawAddr::Any),
            5 => prop::collection::vec(arb_cidr(), 1..=3).prop_map(RawAddr::Cidrs),
            2 => any::<Index>().prop_map(RawAddr::Set),
        ]
    }

    fn arb_action() -> impl Strategy<Value = Action> {
        prop_oneof![
            Just(Action::Allow),
            Just(Action::Drop),
            (1u32..1000, 1u32..1000, any::<bool>()).prop_map(|(pps, burst, per_source)| {
                Action::RateLimit(RateLimit {
                    pps,
                    burst,
                    per: if per_source {
                        RatePer::Source
                    } else {
                        RatePer::Rule
                    },
                })
            }),
        ]
    }

    fn arb_protocol() -> impl Strategy<Value = Option<Protocol>> {
        prop_oneof![
            3 => Just(None),
            3 => Just(Some(Protocol::Tcp)),
            2 => Just(Some(Protocol::Udp)),
            1 => Just(Some(Protocol::Icmp)),
            1 => Just(Some(Protocol::Icmpv6)),
            1 => Just(Some(Protocol::Other(47))),
        ]
    }

    fn arb_tcp_flags() -> impl Strategy<Value = TcpFlags> {
        prop_oneof![
            prop::sample::select(vec![
                (0x02u8, 0x12u8),
                (0x12, 0x12),
                (0x10, 0x10),
                (0, 0x04)
            ]),
            (any::<u8>(), 1u8..=255),
        ]
        .prop_map(|(value, mask)| TcpFlags {
            value: value & mask,
            mask,
        })
    }

    fn arb_icmp() -> impl Strategy<Value = IcmpMatch> {
        let icmp_type = prop_oneof![
            prop::sample::select(vec![0u8, 3, 8, 11, 128, 129, 135, 255]),
            any::<u8>(),
        ];
        let code = prop_oneof![
            Just(None),
            prop::sample::select(vec![0u8, 1, 255]).prop_map(Some),
            any::<u8>().prop_map(Some),
        ];
        (icmp_type, code).prop_map(|(icmp_type, code)| IcmpMatch { icmp_type, code })
    }

    /// A `state` mask: never empty, often one bit, sometimes several or all four.
    fn arb_state() -> impl Strategy<Value = u8> {
        prop_oneof![
            3 => prop::sample::select(vec![
                STATE_NEW,
                STATE_ESTABLISHED,
                STATE_RELATED,
                STATE_INVALID,
            ]),
            2 => 1u8..=STATE_ALL,
        ]
    }

    /// A rule whose conditions respect what the config checker allows: ports need TCP or
    /// UDP, flags need TCP, ICMP needs ICMP or ICMPv6, a flag mask and a state mask are
    /// never empty.
    #[derive(Debug, Clone)]
    struct RawRule {
        action: Action,
        src: RawAddr,
        dst: RawAddr,
        protocol: Option<Protocol>,
        src_ports: Option<PortRange>,
        dst_ports: Option<PortRange>,
        tcp_flags: Option<TcpFlags>,
        icmp: Option<IcmpMatch>,
        state: Option<u8>,
        ip: IpHeaderMatch,
    }

    /// DSCP, ECN and TTL conditions, each now and then; TTL ranges around the values hosts
    /// send with (64, 128, 255) and anywhere.
    fn arb_ip() -> impl Strategy<Value = IpHeaderMatch> {
        let ttl = prop_oneof![
            (0u8..=255, 0u8..=255).prop_map(|(a, b)| (a.min(b), a.max(b))),
            prop::sample::select(vec![(64u8, 64u8), (60, 70), (0, 63), (1, 255), (128, 255)]),
        ];
        // Lengths anywhere, and around the sizes real packets have (40, 576, 1280, 1500).
        // Narrow ones anywhere: a wide random range is up to 30 blocks, and with a TTL range
        // beside it, more shapes than a policy may have.
        let length = prop_oneof![
            (any::<u16>(), prop::sample::select(vec![0u16, 1, 3, 7, 15]))
                .prop_map(|(lo, w)| (lo, lo.saturating_add(w))),
            prop::sample::select(vec![
                (40u16, 40u16),
                (0, 99),
                (576, 1500),
                (1280, 65535),
                (1500, 1500),
                (0, 65535),
            ]),
        ];
        (
            prop::option::weighted(0.2, 0u8..64),
            prop::option::weighted(0.15, 0u8..4),
            prop::option::weighted(0.3, ttl),
            prop::option::weighted(0.15, length),
        )
            .prop_map(|(dscp, ecn, ttl, length)| IpHeaderMatch {
                dscp,
                ecn,
                ttl,
                length,
            })
    }

    fn arb_raw_rule() -> impl Strategy<Value = RawRule> {
        (
            arb_action(),
            arb_addr(),
            arb_addr(),
            arb_protocol(),
            prop::option::weighted(0.4, arb_port_range()),
            prop::option::weighted(0.6, arb_port_range()),
            prop::option::weighted(0.3, arb_tcp_flags()),
            prop::option::weighted(0.6, arb_icmp()),
            prop::option::weighted(0.3, arb_state()),
            arb_ip(),
        )
            .prop_map(
                |(action, src, dst, protocol, sp, dp, flags, icmp, state, ip)| {
                    let ports = matches!(protocol, Some(Protocol::Tcp | Protocol::Udp));
                    let is_icmp = matches!(protocol, Some(Protocol::Icmp | Protocol::Icmpv6));
                    RawRule {
                        action,
                        src,
                        dst,
                        protocol,
                        src_ports: sp.filter(|_| ports),
                        dst_ports: dp.filter(|_| ports),
                        tcp_flags: flags.filter(|_| protocol == Some(Protocol::Tcp)),
                        icmp: icmp.filter(|_| is_icmp),
                        state,
                        ip,
                    }
                },
            )
    }

    /// `c` with another prefix length (host bits cleared).
    fn with_prefix(c: &Cidr, len: u8) -> Cidr {
        let max = match c.family {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        let mut out = Cidr {
            prefix_len: len.min(max),
            ..*c
        };
        let mask = out.mask();
        for (b, m) in out.addr.iter_mut().zip(mask) {
            *b &= m;
        }
        out
    }

    /// A rule that overlaps `base`: the same conditions, or one of them wider or narrower.
    fn derive_rule(base: &Rule, how: u8, k: u8) -> Rule {
        let mut r = base.clone();
        let resize = |m: &mut AddrMatch, wider: bool| {
            if let AddrMatch::Cidrs(list) = m {
                for c in list.iter_mut() {
                    let len = if wider {
                        c.prefix_len.saturating_sub(k)
                    } else {
                        c.prefix_len.saturating_add(k)
                    };
                    *c = with_prefix(c, len);
                }
            }
        };
        match how {
            // Same conditions (only the action differs).
            0 => {}
            1 => resize(&mut r.src, true),
            2 => resize(&mut r.dst, false),
            3 => {
                r.protocol = None;
                r.src_ports = None;
                r.dst_ports = None;
                r.tcp_flags = None;
                r.icmp = None;
            }
            4 => {
                r.dst_ports = r.dst_ports.map(|p| PortRange {
                    lo: p.lo.saturating_sub(u16::from(k) * 7),
                    hi: p.hi.saturating_add(u16::from(k)),
                });
            }
            5 => r.src = AddrMatch::Any,
            6 => {
                r.dst_ports = r.dst_ports.map(|p| {
                    let port = p.lo.saturating_add(u16::from(k)).min(p.hi);
                    PortRange { lo: port, hi: port }
                });
                r.tcp_flags = None;
            }
            // A wider or narrower TTL range, or one around 64; another DSCP.
            8 => {
                r.ip.ttl = match r.ip.ttl {
                    Some((lo, hi)) if k.is_multiple_of(2) => {
                        Some((lo.saturating_sub(k), hi.saturating_add(k)))
                    }
                    Some((lo, hi)) => Some((lo.saturating_add(k).min(hi), hi)),
                    None => Some((64 - k, 64 + k)),
                };
                r.ip.dscp = r.ip.dscp.map(|d| d ^ (k & 1));
                r.ip.length = r.ip.length.map(|(lo, hi)| {
                    (
                        lo.saturating_sub(u16::from(k)),
                        hi.saturating_add(u16::from(k)),
                    )
                });
            }
            // Another state condition: none, a neighbouring bit added, or a single bit.
            _ => {
                let bit = 1u8 << (k % 4);
                r.state = match (r.state, k % 3) {
                    (_, 0) => None,
                    (Some(m), 1) => Some(m | bit),
                    _ => Some(bit),
                };
            }
        }
        r
    }

    fn arb_policy(max_rules: usize) -> impl Strategy<Value = Policy> {
        (
            prop::collection::vec(prop::collection::vec(arb_cidr(), 0..6), 0..3),
            prop::collection::vec(
                (
                    arb_raw_rule(),
                    prop::option::weighted(0.35, (any::<Index>(), 0u8..9, 1u8..=8)),
                ),
                0..max_rules,
            ),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(sets, raw, default_drop, log_default, frag_drop, stateful)| {
                    let addr = |a: RawAddr| match a {
                        RawAddr::Any => AddrMatch::Any,
                        RawAddr::Cidrs(c) => AddrMatch::Cidrs(c),
                        RawAddr::Set(_) if sets.is_empty() => AddrMatch::Any,
                        RawAddr::Set(i) => AddrMatch::Set(i.index(sets.len())),
                    };
                    let mut rules: Vec<Rule> = Vec::with_capacity(raw.len());
                    for (r, derive) in raw {
                        let rule = match derive {
                            // A variant of an earlier rule: overlapping rules in the same and in
                            // neighbouring shapes are where first-match order matters.
                            Some((base, how, k)) if !rules.is_empty() => Rule {
                                action: r.action,
                                ..derive_rule(&rules[base.index(rules.len())], how, k)
                            },
                            _ => Rule {
                                action: r.action,
                                src: addr(r.src),
                                dst: addr(r.dst),
                                protocol: r.protocol,
                                src_ports: r.src_ports,
                                dst_ports: r.dst_ports,
                                tcp_flags: r.tcp_flags,
                                icmp: r.icmp,
                                state: r.state,
                                ip: r.ip,
                                ..any_rule()
                            },
                        };
                        rules.push(rule);
                    }
                    Policy {
                        shield: crate::shield::Shield::default(),
                        scrub: crate::scrub::Scrub::default(),
                        nat: crate::nat::Nat::default(),
                        lb: crate::lb::Lb::default(),
                        tls: crate::tls::Tls::default(),
                        dhcp: crate::dhcp::Dhcp::default(),
                        intel: crate::intel::Intel::default(),
                        dlp: crate::dlp::Dlp::default(),
                        geoip: None,
                        ids: crate::ids::Ids::default(),
                        firewall: Firewall {
                            rate_prefix: Default::default(),
                            capacity: Default::default(),
                            default_action: if default_drop {
                                Action::Drop
                            } else {
                                Action::Allow
                            },
                            log_default,
                            fragments: if frag_drop {
                                FragmentPolicy::Drop
                            } else {
                                FragmentPolicy::MatchL3
                            },
                            stateful,
                            rules,
                        },
                        sets: sets
                            .into_iter()
                            .enumerate()
                            .map(|(i, entries)| IpSet {
                                name: format!("set{i}"),
                                entries,
                            })
                            .collect(),
                        dns: Default::default(),
                        conntrack: Conntrack::default(),
                    }
                },
            )
    }

    /// A policy whose rules all draw from a small palette: a block, its sibling and a child
    /// block, one destination block, nested port ranges, TCP or any protocol. Rules then
    /// share few shapes and overlap a lot, so packets match several rules in several tuples:
    /// what the search's early stop and its minimum have to get right.
    fn arb_palette_policy(max_rules: usize) -> impl Strategy<Value = Policy> {
        let pick = (
            0u8..6,
            0u8..5,
            0u8..2,
            0u8..10,
            0u8..3,
            0u8..8,
            any::<bool>(),
            0u8..8,
        );
        (
            prop_oneof![arb_v4_cidr(), arb_v6_cidr()],
            arb_cidr(),
            arb_cidr(),
            arb_port_range(),
            prop::collection::vec(pick, max_rules / 2..max_rules),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(base, dst, other, ports, picks, frag_drop, stateful)| {
                let max = if base.family == Family::V4 { 32 } else { 128 };
                let block = with_prefix(&base, base.prefix_len.clamp(1, max - 4));
                let bit = u32::from(block.stored_prefix_len()) - 1;
                let mut sibling = block;
                sibling.addr[(bit / 8) as usize] ^= 0x80 >> (bit % 8);
                let child = with_prefix(&block, block.prefix_len + 4);
                let src = |k: u8| match k {
                    0 | 1 => AddrMatch::Any,
                    2 => AddrMatch::Cidrs(vec![block]),
                    3 => AddrMatch::Cidrs(vec![sibling]),
                    4 => AddrMatch::Cidrs(vec![child]),
                    _ => AddrMatch::Cidrs(vec![block, other]),
                };
                let dst = |k: u8| match k {
                    4 => AddrMatch::Cidrs(vec![dst]),
                    _ => AddrMatch::Any,
                };
                let mid = ports.lo + (ports.hi - ports.lo) / 2;
                let port_chain = [
                    None,
                    Some(PortRange {
                        lo: ports.lo.saturating_sub(100),
                        hi: ports.hi.saturating_add(100),
                    }),
                    Some(ports),
                    Some(PortRange { lo: mid, hi: mid }),
                ];
                let rules = picks
                    .into_iter()
                    .map(|(s, d, proto, sport, dport, flags, allow, state)| {
                        let protocol = [None, Some(Protocol::Tcp)][usize::from(proto)];
                        let ports_ok = protocol.is_some();
                        let tcp = protocol == Some(Protocol::Tcp);
                        Rule {
                            action: if allow { Action::Allow } else { Action::Drop },
                            src: src(s),
                            dst: dst(d),
                            protocol,
                            src_ports: (sport >= 8).then_some(ports).filter(|_| ports_ok),
                            dst_ports: port_chain[usize::from(dport)].filter(|_| ports_ok),
                            tcp_flags: match flags {
                                6 => Some(TcpFlags {
                                    value: 0x02,
                                    mask: 0x12,
                                }),
                                7 => Some(TcpFlags {
                                    value: 0x02,
                                    mask: 0x02,
                                }),
                                _ => None,
                            }
                            .filter(|_| tcp),
                            // Nested like the port chain: one bit, two, all, none.
                            state: [
                                None,
                                None,
                                None,
                                Some(STATE_NEW),
                                Some(STATE_ESTABLISHED),
                                Some(STATE_ESTABLISHED | STATE_RELATED),
                                Some(STATE_NEW | STATE_INVALID),
                                Some(STATE_ALL),
                            ][usize::from(state)],
                            ..any_rule()
                        }
                    })
                    .collect();
                Policy {
                    shield: crate::shield::Shield::default(),
                    scrub: crate::scrub::Scrub::default(),
                    nat: crate::nat::Nat::default(),
                    lb: crate::lb::Lb::default(),
                    tls: crate::tls::Tls::default(),
                    dhcp: crate::dhcp::Dhcp::default(),
                    intel: crate::intel::Intel::default(),
                    dlp: crate::dlp::Dlp::default(),
                    geoip: None,
                    ids: crate::ids::Ids::default(),
                    firewall: Firewall {
                        rate_prefix: Default::default(),
                        capacity: Default::default(),
                        default_action: Action::Drop,
                        log_default: false,
                        fragments: if frag_drop {
                            FragmentPolicy::Drop
                        } else {
                            FragmentPolicy::MatchL3
                        },
                        stateful,
                        rules,
                    },
                    sets: vec![],
                    dns: Default::default(),
                    conntrack: Conntrack::default(),
                }
            })
    }

    /// A random policy the compiler accepts. Ranges split into aligned blocks (TTL, length)
    /// times address prefix lengths can need more than `MAX_TUPLES` shapes; such a policy is
    /// refused by design (`more_than_max_tuples_shapes_is_an_error`), so the properties are checked on
    /// the policies that compile.
    fn arb_any_policy() -> impl Strategy<Value = Policy> {
        prop_oneof![arb_policy(14), arb_palette_policy(40)]
            .prop_filter("needs more than MAX_TUPLES shapes", |p| {
                !matches!(compile(p), Err(CompileError::TooManyTuples { .. }))
            })
    }

    // ---------------------------------------------------------------- random packets

    /// How to choose one address: near an edge of a block of the aimed-at rule (`follow`),
    /// else near a block from anywhere in the policy, else at random.
    #[derive(Debug, Clone)]
    struct AddrSpec {
        follow: bool,
        pick: Index,
        edge: u8,
        noise: [u8; 16],
    }

    #[derive(Debug, Clone)]
    struct PortSpec {
        follow: bool,
        pick: Index,
        edge: u8,
        noise: u16,
    }

    /// A packet described relative to a policy, so it shrinks independently of it.
    #[derive(Debug, Clone)]
    struct PacketSpec {
        target: Index,
        v6: bool,
        /// Carry IPv4 addresses in an IPv6 packet (v4-mapped).
        cross: bool,
        src: AddrSpec,
        dst: AddrSpec,
        follow_proto: bool,
        proto: Index,
        sport: PortSpec,
        dport: PortSpec,
        follow_flags: bool,
        flags_edge: u8,
        flags_noise: u8,
        frag: u8,
        /// Take a state bit of the aimed-at rule's `state`, else `CT_STATES[ct_pick]`.
        follow_state: bool,
        ct_pick: Index,
        /// Take the aimed-at rule's DSCP, ECN and a TTL on or next to its range's edges.
        follow_ip: bool,
        ttl_edge: u8,
        tos_noise: u8,
        ttl_noise: u8,
        /// The IP length: on or next to an edge of the aimed-at rule's `length` range, else
        /// the noise.
        length_edge: u8,
        length_noise: u16,
    }

    /// The values the tracker gives `Packet::ct_state`: unclassified, or one state bit.
    const CT_STATES: [u8; 5] = [
        0,
        STATE_NEW,
        STATE_ESTABLISHED,
        STATE_RELATED,
        STATE_INVALID,
    ];

    fn arb_addr_spec() -> impl Strategy<Value = AddrSpec> {
        (
            prop::bool::weighted(0.85),
            any::<Index>(),
            0u8..6,
            any::<[u8; 16]>(),
        )
            .prop_map(|(follow, pick, edge, noise)| AddrSpec {
                follow,
                pick,
                edge,
                noise,
            })
    }

    fn arb_port_spec() -> impl Strategy<Value = PortSpec> {
        (
            prop::bool::weighted(0.85),
            any::<Index>(),
            0u8..6,
            any::<u16>(),
        )
            .prop_map(|(follow, pick, edge, noise)| PortSpec {
                follow,
                pick,
                edge,
                noise,
            })
    }

    fn arb_packet_spec() -> impl Strategy<Value = PacketSpec> {
        (
            (any::<Index>(), any::<bool>(), prop::bool::weighted(0.1)),
            (arb_addr_spec(), arb_addr_spec()),
            (prop::bool::weighted(0.85), any::<Index>()),
            (arb_port_spec(), arb_port_spec()),
            (prop::bool::weighted(0.8), 0u8..3, any::<u8>()),
            prop_oneof![6 => Just(FRAG_NONE), 2 => Just(FRAG_FIRST), 2 => Just(FRAG_LATER)],
            (prop::bool::weighted(0.8), any::<Index>()),
            (prop::bool::weighted(0.8), 0u8..5, any::<u8>(), any::<u8>()),
            (0u8..5, any::<u16>()),
        )
            .prop_map(
                |(
                    (target, v6, cross),
                    (src, dst),
                    (follow_proto, proto),
                    (sport, dport),
                    (follow_flags, flags_edge, flags_noise),
                    frag,
                    (follow_state, ct_pick),
                    (follow_ip, ttl_edge, tos_noise, ttl_noise),
                    (length_edge, length_noise),
                )| PacketSpec {
                    length_edge,
                    length_noise,
                    follow_ip,
                    ttl_edge,
                    tos_noise,
                    ttl_noise,
                    target,
                    v6,
                    cross,
                    src,
                    dst,
                    follow_proto,
                    proto,
                    sport,
                    dport,
                    follow_flags,
                    flags_edge,
                    flags_noise,
                    frag,
                    follow_state,
                    ct_pick,
                },
            )
    }

    /// The blocks an address condition names (a set's members for a set).
    fn blocks(p: &Policy, m: &AddrMatch) -> Vec<Cidr> {
        match m {
            AddrMatch::Any => Vec::new(),
            AddrMatch::Cidrs(c) => c.clone(),
            AddrMatch::Set(s) => p.sets[*s].entries.clone(),
        }
    }

    /// An address at or just beyond an edge of `c`, in the 16-byte stored form. IPv4 blocks
    /// stay inside the v4-mapped space.
    fn edge_addr(c: &Cidr, edge: u8, noise: &[u8; 16]) -> [u8; 16] {
        let n = u128::from_be_bytes(*noise);
        let (base, bits, width) = match c.family {
            Family::V4 => (
                u128::from(u32::from_be_bytes(c.addr[12..].try_into().unwrap())),
                u32::from(c.prefix_len),
                32,
            ),
            Family::V6 => (u128::from_be_bytes(c.addr), u32::from(c.prefix_len), 128),
        };
        let all = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        let host = if bits == width { 0 } else { all >> bits };
        let v = match edge {
            0 => base,
            1 => base | host,
            2 => base.wrapping_sub(1),
            3 => (base | host).wrapping_add(1),
            4 => base | (n & host),
            // The sibling block: same prefix but the last bit flipped.
            _ if bits == 0 => n,
            _ => (base ^ (1u128 << (width - bits))) | (n & host),
        } & all;
        match c.family {
            Family::V4 => v4_mapped((v as u32).to_be_bytes()),
            Family::V6 => v.to_be_bytes(),
        }
    }

    fn noise_addr(v4: bool, noise: &[u8; 16]) -> [u8; 16] {
        if v4 {
            v4_mapped([noise[0], noise[1], noise[2], noise[3]])
        } else {
            *noise
        }
    }

    fn port_at(r: PortRange, edge: u8, noise: u16) -> u16 {
        match edge {
            0 => r.lo,
            1 => r.hi,
            2 => r.lo.wrapping_sub(1),
            3 => r.hi.wrapping_add(1),
            4 => r.lo + (u32::from(noise) % (u32::from(r.hi - r.lo) + 1)) as u16,
            _ => noise,
        }
    }

    fn resolve(p: &Policy, s: &PacketSpec) -> Packet {
        let rules = &p.firewall.rules;
        let target = (!rules.is_empty()).then(|| &rules[s.target.index(rules.len())]);
        let src_blocks = target.map(|r| blocks(p, &r.src)).unwrap_or_default();
        let dst_blocks = target.map(|r| blocks(p, &r.dst)).unwrap_or_default();
        // The address space: that of the first followed block, else the spec's choice.
        let lead = [(&s.src, &src_blocks), (&s.dst, &dst_blocks)]
            .into_iter()
            .find(|(a, b)| a.follow && !b.is_empty())
            .map(|(a, b)| b[a.pick.index(b.len())].family);
        let v4 = lead.map_or(!s.v6, |f| f == Family::V4);
        let family = Some(if v4 { Family::V4 } else { Family::V6 });
        let everywhere: Vec<Cidr> = rules
            .iter()
            .flat_map(|r| [blocks(p, &r.src), blocks(p, &r.dst)])
            .flatten()
            .filter(|c| Some(c.family) == family)
            .collect();
        let addr = |a: &AddrSpec, own: &[Cidr]| {
            let own: Vec<&Cidr> = own.iter().filter(|c| Some(c.family) == family).collect();
            if a.follow && !own.is_empty() {
                edge_addr(own[a.pick.index(own.len())], a.edge, &a.noise)
            } else if a.edge < 4 && !everywhere.is_empty() {
                edge_addr(
                    &everywhere[a.pick.index(everywhere.len())],
                    a.edge,
                    &a.noise,
                )
            } else {
                noise_addr(v4, &a.noise)
            }
        };
        let src = addr(&s.src, &src_blocks);
        let dst = addr(&s.dst, &dst_blocks);

        const PROTOS: [u8; 7] = [6, 17, 1, 58, 47, 6, 17];
        let proto = match target.and_then(|r| r.protocol) {
            Some(pr) if s.follow_proto => pr.number(),
            _ => PROTOS[s.proto.index(PROTOS.len())],
        };
        let port = |ps: &PortSpec, own: Option<PortRange>, all: &[PortRange]| match own {
            Some(r) if ps.follow => port_at(r, ps.edge, ps.noise),
            _ if !all.is_empty() && ps.edge < 5 => {
                port_at(all[ps.pick.index(all.len())], ps.edge, ps.noise)
            }
            _ => ps.noise,
        };
        let sports: Vec<PortRange> = rules.iter().filter_map(|r| r.src_ports).collect();
        let dports: Vec<PortRange> = rules.iter().filter_map(dport_range).collect();
        let (mut sport, mut dport, mut tcp_flags) = (0, 0, 0);
        match proto {
            6 | 17 => {
                sport = port(&s.sport, target.and_then(|r| r.src_ports), &sports);
                dport = port(&s.dport, target.and_then(|r| r.dst_ports), &dports);
            }
            1 | 58 => dport = port(&s.dport, target.and_then(dport_range), &dports),
            _ => {}
        }
        if proto == 6 {
            tcp_flags = match target.and_then(|r| r.tcp_flags) {
                Some(f) if s.follow_flags => {
                    let free = s.flags_noise & !f.mask;
                    match s.flags_edge {
                        0 => f.value | free,
                        // One tested flag wrong.
                        1 => {
                            let bit = 1u8 << (s.flags_noise % 8);
                            let bit = if bit & f.mask != 0 {
                                bit
                            } else {
                                f.mask & f.mask.wrapping_neg()
                            };
                            (f.value ^ bit) | free
                        }
                        _ => s.flags_noise,
                    }
                }
                _ => s.flags_noise,
            };
        }
        if s.frag == FRAG_LATER {
            (sport, dport, tcp_flags) = (0, 0, 0);
        }
        let ct_state = match target.and_then(|r| r.state) {
            Some(mask) if s.follow_state && mask != 0 => {
                let bits: Vec<u8> = (0..8).map(|i| 1u8 << i).filter(|b| mask & b != 0).collect();
                bits[s.ct_pick.index(bits.len())]
            }
            _ => CT_STATES[s.ct_pick.index(CT_STATES.len())],
        };
        let header = target.map(|r| r.ip).unwrap_or_default();
        let (mut tos, mut ttl) = (s.tos_noise, s.ttl_noise);
        if s.follow_ip {
            if let Some(d) = header.dscp {
                tos = tos & 3 | d << 2;
            }
            if let Some(e) = header.ecn {
                tos = tos & 0xfc | e;
            }
            if let Some((lo, hi)) = header.ttl {
                ttl = match s.ttl_edge {
                    0 => lo,
                    1 => hi,
                    2 => lo.wrapping_sub(1),
                    3 => hi.wrapping_add(1),
                    _ => lo + s.ttl_noise % (hi - lo).saturating_add(1).max(1),
                };
            }
        }
        let length = match header.length {
            Some((lo, hi)) if s.follow_ip => match s.length_edge {
                0 => lo,
                1 => hi,
                2 => lo.wrapping_sub(1),
                3 => hi.wrapping_add(1),
                _ => lo + s.length_noise % (hi - lo).saturating_add(1).max(1),
            },
            _ => s.length_noise,
        };
        Packet {
            family: if v4 && !s.cross { FAMILY_V4 } else { FAMILY_V6 },
            proto,
            frag: s.frag,
            tcp_flags,
            ct_state,
            shield: 0,
            tos,
            ttl,
            src,
            dst,
            sport,
            dport,
            l3_offset: 14,
            l4_offset: 34,
            // The IP length the header would give: 20 bytes of header before layer 4.
            l4_len: length.wrapping_sub(20),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        /// The heart of it: the tuple-space search over the compiled maps finds exactly the
        /// rule the linear reference finds.
        #[test]
        fn tuple_space_search_agrees_with_reference(
            p in arb_any_policy(),
            specs in prop::collection::vec(arb_packet_spec(), 1..48),
        ) {
            let c = compile(&p).unwrap();
            for s in &specs {
                let pkt = resolve(&p, s);
                prop_assert_eq!(
                    classify::first_match(&c, &pkt),
                    reference::first_match(&p, &pkt),
                    "packet {:?}", pkt
                );
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The same agreement whatever state the tracker gave the packet: unclassified (0),
        /// each of the four state bits, and the bits no state uses, which must match no
        /// `state` rule in either classifier.
        #[test]
        fn tuple_space_search_agrees_with_reference_in_every_ct_state(
            p in arb_any_policy(),
            specs in prop::collection::vec(arb_packet_spec(), 1..24),
        ) {
            let c = compile(&p).unwrap();
            for s in &specs {
                let pkt = resolve(&p, s);
                for ct_state in std::iter::once(0).chain((0..8).map(|i| 1u8 << i)) {
                    let pkt = Packet { ct_state, ..pkt };
                    prop_assert_eq!(
                        classify::first_match(&c, &pkt),
                        reference::first_match(&p, &pkt),
                        "packet {:?}", pkt
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// What the compiler emits is internally consistent.
        #[test]
        fn compiled_structure_is_consistent(p in arb_any_policy()) {
            let c = compile(&p).unwrap();
            prop_assert_eq!(c.header.tuple_count as usize, c.tuples.len());
            prop_assert_eq!(c.header.rule_count as usize, p.firewall.rules.len());
            prop_assert_eq!(c.rules.len(), p.firewall.rules.len());
            prop_assert!(c.tuples.len() <= MAX_TUPLES as usize);
            prop_assert!(c.tuples.windows(2).all(|w| w[0].best_rule <= w[1].best_rule));
            for (i, t) in c.tuples.iter().enumerate() {
                // Each tuple's best rule is the smallest rule among its entries, and the
                // entry of that rule survived deduplication.
                let least = entries_of_tuple(&c, i as u32).iter().map(|e| e.1).min();
                prop_assert_eq!(least, Some(t.best_rule), "tuple {}", i);
                let r = &p.firewall.rules[t.best_rule as usize];
                prop_assert_eq!(t.flags & TUPLE_PROTO != 0, r.protocol.is_some());
                prop_assert_eq!(t.flags & TUPLE_SPORT != 0, r.src_ports.is_some());
                prop_assert_eq!(t.flags & TUPLE_DPORT != 0, dport_range(r).is_some());
                prop_assert_eq!(t.tcp_flags_mask, r.tcp_flags.map_or(0, |f| f.mask));
                prop_assert_eq!(t.flags & TUPLE_CT_STATE != 0, r.state.is_some());
                if t.flags & TUPLE_SRC_SET != 0 {
                    prop_assert!((t.src_set as usize) < p.sets.len());
                    prop_assert_eq!(t.src_mask, [0; 16]);
                }
                if t.flags & TUPLE_DST_SET != 0 {
                    prop_assert!((t.dst_set as usize) < p.sets.len());
                    prop_assert_eq!(t.dst_mask, [0; 16]);
                }
            }
            for (k, &rule) in &c.entries {
                prop_assert!((k.tuple as usize) < c.tuples.len());
                prop_assert!((rule as usize) < p.firewall.rules.len());
                let t = &c.tuples[k.tuple as usize];
                // Keys are already masked to their tuple.
                for i in 0..16 {
                    prop_assert_eq!(k.src[i] & !t.src_mask[i], 0);
                    prop_assert_eq!(k.dst[i] & !t.dst_mask[i], 0);
                }
                prop_assert_eq!(k.tcp_flags & !t.tcp_flags_mask, 0);
                if t.flags & TUPLE_SPORT == 0 {
                    prop_assert_eq!(k.sport_class, 0);
                }
                if t.flags & TUPLE_DPORT == 0 {
                    prop_assert_eq!(k.dport_class, 0);
                }
                // One state bit of the rule's mask per key in a state tuple, else none.
                match p.firewall.rules[rule as usize].state {
                    Some(mask) => {
                        prop_assert!(t.flags & TUPLE_CT_STATE != 0);
                        prop_assert_eq!(k.ct_state.count_ones(), 1);
                        prop_assert_eq!(k.ct_state & !mask, 0);
                    }
                    None => {
                        prop_assert_eq!(t.flags & TUPLE_CT_STATE, 0);
                        prop_assert_eq!(k.ct_state, 0);
                    }
                }
            }
            // The header asks for tracking exactly when something needs it.
            let tracked = p.firewall.rules.iter().any(|r| r.state.is_some());
            prop_assert_eq!(c.header.flags & POLICY_CT_TRACK != 0, tracked || p.firewall.stateful);
            prop_assert_eq!(c.header.flags & POLICY_STATEFUL != 0, p.firewall.stateful);
        }
    }

    /// The packet generator is only useful if its packets reach rules: check that random
    /// policies see a fair share of packets matched by a rule, fall to the default, and match
    /// rules beyond the first.
    #[test]
    fn generated_packets_often_hit_rules() {
        use proptest::{
            strategy::ValueTree as _,
            test_runner::{Config, TestRng, TestRunner},
        };
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
        );
        let (mut total, mut hit, mut later_rule) = (0u32, 0u32, 0u32);
        for _ in 0..200 {
            let p = arb_any_policy().new_tree(&mut runner).unwrap().current();
            if p.firewall.rules.is_empty() {
                continue;
            }
            for _ in 0..50 {
                let s = arb_packet_spec().new_tree(&mut runner).unwrap().current();
                let pkt = resolve(&p, &s);
                total += 1;
                match reference::first_match(&p, &pkt) {
                    Some(0) => hit += 1,
                    Some(_) => {
                        hit += 1;
                        later_rule += 1;
                    }
                    None => {}
                }
            }
        }
        let share = |n: u32| f64::from(n) / f64::from(total);
        eprintln!("{total} packets: {hit} hit a rule, {later_rule} a rule after the first");
        assert!(share(hit) > 0.3, "only {hit} of {total} packets hit a rule");
        assert!(
            share(hit) < 0.9,
            "{hit} of {total} packets hit a rule: no default left"
        );
        assert!(
            share(later_rule) > 0.15,
            "only {later_rule} of {total} hit a later rule"
        );
    }
}
