//! The validated policy: what a config file means once every field has been checked.
//!
//! Nothing here knows about TOML or about kernel maps. `config` turns text into this model,
//! `compile` turns this model into map contents, and `reference` classifies packets against it
//! the slow, obvious way so the kernel program has something to be checked against.

use std::net::IpAddr;

use palisade_common::conntrack::{DEFAULT_TIMEOUTS_S, TIMEOUTS};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

/// A CIDR block. `addr` is stored as 16 bytes: IPv6 as is, IPv4 as `::ffff:a.b.c.d`.
/// `prefix_len` counts bits of the family's own address (0..=32 for IPv4, 0..=128 for IPv6),
/// and the host bits of `addr` are always zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub family: Family,
    pub addr: [u8; 16],
    pub prefix_len: u8,
}

/// What a rule's source or destination must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrMatch {
    /// Any address of any family.
    Any,
    /// Any of these blocks (a one-element list for a single CIDR). Never empty.
    Cidrs(Vec<Cidr>),
    /// A member of the named set (index into `Policy::sets`).
    Set(usize),
}

/// Layer-4 protocol a rule is limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    /// Any other IP protocol by number (e.g. 47 for GRE).
    Other(u8),
}

impl Protocol {
    /// The IP protocol number.
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmp => 1,
            Self::Icmpv6 => 58,
            Self::Other(n) => n,
        }
    }
}

/// An inclusive range of ports (`lo <= hi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// Conditions on the IP header's own fields (both families): DSCP, ECN and TTL / hop limit.
/// Each `None` matches every packet; the default matches everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IpHeaderMatch {
    /// DSCP code point `0..=63`: the high six bits of the TOS / traffic class byte.
    pub dscp: Option<u8>,
    /// ECN codepoint `0..=3`: the low two bits of the TOS / traffic class byte.
    pub ecn: Option<u8>,
    /// An inclusive range `lo <= hi` of the IPv4 TTL / IPv6 hop limit.
    pub ttl: Option<(u8, u8)>,
    /// An inclusive range `lo <= hi` of the IP packet's length (IPv4 total length, IPv6 40
    /// plus the payload length; no link layer).
    pub length: Option<(u16, u16)>,
}

impl IpHeaderMatch {
    /// Whether a packet with this TOS / traffic class byte, TTL and IP length meets every
    /// condition.
    #[must_use]
    pub fn matches(&self, tos: u8, ttl: u8, length: u16) -> bool {
        self.dscp.is_none_or(|d| tos >> 2 == d)
            && self.ecn.is_none_or(|e| tos & 3 == e)
            && self.ttl.is_none_or(|(lo, hi)| (lo..=hi).contains(&ttl))
            && self
                .length
                .is_none_or(|(lo, hi)| (lo..=hi).contains(&length))
    }
}

/// Conditions on the frame below IP (see `palisade_common::firewall::Link`): MAC addresses,
/// VLAN id and input interface.
/// Each `None` matches every frame; the default matches everything. A rule with one is
/// placed in a tuple of its own value (see `docs/design/firewall.md`), so each distinct value
/// used is a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct LinkMatch {
    /// The frame's Ethernet source address.
    pub src_mac: Option<[u8; 6]>,
    /// The frame's Ethernet destination address.
    pub dst_mac: Option<[u8; 6]>,
    /// The id of the frame's outermost VLAN tag, `0..=4095`, or
    /// `palisade_common::firewall::VLAN_UNTAGGED` for a frame without one.
    pub vlan: Option<u16>,
    /// The interface the frame arrives on, by index: `iface` names it in the config, and the
    /// name is resolved when the policy is loaded.
    pub iface: Option<u32>,
    /// More interfaces of an `iface` list (`iface = ["eth0", "eth1"]`), 0 for none: the
    /// frame may arrive on `iface` or on any of these. Each is a shape of its own.
    pub more_ifaces: [u32; MAX_RULE_IFACES - 1],
}

/// Interfaces one rule's `iface` list may name.
pub const MAX_RULE_IFACES: usize = 8;

impl LinkMatch {
    /// Whether a frame with these link-layer values meets every condition.
    #[must_use]
    pub fn matches(&self, l: &palisade_common::firewall::Link) -> bool {
        self.src_mac.is_none_or(|m| m == l.src_mac)
            && self.dst_mac.is_none_or(|m| m == l.dst_mac)
            && self.vlan.is_none_or(|v| v == l.vlan)
            && self.iface.is_none_or(|i| {
                i == l.ifindex || self.more_ifaces.iter().any(|&m| m != 0 && m == l.ifindex)
            })
    }

