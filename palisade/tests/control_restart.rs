//! Restarting the daemon without a gap: pinned state outlives `kill -9`, a restarted daemon
//! adopts it, a kill in the middle of a reload leaves one whole policy, and pins of an
//! incompatible build are replaced without letting a packet through.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use control::{Bg, BgCli, Proc, Scratch, cli, cli_json, run_pinned};
use palisade::craft;
use rand::Rng as _;
use support::netns::NetnsPair;

const GUARD: &str = r#"
[[firewall.rule]]
name = "drop-9100"
action = "drop"
proto = "udp"
dport = 9100

[[firewall.rule]]
name = "count-9200"
action = "allow"
proto = "udp"
dport = 9200

[dns.ingress]
mode = "blocklist"
action = "drop"
lists = ["bad"]

[dns.lists.bad]
names = ["blocked.example"]
"#;

fn daemon(pair: &NetnsPair, scratch: &Scratch, policy: &Path) -> Proc {
    Proc::start(
        pair,
        &pair.ns_b,
        &scratch.socket(),
        &[
            "--config",
            policy.to_str().unwrap(),
            "--iface",
            &pair.if_b,
            "--pin-dir",
            scratch.pin_dir().to_str().unwrap(),
            "--quiet",
        ],
    )
}

/// Continuous traffic from A to B: port 9100 (dropped by the policy) and 9200 (allowed).
struct Stream {
    rx: Bg,
    tx: Bg,
    stop: std::path::PathBuf,
}

impl Stream {
    fn start(pair: &NetnsPair, scratch: &Scratch, tag: &str) -> Self {
        let stop = scratch.file(&format!("stop-{tag}"));
        let _ = std::fs::remove_file(&stop);
        let s = stop.to_str().unwrap();
        let rx = Bg::start(
            pair,
            &pair.ns_b,
            control::UDP_COUNT_UNTIL,
            &[&pair.v4_b, s, "120", "9100", "9200"],
        )
        .ready();
        let tx = Bg::start(
            pair,
            &pair.ns_a,
            control::UDP_STREAM_UNTIL,
            &[&pair.v4_b, s, "120", "0.002", "9100", "9200"],
        );
        thread::sleep(Duration::from_millis(200));
        Self { rx, tx, stop }
    }

    /// Stops the traffic; returns (rounds sent, delivered to 9100, delivered to 9200).
    fn finish(self) -> (u64, u64, u64) {
        std::fs::write(&self.stop, b"").unwrap();
        let sent: u64 = self
            .tx
            .finish()
            .last()
            .and_then(|l| l.parse().ok())
            .expect("sender count");
        let lines = self.rx.finish();
        let count = |port: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(port).and_then(|r| r.trim().parse().ok()))
                .expect("receiver count")
        };
        (sent, count("9100 "), count("9200 "))
    }
}

