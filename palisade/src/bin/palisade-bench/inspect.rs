//! What the kernel says about the loaded object (verifier work, code size, map memory) and
//! what the machine is.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{Ebpf, maps::MapInfo, programs::ProgramInfo};
use serde::Serialize;

use crate::harness::LoadFailure;

/// The default verifier budget, which leaves room to grow: the kernel's hard limit is 1M
/// processed instructions, and a program near it breaks with the next compiler or kernel
/// change.
pub const VERIFIER_BUDGET: u32 = 500_000;
/// The kernel's limit.
pub const VERIFIER_LIMIT: u32 = 1_000_000;

#[derive(Debug, Clone, Serialize)]
pub struct ProgramReport {
    pub program: String,
    /// Instructions the verifier processed (all paths it walked), not the program's length.
    pub verified_insns: Option<u32>,
    pub xlated_bytes: Option<u32>,
    pub jited_bytes: u32,
    pub within_budget: bool,
    /// Set when the program failed to load: the verifier's complaint.
    pub load_error: Option<String>,
}

fn info(ebpf: &Ebpf, name: &str) -> Result<ProgramInfo> {
    ebpf.program(name)
        .ok_or_else(|| anyhow!("no program {name}"))?
        .info()
        .with_context(|| format!("reading program info of {name} (is it loaded?)"))
}

/// Verifier statistics of program `name`, or of its failed load.
///
/// # Errors
/// When the program neither loaded nor failed to.
pub fn program(
    ebpf: &Ebpf,
    name: &str,
    failures: &[LoadFailure],
    budget: u32,
) -> Result<ProgramReport> {
    if let Some(f) = failures.iter().find(|f| f.program == name) {
        return Ok(ProgramReport {
            program: name.to_string(),
            verified_insns: f.processed_insns,
            xlated_bytes: None,
            jited_bytes: 0,
            within_budget: false,
            load_error: Some(f.summary.clone()),
        });
    }
    let info = info(ebpf, name)?;
    let verified = info.verified_instruction_count();
    Ok(ProgramReport {
        program: name.to_string(),
        verified_insns: verified,
        xlated_bytes: info.size_translated(),
        jited_bytes: info.size_jitted(),
        within_budget: verified.is_none_or(|v| v <= budget),
        load_error: None,
    })
}

/// Memory the kernel charges for one map (`memlock` in its fdinfo).
#[derive(Debug, Clone, Serialize)]
pub struct MapMemory {
    pub name: String,
    pub max_entries: u32,
    pub memlock_bytes: u64,
}

/// The memory of every map `name` uses, by map name.
///
/// # Errors
/// When the program or its maps cannot be inspected.
pub fn maps_of(ebpf: &Ebpf, name: &str) -> Result<BTreeMap<String, MapMemory>> {
    let info = info(ebpf, name)?;
    let ids = info
        .map_ids()
        .context("listing the program's maps")?
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for id in ids {
        let m = MapInfo::from_id(id).with_context(|| format!("map id {id}"))?;
        let fd = m.fd()?;
        insert_memory(&mut out, &m, fd.as_fd().as_raw_fd())?;
    }
    add_tables(ebpf, &mut out)?;
    Ok(out)
}

/// Adds the tables in the slots of the arrays of maps the daemon fills
/// (`palisade::capacity::arrays_of_tables`) to their array's entry in `out`: its memory and
/// capacity are then those of the tables it holds (and its own slots).
fn add_tables(ebpf: &Ebpf, out: &mut BTreeMap<String, MapMemory>) -> Result<()> {
    use palisade::capacity::{arrays_of_tables, slot_table};
    for (outer, names) in arrays_of_tables() {
        let Some(entry) = out.get_mut(outer) else {
            continue;
        };
        for (slot, name) in (0..).zip(names) {
            if let Some(t) = slot_table(ebpf, outer, name, slot)? {
                let fd = t.fd().as_fd().as_raw_fd();
                entry.memlock_bytes += fdinfo_field(fd, "memlock")?.unwrap_or(0);
                entry.max_entries += fdinfo_field(fd, "max_entries")?.unwrap_or(0) as u32;
            }
        }
    }
    Ok(())
}

/// The ids of the maps this process holds open, with the fd of each (the first found).
///
/// # Errors
/// When `/proc/self/fd` cannot be read.
pub fn open_maps() -> Result<BTreeMap<u32, i32>> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir("/proc/self/fd").context("reading /proc/self/fd")? {
        let Some(fd) = e?.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // Closed since it was listed, or not a map: skipped.
        if let Ok(Some(id)) = fdinfo_field(fd, "map_id") {
            out.entry(id as u32).or_insert(fd);
        }
    }
    Ok(out)
}

/// The memory of every map this process opened since `before` ([`open_maps`]) was taken,
/// by map name: the maps of an object loaded in between (`ebpf`), its policy tables
/// included.
///
/// # Errors
/// When a map cannot be inspected.
pub fn maps_since(ebpf: &Ebpf, before: &BTreeMap<u32, i32>) -> Result<BTreeMap<String, MapMemory>> {
    let mut out = BTreeMap::new();
    for (id, fd) in open_maps()? {
        if before.contains_key(&id) {
            continue;
        }
        let m = MapInfo::from_id(id).with_context(|| format!("map id {id}"))?;
        insert_memory(&mut out, &m, fd)?;
    }
    add_tables(ebpf, &mut out)?;
    Ok(out)
}

/// Adds the memory of map `m`, open as `fd`, to `out` under its name.
fn insert_memory(out: &mut BTreeMap<String, MapMemory>, m: &MapInfo, fd: i32) -> Result<()> {
    let name = m.name_as_str().unwrap_or("?").to_string();
    let memlock = fdinfo_field(fd, "memlock")?.unwrap_or(0);
    out.insert(
        name.clone(),
        MapMemory {
            name,
            max_entries: m.max_entries(),
            memlock_bytes: memlock,
        },
    );
    Ok(())
}

