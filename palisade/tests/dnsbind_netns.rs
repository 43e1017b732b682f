//! End to end, DNS binding: the real `palisade` binary with `[dns.bind]` on a throw-away
//! cgroup v2 directory; a python3 client in that cgroup, in namespace A, resolves names at a
//! real resolver (unbound, namespace B) and connects to the answers' addresses, where a real
//! TCP server (python3, namespace B, answering on whole address ranges) accepts.
//!
//! - Trials that connect immediately after each answer, every one to an address never
//!   resolved before (so no earlier binding helps): none is refused.
//! - Connections (TCP `connect`, UDP `sendto`) to addresses never resolved: all refused
//!   with `EPERM`, and the refusal is an event naming the process and its cgroup; the same
//!   connections from outside the cgroup succeed.
//! - A binding ends with its TTL plus the grace period.
//!
//! Trials are bounded by time (the issue asks for 10,000 of each; the test runs as many as
//! fit in [`TRIAL_SECS`] and prints how many ran).

#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
};

use dns_support::{
    TempDir,
    cgroup::{TestCgroup, palisade_with_cgroups},
    check_policy, dns_events, require, run_args,
    unbound::Unbound,
};
use serde_json::Value;
use support::{
    daemon::Daemon,
    netns::{NetnsPair, nsenter},
};

/// How many distinct names (and addresses) unbound serves for the trials.
const NAMES: u32 = 10_000;
/// Names with an AAAA record (`v6h<i>` -> `fd77::<i>`).
const V6_NAMES: u32 = 2_000;
/// Time each bulk trial may take at most.
const TRIAL_SECS: u32 = 25;
/// The port of the test server.
const PORT: u16 = 8080;

/// The client. Modes: `resolve` (query `h<i>.bind.test` A, connect at once to the answer's
/// address), `direct` (connect to `10.78.<i>` without resolving), `udp` (sendto `10.78.<i>`
/// on an unconnected UDP socket). Prints one JSON line of counts.
const CLIENT: &str = r"
import errno, json, os, socket, struct, sys, time
mode, server, first, count, port, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
deadline = time.monotonic() + secs
out = {'pid': os.getpid(), 'done': 0, 'ok': 0, 'eperm': 0, 'other': {}, 'noanswer': 0, 'first_refused': None}
q = socket.socket(socket.AF_INET6 if ':' in server else socket.AF_INET, socket.SOCK_DGRAM)
q.settimeout(3)
q.connect((server, 53))
def resolve(name, qtype):
    m = struct.pack('>HHHHHH', i & 0xffff, 0x0100, 1, 0, 0, 0)
    m += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0' + struct.pack('>HH', qtype, 1)
    q.send(m)
    r = q.recv(512)
    if struct.unpack('>H', r[6:8])[0] < 1:
        return None
    return r[-4:] if qtype == 1 else r[-16:]
t0 = time.monotonic()
for i in range(first, first + count):
    if time.monotonic() > deadline:
        break
    fam = socket.AF_INET
    if mode in ('resolve', 'mapped', 'udpbound'):
        a = resolve('h%d.bind.test' % i, 1)
        if a is None:
            out['noanswer'] += 1
            continue
        ip = socket.inet_ntoa(a)
        if mode == 'mapped':
            fam, ip = socket.AF_INET6, '::ffff:' + ip
    elif mode == 'resolve6':
        a = resolve('v6h%d.bind.test' % i, 28)
        if a is None:
            out['noanswer'] += 1
            continue
        fam, ip = socket.AF_INET6, socket.inet_ntop(socket.AF_INET6, a)
    elif mode == 'direct6':
        fam, ip = socket.AF_INET6, 'fd78::%x' % i
    elif mode == 'bound':
        ip = '10.77.%d.%d' % ((i >> 8) & 255, i & 255)
    else:
        ip = '10.78.%d.%d' % ((i >> 8) & 255, i & 255)
    try:
        if mode in ('udp', 'udpbound'):
            u = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                u.sendto(b'x', (ip, port))
            finally:
                u.close()
        else:
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(3)
            try:
                s.connect((ip, port))
            finally:
                s.close()
        out['ok'] += 1
    except OSError as e:
        if e.errno == errno.EPERM:
            out['eperm'] += 1
            if out['first_refused'] is None:
                out['first_refused'] = ip
        else:
            out['other'][str(e.errno)] = out['other'].get(str(e.errno), 0) + 1
    out['done'] += 1
out['elapsed'] = time.monotonic() - t0
print(json.dumps(out))
";

/// Accepts and closes connections on every address of the namespace (its local ranges).
const SERVER: &str = r"
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(('::', int(sys.argv[1])))
s.listen(4096)
print('ready', flush=True)
while True:
    c, _ = s.accept()
    c.close()
";

