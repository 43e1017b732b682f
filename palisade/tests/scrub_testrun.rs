//! Scrub (`[scrub]`) in the kernel, through `BPF_PROG_TEST_RUN` on the TC programs: every
//! rewrite checked byte by byte against a frame built with the expected fields and its
//! checksums computed from scratch (minimum TTL and hop limit, MSS of SYNs and SYN-ACKs for
//! both families, DF clearing, random IPv4 identifications), with and without a VLAN tag;
//! fragments keep their identification; frames scrub cannot parse pass untouched and are
//! counted; directions and policy generations switch the rewrites.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test scrub_testrun`.

use std::{collections::HashSet, net::IpAddr, path::Path};

use palisade::{
    craft::{checksum, ip},
    policy::config,
    scrub,
    testrun::Bench,
};
use palisade_common::scrub::{
    SC_DF_CLEARED, SC_FRAGMENT_ID_KEPT, SC_HOP_LIMIT_RAISED, SC_ID_RANDOMIZED, SC_MSS_CLAMPED_V4,
    SC_MSS_CLAMPED_V6, SC_NOT_PARSED, SC_PER_DIRECTION, SC_REWRITE_FAILED, SC_TTL_RAISED,
};

/// TC's "continue": scrub never decides a packet's fate.
const TC_ACT_UNSPEC: i32 = -1;
const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;

/// Linux's SYN options with `mss`: MSS, SACK permitted, timestamps, NOP, window scale 7.
fn linux_options(mss: u16) -> Vec<u8> {
    let m = mss.to_be_bytes();
    vec![
        2, 4, m[0], m[1], 4, 2, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0, 1, 3, 3, 7,
    ]
}

/// Options with the MSS last, after NOPs and a timestamp (another stack's order).
fn late_mss_options(mss: u16) -> Vec<u8> {
    let m = mss.to_be_bytes();
    vec![
        1, 1, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 2, 4, m[0], m[1],
    ]
}

#[derive(Clone)]
enum L4 {
    Tcp { flags: u8, options: Vec<u8> },
    Udp,
}

/// A packet to build, every field that scrub may rewrite explicit; checksums are computed
/// from scratch for every build.
#[derive(Clone)]
struct Pkt {
    src: IpAddr,
    dst: IpAddr,
    vlan: Option<u16>,
    ttl: u8,
    id: u16,
    df: bool,
    /// IPv4 fragment offset (8-byte units) and more-fragments bit.
    frag: (u16, bool),
    l4: L4,
    payload: Vec<u8>,
}

impl Pkt {
    fn tcp(src: &str, dst: &str, flags: u8, options: Vec<u8>) -> Self {
        Self {
            src: ip(src),
            dst: ip(dst),
            vlan: None,
            ttl: 64,
            id: 0x1234,
            df: true,
            frag: (0, false),
            l4: L4::Tcp { flags, options },
            payload: Vec::new(),
        }
    }

    fn udp(src: &str, dst: &str, payload: &[u8]) -> Self {
        Self {
            l4: L4::Udp,
            payload: payload.to_vec(),
            df: false,
            ..Self::tcp(src, dst, 0, Vec::new())
        }
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp => 17,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match &self.l4 {
            L4::Tcp { flags, options } => {
                b.extend_from_slice(&40000u16.to_be_bytes());
                b.extend_from_slice(&443u16.to_be_bytes());
                b.extend_from_slice(&0x1000_0000u32.to_be_bytes());
                let ack = if flags & ACK != 0 { 0x2000_0000u32 } else { 0 };
                b.extend_from_slice(&ack.to_be_bytes());
                b.push(((20 + options.len()) / 4) as u8 * 16);
                b.push(*flags);
                b.extend_from_slice(&64240u16.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]);
                b.extend_from_slice(options);
            }
            L4::Udp => {
                b.extend_from_slice(&5353u16.to_be_bytes());
                b.extend_from_slice(&9u16.to_be_bytes());
                b.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
            }
        }
        b.extend_from_slice(&self.payload);
        b
    }

    fn build(&self) -> Vec<u8> {
        let mut l4 = self.l4_bytes();
        let first_fragment = self.frag.0 == 0;
        let mut pseudo = u32::from(self.proto()) + l4.len() as u32;
        let (s, d) = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (s.octets().to_vec(), d.octets().to_vec()),
            (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets().to_vec(), d.octets().to_vec()),
            _ => panic!("mixed families"),
        };
        for c in s.chunks(2).chain(d.chunks(2)) {
            pseudo += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if first_fragment && !self.frag.1 {
            let at = if matches!(self.l4, L4::Tcp { .. }) {
                16
            } else {
                6
            };
            let c = checksum(&l4, pseudo);
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 7];
        if let Some(v) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        if self.src.is_ipv4() {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            h.extend_from_slice(&self.id.to_be_bytes());
            let flags = self.frag.0 & 0x1fff
                | if self.frag.1 { 0x2000 } else { 0 }
                | if self.df { 0x4000 } else { 0 };
            h.extend_from_slice(&flags.to_be_bytes());
            h.extend_from_slice(&[self.ttl, self.proto(), 0, 0]);
            h.extend_from_slice(&s);
            h.extend_from_slice(&d);
            let c = checksum(&h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        } else {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            f.extend_from_slice(&[self.proto(), self.ttl]);
            f.extend_from_slice(&s);
            f.extend_from_slice(&d);
        }
        f.extend_from_slice(&l4);
        f
    }

    fn with(&self, change: impl FnOnce(&mut Self)) -> Self {
        let mut p = self.clone();
        change(&mut p);
        p
    }

    fn set_mss(&mut self, mss: u16) {
        let L4::Tcp { options, .. } = &mut self.l4 else {
            panic!("not TCP");
        };
        let at = options
            .windows(2)
            .position(|w| w == [2, 4])
            .expect("an MSS option");
        options[at + 2..at + 4].copy_from_slice(&mss.to_be_bytes());
    }
}

