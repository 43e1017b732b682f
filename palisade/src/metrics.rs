//! The Prometheus endpoint: a minimal HTTP/1.1 responder (GET or HEAD of `/metrics`, one
//! request per connection) serving the text exposition format.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use anyhow::{Result, anyhow};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tracing::debug;

use crate::{
    api::{
        proto::{Request, Stats},
        server::Call,
    },
    conntrack::report::CtStats,
};

/// Where `--metrics` listens when given without an address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9477";
/// The longest request head read.
const MAX_HEAD: usize = 8192;

/// Parses `--metrics`: `HOST:PORT`, `[V6]:PORT`, or a bare port (on 127.0.0.1).
///
/// # Errors
/// When it is none of these.
pub fn parse_addr(text: &str) -> Result<SocketAddr> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(port) = text.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        anyhow!("invalid --metrics address `{text}`: use HOST:PORT (e.g. {DEFAULT_ADDR}) or a port")
    })
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family, for features that describe their own metrics (see
/// `conntrack::report::metric_families`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub name: String,
    /// `counter` or `gauge`.
    pub kind: String,
    pub help: String,
    /// Label pairs and value of each sample.
    pub samples: Vec<(Vec<(String, String)>, u64)>,
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = writeln!(self.0, "{name}{{{}}} {value}", l.join(","));
        }
    }
    fn write(&mut self, f: &Family) {
        self.family(&f.name, &f.kind, &f.help);
        for (labels, v) in &f.samples {
            let l: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            self.sample(&f.name, &l, *v);
        }
    }
}

fn global_help(name: &str) -> &'static str {
    match name {
        "packets" => "Packets seen by the XDP firewall.",
        "passed" => "Packets passed by the XDP firewall (including non-IP frames).",
        "dropped" => "Packets dropped, for any reason (see palisade_drops_total).",
        "not_ip" => "Frames that are not IPv4 or IPv6, always passed.",
        "events_lost" => "Events lost because the ring buffer was full.",
        "internal_errors" => "Internal datapath errors (the packet passed).",
        "fragments" => "Non-first IP fragments seen.",
        "answered" => "Packets answered in place (DNS NXDOMAIN, REFUSED or sinkhole answers).",
        "events_aggregated" => {
            "DNS queries over the event budget ([dns] event_rate): in dns_summary counts, or sent \
             in full as a name's first or a sample."
        }
        "events_sampled" => "DNS queries over the event budget sent in full as samples.",
        _ => "Datapath counter.",
    }
}

fn dns_help(name: &str) -> &'static str {
    match name {
        "queries" => "DNS queries inspected, by attachment point (ingress, egress).",
        "allowed" => "DNS queries allowed, by attachment point.",
        "blocked" => "DNS queries blocked, by attachment point.",
        "nxdomain_sent" => "NXDOMAIN answers sent, by attachment point.",
        "sinkhole_sent" => "Sinkhole answers (addresses or NODATA) sent, by attachment point.",
        "refused_sent" => "REFUSED answers sent, by attachment point.",
        "audited" => "DNS queries that audit mode would have blocked, by attachment point.",
        "tcp" => "DNS queries over TCP, by attachment point.",
        "intel_alerted" => {
            "DNS queries passed for a name of an [intel] feed with action alert, by attachment \
             point."
        }
        "intel_tagged" => {
            "DNS queries passed for a name of an [intel] feed with action tag, by attachment point."
        }
        _ => "DNS counter, by attachment point.",
    }
}

