//! Running dnsperf against one server and reading what the run cost.
//!
//! Two kinds of run. NXDOMAIN: every query is answered, dnsperf runs flat out for the run
//! time, and the cost is the CPU time of every task involved per completed query. Drop: no
//! query is ever answered, so there is nothing to time; dnsperf sends at a fixed rate and the
//! cost is the CPU time per query sent, over a window taken once dnsperf holds that rate.
//!
//! CPU time comes from the scheduler's own accounting of each task (dnsperf, the server's
//! processes, the `ksoftirqd` threads), so other work on a shared machine does not leak in.
//! The whole machine's busy time from `/proc/stat` is recorded for reference only.

use std::{
    fs,
    net::UdpSocket,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, ChildStderr, ChildStdout, Stdio},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use palisade::stats::read_kernel_counters;
use serde::Serialize;

use super::{
    DnsperfSettings, Server,
    events::thread_runtime,
    setup::{Pair, Running, SERVER_IF},
};
use crate::{inspect, netns::Netns};

// ---------------------------------------------------------------------------------------------
// CPU and memory readings

/// (non-idle, softirq) seconds of the whole machine.
fn proc_stat() -> Result<(f64, f64)> {
    let v = inspect::proc_stat_ticks(None).ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    if v.len() < 7 {
        bail!("short /proc/stat cpu line: {v:?}");
    }
    // user nice system idle iowait irq softirq steal ...
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    Ok((
        busy as f64 / inspect::clk_tck(),
        v[6] as f64 / inspect::clk_tck(),
    ))
}

/// CPU time of every thread of process `pid`, in seconds: the scheduler's runtime in
/// nanoseconds from each thread's `schedstat` (the sum `wait4` reports, readable while the
/// process runs), or `utime + stime` in clock ticks where `schedstat` is missing. 0 for a
/// process that is gone.
pub fn task_runtime(pid: u32) -> f64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .map(|t| {
            let dir = t.path();
            inspect::schedstat_ns(&dir.join("schedstat"))
                .map_or_else(|| stat_cpu(&dir.join("stat")), |ns| ns as f64 / 1e9)
        })
        .sum()
}

/// `utime + stime` from a `stat` file, in seconds.
fn stat_cpu(path: &Path) -> f64 {
    let Ok(text) = fs::read_to_string(path) else {
        return 0.0;
    };
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (get(11) + get(12)) as f64 / inspect::clk_tck()
}

