//! A SYN flood from over a million spoofed sources against 1000 established flows: none of
//! the established flows may be lost, and every entry the tracker inserted must be accounted
//! for (promoted, expired, flushed, evicted or present), evictions included, which the kernel
//! never reports for an LRU table.
//!
//! The 1000 flows are opened through the real programs (SYN through the XDP firewall, SYN-ACK
//! through the TC egress tracker, ACK through the firewall). The flood then runs on one CPU
//! with `BPF_PROG_TEST_RUN` in XDP live-frames mode, while the other CPU keeps data flowing on
//! every established flow. The generator (`support/flood.rs`) stamps the next source address
//! on each frame and tail-calls the firewall: every SYN of the flood comes from an address
//! not seen before.
//!
//! Needs root; loads its own copy of the object.

mod support;

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Instant,
};

use palisade::{
    conntrack::{FlowFilter, balance, flows, read_stats, sweep, sweep_program},
    craft::TcpSegment,
    policy::config,
    testrun::{Bench, FIREWALL},
};
use palisade_common::{
    conntrack::{
        CS_ACCEPTED, CS_ESTABLISHED, CS_EXPIRED_LOOKUP_EST, CS_EXPIRED_LOOKUP_NEW, CS_INSERT_EST,
        CS_INSERT_FAIL_EST, CS_INSERT_FAIL_NEW, CS_INSERT_NEW, CS_INVALID, CS_NEW, CS_PICKUP,
        CS_PROMOTED, CS_RELATED, CS_REOPENED, CS_REOPENED_EST, CS_UNTRACKED, CT_STAT_NAMES,
        ENTRY_STATE_NAMES, PROTO_CLASSES, SWEEP_EXPIRE, SweepRequest, TABLE_EST, TABLE_NEW,
        TCP_ESTABLISHED, TCP_SYN_SENT,
    },
    packet::{TCP_ACK, TCP_PSH, TCP_SYN},
    stats,
};
use support::flood::{Generator, Then};

const XDP_PASS: u32 = 2;
/// The TC verdict of the egress tracker (`TC_ACT_UNSPEC`).
const TC_CONTINUE: i32 = -1;

/// Established flows kept alive through the flood.
const FLOWS: u32 = 1000;
/// Spoofed SYNs, each from its own source.
const FLOOD: u32 = 1 << 20;
/// SYNs per test run: the flood reports its progress between runs.
const CHUNK: u32 = 1 << 15;
/// The first spoofed source, 100.64.0.0 (shared address space, far from the real peers);
/// the generator adds a counter.
const FLOOD_BASE: u32 = 0x6440_0000;
/// Default capacity of the table of unvalidated flows (`[conntrack] max_unvalidated`).
const CT_NEW_CAPACITY: u64 = 16_384;

const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SSH: u16 = 22;
const PEER_PORT: u16 = 40_000;
/// Payload of each data segment on the established flows.
const DATA: u32 = 32;

const POLICY: &str = r#"
[firewall]
default = "drop"
stateful = true

[[firewall.rule]]
name = "ssh-in"
action = "allow"
proto = "tcp"
dport = 22
"#;

// ---------------------------------------------------------------------------------------
// Frames

/// An Ethernet + IPv4 + TCP frame, checksums included.
#[expect(clippy::too_many_arguments, reason = "one argument per header field")]
fn tcp_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: u32,
) -> Vec<u8> {
    TcpSegment::new(sport, dport, flags, seq, ack)
        .with_payload(payload as usize)
        .frame(src.into(), dst.into())
}

/// One of the established flows: a peer connected to the host's SSH port.
struct Peer {
    addr: Ipv4Addr,
    /// Next sequence number of the peer and of the host.
    seq: u32,
    host_seq: u32,
}

impl Peer {
    fn new(i: u32) -> Self {
        Self {
            addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + 1 + i),
            seq: 1_000 + i * 7_919,
            host_seq: 3_000_000 + i * 104_729,
        }
    }

    fn inbound(&self, flags: u8, seq: u32, ack: u32, payload: u32) -> Vec<u8> {
        tcp_frame(self.addr, HOST, PEER_PORT, SSH, flags, seq, ack, payload)
    }

    fn outbound(&self, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
        tcp_frame(HOST, self.addr, SSH, PEER_PORT, flags, seq, ack, 0)
    }
}

/// An anonymous network namespace for the test: the calling thread moves into it on creation
/// and back on drop, after which nothing holds it and the kernel removes it with its devices
/// (also when the test panics or is killed). Threads spawned meanwhile start inside it.
struct PrivateNetns {
    home: OwnedFd,
}

