//! The DLP watcher: loads the probes, attaches them to every OpenSSL `libssl` in use (the
//! system's, and each container's through `/proc/PID/root`), reads the plaintext records,
//! runs the scanner and reports matches (and processes it cannot cover) as JSON lines.

use std::{
    collections::HashSet,
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        ProbeKind, RawTracePoint, SchedClassifier, TcAttachType, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint},
    },
};
use palisade_common::dlp::{
    COOKIE_EX, COOKIE_FREE, COOKIE_READ, DIR_EXEC, DIR_FLOW, DIR_READ, Flow, RECORD_HEADER, Record,
    ResetKey, stat,
};
use serde_json::json;

use crate::pin::Layout;

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

/// The TC egress program of `action = "reset"`.
pub const RESET: &str = "palisade_dlp_reset";

/// `SSL_free`, probed at entry to forget its `SSL*`'s flow.
pub const FREE_SYMBOL: &str = "SSL_free";

/// Where the entry probes of writes and `SSL_free` sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// On the first instruction the kernel emulates ([`super::prologue::entry_offset`]):
    /// one trap per call.
    #[default]
    Emulated,
    /// On the function's first instruction, single-stepped by the kernel (two traps per call;
    /// for `palisade-bench --dlp` to measure the difference).
    FirstInstruction,
}

/// Which hook sees the TCP sends that name the flow of a pending write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sends {
    /// The raw tracepoint `tcp:tcp_sendmsg_locked` ([`TCP_SEND`]) where the kernel has it
    /// (6.8 and later), else `sock:sock_send_length`.
    #[default]
    Raw,
    /// `sock:sock_send_length` ([`SOCK`]), as on kernels without the raw tracepoint (for
    /// the tests of that path and for `palisade-bench --dlp` to measure the difference).
    Tracepoint,
}

/// How long a write record whose `SSL*` has no flow yet waits for its `DIR_FLOW` record
/// (the send that follows the probe within the call) before it is scanned without one.
pub const FLOW_WAIT: Duration = Duration::from_millis(20);
/// Write records held for their flow at most (the oldest is scanned without one beyond).
pub const MAX_WAITING: usize = 4096;

/// How often all of `/proc` is scanned for new libraries and uncovered processes. A process
/// that exec's is looked at on its exec record (see [`EXEC_CHECKS_MS`]); the scan finds the
/// libraries opened later and the processes of before the watcher.
pub const RESCAN: Duration = Duration::from_secs(1);

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
    kernel: Kernel,
    scanner: Scanner,
    action: Action,
    probed: HashSet<LibKey>,
    reported: HashSet<u32>,
    /// Matches reported.
    pub matches: u64,
    /// Flows put in the reset map.
    pub resets: u64,
    /// Flows let go from `DLP_RESET` after [`RESET_HOLD`] without a packet stopped.
    pub resets_expired: u64,
    /// When the watcher started: it lets no flow go before it has run for [`RESET_HOLD`].
    started: Instant,
    /// Processes reported uncovered (each once while it lives).
    pub uncovered: u64,
    placement: Placement,
    /// Write records waiting for their `SSL*`'s flow, in arrival order, with when they came.
    waiting: Vec<(Instant, Box<Record>)>,
    /// Write records scanned without a flow after [`FLOW_WAIT`].
    pub late_no_flow: u64,
    /// Matches per detector name.
    pub by_detector: std::collections::BTreeMap<String, u64>,
    execs: Vec<Exec>,
    /// Exec records read.
    pub execs_seen: u64,
    /// Whether it writes its state file ([`Watcher::publish_state`]).
    state: bool,
}

/// A process that exec'd, looked at until its libraries say what it is.
#[derive(Debug, Clone, Copy)]
struct Exec {
    pid: u32,
    /// When it exec'd (`CLOCK_MONOTONIC`, from the kernel).
    ts_ns: u64,
    /// When its record was read.
    seen: Instant,
    /// Checks done so far.
    checks: usize,
}