/// A child process killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ip_in(pair: &NetnsPair, ns: &str, args: &[&str]) {
    let out = pair.exec(ns, "ip", args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Routes `10.77.0.0/16` (names the resolver answers), `10.78.0.0/16` (never resolved) and
/// `10.79.0.0/16` (short TTLs) from A to B, where they are local, and starts the server.
fn lab(pair: &NetnsPair) -> Server {
    for net in ["10.77.0.0/16", "10.78.0.0/16", "10.79.0.0/16"] {
        ip_in(pair, &pair.ns_a, &["route", "add", net, "via", &pair.v4_b]);
        ip_in(
            pair,
            &pair.ns_b,
            &["route", "add", "local", net, "dev", "lo"],
        );
    }
    for net in ["fd77::/64", "fd78::/64"] {
        ip_in(
            pair,
            &pair.ns_a,
            &["-6", "route", "add", net, "via", &pair.v6_b],
        );
        ip_in(
            pair,
            &pair.ns_b,
            &["-6", "route", "add", "local", net, "dev", "lo"],
        );
    }
    // The resolver binds B's IPv6 address: wait until it is no longer tentative.
    let start = std::time::Instant::now();
    while !String::from_utf8_lossy(
        &pair
            .exec(
                &pair.ns_b,
                "ip",
                &["-6", "addr", "show", "dev", &pair.if_b, "tentative"],
            )
            .stdout,
    )
    .trim()
    .is_empty()
    {
        assert!(
            start.elapsed().as_secs() < 10,
            "B's IPv6 address stays tentative"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut child = pair
        .command(&pair.ns_b, "python3")
        .args(["-c", SERVER, &PORT.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("server ready");
    assert_eq!(line.trim(), "ready");
    Server(child)
}

/// Writes `text` as the policy in `dir`, checks it with `palisade check`, and starts the
/// daemon on A's interface, in A's namespace with the host's cgroup tree.
fn start_daemon(pair: &NetnsPair, dir: &TempDir, text: &str) -> Daemon {
    let path = dir.write("policy.toml", text);
    check_policy(&path);
    let run = run_args(dir, &path, &pair.if_a);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    Daemon::start_command(palisade_with_cgroups(pair, &pair.ns_a, &run))
}

fn zone() -> Vec<String> {
    // The bulk trials' names, then fresh ones for the v4-mapped and UDP trials.
    let mut v: Vec<String> = (1..=NAMES)
        .chain(20_001..=20_500)
        .chain(30_001..=30_500)
        .map(|i| format!("h{i}.bind.test. 300 IN A 10.77.{}.{}", i >> 8, i & 255))
        .collect();
    v.extend((1..=V6_NAMES).map(|i| format!("v6h{i}.bind.test. 300 IN AAAA fd77::{i:x}")));
    v.push("short.bind.test. 1 IN A 10.79.0.1".into());
    v
}

fn policy(cg: &TestCgroup, resolver: &str, resolver6: &str) -> String {
    format!(
        r#"
[dns.bind]
cgroups = ["{}"]
allow = ["{resolver}/32", "{resolver6}"]
grace = 1
"#,
        cg.path.display()
    )
}

fn client(cg: Option<&TestCgroup>, ns: &str, argv: &[String]) -> Value {
    let mut full: Vec<&str> = vec!["python3", "-c", CLIENT];
    full.extend(argv.iter().map(String::as_str));
    let mut cmd = match cg {
        Some(cg) => cg.command_in_ns(ns, &full),
        None => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns]).args(&full);
            c
        }
    };
    let out = cmd.stdin(Stdio::null()).output().expect("run client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn args(mode: &str, server: &str, first: u32, count: u32, secs: u32) -> Vec<String> {
    vec![
        mode.into(),
        server.into(),
        first.to_string(),
        count.to_string(),
        PORT.to_string(),
        secs.to_string(),
    ]
}

#[test]
fn bind_mode_connects_only_to_resolved_addresses() {
    require("ip", "iproute2");
    require("unbound", "unbound");
    require("python3", "python3");
    let pair = NetnsPair::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new("dns-bind");
    let _server = lab(&pair);
    let _unbound = Unbound::start_with(&pair.ns_b, &[&pair.v4_b, &pair.v6_b], &zone());

    let daemon = start_daemon(&pair, &dir, &policy(&cg, &pair.v4_b, &pair.v6_b));
    let note = format!("palisade: DNS binding on cgroup {}", cg.path.display());
    assert!(
        daemon.stderr_now().contains(&note),
        "{:?}",
        daemon.stderr_now()
    );

    // --- connect immediately after each answer: no false refusal ---
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("resolve", &pair.v4_b, 1, NAMES, TRIAL_SECS),
    );
    let done = r["done"].as_u64().unwrap();
    eprintln!(
        "resolve-then-connect trials: {done} in {:.1} s: {r}",
        r["elapsed"]
    );
    assert!(done >= 1000, "too few trials ran: {r}");
    assert_eq!(
        r["eperm"], 0,
        "no connect right after its answer is refused: {r}"
    );
    assert_eq!(
        r["ok"].as_u64().unwrap(),
        done,
        "every trial connected: {r}"
    );
    assert_eq!(r["noanswer"], 0, "{r}");

    // --- never resolved: every connect and every UDP send refused ---
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("direct", &pair.v4_b, 1, NAMES, TRIAL_SECS),
    );
    let done = r["done"].as_u64().unwrap();
    eprintln!(
        "connects to never-resolved addresses: {done} in {:.1} s: {r}",
        r["elapsed"]
    );
    assert!(done >= 1000, "{r}");
    assert_eq!(
        r["ok"], 0,
        "no connect to a never-resolved address passes: {r}"
    );
    assert_eq!(
        r["eperm"].as_u64().unwrap(),
        done,
        "each refused with EPERM: {r}"
    );
    let refused_pid = r["pid"].as_u64().unwrap();
    let refused_ip = r["first_refused"].as_str().unwrap().to_owned();
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("udp", &pair.v4_b, 1, 2000, TRIAL_SECS),
    );
    assert_eq!(
        r["ok"], 0,
        "no UDP send to a never-resolved address passes: {r}"
    );
    assert_eq!(r["eperm"], r["done"], "{r}");

    // --- outside the cgroup the same destinations are reachable ---
    let r = client(
        None,
        &pair.ns_a,
        &args("direct", &pair.v4_b, 1, 50, TRIAL_SECS),
    );
    assert_eq!(r["ok"], 50, "outside the cgroup nothing is refused: {r}");

    // --- IPv6: AAAA answers bind, never-resolved IPv6 destinations are refused ---
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("resolve6", &pair.v6_b, 1, V6_NAMES, TRIAL_SECS),
    );
    eprintln!("IPv6 resolve-then-connect trials: {r}");
    assert!(r["done"].as_u64().unwrap() >= 500, "{r}");
    assert_eq!(
        r["ok"], r["done"],
        "no IPv6 connect right after its answer is refused: {r}"
    );
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("direct6", &pair.v6_b, 1, V6_NAMES, TRIAL_SECS),
    );
    assert_eq!(r["ok"], 0, "{r}");
    assert_eq!(
        r["eperm"], r["done"],
        "never-resolved IPv6 destinations refused: {r}"
    );

    // --- an IPv6 socket to an IPv4-mapped address matches the IPv4 binding; UDP sends to
    // bound addresses pass ---
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("mapped", &pair.v4_b, 20_001, 500, TRIAL_SECS),
    );
    assert_eq!(r["done"], 500, "{r}");
    assert_eq!(
        r["ok"], 500,
        "v4-mapped connects to resolved addresses pass: {r}"
    );
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("udpbound", &pair.v4_b, 30_001, 500, TRIAL_SECS),
    );
    assert_eq!(r["done"], 500, "{r}");
    assert_eq!(r["ok"], 500, "UDP sends to resolved addresses pass: {r}");

    // --- a binding ends with TTL + grace (1 s + 1 s) ---
    let short = r"
