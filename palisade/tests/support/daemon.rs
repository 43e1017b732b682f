//! A `palisade run` child process with its output collected, stopped with SIGTERM on drop.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use super::netns::NetnsPair;

pub struct Daemon {
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// What a stopped daemon printed.
pub struct Transcript {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub success: bool,
}

fn collect(
    r: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    })
}

impl Daemon {
    /// Starts `palisade ARGS` inside namespace `ns` and waits until it enforces.
    pub fn start(pair: &NetnsPair, ns: &str, args: &[&str]) -> Self {
        let mut cmd = pair.command(ns, env!("CARGO_BIN_EXE_palisade"));
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn palisade");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        let d = Self {
            child: Some(child),
            stdout,
            stderr,
            readers,
        };
        let start = Instant::now();
        loop {
            if d.stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("palisade: enforcing"))
            {
                return d;
            }
            let exited = d
                .child
                .as_ref()
                .map(|c| c.id())
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
            assert!(
                !exited && start.elapsed() < Duration::from_secs(30),
                "palisade did not start: {:?}",
                d.stderr.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a prepared command that ends up exec'ing `palisade run` (so the child's pid is
    /// palisade's) and waits until it enforces; fails at once, with what it printed, if it
    /// exits first.
    pub fn start_command(mut cmd: std::process::Command) -> Self {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn palisade");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        let mut d = Self {
            child: Some(child),
            stdout,
            stderr,
            readers,
        };
        let start = Instant::now();
        loop {
            if d.stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("palisade: enforcing"))
            {
                return d;
            }
            let exited = d.child.as_mut().unwrap().try_wait().expect("wait palisade");
            if let Some(status) = exited {
                // Let the readers take in the last lines.
                for r in d.readers.drain(..) {
                    let _ = r.join();
                }
                panic!(
                    "palisade exited ({status}) before enforcing: {:?}",
                    d.stderr.lock().unwrap()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "palisade did not start within 60 s: {:?}",
                d.stderr.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `sig` to the daemon (through `ip netns exec`, which execs, so the pid is palisade's).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill with a pid we own.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Lines printed to stderr so far.
    pub fn stderr_now(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Stops the daemon with SIGTERM and returns what it printed.
    pub fn stop(mut self) -> Transcript {
        self.signal(libc::SIGTERM);
        let status = self.child.take().unwrap().wait().expect("wait palisade");
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Transcript {
            stdout: self.stdout.lock().unwrap().clone(),
            stderr: self.stderr.lock().unwrap().clone(),
            success: status.success(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Transcript {
    /// Packets counted for `rule` in the exit summary.
    pub fn rule_packets(&self, rule: &str) -> u64 {
        self.stderr
            .iter()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some("rule") && f.next() == Some(rule))
                    .then(|| f.next().and_then(|n| n.parse().ok()))
                    .flatten()
            })
            .unwrap_or(0)
    }
}
