//! DLP under `palisade run`: a policy with `[dlp]` has the daemon run the probes.
//!
//! - Processes started after the daemon are covered: a secret written by `curl` and by a
//!   Python `ssl` client to a local TLS server reaches `palisade events --kind dlp` with the
//!   flow, and `palisade stats` and the metrics endpoint count it (per detector).
//! - A process whose libssl is another file, visible only in its own mount namespace, is
//!   probed after its exec record (`sched:sched_process_exec`), and its secret (written once
//!   the library is reported probed) is caught; the exec-to-probe time, from the kernel's
//!   exec timestamp, is printed and bounded.
//! - A GnuTLS client, a statically linked Go program (`kubectl`, crypto/tls) and a
//!   statically linked rustls program (`rustup`, the toolchain installer, sending its
//!   ClientHello to a local port that never answers) are `dlp` events of their own:
//!   uncovered, with the reason.
//! - A reload without `[dlp]` stops the probes: the counters go away.
//!
//! Needs root, `curl`, `openssl`, `python3`, `unshare`, `gnutls-cli`, `kubectl` and `rustup`.
//! `cargo test --release -p palisade --test dlp_daemon -- --test-threads=1`.

#[path = "support/control.rs"]
mod control;
mod support;
#[path = "support/tls_server.rs"]
mod tls_server;

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use control::{BgCli, GuardedHost, cli, cli_json, eventually, sample, wait_for_streams};
use support::netns::{NetnsPair, command_in};

/// A TLS server on the host's loopback that reads each connection to its end.
const SERVER: &str = r#"
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[2], sys.argv[3])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", int(sys.argv[1]))); ls.listen(64)
def serve(c):
    try:
        s = ctx.wrap_socket(c, server_side=True); s.settimeout(3)
        while s.recv(65536): pass
    except Exception:
        pass
print("ready", flush=True)
while True:
    c, _ = ls.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Writes `argv[2]` then `argv[3]` (100 ms apart) on one TLS connection to `argv[1]`; with
/// `argv[4]`, not before that file exists (at most 60 s): a library of its own is probed
/// after its exec, and what it writes before is not seen.
const CLIENT: &str = r#"
import os, socket, ssl, sys, time
t = time.time()
while len(sys.argv) > 4 and not os.path.exists(sys.argv[4]) and time.time() - t < 60:
    time.sleep(0.01)
c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
s = c.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
s.write(sys.argv[2].encode()); time.sleep(0.1); s.write(sys.argv[3].encode())
time.sleep(0.2); s.close()
"#;

const PORT: u16 = 18_441;

struct Server(Child);

