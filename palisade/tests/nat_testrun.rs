//! NAT (`[nat]`) in the kernel, through `BPF_PROG_TEST_RUN` on the TC programs: every
//! rewrite checked byte by byte against a frame built with the expected fields and its
//! checksums computed from scratch: masquerade out and back for TCP, UDP (also with a zero
//! UDP checksum) and ICMP echo on IPv4 and IPv6, port forwards in and out, ICMP errors with
//! their quoted packet translated both ways (time exceeded quoting UDP and echo, port
//! unreachable, packet too big); port exhaustion drops with its reason and counter, ports
//! of local sockets and of port forwards are never handed out, and the sweep removes a
//! mapping together with its flow's tracker entry.
//!
//! The test runs see the loopback device (ifindex 1) as the packet's interface, so the
//! policies name `lo` as the outside interface.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test nat_testrun`.

use std::{
    collections::HashSet,
    net::{IpAddr, TcpListener, UdpSocket},
    path::Path,
};

use palisade::{
    conntrack::table::{sweep, sweep_program},
    craft::{Frame, L4, checksum, ip},
    nat,
    policy::config,
    testrun::Bench,
};
use palisade_common::{
    conntrack::{SWEEP_EXPIRE, SWEEP_FLUSH, SweepRequest, bytes_to_words},
    nat::{
        NS_DNAT_NEW, NS_EGRESS, NS_EXHAUSTED, NS_FORWARD_PORT, NS_ICMP_ERRORS, NS_INGRESS,
        NS_LOCAL_SOCKET, NS_SNAT_NEW, NS_SWEPT,
    },
    packet::v4_mapped,
    reason,
};

const CONTINUE: i32 = -1;
const SHOT: i32 = 2;
const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;

const EXT4: &str = "198.51.100.1";
const EXT6: &str = "2001:db8:100::1";
const REMOTE4: &str = "203.0.113.9";
const REMOTE6: &str = "2001:db8:9::9";

fn policy(ports: &str, extra: &str) -> palisade::policy::model::Policy {
    let text = format!(
        r#"
[nat]
out = "lo"
masquerade = ["10.1.0.0/16", "fd01::/64"]
address_v4 = "{EXT4}"
address_v6 = "{EXT6}"
ports = {ports}
{extra}
"#
    );
    config::parse_policy(&text, "nat.toml", Path::new(".")).expect("policy parses")
}

fn bench(ports: &str, extra: &str) -> Bench {
    let mut b = Bench::new().expect("load (needs root)");
    b.install(&policy(ports, extra)).expect("install");
    b
}

fn counter(b: &Bench, i: u32) -> u64 {
    nat::counters(&b.ebpf).expect("counters")[i as usize]
}

fn egress(b: &Bench, frame: &[u8]) -> (i32, Vec<u8>) {
    b.run_tc(nat::EGRESS, frame).expect("egress run")
}

fn ingress(b: &Bench, frame: &[u8]) -> (i32, Vec<u8>) {
    b.run_tc(nat::INGRESS, frame).expect("ingress run")
}

/// The external port the mapping of a flow to `remote:rport` got (its `NAT_INGRESS` key),
/// found by the inside endpoint.
fn mapped_port(b: &Bench, inside: &str, iport: u16) -> u16 {
    let want = stored(inside);
    let all = nat::mappings(&b.ebpf).expect("mappings");
    let hits: Vec<_> = all
        .iter()
        .filter(|(_, e)| e.addr == want && e.port == iport)
        .collect();
    assert_eq!(hits.len(), 1, "one mapping for {inside}:{iport}: {all:?}");
    hits[0].0.dport
}

fn stored(a: &str) -> [u32; 4] {
    match ip(a) {
        IpAddr::V4(a) => bytes_to_words(&v4_mapped(a.octets())),
        IpAddr::V6(a) => bytes_to_words(&a.octets()),
    }
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    Frame::tcp(src, dst, sport, dport, flags)
        .with_payload(b"nat test payload")
        .build()
}

fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    Frame::udp(src, dst, sport, dport)
        .with_payload(b"datagram through the nat")
        .build()
}

/// Where layer 4 starts in a crafted frame (no VLAN, no options).
fn l4_at(frame: &[u8]) -> usize {
    if frame[14] >> 4 == 4 { 34 } else { 54 }
}

/// An ICMP or ICMPv6 message with the 4 bytes after its checksum (`rest`: echo id and
/// sequence, MTU, or zero) and `body`, checksummed from scratch.
fn icmp(src: &str, dst: &str, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut f = Frame::new(
        ip(src),
        ip(dst),
        L4::Icmp {
            icmp_type: ty,
            code,
        },
    )
    .with_payload(body)
    .build();
    let at = l4_at(&f);
    f[at + 4..at + 8].copy_from_slice(&rest);
    f[at + 2..at + 4].copy_from_slice(&[0, 0]);
    let pseudo = if f[14] >> 4 == 6 {
        let mut s = 0u32;
        for c in f[22..54].chunks(2) {
            s += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        s + (f.len() - at) as u32 + 58
    } else {
        0
    };
    let sum = checksum(&f[at..], pseudo);
    f[at + 2..at + 4].copy_from_slice(&sum.to_be_bytes());
    f
}

fn echo(src: &str, dst: &str, request: bool, id: u16) -> Vec<u8> {
    let ty = match (ip(src).is_ipv4(), request) {
        (true, true) => 8,
        (true, false) => 0,
        (false, true) => 128,
        (false, false) => 129,
    };
    let i = id.to_be_bytes();
    icmp(
        src,
        dst,
        ty,
        0,
        [i[0], i[1], 0, 7],
        b"ping payload 0123456789",
    )
}

/// The IP packet of a crafted frame (what an ICMP error quotes).
fn ip_of(frame: &[u8]) -> Vec<u8> {
    frame[14..].to_vec()
}

#[test]
fn masquerade_tcp_keeps_the_source_port_and_translates_back() {
    let b = bench("[1024, 65535]", "");
    // IPv4: the source port lies in the range and is free: kept (port preservation).
    let out = tcp("10.1.2.3", 40_000, REMOTE4, 443, SYN);
    let (v, got) = egress(&b, &out);
    assert_eq!(v, CONTINUE);
    assert_eq!(got, tcp(EXT4, 40_000, REMOTE4, 443, SYN), "SNAT of the SYN");
    let back = tcp(REMOTE4, 443, EXT4, 40_000, SYN_ACK);
    let (v, got) = ingress(&b, &back);
    assert_eq!(v, CONTINUE);
    assert_eq!(
        got,
        tcp(REMOTE4, 443, "10.1.2.3", 40_000, SYN_ACK),
        "reverse"
    );
    // IPv6 (NAT66).
    let (_, got) = egress(&b, &tcp("fd01::3", 40_001, REMOTE6, 443, SYN));
    assert_eq!(got, tcp(EXT6, 40_001, REMOTE6, 443, SYN));
    let (_, got) = ingress(&b, &tcp(REMOTE6, 443, EXT6, 40_001, SYN_ACK));
    assert_eq!(got, tcp(REMOTE6, 443, "fd01::3", 40_001, SYN_ACK));
    // The next packet of the flow uses the same mapping: no new one.
    let made = counter(&b, NS_SNAT_NEW);
    let (_, got) = egress(&b, &tcp("10.1.2.3", 40_000, REMOTE4, 443, 0x10));
    assert_eq!(got, tcp(EXT4, 40_000, REMOTE4, 443, 0x10));
    assert_eq!(counter(&b, NS_SNAT_NEW), made);
    assert_eq!(made, 2);
    assert_eq!(counter(&b, NS_EGRESS), 3);
    assert_eq!(counter(&b, NS_INGRESS), 2);
    // A second inside host with the same source port to the same remote endpoint cannot
    // keep it: it gets another one, and each reply finds its own host.
    let (_, got) = egress(&b, &tcp("10.1.9.9", 40_000, REMOTE4, 443, SYN));
    let p = mapped_port(&b, "10.1.9.9", 40_000);
    assert_ne!(p, 40_000);
    assert!((1024..=65_535).contains(&p));
    assert_eq!(got, tcp(EXT4, p, REMOTE4, 443, SYN));
    let (_, got) = ingress(&b, &tcp(REMOTE4, 443, EXT4, p, SYN_ACK));
    assert_eq!(got, tcp(REMOTE4, 443, "10.1.9.9", 40_000, SYN_ACK));
    // Not from a masqueraded subnet, and replies with no mapping: untouched.
    let other = tcp("10.2.0.1", 40_000, REMOTE4, 443, SYN);
    assert_eq!(egress(&b, &other), (CONTINUE, other.clone()));
    let stray = tcp(REMOTE4, 443, EXT4, 41_000, SYN_ACK);
    assert_eq!(ingress(&b, &stray), (CONTINUE, stray.clone()));
}

#[test]
fn masquerade_udp_out_of_range_ports_both_families_and_zero_checksum() {
    let b = bench("[20000, 20009]", "");
    for (inside, remote, ext) in [("10.1.0.7", REMOTE4, EXT4), ("fd01::7", REMOTE6, EXT6)] {
        let (v, got) = egress(&b, &udp(inside, 5000, remote, 53));
        assert_eq!(v, CONTINUE);
        let p = mapped_port(&b, inside, 5000);
        assert!((20_000..=20_009).contains(&p), "{p}");
        assert_eq!(got, udp(ext, p, remote, 53), "{inside}");
        let (_, got) = ingress(&b, &udp(remote, 53, ext, p));
        assert_eq!(got, udp(remote, 53, inside, 5000), "{inside} reverse");
    }
    // An IPv4 datagram without a checksum keeps none.
    let mut out = udp("10.1.0.8", 6000, REMOTE4, 53);
    out[40..42].copy_from_slice(&[0, 0]);
    let (_, got) = egress(&b, &out);
    let p = mapped_port(&b, "10.1.0.8", 6000);
    let mut want = udp(EXT4, p, REMOTE4, 53);
    want[40..42].copy_from_slice(&[0, 0]);
    assert_eq!(got, want, "zero UDP checksum stays zero");
    let mut back = udp(REMOTE4, 53, EXT4, p);
    back[40..42].copy_from_slice(&[0, 0]);
    let (_, got) = ingress(&b, &back);
    let mut want = udp(REMOTE4, 53, "10.1.0.8", 6000);
    want[40..42].copy_from_slice(&[0, 0]);
    assert_eq!(got, want);
}

#[test]
fn masquerade_icmp_echo_rewrites_the_identifier() {
    let b = bench("[20000, 20009]", "");
    for (inside, remote, ext) in [("10.1.0.9", REMOTE4, EXT4), ("fd01::9", REMOTE6, EXT6)] {
        let (v, got) = egress(&b, &echo(inside, remote, true, 0x1234));
        assert_eq!(v, CONTINUE);
        let id = mapped_port(&b, inside, 0x1234);
        assert!((20_000..=20_009).contains(&id));
        assert_eq!(got, echo(ext, remote, true, id), "{inside} request");
        let (_, got) = ingress(&b, &echo(remote, ext, false, id));
        assert_eq!(got, echo(remote, inside, false, 0x1234), "{inside} reply");
    }
    // An echo reply from inside with no mapping opens nothing.
    let reply = echo("10.1.0.9", REMOTE4, false, 0x4444);
    assert_eq!(egress(&b, &reply), (CONTINUE, reply.clone()));
}

#[test]
fn port_forwards_translate_in_and_back_out() {
    let b = bench(
        "[1024, 65535]",
        r#"
[[nat.forward]]
proto = "tcp"
port = 8080
to = "10.1.0.5:80"
[[nat.forward]]
proto = "udp"
port = 5353
to = "[fd01::5]:53"
"#,
    );
    let (v, got) = ingress(&b, &tcp(REMOTE4, 5555, EXT4, 8080, SYN));
    assert_eq!(v, CONTINUE);
    assert_eq!(got, tcp(REMOTE4, 5555, "10.1.0.5", 80, SYN));
    let (_, got) = egress(&b, &tcp("10.1.0.5", 80, REMOTE4, 5555, SYN_ACK));
    assert_eq!(got, tcp(EXT4, 8080, REMOTE4, 5555, SYN_ACK));
    let (_, got) = ingress(&b, &udp(REMOTE6, 7777, EXT6, 5353));
    assert_eq!(got, udp(REMOTE6, 7777, "fd01::5", 53));
    let (_, got) = egress(&b, &udp("fd01::5", 53, REMOTE6, 7777));
    assert_eq!(got, udp(EXT6, 5353, REMOTE6, 7777));
    assert_eq!(counter(&b, NS_DNAT_NEW), 2);
    // Another protocol or family on the port is not forwarded.
    let miss = udp(REMOTE4, 5555, EXT4, 8080);
    assert_eq!(ingress(&b, &miss), (CONTINUE, miss.clone()));
}

#[test]
fn icmp_errors_translate_their_quoted_packet() {
    let b = bench("[20000, 20009]", "");
    // Outbound UDP probe (traceroute) and an echo request, then the errors about them.
    egress(&b, &udp("10.1.0.3", 40_000, REMOTE4, 33_434));
    let p = mapped_port(&b, "10.1.0.3", 40_000);
    let sent = udp(EXT4, p, REMOTE4, 33_434);
    let err = icmp("192.0.2.254", EXT4, 11, 0, [0; 4], &ip_of(&sent));
    let (v, got) = ingress(&b, &err);
    assert_eq!(v, CONTINUE);
    let delivered = udp("10.1.0.3", 40_000, REMOTE4, 33_434);
    let want = icmp("192.0.2.254", "10.1.0.3", 11, 0, [0; 4], &ip_of(&delivered));
    assert_eq!(got, want, "time exceeded quoting UDP");
    // Port unreachable from the destination itself.
    let err = icmp(REMOTE4, EXT4, 3, 3, [0; 4], &ip_of(&sent));
    let want = icmp(REMOTE4, "10.1.0.3", 3, 3, [0; 4], &ip_of(&delivered));
    assert_eq!(ingress(&b, &err).1, want, "port unreachable");
    // Time exceeded quoting an echo request (traceroute -I).
    egress(&b, &echo("10.1.0.3", REMOTE4, true, 0x0bad));
    let id = mapped_port(&b, "10.1.0.3", 0x0bad);
    let err = icmp(
        "192.0.2.254",
        EXT4,
        11,
        0,
        [0; 4],
        &ip_of(&echo(EXT4, REMOTE4, true, id)),
    );
    let want = icmp(
        "192.0.2.254",
        "10.1.0.3",
        11,
        0,
        [0; 4],
        &ip_of(&echo("10.1.0.3", REMOTE4, true, 0x0bad)),
    );
    assert_eq!(ingress(&b, &err).1, want, "time exceeded quoting echo");
    // IPv6 packet too big quoting TCP (PMTU discovery), MTU 1280.
    egress(&b, &tcp("fd01::3", 40_000, REMOTE6, 443, 0x10));
    let p6 = mapped_port(&b, "fd01::3", 40_000);
    let sent6 = tcp(EXT6, p6, REMOTE6, 443, 0x10);
    let err = icmp("2001:db8:1::1", EXT6, 2, 0, [0, 0, 5, 0], &ip_of(&sent6));
    let want = icmp(
        "2001:db8:1::1",
        "fd01::3",
        2,
        0,
        [0, 0, 5, 0],
        &ip_of(&tcp("fd01::3", 40_000, REMOTE6, 443, 0x10)),
    );
    assert_eq!(ingress(&b, &err).1, want, "packet too big quoting TCP");
    // IPv4 fragmentation needed, quoting only the first 8 bytes of TCP (no checksum).
    egress(&b, &tcp("10.1.0.4", 41_000, REMOTE4, 443, 0x10));
    let p4 = mapped_port(&b, "10.1.0.4", 41_000);
    let quoted = &ip_of(&tcp(EXT4, p4, REMOTE4, 443, 0x10))[..28];
    let err = icmp("192.0.2.254", EXT4, 3, 4, [0, 0, 5, 0xdc], quoted);
    let want_quote = &ip_of(&tcp("10.1.0.4", 41_000, REMOTE4, 443, 0x10))[..28];
    // The quoted IPv4 header's checksum covers its own header only; the quote is cut
    // before the TCP checksum, which stays as it was.
    let want = icmp("192.0.2.254", "10.1.0.4", 3, 4, [0, 0, 5, 0xdc], want_quote);
    assert_eq!(ingress(&b, &err).1, want, "frag needed, short quote");
    // Egress: an inside host's port unreachable about a reply delivered to it: the error
    // leaves from the external address and quotes the external endpoint.
    let reply_in = udp(REMOTE4, 33_434, "10.1.0.3", 40_000);
    let err = icmp("10.1.0.3", REMOTE4, 3, 3, [0; 4], &ip_of(&reply_in));
    let want = icmp(
        EXT4,
        REMOTE4,
        3,
        3,
        [0; 4],
        &ip_of(&udp(REMOTE4, 33_434, EXT4, p)),
    );
    assert_eq!(egress(&b, &err).1, want, "egress port unreachable");
    // IPv6 egress: the host itself reports packet too big for a reply to an inside host:
    // the quote is translated, the error's own source (not the inside host) is kept.
    let reply6 = tcp(REMOTE6, 443, "fd01::3", 40_000, 0x10);
    let err = icmp(
        "2001:db8:100::1",
        REMOTE6,
        2,
        0,
        [0, 0, 5, 0],
        &ip_of(&reply6),
    );
    let want = icmp(
        "2001:db8:100::1",
        REMOTE6,
        2,
        0,
        [0, 0, 5, 0],
        &ip_of(&tcp(REMOTE6, 443, EXT6, p6, 0x10)),
    );
    assert_eq!(egress(&b, &err).1, want, "egress packet too big");
    assert_eq!(counter(&b, NS_ICMP_ERRORS), 7);
    // An error quoting a flow with no mapping is left alone.
    let stray = icmp(
        "192.0.2.254",
        EXT4,
        11,
        0,
        [0; 4],
        &ip_of(&udp(EXT4, 20_999, REMOTE4, 1)),
    );
    assert_eq!(ingress(&b, &stray), (CONTINUE, stray.clone()));
}

#[test]
fn exhaustion_drops_with_its_reason_and_never_remaps() {
    let mut b = bench("[20000, 20001]", "");
    let before = b.reason_count(reason::NAT_PORT_EXHAUSTED).expect("reasons");
    for host in ["10.1.0.1", "10.1.0.2"] {
        assert_eq!(egress(&b, &udp(host, 1000, REMOTE4, 53)).0, CONTINUE);
    }
    let ports: HashSet<u16> = ["10.1.0.1", "10.1.0.2"]
        .iter()
        .map(|h| mapped_port(&b, h, 1000))
        .collect();
    assert_eq!(ports, HashSet::from([20_000, 20_001]));
    // The third flow to the same remote endpoint finds no port: dropped, counted.
    let third = udp("10.1.0.3", 1000, REMOTE4, 53);
    assert_eq!(egress(&b, &third).0, SHOT);
    assert_eq!(counter(&b, NS_EXHAUSTED), 1);
    assert_eq!(
        b.reason_count(reason::NAT_PORT_EXHAUSTED).expect("reasons"),
        before + 1
    );
    // The drop is reported as an event with its reason and the packet's tuple.
    let events = b.drain_events();
    let ev = events
        .iter()
        .find(|e| e.reason == reason::NAT_PORT_EXHAUSTED)
        .unwrap_or_else(|| panic!("no exhaustion event in {events:?}"));
    assert_eq!((ev.proto, ev.sport, ev.dport), (17, 1000, 53));
    assert_eq!(ev.src, v4_mapped([10, 1, 0, 3]));
    // No mapping was made for it, and the others still translate to their own ports.
    assert_eq!(nat::mappings(&b.ebpf).expect("mappings").len(), 2);
    // The same ports towards another remote endpoint are free: a tuple is unique per
    // remote endpoint.
    assert_eq!(egress(&b, &udp("10.1.0.3", 1000, REMOTE4, 54)).0, CONTINUE);
}

#[test]
fn ports_of_local_sockets_and_forwards_are_never_handed_out() {
    // A UDP socket and a TCP listener of this host hold 20000; a forward holds 20001.
    let udp_sock = UdpSocket::bind("0.0.0.0:20000").expect("bind udp 20000");
    let listener = TcpListener::bind("0.0.0.0:20000").expect("listen tcp 20000");
    let b = bench(
        "[20000, 20002]",
        r#"
[[nat.forward]]
proto = "udp"
port = 20001
to = "10.1.0.5:53"
[[nat.forward]]
proto = "tcp"
port = 20001
to = "10.1.0.5:80"
"#,
    );
    for i in 0..4u16 {
        let host = format!("10.1.1.{}", i + 1);
        let (v, _) = egress(&b, &udp(&host, 20_000, REMOTE4, 53 + i));
        assert_eq!(v, CONTINUE);
        assert_eq!(mapped_port(&b, &host, 20_000), 20_002, "udp via {host}");
        let (v, _) = egress(&b, &tcp(&host, 20_000, REMOTE4, 443 + i, SYN));
        assert_eq!(v, CONTINUE);
    }
    let all = nat::mappings(&b.ebpf).expect("mappings");
    assert!(all.keys().all(|k| k.dport == 20_002), "{all:?}");
    assert!(counter(&b, NS_LOCAL_SOCKET) >= 8);
    assert!(counter(&b, NS_FORWARD_PORT) >= 1);
    drop((udp_sock, listener));
}

#[test]
fn the_sweep_removes_a_mapping_with_its_flow() {
    let b = bench("[20000, 20009]", "");
    // Flow A is committed by the egress tracker after NAT, as on the interface; flow B
    // never reaches the tracker.
    let (_, out_a) = egress(&b, &udp("10.1.0.1", 1111, REMOTE4, 53));
    b.run_ct_egress(&out_a).expect("tracker");
    egress(&b, &udp("10.1.0.2", 2222, REMOTE4, 53));
    let prog = sweep_program(&b.ebpf).expect("sweep");
    let req = |op| SweepRequest {
        op,
        ..SweepRequest::default()
    };
    sweep(prog, &b.ebpf, &req(SWEEP_EXPIRE)).expect("sweep");
    assert_eq!(nat::census(&b.ebpf).expect("census").live, 2, "young: kept");
    std::thread::sleep(std::time::Duration::from_millis(5_600));
    sweep(prog, &b.ebpf, &req(SWEEP_EXPIRE)).expect("sweep");
    let left = nat::mappings(&b.ebpf).expect("mappings");
    assert_eq!(left.len(), 1, "{left:?}");
    let (_, e) = left.iter().next().expect("one");
    assert_eq!((e.addr, e.port), (stored("10.1.0.1"), 1111));
    assert_eq!(nat::egress_mappings(&b.ebpf).expect("egress").len(), 1);
    assert_eq!(counter(&b, NS_SWEPT), 1);
    // Flushing the tracker's flows removes the mapping in the same sweep.
    sweep(prog, &b.ebpf, &req(SWEEP_FLUSH)).expect("flush");
    assert!(nat::mappings(&b.ebpf).expect("mappings").is_empty());
    assert!(nat::egress_mappings(&b.ebpf).expect("egress").is_empty());
    let census = nat::census(&b.ebpf).expect("census");
    assert_eq!((census.live, census.removed), (0, 2));
}
