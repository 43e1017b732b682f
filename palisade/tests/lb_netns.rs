//! End to end: the load balancer with the real daemon, a client and three backends running
//! real HTTP servers.
//!
//! ```text
//! client [veth-c] --- [veth-lc] lb [br-b] --- [veth-b] b1, b2, b3
//!        10.72.1.1   10.72.1.254   10.72.2.254        10.72.2.{1,2,3}
//!        fd72:1::1   fd72:1::fe    fd72:2::fe         fd72:2::{1,2,3}
//! ```
//!
//! Palisade guards `veth-lc` on the balancer: the VIPs (DSR `10.72.9.1`, `fd72:9::1`; DNAT
//! `10.72.9.2`, `fd72:9::2`, port 8080) are routed to it by the client. DSR backends hold
//! the DSR VIPs on `lo`; this kernel has no IPIP / IP6IP6 tunnel devices, so they
//! decapsulate with Palisade's TC program for such backends (`palisade_lb_decap`); they
//! answer the client directly (through the balancer's routing, not through Palisade). DNAT
//! replies come back through the balancer's TC egress, which gives them the VIP as source.
//! Transmit checksum offload is off on every link, as on real NICs, where received packets
//! carry their final checksums.
//!
//! - `curl` through every VIP, both modes and both families, reaches every backend;
//! - killing a backend's server: TCP health checks take it out within 1 s, new flows go to
//!   the others, and keep-alive connections on the other backends carry on;
//! - `palisade lb drain`: the drained backend's keep-alive connection carries on while new
//!   flows avoid it; `undrain` brings it back.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    collections::{HashMap, HashSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use control::{GuardedHost, cli, cli_json};
use support::netns::{command_in, exec_in, in_netns};

static NEXT: AtomicU32 = AtomicU32::new(0);

const PORT: u16 = 8080;
const BACKENDS: [&str; 3] = ["b1", "b2", "b3"];

