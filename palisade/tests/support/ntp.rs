//! chrony as an NTP server inside a network namespace, and chrony's one-shot client (`-Q`:
//! ask, print the offset, never set the clock).
//!
//! The server runs in the foreground with its own configuration, pid file and drift file in a
//! temporary directory, serves its own clock (`local stratum 8`) to everyone, has no command
//! port and never touches the system clock (`-x`). Killed when the guard drops.

use std::{
    path::PathBuf,
    process::{Child, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use super::netns::{command_in, exec_in};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Chrony {
    child: Child,
    dir: PathBuf,
}

fn scratch_dir(tag: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("palisade-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Chrony {
    /// Starts the server in namespace `ns`; returns once it listens on UDP port 123.
    pub fn serve_in(ns: &str) -> Self {
        let dir = scratch_dir("chrony");
        let d = dir.display();
        let conf = dir.join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "allow all\nlocal stratum 8\ncmdport 0\npidfile {d}/chronyd.pid\n\
                 driftfile {d}/drift\n"
            ),
        )
        .unwrap();
        let child = command_in(ns, "chronyd")
            .arg("-f")
            .arg(&conf)
            .args(["-d", "-x", "-u", "root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chronyd");
        let mut c = Self { child, dir };
        let started = Instant::now();
        loop {
            let ss = exec_in(ns, "ss", &["-Hlun", "sport = :123"]);
            if !String::from_utf8_lossy(&ss.stdout).trim().is_empty() {
                return c;
            }
            if let Some(status) = c.child.try_wait().expect("wait chronyd") {
                panic!("chronyd exited ({status}) before serving");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "chronyd does not listen on port 123"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Chrony {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asks `server` for the time from namespace `ns`, once (at most `timeout_s` seconds). The
/// query leaves from an ephemeral port; success means a valid answer came back.
pub fn query(ns: &str, server: &str, timeout_s: u32) -> Output {
    let dir = scratch_dir("chronyq");
    let out = exec_in(
        ns,
        "chronyd",
        &[
            "-Q",
            "-t",
            &timeout_s.to_string(),
            "-u",
            "root",
            &format!("server {server} iburst maxsamples 1"),
            &format!("pidfile {}/chronyd.pid", dir.display()),
            "cmdport 0",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    out
}
