//! Connection tracking in the kernel, run on crafted frames through `BPF_PROG_TEST_RUN`.
//!
//! Frames arriving from outside go through the XDP firewall ("ingress", which tail-calls the
//! tracker stage when the policy tracks connections); frames the host sends go through the TC
//! egress tracker ("egress"). Every step checks three things: the verdict, the movement of
//! every tracker counter (`CT_STATS`) and of the firewall's drop counters, and the entry the
//! step leaves in the tables (state, table, direction, who opened it).
//!
//! The guarded host is 10.0.0.1 (fd00::1); remote peers are 10.0.0.2 and up (fd00::2).
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN); each test loads its own copy of the object, so
//! entries never leak from one test into another.

use std::{net::IpAddr, path::Path, time::Duration};

use palisade::{
    conntrack::{
        Flow, FlowFilter,
        carry::{STAMP_LAG_NS, now_ns},
        census, flows, read_stats, sweep, sweep_program,
        table::walk,
    },
    craft::{checksum, ip},
    policy::{config, model::Policy},
    testrun::Bench,
};
use palisade_common::{
    conntrack::{
        CS_ACCEPTED, CS_ESTABLISHED, CS_EXPIRED_LOOKUP_NEW, CS_INSERT_EST, CS_INSERT_NEW,
        CS_INVALID, CS_NEW, CS_PROMOTED, CS_RELATED, CS_REOPENED, CS_REOPENED_EST, CS_UNTRACKED,
        CT_STAT_NAMES, SWEEP_EXPIRE, SweepRequest, TABLE_EST, TABLE_NEW,
    },
    packet::{
        ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
    },
    reason, stats,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// The TC verdict of the egress tracker, whatever it sees (`TC_ACT_UNSPEC`).
const TC_CONTINUE: i32 = -1;

const HOST: &str = "10.0.0.1";
const REMOTE: &str = "10.0.0.2";
const HOST6: &str = "fd00::1";
const REMOTE6: &str = "fd00::2";

// ---------------------------------------------------------------------------------------
// Frames

/// The network and link layers of a frame: addresses, an optional 802.1Q tag, an optional
/// IPv6 hop-by-hop header, an optional IPv4 fragment position.
#[derive(Clone, Debug)]
struct Ip {
    src: IpAddr,
    dst: IpAddr,
    vlan: Option<u16>,
    hop_by_hop: bool,
    /// IPv4: (offset in 8-byte units, more fragments).
    frag: Option<(u16, bool)>,
}

fn net(src: &str, dst: &str) -> Ip {
    Ip {
        src: ip(src),
        dst: ip(dst),
        vlan: None,
        hop_by_hop: false,
        frag: None,
    }
}

impl Ip {
    fn vlan(mut self, vid: u16) -> Self {
        self.vlan = Some(vid);
        self
    }

    fn hop_by_hop(mut self) -> Self {
        self.hop_by_hop = true;
        self
    }

    fn fragment(mut self, offset8: u16, more: bool) -> Self {
        self.frag = Some((offset8, more));
        self
    }

    /// The same path, the other way round.
    fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            ..self.clone()
        }
    }

    /// The IP packet (header, extension headers, `l4`).
    fn packet(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = (20 + l4.len()) as u16;
                let (off, more) = self.frag.unwrap_or((0, false));
                let frag = off & 0x1fff | if more { 0x2000 } else { 0 };
                let mut h = vec![0x45, 0];
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&[0xab, 0xcd]);
                h.extend_from_slice(&frag.to_be_bytes());
                h.extend_from_slice(&[64, proto, 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                let sum = checksum(&h, 0);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                h.extend_from_slice(l4);
                h
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ext: Vec<u8> = if self.hop_by_hop {
                    // Next header, length 0 (8 bytes), one PadN option of 4 bytes.
                    vec![proto, 0, 1, 4, 0, 0, 0, 0]
                } else {
                    Vec::new()
                };
                let next = if self.hop_by_hop {
                    IPPROTO_HOPOPTS
                } else {
                    proto
                };
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[next, 64]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&ext);
                h.extend_from_slice(l4);
                h
            }
            _ => panic!("frame mixes address families"),
        }
    }

    /// The Ethernet frame carrying `l4`.
    fn frame(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
        if let Some(vid) = self.vlan {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        let ethertype = if self.src.is_ipv4() {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        };
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&self.packet(proto, l4));
        f
    }

    /// The layer-4 checksum over the pseudo-header (frames are valid on a real wire too).
    fn l4_checksum(&self, proto: u8, l4: &[u8]) -> u16 {
        let mut pseudo = Vec::new();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
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
            _ => {}
        }
        pseudo.extend_from_slice(l4);
        checksum(&pseudo, 0)
    }

    /// A TCP segment.
    fn tcp(&self, s: &Seg) -> Vec<u8> {
        let l4 = self.tcp_bytes(s);
        self.frame(IPPROTO_TCP, &l4)
    }

    fn tcp_bytes(&self, s: &Seg) -> Vec<u8> {
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
        let sum = self.l4_checksum(IPPROTO_TCP, &t);
        t[16..18].copy_from_slice(&sum.to_be_bytes());
        t
    }

    /// A UDP datagram with a few bytes of payload.
    fn udp(&self, sport: u16, dport: u16) -> Vec<u8> {
        let payload = [0x11u8; 12];
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(&payload);
        let sum = self.l4_checksum(IPPROTO_UDP, &u);
        u[6..8].copy_from_slice(&sum.to_be_bytes());
        self.frame(IPPROTO_UDP, &u)
    }

    fn icmp_proto(&self) -> u8 {
        if self.src.is_ipv4() {
            IPPROTO_ICMP
        } else {
            IPPROTO_ICMPV6
        }
    }

    /// An ICMP message: type, code, the four bytes after the checksum, then `body`.
    fn icmp(&self, icmp_type: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
        let proto = self.icmp_proto();
        let mut m = vec![icmp_type, code, 0, 0];
        m.extend_from_slice(&rest);
        m.extend_from_slice(body);
        let sum = if proto == IPPROTO_ICMP {
            checksum(&m, 0)
        } else {
            self.l4_checksum(proto, &m)
        };
        m[2..4].copy_from_slice(&sum.to_be_bytes());
        self.frame(proto, &m)
    }

    /// An echo request (8 / 128) or reply (0 / 129) with identifier `id`.
    fn echo(&self, reply: bool, id: u16, seq: u16) -> Vec<u8> {
        let t = match (self.src.is_ipv4(), reply) {
            (true, false) => 8,
            (true, true) => 0,
            (false, false) => 128,
            (false, true) => 129,
        };
        let [i0, i1] = id.to_be_bytes();
        let [s0, s1] = seq.to_be_bytes();
        self.icmp(t, 0, [i0, i1, s0, s1], b"palisade")
    }

    /// The start of `quoted` (an IP packet) as an ICMP error quotes it: its IP header and the
    /// first 8 bytes of its layer 4.
    fn quote(quoted: &[u8]) -> Vec<u8> {
        let header = if quoted[0] >> 4 == 4 {
            usize::from(quoted[0] & 0x0f) * 4
        } else {
            40
        };
        quoted[..header + 8].to_vec()
    }
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

