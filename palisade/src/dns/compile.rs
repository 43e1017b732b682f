//! Compiles the DNS part of a [`Policy`] into map contents for one generation.

use palisade_common::{
    dns::{
        entropy,
        hash::{HashKey, suffix_hashes},
        maps::{
            ACTION_DROP, ACTION_NXDOMAIN, ACTION_REFUSED, ACTION_SINKHOLE, DnsGlobal, KIND_APEX,
            KIND_BELOW, MAX_NAME_KEYS, MAX_PORTS, MAX_QTYPES, MODE_ALLOWLIST, MODE_BLOCKLIST,
            NameKey, NameValue, SCOPE_AUDIT, SCOPE_BLOCK_MALFORMED, SCOPE_EGRESS, SCOPE_INGRESS,
            SCOPE_LOG_ALLOWED, SCOPE_RATE, SCOPE_REBIND, SCOPES, ScopeConfig,
        },
    },
    firewall::{MAX_RATE, gcra},
};

use crate::policy::{
    model::{Dns, DnsAction, DnsMode, DnsScope, NameEntry, NameList, NameMatch, Policy},
    namelist::format_name,
};

/// An entry's name as a list writes it.
fn format_entry(e: &NameEntry) -> String {
    let name = format_name(&e.labels);
    if e.kind == NameMatch::Subdomains {
        format!("*.{name}")
    } else {
        name
    }
}

/// Why a valid DNS policy cannot be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsCompileError {
    #[error("{count} DNS ports; at most {MAX_PORTS} are supported")]
    TooManyPorts { count: usize },
    #[error("{what} is {rate} a second; at most {MAX_RATE} is supported")]
    RateTooHigh { what: &'static str, rate: u32 },
    #[error("list `{list}` line {line}: more than {MAX_QTYPES} query types on one entry")]
    TooManyQtypes { list: String, line: usize },
    /// More name keys than one generation's share of `DNS_NAMES` holds.
    #[error(
        "the DNS lists make {keys} name entries (a name listed with its subdomains makes two, \
         one per scope that uses its list); one policy generation may hold at most \
         {MAX_NAME_KEYS}, the most `[dns] capacity_names` can give"
    )]
    TooManyNames { keys: usize },
    /// Two entries for the same name and coverage whose union one map entry cannot hold.
    #[error(
        "list `{list}` line {line}: `{name}` is also listed in list `{first_list}` line \
         {first_line}, {why}; one name holds one entry, so give both the same `expires` and \
         `max_entropy_bits`, or let one cover the other (all its query types, an expiry no \
         earlier and a bound no lower)"
    )]
    ConflictingDuplicates {
        name: String,
        list: String,
        line: usize,
        first_list: String,
        first_line: usize,
        why: &'static str,
    },
}

/// Map contents for the DNS part of one generation (generation byte of keys left 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledDns {
    pub global: DnsGlobal,
    pub scopes: [ScopeConfig; SCOPES as usize],
    /// Every name key with its value, each key once, in the order of [`key_order`].
    pub names: Vec<(NameKey, NameValue)>,
}

/// The order of [`CompiledDns::names`]: by the key's fields.
fn key_order(k: &NameKey) -> (u64, u64, u16, u8, u8) {
    (k.a, k.b, k.wire_len, k.scope, k.kind)
}

/// A name key an entry makes, with its value and where it came from: the entry `entry` of
/// list `list` in scope `scope`, the `seq`th key of the walk of the lists (for the message
/// of a conflict).
struct Made {
    key: NameKey,
    value: NameValue,
    scope: u8,
    list: u32,
    entry: u32,
    seq: u32,
}

/// Clock offsets for turning unix expiry times into the kernel's boot-time clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub unix_now_ns: u128,
    pub boot_now_ns: u64,
}

