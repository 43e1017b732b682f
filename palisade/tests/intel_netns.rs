//! End to end: threat-intelligence feeds with the real daemon.
//!
//! The guarded host (namespace A, daemon on its veth) reads a feed over HTTP from a Python
//! `http.server` on its loopback, refreshed every second. The feed lists the peer's
//! addresses (both families): pings from the peer are dropped in XDP, and so are the
//! answers to the guarded host's own pings. When the server loses the file, the last good
//! version keeps matching; when the feed no longer lists the peer, its traffic passes again
//! after the next refresh. A daemon killed with SIGKILL leaves the indicators enforced, and a
//! new one adopts them.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    path::Path,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use control::{GuardedHost, cli};
use palisade_common::{
    intel::{DIR_EGRESS, DIR_INGRESS, IS_DROPPED, IS_FEED_HITS},
    reason,
};
use support::netns::{NetnsPair, command_in, exec_in};

/// A Python HTTP server serving a directory on 127.0.0.1 in a namespace; killed on drop.
struct FeedServer(Child);

impl FeedServer {
    fn start(ns: &str, dir: &Path, port: u16) -> Self {
        let child = command_in(ns, "python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        let s = Self(child);
        let probe = format!(
            "import socket,sys\ns=socket.create_connection(('127.0.0.1',{port}),timeout=1)\n"
        );
        let start = Instant::now();
        while !exec_in(ns, "python3", &["-c", &probe]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the feed server never listened"
            );
            thread::sleep(Duration::from_millis(100));
        }
        s
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ping(ns: &str, addr: &str) -> bool {
    exec_in(ns, "ping", &["-c", "1", "-W", "1", addr])
        .status
        .success()
}

/// Waits up to `limit` for `f` to hold; how long it took.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn a_feed_over_http_drops_listed_peers_until_a_refresh_removes_them() {
    let pair = NetnsPair::new();
    let port = 18_000 + (std::process::id() % 1000) as u16;
    let url = format!("http://127.0.0.1:{port}/block.txt");
    let policy = format!(
        "[firewall]\ndefault = \"allow\"\n\n[intel]\nmax_ips = 1024\nmax_cidrs = 64\negress = true\n\n\
         [[intel.feed]]\nname = \"block\"\nsource = \"{url}\"\nformat = \"plain\"\n\
         action = \"drop\"\nrefresh = 1\n"
    );
    let mut host = GuardedHost::new("intel-netns", &policy, &pair.ns_a, &pair.if_a);
    let feeds = host.scratch.file("feeds");
    std::fs::create_dir_all(&feeds).unwrap();
    let feed = feeds.join("block.txt");
    std::fs::write(
        &feed,
        format!(
            "# the peer\n{}\nnot-a-valid entry!\n{}\n198.51.100.0/24\n",
            pair.v4_b, pair.v6_b
        ),
    )
    .unwrap();
    let _server = FeedServer::start(&pair.ns_a, &feeds, port);
    assert!(
        ping(&pair.ns_b, &pair.v4_a),
        "the peer reaches the host unguarded"
    );

    host.start();
    let stderr = host.daemon().stderr_now().join("\n");
    assert!(
        stderr.contains(&format!(
            "{url}:3: not an IP address, a CIDR or a domain name"
        )),
        "the bad line is reported with its place: {stderr}"
    );
    assert!(
        stderr.contains("intel: 2 addresses, 1 CIDRs"),
        "the feed is live: {stderr}"
    );

    let drops = || host.scratch.counter("REASON_STATS", reason::INTEL_DROP);
    assert!(!ping(&pair.ns_b, &pair.v4_a), "from a listed IPv4 address");
    assert!(!ping(&pair.ns_b, &pair.v6_a), "from a listed IPv6 address");
    assert!(
        !ping(&pair.ns_a, &pair.v4_b),
        "to a listed address (egress = true)"
    );
    assert!(
        host.scratch.counter("INTEL_STATS", DIR_EGRESS + IS_DROPPED) >= 1,
        "the host's ping to the listed peer is dropped as it leaves"
    );
    assert!(drops() >= 3, "dropped for intel-drop: {}", drops());
    assert!(
        host.scratch
            .counter("INTEL_STATS", DIR_INGRESS + IS_DROPPED)
            >= 3
    );
    assert!(host.scratch.counter("INTEL_STATS", IS_FEED_HITS) >= 3);

    // The daemon dies: the pinned programs and indicators go on dropping; a new daemon
    // adopts them and reads the feed again.
    host.take_daemon().kill9();
    assert!(
        !ping(&pair.ns_b, &pair.v4_a),
        "enforced while no daemon runs"
    );
    host.start();
    assert!(!ping(&pair.ns_b, &pair.v4_a), "and after the restart");

    // The server loses the file (404): the last good version stays live.
    std::fs::remove_file(&feed).unwrap();
    let kept = wait_for(Duration::from_secs(10), || {
        host.daemon()
            .stderr_now()
            .iter()
            .any(|l| l.contains("keeping the version read at"))
    });
    assert!(kept.is_some(), "{:?}", host.daemon().stderr_now());
    assert!(
        !ping(&pair.ns_b, &pair.v4_a),
        "still listed after a failed refresh"
    );

    // The feed no longer lists the peer: after the next refresh its traffic passes.
    std::fs::write(&feed, "192.0.2.99\n").unwrap();
    let written = Instant::now();
    let passed = wait_for(Duration::from_secs(15), || ping(&pair.ns_b, &pair.v4_a));
    assert!(
        passed.is_some(),
        "the peer passes once removed: {:?}",
        host.daemon().stderr_now()
    );
    eprintln!(
        "removal effective {:?} after the feed changed (refresh = 1 s)",
        written.elapsed()
    );
    assert!(
        wait_for(Duration::from_secs(5), || ping(&pair.ns_b, &pair.v6_a)).is_some(),
        "IPv6 too"
    );
    assert!(
        ping(&pair.ns_a, &pair.v4_b),
        "and the host's own pings are answered"
    );

    let out = cli(&host.socket(), &["stats", "--json"]);
    assert!(out.ok, "{out:?}");
    let stats: serde_json::Value = serde_json::from_str(&out.stdout).expect("stats JSON");
    let dropped = stats["counters"]["intel"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "ingress_dropped"))
        .and_then(|n| n["value"].as_u64());
    assert!(dropped.is_some_and(|n| n >= 3), "{stats}");
}

