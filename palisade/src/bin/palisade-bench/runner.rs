//! Measuring: `BPF_PROG_TEST_RUN` over every packet of a workload, in interleaved rounds.
//!
//! One *measurement* of a target runs each of its packets `repeat` times and takes the mean of
//! the per-run times the kernel reports. A *round* measures every target once, in an order
//! shuffled anew each round, so that drift (frequency, noisy neighbours, cache state) spreads
//! over all targets instead of landing on whichever ran last. Costs above the floor are taken
//! within a round, against the floor measured in that same round.

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::{
    harness::Loaded,
    rng::Rng,
    workload::{Probe, ProbeClass},
};

/// What a target's verdicts must be.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Every packet gets this action (the floor programs).
    Always(u32),
    /// Each packet gets its probe's action (the firewall).
    PerProbe,
}

/// A program, its packets and how often to repeat each.
pub struct Target<'a> {
    pub id: String,
    pub bench: &'a Loaded,
    pub program: &'static str,
    pub probes: &'a [Probe],
    pub expect: Expect,
    pub repeat: u32,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Mean over the packets of the kernel's mean time per run, ns.
    pub kernel_ns: f64,
    /// The same from the wall clock around each syscall, spread over `repeat` runs. It also
    /// counts the syscall, the setup and any time the thread was not running, so it is only a
    /// cross-check on an idle machine.
    pub wall_ns: f64,
    pub by_class: BTreeMap<ProbeClass, f64>,
    pub elapsed_ms: f64,
    /// CPU time this thread used during the measurement.
    pub cpu_ms: f64,
}

impl Target<'_> {
    /// Runs every packet once with `repeat` and checks the verdicts.
    ///
    /// # Errors
    /// When the kernel refuses the run or a verdict is not the expected one.
    pub fn measure(&self, repeat: u32) -> Result<Sample> {
        let start = Instant::now();
        let cpu_start = crate::inspect::thread_cpu_seconds();
        let mut kernel = 0.0;
        let mut wall = 0.0;
        let mut classes: BTreeMap<ProbeClass, (f64, usize)> = BTreeMap::new();
        for (i, p) in self.probes.iter().enumerate() {
            let t = Instant::now();
            let out = self.bench.run_prog(self.program, &p.frame, repeat)?;
            let w = t.elapsed().as_nanos() as f64 / f64::from(repeat);
            let expected = match self.expect {
                Expect::Always(a) => a,
                Expect::PerProbe => p.action,
            };
            if out.action != expected {
                bail!(
                    "{}: packet {i} ({}) got XDP action {}, expected {expected}",
                    self.id,
                    p.class.name(),
                    out.action
                );
            }
            let k = out.duration.as_nanos() as f64;
            kernel += k;
            wall += w;
            let c = classes.entry(p.class).or_default();
            c.0 += k;
            c.1 += 1;
        }
        let n = self.probes.len() as f64;
        Ok(Sample {
            kernel_ns: kernel / n,
            wall_ns: wall / n,
            by_class: classes
                .into_iter()
                .map(|(c, (sum, count))| (c, sum / count as f64))
                .collect(),
            elapsed_ms: start.elapsed().as_secs_f64() * 1e3,
            cpu_ms: (crate::inspect::thread_cpu_seconds() - cpu_start) * 1e3,
        })
    }

    /// Picks `repeat` so that one measurement takes about `target_ms` of kernel time, from a
    /// short trial run. The trial also warms the caches and the branch predictors.
    ///
    /// Kernel time, not wall time: the kernel's timer stops while the test run yields the CPU,
    /// so on a busy machine the wall clock says more about the neighbours than about us.
    ///
    /// # Errors
    /// When the trial run fails.
    pub fn calibrate(&mut self, target_ms: f64) -> Result<()> {
        const TRIAL: u32 = 2_000;
        let s = self.measure(TRIAL)?;
        let want = target_ms * 1e6 / (s.kernel_ns.max(1.0) * self.probes.len() as f64);
        // Round to a thousand so the numbers in the report read easily.
        self.repeat = ((want / 1000.0).round() as u32).clamp(1, 5_000) * 1000;
        Ok(())
    }
}

/// Everything the rounds measured.
pub struct Rounds {
    /// `samples[target][round]`.
    pub samples: Vec<Vec<Sample>>,
    /// The order of each round, as target indices.
    pub orders: Vec<Vec<usize>>,
}

/// Runs `rounds` rounds over `targets`.
///
/// # Errors
/// When a measurement fails.
pub fn run_rounds(
    targets: &[Target<'_>],
    rounds: usize,
    rng: &mut Rng,
    mut progress: impl FnMut(usize, &str, &Sample),
) -> Result<Rounds> {
    let mut samples: Vec<Vec<Sample>> =
        targets.iter().map(|_| Vec::with_capacity(rounds)).collect();
    let mut orders = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        rng.shuffle(&mut order);
        for &i in &order {
            let s = targets[i].measure(targets[i].repeat)?;
            progress(round, &targets[i].id, &s);
            samples[i].push(s);
        }
        orders.push(order);
    }
    Ok(Rounds { samples, orders })
}

/// Median, minimum and maximum.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn spread_of_odd_and_even() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }
}
