//! Rule files in a Suricata-compatible subset (see docs/design/ids.md for the grammar). Every
//! keyword outside the subset is refused with its file, line and name.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

/// `alert` reports; `drop` reports and cuts the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Alert,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Ip,
}

impl Proto {
    /// Whether a packet of IP protocol `p` is of this rule protocol.
    #[must_use]
    pub fn covers(self, p: u8) -> bool {
        match self {
            Self::Tcp => p == 6,
            Self::Udp => p == 17,
            Self::Icmp => p == 1 || p == 58,
            Self::Ip => true,
        }
    }
}

/// One CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An address set: `any`, or included minus excluded CIDRs.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AddrSet {
    /// Empty: every address (before exclusions).
    pub include: Vec<Cidr>,
    pub exclude: Vec<Cidr>,
}

impl AddrSet {
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        (self.include.is_empty() || self.include.iter().any(|c| c.contains(ip)))
            && !self.exclude.iter().any(|c| c.contains(ip))
    }
}

/// A port set: `any`, or included minus excluded ranges (inclusive).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PortSet {
    pub include: Vec<(u16, u16)>,
    pub exclude: Vec<(u16, u16)>,
}

impl PortSet {
    #[must_use]
    pub fn contains(&self, p: u16) -> bool {
        (self.include.is_empty() || self.include.iter().any(|&(a, b)| a <= p && p <= b))
            && !self.exclude.iter().any(|&(a, b)| a <= p && p <= b)
    }

    #[must_use]
    pub fn is_any(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// One `content` with its modifiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content {
    pub bytes: Vec<u8>,
    pub nocase: bool,
    pub offset: Option<u32>,
    pub depth: Option<u32>,
    pub distance: Option<i32>,
    pub within: Option<u32>,
}

impl Content {
    /// Relative to the previous content's match (`distance` or `within` given).
    #[must_use]
    pub fn relative(&self) -> bool {
        self.distance.is_some() || self.within.is_some()
    }
}

/// `flow:` settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowOpt {
    pub established: bool,
    /// Some(true): to_server / from_client; Some(false): to_client / from_server.
    pub to_server: Option<bool>,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub action: Action,
    pub proto: Proto,
    pub src: AddrSet,
    pub src_ports: PortSet,
    pub dst: AddrSet,
    pub dst_ports: PortSet,
    /// `<>`: either direction.
    pub bidirectional: bool,
    pub contents: Vec<Content>,
    pub pcre: Vec<Pcre>,
    pub flow: FlowOpt,
    pub sid: u32,
    pub rev: u32,
    pub msg: String,
    pub classtype: Option<String>,
    /// Where the rule was read: `file:line`.
    pub origin: String,
}

/// A `pcre` option compiled for the `regex` crate (bytes, no Unicode).
#[derive(Clone, Debug)]
pub struct Pcre {
    pub source: String,
    pub regex: regex::bytes::Regex,
}

/// A refused rule: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

impl std::error::Error for RuleError {}

/// Address variables (`$HOME_NET`): Suricata's defaults unless set.
#[derive(Clone, Debug)]
pub struct Vars {
    pub addresses: BTreeMap<String, String>,
    pub ports: BTreeMap<String, String>,
}

impl Default for Vars {
    fn default() -> Self {
        let mut addresses = BTreeMap::new();
        addresses.insert(
            "HOME_NET".into(),
            "[192.168.0.0/16,10.0.0.0/8,172.16.0.0/12]".into(),
        );
        addresses.insert("EXTERNAL_NET".into(), "!$HOME_NET".into());
        let mut ports = BTreeMap::new();
        ports.insert("HTTP_PORTS".into(), "80".into());
        Self { addresses, ports }
    }
}

/// Largest number of rules in one set.
pub const MAX_RULES: usize = 10_000;
/// Largest number of contents in one rule.
pub const MAX_CONTENTS: usize = 16;

