//! The threat-intelligence suite: loading 10M addresses, 1M CIDRs and 1M domains (time and
//! memory of each step), then the cost of the indicator match in `BPF_PROG_TEST_RUN` at that
//! size, a miss and a hit of each kind, against the empty program (the floor) and the
//! firewall without indicators, measured in the same rounds.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, Map, MapData};
use palisade::{
    craft::Frame,
    intel::{
        Action, Feed, Feeds, Format, Intel, Loaded, Source,
        load::{self, Sizes},
        parse, runtime,
    },
    maps::{map, map_mut},
    policy::config,
    testrun::Bench,
};
use palisade_common::intel::IntelControl;
use serde::Serialize;

use crate::{runner::Spread, utc_now};

pub struct IntelSettings {
    pub mode: &'static str,
    /// `--quick`: a check that the suite runs, not a measurement.
    pub quick: bool,
    pub rounds: usize,
    /// Runs per measurement (the kernel's mean over them).
    pub repeat: u32,
    pub ips: usize,
    pub cidrs: usize,
    pub domains: usize,
}

/// One step of the load.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub what: String,
    pub seconds: f64,
}

/// Kernel memory of one map (`memlock` in its fdinfo).
#[derive(Debug, Clone, Serialize)]
pub struct MapMemory {
    pub map: String,
    pub bytes: u64,
}

/// The floor counts as settled within this factor of its value before the load.
const SETTLED: f64 = 1.15;
/// The longest wait for the floor to settle.
const SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(180);
/// A round whose floor went above this factor of its value before the load is measured again.
const SLOW: f64 = 1.3;
/// The longest time spent measuring rounds again.
const SLOW_RETRY: std::time::Duration = std::time::Duration::from_secs(300);

/// The wait before the rounds for the machine to settle after the load.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Settle {
    /// The empty program's time (ns per run) before the indicators were loaded.
    pub floor_before_ns: f64,
    /// Its time when the rounds started.
    pub floor_at_start_ns: f64,
    pub waited_seconds: f64,
    /// Whether it came back within [`SETTLED`] of its value before the load.
    pub settled: bool,
    /// Rounds measured in a slow period (a floor above [`SLOW`] times its value before the
    /// load) and measured again.
    pub discarded_rounds: usize,
}

/// A measurement is quiet when its floor is at most this many times the run's lowest floor.
/// The shared machine has periods in which every program, the empty one too, takes about
/// twice as long; the medians over all rounds mix them in, the quiet ones leave them out.
pub const QUIET: f64 = 1.2;

#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub id: String,
    pub what: String,
    /// The firewall's verdict on the frame, checked before timing: `pass` for a miss,
    /// `drop` for a hit (every feed of the suite drops).
    pub verdict: String,
    /// Median over rounds of the kernel's mean ns per run.
    pub ns: Spread,
    /// The floor (`palisade_floor_pass` on the same frame) of each round: how fast the
    /// machine ran (it doubles in the shared VM's slow periods).
    pub floor_ns: Spread,
    /// The cost less the floor of its round.
    pub above_floor_ns: Spread,
    /// The cost over the floor of its round (1.0: as fast as the empty program).
    pub ratio_to_floor: Spread,
    /// `above_floor_ns` over the quiet measurements alone: those whose floor was at most
    /// [`QUIET`] times the lowest floor of the run (the machine at its usual speed).
    pub quiet_above_floor_ns: Spread,
    /// How many of the rounds were quiet for this packet.
    pub quiet_rounds: usize,
    /// The same less the firewall with no indicators live, on the same frame, in its round.
    pub above_firewall_ns: Spread,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntelReport {
    pub generated: String,
    pub command: String,
    pub mode: String,
    pub rounds: usize,
    pub repeat: u32,
    pub ips: usize,
    pub cidrs: usize,
    pub domains: usize,
    pub steps: Vec<Step>,
    pub maps: Vec<MapMemory>,
    /// Peak resident memory of this process after the load (VmHWM), bytes.
    pub peak_rss: u64,
    /// Whether the domains fit the DNS policy's tables, and the error when not.
    pub dns: Result<(), String>,
    pub costs: Vec<Cost>,
    pub settle: Settle,
    /// The bloom filter's false positives as refreshes accumulate stale bits.
    pub staleness: Vec<Staleness>,
}

