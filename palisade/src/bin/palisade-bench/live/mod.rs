//! Live traffic: real frames across a veth pair, dropped by Palisade or by the usual
//! alternatives holding the same blocklist. Reports CPU time per packet and packets per
//! CPU-second.
//!
//! A private namespace holds a veth pair `gen` — `filt`. `palisade_bench_redirect` runs under
//! `BPF_PROG_TEST_RUN` in live-frames mode on one pinned CPU and sends a rotating set of 64
//! frames out of `gen`, every one from a blocklisted source. They arrive on `filt`, where the
//! filter under test sits. veth hands the frames to the receiving side's NAPI on the CPU that
//! sent them, and that runs when the test run re-enables bottom halves, inside the same
//! syscall: the CPU time of the sending thread (plus `ksoftirqd` on that CPU, should softirq
//! work be deferred) is the whole cost of a packet, generation + veth + filter. The XDP_DROP
//! floor measures generation + veth alone, and is subtracted.
//!
//! CPU time rather than wall time: this machine may be shared, and the CPU time a thread
//! used does not count the time its neighbours ran.
//!
//! Every non-XDP filter needs an XDP program on `filt` all the same (veth only accepts
//! redirected frames on a peer that runs XDP), so they run behind the XDP_PASS floor, which
//! the "no filter" line measures: packets go up the stack and a blackhole route discards them.

mod report;
pub mod tools;
pub mod traffic;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::Array;

pub use self::report::LiveReport;
use self::{
    report::LiveResult,
    tools::{Tool, have, install, ns_run},
    traffic::{FRAME_LEN, Generator, Window, blocklist, ksoftirqd, templates},
};
use crate::{
    harness::Loaded,
    inspect::{self, Conditions},
    netns::{DispatcherPin, Netns},
    rng::Rng,
    runner::Spread,
    workload::short_count,
};

pub const GENERATOR: &str = "palisade_bench_redirect";
pub const GEN_IF: &str = "gen";
pub const FILT_IF: &str = "filt";
/// `craft` frames are addressed to this MAC; `filt` takes it so the stack accepts them.
pub const FILT_MAC: &str = "02:00:00:00:00:02";

/// How the live suite runs, once the mode's defaults are applied.
pub struct LiveSettings {
    pub mode: &'static str,
    pub sizes: Vec<usize>,
    /// Length of one measurement window.
    pub window: Duration,
    /// Windows per configuration per round.
    pub windows: usize,
    /// Rounds; each sets up every configuration once, in a shuffled order.
    pub rounds: usize,
    pub cpu: usize,
    pub seed: u64,
    pub nice: i32,
    pub out: std::path::PathBuf,
}

/// The namespace with the veth pair, set up so that passed packets die quietly.
fn topology() -> Result<Netns> {
    let ns = Netns::create("live")?;
    ns.ip(&[
        "link", "add", GEN_IF, "type", "veth", "peer", "name", FILT_IF,
    ])?;
    ns.ip(&["link", "set", FILT_IF, "address", FILT_MAC])?;
    for (key, value) in [
        ("net.ipv6.conf.all.disable_ipv6", "1"),
        ("net.ipv6.conf.default.disable_ipv6", "1"),
        // Forwarding on, so the blackhole route discards without an ICMP error.
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ] {
        ns_run(&ns, "sysctl", &["-qw", &format!("{key}={value}")], None)?;
    }
    ns.ip(&["link", "set", GEN_IF, "up"])?;
    ns.ip(&["link", "set", FILT_IF, "up"])?;
    ns.ip(&["route", "add", "blackhole", "198.18.0.0/15"])?;
    Ok(ns)
}

/// Configurations to measure, in order, and those skipped with the reason.
struct Plan {
    todo: Vec<(Tool, usize)>,
    skipped: Vec<(String, String)>,
}

/// Every configuration to measure, in order, with the reason for any that are skipped.
fn plan(s: &LiveSettings) -> Plan {
    let mut todo = vec![(Tool::NoFilter, 0), (Tool::XdpDrop, 0)];
    let mut skipped = Vec::new();
    if !crate::flood::live_frames() {
        // Every configuration sends live frames: nothing can be measured.
        for (tool, _) in todo.drain(..) {
            skipped.push((
                tool.slug().to_string(),
                crate::flood::LIVE_REFUSED.to_string(),
            ));
        }
        for tool in Tool::SCALED {
            for &n in &s.sizes {
                let id = format!("{}-{}", tool.slug(), short_count(n));
                skipped.push((id, crate::flood::LIVE_REFUSED.to_string()));
            }
        }
        return Plan { todo, skipped };
    }
    for tool in Tool::SCALED {
        let missing: Vec<&str> = tool.needs().iter().copied().filter(|c| !have(c)).collect();
        for &n in &s.sizes {
            let id = format!("{}-{}", tool.slug(), short_count(n));
            if !missing.is_empty() {
                skipped.push((id, format!("not installed: {}", missing.join(", "))));
            } else if let Some((max, why)) = tool.limit().filter(|(max, _)| n > *max) {
                skipped.push((
                    id,
                    format!("{why} (largest measured: {})", short_count(max)),
                ));
            } else {
                todo.push((tool, n));
            }
        }
    }
    Plan { todo, skipped }
}

