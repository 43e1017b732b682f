//! The DHCP reader and the lease table, without the kernel: DHCPv4 option overload (options
//! in `file` and `sname`), long options split in parts, option 82, broken options (length
//! past the end, zero length, no end option), truncated messages; DHCPv6 IA_NA with
//! IAADDR, IA_PD, relay messages nested, error statuses; router advertisements and their
//! options; and a property test that feeds random and mutated bytes to every reader and to
//! the lease table and checks that nothing panics and every bound holds.
//!
//! Run with `cargo test --release -p palisade --test dhcp_wire`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use palisade::dhcp::{
    craft::{self, V4},
    leases::{LeaseKind, MAX_LEASES},
    runtime::Snooper,
    wire::{
        self, ACK, Anomalies, DISCOVER, MAX_DEPTH, MAX_HOSTNAME, MAX_ITEMS, Message, RELEASE,
        REQUEST,
    },
};
use palisade_common::dhcp::{
    KIND_RA, KIND_V4_CLIENT, KIND_V4_SERVER, KIND_V6_CLIENT, KIND_V6_SERVER, REC_DROPPED,
    REC_INGRESS, REC_ROGUE,
};
use proptest::prelude::*;

const CLIENT: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn yiaddr() -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 50)
}

#[test]
fn an_ack_gives_address_lease_time_server_and_hostname() {
    let mut m = V4::reply(ACK, CLIENT, yiaddr(), 3600);
    m.options.pop();
    m.options.extend_from_slice(&[12, 6]);
    m.options.extend_from_slice(b"laptop");
    m.options.push(255);
    let r = wire::read_v4(&m.bytes());
    assert_eq!(r.op, 2);
    assert_eq!(r.msg_type, Some(ACK));
    assert_eq!(r.yiaddr, yiaddr());
    assert_eq!(r.chaddr, Some(CLIENT));
    assert_eq!(r.lease_secs, Some(3600));
    assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(r.hostname.as_deref(), Some("laptop"));
    assert_eq!(r.xid, 0x1234_5678);
    assert_eq!(r.anomalies, Anomalies::default());
}

#[test]
fn option_overload_reads_file_then_sname() {
    // Option 52 = 3: the lease time lies in `file`, the hostname in `sname`.
    let mut m = V4::reply(ACK, CLIENT, yiaddr(), 0);
    m.options = vec![53, 1, ACK, 52, 1, 3, 255];
    m.file[..7].copy_from_slice(&[51, 4, 0, 0, 0x1c, 0x20, 255]);
    m.sname[..8].copy_from_slice(&[12, 5, b'p', b'h', b'o', b'n', b'e', 255]);
    let r = wire::read_v4(&m.bytes());
    assert_eq!(r.overload, 3);
    assert_eq!(r.lease_secs, Some(7200));
    assert_eq!(r.hostname.as_deref(), Some("phone"));
    assert_eq!(r.anomalies, Anomalies::default());

    // Only `file` (1): `sname` holds a server name, not options, and is not read.
    m.options = vec![53, 1, ACK, 52, 1, 1, 255];
    m.sname[..8].copy_from_slice(b"srvname\0");
    let r = wire::read_v4(&m.bytes());
    assert_eq!(r.lease_secs, Some(7200));
    assert_eq!(r.hostname, None);

    // A value other than 1..=3, or a second option 52 inside an overloaded field, is
    // flagged and the fields stay unread (or the first 52 stands).
    m.options = vec![53, 1, ACK, 52, 1, 9, 255];
    let r = wire::read_v4(&m.bytes());
    assert!(r.anomalies.has(Anomalies::BAD_OVERLOAD));
    assert_eq!(r.lease_secs, None);
    m.options = vec![53, 1, ACK, 52, 1, 1, 255];
    m.file[..10].copy_from_slice(&[52, 1, 2, 51, 4, 0, 0, 0, 60, 255]);
    let r = wire::read_v4(&m.bytes());
    assert!(r.anomalies.has(Anomalies::BAD_OVERLOAD));
    assert_eq!(r.overload, 1);
    assert_eq!(r.lease_secs, Some(60));
}

