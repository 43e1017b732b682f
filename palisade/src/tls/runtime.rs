//! The daemon's side of the TLS gate: reads the client bytes the gate copies out, gathers
//! each flow's ClientHello, decides it, writes the verdict into the gate's table, resets a
//! refused flow both ways, and reports the decision as an event.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use aya::Ebpf;
use palisade_common::reason;
use palisade_common::tls::gate::{GateKey, SegmentRecord};
use serde::Serialize;

use super::decide::{Decision, NameClass, TlsPolicy};
use super::flows::{Flows, Step};
use crate::craft::{Frame, L4};

/// How long a decided flow's late records are ignored.
pub const DECIDED_MEMORY: std::time::Duration = std::time::Duration::from_secs(10);

/// A decided flow, as events carry it.
#[derive(Debug, Clone, Serialize)]
pub struct TlsEvent {
    pub kind: &'static str,
    /// `pass`, `drop`, or `audit` (refused by the policy but let through).
    pub verdict: &'static str,
    pub reason: &'static str,
    pub client: String,
    pub server: String,
    pub client_port: u16,
    pub server_port: u16,
    pub sni: String,
    /// `name`, `no-sni`, `ip-literal`, `invalid`; `outer-sni-only` with ECH.
    pub category: &'static str,
    pub alpn: String,
    pub ja4: String,
    /// The client or the server is an address an `[intel]` feed with `action = "tag"`
    /// marked (`INTEL_TAGGED`, read when the flow is decided); absent from JSON when not.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub intel_tagged: bool,
}

impl std::fmt::Display for TlsEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tls {} {}:{} -> {}:{} sni={} ({}) alpn={} ja4={} reason={}",
            self.verdict,
            self.client,
            self.client_port,
            self.server,
            self.server_port,
            if self.sni.is_empty() { "-" } else { &self.sni },
            self.category,
            if self.alpn.is_empty() {
                "-"
            } else {
                &self.alpn
            },
            if self.ja4.is_empty() { "-" } else { &self.ja4 },
            self.reason
        )?;
        if self.intel_tagged {
            f.write_str(" intel=tagged")?;
        }
        Ok(())
    }
}

/// Where each pending flow's two ends stand, for the resets.
#[derive(Clone, Copy)]
struct Ends {
    /// The sequence number of the client's first byte.
    base: u32,
    /// The byte after the client's last one seen.
    client_next: u32,
    /// The client's last acknowledgement: the server's next byte.
    server_next: u32,
}

/// The gate's daemon side.
pub struct Gatekeeper {
    flows: Flows<GateKey>,
    ends: HashMap<GateKey, Ends>,
    /// Flows decided lately, with their first byte's sequence number: records of theirs
    /// still in the ring (copied before the verdict reached the gate) must not start the
    /// flow over. Kept for [`DECIDED_MEMORY`].
    recent: HashMap<GateKey, (u32, Instant)>,
    policy: TlsPolicy,
    /// Flows decided, by verdict: allowed, blocked, audit.
    pub decided: [u64; 3],
}

impl Gatekeeper {
    #[must_use]
    pub fn new(policy: TlsPolicy) -> Self {
        Self {
            flows: Flows::new(),
            ends: HashMap::new(),
            recent: HashMap::new(),
            policy,
            decided: [0; 3],
        }
    }

    /// Takes a new policy; flows already gathering are decided by it.
    pub fn set_policy(&mut self, policy: TlsPolicy) {
        self.policy = policy;
    }

    /// One record from `TLS_SEGMENTS`: returns the event when it decided its flow.
    pub fn record(&mut self, ebpf: &mut Ebpf, raw: &[u8], now: Instant) -> Option<TlsEvent> {
        let r: SegmentRecord = super::segment_record(raw)?;
        if self
            .recent
            .get(&r.key)
            .is_some_and(|&(base, _)| base == r.base)
        {
            return None;
        }
        let len = (r.len as usize).min(r.data.len());
        let end = r.seq.wrapping_add(len as u32);
        let ends = self.ends.entry(r.key).or_insert(Ends {
            base: r.base,
            client_next: end,
            server_next: r.ack,
        });
        if end.wrapping_sub(ends.client_next) as i32 > 0 {
            ends.client_next = end;
        }
        ends.server_next = r.ack;
        match self
            .flows
            .segment(&self.policy, &r.key, r.base, r.seq, &r.data[..len], now)
        {
            Step::Wait => None,
            Step::Decided(d) => Some(self.conclude(ebpf, &r.key, &d)),
        }
    }

