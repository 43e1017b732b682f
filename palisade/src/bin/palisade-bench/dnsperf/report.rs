//! The dnsperf suite's results: summaries over the rounds, and their markdown, JSON and
//! terminal forms.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::Result;
use serde::Serialize;

use super::{
    ConfigRuns, Measured, QuerySet, Server,
    measure::{DropRun, Run},
    setup::Memory,
};
use crate::{inspect, runner::Spread};

/// Something the suite did not measure, and why.
#[derive(Debug, Clone, Serialize)]
pub struct NotMeasured {
    pub what: String,
    pub why: String,
}

/// A server as it was set up for one list size.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub server: Server,
    pub label: &'static str,
    /// From starting the server to it serving the list; `None` for the floor.
    pub ready_s: Option<f64>,
    /// After the last round.
    pub memory: Memory,
}

/// One round's run of a configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Round<T> {
    /// 1-based.
    pub round: usize,
    #[serde(flatten)]
    pub run: T,
}

/// A configuration answering NXDOMAIN, over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct NxResult {
    pub id: String,
    pub server: Server,
    pub label: &'static str,
    pub query_set: QuerySet,
    pub names: usize,
    /// dnsperf + the server's processes + ksoftirqd, per completed query.
    pub cpu_us_per_query: Spread,
    pub dnsperf_us_per_query: Spread,
    pub resolver_us_per_query: Spread,
    pub ksoftirqd_us_per_query: Spread,
    /// The whole machine from `/proc/stat`, less the idle baseline (reference only).
    pub machine_total_us_per_query: Spread,
    pub qps: Spread,
    /// Every answer of every round was NXDOMAIN.
    pub all_nxdomain: bool,
    /// Answers over all rounds, by rcode.
    pub rcodes: Vec<(String, u64)>,
    pub rounds: Vec<Round<Run>>,
}

/// A configuration dropping listed names, over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct DropResult {
    pub id: String,
    pub server: Server,
    pub label: &'static str,
    pub query_set: QuerySet,
    pub names: usize,
    /// dnsperf + the server's processes + ksoftirqd over the window, per query sent.
    pub cpu_us_per_sent: Spread,
    /// The same less the XDP_DROP floor's in the same round and query set: what dropping
    /// costs. `None` for the floor itself, or when the floor was not measured.
    pub above_floor_us: Option<Spread>,
    pub dnsperf_us_per_sent: Spread,
    pub server_us_per_sent: Spread,
    pub ksoftirqd_us_per_sent: Spread,
    /// The whole machine from `/proc/stat`, less the idle baseline (reference only).
    pub machine_total_us_per_sent: Spread,
    /// The rate over the window.
    pub sent_qps: Spread,
    /// Rounds whose counters show every query dropped where it should be. Only those enter
    /// the figures above (all rounds when none does, and the report says so): in the others
    /// the measurement missed part of the work, e.g. unbound's kernel dropped queries for a
    /// full socket buffer instead of unbound reading them.
    pub verified_rounds: usize,
    /// Every counted round's window held the target rate within 5 %.
    pub rate_held: bool,
    /// Every round, counted or not.
    pub rounds: Vec<Round<DropRun>>,
}

/// Everything measured with one list size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    pub names: usize,
    pub servers: Vec<ServerInfo>,
    /// Each round's order, as configuration ids (`server/query set`).
    pub orders: Vec<Vec<String>>,
    pub nxdomain: Vec<NxResult>,
    pub drop: Vec<DropResult>,
}

fn spread<'a, T: 'a>(
    rounds: impl IntoIterator<Item = &'a Round<T>>,
    f: impl Fn(&T) -> f64,
) -> Spread {
    Spread::of(&rounds.into_iter().map(|r| f(&r.run)).collect::<Vec<_>>())
}

/// A configuration's drop rounds, as `Round`s (1-based).
fn drop_rounds(m: &[(usize, Measured)]) -> Vec<Round<DropRun>> {
    m.iter()
        .filter_map(|(r, m)| match m {
            Measured::Drop(d) => Some(Round {
                round: r + 1,
                run: d.clone(),
            }),
            Measured::Nxdomain(_) => None,
        })
        .collect()
}

