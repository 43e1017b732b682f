//! End to end: scrub with the real daemon on a router, checked on the wire.
//!
//! The routed lab of `support/routed.rs` with Palisade on the router's interface towards
//! the guarded host (`veth-rg`): what the outside host sends leaves through the egress
//! scrub, what the guarded host sends comes in through the ingress scrub and is forwarded.
//! Transmit checksum offload is off on every link, so every packet carries its final
//! checksums; captures on both end hosts are read by scapy, which recomputes every IPv4
//! header, TCP, UDP and ICMP checksum independently of Palisade.
//! - real TCP handshakes (Linux on both ends) over IPv4 and IPv6: the MSS is clamped on the
//!   SYN and on the SYN-ACK, and both sockets' sending MSS shows it; TTL and hop limit are
//!   raised, DF cleared;
//! - pings of 3000 bytes, fragmented on the narrow link and by the guarded host, still
//!   reassemble (both ways, both families): fragments keep their identification, while
//!   unfragmented packets get random ones;
//! - a reload changes the limits for the next handshake, the pinned programs go on scrubbing
//!   when the daemon is killed, and a new daemon adopts their links.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::Duration,
};

use control::{GuardedHost, cli, cli_json};
use support::{
    netns::{command_in, exec_in, in_netns, tcp_info},
    routed::Routed,
};

const PORT: u16 = 8080;
const MIN_TTL: u8 = 200;
const MSS_V4: u32 = 1000;
const MSS_V6: u32 = 1220;

fn policy() -> String {
    format!(
        "[firewall]\ndefault = \"allow\"\n\n[scrub]\nmin_ttl = {MIN_TTL}\nmax_mss_v4 = {MSS_V4}\n\
         max_mss_v6 = {MSS_V6}\nclear_df = true\nrandom_id = true\n"
    )
}

/// Captures every frame on an interface until stopped, then prints one JSON object per IP
/// packet: its header fields, the TCP MSS option, and whether each checksum scapy
/// recomputes matches the one on the wire (`null` where it cannot be checked: fragments,
/// ICMPv6).
const CAPTURE: &str = r#"
import json, os, sys, threading, time
from scapy.all import AsyncSniffer, IP, IPv6, TCP, UDP, ICMP, IPv6ExtHdrFragment, raw
iface, stop = sys.argv[1], sys.argv[2]
started = threading.Event()
sniffer = AsyncSniffer(iface=iface, store=True, started_callback=started.set)
sniffer.start()
started.wait(10)
print("ready", flush=True)
while not os.path.exists(stop):
    time.sleep(0.05)
time.sleep(0.3)
packets = sniffer.stop()

def same_after_recompute(top, layer, field):
    wire = getattr(top[layer], field)
    again = top.__class__(raw(top))
    delattr(again[layer], field)
    return top.__class__(raw(again))[layer].getfieldval(field) == wire

for p in packets:
    r = {}
    if IP in p:
        ip = p[IP]
        r.update(v=4, src=ip.src, dst=ip.dst, ttl=ip.ttl, id=ip.id, df=bool(ip.flags.DF),
                 mf=bool(ip.flags.MF), frag=ip.frag, proto=ip.proto)
        r["ip_ok"] = same_after_recompute(ip, IP, "chksum")
        whole = not r["mf"] and r["frag"] == 0
        top = ip
    elif IPv6 in p:
        ip = p[IPv6]
        r.update(v=6, src=ip.src, dst=ip.dst, ttl=ip.hlim, proto=ip.nh)
        whole = IPv6ExtHdrFragment not in p
        r["mf"] = not whole
        top = ip
    else:
        continue
    r["l4_ok"] = None
    if whole:
        for layer in (TCP, UDP, ICMP):
            if layer in p:
                r["l4_ok"] = same_after_recompute(top, layer, "chksum")
                break
    if TCP in p and whole:
        t = p[TCP]
        r["tcp"] = int(t.flags)
        r["mss"] = next((v for k, v in t.options if k == "MSS"), None)
    if ICMP in p and whole:
        r["seq"] = p[ICMP].seq
        r["icmp"] = p[ICMP].type
    print(json.dumps(r), flush=True)
