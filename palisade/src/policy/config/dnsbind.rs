//! The `[dns.bind]` section (see [`crate::dnsbind`] and the module docs of `config`).

use super::{Checker, Node};
use crate::{dnsbind::DnsBind, policy::setfile::parse_cidr};

pub(super) const BIND_KEYS: &[&str] = &[
    "cgroups",
    "grace",
    "allow",
    "resolvers",
    "doh_endpoints",
    "rebinding",
    "rebinding_allow",
];

impl Checker<'_> {
    /// `[dns.bind]`. Problems are recorded; the section is then dropped.
    pub(super) fn dns_bind(&mut self, node: &Node) -> Option<DnsBind> {
        let mut b = DnsBind::default();
        let view = self.table(node, "`dns.bind`")?;
        self.check_keys(view, "[dns.bind]", BIND_KEYS);
        match view.get("cgroups") {
            Some(n) => {
                b.cgroups = self.cgroups(n);
                let max = palisade_common::dnsbind::MAX_BIND_CGROUPS as usize;
                if b.cgroups.len() > max {
                    let msg = format!(
                        "[dns.bind].cgroups lists {} cgroups; at most {max} fit",
                        b.cgroups.len()
                    );
                    self.err(n.at, msg);
                }
            }
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
        let resolvers = self.bind_prefixes(view.get("resolvers"), "resolvers");
        let doh = self.bind_prefixes(view.get("doh_endpoints"), "doh_endpoints");
        b.resolvers = resolvers.iter().map(|(c, _)| *c).collect();
        b.doh_endpoints = doh.iter().map(|(c, _)| *c).collect();
        if b.resolvers.is_empty()
            && let Some(n) = view.get("doh_endpoints")
        {
            self.err(
                n.at,
                "[dns.bind].doh_endpoints needs `resolvers`: DoH is refused only while the \
                 cgroups are pinned to their resolvers",
            );
        }
        if let Some(n) = view.get("resolvers") {
            if b.resolvers.is_empty() {
                self.err(
                    n.at,
                    "[dns.bind].resolvers is empty; leave it out to turn pinning off",
                );
            }
            for (_, text) in resolvers
                .iter()
                .filter(|(c, _)| b.doh_endpoints.contains(c))
            {
                let msg = format!("[dns.bind].resolvers: {text} is also in doh_endpoints");
                self.err(n.at, msg);
            }
            let max = palisade_common::dnsbind::MAX_BIND_PIN as usize;
            let pins = b.resolvers.len() + b.doh_endpoints.len();
            if pins > max {
                let msg = format!(
                    "[dns.bind].resolvers and doh_endpoints list {pins} prefixes; at most {max} fit"
                );
                self.err(n.at, msg);
            }
        }
        self.rebinding(view.get("rebinding"), view.get("rebinding_allow"), &mut b);
        Some(b)
    }

    /// `rebinding` and `rebinding_allow`.
    fn rebinding(&mut self, mode: Option<&Node>, allow: Option<&Node>, b: &mut DnsBind) {
        if let Some(n) = mode {
            match self.string(n, "rebinding") {
                Some("refuse") => b.rebinding_refuse = true,
                Some("allow") => b.rebinding_refuse = false,
                Some(other) => {
                    let msg = format!(
                        "[dns.bind].rebinding is \"refuse\" or \"allow\", found \"{other}\""
                    );
                    self.err(n.at, msg);
                }
                None => {}
            }
        }
        let Some(n) = allow else { return };
        for (text, at) in self.string_list(n, "rebinding_allow") {
            match crate::policy::namelist::entry(&text, false, self.lines.line(at)) {
                Ok(e) => b.rebinding_allow.push(e),
                Err(e) => self.err(at, format!("[dns.bind].rebinding_allow: {e}")),
            }
        }
        if !b.rebinding_refuse {
            self.err(
                n.at,
                "[dns.bind].rebinding_allow needs `rebinding = \"refuse\"`: without it every \
                 name may carry private addresses",
            );
        }
    }

    /// A list of prefixes under `[dns.bind]`; bad entries are recorded and left out.
    fn bind_prefixes(
        &mut self,
        node: Option<&Node>,
        key: &str,
    ) -> Vec<(crate::policy::model::Cidr, String)> {
        let mut out = Vec::new();
        if let Some(n) = node {
            for (text, at) in self.string_list(n, key) {
                match parse_cidr(&text) {
                    Ok(c) => out.push((c, text)),
                    Err(e) => self.err(at, format!("[dns.bind].{key}: {e}")),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::policy::{config::parse_policy, setfile::parse_cidr};

    fn errors(text: &str) -> Vec<String> {
        match parse_policy(text, "p.toml", Path::new("/nonexistent")) {
            Ok(p) => panic!("expected errors, parsed {:?}", p.dns.bind),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn bind_section_parses_to_the_model() {
        let p = parse_policy(
            "[dns.bind]\ncgroups = [\"/sys/fs/cgroup/unified/app\"]\ngrace = 10\n\
             allow = [\"10.1.0.53\", \"fd00::/64\"]\n",
            "p.toml",
            Path::new("/nonexistent"),
        )
        .unwrap();
        let b = p.dns.bind.unwrap();
        assert_eq!(b.cgroups, [PathBuf::from("/sys/fs/cgroup/unified/app")]);
        assert_eq!(b.grace_secs, 10);
        assert_eq!(
            b.allow,
            [
                parse_cidr("10.1.0.53").unwrap(),
                parse_cidr("fd00::/64").unwrap()
            ]
        );
        let p = parse_policy(
            "[dns.bind]\ncgroups = [\"/a\"]\n",
            "p.toml",
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(
            p.dns.bind.unwrap().grace_secs,
            crate::dnsbind::DEFAULT_GRACE_SECS
        );
        let p = parse_policy("", "p.toml", Path::new("/nonexistent")).unwrap();
        assert_eq!(p.dns.bind, None);
    }

    #[test]
    fn bind_section_errors_name_their_place() {
        assert_eq!(
            errors("[dns.bind]\ngrace = 5\n"),
            ["p.toml:1:1: [dns.bind] needs `cgroups`, the cgroup v2 directories in bind mode"]
        );
        let e = errors(
            "[dns.bind]\ncgroups = [\"/a\"]\ngrace = 7200\nallow = [\"10.0.0.1/8\", \"x\"]\nport = 1\n",
        );
        assert_eq!(
            e,
            [
                "p.toml:3:9: `grace` must be between 0 and 3600, found 7200",
                "p.toml:4:10: [dns.bind].allow: host bits set; did you mean 10.0.0.0/8?",
                "p.toml:4:24: [dns.bind].allow: invalid address or CIDR `x`",
                "p.toml:5:1: unknown key `port` in [dns.bind]; expected one of `cgroups`, \
                 `grace`, `allow`, `resolvers`, `doh_endpoints`, `rebinding`, `rebinding_allow`",
            ]
        );
    }

    #[test]
    fn too_many_bind_cgroups_are_refused_by_place() {
        let list: Vec<String> = (0..=palisade_common::dnsbind::MAX_BIND_CGROUPS)
            .map(|i| format!("\"/c{i}\""))
            .collect();
        let e = errors(&format!("[dns.bind]\ncgroups = [{}]\n", list.join(", ")));
        assert_eq!(
            e,
            ["p.toml:2:11: [dns.bind].cgroups lists 257 cgroups; at most 256 fit"]
        );
    }

    #[test]
    fn pinning_keys_parse_and_their_errors_name_their_place() {
        let p = parse_policy(
            "[dns.bind]\ncgroups = [\"/a\"]\nresolvers = [\"10.1.0.53\", \"fd00::53\"]\n\
             doh_endpoints = [\"192.0.2.0/28\"]\n",
            "p.toml",
            Path::new("/nonexistent"),
        )
        .unwrap();
        let b = p.dns.bind.unwrap();
        assert_eq!(
            b.resolvers,
            [
                parse_cidr("10.1.0.53").unwrap(),
                parse_cidr("fd00::53").unwrap()
            ]
        );
        assert_eq!(b.doh_endpoints, [parse_cidr("192.0.2.0/28").unwrap()]);
        let p = parse_policy(
            "[dns.bind]\ncgroups = [\"/a\"]\n",
            "p.toml",
            Path::new("/x"),
        )
        .unwrap();
        let b = p.dns.bind.unwrap();
        assert!(b.resolvers.is_empty() && b.doh_endpoints.is_empty());

        assert_eq!(
            errors(
                "[dns.bind]\ncgroups = [\"/a\"]\nresolvers = [\"10.1.0.53\", \"y\"]\n\
                 doh_endpoints = [\"10.1.0.53\"]\n"
            ),
            [
                "p.toml:3:13: [dns.bind].resolvers: 10.1.0.53 is also in doh_endpoints",
                "p.toml:3:27: [dns.bind].resolvers: invalid address or CIDR `y`",
            ]
        );
        assert_eq!(
            errors("[dns.bind]\ncgroups = [\"/a\"]\ndoh_endpoints = [\"10.0.0.1\"]\n"),
            [
                "p.toml:3:17: [dns.bind].doh_endpoints needs `resolvers`: DoH is refused only \
                 while the cgroups are pinned to their resolvers"
            ]
        );
        assert_eq!(
            errors("[dns.bind]\ncgroups = [\"/a\"]\nresolvers = []\n"),
            ["p.toml:3:13: [dns.bind].resolvers is empty; leave it out to turn pinning off"]
        );
    }

    #[test]
    fn rebinding_keys_parse_and_their_errors_name_their_place() {
        use crate::policy::model::NameMatch;
        let p = parse_policy(
            "[dns.bind]\ncgroups = [\"/a\"]\nrebinding = \"refuse\"\n\
             rebinding_allow = [\"nas.example.test\", \"*.corp.example.test\"]\n",
            "p.toml",
            Path::new("/x"),
        )
        .unwrap();
        let b = p.dns.bind.unwrap();
        assert!(b.rebinding_refuse);
        let got: Vec<(Vec<Vec<u8>>, NameMatch)> = b
            .rebinding_allow
            .iter()
            .map(|e| (e.labels.clone(), e.kind))
            .collect();
        let l = |s: &str| {
            s.split('.')
                .map(|x| x.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            got,
            [
                (l("nas.example.test"), NameMatch::Exact),
                (l("corp.example.test"), NameMatch::Subdomains)
            ]
        );
        let p = parse_policy(
            "[dns.bind]\ncgroups = [\"/a\"]\n",
            "p.toml",
            Path::new("/x"),
        )
        .unwrap();
        let b = p.dns.bind.unwrap();
        assert!(!b.rebinding_refuse && b.rebinding_allow.is_empty());
        assert_eq!(
            errors(
                "[dns.bind]\ncgroups = [\"/a\"]\nrebinding = \"block\"\n\
                 rebinding_allow = [\"ok.test\", \"bad..name\"]\n"
            )[0],
            "p.toml:3:13: [dns.bind].rebinding is \"refuse\" or \"allow\", found \"block\""
        );
        let e = errors(
            "[dns.bind]\ncgroups = [\"/a\"]\nrebinding = \"refuse\"\nrebinding_allow = [\"bad..name\"]\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:4:20: [dns.bind].rebinding_allow: "),
            "{e:?}"
        );
        assert_eq!(
            errors("[dns.bind]\ncgroups = [\"/a\"]\nrebinding_allow = [\"ok.test\"]\n"),
            [
                "p.toml:3:19: [dns.bind].rebinding_allow needs `rebinding = \"refuse\"`: without \
              it every name may carry private addresses"
            ]
        );
    }
}
