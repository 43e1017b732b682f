//! The daemon's reader of the frames the kernel copies: DHCPv4 (RFC 2131/2132, option
//! overload, RFC 3396 long options, option 82), DHCPv6 (RFC 8415: relay messages, IA_NA
//! with IAADDR, IA_PD with IAPREFIX, client FQDN) and router advertisements (RFC 4861).
//!
//! Every input is untrusted: each read is bounds-checked, nesting is bounded by
//! [`MAX_DEPTH`], and what does not hold together is kept as far as it went and named in
//! [`Anomalies`] rather than refused, so a broken option never hides the rest of a message
//! from the lease table. Nothing here panics on any input (`wire_never_panics` feeds it
//! random and mutated bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use palisade_common::packet::{self, FAMILY_V6, Frame, IPPROTO_ICMPV6, IPPROTO_UDP};

/// Nesting depth of DHCPv6 relay messages and of options inside options.
pub const MAX_DEPTH: usize = 8;
/// Longest hostname kept (a DNS name's limit).
pub const MAX_HOSTNAME: usize = 253;
/// Addresses, prefixes or RA options one message may contribute (the rest are counted as
/// an anomaly and left out).
pub const MAX_ITEMS: usize = 32;

/// What did not hold together in a message, as a set of bits with names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Anomalies(pub u32);

impl Anomalies {
    /// An option's length runs past the end of its area.
    pub const TRUNCATED_OPTION: u32 = 1;
    /// DHCPv4 options without the end option (255).
    pub const NO_END: u32 = 2;
    /// Option 52 with a value other than 1, 2 or 3, or of a length other than 1.
    pub const BAD_OVERLOAD: u32 = 4;
    /// An option of a length its type does not allow (an address of 3 bytes, ...).
    pub const BAD_LENGTH: u32 = 8;
    /// A router-advertisement option of length 0 (RFC 4861 says to discard the packet).
    pub const ZERO_LENGTH: u32 = 16;
    /// The message is shorter than its fixed header.
    pub const SHORT: u32 = 32;
    /// Relay messages or options nested deeper than [`MAX_DEPTH`].
    pub const TOO_DEEP: u32 = 64;
    /// More than [`MAX_ITEMS`] addresses, prefixes or options.
    pub const TOO_MANY: u32 = 128;
    /// A hostname with bytes that are not printable ASCII (they are replaced by `?`).
    pub const BAD_HOSTNAME: u32 = 256;
    /// No DHCP magic cookie after the fixed header.
    pub const NO_COOKIE: u32 = 512;
    /// The frame was cut at the record size.
    pub const CUT: u32 = 1024;

    const NAMES: [(u32, &'static str); 11] = [
        (Self::TRUNCATED_OPTION, "truncated-option"),
        (Self::NO_END, "no-end-option"),
        (Self::BAD_OVERLOAD, "bad-overload"),
        (Self::BAD_LENGTH, "bad-length"),
        (Self::ZERO_LENGTH, "zero-length-option"),
        (Self::SHORT, "short"),
        (Self::TOO_DEEP, "too-deep"),
        (Self::TOO_MANY, "too-many"),
        (Self::BAD_HOSTNAME, "bad-hostname"),
        (Self::NO_COOKIE, "no-magic-cookie"),
        (Self::CUT, "cut"),
    ];

    fn add(&mut self, bit: u32) {
        self.0 |= bit;
    }

    #[must_use]
    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    /// The names of the bits set.
    #[must_use]
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(b, _)| self.0 & b != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

/// A frame the kernel copied, read down to its DHCP, DHCPv6 or RA message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snooped {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    V4(V4Message),
    V6(V6Message),
    Ra(RouterAdvert),
}

/// Why a frame is not read at all (its message is never partly trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Not an IP frame the packet parser takes (its reason code).
    Frame(u32),
    /// Not UDP to a DHCP port or an ICMPv6 router advertisement.
    NotDhcp,
    /// The UDP or ICMPv6 header is cut off.
    Short,
}