    /// The interfaces the rule names: `iface`, then those of `more_ifaces`.
    #[must_use]
    pub fn ifaces(&self) -> Vec<u32> {
        self.iface
            .into_iter()
            .chain(self.more_ifaces.iter().copied().filter(|&m| m != 0))
            .collect()
    }

    /// One link condition per interface of an `iface` list (each a single interface); the
    /// condition itself when it names at most one.
    #[must_use]
    pub fn alternatives(&self) -> Vec<Self> {
        if self.more_ifaces.iter().all(|&m| m == 0) {
            return vec![*self];
        }
        self.ifaces()
            .into_iter()
            .map(|i| Self {
                iface: Some(i),
                more_ifaces: [0; MAX_RULE_IFACES - 1],
                ..*self
            })
            .collect()
    }
}

/// A MAC address written as six pairs of hex digits separated by `:` (or all by `-`), in
/// either letter case.
#[must_use]
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let text = text.trim();
    let sep = if text.contains('-') { '-' } else { ':' };
    let mut out = [0u8; 6];
    let mut parts = text.split(sep);
    for b in &mut out {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Which of a rule's conditions are negated (`not = [...]`): the rule then needs the packet to
/// fail that condition. The default negates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Negation {
    /// The source address is *not* in `src` (its CIDRs or set), in either family.
    pub src: bool,
    /// The destination address is not in `dst`.
    pub dst: bool,
    /// The source port is outside `sport` (the packet still needs ports).
    pub sport: bool,
    /// The destination port is outside `dport`.
    pub dport: bool,
    /// The protocol is not `proto`.
    pub proto: bool,
}

impl Negation {
    /// The condition names `not` takes, in this order.
    pub const NAMES: [&str; 5] = ["src", "dst", "sport", "dport", "proto"];
}

/// `aa:bb:cc:dd:ee:ff`, lower case.
#[must_use]
pub fn show_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// TCP flags must satisfy `packet_flags & mask == value` (`value & !mask == 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpFlags {
    pub value: u8,
    pub mask: u8,
}

/// ICMP / ICMPv6 type, and optionally code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub icmp_type: u8,
    pub code: Option<u8>,
}

/// Whose packets share one token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RatePer {
    /// One bucket for each source address.
    Source,
    /// One bucket for the whole rule.
    Rule,
    /// One bucket for each source country of the `[geoip]` data (`per = "country"`), one more
    /// for the sources of no country.
    Country,
}

/// A token bucket: `pps` tokens per second, holding at most `burst` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub pps: u32,
    pub burst: u32,
    pub per: RatePer,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Drop,
    /// Packets within the rate pass, the rest are dropped.
    RateLimit(RateLimit),
    /// The packet passes, with its mark and/or its DSCP set.
    Mark(Mark),
    /// The packet passes, and a copy leaves by another interface.
    Mirror(Mirror),
    /// The packet leaves by another interface from XDP, never entering the stack.
    Redirect(Redirect),
    /// The packet is handed to one CPU of a set, by its flow's hash.
    Steer(Steer),
}

/// The CPUs a `steer` rule spreads its flows over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steer {
    /// The CPU numbers, `n` of them.
    pub cpus: [u8; palisade_common::steer::MAX_RULE_CPUS],
    pub n: u8,
    /// The CPU map entry's queue size.
    pub queue_size: u32,
}

impl Steer {
    /// The CPUs.
    #[must_use]
    pub fn cpus(&self) -> &[u8] {
        &self.cpus[..usize::from(self.n).min(self.cpus.len())]
    }
}

/// Where a `redirect` rule sends its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirect {
    /// Out of this interface as they are (`redirect_to`, resolved at load).
    Iface(Mirror),
    /// To the next hop of this routing table (`route_table`).
    Table(u32),
}

impl Redirect {
    /// How listings show the target: `to IFACE` or `via table N`.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Iface(m) => format!("to {}", m.iface()),
            Self::Table(t) => format!("via table {t}"),
        }
    }
}

/// Where a `mirror` rule sends its copies: an interface resolved when the policy was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mirror {
    pub ifindex: u32,
    /// The interface's name (at most 15 bytes, NUL-padded), for listings.
    pub name: [u8; 16],
}

