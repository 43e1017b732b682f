//! The detectors: card numbers with a Luhn check, PEM private keys, cloud credentials and the
//! policy's own regular expressions. A match carries its place and a redacted excerpt; the
//! secret itself never leaves this module.

use regex::bytes::{Regex, RegexBuilder};

use super::{Builtin, Dlp, PATTERN_SIZE_LIMIT};

/// A detector's hit in a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// `card`, `private_key`, `cloud_key`, or the custom pattern's name.
    pub detector: String,
    /// What kind of secret, e.g. `aws-access-key-id`, `visa`.
    pub kind: &'static str,
    /// Byte range of the secret in the scanned buffer.
    pub start: usize,
    pub end: usize,
    /// The secret with all but a few characters masked, e.g. `4111********1111`.
    pub excerpt: String,
}

/// The compiled detector set of a policy.
pub struct Detectors {
    builtin: Vec<(Builtin, &'static str, Regex)>,
    custom: Vec<(String, Regex)>,
}

/// The longest secret a built-in detector looks for within one buffer; the stream scanner
/// keeps this much of a stream's tail so a secret split over two calls is still whole once.
pub const MAX_SECRET: usize = 4096;

fn re(s: &str) -> Regex {
    RegexBuilder::new(s)
        .unicode(false)
        .build()
        .expect("built-in pattern compiles")
}

impl Detectors {
    /// Compiles the policy's detectors.
    ///
    /// # Errors
    /// When a custom pattern does not compile (the config check has already refused it, so
    /// this happens only for a policy built by hand).
    pub fn new(p: &Dlp) -> Result<Self, regex::Error> {
        let mut builtin = Vec::new();
        for &b in &p.builtins {
            match b {
                Builtin::Card => builtin.push((
                    b,
                    "card-number",
                    // 13-19 digits, single separators between groups; the Luhn check and the
                    // digit count are checked on each candidate.
                    re(r"(?:^|[^0-9])([0-9](?:[ -]?[0-9]){12,18})(?:[^0-9]|$)"),
                )),
                Builtin::PrivateKey => builtin.push((
                    b,
                    "pem-private-key",
                    re(r"-----BEGIN ((?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY)-----"),
                )),
                Builtin::CloudKey => {
                    builtin.push((
                        b,
                        "aws-access-key-id",
                        re(r"\b((?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16})\b"),
                    ));
                    builtin.push((
                        b,
                        "gcp-service-account-key",
                        re(r#""private_key_id"\s*:\s*"([0-9a-f]{40})""#),
                    ));
                    builtin.push((
                        b,
                        "github-token",
                        re(r"\b(gh[pousr]_[A-Za-z0-9]{36,255})\b"),
                    ));
                    builtin.push((
                        b,
                        "slack-token",
                        re(r"\b(xox[baprs]-[A-Za-z0-9-]{10,72})\b"),
                    ));
                }
            }
        }
        let mut custom = Vec::new();
        for c in &p.patterns {
            custom.push((c.name.clone(), compile_custom(&c.regex)?));
        }
        Ok(Self { builtin, custom })
    }

    /// Every hit in `buf`, in order of position.
    #[must_use]
    pub fn scan(&self, buf: &[u8]) -> Vec<Hit> {
        let mut hits = Vec::new();
        for (b, kind, r) in &self.builtin {
            for c in r.captures_iter(buf) {
                let m = c
                    .get(1)
                    .or_else(|| c.get(0))
                    .expect("group 0 is always there");
                let s = &buf[m.start()..m.end()];
                if *b == Builtin::Card {
                    let digits: Vec<u8> = s.iter().copied().filter(u8::is_ascii_digit).collect();
                    if !(13..=19).contains(&digits.len()) || !luhn(&digits) {
                        continue;
                    }
                    hits.push(Hit {
                        detector: b.name().to_owned(),
                        kind: card_brand(&digits),
                        start: m.start(),
                        end: m.end(),
                        excerpt: redact(s, 4, 4),
                    });
                    continue;
                }
                hits.push(Hit {
                    detector: b.name().to_owned(),
                    kind,
                    start: m.start(),
                    end: m.end(),
                    excerpt: if *b == Builtin::PrivateKey {
                        // The header names the key type and is no secret; the body is.
                        format!(
                            "-----BEGIN {}----- [key body withheld]",
                            String::from_utf8_lossy(s)
                        )
                    } else {
                        redact(s, 4, 2)
                    },
                });
            }
        }
        for (name, r) in &self.custom {
            for m in r.find_iter(buf) {
                if m.is_empty() {
                    continue;
                }
                hits.push(Hit {
                    detector: name.clone(),
                    kind: "custom",
                    start: m.start(),
                    end: m.end(),
                    excerpt: redact(m.as_bytes(), 2, 2),
                });
            }
        }
        hits.sort_by_key(|h| (h.start, h.end));
        hits
    }
}

/// Compiles a custom pattern as the detectors will run it.
///
/// # Errors
/// The regex engine's message when the pattern is invalid or too large.
pub fn compile_custom(s: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(s).size_limit(PATTERN_SIZE_LIMIT).build()
}

/// The Luhn check of a digit string (ASCII digits).
#[must_use]
pub fn luhn(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn card_brand(d: &[u8]) -> &'static str {
    match (d[0], d.get(1).copied().unwrap_or(b'0')) {
        (b'4', _) => "visa",
        (b'5', b'1'..=b'5') | (b'2', _) => "mastercard",
        (b'3', b'4' | b'7') => "amex",
        (b'6', _) => "discover",
        _ => "card-number",
    }
}

/// Keeps at most `head` and `tail` characters (never more than a quarter of the secret each)
/// and masks the rest with `*`.
#[must_use]
pub fn redact(s: &[u8], head: usize, tail: usize) -> String {
    let n = s.len();
    let head = head.min(n / 4);
    let tail = tail.min(n / 4);
    let mut out = String::with_capacity(n);
    for (i, &c) in s.iter().enumerate() {
        let shown = (i < head || i >= n - tail) && c.is_ascii_graphic();
        // Separators stay, so the excerpt keeps the secret's shape.
        if shown || c == b' ' || c == b'-' {
            out.push(char::from(c));
        } else {
            out.push('*');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlp::Pattern;

    fn all() -> Detectors {
        Detectors::new(&Dlp {
            enabled: true,
            builtins: Builtin::ALL.to_vec(),
            patterns: vec![Pattern {
                name: "employee-id".into(),
                regex: r"EMP-[0-9]{6}".into(),
            }],
            ..Dlp::default()
        })
        .unwrap()
    }

    #[test]
    fn cards_need_the_luhn_check() {
        let d = all();
        let h = d.scan(b"card=4111 1111 1111 1111&x=1");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].kind, "visa");
        assert_eq!(h[0].excerpt, "4111 **** **** 1111");
        // One digit off: Luhn fails.
        assert!(d.scan(b"card=4111 1111 1111 1112&x=1").is_empty());
        // A long run of digits is no card.
        assert!(d.scan(b"id=41111111111111111111111").is_empty());
        assert_eq!(d.scan(b"5500-0000-0000-0004").len(), 1);
        assert_eq!(d.scan(b"378282246310005")[0].kind, "amex");
    }

    #[test]
    fn keys_and_tokens() {
        let d = all();
        let h = d.scan(b"aws_access_key_id=AKIAIOSFODNN7EXAMPLE\n");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].kind, "aws-access-key-id");
        assert!(!h[0].excerpt.contains("IOSFODNN7EXAMP"), "{}", h[0].excerpt);
        let pem = b"x\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow...\n";
        assert_eq!(d.scan(pem)[0].kind, "pem-private-key");
        assert!(!d.scan(pem)[0].excerpt.contains("MIIE"));
        let gcp = br#"{"type": "service_account", "private_key_id": "0123456789abcdef0123456789abcdef01234567"}"#;
        assert_eq!(d.scan(gcp)[0].kind, "gcp-service-account-key");
        assert!(!d.scan(gcp)[0].excerpt.contains("89abcdef0123"));
        let emp = d.scan(b"user EMP-123456 logged");
        assert_eq!(emp[0].detector, "employee-id");
        assert_eq!(emp[0].excerpt, "EM*-****56");
        assert!(
            d.scan(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
                .is_empty()
        );
    }

    #[test]
    fn luhn_reference_values() {
        assert!(luhn(b"79927398713"));
        assert!(!luhn(b"79927398710"));
        assert!(luhn(b"4242424242424242"));
    }
}
