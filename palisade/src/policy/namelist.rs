//! DNS names as written in a policy or a list file, and the list files themselves.
//!
//! # Names
//!
//! [`parse_name`] reads a domain name the way zone files write it:
//!
//! - labels separated by `.`, with an optional single trailing dot (`example.com.` is
//!   `example.com`);
//! - an optional leading `*.` for "every name strictly below" (`*.example.com` matches
//!   `www.example.com` but not `example.com`); `*` is allowed nowhere else;
//! - escapes: `\.` is a dot inside a label, `\\` a backslash, `\DDD` the byte with decimal value
//!   `DDD` (exactly three digits, at most 255), and `\X` for any other non-digit `X` is `X`
//!   itself (so `\*` is a literal asterisk);
//! - ASCII letters are folded to lower case; any other byte from `!` upwards, including
//!   `_` and bytes of non-ASCII characters, is kept as is;
//! - whitespace and unescaped control characters are errors, each label holds 1 to 63 bytes,
//!   and the whole name is at most 255 bytes in wire form (a length byte per label, the label,
//!   and the final root byte; the `*` of a wildcard counts as a label).
//!
//! # List files
//!
//! [`parse_list_file`] reads the block and allow lists that DNS filters share. The format is
//! decided line by line, so files that mix formats load too:
//!
//! ```text
//! # A comment; so is everything after a `#` on any line.
//! ! An adblock-style comment (only at the start of a line).
//! [Adblock Plus 2.0]
//! 0.0.0.0 ads.example.com            # hosts file: an address, then one or more names
//! 127.0.0.1 a.example b.example
//! 0.0.0.0 localhost                  # hosts-file boilerplate names are skipped
//! tracker.example                    # one plain name
//! *.cdn.example                      # everything strictly below cdn.example
//! ||ads.example.net^                 # adblock: ads.example.net and everything below it
//! ```
//!
//! A plain name (alone or in a hosts line) matches exactly that name, or the name and every
//! name below it when the list is loaded with `subdomains = true`. Blank lines are ignored
//! and CRLF line endings are accepted. Adblock exception rules (`@@||...`) and options
//! (`||name^$important`) have no meaning for a single list and are reported as errors, as is
//! every other line that is not one of the forms above. A `#` always starts a comment in a
//! list file: write a literal `#` in a name as `\035`.
//!
//! Every bad line is reported with its line and column, up to [`MAX_FILE_DIAGNOSTICS`], then
//! one more diagnostic says how many were left out.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use super::config::Diagnostic;
use super::model::{NameEntry, NameMatch};

/// The most diagnostics reported for one list file, before a final "N more errors" one.
pub const MAX_FILE_DIAGNOSTICS: usize = 100;

/// The longest label, in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// The longest name in wire form, in bytes.
pub const MAX_WIRE_LEN: usize = 255;

/// Names in hosts files that describe the machine itself, not something to block or allow.
const HOSTS_BOILERPLATE: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "localhost4",
    "localhost4.localdomain4",
    "localhost6",
    "localhost6.localdomain6",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
];

/// Why a piece of text is not a usable DNS name. Each message quotes the name as written
/// (control characters escaped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("the root `.` is not a name that can be listed")]
    Root,
    #[error(
        "`{name}`: `*` alone would match every name; write `*.example.com` to match the names \
         below a domain"
    )]
    BareWildcard { name: String },
    #[error("`{name}`: `*` is only allowed as the whole first label, as in `*.example.com`")]
    MisplacedWildcard { name: String },
    #[error("`{name}` contains whitespace")]
    Whitespace { name: String },
    #[error("`{name}` contains the control character 0x{byte:02x}")]
    ControlChar { name: String, byte: u8 },
    #[error("`{name}` has an empty label (a leading dot or two dots in a row)")]
    EmptyLabel { name: String },
    #[error("`{name}`: label `{label}` is {len} bytes long (at most 63)")]
    LabelTooLong {
        name: String,
        label: String,
        len: usize,
    },
    #[error("`{name}` is {len} bytes long in wire form (at most 255)")]
    NameTooLong { name: String, len: usize },
    #[error(
        "`{name}`: invalid escape; use `\\.`, `\\\\` or `\\DDD` with DDD a decimal byte from 000 \
         to 255"
    )]
    BadEscape { name: String },
}