impl Mirror {
    /// The interface's name.
    #[must_use]
    pub fn iface(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        std::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}

/// What a `mark` rule sets on the packets it lets through; at least one is `Some`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The socket buffer's mark (`skb->mark`), for `ip rule fwmark`, tc and nftables.
    pub mark: Option<u32>,
    /// The DSCP code point `0..=63` written into the IP header (ECN kept).
    pub dscp: Option<u8>,
}

/// One firewall rule. All conditions must hold for the rule to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Optional name, shown in events, counters and listings.
    pub name: Option<String>,
    /// Lower numbers are evaluated first; ties keep file order.
    pub priority: u32,
    pub action: Action,
    /// Emit an event for every packet this rule drops.
    pub log: bool,
    pub src: AddrMatch,
    pub dst: AddrMatch,
    /// `None` matches every protocol; ports, flags and ICMP need a protocol that has them.
    pub protocol: Option<Protocol>,
    pub src_ports: Option<PortRange>,
    pub dst_ports: Option<PortRange>,
    pub tcp_flags: Option<TcpFlags>,
    pub icmp: Option<IcmpMatch>,
    /// Connection-tracking states the packet must be in: a non-empty bitmask of
    /// `palisade_common::conntrack::STATE_*` bits. `None` matches every packet, tracked or
    /// not; `Some` never matches a packet the tracker did not classify (`ct_state == 0`).
    pub state: Option<u8>,
    /// DSCP, ECN and TTL conditions.
    pub ip: IpHeaderMatch,
    /// Link-layer conditions (MAC addresses).
    pub link: LinkMatch,
    /// Negated conditions.
    pub not: Negation,
    /// 1-based line of the rule in its config file, for messages (0 when built in code).
    pub line: usize,
}

/// What the firewall does with a non-first IP fragment, which carries no layer-4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentPolicy {
    /// Drop every non-first fragment (reason `fragment`).
    Drop,
    /// Match non-first fragments against rules with no layer-4 condition only, then the
    /// default action. A port rule can never be bypassed: it drops the first fragment, and
    /// the later ones cannot be reassembled without it.
    MatchL3,
}

/// The firewall part of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    /// Used when no rule matches: `Allow` or `Drop` (never `RateLimit`).
    pub default_action: Action,
    /// Emit an event for every packet the default action drops.
    pub log_default: bool,
    pub fragments: FragmentPolicy,
    /// Accept packets of established and related flows before any rule is tried (needs
    /// connection tracking, see [`Policy::tracks_connections`]).
    pub stateful: bool,
    /// Sorted by `(priority, file order)`: index in this vector is the evaluation order.
    pub rules: Vec<Rule>,
    /// How `per = "source"` rate buckets group source addresses.
    pub rate_prefix: SourcePrefix,
    /// Room per generation asked for by `capacity_rules`, `capacity_set_hosts` and
    /// `capacity_set_prefixes` (0: not set, sized from the policy; see `crate::capacity`).
    pub capacity: FirewallCapacity,
}

/// `[firewall]`'s capacity settings: entries one policy generation may hold in the rule
/// map and the two set maps, when more than the policy needs (0: not set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirewallCapacity {
    pub rules: u32,
    pub set_hosts: u32,
    pub set_prefixes: u32,
}

/// How per-source rate buckets group addresses: one bucket for each prefix of these lengths,
/// so one client owning a whole prefix (an IPv6 /64 is the usual smallest one handed out)
/// cannot get a fresh bucket for each address in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePrefix {
    /// IPv4 prefix length, `1..=32`.
    pub v4: u8,
    /// IPv6 prefix length, `1..=128`.
    pub v6: u8,
}

impl SourcePrefix {
    /// One bucket per IPv4 address and per IPv6 /64.
    pub const DEFAULT: Self = Self { v4: 32, v6: 64 };
}

