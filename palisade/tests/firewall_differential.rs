//! The XDP firewall in the kernel against the linear reference classifier.
//!
//! Random policies and random frames go through the real program with `BPF_PROG_TEST_RUN`.
//! Two installs per policy:
//!
//! * a *probe* install, where every rule drops and logs and so does the default: each run
//!   then emits exactly one event naming the rule the kernel chose, compared with
//!   `reference::first_match`;
//! * the policy as generated (allow, drop and rate-limit rules, logging or not), where the
//!   kernel's action, event and per-rule counters are compared with `reference::verdict`.
//!
//! Frames are aimed at the rules: addresses sit on or just beyond CIDR edges, ports on or just
//! beyond range edges, flags one bit away from the mask, MAC addresses on or one bit off a
//! rule's, VLAN ids on or one off; negated conditions are met by the same frames. Every run is
//! seeded; a disagreement is shrunk to a minimal policy before it is reported, with the seed
//! to reproduce it.
//!
//! Knobs: `PALISADE_DIFF_SEED` (base seed), `PALISADE_DIFF_POLICIES`, `PALISADE_DIFF_PACKETS`.
//!
//! Hand-picked delicate cases run with the answers written out. A scale test installs 100 000
//! rules and a set of 1 000 000 members, reports how long that takes and spot-checks them.
//!
//! Needs root (or CAP_BPF) and the kernel object; run with `--release` for speed.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use palisade::{
    craft::{ExtHeader, Frame, L4},
    firewall::{
        apply, classify,
        compile::{self, CompiledFirewall},
        reference::{self, Verdict},
    },
    policy::model::{
        Action, AddrMatch, Cidr, Family, Firewall, FragmentPolicy, IcmpMatch, IpHeaderMatch, IpSet,
        LinkMatch, MAX_RULE_IFACES, Negation, Policy, PortRange, Protocol, RateLimit, RatePer,
        Rule, SourcePrefix, TcpFlags,
    },
    testrun::Bench,
};
use palisade_common::{
    event::{FirewallEvent, KIND_FIREWALL},
    firewall::{DEFAULT_SLOT, Link, VLAN_UNTAGGED, read_link},
    packet::{
        self, FAMILY_V4, FRAG_FIRST, FRAG_LATER, FRAG_NONE, Packet, keep_prefix, rate_prefix_bits,
        v4_mapped,
    },
    reason,
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// The `rule` of events that no rule caused (dropped fragments, malformed frames).
const NO_RULE: u32 = u32::MAX;

const DEFAULT_SEED: u64 = 0x5eed_f17e_3a11_0001;

/// Each test loads its own object; running them one at a time keeps the scale timings free
/// of the other tests' load on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = v
                .strip_prefix("0x")
                .map_or_else(|| v.parse(), |hex| u64::from_str_radix(hex, 16));
            parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        }
        Err(_) => default,
    }
}

// ==================================================================== random policies

