//! The DNS response cache suite (`--dns-cache`): repeated queries for popular names answered
//! by unbound from its own cache, against the same queries answered by Palisade's XDP cache
//! (`[dns.cache]`) in front of the same unbound, under dnsperf, in one run.
//!
//! One unbound serves two veth pairs into one client namespace: the *plain* pair reaches it
//! directly, the *guarded* pair crosses the real daemon (`palisade run --iface`) with the cache
//! on. Both are warmed with every (name, type) of the query set before the clock starts:
//! unbound fetches each once from an authoritative unbound behind it, and the daemon's TC fill
//! stores each answer as it leaves by the guarded pair. Each round then runs, in a shuffled
//! order, dnsperf flat out on each path (queries per second and CPU per query) and dnsperf at
//! a fixed rate with every answer's latency (percentiles). The cache's counters, read from the
//! daemon after every run, show where the guarded path's answers came from.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::XdpMode;
use serde::Serialize;

use crate::{
    dnsperf::measure::{Summary, ksoftirqd, set_affinity, task_runtime},
    harness::{FLOOR_PASS, Loaded},
    inspect,
    netns::Netns,
    rng::Rng,
    utc_now,
};

/// Client ends of the plain and the guarded pair, and their server ends.
const PLAIN_CLIENT_IF: &str = "dcp0";
const PLAIN_SERVER_IF: &str = "dcp1";
const GUARD_CLIENT_IF: &str = "dcg0";
const GUARD_SERVER_IF: &str = "dcg1";
/// Two /30s in the benchmarking range 198.18.0.0/15, one per pair; nothing is routed.
const PLAIN_CLIENT: &str = "198.18.56.1";
const PLAIN_SERVER: &str = "198.18.56.2";
const GUARD_CLIENT: &str = "198.18.56.5";
const GUARD_SERVER: &str = "198.18.56.6";
/// Where the authoritative unbound listens, in the server namespace.
const BACKEND: &str = "127.0.0.1@5353";
/// Top-level domains of the generated names (each a static zone of the authoritative side).
const TLDS: [&str; 6] = ["com", "net", "org", "io", "de", "info"];
/// Query types and their share of the queries, in percent.
const QTYPES: [(&str, u64); 4] = [("A", 55), ("AAAA", 30), ("MX", 8), ("TXT", 7)];
/// Share of the queries, in percent, sent with random letter case (DNS 0x20).
const MIXED_CASE_PERCENT: u64 = 20;
/// TTL of every record: nothing expires during a run.
const RECORD_TTL: u32 = 3600;
/// The cache's capacity in the policy: room for every (name, type) of the largest set the
/// suite builds by default, so that the run measures serving, not evicting.
const CACHE_CAPACITY: u32 = 16_384;
/// dnsperf runs on CPU 0 (and the XDP cache with it: veth runs the receiving end in softirq
/// inside the sender's calls); unbound on CPU 1.
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
/// dnsperf's queries outstanding in the flat-out runs.
const OUTSTANDING: u32 = 200;

pub struct CacheSettings {
    pub mode: &'static str,
    /// Popular names in the query set.
    pub names: usize,
    /// Lines of the query file (names drawn by popularity, with their types).
    pub lines: usize,
    /// Length of every run.
    pub seconds: u64,
    pub rounds: usize,
    /// The fixed rate of the latency runs, queries per second.
    pub latency_rate: u32,
    /// dnsperf's clients (sockets).
    pub clients: usize,
    pub seed: u64,
    pub out: PathBuf,
}

/// The two ways to unbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// unbound alone, answering from its own cache.
    Unbound,
    /// The same unbound behind Palisade, answered from the XDP cache.
    PalisadeCache,
}

impl Route {
    const ALL: [Self; 2] = [Self::Unbound, Self::PalisadeCache];

    const fn label(self) -> &'static str {
        match self {
            Self::Unbound => "(a) unbound alone, its cache warm",
            Self::PalisadeCache => "(b) the same unbound behind Palisade, XDP cache warm",
        }
    }

    const fn addrs(self) -> (&'static str, &'static str) {
        match self {
            Self::Unbound => (PLAIN_CLIENT, PLAIN_SERVER),
            Self::PalisadeCache => (GUARD_CLIENT, GUARD_SERVER),
        }
    }
}

/// Flat out, or at a fixed rate with every answer's latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Throughput,
    Latency,
}

// ---------------------------------------------------------------------------------------------
// Names and queries

fn random_label(rng: &mut Rng) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let len = 3 + rng.below(9) as usize;
    (0..len)
        .map(|_| ALPHA[rng.below(26) as usize] as char)
        .collect()
}

/// `n` distinct names of one or two labels under a TLD, most popular first.
fn popular_names(n: usize, rng: &mut Rng) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut name = random_label(rng);
        if rng.chance(50) {
            name = format!("{}.{name}", random_label(rng));
        }
        let name = format!("{name}.{}", TLDS[rng.below(TLDS.len() as u64) as usize]);
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    out
}

