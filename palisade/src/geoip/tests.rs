use std::{collections::BTreeSet, path::PathBuf};

use super::*;
use crate::policy::setfile::format_cidr;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/geoip")
        .join(name)
}

fn geolite2(blocks: &[&str]) -> Source {
    Source::GeoLite2 {
        blocks: blocks.iter().map(|b| fixture(b)).collect(),
        locations: fixture("GeoLite2-Country-Locations-en.csv"),
    }
}

fn wanted(codes: &[&[u8; 2]]) -> BTreeSet<[u8; 2]> {
    codes.iter().map(|c| **c).collect()
}

fn texts(found: &Countries, code: &[u8; 2]) -> Vec<String> {
    found
        .prefixes
        .get(code)
        .map_or_else(Vec::new, |v| v.iter().map(format_cidr).collect())
}

/// One diagnostic as printed, with the fixture directory left out.
fn printed(d: &Diagnostic) -> String {
    let file = d.file.rsplit('/').next().unwrap_or_default();
    format!("{file}:{}:{}: {}", d.line, d.column, d.message)
}

#[test]
fn geolite2_takes_the_located_country_then_the_registered_one() {
    let src = geolite2(&[
        "GeoLite2-Country-Blocks-IPv4.csv",
        "GeoLite2-Country-Blocks-IPv6.csv",
    ]);
    let found = load(&src, &wanted(&[b"CN", b"US", b"KR"])).expect("valid fixtures");
    // 198.51.100.0/24 is located in the US and registered in CN: it counts as US.
    assert_eq!(texts(&found, b"CN"), ["192.0.2.0/25", "2001:db8:1::/48"]);
    // 192.0.2.128/25 has no located country: its registered one (US) is taken.
    assert_eq!(
        texts(&found, b"US"),
        ["192.0.2.128/25", "198.51.100.0/24", "2001:db8:2::/48"]
    );
    assert_eq!(texts(&found, b"KR"), ["2001:db8:3::/48"]);
    // Not wanted: seen but not kept. The anonymous proxy row has no country.
    assert!(!found.prefixes.contains_key(b"DE"));
    assert_eq!(found.seen, wanted(&[b"CN", b"US", b"DE", b"KR"]));
    assert_eq!(found.lines, 7);
}

#[test]
fn dbip_ranges_become_the_fewest_prefixes() {
    let src = Source::DbIp {
        files: vec![fixture("dbip-country-lite.csv")],
    };
    let found = load(&src, &wanted(&[b"DE", b"KR", b"CN"])).expect("valid fixture");
    assert_eq!(
        texts(&found, b"DE"),
        [
            "203.0.113.5/32",
            "203.0.113.6/31",
            "203.0.113.8/29",
            "203.0.113.16/28",
            "203.0.113.32/27",
            "203.0.113.64/27",
            "203.0.113.96/30",
            "203.0.113.100/32",
        ]
    );
    // Quoted fields are read like bare ones.
    assert_eq!(texts(&found, b"KR"), ["2001:db8:3::/48"]);
    assert_eq!(texts(&found, b"CN"), ["192.0.2.0/25", "2001:db8:1::/48"]);
}

#[test]
fn both_formats_agree_on_the_fixtures() {
    let geo = load(
        &geolite2(&[
            "GeoLite2-Country-Blocks-IPv4.csv",
            "GeoLite2-Country-Blocks-IPv6.csv",
        ]),
        &wanted(&[b"CN", b"US", b"KR"]),
    )
    .expect("geolite2");
    let dbip = load(
        &Source::DbIp {
            files: vec![fixture("dbip-country-lite.csv")],
        },
        &wanted(&[b"CN", b"US", b"KR"]),
    )
    .expect("dbip");
    assert_eq!(geo.prefixes, dbip.prefixes);
}

#[test]
fn malformed_dbip_lines_are_located() {
    let src = Source::DbIp {
        files: vec![fixture("dbip-malformed.csv")],
    };
    let errors = load(&src, &wanted(&[b"CN"])).expect_err("malformed");
    let got: Vec<String> = errors.iter().map(printed).collect();
    assert_eq!(
        got,
        [
            "dbip-malformed.csv:2:1: invalid start address `192.0.2.300`",
            "dbip-malformed.csv:3:14: the end address is before the start address",
            "dbip-malformed.csv:4:13: the start and end addresses are of different families",
            "dbip-malformed.csv:5:1: expected `start,end,country` (3 fields), found 2 fields",
            "dbip-malformed.csv:6:27: invalid country code `D1`",
        ]
    );
}

#[test]
fn malformed_geolite2_lines_are_located() {
    let errors = load(
        &geolite2(&["GeoLite2-Country-Blocks-IPv4-malformed.csv"]),
        &wanted(&[b"CN"]),
    )
    .expect_err("malformed");
    let got: Vec<String> = errors.iter().map(printed).collect();
    assert_eq!(
        got,
        [
            "GeoLite2-Country-Blocks-IPv4-malformed.csv:3:1: invalid network `192.0.2.1/24`: \
             host bits set; did you mean 192.0.2.0/24?",
            "GeoLite2-Country-Blocks-IPv4-malformed.csv:4:17: geoname id 999 is not a country \
             of the locations file",
            "GeoLite2-Country-Blocks-IPv4-malformed.csv:5:16: invalid geoname id `x2921044`",
            "GeoLite2-Country-Blocks-IPv4-malformed.csv:6:1: expected at least 3 fields, found 1",
        ]
    );
}

