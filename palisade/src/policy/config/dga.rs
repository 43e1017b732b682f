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

use super::{Checker, Node, TableView};
use crate::dga::{
    MAX_SCORE,
    runtime::{DEFAULT_TTL, DgaPolicy},
};
use crate::policy::model::{Dns, DnsMode};

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

    /// `[dns.dga] list` must not be a list an allowlist scope uses: adding a reported name
    /// there would let it through.
    pub(super) fn dga_list_use(
        &mut self,
        dns: &Dns,
        view: TableView<'_>,
        lists: &HashMap<&str, usize>,
    ) {
        let Some(name) = dns.dga.as_ref().and_then(|d| d.list.as_deref()) else {
            return;
        };
        let Some(&index) = lists.get(name) else {
            return;
        };
        let allowlists = [
            dns.ingress.as_ref().map(|s| ("[dns.ingress]", s)),
            dns.egress.as_ref().map(|e| ("[dns.egress]", &e.scope)),
        ];
        for (table, scope) in allowlists.into_iter().flatten() {
            if scope.mode == DnsMode::Allowlist && scope.lists.contains(&index) {
                let at = view
                    .get("dga")
                    .and_then(TableView::of)
                    .and_then(|v| v.get("list"))
                    .map_or(0, |n| n.at);
                let msg = format!(
                    "`[dns.dga].list`: list `{name}` is used by the allowlist in {table}; \
                     reported names would be let through (name a list a blocklist uses)"
                );
                self.err(at, msg);
            }
        }
    }
}
