//! Set files: long address lists kept outside the policy file, and the address/CIDR syntax
//! shared with it.
//!
//! A set file holds one IPv4 or IPv6 address or CIDR block per line:
//!
//! ```text
//! # Addresses seen scanning port 22, refreshed nightly.
//! 203.0.113.0/24
//! 198.51.100.7          # a bare address means /32 (IPv4) or /128 (IPv6)
//! 2001:db8:bad::/48
//! ```
//!
//! `#` starts a comment that runs to the end of the line, blank lines are ignored, and
//! leading and trailing whitespace is ignored. Entries are kept in file order and duplicates
//! are kept: the compiler merges them. Every bad line is reported, each with its line and
//! column, so a broken feed can be fixed in one pass.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::config::Diagnostic;
use super::model::{Cidr, Family};

/// Why a piece of text is not a usable address or CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Neither an address nor `address/prefix`.
    #[error("invalid address or CIDR `{0}`")]
    Invalid(String),
    /// The prefix length exceeds the bits of the address family.
    #[error("prefix length {len} is too long for an {family} address (at most {max}) in `{text}`")]
    PrefixTooLong {
        text: String,
        len: u32,
        family: &'static str,
        max: u8,
    },
    /// The address has bits set past the prefix, which usually means a typo in the address
    /// or in the prefix length; silently clearing them could widen or move the block.
    #[error("host bits set; did you mean {suggestion}?")]
    HostBits { suggestion: String },
}

/// Parses an IPv4/IPv6 address (a single host) or a CIDR block such as `10.0.0.0/8`.
///
/// The text must be exact: no surrounding whitespace, a decimal prefix length, and no host
/// bits set past the prefix.
pub fn parse_cidr(text: &str) -> Result<Cidr, CidrError> {
    let invalid = || CidrError::Invalid(text.to_owned());
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| invalid())?;
    let max: u8 = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let len = match prefix_text {
        None => max,
        Some(p) => {
            // `u32::from_str` would also take "+8"; only plain digits are a prefix length.
            // Three digits is enough for 128 and keeps the value within u32.
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let len: u32 = p.parse().map_err(|_| invalid())?;
            if len > u32::from(max) {
                return Err(CidrError::PrefixTooLong {
                    text: text.to_owned(),
                    len,
                    family: family_name(family_of(addr)),
                    max,
                });
            }
            // The check above bounds `len` by `max`, which is a u8.
            u8::try_from(len).map_err(|_| invalid())?
        }
    };
    let cidr = Cidr::new(addr, len).ok_or_else(invalid)?;
    let unmasked = match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    if cidr.addr != unmasked {
        return Err(CidrError::HostBits {
            suggestion: format_cidr(&cidr),
        });
    }
    Ok(cidr)
}

/// Formats a block the way [`parse_cidr`] reads it: `a.b.c.d/len` or `v6addr/len`, with the
/// address in its own family (not the stored IPv4-mapped form).
#[must_use]
pub fn format_cidr(cidr: &Cidr) -> String {
    let mut out = String::with_capacity(43);
    match cidr.family {
        Family::V4 => {
            let [.., a, b, c, d] = cidr.addr;
            let _ = write!(out, "{}/{}", Ipv4Addr::new(a, b, c, d), cidr.prefix_len);
        }
        Family::V6 => {
            let _ = write!(out, "{}/{}", Ipv6Addr::from(cidr.addr), cidr.prefix_len);
        }
    }
    out
}

/// `"IPv4"` or `"IPv6"`, for messages.
#[must_use]
pub const fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

