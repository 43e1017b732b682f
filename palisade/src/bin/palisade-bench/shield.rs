//! The shield suite: what answering a SYN with a cookie from XDP costs, under
//! `BPF_PROG_TEST_RUN`, above the empty program measured in the same round, next to the same
//! SYN handed to the stack by the same policy with cookies off.
//!
//! A test run with a repeat count runs the program again on the frame it left, and the cookie
//! path turns its SYN into the SYN-ACK, so a repeated run would measure the SYN-ACK's path
//! from the second run on. Every target here therefore runs each of its packets once per
//! syscall and takes the kernel's time for that one run, over many packets; the floor is
//! measured the same way, so the timer's own cost cancels out in the difference.

use std::{fmt::Write as _, path::Path, time::Instant};

use anyhow::{Context as _, Result, bail};
use palisade::{
    craft,
    guard::FIREWALL,
    policy::{config, model::Policy},
};
use palisade_common::shield::SH_SYN_TO_STACK;
use serde::Serialize;

use crate::{
    harness::{FLOOR_PASS, Loaded},
    inspect::{self, Machine},
    rng::Rng,
    runner::Spread,
    utc_now,
    workload::XDP_PASS,
};

/// `XDP_TX`.
const XDP_TX: u32 = 3;
/// The port the SYNs go to.
const PORT: u16 = 443;
/// The goal: a cookie SYN-ACK at most this many ns above the floor.
pub const GOAL_NS: f64 = 250.0;

pub struct ShieldSettings {
    pub mode: &'static str,
    pub rounds: usize,
    /// SYNs per target and round.
    pub packets: usize,
    pub seed: u64,
    /// The live SYN flood, unless skipped.
    pub live: Option<crate::synflood::FloodSettings>,
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
pub struct ShieldReport {
    pub generated: String,
    pub command: String,
    pub mode: String,
    pub machine: Machine,
    pub rounds: usize,
    pub packets: usize,
    pub targets: Vec<TargetResult>,
    /// The cookie path's cost above the floor (median over rounds), against [`GOAL_NS`].
    pub synack_above_floor_ns: f64,
    /// The cookie path's cost above the floor over the stack path's, in the same rounds.
    pub synack_to_stack_ratio: f64,
    pub goal_ns: f64,
    /// The live SYN flood (`synflood.rs`), unless skipped.
    pub live: Option<crate::synflood::FloodReport>,
    /// Why the live SYN flood was not measured, when it was asked for.
    pub live_skipped: Option<String>,
    pub elapsed_s: f64,
}

fn policy(cookies: &str) -> Result<Policy> {
    let text = format!(
        "[firewall]\ndefault = \"drop\"\nstateful = true\n\
         [[firewall.rule]]\naction = \"allow\"\nproto = \"tcp\"\ndport = {PORT}\n\
         [shield]\nsyn_ports = [{PORT}]\nsyn_cookies = \"{cookies}\"\ntcp_invalid = \"drop\"\n"
    );
    Ok(config::parse_policy(&text, "bench.toml", Path::new("/"))?)
}

/// A Linux-like SYN (MSS, SACK, timestamp, window scale) from source `i`.
fn syn(i: usize) -> Vec<u8> {
    let src = format!("10.{}.{}.{}", 64 + (i >> 16) % 64, (i >> 8) & 255, i & 255);
    let mut options = vec![2, 4, 5, 180, 4, 2, 8, 10];
    options.extend_from_slice(&(i as u32).to_be_bytes());
    options.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, 7]);
    craft::TcpSegment::new(20000 + (i % 40000) as u16, PORT, 0x02, i as u32, 0).frame_with_options(
        craft::ip(&src),
        craft::ip("192.0.2.1"),
        &options,
    )
}

struct Target<'a> {
    id: &'static str,
    what: &'static str,
    bench: &'a Loaded,
    program: &'static str,
    action: u32,
}

