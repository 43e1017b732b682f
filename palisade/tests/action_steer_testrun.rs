//! The `steer` action in the kernel, through `BPF_PROG_TEST_RUN` on the XDP firewall: the
//! verdict (`XDP_REDIRECT`) with the frame untouched, the CPU map entries the policy wrote
//! (the CPUs named, their queue sizes, the arrival program), the counters and events; and the
//! config errors a bad `steer` rule gets, each at its line.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test action_steer_testrun`.

use std::path::Path;

use aya::maps::{CpuMap, MapData};
use palisade::{
    craft::Frame,
    policy::config,
    testrun::{Bench, sum_counter},
};
use palisade_common::steer::{SS_MATCHED, SS_NO_CPU, SS_SENT};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const POLICY: &str = r#"
[firewall]
default = "allow"

[[firewall.rule]]
name = "spread"
action = "steer"
proto = "udp"
dport = 7010
cpus = [0, 1]
log = true

[[firewall.rule]]
name = "deep"
action = "steer"
proto = "tcp"
dport = 7011
cpus = [1]
queue_size = 4096
"#;

fn ss(b: &Bench, i: u32) -> u64 {
    sum_counter(&b.ebpf, "STEER_STATS", i).expect("STEER_STATS")
}

#[test]
fn steer_redirects_to_the_cpu_map_the_policy_wrote() {
    let policy = config::parse_policy(POLICY, "steer.toml", Path::new("/")).expect("policy");
    let mut b = Bench::new().expect("load (needs root)");
    b.install(&policy).expect("install");
    b.drain_events();
    {
        let cpus: CpuMap<&MapData> =
            CpuMap::try_from(b.ebpf.map("STEER_CPUS").expect("STEER_CPUS")).unwrap();
        let c0 = cpus.get(0, 0).expect("CPU 0 entry");
        let c1 = cpus.get(1, 0).expect("CPU 1 entry");
        assert_eq!(c0.queue_size, 2048, "the default queue size");
        assert_eq!(c1.queue_size, 4096, "the largest a rule asks for");
        assert!(
            c0.prog_id.is_some() && c1.prog_id.is_some(),
            "arrival program"
        );
        assert!(
            cpus.get(2, 0).map_or(true, |v| v.queue_size == 0),
            "CPU 2 not named"
        );
    }
    let before = (ss(&b, SS_MATCHED), ss(&b, SS_SENT), ss(&b, SS_NO_CPU));
    let mut n = 0;
    for frame in [
        Frame::udp("192.0.2.7", "198.51.100.1", 40000, 7010).build(),
        Frame::udp("192.0.2.7", "198.51.100.1", 40001, 7010).build(),
        Frame::udp("2001:db8::7", "2001:db8::1", 40000, 7010)
            .with_vlans(&[12], false)
            .build(),
        Frame::tcp("192.0.2.7", "198.51.100.1", 40000, 7011, 0x02).build(),
    ] {
        let (verdict, out) = b.run_with_output(&frame).expect("run");
        assert_eq!((verdict, &out), (XDP_REDIRECT, &frame));
        n += 1;
    }
    assert_eq!(ss(&b, SS_MATCHED) - before.0, n);
    assert_eq!(ss(&b, SS_SENT) - before.1, n);
    assert_eq!(ss(&b, SS_NO_CPU), before.2);
    let ev = b.drain_events();
    assert_eq!(ev.len(), 3, "the logging rule's packets: {ev:?}");
    assert!(
        ev.iter()
            .all(|e| u32::from(e.action) == XDP_REDIRECT && e.rule == 0)
    );

    let other = Frame::udp("192.0.2.7", "198.51.100.1", 40000, 7012).build();
    assert_eq!(b.run_with_output(&other).expect("run"), (XDP_PASS, other));
    assert_eq!(ss(&b, SS_MATCHED) - before.0, n);

    // Without its CPU map entry the picked CPU cannot take the packet: it passes here,
    // unchanged, counted in `no_cpu` (fail-open), and the other CPU still takes its flows.
    delete_cpu(&b, 1);
    let deep = Frame::tcp("192.0.2.7", "198.51.100.1", 40000, 7011, 0x02).build();
    assert_eq!(b.run_with_output(&deep).expect("run"), (XDP_PASS, deep));
    assert_eq!(ss(&b, SS_NO_CPU) - before.2, 1);
    let mut on = [0u32; 2];
    for sport in 40000..40040u16 {
        let f = Frame::udp("192.0.2.7", "198.51.100.1", sport, 7010).build();
        let (verdict, out) = b.run_with_output(&f).expect("run");
        assert_eq!(out, f);
        on[usize::from(verdict == XDP_REDIRECT)] += 1;
    }
    // Both outcomes occur: the flows hashed to CPU 0 still go, those to CPU 1 pass.
    assert!(on[0] > 0 && on[1] > 0, "{on:?}");
    assert_eq!(ss(&b, SS_NO_CPU) - before.2, 1 + u64::from(on[0]));
    assert_eq!(ss(&b, SS_MATCHED) - before.0, n + 1 + 40);
}

