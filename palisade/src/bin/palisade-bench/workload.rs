//! The workloads: rule sets shaped like real ones at each scale, and the packets sent through
//! each of them.
//!
//! A rule set of N rules is a blocklist (distinct IPv4 /32 and /24 sources, a few IPv6 /128
//! and /64) with up to 300 service rules (ports, port ranges, source ports, TCP flags, ICMP
//! types, admin networks) spread evenly through it. Spreading them puts a rule of every shape
//! near the top of the list, which stops the search's early exit from helping: the least
//! flattering order for packets that match nothing. A set workload is a single rule whose
//! source is a set of random /32 and /24 blocks.
//!
//! Every workload gets [`PROBES`] packets: hits near the start, middle and end of the list,
//! hits on service rules, and packets that match nothing (the default action). Which rule each
//! packet hits is checked with the userspace classifier before the run, and the kernel's
//! verdict on each is checked during the run.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use palisade::{
    craft::{Frame, L4},
    firewall::{classify, compile},
    policy::{
        config,
        model::{
            Action, AddrMatch, Cidr, Family, FragmentPolicy, IcmpMatch, IpSet, Policy, PortRange,
            Protocol, Rule, TcpFlags,
        },
    },
};
use palisade_common::packet::{self, TCP_ACK, TCP_FIN, TCP_SYN};
use serde::Serialize;

use crate::rng::Rng;

/// Packets per workload.
pub const PROBES: usize = 64;
/// Service rules at most, whatever the size of the blocklist.
const MAX_PORT_RULES: usize = 300;
/// Hits per position class (start, middle, end of the list, service rules).
const HITS_PER_CLASS: usize = 8;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Where in the policy a packet lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeClass {
    /// A blocklist rule in the first percent of the list.
    Early,
    /// A blocklist rule around the middle of the list.
    Middle,
    /// A blocklist rule in the last percent of the list.
    Late,
    /// A service (port, flags, ICMP) rule.
    Port,
    /// A member of the set.
    Set,
    /// No rule: the default action.
    Miss,
}

impl ProbeClass {
    pub const ALL: [Self; 6] = [
        Self::Early,
        Self::Middle,
        Self::Late,
        Self::Port,
        Self::Set,
        Self::Miss,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Early => "early",
            Self::Middle => "middle",
            Self::Late => "late",
            Self::Port => "port",
            Self::Set => "set",
            Self::Miss => "miss",
        }
    }
}

/// One packet of a workload, with the verdict the firewall must give it.
#[derive(Debug, Clone)]
pub struct Probe {
    pub class: ProbeClass,
    pub frame: Vec<u8>,
    /// The XDP action expected from the firewall.
    pub action: u32,
    /// The rule it matches (evaluation index), if any.
    pub rule: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An empty XDP program: the cost of the test harness itself.
    Floor,
    /// N firewall rules.
    Rules,
    /// One rule whose source is a set of N entries.
    Set,
    /// One rule whose source is a set of N single IPv4 addresses (a host blocklist, as
    /// xdp-filter holds one).
    Hosts,
    /// xdp-filter (xdp-tools) holding N IPv4 source addresses: the reference.
    XdpFilter,
}

/// A policy and its packets.
pub struct Workload {
    pub id: String,
    pub kind: Kind,
    pub rules: usize,
    pub set_entries: usize,
    pub port_rules: usize,
    pub policy: Policy,
    pub probes: Vec<Probe>,
}

/// What each rule of a generated list is, to aim packets at it.
#[derive(Clone, Copy)]
enum Spec {
    Block(Cidr),
    Port(usize),
}

