//! `palisade replay`: a capture run through the real kernel programs with
//! `BPF_PROG_TEST_RUN`, under a policy file, with nothing attached and nothing pinned.
//!
//! The object is loaded unpinned into this process (as the datapath tests load it), the
//! policy installed into its private maps, and every packet run in capture order, so
//! connection-tracking state, rate-limit buckets and DNS bindings carry from one packet to
//! the next as they would on the wire.
//!
//! - A packet that arrives goes through the XDP entry program and, when XDP passes it, the
//!   TC ingress chain as the datapath attaches it ([`INGRESS_CHAIN`]: scrub, NAT, the TLS
//!   gate), each program getting the frame the one before left.
//! - A packet a cooked capture (or `--host`) marks as sent by the host goes through the
//!   cgroup DNS egress hook (the one a local process's socket meets first) and then the TC
//!   egress chain in the datapath's order ([`EGRESS_CHAIN`]: the load balancer's reverse
//!   translation, NAT, the connection tracker, scrub, the TLS gate, DHCP snooping, the
//!   indicator check, the DNS response cache's fill, which the datapath attaches only under
//!   `[dns.cache]` and which without it reads one map slot and lets the packet go).
//! - The TLS gate's ClientHello records are decided after each packet as the daemon decides
//!   them (`tls::runtime::Gatekeeper`), so a refused flow's later packets are refused.
//!
//! What each packet got is read from the programs' own verdicts and counters (the
//! drop-reason and per-rule counters, one packet at a time), DNS events and the TLS gate's
//! decisions; nothing is guessed in userspace. The kernel's clock is not the capture's:
//! rate limits and timeouts run at replay speed.

pub mod capture;

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use palisade_common::{
    firewall::DEFAULT_SLOT,
    packet::{self, FAMILY_V4, Frame},
    reason,
};
use serde::Serialize;

use crate::{
    policy::model::{Cidr, Family, Policy},
    testrun::Bench,
};

/// Per-packet rule attribution reads every rule's counter after every packet; past this
/// many rules only the totals are read, once at the end.
pub const MAX_ATTRIBUTED_RULES: usize = 1024;

/// What one packet got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PacketOutcome {
    /// 1-based position in the capture.
    pub packet: usize,
    /// `pass`, `drop`, `tx`, `redirect` or `aborted`.
    pub verdict: &'static str,
    /// The drop reason's name, for drops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The rule that decided (its name, or `#N` for an unnamed rule at evaluation index N,
    /// or `default`), when the firewall's rules decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// DNS question names the packet carried and their DNS verdicts, as the DNS
    /// inspector reported them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<NameVerdict>,
    /// The flow, as `proto src:port > dst:port` (absent for frames that are not IP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// TLS flows this packet's ClientHello decided (see [`TlsVerdict`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsVerdict>,
    /// `in` (XDP, then TC ingress) or `out` (sent by the host: cgroup egress, then TC
    /// egress).
    pub direction: &'static str,
}

/// A TLS flow decided by the gate on a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsVerdict {
    /// The server name the ClientHello asked for (empty without one).
    pub sni: String,
    /// `pass`, `drop` or `audit`.
    pub verdict: &'static str,
    /// The reason's name (`pass` for an allowed flow).
    pub reason: &'static str,
}

/// The TC ingress programs, in the order they are attached (after XDP passed the packet).
pub const INGRESS_CHAIN: [&str; 3] = [
    crate::scrub::INGRESS,
    crate::nat::INGRESS,
    crate::tls::INGRESS,
];

/// The TC egress programs, in the order they are attached.
pub const EGRESS_CHAIN: [&str; 8] = [
    crate::lb::REVERSE,
    crate::nat::EGRESS,
    crate::conntrack::EGRESS,
    crate::scrub::EGRESS,
    crate::tls::EGRESS,
    crate::dhcp::EGRESS,
    crate::intel::EGRESS,
    crate::dns::cache::FILL,
];

/// `TC_ACT_SHOT`.
const TC_SHOT: i32 = 2;

