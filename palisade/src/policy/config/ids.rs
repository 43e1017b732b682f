//! The `[ids]` section (see [`crate::ids`] and docs/design/ids.md).

use palisade_common::ids::{IDS_SCOPE_IFACES, IDS_SCOPE_PORTS};

use super::{Checker, Diagnostic, Node};
use crate::ids::{
    Ids, RING_BYTES, load_rules,
    preselect::{MAX_PORT_GROUPS, Preselect},
};

pub(super) const IDS_KEYS: &[&str] = &[
    "rules",
    "interfaces",
    "ports",
    "budget_per_sec",
    "ring_high_water",
    "drop",
];

impl Checker<'_> {
    /// `[ids]`. Problems are recorded; a rule file's problem is reported at its own
    /// `file:line`.
    pub(super) fn ids(&mut self, node: &Node) -> Ids {
        let mut ids = Ids {
            enabled: true,
            ..Ids::default()
        };
        let Some(view) = self.table(node, "`ids`") else {
            return ids;
        };
        self.check_keys(view, "[ids]", IDS_KEYS);
        match view.get("rules") {
            None => self.err(node.at, "[ids] needs `rules`, a list of rule files"),
            Some(n) => {
                let files = self.string_list(n, "rules");
                if files.is_empty() {
                    self.err(
                        n.at,
                        "`rules` is empty; leave `[ids]` out to inspect nothing",
                    );
                }
                for (file, _) in files {
                    ids.rules.push(self.base_dir.join(file));
                }
            }
        }
        if let Some(n) = view.get("interfaces") {
            let items = self.string_list(n, "interfaces");
            if items.len() > IDS_SCOPE_IFACES {
                self.err(
                    n.at,
                    format!(
                        "`interfaces` lists {} interfaces; at most {IDS_SCOPE_IFACES}",
                        items.len()
                    ),
                );
            }
            ids.interfaces = items.into_iter().map(|(s, _)| s).collect();
        }
        if let Some(n) = view.get("ports") {
            if let super::Val::Array(items) = &n.val {
                if items.len() > IDS_SCOPE_PORTS {
                    self.err(
                        n.at,
                        format!(
                            "`ports` lists {} ports; at most {IDS_SCOPE_PORTS}",
                            items.len()
                        ),
                    );
                }
                for item in items {
                    if let Some(p) = self.integer(item, "ports", 1, 65_535) {
                        ids.ports.push(p as u16);
                    }
                }
            } else {
                self.err(
                    n.at,
                    format!(
                        "`ports` must be a list of ports, found {}",
                        n.val.type_name()
                    ),
                );
            }
        }
        if let Some(n) = view.get("budget_per_sec")
            && let Some(v) = self.integer(n, "budget_per_sec", 1, 10_000_000)
        {
            ids.budget_per_sec = v as u32;
        }
        if let Some(n) = view.get("ring_high_water")
            && let Some(v) = self.integer(n, "ring_high_water", 0, i64::from(RING_BYTES))
        {
            ids.ring_high_water = v as u32;
        }
        if let Some(n) = view.get("drop")
            && let Some(v) = self.boolean(n, "drop")
        {
            ids.drop = v;
        }
        if ids.rules.is_empty() {
            return ids;
        }
        // The rule files are read now, so that a policy with a bad rule is refused (at the
        // rule's file and line) before anything changes.
        match load_rules(&ids.rules) {
            Ok(set) => {
                let pre = Preselect::build(&set);
                if pre.groups.len() > MAX_PORT_GROUPS {
                    self.err(
                        node.at,
                        format!(
                            "[ids] rules make {} port groups; the kernel holds {MAX_PORT_GROUPS}",
                            pre.groups.len()
                        ),
                    );
                }
            }
            Err(e) => self.file_errors.push(Diagnostic {
                file: e.file,
                line: e.line,
                column: usize::from(e.line != 0),
                message: format!("[ids] rules: {}", e.message),
            }),
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_policy;

    /// The diagnostics of `policy` with rule file `ids.rules` holding `rules`, as printed.
    fn check(policy: &str, rules: &str) -> Result<crate::ids::Ids, Vec<String>> {
        let dir = std::env::temp_dir().join(format!(
            "palisade-ids-config-{}-{:x}",
            std::process::id(),
            policy.len() * 7919 + rules.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ids.rules"), rules).unwrap();
        let r = parse_policy(policy, "p.toml", &dir)
            .map(|p| p.ids)
            .map_err(|e| e.errors.iter().map(ToString::to_string).collect());
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    const RULE: &str = "alert tcp any any -> any 80 (msg:\"m\"; content:\"GET\"; sid:1;)\n";

    #[test]
    fn section_parses_with_defaults_and_values() {
        let ids = check("[ids]\nrules = [\"ids.rules\"]\n", RULE).unwrap();
        assert!(ids.enabled && ids.drop);
        assert_eq!(ids.budget_per_sec, crate::ids::DEFAULT_BUDGET_PER_SEC);
        assert_eq!(ids.ring_high_water, crate::ids::DEFAULT_RING_HIGH_WATER);
        assert!(ids.rules[0].ends_with("ids.rules"));
        let ids = check(
            "[ids]\nrules = [\"ids.rules\"]\ninterfaces = [\"eth0\"]\nports = [80, 8080]\n\
             budget_per_sec = 10\nring_high_water = 0\ndrop = false\n",
            RULE,
        )
        .unwrap();
        assert_eq!(ids.interfaces, ["eth0"]);
        assert_eq!(ids.ports, [80, 8080]);
        assert_eq!(
            (ids.budget_per_sec, ids.ring_high_water, ids.drop),
            (10, 0, false)
        );
        assert!(!check("", RULE).unwrap().enabled);
    }

    #[test]
    fn errors_are_located_in_the_policy_and_in_the_rule_file() {
        let e = check(
            "[ids]\nrules = [\"ids.rules\"]\nports = [0, 80]\nbudget_per_sec = \"x\"\nwho = 1\n",
            RULE,
        )
        .unwrap_err();
        assert_eq!(
            e,
            [
                "p.toml:3:10: `ports` must be between 1 and 65535, found 0",
                "p.toml:4:18: `budget_per_sec` must be an integer, found a string",
                "p.toml:5:1: unknown key `who` in [ids]; expected one of `rules`, `interfaces`, \
                 `ports`, `budget_per_sec`, `ring_high_water`, `drop`",
            ]
        );
        let e = check("[ids]\n", RULE).unwrap_err();
        assert_eq!(e, ["p.toml:1:1: [ids] needs `rules`, a list of rule files"]);
        // An unsupported keyword: refused at the rule file's line.
        let bad = format!(
            "# comment\n{RULE}alert tcp any any -> any 80 (msg:\"b\"; content:\"x\"; byte_test:1,>,2,0; sid:2;)\n"
        );
        let e = check("[ids]\nrules = [\"ids.rules\"]\n", &bad).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("ids.rules:3:1: [ids] rules: "), "{e:?}");
        assert!(e[0].contains("byte_test"), "{e:?}");
        let e = check("[ids]\nrules = [\"missing.rules\"]\n", RULE).unwrap_err();
        assert!(
            e[0].contains("missing.rules:0:0: [ids] rules: cannot read"),
            "{e:?}"
        );
    }
}