/// Draws a rank in `0..cumulative.len()` with the weights whose running sums are `cumulative`.
fn draw(cumulative: &[f64], rng: &mut Rng) -> usize {
    let total = cumulative.last().copied().unwrap_or(0.0);
    let x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    cumulative
        .partition_point(|&c| c <= x)
        .min(cumulative.len() - 1)
}

fn draw_type(rng: &mut Rng) -> &'static str {
    let mut x = rng.below(100);
    for (t, share) in QTYPES {
        if x < share {
            return t;
        }
        x -= share;
    }
    QTYPES[0].0
}

/// Every letter of `name` in a random case.
fn mixed_case(name: &str, rng: &mut Rng) -> String {
    name.chars()
        .map(|c| {
            if rng.chance(50) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// The measured query file: `lines` lines `<name> <type>`, names drawn with Zipf weights
/// (rank r has weight 1/r, as popular names are), types by [`QTYPES`], and
/// [`MIXED_CASE_PERCENT`] of the names in random case.
fn query_lines(names: &[String], lines: usize, rng: &mut Rng) -> String {
    let mut cumulative = Vec::with_capacity(names.len());
    let mut sum = 0.0;
    for r in 1..=names.len() {
        sum += 1.0 / r as f64;
        cumulative.push(sum);
    }
    let mut f = String::with_capacity(lines * 24);
    for _ in 0..lines {
        let name = &names[draw(&cumulative, rng)];
        let t = draw_type(rng);
        if rng.chance(MIXED_CASE_PERCENT) {
            let _ = writeln!(f, "{} {t}", mixed_case(name, rng));
        } else {
            let _ = writeln!(f, "{name} {t}");
        }
    }
    f
}

/// Every (name, type) once: the warm-up.
fn every_question(names: &[String]) -> String {
    let mut f = String::new();
    for n in names {
        for (t, _) in QTYPES {
            let _ = writeln!(f, "{n} {t}");
        }
    }
    f
}

// ---------------------------------------------------------------------------------------------
// Servers

fn unbound_common(dir: &Path, tag: &str) -> String {
    let d = dir.display();
    format!(
        "server:\n\
         \x20   port: 53\n\
         \x20   do-daemonize: no\n\
         \x20   use-systemd: no\n\
         \x20   username: \"\"\n\
         \x20   chroot: \"\"\n\
         \x20   directory: \"{d}\"\n\
         \x20   pidfile: \"{d}/{tag}.pid\"\n\
         \x20   logfile: \"{d}/{tag}.log\"\n\
         \x20   use-syslog: no\n\
         \x20   verbosity: 0\n\
         \x20   num-threads: 1\n\
         \x20   so-reuseport: no\n\
         \x20   interface-automatic: no\n\
         \x20   do-ip4: yes\n\
         \x20   do-ip6: no\n\
         \x20   access-control: 0.0.0.0/0 allow\n\
         \x20   module-config: \"iterator\"\n"
    )
}

/// The authoritative side: every record of every name, in static zones.
fn backend_conf(dir: &Path, names: &[String]) -> Result<PathBuf> {
    let mut conf = unbound_common(dir, "backend").replace("port: 53", "port: 5353");
    conf += "    interface: 127.0.0.1\n";
    for tld in TLDS {
        let _ = writeln!(conf, "    local-zone: \"{tld}.\" static");
    }
    for (i, n) in names.iter().enumerate() {
        let (hi, lo) = (i / 250 % 250 + 1, i % 250 + 1);
        let _ = writeln!(
            conf,
            "    local-data: \"{n}. {RECORD_TTL} IN A 198.51.{hi}.{lo}\"\n\
             \x20   local-data: \"{n}. {RECORD_TTL} IN AAAA 2001:db8::{i:x}\"\n\
             \x20   local-data: \"{n}. {RECORD_TTL} IN MX 10 mail.{n}.\"\n\
             \x20   local-data: '{n}. {RECORD_TTL} IN TXT \"v=spf1 -all\"'"
        );
    }
    conf += "remote-control:\n    control-enable: no\n";
    let path = dir.join("backend.conf");
    fs::write(&path, conf)?;
    Ok(path)
}

/// The measured resolver: on both pairs' server addresses, forwarding everything to the
/// authoritative side and caching what it gets.
fn front_conf(dir: &Path) -> Result<PathBuf> {
    let mut conf = unbound_common(dir, "unbound");
    let _ = write!(
        conf,
        "    interface: {PLAIN_SERVER}\n\
         \x20   interface: {GUARD_SERVER}\n\
         \x20   do-not-query-localhost: no\n\
         \x20   msg-cache-size: 64m\n\
         \x20   rrset-cache-size: 64m\n\
         forward-zone:\n\
         \x20   name: \".\"\n\
         \x20   forward-addr: {BACKEND}\n\
         remote-control:\n\
         \x20   control-enable: no\n"
    );
    let path = dir.join("unbound.conf");
    fs::write(&path, conf)?;
    Ok(path)
}

/// A process in a namespace, stopped when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(ns: &Netns, program: &str, args: &[&str], cpu: usize) -> Result<Self> {
        let mut cmd = ns.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: sched_setaffinity only, async-signal-safe.
        unsafe { cmd.pre_exec(move || set_affinity(cpu)) };
        Ok(Self {
            child: cmd.spawn().with_context(|| format!("starting {program}"))?,
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private bpffs for the daemon's pins, unmounted and removed when dropped.
struct PinFs {
    dir: PathBuf,
    bpffs: PathBuf,
}

impl PinFs {
    fn new(dir: &Path) -> Result<Self> {
        let bpffs = dir.join("bpf");
        fs::create_dir_all(&bpffs)?;
        crate::live::tools::run_checked(
            Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs),
            "mounting a bpffs",
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            bpffs,
        })
    }

    fn pins(&self) -> PathBuf {
        self.bpffs.join("palisade")
    }
}

impl Drop for PinFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.bpffs).output();
    }
}