/// The exposition text for `s`, and the connection tracker's when the daemon reported it.
#[must_use]
pub fn render(s: &Stats, ct: Option<&CtStats>) -> String {
    let mut o = Out(String::new());
    o.family("palisade_up", "gauge", "1 while the daemon serves metrics.");
    o.sample("palisade_up", &[], 1);
    for n in &s.counters.global {
        let name = format!("palisade_{}_total", n.name);
        o.family(&name, "counter", global_help(&n.name));
        o.sample(&name, &[], n.value);
    }
    o.family(
        "palisade_drops_total",
        "counter",
        "Packets dropped, by reason.",
    );
    for n in &s.counters.reasons {
        o.sample("palisade_drops_total", &[("reason", &n.name)], n.value);
    }
    if !s.counters.shield.is_empty() {
        o.family(
            "palisade_shield_total",
            "counter",
            "What the shields of [shield] did: SYNs seen and answered with cookies, cookie ACKs \
             valid and invalid, SYNs passed to the stack, drops, engagements.",
        );
        for n in &s.counters.shield {
            o.sample("palisade_shield_total", &[("event", &n.name)], n.value);
        }
    }
    if let Some(d) = &s.dga {
        o.family(
            "palisade_dga_names_total",
            "counter",
            "DNS names the [dns.dga] scorer saw: scored (new), cached (seen before), reported \
             (above the threshold), listed (added to its list), list_failed, list_limited (over the \
             listing budget).",
        );
        for (what, v) in [
            ("scored", d.scored),
            ("cached", d.cached),
            ("reported", d.reported),
            ("listed", d.listed),
            ("list_failed", d.list_failed),
            ("list_limited", d.list_limited),
        ] {
            o.sample("palisade_dga_names_total", &[("event", what)], v);
        }
    }
    if let Some(x) = &s.otlp {
        o.family(
            "palisade_otlp_records_total",
            "counter",
            "Events exported over OTLP, by result: exported, dropped (the queue was full), failed.",
        );
        for (what, v) in [
            ("exported", x.exported),
            ("dropped", x.dropped),
            ("failed", x.failed),
        ] {
            o.sample("palisade_otlp_records_total", &[("result", what)], v);
        }
    }
    if let Some(st) = &s.shield_state {
        o.family(
            "palisade_shield_heavy_hitters",
            "gauge",
            "Source prefixes over [shield] source_rate (SHIELD_HITTERS), and how many are blocked now.",
        );
        o.sample(
            "palisade_shield_heavy_hitters",
            &[("state", "recorded")],
            st.hitters,
        );
        o.sample(
            "palisade_shield_heavy_hitters",
            &[("state", "blocked")],
            st.blocked,
        );
        o.family(
            "palisade_shield_syn_cookies_engaged_ports",
            "gauge",
            "Ports of [shield] syn_ports whose SYN cookies the SYN rate engaged now.",
        );
        o.sample(
            "palisade_shield_syn_cookies_engaged_ports",
            &[],
            st.engaged.len() as u64,
        );
    }
    if !s.counters.scrub.is_empty() {
        o.family(
            "palisade_scrub_total",
            "counter",
            "What the scrub of [scrub] rewrote, by direction and kind (TTLs and hop limits \
             raised, MSS clamped, DF cleared, IDs randomized), and what it left alone \
             (fragment IDs kept, frames it could not parse, rewrites the kernel refused).",
        );
        for n in &s.counters.scrub {
            let (direction, event) = crate::scrub::split_name(&n.name);
            o.sample(
                "palisade_scrub_total",
                &[("direction", direction), ("event", event)],
                n.value,
            );
        }
    }
    if !s.counters.actions.is_empty() {
        o.family(
            "palisade_action_total",
            "counter",
            "What the firewall's actions beyond allow and drop did, by action and event: \
             packets a mark rule matched, marks handed to TC and set on the socket buffer, \
             marks with no metadata room, DSCP code points rewritten or skipped.",
        );
        for n in &s.counters.actions {
            let (action, event) = n.name.split_once('_').unwrap_or(("", &n.name));
            o.sample(
                "palisade_action_total",
                &[("action", action), ("event", event)],
                n.value,
            );
        }
    }
    if !s.counters.redirect.is_empty() {
        o.family(
            "palisade_redirect_total",
            "counter",
            "What redirect rules did, by event: packets matched, sent out of another \
             interface, dropped as too big, passed to the stack for want of a route, a \
             neighbour, TTL or device.",
        );
        for n in &s.counters.redirect {
            o.sample("palisade_redirect_total", &[("event", &n.name)], n.value);
        }
    }
    if !s.counters.steer.is_empty() {
        o.family(
            "palisade_steer_total",
            "counter",
            "What steer rules did, by event: packets matched, handed to a CPU, passed for want \
             of a CPU map entry, and arrived on their CPU.",
        );
        for n in &s.counters.steer {
            o.sample("palisade_steer_total", &[("event", &n.name)], n.value);
        }
    }
    if s.counters.intel.iter().any(|n| n.value > 0) {
        o.family(
            "palisade_intel_total",
            "counter",
            "What the indicator match of [intel] did, by direction: addresses checked, bloom \
             filter maybes and false positives, exact and CIDR hits, drops, alerts, tags, \
             events lost.",
        );
        for n in s
            .counters
            .intel
            .iter()
            .filter(|n| !n.name.starts_with("feed_"))
        {
            let (direction, event) = n.name.split_once('_').unwrap_or(("", &n.name));
            o.sample(
                "palisade_intel_total",
                &[("direction", direction), ("event", event)],
                n.value,
            );
        }
    }
    if s.counters.bind.iter().any(|n| n.value > 0) {
        o.family(
            "palisade_dns_bind_total",
            "counter",
            "DNS binding ([dns.bind]): connects and sends checked, passed as bound or allowed \
             explicitly, refused; answers walked, malformed; addresses bound or skipped.",
        );
        for n in &s.counters.bind {
            o.sample("palisade_dns_bind_total", &[("event", &n.name)], n.value);
        }
    }
    if s.counters.dns_cache.iter().any(|n| n.value > 0) {
        o.family(
            "palisade_dns_cache_total",
            "counter",
            "The DNS response cache ([dns.cache]): queries answered from it (hits) or sent on \
             (misses), answers stored (inserts, inserted_new), expired entries removed, \
             answers declined or rejected by cause, entries evicted to make room.",
        );
        for n in s.counters.dns_cache.iter().filter(|n| n.name != "entries") {
            o.sample("palisade_dns_cache_total", &[("event", &n.name)], n.value);
        }
        o.family(
            "palisade_dns_cache_entries",
            "gauge",
            "Answers in the DNS response cache now.",
        );
        let entries = s
            .counters
            .dns_cache
            .iter()
            .find(|n| n.name == "entries")
            .map_or(0, |n| n.value);
        o.sample("palisade_dns_cache_entries", &[], entries);
    }
    if s.counters.nat.iter().any(|n| n.value > 0) {
        o.family(
            "palisade_nat_total",
            "counter",
            "What the NAT of [nat] did: mappings made (snat, dnat), packets translated per \
             direction, ICMP errors translated with their quoted packet, ports tried and \
             passed over, new flows dropped (port exhausted, table full), mappings swept with \
             their flow.",
        );
        for n in &s.counters.nat {
            o.sample("palisade_nat_total", &[("event", n.name.as_str())], n.value);
        }
    }
    if s.counters.lb.iter().any(|n| n.value != 0) {
        o.family(
            "palisade_lb_total",
            "counter",
            "What the load balancer did: packets to services, flow-table hits and new flows, \
             insertions and gated insertions, packets encapsulated (DSR) or rewritten (DNAT) \
             by family, replies translated back, ICMP errors steered, and what it left alone \
             or dropped.",
        );
        for n in &s.counters.lb {
            o.sample("palisade_lb_total", &[("event", &n.name)], n.value);
        }
    }
    if !s.counters.tls.is_empty() {
        o.family(
            "palisade_tls_total",
            "counter",
            "The TLS gate of [tls]: flows seen, client bytes copied to the daemon (and records \
             lost), server segments held back before a verdict, packets of blocked flows \
             dropped, packets of flows it did not know, QUIC datagrams dropped, packets it \
             could not parse.",
        );
        for n in &s.counters.tls {
            o.sample("palisade_tls_total", &[("event", &n.name)], n.value);
        }
    }
    if !s.counters.ids.is_empty() {
        o.family(
            "palisade_ids_total",
            "counter",
            "The IDS of [ids]: packets looked at, flows selected or sampled out, payload \
             records sent, payloads truncated, records lost (events_lost), packets of dropped \
             flows, and the daemon's records read, alerts and drops installed.",
        );
        for n in s
            .counters
            .ids
            .iter()
            .filter(|n| !n.name.starts_with("sid_"))
        {
            o.sample("palisade_ids_total", &[("event", &n.name)], n.value);
        }
        o.family(
            "palisade_ids_alerts_total",
            "counter",
            "IDS alerts by rule (sid).",
        );
        for n in &s.counters.ids {
            if let Some(sid) = n.name.strip_prefix("sid_") {
                o.sample("palisade_ids_alerts_total", &[("sid", sid)], n.value);
            }
        }
    }
    if !s.counters.dlp.is_empty() {
        o.family(
            "palisade_dlp_total",
            "counter",
            "DLP of [dlp]: probed calls, records captured, lost (ring buffer full), calls and \
             bytes truncated, calls without a flow, read faults, matches, resets, uncovered \
             processes, library files probed (a gauge).",
        );
        for n in s
            .counters
            .dlp
            .iter()
            .filter(|n| !n.name.starts_with("matches_"))
        {
            o.sample("palisade_dlp_total", &[("event", &n.name)], n.value);
        }
        o.family(
            "palisade_dlp_matches_total",
            "counter",
            "DLP matches by detector.",
        );
        for n in &s.counters.dlp {
            if let Some(d) = n.name.strip_prefix("matches_") {
                o.sample("palisade_dlp_matches_total", &[("detector", d)], n.value);
            }
        }
    }
    if !s.counters.dhcp.is_empty() {
        o.family(
            "palisade_dhcp_total",
            "counter",
            "DHCP snooping of [dhcp]: DHCP, DHCPv6 and router-advertisement frames copied to \
             the daemon (and lost, or cut), server messages and advertisements from trusted \
             and from untrusted sources, untrusted ones dropped.",
        );
        for n in &s.counters.dhcp {
            o.sample("palisade_dhcp_total", &[("event", &n.name)], n.value);
        }
    }
    o.family(
        "palisade_rule_packets_total",
        "counter",
        "Packets that matched a firewall rule (or the default action).",
    );
    for r in &s.counters.rules {
        o.sample(
            "palisade_rule_packets_total",
            &[("rule", &r.rule), ("action", &r.action)],
            r.packets,
        );
    }
    o.family(
        "palisade_rule_bytes_total",
        "counter",
        "Bytes that matched a firewall rule (or the default action).",
    );
    for r in &s.counters.rules {
        o.sample(
            "palisade_rule_bytes_total",
            &[("rule", &r.rule), ("action", &r.action)],
            r.bytes,
        );
    }
    let mut seen = Vec::new();
    for d in &s.counters.dns {
        let name = format!("palisade_dns_{}_total", d.name);
        if !seen.contains(&name) {
            o.family(&name, "counter", dns_help(&d.name));
            seen.push(name.clone());
        }
        o.sample(&name, &[("scope", &d.scope)], d.value);
    }
    o.family(
        "palisade_policy_generation",
        "gauge",
        "Policy swaps since the maps were created.",
    );
    o.sample("palisade_policy_generation", &[], u64::from(s.generation));
    o.family(
        "palisade_reloads_total",
        "counter",
        "Policy file reloads, by result.",
    );
    o.sample(
        "palisade_reloads_total",
        &[("result", "success")],
        s.reloads_ok,
    );
    o.sample(
        "palisade_reloads_total",
        &[("result", "failure")],
        s.reloads_failed,
    );
    o.family(
        "palisade_live_changes_total",
        "counter",
        "Live changes (rules, set members, DNS entries), by result.",
    );
    o.sample(
        "palisade_live_changes_total",
        &[("result", "applied")],
        s.live_applied,
    );
    o.sample(
        "palisade_live_changes_total",
        &[("result", "refused")],
        s.live_refused,
    );
    if let Some(ct) = ct {
        for f in crate::conntrack::report::metric_families(ct) {
            o.write(&f);
        }
    }
    o.0
}