/// Deletes CPU `cpu`'s entry from `STEER_CPUS` (`BPF_MAP_DELETE_ELEM`).
fn delete_cpu(b: &Bench, cpu: u32) {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let aya::maps::Map::CpuMap(data) = b.ebpf.map("STEER_CPUS").expect("STEER_CPUS") else {
        panic!("STEER_CPUS is not a CPU map");
    };
    let fd = data.fd().as_fd().as_raw_fd();
    // `bpf_attr` for map element commands: map_fd (u32), pad, key (u64), value, flags.
    let mut attr = [0u64; 4];
    attr[0] = u64::from(fd as u32);
    attr[1] = std::ptr::from_ref(&cpu) as u64;
    // SAFETY: a valid attr buffer for BPF_MAP_DELETE_ELEM (3) with a pointer to a live key.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            3,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert_eq!(
        r,
        0,
        "delete CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

fn errors(text: &str) -> String {
    config::parse_policy(text, "bad.toml", Path::new("/"))
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn bad_steer_rules_are_refused_at_their_lines() {
    let head = "[firewall]\ndefault = \"allow\"\n\n[[firewall.rule]]\n";
    for (body, line, words) in [
        ("action = \"steer\"\nproto = \"udp\"\n", 5, "needs `cpus`"),
        (
            "action = \"allow\"\ncpus = [0]\n",
            6,
            "`cpus` is only allowed",
        ),
        (
            "action = \"drop\"\nqueue_size = 10\n",
            6,
            "`queue_size` is only allowed",
        ),
        ("action = \"steer\"\ncpus = []\n", 6, "1 to 8 CPUs"),
        (
            "action = \"steer\"\ncpus = [0,1,0,1,0,1,0,1,0]\n",
            6,
            "1 to 8 CPUs",
        ),
        ("action = \"steer\"\ncpus = [0, 0]\n", 6, "named twice"),
        ("action = \"steer\"\ncpus = [63]\n", 6, "not online"),
        ("action = \"steer\"\ncpus = [64]\n", 6, "cpus"),
        ("action = \"steer\"\ncpus = 1\n", 6, "must be an array"),
        (
            "action = \"steer\"\ncpus = [0]\nqueue_size = 0\n",
            7,
            "queue_size",
        ),
        (
            "action = \"steer\"\ncpus = [0]\nqueue_size = 16385\n",
            7,
            "queue_size",
        ),
    ] {
        let e = errors(&format!("{head}{body}"));
        assert!(
            e.contains(&format!("bad.toml:{line}")) && e.contains(words),
            "{body}: {e}"
        );
    }
    // `palisade check` says the same, at the line.
    let dir = std::env::temp_dir().join(format!("palisade-steer-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("steer.toml");
    std::fs::write(&file, format!("{head}action = \"steer\"\ncpus = [0, 63]\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    std::fs::write(&file, format!("{head}action = \"steer\"\ncpus = [0]\n")).unwrap();
    let good = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("steer.toml:6")
            && stderr.contains("CPU 63 is not online"),
        "{stderr}"
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
}