#[test]
fn long_options_split_in_parts_are_joined() {
    // RFC 3396: the same code twice is one value.
    let mut m = V4::request(REQUEST, CLIENT, None);
    m.options = vec![
        53, 1, REQUEST, 12, 3, b'w', b'o', b'r', 12, 4, b'k', b'p', b'c', b'1', 255,
    ];
    let r = wire::read_v4(&m.bytes());
    assert_eq!(r.hostname.as_deref(), Some("workpc1"));
}

#[test]
fn option_82_sub_options_are_read_and_a_broken_one_is_flagged() {
    let mut m = V4::request(DISCOVER, CLIENT, Some("pc"));
    m.options.pop();
    m.options
        .extend_from_slice(&[82, 12, 1, 4, b'e', b't', b'h', b'0', 2, 2, 0xaa, 0xbb, 9, 0]);
    m.options.push(255);
    let r = wire::read_v4(&m.bytes());
    let relay = r.relay.expect("option 82");
    assert_eq!(relay.circuit_id.as_deref(), Some(&b"eth0"[..]));
    assert_eq!(relay.remote_id.as_deref(), Some(&[0xaa, 0xbb][..]));
    assert_eq!(relay.others, 1);
    assert_eq!(r.anomalies, Anomalies::default());
    assert_eq!(r.hostname.as_deref(), Some("pc"));

    // A sub-option whose length runs past option 82's value.
    let mut m = V4::request(DISCOVER, CLIENT, None);
    m.options = vec![53, 1, DISCOVER, 82, 4, 1, 9, b'x', b'y', 255];
    let r = wire::read_v4(&m.bytes());
    assert!(r.anomalies.has(Anomalies::TRUNCATED_OPTION));
    assert_eq!(r.relay.expect("kept").circuit_id, None);
    assert_eq!(r.msg_type, Some(DISCOVER));
}

#[test]
fn broken_options_keep_what_came_before() {
    // The hostname's length runs past the end of the message.
    let mut m = V4::reply(ACK, CLIENT, yiaddr(), 600);
    m.options.pop();
    m.options.extend_from_slice(&[12, 200, b'a', b'b']);
    let r = wire::read_v4(&m.bytes());
    assert!(r.anomalies.has(Anomalies::TRUNCATED_OPTION));
    assert!(r.anomalies.has(Anomalies::NO_END));
    assert_eq!(r.lease_secs, Some(600));
    assert_eq!(r.hostname, None);

    // A code with no length byte at the very end.
    let mut m = V4::reply(ACK, CLIENT, yiaddr(), 600);
    m.options.pop();
    m.options.push(12);
    let r = wire::read_v4(&m.bytes());
    assert!(r.anomalies.has(Anomalies::TRUNCATED_OPTION));

    // Zero-length options: an empty hostname is none; a zero-length lease time or
    // message type is flagged as a bad length, not read.
    let mut m = V4::reply(ACK, CLIENT, yiaddr(), 0);
    m.options = vec![53, 1, ACK, 12, 0, 51, 0, 0, 0, 255];
    let r = wire::read_v4(&m.bytes());
    assert_eq!(r.hostname, None);
    assert_eq!(r.lease_secs, None);
    assert!(r.anomalies.has(Anomalies::BAD_LENGTH));
    assert!(!r.anomalies.has(Anomalies::NO_END));

    // No end option: what was there is read, and flagged.
    let mut m = V4::reply(ACK, CLIENT, yiaddr(), 90);
    m.options.pop();
    let r = wire::read_v4(&m.bytes());
    assert_eq!(r.lease_secs, Some(90));
    assert!(r.anomalies.has(Anomalies::NO_END));

    // A hostname with control bytes is kept printable and flagged; a C string's NUL goes.
    let mut m = V4::request(REQUEST, CLIENT, None);
    m.options = vec![53, 1, REQUEST, 12, 5, b'a', 0x1b, b'b', b'c', 0, 255];
    let r = wire::read_v4(&m.bytes());
    assert_eq!(r.hostname.as_deref(), Some("a?bc"));
    assert!(r.anomalies.has(Anomalies::BAD_HOSTNAME));
    // And a name longer than a DNS name is cut.
    let mut m = V4::request(REQUEST, CLIENT, None);
    m.options = vec![53, 1, REQUEST];
    for _ in 0..2 {
        m.options.extend_from_slice(&[12, 200]);
        m.options.extend_from_slice(&[b'x'; 200]);
    }
    m.options.push(255);
    assert_eq!(
        wire::read_v4(&m.bytes()).hostname.map(|h| h.len()),
        Some(MAX_HOSTNAME)
    );
}

