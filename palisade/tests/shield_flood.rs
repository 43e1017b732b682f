//! A SYN flood from over a million spoofed sources against a port with SYN cookies, while
//! real clients connect and established flows carry data.
//!
//! The real daemon guards the guarded host of the routed netns lab (`support/routed.rs`).
//! The flood is generated with `BPF_PROG_TEST_RUN` in XDP live-frames mode, as if received
//! by the guarded host's interface: the generator (`support/flood.rs`) stamps a new source
//! on each SYN and tail-calls the daemon's pinned firewall, whose cookie SYN-ACKs really
//! leave with `XDP_TX` towards the router (which discards them: no route back to the
//! spoofed sources). Meanwhile Python clients in the outside namespace connect to an echo
//! server on the guarded host, and 100 connections opened before the flood exchange data
//! all along. At least 99 % of the clients' connections must succeed, and every established
//! flow must carry on with no reset.

#[path = "support/control.rs"]
mod control;
#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd as _,
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use aya::programs::Xdp;
use aya_obj::programs::XdpAttachType;
use control::{GuardedHost, pinned_firewall};
use palisade_common::shield::{
    SH_COOKIE_SENT, SH_COOKIE_UNANSWERED, SH_COOKIE_VALID, SH_COUNT, SH_ENGAGED, SH_NAMES, SH_SYN,
    SH_SYN_TO_STACK,
};
use support::{
    flood::{Generator, Then, ifindex},
    netns::{exec_in, in_netns, nsenter},
    routed::{Routed, ip},
};

const PORT: u16 = 8080;
/// Spoofed SYNs, each from its own source.
const FLOOD: u32 = 1 << 20;
/// SYNs per test run: the flood reports its progress between runs.
const CHUNK: u32 = 1 << 14;
/// The first spoofed source, 100.64.0.0 (shared address space, routed nowhere).
const FLOOD_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// Connections opened before the flood and kept talking through it.
const FLOWS: usize = 100;
/// Concurrent real clients, each connecting again and again.
const CLIENTS: usize = 4;
/// `syn_rate` for the test where the rate engages cookies.
const SYN_RATE: u32 = 2000;

fn policy(cookies: &str) -> String {
    format!(
        r#"
[firewall]
default = "drop"
stateful = true

[[firewall.rule]]
action = "allow"
proto = "tcp"
dport = {PORT}

[shield]
syn_ports = [{PORT}]
syn_cookies = "{cookies}"
syn_rate = {SYN_RATE}
tcp_invalid = "drop"
"#
    )
}

struct Lab {
    host: GuardedHost,
    _router_xdp: dns_support::xdp::XdpPass,
    net: Routed,
}

impl Lab {
    fn new(tag: &str, cookies: &str) -> Self {
        dns_support::require("ip", "iproute2");
        dns_support::require("nsenter", "util-linux");
        dns_support::require("python3", "python3");
        dns_support::require("nstat", "iproute2");
        let net = Routed::new();
        let mut host = GuardedHost::new(tag, &policy(cookies), &net.guarded, Routed::GUARDED_IF);
        dns_support::check_policy(&host.policy);
        // Cookie SYN-ACKs cross the veth pair only when its other end runs XDP too.
        let router_xdp = dns_support::xdp::XdpPass::attach(&net.router, "veth-rg");
        // The spoofed sources are routed nowhere: the router discards the answers quietly.
        ip(&[
            "-n",
            &net.router,
            "route",
            "add",
            "blackhole",
            "100.64.0.0/10",
        ]);
        // A silent interface where the generator is parked (see `support/flood.rs`).
        ip(&[
            "-n",
            &net.guarded,
            "link",
            "add",
            "park0",
            "type",
            "veth",
            "peer",
            "name",
            "park1",
        ]);
        host.start();
        Self {
            host,
            _router_xdp: router_xdp,
            net,
        }
    }

    fn counters(&self) -> Vec<u64> {
        (0..SH_COUNT)
            .map(|i| self.host.scratch.counter("SHIELD_STATS", i))
            .collect()
    }
}

