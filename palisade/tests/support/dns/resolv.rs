//! `/etc/netns/<ns>/resolv.conf`: `ip netns exec <ns>` bind-mounts it over `/etc/resolv.conf`
//! for the programs it runs, so the C library's stub resolver (`getent`, `getaddrinfo`) in that
//! namespace asks the test's resolver and never the host's. Removed on drop.

use std::path::PathBuf;

pub struct NetnsResolvConf {
    dir: PathBuf,
}

impl NetnsResolvConf {
    /// Points namespace `ns` at `nameserver` with one attempt of `timeout` seconds.
    pub fn new(ns: &str, nameserver: &str, timeout: u32) -> Self {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let guard = Self { dir };
        std::fs::write(
            guard.dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:{timeout} attempts:1\n"),
        )
        .expect("write resolv.conf");
        guard
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // Leave /etc/netns itself alone unless it is empty now.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}
