//! The DNS suite: what a DNS query costs through `palisade_firewall`, which tail-calls the DNS
//! inspector (`palisade_dns_ingress`) for UDP queries to port 53, against the size of the name
//! list; plus the time to install a list and the memory its names take.
//!
//! Every list of N names is half exact names and half `*.suffix` wildcards, random labels of
//! 3 to 12 characters, 2 to 4 labels, a few TLDs. Three policies per size: a blocklist that
//! answers NXDOMAIN, the same blocklist with the drop action, and an allowlist whose entries
//! carry an entropy bound. Each *case* (exact hit, wildcard hit, miss, ...) is its own
//! configuration of 64 different queries, hits spread over the whole list.
//!
//! An NXDOMAIN answer rewrites the frame in place, and `BPF_PROG_TEST_RUN` with `repeat` runs
//! the program again on its own output: every run after the first would see the answer, not
//! the query. Those cases are therefore measured one run per syscall (`repeat = 1`, many
//! syscalls), against an empty program measured the same way in the same round.

use std::{collections::HashSet, fmt::Write as _, fs, path::Path, time::Instant};

use anyhow::{Context as _, Result, bail};
use palisade::{
    craft::{DnsQuery, Frame},
    dns::compile::{self as dns_compile, Clock},
    firewall::apply,
    guard::{DNS_EGRESS, DNS_INGRESS, FIREWALL},
    policy::model::{
        AnswerBudget, Dns, DnsAction, DnsMode, DnsScope, NameEntry, NameList, NameMatch, Policy,
    },
};
use serde::Serialize;

use crate::{
    Settings,
    harness::{FLOOR_PASS, Loaded},
    inspect::{self, MapMemory, ProgramReport, VERIFIER_LIMIT},
    netns,
    plot::{Chart, Point, Reference, Series},
    report::loglog_slope,
    rng::Rng,
    runner::Spread,
    utc_now,
    workload::{self, XDP_DROP, XDP_PASS, short_count},
};

/// Queries per configuration.
pub const QUERIES: usize = 64;
const XDP_TX: u32 = 3;
/// Allowlist entries accept at most this many bits of entropy below the match (the
/// documented recommendation).
const MAX_ENTROPY_BITS: u32 = 256;
const TLDS: [&str; 8] = ["com", "net", "org", "io", "de", "ru", "info", "xyz"];
const LOW_ENTROPY_PREFIXES: [&str; 8] = ["www", "mail", "api", "cdn", "static", "img", "app", "m"];
const CLIENT: &str = "192.0.2.10";
const RESOLVER: &str = "198.51.100.53";
const QTYPE_A: u16 = 1;

/// The policy a configuration runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Empty XDP program.
    Floor,
    /// The firewall with no DNS policy: the query is not inspected.
    NoDns,
    /// Blocklist, NXDOMAIN answers (XDP_TX).
    Nxdomain,
    /// Blocklist, drop.
    Drop,
    /// Allowlist with an entropy bound on every entry, blocked queries dropped.
    Allowlist,
}

/// What the queries of a configuration are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    Floor,
    /// A name listed exactly.
    ExactHit,
    /// A random label below a listed `*.suffix`.
    WildcardHit,
    /// A name that matches nothing.
    Miss,
    /// Allowlist: a low-entropy label (`www`, `mail`, ...) below a listed `*.suffix`.
    LowEntropy,
    /// Allowlist: a 12-character label of distinct characters below a listed `*.suffix`.
    HighEntropy,
}

impl Case {
    const fn name(self) -> &'static str {
        match self {
            Self::Floor => "floor",
            Self::ExactHit => "exact hit",
            Self::WildcardHit => "wildcard hit",
            Self::Miss => "miss",
            Self::LowEntropy => "wildcard, low entropy",
            Self::HighEntropy => "wildcard, high entropy",
        }
    }
}

impl PolicyKind {
    const fn name(self) -> &'static str {
        match self {
            Self::Floor => "empty XDP",
            Self::NoDns => "firewall, no DNS policy",
            Self::Nxdomain => "blocklist, NXDOMAIN",
            Self::Drop => "blocklist, drop",
            Self::Allowlist => "allowlist + entropy bound",
        }
    }
}

/// A generated list: exact names and wildcard suffixes, as dotted text.
struct NameSet {
    exact: Vec<String>,
    wildcard: Vec<String>,
    exact_set: HashSet<String>,
    wildcard_set: HashSet<String>,
}

impl NameSet {
    fn generate(n: usize, rng: &mut Rng) -> Self {
        let mut seen: HashSet<String> = HashSet::with_capacity(n);
        let (mut exact, mut wildcard) = (Vec::with_capacity(n / 2), Vec::with_capacity(n - n / 2));
        while exact.len() + wildcard.len() < n {
            let name = random_name(rng);
            if !seen.insert(name.clone()) {
                continue;
            }
            if exact.len() <= wildcard.len() {
                exact.push(name);
            } else {
                wildcard.push(name);
            }
        }
        Self {
            exact_set: exact.iter().cloned().collect(),
            wildcard_set: wildcard.iter().cloned().collect(),
            exact,
            wildcard,
        }
    }

