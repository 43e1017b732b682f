//! Connection tracking against netfilter: the same packet sequences go through the kernel's
//! own conntrack (nftables `ct state` rules in a network namespace) and through Palisade's
//! programs (`BPF_PROG_TEST_RUN`), and the verdicts are compared packet by packet.
//!
//! The sequences (hand-written scenarios and a seeded random mix over a few tuples) are
//! written to a pcapng file first, each packet tagged with its direction in the `epb_flags`
//! option (inbound: from the outside to the guarded host; outbound: sent by the guarded host)
//! and labelled in a comment. Both sides then replay that file in order:
//!
//! * **netfilter.** The guarded host is namespace A of a veth pair. Its ruleset mirrors the
//!   Palisade policy below (`ct state invalid drop; ct state established,related accept;
//!   tcp dport 22 accept; drop` on input, output accepts and only counts). Packets from the
//!   outside are sent as raw frames (AF_PACKET) from the peer namespace B and reach A's
//!   prerouting and input hooks; their verdict is the named counter of the rule that took
//!   them, read once it moved. Packets of the guarded host are sent from inside A with raw IP
//!   sockets carrying the whole header, so they traverse A's output and postrouting hooks
//!   (conntrack and its confirmation) synchronously; their ct state is read from counters in
//!   the output chain.
//! * **Palisade.** Inbound packets go through the XDP firewall (tail-calling the tracker and
//!   the rules), outbound ones through the TC egress tracker `palisade_ct_egress`; the verdict
//!   is the XDP action with the rule that decided, the ct state is the tracker counter that
//!   moved.
//!
//! What keeps the netfilter picture clean:
//! * A's own stack answers what the input chain accepts (RSTs for segments of no socket,
//!   echo replies, port unreachables). Those answers are not part of any sequence and would
//!   move conntrack (an RST leaving through output closes the flow). Every packet sent by the
//!   test carries a socket mark; an output chain at the `raw` priority (before conntrack)
//!   drops everything unmarked, so conntrack never sees the stack's own packets.
//! * B drops everything it receives (netdev ingress hook), so it never answers either;
//!   neighbours are static on both sides (no ARP or neighbour discovery on the wire), and
//!   packets A receives from other sources (B's link-local IPv6 chatter) are accepted
//!   before the counted rules.
//! * `nf_conntrack_tcp_loose = 0`: netfilter does not pick up TCP flows in the middle
//!   (it would otherwise create an established entry from any ACK, in both directions).
//!   Palisade never picks up from the outside; from the guarded host it does (see the
//!   differences). `nf_conntrack_tcp_be_liberal = 0` (windows are checked),
//!   `nf_conntrack_checksum = 1` with correct checksums everywhere, `rp_filter = 0`.
//!
//! Every difference between the two is either fixed or listed in `docs/design/conntrack.md`
//! ("Differences from netfilter"); [`EXPECTED`] holds the same list for the hand-written
//! scenarios, and the test fails on any difference missing from it and on any listed
//! difference that no longer occurs. In the random mix a flow is compared up to its first
//! difference (after it the two states have parted), which must have a documented cause
//! ([`cause_of`]).
//!
//! Knobs: `PALISADE_CT_SEED` (seed of the random mix), `PALISADE_CT_RANDOM` (packets in the
//! random mix), `PALISADE_CT_PCAP` (keep the pcapng file at this path), `PALISADE_CT_TRACE`
//! (print both observations of every packet whose label contains this text).
//!
//! Needs root: it creates namespaces, loads nftables rules and the kernel programs.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::CString,
    fmt,
    fs::File,
    io::Write as _,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use palisade::{conntrack::read_stats, craft::checksum, policy::config, testrun::Bench};
use palisade_common::{
    conntrack::{CS_ACCEPTED, CS_ESTABLISHED, CS_INVALID, CS_NEW, CS_RELATED, CS_UNTRACKED},
    packet::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK,
        TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
    },
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use support::netns::NetnsPair;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The mark the test's own packets carry in namespace A; the stack's own packets have none.
const MARK: u32 = 0x5a1;
const MAC_HOST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

const DEFAULT_SEED: u64 = 0xc0ff_ee00_c7d1_ff01;
const DEFAULT_RANDOM: u64 = 240;

/// The Palisade policy the nftables ruleset mirrors.
const POLICY: &str = r#"
[firewall]
default = "drop"
stateful = true

[[firewall.rule]]
name = "invalid"
action = "drop"
state = ["invalid"]

[[firewall.rule]]
name = "ssh"
action = "allow"
proto = "tcp"
dport = 22
"#;

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

// ---------------------------------------------------------------------------------------
// Packets

/// Where a packet comes from, relative to the guarded host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    /// From the outside: ingress.
    Outside,
    /// Sent by the guarded host: egress.
    Host,
}

/// One packet of a sequence: its IP packet and where it comes from.
#[derive(Clone, Debug)]
struct Step {
    /// `scenario/family: what`, unique in the whole run.
    label: String,
    from: Side,
    ip: Vec<u8>,
}

impl Step {
    fn frame(&self) -> Vec<u8> {
        let (dst, src) = match self.from {
            Side::Outside => (MAC_HOST, MAC_PEER),
            Side::Host => (MAC_PEER, MAC_HOST),
        };
        let ethertype = if self.ip[0] >> 4 == 4 {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        };
        let mut f = Vec::with_capacity(14 + self.ip.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&self.ip);
        f
    }
}

/// The IP packet from `src` to `dst` carrying `l4`, with correct checksums.
fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            // DF set, a fixed identifier: the stack leaves both as they are.
            h.extend_from_slice(&[0x1c, 0x7d, 0x40, 0, 64, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let sum = checksum(&h, 0);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            h.extend_from_slice(l4);
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            h.extend_from_slice(&[proto, 64]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.extend_from_slice(l4);
            h
        }
        _ => panic!("packet mixes address families"),
    }
}

/// The layer-4 checksum over the pseudo-header (ICMP for IPv4 has none).
fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            if proto == IPPROTO_ICMP {
                return checksum(l4, 0);
            }
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("packet mixes address families"),
    }
    pseudo.extend_from_slice(l4);
    checksum(&pseudo, 0)
}

/// One TCP segment's header fields.
#[derive(Clone, Copy, Debug)]
struct Seg {
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    win: u16,
    wscale: Option<u8>,
    payload: usize,
}

