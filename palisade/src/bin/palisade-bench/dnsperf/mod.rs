//! The dnsperf suite: what it costs to refuse blocked names, Palisade's DNS inspector in XDP
//! against the resolvers people use for blocking (unbound with local zones, dnsmasq with
//! `address=/name/`), all holding the same list, under dnsperf.
//!
//! Two ways to refuse a name. *NXDOMAIN*: Palisade answers from XDP (`XDP_TX`), unbound with
//! `always_nxdomain` zones, dnsmasq with `address=/name/`; dnsperf runs flat out and the cost
//! is the CPU time per answered query. *Drop*: Palisade with the `drop` action, unbound with
//! `deny` zones, and as the floor an XDP program that drops every frame without looking;
//! nothing comes back, so dnsperf sends at a fixed rate and the cost is the CPU time per
//! query sent (see [`measure`]). dnsmasq cannot drop.
//!
//! Every server blocks each listed name and every name below it, and gets two query sets:
//! every listed name (*exact*) and every listed name under a random extra label
//! (*subdomain*). Per list size each server is set up once, in a pair of namespaces of its
//! own, and kept running; then each round runs every configuration (server × query set) once,
//! in an order shuffled anew, so that drift on a shared machine spreads over all of them.

mod events;
pub(crate) mod measure;
mod report;
mod setup;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

pub use self::report::DnsperfReport;
use self::{
    measure::{DropRun, Run},
    report::{NotMeasured, ServerInfo},
    setup::{Running, Start},
};
use crate::{harness::Loaded, inspect, rng::Rng, utc_now};

/// Top-level domains of the generated names.
const TLDS: [&str; 8] = ["com", "net", "org", "io", "de", "ru", "info", "xyz"];

/// Mixed into the seed for the round orders, so that they do not follow the names' stream.
const ORDER_SEED: u64 = 0x6f72_6465_7273;

pub struct DnsperfSettings {
    pub mode: &'static str,
    pub sizes: Vec<usize>,
    /// Length of an NXDOMAIN run, and of the measured window of a drop run.
    pub seconds: u64,
    /// Rounds per list size; each runs every configuration once.
    pub rounds: usize,
    /// The fixed rate of the drop runs, queries per second.
    pub drop_rate: u32,
    /// How long a server may take to start serving its list.
    pub load_timeout: Duration,
    /// dnsperf's clients (sockets).
    pub clients: usize,
    pub seed: u64,
    pub out: PathBuf,
}

/// One server set-up. Each runs in its own pair of namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Server {
    /// Palisade's DNS inspector answering NXDOMAIN (`XDP_TX`), unbound behind it.
    PalisadeNxdomain,
    UnboundNxdomain,
    Dnsmasq,
    /// An XDP program that drops every frame without looking: the client and the veth.
    FloorDrop,
    /// Palisade's DNS inspector dropping listed names, unbound behind it.
    PalisadeDrop,
    UnboundDeny,
}

impl Server {
    /// Every server, in report order.
    pub const ALL: [Self; 6] = [
        Self::PalisadeNxdomain,
        Self::UnboundNxdomain,
        Self::Dnsmasq,
        Self::FloorDrop,
        Self::PalisadeDrop,
        Self::UnboundDeny,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::PalisadeNxdomain => "Palisade XDP (NXDOMAIN), unbound behind",
            Self::UnboundNxdomain => "unbound, local-zone always_nxdomain",
            Self::Dnsmasq => "dnsmasq, address=/name/",
            Self::FloorDrop => "XDP_DROP floor (drops every frame)",
            Self::PalisadeDrop => "Palisade XDP (drop), unbound behind",
            Self::UnboundDeny => "unbound, local-zone deny",
        }
    }

    /// A short name for namespaces, directories and configuration ids.
    pub const fn slug(self) -> &'static str {
        match self {
            Self::PalisadeNxdomain => "pal-nx",
            Self::UnboundNxdomain => "unbound-nx",
            Self::Dnsmasq => "dnsmasq",
            Self::FloorDrop => "floor",
            Self::PalisadeDrop => "pal-drop",
            Self::UnboundDeny => "unbound-deny",
        }
    }

    /// Whether the server drops listed names (measured at a fixed rate) rather than
    /// answering them.
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Self::FloorDrop | Self::PalisadeDrop | Self::UnboundDeny
        )
    }
}

