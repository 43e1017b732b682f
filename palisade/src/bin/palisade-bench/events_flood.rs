//! The DNS event-flood suite: what a flood of blocked queries costs once their events are
//! included, kernel and reader together, with every query an event (`event_rate = 0`) and
//! with the event budget (`[dns] event_rate`, aggregation and summaries).
//!
//! The queries run through `palisade_firewall` (tail call to `palisade_dns_ingress`) under
//! `BPF_PROG_TEST_RUN` on the bench CPU; a reader thread on the same CPU does what the daemon
//! does: it drains the ring (decode, render JSON and text for every record) and, every
//! summary interval, collects the aggregate maps and renders every summary. *Everything
//! included* is the kernel's time per query plus the reader's CPU time (scheduler runtime)
//! per query. The generator waits for the reader whenever the ring could fill, so no record
//! is lost (checked: `events_lost` must not move). See `bench/README.md`.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{MapData, PerCpuArray, PerCpuValues, RingBuf};
use palisade::{
    api::server::EventLine,
    craft::{DnsQuery, Frame},
    dns::summary::Collector,
    events::decode_dns,
    policy::{
        model::{Dns, DnsAction, DnsEvents, DnsMode, DnsScope, Firewall, NameList, Policy},
        namelist,
    },
    testrun::{Bench, FIREWALL},
};
use palisade_common::{
    event::{DNS_SUMMARY_INTERVAL_MS, DnsEventBudget, EVENT_DRAIN_INTERVAL_MS},
    stats,
};
use serde::Serialize;

use crate::{inspect, rng::Rng};

const XDP_DROP: u32 = 1;
/// Records the ring holds (1 MiB of 360-byte records) less a margin: the generator waits
/// for the reader before more than this many are unread.
const RING_SLACK: u64 = 2_000;

/// Settings of the suite.
pub struct FloodSettings {
    pub mode: &'static str,
    pub out: std::path::PathBuf,
    pub rounds: usize,
    /// Flood length per configuration and round.
    pub seconds: f64,
    pub cpu: usize,
    pub seed: u64,
}

/// One workload.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
enum Workload {
    /// A few dozen names from many clients, each frame repeated.
    FewNames,
    /// Every query a name never seen before (random labels below a blocked suffix).
    DistinctNames,
}

impl Workload {
    const fn label(self) -> &'static str {
        match self {
            Self::FewNames => "32 names × 256 clients",
            Self::DistinctNames => "every query a new name, 256 clients",
        }
    }
}

/// How events are delivered in a configuration.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
enum Path {
    /// `event_rate = 0`: every blocked query is an event, read by the reader.
    EveryQuery,
    /// A budget of `event_rate = 1000` (`BUDGET_RATE`) with the default `event_sample`.
    Budget,
    /// `event_rate = 0` and nobody reading: the ring is full and each record is refused at
    /// once. The inspection without delivering events.
    Unread,
    /// The budget of [`Path::Budget`] with nobody reading or collecting: the kernel's
    /// bookkeeping alone (the interval never advances, so no count is ever new).
    BudgetUnread,
}

