//! The `mirror` action in the kernel, through `BPF_PROG_TEST_RUN` on the XDP firewall: the
//! verdict (pass), the frame untouched, what is handed to the TC program (the metadata, or on
//! a kernel without XDP metadata the handoff table's entry) naming the mirror interface, the counters; and the config errors a bad `mirror` rule gets, each at its line,
//! among them an interface that does not exist.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test action_mirror_testrun`.

use std::path::Path;

use palisade::{
    craft::Frame,
    policy::config,
    testrun::{Bench, sum_counter},
};
use palisade_common::action::{
    ACTION_META_MAGIC, AS_MIRROR_MATCHED, AS_MIRROR_NO_ROOM, ActionMeta, META_MIRROR,
};

const XDP_PASS: u32 = 2;

/// `lo` exists in every network namespace, with index 1.
const POLICY: &str = r#"
[firewall]
default = "allow"

[[firewall.rule]]
name = "tap"
action = "mirror"
proto = "udp"
dport = 4789
mirror_to = "lo"
log = true
"#;

fn actions(b: &Bench, i: u32) -> u64 {
    sum_counter(&b.ebpf, "ACTION_STATS", i).expect("ACTION_STATS")
}

#[test]
fn mirror_leaves_the_frame_and_names_the_interface_in_the_metadata() {
    let policy = config::parse_policy(POLICY, "mirror.toml", Path::new("/")).expect("policy");
    let mut b = Bench::new().expect("load (needs root)");
    b.install(&policy).expect("install");
    let before = (
        actions(&b, AS_MIRROR_MATCHED),
        actions(&b, AS_MIRROR_NO_ROOM),
    );
    for (frame, l3) in [
        (
            Frame::udp("192.0.2.7", "198.51.100.1", 40000, 4789)
                .with_payload(b"vxlan")
                .build(),
            14,
        ),
        (
            Frame::udp("2001:db8::7", "2001:db8::1", 40000, 4789)
                .with_vlans(&[12], false)
                .build(),
            18,
        ),
    ] {
        let (verdict, out) = b.run_with_output(&frame).expect("run");
        assert_eq!(verdict, XDP_PASS);
        let (left, rest) = b.action_left(&out, frame.len(), l3).expect("handed over");
        assert_eq!(
            left,
            Some(ActionMeta {
                magic: ACTION_META_MAGIC,
                flags: META_MIRROR,
                mark: 0,
                ifindex: 1,
            }),
            "magic, mirror, no mark, ifindex of lo"
        );
        assert_eq!(rest, frame, "the frame itself untouched");
    }
    assert_eq!(actions(&b, AS_MIRROR_MATCHED), before.0 + 2);
    assert_eq!(actions(&b, AS_MIRROR_NO_ROOM), before.1);
    let ev = b.drain_events();
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(
        ev.iter()
            .all(|e| u32::from(e.action) == XDP_PASS && e.rule == 0)
    );

    // Not a mirrored port: no metadata.
    let other = Frame::udp("192.0.2.7", "198.51.100.1", 40000, 4790).build();
    assert_eq!(b.run_with_output(&other).expect("run"), (XDP_PASS, other));
}

fn errors(text: &str) -> String {
    config::parse_policy(text, "bad.toml", Path::new("/"))
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn bad_mirror_rules_are_refused_at_their_lines() {
    let head = "[firewall]\ndefault = \"allow\"\n\n[[firewall.rule]]\n";
    let e = errors(&format!("{head}action = \"mirror\"\nproto = \"udp\"\n"));
    assert!(
        e.contains("bad.toml:5") && e.contains("needs `mirror_to`"),
        "{e}"
    );
    let e = errors(&format!("{head}action = \"drop\"\nmirror_to = \"lo\"\n"));
    assert!(
        e.contains("bad.toml:6") && e.contains("`mirror_to` is only allowed with action"),
        "{e}"
    );
    let e = errors(&format!(
        "{head}action = \"mirror\"\nmirror_to = \"pal-absent-if\"\n"
    ));
    assert!(
        e.contains("bad.toml:6") && e.contains("no network interface named `pal-absent-if`"),
        "{e}"
    );
    let e = errors(&format!(
        "{head}action = \"mirror\"\nmirror_to = \"a-very-long-name0\"\n"
    ));
    assert!(
        e.contains("bad.toml:6") && e.contains("not an interface name"),
        "{e}"
    );
    let e = errors(&format!("{head}action = \"mirror\"\nmirror_to = 3\n"));
    assert!(e.contains("bad.toml:6"), "{e}");
    let e = errors(&format!(
        "{head}action = \"mirror\"\nmirror_to = \"lo\"\nset_mark = 1\n"
    ));
    assert!(
        e.contains("bad.toml:7") && e.contains("`set_mark` is only"),
        "{e}"
    );
}
