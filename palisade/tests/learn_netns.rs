//! `palisade learn --duration`: a daemon guards namespace A with connection tracking and a
//! DNS egress scope that reports allowed queries; a python3 client in a throw-away cgroup
//! resolves two names at a real resolver (unbound in B) and sends datagrams to the
//! addresses it got. Learning, run in A while this happens, must name the names (not the
//! addresses), with the process and cgroup in the evidence and the cgroup in the policy.

#[path = "support/dns/mod.rs"]
mod dns_support;
mod support;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use dns_support::{
    TempDir,
    cgroup::{TestCgroup, palisade_with_cgroups},
    check_policy, require_tools, run_args,
    unbound::Unbound,
};
use support::{
    daemon::Daemon,
    netns::{NetnsPair, nsenter},
};

/// Resolves each name (A, over UDP to `server`:53) and sends `n` datagrams, each from a
/// socket of its own, to the address it got, port 7000. Prints the addresses.
const CLIENT: &str = r"
import socket, struct, sys, time
server, n, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for i, name in enumerate(names):
    q = struct.pack('>HHHHHH', 0x4c00 + i, 0x0100, 1, 0, 0, 0)
    q += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0'
    q += struct.pack('>HH', 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(q, (server, 53))
    r = s.recv(512)
    addr = socket.inet_ntoa(r[-4:])
    print(name, addr, flush=True)
    for _ in range(n):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b'x', (addr, 7000)); u.close()
        time.sleep(0.05)
";

fn ip(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn live_learning_names_the_names_with_process_and_cgroup() {
    require_tools();
    let p = NetnsPair::new();
    let dir = TempDir::new("learn-live");
    let cg = TestCgroup::new();
    // The zone's addresses live on B, reachable from A on the link.
    for a in ["192.0.2.1/32", "192.0.2.5/32"] {
        ip(&p.ns_b, &["addr", "add", a, "dev", &p.if_b]);
    }
    ip(&p.ns_a, &["route", "add", "192.0.2.0/24", "dev", &p.if_a]);
    let _unbound = Unbound::start(&p, &p.ns_b, &[&p.v4_b]);
    let policy = dir.write(
        "policy.toml",
        &format!(
            "[firewall]\nstateful = true\n\n[dns.egress]\nmode = \"blocklist\"\nlists = []\n\
             log_allowed = true\ncgroups = [\"{}\"]\n",
            cg.path.display()
        ),
    );
    check_policy(&policy);
    let args = run_args(&dir, &policy, &p.if_a);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_command(palisade_with_cgroups(&p, &p.ns_a, &args));
    let socket = dir.path().join("palisade.sock");
    let out = dir.path().join("proposal.toml");
    // Learning runs in A (its packet socket reads A's answers) while the client runs.
    // nsenter, not `ip netns exec`: the host's cgroup mounts stay visible to name the cgroup.
    let learn = nsenter(&p.ns_a, env!("CARGO_BIN_EXE_palisade"))
        .arg("--socket")
        .arg(&socket)
        .args(["learn", "--duration", "6", "--json", "--output"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn learn");
    std::thread::sleep(Duration::from_secs(1));
    let client = cg
        .command_in_ns(
            &p.ns_a,
            &[
                "python3",
                "-c",
                CLIENT,
                &p.v4_b,
                "4",
                "allowed.test",
                "other.test",
            ],
        )
        .output()
        .expect("client");
    assert!(
        client.status.success(),
        "client: {}",
        String::from_utf8_lossy(&client.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&client.stdout),
        "allowed.test 192.0.2.1\nother.test 192.0.2.5\n"
    );
    let learned = learn.wait_with_output().unwrap();
    drop(daemon);
    assert!(
        learned.status.success(),
        "{}",
        String::from_utf8_lossy(&learned.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    check_policy(&out);
    // Names, not addresses: 4 flows each, and the resolver for the two queries.
    let settings: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(settings.contains("  \"allowed.test\",\n"), "{text}");
    assert!(settings.contains("  \"other.test\",\n"), "{text}");
    assert!(
        !settings.contains("192.0.2.1\"") && !settings.contains("192.0.2.5\""),
        "{text}"
    );
    // The process and cgroup are in the evidence, and the cgroup is the one in the policy.
    let evidence = text
        .lines()
        .find(|l| l.contains("# name allowed.test:"))
        .unwrap_or_else(|| panic!("{text}"));
    let cgroup = cg.path.display().to_string();
    assert!(
        evidence.contains("4 flows")
            && evidence.contains("process python3")
            && evidence.contains(&cgroup),
        "{text}"
    );
    assert!(
        settings.contains(&format!("cgroups = [\"{cgroup}\"]")),
        "{text}"
    );
    // The resolver queries (2 flows) are held for review at the default of 3.
    assert!(
        text.contains(&format!("# resolver {}: 2 flows", p.v4_b)),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_slice(&learned.stdout).unwrap();
    assert_eq!(v["policy"].as_str().unwrap(), text);
}