/// The rounds that count: those whose drops were verified, or all of them when none was.
fn counted(rounds: &[Round<DropRun>]) -> Vec<&Round<DropRun>> {
    let verified: Vec<&Round<DropRun>> = rounds.iter().filter(|r| r.run.drops_verified).collect();
    if verified.is_empty() {
        rounds.iter().collect()
    } else {
        verified
    }
}

/// Per round, `value − floor` where both were measured in that round: the floor measured next
/// to a configuration, not an average over the whole run. `None` when no round has both.
fn above_floor(values: &[(usize, f64)], floor: &[(usize, f64)]) -> Option<Spread> {
    let d: Vec<f64> = values
        .iter()
        .filter_map(|&(round, v)| {
            let &(_, f) = floor.iter().find(|&&(r, _)| r == round)?;
            Some(v - f)
        })
        .collect();
    (!d.is_empty()).then(|| Spread::of(&d))
}

/// Position in the report: by query set, then in [`Server::ALL`]'s order.
fn rank(server: Server, set: QuerySet) -> (usize, usize) {
    let s = Server::ALL.iter().position(|&x| x == server).unwrap_or(0);
    (set as usize, s)
}

/// `a / b` of two medians.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

impl SizeResult {
    /// Summarizes each configuration's rounds.
    pub(super) fn summarize(
        names: usize,
        servers: Vec<ServerInfo>,
        orders: Vec<Vec<String>>,
        runs: Vec<ConfigRuns>,
    ) -> Self {
        // CPU per sent query of the rounds that count, by round.
        let per_sent = |m: &[(usize, Measured)]| -> Vec<(usize, f64)> {
            counted(&drop_rounds(m))
                .iter()
                .map(|r| (r.round, r.run.accounted_cpu_us_per_sent))
                .collect()
        };
        let floor_of = |set: QuerySet| -> Vec<(usize, f64)> {
            runs.iter()
                .find(|c| c.server == Server::FloorDrop && c.set == set)
                .map(|c| per_sent(&c.rounds))
                .unwrap_or_default()
        };
        let mut nxdomain = Vec::new();
        let mut drop = Vec::new();
        for ConfigRuns {
            server,
            set,
            rounds: m,
        } in &runs
        {
            let (server, set) = (*server, *set);
            let id = format!("{}/{}", server.slug(), set.name());
            if server.drops() {
                let above = if server == Server::FloorDrop {
                    None
                } else {
                    above_floor(&per_sent(m), &floor_of(set))
                };
                let rounds = drop_rounds(m);
                if rounds.is_empty() {
                    continue;
                }
                drop.push(DropResult {
                    id,
                    server,
                    label: server.label(),
                    query_set: set,
                    names,
                    cpu_us_per_sent: spread(counted(&rounds), |r| r.accounted_cpu_us_per_sent),
                    above_floor_us: above,
                    dnsperf_us_per_sent: spread(counted(&rounds), |r| r.dnsperf_cpu_us_per_sent),
                    server_us_per_sent: spread(counted(&rounds), |r| r.server_cpu_us_per_sent),
                    ksoftirqd_us_per_sent: spread(counted(&rounds), |r| r.ksoftirqd_us_per_sent),
                    machine_total_us_per_sent: spread(counted(&rounds), |r| {
                        r.total_cpu_us_per_sent
                    }),
                    sent_qps: spread(counted(&rounds), |r| r.window_qps),
                    verified_rounds: rounds.iter().filter(|r| r.run.drops_verified).count(),
                    rate_held: counted(&rounds).iter().all(|r| r.run.rate_held),
                    rounds,
                });
            } else {
                let rounds: Vec<Round<Run>> = m
                    .iter()
                    .filter_map(|(r, m)| match m {
                        Measured::Nxdomain(n) => Some(Round {
                            round: r + 1,
                            run: n.clone(),
                        }),
                        Measured::Drop(_) => None,
                    })
                    .collect();
                if rounds.is_empty() {
                    continue;
                }
                let mut rcodes: Vec<(String, u64)> = Vec::new();
                for (code, count) in rounds.iter().flat_map(|r| &r.run.rcodes) {
                    match rcodes.iter_mut().find(|(c, _)| c == code) {
                        Some((_, n)) => *n += count,
                        None => rcodes.push((code.clone(), *count)),
                    }
                }
                nxdomain.push(NxResult {
                    id,
                    server,
                    label: server.label(),
                    query_set: set,
                    names,
                    cpu_us_per_query: spread(&rounds, |r| r.accounted_cpu_us_per_query),
                    dnsperf_us_per_query: spread(&rounds, |r| r.dnsperf_cpu_us_per_query),
                    resolver_us_per_query: spread(&rounds, |r| r.resolver_cpu_us_per_query),
                    ksoftirqd_us_per_query: spread(&rounds, |r| r.ksoftirqd_us_per_query),
                    machine_total_us_per_query: spread(&rounds, |r| r.total_cpu_us_per_query),
                    qps: spread(&rounds, |r| r.qps),
                    all_nxdomain: rounds.iter().all(|r| r.run.all_nxdomain),
                    rcodes,
                    rounds,
                });
            }
        }
        nxdomain.sort_by_key(|r| rank(r.server, r.query_set));
        drop.sort_by_key(|r| rank(r.server, r.query_set));
        Self {
            names,
            servers,
            orders,
            nxdomain,
            drop,
        }
    }