/// Runs `frame` through the TC `chain`: the first program that drops it ends the chain.
/// Returns whether the frame was dropped.
fn run_chain(bench: &Bench, chain: &[&str], frame: &[u8], number: usize) -> Result<bool> {
    let mut frame = frame.to_vec();
    for name in chain {
        let (verdict, out) = bench
            .run_tc(name, &frame)
            .with_context(|| format!("packet {number}: running {name}"))?;
        if verdict == TC_SHOT {
            return Ok(true);
        }
        frame = out;
    }
    Ok(false)
}

/// Runs what a local process sends through the cgroup DNS egress hook, then the TC egress
/// chain. Returns whether it was dropped.
fn run_egress(bench: &Bench, frame: &[u8], number: usize) -> Result<bool> {
    if let Ok(Frame::Ip(p)) = packet::parse(frame) {
        let ip = &frame[usize::from(p.l3_offset)..];
        let allowed = bench
            .run_egress(ip)
            .with_context(|| format!("packet {number}: running the cgroup DNS egress hook"))?;
        if allowed == 0 {
            return Ok(true);
        }
    }
    run_chain(bench, &EGRESS_CHAIN, frame, number)
}

/// The TLS gate's decisions, as the daemon makes them, from the records the gate copied.
struct TlsDecider {
    ring: RingBuf<MapData>,
    keeper: crate::tls::runtime::Gatekeeper,
}

impl TlsDecider {
    fn new(bench: &mut Bench, policy: &Policy) -> Result<Self> {
        let ring = bench
            .ebpf
            .take_map("TLS_SEGMENTS")
            .context("the object has no TLS_SEGMENTS map")?;
        Ok(Self {
            ring: RingBuf::try_from(ring)?,
            keeper: crate::tls::runtime::Gatekeeper::new(crate::tls::decide::TlsPolicy::new(
                &policy.tls,
                &policy.dns.lists,
            )),
        })
    }

    /// Decides every flow whose ClientHello the last packet completed.
    fn decide(&mut self, bench: &mut Bench) -> Vec<TlsVerdict> {
        let now = std::time::Instant::now();
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(e) = self.keeper.record(&mut bench.ebpf, &item, now) {
                out.push(TlsVerdict {
                    sni: e.sni,
                    verdict: e.verdict,
                    reason: e.reason,
                });
            }
        }
        out
    }
}

/// A DNS name in one packet and what the DNS inspector decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NameVerdict {
    pub name: String,
    /// `allow`, `drop`, `nxdomain`, `sinkhole`, `refused` or `audit`.
    pub verdict: &'static str,
}

/// A name the DNS inspector saw, with its verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NameHits {
    pub name: String,
    /// Count by DNS verdict (`allow`, `drop`, `nxdomain`, `sinkhole`, `refused`, `audit`).
    pub verdicts: BTreeMap<&'static str, u64>,
}

/// A flow (both directions) with at least one dropped packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenFlow {
    /// `proto a:port <> b:port`, endpoints in the order of the flow's first packet.
    pub flow: String,
    pub packets: u64,
    pub dropped: u64,
    /// The first dropped packet.
    pub first_drop: usize,
    /// Drops by reason name.
    pub reasons: BTreeMap<&'static str, u64>,
}

/// One packet that the two policies treat differently: another verdict or drop reason (the
/// deciding rule alone is not a difference, since rules are named per policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub packet: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// What `--config` did.
    pub policy: Brief,
    /// What `--against` did.
    pub against: Brief,
}

/// Verdict, reason and rule of one packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Brief {
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// Totals keyed by verdict and by drop reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub packets: u64,
    /// By verdict: `pass`, `drop` and `tx` always present; `redirect`, `aborted` when seen.
    pub verdict: BTreeMap<&'static str, u64>,
    /// Drops by reason name (`palisade_common::reason::NAMES`).
    pub reason: BTreeMap<&'static str, u64>,
}

/// The whole answer of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub totals: Totals,
    /// Packets per rule that decided them (rule name, `#N` or `default`).
    pub rules: BTreeMap<String, u64>,
    pub names: Vec<NameHits>,
    pub broken_flows: Vec<BrokenFlow>,
    /// With `--against`: the other policy's totals and the packets treated differently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against: Option<Against>,
    pub packets: Vec<PacketOutcome>,
}

