//! The DLP suite: what the `SSL_*` probes add to a real `SSL_write`. A Python `ssl` client
//! (the system's OpenSSL) writes 64-byte records to a TLS sink on loopback at a paced rate and
//! times each call; the same client runs without the probes, with the probes attached and the
//! watcher consuming the records (scanning them with the detectors), and with the probes
//! attached but nobody reading the ring buffer, in every round; and, to show what the
//! placement of the write probe saves, with it on `SSL_write_ex`'s first instruction (which
//! the kernel single-steps) instead of the first branch it emulates, and, to show what the
//! raw tracepoint saves, with the sends seen on `sock:sock_send_length` as on kernels before
//! 6.8. The baseline is the run without probes of the same round. A last run has a tracefs
//! uprobe event (no BPF program) at the write probe's place: what the trap alone costs.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use palisade::dlp::{
    Builtin, Dlp,
    probe::{Placement, Sends, Source, Watcher},
};
use serde::Serialize;

use crate::{runner::Spread, utc_now};

/// The TLS sink: accepts connections and reads until they close; prints its port.
const SINK: &str = r#"
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1], sys.argv[2])
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(8)
print(ls.getsockname()[1], flush=True)
def serve(c):
    try:
        s = ctx.wrap_socket(c, server_side=True)
        while s.recv(1 << 16): pass
    except Exception:
        pass