/// Reads a frame from its Ethernet header. `cut` says the kernel copied only part of it.
///
/// # Errors
/// When the frame is not DHCP, DHCPv6 or an RA at all.
pub fn read_frame(frame: &[u8], cut: bool) -> Result<Snooped, WireError> {
    let p = match packet::parse(frame) {
        Ok(Frame::Ip(p)) => p,
        Ok(Frame::NotIp) => return Err(WireError::NotDhcp),
        Err(r) => return Err(WireError::Frame(r)),
    };
    let mac = |at: usize| -> [u8; 6] {
        let mut m = [0u8; 6];
        if let Some(b) = frame.get(at..at + 6) {
            m.copy_from_slice(b);
        }
        m
    };
    let addr = |a: [u8; 16]| -> IpAddr {
        let v6 = Ipv6Addr::from(a);
        if p.family == FAMILY_V6 {
            IpAddr::V6(v6)
        } else {
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
    };
    let l4 = usize::from(p.l4_offset);
    let end = (l4 + usize::from(p.l4_len)).min(frame.len());
    let body = frame.get(l4..end).ok_or(WireError::Short)?;
    let mut anomalies = Anomalies::default();
    if cut || end < l4 + usize::from(p.l4_len) {
        anomalies.add(Anomalies::CUT);
    }
    let message = match p.proto {
        IPPROTO_UDP => {
            let payload = body.get(8..).ok_or(WireError::Short)?;
            let ports = [p.sport, p.dport];
            if ports.iter().any(|x| matches!(x, 67 | 68)) && p.family != FAMILY_V6 {
                let mut m = read_v4(payload);
                m.anomalies.0 |= anomalies.0;
                Message::V4(m)
            } else if ports.iter().any(|x| matches!(x, 546 | 547)) && p.family == FAMILY_V6 {
                let mut m = read_v6(payload);
                m.anomalies.0 |= anomalies.0;
                Message::V6(m)
            } else {
                return Err(WireError::NotDhcp);
            }
        }
        IPPROTO_ICMPV6 if body.first() == Some(&134) => {
            let mut ra = read_ra(body);
            ra.anomalies.0 |= anomalies.0;
            Message::Ra(ra)
        }
        _ => return Err(WireError::NotDhcp),
    };
    Ok(Snooped {
        src_mac: mac(6),
        dst_mac: mac(0),
        src: addr(p.src),
        dst: addr(p.dst),
        message,
    })
}

// ---- DHCPv4 ----

/// DHCPv4 message types (option 53).
pub const DISCOVER: u8 = 1;
pub const OFFER: u8 = 2;
pub const REQUEST: u8 = 3;
pub const DECLINE: u8 = 4;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;
pub const RELEASE: u8 = 7;
pub const INFORM: u8 = 8;

/// The fixed BOOTP header, up to and including `file`.
const V4_FIXED: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Where `sname` and `file` lie in the fixed header.
const SNAME: std::ops::Range<usize> = 44..108;
const FILE: std::ops::Range<usize> = 108..236;

/// Option 82's sub-options (RFC 3046).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayInfo {
    pub circuit_id: Option<Vec<u8>>,
    pub remote_id: Option<Vec<u8>>,
    /// Sub-options besides these two.
    pub others: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Message {
    /// 1 request, 2 reply.
    pub op: u8,
    pub xid: u32,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    /// The client's hardware address when it is an Ethernet one (`htype` 1, `hlen` 6).
    pub chaddr: Option<[u8; 6]>,
    /// Option 53.
    pub msg_type: Option<u8>,
    /// Option 12, or the name of option 81 (client FQDN).
    pub hostname: Option<String>,
    /// Option 51, seconds (`u32::MAX`: infinite).
    pub lease_secs: Option<u32>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 50.
    pub requested: Option<Ipv4Addr>,
    /// Option 82.
    pub relay: Option<RelayInfo>,
    /// Option 52's value when it was valid: 1 `file`, 2 `sname`, 3 both.
    pub overload: u8,
    pub anomalies: Anomalies,
}

impl Default for V4Message {
    fn default() -> Self {
        Self {
            op: 0,
            xid: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: None,
            msg_type: None,
            hostname: None,
            lease_secs: None,
            server_id: None,
            requested: None,
            relay: None,
            overload: 0,
            anomalies: Anomalies::default(),
        }
    }
}

/// The options of a DHCPv4 message, joined across areas and repeats (RFC 3396: an option
/// that appears more than once is one option whose value is the concatenation).
#[derive(Default)]
struct V4Options {
    values: Vec<(u8, Vec<u8>)>,
}

impl V4Options {
    fn push(&mut self, code: u8, value: &[u8]) {
        if let Some((_, v)) = self.values.iter_mut().find(|(c, _)| *c == code) {
            v.extend_from_slice(value);
        } else {
            self.values.push((code, value.to_vec()));
        }
    }

    fn get(&self, code: u8) -> Option<&[u8]> {
        self.values
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }
}

/// Walks one option area; returns whether it ended with option 255.
fn walk_v4(area: &[u8], out: &mut V4Options, anomalies: &mut Anomalies) -> bool {
    let mut i = 0;
    // Every turn consumes at least one byte, so the area's length bounds the walk.
    while i < area.len() {
        let code = area[i];
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => return true,
            _ => {}
        }
        let Some(&len) = area.get(i + 1) else {
            anomalies.add(Anomalies::TRUNCATED_OPTION);
            return false;
        };
        let start = i + 2;
        let Some(value) = area.get(start..start + usize::from(len)) else {
            anomalies.add(Anomalies::TRUNCATED_OPTION);
            return false;
        };
        out.push(code, value);
        i = start + usize::from(len);
    }
    false
}