/// `text` with control characters made visible, for messages.
fn shown(text: &str) -> String {
    text.escape_debug().to_string()
}

/// Fixed room for one label while it is decoded: labels longer than this are an error, so
/// only their length is still counted.
struct LabelBuf {
    bytes: [u8; MAX_LABEL_LEN],
    len: usize,
}

impl LabelBuf {
    fn push(&mut self, b: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = b;
        }
        self.len += 1;
    }
}

/// Parses a DNS name as written in a policy or list file (see the module documentation).
///
/// Returns the labels, lower-cased, most significant last (`["www", "example", "com"]`), and
/// whether the name had a leading `*.` (which is not among the labels).
pub fn parse_name(text: &str) -> Result<(Vec<Vec<u8>>, bool), NameError> {
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    if text == "." {
        return Err(NameError::Root);
    }
    let (wildcard, rest) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if text == "*" || (wildcard && (rest.is_empty() || rest == ".")) {
        return Err(NameError::BareWildcard { name: shown(text) });
    }
    let b = rest.as_bytes();
    let mut labels: Vec<Vec<u8>> = Vec::with_capacity(4);
    // The root byte, plus the `*` label of a wildcard.
    let mut wire = 1 + if wildcard { 2 } else { 0 };
    let mut i = 0;
    loop {
        if i == b.len() && !labels.is_empty() {
            // A single trailing dot.
            break;
        }
        let start = i;
        let mut label = LabelBuf {
            bytes: [0; MAX_LABEL_LEN],
            len: 0,
        };
        while let Some(&c) = b.get(i) {
            match c {
                b'.' => break,
                b'\\' => i += unescape(rest, i + 1, &mut label, text)?,
                b'*' => return Err(NameError::MisplacedWildcard { name: shown(text) }),
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                    return Err(NameError::Whitespace { name: shown(text) });
                }
                c if c < 0x20 || c == 0x7f => {
                    return Err(NameError::ControlChar {
                        name: shown(text),
                        byte: c,
                    });
                }
                c if c >= 0x80 => {
                    // `i` is always on a character boundary: only whole characters are
                    // stepped over.
                    let ch = rest[i..].chars().next().unwrap_or('\u{fffd}');
                    if ch.is_whitespace() {
                        return Err(NameError::Whitespace { name: shown(text) });
                    }
                    for &byte in &b[i..i + ch.len_utf8()] {
                        label.push(byte);
                    }
                    i += ch.len_utf8() - 1;
                }
                c => label.push(c.to_ascii_lowercase()),
            }
            i += 1;
        }
        if label.len == 0 {
            return Err(NameError::EmptyLabel { name: shown(text) });
        }
        if label.len > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong {
                name: shown(text),
                label: shown(&rest[start..i]),
                len: label.len,
            });
        }
        wire += 1 + label.len;
        labels.push(label.bytes[..label.len].to_vec());
        if i == b.len() {
            break;
        }
        // Past the dot.
        i += 1;
    }
    if wire > MAX_WIRE_LEN {
        return Err(NameError::NameTooLong {
            name: shown(text),
            len: wire,
        });
    }
    Ok((labels, wildcard))
}

/// Decodes the escape whose text starts at byte `at` of `rest` (just past the backslash) into
/// `label`; returns how many bytes of text it used.
fn unescape(rest: &str, at: usize, label: &mut LabelBuf, text: &str) -> Result<usize, NameError> {
    let bad = || NameError::BadEscape { name: shown(text) };
    let b = rest.as_bytes();
    let first = *b.get(at).ok_or_else(bad)?;
    if first.is_ascii_digit() {
        let digits = b.get(at..at + 3).ok_or_else(bad)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let value = digits
            .iter()
            .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
        let byte = u8::try_from(value).map_err(|_| bad())?;
        label.push(byte.to_ascii_lowercase());
        return Ok(3);
    }
    let ch = rest[at..].chars().next().ok_or_else(bad)?;
    if ch.is_ascii() {
        label.push(first.to_ascii_lowercase());
    } else {
        for &byte in &b[at..at + ch.len_utf8()] {
            label.push(byte);
        }
    }
    Ok(ch.len_utf8())
}

