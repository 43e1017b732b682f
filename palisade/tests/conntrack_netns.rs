//! End to end: connection tracking with the real daemon on a routed path through network
//! namespaces (see `support/routed.rs`).
//!
//! The guarded host runs `palisade run` on its only interface with `default = "drop"`,
//! `stateful = true` and a single inbound rule (SSH), plus the ICMPv6 neighbour discovery
//! that a default-drop IPv6 host needs. Everything it opens itself (TCP, DNS to unbound, ping)
//! must work over both families; nothing else may come in; path MTU discovery through a
//! narrow middle hop must work; unsolicited ACKs and SYN-ACKs must not even draw a reset; and
//! established flows must carry on through `kill -9`, a restart, a graceful stop and reloads.
//!
//! The daemon runs under `nsenter --net`, so its pins (on a private bpffs of the test) are
//! visible to the test, which reads the tracker's counters and tables from them.

#[path = "support/control.rs"]
mod control;
#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use control::{GuardedHost, Proc};
use palisade::craft;
use palisade_common::{
    conntrack::{
        CS_ACCEPTED, CS_INVALID, CS_RELATED, CtEntry, CtKey, ENTRY_PICKUP, ENTRY_STATE_NAMES,
    },
    packet::{IPPROTO_TCP, TCP_ACK, TCP_RST, TCP_SYN},
    stats,
};
use support::{
    bulk::{BULK, pattern, sink, source, upload_through_narrow_hop},
    netns::{command_in, exec_in, in_netns, tcp_info},
    routed::Routed,
    wire::{Capture, send_ip, tcp_segment},
};

/// The guarded host's policy: nothing comes in but SSH (and neighbour discovery).
fn policy(stateful: bool, extra: &str) -> String {
    format!(
        r#"
[firewall]
default = "drop"
stateful = {stateful}

[[firewall.rule]]
name = "ssh-in"
action = "allow"
proto = "tcp"
dport = 22

# A default-drop IPv6 host must let neighbour discovery in, or it cannot reach its router.
[[firewall.rule]]
name = "nd-solicit"
action = "allow"
proto = "icmpv6"
icmp_type = 135

[[firewall.rule]]
name = "nd-advert"
action = "allow"
proto = "icmpv6"
icmp_type = 136

# The router's multicast listener reports (sent at link-up, at random times within a second
# or two): not what these tests count.
[[firewall.rule]]
name = "mld-report"
action = "allow"
proto = "icmpv6"
icmp_type = 143
{extra}
[conntrack]
enabled = true
"#
    )
}

/// The routed namespaces and the guarded host's daemon (with its private bpffs for the pins).
struct Lab {
    // Dropped first: the daemon goes before its namespaces.
    host: GuardedHost,
    net: Routed,
}

impl Lab {
    fn new(tag: &str, policy_text: &str) -> Self {
        dns_support::require("ip", "iproute2");
        dns_support::require("nsenter", "util-linux");
        let net = Routed::new();
        let host = GuardedHost::new(tag, policy_text, &net.guarded, Routed::GUARDED_IF);
        dns_support::check_policy(&host.policy);
        Self { host, net }
    }

    fn start(&mut self) {
        self.host.start();
    }

    fn daemon(&self) -> &Proc {
        self.host.daemon()
    }

    fn kill9(&mut self) {
        self.host.take_daemon().kill9();
    }

    /// SIGTERM; the policy and the tables stay pinned.
    fn stop(&mut self) {
        let mut d = self.host.take_daemon();
        d.signal(libc::SIGTERM);
        assert!(d.wait(Duration::from_secs(20)), "{:?}", d.stderr_now());
        let err = d.stderr_now();
        assert!(
            err.iter().any(|l| l.contains("the policy stays enforced")),
            "{err:?}"
        );
    }

    /// The path of pinned map `name`.
    fn pinned_map(&self, name: &str) -> PathBuf {
        self.host.scratch.pinned_map(name)
    }

