//! The DLP watcher: loads the probes, attaches them to every OpenSSL `libssl` in use (the
//! system's, and each container's through `/proc/PID/root`), reads the plaintext records,
//! runs the scanner and reports matches (and processes it cannot cover) as JSON lines.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TcAttachType, TracePoint, UProbe, uprobe::UProbeAttachPoint},
};
use palisade_common::dlp::{
    COOKIE_EX, COOKIE_READ, DIR_READ, Flow, RECORD_HEADER, Record, ResetKey, stat,
};
use serde_json::json;

use super::{
    Action, Dlp,
    coverage::{self, LibKey, Status},
    detect::Detectors,
    stream::{Scanner, StreamKey},
};

/// The four probed functions and their cookies.
pub const SYMBOLS: [(&str, u64); 4] = [
    ("SSL_write", 0),
    ("SSL_write_ex", COOKIE_EX),
    ("SSL_read", COOKIE_READ),
    ("SSL_read_ex", COOKIE_READ | COOKIE_EX),
];

/// How often `/proc` is scanned for new libraries and uncovered processes.
pub const RESCAN: Duration = Duration::from_millis(200);

/// Where each running watcher lists the library files it probes, for `palisade dlp
/// coverage`: one file per watcher, [`STATE_PREFIX`] followed by its pid.
pub const STATE_DIR: &str = "/run/palisade";
/// The name of a watcher's state file in [`STATE_DIR`], before its pid.
pub const STATE_PREFIX: &str = "dlp-probed.";

/// This watcher's state file.
fn state_file() -> std::path::PathBuf {
    std::path::Path::new(STATE_DIR).join(format!("{STATE_PREFIX}{}", std::process::id()))
}

/// A running watcher.
pub struct Watcher {
    ebpf: Ebpf,
    scanner: Scanner,
    action: Action,
    probed: HashSet<LibKey>,
    reported: HashSet<u32>,
    /// Matches reported.
    pub matches: u64,
    /// Flows put in the reset map.
    pub resets: u64,
    /// Processes reported uncovered (each once while it lives).
    pub uncovered: u64,
}

impl Watcher {
    /// Loads the probes and attaches them to the system's libssl and the policy's
    /// `libraries`; the reset program goes on `interfaces` under `action = "reset"`.
    ///
    /// # Errors
    /// When the object cannot be loaded or a probe cannot be attached.
    pub fn start(p: &Dlp) -> Result<Self> {
        let detectors = Detectors::new(p).context("compiling the [dlp] patterns")?;
        let mut ebpf = crate::loader::load()?;
        let enter: &mut UProbe = ebpf
            .program_mut("palisade_dlp_enter")
            .context("program palisade_dlp_enter")?
            .try_into()?;
        enter.load().context("loading palisade_dlp_enter")?;
        let leave: &mut UProbe = ebpf
            .program_mut("palisade_dlp_leave")
            .context("program palisade_dlp_leave")?
            .try_into()?;
        leave.load().context("loading palisade_dlp_leave")?;
        let tp: &mut TracePoint = ebpf
            .program_mut("palisade_dlp_sock")
            .context("program palisade_dlp_sock")?
            .try_into()?;
        tp.load().context("loading palisade_dlp_sock")?;
        for event in ["sock_send_length", "sock_recv_length"] {
            tp.attach("sock", event)
                .with_context(|| format!("attaching palisade_dlp_sock to sock:{event}"))?;
        }
        if p.action == Action::Reset {
            let tc: &mut SchedClassifier = ebpf
                .program_mut("palisade_dlp_reset")
                .context("program palisade_dlp_reset")?
                .try_into()?;
            tc.load().context("loading palisade_dlp_reset")?;
            for iface in &p.interfaces {
                tc.attach(iface, TcAttachType::Egress).with_context(|| {
                    format!("[dlp].interfaces: attaching to {iface} (TC egress)")
                })?;
            }
        }
        let mut w = Self {
            ebpf,
            scanner: Scanner::new(detectors),
            action: p.action,
            probed: HashSet::new(),
            reported: HashSet::new(),
            matches: 0,
            resets: 0,
            uncovered: 0,
        };
        for lib in coverage::system_libraries()
            .into_iter()
            .chain(p.libraries.iter().map(PathBuf::from))
        {
            w.probe(&lib)
                .with_context(|| format!("probing {}", lib.display()))?;
        }
        Ok(w)
    }