/// Runs `ip` with `args` and asserts it succeeded.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_in(ns: &str, program: &str, args: &[&str]) {
    let out = exec_in(ns, program, args);
    assert!(
        out.status.success(),
        "{program} {} in {ns}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An HTTP/1.1 server answering every GET with its name, keeping connections open.
const SERVER: &str = r#"
import http.server, socket, socketserver, sys
name = sys.argv[1].encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True
S(("::", int(sys.argv[2])), H).serve_forever()
"#;

/// The namespaces, links and servers; removed on drop.
struct Lab {
    client: String,
    lb: String,
    backends: Vec<String>,
    servers: HashMap<usize, Child>,
    /// The backends' decapsulation programs (their links go with them).
    decap: Vec<aya::Ebpf>,
}

/// Attaches Palisade's DSR decapsulation to `veth-b` in `ns` (tcx ingress): this kernel has
/// no IPIP / IP6IP6 tunnel devices (`CONFIG_NET_IPIP`, `CONFIG_IPV6_TUNNEL` are off).
fn attach_decap(ns: &str) -> aya::Ebpf {
    use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions};
    in_netns(ns, || {
        let mut e = palisade::loader::load().expect("load the object");
        let p: &mut SchedClassifier = e
            .program_mut(palisade::lb::DECAP)
            .expect("decap program")
            .try_into()
            .expect("a classifier");
        p.load().expect("verify the decapsulation");
        p.attach_with_options(
            "veth-b",
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .expect("attach the decapsulation");
        e
    })
}

impl Lab {
    const CLIENT_V4: &'static str = "10.72.1.1";
    const LB_IN_V4: &'static str = "10.72.1.254";
    const LB_IN_V6: &'static str = "fd72:1::fe";

    fn backend_v4(i: usize) -> String {
        format!("10.72.2.{}", i + 1)
    }

    fn backend_v6(i: usize) -> String {
        format!("fd72:2::{}", i + 1)
    }

    fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let lab = Self {
            client: format!("pal-lc-{tag}"),
            lb: format!("pal-lb-{tag}"),
            backends: BACKENDS.iter().map(|b| format!("pal-{b}-{tag}")).collect(),
            servers: HashMap::new(),
            decap: Vec::new(),
        };
        for ns in std::iter::once(&lab.client)
            .chain(std::iter::once(&lab.lb))
            .chain(&lab.backends)
        {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            run_in(ns, "sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=0"]);
            run_in(ns, "sysctl", &["-qw", "net.ipv4.conf.default.rp_filter=0"]);
        }
        let (c, l) = (&lab.client, &lab.lb);
        ip(&[
            "-n", c, "link", "add", "veth-c", "type", "veth", "peer", "name", "veth-lc", "netns", l,
        ]);
        ip(&["-n", c, "addr", "add", "10.72.1.1/24", "dev", "veth-c"]);
        ip(&[
            "-n",
            c,
            "-6",
            "addr",
            "add",
            "fd72:1::1/64",
            "dev",
            "veth-c",
            "nodad",
        ]);
        ip(&["-n", l, "addr", "add", "10.72.1.254/24", "dev", "veth-lc"]);
        ip(&[
            "-n",
            l,
            "-6",
            "addr",
            "add",
            "fd72:1::fe/64",
            "dev",
            "veth-lc",
            "nodad",
        ]);
        ip(&["-n", l, "link", "add", "br-b", "type", "bridge"]);
        ip(&["-n", l, "addr", "add", "10.72.2.254/24", "dev", "br-b"]);
        ip(&[
            "-n",
            l,
            "-6",
            "addr",
            "add",
            "fd72:2::fe/64",
            "dev",
            "br-b",
            "nodad",
        ]);
        for (ns, iface) in [(c, "veth-c"), (l, "veth-lc"), (l, "br-b")] {
            ip(&["-n", ns, "link", "set", iface, "up"]);
        }
        ip(&["-n", c, "route", "add", "default", "via", Self::LB_IN_V4]);
        ip(&[
            "-n",
            c,
            "-6",
            "route",
            "add",
            "default",
            "via",
            Self::LB_IN_V6,
        ]);
        run_in(l, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        run_in(l, "sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        for (i, b) in lab.backends.iter().enumerate() {
            let port = format!("veth-p{}", i + 1);
            ip(&[
                "-n", b, "link", "add", "veth-b", "type", "veth", "peer", "name", &port, "netns", l,
            ]);
            ip(&["-n", l, "link", "set", &port, "master", "br-b"]);
            ip(&["-n", l, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                b,
                "addr",
                "add",
                &format!("{}/24", Self::backend_v4(i)),
                "dev",
                "veth-b",
            ]);
            ip(&[
                "-n",
                b,
                "-6",
                "addr",
                "add",
                &format!("{}/64", Self::backend_v6(i)),
                "dev",
                "veth-b",
                "nodad",
            ]);
            ip(&["-n", b, "link", "set", "veth-b", "up"]);
            ip(&["-n", b, "route", "add", "default", "via", "10.72.2.254"]);
            ip(&[
                "-n",
                b,
                "-6",
                "route",
                "add",
                "default",
                "via",
                "fd72:2::fe",
            ]);
            // DSR: the VIPs on lo (the decapsulation is attached below).
            ip(&["-n", b, "addr", "add", "10.72.9.1/32", "dev", "lo"]);
            ip(&["-n", b, "-6", "addr", "add", "fd72:9::1/128", "dev", "lo"]);
            run_in(b, "ethtool", &["-K", "veth-b", "tx", "off"]);
        }
        run_in(c, "ethtool", &["-K", "veth-c", "tx", "off"]);
        run_in(l, "ethtool", &["-K", "veth-lc", "tx", "off"]);
        let mut lab = lab;
        for b in lab.backends.clone() {
            lab.decap.push(attach_decap(&b));
        }
        for i in 0..BACKENDS.len() {
            lab.start_server(i);
        }
        lab
    }

    fn start_server(&mut self, i: usize) {
        let child = command_in(&self.backends[i], "python3")
            .args(["-c", SERVER, BACKENDS[i], &PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn python3");
        self.servers.insert(i, child);
        // Listening once the balancer's namespace can connect to it.
        let target: SocketAddr = format!("{}:{PORT}", Self::backend_v4(i)).parse().unwrap();
        let start = Instant::now();
        while in_netns(&self.lb, move || {
            TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_err()
        }) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "server {i} never listened"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_server(&mut self, i: usize) {
        if let Some(mut c) = self.servers.remove(&i) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `curl` from the client to `url`: the backend's name, or `None` when it failed.
    fn curl(&self, url: &str) -> Option<String> {
        let out = exec_in(&self.client, "curl", &["-s", "-g", "--max-time", "2", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, mut c) in self.servers.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.decap.clear();
        for ns in std::iter::once(&self.client)
            .chain(std::iter::once(&self.lb))
            .chain(&self.backends)
        {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .output();
        }
    }
}

fn policy() -> String {
    let backends = |v6: bool| -> String {
        (0..3)
            .map(|i| {
                let a = if v6 {
                    Lab::backend_v6(i)
                } else {
                    Lab::backend_v4(i)
                };
                format!("{{ address = \"{a}\" }}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let health =
        "health = { check = \"tcp\", interval_ms = 100, timeout_ms = 200, fall = 2, rise = 2 }";
    let mut p = String::from(
        "[firewall]\ndefault = \"allow\"\n\n[lb]\nhash_seed = 99\n\
         encap_source_v4 = \"10.72.3.0/24\"\nencap_source_v6 = \"fd72:3::/112\"\n",
    );
    for (name, vip, mode, v6) in [
        ("dsr4", "10.72.9.1", "dsr", false),
        ("nat4", "10.72.9.2", "dnat", false),
        ("dsr6", "fd72:9::1", "dsr", true),
        ("nat6", "fd72:9::2", "dnat", true),
    ] {
        p.push_str(&format!(
            "\n[[lb.service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {PORT}\nmode = \"{mode}\"\n\
             backends = [{}]\n{health}\n",
            backends(v6)
        ));
    }
    p
}

fn url(vip: &str) -> String {
    if vip.contains(':') {
        format!("http://[{vip}]:{PORT}/")
    } else {
        format!("http://{vip}:{PORT}/")
    }
}

/// A keep-alive HTTP connection from the client's namespace.
struct Conn {
    s: TcpStream,
}

impl Conn {
    fn open(ns: &str, vip: &str) -> Self {
        let target: SocketAddr = if vip.contains(':') {
            format!("[{vip}]:{PORT}")
        } else {
            format!("{vip}:{PORT}")
        }
        .parse()
        .unwrap();
        let s = in_netns(ns, move || {
            TcpStream::connect_timeout(&target, Duration::from_secs(2)).expect("connect")
        });
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        Self { s }
    }

    /// One request on the connection: the backend's name, or `None` on failure.
    fn get(&mut self) -> Option<String> {
        self.s
            .write_all(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n")
            .ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            let n = self.s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())?;
                if body.len() >= len {
                    return Some(body[..len].to_string());
                }
            }
        }
    }
}

const VIPS: [(&str, &str); 4] = [
    ("dsr4", "10.72.9.1"),
    ("nat4", "10.72.9.2"),
    ("dsr6", "fd72:9::1"),
    ("nat6", "fd72:9::2"),
];

fn start(tag: &str) -> (Lab, GuardedHost) {
    let lab = Lab::new();
    let mut host = GuardedHost::new(tag, &policy(), &lab.lb, "veth-lc");
    host.start();
    (lab, host)
}

/// The state of `backend` of `service` in `palisade lb list --json`.
fn state_of(host: &GuardedHost, service: &str, backend: &str) -> String {
    let l = cli_json(&host.socket(), &["lb", "list", "--json"]);
    let s = l["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .expect("service listed");
    let b = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == backend)
        .expect("backend listed");
    b["state"].as_str().unwrap().to_string()
}

#[test]
fn curl_through_every_vip_reaches_every_backend() {
    let (lab, host) = start("lb-curl");
    for (name, vip) in VIPS {
        let mut seen = HashSet::new();
        for _ in 0..24 {
            let got = lab.curl(&url(vip));
            assert!(got.is_some(), "{name}: curl through {vip} failed");
            seen.insert(got.unwrap());
        }
        assert_eq!(seen.len(), 3, "{name}: {seen:?}");
    }
    let stats = cli_json(&host.socket(), &["stats", "--json"]);
    let lb: HashMap<String, u64> = stats["counters"]["lb"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["value"].as_u64().unwrap(),
            )
        })
        .collect();
    // 24 connections per VIP, each several packets from the client.
    for k in ["encap_v4", "encap_v6", "dnat_v4", "dnat_v6"] {
        assert!(lb[k] >= 24 * 3, "{k}: {lb:?}");
    }
    assert!(lb["reverse"] >= 2 * 24 * 3, "{lb:?}");
    assert!(lb["inserted"] >= 4 * 24, "{lb:?}");
    assert_eq!(lb["no_backend"], 0);
    let listing = cli(&host.socket(), &["lb"]);
    assert!(listing.ok, "{listing:?}");
    assert!(
        listing
            .stdout
            .contains("nat4 10.72.9.2:8080/tcp dnat: 3 of 3 backends take new flows"),
        "{}",
        listing.stdout
    );
}

#[test]
fn a_killed_backend_leaves_within_a_second_and_the_others_flows_carry_on() {
    let (mut lab, host) = start("lb-kill");
    for (name, vip) in VIPS {
        // Keep-alive connections, then the server of the first one's backend dies.
        let mut conns: Vec<(Conn, String)> = (0..12)
            .map(|_| {
                let mut c = Conn::open(&lab.client, vip);
                let who = c.get().expect("first request");
                (c, who)
            })
            .collect();
        let victim = conns[0].1.clone();
        let i = BACKENDS.iter().position(|b| *b == victim).unwrap();
        let addr = if vip.contains(':') {
            Lab::backend_v6(i)
        } else {
            Lab::backend_v4(i)
        };
        assert!(
            conns.iter().any(|(_, w)| *w != victim),
            "{name}: one backend only"
        );
        lab.kill_server(i);
        let killed = Instant::now();
        while state_of(&host, name, &addr) != "down" {
            assert!(
                killed.elapsed() < Duration::from_secs(1),
                "{name}: {addr} still not down after a second"
            );
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{name}: {victim} down after {:?}", killed.elapsed());
        // Established flows on the other backends carry on, on the same connections.
        for (c, who) in &mut conns {
            if *who != victim {
                assert_eq!(c.get().as_deref(), Some(who.as_str()), "{name}");
            }
        }
        // New flows all go to the others and succeed.
        for _ in 0..20 {
            let got = lab.curl(&url(vip));
            assert!(
                got.as_deref().is_some_and(|g| g != victim),
                "{name}: {got:?}"
            );
        }
        lab.start_server(i);
        let back = Instant::now();
        while state_of(&host, name, &addr) != "up" {
            assert!(
                back.elapsed() < Duration::from_secs(3),
                "{name}: {addr} not back"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_drained_backend_keeps_its_flows_and_gets_no_new_ones() {
    let (lab, host) = start("lb-drain");
    for (name, vip) in VIPS {
        let mut conns: Vec<(Conn, String)> = (0..12)
            .map(|_| {
                let mut c = Conn::open(&lab.client, vip);
                let who = c.get().expect("first request");
                (c, who)
            })
            .collect();
        let drained = conns[0].1.clone();
        let i = BACKENDS.iter().position(|b| *b == drained).unwrap();
        let addr = if vip.contains(':') {
            Lab::backend_v6(i)
        } else {
            Lab::backend_v4(i)
        };
        let r = cli(&host.socket(), &["lb", "drain", name, &addr]);
        assert!(r.ok && r.stdout.contains("draining"), "{r:?}");
        assert_eq!(state_of(&host, name, &addr), "draining");
        // Every connection carries on, the drained backend's included.
        for (c, who) in &mut conns {
            assert_eq!(c.get().as_deref(), Some(who.as_str()), "{name}");
        }
        for _ in 0..20 {
            let got = lab.curl(&url(vip));
            assert!(
                got.as_deref().is_some_and(|g| g != drained),
                "{name}: {got:?}"
            );
        }
        let r = cli(&host.socket(), &["lb", "undrain", name, &addr]);
        assert!(r.ok, "{r:?}");
        let seen: HashSet<String> = (0..24).filter_map(|_| lab.curl(&url(vip))).collect();
        assert!(seen.contains(&drained), "{name}: {seen:?}");
    }
    // Refusals name what is wrong.
    let r = cli(&host.socket(), &["lb", "drain", "nope", "10.72.2.1"]);
    assert!(
        !r.ok && r.stderr.contains("no load-balanced service named \"nope\""),
        "{r:?}"
    );
    let r = cli(&host.socket(), &["lb", "add", "nat4", "fd72:2::7"]);
    assert!(
        !r.ok && r.stderr.contains("not of the VIP's family"),
        "{r:?}"
    );
    let _ = Lab::CLIENT_V4;
}

/// With connection tracking on (and `[shield] tcp_invalid = "drop"`, which drops segments of
/// flows the tracker does not know as answered), a DNAT service works and the tracker sees
/// each client's flow to the VIP answered by the VIP: the reverse translation runs before
/// the egress tracker, so the reply is the client flow's own, over IPv4 and IPv6. A DSR
/// service works too: its flows are never answered through the balancer, so their
/// segments are not condemned as invalid.
#[test]
fn dnat_flows_are_tracked_as_the_clients_flows_to_the_vip() {
    let lab = Lab::new();
    let policy = format!(
        "{}\n[conntrack]\nenabled = true\n\n[shield]\ntcp_invalid = \"drop\"\n",
        policy()
    );
    let mut host = GuardedHost::new("lb-ct", &policy, &lab.lb, "veth-lc");
    host.start();
    for vip in ["10.72.9.2", "fd72:9::2"] {
        let mut c = Conn::open(&lab.client, vip);
        for i in 0..5 {
            assert!(c.get().is_some(), "request {i} through {vip}");
        }
        let flows = cli_json(&host.socket(), &["ct", "list", "--json", "--dport", "8080"]);
        let to_vip: Vec<&serde_json::Value> = flows
            .as_array()
            .expect("a JSON array")
            .iter()
            .filter(|f| f["reply_addr"] == vip)
            .collect();
        assert_eq!(to_vip.len(), 1, "{flows}");
        assert_eq!(to_vip[0]["state"], "established", "{flows}");
        assert_eq!(to_vip[0]["table"], "validated", "{flows}");
    }
    for vip in ["10.72.9.1", "fd72:9::1"] {
        let mut c = Conn::open(&lab.client, vip);
        for i in 0..5 {
            assert!(c.get().is_some(), "request {i} through {vip}");
        }
    }
}