/// `1000` -> `1k`, `1000000` -> `1M`.
pub fn short_count(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// A policy with no rules, no sets and nothing else enabled: default allow, non-first
/// fragments matched on layer 3. Parsed from text so that parts of the policy this benchmark
/// does not exercise keep their defaults.
pub fn empty_policy() -> Policy {
    let mut p = config::parse_policy(
        "[firewall]\ndefault = \"allow\"\n",
        "<palisade-bench>",
        Path::new("."),
    )
    .expect("the minimal policy parses");
    p.firewall.fragments = FragmentPolicy::MatchL3;
    p.firewall.log_default = false;
    p
}

pub fn rule(action: Action, src: AddrMatch, protocol: Option<Protocol>) -> Rule {
    Rule {
        name: None,
        priority: 0,
        action,
        log: false,
        src,
        dst: AddrMatch::Any,
        protocol,
        src_ports: None,
        dst_ports: None,
        tcp_flags: None,
        icmp: None,
        state: None,
        ip: palisade::policy::model::IpHeaderMatch::default(),
        link: palisade::policy::model::LinkMatch::default(),
        not: palisade::policy::model::Negation::default(),
        line: 0,
    }
}

pub fn cidr(addr: impl Into<IpAddr>, len: u8) -> Cidr {
    Cidr::new(addr.into(), len).expect("prefix length within the family")
}

/// A random IPv4 unicast address outside the ranges the probes use for other purposes
/// (10/8 and 192.168/16 admin networks, 100/8 misses, 198/8 destinations).
pub fn public_v4(rng: &mut Rng) -> Ipv4Addr {
    loop {
        let a = rng.u32();
        let first = a >> 24;
        if matches!(first, 0 | 10 | 100 | 127 | 169 | 172 | 192 | 198) || first >= 224 {
            continue;
        }
        return Ipv4Addr::from(a);
    }
}

/// A random global IPv6 address in 2400::/5, away from 2001:db8::/32 which the probes use.
fn public_v6(rng: &mut Rng) -> Ipv6Addr {
    let mut s = [0u16; 8];
    s[0] = 0x2400 + rng.below(0x0800) as u16;
    for x in &mut s[1..] {
        *x = rng.u16();
    }
    Ipv6Addr::from(s)
}

/// A blocklist entry: 75 % IPv4 /32, 20 % IPv4 /24, 3 % IPv6 /128, 2 % IPv6 /64.
fn block_cidr(rng: &mut Rng) -> Cidr {
    match rng.below(100) {
        0..75 => cidr(public_v4(rng), 32),
        75..95 => cidr(public_v4(rng), 24),
        95..98 => cidr(public_v6(rng), 128),
        _ => cidr(public_v6(rng), 64),
    }
}

/// A random address inside `c`.
fn host_in(c: &Cidr, rng: &mut Rng) -> IpAddr {
    let mut bytes = c.addr;
    let mask = c.mask();
    for (b, m) in bytes.iter_mut().zip(mask) {
        *b |= (rng.next_u64() as u8) & !m;
    }
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) if c.family == Family::V4 => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

fn miss_v4(rng: &mut Rng) -> IpAddr {
    // 100.64.0.0/10: never in a generated blocklist or set.
    IpAddr::V4(Ipv4Addr::from(0x6440_0000 | (rng.u32() & 0x003f_ffff)))
}

fn miss_v6(rng: &mut Rng) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0x0db8,
        0xffff,
        rng.u16(),
        rng.u16(),
        rng.u16(),
        rng.u16(),
        rng.u16(),
    ))
}

/// A destination of the right family: 198.18.0.0/15 (the benchmarking range) or
/// 2001:db8:1::/48.
fn dst_for(src: IpAddr, rng: &mut Rng) -> IpAddr {
    match src {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(0xc612_0000 | (rng.u32() & 0x0001_ffff))),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0x0db8,
            1,
            0,
            0,
            0,
            rng.u16(),
            rng.u16(),
        )),
    }
}

fn ephemeral(rng: &mut Rng) -> u16 {
    32_768 + (rng.u16() >> 1)
}

fn admin_v4() -> Cidr {
    cidr(Ipv4Addr::new(10, 0, 0, 0), 8)
}

fn office_v4() -> Cidr {
    cidr(Ipv4Addr::new(192, 168, 0, 0), 16)
}

fn admin_v6() -> Cidr {
    cidr(Ipv6Addr::new(0x2001, 0x0db8, 0x0100, 0, 0, 0, 0, 0), 48)
}

const fn service_port(j: usize) -> u16 {
    2000 + (j as u16) * 13
}

