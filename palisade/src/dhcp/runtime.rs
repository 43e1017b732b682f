//! The daemon's side of snooping: records from the kernel read into the lease table and
//! into events (leases given and released, routers, rogue servers).

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use palisade_common::dhcp::{
    DhcpRecord, KIND_RA, KIND_V4_SERVER, KIND_V6_SERVER, REC_CUT, REC_DROPPED, REC_ROGUE,
};
use serde::Serialize;

use super::{
    leases::{Change, FOREVER, Lease, LeaseKind, Table, mac_text},
    wire::{self, Message, Snooped},
};

/// A rogue source is reported again after this many seconds of silence at most once.
pub const ROGUE_REPEAT_SECS: u64 = 10;
/// Rogue sources remembered for that (the oldest are forgotten first).
pub const MAX_ROGUES: usize = 1024;

/// One event of `palisade events` (kind `dhcp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DhcpEvent {
    /// `lease`, `renew`, `release`, `router` or `rogue`.
    pub event: &'static str,
    /// `lease` for table changes; `alert` or `drop` for rogues.
    pub verdict: &'static str,
    /// `dhcpv4`, `dhcpv6` or `ra`.
    pub proto: &'static str,
    pub mac: String,
    pub ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_end: Option<u64>,
    /// The server or router (its IP and MAC).
    pub server: String,
    pub iface: String,
    /// What the parser found broken in the message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<&'static str>,
}

impl fmt::Display for DhcpEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dhcp {} {} {} mac={} ip={}",
            self.event, self.verdict, self.proto, self.mac, self.ip
        )?;
        if let Some(h) = &self.hostname {
            write!(f, " hostname={h}")?;
        }
        if let Some(e) = self.lease_end {
            write!(f, " lease_end={e}")?;
        }
        write!(f, " server={} iface={}", self.server, self.iface)?;
        if !self.anomalies.is_empty() {
            write!(f, " anomalies={}", self.anomalies.join(","))?;
        }
        Ok(())
    }
}

/// Counts of what the daemon read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub records: u64,
    /// Records that were not DHCP after all, or too short to be a record.
    pub unreadable: u64,
    /// Messages with anomalies (read as far as they held together).
    pub malformed: u64,
    pub rogue_reports: u64,
}

/// The snooper's state.
#[derive(Debug, Default)]
pub struct Snooper {
    pub table: Table,
    /// Rogue sources by (MAC, IP) and when they were last reported.
    rogues: HashMap<([u8; 6], IpAddr), u64>,
    pub tally: Tally,
}

/// Names interfaces by index.
pub trait Ifaces {
    fn name(&self, ifindex: u32) -> String;
}

/// The host's interfaces, by `if_indextoname`.
pub struct HostIfaces;

impl Ifaces for HostIfaces {
    fn name(&self, ifindex: u32) -> String {
        let mut buf = [0u8; libc::IF_NAMESIZE];
        // SAFETY: the buffer has IF_NAMESIZE bytes, as the call requires.
        let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
        if p.is_null() {
            return format!("if{ifindex}");
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }
}

fn end_of(now: u64, secs: u32) -> Option<u64> {
    if secs == u32::MAX {
        None
    } else {
        Some(now + u64::from(secs))
    }
}

impl Snooper {
    /// Reads one ring-buffer record (a [`DhcpRecord`] as the kernel wrote it) at `now` (Unix
    /// seconds); returns the events it causes.
    pub fn record(&mut self, bytes: &[u8], now: u64, ifaces: &impl Ifaces) -> Vec<DhcpEvent> {
        self.tally.records += 1;
        if bytes.len() < std::mem::size_of::<DhcpRecord>() {
            self.tally.unreadable += 1;
            return Vec::new();
        }
        // SAFETY: the length was checked; the record is plain bytes read without alignment.
        let rec: DhcpRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let len = (rec.len as usize).min(rec.data.len());
        let iface = ifaces.name(rec.ifindex);
        self.frame(&rec.data[..len], rec.flags, rec.kind, &iface, now)
    }

