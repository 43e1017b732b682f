//! End to end: the shields with the real daemon, cookies forced on, invalid TCP dropped and
//! the amplification shield on.
//!
//! Most tests run on a routed path through network namespaces (see `support/routed.rs`):
//! - real clients (Linux's own TCP through Python's sockets, and curl) connect to a real server
//!   over IPv4 and IPv6; their handshakes are answered from XDP, the kernel accepts the
//!   connections from the cookies, and the server's sockets keep window scaling and SACK;
//! - ACK and RST floods leave established flows alone;
//! - the host's own DNS (unbound) and NTP (chrony) answers pass, unsolicited datagrams from
//!   reflector ports are dropped and counted;
//! - path MTU discovery works through the narrow middle hop, for a flow the guarded host
//!   opened and for one that came in through a cookie.
//!
//! One runs on a VLAN-tagged veth pair (see `support/vlan.rs`): the same clients complete
//! cookie handshakes when every frame carries an 802.1Q tag.

#[path = "support/control.rs"]
mod control;
#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use control::{GuardedHost, cli, eventually};
use palisade::craft;
use palisade_common::{
    conntrack::CS_RELATED,
    shield::{SH_AMPLIFICATION_DROPPED, SH_COOKIE_SENT, SH_COOKIE_VALID, SH_NAMES},
};
use support::{
    bulk::{BULK, pattern, sink, upload_through_narrow_hop},
    netns::{NetnsPair, exec_in, in_netns, tcp_info},
    ntp,
    routed::Routed,
    vlan::VlanEnd,
};

const PORT: u16 = 8080;
/// A UDP service of the guarded host: the rules let any datagram to it in, so what keeps
/// reflected datagrams out of it is the amplification shield alone.
const UDP_SERVICE: u16 = 5300;
/// The reflector ports of the default `amplification_ports`.
const REFLECTOR_PORTS: [u16; 8] = [19, 53, 123, 161, 389, 1900, 3702, 11211];
/// Not a reflector port: datagrams from it reach [`UDP_SERVICE`].
const ORDINARY_PORT: u16 = 5000;
const VLAN_ID: u16 = 71;

/// `tcpi_options` bits (`linux/tcp.h`).
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;

/// The guarded host's policy: TCP to [`PORT`] (SYN cookies) and UDP to [`UDP_SERVICE`] come
/// in, and neighbour discovery; replies to what the host opened itself come in by state.
fn policy(amplification: bool) -> String {
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
proto = "udp"
dport = {UDP_SERVICE}

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
amplification = {amplification}
"#
    )
}

/// Where the daemon runs and what faces it.
trait Topology {
    /// The guarded host's namespace and the interface Palisade attaches to.
    fn guarded(&self) -> (&str, &str);
    /// The other end of that interface's veth pair.
    fn peer(&self) -> (&str, &str);
}

impl Topology for Routed {
    fn guarded(&self) -> (&str, &str) {
        (&self.guarded, Self::GUARDED_IF)
    }
    fn peer(&self) -> (&str, &str) {
        (&self.router, "veth-rg")
    }
}

/// A veth pair whose frames all carry an 802.1Q tag: side A is the guarded host, side B a
/// client.
struct VlanLink {
    // Dropped before the namespaces go.
    _ends: [VlanEnd; 2],
    pair: NetnsPair,
}

impl VlanLink {
    fn new(vid: u16) -> Self {
        dns_support::require("ethtool", "ethtool");
        let pair = NetnsPair::new();
        Self {
            _ends: [
                VlanEnd::attach(&pair.ns_a, &pair.if_a, vid),
                VlanEnd::attach(&pair.ns_b, &pair.if_b, vid),
            ],
            pair,
        }
    }
}

impl Topology for VlanLink {
    fn guarded(&self) -> (&str, &str) {
        (&self.pair.ns_a, &self.pair.if_a)
    }
    fn peer(&self) -> (&str, &str) {
        (&self.pair.ns_b, &self.pair.if_b)
    }
}

