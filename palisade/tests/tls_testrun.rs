//! The `[tls]` gate in the kernel, through `BPF_PROG_TEST_RUN` on its TC programs, with the
//! daemon's side played by the library's own pieces: a client's SYN opens a pending flow,
//! its ClientHello segments pass and reach `TLS_SEGMENTS`, the server's data is held back
//! until the verdict, the records read back give the hello (in one or several segments,
//! IPv4 and IPv6), the verdict written into `TLS_FLOWS` is enforced both ways (resets still
//! pass), UDP to the port is dropped as QUIC, and packets of other ports are not touched.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test tls_testrun`.

use std::path::Path;
use std::time::Instant;

use aya::maps::{MapData, RingBuf};
use palisade::{
    craft::{ClientHelloSpec, Frame, ip},
    policy::config,
    testrun::Bench,
    tls::{
        self,
        decide::TlsPolicy,
        flows::{Flows, Step},
    },
};
use palisade_common::{
    reason, stats,
    tls::gate::{FLOW_PENDING, GateKey, TS_RECORDS, TS_SERVER_HELD},
};

const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const RST: u8 = 0x04;

const POLICY: &str = "[tls]\nmode = \"blocklist\"\nblock = [\"*.blocked.example\"]\n";

struct Gate {
    bench: Bench,
    segments: RingBuf<MapData>,
    policy: TlsPolicy,
}

fn gate(text: &str) -> Gate {
    let mut bench = Bench::new().expect("load");
    let p = config::parse_policy(text, "p.toml", Path::new(".")).expect("policy");
    bench.install(&p).expect("install");
    let segments =
        RingBuf::try_from(bench.ebpf.take_map("TLS_SEGMENTS").expect("map")).expect("ring buffer");
    Gate {
        bench,
        segments,
        policy: TlsPolicy::new(&p.tls, &p.dns.lists),
    }
}

impl Gate {
    fn ingress(&self, frame: &[u8]) -> i32 {
        self.bench.run_tc(tls::INGRESS, frame).expect("run").0
    }
    fn egress(&self, frame: &[u8]) -> i32 {
        self.bench.run_tc(tls::EGRESS, frame).expect("run").0
    }
    fn counter(&self, i: u32) -> u64 {
        tls::counters(&self.bench.ebpf).expect("counters")[i as usize]
    }
    /// Feeds every record waiting on `TLS_SEGMENTS` to `flows`, as the daemon does, and
    /// writes the verdicts into the gate; returns the decisions.
    fn daemon(&mut self, flows: &mut Flows<GateKey>) -> Vec<palisade::tls::decide::Decision> {
        let mut decided = Vec::new();
        let mut records = Vec::new();
        while let Some(item) = self.segments.next() {
            records.push(tls::segment_record(&item).expect("a segment record"));
        }
        for r in records {
            let data = &r.data[..r.len as usize];
            if let Step::Decided(d) =
                flows.segment(&self.policy, &r.key, r.base, r.seq, data, Instant::now())
            {
                let blocked = d.blocks(&self.policy).then_some(d.reason);
                tls::set_verdict(&mut self.bench.ebpf, &r.key, r.base, blocked).expect("verdict");
                decided.push(d);
            }
        }
        decided
    }
}

fn key(client: &str, server: &str, cport: u16) -> GateKey {
    let mapped = |s: &str| match ip(s) {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(a) => a.octets(),
    };
    GateKey {
        client: mapped(client),
        server: mapped(server),
        client_port: cport,
        server_port: 443,
        _pad: 0,
    }
}

/// One client connection: SYN, then the hello in `segment`-byte segments, with the daemon
/// reading the records every 256 segments as it reads them while they arrive; returns the
/// frames' verdicts and the decisions.
fn open(
    g: &mut Gate,
    flows: &mut Flows<GateKey>,
    (client, server, cport): (&str, &str, u16),
    sni: &str,
    segment: usize,
) -> (Vec<i32>, Vec<palisade::tls::decide::Decision>) {
    let isn = 0xffff_ff00u32;
    let syn = Frame::tcp(client, server, cport, 443, SYN)
        .with_tcp_seq(isn)
        .build();
    let mut verdicts = vec![g.ingress(&syn)];
    let mut decided = Vec::new();
    let stream = ClientHelloSpec::modern(sni).records(16_384);
    for (k, chunk) in stream.chunks(segment).enumerate() {
        let seq = isn.wrapping_add(1).wrapping_add((k * segment) as u32);
        let f = Frame::tcp(client, server, cport, 443, PSH_ACK)
            .with_tcp_seq(seq)
            .with_payload(chunk)
            .build();
        verdicts.push(g.ingress(&f));
        if k % 256 == 255 {
            decided.extend(g.daemon(flows));
        }
    }
    (verdicts, decided)
}

