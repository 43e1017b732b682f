//! End to end, DNS on egress: the real `palisade` binary attaches its cgroup program to a
//! throw-away cgroup v2 directory; real clients (`dig`, the C library's resolver through
//! `getent`, a python3 UDP socket) started inside that cgroup, in namespace A, ask a real
//! resolver (unbound) in namespace B. Allowed names resolve; other names fail in the sender's
//! `sendmsg` with `EPERM`, and the event names the process, user and cgroup. Processes outside
//! the cgroup are not affected.
//!
//! Palisade runs in namespace A with `--iface <A's veth>` for its XDP part; the cgroup attach
//! does not depend on the namespace. Neither palisade nor the resolver is in the cgroup.

#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::time::Duration;

use dns_support::{
    TempDir,
    cgroup::{TestCgroup, palisade_with_cgroups},
    check_policy,
    dig::{self, Dig},
    dns_events, require, require_tools,
    resolv::NetnsResolvConf,
    run_args,
    unbound::{Unbound, zone_answer},
};
use serde_json::Value;
use support::{daemon::Daemon, netns::NetnsPair};

/// Sends one A query for `name` to `server`:53 over UDP, waits for the answer, and prints
/// JSON: its pid, and either the errno of the failed send or the answer's rcode and answer
/// count, and how long it all took.
const UDP_QUERY: &str = r"
import json, os, socket, struct, sys, time
server, name, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
fam = socket.AF_INET6 if ':' in server else socket.AF_INET
q = struct.pack('>HHHHHH', 0x5053, 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(l)]) + l.encode() for l in name.rstrip('.').split('.')) + b'\0'
q += struct.pack('>HH', 1, 1)
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(timeout)
out = {'pid': os.getpid(), 'uid': os.getuid()}
t = time.monotonic()
try:
    s.sendto(q, (server, 53))
    r = s.recv(512)
    out['rcode'] = r[3] & 15
    out['ancount'] = struct.unpack('>H', r[6:8])[0]
except socket.timeout:
    out['timeout'] = True
except OSError as e:
    out['errno'] = e.errno
out['elapsed'] = time.monotonic() - t
print(json.dumps(out))
";

/// How long a failed send may take at most; every client's own timeout is 3 s.
const FAST: Duration = Duration::from_secs(1);
const TIMEOUT: u32 = 3;

/// Runs a command to completion, returning stdout, stderr, exit code, its pid and wall time.
fn run(mut cmd: std::process::Command) -> (String, String, Option<i32>, u32, Duration) {
    let start = std::time::Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn client");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait client");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
        pid,
        start.elapsed(),
    )
}

/// The python3 UDP client's report.
fn py_query(cmd: std::process::Command) -> (Value, u32, Duration) {
    let (stdout, stderr, code, pid, elapsed) = run(cmd);
    assert_eq!(code, Some(0), "python3 client failed: {stdout}{stderr}");
    let v: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
    assert_eq!(
        v["pid"], pid,
        "the client's pid is the spawned child's: {v}"
    );
    (v, pid, elapsed)
}

fn policy(cgroup: &TestCgroup) -> String {
    format!(
        r#"
[dns.egress]
mode = "allowlist"
lists = ["corp"]
cgroups = ["{}"]
log_allowed = true

[dns.lists.corp]
names = ["allowed.test"]
"#,
        cgroup.path.display()
    )
}

/// Starts palisade in A with `policy` after checking `palisade check` accepts it.
fn start_palisade(pair: &NetnsPair, dir: &TempDir, policy: &str) -> Daemon {
    let path = dir.write("policy.toml", policy);
    check_policy(&path);
    let args = run_args(dir, &path, &pair.if_a);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_command(palisade_with_cgroups(pair, &pair.ns_a, &args))
}

fn egress_events<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["scope"] == "egress" && e["name"] == name)
        .collect()
}

/// Only this test's processes were in the cgroup, and the palisade process never was.
fn assert_not_in_cgroup(pid: u32, cg: &TestCgroup) {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let name = cg.path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        !own.contains(&name),
        "process {pid} is in the test cgroup: {own}"
    );
}

