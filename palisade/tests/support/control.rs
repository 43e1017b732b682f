//! Helpers for the control-plane tests: a private bpffs for the pins, a daemon process that
//! can be killed and restarted, the CLI as root or as `nobody`, traffic generators, and
//! test runs of the pinned firewall program against the pinned maps.
//!
//! Included with `#[path]` next to `mod support;` by the `control_*` tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;

use crate::support::netns::NetnsPair;

pub const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// A scratch directory with a bpffs mounted in it (in the host's mount namespace, so pins
/// outlive the daemons that `ip netns exec` runs in private mount namespaces). Unmounted and
/// removed on drop, which also frees whatever is still pinned.
pub struct Scratch {
    pub dir: PathBuf,
    pub bpffs: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("palisade-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bpffs = dir.join("bpf");
        std::fs::create_dir_all(&bpffs).unwrap();
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&bpffs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount bpffs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir, bpffs }
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("palisade")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("palisade.sock")
    }

    /// The path of pinned map `name` in the one layout the daemon pinned.
    pub fn pinned_map(&self, name: &str) -> PathBuf {
        let layouts: Vec<PathBuf> = std::fs::read_dir(self.pin_dir())
            .expect("pin directory")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("layout-")
            })
            .collect();
        assert_eq!(layouts.len(), 1, "{layouts:?}");
        layouts[0].join("maps").join(name)
    }

    /// Entry `index` of the pinned per-CPU counter array `name`, summed over CPUs.
    pub fn counter(&self, name: &str, index: u32) -> u64 {
        use aya::maps::{Map, MapData, PerCpuArray};
        let data = MapData::from_pin(self.pinned_map(name)).expect("open pinned counters");
        let arr: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(Map::PerCpuArray(data)).expect("per-CPU array");
        arr.get(&index, 0).expect("read counter").iter().sum()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.bpffs).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `palisade run` process with its output collected.
pub struct Proc {
    child: Option<Child>,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
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

impl Proc {
    /// Starts `palisade --socket S run ARGS` in namespace `ns` and waits (up to 120 s: a
    /// fresh start verifies the programs) until it enforces.
    pub fn start(pair: &NetnsPair, ns: &str, socket: &Path, args: &[&str]) -> Self {
        let mut cmd = pair.command(ns, BIN);
        cmd.arg("--socket").arg(socket).arg("run").args(args);
        Self::spawn(cmd)
    }

    /// Like [`Proc::start`], with `nsenter --net`: the daemon runs in `ns`'s network stack
    /// but the host's mount namespace, so its pins under `/sys/fs/bpf` are the host's and
    /// outlive it.
    pub fn start_nsenter(ns: &str, socket: &Path, args: &[&str]) -> Self {
        let mut cmd = crate::support::netns::nsenter(ns, BIN);
        cmd.arg("--socket").arg(socket).arg("run").args(args);
        Self::spawn(cmd)
    }

