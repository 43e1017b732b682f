//! `palisade-bench`: what a packet costs in Palisade's XDP firewall, and how that cost moves
//! with the size of the policy.
//!
//! The test-run suite loads one copy of the kernel object per policy, installs the policy,
//! and times the firewall and two empty XDP programs (the floor) with `BPF_PROG_TEST_RUN`
//! over a mix of packets, in interleaved rounds. It also reports the verifier's work for each
//! program, the time to compile and install each policy and the memory its maps take. See
//! `bench/README.md` for the method and how to read the results.

mod harness;
mod inspect;
mod live;
mod netns;
mod plot;
mod report;
mod rng;
mod runner;
mod workload;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use palisade::{firewall::compile, guard::FIREWALL, policy::model::Policy};

use crate::{
    harness::{ALL_PROGRAMS, FLOOR_DROP, FLOOR_PASS, Loaded},
    report::{ClassResult, ConfigResult, Growth, Install, Method, ProbeInfo, Report, loglog_slope},
    rng::Rng,
    runner::{Expect, Spread, Target},
    workload::{Kind, ProbeClass, Workload, XDP_DROP, XDP_PASS, short_count},
};

/// Measures the cost per packet of Palisade's XDP firewall against the size of its policy.
///
/// Runs the firewall with 0 to 100k rules and with a rule on a set of up to 1M entries, plus
/// an empty XDP program as the floor, through BPF_PROG_TEST_RUN over a mix of 64 packets, in
/// interleaved rounds. Reports ns per packet above the floor (median, min, max over rounds),
/// the verifier's instruction count for each program, install times and map memory, as
/// markdown, JSON and an SVG chart.
///
/// With --live, measures real traffic instead: a flood of blocklisted packets generated with
/// XDP live frames into a veth pair, dropped by Palisade, nftables, iptables, ipset or
/// xdp-filter holding the same blocklist; reports CPU per packet and packets per CPU-second.
///
/// Needs root (or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON).
#[derive(Debug, Parser)]
#[command(
    name = "palisade-bench",
    after_help = "Examples:\n  \
        palisade-bench                      full run, results in bench/results/\n  \
        palisade-bench --quick              CI run (< 1 min), results in a temporary directory\n  \
        palisade-bench --rules 0,1000 --sets 1000000 --rounds 11 --out /tmp/b\n  \
        palisade-bench --live               live traffic against nftables, iptables, ipset, xdp-filter"
)]
struct Args {
    /// A short run for CI: 3 rounds, ~15 ms measurements, up to 10k rules and a 10k-entry set.
    #[arg(long)]
    quick: bool,
    /// Directory for the report files [default: bench/results, or a temporary directory with
    /// --quick].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Rounds; each round measures every configuration once [default: 7, 3 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Target duration of one measurement in milliseconds [default: 100, 15 with --quick].
    #[arg(long, value_name = "MS")]
    target_ms: Option<f64>,
    /// Rule counts to measure, comma separated [default: 0,1,100,1000,10000,100000; with
    /// --quick up to 10000].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    rules: Option<Vec<usize>>,
    /// Set sizes to measure (one rule whose source is the set) [default:
    /// 1000,10000,100000,1000000; 10000 with --quick].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    sets: Option<Vec<usize>>,
    /// Seed for the rule sets, the packets and the round orders.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// CPU to run the measurements on [default: the last CPU].
    #[arg(long)]
    cpu: Option<usize>,
    /// Do not pin the measurements to one CPU.
    #[arg(long, conflicts_with = "cpu")]
    no_pin: bool,
    /// Fail (exit status 2) when a program's verifier instruction count is above this.
    #[arg(long, default_value_t = inspect::VERIFIER_BUDGET, value_name = "INSNS")]
    verifier_budget: u32,
    /// Scheduling priority (nice value) for the benchmark; 0 leaves it alone.
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    nice: i32,
    /// Run the live-traffic suite (veth, XDP live frames, other filters) instead of the
    /// test-run suite.
    #[arg(long)]
    live: bool,
    /// Live suite: blocklist sizes [default: 1,1000,100000; 1,1000 with --quick].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    live_sizes: Option<Vec<usize>>,
    /// Live suite: measurement windows per configuration [default: 5, 3 with --quick].
    #[arg(long)]
    live_windows: Option<usize>,
    /// Live suite: length of one window in milliseconds [default: 1000, 300 with --quick].
    #[arg(long, value_name = "MS")]
    live_window_ms: Option<u64>,
    /// Live suite: largest list given to xdp-filter (it adds one address per process).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    xdp_filter_max: usize,
    /// Skip timing a steady-state reload of each policy (saves a few seconds on big sets;
    /// --quick never times reloads).
    #[arg(long)]
    no_reload: bool,
}