    /// Reads one frame (as in a record with `flags` and `kind`).
    pub fn frame(
        &mut self,
        frame: &[u8],
        flags: u32,
        kind: u8,
        iface: &str,
        now: u64,
    ) -> Vec<DhcpEvent> {
        let Ok(s) = wire::read_frame(frame, flags & REC_CUT != 0) else {
            self.tally.unreadable += 1;
            return Vec::new();
        };
        let anomalies = match &s.message {
            Message::V4(m) => m.anomalies,
            Message::V6(m) => m.anomalies,
            Message::Ra(r) => r.anomalies,
        };
        if anomalies.0 & !wire::Anomalies::CUT != 0 {
            self.tally.malformed += 1;
        }
        let mut events = Vec::new();
        let rogue = flags & REC_ROGUE != 0;
        if rogue && matches!(kind, KIND_V4_SERVER | KIND_V6_SERVER | KIND_RA) {
            if let Some(ev) = self.rogue(&s, flags, iface, now) {
                events.push(ev);
            }
            if flags & REC_DROPPED != 0 {
                // Never reached a client: nothing to learn from it.
                return events;
            }
        }
        let server = format!("{} {}", s.src, mac_text(s.src_mac));
        match &s.message {
            Message::V4(m) => self.v4(&s, m, &server, !rogue, iface, now, &mut events),
            Message::V6(m) => self.v6(&s, m, &server, !rogue, iface, now, &mut events),
            Message::Ra(ra) => self.ra(&s, ra, &server, !rogue, iface, now, &mut events),
        }
        for e in &mut events {
            if e.anomalies.is_empty() {
                e.anomalies = anomalies.names();
            }
        }
        events
    }