fn fdinfo_field(fd: i32, key: &str) -> Result<Option<u64>> {
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    Ok(text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok()).flatten()
    }))
}

/// Facts about the machine that decide how to read the numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_mib: u64,
    pub virtualized: bool,
    pub bpf_jit_enable: String,
    pub bpf_jit_harden: String,
    pub spectre_v2: String,
    pub bench_cpu: Option<usize>,
}

/// CPUs online on the machine (not only those this thread may run on).
/// The scheduler's runtime of a task, in nanoseconds: the first field of a `schedstat` file
/// (`/proc/<pid>/schedstat`, `/proc/<pid>/task/<tid>/schedstat`). `None` when the task is
/// gone or the kernel keeps no schedstats.
pub fn schedstat_ns(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

fn read_trim(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn machine(bench_cpu: Option<usize>) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let memory_kib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Machine {
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        cpu_model: field("model name").unwrap_or_else(|| "unknown".into()),
        cpus: online_cpus(),
        memory_mib: memory_kib / 1024,
        virtualized: field("flags").is_some_and(|f| f.split(' ').any(|x| x == "hypervisor")),
        bpf_jit_enable: read_trim("/proc/sys/net/core/bpf_jit_enable"),
        bpf_jit_harden: read_trim("/proc/sys/net/core/bpf_jit_harden"),
        spectre_v2: read_trim("/sys/devices/system/cpu/vulnerabilities/spectre_v2"),
        bench_cpu,
    }
}

/// Pins the calling thread to `cpu`: a test run executes on the calling CPU, and a migration
/// in the middle of a measurement would mix two caches.
///
/// # Errors
/// When the CPU does not exist.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it for cpu < CPU_SETSIZE, checked.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            anyhow::bail!("cpu {cpu} out of range");
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning to cpu {cpu}"));
        }
    }
    Ok(())
}

/// Runs `f` with the calling thread allowed on every CPU, then puts its CPU mask back: the
/// daemon installs a policy unpinned, and the install spreads its map writes over threads.
pub fn on_all_cpus<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: cpu_set_t is plain data, filled and read by the kernel.
    let mut before: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let saved =
        unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut before) } == 0;
    if saved {
        let mut all: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for cpu in 0..num_cpus_online() {
            // SAFETY: cpu < CPU_SETSIZE (checked by num_cpus_online).
            unsafe { libc::CPU_SET(cpu, &mut all) };
        }
        // SAFETY: as above.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &all) };
    }
    let out = f();
    if saved {
        // SAFETY: as above.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &before) };
    }
    out
}

/// The CPUs online (not the calling thread's mask, which may be one of them).
fn num_cpus_online() -> usize {
    // SAFETY: sysconf only reads.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n)
        .unwrap_or(1)
        .clamp(1, libc::CPU_SETSIZE as usize)
}

/// How busy the machine was while the benchmark ran. The kernel's test-run timer leaves out
/// the time the benchmark was not running, but neighbours still share caches and memory
/// bandwidth, so a loaded machine shows as wider min–max ranges.
#[derive(Debug, Clone, Serialize)]
pub struct Conditions {
    /// 1-minute load average when the run started and when it ended.
    pub loadavg_start: f64,
    pub loadavg_end: f64,
    /// CPU time (user + system) this process used.
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The time fields, in clock ticks, of a CPU line of `/proc/stat` (user, nice, system, idle,
/// iowait, irq, softirq, steal, ...): of all CPUs together for `None`, of `cpuN` for
/// `Some(N)`. `None` when the file or the line cannot be read; a field that does not parse
/// reads 0.
pub fn proc_stat_ticks(cpu: Option<usize>) -> Option<Vec<u64>> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let name = cpu.map_or_else(|| "cpu".to_string(), |c| format!("cpu{c}"));
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of `/proc/stat`.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// Busy and total ticks of all CPUs together, from `/proc/stat`.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let v = proc_stat_ticks(None)?;
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Waits until the machine is quiet: the CPUs less than 10 % busy over 200 ms, at most
/// `limit` (not at all when it is zero). Dropping a loaded object leaves its maps to the
/// kernel, whose workers free them (a table of a million entries takes seconds); a
/// measurement taken meanwhile shares the CPUs with that freeing. When the wait ends without
/// quiet, says so on stderr before `what` goes on.
pub fn settle(limit: std::time::Duration, what: &str) {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        let Some((b0, t0)) = cpu_jiffies() else {
            return;
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        let Some((b1, t1)) = cpu_jiffies() else {
            return;
        };
        if t1 > t0 && (b1 - b0) * 10 < t1 - t0 {
            return;
        }
    }
    if !limit.is_zero() {
        eprintln!(
            "  the machine was not quiet after {:.1} s: {what} anyway",
            start.elapsed().as_secs_f64()
        );
    }
}

fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time this process has used so far, in seconds.
pub fn cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_SELF)
}

/// CPU time the calling thread has used so far, in seconds.
pub fn thread_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_THREAD)
}

/// Raises the calling thread's scheduling priority to `nice`. On a shared machine the test
/// runs otherwise wait behind every other runnable task: the kernel's timer leaves that time
/// out, but the benchmark takes far longer and more neighbours pass through the caches.
///
/// # Errors
/// When not permitted (needs CAP_SYS_NICE).
pub fn raise_priority(nice: i32) -> Result<()> {
    // SAFETY: setpriority with who = 0 affects the calling thread on Linux; no memory involved.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setpriority");
    }
    Ok(())
}