/// The comparison with a second policy.
#[derive(Debug, Clone, Serialize)]
pub struct Against {
    pub totals: Totals,
    pub differences: Vec<Difference>,
}

const XDP_VERDICTS: [&str; 5] = ["aborted", "drop", "pass", "tx", "redirect"];

fn verdict_name(action: u32) -> &'static str {
    XDP_VERDICTS
        .get(action as usize)
        .copied()
        .unwrap_or("aborted")
}

fn rule_label(policy: &Policy, slot: u32) -> String {
    if slot == DEFAULT_SLOT {
        return "default".into();
    }
    policy
        .firewall
        .rules
        .get(slot as usize)
        .and_then(|r| r.name.clone())
        .unwrap_or_else(|| format!("#{slot}"))
}

/// The flow of a frame as text, and its key with the endpoints in a fixed order (so both
/// directions of a connection share it).
fn flow_of(frame: &[u8]) -> Option<(String, String)> {
    let Ok(Frame::Ip(p)) = packet::parse(frame) else {
        return None;
    };
    let addr = |a: &[u8; 16]| -> IpAddr {
        if p.family == FAMILY_V4 {
            IpAddr::from([a[12], a[13], a[14], a[15]])
        } else {
            IpAddr::from(*a)
        }
    };
    let proto = match p.proto {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        1 => "icmp".to_string(),
        58 => "icmpv6".to_string(),
        n => n.to_string(),
    };
    let end = |a: &[u8; 16], port: u16| match addr(a) {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    };
    let (sport, dport) = if p.proto == 1 || p.proto == 58 {
        (0, 0)
    } else {
        (p.sport, p.dport)
    };
    let (a, b) = (end(&p.src, sport), end(&p.dst, dport));
    let text = format!("{proto} {a} > {b}");
    let key = if (p.src, sport) <= (p.dst, dport) {
        format!("{proto} {a} <> {b}")
    } else {
        format!("{proto} {b} <> {a}")
    };
    Some((text, key))
}

/// Runs every record through a fresh, private copy of the datapath under `policy`.
///
/// # Errors
/// When the object cannot be loaded or the policy installed, or the kernel refuses a run.
pub fn run(policy: &Policy, records: &[capture::Record]) -> Result<Vec<PacketOutcome>> {
    let mut bench = Bench::new().context("loading the kernel programs")?;
    bench.install(policy).context("installing the policy")?;
    let attributed = policy.firewall.rules.len() <= MAX_ATTRIBUTED_RULES;
    let slots: Vec<u32> = (0..policy.firewall.rules.len() as u32)
        .chain([DEFAULT_SLOT])
        .collect();
    let read_rules = |b: &Bench| -> Result<Vec<u64>> {
        slots.iter().map(|&s| Ok(b.rule_hits(s)?.packets)).collect()
    };
    let read_reasons = |b: &Bench| -> Result<Vec<u64>> {
        (0..reason::COUNT)
            .map(|r| crate::testrun::sum_counter(&b.ebpf, "REASON_STATS", r))
            .collect()
    };
    let mut reasons = read_reasons(&bench)?;
    let mut rules = if attributed {
        read_rules(&bench)?
    } else {
        Vec::new()
    };
    let mut tls = TlsDecider::new(&mut bench, policy)?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let (verdict, direction) = if r.outgoing {
            let dropped = run_egress(&bench, &r.frame, r.number)?;
            (if dropped { "drop" } else { "pass" }, "out")
        } else {
            let (action, passed) = bench
                .run_with_output(&r.frame)
                .with_context(|| format!("packet {}: running the XDP program", r.number))?;
            let mut verdict = verdict_name(action);
            // TC ingress sees the frame as XDP left it.
            if verdict == "pass" && run_chain(&bench, &INGRESS_CHAIN, &passed, r.number)? {
                verdict = "drop";
            }
            (verdict, "in")
        };
        let tls = tls.decide(&mut bench);
        let now = read_reasons(&bench)?;
        let reason = (verdict == "drop")
            .then(|| {
                now.iter()
                    .zip(&reasons)
                    .position(|(a, b)| a > b)
                    .map(|i| reason::name(i as u32))
            })
            .flatten();
        reasons = now;
        let mut rule = None;
        if attributed {
            let now = read_rules(&bench)?;
            if let Some(i) = now.iter().zip(&rules).position(|(a, b)| a > b) {
                rule = Some(rule_label(policy, slots[i]));
            }
            rules = now;
        }
        let names = bench
            .drain_dns_events()
            .into_iter()
            .map(|e| NameVerdict {
                name: e.name,
                verdict: e.verdict,
            })
            .collect();
        bench.drain_events();
        out.push(PacketOutcome {
            packet: r.number,
            verdict,
            reason,
            rule,
            names,
            flow: flow_of(&r.frame).map(|f| f.0),
            tls,
            direction,
        });
    }
    Ok(out)
}