/// Service rule `j`: eight templates that together make eight rule shapes.
fn port_rule(j: usize) -> Rule {
    let port = service_port(j);
    let single = Some(PortRange { lo: port, hi: port });
    match j % 8 {
        0 => Rule {
            dst_ports: single,
            ..rule(
                Action::Allow,
                AddrMatch::Cidrs(vec![admin_v4()]),
                Some(Protocol::Tcp),
            )
        },
        1 => Rule {
            dst_ports: single,
            ..rule(Action::Drop, AddrMatch::Any, Some(Protocol::Tcp))
        },
        2 => Rule {
            dst_ports: Some(PortRange {
                lo: port,
                hi: port + 9,
            }),
            ..rule(Action::Drop, AddrMatch::Any, Some(Protocol::Udp))
        },
        3 => Rule {
            dst_ports: single,
            ..rule(
                Action::Allow,
                AddrMatch::Cidrs(vec![office_v4()]),
                Some(Protocol::Udp),
            )
        },
        4 => Rule {
            src_ports: single,
            ..rule(Action::Drop, AddrMatch::Any, Some(Protocol::Udp))
        },
        5 => Rule {
            dst_ports: single,
            tcp_flags: Some(TcpFlags {
                value: TCP_SYN,
                mask: TCP_SYN | TCP_ACK,
            }),
            ..rule(Action::Drop, AddrMatch::Any, Some(Protocol::Tcp))
        },
        6 => Rule {
            icmp: Some(IcmpMatch {
                icmp_type: ((j / 8) % 256) as u8,
                code: None,
            }),
            ..rule(Action::Allow, AddrMatch::Any, Some(Protocol::Icmp))
        },
        _ => Rule {
            dst_ports: single,
            ..rule(
                Action::Allow,
                AddrMatch::Cidrs(vec![admin_v6()]),
                Some(Protocol::Tcp),
            )
        },
    }
}

fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Frame {
    Frame::new(
        src,
        dst,
        L4::Tcp {
            sport,
            dport,
            flags,
        },
    )
}

fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Frame {
    Frame::new(src, dst, L4::Udp { sport, dport })
}

/// A packet that service rule `j` matches.
fn port_probe(j: usize, rng: &mut Rng) -> Frame {
    let port = service_port(j);
    let src = match j % 8 {
        0 => host_in(&admin_v4(), rng),
        3 => host_in(&office_v4(), rng),
        7 => host_in(&admin_v6(), rng),
        _ => miss_v4(rng),
    };
    let dst = dst_for(src, rng);
    let sport = ephemeral(rng);
    match j % 8 {
        0 | 7 => tcp(src, dst, sport, port, TCP_SYN),
        1 => tcp(src, dst, sport, port, TCP_SYN | TCP_ACK),
        2 => udp(src, dst, sport, port + rng.below(10) as u16),
        3 => udp(src, dst, sport, port),
        4 => udp(src, dst, port, ephemeral(rng)),
        5 => tcp(src, dst, sport, port, TCP_SYN),
        _ => Frame::new(
            src,
            dst,
            L4::Icmp {
                icmp_type: ((j / 8) % 256) as u8,
                code: 0,
            },
        ),
    }
}

/// Any traffic from `src`: web, DNS, ICMP echo, a stray FIN.
fn any_traffic(src: IpAddr, rng: &mut Rng) -> Frame {
    let dst = dst_for(src, rng);
    let sport = ephemeral(rng);
    match rng.below(5) {
        0 => tcp(src, dst, sport, 443, TCP_SYN),
        1 => tcp(src, dst, sport, 80, TCP_ACK),
        2 => udp(src, dst, sport, 53),
        3 => tcp(src, dst, sport, ephemeral(rng), TCP_FIN | TCP_ACK),
        _ if src.is_ipv4() => Frame::new(
            src,
            dst,
            L4::Icmp {
                icmp_type: 8,
                code: 0,
            },
        ),
        _ => udp(src, dst, sport, 443),
    }
}