    /// Whether `name` is listed: exactly, or strictly below a wildcard suffix.
    fn matches(&self, name: &str) -> bool {
        if self.exact_set.contains(name) {
            return true;
        }
        let mut rest = name;
        while let Some((_, suffix)) = rest.split_once('.') {
            if self.wildcard_set.contains(suffix) {
                return true;
            }
            rest = suffix;
        }
        false
    }

    fn entries(&self, max_entropy_bits: Option<u32>) -> Vec<NameEntry> {
        let entry = |name: &String, kind| NameEntry {
            labels: name.split('.').map(|l| l.as_bytes().to_vec()).collect(),
            kind,
            qtypes: vec![],
            expires: None,
            max_entropy_bits,
            line: 0,
        };
        self.exact
            .iter()
            .map(|n| entry(n, NameMatch::Exact))
            .chain(
                self.wildcard
                    .iter()
                    .map(|n| entry(n, NameMatch::Subdomains)),
            )
            .collect()
    }
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A label of 3 to 12 characters, mostly letters.
fn random_label(rng: &mut Rng) -> String {
    let len = 3 + rng.below(10) as usize;
    (0..len)
        .map(|_| {
            let i = if rng.chance(10) {
                26 + rng.below(10)
            } else {
                rng.below(26)
            };
            ALNUM[i as usize] as char
        })
        .collect()
}

/// 2 to 4 labels, the last a TLD.
fn random_name(rng: &mut Rng) -> String {
    let labels = 1 + rng.below(3) as usize;
    let mut s = String::new();
    for _ in 0..labels {
        s.push_str(&random_label(rng));
        s.push('.');
    }
    s.push_str(TLDS[rng.below(TLDS.len() as u64) as usize]);
    s
}

/// Two labels, each all 36 characters of `ALNUM` in a random order: every character twice,
/// 72 * log2(36) ≈ 372 bits, well over the bound, like a tunnel's data.
fn high_entropy_label(rng: &mut Rng) -> String {
    let mut labels = Vec::with_capacity(2);
    for _ in 0..2 {
        let mut pool = ALNUM.to_vec();
        rng.shuffle(&mut pool);
        labels.push(pool.iter().map(|&b| b as char).collect::<String>());
    }
    labels.join(".")
}

/// `QUERIES` indices spread evenly over `0..len`.
fn spread(len: usize, rng: &mut Rng) -> Vec<usize> {
    (0..QUERIES)
        .map(|i| {
            let lo = i * len / QUERIES;
            let hi = ((i + 1) * len / QUERIES).max(lo + 1);
            (lo + rng.below((hi - lo) as u64) as usize).min(len - 1)
        })
        .collect()
}

fn frame(name: &str, i: usize, rng: &mut Rng) -> Vec<u8> {
    let msg = DnsQuery::name(name, QTYPE_A)
        .with_id(i as u16 ^ rng.u16())
        .build();
    Frame::dns_udp(CLIENT, RESOLVER, 1024 + rng.below(60_000) as u16, &msg).build()
}

fn queries(case: Case, set: &NameSet, rng: &mut Rng) -> Result<Vec<String>> {
    let names: Vec<String> = match case {
        Case::Floor => bail!("no queries for the floor"),
        Case::ExactHit => spread(set.exact.len(), rng)
            .into_iter()
            .map(|i| set.exact[i].clone())
            .collect(),
        Case::WildcardHit => spread(set.wildcard.len(), rng)
            .into_iter()
            .map(|i| format!("{}.{}", random_label(rng), set.wildcard[i]))
            .collect(),
        Case::LowEntropy => spread(set.wildcard.len(), rng)
            .into_iter()
            .enumerate()
            .map(|(k, i)| {
                format!(
                    "{}.{}",
                    LOW_ENTROPY_PREFIXES[k % LOW_ENTROPY_PREFIXES.len()],
                    set.wildcard[i]
                )
            })
            .collect(),
        Case::HighEntropy => spread(set.wildcard.len(), rng)
            .into_iter()
            .map(|i| format!("{}.{}", high_entropy_label(rng), set.wildcard[i]))
            .collect(),
        Case::Miss => {
            let mut v = Vec::with_capacity(QUERIES);
            while v.len() < QUERIES {
                let n = random_name(rng);
                if !set.matches(&n) {
                    v.push(n);
                }
            }
            v
        }
    };
    // The cases below a wildcard must not be exact names too (they are not: exact names and
    // suffixes are distinct, and the labels below are new), but check what the verdict
    // depends on.
    for n in &names {
        let listed = set.matches(n);
        if listed == (case == Case::Miss) {
            bail!("generated query {n} does not fit case {}", case.name());
        }
    }
    Ok(names)
}

fn expected(policy: PolicyKind, case: Case) -> u32 {
    match (policy, case) {
        (PolicyKind::Nxdomain, Case::ExactHit | Case::WildcardHit) => XDP_TX,
        (PolicyKind::Drop, Case::ExactHit | Case::WildcardHit)
        | (PolicyKind::Allowlist, Case::HighEntropy | Case::Miss) => XDP_DROP,
        _ => XDP_PASS,
    }
}

fn policy(kind: PolicyKind, set: Option<&NameSet>) -> Policy {
    let mut p = workload::empty_policy();
    let Some(set) = set else { return p };
    let (mode, action, bound) = match kind {
        PolicyKind::Nxdomain => (DnsMode::Blocklist, DnsAction::Nxdomain, None),
        PolicyKind::Allowlist => (DnsMode::Allowlist, DnsAction::Drop, Some(MAX_ENTROPY_BITS)),
        _ => (DnsMode::Blocklist, DnsAction::Drop, None),
    };
    p.dns = Dns {
        rate_prefix: Default::default(),
        capacity_names: 0,
        bind: None,
        dga: None,
        cache: None,
        events: palisade::policy::model::DnsEvents::EVERY_QUERY,
        ports: vec![53],
        answers: AnswerBudget::UNLIMITED,
        ingress: Some(DnsScope {
            mode,
            action,
            audit: false,
            lists: vec![0],
            block_malformed: mode == DnsMode::Allowlist,
            rate: None,
            log_allowed: false,
        }),
        egress: None,
        lists: vec![NameList {
            name: "bench".into(),
            entries: set.entries(bound),
        }],
    };
    p
}

/// Installing one DNS policy.
#[derive(Debug, Clone, Serialize)]
pub struct DnsInstall {
    pub policy: PolicyKind,
    pub names: usize,
    /// Keys written to DNS_NAMES.
    pub name_keys: usize,
    /// The DNS compiler alone (model to map contents, hashing every name).
    pub compile_ms: f64,
    /// The whole first install into a fresh object (both compilers, map writes, swap): the
    /// median of [`INSTALL_RUNS`], each into an object of its own.
    pub install_ms: f64,
    /// Every first install's time, the first one's first.
    pub install_runs_ms: Vec<f64>,
    /// A reload of the same policy once both generations hold it (what a daemon's reload of
    /// an unchanged policy costs: compile, compare, swap): the median of [`INSTALL_RUNS`].
    pub reload_ms: f64,
    /// Every reload's time.
    pub reload_runs_ms: Vec<f64>,
    /// The DNS_NAMES table of one generation, after the first install.
    pub dns_names_bytes: u64,
    pub maps: Vec<MapMemory>,
}

struct Target<'a> {
    id: String,
    policy: PolicyKind,
    case: Case,
    names: usize,
    bench: &'a Loaded,
    program: &'static str,
    frames: Vec<Vec<u8>>,
    expect: u32,
    /// One run per syscall (the program rewrites the frame).
    once: bool,
    /// Runs per frame (`once`: passes over the frames).
    repeat: u32,
}

