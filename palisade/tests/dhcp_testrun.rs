//! DHCP snooping in the kernel, through `BPF_PROG_TEST_RUN`: the XDP firewall (ingress) and
//! the TC egress program copy DHCPv4, DHCPv6 and router-advertisement frames to the daemon's
//! ring buffer byte for byte, judge server messages and advertisements against the trusted
//! list (by IP or by MAC, per role), report or drop rogue ones with their reason and
//! counters (behind one or two VLAN tags too), leave client messages and everything else
//! alone, cut frames longer than a record, and switch with the policy generation.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test dhcp_testrun`.

use std::{net::Ipv4Addr, path::Path};

use aya::maps::{MapData, RingBuf};
use palisade::{
    craft::Frame,
    dhcp::{
        self,
        craft::{self, V4},
    },
    policy::config,
    testrun::{Bench, sum_counter},
};
use palisade_common::{
    dhcp::{
        DS_COPIED, DS_CUT, DS_ROGUE, DS_ROGUE_DROPPED, DS_SHORT, DS_TRUSTED, DhcpRecord, KIND_RA,
        KIND_V4_CLIENT, KIND_V4_SERVER, KIND_V6_CLIENT, KIND_V6_SERVER, REC_CUT, REC_DROPPED,
        REC_INGRESS, REC_ROGUE, RECORD_BYTES,
    },
    reason, stats,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
const CLIENT: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
const ROGUE_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x66];

struct Lab {
    bench: Bench,
    ring: RingBuf<MapData>,
}

impl Lab {
    fn new(policy: &str) -> Self {
        let mut bench = Bench::new().expect("load (root needed)");
        let ring = RingBuf::try_from(bench.ebpf.take_map("DHCP_RECORDS").expect("ring"))
            .expect("ring buffer");
        let mut lab = Self { bench, ring };
        lab.install(policy);
        lab
    }

    fn install(&mut self, policy: &str) {
        let p = config::parse_policy(policy, "p.toml", Path::new("/")).expect("valid policy");
        self.bench.install(&p).expect("install");
    }

    fn counters(&self) -> [u64; palisade_common::dhcp::DS_COUNT as usize] {
        dhcp::counters(&self.bench.ebpf).expect("counters")
    }

    fn reason(&self, r: u32) -> u64 {
        sum_counter(&self.bench.ebpf, "REASON_STATS", r).expect("reasons")
    }

    /// The records waiting in the ring buffer.
    fn records(&mut self) -> Vec<DhcpRecord> {
        let mut v = Vec::new();
        while let Some(item) = self.ring.next() {
            assert_eq!(item.len(), size_of::<DhcpRecord>());
            // SAFETY: the length was checked; the record is plain bytes.
            v.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DhcpRecord>()) });
        }
        v
    }

    fn xdp(&self, frame: &[u8]) -> u32 {
        self.bench.run_with_output(frame).expect("run").0
    }

    fn egress(&self, frame: &[u8]) -> i32 {
        self.bench.run_tc(dhcp::EGRESS, frame).expect("run").0
    }
}

/// One record, checked against the frame it copied, byte by byte.
fn check_record(r: &DhcpRecord, frame: &[u8], flags: u32, kind: u8) {
    assert_eq!(r.flags, flags, "flags");
    assert_eq!(r.kind, kind, "kind");
    assert_eq!(r.wire_len as usize, frame.len());
    assert_eq!(r.len as usize, frame.len());
    assert_eq!(&r.data[..frame.len()], frame);
}

fn ack() -> V4 {
    V4::reply(5, CLIENT, Ipv4Addr::new(10, 0, 0, 50), 3600)
}

const TRUSTED: &str = "[dhcp]\ntrusted = [\"10.0.0.1\", \"fe80::1\", \"02:aa:00:00:00:01\"]\n\
                       trusted_routers = [\"fe80::1\"]\n";

