//! The `[geoip]` section and `@country:XX` (see [`crate::geoip`] and the module docs of
//! `config`).

use std::{collections::BTreeSet, time::Duration};

use super::{Checker, Node, SetTable, TableView, Val};
use crate::{
    geoip::{self, GeoIp, REFRESH_RANGE, SET_PREFIX, Source},
    policy::model::IpSet,
};
use palisade_common::geoip::country_code;

pub(super) const GEOIP_KEYS: &[&str] = &["format", "blocks", "locations", "files", "refresh"];

/// Every `"@country:..."` string under `node`, with its position.
fn country_refs(node: &Node, out: &mut Vec<(String, usize)>) {
    match &node.val {
        Val::Str(s) => {
            if let Some(code) = s.strip_prefix('@').and_then(|n| n.strip_prefix(SET_PREFIX)) {
                out.push((code.to_owned(), node.at));
            }
        }
        Val::Array(items) => items.iter().for_each(|n| country_refs(n, out)),
        Val::Table(entries) => entries.iter().for_each(|e| country_refs(&e.node, out)),
        _ => {}
    }
}

/// Where the firewall says `per = "country"` (a rate limit with one bucket per country).
fn per_country_refs(node: &Node, out: &mut Vec<usize>) {
    match &node.val {
        Val::Array(items) => items.iter().for_each(|n| per_country_refs(n, out)),
        Val::Table(entries) => {
            for e in entries {
                if e.key == "per" && matches!(&e.node.val, Val::Str(s) if s == "country") {
                    out.push(e.node.at);
                }
                per_country_refs(&e.node, out);
            }
        }
        _ => {}
    }
}

