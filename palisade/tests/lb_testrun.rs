//! The load balancer (`[[lb.service]]`) in the kernel, through `BPF_PROG_TEST_RUN` on the
//! XDP pipeline and the TC reverse translation: every rewrite checked byte by byte against a
//! frame built from scratch with the backend the userspace reference (the same Maglev table
//! and flow hash) chooses: DSR encapsulation over IPv4 (IPIP) and IPv6 (IP6IP6), DNAT and its
//! reverse over both families, ICMP frag-needed and packet-too-big sent to the flow's
//! backend; established flows keep their backend when it drains or fails, new flows avoid
//! it; the insertion gate under a flood; a service without backends drops with its reason.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test lb_testrun`.

use std::{net::IpAddr, path::Path};

use palisade::{
    craft::{Frame, checksum, ip},
    lb::{self, Live, State},
    policy::{config, model::Policy},
    testrun::Bench,
};
use palisade_common::{
    lb::{
        LS_DNAT_V4, LS_DNAT_V6, LS_ENCAP_V4, LS_ENCAP_V6, LS_FLOW_HITS, LS_ICMP_STEERED,
        LS_INSERT_GATED, LS_INSERTED, LS_NEW_FLOWS, LS_NO_BACKEND, LS_REVERSE, flow_hash,
        ring_index,
    },
    reason,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: i32 = -1;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SEED: u64 = 7_340_033;

fn policy(text: &str) -> Policy {
    config::parse_policy(text, "lb.toml", Path::new(".")).unwrap_or_else(|e| panic!("policy: {e}"))
}

fn bench(p: &Policy) -> Bench {
    let mut b = Bench::new().expect("load (needs root)");
    b.install(p).expect("install");
    b
}

fn services(mode: &str) -> String {
    format!(
        r#"
[lb]
hash_seed = {SEED}
encap_source_v4 = "192.0.2.0/24"
encap_source_v6 = "2001:db8:e::/112"

[[lb.service]]
name = "web4"
vip = "10.0.0.100"
port = 80
mode = "{mode}"
backends = [
  {{ address = "10.1.0.1" }},
  {{ address = "10.1.0.2" }},
  {{ address = "10.1.0.3", weight = 2 }},
]

[[lb.service]]
name = "web6"
vip = "2001:db8::100"
port = 443
mode = "{mode}"
backends = [{{ address = "2001:db8:1::1" }}, {{ address = "2001:db8:1::2" }}]

[[lb.service]]
name = "dns6"
vip = "2001:db8::53"
port = 53
proto = "udp"
mode = "{mode}"
backends = [{{ address = "2001:db8:1::5" }}]
"#
    )
}

/// 16 bytes, IPv4 mapped, as the kernel keys hold addresses.
fn bytes16(a: IpAddr) -> [u8; 16] {
    lb::addr_bytes(a).0
}

fn words(a: IpAddr) -> [u32; 4] {
    let b = bytes16(a);
    std::array::from_fn(|i| {
        u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    })
}

/// The userspace reference's choice: (backend, flow hash) for a client's flow to `service`.
fn reference(p: &Policy, live: &Live, service: &str, client: IpAddr, sport: u16) -> (IpAddr, u32) {
    let views = lb::view(&p.lb, live);
    let v = views.iter().find(|v| v.name == service).expect("service");
    let ring = lb::ring(p.lb.hash_seed, v);
    let proto = if v.proto == "tcp" { 6 } else { 17 };
    let h = flow_hash(
        p.lb.hash_seed,
        proto,
        words(client),
        words(v.vip),
        sport,
        v.port,
    );
    let b = ring.slots[ring_index(h) as usize];
    (v.backends[usize::from(b)].addr, h)
}

/// [`reference`] for `web4` with the table built once.
fn chooser(p: &Policy) -> impl Fn(IpAddr, u16) -> (IpAddr, u32) + Sync + '_ {
    let views = lb::view(&p.lb, &Live::default());
    let v = views
        .into_iter()
        .find(|v| v.name == "web4")
        .expect("service");
    let ring = lb::ring(p.lb.hash_seed, &v);
    move |client, sport| {
        let h = flow_hash(
            p.lb.hash_seed,
            6,
            words(client),
            words(v.vip),
            sport,
            v.port,
        );
        (
            v.backends[usize::from(ring.slots[ring_index(h) as usize])].addr,
            h,
        )
    }
}

fn counter(b: &Bench, i: u32) -> u64 {
    lb::counters(&b.ebpf).expect("LB_STATS")[i as usize]
}

