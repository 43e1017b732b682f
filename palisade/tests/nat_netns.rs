//! End to end: NAT with the real daemon on a router.
//!
//! The routed lab of `support/routed.rs`: the "guarded" namespace is the inside network
//! (10.71.1.0/24, fd71:1::/64, plus 1,000 client addresses in 10.72.0.0/22), Palisade runs
//! on the router with `[nat] out = "veth-ro"`, masquerading the inside networks to the
//! router's outside addresses, and forwarding TCP port 8080 to a web server inside. The
//! outside host has no route to the inside networks at all (its default routes are
//! removed): every answer that reaches the inside went through the NAT.
//! - 1,000 client addresses x 60 UDP flows (each its own socket, 60 open at once per
//!   address) to an outside server on 4 ports: the server checks that no two flows arrived
//!   with the same translated tuple and that each flow's datagram carried its own data, and
//!   every client socket gets the answer to its own datagram;
//! - ping and traceroute (UDP and ICMP) through the NAT, IPv4 and IPv6;
//! - a port forward reaches the inside web server with curl, IPv4 and IPv6;
//! - the counters reach `palisade stats --json`.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    io::Write as _,
    process::{Child, Stdio},
    time::Duration,
};

use control::{GuardedHost, cli_json};
use support::{
    netns::{command_in, exec_in},
    routed::{Routed, ip},
};

const CLIENTS: usize = 1000;
const FLOWS: usize = 60;
const SERVER_PORTS: [u16; 4] = [9000, 9001, 9002, 9003];

fn policy() -> String {
    format!(
        r#"[firewall]
default = "allow"

[nat]
out = "veth-ro"
masquerade = ["10.71.1.0/24", "10.72.0.0/16", "fd71:1::/64"]

[[nat.forward]]
proto = "tcp"
port = 8080
to = "{}:8000"

[[nat.forward]]
proto = "tcp"
port = 8080
to = "[{}]:8000"
"#,
        Routed::GUARDED_V4,
        Routed::GUARDED_V6
    )
}

/// The outside server: answers every datagram with what it saw, and when the stop file
/// appears prints what it received: flows, distinct translated tuples, tuples that carried
/// more than one flow's data, and the sources.
const SERVER: &str = r#"
import json, os, select, socket, sys
addr, stop, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
socks = []
for p in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((addr, p))
    socks.append(s)