const fn family_of(addr: IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// Parses the text of a set file; `file_name` only labels the diagnostics.
///
/// Returns every entry in file order, or one diagnostic for every bad line.
pub fn parse_set_file(text: &str, file_name: &str) -> Result<Vec<Cidr>, Vec<Diagnostic>> {
    // Feeds are mostly one entry per line, so a byte-count estimate avoids regrowing the
    // vector many times on million-line files without over-allocating wildly.
    let mut entries = Vec::with_capacity(text.len() / 16);
    let mut errors = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let content = match raw_line.find('#') {
            Some(hash) => &raw_line[..hash],
            None => raw_line,
        };
        let token = content.trim();
        if token.is_empty() {
            continue;
        }
        // Byte offset of the token inside the line; `trim` only removes from the ends.
        let start = token.as_ptr() as usize - raw_line.as_ptr() as usize;
        let line = index + 1;
        if let Some(gap) = token.find(char::is_whitespace) {
            let extra_at = start + gap + (token[gap..].len() - token[gap..].trim_start().len());
            errors.push(Diagnostic {
                file: file_name.to_owned(),
                line,
                column: column_of(raw_line, extra_at),
                message: format!(
                    "expected one address or CIDR per line, found extra text `{}`",
                    raw_line[extra_at..start + token.len()].trim_end()
                ),
            });
            continue;
        }
        match parse_cidr(token) {
            Ok(cidr) => entries.push(cidr),
            Err(e) => errors.push(Diagnostic {
                file: file_name.to_owned(),
                line,
                column: column_of(raw_line, start),
                message: e.to_string(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

/// Reads and parses a set file. A read failure is a single diagnostic at line 0, column 0.
pub fn load_set_file(path: &Path) -> Result<Vec<Cidr>, Vec<Diagnostic>> {
    let file_name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_set_file(&text, &file_name),
        Err(e) => Err(vec![Diagnostic {
            file: file_name,
            line: 0,
            column: 0,
            message: format!("cannot read set file: {e}"),
        }]),
    }
}

/// 1-based column, in characters, of byte offset `at` within `line`.
fn column_of(line: &str, at: usize) -> usize {
    line[..at].chars().count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cidr(text: &str, len: u8) -> Cidr {
        Cidr::new(text.parse().expect("test address"), len).expect("test prefix")
    }

    #[test]
    fn parses_addresses_and_blocks() {
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok(cidr("10.0.0.0", 8)));
        assert_eq!(parse_cidr("198.51.100.7"), Ok(cidr("198.51.100.7", 32)));
        assert_eq!(parse_cidr("2001:db8::/32"), Ok(cidr("2001:db8::", 32)));
        assert_eq!(parse_cidr("2001:db8::1"), Ok(cidr("2001:db8::1", 128)));
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok(cidr("0.0.0.0", 0)));
        assert_eq!(parse_cidr("::/0"), Ok(cidr("::", 0)));
        let v4 = parse_cidr("192.0.2.0/24").expect("valid");
        assert_eq!(v4.family, Family::V4);
        assert_eq!(
            v4.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 0]
        );
        assert_eq!(v4.prefix_len, 24);
        assert_eq!(v4.stored_prefix_len(), 120);
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            " 10.0.0.0/8",
            "10.0.0/8",
            "10.0.0.0/8/8",
            "fe80::1%eth0",
            "10.0.0.0/0008",
            "host.example",
            "/8",
        ] {
            assert_eq!(
                parse_cidr(bad),
                Err(CidrError::Invalid(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_long_prefixes_and_host_bits() {
        assert_eq!(
            parse_cidr("10.0.0.0/33").map_err(|e| e.to_string()),
            Err(
                "prefix length 33 is too long for an IPv4 address (at most 32) in `10.0.0.0/33`"
                    .to_owned()
            )
        );
        assert_eq!(
            parse_cidr("::/129").map_err(|e| e.to_string()),
            Err(
                "prefix length 129 is too long for an IPv6 address (at most 128) in `::/129`"
                    .to_owned()
            )
        );
        assert_eq!(
            parse_cidr("10.0.0.1/8").map_err(|e| e.to_string()),
            Err("host bits set; did you mean 10.0.0.0/8?".to_owned())
        );
        assert_eq!(
            parse_cidr("2001:db8::1/32").map_err(|e| e.to_string()),
            Err("host bits set; did you mean 2001:db8::/32?".to_owned())
        );
    }

    #[test]
    fn formats_in_the_family_of_the_block() {
        assert_eq!(format_cidr(&cidr("203.0.113.0", 24)), "203.0.113.0/24");
        assert_eq!(
            format_cidr(&cidr("2001:db8:bad::", 48)),
            "2001:db8:bad::/48"
        );
        assert_eq!(
            format_cidr(&cidr("::ffff:1.2.3.4", 128)),
            "::ffff:1.2.3.4/128"
        );
    }

    #[test]
    fn set_file_skips_comments_and_blank_lines() {
        let text =
            "# header\n\n10.0.0.0/8\n  192.0.2.1   # trailing\r\n\t\n2001:db8::/32#tight\n#\n";
        assert_eq!(
            parse_set_file(text, "list.txt"),
            Ok(vec![
                cidr("10.0.0.0", 8),
                cidr("192.0.2.1", 32),
                cidr("2001:db8::", 32)
            ])
        );
        assert_eq!(parse_set_file("", "empty.txt"), Ok(vec![]));
        assert_eq!(parse_set_file("# only a comment", "c.txt"), Ok(vec![]));
    }

    #[test]
    fn set_file_keeps_duplicates_in_order() {
        assert_eq!(
            parse_set_file("1.2.3.4\n1.2.3.4/32\n1.2.3.4", "d.txt"),
            Ok(vec![cidr("1.2.3.4", 32); 3])
        );
    }

    #[test]
    fn set_file_reports_every_bad_line() {
        let text = "10.0.0.0/8\nnot-an-address\n  10.0.0.1/8  # typo\n1.2.3.4 5.6.7.8 # two\n\
                    ::/200\nfe80::/10\n";
        let errors = parse_set_file(text, "feed.txt").expect_err("bad lines");
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "feed.txt:2:1: invalid address or CIDR `not-an-address`",
                "feed.txt:3:3: host bits set; did you mean 10.0.0.0/8?",
                "feed.txt:4:9: expected one address or CIDR per line, found extra text `5.6.7.8`",
                "feed.txt:5:1: prefix length 200 is too long for an IPv6 address (at most 128) \
                 in `::/200`",
            ]
        );
    }

    #[test]
    fn set_file_columns_count_characters() {
        // A non-ASCII comment on an earlier line must not shift later columns, and a
        // non-ASCII prefix on the same line counts as one column per character.
        let errors = parse_set_file("# é\n\u{a0}bad\n", "u.txt").expect_err("bad line");
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].column), (2, 2));
    }

    #[test]
    fn load_reports_missing_file_at_line_zero() {
        let path = Path::new("/nonexistent/palisade-test/set.txt");
        let errors = load_set_file(path).expect_err("missing file");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, "/nonexistent/palisade-test/set.txt");
        assert_eq!((errors[0].line, errors[0].column), (0, 0));
        assert!(
            errors[0].message.starts_with("cannot read set file: "),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn load_reads_a_real_file() {
        let dir = std::env::temp_dir().join(format!("palisade-setfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("list.txt");
        std::fs::write(&path, "192.0.2.0/24\n").expect("write");
        let result = load_set_file(&path);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(result, Ok(vec![cidr("192.0.2.0", 24)]));
    }

    #[test]
    fn a_million_lines_parse_quickly() {
        let mut text = String::with_capacity(20_000_000);
        for i in 0..1_000_000u32 {
            let [_, b, c, d] = i.to_be_bytes();
            if i % 2 == 0 {
                let _ = writeln!(text, "10.{b}.{c}.{d}");
            } else {
                let _ = writeln!(text, "2001:db8:{b:x}:{c:x}{d:02x}::/64 # feed entry");
            }
        }
        let start = std::time::Instant::now();
        let entries = parse_set_file(&text, "big.txt").expect("valid feed");
        let elapsed = start.elapsed();
        assert_eq!(entries.len(), 1_000_000);
        assert_eq!(entries[1], cidr("2001:db8:0:1::", 64));
        // Debug builds are several times slower than release; this bound catches an
        // accidental quadratic or per-line allocation storm without flaking on a busy machine.
        let limit = if cfg!(debug_assertions) { 20 } else { 1 };
        assert!(elapsed.as_secs() < limit, "took {elapsed:?}");
    }

    proptest! {
        #[test]
        fn formatted_blocks_parse_back(v4 in any::<[u8; 4]>(), v6 in any::<[u8; 16]>(),
                                       len4 in 0u8..=32, len6 in 0u8..=128) {
            for (addr, len) in [
                (IpAddr::from(v4), len4),
                (IpAddr::from(v6), len6),
            ] {
                let block = Cidr::new(addr, len).expect("valid length");
                let text = format_cidr(&block);
                prop_assert_eq!(parse_cidr(&text), Ok(block), "{}", text);
            }
        }
    }
}