/// Serves until the listener fails.
pub async fn serve(listener: TcpListener, calls: mpsc::Sender<Call>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, calls).await {
                debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

/// Reads a request head: up to the blank line, at most [`MAX_HEAD`] bytes.
async fn read_head(s: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Some(buf));
        }
    }
}

async fn reply(
    s: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &str,
    head_only: bool,
    extra: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    if !head_only {
        s.write_all(body.as_bytes()).await?;
    }
    s.flush().await?;
    s.shutdown().await
}

/// Sends one request to the daemon's loop; `None` when it refuses or is gone.
async fn ask<T: serde::de::DeserializeOwned>(
    calls: &mpsc::Sender<Call>,
    request: Request,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    calls
        .send(Call {
            request,
            reply: tx,
            written: None,
        })
        .await
        .ok()?;
    rx.await
        .ok()
        .filter(|r| r.ok)
        .and_then(|r| r.data)
        .and_then(|d| serde_json::from_value(d).ok())
}

async fn connection(mut s: TcpStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let text = "text/plain; charset=utf-8";
    let Ok(head) = tokio::time::timeout(Duration::from_secs(5), read_head(&mut s)).await else {
        return Ok(());
    };
    let Some(head) = head? else { return Ok(()) };
    if head.len() > MAX_HEAD {
        return reply(
            &mut s,
            "431 Request Header Fields Too Large",
            text,
            "request head too large\n",
            false,
            "",
        )
        .await;
    }
    let head = String::from_utf8_lossy(&head);
    let first = head.lines().next().unwrap_or("");
    let mut parts = first.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return reply(
            &mut s,
            "400 Bad Request",
            text,
            "malformed request line\n",
            false,
            "",
        )
        .await;
    };
    if !version.starts_with("HTTP/1.") {
        return reply(
            &mut s,
            "505 HTTP Version Not Supported",
            text,
            "HTTP/1.x only\n",
            false,
            "",
        )
        .await;
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return reply(
            &mut s,
            "405 Method Not Allowed",
            text,
            "use GET\n",
            false,
            "Allow: GET, HEAD\r\n",
        )
        .await;
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let stats: Option<Stats> = ask(&calls, Request::Stats).await;
            // Without tracker maps (or a sweep) the rest is still served.
            let ct: Option<CtStats> = ask(&calls, Request::CtStats).await;
            match stats {
                Some(st) => {
                    reply(
                        &mut s,
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        &render(&st, ct.as_ref()),
                        head_only,
                        "",
                    )
                    .await
                }
                None => {
                    reply(
                        &mut s,
                        "503 Service Unavailable",
                        text,
                        "the daemon is shutting down\n",
                        head_only,
                        "",
                    )
                    .await
                }
            }
        }
        "/" => {
            reply(
                &mut s,
                "200 OK",
                text,
                "palisade: metrics at /metrics\n",
                head_only,
                "",
            )
            .await
        }
        _ => {
            reply(
                &mut s,
                "404 Not Found",
                text,
                "not found; metrics are at /metrics\n",
                head_only,
                "",
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Counters, DnsCounter, Named, RuleCounter};

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("9477").unwrap().to_string(), "127.0.0.1:9477");
        assert_eq!(parse_addr(":9100").unwrap().to_string(), "127.0.0.1:9100");
        assert_eq!(parse_addr("[::1]:9477").unwrap().to_string(), "[::1]:9477");
        assert!(
            parse_addr("localhost:x")
                .unwrap_err()
                .to_string()
                .contains("localhost:x")
        );
    }

    #[test]
    fn exposition_has_every_family_once_with_escaped_labels() {
        let s = Stats {
            generation: 7,
            reloads_ok: 2,
            reloads_failed: 1,
            live_applied: 3,
            live_refused: 4,
            counters: Counters {
                global: vec![Named {
                    name: "packets".into(),
                    value: 10,
                }],
                reasons: vec![Named {
                    name: "rule".into(),
                    value: 5,
                }],
                dns: vec![
                    DnsCounter {
                        scope: "ingress".into(),
                        name: "queries".into(),
                        value: 1,
                    },
                    DnsCounter {
                        scope: "egress".into(),
                        name: "queries".into(),
                        value: 2,
                    },
                ],
                rules: vec![RuleCounter {
                    rule: "a\"b".into(),
                    action: "drop".into(),
                    packets: 5,
                    bytes: 300,
                }],
                shield: vec![Named {
                    name: "cookies_sent".into(),
                    value: 9,
                }],
                scrub: vec![Named {
                    name: "egress_mss_clamped_v6".into(),
                    value: 4,
                }],
                nat: vec![Named {
                    name: "port_exhausted".into(),
                    value: 6,
                }],
                lb: vec![Named {
                    name: "encap_v4".into(),
                    value: 6,
                }],
                tls: vec![Named {
                    name: "server_held".into(),
                    value: 6,
                }],
                dhcp: vec![Named {
                    name: "rogue_dropped".into(),
                    value: 2,
                }],
                intel: vec![Named {
                    name: "ingress_hit_cidr".into(),
                    value: 3,
                }],
                bind: vec![Named {
                    name: "connect_denied".into(),
                    value: 9,
                }],
                dns_cache: vec![
                    Named {
                        name: "hits".into(),
                        value: 11,
                    },
                    Named {
                        name: "entries".into(),
                        value: 4,
                    },
                ],
                actions: vec![Named {
                    name: "mark_applied".into(),
                    value: 12,
                }],
                redirect: vec![Named {
                    name: "too_big".into(),
                    value: 7,
                }],
                steer: vec![Named {
                    name: "arrived".into(),
                    value: 9,
                }],
                ids: vec![
                    Named {
                        name: "flows_sampled_out".into(),
                        value: 5,
                    },
                    Named {
                        name: "sid_1001".into(),
                        value: 2,
                    },
                ],
                dlp: vec![
                    Named {
                        name: "lost".into(),
                        value: 3,
                    },
                    Named {
                        name: "matches_card".into(),
                        value: 4,
                    },
                ],
            },
            shield_state: Some(crate::shield::ShieldState {
                cookies_forced: false,
                engaged: vec![(443, 7)],
                hitters: 3,
                blocked: 2,
            }),
            dga: Some(crate::dga::runtime::DgaStats {
                scored: 5,
                ..Default::default()
            }),
            otlp: Some(crate::fleet::otlp::OtlpStats {
                exported: 3,
                dropped: 2,
                failed: 1,
            }),
        };
        let t = render(&s, None);
        assert!(!t.contains("palisade_ct_"));
        assert!(t.contains("palisade_packets_total 10\n"));
        assert!(t.contains("palisade_shield_total{event=\"cookies_sent\"} 9\n"));
        assert!(
            t.contains("palisade_scrub_total{direction=\"egress\",event=\"mss_clamped_v6\"} 4\n")
        );
        assert!(t.contains("palisade_nat_total{event=\"port_exhausted\"} 6\n"));
        assert!(t.contains("palisade_lb_total{event=\"encap_v4\"} 6\n"));
        assert!(t.contains("palisade_tls_total{event=\"server_held\"} 6\n"));
        assert!(t.contains("palisade_ids_total{event=\"flows_sampled_out\"} 5\n"));
        assert!(t.contains("palisade_ids_alerts_total{sid=\"1001\"} 2\n"));
        assert!(!t.contains("palisade_ids_total{event=\"sid_1001\"}"));
        assert!(t.contains("palisade_dlp_total{event=\"lost\"} 3\n"));
        assert!(t.contains("palisade_dlp_matches_total{detector=\"card\"} 4\n"));
        assert!(!t.contains("palisade_dlp_total{event=\"matches_card\"}"));
        assert!(t.contains("palisade_dhcp_total{event=\"rogue_dropped\"} 2\n"));
        assert!(t.contains("palisade_intel_total{direction=\"ingress\",event=\"hit_cidr\"} 3\n"));
        assert!(t.contains("palisade_dns_bind_total{event=\"connect_denied\"} 9\n"));
        assert!(t.contains("palisade_dns_cache_total{event=\"hits\"} 11\n"));
        assert!(t.contains("palisade_action_total{action=\"mark\",event=\"applied\"} 12\n"));
        assert!(t.contains("palisade_redirect_total{event=\"too_big\"} 7\n"));
        assert!(t.contains("palisade_steer_total{event=\"arrived\"} 9\n"));
        assert!(t.contains("palisade_dns_cache_entries 4\n"));
        assert!(!t.contains("palisade_dns_cache_total{event=\"entries\"}"));
        assert!(t.contains("palisade_shield_heavy_hitters{state=\"blocked\"} 2\n"));
        assert!(t.contains("palisade_shield_syn_cookies_engaged_ports 1\n"));
        assert!(t.contains("palisade_dga_names_total{event=\"scored\"} 5\n"));
        assert!(t.contains("palisade_dga_names_total{event=\"listed\"} 0\n"));
        assert!(t.contains("palisade_otlp_records_total{result=\"dropped\"} 2\n"));
        assert!(t.contains("palisade_drops_total{reason=\"rule\"} 5\n"));
        assert!(t.contains("palisade_rule_packets_total{rule=\"a\\\"b\",action=\"drop\"} 5\n"));
        assert!(t.contains("palisade_dns_queries_total{scope=\"egress\"} 2\n"));
        assert_eq!(t.matches("# TYPE palisade_dns_queries_total").count(), 1);
        assert!(t.contains("palisade_policy_generation 7\n"));
        assert!(t.contains("palisade_reloads_total{result=\"failure\"} 1\n"));
        assert!(t.contains("palisade_live_changes_total{result=\"refused\"} 4\n"));
    }
}
