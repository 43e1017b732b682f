//! Compiles the DNS part of a [`Policy`] into map contents for one generation.

use std::collections::HashMap;

use palisade_common::dns::{
    entropy,
    hash::{HashKey, suffix_hashes},
    maps::{
        ACTION_DROP, ACTION_NXDOMAIN, DnsGlobal, KIND_APEX, KIND_BELOW, MAX_PORTS, MAX_QTYPES,
        MODE_ALLOWLIST, MODE_BLOCKLIST, NameKey, NameValue, SCOPE_AUDIT, SCOPE_BLOCK_MALFORMED,
        SCOPE_EGRESS, SCOPE_INGRESS, SCOPE_LOG_ALLOWED, SCOPE_RATE, SCOPES, ScopeConfig,
    },
    wire::MAX_LABELS,
};

use crate::policy::model::{DnsAction, DnsMode, DnsScope, NameEntry, NameMatch, Policy};

/// Why a valid DNS policy cannot be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsCompileError {
    #[error("{count} DNS ports; at most {MAX_PORTS} are supported")]
    TooManyPorts { count: usize },
    #[error("list `{list}` line {line}: more than {MAX_QTYPES} query types on one entry")]
    TooManyQtypes { list: String, line: usize },
}

/// Map contents for the DNS part of one generation (generation byte of keys left 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledDns {
    pub global: DnsGlobal,
    pub scopes: [ScopeConfig; SCOPES as usize],
    pub names: HashMap<NameKey, NameValue>,
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
        },
        ..ScopeConfig::default()
    };
    if let Some(rate) = s.rate {
        flags |= SCOPE_RATE;
        let interval = 1_000_000_000 / u64::from(rate.qps.max(1));
        c.rate_interval_ns = interval;
        c.rate_tolerance_ns = interval * u64::from(rate.burst.max(1) - 1);
    }
    c.flags = flags;
    c
}

/// Merges two entries with the same key: the union of what they cover (all query types if
/// either has no restriction, the later expiry or none, the looser entropy bound or none).
fn merge(a: &mut NameValue, b: &NameValue) {
    let unrestricted = |v: &NameValue| v.qtypes.iter().all(|&q| q == 0);
    if unrestricted(a) || unrestricted(b) {
        a.qtypes = [0; MAX_QTYPES];
    } else {
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
            a.qtypes = [0; MAX_QTYPES];
        } else {
            a.qtypes = [0; MAX_QTYPES];
            a.qtypes[..all.len()].copy_from_slice(&all);
        }
    }
    a.expires_boot_ns = if a.expires_boot_ns == 0 || b.expires_boot_ns == 0 {
        0
    } else {
        a.expires_boot_ns.max(b.expires_boot_ns)
    };
    a.max_entropy_fp = a.max_entropy_fp.max(b.max_entropy_fp);
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
        max_entropy_fp: e.max_entropy.map_or(u32::MAX, entropy::bound_fp),
        list: list.min(usize::from(u16::MAX - 1)) as u16,
        ..NameValue::default()
    };
    v.qtypes[..e.qtypes.len()].copy_from_slice(&e.qtypes);
    Ok(v)
}

/// The map key of a name entry's suffix hash.
#[must_use]
pub fn name_key(key: &HashKey, labels: &[Vec<u8>], scope: u8, kind: u8) -> NameKey {
    let mut hashes = [(0u64, 0u64); MAX_LABELS];
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
    let mut out = CompiledDns::default();
    out.global.ports[..dns.ports.len()].copy_from_slice(&dns.ports);
    let budget = dns.answers;
    if budget.per_second > 0 {
        let interval = 1_000_000_000 / u64::from(budget.per_second);
        out.global.answer_interval_ns = interval;
        out.global.answer_tolerance_ns = interval * u64::from(budget.burst.max(1) - 1);
    }
    out.global.answer_prefix_v4 = budget.prefix_v4.min(32);
    out.global.answer_prefix_v6 = budget.prefix_v6.min(128);
    let scopes = [
        (SCOPE_INGRESS, dns.ingress.as_ref()),
        (SCOPE_EGRESS, dns.egress.as_ref().map(|e| &e.scope)),
    ];
    for (scope, cfg) in scopes {
        let Some(cfg) = cfg else { continue };
        out.scopes[usize::from(scope)] = scope_config(cfg);
        for &list in &cfg.lists {
            let l = &dns.lists[list];
            for e in &l.entries {
                let v = entry_value(e, list, clock, &l.name)?;
                let kinds: &[u8] = match e.kind {
                    NameMatch::Exact => &[KIND_APEX],
                    NameMatch::Subdomains => &[KIND_BELOW],
                    NameMatch::ApexAndSubdomains => &[KIND_APEX, KIND_BELOW],
                };
                for &kind in kinds {
                    let k = name_key(key, &e.labels, scope, kind);
                    out.names
                        .entry(k)
                        .and_modify(|old| merge(old, &v))
                        .or_insert(v);
                }
            }
        }
    }
    Ok(out)
}