/// Minimal: the egress program attaches to a cgroup at all. (It did not while the daemon asked
/// for `BPF_F_ALLOW_MULTI`, which the kernel refuses for a bpf_link with EINVAL.)
#[test]
fn egress_policy_attaches_to_a_cgroup() {
    require("ip", "iproute2");
    let pair = NetnsPair::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new("dns-egress-attach");
    let daemon = start_palisade(&pair, &dir, &policy(&cg));
    let line = format!(
        "palisade: DNS egress policy on cgroup {}",
        cg.path.display()
    );
    assert!(
        daemon.stderr_now().contains(&line),
        "{:?}",
        daemon.stderr_now()
    );
    assert_not_in_cgroup(daemon.pid(), &cg);
    let t = daemon.stop();
    assert!(t.success, "{:?}", t.stderr);
    assert!(
        t.stderr.iter().any(|l| l.contains("palisade: detached")),
        "{:?}",
        t.stderr
    );
}

#[test]
fn egress_allowlist_blocks_by_process_in_the_cgroup() {
    require_tools();
    require("getent", "libc-bin");
    require("setpriv", "util-linux");
    let pair = NetnsPair::new();
    let p = &pair;
    let unbound = Unbound::start(p, &p.ns_b, &[&p.v4_b, &p.v6_b]);
    let cg = TestCgroup::new();
    let cg_id = cg.id();
    let dir = TempDir::new("dns-egress");
    // The C library's resolver in namespace A asks the test's resolver, never the host's.
    let _resolv = NetnsResolvConf::new(&p.ns_a, &p.v4_b, TIMEOUT);

    let daemon = start_palisade(p, &dir, &policy(&cg));
    assert_not_in_cgroup(daemon.pid(), &cg);

    // --- inside the cgroup ---
    // Allowed: resolves, over both families.
    let dig_in = |server: &str, name: &str, qtype: &str| -> Dig {
        let a = dig::args(server, name, qtype, TIMEOUT, &[]);
        let mut argv = vec!["dig"];
        argv.extend(a.iter().map(String::as_str));
        dig::run(cg.command_in_ns(&p.ns_a, &argv), a)
    };
    let ok4 = dig_in(&p.v4_b, "allowed.test", "A");
    assert_eq!(ok4.answers, [zone_answer("allowed.test", "A")], "{ok4}");
    let ok6 = dig_in(&p.v6_b, "allowed.test", "AAAA");
    assert_eq!(ok6.answers, [zone_answer("allowed.test", "AAAA")], "{ok6}");

    // Not listed, a plain UDP socket: sendto fails with EPERM at once, IPv4 and IPv6.
    let (py4, py4_pid, py4_time) = py_query(cg.command_in_ns(
        &p.ns_a,
        &["python3", "-c", UDP_QUERY, &p.v4_b, "blocked.test", "3"],
    ));
    assert_eq!(py4["errno"], libc::EPERM, "{py4}");
    assert!(py4_time < FAST, "failed fast: {py4_time:?} {py4}");
    // As another user, to see the uid reported is the sender's.
    let (py6, py6_pid, py6_time) = py_query(cg.command_in_ns_as(
        &p.ns_a,
        65534,
        65534,
        &[
            "/usr/bin/python3",
            "-c",
            UDP_QUERY,
            &p.v6_b,
            "other.test",
            "3",
        ],
    ));
    assert_eq!(py6["errno"], libc::EPERM, "{py6}");
    assert_eq!(py6["uid"], 65534, "{py6}");
    assert!(py6_time < FAST, "failed fast: {py6_time:?} {py6}");

    // Not listed, the C library's resolver: getaddrinfo gives up at once instead of waiting
    // for its 3 s timeout.
    let (out, err, code, getent_pid, getent_time) =
        run(cg.command_in_ns(&p.ns_a, &["getent", "ahosts", "blocked.test"]));
    assert_eq!(code, Some(2), "getent finds nothing: {out}{err}");
    assert!(getent_time < FAST, "failed fast: {getent_time:?}");
    // And it still resolves an allowed name.
    let (out, err, code, _, _) =
        run(cg.command_in_ns(&p.ns_a, &["getent", "ahosts", "allowed.test"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(zone_answer("allowed.test", "A")), "{out}");
    // Over TCP (`use-vc`), the C library writes its A and AAAA queries in one segment: both
    // are inspected, so the allowed name resolves and the blocked one does not.
    let use_vc = |name: &str| {
        let mut cmd = cg.command_in_ns(&p.ns_a, &["getent", "ahosts", name]);
        cmd.env("RES_OPTIONS", "use-vc");
        run(cmd)
    };
    let (out, err, code, _, _) = use_vc("allowed.test");
    assert_eq!(code, Some(0), "use-vc: {out}{err}");
    assert!(
        out.contains(zone_answer("allowed.test", "A")),
        "use-vc: {out}"
    );
    assert!(
        out.contains(zone_answer("allowed.test", "AAAA")),
        "use-vc: {out}"
    );
    let (out, err, code, _, _) = use_vc("blocked.test");
    assert_eq!(code, Some(2), "use-vc, blocked: {out}{err}");

    // Not listed, dig: no answer. (dig ignores the failed send and waits for its timeout.)
    let dig_blocked = dig_in(&p.v4_b, "blocked.test", "A");
    assert!(!dig_blocked.answered(), "{dig_blocked}");
    assert_ne!(dig_blocked.exit_code, Some(0), "{dig_blocked}");

    // --- outside the cgroup: unaffected ---
    let outside = dig::dig(p, &p.ns_a, &p.v4_b, "blocked.test", "A", TIMEOUT, &[]);
    assert_eq!(
        outside.answers,
        [zone_answer("blocked.test", "A")],
        "{outside}"
    );
    let mut cmd = p.command(&p.ns_a, "python3");
    cmd.args(["-c", UDP_QUERY, &p.v6_b, "other.test", "3"]);
    let (py_out, py_out_pid, _) = py_query(cmd);
    assert_eq!(py_out["rcode"], 0, "{py_out}");
    assert_eq!(py_out["ancount"], 1, "{py_out}");

    assert!(
        cg.procs().is_empty(),
        "every client has exited: {:?}",
        cg.procs()
    );
    let t = daemon.stop();
    assert!(t.success, "palisade exited with an error: {:?}", t.stderr);
    assert!(
        t.stderr.iter().any(|l| l.contains("0 events lost")),
        "{:?}",
        t.stderr
    );
    let events = dns_events(&t.stdout);
    for e in &events {
        assert_eq!(
            e["scope"], "egress",
            "only the egress scope is configured: {e}"
        );
        assert_eq!(
            e["cgroup_id"], cg_id,
            "every event comes from the test cgroup: {e}"
        );
    }

    // The python3 sends: process, user and cgroup of the sender.
    let blocked = egress_events(&events, "blocked.test.");
    let e = blocked
        .iter()
        .find(|e| e["pid"] == py4_pid)
        .unwrap_or_else(|| panic!("{:#?}", t.stdout));
    assert_eq!(e["verdict"], "drop", "{e}");
    assert_eq!(e["reason"], "dns-not-allowed", "{e}");
    assert_eq!(e["qtype"], "A", "{e}");
    assert_eq!(e["comm"], "python3", "{e}");
    assert_eq!(e["uid"], 0, "{e}");
    assert_eq!(e["client"], p.v4_a.as_str(), "{e}");
    assert_eq!(e["tcp"], false, "{e}");
    let other = egress_events(&events, "other.test.");
    assert_eq!(
        other.len(),
        1,
        "the query from outside the cgroup is not seen: {:#?}",
        t.stdout
    );
    assert_eq!(other[0]["pid"], py6_pid, "{}", other[0]);
    assert_eq!(other[0]["comm"], "python3", "{}", other[0]);
    assert_eq!(other[0]["uid"], 65534, "{}", other[0]);
    assert_eq!(other[0]["client"], p.v6_a.as_str(), "{}", other[0]);
    assert_eq!(other[0]["verdict"], "drop", "{}", other[0]);
    assert!(
        !events.iter().any(|e| e["pid"] == py_out_pid),
        "{:#?}",
        t.stdout
    );

    // getent: the C library sends from the process itself.
    let e = blocked
        .iter()
        .find(|e| e["pid"] == getent_pid)
        .unwrap_or_else(|| panic!("{:#?}", t.stdout));
    assert_eq!(e["comm"], "getent", "{e}");
    assert_eq!(e["verdict"], "drop", "{e}");
    assert_eq!(e["uid"], 0, "{e}");

    // dig: its pid; the command is that of the sending thread (BIND's network threads are
    // named isc-net-NNNN).
    let e = blocked
        .iter()
        .find(|e| e["pid"] == dig_blocked.pid)
        .unwrap_or_else(|| {
            panic!(
                "no event for dig (pid {}): {:#?}",
                dig_blocked.pid, t.stdout
            )
        });
    let comm = e["comm"].as_str().unwrap_or_default();
    assert!(comm == "dig" || comm.starts_with("isc-net-"), "{e}");
    assert_eq!(e["uid"], 0, "{e}");
    assert_eq!(e["verdict"], "drop", "{e}");
    assert_eq!(e["reason"], "dns-not-allowed", "{e}");

    // Allowed queries are reported too (log_allowed), from the dig processes.
    let allowed = egress_events(&events, "allowed.test.");
    for d in [&ok4, &ok6] {
        assert!(
            allowed
                .iter()
                .any(|e| e["pid"] == d.pid && e["verdict"] == "allow"),
            "allowed query of pid {}: {:#?}",
            d.pid,
            t.stdout
        );
    }

    // The resolver got no blocked query from inside the cgroup: the only blocked.test and
    // other.test queries it saw are the two from outside.
    let b = unbound.queries_for("blocked.test");
    assert_eq!(b.len(), 1, "{b:?}");
    let o = unbound.queries_for("other.test");
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(o[0].client, p.v6_a, "{o:?}");

    // Detached on exit: the same query from the cgroup now resolves.
    let after = dig_in(&p.v4_b, "blocked.test", "A");
    assert_eq!(
        after.answers,
        [zone_answer("blocked.test", "A")],
        "after palisade stopped: {after}"
    );
}

/// A blocked TCP query is retransmitted by the kernel from its retransmission timer
/// (softirq), where the "current" task is whatever happened to be running. Those events must
/// never name an unrelated process: the uid comes from the socket, and pid/comm are reported
/// as unknown (0) when the running task is not in the socket's cgroup.
#[test]
fn egress_tcp_retransmissions_are_never_attributed_to_another_process() {
    require_tools();
    let pair = NetnsPair::new();
    let p = &pair;
    let _unbound = Unbound::start(p, &p.ns_b, &[&p.v4_b]);
    let cg = TestCgroup::new();
    let dir = TempDir::new("dns-egress-tcp");
    let daemon = start_palisade(p, &dir, &policy(&cg));

    let a = dig::args(&p.v4_b, "blocked.test", "A", 2, &["+tcp"]);
    let mut argv = vec!["dig"];
    argv.extend(a.iter().map(String::as_str));
    let d = dig::run(cg.command_in_ns(&p.ns_a, &argv), a);
    assert!(!d.answered(), "{d}");

    let t = daemon.stop();
    let events = dns_events(&t.stdout);
    let tcp: Vec<_> = egress_events(&events, "blocked.test.")
        .into_iter()
        .filter(|e| e["tcp"] == true)
        .collect();
    assert!(
        tcp.len() >= 2,
        "the query and at least one retransmission: {:#?}",
        t.stdout
    );
    for e in &tcp {
        assert_eq!(e["cgroup_id"], cg.id(), "{e}");
        assert_eq!(e["uid"], 0, "the socket's owner: {e}");
        assert!(
            e["pid"] == d.pid || e["pid"] == 0,
            "an event for dig's query names dig or nobody: {e}"
        );
    }
    assert_eq!(
        tcp[0]["pid"], d.pid,
        "the first send happens in dig's own context"
    );
}

/// One UDP send with `UDP_SEGMENT`: the A query for `argv[2]` padded to `argv[4]` bytes,
/// then the query for `argv[3]`, which the kernel sends as two datagrams. Prints JSON: the
/// errno of a failed send, or the ids of the answers that came back (1 for the first
/// query, 2 for the second).
const GSO_QUERY: &str = r"
import json, os, socket, struct, sys
server, first, second, seg = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def query(qid, name):
    q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0)
    q += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0'
    return q + struct.pack('>HH', 1, 1)
payload = query(1, first).ljust(seg, b'\0') + query(2, second)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, 103, seg)  # UDP_SEGMENT
s.settimeout(1)
out = {'pid': os.getpid()}
try:
    s.sendto(payload, (server, 53))
    ids = []
    try:
        while True:
            ids.append(struct.unpack('>H', s.recv(512)[:2])[0])
    except socket.timeout:
        pass
    out['answers'] = sorted(ids)