impl Target<'_> {
    /// Mean kernel ns per run, checking every verdict.
    fn measure(&self, repeat: u32) -> Result<f64> {
        let (mut total, mut runs) = (0.0, 0.0);
        let (passes, per) = if self.once { (repeat, 1) } else { (1, repeat) };
        for _ in 0..passes {
            for (i, f) in self.frames.iter().enumerate() {
                let out = self.bench.run_prog(self.program, f, per)?;
                if out.action != self.expect {
                    bail!(
                        "{}: query {i} got XDP action {}, expected {}",
                        self.id,
                        out.action,
                        self.expect
                    );
                }
                total += out.duration.as_nanos() as f64;
                runs += 1.0;
            }
        }
        Ok(total / runs)
    }

    fn calibrate(&mut self, target_ms: f64) -> Result<()> {
        if self.once {
            // Syscalls dominate: size from the wall clock.
            let t = Instant::now();
            self.measure(20)?;
            let per_pass = t.elapsed().as_secs_f64() * 1e3 / 20.0;
            self.repeat = ((target_ms / per_pass).round() as u32).clamp(5, 20_000);
        } else {
            let ns = self.measure(2000)?;
            let want = target_ms * 1e6 / (ns.max(1.0) * self.frames.len() as f64);
            self.repeat = ((want / 1000.0).round() as u32).clamp(1, 5000) * 1000;
        }
        Ok(())
    }
}

#[derive(Debug, Serialize)]
pub struct DnsConfig {
    pub id: String,
    pub policy: PolicyKind,
    pub case: Case,
    pub names: usize,
    pub xdp_action: u32,
    /// Measured one run per syscall rather than with `repeat`.
    pub one_run_per_syscall: bool,
    pub repeat: u32,
    pub ns_per_query: Spread,
    pub above_floor_ns: Spread,
    /// Cost above the firewall-only path (the firewall with no DNS policy, measured in the
    /// same rounds): what the DNS inspection adds. None for the floor and that path itself.
    pub above_firewall_ns: Option<Spread>,
    /// `above_firewall_ns` as a multiple of the firewall-only path's own cost above the
    /// floor, round by round: a ratio that carries over between machines.
    pub firewall_ratio: Option<Spread>,
    pub per_round_ns: Vec<f64>,
}

/// The inspection-cost goals, ns above the firewall-only path on the reference machine for
/// names of up to 4 labels and 64 bytes, and the firewall-only path's cost there (what the
/// goals are scaled by to compare across machines, as ratios).
const GOALS: [(PolicyKind, Case, f64); 3] = [
    (PolicyKind::Nxdomain, Case::Miss, 80.0),
    (PolicyKind::Drop, Case::ExactHit, 120.0),
    (PolicyKind::Nxdomain, Case::ExactHit, 250.0),
];
const REFERENCE_FIREWALL_NS: f64 = 35.7;