impl Server {
    fn start(dir: &Path) -> Self {
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        tls_server::prepare(dir, &key, SERVER, CLIENT);
        let port = PORT.to_string();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        Self(tls_server::start(
            dir,
            &[port.as_ref(), cert.as_ref(), key.as_ref()],
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `rustup` the toolchain was installed with: on `PATH`, else under `CARGO_HOME` or
/// `~/.cargo/bin`.
fn rustup_path() -> std::path::PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("rustup"))
            .find(|f| f.is_file())
    });
    on_path
        .or_else(|| {
            let home = std::env::var_os("CARGO_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
            Some(home.join("bin/rustup")).filter(|f| f.is_file())
        })
        .expect("rustup (a statically linked rustls program) is installed with the toolchain")
}

fn events_of(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn counter(stats: &serde_json::Value, name: &str) -> Option<u64> {
    stats["counters"]["dlp"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["value"].as_u64())
}

#[test]
fn daemon_runs_the_probes_and_reports_matches_coverage_and_counters() {
    let pair = NetnsPair::new();
    let metrics = format!("127.0.0.1:{}", 19_500 + std::process::id() % 400);
    let mut host = GuardedHost::new(
        "dlp-daemon",
        "[dlp]\ndetectors = [\"card\", \"cloud_key\"]\n",
        &pair.ns_a,
        &pair.if_a,
    );
    let dir = host.scratch.file("tls");
    fs::create_dir_all(&dir).unwrap();
    let _server = Server::start(&dir);
    host.start_with(&["--metrics", &metrics]);
    let events = BgCli::start(&host.socket(), &["events", "--kind", "dlp", "--json"]);
    wait_for_streams(&host.socket(), 1);

    // Started after the daemon: curl (SSL_write) and Python (SSL_write_ex, the key split
    // over two writes).
    let curl = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "--max-time", "5", "--data"])
        .arg("card=4111 1111 1111 1111")
        .arg(format!("https://127.0.0.1:{PORT}/"))
        .spawn()
        .unwrap();
    let py = Command::new("python3")
        .arg(dir.join("client.py"))
        .args([&PORT.to_string(), "key=AKIAIOSFO", "DNN7EXAMPLE&x=1"])
        .spawn()
        .unwrap();
    let (curl_pid, py_pid) = (curl.id(), py.id());
    // Its own libssl, in its own mount namespace (as in a container): probed on its exec.
    let lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
    let copy = dir.join("libssl.so.3");
    fs::copy(lib, &copy).unwrap();
    let go = dir.join("go");
    let script = format!(
        "mount --bind {} {lib} && exec python3 {} {PORT} 'card=5500-0000-0000-0004' '&y=2' {}",
        copy.display(),
        dir.join("client.py").display(),
        go.display(),
    );
    let ns_client = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let ns_pid = ns_client.id();
    let mut gnutls = Command::new("gnutls-cli")
        .args(["--insecure", "-p", &PORT.to_string(), "127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let gnutls_pid = gnutls.id();
    // Go's crypto/tls, statically linked (kubectl): uncovered, never silently.
    let mut kubectl = Command::new("kubectl")
        .args(["--server", &format!("https://127.0.0.1:{PORT}")])
        .args([
            "--insecure-skip-tls-verify",
            "--request-timeout=8s",
            "get",
            "pods",
        ])
        .env("HOME", &dir)
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let kubectl_pid = kubectl.id();
    // rustls, statically linked (rustup): its ClientHello goes to a port that accepts the
    // connection and never reads, so the process stays in the handshake until killed. Both
    // dist and update roots point there: nothing leaves the host.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("https://{}", silent.local_addr().unwrap());
    let mut rustup = Command::new(rustup_path())
        .arg("check")
        .env("RUSTUP_DIST_SERVER", &silent_url)
        .env("RUSTUP_UPDATE_ROOT", format!("{silent_url}/rustup"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rustup_pid = rustup.id();
    // The namespaced client writes once its library is probed (or after 20 s): whether its
    // secret is caught does not hang on how fast a loaded machine schedules the daemon.
    eventually(Duration::from_secs(20), || {
        events_of(&events.lines.lock().unwrap())
            .iter()
            .any(|e| e["event"] == "dlp-probed" && e["pid"] == ns_pid)
    });
    fs::write(&go, b"").unwrap();
    // The server never answers: curl ends on its --max-time; its write went out before.
    let mut curl = curl;
    let _ = curl.wait();
    for mut c in [py, ns_client] {
        assert!(c.wait().unwrap().success());
    }
    let want = |evs: &[serde_json::Value]| {
        let m = |pid: u32, kind: &str| {
            evs.iter()
                .any(|e| e["event"] == "dlp-match" && e["pid"] == pid && e["secret"] == kind)
        };
        m(curl_pid, "visa")
            && m(py_pid, "aws-access-key-id")
            && m(ns_pid, "mastercard")
            && [gnutls_pid, kubectl_pid, rustup_pid].iter().all(|&pid| {
                evs.iter()
                    .any(|e| e["event"] == "dlp-uncovered" && e["pid"] == pid)
            })
    };
    let ok = eventually(Duration::from_secs(10), || {
        want(&events_of(&events.lines.lock().unwrap()))
    });
    for c in [&mut gnutls, &mut kubectl, &mut rustup] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let lines = events.finish(Duration::from_millis(200));
    let evs = events_of(&lines);
    assert!(ok, "missing events: {lines:#?}");
    for e in &evs {
        assert_eq!(e["kind"], "dlp", "{e}");
    }
    let card = evs
        .iter()
        .find(|e| e["event"] == "dlp-match" && e["pid"] == curl_pid)
        .unwrap();
    assert_eq!(card["verdict"], "alert");
    assert_eq!(card["detector"], "card");
    assert_eq!(card["excerpt"], "4111 **** **** 1111");
    assert_eq!(card["comm"], "curl");
    assert_eq!(card["direction"], "write");
    assert_eq!(card["flow"]["dst"], "127.0.0.1");
    assert_eq!(card["flow"]["dport"], u64::from(PORT));
    let key = evs
        .iter()
        .find(|e| e["event"] == "dlp-match" && e["pid"] == py_pid)
        .unwrap();
    assert_eq!(key["excerpt"], "AKIA**************LE");
    assert_eq!(key["flow"]["dport"], u64::from(PORT));
    let probed = evs
        .iter()
        .find(|e| e["event"] == "dlp-probed" && e["pid"] == ns_pid)
        .unwrap_or_else(|| panic!("the namespaced libssl was not probed: {lines:#?}"));
    assert_eq!(probed["verdict"], "audit");
    // Probed after its exec record was read: `exec_to_probe_ms` runs from the kernel's exec
    // timestamp. Tens of ms on an idle machine (the issue asks for 1 s); the bound holds on
    // the 2 shared, loaded cores the suite runs on, and a library probed without its exec
    // record fails.
    let ms = probed["exec_to_probe_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("probed without its exec record: {probed}"));
    eprintln!("exec to probe: {ms} ms ({})", probed["library"]);
    assert!(ms < 5000.0, "probed {ms} ms after exec");
    let unc = evs
        .iter()
        .find(|e| e["event"] == "dlp-uncovered" && e["pid"] == gnutls_pid)
        .unwrap();
    assert_eq!(unc["verdict"], "alert");
    assert!(unc["reason"].as_str().unwrap().contains("GnuTLS"), "{unc}");
    let go = evs
        .iter()
        .find(|e| e["event"] == "dlp-uncovered" && e["pid"] == kubectl_pid)
        .unwrap();
    assert_eq!(go["comm"], "kubectl");
    assert!(
        go["reason"].as_str().unwrap().contains("Go crypto/tls"),
        "{go}"
    );
    let rs = evs
        .iter()
        .find(|e| e["event"] == "dlp-uncovered" && e["pid"] == rustup_pid)
        .unwrap();
    assert_eq!(rs["verdict"], "alert");
    assert!(rs["reason"].as_str().unwrap().contains("rustls"), "{rs}");
    drop(silent);
    // No secret in clear.
    let all = lines.join("\n");
    assert!(!all.contains("4111 1111 1111 1111") && !all.contains("AKIAIOSFODNN7EXAMPLE"));

    // Counters: `palisade stats` (published every 250 ms) and the metrics endpoint.
    let ok = eventually(Duration::from_secs(3), || {
        let s = cli_json(&host.socket(), &["stats", "--json"]);
        counter(&s, "matches_card").unwrap_or(0) >= 2
            && counter(&s, "matches_cloud_key").unwrap_or(0) >= 1
    });
    let stats = cli_json(&host.socket(), &["stats", "--json"]);
    assert!(ok, "{stats}");
    assert!(counter(&stats, "records").unwrap() >= 4, "{stats}");
    assert!(counter(&stats, "calls").unwrap() >= 4, "{stats}");
    assert_eq!(counter(&stats, "lost"), Some(0), "{stats}");
    assert!(counter(&stats, "uncovered").unwrap() >= 2, "{stats}");
    assert!(counter(&stats, "libraries_probed").unwrap() >= 2, "{stats}");
    assert!(counter(&stats, "execs").unwrap() >= 3, "{stats}");
    assert!(counter(&stats, "truncated_calls").is_some(), "{stats}");
    let text = cli(&host.socket(), &["stats"]);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("dlp: ") && l.contains("matches_card")),
        "{text:?}"
    );
    let out = command_in(&pair.ns_a, "curl")
        .args(["-s", &format!("http://{metrics}/metrics")])
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&out.stdout);
    assert!(
        sample(&m, "palisade_dlp_matches_total{detector=\"card\"}").unwrap_or(0) >= 2,
        "{m}"
    );
    assert_eq!(sample(&m, "palisade_dlp_total{event=\"lost\"}"), Some(0));
    assert!(sample(&m, "palisade_dlp_total{event=\"uncovered\"}").unwrap_or(0) >= 1);

    // The probes are the daemon's own programs, pinned beside its firewall (one object:
    // the counters above and `DLP_RESET` are the pinned maps).
    let pinned = control::pinned_firewall(&host.scratch.pin_dir());
    let progs = pinned.parent().unwrap();
    for name in palisade::dlp::probe::PROGRAMS {
        assert!(
            progs.join(name).exists(),
            "{name} is not pinned in {}",
            progs.display()
        );
    }

    // Without [dlp] the probes go: no counters.
    host.reload("[firewall]\ndefault = \"allow\"\n");
    let stats = cli_json(&host.socket(), &["stats", "--json"]);
    assert!(
        stats["counters"]["dlp"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{stats}"
    );
}