#[test]
fn trusted_servers_pass_and_are_copied_byte_for_byte() {
    let mut lab = Lab::new(&format!("{TRUSTED}rogue = \"block\"\n"));
    let f = ack().frame("10.0.0.1", "10.0.0.50");
    assert_eq!(lab.xdp(&f), XDP_PASS);
    let recs = lab.records();
    assert_eq!(recs.len(), 1);
    check_record(&recs[0], &f, REC_INGRESS, KIND_V4_SERVER);
    let c = lab.counters();
    assert_eq!(
        (
            c[DS_COPIED as usize],
            c[DS_TRUSTED as usize],
            c[DS_ROGUE as usize]
        ),
        (1, 1, 0)
    );

    // Trusted by MAC: the IP is on no list, the Ethernet source is.
    let f = craft::from_mac(
        ack().frame("10.7.7.7", "10.0.0.50"),
        [0x02, 0xaa, 0, 0, 0, 1],
    );
    assert_eq!(lab.xdp(&f), XDP_PASS);
    check_record(&lab.records()[0], &f, REC_INGRESS, KIND_V4_SERVER);

    // DHCPv6 and RA from the trusted link-local address.
    let v6 = craft::v6_frame("fe80::1", "fe80::2", &craft::v6_message(7, &[]));
    assert_eq!(lab.xdp(&v6), XDP_PASS);
    let ra = craft::ra_frame("fe80::1", "ff02::1", &craft::ra(1800, &[]));
    assert_eq!(lab.xdp(&ra), XDP_PASS);
    let recs = lab.records();
    assert_eq!(recs.len(), 2);
    check_record(&recs[0], &v6, REC_INGRESS, KIND_V6_SERVER);
    check_record(&recs[1], &ra, REC_INGRESS, KIND_RA);
    assert_eq!(lab.counters()[DS_TRUSTED as usize], 4);
}

#[test]
fn rogue_servers_and_routers_are_dropped_under_block_with_their_reason() {
    let mut lab = Lab::new(&format!("{TRUSTED}rogue = \"block\"\n"));
    let before_server = lab.reason(reason::DHCP_ROGUE_SERVER);
    let before_router = lab.reason(reason::DHCP_ROGUE_ROUTER);
    let offer = craft::from_mac(
        V4::reply(2, CLIENT, Ipv4Addr::new(10, 9, 0, 50), 60).frame("10.9.0.1", "255.255.255.255"),
        ROGUE_MAC,
    );
    assert_eq!(lab.xdp(&offer), XDP_DROP);
    let v6 = craft::v6_frame("fe80::66", "fe80::2", &craft::v6_message(2, &[]));
    assert_eq!(lab.xdp(&v6), XDP_DROP);
    // A trusted DHCP server is not a trusted router: roles are separate.
    let ra = craft::ra_frame("fe80::66", "ff02::1", &craft::ra(1800, &[]));
    assert_eq!(lab.xdp(&ra), XDP_DROP);
    let recs = lab.records();
    assert_eq!(recs.len(), 3);
    let rogue = REC_INGRESS | REC_ROGUE | REC_DROPPED;
    check_record(&recs[0], &offer, rogue, KIND_V4_SERVER);
    check_record(&recs[1], &v6, rogue, KIND_V6_SERVER);
    check_record(&recs[2], &ra, rogue, KIND_RA);
    let c = lab.counters();
    assert_eq!((c[DS_ROGUE as usize], c[DS_ROGUE_DROPPED as usize]), (3, 3));
    assert_eq!(lab.reason(reason::DHCP_ROGUE_SERVER) - before_server, 2);
    assert_eq!(lab.reason(reason::DHCP_ROGUE_ROUTER) - before_router, 1);

    // Behind a VLAN tag (and two, 802.1ad outside) the same.
    for (vlans, qinq) in [(&[10u16][..], false), (&[100, 10][..], true)] {
        let tagged = Frame::udp("10.9.0.1", "255.255.255.255", 67, 68)
            .with_vlans(vlans, qinq)
            .with_payload(&V4::reply(2, CLIENT, Ipv4Addr::new(10, 9, 0, 50), 60).bytes())
            .build();
        assert_eq!(lab.xdp(&tagged), XDP_DROP);
        check_record(&lab.records()[0], &tagged, rogue, KIND_V4_SERVER);
        let s = dhcp::wire::read_frame(&tagged, false).expect("read");
        assert!(matches!(s.message, dhcp::wire::Message::V4(ref m) if m.msg_type == Some(2)));
    }
    assert_eq!(lab.reason(reason::DHCP_ROGUE_SERVER) - before_server, 4);

    // The egress hook: a rogue server on this host is stopped on its way out, and the drop
    // counts with every other drop.
    let dropped_before = lab.bench.stat(stats::DROPPED).unwrap();
    assert_eq!(lab.egress(&offer), TC_ACT_SHOT);
    assert_eq!(lab.bench.stat(stats::DROPPED).unwrap() - dropped_before, 1);
    check_record(
        &lab.records()[0],
        &offer,
        REC_ROGUE | REC_DROPPED,
        KIND_V4_SERVER,
    );
    assert_eq!(lab.reason(reason::DHCP_ROGUE_SERVER) - before_server, 5);
    // ... and a trusted one goes.
    let f = ack().frame("10.0.0.1", "10.0.0.50");
    assert_eq!(lab.egress(&f), TC_ACT_UNSPEC);
    check_record(&lab.records()[0], &f, 0, KIND_V4_SERVER);
}