impl Default for SourcePrefix {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Default for Firewall {
    /// What a policy without a `[firewall]` section gets: no rules, everything passes.
    fn default() -> Self {
        Self {
            default_action: Action::Allow,
            log_default: false,
            fragments: FragmentPolicy::MatchL3,
            stateful: false,
            rules: Vec::new(),
            rate_prefix: SourcePrefix::DEFAULT,
            capacity: FirewallCapacity::default(),
        }
    }
}

/// Default capacity of the table of validated (established) flows.
pub const DEFAULT_CT_MAX_ENTRIES: u32 = 262_144;
/// Bounds of [`Conntrack::max_entries`].
pub const CT_MAX_ENTRIES_RANGE: std::ops::RangeInclusive<u32> = 1024..=16_777_216;
/// Default capacity of the LRU table of flows not validated yet (SYNs, unanswered UDP).
pub const DEFAULT_CT_MAX_UNVALIDATED: u32 = 16_384;
/// Bounds of [`Conntrack::max_unvalidated`].
pub const CT_MAX_UNVALIDATED_RANGE: std::ops::RangeInclusive<u32> = 1024..=4_194_304;
/// Bounds of [`Conntrack::max_per_source`] and [`Conntrack::new_per_source`] (0: no limit).
pub const CT_PER_SOURCE_RANGE: std::ops::RangeInclusive<u32> = 0..=1_000_000;
/// Default of [`Conntrack::overload_ttl_s`]: ten minutes.
pub const DEFAULT_CT_OVERLOAD_TTL_S: u64 = 600;
/// Bounds of [`Conntrack::overload_ttl_s`], in seconds (the longest is a day).
pub const CT_OVERLOAD_TTL_RANGE_S: std::ops::RangeInclusive<u64> = 1..=86_400;
/// Bounds of every timeout, in seconds (the longest is 30 days).
pub const CT_TIMEOUT_RANGE_S: std::ops::RangeInclusive<u64> = 1..=2_592_000;

/// Connection-tracking settings (`[conntrack]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conntrack {
    /// `false` only when the policy says `enabled = false`: tracking then stays off even
    /// though the section is present.
    pub enabled: bool,
    /// Whether the policy has a `[conntrack]` section; an enabled section turns tracking on
    /// by itself (see [`Policy::tracks_connections`]).
    pub present: bool,
    /// Timeouts in seconds, indexed by `palisade_common::conntrack::T_*`.
    pub timeouts_s: [u64; TIMEOUTS],
    /// Capacity of the table of validated flows.
    pub max_entries: u32,
    /// Capacity of the LRU table of flows not validated yet.
    pub max_unvalidated: u32,
    /// Validated flows one outside address may have open at once (0: no limit).
    pub max_per_source: u32,
    /// New flows one outside address may open per second (0: no limit).
    pub new_per_source: u32,
    /// Index in [`Policy::sets`] of the overload set: addresses over a per-source limit join
    /// it for [`Self::overload_ttl_s`].
    pub overload_set: Option<usize>,
    /// Seconds an address stays in the overload set.
    pub overload_ttl_s: u64,
    /// 1-based line of the `[conntrack]` section (0 when absent or built in code).
    pub line: usize,
}

impl Default for Conntrack {
    /// No `[conntrack]` section: every setting at its default.
    fn default() -> Self {
        Self {
            enabled: true,
            present: false,
            timeouts_s: DEFAULT_TIMEOUTS_S,
            max_entries: DEFAULT_CT_MAX_ENTRIES,
            max_unvalidated: DEFAULT_CT_MAX_UNVALIDATED,
            max_per_source: 0,
            new_per_source: 0,
            overload_set: None,
            overload_ttl_s: DEFAULT_CT_OVERLOAD_TTL_S,
            line: 0,
        }
    }
}

/// A named set of addresses and CIDR blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    pub name: String,
    pub entries: Vec<Cidr>,
}

/// A whole validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub firewall: Firewall,
    pub sets: Vec<IpSet>,
    pub dns: Dns,
    pub conntrack: Conntrack,
    pub shield: crate::shield::Shield,
    pub scrub: crate::scrub::Scrub,
    pub nat: crate::nat::Nat,
    pub lb: crate::lb::Lb,
    pub tls: crate::tls::Tls,
    pub dhcp: crate::dhcp::Dhcp,
    pub intel: crate::intel::Intel,
    pub dlp: crate::dlp::Dlp,
    /// `[geoip]`: the country database behind `@country:XX` sets; `None` without the section.
    pub geoip: Option<crate::geoip::GeoIp>,
    pub ids: crate::ids::Ids,
}

impl Policy {
    /// Whether connections are tracked: `stateful = true`, a rule with `state`, a shield, or an
    /// enabled `[conntrack]` section turns tracking on. A policy whose `[conntrack]` says
    /// `enabled = false` is never tracked (the config checker rejects `stateful` and `state`
    /// with it, and the compiler refuses such a policy built in code).
    #[must_use]
    pub fn tracks_connections(&self) -> bool {
        self.conntrack.enabled
            && (self.conntrack.present
                || self.firewall.stateful
                || self.uses_state()
                || self.shield.any()
                || self.nat.any())
    }