/// Which names the queries ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuerySet {
    /// Every listed name.
    Exact,
    /// Every listed name under a random extra label.
    Subdomain,
}

impl QuerySet {
    pub const ALL: [Self; 2] = [Self::Exact, Self::Subdomain];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Subdomain => "subdomain",
        }
    }
}

/// A server and the query set sent to it.
#[derive(Debug, Clone, Copy)]
struct Config {
    /// Index into the running servers.
    running: usize,
    server: Server,
    set: QuerySet,
}

impl Config {
    fn id(self) -> String {
        format!("{}/{}", self.server.slug(), self.set.name())
    }
}

/// One round of one configuration.
#[derive(Debug, Clone)]
enum Measured {
    Nxdomain(Run),
    Drop(DropRun),
}

/// Every round of one configuration that was measured.
#[derive(Debug)]
struct ConfigRuns {
    server: Server,
    set: QuerySet,
    /// `(round, what it measured)`, rounds from 0.
    rounds: Vec<(usize, Measured)>,
}

// ---------------------------------------------------------------------------------------------
// Names, queries

fn random_label(rng: &mut Rng) -> String {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let len = 3 + rng.below(10) as usize;
    (0..len)
        .map(|_| {
            let i = if rng.chance(90) {
                rng.below(26)
            } else {
                rng.below(36)
            };
            ALNUM[i as usize] as char
        })
        .collect()
}

/// `n` distinct random names: 1 to 3 labels of 3 to 12 characters and a TLD.
fn names(n: usize, rng: &mut Rng) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let labels = 1 + rng.below(3) as usize;
        let mut name: Vec<String> = (0..labels).map(|_| random_label(rng)).collect();
        name.push(TLDS[rng.below(TLDS.len() as u64) as usize].to_string());
        let name = name.join(".");
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    out
}

/// The names a query set asks for, in the order dnsperf sends them: every listed name once,
/// as it is (exact) or under one random extra label (subdomain: `k3j9.<name>`), shuffled so
/// that consecutive queries do not walk the list in the order it was loaded.
fn query_names(list: &[String], set: QuerySet, rng: &mut Rng) -> Vec<String> {
    let mut q: Vec<String> = match set {
        QuerySet::Exact => list.to_vec(),
        QuerySet::Subdomain => list
            .iter()
            .map(|n| format!("{}.{n}", random_label(rng)))
            .collect(),
    };
    rng.shuffle(&mut q);
    q
}

/// A dnsperf query file: one `<name> A` line per name.
fn query_file(names: &[String]) -> String {
    let mut f = String::with_capacity(names.iter().map(|n| n.len() + 3).sum());
    for n in names {
        let _ = writeln!(f, "{n} A");
    }
    f
}

// ---------------------------------------------------------------------------------------------
// The suite

/// Runs the suite.
///
/// # Errors
/// When a tool is missing, the namespaces cannot be set up or a server fails to start.
pub fn run(s: &DnsperfSettings, command: String) -> Result<DnsperfReport> {
    for tool in ["dnsperf", "unbound", "dnsmasq"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            bail!("{tool} not found (apt-get install dnsperf unbound dnsmasq)");
        }
    }
    let dir = std::env::temp_dir().join(format!("palisade-dnsperf-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let result = run_in(s, command, &dir);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn run_in(s: &DnsperfSettings, command: String, dir: &Path) -> Result<DnsperfReport> {
    let started = Instant::now();
    let loadavg_start = inspect::loadavg();
    // Idle baseline: what the machine burns with nothing of ours running.
    let idle_rate = measure::idle_rate(Duration::from_secs(2))?;
    eprintln!("  idle baseline: {:.1} % of one CPU", idle_rate * 100.0);

    let mut rng = Rng::new(s.seed);
    let mut order_rng = Rng::new(s.seed ^ ORDER_SEED);
    let mut not_measured = vec![NotMeasured {
        what: "dnsmasq, drop".into(),
        why: "dnsmasq has no action that drops a query: `address=/name/` answers NXDOMAIN, \
              `address=/name/#` answers 0.0.0.0"
            .into(),
    }];
    let mut sizes = Vec::new();
    for &n in &s.sizes {
        let cx = SizeContext {
            s,
            n,
            dir,
            idle_rate,
        };
        sizes.push(cx.run(&mut rng, &mut order_rng, &mut not_measured)?);
    }
    Ok(DnsperfReport {
        suite: "dnsperf",
        mode: s.mode,
        command,
        date: utc_now(),
        machine: inspect::machine(None),
        dnsperf_version: version("dnsperf", "-V"),
        unbound_version: version("unbound", "-V"),
        dnsmasq_version: version("dnsmasq", "--version"),
        seconds_per_run: s.seconds,
        rounds: s.rounds,
        clients: s.clients,
        seed: s.seed,
        drop_rate_qps: s.drop_rate,
        drop_timeout_s: measure::DROP_TIMEOUT_S,
        drop_max_outstanding: measure::drop_outstanding(s.drop_rate),
        idle_baseline_cpu_fraction: idle_rate,
        loadavg_start,
        loadavg_end: inspect::loadavg(),
        wall_seconds: started.elapsed().as_secs_f64(),
        sizes,
        not_measured,
    })
}

/// Everything set up for one list size. Fields drop in order, on every path: the floor
/// programs, then each server (its programs, its processes, its namespaces), so that programs
/// are detached before the namespaces they are attached in go.
struct Stage {
    /// The floor programs on the pairs' veth ends.
    base: Loaded,
    running: Vec<Running>,
}

/// What the runs of one list size share.
struct SizeContext<'a> {
    s: &'a DnsperfSettings,
    n: usize,
    dir: &'a Path,
    idle_rate: f64,
}

