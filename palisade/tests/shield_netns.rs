//! End to end: the SYN shield with the real daemon on a routed path through network
//! namespaces (see `support/routed.rs`), cookies forced on. Real clients (Linux's own TCP
//! through Python's sockets, and curl) connect to a real server over IPv4 and IPv6; their
//! handshakes are answered from XDP, the kernel accepts the connections from the cookies, and
//! the server's sockets keep window scaling and SACK (`ss -ti`).

#[path = "support/control.rs"]
mod control;
#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use control::{Proc, Scratch, cli};
use palisade_common::shield::{SH_COOKIE_SENT, SH_COOKIE_VALID};
use support::{
    netns::{exec_in, in_netns, tcp_info},
    routed::Routed,
};

const PORT: u16 = 8080;

/// `tcpi_options` bits (`linux/tcp.h`).
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;

fn policy() -> String {
    format!(
        r#"
[firewall]
default = "drop"
stateful = true

[[firewall.rule]]
action = "allow"
proto = "tcp"
dport = {PORT}

[[firewall.rule]]
action = "allow"
proto = "icmpv6"
icmp_type = 135

[[firewall.rule]]
action = "allow"
proto = "icmpv6"
icmp_type = 136

[shield]
syn_ports = [{PORT}]
syn_cookies = "on"
tcp_invalid = "drop"
"#
    )
}

struct Lab {
    daemon: Option<Proc>,
    _peer_xdp: dns_support::xdp::XdpPass,
    scratch: Scratch,
    net: Routed,
}

impl Lab {
    /// `tag` names the test's scratch directory and socket (tests run in parallel).
    fn new(tag: &str) -> Self {
        dns_support::require("ip", "iproute2");
        dns_support::require("nsenter", "util-linux");
        let scratch = Scratch::new(tag);
        let path = scratch.file("policy.toml");
        std::fs::write(&path, policy()).unwrap();
        dns_support::check_policy(&path);
        let net = Routed::new();
        // A frame sent back with XDP_TX crosses a veth pair only when the peer runs XDP
        // too (a real NIC sends it on its own).
        let peer_xdp = dns_support::xdp::XdpPass::attach(&net.router, "veth-rg");
        let daemon = Some(Proc::start_nsenter(
            &net.guarded,
            &scratch.socket(),
            &[
                "--config",
                path.to_str().unwrap(),
                "--iface",
                Routed::GUARDED_IF,
                "--pin-dir",
                scratch.pin_dir().to_str().unwrap(),
                "--quiet",
            ],
        ));
        Self {
            daemon,
            _peer_xdp: peer_xdp,
            scratch,
            net,
        }
    }

    fn counter(&self, index: u32) -> u64 {
        self.scratch.counter("SHIELD_STATS", index)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.kill9();
        }
        let _ = cli(
            &self.scratch.socket(),
            &[
                "unload",
                "--pin-dir",
                self.scratch.pin_dir().to_str().unwrap(),
            ],
        );
    }
}

/// What the server's socket of one accepted connection negotiated (`TCP_INFO`):
/// `tcpi_options` and the two window scales (sent, received).
type Negotiated = (u8, u8, u8);

/// Serves every connection: records what its socket negotiated, reads a line, answers with
/// it, and keeps the socket open a moment so `ss` can see it.
fn serve(l: TcpListener, seen: Arc<Mutex<Vec<Negotiated>>>) {
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let info = tcp_info(&c);
            seen.lock().unwrap().push((
                info.tcpi_options,
                // `tcpi_snd_wscale:4, tcpi_rcv_wscale:4`, low bits first.
                info.tcpi_snd_rcv_wscale & 0xf,
                info.tcpi_snd_rcv_wscale >> 4,
            ));
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let Ok(n) = c.read(&mut buf) else { return };
                if buf[..n].starts_with(b"GET ") {
                    let _ = c.write_all(
                        b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\npalisade\n",
                    );
                } else {
                    let _ = c.write_all(&buf[..n]);
                }
                thread::sleep(Duration::from_millis(300));
            });
        }
    });
}