    /// Whether any rule has a `state` condition.
    #[must_use]
    pub fn uses_state(&self) -> bool {
        self.firewall.rules.iter().any(|r| r.state.is_some())
    }
}

impl Cidr {
    /// A block from an address and a prefix length in that address's own bits.
    ///
    /// Returns `None` when the prefix is longer than the address. Host bits are cleared.
    #[must_use]
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let (family, bytes, max) = match addr {
            IpAddr::V4(a) => (Family::V4, a.to_ipv6_mapped().octets(), 32),
            IpAddr::V6(a) => (Family::V6, a.octets(), 128),
        };
        if prefix_len > max {
            return None;
        }
        let mut cidr = Self {
            family,
            addr: bytes,
            prefix_len,
        };
        let mask = cidr.mask();
        for (b, m) in cidr.addr.iter_mut().zip(mask) {
            *b &= m;
        }
        Some(cidr)
    }

    /// The prefix length over the 16-byte stored form (IPv4 blocks gain 96 bits).
    #[must_use]
    pub const fn stored_prefix_len(&self) -> u8 {
        match self.family {
            Family::V4 => self.prefix_len + 96,
            Family::V6 => self.prefix_len,
        }
    }

    /// The 16-byte mask of the stored form.
    #[must_use]
    pub fn mask(&self) -> [u8; 16] {
        prefix_mask(self.stored_prefix_len())
    }

    /// Whether `addr` (16-byte stored form of `family`) lies inside this block.
    #[must_use]
    pub fn contains(&self, family: Family, addr: &[u8; 16]) -> bool {
        family == self.family
            && addr
                .iter()
                .zip(self.mask())
                .zip(self.addr)
                .all(|((a, m), c)| a & m == c)
    }
}

/// A 16-byte mask with the first `bits` bits set.
#[must_use]
pub fn prefix_mask(bits: u8) -> [u8; 16] {
    let mut mask = [0u8; 16];
    for (i, m) in mask.iter_mut().enumerate() {
        let lo = i * 8;
        let bits = usize::from(bits);
        *m = if bits >= lo + 8 {
            0xff
        } else if bits > lo {
            0xffu8 << (8 - (bits - lo))
        } else {
            0
        };
    }
    mask
}

/// Whether a DNS attachment point blocks listed names or allows only listed names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    /// Listed names are blocked; everything else resolves.
    Blocklist,
    /// Default deny: only listed names resolve.
    Allowlist,
}

/// What happens to a blocked query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsAction {
    /// Drop the query (the client times out; on egress the sending process gets `EPERM` at
    /// once, which resolver libraries treat as a failed server).
    Drop,
    /// Answer NXDOMAIN (XDP ingress over UDP; elsewhere this falls back to `Drop`).
    Nxdomain,
    /// Answer REFUSED (XDP ingress over UDP only).
    Refused,
    /// Answer A and AAAA questions with these addresses, other questions with NODATA
    /// (XDP ingress over UDP only): what Pi-hole and blocky answer by default.
    Sinkhole(Sinkhole),
}

/// The answer a sinkhole gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sinkhole {
    pub v4: std::net::Ipv4Addr,
    pub v6: std::net::Ipv6Addr,
    /// TTL of the answer record, seconds.
    pub ttl: u32,
}

impl Sinkhole {
    /// Default TTL of a sinkhole answer, seconds.
    pub const DEFAULT_TTL: u32 = 60;
}

impl Default for Sinkhole {
    fn default() -> Self {
        Self {
            v4: std::net::Ipv4Addr::UNSPECIFIED,
            v6: std::net::Ipv6Addr::UNSPECIFIED,
            ttl: Self::DEFAULT_TTL,
        }
    }
}

impl DnsAction {
    /// The action's name in the policy.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Nxdomain => "nxdomain",
            Self::Refused => "refused",
            Self::Sinkhole(_) => "sinkhole",
        }
    }
}

/// How a list entry's name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameMatch {
    /// `example.com`: exactly this name.
    Exact,
    /// `*.example.com`: every name strictly below `example.com`, not the apex.
    Subdomains,
    /// `example.com` in a list with `subdomains = true`: the apex and every name below it.
    ApexAndSubdomains,
}

