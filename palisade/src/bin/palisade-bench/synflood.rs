//! The shield suite's live part: a SYN flood from spoofed sources (a new one for every SYN)
//! against a listening port, answered by Palisade's SYN cookies from XDP (the real daemon,
//! `syn_cookies = "on"`) or by the kernel's own SYN cookies (`tcp_syncookies = 2`, no
//! Palisade), while real clients connect to the same port.
//!
//! Two namespaces joined by a veth pair: the guarded host (a listener that echoes) and the
//! outside host (the real clients; forwarding on, with a blackhole route for the spoofed
//! sources, so the answers die there quietly). The flood is generated with
//! `BPF_PROG_TEST_RUN` in XDP live-frames mode as if received by the guarded interface
//! (the generator of `tests/support/flood.rs`), by one thread pinned to one CPU; the clients
//! and the server run on the other CPUs. Everything the flood costs on the receiving side
//! runs on that CPU: the generator's thread (the XDP programs, and in the kernel's case the
//! stack's SYN handling, all inside the test run, and the softirq work it raises there when
//! its batches end), and that CPU's ksoftirqd; on kernels that account interrupt time apart
//! (`CONFIG_IRQ_TIME_ACCOUNTING`), that CPU's softirq time from `/proc/stat` too. The CPU per SYN is that total over the SYNs
//! sent, less the generator's own cost (the same frames dropped by the generator itself,
//! measured the same way in the same round).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{Xdp, XdpMode};
use palisade::craft;
use palisade_common::shield::{SH_COOKIE_SENT, SH_COUNT, SH_SYN_TO_STACK};
use serde::Serialize;

use crate::{
    flood::{Generator, Then, ifindex},
    harness::{FLOOR_PASS, Loaded},
    inspect,
    live::traffic::{ksoftirqd, schedstat_ns, thread_cpu_ns},
    netns::Netns,
    rng::Rng,
    runner::Spread,
};

const PORT: u16 = 8443;
const GUARDED_IF: &str = "veth-g";
const OUTSIDE_IF: &str = "veth-o";
const GUARDED: Ipv4Addr = Ipv4Addr::new(10, 72, 1, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 72, 1, 2);
/// The first spoofed source (shared address space, routed nowhere).
const FLOOD_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// How long a client waits for its connection and its echo.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between two connections of one client.
const CLIENT_PAUSE: Duration = Duration::from_millis(10);

pub struct FloodSettings {
    pub rounds: usize,
    /// Seconds of flood per configuration and round.
    pub seconds: f64,
    /// The CPU the flood runs on.
    pub cpu: usize,
    /// Real clients, each connecting again and again.
    pub clients: usize,
    pub seed: u64,
}

/// One configuration in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub round: usize,
    pub syns: u64,
    pub wall_s: f64,
    /// CPU on the flood's CPU: the generator's thread and ksoftirqd (and softirq time, where
    /// the kernel accounts it apart).
    pub cpu_s: f64,
    pub cpu_ns_per_syn: f64,
    /// Less the generator's own cost per frame in the same round.
    pub above_generator_ns: f64,
    pub clients_ok: u64,
    pub clients_failed: u64,
    /// The guarded host's `TcpExt` counters that moved (`SyncookiesSent`, ...).
    pub kernel: Vec<(String, u64)>,
    /// Palisade's `cookies_sent` and `syn_to_stack` (0 without Palisade).
    pub cookies_sent: u64,
    pub syn_to_stack: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigResult {
    pub id: String,
    pub what: String,
    pub syns_per_s: Spread,
    pub cpu_ns_per_syn: Spread,
    pub above_generator_ns: Spread,
    /// Client connections that succeeded over all rounds, and attempted.
    pub clients_ok: u64,
    pub clients_attempted: u64,
    pub clients_success: f64,
    pub rounds: Vec<Measured>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    pub rounds: usize,
    pub seconds: f64,
    pub cpu: usize,
    pub clients: usize,
    pub configs: Vec<ConfigResult>,
    /// Palisade's CPU per SYN above the generator over the kernel's, median of the rounds'
    /// ratios (each round measures both).
    pub cpu_ratio: f64,
    pub cpu_ratios: Vec<f64>,
    /// Whether the kernel accounts interrupt time apart from tasks' (then `/proc/stat`'s
    /// softirq time of the flood's CPU is added).
    pub irq_time_apart: bool,
    /// The machine's load average when the flood began and when it ended (other work on a
    /// shared machine takes CPU from the flood: the SYN rates move with it, the CPU per SYN
    /// much less).
    pub loadavg: (f64, f64),
}