import json, socket, struct, sys, time
server, port = sys.argv[1], int(sys.argv[2])
q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); q.settimeout(3)
m = struct.pack('>HHHHHH', 7, 0x0100, 1, 0, 0, 0) + b'\x05short\x04bind\x04test\x00' + struct.pack('>HH', 1, 1)
q.sendto(m, (server, 53)); r = q.recv(512); ip = socket.inet_ntoa(r[-4:])
def attempt():
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((ip, port)); return 'ok'
    except OSError as e:
        return e.errno
    finally:
        s.close()
first = attempt(); time.sleep(3.5); print(json.dumps([ip, first, attempt()]))
";
    let out = cg
        .command_in_ns(
            &pair.ns_a,
            &["python3", "-c", short, &pair.v4_b, &PORT.to_string()],
        )
        .output()
        .expect("run short client");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v[0], "10.79.0.1");
    assert_eq!(v[1], "ok", "bound right after the answer: {v}");
    assert_eq!(
        v[2],
        libc::EPERM,
        "refused once TTL and grace have passed: {v}"
    );

    let t = daemon.stop();
    assert!(t.success, "{:?}", t.stderr);
    // The refusals are events naming the process, its cgroup and the destination.
    let events = dns_events(&t.stdout);
    let bind: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "bind-unresolved")
        .collect();
    assert!(
        !bind.is_empty(),
        "no bind-unresolved event among {} events",
        events.len()
    );
    let first = bind
        .iter()
        .find(|e| e["pid"] == refused_pid)
        .unwrap_or_else(|| {
            panic!(
                "no event from the refused client {refused_pid}: {:?}",
                bind[0]
            )
        });
    assert_eq!(first["cgroup_id"], cg.id(), "{first}");
    assert_eq!(first["verdict"], "drop", "{first}");
    assert_eq!(first["comm"], "python3", "{first}");
    assert!(
        bind.iter()
            .any(|e| e["client"] == refused_ip.as_str() && e["client_port"] == PORT),
        "an event names the refused destination {refused_ip}:{PORT}"
    );
}

/// Pins left by a daemon that did not unload, removed whatever happens.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The programs attached to cgroup `cg` (`bpftool cgroup show`), by name.
fn cgroup_programs(cg: &TestCgroup) -> Vec<String> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(&cg.path)
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()));
    let mut names: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The bindings map and the programs' links are pinned: while the daemon is down (it exited
