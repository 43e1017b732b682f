//! `[dns.dga]` (see [`crate::dga`] and the module docs of `config`).
//!
//! ```toml
//! [dns.dga]
//! enabled = true       # default true when the table is present
//! threshold = 900      # report names scoring above this, 0..=999
//! list = "dga"         # optional: add reported names to [dns.lists.dga] ...
//! ttl = 3600           # ... for this many seconds (1..=31536000)
//! ```

use std::collections::HashMap;

use super::{Checker, Node};
use crate::dga::{
    MAX_SCORE,
    runtime::{DEFAULT_TTL, DgaPolicy},
};

pub(super) const DGA_KEYS: &[&str] = &["enabled", "threshold", "list", "ttl"];
/// Longest `ttl`: a year.
const MAX_TTL: i64 = 365 * 24 * 3600;

impl Checker<'_> {
    /// `[dns.dga]`; `lists` are the `[dns.lists.NAME]` tables by name. Problems are recorded.
    pub(super) fn dns_dga(&mut self, node: &Node, lists: &HashMap<&str, usize>) -> DgaPolicy {
        let mut dga = DgaPolicy::default();
        let Some(view) = self.table(node, "`[dns.dga]`") else {
            return dga;
        };
        self.check_keys(view, "[dns.dga]", DGA_KEYS);
        if let Some(n) = view.get("enabled")
            && let Some(on) = self.boolean(n, "[dns.dga].enabled")
        {
            dga.enabled = on;
        }
        if let Some(n) = view.get("threshold")
            && let Some(t) = self.integer(n, "[dns.dga].threshold", 0, i64::from(MAX_SCORE) - 1)
        {
            dga.threshold = t as u16;
        }
        if let Some(n) = view.get("list")
            && let Some(name) = self.string(n, "[dns.dga].list")
        {
            if lists.contains_key(name) {
                dga.list = Some(name.to_string());
            } else {
                let msg = format!(
                    "`[dns.dga].list`: unknown DNS list `{name}`; define it under \
                     [dns.lists.{name}]"
                );
                self.err(n.at, msg);
            }
        }
        if let Some(n) = view.get("ttl") {
            if let Some(t) = self.integer(n, "[dns.dga].ttl", 1, MAX_TTL) {
                dga.ttl = t as u64;
            }
            if view.get("list").is_none() {
                self.err(
                    n.at,
                    "`[dns.dga].ttl` needs `list` (the DNS list names are added to)",
                );
            }
        } else {
            dga.ttl = DEFAULT_TTL;
        }
        dga
    }
}