/// The IPIP / IP6IP6 frame the stage should send: the original frame's Ethernet header, an
/// outer header built from scratch, then the original IP packet unchanged.
fn encapsulated(original: &[u8], backend: IpAddr, hash: u32) -> Vec<u8> {
    let inner = &original[14..];
    let mut f = original[..14].to_vec();
    match backend {
        IpAddr::V4(b) => {
            let total = (inner.len() + 20) as u16;
            let mut h = vec![0x45, inner[1]];
            h.extend_from_slice(&total.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0, 64, 4, 0, 0]);
            h.extend_from_slice(&[192, 0, 2, hash as u8]);
            h.extend_from_slice(&b.octets());
            let c = checksum(&h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        IpAddr::V6(b) => {
            let label = hash & 0xf_ffff;
            let tc = (inner[0] & 0x0f) << 4 | inner[1] >> 4;
            f.push(0x60 | tc >> 4);
            f.push((tc & 0x0f) << 4 | (label >> 16) as u8);
            f.push((label >> 8) as u8);
            f.push(label as u8);
            f.extend_from_slice(&(inner.len() as u16).to_be_bytes());
            f.extend_from_slice(&[41, 64]);
            let mut src = [0u8; 16];
            src[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0x0e]);
            src[14..].copy_from_slice(&(hash as u16).to_be_bytes());
            f.extend_from_slice(&src);
            f.extend_from_slice(&b.octets());
        }
    }
    f.extend_from_slice(inner);
    f
}

fn run(b: &Bench, frame: &[u8]) -> (u32, Vec<u8>) {
    b.run_with_output(frame).expect("test run")
}

#[test]
fn dsr_v4_encapsulates_to_the_reference_backend_and_keeps_the_flow() {
    let p = policy(&services("dsr"));
    let b = bench(&p);
    let client = ip("198.51.100.7");
    let syn = Frame::tcp("198.51.100.7", "10.0.0.100", 40_000, 80, SYN).build();
    let (backend, hash) = reference(&p, &Live::default(), "web4", client, 40_000);
    let (action, out) = run(&b, &syn);
    // test_run's device has no route to the backend that leaves where the frame came in:
    // the stack gets the encapsulated packet.
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, encapsulated(&syn, backend, hash));
    assert_eq!(counter(&b, LS_ENCAP_V4), 1);
    assert_eq!(counter(&b, LS_NEW_FLOWS), 1);
    assert_eq!(counter(&b, LS_INSERTED), 1);
    // The next segment finds the flow.
    let ack = Frame::tcp("198.51.100.7", "10.0.0.100", 40_000, 80, ACK)
        .with_payload(b"GET / HTTP/1.0\r\n\r\n")
        .build();
    let (action, out) = run(&b, &ack);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, encapsulated(&ack, backend, hash));
    assert_eq!(counter(&b, LS_FLOW_HITS), 1);
    // Other traffic (another port of the VIP, another address) is left alone.
    let other = Frame::tcp("198.51.100.7", "10.0.0.100", 40_000, 81, SYN).build();
    assert_eq!(run(&b, &other), (XDP_PASS, other.clone()));
    let other = Frame::tcp("198.51.100.7", "10.0.0.101", 40_000, 80, SYN).build();
    assert_eq!(run(&b, &other), (XDP_PASS, other.clone()));
    assert_eq!(counter(&b, LS_ENCAP_V4), 2);
}

#[test]
fn many_flows_agree_with_the_reference() {
    let p = policy(&services("dsr"));
    let b = bench(&p);
    let mut seen = std::collections::HashSet::new();
    for i in 0..200u16 {
        let client = format!("198.51.{}.{}", 100 + i / 200, 1 + i % 200);
        let sport = 1024 + i * 7;
        let syn = Frame::tcp(&client, "10.0.0.100", sport, 80, SYN).build();
        let (backend, hash) = reference(&p, &Live::default(), "web4", ip(&client), sport);
        seen.insert(backend);
        assert_eq!(run(&b, &syn), (XDP_PASS, encapsulated(&syn, backend, hash)));
    }
    // Every backend got some of them.
    assert_eq!(seen.len(), 3);
}

#[test]
fn dsr_v6_encapsulates_tcp_and_udp() {
    let p = policy(&services("dsr"));
    let b = bench(&p);
    let client = ip("2001:db8:c::7");
    let syn = Frame::tcp("2001:db8:c::7", "2001:db8::100", 50_000, 443, SYN).build();
    let (backend, hash) = reference(&p, &Live::default(), "web6", client, 50_000);
    assert_eq!(run(&b, &syn), (XDP_PASS, encapsulated(&syn, backend, hash)));
    let q = Frame::udp("2001:db8:c::7", "2001:db8::53", 5353, 53)
        .with_payload(&[0xab; 33])
        .build();
    let (backend, hash) = reference(&p, &Live::default(), "dns6", client, 5353);
    assert_eq!(backend, ip("2001:db8:1::5"));
    assert_eq!(run(&b, &q), (XDP_PASS, encapsulated(&q, backend, hash)));
    assert_eq!(counter(&b, LS_ENCAP_V6), 2);
}

