//! End to end: DHCP snooping with the real daemon, a real DHCP server and a real client.
//!
//! A LAN of four namespaces: a bridge, the trusted server (dnsmasq), a rogue server
//! (another dnsmasq, other range) and the client (ISC `dhclient`), with Palisade guarding
//! the client's interface.
//! - the client's lease shows in `palisade leases --json` with its MAC, address, hostname
//!   (from the client's own request, seen on egress) and lease end, the address the one the
//!   client's lease file holds; `palisade events --kind dhcp` carries it with the hostname;
//! - the rogue server's offers are reported within 1 s with `rogue = "alert"`;
//! - with `rogue = "block"` the client gets no lease while only the rogue answers, then
//!   its lease from the trusted server while both answer, never one from the rogue;
//! - DHCPv6 and router advertisements: dnsmasq's RA and DHCPv6 reply to `dhclient -6` fill
//!   the table with a router and an IA_NA address, with the hostname the client sent.
//! - with `rogue = "block"`, a rogue dnsmasq's DHCPv6 answers never give `dhclient -6` an
//!   address (the trusted server's do, while both answer), and a rogue router's
//!   advertisements never become the client's default route (under "alert" they do).
//!
//! Needs root. The tests take the LAN one at a time, so the suite may run them in parallel.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use control::{BgCli, GuardedHost, cli, cli_json, eventually};
use support::netns::command_in;

const CLIENT_MAC: &str = "02:dc:00:00:00:0c";
const SERVER_MAC: &str = "02:dc:00:00:00:01";
const ROGUE_MAC: &str = "02:dc:00:00:00:66";
const HOSTNAME: &str = "pal-client";

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// One LAN at a time: the suite runs tests in parallel, and each test's timing bounds (a
/// rogue reported within 1 s) are about its own servers and client, not a neighbour's.
static ONE_LAN: Mutex<()> = Mutex::new(());
/// Tells this process's LANs apart, so that a LAN left by a failed test never collides.
static NEXT_LAN: AtomicU32 = AtomicU32::new(0);

/// The LAN; dropping it removes the namespaces (and with them every veth).
struct Lan {
    br: String,
    srv: String,
    rogue: String,
    cli: String,
    /// `10.203.K` and `fd00:203:K`.
    v4: String,
    v6: String,
    /// Held until the namespaces are gone (fields drop after `Drop::drop`).
    _one: MutexGuard<'static, ()>,
}

