//! The `[dhcp]` section (see [`crate::dhcp`] and the module docs of `config`).

use palisade_common::dhcp::MAX_TRUSTED;

use super::{Checker, Node};
use crate::dhcp::{Dhcp, Rogue, Source};

pub(super) const DHCP_KEYS: &[&str] = &["enabled", "trusted", "trusted_routers", "rogue"];

impl Checker<'_> {
    /// `[dhcp]`. Problems are recorded and replaced by defaults.
    pub(super) fn dhcp(&mut self, node: &Node) -> Dhcp {
        let mut d = Dhcp {
            enabled: true,
            line: self.lines.line(node.at),
            ..Dhcp::default()
        };
        let Some(view) = self.table(node, "`dhcp`") else {
            return d;
        };
        self.check_keys(view, "[dhcp]", DHCP_KEYS);
        if let Some(n) = view.get("enabled")
            && let Some(on) = self.boolean(n, "enabled")
        {
            d.enabled = on;
        }
        for (key, slot) in [
            ("trusted", &mut d.trusted),
            ("trusted_routers", &mut d.trusted_routers),
        ] {
            let Some(n) = view.get(key) else {
                continue;
            };
            for (text, at) in self.string_list(n, key) {
                match Source::parse(&text) {
                    Ok(s) if slot.contains(&s) => {
                        self.err(at, format!("[dhcp] `{key}` lists `{text}` twice"));
                    }
                    Ok(s) => slot.push(s),
                    Err(e) => self.err(at, format!("[dhcp] `{key}`: {e}")),
                }
            }
        }
        let total = d.trusted.len() + d.trusted_routers.len();
        if total > MAX_TRUSTED as usize {
            self.err(
                view.at,
                format!(
                    "[dhcp] lists {total} trusted sources in `trusted` and `trusted_routers`; \
                     at most {MAX_TRUSTED} fit"
                ),
            );
        }
        if let Some(n) = view.get("rogue") {
            match self.string(n, "rogue") {
                Some("alert") => d.rogue = Rogue::Alert,
                Some("block") => d.rogue = Rogue::Block,
                Some(other) => self.err(
                    n.at,
                    format!("[dhcp] `rogue` is \"alert\" or \"block\", found \"{other}\""),
                ),
                None => {}
            }
        }
        d
    }
}