/// without unloading) the cgroup stays in bind mode, answers still bind and never-resolved
/// destinations are still refused; a daemon that starts again adopts the links (no second
/// attachment) and still lets the cgroup reach what it resolved before; one that unloads
/// takes bind mode away.
#[test]
fn bindings_survive_a_daemon_restart() {
    require("ip", "iproute2");
    require("unbound", "unbound");
    require("nsenter", "util-linux");
    require("bpftool", "bpftool");
    let pair = NetnsPair::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new("dns-bind-restart");
    let _server = lab(&pair);
    let _unbound = Unbound::start_with(&pair.ns_b, &[&pair.v4_b, &pair.v6_b], &zone());
    let path = dir.write("policy.toml", &policy(&cg, &pair.v4_b, &pair.v6_b));
    let run = run_args(&dir, &path, &pair.if_a);
    let pins = PinDir(run.last().unwrap().into());
    // nsenter: the host's bpffs and cgroup tree, so the pins outlive the process.
    let start = |run: &[String]| {
        let mut c = nsenter(&pair.ns_a, env!("CARGO_BIN_EXE_palisade"));
        c.args(run);
        Daemon::start_command(c)
    };
    let first: Vec<String> = run
        .iter()
        .filter(|a| *a != "--unload-on-exit")
        .cloned()
        .collect();
    let daemon = start(&first);
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("resolve", &pair.v4_b, 1, 200, TRIAL_SECS),
    );
    assert_eq!(r["ok"], 200, "{r}");
    let t = daemon.stop();
    assert!(t.success, "{:?}", t.stderr);
    assert!(pins.0.exists(), "the first daemon left its pins");
    // (`bpftool` shows names cut to 15 bytes.)
    let attached = cgroup_programs(&cg);
    assert_eq!(
        attached.len(),
        6,
        "the six bind programs stay attached: {attached:?}"
    );

    // The daemon is down: bind mode holds.
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("bound", &pair.v4_b, 1, 200, TRIAL_SECS),
    );
    assert_eq!(r["ok"], 200, "resolved before, still reachable: {r}");
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("direct", &pair.v4_b, 1, 200, TRIAL_SECS),
    );
    assert_eq!(
        r["eperm"], 200,
        "never resolved: refused with the daemon down: {r}"
    );
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("resolve", &pair.v4_b, 9001, 100, TRIAL_SECS),
    );
    assert_eq!(r["ok"], 100, "answers still bind with the daemon down: {r}");

    let daemon = start(&run);
    assert!(
        daemon
            .stderr_now()
            .iter()
            .any(|l| l.contains("DNS binding on cgroup") && l.contains("6 pinned links adopted")),
        "{:?}",
        daemon.stderr_now()
    );
    let again = cgroup_programs(&cg);
    assert_eq!(again.len(), 6, "adopted, not attached twice: {again:?}");
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("bound", &pair.v4_b, 1, 200, TRIAL_SECS),
    );
    assert_eq!(
        r["ok"], 200,
        "bindings from before the restart still hold: {r}"
    );
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("bound", &pair.v4_b, 201, 50, TRIAL_SECS),
    );
    assert_eq!(
        r["eperm"], 50,
        "names never resolved are refused after the restart: {r}"
    );
    let t = daemon.stop();
    assert!(t.success, "{:?}", t.stderr);
    // This one unloaded on exit: the links are gone, and with them bind mode.
    assert_eq!(cgroup_programs(&cg), Vec::<String>::new());
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("direct", &pair.v4_b, 1, 20, TRIAL_SECS),
    );
    assert_eq!(r["ok"], 20, "unloaded: nothing is refused: {r}");
}

/// CNAME cloaking: under a `[dns.egress]` blocklist, the answer of an unlisted name whose
/// CNAME leads to a listed one never reaches the application (it times out), its address
/// stays unbound (refused), and the drop is an event naming the listed name. An unlisted
/// chain resolves and binds.
#[test]
fn cname_to_a_blocked_name_is_refused() {
    require("ip", "iproute2");
    require("unbound", "unbound");
    let pair = NetnsPair::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new("dns-bind-cname");
    let _server = lab(&pair);
    let zone = vec![
        "cloaked.bind.test. 60 IN CNAME metrics.tracker.test.".to_owned(),
        "metrics.tracker.test. 60 IN A 10.79.0.9".to_owned(),
        "fine.bind.test. 60 IN CNAME edge.cdn.test.".to_owned(),
        "edge.cdn.test. 60 IN A 10.79.0.10".to_owned(),
    ];
    let _unbound = Unbound::start_with(&pair.ns_b, &[&pair.v4_b], &zone);
    let text = format!(
        r#"
[dns.egress]
mode = "blocklist"
lists = ["trackers"]
cgroups = ["{cg}"]

[dns.lists.trackers]
names = ["*.tracker.test"]

[dns.bind]
cgroups = ["{cg}"]
allow = ["{r}"]
"#,
        cg = cg.path.display(),
        r = pair.v4_b
    );
    let daemon = start_daemon(&pair, &dir, &text);

    let script = r"
import json, socket, struct, sys
server, name, ip, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); q.settimeout(2)
answer = []
for n in name.split(','):
    m = struct.pack('>HHHHHH', 9, 0x0100, 1, 0, 0, 0)
    m += b''.join(bytes([len(l)]) + l.encode() for l in n.split('.')) + b'\0' + struct.pack('>HH', 1, 1)
    q.sendto(m, (server, 53))
    try:
        r = q.recv(512); answer.append(struct.unpack('>H', r[6:8])[0])
    except socket.timeout:
        answer.append('timeout')
s = socket.socket(); s.settimeout(2)
try:
    s.connect((ip, port)); conn = 'ok'
except OSError as e:
    conn = e.errno
