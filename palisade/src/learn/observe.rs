//! What learning sees: connections (5-tuples with their initiator), the host's DNS queries
//! and the answers it received, read from capture records or from the daemon.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::replay::capture::Record;

/// DNS ports whose UDP answers are read for names (answers come from port 53).
pub const DNS_PORT: u16 = 53;
/// At most this many compression pointers are followed in one name.
const MAX_POINTER_HOPS: usize = 16;
/// At most this many answer records are read from one message.
const MAX_ANSWERS: usize = 64;

/// The transport of a frame, as far as learning needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    /// Ports (0 for protocols without them; for ICMP the type is in `sport`).
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub payload: &'a [u8],
}

/// Parses an Ethernet frame (up to two VLAN tags) down to its transport payload. IPv6
/// extension headers are not walked: such packets are taken with their first next header.
#[must_use]
pub fn parse(frame: &[u8]) -> Option<L4<'_>> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    at += 2;
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = u16::from_be_bytes([*frame.get(at + 2)?, *frame.get(at + 3)?]);
            at += 4;
        }
    }
    let ip = frame.get(at..)?;
    let (src, dst, proto, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if ip.len() < 20 || ihl < 20 || ip.len() < ihl {
                return None;
            }
            // Non-first fragments carry no transport header.
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).clamp(ihl, ip.len());
            let s: [u8; 4] = ip[12..16].try_into().ok()?;
            let d: [u8; 4] = ip[16..20].try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), ip[9], &ip[ihl..total])
        }
        0x86dd => {
            if ip.len() < 40 {
                return None;
            }
            let s: [u8; 16] = ip[8..24].try_into().ok()?;
            let d: [u8; 16] = ip[24..40].try_into().ok()?;
            let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let end = (40 + len).min(ip.len());
            (IpAddr::from(s), IpAddr::from(d), ip[6], &ip[40..end])
        }
        _ => return None,
    };
    let (sport, dport, tcp_flags, payload) = match proto {
        6 => {
            let off = usize::from(l4.get(12)? >> 4) * 4;
            let flags = *l4.get(13)?;
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
                flags,
                l4.get(off..).unwrap_or(&[]),
            )
        }
        17 => (
            u16::from_be_bytes([*l4.first()?, *l4.get(1)?]),
            u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]),
            0,
            l4.get(8..).unwrap_or(&[]),
        ),
        1 | 58 => (u16::from(*l4.first()?), 0, 0, l4.get(8..).unwrap_or(&[])),
        _ => (0, 0, 0, l4),
    };
    Some(L4 {
        src,
        dst,
        proto,
        sport,
        dport,
        tcp_flags,
        payload,
    })
}

/// A DNS message's question name (lower case, no trailing dot) and the A/AAAA addresses of
/// its answer section with their TTLs. `None` for anything that is not a response with one
/// question.
#[must_use]
pub fn dns_answer(msg: &[u8]) -> Option<(String, Vec<(IpAddr, u32)>)> {
    if msg.len() < 12 || msg[2] & 0x80 == 0 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let ancount = usize::from(u16::from_be_bytes([msg[6], msg[7]])).min(MAX_ANSWERS);
    let (name, mut at) = read_name(msg, 12)?;
    at += 4;
    let mut addrs = Vec::new();
    for _ in 0..ancount {
        let (_, next) = read_name(msg, at)?;
        let rr = msg.get(next..next + 10)?;
        let rtype = u16::from_be_bytes([rr[0], rr[1]]);
        let ttl = u32::from_be_bytes([rr[4], rr[5], rr[6], rr[7]]);
        let rdlen = usize::from(u16::from_be_bytes([rr[8], rr[9]]));
        let data = msg.get(next + 10..next + 10 + rdlen)?;
        match (rtype, rdlen) {
            (1, 4) => addrs.push((IpAddr::from(<[u8; 4]>::try_from(data).ok()?), ttl)),
            (28, 16) => addrs.push((IpAddr::from(<[u8; 16]>::try_from(data).ok()?), ttl)),
            _ => {}
        }
        at = next + 10 + rdlen;
    }
    Some((name, addrs))
}

/// A DNS query's question name (lower case), for a message with the QR bit clear.
#[must_use]
pub fn dns_query(msg: &[u8]) -> Option<String> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    read_name(msg, 12).map(|(n, _)| n)
}

/// Reads the name at `at`: the name (lower case, dotted) and where the record continues.
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut resume = None;
    let mut hops = 0;
    loop {
        let len = *msg.get(at)?;
        if len & 0xc0 == 0xc0 {
            let target = usize::from(u16::from_be_bytes([len, *msg.get(at + 1)?]) & 0x3fff);
            hops += 1;
            if hops > MAX_POINTER_HOPS || target >= at {
                return None;
            }
            resume.get_or_insert(at + 2);
            at = target;
            continue;
        }
        if len == 0 {
            let name = labels.join(".");
            return Some((name, resume.unwrap_or(at + 1)));
        }
        let label = msg.get(at + 1..at + 1 + usize::from(len))?;
        // Host names only: a label with any other byte (a dot, a quote, a space) makes the
        // name unusable in a policy, so the message is left out.
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + usize::from(len);
    }
}

