//! The shields of `[shield]` in the kernel, through `BPF_PROG_TEST_RUN`: the SYN-cookie
//! SYN-ACK checked byte by byte (addresses, checksums, options) over IPv4 and IPv6, with and
//! without a VLAN tag; cookie ACKs accepted and forged ones refused; invalid TCP and
//! unsolicited reflector datagrams dropped with their reasons.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test shield_xdp`.

use std::{net::IpAddr, path::Path};

use palisade::{
    craft::{checksum, ip},
    policy::config,
    testrun::Bench,
};
use palisade_common::{
    reason,
    shield::{
        SH_COOKIE_INVALID, SH_COOKIE_SENT, SH_COOKIE_UNANSWERED, SH_COOKIE_VALID, SH_SYN_TO_STACK,
    },
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const CLIENT: &str = "198.51.100.7";
const SERVER: &str = "192.0.2.1";
const CLIENT6: &str = "2001:db8::7";
const SERVER6: &str = "2001:db8::1";

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// Linux's SYN options: MSS 1460, SACK permitted, timestamp, NOP, window scale 7.
fn linux_options(tsval: u32) -> Vec<u8> {
    let mut o = vec![2, 4, 5, 180, 4, 2, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, 7]);
    o
}

/// A TCP segment in an Ethernet frame (optionally VLAN-tagged), with valid checksums.
#[derive(Clone)]
struct Seg {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    options: Vec<u8>,
    vlan: Option<u16>,
}

impl Seg {
    fn syn(src: &str, dst: &str, options: Vec<u8>) -> Self {
        Self {
            src: ip(src),
            dst: ip(dst),
            sport: 40000,
            dport: 80,
            seq: 0x1000_0000,
            ack: 0,
            flags: 0x02,
            options,
            vlan: None,
        }
    }

    fn frame(&self) -> Vec<u8> {
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push(((20 + self.options.len()) / 4) as u8 * 16);
        tcp.push(self.flags);
        tcp.extend_from_slice(&64240u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&self.options);
        let mut f = Vec::new();
        f.extend_from_slice(&SERVER_MAC);
        f.extend_from_slice(&CLIENT_MAC);
        if let Some(v) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let pseudo = pseudo_sum(&s.octets(), &d.octets(), tcp.len());
                let c = checksum(&tcp, pseudo);
                tcp[16..18].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&[0x08, 0x00]);
                let mut h = vec![0x45, 0];
                h.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                let c = checksum(&h, 0);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let pseudo = pseudo_sum(&s.octets(), &d.octets(), tcp.len());
                let c = checksum(&tcp, pseudo);
                tcp[16..18].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&[0x86, 0xdd]);
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
                f.extend_from_slice(&[6, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed families"),
        }
        f.extend_from_slice(&tcp);
        f
    }
}

/// The pseudo-header's partial sum (addresses, protocol 6, TCP length).
fn pseudo_sum(src: &[u8], dst: &[u8], len: usize) -> u32 {
    let mut sum = 6 + len as u32;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    sum
}

/// What a SYN-ACK frame says, read independently of the code that wrote it.
struct SynAck {
    seq: u32,
    options: Vec<u8>,
}