/// Whether the kernel keeps interrupt time apart from tasks' (`CONFIG_IRQ_TIME_ACCOUNTING`).
/// Without it, softirq work done at the end of a task's BH-disabled section is that task's
/// time (and `/proc/stat` samples it as softirq too, so adding both would count it twice).
fn irq_time_accounted() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let config = std::fs::read_to_string(format!("/boot/config-{}", release.trim()))
        .ok()
        .or_else(|| {
            let out = Command::new("zcat").arg("/proc/config.gz").output().ok()?;
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .unwrap_or_default();
    config.lines().any(|l| l == "CONFIG_IRQ_TIME_ACCOUNTING=y")
}

/// `/proc/stat`'s irq and softirq time of `cpu`, in seconds.
fn irq_seconds(cpu: usize) -> Result<f64> {
    let f = crate::inspect::proc_stat_ticks(Some(cpu))
        .ok_or_else(|| anyhow!("no cpu{cpu} in /proc/stat"))?;
    // user nice system idle iowait irq softirq
    let ticks = f.get(5).copied().unwrap_or(0) + f.get(6).copied().unwrap_or(0);
    Ok(ticks as f64 / crate::inspect::clk_tck())
}

/// The `TcpExt` counters of the calling thread's namespace.
fn tcp_ext() -> Vec<(String, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Vec::new();
    };
    names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter(|(n, _)| {
            [
                "SyncookiesSent",
                "SyncookiesRecv",
                "SyncookiesFailed",
                "ListenOverflows",
                "ListenDrops",
            ]
            .contains(n)
        })
        .map(|(n, v)| (n.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

fn moved(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .zip(before)
        .map(|((n, a), (_, b))| (n.clone(), a.saturating_sub(*b)))
        .collect()
}

fn pin_elsewhere(flood_cpu: usize) {
    let cpus = inspect::online_cpus();
    if cpus < 2 {
        return;
    }
    // SAFETY: cpu_set_t is plain data; the CPUs set are below the online count.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in (0..cpus).filter(|&c| c != flood_cpu) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The two hosts.
struct Lab {
    guarded: Netns,
    outside: Netns,
    mac_guarded: [u8; 6],
    mac_outside: [u8; 6],
}

fn sysctl(ns: &Netns, key: &str, value: &str) -> Result<()> {
    // A network sysctl applies to the namespace of the thread that writes it.
    ns.enter(|| std::fs::write(format!("/proc/sys/{}", key.replace('.', "/")), value))?
        .with_context(|| format!("setting {key} in {}", ns.name))
}

fn mac(ns: &Netns, iface: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-br", "link", "show", "dev", iface])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = text
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| anyhow!("no MAC address for {iface}: {text}"))?;
    let bytes: Vec<u8> = field
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address {field}"))?;
    bytes.try_into().map_err(|_| anyhow!("MAC address {field}"))
}

impl Lab {
    fn new() -> Result<Self> {
        let guarded = Netns::create("synflood-g")?;
        let outside = Netns::create("synflood-o")?;
        guarded.ip(&[
            "link",
            "add",
            GUARDED_IF,
            "type",
            "veth",
            "peer",
            "name",
            OUTSIDE_IF,
            "netns",
            &outside.name,
        ])?;
        guarded.ip(&[
            "link", "add", "park0", "type", "veth", "peer", "name", "park1",
        ])?;
        for (ns, iface, addr) in [
            (&guarded, GUARDED_IF, GUARDED),
            (&outside, OUTSIDE_IF, OUTSIDE),
        ] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", iface])?;
            ns.ip(&["link", "set", iface, "up"])?;
        }
        guarded.ip(&["route", "add", "default", "via", &OUTSIDE.to_string()])?;
        outside.ip(&["route", "add", "blackhole", "100.64.0.0/10"])?;
        sysctl(&outside, "net.ipv4.ip_forward", "1")?;
        // What Palisade's cookies need (the daemon sets them too), for both configurations.
        sysctl(&guarded, "net.ipv4.tcp_syncookies", "2")?;
        sysctl(&guarded, "net.ipv4.tcp_timestamps", "2")?;
        let lab = Self {
            mac_guarded: mac(&guarded, GUARDED_IF)?,
            mac_outside: mac(&outside, OUTSIDE_IF)?,
            guarded,
            outside,
        };
        Ok(lab)
    }

    /// The flood's SYN: Linux's options (MSS, SACK, timestamp, window scale).
    fn template(&self) -> Vec<u8> {
        let options = [
            2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let mut f = craft::TcpSegment::new(40_000, PORT, 0x02, 1, 0).frame_with_options(
            FLOOD_BASE.into(),
            GUARDED.into(),
            &options,
        );
        f[..6].copy_from_slice(&self.mac_guarded);
        f[6..12].copy_from_slice(&self.mac_outside);
        f
    }
}

/// An echo server on the guarded host, on the CPUs other than the flood's.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(lab: &Lab, flood_cpu: usize) -> Result<Self> {
        let listener = lab
            .guarded
            .enter(|| TcpListener::bind(SocketAddr::new(GUARDED.into(), PORT)))?
            .context("binding the server")?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            pin_elsewhere(flood_cpu);
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 || c.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Real clients on the outside host: connect, send a line, read it back, close; again and
/// again. Only connections started while `counting` is set are counted.
struct Clients {
    stop: Arc<AtomicBool>,
    counting: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    fn start(lab: &Lab, n: usize, flood_cpu: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counting = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let path = format!("/run/netns/{}", lab.outside.name);
        let threads = (0..n)
            .map(|k| {
                let (stop, counting, ok, failed, path) = (
                    Arc::clone(&stop),
                    Arc::clone(&counting),
                    Arc::clone(&ok),
                    Arc::clone(&failed),
                    path.clone(),
                );
                std::thread::spawn(move || {
                    pin_elsewhere(flood_cpu);
                    let Ok(ns) = std::fs::File::open(&path) else {
                        return;
                    };
                    // SAFETY: setns on a namespace file we hold open; moves this thread only.
                    if unsafe {
                        libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET)
                    } != 0
                    {
                        return;
                    }
                    let server = SocketAddr::new(GUARDED.into(), PORT);
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        // Counted by when it started, however long it takes.
                        let counted = counting.load(Ordering::Relaxed);
                        let line = format!("client {k} connection {i}\n");
                        let good = (|| -> std::io::Result<bool> {
                            let mut c = TcpStream::connect_timeout(&server, CLIENT_TIMEOUT)?;
                            c.set_read_timeout(Some(CLIENT_TIMEOUT))?;
                            c.write_all(line.as_bytes())?;
                            let mut got = vec![0u8; line.len()];
                            c.read_exact(&mut got)?;
                            Ok(got == line.as_bytes())
                        })()
                        .unwrap_or(false);
                        if counted {
                            if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(CLIENT_PAUSE);
                    }
                })
            })
            .collect();
        Self {
            stop,
            counting,
            ok,
            failed,
            threads,
        }
    }

    /// Counts the connections started from now on (`on`) or not; returns the counts so far.
    fn count(&self, on: bool) -> (u64, u64) {
        self.counting.store(on, Ordering::Relaxed);
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A scratch directory for the daemon (policy, socket) with a bpffs of its own for the
/// pins; unmounted and removed on drop.
struct PinFs {
    dir: PathBuf,
    bpffs: PathBuf,
}

impl PinFs {
    fn new() -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("palisade-bench-synflood-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bpffs = dir.join("bpf");
        std::fs::create_dir_all(&bpffs)?;
        crate::live::tools::run_checked(
            Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs),
            "mounting a bpffs",
        )?;
        Ok(Self { dir, bpffs })
    }

    fn pins(&self) -> PathBuf {
        self.bpffs.join("palisade")
    }

    /// The one file `name` under `pins()/layout-*/` (`maps/NAME` or `<build>/NAME`).
    fn find(&self, name: &str) -> Result<PathBuf> {
        let mut found = Vec::new();
        for layout in std::fs::read_dir(self.pins())?.flatten() {
            for sub in std::fs::read_dir(layout.path())?.flatten() {
                let p = sub.path().join(name);
                if p.exists() {
                    found.push(p);
                }
            }
        }
        match found.as_slice() {
            [one] => Ok(one.clone()),
            _ => bail!("pinned {name}: {found:?}"),
        }
    }
}

impl Drop for PinFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.bpffs).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real daemon on the guarded host; stopped and unloaded on drop.
struct Daemon<'a> {
    child: Child,
    bin: PathBuf,
    socket: PathBuf,
    pins: &'a PinFs,
}

impl<'a> Daemon<'a> {
    fn start(lab: &Lab, pins: &'a PinFs) -> Result<Self> {
        let bin = std::env::current_exe()?.with_file_name("palisade");
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build --release -p palisade)",
                bin.display()
            );
        }
        let policy = pins.dir.join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                "[firewall]\ndefault = \"drop\"\nstateful = true\n\
                 [[firewall.rule]]\naction = \"allow\"\nproto = \"tcp\"\ndport = {PORT}\n\
                 [shield]\nsyn_ports = [{PORT}]\nsyn_cookies = \"on\"\ntcp_invalid = \"drop\"\n"
            ),
        )?;
        let socket = pins.dir.join("palisade.sock");
        let mut child = lab
            .guarded
            .command(bin.to_str().unwrap_or("palisade"))
            .arg("--socket")
            .arg(&socket)
            .arg("run")
            .arg("--config")
            .arg(&policy)
            .args(["--iface", GUARDED_IF, "--quiet", "--pin-dir"])
            .arg(pins.pins())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the daemon")?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let d = Self {
            child,
            bin,
            socket,
            pins,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("palisade: enforcing") => return Ok(d),
                Ok(line) => seen.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the daemon exited before enforcing: {seen:?}")
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline {
                bail!("the daemon did not start: {seen:?}");
            }
        }
    }

    fn shield_counters(&self) -> Result<Vec<u64>> {
        use aya::maps::{Map, MapData, PerCpuArray};
        let data = MapData::from_pin(self.pins.find("SHIELD_STATS")?)
            .map_err(|e| anyhow!("opening the pinned shield counters: {e}"))?;
        let arr: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
        (0..SH_COUNT)
            .map(|i| Ok(arr.get(&i, 0)?.iter().sum()))
            .collect()
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(["unload", "--pin-dir"])
            .arg(self.pins.pins())
            .output();
    }
}