/// A list entry from a name as a policy or list file writes it: `*.name` matches the names
/// below `name`; a plain name matches itself, or itself and everything below it when
/// `subdomains` is set. No query-type limit, expiry or entropy bound.
///
/// # Errors
/// When the name is not valid (see [`parse_name`]).
pub fn entry(text: &str, subdomains: bool, line: usize) -> Result<NameEntry, NameError> {
    let (labels, wildcard) = parse_name(text)?;
    let kind = if wildcard {
        NameMatch::Subdomains
    } else if subdomains {
        NameMatch::ApexAndSubdomains
    } else {
        NameMatch::Exact
    };
    Ok(NameEntry {
        labels,
        kind,
        qtypes: Vec::new(),
        expires: None,
        max_entropy_bits: None,
        line,
    })
}

/// Writes labels so that [`parse_name`] reads them back unchanged: `.` and `\` are escaped
/// with a backslash; bytes outside printable ASCII, `*` and `#` as `\DDD`. Upper-case letters
/// are written as they are (and so read back lower-cased).
#[must_use]
pub fn format_name(labels: &[Vec<u8>]) -> String {
    let mut out = String::with_capacity(labels.iter().map(|l| l.len() + 1).sum());
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        for &b in label {
            match b {
                b'.' => out.push_str("\\."),
                b'\\' => out.push_str("\\\\"),
                b'*' | b'#' => push_decimal_escape(&mut out, b),
                0x21..=0x7e => out.push(char::from(b)),
                _ => push_decimal_escape(&mut out, b),
            }
        }
    }
    out
}

fn push_decimal_escape(out: &mut String, b: u8) {
    use fmt::Write as _;
    let _ = write!(out, "\\{b:03}");
}

/// Parses the text of a DNS list file; `file_name` only labels the diagnostics.
///
/// Entries come in file order (several per hosts line, in line order), duplicates kept; each
/// has no query types, expiry or entropy limit, and `line` set to its line in the file.
/// Returns every entry, or a diagnostic for every bad line (capped, see the module
/// documentation).
pub fn parse_list_file(
    text: &str,
    file_name: &str,
    subdomains: bool,
) -> Result<Vec<NameEntry>, Vec<Diagnostic>> {
    let mut parser = ListParser::new(file_name, subdomains, text.len());
    for (index, raw) in text.split('\n').enumerate() {
        parser.line(raw, index + 1);
    }
    parser.finish()
}

/// Reads and parses a DNS list file. A read failure is a single diagnostic at line 0,
/// column 0.
pub fn load_list_file(path: &Path, subdomains: bool) -> Result<Vec<NameEntry>, Vec<Diagnostic>> {
    let file_name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => parse_list_bytes(&bytes, &file_name, subdomains),
        Err(e) => Err(vec![Diagnostic {
            file: file_name,
            line: 0,
            column: 0,
            message: format!("cannot read list file: {e}"),
        }]),
    }
}

/// [`parse_list_file`] for the raw contents of a file.
///
/// A file that is not valid UTF-8 still loads when the invalid bytes are only in comments
/// (old hosts files carry Latin-1 in their headers); a name containing them is reported.
pub fn parse_list_bytes(
    bytes: &[u8],
    file_name: &str,
    subdomains: bool,
) -> Result<Vec<NameEntry>, Vec<Diagnostic>> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return parse_list_file(text, file_name, subdomains);
    }
    let text = String::from_utf8_lossy(bytes);
    let mut parser = ListParser::new(file_name, subdomains, text.len());
    parser.reject_replacement = true;
    for (index, raw) in text.split('\n').enumerate() {
        parser.line(raw, index + 1);
    }
    parser.finish()
}

struct ListParser<'a> {
    file_name: &'a str,
    subdomains: bool,
    /// Set when the text was decoded lossily: a U+FFFD in a name stands for invalid bytes.
    reject_replacement: bool,
    entries: Vec<NameEntry>,
    errors: Vec<Diagnostic>,
    errors_left_out: usize,
}

const fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c)
}

impl<'a> ListParser<'a> {
    fn new(file_name: &'a str, subdomains: bool, text_len: usize) -> Self {
        Self {
            file_name,
            subdomains,
            reject_replacement: false,
            // Lists run 15 to 30 bytes a line; one estimate avoids regrowing the vector many
            // times on million-line files without over-allocating wildly.
            entries: Vec::with_capacity(text_len / 24),
            errors: Vec::new(),
            errors_left_out: 0,
        }
    }

