//! The `[dlp]` section (see [`crate::dlp`] and the module docs of `config`).

use super::{Checker, Node, Val};
use crate::dlp::{Action, Builtin, Dlp, MAX_PATTERNS, Pattern, detect::compile_custom};

pub(super) const DLP_KEYS: &[&str] = &[
    "enabled",
    "detectors",
    "pattern",
    "action",
    "interfaces",
    "libraries",
];

impl Checker<'_> {
    /// `[dlp]`. Problems are recorded and replaced by defaults.
    pub(super) fn dlp(&mut self, node: &Node) -> Dlp {
        let mut d = Dlp {
            enabled: true,
            builtins: Builtin::ALL.to_vec(),
            line: self.lines.line(node.at),
            ..Dlp::default()
        };
        let Some(view) = self.table(node, "`dlp`") else {
            return d;
        };
        self.check_keys(view, "[dlp]", DLP_KEYS);
        if let Some(n) = view.get("enabled")
            && let Some(on) = self.boolean(n, "enabled")
        {
            d.enabled = on;
        }
        if let Some(n) = view.get("detectors") {
            d.builtins.clear();
            for (word, at) in self.string_list(n, "detectors") {
                match Builtin::from_name(&word) {
                    Some(b) if !d.builtins.contains(&b) => d.builtins.push(b),
                    Some(_) => self.err(at, format!("[dlp].detectors: \"{word}\" is listed twice")),
                    None => self.err(
                        at,
                        format!(
                            "[dlp].detectors: unknown detector \"{word}\"; expected \"card\", \
                             \"private_key\" or \"cloud_key\""
                        ),
                    ),
                }
            }
        }
        if let Some(n) = view.get("action")
            && let Some(s) = self.string(n, "action")
        {
            match s {
                "alert" => d.action = Action::Alert,
                "reset" => d.action = Action::Reset,
                other => self.err(
                    n.at,
                    format!("[dlp].action: expected \"alert\" or \"reset\", found \"{other}\""),
                ),
            }
        }
        if let Some(n) = view.get("interfaces") {
            d.interfaces = self
                .string_list(n, "interfaces")
                .into_iter()
                .map(|(s, _)| s)
                .collect();
        }
        if let Some(n) = view.get("libraries") {
            d.libraries = self
                .string_list(n, "libraries")
                .into_iter()
                .map(|(s, _)| s)
                .collect();
        }
        if d.action == Action::Reset && d.interfaces.is_empty() {
            let at = view.get("action").map_or(node.at, |n| n.at);
            self.err(
                at,
                "[dlp].action = \"reset\" needs [dlp].interfaces (where the reset program runs \
                 in TC egress)",
            );
        }
        if let Some(n) = view.get("pattern") {
            let Val::Array(items) = &n.val else {
                self.err(
                    n.at,
                    format!(
                        "[dlp].pattern must be an array of tables (`[[dlp.pattern]]`), found {}",
                        n.val.type_name()
                    ),
                );
                return d;
            };
            if items.len() > MAX_PATTERNS {
                self.err(
                    n.at,
                    format!("{} patterns; [dlp] holds {MAX_PATTERNS}", items.len()),
                );
                return d;
            }
            for item in items {
                if let Some(p) = self.dlp_pattern(item) {
                    if d.patterns.iter().any(|o| o.name == p.name) {
                        self.err(
                            item.at,
                            format!("[[dlp.pattern]]: the name {:?} is taken", p.name),
                        );
                        continue;
                    }
                    d.patterns.push(p);
                }
            }
        }
        d
    }

    fn dlp_pattern(&mut self, node: &Node) -> Option<Pattern> {
        let view = self.table(node, "`[[dlp.pattern]]`")?;
        self.check_keys(view, "[[dlp.pattern]]", &["name", "regex"]);
        let Some(n) = view.get("name") else {
            self.err(node.at, "[[dlp.pattern]].name is missing");
            return None;
        };
        let name = self.string(n, "name")?.to_owned();
        if name.is_empty() || Builtin::from_name(&name).is_some() {
            self.err(
                n.at,
                format!("[[dlp.pattern]].name {name:?} is empty or a built-in name"),
            );
            return None;
        }
        let Some(r) = view.get("regex") else {
            self.err(node.at, "[[dlp.pattern]].regex is missing");
            return None;
        };
        let regex = self.string(r, "regex")?.to_owned();
        if let Err(e) = compile_custom(&regex) {
            let first = e
                .to_string()
                .lines()
                .last()
                .unwrap_or("invalid")
                .trim()
                .to_owned();
            self.err(r.at, format!("[[dlp.pattern]].regex of {name:?}: {first}"));
            return None;
        }
        if compile_custom(&regex).is_ok_and(|re| re.is_match(b"")) {
            self.err(
                r.at,
                format!("[[dlp.pattern]].regex of {name:?} matches the empty string"),
            );
            return None;
        }
        Some(Pattern { name, regex })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::dlp::{Action, Builtin};
    use crate::policy::config::parse_policy;

    fn errors(text: &str) -> String {
        parse_policy(text, "p.toml", Path::new("."))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn section_is_read() {
        let p = parse_policy(
            "[dlp]\ndetectors = [\"card\"]\naction = \"reset\"\ninterfaces = [\"lo\"]\n\
             [[dlp.pattern]]\nname = \"emp\"\nregex = \"EMP-[0-9]{6}\"\n",
            "p.toml",
            Path::new("."),
        )
        .unwrap();
        assert!(p.dlp.enabled);
        assert_eq!(p.dlp.builtins, vec![Builtin::Card]);
        assert_eq!(p.dlp.action, Action::Reset);
        assert_eq!(p.dlp.interfaces, vec!["lo".to_owned()]);
        assert_eq!(p.dlp.patterns.len(), 1);
        let none = parse_policy("", "p.toml", Path::new(".")).unwrap();
        assert!(!none.dlp.enabled);
    }

    #[test]
    fn problems_name_their_place() {
        let e = errors("[dlp]\naction = \"block\"\n");
        assert!(e.contains("p.toml:2:") && e.contains("[dlp].action"), "{e}");
        let e = errors("[dlp]\naction = \"reset\"\n");
        assert!(e.contains("needs [dlp].interfaces"), "{e}");
        let e = errors("[dlp]\ndetectors = [\"cards\"]\n");
        assert!(
            e.contains("p.toml:2:") && e.contains("unknown detector"),
            "{e}"
        );
        let e = errors("[dlp]\n[[dlp.pattern]]\nname = \"x\"\nregex = \"(unclosed\"\n");
        assert!(
            e.contains("p.toml:4:") && e.contains("regex of \"x\""),
            "{e}"
        );
        let e = errors("[dlp]\n[[dlp.pattern]]\nname = \"x\"\nregex = \"a*\"\n");
        assert!(e.contains("matches the empty string"), "{e}");
        let e = errors("[dlp]\nbogus = 1\n");
        assert!(e.contains("unknown key `bogus` in [dlp]"), "{e}");
    }
}
