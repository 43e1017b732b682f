//! End to end: `palisade top` in a detached 80x24 tmux terminal, watching a real daemon.
//!
//! The daemon guards namespace A: a logged rule drops UDP to port 9999, DNS names on a list
//! are dropped on ingress (queries from B) and on egress (queries sent by a process in a
//! throw-away cgroup, in A). The test sends that traffic, drives `top` with `tmux send-keys`
//! and reads the screen with `tmux capture-pane`: the figures match the daemon's counters
//! and events, a filter narrows the rows, pause freezes them, Enter shows a rule's detail, a
//! daemon that goes away is shown as disconnected until it is back, and `q` gives the
//! terminal back.
//!
//! With `PALISADE_TOP_SCREENSHOT=FILE.svg` the test also writes the screen, colours
//! included, as an SVG (the README's screenshot).

#[path = "support/ansi_svg.rs"]
mod ansi_svg;
#[path = "support/dns/cgroup.rs"]
#[allow(dead_code, reason = "only the throw-away cgroup is used here")]
mod cgroup;
#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use cgroup::TestCgroup;
use control::{BIN, Bg, GuardedHost, UDP_SEND, UDP_STREAM_UNTIL, cli_json, py, wait_for_streams};
use serde_json::Value;
use support::netns::NetnsPair;

/// The refresh interval `top` runs with.
const INTERVAL_MS: u64 = 250;
const RULE: &str = "block-udp-9999";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A tmux server of its own (`-L`), with one detached window running a command; the server
/// is killed on drop.
struct Tmux {
    server: String,
    target: String,
    /// The server's socket file, which `kill-server` leaves behind.
    socket: Option<std::path::PathBuf>,
}

