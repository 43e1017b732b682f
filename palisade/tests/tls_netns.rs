//! End to end: the `[tls]` gate with the real daemon, a real `openssl s_server` in the
//! guarded namespace and `curl` on the other side of a veth pair.
//! - a blocked name gets no server data: curl's handshake fails with a reset, and curl
//!   never saw the server's hello;
//! - an allowed name completes the handshake and the HTTP exchange (the server's first
//!   flight, held back until the verdict, is retransmitted);
//! - a ClientHello split over several TCP segments (a 400-byte MTU) is still read;
//! - QUIC (UDP to port 443) does not reach the server: a real QUIC client (aioquic) that
//!   completes its handshake without Palisade fails with it, and curl falls back to TCP.
//!
//! Needs root, `openssl`, `curl`, `python3` and aioquic (`cargo xtask setup` installs it into
//! `.tools/venv`). Run with
//! `cargo test --release -p palisade --test tls_netns -- --test-threads=1`.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use control::{BgCli, GuardedHost, wait_for_streams};
use palisade_common::tls::gate::{TS_BLOCKED_DROPS, TS_QUIC_DROPS, TS_RECORDS, TS_SERVER_HELD};
use support::netns::{NetnsPair, command_in, exec_in};

const POLICY: &str = "[tls]\nmode = \"blocklist\"\nblock = [\"*.blocked.test\"]\n";

/// `openssl s_server -www` on port 443 of `ns`, with a fresh self-signed certificate.
struct Server(Child);