    fn error(&mut self, raw: &str, line: usize, at: usize, message: String) {
        if self.errors.len() < MAX_FILE_DIAGNOSTICS {
            self.errors.push(Diagnostic {
                file: self.file_name.to_owned(),
                line,
                column: raw[..at].chars().count() + 1,
                message,
            });
        } else {
            self.errors_left_out += 1;
        }
    }

    fn finish(mut self) -> Result<Vec<NameEntry>, Vec<Diagnostic>> {
        if self.errors.is_empty() {
            return Ok(self.entries);
        }
        if self.errors_left_out > 0 {
            let n = self.errors_left_out;
            self.errors.push(Diagnostic {
                file: self.file_name.to_owned(),
                line: 0,
                column: 0,
                message: format!(
                    "{n} more error{} in this file not shown",
                    if n == 1 { "" } else { "s" }
                ),
            });
        }
        Err(self.errors)
    }

    /// One line without its `\n`; `raw` may still end in `\r`.
    fn line(&mut self, raw: &str, line: usize) {
        let start = raw.bytes().take_while(|&b| is_blank(b)).count();
        let rest = &raw[start..];
        match rest.as_bytes().first() {
            None | Some(b'#' | b'!') => return,
            Some(b'[') if is_adblock_header(rest) => return,
            _ => {}
        }
        let content = match rest.find('#') {
            Some(hash) => &rest[..hash],
            None => rest,
        };
        let mut tokens = content
            .split(|c: char| c.is_ascii() && is_blank(c as u8))
            .filter(|t| !t.is_empty());
        // `content` starts with a non-blank byte, so there is a first token.
        let Some(first) = tokens.next() else { return };
        let offset = |token: &str| token.as_ptr() as usize - raw.as_ptr() as usize;
        if looks_like_address(first) {
            let mut names = 0;
            for token in tokens {
                names += 1;
                if !HOSTS_BOILERPLATE
                    .iter()
                    .any(|b| b.eq_ignore_ascii_case(token.strip_suffix('.').unwrap_or(token)))
                {
                    self.name(raw, line, offset(token), token, false);
                }
            }
            if names == 0 {
                let msg = format!(
                    "address `{first}` without a name; hosts-file lines are `ADDRESS NAME...`"
                );
                self.error(raw, line, offset(first), msg);
            }
            return;
        }
        if let Some(extra) = tokens.next() {
            let at = offset(extra);
            let end = start
                + content
                    .trim_end_matches(|c: char| c.is_ascii() && is_blank(c as u8))
                    .len();
            let msg = format!(
                "expected one name per line, or `ADDRESS NAME...` as in a hosts file; found \
                 extra text `{}`",
                shown(&raw[at..end])
            );
            self.error(raw, line, at, msg);
            return;
        }
        let at = offset(first);
        if first.starts_with("@@") {
            let msg = "adblock exception rules (`@@`) are not supported; remove the name from \
                       the list instead"
                .to_owned();
            self.error(raw, line, at, msg);
        } else if let Some(body) = first.strip_prefix("||") {
            self.adblock(raw, line, at, first, body);
        } else {
            self.name(raw, line, at, first, false);
        }
    }

    /// `||name^`: the name and everything below it.
    fn adblock(&mut self, raw: &str, line: usize, at: usize, token: &str, body: &str) {
        let problem = if body.contains('$') {
            Some("adblock options (`$...`) are not supported; use `||name^`")
        } else if !body.ends_with('^') {
            Some("adblock rule must end with `^`, as in `||example.com^`")
        } else if body.starts_with("*.") {
            Some("`||*.name^` is not needed: `||name^` already covers every name below `name`")
        } else {
            None
        };
        match problem {
            Some(p) => self.error(raw, line, at, format!("`{}`: {p}", shown(token))),
            None => self.name(raw, line, at + 2, &body[..body.len() - 1], true),
        }
    }

    fn name(&mut self, raw: &str, line: usize, at: usize, text: &str, apex_and_below: bool) {
        if self.reject_replacement && text.contains('\u{fffd}') {
            let msg = format!("`{}` is not valid UTF-8", shown(text));
            self.error(raw, line, at, msg);
            return;
        }
        match entry(text, apex_and_below || self.subdomains, line) {
            Ok(e) => self.entries.push(e),
            Err(e) => self.error(raw, line, at, e.to_string()),
        }
    }
}