/// The real daemon on the guarded pair's server end; stopped and unloaded when dropped.
struct Daemon {
    child: Child,
    bin: PathBuf,
    socket: PathBuf,
    pins: PathBuf,
}

/// The daemon's policy: an ingress scope that blocks one name (the cache is served by its
/// hook) and the cache in front of unbound on the guarded address. Answers from the cache
/// spend the per-client answer budget (`[dns] answer_rate`, 50/s by default): it is off here,
/// as on a host serving its own network at these rates.
fn policy() -> String {
    format!(
        "[dns]\nanswer_rate = 0\n\n[dns.ingress]\nmode = \"blocklist\"\nlists = [\"bad\"]\n\n\
         [dns.lists.bad]\nnames = [\"blocked.test\"]\n\n\
         [dns.cache]\nenabled = true\nresolver = \"{GUARD_SERVER}:53\"\n\
         capacity = {CACHE_CAPACITY}\n"
    )
}

impl Daemon {
    fn start(server: &Netns, pinfs: &PinFs) -> Result<Self> {
        let bin = std::env::current_exe()?.with_file_name("palisade");
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build --release -p palisade)",
                bin.display()
            );
        }
        let policy_path = pinfs.dir.join("policy.toml");
        fs::write(&policy_path, policy())?;
        let socket = pinfs.dir.join("palisade.sock");
        let mut child = server
            .command(bin.to_str().unwrap_or("palisade"))
            .arg("--socket")
            .arg(&socket)
            .arg("run")
            .arg("--config")
            .arg(&policy_path)
            .args(["--iface", GUARD_SERVER_IF, "--quiet", "--pin-dir"])
            .arg(pinfs.pins())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the daemon")?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
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
            pins: pinfs.pins(),
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

    /// The cache's counters from `palisade stats --json`, by name (`hits`, `misses`,
    /// `entries`, `evictions`, ...).
    fn cache_counters(&self) -> Result<BTreeMap<String, u64>> {
        let out = Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(["stats", "--json"])
            .output()
            .context("palisade stats")?;
        if !out.status.success() {
            bail!(
                "palisade stats: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let list = v["counters"]["dns_cache"]
            .as_array()
            .ok_or_else(|| anyhow!("no counters.dns_cache in palisade stats --json"))?;
        Ok(list
            .iter()
            .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["value"].as_u64()?)))
            .collect())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(["unload", "--pin-dir"])
            .arg(&self.pins)
            .output();
    }
}

/// Everything set up. Fields drop in order: the daemon (its programs), the client XDP
/// programs, the resolvers, the bpffs, then the namespaces.
struct Lab {
    daemon: Daemon,
    _client_xdp: Loaded,
    front: Proc,
    _backend: Proc,
    _pins: PinFs,
    client: Netns,
    _server: Netns,
}