/// Kernel ns of one run of each packet; a run that went to the stack to keep the listener
/// taking cookies (once per 30 s) is left out.
fn measure(t: &Target<'_>, frames: &[Vec<u8>]) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(frames.len());
    for f in frames {
        let before = if t.action == XDP_TX {
            palisade::shield::counters(&t.bench.ebpf)?[SH_SYN_TO_STACK as usize]
        } else {
            0
        };
        let r = t.bench.run_prog(t.program, f, 1)?;
        if r.action != t.action {
            let after = palisade::shield::counters(&t.bench.ebpf)?[SH_SYN_TO_STACK as usize];
            if t.action == XDP_TX && r.action == XDP_PASS && after > before {
                continue;
            }
            bail!(
                "{}: got XDP action {}, expected {}",
                t.id,
                r.action,
                t.action
            );
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
pub fn run(s: &ShieldSettings, command: String) -> Result<ShieldReport> {
    let started = Instant::now();
    let mut rng = Rng::new(s.seed ^ 0x5c);
    let frames: Vec<Vec<u8>> = (0..s.packets).map(syn).collect();
    let mut off = Loaded::new(true).context("loading the kernel object")?;
    off.install(&policy("off")?)?;
    let mut on = Loaded::new(true).context("loading the kernel object")?;
    on.install(&policy("on")?)?;
    let targets = [
        Target {
            id: "floor-pass",
            what: "the empty program",
            bench: &off,
            program: FLOOR_PASS,
            action: XDP_PASS,
        },
        Target {
            id: "syn-to-stack",
            what: "a SYN through the tracker and the rules, passed to the stack (cookies off)",
            bench: &off,
            program: FIREWALL,
            action: XDP_PASS,
        },
        Target {
            id: "syn-cookie",
            what: "a SYN answered with a cookie SYN-ACK from XDP (cookies on)",
            bench: &on,
            program: FIREWALL,
            action: XDP_TX,
        },
    ];
    // Warm up, and let the first SYN per listener go to the stack before measuring.
    for t in &targets {
        measure(t, &frames[..frames.len().min(200)])?;
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
    let synack = results[2].above_floor_ns.median;
    let stack = results[1].above_floor_ns.median;
    drop((off, on));
    // The flood's peers (the kernel's own SYN cookies, the clients) need frames that reach
    // the stack.
    let live_frames = crate::flood::live_frames();
    let live = s
        .live
        .as_ref()
        .filter(|_| live_frames)
        .map(crate::synflood::run)
        .transpose()?;
    let live_skipped =
        (s.live.is_some() && !live_frames).then(|| crate::flood::LIVE_REFUSED.to_string());
    Ok(ShieldReport {
        generated: utc_now(),
        command,
        mode: s.mode.to_string(),
        machine: inspect::machine(None),
        rounds: s.rounds,
        packets: s.packets,
        targets: results,
        synack_above_floor_ns: synack,
        synack_to_stack_ratio: if stack > 0.0 { synack / stack } else { 0.0 },
        goal_ns: GOAL_NS,
        live,
        live_skipped,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

impl ShieldReport {
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

    pub fn terminal(&self) -> String {
        let live = self
            .live
            .as_ref()
            .map(|l| format!("\n\nlive SYN flood:\n{}\n{}", l.table(), l.summary()))
            .unwrap_or_default();
        format!(
            "{}\ncookie SYN-ACK: {:.0} ns above the floor, {:.2}x the stack path's (goal at most {:.0} ns: {}){live}",
            self.table(),
            self.synack_above_floor_ns,
            self.synack_to_stack_ratio,
            self.goal_ns,
            if self.synack_above_floor_ns <= self.goal_ns {
                "met"
            } else {
                "not met"
            }
        )
    }

    /// Writes `shield-MODE.md` and `.json` into `dir`; returns the file stem.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write(&self, dir: &Path) -> Result<String> {
        std::fs::create_dir_all(dir)?;
        let stem = format!("shield-{}", self.mode);
        let md = format!(
            "# Shield suite\n\nGenerated {} by `{}` in {:.0} s. Kernel {}. {} rounds of {} SYNs \
             per target, each run once per `BPF_PROG_TEST_RUN` (the cookie path rewrites its \
             packet, so runs are not repeated); the kernel's time of each run, median per \
             round.\n\n{}\nThe cookie SYN-ACK costs **{:.0} ns** above the floor, {:.2} times what \
             the same SYN costs on its way to the stack; the goal is at most {:.0} ns.\n",
            self.generated,
            self.command,
            self.elapsed_s,
            self.machine.kernel,
            self.rounds,
            self.packets,
            self.table(),
            self.synack_above_floor_ns,
            self.synack_to_stack_ratio,
            self.goal_ns
        );
        let md = match &self.live {
            Some(l) => format!(
                "{md}\n## Live SYN flood\n\n{} s of flood per configuration in each of {} \
                 rounds (configurations shuffled within a round), every SYN from a new spoofed \
                 source, generated with XDP live frames on CPU {} as if received by the guarded host's veth; {} real clients on the \
                 other CPUs connect to the flooded port, send a line and read it back (3 s \
                 limits), counted by when they start. CPU is that of the flood's CPU per SYN: \
                 the generator's thread (the XDP programs, the kernel's SYN handling and the \
                 softirq work raised when each batch ends all run in it) and ksoftirqd{}; the \
                 generator's own cost (its frames dropped) is subtracted. Load average {:.2} \
                 when the flood began, {:.2} when it ended: on a shared machine other work takes \
                 the flood's CPU, which moves the SYN rates much more than the CPU per SYN.\n\n\
                 {}\n{}\n",
                l.seconds,
                l.rounds,
                l.cpu,
                l.clients,
                if l.irq_time_apart {
                    ", plus that CPU's softirq time from `/proc/stat` (this kernel accounts \
                     interrupt time apart)"
                } else {
                    " (this kernel does not account interrupt time apart: softirq work is the \
                     time of the task it interrupted)"
                },
                l.loadavg.0,
                l.loadavg.1,
                l.table(),
                l.summary()
            ),
            None => match &self.live_skipped {
                Some(why) => format!("{md}\n## Live SYN flood\n\nNot measured: {why}.\n"),
                None => md,
            },
        };
        std::fs::write(dir.join(format!("{stem}.md")), md)?;
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(self)?,
        )?;
        Ok(stem)
    }
}
