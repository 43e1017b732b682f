//! Feed parsing: plain lists, CSV with a column, and STIX 2 bundles of simple indicators.
//!
//! Each entry's kind is inferred from its text: an IP address, a CIDR (normalised to its
//! network address; a host-length prefix becomes an address), or a domain name (lowercased,
//! without its trailing dot). An entry that is none of these is a [`BadLine`] with its place;
//! nothing is dropped silently.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use anyhow::{Result, anyhow};
use palisade_common::intel::{V4_MAPPED_BITS, mapped_v4, network};

use super::{Column, Format};

/// Every indicator of one feed, deduplicated and sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Indicators {
    /// Addresses as the maps key them (IPv4 mapped).
    pub ips: BTreeSet<[u8; 16]>,
    /// (network address, trie prefix length): IPv4 as `96 + n` of the mapped address.
    pub cidrs: BTreeSet<([u8; 16], u32)>,
    /// Lowercase, no trailing dot.
    pub domains: BTreeSet<String>,
    /// Entries that could not be used.
    pub bad: Vec<BadLine>,
}

/// An entry that could not be used, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// `file:line` (or `url:line`; for STIX, the object's index).
    pub place: String,
    pub text: String,
    pub why: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({:?})", self.place, self.why, self.text)
    }
}

/// One entry, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Ip([u8; 16]),
    Cidr([u8; 16], u32),
    Domain(String),
}

/// The map key of an address.
#[must_use]
pub fn key_of(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => mapped_v4(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The address a key stands for.
#[must_use]
pub fn ip_of(key: [u8; 16]) -> IpAddr {
    let a = Ipv6Addr::from(key);
    a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
}

/// Reads one entry; the error says why it is not one.
///
/// # Errors
/// When the text is no address, CIDR or domain name.
pub fn entry(text: &str) -> Result<Entry, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty entry".into());
    }
    if let Some((addr, len)) = t.split_once('/') {
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let n: u32 = len
            .parse()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("prefix length `{len}` is not between 0 and {max}"))?;
        let (key, bits) = if ip.is_ipv4() {
            (key_of(ip), V4_MAPPED_BITS + n)
        } else {
            (key_of(ip), n)
        };
        if bits == 128 {
            return Ok(Entry::Ip(key));
        }
        return Ok(Entry::Cidr(network(key, bits), bits));
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(Entry::Ip(key_of(ip)));
    }
    let name = t.trim_end_matches('.').to_ascii_lowercase();
    let valid = (1..=253).contains(&name.len())
        && name.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && name.bytes().any(|b| b.is_ascii_alphabetic());
    if valid {
        Ok(Entry::Domain(name))
    } else {
        Err("not an IP address, a CIDR or a domain name".into())
    }
}

impl Indicators {
    fn add(&mut self, e: Entry) {
        match e {
            Entry::Ip(k) => {
                self.ips.insert(k);
            }
            Entry::Cidr(k, b) => {
                self.cidrs.insert((k, b));
            }
            Entry::Domain(d) => {
                self.domains.insert(d);
            }
        }
    }

    fn take(&mut self, place: String, text: &str) {
        match entry(text) {
            Ok(e) => self.add(e),
            Err(why) => self.bad.push(BadLine {
                place,
                text: text.chars().take(120).collect(),
                why,
            }),
        }
    }

    /// Entries of every kind.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ips.len() + self.cidrs.len() + self.domains.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses `text` (from `label`, for the places of bad lines) in `format`.
///
/// # Errors
/// When the whole feed is unusable: a CSV header without the named column, a STIX document
/// that is not JSON or not a bundle.
pub fn parse(text: &str, format: &Format, label: &str) -> Result<Indicators> {
    let mut out = Indicators::default();
    match format {
        Format::Plain => {
            for (i, line) in text.lines().enumerate() {
                let t = line.split('#').next().unwrap_or("").trim();
                if !t.is_empty() {
                    out.take(format!("{label}:{}", i + 1), t);
                }
            }
        }
        Format::Csv { column } => csv(text, column, label, &mut out)?,
        Format::Stix => stix(text, label, &mut out)?,
    }
    Ok(out)
}

/// Splits one CSV record, honouring double quotes (`""` inside quotes is one quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

fn csv(text: &str, column: &Column, label: &str, out: &mut Indicators) -> Result<()> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let index = match column {
        Column::Index(i) => *i,
        Column::Name(name) => {
            let Some((n, header)) = lines.next() else {
                return Ok(());
            };
            csv_fields(header)
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    anyhow!(
                        "{label}:{}: the header has no column `{name}` ({header:?})",
                        n + 1
                    )
                })?
        }
    };
    for (n, line) in lines {
        let fields = csv_fields(line);
        match fields.get(index) {
            Some(f) => out.take(format!("{label}:{}", n + 1), f),
            None => out.bad.push(BadLine {
                place: format!("{label}:{}", n + 1),
                text: line.chars().take(120).collect(),
                why: format!("no column {index}"),
            }),
        }
    }
    Ok(())
}

