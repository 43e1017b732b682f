//! End to end: the `[tls]` gate with the real daemon, a real `openssl s_server` in the
//! guarded namespace and `curl` on the other side of a veth pair.
//! - a blocked name gets no server data: curl's handshake fails with a reset, and curl
//!   never saw the server's hello;
//! - an allowed name completes the handshake and the HTTP exchange (the server's first
//!   flight, held back until the verdict, is retransmitted);
//! - a ClientHello split over several TCP segments (a 400-byte MTU) is still read;
//! - QUIC (UDP to port 443) does not reach the server.
//!
//! Needs root, `openssl`, `curl` and `python3`. Run with
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