/// The live filter's answers to clean addresses after a write.
#[derive(Debug, Clone, Serialize)]
pub struct Staleness {
    /// Address sets of `ips` entries the live generation has held (1: its first write; each
    /// refresh that reuses it adds one; its filter is rebuilt at each).
    pub sets: usize,
    /// Clean addresses probed (one test run each).
    pub probes: u64,
    /// Of those, how many the filter answered "maybe" (`bloom_maybe`).
    pub maybe: u64,
    /// `bloom_false_positive` over the same probes (equal to `maybe`: none is listed).
    pub false_positive: u64,
}

/// Clean addresses probed per staleness measurement.
const STALE_PROBES: u32 = 20_000;

/// The `i`-th address of the `set`-th disjoint address set (set 0 is [`nth_ip`]): IPv4
/// from `(11 + 16 * set).0.0.0`, IPv6 in `2001:db8:(1 + set)::/64`.
fn nth_ip_of(set: usize, i: usize, total: usize) -> String {
    let v4 = total * 4 / 5;
    if i < v4 {
        let n = ((11 + 16 * set as u32) << 24) + i as u32;
        std::net::Ipv4Addr::from(n).to_string()
    } else {
        format!(
            "2001:db8:{:x}::{:x}:{:x}",
            1 + set,
            (i >> 16) & 0xffff,
            i & 0xffff
        )
    }
}

/// Probes [`STALE_PROBES`] addresses of 100.64.0.0/10, none listed, through the firewall.
fn probe_clean(bench: &mut Bench, sets: usize) -> Result<Staleness> {
    use palisade_common::intel::{DIR_INGRESS, IS_BLOOM_FALSE, IS_BLOOM_MAYBE, IS_CHECKED};
    let before = load::counters(&bench.ebpf)?;
    for i in 0..STALE_PROBES {
        let src = std::net::Ipv4Addr::from((100u32 << 24) + (64 << 16) + i * 7);
        let frame = Frame::udp(&src.to_string(), "10.0.0.1", 40_000, 9).build();
        if bench.run(&frame)? != 2 {
            bail!("{src}: a clean address was not passed");
        }
    }
    let after = load::counters(&bench.ebpf)?;
    let d = |i: u32| after[(DIR_INGRESS + i) as usize] - before[(DIR_INGRESS + i) as usize];
    if d(IS_CHECKED) != u64::from(STALE_PROBES) {
        bail!("{} of {STALE_PROBES} probes checked", d(IS_CHECKED));
    }
    Ok(Staleness {
        sets,
        probes: u64::from(STALE_PROBES),
        maybe: d(IS_BLOOM_MAYBE),
        false_positive: d(IS_BLOOM_FALSE),
    })
}

/// Refreshes with disjoint address sets and measures the live filter's false positives
/// after each: the generations alternate, so the live filter holds the bits of 1, 2, 2, 3
/// sets.
fn staleness(bench: &mut Bench, s: &IntelSettings, sizes: Sizes) -> Result<Vec<Staleness>> {
    let mut out = Vec::new();
    // Both generations hold set 0 (the two writes above): a fresh filter each.
    out.push(probe_clean(bench, 1)?);
    let mut held = [1usize, 1];
    for set in 1..=3 {
        let indicators = parse(
            &text(s.ips, |i, n| nth_ip_of(set, i, n)),
            &Format::Plain,
            "ips",
        )?;
        let intel = Intel {
            max_ips: sizes.ips,
            max_cidrs: sizes.cidrs,
            feeds: vec![Feed {
                name: "ips".to_string(),
                source: Source::File("/bench/ips".into()),
                format: Format::Plain,
                action: Action::Drop,
                refresh: std::time::Duration::from_secs(3600),
                line: 0,
            }],
            ..Intel::default()
        };
        let mut feeds = Feeds::default();
        feeds.loaded.insert(
            "ips".to_string(),
            Loaded {
                indicators,
                at: 0,
                last_error: None,
            },
        );
        let compiled = load::compile(&intel, &feeds, sizes)?;
        let (generation, _) = load::write(&mut bench.ebpf, &compiled)?;
        let g = (generation & 1) as usize;
        held[g] += 1;
        let m = probe_clean(bench, held[g])?;
        eprintln!(
            "  bloom filter holding {} sets: {} of {} clean addresses answered maybe",
            m.sets, m.maybe, m.probes
        );
        out.push(m);
    }
    Ok(out)
}

