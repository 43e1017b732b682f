//! The `[dns.bind]` section (see [`crate::dnsbind`] and the module docs of `config`).

use super::{Checker, Node};
use crate::{dnsbind::DnsBind, policy::setfile::parse_cidr};

pub(super) const BIND_KEYS: &[&str] = &["cgroups", "grace", "allow"];

impl Checker<'_> {
    /// `[dns.bind]`. Problems are recorded; the section is then dropped.
    pub(super) fn dns_bind(&mut self, node: &Node) -> Option<DnsBind> {
        let mut b = DnsBind::default();
        let view = self.table(node, "`dns.bind`")?;
        self.check_keys(view, "[dns.bind]", BIND_KEYS);
        match view.get("cgroups") {
            Some(n) => b.cgroups = self.cgroups(n),
            None => self.err(
                view.at,
                "[dns.bind] needs `cgroups`, the cgroup v2 directories in bind mode",
            ),
        }
        if let Some(n) = view.get("grace")
            && let Some(v) = self.integer(
                n,
                "grace",
                0,
                i64::from(palisade_common::dnsbind::MAX_GRACE_SECS),
            )
        {
            b.grace_secs = v as u32;
        }
        if let Some(n) = view.get("allow") {
            for (text, at) in self.string_list(n, "allow") {
                match parse_cidr(&text) {
                    Ok(c) => b.allow.push(c),
                    Err(e) => self.err(at, format!("[dns.bind].allow: {e}")),
                }
            }
            let max = palisade_common::dnsbind::MAX_BIND_ALLOW as usize - 4;
            if b.allow.len() > max {
                let msg = format!(
                    "[dns.bind].allow lists {} prefixes; at most {max} fit",
                    b.allow.len()
                );
                self.err(n.at, msg);
            }
        }
        Some(b)
    }
}