/// The namespaces and the guarded host's daemon (with its private bpffs for the pins).
struct Lab<N: Topology> {
    // Dropped first: the daemon goes before its namespaces.
    host: GuardedHost,
    _peer_xdp: dns_support::xdp::XdpPass,
    net: N,
}

impl<N: Topology> Lab<N> {
    /// `tag` names the test's scratch directory and socket (tests run in parallel).
    fn new(tag: &str, policy_text: &str, net: N) -> Self {
        dns_support::require("ip", "iproute2");
        dns_support::require("nsenter", "util-linux");
        let (ns, iface) = net.guarded();
        let mut host = GuardedHost::new(tag, policy_text, ns, iface);
        dns_support::check_policy(&host.policy);
        // A frame sent back with XDP_TX crosses a veth pair only when the peer runs XDP
        // too (a real NIC sends it on its own).
        let (peer_ns, peer_if) = net.peer();
        let peer_xdp = dns_support::xdp::XdpPass::attach(peer_ns, peer_if);
        host.start();
        Self {
            host,
            _peer_xdp: peer_xdp,
            net,
        }
    }

    fn counter(&self, index: u32) -> u64 {
        self.host.scratch.counter("SHIELD_STATS", index)
    }

    /// Every shield counter, by name (for failure messages).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        (0..SH_NAMES.len() as u32)
            .map(|i| (SH_NAMES[i as usize], self.counter(i)))
            .collect()
    }

    /// `stats --json`: the counters.
    fn stats(&self) -> serde_json::Value {
        let out = cli(&self.host.socket(), &["stats", "--json"]);
        assert!(out.ok, "{out:?}");
        serde_json::from_str(&out.stdout).expect("stats JSON")
    }
}

/// Counter `name` of group `group` (`shield`, `reasons`, ...) in `stats --json`.
fn stat(stats: &serde_json::Value, group: &str, name: &str) -> Option<u64> {
    stats["counters"][group]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name))
        .and_then(|n| n["value"].as_u64())
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

/// Python (Linux's TCP: MSS, SACK, timestamps, window scale) and curl from namespace
/// `client`, three rounds each to every address in `addrs`; each must get its answer.
fn real_clients_connect<N: Topology>(lab: &Lab<N>, client: &str, addrs: &[&str]) {
    for addr in addrs {
        for round in 0..3 {
            let script = format!(
                "import socket,sys\ns=socket.create_connection(('{addr}',{PORT}),timeout=5)\n\
                 s.sendall(b'palisade {round}\\n')\nsys.stdout.write(s.recv(100).decode())\n\
                 import time; time.sleep(0.1)\n"
            );
            let out = exec_in(client, "python3", &["-c", &script]);
            assert!(
                out.status.success()
                    && String::from_utf8_lossy(&out.stdout) == format!("palisade {round}\n"),
                "python to {addr}: {out:?}; shield counters {:?}",
                lab.counters()
            );
            let host = if addr.contains(':') {
                format!("[{addr}]")
            } else {
                (*addr).to_owned()
            };
            let out = exec_in(
                client,
                "curl",
                &["-sS", "--max-time", "5", &format!("http://{host}:{PORT}/")],
            );
            assert!(
                out.status.success() && out.stdout == b"palisade\n",
                "curl to {addr}: {out:?}; shield counters {:?}",
                lab.counters()
            );
        }
    }
}

/// Every connection the server accepted, cookie or not, kept timestamps, SACK and window
/// scaling, with the window scale the SYN-ACK offered (the sockets' own `TCP_INFO`).
fn assert_options_kept(server_ns: &str, negotiated: &[Negotiated], at_least: usize) {
    let ours = in_netns(server_ns, || {
        palisade::shield::host_wscale(std::path::Path::new("/proc/sys"))
    });
    assert!(negotiated.len() >= at_least, "{negotiated:?}");
    for (options, snd, rcv) in negotiated {
        let all = TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE;
        assert_eq!(options & all, all, "{negotiated:?}");
        assert_eq!(*rcv, ours, "{negotiated:?}");
        assert!(*snd > 0, "{negotiated:?}");
    }
}