    /// Decides the flows whose hello is overdue.
    pub fn expire(&mut self, ebpf: &mut Ebpf, now: Instant) -> Vec<TlsEvent> {
        self.recent
            .retain(|_, (_, at)| now.duration_since(*at) < DECIDED_MEMORY);
        let overdue = self.flows.expire(&self.policy, now);
        overdue
            .into_iter()
            .map(|(k, d)| self.conclude(ebpf, &k, &d))
            .collect()
    }

    fn conclude(&mut self, ebpf: &mut Ebpf, key: &GateKey, d: &Decision) -> TlsEvent {
        let ends = self.ends.remove(key);
        let base = ends.map_or(0, |e| e.base);
        self.recent.insert(*key, (base, Instant::now()));
        let blocks = d.blocks(&self.policy);
        let verdict = if blocks {
            "drop"
        } else if d.reason == reason::PASS {
            "pass"
        } else {
            "audit"
        };
        self.decided[usize::from(blocks) + usize::from(!blocks && d.reason != reason::PASS) * 2] +=
            1;
        if let Err(e) = super::set_verdict(ebpf, key, base, blocks.then_some(d.reason)) {
            tracing::warn!(error = %e, "writing a TLS verdict");
        }
        if blocks && let Some(ends) = ends {
            reset_both_ways(key, ends);
        }
        TlsEvent {
            kind: "tls",
            verdict,
            reason: reason::name(d.reason),
            client: address(&key.client).to_string(),
            server: address(&key.server).to_string(),
            client_port: key.client_port,
            server_port: key.server_port,
            sni: d.sni.clone(),
            category: match d.class {
                NameClass::Name if d.ech => "outer-sni-only",
                NameClass::Name => "name",
                NameClass::NoSni => "no-sni",
                NameClass::IpLiteral => "ip-literal",
                NameClass::Invalid => "invalid",
            },
            alpn: d.alpn.clone(),
            ja4: d.ja4.clone(),
            intel_tagged: crate::intel::is_tagged(ebpf, &key.client)
                || crate::intel::is_tagged(ebpf, &key.server),
        }
    }
}

/// An address as the gate keys it (IPv4 mapped into IPv6).
#[must_use]
pub fn address(bytes: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Sends a reset to each end of a refused flow, from the other end, at the sequence number
/// that end expects (RFC 5961 takes an exact match at once). Best effort: a reset that
/// cannot be sent leaves the flow dropped by the gate until its ends time out.
fn reset_both_ways(key: &GateKey, ends: Ends) {
    let client = address(&key.client);
    let server = address(&key.server);
    let to_server = Frame::new(
        client,
        server,
        L4::Tcp {
            sport: key.client_port,
            dport: key.server_port,
            flags: 0x04,
        },
    )
    .with_tcp_seq(ends.client_next);
    let to_client = Frame::new(
        server,
        client,
        L4::Tcp {
            sport: key.server_port,
            dport: key.client_port,
            flags: 0x04,
        },
    )
    .with_tcp_seq(ends.server_next);
    for f in [to_server, to_client] {
        if let Err(e) = send_raw(&f.build_ip(), f.dst) {
            tracing::warn!(error = %e, "sending a TLS reset");
        }
    }
}

/// Sends a whole IP packet (header included) through a raw socket.
fn send_raw(packet: &[u8], dst: IpAddr) -> std::io::Result<()> {
    let (family, addr): (libc::c_int, Vec<u8>) = match dst {
        IpAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: plain data viewed as bytes.
            let b = unsafe {
                std::slice::from_raw_parts(
                    (&raw const sa).cast::<u8>(),
                    std::mem::size_of::<libc::sockaddr_in>(),
                )
            };
            (libc::AF_INET, b.to_vec())
        }
        IpAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: plain data viewed as bytes.
            let b = unsafe {
                std::slice::from_raw_parts(
                    (&raw const sa).cast::<u8>(),
                    std::mem::size_of::<libc::sockaddr_in6>(),
                )
            };
            (libc::AF_INET6, b.to_vec())
        }
    };
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `packet` and `addr` are valid for their lengths.
    let rc = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    if rc < 0 { Err(err) } else { Ok(()) }
}
