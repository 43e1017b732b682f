//! End to end, resolver pinning (`[dns.bind] resolvers`, `doh_endpoints`): the real
//! `palisade` binary with a throw-away cgroup v2 directory in bind mode, pinned to one
//! resolver (unbound, namespace B). From a process in that cgroup (namespace A):
//!
//! - the configured resolver answers over UDP and TCP (`dig`, `dig +tcp`), and the answers
//!   bind: a connect to a resolved address succeeds;
//! - a second resolver (the same unbound on another address, not configured) cannot be
//!   asked, over UDP or TCP (`dig` fails, `sendto`/`connect` fail with `EPERM`);
//! - DoT (`kdig +tls`, and a TCP connect to port 853 of the configured resolver) and DoQ
//!   (UDP to port 853) fail with `EPERM`;
//! - DoH (`curl` to a real HTTP endpoint listed in `doh_endpoints`) fails, even after its
//!   name was resolved through the configured resolver;
//! - an answer from port 53 of a source that is not the resolver reaches the socket but
//!   binds nothing: a connect to its address fails;
//! - every refusal is an event with its reason, the process and the destination.
//!
//! The same probes from outside the cgroup succeed, so the servers are really there.

#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Output, Stdio},
};

use dns_support::{
    TempDir,
    cgroup::{TestCgroup, palisade_with_cgroups},
    check_policy, dns_events, require, run_args,
    unbound::Unbound,
};
use serde_json::Value;
use support::{daemon::Daemon, netns::NetnsPair};

/// A second resolver address (the same unbound), not configured.
const OTHER_RESOLVER: &str = "10.81.0.2";
/// A DoH endpoint: a real HTTP server, listed in `doh_endpoints`.
const DOH: &str = "10.81.0.3";
/// An ordinary destination, reached through a name.
const WEB: &str = "10.81.0.4";
/// An address only a forged answer (from [`FORGER`], not a resolver) names.
const FORGED: &str = "10.81.0.5";
/// The source of the forged answer.
const FORGER: &str = "10.81.0.6";
/// The HTTP servers' port.
const HTTP_PORT: u16 = 8443;

/// Probes `proto:ip:port` destinations (UDP `sendto` on an unconnected socket, TCP
/// `connect`); prints a JSON list of `"ok"` or the errno.
const PROBE: &str = r"
import json, socket, sys
out = []
for p in sys.argv[1:]:
    proto, ip, port = p.split(':')
    try:
        if proto == 'udp':
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b'x', (ip, int(port)))
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(3)
            s.connect((ip, int(port)))
        s.close()
        out.append('ok')
    except OSError as e:
        out.append(e.errno)
print(json.dumps(out))
";

/// Waits on a UDP socket for one datagram (printing the port first), then connects to the
/// address the forged answer names; prints the datagram's length and the connect's result.
const FORGED_LISTENER: &str = r"
import json, socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(('0.0.0.0', 0))
u.settimeout(5)
print(u.getsockname()[1], flush=True)
got = len(u.recv(512))
s = socket.socket(); s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); conn = 'ok'
except OSError as e:
    conn = e.errno
print(json.dumps([got, conn]), flush=True)
";

/// Sends a DNS answer (`forged.pin.test A <ip>`, TTL 300) from port 53 of `src` to
/// `dst`:`port`.
const FORGE: &str = r"
import socket, struct, sys
src, dst, port, ip = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
m = struct.pack('>HHHHHH', 7, 0x8180, 1, 1, 0, 0)
m += b''.join(bytes([len(l)]) + l.encode() for l in 'forged.pin.test'.split('.')) + b'\0'
m += struct.pack('>HH', 1, 1)
m += struct.pack('>HHHIH', 0xc00c, 1, 1, 300, 4) + socket.inet_aton(ip)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 53))
s.sendto(m, (dst, port))
";

/// Accepts and closes TCP connections on port 853 (where a DoT server would listen).
const TCP_853: &str = r"
import socket
s = socket.socket(socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 853))
s.listen(64)
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

/// Starts a server in B that prints `ready` once it listens.
fn serve(pair: &NetnsPair, args: &[&str]) -> Server {
    let mut child = pair
        .command(&pair.ns_b, args[0])
        .args(&args[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("server ready");
    assert!(line.contains("ready") || line.contains("Serving"), "{line}");
    Server(child)
}

/// Runs `argv` in namespace A, in the pinned cgroup or outside it.
fn run(pair: &NetnsPair, cg: Option<&TestCgroup>, argv: &[&str]) -> Output {
    let mut cmd = match cg {
        Some(cg) => cg.command_in_ns(&pair.ns_a, argv),
        None => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &pair.ns_a]).args(argv);
            c
        }
    };
    cmd.stdin(Stdio::null()).output().expect("run")
}