fn v4_addr(v: Option<&[u8]>, anomalies: &mut Anomalies) -> Option<Ipv4Addr> {
    let v = v?;
    if let Ok(a) = <[u8; 4]>::try_from(v) {
        Some(Ipv4Addr::from(a))
    } else {
        anomalies.add(Anomalies::BAD_LENGTH);
        None
    }
}

/// Reads a DHCPv4 message (the UDP payload).
#[must_use]
pub fn read_v4(b: &[u8]) -> V4Message {
    let mut m = V4Message::default();
    let Some(fixed) = b.get(..V4_FIXED) else {
        m.anomalies.add(Anomalies::SHORT);
        if let Some(&op) = b.first() {
            m.op = op;
        }
        return m;
    };
    let word = |at: usize| [fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]];
    m.op = fixed[0];
    m.xid = u32::from_be_bytes(word(4));
    m.ciaddr = Ipv4Addr::from(word(12));
    m.yiaddr = Ipv4Addr::from(word(16));
    m.giaddr = Ipv4Addr::from(word(24));
    if fixed[1] == 1 && fixed[2] == 6 {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&fixed[28..34]);
        m.chaddr = Some(mac);
    }
    if b.get(V4_FIXED..V4_FIXED + 4) != Some(&MAGIC[..]) {
        m.anomalies.add(Anomalies::NO_COOKIE);
        return m;
    }
    let mut opts = V4Options::default();
    let ended = walk_v4(&b[V4_FIXED + 4..], &mut opts, &mut m.anomalies);
    // Option 52 is read from the options field only; it names which header fields carry
    // more options, read in the order RFC 2131 gives: `file`, then `sname`.
    let overload = match opts.get(52) {
        None => 0,
        Some([v @ 1..=3]) => *v,
        Some(_) => {
            m.anomalies.add(Anomalies::BAD_OVERLOAD);
            0
        }
    };
    let mut ended_all = ended;
    if overload != 0 {
        m.overload = overload;
        let before = opts.get(52).map(<[u8]>::to_vec);
        for (bit, range) in [(1u8, FILE), (2u8, SNAME)] {
            if overload & bit != 0 {
                ended_all &= walk_v4(&fixed[range], &mut opts, &mut m.anomalies);
            }
        }
        // An option 52 inside an overloaded field is meaningless: the first one stands.
        if opts.get(52).map(<[u8]>::to_vec) != before {
            m.anomalies.add(Anomalies::BAD_OVERLOAD);
        }
    }
    if !ended_all {
        m.anomalies.add(Anomalies::NO_END);
    }
    m.msg_type = match opts.get(53) {
        Some([t]) => Some(*t),
        Some(_) => {
            m.anomalies.add(Anomalies::BAD_LENGTH);
            None
        }
        None => None,
    };
    m.lease_secs = match opts.get(51) {
        Some(v) => match <[u8; 4]>::try_from(v) {
            Ok(a) => Some(u32::from_be_bytes(a)),
            Err(_) => {
                m.anomalies.add(Anomalies::BAD_LENGTH);
                None
            }
        },
        None => None,
    };
    m.server_id = v4_addr(opts.get(54), &mut m.anomalies);
    m.requested = v4_addr(opts.get(50), &mut m.anomalies);
    m.hostname = opts
        .get(12)
        .and_then(|v| hostname(v, &mut m.anomalies))
        .or_else(|| opts.get(81).and_then(|v| fqdn_v4(v, &mut m.anomalies)));
    if let Some(v) = opts.get(82) {
        m.relay = Some(relay_info(v, &mut m.anomalies));
    }
    m
}