/// What the firewall does with `frame` under `policy`, by the userspace tuple-space
/// classifier.
fn classify_frame(
    policy: &Policy,
    compiled: &compile::CompiledFirewall,
    frame: &[u8],
) -> Result<(u32, Option<u32>)> {
    let Ok(packet::Frame::Ip(p)) = packet::parse(frame) else {
        bail!("a generated frame does not parse as IP");
    };
    let rule = classify::first_match(compiled, &p);
    let action = match rule.map(|r| policy.firewall.rules[r as usize].action) {
        Some(Action::Drop) => XDP_DROP,
        Some(Action::Allow) | None => {
            if rule.is_none() && policy.firewall.default_action == Action::Drop {
                XDP_DROP
            } else {
                XDP_PASS
            }
        }
        Some(Action::RateLimit(_)) => bail!("generated policies have no rate limits"),
        Some(Action::Mark(_) | Action::Mirror(_)) => XDP_PASS,
        Some(Action::Redirect(_) | Action::Steer(_)) => {
            bail!("generated policies have no redirects")
        }
    };
    Ok((action, rule))
}

/// Packets that match nothing.
fn misses(
    n: usize,
    policy: &Policy,
    compiled: Option<&compile::CompiledFirewall>,
    rng: &mut Rng,
) -> Result<Vec<Probe>> {
    let mut out = Vec::with_capacity(n);
    let mut tries = 0;
    while out.len() < n {
        tries += 1;
        if tries > 100 * n {
            bail!("could not find packets that miss every rule");
        }
        let src = if out.len() % 8 == 7 {
            miss_v6(rng)
        } else {
            miss_v4(rng)
        };
        let frame = any_traffic(src, rng).build();
        if let Some(c) = compiled
            && classify_frame(policy, c, &frame)?.1.is_some()
        {
            continue;
        }
        out.push(Probe {
            class: ProbeClass::Miss,
            frame,
            action: XDP_PASS,
            rule: None,
        });
    }
    Ok(out)
}

/// `count` indices spread evenly over `candidates` (repeating when there are fewer).
fn spread(candidates: &[usize], count: usize) -> Vec<usize> {
    if candidates.is_empty() {
        return Vec::new();
    }
    (0..count)
        .map(|k| candidates[k * candidates.len() / count.max(1)])
        .collect()
}

/// The service-rule count for a list of `n` rules.
pub const fn port_rules_for(n: usize) -> usize {
    if n < 100 {
        0
    } else if n / 10 < MAX_PORT_RULES {
        n / 10
    } else {
        MAX_PORT_RULES
    }
}