/// What one flood on the flood CPU measured.
struct Sample {
    syns: u64,
    wall_s: f64,
    cpu_s: f64,
}

/// Floods for `seconds` (after a short warm-up) from a thread pinned to `cpu` inside the
/// guarded namespace.
fn flood(lab: &Lab, then: Then<'_>, cpu: usize, seconds: f64) -> Result<Sample> {
    let template = lab.template();
    let irq_time_apart = irq_time_accounted();
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Sample> {
            inspect::pin_to_cpu(cpu)?;
            let softirqd = ksoftirqd(cpu);
            lab.guarded.enter(|| -> Result<Sample> {
                let generator = Generator::new(&template, FLOOD_BASE, then, "park1");
                let iface = ifindex(GUARDED_IF);
                let mut chunk = 4096u32;
                let go = |len: f64, chunk: &mut u32| -> u64 {
                    let start = Instant::now();
                    let mut n = 0u64;
                    while start.elapsed().as_secs_f64() < len {
                        let t = Instant::now();
                        generator.send_on(*chunk, iface);
                        n += u64::from(*chunk);
                        let took = t.elapsed().as_secs_f64().max(1e-6);
                        *chunk = ((f64::from(*chunk) * 0.05 / took) as u32).clamp(64, 1 << 20);
                    }
                    n
                };
                go(0.3, &mut chunk);
                let t0 = Instant::now();
                let cpu0 = thread_cpu_ns();
                let soft0 = softirqd.map_or(0, schedstat_ns);
                let irq0 = irq_seconds(cpu)?;
                let syns = go(seconds, &mut chunk);
                let wall_s = t0.elapsed().as_secs_f64();
                let task = (thread_cpu_ns() - cpu0
                    + softirqd.map_or(0, schedstat_ns).saturating_sub(soft0))
                    as f64
                    / 1e9;
                let cpu_s = if irq_time_apart {
                    task + (irq_seconds(cpu)? - irq0)
                } else {
                    task
                };
                Ok(Sample {
                    syns,
                    wall_s,
                    cpu_s,
                })
            })?
        })
        .join()
        .map_err(|_| anyhow!("the flood thread panicked"))?
    })
}