    fn server(&self, server: Server) -> Option<&ServerInfo> {
        self.servers.iter().find(|s| s.server == server)
    }
}

/// Everything the suite measured.
#[derive(Debug, Serialize)]
pub struct DnsperfReport {
    pub suite: &'static str,
    pub mode: &'static str,
    pub command: String,
    pub date: String,
    pub machine: inspect::Machine,
    pub dnsperf_version: String,
    pub unbound_version: String,
    pub dnsmasq_version: String,
    /// Length of an NXDOMAIN run and of a drop run's window.
    pub seconds_per_run: u64,
    pub rounds: usize,
    pub clients: usize,
    pub seed: u64,
    /// dnsperf's `-Q`, `-t` and `-q` in the drop runs.
    pub drop_rate_qps: u32,
    pub drop_timeout_s: f64,
    pub drop_max_outstanding: u32,
    pub idle_baseline_cpu_fraction: f64,
    pub loadavg_start: f64,
    pub loadavg_end: f64,
    pub wall_seconds: f64,
    pub sizes: Vec<SizeResult>,
    pub not_measured: Vec<NotMeasured>,
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

/// `median [min–max]`.
fn cell(s: &Spread, decimals: usize) -> String {
    format!(
        "{:.d$} [{:.d$}–{:.d$}]",
        s.median,
        s.min,
        s.max,
        d = decimals
    )
}

fn times(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}×"))
}

fn memory(info: Option<&ServerInfo>) -> String {
    match info.map(|i| i.memory) {
        Some(Memory {
            bytes,
            backend_rss_bytes: Some(rss),
        }) => format!("{} maps (+{} resolver RSS)", mib(bytes), mib(rss)),
        Some(Memory { bytes, .. }) if bytes > 0 => format!("{} RSS", mib(bytes)),
        _ => "–".into(),
    }
}

fn ready(info: Option<&ServerInfo>) -> String {
    info.and_then(|i| i.ready_s)
        .map_or_else(|| "–".into(), |t| format!("{t:.1}"))
}

/// Palisade's event records read and lost over all rounds; `None` for the resolvers.
fn events(rounds: &[Round<Run>]) -> Option<(u64, u64)> {
    rounds.iter().try_fold((0, 0), |(read, lost), r| {
        Some((read + r.run.events_read?, lost + r.run.events_lost?))
    })
}

/// How the counters showed the drops, per configuration.
const fn evidence(server: Server) -> &'static str {
    match server {
        Server::FloorDrop => "0 answers, every frame reached the veth, none reached IP",
        Server::PalisadeDrop => {
            "0 answers, none reached IP, every query counted blocked by Palisade, no event lost"
        }
        Server::UnboundDeny => {
            "0 answers, every query reached unbound's socket, none lost to a full buffer in the window"
        }
        Server::PalisadeNxdomain | Server::UnboundNxdomain | Server::Dnsmasq => "",
    }
}