/// The value of one simple STIX comparison: `[ipv4-addr:value = '1.2.3.4']`,
/// `[ipv6-addr:value = '...']` or `[domain-name:value = '...']`; several joined by `OR`
/// are taken one by one. Anything else is `None`.
fn stix_values(pattern: &str) -> Option<Vec<(String, String)>> {
    let p = pattern.trim();
    let mut values = Vec::new();
    for part in p.split(" OR ") {
        let part = part.trim().strip_prefix('[')?.strip_suffix(']')?.trim();
        let (lhs, rhs) = part.split_once('=')?;
        let object = lhs.trim().strip_suffix(":value")?.trim();
        if !matches!(object, "ipv4-addr" | "ipv6-addr" | "domain-name") {
            return None;
        }
        let v = rhs.trim().strip_prefix('\'')?.strip_suffix('\'')?;
        values.push((object.to_string(), v.to_string()));
    }
    (!values.is_empty()).then_some(values)
}

fn stix(text: &str, label: &str, out: &mut Indicators) -> Result<()> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow!("{label}: not a STIX bundle: {e}"))?;
    let objects = doc
        .get("objects")
        .and_then(|o| o.as_array())
        .ok_or_else(|| anyhow!("{label}: not a STIX bundle (no `objects` list)"))?;
    for (i, o) in objects.iter().enumerate() {
        if o.get("type").and_then(|t| t.as_str()) != Some("indicator") {
            continue;
        }
        let place = format!("{label}: objects[{i}]");
        let pattern = o.get("pattern").and_then(|p| p.as_str()).unwrap_or("");
        if o.get("pattern_type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t != "stix")
        {
            out.bad.push(BadLine {
                place,
                text: pattern.chars().take(120).collect(),
                why: "pattern_type is not stix".into(),
            });
            continue;
        }
        let Some(values) = stix_values(pattern) else {
            out.bad.push(BadLine {
                place,
                text: pattern.chars().take(120).collect(),
                why: "not a simple ipv4-addr, ipv6-addr or domain-name comparison".into(),
            });
            continue;
        };
        for (object, v) in values {
            match (object.as_str(), entry(&v)) {
                ("ipv4-addr", Ok(e @ (Entry::Ip(_) | Entry::Cidr(..))))
                    if v.split('/')
                        .next()
                        .is_some_and(|a| a.parse::<std::net::Ipv4Addr>().is_ok()) =>
                {
                    out.add(e);
                }
                ("ipv6-addr", Ok(e @ (Entry::Ip(_) | Entry::Cidr(..))))
                    if v.split('/')
                        .next()
                        .is_some_and(|a| a.parse::<Ipv6Addr>().is_ok()) =>
                {
                    out.add(e);
                }
                ("domain-name", Ok(e @ Entry::Domain(_))) => out.add(e),
                (_, Err(why)) => out.bad.push(BadLine {
                    place: place.clone(),
                    text: v.clone(),
                    why,
                }),
                _ => out.bad.push(BadLine {
                    place: place.clone(),
                    text: v.clone(),
                    why: format!("not a value of {object}"),
                }),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> [u8; 16] {
        key_of(s.parse().unwrap())
    }

    #[test]
    fn plain_lists_infer_each_kind_and_report_bad_lines_with_their_place() {
        let text = "# comment\n192.0.2.1\n2001:db8::1  # trailing comment\n\n10.1.2.3/8\n\
                    Evil.Example.COM.\nnot an entry!\n300.1.1.1\n192.0.2.9/32\n2001:db8::/33\n";
        let ind = parse(text, &Format::Plain, "f.txt").unwrap();
        assert_eq!(
            ind.ips,
            [ip("192.0.2.1"), ip("2001:db8::1"), ip("192.0.2.9")]
                .into_iter()
                .collect()
        );
        assert_eq!(
            ind.cidrs,
            [(ip("10.0.0.0"), 104), (ip("2001:db8::"), 33)]
                .into_iter()
                .collect()
        );
        assert_eq!(
            ind.domains,
            ["evil.example.com".to_string()].into_iter().collect()
        );
        let places: Vec<&str> = ind.bad.iter().map(|b| b.place.as_str()).collect();
        assert_eq!(places, ["f.txt:7", "f.txt:8"]);
    }

    #[test]
    fn cidrs_are_normalised_to_their_network() {
        assert_eq!(entry("10.9.8.7/16"), Ok(Entry::Cidr(ip("10.9.0.0"), 112)));
        assert_eq!(
            entry("2001:db8:ffff::1/40"),
            Ok(Entry::Cidr(ip("2001:db8:ff00::"), 40))
        );
        assert_eq!(entry("0.0.0.0/0"), Ok(Entry::Cidr(ip("0.0.0.0"), 96)));
        assert_eq!(entry("2001:db8::5/128"), Ok(Entry::Ip(ip("2001:db8::5"))));
        assert!(entry("10.0.0.0/33").is_err());
        assert!(entry("2001:db8::/129").is_err());
        assert!(entry("10.0.0.0/x").is_err());
    }

    #[test]
    fn ipv4_mapped_and_native_ipv6_keys_differ() {
        assert_ne!(ip("10.0.0.1"), ip("a00:1::"));
        assert_eq!(ip("10.0.0.1"), ip("::ffff:10.0.0.1"));
        assert_eq!(ip_of(ip("10.0.0.1")), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn csv_by_header_name_and_by_index() {
        let text = "first_seen,\"ip, quoted\",note\n2024-01-01,198.51.100.7,x\n\
                    2024-01-02,\"203.0.113.0/24\",\"a, b\"\n2024-01-03\n2024-01-04,bogus!,y\n";
        let by_name = Format::Csv {
            column: Column::Name("IP, quoted".into()),
        };
        let ind = parse(text, &by_name, "c.csv").unwrap();
        assert_eq!(ind.ips, [ip("198.51.100.7")].into_iter().collect());
        assert_eq!(ind.cidrs, [(ip("203.0.113.0"), 120)].into_iter().collect());
        let places: Vec<&str> = ind.bad.iter().map(|b| b.place.as_str()).collect();
        assert_eq!(places, ["c.csv:4", "c.csv:5"]);
        let missing = Format::Csv {
            column: Column::Name("addr".into()),
        };
        assert!(
            parse(text, &missing, "c.csv")
                .unwrap_err()
                .to_string()
                .contains("c.csv:1: the header has no column `addr`")
        );
        let by_index = Format::Csv {
            column: Column::Index(1),
        };
        let ind = parse("a,192.0.2.1\nb,192.0.2.2\n", &by_index, "d.csv").unwrap();
        assert_eq!(ind.ips.len(), 2);
        assert!(ind.bad.is_empty());
    }

    #[test]
    fn stix_bundles_take_simple_patterns_and_report_the_rest() {
        let text = r#"{"type":"bundle","id":"bundle--1","objects":[
          {"type":"identity","id":"identity--1","name":"x"},
          {"type":"indicator","pattern_type":"stix","pattern":"[ipv4-addr:value = '198.51.100.1']"},
          {"type":"indicator","pattern_type":"stix","pattern":"[ipv4-addr:value = '198.51.100.0/25']"},
          {"type":"indicator","pattern":"[ipv6-addr:value = '2001:db8::7'] OR [domain-name:value = 'Bad.Example.']"},
          {"type":"indicator","pattern_type":"stix","pattern":"[file:hashes.MD5 = 'abc']"},
          {"type":"indicator","pattern_type":"stix","pattern":"[ipv4-addr:value = '2001:db8::1']"},
          {"type":"indicator","pattern_type":"snort","pattern":"alert tcp any any"}
        ]}"#;
        let ind = parse(text, &Format::Stix, "s.json").unwrap();
        assert_eq!(
            ind.ips,
            [ip("198.51.100.1"), ip("2001:db8::7")]
                .into_iter()
                .collect()
        );
        assert_eq!(ind.cidrs, [(ip("198.51.100.0"), 121)].into_iter().collect());
        assert_eq!(
            ind.domains,
            ["bad.example".to_string()].into_iter().collect()
        );
        let places: Vec<&str> = ind.bad.iter().map(|b| b.place.as_str()).collect();
        assert_eq!(
            places,
            [
                "s.json: objects[4]",
                "s.json: objects[5]",
                "s.json: objects[6]"
            ]
        );
        assert!(parse("[1,2]", &Format::Stix, "x").is_err());
        assert!(parse("{", &Format::Stix, "x").is_err());
    }
}