/// The firewall with `n` rules.
///
/// # Errors
/// When the generated policy does not compile or the packets cannot be aimed.
pub fn rules(n: usize, seed: u64) -> Result<Workload> {
    let mut rng = Rng::new(seed ^ (n as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let ports = port_rules_for(n);
    let mut specs = Vec::with_capacity(n);
    let mut seen = HashSet::with_capacity(n);
    let mut next_port = 0;
    for i in 0..n {
        // `ports` service rules at evenly spaced positions.
        if ports > 0 && (i * ports) / n != ((i + 1) * ports) / n {
            specs.push(Spec::Port(next_port));
            next_port += 1;
            continue;
        }
        let c = loop {
            let c = block_cidr(&mut rng);
            if seen.insert(c) {
                break c;
            }
        };
        specs.push(Spec::Block(c));
    }
    let mut policy = empty_policy();
    policy.firewall.rules = specs
        .iter()
        .map(|s| match s {
            Spec::Block(c) => rule(Action::Drop, AddrMatch::Cidrs(vec![*c]), None),
            Spec::Port(j) => port_rule(*j),
        })
        .collect();
    let compiled = compile::compile(&policy).context("compiling a generated policy")?;

    let mut probes = Vec::with_capacity(PROBES);
    if n > 0 {
        let block: Vec<usize> = (0..n)
            .filter(|&i| matches!(specs[i], Spec::Block(_)))
            .collect();
        let port: Vec<usize> = (0..n)
            .filter(|&i| matches!(specs[i], Spec::Port(_)))
            .collect();
        let window = (n / 100).max(HITS_PER_CLASS);
        let within = |lo: usize, hi: usize| -> Vec<usize> {
            block
                .iter()
                .copied()
                .filter(|&i| i >= lo && i < hi)
                .collect()
        };
        let mid = n / 2;
        let mut targets: Vec<(ProbeClass, usize)> = Vec::new();
        for (class, lo, hi) in [
            (ProbeClass::Early, 0, window),
            (
                ProbeClass::Middle,
                mid.saturating_sub(window / 2),
                mid + window / 2 + 1,
            ),
            (ProbeClass::Late, n.saturating_sub(window), n),
        ] {
            targets.extend(
                spread(&within(lo, hi), HITS_PER_CLASS)
                    .into_iter()
                    .map(|i| (class, i)),
            );
        }
        if port.is_empty() {
            // No service rules in a list this small: more blocklist hits instead.
            targets.extend(
                spread(&block, HITS_PER_CLASS)
                    .into_iter()
                    .map(|i| (ProbeClass::Middle, i)),
            );
        } else {
            targets.extend(
                spread(&port, HITS_PER_CLASS)
                    .into_iter()
                    .map(|i| (ProbeClass::Port, i)),
            );
        }
        for (class, index) in targets {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let frame = match specs[index] {
                    Spec::Block(c) => any_traffic(host_in(&c, &mut rng), &mut rng),
                    Spec::Port(j) => port_probe(j, &mut rng),
                }
                .build();
                let (action, rule) = classify_frame(&policy, &compiled, &frame)?;
                // An earlier rule may cover the packet too (a /24 listed before a /32 inside
                // it, a service rule on the same port): try other packets, then accept.
                if rule == Some(index as u32) || attempt >= 20 {
                    probes.push(Probe {
                        class,
                        frame,
                        action,
                        rule,
                    });
                    break;
                }
            }
        }
    }
    let hits = probes.len();
    probes.extend(misses(PROBES - hits, &policy, Some(&compiled), &mut rng)?);
    Ok(Workload {
        id: format!("rules-{}", short_count(n)),
        kind: Kind::Rules,
        rules: n,
        set_entries: 0,
        port_rules: ports,
        policy,
        probes,
    })
}

/// `base` with one more rule at its end that uses an IP header condition no probe meets, so
/// the verdicts stay and the cost of the condition's shapes shows against `base` measured
/// in the same run: `dscp` (DSCP 46, one shape), `ecn` (CE, one shape), `ttl` (0-9, two
/// shapes: 0-7 and 8-9), `length` (8192-16383, one shape; longer than any probe), and the
/// link conditions `mac` (a source MAC), `vlan` (id 4000) and `iface` (an index no frame
/// arrives on), one shape each.
///
/// # Errors
/// For another `kind`, or when the policy does not compile.
pub fn with_header(base: &Workload, kind: &str) -> Result<Workload> {
    let mut extra = rule(Action::Drop, AddrMatch::Any, None);
    match kind {
        "dscp" => extra.ip.dscp = Some(46),
        "ecn" => extra.ip.ecn = Some(3),
        "ttl" => extra.ip.ttl = Some((0, 9)),
        "length" => extra.ip.length = Some((8192, 16383)),
        // Link conditions no probe meets: every frame's link layer is read (the policy now
        // has a link condition) and the rule's tuple is skipped on a comparison.
        "mac" => extra.link.src_mac = Some([2, 0, 0, 0, 0, 0x99]),
        "vlan" => extra.link.vlan = Some(4000),
        "iface" => extra.link.iface = Some(u32::MAX),
        // Two interfaces no probe arrives on: two tuples skipped on a comparison.
        "ifaces" => {
            extra.link.iface = Some(u32::MAX);
            extra.link.more_ifaces[0] = u32::MAX - 1;
        }
        // Every source outside one /24: a set tuple searched with a "not a member" lookup.
        "not" => {
            extra.src = AddrMatch::Cidrs(vec![
                Cidr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 0)), 24)
                    .context("a valid block")?,
            ]);
            extra.not.src = true;
        }
        // The base policy again, unchanged: what two loads of one policy differ by in this run.
        "same" => {}
        other => bail!(
            "unknown header condition `{other}`; expected dscp, ecn, ttl, length, mac, vlan, \
             iface, ifaces, not or same"
        ),
    }
    let mut policy = base.policy.clone();
    if kind != "same" {
        policy.firewall.rules.push(extra);
    }
    let compiled = compile::compile(&policy).context("compiling a generated policy")?;
    let mut probes = base.probes.clone();
    for p in &mut probes {
        let (action, rule) = classify_frame(&policy, &compiled, &p.frame)?;
        p.action = action;
        p.rule = rule;
    }
    Ok(Workload {
        id: format!("{}+{kind}", base.id),
        kind: base.kind,
        rules: base.rules + usize::from(kind != "same"),
        set_entries: base.set_entries,
        port_rules: base.port_rules,
        policy,
        probes,
    })
}