fn tcp_bytes(src: IpAddr, dst: IpAddr, s: &Seg) -> Vec<u8> {
    let mut opts = Vec::new();
    if let Some(ws) = s.wscale {
        opts.extend_from_slice(&[1, 3, 3, ws]);
    }
    let doff = (20 + opts.len()) / 4;
    let mut t = Vec::with_capacity(20 + opts.len() + s.payload);
    t.extend_from_slice(&s.sport.to_be_bytes());
    t.extend_from_slice(&s.dport.to_be_bytes());
    t.extend_from_slice(&s.seq.to_be_bytes());
    t.extend_from_slice(&s.ack.to_be_bytes());
    t.extend_from_slice(&[(doff as u8) << 4, s.flags]);
    t.extend_from_slice(&s.win.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(&opts);
    t.extend((0..s.payload).map(|i| i as u8));
    let sum = l4_checksum(src, dst, IPPROTO_TCP, &t);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    t
}

fn udp_bytes(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let payload = [0x11u8; 12];
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(&payload);
    let sum = l4_checksum(src, dst, IPPROTO_UDP, &u);
    u[6..8].copy_from_slice(&sum.to_be_bytes());
    u
}

fn icmp_bytes(
    src: IpAddr,
    dst: IpAddr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let proto = if src.is_ipv4() {
        IPPROTO_ICMP
    } else {
        IPPROTO_ICMPV6
    };
    let mut m = vec![icmp_type, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let sum = l4_checksum(src, dst, proto, &m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// The guarded host and the peer, in one family.
#[derive(Clone, Copy, Debug)]
struct Net {
    host: IpAddr,
    peer: IpAddr,
}

impl Net {
    fn family(&self) -> &'static str {
        if self.host.is_ipv4() { "v4" } else { "v6" }
    }

    fn ends(&self, from: Side) -> (IpAddr, IpAddr) {
        match from {
            Side::Outside => (self.peer, self.host),
            Side::Host => (self.host, self.peer),
        }
    }
}

/// One TCP connection between the host's `hport` and the peer's `pport`: what each side
/// sends next and acknowledges.
#[derive(Clone, Copy, Debug)]
struct Tcp {
    hport: u16,
    pport: u16,
    /// Next sequence number of the host, of the peer.
    hnext: u32,
    pnext: u32,
    /// Window scale offered in SYNs (both sides), if any.
    wscale: Option<u8>,
}

fn conn(hport: u16, pport: u16, hisn: u32, pisn: u32) -> Tcp {
    Tcp {
        hport,
        pport,
        hnext: hisn,
        pnext: pisn,
        wscale: None,
    }
}

impl Tcp {
    fn ports(&self, from: Side) -> (u16, u16) {
        match from {
            Side::Outside => (self.pport, self.hport),
            Side::Host => (self.hport, self.pport),
        }
    }

    /// (sender's next, receiver's next).
    fn nexts(&self, from: Side) -> (u32, u32) {
        match from {
            Side::Outside => (self.pnext, self.hnext),
            Side::Host => (self.hnext, self.pnext),
        }
    }
}

/// Builds the steps of one scenario in one family.
struct Sc<'a> {
    net: Net,
    name: &'static str,
    steps: &'a mut Vec<Step>,
}

impl<'a> Sc<'a> {
    fn new(net: Net, steps: &'a mut Vec<Step>, name: &'static str) -> Self {
        Self { net, name, steps }
    }

    fn push(&mut self, from: Side, what: &str, proto: u8, l4: &[u8]) -> Vec<u8> {
        let (src, dst) = self.net.ends(from);
        let ip = ip_packet(src, dst, proto, l4);
        let arrow = match from {
            Outside => "in",
            Host => "out",
        };
        let label = format!("{}/{}: {arrow} {what}", self.name, self.net.family());
        assert!(
            self.steps.iter().all(|s| s.label != label),
            "duplicate step label {label}"
        );
        self.steps.push(Step {
            label,
            from,
            ip: ip.clone(),
        });
        ip
    }

    /// An in-sequence segment: the sender's next sequence number, acknowledging everything
    /// the receiver sent (when ACK is set); the sender's next moves past it.
    fn tcp(&mut self, from: Side, what: &str, t: &mut Tcp, flags: u8, payload: usize) -> Vec<u8> {
        let (seq, ack) = t.nexts(from);
        let ack = if flags & TCP_ACK != 0 { ack } else { 0 };
        let ip = self.seg(from, what, t, flags, seq, ack, payload);
        let mut end = seq.wrapping_add(payload as u32);
        if flags & TCP_SYN != 0 {
            end = end.wrapping_add(1);
        }
        if flags & TCP_FIN != 0 {
            end = end.wrapping_add(1);
        }
        match from {
            Side::Outside => t.pnext = end,
            Side::Host => t.hnext = end,
        }
        ip
    }

    /// A segment with explicit sequence and acknowledgement numbers; nothing moves.
    #[expect(clippy::too_many_arguments, reason = "one argument per header field")]
    fn seg(
        &mut self,
        from: Side,
        what: &str,
        t: &Tcp,
        flags: u8,
        seq: u32,
        ack: u32,
        payload: usize,
    ) -> Vec<u8> {
        let (sport, dport) = t.ports(from);
        let (src, dst) = self.net.ends(from);
        let s = Seg {
            sport,
            dport,
            flags,
            seq,
            ack,
            win: 64_240,
            wscale: if flags & TCP_SYN != 0 { t.wscale } else { None },
            payload,
        };
        self.push(from, what, IPPROTO_TCP, &tcp_bytes(src, dst, &s))
    }

    fn udp(&mut self, from: Side, what: &str, hport: u16, pport: u16) -> Vec<u8> {
        let (src, dst) = self.net.ends(from);
        let (sport, dport) = match from {
            Side::Outside => (pport, hport),
            Side::Host => (hport, pport),
        };
        self.push(from, what, IPPROTO_UDP, &udp_bytes(src, dst, sport, dport))
    }

    fn icmp_proto(&self) -> u8 {
        if self.net.host.is_ipv4() {
            IPPROTO_ICMP
        } else {
            IPPROTO_ICMPV6
        }
    }

    fn echo(&mut self, from: Side, what: &str, reply: bool, id: u16, seq: u16) -> Vec<u8> {
        let (src, dst) = self.net.ends(from);
        let t = match (self.net.host.is_ipv4(), reply) {
            (true, false) => 8,
            (true, true) => 0,
            (false, false) => 128,
            (false, true) => 129,
        };
        let [i0, i1] = id.to_be_bytes();
        let [s0, s1] = seq.to_be_bytes();
        let m = icmp_bytes(src, dst, t, 0, [i0, i1, s0, s1], b"palisade");
        let proto = self.icmp_proto();
        self.push(from, what, proto, &m)
    }

    /// "Fragmentation needed" (ICMP) or "packet too big" (ICMPv6) from the peer's side,
    /// quoting the start of `quoted` (an IP packet the host sent).
    fn too_big(&mut self, what: &str, quoted: &[u8]) -> Vec<u8> {
        let (src, dst) = self.net.ends(Side::Outside);
        let header = if quoted[0] >> 4 == 4 {
            usize::from(quoted[0] & 0x0f) * 4
        } else {
            40
        };
        let quote = &quoted[..header + 8];
        let m = if self.net.host.is_ipv4() {
            icmp_bytes(src, dst, 3, 4, [0, 0, 0x05, 0x00], quote)
        } else {
            icmp_bytes(src, dst, 2, 0, 1280u32.to_be_bytes(), quote)
        };
        let proto = self.icmp_proto();
        self.push(Side::Outside, what, proto, &m)
    }
}

use Side::{Host, Outside};

const SYN: u8 = TCP_SYN;
const SYNACK: u8 = TCP_SYN | TCP_ACK;
const ACK: u8 = TCP_ACK;
const PSHACK: u8 = TCP_PSH | TCP_ACK;
const FINACK: u8 = TCP_FIN | TCP_ACK;
const RST: u8 = TCP_RST;
const RSTACK: u8 = TCP_RST | TCP_ACK;

/// Hands out port numbers so that no two scenarios share a tuple.
struct Ports(u16);

impl Ports {
    fn next(&mut self) -> u16 {
        self.0 += 1;
        self.0
    }
}

/// A connection from the host to the peer's port 80, through its handshake.
fn open_out(sc: &mut Sc<'_>, ports: &mut Ports, tag: &str) -> Tcp {
    let mut t = conn(ports.next(), 80, 1_000_000, 5_000_000);
    sc.tcp(Host, &format!("{tag} SYN"), &mut t, SYN, 0);
    sc.tcp(Outside, &format!("{tag} SYN-ACK"), &mut t, SYNACK, 0);
    sc.tcp(Host, &format!("{tag} ACK"), &mut t, ACK, 0);
    t
}

/// The hand-written scenarios, in one family.
fn scenarios(net: Net, ports: &mut Ports, steps: &mut Vec<Step>) {
    {
        // Outbound connection: handshake, data both ways, FIN close by the host.
        let s = &mut Sc::new(net, steps, "outbound-close");
        let mut t = conn(ports.next(), 80, 1_000, 70_000);
        t.wscale = Some(7);
        s.tcp(Host, "SYN", &mut t, SYN, 0);
        s.tcp(Outside, "SYN-ACK", &mut t, SYNACK, 0);
        s.tcp(Host, "ACK", &mut t, ACK, 0);
        s.tcp(Host, "request", &mut t, PSHACK, 120);
        s.tcp(Outside, "response", &mut t, PSHACK, 1400);
        s.tcp(Outside, "response 2", &mut t, PSHACK, 1400);
        s.tcp(Host, "ACK of response", &mut t, ACK, 0);
        s.tcp(Host, "FIN", &mut t, FINACK, 0);
        s.tcp(Outside, "ACK of FIN", &mut t, ACK, 0);
        s.tcp(Outside, "peer FIN", &mut t, FINACK, 0);
        s.tcp(Host, "last ACK", &mut t, ACK, 0);
        s.tcp(Outside, "late ACK in TIME_WAIT", &mut t, ACK, 0);
    }
    {
        // Inbound SSH: allowed by the port rule, then tracked; closed by the peer.
        let s = &mut Sc::new(net, steps, "inbound-ssh");
        let mut t = conn(22, ports.next(), 9_000, 3_000);
        s.tcp(Outside, "SYN", &mut t, SYN, 0);
        s.tcp(Host, "SYN-ACK", &mut t, SYNACK, 0);
        s.tcp(Outside, "ACK", &mut t, ACK, 0);
        s.tcp(Outside, "data", &mut t, PSHACK, 40);
        s.tcp(Host, "data", &mut t, PSHACK, 300);
        s.tcp(Outside, "FIN", &mut t, FINACK, 0);
        s.tcp(Host, "FIN", &mut t, FINACK, 0);
        s.tcp(Outside, "last ACK", &mut t, ACK, 0);
    }
    {
        // Inbound connections to a closed port, and what follows them.
        let s = &mut Sc::new(net, steps, "inbound-closed-port");
        let mut t = conn(8080, ports.next(), 9_000, 3_000);
        s.tcp(Outside, "SYN", &mut t, SYN, 0);
        s.tcp(Outside, "ACK after dropped SYN", &mut t, ACK, 0);
    }
    {
        // Resets outside and inside the window of an established outbound flow.
        let s = &mut Sc::new(net, steps, "rst-window");
        let t = open_out(s, ports, "");
        s.seg(
            Outside,
            "RST far outside",
            &t,
            RST,
            t.pnext.wrapping_add(0x4000_0000),
            0,
            0,
        );
        s.seg(
            Outside,
            "RST behind the window",
            &t,
            RST,
            t.pnext.wrapping_sub(200_000),
            0,
            0,
        );
        s.seg(
            Outside,
            "RST in window, not exact",
            &t,
            RST,
            t.pnext.wrapping_add(1000),
            0,
            0,
        );
        s.seg(Outside, "RST exact", &t, RST, t.pnext, 0, 0);
        s.seg(Outside, "ACK after RST", &t, ACK, t.pnext, t.hnext, 0);
        s.seg(Host, "ACK after RST", &t, ACK, t.hnext, t.pnext, 0);
    }
    {
        // The host resets its own connection.
        let s = &mut Sc::new(net, steps, "rst-out");
        let t = open_out(s, ports, "");
        s.seg(Host, "RST+ACK", &t, RSTACK, t.hnext, t.pnext, 0);
        s.seg(Outside, "data after RST", &t, PSHACK, t.pnext, t.hnext, 10);
    }
    {
        // Acknowledgements and data outside the windows.
        let s = &mut Sc::new(net, steps, "ack-window");
        let mut t = open_out(s, ports, "");
        s.seg(
            Outside,
            "ACK of data never sent",
            &t,
            ACK,
            t.pnext,
            t.hnext.wrapping_add(100_000),
            0,
        );
        s.seg(
            Outside,
            "data far beyond the window",
            &t,
            PSHACK,
            t.pnext.wrapping_add(0x1000_0000),
            t.hnext,
            10,
        );
        s.seg(
            Outside,
            "ACK far behind",
            &t,
            ACK,
            t.pnext.wrapping_sub(0x1000_0000),
            t.hnext,
            0,
        );
        s.tcp(Outside, "data in window", &mut t, PSHACK, 100);
        s.seg(
            Outside,
            "old duplicate",
            &t,
            PSHACK,
            t.pnext.wrapping_sub(100),
            t.hnext,
            100,
        );
    }
    {
        // Segments of no known flow from the outside.
        let s = &mut Sc::new(net, steps, "unsolicited");
        let mut t = conn(ports.next(), 443, 1, 2);
        s.seg(Outside, "SYN-ACK", &t, SYNACK, 77, 1234, 0);
        s.seg(Outside, "ACK", &t, ACK, 77, 1234, 0);
        s.seg(Outside, "RST", &t, RST, 77, 0, 0);
        s.seg(Outside, "FIN+ACK", &t, FINACK, 77, 1234, 0);
        t.hport = 22;
        s.seg(Outside, "ACK to ssh", &t, ACK, 77, 1234, 0);
        s.seg(Outside, "SYN-ACK to ssh", &t, SYNACK, 77, 1234, 0);
    }
    {
        // Both sides send a SYN (simultaneous open).
        let s = &mut Sc::new(net, steps, "simultaneous-open");
        let mut t = conn(ports.next(), 80, 40_000, 80_000);
        s.tcp(Host, "SYN", &mut t, SYN, 0);
        s.tcp(Outside, "SYN", &mut t, SYN, 0);
        let (h, p) = (t.hnext, t.pnext);
        s.seg(Host, "SYN-ACK", &t, SYNACK, h.wrapping_sub(1), p, 0);
        s.seg(Outside, "SYN-ACK", &t, SYNACK, p.wrapping_sub(1), h, 0);
        s.tcp(Host, "ACK", &mut t, ACK, 0);
        s.tcp(Outside, "data", &mut t, PSHACK, 10);
        s.tcp(Host, "data", &mut t, PSHACK, 10);
    }
    {
        // SYNs on an established flow (a new connection after a lost close, or forged).
        let s = &mut Sc::new(net, steps, "syn-on-established");
        let mut t = open_out(s, ports, "");
        s.seg(
            Outside,
            "SYN",
            &t,
            SYN,
            t.pnext.wrapping_add(5_000_000),
            0,
            0,
        );
        s.seg(Host, "SYN", &t, SYN, t.hnext.wrapping_add(5_000_000), 0, 0);
        s.tcp(Outside, "data after them", &mut t, PSHACK, 10);
        s.tcp(Host, "ACK after them", &mut t, ACK, 0);
    }
    {
        // Retransmitted and restarted SYNs, outbound.
        let s = &mut Sc::new(net, steps, "syn-retransmit-out");
        let mut t = conn(ports.next(), 80, 500, 900);
        s.seg(Host, "SYN", &t, SYN, 500, 0, 0);
        s.seg(Host, "SYN again", &t, SYN, 500, 0, 0);
        s.seg(Host, "SYN with another ISN", &t, SYN, 7_777, 0, 0);
        t.hnext = 7_778;
        s.seg(Outside, "SYN-ACK of the first SYN", &t, SYNACK, 900, 501, 0);
        s.tcp(Outside, "SYN-ACK of the last SYN", &mut t, SYNACK, 0);
        s.tcp(Host, "ACK", &mut t, ACK, 0);
        s.tcp(Outside, "data", &mut t, PSHACK, 10);
    }
    {
        // Retransmitted SYNs, inbound to SSH.
        let s = &mut Sc::new(net, steps, "syn-retransmit-in");
        let mut t = conn(22, ports.next(), 9_000, 3_000);
        s.seg(Outside, "SYN", &t, SYN, 3_000, 0, 0);
        s.seg(Outside, "SYN again", &t, SYN, 3_000, 0, 0);
        t.pnext = 3_001;
        s.tcp(Host, "SYN-ACK", &mut t, SYNACK, 0);
        s.seg(Outside, "SYN after SYN-ACK", &t, SYN, 3_000, 0, 0);
        s.seg(Host, "SYN-ACK again", &t, SYNACK, 9_000, 3_001, 0);
        s.tcp(Outside, "ACK", &mut t, ACK, 0);
        s.tcp(Outside, "data", &mut t, PSHACK, 10);
    }
    {
        // A connection closed by the host (TIME_WAIT), then the same ports again, first by
        // the host, then from the peer's side.
        let s = &mut Sc::new(net, steps, "time-wait-reuse");
        let mut t = open_out(s, ports, "1st");
        s.tcp(Host, "1st FIN", &mut t, FINACK, 0);
        s.tcp(Outside, "1st FIN", &mut t, FINACK, 0);
        s.tcp(Host, "1st last ACK", &mut t, ACK, 0);
        t.hnext = t.hnext.wrapping_add(100_000);
        t.pnext = 33_000_000;
        s.tcp(Host, "2nd SYN", &mut t, SYN, 0);
        s.tcp(Outside, "2nd SYN-ACK", &mut t, SYNACK, 0);
        s.tcp(Host, "2nd ACK", &mut t, ACK, 0);
        s.tcp(Outside, "2nd data", &mut t, PSHACK, 10);
        s.tcp(Host, "2nd FIN", &mut t, FINACK, 0);
        s.tcp(Outside, "2nd FIN", &mut t, FINACK, 0);
        s.tcp(Host, "2nd last ACK", &mut t, ACK, 0);
        t.pnext = t.pnext.wrapping_add(100_000);
        s.tcp(Outside, "SYN from the peer's side", &mut t, SYN, 0);
        s.tcp(Host, "SYN from the host after it", &mut t, SYN, 0);
        s.tcp(Outside, "SYN-ACK", &mut t, SYNACK, 0);
        s.tcp(Host, "ACK", &mut t, ACK, 0);
    }
    {
        // An inbound SSH connection closed, then reopened by the peer on the same ports.
        let s = &mut Sc::new(net, steps, "time-wait-reuse-ssh");
        let mut t = conn(22, ports.next(), 9_000, 3_000);
        s.tcp(Outside, "1st SYN", &mut t, SYN, 0);
        s.tcp(Host, "1st SYN-ACK", &mut t, SYNACK, 0);
        s.tcp(Outside, "1st ACK", &mut t, ACK, 0);
        s.tcp(Outside, "1st FIN", &mut t, FINACK, 0);
        s.tcp(Host, "1st FIN", &mut t, FINACK, 0);
        s.tcp(Outside, "1st last ACK", &mut t, ACK, 0);
        t.pnext = t.pnext.wrapping_add(100_000);
        t.hnext = 60_000;
        s.tcp(Outside, "2nd SYN", &mut t, SYN, 0);
        s.tcp(Host, "2nd SYN-ACK", &mut t, SYNACK, 0);
        s.tcp(Outside, "2nd ACK", &mut t, ACK, 0);
    }
    {
        // Flag combinations TCP never uses, on an established flow and on none.
        let s = &mut Sc::new(net, steps, "invalid-flags");
        let t = open_out(s, ports, "");
        for (what, flags) in [
            ("SYN+FIN", TCP_SYN | TCP_FIN),
            ("no flags", 0),
            ("SYN+RST", TCP_SYN | TCP_RST),
            ("FIN without ACK", TCP_FIN),
            ("SYN+FIN+ACK", TCP_SYN | TCP_FIN | TCP_ACK),
        ] {
            s.seg(
                Outside,
                &format!("{what} on the flow"),
                &t,
                flags,
                t.pnext,
                t.hnext,
                0,
            );
        }
        s.seg(Outside, "data after them", &t, PSHACK, t.pnext, t.hnext, 10);
        let mut ssh = conn(22, ports.next(), 0, 4_000);
        for (what, flags) in [
            ("SYN+FIN", TCP_SYN | TCP_FIN),
            ("no flags", 0),
            ("SYN+RST", TCP_SYN | TCP_RST),
        ] {
            s.seg(Outside, &format!("{what} to ssh"), &ssh, flags, 4_000, 0, 0);
        }
        s.tcp(Outside, "SYN to ssh after them", &mut ssh, SYN, 0);
    }
    {
        // The host sends on a connection of which no SYN was seen.
        let s = &mut Sc::new(net, steps, "midstream");
        let t = conn(ports.next(), 80, 123_456, 654_321);
        s.seg(Host, "ACK", &t, ACK, t.hnext, t.pnext, 0);
        s.seg(Outside, "data", &t, PSHACK, t.pnext, t.hnext, 10);
        let t = conn(ports.next(), 80, 223_456, 754_321);
        s.seg(Outside, "data first", &t, PSHACK, t.pnext, t.hnext, 10);
        s.seg(
            Host,
            "ACK after",
            &t,
            ACK,
            t.hnext,
            t.pnext.wrapping_add(10),
            0,
        );
    }
    {
        // UDP: a request and its answers; datagrams nobody asked for.
        let s = &mut Sc::new(net, steps, "udp");
        let (h, p) = (ports.next(), 53);
        s.udp(Host, "request", h, p);
        s.udp(Outside, "reply", h, p);
        s.udp(Outside, "2nd reply", h, p);
        s.udp(Host, "2nd request", h, p);
        let h2 = ports.next();
        s.udp(Outside, "unsolicited", h2, 5353);
        s.udp(Outside, "unsolicited again", h2, 5353);
        s.udp(Outside, "unsolicited to port 22", 22, ports.next());
    }
    {
        // ICMP echo.
        let s = &mut Sc::new(net, steps, "echo");
        let id = ports.next();
        s.echo(Host, "request", false, id, 1);
        s.echo(Outside, "reply", true, id, 1);
        s.echo(Outside, "duplicate reply", true, id, 1);
        s.echo(Outside, "unsolicited reply", true, ports.next(), 1);
        s.echo(Outside, "request from outside", false, ports.next(), 1);
        let id = ports.next();
        s.echo(Host, "2nd request", false, id, 1);
        s.echo(
            Outside,
            "request with the id of the host's ping",
            false,
            id,
            2,
        );
        s.echo(Host, "reply on its own ping", true, id, 2);
    }
    {
        // ICMP errors about a tracked flow and about flows nobody tracks.
        let s = &mut Sc::new(net, steps, "icmp-errors");
        let mut t = conn(ports.next(), 80, 1_000, 5_000);
        let syn = s.tcp(Host, "SYN", &mut t, SYN, 0);
        s.too_big("too big quoting the SYN", &syn);
        s.tcp(Outside, "SYN-ACK", &mut t, SYNACK, 0);
        let ack = s.tcp(Host, "ACK", &mut t, ACK, 0);
        let data = s.tcp(Host, "data", &mut t, PSHACK, 1400);
        s.too_big("too big quoting the data", &data);
        s.too_big("too big quoting the ACK", &ack);
        let (h, p) = (ports.next(), 53);
        let req = s.udp(Host, "UDP request", h, p);
        s.too_big("too big quoting the UDP request", &req);
        // Packets the host never sent: their flows are not tracked.
        let other = conn(ports.next(), 80, 1, 1);
        let (src, dst) = net.ends(Host);
        let (sport, dport) = other.ports(Host);
        let ghost = ip_packet(
            src,
            dst,
            IPPROTO_TCP,
            &tcp_bytes(
                src,
                dst,
                &Seg {
                    sport,
                    dport,
                    flags: PSHACK,
                    seq: 1,
                    ack: 1,
                    win: 1000,
                    wscale: None,
                    payload: 1400,
                },
            ),
        );
        s.too_big("too big quoting an untracked TCP flow", &ghost);
        let ghost_udp = ip_packet(
            src,
            dst,
            IPPROTO_UDP,
            &udp_bytes(src, dst, ports.next(), 53),
        );
        s.too_big("too big quoting an untracked UDP flow", &ghost_udp);
    }
}

/// Random segments over a few tuples: SYNs, handshake answers, data, FINs and resets from
/// either side, mostly in sequence, sometimes replayed, shifted or with odd flags, plus UDP
/// and echo over a couple of tuples. Each tuple keeps what both sides sent so far, so the
/// sequences walk through every TCP state.
fn random_mix(net: Net, ports: &mut Ports, rng: &mut StdRng, n: u64, steps: &mut Vec<Step>) {
    let mut sc = Sc {
        net,
        name: "random",
        steps,
    };
    let mut tcp: Vec<Tcp> = (0..4)
        .map(|i| {
            let mut t = conn(
                if i == 3 { 22 } else { ports.next() },
                if i == 3 { ports.next() } else { 80 },
                rng.r#gen(),
                rng.r#gen(),
            );
            if rng.gen_bool(0.5) {
                t.wscale = Some(rng.gen_range(0..=8));
            }
            t
        })
        .collect();
    let udp: Vec<(u16, u16)> = (0..2).map(|_| (ports.next(), 53)).collect();
    let echo: Vec<u16> = (0..2).map(|_| ports.next()).collect();
    let mut opened = [false; 4];
    for i in 0..n {
        let mut from = if rng.gen_bool(0.5) { Host } else { Outside };
        // `#step tuple kind`: the tuple token names the flow (see `flow_of`).
        let what = |kind: &str, tuple: &str| format!("#{i} {tuple} {kind}");
        match rng.gen_range(0..20) {
            0..=15 => {
                let k = rng.gen_range(0..tcp.len());
                let t = &mut tcp[k];
                let mut flags = match rng.gen_range(0..20) {
                    0..=2 => SYN,
                    3..=4 => SYNACK,
                    5..=9 => ACK,
                    10..=13 => PSHACK,
                    14..=15 => FINACK,
                    16 => RST,
                    17 => RSTACK,
                    18 => TCP_SYN | TCP_FIN,
                    _ => 0,
                };
                if !opened[k] {
                    // Each tuple starts with a SYN of its opener, so that most flows get
                    // past their first packet without a pickup.
                    opened[k] = true;
                    flags = SYN;
                    from = if t.hport == 22 { Outside } else { Host };
                }
                let payload = if flags == PSHACK {
                    rng.gen_range(1..1400)
                } else {
                    0
                };
                if flags & TCP_SYN != 0 && rng.gen_bool(0.3) {
                    // A fresh ISN: a new connection attempt on the same ports.
                    match from {
                        Host => t.hnext = rng.r#gen(),
                        Outside => t.pnext = rng.r#gen(),
                    }
                }
                if rng.gen_bool(0.8) {
                    let (seq, ack) = t.nexts(from);
                    let (seq, ack) = if flags & TCP_SYN != 0 && rng.gen_bool(0.5) {
                        // A retransmission of the SYN already counted in `next`.
                        (seq.wrapping_sub(1), ack)
                    } else {
                        (seq, ack)
                    };
                    let ack = if flags & TCP_ACK != 0 { ack } else { 0 };
                    let t2 = *t;
                    sc.seg(
                        from,
                        &what("in sequence", &format!("tcp{k}")),
                        &t2,
                        flags,
                        seq,
                        ack,
                        payload,
                    );
                    let mut end = seq.wrapping_add(payload as u32);
                    if flags & TCP_SYN != 0 {
                        end = end.wrapping_add(1);
                    }
                    if flags & TCP_FIN != 0 {
                        end = end.wrapping_add(1);
                    }
                    let next = match from {
                        Host => &mut t.hnext,
                        Outside => &mut t.pnext,
                    };
                    if palisade_common::conntrack::after(end, *next) {
                        *next = end;
                    }
                } else {
                    let (seq, ack) = t.nexts(from);
                    let shift = *[1u32, 1000, 70_000, 0x4000_0000]
                        .get(rng.gen_range(0..4))
                        .expect("in range");
                    let (seq, ack) = match rng.gen_range(0..4) {
                        0 => (seq.wrapping_add(shift), ack),
                        1 => (seq.wrapping_sub(shift), ack),
                        2 => (seq, ack.wrapping_add(shift)),
                        _ => (seq, ack.wrapping_sub(shift)),
                    };
                    let t2 = *t;
                    sc.seg(
                        from,
                        &what("shifted", &format!("tcp{k}")),
                        &t2,
                        flags,
                        seq,
                        ack,
                        payload,
                    );
                }
            }
            16..=17 => {
                let k = rng.gen_range(0..udp.len());
                let (h, p) = udp[k];
                sc.udp(from, &what("datagram", &format!("udp{k}")), h, p);
            }
            _ => {
                let k = rng.gen_range(0..echo.len());
                let reply = rng.gen_bool(0.5);
                sc.echo(
                    from,
                    &what(if reply { "reply" } else { "request" }, &format!("echo{k}")),
                    reply,
                    echo[k],
                    1,
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// pcapng

const PCAPNG_SHB: u32 = 0x0a0d_0d0a;
const PCAPNG_IDB: u32 = 1;
const PCAPNG_EPB: u32 = 6;
const LINKTYPE_ETHERNET: u16 = 1;
const OPT_COMMENT: u16 = 1;
const EPB_FLAGS: u16 = 2;
/// `epb_flags` direction bits.
const EPB_INBOUND: u32 = 1;
const EPB_OUTBOUND: u32 = 2;

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let len = (12 + body.len()) as u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(body);
    b.extend_from_slice(&len.to_le_bytes());
    b
}

fn option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
    pad4(out);
}

/// Writes the steps as a pcapng file: one Ethernet interface, one enhanced packet block per
/// step with its direction (`epb_flags`) and its label (a comment).
fn write_pcapng(path: &Path, steps: &[Step]) {
    let mut out = Vec::new();
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    out.extend(block(PCAPNG_SHB, &shb));
    let mut idb = Vec::new();
    idb.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&0u32.to_le_bytes());
    out.extend(block(PCAPNG_IDB, &idb));
    for (i, s) in steps.iter().enumerate() {
        let frame = s.frame();
        // Microsecond timestamps: one packet a millisecond.
        let ts = (i as u64 + 1) * 1000;
        let mut epb = Vec::new();
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(ts as u32).to_le_bytes());
        epb.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        epb.extend_from_slice(&frame);
        pad4(&mut epb);
        let dir = match s.from {
            Outside => EPB_INBOUND,
            Host => EPB_OUTBOUND,
        };
        option(&mut epb, EPB_FLAGS, &dir.to_le_bytes());
        option(&mut epb, OPT_COMMENT, s.label.as_bytes());
        option(&mut epb, 0, &[]);
        out.extend(block(PCAPNG_EPB, &epb));
    }
    File::create(path)
        .and_then(|mut f| f.write_all(&out))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Reads back what [`write_pcapng`] wrote: the frames with their direction and label.
fn read_pcapng(path: &Path) -> Vec<Step> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().expect("2 bytes"));
    let mut steps = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let (kind, len) = (u32_at(at), u32_at(at + 4) as usize);
        assert!(
            len >= 12 && at + len <= data.len(),
            "pcapng block at {at} is cut short"
        );
        if kind == PCAPNG_EPB {
            let caplen = u32_at(at + 20) as usize;
            let frame = &data[at + 28..at + 28 + caplen];
            let mut o = at + 28 + caplen.div_ceil(4) * 4;
            let (mut from, mut label) = (None, String::new());
            while o + 4 <= at + len - 4 {
                let (code, olen) = (u16_at(o), usize::from(u16_at(o + 2)));
                let value = &data[o + 4..o + 4 + olen];
                match code {
                    0 => break,
                    EPB_FLAGS => {
                        from = match u32::from_le_bytes(value.try_into().expect("4 bytes")) & 3 {
                            EPB_INBOUND => Some(Outside),
                            EPB_OUTBOUND => Some(Host),
                            _ => None,
                        }
                    }
                    OPT_COMMENT => label = String::from_utf8_lossy(value).into_owned(),
                    _ => {}
                }
                o += 4 + olen.div_ceil(4) * 4;
            }
            steps.push(Step {
                label,
                from: from.expect("every packet has its direction"),
                ip: frame[14..].to_vec(),
            });
        }
        at += len;
    }
    steps
}

// ---------------------------------------------------------------------------------------
// Observations

/// The connection-tracking state a packet was classified as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cls {
    New,
    Est,
    Rel,
    Inv,
    Untracked,
}