impl DnsperfReport {
    fn nxdomain_table(&self) -> String {
        let mut m = String::from(
            "| server | query set | names | ready (s) | **CPU µs/query** (dnsperf + server + ksoftirqd) | dnsperf | resolver process | ksoftirqd | machine total (/proc/stat) | queries/s | answers | memory (MiB) | CPU/query vs Palisade | q/s vs Palisade |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n",
        );
        for size in &self.sizes {
            for r in &size.nxdomain {
                let pal = size
                    .nxdomain
                    .iter()
                    .find(|p| p.server == Server::PalisadeNxdomain && p.query_set == r.query_set);
                let answers = if r.all_nxdomain {
                    format!(
                        "all NXDOMAIN ({})",
                        r.rcodes.iter().map(|(_, n)| n).sum::<u64>()
                    )
                } else {
                    format!(
                        "**not all NXDOMAIN**: {}",
                        r.rcodes
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let answers = match events(&r.rounds) {
                    Some((read, 0)) => format!("{answers}; {read} events read, none lost"),
                    Some((read, lost)) => {
                        format!("{answers}; {read} events read, **{lost} lost**")
                    }
                    None => answers,
                };
                let info = size.server(r.server);
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | **{}** | {:.2} | {:.2} | {:.2} | {:.2} | {} | {answers} | {} | {} | {} |",
                    r.label,
                    r.query_set.name(),
                    r.names,
                    ready(info),
                    cell(&r.cpu_us_per_query, 2),
                    r.dnsperf_us_per_query.median,
                    r.resolver_us_per_query.median,
                    r.ksoftirqd_us_per_query.median,
                    r.machine_total_us_per_query.median,
                    cell(&r.qps, 0),
                    memory(info),
                    times(
                        pal.and_then(|p| ratio(
                            r.cpu_us_per_query.median,
                            p.cpu_us_per_query.median
                        ))
                    ),
                    times(pal.and_then(|p| ratio(r.qps.median, p.qps.median))),
                );
            }
        }
        m
    }

    fn drop_table(&self) -> String {
        let mut m = String::from(
            "| configuration | query set | names | ready (s) | sent/s (window) | **CPU µs/sent query** (dnsperf + server + ksoftirqd) | above floor (µs) | dnsperf | server processes | ksoftirqd | machine total (/proc/stat) | drops verified | memory (MiB) | CPU vs Palisade | above floor vs Palisade |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n",
        );
        for size in &self.sizes {
            for r in &size.drop {
                let pal = size
                    .drop
                    .iter()
                    .find(|p| p.server == Server::PalisadeDrop && p.query_set == r.query_set);
                let info = size.server(r.server);
                let total = r.rounds.len();
                let verified = match r.verified_rounds {
                    0 => "**no** (counters in the JSON)".into(),
                    k if k == total => format!("yes: {}", evidence(r.server)),
                    k => format!(
                        "in {k} of {total} rounds: {}; the others (in the JSON) are left out",
                        evidence(r.server)
                    ),
                };
                let (vs, above_vs) = if r.server == Server::FloorDrop {
                    ("–".into(), "–".into())
                } else {
                    (
                        times(pal.and_then(|p| {
                            ratio(r.cpu_us_per_sent.median, p.cpu_us_per_sent.median)
                        })),
                        times(pal.and_then(|p| {
                            ratio(
                                r.above_floor_us.as_ref()?.median,
                                p.above_floor_us.as_ref()?.median,
                            )
                        })),
                    )
                };
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {:.0}{} | **{}** | {} | {:.2} | {:.2} | {:.2} | {:.2} | {verified} | {} | {vs} | {above_vs} |",
                    r.label,
                    r.query_set.name(),
                    r.names,
                    ready(info),
                    r.sent_qps.median,
                    if r.rate_held { "" } else { " (**off target**)" },
                    cell(&r.cpu_us_per_sent, 2),
                    r.above_floor_us
                        .as_ref()
                        .map_or_else(|| "–".into(), |s| cell(s, 2)),
                    r.dnsperf_us_per_sent.median,
                    r.server_us_per_sent.median,
                    r.ksoftirqd_us_per_sent.median,
                    r.machine_total_us_per_sent.median,
                    memory(info),
                );
            }
        }
        m
    }