/// Parses the rule file at `path`.
pub fn load_file(path: &Path, vars: &Vars) -> Result<Vec<Rule>, RuleError> {
    let text = std::fs::read_to_string(path).map_err(|e| RuleError {
        file: path.display().to_string(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, &path.display().to_string(), vars)
}

/// Parses rule text; `file` names it in errors. Comments (`#`) and blank lines are skipped, a
/// trailing `\` continues a rule on the next line.
pub fn parse(text: &str, file: &str, vars: &Vars) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::new();
    let mut sids = BTreeMap::new();
    let mut pending = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if pending.is_empty() {
            start = line;
        }
        if let Some(cont) = trimmed.strip_suffix('\\') {
            pending.push_str(cont);
            continue;
        }
        pending.push_str(trimmed);
        let err = |message: String| RuleError {
            file: file.to_string(),
            line: start,
            message,
        };
        let rule = parse_rule(&pending, vars, &format!("{file}:{start}")).map_err(err)?;
        if let Some(prev) = sids.insert(rule.sid, start) {
            return Err(err(format!(
                "sid {} is already used by the rule at line {prev}",
                rule.sid
            )));
        }
        if rules.len() >= MAX_RULES {
            return Err(err(format!("more than {MAX_RULES} rules")));
        }
        rules.push(rule);
        pending.clear();
    }
    if !pending.is_empty() {
        return Err(RuleError {
            file: file.to_string(),
            line: start,
            message: "the rule ends with a line continuation".into(),
        });
    }
    Ok(rules)
}

fn parse_rule(text: &str, vars: &Vars, origin: &str) -> Result<Rule, String> {
    let open = text
        .find('(')
        .ok_or("a rule needs options in parentheses")?;
    if !text.ends_with(')') {
        return Err("a rule must end with ')'".into());
    }
    let header: Vec<&str> = text[..open].split_whitespace().collect();
    if header.len() != 7 {
        return Err(format!(
            "the header needs 7 fields (action proto src sport dir dst dport), found {}",
            header.len()
        ));
    }
    let action = match header[0] {
        "alert" => Action::Alert,
        "drop" => Action::Drop,
        other => return Err(format!("unsupported action '{other}'")),
    };
    let proto = match header[1] {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "icmp" => Proto::Icmp,
        "ip" => Proto::Ip,
        other => return Err(format!("unsupported protocol '{other}'")),
    };
    let src = parse_addrs(header[2], vars, 0)?;
    let src_ports = parse_ports(header[3], vars, 0)?;
    let bidirectional = match header[4] {
        "->" => false,
        "<>" => true,
        other => return Err(format!("unsupported direction '{other}'")),
    };
    let dst = parse_addrs(header[5], vars, 0)?;
    let dst_ports = parse_ports(header[6], vars, 0)?;
    if matches!(proto, Proto::Icmp | Proto::Ip) && (!src_ports.is_any() || !dst_ports.is_any()) {
        return Err(format!("ports need tcp or udp, not '{}'", header[1]));
    }

    let mut rule = Rule {
        action,
        proto,
        src,
        src_ports,
        dst,
        dst_ports,
        bidirectional,
        contents: Vec::new(),
        pcre: Vec::new(),
        flow: FlowOpt::default(),
        sid: 0,
        rev: 0,
        msg: String::new(),
        classtype: None,
        origin: origin.to_string(),
    };
    let mut has_sid = false;
    for (key, value) in split_options(&text[open + 1..text.len() - 1])? {
        let need = |v: &Option<String>| -> Result<String, String> {
            v.clone()
                .ok_or_else(|| format!("keyword '{key}' needs a value"))
        };
        let last = |rule: &mut Rule| -> Result<usize, String> {
            if rule.contents.is_empty() {
                Err(format!("'{key}' must follow a content"))
            } else {
                Ok(rule.contents.len() - 1)
            }
        };
        match key.as_str() {
            "msg" => rule.msg = unquote(&need(&value)?)?,
            "sid" => {
                rule.sid = parse_num(&need(&value)?, &key)?;
                has_sid = true;
            }
            "rev" => rule.rev = parse_num(&need(&value)?, &key)?,
            "classtype" => rule.classtype = Some(need(&value)?.trim().to_string()),
            "reference" | "metadata" => {}
            "content" => {
                let v = need(&value)?;
                if v.trim_start().starts_with('!') {
                    return Err("negated content is not supported".into());
                }
                let bytes = parse_content(&unquote(&v)?)?;
                if bytes.is_empty() {
                    return Err("empty content".into());
                }
                if rule.contents.len() >= MAX_CONTENTS {
                    return Err(format!("more than {MAX_CONTENTS} contents"));
                }
                rule.contents.push(Content {
                    bytes,
                    nocase: false,
                    offset: None,
                    depth: None,
                    distance: None,
                    within: None,
                });
            }
            "nocase" => {
                if value.is_some() {
                    return Err("'nocase' takes no value".into());
                }
                let i = last(&mut rule)?;
                rule.contents[i].nocase = true;
            }
            "offset" | "depth" | "distance" | "within" => {
                let v = need(&value)?;
                let i = last(&mut rule)?;
                let c = &mut rule.contents[i];
                match key.as_str() {
                    "offset" => c.offset = Some(parse_num(&v, &key)?),
                    "depth" => {
                        let d: u32 = parse_num(&v, &key)?;
                        if d == 0 {
                            return Err("'depth' must be at least 1".into());
                        }
                        c.depth = Some(d);
                    }
                    "distance" => {
                        c.distance = Some(
                            v.trim()
                                .parse()
                                .map_err(|_| format!("'distance' needs a number, not '{v}'"))?,
                        );
                    }
                    _ => c.within = Some(parse_num(&v, &key)?),
                }
                if (c.offset.is_some() || c.depth.is_some()) && c.relative() {
                    return Err("a content cannot mix offset/depth with distance/within".into());
                }
                if let Some(w) = c.within
                    && (w as usize) < c.bytes.len()
                {
                    return Err(format!(
                        "'within' {w} is shorter than its content ({} bytes)",
                        c.bytes.len()
                    ));
                }
                if let Some(d) = c.depth
                    && (d as usize) < c.bytes.len()
                {
                    return Err(format!(
                        "'depth' {d} is shorter than its content ({} bytes)",
                        c.bytes.len()
                    ));
                }
            }
            "pcre" => rule.pcre.push(parse_pcre(&need(&value)?)?),
            "flow" => {
                for part in need(&value)?.split(',') {
                    match part.trim() {
                        "established" => rule.flow.established = true,
                        "to_server" | "from_client" => rule.flow.to_server = Some(true),
                        "to_client" | "from_server" => rule.flow.to_server = Some(false),
                        other => return Err(format!("unsupported flow option '{other}'")),
                    }
                }
            }
            other => return Err(format!("unsupported keyword '{other}'")),
        }
    }
    if !has_sid {
        return Err("a rule needs a sid".into());
    }
    if rule.proto != Proto::Tcp && rule.flow.established {
        return Err("flow:established is supported for tcp rules only".into());
    }
    Ok(rule)
}

