//! Drop reasons: every packet Palisade drops carries exactly one of these. They index the
//! per-reason counters and travel in events, so the numbers are part of the on-disk/pinned ABI.

/// Not a drop (the packet passed).
pub const PASS: u32 = 0;
/// A firewall rule with action `drop` matched.
pub const RULE: u32 = 1;
/// No rule matched and the default action is `drop`.
pub const DEFAULT: u32 = 2;
/// A `rate-limit` rule matched and its token bucket was empty.
pub const RATE_LIMIT: u32 = 3;
/// Ethernet or VLAN header truncated, or more VLAN tags than Palisade parses.
pub const MALFORMED_L2: u32 = 4;
/// IPv4/IPv6 header truncated or inconsistent (wrong version, IHL < 5, total length shorter
/// than the header). A total length *beyond* the frame is not an error as long as the headers
/// Palisade reads are present: the stack drops such packets anyway, and multi-buffer XDP frames
/// legitimately carry less than the IP length in their first buffer.
pub const MALFORMED_L3: u32 = 5;
/// IPv6 extension-header chain truncated or longer than [`crate::packet::MAX_IPV6_EXT_HEADERS`].
pub const IPV6_EXT_CHAIN: u32 = 6;
/// TCP/UDP/ICMP header truncated in an unfragmented packet or a first fragment.
pub const MALFORMED_L4: u32 = 7;
/// A non-first fragment dropped by the fragment policy.
pub const FRAGMENT: u32 = 8;
/// DNS: the name is on a blocklist.
pub const DNS_BLOCKED: u32 = 9;
/// DNS: allowlist mode and the name is not on the allowlist.
pub const DNS_NOT_ALLOWED: u32 = 10;
/// DNS: the labels below an allowed suffix exceed the entry's entropy bound.
pub const DNS_ENTROPY: u32 = 11;
/// DNS: the matching allowlist entry has expired.
pub const DNS_EXPIRED: u32 = 12;
/// DNS: the client exceeded its query rate.
pub const DNS_RATE: u32 = 13;
/// DNS: the query could not be parsed safely.
pub const DNS_MALFORMED: u32 = 14;

/// Connection tracking: a new flow from an address over its per-source limit (concurrent
/// flows or new flows per second, `[conntrack]`).
pub const CT_LIMIT: u32 = 15;

/// DNS egress: a UDP send to a DNS port that the kernel would split into several datagrams
/// (UDP segmentation offload, `UDP_SEGMENT`). One send would leave as several queries while
/// the hook sees one packet; no resolver client sends this way, so it is refused whatever
/// the mode.
pub const DNS_GSO: u32 = 16;
/// DNS egress, allowlist: every per-CPU inspection slot was in use (more egress
/// inspections interrupted or preempted on one CPU than there are slots), so the packet
/// could not be inspected and is refused.
pub const DNS_BUSY: u32 = 17;
/// DNS egress, allowlist: an internal error (a map that should always answer did not)
/// kept the packet from being inspected, so it is refused.
pub const DNS_INTERNAL: u32 = 18;

/// DNS: a blocked query that would have been answered was sent to or from a broadcast,
/// multicast or unspecified MAC or IP address; it is dropped, never answered (an answer
/// there would reach many hosts, or a forged one).
pub const DNS_GROUP_ADDRESS: u32 = 19;
/// DNS: a blocked query that would have been answered, but the client's prefix has used
/// its answer budget (`[dns] answer_rate`); dropped without an answer, so Palisade cannot
/// be made to bounce traffic at a forged source address.
pub const DNS_ANSWER_BUDGET: u32 = 20;

/// DNS over TCP: a segment that does not start where Palisade knows how the resolver will
/// read the stream (an overlap, a gap, urgent data, data after the FIN, or a flow whose
/// handshake was not seen). See `dns::stream`.
pub const DNS_STREAM: u32 = 21;

/// A TCP segment of no tracked flow that is not a valid SYN-cookie ACK, or a segment outside
/// the windows of a tracked flow (`[shield] tcp_invalid = "drop"`): ACK, RST and FIN floods.
pub const SHIELD_TCP_INVALID: u32 = 22;

/// A UDP datagram from a reflector port (`[shield] amplification_ports`) that answers nothing
/// this host sent: reflected amplification.
pub const SHIELD_AMPLIFICATION: u32 = 23;