/// Checks every byte of the answer to `syn` that does not depend on the cookie or the clock,
/// and both checksums, then returns the cookie and the options.
fn check_synack(syn: &Seg, out: &[u8]) -> SynAck {
    assert_eq!(&out[..6], &CLIENT_MAC, "destination MAC is the client's");
    assert_eq!(&out[6..12], &SERVER_MAC, "source MAC is ours");
    let mut at = 12;
    if let Some(v) = syn.vlan {
        assert_eq!(
            &out[12..16],
            &[0x81, 0x00, (v >> 8) as u8, v as u8],
            "VLAN tag kept"
        );
        at = 16;
    }
    let (tcp, pseudo) = match (syn.src, syn.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            assert_eq!(&out[at..at + 2], &[0x08, 0x00]);
            let h = &out[at + 2..at + 22];
            assert_eq!(h[0], 0x45, "IPv4, no options");
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            assert_eq!(total, out.len() - at - 2, "total length is the frame's");
            assert_eq!(h[6] & 0x40, 0x40, "don't fragment");
            assert_eq!((h[8], h[9]), (64, 6), "TTL 64, TCP");
            assert_eq!(&h[12..16], &d.octets(), "from the server");
            assert_eq!(&h[16..20], &s.octets(), "to the client");
            assert_eq!(checksum(h, 0), 0, "IPv4 header checksum");
            let tcp = &out[at + 22..];
            (tcp, pseudo_sum(&d.octets(), &s.octets(), tcp.len()))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            assert_eq!(&out[at..at + 2], &[0x86, 0xdd]);
            let h = &out[at + 2..at + 42];
            assert_eq!(h[0] >> 4, 6);
            assert_eq!(
                usize::from(u16::from_be_bytes([h[4], h[5]])),
                out.len() - at - 42
            );
            assert_eq!((h[6], h[7]), (6, 64), "TCP, hop limit 64");
            assert_eq!(&h[8..24], &d.octets());
            assert_eq!(&h[24..40], &s.octets());
            let tcp = &out[at + 42..];
            (tcp, pseudo_sum(&d.octets(), &s.octets(), tcp.len()))
        }
        _ => unreachable!(),
    };
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), syn.dport);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), syn.sport);
    let seq = u32::from_be_bytes(tcp[4..8].try_into().unwrap());
    let ack = u32::from_be_bytes(tcp[8..12].try_into().unwrap());
    assert_eq!(ack, syn.seq.wrapping_add(1), "the SYN is acknowledged");
    let doff = usize::from(tcp[12] >> 4) * 4;
    assert_eq!(doff, tcp.len(), "no payload");
    assert_eq!(tcp[13], 0x12, "SYN and ACK");
    // The largest window of whole segments of the MSS offered (1460 for IPv4, 1440 for IPv6).
    let mss = if syn.src.is_ipv4() { 1460 } else { 1440 };
    assert_eq!(u16::from_be_bytes([tcp[14], tcp[15]]), 65535 - 65535 % mss);
    assert_eq!(checksum(tcp, pseudo), 0, "TCP checksum");
    assert_eq!(&tcp[18..20], &[0, 0], "no urgent pointer");
    SynAck {
        seq,
        options: tcp[20..].to_vec(),
    }
}

fn policy(extra: &str) -> palisade::policy::model::Policy {
    let text = format!(
        "[firewall]\ndefault = \"drop\"\nstateful = true\n\
         [[firewall.rule]]\naction = \"allow\"\nproto = \"tcp\"\ndport = 80\n\
         [shield]\nsyn_ports = [80]\nsyn_cookies = \"on\"\nwscale = 9\n{extra}"
    );
    config::parse_policy(&text, "shield.toml", Path::new("/")).expect("valid policy")
}

fn counter(bench: &Bench, i: u32) -> u64 {
    palisade::shield::counters(&bench.ebpf).expect("shield counters")[i as usize]
}

/// The client's ACK of a SYN-ACK: `ack` acknowledges `cookie + 1 + ack_delta`.
fn ack_of(syn: &Seg, a: &SynAck, ack_delta: u32, options: Vec<u8>) -> Seg {
    Seg {
        seq: syn.seq.wrapping_add(1),
        ack: a.seq.wrapping_add(1).wrapping_add(ack_delta),
        flags: 0x10,
        options,
        ..syn.clone()
    }
}