/// One configuration under flood, with the clients counted over the flood.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per part of the setup"
)]
fn measure(
    lab: &Lab,
    clients: &Clients,
    then: Then<'_>,
    s: &FloodSettings,
    round: usize,
    floor_ns: f64,
    daemon: Option<&Daemon<'_>>,
    floor_only: bool,
) -> Result<Measured> {
    let kernel0 = lab.guarded.enter(tcp_ext)?;
    let shield0 = daemon.map(Daemon::shield_counters).transpose()?;
    let (ok0, failed0) = clients.count(!floor_only);
    let sample = flood(lab, then, s.cpu, s.seconds).context("flooding")?;
    clients.count(false);
    // Connections started during the flood finish (or time out) before they are counted.
    std::thread::sleep(2 * CLIENT_TIMEOUT + Duration::from_millis(200));
    let (ok2, failed2) = clients.count(false);
    let kernel = moved(&kernel0, &lab.guarded.enter(tcp_ext)?);
    let (cookies_sent, syn_to_stack) = match (daemon, shield0) {
        (Some(d), Some(before)) => {
            let after = d.shield_counters()?;
            (
                after[SH_COOKIE_SENT as usize] - before[SH_COOKIE_SENT as usize],
                after[SH_SYN_TO_STACK as usize] - before[SH_SYN_TO_STACK as usize],
            )
        }
        _ => (0, 0),
    };
    let per_syn = sample.cpu_s * 1e9 / sample.syns.max(1) as f64;
    Ok(Measured {
        round,
        syns: sample.syns,
        wall_s: sample.wall_s,
        cpu_s: sample.cpu_s,
        cpu_ns_per_syn: per_syn,
        above_generator_ns: per_syn - floor_ns,
        clients_ok: ok2 - ok0,
        clients_failed: failed2 - failed0,
        kernel,
        cookies_sent,
        syn_to_stack,
    })
}