#[derive(Debug, Serialize)]
pub struct SeriesSlope {
    pub policy: PolicyKind,
    pub case: Case,
    pub loglog_slope: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct DnsReport {
    pub suite: &'static str,
    pub mode: String,
    pub generated_at: String,
    pub command: String,
    pub wall_seconds: f64,
    pub machine: inspect::Machine,
    pub conditions: inspect::Conditions,
    pub rounds: usize,
    pub queries_per_config: usize,
    pub target_ms_per_measurement: f64,
    pub seed: u64,
    pub max_entropy_bits: u32,
    /// The verdict `BPF_PROG_TEST_RUN` returns for an NXDOMAIN hit run with `repeat` (the last
    /// run's, on the answer the first run wrote).
    pub nxdomain_with_repeat_returns: Option<u32>,
    pub configs: Vec<DnsConfig>,
    pub slopes: Vec<SeriesSlope>,
    pub installs: Vec<DnsInstall>,
    pub verifier: Vec<ProgramReport>,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The longest wait for a quiet machine before a timed install (`inspect::settle`); quick
/// runs do not wait.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// First installs and reloads timed per policy: one time taken alone moves by a tenth or
/// more on a busy machine.
pub const INSTALL_RUNS: usize = 3;
// The report's text gives the count in words.
const _: () = assert!(INSTALL_RUNS == 3);

/// The median of `runs` (not empty).
fn median_of(runs: &[f64]) -> f64 {
    let mut v = runs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `median [min–max]` of `runs`, in whole milliseconds.
fn runs_cell(median: f64, runs: &[f64]) -> String {
    let min = runs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{median:.0} [{min:.0}–{max:.0}]")
}

fn install(
    bench: &mut Loaded,
    kind: PolicyKind,
    names: usize,
    p: &Policy,
    settle: std::time::Duration,
) -> Result<DnsInstall> {
    let key = apply::hash_key(&mut bench.ebpf)?;
    let t = Instant::now();
    let compiled = dns_compile::compile(p, &key, &Clock::now()).context("compiling DNS")?;
    let compile_ms = ms_since(t);
    let name_keys = compiled.names.len();
    drop(compiled);
    // Every timed install starts on a quiet machine: not while the kernel still frees the
    // tables of an object dropped before it.
    let quiet = || inspect::settle(settle, "timing the install");
    quiet();
    let t = Instant::now();
    bench.install(p).context("installing")?;
    let mut install_runs_ms = vec![ms_since(t)];
    let maps = inspect::maps_of(&bench.ebpf, DNS_INGRESS)?;
    // More first installs, each into an object of its own (only the programs the
    // measurements need are verified), dropped after.
    for _ in 1..INSTALL_RUNS {
        let mut fresh = Loaded::new(false).context("loading another kernel object")?;
        quiet();
        let t = Instant::now();
        fresh.install(p).context("installing")?;
        install_runs_ms.push(ms_since(t));
    }
    // Fill the other generation, then time more installs: each writes into a generation
    // that holds the policy already.
    bench.install(p).context("installing again")?;
    let mut reload_runs_ms = Vec::with_capacity(INSTALL_RUNS);
    for _ in 0..INSTALL_RUNS {
        quiet();
        let t = Instant::now();
        bench.install(p).context("reloading")?;
        reload_runs_ms.push(ms_since(t));
    }
    Ok(DnsInstall {
        policy: kind,
        names,
        name_keys,
        compile_ms,
        install_ms: median_of(&install_runs_ms),
        install_runs_ms,
        reload_ms: median_of(&reload_runs_ms),
        reload_runs_ms,
        dns_names_bytes: maps.get("DNS_NAMES").map_or(0, |m| m.memlock_bytes),
        maps: maps.into_values().collect(),
    })
}

/// Runs the DNS suite and writes `dns-<mode>.{md,json,svg}`. Exit status 2 when a program is
/// over the verifier budget.
///
/// # Errors
/// When the object cannot be loaded, a policy installed or a measurement taken.
pub fn run(s: &Settings, command: String) -> Result<bool> {
    let started = Instant::now();
    let load_start = inspect::loadavg();
    let mut rng = Rng::new(s.seed ^ 0xd115);
    let settle = if s.mode == "quick" {
        std::time::Duration::ZERO
    } else {
        SETTLE_LIMIT
    };
    if s.dns_sizes.is_empty() {
        return Ok(true);
    }
    let mut pin = match netns::DispatcherPin::new() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("palisade-bench: warning: cannot keep programs attached ({e:#})");
            None
        }
    };
    eprintln!(
        "palisade-bench ({} mode): DNS suite, lists of {:?} names",
        s.mode, s.dns_sizes
    );

    // (policy, names, cases, loaded object)
    struct Bench {
        kind: PolicyKind,
        names: usize,
        cases: Vec<(Case, Vec<Vec<u8>>)>,
        loaded: Loaded,
    }
    let mut benches: Vec<Bench> = Vec::new();
    let mut installs = Vec::new();
    let mut load = |kind: PolicyKind,
                    names: usize,
                    p: &Policy,
                    cases: Vec<(Case, Vec<Vec<u8>>)>,
                    benches: &mut Vec<Bench>|
     -> Result<Option<DnsInstall>> {
        let t = Instant::now();
        let mut loaded = Loaded::new(true).context("loading the kernel object")?;
        if let Some(f) = loaded.failures.iter().find(|f| f.program == DNS_INGRESS) {
            bail!("{DNS_INGRESS} failed to load: {}", f.summary);
        }
        let i = if kind == PolicyKind::NoDns {
            loaded.install(p)?;
            None
        } else {
            Some(crate::inspect::on_all_cpus(|| {
                install(&mut loaded, kind, names, p, settle)
            })?)
        };
        if let Some(pin) = pin.as_mut() {
            let progs: &[&str] = if benches.is_empty() {
                &[FIREWALL, FLOOR_PASS]
            } else {
                &[FIREWALL]
            };
            for name in progs {
                pin.pin(loaded.xdp_mut(name)?)
                    .with_context(|| format!("attaching {name}"))?;
            }
        }
        eprintln!(
            "  {:<28} {:>5} names: {}(load+install {:.1} s)",
            kind.name(),
            short_count(names),
            i.as_ref().map_or_else(String::new, |i| format!(
                "{} keys, compile {:.0} ms, install {:.0} ms, reload {:.0} ms, DNS_NAMES {:.1} MiB ",
                i.name_keys,
                i.compile_ms,
                i.install_ms,
                i.reload_ms,
                i.dns_names_bytes as f64 / 1048576.0
            )),
            t.elapsed().as_secs_f64()
        );
        benches.push(Bench {
            kind,
            names,
            cases,
            loaded,
        });
        Ok(i)
    };

    // The baseline: the firewall passes the same queries without a DNS policy.
    {
        let set = NameSet::generate(QUERIES, &mut rng);
        let frames = queries(Case::Miss, &set, &mut rng)?
            .iter()
            .enumerate()
            .map(|(i, n)| frame(n, i, &mut rng))
            .collect();
        load(
            PolicyKind::NoDns,
            0,
            &policy(PolicyKind::NoDns, None),
            vec![(Case::Miss, frames)],
            &mut benches,
        )?;
    }
    for &n in &s.dns_sizes {
        let n = n.max(2 * QUERIES);
        let set = NameSet::generate(n, &mut rng);
        for kind in [
            PolicyKind::Nxdomain,
            PolicyKind::Drop,
            PolicyKind::Allowlist,
        ] {
            let cases: &[Case] = match kind {
                PolicyKind::Nxdomain => &[Case::ExactHit, Case::WildcardHit, Case::Miss],
                PolicyKind::Drop => &[Case::ExactHit, Case::WildcardHit],
                _ => &[
                    Case::ExactHit,
                    Case::LowEntropy,
                    Case::HighEntropy,
                    Case::Miss,
                ],
            };
            let mut built = Vec::new();
            for &c in cases {
                let frames = queries(c, &set, &mut rng)?
                    .iter()
                    .enumerate()
                    .map(|(i, q)| frame(q, i, &mut rng))
                    .collect();
                built.push((c, frames));
            }
            let p = policy(kind, Some(&set));
            if let Some(i) = load(kind, n, &p, built, &mut benches)? {
                installs.push(i);
            }
        }
    }

    let verifier = [FIREWALL, DNS_INGRESS, DNS_EGRESS]
        .iter()
        .map(|p| {
            inspect::program(
                &benches[0].loaded.ebpf,
                p,
                &benches[0].loaded.failures,
                s.verifier_budget,
            )
        })
        .collect::<Result<Vec<_>>>()?;

    // What repeat does to an NXDOMAIN hit: the answer is run again.
    let nxdomain_with_repeat_returns = benches
        .iter()
        .find(|b| b.kind == PolicyKind::Nxdomain)
        .and_then(|b| b.cases.first().map(|c| (b, c)))
        .map(|(b, (_, frames))| {
            b.loaded
                .run_prog(FIREWALL, &frames[0], 100)
                .map(|o| o.action)
        })
        .transpose()?;

    let floor_frames = benches[0].cases[0].1.clone();
    let mut targets = Vec::new();
    for once in [false, true] {
        targets.push(Target {
            id: if once {
                "floor-once".into()
            } else {
                "floor".into()
            },
            policy: PolicyKind::Floor,
            case: Case::Floor,
            names: 0,
            bench: &benches[0].loaded,
            program: FLOOR_PASS,
            frames: floor_frames.clone(),
            expect: XDP_PASS,
            once,
            repeat: 0,
        });
    }
    for b in &benches {
        for (case, frames) in &b.cases {
            let expect = expected(b.kind, *case);
            targets.push(Target {
                id: format!("{:?}-{:?}-{}", b.kind, case, short_count(b.names)).to_lowercase(),
                policy: b.kind,
                case: *case,
                names: b.names,
                bench: &b.loaded,
                program: FIREWALL,
                frames: frames.clone(),
                expect,
                once: expect == XDP_TX,
                repeat: 0,
            });
        }
    }
    // The rounds start once the kernel has freed the objects the installs dropped: its
    // workers would share the CPUs and caches with the first measurements.
    inspect::settle(settle, "measuring");
    eprintln!("calibrating (target {:.0} ms per measurement)", s.target_ms);
    for t in &mut targets {
        t.calibrate(s.target_ms).with_context(|| t.id.clone())?;
    }
    eprintln!(
        "measuring: {} rounds of {} configurations",
        s.rounds,
        targets.len()
    );
    let mut samples: Vec<Vec<f64>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..s.rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        rng.shuffle(&mut order);
        for &i in &order {
            let v = targets[i].measure(targets[i].repeat)?;
            samples[i].push(v);
        }
        eprintln!("  round {} done", round + 1);
    }
    // The firewall-only path, above its floor, round by round.
    let firewall: Option<Vec<f64>> = targets
        .iter()
        .position(|t| t.policy == PolicyKind::NoDns)
        .map(|i| {
            samples[i]
                .iter()
                .zip(&samples[0])
                .map(|(k, f)| k - f)
                .collect()
        });
    let configs: Vec<DnsConfig> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let floor = &samples[usize::from(t.once)];
            let above: Vec<f64> = samples[i].iter().zip(floor).map(|(k, f)| k - f).collect();
            let inspected = !matches!(t.policy, PolicyKind::Floor | PolicyKind::NoDns);
            let over_firewall: Option<Vec<f64>> = firewall
                .as_ref()
                .filter(|_| inspected)
                .map(|fw| above.iter().zip(fw).map(|(a, f)| a - f).collect());
            let ratio = over_firewall
                .as_ref()
                .zip(firewall.as_ref())
                .map(|(o, fw)| {
                    o.iter()
                        .zip(fw)
                        .map(|(o, f)| if *f > 0.0 { o / f } else { f64::NAN })
                        .collect::<Vec<f64>>()
                });
            DnsConfig {
                id: t.id.clone(),
                policy: t.policy,
                case: t.case,
                names: t.names,
                xdp_action: t.expect,
                one_run_per_syscall: t.once,
                repeat: t.repeat,
                ns_per_query: Spread::of(&samples[i]),
                above_floor_ns: Spread::of(&above),
                above_firewall_ns: over_firewall.as_deref().map(Spread::of),
                firewall_ratio: ratio.as_deref().map(Spread::of),
                per_round_ns: samples[i].clone(),
            }
        })
        .collect();
    let mut slopes = Vec::new();
    for (p, c) in series_keys(&configs) {
        let pts: Vec<(f64, f64)> = configs
            .iter()
            .filter(|x| x.policy == p && x.case == c && x.names > 0)
            .map(|x| (x.names as f64, x.above_floor_ns.median))
            .collect();
        slopes.push(SeriesSlope {
            policy: p,
            case: c,
            loglog_slope: loglog_slope(&pts),
        });
    }
    let within = verifier.iter().all(|v| v.within_budget);
    let report = DnsReport {
        suite: "dns",
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
        rounds: s.rounds,
        queries_per_config: QUERIES,
        target_ms_per_measurement: s.target_ms,
        seed: s.seed,
        max_entropy_bits: MAX_ENTROPY_BITS,
        nxdomain_with_repeat_returns,
        configs,
        slopes,
        installs,
        verifier,
    };
    let stem = format!("dns-{}", s.mode);
    report.write(&s.out, &stem)?;
    println!("{}", report.terminal());
    println!(
        "wrote {}/{stem}.{{md,json,svg}} in {:.1} s",
        s.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(within)
}

