//! The ConfigMap hot reload and the readiness probe of the Kubernetes chart, with the real
//! daemon outside any container: `palisade run --watch-config` on a directory laid out and
//! updated the way kubelet does it (files are symlinks through `..data`; an update writes a
//! new timestamped directory, renames a new `..data` over the old one and removes the old
//! directory), and `palisade ready --policy` answering from what the daemon enforces.
//! - each swap is noticed and reloaded, and traffic follows it (pings dropped, then passed);
//! - a swap to an invalid policy keeps the old policy enforced and makes the probe fail,
//!   with the error; the next valid swap makes it ready again;
//! - with no daemon the probe says so with its own exit code.
//!
//! Run with:
//!
//!     cargo test --release -p palisade --test pod_reload_netns -- --test-threads=1

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use control::{BIN, Proc, Scratch, cli, cli_json};
use support::netns::NetnsPair;

const DROP_ICMP: &str = "[firewall]\ndefault = \"allow\"\n\n[[firewall.rule]]\nname = \"drop-icmp\"\naction = \"drop\"\nproto = \"icmp\"\n";
const ALLOW_ALL: &str = "[firewall]\ndefault = \"allow\"\n";
const INVALID: &str = "[firewall]\ndefault = \"maybe\"\n";

/// A ConfigMap volume as kubelet lays it out, with one key `policy.toml`.
struct ConfigMapDir {
    dir: PathBuf,
    version: u32,
}

impl ConfigMapDir {
    fn new(dir: PathBuf, text: &str) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Self { dir, version: 0 };
        c.update(text);
        symlink("..data/policy.toml", c.dir.join("policy.toml")).unwrap();
        c
    }

    fn file(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }

    /// kubelet's atomic update (AtomicWriter): new timestamped directory, `..data_tmp`
    /// pointing at it renamed over `..data`, old directory removed.
    fn update(&mut self, text: &str) {
        self.version += 1;
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let name = format!("..2026_12_05_20_00_00.{}", 1000 + self.version);
        std::fs::create_dir(self.dir.join(&name)).unwrap();
        std::fs::write(self.dir.join(&name).join("policy.toml"), text).unwrap();
        symlink(&name, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

fn ping(pair: &NetnsPair) -> bool {
    pair.exec(&pair.ns_a, "ping", &["-c1", "-W1", &pair.v4_b])
        .status
        .success()
}

/// `palisade ready --policy FILE`: exit code and its one line.
fn ready(socket: &Path, policy: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(["ready", "--policy"])
        .arg(policy)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Waits (up to 10 s; the watch looks every second) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn configmap_swaps_reload_and_readiness_follows_the_enforced_policy() {
    let pair = NetnsPair::new();
    let scratch = Scratch::new("pod-reload");
    let socket = scratch.socket();
    let pin_dir = scratch.pin_dir();
    let mut cm = ConfigMapDir::new(scratch.file("configmap"), DROP_ICMP);
    let file = cm.file();

    assert_eq!(ready(&socket, &file).0, 3, "no daemon yet");
    assert!(ping(&pair), "the lab passes pings before any policy");

    let mut daemon = Proc::start_nsenter(
        &pair.ns_b,
        &socket,
        &[
            "--config",
            file.to_str().unwrap(),
            "--watch-config",
            "--iface",
            &pair.if_b,
            "--pin-dir",
            pin_dir.to_str().unwrap(),
            "--quiet",
        ],
    );
    let (code, line) = ready(&socket, &file);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("ready: "), "{line}");
    assert!(!ping(&pair), "drop-icmp enforced");

    // A valid update: reloaded without a signal, traffic follows, ready again.
    cm.update(ALLOW_ALL);
    eventually("the allow-all policy reloaded", || ping(&pair));
    eventually("ready on the new policy", || ready(&socket, &file).0 == 0);
    let s = cli_json(&socket, &["status", "--json"]);
    assert_eq!(s["reloads_ok"], 1, "{s}");
    assert_eq!(
        s["policy_digest"],
        palisade::pod::digest(ALLOW_ALL.as_bytes()),
        "{s}"
    );

    // An invalid update: the running policy stays, the probe fails and says why.
    cm.update(INVALID);
    eventually("the invalid policy refused", || {
        cli_json(&socket, &["status", "--json"])["reloads_failed"] == 1
    });
    let (code, line) = ready(&socket, &file);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("not ready") && line.contains("policy.toml:2:11: unknown default action"),
        "{line}"
    );
    assert!(
        ping(&pair),
        "the last good policy (allow all) still enforced"
    );
    // It is not tried again until it changes.
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        cli_json(&socket, &["status", "--json"])["reloads_failed"],
        1
    );

    // The next valid update makes the pod ready again.
    cm.update(DROP_ICMP);
    eventually("drop-icmp reloaded", || !ping(&pair));
    let (code, line) = ready(&socket, &file);
    assert_eq!(code, 0, "{line}");
    assert!(
        daemon
            .stderr_now()
            .iter()
            .any(|l| l.contains("the config changed; reload refused")),
        "{:?}",
        daemon.stderr_now()
    );

    let r = cli(&socket, &["unload", "--pin-dir", pin_dir.to_str().unwrap()]);
    assert!(r.ok, "{r:?}");
    assert!(daemon.wait(Duration::from_secs(10)));
    assert!(ping(&pair), "unloaded");
}