/// One name in a DNS list.
#[derive(Debug, Clone, PartialEq)]
pub struct NameEntry {
    /// Lower-case labels, most significant last (`["www", "example", "com"]`). Labels are raw
    /// bytes: a dot written as `\.` inside a label stays inside it. Never empty (the root is
    /// not a valid entry); each label 1..=63 bytes; the wire form is at most 255 bytes.
    pub labels: Vec<Vec<u8>>,
    pub kind: NameMatch,
    /// Query types the entry applies to (numbers, e.g. 1 = A, 28 = AAAA); empty = all.
    pub qtypes: Vec<u16>,
    /// Unix time (seconds) after which the entry no longer applies.
    pub expires: Option<u64>,
    /// Allowlist only: the total Shannon entropy, in bits, of the labels below the matched
    /// suffix (counted as sent, letter case included) must not exceed this (see
    /// [`palisade_common::dns::entropy`]).
    pub max_entropy_bits: Option<u32>,
    /// 1-based line in the file it came from (0 when built in code).
    pub line: usize,
}

/// A named list of DNS names.
#[derive(Debug, Clone, PartialEq)]
pub struct NameList {
    pub name: String,
    pub entries: Vec<NameEntry>,
}

/// A token bucket for DNS queries per client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryRate {
    pub qps: u32,
    pub burst: u32,
}

/// DNS policy at one attachment point.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsScope {
    pub mode: DnsMode,
    pub action: DnsAction,
    /// Decide and report, but never block.
    pub audit: bool,
    /// Indices into [`Dns::lists`].
    pub lists: Vec<usize>,
    /// What to do with queries that cannot be parsed safely (not one question and at most
    /// one OPT record, a compression pointer that does not point strictly backward or more
    /// than `MAX_POINTER_HOPS` of them, bytes after the question, truncated, a TCP query not
    /// whole in its segment, a fragmented query). `true` = block, the default in both
    /// modes: a resolver may still answer what Palisade cannot read.
    pub block_malformed: bool,
    pub rate: Option<QueryRate>,
    /// Also emit events for allowed queries.
    pub log_allowed: bool,
}

/// Egress DNS policy for local processes (cgroup v2).
#[derive(Debug, Clone, PartialEq)]
pub struct DnsEgress {
    pub scope: DnsScope,
    /// cgroup v2 directories to attach to; default the cgroup v2 root.
    pub cgroups: Vec<std::path::PathBuf>,
}

/// The DNS part of a policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dns {
    /// Destination ports that carry DNS (UDP and TCP); default `[53]`.
    pub ports: Vec<u16>,
    /// Queries arriving on the guarded interfaces (XDP).
    pub ingress: Option<DnsScope>,
    /// Queries sent by local processes (cgroup_skb egress).
    pub egress: Option<DnsEgress>,
    pub lists: Vec<NameList>,
    /// How many NXDOMAIN answers a client prefix gets (ingress).
    pub answers: AnswerBudget,
    /// When DNS events are aggregated instead of sent one by one.
    pub events: DnsEvents,
    /// How ingress clients are grouped under one query rate bucket.
    pub rate_prefix: SourcePrefix,
    /// Cgroups in bind mode (`[dns.bind]`): they connect only to what they resolved.
    pub bind: Option<crate::dnsbind::DnsBind>,
    /// DGA scoring of the names in DNS events (`[dns.dga]`).
    pub dga: Option<crate::dga::runtime::DgaPolicy>,
    /// The response cache in front of a resolver on this host (`[dns.cache]`).
    pub cache: Option<crate::dns::cache::DnsCache>,
    /// Name entries one policy generation may hold, when more than the policy needs
    /// (`capacity_names`; 0: not set, sized from the policy; see `crate::capacity`).
    pub capacity_names: u32,
}

/// The NXDOMAIN answer budget: a token bucket per client prefix, like response-rate
/// limiting, so forged queries cannot make Palisade bounce answers at a victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerBudget {
    /// Answers per second per prefix; 0 = no budget.
    pub per_second: u32,
    /// Answers a prefix may get at once.
    pub burst: u32,
    /// IPv4 clients sharing a budget: prefix length `0..=32`.
    pub prefix_v4: u8,
    /// IPv6 clients sharing a budget: prefix length `0..=128`.
    pub prefix_v6: u8,
}