#[test]
fn dnat_rewrites_both_ways_with_valid_checksums() {
    let p = policy(&services("dnat"));
    let b = bench(&p);
    // IPv4 TCP: the frame the backend gets is the client's frame addressed to the backend,
    // every checksum computed from scratch by the frame builder.
    let client = ip("198.51.100.9");
    let (backend, _) = reference(&p, &Live::default(), "web4", client, 41_000);
    let syn = Frame::tcp("198.51.100.9", "10.0.0.100", 41_000, 80, SYN)
        .with_payload(b"data")
        .build();
    let to_backend = Frame::tcp("198.51.100.9", &backend.to_string(), 41_000, 80, SYN)
        .with_payload(b"data")
        .build();
    assert_eq!(run(&b, &syn), (XDP_PASS, to_backend));
    assert_eq!(counter(&b, LS_DNAT_V4), 1);
    // The reply leaves with the VIP as source.
    let reply = Frame::tcp(&backend.to_string(), "198.51.100.9", 80, 41_000, SYN | ACK)
        .with_payload(b"answer")
        .build();
    let from_vip = Frame::tcp("10.0.0.100", "198.51.100.9", 80, 41_000, SYN | ACK)
        .with_payload(b"answer")
        .build();
    let (v, out) = b.run_tc(lb::REVERSE, &reply).expect("tc run");
    assert_eq!((v, out), (TC_ACT_UNSPEC, from_vip));
    assert_eq!(counter(&b, LS_REVERSE), 1);
    // A reply to a client whose flow is on another backend, or from another port, is left
    // alone.
    let other = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
        .into_iter()
        .find(|a| ip(a) != backend)
        .expect("another backend");
    let stray = Frame::tcp(other, "198.51.100.9", 80, 41_000, ACK).build();
    assert_eq!(
        b.run_tc(lb::REVERSE, &stray).expect("tc run"),
        (TC_ACT_UNSPEC, stray.clone())
    );
    let stray = Frame::tcp(&backend.to_string(), "198.51.100.9", 8080, 41_000, ACK).build();
    assert_eq!(
        b.run_tc(lb::REVERSE, &stray).expect("tc run"),
        (TC_ACT_UNSPEC, stray.clone())
    );
    assert_eq!(counter(&b, LS_REVERSE), 1);

    // IPv6 UDP, both ways.
    let client6 = ip("2001:db8:c::9");
    let (backend6, _) = reference(&p, &Live::default(), "dns6", client6, 3333);
    let q = Frame::udp("2001:db8:c::9", "2001:db8::53", 3333, 53)
        .with_payload(b"query")
        .build();
    let to_backend = Frame::udp("2001:db8:c::9", &backend6.to_string(), 3333, 53)
        .with_payload(b"query")
        .build();
    assert_eq!(run(&b, &q), (XDP_PASS, to_backend));
    assert_eq!(counter(&b, LS_DNAT_V6), 1);
    let reply = Frame::udp(&backend6.to_string(), "2001:db8:c::9", 53, 3333)
        .with_payload(b"answer!")
        .build();
    let from_vip = Frame::udp("2001:db8::53", "2001:db8:c::9", 53, 3333)
        .with_payload(b"answer!")
        .build();
    assert_eq!(
        b.run_tc(lb::REVERSE, &reply).expect("tc run"),
        (TC_ACT_UNSPEC, from_vip)
    );
    assert_eq!(counter(&b, LS_REVERSE), 2);
}

/// An ICMP error from `router` to the VIP quoting the VIP's packet to the client.
fn icmp_error(router: &str, vip: &str, client: &str, vport: u16, cport: u16) -> Vec<u8> {
    let quoted = Frame::tcp(vip, client, vport, cport, ACK)
        .with_payload(&[0x55; 8])
        .build();
    let quote = &quoted[14..14 + if ip(vip).is_ipv4() { 28 } else { 48 }];
    let (t, c) = if ip(vip).is_ipv4() { (3, 4) } else { (2, 0) };
    let mut f = Frame::icmp(router, vip, t, c).with_payload(quote);
    // The next-hop MTU (IPv4, bytes 6..8) or MTU (IPv6, bytes 4..8) sits in the "rest of
    // header"; the builder leaves it 0, which the stage does not read.
    f.ttl = 60;
    f.build()
}