#[test]
fn real_clients_connect_through_xdp_syn_cookies_with_their_options() {
    let lab = Lab::new("shield-clients", &policy(true), Routed::new());
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
    real_clients_connect(
        &lab,
        &lab.net.outside,
        &[Routed::GUARDED_V4, Routed::GUARDED_V6],
    );
    let sent = lab.counter(SH_COOKIE_SENT) - before;
    assert!(sent >= 10, "{sent} SYN-ACKs from XDP");
    assert!(lab.counter(SH_COOKIE_VALID) >= 10);
    // The same counters through the daemon: `stats --json`, and `status`.
    let stats = lab.stats();
    assert!(
        stat(&stats, "shield", "cookies_sent").is_some_and(|v| v >= 10),
        "{stats}"
    );
    assert!(
        stat(&stats, "shield", "cookies_valid").is_some_and(|v| v >= 10),
        "{stats}"
    );
    let status = cli(&lab.host.socket(), &["status"]).stdout;
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
    // Python takes a while to start on a busy machine: look until the connection is there.
    let mut seen = String::new();
    eventually(Duration::from_secs(3), || {
        seen = ss(&server_ns);
        seen.contains("wscale:")
    });
    let _ = child.wait();
    assert!(seen.contains("wscale:"), "{seen}");
    // This `ss` does not print timestamps and SACK: the sockets' own TCP_INFO says them.
    let negotiated = seen_by_server.lock().unwrap().clone();
    assert_options_kept(&server_ns, &negotiated, 13);
}

/// The same clients over a link whose every frame carries an 802.1Q tag: Palisade's XDP sees
/// the tagged SYNs, and its SYN-ACKs must carry the tag back, or the client's end drops them
/// (see `support/vlan.rs`).
#[test]
fn real_clients_complete_cookie_handshakes_over_a_vlan_tagged_link() {
    let lab = Lab::new("shield-vlan", &policy(true), VlanLink::new(VLAN_ID));
    let pair = &lab.net.pair;
    let seen_by_server = Arc::new(Mutex::new(Vec::new()));
    for addr in [&pair.v4_a, &pair.v6_a] {
        let a = SocketAddr::new(addr.parse().unwrap(), PORT);
        serve(
            in_netns(&pair.ns_a, move || TcpListener::bind(a).unwrap()),
            Arc::clone(&seen_by_server),
        );
    }
    let (sent, valid) = (lab.counter(SH_COOKIE_SENT), lab.counter(SH_COOKIE_VALID));
    real_clients_connect(&lab, &pair.ns_b, &[&pair.v4_a, &pair.v6_a]);
    // Six connections per family; the first SYN to each listener goes to the stack.
    let sent = lab.counter(SH_COOKIE_SENT) - sent;
    let valid = lab.counter(SH_COOKIE_VALID) - valid;
    assert!(sent >= 10, "{sent} SYN-ACKs from XDP: {:?}", lab.counters());
    assert!(valid >= 10, "{valid} cookies valid: {:?}", lab.counters());
    let negotiated = seen_by_server.lock().unwrap().clone();
    assert_options_kept(&pair.ns_a, &negotiated, 12);
}

// ---------------------------------------------------------------------------------------
// Amplification

/// A UDP socket of the guarded host on [`UDP_SERVICE`] (both families) that keeps what
/// arrives: the sender's address and the payload.
struct UdpInbox(Arc<Mutex<Vec<(IpAddr, String)>>>);

impl UdpInbox {
    fn bind(ns: &str) -> Self {
        let sock = in_netns(ns, || {
            UdpSocket::bind(SocketAddr::new("::".parse().unwrap(), UDP_SERVICE)).unwrap()
        });
        let got = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&got);
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                into.lock().unwrap().push((
                    from.ip().to_canonical(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        });
        Self(got)
    }