    /// Attaches the four probes to one library file (once per file).
    ///
    /// # Errors
    /// When the file cannot be read or a probe cannot be attached.
    pub fn probe(&mut self, path: &Path) -> Result<bool> {
        let key = LibKey::of(path)?;
        if self.probed.contains(&key) {
            return Ok(false);
        }
        for prog in ["palisade_dlp_enter", "palisade_dlp_leave"] {
            let pr: &mut UProbe = self.ebpf.program_mut(prog).context(prog)?.try_into()?;
            for (sym, cookie) in SYMBOLS {
                pr.attach(
                    UProbeAttachPoint {
                        location: sym.into(),
                        cookie: Some(cookie),
                    },
                    path,
                    aya::programs::uprobe::UProbeScope::AllProcesses,
                )
                .with_context(|| format!("attaching {prog} to {sym} in {}", path.display()))?;
            }
        }
        self.probed.insert(key);
        self.write_state();
        Ok(true)
    }

    /// Library files probed.
    #[must_use]
    pub fn probed_count(&self) -> usize {
        self.probed.len()
    }

    fn write_state(&self) {
        let mut lines: Vec<String> = self.probed.iter().map(LibKey::line).collect();
        lines.sort();
        let _ = std::fs::create_dir_all(STATE_DIR);
        let _ = std::fs::write(state_file(), lines.join("\n") + "\n");
    }

    /// One pass over `/proc`: probes libraries not probed yet, reports processes that use a
    /// TLS library it cannot probe (each once).
    pub fn rescan(&mut self, out: &mut dyn Write) {
        for proc_ in coverage::scan(&self.probed) {
            match &proc_.status {
                Status::Probeable { path, .. } => {
                    let t0 = proc_.age;
                    match self.probe(path) {
                        Ok(true) => emit(
                            out,
                            &json!({
                                "event": "dlp-probed",
                                "library": path.display().to_string(),
                                "pid": proc_.pid,
                                "comm": proc_.comm,
                                "process_age_ms": t0.map(|d| d.as_millis() as u64),
                            }),
                        ),
                        Ok(false) => {}
                        Err(e) => {
                            if self.reported.insert(proc_.pid) {
                                self.uncovered += 1;
                                emit(
                                    out,
                                    &json!({"event": "dlp-uncovered", "pid": proc_.pid,
                                        "comm": proc_.comm, "reason": format!("{e:#}")}),
                                );
                            }
                        }
                    }
                }
                Status::Uncovered(reason) => {
                    if self.reported.insert(proc_.pid) {
                        self.uncovered += 1;
                        emit(
                            out,
                            &json!({"event": "dlp-uncovered", "pid": proc_.pid,
                                "comm": proc_.comm, "reason": reason}),
                        );
                    }
                }
                Status::Covered { .. } | Status::NoTls => {}
            }
        }
    }

    /// Reads every record waiting; returns how many.
    ///
    /// # Errors
    /// When the ring buffer map is missing (a broken build).
    pub fn drain(&mut self, out: &mut dyn Write) -> Result<usize> {
        let mut records = Vec::new();
        {
            let mut rb = RingBuf::try_from(
                self.ebpf
                    .map_mut("DLP_RECORDS")
                    .context("map DLP_RECORDS")?,
            )?;
            while let Some(item) = rb.next() {
                if let Some(r) = parse_record(&item) {
                    records.push(r);
                }
            }
        }
        let n = records.len();
        for r in records {
            self.record(&r, out);
        }
        Ok(n)
    }

    fn record(&mut self, r: &Record, out: &mut dyn Write) {
        let tgid = (r.pid_tgid >> 32) as u32;
        let len = (r.len as usize).min(r.data.len());
        let key = StreamKey {
            tgid,
            ssl: r.ssl,
            dir: r.dir,
        };
        let hits = self.scanner.push(key, &r.data[..len]);
        for h in hits {
            self.matches += 1;
            let mut reset = false;
            if self.action == Action::Reset && r.has_flow != 0 && r.flow.family != 0 {
                reset = self.reset(&r.flow).is_ok();
            }
            emit(
                out,
                &json!({
                    "event": "dlp-match",
                    "detector": h.detector,
                    "kind": h.kind,
                    "excerpt": h.excerpt,
                    "direction": if r.dir == DIR_READ { "read" } else { "write" },
                    "pid": tgid,
                    "tid": r.pid_tgid as u32,
                    "comm": comm(&r.comm),
                    "cgroup": r.cgroup,
                    "flow": flow_json(r),
                    "action": if reset { "reset" } else { "alert" },
                }),
            );
        }
    }

