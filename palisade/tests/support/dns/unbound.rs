//! unbound as an authoritative-only resolver inside a network namespace.
//!
//! The configuration is generated into a temporary directory: it listens on the addresses
//! given (port 53), serves the test zone from `local-data`, refuses every other name (so it
//! never recurses and never sends a packet anywhere), runs in the foreground without a control
//! socket, keeps its pid file and log in the temporary directory, and logs every query it
//! receives (`log-queries`), which is how the tests tell what reached it.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::TempDir;
use crate::support::netns::{NetnsPair, command_in};

/// The zone every DNS test serves. Palisade answers blocked names with NXDOMAIN, so each name
/// here exists: an NXDOMAIN for one of them can only have come from Palisade.
pub const ZONE: &[(&str, &str, &str)] = &[
    ("allowed.test.", "A", "192.0.2.1"),
    ("allowed.test.", "AAAA", "2001:db8::1"),
    ("blocked.test.", "A", "192.0.2.2"),
    ("blocked.test.", "AAAA", "2001:db8::2"),
    ("ads.blocked.test.", "A", "192.0.2.3"),
    ("ads.blocked.test.", "AAAA", "2001:db8::3"),
    ("deep.ads.blocked.test.", "A", "192.0.2.4"),
    ("other.test.", "A", "192.0.2.5"),
];

/// The zone's answer for `name`/`qtype`, as `dig` prints it.
#[must_use]
pub fn zone_answer(name: &str, qtype: &str) -> &'static str {
    let name = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
    ZONE.iter()
        .find(|(n, t, _)| *n == name && t.eq_ignore_ascii_case(qtype))
        .map(|(_, _, a)| *a)
        .unwrap_or_else(|| panic!("{name} {qtype} is not in the test zone"))
}

/// A query unbound logged: client address, name (as sent, with the final dot) and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedQuery {
    pub client: String,
    pub name: String,
    pub qtype: String,
}

pub struct Unbound {
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

impl Unbound {
    /// Starts unbound in namespace `ns`, listening on `addrs`, and waits until it serves.
    pub fn start(_pair: &NetnsPair, ns: &str, addrs: &[&str]) -> Self {
        Self::start_in(ns, addrs)
    }

    /// Starts unbound in namespace `ns` (of any topology), listening on `addrs`, and waits
    /// until it serves.
    pub fn start_in(ns: &str, addrs: &[&str]) -> Self {
        Self::start_with(ns, addrs, &[])
    }

    /// [`Self::start_in`], serving `extra` records (`"name. TTL IN TYPE data"`, as unbound's
    /// `local-data` takes them) besides the test zone.
    pub fn start_with(ns: &str, addrs: &[&str], extra: &[String]) -> Self {
        let dir = TempDir::new("unbound");
        let d = dir.path().display().to_string();
        let mut conf = String::from("server:\n");
        for a in addrs {
            conf += &format!("    interface: {a}\n");
        }
        conf += &format!(
            "    port: 53\n\
             \x20   do-daemonize: no\n\
             \x20   use-systemd: no\n\
             \x20   username: \"\"\n\
             \x20   chroot: \"\"\n\
             \x20   directory: \"{d}\"\n\
             \x20   pidfile: \"{d}/unbound.pid\"\n\
             \x20   logfile: \"{d}/unbound.log\"\n\
             \x20   use-syslog: no\n\
             \x20   log-queries: yes\n\
             \x20   verbosity: 0\n\
             \x20   num-threads: 1\n\
             \x20   so-reuseport: no\n\
             \x20   interface-automatic: no\n\
             \x20   do-ip4: yes\n\
             \x20   do-ip6: yes\n\
             \x20   do-udp: yes\n\
             \x20   do-tcp: yes\n\
             \x20   access-control: 0.0.0.0/0 allow\n\
             \x20   access-control: ::/0 allow\n\
             \x20   module-config: \"iterator\"\n\
             \x20   do-not-query-localhost: yes\n\
             \x20   local-zone: \".\" refuse\n\
             \x20   local-zone: \"test.\" static\n"
        );
        for (name, qtype, data) in ZONE {
            conf += &format!("    local-data: \"{name} 60 IN {qtype} {data}\"\n");
        }
        for rr in extra {
            conf += &format!("    local-data: \"{rr}\"\n");
        }
        conf += "remote-control:\n    control-enable: no\n";
        let conf_path = dir.write("unbound.conf", &conf);
        let log = dir.path().join("unbound.log");

        let child = command_in(ns, "unbound")
            .args(["-d", "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn unbound");
        let mut u = Self {
            child: Some(child),
            log,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&u.log).unwrap_or_default();
            if text.contains("start of service") {
                return u;
            }
            if let Some(status) = u.child.as_mut().unwrap().try_wait().expect("wait unbound") {
                panic!(
                    "unbound exited ({status}) before serving; its log:\n{text}\nconfig:\n{conf}"
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "unbound did not start; log:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every query unbound has logged so far, oldest first.
    #[must_use]
    pub fn queries(&self) -> Vec<LoggedQuery> {
        // "[1700000000] unbound[123:0] info: 10.201.5.1 allowed.test. A IN"
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let rest = l.split_once(" info: ")?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                (f.len() == 4 && f[3] == "IN").then(|| LoggedQuery {
                    client: f[0].to_string(),
                    name: f[1].to_string(),
                    qtype: f[2].to_string(),
                })
            })
            .collect()
    }

    /// Logged queries for `name` (any case).
    #[must_use]
    pub fn queries_for(&self, name: &str) -> Vec<LoggedQuery> {
        let want = format!("{}.", name.trim_end_matches('.'));
        self.queries()
            .into_iter()
            .filter(|q| q.name.eq_ignore_ascii_case(&want))
            .collect()
    }

    /// The whole log, for failure messages.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill with the pid of our own child (`ip netns exec` execs unbound).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