while True:
    c, _ = ls.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The client: `calls` writes of 64 bytes at `rate` per second (paced by a busy wait; a call
/// that runs late starts the next at once), each timed around `SSL_write`.
const CLIENT: &str = r#"
import json, socket, ssl, sys, time
port, n, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
s = c.wrap_socket(socket.create_connection(("127.0.0.1", port)))
buf = b"x" * 64
pc = time.perf_counter_ns
for i in range(1000): s.write(buf)
t = [0] * n; gap = int(1e9 / rate); start = pc(); nxt = start
for i in range(n):
    while pc() < nxt: pass
    nxt += gap
    a = pc(); s.write(buf); t[i] = pc() - a
took = pc() - start
s.close()
t.sort()
print(json.dumps({"p50": t[n // 2], "p99": t[n * 99 // 100], "mean": sum(t) / n,
                  "rate": n / (took / 1e9)}))
"#;

pub struct DlpSettings {
    pub mode: &'static str,
    pub rounds: usize,
    /// Timed `SSL_write` calls per run.
    pub calls: usize,
    /// Calls per second the client paces itself to.
    pub rate: f64,
}

/// One configuration over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub id: String,
    pub what: String,
    /// Median over rounds of the run's per-call p50 and p99, in microseconds.
    pub p50_us: Spread,
    pub p99_us: Spread,
    /// The same less the baseline (no probes) of the same round.
    pub added_p50_us: Spread,
    pub added_p99_us: Spread,
    /// p99 divided by the baseline's p99 of the same round.
    pub times_baseline_p99: Spread,
    /// Calls per second the client achieved.
    pub rate: Spread,
    /// The probes' counters summed over the rounds (`calls` counts the sink's reads too).
    pub calls: u64,
    pub records: u64,
    pub lost: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DlpReport {
    pub generated: String,
    pub command: String,
    pub mode: String,
    pub rounds: usize,
    pub calls: usize,
    pub rate: f64,
    /// `/proc/loadavg`'s 1-minute load average before and after the rounds (2 CPUs shared
    /// with whatever else runs).
    pub load_before: f64,
    pub load_after: f64,
    pub cases: Vec<CaseResult>,
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[derive(Clone, Copy)]
struct Run {
    p50: f64,
    p99: f64,
    rate: f64,
}

const TRACEFS: &str = "/sys/kernel/tracing";
const BARE_EVENT: &str = "palisade_bench/dlp_bare";

/// A tracefs uprobe event on the system's `SSL_write_ex` where the watcher puts its write
/// probe: the cost of the trap alone, with no BPF program. Removed on drop.
struct BareProbe;

impl BareProbe {
    fn add() -> Result<Self> {
        use std::io::Write as _;
        let lib = palisade::dlp::coverage::system_libraries()
            .into_iter()
            .next()
            .context("no system libssl")?;
        let off = palisade::dlp::prologue::function_offset(&lib, "SSL_write_ex")?
            + palisade::dlp::prologue::entry_offset(&lib, "SSL_write_ex");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(Path::new(TRACEFS).join("uprobe_events"))?;
        // One write: the kernel parses each write(2) as a command of its own.
        f.write_all(format!("p:{BARE_EVENT} {}:{off:#x}\n", lib.display()).as_bytes())?;
        let probe = Self;
        std::fs::write(
            Path::new(TRACEFS).join(format!("events/{BARE_EVENT}/enable")),
            "1",
        )?;
        Ok(probe)
    }
}

impl Drop for BareProbe {
    fn drop(&mut self) {
        use std::io::Write as _;
        let _ = std::fs::write(
            Path::new(TRACEFS).join(format!("events/{BARE_EVENT}/enable")),
            "0",
        );
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .open(Path::new(TRACEFS).join("uprobe_events"))
        {
            let _ = f.write_all(format!("-:{BARE_EVENT}\n").as_bytes());
        }
    }
}

/// A child killed on drop.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the scratch directory on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client(dir: &Path, port: u16, s: &DlpSettings) -> Result<Kid> {
    let c = Command::new("python3")
        .arg(dir.join("client.py"))
        .arg(port.to_string())
        .arg(s.calls.to_string())
        .arg(s.rate.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("running python3")?;
    Ok(Kid(c))
}

fn finish(mut k: Kid) -> Result<Run> {
    let mut out = String::new();
    if let Some(o) = k.0.stdout.take() {
        BufReader::new(o).read_line(&mut out)?;
    }
    let st = k.0.wait()?;
    if !st.success() {
        bail!("the TLS client failed: {st}");
    }
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("client said {out:?}"))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok(Run {
        p50: f("p50") / 1000.0,
        p99: f("p99") / 1000.0,
        rate: f("rate"),
    })
}

fn counter(w: &Watcher, name: &str) -> u64 {
    w.counters()
        .ok()
        .and_then(|c| c.into_iter().find(|(k, _)| *k == name).map(|(_, v)| v))
        .unwrap_or(0)
}

pub fn run(s: &DlpSettings, command: String) -> Result<DlpReport> {
    let dir =
        Scratch(std::env::temp_dir().join(format!("palisade-bench-dlp-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    std::fs::write(dir.0.join("sink.py"), SINK)?;
    std::fs::write(dir.0.join("client.py"), CLIENT)?;
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl req")?;
    if !st.success() {
        bail!("openssl req failed: {st}");
    }
    let mut sink = Kid(Command::new("python3")
        .arg(dir.0.join("sink.py"))
        .arg(&cert)
        .arg(&key)
        .stdout(Stdio::piped())
        .spawn()
        .context("running python3")?);
    let mut line = String::new();
    if let Some(o) = sink.0.stdout.take() {
        BufReader::new(o).read_line(&mut line)?;
    }
    let port: u16 = line
        .trim()
        .parse()
        .with_context(|| format!("sink said {line:?}"))?;
    let policy = Dlp {
        enabled: true,
        builtins: Builtin::ALL.to_vec(),
        ..Dlp::default()
    };
    const IDS: [(&str, &str); 6] = [
        ("off", "no probes (baseline)"),
        ("watched", "probes, the watcher consuming"),
        ("unread", "probes, the ring buffer not read"),
        (
            "first",
            "write probe on the first instruction (single-stepped), the watcher consuming",
        ),
        (
            "bare",
            "a uprobe with no program at the write probe's place (tracefs event): the floor",
        ),
        (
            "sock-tp",
            "sends on `sock:sock_send_length` (kernels before 6.8), the watcher consuming",
        ),
    ];
    let load_before = load_average();
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); IDS.len()];
    let mut counts = [[0u64; 3]; IDS.len()];
    debug_assert_eq!(IDS[4].0, "bare");
    for _ in 0..s.rounds {
        runs[0].push(finish(client(&dir.0, port, s)?)?);
        for (i, consume, placement, sends) in [
            (1, true, Placement::Emulated, Sends::Raw),
            (2, false, Placement::Emulated, Sends::Raw),
            (3, true, Placement::FirstInstruction, Sends::Raw),
            (5, true, Placement::Emulated, Sends::Tracepoint),
        ] {
            let mut w = Watcher::start_hooked(&policy, placement, sends, Source::Own)
                .context("starting the DLP probes")?;
            let mut kid = client(&dir.0, port, s)?;
            let mut sinkout = std::io::sink();
            // The client prints once, at its end (less than a pipe's buffer): read it once it
            // has exited.
            while kid.0.try_wait()?.is_none() {
                if consume {
                    w.drain(&mut sinkout)?;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let r = finish(kid)?;
            w.drain(&mut sinkout)?;
            w.release(std::time::Instant::now(), true, &mut sinkout);
            counts[i][0] += counter(&w, "calls");
            counts[i][1] += counter(&w, "records");
            counts[i][2] += counter(&w, "lost");
            runs[i].push(r);
        }
        let bare = BareProbe::add().context("adding the tracefs uprobe event")?;
        runs[4].push(finish(client(&dir.0, port, s)?)?);
        drop(bare);
    }
    let base = runs[0].clone();
    let cases = IDS
        .iter()
        .enumerate()
        .map(|(i, (id, what))| {
            let rs = &runs[i];
            let col = |f: &dyn Fn(usize, &Run) -> f64| -> Spread {
                Spread::of(
                    &rs.iter()
                        .enumerate()
                        .map(|(k, r)| f(k, r))
                        .collect::<Vec<_>>(),
                )
            };
            CaseResult {
                id: (*id).to_string(),
                what: (*what).to_string(),
                p50_us: col(&|_, r| r.p50),
                p99_us: col(&|_, r| r.p99),
                added_p50_us: col(&|k, r| r.p50 - base[k].p50),
                added_p99_us: col(&|k, r| r.p99 - base[k].p99),
                times_baseline_p99: col(&|k, r| r.p99 / base[k].p99),
                rate: col(&|_, r| r.rate),
                calls: counts[i][0],
                records: counts[i][1],
                lost: counts[i][2],
            }
        })
        .collect();
    Ok(DlpReport {
        generated: utc_now(),
        command,
        mode: s.mode.to_string(),
        rounds: s.rounds,
        calls: s.calls,
        rate: s.rate,
        load_before,
        load_after: load_average(),
        cases,
    })
}

impl DlpReport {
    pub fn terminal(&self) -> String {
        let mut out = format!(
            "DLP: SSL_write of 64 bytes ({} rounds x {} calls paced at {:.0}/s, load {:.2} -> {:.2})\n",
            self.rounds, self.calls, self.rate, self.load_before, self.load_after
        );
        for c in &self.cases {
            let _ = writeln!(
                out,
                "  {:<8} p50 {:>7.2} us  p99 {:>7.2} us  (+{:.2} / +{:.2} us, {:.1}x baseline p99)  {:.0}/s  lost {} of {}",
                c.id,
                c.p50_us.median,
                c.p99_us.median,
                c.added_p50_us.median,
                c.added_p99_us.median,
                c.times_baseline_p99.median,
                c.rate.median,
                c.lost,
                c.records + c.lost
            );
        }
        out
    }

    pub fn write(&self, dir: &Path) -> Result<String> {
        std::fs::create_dir_all(dir)?;
        let stem = format!("dlp-{}", self.mode);
        let mut md = format!(
            "# DLP probe cost per SSL_write\n\n{} · `{}` · mode {}\n\n{} rounds; in each, a Python \
             `ssl` client writes {} records of 64 bytes to a TLS sink on loopback, paced at \
             {:.0} calls/s, once per configuration. Baseline: the run without probes of the \
             same round. Target: at most 2 us added at p99. Load average (1 min) {:.2} \
             before, {:.2} after.\n\n| configuration | p50 us | p99 us \
             | added p50 | added p99 | x baseline p99 | calls/s | records | lost |\n| --- | ---: \
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            self.generated,
            self.command,
            self.mode,
            self.rounds,
            self.calls,
            self.rate,
            self.load_before,
            self.load_after
        );
        for c in &self.cases {
            let _ = writeln!(
                md,
                "| {} | {:.2} ({:.2}..{:.2}) | {:.2} ({:.2}..{:.2}) | {:+.2} | {:+.2} | {:.1} | {:.0} | {} | {} |",
                c.what,
                c.p50_us.median,
                c.p50_us.min,
                c.p50_us.max,
                c.p99_us.median,
                c.p99_us.min,
                c.p99_us.max,
                c.added_p50_us.median,
                c.added_p99_us.median,
                c.times_baseline_p99.median,
                c.rate.median,
                c.records,
                c.lost
            );
        }
        std::fs::write(dir.join(format!("{stem}.md")), md)?;
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(self)?,
        )?;
        Ok(stem)
    }
}