    /// Puts a flow (both directions) in the reset map.
    fn reset(&mut self, f: &Flow) -> Result<()> {
        let mut m: BpfHashMap<_, ResetKey, u64> =
            BpfHashMap::try_from(self.ebpf.map_mut("DLP_RESET").context("map DLP_RESET")?)?;
        let now = 1;
        m.insert(
            ResetKey {
                saddr: f.saddr,
                daddr: f.daddr,
                sport: f.sport,
                dport: f.dport,
            },
            now,
            0,
        )?;
        m.insert(
            ResetKey {
                saddr: f.daddr,
                daddr: f.saddr,
                sport: f.dport,
                dport: f.sport,
            },
            now,
            0,
        )?;
        self.resets += 1;
        Ok(())
    }

    /// The kernel counters, summed over CPUs, `dlp::stat::*` order.
    ///
    /// # Errors
    /// When the map is missing.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("DLP_STATS").context("map DLP_STATS")?)?;
        let names = [
            "calls",
            "records",
            "lost",
            "truncated_calls",
            "truncated_bytes",
            "no_entry",
            "no_flow",
            "reset_drops",
            "read_faults",
        ];
        let mut out = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let v = m.get(&(i as u32), 0)?;
            out.push((*name, v.iter().sum()));
        }
        debug_assert_eq!(names.len(), stat::COUNT as usize);
        Ok(out)
    }

    /// Runs until `stop`: drains records, rescans `/proc` every [`RESCAN`].
    ///
    /// # Errors
    /// As [`Watcher::drain`].
    pub fn run(&mut self, stop: &Arc<AtomicBool>, out: &mut dyn Write) -> Result<()> {
        let mut last = Instant::now() - RESCAN;
        let mut exited: HashMap<u32, ()> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            if last.elapsed() >= RESCAN {
                self.rescan(out);
                last = Instant::now();
                exited.clear();
                self.reported
                    .retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
            }
            if self.drain(out)? == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = out.flush();
        }
        self.drain(out)?;
        let counters = self.counters()?;
        let mut c = serde_json::Map::new();
        for (k, v) in counters {
            c.insert(k.to_owned(), v.into());
        }
        c.insert("matches".into(), self.matches.into());
        c.insert("resets".into(), self.resets.into());
        c.insert("uncovered".into(), self.uncovered.into());
        c.insert("streams_evicted".into(), self.scanner.evicted.into());
        emit(out, &json!({"event": "dlp-stopped", "counters": c}));
        let _ = std::fs::remove_file(state_file());
        Ok(())
    }
}

/// A record as the ring buffer carries it: the header and a size class of `data` (see
/// `dlp::SIZE_CLASSES`). `None` when shorter than the header; `len` is clamped to the bytes
/// present.
fn parse_record(item: &[u8]) -> Option<Box<Record>> {
    if item.len() < RECORD_HEADER {
        return None;
    }
    // SAFETY: all-zero bytes are a valid `Record` (integers and byte arrays only).
    let mut r: Box<Record> = Box::new(unsafe { std::mem::zeroed() });
    let n = item.len().min(size_of::<Record>());
    // SAFETY: `Record` is plain bytes (`Pod`); at most its size is copied into it.
    unsafe {
        std::ptr::copy_nonoverlapping(item.as_ptr(), (&raw mut *r).cast::<u8>(), n);
    }
    r.len = r.len.min((n - RECORD_HEADER) as u32);
    Some(r)
}

fn emit(out: &mut dyn Write, v: &serde_json::Value) {
    let _ = writeln!(out, "{v}");
}

fn comm(c: &[u8; 16]) -> String {
    let n = c.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&c[..n]).into_owned()
}

fn addr(a: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn flow_json(r: &Record) -> serde_json::Value {
    if r.has_flow == 0 {
        return serde_json::Value::Null;
    }
    json!({
        "proto": "tcp",
        "src": addr(r.flow.saddr).to_string(),
        "sport": r.flow.sport,
        "dst": addr(r.flow.daddr).to_string(),
        "dport": r.flow.dport,
    })
}
