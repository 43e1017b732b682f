//! The decision on a ClientHello: the server name against the lists (with the DNS lists'
//! matching rules), its category (no name, an IP address, ECH) and its JA4.

use std::collections::HashMap;
use std::net::IpAddr;

use palisade_common::reason;
use palisade_common::tls::hello::ClientHello;
use palisade_common::tls::ja4::{JA4_LEN, ja4};

use super::{Category, EchPolicy, Tls, TlsMode};
use crate::policy::model::{NameEntry, NameList, NameMatch};

/// What the name matched, for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameClass {
    /// A host name (the outer one when `ech`).
    Name,
    NoSni,
    IpLiteral,
    /// Not a usable host name (an empty label, a byte that no name holds).
    Invalid,
}

/// The decision on one ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// [`reason::PASS`] or the `tls-*` reason it is refused for (even in audit mode, where
    /// it is only reported).
    pub reason: u32,
    pub class: NameClass,
    /// The server name, lower-cased, without a trailing dot; empty without one.
    pub sni: String,
    /// The first ALPN protocol, as sent (bytes outside printable ASCII escaped).
    pub alpn: String,
    pub ja4: String,
    /// The hello carried ECH: `sni` is the outer name.
    pub ech: bool,
}

impl Decision {
    /// Whether the flow is refused (the reason is a drop and the policy is not in audit).
    #[must_use]
    pub fn blocks(&self, policy: &TlsPolicy) -> bool {
        self.reason != reason::PASS && !policy.audit
    }
}

/// How an entry covers a name and the names below it.
#[derive(Debug, Clone, Copy, Default)]
struct Cover {
    apex: bool,
    below: bool,
}

/// A `[tls]` section compiled for lookups: every name of the section and its DNS lists in a
/// hash keyed by labels, so a name costs one lookup per label.
#[derive(Debug, Clone)]
pub struct TlsPolicy {
    pub mode: TlsMode,
    names: HashMap<Vec<Vec<u8>>, Cover>,
    no_sni: Category,
    ip_literal: Category,
    ech: EchPolicy,
    ja4_block: Vec<[u8; JA4_LEN]>,
    ja4_allow: Vec<[u8; JA4_LEN]>,
    pub malformed: Category,
    pub audit: bool,
}

impl TlsPolicy {
    /// Compiles `tls`, whose `lists` index `dns_lists`.
    #[must_use]
    pub fn new(tls: &Tls, dns_lists: &[NameList]) -> Self {
        let mut names: HashMap<Vec<Vec<u8>>, Cover> = HashMap::new();
        let listed = tls
            .lists
            .iter()
            .filter_map(|&i| dns_lists.get(i))
            .flat_map(|l| l.entries.iter());
        for e in tls.names.iter().chain(listed) {
            add(&mut names, e);
        }
        let mut ja4_block = tls.ja4_block.clone();
        ja4_block.sort_unstable();
        let mut ja4_allow = tls.ja4_allow.clone();
        ja4_allow.sort_unstable();
        Self {
            mode: tls.mode,
            names,
            no_sni: tls.no_sni,
            ip_literal: tls.ip_literal,
            ech: tls.ech,
            ja4_block,
            ja4_allow,
            malformed: tls.malformed,
            audit: tls.audit,
        }
    }

    /// Whether `labels` (lower-case, most significant last) is covered by an entry.
    fn listed(&self, labels: &[Vec<u8>]) -> bool {
        (0..labels.len()).any(|skip| {
            self.names.get(&labels[skip..]).is_some_and(
                |c| {
                    if skip == 0 { c.apex } else { c.below }
                },
            )
        })
    }