print(json.dumps([answer, conn]))
";
    let ask = |name: &str, ip: &str| -> Value {
        let out = cg
            .command_in_ns(
                &pair.ns_a,
                &[
                    "python3",
                    "-c",
                    script,
                    &pair.v4_b,
                    name,
                    ip,
                    &PORT.to_string(),
                ],
            )
            .output()
            .expect("run client");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    // unbound answers a CNAME of its local data with the CNAME alone; the client asks for
    // the target next, as stub resolvers do.
    // (Asking for the listed target itself fails at once: the egress policy refuses it.)
    let v = ask("cloaked.bind.test", "10.79.0.9");
    assert_eq!(v[0][0], "timeout", "the cloaked answer never arrives: {v}");
    assert_eq!(v[1], libc::EPERM, "its address is not bound: {v}");
    let v = ask("fine.bind.test,edge.cdn.test", "10.79.0.10");
    assert_eq!(
        v[0],
        serde_json::json!([1, 1]),
        "the CNAME, then the A: {v}"
    );
    assert_eq!(v[1], "ok", "an unlisted chain binds: {v}");

    let t = daemon.stop();
    assert!(t.success, "{:?}", t.stderr);
    let events = dns_events(&t.stdout);
    let refused: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "dns-answer-blocked")
        .collect();
    assert_eq!(refused.len(), 1, "one refused answer: {refused:?}");
    assert_eq!(
        refused[0]["name"], "metrics.tracker.test.",
        "{}",
        refused[0]
    );
    assert_eq!(refused[0]["cgroup_id"], cg.id(), "{}", refused[0]);
    assert_eq!(refused[0]["verdict"], "drop", "{}", refused[0]);
}

/// `dig +short` of `name`'s A record at `server`, from the cgroup or outside it: the
/// answer's lines, `None` when dig got no answer.
fn dig_a(pair: &NetnsPair, cg: Option<&TestCgroup>, server: &str, name: &str) -> Option<String> {
    dig(pair, cg, server, name, false)
}

/// [`dig_a`], over TCP when `tcp` is set.
fn dig(
    pair: &NetnsPair,
    cg: Option<&TestCgroup>,
    server: &str,
    name: &str,
    tcp: bool,
) -> Option<String> {
    let at = format!("@{server}");
    let proto = if tcp { "+tcp" } else { "+notcp" };
    let argv = [
        "dig", "+short", "+time=2", "+tries=1", proto, &at, name, "A",
    ];
    let out = match cg {
        Some(cg) => cg.command_in_ns(&pair.ns_a, &argv),
        None => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", &pair.ns_a]).args(argv);
            c
        }
    }
    .stdin(Stdio::null())
    .output()
    .expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty() && !text.starts_with(";;")).then_some(text)
}

/// Rebinding protection, end to end: unbound serves public-looking names that lead to
/// 10.x and 127.0.0.1. From the bind-mode cgroup with `rebinding = "refuse"`, `dig` gets
/// nothing for them (the resolver did answer: it logged the query) and their addresses stay
/// refused, while a name on `rebinding_allow` resolves to its private address and connects,
/// and a public address resolves and connects. Outside the cgroup every name resolves. Each
/// dropped answer is a `dns-rebinding` event naming the question.
#[test]
fn rebinding_answers_are_refused() {
    require("ip", "iproute2");
    require("unbound", "unbound");
    require("dig", "dnsutils");
    let pair = NetnsPair::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new("dns-bind-rebind");
    let _server = lab(&pair);
    // A public range, local to B, for the answer that must still pass.
    ip_in(
        &pair,
        &pair.ns_a,
        &["route", "add", "198.51.100.0/24", "via", &pair.v4_b],
    );
    ip_in(
        &pair,
        &pair.ns_b,
        &["route", "add", "local", "198.51.100.0/24", "dev", "lo"],
    );
    let zone = vec![
        "intranet.bind.test. 60 IN A 10.79.0.11".to_owned(),
        "loop.bind.test. 60 IN A 127.0.0.1".to_owned(),
        "nas.home.test. 60 IN A 10.79.0.12".to_owned(),
        "www.bind.test. 60 IN A 198.51.100.7".to_owned(),
    ];
    let unbound = Unbound::start_with(&pair.ns_b, &[&pair.v4_b], &zone);
    let text = format!(
        r#"
[dns.bind]
cgroups = ["{cg}"]
allow = ["{r}"]
rebinding = "refuse"
rebinding_allow = ["nas.home.test"]
"#,
        cg = cg.path.display(),
        r = pair.v4_b
    );
    let daemon = start_daemon(&pair, &dir, &text);

    let connect = |ip: &str| -> Value {
        let script = r"
import json, socket, sys
s = socket.socket(); s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print(json.dumps('ok'))
except OSError as e:
    print(json.dumps(e.errno))
";
        let out = cg
            .command_in_ns(
                &pair.ns_a,
                &["python3", "-c", script, ip, &PORT.to_string()],
            )
            .output()
            .expect("run connect");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    };

    for name in ["intranet.bind.test", "loop.bind.test"] {
        assert_eq!(
            dig_a(&pair, Some(&cg), &pair.v4_b, name),
            None,
            "{name}: the rebinding answer never reaches dig"
        );
        assert!(
            !unbound.queries_for(name).is_empty(),
            "{name}: the resolver saw the query and answered: {}",
            unbound.log_text()
        );
    }
    assert_eq!(
        connect("10.79.0.11"),
        libc::EPERM,
        "a refused answer binds nothing"
    );
    assert_eq!(
        dig_a(&pair, Some(&cg), &pair.v4_b, "nas.home.test").as_deref(),
        Some("10.79.0.12"),
        "an allowed name resolves to its private address"
    );
    assert_eq!(connect("10.79.0.12"), "ok", "and binds it");
    assert_eq!(
        dig_a(&pair, Some(&cg), &pair.v4_b, "www.bind.test").as_deref(),
        Some("198.51.100.7")
    );
    assert_eq!(connect("198.51.100.7"), "ok");
    assert_eq!(
        dig_a(&pair, None, &pair.v4_b, "intranet.bind.test").as_deref(),
        Some("10.79.0.11"),
        "outside the cgroup nothing is refused"
    );

    let t = daemon.stop();
    assert!(t.success, "{:?}", t.stderr);
    let events = dns_events(&t.stdout);
    let refused: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "dns-rebinding")
        .collect();
    let mut names: Vec<&str> = refused.iter().filter_map(|e| e["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["intranet.bind.test.", "loop.bind.test."],
        "{refused:?}"
    );
    for e in &refused {
        assert_eq!(e["cgroup_id"], cg.id(), "{e}");
        assert_eq!(e["verdict"], "drop", "{e}");
    }
}