#[test]
fn truncated_messages_are_flagged_not_read() {
    let full = V4::reply(ACK, CLIENT, yiaddr(), 600).bytes();
    for cut in [0, 1, 20, 235] {
        let r = wire::read_v4(&full[..cut]);
        assert!(r.anomalies.has(Anomalies::SHORT), "cut at {cut}");
        assert_eq!(r.msg_type, None);
    }
    // The fixed header whole, the cookie not: BOOTP without DHCP.
    let r = wire::read_v4(&full[..238]);
    assert!(r.anomalies.has(Anomalies::NO_COOKIE));
    assert_eq!(r.chaddr, Some(CLIENT));
    // A frame whose IP header promises more than was copied reads what is there.
    let frame = V4::reply(ACK, CLIENT, yiaddr(), 600).frame("10.0.0.1", "10.0.0.50");
    // (Only the end option is lost.)
    let s = wire::read_frame(&frame[..frame.len() - 1], false).expect("read");
    let Message::V4(m) = s.message else {
        panic!("not v4")
    };
    assert!(m.anomalies.has(Anomalies::CUT));
    assert!(m.anomalies.has(Anomalies::NO_END));
    assert_eq!(m.lease_secs, Some(600));
    // Not DHCP at all.
    let dns = palisade::craft::Frame::udp("10.0.0.1", "10.0.0.2", 5353, 53).build();
    assert_eq!(wire::read_frame(&dns, false), Err(wire::WireError::NotDhcp));
    assert!(wire::read_frame(&[0u8; 10], false).is_err());
}

fn v6_reply(mac: [u8; 6], addr: Ipv6Addr, valid: u32) -> Vec<u8> {
    let mut fqdn = vec![0u8];
    fqdn.extend_from_slice(&[
        6, b'd', b'e', b's', b'k', b't', b'p', 3, b'l', b'a', b'n', 0,
    ]);
    craft::v6_message(
        7,
        &[
            craft::v6_option(1, &craft::duid_ll(mac)),
            craft::v6_option(2, &[0, 3, 0, 1, 2, 0, 0, 0, 0, 1]),
            craft::ia_na(1, addr, valid / 2, valid),
            craft::v6_option(39, &fqdn),
        ],
    )
}

#[test]
fn dhcpv6_reply_with_ia_na_and_iaaddr() {
    let addr: Ipv6Addr = "fd00::50".parse().unwrap();
    let r = wire::read_v6(&v6_reply(CLIENT, addr, 7200));
    assert_eq!(r.msg_type, 7);
    assert_eq!(r.xid, 0xabcdef);
    assert_eq!(r.duid_mac(), Some(CLIENT));
    assert_eq!(r.bindings.len(), 1);
    assert_eq!(r.bindings[0].addr, addr);
    assert_eq!(r.bindings[0].prefix_len, 128);
    assert_eq!((r.bindings[0].preferred, r.bindings[0].valid), (3600, 7200));
    assert_eq!(r.hostname.as_deref(), Some("desktp.lan"));
    assert_eq!(r.anomalies, Anomalies::default());

    // IA_PD with an IAPREFIX.
    let mut pfx = vec![0, 0, 0, 10, 0, 0, 0, 20, 56];
    pfx.extend_from_slice(&"2001:db8:100::".parse::<Ipv6Addr>().unwrap().octets());
    let mut pd = vec![0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0];
    pd.extend_from_slice(&craft::v6_option(26, &pfx));
    let r = wire::read_v6(&craft::v6_message(7, &[craft::v6_option(25, &pd)]));
    assert_eq!(r.bindings[0].prefix_len, 56);
    assert_eq!(r.bindings[0].valid, 20);

    // An IA whose status is an error (NoAddrsAvail) gives nothing.
    let mut ia = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    ia.extend_from_slice(&craft::v6_option(13, &[0, 2, b'n', b'o']));
    let mut iaaddr = addr.octets().to_vec();
    iaaddr.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
    ia.extend_from_slice(&craft::v6_option(5, &iaaddr));
    let r = wire::read_v6(&craft::v6_message(7, &[craft::v6_option(3, &ia)]));
    assert!(r.bindings.is_empty());
}

