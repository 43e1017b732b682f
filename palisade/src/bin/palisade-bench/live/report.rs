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
    /// The same less the XDP_DROP floor measured in the same round: what the filter costs,
    /// median [min–max] over rounds.
    pub above_floor_ns: Option<Spread>,
    /// `above_floor_ns` over Palisade's at the same N (the cheaper of its rules and its set),
    /// medians: how many times Palisade's cost the tool pays.
    pub ratio_to_palisade: Option<f64>,
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

/// Fills in every scaled configuration's ratio to Palisade at the same N: Palisade with N
/// rules or with one rule on a set of N, whichever costs less (both hold the same list).
pub fn compare_to_palisade(results: &mut [LiveResult]) {
    let palisade = |n: usize| -> Option<f64> {
        results
            .iter()
            .filter(|r| r.rules == n && matches!(r.tool, Tool::Palisade | Tool::PalisadeSet))
            .filter_map(|r| r.above_floor_ns.as_ref().map(|a| a.median))
            .reduce(f64::min)
    };
    let ratios: Vec<Option<f64>> = results
        .iter()
        .map(|r| {
            let own = r.above_floor_ns.as_ref()?.median;
            let base = palisade(r.rules)?;
            (r.rules > 0 && base > 0.0).then(|| own / base)
        })
        .collect();
    for (r, ratio) in results.iter_mut().zip(ratios) {
        r.ratio_to_palisade = ratio;
    }
}

impl LiveReport {
    fn table(&self) -> String {
        let mut t = String::from(
            "| configuration | N | CPU ns/packet | **above XDP_DROP floor (ns)** | vs Palisade | Mpps per core | Mpps wall | dropped | setup (ms) |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
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
                "| {}{noisy} | {} | {:.1} [{:.1}–{:.1}] | {} | {} | {:.2} [{:.2}–{:.2}] | {:.2} | {} | {:.0} |",
                r.label,
                if r.rules == 0 {
                    "–".into()
                } else {
                    r.rules.to_string()
                },
                r.cpu_ns_per_packet.median,
                r.cpu_ns_per_packet.min,
                r.cpu_ns_per_packet.max,
                r.above_floor_ns.as_ref().map_or_else(
                    || "–".into(),
                    |a| format!("**{:.1}** [{:.1}–{:.1}]", a.median, a.min, a.max)
                ),
                r.ratio_to_palisade
                    .map_or_else(|| "–".into(), |v| format!("{v:.2}×")),
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

    /// Cost above the floor against N, one line per tool, both axes logarithmic (a linear
    /// chain and a hash lookup differ by three decades).
    pub fn chart(&self) -> Chart<'_> {
        let mut series = Vec::new();
        for tool in Tool::SCALED {
            let points: Vec<Point> = self
                .results
                .iter()
                .filter(|r| r.tool == tool && r.rules > 0)
                .filter_map(|r| {
                    let a = r.above_floor_ns.as_ref()?;
                    Some(Point {
                        x: r.rules as f64,
                        y: a.median,
                        lo: a.min,
                        hi: a.max,
                        note: None,
                    })
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
            .filter(|r| r.tool == Tool::NoFilter)
            .filter_map(|r| {
                let a = r.above_floor_ns.as_ref()?;
                Some(Reference {
                    label: format!("{} ({:.0} ns)", r.label, a.median),
                    color: "#aaaaaa",
                    y: a.median,
                })
            })
            .collect();
        Chart {
            title: "Dropping a blocklisted flood: CPU ns per packet above XDP_DROP (veth, live frames)",
            x_label: "N (rules or set entries) — log scale",
            y_label: "ns per packet above the floor — log scale (lower is better)",
            series,
            references,
            log_y: true,
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
             that CPU) is the whole cost of a packet. **above floor** is the filter's cost: each \
             round's CPU ns/packet less the XDP_DROP program's (generation and veth) in the same \
             round, median [min–max] over rounds. **vs Palisade** divides it by Palisade's at the \
             same N (the cheaper of N rules and one rule on a set of N). {} rounds, each setting \
             up every configuration once in a shuffled order and measuring {} windows of {} ms \
             after a 300 ms warm-up; the other cells are median [min–max] over all windows. Configurations whose windows spread by \
             more than {:.0} % are marked (noisy): a burst of other work on the machine landed on \
             some of them, and the minimum is the better estimate. `dropped` is the tool's own \
             counter over every frame sent, warm-up included.\n",
            self.rounds,
            self.windows,
            self.window_ms,
            NOISY * 100.0
        );
        m.push_str(&self.table());
        let _ = writeln!(m, "\n![CPU per packet above the floor against N]({svg})\n");
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
            "{:<20} {:>8} {:>14} {:>12} {:>12} {:>10} {:>9}",
            "configuration",
            "N",
            "CPU ns/packet",
            "above floor",
            "vs Palisade",
            "Mpps/core",
            "dropped"
        );
        for r in &self.results {
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>14.1} {:>12} {:>12} {:>10.2} {:>9}",
                r.id,
                r.rules,
                r.cpu_ns_per_packet.median,
                r.above_floor_ns
                    .as_ref()
                    .map_or_else(|| "-".into(), |a| format!("{:.1}", a.median)),
                r.ratio_to_palisade
                    .map_or_else(|| "-".into(), |v| format!("{v:.2}x")),
                r.mpps_per_core.median,
                r.dropped_fraction
                    .map_or_else(|| "-".into(), |f| format!("{:.1}%", f * 100.0))
            );
        }
        s
    }
}
