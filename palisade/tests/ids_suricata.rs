//! The IDS against Suricata itself: one capture crafted with scapy
//! (`tests/data/ids/craft.py`), one rule file (`tests/data/ids/rules.rules`), run through
//! `suricata -r` offline and through Palisade's engine (the kernel's preselection replayed,
//! then the full match with reassembly). For every rule, the flows each engine alerted on must
//! be the same. The per-rule table is printed (`--nocapture`) and recorded in
//! bench/results/ids-suricata.md.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use palisade::ids::{engine::Engine, pcap, rules};

/// A flow without direction: both endpoints, sorted, and the protocol.
type FlowKey = (String, (IpAddr, u16), (IpAddr, u16));

fn key(proto: &str, a: (IpAddr, u16), b: (IpAddr, u16)) -> FlowKey {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    (proto.to_ascii_uppercase(), x, y)
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/ids")
        .join(name)
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn suricata_alerts(pcap: &Path, rules: &Path, dir: &Path) -> BTreeMap<u32, BTreeSet<FlowKey>> {
    let out = Command::new("suricata")
        .arg("-r")
        .arg(pcap)
        .arg("-S")
        .arg(rules)
        .arg("-l")
        .arg(dir)
        .args(["-k", "none", "--runmode", "single"])
        .output()
        .expect("suricata is not installed (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "suricata failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(dir.join("suricata.log")).unwrap();
    assert!(
        log.contains("0 rules failed"),
        "suricata refused a rule:\n{log}"
    );
    let eve = std::fs::read_to_string(dir.join("eve.json")).unwrap();
    let mut alerts: BTreeMap<u32, BTreeSet<FlowKey>> = BTreeMap::new();
    for line in eve.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        if e["event_type"] != "alert" {
            continue;
        }
        let ip = |k: &str| -> IpAddr { e[k].as_str().unwrap().parse().unwrap() };
        let port = |k: &str| -> u16 { e[k].as_u64().unwrap_or(0) as u16 };
        let sid = e["alert"]["signature_id"].as_u64().unwrap() as u32;
        alerts.entry(sid).or_default().insert(key(
            e["proto"].as_str().unwrap(),
            (ip("src_ip"), port("src_port")),
            (ip("dest_ip"), port("dest_port")),
        ));
    }
    alerts
}

#[test]
fn every_rule_alerts_on_the_same_flows_as_suricata() {
    let dir = TempDir(std::env::temp_dir().join(format!("palisade-ids-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let capture = dir.0.join("ids.pcap");
    let st = Command::new("/usr/bin/python3")
        .arg(data("craft.py"))
        .arg(&capture)
        .status()
        .unwrap();
    assert!(st.success(), "craft.py failed");
    let rule_file = data("rules.rules");

    let suricata = suricata_alerts(&capture, &rule_file, &dir.0);

    let set = rules::load_file(&rule_file, &rules::Vars::default()).unwrap();
    let sids: Vec<u32> = set.iter().map(|r| r.sid).collect();
    let (packets, skipped) = pcap::read(&capture).unwrap();
    assert_eq!(skipped, 0);
    let mut engine = Engine::new(set);
    for p in &packets {
        engine.packet(p);
    }
    engine.finish();
    let mut ours: BTreeMap<u32, BTreeSet<FlowKey>> = BTreeMap::new();
    for a in &engine.alerts {
        let proto = match a.flow.proto {
            6 => "tcp",
            17 => "udp",
            _ => "icmp",
        };
        let ports = if a.flow.proto == 1 {
            (0, 0)
        } else {
            (a.flow.client_port, a.flow.server_port)
        };
        ours.entry(a.sid).or_default().insert(key(
            proto,
            (a.flow.client, ports.0),
            (a.flow.server, ports.1),
        ));
    }

    println!(
        "| sid | flows Suricata | flows Palisade | agreeing | only Suricata | only Palisade |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut differing = Vec::new();
    for sid in &sids {
        let s = suricata.get(sid).cloned().unwrap_or_default();
        let o = ours.get(sid).cloned().unwrap_or_default();
        let both = s.intersection(&o).count();
        println!(
            "| {sid} | {} | {} | {both} | {} | {} |",
            s.len(),
            o.len(),
            s.difference(&o).count(),
            o.difference(&s).count()
        );
        if s != o {
            differing.push((*sid, s, o));
        }
    }
    // Every rule must have fired somewhere, so the agreement is not one of silence.
    for sid in &sids {
        assert!(
            suricata.contains_key(sid),
            "sid {sid}: Suricata never alerted"
        );
    }
    assert!(
        differing.is_empty(),
        "rules where the engines disagree: {differing:#?}"
    );
    // The preselection let through fewer flows than there are (it is a filter, not a pass).
    assert!(
        engine.totals.flows_selected < engine.totals.flows,
        "{:?}",
        engine.totals
    );
}