#[test]
fn dhcpv6_relay_messages_nest_within_a_bound() {
    let inner = v6_reply(CLIENT, "fd00::51".parse().unwrap(), 100);
    let relay = |msg: &[u8]| {
        let mut b = vec![13, 0];
        b.extend_from_slice(&[0u8; 16]);
        b.extend_from_slice(&"fe80::1234".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&craft::v6_option(9, msg));
        b
    };
    let once = relay(&inner);
    let r = wire::read_v6(&once);
    assert_eq!(r.relays, 1);
    assert_eq!(r.msg_type, 7);
    assert_eq!(r.relay_peer, Some("fe80::1234".parse().unwrap()));
    assert_eq!(r.bindings.len(), 1);

    let mut deep = inner;
    for _ in 0..MAX_DEPTH + 3 {
        deep = relay(&deep);
    }
    let r = wire::read_v6(&deep);
    assert!(r.anomalies.has(Anomalies::TOO_DEEP));
    assert!(r.bindings.is_empty());
}

#[test]
fn dhcpv6_broken_options() {
    // An option whose length runs past the end; then one cut inside its header.
    let mut msg = craft::v6_message(7, &[craft::v6_option(1, &craft::duid_ll(CLIENT))]);
    msg.extend_from_slice(&[0, 3, 0x40, 0, 1, 2]);
    let r = wire::read_v6(&msg);
    assert!(r.anomalies.has(Anomalies::TRUNCATED_OPTION));
    assert_eq!(r.duid_mac(), Some(CLIENT));
    let r = wire::read_v6(&[7, 0, 0, 1, 0, 3]);
    assert!(r.anomalies.has(Anomalies::TRUNCATED_OPTION));
    // An IA_NA shorter than its fixed fields, an IAADDR shorter than its own.
    let r = wire::read_v6(&craft::v6_message(7, &[craft::v6_option(3, &[0; 5])]));
    assert!(r.anomalies.has(Anomalies::BAD_LENGTH));
    let mut ia = vec![0; 12];
    ia.extend_from_slice(&craft::v6_option(5, &[0; 10]));
    let r = wire::read_v6(&craft::v6_message(7, &[craft::v6_option(3, &ia)]));
    assert!(r.anomalies.has(Anomalies::BAD_LENGTH));
    // Empty and short messages.
    assert!(wire::read_v6(&[]).anomalies.has(Anomalies::SHORT));
    assert!(wire::read_v6(&[7, 1]).anomalies.has(Anomalies::SHORT));
    assert!(wire::read_v6(&[13, 0, 1]).anomalies.has(Anomalies::SHORT));
    // More addresses than a message may give.
    let opts: Vec<Vec<u8>> = (0..MAX_ITEMS + 5)
        .map(|i| craft::ia_na(i as u32, Ipv6Addr::from(i as u128 + 1), 1, 2))
        .collect();
    let r = wire::read_v6(&craft::v6_message(7, &opts));
    assert_eq!(r.bindings.len(), MAX_ITEMS);
    assert!(r.anomalies.has(Anomalies::TOO_MANY));
}