/// Marks as sent by the host every record whose IP source lies in one of `hosts` (for
/// captures whose link type does not record the direction).
pub fn mark_sent_by(records: &mut [capture::Record], hosts: &[Cidr]) {
    if hosts.is_empty() {
        return;
    }
    for r in records {
        if let Ok(Frame::Ip(p)) = packet::parse(r.frame.as_slice()) {
            let family = if p.family == FAMILY_V4 {
                Family::V4
            } else {
                Family::V6
            };
            if hosts.iter().any(|h| h.contains(family, &p.src)) {
                r.outgoing = true;
            }
        }
    }
}

fn totals(outcomes: &[PacketOutcome]) -> Totals {
    let mut t = Totals {
        packets: outcomes.len() as u64,
        ..Totals::default()
    };
    for v in ["pass", "drop", "tx"] {
        t.verdict.insert(v, 0);
    }
    for o in outcomes {
        *t.verdict.entry(o.verdict).or_default() += 1;
        if o.verdict == "drop" {
            *t.reason.entry(o.reason.unwrap_or("unknown")).or_default() += 1;
        }
    }
    t
}

fn brief(o: &PacketOutcome) -> Brief {
    Brief {
        verdict: o.verdict,
        reason: o.reason,
        rule: o.rule.clone(),
    }
}

/// Builds the report from one run, and optionally a second under another policy.
#[must_use]
pub fn report(
    records: &[capture::Record],
    outcomes: Vec<PacketOutcome>,
    other: Option<Vec<PacketOutcome>>,
) -> Report {
    let mut rules: BTreeMap<String, u64> = BTreeMap::new();
    let mut names: BTreeMap<String, NameHits> = BTreeMap::new();
    let mut flows: BTreeMap<String, (usize, BrokenFlow)> = BTreeMap::new();
    for (i, (o, r)) in outcomes.iter().zip(records).enumerate() {
        if let Some(rule) = &o.rule {
            *rules.entry(rule.clone()).or_default() += 1;
        }
        for n in &o.names {
            let e = names.entry(n.name.clone()).or_insert_with(|| NameHits {
                name: n.name.clone(),
                ..NameHits::default()
            });
            *e.verdicts.entry(n.verdict).or_default() += 1;
        }
        let Some((text, key)) = flow_of(&r.frame) else {
            continue;
        };
        let (_, f) = flows.entry(key).or_insert_with(|| {
            (
                i,
                BrokenFlow {
                    flow: text.replace(" > ", " <> "),
                    packets: 0,
                    dropped: 0,
                    first_drop: 0,
                    reasons: BTreeMap::new(),
                },
            )
        });
        f.packets += 1;
        if o.verdict == "drop" {
            if f.dropped == 0 {
                f.first_drop = o.packet;
            }
            f.dropped += 1;
            *f.reasons.entry(o.reason.unwrap_or("unknown")).or_default() += 1;
        }
    }
    let mut broken: Vec<(usize, BrokenFlow)> =
        flows.into_values().filter(|(_, f)| f.dropped > 0).collect();
    broken.sort_by_key(|(first, _)| *first);
    let against = other.map(|other| Against {
        totals: totals(&other),
        differences: outcomes
            .iter()
            .zip(&other)
            .filter(|(a, b)| (a.verdict, a.reason) != (b.verdict, b.reason))
            .map(|(a, b)| Difference {
                packet: a.packet,
                flow: a.flow.clone(),
                policy: brief(a),
                against: brief(b),
            })
            .collect(),
    });
    Report {
        totals: totals(&outcomes),
        rules,
        names: names.into_values().collect(),
        broken_flows: broken.into_iter().map(|(_, f)| f).collect(),
        against,
        packets: outcomes,
    }
}