/// The MAC address of `iface` in namespace `ns`.
fn mac(ns: &str, iface: &str) -> [u8; 6] {
    let out = exec_in(ns, "cat", &[&format!("/sys/class/net/{iface}/address")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("a MAC address"))
        .collect();
    bytes.try_into().expect("six bytes")
}

/// The kernel's TCP counters in `ns` that the test reports (`nstat`, absolute).
fn nstat(ns: &str, names: &[&str]) -> Vec<u64> {
    let out = exec_in(ns, "nstat", &["-az"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    names
        .iter()
        .map(|n| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(n))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {n} in nstat: {text}"))
        })
        .collect()
}

/// Frames received by `iface` in `ns`.
fn rx_packets(ns: &str, iface: &str) -> u64 {
    link_stat(ns, iface, "rx_packets")
}

/// One of `iface`'s statistics in `ns`.
fn link_stat(ns: &str, iface: &str, stat: &str) -> u64 {
    let out = exec_in(
        ns,
        "cat",
        &[&format!("/sys/class/net/{iface}/statistics/{stat}")],
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a packet count")
}

/// Echoes every read back until the peer closes.
fn serve_echo(l: TcpListener) {
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// One round on an established flow: a line out, the same line back.
fn talk(c: &TcpStream, flow: usize, round: u64) {
    let mut c = c;
    let line = format!("flow {flow:03} round {round:06}\n");
    c.write_all(line.as_bytes())
        .unwrap_or_else(|e| panic!("flow {flow}, round {round}: {e}"));
    let mut got = vec![0u8; line.len()];
    c.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("flow {flow}, round {round}: {e}"));
    assert_eq!(got, line.as_bytes(), "flow {flow}, round {round}");
}

/// Real clients (Linux's TCP through Python's sockets): each of `CLIENTS` threads connects,
/// sends a line, reads it back and closes, again and again until stdin closes; then prints
/// `ok N fail M {errors}`, counted from the line on stdin that starts the flood.
const CLIENT: &str = r"
import socket, sys, threading, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stop = threading.Event()
lock = threading.Lock()
res = {'ok': 0, 'fail': 0}
errs = {}
def worker(k):
    i = 0
    while not stop.is_set():
        i += 1
        msg = b'legit %d %d\n' % (k, i)
        err = 'short echo'
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.settimeout(5)
            s.sendall(msg)
            got = b''
            while len(got) < len(msg):
                d = s.recv(100)
                if not d:
                    break
                got += d
            s.close()
            ok = got == msg
        except OSError as e:
            ok, err = False, type(e).__name__
        with lock:
            if ok:
                res['ok'] += 1
            else:
                res['fail'] += 1
                errs[err] = errs.get(err, 0) + 1
        time.sleep(0.01)
ts = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
for t in ts:
    t.start()
print('ready', flush=True)
sys.stdin.readline()
with lock:
    res = {'ok': 0, 'fail': 0}
    errs.clear()
sys.stdin.read()
stop.set()
for t in ts:
    t.join()
print('ok', res['ok'], 'fail', res['fail'], errs, flush=True)
";

/// Pins the calling thread to `cpu`, when the machine has it.
fn pin(cpu: usize) {
    let cpus = thread::available_parallelism().map_or(1, usize::from);
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

/// What one flood measured.
struct Outcome {
    counters: Vec<u64>,
    flood_s: f64,
    legit_ok: u64,
    legit_fail: u64,
}

fn show(v: &[u64]) -> String {
    v.iter()
        .zip(SH_NAMES)
        .filter(|(n, _)| **n != 0)
        .map(|(n, name)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn flood(tag: &str, cookies: &str) -> Outcome {
    let started = Instant::now();
    let lab = Lab::new(tag, cookies);
    let server: SocketAddr = SocketAddr::new(Routed::GUARDED_V4.parse().unwrap(), PORT);
    serve_echo(in_netns(&lab.net.guarded, move || {
        TcpListener::bind(server).unwrap()
    }));

    // The established flows, each checked once before the flood.
    let flows: Vec<TcpStream> = (0..FLOWS)
        .map(|_| {
            in_netns(&lab.net.outside, move || {
                TcpStream::connect_timeout(&server, Duration::from_secs(3)).unwrap()
            })
        })
        .collect();
    for (i, c) in flows.iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        talk(c, i, 0);
    }

    // The flood's SYN: Linux's options (MSS, SACK, timestamp, window scale), from the
    // router's MAC to the guarded interface's.
    let options = [
        2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
    ];
    let mut template = palisade::craft::TcpSegment::new(40_000, PORT, 0x02, 1, 0)
        .frame_with_options(
            FLOOD_BASE.into(),
            Routed::GUARDED_V4.parse().unwrap(),
            &options,
        );
    template[..6].copy_from_slice(&mac(&lab.net.guarded, Routed::GUARDED_IF));
    template[6..12].copy_from_slice(&mac(&lab.net.router, "veth-rg"));
    let firewall = Xdp::from_pin(
        pinned_firewall(&lab.host.scratch.pin_dir()),
        XdpAttachType::Interface,
    )
    .expect("the daemon's pinned firewall");

    // Counted from before the first client connects.
    let before = lab.counters();
    let kernel_names = [
        "TcpExtSyncookiesSent",
        "TcpExtSyncookiesRecv",
        "TcpExtSyncookiesFailed",
        "TcpExtListenDrops",
        "TcpEstabResets",
    ];
    let kernel_before = nstat(&lab.net.guarded, &kernel_names);
    let mut client = nsenter(&lab.net.outside, "python3")
        .args([
            "-c",
            CLIENT,
            Routed::GUARDED_V4,
            &PORT.to_string(),
            &CLIENTS.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the client did not start");

    let router_rx = rx_packets(&lab.net.router, "veth-rg");
    let tx_dropped = link_stat(&lab.net.guarded, Routed::GUARDED_IF, "tx_dropped");
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"flood\n").unwrap();
    let done = AtomicBool::new(false);
    let flood_path = format!("/var/run/netns/{}", lab.net.guarded);
    let (flood_s, rounds_during) = thread::scope(|s| {
        let flooding = s.spawn(|| {
            let ns = std::fs::File::open(&flood_path).expect("the guarded namespace");
            // SAFETY: setns with a namespace file we hold open; it moves this thread only.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            pin(0);
            let generator = Generator::new(
                &template,
                FLOOD_BASE,
                Then::TailCall(firewall.fd().expect("loaded").as_fd()),
                "park1",
            );
            let guarded = ifindex(Routed::GUARDED_IF);
            let t = Instant::now();
            let mut sent = 0;
            while sent < FLOOD {
                let n = CHUNK.min(FLOOD - sent);
                generator.send_on(n, guarded);
                sent += n;
            }
            let took = t.elapsed().as_secs_f64();
            done.store(true, Ordering::Release);
            assert_eq!(generator.stamped(), FLOOD, "frames stamped");
            took
        });
        pin(1);
        let mut rounds = 0;
        while !done.load(Ordering::Acquire) {
            rounds += 1;
            for (i, c) in flows.iter().enumerate() {
                talk(c, i, rounds);
            }
            thread::sleep(Duration::from_millis(20));
        }
        (flooding.join().expect("the flood thread panicked"), rounds)
    });
    drop(stdin);
    let answers = rx_packets(&lab.net.router, "veth-rg") - router_rx;
    // A veth pair drops what its peer's ring cannot take (counted as the sender's tx drops).
    let ring_full = link_stat(&lab.net.guarded, Routed::GUARDED_IF, "tx_dropped") - tx_dropped;
    line.clear();
    out.read_line(&mut line).unwrap();
    let _ = client.wait();
    let after = lab.counters();
    let kernel_after = nstat(&lab.net.guarded, &kernel_names);
    let counters: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let kernel: Vec<String> = kernel_names
        .iter()
        .zip(kernel_after.iter().zip(&kernel_before))
        .map(|(n, (a, b))| format!("{n} {}", a - b))
        .collect();

    // The answers really left: every cookie SYN-ACK reached the router, or was dropped by
    // the veth pair for a full ring. On a kernel without live-frames test runs the flood runs
    // in copy mode (`support::flood`), where an `XDP_TX` verdict ends the run: the flood's
    // answers are then counted, not sent (the real clients' cookies below still leave).
    if support::flood::live_frames() {
        assert!(
            answers + ring_full >= counters[SH_COOKIE_SENT as usize],
            "the router received {answers} frames ({ring_full} dropped on the way) for {} \
             cookie SYN-ACKs",
            counters[SH_COOKIE_SENT as usize]
        );
    } else {
        assert!(
            counters[SH_COOKIE_SENT as usize] >= u64::from(FLOOD) / 2,
            "{} cookie SYN-ACKs for a flood of {FLOOD}",
            counters[SH_COOKIE_SENT as usize]
        );
    }

    // Every established flow carries on, and none was reset.
    for (i, c) in flows.iter().enumerate() {
        talk(c, i, rounds_during + 1);
    }
    assert!(rounds_during > 0, "no round of data ran during the flood");
    assert_eq!(
        kernel_after[4], 0,
        "established connections reset on the guarded host: {kernel:?}"
    );
    let outside_resets = nstat(&lab.net.outside, &["TcpEstabResets"]);
    assert_eq!(outside_resets, [0], "established connections reset outside");

    // The real clients.
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(
        fields.len() >= 4 && fields[0] == "ok" && fields[2] == "fail",
        "client output: {line:?}"
    );
    let legit_ok: u64 = fields[1].parse().unwrap();
    let legit_fail: u64 = fields[3].parse().unwrap();
    eprintln!(
        "{tag}: {FLOOD} spoofed SYNs in {flood_s:.2} s ({:.0} SYNs/s, {:.0} ns each); real \
         clients {legit_ok} connections succeeded, {legit_fail} failed ({}); {rounds_during} \
         rounds on {FLOWS} established flows during the flood; shield: {}; the router received \
         {answers} frames ({ring_full} dropped by the veth pair for a full ring); guarded host's kernel: {}; {:.1} s in all",
        f64::from(FLOOD) / flood_s,
        flood_s * 1e9 / f64::from(FLOOD),
        line.trim(),
        show(&counters),
        kernel.join(", "),
        started.elapsed().as_secs_f64()
    );
    Outcome {
        counters,
        flood_s,
        legit_ok,
        legit_fail,
    }
}

/// The checks both modes share: the real clients' success rate, and what the counters say
/// about the flood.
fn check(o: &Outcome) {
    let attempts = o.legit_ok + o.legit_fail;
    assert!(
        attempts >= 50,
        "only {attempts} client connections in {:.2} s of flood",
        o.flood_s
    );
    assert!(
        o.legit_ok * 100 >= attempts * 99,
        "{} of {attempts} client connections succeeded (under 99 %)",
        o.legit_ok
    );
    let c = &o.counters;
    let at = |i: u32| c[i as usize];
    let flood = u64::from(FLOOD);
    assert!(at(SH_SYN) >= flood, "SYNs seen: {}", show(c));
    assert_eq!(at(SH_COOKIE_UNANSWERED), 0, "{}", show(c));
}

#[test]
fn a_million_spoofed_syns_against_forced_cookies_leave_real_clients_and_flows_alone() {
    let o = flood("shield-flood-on", "on");
    check(&o);
    let c = &o.counters;
    let at = |i: u32| c[i as usize];
    // Forced on: every SYN is answered from XDP but the few that keep the listener taking
    // cookies (one per listener slot every 30 s).
    assert!(
        at(SH_COOKIE_SENT) + at(SH_SYN_TO_STACK) >= u64::from(FLOOD) && at(SH_SYN_TO_STACK) <= 4,
        "{}",
        show(c)
    );
    // Every client connection came back with a valid cookie, unless its SYN was one of those
    // the stack answered itself.
    assert!(
        at(SH_COOKIE_VALID) + at(SH_SYN_TO_STACK) >= o.legit_ok,
        "{} client connections: {}",
        o.legit_ok,
        show(c)
    );
}

#[test]
fn a_million_spoofed_syns_engage_cookies_by_rate() {
    let o = flood("shield-flood-auto", "auto");
    check(&o);
    let c = &o.counters;
    let at = |i: u32| c[i as usize];
    // The rate engages cookies within its first window; from then on they answer every SYN
    // (the flood never lets the rate fall).
    assert!(at(SH_ENGAGED) >= 1, "{}", show(c));
    let before_engaged = 2 * u64::from(SYN_RATE);
    assert!(
        at(SH_COOKIE_SENT) + before_engaged >= u64::from(FLOOD),
        "{}",
        show(c)
    );
}
