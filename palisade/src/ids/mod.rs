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

use std::process::ExitCode;

use serde_json::json;

use crate::cli::IdsCommand;

/// `palisade ids ...`.
#[must_use]
pub fn command(cmd: IdsCommand) -> ExitCode {
    match run(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: IdsCommand) -> anyhow::Result<()> {
    match cmd {
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