/// When a process that exec'd is looked at, after its exec record is read (ms): the dynamic
/// loader maps its libraries within the first milliseconds; a library opened later
/// (`dlopen`, e.g. Python's `import ssl`) is found by these or by the next [`RESCAN`].
pub const EXEC_CHECKS_MS: [u64; 8] = [0, 2, 10, 50, 250, 800, 1500, 3000];
/// Processes that exec'd being looked at, at most (more wait for the next [`RESCAN`]).
pub const MAX_EXECS: usize = 1024;

/// How long a flow stays in `DLP_RESET` after the last packet it stopped (or after it was
/// listed, when none came): longer than TCP retransmits before it gives up (about 15 minutes
/// with the default `net.ipv4.tcp_retries2`), so a connection still trying keeps its entry
/// and the entry of one that is gone frees its room.
pub const RESET_HOLD: Duration = Duration::from_secs(20 * 60);

/// Removes from `DLP_RESET` the flows that stopped nothing for `hold` up to `now_ns`
/// (`CLOCK_MONOTONIC`); returns how many.
///
/// # Errors
/// When the map cannot be read.
pub fn expire_resets<T: std::borrow::BorrowMut<MapData>>(
    map: &mut BpfHashMap<T, ResetKey, u64>,
    now_ns: u64,
    hold: Duration,
) -> Result<usize> {
    let hold = u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX);
    let stale: Vec<ResetKey> = map
        .iter()
        .filter_map(std::result::Result::ok)
        .filter(|(_, last)| now_ns.saturating_sub(*last) >= hold)
        .map(|(k, _)| k)
        .collect();
    let mut removed = 0;
    for k in &stale {
        // Gone already (another watcher's sweep) is fine.
        if map.remove(k).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// `CLOCK_MONOTONIC` in nanoseconds (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Records in one drain from which the watcher reads again at once instead of sleeping:
/// a sixteenth of what the ring holds in records of the smallest size class. Below it the
/// records come at less than 512,000 a second, and a 2 ms sleep leaves the ring far from
/// full.
const BUSY_DRAIN: usize = 1024;

/// The entry probe (`SSL_write[_ex]`, `SSL_read[_ex]`, `SSL_free`).
pub const ENTER: &str = "palisade_dlp_enter";
/// The return probe of reads.
pub const LEAVE: &str = "palisade_dlp_leave";
/// The flow of a call, on `sock:sock_recv_length` (and `sock:sock_send_length` on a kernel
/// without `tcp:tcp_sendmsg_locked`).
pub const SOCK: &str = "palisade_dlp_sock";
/// The flow of a call's TCP sends, on the raw tracepoint `tcp:tcp_sendmsg_locked`.
pub const TCP_SEND: &str = "palisade_dlp_tcp_send";
/// The raw tracepoint [`TCP_SEND`] goes on (Linux 6.8 and later).
const TCP_SEND_TRACEPOINT: &str = "tcp_sendmsg_locked";
/// The exec record, on `sched:sched_process_exec`.
pub const EXEC: &str = "palisade_dlp_exec";
/// Every program of the watcher.
pub const PROGRAMS: [&str; 6] = [ENTER, LEAVE, SOCK, TCP_SEND, EXEC, RESET];

/// Where a watcher's programs and maps come from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// A kernel object of its own, loaded now and gone with the watcher (`palisade dlp
    /// watch`, `palisade-bench --dlp`).
    Own,
    /// The daemon's object: the programs it loaded and pinned under this layout
    /// (`Datapath::load_dlp`) and its pinned maps, so `palisade stats`, the pins and
    /// `DLP_RESET` are one set of maps, and a reload loads nothing again.
    Pinned(&'a Layout),
}

/// The watcher's handles on the programs (each attached by the watcher, detached when it
/// goes) and on the maps it uses.
struct Kernel {
    enter: UProbe,
    leave: UProbe,
    sock: TracePoint,
    tcp_send: RawTracePoint,
    exec: TracePoint,
    /// Only under `action = "reset"`.
    reset: Option<SchedClassifier>,
    ring: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    resets: BpfHashMap<MapData, ResetKey, u64>,
}

impl Kernel {
    /// Handles on the programs and maps of `source` (an own object is loaded and its programs
    /// verified here).
    fn open(source: Source<'_>, with_reset: bool) -> Result<Self> {
        match source {
            Source::Own => Self::own(with_reset),
            Source::Pinned(layout) => Self::pinned(layout, with_reset),
        }
    }

    fn own(with_reset: bool) -> Result<Self> {
        let mut ebpf = crate::loader::load()?;
        for name in PROGRAMS {
            if name != RESET || with_reset {
                load_program(&mut ebpf, name)?;
            }
        }
        // Handles of their own on the loaded programs (cloned fds): the object can go, the
        // programs stay loaded while a handle holds them.
        let info = |name: &str| -> Result<aya::programs::ProgramInfo> {
            ebpf.program(name)
                .with_context(|| format!("program {name}"))?
                .info()
                .with_context(|| format!("program {name}"))
        };
        // SAFETY: the object declares both as uprobes (`#[uprobe]`, `#[uretprobe]`).
        let (enter, leave) = unsafe {
            (
                UProbe::from_program_info(info(ENTER)?, ENTER.into(), ProbeKind::Entry)?,
                UProbe::from_program_info(info(LEAVE)?, LEAVE.into(), ProbeKind::Return)?,
            )
        };
        let sock = TracePoint::from_program_info(info(SOCK)?, SOCK.into())?;
        let tcp_send = RawTracePoint::from_program_info(info(TCP_SEND)?, TCP_SEND.into())?;
        let exec = TracePoint::from_program_info(info(EXEC)?, EXEC.into())?;
        let reset = if with_reset {
            Some(SchedClassifier::from_program_info(
                info(RESET)?,
                RESET.into(),
            )?)
        } else {
            None
        };
        let mut take = |name: &str| ebpf.take_map(name).with_context(|| format!("map {name}"));
        Ok(Self {
            enter,
            leave,
            sock,
            tcp_send,
            exec,
            reset,
            ring: RingBuf::try_from(take("DLP_RECORDS")?)?,
            stats: PerCpuArray::try_from(take("DLP_STATS")?)?,
            resets: BpfHashMap::try_from(take("DLP_RESET")?)?,
        })
    }

    fn pinned(layout: &Layout, with_reset: bool) -> Result<Self> {
        let prog = |name: &str| layout.prog(name);
        let ctx = |name: &str| {
            format!(
                "program {name} pinned at {} (loaded by the daemon)",
                layout.prog(name).display()
            )
        };
        let map = |name: &str| -> Result<aya::maps::Map> {
            let path = layout.map(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("map {name} pinned at {}", path.display()))?;
            Ok(aya::maps::Map::from_map_data(data)?)
        };
        Ok(Self {
            enter: UProbe::from_pin(prog(ENTER), ProbeKind::Entry).with_context(|| ctx(ENTER))?,
            leave: UProbe::from_pin(prog(LEAVE), ProbeKind::Return).with_context(|| ctx(LEAVE))?,
            sock: TracePoint::from_pin(prog(SOCK)).with_context(|| ctx(SOCK))?,
            tcp_send: RawTracePoint::from_pin(prog(TCP_SEND)).with_context(|| ctx(TCP_SEND))?,
            exec: TracePoint::from_pin(prog(EXEC)).with_context(|| ctx(EXEC))?,
            reset: if with_reset {
                Some(SchedClassifier::from_pin(prog(RESET)).with_context(|| ctx(RESET))?)
            } else {
                None
            },
            ring: RingBuf::try_from(map("DLP_RECORDS")?)?,
            stats: PerCpuArray::try_from(map("DLP_STATS")?)?,
            resets: BpfHashMap::try_from(map("DLP_RESET")?)?,
        })
    }
}

/// Where tracefs is mounted by convention; the tracepoints' ids are read there.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at [`TRACEFS`] when no tracefs is there or at the old debugfs place (a
/// machine that mounts neither at boot), as the daemon mounts bpffs: attaching a tracepoint
/// reads its id from tracefs. Before the first attach of the process (aya looks once).
fn ensure_tracefs() -> Result<()> {
    let mounted = |dir: &str| std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if mounted(TRACEFS) || mounted("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    // SAFETY: plain C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting tracefs at {TRACEFS} (for the sock and exec tracepoints): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Loads (verifies) program `name` of `ebpf`, one of [`PROGRAMS`].
///
/// # Errors
/// When the object has no such program or the kernel refuses it.
pub fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("kernel object has no program {name}"))?;
    match prog {
        aya::programs::Program::UProbe(p) => p.load(),
        aya::programs::Program::TracePoint(p) => p.load(),
        aya::programs::Program::RawTracePoint(p) => p.load(),
        aya::programs::Program::SchedClassifier(p) => p.load(),
        _ => bail!("program {name} is not of a kind the DLP watcher uses"),
    }
    .with_context(|| format!("loading {name}"))
}

impl Watcher {
    /// Loads the probes (an object of its own) and attaches them to the system's libssl and
    /// the policy's `libraries`; the reset program goes on `interfaces` under `action =
    /// "reset"`.
    ///
    /// # Errors
    /// When the object cannot be loaded or a probe cannot be attached.
    pub fn start(p: &Dlp) -> Result<Self> {
        Self::start_placed(p, Placement::Emulated, Source::Own)
    }

    /// [`Watcher::start_hooked`] with the sends on [`Sends::Raw`].
    ///
    /// # Errors
    /// As [`Watcher::start`].
    pub fn start_placed(p: &Dlp, placement: Placement, source: Source<'_>) -> Result<Self> {
        Self::start_hooked(p, placement, Sends::Raw, source)
    }

    /// [`Watcher::start`] with the write probes at `placement`, the sends seen by `sends`,
    /// and the programs and maps of `source`.
    ///
    /// # Errors
    /// As [`Watcher::start`].
    pub fn start_hooked(
        p: &Dlp,
        placement: Placement,
        sends: Sends,
        source: Source<'_>,
    ) -> Result<Self> {
        let detectors = Detectors::new(p).context("compiling the [dlp] patterns")?;
        let mut k = Kernel::open(source, p.action == Action::Reset)?;
        ensure_tracefs()?;
        // TCP sends on the raw tracepoint, where the kernel has it: no trace record is built
        // for them, and no other protocol's send runs the program. Else on
        // `sock:sock_send_length`, as the receives.
        let mut events = vec!["sock_recv_length"];
        if sends == Sends::Tracepoint || k.tcp_send.attach(TCP_SEND_TRACEPOINT).is_err() {
            events.push("sock_send_length");
        }
        for event in events {
            k.sock
                .attach("sock", event)
                .with_context(|| format!("attaching {SOCK} to sock:{event}"))?;
        }
        k.exec
            .attach("sched", "sched_process_exec")
            .with_context(|| format!("attaching {EXEC} to sched:sched_process_exec"))?;
        if let Some(tc) = k.reset.as_mut() {
            for iface in &p.interfaces {
                tc.attach(iface, TcAttachType::Egress).with_context(|| {
                    format!("[dlp].interfaces: attaching to {iface} (TC egress)")
                })?;
            }
        }
        let mut w = Self {
            kernel: k,
            scanner: Scanner::new(detectors),
            action: p.action,
            probed: HashSet::new(),
            reported: HashSet::new(),
            matches: 0,
            resets: 0,
            resets_expired: 0,
            uncovered: 0,
            placement,
            waiting: Vec::new(),
            late_no_flow: 0,
            by_detector: std::collections::BTreeMap::new(),
            execs: Vec::new(),
            execs_seen: 0,
            started: Instant::now(),
            state: matches!(source, Source::Own),
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

    /// Attaches the probes to one library file (once per file): the entry probe on the four
    /// functions and `SSL_free`, the return probe on the two reads. Writes and `SSL_free` are
    /// probed at [`Placement`] (a library without `SSL_free` goes without it).
    ///
    /// # Errors
    /// When the file cannot be read or a probe cannot be attached.
    pub fn probe(&mut self, path: &Path) -> Result<bool> {
        let key = LibKey::of(path)?;
        if self.probed.contains(&key) {
            return Ok(false);
        }
        let entry_offset = |sym: &str| match self.placement {
            Placement::Emulated => super::prologue::entry_offset(path, sym),
            Placement::FirstInstruction => 0,
        };
        let mut points: Vec<(&str, &str, u64, u64)> = Vec::new();
        for (sym, cookie) in SYMBOLS {
            if cookie & COOKIE_READ == 0 {
                points.push((ENTER, sym, entry_offset(sym), cookie));
            } else {
                points.push((ENTER, sym, 0, cookie));
                points.push((LEAVE, sym, 0, cookie));
            }
        }
        let has_free = super::prologue::function_bytes(path, FREE_SYMBOL).is_ok();
        if has_free {
            points.push((ENTER, FREE_SYMBOL, entry_offset(FREE_SYMBOL), COOKIE_FREE));
        }
        for (prog, sym, offset, cookie) in points {
            let pr = if prog == ENTER {
                &mut self.kernel.enter
            } else {
                &mut self.kernel.leave
            };
            pr.attach(
                UProbeAttachPoint {
                    location: UProbeAttachLocation::SymbolOffset(sym, offset),
                    cookie: Some(cookie),
                },
                path,
                aya::programs::uprobe::UProbeScope::AllProcesses,
            )
            .with_context(|| {
                format!(
                    "attaching {prog} to {sym}+{offset:#x} in {}",
                    path.display()
                )
            })?;
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

    /// Writes the state file from now on (for `palisade dlp coverage`), and at once. Under
    /// the daemon a watcher does so once it took over from the one before, whose state file
    /// (the daemon's pid) goes when that one stops.
    pub fn publish_state(&mut self) {
        self.state = true;
        self.write_state();
    }

    fn write_state(&self) {
        if !self.state {
            return;
        }
        let mut lines: Vec<String> = self.probed.iter().map(LibKey::line).collect();
        lines.sort();
        let _ = std::fs::create_dir_all(STATE_DIR);
        let _ = std::fs::write(state_file(), lines.join("\n") + "\n");
    }

    /// One pass over `/proc`: probes libraries not probed yet, reports processes that use a
    /// TLS library it cannot probe (each once).
    /// A process still looked at since its exec ([`EXEC_CHECKS_MS`]) keeps its exec time:
    /// found by the scan first, its `dlp-probed` still says `exec_to_probe_ms`.
    pub fn rescan(&mut self, out: &mut dyn Write) {
        for proc_ in coverage::scan(&self.probed) {
            let exec = self.execs.iter().position(|e| e.pid == proc_.pid);
            let exec_ns = exec.map(|i| self.execs[i].ts_ns);
            if self.handle(&proc_, exec_ns, out)
                && let Some(i) = exec
            {
                self.execs.swap_remove(i);
            }
        }
    }

    /// Probes a process's libssl if it is new, or reports the process uncovered (once).
    /// `exec_ns`: when it exec'd (`CLOCK_MONOTONIC`), for `exec_to_probe_ms`. Returns
    /// whether there is nothing more to learn of it (covered, probed or uncovered).
    fn handle(
        &mut self,
        proc_: &coverage::Proc,
        exec_ns: Option<u64>,
        out: &mut dyn Write,
    ) -> bool {
        match &proc_.status {
            Status::Probeable { path, .. } => match self.probe(path) {
                Ok(true) => {
                    let mut ev = json!({
                        "event": "dlp-probed",
                        "library": path.display().to_string(),
                        "pid": proc_.pid,
                        "comm": proc_.comm,
                        "process_age_ms": proc_.age.map(|d| d.as_millis() as u64),
                    });
                    if let Some(t) = exec_ns {
                        let ms = monotonic_ns().saturating_sub(t) as f64 / 1e6;
                        ev["exec_to_probe_ms"] = json!((ms * 1000.0).round() / 1000.0);
                    }
                    emit(out, &ev);
                    true
                }
                Ok(false) => true,
                Err(e) => {
                    self.report_uncovered(proc_, &format!("{e:#}"), out);
                    true
                }
            },
            Status::Uncovered(reason) => {
                self.report_uncovered(proc_, reason, out);
                true
            }
            Status::Covered { .. } => true,
            Status::NoTls => false,
        }
    }

    fn report_uncovered(&mut self, proc_: &coverage::Proc, reason: &str, out: &mut dyn Write) {
        if self.reported.insert(proc_.pid) {
            self.uncovered += 1;
            emit(
                out,
                &json!({"event": "dlp-uncovered", "pid": proc_.pid,
                    "comm": proc_.comm, "reason": reason}),
            );
        }
    }

    /// Looks at the processes that exec'd whose next check is due (see [`EXEC_CHECKS_MS`]).
    fn check_execs(&mut self, out: &mut dyn Write) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.execs.len() {
            let e = self.execs[i];
            if now.duration_since(e.seen) < Duration::from_millis(EXEC_CHECKS_MS[e.checks]) {
                i += 1;
                continue;
            }
            let done = match coverage::process(e.pid, &self.probed) {
                Some(p) => self.handle(&p, Some(e.ts_ns), out),
                None => true,
            };
            if done || e.checks + 1 >= EXEC_CHECKS_MS.len() {
                self.execs.swap_remove(i);
            } else {
                self.execs[i].checks += 1;
                i += 1;
            }
        }
    }

    /// Reads every record waiting; returns how many.
    ///
    /// # Errors
    /// When the ring buffer map is missing (a broken build).
    pub fn drain(&mut self, out: &mut dyn Write) -> Result<usize> {
        let now = Instant::now();
        let mut n = 0;
        // One record's room for the whole batch: a record is copied out of the ring into it
        // and scanned there; only a write that must wait for its flow gets its own copy.
        // SAFETY: all-zero bytes are a valid `Record` (integers and byte arrays only).
        let mut scratch: Box<Record> = Box::new(unsafe { std::mem::zeroed() });
        loop {
            // The item is let go (the ring's space freed) before the record is scanned.
            let filled = match self.kernel.ring.next() {
                Some(item) => fill_record(&mut scratch, &item),
                None => break,
            };
            if filled {
                n += 1;
                self.arrive(&scratch, now, out);
            }
        }
        self.release(now, false, out);
        Ok(n)
    }

    /// Scans the held writes whose flow did not come within [`FLOW_WAIT`] (all of them with
    /// `all`) without one.
    pub fn release(&mut self, now: Instant, all: bool, out: &mut dyn Write) {
        while self
            .waiting
            .first()
            .is_some_and(|(t, _)| all || now.duration_since(*t) >= FLOW_WAIT)
        {
            let (_, r) = self.waiting.remove(0);
            self.late_no_flow += 1;
            self.record(&r, out);
        }
    }

    /// Scans a record, or holds a write whose `SSL*` has no flow yet (and every record of
    /// that stream after it, to keep their order) until its `DIR_FLOW` record names it.
    fn arrive(&mut self, r: &Record, now: Instant, out: &mut dyn Write) {
        let same = |a: &Record, b: &Record| a.pid_tgid >> 32 == b.pid_tgid >> 32 && a.ssl == b.ssl;
        if r.dir == DIR_EXEC {
            self.execs_seen += 1;
            let e = Exec {
                pid: (r.pid_tgid >> 32) as u32,
                ts_ns: r.ts_ns,
                seen: now,
                checks: 0,
            };
            // A process that exec's again (a shell's `exec`) starts over from its last exec.
            if let Some(old) = self.execs.iter_mut().find(|o| o.pid == e.pid) {
                *old = e;
            } else if self.execs.len() < MAX_EXECS {
                self.execs.push(e);
            }
            return;
        }
        if r.dir == DIR_FLOW {
            let mut i = 0;
            while i < self.waiting.len() {
                if same(&self.waiting[i].1, r) {
                    let (_, mut w) = self.waiting.remove(i);
                    w.flow = r.flow;
                    w.has_flow = 1;
                    self.record(&w, out);
                } else {
                    i += 1;
                }
            }
            return;
        }
        let held = self.waiting.iter().any(|(_, w)| same(w, r));
        if held || (r.dir != DIR_READ && r.has_flow == 0) {
            self.waiting.push((now, Box::new(*r)));
            if self.waiting.len() > MAX_WAITING {
                let (_, w) = self.waiting.remove(0);
                self.late_no_flow += 1;
                self.record(&w, out);
            }
            return;
        }
        self.record(r, out);
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
            *self.by_detector.entry(h.detector.clone()).or_default() += 1;
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
        let m = &mut self.kernel.resets;
        let now = monotonic_ns();
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
        let m = &self.kernel.stats;
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
            // Writes captured at entry whose flow never came count as `no_flow` too.
            let late = if *name == "no_flow" {
                self.late_no_flow
            } else {
                0
            };
            out.push((*name, v.iter().sum::<u64>() + late));
        }
        debug_assert_eq!(names.len(), stat::COUNT as usize);
        Ok(out)
    }

    /// One turn of the watcher's loop: rescans `/proc` when [`RESCAN`] has passed since
    /// `last`, drains the records, then sleeps 2 ms unless there were [`BUSY_DRAIN`] or more
    /// (the ring filling faster than that goes on at once).
    ///
    /// # Errors
    /// As [`Watcher::drain`].
    pub fn tick(&mut self, last: &mut Instant, out: &mut dyn Write) -> Result<()> {
        if last.elapsed() >= RESCAN {
            // Only once this watcher has run for the hold time itself: the entries a watcher
            // before it listed (another build's among them) have had every chance to stop a
            // packet and show they are still needed.
            if self.started.elapsed() >= RESET_HOLD
                && let Ok(n) = expire_resets(&mut self.kernel.resets, monotonic_ns(), RESET_HOLD)
            {
                self.resets_expired += n as u64;
            }
            self.rescan(out);
            *last = Instant::now();
            self.reported
                .retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
        }
        let n = self.drain(out)?;
        self.check_execs(out);
        if n < BUSY_DRAIN {
            // Read in batches: a reader that went back to the ring at once would wake for
            // each record, and take a CPU from the writers it watches.
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = out.flush();
        Ok(())
    }

    /// Every counter: the kernel's ([`Watcher::counters`]), then `matches`, `resets`,
    /// `uncovered`, `streams_evicted`, `libraries_probed` and `matches_<detector>` per
    /// detector that matched.
    #[must_use]
    pub fn all_counters(&self) -> Vec<(String, u64)> {
        let mut c: Vec<(String, u64)> = self
            .counters()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        c.push(("matches".into(), self.matches));
        c.push(("resets".into(), self.resets));
        c.push(("resets_expired".into(), self.resets_expired));
        c.push(("uncovered".into(), self.uncovered));
        c.push(("streams_evicted".into(), self.scanner.evicted));
        c.push(("libraries_probed".into(), self.probed.len() as u64));
        c.push(("execs".into(), self.execs_seen));
        for (d, n) in &self.by_detector {
            c.push((format!("matches_{d}"), *n));
        }
        c
    }

    /// Runs until `stop`: drains records, rescans `/proc` every [`RESCAN`].
    ///
    /// # Errors
    /// As [`Watcher::drain`].
    pub fn run(&mut self, stop: &Arc<AtomicBool>, out: &mut dyn Write) -> Result<()> {
        let mut last = Instant::now() - RESCAN;
        while !stop.load(Ordering::Relaxed) {
            self.tick(&mut last, out)?;
        }
        self.drain(out)?;
        self.release(Instant::now(), true, out);
        let mut c = serde_json::Map::new();
        for (k, v) in self.all_counters() {
            if !k.starts_with("matches_") && k != "libraries_probed" && k != "execs" {
                c.insert(k, v.into());
            }
        }
        emit(out, &json!({"event": "dlp-stopped", "counters": c}));
        let _ = std::fs::remove_file(state_file());
        Ok(())
    }
}

impl Drop for Watcher {
    /// Its probes go with its handles; its state file goes too, if it wrote one.
    fn drop(&mut self) {
        if self.state {
            let _ = std::fs::remove_file(state_file());
        }
    }
}

/// Copies a record as the ring buffer carries it (the header and a size class of `data`, see
/// `dlp::SIZE_CLASSES`) into `r`; false, with `r` unusable, when shorter than the header.
/// `len` is clamped to the bytes present, so the bytes of `data` past them (left from an
/// earlier record) are never read.
fn fill_record(r: &mut Record, item: &[u8]) -> bool {
    if item.len() < RECORD_HEADER {
        return false;
    }
    let n = item.len().min(size_of::<Record>());
    // SAFETY: `Record` is plain bytes (`Pod`); at most its size is copied into it.
    unsafe {
        std::ptr::copy_nonoverlapping(item.as_ptr(), (&raw mut *r).cast::<u8>(), n);
    }
    r.len = r.len.min((n - RECORD_HEADER) as u32);
    true
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