impl Path {
    const fn label(self) -> &'static str {
        match self {
            Self::EveryQuery => "every query an event (event_rate = 0)",
            Self::Budget => "event budget (event_rate = 1000)",
            Self::Unread => "no reader, ring full (records refused)",
            Self::BudgetUnread => "event budget, nobody reading or collecting",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
struct Run {
    round: usize,
    workload: Workload,
    path: Path,
    queries: u64,
    kernel_ns_per_query: f64,
    reader_ns_per_query: f64,
    total_ns_per_query: f64,
    floor_ns: f64,
    events_read: u64,
    summaries: u64,
    summarized_queries: u64,
    /// Over-budget queries sent in full as their name's first in an interval.
    firsts: u64,
    aggregated: u64,
    sampled: u64,
    lost: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    workload: Workload,
    path: Path,
    total: [f64; 3],
    kernel: [f64; 3],
    reader: [f64; 3],
    above_floor: [f64; 3],
    ratio_to_floor: [f64; 3],
    /// Total less the unread path of the same workload and round: what delivering the
    /// events costs.
    events_cost: Option<[f64; 3]>,
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    generated: String,
    command: String,
    machine: inspect::Machine,
    loadavg_start: f64,
    loadavg_end: f64,
    wall_seconds: f64,
    seconds_per_run: f64,
    rounds: usize,
    floor_ns: Vec<f64>,
    rows: Vec<Row>,
    runs: Vec<Run>,
    goal_ns: f64,
}

/// A thread doing per record and per interval what the daemon does.
struct Reader {
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
    thread: Option<JoinHandle<Finished>>,
}

/// What a reader hands back when it stops.
struct Finished {
    ring: RingBuf<MapData>,
    summaries: u64,
    summarized: u64,
    /// Records read that were a name's first over the budget.
    firsts: u64,
    /// The thread's whole CPU time (`CLOCK_THREAD_CPUTIME_ID`), its last drain included.
    cpu_ns: u64,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Reader {
    fn start(ring: RingBuf<MapData>, mut collector: Collector, cpu: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (stop, read) = (Arc::clone(&stop), Arc::clone(&read));
            thread::Builder::new()
                .name("palisade-events".into())
                .spawn(move || {
                    let _ = inspect::pin_to_cpu(cpu);
                    let _ = ready_tx.send(());
                    let start = thread_cpu_ns();
                    let mut ring = ring;
                    let (summaries, summarized, firsts) =
                        read_loop(&mut ring, &mut collector, &stop, &read);
                    Finished {
                        ring,
                        summaries,
                        summarized,
                        firsts,
                        cpu_ns: thread_cpu_ns() - start,
                    }
                })
                .context("starting the reader")?
        };
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the reader stopped at once"))?;
        Ok(Self {
            stop,
            read,
            thread: Some(thread),
        })
    }

    /// Stops after a last drain and a last collection.
    fn finish(mut self) -> Result<Finished> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .ok_or_else(|| anyhow!("reader already stopped"))?
            .join()
            .map_err(|_| anyhow!("the reader panicked"))
    }
}

fn render_ring(ring: &mut RingBuf<MapData>, read: &AtomicU64) -> u64 {
    let mut firsts = 0;
    while let Some(item) = ring.next() {
        if let Some(ev) = decode_dns(&item) {
            firsts += u64::from(ev.sent == Some("first"));
            std::hint::black_box(EventLine::render(
                "dns",
                ev.verdict,
                vec![ev.name.clone()],
                &ev,
            ));
        }
        read.fetch_add(1, Ordering::Relaxed);
    }
    firsts
}

fn render_summaries(c: &mut Collector, all: bool) -> (u64, u64) {
    let got = if all { c.collect_all() } else { c.collect() };
    let Ok(got) = got else { return (0, 0) };
    for s in &got.summaries {
        std::hint::black_box(EventLine::render("dns", s.verdict, vec![s.name.clone()], s));
    }
    (got.summaries.len() as u64, got.queries)
}

fn read_loop(
    ring: &mut RingBuf<MapData>,
    collector: &mut Collector,
    stop: &AtomicBool,
    read: &AtomicU64,
) -> (u64, u64, u64) {
    let fd = ring.as_raw_fd();
    let mut next_summary = Instant::now() + Duration::from_millis(DNS_SUMMARY_INTERVAL_MS);
    let (mut summaries, mut queries, mut firsts) = (0, 0, 0);
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // As the daemon: woken by the kernel for batches, drained on a tick besides.
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&raw mut pfd, 1, EVENT_DRAIN_INTERVAL_MS as i32) };
        firsts += render_ring(ring, read);
        if Instant::now() >= next_summary {
            let (n, q) = render_summaries(collector, false);
            summaries += n;
            queries += q;
            next_summary += Duration::from_millis(DNS_SUMMARY_INTERVAL_MS);
        }
    }
    firsts += render_ring(ring, read);
    let (n, q) = render_summaries(collector, true);
    (summaries + n, queries + q, firsts)
}

/// The `event_rate` of the budget configuration.
const BUDGET_RATE: u32 = 1_000;

fn policy(events: DnsEvents) -> Result<Policy> {
    let mut entries = Vec::new();
    for i in 0..32 {
        entries.push(namelist::entry(&format!("blocked{i}.example"), false, 0)?);
    }
    entries.push(namelist::entry("*.flood.example", false, 0)?);
    Ok(Policy {
        shield: palisade::shield::Shield::default(),
        scrub: palisade::scrub::Scrub::default(),
        nat: palisade::nat::Nat::default(),
        lb: palisade::lb::Lb::default(),
        tls: palisade::tls::Tls::default(),
        dhcp: palisade::dhcp::Dhcp::default(),
        intel: palisade::intel::Intel::default(),
        dlp: palisade::dlp::Dlp::default(),
        geoip: None,
        ids: palisade::ids::Ids::default(),
        firewall: Firewall::default(),
        conntrack: Default::default(),
        sets: vec![],
        dns: Dns {
            rate_prefix: Default::default(),
            capacity_names: 0,
            bind: None,
            dga: None,
            cache: None,
            ports: vec![53],
            ingress: Some(DnsScope {
                mode: DnsMode::Blocklist,
                action: DnsAction::Drop,
                audit: false,
                lists: vec![0],
                block_malformed: false,
                rate: None,
                log_allowed: false,
            }),
            egress: None,
            answers: palisade::policy::model::AnswerBudget::UNLIMITED,
            lists: vec![NameList {
                name: "flood".into(),
                entries,
            }],
            events,
        },
    })
}