/// The `i`-th generated exact address: IPv4 from 11.0.0.0 up for 80 %, IPv6 in
/// 2001:db8:1::/64 for the rest.
fn nth_ip(i: usize, total: usize) -> String {
    let v4 = total * 4 / 5;
    if i < v4 {
        let n = (11u32 << 24) + i as u32;
        std::net::Ipv4Addr::from(n).to_string()
    } else {
        format!("2001:db8:1::{:x}:{:x}", (i >> 16) & 0xffff, i & 0xffff)
    }
}

/// The `i`-th CIDR: IPv4 /24s from 128.0.0.0 up for 90 % (but for the second, a /26 inside
/// 128.0.1.0/24, so that longer CIDRs are measured too), IPv6 /64s for the rest.
fn nth_cidr(i: usize, total: usize) -> String {
    let v4 = total * 9 / 10;
    if i == 1 && v4 > 1 {
        "128.0.1.64/26".to_string()
    } else if i < v4 {
        let n = (128u32 << 24) + ((i as u32) << 8);
        format!("{}/24", std::net::Ipv4Addr::from(n))
    } else {
        format!("2001:db8:{:x}:{:x}::/64", 0x100 + (i >> 16), i & 0xffff)
    }
}

/// An address inside the last IPv6 CIDR of [`nth_cidr`].
fn cidr_v6_probe(total: usize) -> String {
    let i = total.saturating_sub(1);
    format!("2001:db8:{:x}:{:x}::9", 0x100 + (i >> 16), i & 0xffff)
}

fn text(n: usize, f: impl Fn(usize, usize) -> String) -> String {
    let mut t = String::with_capacity(n * 16);
    for i in 0..n {
        t.push_str(&f(i, n));
        t.push('\n');
    }
    t
}

fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn memlock(bench: &Bench, name: &str) -> Result<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let data: &MapData = match map(&bench.ebpf, name)? {
        Map::Array(m) | Map::HashMap(m) | Map::LpmTrie(m) => m,
        _ => bail!("{name}: not an indicator map"),
    };
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no memlock for {name}"))
}

fn set_enabled(bench: &mut Bench, on: Option<IntelControl>) -> Result<IntelControl> {
    let live = load::control(&bench.ebpf)?;
    let mut a: Array<&mut MapData, IntelControl> =
        Array::try_from(map_mut(&mut bench.ebpf, "INTEL_CONTROL")?)?;
    let next = on.unwrap_or(IntelControl {
        enabled: [0, 0],
        ..live
    });
    a.set(0, next, 0)?;
    Ok(live)
}