    fn take(&self) -> Vec<(IpAddr, String)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// From the outside host, to [`UDP_SERVICE`] of the guarded host over both families: one
/// datagram from each reflector port, and one from [`ORDINARY_PORT`]. Their payloads say
/// their source port. Returns how many came from reflector ports.
fn send_unsolicited(outside: &str) -> u64 {
    let mut reflected = 0;
    for (src, dst) in [
        (Routed::OUTSIDE_V4, Routed::GUARDED_V4),
        (Routed::OUTSIDE_V6, Routed::GUARDED_V6),
    ] {
        for sport in REFLECTOR_PORTS.into_iter().chain([ORDINARY_PORT]) {
            let f = craft::Frame::udp(src, dst, sport, UDP_SERVICE)
                .with_payload(format!("from {sport}").as_bytes());
            support::wire::send_ip(outside, &f.build_ip(), dst.parse().unwrap());
            reflected += u64::from(sport != ORDINARY_PORT);
        }
    }
    reflected
}

/// What the inbox holds after the datagrams sent with [`send_unsolicited`] had time to
/// arrive: `(family is IPv4, source port)`, sorted.
fn arrived(inbox: &UdpInbox, expected: usize) -> Vec<(bool, u16)> {
    let mut got = Vec::new();
    eventually(Duration::from_secs(2), || {
        got.extend(inbox.take());
        got.len() >= expected
    });
    // Anything more would arrive right behind.
    thread::sleep(Duration::from_millis(200));
    got.extend(inbox.take());
    let mut seen: Vec<(bool, u16)> = got
        .iter()
        .map(|(from, text)| {
            let from_outside = *from == Routed::OUTSIDE_V4.parse::<IpAddr>().unwrap()
                || *from == Routed::OUTSIDE_V6.parse::<IpAddr>().unwrap();
            assert!(from_outside, "{got:?}");
            let port = text.strip_prefix("from ").and_then(|p| p.parse().ok());
            (from.is_ipv4(), port.unwrap_or_else(|| panic!("{got:?}")))
        })
        .collect();
    seen.sort_unstable();
    seen
}

#[test]
fn the_hosts_own_dns_and_ntp_answers_pass_and_unsolicited_ones_are_dropped() {
    dns_support::require("unbound", "unbound");
    dns_support::require("dig", "dnsutils");
    dns_support::require("chronyd", "chrony");
    let lab = Lab::new("shield-amp", &policy(true), Routed::new());
    let unbound = dns_support::unbound::Unbound::start_in(
        &lab.net.outside,
        &[Routed::OUTSIDE_V4, Routed::OUTSIDE_V6],
    );
    let _chrony = ntp::Chrony::serve_in(&lab.net.outside);
    let inbox = UdpInbox::bind(&lab.net.guarded);

    // The host's own queries: their answers come from ports 53 and 123 and pass.
    let dropped = lab.counter(SH_AMPLIFICATION_DROPPED);
    for server in [Routed::OUTSIDE_V4, Routed::OUTSIDE_V6] {
        for qtype in ["A", "AAAA"] {
            let a = dns_support::dig::args(server, "allowed.test", qtype, 2, &[]);
            let mut cmd = support::netns::command_in(&lab.net.guarded, "dig");
            cmd.args(&a);
            let d = dns_support::dig::run(cmd, a);
            assert_eq!(d.status.as_deref(), Some("NOERROR"), "{d}");
            assert_eq!(
                d.answers,
                [dns_support::unbound::zone_answer("allowed.test", qtype)],
                "{d}"
            );
        }
        let out = ntp::query(&lab.net.guarded, server, 5);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("System clock wrong by"),
            "NTP from {server}: {text}; shield counters {:?}",
            lab.counters()
        );
    }
    assert_eq!(unbound.queries_for("allowed.test").len(), 4);
    assert_eq!(
        lab.counter(SH_AMPLIFICATION_DROPPED),
        dropped,
        "an answer to the host's own query was dropped"
    );