/// Option 81 (RFC 4702): flags, two obsolete codes, then the name, in DNS wire form when
/// flag E (4) is set, ASCII otherwise.
fn fqdn_v4(v: &[u8], anomalies: &mut Anomalies) -> Option<String> {
    let Some((&flags, rest)) = v.split_first() else {
        anomalies.add(Anomalies::BAD_LENGTH);
        return None;
    };
    let Some(name) = rest.get(2..) else {
        anomalies.add(Anomalies::BAD_LENGTH);
        return None;
    };
    if flags & 4 != 0 {
        dns_name(name, anomalies)
    } else {
        hostname(name, anomalies)
    }
}

/// Option 82's sub-options; a broken one ends the walk.
fn relay_info(v: &[u8], anomalies: &mut Anomalies) -> RelayInfo {
    let mut r = RelayInfo::default();
    let mut i = 0;
    while i < v.len() {
        let code = v[i];
        let Some(&len) = v.get(i + 1) else {
            anomalies.add(Anomalies::TRUNCATED_OPTION);
            break;
        };
        let Some(value) = v.get(i + 2..i + 2 + usize::from(len)) else {
            anomalies.add(Anomalies::TRUNCATED_OPTION);
            break;
        };
        match code {
            1 => r.circuit_id = Some(value.to_vec()),
            2 => r.remote_id = Some(value.to_vec()),
            _ => r.others += 1,
        }
        i += 2 + usize::from(len);
    }
    r
}

/// A hostname as sent: printable ASCII kept, trailing NULs dropped (some clients send
/// C strings), anything else replaced by `?` and flagged; empty means none.
fn hostname(v: &[u8], anomalies: &mut Anomalies) -> Option<String> {
    let mut v = v;
    while let [rest @ .., 0] = v {
        v = rest;
    }
    if v.is_empty() {
        return None;
    }
    let mut s = String::with_capacity(v.len().min(MAX_HOSTNAME));
    for &c in v.iter().take(MAX_HOSTNAME) {
        if c.is_ascii_graphic() {
            s.push(char::from(c));
        } else {
            anomalies.add(Anomalies::BAD_HOSTNAME);
            s.push('?');
        }
    }
    Some(s)
}

/// A name in DNS wire form (labels, no compression), dotted; a broken one is flagged and
/// read as far as it goes.
fn dns_name(v: &[u8], anomalies: &mut Anomalies) -> Option<String> {
    let mut labels: Vec<String> = Vec::new();
    let mut i = 0;
    // Each label consumes at least one byte.
    while i < v.len() {
        let len = usize::from(v[i]);
        if len == 0 {
            break;
        }
        if len > 63 {
            anomalies.add(Anomalies::BAD_HOSTNAME);
            break;
        }
        let Some(label) = v.get(i + 1..i + 1 + len) else {
            anomalies.add(Anomalies::TRUNCATED_OPTION);
            break;
        };
        labels.push(hostname(label, anomalies).unwrap_or_default());
        i += 1 + len;
    }
    let name = labels.join(".");
    if name.is_empty() {
        None
    } else {
        Some(name.chars().take(MAX_HOSTNAME).collect())
    }
}

// ---- DHCPv6 ----

/// DHCPv6 message types.
pub const V6_SOLICIT: u8 = 1;
pub const V6_ADVERTISE: u8 = 2;
pub const V6_REQUEST: u8 = 3;
pub const V6_CONFIRM: u8 = 4;
pub const V6_RENEW: u8 = 5;
pub const V6_REBIND: u8 = 6;
pub const V6_REPLY: u8 = 7;
pub const V6_RELEASE: u8 = 8;
pub const V6_DECLINE: u8 = 9;
pub const V6_RELAY_FORW: u8 = 12;
pub const V6_RELAY_REPL: u8 = 13;