/// A policy of one drop rule whose source is the set `blocklist` of `entries`.
pub fn set_blocklist(entries: Vec<Cidr>) -> Policy {
    let mut policy = empty_policy();
    policy.sets.push(IpSet {
        name: "blocklist".into(),
        entries,
    });
    policy
        .firewall
        .rules
        .push(rule(Action::Drop, AddrMatch::Set(0), None));
    policy
}

/// One rule that drops sources in a set of `n` entries (70 % /32, 30 % /24, IPv4).
///
/// # Errors
/// When the generated policy does not compile.
pub fn set(n: usize, seed: u64) -> Result<Workload> {
    if n < 2 {
        bail!(
            "--sets: a set of {n} entries cannot be measured: the probes hit both an address \
             and a /24 of the set, so a set needs at least 2 entries"
        );
    }
    let mut rng = Rng::new(seed ^ 0x5e7 ^ (n as u64).wrapping_mul(0x9e37_79b9));
    let mut seen = HashSet::with_capacity(n);
    let mut entries = Vec::with_capacity(n);
    while entries.len() < n {
        // The first two entries are one of each kind, so that the probes find both.
        let len = match entries.len() {
            0 => 32,
            1 => 24,
            _ if rng.chance(70) => 32,
            _ => 24,
        };
        let c = cidr(public_v4(&mut rng), len);
        if seen.insert(c) {
            entries.push(c);
        }
    }
    let policy = set_blocklist(entries);
    // Membership is known by construction (misses come from 100.64.0.0/10, which no entry
    // covers), so the linear userspace set check is not needed; the kernel's verdicts are
    // still checked during the run.
    let members = &policy.sets[0].entries;
    let mut probes = Vec::with_capacity(PROBES);
    let (mut exact, mut blocks) = (0, 0);
    while exact + blocks < PROBES / 2 {
        let c = members[rng.below(members.len() as u64) as usize];
        let want_exact = exact < PROBES / 4;
        if (c.prefix_len == 32) != want_exact {
            continue;
        }
        if want_exact {
            exact += 1;
        } else {
            blocks += 1;
        }
        probes.push(Probe {
            class: ProbeClass::Set,
            frame: any_traffic(host_in(&c, &mut rng), &mut rng).build(),
            action: XDP_DROP,
            rule: Some(0),
        });
    }
    let hits = probes.len();
    probes.extend(misses(PROBES - hits, &policy, None, &mut rng)?);
    Ok(Workload {
        id: format!("set-{}", short_count(n)),
        kind: Kind::Set,
        rules: 1,
        set_entries: n,
        port_rules: 0,
        policy,
        probes,
    })
}