fn series_keys(configs: &[DnsConfig]) -> Vec<(PolicyKind, Case)> {
    let mut keys: Vec<(PolicyKind, Case)> = Vec::new();
    for c in configs.iter().filter(|c| c.names > 0) {
        if !keys.contains(&(c.policy, c.case)) {
            keys.push((c.policy, c.case));
        }
    }
    keys
}

fn verdict(a: u32) -> &'static str {
    match a {
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        XDP_TX => "tx (NXDOMAIN)",
        _ => "?",
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1_048_576.0)
}

fn cell(s: &Spread) -> String {
    format!("{:.1} [{:.1}–{:.1}]", s.median, s.min, s.max)
}

impl DnsReport {
    fn sizes(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .configs
            .iter()
            .map(|c| c.names)
            .filter(|&n| n > 0)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn slope(&self, p: PolicyKind, c: Case) -> Option<f64> {
        self.slopes
            .iter()
            .find(|s| s.policy == p && s.case == c)
            .and_then(|s| s.loglog_slope)
    }

    /// Rows: policy and case; columns: list sizes; cells: ns above the floor.
    fn pivot(&self) -> String {
        let sizes = self.sizes();
        let mut t = String::from("| policy | queries | verdict |");
        let mut sep = String::from("|---|---|---|");
        for n in &sizes {
            let _ = write!(t, " {} names |", short_count(*n));
            sep.push_str("---:|");
        }
        t.push_str(" log-log slope |\n");
        sep.push_str("---:|\n");
        t.push_str(&sep);
        if let Some(b) = self.configs.iter().find(|c| c.policy == PolicyKind::NoDns) {
            let _ = write!(
                t,
                "| {} | {} | {} |",
                b.policy.name(),
                b.case.name(),
                verdict(b.xdp_action)
            );
            for _ in &sizes {
                let _ = write!(t, " {} |", cell(&b.above_floor_ns));
            }
            t.push_str(" – |\n");
        }
        for (p, c) in series_keys(&self.configs) {
            let first = self.configs.iter().find(|x| x.policy == p && x.case == c);
            let _ = write!(
                t,
                "| {} | {} | {}{} |",
                p.name(),
                c.name(),
                first.map_or("?", |x| verdict(x.xdp_action)),
                if first.is_some_and(|x| x.one_run_per_syscall) {
                    " ¹"
                } else {
                    ""
                }
            );
            for n in &sizes {
                match self
                    .configs
                    .iter()
                    .find(|x| x.policy == p && x.case == c && x.names == *n)
                {
                    Some(x) => {
                        let _ = write!(t, " {} |", cell(&x.above_floor_ns));
                    }
                    None => t.push_str(" – |"),
                }
            }
            let _ = writeln!(
                t,
                " {} |",
                self.slope(p, c)
                    .map_or_else(|| "–".into(), |s| format!("{s:.3}"))
            );
        }
        t
    }

    /// The inspection's cost above the firewall-only path against the goals, as ns and as
    /// ratios to the firewall-only path (the goals scaled by the reference machine's).
    fn goals_table(&self) -> String {
        let mut t = String::from(
            "| path | names | above the firewall-only path (ns) | ratio to the firewall-only path | goal (ns on the reference machine) | goal as a ratio | met |\n|---|---:|---:|---:|---:|---:|---|\n",
        );
        for (p, c, goal) in GOALS {
            for x in self.configs.iter().filter(|x| x.policy == p && x.case == c) {
                let (Some(ns), Some(r)) = (&x.above_firewall_ns, &x.firewall_ratio) else {
                    continue;
                };
                let goal_ratio = goal / REFERENCE_FIREWALL_NS;
                let _ = writeln!(
                    t,
                    "| {}, {} | {} | {} | {:.2} [{:.2}–{:.2}] | {goal:.0} | {goal_ratio:.2} | {} |",
                    p.name(),
                    c.name(),
                    short_count(x.names),
                    cell(ns),
                    r.median,
                    r.min,
                    r.max,
                    if r.median <= goal_ratio { "yes" } else { "no" }
                );
            }
        }
        t
    }

    fn full_table(&self) -> String {
        let mut t = String::from(
            "| configuration | names | verdict | repeat | ns/query | above floor (ns) |\n|---|---:|---|---:|---:|---:|\n",
        );
        for c in &self.configs {
            let _ = writeln!(
                t,
                "| {}, {} | {} | {} | {}{} | {} | {} |",
                c.policy.name(),
                c.case.name(),
                c.names,
                verdict(c.xdp_action),
                c.repeat,
                if c.one_run_per_syscall {
                    " passes, 1 run/syscall"
                } else {
                    ""
                },
                cell(&c.ns_per_query),
                cell(&c.above_floor_ns)
            );
        }
        t
    }

    fn install_table(&self) -> String {
        let mut t = String::from(
            "| policy | names | DNS_NAMES keys | DNS compile (ms) | install (ms) | reload (ms) | DNS_NAMES (MiB) | all DNS maps (MiB) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for i in &self.installs {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} |",
                i.policy.name(),
                short_count(i.names),
                i.name_keys,
                i.compile_ms,
                runs_cell(i.install_ms, &i.install_runs_ms),
                runs_cell(i.reload_ms, &i.reload_runs_ms),
                mib(i.dns_names_bytes),
                mib(i.maps.iter().map(|m| m.memlock_bytes).sum())
            );
        }
        t
    }