#[test]
fn router_advertisements_and_their_options() {
    let prefix: Ipv6Addr = "2001:db8:1::".parse().unwrap();
    let mut rdnss = vec![25, 3, 0, 0, 0, 0, 0x0e, 0x10];
    rdnss.extend_from_slice(&"2001:db8::53".parse::<Ipv6Addr>().unwrap().octets());
    let ra = craft::ra(
        1800,
        &[
            craft::ra_source(SERVER_MAC),
            craft::ra_prefix(prefix, 64, 86400, 14400),
            vec![5, 1, 0, 0, 0, 0, 0x05, 0xdc],
            rdnss,
        ],
    );
    let r = wire::read_ra(&ra);
    assert_eq!(r.lifetime, 1800);
    assert_eq!(r.hop_limit, 64);
    assert_eq!(r.source_mac, Some(SERVER_MAC));
    assert_eq!(r.prefixes.len(), 1);
    assert_eq!((r.prefixes[0].prefix, r.prefixes[0].len), (prefix, 64));
    assert_eq!(r.prefixes[0].valid, 86400);
    assert_eq!(r.mtu, Some(1500));
    assert_eq!(r.dns, vec!["2001:db8::53".parse::<Ipv6Addr>().unwrap()]);
    assert_eq!(r.anomalies, Anomalies::default());

    // A zero-length option ends the walk (RFC 4861 would discard the packet).
    let r = wire::read_ra(&craft::ra(
        1800,
        &[
            craft::ra_source(SERVER_MAC),
            vec![3, 0, 0, 0],
            craft::ra_prefix(prefix, 64, 1, 1),
        ],
    ));
    assert!(r.anomalies.has(Anomalies::ZERO_LENGTH));
    assert_eq!(r.source_mac, Some(SERVER_MAC));
    assert!(r.prefixes.is_empty());
    // Past the end; a prefix option of the wrong size; a short header.
    let r = wire::read_ra(&craft::ra(0, &[vec![3, 4, 64, 0]]));
    assert!(r.anomalies.has(Anomalies::TRUNCATED_OPTION));
    let r = wire::read_ra(&craft::ra(0, &[vec![3, 1, 0, 0, 0, 0, 0, 0]]));
    assert!(r.anomalies.has(Anomalies::BAD_LENGTH));
    assert!(wire::read_ra(&[134, 0, 0]).anomalies.has(Anomalies::SHORT));
    // In a frame.
    let f = craft::ra_frame("fe80::1", "ff02::1", &craft::ra(600, &[]));
    let s = wire::read_frame(&f, false).expect("read");
    assert!(matches!(s.message, Message::Ra(ref r) if r.lifetime == 600));
}

#[test]
fn the_lease_table_follows_requests_acks_and_releases() {
    let mut s = Snooper::default();
    let now = 1_000_000;
    let req = V4::request(REQUEST, CLIENT, Some("laptop")).frame("0.0.0.0", "255.255.255.255");
    assert!(s.frame(&req, 0, KIND_V4_CLIENT, "eth0", now).is_empty());
    let ack = V4::reply(ACK, CLIENT, yiaddr(), 3600).frame("10.0.0.1", "10.0.0.50");
    let ev = s.frame(&ack, REC_INGRESS, KIND_V4_SERVER, "eth0", now);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].event, ev[0].hostname.as_deref()),
        ("lease", Some("laptop"))
    );
    let l = s.table.list();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].kind, LeaseKind::Dhcpv4);
    assert_eq!(l[0].mac, "02:11:22:33:44:55");
    assert_eq!(l[0].ip, "10.0.0.50");
    assert_eq!(l[0].hostname.as_deref(), Some("laptop"));
    assert_eq!(l[0].lease_end, Some(now + 3600));
    assert!(l[0].trusted);
    // A renewal moves the end.
    let ev = s.frame(&ack, REC_INGRESS, KIND_V4_SERVER, "eth0", now + 100);
    assert_eq!(ev[0].event, "renew");
    assert_eq!(s.table.list()[0].lease_end, Some(now + 3700));
    // The client lets it go.
    let mut rel = V4::request(RELEASE, CLIENT, None);
    rel.ciaddr = yiaddr();
    let ev = s.frame(
        &rel.frame("10.0.0.50", "10.0.0.1"),
        0,
        KIND_V4_CLIENT,
        "eth0",
        now,
    );
    assert_eq!(ev[0].event, "release");
    assert!(s.table.is_empty());

    // DHCPv6: a REPLY, then a lifetime of 0 ends it.
    let addr: Ipv6Addr = "fd00::50".parse().unwrap();
    let f = craft::v6_frame("fe80::1", "fe80::2", &v6_reply(CLIENT, addr, 7200));
    let ev = s.frame(&f, REC_INGRESS, KIND_V6_SERVER, "eth0", now);
    assert_eq!(ev[0].hostname.as_deref(), Some("desktp.lan"));
    let l = s.table.list();
    assert_eq!(
        (l[0].kind, l[0].ip.as_str()),
        (LeaseKind::Dhcpv6, "fd00::50")
    );
    assert_eq!(l[0].lease_end, Some(now + 7200));
    let f = craft::v6_frame("fe80::1", "fe80::2", &v6_reply(CLIENT, addr, 0));
    assert_eq!(
        s.frame(&f, REC_INGRESS, KIND_V6_SERVER, "eth0", now)[0].event,
        "release"
    );
    assert!(s.table.is_empty());

    // A router: its prefixes; expired once past the longest lifetime.
    let ra = craft::ra(
        1800,
        &[craft::ra_prefix(
            "2001:db8:1::ffff".parse().unwrap(),
            64,
            86400,
            3600,
        )],
    );
    let f = craft::from_mac(craft::ra_frame("fe80::1", "ff02::1", &ra), SERVER_MAC);
    assert_eq!(
        s.frame(&f, REC_INGRESS, KIND_RA, "eth0", now)[0].event,
        "router"
    );
    let l = s.table.list();
    assert_eq!(l[0].kind, LeaseKind::Router);
    assert_eq!(l[0].mac, "02:00:00:00:00:01");
    assert_eq!(l[0].prefixes, vec!["2001:db8:1::/64".to_string()]);
    assert_eq!(l[0].lease_end, Some(now + 86400));
    s.expire(now + 86401);
    assert!(s.table.is_empty());
}