fn veth(
    client: &Netns,
    server: &Netns,
    (cif, caddr): (&str, &str),
    (sif, saddr): (&str, &str),
) -> Result<()> {
    client.ip(&[
        "link",
        "add",
        cif,
        "type",
        "veth",
        "peer",
        "name",
        sif,
        "netns",
        &server.name,
    ])?;
    for (ns, ifname, addr) in [(client, cif, caddr), (server, sif, saddr)] {
        ns.ip(&["addr", "add", &format!("{addr}/30"), "dev", ifname])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

impl Lab {
    fn new(dir: &Path, names: &[String]) -> Result<Self> {
        let client = Netns::create("dc-c")?;
        let server = Netns::create("dc-s")?;
        for ns in [&client, &server] {
            let _ = ns
                .command("sysctl")
                .args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"])
                .status();
        }
        veth(
            &client,
            &server,
            (PLAIN_CLIENT_IF, PLAIN_CLIENT),
            (PLAIN_SERVER_IF, PLAIN_SERVER),
        )?;
        veth(
            &client,
            &server,
            (GUARD_CLIENT_IF, GUARD_CLIENT),
            (GUARD_SERVER_IF, GUARD_SERVER),
        )?;
        // veth hands an XDP_TX frame to its peer only when the peer runs XDP: both client
        // ends get the same pass-through program, so both paths are the same on that side.
        let mut client_xdp = Loaded::new(false).context("loading the kernel object")?;
        let prog = client_xdp.xdp_mut(FLOOR_PASS)?;
        for ifname in [PLAIN_CLIENT_IF, GUARD_CLIENT_IF] {
            client
                .enter(|| prog.attach(ifname, XdpMode::Driver))?
                .map_err(|e| anyhow!("attaching {FLOOR_PASS} to {ifname}: {e}"))?;
        }
        let backend_path = backend_conf(dir, names)?;
        let backend = Proc::spawn(
            &server,
            "unbound",
            &["-d", "-c", &backend_path.display().to_string()],
            SERVER_CPU,
        )?;
        let front_path = front_conf(dir)?;
        let front = Proc::spawn(
            &server,
            "unbound",
            &["-d", "-c", &front_path.display().to_string()],
            SERVER_CPU,
        )?;
        let pins = PinFs::new(dir)?;
        let daemon = Daemon::start(&server, &pins)?;
        Ok(Self {
            daemon,
            _client_xdp: client_xdp,
            front,
            _backend: backend,
            _pins: pins,
            client,
            _server: server,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// dnsperf

/// How one dnsperf process ended.
struct Finished {
    out: String,
    /// User + system time (`wait4`), seconds.
    cpu_s: f64,
}

/// Runs dnsperf in the client namespace on [`CLIENT_CPU`] from `client` to `server` with
/// `args`, to the end.
fn dnsperf(
    lab: &Lab,
    (client, server): (&str, &str),
    file: &Path,
    args: &[String],
) -> Result<Finished> {
    let mut cmd = lab.client.command("dnsperf");
    cmd.args(["-s", server, "-a", client, "-d"])
        .arg(file)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: sched_setaffinity only, async-signal-safe.
    unsafe { cmd.pre_exec(|| set_affinity(CLIENT_CPU)) };
    let mut child = cmd.spawn().context("starting dnsperf")?;
    let mut stdout = child.stdout.take().context("dnsperf stdout")?;
    let mut stderr = child.stderr.take().context("dnsperf stderr")?;
    let out_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut status = 0;
    // SAFETY: a zeroed rusage filled in by wait4 for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if waited < 0 {
        bail!("wait4 dnsperf: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("dnsperf failed: {}{}", err.trim(), out.trim());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Finished {
        out,
        cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
    })
}

/// Latencies in microseconds of every answer dnsperf `-v` printed (`> RCODE name type s`).
fn latencies_us(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e6)
        .collect()
}

/// The `p`-th percentile (0..=100, to a tenth) of sorted `v`, nearest rank. The rank is
/// computed in integers: in floating point, 99.9 % of 1000 rounds up to rank 1000.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let permille = (p * 10.0).round() as usize;
    let rank = (permille * sorted.len()).div_ceil(1000);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    pub answers: usize,
}

impl Latency {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self {
            p50_us: percentile(&v, 50.0),
            p90_us: percentile(&v, 90.0),
            p99_us: percentile(&v, 99.0),
            p999_us: percentile(&v, 99.9),
            max_us: v.last().copied().unwrap_or(0.0),
            mean_us: if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            },
            answers: v.len(),
        }
    }
}

/// One run of one path.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub round: usize,
    pub route: Route,
    pub kind: Kind,
    pub wall_s: f64,
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    pub rcodes: Vec<(String, u64)>,
    /// Every answer NOERROR.
    pub all_noerror: bool,
    /// dnsperf + unbound + ksoftirqd per completed query, µs (the scheduler's accounting).
    pub cpu_us_per_query: f64,
    pub dnsperf_us_per_query: f64,
    pub unbound_us_per_query: f64,
    pub ksoftirqd_us_per_query: f64,
    /// Latency runs: every answer's latency.
    pub latency: Option<Latency>,
    /// The cache's counters that moved during the run (hits, misses, inserts, declined).
    pub cache_delta: BTreeMap<String, u64>,
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().copied().map(task_runtime).sum()
}