#[test]
fn icmp_frag_needed_and_packet_too_big_reach_the_flows_backend() {
    let p = policy(&services("dsr"));
    let b = bench(&p);
    let (backend, hash) = reference(&p, &Live::default(), "web4", ip("198.51.100.20"), 42_000);
    let e = icmp_error("203.0.113.1", "10.0.0.100", "198.51.100.20", 80, 42_000);
    assert_eq!(run(&b, &e), (XDP_PASS, encapsulated(&e, backend, hash)));
    let (backend6, hash6) = reference(&p, &Live::default(), "web6", ip("2001:db8:c::20"), 42_001);
    let e6 = icmp_error(
        "2001:db8:ffff::1",
        "2001:db8::100",
        "2001:db8:c::20",
        443,
        42_001,
    );
    assert_eq!(run(&b, &e6), (XDP_PASS, encapsulated(&e6, backend6, hash6)));
    assert_eq!(counter(&b, LS_ICMP_STEERED), 2);
    // ICMP errors are not flows: nothing was inserted.
    assert_eq!(counter(&b, LS_INSERTED), 0);
    // An echo request to the VIP is left to the stack.
    let echo = Frame::icmp("198.51.100.20", "10.0.0.100", 8, 0).build();
    assert_eq!(run(&b, &echo), (XDP_PASS, echo.clone()));
}

#[test]
fn icmp_errors_about_dnat_flows_reach_the_backend_as_its_own() {
    let p = policy(&services("dnat"));
    let b = bench(&p);
    // The backend sent the packet from its own address; the client saw it from the VIP, and
    // the router's error quotes the VIP. The backend gets the error as if about its own
    // packet, every checksum computed from scratch by the frame builder.
    for (router, vip, client, vport, cport, service) in [
        (
            "203.0.113.1",
            "10.0.0.100",
            "198.51.100.30",
            80,
            43_000,
            "web4",
        ),
        (
            "2001:db8:ffff::1",
            "2001:db8::100",
            "2001:db8:c::30",
            443,
            43_001,
            "web6",
        ),
    ] {
        let (backend, _) = reference(&p, &Live::default(), service, ip(client), cport);
        let e = icmp_error(router, vip, client, vport, cport);
        let expected = icmp_error(router, &backend.to_string(), client, vport, cport);
        assert_eq!(run(&b, &e), (XDP_PASS, expected));
    }
    assert_eq!(counter(&b, LS_ICMP_STEERED), 2);
    assert_eq!(counter(&b, LS_DNAT_V4) + counter(&b, LS_DNAT_V6), 2);
}

#[test]
fn draining_and_failed_backends_keep_their_flows_and_get_no_new_ones() {
    let p = policy(&services("dsr"));
    let flows: Vec<(String, u16)> = (0..60u16)
        .map(|i| (format!("198.51.100.{}", 1 + i), 30_000 + i))
        .collect();
    for state in [State::Draining, State::Down] {
        let mut b = bench(&p);
        // Flows from many clients, then the backend of the first one drains or fails.
        let mut first = Vec::new();
        for (c, port) in &flows {
            let syn = Frame::tcp(c, "10.0.0.100", *port, 80, SYN).build();
            let (backend, hash) = reference(&p, &Live::default(), "web4", ip(c), *port);
            assert_eq!(run(&b, &syn), (XDP_PASS, encapsulated(&syn, backend, hash)));
            first.push((backend, hash));
        }
        let gone = first[0].0;
        let mut live = Live::default();
        if state == State::Draining {
            live.draining.insert(("web4".into(), gone));
        } else {
            live.down.insert(("web4".into(), gone));
        }
        lb::install(&mut b.ebpf, &p.lb, &live).expect("live change");
        // Established flows stay where they are, the drained backend's included.
        for ((c, port), (backend, hash)) in flows.iter().zip(&first) {
            let ack = Frame::tcp(c, "10.0.0.100", *port, 80, ACK).build();
            assert_eq!(
                run(&b, &ack),
                (XDP_PASS, encapsulated(&ack, *backend, *hash))
            );
        }
        // New flows never go to it, and follow the reference's new table.
        for i in 0..100u16 {
            let c = format!("198.51.101.{}", 1 + i);
            let syn = Frame::tcp(&c, "10.0.0.100", 20_000 + i, 80, SYN).build();
            let (backend, hash) = reference(&p, &live, "web4", ip(&c), 20_000 + i);
            assert_ne!(backend, gone);
            assert_eq!(run(&b, &syn), (XDP_PASS, encapsulated(&syn, backend, hash)));
        }
    }
}

