//! The test-run suite: the firewall and the floor under `BPF_PROG_TEST_RUN`, for policies
//! from 0 to 100k rules and sets up to 1M entries, in interleaved rounds; plus the verifier's
//! work, install times and map memory.

use std::{collections::BTreeMap, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result, bail};
use palisade::{firewall::compile, guard::FIREWALL, policy::model::Policy};

use crate::{
    Settings,
    harness::{ALL_PROGRAMS, FLOOR_DROP, FLOOR_PASS, Loaded},
    inspect, netns,
    report::{
        ClassResult, ConfigResult, Growth, Install, Method, ProbeInfo, Report, XdpFilterRun,
        loglog_slope,
    },
    rng::Rng,
    runner::{self, Expect, Spread, Target},
    utc_now,
    workload::{self, Kind, ProbeClass, Workload, XDP_DROP, XDP_PASS, short_count},
    xdp_filter,
};

/// The name xdp-filter's program is run under.
const XDP_FILTER: &str = "xdp-filter";

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Installs `policy`, timing the firewall compiler alone and the whole install (compile
/// everything, write the idle generation, swap), then (when asked) a steady-state reload.
fn install(
    bench: &mut Loaded,
    policy: &Policy,
    reload: bool,
    changed: Option<&Policy>,
) -> Result<Install> {
    let t = Instant::now();
    let compiled = compile::compile(policy).context("compiling")?;
    let compile_ms = ms_since(t);
    let t = Instant::now();
    bench.install(policy).context("installing")?;
    let install_ms = ms_since(t);
    let maps = inspect::maps_of(&bench.ebpf, FIREWALL)?;
    let (mut reload_ms, mut replace_ms, mut two) = (None, None, None);
    if reload {
        // Fill the other generation, then reload once more: that last one writes into a
        // generation that holds the policy already (its entries are read and compared, none
        // written), like a reload of a running daemon whose policy did not change.
        bench.install(policy)?;
        let t = Instant::now();
        bench.install(policy)?;
        reload_ms = Some(ms_since(t));
        let after = inspect::maps_of(&bench.ebpf, FIREWALL)?;
        two = Some(
            ["FW_RULES", "FW_SETS", "FW_SET_HOSTS"]
                .iter()
                .filter_map(|n| after.get(*n).map(|m| m.memlock_bytes))
                .sum(),
        );
        if let Some(other) = changed {
            let t = Instant::now();
            bench
                .install(other)
                .context("installing the changed policy")?;
            replace_ms = Some(ms_since(t));
            // The measured policy live again (its generation still holds it).
            bench.install(policy)?;
        }
    }
    let (sized, sized_two) = sized_memory(policy, reload)?;
    Ok(Install {
        compile_ms,
        install_ms,
        reload_ms,
        replace_ms,
        tuples: compiled.tuples.len(),
        hash_entries: compiled.entries.len(),
        maps,
        rule_maps_two_generations_bytes: two,
        sized,
        sized_two_generations_bytes: sized_two,
    })
}

/// The policy tables sized at each install (`palisade::capacity`), by their arrays.
const SIZED: [&str; 6] = [
    "FW_RULES",
    "FW_SETS",
    "FW_SET_HOSTS",
    "DNS_NAMES",
    "FW_RULE_META",
    "FW_RULE_STATS",
];

/// The memory of every map of an object sized as a daemon starting with `policy` sizes it
/// (`loader::capacities_of`), after one install; with `both`, also the policy tables once
/// both generations hold the policy. Only maps are created (no program is verified).
pub fn sized_memory(
    policy: &Policy,
    both: bool,
) -> Result<(BTreeMap<String, inspect::MapMemory>, Option<u64>)> {
    let before = inspect::open_maps()?;
    let mut ebpf = palisade::loader::load_sized(&palisade::loader::capacities_of(policy)?)?;
    palisade::guard::install(&mut ebpf, policy).context("installing into the sized maps")?;
    let maps = inspect::maps_since(&ebpf, &before)?;
    let two = if both {
        palisade::guard::install(&mut ebpf, policy)?;
        let after = inspect::maps_since(&ebpf, &before)?;
        Some(
            SIZED
                .iter()
                .filter_map(|n| after.get(*n).map(|m| m.memlock_bytes))
                .sum(),
        )
    } else {
        None
    };
    Ok((maps, two))
}
/// Runs the suite and writes `firewall-<mode>.{md,json,svg}`. Exit status 2 when a program is
/// over the verifier budget or failed to load.
///
/// # Errors
/// When the object cannot be loaded, a policy installed or a measurement taken.
pub fn run(s: &Settings, command: String, started: Instant, load_start: f64) -> Result<ExitCode> {
    let mut rng = Rng::new(s.seed);

    eprintln!("palisade-bench ({} mode): building workloads", s.mode);
    let mut workloads: Vec<Workload> = Vec::new();
    for &n in &s.rules {
        workloads.push(workload::rules(n, s.seed)?);
    }
    if let Some(base) = workloads.first() {
        let extra = s
            .header
            .iter()
            .map(|kind| workload::with_header(base, kind))
            .collect::<Result<Vec<_>>>()?;
        workloads.extend(extra);
    }
    for &n in &s.sets {
        workloads.push(workload::set(n, s.seed)?);
    }
    for &n in &s.hosts {
        workloads.push(workload::hosts(n, s.seed)?);
    }
    if workloads.is_empty() {
        bail!("nothing to measure: give --rules, --sets or --hosts");
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
        // The same workload from another seed: every rule or member changed.
        let changed = match w.kind {
            _ if !s.reload => None,
            Kind::Rules if !w.id.contains('+') => {
                Some(workload::rules(w.rules, s.seed.wrapping_add(1))?.policy)
            }
            Kind::Set => Some(workload::set(w.set_entries, s.seed.wrapping_add(1))?.policy),
            Kind::Hosts => Some(workload::hosts(w.set_entries, s.seed.wrapping_add(1))?.policy),
            _ => None,
        };
        let i = inspect::on_all_cpus(|| install(&mut bench, &w.policy, s.reload, changed.as_ref()))
            .with_context(|| w.id.clone())?;
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
            "  {:<12} {} tuples, {} hash entries: compile {:.1} ms, install {:.1} ms{}{} (load+install {:.1} s)",
            w.id,
            i.tuples,
            i.hash_entries,
            i.compile_ms,
            i.install_ms,
            i.reload_ms
                .map_or_else(String::new, |r| format!(", reload {r:.1} ms")),
            i.replace_ms.map_or_else(String::new, |r| format!(
                ", reload with every entry changed {r:.1} ms"
            )),
            t.elapsed().as_secs_f64()
        );
        benches.push(bench);
        installs.push(i);
    }

    // xdp-filter, the reference: 10k hosts (its maximum), the list and the packets of the
    // host workload of that size (the same seed makes the same ones).
    let reference_workload = workload::hosts(xdp_filter::CAPACITY, s.seed)?;
    let mut reference = None;
    let mut reference_skipped = None;
    if s.xdp_filter {
        match xdp_filter::Reference::new(&workload::host_list(&reference_workload)) {
            Ok((r, prog)) => {
                benches[0].adopt(XDP_FILTER, prog);
                eprintln!(
                    "  xdp-filter   {} addresses, program {}",
                    xdp_filter::CAPACITY,
                    r.program_name
                );
                reference = Some(r);
            }
            Err(e) => {
                eprintln!("palisade-bench: xdp-filter not measured: {e:#}");
                reference_skipped = Some(format!("{e:#}"));
            }
        }
    } else {
        reference_skipped = Some("--no-xdp-filter".into());
    }

    let verifier = ALL_PROGRAMS
        .iter()
        .map(|p| inspect::program(&benches[0].ebpf, p, &benches[0].failures, s.verifier_budget))
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
    if reference.is_some() {
        targets.push(Target {
            id: format!("xdp-filter-{}", short_count(xdp_filter::CAPACITY)),
            bench: &benches[0],
            program: XDP_FILTER,
            probes: &reference_workload.probes,
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
        } else if i - 2 == workloads.len() {
            (Kind::XdpFilter, 0, xdp_filter::CAPACITY, 0, None)
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
    let default_policy = palisade::policy::config::default_policy();
    let (default_maps, _) = sized_memory(&default_policy, false)?;
    let report = Report {
        default_policy_maps: default_maps.into_values().collect(),
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
            seed: s.seed,
            floor_program: FLOOR_PASS,
            verifier_budget: s.verifier_budget,
            order: "shuffled anew each round",
        },
        configs,
        xdp_filter: XdpFilterRun {
            program: reference.as_ref().map(|r| r.program_name.clone()),
            entries: xdp_filter::CAPACITY,
            skipped: reference_skipped,
        },
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
                    s.verifier_budget,
                    inspect::VERIFIER_LIMIT
                ),
            }
        }
        return Ok(ExitCode::from(2));
    }
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