/// A feed server that answers its first request at once and every later one after
/// `delay_s` seconds, touching `slow_marker` when a slow answer begins; it serves
/// `dir/feed.txt` as it is when the answer is sent.
const SLOW_SERVER: &str = r#"
import http.server, os, sys, time
port, root, marker, delay = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
seen = [0]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        seen[0] += 1
        if seen[0] > 1:
            open(marker, "a").close()
            time.sleep(delay)
        body = open(os.path.join(root, "feed.txt"), "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

#[test]
fn a_slow_feed_server_does_not_hold_up_the_control_socket() {
    let pair = NetnsPair::new();
    let port = 19_000 + (std::process::id() % 1000) as u16;
    let policy = format!(
        "[firewall]\ndefault = \"allow\"\n\n[intel]\nmax_ips = 1024\nmax_cidrs = 64\n\n\
         [[intel.feed]]\nname = \"slow\"\nsource = \"http://127.0.0.1:{port}/feed.txt\"\n\
         action = \"drop\"\nrefresh = 1\n"
    );
    let mut host = GuardedHost::new("intel-slow", &policy, &pair.ns_a, &pair.if_a);
    let dir = host.scratch.file("slow-feed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("feed.txt"), "192.0.2.1\n").unwrap();
    let marker = host.scratch.file("slow-began");
    let _server = FeedServer(
        command_in(&pair.ns_a, "python3")
            .args(["-c", SLOW_SERVER, &port.to_string()])
            .arg(&dir)
            .arg(&marker)
            .arg("8")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the slow feed server"),
    );
    let probe =
        format!("import socket\nsocket.create_connection(('127.0.0.1',{port}),timeout=1)\n");
    assert!(
        wait_for(Duration::from_secs(20), || exec_in(
            &pair.ns_a,
            "python3",
            &["-c", &probe]
        )
        .status
        .success())
        .is_some(),
        "the feed server never listened"
    );

    // The first read (at start) is answered at once; the peer is not listed yet.
    host.start();
    assert!(ping(&pair.ns_b, &pair.v4_a), "not listed yet");
    // The next version lists the peer; the server holds every later answer for 8 s.
    std::fs::write(dir.join("feed.txt"), format!("{}\n", pair.v4_b)).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || marker.exists()).is_some(),
        "the daemon asked for the feed again"
    );
    // While the feed is being read, the control socket answers at once.
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        let start = Instant::now();
        let out = cli(&host.socket(), &["status"]);
        assert!(out.ok, "{out:?}");
        slowest = slowest.max(start.elapsed());
        thread::sleep(Duration::from_millis(400));
    }
    eprintln!("slowest `palisade status` during the 8 s read: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(3),
        "status waited for the feed server ({slowest:?})"
    );
    // When the answer comes, the loop swaps it in: the peer is dropped.
    assert!(
        wait_for(Duration::from_secs(20), || !ping(&pair.ns_b, &pair.v4_a)).is_some(),
        "the slow answer was applied: {:?}",
        host.daemon().stderr_now()
    );
}

