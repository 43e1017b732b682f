//! The results of the test-run suite, and their markdown, JSON, SVG and terminal forms.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    inspect::{Conditions, Machine, MapMemory, ProgramReport, VERIFIER_LIMIT},
    plot::{Chart, Point, Reference, Series},
    runner::Spread,
    workload::{Kind, ProbeClass, short_count},
};

#[derive(Debug, Serialize)]
pub struct Method {
    pub rounds: usize,
    pub probes: usize,
    pub target_ms_per_measurement: f64,
    pub seed: u64,
    pub floor_program: &'static str,
    pub verifier_budget: u32,
    pub order: &'static str,
}

/// Time to load one policy, and the memory its maps take.
#[derive(Debug, Clone, Serialize)]
pub struct Install {
    /// The firewall compiler alone (policy model to map contents).
    pub compile_ms: f64,
    /// The first install into a freshly loaded object: compile everything, write the idle
    /// generation, swap.
    pub install_ms: f64,
    /// A reload of the same policy once both generations hold it: compile, read the idle
    /// generation and write what differs (nothing), swap. What a `palisade reload` costs
    /// when the policy did not change.
    pub reload_ms: Option<f64>,
    /// A reload to a policy of the same size with other members and rules (another seed),
    /// into a generation that holds the first one: every entry is deleted and written.
    pub replace_ms: Option<f64>,
    pub tuples: usize,
    pub hash_entries: usize,
    /// Kernel-charged memory of every map after the first install (one generation live).
    pub maps: BTreeMap<String, MapMemory>,
    /// FW_RULES + FW_SETS + FW_SET_HOSTS after the reload, when both generations hold the policy.
    pub rule_maps_two_generations_bytes: Option<u64>,
    /// Every map of an object sized as the daemon sizes it for this policy, after one
    /// install: what the daemon pins.
    pub sized: BTreeMap<String, MapMemory>,
    /// The policy-sized maps of that object once both generations hold the policy.
    pub sized_two_generations_bytes: Option<u64>,
}

