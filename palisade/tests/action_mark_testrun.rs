//! The `mark` action in the kernel, through `BPF_PROG_TEST_RUN` on the XDP firewall: the
//! verdict (pass), the mark handed to the TC program (the metadata written in front of the
//! frame, or on a kernel without XDP metadata the handoff table's entry under the frame's
//! key: magic, flags and mark), the DSCP rewritten with the ECN bits kept and the IPv4 header checksum equal to
//! one computed from scratch (IPv4, IPv6, behind a VLAN tag), the action counters, the event
//! of a `log = true` rule; and the config errors a bad `mark` rule gets, each at its line.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test action_mark_testrun`.

use std::{
    path::Path,
    sync::{Mutex, MutexGuard, OnceLock},
};

use palisade::{
    craft::{Frame, checksum},
    policy::config,
    testrun::{Bench, sum_counter},
};
use palisade_common::action::{
    ACTION_META_MAGIC, AS_DSCP_REWRITTEN, AS_HANDOFF_WRITTEN, AS_MARK_MATCHED,
    AS_MARK_META_WRITTEN, AS_MARK_NO_ROOM, ActionMeta, META_MARK,
};

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;
const EF: u8 = 46;

const POLICY: &str = r#"
[firewall]
default = "allow"

[[firewall.rule]]
name = "voice"
action = "mark"
proto = "udp"
dport = 5060
set_mark = 0x2a
set_dscp = "ef"
log = true

[[firewall.rule]]
name = "bulk"
action = "mark"
proto = "tcp"
dport = 873
set_dscp = 10

[[firewall.rule]]
name = "tag-only"
action = "mark"
proto = "udp"
dport = 9000
set_mark = 4294967295

[[firewall.rule]]
name = "blocked"
action = "drop"
proto = "udp"
dport = 9999
"#;

static BENCH: OnceLock<Mutex<Bench>> = OnceLock::new();

/// The programs with [`POLICY`] installed, loaded once for every test of this file (the
/// counters the tests read are compared with what they were before).
fn bench() -> MutexGuard<'static, Bench> {
    BENCH
        .get_or_init(|| {
            let policy = config::parse_policy(POLICY, "mark.toml", Path::new("/")).expect("policy");
            let mut b = Bench::new().expect("load (needs root)");
            b.install(&policy).expect("install");
            Mutex::new(b)
        })
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn actions(b: &Bench, i: u32) -> u64 {
    sum_counter(&b.ebpf, "ACTION_STATS", i).expect("ACTION_STATS")
}

/// The frame with the TOS / traffic class byte `tos`, built (and its checksums computed)
/// from scratch.
fn with_tos(f: &Frame, tos: u8) -> Vec<u8> {
    let mut f = f.clone();
    f.tos = tos;
    f.build()
}

/// What a run that returned `out` left for the TC program (the metadata, or the handoff
/// table's entry, see `Bench::action_left`) and the frame, given the frame's length and its
/// IP header's offset.
fn split_meta(b: &Bench, out: &[u8], frame_len: usize, l3: usize) -> (Option<ActionMeta>, Vec<u8>) {
    b.action_left(out, frame_len, l3)
        .expect("reading what the run left")
}

/// What a mark hands over: magic, flags, mark, no interface.
const fn mark_meta(mark: u32) -> Option<ActionMeta> {
    Some(ActionMeta {
        magic: ACTION_META_MAGIC,
        flags: META_MARK,
        mark,
        ifindex: 0,
    })
}

/// The counter of marks handed over: in the metadata, or through the handoff table.
fn written() -> u32 {
    if palisade::kernel::xdp_metadata() {
        AS_MARK_META_WRITTEN
    } else {
        AS_HANDOFF_WRITTEN
    }
}

/// The IPv4 header at `l3` sums (with its checksum) to zero.
fn v4_header_valid(frame: &[u8], l3: usize) -> bool {
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    checksum(&frame[l3..l3 + ihl], 0) == 0
}

#[test]
fn mark_and_dscp_ipv4_meta_and_checksum_byte_by_byte() {
    let mut b = bench();
    // Events another test of this file left in the ring are not this test's.
    b.drain_events();
    let before = (
        actions(&b, AS_MARK_MATCHED),
        actions(&b, written()),
        actions(&b, AS_DSCP_REWRITTEN),
    );
    let mut f = Frame::udp("192.0.2.7", "198.51.100.1", 40000, 5060).with_payload(b"INVITE");
    // ECN 01 set: it must survive the rewrite.
    let input = with_tos(&f, 0b0000_0001);
    let (verdict, out) = b.run_with_output(&input).expect("run");
    assert_eq!(verdict, XDP_PASS);
    let (meta, frame) = split_meta(&b, &out, input.len(), 14);
    assert_eq!(meta, mark_meta(0x2a), "mark handed over");
    let expected = with_tos(&f, (EF << 2) | 1);
    assert_eq!(
        frame,
        expected.as_slice(),
        "DSCP EF, ECN kept, checksum recomputed"
    );
    assert!(v4_header_valid(&frame, 14));
    assert_eq!(actions(&b, AS_MARK_MATCHED), before.0 + 1);
    assert_eq!(actions(&b, written()), before.1 + 1);
    assert_eq!(actions(&b, AS_DSCP_REWRITTEN), before.2 + 1);
    // `log = true`: one event, a pass by the rule.
    let ev = b.drain_events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(u32::from(ev[0].action), XDP_PASS);
    assert_eq!(ev[0].rule, 0);
    assert_eq!(ev[0].dport, 5060);

    // Every DSCP the packet may arrive with is replaced, every checksum stays valid.
    for tos in [0u8, 0xff, 0xb8, 0x03, 0x28] {
        f.ttl = 64u8.wrapping_add(tos);
        let input = with_tos(&f, tos);
        let (verdict, out) = b.run_with_output(&input).expect("run");
        assert_eq!(verdict, XDP_PASS);
        let (meta, frame) = split_meta(&b, &out, input.len(), 14);
        assert_eq!(meta, mark_meta(0x2a), "tos {tos:#x}");
        assert_eq!(
            frame,
            with_tos(&f, (EF << 2) | (tos & 3)).as_slice(),
            "tos {tos:#x}"
        );
        assert!(v4_header_valid(&frame, 14));
    }
}