/// What happened to a packet: for the outside's packets, which rule took it; the host's
/// packets are never dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    /// Accepted as established or related.
    Tracked,
    /// Accepted by the SSH rule.
    Ssh,
    /// Dropped by the `invalid` rule.
    Invalid,
    /// Dropped by the default.
    Default,
    /// Sent by the host (egress never drops).
    Sent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Obs {
    cls: Cls,
    verdict: Verdict,
}

impl fmt::Display for Obs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}/{:?}", self.cls, self.verdict)
    }
}

const fn obs(cls: Cls, verdict: Verdict) -> Obs {
    Obs { cls, verdict }
}

// ---------------------------------------------------------------------------------------
// The netfilter side

/// A socket created inside namespace `ns` (a socket stays in the namespace it was made in).
fn socket_in(ns: &str, domain: i32, ty: i32, proto: i32, ifname: Option<&str>) -> (OwnedFd, i32) {
    let path = format!("/var/run/netns/{ns}");
    let ifname = ifname.map(|n| CString::new(n).expect("interface name"));
    std::thread::spawn(move || {
        let f = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: plain syscalls on descriptors this thread owns; the thread ends right after.
        unsafe {
            assert_eq!(
                libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET),
                0,
                "setns {path}"
            );
            let fd = libc::socket(domain, ty, proto);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let index = ifname.map_or(0, |n| libc::if_nametoindex(n.as_ptr()) as i32);
            (OwnedFd::from_raw_fd(fd), index)
        }
    })
    .join()
    .expect("socket thread")
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new(program);
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writing stdin");
    }
    let out = child.wait_with_output().expect("waiting");
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Counters of the ruleset, by name.
const IN_COUNTERS: [(&str, Obs); 5] = [
    ("in_invalid", obs(Cls::Inv, Verdict::Invalid)),
    ("in_established", obs(Cls::Est, Verdict::Tracked)),
    ("in_related", obs(Cls::Rel, Verdict::Tracked)),
    ("in_ssh", obs(Cls::New, Verdict::Ssh)),
    ("in_default", obs(Cls::New, Verdict::Default)),
];
const OUT_COUNTERS: [(&str, Cls); 5] = [
    ("out_invalid", Cls::Inv),
    ("out_established", Cls::Est),
    ("out_related", Cls::Rel),
    ("out_new", Cls::New),
    ("out_untracked", Cls::Untracked),
];