/// One rule whose source is a set of `n` distinct IPv4 addresses: the host blocklist the
/// xdp-filter comparison is about. Half the packets come from members, the rest miss.
///
/// # Errors
/// When the packets cannot be aimed.
pub fn hosts(n: usize, seed: u64) -> Result<Workload> {
    if n == 0 {
        bail!("--hosts: a blocklist of 0 addresses has nothing to hit");
    }
    let mut rng = Rng::new(seed ^ 0x4057 ^ (n as u64).wrapping_mul(0x9e37_79b9));
    let mut seen = HashSet::with_capacity(n);
    let mut entries = Vec::with_capacity(n);
    while entries.len() < n {
        let a = public_v4(&mut rng);
        if seen.insert(a) {
            entries.push(cidr(a, 32));
        }
    }
    let policy = set_blocklist(entries);
    let members = &policy.sets[0].entries;
    let mut probes: Vec<Probe> = (0..PROBES / 2)
        .map(|_| {
            let c = members[rng.below(members.len() as u64) as usize];
            Probe {
                class: ProbeClass::Set,
                frame: any_traffic(host_in(&c, &mut rng), &mut rng).build(),
                action: XDP_DROP,
                rule: Some(0),
            }
        })
        .collect();
    // Misses come from 100.64.0.0/10 and 2001:db8::/32, which no member is in.
    probes.extend(misses(PROBES - probes.len(), &policy, None, &mut rng)?);
    Ok(Workload {
        id: format!("hosts-{}", short_count(n)),
        kind: Kind::Hosts,
        rules: 1,
        set_entries: n,
        port_rules: 0,
        policy,
        probes,
    })
}

/// The IPv4 addresses of a [`hosts`] workload's blocklist.
pub fn host_list(w: &Workload) -> Vec<Ipv4Addr> {
    w.policy
        .sets
        .first()
        .map(|s| {
            s.entries
                .iter()
                .filter(|c| c.family == Family::V4 && c.prefix_len == 32)
                .filter_map(|c| Ipv6Addr::from(c.addr).to_ipv4_mapped())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_hit_their_classes() {
        let w = rules(1000, 7).unwrap();
        assert_eq!(w.probes.len(), PROBES);
        assert_eq!(w.port_rules, 100);
        let early: Vec<_> = w
            .probes
            .iter()
            .filter(|p| p.class == ProbeClass::Early)
            .collect();
        assert_eq!(early.len(), HITS_PER_CLASS);
        assert!(early.iter().all(|p| p.rule.is_some_and(|r| r < 20)));
        let late: Vec<_> = w
            .probes
            .iter()
            .filter(|p| p.class == ProbeClass::Late)
            .collect();
        assert!(late.iter().all(|p| p.rule.is_some_and(|r| r >= 980)));
        assert!(
            w.probes
                .iter()
                .filter(|p| p.class == ProbeClass::Miss)
                .all(|p| p.rule.is_none())
        );
        let tuples = compile::compile(&w.policy).unwrap().tuples.len();
        assert!((8..=14).contains(&tuples), "{tuples} tuples");
    }

    #[test]
    fn tiny_lists_still_have_hits() {
        for n in [1, 5] {
            let w = rules(n, 1).unwrap();
            assert_eq!(w.probes.len(), PROBES);
            assert!(w.probes.iter().any(|p| p.action == XDP_DROP));
        }
        let w = rules(0, 1).unwrap();
        assert!(w.probes.iter().all(|p| p.class == ProbeClass::Miss));
    }

    #[test]
    fn set_probes() {
        let w = set(1000, 3).unwrap();
        let c = compile::compile(&w.policy).unwrap();
        for p in &w.probes {
            assert_eq!(classify_frame(&w.policy, &c, &p.frame).unwrap().0, p.action);
        }
    }

    #[test]
    fn host_blocklists_are_distinct_ipv4_addresses_and_half_the_packets_hit() {
        let w = hosts(1000, 3).unwrap();
        let list = host_list(&w);
        assert_eq!(list.len(), 1000);
        assert_eq!(list.iter().collect::<HashSet<_>>().len(), 1000);
        // The same seed and size make the same list (the xdp-filter reference relies on it).
        assert_eq!(host_list(&hosts(1000, 3).unwrap()), list);
        let c = compile::compile(&w.policy).unwrap();
        assert_eq!(c.tuples.len(), 1);
        assert_ne!(c.tuples[0].keyless, 0);
        assert_eq!(w.probes.len(), PROBES);
        let drops = w.probes.iter().filter(|p| p.action == XDP_DROP).count();
        assert_eq!(drops, PROBES / 2);
        for p in &w.probes {
            assert_eq!(classify_frame(&w.policy, &c, &p.frame).unwrap().0, p.action);
        }
    }
}
