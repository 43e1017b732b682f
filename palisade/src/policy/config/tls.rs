//! The `[tls]` section (see [`crate::tls`] and the module docs of `config`).

use super::{Checker, Node, Val};
use crate::policy::model::Dns;
use crate::tls::{Category, EchPolicy, MAX_JA4, MAX_TLS_NAMES, MAX_TLS_PORTS, Tls, TlsMode};

pub(super) const TLS_KEYS: &[&str] = &[
    "mode",
    "ports",
    "block",
    "allow",
    "lists",
    "no_sni",
    "ip_literal",
    "ech",
    "ja4_block",
    "ja4_allow",
    "malformed",
    "quic",
    "audit",
];

/// Whether `text` has JA4's shape: `t` + 9 characters, `_`, 12 hex digits, `_`, 12 hex
/// digits (upper-case hex is taken and folded).
fn ja4_shape(text: &str) -> Option<[u8; 36]> {
    let b = text.as_bytes();
    if b.len() != 36 || b[10] != b'_' || b[23] != b'_' {
        return None;
    }
    let a_ok = b[..10].iter().all(u8::is_ascii_alphanumeric);
    let hex_ok = b[11..23]
        .iter()
        .chain(&b[24..36])
        .all(u8::is_ascii_hexdigit);
    if !(a_ok && hex_ok) {
        return None;
    }
    let mut out = [0u8; 36];
    out.copy_from_slice(b);
    for c in out[11..].iter_mut() {
        *c = c.to_ascii_lowercase();
    }
    Some(out)
}