    // Datagrams from reflector ports that answer nothing: dropped in XDP and counted, while
    // one from an ordinary port gets through the same rule.
    let reflected = send_unsolicited(&lab.net.outside);
    let seen = arrived(&inbox, 2);
    assert_eq!(
        seen,
        [(false, ORDINARY_PORT), (true, ORDINARY_PORT)],
        "only the ordinary datagrams arrive"
    );
    assert!(
        eventually(Duration::from_secs(2), || lab
            .counter(SH_AMPLIFICATION_DROPPED)
            - dropped
            == reflected),
        "{} of {reflected} reflected datagrams counted",
        lab.counter(SH_AMPLIFICATION_DROPPED) - dropped
    );
    let stats = lab.stats();
    assert!(
        stat(&stats, "shield", "amplification_dropped").is_some_and(|v| v >= reflected),
        "{stats}"
    );
    assert!(
        stat(&stats, "reasons", "shield-amplification").is_some_and(|v| v >= reflected),
        "{stats}"
    );

    // The control: without the shield the same datagrams reach the service (the rule lets
    // them in), so it was the shield that kept them out.
    lab.host.reload(&policy(false));
    let counted = lab.counter(SH_AMPLIFICATION_DROPPED);
    send_unsolicited(&lab.net.outside);
    let seen = arrived(&inbox, 2 * (REFLECTOR_PORTS.len() + 1));
    let mut all: Vec<(bool, u16)> = [false, true]
        .into_iter()
        .flat_map(|v4| {
            REFLECTOR_PORTS
                .into_iter()
                .chain([ORDINARY_PORT])
                .map(move |p| (v4, p))
        })
        .collect();
    all.sort_unstable();
    assert_eq!(seen, all, "without the shield");
    assert_eq!(lab.counter(SH_AMPLIFICATION_DROPPED), counted);
}

// ---------------------------------------------------------------------------------------
// Path MTU discovery

/// On [`PORT`]: sends [`BULK`] bytes of the pattern to every client, waits for the client's
/// one-byte receipt, keeps what its socket learned (the client's address and the path MTU),
/// then closes.
fn serve_bulk(l: TcpListener, learned: Arc<Mutex<Vec<(SocketAddr, u32)>>>) {
    thread::spawn(move || {
        loop {
            let Ok((mut c, peer)) = l.accept() else {
                return;
            };
            let learned = Arc::clone(&learned);
            thread::spawn(move || {
                let _ = c.write_all(&pattern(BULK));
                let _ = c.set_read_timeout(Some(Duration::from_secs(20)));
                if c.read(&mut [0u8; 1]).is_ok_and(|n| n == 1) {
                    learned.lock().unwrap().push((peer, tcp_info(&c).tcpi_pmtu));
                }
                let _ = c.shutdown(Shutdown::Write);
            });
        }
    });
}