#[test]
fn a_service_without_backends_drops_with_its_reason() {
    let p = policy(&services("dsr"));
    let mut b = bench(&p);
    let mut live = Live::default();
    for a in ["2001:db8:1::1", "2001:db8:1::2"] {
        live.down.insert(("web6".into(), ip(a)));
    }
    lb::install(&mut b.ebpf, &p.lb, &live).expect("live change");
    let syn = Frame::tcp("2001:db8:c::7", "2001:db8::100", 50_000, 443, SYN).build();
    assert_eq!(run(&b, &syn).0, XDP_DROP);
    assert_eq!(counter(&b, LS_NO_BACKEND), 1);
    assert_eq!(b.reason_count(reason::LB_NO_BACKEND).expect("reasons"), 1);
}

/// Keeps the calling thread on the CPU it runs on until dropped, then gives it back the
/// CPUs it had.
struct OneCpu {
    before: libc::cpu_set_t,
}

impl OneCpu {
    fn pin() -> Self {
        // SAFETY: plain syscalls on this thread's own affinity, with a zeroed, sized set.
        unsafe {
            let mut before: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &mut before), 0);
            let cpu = usize::try_from(libc::sched_getcpu()).expect("a CPU");
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
            Self { before }
        }
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        // SAFETY: as in `pin`.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.before);
        }
    }
}

#[test]
fn the_insertion_gate_holds_a_flood_and_still_balances_it() {
    let text = services("dsr").replace("encap_source_v4", "flow_insert_rate = 10\nencap_source_v4");
    let p = policy(&text);
    let b = bench(&p);
    // The gate's buckets are per CPU: the runs stay on one, or a thread the scheduler moves
    // would fill two.
    let _cpu = OneCpu::pin();
    let started = std::time::Instant::now();
    for i in 0..100u16 {
        let c = format!("198.51.{}.{}", 100 + i / 250, 1 + i % 250);
        let syn = Frame::tcp(&c, "10.0.0.100", 10_000 + i, 80, SYN).build();
        let (backend, hash) = reference(&p, &Live::default(), "web4", ip(&c), 10_000 + i);
        assert_eq!(run(&b, &syn), (XDP_PASS, encapsulated(&syn, backend, hash)));
    }
    // One second of tokens (10), and those earned while the runs went on (10 a second).
    let earned = started.elapsed().as_millis() as u64 / 100;
    let inserted = counter(&b, LS_INSERTED);
    assert!(
        (10..=11 + earned).contains(&inserted),
        "{inserted}, {earned} earned"
    );
    assert!(inserted < 100);
    assert_eq!(inserted + counter(&b, LS_INSERT_GATED), 100);
    assert_eq!(
        lb::flow_count(&b.ebpf).expect("flows"),
        usize::try_from(inserted).expect("small")
    );
}

#[test]
fn the_policy_refuses_what_does_not_fit_where_it_is_written() {
    let errors = |text: &str| -> Vec<String> {
        config::parse_policy(text, "lb.toml", Path::new("."))
            .expect_err("refused")
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let e = errors(
        "[[lb.service]]\nname = \"a\"\nvip = \"10.0.0.1\"\nport = 80\nbackends = [{ address = \"10.1.0.1\" }]\n",
    );
    assert_eq!(
        e,
        [
            "lb.toml:1:1: [[lb.service]] \"a\": a DSR service on IPv4 needs `[lb] encap_source_v4`, the prefix its outer sources come from"
        ]
    );
    let e = errors(
        "[[lb.service]]\nname = \"a\"\nvip = \"10.0.0.1\"\nport = 80\nmode = \"dnat\"\nbackends = [{ address = \"2001:db8::1\" }, { address = \"10.1.0.1\", weight = 0 }]\n",
    );
    assert_eq!(
        e,
        [
            "lb.toml:6:13: the backend 2001:db8::1 is not of the VIP's family (10.0.0.1)",
            "lb.toml:6:75: `weight` must be between 1 and 65535, found 0",
        ]
    );
    let many: String = (0..257)
        .map(|i| format!("{{ address = \"10.1.{}.{}\" }},", i / 200, i % 200 + 1))
        .collect();
    let e = errors(&format!(
        "[[lb.service]]\nname = \"a\"\nvip = \"10.0.0.1\"\nport = 80\nmode = \"dnat\"\nbackends = [{many}]\n"
    ));
    assert_eq!(e, ["lb.toml:6:12: 257 backends; a service holds 256"]);
}

#[test]
fn the_backend_decapsulation_gives_back_the_clients_packet() {
    let p = policy(&services("dsr"));
    let b = bench(&p);
    for (client, vip, sport, service) in [
        ("198.51.100.7", "10.0.0.100", 40_000, "web4"),
        ("2001:db8:c::7", "2001:db8::100", 50_000, "web6"),
    ] {
        let port = if vip.contains(':') { 443 } else { 80 };
        let syn = Frame::tcp(client, vip, sport, port, SYN)
            .with_payload(b"hello")
            .build();
        let (backend, hash) = reference(&p, &Live::default(), service, ip(client), sport);
        let outer = encapsulated(&syn, backend, hash);
        let (v, out) = b.run_tc(lb::DECAP, &outer).expect("tc run");
        assert_eq!((v, out), (TC_ACT_UNSPEC, syn.clone()));
        // Anything else goes on unchanged.
        assert_eq!(
            b.run_tc(lb::DECAP, &syn).expect("tc run"),
            (TC_ACT_UNSPEC, syn.clone())
        );
    }
}

/// `BPF_PROG_TEST_RUN` through a program fd, from any thread: the run the torture test does
/// while another thread switches the tables.
fn raw_run(prog: &std::os::fd::OwnedFd, frame: &[u8]) -> (u32, Vec<u8>) {
    use std::os::fd::AsRawFd as _;
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestAttr::default()
    };
    // SAFETY: the attribute points at live buffers of the sizes given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    out.truncate(attr.data_size_out as usize);
    (attr.retval, out)
}

