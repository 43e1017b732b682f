//! The load-balancer suite: what a packet of an established flow costs through the XDP
//! pipeline with the load balancer (flow-table lookup, then IPIP encapsulation for DSR or the
//! destination rewrite for DNAT), under `BPF_PROG_TEST_RUN`, above the empty program measured
//! in the same round, next to the same packet through the same firewall with no service.
//!
//! Each packet runs once per syscall (a repeated run would encapsulate its own output), and
//! every flow is in the flow table before the rounds start, so what is measured is the
//! established-flow path. The route lookup finds no route out of the test device, so the
//! packets go to the stack (`XDP_PASS`) after the rewrite; on a live balancer the same lookup
//! decides `XDP_TX`.
//!
//! The live part (`crate::lb_live`) measures the same established-flow path on live frames,
//! against plain forwarding and nftables' DNAT load balancing with conntrack, in the same run.
//! IPVS, the usual kernel load balancer, needs `CONFIG_IP_VS`: the suite records whether
//! `/proc/net/ip_vs` exists and measures nothing it cannot measure.

use std::{fmt::Write as _, path::Path, time::Instant};

use anyhow::{Context as _, Result, bail};
use palisade::{
    craft,
    guard::FIREWALL,
    policy::{config, model::Policy},
};
use serde::Serialize;

use crate::{
    harness::{FLOOR_PASS, Loaded},
    inspect::{self, Machine},
    lb_live,
    rng::Rng,
    runner::Spread,
    utc_now,
    workload::XDP_PASS,
};

const VIP: &str = "192.0.2.80";
const PORT: u16 = 80;

pub struct LbSettings {
    pub mode: &'static str,
    pub rounds: usize,
    /// Flows (one packet each) per target and round.
    pub packets: usize,
    pub seed: u64,
    /// The live part, unless skipped.
    pub live: Option<lb_live::LiveSettings>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub id: String,
    pub what: String,
    /// Median over rounds of the median kernel time of one run, ns.
    pub run_ns: Spread,
    /// The same, less the floor of the same round.
    pub above_floor_ns: Spread,
}

#[derive(Debug, Clone, Serialize)]
pub struct LbReport {
    pub generated: String,
    pub command: String,
    pub mode: String,
    pub machine: Machine,
    pub rounds: usize,
    pub packets: usize,
    pub targets: Vec<TargetResult>,
    /// The DSR path above the floor, and over the firewall-only path above the floor.
    pub dsr_above_floor_ns: f64,
    pub dsr_to_firewall_ratio: f64,
    /// Whether this kernel has IPVS, the usual kernel load balancer (`/proc/net/ip_vs`).
    pub ipvs_available: bool,
    /// Live frames: Palisade against plain forwarding and nftables' DNAT.
    pub live: Option<lb_live::LiveReport>,
    /// Why the live part was not measured, when it was asked for.
    pub live_skipped: Option<String>,
    pub elapsed_s: f64,
}

fn policy(mode: Option<&str>) -> Result<Policy> {
    let mut text = String::from("[firewall]\ndefault = \"allow\"\n");
    if let Some(mode) = mode {
        let backends: Vec<String> = (1..=10)
            .map(|i| format!("{{ address = \"198.18.0.{i}\" }}"))
            .collect();
        write!(
            text,
            "[lb]\nhash_seed = 1\nflow_insert_rate = 0\nencap_source_v4 = \"198.19.0.0/24\"\n\
             [[lb.service]]\nname = \"bench\"\nvip = \"{VIP}\"\nport = {PORT}\nmode = \"{mode}\"\n\
             backends = [{}]\n",
            backends.join(", ")
        )?;
    }
    Ok(config::parse_policy(&text, "bench.toml", Path::new("/"))?)
}

/// An ACK with 64 bytes of data from client `i` to the VIP.
fn ack(i: usize) -> Vec<u8> {
    let src = format!("10.{}.{}.{}", 64 + (i >> 16) % 64, (i >> 8) & 255, i & 255);
    craft::Frame::tcp(&src, VIP, 20000 + (i % 40000) as u16, PORT, 0x10)
        .with_payload(&[0x61; 64])
        .build()
}