/// DNS over TCP binds: `dig +tcp` from the bind-mode cgroup, then a connect to the answer's
/// address, passes (the answer arrived in one segment and was walked); an address of the
/// zone never asked for stays refused; a rebinding answer over TCP never reaches dig.
#[test]
fn tcp_answers_bind() {
    require("ip", "iproute2");
    require("unbound", "unbound");
    require("dig", "dnsutils");
    let pair = NetnsPair::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new("dns-bind-tcp");
    let _server = lab(&pair);
    let mut zone = zone();
    zone.push("inside.bind.test. 60 IN A 10.79.0.21".to_owned());
    let unbound = Unbound::start_with(&pair.ns_b, &[&pair.v4_b, &pair.v6_b], &zone);
    let text = format!(
        "{}rebinding = \"refuse\"\nrebinding_allow = [\"h1.bind.test\"]\n",
        policy(&cg, &pair.v4_b, &pair.v6_b)
    );
    let daemon = start_daemon(&pair, &dir, &text);

    let connect = |ip: &str| -> Value {
        let script = r"
import json, socket, sys
s = socket.socket(); s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print(json.dumps('ok'))
except OSError as e:
    print(json.dumps(e.errno))
";
        let out = cg
            .command_in_ns(
                &pair.ns_a,
                &["python3", "-c", script, ip, &PORT.to_string()],
            )
            .output()
            .expect("run connect");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    assert_eq!(connect("10.77.0.7"), libc::EPERM, "not resolved yet");
    // h7 (10.77.0.7) is private but the policy allows only h1 to carry private addresses:
    // with rebinding protection on, only h1's answer may bind. Ask h1 over TCP.
    assert_eq!(
        dig(&pair, Some(&cg), &pair.v4_b, "h1.bind.test", true).as_deref(),
        Some("10.77.0.1"),
        "dig +tcp gets its answer"
    );
    let tcp_queries = unbound
        .log_text()
        .lines()
        .filter(|l| l.contains("h1.bind.test."))
        .count();
    assert!(tcp_queries >= 1, "{}", unbound.log_text());
    assert_eq!(connect("10.77.0.1"), "ok", "a TCP answer binds");
    assert_eq!(
        connect("10.77.0.2"),
        libc::EPERM,
        "what was not asked stays refused"
    );
    assert_eq!(
        dig(&pair, Some(&cg), &pair.v4_b, "inside.bind.test", true),
        None,
        "a rebinding answer over TCP never reaches dig"
    );
    assert_eq!(connect("10.79.0.21"), libc::EPERM);

    let t = daemon.stop();
    assert!(t.success, "{:?}", t.stderr);
    let events = dns_events(&t.stdout);
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "dns-rebinding" && e["name"] == "inside.bind.test."),
        "{events:?}"
    );
}

/// The client of [`spoofed_answers_bind_nothing`]: asks the resolver for `spoof.bind.test`
/// (id 0x4242) on a connected UDP socket, prints its port, reads the resolver's answer,
/// waits (stdin) while answers are spoofed to that port, counts what it then receives, then
/// connects to the spoofed address.
const SPOOF_CLIENT: &str = r"
import json, socket, struct, sys
resolver, target, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
q.connect((resolver, 53))
print(json.dumps({'port': q.getsockname()[1]}), flush=True)
name = b''.join(bytes([len(l)]) + l.encode() for l in 'spoof.bind.test'.split('.')) + b'\0'
q.send(struct.pack('>HHHHHH', 0x4242, 0x0100, 1, 0, 0, 0) + name + struct.pack('>HH', 1, 1))
q.settimeout(3)
r = q.recv(512)
sys.stdin.readline()
got = 0
q.settimeout(1)
try:
    while True:
        q.recv(512)
        got += 1
except socket.timeout:
    pass
s = socket.socket()
s.settimeout(2)
try:
    s.connect((target, port))
    c = 'ok'