/// The timestamp option an ACK echoing `tsecr` carries (NOP, NOP, TS).
fn ts_echo(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

#[test]
fn cookie_synacks_are_right_byte_by_byte_and_their_acks_open_the_flow() {
    for (client, server) in [(CLIENT, SERVER), (CLIENT6, SERVER6)] {
        for vlan in [None, Some(100)] {
            let mut bench = Bench::new().expect("load");
            bench
                .install(&policy("tcp_invalid = \"drop\"\n"))
                .expect("install");
            let mut syn = Seg::syn(client, server, linux_options(0xdead_beef));
            syn.vlan = vlan;
            // The first SYN goes on to the stack, whose own cookie keeps the listener taking
            // them; the ones after it are answered here.
            assert_eq!(
                bench.run(&syn.frame()).unwrap(),
                XDP_PASS,
                "{client} {vlan:?}"
            );
            assert_eq!(counter(&bench, SH_SYN_TO_STACK), 1);
            syn.sport += 1;
            let (action, out) = bench.run_with_output(&syn.frame()).unwrap();
            assert_eq!(action, XDP_TX, "{client} {vlan:?}");
            let a = check_synack(&syn, &out);
            // MSS, SACK permitted, timestamp, NOP, window scale: as Linux lays them out.
            let mss: u16 = if client == CLIENT { 1460 } else { 1440 };
            let o = &a.options;
            assert_eq!(o.len(), 20);
            assert_eq!(&o[..4], &[2, 4, (mss >> 8) as u8, mss as u8]);
            assert_eq!(&o[4..8], &[4, 2, 8, 10]);
            let tsval = u32::from_be_bytes(o[8..12].try_into().unwrap());
            assert_eq!(
                tsval & 0x3f,
                7 | 0x10,
                "client's wscale 7 and SACK in the timestamp"
            );
            assert_eq!(
                &o[12..16],
                &0xdead_beefu32.to_be_bytes(),
                "the client's tsval echoed"
            );
            assert_eq!(&o[16..], &[1, 3, 3, 9], "our window scale");
            assert_eq!(counter(&bench, SH_COOKIE_SENT), 1);
            assert_eq!(counter(&bench, SH_COOKIE_UNANSWERED), 0);

            // The client's ACK brings the cookie back: the flow is tracked from it on.
            let ack = ack_of(&syn, &a, 0, ts_echo(0xdead_bef0, tsval));
            assert_eq!(
                bench.run(&ack.frame()).unwrap(),
                XDP_PASS,
                "{client} {vlan:?}"
            );
            assert_eq!(counter(&bench, SH_COOKIE_VALID), 1);
            let data = Seg {
                flags: 0x18,
                options: ts_echo(0xdead_bef1, tsval),
                ..ack.clone()
            };
            assert_eq!(bench.run(&data.frame()).unwrap(), XDP_PASS, "established");
            assert_eq!(
                counter(&bench, SH_COOKIE_VALID),
                1,
                "one validation per flow"
            );
            // The flow's windows are known from the cookie ACK (not picked up): blind resets
            // and acknowledgements far outside them are invalid, and dropped.
            for flags in [0x04, 0x10, 0x14] {
                let blind = Seg {
                    flags,
                    seq: data.seq.wrapping_add(0x8000_0000),
                    options: Vec::new(),
                    ..data.clone()
                };
                assert_eq!(
                    bench.run(&blind.frame()).unwrap(),
                    XDP_DROP,
                    "blind {flags:#x}"
                );
            }
            // The server's answer, in its window, is established, and so is the client's
            // acknowledgement of it.
            let reply = Seg {
                src: data.dst,
                dst: data.src,
                sport: data.dport,
                dport: data.sport,
                seq: a.seq.wrapping_add(1),
                ack: data.seq.wrapping_add(1),
                flags: 0x18,
                options: Vec::new(),
                vlan: data.vlan,
            };
            assert_eq!(bench.run_ct_egress(&reply.frame()).unwrap(), -1);
            let more = Seg {
                seq: data.seq.wrapping_add(1),
                ack: a.seq.wrapping_add(1),
                flags: 0x10,
                options: ts_echo(0xdead_bef2, tsval),
                ..data.clone()
            };
            assert_eq!(bench.run(&more.frame()).unwrap(), XDP_PASS, "in-window ACK");

            // Forged ACKs, against another answered SYN: a wrong cookie, the right cookie
            // from another port or with another sequence number, and to a port without
            // cookies.
            let mut syn = syn.clone();
            syn.sport += 10;
            let (action, out) = bench.run_with_output(&syn.frame()).unwrap();
            assert_eq!(action, XDP_TX);
            let a = check_synack(&syn, &out);
            // (A cookie one higher can still be valid: its low bits index the kernel's MSS
            // table, and the next index may exist. The kernel's own check is what decides.)
            let forged = [
                ack_of(&syn, &a, 0x5a5a_0000, Vec::new()),
                Seg {
                    sport: syn.sport + 1,
                    ..ack_of(&syn, &a, 0, Vec::new())
                },
                Seg {
                    seq: syn.seq.wrapping_add(1000),
                    ..ack_of(&syn, &a, 0, Vec::new())
                },
                Seg {
                    dport: 81,
                    ..ack_of(&syn, &a, 0, Vec::new())
                },
            ];
            for (i, f) in forged.iter().enumerate() {
                assert_eq!(
                    bench.run(&f.frame()).unwrap(),
                    XDP_DROP,
                    "forged ACK {i} {client} {vlan:?}"
                );
            }
            assert_eq!(bench.reason_count(reason::SHIELD_TCP_INVALID).unwrap(), 7);
            // Port 81 has no cookies: not counted as a cookie failure. (The blind ACK above,
            // invalid in its flow, was checked for a cookie too: the tracker's verdict does
            // not say whether the flow exists.)
            assert_eq!(counter(&bench, SH_COOKIE_INVALID), 4);
        }
    }
}

#[test]
fn syns_with_few_or_no_options_are_answered_with_what_the_kernel_keeps() {
    let mut bench = Bench::new().expect("load");
    bench.install(&policy("")).expect("install");
    let warm = Seg::syn(CLIENT, SERVER, Vec::new());
    assert_eq!(bench.run(&warm.frame()).unwrap(), XDP_PASS);
    // An option-less SYN (hping3's): the header length is 20, and the answer offers the
    // MSS alone (without a timestamp the kernel's cookie keeps no options).
    let mut bare = Seg::syn(CLIENT, SERVER, Vec::new());
    bare.sport = 41000;
    let (action, out) = bench.run_with_output(&bare.frame()).unwrap();
    assert_eq!(action, XDP_TX);
    assert_eq!(check_synack(&bare, &out).options, vec![2, 4, 5, 180]);
    // Window scale and SACK without a timestamp: still the MSS alone.
    let mut no_ts = Seg::syn(CLIENT, SERVER, vec![2, 4, 5, 180, 1, 1, 4, 2, 1, 3, 3, 7]);
    no_ts.sport = 41001;
    let (action, out) = bench.run_with_output(&no_ts.frame()).unwrap();
    assert_eq!(action, XDP_TX);
    assert_eq!(check_synack(&no_ts, &out).options, vec![2, 4, 5, 180]);
    // A timestamp without SACK or window scale: NOPs where SACK would be, no window scale,
    // and the timestamp says so (0xf: no scaling).
    let mut ts_only = Seg::syn(
        CLIENT,
        SERVER,
        vec![2, 4, 5, 180, 1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0],
    );
    ts_only.sport = 41002;
    let (action, out) = bench.run_with_output(&ts_only.frame()).unwrap();
    assert_eq!(action, XDP_TX);
    let o = check_synack(&ts_only, &out).options;
    assert_eq!(o.len(), 16);
    assert_eq!(&o[..8], &[2, 4, 5, 180, 1, 1, 8, 10]);
    assert_eq!(u32::from_be_bytes(o[8..12].try_into().unwrap()) & 0x3f, 0xf);
    // A full 60-byte header (options padded with NOPs) is accepted by the helper too.
    let mut long = linux_options(5);
    long.extend_from_slice(&[1; 20]);
    let mut full = Seg::syn(CLIENT, SERVER, long);
    full.sport = 41003;
    let (action, out) = bench.run_with_output(&full.frame()).unwrap();
    assert_eq!(action, XDP_TX);
    assert_eq!(check_synack(&full, &out).options.len(), 20);
    assert_eq!(counter(&bench, SH_COOKIE_UNANSWERED), 0);
}

#[test]
fn cookies_engage_on_the_aggregate_syn_rate_only() {
    let mut bench = Bench::new().expect("load");
    let text = "[firewall]\ndefault = \"drop\"\nstateful = true\n\
         [[firewall.rule]]\naction = \"allow\"\nproto = \"tcp\"\ndport = 80\n\
         [shield]\nsyn_ports = [80]\nsyn_rate = 20\nsyn_hold = 60\n";
    let p = config::parse_policy(text, "s.toml", Path::new("/")).unwrap();
    bench.install(&p).unwrap();
    // Twenty SYNs from twenty sources in a second: under the rate, the stack answers.
    let mut actions = Vec::new();
    for i in 0..40u16 {
        let mut s = Seg::syn(&format!("203.0.113.{}", i + 1), SERVER, linux_options(1));
        s.sport = 30000 + i;
        actions.push(bench.run(&s.frame()).unwrap());
    }
    assert!(actions[..20].iter().all(|&a| a == XDP_PASS), "{actions:?}");
    // Over it: one more goes to the stack (the listener's refresh), then cookies answer.
    assert_eq!(actions[20], XDP_PASS, "{actions:?}");
    assert!(actions[21..].iter().all(|&a| a == XDP_TX), "{actions:?}");
    // A SYN to another port is not counted nor answered (the rules drop it).
    let other = Seg {
        dport: 22,
        ..Seg::syn(CLIENT, SERVER, linux_options(1))
    };
    assert_eq!(bench.run(&other.frame()).unwrap(), XDP_DROP);
}

#[test]
fn invalid_tcp_and_unsolicited_reflector_datagrams_are_dropped_with_their_reasons() {
    let mut bench = Bench::new().expect("load");
    let text = "[firewall]\ndefault = \"allow\"\n\
         [shield]\ntcp_invalid = \"drop\"\namplification = true\n";
    let p = config::parse_policy(text, "s.toml", Path::new("/")).unwrap();
    bench.install(&p).unwrap();
    // An ACK and a RST of no flow: dropped, though the rules allow everything.
    for flags in [0x10, 0x04, 0x11] {
        let s = Seg {
            flags,
            ack: 5,
            ..Seg::syn(CLIENT, SERVER, Vec::new())
        };
        assert_eq!(bench.run(&s.frame()).unwrap(), XDP_DROP, "flags {flags:#x}");
    }
    assert_eq!(bench.reason_count(reason::SHIELD_TCP_INVALID).unwrap(), 3);
    // A SYN is new, not invalid.
    let syn = Seg::syn(CLIENT, SERVER, linux_options(1));
    assert_eq!(bench.run(&syn.frame()).unwrap(), XDP_PASS);

    // A DNS answer nobody asked for, from a reflector port: dropped.
    let dns = palisade::craft::Frame::udp("203.0.113.53", SERVER, 53, 33333).build();
    assert_eq!(bench.run(&dns).unwrap(), XDP_DROP);
    assert_eq!(bench.reason_count(reason::SHIELD_AMPLIFICATION).unwrap(), 1);
    // The host's own query (seen on the way out) makes its answer pass.
    let query = palisade::craft::Frame::udp(SERVER, "203.0.113.53", 33334, 53).build();
    bench.run_ct_egress(&query).unwrap();
    let answer = palisade::craft::Frame::udp("203.0.113.53", SERVER, 53, 33334).build();
    assert_eq!(bench.run(&answer).unwrap(), XDP_PASS);
    // A datagram from an ordinary port is left to the rules.
    let other = palisade::craft::Frame::udp("203.0.113.53", SERVER, 5353, 33335).build();
    assert_eq!(bench.run(&other).unwrap(), XDP_PASS);
    assert_eq!(bench.reason_count(reason::SHIELD_AMPLIFICATION).unwrap(), 1);
}

#[test]
fn the_cookie_stage_stays_within_the_verifier_budget() {
    // The benchmark's budget (`--verifier-budget`): a program that needs more is one compiler
    // or kernel change away from the verifier's limit.
    let bench = Bench::new().expect("load");
    let prog: &aya::programs::Xdp = bench
        .ebpf
        .program(palisade::guard::SYNCOOKIE)
        .unwrap()
        .try_into()
        .unwrap();
    let n = prog.info().unwrap().verified_instruction_count().unwrap();
    eprintln!("palisade_syncookie: {n} instructions verified");
    assert!(n <= 500_000, "{n} instructions verified");
}