/// Which way a connection was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// The host opened it.
    Out,
    /// A peer opened it to the host.
    In,
}

/// One connection: a 5-tuple seen from its initiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub direction: Direction,
    pub proto: u8,
    /// The host's end.
    pub local: IpAddr,
    pub local_port: u16,
    /// The other end.
    pub remote: IpAddr,
    /// The port on the remote end (for ICMP, the type of the opening message).
    pub remote_port: u16,
    pub packets: u64,
    /// Capture times in nanoseconds since the epoch.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Indices (into the records given) of the connection's packets.
    pub records: Vec<usize>,
    /// Names the host asked for on this connection (DNS queries it sent).
    pub queries: Vec<String>,
    /// The process and cgroup that opened it, where known (live mode).
    pub process: Option<String>,
    pub cgroup: Option<String>,
}

impl Connection {
    /// The port on the host's side that the connection serves (inbound) or the remote
    /// service port (outbound).
    #[must_use]
    pub fn service_port(&self) -> u16 {
        match self.direction {
            Direction::Out => self.remote_port,
            Direction::In => self.local_port,
        }
    }
}

/// A DNS answer the host received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub addrs: Vec<IpAddr>,
    pub at_ns: u64,
    /// Index of the record.
    pub record: usize,
}

/// Everything read from the traffic.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    pub connections: Vec<Connection>,
    pub answers: Vec<Answer>,
    /// Packets read, and how many were not IP (left out).
    pub packets: u64,
    pub not_ip: u64,
}

fn proto_ports(l: &L4<'_>) -> (u16, u16) {
    match l.proto {
        // ICMP: echo requests (8 / 128) and replies (0 / 129) share one flow.
        1 | 58 => (0, 0),
        _ => (l.sport, l.dport),
    }
}

/// Whether the packet opens its connection from its source: a TCP SYN without ACK, an ICMP
/// echo request, or anything else that comes first. A SYN-ACK or a DNS response seen first
/// means the other end opened it (the capture began mid-exchange).
fn opens_from_source(l: &L4<'_>) -> bool {
    match l.proto {
        6 => l.tcp_flags & 0x12 != 0x12,
        1 => l.sport != 0,
        58 => l.sport != 129,
        // A DNS response seen first answers a query the capture missed.
        17 => !(l.sport == DNS_PORT && l.payload.get(2).is_some_and(|f| f & 0x80 != 0)),
        _ => true,
    }
}

/// Reads connections and DNS answers from records whose `outgoing` flag says which
/// packets the host sent (set it with [`crate::replay::mark_sent_by`] for Ethernet
/// captures).
#[must_use]
pub fn observe(records: &[Record]) -> Observations {
    let mut o = Observations::default();
    // Key: (proto, local, local port, remote, remote port) -> index in o.connections.
    let mut index: BTreeMap<(u8, IpAddr, u16, IpAddr, u16), usize> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        o.packets += 1;
        let Some(l) = parse(&r.frame) else {
            o.not_ip += 1;
            continue;
        };
        let (sport, dport) = proto_ports(&l);
        let (local, lport, remote, rport) = if r.outgoing {
            (l.src, sport, l.dst, dport)
        } else {
            (l.dst, dport, l.src, sport)
        };
        let key = (l.proto, local, lport, remote, rport);
        let n = *index.entry(key).or_insert_with(|| {
            let from_source = opens_from_source(&l);
            let direction = if r.outgoing == from_source {
                Direction::Out
            } else {
                Direction::In
            };
            let icmp_type = match l.proto {
                1 => 8,
                58 => 128,
                _ => 0,
            };
            let remote_port = match (direction, l.proto) {
                (Direction::In, 1 | 58) => icmp_type,
                (Direction::Out, 1 | 58) => icmp_type,
                _ => rport,
            };
            let local_port = match l.proto {
                1 | 58 => icmp_type,
                _ => lport,
            };
            o.connections.push(Connection {
                direction,
                proto: l.proto,
                local,
                local_port,
                remote,
                remote_port,
                packets: 0,
                first_ns: r.timestamp_ns,
                last_ns: r.timestamp_ns,
                records: Vec::new(),
                queries: Vec::new(),
                process: None,
                cgroup: None,
            });
            o.connections.len() - 1
        });
        let c = &mut o.connections[n];
        c.packets += 1;
        c.first_ns = c.first_ns.min(r.timestamp_ns);
        c.last_ns = c.last_ns.max(r.timestamp_ns);
        c.records.push(i);
        if l.proto == 17
            && r.outgoing
            && l.dport == DNS_PORT
            && let Some(q) = dns_query(l.payload)
            && !c.queries.contains(&q)
        {
            c.queries.push(q);
        }
        if l.proto == 17
            && !r.outgoing
            && l.sport == DNS_PORT
            && let Some((name, addrs)) = dns_answer(l.payload)
        {
            o.answers.push(Answer {
                name,
                addrs: addrs.into_iter().map(|(a, _)| a).collect(),
                at_ns: r.timestamp_ns,
                record: i,
            });
        }
    }
    o
}

