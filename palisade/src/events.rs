//! Decoding and printing the events the kernel programs send over the ring buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use palisade_common::{
    event::{FLAG_INTEL_TAGGED, FirewallEvent, KIND_FIREWALL},
    firewall::DEFAULT_SLOT,
    packet::FAMILY_V4,
    reason,
};
use serde::Serialize;

/// An event in the form users see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub kind: &'static str,
    pub timestamp_ns: u64,
    pub verdict: &'static str,
    pub reason: &'static str,
    /// Rule name (or `#index`), `default`, or absent when no rule was involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub generation: u32,
    pub ifindex: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub len: u32,
    /// The source was tagged by an `[intel]` feed with `action = "tag"` (`INTEL_TAGGED`)
    /// when the kernel wrote the event; absent from JSON when not.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub intel_tagged: bool,
}

/// Decodes one ring-buffer record. `rule_name` turns an evaluation index into a name.
#[must_use]
pub fn decode(bytes: &[u8], rule_name: &dyn Fn(u32) -> Option<String>) -> Option<Event> {
    if bytes.len() < size_of::<FirewallEvent>() {
        return None;
    }
    // SAFETY: FirewallEvent is plain old data and the length was checked.
    let e: FirewallEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if e.kind != KIND_FIREWALL {
        return None;
    }
    let addr = |a: [u8; 16]| -> Option<IpAddr> {
        match e.family {
            0 => None,
            FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))),
            _ => Some(IpAddr::V6(Ipv6Addr::from(a))),
        }
    };
    Some(Event {
        kind: "firewall",
        timestamp_ns: e.timestamp_ns,
        verdict: match e.action {
            1 => "drop",
            4 => "redirect",
            _ => "pass",
        },
        reason: reason::name(e.reason),
        rule: match e.rule {
            u32::MAX => None,
            DEFAULT_SLOT => Some("default".to_string()),
            r => Some(rule_name(r).unwrap_or_else(|| format!("#{r}"))),
        },
        generation: e.generation,
        ifindex: e.ifindex,
        src: addr(e.src),
        dst: addr(e.dst),
        proto: e.proto,
        sport: e.sport,
        dport: e.dport,
        len: e.packet_len,
        intel_tagged: e.flags & FLAG_INTEL_TAGGED != 0,
    })
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} reason={}", self.kind, self.verdict, self.reason)?;
        if let Some(r) = &self.rule {
            write!(f, " rule={r}")?;
        }
        if let (Some(s), Some(d)) = (self.src, self.dst) {
            let proto = match self.proto {
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                1 => "icmp".to_string(),
                58 => "icmpv6".to_string(),
                n => format!("proto-{n}"),
            };
            if matches!(self.proto, 1 | 58) {
                let [t, c] = self.dport.to_be_bytes();
                write!(f, " {proto} {s} -> {d} type={t} code={c}")?;
            } else {
                write!(f, " {proto} {s}:{} -> {d}:{}", self.sport, self.dport)?;
            }
        }
        write!(f, " len={} ifindex={}", self.len, self.ifindex)?;
        if self.intel_tagged {
            f.write_str(" intel=tagged")?;
        }
        Ok(())
    }
}

/// A DNS decision in the form users see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsDecision {
    pub kind: &'static str,
    pub timestamp_ns: u64,
    /// `ingress` (XDP) or `egress` (cgroup).
    pub scope: &'static str,
    /// `allow`, `drop`, `nxdomain` or `audit` (would have been blocked).
    pub verdict: &'static str,
    pub reason: &'static str,
    /// The question name, dotted; bytes outside printable ASCII and dots inside labels are
    /// escaped as in zone files.
    pub name: String,
    pub qtype: String,
    pub client: Option<IpAddr>,
    pub client_port: u16,
    pub tcp: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The sending thread's command name, which the process chooses: bytes outside
    /// printable ASCII, spaces and backslashes are escaped as `\xNN` (see [`escape_bytes`]),
    /// so it can neither break a line of text output nor pass for another field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    pub generation: u32,
    /// Over the event budget: `first` (the name's first query in the summary interval) or
    /// `sample`; absent within the budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<&'static str>,
    /// The client was tagged by an `[intel]` feed with `action = "tag"`; absent from JSON
    /// when not.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub intel_tagged: bool,
    /// The name's DGA score (`0..=1000`, see [`crate::dga`]) when `[dns.dga]` is on; absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dga_score: Option<u16>,
    /// `alert` or `tag` when the name is listed by an `[intel]` feed with that action (the
    /// query passed); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intel: Option<&'static str>,
    /// The `[intel]` feed whose list matched (filled in by the daemon).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
}