#[test]
fn a_missing_file_and_a_wrong_header_are_errors() {
    let errors = load(
        &Source::GeoLite2 {
            blocks: vec![fixture("nope.csv")],
            // A blocks file is not a locations file.
            locations: fixture("GeoLite2-Country-Blocks-IPv6.csv"),
        },
        &wanted(&[b"CN"]),
    )
    .expect_err("broken");
    let got: Vec<String> = errors.iter().map(printed).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("GeoLite2-Country-Blocks-IPv6.csv:1:1: expected a header"),
        "{got:?}"
    );
    assert!(
        got[1].starts_with("nope.csv:0:0: cannot read the GeoIP file"),
        "{got:?}"
    );
}

#[test]
fn only_so_many_bad_lines_are_listed() {
    let dir = tempfile_dir();
    let path = dir.join("bad.csv");
    let text: String = (0..50).map(|i| format!("x{i},y,ZZ\n")).collect();
    std::fs::write(&path, text).expect("write");
    let errors = load(&Source::DbIp { files: vec![path] }, &wanted(&[b"CN"])).expect_err("bad");
    assert_eq!(errors.len(), MAX_ERRORS_PER_FILE + 1);
    assert_eq!(
        errors[MAX_ERRORS_PER_FILE].message,
        "30 more malformed lines not shown"
    );
    std::fs::remove_dir_all(dir).expect("clean up");
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("palisade-geoip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn codes_and_set_names() {
    assert!(is_iso_code(*b"CN") && is_iso_code(*b"XK") && is_iso_code(*b"ZW"));
    assert!(!is_iso_code(*b"XX") && !is_iso_code(*b"EU"));
    assert_eq!(
        canonical_set_name("country:cn").as_deref(),
        Some("country:CN")
    );
    assert_eq!(canonical_set_name("blocklist"), None);
    assert_eq!(set_country("country:US"), Some(*b"US"));
    assert_eq!(set_country("country:USA"), None);
}

#[test]
fn country_indexes_are_fixed_and_fit_a_byte() {
    let codes: Vec<[u8; 2]> = iso_codes().collect();
    assert!(codes.len() > 240 && codes.len() < 255, "{}", codes.len());
    assert_eq!(country_index(*b"AD"), Some(1));
    assert_eq!(country_index(*b"XK"), Some(codes.len() as u8));
    assert_eq!(country_index(*b"ZZ"), None);
    let unique: BTreeSet<[u8; 2]> = codes.iter().copied().collect();
    assert_eq!(unique.len(), codes.len());
}

#[test]
fn per_country_rate_limits_compile_to_one_country_map() {
    let dir = std::env::temp_dir().join(format!("palisade-geoip-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("db.csv"),
        "192.0.2.0,192.0.2.255,CN\n198.51.100.7,198.51.100.7,US\n2001:db8::,2001:db8::ffff,US\n\
         203.0.113.0,203.0.113.255,ZZ\n",
    )
    .unwrap();
    let text = "[geoip]\nformat = \"dbip\"\nfiles = [\"db.csv\"]\n\
                [[firewall.rule]]\nname = \"cn\"\naction = \"drop\"\nsrc = \"@country:CN\"\n\
                [[firewall.rule]]\naction = \"rate-limit\"\nrate = { pps = 5, burst = 5, per = \"country\" }\n";
    let p = crate::policy::config::parse_policy(text, "p.toml", &dir).unwrap();
    // Every ISO country has its set; CN is the rule's.
    assert_eq!(p.sets.len(), iso_codes().count());
    let c = crate::firewall::compile::compile(&p).unwrap();
    let (map, values) = c.country_map.clone().expect("a country map");
    assert_eq!(map, p.sets.len());
    assert_eq!(usize::from(c.header.country_set), map);
    let cn = country_index(*b"CN").unwrap();
    let us = country_index(*b"US").unwrap();
    let mut got: Vec<(String, u8)> = c.sets[map]
        .iter()
        .map(format_cidr)
        .zip(values.iter().copied())
        .collect();
    got.sort();
    // ZZ is no ISO country: its sources are of no country (the unknown bucket).
    assert_eq!(
        got,
        vec![
            ("192.0.2.0/24".to_owned(), cn),
            ("198.51.100.7/32".to_owned(), us),
            ("2001:db8::/112".to_owned(), us),
        ]
    );
    // The country sets no rule names are written empty: their members live in the map.
    let by_name = |n: &str| p.sets.iter().position(|s| s.name == n).unwrap();
    assert_eq!(c.sets[by_name("country:CN")].len(), 1);
    assert!(c.sets[by_name("country:US")].is_empty());
    assert_eq!(
        c.rules[1].flags & palisade_common::firewall::RULE_RATE_PER_COUNTRY,
        palisade_common::firewall::RULE_RATE_PER_COUNTRY
    );
    // Without a per-country rule there is no map, and no set for countries no rule names.
    let plain = text.replace(", per = \"country\"", "");
    let p = crate::policy::config::parse_policy(&plain, "p.toml", &dir).unwrap();
    assert_eq!(p.sets.len(), 1);
    let c = crate::firewall::compile::compile(&p).unwrap();
    assert_eq!((c.country_map, c.header.country_set), (None, 0));
    // Without [geoip] the `per` line is the error.
    let bare = text.split_once("[[firewall.rule]]\naction").unwrap().1;
    let bare = format!("[[firewall.rule]]\naction{bare}");
    let e = crate::policy::config::parse_policy(&bare, "p.toml", &dir).unwrap_err();
    assert!(
        e.to_string()
            .contains("p.toml:3:36: `per = \"country\"` needs a [geoip] section"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
