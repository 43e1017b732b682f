//! Decoding and printing the events the kernel programs send over the ring buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use palisade_common::{
    event::{FirewallEvent, KIND_FIREWALL},
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
        verdict: if e.action == 1 { "drop" } else { "pass" },
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
        write!(f, " len={} ifindex={}", self.len, self.ifindex)
    }
}