/// A new flow from a source prefix (`[shield] source_prefix_v4`/`_v6`) that went over
/// `[shield] source_rate` in this window.
pub const SHIELD_SOURCE_RATE: u32 = 24;

/// A packet opening a flow, or of no flow, from a source prefix blocked for going over
/// `[shield] source_rate` (`source_block`).
pub const SHIELD_SOURCE_BLOCKED: u32 = 25;

/// An ICMP echo request over `[shield] icmp_echo_rate` (its source prefix's) or
/// `icmp_echo_global_rate` (all sources').
pub const SHIELD_ICMP_RATE: u32 = 26;

/// An ICMP echo request whose payload is over `[shield] icmp_echo_max_payload`.
pub const SHIELD_ICMP_OVERSIZED: u32 = 27;

/// A new flow through the NAT found no free external port in `nat::PORT_RETRIES` tries
/// (TC egress of the outside interface; never remapped onto a port in use).
pub const NAT_PORT_EXHAUSTED: u32 = 28;

/// A new flow through the NAT could not be recorded: a mapping table is full.
pub const NAT_TABLE_FULL: u32 = 29;

/// A packet to a load-balanced service (`[[lb.service]]`) none of whose backends takes new
/// flows (all down, draining or removed) and of no flow in the flow table.
pub const LB_NO_BACKEND: u32 = 30;

/// A packet to a load-balanced service whose rewrite the kernel refused (the frame could
/// not be grown for the outer header, or its headers were not in the frame).
pub const LB_REWRITE: u32 = 31;

/// TLS (`[tls]`, blocklist mode): the ClientHello's server name is on a block list.
pub const TLS_SNI_BLOCKED: u32 = 32;
/// TLS, allowlist mode: the server name is on no allow list.
pub const TLS_SNI_NOT_ALLOWED: u32 = 33;
/// TLS: the ClientHello names no server and `[tls] no_sni = "block"`.
pub const TLS_NO_SNI: u32 = 34;
/// TLS: the server name is an IP address and `[tls] ip_literal = "block"`.
pub const TLS_IP_LITERAL: u32 = 35;
/// TLS: the ClientHello carries Encrypted Client Hello (only the outer name is visible)
/// and `[tls] ech = "block"`.
pub const TLS_ECH: u32 = 36;
/// TLS: the ClientHello's JA4 fingerprint is on `[tls] ja4_block`.
pub const TLS_JA4_BLOCKED: u32 = 37;
/// TLS: `[tls] ja4_allow` lists fingerprints and the ClientHello's is not among them.
pub const TLS_JA4_NOT_ALLOWED: u32 = 38;
/// TLS: the client's first bytes on a TLS port are not a readable ClientHello (not TLS,
/// malformed, over 16 KiB, or a retransmission that changes bytes already sent) and
/// `[tls] malformed = "block"`.
pub const TLS_MALFORMED: u32 = 39;
/// TLS: the ClientHello was not whole within `[tls]`'s time bound (2 s), or more flows
/// were waiting for theirs than the table holds, and `[tls] malformed = "block"`.
pub const TLS_INCOMPLETE: u32 = 40;
/// TLS: QUIC (UDP to a `[tls]` port) with `[tls] quic = "block"`, so that clients fall
/// back to TCP, where the policy sees the server name.
pub const TLS_QUIC: u32 = 41;
/// DNS binding: a cgroup in bind mode connected (or sent) to an address it never received
/// in a DNS answer, or whose binding expired, and that is not allowed explicitly.
pub const BIND_UNRESOLVED: u32 = 45;
/// DNS answer check: an owner name or CNAME target of an answer to a cgroup in bind mode is
/// on the `[dns.egress]` blocklist (CNAME cloaking); the answer is dropped.
pub const DNS_ANSWER_BLOCKED: u32 = 46;
/// DNS answer check: an answer with more than 8 CNAME records, or more distinct names than
/// the check reads (16); dropped.
pub const DNS_ANSWER_CHAIN: u32 = 47;
/// Resolver pinning: a cgroup pinned to its resolvers (`[dns.bind] resolvers`) connected or
/// sent to port 53 (UDP or TCP) of a server that is not one of them.
pub const DNS_RESOLVER_PINNED: u32 = 48;
/// Resolver pinning: a pinned cgroup tried encrypted DNS: port 853 (DoT over TCP, DoQ over
/// UDP) or any port of a known DoH endpoint (`[dns.bind] doh_endpoints`).
pub const DNS_ENCRYPTED: u32 = 49;
/// DNS rebinding protection (`[dns.bind] rebinding = "refuse"`): an answer to a cgroup in
/// bind mode puts a private address (RFC 1918, loopback, link-local, CGNAT, ULA, 0/8, and
/// their IPv4-mapped forms) behind a name not on `rebinding_allow`; the answer is dropped.
pub const DNS_REBINDING: u32 = 50;