/// Runs the suite.
///
/// # Errors
/// When the object cannot be loaded or a step fails.
pub fn run(s: &IntelSettings, command: String) -> Result<IntelReport> {
    let sizes = Sizes {
        ips: u32::try_from(s.ips)?.max(1),
        cidrs: u32::try_from(s.cidrs)?.max(1),
    };
    let mut steps = Vec::new();
    let step = |steps: &mut Vec<Step>, what: &str, start: Instant| {
        let seconds = start.elapsed().as_secs_f64();
        eprintln!("  {what}: {seconds:.2} s");
        steps.push(Step {
            what: what.to_string(),
            seconds,
        });
    };
    let t = Instant::now();
    let mut bench = Bench::sized(&sizes.for_loader())?;
    step(&mut steps, "load and verify the programs, maps sized", t);
    let policy = config::parse_policy(
        "[dns.ingress]\nmode = \"blocklist\"\nlists = []\n",
        "bench.toml",
        Path::new("/"),
    )?;
    bench.install(&policy)?;
    // The machine's speed before the load: the empty program on a plain frame.
    let probe = Frame::udp("10.0.0.2", "10.0.0.1", 40_000, 9).build();
    let floor_now = |bench: &mut Bench| -> Result<f64> {
        Ok(bench
            .run_prog("palisade_floor_pass", &probe, s.repeat)?
            .duration
            .as_nanos() as f64)
    };
    let floor_before = (0..5)
        .map(|_| floor_now(&mut bench))
        .collect::<Result<Vec<f64>>>()?
        .into_iter()
        .fold(f64::INFINITY, f64::min);

    let t = Instant::now();
    let feeds_text = [
        ("ips", text(s.ips, nth_ip)),
        ("cidrs", text(s.cidrs, nth_cidr)),
        (
            "domains",
            text(s.domains, |i, _| format!("host{i}.bad{}.example", i % 997)),
        ),
    ];
    step(&mut steps, "generate the feeds' text", t);
    let mut intel = Intel {
        max_ips: sizes.ips,
        max_cidrs: sizes.cidrs,
        ..Intel::default()
    };
    let mut feeds = Feeds::default();
    for (name, body) in &feeds_text {
        let t = Instant::now();
        let indicators = parse(body, &Format::Plain, name)?;
        if !indicators.bad.is_empty() {
            bail!(
                "{name}: {} bad lines, first {}",
                indicators.bad.len(),
                indicators.bad[0]
            );
        }
        step(
            &mut steps,
            &format!("parse {} ({} lines)", name, indicators.len()),
            t,
        );
        intel.feeds.push(Feed {
            name: (*name).to_string(),
            source: Source::File(format!("/bench/{name}").into()),
            format: Format::Plain,
            action: Action::Drop,
            refresh: std::time::Duration::from_secs(3600),
            line: 0,
        });
        feeds.loaded.insert(
            (*name).to_string(),
            Loaded {
                indicators,
                at: 0,
                last_error: None,
            },
        );
    }
    drop(feeds_text);
    let t = Instant::now();
    let compiled = load::compile(&intel, &feeds, sizes)?;
    step(&mut steps, "merge the feeds", t);
    let t = Instant::now();
    let (_, timing) = load::write(&mut bench.ebpf, &compiled)?;
    step(&mut steps, "write the idle generation and flip", t);
    for (what, d) in [
        ("  of which: empty the idle generation", timing.clear),
        (
            "  of which: bloom filter (built, then written in batches)",
            timing.bloom,
        ),
        ("  of which: exact table (batches of 65,536)", timing.table),
        (
            "  of which: CIDRs (trie inserts, /16 and /24 tables in batches)",
            timing.trie,
        ),
    ] {
        steps.push(Step {
            what: what.to_string(),
            seconds: d.as_secs_f64(),
        });
    }
    let t = Instant::now();
    let (_, _) = load::write(&mut bench.ebpf, &compiled)?;
    step(
        &mut steps,
        "a refresh of the same set (the other generation)",
        t,
    );
    // The baseline of the IPv6 /64 table: the same set with every IPv6 CIDR in the trie, in
    // the other generation; each measurement makes the generation it needs live.
    let with_table = load::control(&bench.ebpf)?;
    load::write(
        &mut bench.ebpf,
        &load::compile_without_v6_table(&intel, &feeds, sizes)?,
    )?;
    let trie_only = load::control(&bench.ebpf)?;
    // The domains go into the DNS policy, as the daemon installs them.
    let lists: Vec<(String, Vec<String>)> = vec![(
        "intel-domains".to_string(),
        compiled.domains.keys().cloned().collect(),
    )];
    let t = Instant::now();
    let with = runtime::with_domains(&policy, &lists);
    let dns = bench.install(&with).map_err(|e| format!("{e:#}"));
    step(&mut steps, "install the domains as a DNS block list", t);
    drop(compiled);
    drop(feeds);
    let mut maps = Vec::new();
    for name in load::MAPS.iter().flatten() {
        maps.push(MapMemory {
            map: (*name).to_string(),
            bytes: memlock(&bench, name)?,
        });
    }

    let frames = [
        (
            "miss-v4",
            "a miss (IPv4, filter and /16 table)",
            "203.0.113.77",
        ),
        (
            "miss-v6",
            "a miss (IPv6, filter and /64 table)",
            "2001:db8:ffff::1",
        ),
        ("hit-ip-v4", "a hit in the exact table (IPv4)", "11.0.0.5"),
        (
            "hit-ip-v6",
            "a hit in the exact table (IPv6)",
            &nth_ip(s.ips - 1, s.ips),
        ),
        (
            "hit-cidr-v4",
            "a hit on an IPv4 /24 (the /16 and /24 tables)",
            "128.0.2.9",
        ),
        (
            "hit-cidr-v4-long",
            "a hit on an IPv4 /26 (the /16 and /24 tables, then the trie)",
            "128.0.1.70",
        ),
        (
            "hit-cidr-v6",
            "a hit on an IPv6 /64 (the /64 table)",
            &cidr_v6_probe(s.cidrs),
        ),
        (
            "miss-v6-trie",
            "a miss (IPv6, filter and trie: no /64 table, as before it)",
            "2001:db8:ffff::1",
        ),
        (
            "hit-cidr-v6-trie",
            "a hit on an IPv6 /64 (the trie: no /64 table, as before it)",
            &cidr_v6_probe(s.cidrs),
        ),
    ];
    let frames: Vec<(&str, &str, Vec<u8>)> = frames
        .iter()
        .map(|(id, what, src)| {
            let dst = if src.contains(':') {
                "2001:db8:2::1"
            } else {
                "10.0.0.1"
            };
            (*id, *what, Frame::udp(src, dst, 40_000, 9).build())
        })
        .collect();
    let generation = |id: &str| {
        if id.ends_with("-trie") {
            trie_only
        } else {
            with_table
        }
    };
    let mut verdicts = Vec::new();
    for (id, _, frame) in &frames {
        set_enabled(&mut bench, Some(generation(id)))?;
        let want = if id.starts_with("miss") { 2 } else { 1 };
        let got = bench.run(frame)?;
        if got != want {
            bail!("{id}: the firewall returned XDP action {got}, expected {want}");
        }
        verdicts.push(if want == 1 { "drop" } else { "pass" });
    }
    // Loading millions of entries leaves the kernel work to do (freeing the refresh's old
    // tables, among others) that slows every program for a while, the empty one too: the
    // rounds start once the floor is back within SETTLED of its value before the load three
    // times in a row, or after SETTLE_MAX.
    let t = Instant::now();
    let mut calm = 0;
    let mut floor_settled = floor_now(&mut bench)?;
    // `--quick` checks that the suite runs, not what it measures: no waiting.
    let full = !s.quick;
    while full && calm < 3 && t.elapsed() < SETTLE_MAX {
        std::thread::sleep(std::time::Duration::from_millis(500));
        floor_settled = floor_now(&mut bench)?;
        calm = if floor_settled <= floor_before * SETTLED {
            calm + 1
        } else {
            0
        };
    }
    let mut settle = Settle {
        floor_before_ns: floor_before,
        floor_at_start_ns: floor_settled,
        waited_seconds: t.elapsed().as_secs_f64(),
        settled: calm >= 3,
        discarded_rounds: 0,
    };
    eprintln!(
        "  settle: floor {:.1} ns before the load, {:.1} ns after waiting {:.1} s{}",
        settle.floor_before_ns,
        settle.floor_at_start_ns,
        settle.waited_seconds,
        if settle.settled {
            ""
        } else {
            " (not settled: measured anyway)"
        }
    );
    let mut samples =
        vec![(Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()); frames.len()];
    // A round in which the empty program ran more than SLOW times its time before the load
    // fell in a slow period of the machine: it is discarded and measured again two seconds
    // later, for at most SLOW_RETRY in all (then rounds are kept whatever their floor).
    let retry_until = Instant::now() + if full { SLOW_RETRY } else { Duration::ZERO };
    let mut discarded = 0usize;
    let mut round = 0;
    while round < s.rounds {
        let mut taken = Vec::with_capacity(frames.len());
        for (id, _, frame) in &frames {
            set_enabled(&mut bench, Some(generation(id)))?;
            let floor = bench
                .run_prog("palisade_floor_pass", frame, s.repeat)?
                .duration
                .as_nanos() as f64;
            let live = set_enabled(&mut bench, None)?;
            let off = bench
                .run_prog(palisade::testrun::FIREWALL, frame, s.repeat)?
                .duration
                .as_nanos() as f64;
            set_enabled(&mut bench, Some(live))?;
            let on = bench
                .run_prog(palisade::testrun::FIREWALL, frame, s.repeat)?
                .duration
                .as_nanos() as f64;
            taken.push((on, floor, off));
        }
        let slowest = taken.iter().map(|t| t.1).fold(0.0, f64::max);
        if slowest > floor_before * SLOW && Instant::now() < retry_until {
            discarded += 1;
            eprintln!(
                "  round {} discarded: the floor reached {slowest:.1} ns; measured again in 2 s",
                round + 1
            );
            std::thread::sleep(std::time::Duration::from_secs(2));
            continue;
        }
        for (i, (on, floor, off)) in taken.into_iter().enumerate() {
            samples[i].0.push(on);
            samples[i].1.push(on - floor);
            samples[i].2.push(on - off);
            samples[i].3.push(floor);
            samples[i].4.push(on / floor);
        }
        round += 1;
        eprintln!("  round {}/{} measured", round, s.rounds);
    }
    settle.discarded_rounds = discarded;
    let lowest = samples
        .iter()
        .flat_map(|s| s.3.iter().copied())
        .fold(f64::INFINITY, f64::min);
    let costs = frames
        .iter()
        .zip(samples)
        .zip(verdicts)
        .map(|(((id, what, _), (ns, floor, fw, base, ratio)), verdict)| {
            let quiet: Vec<f64> = floor
                .iter()
                .zip(&base)
                .filter(|&(_, &b)| b <= lowest * QUIET)
                .map(|(&f, _)| f)
                .collect();
            Cost {
                id: (*id).to_string(),
                what: (*what).to_string(),
                verdict: verdict.to_string(),
                ns: Spread::of(&ns),
                floor_ns: Spread::of(&base),
                above_floor_ns: Spread::of(&floor),
                ratio_to_floor: Spread::of(&ratio),
                quiet_above_floor_ns: Spread::of(&quiet),
                quiet_rounds: quiet.len(),
                above_firewall_ns: Spread::of(&fw),
            }
        })
        .collect();
    let staleness = staleness(&mut bench, s, sizes)?;
    Ok(IntelReport {
        generated: utc_now(),
        command,
        mode: s.mode.to_string(),
        rounds: s.rounds,
        repeat: s.repeat,
        ips: s.ips,
        cidrs: s.cidrs,
        domains: s.domains,
        steps,
        maps,
        peak_rss: peak_rss(),
        dns,
        costs,
        settle,
        staleness,
    })
}