/// Splits `k:v; k; k:"a;b";` into (key, value) pairs, honouring quotes and `\` escapes.
fn split_options(body: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for ch in body.chars() {
        if escaped {
            cur.push(ch);
            escaped = false;
            continue;
        }
        match ch {
            '\\' => {
                cur.push(ch);
                escaped = true;
            }
            '"' => {
                cur.push(ch);
                quoted = !quoted;
            }
            ';' if !quoted => {
                push_option(&mut out, &cur)?;
                cur.clear();
            }
            _ => cur.push(ch),
        }
    }
    if quoted {
        return Err("unterminated quote in the options".into());
    }
    if !cur.trim().is_empty() {
        return Err(format!("option '{}' is not ended by ';'", cur.trim()));
    }
    Ok(out)
}

fn push_option(out: &mut Vec<(String, Option<String>)>, text: &str) -> Result<(), String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(());
    }
    let (k, v) = match text.find(':') {
        Some(i) => (text[..i].trim(), Some(text[i + 1..].trim().to_string())),
        None => (text, None),
    };
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err(format!("malformed option '{text}'"));
    }
    out.push((k.to_string(), v));
    Ok(())
}

fn unquote(v: &str) -> Result<String, String> {
    let v = v.trim();
    let inner = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(|| format!("expected a quoted string, found {v}"))?;
    let mut out = String::new();
    let mut escaped = false;
    for ch in inner.chars() {
        if escaped {
            out.push(ch);
            escaped = false;
        } else if ch == '\\' {
            escaped = true;
        } else {
            out.push(ch);
        }
    }
    Ok(out)
}

fn parse_num<T: std::str::FromStr>(v: &str, key: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("'{key}' needs a non-negative number, not '{}'", v.trim()))
}