#[test]
fn every_packet_sees_the_old_table_or_the_new_one_while_they_switch() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // Two tables for one service, with disjoint backends: a packet that mixed one slot's
    // Maglev table with the other's backends would name a backend of the wrong set at the
    // wrong index.
    let table = |net: u8| {
        policy(&format!(
            "[lb]\nhash_seed = 5\nflow_insert_rate = 1\nencap_source_v4 = \"192.0.2.0/24\"\n\
             [[lb.service]]\nname = \"web4\"\nvip = \"10.0.0.100\"\nport = 80\nbackends = [\
             {{ address = \"10.{net}.0.1\" }}, {{ address = \"10.{net}.0.2\" }}, \
             {{ address = \"10.{net}.0.3\", weight = 3 }}]\n"
        ))
    };
    let (a, b) = (table(1), table(2));
    let mut bench = bench(&a);
    let prog = {
        let p: &aya::programs::Xdp = bench
            .ebpf
            .program(palisade::testrun::FIREWALL)
            .expect("firewall")
            .try_into()
            .expect("xdp");
        use std::os::fd::AsFd as _;
        p.fd()
            .expect("fd")
            .as_fd()
            .try_clone_to_owned()
            .expect("dup")
    };
    let (choose_a, choose_b) = (chooser(&a), chooser(&b));
    // The reference's choices agree with `reference`.
    let c = ip("198.51.100.1");
    assert_eq!(
        choose_a(c, 1),
        reference(&a, &Live::default(), "web4", c, 1)
    );
    let done = AtomicBool::new(false);
    let (packets, switches) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut n = 0u32;
            let mut seen = [0u32; 2];
            // Packets that ran while the switches went on.
            let mut during = 0u32;
            while !done.load(Ordering::Relaxed) || n < 2000 {
                let switching = !done.load(Ordering::Relaxed);
                let client = format!("198.51.{}.{}", 100 + (n / 250) % 100, 1 + n % 250);
                let sport = 1024 + (n % 60_000) as u16;
                let syn = Frame::tcp(&client, "10.0.0.100", sport, 80, SYN).build();
                let (action, out) = raw_run(&prog, &syn);
                assert_eq!(action, XDP_PASS);
                let (ba, ha) = choose_a(ip(&client), sport);
                let (bb, hb) = choose_b(ip(&client), sport);
                // A flow inserted earlier keeps the backend of its table, which is one of
                // these two as well.
                if out == encapsulated(&syn, ba, ha) {
                    seen[0] += 1;
                } else if out == encapsulated(&syn, bb, hb) {
                    seen[1] += 1;
                } else {
                    panic!("packet {n} saw neither table: {out:02x?}");
                }
                n += 1;
                if switching && !done.load(Ordering::Relaxed) {
                    during += 1;
                }
            }
            (n, seen, during)
        });
        let mut switches = 0u32;
        let started = std::time::Instant::now();
        while switches < 1000 && started.elapsed() < std::time::Duration::from_secs(60) {
            let next = if switches.is_multiple_of(2) { &b } else { &a };
            lb::install(&mut bench.ebpf, &next.lb, &Live::default()).expect("switch");
            switches += 1;
        }
        done.store(true, Ordering::Relaxed);
        (reader.join().expect("reader"), switches)
    });
    let (n, seen, during) = packets;
    eprintln!("{n} packets, {during} of them during {switches} switches: {seen:?} by table");
    assert_eq!(switches, 1000);
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
    assert!(
        during >= 1000,
        "only {during} packets ran while the tables switched"
    );
}