    /// Makes the pinned programs look like another build's (an upgrade): the next daemon
    /// adopts the maps and links but loads its own programs and switches the links to them.
    fn pretend_upgrade(&self) {
        let layout = self
            .pinned_map("x")
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let progs: Vec<PathBuf> = std::fs::read_dir(&layout)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("progs-")
            })
            .collect();
        assert_eq!(progs.len(), 1, "{progs:?}");
        std::fs::rename(&progs[0], layout.join("progs-00000000deadbeef")).unwrap();
    }

    /// Entry `index` of the pinned per-CPU counter array `name`, summed over CPUs.
    fn counter(&self, name: &str, index: u32) -> u64 {
        self.host.scratch.counter(name, index)
    }

    fn ct_stat(&self, index: u32) -> u64 {
        self.counter("CT_STATS", index)
    }

    fn dropped(&self) -> u64 {
        self.counter("STATS", stats::DROPPED)
    }

    /// The validated-flow table's TCP entry with `port` at either end.
    fn established_tcp(&self, port: u16) -> Option<CtEntry> {
        let data = MapData::from_pin(self.pinned_map("CT_EST")).expect("open pinned table");
        let table: BpfHashMap<MapData, CtKey, CtEntry> =
            BpfHashMap::try_from(Map::HashMap(data)).expect("hash map");
        let found: Vec<CtEntry> = table
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.proto == IPPROTO_TCP && (k.a_port == port || k.b_port == port))
            .map(|(_, e)| e)
            .collect();
        assert!(found.len() <= 1, "{found:?}");
        found.first().copied()
    }

    /// Removes the validated-flow table's TCP entry with `port` at either end, as if the
    /// state had been lost.
    fn forget_tcp(&self, port: u16) {
        let data = MapData::from_pin(self.pinned_map("CT_EST")).expect("open pinned table");
        let mut table: BpfHashMap<MapData, CtKey, CtEntry> =
            BpfHashMap::try_from(Map::HashMap(data)).expect("hash map");
        let keys: Vec<CtKey> = table
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.proto == IPPROTO_TCP && (k.a_port == port || k.b_port == port))
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        table.remove(&keys[0]).expect("remove the entry");
    }
}

// ---------------------------------------------------------------------------------------
// Sockets in the namespaces

fn sockaddr(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse().unwrap(), port)
}

fn listen(ns: &str, addr: &str, port: u16) -> TcpListener {
    let a = sockaddr(addr, port);
    in_netns(ns, move || TcpListener::bind(a).expect("bind listener"))
}

fn connect(ns: &str, addr: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let a = sockaddr(addr, port);
    in_netns(ns, move || TcpStream::connect_timeout(&a, timeout))
}

/// Serves every connection on `l` with `serve`, each on a thread of its own, for the rest of
/// the test.
fn serve(l: TcpListener, serve: fn(TcpStream)) {
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            thread::spawn(move || serve(c));
        }
    });
}

/// Echoes everything back until the peer closes.
fn echo(mut c: TcpStream) {
    let _ = c.set_nodelay(true);
    let mut buf = [0u8; 4096];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 || c.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// A connection must come up, and carry a line both ways.
fn talk(ns: &str, addr: &str, port: u16) {
    let mut c = connect(ns, addr, port, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect from {ns} to {addr} port {port}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.write_all(b"palisade\n").unwrap();
    let mut got = [0u8; 9];
    c.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("reply from {addr} port {port}: {e}"));
    assert_eq!(&got, b"palisade\n");
}

/// A connection attempt that must time out (dropped, not refused).
fn assert_times_out(ns: &str, addr: &str, port: u16) {
    match connect(ns, addr, port, Duration::from_millis(1500)) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!("connect from {ns} to {addr} port {port} should time out: {other:?}"),
    }
}

fn ping(ns: &str, addr: &str) -> bool {
    exec_in(ns, "ping", &["-c", "2", "-i", "0.2", "-W", "1", addr])
        .status
        .success()
}

fn dig(ns: &str, server: &str, name: &str, qtype: &str, extra: &[&str]) -> dns_support::dig::Dig {
    let a = dns_support::dig::args(server, name, qtype, 2, extra);
    let mut cmd = command_in(ns, "dig");
    cmd.args(&a);
    dns_support::dig::run(cmd, a)
}