fn client(i: usize) -> String {
    format!("10.{}.{}.{}", 1 + i / 65_536, (i / 256) % 256, i % 256)
}

fn query(client: &str, name: &str) -> Vec<u8> {
    Frame::dns_udp(
        client,
        "198.51.100.53",
        40000,
        &DnsQuery::name(name, 1).build(),
    )
    .build()
}

fn reset(b: &mut Bench) -> Result<()> {
    let m = b.map_mut("DNS_EVENT_BUDGET")?;
    let mut budget: PerCpuArray<&mut MapData, DnsEventBudget> = PerCpuArray::try_from(m)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    budget.set(
        0,
        PerCpuValues::try_from(vec![DnsEventBudget::default(); cpus])?,
        0,
    )?;
    Collector::open(&b.ebpf)?.collect_all()?;
    b.drain_dns_events();
    Ok(())
}

/// Runs one configuration for `seconds`; kernel ns per query and counts.
fn flood(
    b: &mut Bench,
    workload: Workload,
    path: Path,
    s: &FloodSettings,
    rng: &mut Rng,
) -> Result<Run> {
    let events = if matches!(path, Path::Budget | Path::BudgetUnread) {
        DnsEvents {
            rate: BUDGET_RATE,
            ..DnsEvents::default()
        }
    } else {
        DnsEvents::EVERY_QUERY
    };
    b.install(&policy(events)?)?;
    reset(b)?;
    let stat = |b: &Bench, i| b.stat(i);
    let (agg0, samp0, lost0) = (
        stat(b, stats::EVENTS_AGGREGATED)?,
        stat(b, stats::EVENTS_SAMPLED)?,
        stat(b, stats::EVENTS_LOST)?,
    );
    let few: Vec<Vec<u8>> = (0..256 * 32)
        .map(|i| query(&client(i / 32), &format!("blocked{}.example", i % 32)))
        .collect();
    let ring = b.take_events().ok_or_else(|| anyhow!("no event ring"))?;
    let (reader, idle_ring) = if matches!(path, Path::Unread | Path::BudgetUnread) {
        (None, Some(ring))
    } else {
        (
            Some(Reader::start(ring, Collector::open(&b.ebpf)?, s.cpu)?),
            None,
        )
    };
    let (mut queries, mut kernel_ns) = (0u64, 0f64);
    let started = Instant::now();
    let mut i = 0usize;
    while started.elapsed().as_secs_f64() < s.seconds {
        let (frame, repeat) = match workload {
            Workload::FewNames => {
                i = (i + 1) % few.len();
                (few[i].clone(), 1)
            }
            Workload::DistinctNames => {
                let name = format!("q{:08x}{:08x}.flood.example", rng.u32(), rng.u32());
                (query(&client(rng.below(256) as usize), &name), 1)
            }
        };
        let r = b.run_prog(FIREWALL, &frame, repeat)?;
        if r.action != XDP_DROP {
            bail!("a blocked query was not dropped (action {})", r.action);
        }
        queries += u64::from(repeat);
        kernel_ns += r.duration.as_nanos() as f64 * f64::from(repeat);
        if let Some(rd) = &reader {
            // Never let the ring fill: wait for the reader (this wait is not measured).
            let aggregated = stat(b, stats::EVENTS_AGGREGATED)? - agg0;
            let sent = queries - aggregated;
            while sent > rd.read.load(Ordering::Relaxed) + RING_SLACK
                && started.elapsed().as_secs_f64() < s.seconds + 30.0
            {
                thread::sleep(Duration::from_micros(200));
            }
        }
    }
    let (events_read, fin) = match reader {
        Some(rd) => {
            let read = Arc::clone(&rd.read);
            let fin = rd.finish()?;
            (read.load(Ordering::Relaxed), fin)
        }
        None => (
            0,
            Finished {
                ring: idle_ring.ok_or_else(|| anyhow!("no event ring"))?,
                summaries: 0,
                summarized: 0,
                firsts: 0,
                cpu_ns: 0,
            },
        ),
    };
    let ring = fin.ring;
    b.put_events(ring);
    b.drain_dns_events();
    Ok(Run {
        round: 0,
        workload,
        path,
        queries,
        kernel_ns_per_query: kernel_ns / queries as f64,
        reader_ns_per_query: fin.cpu_ns as f64 / queries as f64,
        total_ns_per_query: (kernel_ns + fin.cpu_ns as f64) / queries as f64,
        floor_ns: 0.0,
        events_read,
        summaries: fin.summaries,
        summarized_queries: fin.summarized,
        firsts: fin.firsts,
        aggregated: stat(b, stats::EVENTS_AGGREGATED)? - agg0,
        sampled: stat(b, stats::EVENTS_SAMPLED)? - samp0,
        lost: stat(b, stats::EVENTS_LOST)? - lost0,
    })
}