struct Lab {
    bench: Bench,
}

impl Lab {
    fn new(policy: &str) -> Self {
        let mut bench = Bench::new().expect("load and verify the kernel programs");
        let p = config::parse_policy(policy, "p.toml", Path::new("/")).expect("valid policy");
        bench.install(&p).expect("install");
        Self { bench }
    }

    fn install(&mut self, policy: &str) {
        let p = config::parse_policy(policy, "p.toml", Path::new("/")).expect("valid policy");
        self.bench.install(&p).expect("install");
    }

    fn run(&self, prog: &str, frame: &[u8]) -> Vec<u8> {
        let (verdict, out) = self.bench.run_tc(prog, frame).expect("test run");
        assert_eq!(verdict, TC_ACT_UNSPEC, "scrub never decides a verdict");
        out
    }

    fn ingress(&self, p: &Pkt) -> Vec<u8> {
        self.run(scrub::INGRESS, &p.build())
    }

    fn egress(&self, p: &Pkt) -> Vec<u8> {
        self.run(scrub::EGRESS, &p.build())
    }

    fn counters(&self) -> Vec<u64> {
        scrub::counters(&self.bench.ebpf)
            .expect("read counters")
            .to_vec()
    }
}

/// `after - before` for counter `index` of the ingress (`egress = false`) or egress block.
fn moved(before: &[u64], after: &[u64], egress: bool, index: u32) -> u64 {
    let i = (if egress { SC_PER_DIRECTION } else { 0 } + index) as usize;
    after[i] - before[i]
}

const FULL: &str = "[scrub]\nmin_ttl = 64\nmax_mss_v4 = 1400\nmax_mss_v6 = 1380\nclear_df = true\n";

#[test]
fn ttl_and_hop_limit_are_raised_to_the_minimum() {
    let lab = Lab::new(FULL);
    let before = lab.counters();
    let low = Pkt::udp("198.51.100.7", "192.0.2.1", b"hello").with(|p| p.ttl = 3);
    assert_eq!(lab.ingress(&low), low.with(|p| p.ttl = 64).build());
    assert_eq!(lab.egress(&low), low.with(|p| p.ttl = 64).build());
    let low6 = Pkt::udp("2001:db8::7", "2001:db8::1", b"hello").with(|p| p.ttl = 1);
    assert_eq!(lab.ingress(&low6), low6.with(|p| p.ttl = 64).build());
    // At or above the minimum: untouched.
    for ttl in [64, 65, 255] {
        let p = Pkt::udp("198.51.100.7", "192.0.2.1", b"x").with(|p| p.ttl = ttl);
        assert_eq!(lab.ingress(&p), p.build(), "TTL {ttl}");
        let p6 = Pkt::udp("2001:db8::7", "2001:db8::1", b"x").with(|p| p.ttl = ttl);
        assert_eq!(lab.egress(&p6), p6.build(), "hop limit {ttl}");
    }
    let after = lab.counters();
    assert_eq!(moved(&before, &after, false, SC_TTL_RAISED), 1);
    assert_eq!(moved(&before, &after, true, SC_TTL_RAISED), 1);
    assert_eq!(moved(&before, &after, false, SC_HOP_LIMIT_RAISED), 1);
    assert_eq!(moved(&before, &after, true, SC_HOP_LIMIT_RAISED), 0);
    assert_eq!(moved(&before, &after, false, SC_REWRITE_FAILED), 0);
}