"#;

/// One captured IP packet, as the capture script described it.
#[derive(Debug, Clone)]
struct Seen(serde_json::Value);

impl Seen {
    fn u(&self, k: &str) -> u64 {
        self.0[k].as_u64().unwrap_or(u64::MAX)
    }
    fn b(&self, k: &str) -> bool {
        self.0[k].as_bool().unwrap_or(false)
    }
    fn s(&self, k: &str) -> &str {
        self.0[k].as_str().unwrap_or("")
    }
    fn is_tcp(&self, flags: u64) -> bool {
        self.0["tcp"].as_u64() == Some(flags)
    }
}

/// A capture running in a namespace; [`Capture::finish`] stops it and reads its packets.
struct Capture {
    child: Option<Child>,
    stop: PathBuf,
}

impl Capture {
    fn start(ns: &str, iface: &str, stop: PathBuf) -> Self {
        let mut child = command_in(ns, "/usr/bin/python3")
            .args(["-c", CAPTURE, iface, stop.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the capture");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.as_mut().unwrap());
        out.read_line(&mut line).expect("capture ready");
        assert_eq!(line.trim(), "ready", "capture on {iface} in {ns}");
        Self {
            child: Some(child),
            stop,
        }
    }

    fn finish(mut self) -> Vec<Seen> {
        std::fs::write(&self.stop, b"").unwrap();
        let child = self.child.take().unwrap();
        let out = child.wait_with_output().expect("capture output");
        assert!(out.status.success(), "capture failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| Seen(serde_json::from_str(l).expect("capture JSON")))
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, b"");
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The routed lab with every link's transmit checksum offload off, Palisade on the router.
struct Lab {
    // Dropped first: the daemon goes before its namespace.
    host: GuardedHost,
    r: Routed,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let r = Routed::new();
        for (ns, iface) in [
            (&r.guarded, Routed::GUARDED_IF),
            (&r.router, "veth-rg"),
            (&r.router, "veth-ro"),
            (&r.outside, Routed::OUTSIDE_IF),
        ] {
            let out = exec_in(ns, "ethtool", &["-K", iface, "tx", "off"]);
            assert!(
                out.status.success(),
                "ethtool -K {iface} tx off: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut host = GuardedHost::new(tag, &policy(), &r.router, "veth-rg");
        host.start();
        Self { host, r }
    }

    fn capture(&self, ns: &str, iface: &str, name: &str) -> Capture {
        Capture::start(ns, iface, self.host.scratch.file(name))
    }
}

/// Checks every checksum scapy could recompute; returns how many L4 checksums it checked.
fn all_checksums_valid(packets: &[Seen], where_: &str) -> usize {
    let mut l4 = 0;
    for p in packets {
        if p.u("v") == 4 {
            assert!(p.b("ip_ok"), "bad IPv4 header checksum at {where_}: {p:?}");
        }
        if !p.0["l4_ok"].is_null() {
            assert!(p.b("l4_ok"), "bad layer-4 checksum at {where_}: {p:?}");
            l4 += 1;
        }
    }
    l4
}

/// Connects from the outside host to the guarded host's `addr`, moves 20 000 bytes each
/// way, and returns the sending MSS of the server's and the client's socket.
fn exchange(r: &Routed, addr: SocketAddr) -> (u32, u32) {
    const BYTES: usize = 20_000;
    let listener = in_netns(&r.guarded, move || TcpListener::bind(addr).expect("bind"));
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mss = tcp_info(&s).tcpi_snd_mss;
        let mut buf = vec![0u8; BYTES];
        s.read_exact(&mut buf).expect("server read");
        s.write_all(&buf).expect("server write");
        mss
    });
    let mut c = in_netns(&r.outside, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect")
    });
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sent: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
    c.write_all(&sent).expect("client write");
    let mut back = vec![0u8; BYTES];
    c.read_exact(&mut back).expect("client read");
    assert_eq!(back, sent, "the data came back intact");
    let client_mss = tcp_info(&c).tcpi_snd_mss;
    (server.join().expect("server"), client_mss)
}

#[test]
fn tcp_handshakes_are_clamped_both_ways_with_valid_checksums() {
    let lab = Lab::new("scrub-tcp");
    let r = &lab.r;
    let at_guarded = lab.capture(&r.guarded, Routed::GUARDED_IF, "cap-g");
    let at_outside = lab.capture(&r.outside, Routed::OUTSIDE_IF, "cap-o");
    let v4: SocketAddr = format!("{}:{PORT}", Routed::GUARDED_V4).parse().unwrap();
    let v6: SocketAddr = format!("[{}]:{PORT}", Routed::GUARDED_V6).parse().unwrap();
    let (server4, client4) = exchange(r, v4);
    let (server6, client6) = exchange(r, v6);
    let guarded = at_guarded.finish();
    let outside = at_outside.finish();
    eprintln!(
        "sending MSS: v4 server {server4} client {client4}, v6 server {server6} client {client6}"
    );
    // Without scrub the guarded host would send 1448-byte segments (the outside host
    // announces 1460) and the outside host 1228 (its own narrow link).
    assert!(server4 <= MSS_V4, "v4 server's MSS {server4}");
    assert!(client4 <= MSS_V4, "v4 client's MSS {client4}");
    assert!(server6 <= MSS_V6, "v6 server's MSS {server6}");
    assert!(client6 <= MSS_V6, "v6 client's MSS {client6}");

    let checked = all_checksums_valid(&guarded, "the guarded host")
        + all_checksums_valid(&outside, "the outside host");
    assert!(checked > 40, "only {checked} TCP checksums were checked");
    for (v, src_out, limit) in [
        (4, Routed::OUTSIDE_V4, MSS_V4),
        (6, Routed::OUTSIDE_V6, MSS_V6),
    ] {
        let tcp = |ps: &[Seen], flags: u64| -> Vec<Seen> {
            ps.iter()
                .filter(|p| p.u("v") == v && p.is_tcp(flags))
                .cloned()
                .collect()
        };
        // The SYN: as the outside host sent it, and as it reached the guarded host.
        let sent = tcp(&outside, 0x02);
        let got = tcp(&guarded, 0x02);
        assert_eq!(
            (sent.len(), got.len()),
            (1, 1),
            "IPv{v} SYN: {sent:?} {got:?}"
        );
        assert!(sent[0].u("mss") > u64::from(limit), "{sent:?}");
        assert_eq!(got[0].u("mss"), u64::from(limit), "{got:?}");
        assert_eq!(got[0].s("src"), src_out);
        // The SYN-ACK the other way.
        let sent = tcp(&guarded, 0x12);
        let got = tcp(&outside, 0x12);
        assert_eq!(
            (sent.len(), got.len()),
            (1, 1),
            "IPv{v} SYN-ACK: {sent:?} {got:?}"
        );
        assert!(sent[0].u("mss") > u64::from(limit), "{sent:?}");
        assert_eq!(got[0].u("mss"), u64::from(limit), "{got:?}");
        // Every packet of the flow that crossed the router: TTL raised (by the egress scrub
        // on the way in, by the ingress scrub before the router's own decrement on the way
        // out), DF cleared.
        for p in guarded
            .iter()
            .filter(|p| p.u("v") == v && p.s("src") == src_out)
        {
            assert_eq!(p.u("ttl"), u64::from(MIN_TTL), "{p:?}");
            assert!(!p.b("df"), "{p:?}");
        }
        for p in outside
            .iter()
            .filter(|p| p.u("v") == v && p.s("dst") == src_out && p.0["tcp"].is_u64())
        {
            assert_eq!(p.u("ttl"), u64::from(MIN_TTL) - 1, "{p:?}");
            assert!(!p.b("df"), "{p:?}");
        }
    }

    let stats = cli(&lab.host.socket(), &["stats"]);
    assert!(stats.ok, "{stats:?}");
    for counter in [
        "egress_mss_clamped_v4 1",
        "ingress_mss_clamped_v4 1",
        "egress_mss_clamped_v6 1",
        "ingress_mss_clamped_v6 1",
    ] {
        assert!(
            stats.stdout.contains(counter),
            "no `{counter}` in {}",
            stats.stdout
        );
    }
    let json = cli_json(&lab.host.socket(), &["stats", "--json"]);
    let scrub = json["counters"]["scrub"]
        .as_array()
        .expect("counters.scrub");
    let value = |name: &str| {
        scrub
            .iter()
            .find(|n| n["name"] == name)
            .and_then(|n| n["value"].as_u64())
    };
    assert_eq!(value("ingress_mss_clamped_v6"), Some(1), "{scrub:?}");
    assert!(
        value("egress_df_cleared").is_some_and(|n| n > 10),
        "{scrub:?}"
    );
    assert_eq!(value("ingress_not_parsed"), Some(0), "{scrub:?}");
    let status = cli(&lab.host.socket(), &["status"]);
    assert!(
        status.ok
            && status.stdout.contains("scrub: ")
            && status.stdout.contains("ingress_ttl_raised "),
        "{status:?}"
    );
}

/// Pings `addr` from `ns` with `size` bytes of payload; panics unless every echo came back.
fn ping(ns: &str, addr: &str, size: usize, count: usize) {
    let (size, count) = (size.to_string(), count.to_string());
    let out = exec_in(
        ns,
        "ping",
        &[
            "-c", &count, "-s", &size, "-i", "0.2", "-W", "3", "-M", "dont", addr,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&format!("{count} received")),
        "ping {addr} -s {size}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fragments_reassemble_and_whole_packets_get_random_ids() {
    let lab = Lab::new("scrub-frag");
    let r = &lab.r;
    // The guarded host's first large IPv6 answer meets the narrow link: IPv6 routers do not
    // fragment, the router answers "packet too big" and the guarded host fragments smaller
    // from then on. Learnt before the captures, so that every datagram below arrives.
    let _ = exec_in(
        &r.outside,
        "ping",
        &[
            "-c",
            "2",
            "-s",
            "3000",
            "-i",
            "0.2",
            "-W",
            "1",
            Routed::GUARDED_V6,
        ],
    );
    let at_guarded = lab.capture(&r.guarded, Routed::GUARDED_IF, "cap-g");
    let at_outside = lab.capture(&r.outside, Routed::OUTSIDE_IF, "cap-o");
    // Whole packets, then datagrams the narrow link (and the guarded host's answer) split.
    ping(&r.outside, Routed::GUARDED_V4, 56, 8);
    ping(&r.outside, Routed::GUARDED_V4, 3000, 3);
    ping(&r.outside, Routed::GUARDED_V6, 3000, 3);
    let guarded = at_guarded.finish();
    let outside = at_outside.finish();
    all_checksums_valid(&guarded, "the guarded host");
    all_checksums_valid(&outside, "the outside host");

    // Unfragmented echo requests: the identification the outside host chose against the one
    // that reached the guarded host, by sequence number (a random draw may repeat one).
    let whole_requests = |ps: &[Seen]| -> HashMap<u64, u64> {
        ps.iter()
            .filter(|p| p.u("v") == 4 && p.0["icmp"].as_u64() == Some(8) && !p.b("mf"))
            .filter(|p| p.u("frag") == 0)
            .map(|p| (p.u("seq"), p.u("id")))
            .collect()
    };
    let sent = whole_requests(&outside);
    let got = whole_requests(&guarded);
    assert!(
        sent.len() >= 8 && got.len() == sent.len(),
        "{sent:?} {got:?}"
    );
    let same = sent
        .iter()
        .filter(|(seq, id)| got.get(seq) == Some(id))
        .count();
    assert!(
        same <= 1,
        "{same} of {} identifications were kept: {sent:?} {got:?}",
        sent.len()
    );

    // Fragments: each identification the outside host gave its fragments reaches the
    // guarded host unchanged (the router forwards fragments without reassembling them),
    // and the guarded host's fragmented answers reach the outside host with theirs.
    let fragment_ids = |ps: &[Seen], src: &str| -> Vec<u64> {
        let mut ids: Vec<u64> = ps
            .iter()
            .filter(|p| p.u("v") == 4 && p.s("src") == src && (p.b("mf") || p.u("frag") > 0))
            .map(|p| p.u("id"))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    for src in [Routed::OUTSIDE_V4, Routed::GUARDED_V4] {
        let a = fragment_ids(&outside, src);
        let b = fragment_ids(&guarded, src);
        assert_eq!(a.len(), 3, "three fragmented datagrams from {src}: {a:?}");
        assert_eq!(a, b, "fragments from {src} kept their identifications");
    }
    // IPv6 fragments crossed too, with the hop limit raised.
    assert!(
        guarded
            .iter()
            .any(|p| p.u("v") == 6 && p.b("mf") && p.u("ttl") == u64::from(MIN_TTL))
    );

    let stats = cli(&lab.host.socket(), &["stats"]);
    assert!(stats.ok, "{stats:?}");
    assert!(
        stats.stdout.contains("egress_fragment_id_kept"),
        "{}",
        stats.stdout
    );
    assert!(
        stats.stdout.contains("ingress_fragment_id_kept"),
        "{}",
        stats.stdout
    );
}

/// The scrub links pinned under the daemon's pin directory, by file name.
fn scrub_link_pins(host: &GuardedHost) -> Vec<String> {
    let mut names = Vec::new();
    for layout in std::fs::read_dir(host.scratch.pin_dir()).unwrap().flatten() {
        let Ok(links) = std::fs::read_dir(layout.path().join("links")) else {
            continue;
        };
        for l in links.flatten() {
            let name = l.file_name().to_string_lossy().into_owned();
            if name.starts_with("tcx-scrub-") {
                names.push(name);
            }
        }
    }
    names.sort();
    names
}

#[test]
fn reloads_switch_the_limits_and_scrub_outlives_the_daemon() {
    let mut lab = Lab::new("scrub-life");
    let v4: SocketAddr = format!("{}:{PORT}", Routed::GUARDED_V4).parse().unwrap();
    let (server, _) = exchange(&lab.r, v4);
    assert!(server <= MSS_V4, "before the reload: {server}");
    assert_eq!(
        scrub_link_pins(&lab.host),
        ["tcx-scrub-in-veth-rg", "tcx-scrub-out-veth-rg"]
    );
    // A reload with a lower limit applies to the next handshake.
    let lower = policy().replace(&format!("max_mss_v4 = {MSS_V4}"), "max_mss_v4 = 800");
    lab.host.reload(&lower);
    let (server, client) = exchange(&lab.r, v4);
    assert!(
        server <= 800 && client <= 800,
        "after the reload: {server} {client}"
    );
    // The daemon dies: the pinned programs go on scrubbing.
    lab.host.take_daemon().kill9();
    let (server, client) = exchange(&lab.r, v4);
    assert!(
        server <= 800 && client <= 800,
        "without the daemon: {server} {client}"
    );
    // A new daemon takes the pinned links over: still one per direction.
    lab.host.start();
    let (server, client) = exchange(&lab.r, v4);
    assert!(
        server <= 800 && client <= 800,
        "after the restart: {server} {client}"
    );
    assert_eq!(
        scrub_link_pins(&lab.host),
        ["tcx-scrub-in-veth-rg", "tcx-scrub-out-veth-rg"]
    );
}