    fn not_measured(&self) -> String {
        self.not_measured.iter().fold(String::new(), |mut m, n| {
            let _ = writeln!(m, "- {}: {}.", n.what, n.why.trim_end_matches('.'));
            m
        })
    }

    fn markdown(&self) -> String {
        format!(
            "# dnsperf: refusing blocked names with NXDOMAIN and by dropping ({mode} mode)\n\n\
             `{command}` — {date} — {cpu} ({cpus} CPUs), Linux {kernel}; dnsperf: {dnsperf}; \
             unbound: {unbound}; dnsmasq: {dnsmasq}. Load average {l0:.2} at the start, \
             {l1:.2} at the end; idle baseline {idle:.1} % of one CPU (subtracted from the \
             machine totals). The suite took {wall:.0} s.\n\n\
             Every server holds the same list and blocks each listed name *and every name below \
             it*: Palisade a list loaded with `subdomains = true`, unbound a `local-zone` per \
             name, dnsmasq an `address=/name/` per name. Two query sets, type A, each shuffled: \
             **exact** (every listed name once) and **subdomain** (every listed name under one \
             random extra label, `k3j9.<name>`). dnsperf (pinned to CPU 0, {clients} clients, one \
             thread) queries each server over a veth pair; every server has its own pair of \
             namespaces and addresses and stays up for all the rounds of a list size; servers \
             are pinned to CPU 1. {rounds} round(s) per list size, each running every \
             configuration once in a freshly shuffled order (the orders are in the JSON); cells \
             are **median [min–max] over the rounds**, the other CPU columns medians. See \
             `bench/README.md` (\"Method: the dnsperf suite\") for how the CPU columns are \
             measured and why **CPU per query** is the column to compare.\n\n\
             ## NXDOMAIN\n\n\
             dnsperf at an unlimited rate, {seconds} s per run; every answer must be NXDOMAIN.\n\n\
             {nx}\n\
             Columns: *ready* is the time from starting the server (for Palisade: loading the \
             object, compiling and installing the list, attaching) to the first NXDOMAIN answer \
             for a listed name. **CPU per query** is the CPU time of every task the run \
             involves, per completed query: dnsperf (`wait4`), the server's processes (their \
             threads' scheduler runtime; for Palisade, the unbound behind it, which sees no \
             listed query, and a thread reading Palisade's event ring on the server CPU, doing \
             for each blocked query what the daemon does: decode it, render it as JSON and text) \
             and the ksoftirqd threads. It is the scheduler's own accounting, so \
             other work on the shared machine does not leak in, and it covers Palisade: veth \
             runs the receiving end in softirq on the sending CPU, inside dnsperf's send calls, \
             so the XDP program's work is part of dnsperf's system time (the query's way up to \
             a resolver's socket is too). Queries per second are not a cost: with Palisade \
             dnsperf and the answers share CPU 0, while a resolver adds CPU 1 to the pipeline, \
             so a resolver can show more queries per second while spending more CPU per query. \
             *machine total* is the non-idle time of all CPUs from `/proc/stat` minus the idle \
             baseline: tick-sampled and including whatever else ran on the machine, so kept for \
             reference only. Memory: resolver RSS after the last round; for Palisade the \
             `memlock` of the DNS inspector's maps (fdinfo). Ratios: the configuration's median \
             over Palisade's at the same list size and query set.\n\n\
             ## Drop\n\n\
             Nothing comes back from a dropped query, so there is no answer to time: dnsperf \
             sends at a fixed {rate} queries/s (`-Q {rate} -t {timeout} -q {outstanding}`) and \
             the cost is the CPU time per query *sent*, over a window of {seconds} s that \
             starts once dnsperf holds the rate (it first ramps up slowly when nothing is \
             answered; the warm-up of each run is in the JSON). *sent/s* is the window's rate \
             from the client namespace's UDP counter. The XDP_DROP floor drops every frame on \
             the server's veth without looking: it is the client and the veth. *above floor* is \
             a configuration's CPU per sent query less the floor's in the same round and query \
             set: what dropping the query costs; a difference this small moves with the noise \
             of the machine, and so does its ratio. CPU columns as above, over the window \
             (dnsperf from its threads' scheduler runtime). *drops verified*: over each whole \
             run, dnsperf got no answer, the client's UDP counter matches dnsperf's count of \
             queries sent, and the server side shows where they ended (the server namespace's \
             IP and UDP counters, the veth's receive counter, Palisade's own DNS counters, and \
             no Palisade event lost to a full ring); \
             rounds that fail the check are left out of the figures. The per-query figures of \
             this table do not compare with the NXDOMAIN table's: there dnsperf runs flat out, \
             here it sleeps and wakes for every query and expires every one (the floor carries \
             that). Compare within a table.\n\n\
             {drop}\n\
             ## Not measured\n\n\
             {not}",
            mode = self.mode,
            command = self.command,
            date = self.date,
            cpu = self.machine.cpu_model,
            cpus = self.machine.cpus,
            kernel = self.machine.kernel,
            dnsperf = self.dnsperf_version,
            unbound = self.unbound_version,
            dnsmasq = self.dnsmasq_version,
            l0 = self.loadavg_start,
            l1 = self.loadavg_end,
            idle = self.idle_baseline_cpu_fraction * 100.0,
            wall = self.wall_seconds,
            clients = self.clients,
            rounds = self.rounds,
            seconds = self.seconds_per_run,
            nx = self.nxdomain_table(),
            rate = self.drop_rate_qps,
            timeout = self.drop_timeout_s,
            outstanding = self.drop_max_outstanding,
            drop = self.drop_table(),
            not = self.not_measured(),
        )
    }

