//! End to end: the `steer` action with the real daemon, packets processed on the CPU their
//! flow's hash picks.
//!
//! A namespace pair; Palisade guards `veth-b` with a rule steering UDP to port 7010 over
//! `cpus = [0, 1]`. Namespace a sends, from a thread pinned to one CPU, a flow whose hash
//! (the kernel's own `flow_hash`) picks the *other* CPU, once each way. Both counters are
//! per CPU:
//! - `matched`, counted by the firewall in XDP: the flow's datagrams on the sending CPU (a
//!   veth frame is received on the CPU that sent it);
//! - `arrived`, counted by the CPU map's program: exactly the flow's datagrams on the CPU its
//!   hash picks, none on the sender's;
//! - every datagram is delivered to the socket, and a flow to another port is not steered.
//!
//! The sender's transmit checksum offload is off: a veth frame sent with the checksum left to
//! complete (`CHECKSUM_PARTIAL`) loses that state when XDP redirects it, and the receiver
//! drops it as corrupt (`InCsumErrors`); a NIC delivers complete checksums.
//!
//! Needs root and two CPUs. Run with `cargo test --release -p palisade --test action_steer_netns`.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use aya::maps::{Map, MapData, PerCpuArray};
use control::{GuardedHost, cli, cli_json};
use palisade_common::steer::{SS_ARRIVED, SS_MATCHED, SS_SENT, flow_hash, pack_cpus, pick};
use support::netns::{NetnsPair, in_netns};

const SENT: u64 = 200;

fn words(a: Ipv4Addr) -> [u32; 4] {
    [
        0,
        0,
        u32::from_ne_bytes([0, 0, 0xff, 0xff]),
        u32::from_ne_bytes(a.octets()),
    ]
}

/// Per-CPU values of entry `index` of the pinned counter array `name`.
fn per_cpu(host: &GuardedHost, name: &str, index: u32) -> Vec<u64> {
    let data = MapData::from_pin(host.scratch.pinned_map(name)).expect("open pinned counters");
    let arr: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("per-CPU array");
    arr.get(&index, 0)
        .expect("read counter")
        .iter()
        .copied()
        .collect()
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed set with one CPU added, for this thread only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "pin to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// Sends `n` datagrams from `src:sport` to `dst:dport` in namespace `ns`, from a thread pinned
/// to `cpu`.
fn send(ns: &str, cpu: usize, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, n: u64) {
    in_netns(ns, move || {
        pin_to(cpu);
        let s = UdpSocket::bind((src, sport)).unwrap();
        for i in 0..n {
            s.send_to(format!("steer {i}").as_bytes(), (dst, dport))
                .unwrap();
            if i % 20 == 19 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
}

/// Receives until the socket stays quiet; the number received.
fn drain(s: &UdpSocket) -> u64 {
    let mut got = 0u64;
    let mut buf = [0u8; 64];
    while s.recv(&mut buf).is_ok() {
        got += 1;
    }
    got
}

#[test]
fn steered_flows_are_processed_on_the_cpu_their_hash_picks() {
    let cpus = aya::util::online_cpus().expect("online CPUs");
    assert!(
        cpus.contains(&0) && cpus.contains(&1),
        "needs CPUs 0 and 1: {cpus:?}"
    );
    let pair = NetnsPair::new();
    // A frame that leaves the firewall by `XDP_REDIRECT` loses the socket buffer's "checksum
    // to be completed" state, so the sender computes its checksums itself, as a NIC's
    // receive path would have them.
    let out = pair.exec(&pair.ns_a, "ethtool", &["-K", &pair.if_a, "tx", "off"]);
    assert!(out.status.success(), "ethtool: {out:?}");
    let policy = "[firewall]\ndefault = \"allow\"\n\n[[firewall.rule]]\nname = \"spread\"\n\
                  action = \"steer\"\nproto = \"udp\"\ndport = 7010\ncpus = [0, 1]\n";
    let mut host = GuardedHost::new("action-steer", policy, &pair.ns_b, &pair.if_b);
    host.start();
    let rules = cli(&host.socket(), &["list", "rules"]);
    assert!(
        rules.ok && rules.stdout.contains("steer to cpus [0, 1]"),
        "{rules:?}"
    );

    let a: Ipv4Addr = pair.v4_a.parse().unwrap();
    let b: Ipv4Addr = pair.v4_b.parse().unwrap();
    let (lo, hi, n) = pack_cpus(&[0, 1]);
    // A source port whose flow goes to each CPU.
    let port_for = |cpu: u32| {
        (41000u16..42000)
            .find(|&sp| pick(lo, hi, n, flow_hash(words(a), words(b), sp, 7010, 17)) == Some(cpu))
            .expect("a port for the CPU")
    };
    let receivers = in_netns(&pair.ns_b, move || {
        [7010u16, 7011].map(|port| {
            let s = UdpSocket::bind((b, port)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        })
    });
    let [steered, plain] = &receivers;

    // Not steered: delivered, not counted.
    send(&pair.ns_a, 1, a, 40999, b, 7011, 20);
    assert_eq!(drain(plain), 20);
    assert_eq!(host.scratch.counter("STEER_STATS", SS_MATCHED), 0);

    for (target, from) in [(0u32, 1usize), (1, 0)] {
        let port = port_for(target);
        let delta = |before: &[u64], index| -> Vec<u64> {
            let now = per_cpu(&host, "STEER_STATS", index);
            now.iter().zip(before).map(|(x, y)| x - y).collect()
        };
        let matched = per_cpu(&host, "STEER_STATS", SS_MATCHED);
        let arrived = per_cpu(&host, "STEER_STATS", SS_ARRIVED);
        send(&pair.ns_a, from, a, port, b, 7010, SENT);
        assert_eq!(drain(steered), SENT, "every steered datagram delivered");
        let (matched, arrived) = (delta(&matched, SS_MATCHED), delta(&arrived, SS_ARRIVED));
        eprintln!(
            "flow from port {port} sent on CPU {from}: matched per CPU {matched:?}, arrived per \
             CPU {arrived:?}"
        );
        assert_eq!(matched[from], SENT, "XDP ran on the sending CPU {from}");
        assert_eq!(
            arrived[target as usize], SENT,
            "CPU {target} processed the flow"
        );
        assert_eq!(
            arrived[from], 0,
            "nothing processed on the sending CPU {from}"
        );
    }
    assert_eq!(host.scratch.counter("STEER_STATS", SS_MATCHED), 2 * SENT);
    assert!(host.scratch.counter("STEER_STATS", SS_SENT) >= 2 * SENT);
    let json = cli_json(&host.socket(), &["stats", "--json"]);
    assert!(
        json["counters"]["steer"]
            .as_array()
            .expect("counters.steer")
            .iter()
            .any(|c| c["name"] == "arrived" && c["value"].as_u64() >= Some(2 * SENT)),
        "{json}"
    );
    let stats = cli(&host.socket(), &["stats"]);
    assert!(
        stats.ok && stats.stdout.lines().any(|l| l.starts_with("steer:")),
        "{stats:?}"
    );
}