impl Clock {
    /// Reads both clocks now.
    #[must_use]
    pub fn now() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let boot = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        Self {
            unix_now_ns: unix,
            boot_now_ns: boot,
        }
    }

    /// The boot-clock time of unix second `expires`; at least 1 so 0 keeps meaning "never".
    #[must_use]
    pub fn boot_ns(&self, expires: u64) -> u64 {
        let at = u128::from(expires) * 1_000_000_000;
        if at <= self.unix_now_ns {
            // Already expired: any time before now.
            return self
                .boot_now_ns
                .saturating_sub((self.unix_now_ns - at).min(u128::from(u64::MAX)) as u64)
                .max(1);
        }
        let ahead = (at - self.unix_now_ns).min(u128::from(u64::MAX)) as u64;
        self.boot_now_ns.saturating_add(ahead)
    }
}

fn scope_config(s: &DnsScope) -> ScopeConfig {
    let mut flags = 0;
    if s.audit {
        flags |= SCOPE_AUDIT;
    }
    if s.block_malformed {
        flags |= SCOPE_BLOCK_MALFORMED;
    }
    if s.log_allowed {
        flags |= SCOPE_LOG_ALLOWED;
    }
    let mut c = ScopeConfig {
        mode: match s.mode {
            DnsMode::Blocklist => MODE_BLOCKLIST,
            DnsMode::Allowlist => MODE_ALLOWLIST,
        },
        action: match s.action {
            DnsAction::Drop => ACTION_DROP,
            DnsAction::Nxdomain => ACTION_NXDOMAIN,
            DnsAction::Refused => ACTION_REFUSED,
            DnsAction::Sinkhole(_) => ACTION_SINKHOLE,
        },
        ..ScopeConfig::default()
    };
    if let Some(rate) = s.rate {
        flags |= SCOPE_RATE;
        (c.rate_interval_ns, c.rate_tolerance_ns) = gcra(rate.qps, rate.burst);
    }
    c.flags = flags;
    c
}

/// Why two entries with the same key cannot be one map entry.
const WIDER_THAN_QTYPES: &str = "together they name more than 4 query types";
const DIFFERENT_TERMS: &str = "with a different expiry or entropy bound and other query types";

/// Merges two entries with the same key into one that means exactly their union, or says
/// why no single entry can:
/// - when one covers the other (every query type of it, an expiry no earlier, a bound no
///   lower), the other adds nothing and is dropped;
/// - with the same expiry and bound, the query types are joined (at most [`MAX_QTYPES`]).
///
/// Anything else would change what one of them means (a joined expiry would keep a query type
/// alive past its own entry's expiry, a joined bound would loosen the other's), so it is
/// refused rather than widened.
///
/// # Errors
/// With the reason, for [`DnsCompileError::ConflictingDuplicates`].
pub fn merge(a: &NameValue, b: &NameValue) -> Result<NameValue, &'static str> {
    if covers(a, b) {
        return Ok(*a);
    }
    if covers(b, a) {
        return Ok(*b);
    }
    if a.expires_boot_ns != b.expires_boot_ns || a.max_entropy_fp != b.max_entropy_fp {
        return Err(DIFFERENT_TERMS);
    }
    // Neither covers the other, so both are limited to some query types.
    let mut all: Vec<u16> = a
        .qtypes
        .iter()
        .chain(&b.qtypes)
        .copied()
        .filter(|&q| q != 0)
        .collect();
    all.sort_unstable();
    all.dedup();
    if all.len() > MAX_QTYPES {
        return Err(WIDER_THAN_QTYPES);
    }
    let mut merged = *a;
    merged.qtypes = [0; MAX_QTYPES];
    merged.qtypes[..all.len()].copy_from_slice(&all);
    Ok(merged)
}

/// Whether `a` allows (or blocks) everything `b` does, whenever `b` does.
fn covers(a: &NameValue, b: &NameValue) -> bool {
    let every_type = |v: &NameValue| v.qtypes.iter().all(|&q| q == 0);
    let types = every_type(a)
        || (!every_type(b) && b.qtypes.iter().all(|&q| q == 0 || a.qtypes.contains(&q)));
    // 0 is "never expires".
    let lasts = a.expires_boot_ns == 0
        || (b.expires_boot_ns != 0 && a.expires_boot_ns >= b.expires_boot_ns);
    // `u32::MAX` is "no bound".
    types && lasts && a.max_entropy_fp >= b.max_entropy_fp
}