/// `ss -ti` on the server for connections to PORT.
fn ss(ns: &str) -> String {
    let out = exec_in(
        ns,
        "ss",
        &[
            "-tin",
            "state",
            "established",
            &format!("( sport = :{PORT} )"),
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn real_clients_connect_through_xdp_syn_cookies_with_their_options() {
    let lab = Lab::new("shield-clients");
    let server_ns = lab.net.guarded.clone();
    let seen_by_server = Arc::new(Mutex::new(Vec::new()));
    for addr in [Routed::GUARDED_V4, Routed::GUARDED_V6] {
        let a = SocketAddr::new(addr.parse().unwrap(), PORT);
        serve(
            in_netns(&server_ns, move || TcpListener::bind(a).unwrap()),
            Arc::clone(&seen_by_server),
        );
    }
    // The kernel answers the first SYN per listener itself (see the design note).
    let before = lab.counter(SH_COOKIE_SENT);
    for (i, addr) in [Routed::GUARDED_V4, Routed::GUARDED_V6]
        .into_iter()
        .enumerate()
    {
        for round in 0..3 {
            // Python (Linux's TCP: MSS, SACK, timestamps, window scale).
            let script = format!(
                "import socket,sys\ns=socket.create_connection(('{addr}',{PORT}),timeout=5)\n\
                 s.sendall(b'palisade {round}\\n')\nsys.stdout.write(s.recv(100).decode())\n\
                 import time; time.sleep(0.1)\n"
            );
            let out = exec_in(&lab.net.outside, "python3", &["-c", &script]);
            assert!(
                out.status.success()
                    && String::from_utf8_lossy(&out.stdout) == format!("palisade {round}\n"),
                "python to {addr}: {out:?}"
            );
            // curl.
            let host = if i == 0 {
                addr.to_owned()
            } else {
                format!("[{addr}]")
            };
            let out = exec_in(
                &lab.net.outside,
                "curl",
                &["-sS", "--max-time", "5", &format!("http://{host}:{PORT}/")],
            );
            assert!(
                out.status.success() && out.stdout == b"palisade\n",
                "curl to {addr}: {out:?}; shield counters {:?}",
                (0..9).map(|i| lab.counter(i)).collect::<Vec<_>>()
            );
        }
    }
    let sent = lab.counter(SH_COOKIE_SENT) - before;
    assert!(sent >= 10, "{sent} SYN-ACKs from XDP");
    assert!(lab.counter(SH_COOKIE_VALID) >= 10);
    // The same counters through the daemon: `stats --json`, and `status`.
    let out = cli(&lab.scratch.socket(), &["stats", "--json"]);
    assert!(out.ok, "{out:?}");
    let stats: serde_json::Value = serde_json::from_str(&out.stdout).expect("stats JSON");
    let shield = &stats["counters"]["shield"];
    let get = |name: &str| {
        shield
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == name))
            .and_then(|n| n["value"].as_u64())
    };
    assert!(get("cookies_sent").is_some_and(|v| v >= 10), "{stats}");
    assert!(get("cookies_valid").is_some_and(|v| v >= 10), "{stats}");
    let status = cli(&lab.scratch.socket(), &["status"]).stdout;
    assert!(
        status.contains("shield: ") && status.contains("cookies_sent "),
        "{status}"
    );

    // A connection held open: the server's socket has window scaling and SACK.
    let script = format!(
        "import socket,time\ns=socket.create_connection(('{}',{PORT}),timeout=5)\n\
         s.sendall(b'x')\ns.recv(10)\ntime.sleep(2)\n",
        Routed::GUARDED_V4
    );
    let mut child = std::process::Command::new("nsenter")
        .args([
            &format!("--net=/var/run/netns/{}", lab.net.outside),
            "python3",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(150));
    let seen = ss(&server_ns);
    let _ = child.wait();
    assert!(seen.contains("wscale:"), "{seen}");
    // Every connection the server accepted, cookie or not, kept timestamps, SACK and window
    // scaling, with the window scale the SYN-ACK offered (this `ss` does not print the first
    // two, so the sockets' own TCP_INFO says it).
    let ours = in_netns(&server_ns, || {
        palisade::shield::host_wscale(std::path::Path::new("/proc/sys"))
    });
    let negotiated = seen_by_server.lock().unwrap().clone();
    assert!(negotiated.len() >= 13, "{negotiated:?}");
    for (options, snd, rcv) in &negotiated {
        let all = TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE;
        assert_eq!(options & all, all, "{negotiated:?}");
        assert_eq!(*rcv, ours, "{negotiated:?}");
        assert!(*snd > 0, "{negotiated:?}");
    }
}

/// Echoes every line back until the peer closes.
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

#[test]
fn ack_and_rst_floods_leave_established_flows_alone() {
    let lab = Lab::new("shield-floods");
    let a = SocketAddr::new(Routed::GUARDED_V4.parse().unwrap(), PORT);
    serve_echo(in_netns(&lab.net.guarded, move || {
        TcpListener::bind(a).unwrap()
    }));
    // Established flows, opened through the cookies.
    let flows: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            in_netns(&lab.net.outside, move || {
                std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).unwrap()
            })
        })
        .collect();
    let talk = |c: &std::net::TcpStream, round: usize| {
        let mut c = c;
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(format!("round {round:04}\n").as_bytes())
            .unwrap();
        let mut got = [0u8; 11];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, format!("round {round:04}\n").as_bytes());
    };
    for c in &flows {
        talk(c, 0);
    }
    let dropped_before = lab.counter(palisade_common::shield::SH_TCP_INVALID_DROPPED);
    // An ACK flood from many sources and ports, then a blind reset and a blind ACK at
    // every established flow (sequence numbers nowhere near their windows).
    let mut sent = 0u64;
    for i in 0..1000u32 {
        let src = format!("10.71.2.{}", 1 + i % 200);
        let f = palisade::craft::Frame::tcp(&src, Routed::GUARDED_V4, 1024 + i as u16, PORT, 0x10)
            .with_tcp_seq(i.wrapping_mul(2_654_435_761));
        support::wire::send_ip(&lab.net.outside, &f.build_ip(), a.ip());
        sent += 1;
    }
    for c in &flows {
        let local = c.local_addr().unwrap();
        for flags in [0x04, 0x10, 0x14] {
            let f = palisade::craft::Frame::tcp(
                &local.ip().to_string(),
                Routed::GUARDED_V4,
                local.port(),
                PORT,
                flags,
            )
            .with_tcp_seq(0x8000_0000);
            support::wire::send_ip(&lab.net.outside, &f.build_ip(), a.ip());
            sent += 1;
        }
    }
    // Nothing of it reached the stack, and every flow carries on.
    // The router forwards them asynchronously: wait (boundedly) for the last to arrive.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let dropped = loop {
        let d = lab.counter(palisade_common::shield::SH_TCP_INVALID_DROPPED) - dropped_before;
        if d >= sent || std::time::Instant::now() > deadline {
            break d;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(dropped, sent, "invalid segments dropped in XDP");
    for c in &flows {
        talk(c, 1);
    }
    let resets = String::from_utf8_lossy(
        &exec_in(&lab.net.guarded, "nstat", &["-az", "TcpEstabResets"]).stdout,
    )
    .into_owned();
    assert!(
        resets
            .lines()
            .any(|l| l.starts_with("TcpEstabResets") && l.split_whitespace().nth(1) == Some("0")),
        "{resets}"
    );
}