#[test]
fn dscp_only_leaves_no_metadata_and_mark_only_leaves_the_bytes_alone() {
    let b = bench();
    // TCP behind a VLAN tag: DSCP 10, no mark, so no metadata.
    let f = Frame::tcp("192.0.2.9", "198.51.100.1", 5555, 873, 0x02).with_vlans(&[7], false);
    let input = with_tos(&f, 0x02);
    let (verdict, out) = b.run_with_output(&input).expect("run");
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        out,
        with_tos(&f, (10 << 2) | 2),
        "no metadata, DSCP 10 behind the tag"
    );
    assert!(v4_header_valid(&out, 18));
    assert_eq!(
        split_meta(&b, &out, out.len(), 18).0,
        None,
        "nothing handed over"
    );

    // Mark only: the frame untouched, the mark (all ones) in front.
    let f = Frame::udp("192.0.2.9", "198.51.100.1", 5555, 9000);
    let input = with_tos(&f, 0x30);
    let before = actions(&b, AS_MARK_NO_ROOM);
    let (verdict, out) = b.run_with_output(&input).expect("run");
    assert_eq!(verdict, XDP_PASS);
    let (meta, frame) = split_meta(&b, &out, input.len(), 14);
    assert_eq!(meta, mark_meta(u32::MAX));
    assert_eq!(frame, input.as_slice());
    assert_eq!(actions(&b, AS_MARK_NO_ROOM), before);

    // Packets no mark rule matches are neither marked nor rewritten.
    let other = with_tos(&Frame::udp("192.0.2.9", "198.51.100.1", 5555, 5061), 0x30);
    let (verdict, out) = b.run_with_output(&other).expect("run");
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, other);
    assert_eq!(
        split_meta(&b, &out, out.len(), 14).0,
        None,
        "nothing handed over"
    );
    let dropped = with_tos(&Frame::udp("192.0.2.9", "198.51.100.1", 5555, 9999), 0x30);
    assert_eq!(b.run_with_output(&dropped).expect("run").0, XDP_DROP);
}

#[test]
fn mark_and_dscp_ipv6_keep_the_flow_label() {
    let b = bench();
    let mut f = Frame::udp("2001:db8::7", "2001:db8::1", 40000, 5060).with_payload(b"x");
    f.tos = 0xfd;
    let input = f.build();
    // The flow label Palisade must not touch: its top nibble shares a byte with the
    // traffic class.
    let mut input = input;
    input[15] |= 0x0b;
    input[16] = 0x12;
    let (verdict, out) = b.run_with_output(&input).expect("run");
    assert_eq!(verdict, XDP_PASS);
    let (meta, frame) = split_meta(&b, &out, input.len(), 14);
    assert_eq!(meta, mark_meta(0x2a));
    let mut expected = input.clone();
    // Version 6, traffic class EF with ECN 01, flow label 0xb12..: 0x6b 0x9b -> bytes 14, 15.
    let tc = (EF << 2) | 1;
    expected[14] = 0x60 | (tc >> 4);
    expected[15] = (tc << 4) | 0x0b;
    assert_eq!(frame, expected);
}

fn errors(text: &str) -> String {
    config::parse_policy(text, "bad.toml", Path::new("/"))
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn bad_mark_rules_are_refused_at_their_lines() {
    let head = "[firewall]\ndefault = \"allow\"\n\n[[firewall.rule]]\n";
    let e = errors(&format!("{head}action = \"mark\"\nproto = \"udp\"\n"));
    assert!(
        e.contains("bad.toml:5") && e.contains("needs `set_mark`"),
        "{e}"
    );
    let e = errors(&format!("{head}action = \"drop\"\nset_mark = 1\n"));
    assert!(
        e.contains("bad.toml:6") && e.contains("`set_mark` is only allowed with action = \"mark\""),
        "{e}"
    );
    let e = errors(&format!("{head}action = \"allow\"\nset_dscp = 1\n"));
    assert!(
        e.contains("bad.toml:6") && e.contains("`set_dscp` is only"),
        "{e}"
    );
    let e = errors(&format!("{head}action = \"mark\"\nset_dscp = 64\n"));
    assert!(
        e.contains("bad.toml:6") && e.contains("`set_dscp` must be between 0 and 63"),
        "{e}"
    );
    let e = errors(&format!("{head}action = \"mark\"\nset_dscp = \"af99\"\n"));
    assert!(
        e.contains("bad.toml:6") && e.contains("unknown DSCP name `af99`"),
        "{e}"
    );
    let e = errors(&format!("{head}action = \"mark\"\nset_mark = -1\n"));
    assert!(
        e.contains("bad.toml:6") && e.contains("between 0 and 4294967295"),
        "{e}"
    );
    let e = errors(&format!("{head}action = \"mark\"\nset_mark = 4294967296\n"));
    assert!(e.contains("bad.toml:6"), "{e}");
    let e = errors(&format!("{head}action = \"mark\"\nset_mark = \"0x10\"\n"));
    assert!(
        e.contains("bad.toml:6") && e.contains("must be an integer"),
        "{e}"
    );
}