fn probe(pair: &NetnsPair, cg: Option<&TestCgroup>, probes: &[String]) -> Value {
    let mut argv = vec!["python3", "-c", PROBE];
    argv.extend(probes.iter().map(String::as_str));
    let out = run(pair, cg, &argv);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// `dig +short` of an A record; the answer's lines, or `None` when dig failed.
fn dig(
    pair: &NetnsPair,
    cg: Option<&TestCgroup>,
    server: &str,
    name: &str,
    tcp: bool,
) -> Option<String> {
    let at = format!("@{server}");
    let mut argv = vec!["dig", "+short", "+time=2", "+tries=1", &at, name, "A"];
    if tcp {
        argv.push("+tcp");
    }
    let out = run(pair, cg, &argv);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty() && !text.starts_with(";;")).then_some(text)
}

/// `curl` of the DoH endpoint: the HTTP status, or `None` when curl could not connect.
fn curl_doh(pair: &NetnsPair, cg: Option<&TestCgroup>) -> (Option<String>, String) {
    let url = format!(
        "http://{DOH}:{HTTP_PORT}/dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB"
    );
    let out = run(
        pair,
        cg,
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success().then_some(code), err)
}

#[test]
fn pinned_cgroup_reaches_only_its_resolver() {
    require("ip", "iproute2");
    require("unbound", "unbound");
    require("python3", "python3");
    require("dig", "dnsutils");
    require("kdig", "knot-dnsutils");
    require("curl", "curl");
    let pair = NetnsPair::new();
    let cg = TestCgroup::new();
    let dir = TempDir::new("dns-pin");
    ip_in(
        &pair,
        &pair.ns_a,
        &["route", "add", "10.81.0.0/24", "via", &pair.v4_b],
    );
    for a in [OTHER_RESOLVER, DOH, WEB, FORGED, FORGER] {
        ip_in(
            &pair,
            &pair.ns_b,
            &["addr", "add", &format!("{a}/32"), "dev", "lo"],
        );
    }
    let _dot = serve(&pair, &["python3", "-c", TCP_853]);
    let _http = serve(
        &pair,
        &[
            "python3",
            "-u",
            "-m",
            "http.server",
            "-b",
            "0.0.0.0",
            &HTTP_PORT.to_string(),
        ],
    );
    let zone = vec![
        format!("web.pin.test. 300 IN A {WEB}"),
        format!("doh.pin.test. 300 IN A {DOH}"),
    ];
    let _unbound = Unbound::start_with(&pair.ns_b, &[&pair.v4_b, OTHER_RESOLVER], &zone);

    let text = format!(
        r#"
[dns.bind]
cgroups = ["{cg}"]
resolvers = ["{r}"]
doh_endpoints = ["{DOH}/32"]
"#,
        cg = cg.path.display(),
        r = pair.v4_b
    );
    let path = dir.write("policy.toml", &text);
    check_policy(&path);
    let args = run_args(&dir, &path, &pair.if_a);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_command(palisade_with_cgroups(&pair, &pair.ns_a, &args));

    // --- outside the cgroup every server is there ---
    assert_eq!(
        dig(&pair, None, OTHER_RESOLVER, "web.pin.test", false).as_deref(),
        Some(WEB)
    );
    let v = probe(
        &pair,
        None,
        &[
            format!("tcp:{OTHER_RESOLVER}:53"),
            format!("tcp:{}:853", pair.v4_b),
            format!("udp:{}:853", pair.v4_b),
        ],
    );
    assert_eq!(
        v,
        serde_json::json!(["ok", "ok", "ok"]),
        "outside the cgroup: {v}"
    );
    let (code, err) = curl_doh(&pair, None);
    assert_eq!(
        code.as_deref(),
        Some("404"),
        "the DoH endpoint answers outside: {err}"
    );

    // --- the configured resolver works, over UDP and TCP, and its answers bind ---
    assert_eq!(
        dig(&pair, Some(&cg), &pair.v4_b, "web.pin.test", false).as_deref(),
        Some(WEB)
    );
    assert_eq!(
        dig(&pair, Some(&cg), &pair.v4_b, "web.pin.test", true).as_deref(),
        Some(WEB)
    );
    let v = probe(&pair, Some(&cg), &[format!("tcp:{WEB}:{HTTP_PORT}")]);
    assert_eq!(
        v,
        serde_json::json!(["ok"]),
        "a resolved address connects: {v}"
    );

    // --- a second resolver: refused over UDP and TCP ---
    assert_eq!(
        dig(&pair, Some(&cg), OTHER_RESOLVER, "web.pin.test", false),
        None
    );
    assert_eq!(
        dig(&pair, Some(&cg), OTHER_RESOLVER, "web.pin.test", true),
        None
    );
    let v = probe(
        &pair,
        Some(&cg),
        &[
            format!("udp:{OTHER_RESOLVER}:53"),
            format!("tcp:{OTHER_RESOLVER}:53"),
        ],
    );
    assert_eq!(v, serde_json::json!([libc::EPERM, libc::EPERM]), "{v}");

    // --- DoT and DoQ, even to the configured resolver ---
    let at = format!("@{}", pair.v4_b);
    let out = run(
        &pair,
        Some(&cg),
        &[
            "kdig",
            "+tls",
            "+time=2",
            "+retry=0",
            &at,
            "web.pin.test",
            "A",
        ],
    );
    let kdig = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("kdig +tls from the pinned cgroup: {kdig}");
    assert!(!kdig.contains(WEB), "no DoT answer: {kdig}");
    // kdig does not print the errno; the `dns-encrypted` event from `kdig` below shows
    // that the hook refused it.
    assert!(
        kdig.contains("can't connect"),
        "kdig's connect fails: {kdig}"
    );
    let out = run(
        &pair,
        Some(&cg),
        &[
            "timeout",
            "5",
            "openssl",
            "s_client",
            "-connect",
            &format!("{}:853", pair.v4_b),
        ],
    );
    assert!(!out.status.success(), "openssl s_client fails");
    let v = probe(
        &pair,
        Some(&cg),
        &[
            format!("tcp:{}:853", pair.v4_b),
            format!("udp:{}:853", pair.v4_b),
        ],
    );
    assert_eq!(
        v,
        serde_json::json!([libc::EPERM, libc::EPERM]),
        "DoT, DoQ: {v}"
    );

    // --- DoH to a listed endpoint, even once its name is resolved (and bound) ---
    assert_eq!(
        dig(&pair, Some(&cg), &pair.v4_b, "doh.pin.test", false).as_deref(),
        Some(DOH)
    );
    let (code, err) = curl_doh(&pair, Some(&cg));
    eprintln!("curl to the DoH endpoint from the pinned cgroup: {err}");
    assert_eq!(code, None, "DoH fails from the pinned cgroup: {err}");

    // --- an answer from port 53 of a source that is not a resolver binds nothing ---
    let mut listener = cg
        .command_in_ns(
            &pair.ns_a,
            &[
                "python3",
                "-c",
                FORGED_LISTENER,
                FORGED,
                &HTTP_PORT.to_string(),
            ],
        )
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn listener");
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let port = lines.next().expect("listener port").expect("read port");
    let out = pair.exec(
        &pair.ns_b,
        "python3",
        &["-c", FORGE, FORGER, &pair.v4_a, port.trim(), FORGED],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = lines.next().expect("listener result").expect("read result");
    let _ = listener.wait();
    let v: Value = serde_json::from_str(&result).unwrap_or_else(|e| panic!("{e}: {result}"));
    assert!(
        v[0].as_u64().unwrap() > 12,
        "the forged answer arrived: {v}"
    );
    assert_eq!(v[1], libc::EPERM, "and bound nothing: {v}");
    let v = probe(&pair, None, &[format!("tcp:{FORGED}:{HTTP_PORT}")]);
    assert_eq!(
        v,
        serde_json::json!(["ok"]),
        "the forged address is reachable outside: {v}"
    );

    // --- the configured resolver still works after all that ---
    assert_eq!(
        dig(&pair, Some(&cg), &pair.v4_b, "web.pin.test", false).as_deref(),
        Some(WEB)
    );

    let t = daemon.stop();
    assert!(t.success, "{:?}", t.stderr);
    let events = dns_events(&t.stdout);
    let with = |reason: &str, ip: &str, port: u16| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["reason"] == reason && e["client"] == ip && e["client_port"] == port)
            .collect()
    };
    for (reason, ip, port) in [
        ("dns-resolver-pinned", OTHER_RESOLVER, 53),
        ("dns-encrypted", pair.v4_b.as_str(), 853),
        ("dns-encrypted", DOH, HTTP_PORT),
    ] {
        let found = with(reason, ip, port);
        assert!(
            !found.is_empty(),
            "no {reason} event for {ip}:{port} among {events:?}"
        );
        for e in found {
            assert_eq!(e["cgroup_id"], cg.id(), "{e}");
            assert_eq!(e["verdict"], "drop", "{e}");
            assert_ne!(e["pid"], 0, "{e}");
        }
    }
    let comms: Vec<&str> = events
        .iter()
        .filter(|e| e["reason"] == "dns-encrypted" || e["reason"] == "dns-resolver-pinned")
        .filter_map(|e| e["comm"].as_str())
        .collect();
    for c in ["kdig", "openssl", "curl", "python3"] {
        assert!(comms.contains(&c), "an event from {c}: {comms:?}");
    }
    // dig sends from its network threads (`isc-net-0000`, ...): the comm is the thread's.
    assert!(
        comms.iter().any(|c| c.starts_with("isc-net")),
        "an event from dig: {comms:?}"
    );
    let unresolved: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "bind-unresolved")
        .collect();
    assert_eq!(
        unresolved.len(),
        1,
        "only the forged address wanted a binding: {unresolved:?}"
    );
    assert_eq!(unresolved[0]["client"], FORGED, "{}", unresolved[0]);
}