impl IntelReport {
    #[must_use]
    pub fn terminal(&self) -> String {
        let mut t = format!(
            "intel: {} addresses, {} CIDRs, {} domains; {} rounds of {} runs\n",
            self.ips, self.cidrs, self.domains, self.rounds, self.repeat
        );
        for c in &self.costs {
            let _ = writeln!(
                t,
                "  {:<12} {:>7.1} ns  {:>+7.1} above the floor  {:>+7.1} above the firewall without indicators",
                c.id, c.ns.median, c.above_floor_ns.median, c.above_firewall_ns.median
            );
        }
        let total: u64 = self.maps.iter().map(|m| m.bytes).sum();
        let _ = writeln!(
            t,
            "  kernel memory of the indicator maps (both generations): {:.1} MiB; peak RSS {:.1} MiB",
            total as f64 / 1048576.0,
            self.peak_rss as f64 / 1048576.0
        );
        if let Err(e) = &self.dns {
            let _ = writeln!(t, "  domains: not installed: {e}");
        }
        for m in &self.staleness {
            let _ = writeln!(
                t,
                "  bloom filter after {} sets: {} false positives in {} clean probes",
                m.sets, m.false_positive, m.probes
            );
        }
        t
    }

    /// Writes `intel-<mode>.md` and `.json` into `dir`; returns the stem.
    ///
    /// # Errors
    /// When the files cannot be written.
    pub fn write(&self, dir: &Path) -> Result<String> {
        std::fs::create_dir_all(dir)?;
        let stem = format!("intel-{}", self.mode);
        let mut md = format!(
            "# Threat-intelligence indicators: load and match cost\n\n{} · `{}` · mode {}\n\n\
             {} addresses, {} CIDRs, {} domains. {} rounds; each measurement is the kernel's \
             mean over {} test runs of one frame. Floor: `palisade_floor_pass` on the same \
             frame; firewall: the same program with no indicator generation live, in the same \
             round.\n\n## Load\n\n| step | seconds |\n| --- | ---: |\n",
            self.generated,
            self.command,
            self.mode,
            self.ips,
            self.cidrs,
            self.domains,
            self.rounds,
            self.repeat
        );
        for s in &self.steps {
            let _ = writeln!(md, "| {} | {:.2} |", s.what, s.seconds);
        }
        md.push_str("\n| map | kernel memory (MiB) |\n| --- | ---: |\n");
        for m in &self.maps {
            let _ = writeln!(md, "| {} | {:.1} |", m.map, m.bytes as f64 / 1048576.0);
        }
        let _ = writeln!(
            md,
            "\nPeak resident memory of the loading process: {:.1} MiB. Domains in the DNS policy: {}.",
            self.peak_rss as f64 / 1048576.0,
            match &self.dns {
                Ok(()) => "installed".to_string(),
                Err(e) => format!("refused ({e})"),
            }
        );
        let _ = write!(
            md,
            "\n## Match cost per packet (BPF_PROG_TEST_RUN)\n\nThe rounds started once the empty \
             program's time was back within {:.0} % of its value before the load, three times in a \
             row (at most {} s): {:.1} ns before, {:.1} ns when they started, after {:.1} s{}.\n",
            (SETTLED - 1.0) * 100.0,
            SETTLE_MAX.as_secs(),
            self.settle.floor_before_ns,
            self.settle.floor_at_start_ns,
            self.settle.waited_seconds,
            if self.settle.settled {
                ""
            } else {
                " (it did not settle: measured anyway)"
            }
        );
        md.push_str(
            "\nMedians over the rounds; the floor \
             column is the empty program's own time, which rises in the shared machine's slow \
             periods, and the minimum above the floor is the least disturbed round's. The quiet \
             rounds of a packet are those whose floor was at most 1.2 times (`QUIET`) the lowest \
             floor of the run; their median leaves the slow periods out.\n\n\
             | packet | ns (median) | min | max | floor | above the floor | above the floor, min | \
             ratio to the floor | above the floor, quiet rounds (how many) | \
             above the firewall without indicators |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for c in &self.costs {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× | {} | {:.1} |",
                c.what,
                c.ns.median,
                c.ns.min,
                c.ns.max,
                c.floor_ns.median,
                c.above_floor_ns.median,
                c.above_floor_ns.min,
                c.ratio_to_floor.median,
                if c.quiet_rounds == 0 {
                    "–".to_string()
                } else {
                    format!("{:.1} ({})", c.quiet_above_floor_ns.median, c.quiet_rounds)
                },
                c.above_firewall_ns.median
            );
        }
        md.push_str(
            "\n## Bloom filter over refreshes\n\nA refresh writes the idle generation and \
             rebuilds its filter from that refresh's addresses alone. Each refresh \
             below lists a new disjoint set of the same size; clean addresses (none listed) are \
             probed through the firewall after each, and the filter's \"maybe\" answers counted \
             (`bloom_maybe`; each is a false positive, `bloom_false_positive`, confirmed absent \
             in the exact table).\n\n| sets the live generation has held | probes | maybe | \
             false-positive rate (`bloom_false_positive` / probes) |\n| ---: | ---: | ---: | ---: |\n",
        );
        for m in &self.staleness {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} % |",
                m.sets,
                m.probes,
                m.maybe,
                100.0 * m.false_positive as f64 / m.probes as f64
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