/// Flushes namespace `ns`'s cached path MTU towards `to` (which must be the narrow hop's),
/// and checks that it is gone.
fn forget_path_mtu(ns: &str, to: &str) {
    let family = if to.contains(':') { "-6" } else { "-4" };
    let route = || {
        let out = exec_in(ns, "ip", &[family, "route", "get", to]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let cached = route();
    assert!(
        cached.contains(&format!("mtu {}", Routed::NARROW_MTU)),
        "{cached}"
    );
    let out = exec_in(ns, "ip", &[family, "route", "flush", "cache"]);
    assert!(out.status.success(), "{out:?}");
    let after = route();
    assert!(
        !after.contains("mtu"),
        "the path MTU towards {to} is still cached: {after}"
    );
}

/// With every shield on, full-size segments from the guarded host meet the narrow middle hop
/// with DF set, and only the router's ICMP error (related to the flow) makes the host send
/// smaller ones: a flow the host opened (upload to the outside) and one the outside opened
/// through a SYN cookie (download from the guarded host) both complete, over both families.
#[test]
fn path_mtu_discovery_works_through_the_shields() {
    let lab = Lab::new("shield-pmtu", &policy(true), Routed::new());
    let learned = Arc::new(Mutex::new(Vec::new()));
    for (outside, guarded) in [
        (Routed::OUTSIDE_V4, Routed::GUARDED_V4),
        (Routed::OUTSIDE_V6, Routed::GUARDED_V6),
    ] {
        let a = SocketAddr::new(outside.parse().unwrap(), 9000);
        let l = in_netns(&lab.net.outside, move || TcpListener::bind(a).unwrap());
        thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                thread::spawn(move || sink(c));
            }
        });
        let a = SocketAddr::new(guarded.parse().unwrap(), PORT);
        serve_bulk(
            in_netns(&lab.net.guarded, move || TcpListener::bind(a).unwrap()),
            Arc::clone(&learned),
        );
    }
    let data = pattern(BULK);
    let related = || lab.host.scratch.counter("CT_STATS", CS_RELATED);
    for (outside, guarded) in [
        (Routed::OUTSIDE_V4, Routed::GUARDED_V4),
        (Routed::OUTSIDE_V6, Routed::GUARDED_V6),
    ] {
        // Upload on a flow the guarded host opened.
        let before = related();
        let to = SocketAddr::new(outside.parse().unwrap(), 9000);
        let c = in_netns(&lab.net.guarded, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(3))
        })
        .unwrap_or_else(|e| panic!("connect {outside}: {e}"));
        upload_through_narrow_hop(c, &data, outside, || {
            format!("shield counters {:?}", lab.counters())
        });
        assert!(related() > before, "no ICMP error was accepted as related");

        // Download on a flow the outside opened through a cookie, with the path MTU just
        // learned forgotten. The first SYN to a listener goes to the stack: one handshake
        // first, so that the next is a cookie's.
        forget_path_mtu(&lab.net.guarded, outside);
        let to = SocketAddr::new(guarded.parse().unwrap(), PORT);
        let connect = move || TcpStream::connect_timeout(&to, Duration::from_secs(3));
        drop(in_netns(&lab.net.outside, connect).expect("first connection"));
        let (valid, before) = (lab.counter(SH_COOKIE_VALID), related());
        let started = Instant::now();
        let mut c = in_netns(&lab.net.outside, connect)
            .unwrap_or_else(|e| panic!("connect {guarded}: {e}"));
        assert!(
            lab.counter(SH_COOKIE_VALID) > valid,
            "not a cookie's connection: {:?}",
            lab.counters()
        );
        let local = c.local_addr().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut got = vec![0u8; BULK];
        c.read_exact(&mut got).unwrap_or_else(|e| {
            panic!(
                "download from {guarded} stalled: {e}; shield counters {:?}",
                lab.counters()
            )
        });
        c.write_all(b"k").unwrap();
        let mut more = Vec::new();
        c.read_to_end(&mut more).unwrap();
        assert!(more.is_empty(), "{} bytes too many", more.len());
        eprintln!(
            "{guarded}: {} MiB down through a cookie in {:?}",
            BULK >> 20,
            started.elapsed()
        );
        assert_eq!(got.len(), BULK);
        assert!(got == data, "the download arrived altered");
        let mut pmtu = None;
        eventually(Duration::from_secs(5), || {
            pmtu = learned
                .lock()
                .unwrap()
                .iter()
                .find(|(peer, _)| *peer == local)
                .map(|(_, m)| *m);
            pmtu.is_some()
        });
        assert_eq!(
            pmtu,
            Some(Routed::NARROW_MTU),
            "the server's path MTU towards {local}"
        );
        assert!(related() > before, "no ICMP error was accepted as related");
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
    let lab = Lab::new("shield-floods", &policy(true), Routed::new());
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