fn seg(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Seg {
    Seg {
        sport,
        dport,
        flags,
        seq,
        ack,
        win: 65_535,
        wscale: None,
        payload: 0,
    }
}

impl Seg {
    fn win(mut self, win: u16) -> Self {
        self.win = win;
        self
    }

    fn wscale(mut self, ws: u8) -> Self {
        self.wscale = Some(ws);
        self
    }

    fn payload(mut self, n: usize) -> Self {
        self.payload = n;
        self
    }
}

// ---------------------------------------------------------------------------------------
// Harness

/// How the firewall must treat an ingress frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Pass,
    /// Dropped because no rule matched and the default is drop.
    DropDefault,
    /// Dropped by a rule with action drop.
    DropRule,
    /// Dropped as a new flow over a per-source limit of `[conntrack]`.
    DropLimit,
}

use Want::{DropDefault, DropLimit, DropRule, Pass};

/// The class the tracker gives a packet (which `CT_STATS` counter it moves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cls {
    New,
    Est,
    Rel,
    Inv,
    /// Not looked at (a non-first fragment).
    Untracked,
}

impl Cls {
    const fn counter(self) -> u32 {
        match self {
            Cls::New => CS_NEW,
            Cls::Est => CS_ESTABLISHED,
            Cls::Rel => CS_RELATED,
            Cls::Inv => CS_INVALID,
            Cls::Untracked => CS_UNTRACKED,
        }
    }
}

/// Counter movements besides the class: a new entry inserted on commit.
const INSERTED: &[(u32, u64)] = &[(CS_INSERT_NEW, 1)];
/// An entry moved into the table of validated flows.
const PROMOTED: &[(u32, u64)] = &[(CS_INSERT_EST, 1), (CS_PROMOTED, 1)];
const NOTHING: &[(u32, u64)] = &[];

/// A loaded object with one policy installed.
struct Ct {
    bench: Bench,
    stateful: bool,
}

fn parse(toml: &str) -> Policy {
    config::parse_policy(toml, "test.toml", Path::new("."))
        .unwrap_or_else(|e| panic!("test policy is invalid:\n{e}\n{toml}"))
}

/// Loads the programs and installs the policy given as TOML.
fn load(toml: &str) -> Ct {
    load_policy(&parse(toml))
}

fn load_policy(policy: &Policy) -> Ct {
    let mut bench = Bench::new().expect("loading and verifying the kernel programs (needs root)");
    bench.install(policy).expect("installing the policy");
    let ct = Ct {
        bench,
        stateful: policy.firewall.stateful,
    };
    assert_eq!(ct.all_flows(), vec![], "a fresh object tracks nothing");
    ct
}

/// The firewall counters a step may move.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FwCounters {
    passed: u64,
    dropped: u64,
    internal: u64,
    by_rule: u64,
    by_default: u64,
    by_limit: u64,
}

impl Ct {
    fn ct_stats(&self) -> Vec<u64> {
        read_stats(&self.bench.ebpf).expect("reading CT_STATS")
    }

    fn fw_counters(&self) -> FwCounters {
        let b = &self.bench;
        FwCounters {
            passed: b.stat(stats::PASSED).expect("STATS"),
            dropped: b.stat(stats::DROPPED).expect("STATS"),
            internal: b.stat(stats::INTERNAL).expect("STATS"),
            by_rule: b.reason_count(reason::RULE).expect("REASON_STATS"),
            by_default: b.reason_count(reason::DEFAULT).expect("REASON_STATS"),
            by_limit: b.reason_count(reason::CT_LIMIT).expect("REASON_STATS"),
        }
    }

    /// Asserts that the tracker counters moved from `before` to `after` by exactly `moves`.
    #[track_caller]
    fn assert_ct_moves(before: &[u64], after: &[u64], moves: &[(u32, u64)], what: &str) {
        let mut want = before.to_vec();
        for &(i, n) in moves {
            want[i as usize] += n;
        }
        if after != want.as_slice() {
            let show = |v: &[u64]| {
                v.iter()
                    .zip(before)
                    .zip(CT_STAT_NAMES)
                    .filter(|((x, b), _)| x != b)
                    .map(|((x, b), name)| format!("{name} +{}", x - b))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            panic!(
                "tracker counters after {what}: moved [{}], expected [{}]",
                show(after),
                show(&want)
            );
        }
    }

    /// Runs `frame` through the XDP firewall (arriving from outside) and checks the verdict,
    /// the class the tracker gave it and every tracker counter (`extra` are the movements
    /// besides the class and the stateful accept).
    #[track_caller]
    fn ingress(&self, what: &str, frame: &[u8], want: Want, cls: Cls, extra: &[(u32, u64)]) {
        let ct_before = self.ct_stats();
        let fw_before = self.fw_counters();
        let action = self.bench.run(frame).expect("BPF_PROG_TEST_RUN (XDP)");
        let ct_after = self.ct_stats();
        let fw_after = self.fw_counters();
        let want_action = if want == Pass { XDP_PASS } else { XDP_DROP };
        assert_eq!(
            action, want_action,
            "XDP action of ingress {what} (wanted {want:?}, class {cls:?})"
        );
        let mut fw_want = fw_before.clone();
        match want {
            Pass => fw_want.passed += 1,
            DropDefault => {
                fw_want.dropped += 1;
                fw_want.by_default += 1;
            }
            DropRule => {
                fw_want.dropped += 1;
                fw_want.by_rule += 1;
            }
            DropLimit => {
                fw_want.dropped += 1;
                fw_want.by_limit += 1;
            }
        }
        assert_eq!(fw_after, fw_want, "firewall counters after ingress {what}");
        let mut moves = vec![(cls.counter(), 1)];
        if self.stateful && want == Pass && matches!(cls, Cls::Est | Cls::Rel) {
            moves.push((CS_ACCEPTED, 1));
        }
        moves.extend_from_slice(extra);
        Self::assert_ct_moves(&ct_before, &ct_after, &moves, &format!("ingress {what}"));
    }

    /// Runs `frame` through the TC egress tracker (sent by the host) and checks that it
    /// continues, the class it was given and every tracker counter.
    #[track_caller]
    fn egress(&self, what: &str, frame: &[u8], cls: Cls, extra: &[(u32, u64)]) {
        let ct_before = self.ct_stats();
        let internal = self.bench.stat(stats::INTERNAL).expect("STATS");
        let verdict = self
            .bench
            .run_ct_egress(frame)
            .expect("BPF_PROG_TEST_RUN (TC)");
        let ct_after = self.ct_stats();
        assert_eq!(verdict, TC_CONTINUE, "TC verdict of egress {what}");
        assert_eq!(
            self.bench.stat(stats::INTERNAL).expect("STATS"),
            internal,
            "internal errors after egress {what}"
        );
        let mut moves = vec![(cls.counter(), 1)];
        moves.extend_from_slice(extra);
        Self::assert_ct_moves(&ct_before, &ct_after, &moves, &format!("egress {what}"));
    }

    fn all_flows(&self) -> Vec<Flow> {
        flows(&self.bench.ebpf, &FlowFilter::default()).expect("reading the tracker tables")
    }

    /// Every entry whose endpoints are `x` and `y`, in either order.
    fn flows_between(&self, proto: u8, x: (&str, u16), y: (&str, u16)) -> Vec<Flow> {
        let (xa, ya) = (ip(x.0), ip(y.0));
        self.all_flows()
            .into_iter()
            .filter(|f| {
                f.proto == proto
                    && ((f.orig_addr, f.orig_port, f.reply_addr, f.reply_port)
                        == (xa, x.1, ya, y.1)
                        || (f.orig_addr, f.orig_port, f.reply_addr, f.reply_port)
                            == (ya, y.1, xa, x.1))
            })
            .collect()
    }

    /// Asserts that exactly one entry links `orig` and `reply`, opened by `orig`, in `state`
    /// and `table`, and returns it.
    #[track_caller]
    #[expect(
        clippy::too_many_arguments,
        reason = "one expectation per field of the entry"
    )]
    fn expect_flow(
        &self,
        what: &str,
        proto: u8,
        orig: (&str, u16),
        reply: (&str, u16),
        state: &str,
        table: &str,
        local: bool,
    ) -> Flow {
        let found = self.flows_between(proto, orig, reply);
        assert_eq!(
            found.len(),
            1,
            "{what}: one entry for {orig:?} <-> {reply:?}, found {found:#?}\nall: {:#?}",
            self.all_flows()
        );
        let f = found.into_iter().next().expect("one entry");
        assert_eq!(
            (f.orig_addr, f.orig_port, f.reply_addr, f.reply_port),
            (ip(orig.0), orig.1, ip(reply.0), reply.1),
            "{what}: originator of {f:?}"
        );
        assert_eq!(f.state, state, "{what}: entry state of {f:?}");
        assert_eq!(f.table, table, "{what}: table of {f:?}");
        assert_eq!(f.local, local, "{what}: local flag of {f:?}");
        f
    }

    #[track_caller]
    fn expect_no_flow(&self, what: &str, proto: u8, x: (&str, u16), y: (&str, u16)) {
        let found = self.flows_between(proto, x, y);
        assert!(
            found.is_empty(),
            "{what}: no entry expected, found {found:#?}"
        );
    }

    fn rule_packets(&self, index: u32) -> u64 {
        self.bench.rule_hits(index).expect("rule counters").packets
    }
}