// ---------------------------------------------------------------------------------------
// One guarded host, every property in turn (a fresh daemon start verifies every program,
// which is by far the slowest step, so the scenarios share one)

/// The outside serves TCP echo (7), a sink (9000), a source (9001) and DNS; the guarded host
/// listens on 22 and 8080.
fn services(lab: &Lab) -> dns_support::unbound::Unbound {
    dns_support::require("unbound", "unbound");
    dns_support::require("dig", "dnsutils");
    dns_support::require("ping", "iputils-ping");
    for addr in [Routed::OUTSIDE_V4, Routed::OUTSIDE_V6] {
        serve(listen(&lab.net.outside, addr, 7), echo);
        serve(listen(&lab.net.outside, addr, 9000), sink);
        serve(listen(&lab.net.outside, addr, 9001), source);
    }
    for port in [22, 8080] {
        serve(listen(&lab.net.guarded, "::", port), echo);
    }
    dns_support::unbound::Unbound::start_in(
        &lab.net.outside,
        &[Routed::OUTSIDE_V4, Routed::OUTSIDE_V6],
    )
}

#[test]
fn a_stateful_default_drop_host_talks_out_and_lets_only_ssh_in() {
    let mut lab = Lab::new("ct-ns-host", &policy(true, ""));
    let unbound = services(&lab);
    let probes = Probes::new();

    // Without Palisade the port that the policy closes is reachable, and the stack answers
    // stray segments with resets: the failures below are the firewall's doing.
    talk(&lab.net.outside, Routed::GUARDED_V4, 8080);
    assert_eq!(probes.resets(&lab), [1, 1, 1, 1], "without Palisade");

    lab.start();
    talks_out(&lab, &unbound);
    lets_only_ssh_in(&lab);
    unsolicited_segments_draw_no_reset(&lab, &probes);
    large_transfers_cross_a_narrower_hop(&lab);

    // The control: the same policy without `stateful`. Tracking goes on, but the rules alone
    // decide, and no rule lets replies in: this is what the checks above would see if
    // `stateful` had no effect.
    lab.host.reload(&policy(false, ""));
    let accepted = lab.ct_stat(CS_ACCEPTED);
    for outside in [Routed::OUTSIDE_V4, Routed::OUTSIDE_V6] {
        assert_times_out(&lab.net.guarded, outside, 7);
        assert!(
            !ping(&lab.net.guarded, outside),
            "ping {outside} got an answer"
        );
        let d = dig(&lab.net.guarded, outside, "allowed.test", "A", &[]);
        assert!(!d.answered(), "{d}");
    }
    talk(&lab.net.outside, Routed::GUARDED_V4, 22);
    assert_eq!(
        lab.ct_stat(CS_ACCEPTED),
        accepted,
        "nothing accepted by state"
    );
}

/// Outbound TCP, DNS over UDP and TCP to unbound, and ping, over both families.
fn talks_out(lab: &Lab, unbound: &dns_support::unbound::Unbound) {
    let accepted = lab.ct_stat(CS_ACCEPTED);
    for outside in [Routed::OUTSIDE_V4, Routed::OUTSIDE_V6] {
        talk(&lab.net.guarded, outside, 7);
        assert!(ping(&lab.net.guarded, outside), "ping {outside}");
        for extra in [&[][..], &["+tcp"][..]] {
            let d = dig(&lab.net.guarded, outside, "allowed.test", "A", extra);
            assert_eq!(d.status.as_deref(), Some("NOERROR"), "{d}");
            assert_eq!(d.answers, ["192.0.2.1"], "{d}");
        }
    }
    // Errors about the host's own flows are related, and reach the application at once: a
    // reset answering a SYN, an ICMP port unreachable answering a datagram.
    let related = lab.ct_stat(CS_RELATED);
    for outside in [Routed::OUTSIDE_V4, Routed::OUTSIDE_V6] {
        let refused = connect(&lab.net.guarded, outside, 9, Duration::from_secs(3));
        assert!(
            matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "TCP to a closed port of {outside}: {refused:?}"
        );
        let to = sockaddr(outside, 9);
        let udp = in_netns(&lab.net.guarded, move || {
            let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let u = UdpSocket::bind(any).expect("bind UDP");
            u.connect(to).expect("connect UDP");
            u
        });
        udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        udp.send(b"anyone?").unwrap();
        let got = udp.recv(&mut [0u8; 64]);
        assert!(
            matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "UDP to a closed port of {outside}: {got:?}"
        );
    }
    assert!(
        lab.ct_stat(CS_RELATED) >= related + 2,
        "the port unreachables were related"
    );
    let questions = unbound.queries_for("allowed.test").len();
    assert_eq!(questions, 4, "{}", unbound.log_text());
    assert!(
        lab.ct_stat(CS_ACCEPTED) > accepted,
        "the replies were accepted as established"
    );
}