fn server_data(server: &str, client: &str, cport: u16) -> Vec<u8> {
    Frame::tcp(server, client, 443, cport, PSH_ACK)
        .with_payload(&[0x16, 3, 3, 0, 4, 2, 0, 0, 0])
        .build()
}

#[test]
fn blocked_name_gets_no_server_data() {
    let mut g = gate(POLICY);
    let mut flows = Flows::new();
    let (c, s) = ("10.1.0.2", "10.2.0.2");
    // Two segments: the post-quantum hello does not fit one.
    let (v, early) = open(
        &mut g,
        &mut flows,
        (c, s, 40_000),
        "www.blocked.example",
        1400,
    );
    assert!(early.is_empty());
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|&x| x == TC_ACT_UNSPEC), "{v:?}");
    let k = key(c, s, 40_000);
    let flow = tls::gate_flow(&g.bench.ebpf, &k)
        .unwrap()
        .expect("pending entry");
    assert_eq!((flow.state, flow.base), (FLOW_PENDING, 0xffff_ff01));
    // Before the verdict: the server's SYN-ACK and pure ACKs pass, its data does not.
    assert_eq!(
        g.egress(&Frame::tcp(s, c, 443, 40_000, SYN | ACK).build()),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        g.egress(&Frame::tcp(s, c, 443, 40_000, ACK).build()),
        TC_ACT_UNSPEC
    );
    assert_eq!(g.egress(&server_data(s, c, 40_000)), TC_ACT_SHOT);
    assert_eq!(g.counter(TS_SERVER_HELD), 1);
    assert_eq!(
        g.counter(TS_RECORDS),
        3,
        "1400 bytes are 2 records, the rest 1"
    );
    let decided = g.daemon(&mut flows);
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].reason, reason::TLS_SNI_BLOCKED);
    assert_eq!(decided[0].sni, "www.blocked.example");
    assert_eq!(decided[0].alpn, "h2");
    // Blocked: server data and client data dropped both ways, resets pass.
    let before = g.bench.reason_count(reason::TLS_SNI_BLOCKED).unwrap();
    let dropped_before = g.bench.stat(stats::DROPPED).unwrap();
    assert_eq!(g.egress(&server_data(s, c, 40_000)), TC_ACT_SHOT);
    assert_eq!(g.ingress(&server_data(s, c, 40_000)), TC_ACT_SHOT);
    let more = Frame::tcp(c, s, 40_000, 443, PSH_ACK)
        .with_payload(b"GET /")
        .build();
    assert_eq!(g.ingress(&more), TC_ACT_SHOT);
    assert_eq!(
        g.bench.reason_count(reason::TLS_SNI_BLOCKED).unwrap(),
        before + 3
    );
    assert_eq!(
        g.bench.stat(stats::DROPPED).unwrap() - dropped_before,
        3,
        "the gate's drops count with every other drop"
    );
    assert_eq!(
        g.ingress(&Frame::tcp(c, s, 40_000, 443, RST).build()),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        g.egress(&Frame::tcp(s, c, 443, 40_000, RST | ACK).build()),
        TC_ACT_UNSPEC
    );
}

#[test]
fn allowed_name_connects_and_other_ports_are_untouched() {
    let mut g = gate(POLICY);
    let mut flows = Flows::new();
    for (c, s, cport) in [
        ("10.1.0.2", "10.2.0.2", 40_001),
        ("fd00::2", "fd01::2", 40_002),
    ] {
        // One byte per segment: the hello is whole only with the last one.
        let (v, early) = open(&mut g, &mut flows, (c, s, cport), "www.example.org", 1);
        assert!(early.is_empty());
        assert!(v.iter().all(|&x| x == TC_ACT_UNSPEC));
        assert_eq!(
            g.egress(&server_data(s, c, cport)),
            TC_ACT_SHOT,
            "held before the verdict"
        );
        let decided = g.daemon(&mut flows);
        assert_eq!(decided.len(), 1, "{c}");
        assert_eq!(decided[0].reason, reason::PASS);
        assert_eq!(g.egress(&server_data(s, c, cport)), TC_ACT_UNSPEC, "{c}");
        assert_eq!(g.ingress(&server_data(s, c, cport)), TC_ACT_UNSPEC, "{c}");
    }
    // Another port: no entry, no record, no counter.
    let records = g.counter(TS_RECORDS);
    let f = Frame::tcp("10.1.0.2", "10.2.0.2", 40_003, 8443, PSH_ACK)
        .with_payload(&ClientHelloSpec::modern("www.blocked.example").records(16_384)[..600])
        .build();
    assert_eq!(g.ingress(&f), TC_ACT_UNSPEC);
    assert_eq!(g.counter(TS_RECORDS), records);
    // A flow whose SYN the gate never saw passes (it predates the policy).
    assert_eq!(
        g.egress(&server_data("10.2.0.9", "10.1.0.9", 40_004)),
        TC_ACT_UNSPEC
    );
}

