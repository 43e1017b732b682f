//! Helpers for the DNS end-to-end tests: a real resolver (unbound) in a namespace, a `dig`
//! runner that parses what it printed, a throw-away cgroup v2 directory, an XDP pass program
//! for the client side of a veth pair, and a per-namespace `resolv.conf`.
//!
//! Every helper that creates something is a guard that removes it again on drop, also when the
//! test panics. Nothing here touches the host's own resolver or its network interfaces.
//!
//! Declared by the test binaries with `#[path = "support/dns/mod.rs"] mod dns_support;`, next
//! to `mod support;`.

#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod cgroup;
pub mod dig;
pub mod resolv;
pub mod unbound;
pub mod xdp;

use std::{path::PathBuf, process::Command};

/// Panics with an installation hint when `program` is not on `PATH`: the DNS tests need real
/// software and say so instead of passing without having tested anything.
pub fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{program}` is not installed, and this test needs it: run `cargo xtask setup`, or \
         `apt-get install {package}`"
    );
}

/// Checks every tool the DNS tests use.
pub fn require_tools() {
    require("ip", "iproute2");
    require("unbound", "unbound");
    require("dig", "dnsutils");
    require("python3", "python3");
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    #[must_use]
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("palisade-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `palisade run` arguments for a test daemon: `policy` on `iface`, events as JSON, its control
/// socket and pins in places of its own (so it never meets another daemon on this machine), and
/// everything detached when it exits.
#[must_use]
pub fn run_args(dir: &TempDir, policy: &std::path::Path, iface: &str) -> Vec<String> {
    let tag = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    vec![
        "run".into(),
        "--config".into(),
        policy.display().to_string(),
        "--iface".into(),
        iface.into(),
        "--json".into(),
        "--unload-on-exit".into(),
        "--socket".into(),
        dir.path().join("palisade.sock").display().to_string(),
        "--pin-dir".into(),
        format!("/sys/fs/bpf/{tag}"),
    ]
}

/// Runs `palisade check` on `policy` and panics with its diagnostics when it refuses it.
pub fn check_policy(policy: &std::path::Path) {
    let check = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("check")
        .arg(policy)
        .output()
        .expect("run palisade check");
    assert!(
        check.status.success(),
        "palisade check refused the policy: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

/// DNS events (`"kind": "dns"`) among the JSON lines palisade printed.
#[must_use]
pub fn dns_events(stdout: &[String]) -> Vec<serde_json::Value> {
    stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["kind"] == "dns")
        .collect()
}