/// The guarded host's ruleset: the Palisade policy in nftables terms, with a named counter
/// per rule, and the chain that keeps the stack's own packets away from conntrack.
fn ruleset(peer4: &str, peer6: &str) -> String {
    let counters: String = IN_COUNTERS
        .iter()
        .map(|(n, _)| *n)
        .chain(OUT_COUNTERS.iter().map(|(n, _)| *n))
        .map(|n| format!("  counter {n} {{ }}\n"))
        .collect();
    format!(
        "table inet pal {{\n{counters}\
  chain input {{\n\
    type filter hook input priority filter; policy accept;\n\
    meta nfproto ipv4 ip saddr != {peer4} accept\n\
    meta nfproto ipv6 ip6 saddr != {peer6} accept\n\
    ct state invalid counter name in_invalid drop\n\
    ct state established counter name in_established accept\n\
    ct state related counter name in_related accept\n\
    tcp dport 22 counter name in_ssh accept\n\
    counter name in_default drop\n\
  }}\n\
  chain output_raw {{\n\
    type filter hook output priority raw; policy accept;\n\
    meta mark != {MARK:#x} drop\n\
  }}\n\
  chain output {{\n\
    type filter hook output priority filter; policy accept;\n\
    ct state invalid counter name out_invalid accept\n\
    ct state established counter name out_established accept\n\
    ct state related counter name out_related accept\n\
    ct state new counter name out_new accept\n\
    ct state untracked counter name out_untracked accept\n\
  }}\n\
}}\n"
    )
}