/// ns per run of the empty program (`palisade_floor_drop`), with `repeat` runs per syscall.
fn floor(b: &Bench, repeat: u32, seconds: f64) -> Result<f64> {
    let frame = query(&client(1), "blocked0.example");
    let (mut n, mut ns) = (0u64, 0f64);
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        let r = b.run_prog("palisade_floor_drop", &frame, repeat)?;
        n += u64::from(repeat);
        ns += r.duration.as_nanos() as f64 * f64::from(repeat);
    }
    Ok(ns / n as f64)
}

/// Median, min and max.
fn spread(v: &[f64]) -> [f64; 3] {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    [v[v.len() / 2], v[0], v[v.len() - 1]]
}

/// The goal for a flood under the budget: what its events may cost per query.
const GOAL_NS: f64 = 300.0;

/// Runs the suite and writes `dns-events-<mode>.{md,json}`.
///
/// # Errors
/// When a program cannot run or a check fails.
pub fn run(s: &FloodSettings, command: String) -> Result<()> {
    let started = Instant::now();
    let load_start = inspect::loadavg();
    let mut b = Bench::new().context("loading the kernel programs")?;
    let mut rng = Rng::new(s.seed);
    let configs: Vec<(Workload, Path)> = [Workload::FewNames, Workload::DistinctNames]
        .into_iter()
        .flat_map(|w| {
            [
                Path::Unread,
                Path::EveryQuery,
                Path::Budget,
                Path::BudgetUnread,
            ]
            .map(|p| (w, p))
        })
        .collect();
    let mut runs = Vec::new();
    let mut floor_single = Vec::new();
    for round in 0..s.rounds {
        let mut order = configs.clone();
        rng.shuffle(&mut order);
        let f1 = floor(&b, 1, 0.2)?;
        floor_single.push(f1);
        for (w, p) in order {
            let mut r = flood(&mut b, w, p, s, &mut rng)?;
            r.round = round;
            r.floor_ns = f1;
            if r.lost > 0 && !matches!(p, Path::Unread | Path::BudgetUnread) {
                bail!(
                    "{} / {}: {} events lost with a reader",
                    w.label(),
                    p.label(),
                    r.lost
                );
            }
            if p == Path::Budget && r.summarized_queries + r.firsts + r.sampled != r.aggregated {
                bail!(
                    "{} / {}: summaries count {} queries and {} + {} were sent in full, the kernel aggregated {}",
                    w.label(),
                    p.label(),
                    r.summarized_queries,
                    r.firsts,
                    r.sampled,
                    r.aggregated
                );
            }
            eprintln!(
                "round {round} {:<40} {:<45} {:>9} queries: kernel {:>7.1} + reader {:>7.1} = {:>7.1} ns/query",
                w.label(),
                p.label(),
                r.queries,
                r.kernel_ns_per_query,
                r.reader_ns_per_query,
                r.total_ns_per_query
            );
            runs.push(r);
        }
    }
    let mut rows = Vec::new();
    for (w, p) in &configs {
        let mine: Vec<&Run> = runs
            .iter()
            .filter(|r| r.workload == *w && r.path == *p)
            .collect();
        let col = |f: &dyn Fn(&Run) -> f64| spread(&mine.iter().map(|r| f(r)).collect::<Vec<_>>());
        let events_cost = (*p != Path::Unread).then(|| {
            col(&|r: &Run| {
                let unread = runs
                    .iter()
                    .find(|u| {
                        u.round == r.round && u.workload == r.workload && u.path == Path::Unread
                    })
                    .map_or(f64::NAN, |u| u.total_ns_per_query);
                r.total_ns_per_query - unread
            })
        });
        rows.push(Row {
            workload: *w,
            path: *p,
            total: col(&|r| r.total_ns_per_query),
            kernel: col(&|r| r.kernel_ns_per_query),
            reader: col(&|r| r.reader_ns_per_query),
            above_floor: col(&|r| r.total_ns_per_query - r.floor_ns),
            ratio_to_floor: col(&|r| r.total_ns_per_query / r.floor_ns),
            events_cost,
        });
    }
    let report = Report {
        mode: s.mode,
        generated: crate::utc_now(),
        command,
        machine: inspect::machine(Some(s.cpu)),
        loadavg_start: load_start,
        loadavg_end: inspect::loadavg(),
        wall_seconds: started.elapsed().as_secs_f64(),
        seconds_per_run: s.seconds,
        rounds: s.rounds,
        floor_ns: floor_single,
        rows,
        runs,
        goal_ns: GOAL_NS,
    };
    std::fs::create_dir_all(&s.out)?;
    let stem = format!("dns-events-{}", s.mode);
    std::fs::write(
        s.out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    let md = markdown(&report);
    std::fs::write(s.out.join(format!("{stem}.md")), &md)?;
    println!("{md}");
    println!("wrote {}/{stem}.{{md,json}}", s.out.display());
    Ok(())
}

fn cell(v: [f64; 3]) -> String {
    format!("{:.1} [{:.1}–{:.1}]", v[0], v[1], v[2])
}

fn ratio(v: [f64; 3]) -> String {
    format!("{:.2} [{:.2}–{:.2}]", v[0], v[1], v[2])
}

fn markdown(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# Palisade DNS events under a flood of blocked queries ({} mode)\n",
        r.mode
    );
    let _ = writeln!(
        m,
        "Generated {} by `{}` in {:.0} s. Machine and method: [../README.md](../README.md#method-the-dns-event-flood-suite).\n",
        r.generated, r.command, r.wall_seconds
    );
    let _ = writeln!(
        m,
        "Machine: {} CPUs ({}), kernel {}, JIT {}. Load average {:.2} at the start, {:.2} at the end.\n",
        r.machine.cpus,
        r.machine.cpu_model,
        r.machine.kernel,
        r.machine.bpf_jit_enable,
        r.loadavg_start,
        r.loadavg_end
    );
    let _ = writeln!(
        m,
        "Blocked queries (type A, action drop) through `palisade_firewall` and `palisade_dns_ingress` under `BPF_PROG_TEST_RUN`, {} s per configuration and round, {} rounds in shuffled orders. *Kernel* is the kernel's time per query, *reader* the CPU time per query of a thread on the same CPU doing what the daemon does (draining the ring, decoding and rendering every record as JSON and text; every second collecting the aggregate maps and rendering every summary), *total* their sum. The floor is the empty XDP program measured in the same round (one run per syscall, as the queries: with more runs per syscall the kernel attaches and detaches the program around every call, which waits for an RCU grace period): *ratio* is total / floor. *Events cost* is total less the same workload with nobody reading (every record refused by a full ring) in the same round: what delivering the events costs. Cells are median [min–max] over rounds, ns per query.\n",
        r.seconds_per_run, r.rounds,
    );
    let _ = writeln!(
        m,
        "| workload | events | total | kernel | reader | above floor | ratio to floor | events cost |\n|---|---|---:|---:|---:|---:|---:|---:|"
    );
    for row in &r.rows {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.workload.label(),
            row.path.label(),
            cell(row.total),
            cell(row.kernel),
            cell(row.reader),
            cell(row.above_floor),
            ratio(row.ratio_to_floor),
            row.events_cost.map_or_else(|| "–".to_string(), cell)
        );
    }
    let _ = writeln!(
        m,
        "\nFloor (empty XDP program, one run per syscall): {} ns per run (median [min–max]).\n",
        cell(spread(&r.floor_ns))
    );
    let _ = writeln!(
        m,
        "Goal: a flood under the event budget costs at most {:.0} ns per query in events.\n",
        r.goal_ns
    );
    for row in r.rows.iter().filter(|x| x.path == Path::Budget) {
        if let Some(c) = row.events_cost {
            let _ = writeln!(
                m,
                "- {}: events cost {:.1} ns per query (median), {}.",
                row.workload.label(),
                c[0],
                if c[0] <= r.goal_ns {
                    "within the goal"
                } else {
                    "over the goal"
                }
            );
        }
    }
    let _ = writeln!(
        m,
        "\n## Every run\n\n| round | workload | events | queries | events read | aggregated | sampled | summaries | lost | total ns/query |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for x in &r.runs {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            x.round,
            x.workload.label(),
            x.path.label(),
            x.queries,
            x.events_read,
            x.aggregated,
            x.sampled,
            x.summaries,
            x.lost,
            x.total_ns_per_query
        );
    }
    m
}