const VALIDATED: &str = "validated";
const UNVALIDATED: &str = "unvalidated";

/// `[firewall] default = "drop"`, `stateful = true`, SSH allowed in.
const STATEFUL: &str = r#"
[firewall]
default = "drop"
stateful = true

[[firewall.rule]]
name = "ssh-in"
action = "allow"
proto = "tcp"
dport = 22
"#;

/// The same without `stateful`: replies are let through by a rule on their state, and SSH
/// only opens with a new connection.
const STATE_RULES: &str = r#"
[firewall]
default = "drop"

[[firewall.rule]]
name = "replies"
action = "allow"
state = ["established", "related"]

[[firewall.rule]]
name = "ssh-new"
action = "allow"
proto = "tcp"
dport = 22
state = ["new"]
"#;

// ---------------------------------------------------------------------------------------
// Scenarios shared by several policies

/// An outbound connection from HOST:`port` to REMOTE:80, through its handshake, then
/// packets outside the window and an in-window reset.
fn outbound_handshake(ct: &Ct, port: u16) {
    let out = net(HOST, REMOTE);
    let back = out.reversed();
    let (h, r) = ((HOST, port), (REMOTE, 80));
    let (isn, risn) = (1_000u32, 5_000u32);
    let tcp = IPPROTO_TCP;

    ct.egress(
        "SYN",
        &out.tcp(&seg(port, 80, TCP_SYN, isn, 0).win(64_240).wscale(7)),
        Cls::New,
        INSERTED,
    );
    ct.expect_flow("after SYN", tcp, h, r, "syn-sent", UNVALIDATED, true);

    ct.ingress(
        "SYN-ACK",
        &back.tcp(&seg(80, port, TCP_SYN | TCP_ACK, risn, isn + 1).wscale(7)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow("after SYN-ACK", tcp, h, r, "syn-recv", UNVALIDATED, true);

    ct.egress(
        "ACK",
        &out.tcp(&seg(port, 80, TCP_ACK, isn + 1, risn + 1).win(502)),
        Cls::Est,
        PROMOTED,
    );
    ct.expect_flow("after ACK", tcp, h, r, "established", VALIDATED, true);

    ct.ingress(
        "data in window",
        &back.tcp(
            &seg(80, port, TCP_ACK | TCP_PSH, risn + 1, isn + 1)
                .win(512)
                .payload(100),
        ),
        Pass,
        Cls::Est,
        NOTHING,
    );
    let f = ct.expect_flow("after data", tcp, h, r, "established", VALIDATED, true);
    assert_eq!(
        (f.packets_orig, f.packets_reply),
        (2, 2),
        "packets counted: {f:?}"
    );
    let next = risn + 101;

    ct.ingress(
        "RST far outside the window",
        &back.tcp(&seg(80, port, TCP_RST, next.wrapping_add(0x4000_0000), 0).win(0)),
        DropDefault,
        Cls::Inv,
        NOTHING,
    );
    ct.ingress(
        "ACK of data never sent",
        &back.tcp(&seg(80, port, TCP_ACK, next, isn + 1 + 100_000).win(512)),
        DropDefault,
        Cls::Inv,
        NOTHING,
    );
    let f = ct.expect_flow(
        "after invalid packets",
        tcp,
        h,
        r,
        "established",
        VALIDATED,
        true,
    );
    assert_eq!(
        (f.packets_orig, f.packets_reply),
        (2, 2),
        "invalid packets are not counted in the flow: {f:?}"
    );

    ct.ingress(
        "RST in window",
        &back.tcp(&seg(80, port, TCP_RST, next, 0).win(0)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow("after RST", tcp, h, r, "close", VALIDATED, true);
}

/// Unsolicited packets to a closed port, then an inbound SSH connection from
/// REMOTE:`port`, with retransmitted SYNs during the handshake.
fn inbound_ssh(ct: &Ct, port: u16) {
    let inb = net(REMOTE, HOST);
    let out = inb.reversed();
    let tcp = IPPROTO_TCP;
    let (r, h) = ((REMOTE, port), (HOST, 22));
    let (isn, hisn) = (7_000u32, 9_000u32);

    let flows_before = ct.all_flows().len();
    ct.ingress(
        "unsolicited SYN-ACK to a closed port",
        &inb.tcp(&seg(3333, 8080, TCP_SYN | TCP_ACK, 1, 1)),
        DropDefault,
        Cls::Inv,
        NOTHING,
    );
    ct.ingress(
        "unsolicited ACK to a closed port",
        &inb.tcp(&seg(3333, 8080, TCP_ACK, 1, 1)),
        DropDefault,
        Cls::Inv,
        NOTHING,
    );
    ct.expect_no_flow("unsolicited packets", tcp, (REMOTE, 3333), (HOST, 8080));
    assert_eq!(
        ct.all_flows().len(),
        flows_before,
        "unsolicited packets leave no entry"
    );

    let syn = inb.tcp(&seg(port, 22, TCP_SYN, isn, 0).wscale(6));
    ct.ingress("SYN to port 22", &syn, Pass, Cls::New, INSERTED);
    ct.expect_flow("after SYN", tcp, r, h, "syn-sent", UNVALIDATED, false);
    ct.ingress(
        "SYN retransmitted before the SYN-ACK",
        &syn,
        Pass,
        Cls::New,
        NOTHING,
    );
    ct.expect_flow(
        "after the retransmission",
        tcp,
        r,
        h,
        "syn-sent",
        UNVALIDATED,
        false,
    );

    ct.egress(
        "SYN-ACK",
        &out.tcp(&seg(22, port, TCP_SYN | TCP_ACK, hisn, isn + 1).wscale(7)),
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow("after SYN-ACK", tcp, r, h, "syn-recv", UNVALIDATED, false);
    ct.ingress(
        "SYN retransmitted after the SYN-ACK",
        &syn,
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow(
        "after the late retransmission",
        tcp,
        r,
        h,
        "syn-recv",
        UNVALIDATED,
        false,
    );

    ct.ingress(
        "ACK",
        &inb.tcp(&seg(port, 22, TCP_ACK, isn + 1, hisn + 1).win(1000)),
        Pass,
        Cls::Est,
        PROMOTED,
    );
    let f = ct.expect_flow("after ACK", tcp, r, h, "established", VALIDATED, false);
    // (The originator's count is checked in `retransmitted_syn_keeps_the_flow_counters`.)
    assert_eq!(f.packets_reply, 1, "packets counted: {f:?}");

    ct.egress(
        "data",
        &out.tcp(
            &seg(22, port, TCP_ACK | TCP_PSH, hisn + 1, isn + 1)
                .win(1000)
                .payload(40),
        ),
        Cls::Est,
        NOTHING,
    );
    ct.ingress(
        "data",
        &inb.tcp(
            &seg(port, 22, TCP_ACK | TCP_PSH, isn + 1, hisn + 41)
                .win(1000)
                .payload(60),
        ),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow("after data", tcp, r, h, "established", VALIDATED, false);
}

/// Establishes HOST:`hport` -> `remote`:`rport` over `out` (egress SYN, ingress SYN-ACK,
/// egress ACK), checking every step. Returns the next sequence numbers (host, remote).
fn establish_out(ct: &Ct, out: &Ip, hport: u16, rport: u16) -> (u32, u32) {
    let back = out.reversed();
    let (isn, risn) = (40_000u32, 80_000u32);
    ct.egress(
        "SYN",
        &out.tcp(&seg(hport, rport, TCP_SYN, isn, 0)),
        Cls::New,
        INSERTED,
    );
    ct.ingress(
        "SYN-ACK",
        &back.tcp(&seg(rport, hport, TCP_SYN | TCP_ACK, risn, isn + 1)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.egress(
        "ACK",
        &out.tcp(&seg(hport, rport, TCP_ACK, isn + 1, risn + 1)),
        Cls::Est,
        PROMOTED,
    );
    (isn + 1, risn + 1)
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn outbound_tcp_handshake_then_window_checks() {
    let ct = load(STATEFUL);
    outbound_handshake(&ct, 40_000);
    assert_eq!(ct.rule_packets(0), 0, "the SSH rule saw none of it");
}

#[test]
fn inbound_tcp_needs_a_rule_and_a_handshake() {
    let ct = load(STATEFUL);
    inbound_ssh(&ct, 50_000);
    // The rule saw the SYN and its retransmission before the SYN-ACK; everything else was
    // accepted as part of the connection.
    assert_eq!(ct.rule_packets(0), 2, "packets the SSH rule decided");
}

#[test]
fn retransmitted_syn_keeps_the_flow_counters() {
    let ct = load(STATEFUL);
    let inb = net(REMOTE, HOST);
    let syn = inb.tcp(&seg(50_100, 22, TCP_SYN, 7_000, 0).wscale(6));
    ct.ingress("SYN to port 22", &syn, Pass, Cls::New, INSERTED);
    ct.ingress("retransmitted SYN", &syn, Pass, Cls::New, NOTHING);
    let f = ct.expect_flow(
        "after the retransmission",
        IPPROTO_TCP,
        (REMOTE, 50_100),
        (HOST, 22),
        "syn-sent",
        UNVALIDATED,
        false,
    );
    // Both SYNs: 20 bytes of header and 4 of options each.
    assert_eq!(
        (f.packets_orig, f.bytes_orig),
        (2, 48),
        "both SYNs are counted in the flow: {f:?}"
    );
}

#[test]
fn fin_teardown_then_reopen() {
    let ct = load(STATEFUL);
    let out = net(HOST, REMOTE);
    let back = out.reversed();
    let tcp = IPPROTO_TCP;
    let (h, r) = ((HOST, 40_001), (REMOTE, 80));
    let (hs, rs) = establish_out(&ct, &out, 40_001, 80);
    ct.expect_flow("established", tcp, h, r, "established", VALIDATED, true);

    ct.egress(
        "FIN",
        &out.tcp(&seg(40_001, 80, TCP_FIN | TCP_ACK, hs, rs)),
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow(
        "after the host's FIN",
        tcp,
        h,
        r,
        "fin-wait",
        VALIDATED,
        true,
    );
    ct.ingress(
        "ACK of the FIN",
        &back.tcp(&seg(80, 40_001, TCP_ACK, rs, hs + 1)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow(
        "after the FIN is acknowledged",
        tcp,
        h,
        r,
        "fin-wait",
        VALIDATED,
        true,
    );
    ct.ingress(
        "remote FIN",
        &back.tcp(&seg(80, 40_001, TCP_FIN | TCP_ACK, rs, hs + 1)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow("after both FINs", tcp, h, r, "last-ack", VALIDATED, true);
    ct.egress(
        "last ACK",
        &out.tcp(&seg(40_001, 80, TCP_ACK, hs + 1, rs + 1)),
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow(
        "after the last ACK",
        tcp,
        h,
        r,
        "time-wait",
        VALIDATED,
        true,
    );

    // A SYN from the outside on these ports is a new flow the rules drop: the closed flow
    // stays as it was.
    ct.ingress(
        "SYN from outside on the same ports",
        &back.tcp(&seg(80, 40_001, TCP_SYN, 5_000_000, 0)),
        DropDefault,
        Cls::New,
        NOTHING,
    );
    ct.expect_flow(
        "after a dropped SYN",
        tcp,
        h,
        r,
        "time-wait",
        VALIDATED,
        true,
    );

    // A new connection on the same ports: it leaves the validated table and starts over.
    let isn2 = hs.wrapping_add(1_000_000);
    ct.egress(
        "new SYN on the same ports",
        &out.tcp(&seg(40_001, 80, TCP_SYN, isn2, 0)),
        Cls::New,
        &[(CS_REOPENED, 1), (CS_REOPENED_EST, 1), (CS_INSERT_NEW, 1)],
    );
    let f = ct.flows_between(tcp, h, r);
    assert_eq!(f.len(), 1, "one entry after the reopen: {f:#?}");
    assert_eq!(f[0].state, "syn-sent", "reopened entry {:?}", f[0]);
    assert_eq!(
        (f[0].orig_addr, f[0].orig_port),
        (ip(HOST), 40_001),
        "{:?}",
        f[0]
    );
    assert!(f[0].local, "reopened from egress: {:?}", f[0]);
    ct.ingress(
        "SYN-ACK of the new connection",
        &back.tcp(&seg(80, 40_001, TCP_SYN | TCP_ACK, 7_000_000, isn2 + 1)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    let f = ct.flows_between(tcp, h, r);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].state, "syn-recv", "{:?}", f[0]);
}

#[test]
fn new_flows_per_source_are_rate_limited() {
    let ct = load(&format!("{STATEFUL}\n[conntrack]\nnew_per_source = 2\n"));
    let inb = net(REMOTE, HOST);
    for port in [50_301, 50_302] {
        ct.ingress(
            "SYN within the rate",
            &inb.tcp(&seg(port, 22, TCP_SYN, 1_000, 0)),
            Pass,
            Cls::New,
            INSERTED,
        );
    }
    ct.ingress(
        "retransmitted SYN (not a new flow)",
        &inb.tcp(&seg(50_302, 22, TCP_SYN, 1_000, 0)),
        Pass,
        Cls::New,
        NOTHING,
    );
    ct.ingress(
        "third new flow in the same second",
        &inb.tcp(&seg(50_303, 22, TCP_SYN, 1_000, 0)),
        DropLimit,
        Cls::New,
        NOTHING,
    );
    ct.expect_no_flow(
        "the refused flow",
        IPPROTO_TCP,
        (REMOTE, 50_303),
        (HOST, 22),
    );
    ct.ingress(
        "another source",
        &net("10.0.0.3", HOST).tcp(&seg(50_304, 22, TCP_SYN, 1_000, 0)),
        Pass,
        Cls::New,
        INSERTED,
    );
    // The bucket refills at two tokens a second.
    std::thread::sleep(Duration::from_millis(1100));
    ct.ingress(
        "a new flow a second later",
        &inb.tcp(&seg(50_305, 22, TCP_SYN, 1_000, 0)),
        Pass,
        Cls::New,
        INSERTED,
    );
}

#[test]
fn open_flows_per_source_are_limited_and_released() {
    let ct = load(&format!("{STATEFUL}\n[conntrack]\nmax_per_source = 1\n"));
    let inb = net(REMOTE, HOST);
    let out = inb.reversed();
    let open = |port: u16| {
        ct.ingress(
            "SYN",
            &inb.tcp(&seg(port, 22, TCP_SYN, 5_000, 0)),
            Pass,
            Cls::New,
            INSERTED,
        );
        ct.egress(
            "SYN-ACK",
            &out.tcp(&seg(22, port, TCP_SYN | TCP_ACK, 9_000, 5_001)),
            Cls::Est,
            NOTHING,
        );
        ct.ingress(
            "ACK",
            &inb.tcp(&seg(port, 22, TCP_ACK, 5_001, 9_001)),
            Pass,
            Cls::Est,
            PROMOTED,
        );
    };
    open(50_401);
    // Unvalidated flows do not count: a second SYN opens, its handshake does not finish.
    ct.ingress(
        "second flow while the first is open",
        &inb.tcp(&seg(50_402, 22, TCP_SYN, 5_000, 0)),
        DropLimit,
        Cls::New,
        NOTHING,
    );
    // Flushing the open flow gives the source its room back.
    let prog = sweep_program(&ct.bench.ebpf).expect("sweep program");
    let c = sweep(
        prog,
        &ct.bench.ebpf,
        &SweepRequest {
            op: palisade_common::conntrack::SWEEP_FLUSH,
            ..SweepRequest::default()
        },
    )
    .expect("sweep");
    assert_eq!(c.flushed.iter().sum::<u64>(), 1, "{c:?}");
    open(50_403);
    // Flows this host opens never count against the remote.
    establish_out(&ct, &net(HOST, REMOTE), 40_100, 443);
    ct.ingress(
        "over the limit again",
        &inb.tcp(&seg(50_404, 22, TCP_SYN, 5_000, 0)),
        DropLimit,
        Cls::New,
        NOTHING,
    );
}

#[test]
fn resets_during_the_handshake_close_the_flow() {
    let ct = load(STATEFUL);
    let inb = net(REMOTE, HOST);
    let tcp = IPPROTO_TCP;
    // The opener aborts its attempt: a reset at its next sequence number closes the flow;
    // one elsewhere is invalid.
    ct.ingress(
        "SYN to port 22",
        &inb.tcp(&seg(50_200, 22, TCP_SYN, 9_000, 0)),
        Pass,
        Cls::New,
        INSERTED,
    );
    ct.ingress(
        "RST off the sequence (the SSH rule, without `state`, still takes it)",
        &inb.tcp(&seg(50_200, 22, TCP_RST, 9_500, 0)),
        Pass,
        Cls::Inv,
        NOTHING,
    );
    ct.expect_flow(
        "after a reset off the sequence",
        tcp,
        (REMOTE, 50_200),
        (HOST, 22),
        "syn-sent",
        UNVALIDATED,
        false,
    );
    ct.ingress(
        "RST of the opener",
        &inb.tcp(&seg(50_200, 22, TCP_RST, 9_001, 0)),
        Pass,
        Cls::New,
        NOTHING,
    );
    ct.expect_flow(
        "after the opener's reset",
        tcp,
        (REMOTE, 50_200),
        (HOST, 22),
        "close",
        UNVALIDATED,
        false,
    );

    // Either side of a simultaneous open may abort it.
    let out = net(HOST, REMOTE);
    let back = out.reversed();
    ct.egress(
        "SYN",
        &out.tcp(&seg(40_003, 6001, TCP_SYN, 100, 0)),
        Cls::New,
        INSERTED,
    );
    ct.ingress(
        "crossing SYN",
        &back.tcp(&seg(6001, 40_003, TCP_SYN, 300, 0)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.ingress(
        "RST of the remote",
        &back.tcp(&seg(6001, 40_003, TCP_RST, 301, 0)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow(
        "after the remote's reset",
        tcp,
        (HOST, 40_003),
        (REMOTE, 6001),
        "close",
        UNVALIDATED,
        true,
    );
}

#[test]
fn simultaneous_open() {
    let ct = load(STATEFUL);
    let out = net(HOST, REMOTE);
    let back = out.reversed();
    let tcp = IPPROTO_TCP;
    let (h, r) = ((HOST, 40_002), (REMOTE, 6000));
    ct.egress(
        "SYN",
        &out.tcp(&seg(40_002, 6000, TCP_SYN, 100, 0)),
        Cls::New,
        INSERTED,
    );
    ct.ingress(
        "crossing SYN without ACK",
        &back.tcp(&seg(6000, 40_002, TCP_SYN, 300, 0)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow("after both SYNs", tcp, h, r, "syn-sent2", UNVALIDATED, true);
    ct.egress(
        "SYN-ACK from the host",
        &out.tcp(&seg(40_002, 6000, TCP_SYN | TCP_ACK, 100, 301)),
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow(
        "after the host's SYN-ACK",
        tcp,
        h,
        r,
        "syn-recv",
        UNVALIDATED,
        true,
    );
    ct.ingress(
        "SYN-ACK from the remote",
        &back.tcp(&seg(6000, 40_002, TCP_SYN | TCP_ACK, 300, 101)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.egress(
        "ACK",
        &out.tcp(&seg(40_002, 6000, TCP_ACK, 101, 301)),
        Cls::Est,
        PROMOTED,
    );
    ct.expect_flow("after the ACK", tcp, h, r, "established", VALIDATED, true);
    ct.ingress(
        "data",
        &back.tcp(&seg(6000, 40_002, TCP_ACK | TCP_PSH, 301, 101).payload(10)),
        Pass,
        Cls::Est,
        NOTHING,
    );
}

#[test]
fn invalid_flag_combinations_are_invalid() {
    let ct = load(
        r#"
[firewall]
default = "allow"

[[firewall.rule]]
name = "drop-invalid"
action = "drop"
state = ["invalid"]
"#,
    );
    let out = net(HOST, REMOTE);
    let back = out.reversed();
    let tcp = IPPROTO_TCP;
    let (h, r) = ((HOST, 40_005), (REMOTE, 80));
    let (hs, mut rs) = establish_out(&ct, &out, 40_005, 80);
    ct.expect_flow("established", tcp, h, r, "established", VALIDATED, true);

    for (name, flags) in [
        ("SYN+FIN", TCP_SYN | TCP_FIN),
        ("SYN+RST", TCP_SYN | TCP_RST),
        ("no flags", 0),
        ("FIN without ACK", TCP_FIN),
        ("SYN+FIN+ACK", TCP_SYN | TCP_FIN | TCP_ACK),
    ] {
        let before = ct.rule_packets(0);
        ct.ingress(
            name,
            &back.tcp(&seg(80, 40_005, flags, rs, hs)),
            DropRule,
            Cls::Inv,
            NOTHING,
        );
        assert_eq!(
            ct.rule_packets(0),
            before + 1,
            "drop-invalid rule hits for {name}"
        );
        ct.expect_flow(name, tcp, h, r, "established", VALIDATED, true);
        ct.ingress(
            &format!("in-window data after {name}"),
            &back.tcp(&seg(80, 40_005, TCP_ACK | TCP_PSH, rs, hs).payload(20)),
            Pass,
            Cls::Est,
            NOTHING,
        );
        rs += 20;
    }
    // Without any flow, a bad combination is invalid too (it can neither belong to a flow
    // nor open one) and creates nothing.
    ct.ingress(
        "SYN+FIN to an unknown flow",
        &back.tcp(&seg(80, 40_999, TCP_SYN | TCP_FIN, 1, 0)),
        DropRule,
        Cls::Inv,
        NOTHING,
    );
    ct.expect_no_flow("SYN+FIN to an unknown flow", tcp, (HOST, 40_999), r);
    assert_eq!(ct.all_flows().len(), 1, "{:#?}", ct.all_flows());
}

#[test]
fn udp_reply_validates_the_flow() {
    let ct = load(STATEFUL);
    let out = net(HOST, REMOTE);
    let back = out.reversed();
    let udp = IPPROTO_UDP;
    let (h, r) = ((HOST, 5353), (REMOTE, 53));

    ct.egress("query", &out.udp(5353, 53), Cls::New, INSERTED);
    let f = ct.expect_flow("after the query", udp, h, r, "unreplied", UNVALIDATED, true);
    assert_eq!((f.packets_orig, f.packets_reply), (1, 0), "{f:?}");

    ct.ingress("reply", &back.udp(53, 5353), Pass, Cls::Est, PROMOTED);
    let f = ct.expect_flow("after the reply", udp, h, r, "replied", VALIDATED, true);
    assert_eq!((f.packets_orig, f.packets_reply), (1, 1), "{f:?}");
    ct.ingress("second reply", &back.udp(53, 5353), Pass, Cls::Est, NOTHING);

    ct.ingress(
        "datagram from another port",
        &back.udp(54, 5353),
        DropDefault,
        Cls::New,
        NOTHING,
    );
    ct.ingress(
        "datagram from another host",
        &net("10.0.0.3", HOST).udp(53, 5353),
        DropDefault,
        Cls::New,
        NOTHING,
    );
    assert_eq!(
        ct.all_flows().len(),
        1,
        "dropped datagrams leave no entry: {:#?}",
        ct.all_flows()
    );
}

#[test]
fn icmp_echo_reply_needs_the_request() {
    let ct = load(STATEFUL);
    let out = net(HOST, REMOTE);
    let back = out.reversed();
    let icmp = IPPROTO_ICMP;
    let id = 0x1234;

    ct.egress("echo request", &out.echo(false, id, 1), Cls::New, INSERTED);
    ct.expect_flow(
        "after the request",
        icmp,
        (HOST, id),
        (REMOTE, id),
        "unreplied",
        UNVALIDATED,
        true,
    );
    ct.ingress(
        "echo reply",
        &back.echo(true, id, 1),
        Pass,
        Cls::Est,
        PROMOTED,
    );
    ct.expect_flow(
        "after the reply",
        icmp,
        (HOST, id),
        (REMOTE, id),
        "replied",
        VALIDATED,
        true,
    );

    ct.ingress(
        "echo reply with another id",
        &back.echo(true, 0x4321, 1),
        DropDefault,
        Cls::Inv,
        NOTHING,
    );
    ct.ingress(
        "echo reply from another host",
        &net("10.0.0.3", HOST).echo(true, id, 1),
        DropDefault,
        Cls::Inv,
        NOTHING,
    );
    ct.ingress(
        "unsolicited echo request",
        &back.echo(false, 0x5555, 1),
        DropDefault,
        Cls::New,
        NOTHING,
    );
    assert_eq!(ct.all_flows().len(), 1, "{:#?}", ct.all_flows());
}

#[test]
fn icmp_errors_about_tracked_flows_are_related() {
    let ct = load(STATEFUL);
    let out = net(HOST, REMOTE);
    let router = "10.0.0.254";
    let (hs, rs) = establish_out(&ct, &out, 40_003, 443);

    // The host's own packet, as the router would quote it.
    let sent = out.packet(
        IPPROTO_TCP,
        &out.tcp_bytes(&seg(40_003, 443, TCP_ACK, hs, rs).payload(1400)),
    );
    let frag_needed = |to: &str, quoted: &[u8]| {
        net(router, to).icmp(3, 4, [0, 0, 0x05, 0x78], &Ip::quote(quoted))
    };
    ct.ingress(
        "frag-needed quoting the flow",
        &frag_needed(HOST, &sent),
        Pass,
        Cls::Rel,
        NOTHING,
    );

    let unknown = out.packet(
        IPPROTO_TCP,
        &out.tcp_bytes(&seg(40_003, 444, TCP_ACK, hs, rs)),
    );
    ct.ingress(
        "frag-needed quoting an unknown flow",
        &frag_needed(HOST, &unknown),
        DropDefault,
        Cls::Inv,
        NOTHING,
    );
    // The quoted packet's sender must be the error's destination.
    let from_remote = out.reversed().packet(
        IPPROTO_TCP,
        &out.tcp_bytes(&seg(443, 40_003, TCP_ACK, rs, hs)),
    );
    ct.ingress(
        "frag-needed quoting the flow's reply direction",
        &frag_needed(HOST, &from_remote),
        DropDefault,
        Cls::Inv,
        NOTHING,
    );
    ct.ingress(
        "frag-needed quoting the flow, sent to another host",
        &frag_needed("10.0.0.3", &sent),
        DropDefault,
        Cls::Inv,
        NOTHING,
    );

    // IPv6: packet too big about a TCP flow.
    let out6 = net(HOST6, REMOTE6);
    let (hs6, rs6) = establish_out(&ct, &out6, 40_004, 443);
    ct.expect_flow(
        "IPv6 flow",
        IPPROTO_TCP,
        (HOST6, 40_004),
        (REMOTE6, 443),
        "established",
        VALIDATED,
        true,
    );
    let sent6 = out6.packet(
        IPPROTO_TCP,
        &out6.tcp_bytes(&seg(40_004, 443, TCP_ACK, hs6, rs6).payload(1400)),
    );
    let ptb = |quoted: &[u8]| {
        net("fd00::fe", HOST6).icmp(2, 0, 1280u32.to_be_bytes(), &Ip::quote(quoted))
    };
    ct.ingress(
        "packet too big quoting the flow",
        &ptb(&sent6),
        Pass,
        Cls::Rel,
        NOTHING,
    );
    let unknown6 = out6.packet(
        IPPROTO_TCP,
        &out6.tcp_bytes(&seg(40_004, 444, TCP_ACK, hs6, rs6)),
    );
    ct.ingress(
        "packet too big quoting an unknown flow",
        &ptb(&unknown6),
        DropDefault,
        Cls::Inv,
        NOTHING,
    );
    assert_eq!(
        ct.all_flows().len(),
        2,
        "errors create no entry: {:#?}",
        ct.all_flows()
    );
}

#[test]
fn vlan_and_ipv6_extension_headers_are_tracked() {
    let ct = load(STATEFUL);
    let tcp = IPPROTO_TCP;

    let tagged = net(HOST, REMOTE).vlan(100);
    ct.egress(
        "tagged SYN",
        &tagged.tcp(&seg(40_006, 80, TCP_SYN, 10, 0)),
        Cls::New,
        INSERTED,
    );
    ct.expect_flow(
        "tagged SYN",
        tcp,
        (HOST, 40_006),
        (REMOTE, 80),
        "syn-sent",
        UNVALIDATED,
        true,
    );
    ct.ingress(
        "tagged SYN-ACK",
        &tagged
            .reversed()
            .tcp(&seg(80, 40_006, TCP_SYN | TCP_ACK, 20, 11)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.egress(
        "tagged ACK",
        &tagged.tcp(&seg(40_006, 80, TCP_ACK, 11, 21)),
        Cls::Est,
        PROMOTED,
    );
    ct.expect_flow(
        "tagged ACK",
        tcp,
        (HOST, 40_006),
        (REMOTE, 80),
        "established",
        VALIDATED,
        true,
    );
    ct.ingress(
        "tagged data",
        &tagged
            .reversed()
            .tcp(&seg(80, 40_006, TCP_ACK, 21, 11).payload(30)),
        Pass,
        Cls::Est,
        NOTHING,
    );

    let hbh = net(HOST6, REMOTE6).hop_by_hop();
    ct.egress(
        "SYN with hop-by-hop",
        &hbh.tcp(&seg(40_007, 443, TCP_SYN, 10, 0)),
        Cls::New,
        INSERTED,
    );
    ct.expect_flow(
        "hop-by-hop SYN",
        tcp,
        (HOST6, 40_007),
        (REMOTE6, 443),
        "syn-sent",
        UNVALIDATED,
        true,
    );
    ct.ingress(
        "SYN-ACK with hop-by-hop",
        &hbh.reversed()
            .tcp(&seg(443, 40_007, TCP_SYN | TCP_ACK, 20, 11)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.egress(
        "ACK without extension header",
        &net(HOST6, REMOTE6).tcp(&seg(40_007, 443, TCP_ACK, 11, 21)),
        Cls::Est,
        PROMOTED,
    );
    ct.ingress(
        "data with hop-by-hop",
        &hbh.reversed()
            .tcp(&seg(443, 40_007, TCP_ACK, 21, 11).payload(30)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow(
        "hop-by-hop flow",
        tcp,
        (HOST6, 40_007),
        (REMOTE6, 443),
        "established",
        VALIDATED,
        true,
    );

    // A tagged IPv6 UDP flow with a hop-by-hop header both ways.
    let both = net(HOST6, REMOTE6).vlan(7).hop_by_hop();
    ct.egress("tagged IPv6 query", &both.udp(6000, 53), Cls::New, INSERTED);
    ct.ingress(
        "tagged IPv6 reply",
        &both.reversed().udp(53, 6000),
        Pass,
        Cls::Est,
        PROMOTED,
    );
    ct.expect_flow(
        "tagged IPv6 UDP",
        IPPROTO_UDP,
        (HOST6, 6000),
        (REMOTE6, 53),
        "replied",
        VALIDATED,
        true,
    );
    assert_eq!(ct.all_flows().len(), 3, "{:#?}", ct.all_flows());
}

#[test]
fn expired_entries_are_swept_and_replies_then_dropped() {
    let ct = load(&format!("{STATEFUL}\n[conntrack]\nudp = 1\n"));
    let out = net(HOST, REMOTE);
    let back = out.reversed();
    let udp = IPPROTO_UDP;
    ct.egress("query A", &out.udp(7001, 53), Cls::New, INSERTED);
    ct.egress("query B", &out.udp(7002, 53), Cls::New, INSERTED);
    ct.egress("query C", &out.udp(7003, 53), Cls::New, INSERTED);
    ct.ingress("reply to C", &back.udp(53, 7003), Pass, Cls::Est, PROMOTED);

    let prog = sweep_program(&ct.bench.ebpf).expect("sweep program");
    let req = SweepRequest {
        op: SWEEP_EXPIRE,
        ..SweepRequest::default()
    };
    let before = census(&ct.bench.ebpf).expect("census");
    let c = sweep(prog, &ct.bench.ebpf, &req).expect("sweep");
    assert_eq!(c.expired, before.expired, "nothing expires at once: {c:?}");
    assert_eq!(ct.all_flows().len(), 3, "{:#?}", ct.all_flows());

    std::thread::sleep(Duration::from_millis(2200));

    // B's reply finds its entry expired: the entry goes, and the reply is a new flow that
    // no rule allows.
    ct.ingress(
        "reply to B after expiry",
        &back.udp(53, 7002),
        DropDefault,
        Cls::New,
        &[(CS_EXPIRED_LOOKUP_NEW, 1)],
    );
    ct.expect_no_flow("B after its reply", udp, (HOST, 7002), (REMOTE, 53));

    let c = sweep(prog, &ct.bench.ebpf, &req).expect("sweep");
    assert_eq!(
        (
            c.expired[TABLE_NEW] - before.expired[TABLE_NEW],
            c.expired[TABLE_EST] - before.expired[TABLE_EST]
        ),
        (1, 0),
        "the sweep removes A only (C was replied, with a longer timeout): {c:?}"
    );
    ct.expect_no_flow("A after the sweep", udp, (HOST, 7001), (REMOTE, 53));
    ct.expect_flow(
        "C after the sweep",
        udp,
        (HOST, 7003),
        (REMOTE, 53),
        "replied",
        VALIDATED,
        true,
    );
    assert_eq!(ct.all_flows().len(), 1, "{:#?}", ct.all_flows());

    ct.ingress(
        "reply to A after expiry",
        &back.udp(53, 7001),
        DropDefault,
        Cls::New,
        NOTHING,
    );
    ct.ingress(
        "reply to C, still tracked",
        &back.udp(53, 7003),
        Pass,
        Cls::Est,
        NOTHING,
    );
}

/// Each CPU keeps the coarse clock's value for the tick it read it in: the entries' stamps
/// must still follow the clock (never ahead of it, never more than the allowed lag behind,
/// and moving on as time does).
#[test]
fn stamps_follow_the_coarse_clock() {
    let ct = load(STATEFUL);
    let out = net(HOST, REMOTE);
    let back = out.reversed();
    ct.egress("query", &out.udp(7100, 53), Cls::New, INSERTED);
    ct.ingress("reply", &back.udp(53, 7100), Pass, Cls::Est, PROMOTED);
    let stamp = || {
        let mut last = Vec::new();
        walk(&ct.bench.ebpf, |_, e, _| last.push(e.last_ns)).expect("walking the tables");
        assert_eq!(last.len(), 1, "one flow: {last:?}");
        last[0]
    };
    let mut first = None;
    let mut stamps = Vec::new();
    for i in 0..25 {
        let before = now_ns();
        ct.ingress(
            "another reply",
            &back.udp(53, 7100),
            Pass,
            Cls::Est,
            NOTHING,
        );
        let after = now_ns();
        let t = stamp();
        assert!(
            t <= after && t + STAMP_LAG_NS >= before,
            "reply {i}: stamped {t}, the clock read {before} before and {after} after"
        );
        first.get_or_insert(before);
        stamps.push(t);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (first, last) = (first.unwrap_or_default(), stamps[stamps.len() - 1]);
    assert!(
        last >= first + 400_000_000,
        "the stamps moved {} ms in about 500 ms: {stamps:?}",
        last.saturating_sub(first) / 1_000_000
    );
}

#[test]
fn state_rules_without_stateful_behave_alike() {
    let ct = load(STATE_RULES);
    assert!(!ct.stateful);
    outbound_handshake(&ct, 40_010);
    inbound_ssh(&ct, 50_010);
    // "replies" let through every established packet arriving from outside; "ssh-new" the
    // SYN and its first retransmission.
    assert_eq!(ct.rule_packets(1), 2, "packets the ssh-new rule passed");
    assert_eq!(
        ct.rule_packets(0),
        3 + 3,
        "packets the replies rule passed (SYN-ACK, data, RST; late SYN, ACK, data)"
    );
}

#[test]
fn dropped_packets_create_no_entry() {
    let ct = load(STATEFUL);
    ct.ingress(
        "SYN to a port no rule allows",
        &net(REMOTE, HOST).tcp(&seg(1234, 23, TCP_SYN, 1, 0)),
        DropDefault,
        Cls::New,
        NOTHING,
    );
    assert_eq!(ct.all_flows(), vec![], "a dropped SYN leaves no entry");
    // The same SYN to the allowed port does create one (the check above can fail).
    ct.ingress(
        "SYN to port 22",
        &net(REMOTE, HOST).tcp(&seg(1234, 22, TCP_SYN, 1, 0)),
        Pass,
        Cls::New,
        INSERTED,
    );
    assert_eq!(ct.all_flows().len(), 1, "{:#?}", ct.all_flows());
}

#[test]
fn later_fragments_are_untracked_and_follow_the_rules() {
    let ct = load(
        r#"
[firewall]
default = "drop"
stateful = true

[[firewall.rule]]
name = "ssh-in"
action = "allow"
proto = "tcp"
dport = 22

[[firewall.rule]]
name = "peer-9"
action = "allow"
src = "10.0.0.9"

[[firewall.rule]]
name = "peer-8-any-state"
action = "allow"
src = "10.0.0.8"
state = ["new", "established", "related", "invalid"]
"#,
    );
    let out = net(HOST, REMOTE);
    establish_out(&ct, &out, 40_011, 80);
    let body = [0x42u8; 64];
    ct.ingress(
        "later fragment of an established flow",
        &out.reversed()
            .fragment(100, false)
            .frame(IPPROTO_TCP, &body),
        DropDefault,
        Cls::Untracked,
        NOTHING,
    );
    ct.ingress(
        "later fragment matching an address rule",
        &net("10.0.0.9", HOST)
            .fragment(100, true)
            .frame(IPPROTO_TCP, &body),
        Pass,
        Cls::Untracked,
        NOTHING,
    );
    assert_eq!(ct.rule_packets(1), 1, "peer-9 passed the fragment");
    ct.ingress(
        "later fragment against a rule with a state",
        &net("10.0.0.8", HOST)
            .fragment(100, false)
            .frame(IPPROTO_UDP, &body),
        DropDefault,
        Cls::Untracked,
        NOTHING,
    );
    assert_eq!(
        ct.rule_packets(2),
        0,
        "a rule with `state` never matches an untracked packet"
    );
    // A first fragment is tracked like any packet.
    ct.ingress(
        "first fragment of the reply",
        &out.reversed()
            .fragment(0, true)
            .tcp(&seg(80, 40_011, TCP_ACK, 80_001, 40_001).payload(16)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    assert_eq!(ct.all_flows().len(), 1, "{:#?}", ct.all_flows());
}

#[test]
fn default_policy_tracks_but_never_drops() {
    let policy = config::default_policy();
    let ct = load_policy(&policy);
    let out = net(HOST, REMOTE);
    ct.egress(
        "SYN",
        &out.tcp(&seg(40_020, 443, TCP_SYN, 1, 0)),
        Cls::New,
        INSERTED,
    );
    ct.expect_flow(
        "after SYN",
        IPPROTO_TCP,
        (HOST, 40_020),
        (REMOTE, 443),
        "syn-sent",
        UNVALIDATED,
        true,
    );
    ct.ingress(
        "unsolicited ACK",
        &net("10.0.0.3", HOST).tcp(&seg(5555, 8080, TCP_ACK, 1, 1)),
        Pass,
        Cls::Inv,
        NOTHING,
    );
    ct.ingress(
        "RST acknowledging nothing the host sent",
        &out.reversed()
            .tcp(&seg(443, 40_020, TCP_RST | TCP_ACK, 0x8000_0000, 77)),
        Pass,
        Cls::Inv,
        NOTHING,
    );
    ct.ingress(
        "SYN-ACK",
        &out.reversed()
            .tcp(&seg(443, 40_020, TCP_SYN | TCP_ACK, 9, 2)),
        Pass,
        Cls::Est,
        NOTHING,
    );
    ct.expect_flow(
        "after SYN-ACK",
        IPPROTO_TCP,
        (HOST, 40_020),
        (REMOTE, 443),
        "syn-recv",
        UNVALIDATED,
        true,
    );
    // A new flow from outside passes the default and is tracked once passed.
    ct.ingress(
        "SYN from outside",
        &net("10.0.0.3", HOST).tcp(&seg(5556, 8080, TCP_SYN, 1, 0)),
        Pass,
        Cls::New,
        INSERTED,
    );
    assert_eq!(ct.all_flows().len(), 2, "{:#?}", ct.all_flows());
}