    /// Writes the markdown and JSON files; returns the file stem.
    ///
    /// # Errors
    /// When the files cannot be written.
    pub fn write(&self, dir: &Path) -> Result<String> {
        fs::create_dir_all(dir)?;
        let stem = format!("dnsperf-{}", self.mode);
        fs::write(dir.join(format!("{stem}.md")), self.markdown())?;
        fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        Ok(stem)
    }

    #[must_use]
    pub fn terminal(&self) -> String {
        format!(
            "NXDOMAIN\n\n{}\nDrop ({} queries/s)\n\n{}\nNot measured\n\n{}",
            self.nxdomain_table(),
            self.drop_rate_qps,
            self.drop_table(),
            self.not_measured()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn above_floor_pairs_rounds() {
        // The round without a floor (index 1) is left out.
        let values = [(0, 10.0), (1, 12.0), (2, 11.0)];
        let floor = [(0, 7.0), (2, 8.5)];
        let s = above_floor(&values, &floor).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.75, 2.5, 3.0));
        assert!(above_floor(&values, &[]).is_none());
    }

    fn nx(cpu: f64, qps: f64, nxdomain: bool) -> Measured {
        Measured::Nxdomain(Run {
            accounted_cpu_us_per_query: cpu,
            qps,
            all_nxdomain: nxdomain,
            rcodes: vec![("NXDOMAIN".into(), 100)],
            ..Run::default()
        })
    }

    fn dropped(cpu: f64, verified: bool) -> Measured {
        Measured::Drop(DropRun {
            target_qps: 10_000,
            warmup_s: 2.0,
            window_s: 5.0,
            window_sent: 50_000,
            window_qps: 10_000.0,
            rate_held: true,
            accounted_cpu_us_per_sent: cpu,
            dnsperf_cpu_us_per_sent: cpu,
            server_cpu_us_per_sent: 0.0,
            ksoftirqd_us_per_sent: 0.0,
            total_cpu_us_per_sent: cpu,
            softirq_us_per_sent: 0.0,
            whole_run_dnsperf_cpu_us_per_sent: cpu,
            queries_sent: 70_000,
            queries_answered: 0,
            counters: super::super::measure::Counters::default(),
            window_rcvbuf_errors: 0,
            drops_verified: verified,
        })
    }