impl SizeContext<'_> {
    /// Sets up every server with a list of `n` names, runs the rounds and takes everything
    /// down again.
    fn run(
        &self,
        rng: &mut Rng,
        order_rng: &mut Rng,
        not_measured: &mut Vec<NotMeasured>,
    ) -> Result<report::SizeResult> {
        let (s, n) = (self.s, self.n);
        let list = names(n, rng);
        let mut files: Vec<(QuerySet, PathBuf)> = Vec::new();
        for set in QuerySet::ALL {
            let path = self.dir.join(format!("queries-{n}-{}.txt", set.name()));
            fs::write(&path, query_file(&query_names(&list, set, rng)))?;
            files.push((set, path));
        }
        let server_dir = self.dir.join(n.to_string());

        let mut stage = Stage {
            base: Loaded::new(false).context("loading the kernel object")?,
            running: Vec::new(),
        };
        for (slot, server) in Server::ALL.into_iter().enumerate() {
            let what = format!("{} with {n} names", server.label());
            match setup::start(
                server,
                slot,
                &list,
                &mut stage.base,
                &server_dir,
                s.load_timeout,
            )
            .with_context(|| format!("setting up {what}"))?
            {
                Start::Up(r) => {
                    eprintln!(
                        "  {:<42} {n:>8} names: ready in {}",
                        server.label(),
                        r.ready_s
                            .map_or_else(|| "–".into(), |t| format!("{t:.1} s"))
                    );
                    stage.running.push(*r);
                }
                Start::Skipped(why) => {
                    eprintln!("  {what}: skipped, {why}");
                    not_measured.push(NotMeasured { what, why });
                }
            }
        }

        let running = &stage.running;
        let configs: Vec<Config> = running
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                QuerySet::ALL.map(|set| Config {
                    running: i,
                    server: r.server,
                    set,
                })
            })
            .collect();
        let mut measured: Vec<Vec<(usize, Measured)>> = configs.iter().map(|_| vec![]).collect();
        let mut failed = vec![false; configs.len()];
        let mut orders = Vec::new();
        for round in 0..s.rounds {
            let mut order: Vec<usize> = (0..configs.len()).collect();
            order_rng.shuffle(&mut order);
            orders.push(order.iter().map(|&i| configs[i].id()).collect());
            for i in order {
                if failed[i] {
                    continue;
                }
                let c = configs[i];
                let file = files
                    .iter()
                    .find_map(|(set, path)| (*set == c.set).then_some(path.as_path()))
                    .context("no query file")?;
                match self.measure(&running[c.running], file) {
                    Ok(m) => {
                        eprintln!("  {n:>8} round {} {:<24} {}", round + 1, c.id(), brief(&m));
                        measured[i].push((round, m));
                    }
                    Err(e) => {
                        eprintln!("  {n:>8} round {} {:<24} FAILED: {e:#}", round + 1, c.id());
                        not_measured.push(NotMeasured {
                            what: format!(
                                "{}, {} queries, {n} names",
                                c.server.label(),
                                c.set.name()
                            ),
                            why: format!("failed in round {}: {e:#}", round + 1),
                        });
                        failed[i] = true;
                    }
                }
            }
        }

        let servers = running
            .iter()
            .map(|r| {
                Ok(ServerInfo {
                    server: r.server,
                    label: r.server.label(),
                    ready_s: r.ready_s,
                    memory: r.memory()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        drop(stage);
        let runs = configs
            .iter()
            .zip(measured)
            .map(|(c, rounds)| ConfigRuns {
                server: c.server,
                set: c.set,
                rounds,
            })
            .collect();
        Ok(report::SizeResult::summarize(n, servers, orders, runs))
    }

    fn measure(&self, r: &Running, queryfile: &Path) -> Result<Measured> {
        if r.server.drops() {
            measure::drop_run(r, queryfile, self.s, self.idle_rate).map(Measured::Drop)
        } else {
            measure::nxdomain_run(r, queryfile, self.s, self.idle_rate).map(Measured::Nxdomain)
        }
    }
}

/// One line of progress for a run.
fn brief(m: &Measured) -> String {
    match m {
        Measured::Nxdomain(r) => format!(
            "{:6.2} µs CPU/query, {:.0} q/s, {}",
            r.accounted_cpu_us_per_query,
            r.qps,
            if r.all_nxdomain {
                "all NXDOMAIN".to_string()
            } else {
                format!("rcodes {:?}", r.rcodes)
            }
        ),
        Measured::Drop(r) => format!(
            "{:6.2} µs CPU/sent query, {:.0} q/s after {:.1} s warm-up, drops {}",
            r.accounted_cpu_us_per_sent,
            r.window_qps,
            r.warmup_s,
            if r.drops_verified {
                "verified"
            } else {
                "NOT verified"
            }
        ),
    }
}

fn version(cmd: &str, arg: &str) -> String {
    std::process::Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .find(|l| l.to_ascii_lowercase().contains("version"))
                .unwrap_or("")
                .split("  ")
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_end_in_a_known_tld() {
        let list = names(500, &mut Rng::new(7));
        let unique: std::collections::HashSet<_> = list.iter().collect();
        assert_eq!(unique.len(), 500);
        assert!(list.iter().all(|n| {
            let labels: Vec<&str> = n.split('.').collect();
            (2..=4).contains(&labels.len()) && TLDS.contains(labels.last().unwrap())
        }));
    }

    #[test]
    fn exact_queries_are_the_list_shuffled() {
        let list = names(200, &mut Rng::new(1));
        let q = query_names(&list, QuerySet::Exact, &mut Rng::new(2));
        assert_ne!(q, list, "not shuffled");
        let (mut a, mut b) = (q.clone(), list.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn subdomain_queries_put_one_label_in_front_of_each_listed_name() {
        let list = names(200, &mut Rng::new(1));
        let q = query_names(&list, QuerySet::Subdomain, &mut Rng::new(2));
        assert_eq!(q.len(), list.len());
        let mut parents: Vec<&str> = q
            .iter()
            .map(|n| {
                let (label, parent) = n.split_once('.').unwrap();
                assert!((3..=12).contains(&label.len()), "{n}");
                assert!(label.bytes().all(|b| b.is_ascii_alphanumeric()), "{n}");
                parent
            })
            .collect();
        parents.sort_unstable();
        let mut listed: Vec<&str> = list.iter().map(String::as_str).collect();
        listed.sort_unstable();
        assert_eq!(parents, listed);
        // Shuffled: not in the list's order.
        assert_ne!(
            q.iter()
                .map(|n| n.split_once('.').unwrap().1)
                .collect::<Vec<_>>(),
            list
        );
    }

    #[test]
    fn the_query_file_has_one_type_a_line_per_name() {
        assert_eq!(
            query_file(&["a.com".into(), "x.b.io".into()]),
            "a.com A\nx.b.io A\n"
        );
    }

    #[test]
    fn only_the_drop_servers_drop() {
        let drops: Vec<Server> = Server::ALL.into_iter().filter(|s| s.drops()).collect();
        assert_eq!(
            drops,
            [Server::FloorDrop, Server::PalisadeDrop, Server::UnboundDeny]
        );
    }
}