/// `abc|0d 0a|def` to bytes.
fn parse_content(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut parts = s.split('|');
    let mut hex = false;
    let mut count = 0;
    for part in parts.by_ref() {
        count += 1;
        if hex {
            let digits: String = part.chars().filter(|c| !c.is_whitespace()).collect();
            if !digits.len().is_multiple_of(2) {
                return Err(format!("odd number of hex digits in |{part}|"));
            }
            for i in (0..digits.len()).step_by(2) {
                out.push(
                    u8::from_str_radix(&digits[i..i + 2], 16)
                        .map_err(|_| format!("bad hex byte in |{part}|"))?,
                );
            }
        } else {
            out.extend_from_slice(part.as_bytes());
        }
        hex = !hex;
    }
    if count % 2 == 0 {
        return Err("unterminated |hex| in content".into());
    }
    Ok(out)
}

fn parse_pcre(v: &str) -> Result<Pcre, String> {
    // The pattern keeps its backslashes (they are the regex's escapes).
    let v = v.trim();
    let s = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(|| format!("expected a quoted string, found {v}"))?
        .to_string();
    if s.starts_with('!') {
        return Err("negated pcre is not supported".into());
    }
    let body = s
        .strip_prefix('/')
        .ok_or("pcre must be written /regex/flags")?;
    let end = body.rfind('/').ok_or("pcre must be written /regex/flags")?;
    let (pattern, flags) = (&body[..end], &body[end + 1..]);
    let mut prefix = String::from("(?");
    for f in flags.chars() {
        match f {
            'i' => prefix.push('i'),
            's' => prefix.push('s'),
            'm' => prefix.push('m'),
            'x' => prefix.push('x'),
            other => return Err(format!("unsupported pcre flag '{other}'")),
        }
    }
    prefix.push_str("-u)");
    let regex = regex::bytes::RegexBuilder::new(&format!("{prefix}{pattern}"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("pcre /{pattern}/ is outside the supported syntax: {e}"))?;
    Ok(Pcre { source: s, regex })
}

const MAX_VAR_DEPTH: usize = 8;

fn parse_addrs(s: &str, vars: &Vars, depth: usize) -> Result<AddrSet, String> {
    let mut set = AddrSet::default();
    add_addrs(&mut set, s, vars, depth, false)?;
    Ok(set)
}

fn add_addrs(
    set: &mut AddrSet,
    s: &str,
    vars: &Vars,
    depth: usize,
    negated: bool,
) -> Result<(), String> {
    if depth > MAX_VAR_DEPTH {
        return Err(format!("address variables nest too deep at '{s}'"));
    }
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('!') {
        return add_addrs(set, rest, vars, depth + 1, !negated);
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        for item in split_list(inner)? {
            add_addrs(set, &item, vars, depth + 1, negated)?;
        }
        return Ok(());
    }
    if let Some(name) = s.strip_prefix('$') {
        let value = vars
            .addresses
            .get(name)
            .ok_or_else(|| format!("unknown address variable '${name}'"))?;
        return add_addrs(set, value, vars, depth + 1, negated);
    }
    if s == "any" {
        if negated {
            return Err("'!any' matches nothing".into());
        }
        return Ok(());
    }
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let addr: IpAddr = ip.parse().map_err(|_| format!("bad address '{s}'"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("bad prefix length in '{s}'"))?,
        None => max,
    };
    let cidr = Cidr { addr, len };
    if negated {
        set.exclude.push(cidr);
    } else {
        set.include.push(cidr);
    }
    Ok(())
}

fn parse_ports(s: &str, vars: &Vars, depth: usize) -> Result<PortSet, String> {
    let mut set = PortSet::default();
    add_ports(&mut set, s, vars, depth, false)?;
    Ok(set)
}

fn add_ports(
    set: &mut PortSet,
    s: &str,
    vars: &Vars,
    depth: usize,
    negated: bool,
) -> Result<(), String> {
    if depth > MAX_VAR_DEPTH {
        return Err(format!("port variables nest too deep at '{s}'"));
    }
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('!') {
        return add_ports(set, rest, vars, depth + 1, !negated);
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        for item in split_list(inner)? {
            add_ports(set, &item, vars, depth + 1, negated)?;
        }
        return Ok(());
    }
    if let Some(name) = s.strip_prefix('$') {
        let value = vars
            .ports
            .get(name)
            .ok_or_else(|| format!("unknown port variable '${name}'"))?;
        return add_ports(set, value, vars, depth + 1, negated);
    }
    if s == "any" {
        if negated {
            return Err("'!any' matches nothing".into());
        }
        return Ok(());
    }
    let port = |p: &str| -> Result<u16, String> {
        p.parse::<u16>().map_err(|_| format!("bad port '{s}'"))
    };
    let range = match s.split_once(':') {
        Some((a, b)) => (
            if a.is_empty() { 0 } else { port(a)? },
            if b.is_empty() { u16::MAX } else { port(b)? },
        ),
        None => (port(s)?, port(s)?),
    };
    if range.0 > range.1 {
        return Err(format!("empty port range '{s}'"));
    }
    if negated {
        set.exclude.push(range);
    } else {
        set.include.push(range);
    }
    Ok(())
}

/// Splits a bracketed list at top-level commas.
fn split_list(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!("unbalanced brackets in '[{s}]'"));
        }
        cur.push(ch);
    }
    if depth != 0 {
        return Err(format!("unbalanced brackets in '[{s}]'"));
    }
    out.push(cur);
    if out.iter().any(|i| i.trim().is_empty()) {
        return Err(format!("empty item in '[{s}]'"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Rule, RuleError> {
        parse(text, "t.rules", &Vars::default()).map(|mut v| v.remove(0))
    }

    #[test]
    fn a_full_rule_parses() {
        let r = one(r#"drop tcp [10.0.0.0/8,!10.1.0.0/16] any -> $HOME_NET [80,8000:8080] (msg:"x; y"; flow:established,to_server; content:"GET"; depth:3; content:"|2f 61|dm"; nocase; distance:0; within:20; pcre:"/adm[i]n/i"; classtype:web-application-attack; sid:7; rev:2;)"#).unwrap();
        assert_eq!(r.action, Action::Drop);
        assert_eq!(r.msg, "x; y");
        assert_eq!(r.sid, 7);
        assert_eq!(r.rev, 2);
        assert_eq!(r.contents[1].bytes, b"/adm");
        assert!(r.contents[1].nocase);
        assert_eq!(r.contents[1].within, Some(20));
        assert!(r.flow.established && r.flow.to_server == Some(true));
        assert!(r.src.contains("10.2.0.1".parse().unwrap()));
        assert!(!r.src.contains("10.1.0.1".parse().unwrap()));
        assert!(r.dst_ports.contains(8080) && !r.dst_ports.contains(8081));
        assert!(r.dst.contains("192.168.1.1".parse().unwrap()));
        assert!(r.pcre[0].regex.is_match(b"ADMIN"));
    }

    #[test]
    fn unsupported_keywords_are_refused_with_their_line() {
        let e = parse(
            "# c\n\nalert tcp any any -> any any (msg:\"a\"; sid:1;)\nalert tcp any any -> any any (http.uri; content:\"a\"; sid:2;)\n",
            "f.rules",
            &Vars::default(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "f.rules:4: unsupported keyword 'http.uri'");
        let e =
            one("alert tcp any any -> any any (content:\"a\"; fast_pattern; sid:2;)").unwrap_err();
        assert!(e.to_string().contains("'fast_pattern'"), "{e}");
        let e = one("pass tcp any any -> any any (sid:2;)").unwrap_err();
        assert!(e.to_string().contains("unsupported action 'pass'"), "{e}");
        let e = one("alert tcp any any -> any any (pcre:\"/a/R\"; sid:2;)").unwrap_err();
        assert!(e.to_string().contains("pcre flag 'R'"), "{e}");
        let e = one("alert tcp any any -> any any (pcre:\"/(?<=a)b/\"; sid:2;)").unwrap_err();
        assert!(e.to_string().contains("supported syntax"), "{e}");
        let e = one("alert tcp any any -> any any (nocase; sid:2;)").unwrap_err();
        assert!(e.to_string().contains("must follow a content"), "{e}");
        let e = one("alert tcp any any -> any any (content:\"a\"; sid:2)").unwrap_err();
        assert!(e.to_string().contains("not ended"), "{e}");
    }

    #[test]
    fn duplicate_sids_are_refused() {
        let e = parse(
            "alert tcp any any -> any any (sid:1;)\nalert udp any any -> any any (sid:1;)\n",
            "f",
            &Vars::default(),
        )
        .unwrap_err();
        assert_eq!(e.line, 2);
    }
}