fn entry_value(
    e: &NameEntry,
    list: usize,
    clock: &Clock,
    list_name: &str,
) -> Result<NameValue, DnsCompileError> {
    if e.qtypes.len() > MAX_QTYPES {
        return Err(DnsCompileError::TooManyQtypes {
            list: list_name.to_string(),
            line: e.line,
        });
    }
    let mut v = NameValue {
        expires_boot_ns: e.expires.map_or(0, |t| clock.boot_ns(t)),
        max_entropy_fp: e.max_entropy_bits.map_or(u32::MAX, entropy::bound_fp),
        list: list.min(usize::from(u16::MAX - 1)) as u16,
        ..NameValue::default()
    };
    v.qtypes[..e.qtypes.len()].copy_from_slice(&e.qtypes);
    Ok(v)
}

/// The map key of a name entry's suffix hash.
#[must_use]
pub fn name_key(key: &HashKey, labels: &[Vec<u8>], scope: u8, kind: u8) -> NameKey {
    // Only the whole name's hash is kept: a one-element output.
    let mut hashes = [(0u64, 0u64); 1];
    suffix_hashes(key, labels.iter().map(Vec::as_slice), &mut hashes);
    let wire_len = labels.iter().map(|l| l.len() + 1).sum::<usize>() + 1;
    NameKey {
        a: hashes[0].0,
        b: hashes[0].1,
        wire_len: wire_len as u16,
        scope,
        kind,
        generation: 0,
        _pad: [0; 3],
    }
}

/// The name keys `dns` makes at most, in one generation (fewer when entries share a key):
/// what the daemon sizes `DNS_NAMES` for (`crate::capacity`). It does not depend on the hash
/// key or the clock, so a daemon started again with the same policy sizes the map the same.
#[must_use]
pub fn key_bound(dns: &Dns) -> usize {
    let kinds = |e: &NameEntry| match e.kind {
        NameMatch::ApexAndSubdomains => 2,
        NameMatch::Exact | NameMatch::Subdomains => 1,
    };
    let lists: usize = [dns.ingress.as_ref(), dns.egress.as_ref().map(|e| &e.scope)]
        .into_iter()
        .flatten()
        .flat_map(|s| &s.lists)
        .map(|&l| dns.lists[l].entries.iter().map(kinds).sum::<usize>())
        .sum();
    let rebinding: usize = dns
        .bind
        .as_ref()
        .filter(|b| b.rebinding_refuse)
        .map_or(0, |b| b.rebinding_allow.iter().map(kinds).sum());
    lists + rebinding
}

/// Refuses more name keys than one generation may ever hold.
fn names_fit(keys: usize) -> Result<(), DnsCompileError> {
    if keys > MAX_NAME_KEYS {
        return Err(DnsCompileError::TooManyNames { keys });
    }
    Ok(())
}

/// The scopes that take lists, with their configuration when present.
fn scopes_of(dns: &Dns) -> [(u8, Option<&DnsScope>); 2] {
    [
        (SCOPE_INGRESS, dns.ingress.as_ref()),
        (SCOPE_EGRESS, dns.egress.as_ref().map(|e| &e.scope)),
    ]
}

/// What `[intel]` makes of a list's names in scope `cfg`: the names of alert and tag feeds
/// pass and are reported (in blocklists); 0 for every other list.
fn list_intel(cfg: &DnsScope, l: &NameList) -> u8 {
    if cfg.mode == DnsMode::Blocklist {
        crate::intel::runtime::list_action(&l.name)
    } else {
        0
    }
}