#[test]
fn restart_adopts_the_pins_without_letting_a_packet_through() {
    let pair = NetnsPair::new();
    let scratch = Scratch::new("ctl-restart");
    let policy = scratch.file("policy.toml");
    std::fs::write(&policy, GUARD).unwrap();
    let socket = scratch.socket();
    let pin_dir = scratch.pin_dir();
    let mut d = daemon(&pair, &scratch, &policy);

    // DNS queries, for the inspector the firewall reaches through the pinned tail-call table.
    let dns = |name: &str| {
        craft::Frame::dns_udp(
            &pair.v4_a,
            &pair.v4_b,
            40000,
            &craft::DnsQuery::name(name, 1).build(),
        )
        .build()
    };
    let queries = [dns("blocked.example"), dns("fine.example")];
    let prog = control::pinned_firewall(&pin_dir);
    assert_eq!(run_pinned(&prog, &queries), vec![1, 2]);

    // kill -9 and restart, three times, under continuous traffic.
    let stream = Stream::start(&pair, &scratch, "adopt");
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(300));
        d.kill9();
        // No daemon at all for a moment: the pinned link and maps keep enforcing, and the
        // tail-call table still holds the DNS inspector (its pin keeps the entries).
        assert_eq!(
            run_pinned(&prog, &queries),
            vec![1, 2],
            "DNS policy with no daemon running"
        );
        thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        d = daemon(&pair, &scratch, &policy);
        eprintln!("adopting restart took {:?}", started.elapsed());
        let err = d.stderr_now();
        assert!(
            err.iter()
                .any(|l| l.contains(&format!("adopted the pinned link on {}", pair.if_b))),
            "{err:?}"
        );
        let st = cli_json(&socket, &["status", "--json"]);
        assert_eq!(st["interfaces"][0]["origin"], "adopted", "{st}");
        assert_eq!(
            (st["adopted"].as_bool(), st["programs_reused"].as_bool()),
            (Some(true), Some(true)),
            "{st}"
        );
    }
    thread::sleep(Duration::from_millis(300));
    let (sent, dropped_port, allowed_port) = stream.finish();
    assert!(sent > 500, "the stream ran: {sent} rounds");
    assert_eq!(
        dropped_port, 0,
        "no packet to the dropped port got through during the restarts ({sent} sent)"
    );
    // Allowed traffic flowed throughout (a receiver starved of CPU may lose a few).
    assert!(
        allowed_port <= sent && allowed_port + sent / 100 >= sent,
        "{allowed_port} of {sent} allowed packets arrived"
    );

    // Pins of an incompatible build: the old state is renamed to a layout this build does
    // not know; the restarted daemon builds its own state, moves the link over with a link
    // update, then removes the old pins. Still no packet through.
    d.kill9();
    let layouts: Vec<_> = std::fs::read_dir(&pin_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert_eq!(layouts.len(), 1, "{layouts:?}");
    let current = layouts[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    std::fs::rename(&layouts[0], pin_dir.join("layout-00000000deadbeef")).unwrap();
    let stream = Stream::start(&pair, &scratch, "replace");
    thread::sleep(Duration::from_millis(300));
    d = daemon(&pair, &scratch, &policy);
    let err = d.stderr_now();
    assert!(
        err.iter()
            .any(|l| l.contains("moved the pinned link on")
                && l.contains("from an incompatible build")),
        "{err:?}"
    );
    assert!(
        err.iter().any(|l| l.contains(
            "removed the pinned state of an incompatible build (layout-00000000deadbeef)"
        )),
        "{err:?}"
    );
    thread::sleep(Duration::from_millis(300));
    let (sent, dropped_port, allowed_port) = stream.finish();
    assert_eq!(
        dropped_port, 0,
        "no packet through while the state was replaced ({sent} sent)"
    );
    assert!(
        allowed_port <= sent && allowed_port + sent / 100 >= sent,
        "{allowed_port} of {sent} allowed packets arrived"
    );
    let names: Vec<String> = std::fs::read_dir(&pin_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![current], "only this build's layout is left");
    assert_eq!(
        cli_json(&socket, &["status", "--json"])["interfaces"][0]["origin"],
        "moved"
    );

    // After kill -9, `palisade unload` works without a daemon: everything is detached.
    d.kill9();
    let u = cli(&socket, &["unload", "--pin-dir", pin_dir.to_str().unwrap()]);
    assert!(
        u.ok && u.stdout.contains(&format!("detached from {}", pair.if_b)),
        "{u:?}"
    );
    assert!(!pin_dir.exists());
    assert_eq!(
        control::delivered(&pair, &scratch, 9100, 5),
        5,
        "nothing filters any more"
    );
    let u = cli(&socket, &["unload", "--pin-dir", pin_dir.to_str().unwrap()]);
    assert!(u.ok && u.stdout.contains("nothing pinned"), "{u:?}");
}

fn policy_dropping(ports: std::ops::RangeInclusive<u16>) -> String {
    let mut p = String::from("[firewall]\ndefault = \"allow\"\n");
    for port in ports {
        p.push_str(&format!("\n[[firewall.rule]]\nname = \"drop-{port}\"\naction = \"drop\"\nproto = \"udp\"\ndport = {port}\n"));
    }
    p
}

#[test]
fn kill_9_in_the_middle_of_reloads_leaves_the_old_or_the_new_policy() {
    const ROUNDS: usize = 30;
    let pair = NetnsPair::new();
    let scratch = Scratch::new("ctl-kill");
    let policy = scratch.file("policy.toml");
    let a = policy_dropping(9001..=9005);
    let b = policy_dropping(9006..=9010);
    // What the pinned program does with UDP to 9001..=9010 under each policy.
    let expect_a: Vec<u32> = (9001..=9010)
        .map(|p| if p <= 9005 { 1 } else { 2 })
        .collect();
    let expect_b: Vec<u32> = (9001..=9010)
        .map(|p| if p <= 9005 { 2 } else { 1 })
        .collect();
    let frames: Vec<Vec<u8>> = (9001..=9010)
        .map(|port| craft::Frame::udp(&pair.v4_a, &pair.v4_b, 40000, port).build())
        .collect();
    std::fs::write(&policy, &a).unwrap();
    let socket = scratch.socket();
    let mut d = daemon(&pair, &scratch, &policy);
    let prog = control::pinned_firewall(&scratch.pin_dir());
    assert_eq!(run_pinned(&prog, &frames), expect_a);

    // How long a reload takes here, measured the way the rounds start one (a `palisade
    // reload` process), to spread the kills over it.
    let mut times: Vec<Duration> = (0..3)
        .map(|_| {
            let t = Instant::now();
            let lines = BgCli::start(&socket, &["reload"]).finish(Duration::from_secs(30));
            assert!(lines.iter().any(|l| l.starts_with("reloaded")), "{lines:?}");
            t.elapsed()
        })
        .collect();
    times.sort();
    let reload = times[1];
    eprintln!("a reload takes about {reload:?}");
    // The kill comes at a random point within a window that widens after a kill that left
    // the old policy and narrows after one that left the new: the kills gather around the
    // switch, on both sides of it, however fast this machine is today.
    let mut window = reload.as_micros() as f64 * 1.5;

    let mut rng = rand::thread_rng();
    let (mut cur, mut cur_expect) = (a.clone(), expect_a.clone());
    let (mut old, mut new) = (0, 0);
    for round in 0..ROUNDS {
        let (next, next_expect) = if cur == a {
            (b.clone(), expect_b.clone())
        } else {
            (a.clone(), expect_a.clone())
        };
        std::fs::write(&policy, &next).unwrap();
        let client = BgCli::start(&socket, &["reload"]);
        let delay = rng.gen_range(0..=(window as u64).max(1));
        thread::sleep(Duration::from_micros(delay));
        d.kill9();
        drop(client);
        let got = run_pinned(&prog, &frames);
        if got == cur_expect {
            old += 1;
            window *= 1.25;
        } else if got == next_expect {
            new += 1;
            window *= 0.8;
        } else {
            panic!(
                "round {round}: killed {delay} µs into a reload, the pinned state enforces neither policy: {got:?}"
            );
        }
        // The restarted daemon adopts the pins and installs the file (now `next`).
        d = daemon(&pair, &scratch, &policy);
        assert_eq!(
            run_pinned(&prog, &frames),
            next_expect,
            "round {round}: after the restart"
        );
        (cur, cur_expect) = (next, next_expect);
    }
    eprintln!("{ROUNDS} kills during a reload: {old} left the old policy, {new} the new one");
    assert!(
        old > 0 && new > 0,
        "the kills should land on both sides of the switch: {old} old, {new} new"
    );
    let u = cli(&socket, &["unload"]);
    assert!(u.ok, "{u:?}");
    assert!(d.wait(Duration::from_secs(10)));
}