fn v4_cidr(rng: &mut StdRng) -> Cidr {
    let len = if rng.gen_bool(0.7) {
        *[0u8, 8, 16, 24, 28, 31, 32].choose(rng).unwrap()
    } else {
        rng.gen_range(0..=32)
    };
    let small = |rng: &mut StdRng| {
        if rng.gen_bool(0.6) {
            rng.gen_range(0..4)
        } else {
            rng.r#gen()
        }
    };
    let a = *[10u8, 10, 192, 0, 255].choose(rng).unwrap();
    let addr = Ipv4Addr::new(a, small(rng), small(rng), rng.r#gen());
    Cidr::new(IpAddr::V4(addr), len).unwrap()
}

fn v6_cidr(rng: &mut StdRng) -> Cidr {
    if rng.gen_bool(0.2) {
        // A block of the v4-mapped space, written as IPv6.
        let v4 = v4_cidr(rng);
        let len = rng.gen_range(96..=128);
        return Cidr::new(IpAddr::V6(Ipv6Addr::from(v4.addr)), len).unwrap();
    }
    let len = if rng.gen_bool(0.7) {
        *[0u8, 16, 32, 48, 64, 96, 112, 127, 128]
            .choose(rng)
            .unwrap()
    } else {
        rng.gen_range(0..=128)
    };
    let mut b: [u8; 16] = rng.r#gen();
    b[..6].copy_from_slice(&[
        0x20,
        0x01,
        0x0d,
        0xb8,
        rng.gen_range(0..3),
        rng.gen_range(0..3),
    ]);
    Cidr::new(IpAddr::V6(Ipv6Addr::from(b)), len).unwrap()
}

fn any_cidr(rng: &mut StdRng) -> Cidr {
    if rng.gen_bool(0.6) {
        v4_cidr(rng)
    } else {
        v6_cidr(rng)
    }
}

fn addr_match(rng: &mut StdRng, sets: usize) -> AddrMatch {
    match rng.gen_range(0..10) {
        0..=2 => AddrMatch::Any,
        3..=7 => {
            // Mostly one family per list, sometimes both.
            let n = rng.gen_range(1..=3);
            let family_v4 = rng.gen_bool(0.6);
            let mixed = rng.gen_bool(0.2);
            AddrMatch::Cidrs(
                (0..n)
                    .map(|_| match (mixed, family_v4) {
                        (true, _) => any_cidr(rng),
                        (false, true) => v4_cidr(rng),
                        (false, false) => v6_cidr(rng),
                    })
                    .collect(),
            )
        }
        _ if sets == 0 => AddrMatch::Any,
        _ => AddrMatch::Set(rng.gen_range(0..sets)),
    }
}

fn port_range(rng: &mut StdRng) -> PortRange {
    let lo = if rng.gen_bool(0.6) {
        *[0u16, 1, 22, 53, 80, 443, 1023, 1024, 8080, 65534, 65535]
            .choose(rng)
            .unwrap()
    } else {
        rng.r#gen()
    };
    let width = if rng.gen_bool(0.6) {
        *[0u16, 0, 1, 2, 10, 1000, 40000, u16::MAX]
            .choose(rng)
            .unwrap()
    } else {
        rng.r#gen()
    };
    PortRange {
        lo,
        hi: lo.saturating_add(width),
    }
}

fn tcp_flags(rng: &mut StdRng) -> TcpFlags {
    let (value, mask) = if rng.gen_bool(0.6) {
        *[
            (0x02u8, 0x12u8),
            (0x12, 0x12),
            (0x10, 0x10),
            (0, 0x04),
            (0x01, 0x05),
        ]
        .choose(rng)
        .unwrap()
    } else {
        (rng.r#gen(), rng.gen_range(1..=255))
    };
    TcpFlags {
        value: value & mask,
        mask,
    }
}

fn icmp_match(rng: &mut StdRng) -> IcmpMatch {
    let icmp_type = if rng.gen_bool(0.7) {
        *[0u8, 3, 8, 11, 128, 129, 135, 255].choose(rng).unwrap()
    } else {
        rng.r#gen()
    };
    let code = match rng.gen_range(0..3) {
        0 => None,
        1 => Some(*[0u8, 1, 255].choose(rng).unwrap()),
        _ => Some(rng.r#gen()),
    };
    IcmpMatch { icmp_type, code }
}

/// DSCP, ECN and TTL conditions, each now and then: TTL ranges on the values real packets
/// carry (1, 64, 128, 255) and their edges, or anywhere.
fn ip_header_match(rng: &mut StdRng) -> IpHeaderMatch {
    let ttl = |rng: &mut StdRng| {
        let lo = if rng.gen_bool(0.6) {
            *[0u8, 1, 2, 63, 64, 65, 127, 128, 254, 255]
                .choose(rng)
                .unwrap()
        } else {
            rng.r#gen()
        };
        let width = *[0u8, 0, 1, 3, 7, 10, 64, 200, 255].choose(rng).unwrap();
        (lo, lo.saturating_add(width))
    };
    // IP lengths the crafted frames reach (from 20 to a few hundred bytes), with edges on
    // and beside powers of two, and now and then a range beyond them.
    let length = |rng: &mut StdRng| {
        let lo = if rng.gen_bool(0.7) {
            *[
                0u16, 20, 28, 40, 48, 63, 64, 65, 100, 127, 128, 129, 255, 256,
            ]
            .choose(rng)
            .unwrap()
        } else {
            rng.gen_range(0..400)
        };
        // Narrow: a wide range is many blocks, and beside a TTL range more shapes than a
        // policy may have.
        let width = *[0u16, 0, 1, 3, 7, 15, 31].choose(rng).unwrap();
        (lo, lo.saturating_add(width))
    };
    IpHeaderMatch {
        dscp: rng.gen_bool(0.15).then(|| {
            if rng.gen_bool(0.6) {
                *[0u8, 46, 10, 63].choose(rng).unwrap()
            } else {
                rng.gen_range(0..64)
            }
        }),
        ecn: rng.gen_bool(0.1).then(|| rng.gen_range(0..4)),
        ttl: rng.gen_bool(0.2).then(|| ttl(rng)),
        length: rng.gen_bool(0.15).then(|| length(rng)),
    }
}

/// MAC addresses rules name: the crafted frames' own (`02:00:00:00:00:01` from,
/// `:02` to), and others differing from them in the first, a middle or the last byte.
const MACS: [[u8; 6]; 6] = [
    [2, 0, 0, 0, 0, 1],
    [2, 0, 0, 0, 0, 2],
    [2, 0, 0, 0, 0, 0x0a],
    [3, 0, 0, 0, 0, 1],
    [2, 0, 0, 1, 0, 2],
    [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff],
];

/// VLAN ids rules name: untagged, the priority tag 0, the edges, and a few others.
const VLANS: [u16; 6] = [VLAN_UNTAGGED, 0, 1, 7, 100, 4095];

/// Source and destination MAC and VLAN conditions, each now and then.
fn link_match(rng: &mut StdRng) -> LinkMatch {
    let mut link = LinkMatch {
        src_mac: rng.gen_bool(0.1).then(|| *MACS.choose(rng).unwrap()),
        dst_mac: rng.gen_bool(0.1).then(|| *MACS.choose(rng).unwrap()),
        vlan: rng.gen_bool(0.12).then(|| *VLANS.choose(rng).unwrap()),
        // Test runs arrive on loopback; another index is an interface they never arrive on.
        iface: rng
            .gen_bool(0.1)
            .then(|| *[LOOPBACK, LOOPBACK, 1000].choose(rng).unwrap()),
        more_ifaces: [0; MAX_RULE_IFACES - 1],
    };
    // Now and then an `iface` list, loopback first, last or not at all.
    if link.iface.is_some() && rng.gen_bool(0.4) {
        let lists: [&[u32]; 3] = [&[LOOPBACK, 1000], &[1000, 1001, LOOPBACK], &[1000, 1001]];
        let list = *lists.choose(rng).unwrap();
        link.iface = Some(list[0]);
        for (slot, i) in link.more_ifaces.iter_mut().zip(&list[1..]) {
            *slot = *i;
        }
    }
    link
}

/// Writes the frame's MAC addresses: those the aimed-at rule names (`aim`), or one byte off
/// them (the edges of an exact match), or another rule's, or the palette's.
fn aim_link(rng: &mut StdRng, p: &Policy, aim: LinkMatch, frame: &mut [u8]) {
    let named: Vec<[u8; 6]> = p
        .firewall
        .rules
        .iter()
        .flat_map(|r| [r.link.src_mac, r.link.dst_mac])
        .flatten()
        .collect();
    for (own, at) in [(aim.dst_mac, 0), (aim.src_mac, 6)] {
        let mut mac = match own {
            Some(m) if rng.gen_bool(0.85) => m,
            _ if !named.is_empty() && rng.gen_bool(0.5) => *named.choose(rng).unwrap(),
            _ if rng.gen_bool(0.5) => continue,
            _ => *MACS.choose(rng).unwrap(),
        };
        if rng.gen_bool(0.15) {
            mac[rng.gen_range(0..6)] ^= 1 << rng.gen_range(0..8);
        }
        frame[at..at + 6].copy_from_slice(&mac);
    }
}

/// Rate limits whose outcome does not depend on timing noise: either a bucket so deep it
/// never empties, or one packet per second with no burst.
fn rate_limit(rng: &mut StdRng) -> RateLimit {
    let per = if rng.gen_bool(0.5) {
        RatePer::Source
    } else {
        RatePer::Rule
    };
    if rng.gen_bool(0.5) {
        RateLimit {
            pps: rng.gen_range(1..1000),
            burst: u32::MAX,
            per,
        }
    } else {
        RateLimit {
            pps: 1,
            burst: 1,
            per,
        }
    }
}

/// A rule within what the config checker accepts: ports need TCP or UDP, flags need TCP
/// (with a non-empty mask), ICMP type and code need ICMP or ICMPv6.
fn random_rule(rng: &mut StdRng, sets: usize) -> Rule {
    let protocol = match rng.gen_range(0..12) {
        0..=2 => None,
        3..=5 => Some(Protocol::Tcp),
        6..=7 => Some(Protocol::Udp),
        8 => Some(Protocol::Icmp),
        9 => Some(Protocol::Icmpv6),
        10 => Some(Protocol::Other(47)),
        _ => Some(Protocol::Other(132)),
    };
    let ports = matches!(protocol, Some(Protocol::Tcp | Protocol::Udp));
    let icmp = matches!(protocol, Some(Protocol::Icmp | Protocol::Icmpv6));
    let action = match rng.gen_range(0..10) {
        0..=3 => Action::Drop,
        4..=7 => Action::Allow,
        _ => Action::RateLimit(rate_limit(rng)),
    };
    let mut rule = Rule {
        name: None,
        priority: 0,
        action,
        log: rng.gen_bool(0.7),
        src: addr_match(rng, sets),
        dst: addr_match(rng, sets),
        protocol,
        src_ports: (ports && rng.gen_bool(0.35)).then(|| port_range(rng)),
        dst_ports: (ports && rng.gen_bool(0.6)).then(|| port_range(rng)),
        tcp_flags: (protocol == Some(Protocol::Tcp) && rng.gen_bool(0.3)).then(|| tcp_flags(rng)),
        icmp: (icmp && rng.gen_bool(0.7)).then(|| icmp_match(rng)),
        state: None,
        ip: ip_header_match(rng),
        link: link_match(rng),
        not: Negation::default(),
        line: 0,
    };
    rule.not = negation(rng, &rule);
    rule
}

/// Now and then a condition of `r` negated, as the config checker allows it (a negated
/// protocol only without port, flag and ICMP conditions).
fn negation(rng: &mut StdRng, r: &Rule) -> Negation {
    let mut n = |present: bool| present && rng.gen_bool(0.12);
    Negation {
        src: n(r.src != AddrMatch::Any),
        dst: n(r.dst != AddrMatch::Any),
        sport: n(r.src_ports.is_some()),
        dport: n(r.dst_ports.is_some()),
        proto: n(r.protocol.is_some()
            && r.src_ports.is_none()
            && r.dst_ports.is_none()
            && r.tcp_flags.is_none()
            && r.icmp.is_none()),
    }
}

fn random_policy(rng: &mut StdRng) -> Policy {
    let sets: Vec<IpSet> = (0..rng.gen_range(0..=3))
        .map(|i| IpSet {
            name: format!("set{i}"),
            entries: (0..rng.gen_range(0..8)).map(|_| any_cidr(rng)).collect(),
        })
        .collect();
    let rules = if rng.gen_bool(0.3) {
        palette_rules(rng)
    } else {
        let mut rules: Vec<Rule> = Vec::new();
        for _ in 0..rng.gen_range(1..=16) {
            let rule = if !rules.is_empty() && rng.gen_bool(0.35) {
                let base = rules.choose(rng).unwrap().clone();
                derive_rule(rng, &base)
            } else {
                random_rule(rng, sets.len())
            };
            rules.push(rule);
        }
        rules
    };
    Policy {
        shield: palisade::shield::Shield::default(),
        scrub: palisade::scrub::Scrub::default(),
        nat: palisade::nat::Nat::default(),
        lb: palisade::lb::Lb::default(),
        tls: palisade::tls::Tls::default(),
        dhcp: palisade::dhcp::Dhcp::default(),
        intel: palisade::intel::Intel::default(),
        dlp: palisade::dlp::Dlp::default(),
        geoip: None,
        ids: palisade::ids::Ids::default(),
        firewall: Firewall {
            capacity: Default::default(),
            // Per-source buckets of whole addresses, the default prefixes, or wider ones.
            rate_prefix: SourcePrefix {
                v4: *[32u8, 32, 24, 1].choose(rng).unwrap(),
                v6: *[64u8, 128, 48, 127].choose(rng).unwrap(),
            },
            default_action: if rng.gen_bool(0.5) {
                Action::Drop
            } else {
                Action::Allow
            },
            log_default: rng.gen_bool(0.6),
            fragments: if rng.gen_bool(0.5) {
                FragmentPolicy::Drop
            } else {
                FragmentPolicy::MatchL3
            },
            stateful: false,
            rules,
        },
        conntrack: Default::default(),
        sets,
        dns: Default::default(),
    }
}

/// `c` with another prefix length (host bits cleared).
fn with_prefix(c: &Cidr, len: u8) -> Cidr {
    let max = match c.family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    let mut out = Cidr {
        prefix_len: len.min(max),
        ..*c
    };
    let mask = out.mask();
    for (b, m) in out.addr.iter_mut().zip(mask) {
        *b &= m;
    }
    out
}

/// A rule overlapping `base`: the same conditions with another action, or one condition
/// wider or narrower. Overlaps within and across shapes are where first-match order shows.
fn derive_rule(rng: &mut StdRng, base: &Rule) -> Rule {
    let mut r = base.clone();
    let k: u8 = rng.gen_range(1..=8);
    let resize = |m: &mut AddrMatch, wider: bool| {
        if let AddrMatch::Cidrs(list) = m {
            for c in list.iter_mut() {
                let len = if wider {
                    c.prefix_len.saturating_sub(k)
                } else {
                    c.prefix_len.saturating_add(k)
                };
                *c = with_prefix(c, len);
            }
        }
    };
    match rng.gen_range(0..9) {
        // The same conditions, one of them negated or not any more.
        0 => match k % 4 {
            0 => r.not.src = !r.not.src,
            1 => r.not.dport = !r.not.dport,
            2 => r.not.dst = !r.not.dst,
            _ => {}
        },
        7 => {
            // A wider or narrower TTL range, or none.
            r.ip.ttl = match r.ip.ttl {
                Some((lo, hi)) if k.is_multiple_of(2) => {
                    Some((lo.saturating_sub(k), hi.saturating_add(k)))
                }
                Some((lo, hi)) => Some((lo.saturating_add(k).min(hi), hi)),
                None => Some((64 - k, 64 + k)),
            };
            // A length range moved by a few bytes at one end.
            r.ip.length = r.ip.length.map(|(lo, hi)| {
                let k = u16::from(k);
                (lo.saturating_add(k).min(hi), hi)
            });
        }
        8 => {
            r.ip.dscp = None;
            r.ip.ecn = r.ip.ecn.or(Some(k & 3));
            // Another MAC or VLAN condition, or the same one added.
            r.link.vlan = r
                .link
                .vlan
                .map(|v| if v == VLAN_UNTAGGED { 0 } else { v ^ 1 });
            r.link.dst_mac = r.link.dst_mac.or(Some(MACS[usize::from(k) % MACS.len()]));
            r.link.src_mac = r.link.src_mac.map(|_| MACS[usize::from(k) % MACS.len()]);
        }
        1 => resize(&mut r.src, true),
        2 => resize(&mut r.dst, false),
        3 => {
            r.protocol = None;
            r.src_ports = None;
            r.dst_ports = None;
            r.tcp_flags = None;
            r.icmp = None;
        }
        4 => {
            r.dst_ports = r.dst_ports.map(|p| PortRange {
                lo: p.lo.saturating_sub(u16::from(k) * 7),
                hi: p.hi.saturating_add(u16::from(k)),
            });
        }
        5 => r.src = AddrMatch::Any,
        _ => {
            r.dst_ports = r.dst_ports.map(|p| {
                let port = p.lo.saturating_add(u16::from(k)).min(p.hi);
                PortRange { lo: port, hi: port }
            });
            r.tcp_flags = None;
        }
    }
    r.action = random_rule(rng, 0).action;
    r.log = rng.gen_bool(0.7);
    r
}

/// Rules drawn from a small palette (a block, its sibling, a child block, one destination
/// block, nested port ranges, TCP or any protocol): few shapes, heavy overlap, so frames
/// match several rules in several tuples.
fn palette_rules(rng: &mut StdRng) -> Vec<Rule> {
    let base = if rng.gen_bool(0.6) {
        v4_cidr(rng)
    } else {
        v6_cidr(rng)
    };
    let max = if base.family == Family::V4 { 32 } else { 128 };
    let block = with_prefix(&base, base.prefix_len.clamp(1, max - 4));
    let bit = u32::from(block.stored_prefix_len()) - 1;
    let mut sibling = block;
    sibling.addr[(bit / 8) as usize] ^= 0x80 >> (bit % 8);
    let child = with_prefix(&block, block.prefix_len + 4);
    let other = any_cidr(rng);
    let dst_block = any_cidr(rng);
    let ports = port_range(rng);
    let mid = ports.lo + (ports.hi - ports.lo) / 2;
    let port_chain = [
        None,
        Some(PortRange {
            lo: ports.lo.saturating_sub(100),
            hi: ports.hi.saturating_add(100),
        }),
        Some(ports),
        Some(PortRange { lo: mid, hi: mid }),
    ];
    (0..rng.gen_range(8..=32))
        .map(|_| {
            let protocol = [None, Some(Protocol::Tcp)][rng.gen_range(0..2)];
            let tcp = protocol.is_some();
            let action = random_rule(rng, 0).action;
            Rule {
                name: None,
                priority: 0,
                action,
                log: rng.gen_bool(0.7),
                src: match rng.gen_range(0..6) {
                    0 | 1 => AddrMatch::Any,
                    2 => AddrMatch::Cidrs(vec![block]),
                    3 => AddrMatch::Cidrs(vec![sibling]),
                    4 => AddrMatch::Cidrs(vec![child]),
                    _ => AddrMatch::Cidrs(vec![block, other]),
                },
                dst: if rng.gen_bool(0.2) {
                    AddrMatch::Cidrs(vec![dst_block])
                } else {
                    AddrMatch::Any
                },
                protocol,
                src_ports: (tcp && rng.gen_bool(0.2)).then_some(ports),
                dst_ports: if tcp {
                    port_chain[rng.gen_range(0..4)]
                } else {
                    None
                },
                tcp_flags: match rng.gen_range(0..8) {
                    6 if tcp => Some(TcpFlags {
                        value: 0x02,
                        mask: 0x12,
                    }),
                    7 if tcp => Some(TcpFlags {
                        value: 0x02,
                        mask: 0x02,
                    }),
                    _ => None,
                },
                icmp: None,
                state: None,
                // Nested TTL ranges around 64 and one DSCP: overlapping header conditions in
                // shapes that differ only by their TTL mask.
                ip: IpHeaderMatch {
                    dscp: (rng.gen_range(0..6) == 0).then_some(46),
                    ecn: None,
                    ttl: [None, None, Some((0, 255)), Some((60, 70)), Some((64, 64))]
                        [rng.gen_range(0..5)],
                    length: [None, None, None, Some((0, 65535)), Some((40, 100))]
                        [rng.gen_range(0..5)],
                },
                link: LinkMatch::default(),
                // Overlapping blocks, one of them negated now and then.
                not: Negation {
                    src: rng.gen_range(0..8) == 0,
                    dport: rng.gen_range(0..8) == 0,
                    ..Negation::default()
                },
                line: 0,
            }
        })
        .collect()
}

/// The same classification problem with every outcome reported: every rule drops and logs,
/// and so does the default. The kernel's event then names the rule it chose.
fn probe_variant(p: &Policy) -> Policy {
    let mut p = p.clone();
    for r in &mut p.firewall.rules {
        r.action = Action::Drop;
        r.log = true;
    }
    p.firewall.default_action = Action::Drop;
    p.firewall.log_default = true;
    p
}

// ==================================================================== random frames

/// The blocks an address condition names (a set's members for a set).
fn blocks(p: &Policy, m: &AddrMatch) -> Vec<Cidr> {
    match m {
        AddrMatch::Any => Vec::new(),
        AddrMatch::Cidrs(c) => c.clone(),
        AddrMatch::Set(s) => p.sets[*s].entries.clone(),
    }
}

/// An address on or just beyond an edge of `c`, in the 16-byte stored form. IPv4 blocks
/// stay in the v4-mapped space.
fn edge_addr(rng: &mut StdRng, c: &Cidr) -> [u8; 16] {
    let (base, bits, width) = match c.family {
        Family::V4 => (
            u128::from(u32::from_be_bytes(c.addr[12..].try_into().unwrap())),
            u32::from(c.prefix_len),
            32,
        ),
        Family::V6 => (u128::from_be_bytes(c.addr), u32::from(c.prefix_len), 128),
    };
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    let host = if bits == width { 0 } else { all >> bits };
    let noise: u128 = rng.r#gen();
    let v = match rng.gen_range(0..7) {
        0 => base,
        1 => base | host,
        2 => base.wrapping_sub(1),
        3 => (base | host).wrapping_add(1),
        4 | 5 => base | (noise & host),
        // The sibling block: the last prefix bit flipped.
        _ if bits == 0 => noise,
        _ => (base ^ (1u128 << (width - bits))) | (noise & host),
    } & all;
    match c.family {
        Family::V4 => v4_mapped((v as u32).to_be_bytes()),
        Family::V6 => v.to_be_bytes(),
    }
}

fn port_near(rng: &mut StdRng, r: PortRange) -> u16 {
    match rng.gen_range(0..6) {
        0 => r.lo,
        1 => r.hi,
        2 => r.lo.wrapping_sub(1),
        3 => r.hi.wrapping_add(1),
        _ => rng.gen_range(r.lo..=r.hi),
    }
}

/// The ICMP `type << 8 | code` range of a rule, as the compiler folds it into ports.
fn icmp_range(m: IcmpMatch) -> PortRange {
    let base = u16::from(m.icmp_type) << 8;
    match m.code {
        Some(c) => PortRange {
            lo: base | u16::from(c),
            hi: base | u16::from(c),
        },
        None => PortRange {
            lo: base,
            hi: base | 0xff,
        },
    }
}

/// A frame aimed at a random rule of `p`, or now and then at nothing in particular.
fn random_frame(rng: &mut StdRng, p: &Policy) -> (Frame, LinkMatch) {
    let rules = &p.firewall.rules;
    let aim = (!rules.is_empty() && rng.gen_bool(0.9)).then(|| {
        let mut aim = rules.choose(rng).unwrap().clone();
        // Half the time, conditions the rule leaves open come from a second rule, so the
        // frame tends to match both: overlapping matches in different tuples are where
        // the search order matters.
        if rng.gen_bool(0.5) {
            let other = rules.choose(rng).unwrap();
            if aim.src == AddrMatch::Any {
                aim.src = other.src.clone();
            }
            if aim.dst == AddrMatch::Any {
                aim.dst = other.dst.clone();
            }
            aim.ip.dscp = aim.ip.dscp.or(other.ip.dscp);
            aim.ip.ecn = aim.ip.ecn.or(other.ip.ecn);
            aim.ip.ttl = aim.ip.ttl.or(other.ip.ttl);
            aim.ip.length = aim.ip.length.or(other.ip.length);
            aim.link.src_mac = aim.link.src_mac.or(other.link.src_mac);
            aim.link.dst_mac = aim.link.dst_mac.or(other.link.dst_mac);
            aim.link.vlan = aim.link.vlan.or(other.link.vlan);
            if aim.protocol.is_none() {
                aim.protocol = other.protocol;
                aim.src_ports = other.src_ports;
                aim.dst_ports = other.dst_ports;
                aim.tcp_flags = other.tcp_flags;
                aim.icmp = other.icmp;
            } else if aim.protocol == other.protocol {
                aim.src_ports = aim.src_ports.or(other.src_ports);
                aim.dst_ports = aim.dst_ports.or(other.dst_ports);
                aim.tcp_flags = aim.tcp_flags.or(other.tcp_flags);
                aim.icmp = aim.icmp.or(other.icmp);
            }
        }
        aim
    });
    let target = aim.as_ref();
    let follow = |rng: &mut StdRng| rng.gen_bool(0.85);

    let src_blocks = target.map(|r| blocks(p, &r.src)).unwrap_or_default();
    let dst_blocks = target.map(|r| blocks(p, &r.dst)).unwrap_or_default();
    let (follow_src, follow_dst) = (follow(rng), follow(rng));
    let lead = [(follow_src, &src_blocks), (follow_dst, &dst_blocks)]
        .into_iter()
        .find(|(f, b)| *f && !b.is_empty())
        .map(|(_, b)| b.choose(rng).unwrap().family);
    let family = lead.unwrap_or(if rng.gen_bool(0.6) {
        Family::V4
    } else {
        Family::V6
    });
    let v4 = family == Family::V4;
    let everywhere: Vec<Cidr> = rules
        .iter()
        .flat_map(|r| [blocks(p, &r.src), blocks(p, &r.dst)])
        .flatten()
        .filter(|c| c.family == family)
        .collect();
    let pick_addr = |rng: &mut StdRng, follow: bool, own: &[Cidr]| {
        let own: Vec<&Cidr> = own.iter().filter(|c| c.family == family).collect();
        if follow && !own.is_empty() {
            let c = **own.choose(rng).unwrap();
            edge_addr(rng, &c)
        } else if !everywhere.is_empty() && rng.gen_bool(0.6) {
            let c = *everywhere.choose(rng).unwrap();
            edge_addr(rng, &c)
        } else if v4 {
            v4_mapped(rng.r#gen())
        } else {
            rng.r#gen()
        }
    };
    let src = pick_addr(rng, follow_src, &src_blocks);
    let dst = pick_addr(rng, follow_dst, &dst_blocks);
    // Now and then the IPv4 addresses travel in an IPv6 packet, v4-mapped.
    let ipv6_packet = !v4 || rng.gen_bool(0.1);
    let to_ip = |a: [u8; 16]| {
        if ipv6_packet {
            IpAddr::V6(Ipv6Addr::from(a))
        } else {
            IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
        }
    };

    let proto = match target.and_then(|r| r.protocol) {
        Some(pr) if rng.gen_bool(0.85) => pr.number(),
        _ => *[6u8, 6, 17, 17, 1, 58, 47, 132].choose(rng).unwrap(),
    };
    let sports: Vec<PortRange> = rules.iter().filter_map(|r| r.src_ports).collect();
    let dports: Vec<PortRange> = rules
        .iter()
        .filter_map(|r| r.icmp.map(icmp_range).or(r.dst_ports))
        .collect();
    let port = |rng: &mut StdRng, own: Option<PortRange>, all: &[PortRange]| match own {
        Some(r) if rng.gen_bool(0.85) => port_near(rng, r),
        _ if !all.is_empty() && rng.gen_bool(0.7) => {
            let r = *all.choose(rng).unwrap();
            port_near(rng, r)
        }
        _ => rng.r#gen(),
    };
    let mut raw_icmp = None;
    let l4 = match proto {
        6 | 17 => {
            let sport = port(rng, target.and_then(|r| r.src_ports), &sports);
            let dport = port(rng, target.and_then(|r| r.dst_ports), &dports);
            if proto == 17 {
                L4::Udp { sport, dport }
            } else {
                let flags = match target.and_then(|r| r.tcp_flags) {
                    Some(f) if rng.gen_bool(0.8) => {
                        let free = rng.r#gen::<u8>() & !f.mask;
                        if rng.gen_bool(0.5) {
                            f.value | free
                        } else {
                            // One tested flag wrong.
                            let tested: Vec<u8> = (0..8)
                                .map(|b| 1u8 << b)
                                .filter(|b| b & f.mask != 0)
                                .collect();
                            (f.value ^ tested.choose(rng).unwrap()) | free
                        }
                    }
                    _ => rng.r#gen(),
                };
                L4::Tcp {
                    sport,
                    dport,
                    flags,
                }
            }
        }
        1 | 58 => {
            let [icmp_type, code] =
                port(rng, target.and_then(|r| r.icmp.map(icmp_range)), &dports).to_be_bytes();
            // ICMP on the "wrong" family (protocol 1 in IPv6, 58 in IPv4) as raw bytes.
            if (proto == 1) != ipv6_packet {
                L4::Icmp { icmp_type, code }
            } else {
                raw_icmp = Some([icmp_type, code, 0, 0, 0, 0, 0, 0]);
                L4::Raw { proto }
            }
        }
        _ => L4::Raw { proto },
    };
    let mut payload: Vec<u8> = (0..rng.gen_range(0..24)).map(|_| rng.r#gen()).collect();
    if let Some(header) = raw_icmp {
        payload.splice(0..0, header);
    }
    let mut f = Frame::new(to_ip(src), to_ip(dst), l4);
    f.payload = payload;
    let header = target.map(|r| r.ip).unwrap_or_default();
    let dscp = match header.dscp {
        Some(d) if follow(rng) => d,
        Some(d) if rng.gen_bool(0.5) => d ^ (1 << rng.gen_range(0..6)),
        _ => rng.gen_range(0..64),
    };
    let ecn = match header.ecn {
        Some(e) if follow(rng) => e,
        _ => rng.gen_range(0..4),
    };
    f.tos = dscp << 2 | ecn;
    let ttls: Vec<(u8, u8)> = rules.iter().filter_map(|r| r.ip.ttl).collect();
    let ttl_near = |rng: &mut StdRng, (lo, hi): (u8, u8)| match rng.gen_range(0..6) {
        0 => lo,
        1 => hi,
        2 => lo.wrapping_sub(1),
        3 => hi.wrapping_add(1),
        _ => rng.gen_range(lo..=hi),
    };
    f.ttl = match header.ttl {
        Some(r) if follow(rng) => ttl_near(rng, r),
        _ if !ttls.is_empty() && rng.gen_bool(0.7) => {
            let r = *ttls.choose(rng).unwrap();
            ttl_near(rng, r)
        }
        _ if rng.gen_bool(0.5) => *[1u8, 64, 128, 255].choose(rng).unwrap(),
        _ => rng.r#gen(),
    };
    // The outermost tag: the aimed-at rule's VLAN, one id off it, untagged, or any.
    let outer = match target.and_then(|r| r.link.vlan) {
        Some(VLAN_UNTAGGED) if follow(rng) => Some(None),
        Some(v) if v != VLAN_UNTAGGED && follow(rng) => Some(Some(match rng.gen_range(0..6) {
            0 => v.wrapping_sub(1) & 0x0fff,
            1 => (v + 1) & 0x0fff,
            _ => v,
        })),
        _ => None,
    };
    match (outer, rng.gen_range(0..10)) {
        (Some(None), _) | (None, 0..=6) => {}
        (Some(Some(v)), 0..=6) => f.vlans = vec![v],
        (None, 7 | 8) => f.vlans = vec![rng.gen_range(0..4096)],
        (Some(Some(v)), _) => {
            f.vlans = vec![v, rng.gen_range(0..4096)];
            f.qinq = rng.gen_bool(0.5);
        }
        (None, _) => {
            f.vlans = vec![rng.gen_range(0..4096), rng.gen_range(0..4096)];
            f.qinq = rng.gen_bool(0.5);
        }
    }
    let frag = match rng.gen_range(0..20) {
        0..=12 => FRAG_NONE,
        13..=15 => FRAG_FIRST,
        _ => FRAG_LATER,
    };
    if ipv6_packet {
        if rng.gen_bool(0.15) {
            f.ipv6_ext.push(ExtHeader::Options {
                kind: 0,
                len8: rng.gen_range(0..2),
            });
        }
        match frag {
            FRAG_FIRST => f.ipv6_ext.push(ExtHeader::Fragment {
                offset: 0,
                more: rng.gen_bool(0.8),
            }),
            FRAG_LATER => f.ipv6_ext.push(ExtHeader::Fragment {
                offset: rng.gen_range(1..8192),
                more: rng.r#gen(),
            }),
            _ => {}
        }
        if rng.gen_bool(0.1) {
            f.ipv6_ext.push(ExtHeader::Options {
                kind: 60,
                len8: rng.gen_range(0..3),
            });
        }
    } else {
        f.ipv4_frag = match frag {
            FRAG_FIRST => Some((0, true)),
            FRAG_LATER => Some((rng.gen_range(1..8192), rng.r#gen())),
            _ => None,
        };
        if rng.gen_bool(0.1) {
            f.ipv4_options = vec![1; rng.gen_range(1..=8)];
        }
    }
    // The IP length last, once the headers are chosen: on or beside an edge of the aimed-at
    // rule's `length` range (or another rule's), reached by growing or cutting the payload.
    let lengths: Vec<(u16, u16)> = rules.iter().filter_map(|r| r.ip.length).collect();
    let length_near = |rng: &mut StdRng, (lo, hi): (u16, u16)| match rng.gen_range(0..6) {
        0 => lo,
        1 => hi,
        2 => lo.wrapping_sub(1),
        3 => hi.wrapping_add(1),
        _ => rng.gen_range(lo..=hi),
    };
    let goal = match header.length {
        Some(r) if follow(rng) => Some(length_near(rng, r)),
        _ if !lengths.is_empty() && rng.gen_bool(0.5) => {
            let r = *lengths.choose(rng).unwrap();
            Some(length_near(rng, r))
        }
        _ => None,
    };
    if let Some(goal) = goal {
        let now = parse(&f.build()).ip_len();
        let kept = usize::from(raw_icmp.is_some()) * 8;
        if goal >= now && goal - now <= MAX_GROWTH {
            let grown = f.payload.len() + usize::from(goal - now);
            f.payload.resize(grown, 0x5a);
        } else if goal < now && f.payload.len() >= kept + usize::from(now - goal) {
            let cut = f.payload.len() - usize::from(now - goal);
            f.payload.truncate(cut);
        }
    }
    (f, target.map(|r| r.link).unwrap_or_default())
}

/// The most payload a frame grows by to reach a `length` edge: frames stay within what a
/// test run takes.
const MAX_GROWTH: u16 = 1400;

fn parse(frame: &[u8]) -> Packet {
    match packet::parse(frame) {
        Ok(packet::Frame::Ip(p)) => p,
        other => panic!("crafted frame did not parse as IP: {other:?}\n{frame:02x?}"),
    }
}

/// The index of the loopback interface, where every test run arrives.
const LOOPBACK: u32 = 1;

/// The frame's link-layer values, as the kernel sees them in a test run.
fn link(frame: &[u8]) -> Link {
    Link {
        ifindex: LOOPBACK,
        ..read_link(frame).expect("crafted frames have an Ethernet header")
    }
}

// ==================================================================== the comparison

/// What one run looked like from outside: the XDP action and the event, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    action: u32,
    /// (rule, reason) of the firewall event.
    event: Option<(u32, u32)>,
}

fn run(bench: &mut Bench, frame: &[u8]) -> (Seen, Vec<FirewallEvent>) {
    let action = bench.run(frame).expect("test run");
    let events: Vec<FirewallEvent> = bench
        .drain_events()
        .into_iter()
        .filter(|e| e.kind == KIND_FIREWALL)
        .collect();
    let event = match events.as_slice() {
        [] => None,
        [e] => Some((e.rule, e.reason)),
        many => panic!("one run emitted {} firewall events: {many:?}", many.len()),
    };
    (Seen { action, event }, events)
}

fn install(bench: &mut Bench, p: &Policy) -> CompiledFirewall {
    let c = compile::compile(p).expect("random policies compile");
    bench.install(p).expect("install");
    c
}

/// What the probe install must show: every packet dropped with one event naming the rule.
fn probe_expect(p: &Policy, pkt: &Packet, link: &Link) -> Seen {
    let event = if pkt.frag == FRAG_LATER && p.firewall.fragments == FragmentPolicy::Drop {
        (NO_RULE, reason::FRAGMENT)
    } else {
        match reference::first_match_link(p, pkt, link) {
            Some(rule) => (rule, reason::RULE),
            None => (DEFAULT_SLOT, reason::DEFAULT),
        }
    };
    Seen {
        action: XDP_DROP,
        event: Some(event),
    }
}

/// Token buckets of the one-per-second rate limits, by (rule, source or zero): the time
/// taken just before the run that last passed.
type Buckets = HashMap<(u32, [u8; 16]), Instant>;

/// What the policy as generated must do with `pkt`. `None` when the outcome legitimately
/// depends on timing (a one-per-second bucket that may or may not have refilled).
fn verdict_expect(
    p: &Policy,
    pkt: &Packet,
    link: &Link,
    buckets: &Buckets,
    after_run: Instant,
) -> Option<Seen> {
    let fw = &p.firewall;
    let drop = |rule: u32, why: u32, log: bool| Seen {
        action: XDP_DROP,
        event: log.then_some((rule, why)),
    };
    let pass = Seen {
        action: XDP_PASS,
        event: None,
    };
    Some(match reference::verdict_link(p, pkt, link) {
        Verdict::Pass { .. } => pass,
        Verdict::Drop {
            rule: Some(rule),
            reason: why,
        } => drop(rule, why, fw.rules[rule as usize].log),
        Verdict::Drop { rule: None, reason } if reason == reason::FRAGMENT => {
            drop(NO_RULE, reason, fw.log_default)
        }
        Verdict::Drop { rule: None, reason } => drop(DEFAULT_SLOT, reason, fw.log_default),
        Verdict::RateLimit { rule } => {
            let Action::RateLimit(rl) = fw.rules[rule as usize].action else {
                unreachable!("rate-limit verdict for a rule without a rate")
            };
            if rl.burst > 1 {
                pass
            } else {
                match buckets.get(&bucket_key(p, rule, rl, pkt)) {
                    None => pass,
                    // The bucket refills one second after the last pass. `last` was taken
                    // before that run and `after_run` after this one, so if they are less
                    // than a second apart, so were the kernel's clock readings: drop.
                    Some(&last) if after_run.duration_since(last) < Duration::from_secs(1) => {
                        drop(rule, reason::RATE_LIMIT, fw.rules[rule as usize].log)
                    }
                    Some(_) => return None,
                }
            }
        }
    })
}

fn bucket_key(p: &Policy, rule: u32, rl: RateLimit, pkt: &Packet) -> (u32, [u8; 16]) {
    let addr = if rl.per == RatePer::Source {
        let prefix = p.firewall.rate_prefix;
        let bits = rate_prefix_bits(pkt.family == FAMILY_V4, prefix.v4, prefix.v6);
        keep_prefix(&pkt.src, bits)
    } else {
        [0; 16]
    };
    (rule, addr)
}

/// One random policy and its frames, both installs. Returns a description of the first
/// disagreement, and counts what was exercised.
fn check_policy(
    bench: &mut Bench,
    p: &Policy,
    frames: &[Vec<u8>],
    tally: &mut Tally,
) -> Result<(), Failure> {
    // --- probe: which rule, exactly.
    let probe = probe_variant(p);
    let compiled = install(bench, &probe);
    let generation = apply::control(&bench.ebpf).unwrap().active_gen;
    for (i, frame) in frames.iter().enumerate() {
        let (pkt, link) = (parse(frame), link(frame));
        let want = probe_expect(&probe, &pkt, &link);
        let userspace = classify::first_match_link(&compiled, &pkt, &link);
        let linear = reference::first_match_link(&probe, &pkt, &link);
        if userspace != linear {
            return Err(
                Failure::new("userspace tuple search vs reference", i, frame, p)
                    .detail(format!("tuple search {userspace:?}, reference {linear:?}")),
            );
        }
        let (seen, events) = run(bench, frame);
        if seen != want {
            return Err(
                Failure::new("kernel rule vs reference (probe install)", i, frame, p)
                    .detail(format!("kernel {seen:?}, reference {want:?}")),
            );
        }
        let e = &events[0];
        let fields_ok = e.generation == generation
            && e.family == pkt.family
            && e.proto == pkt.proto
            && e.src == pkt.src
            && e.dst == pkt.dst
            && e.sport == pkt.sport
            && e.dport == pkt.dport
            && e.packet_len as usize == frame.len();
        if !fields_ok {
            return Err(Failure::new("event fields", i, frame, p).detail(format!(
                "event {e:?}\npacket {pkt:?}, generation {generation}"
            )));
        }
        tally.count(&pkt, linear, p, want.event.unwrap().1);
    }

    // --- the policy as it is: actions, logging, counters.
    install(bench, p);
    let mut buckets = Buckets::new();
    let mut hits: HashMap<u32, (u64, u64)> = HashMap::new();
    for (i, frame) in frames.iter().enumerate() {
        let (pkt, link) = (parse(frame), link(frame));
        let before = Instant::now();
        let (seen, _) = run(bench, frame);
        let want = verdict_expect(p, &pkt, &link, &buckets, Instant::now());
        if want.is_some_and(|w| w != seen) {
            return Err(
                Failure::new("kernel verdict vs reference::verdict", i, frame, p).detail(format!(
                    "kernel {seen:?}, reference {want:?} ({:?})",
                    reference::verdict_link(p, &pkt, &link)
                )),
            );
        }
        if let Verdict::RateLimit { rule } = reference::verdict_link(p, &pkt, &link) {
            if let Action::RateLimit(rl) = p.firewall.rules[rule as usize].action
                && seen.action == XDP_PASS
            {
                buckets.insert(bucket_key(p, rule, rl, &pkt), before);
            }
            tally.rate_limited += 1;
        }
        let dropped_fragment =
            pkt.frag == FRAG_LATER && p.firewall.fragments == FragmentPolicy::Drop;
        if !dropped_fragment {
            let slot = reference::first_match_link(p, &pkt, &link).unwrap_or(DEFAULT_SLOT);
            let h = hits.entry(slot).or_default();
            h.0 += 1;
            h.1 += frame.len() as u64;
        }
    }
    let slots = (0..p.firewall.rules.len() as u32).chain([DEFAULT_SLOT]);
    for slot in slots {
        let got = bench.rule_hits(slot).expect("rule counters");
        let want = hits.get(&slot).copied().unwrap_or_default();
        if (got.packets, got.bytes) != want {
            return Err(
                Failure::new("per-rule counters", 0, &frames[0], p).detail(format!(
                    "slot {slot}: kernel counted {} packets / {} bytes, reference {} / {}",
                    got.packets, got.bytes, want.0, want.1
                )),
            );
        }
    }
    Ok(())
}

/// A disagreement, with what is needed to reproduce it.
#[derive(Debug)]
struct Failure {
    what: &'static str,
    index: usize,
    frame: Vec<u8>,
    policy: Box<Policy>,
    detail: String,
}

impl Failure {
    fn new(what: &'static str, index: usize, frame: &[u8], policy: &Policy) -> Self {
        Self {
            what,
            index,
            frame: frame.to_vec(),
            policy: Box::new(policy.clone()),
            detail: String::new(),
        }
    }

    fn detail(mut self, d: String) -> Self {
        self.detail = d;
        self
    }
}

/// Whether `frame` alone still shows a probe disagreement under `p`.
fn probe_disagrees(bench: &mut Bench, p: &Policy, frame: &[u8]) -> bool {
    let probe = probe_variant(p);
    let Ok(c) = compile::compile(&probe) else {
        return false;
    };
    bench.install(&probe).expect("install");
    let (pkt, link) = (parse(frame), link(frame));
    let (seen, _) = run(bench, frame);
    seen != probe_expect(&probe, &pkt, &link)
        || classify::first_match_link(&c, &pkt, &link)
            != reference::first_match_link(&probe, &pkt, &link)
}

/// Whether `frame` alone, first after a fresh install, still shows a verdict disagreement.
fn verdict_disagrees(bench: &mut Bench, p: &Policy, frame: &[u8]) -> bool {
    if compile::compile(p).is_err() {
        return false;
    }
    bench.install(p).expect("install");
    let (pkt, link) = (parse(frame), link(frame));
    let want = verdict_expect(p, &pkt, &link, &Buckets::new(), Instant::now());
    let (seen, _) = run(bench, frame);
    want.is_some_and(|w| w != seen)
}

/// Greedy shrinking: drop rules, CIDR alternatives and set members while `still_fails`.
fn minimise(
    bench: &mut Bench,
    p: &Policy,
    frame: &[u8],
    still_fails: fn(&mut Bench, &Policy, &[u8]) -> bool,
) -> Option<Policy> {
    if !still_fails(bench, p, frame) {
        return None;
    }
    let mut best = p.clone();
    loop {
        let mut candidates: Vec<Policy> = Vec::new();
        for i in 0..best.firewall.rules.len() {
            let mut c = best.clone();
            c.firewall.rules.remove(i);
            candidates.push(c);
        }
        for i in 0..best.firewall.rules.len() {
            for side in 0..2 {
                let r = &best.firewall.rules[i];
                let AddrMatch::Cidrs(list) = (if side == 0 { &r.src } else { &r.dst }) else {
                    continue;
                };
                if list.len() < 2 {
                    continue;
                }
                for j in 0..list.len() {
                    let mut c = best.clone();
                    let r = &mut c.firewall.rules[i];
                    if let AddrMatch::Cidrs(l) = if side == 0 { &mut r.src } else { &mut r.dst } {
                        l.remove(j);
                    }
                    candidates.push(c);
                }
            }
        }
        for s in 0..best.sets.len() {
            for j in 0..best.sets[s].entries.len() {
                let mut c = best.clone();
                c.sets[s].entries.remove(j);
                candidates.push(c);
            }
        }
        for (i, r) in best.firewall.rules.iter().enumerate() {
            let simpler = [
                (r.src_ports.is_some(), 0),
                (r.dst_ports.is_some(), 1),
                (r.tcp_flags.is_some(), 2),
                (r.icmp.is_some(), 3),
                (r.src != AddrMatch::Any, 4),
                (r.dst != AddrMatch::Any, 5),
            ];
            for (applies, what) in simpler {
                if !applies {
                    continue;
                }
                let mut c = best.clone();
                let r = &mut c.firewall.rules[i];
                match what {
                    0 => r.src_ports = None,
                    1 => r.dst_ports = None,
                    2 => r.tcp_flags = None,
                    3 => r.icmp = None,
                    4 => r.src = AddrMatch::Any,
                    _ => r.dst = AddrMatch::Any,
                }
                candidates.push(c);
            }
        }
        match candidates
            .into_iter()
            .find(|c| still_fails(bench, c, frame))
        {
            Some(c) => best = c,
            None => return Some(best),
        }
    }
}

fn describe_policy(p: &Policy) -> String {
    let mut s = String::new();
    let fw = &p.firewall;
    let _ = writeln!(
        s,
        "default {:?} (log {}), fragments {:?}",
        fw.default_action, fw.log_default, fw.fragments
    );
    for (i, set) in p.sets.iter().enumerate() {
        let _ = writeln!(
            s,
            "set {i}: {:?}",
            set.entries.iter().map(show_cidr).collect::<Vec<_>>()
        );
    }
    for (i, r) in fw.rules.iter().enumerate() {
        let addr = |m: &AddrMatch| match m {
            AddrMatch::Any => "any".to_owned(),
            AddrMatch::Cidrs(c) => format!("{:?}", c.iter().map(show_cidr).collect::<Vec<_>>()),
            AddrMatch::Set(s) => format!("set {s}"),
        };
        let _ = writeln!(
            s,
            "rule {i}: {:?} log={} src {} dst {} proto {:?} sport {:?} dport {:?} flags {:?} icmp {:?} \
             ip {:?} link {:?}",
            r.action,
            r.log,
            addr(&r.src),
            addr(&r.dst),
            r.protocol,
            r.src_ports,
            r.dst_ports,
            r.tcp_flags,
            r.icmp,
            r.ip,
            r.link
        );
    }
    s
}

fn show_cidr(c: &Cidr) -> String {
    let addr = match c.family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(
            c.addr[12], c.addr[13], c.addr[14], c.addr[15],
        )),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(c.addr)),
    };
    format!("{addr}/{}", c.prefix_len)
}

fn show_packet(p: &Packet) -> String {
    let addr = |a: &[u8; 16]| {
        if p.family == FAMILY_V4 {
            IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*a))
        }
    };
    format!(
        "v{} {} -> {} proto {} sport {} dport {:#06x} ({}) flags {:#04x} frag {} tos {:#04x} \
         ttl {} length {}",
        p.family,
        addr(&p.src),
        addr(&p.dst),
        p.proto,
        p.sport,
        p.dport,
        p.dport,
        p.tcp_flags,
        p.frag,
        p.tos,
        p.ttl,
        p.ip_len()
    )
}

/// What the random frames exercised, so a generator gone blind shows up as a failure.
#[derive(Debug, Default)]
struct Tally {
    packets: u64,
    by_rule: u64,
    by_later_rule: u64,
    by_default: u64,
    fragments_dropped: u64,
    rule_set: u64,
    v4: u64,
    v6: u64,
    later_fragments: u64,
    first_fragments: u64,
    rate_limited: u64,
    /// Frames decided by a rule with a DSCP, ECN, TTL or length condition.
    rule_header: u64,
    /// Frames decided by a rule with a `length` condition that is not every length.
    rule_length: u64,
    /// Frames decided by a rule with a MAC condition.
    rule_link: u64,
    /// Frames decided by a rule with a VLAN condition.
    rule_vlan: u64,
    /// Frames decided by a rule with an interface condition.
    rule_iface: u64,
    /// Frames decided by a rule with a negated address, port or protocol.
    rule_not: u64,
}

impl Tally {
    fn count(&mut self, pkt: &Packet, rule: Option<u32>, p: &Policy, why: u32) {
        self.packets += 1;
        match why {
            reason::FRAGMENT => self.fragments_dropped += 1,
            reason::DEFAULT => self.by_default += 1,
            _ => {
                self.by_rule += 1;
                if rule.is_some_and(|r| r > 0) {
                    self.by_later_rule += 1;
                }
                let r = &p.firewall.rules[rule.unwrap() as usize];
                if matches!(r.src, AddrMatch::Set(_)) || matches!(r.dst, AddrMatch::Set(_)) {
                    self.rule_set += 1;
                }
                if r.ip != IpHeaderMatch::default() {
                    self.rule_header += 1;
                }
                if r.ip.length.is_some_and(|l| l != (0, 65535)) {
                    self.rule_length += 1;
                }
                if r.link.src_mac.is_some() || r.link.dst_mac.is_some() {
                    self.rule_link += 1;
                }
                if r.link.vlan.is_some() {
                    self.rule_vlan += 1;
                }
                if r.link.iface.is_some() {
                    self.rule_iface += 1;
                }
                if r.not != Negation::default() {
                    self.rule_not += 1;
                }
            }
        }
        if pkt.family == FAMILY_V4 {
            self.v4 += 1;
        } else {
            self.v6 += 1;
        }
        match pkt.frag {
            FRAG_LATER => self.later_fragments += 1,
            FRAG_FIRST => self.first_fragments += 1,
            _ => {}
        }
    }
}

#[test]
fn kernel_agrees_with_reference_on_random_policies() {
    let _serial = serial();
    let base_seed = env_u64("PALISADE_DIFF_SEED", DEFAULT_SEED);
    let policies = env_u64("PALISADE_DIFF_POLICIES", 30);
    let packets = env_u64("PALISADE_DIFF_PACKETS", 300);
    let started = Instant::now();
    let mut bench = Bench::new().expect("loading the kernel object (needs root)");
    let mut tally = Tally::default();
    for n in 0..policies {
        let seed = base_seed.wrapping_add(n);
        let mut rng = StdRng::seed_from_u64(seed);
        let policy = random_policy(&mut rng);
        let frames: Vec<Vec<u8>> = (0..packets)
            .map(|_| {
                let (f, aim) = random_frame(&mut rng, &policy);
                let mut bytes = f.build();
                aim_link(&mut rng, &policy, aim, &mut bytes);
                bytes
            })
            .collect();
        if let Err(f) = check_policy(&mut bench, &policy, &frames, &mut tally) {
            let (pkt, link) = (parse(&f.frame), link(&f.frame));
            let shrink: fn(&mut Bench, &Policy, &[u8]) -> bool =
                if f.what.contains("verdict") || f.what.contains("counters") {
                    verdict_disagrees
                } else {
                    probe_disagrees
                };
            let minimal = minimise(&mut bench, &f.policy, &f.frame, shrink).map_or_else(
                || {
                    "(not shrunk: a single install of this policy does not show it, so it \
                     depends on what was installed before, e.g. the other generation)\n"
                        .to_owned()
                },
                |m| {
                    let mp = probe_variant(&m);
                    format!(
                        "{}reference first match {:?}, verdict {:?}\n",
                        describe_policy(&m),
                        reference::first_match_link(&mp, &pkt, &link),
                        reference::verdict_link(&m, &pkt, &link)
                    )
                },
            );
            panic!(
                "{}: policy seed {seed:#x} (reproduce with PALISADE_DIFF_SEED={seed:#x} \
                 PALISADE_DIFF_POLICIES=1 PALISADE_DIFF_PACKETS={packets}), frame #{}\n{}\n\
                 packet: {}\nframe: {:02x?}\n--- policy\n{}--- minimal policy\n{}",
                f.what,
                f.index,
                f.detail,
                show_packet(&pkt),
                f.frame,
                describe_policy(&f.policy),
                minimal
            );
        }
    }
    eprintln!(
        "{policies} policies x {packets} frames (seed {base_seed:#x}) in {:.1?}: {tally:?}",
        started.elapsed()
    );
    // The comparison only means something if the frames reach the rules.
    let t = &tally;
    assert!(
        t.by_rule * 10 > t.packets * 3,
        "too few frames matched a rule: {t:?}"
    );
    assert!(
        t.by_later_rule * 10 > t.packets,
        "too few frames matched a later rule: {t:?}"
    );
    assert!(
        t.by_default * 10 > t.packets,
        "too few frames fell to the default: {t:?}"
    );
    if policies >= 10 {
        assert!(
            t.rule_set > 0
                && t.rule_header > 0
                && t.rule_length > 0
                && t.rule_link > 0
                && t.rule_vlan > 0
                && t.rule_iface > 0
                && t.rule_not > 0
                && t.fragments_dropped > 0
                && t.rate_limited > 0,
            "{t:?}"
        );
        assert!(t.later_fragments > 0 && t.first_fragments > 0 && t.v4 > 0 && t.v6 > 0);
    }
}

// ==================================================================== hand-picked cases

fn rule(src: AddrMatch, dst: AddrMatch, protocol: Option<Protocol>) -> Rule {
    Rule {
        name: None,
        priority: 0,
        action: Action::Drop,
        log: true,
        src,
        dst,
        protocol,
        src_ports: None,
        dst_ports: None,
        tcp_flags: None,
        icmp: None,
        state: None,
        ip: IpHeaderMatch::default(),
        link: LinkMatch::default(),
        not: Negation::default(),
        line: 0,
    }
}

fn cidrs(list: &[&str]) -> AddrMatch {
    AddrMatch::Cidrs(
        list.iter()
            .map(|c| {
                let (a, l) = c.split_once('/').unwrap();
                Cidr::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
            })
            .collect(),
    )
}

fn hand_policy(rules: Vec<Rule>, sets: Vec<IpSet>, fragments: FragmentPolicy) -> Policy {
    Policy {
        shield: palisade::shield::Shield::default(),
        scrub: palisade::scrub::Scrub::default(),
        nat: palisade::nat::Nat::default(),
        lb: palisade::lb::Lb::default(),
        tls: palisade::tls::Tls::default(),
        dhcp: palisade::dhcp::Dhcp::default(),
        intel: palisade::intel::Intel::default(),
        dlp: palisade::dlp::Dlp::default(),
        geoip: None,
        ids: palisade::ids::Ids::default(),
        firewall: Firewall {
            rate_prefix: Default::default(),
            capacity: Default::default(),
            default_action: Action::Drop,
            log_default: true,
            fragments,
            stateful: false,
            rules,
        },
        conntrack: Default::default(),
        sets,
        dns: Default::default(),
    }
}

/// Cases known to be delicate, with the rule written out by hand (and checked against the
/// reference too): the search's early stop, fragments against port rules, v4-mapped
/// addresses, ICMP type/code against ports, VLAN tags, set sides.
#[test]
fn kernel_gets_hand_picked_cases_right() {
    let _serial = serial();
    let mut bench = Bench::new().expect("loading the kernel object (needs root)");
    let tcp = Some(Protocol::Tcp);
    let with_ports = |mut r: Rule, lo, hi| {
        r.dst_ports = Some(PortRange { lo, hi });
        r
    };
    let later = |mut f: Frame| {
        if f.src.is_ipv4() {
            f.ipv4_frag = Some((3, true));
        } else {
            f.ipv6_ext = vec![ExtHeader::Fragment {
                offset: 3,
                more: false,
            }];
        }
        f
    };
    let icmp_rule = |proto, icmp_type, code| Rule {
        icmp: Some(IcmpMatch { icmp_type, code }),
        ..rule(AddrMatch::Any, AddrMatch::Any, Some(proto))
    };
    let udp = Some(Protocol::Udp);
    /// A name, a policy, and frames with the rule (or slot) each must land on.
    type Case = (&'static str, Policy, Vec<(Frame, u32)>);
    let cases: Vec<Case> = vec![
        (
            "a later tuple can only improve the match",
            hand_policy(
                vec![
                    rule(AddrMatch::Any, AddrMatch::Any, udp),
                    with_ports(rule(AddrMatch::Any, AddrMatch::Any, tcp), 5, 5),
                    rule(AddrMatch::Any, AddrMatch::Any, udp),
                    rule(AddrMatch::Any, AddrMatch::Any, tcp),
                    with_ports(rule(AddrMatch::Any, AddrMatch::Any, tcp), 80, 80),
                ],
                vec![],
                FragmentPolicy::MatchL3,
            ),
            vec![
                (Frame::tcp("10.0.0.1", "10.0.0.2", 1, 80, 0x02), 3),
                (Frame::tcp("10.0.0.1", "10.0.0.2", 1, 5, 0x02), 1),
                (Frame::udp("10.0.0.1", "10.0.0.2", 1, 80), 0),
            ],
        ),
        (
            "non-first fragments skip port rules, even ones covering port 0",
            hand_policy(
                vec![
                    with_ports(rule(AddrMatch::Any, AddrMatch::Any, tcp), 0, 100),
                    Rule {
                        tcp_flags: Some(TcpFlags {
                            value: 0,
                            mask: 0x02,
                        }),
                        ..rule(AddrMatch::Any, AddrMatch::Any, tcp)
                    },
                    icmp_rule(Protocol::Icmp, 0, None),
                    rule(cidrs(&["10.0.0.0/8"]), AddrMatch::Any, tcp),
                ],
                vec![],
                FragmentPolicy::MatchL3,
            ),
            vec![
                (later(Frame::tcp("10.0.0.1", "10.0.0.2", 1, 80, 0)), 3),
                (
                    later(Frame::tcp("11.0.0.1", "10.0.0.2", 1, 80, 0)),
                    DEFAULT_SLOT,
                ),
                (
                    later(Frame::icmp("10.0.0.1", "10.0.0.2", 0, 0)),
                    DEFAULT_SLOT,
                ),
                (Frame::tcp("10.0.0.1", "10.0.0.2", 1, 80, 0x02), 0),
                (Frame::tcp("10.0.0.1", "10.0.0.2", 1, 180, 0x10), 1),
                (Frame::icmp("11.0.0.1", "10.0.0.2", 0, 7), 2),
                (
                    later(Frame::tcp("2001:db8::1", "2001:db8::2", 1, 80, 0)),
                    DEFAULT_SLOT,
                ),
            ],
        ),
        (
            "fragments dropped by policy name no rule",
            hand_policy(
                vec![rule(AddrMatch::Any, AddrMatch::Any, None)],
                vec![],
                FragmentPolicy::Drop,
            ),
            vec![
                (later(Frame::udp("10.0.0.1", "10.0.0.2", 1, 2)), NO_RULE),
                (
                    later(Frame::udp("2001:db8::1", "2001:db8::2", 1, 2)),
                    NO_RULE,
                ),
                (Frame::udp("10.0.0.1", "10.0.0.2", 1, 2), 0),
            ],
        ),
        (
            "v4-mapped addresses in IPv6 packets are IPv6, for CIDRs and sets alike",
            hand_policy(
                vec![
                    rule(cidrs(&["192.0.2.0/24"]), AddrMatch::Any, None),
                    rule(AddrMatch::Any, AddrMatch::Set(0), None),
                    rule(cidrs(&["::ffff:198.51.100.0/120"]), AddrMatch::Any, None),
                    rule(cidrs(&["0.0.0.0/0"]), AddrMatch::Any, None),
                    rule(cidrs(&["::/0"]), AddrMatch::Any, None),
                ],
                vec![IpSet {
                    name: "s".to_owned(),
                    entries: match cidrs(&[
                        "203.0.113.0/24",
                        "2001:db8:5::/48",
                        "::ffff:0.0.0.0/104",
                    ]) {
                        AddrMatch::Cidrs(c) => c,
                        _ => unreachable!(),
                    },
                }],
                FragmentPolicy::MatchL3,
            ),
            vec![
                (Frame::udp("192.0.2.1", "1.1.1.1", 1, 2), 0),
                (Frame::udp("::ffff:192.0.2.1", "::1", 1, 2), 4),
                (Frame::udp("1.1.1.1", "203.0.113.9", 1, 2), 1),
                (Frame::udp("::1", "::ffff:203.0.113.9", 1, 2), 4),
                // An IPv6 entry of the mapped space holds IPv6 packets' mapped addresses,
                // never IPv4 packets.
                (Frame::udp("::1", "::ffff:0.1.2.3", 1, 2), 1),
                (Frame::udp("1.1.1.1", "0.1.2.3", 1, 2), 3),
                (Frame::udp("::1", "2001:db8:5:ffff::1", 1, 2), 1),
                (Frame::udp("::ffff:198.51.100.7", "::1", 1, 2), 2),
                (Frame::udp("198.51.100.7", "1.1.1.1", 1, 2), 3),
            ],
        ),
        (
            "ICMP type and code are not ports",
            hand_policy(
                vec![
                    icmp_rule(Protocol::Icmp, 8, Some(0)),
                    icmp_rule(Protocol::Icmpv6, 128, None),
                    with_ports(rule(AddrMatch::Any, AddrMatch::Any, tcp), 0x0800, 0x0800),
                ],
                vec![],
                FragmentPolicy::MatchL3,
            ),
            vec![
                (Frame::icmp("10.0.0.1", "10.0.0.2", 8, 0), 0),
                (Frame::icmp("10.0.0.1", "10.0.0.2", 8, 1), DEFAULT_SLOT),
                (Frame::tcp("10.0.0.1", "10.0.0.2", 1, 0x0800, 0), 2),
                (Frame::udp("10.0.0.1", "10.0.0.2", 1, 0x0800), DEFAULT_SLOT),
                (Frame::icmp("2001:db8::1", "2001:db8::2", 128, 0), 1),
                (Frame::icmp("2001:db8::1", "2001:db8::2", 128, 255), 1),
                (
                    Frame::icmp("2001:db8::1", "2001:db8::2", 129, 0),
                    DEFAULT_SLOT,
                ),
                (
                    Frame::icmp("2001:db8::1", "2001:db8::2", 8, 0),
                    DEFAULT_SLOT,
                ),
            ],
        ),
        (
            "VLAN tags and IPv6 extension headers do not change the match",
            hand_policy(
                vec![
                    with_ports(rule(cidrs(&["10.1.0.0/16"]), AddrMatch::Any, udp), 53, 53),
                    with_ports(rule(cidrs(&["2001:db8::/32"]), AddrMatch::Any, tcp), 22, 22),
                ],
                vec![],
                FragmentPolicy::MatchL3,
            ),
            vec![
                (
                    Frame::udp("10.1.2.3", "10.0.0.2", 1, 53).with_vlans(&[7], false),
                    0,
                ),
                (
                    Frame::udp("10.1.2.3", "10.0.0.2", 1, 53).with_vlans(&[7, 8], true),
                    0,
                ),
                (
                    Frame::udp("10.2.2.3", "10.0.0.2", 1, 53).with_vlans(&[7, 8], false),
                    DEFAULT_SLOT,
                ),
                (
                    {
                        let mut f = Frame::tcp("2001:db8::1", "2001:db8::2", 1, 22, 0x02);
                        f.ipv6_ext = vec![
                            ExtHeader::Options { kind: 0, len8: 1 },
                            ExtHeader::Fragment {
                                offset: 0,
                                more: true,
                            },
                            ExtHeader::Options { kind: 60, len8: 0 },
                        ];
                        f.with_vlans(&[100], false)
                    },
                    1,
                ),
            ],
        ),
    ];
    for (name, policy, frames) in cases {
        let probe = probe_variant(&policy);
        bench.install(&probe).expect("install");
        for (frame, want) in frames {
            let bytes = frame.build();
            let pkt = parse(&bytes);
            let expected = probe_expect(&probe, &pkt, &link(&bytes));
            assert_eq!(
                expected.event.map(|e| e.0),
                Some(want),
                "{name}: the reference disagrees with the hand-written answer for {}",
                show_packet(&pkt)
            );
            let (seen, _) = run(&mut bench, &bytes);
            assert_eq!(
                seen,
                expected,
                "{name}: kernel wrong for {}",
                show_packet(&pkt)
            );
        }
    }
}

// ==================================================================== scale

const SCALE_RULES: usize = 100_000;
const SCALE_SET: usize = 1_000_000;

#[test]
fn hundred_thousand_rules_and_a_million_set_members() {
    let _serial = serial();
    let seed = env_u64("PALISADE_DIFF_SEED", DEFAULT_SEED);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5ca1e);
    let started = Instant::now();

    // Rules: port rules on /24s first, then distinct /32 (and /128) sources, then set rules.
    let mut rules = Vec::with_capacity(SCALE_RULES);
    let drop_rule = |src: AddrMatch| Rule {
        name: None,
        priority: 0,
        action: Action::Drop,
        log: true,
        src,
        dst: AddrMatch::Any,
        protocol: None,
        src_ports: None,
        dst_ports: None,
        tcp_flags: None,
        icmp: None,
        state: None,
        ip: IpHeaderMatch::default(),
        link: LinkMatch::default(),
        not: Negation::default(),
        line: 0,
    };
    let cidr = |ip: IpAddr, len| Cidr::new(ip, len).unwrap();
    let port_rules = 1_000;
    for _ in 0..port_rules {
        let net = Ipv4Addr::from(0x0a00_0000 | (rng.gen_range(0..1u32 << 16) << 8));
        rules.push(Rule {
            protocol: Some(if rng.gen_bool(0.5) {
                Protocol::Tcp
            } else {
                Protocol::Udp
            }),
            dst_ports: Some(port_range(&mut rng)),
            ..drop_rule(AddrMatch::Cidrs(vec![cidr(IpAddr::V4(net), 24)]))
        });
    }
    let v6_rules = 5_000;
    let set_rules = 3;
    let v4_rules = SCALE_RULES - port_rules - v6_rules - set_rules;
    let mut seen = HashSet::new();
    let mut v4_sources = Vec::with_capacity(v4_rules);
    while v4_sources.len() < v4_rules {
        let a = 0x0a00_0000 | rng.gen_range(0..1u32 << 24);
        if seen.insert(a) {
            v4_sources.push(Ipv4Addr::from(a));
        }
    }
    let v6_sources: Vec<Ipv6Addr> = (0..v6_rules)
        .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0x5ca1, 0, 0, 0, (i >> 16) as u16, i as u16))
        .collect();
    for a in &v4_sources {
        rules.push(drop_rule(AddrMatch::Cidrs(vec![cidr(IpAddr::V4(*a), 32)])));
    }
    for a in &v6_sources {
        rules.push(drop_rule(AddrMatch::Cidrs(vec![cidr(IpAddr::V6(*a), 128)])));
    }
    rules.push(Rule {
        protocol: Some(Protocol::Tcp),
        dst_ports: Some(PortRange { lo: 443, hi: 443 }),
        ..drop_rule(AddrMatch::Set(0))
    });
    rules.push(Rule {
        dst: AddrMatch::Set(0),
        ..drop_rule(AddrMatch::Any)
    });
    rules.push(drop_rule(AddrMatch::Set(0)));
    assert_eq!(rules.len(), SCALE_RULES);

    // The set: /32s outside 10/8, some /24s, some IPv6 blocks.
    let mut members = Vec::with_capacity(SCALE_SET);
    let mut seen = HashSet::new();
    let v6_members = 20_000;
    let v4_nets = 30_000;
    while members.len() < v4_nets {
        let a = rng.gen_range(0x0b00_0000u32..0xdf00_0000) & 0xffff_ff00;
        if a >> 24 != 10 && seen.insert((a, 24)) {
            members.push(cidr(IpAddr::V4(Ipv4Addr::from(a)), 24));
        }
    }
    while members.len() < SCALE_SET - v6_members {
        let a = rng.gen_range(0x0b00_0000u32..0xdf00_0000);
        if seen.insert((a, 32)) {
            members.push(cidr(IpAddr::V4(Ipv4Addr::from(a)), 32));
        }
    }
    for i in 0..v6_members as u32 {
        let len = if i % 2 == 0 { 64 } else { 128 };
        let a = Ipv6Addr::new(0x2001, 0xdb8, 0x5e7, (i >> 16) as u16, i as u16, 0, 0, 1);
        members.push(cidr(IpAddr::V6(a), len));
    }
    assert_eq!(members.len(), SCALE_SET);
    let policy = Policy {
        shield: palisade::shield::Shield::default(),
        scrub: palisade::scrub::Scrub::default(),
        nat: palisade::nat::Nat::default(),
        lb: palisade::lb::Lb::default(),
        tls: palisade::tls::Tls::default(),
        dhcp: palisade::dhcp::Dhcp::default(),
        intel: palisade::intel::Intel::default(),
        dlp: palisade::dlp::Dlp::default(),
        geoip: None,
        ids: palisade::ids::Ids::default(),
        firewall: Firewall {
            rate_prefix: Default::default(),
            capacity: Default::default(),
            default_action: Action::Drop,
            log_default: true,
            fragments: FragmentPolicy::MatchL3,
            stateful: false,
            rules,
        },
        conntrack: Default::default(),
        sets: vec![IpSet {
            name: "big".to_owned(),
            entries: members,
        }],
        dns: Default::default(),
    };
    let generated = started.elapsed();

    let mut bench = Bench::new().expect("loading the kernel object (needs root)");
    let t = Instant::now();
    let compiled = compile::compile(&policy).expect("compile");
    let compile_time = t.elapsed();

    // Rules alone first (the set empty), then the whole policy, then the whole policy again,
    // which has to clear the previous generation's entries first. Each install compiles
    // again (the shared install path does), so the compile time is taken off.
    let mut policy = policy;
    let members = std::mem::take(&mut policy.sets[0].entries);
    let t = Instant::now();
    bench.install(&policy).expect("install rules");
    let rules_install = t.elapsed().saturating_sub(compile_time);
    policy.sets[0].entries = members;
    let t = Instant::now();
    bench.install(&policy).expect("install rules and set");
    let full_install = t.elapsed().saturating_sub(compile_time);
    let t = Instant::now();
    bench.install(&policy).expect("reinstall");
    let reinstall = t.elapsed().saturating_sub(compile_time);
    eprintln!(
        "scale: {} rules, {} set members, {} tuples, {} rule entries\n\
         \x20 generate {generated:.2?}, compile {compile_time:.2?}; install times below \
         exclude compiling\n\
         \x20 install rules only (set empty): {rules_install:.2?}\n\
         \x20 install rules + {} set members (empty generation): {full_install:.2?} \
         (so about {:.2?} for the set)\n\
         \x20 reinstall over a full generation (clear, then write): {reinstall:.2?}",
        policy.firewall.rules.len(),
        policy.sets[0].entries.len(),
        compiled.tuples.len(),
        compiled.entries.len(),
        SCALE_SET,
        full_install.saturating_sub(rules_install),
    );

    // Spot checks: sources of /32 and /128 rules, port rules' networks and ports, set
    // members on either side, and strangers.
    let t = Instant::now();
    let set = &policy.sets[0].entries;
    let mut checked = 0;
    let mut by_kind: HashMap<&str, u64> = HashMap::new();
    for i in 0..300 {
        let v4_set_member = |rng: &mut StdRng| loop {
            let c = set.choose(rng).unwrap();
            if c.family == Family::V4 {
                let mut a = [c.addr[12], c.addr[13], c.addr[14], c.addr[15]];
                if c.prefix_len == 24 {
                    a[3] = rng.r#gen();
                }
                break Ipv4Addr::from(a);
            }
        };
        let stranger =
            |rng: &mut StdRng| Ipv4Addr::from(rng.gen_range(0xe000_0000u32..0xefff_ffff));
        let l4 = |rng: &mut StdRng| {
            let dport = if rng.gen_bool(0.3) { 443 } else { rng.r#gen() };
            if rng.gen_bool(0.5) {
                L4::Tcp {
                    sport: rng.r#gen(),
                    dport,
                    flags: 0x02,
                }
            } else {
                L4::Udp {
                    sport: rng.r#gen(),
                    dport,
                }
            }
        };
        let (kind, frame) = match i % 6 {
            0 => {
                let a = *v4_sources.choose(&mut rng).unwrap();
                (
                    "v4 /32 source",
                    Frame::new(IpAddr::V4(a), IpAddr::V4(stranger(&mut rng)), l4(&mut rng)),
                )
            }
            1 => {
                let a = *v6_sources.choose(&mut rng).unwrap();
                let d = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, rng.r#gen());
                (
                    "v6 /128 source",
                    Frame::new(IpAddr::V6(a), IpAddr::V6(d), l4(&mut rng)),
                )
            }
            2 => {
                // Inside a port rule's /24.
                let r = &policy.firewall.rules[rng.gen_range(0..port_rules)];
                let AddrMatch::Cidrs(c) = &r.src else {
                    unreachable!()
                };
                let mut a = [c[0].addr[12], c[0].addr[13], c[0].addr[14], rng.r#gen()];
                if rng.gen_bool(0.3) {
                    a[3] = 0;
                }
                let range = r.dst_ports.unwrap();
                let dport = port_near(&mut rng, range);
                let l4 = if r.protocol == Some(Protocol::Tcp) {
                    L4::Tcp {
                        sport: 1000,
                        dport,
                        flags: 0x10,
                    }
                } else {
                    L4::Udp { sport: 1000, dport }
                };
                (
                    "port rule",
                    Frame::new(
                        IpAddr::V4(Ipv4Addr::from(a)),
                        IpAddr::V4(stranger(&mut rng)),
                        l4,
                    ),
                )
            }
            3 => {
                let s = v4_set_member(&mut rng);
                (
                    "set member as source",
                    Frame::new(IpAddr::V4(s), IpAddr::V4(stranger(&mut rng)), l4(&mut rng)),
                )
            }
            4 => {
                let d = v4_set_member(&mut rng);
                (
                    "set member as destination",
                    Frame::new(IpAddr::V4(stranger(&mut rng)), IpAddr::V4(d), l4(&mut rng)),
                )
            }
            _ => {
                if rng.gen_bool(0.5) {
                    let c = set[SCALE_SET - 1 - rng.gen_range(0..v6_members)];
                    let mut a = c.addr;
                    if c.prefix_len == 64 {
                        a[8..].copy_from_slice(&rng.r#gen::<[u8; 8]>());
                    }
                    let d = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
                    (
                        "v6 set member",
                        Frame::new(IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(d), l4(&mut rng)),
                    )
                } else {
                    (
                        "stranger",
                        Frame::new(
                            IpAddr::V4(stranger(&mut rng)),
                            IpAddr::V4(stranger(&mut rng)),
                            l4(&mut rng),
                        ),
                    )
                }
            }
        };
        let bytes = frame.build();
        let pkt = parse(&bytes);
        let want = reference::first_match(&policy, &pkt).unwrap_or(DEFAULT_SLOT);
        let (seen, _) = run(&mut bench, &bytes);
        assert_eq!(
            seen.event.map(|e| e.0),
            Some(want),
            "{kind}: kernel and reference disagree on {} (seed {seed:#x})",
            show_packet(&pkt)
        );
        assert_eq!(seen.action, XDP_DROP);
        *by_kind
            .entry(if want == DEFAULT_SLOT {
                "default"
            } else {
                kind
            })
            .or_default() += 1;
        checked += 1;
    }
    eprintln!(
        "scale: {checked} spot checks agree in {:.2?} ({by_kind:?}); total {:.1?}",
        t.elapsed(),
        started.elapsed()
    );
}