/// The apex keys of `entries` in `scope`, on two threads for a long list (hashing the names
/// is most of the compiler's work after the table).
fn apex_keys(key: &HashKey, entries: &[NameEntry], scope: u8) -> Vec<NameKey> {
    let keys = |part: &[NameEntry]| -> Vec<NameKey> {
        part.iter()
            .map(|e| name_key(key, &e.labels, scope, KIND_APEX))
            .collect()
    };
    if entries.len() < 1 << 16 {
        return keys(entries);
    }
    let (first, second) = entries.split_at(entries.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| keys(second));
        let mut out = keys(first);
        // A panic in the other half (none is possible short of a bug) is raised here too.
        out.extend(
            other
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
        );
        out
    })
}

/// The key kinds an entry is written under.
const fn kinds_of(e: &NameEntry) -> &'static [u8] {
    match e.kind {
        NameMatch::Exact => &[KIND_APEX],
        NameMatch::Subdomains => &[KIND_BELOW],
        NameMatch::ApexAndSubdomains => &[KIND_APEX, KIND_BELOW],
    }
}

/// Where the value key `k` held when the entry `stop` (in its scope) conflicted with it came
/// from: `(list, line)`. The lists are walked again as [`compile`] walks them, so that
/// compiling keeps no table of origins for the rare message that needs one.
fn origin_of(dns: &Dns, key: &HashKey, k: &NameKey, stop: (u8, &NameEntry)) -> (usize, usize) {
    // The holder so far and its `[intel]` action.
    let mut holder: Option<((usize, usize), u8)> = None;
    for (scope, cfg) in scopes_of(dns) {
        let Some(cfg) = cfg else { continue };
        for &list in &cfg.lists {
            let l = &dns.lists[list];
            let intel = list_intel(cfg, l);
            for e in &l.entries {
                if scope == stop.0 && std::ptr::eq(e, stop.1) {
                    return holder.map_or((list, e.line), |h| h.0);
                }
                let apex = name_key(key, &e.labels, scope, KIND_APEX);
                if !kinds_of(e)
                    .iter()
                    .any(|&kind| NameKey { kind, ..apex } == *k)
                {
                    continue;
                }
                match holder {
                    None => holder = Some(((list, e.line), intel)),
                    // A block replaces an `[intel]` report, as in `compile`.
                    Some((_, held)) if held != intel && intel == 0 => {
                        holder = Some(((list, e.line), 0));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    holder.map_or((0, 0), |h| h.0)
}

/// Compiles `policy.dns` with the maps' hash key.
///
/// # Errors
/// When the policy exceeds what the maps can express.
pub fn compile(
    policy: &Policy,
    key: &HashKey,
    clock: &Clock,
) -> Result<CompiledDns, DnsCompileError> {
    let dns = &policy.dns;
    if dns.ports.len() > MAX_PORTS {
        return Err(DnsCompileError::TooManyPorts {
            count: dns.ports.len(),
        });
    }
    let rates = [
        ("`[dns] answer_rate`", dns.answers.per_second),
        ("`[dns] event_rate`", dns.events.rate),
        (
            "the `rate` of `[dns.ingress]`",
            dns.ingress
                .as_ref()
                .and_then(|s| s.rate)
                .map_or(0, |r| r.qps),
        ),
        (
            "the `rate` of `[dns.egress]`",
            dns.egress
                .as_ref()
                .and_then(|e| e.scope.rate)
                .map_or(0, |r| r.qps),
        ),
    ];
    if let Some(&(what, rate)) = rates.iter().find(|(_, rate)| *rate > MAX_RATE) {
        return Err(DnsCompileError::RateTooHigh { what, rate });
    }
    let mut out = CompiledDns::default();
    // Every key each entry makes, in the lists' order; sorted by key below.
    let mut made: Vec<Made> = Vec::with_capacity(key_bound(dns).min(2 * MAX_NAME_KEYS));
    out.global.ports[..dns.ports.len()].copy_from_slice(&dns.ports);
    let budget = dns.answers;
    if budget.per_second > 0 {
        (
            out.global.answer_interval_ns,
            out.global.answer_tolerance_ns,
        ) = gcra(budget.per_second, budget.burst);
    }
    out.global.answer_prefix_v4 = budget.prefix_v4.min(32);
    out.global.answer_prefix_v6 = budget.prefix_v6.min(128);
    out.global.rate_prefix_v4 = dns.rate_prefix.v4;
    out.global.rate_prefix_v6 = dns.rate_prefix.v6;
    if let Some(DnsAction::Sinkhole(h)) = dns.ingress.as_ref().map(|s| s.action) {
        out.global.sinkhole_v4 = h.v4.octets();
        out.global.sinkhole_v6 = h.v6.octets();
        out.global.sinkhole_ttl = h.ttl;
    }
    if dns.events.rate > 0 {
        // The burst is one second's worth: `rate` events, then one every interval.
        (out.global.event_interval_ns, out.global.event_tolerance_ns) =
            gcra(dns.events.rate, dns.events.rate);
        out.global.event_sample = dns.events.sample;
    }
    for (scope, cfg) in scopes_of(dns) {
        let Some(cfg) = cfg else { continue };
        out.scopes[usize::from(scope)] = scope_config(cfg);
        for &list in &cfg.lists {
            let l = &dns.lists[list];
            let intel = list_intel(cfg, l);
            let apexes = apex_keys(key, &l.entries, scope);
            for (i, (e, &apex)) in l.entries.iter().zip(&apexes).enumerate() {
                let mut v = entry_value(e, list, clock, &l.name)?;
                v.intel = intel;
                for &kind in kinds_of(e) {
                    made.push(Made {
                        key: NameKey { kind, ..apex },
                        value: v,
                        scope,
                        list: list as u32,
                        entry: i as u32,
                        seq: made.len() as u32,
                    });
                }
            }
        }
    }
    // `[dns.bind] rebinding_allow`: a list of its own (scope `SCOPE_REBIND`) the answer
    // path matches questions against; entries apply to every type and never expire.
    if let Some(b) = dns.bind.as_ref().filter(|b| b.rebinding_refuse) {
        let v = NameValue {
            max_entropy_fp: u32::MAX,
            list: u16::MAX - 1,
            ..NameValue::default()
        };
        for e in &b.rebinding_allow {
            let apex = name_key(key, &e.labels, SCOPE_REBIND, KIND_APEX);
            for &kind in kinds_of(e) {
                // Always the same value: a name listed twice merges into itself.
                made.push(Made {
                    key: NameKey { kind, ..apex },
                    value: v,
                    scope: SCOPE_REBIND,
                    list: u32::MAX,
                    entry: 0,
                    seq: made.len() as u32,
                });
            }
        }
    }
    out.names = fold_keys(dns, key, made)?;
    names_fit(out.names.len())?;
    Ok(out)
}

/// The keys of `made` (in the lists' order), each once with its value: the entries of one
/// key folded in that order, as a block replaces an `[intel]` report and [`merge`] joins the
/// rest. The keys are sorted (the walk's order breaking ties) rather than gathered in a
/// hash table, whose random writes cost more with a million names.
///
/// # Errors
/// [`DnsCompileError::ConflictingDuplicates`] for the conflict an entry-by-entry walk of
/// the lists meets first.
fn fold_keys(
    dns: &Dns,
    key: &HashKey,
    mut made: Vec<Made>,
) -> Result<Vec<(NameKey, NameValue)>, DnsCompileError> {
    made.sort_unstable_by_key(|m| (key_order(&m.key), m.seq));
    let mut out: Vec<(NameKey, NameValue)> = Vec::with_capacity(made.len());
    // The conflict met first in the walk of the lists: the key, and the entry that could
    // not join its value. Keys sort apart from one another, so every key's first conflict
    // is weighed and the earliest one reported.
    let mut conflict: Option<(Made, &'static str)> = None;
    let mut failed = false;
    for m in made {
        let Some((_, old)) = out.last_mut().filter(|(k, _)| *k == m.key) else {
            out.push((m.key, m.value));
            failed = false;
            continue;
        };
        if failed {
            continue;
        }
        let v = m.value;
        if old.intel != v.intel {
            // A name both blocked and reported by `[intel]`: the block stays (between an
            // alert and a tag, the first feed's).
            if v.intel == 0 {
                *old = v;
            }
            continue;
        }
        match merge(old, &v) {
            Ok(joined) => *old = joined,
            Err(why) => {
                failed = true;
                if conflict.as_ref().is_none_or(|(first, _)| m.seq < first.seq) {
                    conflict = Some((m, why));
                }
            }
        }
    }
    let Some((m, why)) = conflict else {
        return Ok(out);
    };
    let l = &dns.lists[m.list as usize];
    let e = &l.entries[m.entry as usize];
    let (first, first_line) = origin_of(dns, key, &m.key, (m.scope, e));
    Err(DnsCompileError::ConflictingDuplicates {
        name: format_entry(e),
        list: l.name.clone(),
        line: e.line,
        first_list: dns.lists[first].name.clone(),
        first_line,
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Dns, Firewall, NameList, NameMatch};

    const A: u16 = 1;
    const MX: u16 = 15;
    const TXT: u16 = 16;
    const AAAA: u16 = 28;

    fn value(qtypes: &[u16], expires: u64, bits: Option<u32>) -> NameValue {
        let mut v = NameValue {
            expires_boot_ns: expires,
            max_entropy_fp: bits.map_or(u32::MAX, entropy::bound_fp),
            ..NameValue::default()
        };
        v.qtypes[..qtypes.len()].copy_from_slice(qtypes);
        v
    }

    /// What a value decides for `qtype` at boot time `now` and a name below carrying
    /// `bits`: `None` when it does not apply, `Some(false)` expired, `Some(true)` allowed.
    fn decides(v: &NameValue, qtype: u16, now: u64, bits: u32) -> Option<bool> {
        if !v.applies_to(qtype) {
            return None;
        }
        if v.expires_boot_ns != 0 && now > v.expires_boot_ns {
            return Some(false);
        }
        Some(u64::from(entropy::bound_fp(bits)) <= u64::from(v.max_entropy_fp))
    }

    /// The union of two entries' decisions: allowed if either allows, expired if one applies
    /// and none allows.
    fn union(a: Option<bool>, b: Option<bool>) -> Option<bool> {
        match (a, b) {
            (None, x) | (x, None) => x,
            (Some(x), Some(y)) => Some(x || y),
        }
    }

    /// Every merge that succeeds decides exactly as the two entries would, for every query
    /// type, time and entropy of interest.
    #[test]
    fn merged_entries_mean_their_union() {
        let qsets: [&[u16]; 5] = [&[], &[A], &[A, AAAA], &[MX], &[A, MX, TXT]];
        let expiries = [0u64, 100, 200];
        let bounds = [None, Some(40), Some(160)];
        let mut merged = 0;
        let mut refused = 0;
        for qa in qsets {
            for qb in qsets {
                for &xa in &expiries {
                    for &xb in &expiries {
                        for ba in bounds {
                            for bb in bounds {
                                let a = value(qa, xa, ba);
                                let b = value(qb, xb, bb);
                                let Ok(m) = merge(&a, &b) else {
                                    refused += 1;
                                    continue;
                                };
                                merged += 1;
                                for q in [A, AAAA, MX, TXT, 99] {
                                    for now in [50, 150, 250] {
                                        for bits in [10, 100, 1000] {
                                            assert_eq!(
                                                decides(&m, q, now, bits),
                                                union(
                                                    decides(&a, q, now, bits),
                                                    decides(&b, q, now, bits)
                                                ),
                                                "{a:?} + {b:?} = {m:?}: qtype {q} at {now}, \
                                                 {bits} bits"
                                            );
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        // Both outcomes are exercised.
        assert!(
            merged > 500 && refused > 500,
            "{merged} merged, {refused} refused"
        );
    }

    #[test]
    fn what_merges_and_what_is_refused() {
        // Same terms: query types joined.
        assert_eq!(
            merge(&value(&[A], 0, None), &value(&[MX], 0, None)),
            Ok(value(&[A, MX], 0, None))
        );
        // One covers the other: it stays as it is.
        let wide = value(&[], 0, Some(160));
        assert_eq!(merge(&wide, &value(&[A], 100, Some(40))), Ok(wide));
        assert_eq!(merge(&value(&[A], 100, Some(40)), &wide), Ok(wide));
        // No longer widened to every type past four.
        assert_eq!(
            merge(&value(&[A, AAAA, MX], 0, None), &value(&[TXT, 99], 0, None)),
            Err(WIDER_THAN_QTYPES)
        );
        // No longer an expiry carried over to the other's query types.
        assert_eq!(
            merge(&value(&[A], 100, None), &value(&[MX], 0, None)),
            Err(DIFFERENT_TERMS)
        );
        // No longer a bound lost: every type with a bound, one type without.
        assert_eq!(
            merge(&value(&[], 0, Some(40)), &value(&[TXT], 0, None)),
            Err(DIFFERENT_TERMS)
        );
    }

    fn policy(lists: Vec<NameList>) -> Policy {
        let scope = DnsScope {
            mode: DnsMode::Allowlist,
            action: DnsAction::Nxdomain,
            audit: false,
            lists: (0..lists.len()).collect(),
            block_malformed: true,
            rate: None,
            log_allowed: false,
        };
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
            firewall: Firewall::default(),
            conntrack: Default::default(),
            sets: vec![],
            dns: Dns {
                rate_prefix: Default::default(),
                capacity_names: 0,
                bind: None,
                dga: None,
                cache: None,
                ports: vec![53],
                ingress: Some(scope),
                egress: None,
                events: crate::policy::model::DnsEvents::EVERY_QUERY,
                lists,
                answers: crate::policy::model::AnswerBudget::default(),
            },
        }
    }

    fn entry(name: &str, qtypes: &[u16], bits: Option<u32>, line: usize) -> NameEntry {
        NameEntry {
            qtypes: qtypes.to_vec(),
            max_entropy_bits: bits,
            line,
            ..crate::policy::namelist::entry(name, false, line).expect("valid name")
        }
    }

    #[test]
    fn conflicts_name_both_entries() {
        let clock = Clock {
            unix_now_ns: 0,
            boot_now_ns: 1,
        };
        let p = policy(vec![
            NameList {
                name: "corp".into(),
                entries: vec![entry("*.cdn.example", &[], Some(160), 3)],
            },
            NameList {
                name: "extra".into(),
                entries: vec![
                    entry("*.cdn.example", &[A], Some(40), 7),
                    entry("*.cdn.example", &[TXT], None, 9),
                ],
            },
        ]);
        let err = compile(&p, &HashKey::default(), &clock).expect_err("a conflict");
        assert_eq!(
            err.to_string(),
            "list `extra` line 9: `*.cdn.example` is also listed in list `corp` line 3, with a \
             different expiry or entropy bound and other query types; one name holds one \
             entry, so give both the same `expires` and `max_entropy_bits`, or let one cover \
             the other (all its query types, an expiry no earlier and a bound no lower)"
        );
        // Without the last entry the second is covered by the first: one map entry.
        let mut p = p;
        p.dns.lists[1].entries.pop();
        let c = compile(&p, &HashKey::default(), &clock).expect("compiles");
        assert_eq!(c.names.len(), 1);
        assert_eq!(
            c.names.first().map(|(_, v)| (v.qtypes, v.max_entropy_fp)),
            Some(([0; MAX_QTYPES], entropy::bound_fp(160)))
        );
    }

    /// With many conflicts, the one reported is the first an entry-by-entry walk of the
    /// scope's lists meets (the scope's order of lists, then each list's lines), not the
    /// first of the keys' sorted order.
    #[test]
    fn the_first_conflict_of_the_walk_is_reported() {
        let clock = Clock {
            unix_now_ns: 0,
            boot_now_ns: 1,
        };
        let list = |name: &str, qtypes: &[u16], bits: Option<u32>, first_line: usize| NameList {
            name: name.into(),
            entries: (0..50)
                .map(|i| entry(&format!("n{i}.example"), qtypes, bits, first_line + i))
                .collect(),
        };
        let mut p = policy(vec![
            list("a", &[A], Some(40), 1),
            list("b", &[TXT], None, 101),
        ]);
        // The scope walks list `b` first.
        p.dns.ingress.as_mut().expect("a scope").lists = vec![1, 0];
        let err = compile(&p, &HashKey::default(), &clock).expect_err("conflicts");
        assert!(
            err.to_string()
                .starts_with("list `a` line 1: `n0.example` is also listed in list `b` line 101,"),
            "{err}"
        );
        // In the lists' own order, `b`'s first line is the first conflict.
        p.dns.ingress.as_mut().expect("a scope").lists = vec![0, 1];
        let err = compile(&p, &HashKey::default(), &clock).expect_err("conflicts");
        assert!(
            err.to_string()
                .starts_with("list `b` line 101: `n0.example` is also listed in list `a` line 1,"),
            "{err}"
        );
    }

    /// The hard maximum of one generation: more keys are refused by the compiler, before
    /// anything is written (the room of the running map is checked at install, see
    /// `crate::capacity`); the bound the daemon sizes the map for counts a name listed with
    /// its subdomains twice, and every scope that uses its list.
    #[test]
    fn name_keys_beyond_the_hard_maximum_are_refused_and_bounded() {
        assert_eq!(names_fit(MAX_NAME_KEYS), Ok(()));
        assert_eq!(
            names_fit(MAX_NAME_KEYS + 2)
                .expect_err("too many names")
                .to_string(),
            format!(
                "the DNS lists make {} name entries (a name listed with its subdomains makes \
                 two, one per scope that uses its list); one policy generation may hold at \
                 most {MAX_NAME_KEYS}, the most `[dns] capacity_names` can give",
                MAX_NAME_KEYS + 2
            )
        );
        let clock = Clock {
            unix_now_ns: 0,
            boot_now_ns: 1,
        };
        let list = |n: usize| NameList {
            name: "big".into(),
            entries: (0..n)
                .map(|i| NameEntry {
                    kind: if i % 2 == 0 {
                        NameMatch::ApexAndSubdomains
                    } else {
                        NameMatch::Exact
                    },
                    ..entry(&format!("n{i}.example"), &[], None, i + 1)
                })
                .collect(),
        };
        let p = policy(vec![list(1000)]);
        let c = compile(&p, &HashKey::default(), &clock).expect("compiles");
        assert_eq!(c.names.len(), 1500);
        assert_eq!(key_bound(&p.dns), 1500);
    }

    /// A policy built in code meets the same bound on rates as the checker's, and the fastest
    /// rates keep an interval of whole nanoseconds.
    #[test]
    fn rates_are_bounded() {
        let clock = Clock {
            unix_now_ns: 0,
            boot_now_ns: 1,
        };
        let mut p = policy(vec![]);
        p.dns.answers.per_second = MAX_RATE;
        p.dns.answers.burst = u32::MAX;
        p.dns.events.rate = MAX_RATE;
        let c = compile(&p, &HashKey::default(), &clock).expect("compiles");
        assert_eq!(c.global.answer_interval_ns, 100);
        assert_eq!(
            c.global.answer_tolerance_ns,
            100 * (u64::from(u32::MAX) - 1)
        );
        assert_eq!(c.global.event_interval_ns, 100);
        assert_eq!(c.global.event_tolerance_ns, 100 * u64::from(MAX_RATE - 1));
        p.dns.events.rate = MAX_RATE + 1;
        assert_eq!(
            compile(&p, &HashKey::default(), &clock)
                .expect_err("too fast")
                .to_string(),
            "`[dns] event_rate` is 10000001 a second; at most 10000000 is supported"
        );
    }
}