/// Decodes a DNS event record.
#[must_use]
pub fn decode_dns(bytes: &[u8]) -> Option<DnsDecision> {
    use palisade_common::{
        dns::maps::SCOPE_EGRESS,
        event::{DnsEvent, KIND_DNS, dns_verdict_name},
    };
    if bytes.len() < size_of::<DnsEvent>() {
        return None;
    }
    // SAFETY: DnsEvent is plain old data and the length was checked.
    let e: DnsEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if e.kind != KIND_DNS {
        return None;
    }
    let egress = e.scope == SCOPE_EGRESS;
    let client = match e.family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
            e.client[12],
            e.client[13],
            e.client[14],
            e.client[15],
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(e.client))),
        _ => None,
    };
    let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
    Some(DnsDecision {
        kind: "dns",
        timestamp_ns: e.timestamp_ns,
        scope: if egress { "egress" } else { "ingress" },
        verdict: dns_verdict_name(e.verdict),
        reason: reason::name(e.reason),
        name: wire_name_to_text(&e.name[..usize::from(e.name_len).min(e.name.len())]),
        qtype: qtype_name(e.qtype),
        client,
        client_port: e.client_port,
        tcp: e.tcp != 0,
        list: (e.list != u16::MAX).then_some(e.list),
        pid: egress.then_some(e.pid),
        uid: egress.then_some(e.uid),
        comm: egress.then(|| escape_bytes(&e.comm[..comm_len])),
        cgroup_id: egress.then_some(e.cgroup_id),
        generation: e.generation,
        sent: match e.sent {
            palisade_common::event::DNS_SENT_FIRST => Some("first"),
            palisade_common::event::DNS_SENT_SAMPLE => Some("sample"),
            _ => None,
        },
        intel_tagged: e.flags & FLAG_INTEL_TAGGED != 0,
        dga_score: None,
        intel: if e.flags & palisade_common::event::FLAG_INTEL_NAME_ALERT != 0 {
            Some("alert")
        } else if e.flags & palisade_common::event::FLAG_INTEL_NAME_TAG != 0 {
            Some("tag")
        } else {
            None
        },
        feed: None,
    })
}