    /// Spawns `cmd` (which must exec `palisade ... run`) and waits until it enforces.
    pub fn spawn(mut cmd: Command) -> Self {
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
        let mut p = Self {
            child: Some(child),
            stdout,
            stderr,
            readers,
        };
        let start = Instant::now();
        loop {
            if p.stderr_now()
                .iter()
                .any(|l| l.contains("palisade: enforcing"))
            {
                return p;
            }
            if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "palisade exited ({status}) before enforcing: {:?}",
                    p.stderr_now()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "palisade did not start: {:?}",
                p.stderr_now()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we own (`ip netns exec` execs, so it is palisade's).
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn stderr_now(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout_now(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits for the process to end (after a signal or `palisade unload`); returns whether
    /// it exited successfully.
    pub fn wait(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                self.child = None;
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return s.success();
            }
            assert!(
                start.elapsed() < limit,
                "palisade did not exit: {:?}",
                self.stderr_now()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The daemon of a netns test's guarded host: `palisade run` on one interface of a namespace,
/// started with `nsenter --net` so that its pins (on the scratch's private bpffs) are the
/// test's to read, with its scratch directory and policy file. Dropping it kills the daemon
/// and unloads whatever is still pinned.
pub struct GuardedHost {
    daemon: Option<Proc>,
    pub scratch: Scratch,
    pub policy: PathBuf,
    ns: String,
    iface: String,
}

impl GuardedHost {
    /// A scratch directory named `tag` (tests run in parallel) holding `policy_text` as the
    /// policy, for a daemon on `iface` in namespace `ns`; not started yet.
    pub fn new(tag: &str, policy_text: &str, ns: &str, iface: &str) -> Self {
        let scratch = Scratch::new(tag);
        let policy = scratch.file("policy.toml");
        std::fs::write(&policy, policy_text).unwrap();
        Self {
            daemon: None,
            scratch,
            policy,
            ns: ns.to_owned(),
            iface: iface.to_owned(),
        }
    }

    /// Starts the daemon and waits until it enforces.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// [`Self::start`] with more arguments for `palisade run`.
    pub fn start_with(&mut self, extra: &[&str]) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        let started = Instant::now();
        let pin_dir = self.scratch.pin_dir();
        let mut args = vec![
            "--config",
            self.policy.to_str().unwrap(),
            "--iface",
            &self.iface,
            "--pin-dir",
            pin_dir.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        self.daemon = Some(Proc::start_nsenter(&self.ns, &self.scratch.socket(), &args));
        eprintln!("palisade enforcing after {:?}", started.elapsed());
    }

    pub fn daemon(&self) -> &Proc {
        self.daemon.as_ref().expect("daemon running")
    }

    /// The running daemon, handed over (to be stopped by the caller).
    pub fn take_daemon(&mut self) -> Proc {
        self.daemon.take().expect("daemon running")
    }

    pub fn socket(&self) -> PathBuf {
        self.scratch.socket()
    }

    /// Writes `policy_text` as the policy and has the daemon reload it.
    pub fn reload(&self, policy_text: &str) {
        std::fs::write(&self.policy, policy_text).unwrap();
        let r = cli(&self.socket(), &["reload"]);
        assert!(r.ok && r.stdout.contains("reloaded"), "{r:?}");
    }
}

impl Drop for GuardedHost {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.kill9();
        }
        // Detach and unpin (unmounting the private bpffs afterwards frees whatever is left).
        let _ = cli(
            &self.socket(),
            &[
                "unload",
                "--pin-dir",
                self.scratch.pin_dir().to_str().unwrap(),
            ],
        );
    }
}

/// What a CLI run printed.
pub struct CliOut {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for CliOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok={} stdout={:?} stderr={:?}",
            self.ok, self.stdout, self.stderr
        )
    }
}

fn cli_out(o: Output) -> CliOut {
    CliOut {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `palisade --socket S ARGS` as root.
pub fn cli(socket: &Path, args: &[&str]) -> CliOut {
    cli_out(
        Command::new(BIN)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .output()
            .expect("run palisade"),
    )
}

/// Runs `palisade --socket S ARGS` as uid/gid 65534 (nobody) with no supplementary groups.
pub fn cli_as_nobody(socket: &Path, args: &[&str]) -> CliOut {
    cli_out(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "--socket",
            ])
            .arg(socket)
            .args(args)
            .output()
            .expect("run setpriv"),
    )
}

/// `palisade ... --json` parsed.
pub fn cli_json(socket: &Path, args: &[&str]) -> serde_json::Value {
    let o = cli(socket, args);
    assert!(o.ok, "palisade {args:?}: {o:?}");
    serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("palisade {args:?} printed no JSON ({e}): {o:?}"))
}

/// Answers every UDP datagram on `addr:port` until `stopfile` exists. Prints `ready`.
pub const UDP_ECHO: &str = r"
import socket, sys, os
addr, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, port)); s.settimeout(0.05)
print('ready', flush=True)
while not os.path.exists(stop):
    try:
        d, a = s.recvfrom(2048); s.sendto(d, a)
    except socket.timeout:
        pass
";

/// Prints the body of an HTTP GET of `url`.
pub const HTTP_GET: &str = r"
import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
";

/// Value of one sample in a Prometheus exposition.
pub fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Sends `count` UDP datagrams from `ns` to `host:port`.
pub const UDP_SEND: &str = r"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(b'palisade-test', (host, port))
";

/// Counts datagrams on `addr:port` until nothing arrives for `idle` seconds, then prints
/// the count. Prints `ready` first, once bound.
pub const UDP_COUNT: &str = r"
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print('ready', flush=True)
n = 0
try:
    while True:
        s.recv(2048); n += 1
except socket.timeout:
    pass
print(n, flush=True)
";

/// Counts datagrams on several ports until `stopfile` has existed for a second (or
/// `maxsecs` passed), then prints `port count` lines. Prints `ready` once bound.
pub const UDP_COUNT_UNTIL: &str = r"
import socket, sys, time, select, os
addr, stop, maxsecs = sys.argv[1], sys.argv[2], float(sys.argv[3])
ports = [int(p) for p in sys.argv[4:]]
fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
socks = {}
for p in ports:
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((addr, p)); s.setblocking(False); socks[s] = p
counts = {p: 0 for p in ports}
print('ready', flush=True)
end = time.time() + maxsecs
stop_seen = None
while time.time() < end:
    if stop_seen is None and os.path.exists(stop):
        stop_seen = time.time()
    if stop_seen is not None and time.time() - stop_seen > 1.0:
        break
    r, _, _ = select.select(list(socks), [], [], 0.05)
    for s in r:
        try:
            while True:
                s.recv(2048); counts[socks[s]] += 1
        except BlockingIOError:
            pass
for p in ports:
    print(p, counts[p], flush=True)
";

/// Sends one datagram to each port every `gap` seconds until `stopfile` exists (or
/// `maxsecs` passed); prints how many rounds it sent.
pub const UDP_STREAM_UNTIL: &str = r"
import socket, sys, time, os
host, stop, maxsecs, gap = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
ports = [int(p) for p in sys.argv[5:]]
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
end = time.time() + maxsecs
n = 0
while time.time() < end and not os.path.exists(stop):
    for p in ports:
        s.sendto(b'palisade-stream', (host, p))
    n += 1
    time.sleep(gap)
print(n, flush=True)
";

/// Sends a DNS query for `name` (type A) to `host:53` and prints `answer RCODE`, `refused`
/// (ICMP port unreachable: nothing filtered it and nothing listens) or `timeout`.
pub const DNS_QUERY: &str = r"
import socket, sys, struct, random
host, name = sys.argv[1], sys.argv[2]
q = struct.pack('>HHHHHH', random.randint(0, 65535), 0x0100, 1, 0, 0, 0)
for label in name.rstrip('.').split('.'):
    q += bytes([len(label)]) + label.encode()
q += b'\x00' + struct.pack('>HH', 1, 1)
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]) if len(sys.argv) > 3 else 1.0)
s.connect((host, 53))
s.send(q)
try:
    r = s.recv(2048)
    print('answer', r[3] & 0x0f)