impl Install {
    fn sized_bytes(&self, name: &str) -> u64 {
        self.sized.get(name).map_or(0, |m| m.memlock_bytes)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassResult {
    pub class: ProbeClass,
    pub probes: usize,
    pub dropped: usize,
    pub ns_per_packet: Spread,
    pub above_floor_ns: Spread,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigResult {
    pub id: String,
    pub kind: Kind,
    pub program: &'static str,
    pub rules: usize,
    pub set_entries: usize,
    pub port_rules: usize,
    pub repeat: u32,
    pub ns_per_packet: Spread,
    pub above_floor_ns: Spread,
    pub ratio_to_floor: Spread,
    pub wall_ns_per_packet: Spread,
    pub by_class: Vec<ClassResult>,
    pub dropped_probes: usize,
    pub per_round_ns: Vec<f64>,
    pub install: Option<Install>,
    pub probes: Vec<ProbeInfo>,
}

/// One packet of a configuration's mix.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeInfo {
    pub class: ProbeClass,
    /// The rule it matches (evaluation index); none for the default action.
    pub rule: Option<u32>,
    /// Expected (and observed) XDP action: 1 drop, 2 pass.
    pub action: u32,
    pub bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct Growth {
    /// Least-squares slope of ln(cost above floor) over ln(rules), for lists of 100 rules or
    /// more: 1 would be linear growth, 0 flat.
    pub rules_loglog_slope: Option<f64>,
    pub sets_loglog_slope: Option<f64>,
    pub smallest_to_largest: Option<String>,
}

/// xdp-filter as the run's reference.
#[derive(Debug, Serialize)]
pub struct XdpFilterRun {
    /// The program xdp-filter chose for its features; none when it was not measured.
    pub program: Option<String>,
    /// Addresses it held (its maximum).
    pub entries: usize,
    /// Why it was not measured.
    pub skipped: Option<String>,
}

/// The goal of the comparison: a 1M-host blocklist costs at most this many times
/// xdp-filter's cost at its maximum, above the floor.
pub const XDP_FILTER_GOAL: f64 = 1.5;

#[derive(Debug, Serialize)]
pub struct Report {
    pub suite: &'static str,
    pub mode: String,
    pub generated_at: String,
    pub command: String,
    pub wall_seconds: f64,
    pub machine: Machine,
    pub conditions: Conditions,
    pub method: Method,
    pub configs: Vec<ConfigResult>,
    pub xdp_filter: XdpFilterRun,
    pub verifier: Vec<ProgramReport>,
    pub growth: Growth,
    pub round_orders: Vec<Vec<String>>,
    /// Every map the daemon pins for the embedded default policy, sized as it sizes them.
    pub default_policy_maps: Vec<MapMemory>,
}

/// Least-squares slope of ln(y) over ln(x).
pub fn loglog_slope(points: &[(f64, f64)]) -> Option<f64> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn ns(s: &Spread) -> String {
    format!("{:.1} [{:.1}–{:.1}]", s.median, s.min, s.max)
}

fn ratio(s: &Spread) -> String {
    format!("{:.2}× [{:.2}–{:.2}]", s.median, s.min, s.max)
}

fn label(c: &ConfigResult) -> String {
    match c.kind {
        Kind::Floor => format!("empty XDP ({})", c.program.trim_start_matches("palisade_")),
        Kind::Rules if c.rules == 1 => "firewall, 1 rule".into(),
        Kind::Rules => format!("firewall, {} rules", short_count(c.rules)),
        Kind::Set => format!("firewall, 1 rule, set of {}", short_count(c.set_entries)),
        Kind::Hosts => format!(
            "firewall, 1 rule, {} hosts (IPv4 /32)",
            short_count(c.set_entries)
        ),
        Kind::XdpFilter => format!(
            "xdp-filter, {} hosts (reference)",
            short_count(c.set_entries)
        ),
    }
}

/// `c`'s cost above the floor over `base`'s, round by round (rounds where `base` is not
/// above the floor left out).
fn ratios_above_floor(c: &ConfigResult, base: &ConfigResult, floor: &ConfigResult) -> Vec<f64> {
    c.per_round_ns
        .iter()
        .zip(&base.per_round_ns)
        .zip(&floor.per_round_ns)
        .filter(|((_, b), f)| **b - **f > 0.0)
        .map(|((x, b), f)| (x - f) / (b - f))
        .collect()
}

impl Report {
    fn floor(&self) -> Option<&ConfigResult> {
        self.configs.iter().find(|c| c.kind == Kind::Floor)
    }

    /// The main table, as markdown rows (also printed to the terminal).
    pub fn cost_table(&self) -> String {
        let mut t = String::new();
        t.push_str(
            "| configuration | rules | set entries | tuples | ns/packet | above floor (ns) | ratio to floor |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for c in &self.configs {
            let tuples = c
                .install
                .as_ref()
                .map_or_else(|| "–".into(), |i| i.tuples.to_string());
            let (rules, entries) = match c.kind {
                Kind::Floor => ("–".into(), "–".into()),
                Kind::XdpFilter => ("–".into(), c.set_entries.to_string()),
                _ => (c.rules.to_string(), c.set_entries.to_string()),
            };
            let _ = writeln!(
                t,
                "| {} | {rules} | {entries} | {tuples} | {} | {} | {} |",
                label(c),
                ns(&c.ns_per_packet),
                ns(&c.above_floor_ns),
                ratio(&c.ratio_to_floor)
            );
        }
        t
    }

    /// The configurations made from another by one more rule (`ID+KIND`, `--header`), each
    /// against that one: the ratio of their costs above the floor, round by round.
    pub fn against_base_table(&self) -> Option<String> {
        let floor = self.floor()?;
        let mut t = String::from(
            "| configuration | ns/packet | above floor (ns) | base above floor (ns) | ratio to base |\n\
             |---|---:|---:|---:|---:|\n",
        );
        let mut any = false;
        for c in &self.configs {
            let Some((base_id, kind)) = c.id.split_once('+') else {
                continue;
            };
            let Some(base) = self.configs.iter().find(|b| b.id == base_id) else {
                continue;
            };
            let ratios = ratios_above_floor(c, base, floor);
            let _ = writeln!(
                t,
                "| {} + {kind} | {} | {} | {} | {} |",
                label(base),
                ns(&c.ns_per_packet),
                ns(&c.above_floor_ns),
                ns(&base.above_floor_ns),
                ratio(&Spread::of(&ratios))
            );
            any = true;
        }
        any.then_some(t)
    }

    /// Every Palisade configuration against xdp-filter: the ratio of their costs above the
    /// floor, round by round (the median of the ratios, not the ratio of the medians).
    pub fn xdp_filter_table(&self) -> Option<String> {
        let floor = self.floor()?;
        let x = self.configs.iter().find(|c| c.kind == Kind::XdpFilter)?;
        let mut t = String::from(
            "| configuration | above floor (ns) | xdp-filter above floor (ns) | ratio to xdp-filter | goal |\n\
             |---|---:|---:|---:|---|\n",
        );
        for c in self
            .configs
            .iter()
            .filter(|c| !matches!(c.kind, Kind::Floor | Kind::XdpFilter))
        {
            let ratios = ratios_above_floor(c, x, floor);
            if ratios.is_empty() {
                continue;
            }
            let spread = Spread::of(&ratios);
            let goal = if c.kind == Kind::Hosts && c.set_entries >= 1_000_000 {
                format!(
                    "≤ {XDP_FILTER_GOAL:.1}×: {}",
                    if spread.median <= XDP_FILTER_GOAL {
                        "met"
                    } else {
                        "not met"
                    }
                )
            } else {
                "–".into()
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {goal} |",
                label(c),
                ns(&c.above_floor_ns),
                ns(&x.above_floor_ns),
                ratio(&spread)
            );
        }
        Some(t)
    }

    fn class_table(&self) -> String {
        let mut t = String::from("| configuration |");
        let mut sep = String::from("|---|");
        for class in ProbeClass::ALL {
            let _ = write!(t, " {} |", class.name());
            sep.push_str("---:|");
        }
        t.push('\n');
        t.push_str(&sep);
        t.push('\n');
        for c in self.configs.iter().filter(|c| c.kind != Kind::Floor) {
            let _ = write!(t, "| {} |", label(c));
            for class in ProbeClass::ALL {
                match c.by_class.iter().find(|r| r.class == class) {
                    Some(r) => {
                        let _ = write!(t, " {:.1} ({}) |", r.above_floor_ns.median, r.probes);
                    }
                    None => t.push_str(" – |"),
                }
            }
            t.push('\n');
        }
        t
    }

    fn install_table(&self) -> String {
        let mut t = String::from(
            "| configuration | tuples | hash entries | compile (ms) | install (ms) | reload, same policy (ms) | reload, every entry changed (ms) | FW_RULES (MiB) | sets: FW_SETS + FW_SET_HOSTS (MiB) | DNS_NAMES (MiB) | every map the daemon pins (MiB) | sized maps, 2 generations (MiB) |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for c in &self.configs {
            let Some(i) = &c.install else { continue };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
                label(c),
                i.tuples,
                i.hash_entries,
                i.compile_ms,
                i.install_ms,
                i.reload_ms
                    .map_or_else(|| "–".into(), |r| format!("{r:.1}")),
                i.replace_ms
                    .map_or_else(|| "–".into(), |r| format!("{r:.1}")),
                mib(i.sized_bytes("FW_RULES")),
                mib(i.sized_bytes("FW_SETS") + i.sized_bytes("FW_SET_HOSTS")),
                mib(i.sized_bytes("DNS_NAMES")),
                mib(i.sized.values().map(|m| m.memlock_bytes).sum()),
                i.sized_two_generations_bytes
                    .map_or_else(|| "–".into(), mib),
            );
        }
        t
    }

    /// Every map the daemon pins for the embedded default policy, largest first.
    fn default_policy_table(&self) -> String {
        let total: u64 = self
            .default_policy_maps
            .iter()
            .map(|m| m.memlock_bytes)
            .sum();
        let mut maps: Vec<&MapMemory> = self.default_policy_maps.iter().collect();
        maps.sort_by(|a, b| {
            b.memlock_bytes
                .cmp(&a.memlock_bytes)
                .then(a.name.cmp(&b.name))
        });
        let mut t = format!(
            "\n### The embedded default policy\n\nEvery map the daemon pins for it, sized as it sizes them: {} MiB in {} maps. \
             The largest (names as the kernel keeps them, 15 characters):\n\n\
             | map | capacity | memlock (MiB) |\n|---|---:|---:|\n",
            mib(total),
            maps.len()
        );
        for m in maps.iter().take(20) {
            let _ = writeln!(
                t,
                "| `{}` | {} | {} |",
                m.name,
                m.max_entries,
                mib(m.memlock_bytes)
            );
        }
        t
    }

    fn verifier_table(&self) -> String {
        let mut t = String::from(
            "| program | verified instructions | % of the 1M limit | translated bytes | JIT bytes | within budget |\n\
             |---|---:|---:|---:|---:|---|\n",
        );
        for p in &self.verifier {
            let _ = writeln!(
                t,
                "| `{}` | {} | {} | {} | {} | {} |",
                p.program,
                p.verified_insns
                    .map_or_else(|| "n/a".into(), |v| v.to_string()),
                p.verified_insns.map_or_else(
                    || "n/a".into(),
                    |v| format!("{:.2} %", f64::from(v) * 100.0 / f64::from(VERIFIER_LIMIT))
                ),
                p.xlated_bytes
                    .map_or_else(|| "n/a".into(), |v| v.to_string()),
                p.jited_bytes,
                match (&p.load_error, p.within_budget) {
                    (Some(e), _) =>
                        format!("**NO: fails verification** ({})", e.replace('|', "\\|")),
                    (None, true) => "yes".into(),
                    (None, false) => "**NO**".into(),
                }
            );
        }
        t
    }

    fn growth_text(&self) -> String {
        let mut s = String::new();
        if let Some(slope) = self.growth.rules_loglog_slope {
            let _ = writeln!(
                s,
                "- Rules: the log-log slope of the cost above the floor against the rule count (lists of \
                 100 rules and more) is **{slope:.3}**. Linear growth would be 1.0, a flat cost 0.0."
            );
        }
        if let Some(x) = &self.growth.smallest_to_largest {
            let _ = writeln!(s, "- {x}");
        }
        if let Some(slope) = self.growth.sets_loglog_slope {
            let _ = writeln!(
                s,
                "- Sets: the same slope against the number of set entries is **{slope:.3}** \
                 (single addresses are one hash lookup; prefixes one LPM-trie lookup, which \
                 walks at most one node per prefix bit, not per entry)."
            );
        }
        s
    }

    pub fn chart(&self) -> Chart<'_> {
        let floor = self.floor();
        let line = |kind: Kind, x: fn(&ConfigResult) -> usize| -> Vec<Point> {
            self.configs
                .iter()
                .filter(|c| c.kind == kind && x(c) > 0)
                .map(|c| {
                    let s = c.above_floor_ns;
                    let tuples = c.install.as_ref().map_or(0, |i| i.tuples);
                    Point {
                        x: x(c) as f64,
                        y: s.median,
                        lo: s.min,
                        hi: s.max,
                        note: (kind == Kind::Rules).then(|| {
                            format!("{tuples} tuple{}", if tuples == 1 { "" } else { "s" })
                        }),
                    }
                })
                .collect()
        };
        let mut series = vec![Series {
            label: "Palisade: N rules (blocklist + service rules)".into(),
            color: "#1f6fb4",
            points: line(Kind::Rules, |c| c.rules),
        }];
        let sets = line(Kind::Set, |c| c.set_entries);
        if !sets.is_empty() {
            series.push(Series {
                label: "Palisade: 1 rule, source set of N entries".into(),
                color: "#d9641e",
                points: sets,
            });
        }
        let mut references = Vec::new();
        if let Some(zero) = self
            .configs
            .iter()
            .find(|c| c.kind == Kind::Rules && c.rules == 0)
        {
            references.push(Reference {
                label: format!("Palisade: 0 rules ({:.1} ns)", zero.above_floor_ns.median),
                color: "#2a9d4b",
                y: zero.above_floor_ns.median,
            });
        }
        if let Some(f) = floor {
            references.push(Reference {
                label: format!(
                    "empty XDP program = 0 ({:.1} ns absolute)",
                    f.ns_per_packet.median
                ),
                color: "#888888",
                y: 0.0,
            });
        }
        Chart {
            title: "XDP firewall: cost per packet above an empty XDP program (BPF_PROG_TEST_RUN)",
            x_label: "N (rules, or set entries) — log scale",
            y_label: "ns per packet above the floor (median, min–max)",
            series,
            references,
            log_y: false,
        }
    }

    pub fn markdown(&self, svg_name: &str) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "# Palisade firewall cost per packet ({} mode)\n",
            self.mode
        );
        let _ = writeln!(
            m,
            "Generated {} by `{}` in {:.0} s. Machine and method: [../README.md](../README.md).\n",
            self.generated_at, self.command, self.wall_seconds
        );
        let mc = &self.machine;
        let _ = writeln!(
            m,
            "Machine: {} CPUs ({}{}), {} MiB, kernel {}, JIT {} (harden {}), spectre_v2: {}. \
             Measurements pinned to CPU {}.\n",
            mc.cpus,
            mc.cpu_model,
            if mc.virtualized { ", virtualized" } else { "" },
            mc.memory_mib,
            mc.kernel,
            mc.bpf_jit_enable,
            mc.bpf_jit_harden,
            mc.spectre_v2,
            mc.bench_cpu
                .map_or_else(|| "none".into(), |c| c.to_string())
        );
        let cd = &self.conditions;
        let _ = writeln!(
            m,
            "Load average {:.2} at the start, {:.2} at the end; the benchmark used {:.1} s of CPU \
             in {:.1} s. The kernel's timer leaves out time the benchmark was not running, but a \
             busy machine still shows as wider min–max ranges.\n",
            cd.loadavg_start, cd.loadavg_end, cd.cpu_seconds, cd.wall_seconds
        );
        let _ = writeln!(
            m,
            "Each configuration runs the same kind of {} packets (hits near the start, middle and end \
             of the rule list, hits on service rules, misses that take the default action) through \
             `BPF_PROG_TEST_RUN`, each packet `repeat` times; a measurement is the mean of the \
             kernel's per-run times over the packets. {} rounds, each measuring every configuration \
             once in a shuffled order; the cost above the floor is taken against the empty XDP \
             program (`{}`) measured in the same round. Cells are **median [min–max] over rounds**.\n",
            self.method.probes, self.method.rounds, self.method.floor_program
        );
        m.push_str("## Cost per packet\n\n");
        m.push_str(&self.cost_table());
        let _ = writeln!(m, "\n![cost per packet against rule count]({svg_name})\n");
        if let Some(t) = self.against_base_table() {
            m.push_str("## Conditions against their base (same run)\n\n");
            m.push_str(
                "Each row is the base configuration with one more rule using the condition \
                 (`same`: the base loaded again, unchanged), measured in the same rounds. The \
                 ratio is taken round by round, cost above the floor over the base's.\n\n",
            );
            m.push_str(&t);
            m.push('\n');
        }
        m.push_str("## Against xdp-filter (same run)\n\n");
        match (self.xdp_filter_table(), &self.xdp_filter.skipped) {
            (Some(t), _) => {
                let _ = writeln!(
                    m,
                    "xdp-filter (xdp-tools) holds {} IPv4 source addresses, its maximum, loaded by \
                     its own command (`load -m native -p allow -f ipv4`, program `{}`) on a veth \
                     end of a private namespace; its program runs under `BPF_PROG_TEST_RUN` in \
                     the same rounds as Palisade's, on the packets of the `{}`-host workload \
                     (half from listed hosts, dropped; half misses, passed). The ratio is taken \
                     round by round, cost above the floor over xdp-filter's. Goal: a 1M-host \
                     blocklist at most {XDP_FILTER_GOAL:.1}× xdp-filter's cost.\n",
                    self.xdp_filter.entries,
                    self.xdp_filter.program.as_deref().unwrap_or("?"),
                    short_count(self.xdp_filter.entries),
                );
                m.push_str(&t);
                m.push('\n');
            }
            (None, Some(why)) => {
                let _ = writeln!(m, "Not measured: {why}.\n");
            }
            (None, None) => m.push_str("Not measured.\n\n"),
        }
        m.push_str("## Growth with the number of rules\n\n");
        m.push_str(&self.growth_text());
        m.push_str(
            "\nThe firewall does one hash lookup per *tuple* (distinct rule shape), not per rule, \
             so the cost follows the tuple column, which stays bounded however many rules share \
             those shapes.\n\n",
        );
        m.push_str("## By packet class (ns above the floor, median; packets in brackets)\n\n");
        m.push_str(
            "`early`/`middle`/`late`: a blocklist rule in the first percent, the middle, the last \
             percent of the list; `port`: a service rule; `set`: a member of the set; `miss`: \
             nothing matches, the default action applies (every tuple is searched).\n\n",
        );
        m.push_str(&self.class_table());
        m.push_str("\n## Verifier\n\n");
        let _ = writeln!(
            m,
            "Instructions processed by the verifier when loading each program (the kernel refuses \
             a program above {VERIFIER_LIMIT}; this benchmark fails above {}). The count does not \
             depend on the policy: policies live in maps.\n",
            self.method.verifier_budget
        );
        m.push_str(&self.verifier_table());
        m.push_str("\n## Install time and map memory\n\n");
        m.push_str(
            "`compile`: the firewall compiler alone (policy model to map contents, userspace). \
             `install`: the first install into a freshly loaded object (compile, write the idle \
             generation, swap), so map writes are roughly install minus compile. `reload`: \
             installing the same policy again once both generations hold it (compile, clear the \
             stale generation, write, swap), what a live reload costs. Memory is the kernel's `memlock` from each map's fdinfo after the \
             first install into an object whose maps are sized as the daemon sizes them for that policy (`palisade::capacity`: \
             the rule, set and name tables of a generation hold what it needs plus a quarter, rounded up to a power \
             of two, at least 1,024 entries; each array of tables counts the tables it holds); a hash table's bucket array is allocated up front for its capacity, its entries on \
             demand. `every map the daemon pins`: all maps of that object, the connection tracking tables, ring buffers and the \
             other engines' maps included. `sized maps, 2 generations`: FW_RULES, FW_SETS, FW_SET_HOSTS, DNS_NAMES, FW_RULE_META and FW_RULE_STATS once \
             both generations hold the policy.\n\n",
        );
        m.push_str(&self.install_table());
        m.push_str(&self.default_policy_table());
        m.push_str("\n## Raw data\n\nEvery round of every configuration, the round orders and the per-map memory are in the JSON file next to this one.\n");
        m
    }

    /// Writes `<stem>.md`, `<stem>.json` and `<stem>.svg` into `dir`.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let svg_name = format!("{stem}.svg");
        let files = [
            (format!("{stem}.md"), self.markdown(&svg_name)),
            (
                format!("{stem}.json"),
                serde_json::to_string_pretty(self)? + "\n",
            ),
            (svg_name.clone(), self.chart().svg()),
        ];
        for (name, text) in files {
            let path = dir.join(&name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// A plain-text summary for the terminal.
    pub fn terminal(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<34} {:>7} {:>9} {:>6}  {:>22}  {:>22}  {:>8}",
            "configuration",
            "rules",
            "set",
            "tuples",
            "ns/packet [min-max]",
            "above floor [min-max]",
            "ratio"
        );
        for c in &self.configs {
            let tuples = c
                .install
                .as_ref()
                .map_or_else(|| "-".into(), |i| i.tuples.to_string());
            let _ = writeln!(
                s,
                "{:<34} {:>7} {:>9} {:>6}  {:>22}  {:>22}  {:>7.2}x",
                label(c),
                if matches!(c.kind, Kind::Floor | Kind::XdpFilter) {
                    "-".into()
                } else {
                    c.rules.to_string()
                },
                if c.kind == Kind::Floor {
                    "-".into()
                } else {
                    c.set_entries.to_string()
                },
                tuples,
                format!(
                    "{:.1} [{:.1}-{:.1}]",
                    c.ns_per_packet.median, c.ns_per_packet.min, c.ns_per_packet.max
                ),
                format!(
                    "{:.1} [{:.1}-{:.1}]",
                    c.above_floor_ns.median, c.above_floor_ns.min, c.above_floor_ns.max
                ),
                c.ratio_to_floor.median
            );
        }
        s.push('\n');
        for p in &self.verifier {
            let _ = writeln!(
                s,
                "verifier: {:<24} {:>8} instructions processed{}",
                p.program,
                p.verified_insns
                    .map_or_else(|| "n/a".into(), |v| v.to_string()),
                match (&p.load_error, p.within_budget) {
                    (Some(_), _) => "  <-- FAILS VERIFICATION",
                    (None, true) => "",
                    (None, false) => "  <-- ABOVE THE BUDGET",
                }
            );
        }
        s.push('\n');
        s.push_str(&self.growth_text().replace("**", ""));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::loglog_slope;

    #[test]
    fn slope_of_linear_and_flat() {
        let lin: Vec<(f64, f64)> = [1.0, 10.0, 100.0].iter().map(|&x| (x, 3.0 * x)).collect();
        assert!((loglog_slope(&lin).unwrap() - 1.0).abs() < 1e-9);
        let flat = [(1.0, 5.0), (1000.0, 5.0)];
        assert!(loglog_slope(&flat).unwrap().abs() < 1e-9);
    }
}
