//! IDS signatures: rule files in a Suricata-compatible subset ([`rules`]), the preselection
//! tables the kernel uses ([`preselect`], with the prefilter shared in
//! `palisade_common::ids`), the full match ([`matcher`]) and the engine with bounded TCP
//! reassembly and per-flow coverage ([`engine`]). `palisade ids pcap` runs it offline over
//! a capture; see docs/design/ids.md.

pub mod engine;
pub mod kernel;
pub mod matcher;
pub mod pcap;
pub mod preselect;
pub mod rules;
pub mod runtime;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use crate::cli::IdsCommand;

/// Bytes of the payload ring (`IDS_RECORDS`).
pub const RING_BYTES: u32 = 4 << 20;
/// `[ids] budget_per_sec` when not given: records each CPU may send a second.
pub const DEFAULT_BUDGET_PER_SEC: u32 = 20_000;
/// `[ids] ring_high_water` when not given: three quarters of the ring.
pub const DEFAULT_RING_HIGH_WATER: u32 = RING_BYTES / 4 * 3;

/// The `[ids]` section: rule files in the subset of docs/design/ids.md, where to look and
/// how much, and whether `drop` rules drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    /// The section is present.
    pub enabled: bool,
    /// Rule files, relative paths resolved against the policy file's directory.
    pub rules: Vec<PathBuf>,
    /// Interfaces inspected (at most 8); empty: every guarded interface.
    pub interfaces: Vec<String>,
    /// Packets with one of these ports (source or destination) are inspected; empty: all.
    pub ports: Vec<u16>,
    /// Records each CPU may send to the daemon per second.
    pub budget_per_sec: u32,
    /// Ring fill (bytes) past which flows are sampled out; 0: only the budget limits.
    pub ring_high_water: u32,
    /// `drop` rules drop their flow (false: they only alert).
    pub drop: bool,
}

impl Default for Ids {
    fn default() -> Self {
        Self {
            enabled: false,
            rules: Vec::new(),
            interfaces: Vec::new(),
            ports: Vec::new(),
            budget_per_sec: DEFAULT_BUDGET_PER_SEC,
            ring_high_water: DEFAULT_RING_HIGH_WATER,
            drop: true,
        }
    }
}

/// Reads every rule file of `[ids] rules` into one set; a sid used in two files is refused
/// at its second place.
///
/// # Errors
/// The first problem, at its file and line.
pub fn load_rules(files: &[PathBuf]) -> Result<Vec<rules::Rule>, rules::RuleError> {
    let vars = rules::Vars::default();
    let mut all: Vec<rules::Rule> = Vec::new();
    let mut seen: BTreeMap<u32, String> = BTreeMap::new();
    for f in files {
        for r in rules::load_file(f, &vars)? {
            if let Some(prev) = seen.insert(r.sid, r.origin.clone()) {
                let (file, line) = r
                    .origin
                    .rsplit_once(':')
                    .map_or((r.origin.clone(), 0), |(f, l)| {
                        (f.to_string(), l.parse().unwrap_or(0))
                    });
                return Err(rules::RuleError {
                    file,
                    line,
                    message: format!("sid {} is already used at {prev}", r.sid),
                });
            }
            if all.len() >= rules::MAX_RULES {
                return Err(rules::RuleError {
                    file: f.display().to_string(),
                    line: 0,
                    message: format!("more than {} rules in [ids] rules", rules::MAX_RULES),
                });
            }
            all.push(r);
        }
    }
    Ok(all)
}

/// `palisade ids ...`.
#[must_use]
pub fn command(cmd: IdsCommand, socket: &Path) -> ExitCode {
    match run(cmd, socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: IdsCommand, socket: &Path) -> anyhow::Result<()> {
    match cmd {
        IdsCommand::Flows { json } => {
            let mut c = crate::api::client::Client::connect(socket)?;
            let flows: Vec<runtime::FlowReport> =
                c.request(&crate::api::proto::Request::IdsFlows)?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
                return Ok(());
            }
            if flows.is_empty() {
                println!("no flows (is [ids] on?)");
            }
            for f in &flows {
                let proto = match f.proto {
                    6 => "tcp".to_string(),
                    17 => "udp".to_string(),
                    1 | 58 => "icmp".to_string(),
                    n => n.to_string(),
                };
                println!(
                    "{proto} {}:{} -> {}:{} {} packets {} payload {} inspected {} truncated {} gaps {} sids [{}]{}",
                    f.client,
                    f.client_port,
                    f.server,
                    f.server_port,
                    f.state,
                    f.packets,
                    f.payload_bytes,
                    f.inspected_bytes,
                    f.truncated_bytes,
                    f.gaps,
                    f.sids
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    if f.dropped { " dropped" } else { "" }
                );
            }
            Ok(())
        }
        IdsCommand::Check { rules } => {
            let set = rules::load_file(&rules, &rules::Vars::default())?;
            let pre = preselect::Preselect::build(&set);
            let prefiltered = set
                .iter()
                .filter(|r| preselect::fast_pattern(&r.contents).is_some())
                .count();
            println!(
                "ok: {} rules, {} preselected by content, {} port groups",
                set.len(),
                prefiltered,
                pre.groups.len()
            );
            if pre.groups.len() > preselect::MAX_PORT_GROUPS {
                anyhow::bail!(
                    "{} port groups do not fit the kernel's {}",
                    pre.groups.len(),
                    preselect::MAX_PORT_GROUPS
                );
            }
            Ok(())
        }
        IdsCommand::Pcap { rules, pcap, json } => {
            let set = rules::load_file(&rules, &rules::Vars::default())?;
            let (packets, skipped) = pcap::read(&pcap)?;
            let mut engine = engine::Engine::new(set);
            for p in &packets {
                engine.packet(p);
            }
            engine.finish();
            let flows = engine.coverage();
            if json {
                let flows: Vec<_> = flows
                    .iter()
                    .map(|(id, c)| json!({ "flow": id, "coverage": c }))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "alerts": engine.alerts,
                        "flows": flows,
                        "totals": engine.totals,
                        "packets_skipped": skipped,
                    }))?
                );
                return Ok(());
            }
            for a in &engine.alerts {
                println!(
                    "[{}] sid {}:{} {} [{}] {}:{} -> {}:{} ({}, {})",
                    a.action,
                    a.sid,
                    a.rev,
                    a.msg,
                    a.classtype.as_deref().unwrap_or("-"),
                    a.flow.client,
                    a.flow.client_port,
                    a.flow.server,
                    a.flow.server_port,
                    a.direction,
                    a.buffer
                );
            }
            println!("flows:");
            for (id, c) in &flows {
                println!(
                    "  {} {}:{} -> {}:{} packets {} payload {} inspected {} truncated {} gaps {} {}",
                    id.proto,
                    id.client,
                    id.client_port,
                    id.server,
                    id.server_port,
                    c.packets,
                    c.payload_bytes,
                    c.inspected_bytes,
                    c.truncated_bytes,
                    c.gaps,
                    if c.selected { c.reason } else { "not selected" }
                );
            }
            println!(
                "{} packets ({} not IP or malformed), {} flows, {} selected, {} alerts",
                engine.totals.packets,
                skipped,
                engine.totals.flows,
                engine.totals.flows_selected,
                engine.totals.alerts
            );
            Ok(())
        }
    }
}