print("ready", flush=True)
by_tuple = {}
by_flow = {}
while not os.path.exists(stop):
    r, _, _ = select.select(socks, [], [], 0.1)
    for s in r:
        while True:
            try:
                data, peer = s.recvfrom(2048, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            t = (s.getsockname()[1], peer[0], peer[1])
            by_tuple.setdefault(t, set()).add(data)
            by_flow.setdefault(data, set()).add(t)
            s.sendto(data + b"|" + ("%s:%d" % peer).encode(), peer)
print(json.dumps({
    "flows": len(by_flow),
    "tuples": len(by_tuple),
    "shared_tuples": sum(1 for v in by_tuple.values() if len(v) > 1),
    "moved_flows": sum(1 for v in by_flow.values() if len(v) > 1),
    "sources": sorted({t[1] for t in by_tuple}),
}), flush=True)
"#;

/// The inside clients: for each batch of addresses, one socket per flow (all of an
/// address's flows open at once), each sends its own data and waits for the answer to it,
/// with two resends. Prints counts.
const CLIENTS_PY: &str = r#"
import json, select, socket, sys
server, n_clients, n_flows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ports = [int(p) for p in sys.argv[4:]]
addrs = ["10.72.%d.%d" % (i // 250, i % 250 + 1) for i in range(n_clients)]
ok = wrong = missing = 0
BATCH = 25
for b in range(0, len(addrs), BATCH):
    pending = {}
    for a in addrs[b:b + BATCH]:
        for f in range(n_flows):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((a, 0))
            data = ("%s|%d|%d" % (a, s.getsockname()[1], f)).encode()
            pending[s.fileno()] = (s, data, ports[f % len(ports)])
    answered = {}
    for attempt in range(3):
        for fd, (s, data, port) in pending.items():
            if fd not in answered:
                s.sendto(data, (server, port))
        poll = select.poll()
        waiting = 0
        for fd in pending:
            if fd not in answered:
                poll.register(fd, select.POLLIN)
                waiting += 1
        while waiting:
            events = poll.poll(1500)
            if not events:
                break
            for fd, _ in events:
                reply, _ = pending[fd][0].recvfrom(2048)
                answered[fd] = reply
                poll.unregister(fd)
                waiting -= 1
        if len(answered) == len(pending):
            break
    for fd, (s, data, port) in pending.items():
        reply = answered.get(fd)
        if reply is None:
            missing += 1
        elif reply.split(b"|")[:3] == data.split(b"|"):
            ok += 1
        else:
            wrong += 1
        s.close()
print(json.dumps({"ok": ok, "wrong": wrong, "missing": missing}), flush=True)
"#;

struct Lab {
    host: GuardedHost,
    r: Routed,
}

fn sysctl(ns: &str, setting: &str) {
    let out = exec_in(ns, "sysctl", &["-qw", setting]);
    assert!(out.status.success(), "sysctl {setting} in {ns}");
}

impl Lab {
    fn new(tag: &str) -> Self {
        let r = Routed::new();
        // The outside host knows only its own link: answers reach the inside through the
        // NAT or not at all.
        ip(&["-n", &r.outside, "route", "del", "default"]);
        ip(&["-n", &r.outside, "-6", "route", "del", "default"]);
        // 1,000 more inside addresses, routed by the router towards the inside host.
        let mut batch = String::new();
        for i in 0..CLIENTS {
            batch.push_str(&format!(
                "addr add 10.72.{}.{}/32 dev {}\n",
                i / 250,
                i % 250 + 1,
                Routed::GUARDED_IF
            ));
        }
        let file = std::env::temp_dir().join(format!("nat-addrs-{}-{tag}", std::process::id()));
        std::fs::write(&file, batch).unwrap();
        ip(&["-n", &r.guarded, "-b", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        ip(&[
            "-n",
            &r.router,
            "route",
            "add",
            "10.72.0.0/22",
            "via",
            Routed::GUARDED_V4,
        ]);
        // Traceroute wants an answer for every probe: no ICMP rate limits in the lab.
        for ns in [&r.router, &r.outside] {
            sysctl(ns, "net.ipv4.icmp_ratelimit=0");
            sysctl(ns, "net.ipv6.icmp.ratelimit=0");
        }
        let mut host = GuardedHost::new(tag, &policy(), &r.router, "veth-ro");
        host.start();
        Self { host, r }
    }

    fn nat_counter(&self, name: &str) -> u64 {
        let json = cli_json(&self.host.socket(), &["stats", "--json"]);
        json["counters"]["nat"]
            .as_array()
            .expect("counters.nat")
            .iter()
            .find(|n| n["name"] == name)
            .and_then(|n| n["value"].as_u64())
            .unwrap_or_else(|| panic!("no NAT counter {name}: {json}"))
    }
}

/// A python script running in `ns` until its stop file appears (its second argument, after
/// `args[0]`); its first line is "ready".
struct Py {
    child: Child,
    stop: std::path::PathBuf,
}

impl Py {
    fn start(ns: &str, script: &str, stop: std::path::PathBuf, args: &[&str]) -> Self {
        let _ = std::fs::remove_file(&stop);
        let mut child = command_in(ns, "python3")
            .arg("-c")
            .arg(script)
            .arg(args[0])
            .arg(&stop)
            .args(&args[1..])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("read");
        assert_eq!(line.trim(), "ready", "server did not start");
        child.stdout = Some(out.into_inner());
        Self { child, stop }
    }

    fn finish(mut self) -> String {
        std::fs::write(&self.stop, b"").unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().expect("stdout"), &mut out)
            .expect("read");
        let _ = self.child.wait();
        out
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(text: &str) -> serde_json::Value {
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn thousand_clients_sixty_flows_each_share_no_translated_tuple() {
    let lab = Lab::new("nat-flows");
    let server = Py::start(
        &lab.r.outside,
        SERVER,
        lab.host.scratch.file("server-stop"),
        &[
            Routed::OUTSIDE_V4,
            &SERVER_PORTS[0].to_string(),
            &SERVER_PORTS[1].to_string(),
            &SERVER_PORTS[2].to_string(),
            &SERVER_PORTS[3].to_string(),
        ],
    );
    let mut args = vec![
        "-c".to_string(),
        CLIENTS_PY.to_string(),
        Routed::OUTSIDE_V4.to_string(),
        CLIENTS.to_string(),
        FLOWS.to_string(),
    ];
    args.extend(SERVER_PORTS.iter().map(ToString::to_string));
    let started = std::time::Instant::now();
    let out = command_in(&lab.r.guarded, "python3")
        .args(&args)
        .output()
        .expect("clients");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("clients done after {:?}", started.elapsed());
    let clients = json(&String::from_utf8_lossy(&out.stdout));
    let seen = json(&server.finish());
    eprintln!("clients {clients}, server {seen}");
    let total = (CLIENTS * FLOWS) as u64;
    assert_eq!(clients["ok"], total, "{clients}");
    assert_eq!(clients["wrong"], 0);
    assert_eq!(seen["flows"], total, "{seen}");
    assert_eq!(
        seen["tuples"], total,
        "every flow its own translated tuple: {seen}"
    );
    assert_eq!(seen["shared_tuples"], 0, "{seen}");
    assert_eq!(seen["moved_flows"], 0, "{seen}");
    assert_eq!(seen["sources"], serde_json::json!([Routed::ROUTER_OUT_V4]));
    assert!(lab.nat_counter("snat_mappings") >= total);
    assert_eq!(lab.nat_counter("port_exhausted"), 0);
    assert_eq!(lab.nat_counter("table_full"), 0);
    eprintln!(
        "ports tried: {} for {} mappings",
        lab.nat_counter("port_probes"),
        lab.nat_counter("snat_mappings")
    );
}

fn run_in(ns: &str, program: &str, args: &[&str]) -> String {
    let out = exec_in(ns, program, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn ping_and_traceroute_work_through_the_nat() {
    let lab = Lab::new("nat-icmp");
    let inside = &lab.r.guarded;
    for (flag, dst) in [("-4", Routed::OUTSIDE_V4), ("-6", Routed::OUTSIDE_V6)] {
        let out = run_in(
            inside,
            "ping",
            &[flag, "-c", "3", "-i", "0.2", "-W", "2", dst],
        );
        assert!(out.contains("3 received"), "{out}");
        for mode in [None, Some("-I")] {
            let mut args = vec![flag, "-n", "-q", "1", "-w", "2", "-m", "4"];
            args.extend(mode);
            args.push(dst);
            let out = run_in(inside, "traceroute", &args);
            let hops: Vec<&str> = out
                .lines()
                .filter(|l| !l.starts_with("traceroute"))
                .collect();
            let router_in = if flag == "-4" {
                Routed::ROUTER_IN_V4
            } else {
                Routed::ROUTER_IN_V6
            };
            assert_eq!(hops.len(), 2, "two hops, the last the destination: {out}");
            assert!(hops[0].contains(router_in), "{out}");
            assert!(hops[1].contains(dst), "{out}");
        }
    }
    assert!(lab.nat_counter("icmp_errors_translated") >= 2);
}

#[test]
fn a_port_forward_reaches_the_inside_web_server() {
    let lab = Lab::new("nat-forward");
    let root = lab.host.scratch.file("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::File::create(root.join("token.txt"))
        .unwrap()
        .write_all(b"inside web server\n")
        .unwrap();
    let mut web = command_in(&lab.r.guarded, "python3")
        .args(["-m", "http.server", "8000", "--bind", "::", "--directory"])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("http.server");
    let mut fetched = Vec::new();
    for url in [
        format!("http://{}:8080/token.txt", Routed::ROUTER_OUT_V4),
        format!("http://[{}]:8080/token.txt", Routed::ROUTER_OUT_V6),
    ] {
        let mut body = String::new();
        for _ in 0..50 {
            let out = exec_in(&lab.r.outside, "curl", &["-sS", "--max-time", "3", &url]);
            if out.status.success() {
                body = String::from_utf8_lossy(&out.stdout).into_owned();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        fetched.push(body);
    }
    let _ = web.kill();
    let _ = web.wait();
    for body in &fetched {
        assert_eq!(body, "inside web server\n", "{fetched:?}");
    }
    assert!(lab.nat_counter("dnat_mappings") >= 2);
}
