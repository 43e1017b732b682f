//! The `[scrub]` section (see [`crate::scrub`] and the module docs of `config`).

use super::{Checker, Node, Val};
use crate::scrub::{MIN_TTL_RANGE, MSS_V4_RANGE, MSS_V6_RANGE, Scrub};

pub(super) const SCRUB_KEYS: &[&str] = &[
    "min_ttl",
    "max_mss_v4",
    "max_mss_v6",
    "clear_df",
    "random_id",
    "directions",
];

impl Checker<'_> {
    /// `[scrub]`. Problems are recorded and replaced by defaults.
    pub(super) fn scrub(&mut self, node: &Node) -> Scrub {
        let mut sc = Scrub {
            line: self.lines.line(node.at),
            ..Scrub::default()
        };
        let Some(view) = self.table(node, "`scrub`") else {
            return sc;
        };
        self.check_keys(view, "[scrub]", SCRUB_KEYS);
        let int = |this: &mut Self, key: &str, lo: i64, hi: i64| {
            view.get(key).and_then(|n| this.integer(n, key, lo, hi))
        };
        sc.min_ttl = int(
            self,
            "min_ttl",
            (*MIN_TTL_RANGE.start()).into(),
            (*MIN_TTL_RANGE.end()).into(),
        )
        .map(|n| n as u8);
        sc.max_mss_v4 = int(
            self,
            "max_mss_v4",
            (*MSS_V4_RANGE.start()).into(),
            (*MSS_V4_RANGE.end()).into(),
        )
        .map(|n| n as u16);
        sc.max_mss_v6 = int(
            self,
            "max_mss_v6",
            (*MSS_V6_RANGE.start()).into(),
            (*MSS_V6_RANGE.end()).into(),
        )
        .map(|n| n as u16);
        for (key, slot) in [
            ("clear_df", &mut sc.clear_df),
            ("random_id", &mut sc.random_id),
        ] {
            if let Some(n) = view.get(key)
                && let Some(on) = self.boolean(n, key)
            {
                *slot = on;
            }
        }
        if let Some(n) = view.get("directions") {
            if !matches!(n.val, Val::Array(_)) {
                let msg = format!(
                    "`directions` must be a list of \"in\" and \"out\", found {}",
                    n.val.type_name()
                );
                self.err(n.at, msg);
            } else {
                let items = self.string_list(n, "directions");
                if items.is_empty() {
                    self.err(
                        n.at,
                        "`directions` is empty; leave `[scrub]` out to scrub nothing",
                    );
                }
                sc.ingress = false;
                sc.egress = false;
                for (word, at) in items {
                    match word.as_str() {
                        "in" => sc.ingress = true,
                        "out" => sc.egress = true,
                        other => self.err(
                            at,
                            format!("`directions` takes \"in\" and \"out\", found \"{other}\""),
                        ),
                    }
                }
            }
        }
        sc
    }
}