impl AnswerBudget {
    /// No budget: every blocked query may be answered.
    pub const UNLIMITED: Self = Self {
        per_second: 0,
        burst: 0,
        prefix_v4: 32,
        prefix_v6: 128,
    };
}

impl Default for AnswerBudget {
    /// 50 answers a second, bursts of 100, per /24 (IPv4) and /56 (IPv6).
    fn default() -> Self {
        Self {
            per_second: 50,
            burst: 100,
            prefix_v4: 24,
            prefix_v6: 56,
        }
    }
}

/// DNS event budget (`[dns] event_rate`, `event_sample`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsEvents {
    /// Full events per second per CPU before queries are aggregated; 0 = never aggregate.
    pub rate: u32,
    /// Over the budget, one aggregated query in this many is still sent in full; 0 = never.
    pub sample: u32,
}

impl DnsEvents {
    /// Default `[dns] event_rate`: never aggregate. Aggregation makes a flood of repeated
    /// names far cheaper to report, but a flood of distinct names dearer (every name is still
    /// sent once, and remembered), so it is a choice for the operator.
    pub const DEFAULT_RATE: u32 = 0;
    /// Default `[dns] event_sample`.
    pub const DEFAULT_SAMPLE: u32 = 1_000;
    /// Every reported query is an event (`event_rate = 0`).
    pub const EVERY_QUERY: Self = Self { rate: 0, sample: 0 };
}

impl Default for DnsEvents {
    fn default() -> Self {
        Self {
            rate: Self::DEFAULT_RATE,
            sample: Self::DEFAULT_SAMPLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use palisade_common::conntrack::{CtConfig, STATE_NEW};

    use super::*;

    fn policy() -> Policy {
        Policy {
            shield: crate::shield::Shield::default(),
            scrub: crate::scrub::Scrub::default(),
            nat: crate::nat::Nat::default(),
            lb: crate::lb::Lb::default(),
            tls: crate::tls::Tls::default(),
            dhcp: crate::dhcp::Dhcp::default(),
            intel: crate::intel::Intel::default(),
            dlp: crate::dlp::Dlp::default(),
            geoip: None,
            ids: crate::ids::Ids::default(),
            firewall: Firewall::default(),
            sets: Vec::new(),
            dns: Dns::default(),
            conntrack: Conntrack::default(),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let ct = Conntrack::default();
        assert!(ct.enabled && !ct.present);
        assert_eq!(ct.line, 0);
        assert_eq!(ct.max_entries, 262_144);
        assert_eq!(ct.max_unvalidated, 16_384);
        // The same timeouts as the datapath's own defaults.
        let ns: Vec<u64> = ct.timeouts_s.iter().map(|s| s * 1_000_000_000).collect();
        assert_eq!(ns, CtConfig::defaults().timeout_ns);
        for (value, range) in [
            (ct.max_entries, &CT_MAX_ENTRIES_RANGE),
            (ct.max_unvalidated, &CT_MAX_UNVALIDATED_RANGE),
        ] {
            assert!(range.contains(&value));
        }
        assert!(ct.timeouts_s.iter().all(|t| CT_TIMEOUT_RANGE_S.contains(t)));
        let fw = Firewall::default();
        assert_eq!(fw.default_action, Action::Allow);
        assert!(!fw.stateful && !fw.log_default && fw.rules.is_empty());
        assert_eq!(fw.fragments, FragmentPolicy::MatchL3);
    }

    #[test]
    fn tracking_is_on_when_something_asks_for_it_and_nothing_forbids_it() {
        let rule = Rule {
            name: None,
            priority: 0,
            action: Action::Allow,
            log: false,
            src: AddrMatch::Any,
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
        let mut p = policy();
        assert!(!p.tracks_connections() && !p.uses_state());
        p.firewall.rules.push(rule.clone());
        assert!(!p.tracks_connections());
        p.firewall.rules.push(Rule {
            state: Some(STATE_NEW),
            ..rule
        });
        assert!(p.uses_state() && p.tracks_connections());
        p.conntrack.enabled = false;
        assert!(!p.tracks_connections());

        let mut p = policy();
        p.firewall.stateful = true;
        assert!(p.tracks_connections());
        p.firewall.stateful = false;
        p.conntrack.present = true;
        assert!(p.tracks_connections());
        p.conntrack.enabled = false;
        assert!(!p.tracks_connections());
    }
}