impl PrivateNetns {
    fn enter() -> Self {
        let home: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
            .expect("opening our network namespace")
            .into();
        // SAFETY: moves only the calling thread.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        Self { home }
    }

    fn ip(&self, args: &[&str]) {
        // A child starts in the namespace of the thread that spawns it.
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("running ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateNetns {
    fn drop(&mut self) {
        // SAFETY: setns on a namespace descriptor; moves only this thread.
        if unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!(
                "cannot return to the original network namespace: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Pins the calling thread to `cpu`, when the machine has it.
fn pin(cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpu >= cpus {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

// ---------------------------------------------------------------------------------------
// The test

/// Counter movements, by `CT_STATS` index.
fn moved(before: &[u64], after: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

fn show(v: &[u64]) -> String {
    v.iter()
        .zip(CT_STAT_NAMES)
        .filter(|(n, _)| **n != 0)
        .map(|(n, name)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sends one data segment in and its acknowledgement out on every flow; asserts that every
/// segment passes. Returns the number of segments sent each way.
fn round(bench: &Bench, peers: &mut [Peer]) -> u64 {
    for (i, p) in peers.iter_mut().enumerate() {
        let data = p.inbound(TCP_ACK | TCP_PSH, p.seq, p.host_seq, DATA);
        let action = bench.run(&data).expect("BPF_PROG_TEST_RUN (XDP)");
        assert_eq!(
            action, XDP_PASS,
            "data on established flow {i} ({})",
            p.addr
        );
        p.seq = p.seq.wrapping_add(DATA);
        let ack = p.outbound(TCP_ACK, p.host_seq, p.seq);
        let verdict = bench.run_ct_egress(&ack).expect("BPF_PROG_TEST_RUN (TC)");
        assert_eq!(verdict, TC_CONTINUE, "egress ACK on flow {i}");
    }
    peers.len() as u64
}

#[test]
fn syn_flood_from_a_million_sources_leaves_established_flows_alone() {
    let started = Instant::now();
    // Declared first, so dropped last: the programs are detached before the thread leaves.
    let netns = PrivateNetns::enter();
    let policy = config::parse_policy(POLICY, "flood.toml", Path::new(".")).expect("policy");
    let mut bench = Bench::new().expect("loading and verifying the kernel programs (needs root)");
    bench.install(&policy).expect("installing the policy");
    // Every XDP test run of a program that is not attached anywhere adds it to the kernel's
    // XDP dispatcher and removes it again, waiting for RCU grace periods each time: thousands
    // of runs would take minutes. Attached to a silent veth, it stays in the dispatcher (the
    // flood generator goes on the other end).
    netns.ip(&[
        "link", "add", "pin0", "type", "veth", "peer", "name", "pin1",
    ]);
    {
        let prog: &mut aya::programs::Xdp = bench
            .ebpf
            .program_mut(FIREWALL)
            .expect("firewall program")
            .try_into()
            .expect("an XDP program");
        prog.attach("pin0", aya::programs::XdpMode::Driver)
            .expect("attaching the firewall to a veth");
    }
    let ct0 = read_stats(&bench.ebpf).expect("CT_STATS");
    let passed0 = bench.stat(stats::PASSED).expect("STATS");
    let dropped0 = bench.stat(stats::DROPPED).expect("STATS");

    // 1000 inbound SSH connections, each through its whole handshake.
    let mut peers: Vec<Peer> = (0..FLOWS).map(Peer::new).collect();
    for (i, p) in peers.iter_mut().enumerate() {
        let syn = p.inbound(TCP_SYN, p.seq, 0, 0);
        assert_eq!(bench.run(&syn).expect("XDP"), XDP_PASS, "SYN of flow {i}");
        p.seq += 1;
        let syn_ack = p.outbound(TCP_SYN | TCP_ACK, p.host_seq, p.seq);
        assert_eq!(bench.run_ct_egress(&syn_ack).expect("TC"), TC_CONTINUE);
        p.host_seq += 1;
        let ack = p.inbound(TCP_ACK, p.seq, p.host_seq, 0);
        assert_eq!(bench.run(&ack).expect("XDP"), XDP_PASS, "ACK of flow {i}");
    }
    let opened = moved(&ct0, &read_stats(&bench.ebpf).expect("CT_STATS"));
    let n = u64::from(FLOWS);
    let mut want = vec![0u64; CT_STAT_NAMES.len()];
    for (i, v) in [
        (CS_NEW, n),
        (CS_ESTABLISHED, 2 * n),
        (CS_ACCEPTED, n),
        (CS_INSERT_NEW, n),
        (CS_INSERT_EST, n),
        (CS_PROMOTED, n),
    ] {
        want[i as usize] = v;
    }
    assert_eq!(
        opened,
        want,
        "counters after the handshakes: [{}], expected [{}]",
        show(&opened),
        show(&want)
    );

    // The flood on CPU 0, traffic on the established flows on CPU 1 until it ends.
    let template = tcp_frame(
        Ipv4Addr::from(FLOOD_BASE),
        HOST,
        1_024,
        SSH,
        TCP_SYN,
        1,
        0,
        0,
    );
    let generator = {
        let prog: &aya::programs::Xdp = bench
            .ebpf
            .program(FIREWALL)
            .expect("firewall program")
            .try_into()
            .expect("an XDP program");
        Generator::new(
            &template,
            Ipv4Addr::from(FLOOD_BASE),
            Then::TailCall(prog.fd().expect("loaded").as_fd()),
            "pin1",
        )
    };
    let flooded = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let mut rounds = 0u64;
    let mut rounds_during = 0u64;
    let flood_s = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            pin(0);
            // Frames the firewall passes are handed to the loopback device of the test's
            // namespace, where the stack discards them (not addressed to its MAC).
            let t = Instant::now();
            let mut sent = 0;
            while sent < FLOOD {
                let count = CHUNK.min(FLOOD - sent);
                generator.send(count);
                sent += count;
                flooded.store(u64::from(sent), Ordering::Release);
            }
            done.store(true, Ordering::Release);
            t.elapsed().as_secs_f64()
        });
        pin(1);
        while !done.load(Ordering::Acquire) {
            let at_start = flooded.load(Ordering::Acquire);
            round(&bench, &mut peers);
            rounds += 1;
            if at_start > 0 && !done.load(Ordering::Acquire) {
                rounds_during += 1;
            }
        }
        flood.join().expect("the flood thread panicked")
    });
    assert!(
        rounds_during > 0,
        "no round of traffic ran while the flood was under way ({rounds} rounds in all)"
    );

    // Every established flow still carries traffic as established.
    let before_last = read_stats(&bench.ebpf).expect("CT_STATS");
    round(&bench, &mut peers);
    rounds += 1;
    let last = moved(&before_last, &read_stats(&bench.ebpf).expect("CT_STATS"));
    let mut want = vec![0u64; CT_STAT_NAMES.len()];
    want[CS_ESTABLISHED as usize] = 2 * n;
    want[CS_ACCEPTED as usize] = n;
    assert_eq!(
        last,
        want,
        "a round after the flood: [{}], expected [{}]",
        show(&last),
        show(&want)
    );

    // Every counter, over the whole run.
    let total = moved(&ct0, &read_stats(&bench.ebpf).expect("CT_STATS"));
    let syns = u64::from(FLOOD);
    let at = |i: u32| total[i as usize];
    assert_eq!(at(CS_NEW), n + syns, "new: {}", show(&total));
    assert_eq!(
        at(CS_ESTABLISHED),
        2 * n + 2 * n * rounds,
        "established: {}",
        show(&total)
    );
    assert_eq!(
        at(CS_ACCEPTED),
        n + n * rounds,
        "accepted: {}",
        show(&total)
    );
    assert_eq!(
        at(CS_INSERT_NEW) + at(CS_INSERT_FAIL_NEW),
        n + syns,
        "every SYN passed tries one insert: {}",
        show(&total)
    );
    assert_eq!(
        (at(CS_INSERT_EST), at(CS_PROMOTED), at(CS_INSERT_FAIL_EST)),
        (n, n, 0),
        "only the handshakes reached the table of validated flows: {}",
        show(&total)
    );
    for i in [
        CS_RELATED,
        CS_INVALID,
        CS_EXPIRED_LOOKUP_NEW,
        CS_EXPIRED_LOOKUP_EST,
        CS_PICKUP,
        CS_REOPENED,
        CS_REOPENED_EST,
        CS_UNTRACKED,
    ] {
        assert_eq!(at(i), 0, "{}: {}", CT_STAT_NAMES[i as usize], show(&total));
    }
    let passed = bench.stat(stats::PASSED).expect("STATS") - passed0;
    let dropped = bench.stat(stats::DROPPED).expect("STATS") - dropped0;
    assert_eq!(
        (passed, dropped),
        (2 * n + syns + n * rounds, 0),
        "firewall verdicts (handshakes, flood, data)"
    );

    // The tables: a census, then the entries themselves.
    let census = sweep(
        sweep_program(&bench.ebpf).expect("sweep program"),
        &bench.ebpf,
        &SweepRequest {
            op: SWEEP_EXPIRE,
            ..SweepRequest::default()
        },
    )
    .expect("sweep");
    let tcp = 0;
    let live = |table: usize| -> u64 {
        (0..PROTO_CLASSES)
            .flat_map(|pc| census.live[table][pc])
            .map(u64::from)
            .sum()
    };
    assert_eq!(
        (
            live(TABLE_EST),
            u64::from(census.live[TABLE_EST][tcp][usize::from(TCP_ESTABLISHED)])
        ),
        (n, n),
        "the validated table holds the established flows and nothing else: {census:?}"
    );
    let present_new = live(TABLE_NEW);
    assert_eq!(
        u64::from(census.live[TABLE_NEW][tcp][usize::from(TCP_SYN_SENT)]),
        present_new,
        "the unvalidated table holds only SYNs: {census:?}"
    );
    assert!(
        present_new <= CT_NEW_CAPACITY && present_new > 0,
        "{present_new} unvalidated entries for a table of {CT_NEW_CAPACITY}"
    );

    let all = flows(&bench.ebpf, &FlowFilter::default()).expect("reading the tables");
    let est: std::collections::HashMap<Ipv4Addr, _> = all
        .iter()
        .filter(|f| f.table == "validated")
        .filter_map(|f| match f.orig_addr {
            std::net::IpAddr::V4(a) => Some((a, f)),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    for (i, p) in peers.iter().enumerate() {
        let f = est
            .get(&p.addr)
            .unwrap_or_else(|| panic!("established flow {i} ({}) is gone", p.addr));
        assert_eq!(
            (
                f.orig_port,
                f.reply_addr,
                f.reply_port,
                f.state.as_ref(),
                f.local
            ),
            (
                PEER_PORT,
                std::net::IpAddr::V4(HOST),
                SSH,
                ENTRY_STATE_NAMES[usize::from(TCP_ESTABLISHED)],
                false
            ),
            "flow {i}: {f:?}"
        );
        // SYN and ACK, then one data segment a round; SYN-ACK, then one ACK a round.
        assert_eq!(
            (u64::from(f.packets_orig), u64::from(f.packets_reply)),
            (2 + rounds, 1 + rounds),
            "every packet of flow {i} was counted in its entry: {f:?}"
        );
    }
    let base = u32::from(Ipv4Addr::from(FLOOD_BASE));
    let spoofed = |a: &std::net::IpAddr| match a {
        std::net::IpAddr::V4(a) => (base..base + FLOOD).contains(&u32::from(*a)),
        std::net::IpAddr::V6(_) => false,
    };
    let unvalidated: Vec<_> = all.iter().filter(|f| f.table == "unvalidated").collect();
    assert_eq!(
        unvalidated.len() as u64,
        present_new,
        "the census and the table agree"
    );
    assert!(
        unvalidated
            .iter()
            .all(|f| spoofed(&f.orig_addr) && f.state == "syn-sent"),
        "only spoofed SYNs are unvalidated"
    );
    let distinct: std::collections::HashSet<_> = unvalidated.iter().map(|f| f.orig_addr).collect();
    assert_eq!(
        distinct.len(),
        unvalidated.len(),
        "one entry per spoofed source"
    );

    // The balance: every entry inserted is accounted for. The flood's SYNs that are neither
    // present nor failed were evicted, and the counters must say so.
    let b = balance(&read_stats(&bench.ebpf).expect("CT_STATS"), &census);
    let failed = at(CS_INSERT_FAIL_NEW);
    let evicted = syns - failed - present_new;
    assert_eq!(b.failed, failed, "{b:?}");
    assert_eq!(
        (b.inserted, b.promoted, b.expired, b.flushed, b.present),
        (2 * n + syns - failed, n, 0, 0, n + present_new),
        "{b:?}"
    );
    assert_eq!(
        b.evicted, evicted as i64,
        "evictions derived from the counters: {b:?}"
    );
    assert!(
        evicted >= syns - failed - CT_NEW_CAPACITY,
        "a table of {CT_NEW_CAPACITY} keeps at most that many: {b:?}"
    );

    eprintln!(
        "flood: {syns} SYNs in {flood_s:.2} s ({:.0} ns each), {rounds} rounds on {FLOWS} \
         flows ({rounds_during} during the flood); {} evicted, {failed} inserts failed, \
         {present_new} SYNs still tracked; {:.1} s in all",
        flood_s * 1e9 / syns as f64,
        b.evicted,
        started.elapsed().as_secs_f64()
    );
}