/// Text for bytes a sender chose (a command name): printable ASCII but space and backslash
/// as is, every other byte as `\xNN`. The result is one printable, space-free word, so a
/// line of text output stays one line with the fields it claims, and the escape is
/// reversible.
#[must_use]
pub fn escape_bytes(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x21..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// A wire-format name as zone-file text (`www.example.com.`; `.` for the root).
#[must_use]
pub fn wire_name_to_text(wire: &[u8]) -> String {
    use std::fmt::Write as _;
    // The text is as long as the wire name when nothing needs escaping: one allocation.
    let mut out = String::with_capacity(wire.len().max(1));
    let mut i = 0;
    while let Some(&len) = wire.get(i) {
        if len == 0 || len & 0xc0 != 0 {
            break;
        }
        let end = (i + 1 + usize::from(len)).min(wire.len());
        for &b in &wire[i + 1..end] {
            match b {
                b'.' | b'\\' => {
                    out.push('\\');
                    out.push(char::from(b));
                }
                0x21..=0x7e => out.push(char::from(b)),
                _ => {
                    let _ = write!(out, "\\{b:03}");
                }
            }
        }
        out.push('.');
        i = end;
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// A query type's mnemonic, or `TYPEnnn`.
#[must_use]
pub fn qtype_name(q: u16) -> String {
    match q {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        64 => "SVCB".into(),
        65 => "HTTPS".into(),
        255 => "ANY".into(),
        n => format!("TYPE{n}"),
    }
}

impl std::fmt::Display for DnsDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dns {} {} reason={} {} {}",
            self.scope, self.verdict, self.reason, self.name, self.qtype
        )?;
        if let Some(c) = self.client {
            write!(f, " client={c}:{}", self.client_port)?;
        }
        if self.tcp {
            f.write_str(" tcp")?;
        }
        if let (Some(pid), Some(uid), Some(comm)) = (self.pid, self.uid, &self.comm) {
            write!(f, " pid={pid} uid={uid} comm={comm}")?;
        }
        if let Some(cg) = self.cgroup_id {
            write!(f, " cgroup={cg}")?;
        }
        if let Some(sent) = self.sent {
            write!(f, " sent={sent}")?;
        }
        if self.intel_tagged {
            f.write_str(" intel=tagged")?;
        }
        if let Some(s) = self.dga_score {
            write!(f, " dga={s}")?;
        }
        if let Some(i) = self.intel {
            write!(f, " intel={i}")?;
        }
        if let Some(feed) = &self.feed {
            write!(f, " feed={feed}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_chosen_bytes_become_one_printable_word() {
        assert_eq!(escape_bytes(b"python3"), "python3");
        assert_eq!(escape_bytes(b"isc-net-0000"), "isc-net-0000");
        assert_eq!(escape_bytes(b"a\nfake line"), "a\\x0afake\\x20line");
        assert_eq!(escape_bytes(b"x\r\t\x1b[31m"), "x\\x0d\\x09\\x1b[31m");
        assert_eq!(escape_bytes(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape_bytes(&[0x7f, 0x80, 0xff]), "\\x7f\\x80\\xff");
        assert_eq!(escape_bytes(b""), "");
        // Reversible: an escaped backslash cannot be confused with an escape.
        assert_ne!(escape_bytes(b"\\x0a"), escape_bytes(b"\n"));
    }

    /// A DNS event as the kernel sends it, from an egress hook, with `comm` and `name`.
    fn record(comm: &[u8], name: &[u8]) -> Vec<u8> {
        use palisade_common::{
            dns::maps::SCOPE_EGRESS,
            event::{DNS_VERDICT_DROP, DnsEvent, KIND_DNS},
        };
        // SAFETY: DnsEvent is plain old data; all zeroes is a valid value.
        let mut e: DnsEvent = unsafe { std::mem::zeroed() };
        e.kind = KIND_DNS;
        e.scope = SCOPE_EGRESS;
        e.verdict = DNS_VERDICT_DROP;
        e.reason = reason::DNS_NOT_ALLOWED;
        e.family = FAMILY_V4;
        e.client[12..].copy_from_slice(&[10, 0, 0, 1]);
        e.qtype = 1;
        e.pid = 42;
        e.cgroup_id = 7;
        e.list = u16::MAX;
        e.comm[..comm.len()].copy_from_slice(comm);
        e.name[..name.len()].copy_from_slice(name);
        e.name_len = name.len() as u16;
        // SAFETY: reading the bytes of a plain-old-data value.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(&e).cast::<u8>(), size_of::<DnsEvent>())
        }
        .to_vec()
    }

    #[test]
    fn a_command_name_cannot_forge_a_line_or_a_field_of_text_output() {
        let d = decode_dns(&record(b"x\ndns egress", b"\x02ok\x00")).expect("a DNS event");
        assert_eq!(d.comm.as_deref(), Some("x\\x0adns\\x20egress"));
        let text = d.to_string();
        assert!(!text.contains('\n'), "{text:?}");
        assert_eq!(
            text,
            "dns egress drop reason=dns-not-allowed ok. A client=10.0.0.1:0 pid=42 uid=0 \
             comm=x\\x0adns\\x20egress cgroup=7"
        );
        // Invalid UTF-8 and a full 16-byte name without a terminator.
        let d = decode_dns(&record(&[0xff; 16], b"\x00")).expect("a DNS event");
        assert_eq!(d.comm.as_deref(), Some("\\xff".repeat(16).as_str()));
        let json = serde_json::to_string(&d).expect("json");
        assert!(json.contains(r#""comm":"\\xff"#), "{json}");
    }

    #[test]
    fn odd_bytes_in_a_name_are_escaped() {
        let d = decode_dns(&record(b"dig", b"\x05a b\nc\x04x.y\\\x03\x00\x7f\xc3\x00"))
            .expect("a DNS event");
        assert_eq!(d.name, "a\\032b\\010c.x\\.y\\\\.\\000\\127\\195.");
        assert!(!d.to_string().contains('\n'));
    }
}