except OSError as e:
    out['errno'] = e.errno
print(json.dumps(out))
";

/// One IPv6 UDP query for `argv[3]` from `argv[1]` to `argv[2]`:53, sent on a raw socket
/// with `argv[4]` extension headers (hop-by-hop, then destination options). Prints JSON:
/// the errno of a failed send, or `sent`.
const RAW_EXT_QUERY: &str = r"
import json, os, socket, struct, sys
src, dst, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
q = struct.pack('>HHHHHH', 0x5053, 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0'
q += struct.pack('>HH', 1, 1)
s6, d6 = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
ulen = 8 + len(q)
pseudo = s6 + d6 + struct.pack('>I3xB', ulen, 17)
udp = struct.pack('>HHHH', 33053, 53, ulen, 0) + q
data = pseudo + udp + (b'\0' if len(udp) % 2 else b'')
c = sum(struct.unpack('>%dH' % (len(data) // 2), data))
while c >> 16:
    c = (c & 0xffff) + (c >> 16)
c = (~c & 0xffff) or 0xffff
udp = udp[:6] + struct.pack('>H', c) + udp[8:]
ext = b''
for i in range(n):
    nxt = 17 if i == n - 1 else 60
    ext += bytes([nxt, 0, 1, 4, 0, 0, 0, 0])  # PadN: an empty 8-byte options header
first = 0 if n else 17
hdr = struct.pack('>IHBB', 6 << 28, len(ext) + len(udp), first, 64) + s6 + d6
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
out = {'pid': os.getpid()}
try:
    s.sendto(hdr + ext + udp, (dst, 0))
    out['sent'] = True
except OSError as e:
    out['errno'] = e.errno
print(json.dumps(out))
";

/// Sends `n` A queries for `name` to `server`:53 one after the other and prints JSON: per
/// query `ok` (answered), `eperm` (the send failed with EPERM) or `timeout`.
/// Waits up to two seconds for `cond` about what the resolver logged.
fn wait_for(cond: impl Fn() -> bool, unbound: &Unbound) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the resolver never logged it:\n{}",
            unbound.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const BURST_QUERY: &str = r"
import json, socket, struct, sys
server, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = struct.pack('>HHHHHH', 0x5053, 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0'
q += struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
out = []
for _ in range(n):
    try:
        s.sendto(q, (server, 53))
        s.recv(512)
        out.append('ok')
    except PermissionError:
        out.append('eperm')
    except socket.timeout:
        out.append('timeout')
print(json.dumps(out))
";

/// What the egress hook cannot judge query by query is refused, and one cgroup cannot spend
/// another's query rate:
/// - one `sendto` with `UDP_SEGMENT` carrying an allowed and a blocked query fails with
///   `EPERM` and neither reaches the resolver (from outside the cgroup the same send
///   delivers both, so the resolver would have answered the blocked name);
/// - an IPv6 query on a raw socket behind more extension headers than Palisade parses fails
///   with `EPERM` under the allowlist;
/// - a cgroup that exhausts its query rate is refused while another cgroup, sending from the
///   same address, still resolves.
#[test]
fn egress_refuses_segmented_and_unparsable_sends_and_rates_per_cgroup() {
    require_tools();
    const SEG: &str = "64";
    let pair = NetnsPair::new();
    let p = &pair;
    let unbound = Unbound::start(p, &p.ns_b, &[&p.v4_b, &p.v6_b]);
    let cg_a = TestCgroup::new();
    let cg_b = TestCgroup::new();
    let dir = TempDir::new("dns-egress-bypass");
    let policy = format!(
        r#"
[dns.egress]
mode = "allowlist"
lists = ["corp"]
cgroups = ["{}", "{}"]
rate = {{ qps = 1, burst = 3 }}

[dns.lists.corp]
names = ["allowed.test"]
"#,
        cg_a.path.display(),
        cg_b.path.display()
    );
    let daemon = start_palisade(p, &dir, &policy);

    // --- segmented sends ---
    let gso = |cmd: std::process::Command| -> Value {
        let (stdout, stderr, code, pid, _) = run(cmd);
        assert_eq!(code, Some(0), "python3 client failed: {stdout}{stderr}");
        let v: Value =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert_eq!(v["pid"], pid, "{v}");
        v
    };
    let mut outside = p.command(&p.ns_a, "python3");
    outside.args([
        "-c",
        GSO_QUERY,
        &p.v4_b,
        "allowed.test",
        "gso-outside.test",
        SEG,
    ]);
    let out = gso(outside);
    assert_eq!(out["answers"], serde_json::json!([1, 2]), "{out}");
    wait_for(
        || unbound.queries_for("gso-outside.test").len() == 1,
        &unbound,
    );

    let inside = gso(cg_a.command_in_ns(
        &p.ns_a,
        &[
            "python3",
            "-c",
            GSO_QUERY,
            &p.v4_b,
            "allowed.test",
            "gso-blocked.test",
            SEG,
        ],
    ));
    assert_eq!(inside["errno"], libc::EPERM, "{inside}");

    // --- an extension chain longer than the parser follows, on a raw socket ---
    let raw = |cmd: std::process::Command| -> Value {
        let (stdout, stderr, code, _, _) = run(cmd);
        assert_eq!(code, Some(0), "python3 client failed: {stdout}{stderr}");
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    let mut outside = p.command(&p.ns_a, "python3");
    outside.args([
        "-c",
        RAW_EXT_QUERY,
        &p.v6_a,
        &p.v6_b,
        "raw-outside.test",
        "7",
    ]);
    let out = raw(outside);
    assert_eq!(out["sent"], true, "{out}");
    wait_for(
        || !unbound.queries_for("raw-outside.test").is_empty(),
        &unbound,
    );
    let inside_raw = raw(cg_a.command_in_ns(
        &p.ns_a,
        &[
            "python3",
            "-c",
            RAW_EXT_QUERY,
            &p.v6_a,
            &p.v6_b,
            "raw-blocked.test",
            "7",
        ],
    ));
    assert_eq!(inside_raw["errno"], libc::EPERM, "{inside_raw}");

    // --- query rate per cgroup ---
    let burst = |cg: &TestCgroup, n: &str| -> Vec<String> {
        let (stdout, stderr, code, _, _) = run(cg.command_in_ns(
            &p.ns_a,
            &["python3", "-c", BURST_QUERY, &p.v4_b, "allowed.test", n],
        ));
        assert_eq!(code, Some(0), "python3 client failed: {stdout}{stderr}");
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    let a = burst(&cg_a, "8");
    assert_eq!(a[..3], ["ok", "ok", "ok"], "the burst: {a:?}");
    assert!(a[3..].iter().any(|r| r == "eperm"), "over the rate: {a:?}");
    // The same address, another cgroup: its own bucket.
    let b = burst(&cg_b, "3");
    assert_eq!(b, ["ok", "ok", "ok"], "the other cgroup: {b:?}");

    let t = daemon.stop();
    assert!(t.success, "{:?}", t.stderr);
    let events = dns_events(&t.stdout);
    let by_reason = |r: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["scope"] == "egress" && e["reason"] == r)
            .collect()
    };
    let g = by_reason("dns-gso");
    assert_eq!(g.len(), 1, "{:#?}", t.stdout);
    assert_eq!(
        (
            &g[0]["verdict"],
            &g[0]["pid"],
            &g[0]["cgroup_id"],
            &g[0]["comm"]
        ),
        (
            &"drop".into(),
            &inside["pid"],
            &cg_a.id().into(),
            &"python3".into()
        ),
        "{}",
        g[0]
    );
    let x = by_reason("ipv6-ext-chain");
    assert_eq!(x.len(), 1, "{:#?}", t.stdout);
    assert_eq!(
        (
            &x[0]["verdict"],
            &x[0]["pid"],
            &x[0]["cgroup_id"],
            &x[0]["name"]
        ),
        (
            &"drop".into(),
            &inside_raw["pid"],
            &cg_a.id().into(),
            &".".into()
        ),
        "{}",
        x[0]
    );
    let r = by_reason("dns-rate");
    assert!(!r.is_empty(), "{:#?}", t.stdout);
    assert!(r.iter().all(|e| e["cgroup_id"] == cg_a.id()), "{r:?}");
    // Nothing the cgroups sent past the hook reached the resolver.
    assert_eq!(unbound.queries_for("gso-blocked.test"), vec![]);
    assert_eq!(unbound.queries_for("raw-blocked.test"), vec![]);
}