/// DHCP (`[dhcp] rogue = "block"`): a DHCPv4 or DHCPv6 server's message from a source
/// not on `[dhcp] trusted`.
pub const DHCP_ROGUE_SERVER: u32 = 42;
/// DHCP: an IPv6 router advertisement from a router not on `[dhcp] trusted_routers`.
pub const DHCP_ROGUE_ROUTER: u32 = 43;

/// Threat intelligence (`[intel]`): the source of what arrives, or the destination of what
/// leaves, is an indicator of a feed with `action = "drop"`.
pub const INTEL_DROP: u32 = 44;

/// DLP (`[dlp] action = "reset"`): a packet of a TCP flow whose TLS plaintext matched a
/// detector, dropped by the TC egress program.
pub const DLP_RESET: u32 = 51;

/// Resolver pinning: a pinned cgroup asked for `use-application-dns.net` (Firefox's DoH
/// canary); the query never reaches the resolver and is answered NXDOMAIN in the kernel.
pub const DNS_DOH_CANARY: u32 = 52;

/// IDS (`[ids]`): a packet of a flow a `drop` rule matched, dropped in XDP as it arrives or
/// at tcx as the host sends it.
pub const IDS_DROP: u32 = 53;

/// A `redirect` rule's packet too big for the interface it was sent to (`redirect_to`, by
/// `bpf_check_mtu`) or for the route (`route_table`, by the fib lookup's MTU check).
pub const REDIRECT_TOO_BIG: u32 = 54;

/// DNS binding (`[dns.bind]`): a UDP answer to a cgroup in bind mode that answers no query
/// the cgroup sent (no pending query with its resolver, ports, id and question: spoofed,
/// unsolicited or a second copy); dropped before the stub reads it.
pub const DNS_ANSWER_UNSOLICITED: u32 = 55;

/// Size of the per-reason counter array.
pub const COUNT: u32 = 56;

/// Short stable names, indexed by reason; used in metrics labels, events and listings.
pub const NAMES: [&str; COUNT as usize] = [
    "pass",
    "rule",
    "default",
    "rate-limit",
    "malformed-l2",
    "malformed-l3",
    "ipv6-ext-chain",
    "malformed-l4",
    "fragment",
    "dns-blocked",
    "dns-not-allowed",
    "dns-entropy",
    "dns-expired",
    "dns-rate",
    "dns-malformed",
    "conn-limit",
    "dns-gso",
    "dns-busy",
    "dns-internal",
    "dns-group-address",
    "dns-answer-budget",
    "dns-stream",
    "shield-tcp-invalid",
    "shield-amplification",
    "shield-source-rate",
    "shield-source-blocked",
    "shield-icmp-rate",
    "shield-icmp-oversized",
    "nat-port-exhausted",
    "nat-table-full",
    "lb-no-backend",
    "lb-rewrite",
    "tls-sni-blocked",
    "tls-sni-not-allowed",
    "tls-no-sni",
    "tls-ip-literal",
    "tls-ech",
    "tls-ja4-blocked",
    "tls-ja4-not-allowed",
    "tls-malformed",
    "tls-incomplete",
    "tls-quic",
    "dhcp-rogue-server",
    "dhcp-rogue-router",
    "intel-drop",
    "bind-unresolved",
    "dns-answer-blocked",
    "dns-answer-chain",
    "dns-resolver-pinned",
    "dns-encrypted",
    "dns-rebinding",
    "dlp-reset",
    "dns-doh-canary",
    "ids-drop",
    "redirect-too-big",
    "dns-answer-unsolicited",
];

/// The name of a reason code, `"unknown"` for codes this build does not know.
#[must_use]
pub fn name(reason: u32) -> &'static str {
    NAMES.get(reason as usize).copied().unwrap_or("unknown")
}