/// SSH comes in over both families; another listening port and ping do not.
fn lets_only_ssh_in(lab: &Lab) {
    let dropped = lab.dropped();
    for guarded in [Routed::GUARDED_V4, Routed::GUARDED_V6] {
        talk(&lab.net.outside, guarded, 22);
        assert_times_out(&lab.net.outside, guarded, 8080);
        assert!(!ping(&lab.net.outside, guarded), "ping {guarded} got in");
    }
    // At least one SYN and two echo requests per family.
    assert!(
        lab.dropped() >= dropped + 6,
        "dropped {} -> {}",
        dropped,
        lab.dropped()
    );
}

/// An ACK to a port with no connection and a SYN-ACK answering nothing, each family, sent
/// from the outside host.
struct Probes(Vec<craft::Frame>);

impl Probes {
    fn new() -> Self {
        Self(
            [
                (Routed::OUTSIDE_V4, Routed::GUARDED_V4),
                (Routed::OUTSIDE_V6, Routed::GUARDED_V6),
            ]
            .iter()
            .flat_map(|&(src, dst)| {
                [
                    craft::Frame::tcp(src, dst, 40001, 8080, TCP_ACK),
                    craft::Frame::tcp(src, dst, 443, 40002, TCP_SYN | TCP_ACK),
                ]
            })
            .collect(),
        )
    }

    /// Sends every probe; returns how many resets came back for each, as seen on the outside
    /// host's wire.
    fn resets(&self, lab: &Lab) -> Vec<usize> {
        let cap = Capture::start(&lab.net.outside, Routed::OUTSIDE_IF);
        for f in &self.0 {
            send_ip(&lab.net.outside, &f.build_ip(), f.dst);
        }
        let seen = cap.incoming(Duration::from_millis(500));
        self.0
            .iter()
            .map(|f| {
                let craft::L4::Tcp { sport, dport, .. } = f.l4 else {
                    unreachable!("the probes are TCP")
                };
                seen.iter()
                    .filter_map(|p| tcp_segment(p))
                    .filter(|s| {
                        s.src == f.dst
                            && s.dst == f.src
                            && s.sport == dport
                            && s.dport == sport
                            && s.flags & TCP_RST != 0
                    })
                    .count()
            })
            .collect()
    }
}

/// With Palisade the stray segments are judged invalid and dropped before the stack could
/// answer them (an answer would tell a scanner that the host is there).
fn unsolicited_segments_draw_no_reset(lab: &Lab, probes: &Probes) {
    let (invalid, dropped) = (lab.ct_stat(CS_INVALID), lab.dropped());
    assert_eq!(probes.resets(lab), [0, 0, 0, 0], "with Palisade");
    assert_eq!(
        lab.ct_stat(CS_INVALID) - invalid,
        4,
        "each probe was judged invalid"
    );
    assert!(
        lab.dropped() - dropped >= 4,
        "each probe was dropped: {} -> {}",
        dropped,
        lab.dropped()
    );
}