/// What every configuration's measurement shares.
struct Context<'a> {
    s: &'a LiveSettings,
    ns: &'a Netns,
}

/// One round of one configuration.
struct Measured {
    round: usize,
    windows: Vec<Window>,
    /// Frames sent, warm-up included.
    sent: u64,
    dropped: Option<u64>,
    setup_ms: f64,
}

/// Sets up one configuration, sends through it, takes it down again.
fn measure_one(
    cx: &Context<'_>,
    base: &mut Loaded,
    tool: Tool,
    n: usize,
    id: &str,
    largest: usize,
    round: usize,
) -> Result<Measured> {
    let (s, ns) = (cx.s, cx.ns);
    // Rule-less configurations get the traffic of the largest list.
    let list = blocklist(if n == 0 { largest } else { n }, s.seed);
    {
        // The same frames for a configuration in every round.
        let frames = templates(&list, &mut Rng::new(s.seed ^ (n as u64) << 8));
        let mut m: Array<_, [u8; FRAME_LEN]> = Array::try_from(
            base.ebpf
                .map_mut("BENCH_FRAMES")
                .ok_or_else(|| anyhow!("no BENCH_FRAMES map"))?,
        )?;
        for (i, f) in frames.iter().enumerate() {
            m.set(i as u32, *f, 0)?;
        }
    }
    let rules = if n == 0 { &[][..] } else { &list[..] };
    let t = Instant::now();
    let installed = install(tool, rules, base, ns).with_context(|| format!("setting up {id}"))?;
    let setup_ms = t.elapsed().as_secs_f64() * 1e3;
    let before = installed.dropped(base, ns);
    let mut generator = Generator {
        prog: base
            .ebpf
            .program(GENERATOR)
            .ok_or_else(|| anyhow!("no {GENERATOR}"))?
            .try_into()?,
        ns,
        cpu: s.cpu,
        nice: s.nice,
        softirqd: ksoftirqd(s.cpu),
        chunk: 4096,
        sent: 0,
    };
    let windows = generator.run(Duration::from_millis(300), s.window, s.windows);
    let sent = generator.sent;
    let after = installed.dropped(base, ns);
    // Always take the filter down, whatever happened while sending.
    let removed = installed.remove(base, ns);
    let windows = windows.with_context(|| format!("sending through {id}"))?;
    removed.with_context(|| format!("removing {id}"))?;
    let dropped = match (before?, after?) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    Ok(Measured {
        round,
        windows,
        sent,
        dropped,
        setup_ms,
    })
}

impl Measured {
    /// CPU ns per packet over this round's windows.
    fn ns_per_packet(&self) -> f64 {
        let w = &self.windows;
        w.iter().map(|w| w.cpu_s).sum::<f64>() * 1e9
            / w.iter().map(|w| w.packets).sum::<u64>().max(1) as f64
    }
}

/// A configuration's cost above the floor in each round that measured both (the floor of
/// the same round, so drift between rounds cancels), as median [min–max] over rounds.
fn above_floor(rounds: &[Measured], floor: &[Measured]) -> Option<Spread> {
    let per_round: Vec<f64> = rounds
        .iter()
        .filter_map(|m| {
            let f = floor.iter().find(|f| f.round == m.round)?;
            Some(m.ns_per_packet() - f.ns_per_packet())
        })
        .collect();
    (!per_round.is_empty()).then(|| Spread::of(&per_round))
}

/// Everything measured for one configuration, over all rounds.
fn summarize(tool: Tool, n: usize, id: String, rounds: &[Measured]) -> LiveResult {
    let windows: Vec<Window> = rounds
        .iter()
        .flat_map(|m| m.windows.iter().copied())
        .collect();
    let per = |f: fn(&Window) -> f64| Spread::of(&windows.iter().map(f).collect::<Vec<_>>());
    let sent: u64 = rounds.iter().map(|m| m.sent).sum();
    let dropped: Option<u64> = rounds.iter().map(|m| m.dropped).sum();
    LiveResult {
        id,
        tool,
        label: tool.describe(n),
        rules: n,
        packets: windows.iter().map(|w| w.packets).sum(),
        cpu_ns_per_packet: per(|w| w.cpu_s * 1e9 / w.packets as f64),
        // Filled in once the floor is known.
        above_floor_ns: None,
        ratio_to_palisade: None,
        mpps_per_core: per(|w| w.packets as f64 / w.cpu_s / 1e6),
        wall_mpps: per(|w| w.packets as f64 / w.wall_s / 1e6),
        dropped_fraction: dropped.map(|d| d as f64 / sent.max(1) as f64),
        setup_ms: Spread::of(&rounds.iter().map(|m| m.setup_ms).collect::<Vec<_>>()).median,
    }
}