    /// Decides `hello`.
    #[must_use]
    pub fn decide(&self, hello: &ClientHello) -> Decision {
        let fp = ja4(hello);
        let mut d = Decision {
            reason: reason::PASS,
            class: NameClass::Name,
            sni: String::new(),
            alpn: shown(hello.alpn()),
            ja4: String::from_utf8_lossy(&fp).into_owned(),
            ech: hello.ech,
        };
        let labels = normalise(hello.sni());
        d.sni = match &labels {
            Some(l) => l.iter().map(|x| shown(x)).collect::<Vec<_>>().join("."),
            None => shown(hello.sni()),
        };
        d.class = if hello.sni().is_empty() {
            NameClass::NoSni
        } else if d.sni.parse::<IpAddr>().is_ok()
            || d.sni
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .is_some_and(|s| s.parse::<IpAddr>().is_ok())
        {
            NameClass::IpLiteral
        } else if labels.is_some() {
            NameClass::Name
        } else {
            NameClass::Invalid
        };
        d.reason = if self.ja4_block.binary_search(&fp).is_ok() {
            reason::TLS_JA4_BLOCKED
        } else if !self.ja4_allow.is_empty() && self.ja4_allow.binary_search(&fp).is_err() {
            reason::TLS_JA4_NOT_ALLOWED
        } else {
            match d.class {
                NameClass::NoSni => refuse(self.no_sni, reason::TLS_NO_SNI),
                NameClass::IpLiteral => refuse(self.ip_literal, reason::TLS_IP_LITERAL),
                NameClass::Invalid => refuse(self.malformed, reason::TLS_MALFORMED),
                NameClass::Name => match (hello.ech, self.ech) {
                    (true, EchPolicy::Block) => reason::TLS_ECH,
                    (true, EchPolicy::Allow) => reason::PASS,
                    _ => {
                        let listed = labels.as_deref().is_some_and(|l| self.listed(l));
                        match (self.mode, listed) {
                            (TlsMode::Blocklist, true) => reason::TLS_SNI_BLOCKED,
                            (TlsMode::Allowlist, false) => reason::TLS_SNI_NOT_ALLOWED,
                            _ => reason::PASS,
                        }
                    }
                },
            }
        };
        d
    }

    /// The decision on a flow whose first bytes are not a readable ClientHello (`reason`
    /// is [`reason::TLS_MALFORMED`] or [`reason::TLS_INCOMPLETE`]).
    #[must_use]
    pub fn unreadable(&self, why: u32) -> Decision {
        Decision {
            reason: refuse(self.malformed, why),
            class: NameClass::Invalid,
            sni: String::new(),
            alpn: String::new(),
            ja4: String::new(),
            ech: false,
        }
    }
}

fn refuse(category: Category, why: u32) -> u32 {
    match category {
        Category::Allow => reason::PASS,
        Category::Block => why,
    }
}

fn add(names: &mut HashMap<Vec<Vec<u8>>, Cover>, e: &NameEntry) {
    // Entries keep labels most significant last; lookups walk suffixes of the same order.
    let cover = names.entry(e.labels.clone()).or_default();
    match e.kind {
        NameMatch::Exact => cover.apex = true,
        NameMatch::Subdomains => cover.below = true,
        NameMatch::ApexAndSubdomains => {
            cover.apex = true;
            cover.below = true;
        }
    }
}

/// A server name as the DNS lists compare names: ASCII letters folded to lower case, one
/// trailing dot dropped, split into labels. `None` for what no list entry can hold: an
/// empty label, a label over 63 bytes, or a space or control byte.
#[must_use]
pub fn normalise(sni: &[u8]) -> Option<Vec<Vec<u8>>> {
    let sni = sni.strip_suffix(b".").unwrap_or(sni);
    if sni.is_empty() {
        return None;
    }
    let mut labels = Vec::new();
    for label in sni.split(|&b| b == b'.') {
        if label.is_empty()
            || label.len() > crate::policy::namelist::MAX_LABEL_LEN
            || label.iter().any(|&b| b <= b' ' || b == 0x7f)
        {
            return None;
        }
        labels.push(label.to_ascii_lowercase());
    }
    Some(labels)
}

/// Bytes as text for events: printable ASCII as is, anything else as `\xNN`.
fn shown(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x21..0x7f).contains(&b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}