    /// A rogue's report, unless the same source was reported in the last
    /// [`ROGUE_REPEAT_SECS`].
    fn rogue(&mut self, s: &Snooped, flags: u32, iface: &str, now: u64) -> Option<DhcpEvent> {
        let key = (s.src_mac, s.src);
        if let Some(&last) = self.rogues.get(&key)
            && now.saturating_sub(last) < ROGUE_REPEAT_SECS
        {
            return None;
        }
        if self.rogues.len() >= MAX_ROGUES
            && let Some(oldest) = self.rogues.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k)
        {
            self.rogues.remove(&oldest);
        }
        self.rogues.insert(key, now);
        self.tally.rogue_reports += 1;
        let (proto, ip, mac, hostname) = match &s.message {
            Message::V4(m) => (
                "dhcpv4",
                m.yiaddr.to_string(),
                m.chaddr.map(mac_text).unwrap_or_default(),
                m.hostname.clone(),
            ),
            Message::V6(m) => (
                "dhcpv6",
                m.bindings
                    .first()
                    .map(|b| b.addr.to_string())
                    .unwrap_or_default(),
                m.duid_mac().map(mac_text).unwrap_or_default(),
                m.hostname.clone(),
            ),
            Message::Ra(_) => ("ra", String::new(), String::new(), None),
        };
        Some(DhcpEvent {
            event: "rogue",
            verdict: if flags & REC_DROPPED != 0 {
                "drop"
            } else {
                "alert"
            },
            proto,
            mac,
            ip,
            hostname,
            lease_end: None,
            server: format!("{} {}", s.src, mac_text(s.src_mac)),
            iface: iface.to_string(),
            anomalies: Vec::new(),
        })
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one message's context, read once"
    )]
    fn v4(
        &mut self,
        s: &Snooped,
        m: &wire::V4Message,
        server: &str,
        trusted: bool,
        iface: &str,
        now: u64,
        events: &mut Vec<DhcpEvent>,
    ) {
        let Some(mac) = m.chaddr else {
            return;
        };
        let ev = |event, ip: String, hostname, lease_end| DhcpEvent {
            event,
            verdict: "lease",
            proto: "dhcpv4",
            mac: mac_text(mac),
            ip,
            hostname,
            lease_end,
            server: server.to_string(),
            iface: iface.to_string(),
            anomalies: Vec::new(),
        };
        match (m.op, m.msg_type) {
            (1, Some(wire::DISCOVER | wire::REQUEST | wire::INFORM)) => {
                if let Some(h) = &m.hostname {
                    self.table.learn_name(mac, h);
                }
            }
            (1, Some(wire::RELEASE | wire::DECLINE)) => {
                let ip = if m.msg_type == Some(wire::DECLINE) {
                    m.requested.unwrap_or(m.ciaddr)
                } else {
                    m.ciaddr
                };
                if let Some(l) = self.table.remove(LeaseKind::Dhcpv4, mac, IpAddr::V4(ip)) {
                    events.push(ev("release", l.ip, l.hostname, l.lease_end));
                }
            }
            (2, Some(wire::ACK)) if !m.yiaddr.is_unspecified() => {
                let hostname = m
                    .hostname
                    .clone()
                    .or_else(|| self.table.name_of(mac).map(str::to_string));
                // An ACK without a lease time (an INFORM's answer) gives no lease.
                let Some(secs) = m.lease_secs else {
                    return;
                };
                let lease_end = end_of(now, secs);
                let lease = Lease {
                    kind: LeaseKind::Dhcpv4,
                    mac: mac_text(mac),
                    ip: m.yiaddr.to_string(),
                    prefix_len: None,
                    hostname: hostname.clone(),
                    lease_end,
                    server: m.server_id.map_or_else(
                        || server.to_string(),
                        |id| format!("{id} {}", mac_text(s.src_mac)),
                    ),
                    trusted,
                    iface: iface.to_string(),
                    prefixes: Vec::new(),
                    updated: now,
                };
                let change = self.table.upsert(mac, IpAddr::V4(m.yiaddr), lease);
                events.push(ev(
                    if change == Change::New {
                        "lease"
                    } else {
                        "renew"
                    },
                    m.yiaddr.to_string(),
                    hostname,
                    lease_end,
                ));
            }
            _ => {}
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one message's context, read once"
    )]
    fn v6(
        &mut self,
        s: &Snooped,
        m: &wire::V6Message,
        server: &str,
        trusted: bool,
        iface: &str,
        now: u64,
        events: &mut Vec<DhcpEvent>,
    ) {
        // The client: by its DUID's link-layer address, else the frame's (the client's own
        // frame, or the server's answer sent to it), unless that is multicast.
        let from_client = matches!(
            m.msg_type,
            wire::V6_SOLICIT
                | wire::V6_REQUEST
                | wire::V6_RENEW
                | wire::V6_REBIND
                | wire::V6_RELEASE
                | wire::V6_DECLINE
                | wire::V6_CONFIRM
        );
        let frame_mac = if from_client { s.src_mac } else { s.dst_mac };
        let Some(mac) = m
            .duid_mac()
            .or((frame_mac[0] & 1 == 0 && m.relays == 0).then_some(frame_mac))
        else {
            return;
        };
        match m.msg_type {
            wire::V6_SOLICIT | wire::V6_REQUEST | wire::V6_RENEW | wire::V6_REBIND => {
                if let Some(h) = &m.hostname {
                    self.table.learn_name(mac, h);
                }
            }
            wire::V6_RELEASE | wire::V6_DECLINE => {
                for l in self.table.remove_all(LeaseKind::Dhcpv6, mac) {
                    events.push(DhcpEvent {
                        event: "release",
                        verdict: "lease",
                        proto: "dhcpv6",
                        mac: l.mac,
                        ip: l.ip,
                        hostname: l.hostname,
                        lease_end: l.lease_end,
                        server: server.to_string(),
                        iface: iface.to_string(),
                        anomalies: Vec::new(),
                    });
                }
            }
            wire::V6_REPLY => {
                let hostname = m
                    .hostname
                    .clone()
                    .or_else(|| self.table.name_of(mac).map(str::to_string));
                for b in &m.bindings {
                    let ip = IpAddr::V6(b.addr);
                    if b.valid == 0 {
                        if let Some(l) = self.table.remove(LeaseKind::Dhcpv6, mac, ip) {
                            events.push(DhcpEvent {
                                event: "release",
                                verdict: "lease",
                                proto: "dhcpv6",
                                mac: l.mac,
                                ip: l.ip,
                                hostname: l.hostname,
                                lease_end: l.lease_end,
                                server: server.to_string(),
                                iface: iface.to_string(),
                                anomalies: Vec::new(),
                            });
                        }
                        continue;
                    }
                    let lease_end = end_of(now, b.valid);
                    let lease = Lease {
                        kind: LeaseKind::Dhcpv6,
                        mac: mac_text(mac),
                        ip: b.addr.to_string(),
                        prefix_len: (b.prefix_len != 128).then_some(b.prefix_len),
                        hostname: hostname.clone(),
                        lease_end,
                        server: server.to_string(),
                        trusted,
                        iface: iface.to_string(),
                        prefixes: Vec::new(),
                        updated: now,
                    };
                    let change = self.table.upsert(mac, ip, lease);
                    events.push(DhcpEvent {
                        event: if change == Change::New {
                            "lease"
                        } else {
                            "renew"
                        },
                        verdict: "lease",
                        proto: "dhcpv6",
                        mac: mac_text(mac),
                        ip: b.addr.to_string(),
                        hostname: hostname.clone(),
                        lease_end,
                        server: server.to_string(),
                        iface: iface.to_string(),
                        anomalies: Vec::new(),
                    });
                }
            }
            _ => {}
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one message's context, read once"
    )]
    fn ra(
        &mut self,
        s: &Snooped,
        ra: &wire::RouterAdvert,
        server: &str,
        trusted: bool,
        iface: &str,
        now: u64,
        events: &mut Vec<DhcpEvent>,
    ) {
        let mac = ra.source_mac.unwrap_or(s.src_mac);
        let ip = s.src;
        if ra.lifetime == 0 && ra.prefixes.is_empty() {
            if let Some(l) = self.table.remove(LeaseKind::Router, mac, ip) {
                events.push(DhcpEvent {
                    event: "release",
                    verdict: "lease",
                    proto: "ra",
                    mac: l.mac,
                    ip: l.ip,
                    hostname: None,
                    lease_end: None,
                    server: server.to_string(),
                    iface: iface.to_string(),
                    anomalies: Vec::new(),
                });
            }
            return;
        }
        let longest = ra
            .prefixes
            .iter()
            .map(|p| u64::from(p.valid))
            .chain(std::iter::once(u64::from(ra.lifetime)))
            .max()
            .unwrap_or(0);
        let lease_end = if longest == u64::from(u32::MAX) {
            None
        } else {
            Some(now + longest)
        };
        let prefixes: Vec<String> = ra
            .prefixes
            .iter()
            .map(|p| format!("{}/{}", masked(p.prefix, p.len), p.len))
            .collect();
        let lease = Lease {
            kind: LeaseKind::Router,
            mac: mac_text(mac),
            ip: ip.to_string(),
            prefix_len: None,
            hostname: None,
            lease_end,
            server: server.to_string(),
            trusted,
            iface: iface.to_string(),
            prefixes,
            updated: now,
        };
        if self.table.upsert(mac, ip, lease) == Change::New {
            events.push(DhcpEvent {
                event: "router",
                verdict: "lease",
                proto: "ra",
                mac: mac_text(mac),
                ip: ip.to_string(),
                hostname: None,
                lease_end,
                server: server.to_string(),
                iface: iface.to_string(),
                anomalies: Vec::new(),
            });
        }
    }

    /// Drops leases past their end.
    pub fn expire(&mut self, now: u64) {
        self.table.expire(now);
    }
}

/// `p` with the bits past `len` cleared.
fn masked(p: Ipv6Addr, len: u8) -> Ipv6Addr {
    let bits = u128::from(p);
    let len = u32::from(len.min(128));
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    Ipv6Addr::from(bits & mask)
}

/// The wall clock in Unix seconds (lease ends are absolute times).
#[must_use]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A lease end for display: Unix seconds, or "never".
#[must_use]
pub fn end_text(end: Option<u64>) -> String {
    match end {
        None | Some(FOREVER) => "never".to_string(),
        Some(e) => e.to_string(),
    }
}