#[test]
fn rogues_are_reported_once_in_a_while_and_dropped_ones_give_no_lease() {
    let mut s = Snooper::default();
    let now = 5_000;
    let offer = V4::reply(2, CLIENT, yiaddr(), 60).frame("10.9.9.9", "255.255.255.255");
    let ev = s.frame(&offer, REC_INGRESS | REC_ROGUE, KIND_V4_SERVER, "eth0", now);
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].event, ev[0].verdict), ("rogue", "alert"));
    assert!(ev[0].server.starts_with("10.9.9.9 "));
    // The same source again within the repeat interval: no new report.
    assert!(
        s.frame(
            &offer,
            REC_INGRESS | REC_ROGUE,
            KIND_V4_SERVER,
            "eth0",
            now + 1
        )
        .is_empty()
    );
    let ev = s.frame(
        &offer,
        REC_INGRESS | REC_ROGUE,
        KIND_V4_SERVER,
        "eth0",
        now + 11,
    );
    assert_eq!(ev.len(), 1);
    // A dropped rogue ACK: reported (by a new source), never leased.
    let ack = V4::reply(ACK, CLIENT, yiaddr(), 60).frame("10.9.9.8", "10.0.0.50");
    let ev = s.frame(
        &ack,
        REC_INGRESS | REC_ROGUE | REC_DROPPED,
        KIND_V4_SERVER,
        "eth0",
        now,
    );
    assert_eq!((ev[0].event, ev[0].verdict), ("rogue", "drop"));
    assert_eq!(ev.len(), 1);
    assert!(s.table.is_empty());
    // An alerted rogue ACK reaches the client: leased, marked untrusted (the source was
    // reported a moment ago: no second report).
    let ev = s.frame(
        &ack,
        REC_INGRESS | REC_ROGUE,
        KIND_V4_SERVER,
        "eth0",
        now + 5,
    );
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].event, "lease");
    assert!(!s.table.list()[0].trusted);
    assert_eq!(s.tally.rogue_reports, 3);
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Valid messages of every kind, as frames, to mutate.
fn seeds() -> Vec<(Vec<u8>, u8)> {
    let mut ov = V4::reply(ACK, CLIENT, yiaddr(), 0);
    ov.options = vec![
        53, 1, ACK, 52, 1, 3, 82, 6, 1, 4, b'e', b't', b'h', b'0', 255,
    ];
    ov.file[..7].copy_from_slice(&[51, 4, 0, 0, 0x1c, 0x20, 255]);
    ov.sname[..8].copy_from_slice(&[12, 5, b'p', b'h', b'o', b'n', b'e', 255]);
    vec![
        (
            V4::request(REQUEST, CLIENT, Some("pc")).frame("0.0.0.0", "255.255.255.255"),
            KIND_V4_CLIENT,
        ),
        (
            V4::reply(ACK, CLIENT, yiaddr(), 60).frame("10.0.0.1", "10.0.0.50"),
            KIND_V4_SERVER,
        ),
        (ov.frame("10.0.0.1", "10.0.0.50"), KIND_V4_SERVER),
        (
            craft::v6_frame(
                "fe80::1",
                "fe80::2",
                &v6_reply(CLIENT, "fd00::9".parse().unwrap(), 60),
            ),
            KIND_V6_SERVER,
        ),
        (
            craft::v6_frame(
                "fe80::2",
                "ff02::1:2",
                &craft::v6_message(1, &[craft::v6_option(1, &craft::duid_ll(CLIENT))]),
            ),
            KIND_V6_CLIENT,
        ),
        (
            craft::ra_frame(
                "fe80::1",
                "ff02::1",
                &craft::ra(
                    60,
                    &[
                        craft::ra_source(SERVER_MAC),
                        craft::ra_prefix(Ipv6Addr::LOCALHOST, 64, 9, 9),
                    ],
                ),
            ),
            KIND_RA,
        ),
    ]
}