struct Target<'a> {
    id: &'static str,
    what: &'static str,
    bench: &'a Loaded,
    program: &'static str,
}

/// Kernel ns of one run of each packet.
fn measure(t: &Target<'_>, frames: &[Vec<u8>]) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(frames.len());
    for f in frames {
        let r = t.bench.run_prog(t.program, f, 1)?;
        if r.action != XDP_PASS {
            bail!("{}: got XDP action {}, expected XDP_PASS", t.id, r.action);
        }
        out.push(r.duration.as_nanos() as f64);
    }
    Ok(out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// # Errors
/// When an object cannot be loaded, a policy installed or a run fails.
pub fn run(s: &LbSettings, command: String) -> Result<LbReport> {
    let started = Instant::now();
    let mut rng = Rng::new(s.seed ^ 0x1b);
    let frames: Vec<Vec<u8>> = (0..s.packets).map(ack).collect();
    let mut plain = Loaded::new(true).context("loading the kernel object")?;
    plain.install(&policy(None)?)?;
    let mut dsr = Loaded::new(true).context("loading the kernel object")?;
    dsr.install(&policy(Some("dsr"))?)?;
    let mut dnat = Loaded::new(true).context("loading the kernel object")?;
    dnat.install(&policy(Some("dnat"))?)?;
    let targets = [
        Target {
            id: "floor-pass",
            what: "the empty program",
            bench: &plain,
            program: FLOOR_PASS,
        },
        Target {
            id: "firewall",
            what: "the packet through the firewall, no service (passed to the stack)",
            bench: &plain,
            program: FIREWALL,
        },
        Target {
            id: "lb-dsr",
            what: "an established flow: firewall, flow table, IPIP encapsulation, route lookup",
            bench: &dsr,
            program: FIREWALL,
        },
        Target {
            id: "lb-dnat",
            what: "an established flow: firewall, flow table, destination rewrite, route lookup",
            bench: &dnat,
            program: FIREWALL,
        },
    ];
    // Warm up: every flow goes into the flow tables (no insertion limit here).
    for t in &targets {
        measure(t, &frames)?;
    }
    for b in [&dsr, &dnat] {
        let flows = palisade::lb::flow_count(&b.ebpf)?;
        if flows != frames.len() {
            bail!("{flows} flows in the table, expected {}", frames.len());
        }
    }
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut above: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for _ in 0..s.rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        rng.shuffle(&mut order);
        let mut medians = vec![0.0; targets.len()];
        for &i in &order {
            medians[i] = median(&mut measure(&targets[i], &frames)?);
        }
        for i in 0..targets.len() {
            runs[i].push(medians[i]);
            above[i].push(medians[i] - medians[0]);
        }
    }
    let results: Vec<TargetResult> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| TargetResult {
            id: t.id.to_string(),
            what: t.what.to_string(),
            run_ns: Spread::of(&runs[i]),
            above_floor_ns: Spread::of(&above[i]),
        })
        .collect();
    // Each configuration's check counts the frames leaving toward the backends: they must
    // reach the stack.
    let live_frames = crate::flood::live_frames();
    let live = s
        .live
        .as_ref()
        .filter(|_| live_frames)
        .map(|l| lb_live::run(l, &mut dnat, &mut dsr, &mut plain))
        .transpose()?;
    let live_skipped =
        (s.live.is_some() && !live_frames).then(|| crate::flood::LIVE_REFUSED.to_string());
    let dsr_ns = results[2].above_floor_ns.median;
    let fw_ns = results[1].above_floor_ns.median;
    Ok(LbReport {
        generated: utc_now(),
        command,
        mode: s.mode.to_string(),
        machine: inspect::machine(None),
        rounds: s.rounds,
        packets: s.packets,
        targets: results,
        dsr_above_floor_ns: dsr_ns,
        dsr_to_firewall_ratio: if fw_ns > 0.0 { dsr_ns / fw_ns } else { 0.0 },
        ipvs_available: Path::new("/proc/net/ip_vs").exists(),
        live,
        live_skipped,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

impl LbReport {
    fn table(&self) -> String {
        let mut m = String::from(
            "| target | what | one run, ns (median, min-max over rounds) | above the floor, ns |\n|---|---|---:|---:|\n",
        );
        for t in &self.targets {
            let _ = writeln!(
                m,
                "| {} | {} | {:.0} ({:.0}-{:.0}) | {:.0} ({:.0}-{:.0}) |",
                t.id,
                t.what,
                t.run_ns.median,
                t.run_ns.min,
                t.run_ns.max,
                t.above_floor_ns.median,
                t.above_floor_ns.min,
                t.above_floor_ns.max
            );
        }
        m
    }

    fn ipvs_line(&self) -> &'static str {
        if self.ipvs_available {
            "IPVS is in this kernel, but this suite does not measure it yet."
        } else {
            if self.live.is_some() {
                "IPVS, the usual kernel load balancer, is not in this kernel (`CONFIG_IP_VS` \
                 off, no /proc/net/ip_vs): no IPVS figure and no ratio against it; nftables' \
                 DNAT with conntrack is the kernel peer measured on live frames."
            } else {
                "IPVS, the usual kernel load balancer, is not in this kernel (`CONFIG_IP_VS` \
                 off, no /proc/net/ip_vs): no IPVS figure and no ratio against it."
            }
        }
    }

    pub fn terminal(&self) -> String {
        let live = self.live.as_ref().map_or_else(String::new, |l| {
            format!("\nLive frames:\n{}\n{}\n", l.table(), l.summary())
        });
        format!(
            "{}\nDSR, established flow: {:.0} ns above the floor, {:.2}x the firewall alone.\n{live}{}",
            self.table(),
            self.dsr_above_floor_ns,
            self.dsr_to_firewall_ratio,
            self.ipvs_line()
        )
    }

    fn live_section(&self) -> String {
        let Some(l) = &self.live else {
            return match &self.live_skipped {
                Some(why) => format!("The live part was not measured: {why}.\n"),
                None => "The live part was skipped (`--lb-no-live`).\n".to_string(),
            };
        };
        format!(
            "## Live frames\n\n{} established flows (one 64-byte ACK each, in turn) to the VIP, \
             spread over {} backends, generated with XDP live frames as if received by the \
             balancer's interface, on one pinned CPU; {} rounds, each measuring every \
             configuration in a shuffled order for {} windows of {} ms after a 300 ms warm-up. \
             CPU ns per packet of the generator's thread and its CPU's ksoftirqd; *above the \
             floor* is less `forward` of the same round. Every configuration's packets were \
             counted leaving toward all {} backends (a check pass over every flow, counted by \
             nftables in postrouting), Palisade's counters showed every packet rewritten and \
             handed to the stack, from the flow table but for each flow's first packet, and \
             nftables' NAT rule translated each flow once (netfilter's conntrack the rest).\n\n{}\n{}\n\nnftables' ruleset:\n\n```\n{}```\n",
            l.flows,
            l.backends.len(),
            l.rounds,
            l.windows,
            l.window_ms,
            l.backends.len(),
            l.table(),
            l.summary(),
            l.nft_ruleset
        )
    }

    /// Writes `lb-MODE.md` and `.json` into `dir`; returns the file stem.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write(&self, dir: &Path) -> Result<String> {
        std::fs::create_dir_all(dir)?;
        let stem = format!("lb-{}", self.mode);
        let md = format!(
            "# Load-balancer suite\n\nGenerated {} by `{}` in {:.0} s. Kernel {}. {} rounds of \
             {} established flows (one 64-byte ACK each) per target, each run once per \
             `BPF_PROG_TEST_RUN`; the kernel's time of each run, median per round.\n\n{}\n\
             An established DSR flow costs **{:.0} ns** above the floor, {:.2} times what the \
             same packet costs through the firewall alone.\n\n{}\n{}\n",
            self.generated,
            self.command,
            self.elapsed_s,
            self.machine.kernel,
            self.rounds,
            self.packets,
            self.table(),
            self.dsr_above_floor_ns,
            self.dsr_to_firewall_ratio,
            self.live_section(),
            self.ipvs_line()
        );
        std::fs::write(dir.join(format!("{stem}.md")), md)?;
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(self)?,
        )?;
        Ok(stem)
    }
}