/// `INTEL_CONTROL` as the daemon pinned it: the live generation and what each holds.
fn intel_control(host: &GuardedHost) -> palisade_common::intel::IntelControl {
    use aya::maps::{Array, Map, MapData};
    let data = MapData::from_pin(host.scratch.pinned_map("INTEL_CONTROL")).expect("pinned");
    let arr: Array<MapData, palisade_common::intel::IntelControl> =
        Array::try_from(Map::Array(data)).expect("array");
    arr.get(&0, 0).expect("read INTEL_CONTROL")
}

#[test]
fn intel_is_added_refused_and_removed_by_reload_without_a_restart() {
    let pair = NetnsPair::new();
    let base = "[firewall]\ndefault = \"allow\"\n";
    let mut host = GuardedHost::new("intel-reload", base, &pair.ns_a, &pair.if_a);
    let feed = host.scratch.file("peer.txt");
    std::fs::write(&feed, format!("{}\n", pair.v4_b)).unwrap();
    let with_feed = |path: &Path| {
        format!(
            "{base}\n[intel]\n\n[[intel.feed]]\nname = \"peer\"\nsource = \"{}\"\n\
             action = \"drop\"\nrefresh = 3600\n",
            path.display()
        )
    };
    host.start();
    assert!(ping(&pair.ns_b, &pair.v4_a), "no [intel] yet");
    assert_eq!(intel_control(&host).enabled, [0, 0]);

    // Added by a reload: the indicators go live in the maps made at start.
    host.reload(&with_feed(&feed));
    assert!(!ping(&pair.ns_b, &pair.v4_a), "the listed peer is dropped");
    assert!(host.scratch.counter("REASON_STATS", reason::INTEL_DROP) >= 1);
    let live = intel_control(&host);
    assert_ne!(live.enabled[(live.active & 1) as usize], 0);

    // A feed set the maps made at start cannot hold: the reload is refused, saying which
    // capacity, and the running indicators stay.
    let big = host.scratch.file("big.txt");
    let mut text = String::with_capacity(70_000 * 14);
    for i in 0..70_000u32 {
        let [_, b, c, d] = i.to_be_bytes();
        text.push_str(&format!("10.{b}.{c}.{}\n", d));
    }
    std::fs::write(&big, text).unwrap();
    std::fs::write(&host.policy, with_feed(&big)).unwrap();
    let r = cli(&host.socket(), &["reload"]);
    assert!(!r.ok, "{r:?}");
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(
        said.contains(&format!(
            "the feeds list 70000 addresses; the tables hold {}",
            palisade::intel::STANDBY_IPS
        )) && said.contains("when the daemon started; restart it"),
        "{said}"
    );
    assert_eq!(
        intel_control(&host),
        live,
        "the live generation is unchanged"
    );
    assert!(!ping(&pair.ns_b, &pair.v4_a), "the peer is still dropped");

    // Removed by a reload: both generations are emptied and the peer passes.
    host.reload(base);
    assert_eq!(intel_control(&host).enabled, [0, 0]);
    assert!(ping(&pair.ns_b, &pair.v4_a), "the peer passes again");
}