impl Tmux {
    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.server]);
        c
    }

    fn start(width: u16, height: u16, command: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut t = Self {
            server: format!("palisade-top-{}-{n}", std::process::id()),
            target: format!("top{n}"),
            socket: None,
        };
        let out = t
            .tmux()
            .args(["-f", "/dev/null", "new-session", "-d", "-s", &t.target])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .env("TERM", "xterm-256color")
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = t
            .tmux()
            .args(["display-message", "-p", "#{socket_path}"])
            .output()
            .expect("tmux display-message");
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        t.socket = (!path.is_empty()).then(|| path.into());
        t
    }

    fn keys(&self, keys: &[&str]) {
        let out = self
            .tmux()
            .args(["send-keys", "-t", &self.target])
            .args(keys)
            .output()
            .expect("tmux send-keys");
        assert!(out.status.success(), "tmux send-keys {keys:?}");
    }

    /// Types text literally.
    fn type_text(&self, text: &str) {
        let out = self
            .tmux()
            .args(["send-keys", "-l", "-t", &self.target, text])
            .output()
            .expect("tmux send-keys");
        assert!(out.status.success(), "tmux send-keys -l {text:?}");
    }

    fn capture(&self, colours: bool) -> String {
        let mut c = self.tmux();
        c.args(["capture-pane", "-p", "-t", &self.target]);
        if colours {
            c.arg("-e");
        }
        let out = c.output().expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.capture(false)
    }

    /// Waits until the screen satisfies `f`; the last screen either way.
    fn wait(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the screen never showed {what}:\n{s}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").output();
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The fields of the table row whose key is `key` (keys may hold spaces: the fields are
/// what follows the key).
fn row(screen: &str, key: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|l| {
        l.strip_prefix(key)
            .filter(|rest| rest.starts_with(' '))
            .map(|rest| rest.split_whitespace().map(str::to_string).collect())
    })
}

/// The first count of a row.
fn first(screen: &str, key: &str) -> Option<u64> {
    row(screen, key).and_then(|f| f.first().and_then(|v| v.parse().ok()))
}

/// The number after `label ` in the totals line.
fn total(screen: &str, label: &str) -> Option<u64> {
    let line = screen.lines().find(|l| l.starts_with(" packets "))?;
    let i = line.find(&format!(" {label} "))?;
    line[i + label.len() + 2..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn stats(host: &GuardedHost) -> Value {
    cli_json(&host.socket(), &["stats", "--json"])
}

fn named(list: &Value, key: &str, name: &str, field: &str) -> u64 {
    list.as_array()
        .and_then(|a| a.iter().find(|v| v[key] == name))
        .and_then(|v| v[field].as_u64())
        .unwrap_or(0)
}

fn rule_packets(s: &Value) -> u64 {
    named(&s["counters"]["rules"], "rule", RULE, "packets")
}

/// Sends one A query for each name to `server`:53 from one process, ignoring refusals
/// (`EPERM` on egress) and never waiting for answers.
const QUERIES: &str = r"
import socket, struct, sys
server = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i, name in enumerate(sys.argv[2:]):
    q = struct.pack('>HHHHHH', i, 0x0100, 1, 0, 0, 0)
    q += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0'
    q += struct.pack('>HH', 1, 1)
    try:
        s.sendto(q, (server, 53))
    except OSError:
        pass
";

fn policy(cg: &TestCgroup) -> String {
    format!(
        r#"[firewall]
default = "allow"

[[firewall.rule]]
name = "{RULE}"
action = "drop"
proto = "udp"
dport = 9999
log = true

[dns]
ports = [53]

[dns.ingress]
mode = "blocklist"
action = "drop"
lists = ["ads"]
log_allowed = true

[dns.egress]
mode = "blocklist"
lists = ["ads"]
cgroups = ["{}"]

[dns.lists.ads]
names = ["ads.example.com", "tracker.example.net"]

[conntrack]
enabled = true
"#,
        cg.path.display()
    )
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one run of top, driven from start to quit"
)]
fn top_shows_the_daemons_figures_and_filters_pauses_drills_in_and_quits() {
    let pair = NetnsPair::new();
    let cg = TestCgroup::new();
    let mut host = GuardedHost::new("top-tmux", &policy(&cg), &pair.ns_a, &pair.if_a);
    host.start();
    let socket = host.socket();
    let command = format!(
        "{BIN} --socket {} top --interval {INTERVAL_MS}; echo top exited $?; sleep 600",
        socket.display()
    );
    let tmux = Tmux::start(80, 24, &command);
    tmux.wait("the header", |s| s.contains("palisade top"));
    wait_for_streams(&socket, 1);

    // Dropped by the rule (and logged): 50 datagrams from B.
    py(&pair, &pair.ns_b, UDP_SEND, &[&pair.v4_a, "9999", "50"]);
    // Queries from B for listed names, dropped on ingress: 3 + 2.
    let names_in = [
        "ads.example.com",
        "ads.example.com",
        "ads.example.com",
        "tracker.example.net",
        "tracker.example.net",
    ];
    let mut args = vec![pair.v4_a.as_str()];
    args.extend(names_in);
    py(&pair, &pair.ns_b, QUERIES, &args);
    // Queries sent by a process in the cgroup, refused on egress: 4 for one name.
    let out = cg
        .command_in_ns(
            &pair.ns_a,
            &[
                "python3",
                "-c",
                QUERIES,
                &pair.v4_b,
                "ads.example.com",
                "ads.example.com",
                "ads.example.com",
                "ads.example.com",
            ],
        )
        .output()
        .expect("run the egress client");
    assert!(out.status.success(), "{out:?}");

    // Rules: the rule's packets and the dropped total are the daemon's.
    tmux.wait("the rule's 50 drops", |s| first(s, RULE) == Some(50));
    let st = stats(&host);
    assert_eq!(rule_packets(&st), 50, "{st}");
    let dropped = named(&st["counters"]["global"], "name", "dropped", "value");
    let queries: u64 = st["counters"]["dns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["name"] == "queries")
        .map(|d| d["value"].as_u64().unwrap())
        .sum();
    assert_eq!(queries, 9, "{st}");
    let s = tmux.wait("the daemon's dropped and DNS totals", |s| {
        total(s, "dropped") == Some(dropped) && total(s, "dns") == Some(queries)
    });
    let r = row(&s, RULE).unwrap();
    assert_eq!(r.last().map(String::as_str), Some("drop"), "{s}");
    assert!(s.lines().any(|l| l.starts_with(" packets/s")), "{s}");
    // The tracked flows' share of the tables the policy sized (`[conntrack]` defaults).
    assert!(s.contains("conntrack ") && s.contains("% full)"), "{s}");

    // Drops by reason: every reason that counted, with the daemon's count.
    tmux.keys(&["2"]);
    let s = tmux.wait("the drop reasons", |s| s.contains("DROP REASON"));
    for r in st["counters"]["reasons"].as_array().unwrap() {
        let v = r["value"].as_u64().unwrap();
        if v > 0 {
            assert_eq!(first(&s, r["name"].as_str().unwrap()), Some(v), "{r}\n{s}");
        }
    }
    assert_eq!(first(&s, "rule"), Some(50), "{s}");

    // Talkers: B's 50 logged drops and 5 refused queries, all blocked.
    tmux.keys(&["3"]);
    let s = tmux.wait("B as a talker", |s| first(s, &pair.v4_b) == Some(55));
    assert_eq!(row(&s, &pair.v4_b).unwrap()[1], "55", "{s}");

    // Names (dotted, as events write them): 3 + 4 queries for ads.example.com, 2 for
    // tracker.example.net.
    tmux.keys(&["4"]);
    let s = tmux.wait("the blocked names", |s| {
        first(s, "ads.example.com.") == Some(7) && first(s, "tracker.example.net.") == Some(2)
    });
    assert_eq!(row(&s, "ads.example.com.").unwrap()[1], "7", "{s}");

    // A filter narrows the rows; Esc clears it.
    tmux.type_text("/ads");
    tmux.keys(&["Enter"]);
    let s = tmux.wait("the filtered names", |s| {
        s.contains("/ads") && !s.contains("tracker.example.net")
    });
    assert_eq!(first(&s, "ads.example.com."), Some(7), "{s}");
    tmux.keys(&["Escape"]);
    tmux.wait("both names again", |s| s.contains("tracker.example.net"));

    // Processes and cgroups: the one egress client, by pid and by cgroup id.
    tmux.keys(&["5"]);
    let s = tmux.wait("the egress client", |s| s.contains("python3 ("));
    let line = s.lines().find(|l| l.starts_with("python3 (")).unwrap();
    let fields: Vec<&str> = line
        .split(") ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&fields[..2], ["4", "4"], "{s}");
    tmux.keys(&["6"]);
    let s = tmux.wait("the cgroup", |s| first(s, &cg.id().to_string()).is_some());
    assert_eq!(
        row(&s, &cg.id().to_string()).unwrap()[..2],
        ["4", "4"],
        "{s}"
    );

    // Pause freezes the rows while the daemon counts on.
    tmux.keys(&["1"]);
    tmux.wait("the rules", |s| {
        s.contains("RULE") && first(s, RULE) == Some(50)
    });
    tmux.keys(&["p"]);
    tmux.wait("PAUSED", |s| s.contains("PAUSED"));
    py(&pair, &pair.ns_b, UDP_SEND, &[&pair.v4_a, "9999", "20"]);
    assert_eq!(rule_packets(&stats(&host)), 70);
    thread::sleep(Duration::from_millis(INTERVAL_MS * 6));
    let s = tmux.screen();
    assert_eq!(first(&s, RULE), Some(50), "paused:\n{s}");
    tmux.keys(&["Space"]);
    let s = tmux.wait("the rule's 70 drops", |s| first(s, RULE) == Some(70));
    assert!(!s.contains("PAUSED"), "{s}");

    // Enter drills into the selected rule: its conditions and its recent events.
    tmux.type_text("/block");
    tmux.keys(&["Enter", "Enter"]);
    let s = tmux.wait("the rule's detail", |s| s.contains("matches:"));
    let m = s.lines().find(|l| l.contains("matches:")).unwrap();
    assert!(m.contains("udp") && m.contains("9999"), "{s}");
    assert!(s.contains(&format!("Rules {RULE}")), "{s}");
    assert!(
        s.contains(&format!("firewall drop {RULE} {}", pair.v4_b)),
        "{s}"
    );
    assert!(s.contains("packets 70"), "{s}");
    // Two escapes sent at once read as one Alt-Escape: one at a time.
    tmux.keys(&["Escape"]);
    tmux.wait("the table again", |s| s.contains("PACKETS"));
    tmux.keys(&["Escape"]);
    tmux.wait("no filter", |s| !s.contains("/block"));

    if let Ok(path) = std::env::var("PALISADE_TOP_SCREENSHOT") {
        // Steady drops and a changing mix of names for a few seconds, then the names view
        // as it stands.
        let stop = host.scratch.file("stop-stream");
        let _stream = Bg::start(
            &pair,
            &pair.ns_b,
            UDP_STREAM_UNTIL,
            &[&pair.v4_a, stop.to_str().unwrap(), "30", "0.004", "9999"],
        );
        tmux.keys(&["4"]);
        let names = [
            "www.example.org",
            "ads.example.com",
            "api.example.org",
            "tracker.example.net",
            "cdn.example.net",
            "mail.example.com",
            "ads.example.com",
            "updates.example.org",
        ];
        for i in 0..30 {
            let mut q = vec![pair.v4_a.as_str()];
            q.extend(names.iter().cycle().skip(i % 5).take(1 + (i * 7) % 11));
            py(&pair, &pair.ns_b, QUERIES, &q);
            thread::sleep(Duration::from_millis(INTERVAL_MS / 2));
        }
        let svg = ansi_svg::render(&tmux.capture(true), 80, "palisade top in 80x24");
        std::fs::write(&path, svg).unwrap();
        std::fs::write(&stop, "").unwrap();
        tmux.keys(&["1"]);
    }

    // A daemon that goes away is shown, not fatal; its return is picked up.
    host.take_daemon().kill9();
    tmux.wait("the disconnection", |s| {
        s.contains("disconnected, retrying")
    });
    host.start();
    tmux.wait("the reconnection", |s| {
        !s.contains("disconnected") && s.contains("RULE")
    });

    // q quits and gives the terminal back (the shell's line is on the normal screen).
    tmux.keys(&["q"]);
    let s = tmux.wait("top's exit", |s| s.contains("top exited"));
    assert!(s.contains("top exited 0"), "{s}");
    assert!(
        !s.contains("palisade top"),
        "the alternate screen was left:\n{s}"
    );
}

#[test]
fn once_prints_one_frame_and_a_missing_daemon_is_an_error() {
    let pair = NetnsPair::new();
    let cg = TestCgroup::new();
    let mut host = GuardedHost::new("top-once", &policy(&cg), &pair.ns_a, &pair.if_a);
    host.start();
    py(&pair, &pair.ns_b, UDP_SEND, &[&pair.v4_a, "9999", "3"]);
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(host.socket())
        .args(["top", "--once", "--interval", "200", "--width", "100"])
        .args(["--height", "30"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 30, "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
    assert_eq!(first(&text, RULE), Some(3), "{text}");
    assert_eq!(
        total(&text, "dropped"),
        Some(named(
            &stats(&host)["counters"]["global"],
            "name",
            "dropped",
            "value"
        )),
        "{text}"
    );

    let gone = host.scratch.file("no-daemon.sock");
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(&gone)
        .args(["top", "--once"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no palisade daemon"),
        "{out:?}"
    );
}

#[test]
fn shell_completions_know_top_and_its_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let command = match shell {
            "bash" => "palisade__subcmd__top",
            "zsh" => "(top)",
            _ => "using_subcommand top",
        };
        assert!(text.contains(command), "{shell} completions lack top");
        for word in ["interval", "once", "width", "height"] {
            // fish writes long flags as `-l NAME`, the others as `--NAME`.
            let flag = if shell == "fish" {
                format!("-l {word}")
            } else {
                format!("--{word}")
            };
            assert!(text.contains(&flag), "{shell} completions lack {flag}");
        }
    }
}
