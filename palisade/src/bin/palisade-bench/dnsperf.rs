//! The dnsperf suite: what it costs to answer blocked names with NXDOMAIN, Palisade's DNS
//! inspector in XDP against the resolvers people use for blocking (unbound with
//! `always_nxdomain` local zones, dnsmasq with `address=/name/`), all holding the same list.
//!
//! Two private namespaces joined by a veth pair: the client (`dnsperf`) in one, the server in
//! the other. Each configuration runs dnsperf for a fixed time over a query file of blocked
//! names and records the queries per second, the answers by rcode, the CPU time (whole
//! machine from `/proc/stat`, dnsperf's own from `wait4`, the resolver's from
//! `/proc/<pid>/stat`) and the server's memory.

use std::{
    fmt::Write as _,
    fs,
    io::Read as _,
    net::UdpSocket,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{XdpMode, xdp::XdpLinkId};
use palisade::{
    guard::{DNS_INGRESS, FIREWALL},
    policy::model::{Dns, DnsAction, DnsMode, DnsScope, NameEntry, NameList, NameMatch, Policy},
};
use serde::Serialize;

use crate::{
    harness::{FLOOR_PASS, Loaded},
    inspect,
    netns::Netns,
    rng::Rng,
    utc_now, workload,
};

const CLIENT_IF: &str = "dpa0";
const SERVER_IF: &str = "dpb0";
const CLIENT_ADDR: &str = "198.18.53.1";
const SERVER_ADDR: &str = "198.18.53.2";
const TLDS: [&str; 8] = ["com", "net", "org", "io", "de", "ru", "info", "xyz"];

pub struct DnsperfSettings {
    pub mode: &'static str,
    pub sizes: Vec<usize>,
    pub seconds: u64,
    pub load_timeout: Duration,
    pub clients: usize,
    pub seed: u64,
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    Palisade,
    Unbound,
    Dnsmasq,
}

impl Server {
    const fn label(self) -> &'static str {
        match self {
            Self::Palisade => "Palisade XDP (NXDOMAIN), unbound behind",
            Self::Unbound => "unbound, local-zone always_nxdomain",
            Self::Dnsmasq => "dnsmasq, address=/name/",
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Run {
    pub wall_s: f64,
    pub queries_sent: u64,
    pub queries_completed: u64,
    pub queries_lost: u64,
    pub qps: f64,
    /// rcode name to count, as dnsperf reports them.
    pub rcodes: Vec<(String, u64)>,
    pub all_nxdomain: bool,
    /// dnsperf + the server's processes + ksoftirqd, per completed query: every task's CPU
    /// time the run involves, from the scheduler's own accounting (not tick-sampled), and
    /// blind to other work on the machine.
    pub accounted_cpu_us_per_query: f64,
    /// ksoftirqd (all CPUs) per completed query.
    pub ksoftirqd_us_per_query: f64,
    /// Non-idle CPU of the whole machine (user+nice+system+irq+softirq, all CPUs), minus the
    /// idle-baseline rate over the same wall time, per completed query.
    pub total_cpu_us_per_query: f64,
    /// dnsperf's user+system time per completed query.
    pub dnsperf_cpu_us_per_query: f64,
    /// Total minus dnsperf: the brief's server-side estimate (see the caveats).
    pub server_est_cpu_us_per_query: f64,
    /// Softirq time (all CPUs) per completed query; also charged to whichever task was running.
    pub softirq_us_per_query: f64,
    /// The resolver process's user+system time per completed query (for Palisade: the
    /// resolver behind it, which should see nothing).
    pub resolver_cpu_us_per_query: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub server: Server,
    pub label: &'static str,
    pub names: usize,
    /// Time from start to the first NXDOMAIN answer for a listed name (Palisade: load the
    /// object, compile and install the list, attach).
    pub load_s: Option<f64>,
    pub skipped: Option<String>,
    pub run: Option<Run>,
    /// Resolver RSS after the run; for Palisade the memlock of the DNS maps.
    pub memory_bytes: u64,
    /// For Palisade: RSS of the resolver behind it.
    pub backend_rss_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct DnsperfReport {
    pub suite: &'static str,
    pub mode: &'static str,
    pub command: String,
    pub date: String,
    pub machine: inspect::Machine,
    pub dnsperf_version: String,
    pub unbound_version: String,
    pub dnsmasq_version: String,
    pub seconds_per_run: u64,
    pub clients: usize,
    pub idle_baseline_cpu_fraction: f64,
    pub loadavg_start: f64,
    pub loadavg_end: f64,
    pub configs: Vec<Config>,
}

// ---------------------------------------------------------------------------------------------
// CPU and memory readings

fn clk_tck() -> f64 {
    // SAFETY: plain sysconf.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// (non-idle, softirq) seconds of the whole machine.
fn proc_stat() -> Result<(f64, f64)> {
    let text = fs::read_to_string("/proc/stat")?;
    let line = text
        .lines()
        .next()
        .ok_or_else(|| anyhow!("empty /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    Ok((busy as f64 / clk_tck(), v[6] as f64 / clk_tck()))
}

/// utime + stime of a process, seconds.
fn proc_cpu(pid: u32) -> f64 {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (get(11) + get(12)) as f64 / clk_tck()
}

fn proc_rss(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn set_affinity(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn version(cmd: &str, arg: &str) -> String {
    std::process::Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .find(|l| l.to_ascii_lowercase().contains("version"))
                .unwrap_or("")
                .split("  ")
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Names, queries

fn random_label(rng: &mut Rng) -> String {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let len = 3 + rng.below(10) as usize;
    (0..len)
        .map(|_| {
            let i = if rng.chance(90) {
                rng.below(26)
            } else {
                rng.below(36)
            };
            ALNUM[i as usize] as char
        })
        .collect()
}

fn names(n: usize, rng: &mut Rng) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let labels = 1 + rng.below(3) as usize;
        let mut name: Vec<String> = (0..labels).map(|_| random_label(rng)).collect();
        name.push(TLDS[rng.below(TLDS.len() as u64) as usize].to_string());
        let name = name.join(".");
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    out
}

fn policy(list: &[String]) -> Policy {
    let mut p = workload::empty_policy();
    p.dns = Dns {
        ports: vec![53],
        ingress: Some(DnsScope {
            mode: DnsMode::Blocklist,
            action: DnsAction::Nxdomain,
            audit: false,
            lists: vec![0],
            block_malformed: false,
            rate: None,
            log_allowed: false,
        }),
        egress: None,
        lists: vec![NameList {
            name: "dnsperf".into(),
            entries: list
                .iter()
                .map(|n| NameEntry {
                    labels: n.split('.').map(|l| l.as_bytes().to_vec()).collect(),
                    kind: NameMatch::Exact,
                    qtypes: vec![],
                    expires: None,
                    max_entropy: None,
                    line: 0,
                })
                .collect(),
        }],
    };
    p
}

/// A type A query for `name`, id `id`.
fn query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Sends one query for `name` from the client namespace; true on an NXDOMAIN answer.
fn probe(client: &Netns, name: &str) -> Result<bool> {
    client.enter(|| -> Result<bool> {
        let sock = UdpSocket::bind((CLIENT_ADDR, 0))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let id = 0x5a5a;
        sock.send_to(&query(name, id), (SERVER_ADDR, 53))?;
        let mut buf = [0u8; 1500];
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            return Ok(false);
        };
        Ok(n >= 12 && buf[..2] == id.to_be_bytes() && buf[3] & 0x0f == 3)
    })?
}

/// Waits until `name` gets NXDOMAIN, or the child exits, or the timeout passes.
fn wait_serving(
    client: &Netns,
    name: &str,
    child: Option<&mut Child>,
    timeout: Duration,
) -> Result<Option<f64>> {
    let start = Instant::now();
    let mut child = child;
    loop {
        if probe(client, name)? {
            return Ok(Some(start.elapsed().as_secs_f64()));
        }
        if let Some(c) = child.as_deref_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!("server exited ({status}) before serving");
        }
        if start.elapsed() > timeout {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Servers

struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(ns: &Netns, program: &str, args: &[&str], cpu: usize) -> Result<Proc> {
    let mut cmd = ns.command(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: sched_setaffinity only, async-signal-safe.
    unsafe { cmd.pre_exec(move || set_affinity(cpu)) };
    Ok(Proc {
        child: cmd.spawn().with_context(|| format!("starting {program}"))?,
    })
}

fn unbound_conf(dir: &Path, blocked: &[String]) -> Result<PathBuf> {
    let d = dir.display();
    let mut conf = format!(
        "server:\n\
         \x20   interface: {SERVER_ADDR}\n\
         \x20   port: 53\n\
         \x20   do-daemonize: no\n\
         \x20   use-systemd: no\n\
         \x20   username: \"\"\n\
         \x20   chroot: \"\"\n\
         \x20   directory: \"{d}\"\n\
         \x20   pidfile: \"{d}/unbound.pid\"\n\
         \x20   logfile: \"{d}/unbound.log\"\n\
         \x20   use-syslog: no\n\
         \x20   verbosity: 0\n\
         \x20   num-threads: 1\n\
         \x20   so-reuseport: no\n\
         \x20   interface-automatic: no\n\
         \x20   do-ip4: yes\n\
         \x20   do-ip6: no\n\
         \x20   do-udp: yes\n\
         \x20   do-tcp: yes\n\
         \x20   access-control: 0.0.0.0/0 allow\n\
         \x20   module-config: \"iterator\"\n\
         \x20   do-not-query-localhost: yes\n\
         \x20   local-zone: \".\" refuse\n\
         \x20   local-zone: \"allowed.test.\" static\n\
         \x20   local-data: \"allowed.test. 60 IN A 192.0.2.1\"\n"
    );
    conf.reserve(blocked.len() * 48);
    for n in blocked {
        let _ = writeln!(conf, "    local-zone: \"{n}.\" always_nxdomain");
    }
    conf += "remote-control:\n    control-enable: no\n";
    let path = dir.join("unbound.conf");
    fs::write(&path, conf)?;
    Ok(path)
}

fn dnsmasq_conf(dir: &Path, blocked: &[String]) -> Result<PathBuf> {
    let mut conf = format!(
        "port=53\nlisten-address={SERVER_ADDR}\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\n\
         user=root\npid-file=\nlog-facility={}/dnsmasq.log\n",
        dir.display()
    );
    conf.reserve(blocked.len() * 24);
    for n in blocked {
        let _ = writeln!(conf, "address=/{n}/");
    }
    let path = dir.join("dnsmasq.conf");
    fs::write(&path, conf)?;
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// dnsperf

struct Perf {
    out: String,
    cpu_s: f64,
    wall_s: f64,
    busy_s: f64,
    softirq_s: f64,
    resolver_s: f64,
    ksoftirqd_s: f64,
}

/// Pids of the ksoftirqd threads.
fn ksoftirqd() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.starts_with("ksoftirqd/"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn run_dnsperf(
    client: &Netns,
    queryfile: &Path,
    s: &DnsperfSettings,
    resolver: &[u32],
) -> Result<Perf> {
    let mut cmd = client.command("dnsperf");
    cmd.args(["-s", SERVER_ADDR, "-a", CLIENT_ADDR, "-d"])
        .arg(queryfile)
        .args([
            "-l",
            &s.seconds.to_string(),
            "-c",
            &s.clients.to_string(),
            "-T",
            "1",
            "-t",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: sched_setaffinity only.
    unsafe { cmd.pre_exec(|| set_affinity(0)) };
    let softirqd = ksoftirqd();
    let k0: f64 = softirqd.iter().copied().map(proc_cpu).sum();
    let r0: f64 = resolver.iter().copied().map(proc_cpu).sum();
    let (b0, sq0) = proc_stat()?;
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("starting dnsperf")?;
    let mut out = String::new();
    child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout"))?
        .read_to_string(&mut out)?;
    let mut err = String::new();
    child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr"))?
        .read_to_string(&mut err)?;
    let mut status = 0;
    // SAFETY: a zeroed rusage filled in by wait4 for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) } < 0 {
        bail!("wait4 dnsperf: {}", std::io::Error::last_os_error());
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let (b1, sq1) = proc_stat()?;
    let r1: f64 = resolver.iter().copied().map(proc_cpu).sum();
    let k1: f64 = softirqd.iter().copied().map(proc_cpu).sum();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("dnsperf failed: {}{}", err.trim(), out.trim());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Perf {
        out,
        cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
        wall_s,
        busy_s: b1 - b0,
        softirq_s: sq1 - sq0,
        resolver_s: r1 - r0,
        ksoftirqd_s: k1 - k0,
    })
}

fn field(out: &str, key: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(|r| r.trim().to_string())
}

fn first_num<T: std::str::FromStr + Default>(s: Option<String>) -> T {
    s.and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_default()
}

fn parse(p: &Perf, idle_rate: f64) -> Run {
    let completed: u64 = first_num(field(&p.out, "Queries completed:"));
    let rcodes: Vec<(String, u64)> = field(&p.out, "Response codes:")
        .map(|r| {
            r.split(',')
                .filter_map(|part| {
                    let mut it = part.split_whitespace();
                    Some((it.next()?.to_string(), it.next()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let per_q = |sec: f64| {
        if completed == 0 {
            0.0
        } else {
            sec / completed as f64 * 1e6
        }
    };
    let total = (p.busy_s - idle_rate * p.wall_s).max(0.0);
    Run {
        wall_s: p.wall_s,
        queries_sent: first_num(field(&p.out, "Queries sent:")),
        queries_completed: completed,
        queries_lost: first_num(field(&p.out, "Queries lost:")),
        qps: first_num(field(&p.out, "Queries per second:")),
        all_nxdomain: completed > 0
            && rcodes.iter().all(|(c, _)| c == "NXDOMAIN")
            && rcodes.iter().map(|(_, n)| n).sum::<u64>() == completed,
        rcodes,
        accounted_cpu_us_per_query: per_q(p.cpu_s + p.resolver_s + p.ksoftirqd_s),
        ksoftirqd_us_per_query: per_q(p.ksoftirqd_s),
        total_cpu_us_per_query: per_q(total),
        dnsperf_cpu_us_per_query: per_q(p.cpu_s),
        server_est_cpu_us_per_query: per_q((total - p.cpu_s).max(0.0)),
        softirq_us_per_query: per_q(p.softirq_s),
        resolver_cpu_us_per_query: per_q(p.resolver_s),
    }
}

// ---------------------------------------------------------------------------------------------
// The suite

fn topology() -> Result<(Netns, Netns)> {
    let a = Netns::create("dpa")?;
    let b = Netns::create("dpb")?;
    a.ip(&[
        "link", "add", CLIENT_IF, "type", "veth", "peer", "name", SERVER_IF, "netns", &b.name,
    ])?;
    for (ns, ifname, addr) in [(&a, CLIENT_IF, CLIENT_ADDR), (&b, SERVER_IF, SERVER_ADDR)] {
        let _ = ns
            .command("sysctl")
            .args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            .status();
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok((a, b))
}

fn attach(loaded: &mut Loaded, ns: &Netns, prog: &'static str, ifname: &str) -> Result<XdpLinkId> {
    let p = loaded.xdp_mut(prog)?;
    ns.enter(|| p.attach(ifname, XdpMode::Driver))?
        .map_err(|e| anyhow!("attaching {prog} to {ifname}: {e}"))
}

/// Runs the suite and writes `dnsperf-<mode>.{md,json}`.
///
/// # Errors
/// When the namespaces cannot be set up, dnsperf is missing or a configuration fails.
pub fn run(s: &DnsperfSettings, command: String) -> Result<DnsperfReport> {
    for tool in ["dnsperf", "unbound", "dnsmasq"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            bail!("{tool} not found (apt-get install dnsperf unbound dnsmasq)");
        }
    }
    let loadavg_start = inspect::loadavg();
    let dir = std::env::temp_dir().join(format!("palisade-dnsperf-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let result = run_in(s, command, &dir, loadavg_start);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn run_in(
    s: &DnsperfSettings,
    command: String,
    dir: &Path,
    loadavg_start: f64,
) -> Result<DnsperfReport> {
    let (a, b) = topology()?;
    // veth hands an XDP_TX frame to its peer only when the peer runs XDP: the client end gets
    // an XDP_PASS program for every configuration, so all of them see the same client path.
    let mut base = Loaded::new(false).context("loading the kernel object")?;
    let _client_pass = attach(&mut base, &a, FLOOR_PASS, CLIENT_IF)?;

    // Idle baseline: what the machine burns with nothing of ours running.
    let (i0, _) = proc_stat()?;
    let t = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let idle_rate = (proc_stat()?.0 - i0) / t.elapsed().as_secs_f64();
    eprintln!("  idle baseline: {:.1} % of one CPU", idle_rate * 100.0);

    let mut rng = Rng::new(s.seed);
    let mut configs = Vec::new();
    for &n in &s.sizes {
        let list = names(n, &mut rng);
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        let mut qf = String::with_capacity(n * 24);
        for &i in &order {
            let _ = writeln!(qf, "{} A", list[i]);
        }
        let queryfile = dir.join(format!("queries-{n}.txt"));
        fs::write(&queryfile, qf)?;
        for server in [Server::Palisade, Server::Unbound, Server::Dnsmasq] {
            eprintln!("  {:<40} {n:>8} names ...", server.label());
            let c = measure(server, n, &list, &queryfile, &a, &b, dir, s, idle_rate)
                .with_context(|| format!("{} with {n} names", server.label()))?;
            match (&c.run, &c.skipped) {
                (Some(r), _) => eprintln!(
                    "    load {:.1} s, {:.0} q/s, {:.2} us CPU/query, rcodes {:?}",
                    c.load_s.unwrap_or(0.0),
                    r.qps,
                    r.accounted_cpu_us_per_query,
                    r.rcodes
                ),
                (None, Some(why)) => eprintln!("    skipped: {why}"),
                _ => {}
            }
            configs.push(c);
        }
    }
    Ok(DnsperfReport {
        suite: "dnsperf",
        mode: s.mode,
        command,
        date: utc_now(),
        machine: inspect::machine(None),
        dnsperf_version: version("dnsperf", "-V"),
        unbound_version: version("unbound", "-V"),
        dnsmasq_version: version("dnsmasq", "--version"),
        seconds_per_run: s.seconds,
        clients: s.clients,
        idle_baseline_cpu_fraction: idle_rate,
        loadavg_start,
        loadavg_end: inspect::loadavg(),
        configs,
    })
}

#[allow(clippy::too_many_arguments)]
fn measure(
    server: Server,
    n: usize,
    list: &[String],
    queryfile: &Path,
    a: &Netns,
    b: &Netns,
    dir: &Path,
    s: &DnsperfSettings,
    idle_rate: f64,
) -> Result<Config> {
    let mut c = Config {
        server,
        label: server.label(),
        names: n,
        load_s: None,
        skipped: None,
        run: None,
        memory_bytes: 0,
        backend_rss_bytes: None,
    };
    let probe_name = &list[0];
    match server {
        Server::Palisade => {
            let sub = dir.join("behind");
            fs::create_dir_all(&sub)?;
            let conf = unbound_conf(&sub, &[])?;
            let conf = conf.display().to_string();
            let behind = spawn_server(b, "unbound", &["-d", "-c", &conf], 1)?;
            let t = Instant::now();
            let mut loaded = Loaded::new(true).context("loading the kernel object")?;
            if let Some(f) = loaded.failures.iter().find(|f| f.program == DNS_INGRESS) {
                bail!("{DNS_INGRESS} failed to load: {}", f.summary);
            }
            loaded.install(&policy(list)).context("installing")?;
            let link = attach(&mut loaded, b, FIREWALL, SERVER_IF)?;
            c.load_s = wait_serving(a, probe_name, None, s.load_timeout)?
                .map(|w| t.elapsed().as_secs_f64().max(w));
            if c.load_s.is_none() {
                bail!("Palisade did not answer NXDOMAIN for a listed name");
            }
            let perf = run_dnsperf(a, queryfile, s, &[behind.pid()])?;
            c.run = Some(parse(&perf, idle_rate));
            c.memory_bytes = inspect::maps_of(&loaded.ebpf, DNS_INGRESS)?
                .values()
                .map(|m| m.memlock_bytes)
                .sum();
            c.backend_rss_bytes = Some(proc_rss(behind.pid()));
            loaded
                .xdp_mut(FIREWALL)?
                .detach(link)
                .map_err(|e| anyhow!("detaching: {e}"))?;
            drop(behind);
        }
        Server::Unbound | Server::Dnsmasq => {
            let sub = dir.join(format!("{server:?}-{n}").to_lowercase());
            fs::create_dir_all(&sub)?;
            let t = Instant::now();
            let mut proc = if server == Server::Unbound {
                let conf = unbound_conf(&sub, list)?.display().to_string();
                spawn_server(b, "unbound", &["-d", "-c", &conf], 1)?
            } else {
                let conf = dnsmasq_conf(&sub, list)?.display().to_string();
                spawn_server(b, "dnsmasq", &["-k", "-C", &conf], 1)?
            };
            let served = wait_serving(a, probe_name, Some(&mut proc.child), s.load_timeout)?;
            let Some(_) = served else {
                c.skipped = Some(format!(
                    "did not serve within {} s of starting (config written and parsed \
                     included)",
                    s.load_timeout.as_secs()
                ));
                return Ok(c);
            };
            c.load_s = Some(t.elapsed().as_secs_f64());
            let perf = run_dnsperf(a, queryfile, s, &[proc.pid()])?;
            c.run = Some(parse(&perf, idle_rate));
            c.memory_bytes = proc_rss(proc.pid());
        }
    }
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// Report

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

impl DnsperfReport {
    fn table(&self) -> String {
        let mut m = String::from(
            "| server | names | ready (s) | queries/s | completed | lost | rcodes | **CPU µs/query** (dnsperf + server + ksoftirqd) | dnsperf | resolver process | ksoftirqd | machine total (/proc/stat) | machine total − dnsperf | softirq (/proc/stat) | memory (MiB) | q/s vs Palisade | CPU/query vs Palisade |\n\
             |---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for c in &self.configs {
            let pal = self
                .configs
                .iter()
                .find(|p| p.server == Server::Palisade && p.names == c.names)
                .and_then(|p| p.run.as_ref());
            let Some(r) = &c.run else {
                let _ = writeln!(
                    m,
                    "| {} | {} | – | – | – | – | – | – | – | – | – | – | – | – | – | – | – |",
                    c.label, c.names
                );
                continue;
            };
            let rc = r
                .rcodes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mem = match c.backend_rss_bytes {
                Some(rss) => format!("{} maps (+{} resolver RSS)", mib(c.memory_bytes), mib(rss)),
                None => format!("{} RSS", mib(c.memory_bytes)),
            };
            let (qr, cr) = pal.map_or((String::new(), String::new()), |p| {
                (
                    format!("{:.2}×", r.qps / p.qps),
                    format!(
                        "{:.2}×",
                        r.accounted_cpu_us_per_query / p.accounted_cpu_us_per_query
                    ),
                )
            });
            let _ = writeln!(
                m,
                "| {} | {} | {:.1} | {:.0} | {} | {} | {}{} | **{:.2}** | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                c.label,
                c.names,
                c.load_s.unwrap_or(0.0),
                r.qps,
                r.queries_completed,
                r.queries_lost,
                rc,
                if r.all_nxdomain {
                    ""
                } else {
                    " (**not all NXDOMAIN**)"
                },
                r.accounted_cpu_us_per_query,
                r.dnsperf_cpu_us_per_query,
                r.resolver_cpu_us_per_query,
                r.ksoftirqd_us_per_query,
                r.total_cpu_us_per_query,
                r.server_est_cpu_us_per_query,
                r.softirq_us_per_query,
                mem,
                qr,
                cr
            );
        }
        for c in self.configs.iter().filter(|c| c.skipped.is_some()) {
            let _ = writeln!(
                m,
                "\n{} with {} names: {}.",
                c.label,
                c.names,
                c.skipped.as_deref().unwrap_or("")
            );
        }
        m
    }

    fn markdown(&self) -> String {
        format!(
            "# dnsperf: answering blocked names with NXDOMAIN ({} mode)\n\n\
             `{}` — {} — {} ({} CPUs), Linux {}; dnsperf: {}; unbound: {}; dnsmasq: {}. \
             Load average {:.2} at the start, {:.2} at the end; idle baseline {:.1} % of one CPU \
             (subtracted from the totals).\n\n\
             dnsperf in one namespace (pinned to CPU 0, {} clients, one thread, unlimited rate, \
             {} s per run) queries the server in another over a veth pair; every query is a \
             listed name (exact, type A), in a shuffled order over the whole list. Servers are \
             pinned to CPU 1. See `bench/README.md` (\"Method: the dnsperf suite\") for how the \
             CPU columns are measured and why **CPU per query** is the column to compare.\n\n\
             {}\n\
             Columns: *ready* is the time from starting the server (for Palisade: loading the \
             object, compiling and installing the list, attaching) to the first NXDOMAIN answer \
             for a listed name. **CPU per query** is the CPU time of every task the run \
             involves, per completed query: dnsperf (`wait4`), the server's processes \
             (`/proc/<pid>/stat`; for Palisade, the unbound behind it, which sees no listed \
             query) and the ksoftirqd threads. It is the scheduler's own accounting, so other \
             work on the shared machine does not leak in, and it covers Palisade: veth runs the \
             receiving end in softirq on the sending CPU, inside dnsperf's send calls, so the \
             XDP program's work is part of dnsperf's system time (the query's way up to a \
             resolver's socket is too). *machine total* is the non-idle time of all CPUs from \
             `/proc/stat` minus the idle baseline, and *machine total − dnsperf* the \
             server-side estimate derived from it: both are tick-sampled and include whatever \
             else ran on the machine, so they are kept for reference only. Memory: resolver RSS \
             after the run; for Palisade the `memlock` of the DNS inspector's maps (fdinfo). \
             Ratios: the resolver's value over Palisade's at the same list size.\n",
            self.mode,
            self.command,
            self.date,
            self.machine.cpu_model,
            self.machine.cpus,
            self.machine.kernel,
            self.dnsperf_version,
            self.unbound_version,
            self.dnsmasq_version,
            self.loadavg_start,
            self.loadavg_end,
            self.idle_baseline_cpu_fraction * 100.0,
            self.clients,
            self.seconds_per_run,
            self.table()
        )
    }

    /// Writes the markdown and JSON files; returns the file stem.
    ///
    /// # Errors
    /// When the files cannot be written.
    pub fn write(&self, dir: &Path) -> Result<String> {
        fs::create_dir_all(dir)?;
        let stem = format!("dnsperf-{}", self.mode);
        fs::write(dir.join(format!("{stem}.md")), self.markdown())?;
        fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        Ok(stem)
    }

    #[must_use]
    pub fn terminal(&self) -> String {
        self.table()
    }
}
