//! The kernel object, loaded for measuring.
//!
//! Unlike `palisade::testrun::Bench`, which stops at the first program that fails to load,
//! every program is loaded on its own here: the ones the measurements need must verify, the
//! others (the DNS programs) are only reported. A benchmark that dies because an unrelated
//! program broke says nothing about the firewall; one that measures it and reports the
//! failure loudly says both.

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{Program, TestRun as _, TestRunOptions, Xdp},
};
use palisade::{
    guard::{self, DNS_EGRESS, DNS_INGRESS, FIREWALL},
    loader,
    policy::model::Policy,
    testrun::Outcome,
};

pub const FLOOR_PASS: &str = "palisade_floor_pass";
pub const FLOOR_DROP: &str = "palisade_floor_drop";

/// Programs the measurements run: a failure to load any of them is fatal.
const REQUIRED: [&str; 3] = [FIREWALL, FLOOR_PASS, FLOOR_DROP];
/// Programs only reported on.
const REPORTED: [&str; 6] = [
    DNS_INGRESS,
    guard::CT_INGRESS,
    guard::RULES,
    guard::SYNCOOKIE,
    guard::LB,
    DNS_EGRESS,
];

/// Every program the verifier report covers, in report order.
pub const ALL_PROGRAMS: [&str; 9] = [
    FIREWALL,
    DNS_INGRESS,
    guard::CT_INGRESS,
    guard::RULES,
    guard::SYNCOOKIE,
    guard::LB,
    DNS_EGRESS,
    FLOOR_PASS,
    FLOOR_DROP,
];

/// Why a program did not load: the verifier's last words and its instruction count.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub program: &'static str,
    pub summary: String,
    pub processed_insns: Option<u32>,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub failures: Vec<LoadFailure>,
    /// XDP programs of other tools run next to this object's ([`Loaded::adopt`]), by name.
    foreign: Vec<(&'static str, Xdp)>,
}

impl Loaded {
    /// Loads the object and verifies the programs the measurements need, and with `all` the
    /// others too (once is enough for the verifier report: the policy lives in maps, so every
    /// copy verifies the same way).
    ///
    /// # Errors
    /// When the object cannot be loaded or a program the measurements need fails to verify.
    pub fn new(all: bool) -> Result<Self> {
        let mut ebpf = loader::load()?;
        let mut failures = Vec::new();
        let reported: &[&'static str] = if all { &REPORTED } else { &[] };
        for name in REQUIRED.into_iter().chain(reported.iter().copied()) {
            if let Err(e) = load_one(&mut ebpf, name) {
                let failure = summarize(name, &e);
                if REQUIRED.contains(&name) {
                    bail!("{name} failed to load: {}", failure.summary);
                }
                failures.push(failure);
            }
        }
        if all
            && !failures
                .iter()
                .any(|f| guard::TAILS.iter().any(|(_, n)| *n == f.program))
        {
            guard::link_tail_calls(&mut ebpf)?;
        }
        Ok(Self {
            ebpf,
            failures,
            foreign: Vec::new(),
        })
    }

    /// Compiles and installs `policy` as the daemon does.
    ///
    /// # Errors
    /// When the policy cannot be compiled or written.
    pub fn install(&mut self, policy: &Policy) -> Result<()> {
        guard::install(&mut self.ebpf, policy)?;
        Ok(())
    }

    /// Loads (verifies) one more XDP program of the object.
    ///
    /// # Errors
    /// When it fails to load.
    pub fn load_xdp(&mut self, name: &'static str) -> Result<()> {
        load_one(&mut self.ebpf, name)
            .map_err(|e| anyhow!("{name}: {}", summarize(name, &e).summary))
    }

    /// The XDP program `name`, to attach it somewhere.
    ///
    /// # Errors
    /// When there is no such XDP program.
    pub fn xdp_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?)
    }

    /// Takes another tool's loaded XDP program (xdp-filter's), to run it as `name`.
    pub fn adopt(&mut self, name: &'static str, prog: Xdp) {
        self.foreign.push((name, prog));
    }

    /// Runs the XDP program `name` (of the object, or adopted) on `frame`, `repeat` times.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_prog(&self, name: &str, frame: &[u8], repeat: u32) -> Result<Outcome> {
        let prog: &Xdp = match self.foreign.iter().find(|(n, _)| *n == name) {
            Some((_, p)) => p,
            None => self
                .ebpf
                .program(name)
                .ok_or_else(|| anyhow!("no program {name}"))?
                .try_into()?,
        };
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let r = prog
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {name}"))?;
        Ok(Outcome {
            action: r.return_value,
            duration: r.duration,
        })
    }
}

fn load_one(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    match ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the object has no program {name}"))?
    {
        Program::Xdp(p) => p.load()?,
        Program::CgroupSkb(p) => p.load()?,
        _ => bail!("{name}: unexpected program type"),
    }
    Ok(())
}

/// The useful part of a load error: the verifier's complaint and its instruction count, not
/// the thousands of lines of trace before them.
fn summarize(program: &'static str, e: &anyhow::Error) -> LoadFailure {
    let text = format!("{e:#}");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let processed_insns = lines.iter().find_map(|l| {
        l.strip_prefix("processed ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    });
    let end = lines
        .iter()
        .position(|l| l.starts_with("verification time"))
        .unwrap_or(lines.len());
    // The complaint: the lines just before the statistics that are not instruction traces.
    let complaint: Vec<&str> = lines[..end]
        .iter()
        .rev()
        .take_while(|l| !l.starts_with(|c: char| c.is_ascii_digit()))
        .copied()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let summary = if complaint.is_empty() {
        lines
            .first()
            .copied()
            .unwrap_or("unknown error")
            .to_string()
    } else {
        complaint.join(" / ")
    };
    LoadFailure {
        program,
        summary,
        processed_insns,
    }
}