#[test]
fn quic_is_dropped_unless_allowed() {
    let g = gate(POLICY);
    let quic = Frame::udp("10.1.0.2", "10.2.0.2", 50_000, 443)
        .with_payload(&[0xc0; 1200])
        .build();
    assert_eq!(g.ingress(&quic), TC_ACT_SHOT);
    assert_eq!(g.bench.reason_count(reason::TLS_QUIC).unwrap(), 1);
    let dns = Frame::udp("10.1.0.2", "10.2.0.2", 50_000, 53)
        .with_payload(&[0; 30])
        .build();
    assert_eq!(g.ingress(&dns), TC_ACT_UNSPEC);
    let g = gate("[tls]\nmode = \"blocklist\"\nquic = \"allow\"\n");
    assert_eq!(g.ingress(&quic), TC_ACT_UNSPEC);
    // No [tls]: the gate does nothing at all.
    let mut g = gate("");
    assert_eq!(g.ingress(&quic), TC_ACT_UNSPEC);
    let mut flows = Flows::new();
    let flow = ("10.1.0.2", "10.2.0.2", 40_010);
    let (v, _) = open(&mut g, &mut flows, flow, "www.blocked.example", 1400);
    assert!(v.iter().all(|&x| x == TC_ACT_UNSPEC));
    assert!(g.daemon(&mut flows).is_empty());
    assert_eq!(g.counter(TS_RECORDS), 0);
}

/// The monotonic clock (the kernel's `bpf_ktime_get_ns`) in the gate's units.
fn now_units() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) },
        0
    );
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    (ns >> palisade_common::tls::gate::SINCE_SHIFT) as u32
}

/// A flow the daemon never decided (stopped, or its records lost): past about 3 s the gate
/// decides alone, refusing it under `malformed = "block"` and letting it through otherwise.
#[test]
fn stale_pending_flows_are_decided_by_the_gate() {
    use palisade_common::tls::gate::{GateFlow, PENDING_LIMIT, TS_STALE};
    for (policy, want) in [
        (POLICY, TC_ACT_SHOT),
        (
            "[tls]\nmode = \"blocklist\"\nmalformed = \"allow\"\n",
            TC_ACT_UNSPEC,
        ),
    ] {
        let mut g = gate(policy);
        let (c, s) = ("10.1.0.2", "10.2.0.2");
        let syn = Frame::tcp(c, s, 40_020, 443, SYN).build();
        assert_eq!(g.ingress(&syn), TC_ACT_UNSPEC);
        // Fresh: held.
        assert_eq!(g.egress(&server_data(s, c, 40_020)), TC_ACT_SHOT);
        assert_eq!(g.counter(TS_STALE), 0);
        let k = key(c, s, 40_020);
        let mut m: aya::maps::HashMap<&mut MapData, GateKey, GateFlow> =
            aya::maps::HashMap::try_from(g.bench.ebpf.map_mut("TLS_FLOWS").unwrap()).unwrap();
        let mut flow = m.get(&k, 0).unwrap();
        flow.since = now_units().wrapping_sub(PENDING_LIMIT + 100);
        m.insert(k, flow, 0).unwrap();
        assert_eq!(g.egress(&server_data(s, c, 40_020)), want, "{policy}");
        assert_eq!(g.counter(TS_STALE), 1);
    }
}