#[test]
fn alert_reports_rogues_and_lets_them_through() {
    let mut lab = Lab::new(&format!("{TRUSTED}rogue = \"alert\"\n"));
    let offer =
        V4::reply(2, CLIENT, Ipv4Addr::new(10, 9, 0, 50), 60).frame("10.9.0.1", "10.9.0.50");
    assert_eq!(lab.xdp(&offer), XDP_PASS);
    assert_eq!(lab.egress(&offer), TC_ACT_UNSPEC);
    let recs = lab.records();
    check_record(&recs[0], &offer, REC_INGRESS | REC_ROGUE, KIND_V4_SERVER);
    check_record(&recs[1], &offer, REC_ROGUE, KIND_V4_SERVER);
    let c = lab.counters();
    assert_eq!((c[DS_ROGUE as usize], c[DS_ROGUE_DROPPED as usize]), (2, 0));
}

#[test]
fn client_messages_and_other_traffic_are_never_judged() {
    let mut lab = Lab::new("[dhcp]\nrogue = \"block\"\n");
    // No server is trusted; clients still talk.
    let discover = V4::request(1, CLIENT, Some("pc")).frame("0.0.0.0", "255.255.255.255");
    assert_eq!(lab.xdp(&discover), XDP_PASS);
    assert_eq!(lab.egress(&discover), TC_ACT_UNSPEC);
    let solicit = craft::v6_frame("fe80::2", "ff02::1:2", &craft::v6_message(1, &[]));
    assert_eq!(lab.xdp(&solicit), XDP_PASS);
    // A BOOTREQUEST from port 67 (a relay toward a server) is not a server's message.
    let relayed = Frame::udp("10.0.0.254", "10.0.0.1", 67, 67)
        .with_payload(&V4::request(3, CLIENT, None).bytes())
        .build();
    assert_eq!(lab.xdp(&relayed), XDP_PASS);
    let recs = lab.records();
    assert_eq!(recs.len(), 4);
    check_record(&recs[0], &discover, REC_INGRESS, KIND_V4_CLIENT);
    check_record(&recs[1], &discover, 0, KIND_V4_CLIENT);
    check_record(&recs[2], &solicit, REC_INGRESS, KIND_V6_CLIENT);
    check_record(&recs[3], &relayed, REC_INGRESS, KIND_V4_CLIENT);
    // Not DHCP: DNS, a router solicitation, TCP to port 67; nothing copied.
    for f in [
        Frame::udp("10.0.0.1", "10.0.0.2", 5353, 53)
            .with_payload(&[2; 20])
            .build(),
        Frame::icmp("fe80::2", "ff02::2", 133, 0).build(),
        Frame::tcp("10.0.0.1", "10.0.0.2", 67, 68, 0x02).build(),
    ] {
        assert_eq!(lab.xdp(&f), XDP_PASS);
        assert_eq!(lab.egress(&f), TC_ACT_UNSPEC);
    }
    assert!(lab.records().is_empty());
    // UDP to a DHCP port with no payload byte to classify: counted, passed.
    let empty = Frame::udp("10.0.0.1", "10.0.0.2", 67, 68).build();
    assert_eq!(lab.xdp(&empty), XDP_PASS);
    assert_eq!(lab.counters()[DS_SHORT as usize], 1);
    assert!(lab.records().is_empty());
}