except OSError as e:
    c = e.errno
print(json.dumps({'rcode': r[3] & 15, 'id': struct.unpack('>H', r[:2])[0], 'spoofed_received': got, 'connect': c}))
";

/// The spoofer (namespace B, raw socket): answers for `spoof.bind.test` A `target` from the
/// resolver's address and port 53 to the client's port: the id the client used (its real
/// answer came already) and 199 guessed ones.
const SPOOFER: &str = r"
import random, socket, struct, sys
resolver, client, cport, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
name = b''.join(bytes([len(l)]) + l.encode() for l in 'spoof.bind.test'.split('.')) + b'\0'
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
r.bind((resolver, 0))
ids = [0x4242] + random.sample(range(65536), 199)
for i in ids:
    m = struct.pack('>HHHHHH', i, 0x8180, 1, 1, 0, 0) + name + struct.pack('>HH', 1, 1)
    m += b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 300, 4) + socket.inet_aton(target)
    r.sendto(struct.pack('>HHHH', 53, cport, 8 + len(m), 0) + m, (client, 0))
print(len(ids), flush=True)
";

/// Answers matched to queries, end to end: real answers from unbound bind (a resolved
/// address connects), while 200 answers spoofed from the resolver's address and port to the
/// client's port (the id of the client's query, whose real answer came first, and 199
/// guessed ids) never reach the client and bind nothing: a connect to the spoofed address is
/// refused. Each dropped answer is counted and is a `dns-answer-unsolicited` event.
#[test]
fn spoofed_answers_bind_nothing() {
    require("ip", "iproute2");
    require("unbound", "unbound");
    let pair = NetnsPair::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new("dns-bind-spoof");
    let _server = lab(&pair);
    let _unbound = Unbound::start_with(&pair.ns_b, &[&pair.v4_b, &pair.v6_b], &zone());
    let daemon = start_daemon(&pair, &dir, &policy(&cg, &pair.v4_b, &pair.v6_b));

    // Unbound's answers bind.
    let r = client(
        Some(&cg),
        &pair.ns_a,
        &args("resolve", &pair.v4_b, 1, 200, TRIAL_SECS),
    );
    assert_eq!(r["ok"], 200, "answers to real queries bind: {r}");

    let target = "10.78.200.1";
    let port = PORT.to_string();
    let mut c = cg
        .command_in_ns(
            &pair.ns_a,
            &["python3", "-c", SPOOF_CLIENT, &pair.v4_b, target, &port],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).expect("client port");
    let cport = serde_json::from_str::<Value>(&line).expect("port line")["port"].to_string();
    // Let the real answer arrive first: the query is then no longer pending.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let s = pair.exec(
        &pair.ns_b,
        "python3",
        &["-c", SPOOFER, &pair.v4_b, &pair.v4_a, &cport, target],
    );
    assert!(
        s.status.success(),
        "spoofer: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&s.stdout).trim(), "200");
    {
        use std::io::Write as _;
        c.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    line.clear();
    out.read_line(&mut line).expect("client result");
    let _ = c.wait();
    let r: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(r["id"], 0x4242, "the client got the resolver's answer: {r}");
    assert_eq!(
        r["spoofed_received"], 0,
        "no spoofed answer reached it: {r}"
    );
    assert_eq!(
        r["connect"],
        libc::EPERM,
        "the spoofed address is not bound: {r}"
    );

    let stats = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["stats", "--json", "--socket"])
        .arg(dir.path().join("palisade.sock"))
        .output()
        .expect("palisade stats");
    let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
    let t = daemon.stop();
    assert!(t.success, "{:?}", t.stderr);
    let v: Value = serde_json::from_str(&stats).unwrap_or_else(|e| panic!("{e}: {stats}"));
    let counter = |name: &str| {
        v["counters"]["bind"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .and_then(|c| c["value"].as_u64())
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    assert_eq!(counter("answers_unsolicited"), 200, "{stats}");
    assert!(counter("queries_recorded") >= 201, "{stats}");
    let events = dns_events(&t.stdout);
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "dns-answer-unsolicited"),
        "{events:?}"
    );
}

/// The client of [`tcp_pipelined_and_split_answers_bind`]: sends two queries (A) in one
/// write on one TCP connection to `server`:53, reads both answers, then connects to each
/// answer's address and to `never` (never resolved). Prints one JSON line.
const PIPELINE_CLIENT: &str = r"
import json, socket, struct, sys
server, port, never, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def q(i, name):
    m = struct.pack('>HHHHHH', 0x5100 + i, 0x0100, 1, 0, 0, 0)
    m += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0' + struct.pack('>HH', 1, 1)
    return struct.pack('>H', len(m)) + m
fam = socket.AF_INET6 if ':' in server else socket.AF_INET
t = socket.socket(fam, socket.SOCK_STREAM)
t.settimeout(5)
t.connect((server, 53))
t.sendall(b''.join(q(i, n) for i, n in enumerate(names)))
buf = b''
answers = {}
while len(answers) < len(names):
    d = t.recv(4096)
    if not d:
        break
    buf += d
    while len(buf) >= 2 and len(buf) >= 2 + struct.unpack('>H', buf[:2])[0]:
        n = struct.unpack('>H', buf[:2])[0]
        m, buf = buf[2:2 + n], buf[2 + n:]
        answers[struct.unpack('>H', m[:2])[0] - 0x5100] = socket.inet_ntoa(m[-4:])