#[test]
fn wire_never_panics_on_random_or_mutated_bytes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut s = Snooper::default();
    let seeds = seeds();
    let flags = [0, REC_INGRESS, REC_ROGUE, REC_ROGUE | REC_DROPPED];
    let mut read = 0usize;
    for round in 0..200_000u64 {
        let (mut b, kind) = seeds[rng.below(seeds.len())].clone();
        match round % 4 {
            // Random bytes after a valid frame's headers (Ethernet + IP + UDP kept).
            0 => {
                let keep = 42.min(b.len());
                b.truncate(keep);
                let n = rng.below(700);
                b.extend((0..n).map(|_| rng.next() as u8));
            }
            // Flipped bytes anywhere past the headers.
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let i = 42 + rng.below(b.len() - 42);
                    b[i] = rng.next() as u8;
                }
            }
            // Cut anywhere.
            2 => b.truncate(rng.below(b.len() + 1)),
            // Pure noise through the message readers.
            _ => {
                let n = rng.below(600);
                let noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                let _ = wire::read_v4(&noise);
                let _ = wire::read_v6(&noise);
                let _ = wire::read_ra(&noise);
                continue;
            }
        }
        if wire::read_frame(&b, false).is_ok() {
            read += 1;
        }
        let f = flags[rng.below(flags.len())];
        for e in s.frame(&b, f, kind, "eth0", 1_000 + round / 1000) {
            assert!(e.hostname.as_ref().is_none_or(|h| h.len() <= MAX_HOSTNAME));
        }
        assert!(s.table.len() <= MAX_LEASES);
    }
    // The loop exercised the readers, not only the frame parser's refusals.
    assert!(read > 50_000, "only {read} frames read");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn any_option_area_reads_without_panic(opts in proptest::collection::vec(any::<u8>(), 0..400),
                                           sname in proptest::collection::vec(any::<u8>(), 64),
                                           file in proptest::collection::vec(any::<u8>(), 128)) {
        let mut m = V4::reply(ACK, CLIENT, yiaddr(), 0);
        m.options = opts;
        m.sname.copy_from_slice(&sname);
        m.file.copy_from_slice(&file);
        let r = wire::read_v4(&m.bytes());
        prop_assert!(r.hostname.as_ref().is_none_or(|h| h.len() <= MAX_HOSTNAME));
        prop_assert_eq!(r.chaddr, Some(CLIENT));
    }

    #[test]
    fn any_dhcpv6_or_ra_body_reads_without_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let r = wire::read_v6(&body);
        prop_assert!(r.bindings.len() <= MAX_ITEMS);
        let ra = wire::read_ra(&body);
        prop_assert!(ra.prefixes.len() <= MAX_ITEMS);
    }
}

#[test]
fn addresses_of_both_families_in_the_frame() {
    let f = V4::reply(ACK, CLIENT, yiaddr(), 1).frame("10.0.0.1", "10.0.0.50");
    let s = wire::read_frame(&f, false).expect("read");
    assert_eq!(s.src, IpAddr::from([10, 0, 0, 1]));
    assert_eq!(s.src_mac, [2, 0, 0, 0, 0, 1]);
    let f = craft::v6_frame("fe80::1", "fe80::2", &craft::v6_message(7, &[]));
    let s = wire::read_frame(&f, false).expect("read");
    assert_eq!(s.src, "fe80::1".parse::<IpAddr>().unwrap());
}
