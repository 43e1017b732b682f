//! The live suite's results and their markdown, JSON, SVG and terminal forms.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::Result;
use serde::Serialize;

use super::tools::Tool;
use crate::{
    inspect::{Conditions, Machine},
    plot::{Chart, Point, Reference, Series},
    runner::Spread,
};

/// A configuration whose windows spread more than this (max over min, less one) is marked
/// noisy in the report: on a shared machine a burst of other work lands on some windows.
const NOISY: f64 = 0.15;

#[derive(Debug, Clone, Serialize)]
pub struct LiveResult {
    pub id: String,
    pub tool: Tool,
    pub label: String,
    pub rules: usize,
    /// Frames sent during the measurement windows.
    pub packets: u64,
    /// CPU time per packet on the sending CPU: generation + veth + filter.
    pub cpu_ns_per_packet: Spread,
    /// The same less the XDP_DROP floor's median: what the filter costs.
    pub above_floor_ns: Option<f64>,
    /// Packets per CPU-second, in millions: what one core would sustain.
    pub mpps_per_core: Spread,
    /// Packets per wall-clock second, in millions (lower on a shared machine).
    pub wall_mpps: Spread,
    /// Dropped packets (the tool's own counter) over every frame sent, warm-up included.
    pub dropped_fraction: Option<f64>,
    /// Time to put the rules in place.
    pub setup_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct LiveReport {
    pub suite: &'static str,
    pub mode: String,
    pub generated_at: String,
    pub command: String,
    pub machine: Machine,
    pub conditions: Conditions,
    pub window_ms: u128,
    /// Windows per configuration per round.
    pub windows: usize,
    pub rounds: usize,
    pub results: Vec<LiveResult>,
    /// Configurations not measured, and why.
    pub skipped: Vec<(String, String)>,
}

impl LiveReport {
    fn table(&self) -> String {
        let mut t = String::from(
            "| configuration | rules | CPU ns/packet | above XDP_DROP floor (ns) | Mpps per core | Mpps wall | dropped | setup (ms) |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.results {
            let c = &r.cpu_ns_per_packet;
            let noisy = if c.max > c.min * (1.0 + NOISY) {
                " (noisy)"
            } else {
                ""
            };
            let _ = writeln!(
                t,
                "| {}{noisy} | {} | {:.1} [{:.1}–{:.1}] | {} | {:.2} [{:.2}–{:.2}] | {:.2} | {} | {:.0} |",
                r.label,
                if r.rules == 0 {
                    "–".into()
                } else {
                    r.rules.to_string()
                },
                r.cpu_ns_per_packet.median,
                r.cpu_ns_per_packet.min,
                r.cpu_ns_per_packet.max,
                r.above_floor_ns
                    .map_or_else(|| "–".into(), |v| format!("{v:.1}")),
                r.mpps_per_core.median,
                r.mpps_per_core.min,
                r.mpps_per_core.max,
                r.wall_mpps.median,
                r.dropped_fraction
                    .map_or_else(|| "–".into(), |f| format!("{:.1} %", f * 100.0)),
                r.setup_ms
            );
        }
        t
    }