    fn verifier_table(&self) -> String {
        let mut t = String::from(
            "| program | verified instructions | % of the 1M limit | within budget |\n|---|---:|---:|---|\n",
        );
        for p in &self.verifier {
            let _ = writeln!(
                t,
                "| `{}` | {} | {} | {} |",
                p.program,
                p.verified_insns
                    .map_or_else(|| "n/a".into(), |v| v.to_string()),
                p.verified_insns.map_or_else(
                    || "n/a".into(),
                    |v| format!("{:.2} %", f64::from(v) * 100.0 / f64::from(VERIFIER_LIMIT))
                ),
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

    fn chart(&self) -> Chart<'_> {
        const COLORS: [&str; 9] = [
            "#1f6fb4", "#d9641e", "#2a9d4b", "#c0392b", "#8e44ad", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22",
        ];
        let series = series_keys(&self.configs)
            .into_iter()
            .enumerate()
            .map(|(k, (p, c))| Series {
                label: format!("{}: {}", p.name(), c.name()),
                color: COLORS[k % COLORS.len()],
                points: self
                    .configs
                    .iter()
                    .filter(|x| x.policy == p && x.case == c && x.names > 0)
                    .map(|x| Point {
                        x: x.names as f64,
                        y: x.above_floor_ns.median,
                        lo: x.above_floor_ns.min,
                        hi: x.above_floor_ns.max,
                        note: None,
                    })
                    .collect(),
            })
            .collect();
        let mut references = Vec::new();
        if let Some(b) = self.configs.iter().find(|c| c.policy == PolicyKind::NoDns) {
            references.push(Reference {
                label: format!(
                    "firewall, no DNS policy ({:.1} ns)",
                    b.above_floor_ns.median
                ),
                color: "#555555",
                y: b.above_floor_ns.median,
            });
        }
        Chart {
            title: "DNS inspection: cost per query above an empty XDP program (BPF_PROG_TEST_RUN)",
            x_label: "names in the list — log scale",
            y_label: "ns per query above the floor (median, min–max)",
            series,
            references,
            log_y: false,
        }
    }

    fn markdown(&self, svg: &str) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "# Palisade DNS inspection cost per query ({} mode)\n",
            self.mode
        );
        let _ = writeln!(
            m,
            "Generated {} by `{}` in {:.0} s. Machine and method: [../README.md](../README.md#method-the-dns-suite).\n",
            self.generated_at, self.command, self.wall_seconds
        );
        let mc = &self.machine;
        let _ = writeln!(
            m,
            "Machine: {} CPUs ({}{}), kernel {}, JIT {}. Load average {:.2} at the start, {:.2} at the end.\n",
            mc.cpus,
            mc.cpu_model,
            if mc.virtualized { ", virtualized" } else { "" },
            mc.kernel,
            mc.bpf_jit_enable,
            self.conditions.loadavg_start,
            self.conditions.loadavg_end
        );
        let _ = writeln!(
            m,
            "UDP queries (type A) to port 53 run through `palisade_firewall` (default allow, no \
             rules), which tail-calls `palisade_dns_ingress`. Each configuration is {} different \
             queries; lists are half exact names, half `*.suffix` wildcards; hits are spread over \
             the whole list. {} rounds, each configuration once per round in a shuffled order; \
             the cost above the floor is against the empty XDP program measured the same way in \
             the same round. Cells are **ns per query above the floor, median [min–max] over \
             rounds**. The allowlist's entries allow at most {} bits of entropy in all \
             the labels below the match.\n",
            self.queries_per_config, self.rounds, self.max_entropy_bits
        );
        m.push_str("## Cost per query against list size\n\n");
        m.push_str(&self.pivot());
        let _ = writeln!(
            m,
            "\n¹ NXDOMAIN answers are written over the query, and `BPF_PROG_TEST_RUN` with `repeat` \
             runs the program again on that answer (here the last run returned XDP action {}). \
             These rows are measured one run per syscall, against the empty program measured the \
             same way; the timer's own overhead cancels in the difference but adds noise.\n",
            self.nxdomain_with_repeat_returns
                .map_or_else(|| "?".into(), |a| format!("{a}, {}", verdict(a)))
        );
        let _ = writeln!(m, "![cost per query against list size]({svg})\n");
        m.push_str(
            "A log-log slope of 1 would be cost growing linearly with the list, 0 a flat cost: \
             lookups are hashes of the name and of each of its suffixes, not a scan of the list.\n\n",
        );
        m.push_str("## Against the firewall-only path and the goals\n\n");
        let _ = writeln!(
            m,
            "What the DNS inspection adds: each configuration's cost above the floor minus the \
             firewall-only path's (the firewall without a DNS policy), round by round, and that \
             as a ratio to the firewall-only path's own cost above the floor. The goals are ns \
             on the reference machine, whose firewall-only path costs {REFERENCE_FIREWALL_NS} ns; \
             their ratios are what carries over to another machine or load. The goals are for \
             names of up to 4 labels and 64 bytes; these queries are 2 to 4 labels of up to 12 \
             characters (exact hits and misses, all within).\n"
        );
        m.push_str(&self.goals_table());
        m.push_str("\n## Every configuration\n\n");
        m.push_str(&self.full_table());
        m.push_str("\n## Install time and map memory\n\n");
        m.push_str(
            "`DNS compile`: the DNS compiler alone (hashing every name into its map key). \
             `install`: the whole first install into a freshly loaded object (both compilers, \
             map writes, generation swap), run on every CPU as the daemon runs it. `reload`: \
             the same policy installed once both generations hold it (compile, compare what \
             the idle generation holds, swap), what a reload of an unchanged policy costs. \
             Both are timed 3 times (each first install into an object of its own): median \
             [min–max]. \
             Memory is the kernel's `memlock` from each map's \
             fdinfo after the first install (one generation); DNS_NAMES is a hash map without \
             preallocation, charged per entry.\n\n",
        );
        m.push_str(&self.install_table());
        m.push_str("\n## Verifier\n\n");
        m.push_str(&self.verifier_table());
        m.push_str("\n## Raw data\n\nEvery round of every configuration and the per-map memory are in the JSON file next to this one.\n");
        m
    }