pub fn proc_rss(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn set_affinity(cpu: usize) -> std::io::Result<()> {
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

/// Pids of the ksoftirqd threads.
pub fn ksoftirqd() -> Vec<u32> {
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

/// What the machine burns with nothing of ours running, as a fraction of one CPU.
///
/// # Errors
/// When `/proc/stat` cannot be read.
pub fn idle_rate(over: Duration) -> Result<f64> {
    let (b0, _) = proc_stat()?;
    let t = Instant::now();
    thread::sleep(over);
    Ok((proc_stat()?.0 - b0) / t.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Kernel counters: where the queries of a drop run ended

/// Field `name` of protocol `proto` in the text of `/proc/net/snmp` (a header line and a value
/// line per protocol, both starting with `Proto:`).
fn snmp_field(text: &str, proto: &str, name: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (header, values) = (lines.next()?, lines.next()?);
    let i = header.split_whitespace().position(|h| h == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// `stats64.rx.packets` of the one interface in `ip -s -j link show DEV`'s output.
fn link_rx_packets(json: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get(0)?
        .get("stats64")?
        .get("rx")?
        .get("packets")?
        .as_u64()
}

fn snmp(ns: &Netns) -> Result<String> {
    ns.enter(|| fs::read_to_string("/proc/thread-self/net/snmp"))?
        .context("reading /proc/net/snmp")
}

fn snmp_value(text: &str, proto: &str, name: &str) -> Result<u64> {
    snmp_field(text, proto, name).ok_or_else(|| anyhow!("no {proto} {name} in /proc/net/snmp"))
}

/// UDP datagrams sent from the client namespace so far: dnsperf's queries, as the kernel
/// counts them (cheap enough to poll).
fn client_udp_out(pair: &Pair) -> Result<u64> {
    snmp_value(&snmp(&pair.client)?, "Udp", "OutDatagrams")
}

/// Counters at one moment that show where a drop run's queries went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// UDP datagrams sent from the client namespace (only dnsperf sends there).
    pub client_udp_out: u64,
    /// Packets that reached the server namespace's IP layer (`Ip: InReceives`): none when an
    /// XDP program dropped every query.
    pub server_ip_in: u64,
    /// Datagrams the server's sockets read (`Udp: InDatagrams`, counted when the
    /// application receives them).
    pub server_udp_in: u64,
    /// Datagrams the kernel dropped because a socket's buffer was full: a resolver that
    /// cannot keep up, rather than one that decides to drop.
    pub server_udp_rcvbuf_errors: u64,
    /// Frames received on the server's veth end (its `rx_packets`).
    pub server_if_rx: u64,
    /// Palisade: blocked queries in its DNS ingress scope (`DNS_STATS`).
    pub palisade_dns_blocked: Option<u64>,
    /// Palisade: packets its programs dropped (`STATS`).
    pub palisade_dropped: Option<u64>,
    /// Palisade: event records its reader has read.
    pub palisade_events_read: Option<u64>,
    /// Palisade: event records the kernel could not write for a full ring (`events_lost`).
    pub palisade_events_lost: Option<u64>,
}

impl Counters {
    /// Reads every counter for the server set-up `r`.
    ///
    /// # Errors
    /// When a namespace cannot be entered or a counter read.
    pub fn read(r: &Running) -> Result<Self> {
        let field = snmp_value;
        let (client, server) = (snmp(&r.pair.client)?, snmp(&r.pair.server)?);
        let link = r.pair.server.ip(&["-s", "-j", "link", "show", SERVER_IF])?;
        let palisade = r.palisade().map(|l| read_kernel_counters(&l.ebpf));
        Ok(Self {
            client_udp_out: field(&client, "Udp", "OutDatagrams")?,
            server_ip_in: field(&server, "Ip", "InReceives")?,
            server_udp_in: field(&server, "Udp", "InDatagrams")?,
            server_udp_rcvbuf_errors: field(&server, "Udp", "RcvbufErrors")?,
            server_if_rx: link_rx_packets(&String::from_utf8_lossy(&link.stdout))
                .ok_or_else(|| anyhow!("no rx packets for {SERVER_IF}"))?,
            palisade_dns_blocked: palisade.as_ref().map(|c| {
                c.dns
                    .iter()
                    .filter(|d| d.scope == "ingress" && d.name == "blocked")
                    .map(|d| d.value)
                    .sum()
            }),
            palisade_dropped: palisade.as_ref().map(|c| c.global("dropped")),
            palisade_events_read: r.events_read(),
            palisade_events_lost: palisade.as_ref().map(|c| c.global("events_lost")),
        })
    }

    /// What changed since `before`.
    #[must_use]
    pub fn since(&self, before: &Self) -> Self {
        let opt = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        Self {
            client_udp_out: self.client_udp_out.saturating_sub(before.client_udp_out),
            server_ip_in: self.server_ip_in.saturating_sub(before.server_ip_in),
            server_udp_in: self.server_udp_in.saturating_sub(before.server_udp_in),
            server_udp_rcvbuf_errors: self
                .server_udp_rcvbuf_errors
                .saturating_sub(before.server_udp_rcvbuf_errors),
            server_if_rx: self.server_if_rx.saturating_sub(before.server_if_rx),
            palisade_dns_blocked: opt(self.palisade_dns_blocked, before.palisade_dns_blocked),
            palisade_dropped: opt(self.palisade_dropped, before.palisade_dropped),
            palisade_events_read: opt(self.palisade_events_read, before.palisade_events_read),
            palisade_events_lost: opt(self.palisade_events_lost, before.palisade_events_lost),
        }
    }
}

/// Whether the counters show every query of a drop run dropped where `server` drops it:
/// `during` the whole run (with dnsperf's own `sent` and `answered`), and the server's
/// socket-buffer drops during the measured window.
#[must_use]
pub fn drops_verified(
    server: Server,
    sent: u64,
    answered: u64,
    during: &Counters,
    window_rcvbuf_errors: u64,
) -> bool {
    // Every query dnsperf counted went out of the client's UDP stack and none came back.
    let out = during.client_udp_out;
    let common = sent > 0 && answered == 0 && out == sent;
    common
        && match server {
            // XDP dropped them on the server's veth: they arrived there, nothing reached IP.
            Server::FloorDrop => during.server_ip_in == 0 && during.server_if_rx >= out,
            // ... and Palisade counted each as blocked, and reported each on its event ring
            // without losing one (a full ring costs the kernel less than a record written).
            Server::PalisadeDrop => {
                during.server_ip_in == 0
                    && during.server_if_rx >= out
                    && during.palisade_dns_blocked == Some(out)
                    && during.palisade_events_lost == Some(0)
            }
            // Every one reached the server's UDP layer, and in the window unbound read every
            // one (and answered none): the kernel dropped none for a full socket buffer, which
            // would spare unbound the work. (dnsperf's catch-up bursts before the window can
            // overflow the buffer; those queries are not measured.)
            Server::UnboundDeny => {
                during.server_ip_in == out
                    && during.server_udp_in + during.server_udp_rcvbuf_errors == out
                    && window_rcvbuf_errors == 0
            }
            Server::PalisadeNxdomain | Server::UnboundNxdomain | Server::Dnsmasq => false,
        }
}

// ---------------------------------------------------------------------------------------------
// dnsperf

/// dnsperf's receiving thread wakes at least this often to expire queries when nothing
/// arrives (`TIMEOUT_CHECK_TIME` in dnsperf 2.10's source). With every query dropped, a query
/// stays outstanding for up to its timeout plus this.
const DNSPERF_TIMEOUT_CHECK_S: f64 = 0.1;

/// `-t` of the drop runs: short, to keep the queries outstanding (and so `-q`) few.
pub const DROP_TIMEOUT_S: f64 = 0.01;

/// How far behind its fixed rate dnsperf may be and still count as having caught up with it:
/// a little over the time it takes to start before it sends its first query.
const CATCH_UP_SLACK_S: f64 = 0.05;

/// Time given to dnsperf, once caught up within the slack, to close the rest of the gap
/// (at its burst rate, twice the fixed rate, it takes at most the slack).
const SETTLE: Duration = Duration::from_millis(300);

/// Longest a drop run waits for dnsperf to reach its rate before giving up.
const MAX_WARMUP: Duration = Duration::from_secs(15);

/// `-q` of the drop runs at `rate` queries per second: twice the queries outstanding at that
/// rate, so that the cap never holds the sender back.
///
/// Not more: while no query has been answered, which in a drop run is always, dnsperf sleeps
/// 1 ms after every second query until it has this many outstanding (its slow start, about
/// 2000 queries per second), and then sends in bursts until it has caught up with the rate.
/// The bigger `-q`, the longer that ramp.
#[must_use]
pub fn drop_outstanding(rate: u32) -> u32 {
    let needed = f64::from(rate) * (DROP_TIMEOUT_S + DNSPERF_TIMEOUT_CHECK_S);
    ((2.0 * needed).ceil() as u32).clamp(10, 65_536)
}

/// Whether dnsperf, `elapsed_s` after it was started and having sent `sent` queries, has
/// caught up with `rate`: its rate limiter never sends ahead of `rate × time`, so once it has
/// caught up it sends at that rate.
#[must_use]
pub fn caught_up(sent: u64, elapsed_s: f64, rate: u32) -> bool {
    sent as f64 >= f64::from(rate) * (elapsed_s - CATCH_UP_SLACK_S)
}

/// dnsperf's summary counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    /// Outstanding when dnsperf was interrupted (the drop runs end that way).
    pub interrupted: u64,
    pub qps: f64,
    /// rcode name to count, as dnsperf reports them.
    pub rcodes: Vec<(String, u64)>,
}

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
}

fn first_num<T: std::str::FromStr + Default>(s: Option<&str>) -> T {
    s.and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_default()
}

impl Summary {
    /// Reads the "Statistics" block dnsperf prints at the end.
    #[must_use]
    pub fn parse(out: &str) -> Self {
        let rcodes = field(out, "Response codes:")
            .map(|r| {
                r.split(',')
                    .filter_map(|part| {
                        let mut it = part.split_whitespace();
                        Some((it.next()?.to_string(), it.next()?.parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            sent: first_num(field(out, "Queries sent:")),
            completed: first_num(field(out, "Queries completed:")),
            lost: first_num(field(out, "Queries lost:")),
            interrupted: first_num(field(out, "Queries interrupted:")),
            qps: first_num(field(out, "Queries per second:")),
            rcodes,
        }
    }
}

/// A dnsperf process. Killed (and reaped) if dropped before [`Dnsperf::finish`], so that a
/// failed run leaves nothing sending.
struct Dnsperf {
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// How a dnsperf process ended.
struct Finished {
    out: String,
    /// User + system time of the whole run (`wait4`), seconds.
    cpu_s: f64,
}

fn reader<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<String>> {
    let mut pipe = pipe?;
    Some(thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    }))
}

impl Dnsperf {
    /// Starts dnsperf in the client namespace, pinned to CPU 0, with `args` after the
    /// addresses and the query file.
    fn start(pair: &Pair, queryfile: &Path, args: &[String]) -> Result<Self> {
        let mut cmd = pair.client.command("dnsperf");
        cmd.args(["-s", &pair.server_addr, "-a", &pair.client_addr, "-d"])
            .arg(queryfile)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: sched_setaffinity only, async-signal-safe.
        unsafe { cmd.pre_exec(|| set_affinity(0)) };
        let mut child = cmd.spawn().context("starting dnsperf")?;
        let stdout = reader::<ChildStdout>(child.stdout.take());
        let stderr = reader::<ChildStderr>(child.stderr.take());
        Ok(Self {
            child: Some(child),
            stdout,
            stderr,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// dnsperf's output if it has exited already (it should not have, in the middle of a
    /// run).
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        if matches!(child.try_wait(), Ok(None)) {
            return None;
        }
        self.child = None;
        let join =
            |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        Some(join(self.stdout.take()) + &join(self.stderr.take()))
    }

    /// Sends `signal` (if any), waits for dnsperf to exit and collects its output and CPU time.
    fn finish(mut self, signal: Option<i32>) -> Result<Finished> {
        let child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("dnsperf already reaped"))?;
        if let Some(sig) = signal {
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
        let mut status = 0;
        // SAFETY: a zeroed rusage filled in by wait4 for our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) } < 0 {
            bail!("wait4 dnsperf: {}", std::io::Error::last_os_error());
        }
        let join =
            |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        let out = join(self.stdout.take());
        let err = join(self.stderr.take());
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!("dnsperf failed: {}{}", err.trim(), out.trim());
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(Finished {
            out,
            cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
        })
    }
}

impl Drop for Dnsperf {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The CPU time of every task a run involves, at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    dnsperf_s: f64,
    servers_s: f64,
    ksoftirqd_s: f64,
    /// Non-idle time of the whole machine (`/proc/stat`).
    busy_s: f64,
    softirq_s: f64,
}

impl Sample {
    fn take(dnsperf: Option<u32>, r: &Running, softirqd: &[u32]) -> Result<Self> {
        let (busy_s, softirq_s) = proc_stat()?;
        Ok(Self {
            at: Instant::now(),
            dnsperf_s: dnsperf.map_or(0.0, task_runtime),
            servers_s: r.server_pids().into_iter().map(task_runtime).sum::<f64>()
                + r.server_threads()
                    .into_iter()
                    .map(thread_runtime)
                    .sum::<f64>(),
            ksoftirqd_s: softirqd.iter().copied().map(task_runtime).sum(),
            busy_s,
            softirq_s,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// NXDOMAIN runs

/// One NXDOMAIN run: dnsperf flat out for the run time.
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
    /// Total minus dnsperf: a server-side estimate from tick-sampled totals (reference only).
    pub server_est_cpu_us_per_query: f64,
    /// Softirq time (all CPUs) per completed query; also charged to whichever task was running.
    pub softirq_us_per_query: f64,
    /// The server's processes per completed query (for Palisade: the resolver behind it,
    /// which should see nothing, and the thread reading its events).
    pub resolver_cpu_us_per_query: f64,
    /// Palisade: event records read and lost (ring full) over the run.
    pub events_read: Option<u64>,
    pub events_lost: Option<u64>,
}

/// Runs dnsperf flat out against `r` for the run time over `queryfile`.
///
/// # Errors
/// When dnsperf cannot be run or fails.
pub fn nxdomain_run(
    r: &Running,
    queryfile: &Path,
    s: &DnsperfSettings,
    idle_rate: f64,
) -> Result<Run> {
    let args: Vec<String> = [
        "-l",
        &s.seconds.to_string(),
        "-c",
        &s.clients.to_string(),
        "-T",
        "1",
        "-t",
        "2",
    ]
    .map(String::from)
    .into();
    let softirqd = ksoftirqd();
    let counters_before = Counters::read(r)?;
    let a = Sample::take(None, r, &softirqd)?;
    let perf = Dnsperf::start(&r.pair, queryfile, &args)?;
    let done = perf.finish(None)?;
    let b = Sample::take(None, r, &softirqd)?;
    let during = Counters::read(r)?.since(&counters_before);
    let sum = Summary::parse(&done.out);
    let wall_s = b.at.duration_since(a.at).as_secs_f64();
    let per_q = |sec: f64| {
        if sum.completed == 0 {
            0.0
        } else {
            sec / sum.completed as f64 * 1e6
        }
    };
    let total = (b.busy_s - a.busy_s - idle_rate * wall_s).max(0.0);
    let (servers_s, ksoftirqd_s) = (b.servers_s - a.servers_s, b.ksoftirqd_s - a.ksoftirqd_s);
    Ok(Run {
        wall_s,
        queries_sent: sum.sent,
        queries_completed: sum.completed,
        queries_lost: sum.lost,
        qps: sum.qps,
        all_nxdomain: sum.completed > 0
            && sum.rcodes.iter().all(|(c, _)| c == "NXDOMAIN")
            && sum.rcodes.iter().map(|(_, n)| n).sum::<u64>() == sum.completed,
        rcodes: sum.rcodes,
        accounted_cpu_us_per_query: per_q(done.cpu_s + servers_s + ksoftirqd_s),
        ksoftirqd_us_per_query: per_q(ksoftirqd_s),
        total_cpu_us_per_query: per_q(total),
        dnsperf_cpu_us_per_query: per_q(done.cpu_s),
        server_est_cpu_us_per_query: per_q((total - done.cpu_s).max(0.0)),
        softirq_us_per_query: per_q(b.softirq_s - a.softirq_s),
        resolver_cpu_us_per_query: per_q(servers_s),
        events_read: during.palisade_events_read,
        events_lost: during.palisade_events_lost,
    })
}

// ---------------------------------------------------------------------------------------------
// Drop runs

/// One drop run: dnsperf at a fixed rate, measured over a window once it holds the rate.
#[derive(Debug, Clone, Serialize)]
pub struct DropRun {
    pub target_qps: u32,
    /// From starting dnsperf to the start of the window: its slow start and catching up
    /// with the rate (see [`drop_outstanding`]).
    pub warmup_s: f64,
    pub window_s: f64,
    /// Queries sent during the window (the client namespace's UDP `OutDatagrams`).
    pub window_sent: u64,
    pub window_qps: f64,
    /// The window's rate is within 5 % of the target.
    pub rate_held: bool,
    /// dnsperf + the server's processes + ksoftirqd over the window, per query sent.
    pub accounted_cpu_us_per_sent: f64,
    pub dnsperf_cpu_us_per_sent: f64,
    pub server_cpu_us_per_sent: f64,
    pub ksoftirqd_us_per_sent: f64,
    /// Non-idle CPU of the whole machine minus the idle baseline, per query sent (reference).
    pub total_cpu_us_per_sent: f64,
    /// Softirq time (all CPUs, tick-sampled) per query sent.
    pub softirq_us_per_sent: f64,
    /// dnsperf's user+system time for the whole run (`wait4`), warm-up included, per query
    /// it sent: a cross-check on the window.
    pub whole_run_dnsperf_cpu_us_per_sent: f64,
    /// dnsperf's count of queries sent and answered over the whole run.
    pub queries_sent: u64,
    pub queries_answered: u64,
    /// Counters over the whole run, from just before dnsperf started to just after it exited.
    pub counters: Counters,
    /// Datagrams the server's kernel dropped for a full socket buffer during the window.
    pub window_rcvbuf_errors: u64,
    /// The counters show every query dropped where the configuration drops it (see
    /// [`drops_verified`]).
    pub drops_verified: bool,
}

/// Runs dnsperf at `s.drop_rate` against `r` over `queryfile`, and measures a window of
/// `s.seconds` once dnsperf holds the rate.
///
/// # Errors
/// When dnsperf cannot be run, fails, or does not reach the rate.
pub fn drop_run(
    r: &Running,
    queryfile: &Path,
    s: &DnsperfSettings,
    idle_rate: f64,
) -> Result<DropRun> {
    let rate = s.drop_rate;
    // Long enough to outlast the warm-up and the window; the run is interrupted after the
    // window.
    let limit = MAX_WARMUP.as_secs() + s.seconds + 5;
    let args: Vec<String> = vec![
        "-l".into(),
        limit.to_string(),
        "-c".into(),
        s.clients.to_string(),
        "-T".into(),
        "1".into(),
        "-Q".into(),
        rate.to_string(),
        "-q".into(),
        drop_outstanding(rate).to_string(),
        "-t".into(),
        DROP_TIMEOUT_S.to_string(),
        // One line per timed-out query otherwise, and every query times out.
        "-O".into(),
        "suppress=timeouts".into(),
    ];
    let softirqd = ksoftirqd();
    let sent_now = || client_udp_out(&r.pair);

    let before = Counters::read(r)?;
    let started = Instant::now();
    let mut perf = Dnsperf::start(&r.pair, queryfile, &args)?;
    loop {
        thread::sleep(Duration::from_millis(100));
        if let Some(out) = perf.exited() {
            bail!("dnsperf stopped during the warm-up: {}", out.trim());
        }
        let sent = sent_now()?.saturating_sub(before.client_udp_out);
        let elapsed = started.elapsed();
        if caught_up(sent, elapsed.as_secs_f64(), rate) {
            break;
        }
        if elapsed > MAX_WARMUP {
            bail!(
                "dnsperf did not reach {rate} queries/s within {} s ({sent} sent)",
                MAX_WARMUP.as_secs()
            );
        }
    }
    thread::sleep(SETTLE);
    let warmup_s = started.elapsed().as_secs_f64();
    let rcvbuf_errors =
        || -> Result<u64> { snmp_value(&snmp(&r.pair.server)?, "Udp", "RcvbufErrors") };
    let (out0, drops0) = (sent_now()?, rcvbuf_errors()?);
    let a = Sample::take(Some(perf.pid()), r, &softirqd)?;
    thread::sleep(Duration::from_secs(s.seconds));
    let b = Sample::take(Some(perf.pid()), r, &softirqd)?;
    let (out1, drops1) = (sent_now()?, rcvbuf_errors()?);
    let done = perf.finish(Some(libc::SIGINT))?;
    // unbound counts a datagram when it reads it: give it a moment for the last ones.
    thread::sleep(Duration::from_millis(50));
    let during = Counters::read(r)?.since(&before);
    let sum = Summary::parse(&done.out);

    let window_s = b.at.duration_since(a.at).as_secs_f64();
    let window_sent = out1.saturating_sub(out0);
    let per_sent = |sec: f64| {
        if window_sent == 0 {
            0.0
        } else {
            sec / window_sent as f64 * 1e6
        }
    };
    let (dnsperf_s, servers_s, ksoftirqd_s) = (
        b.dnsperf_s - a.dnsperf_s,
        b.servers_s - a.servers_s,
        b.ksoftirqd_s - a.ksoftirqd_s,
    );
    let window_qps = window_sent as f64 / window_s;
    Ok(DropRun {
        target_qps: rate,
        warmup_s,
        window_s,
        window_sent,
        window_qps,
        rate_held: (window_qps / f64::from(rate) - 1.0).abs() <= 0.05,
        accounted_cpu_us_per_sent: per_sent(dnsperf_s + servers_s + ksoftirqd_s),
        dnsperf_cpu_us_per_sent: per_sent(dnsperf_s),
        server_cpu_us_per_sent: per_sent(servers_s),
        ksoftirqd_us_per_sent: per_sent(ksoftirqd_s),
        total_cpu_us_per_sent: per_sent((b.busy_s - a.busy_s - idle_rate * window_s).max(0.0)),
        softirq_us_per_sent: per_sent(b.softirq_s - a.softirq_s),
        whole_run_dnsperf_cpu_us_per_sent: if sum.sent == 0 {
            0.0
        } else {
            done.cpu_s / sum.sent as f64 * 1e6
        },
        queries_sent: sum.sent,
        queries_answered: sum.completed,
        drops_verified: drops_verified(
            r.server,
            sum.sent,
            sum.completed,
            &during,
            drops1.saturating_sub(drops0),
        ),
        counters: during,
        window_rcvbuf_errors: drops1.saturating_sub(drops0),
    })
}

// ---------------------------------------------------------------------------------------------
// Probes

/// Sends one type A query for `name` from the client and returns the answer's rcode, or
/// `None` when no answer came within 200 ms.
///
/// # Errors
/// When the socket cannot be set up in the client namespace.
pub fn probe(pair: &Pair, name: &str) -> Result<Option<u8>> {
    pair.client.enter(|| -> Result<Option<u8>> {
        let sock = UdpSocket::bind((pair.client_addr.as_str(), 0))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let id = 0x5a5a_u16;
        sock.send_to(&query(name, id), (pair.server_addr.as_str(), 53))?;
        let mut buf = [0u8; 1500];
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            return Ok(None);
        };
        Ok((n >= 12 && buf[..2] == id.to_be_bytes()).then_some(buf[3] & 0x0f))
    })?
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What dnsperf 2.10 prints when a drop run is interrupted after its window.
    const INTERRUPTED: &str = "DNS Performance Testing Tool\nVersion 2.10.0\n\n\
        [Status] Testing complete (interruption)\n\nStatistics:\n\n\
        \x20 Queries sent:         30001\n\
        \x20 Queries completed:    0 (0.00%)\n\
        \x20 Queries lost:         28948 (96.49%)\n\
        \x20 Queries interrupted:  1053 (3.51%)\n\n\
        \x20 Response codes:       \n\
        \x20 Average packet size:  request 25, response 0\n\
        \x20 Run time (s):         3.000514\n\
        \x20 Queries per second:   0.000000\n";

    #[test]
    fn an_interrupted_drop_run_is_parsed() {
        let s = Summary::parse(INTERRUPTED);
        assert_eq!(
            (s.sent, s.completed, s.lost, s.interrupted),
            (30001, 0, 28948, 1053)
        );
        assert!(s.rcodes.is_empty());
        assert_eq!(s.qps, 0.0);
    }

    #[test]
    fn an_answered_run_is_parsed() {
        let out = "  Queries sent:         204644\n  Queries completed:    204644 (100.00%)\n\
                   \x20 Queries lost:         0 (0.00%)\n\
                   \x20 Response codes:       NOERROR 4 (0.01%), NXDOMAIN 204640 (99.99%)\n\
                   \x20 Queries per second:   68213.4\n";
        let s = Summary::parse(out);
        assert_eq!((s.sent, s.completed, s.interrupted), (204_644, 204_644, 0));
        assert_eq!(
            s.rcodes,
            vec![("NOERROR".into(), 4), ("NXDOMAIN".into(), 204_640)]
        );
        assert!((s.qps - 68213.4).abs() < 1e-9);
    }

    #[test]
    fn snmp_fields_are_found_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL InReceives InHdrErrors\nIp: 2 64 17 0\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 5 1 0 30001 3\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    UdpLite: 9 9 9 9 9\n";
        assert_eq!(snmp_field(snmp, "Ip", "InReceives"), Some(17));
        assert_eq!(snmp_field(snmp, "Udp", "OutDatagrams"), Some(30001));
        assert_eq!(snmp_field(snmp, "Udp", "RcvbufErrors"), Some(3));
        assert_eq!(snmp_field(snmp, "Udp", "SndbufErrors"), None);
        assert_eq!(snmp_field(snmp, "Tcp", "InSegs"), None);
    }

    #[test]
    fn link_rx_packets_from_ip_json() {
        let json =
            r#"[{"ifname":"dps0","stats64":{"rx":{"bytes":1,"packets":42},"tx":{"packets":7}}}]"#;
        assert_eq!(link_rx_packets(json), Some(42));
        assert_eq!(link_rx_packets("[]"), None);
    }

    #[test]
    fn outstanding_queries_cover_twice_the_timeout_and_check_interval() {
        // 10k/s for 0.11 s is 1100 outstanding at most; twice that.
        assert_eq!(drop_outstanding(10_000), 2200);
        assert_eq!(drop_outstanding(1), 10);
        assert_eq!(drop_outstanding(10_000_000), 65_536);
    }

    #[test]
    fn catching_up_with_the_rate() {
        // 1 s in, at 10k/s: 9500 is within the slack, 9000 is not.
        assert!(caught_up(9500, 1.0, 10_000));
        assert!(!caught_up(9000, 1.0, 10_000));
        // In dnsperf's slow start (about 2000/s) it is behind.
        assert!(!caught_up(2000, 1.0, 10_000));
    }

    fn counters(out: u64, ip_in: u64, rx: u64, blocked: Option<u64>) -> Counters {
        Counters {
            client_udp_out: out,
            server_ip_in: ip_in,
            server_if_rx: rx,
            palisade_dns_blocked: blocked,
            ..Counters::default()
        }
    }

    #[test]
    fn drops_are_verified_where_each_configuration_drops() {
        let verified = |server, answered, c: &Counters, window_drops| {
            drops_verified(server, 1000, answered, c, window_drops)
        };
        let floor = counters(1000, 0, 1000, None);
        assert!(verified(Server::FloorDrop, 0, &floor, 0));
        // An answer, or a query that reached IP, is not a drop at XDP.
        assert!(!verified(Server::FloorDrop, 1, &floor, 0));
        assert!(!verified(
            Server::FloorDrop,
            0,
            &counters(1000, 3, 1000, None),
            0
        ));
        // Palisade must have counted every one as blocked, and lost no event.
        let mut pal = counters(1000, 0, 1000, Some(1000));
        pal.palisade_events_lost = Some(0);
        assert!(verified(Server::PalisadeDrop, 0, &pal, 0));
        pal.palisade_events_lost = Some(1);
        assert!(!verified(Server::PalisadeDrop, 0, &pal, 0));
        pal.palisade_events_lost = None;
        assert!(!verified(Server::PalisadeDrop, 0, &pal, 0));
        let mut pal = counters(1000, 0, 1000, Some(999));
        pal.palisade_events_lost = Some(0);
        assert!(!verified(Server::PalisadeDrop, 0, &pal, 0));
        // Every query reached unbound's socket; in the window the kernel dropped none.
        let mut deny = counters(1000, 1000, 1000, None);
        deny.server_udp_in = 900;
        deny.server_udp_rcvbuf_errors = 100;
        assert!(verified(Server::UnboundDeny, 0, &deny, 0));
        assert!(!verified(Server::UnboundDeny, 0, &deny, 1));
        deny.server_udp_in = 800;
        assert!(!verified(Server::UnboundDeny, 0, &deny, 0));
        // Nothing sent proves nothing; NXDOMAIN servers do not drop.
        assert!(!drops_verified(
            Server::FloorDrop,
            0,
            0,
            &counters(0, 0, 0, None),
            0
        ));
        assert!(!verified(Server::Dnsmasq, 0, &floor, 0));
    }

    #[test]
    fn counters_since_subtract_field_by_field() {
        let a = counters(10, 1, 10, Some(5));
        let b = counters(110, 1, 110, Some(105));
        let d = b.since(&a);
        assert_eq!(
            (
                d.client_udp_out,
                d.server_ip_in,
                d.server_if_rx,
                d.palisade_dns_blocked
            ),
            (100, 0, 100, Some(100))
        );
        assert_eq!(counters(1, 0, 0, None).since(&a).palisade_dns_blocked, None);
    }
}