/// Runs the live suite and writes `live-<mode>.{md,json,svg}`.
///
/// # Errors
/// When the namespace, the generator or a filter cannot be set up.
pub fn run(s: &LiveSettings, command: String) -> Result<LiveReport> {
    let started = Instant::now();
    let load_start = inspect::loadavg();
    let Plan { todo, skipped } = plan(s);
    for (id, why) in &skipped {
        eprintln!("  skipping {id}: {why}");
    }

    let mut pin = DispatcherPin::new()?;
    let ns = topology()?;
    let mut base = Loaded::new(false)?;
    base.load_xdp(GENERATOR)?;
    // A generator that stays in the XDP dispatcher: no RCU waits around each test run.
    pin.pin(base.xdp_mut(GENERATOR)?)?;
    let gen_ifindex: u32 = ns.enter(|| {
        let name = std::ffi::CString::new(GEN_IF).expect("no NUL");
        // SAFETY: a valid C string.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    })?;
    if gen_ifindex == 0 {
        bail!("no interface {GEN_IF} in {}", ns.name);
    }
    {
        let mut m: Array<_, u32> = Array::try_from(
            base.ebpf
                .map_mut("BENCH_IFINDEX")
                .ok_or_else(|| anyhow!("no BENCH_IFINDEX map"))?,
        )?;
        m.set(0, gen_ifindex, 0)?;
    }

    let mut rng = Rng::new(s.seed);
    let largest = s.sizes.iter().copied().max().unwrap_or(1).max(1);
    let mut skipped = skipped;
    let ids: Vec<String> = todo
        .iter()
        .map(|&(tool, n)| {
            if n == 0 {
                tool.slug().to_string()
            } else {
                format!("{}-{}", tool.slug(), short_count(n))
            }
        })
        .collect();
    let mut measured: Vec<Vec<Measured>> = todo.iter().map(|_| Vec::new()).collect();
    let mut failed = vec![false; todo.len()];
    let cx = Context { s, ns: &ns };
    for round in 0..s.rounds {
        let mut order: Vec<usize> = (0..todo.len()).collect();
        rng.shuffle(&mut order);
        for i in order {
            if failed[i] {
                continue;
            }
            let ((tool, n), id) = (todo[i], &ids[i]);
            match measure_one(&cx, &mut base, tool, n, id, largest, round) {
                Ok(m) => {
                    let ns_per = m.ns_per_packet();
                    eprintln!(
                        "  round {} {id:<18} {ns_per:>9.1} ns/packet CPU, dropped {}, setup {:.0} ms",
                        round + 1,
                        m.dropped.map_or_else(
                            || "n/a".into(),
                            |d| format!("{:.1} %", d as f64 * 100.0 / m.sent.max(1) as f64)
                        ),
                        m.setup_ms
                    );
                    measured[i].push(m);
                }
                Err(e) => {
                    eprintln!("  {id:<18} FAILED: {e:#}");
                    skipped.push((id.clone(), format!("failed: {e:#}")));
                    failed[i] = true;
                }
            }
        }
    }
    let mut results: Vec<LiveResult> = todo
        .iter()
        .zip(ids)
        .zip(&measured)
        .filter(|(_, m)| !m.is_empty())
        .map(|(((tool, n), id), m)| summarize(*tool, *n, id, m))
        .collect();
    let floor = todo
        .iter()
        .position(|&(tool, _)| tool == Tool::XdpDrop)
        .map(|i| &measured[i][..])
        .unwrap_or_default();
    for r in &mut results {
        let i = todo
            .iter()
            .position(|&(tool, n)| tool == r.tool && n == r.rules)
            .expect("every result comes from the plan");
        r.above_floor_ns = above_floor(&measured[i], floor);
    }
    report::compare_to_palisade(&mut results);
    // Objects first, then the namespaces their programs were attached in.
    drop(base);
    drop(ns);
    drop(pin);
    Ok(LiveReport {
        suite: "live",
        mode: s.mode.to_string(),
        generated_at: crate::utc_now(),
        command,
        machine: inspect::machine(Some(s.cpu)),
        conditions: Conditions {
            loadavg_start: load_start,
            loadavg_end: inspect::loadavg(),
            cpu_seconds: inspect::cpu_seconds(),
            wall_seconds: started.elapsed().as_secs_f64(),
        },
        window_ms: s.window.as_millis(),
        windows: s.windows,
        rounds: s.rounds,
        results,
        skipped,
    })
}