/// `[Adblock Plus 2.0]` and similar header lines.
fn is_adblock_header(line: &str) -> bool {
    line.get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("[adblock"))
}

/// Whether a hosts-file line starts with this token: an IPv4 or IPv6 address, the latter
/// possibly with a `%zone`.
fn looks_like_address(token: &str) -> bool {
    let b = token.as_bytes();
    if b.contains(&b':') {
        let addr = token.split_once('%').map_or(token, |(a, _)| a);
        return addr.parse::<IpAddr>().is_ok();
    }
    // Cheap pre-check: most list lines are names, and an IPv4 address is digits and dots.
    b.first().is_some_and(u8::is_ascii_digit)
        && b.iter().all(|c| c.is_ascii_digit() || *c == b'.')
        && token.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fmt::Write as _;

    fn labels(parts: &[&str]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    fn entry(parts: &[&str], kind: NameMatch, line: usize) -> NameEntry {
        NameEntry {
            labels: labels(parts),
            kind,
            qtypes: Vec::new(),
            expires: None,
            max_entropy_bits: None,
            line,
        }
    }

    fn err(text: &str) -> String {
        match parse_name(text) {
            Ok(v) => panic!("{text:?} parsed as {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn plain_names_and_wildcards() {
        assert_eq!(
            parse_name("www.Example.COM"),
            Ok((labels(&["www", "example", "com"]), false))
        );
        assert_eq!(
            parse_name("example.com."),
            Ok((labels(&["example", "com"]), false))
        );
        assert_eq!(
            parse_name("*.example.com"),
            Ok((labels(&["example", "com"]), true))
        );
        assert_eq!(parse_name("*.com."), Ok((labels(&["com"]), true)));
        assert_eq!(parse_name("localhost"), Ok((labels(&["localhost"]), false)));
        assert_eq!(
            parse_name("_dmarc.x-y.0-9"),
            Ok((labels(&["_dmarc", "x-y", "0-9"]), false))
        );
        // Liberal like zone data: punctuation and non-ASCII bytes are kept as they are.
        assert_eq!(
            parse_name("a+b=c!.Bücher"),
            Ok((
                vec![b"a+b=c!".to_vec(), "bücher".as_bytes().to_vec()],
                false
            ))
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(
            parse_name(r"a\.b.example"),
            Ok((labels(&["a.b", "example"]), false))
        );
        assert_eq!(parse_name(r"a\\b"), Ok((labels(&[r"a\b"]), false)));
        assert_eq!(
            parse_name(r"\065\000z\255.x"),
            Ok((vec![vec![b'a', 0, b'z', 255], b"x".to_vec()], false))
        );
        assert_eq!(parse_name(r"\*.x"), Ok((labels(&["*", "x"]), false)));
        assert_eq!(parse_name(r"\ a"), Ok((labels(&[" a"]), false)));
        // An escaped final dot belongs to the label; it is not the trailing dot.
        assert_eq!(parse_name(r"x\."), Ok((labels(&["x."]), false)));
        assert_eq!(parse_name(r"x\.."), Ok((labels(&["x."]), false)));
        for bad in [r"a\", r"a\25", r"a\256", r"a\2x5.b", r"\1"] {
            assert_eq!(
                err(bad),
                format!(
                    "`{}`: invalid escape; use `\\.`, `\\\\` or `\\DDD` with DDD a decimal byte \
                     from 000 to 255",
                    bad.escape_debug()
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(err(""), "empty name");
        assert_eq!(err("."), "the root `.` is not a name that can be listed");
        for bare in ["*", "*.", "*.."] {
            assert_eq!(
                err(bare),
                format!(
                    "`{bare}`: `*` alone would match every name; write `*.example.com` to match \
                     the names below a domain"
                )
            );
        }
        for misplaced in ["a.*.com", "*.*.com", "*foo.com", "ads*.example", "*"] {
            let e = err(misplaced);
            assert!(
                e.contains("`*`") && e.starts_with(&format!("`{misplaced}`")),
                "{misplaced}: {e}"
            );
        }
        assert_eq!(
            err("a..b"),
            "`a..b` has an empty label (a leading dot or two dots in a row)"
        );
        assert_eq!(
            err(".a"),
            "`.a` has an empty label (a leading dot or two dots in a row)"
        );
        assert_eq!(
            err("a.b.."),
            "`a.b..` has an empty label (a leading dot or two dots in a row)"
        );
        assert_eq!(err("a b"), "`a b` contains whitespace");
        assert_eq!(err("a\tb"), "`a\\tb` contains whitespace");
        assert_eq!(err("a\u{a0}b"), "`a\\u{a0}b` contains whitespace");
        assert_eq!(
            err("a\u{1}b"),
            "`a\\u{1}b` contains the control character 0x01"
        );
        assert_eq!(
            err("a\u{7f}"),
            "`a\\u{7f}` contains the control character 0x7f"
        );
        let long = "x".repeat(64);
        assert_eq!(
            err(&format!("a.{long}.com")),
            format!("`a.{long}.com`: label `{long}` is 64 bytes long (at most 63)")
        );
        // 63 bytes is fine, also when written with escapes.
        assert!(parse_name(&"y".repeat(63)).is_ok());
        assert!(parse_name(&format!("{}.x", r"\.".repeat(63))).is_ok());
        assert!(parse_name(&r"\.".repeat(64)).is_err());
    }

    #[test]
    fn wire_length_limit() {
        // Four 63-byte labels: 4 * 64 + 1 = 257 bytes.
        let l63 = "a".repeat(63);
        let too_long = [l63.as_str(); 4].join(".");
        assert_eq!(
            err(&too_long),
            format!("`{too_long}` is 257 bytes long in wire form (at most 255)")
        );
        // 3 * 64 + 62 + 1 = 255: the longest valid name.
        let longest = format!("{l63}.{l63}.{l63}.{}", "b".repeat(61));
        assert_eq!(parse_name(&longest).map(|(l, _)| l.len()), Ok(4));
        assert!(parse_name(&format!("{longest}.")).is_ok());
        // A wildcard needs room for at least one more label below it.
        assert!(parse_name(&format!("*.{longest}")).is_err());
        let shorter = format!("{l63}.{l63}.{l63}.{}", "b".repeat(59));
        assert!(parse_name(&format!("*.{shorter}")).is_ok());
    }

    #[test]
    fn format_escapes_what_needs_it() {
        assert_eq!(
            format_name(&[b"a.b".to_vec(), br"c\d".to_vec(), vec![0, b'*', b'#', 200]]),
            r"a\.b.c\\d.\000\042\035\200"
        );
        assert_eq!(format_name(&labels(&["www", "example"])), "www.example");
    }

    #[test]
    fn list_formats_are_detected_per_line() {
        let text = "# Title: test list\r\n\
                    ! adblock comment\r\n\
                    [Adblock Plus 2.0]\r\n\
                    \r\n\
                    127.0.0.1 localhost\r\n\
                    ::1 localhost ip6-localhost ip6-loopback\n\
                    fe80::1%lo0 localhost\n\
                    255.255.255.255 broadcasthost\n\
                    0.0.0.0 0.0.0.0\n\
                    0.0.0.0 Ads.Example.com # trailing comment\n\
                    127.0.0.1\ta.example   b.example.\n\
                    \ttracker.example\t\n\
                    *.cdn.example\n\
                    ||adblock.example^\n\
                    ||adblock2.example^ ! not a comment mark here, but after # it is\n";
        // Line 15 has extra text: check it separately.
        let (good, bad) = text.split_at(text.rfind("||adblock2").expect("line"));
        assert_eq!(
            parse_list_file(good, "l.txt", false),
            Ok(vec![
                entry(&["ads", "example", "com"], NameMatch::Exact, 10),
                entry(&["a", "example"], NameMatch::Exact, 11),
                entry(&["b", "example"], NameMatch::Exact, 11),
                entry(&["tracker", "example"], NameMatch::Exact, 12),
                entry(&["cdn", "example"], NameMatch::Subdomains, 13),
                entry(&["adblock", "example"], NameMatch::ApexAndSubdomains, 14),
            ])
        );
        let errors = parse_list_file(bad, "l.txt", false).expect_err("extra text");
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "l.txt:1:21: expected one name per line, or `ADDRESS NAME...` as in a hosts file; \
              found extra text `! not a comment mark here, but after`"
            ]
        );
    }

    #[test]
    fn subdomains_flag_widens_plain_names_only() {
        let text = "a.example\n0.0.0.0 b.example\n*.c.example\n||d.example^\n";
        let kinds: Vec<NameMatch> = parse_list_file(text, "l", true)
            .expect("valid")
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                NameMatch::ApexAndSubdomains,
                NameMatch::ApexAndSubdomains,
                NameMatch::Subdomains,
                NameMatch::ApexAndSubdomains
            ]
        );
    }

    #[test]
    fn empty_and_comment_only_files() {
        assert_eq!(parse_list_file("", "e", false), Ok(vec![]));
        assert_eq!(parse_list_file("\n\r\n  \n", "e", false), Ok(vec![]));
        assert_eq!(parse_list_file("# x\n! y", "e", false), Ok(vec![]));
        // A final line without a newline still counts.
        assert_eq!(parse_list_file("a\nb", "e", false).map(|v| v.len()), Ok(2));
    }

    #[test]
    fn every_bad_line_is_reported_with_its_column() {
        let text = "good.example\n\
                    bad..example\n\
                    \u{e9}\u{e9} a.example b.example\n\
                    0.0.0.0\n\
                    0.0.0.0 ok.example x..y\n\
                    @@||allowed.example^\n\
                    ||opt.example^$important\n\
                    ||noanchor.example\n\
                    ||*.star.example^\n\
                    ||bad..example^\n\
                    \x20 a\\\n\
                    *\n";
        let errors = parse_list_file(text, "f.txt", false).expect_err("bad lines");
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "f.txt:2:1: `bad..example` has an empty label (a leading dot or two dots in a \
                 row)",
                "f.txt:3:4: expected one name per line, or `ADDRESS NAME...` as in a hosts file; \
                 found extra text `a.example b.example`",
                "f.txt:4:1: address `0.0.0.0` without a name; hosts-file lines are `ADDRESS \
                 NAME...`",
                "f.txt:5:20: `x..y` has an empty label (a leading dot or two dots in a row)",
                "f.txt:6:1: adblock exception rules (`@@`) are not supported; remove the name \
                 from the list instead",
                "f.txt:7:1: `||opt.example^$important`: adblock options (`$...`) are not \
                 supported; use `||name^`",
                "f.txt:8:1: `||noanchor.example`: adblock rule must end with `^`, as in \
                 `||example.com^`",
                "f.txt:9:1: `||*.star.example^`: `||*.name^` is not needed: `||name^` already \
                 covers every name below `name`",
                "f.txt:10:3: `bad..example` has an empty label (a leading dot or two dots in a \
                 row)",
                "f.txt:11:3: `a\\\\`: invalid escape; use `\\.`, `\\\\` or `\\DDD` with DDD a \
                 decimal byte from 000 to 255",
                "f.txt:12:1: `*`: `*` alone would match every name; write `*.example.com` to \
                 match the names below a domain",
            ]
        );
    }

    #[test]
    fn diagnostics_are_capped() {
        let text = "a..b\n".repeat(250);
        let errors = parse_list_file(&text, "many.txt", false).expect_err("bad");
        assert_eq!(errors.len(), MAX_FILE_DIAGNOSTICS + 1);
        assert_eq!(errors[99].line, 100);
        assert_eq!(
            errors[100],
            Diagnostic {
                file: "many.txt".into(),
                line: 0,
                column: 0,
                message: "150 more errors in this file not shown".into(),
            }
        );
        let errors = parse_list_file(&"a..b\n".repeat(101), "m", false).expect_err("bad");
        assert_eq!(errors[100].message, "1 more error in this file not shown");
        assert_eq!(
            parse_list_file(&"a..b\n".repeat(100), "m", false)
                .expect_err("bad")
                .len(),
            100
        );
    }

    #[test]
    fn load_reads_files_and_reports_read_failures() {
        let dir = std::env::temp_dir().join(format!("palisade-namelist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = dir.join("good.txt");
        std::fs::write(&good, "0.0.0.0 a.example\n").expect("write");
        // Latin-1 in a comment is tolerated; in a name it is reported.
        let latin1 = dir.join("latin1.txt");
        std::fs::write(&latin1, b"# caf\xe9\nb.example\n").expect("write");
        let latin1_name = dir.join("latin1-name.txt");
        std::fs::write(&latin1_name, b"ok.example\ncaf\xe9.example\n").expect("write");
        let results = (
            load_list_file(&good, true),
            load_list_file(&latin1, false),
            load_list_file(&latin1_name, false),
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            results.0,
            Ok(vec![entry(
                &["a", "example"],
                NameMatch::ApexAndSubdomains,
                1
            )])
        );
        assert_eq!(
            results.1,
            Ok(vec![entry(&["b", "example"], NameMatch::Exact, 2)])
        );
        let errors = results.2.expect_err("invalid UTF-8 in a name");
        assert_eq!((errors.len(), errors[0].line, errors[0].column), (1, 2, 1));
        assert_eq!(
            errors[0].message,
            "`caf\u{fffd}.example` is not valid UTF-8"
        );

        let missing = Path::new("/nonexistent/palisade-test/list.txt");
        let errors = load_list_file(missing, false).expect_err("missing");
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].column), (0, 0));
        assert!(
            errors[0].message.starts_with("cannot read list file: "),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn a_million_hosts_lines() {
        let mut text = String::with_capacity(40_000_000);
        text.push_str("# big hosts file\n127.0.0.1 localhost\n");
        for i in 0..1_000_000u32 {
            let _ = writeln!(text, "0.0.0.0 ads{i}.tracker{}.example.com", i % 1000);
        }
        let start = std::time::Instant::now();
        let entries = parse_list_file(&text, "big.hosts", false).expect("valid");
        let elapsed = start.elapsed();
        assert_eq!(entries.len(), 1_000_000);
        assert_eq!(
            entries[7].labels,
            labels(&["ads7", "tracker7", "example", "com"])
        );
        // Timing is printed, not asserted: it depends on the build profile and the machine.
        println!(
            "parsed 1M hosts lines ({} MB) in {elapsed:?} ({})",
            text.len() / 1_000_000,
            if cfg!(debug_assertions) {
                "debug build"
            } else {
                "release build"
            }
        );
    }

    /// Writes a label byte the way a person might: raw when that is possible, or with any
    /// escape that means the same byte, chosen by `how`.
    fn write_byte(out: &mut String, b: u8, how: u8, upper: bool) {
        match b {
            b'.' | b'\\' if how.is_multiple_of(2) => {
                out.push('\\');
                out.push(char::from(b));
            }
            b'a'..=b'z' if how.is_multiple_of(3) => {
                let _ = write!(out, "\\{b:03}");
            }
            b'a'..=b'z' if upper => out.push(char::from(b.to_ascii_uppercase())),
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'+' | b'=' | b'/' => {
                out.push(char::from(b));
            }
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }

    fn label_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(b"abcxyz0189-_".to_vec()),
                1 => prop::sample::select(b".\\*#/+= ".to_vec()),
                1 => any::<u8>().prop_map(|b| b.to_ascii_lowercase()),
            ],
            1..=MAX_LABEL_LEN,
        )
    }

    proptest! {
        #[test]
        fn formatted_names_parse_back(
            names in prop::collection::vec(label_strategy(), 1..=4),
            how in any::<u64>(),
            wildcard in any::<bool>(),
            trailing_dot in any::<bool>(),
        ) {
            let wire: usize = names.iter().map(|l| l.len() + 1).sum::<usize>() + 1
                + if wildcard { 2 } else { 0 };
            prop_assume!(wire <= MAX_WIRE_LEN);
            let mut text = String::new();
            if wildcard {
                text.push_str("*.");
            }
            let mut k = how;
            for (i, label) in names.iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                for &b in label {
                    k = k.rotate_left(7) ^ 0x9e37_79b9;
                    write_byte(&mut text, b, (k & 0xff) as u8, k & 0x100 != 0);
                }
            }
            if trailing_dot {
                text.push('.');
            }
            prop_assert_eq!(parse_name(&text), Ok((names.clone(), wildcard)), "{}", text);
            // The module's own formatter round-trips too.
            prop_assert_eq!(parse_name(&format_name(&names)), Ok((names, false)));
        }
    }
}