#[test]
fn the_firewall_judges_vip_traffic_before_it_is_balanced() {
    // Default drop with tracking: VIP traffic needs a rule, a blocked source is dropped by
    // its rule and never balanced, and the client's later segments of a DSR flow (whose
    // replies this host never sees) are balanced through the same rule.
    let text = format!(
        "[firewall]\ndefault = \"drop\"\nstateful = true\n\
         [[firewall.rule]]\naction = \"drop\"\nsrc = \"198.51.100.66\"\n\
         [[firewall.rule]]\naction = \"allow\"\nproto = \"tcp\"\ndport = 80\n{}",
        services("dsr")
    );
    let p = policy(&text);
    let b = bench(&p);
    let blocked = Frame::tcp("198.51.100.66", "10.0.0.100", 40_000, 80, SYN).build();
    assert_eq!(run(&b, &blocked).0, XDP_DROP);
    assert_eq!(b.reason_count(reason::RULE).expect("reasons"), 1);
    assert_eq!(counter(&b, palisade_common::lb::LS_PACKETS), 0);
    // Not allowed by any rule (port 443 of the IPv6 VIP): the default drops it.
    let v6 = Frame::tcp("2001:db8:c::7", "2001:db8::100", 50_000, 443, SYN).build();
    assert_eq!(run(&b, &v6).0, XDP_DROP);
    assert_eq!(counter(&b, palisade_common::lb::LS_PACKETS), 0);
    let (backend, hash) = reference(&p, &Live::default(), "web4", ip("198.51.100.7"), 40_000);
    for flags in [SYN, ACK, ACK] {
        let f = Frame::tcp("198.51.100.7", "10.0.0.100", 40_000, 80, flags)
            .with_payload(b"x")
            .build();
        assert_eq!(run(&b, &f), (XDP_PASS, encapsulated(&f, backend, hash)));
    }
    assert_eq!(counter(&b, palisade_common::lb::LS_PACKETS), 3);
}

#[test]
fn adding_and_reweighting_backends_live_keeps_every_established_flow() {
    let p = policy(&services("dsr"));
    let mut b = bench(&p);
    let flows: Vec<(String, u16)> = (0..80u16)
        .map(|i| (format!("198.51.102.{}", 1 + i), 31_000 + i))
        .collect();
    let mut first = Vec::new();
    for (c, port) in &flows {
        let syn = Frame::tcp(c, "10.0.0.100", *port, 80, SYN).build();
        let (backend, hash) = reference(&p, &Live::default(), "web4", ip(c), *port);
        assert_eq!(run(&b, &syn), (XDP_PASS, encapsulated(&syn, backend, hash)));
        first.push((backend, hash));
    }
    let mut live = Live::default();
    live.change(&p.lb, "web4", ip("10.1.0.9"), lb::Action::Add, Some(4))
        .expect("add");
    live.change(&p.lb, "web4", ip("10.1.0.1"), lb::Action::Weight, Some(3))
        .expect("weight");
    lb::install(&mut b.ebpf, &p.lb, &live).expect("live change");
    for ((c, port), (backend, hash)) in flows.iter().zip(&first) {
        let ack = Frame::tcp(c, "10.0.0.100", *port, 80, ACK).build();
        assert_eq!(
            run(&b, &ack),
            (XDP_PASS, encapsulated(&ack, *backend, *hash))
        );
    }
    // New flows follow the new table, the new backend among them.
    let mut to_new = 0;
    for i in 0..100u16 {
        let c = format!("198.51.103.{}", 1 + i);
        let syn = Frame::tcp(&c, "10.0.0.100", 21_000 + i, 80, SYN).build();
        let (backend, hash) = reference(&p, &live, "web4", ip(&c), 21_000 + i);
        to_new += usize::from(backend == ip("10.1.0.9"));
        assert_eq!(run(&b, &syn), (XDP_PASS, encapsulated(&syn, backend, hash)));
    }
    assert!(to_new > 10, "{to_new}");
    // What the tables cannot hold or the service does not have is refused, unchanged.
    let before = live.clone();
    assert!(
        live.change(&p.lb, "web4", ip("2001:db8::9"), lb::Action::Add, None)
            .is_err()
    );
    assert!(
        live.change(&p.lb, "web4", ip("10.9.9.9"), lb::Action::Drain, None)
            .is_err()
    );
    assert!(
        live.change(&p.lb, "web4", ip("10.1.0.2"), lb::Action::Weight, Some(0))
            .is_err()
    );
    assert_eq!(live, before);
}

