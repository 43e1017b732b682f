//! `palisade learn`: a least-privilege policy proposed from observed traffic.
//!
//! Connections and DNS answers are read from captures ([`observe`]); connections are grouped
//! into what the policy language can allow ([`propose`]): inbound services become firewall
//! rules, connections to addresses that DNS answers gave become names in a `[dns.egress]`
//! allowlist with `[dns.bind]` (connects only to what those names resolved to), and the
//! rest become `[dns.bind] allow` addresses. Rare groups are held for review, and whatever a
//! never-allow policy denies is withheld. [`evaluate`] runs the proposal through the kernel
//! programs over held-out traffic and synthetic never-seen flows.

pub mod evaluate;
pub mod live;
pub mod observe;
pub mod propose;

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

use crate::{
    policy::{config, model::Policy},
    replay::{self, capture},
};

/// Flows a group needs before it is allowed, unless `--min-flows` says otherwise.
pub const DEFAULT_MIN_FLOWS: u64 = 3;
/// cgroup for `[dns.egress]` and `[dns.bind]` when none is given: the cgroup v2 root.
pub const DEFAULT_CGROUP: &str = "/sys/fs/cgroup";

/// The report of a learning run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where the proposal went (`-` for stdout).
    pub output: String,
    pub packets: u64,
    pub connections: u64,
    pub answers: u64,
    #[serde(flatten)]
    pub proposal: propose::Proposal,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<evaluate::Evaluation>,
}

fn read_capture(path: &Path, hosts: &[crate::policy::model::Cidr]) -> Result<Vec<capture::Record>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut records = capture::read(&data).with_context(|| format!("{}", path.display()))?;
    replay::mark_sent_by(&mut records, hosts);
    Ok(records)
}

fn load(path: &Path, what: &str) -> Result<Policy> {
    config::load_policy(path).map_err(|e| {
        anyhow!(
            "{what} {}: {} error(s):\n{e}",
            path.display(),
            e.errors.len()
        )
    })
}

/// Checks that a proposal loads as a policy, and returns it.
///
/// # Errors
/// When it does not (a bug: the message names the place in the proposal).
pub fn parse_proposal(text: &str) -> Result<Policy> {
    config::parse_policy(text, "proposal", Path::new("/")).map_err(|e| {
        anyhow!(
            "the proposal does not load ({} error(s)):\n{e}",
            e.errors.len()
        )
    })
}

/// `palisade learn`.
///
/// # Errors
/// When a capture or the never-allow policy cannot be read (the error names the place),
/// or the kernel programs cannot be loaded for `--evaluate`.
pub fn command(a: &crate::cli::LearnArgs, socket: &Path) -> Result<Report> {
    if a.capture.is_empty() && a.duration.is_none() {
        bail!("give at least one --capture FILE, or --duration SECS to watch the daemon");
    }
    if !a.capture.is_empty() && a.duration.is_some() {
        bail!(
            "--capture and --duration do not go together: learn from captures or from the daemon"
        );
    }
    let hosts = a
        .host
        .iter()
        .map(|h| config_cidr(h).map_err(|e| anyhow!("--host {h}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let never = a
        .never_allow
        .as_deref()
        .map(|p| load(p, "--never-allow"))
        .transpose()?;
    let (records, obs, seen_cgroups, sources) = match a.duration {
        Some(secs) => {
            let l = live::collect(socket, std::time::Duration::from_secs(secs))?;
            let source = format!(
                "the daemon at {} ({secs} s, {} DNS events)",
                socket.display(),
                l.dns_events
            );
            (l.records, l.obs, l.cgroups, vec![source])
        }
        None => {
            let mut records = Vec::new();
            for path in &a.capture {
                let mut r = read_capture(path, &hosts)?;
                records.append(&mut r);
            }
            let obs = observe::observe(&records);
            let sources = a.capture.iter().map(|p| p.display().to_string()).collect();
            (records, obs, Default::default(), sources)
        }
    };
    let opts = propose::Options {
        min_flows: a.min_flows,
        cgroups: if !a.cgroup.is_empty() {
            a.cgroup.clone()
        } else if !seen_cgroups.is_empty() {
            seen_cgroups.into_iter().collect()
        } else {
            vec![DEFAULT_CGROUP.into()]
        },
        sources,
    };
    let proposal = propose::propose(&obs, &records, never.as_ref(), &opts);
    let policy = parse_proposal(&proposal.text)?;
    let evaluation = match &a.evaluate {
        Some(path) => {
            let held = read_capture(path, &hosts)?;
            let seen = evaluate::Seen::from(&obs);
            let synth = evaluate::synthetic(&seen, a.synthetic, a.seed);
            Some(evaluate::evaluate(&policy, &held, &synth, a.seed)?)
        }
        None => None,
    };
    let output = match &a.output {
        Some(p) => {
            std::fs::write(p, &proposal.text)
                .with_context(|| format!("writing {}", p.display()))?;
            p.display().to_string()
        }
        None => "-".into(),
    };
    let report = Report {
        output,
        packets: obs.packets,
        connections: obs.connections.len() as u64,
        answers: obs.answers.len() as u64,
        proposal,
        evaluation,
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if a.output.is_none() {
            print!("{}", report.proposal.text);
        }
        eprint!("{}", report.text());
    }
    Ok(report)
}

fn config_cidr(s: &str) -> Result<crate::policy::model::Cidr, String> {
    crate::policy::setfile::parse_cidr(s).map_err(|e| e.to_string())
}

impl Report {
    /// A summary for the terminal.
    #[must_use]
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let p = &self.proposal;
        let mut s = format!(
            "learned from {} packets, {} connections, {} DNS answers: {} allowed, {} held for review, {} withheld\n",
            self.packets,
            self.connections,
            self.answers,
            p.allowed.len(),
            p.held.len(),
            p.withheld.len()
        );
        for w in &p.withheld {
            let _ = writeln!(s, "  withheld {} ({} flows): {}", w.what, w.flows, w.why);
        }
        if let Some(e) = &self.evaluation {
            let _ = writeln!(
                s,
                "held-out benign flows admitted: {}/{} ({:.2} %)\n\
                 synthetic never-seen flows admitted: {}/{} ({:.2} %, seed {})",
                e.benign_admitted,
                e.benign_flows,
                e.benign_share,
                e.synthetic_admitted,
                e.synthetic_flows,
                e.synthetic_share,
                e.seed
            );
            for f in &e.benign_refused {
                let _ = writeln!(s, "  refused benign: {f}");
            }
            for f in &e.synthetic_let_in {
                let _ = writeln!(s, "  admitted synthetic: {f}");
            }
        }
        s
    }
}