#[test]
fn mss_of_syns_and_syn_acks_is_clamped_per_family() {
    let lab = Lab::new(FULL);
    let before = lab.counters();
    for (src, dst, limit) in [
        ("198.51.100.7", "192.0.2.1", 1400u16),
        ("2001:db8::7", "2001:db8::1", 1380),
    ] {
        for flags in [SYN, SYN_ACK] {
            for options in [linux_options(1460), late_mss_options(8960)] {
                let p = Pkt::tcp(src, dst, flags, options).with(|p| p.df = false);
                let want = p.with(|p| p.set_mss(limit)).build();
                assert_eq!(lab.ingress(&p), want, "{src} flags {flags:#x} ingress");
                assert_eq!(lab.egress(&p), want, "{src} flags {flags:#x} egress");
            }
            // At or under the limit: untouched.
            for mss in [limit, 536] {
                let p = Pkt::tcp(src, dst, flags, linux_options(mss)).with(|p| p.df = false);
                assert_eq!(lab.ingress(&p), p.build(), "{src} MSS {mss}");
            }
        }
        // Only SYNs and SYN-ACKs: an MSS option elsewhere is left alone.
        let p = Pkt::tcp(src, dst, ACK, linux_options(1460)).with(|p| p.df = false);
        assert_eq!(lab.ingress(&p), p.build());
    }
    let after = lab.counters();
    for egress in [false, true] {
        assert_eq!(moved(&before, &after, egress, SC_MSS_CLAMPED_V4), 4);
        assert_eq!(moved(&before, &after, egress, SC_MSS_CLAMPED_V6), 4);
    }
}

#[test]
fn df_is_cleared_and_everything_combines_with_a_vlan_tag() {
    let lab = Lab::new(FULL);
    let before = lab.counters();
    let p = Pkt::udp("198.51.100.7", "192.0.2.1", b"payload");
    let df = p.with(|p| p.df = true);
    assert_eq!(lab.egress(&df), p.build());
    // One SYN that needs every rewrite, tagged and not.
    for vlan in [None, Some(100)] {
        let syn = Pkt::tcp("198.51.100.7", "192.0.2.1", SYN, linux_options(1460)).with(|p| {
            p.ttl = 2;
            p.vlan = vlan;
        });
        let want = syn.with(|p| {
            p.ttl = 64;
            p.df = false;
            p.set_mss(1400);
        });
        assert_eq!(lab.ingress(&syn), want.build(), "VLAN {vlan:?}");
        let syn6 = Pkt::tcp("2001:db8::7", "2001:db8::1", SYN_ACK, linux_options(1440)).with(|p| {
            p.ttl = 9;
            p.vlan = vlan;
        });
        let want6 = syn6.with(|p| {
            p.ttl = 64;
            p.set_mss(1380);
        });
        assert_eq!(lab.egress(&syn6), want6.build(), "VLAN {vlan:?}");
    }
    let after = lab.counters();
    assert_eq!(moved(&before, &after, true, SC_DF_CLEARED), 1);
    assert_eq!(moved(&before, &after, false, SC_DF_CLEARED), 2);
    assert_eq!(moved(&before, &after, false, SC_TTL_RAISED), 2);
    assert_eq!(moved(&before, &after, true, SC_HOP_LIMIT_RAISED), 2);
}

#[test]
fn random_ids_for_whole_packets_only() {
    let lab = Lab::new("[scrub]\nrandom_id = true\n");
    let before = lab.counters();
    let p = Pkt::udp("198.51.100.7", "192.0.2.1", b"whole datagram");
    let mut ids = HashSet::new();
    for _ in 0..32 {
        let out = lab.egress(&p);
        let id = u16::from_be_bytes([out[18], out[19]]);
        ids.insert(id);
        // Every other byte as it was, the header checksum recomputed for the new id.
        assert_eq!(out, p.with(|p| p.id = id).build());
    }
    assert!(
        ids.len() >= 16,
        "32 draws gave only {} distinct identifications",
        ids.len()
    );
    // Fragments keep theirs: the first (more fragments, offset 0), a middle and the last.
    let payload = vec![0xab; 64];
    for frag in [(0, true), (8, true), (16, false)] {
        let f = Pkt::udp("198.51.100.7", "192.0.2.1", &payload).with(|p| p.frag = frag);
        assert_eq!(lab.egress(&f), f.build(), "fragment {frag:?}");
        assert_eq!(lab.ingress(&f), f.build(), "fragment {frag:?}");
    }
    // IPv6 has no identification in its header: untouched.
    let p6 = Pkt::udp("2001:db8::7", "2001:db8::1", b"x");
    assert_eq!(lab.egress(&p6), p6.build());
    let after = lab.counters();
    assert_eq!(moved(&before, &after, true, SC_ID_RANDOMIZED), 32);
    assert_eq!(moved(&before, &after, true, SC_FRAGMENT_ID_KEPT), 3);
    assert_eq!(moved(&before, &after, false, SC_FRAGMENT_ID_KEPT), 3);
}