fn measure(
    lab: &Lab,
    s: &CacheSettings,
    file: &Path,
    round: usize,
    path: Route,
    kind: Kind,
) -> Result<Run> {
    let mut args: Vec<String> = vec![
        "-l".into(),
        s.seconds.to_string(),
        "-c".into(),
        s.clients.to_string(),
        "-T".into(),
        "1".into(),
        "-t".into(),
        "2".into(),
    ];
    match kind {
        Kind::Throughput => args.extend(["-q".into(), OUTSTANDING.to_string()]),
        Kind::Latency => args.extend(["-Q".into(), s.latency_rate.to_string(), "-v".into()]),
    }
    let softirqd = ksoftirqd();
    let unbound = [lab.front.child.id()];
    let c0 = lab.daemon.cache_counters()?;
    let (u0, k0, t0) = (cpu_of(&unbound), cpu_of(&softirqd), Instant::now());
    let done = dnsperf(lab, path.addrs(), file, &args)?;
    let (u1, k1, wall_s) = (
        cpu_of(&unbound),
        cpu_of(&softirqd),
        t0.elapsed().as_secs_f64(),
    );
    let c1 = lab.daemon.cache_counters()?;
    let sum = Summary::parse(&done.out);
    let per_q = |sec: f64| {
        if sum.completed == 0 {
            0.0
        } else {
            sec / sum.completed as f64 * 1e6
        }
    };
    let cache_delta = ["hits", "misses", "inserts", "declined"]
        .iter()
        .map(|k| {
            let d = c1
                .get(*k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(c0.get(*k).copied().unwrap_or(0));
            ((*k).to_string(), d)
        })
        .collect();
    Ok(Run {
        round,
        route: path,
        kind,
        wall_s,
        sent: sum.sent,
        completed: sum.completed,
        lost: sum.lost,
        qps: sum.qps,
        all_noerror: sum.completed > 0
            && sum.rcodes.iter().all(|(c, _)| c == "NOERROR")
            && sum.rcodes.iter().map(|(_, n)| n).sum::<u64>() == sum.completed,
        rcodes: sum.rcodes,
        cpu_us_per_query: per_q(done.cpu_s + (u1 - u0) + (k1 - k0)),
        dnsperf_us_per_query: per_q(done.cpu_s),
        unbound_us_per_query: per_q(u1 - u0),
        ksoftirqd_us_per_query: per_q(k1 - k0),
        latency: (kind == Kind::Latency).then(|| Latency::of(latencies_us(&done.out))),
        cache_delta,
    })
}

// ---------------------------------------------------------------------------------------------
// The suite

/// Median, min and max.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(v: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = v.into_iter().collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            f64::midpoint(v[n / 2 - 1], v[n / 2])
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    fn cell(self, digits: usize) -> String {
        if (self.max - self.min).abs() < f64::EPSILON {
            format!("{:.digits$}", self.median)
        } else {
            format!(
                "{:.digits$} [{:.digits$}–{:.digits$}]",
                self.median, self.min, self.max
            )
        }
    }
}

/// A ratio with three significant digits (0.00412, 0.34, 3.05, 12.3).
fn sig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    format!("{x:.digits$}")
}

#[derive(Debug, Serialize)]
pub struct CacheReport {
    pub suite: &'static str,
    pub mode: &'static str,
    pub command: String,
    pub date: String,
    pub machine: inspect::Machine,
    pub dnsperf_version: String,
    pub unbound_version: String,
    pub names: usize,
    pub query_lines: usize,
    pub qtypes: Vec<(String, u64)>,
    pub mixed_case_percent: u64,
    pub seconds_per_run: u64,
    pub rounds: usize,
    pub clients: usize,
    pub latency_rate_qps: u32,
    pub seed: u64,
    /// The cache after the warm-up, and after the last run.
    pub cache_after_warmup: BTreeMap<String, u64>,
    pub cache_after_runs: BTreeMap<String, u64>,
    pub orders: Vec<Vec<String>>,
    pub runs: Vec<Run>,
    pub loadavg_start: f64,
    pub loadavg_end: f64,
    pub wall_seconds: f64,
}