except ConnectionRefusedError:
    print('refused')
except socket.timeout:
    print('timeout')
";

/// Runs a python script in `ns` and returns its trimmed stdout.
pub fn py(pair: &NetnsPair, ns: &str, script: &str, args: &[&str]) -> String {
    let mut a = vec!["-c", script];
    a.extend_from_slice(args);
    let out = pair.exec(ns, "python3", &a);
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A python script running in the background in `ns`; its stdout lines are collected.
pub struct Bg {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Bg {
    pub fn start(pair: &NetnsPair, ns: &str, script: &str, args: &[&str]) -> Self {
        let mut child = pair
            .command(ns, "python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn python3");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = Some(collect(child.stdout.take().unwrap(), lines.clone()));
        Self {
            child,
            lines,
            reader,
        }
    }

    /// Waits until the script printed `ready`.
    pub fn ready(self) -> Self {
        let start = Instant::now();
        while !self.lines.lock().unwrap().iter().any(|l| l == "ready") {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "background script never got ready"
            );
            thread::sleep(Duration::from_millis(10));
        }
        self
    }

    /// The lines printed so far (without `ready`).
    pub fn lines_now(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l != "ready")
            .cloned()
            .collect()
    }

    /// Waits for the script to end; returns its output lines (without `ready`).
    pub fn finish(mut self) -> Vec<String> {
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l != "ready")
            .cloned()
            .collect()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A background CLI process (e.g. `palisade events`), with its stdout lines collected.
pub struct BgCli {
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl BgCli {
    pub fn start(socket: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn palisade");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = Some(collect(child.stdout.take().unwrap(), lines.clone()));
        Self {
            child,
            lines,
            reader,
        }
    }

    /// Waits up to `limit` for the process to end by itself; returns its lines.
    pub fn finish(mut self, limit: Duration) -> Vec<String> {
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > limit {
                let _ = self.child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for BgCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The firewall program pinned under `pin_dir` (exactly one layout and build expected).
pub fn pinned_firewall(pin_dir: &Path) -> PathBuf {
    let mut found = Vec::new();
    for layout in std::fs::read_dir(pin_dir).unwrap().filter_map(Result::ok) {
        for progs in std::fs::read_dir(layout.path())
            .unwrap()
            .filter_map(Result::ok)
        {
            let p = progs.path().join("palisade_firewall");
            if p.exists() {
                found.push(p);
            }
        }
    }
    assert_eq!(found.len(), 1, "pinned firewall programs: {found:?}");
    found.pop().unwrap()
}

/// Runs the pinned firewall program (which uses the pinned maps) on each frame; returns the
/// XDP actions (1 drop, 2 pass).
pub fn run_pinned(prog: &Path, frames: &[Vec<u8>]) -> Vec<u32> {
    let p = Xdp::from_pin(prog, XdpAttachType::Interface).expect("open the pinned program");
    frames
        .iter()
        .map(|f| {
            let mut out = vec![0u8; f.len() + 256];
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(f);
            opts.data_out = Some(&mut out);
            p.test_run(opts).expect("test run").return_value
        })
        .collect()
}

/// Sends `n` datagrams from A to B's `port`; returns how many arrived. The receiver stops
/// a second after the sender is done, however long either took to start.
pub fn delivered(pair: &NetnsPair, scratch: &Scratch, port: u16, n: u32) -> u64 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let stop = scratch.file(&format!(
        "delivered-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let port = port.to_string();
    let rx = Bg::start(
        pair,
        &pair.ns_b,
        UDP_COUNT_UNTIL,
        &[&pair.v4_b, stop.to_str().unwrap(), "60", &port],
    )
    .ready();
    py(
        pair,
        &pair.ns_a,
        UDP_SEND,
        &[&pair.v4_b, &port, &n.to_string()],
    );
    std::fs::write(&stop, b"").unwrap();
    let lines = rx.finish();
    lines
        .iter()
        .find_map(|l| {
            l.strip_prefix(&format!("{port} "))
                .and_then(|c| c.trim().parse().ok())
        })
        .expect("receiver count")
}

/// Waits until `n` `palisade events` clients are connected to the daemon.
pub fn wait_for_streams(socket: &Path, n: u64) {
    let ok = eventually(Duration::from_secs(20), || {
        cli_json(socket, &["status", "--json"])["event_streams"].as_u64() == Some(n)
    });
    assert!(ok, "{n} event stream(s) never connected");
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    f()
}