#[test]
fn without_dhcp_nothing_is_copied_and_generations_switch() {
    let mut lab = Lab::new("");
    let offer =
        V4::reply(2, CLIENT, Ipv4Addr::new(10, 9, 0, 50), 60).frame("10.9.0.1", "10.9.0.50");
    assert_eq!(lab.xdp(&offer), XDP_PASS);
    assert_eq!(lab.egress(&offer), TC_ACT_UNSPEC);
    assert!(lab.records().is_empty());
    assert_eq!(lab.counters()[DS_COPIED as usize], 0);
    // Turned on: dropped; the server trusted in the next policy: passes; off again.
    lab.install("[dhcp]\nrogue = \"block\"\n");
    assert_eq!(lab.xdp(&offer), XDP_DROP);
    lab.install("[dhcp]\nrogue = \"block\"\ntrusted = [\"10.9.0.1\"]\n");
    assert_eq!(lab.xdp(&offer), XDP_PASS);
    lab.install("[dhcp]\nrogue = \"block\"\ntrusted = [\"10.9.0.2\"]\n");
    assert_eq!(lab.xdp(&offer), XDP_DROP);
    lab.install("[dhcp]\nenabled = false\n");
    assert_eq!(lab.xdp(&offer), XDP_PASS);
    assert_eq!(lab.records().len(), 3);
}

#[test]
fn frames_longer_than_a_record_are_cut_and_flagged() {
    let mut lab = Lab::new("[dhcp]\n");
    let mut m = V4::request(3, CLIENT, None);
    m.options = vec![53, 1, 3];
    for _ in 0..12 {
        m.options.extend_from_slice(&[43, 200]);
        m.options.extend_from_slice(&[7; 200]);
    }
    m.options.push(255);
    let f = m.frame("10.0.0.50", "10.0.0.1");
    assert!(f.len() > RECORD_BYTES);
    assert_eq!(lab.xdp(&f), XDP_PASS);
    let r = lab.records().remove(0);
    assert_eq!(r.flags, REC_INGRESS | REC_CUT);
    assert_eq!(r.len as usize, RECORD_BYTES);
    assert_eq!(r.wire_len as usize, f.len());
    assert_eq!(&r.data[..], &f[..RECORD_BYTES]);
    assert_eq!(lab.counters()[DS_CUT as usize], 1);
}

#[test]
fn bad_dhcp_sections_are_refused_with_their_place() {
    for (text, want) in [
        (
            "[dhcp]\nrogue = \"drop\"\n",
            "`rogue` is \"alert\" or \"block\"",
        ),
        (
            "[dhcp]\ntrusted = [\"server1\"]\n",
            "neither an IP address nor a MAC",
        ),
        ("[dhcp]\ntrusted = [\"10.0.0.1\", \"10.0.0.1\"]\n", "twice"),
        (
            "[dhcp]\ntrusted_router = []\n",
            "unknown key `trusted_router`",
        ),
        ("[dhcp]\nenabled = 1\n", "`enabled` must be true or false"),
    ] {
        let e = config::parse_policy(text, "p.toml", Path::new("/")).expect_err(text);
        let msg = e.to_string();
        assert!(
            msg.contains("p.toml:") && msg.contains(want),
            "{text}: {msg}"
        );
    }
    let many: Vec<String> = (0..=palisade_common::dhcp::MAX_TRUSTED)
        .map(|i| format!("\"10.1.{}.{}\"", i >> 8, i & 255))
        .collect();
    let text = format!("[dhcp]\ntrusted = [{}]\n", many.join(", "));
    let e = config::parse_policy(&text, "p.toml", Path::new("/")).expect_err("too many");
    assert!(e.to_string().contains("at most 256 fit"), "{e}");
}