#[test]
fn frames_scrub_cannot_parse_pass_untouched_and_are_counted() {
    let lab = Lab::new(FULL);
    let before = lab.counters();
    let good = Pkt::tcp("198.51.100.7", "192.0.2.1", SYN, linux_options(1460))
        .with(|p| p.ttl = 1)
        .build();
    // Options the IPv4 header claims but the frame does not hold (a test run refuses frames
    // shorter than the fixed header), a header length under 20, a TCP header cut short, a bad
    // IP version.
    let header = |first: u8, len: usize| {
        let mut f = good[..len].to_vec();
        f[14] = first;
        f
    };
    for frame in [
        header(0x4f, 54),
        header(0x44, 74),
        good[..40].to_vec(),
        header(0x55, 74),
    ] {
        assert_eq!(lab.run(scrub::INGRESS, &frame), frame);
    }
    // A SYN whose option list is broken (a zero-length option before the MSS): the MSS is
    // left alone, the TTL still raised.
    let broken = Pkt::tcp(
        "198.51.100.7",
        "192.0.2.1",
        SYN,
        vec![1, 3, 0, 1, 2, 4, 5, 0xb4],
    )
    .with(|p| p.ttl = 1);
    assert_eq!(
        lab.ingress(&broken),
        broken
            .with(|p| {
                p.ttl = 64;
                p.df = false;
            })
            .build()
    );
    // Not IP at all: untouched, not counted.
    let mut arp = good.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(lab.run(scrub::EGRESS, &arp), arp);
    let after = lab.counters();
    assert_eq!(moved(&before, &after, false, SC_NOT_PARSED), 4);
    assert_eq!(moved(&before, &after, true, SC_NOT_PARSED), 0);
    assert_eq!(moved(&before, &after, false, SC_MSS_CLAMPED_V4), 0);
}

#[test]
fn directions_and_generations_switch_the_rewrites() {
    let mut lab = Lab::new("[scrub]\nmin_ttl = 100\ndirections = [\"out\"]\n");
    let p = Pkt::udp("198.51.100.7", "192.0.2.1", b"x").with(|p| p.ttl = 7);
    assert_eq!(lab.ingress(&p), p.build());
    assert_eq!(lab.egress(&p), p.with(|p| p.ttl = 100).build());
    lab.install("[scrub]\nmin_ttl = 30\ndirections = [\"in\"]\n");
    assert_eq!(lab.ingress(&p), p.with(|p| p.ttl = 30).build());
    assert_eq!(lab.egress(&p), p.build());
    // A policy without `[scrub]` turns every rewrite off.
    lab.install("");
    assert_eq!(lab.ingress(&p), p.build());
    assert_eq!(lab.egress(&p), p.build());
}

#[test]
fn the_section_is_checked_with_locations() {
    let errors = |text: &str| -> Vec<String> {
        match config::parse_policy(text, "p.toml", Path::new("/")) {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    };
    let e = errors("[scrub]\nmin_tl = 3\nmax_mss_v4 = 100\nmax_mss_v6 = 1000\n");
    assert!(
        e.iter()
            .any(|l| l.starts_with("p.toml:2:1: unknown key `min_tl` in [scrub]")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("p.toml:3:14: `max_mss_v4` must be between 536 and 65535")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("p.toml:4:14: `max_mss_v6` must be between 1220 and 65535")),
        "{e:?}"
    );
    let e = errors("[scrub]\nmin_ttl = 0\ndirections = [\"in\", \"sideways\"]\nclear_df = 1\n");
    assert!(e.iter().any(|l| l.starts_with("p.toml:2:11:")), "{e:?}");
    assert!(
        e.iter()
            .any(|l| l.starts_with("p.toml:3:21: `directions` takes \"in\" and \"out\"")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("p.toml:4:12: `clear_df` must be true or false")),
        "{e:?}"
    );
    let ok = config::parse_policy(
        "[scrub]\nmin_ttl = 64\nmax_mss_v4 = 1400\nmax_mss_v6 = 1380\nclear_df = true\nrandom_id = true\ndirections = [\"in\"]\n",
        "p.toml",
        Path::new("/"),
    )
    .expect("valid");
    assert_eq!(ok.scrub.min_ttl, Some(64));
    assert_eq!(
        (ok.scrub.max_mss_v4, ok.scrub.max_mss_v6),
        (Some(1400), Some(1380))
    );
    assert!(ok.scrub.clear_df && ok.scrub.random_id && ok.scrub.ingress && !ok.scrub.egress);
}