    pub fn chart(&self) -> Chart<'_> {
        let mut series = Vec::new();
        for tool in Tool::SCALED {
            let points: Vec<Point> = self
                .results
                .iter()
                .filter(|r| r.tool == tool && r.rules > 0)
                .map(|r| Point {
                    x: r.rules as f64,
                    y: r.mpps_per_core.median,
                    lo: r.mpps_per_core.min,
                    hi: r.mpps_per_core.max,
                    note: None,
                })
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    label: tool.label().to_string(),
                    color: tool.color(),
                    points,
                });
            }
        }
        let references = self
            .results
            .iter()
            .filter(|r| r.rules == 0)
            .map(|r| Reference {
                label: format!("{} ({:.2} Mpps)", r.label, r.mpps_per_core.median),
                color: if r.tool == Tool::XdpDrop {
                    "#444444"
                } else {
                    "#aaaaaa"
                },
                y: r.mpps_per_core.median,
            })
            .collect();
        Chart {
            title: "Dropping a blocklisted flood: packets per CPU-second (veth, XDP live frames)",
            x_label: "N (rules or set entries) — log scale",
            y_label: "million packets per CPU-second (higher is better)",
            series,
            references,
        }
    }

    pub fn markdown(&self, svg: &str) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "# Live traffic: dropping a blocklisted flood ({} mode)\n",
            self.mode
        );
        let _ = writeln!(
            m,
            "Generated {} by `{}` in {:.0} s. Machine and method: [../README.md](../README.md).\n",
            self.generated_at, self.command, self.conditions.wall_seconds
        );
        let _ = writeln!(
            m,
            "Kernel {}, {} CPUs ({}), sending CPU {}. Load average {:.2} at the start, {:.2} at the end.\n",
            self.machine.kernel,
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine
                .bench_cpu
                .map_or_else(|| "-".into(), |c| c.to_string()),
            self.conditions.loadavg_start,
            self.conditions.loadavg_end
        );
        let _ = writeln!(
            m,
            "64-byte IPv4 frames (UDP and TCP SYN), every one from a source on the blocklist, are \
             generated by an XDP program under `BPF_PROG_TEST_RUN` live-frames mode and redirected \
             into a veth pair in a private namespace; the filter sits on the far end. All \
             configurations hold the same N distinct /32 sources; the traffic comes from 64 of \
             them spread evenly over the list. The receiving side runs in softirq on the sending \
             CPU, inside the same syscall, so the CPU time of the sending thread (plus ksoftirqd on \
             that CPU) is the whole cost of a packet. `above floor` subtracts the XDP_DROP \
             program, i.e. generation and veth. {} rounds, each setting up every configuration \
             once in a shuffled order and measuring {} windows of {} ms after a 300 ms warm-up; \
             cells are median [min–max] over all windows. Configurations whose windows spread by \
             more than {:.0} % are marked (noisy): a burst of other work on the machine landed on \
             some of them, and the minimum is the better estimate. `dropped` is the tool's own \
             counter over every frame sent, warm-up included.\n",
            self.rounds,
            self.windows,
            self.window_ms,
            NOISY * 100.0
        );
        m.push_str(&self.table());
        let _ = writeln!(m, "\n![packets per CPU-second against rule count]({svg})\n");
        if !self.skipped.is_empty() {
            m.push_str("Not measured:\n\n");
            for (id, why) in &self.skipped {
                let _ = writeln!(m, "- `{id}`: {why}");
            }
            m.push('\n');
        }
        m.push_str(
            "Notes: nftables, iptables and ipset run behind the XDP_PASS program (veth needs an \
             XDP program on the receiving end to accept redirected frames), so their lines \
             include the cost of building an skb and entering the stack, as they would on a real \
             NIC. xdp-filter runs behind libxdp's dispatcher and, loaded with `-f ipv4`, only \
             parses what IPv4 address matching needs; it cannot match prefixes, hence /32-only \
             lists for everyone. iptables is the legacy (x_tables) backend, the classic linear \
             chain.\n",
        );
        m
    }

    /// Writes `live-<mode>.{md,json,svg}` into `dir`.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write(&self, dir: &Path) -> Result<String> {
        fs::create_dir_all(dir)?;
        let stem = format!("live-{}", self.mode);
        let svg = format!("{stem}.svg");
        fs::write(dir.join(format!("{stem}.md")), self.markdown(&svg))?;
        fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        fs::write(dir.join(&svg), self.chart().svg())?;
        Ok(stem)
    }

    pub fn terminal(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>14} {:>12} {:>10} {:>9}",
            "configuration", "rules", "CPU ns/packet", "above floor", "Mpps/core", "dropped"
        );
        for r in &self.results {
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>14.1} {:>12} {:>10.2} {:>9}",
                r.id,
                r.rules,
                r.cpu_ns_per_packet.median,
                r.above_floor_ns
                    .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
                r.mpps_per_core.median,
                r.dropped_fraction
                    .map_or_else(|| "-".into(), |f| format!("{:.1}%", f * 100.0))
            );
        }
        s
    }
}
