//! The obviously-correct DNS inspector: walks the policy's entries by label comparison,
//! with no hashing. The kernel's decisions are checked against it.

use palisade_common::{
    dns::{
        entropy,
        hash::HashKey,
        name::{NameError, walk},
        wire::{HEADER_LEN, HeaderError, OPT_FIXED_LEN, check_additional, check_query_header},
    },
    reason,
};

use crate::policy::model::{DnsMode, DnsScope, NameMatch, Policy};

/// What the reference decided for one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `reason::PASS` or the blocking reason (rate limits are not modelled).
    pub reason: u32,
    /// Case-folded labels of the question name, when it parsed.
    pub labels: Option<Vec<Vec<u8>>>,
    pub qtype: u16,
}

/// Entries for one name merged: query types (`None` = all), expiry, entropy bound.
type Merged = (Option<Vec<u16>>, Option<u64>, Option<f64>);

/// Why a message is not an inspectable query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuestionError {
    /// Shorter than a header, or the message ends inside the question's type and class.
    Truncated,
    Header(HeaderError),
    Name(NameError),
}

/// Parses the question of a DNS message: case-folded labels (compression pointers
/// followed) and qtype. The message must be one query with one question, nothing after it
/// but at most one OPT record that ends the message.
///
/// # Errors
/// When the message is not such a query.
pub fn question(msg: &[u8]) -> Result<(Vec<Vec<u8>>, u16), QuestionError> {
    let header: [u8; HEADER_LEN] = msg
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(QuestionError::Truncated)?;
    check_query_header(&header).map_err(QuestionError::Header)?;
    let name = walk(msg, HEADER_LEN as u16, &HashKey::default()).map_err(QuestionError::Name)?;
    let q = HEADER_LEN + usize::from(name.in_message);
    let t = msg.get(q..q + 4).ok_or(QuestionError::Truncated)?;
    let rest = &msg[q + 4..];
    let mut opt = [0u8; OPT_FIXED_LEN];
    let n = rest.len().min(OPT_FIXED_LEN);
    opt[..n].copy_from_slice(&rest[..n]);
    check_additional(&header, &opt, rest.len()).map_err(QuestionError::Header)?;
    let labels = (0..usize::from(name.labels))
        .map(|i| name.label(i).to_vec())
        .collect();
    Ok((labels, u16::from_be_bytes([t[0], t[1]])))
}

/// Decides a query the way the kernel must, at unix time `now` (seconds).
#[must_use]
pub fn decide(policy: &Policy, scope: &DnsScope, msg: &[u8], now: u64) -> Verdict {
    let Ok((labels, qtype)) = question(msg) else {
        return Verdict {
            reason: if scope.block_malformed {
                reason::DNS_MALFORMED
            } else {
                reason::PASS
            },
            labels: None,
            qtype: 0,
        };
    };
    // Entries with the same name and the same apex/below coverage are one map entry,
    // merged into the union of what they cover (see the compiler); then the longest
    // applicable suffix wins.
    let mut best: Option<(usize, bool, Option<f64>)> = None;
    for n in 1..=labels.len() {
        let suffix = &labels[labels.len() - n..];
        let apex = n == labels.len();
        let mut merged: Option<Merged> = None;
        for &list in &scope.lists {
            for e in &policy.dns.lists[list].entries {
                let covers = match e.kind {
                    NameMatch::Exact => apex,
                    NameMatch::Subdomains => !apex,
                    NameMatch::ApexAndSubdomains => true,
                };
                if !covers || e.labels[..] != *suffix {
                    continue;
                }
                let qtypes = (!e.qtypes.is_empty()).then(|| e.qtypes.clone());
                merged = Some(match merged {
                    None => (qtypes, e.expires, e.max_entropy),
                    Some((q, x, b)) => (
                        match (q, qtypes) {
                            (Some(mut a), Some(b)) => {
                                a.extend(b);
                                a.sort_unstable();
                                a.dedup();
                                (a.len() <= palisade_common::dns::maps::MAX_QTYPES).then_some(a)
                            }
                            _ => None,
                        },
                        x.zip(e.expires).map(|(a, b)| a.max(b)),
                        b.zip(e.max_entropy).map(|(a, b)| a.max(b)),
                    ),
                });
            }
        }
        let Some((qtypes, expires, bound)) = merged else {
            continue;
        };
        if qtypes.is_some_and(|q| !q.contains(&qtype)) {
            continue;
        }
        let expired = expires.is_some_and(|t| now > t);
        if expired && scope.mode == DnsMode::Blocklist {
            continue;
        }
        best = Some((n, expired, bound));
    }
    let reason = match (scope.mode, best) {
        (DnsMode::Blocklist, Some(_)) => reason::DNS_BLOCKED,
        (DnsMode::Blocklist, None) => reason::PASS,
        (DnsMode::Allowlist, None) => reason::DNS_NOT_ALLOWED,
        (DnsMode::Allowlist, Some((_, true, _))) => reason::DNS_EXPIRED,
        (DnsMode::Allowlist, Some((n, false, Some(bound)))) if n < labels.len() => {
            let below: Vec<u8> = labels[..labels.len() - n].concat();
            if entropy::exceeds_bound(&below, entropy::bound_fp(bound)) {
                reason::DNS_ENTROPY
            } else {
                reason::PASS
            }
        }
        (DnsMode::Allowlist, Some(_)) => reason::PASS,
    };
    Verdict {
        reason,
        labels: Some(labels),
        qtype,
    }
}