impl Report {
    /// The report as text for a terminal.
    #[must_use]
    pub fn text(&self) -> String {
        let mut s = String::new();
        let t = &self.totals;
        let _ = write!(s, "{} packets:", t.packets);
        for (v, n) in &t.verdict {
            let _ = write!(s, " {v} {n}");
        }
        s.push('\n');
        if !t.reason.is_empty() {
            s.push_str("drops by reason:\n");
            for (r, n) in &t.reason {
                let _ = writeln!(s, "  {r:<24} {n}");
            }
        }
        if !self.rules.is_empty() {
            s.push_str("rules hit:\n");
            for (r, n) in &self.rules {
                let _ = writeln!(s, "  {r:<24} {n}");
            }
        }
        if !self.names.is_empty() {
            s.push_str("DNS names:\n");
            for n in &self.names {
                let v: Vec<String> = n.verdicts.iter().map(|(k, c)| format!("{k} {c}")).collect();
                let _ = writeln!(s, "  {:<40} {}", n.name, v.join(", "));
            }
        }
        if !self.broken_flows.is_empty() {
            s.push_str("flows that would break:\n");
            for f in &self.broken_flows {
                let r: Vec<String> = f.reasons.iter().map(|(k, c)| format!("{k} {c}")).collect();
                let _ = writeln!(
                    s,
                    "  {}: {} of {} packets dropped, first #{} ({})",
                    f.flow,
                    f.dropped,
                    f.packets,
                    f.first_drop,
                    r.join(", ")
                );
            }
        }
        if let Some(a) = &self.against {
            let _ = write!(s, "against: {} packets:", a.totals.packets);
            for (v, n) in &a.totals.verdict {
                let _ = write!(s, " {v} {n}");
            }
            let _ = writeln!(s, "\n{} packets treated differently:", a.differences.len());
            let show = |b: &Brief| {
                let mut t = b.verdict.to_string();
                if let Some(r) = b.reason {
                    let _ = write!(t, " ({r})");
                }
                if let Some(r) = &b.rule {
                    let _ = write!(t, " [{r}]");
                }
                t
            };
            for d in &a.differences {
                let _ = writeln!(
                    s,
                    "  #{} {}: {} -> {}",
                    d.packet,
                    d.flow.as_deref().unwrap_or("(not IP)"),
                    show(&d.policy),
                    show(&d.against)
                );
            }
        }
        s
    }

    /// Packets dropped under the `--config` policy.
    #[must_use]
    pub fn drops(&self) -> u64 {
        self.totals.verdict.get("drop").copied().unwrap_or(0)
    }
}

/// `palisade replay`: reads the policies and the capture, runs them and prints the report.
///
/// # Errors
/// When a policy or the capture cannot be read (the error names the place), or the
/// programs cannot be loaded or run.
pub fn command(a: &crate::cli::ReplayArgs) -> Result<Report> {
    let load = |path: &std::path::Path| -> Result<Policy> {
        crate::policy::config::load_policy(path)
            .map_err(|e| anyhow::anyhow!("{}: {} error(s):\n{e}", path.display(), e.errors.len()))
    };
    let policy = load(&a.config)?;
    let other = a.against.as_deref().map(load).transpose()?;
    let data = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let mut records = capture::read(&data).with_context(|| format!("{}", a.file.display()))?;
    let hosts = a
        .host
        .iter()
        .map(|h| {
            crate::policy::setfile::parse_cidr(h).map_err(|e| anyhow::anyhow!("--host {h}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    mark_sent_by(&mut records, &hosts);
    let outcomes = run(&policy, &records)?;
    let other = other.map(|p| run(&p, &records)).transpose()?;
    let report = report(&records, outcomes, other);
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(report)
}