/// The guarded host (namespace A) under netfilter, and the sockets that feed it.
struct Netfilter {
    pair: NetnsPair,
    /// AF_PACKET in the peer's namespace, sending frames to the host.
    packet: OwnedFd,
    peer_ifindex: i32,
    raw4: OwnedFd,
    raw6: OwnedFd,
    counters: HashMap<String, u64>,
}

impl Netfilter {
    fn new() -> Self {
        let pair = NetnsPair::new();
        let ip = |args: &[&str]| run("ip", args, None);
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let (ha, pa) = (mac(MAC_HOST), mac(MAC_PEER));
        ip(&["-n", &pair.ns_a, "link", "set", &pair.if_a, "address", &ha]);
        ip(&["-n", &pair.ns_b, "link", "set", &pair.if_b, "address", &pa]);
        for (ns, dev, addr, lladdr) in [
            (&pair.ns_a, &pair.if_a, &pair.v4_b, &pa),
            (&pair.ns_a, &pair.if_a, &pair.v6_b, &pa),
            (&pair.ns_b, &pair.if_b, &pair.v4_a, &ha),
            (&pair.ns_b, &pair.if_b, &pair.v6_a, &ha),
        ] {
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                addr,
                "lladdr",
                lladdr,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        let in_a = format!("--net=/var/run/netns/{}", pair.ns_a);
        let nft_a = |args: &[&str], stdin: Option<&str>| {
            let mut a = vec![in_a.as_str(), "nft"];
            a.extend_from_slice(args);
            run("nsenter", &a, stdin)
        };
        nft_a(&["-f", "-"], Some(&ruleset(&pair.v4_b, &pair.v6_b)));
        // The peer answers nothing: whatever reaches it is dropped before its stack.
        run(
            "nsenter",
            &[
                &format!("--net=/var/run/netns/{}", pair.ns_b),
                "nft",
                "-f",
                "-",
            ],
            Some(&format!(
                "table netdev sink {{\n  chain drop_all {{\n    type filter hook ingress device \"{}\" priority 0; policy drop;\n  }}\n}}\n",
                pair.if_b
            )),
        );
        // The sysctls exist once conntrack is in use in the namespace (the ruleset above).
        for kv in [
            "net.netfilter.nf_conntrack_tcp_loose=0",
            "net.netfilter.nf_conntrack_tcp_be_liberal=0",
            "net.netfilter.nf_conntrack_checksum=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            &format!("net.ipv4.conf.{}.rp_filter=0", pair.if_a),
        ] {
            run(
                "nsenter",
                &[
                    &format!("--net=/var/run/netns/{}", pair.ns_a),
                    "sysctl",
                    "-qw",
                    kv,
                ],
                None,
            );
        }
        let (packet, peer_ifindex) = socket_in(
            &pair.ns_b,
            libc::AF_PACKET,
            libc::SOCK_RAW,
            0,
            Some(&pair.if_b),
        );
        assert!(peer_ifindex > 0, "no {} in {}", pair.if_b, pair.ns_b);
        let (raw4, _) = socket_in(
            &pair.ns_a,
            libc::AF_INET,
            libc::SOCK_RAW,
            libc::IPPROTO_RAW,
            None,
        );
        let (raw6, _) = socket_in(
            &pair.ns_a,
            libc::AF_INET6,
            libc::SOCK_RAW,
            libc::IPPROTO_RAW,
            None,
        );
        let mark = MARK;
        for fd in [&raw4, &raw6] {
            // SAFETY: setsockopt with a valid descriptor and a u32 value.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_MARK,
                    (&raw const mark).cast(),
                    4,
                )
            };
            assert_eq!(rc, 0, "SO_MARK: {}", std::io::Error::last_os_error());
        }
        let mut nf = Self {
            pair,
            packet,
            peer_ifindex,
            raw4,
            raw6,
            counters: HashMap::new(),
        };
        nf.counters = nf.read_counters();
        nf
    }

    fn read_counters(&self) -> HashMap<String, u64> {
        let out = run(
            "nsenter",
            &[
                &format!("--net=/var/run/netns/{}", self.pair.ns_a),
                "nft",
                "-j",
                "list",
                "counters",
                "table",
                "inet",
                "pal",
            ],
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("nft -j output");
        v["nftables"]
            .as_array()
            .expect("nftables array")
            .iter()
            .filter_map(|o| {
                let c = o.get("counter")?;
                Some((c["name"].as_str()?.to_owned(), c["packets"].as_u64()?))
            })
            .collect()
    }

    /// The counters that moved since the last read, and remembers the new values.
    fn moved(&mut self) -> Vec<String> {
        let now = self.read_counters();
        let mut moved: Vec<String> = now
            .iter()
            .filter(|(n, v)| self.counters.get(*n).copied().unwrap_or(0) != **v)
            .map(|(n, _)| n.clone())
            .collect();
        moved.sort();
        self.counters = now;
        moved
    }

    fn send(&mut self, step: &Step) -> Obs {
        match step.from {
            Outside => {
                let frame = step.frame();
                // SAFETY: a zeroed sockaddr_ll filled with the peer's interface.
                let rc = unsafe {
                    let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                    sll.sll_family = libc::AF_PACKET as u16;
                    sll.sll_ifindex = self.peer_ifindex;
                    sll.sll_halen = 6;
                    sll.sll_addr[..6].copy_from_slice(&MAC_HOST);
                    libc::sendto(
                        self.packet.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&raw const sll).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(
                    rc,
                    frame.len() as isize,
                    "AF_PACKET send of {}: {}",
                    step.label,
                    std::io::Error::last_os_error()
                );
                // The frame crosses the veth asynchronously: wait until a rule of the input
                // chain counted it.
                let deadline = Instant::now() + Duration::from_secs(3);
                loop {
                    let moved = self.moved();
                    if !moved.is_empty() {
                        assert_eq!(
                            moved.len(),
                            1,
                            "{}: several counters moved: {moved:?}",
                            step.label
                        );
                        return IN_COUNTERS
                            .iter()
                            .find(|(n, _)| *n == moved[0])
                            .unwrap_or_else(|| {
                                panic!("{}: unexpected counter {moved:?}", step.label)
                            })
                            .1;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{}: the packet never reached the input chain",
                        step.label
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Host => {
                let rc = if step.ip[0] >> 4 == 4 {
                    // SAFETY: a zeroed sockaddr_in with the destination of the packet.
                    unsafe {
                        let mut sin: libc::sockaddr_in = std::mem::zeroed();
                        sin.sin_family = libc::AF_INET as u16;
                        sin.sin_addr.s_addr =
                            u32::from_ne_bytes(step.ip[16..20].try_into().expect("4 bytes"));
                        libc::sendto(
                            self.raw4.as_raw_fd(),
                            step.ip.as_ptr().cast(),
                            step.ip.len(),
                            0,
                            (&raw const sin).cast(),
                            size_of::<libc::sockaddr_in>() as u32,
                        )
                    }
                } else {
                    // SAFETY: a zeroed sockaddr_in6 with the destination of the packet.
                    unsafe {
                        let mut sin6: libc::sockaddr_in6 = std::mem::zeroed();
                        sin6.sin6_family = libc::AF_INET6 as u16;
                        sin6.sin6_addr.s6_addr.copy_from_slice(&step.ip[24..40]);
                        libc::sendto(
                            self.raw6.as_raw_fd(),
                            step.ip.as_ptr().cast(),
                            step.ip.len(),
                            0,
                            (&raw const sin6).cast(),
                            size_of::<libc::sockaddr_in6>() as u32,
                        )
                    }
                };
                assert_eq!(
                    rc,
                    step.ip.len() as isize,
                    "raw send of {}: {}",
                    step.label,
                    std::io::Error::last_os_error()
                );
                // The output and postrouting hooks ran inside sendto.
                let moved = self.moved();
                assert_eq!(moved.len(), 1, "{}: counters moved: {moved:?}", step.label);
                let cls = OUT_COUNTERS
                    .iter()
                    .find(|(n, _)| *n == moved[0])
                    .unwrap_or_else(|| panic!("{}: unexpected counter {moved:?}", step.label))
                    .1;
                obs(cls, Verdict::Sent)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The Palisade side

struct Palisade {
    bench: Bench,
}

impl Palisade {
    fn new() -> Self {
        let policy = config::parse_policy(POLICY, "test.toml", Path::new("."))
            .unwrap_or_else(|e| panic!("test policy is invalid:\n{e}"));
        let mut bench =
            Bench::new().expect("loading and verifying the kernel programs (needs root)");
        bench.install(&policy).expect("installing the policy");
        Self { bench }
    }

    fn stats(&self) -> (Vec<u64>, u64, u64) {
        let rule = |i| self.bench.rule_hits(i).expect("rule counters").packets;
        (
            read_stats(&self.bench.ebpf).expect("CT_STATS"),
            rule(0),
            rule(1),
        )
    }

    fn send(&self, step: &Step) -> Obs {
        let frame = step.frame();
        let (ct0, inv0, ssh0) = self.stats();
        let action = match step.from {
            Outside => Some(self.bench.run(&frame).expect("BPF_PROG_TEST_RUN (XDP)")),
            Host => {
                self.bench
                    .run_ct_egress(&frame)
                    .expect("BPF_PROG_TEST_RUN (TC)");
                None
            }
        };
        let (ct1, inv1, ssh1) = self.stats();
        let moved = |i: u32| ct1[i as usize] - ct0[i as usize];
        let classes: Vec<Cls> = [
            (CS_NEW, Cls::New),
            (CS_ESTABLISHED, Cls::Est),
            (CS_RELATED, Cls::Rel),
            (CS_INVALID, Cls::Inv),
            (CS_UNTRACKED, Cls::Untracked),
        ]
        .into_iter()
        .filter(|&(i, _)| moved(i) > 0)
        .map(|(_, c)| c)
        .collect();
        assert_eq!(
            classes.len(),
            1,
            "{}: tracker classes {classes:?}",
            step.label
        );
        let verdict = match action {
            None => Verdict::Sent,
            Some(XDP_PASS) if moved(CS_ACCEPTED) == 1 => Verdict::Tracked,
            Some(XDP_PASS) if ssh1 == ssh0 + 1 => Verdict::Ssh,
            Some(XDP_DROP) if inv1 == inv0 + 1 => Verdict::Invalid,
            Some(XDP_DROP) => Verdict::Default,
            Some(a) => panic!("{}: XDP action {a}", step.label),
        };
        obs(classes[0], verdict)
    }
}

// ---------------------------------------------------------------------------------------
// Expected differences

/// Why Palisade and netfilter disagree on a packet; each cause is a row of the table in
/// `docs/design/conntrack.md`, "Differences from netfilter".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    /// The host sends a TCP segment of a flow with no entry: Palisade picks the flow up
    /// (`new`, then `established` both ways); netfilter with `nf_conntrack_tcp_loose = 0`
    /// calls it invalid and tracks nothing, so the answers are invalid too.
    EgressPickup,
    /// A segment older than a window behind what its sender has sent: netfilter lets
    /// overly delayed segments pass as established without updating the flow; Palisade
    /// calls them invalid.
    OldSegment,
    /// A SYN-ACK acknowledging an earlier SYN of the same ports, after the host sent a SYN
    /// with another initial sequence number: netfilter accepts an acknowledgement within
    /// 66 000 of the latest SYN; Palisade wants the latest SYN acknowledged exactly.
    SynAckOfEarlierSyn,
    /// A SYN of the flow's opener on an established flow: netfilter lets it pass as
    /// established without changing the flow (it may open a new connection after a lost
    /// close, and netfilter resynchronises if the other side answers it); Palisade calls it
    /// invalid. (A SYN of the responder is invalid on both.)
    IgnoredSyn,
    /// A reset during the handshake other than the answer refusing a SYN (the opener
    /// aborting its attempt, either side during a simultaneous open), off the sender's next
    /// sequence number: netfilter accepts it when it lies in the window (class `new` while
    /// no answer was seen), Palisade calls it invalid.
    ResetDuringHandshake,
}

/// The cause a difference on one packet can have, judged from the packet and the two
/// observations alone (used for the first difference on a random flow).
fn cause_of(step: &Step, nf: Obs, pal: Obs) -> Option<Cause> {
    let d = Decoded::of(&step.ip);
    let tcp = d.proto == IPPROTO_TCP;
    let syn = d.flags & TCP_SYN != 0;
    match (step.from, nf.cls, pal.cls) {
        (Host, Cls::Inv, Cls::New) if tcp && !syn && d.flags & TCP_RST == 0 => {
            Some(Cause::EgressPickup)
        }
        (_, Cls::Est, Cls::Inv) if tcp && !syn && d.flags & TCP_RST == 0 => Some(Cause::OldSegment),
        (_, Cls::Est, Cls::Inv) if tcp && syn => Some(Cause::IgnoredSyn),
        (_, Cls::New | Cls::Est, Cls::Inv) if tcp && d.flags & TCP_RST != 0 => {
            Some(Cause::ResetDuringHandshake)
        }
        _ => None,
    }
}

use Cls::{Est, Inv, New};
use Verdict::{Invalid, Sent, Tracked};

const BOTH: &[&str] = &["v4", "v6"];

/// The differences of the hand-written scenarios, all explained in the design note:
/// (label without the family, families, netfilter's observation, Palisade's, cause).
const EXPECTED: &[(&str, &[&str], Obs, Obs, Cause)] = &[
    (
        "midstream: out ACK",
        BOTH,
        obs(Inv, Sent),
        obs(New, Sent),
        Cause::EgressPickup,
    ),
    (
        "midstream: in data",
        BOTH,
        obs(Inv, Invalid),
        obs(Est, Tracked),
        Cause::EgressPickup,
    ),
    (
        "midstream: out ACK after",
        BOTH,
        obs(Inv, Sent),
        obs(New, Sent),
        Cause::EgressPickup,
    ),
    (
        "ack-window: in ACK far behind",
        BOTH,
        obs(Est, Tracked),
        obs(Inv, Invalid),
        Cause::OldSegment,
    ),
    (
        "syn-retransmit-out: in SYN-ACK of the first SYN",
        BOTH,
        obs(Est, Tracked),
        obs(Inv, Invalid),
        Cause::SynAckOfEarlierSyn,
    ),
    (
        "syn-on-established: out SYN",
        BOTH,
        obs(Est, Sent),
        obs(Inv, Sent),
        Cause::IgnoredSyn,
    ),
];

/// The header fields of a packet that explain a verdict.
struct Decoded {
    proto: u8,
    flags: u8,
    seq: u32,
    ack: u32,
    len: usize,
}

impl Decoded {
    fn of(ip: &[u8]) -> Self {
        let (proto, l4) = if ip[0] >> 4 == 4 {
            (ip[9], &ip[usize::from(ip[0] & 0x0f) * 4..])
        } else {
            (ip[6], &ip[40..])
        };
        let be32 = |o: usize| u32::from_be_bytes(l4[o..o + 4].try_into().expect("4 bytes"));
        if proto == IPPROTO_TCP {
            Self {
                proto,
                flags: l4[13],
                seq: be32(4),
                ack: be32(8),
                len: l4.len() - usize::from(l4[12] >> 4) * 4,
            }
        } else {
            Self {
                proto,
                flags: 0,
                seq: 0,
                ack: 0,
                len: l4.len(),
            }
        }
    }
}

impl fmt::Display for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.proto == IPPROTO_TCP {
            write!(
                f,
                "tcp flags {:#04x} seq {} ack {} len {}",
                self.flags, self.seq, self.ack, self.len
            )
        } else {
            write!(f, "proto {} len {}", self.proto, self.len)
        }
    }
}

/// A difference seen in the run.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Difference {
    label: String,
    netfilter: Obs,
    palisade: Obs,
}

/// The label without its family (`scenario/v4: what` -> `scenario: what`) and the family.
fn split_family(label: &str) -> (String, String) {
    let (head, what) = label.split_once(": ").expect("label with a colon");
    let (name, family) = head.rsplit_once('/').expect("label with a family");
    (format!("{name}: {what}"), family.to_owned())
}

/// The flow of a step of the random mix (`random/v4` and its tuple token), `None` for the
/// hand-written scenarios.
fn flow_of(label: &str) -> Option<String> {
    let (head, what) = label.split_once(": ")?;
    if !head.starts_with("random/") {
        return None;
    }
    let tuple = what.split(' ').nth(2)?;
    Some(format!("{head} {tuple}"))
}

/// A file removed when the test ends, unless `PALISADE_CT_PCAP` asked to keep it.
struct TempFile(PathBuf, bool);

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn conntrack_agrees_with_netfilter() {
    let started = Instant::now();
    let mut nf = Netfilter::new();
    let pal = Palisade::new();
    let seed = env_u64("PALISADE_CT_SEED", DEFAULT_SEED);
    let n_random = env_u64("PALISADE_CT_RANDOM", DEFAULT_RANDOM);

    let mut steps = Vec::new();
    let mut ports = Ports(40_000);
    let nets = [
        Net {
            host: nf.pair.v4_a.parse().expect("address"),
            peer: nf.pair.v4_b.parse().expect("address"),
        },
        Net {
            host: nf.pair.v6_a.parse().expect("address"),
            peer: nf.pair.v6_b.parse().expect("address"),
        },
    ];
    for net in nets {
        scenarios(net, &mut ports, &mut steps);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    for net in nets {
        random_mix(net, &mut ports, &mut rng, n_random / 2, &mut steps);
    }

    let keep = std::env::var_os("PALISADE_CT_PCAP");
    let pcap = TempFile(
        keep.clone().map_or_else(
            || std::env::temp_dir().join(format!("palisade-ct-diff-{}.pcapng", std::process::id())),
            PathBuf::from,
        ),
        keep.is_some(),
    );
    write_pcapng(&pcap.0, &steps);
    let replay = read_pcapng(&pcap.0);
    assert_eq!(
        replay.len(),
        steps.len(),
        "packets read back from the pcapng file"
    );
    for (a, b) in replay.iter().zip(&steps) {
        assert_eq!(
            (&a.label, a.from, &a.ip),
            (&b.label, b.from, &b.ip),
            "pcapng round trip"
        );
    }

    // Hand-written scenarios: every packet is compared, and the differences must be
    // exactly the documented ones. Random flows: once the two sides disagree on a flow,
    // their states have parted and the rest of that flow says nothing new; the first
    // difference of each flow must have a documented cause.
    let mut differences = BTreeSet::new();
    let mut diverged: BTreeMap<String, (Option<Cause>, usize)> = BTreeMap::new();
    let mut unexplained = Vec::new();
    let mut tally: BTreeMap<(Side, Obs), usize> = BTreeMap::new();
    for step in &replay {
        let n = nf.send(step);
        let p = pal.send(step);
        *tally.entry((step.from, n)).or_default() += 1;
        if std::env::var("PALISADE_CT_TRACE").is_ok_and(|t| step.label.contains(&t)) {
            eprintln!(
                "{} ({}): netfilter {n}, palisade {p}",
                step.label,
                Decoded::of(&step.ip)
            );
        }
        match flow_of(&step.label) {
            None if n != p => {
                differences.insert(Difference {
                    label: step.label.clone(),
                    netfilter: n,
                    palisade: p,
                });
            }
            None => {}
            Some(flow) => {
                if let Some((_, after)) = diverged.get_mut(&flow) {
                    *after += 1;
                } else if n != p {
                    let cause = cause_of(step, n, p);
                    if cause.is_none() {
                        unexplained.push(format!(
                            "  {} ({}): netfilter {n}, palisade {p}",
                            step.label,
                            Decoded::of(&step.ip)
                        ));
                    }
                    diverged.insert(flow, (cause, 0));
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} packets ({} hand-written, seed {seed:#x}) in {seconds:.1} s\nnetfilter's verdicts: {tally:?}\nrandom flows that parted (cause, packets after): {diverged:?}",
        replay.len(),
        replay.len() as u64 - n_random / 2 * 2,
    );

    let mut seen_expected = BTreeSet::new();
    for d in &differences {
        let (label, family) = split_family(&d.label);
        let hit = EXPECTED.iter().position(|(l, fams, n, p, _)| {
            *l == label && fams.contains(&family.as_str()) && *n == d.netfilter && *p == d.palisade
        });
        match hit {
            Some(i) => {
                seen_expected.insert((i, family));
            }
            None => unexplained.push(format!(
                "  {}: netfilter {}, palisade {}",
                d.label, d.netfilter, d.palisade
            )),
        }
    }
    let mut missing = Vec::new();
    for (i, (label, fams, n, p, cause)) in EXPECTED.iter().enumerate() {
        for family in *fams {
            if !seen_expected.contains(&(i, (*family).to_owned())) {
                missing.push(format!(
                    "  {label} ({family}): netfilter {n}, palisade {p} ({cause:?})"
                ));
            }
        }
    }
    assert!(
        unexplained.is_empty() && missing.is_empty(),
        "seed {seed:#x}\nundocumented differences:\n{}\ndocumented differences that did not occur:\n{}",
        unexplained.join("\n"),
        missing.join("\n")
    );
}