/// The names whose answers gave each address (an address several names resolved to keeps
/// them all).
#[must_use]
pub fn names_by_addr(answers: &[Answer]) -> BTreeMap<IpAddr, BTreeSet<String>> {
    let mut m: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    for a in answers {
        for addr in &a.addrs {
            m.entry(*addr).or_default().insert(a.name.clone());
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{craft::Frame, learn::evaluate::answer_message};

    fn rec(frame: Vec<u8>, outgoing: bool) -> Record {
        Record {
            number: 0,
            offset: 0,
            interface: 0,
            timestamp_ns: 0,
            outgoing,
            frame,
        }
    }

    #[test]
    fn answers_give_the_question_name_and_addresses() {
        let m = answer_message(
            1,
            "WWW.Example.COM",
            &["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
            30,
        );
        let (name, addrs) = dns_answer(&m).unwrap();
        assert_eq!(name, "www.example.com");
        let a: Vec<String> = addrs.iter().map(|(a, t)| format!("{a}/{t}")).collect();
        assert_eq!(a, ["192.0.2.1/30", "192.0.2.2/30"]);
        // A query is not an answer, and an answer is not a query.
        let q = crate::craft::DnsQuery::name("www.example.com", 1).build();
        assert_eq!(dns_answer(&q), None);
        assert_eq!(dns_query(&q).as_deref(), Some("www.example.com"));
        assert_eq!(dns_query(&m), None);
    }

    #[test]
    fn names_that_are_not_host_names_are_left_out() {
        for bad in [&b"a\"b"[..], b"a b", b"a.b", b"a\\b", b"a\nb"] {
            let mut q =
                crate::craft::DnsQuery::new(vec![bad.to_vec(), b"example".to_vec()], 1).build();
            assert_eq!(dns_query(&q), None, "{bad:?}");
            q[2] |= 0x80;
            assert_eq!(dns_answer(&q), None, "{bad:?}");
        }
        let q =
            crate::craft::DnsQuery::new(vec![b"_sip-1".to_vec(), b"Example".to_vec()], 1).build();
        assert_eq!(dns_query(&q).as_deref(), Some("_sip-1.example"));
    }

    #[test]
    fn malformed_answers_are_left_out() {
        let m = answer_message(1, "a.example", &["192.0.2.1".parse().unwrap()], 30);
        for cut in 0..m.len() {
            // Cut anywhere: no panic; only the whole message reads fully.
            let got = dns_answer(&m[..cut]);
            assert!(got.is_none_or(|(_, a)| a.is_empty()) || cut == m.len());
        }
        // A pointer loop in the answer's owner name.
        let mut bad = m.clone();
        let at = bad.len() - 16;
        bad[at] = 0xc0;
        bad[at + 1] = u8::try_from(at).unwrap();
        assert_eq!(dns_answer(&bad), None);
    }

    #[test]
    fn connections_take_their_direction_from_the_opener() {
        let r = [
            // The host opens UDP; the reply belongs to the same connection.
            rec(Frame::udp("10.0.0.2", "192.0.2.9", 40000, 53).build(), true),
            rec(
                Frame::udp("192.0.2.9", "10.0.0.2", 53, 40000).build(),
                false,
            ),
            // A peer's SYN: inbound; the host's SYN-ACK joins it.
            rec(
                Frame::tcp("192.0.2.7", "10.0.0.2", 5555, 22, 0x02).build(),
                false,
            ),
            rec(
                Frame::tcp("10.0.0.2", "192.0.2.7", 22, 5555, 0x12).build(),
                true,
            ),
            // A SYN-ACK first (capture began mid-handshake): the host had opened it.
            rec(
                Frame::tcp("192.0.2.8", "10.0.0.2", 443, 41000, 0x12).build(),
                false,
            ),
            // Echo request from a peer.
            rec(Frame::icmp("192.0.2.6", "10.0.0.2", 8, 0).build(), false),
            rec(Frame::icmp("10.0.0.2", "192.0.2.6", 0, 0).build(), true),
        ];
        let o = observe(&r);
        let got: Vec<(Direction, u8, u16, u16, u64)> = o
            .connections
            .iter()
            .map(|c| (c.direction, c.proto, c.local_port, c.remote_port, c.packets))
            .collect();
        assert_eq!(
            got,
            [
                (Direction::Out, 17, 40000, 53, 2),
                (Direction::In, 6, 22, 5555, 2),
                (Direction::Out, 6, 41000, 443, 1),
                (Direction::In, 1, 8, 8, 2),
            ]
        );
        assert_eq!((o.packets, o.not_ip), (7, 0));
    }
}