/// An address of an IA_NA (IAADDR) or a prefix of an IA_PD (IAPREFIX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V6Binding {
    pub addr: Ipv6Addr,
    /// 128 for an address.
    pub prefix_len: u8,
    pub preferred: u32,
    pub valid: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V6Message {
    /// The innermost message's type (relay messages unwrapped).
    pub msg_type: u8,
    pub xid: u32,
    /// Relay messages the message came through.
    pub relays: u8,
    /// The peer address of the innermost relay message (the client's address).
    pub relay_peer: Option<Ipv6Addr>,
    pub client_duid: Option<Vec<u8>>,
    pub server_duid: Option<Vec<u8>>,
    /// IAADDRs and IAPREFIXes of IAs whose status is success.
    pub bindings: Vec<V6Binding>,
    /// Option 39's name.
    pub hostname: Option<String>,
    pub anomalies: Anomalies,
}

impl V6Message {
    /// The client's MAC address when its DUID carries one (DUID-LLT or DUID-LL of an
    /// Ethernet interface).
    #[must_use]
    pub fn duid_mac(&self) -> Option<[u8; 6]> {
        let d = self.client_duid.as_deref()?;
        let (kind, hw) = (
            u16::from_be_bytes([*d.first()?, *d.get(1)?]),
            u16::from_be_bytes([*d.get(2)?, *d.get(3)?]),
        );
        let at = match kind {
            1 => 8,
            3 => 4,
            _ => return None,
        };
        if hw != 1 {
            return None;
        }
        <[u8; 6]>::try_from(d.get(at..at + 6)?).ok()
    }
}

/// Iterates DHCPv6 options (code, value); a truncated one is flagged and ends the walk.
fn v6_options<'a>(b: &'a [u8], anomalies: &mut Anomalies) -> Vec<(u16, &'a [u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let Some(h) = b.get(i..i + 4) else {
            anomalies.add(Anomalies::TRUNCATED_OPTION);
            break;
        };
        let code = u16::from_be_bytes([h[0], h[1]]);
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let Some(value) = b.get(i + 4..i + 4 + len) else {
            anomalies.add(Anomalies::TRUNCATED_OPTION);
            break;
        };
        out.push((code, value));
        i += 4 + len;
    }
    out
}

/// Reads a DHCPv6 message (the UDP payload).
#[must_use]
pub fn read_v6(b: &[u8]) -> V6Message {
    let mut m = V6Message::default();
    read_v6_into(b, &mut m, 0);
    m
}

fn read_v6_into(b: &[u8], m: &mut V6Message, depth: usize) {
    let Some(&msg_type) = b.first() else {
        m.anomalies.add(Anomalies::SHORT);
        return;
    };
    m.msg_type = msg_type;
    if matches!(msg_type, V6_RELAY_FORW | V6_RELAY_REPL) {
        // hop-count, link-address, peer-address, then options with the relayed message.
        let Some(peer) = b.get(18..34) else {
            m.anomalies.add(Anomalies::SHORT);
            return;
        };
        if let Ok(a) = <[u8; 16]>::try_from(peer) {
            m.relay_peer = Some(Ipv6Addr::from(a));
        }
        m.relays = m.relays.saturating_add(1);
        if depth >= MAX_DEPTH {
            m.anomalies.add(Anomalies::TOO_DEEP);
            return;
        }
        let opts = v6_options(&b[34..], &mut m.anomalies);
        if let Some((_, inner)) = opts.iter().find(|(c, _)| *c == 9) {
            read_v6_into(inner, m, depth + 1);
        }
        return;
    }
    let Some(head) = b.get(..4) else {
        m.anomalies.add(Anomalies::SHORT);
        return;
    };
    m.xid = u32::from_be_bytes([0, head[1], head[2], head[3]]);
    for (code, value) in v6_options(&b[4..], &mut m.anomalies) {
        match code {
            1 => m.client_duid = Some(value.to_vec()),
            2 => m.server_duid = Some(value.to_vec()),
            // IA_NA / IA_PD: IAID, T1, T2, then options.
            3 | 25 => match value.get(12..) {
                Some(inner) => ia(inner, code == 25, m, depth + 1),
                None => m.anomalies.add(Anomalies::BAD_LENGTH),
            },
            39 => match value.split_first() {
                Some((_, name)) => m.hostname = dns_name(name, &mut m.anomalies),
                None => m.anomalies.add(Anomalies::BAD_LENGTH),
            },
            _ => {}
        }
    }
}