t.close()
def connect(ip):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((ip, port))
        return 'ok'
    except OSError as e:
        return e.errno
    finally:
        s.close()
out = {'answers': [answers.get(i) for i in range(len(names))]}
out['connects'] = [connect(a) if a else None for a in out['answers']]
out['never'] = connect(never)
print(json.dumps(out))
";

/// A DNS-over-TCP server (namespace B, `[addr]:53`) that answers the queries of a
/// connection together: the first answer and the first `cut` bytes of the second in one
/// write, the rest of the second 100 ms later (TCP_NODELAY: two segments). Names
/// `h<i>.bind.test` answer `10.77.<i/256>.<i%256>`. Serves one connection per line of input.
const SPLIT_SERVER: &str = r"
import socket, struct, sys, time
addr, cut = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, 53))
s.listen(8)
print('ready', flush=True)
while True:
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b''
    qs = []
    while len(qs) < 2:
        d = c.recv(4096)
        if not d:
            break
        buf += d
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack('>H', buf[:2])[0]:
            n = struct.unpack('>H', buf[:2])[0]
            qs.append(buf[2:2 + n])
            buf = buf[2 + n:]
    out = []
    for m in qs:
        name = m[12:m.index(b'\0', 12) + 1]
        labels, i = [], 0
        while name[i]:
            labels.append(name[i + 1:i + 1 + name[i]].decode())
            i += 1 + name[i]
        h = int(labels[0][1:])
        a = m[:2] + struct.pack('>HHHHH', 0x8180, 1, 1, 0, 0) + m[12:12 + len(name) + 4]
        a += b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 60, 4) + bytes([10, 77, h >> 8, h & 255])
        out.append(struct.pack('>H', len(a)) + a)
    data = b''.join(out)
    first = len(out[0]) + cut
    c.sendall(data[:first])
    time.sleep(0.1)
    c.sendall(data[first:])
    time.sleep(0.2)
    c.close()
";

/// Several DNS messages on one TCP connection, end to end: a python client pipelines two
/// queries in one write to unbound and reads both answers, and both addresses connect; a
/// DNS-over-TCP server that sends the first answer with the start of the second in one
/// segment and the rest in another (cut inside the length prefix, inside the header, inside
/// the question, inside the record) has both answers bound too. An address never asked for
/// stays refused.
#[test]
fn tcp_pipelined_and_split_answers_bind() {
    require("ip", "iproute2");
    require("unbound", "unbound");
    let pair = NetnsPair::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new("dns-bind-tcp-split");
    let _server = lab(&pair);
    // unbound on B's IPv4 address; the splitting server on its IPv6 one.
    let _unbound = Unbound::start_with(&pair.ns_b, &[&pair.v4_b], &zone());
    let daemon = start_daemon(&pair, &dir, &policy(&cg, &pair.v4_b, &pair.v6_b));
    let port = PORT.to_string();
    let pipeline = |server: &str, names: &[&str]| -> Value {
        let mut argv = vec!["python3", "-c", PIPELINE_CLIENT, server, &port, "10.78.9.9"];
        argv.extend_from_slice(names);
        let out = cg
            .command_in_ns(&pair.ns_a, &argv)
            .stdin(Stdio::null())
            .output()
            .expect("run client");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let r = pipeline(&pair.v4_b, &["h41.bind.test", "h42.bind.test"]);
    assert_eq!(
        r["answers"],
        serde_json::json!(["10.77.0.41", "10.77.0.42"]),
        "{r}"
    );
    assert_eq!(
        r["connects"],
        serde_json::json!(["ok", "ok"]),
        "unbound: {r}"
    );
    assert_eq!(r["never"], libc::EPERM, "{r}");

    // Cut points in the second message (its length prefix is at 0..2, the header at
    // 2..14, the question at 14..33, the record from 33).
    for (k, cut) in [1usize, 2, 7, 20, 40].into_iter().enumerate() {
        let mut server = pair
            .command(&pair.ns_b, "python3")
            .args(["-c", SPLIT_SERVER, &pair.v6_b, &cut.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn split server");
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("split server ready");
        let _guard = Server(server);
        let (a, b) = (100 + 2 * k, 101 + 2 * k);
        let names = [format!("h{a}.bind.test"), format!("h{b}.bind.test")];
        let r = pipeline(&pair.v6_b, &[&names[0], &names[1]]);
        assert_eq!(
            r["answers"],
            serde_json::json!([format!("10.77.0.{a}"), format!("10.77.0.{b}")]),
            "cut {cut}: {r}"
        );
        if cut == 1 {
            // A length prefix split between segments is not followed: the second answer
            // binds nothing (fail closed).
            assert_eq!(
                r["connects"],
                serde_json::json!(["ok", libc::EPERM]),
                "cut {cut}: {r}"
            );
        } else {
            assert_eq!(
                r["connects"],
                serde_json::json!(["ok", "ok"]),
                "cut {cut}: {r}"
            );
        }
        assert_eq!(r["never"], libc::EPERM, "{r}");
    }
    let t = daemon.stop();
    assert!(t.success, "{:?}", t.stderr);
}