/// A DSR balancer with connection tracking and `[shield] tcp_invalid = "drop"`: the backends
/// answer the clients directly, so the tracker sees a flow's SYN and never its SYN-ACK, and
/// the client's next segments are `invalid` to it. They are still balanced (the flow's
/// backend, encapsulated), not dropped as invalid; invalid TCP to other addresses still is.
#[test]
fn dsr_flows_are_not_condemned_as_invalid_when_the_replies_bypass_the_balancer() {
    let text = format!(
        "{}\n[conntrack]\nenabled = true\n\n[shield]\ntcp_invalid = \"drop\"\n",
        services("dsr")
    );
    let p = policy(&text);
    let b = bench(&p);
    let client = ip("198.51.100.9");
    let (backend, hash) = reference(&p, &Live::default(), "web4", client, 40_100);
    let syn = Frame::tcp("198.51.100.9", "10.0.0.100", 40_100, 80, SYN).build();
    let (action, out) = run(&b, &syn);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, encapsulated(&syn, backend, hash));
    for i in 0..3u32 {
        let ack = Frame::tcp("198.51.100.9", "10.0.0.100", 40_100, 80, ACK)
            .with_tcp_seq(1 + i * 18)
            .with_payload(b"GET / HTTP/1.0\r\n\r\n")
            .build();
        let (action, out) = run(&b, &ack);
        assert_eq!(action, XDP_PASS, "segment {i}");
        assert_eq!(out, encapsulated(&ack, backend, hash), "segment {i}");
    }
    assert_eq!(b.reason_count(reason::SHIELD_TCP_INVALID).unwrap(), 0);
    // An ACK of no flow to an address that is no VIP is still dropped as invalid.
    let stray = Frame::tcp("198.51.100.9", "10.0.0.101", 40_100, 80, ACK).build();
    assert_eq!(run(&b, &stray).0, XDP_DROP);
    assert_eq!(b.reason_count(reason::SHIELD_TCP_INVALID).unwrap(), 1);
}

/// The number of Maglev tables in each slot's array (`None`: the slot holds no array), the
/// live slot's first.
fn ring_tables(b: &Bench) -> [Option<u32>; 2] {
    let control: aya::maps::Array<&aya::maps::MapData, palisade_common::lb::LbControl> =
        aya::maps::Array::try_from(b.ebpf.map("LB_CONTROL").expect("LB_CONTROL"))
            .expect("an array");
    let live = control.get(&0, 0).expect("reading LB_CONTROL").active & 1;
    [live, live ^ 1].map(|slot| {
        palisade::capacity::slot_table(&b.ebpf, lb::RINGS, lb::RING_TABLES[slot as usize], slot)
            .expect("reading LB_RINGS")
            .map(|t| {
                palisade::pin::map_info(std::os::fd::AsFd::as_fd(t.fd()))
                    .expect("the table's information")
                    .4
            })
    })
}

#[test]
fn the_maglev_tables_follow_the_services_of_each_slot() {
    let none = "[firewall]\ndefault = \"allow\"\n";
    // No service: no table in either slot (the 64 fixed tables took 8 MiB).
    let mut b = bench(&policy(none));
    assert_eq!(ring_tables(&b), [None, None]);
    // Three services: the slot just written holds three tables, and they balance.
    let p = policy(&services("dsr"));
    b.install(&p).expect("install");
    assert_eq!(ring_tables(&b), [Some(3), None]);
    let query = Frame::udp("2001:db8:5::7", "2001:db8::53", 40_000, 53).build();
    let (backend, hash) = reference(&p, &Live::default(), "dns6", ip("2001:db8:5::7"), 40_000);
    assert_eq!(
        run(&b, &query),
        (XDP_PASS, encapsulated(&query, backend, hash))
    );
    // Two services: the other slot gets two tables; the three stay until theirs is written
    // again.
    let mut two = services("dsr");
    two.truncate(
        two.find("[[lb.service]]\nname = \"dns6\"")
            .expect("the third service"),
    );
    let p = policy(&two);
    b.install(&p).expect("install");
    assert_eq!(ring_tables(&b), [Some(2), Some(3)]);
    let syn = Frame::tcp("198.51.100.8", "10.0.0.100", 40_001, 80, SYN).build();
    let (backend, hash) = reference(&p, &Live::default(), "web4", ip("198.51.100.8"), 40_001);
    assert_eq!(run(&b, &syn), (XDP_PASS, encapsulated(&syn, backend, hash)));
    // The third service's VIP is no longer balanced (a new client: no flow of its own).
    let other = Frame::udp("2001:db8:5::8", "2001:db8::53", 40_000, 53).build();
    assert_eq!(run(&b, &other), (XDP_PASS, other.clone()));
    // No service again: each slot is emptied as it is written.
    b.install(&policy(none)).expect("install");
    assert_eq!(ring_tables(&b), [None, Some(2)]);
    b.install(&policy(none)).expect("install");
    assert_eq!(ring_tables(&b), [None, None]);
}