/// Settings once the mode's defaults are applied.
struct Settings {
    mode: &'static str,
    out: PathBuf,
    rounds: usize,
    target_ms: f64,
    rules: Vec<usize>,
    sets: Vec<usize>,
    cpu: Option<usize>,
    reload: bool,
}

impl Args {
    fn settings(&self) -> Settings {
        let default_out = if self.quick {
            std::env::temp_dir().join("palisade-bench")
        } else {
            // The workspace's bench/results, wherever the command is run from.
            Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(
                || PathBuf::from("bench/results"),
                |root| root.join("bench/results"),
            )
        };
        let cpus = inspect::online_cpus();
        Settings {
            mode: if self.quick { "quick" } else { "full" },
            out: self.out.clone().unwrap_or(default_out),
            rounds: self.rounds.unwrap_or(if self.quick { 3 } else { 7 }).max(1),
            target_ms: self
                .target_ms
                .unwrap_or(if self.quick { 15.0 } else { 100.0 }),
            rules: self.rules.clone().unwrap_or_else(|| {
                if self.quick {
                    vec![0, 1, 100, 1000, 10_000]
                } else {
                    vec![0, 1, 100, 1000, 10_000, 100_000]
                }
            }),
            sets: self.sets.clone().unwrap_or_else(|| {
                if self.quick {
                    vec![10_000]
                } else {
                    vec![1000, 10_000, 100_000, 1_000_000]
                }
            }),
            cpu: if self.no_pin {
                None
            } else {
                Some(self.cpu.unwrap_or(cpus - 1))
            },
            reload: !self.no_reload && !self.quick,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisade-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Installs `policy`, timing the firewall compiler alone and the whole install (compile
/// everything, write the idle generation, swap), then (when asked) a steady-state reload.
fn install(bench: &mut Loaded, policy: &Policy, reload: bool) -> Result<Install> {
    let t = Instant::now();
    let compiled = compile::compile(policy).context("compiling")?;
    let compile_ms = ms_since(t);
    let t = Instant::now();
    bench.install(policy).context("installing")?;
    let install_ms = ms_since(t);
    let maps = inspect::maps_of(&bench.ebpf, FIREWALL)?;
    let (mut reload_ms, mut two) = (None, None);
    if reload {
        // Fill the other generation, then reload once more: that last one clears a full
        // generation, like every reload of a running daemon.
        bench.install(policy)?;
        let t = Instant::now();
        bench.install(policy)?;
        reload_ms = Some(ms_since(t));
        let after = inspect::maps_of(&bench.ebpf, FIREWALL)?;
        two = Some(
            ["FW_RULES", "FW_SETS"]
                .iter()
                .filter_map(|n| after.get(*n).map(|m| m.memlock_bytes))
                .sum(),
        );
    }
    Ok(Install {
        compile_ms,
        install_ms,
        reload_ms,
        tuples: compiled.tuples.len(),
        hash_entries: compiled.entries.len(),
        maps,
        rule_maps_two_generations_bytes: two,
    })
}

fn run(args: &Args) -> Result<ExitCode> {
    let s = args.settings();
    let started = Instant::now();
    let load_start = inspect::loadavg();
    if let Some(cpu) = s.cpu {
        inspect::pin_to_cpu(cpu)?;
    }
    if args.nice != 0
        && let Err(e) = inspect::raise_priority(args.nice)
    {
        eprintln!(
            "palisade-bench: warning: could not set nice {}: {e:#}",
            args.nice
        );
    }
    let command = std::iter::once("palisade-bench".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    if args.live {
        return run_live(args, &s, command);
    }
    let mut rng = Rng::new(args.seed);

    eprintln!("palisade-bench ({} mode): building workloads", s.mode);
    let mut workloads: Vec<Workload> = Vec::new();
    for &n in &s.rules {
        workloads.push(workload::rules(n, args.seed)?);
    }
    for &n in &s.sets {
        workloads.push(workload::set(n, args.seed)?);
    }
    if workloads.is_empty() {
        bail!("nothing to measure: give --rules or --sets");
    }

    // Declared before the objects so that it outlives their attachments.
    let mut pin = match netns::DispatcherPin::new() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!(
                "palisade-bench: warning: cannot keep programs attached ({e:#}); every test run \
                 will wait for RCU grace periods and the run will take much longer"
            );
            None
        }
    };
    // One loaded object per policy, so that rounds can interleave without reinstalling.
    let mut benches = Vec::with_capacity(workloads.len());
    let mut installs = Vec::with_capacity(workloads.len());
    for w in &workloads {
        let t = Instant::now();
        let mut bench = Loaded::new(benches.is_empty()).context("loading the kernel object")?;
        let i = install(&mut bench, &w.policy, s.reload).with_context(|| w.id.clone())?;
        if let Some(p) = pin.as_mut() {
            let names: &[&str] = if benches.is_empty() {
                &[FIREWALL, FLOOR_PASS, FLOOR_DROP]
            } else {
                &[FIREWALL]
            };
            for name in names {
                p.pin(bench.xdp_mut(name)?).with_context(|| {
                    format!("attaching {name} to keep it in the XDP dispatcher")
                })?;
            }
        }
        eprintln!(
            "  {:<12} {} tuples, {} hash entries: compile {:.1} ms, install {:.1} ms{} (load+install {:.1} s)",
            w.id,
            i.tuples,
            i.hash_entries,
            i.compile_ms,
            i.install_ms,
            i.reload_ms
                .map_or_else(String::new, |r| format!(", reload {r:.1} ms")),
            t.elapsed().as_secs_f64()
        );
        benches.push(bench);
        installs.push(i);
    }

    let verifier = ALL_PROGRAMS
        .iter()
        .map(|p| {
            inspect::program(
                &benches[0].ebpf,
                p,
                &benches[0].failures,
                args.verifier_budget,
            )
        })
        .collect::<Result<Vec<_>>>()?;

    // Targets: the two floors on the first bench, then the firewall of each workload.
    let mut targets = vec![
        Target {
            id: "floor-pass".into(),
            bench: &benches[0],
            program: FLOOR_PASS,
            probes: &workloads[0].probes,
            expect: Expect::Always(XDP_PASS),
            repeat: 0,
        },
        Target {
            id: "floor-drop".into(),
            bench: &benches[0],
            program: FLOOR_DROP,
            probes: &workloads[0].probes,
            expect: Expect::Always(XDP_DROP),
            repeat: 0,
        },
    ];
    for (w, b) in workloads.iter().zip(&benches) {
        targets.push(Target {
            id: w.id.clone(),
            bench: b,
            program: FIREWALL,
            probes: &w.probes,
            expect: Expect::PerProbe,
            repeat: 0,
        });
    }
    eprintln!("calibrating (target {:.0} ms per measurement)", s.target_ms);
    for t in &mut targets {
        t.calibrate(s.target_ms).with_context(|| t.id.clone())?;
    }
    eprintln!(
        "measuring: {} rounds of {} configurations",
        s.rounds,
        targets.len()
    );
    let runner::Rounds { samples, orders } =
        runner::run_rounds(&targets, s.rounds, &mut rng, |round, id, sample| {
            eprintln!(
                "  round {} {:<12} {:>7.1} ns/packet ({:.0} ms, {:.0} ms CPU)",
                round + 1,
                id,
                sample.kernel_ns,
                sample.elapsed_ms,
                sample.cpu_ms
            );
        })?;

    let floor: Vec<f64> = samples[0].iter().map(|x| x.kernel_ns).collect();
    let mut configs = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let kernel: Vec<f64> = samples[i].iter().map(|x| x.kernel_ns).collect();
        let above: Vec<f64> = kernel.iter().zip(&floor).map(|(k, f)| k - f).collect();
        let ratio: Vec<f64> = kernel.iter().zip(&floor).map(|(k, f)| k / f).collect();
        let wall: Vec<f64> = samples[i].iter().map(|x| x.wall_ns).collect();
        let mut by_class = Vec::new();
        for class in ProbeClass::ALL {
            let members: Vec<_> = t.probes.iter().filter(|p| p.class == class).collect();
            if members.is_empty() {
                continue;
            }
            let per_round: Vec<f64> = samples[i]
                .iter()
                .filter_map(|x| x.by_class.get(&class).copied())
                .collect();
            let above: Vec<f64> = per_round.iter().zip(&floor).map(|(k, f)| k - f).collect();
            by_class.push(ClassResult {
                class,
                probes: members.len(),
                dropped: members.iter().filter(|p| p.action == XDP_DROP).count(),
                ns_per_packet: Spread::of(&per_round),
                above_floor_ns: Spread::of(&above),
            });
        }
        let (kind, rules, set_entries, port_rules, install) = if i < 2 {
            (Kind::Floor, 0, 0, 0, None)
        } else {
            let w = &workloads[i - 2];
            (
                w.kind,
                w.rules,
                w.set_entries,
                w.port_rules,
                Some(installs[i - 2].clone()),
            )
        };
        configs.push(ConfigResult {
            id: t.id.clone(),
            kind,
            program: t.program,
            rules,
            set_entries,
            port_rules,
            repeat: t.repeat,
            ns_per_packet: Spread::of(&kernel),
            above_floor_ns: Spread::of(&above),
            ratio_to_floor: Spread::of(&ratio),
            wall_ns_per_packet: Spread::of(&wall),
            dropped_probes: match t.expect {
                Expect::Always(a) if a == XDP_DROP => t.probes.len(),
                Expect::Always(_) => 0,
                Expect::PerProbe => t.probes.iter().filter(|p| p.action == XDP_DROP).count(),
            },
            by_class,
            per_round_ns: kernel,
            install,
            probes: t
                .probes
                .iter()
                .map(|p| ProbeInfo {
                    class: p.class,
                    rule: p.rule,
                    action: match t.expect {
                        Expect::Always(a) => a,
                        Expect::PerProbe => p.action,
                    },
                    bytes: p.frame.len(),
                })
                .collect(),
        });
    }

    let growth = growth(&configs);
    let over_budget: Vec<String> = verifier
        .iter()
        .filter(|p| !p.within_budget)
        .map(|p| p.program.clone())
        .collect();
    let report = Report {
        suite: "firewall",
        mode: s.mode.to_string(),
        generated_at: utc_now(),
        command,
        wall_seconds: started.elapsed().as_secs_f64(),
        machine: inspect::machine(s.cpu),
        conditions: inspect::Conditions {
            loadavg_start: load_start,
            loadavg_end: inspect::loadavg(),
            cpu_seconds: inspect::cpu_seconds(),
            wall_seconds: started.elapsed().as_secs_f64(),
        },
        method: Method {
            rounds: s.rounds,
            probes: workload::PROBES,
            target_ms_per_measurement: s.target_ms,
            seed: args.seed,
            floor_program: FLOOR_PASS,
            verifier_budget: args.verifier_budget,
            order: "shuffled anew each round",
        },
        configs,
        verifier,
        growth,
        round_orders: orders
            .iter()
            .map(|o| o.iter().map(|&i| targets[i].id.clone()).collect())
            .collect(),
    };
    let stem = format!("firewall-{}", s.mode);
    report.write(&s.out, &stem)?;
    println!("{}", report.terminal());
    println!(
        "wrote {}/{stem}.{{md,json,svg}} in {:.1} s",
        s.out.display(),
        started.elapsed().as_secs_f64()
    );
    if !over_budget.is_empty() {
        for p in report.verifier.iter().filter(|p| !p.within_budget) {
            match &p.load_error {
                Some(e) => eprintln!(
                    "\n!!! {} FAILS VERIFICATION ({} instructions processed): {e} !!!",
                    p.program,
                    p.verified_insns
                        .map_or_else(|| "?".into(), |v| v.to_string())
                ),
                None => eprintln!(
                    "\n!!! VERIFIER BUDGET EXCEEDED: {} processed {} instructions, more than {}. \
                     The kernel's limit is {}; a program this close to it breaks with the next \
                     compiler or kernel. !!!",
                    p.program,
                    p.verified_insns.unwrap_or(0),
                    args.verifier_budget,
                    inspect::VERIFIER_LIMIT
                ),
            }
        }
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_live(args: &Args, s: &Settings, command: String) -> Result<ExitCode> {
    let started = Instant::now();
    let settings = live::LiveSettings {
        mode: s.mode,
        sizes: args.live_sizes.clone().unwrap_or_else(|| {
            if args.quick {
                vec![1, 1000]
            } else {
                vec![1, 1000, 100_000]
            }
        }),
        window: std::time::Duration::from_millis(args.live_window_ms.unwrap_or(if args.quick {
            300
        } else {
            1000
        })),
        windows: args
            .live_windows
            .unwrap_or(if args.quick { 3 } else { 5 })
            .max(1),
        cpu: s.cpu.unwrap_or(inspect::online_cpus() - 1),
        seed: args.seed,
        nice: args.nice,
        xdp_filter_max: args.xdp_filter_max,
        out: s.out.clone(),
    };
    eprintln!("palisade-bench ({} mode): live traffic", s.mode);
    let report = live::run(&settings, command)?;
    let stem = report.write(&settings.out)?;
    println!("{}", report.terminal());
    println!(
        "wrote {}/{stem}.{{md,json,svg}} in {:.1} s",
        settings.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn growth(configs: &[ConfigResult]) -> Growth {
    let pts = |kind: Kind, min: usize, x: fn(&ConfigResult) -> usize| -> Vec<(f64, f64)> {
        configs
            .iter()
            .filter(|c| c.kind == kind && x(c) >= min)
            .map(|c| (x(c) as f64, c.above_floor_ns.median))
            .collect()
    };
    let rules = pts(Kind::Rules, 100, |c| c.rules);
    // Compare lists with the same shapes: below 100 rules the generator has no service rules,
    // so fewer tuples, and the difference would be the tuples, not the rules.
    let by_rules: BTreeMap<usize, (f64, usize)> = configs
        .iter()
        .filter(|c| c.kind == Kind::Rules && c.rules >= 100)
        .map(|c| {
            let tuples = c.install.as_ref().map_or(0, |i| i.tuples);
            (c.rules, (c.above_floor_ns.median, tuples))
        })
        .collect();
    let smallest_to_largest = match (by_rules.first_key_value(), by_rules.last_key_value()) {
        (Some((&a, &(ca, ta))), Some((&b, &(cb, tb)))) if b > a => Some(format!(
            "From {} rules ({ta} tuples) to {} rules ({tb} tuples), {}x more rules, the cost \
             above the floor goes from {ca:.1} ns to {cb:.1} ns ({:.2}x).",
            short_count(a),
            short_count(b),
            b / a,
            cb / ca
        )),
        _ => None,
    };
    Growth {
        rules_loglog_slope: loglog_slope(&rules),
        sets_loglog_slope: loglog_slope(&pts(Kind::Set, 1, |c| c.set_entries)),
        smallest_to_largest,
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