/// VLAN tags (one and two) and an IPv6 hop-by-hop header in front of the TCP header: the
/// gate finds the flow and the hello all the same.
#[test]
fn vlans_and_ipv6_extension_headers() {
    use palisade::craft::ExtHeader;
    let mut g = gate(POLICY);
    let mut flows = Flows::new();
    let shape = |f: Frame, n: u16| -> Frame {
        match n {
            0 => f.with_vlans(&[100], false),
            1 => f.with_vlans(&[100, 200], true),
            _ => {
                let mut f = f;
                f.ipv6_ext = vec![ExtHeader::Options { kind: 0, len8: 0 }];
                f
            }
        }
    };
    for (n, (c, s)) in [
        ("10.1.0.2", "10.2.0.2"),
        ("10.1.0.3", "10.2.0.2"),
        ("fd00::2", "fd01::2"),
    ]
    .into_iter()
    .enumerate()
    {
        let n = n as u16;
        let cport = 41_000 + n;
        let isn = 7_000u32;
        let syn = shape(Frame::tcp(c, s, cport, 443, SYN).with_tcp_seq(isn), n).build();
        assert_eq!(g.ingress(&syn), TC_ACT_UNSPEC);
        let stream = ClientHelloSpec::modern("x.blocked.example").records(16_384);
        for (k, chunk) in stream.chunks(1000).enumerate() {
            let f = Frame::tcp(c, s, cport, 443, PSH_ACK)
                .with_tcp_seq(isn + 1 + (k * 1000) as u32)
                .with_payload(chunk);
            assert_eq!(g.ingress(&shape(f, n).build()), TC_ACT_UNSPEC);
        }
        let decided = g.daemon(&mut flows);
        assert_eq!(decided.len(), 1, "shape {n}");
        assert_eq!(decided[0].reason, reason::TLS_SNI_BLOCKED);
        let data = shape(
            Frame::tcp(s, c, 443, cport, PSH_ACK).with_payload(&[0x17, 3, 3, 0, 1, 0]),
            n,
        );
        assert_eq!(g.egress(&data.build()), TC_ACT_SHOT, "shape {n}");
    }
}

/// A refused flow's later packets are dropped by the XDP firewall already, before TC: with
/// reason and counter; resets and new SYNs go on.
#[test]
fn refused_flows_are_dropped_in_xdp() {
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    let mut g = gate(POLICY);
    let mut flows = Flows::new();
    let (c, s) = ("10.1.0.2", "10.2.0.2");
    let (_, _) = open(
        &mut g,
        &mut flows,
        (c, s, 40_030),
        "a.blocked.example",
        1400,
    );
    assert_eq!(g.daemon(&mut flows)[0].reason, reason::TLS_SNI_BLOCKED);
    let before = g.bench.reason_count(reason::TLS_SNI_BLOCKED).unwrap();
    let more = Frame::tcp(c, s, 40_030, 443, PSH_ACK)
        .with_payload(b"GET /")
        .build();
    assert_eq!(g.bench.run(&more).unwrap(), XDP_DROP);
    // The server's side, when the guarded host routes: dropped on arrival too.
    assert_eq!(g.bench.run(&server_data(s, c, 40_030)).unwrap(), XDP_DROP);
    assert_eq!(
        g.bench.reason_count(reason::TLS_SNI_BLOCKED).unwrap(),
        before + 2
    );
    let rst = Frame::tcp(c, s, 40_030, 443, RST).build();
    assert_eq!(g.bench.run(&rst).unwrap(), XDP_PASS);
    let syn = Frame::tcp(c, s, 40_030, 443, SYN).build();
    assert_eq!(g.bench.run(&syn).unwrap(), XDP_PASS);
    // An allowed flow and other ports are not touched.
    let (_, _) = open(&mut g, &mut flows, (c, s, 40_031), "www.example.org", 1400);
    assert_eq!(g.daemon(&mut flows)[0].reason, reason::PASS);
    assert_eq!(g.bench.run(&server_data(s, c, 40_031)).unwrap(), XDP_PASS);
    let other = Frame::tcp(c, s, 40_032, 80, PSH_ACK)
        .with_payload(b"x")
        .build();
    assert_eq!(g.bench.run(&other).unwrap(), XDP_PASS);
}