impl Server {
    fn start(ns: &str, dir: &std::path::Path) -> Self {
        let key = dir.join("key.pem");
        let cert = dir.join("cert.pem");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=palisade.test"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl req");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = Self(
            command_in(ns, "openssl")
                .args(["s_server", "-accept", "443", "-www", "-quiet"])
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl s_server"),
        );
        // Wait for the listener.
        for _ in 0..50 {
            let out = exec_in(ns, "ss", &["-ltn", "sport = :443"]);
            if String::from_utf8_lossy(&out.stdout).contains(":443") {
                return server;
            }
            thread::sleep(Duration::from_millis(100));
        }
        drop(server);
        panic!("s_server did not listen");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `curl` from `ns` to `name` (resolved to `addr`), verbose; returns (exit status, stdout,
/// stderr).
fn curl(ns: &str, name: &str, addr: &str) -> (i32, String, String) {
    let host = if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    };
    let out = command_in(ns, "curl")
        .args(["-sv", "-k", "--http1.1", "--max-time", "8", "--resolve"])
        .arg(format!("{name}:443:{host}"))
        .arg(format!("https://{name}/"))
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lab(tag: &str) -> (NetnsPair, GuardedHost, Server) {
    let pair = NetnsPair::new();
    let mut host = GuardedHost::new(tag, POLICY, &pair.ns_a, &pair.if_a);
    host.start();
    let server = Server::start(&pair.ns_a, &host.scratch.dir);
    (pair, host, server)
}

#[test]
fn blocked_name_gets_no_server_data_and_allowed_name_connects() {
    let (pair, host, _server) = lab("tls-netns-block");
    let events = BgCli::start(&host.socket(), &["events", "--kind", "tls", "--json"]);
    wait_for_streams(&host.socket(), 1);
    for addr in [pair.v4_a.clone(), pair.v6_a.clone()] {
        let (code, body, log) = curl(&pair.ns_b, "www.blocked.test", &addr);
        assert_ne!(code, 0, "a blocked name must not connect:\n{log}");
        assert!(body.is_empty(), "{body}");
        assert!(
            !log.contains("Server hello"),
            "curl saw the server's hello:\n{log}"
        );
        assert!(
            log.contains("reset") || log.contains("Connection reset"),
            "the flow is reset:\n{log}"
        );
        let (code, body, log) = curl(&pair.ns_b, "www.allowed.test", &addr);
        assert_eq!(code, 0, "{log}");
        assert!(body.contains("s_server"), "{body}");
    }
    // The decisions as events: the name, its category, ALPN (curl offers http/1.1 here) and
    // the JA4 of curl's hello.
    let lines = events.finish(Duration::from_secs(1));
    let events: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let blocked: Vec<_> = events
        .iter()
        .filter(|e| e["sni"] == "www.blocked.test")
        .collect();
    assert_eq!(blocked.len(), 2, "{lines:?}");
    for e in &blocked {
        assert_eq!(e["verdict"], "drop");
        assert_eq!(e["reason"], "tls-sni-blocked");
        assert_eq!(e["category"], "name");
        assert_eq!(e["alpn"], "http/1.1");
        assert!(e["ja4"].as_str().unwrap().starts_with("t13d"), "{e}");
    }
    let allowed = events
        .iter()
        .filter(|e| e["sni"] == "www.allowed.test" && e["verdict"] == "pass")
        .count();
    assert_eq!(allowed, 2, "{lines:?}");
    // Every hello reached the daemon. Whether the server's first flight was held back, or
    // the reset reached the server before it answered, depends on who is faster: either
    // way curl saw nothing of it (above).
    assert!(host.scratch.counter("TLS_STATS", TS_RECORDS) >= 4);
    eprintln!(
        "server segments held: {}, blocked-flow drops: {}",
        host.scratch.counter("TLS_STATS", TS_SERVER_HELD),
        host.scratch.counter("TLS_STATS", TS_BLOCKED_DROPS)
    );
}

#[test]
fn hello_over_several_segments() {
    let (pair, host, _server) = lab("tls-netns-segments");
    for (ns, iface) in [(&pair.ns_a, &pair.if_a), (&pair.ns_b, &pair.if_b)] {
        let out = exec_in(ns, "ip", &["link", "set", iface, "mtu", "400"]);
        assert!(out.status.success());
    }
    let before = host.scratch.counter("TLS_STATS", TS_RECORDS);
    let (code, _, log) = curl(&pair.ns_b, "www.blocked.test", &pair.v4_a);
    assert_ne!(code, 0, "{log}");
    assert!(!log.contains("Server hello"), "{log}");
    let records = host.scratch.counter("TLS_STATS", TS_RECORDS) - before;
    assert!(
        records >= 2,
        "a 517-byte hello over a 360-byte MSS: {records} records"
    );
    let (code, body, log) = curl(&pair.ns_b, "www.allowed.test", &pair.v4_a);
    assert_eq!(code, 0, "{log}");
    assert!(body.contains("s_server"), "{body}");
}

#[test]
fn quic_does_not_reach_the_server() {
    let (pair, host, _server) = lab("tls-netns-quic");
    let listener = command_in(&pair.ns_a, "python3")
        .args([
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0',443))\ns.settimeout(3)\n\
             try:\n  s.recvfrom(2000); print('got')\nexcept Exception: print('none')\n",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    thread::sleep(Duration::from_millis(500));
    let send = exec_in(
        &pair.ns_b,
        "python3",
        &[
            "-c",
            &format!(
                "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                 [s.sendto(b'\\xc0'+b'\\x00'*1199,('{}',443)) for _ in range(3)]\n",
                pair.v4_a
            ),
        ],
    );
    assert!(send.status.success());
    let out = listener.wait_with_output().expect("listener");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "none");
    assert_eq!(host.scratch.counter("TLS_STATS", TS_QUIC_DROPS), 3);
}

/// The Python of the repository's environment, which has aioquic (`cargo xtask setup`).
fn venv_python() -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/venv/bin/python3");
    assert!(
        std::path::Path::new(p).exists(),
        "{p} is missing: run `cargo xtask setup`"
    );
    p.to_owned()
}

const QUIC_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/quic_peer.py");

/// The aioquic echo server on UDP port 443 of `ns`, killed on drop.
struct QuicServer(Child);

impl QuicServer {
    fn start(ns: &str, addr: &str, dir: &std::path::Path) -> Self {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let mut child = command_in(ns, &venv_python())
            .arg(QUIC_PEER)
            .args(["server", addr, "443"])
            .arg(&cert)
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the QUIC server");
        let mut line = String::new();
        let out = child.stdout.take().expect("server stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
            .expect("server output");
        assert_eq!(line.trim(), "listening", "the QUIC server did not start");
        Self(child)
    }
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One QUIC exchange from `ns` to `addr`:443: the client's one-line verdict.
fn quic_client(ns: &str, addr: &str) -> String {
    let out = command_in(ns, &venv_python())
        .arg(QUIC_PEER)
        .args(["client", addr, "443", "www.allowed.test", "3"])
        .stderr(Stdio::null())
        .output()
        .expect("the QUIC client");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_quic_client_is_refused_and_falls_back_to_tcp() {
    let pair = NetnsPair::new();
    let mut host = GuardedHost::new("tls-netns-aioquic", POLICY, &pair.ns_a, &pair.if_a);
    // The TCP server makes the certificate the QUIC server uses too.
    let _tcp = Server::start(&pair.ns_a, &host.scratch.dir);
    let _quic = QuicServer::start(&pair.ns_a, &pair.v4_a, &host.scratch.dir);
    // Without Palisade the client completes its handshake and the echo: the pair works.
    assert_eq!(quic_client(&pair.ns_b, &pair.v4_a), "connected");

    host.start();
    let verdict = quic_client(&pair.ns_b, &pair.v4_a);
    assert!(verdict.starts_with("failed"), "QUIC got through: {verdict}");
    let drops = host.scratch.counter("TLS_STATS", TS_QUIC_DROPS);
    assert!(
        drops >= 1,
        "the client's Initial packets were dropped: {drops}"
    );
    // What a browser does next: the same name over TCP, decided by its SNI.
    let (code, body, log) = curl(&pair.ns_b, "www.allowed.test", &pair.v4_a);
    assert_eq!(code, 0, "{log}");
    assert!(body.contains("s_server"), "{body}");
}