    #[test]
    fn rounds_are_summarized_per_configuration() {
        use QuerySet::{Exact, Subdomain};
        let runs = vec![
            (
                Server::PalisadeNxdomain,
                Exact,
                vec![
                    (0, nx(14.0, 7e4, true)),
                    (1, nx(15.0, 6e4, true)),
                    (2, nx(13.0, 8e4, true)),
                ],
            ),
            (
                Server::UnboundNxdomain,
                Exact,
                vec![(0, nx(17.0, 1e5, true)), (1, nx(16.0, 1e5, false))],
            ),
            // Failed in its first round: nothing to summarize.
            (Server::Dnsmasq, Subdomain, vec![]),
            (
                Server::FloorDrop,
                Exact,
                vec![(0, dropped(7.0, true)), (1, dropped(8.0, true))],
            ),
            (
                Server::PalisadeDrop,
                Exact,
                vec![(0, dropped(8.0, true)), (1, dropped(9.5, true))],
            ),
            (
                Server::UnboundDeny,
                Exact,
                vec![(0, dropped(12.0, true)), (1, dropped(14.0, false))],
            ),
        ];
        let runs = runs
            .into_iter()
            .map(|(server, set, rounds)| ConfigRuns {
                server,
                set,
                rounds,
            })
            .collect();
        let s = SizeResult::summarize(1000, vec![], vec![], runs);
        assert_eq!(s.nxdomain.len(), 2);
        let pal = &s.nxdomain[0];
        assert_eq!(pal.server, Server::PalisadeNxdomain);
        assert_eq!(
            (
                pal.cpu_us_per_query.median,
                pal.cpu_us_per_query.min,
                pal.cpu_us_per_query.max
            ),
            (14.0, 13.0, 15.0)
        );
        assert_eq!(
            pal.rounds.iter().map(|r| r.round).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(pal.rcodes, vec![("NXDOMAIN".to_string(), 300)]);
        assert!(pal.all_nxdomain);
        // One round with another rcode spoils the whole configuration.
        assert!(!s.nxdomain[1].all_nxdomain);

        assert_eq!(s.drop.len(), 3);
        let (floor, pal, deny) = (&s.drop[0], &s.drop[1], &s.drop[2]);
        assert_eq!(floor.server, Server::FloorDrop);
        assert!(floor.above_floor_us.is_none());
        let above = pal.above_floor_us.unwrap();
        assert_eq!((above.min, above.max), (1.0, 1.5));
        // The unverified round of unbound is left out: round 1 alone, 12 − 7.
        assert_eq!(deny.cpu_us_per_sent.median, 12.0);
        assert_eq!(deny.above_floor_us.unwrap().median, 5.0);
        assert_eq!((pal.verified_rounds, deny.verified_rounds), (2, 1));
        assert_eq!(deny.rounds.len(), 2);
    }

    #[test]
    fn with_no_verified_round_every_round_counts() {
        let rounds = drop_rounds(&[(0, dropped(12.0, false)), (1, dropped(14.0, false))]);
        assert_eq!(counted(&rounds).len(), 2);
        let rounds = drop_rounds(&[(0, dropped(12.0, false)), (1, dropped(14.0, true))]);
        let c = counted(&rounds);
        assert_eq!((c.len(), c[0].round), (1, 2));
    }

    #[test]
    fn rows_go_by_query_set_then_server() {
        let mut ranks = vec![
            rank(Server::Dnsmasq, QuerySet::Exact),
            rank(Server::PalisadeNxdomain, QuerySet::Subdomain),
            rank(Server::PalisadeNxdomain, QuerySet::Exact),
        ];
        ranks.sort_unstable();
        assert_eq!(
            ranks,
            [
                rank(Server::PalisadeNxdomain, QuerySet::Exact),
                rank(Server::Dnsmasq, QuerySet::Exact),
                rank(Server::PalisadeNxdomain, QuerySet::Subdomain),
            ]
        );
    }
}