fn summarize(id: &str, what: &str, rounds: Vec<Measured>) -> ConfigResult {
    let of = |f: fn(&Measured) -> f64| Spread::of(&rounds.iter().map(f).collect::<Vec<_>>());
    let ok: u64 = rounds.iter().map(|m| m.clients_ok).sum();
    let attempted: u64 = rounds.iter().map(|m| m.clients_ok + m.clients_failed).sum();
    ConfigResult {
        id: id.to_string(),
        what: what.to_string(),
        syns_per_s: of(|m| m.syns as f64 / m.wall_s),
        cpu_ns_per_syn: of(|m| m.cpu_ns_per_syn),
        above_generator_ns: of(|m| m.above_generator_ns),
        clients_ok: ok,
        clients_attempted: attempted,
        clients_success: if attempted > 0 {
            ok as f64 / attempted as f64
        } else {
            f64::NAN
        },
        rounds,
    }
}

/// # Errors
/// When the lab cannot be built, the daemon started or a flood run.
pub fn run(s: &FloodSettings) -> Result<FloodReport> {
    let load_before = inspect::loadavg();
    let lab = Lab::new().context("building the two hosts")?;
    let mut base = Loaded::new(false).context("loading the kernel object")?;
    // The outside end runs XDP in both configurations: the cookie answers leave by XDP_TX,
    // which a veth pair delivers only to a peer with an XDP program.
    let floor_pass = base.xdp_mut(FLOOR_PASS)?;
    lab.outside
        .enter(|| floor_pass.attach(OUTSIDE_IF, XdpMode::Driver))?
        .map_err(|e| anyhow!("attaching the pass program to {OUTSIDE_IF}: {e}"))?;
    let _server = Server::start(&lab, s.cpu).context("starting the server")?;
    let clients = Clients::start(&lab, s.clients, s.cpu);
    let pins = PinFs::new().context("mounting a bpffs for the daemon's pins")?;
    let mut rng = Rng::new(s.seed ^ 0x5f100d);
    let (mut floor, mut kernel, mut palisade) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..s.rounds {
        let mut order = [0usize, 1];
        rng.shuffle(&mut order);
        for which in order {
            if which == 0 {
                // No Palisade: a pass program on the guarded end (the test run's ingress
                // queue needs XDP there), the generator's own cost, then the kernel's cookies.
                let prog = base.xdp_mut(FLOOR_PASS)?;
                let link = lab
                    .guarded
                    .enter(|| prog.attach(GUARDED_IF, XdpMode::Driver))?
                    .map_err(|e| anyhow!("attaching the pass program to {GUARDED_IF}: {e}"))?;
                let f = measure(&lab, &clients, Then::Drop, s, round, 0.0, None, true)?;
                let floor_ns = f.cpu_ns_per_syn;
                floor.push(f);
                kernel.push(measure(
                    &lab,
                    &clients,
                    Then::Pass,
                    s,
                    round,
                    floor_ns,
                    None,
                    false,
                )?);
                base.xdp_mut(FLOOR_PASS)?
                    .detach(link)
                    .map_err(|e| anyhow!("detaching the pass program: {e}"))?;
            } else {
                let daemon = Daemon::start(&lab, &pins).context("starting the daemon")?;
                let firewall = Xdp::from_pin(
                    pins.find("palisade_firewall")?,
                    aya_obj::programs::XdpAttachType::Interface,
                )
                .map_err(|e| anyhow!("opening the daemon's pinned firewall: {e}"))?;
                let fd = firewall.fd().map_err(|e| anyhow!("{e}"))?;
                // The floor of this round, whichever configuration ran first.
                let floor_ns = floor
                    .last()
                    .map_or(f64::NAN, |f: &Measured| f.cpu_ns_per_syn);
                let m = measure(
                    &lab,
                    &clients,
                    Then::TailCall(fd.as_fd()),
                    s,
                    round,
                    floor_ns,
                    Some(&daemon),
                    false,
                )?;
                if m.cookies_sent < m.syns {
                    bail!(
                        "Palisade sent {} cookies for {} SYNs: the flood did not reach the \
                         shield",
                        m.cookies_sent,
                        m.syns
                    );
                }
                palisade.push(m);
            }
        }
    }
    // A Palisade round measured before its round's floor takes that floor now.
    for (p, f) in palisade.iter_mut().zip(&floor) {
        p.above_generator_ns = p.cpu_ns_per_syn - f.cpu_ns_per_syn;
    }
    let cpu_ratios: Vec<f64> = palisade
        .iter()
        .zip(&kernel)
        .map(|(p, k)| p.above_generator_ns / k.above_generator_ns)
        .collect();
    let configs = vec![
        summarize(
            "generator",
            "the generator alone (its frames dropped): subtracted from the others",
            floor,
        ),
        summarize(
            "kernel-syncookies",
            "no Palisade; the kernel answers with its own SYN cookies (tcp_syncookies = 2)",
            kernel,
        ),
        summarize(
            "palisade-cookies",
            "the daemon, cookies forced on: SYN-ACKs from XDP (XDP_TX)",
            palisade,
        ),
    ];
    Ok(FloodReport {
        rounds: s.rounds,
        seconds: s.seconds,
        cpu: s.cpu,
        clients: s.clients,
        configs,
        cpu_ratio: Spread::of(&cpu_ratios).median,
        cpu_ratios,
        irq_time_apart: irq_time_accounted(),
        loadavg: (load_before, inspect::loadavg()),
    })
}

impl FloodReport {
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut m = String::from(
            "| configuration | what | SYNs/s (median) | CPU ns per SYN (median, min-max) | above the generator, ns | real clients' connections succeeded |\n|---|---|---:|---:|---:|---:|\n",
        );
        for c in &self.configs {
            let clients = if c.clients_attempted > 0 {
                format!(
                    "{} of {} ({:.2} %)",
                    c.clients_ok,
                    c.clients_attempted,
                    c.clients_success * 100.0
                )
            } else {
                "-".to_string()
            };
            let _ = writeln!(
                m,
                "| {} | {} | {:.0} | {:.0} ({:.0}-{:.0}) | {:.0} | {} |",
                c.id,
                c.what,
                c.syns_per_s.median,
                c.cpu_ns_per_syn.median,
                c.cpu_ns_per_syn.min,
                c.cpu_ns_per_syn.max,
                c.above_generator_ns.median,
                clients
            );
        }
        m
    }

    pub fn summary(&self) -> String {
        format!(
            "Palisade's CPU per SYN above the generator is {:.2} times the kernel's own SYN \
             cookies' (median of the rounds' ratios: {}).",
            self.cpu_ratio,
            self.cpu_ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}