/// An IA's options: its IAADDRs or IAPREFIXes, kept unless its status (option 13) is an
/// error.
fn ia(b: &[u8], pd: bool, m: &mut V6Message, depth: usize) {
    if depth > MAX_DEPTH {
        m.anomalies.add(Anomalies::TOO_DEEP);
        return;
    }
    let opts = v6_options(b, &mut m.anomalies);
    let failed = opts
        .iter()
        .any(|(c, v)| *c == 13 && v.get(..2).is_some_and(|s| s != [0, 0]));
    if failed {
        return;
    }
    for (code, value) in opts {
        let binding = match (code, pd) {
            (5, false) => value.get(..24).map(|v| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&v[..16]);
                V6Binding {
                    addr: Ipv6Addr::from(a),
                    prefix_len: 128,
                    preferred: u32::from_be_bytes([v[16], v[17], v[18], v[19]]),
                    valid: u32::from_be_bytes([v[20], v[21], v[22], v[23]]),
                }
            }),
            (26, true) => value.get(..25).map(|v| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&v[9..25]);
                V6Binding {
                    addr: Ipv6Addr::from(a),
                    prefix_len: v[8],
                    preferred: u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                    valid: u32::from_be_bytes([v[4], v[5], v[6], v[7]]),
                }
            }),
            _ => continue,
        };
        let Some(binding) = binding else {
            m.anomalies.add(Anomalies::BAD_LENGTH);
            continue;
        };
        if m.bindings.len() >= MAX_ITEMS {
            m.anomalies.add(Anomalies::TOO_MANY);
            return;
        }
        m.bindings.push(binding);
    }
}

// ---- Router advertisements ----

/// A prefix information option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaPrefix {
    pub prefix: Ipv6Addr,
    pub len: u8,
    /// L (on-link) and A (autonomous) flags, as sent.
    pub flags: u8,
    pub valid: u32,
    pub preferred: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterAdvert {
    pub hop_limit: u8,
    /// M (managed, 0x80) and O (other, 0x40) among others.
    pub flags: u8,
    /// Seconds this router is a default router; 0: not one.
    pub lifetime: u16,
    /// Option 1.
    pub source_mac: Option<[u8; 6]>,
    pub prefixes: Vec<RaPrefix>,
    /// Option 5.
    pub mtu: Option<u32>,
    /// Option 25.
    pub dns: Vec<Ipv6Addr>,
    pub anomalies: Anomalies,
}

/// Reads a router advertisement (the ICMPv6 message from its type byte).
#[must_use]
pub fn read_ra(b: &[u8]) -> RouterAdvert {
    let mut ra = RouterAdvert::default();
    let Some(head) = b.get(..16) else {
        ra.anomalies.add(Anomalies::SHORT);
        return ra;
    };
    ra.hop_limit = head[4];
    ra.flags = head[5];
    ra.lifetime = u16::from_be_bytes([head[6], head[7]]);
    let opts = &b[16..];
    let mut i = 0;
    let mut count = 0;
    while i < opts.len() {
        let Some(h) = opts.get(i..i + 2) else {
            ra.anomalies.add(Anomalies::TRUNCATED_OPTION);
            break;
        };
        let len = usize::from(h[1]) * 8;
        if len == 0 {
            // RFC 4861 4.6: the node must discard the packet; the snooper keeps what came
            // before and says so.
            ra.anomalies.add(Anomalies::ZERO_LENGTH);
            break;
        }
        let Some(v) = opts.get(i..i + len) else {
            ra.anomalies.add(Anomalies::TRUNCATED_OPTION);
            break;
        };
        count += 1;
        if count > MAX_ITEMS {
            ra.anomalies.add(Anomalies::TOO_MANY);
            break;
        }
        match h[0] {
            1 if len == 8 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&v[2..8]);
                ra.source_mac = Some(mac);
            }
            3 if len == 32 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&v[16..32]);
                ra.prefixes.push(RaPrefix {
                    len: v[2],
                    flags: v[3],
                    valid: u32::from_be_bytes([v[4], v[5], v[6], v[7]]),
                    preferred: u32::from_be_bytes([v[8], v[9], v[10], v[11]]),
                    prefix: Ipv6Addr::from(a),
                });
            }
            5 if len == 8 => ra.mtu = Some(u32::from_be_bytes([v[4], v[5], v[6], v[7]])),
            25 if len >= 24 => {
                for chunk in v[8..].chunks_exact(16) {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(chunk);
                    ra.dns.push(Ipv6Addr::from(a));
                }
            }
            1 | 3 | 5 | 25 => ra.anomalies.add(Anomalies::BAD_LENGTH),
            _ => {}
        }
        i += len;
    }
    ra
}