/// A flow whose pending entry is gone before its hello (evicted by a flood of SYNs to the
/// watched ports, or its SYN missed) is held again from the segment that begins its
/// ClientHello: evicting one's own entry does not let a blocked name through. Data of an
/// unknown flow that begins no hello (a connection older than the policy) still passes.
#[test]
fn a_flow_evicted_before_its_hello_is_held_again() {
    use palisade_common::tls::gate::{GateFlow, TS_ADOPTED, TS_UNTRACKED};
    let mut g = gate(POLICY);
    let mut flows = Flows::new();
    let (c, s, cport) = ("10.1.0.2", "10.2.0.2", 40_030);
    let isn = 0x1000_0000u32;
    let syn = Frame::tcp(c, s, cport, 443, SYN).with_tcp_seq(isn).build();
    assert_eq!(g.ingress(&syn), TC_ACT_UNSPEC);
    let k = key(c, s, cport);
    {
        let mut m: aya::maps::HashMap<&mut MapData, GateKey, GateFlow> =
            aya::maps::HashMap::try_from(g.bench.ebpf.map_mut("TLS_FLOWS").unwrap()).unwrap();
        m.remove(&k).expect("the pending entry");
    }
    // Application data of an unknown flow: not a hello, let through untracked.
    let old = Frame::tcp(c, s, cport, 443, PSH_ACK)
        .with_tcp_seq(isn.wrapping_add(1))
        .with_payload(&[23, 3, 3, 0, 4, 1, 0, 0, 0])
        .build();
    assert_eq!(g.ingress(&old), TC_ACT_UNSPEC);
    assert_eq!((g.counter(TS_ADOPTED), g.counter(TS_UNTRACKED)), (0, 1));
    assert!(tls::gate_flow(&g.bench.ebpf, &k).unwrap().is_none());
    // The hello, in two segments: the first begins it and is adopted.
    let stream = ClientHelloSpec::modern("www.blocked.example").records(16_384);
    for (i, chunk) in stream.chunks(1400).enumerate() {
        let f = Frame::tcp(c, s, cport, 443, PSH_ACK)
            .with_tcp_seq(isn.wrapping_add(1).wrapping_add((i * 1400) as u32))
            .with_payload(chunk)
            .build();
        assert_eq!(g.ingress(&f), TC_ACT_UNSPEC);
    }
    assert_eq!(g.counter(TS_ADOPTED), 1);
    let flow = tls::gate_flow(&g.bench.ebpf, &k)
        .unwrap()
        .expect("adopted entry");
    assert_eq!((flow.state, flow.base), (FLOW_PENDING, isn.wrapping_add(1)));
    // Held again: the server's data waits for the verdict.
    assert_eq!(g.egress(&server_data(s, c, cport)), TC_ACT_SHOT);
    let decided = g.daemon(&mut flows);
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].reason, reason::TLS_SNI_BLOCKED);
    assert_eq!(g.egress(&server_data(s, c, cport)), TC_ACT_SHOT);
    assert_eq!(g.ingress(&old), TC_ACT_SHOT);
}

#[test]
fn a_decided_flow_with_a_tagged_server_says_so_in_its_event() {
    use aya::maps::HashMap;
    let mut g = gate(POLICY);
    let (c, s) = ("10.1.0.2", "10.2.0.9");
    // The server's address as a tag feed leaves it (`intel_testrun` covers the tagging).
    {
        let mut tagged: HashMap<&mut MapData, [u8; 16], [u8; 16]> =
            HashMap::try_from(palisade::maps::map_mut(&mut g.bench.ebpf, "INTEL_TAGGED").unwrap())
                .unwrap();
        let mut value = [0u8; 16];
        value[0] = palisade_common::intel::ACTION_TAG;
        tagged.insert(key(c, s, 0).server, value, 0).unwrap();
    }
    let mut keeper = palisade::tls::runtime::Gatekeeper::new(g.policy.clone());
    let mut events = Vec::new();
    for (server, cport) in [(s, 41_000), ("10.2.0.10", 41_001)] {
        let mut flows = Flows::new();
        let (v, _) = open(
            &mut g,
            &mut flows,
            (c, server, cport),
            "www.ok.example",
            1400,
        );
        assert!(v.iter().all(|&x| x == TC_ACT_UNSPEC), "{v:?}");
        while let Some(item) = g.segments.next() {
            let raw = item.to_vec();
            drop(item);
            events.extend(keeper.record(&mut g.bench.ebpf, &raw, Instant::now()));
        }
    }
    let seen: Vec<(String, &str, bool)> = events
        .iter()
        .map(|e| (e.server.clone(), e.verdict, e.intel_tagged))
        .collect();
    assert_eq!(
        seen,
        [
            (s.to_string(), "pass", true),
            ("10.2.0.10".to_string(), "pass", false)
        ]
    );
    assert!(
        events[0].to_string().ends_with(" intel=tagged"),
        "{}",
        events[0]
    );
    assert!(!events[1].to_string().contains("intel="), "{}", events[1]);
}