    fn write(&self, dir: &Path, stem: &str) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let svg = format!("{stem}.svg");
        for (name, text) in [
            (format!("{stem}.md"), self.markdown(&svg)),
            (
                format!("{stem}.json"),
                serde_json::to_string_pretty(self)? + "\n",
            ),
            (svg.clone(), self.chart().svg()),
        ] {
            let path = dir.join(&name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    fn terminal(&self) -> String {
        let mut s = String::from("DNS: ns per query above the floor, median [min-max]\n");
        s.push_str(&self.pivot().replace('–', "-"));
        s.push_str("DNS: against the firewall-only path and the goals\n");
        s.push_str(&self.goals_table().replace('–', "-"));
        for i in &self.installs {
            let _ = writeln!(
                s,
                "install: {:<28} {:>5} names: {:.0} ms, reload {:.0} ms, DNS_NAMES {} MiB",
                i.policy.name(),
                short_count(i.names),
                i.install_ms,
                i.reload_ms,
                mib(i.dns_names_bytes)
            );
        }
        for p in &self.verifier {
            let _ = writeln!(
                s,
                "verifier: {:<24} {:>8} instructions processed",
                p.program,
                p.verified_insns
                    .map_or_else(|| "n/a".into(), |v| v.to_string())
            );
        }
        s
    }
}