impl Lan {
    fn new() -> Self {
        // A test that failed holding the lock poisons it; the next LAN is still its own.
        let one = ONE_LAN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = (std::process::id() % 1_000) * 10 + NEXT_LAN.fetch_add(1, Ordering::Relaxed) % 10;
        let k = id % 250 + 1;
        let lan = Self {
            br: format!("pdb-{id}"),
            srv: format!("pds-{id}"),
            rogue: format!("pdr-{id}"),
            cli: format!("pdc-{id}"),
            v4: format!("10.203.{k}"),
            v6: format!("fd00:203:{k:x}"),
            _one: one,
        };
        for ns in [&lan.br, &lan.srv, &lan.rogue, &lan.cli] {
            ip(&["netns", "add", ns]);
        }
        ip(&["-n", &lan.br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan.br, "link", "set", "br0", "up"]);
        for (ns, tag, mac) in [
            (&lan.srv, "s", SERVER_MAC),
            (&lan.rogue, "r", ROGUE_MAC),
            (&lan.cli, "c", CLIENT_MAC),
        ] {
            let (a, b) = (format!("pd{tag}{id}"), format!("pb{tag}{id}"));
            ip(&[
                "link", "add", &a, "address", mac, "type", "veth", "peer", "name", &b,
            ]);
            ip(&["link", "set", &a, "netns", ns]);
            ip(&["link", "set", &b, "netns", &lan.br]);
            ip(&["-n", ns, "link", "set", &a, "name", "eth0"]);
            ip(&["-n", &lan.br, "link", "set", &b, "master", "br0"]);
            ip(&["-n", &lan.br, "link", "set", &b, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for (ns, host) in [(&lan.srv, 1), (&lan.rogue, 9)] {
            let v4 = format!("{}.{host}/24", lan.v4);
            let v6 = format!("{}::{host}/64", lan.v6);
            ip(&["-n", ns, "addr", "add", &v4, "dev", "eth0"]);
            ip(&["-n", ns, "-6", "addr", "add", &v6, "dev", "eth0", "nodad"]);
        }
        for ns in [&lan.srv, &lan.rogue, &lan.cli] {
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        lan
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in [&self.cli, &self.rogue, &self.srv, &self.br] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A child process killed (by its own handle) when dropped.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq as a DHCP server only (no DNS: port 0), in the foreground, on `ns`'s eth0.
fn dnsmasq(ns: &str, dir: &Path, tag: &str, ranges: &[String], extra: &[&str]) -> Kid {
    let mut c = command_in(ns, "dnsmasq");
    c.args([
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=eth0",
        "--bind-interfaces",
        "--no-ping",
        "--dhcp-authoritative",
        "--log-dhcp",
    ])
    .arg(format!(
        "--dhcp-leasefile={}",
        dir.join(format!("{tag}.leases")).display()
    ))
    .arg(format!(
        "--pid-file={}",
        dir.join(format!("{tag}.pid")).display()
    ));
    for r in ranges {
        c.arg(format!("--dhcp-range={r}"));
    }
    c.args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let kid = Kid(c.spawn().expect("spawn dnsmasq"));
    // dnsmasq binds its sockets at once; give it a moment before a client asks.
    thread::sleep(Duration::from_millis(300));
    kid
}

/// `dhclient` (in the foreground, one attempt, timing out after `timeout` seconds) with a
/// configuration that sends the hostname and a script that changes nothing on the host.
fn dhclient(ns: &str, dir: &Path, tag: &str, family: &str, timeout: u32) -> (Kid, PathBuf) {
    let conf = dir.join(format!("{tag}.conf"));
    let send = if family == "-6" {
        format!("send fqdn.fqdn \"{HOSTNAME}.\";\nsend fqdn.encoded on;\n")
    } else {
        format!("send host-name \"{HOSTNAME}\";\n")
    };
    std::fs::write(&conf, format!("{send}timeout {timeout};\nretry 1;\n")).unwrap();
    let lease_file = dir.join(format!("{tag}.lease"));
    let _ = std::fs::remove_file(&lease_file);
    let mut c = command_in(ns, "dhclient");
    c.args([family, "-d", "-1", "-v", "-sf", "/bin/true", "-cf"])
        .arg(&conf)
        .arg("-lf")
        .arg(&lease_file)
        .arg("-pf")
        .arg(dir.join(format!("{tag}.pid")))
        .arg("eth0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    (Kid(c.spawn().expect("spawn dhclient")), lease_file)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The leases `palisade leases --json` lists.
fn leases(socket: &Path) -> Vec<serde_json::Value> {
    cli_json(socket, &["leases", "--json"])["leases"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn lease_of<'a>(l: &'a [serde_json::Value], kind: &str) -> Option<&'a serde_json::Value> {
    l.iter().find(|x| x["kind"] == kind)
}

/// The address the client's lease file holds (`fixed-address` or `iaaddr`).
fn leased_address(file: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .map(|r| {
            r.trim()
                .trim_end_matches(';')
                .trim_end_matches('{')
                .trim()
                .to_string()
        })
        .next_back()
}

/// Waits for a `dhcp` event line containing every one of `words`; when it came.
fn wait_event(ev: &BgCli, words: &[&str], limit: Duration) -> Option<(Instant, String)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(l) = ev
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| words.iter().all(|w| l.contains(w)))
        {
            return Some((Instant::now(), l.clone()));
        }
        thread::sleep(Duration::from_millis(5));
    }
    None
}

fn policy(lan: &Lan, rogue: &str) -> String {
    format!(
        "[dhcp]\ntrusted = [\"{}.1\", \"{SERVER_MAC}\"]\ntrusted_routers = [\"{SERVER_MAC}\"]\n\
         rogue = \"{rogue}\"\n",
        lan.v4
    )
}

#[test]
fn the_clients_lease_is_snooped_and_a_rogue_server_is_reported() {
    let lan = Lan::new();
    let mut host = GuardedHost::new("dhcp-alert", &policy(&lan, "alert"), &lan.cli, "eth0");
    host.start();
    let dir = host.scratch.file("");
    let socket = host.socket();
    let _srv = dnsmasq(
        &lan.srv,
        &dir,
        "srv",
        &[format!("{0}.50,{0}.60,255.255.255.0,1h", lan.v4)],
        &[],
    );
    let events = BgCli::start(&socket, &["events", "--kind", "dhcp", "--json"]);
    thread::sleep(Duration::from_millis(300));
    let (_client, lease_file) = dhclient(&lan.cli, &dir, "c1", "-4", 10);
    let mut l = Vec::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            l = leases(&socket);
            lease_of(&l, "dhcpv4").is_some()
        }),
        "no lease snooped: {:?}",
        cli(&socket, &["leases"])
    );
    let now = unix_now();
    let lease = lease_of(&l, "dhcpv4").unwrap().clone();
    eprintln!("lease: {lease}");
    assert_eq!(lease["mac"], CLIENT_MAC);
    assert_eq!(lease["hostname"], HOSTNAME);
    assert_eq!(lease["iface"], "eth0");
    assert_eq!(lease["trusted"], true);
    let end = lease["lease_end"].as_u64().expect("lease end");
    assert!(end.abs_diff(now + 3600) <= 30, "lease end {end}, now {now}");
    let addr = lease["ip"].as_str().unwrap().to_string();
    assert!(addr.starts_with(&format!("{}.", lan.v4)), "{addr}");
    assert!(
        eventually(Duration::from_secs(5), || leased_address(
            &lease_file,
            "fixed-address"
        )
        .is_some()),
        "dhclient wrote no lease"
    );
    assert_eq!(
        leased_address(&lease_file, "fixed-address").as_deref(),
        Some(addr.as_str())
    );
    let text = cli(&socket, &["leases"]);
    assert!(text.ok, "{text:?}");
    let row = text
        .stdout
        .lines()
        .find(|l| l.starts_with("dhcpv4"))
        .unwrap_or_else(|| panic!("no row: {text:?}"));
    for want in [
        CLIENT_MAC,
        addr.as_str(),
        HOSTNAME,
        &end.to_string(),
        "eth0",
    ] {
        assert!(row.contains(want), "{want} not in {row:?}");
    }
    let (_, line) = wait_event(
        &events,
        &["\"lease\"", HOSTNAME, &addr],
        Duration::from_secs(2),
    )
    .expect("lease event");
    eprintln!("event: {line}");

    // A rogue server joins; a new client run (fresh lease file: DISCOVER) draws its offer.
    let _rogue = dnsmasq(
        &lan.rogue,
        &dir,
        "rogue",
        &[format!("{0}.100,{0}.110,255.255.255.0,2m", lan.v4)],
        &[],
    );
    drop(_client);
    let asked = Instant::now();
    let (_client2, _) = dhclient(&lan.cli, &dir, "c2", "-4", 10);
    let (at, line) = wait_event(&events, &["\"rogue\"", "\"alert\""], Duration::from_secs(5))
        .expect("rogue reported");
    let took = at.duration_since(asked);
    eprintln!("rogue reported {took:?} after the client asked: {line}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(line.contains(&format!("{}.9", lan.v4)) && line.contains(ROGUE_MAC));
    let s = cli_json(&socket, &["stats", "--json"]);
    let dhcp = s["counters"]["dhcp"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let get = |n: &str| {
        dhcp.iter()
            .find(|x| x["name"] == n)
            .and_then(|x| x["value"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        get("rogue") >= 1 && get("rogue_dropped") == 0 && get("copied") >= 4,
        "{dhcp:?}"
    );
}

#[test]
fn block_keeps_the_rogue_servers_lease_from_the_client() {
    let lan = Lan::new();
    let mut host = GuardedHost::new("dhcp-block", &policy(&lan, "block"), &lan.cli, "eth0");
    host.start();
    let dir = host.scratch.file("");
    let socket = host.socket();
    let events = BgCli::start(&socket, &["events", "--kind", "dhcp", "--json"]);
    thread::sleep(Duration::from_millis(300));
    let rogue = dnsmasq(
        &lan.rogue,
        &dir,
        "rogue",
        &[format!("{0}.100,{0}.110,255.255.255.0,2m", lan.v4)],
        &[],
    );
    // Only the rogue answers: no lease within the client's 6 s.
    let asked = Instant::now();
    let (mut client, lease_file) = dhclient(&lan.cli, &dir, "c1", "-4", 6);
    let (at, line) = wait_event(&events, &["\"rogue\"", "\"drop\""], Duration::from_secs(5))
        .expect("rogue reported");
    let took = at.duration_since(asked);
    eprintln!("rogue dropped and reported {took:?} after the client asked: {line}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let status = (0..200)
        .find_map(|_| {
            thread::sleep(Duration::from_millis(100));
            client.0.try_wait().unwrap()
        })
        .expect("dhclient gave up");
    assert!(!status.success(), "dhclient got a lease from the rogue");
    assert!(leased_address(&lease_file, "fixed-address").is_none());
    assert!(lease_of(&leases(&socket), "dhcpv4").is_none());
    let s = cli_json(&socket, &["stats", "--json"]);
    let reasons = s["counters"]["reasons"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let dropped = reasons
        .iter()
        .find(|x| x["name"] == "dhcp-rogue-server")
        .and_then(|x| x["value"].as_u64())
        .unwrap_or(0);
    assert!(dropped >= 1, "{reasons:?}");

    // The trusted server joins while the rogue still answers: the lease is the trusted one.
    let _srv = dnsmasq(
        &lan.srv,
        &dir,
        "srv",
        &[format!("{0}.50,{0}.60,255.255.255.0,1h", lan.v4)],
        &[],
    );
    let (_client2, lease_file) = dhclient(&lan.cli, &dir, "c2", "-4", 10);
    assert!(
        eventually(Duration::from_secs(15), || leased_address(
            &lease_file,
            "fixed-address"
        )
        .is_some()),
        "no lease from the trusted server"
    );
    let addr = leased_address(&lease_file, "fixed-address").unwrap();
    let last: u32 = addr.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        (50..=60).contains(&last),
        "lease {addr} is not the trusted server's"
    );
    assert!(eventually(Duration::from_secs(3), || {
        lease_of(&leases(&socket), "dhcpv4").is_some_and(|l| l["ip"] == addr.as_str())
    }));
    drop(rogue);
}

#[test]
fn dhcpv6_and_router_advertisements_fill_the_table() {
    let lan = Lan::new();
    let mut host = GuardedHost::new("dhcp-v6", &policy(&lan, "block"), &lan.cli, "eth0");
    host.start();
    let dir = host.scratch.file("");
    let socket = host.socket();
    let _srv = dnsmasq(
        &lan.srv,
        &dir,
        "srv6",
        &[format!("{0}::100,{0}::1ff,64,1h", lan.v6)],
        &["--enable-ra"],
    );
    // The client's link-local address must be usable before dhclient -6 binds to it.
    thread::sleep(Duration::from_secs(2));
    let (_client, lease_file) = dhclient(&lan.cli, &dir, "c6", "-6", 10);
    let mut l = Vec::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            l = leases(&socket);
            lease_of(&l, "dhcpv6").is_some() && lease_of(&l, "router").is_some()
        }),
        "table: {:?}",
        cli(&socket, &["leases"])
    );
    let now = unix_now();
    let v6 = lease_of(&l, "dhcpv6").unwrap().clone();
    let router = lease_of(&l, "router").unwrap().clone();
    eprintln!("dhcpv6 lease: {v6}\nrouter: {router}");
    assert_eq!(v6["mac"], CLIENT_MAC);
    assert!(
        v6["ip"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}::", lan.v6))
    );
    assert_eq!(v6["hostname"], HOSTNAME);
    let end = v6["lease_end"].as_u64().unwrap();
    assert!(end.abs_diff(now + 3600) <= 30, "{end} vs {now}");
    assert_eq!(router["mac"], SERVER_MAC);
    assert_eq!(router["trusted"], true);
    assert_eq!(router["prefixes"][0], format!("{}::/64", lan.v6));
    assert!(
        eventually(Duration::from_secs(5), || leased_address(
            &lease_file,
            "iaaddr"
        )
        .is_some()),
        "dhclient -6 wrote no lease"
    );
    assert_eq!(
        leased_address(&lease_file, "iaaddr").as_deref(),
        v6["ip"].as_str()
    );
}

/// The client's IPv6 default routes.
fn default_routes(ns: &str) -> String {
    let o = command_in(ns, "ip")
        .args(["-6", "route", "show", "default"])
        .output()
        .expect("ip route");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_rogue_routers_advertisements_never_reach_the_client_under_block() {
    let lan = Lan::new();
    let mut host = GuardedHost::new("dhcp-ra", &policy(&lan, "block"), &lan.cli, "eth0");
    host.start();
    let dir = host.scratch.file("");
    let socket = host.socket();
    let events = BgCli::start(&socket, &["events", "--kind", "dhcp", "--json"]);
    thread::sleep(Duration::from_millis(300));
    let ra_only = [format!("{}::,ra-only", lan.v6)];
    let started = Instant::now();
    let rogue = dnsmasq(&lan.rogue, &dir, "rogue-ra", &ra_only, &["--enable-ra"]);
    let (at, line) = wait_event(
        &events,
        &["\"rogue\"", "\"ra\"", "\"drop\""],
        Duration::from_secs(5),
    )
    .expect("rogue router reported");
    eprintln!(
        "rogue RA dropped and reported {:?} after dnsmasq started: {line}",
        at.duration_since(started)
    );
    assert!(line.contains(ROGUE_MAC));
    // dnsmasq sends its first advertisements in quick succession: none took.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(default_routes(&lan.cli), "", "a rogue default route");
    let s = cli_json(&socket, &["stats", "--json"]);
    let dropped = s["counters"]["reasons"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["name"] == "dhcp-rogue-router").cloned())
        .and_then(|x| x["value"].as_u64())
        .unwrap_or(0);
    assert!(dropped >= 1);
    assert!(lease_of(&leases(&socket), "router").is_none());

    // The same advertisements under "alert" (dnsmasq restarted for a new burst): the
    // client takes the rogue as its default router, which is what "block" prevented.
    drop(rogue);
    host.reload(&policy(&lan, "alert"));
    let _rogue = dnsmasq(&lan.rogue, &dir, "rogue-ra2", &ra_only, &["--enable-ra"]);
    assert!(
        eventually(Duration::from_secs(10), || default_routes(&lan.cli)
            .contains("eth0")),
        "the client never took the advertisements"
    );
    let r = lease_of(&leases(&socket), "router")
        .cloned()
        .expect("router listed");
    assert_eq!(r["mac"], ROGUE_MAC);
    assert_eq!(r["trusted"], false);
}

#[test]
fn block_keeps_a_rogue_dhcpv6_servers_address_from_the_client() {
    let lan = Lan::new();
    let mut host = GuardedHost::new("dhcp-v6-block", &policy(&lan, "block"), &lan.cli, "eth0");
    host.start();
    let dir = host.scratch.file("");
    let socket = host.socket();
    let events = BgCli::start(&socket, &["events", "--kind", "dhcp", "--json"]);
    let rogue = dnsmasq(
        &lan.rogue,
        &dir,
        "rogue6",
        &[format!("{0}::200,{0}::2ff,64,1h", lan.v6)],
        &[],
    );
    // The client's link-local address must be usable before dhclient -6 binds to it.
    thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    let (mut client, lease_file) = dhclient(&lan.cli, &dir, "c6", "-6", 6);
    let (at, line) = wait_event(
        &events,
        &["\"rogue\"", "\"dhcpv6\"", "\"drop\""],
        Duration::from_secs(5),
    )
    .expect("rogue DHCPv6 server reported");
    eprintln!(
        "rogue DHCPv6 server dropped and reported {:?} after the client asked: {line}",
        at.duration_since(asked)
    );
    assert!(line.contains(ROGUE_MAC));
    let status = (0..300)
        .find_map(|_| {
            thread::sleep(Duration::from_millis(100));
            client.0.try_wait().unwrap()
        })
        .expect("dhclient -6 gave up");
    assert!(
        !status.success(),
        "dhclient -6 got an address from the rogue"
    );
    assert!(leased_address(&lease_file, "iaaddr").is_none());
    assert!(lease_of(&leases(&socket), "dhcpv6").is_none());

    // The trusted server joins: its address, never the rogue's.
    let _srv = dnsmasq(
        &lan.srv,
        &dir,
        "srv6",
        &[format!("{0}::100,{0}::1ff,64,1h", lan.v6)],
        &[],
    );
    let (_client2, lease_file) = dhclient(&lan.cli, &dir, "c6b", "-6", 10);
    assert!(
        eventually(Duration::from_secs(15), || leased_address(
            &lease_file,
            "iaaddr"
        )
        .is_some()),
        "no address from the trusted server"
    );
    let addr: std::net::Ipv6Addr = leased_address(&lease_file, "iaaddr")
        .unwrap()
        .parse()
        .unwrap();
    let low = addr.segments()[7];
    assert!(
        (0x100..=0x1ff).contains(&low),
        "{addr} is not the trusted server's"
    );
    assert!(eventually(Duration::from_secs(3), || {
        lease_of(&leases(&socket), "dhcpv6").is_some_and(|l| l["ip"] == addr.to_string())
    }));
    drop(rogue);
}