impl Checker<'_> {
    /// `[tls]`. Problems are recorded and replaced by defaults. `dns` holds the DNS lists
    /// that `lists` names.
    pub(super) fn tls(&mut self, node: &Node, dns: &Dns) -> Tls {
        let mut tls = Tls {
            enabled: true,
            line: self.lines.line(node.at),
            ..Tls::default()
        };
        let Some(view) = self.table(node, "`tls`") else {
            return tls;
        };
        self.check_keys(view, "[tls]", TLS_KEYS);
        match view.get("mode") {
            None => self.err(
                view.at,
                "[tls] is missing `mode` (\"blocklist\" or \"allowlist\")",
            ),
            Some(n) => match self.string(n, "mode") {
                Some("blocklist") => tls.mode = TlsMode::Blocklist,
                Some("allowlist") => tls.mode = TlsMode::Allowlist,
                Some(other) => self.err(
                    n.at,
                    format!("[tls] `mode` is \"blocklist\" or \"allowlist\", found \"{other}\""),
                ),
                None => {}
            },
        }
        if tls.mode == TlsMode::Allowlist {
            tls.no_sni = Category::Block;
            tls.ip_literal = Category::Block;
        }
        if let Some(n) = view.get("ports") {
            self.tls_ports(n, &mut tls);
        }
        let (own, other) = match tls.mode {
            TlsMode::Blocklist => ("block", "allow"),
            TlsMode::Allowlist => ("allow", "block"),
        };
        if let Some(n) = view.get(other) {
            self.err(
                n.at,
                format!(
                    "[tls] `{other}` does not apply with mode = \"{}\"; write the names under \
                     `{own}`",
                    if own == "block" {
                        "blocklist"
                    } else {
                        "allowlist"
                    }
                ),
            );
        }
        if let Some(n) = view.get(own) {
            for (text, at) in self.string_list(n, own) {
                if let Some(entry) = self.name_entry(&text, at, false) {
                    tls.names.push(entry);
                }
            }
        }
        if let Some(n) = view.get("lists") {
            for (name, at) in self.string_list(n, "lists") {
                match dns.lists.iter().position(|l| l.name == name) {
                    Some(i) if tls.lists.contains(&i) => {
                        self.err(at, format!("[tls] `lists` names `{name}` twice"));
                    }
                    Some(i) => tls.lists.push(i),
                    None => self.err(
                        at,
                        format!(
                            "[tls] `lists`: unknown DNS list `{name}`; define it under \
                             [dns.lists.{name}]"
                        ),
                    ),
                }
            }
        }
        let names = tls.names.len()
            + tls
                .lists
                .iter()
                .map(|&i| dns.lists[i].entries.len())
                .sum::<usize>();
        if names > MAX_TLS_NAMES {
            self.err(
                view.at,
                format!("[tls] holds {names} names with its lists (at most {MAX_TLS_NAMES})"),
            );
        }
        for (key, slot) in [
            ("no_sni", &mut tls.no_sni),
            ("ip_literal", &mut tls.ip_literal),
            ("malformed", &mut tls.malformed),
            ("quic", &mut tls.quic),
        ] {
            if let Some(n) = view.get(key) {
                match self.string(n, key) {
                    Some("allow") => *slot = Category::Allow,
                    Some("block") => *slot = Category::Block,
                    Some(other) => self.err(
                        n.at,
                        format!("[tls] `{key}` is \"allow\" or \"block\", found \"{other}\""),
                    ),
                    None => {}
                }
            }
        }
        if let Some(n) = view.get("ech") {
            match self.string(n, "ech") {
                Some("outer") => tls.ech = EchPolicy::Outer,
                Some("allow") => tls.ech = EchPolicy::Allow,
                Some("block") => tls.ech = EchPolicy::Block,
                Some(other) => self.err(
                    n.at,
                    format!("[tls] `ech` is \"outer\", \"allow\" or \"block\", found \"{other}\""),
                ),
                None => {}
            }
        }
        for key in ["ja4_block", "ja4_allow"] {
            let Some(n) = view.get(key) else { continue };
            let mut list = Vec::new();
            for (text, at) in self.string_list(n, key) {
                match ja4_shape(&text) {
                    Some(fp) if list.contains(&fp) => {
                        self.err(at, format!("[tls] `{key}` lists \"{text}\" twice"));
                    }
                    Some(fp) => list.push(fp),
                    None => self.err(
                        at,
                        format!(
                            "[tls] `{key}`: \"{text}\" is not a JA4 fingerprint (36 characters: \
                             10, `_`, 12 hex digits, `_`, 12 hex digits, as in \
                             \"t13d1516h2_8daaf6152771_e5627efa2ab1\")"
                        ),
                    ),
                }
            }
            if key == "ja4_block" {
                tls.ja4_block = list;
            } else {
                tls.ja4_allow = list;
            }
        }
        if tls.ja4_block.len() + tls.ja4_allow.len() > MAX_JA4 {
            self.err(
                view.at,
                format!("[tls] lists more than {MAX_JA4} JA4 fingerprints"),
            );
        }
        if let Some(n) = view.get("audit")
            && let Some(on) = self.boolean(n, "audit")
        {
            tls.audit = on;
        }
        tls
    }

    fn tls_ports(&mut self, node: &Node, tls: &mut Tls) {
        let Val::Array(items) = &node.val else {
            let msg = format!(
                "[tls] `ports` must be a list of port numbers, found {}",
                node.val.type_name()
            );
            self.err(node.at, msg);
            return;
        };
        if items.is_empty() {
            self.err(
                node.at,
                "[tls] `ports` is empty; leave it out to use port 443",
            );
            return;
        }
        if items.len() > MAX_TLS_PORTS {
            let msg = format!(
                "[tls] `ports` lists {} ports (at most {MAX_TLS_PORTS})",
                items.len()
            );
            self.err(node.at, msg);
            return;
        }
        let mut ports = Vec::with_capacity(items.len());
        for item in items {
            match self
                .integer(item, "ports", 1, 65535)
                .and_then(|n| u16::try_from(n).ok())
            {
                Some(port) if ports.contains(&port) => {
                    self.err(
                        item.at,
                        format!("[tls] port {port} is listed twice in `ports`"),
                    );
                }
                Some(port) => ports.push(port),
                None => {}
            }
        }
        if !ports.is_empty() {
            tls.ports = ports;
        }
    }
}