/// Runs the suite.
///
/// # Errors
/// When a tool is missing, the namespaces, the resolvers or the daemon cannot be set up, or a
/// run fails.
pub fn run(s: &CacheSettings, command: String) -> Result<CacheReport> {
    for tool in ["dnsperf", "unbound"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            bail!("{tool} not found (apt-get install dnsperf unbound)");
        }
    }
    let dir = std::env::temp_dir().join(format!("palisade-dnscache-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let result = run_in(s, command, &dir);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn run_in(s: &CacheSettings, command: String, dir: &Path) -> Result<CacheReport> {
    let started = Instant::now();
    let loadavg_start = inspect::loadavg();
    let mut rng = Rng::new(s.seed);
    let names = popular_names(s.names, &mut rng);
    let measured = dir.join("queries.txt");
    fs::write(&measured, query_lines(&names, s.lines, &mut rng))?;
    let warm = dir.join("warm.txt");
    fs::write(&warm, every_question(&names))?;

    let lab = Lab::new(dir, &names).context("setting up")?;
    // unbound answers once both resolvers are up; the first pass fetches every answer from
    // the authoritative side into its cache, the second (through Palisade) fills the XDP
    // cache from those cached answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = dnsperf(
            &lab,
            Route::Unbound.addrs(),
            &warm,
            &["-n".into(), "1".into(), "-t".into(), "1".into()],
        )?;
        if Summary::parse(&probe.out)
            .rcodes
            .iter()
            .any(|(c, _)| c == "NOERROR")
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("unbound did not answer from its authoritative side within 30 s");
        }
        thread::sleep(Duration::from_millis(200));
    }
    let questions = (names.len() * QTYPES.len()) as u64;
    for path in Route::ALL {
        let w = dnsperf(&lab, path.addrs(), &warm, &["-n".into(), "1".into()])?;
        let sum = Summary::parse(&w.out);
        if sum.completed != questions || sum.rcodes.iter().any(|(c, _)| c != "NOERROR") {
            bail!(
                "warm-up through {}: {} of {questions} answered, rcodes {:?}",
                path.label(),
                sum.completed,
                sum.rcodes
            );
        }
    }
    let t = Instant::now();
    let mut after_warmup = lab.daemon.cache_counters()?;
    while after_warmup.get("entries").copied().unwrap_or(0) < questions
        && t.elapsed() < Duration::from_secs(5)
    {
        thread::sleep(Duration::from_millis(100));
        after_warmup = lab.daemon.cache_counters()?;
    }
    eprintln!(
        "  warm: {questions} questions; the XDP cache holds {} entries",
        after_warmup.get("entries").copied().unwrap_or(0)
    );

    let configs: Vec<(Route, Kind)> = Route::ALL
        .into_iter()
        .flat_map(|p| [(p, Kind::Throughput), (p, Kind::Latency)])
        .collect();
    let mut order_rng = Rng::new(s.seed ^ 0x0063_6163_6865);
    let mut orders = Vec::new();
    let mut runs = Vec::new();
    for round in 0..s.rounds {
        let mut order = configs.clone();
        order_rng.shuffle(&mut order);
        orders.push(
            order
                .iter()
                .map(|(p, k)| format!("{p:?}/{k:?}").to_lowercase())
                .collect(),
        );
        for (path, kind) in order {
            let r = measure(&lab, s, &measured, round, path, kind)?;
            eprintln!(
                "  round {} {:<14} {:<10} {:>9.0} q/s {:6.2} µs CPU/query{} hits {} misses {}",
                round + 1,
                format!("{path:?}"),
                format!("{kind:?}"),
                r.qps,
                r.cpu_us_per_query,
                r.latency
                    .map(|l| format!(", p50 {:.0} µs p99 {:.0} µs", l.p50_us, l.p99_us))
                    .unwrap_or_default(),
                r.cache_delta["hits"],
                r.cache_delta["misses"],
            );
            runs.push(r);
        }
    }
    let after_runs = lab.daemon.cache_counters()?;
    drop(lab);
    Ok(CacheReport {
        suite: "dns-cache",
        mode: s.mode,
        command,
        date: utc_now(),
        machine: inspect::machine(None),
        dnsperf_version: version("dnsperf", "-V"),
        unbound_version: version("unbound", "-V"),
        names: s.names,
        query_lines: s.lines,
        qtypes: QTYPES.iter().map(|(t, p)| ((*t).to_string(), *p)).collect(),
        mixed_case_percent: MIXED_CASE_PERCENT,
        seconds_per_run: s.seconds,
        rounds: s.rounds,
        clients: s.clients,
        latency_rate_qps: s.latency_rate,
        seed: s.seed,
        cache_after_warmup: after_warmup,
        cache_after_runs: after_runs,
        orders,
        runs,
        loadavg_start,
        loadavg_end: inspect::loadavg(),
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .find(|l| l.to_ascii_lowercase().contains("version"))
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Report

impl CacheReport {
    fn of(&self, path: Route, kind: Kind) -> impl Iterator<Item = &Run> {
        self.runs
            .iter()
            .filter(move |r| r.route == path && r.kind == kind)
    }

    fn spread(&self, path: Route, kind: Kind, f: impl Fn(&Run) -> f64) -> Spread {
        Spread::of(self.of(path, kind).map(f))
    }

    /// Ratio (b)/(a) of the medians of `f` over the rounds.
    fn ratio(&self, kind: Kind, f: impl Fn(&Run) -> f64 + Copy) -> f64 {
        let a = self.spread(Route::Unbound, kind, f).median;
        let b = self.spread(Route::PalisadeCache, kind, f).median;
        if a == 0.0 { 0.0 } else { b / a }
    }

    /// Whether every answer of every run on the cache path came from the cache: no miss, and
    /// at least one hit per answer dnsperf counted.
    #[must_use]
    pub fn served_from_cache(&self) -> bool {
        self.runs
            .iter()
            .filter(|r| r.route == Route::PalisadeCache)
            .all(|r| r.cache_delta["misses"] == 0 && r.cache_delta["hits"] >= r.completed)
    }

    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "# DNS response cache: unbound's own cache against Palisade's XDP cache ({} mode)\n",
            self.mode
        );
        let _ = writeln!(
            m,
            "`{}` — {} — {}, Linux {}; dnsperf: {}; unbound: {}. Load average {:.2} at the \
             start, {:.2} at the end. The suite took {:.0} s. One run on this machine.\n",
            self.command,
            self.date,
            self.machine.cpu_model,
            self.machine.kernel,
            self.dnsperf_version,
            self.unbound_version,
            self.loadavg_start,
            self.loadavg_end,
            self.wall_seconds
        );
        let qtypes: Vec<String> = self
            .qtypes
            .iter()
            .map(|(t, p)| format!("{t} {p} %"))
            .collect();
        let _ = writeln!(
            m,
            "One unbound (one thread, pinned to CPU 1) forwards to an authoritative unbound and \
             caches; it listens on two veth pairs from one client namespace. **(a)** reaches it \
             directly; **(b)** crosses the real daemon (`palisade run`, `[dns.cache]` with \
             capacity {CACHE_CAPACITY}) on the server end. Both client ends run the same \
             XDP_PASS program (veth delivers an `XDP_TX` answer only to a peer running XDP). \
             The answer budget is off (`[dns] answer_rate = 0`): cached answers spend it. \
             The query set: {} popular names (rank r drawn with weight 1/r), {} lines, types \
             {}, {} % of the names in random letter case (0x20), every record TTL \
             {RECORD_TTL} s. Before the clock starts every (name, type) is asked once on each \
             path, so unbound's cache and the XDP cache both hold every answer. Each round runs \
             the four configurations in a shuffled order (the orders are in the JSON); {} \
             round(s) of {} s per run; dnsperf pinned to CPU 0, {} clients, one thread. Cells \
             are **median [min–max] over the rounds**.\n",
            self.names,
            self.query_lines,
            qtypes.join(", "),
            self.mixed_case_percent,
            self.rounds,
            self.seconds_per_run,
            self.clients
        );

        m += "## Throughput: dnsperf flat out\n\n";
        let _ = writeln!(
            m,
            "dnsperf with up to {OUTSTANDING} queries outstanding. **CPU per query** is dnsperf \
             (`wait4`) + unbound + ksoftirqd (their scheduler runtime) per answered query: veth \
             runs the receiving end in softirq inside dnsperf's sends, so the XDP cache's work \
             is in dnsperf's system time.\n"
        );
        m += "| path | queries/s | **CPU µs/query** | dnsperf | unbound | ksoftirqd | answers | cache hits | cache misses |\n";
        m += "|---|---:|---:|---:|---:|---:|---|---:|---:|\n";
        for p in Route::ALL {
            let k = Kind::Throughput;
            let answers: u64 = self.of(p, k).map(|r| r.completed).sum();
            let all = self.of(p, k).all(|r| r.all_noerror);
            let (hits, misses) = self.of(p, k).fold((0, 0), |(h, mi), r| {
                (h + r.cache_delta["hits"], mi + r.cache_delta["misses"])
            });
            let _ = writeln!(
                m,
                "| {} | {} | **{}** | {} | {} | {} | {} ({answers}) | {hits} | {misses} |",
                p.label(),
                self.spread(p, k, |r| r.qps).cell(0),
                self.spread(p, k, |r| r.cpu_us_per_query).cell(2),
                self.spread(p, k, |r| r.dnsperf_us_per_query).cell(2),
                self.spread(p, k, |r| r.unbound_us_per_query).cell(2),
                self.spread(p, k, |r| r.ksoftirqd_us_per_query).cell(2),
                if all {
                    "all NOERROR"
                } else {
                    "NOT all NOERROR"
                },
            );
        }
        let _ = writeln!(
            m,
            "\n**Ratios (b)/(a)**: queries/s {}×, CPU per query {}×, unbound's CPU per \
             query {}×.\n",
            sig(self.ratio(Kind::Throughput, |r| r.qps)),
            sig(self.ratio(Kind::Throughput, |r| r.cpu_us_per_query)),
            sig(self.ratio(Kind::Throughput, |r| r.unbound_us_per_query)),
        );

        m += "## Latency: dnsperf at a fixed rate\n\n";
        let _ = writeln!(
            m,
            "dnsperf at {} queries/s (`-Q`), every answer's latency from `-v`, in µs; \
             percentiles by nearest rank over each run, then median [min–max] over rounds.\n",
            self.latency_rate_qps
        );
        m += "| path | queries/s | p50 | p90 | p99 | p99.9 | max | mean | answers |\n";
        m += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        let lat = |p: Route, f: fn(&Latency) -> f64| {
            self.spread(p, Kind::Latency, move |r| r.latency.as_ref().map_or(0.0, f))
        };
        for p in Route::ALL {
            let answers: usize = self
                .of(p, Kind::Latency)
                .filter_map(|r| r.latency.map(|l| l.answers))
                .sum();
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {answers} |",
                p.label(),
                self.spread(p, Kind::Latency, |r| r.qps).cell(0),
                lat(p, |l| l.p50_us).cell(0),
                lat(p, |l| l.p90_us).cell(0),
                lat(p, |l| l.p99_us).cell(0),
                lat(p, |l| l.p999_us).cell(0),
                lat(p, |l| l.max_us).cell(0),
                lat(p, |l| l.mean_us).cell(0),
            );
        }
        let l = |f: fn(&Latency) -> f64| move |r: &Run| r.latency.as_ref().map_or(0.0, f);
        let _ = writeln!(
            m,
            "\n**Ratios (b)/(a)**: p50 {}×, p90 {}×, p99 {}×, p99.9 {}×.\n",
            sig(self.ratio(Kind::Latency, l(|x| x.p50_us))),
            sig(self.ratio(Kind::Latency, l(|x| x.p90_us))),
            sig(self.ratio(Kind::Latency, l(|x| x.p99_us))),
            sig(self.ratio(Kind::Latency, l(|x| x.p999_us))),
        );

        m += "## The cache's counters\n\n";
        let _ = writeln!(
            m,
            "From `palisade stats --json` after the warm-up and after the last run. {}\n",
            if self.served_from_cache() {
                "On path (b) every run counted no miss and at least one hit per answer: the \
                 answers came from the XDP cache."
            } else {
                "On path (b) some run counted misses or fewer hits than answers: NOT every \
                 answer came from the XDP cache."
            }
        );
        m += "| counter | after the warm-up | after the runs |\n|---|---:|---:|\n";
        for (k, v) in &self.cache_after_runs {
            let _ = writeln!(
                m,
                "| {k} | {} | {v} |",
                self.cache_after_warmup.get(k).copied().unwrap_or(0)
            );
        }
        m
    }

    fn terminal(&self) -> String {
        format!(
            "dns cache: queries/s (b)/(a) {}x, CPU/query {}x, p50 latency {}x, p99 {}x; \
             served from the cache: {}",
            sig(self.ratio(Kind::Throughput, |r| r.qps)),
            sig(self.ratio(Kind::Throughput, |r| r.cpu_us_per_query)),
            sig(self.ratio(Kind::Latency, |r| r.latency.map_or(0.0, |l| l.p50_us))),
            sig(self.ratio(Kind::Latency, |r| r.latency.map_or(0.0, |l| l.p99_us))),
            self.served_from_cache()
        )
    }

    /// Writes `dnscache-<mode>.{md,json}` into `out`, prints the summary, and returns the stem.
    ///
    /// # Errors
    /// When the files cannot be written.
    pub fn write(&self, out: &Path) -> Result<String> {
        fs::create_dir_all(out)?;
        let stem = format!("dnscache-{}", self.mode);
        fs::write(out.join(format!("{stem}.md")), self.markdown())?;
        fs::write(
            out.join(format!("{stem}.json")),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        println!("{}", self.terminal());
        Ok(stem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 500.0);
        assert_eq!(percentile(&v, 99.0), 990.0);
        assert_eq!(percentile(&v, 99.9), 999.0);
        assert_eq!(percentile(&v, 100.0), 1000.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn ratios_keep_three_significant_digits() {
        assert_eq!(sig(3.0512), "3.05");
        assert_eq!(sig(0.3412), "0.341");
        assert_eq!(sig(0.003_081), "0.00308");
        assert_eq!(sig(12.34), "12.3");
        assert_eq!(sig(0.0), "0");
    }

    #[test]
    fn verbose_lines_give_latencies() {
        let out = "[Status] Sending\n> NOERROR a.ex.test A 0.000057\n\
                   > NOERROR A.Ex.TEST AAAA 0.011673\nStatistics:\n";
        let l = latencies_us(out);
        assert_eq!(l.len(), 2);
        assert!((l[0] - 57.0).abs() < 1e-6 && (l[1] - 11_673.0).abs() < 1e-6);
    }

    #[test]
    fn popular_names_come_first_and_every_line_has_a_known_type() {
        let names = popular_names(100, &mut Rng::new(3));
        let text = query_lines(&names, 20_000, &mut Rng::new(4));
        let mut counts = vec![0usize; names.len()];
        let mut mixed = 0;
        for line in text.lines() {
            let (name, t) = line.split_once(' ').unwrap();
            assert!(QTYPES.iter().any(|(q, _)| *q == t), "{line}");
            let lower = name.to_ascii_lowercase();
            mixed += usize::from(lower != name);
            counts[names.iter().position(|n| *n == lower).unwrap()] += 1;
        }
        // Weight 1/r: the first name about ten times the tenth.
        assert!(counts[0] > 5 * counts[9], "{counts:?}");
        // Some names in mixed case, most not.
        assert!((2000..6000).contains(&mixed), "{mixed}");
    }

    #[test]
    fn the_warm_up_asks_every_question_once() {
        let names = popular_names(10, &mut Rng::new(1));
        let warm = every_question(&names);
        assert_eq!(warm.lines().count(), 10 * QTYPES.len());
        let unique: std::collections::HashSet<&str> = warm.lines().collect();
        assert_eq!(unique.len(), 10 * QTYPES.len());
    }
}
