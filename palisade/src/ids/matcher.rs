//! The full match of a rule's payload options against one buffer (a packet's payload or one
//! direction of a reassembled stream), with Suricata's semantics for `offset`/`depth`
//! (absolute) and `distance`/`within` (relative to the previous content's match, with
//! backtracking over earlier contents' other occurrences).

use super::rules::{Content, Rule};

/// Most byte comparisons one rule may spend on one buffer; past it the rule does not match
/// and the caller counts it (`budget_exhausted`), like Suricata's recursion limit.
pub const MATCH_BUDGET: u64 = 4_000_000;

/// How a rule's payload options fared on a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Match,
    NoMatch,
    /// [`MATCH_BUDGET`] was spent before an answer.
    Budget,
}

/// Whether every content (in order) and every pcre of `rule` match `buf`.
#[must_use]
pub fn payload_matches(rule: &Rule, buf: &[u8]) -> Outcome {
    let mut budget = MATCH_BUDGET;
    if !rule.contents.is_empty() {
        match contents(&rule.contents, buf, 0, &mut budget) {
            Some(true) => {}
            Some(false) => return Outcome::NoMatch,
            None => return Outcome::Budget,
        }
    }
    if rule.pcre.iter().all(|p| p.regex.is_match(buf)) {
        Outcome::Match
    } else {
        Outcome::NoMatch
    }
}

fn eq(a: u8, b: u8, nocase: bool) -> bool {
    a == b || (nocase && a.eq_ignore_ascii_case(&b))
}

/// Some(matched), or None when the budget ran out.
fn contents(cs: &[Content], buf: &[u8], prev_end: usize, budget: &mut u64) -> Option<bool> {
    let Some(c) = cs.first() else {
        return Some(true);
    };
    let n = c.bytes.len();
    let (start, end) = if c.relative() {
        let distance = i64::from(c.distance.unwrap_or(0));
        let base = prev_end as i64 + distance;
        let end = match c.within {
            Some(w) => base + i64::from(w),
            None => buf.len() as i64,
        };
        (
            base.max(0) as usize,
            end.clamp(0, buf.len() as i64) as usize,
        )
    } else {
        let start = c.offset.unwrap_or(0) as usize;
        let end = match c.depth {
            Some(d) => start.saturating_add(d as usize),
            None => buf.len(),
        };
        (start, end.min(buf.len()))
    };
    if end < start || end - start < n {
        return Some(false);
    }
    for p in start..=end - n {
        let cost = n as u64;
        if *budget < cost {
            return None;
        }
        *budget -= cost;
        if buf[p..p + n]
            .iter()
            .zip(&c.bytes)
            .all(|(&a, &b)| eq(a, b, c.nocase))
        {
            match contents(&cs[1..], buf, p + n, budget) {
                Some(true) => return Some(true),
                Some(false) => {}
                None => return None,
            }
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::rules::{Vars, parse};

    fn m(opts: &str, buf: &[u8]) -> bool {
        let r = parse(
            &format!("alert tcp any any -> any any ({opts} sid:1;)"),
            "t",
            &Vars::default(),
        )
        .unwrap()
        .remove(0);
        payload_matches(&r, buf) == Outcome::Match
    }

    #[test]
    fn offset_and_depth_bound_the_absolute_window() {
        assert!(m(r#"content:"GET"; depth:3;"#, b"GET /"));
        assert!(!m(r#"content:"GET"; depth:3;"#, b" GET /"));
        assert!(m(r#"content:"GET"; offset:1; depth:3;"#, b" GET /"));
        assert!(!m(r#"content:"GET"; offset:2;"#, b" GET /"));
        assert!(m(r#"content:"get"; nocase; depth:3;"#, b"GeT /"));
        assert!(!m(r#"content:"get"; depth:3;"#, b"GeT /"));
    }

    #[test]
    fn distance_and_within_are_relative_and_backtrack() {
        // The first "a" is followed by "b" too far; the second occurrence works.
        assert!(m(
            r#"content:"a"; content:"b"; distance:0; within:2;"#,
            b"a....ab"
        ));
        assert!(!m(
            r#"content:"a"; content:"b"; distance:0; within:2;"#,
            b"a....a..b"
        ));
        assert!(m(r#"content:"a"; content:"b"; distance:2;"#, b"a..b"));
        assert!(!m(r#"content:"a"; content:"b"; distance:3;"#, b"a..b"));
        // within counts from the previous end plus the distance.
        assert!(m(
            r#"content:"a"; content:"bc"; distance:1; within:3;"#,
            b"a.xbc"
        ));
        assert!(!m(
            r#"content:"a"; content:"bc"; distance:1; within:2;"#,
            b"a.xbc"
        ));
        // A negative distance looks back.
        assert!(m(
            r#"content:"bc"; content:"ab"; distance:-3; within:2;"#,
            b"abc"
        ));
    }

    #[test]
    fn hex_contents_and_pcre() {
        assert!(m(r#"content:"|0d 0a|Host|3a|";"#, b"x\r\nHost: y"));
        assert!(m(r#"pcre:"/^user\s+root$/mi";"#, b"x\nUSER  root\ny"));
        assert!(!m(r#"pcre:"/^user\s+root$/i";"#, b"x\nUSER  root\ny"));
    }
}