impl Checker<'_> {
    /// `[geoip]`, and one set `country:XX` for every `@country:XX` the firewall names, filled
    /// from the database. Problems are recorded; a country that cannot be read gets an empty
    /// set so that the rules naming it get no second error.
    pub(super) fn geoip(
        &mut self,
        node: Option<&Node>,
        firewall: Option<&Node>,
        mut sets: SetTable,
    ) -> (Option<GeoIp>, SetTable) {
        let geo = node.and_then(|n| self.geoip_section(n));
        let mut refs = Vec::new();
        if let Some(fw) = firewall {
            country_refs(fw, &mut refs);
        }
        let mut wanted = BTreeSet::new();
        let mut per_country = Vec::new();
        if let Some(fw) = firewall {
            per_country_refs(fw, &mut per_country);
        }
        if let Some(&at) = per_country.first() {
            if node.is_none() {
                self.err(
                    at,
                    "`per = \"country\"` needs a [geoip] section naming the country database",
                );
            }
            // Every country of the data gets its set: together they are the country map.
            for c in geoip::iso_codes() {
                wanted.insert(c);
                let name = format!("{SET_PREFIX}{}", String::from_utf8_lossy(&c));
                if !sets.by_name.contains_key(&name) {
                    sets.by_name.insert(name.clone(), sets.sets.len());
                    sets.sets.push(IpSet {
                        name,
                        entries: Vec::new(),
                    });
                }
            }
        }
        for (code, at) in &refs {
            match country_code(code.as_bytes()) {
                Some(_) if node.is_none() => {
                    self.err(
                        *at,
                        format!(
                            "`@{SET_PREFIX}{code}` needs a [geoip] section naming the country \
                             database"
                        ),
                    );
                }
                Some(c) => {
                    wanted.insert(c);
                }
                None => self.err(
                    *at,
                    format!(
                        "`@{SET_PREFIX}{code}`: a country is two letters (ISO 3166-1 alpha-2), \
                         e.g. `@{SET_PREFIX}CN`"
                    ),
                ),
            }
            // Registered even when broken, like a broken `[sets.NAME]`.
            let name = format!("{SET_PREFIX}{}", code.to_ascii_uppercase());
            if !sets.by_name.contains_key(&name) {
                sets.by_name.insert(name.clone(), sets.sets.len());
                sets.sets.push(IpSet {
                    name,
                    entries: Vec::new(),
                });
            }
        }
        let Some(geo) = geo else {
            return (None, sets);
        };
        if wanted.is_empty() {
            return (Some(geo), sets);
        }
        match geoip::load(&geo.source, &wanted) {
            Ok(mut found) => {
                let mut reported = BTreeSet::new();
                for (code, at) in &refs {
                    let Some(c) = country_code(code.as_bytes()) else {
                        continue;
                    };
                    if !geoip::is_iso_code(c) && !found.seen.contains(&c) && reported.insert(c) {
                        self.err(
                            *at,
                            format!(
                                "unknown country `{}` in `@{SET_PREFIX}{code}`: not an ISO \
                                 3166-1 alpha-2 code, and the GeoIP data does not name it",
                                String::from_utf8_lossy(&c)
                            ),
                        );
                    }
                }
                for set in &mut sets.sets {
                    if let Some(c) = geoip::set_country(&set.name) {
                        set.entries = found.prefixes.remove(&c).unwrap_or_default();
                    }
                }
            }
            Err(mut errors) => self.file_errors.append(&mut errors),
        }
        (Some(geo), sets)
    }

    fn geoip_section(&mut self, node: &Node) -> Option<GeoIp> {
        let view: TableView<'_> = self.table(node, "`geoip`")?;
        self.check_keys(view, "[geoip]", GEOIP_KEYS);
        let errors_before = self.error_count();
        let path = |this: &mut Self, n: &Node, key: &str| {
            this.string(n, key).map(|s| this.base_dir.join(s))
        };
        let paths = |this: &mut Self, key: &str| -> Vec<std::path::PathBuf> {
            view.get(key).map_or_else(Vec::new, |n| {
                this.string_list(n, key)
                    .into_iter()
                    .map(|(s, _)| this.base_dir.join(s))
                    .collect()
            })
        };
        let format = view.get("format").and_then(|n| self.string(n, "format"));
        let source = match format {
            Some("geolite2") => {
                if let Some(n) = view.get("files") {
                    self.err(
                        n.at,
                        "`files` is for `format = \"dbip\"`; GeoLite2 takes `blocks` and \
                         `locations`",
                    );
                }
                let blocks = paths(self, "blocks");
                if blocks.is_empty() {
                    self.err(
                        view.at,
                        "[geoip] with `format = \"geolite2\"` needs `blocks` (the \
                         Blocks-IPv4.csv and/or Blocks-IPv6.csv files)",
                    );
                }
                let locations = match view.get("locations") {
                    Some(n) => path(self, n, "locations"),
                    None => {
                        self.err(
                            view.at,
                            "[geoip] with `format = \"geolite2\"` needs `locations` (the \
                             Locations-en.csv file)",
                        );
                        None
                    }
                };
                locations.map(|locations| Source::GeoLite2 { blocks, locations })
            }
            Some("dbip") => {
                for key in ["blocks", "locations"] {
                    if let Some(n) = view.get(key) {
                        self.err(
                            n.at,
                            format!("`{key}` is for `format = \"geolite2\"`; DB-IP takes `files`"),
                        );
                    }
                }
                let files = paths(self, "files");
                if files.is_empty() {
                    self.err(
                        view.at,
                        "[geoip] with `format = \"dbip\"` needs `files` (the start,end,country \
                         CSV files)",
                    );
                }
                Some(Source::DbIp { files })
            }
            Some(other) => {
                let at = view.get("format").map_or(view.at, |n| n.at);
                self.err(
                    at,
                    format!("unknown [geoip] format `{other}`; expected `geolite2` or `dbip`"),
                );
                None
            }
            None => {
                if view.get("format").is_none() {
                    self.err(view.at, "[geoip] needs `format`: \"geolite2\" or \"dbip\"");
                }
                None
            }
        };
        let refresh = view.get("refresh").and_then(|n| self.refresh(n));
        let source = source?;
        (self.error_count() == errors_before).then_some(GeoIp { source, refresh })
    }

    /// `refresh`: seconds, or a string `N` followed by `s`, `m`, `h` or `d`.
    fn refresh(&mut self, node: &Node) -> Option<Duration> {
        let secs = match &node.val {
            Val::Int(n) => u64::try_from(*n).ok(),
            Val::Str(s) => {
                let (num, unit) = s.split_at(s.len().saturating_sub(1));
                let scale = match unit {
                    "s" => Some(1),
                    "m" => Some(60),
                    "h" => Some(3600),
                    "d" => Some(86_400),
                    _ => None,
                };
                scale.and_then(|k| {
                    num.parse::<u64>()
                        .ok()
                        .filter(|_| num.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|n| n.checked_mul(k))
                })
            }
            _ => None,
        };
        match secs {
            Some(s) if REFRESH_RANGE.contains(&s) => Some(Duration::from_secs(s)),
            _ => {
                self.err(
                    node.at,
                    format!(
                        "`refresh` must be {}..={} seconds, as a number or a string such as \
                         \"30m\", \"6h\", \"1d\"",
                        REFRESH_RANGE.start(),
                        REFRESH_RANGE.end()
                    ),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::policy::{
        config::parse_policy,
        model::{AddrMatch, Policy},
        setfile::format_cidr,
    };

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/geoip")
    }

    const DBIP: &str = "[geoip]\nformat = \"dbip\"\nfiles = [\"dbip-country-lite.csv\"]\n";
    const GEOLITE2: &str = "[geoip]\nformat = \"geolite2\"\nblocks = \
        [\"GeoLite2-Country-Blocks-IPv4.csv\", \"GeoLite2-Country-Blocks-IPv6.csv\"]\n\
        locations = \"GeoLite2-Country-Locations-en.csv\"\nrefresh = \"6h\"\n";

    fn parse(text: &str) -> Result<Policy, Vec<String>> {
        parse_policy(text, "p.toml", &dir())
            .map_err(|e| e.errors.iter().map(ToString::to_string).collect())
    }

    fn set(p: &Policy, name: &str) -> (usize, Vec<String>) {
        let i = p.sets.iter().position(|s| s.name == name).expect(name);
        (i, p.sets[i].entries.iter().map(format_cidr).collect())
    }

    #[test]
    fn a_country_is_a_set_in_either_case_and_either_format() {
        for head in [DBIP, GEOLITE2] {
            let text = format!(
                "{head}[sets.other]\nentries = [\"10.0.0.0/8\"]\n\
                 [[firewall.rule]]\naction = \"drop\"\nsrc = \"@country:cn\"\n\
                 [[firewall.rule]]\naction = \"drop\"\ndst = [\"@country:CN\"]\n\
                 [[firewall.rule]]\naction = \"allow\"\nsrc = \"@other\"\n"
            );
            let p = parse(&text).expect("valid");
            let (i, entries) = set(&p, "country:CN");
            assert_eq!(entries, ["192.0.2.0/25", "2001:db8:1::/48"]);
            // One set for both spellings, after the named sets.
            assert_eq!(p.sets.len(), 2);
            assert_eq!(p.firewall.rules[0].src, AddrMatch::Set(i));
            assert_eq!(p.firewall.rules[1].dst, AddrMatch::Set(i));
            assert!(p.geoip.is_some());
        }
        let p = parse(GEOLITE2).expect("valid");
        assert_eq!(
            p.geoip.and_then(|g| g.refresh).map(|d| d.as_secs()),
            Some(6 * 3600)
        );
    }

    #[test]
    fn a_code_the_data_does_not_name_is_an_empty_set_if_iso_knows_it() {
        let text = format!("{DBIP}[[firewall.rule]]\naction = \"drop\"\nsrc = \"@country:FR\"\n");
        let p = parse(&text).expect("FR is a country with no data here");
        assert!(set(&p, "country:FR").1.is_empty());
    }

    #[test]
    fn bad_countries_and_sections_are_located() {
        let cases: &[(String, &[&str])] = &[
            (
                format!("{DBIP}[[firewall.rule]]\naction = \"drop\"\nsrc = \"@country:XX\"\n"),
                &[
                    "p.toml:6:7: unknown country `XX` in `@country:XX`: not an ISO 3166-1 alpha-2 \
                   code, and the GeoIP data does not name it",
                ],
            ),
            (
                format!("{DBIP}[[firewall.rule]]\naction = \"drop\"\nsrc = \"@country:CHN\"\n"),
                &[
                    "p.toml:6:7: `@country:CHN`: a country is two letters (ISO 3166-1 alpha-2), \
                   e.g. `@country:CN`",
                ],
            ),
            (
                "[[firewall.rule]]\naction = \"drop\"\nsrc = \"@country:CN\"\n".to_owned(),
                &["p.toml:3:7: `@country:CN` needs a [geoip] section naming the country database"],
            ),
            (
                "[geoip]\nformat = \"maxmind\"\nrefresh = \"5w\"\n".to_owned(),
                &[
                    "p.toml:2:10: unknown [geoip] format `maxmind`; expected `geolite2` or `dbip`",
                    "p.toml:3:11: `refresh` must be 1..=604800 seconds, as a number or a string \
                     such as \"30m\", \"6h\", \"1d\"",
                ],
            ),
            (
                "[geoip]\nformat = \"geolite2\"\nfiles = [\"x.csv\"]\n".to_owned(),
                &[
                    "p.toml:1:1: [geoip] with `format = \"geolite2\"` needs `blocks` (the \
                     Blocks-IPv4.csv and/or Blocks-IPv6.csv files)",
                    "p.toml:1:1: [geoip] with `format = \"geolite2\"` needs `locations` (the \
                     Locations-en.csv file)",
                    "p.toml:3:9: `files` is for `format = \"dbip\"`; GeoLite2 takes `blocks` and \
                     `locations`",
                ],
            ),
            (
                "[geoip]\nformat = \"dbip\"\nfiles = [\"dbip-malformed.csv\"]\n\
                 [[firewall.rule]]\naction = \"drop\"\nsrc = \"@country:CN\"\n"
                    .to_owned(),
                &[],
            ),
        ];
        for (text, want) in cases {
            let got = parse(text).expect_err(text);
            if want.is_empty() {
                // Problems inside the database are located in its own file.
                assert_eq!(got.len(), 5, "{got:?}");
                assert!(got[0].contains("dbip-malformed.csv:2:1: "), "{got:?}");
                continue;
            }
            assert_eq!(&got, want, "for:\n{text}");
        }
    }
}
