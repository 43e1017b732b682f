//! End to end: the real `palisade` binary on a veth in a network namespace, real traffic from
//! another namespace, rules enforced and counters equal to what was sent.

mod support;

use std::{thread, time::Duration};

use support::{daemon::Daemon, netns::NetnsPair};

const POLICY: &str = r#"
[firewall]
default = "allow"

[[firewall.rule]]
name = "drop-udp-9999"
action = "drop"
proto = "udp"
dport = 9999
log = true

[[firewall.rule]]
name = "count-udp-7777"
action = "allow"
proto = "udp"
dport = 7777

[[firewall.rule]]
name = "drop-tcp-2222"
action = "drop"
proto = "tcp"
dport = 2222

[[firewall.rule]]
name = "allow-tcp-8080"
action = "allow"
proto = "tcp"
dport = 8080

[[firewall.rule]]
name = "echo-v4"
action = "allow"
proto = "icmp"
icmp_type = 8

[[firewall.rule]]
name = "echo-v6"
action = "allow"
proto = "icmpv6"
icmp_type = 128
"#;

const UDP_SEND: &str = r"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(b'palisade-test', (host, port))
";

const UDP_COUNT: &str = r"
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
n = 0
try:
    while True:
        s.recv(2048); n += 1
except socket.timeout:
    pass
print(n)
";

const TCP_LISTEN: &str = r"
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4)
s.settimeout(float(sys.argv[3]))
try:
    while True:
        c, _ = s.accept(); c.close()
except socket.timeout:
    pass
";

const TCP_CONNECT: &str = r"
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')
except Exception as e:
    print('failed', type(e).__name__)
";

fn py(pair: &NetnsPair, ns: &str, script: &str, args: &[&str]) -> String {
    let mut a = vec!["-c", script];
    a.extend_from_slice(args);
    let out = pair.exec(ns, "python3", &a);
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn in_background(
    cmd: &mut std::process::Command,
) -> thread::JoinHandle<std::io::Result<std::process::Output>> {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    thread::spawn(move || child?.wait_with_output())
}

#[test]
fn enforces_policy_on_real_traffic() {
    let pair = NetnsPair::new();
    let dir = std::env::temp_dir().join(format!("palisade-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let ns_a = pair.ns_a.clone();
    let ns_b = pair.ns_b.clone();

    let daemon = Daemon::start(
        &pair,
        &ns_b,
        &[
            "run",
            "--config",
            policy.to_str().unwrap(),
            "--iface",
            &pair.if_b,
            "--json",
            "--unload-on-exit",
            "--socket",
            dir.join("palisade.sock").to_str().unwrap(),
        ],
    );

    // Allowed UDP: every datagram counted and delivered.
    let v4_b = pair.v4_b.clone();
    let receiver = in_background(
        pair.command(&ns_b, "python3")
            .args(["-c", UDP_COUNT, &v4_b, "7777", "2"]),
    );
    thread::sleep(Duration::from_millis(300));
    py(&pair, &ns_a, UDP_SEND, &[&pair.v4_b, "7777", "7"]);
    let received = receiver.join().unwrap().expect("receiver ran");
    assert_eq!(
        String::from_utf8_lossy(&received.stdout).trim(),
        "7",
        "allowed UDP delivered"
    );

    // Dropped UDP over both families.
    py(&pair, &ns_a, UDP_SEND, &[&pair.v4_b, "9999", "10"]);
    py(&pair, &ns_a, UDP_SEND, &[&pair.v6_b, "9999", "10"]);

    // TCP: the allowed port connects, the dropped one times out.
    let listener = in_background(
        pair.command(&ns_b, "python3")
            .args(["-c", TCP_LISTEN, "::", "8080", "3"]),
    );
    let listener2 = in_background(
        pair.command(&ns_b, "python3")
            .args(["-c", TCP_LISTEN, "::", "2222", "3"]),
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        py(&pair, &ns_a, TCP_CONNECT, &[&pair.v4_b, "8080", "2"]),
        "connected"
    );
    assert_eq!(
        py(&pair, &ns_a, TCP_CONNECT, &[&pair.v6_b, "8080", "2"]),
        "connected"
    );
    assert!(py(&pair, &ns_a, TCP_CONNECT, &[&pair.v4_b, "2222", "1"]).starts_with("failed"));
    listener.join().unwrap().expect("listener ran");
    listener2.join().unwrap().expect("listener ran");

    // Ping over both families: 3 echo requests each.
    let ping4 = pair.exec(
        &ns_a,
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "1", &pair.v4_b],
    );
    assert!(
        ping4.status.success(),
        "ping v4: {}",
        String::from_utf8_lossy(&ping4.stdout)
    );
    let ping6 = pair.exec(
        &ns_a,
        "ping",
        &["-6", "-c", "3", "-i", "0.2", "-W", "1", &pair.v6_b],
    );
    assert!(
        ping6.status.success(),
        "ping v6: {}",
        String::from_utf8_lossy(&ping6.stdout)
    );

    thread::sleep(Duration::from_millis(200));
    let t = daemon.stop();
    assert!(t.success, "palisade exited with an error: {:?}", t.stderr);
    assert!(
        t.stderr.iter().any(|l| l.contains("palisade: detached")),
        "{:?}",
        t.stderr
    );
    assert!(
        t.stderr.iter().any(|l| l.contains("(native XDP)")),
        "veth supports native XDP: {:?}",
        t.stderr
    );

    assert_eq!(t.rule_packets("count-udp-7777"), 7, "{:?}", t.stderr);
    assert_eq!(t.rule_packets("drop-udp-9999"), 20, "{:?}", t.stderr);
    assert_eq!(t.rule_packets("echo-v4"), 3, "{:?}", t.stderr);
    assert_eq!(t.rule_packets("echo-v6"), 3, "{:?}", t.stderr);
    assert!(t.rule_packets("allow-tcp-8080") >= 4, "{:?}", t.stderr);
    // The SYN and its retransmissions within the 1 s timeout.
    assert!(t.rule_packets("drop-tcp-2222") >= 1, "{:?}", t.stderr);

    // Every logged drop reached userspace as a JSON event naming the rule and reason.
    let events: Vec<serde_json::Value> = t
        .stdout
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let udp_drops = events
        .iter()
        .filter(|e| e["rule"] == "drop-udp-9999" && e["reason"] == "rule" && e["dport"] == 9999)
        .count();
    assert_eq!(udp_drops, 20, "events: {:?}", t.stdout);
    assert!(events.iter().any(|e| e["src"] == pair.v6_a.as_str()));
    assert!(
        t.stderr.iter().any(|l| l.contains("0 events lost")),
        "{:?}",
        t.stderr
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn namespaces_are_removed_even_when_a_test_panics() {
    let names = std::panic::catch_unwind(|| {
        let pair = NetnsPair::new();
        let names = (pair.ns_a.clone(), pair.ns_b.clone());
        std::panic::panic_any(names);
    })
    .unwrap_err();
    let (a, b) = names.downcast_ref::<(String, String)>().unwrap().clone();
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.contains(&a) && !list.contains(&b),
        "left behind: {list}"
    );
}