/// 8 MiB up and 8 MiB down, each family. The upload's full-size segments meet the narrow hop
/// with DF set, and only the router's ICMP error (related to the flow) tells the guarded host
/// to send smaller ones: without it the upload stalls.
fn large_transfers_cross_a_narrower_hop(lab: &Lab) {
    let data = pattern(BULK);
    for outside in [Routed::OUTSIDE_V4, Routed::OUTSIDE_V6] {
        let related = lab.ct_stat(CS_RELATED);
        let c = connect(&lab.net.guarded, outside, 9000, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect {outside}: {e}"));
        // The path MTU is learned from the router's error, which the firewall lets in.
        upload_through_narrow_hop(c, &data, outside, String::new);
        assert!(
            lab.ct_stat(CS_RELATED) > related,
            "no ICMP error was accepted as related"
        );

        // Download: a large inbound stream on an established flow.
        let started = Instant::now();
        let mut c = connect(&lab.net.guarded, outside, 9001, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect {outside}: {e}"));
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut got = Vec::with_capacity(BULK);
        c.read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("download from {outside} stalled: {e}"));
        eprintln!(
            "{outside}: {} MiB down in {:?}",
            BULK >> 20,
            started.elapsed()
        );
        assert_eq!(got.len(), BULK);
        assert!(got == data, "the download arrived altered");
    }
}

// ---------------------------------------------------------------------------------------
// Continuity

/// A long-lived connection exchanging small messages as fast as the echo comes back, until
/// stopped; counts exchanges and failures.
struct Chatter {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// The slowest exchange, in microseconds.
    slowest: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<TcpStream>>,
    local_port: u16,
}

impl Chatter {
    fn start(ns: &str, addr: &str, port: u16) -> Self {
        let mut c = connect(ns, addr, port, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        c.set_nodelay(true).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let local_port = c.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let slowest = Arc::new(AtomicU64::new(0));
        let (s, d, f, w) = (stop.clone(), done.clone(), failed.clone(), slowest.clone());
        let thread = thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let msg = i.to_be_bytes();
                let t = Instant::now();
                let mut got = [0u8; 8];
                let ok = c.write_all(&msg).is_ok() && c.read_exact(&mut got).is_ok() && got == msg;
                if ok {
                    d.fetch_add(1, Ordering::Relaxed);
                    w.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                } else {
                    f.fetch_add(1, Ordering::Relaxed);
                    // A broken connection stays broken; count it once and stop.
                    break;
                }
                i += 1;
                thread::sleep(Duration::from_millis(2));
            }
            c
        });
        Self {
            stop,
            done,
            failed,
            slowest,
            thread: Some(thread),
            local_port,
        }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more exchanges succeeded (panics after 5 s).
    fn progresses(&self, n: u64, what: &str) {
        let start = self.done();
        let t = Instant::now();
        while self.done() < start + n {
            assert!(
                self.failed.load(Ordering::Relaxed) == 0 && t.elapsed() < Duration::from_secs(5),
                "port {}: the connection stopped {what} ({} exchanges, {} failed)",
                self.local_port,
                self.done(),
                self.failed.load(Ordering::Relaxed)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops; returns (exchanges, failures, slowest exchange, the socket's TCP_INFO).
    fn finish(mut self) -> (u64, u64, Duration, libc::tcp_info) {
        self.stop.store(true, Ordering::Relaxed);
        let c = self.thread.take().unwrap().join().unwrap();
        (
            self.done(),
            self.failed.load(Ordering::Relaxed),
            Duration::from_micros(self.slowest.load(Ordering::Relaxed)),
            tcp_info(&c),
        )
    }
}

#[test]
fn established_flows_survive_kill_9_restarts_and_reloads() {
    let mut lab = Lab::new("ct-ns-continuity", &policy(true, ""));
    for addr in [Routed::OUTSIDE_V4, Routed::OUTSIDE_V6] {
        serve(listen(&lab.net.outside, addr, 7), echo);
    }
    lab.start();
    let flows = [
        Chatter::start(&lab.net.guarded, Routed::OUTSIDE_V4, 7),
        Chatter::start(&lab.net.guarded, Routed::OUTSIDE_V6, 7),
    ];
    let progress = |what: &str| {
        for f in &flows {
            f.progresses(50, what);
        }
    };
    progress("before anything happened");
    let entries: Vec<CtEntry> = flows
        .iter()
        .map(|f| {
            lab.established_tcp(f.local_port)
                .unwrap_or_else(|| panic!("no validated entry for port {}", f.local_port))
        })
        .collect();
    for e in &entries {
        assert_eq!(ENTRY_STATE_NAMES[usize::from(e.state)], "established");
        assert_eq!(e.flags & ENTRY_PICKUP, 0, "{e:?}");
    }
    let dropped = lab.dropped();

    // kill -9: nothing runs, the pinned programs and tables carry on.
    lab.kill9();
    progress("while no daemon ran after kill -9");
    lab.start();
    assert!(
        lab.daemon()
            .stderr_now()
            .iter()
            .any(|l| l.contains("adopted the pinned link on veth-g")),
        "{:?}",
        lab.daemon().stderr_now()
    );
    progress("after the restart");

    // A reload to a different policy (one more rule, other timeouts) through the CLI, then
    // back through SIGHUP.
    lab.host.reload(
        &policy(
            true,
            "\n[[firewall.rule]]\nname = \"alt-ssh\"\naction = \"allow\"\nproto = \"tcp\"\ndport = 2222\n",
        )
        .replace("enabled = true", "enabled = true\ntcp_established = 7200\n"),
    );
    progress("after a reload");
    std::fs::write(&lab.host.policy, policy(true, "")).unwrap();
    lab.daemon().signal(libc::SIGHUP);
    let t = Instant::now();
    while !lab
        .daemon()
        .stderr_now()
        .iter()
        .any(|l| l.contains("palisade: reloaded"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            lab.daemon().stderr_now()
        );
        thread::sleep(Duration::from_millis(20));
    }
    progress("after a SIGHUP reload");

    // A graceful stop, a pause, a start.
    lab.stop();
    progress("while no daemon ran after a stop");
    lab.start();
    progress("after the second restart");

    // An upgrade: the next build adopts the tables and links and switches the links to its
    // own programs.
    lab.kill9();
    lab.pretend_upgrade();
    lab.start();
    let err = lab.daemon().stderr_now();
    assert!(
        err.iter().any(|l| l.contains("programs reloaded")),
        "{err:?}"
    );
    progress("after an upgrade");

    for (f, before) in flows.iter().zip(&entries) {
        let now = lab
            .established_tcp(f.local_port)
            .unwrap_or_else(|| panic!("port {}: the entry is gone", f.local_port));
        assert_eq!(
            (
                now.created_ns,
                now.flags,
                ENTRY_STATE_NAMES[usize::from(now.state)]
            ),
            (before.created_ns, before.flags, "established"),
            "port {}: the entry was not kept",
            f.local_port
        );
        assert!(now.dirs[0].packets > before.dirs[0].packets);
        assert!(now.dirs[1].packets > before.dirs[1].packets);
    }
    assert_eq!(
        lab.dropped(),
        dropped,
        "the firewall dropped packets during the run"
    );

    // The control for the entry check above: state that is really lost comes back only as
    // an egress pickup (the flow goes on, as the host's next segment re-creates the entry),
    // with a new creation time and the pickup flag.
    let port = flows[0].local_port;
    lab.forget_tcp(port);
    progress("after its entry was removed");
    let again = lab
        .established_tcp(port)
        .unwrap_or_else(|| panic!("port {port}: no entry after the pickup"));
    assert_ne!(again.created_ns, entries[0].created_ns);
    assert_eq!(again.flags & ENTRY_PICKUP, ENTRY_PICKUP, "{again:?}");
    for f in flows {
        let port = f.local_port;
        let (done, failed, slowest, info) = f.finish();
        eprintln!(
            "port {port}: {done} exchanges, {failed} failed, slowest {slowest:?}, {} segments retransmitted",
            info.tcpi_total_retrans
        );
        // No exchange failed, and (above) the firewall dropped nothing: no segment of either
        // flow was lost. The slowest exchange and the retransmissions are reported, not
        // judged: on a busy machine a late echo can set off a tail-loss probe.
        assert_eq!(failed, 0, "port {port}");
    }
}
