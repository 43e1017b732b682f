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

/// The first `count` labels of the question name as sent (letter case kept, compression
/// pointers followed as the walker follows them), for a message [`question`] accepted.
fn raw_labels(msg: &[u8], count: usize) -> Vec<Vec<u8>> {
    let mut at = HEADER_LEN;
    let mut out = Vec::with_capacity(count);
    // `question` accepted the name, so every pointer points backward and the walk ends;
    // the hop bound only keeps a bug from looping.
    let mut hops = 0;
    while out.len() < count && hops <= 255 {
        let Some(&len) = msg.get(at) else { break };
        if len & 0xc0 == 0xc0 {
            let Some(&low) = msg.get(at + 1) else { break };
            at = usize::from(u16::from_be_bytes([len & 0x3f, low]));
            hops += 1;
            continue;
        }
        let len = usize::from(len);
        let Some(label) = msg.get(at + 1..at + 1 + len) else {
            break;
        };
        out.push(label.to_vec());
        at += 1 + len;
    }
    out
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
    let raw = raw_labels(msg, labels.len());
    // Every entry on its own, the longest suffix with an entry that applies winning. Entries
    // for the same suffix are a union: in an allowlist the query is allowed when any of them
    // allows it (the loosest bound of those in force), and reported expired only when all of
    // them have expired; in a blocklist any entry in force blocks.
    let mut best: Option<(usize, bool, Option<u32>)> = None;
    for n in 1..=labels.len() {
        let suffix = &labels[labels.len() - n..];
        let apex = n == labels.len();
        // (an entry applies, one in force applies, the loosest bound of those in force)
        let mut applies = false;
        let mut live: Option<Option<u32>> = None;
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
                if !e.qtypes.is_empty() && !e.qtypes.contains(&qtype) {
                    continue;
                }
                applies = true;
                if e.expires.is_some_and(|t| now > t) {
                    continue;
                }
                live = Some(match live {
                    None => e.max_entropy_bits,
                    Some(b) => b.zip(e.max_entropy_bits).map(|(x, y)| x.max(y)),
                });
            }
        }
        match (live, scope.mode) {
            (Some(bound), _) => best = Some((n, false, bound)),
            (None, DnsMode::Allowlist) if applies => best = Some((n, true, None)),
            (None, _) => {}
        }
    }
    let reason = match (scope.mode, best) {
        (DnsMode::Blocklist, Some(_)) => reason::DNS_BLOCKED,
        (DnsMode::Blocklist, None) => reason::PASS,
        (DnsMode::Allowlist, None) => reason::DNS_NOT_ALLOWED,
        (DnsMode::Allowlist, Some((_, true, _))) => reason::DNS_EXPIRED,
        (DnsMode::Allowlist, Some((n, false, Some(bound)))) if n < labels.len() => {
            // Counted as sent: letter case included.
            let below: Vec<u8> = raw[..labels.len() - n].concat();
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
