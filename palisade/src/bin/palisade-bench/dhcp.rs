//! The DHCP suite: what `[dhcp]` costs the kernel per packet (the XDP firewall and the TC
//! egress program, with and without `[dhcp]` in the same round, on traffic that is not DHCP
//! and on DHCP frames that are copied or dropped), and what reading a copied frame into
//! the lease table costs the daemon, against copying the same bytes once.

use std::{fmt::Write as _, hint::black_box, net::Ipv4Addr, path::Path, time::Instant};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use palisade::{
    craft::Frame,
    dhcp::{craft::V4, runtime::Snooper},
    policy::config,
    testrun::{Bench, FIREWALL},
};
use palisade_common::dhcp::{KIND_V4_SERVER, REC_INGRESS};
use serde::Serialize;

use crate::{runner::Spread, utc_now};

pub struct DhcpSettings {
    pub mode: &'static str,
    pub rounds: usize,
    /// Runs per kernel measurement of a frame that is not copied.
    pub repeat: u32,
    /// Records read per daemon measurement.
    pub iterations: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelResult {
    pub id: String,
    pub what: String,
    /// Median over rounds of the kernel's mean ns per run, with `[dhcp]`.
    pub ns: Spread,
    /// The same less the same frame under a policy without `[dhcp]`, in the same round.
    pub above_off_ns: Spread,
    /// The program's verdict with `[dhcp]`, checked in every round: `pass` or `drop`.
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DaemonResult {
    pub id: String,
    pub what: String,
    pub bytes: usize,
    pub ns: Spread,
    /// The same divided by copying the frame's bytes once, in the same round.
    pub times_floor: Spread,
}

#[derive(Debug, Clone, Serialize)]
pub struct DhcpReport {
    pub generated: String,
    pub command: String,
    pub mode: String,
    pub rounds: usize,
    pub kernel: Vec<KernelResult>,
    pub daemon: Vec<DaemonResult>,
}

/// Records one batch of copied frames may leave in the ring before it is drained (the ring
/// holds 124).
const BATCH: u32 = 100;
const BATCHES: u32 = 40;

const ON: &str = "[dhcp]\ntrusted = [\"10.0.0.1\"]\nrogue = \"block\"\n";

/// `pass` or `drop`, from an XDP action or a TC verdict.
fn verdict_word(tc: bool, action: u32) -> &'static str {
    const XDP_DROP: u32 = 1;
    const TC_ACT_SHOT: u32 = 2;
    if action == if tc { TC_ACT_SHOT } else { XDP_DROP } {
        "drop"
    } else {
        "pass"
    }
}

/// The kernel's mean ns per run of the XDP firewall or the TC egress program on `frame`,
/// and its verdict; frames that are copied run in batches that fit the ring, drained
/// between them (every batch's records counted).
fn kernel_ns(
    b: &Bench,
    ring: &mut RingBuf<MapData>,
    tc: bool,
    frame: &[u8],
    copied: bool,
    repeat: u32,
) -> Result<(f64, &'static str)> {
    let run = |n: u32| -> Result<(f64, &'static str)> {
        let o = if tc {
            b.run_tc_repeat(palisade::dhcp::EGRESS, frame, n)?
        } else {
            b.run_prog(FIREWALL, frame, n)?
        };
        Ok((o.duration.as_secs_f64() * 1e9, verdict_word(tc, o.action)))
    };
    if !copied {
        return run(repeat);
    }
    let mut total = 0.0;
    let mut verdict = "pass";
    for _ in 0..BATCHES {
        let (ns, v) = run(BATCH)?;
        total += ns;
        verdict = v;
        let mut records = 0;
        while ring.next().is_some() {
            records += 1;
        }
        anyhow::ensure!(
            records == BATCH,
            "{BATCH} runs left {records} records in the ring"
        );
    }
    Ok((total / f64::from(BATCHES), verdict))
}

/// One frame the kernel is measured on: id, what, whether the TC egress program runs it
/// (else the XDP firewall), the frame, whether `[dhcp]` copies it, and the verdict `[dhcp]`
/// gives it.
type Target = (
    &'static str,
    &'static str,
    bool,
    Vec<u8>,
    bool,
    &'static str,
);

fn kernel_costs(s: &DhcpSettings) -> Result<Vec<KernelResult>> {
    let mut b = Bench::new()?;
    let mut ring = RingBuf::try_from(b.ebpf.take_map("DHCP_RECORDS").context("no ring")?)?;
    let mac = [2, 1, 2, 3, 4, 5];
    let yi = Ipv4Addr::new(10, 0, 0, 50);
    let targets: Vec<Target> = vec![
        (
            "xdp/tcp-syn",
            "XDP firewall: a TCP SYN (not DHCP)",
            false,
            Frame::tcp("10.0.0.9", "10.0.0.2", 40000, 443, 0x02).build(),
            false,
            "pass",
        ),
        (
            "xdp/ack-trusted",
            "XDP firewall: a trusted server's DHCPACK, copied",
            false,
            V4::reply(5, mac, yi, 3600).frame("10.0.0.1", "10.0.0.50"),
            true,
            "pass",
        ),
        (
            "xdp/ack-rogue",
            "XDP firewall: a rogue server's DHCPACK, copied and dropped",
            false,
            V4::reply(5, mac, yi, 3600).frame("10.0.0.9", "10.0.0.50"),
            true,
            "drop",
        ),
        (
            "tc/udp-dns",
            "TC egress: a DNS query (not DHCP)",
            true,
            Frame::udp("10.0.0.2", "10.0.0.53", 40000, 53)
                .with_payload(&[0; 30])
                .build(),
            false,
            "pass",
        ),
        (
            "tc/request",
            "TC egress: a client's DHCPREQUEST, copied",
            true,
            V4::request(3, mac, Some("laptop")).frame("0.0.0.0", "255.255.255.255"),
            true,
            "pass",
        ),
    ];
    let mut samples = vec![Vec::new(); targets.len()];
    for _ in 0..s.rounds {
        let mut off = Vec::new();
        for (policy, on) in [("", false), (ON, true)] {
            let p = config::parse_policy(policy, "bench.toml", Path::new("/"))?;
            b.install(&p)?;
            for (i, (id, _, tc, frame, copied, want)) in targets.iter().enumerate() {
                let (ns, verdict) = kernel_ns(&b, &mut ring, *tc, frame, *copied && on, s.repeat)?;
                if on {
                    anyhow::ensure!(verdict == *want, "{id}: {verdict}, expected {want}");
                    samples[i].push((ns, ns - off[i]));
                } else {
                    off.push(ns);
                }
            }
        }
    }
    Ok(targets
        .iter()
        .zip(samples)
        .map(|((id, what, _, _, _, want), v)| KernelResult {
            id: (*id).to_string(),
            what: (*what).to_string(),
            verdict: (*want).to_string(),
            ns: Spread::of(&v.iter().map(|x| x.0).collect::<Vec<_>>()),
            above_off_ns: Spread::of(&v.iter().map(|x| x.1).collect::<Vec<_>>()),
        })
        .collect())
}

fn daemon_costs(s: &DhcpSettings) -> Vec<DaemonResult> {
    let mac = [2, 1, 2, 3, 4, 5];
    let ack = V4::reply(5, mac, Ipv4Addr::new(10, 0, 0, 50), 3600).frame("10.0.0.1", "10.0.0.50");
    let mut ns = Vec::new();
    let mut ratio = Vec::new();
    for _ in 0..s.rounds {
        let t = Instant::now();
        for _ in 0..s.iterations {
            black_box(black_box(&ack).to_vec());
        }
        let floor = t.elapsed().as_secs_f64() * 1e9 / s.iterations as f64;
        let mut snooper = Snooper::default();
        let t = Instant::now();
        for i in 0..s.iterations {
            black_box(snooper.frame(
                black_box(&ack),
                REC_INGRESS,
                KIND_V4_SERVER,
                "eth0",
                i as u64,
            ));
        }
        let x = t.elapsed().as_secs_f64() * 1e9 / s.iterations as f64;
        ns.push(x);
        ratio.push(x / floor);
    }
    vec![DaemonResult {
        id: "daemon/ack".into(),
        what: "a DHCPACK read into the lease table (renewal), with its event".into(),
        bytes: ack.len(),
        ns: Spread::of(&ns),
        times_floor: Spread::of(&ratio),
    }]
}

/// Runs the suite.
///
/// # Errors
/// When the kernel programs cannot be loaded or run.
pub fn run(s: &DhcpSettings, command: String) -> Result<DhcpReport> {
    let kernel = kernel_costs(s)?;
    let daemon = daemon_costs(s);
    Ok(DhcpReport {
        generated: utc_now(),
        command,
        mode: s.mode.to_string(),
        rounds: s.rounds,
        kernel,
        daemon,
    })
}

impl DhcpReport {
    pub fn terminal(&self) -> String {
        let mut out = format!("DHCP snooping cost ({} rounds)\n", self.rounds);
        for k in &self.kernel {
            let _ = writeln!(
                out,
                "  {:<16} {:>8.1} ns  ({:+.1} ns above the same without [dhcp]), {}",
                k.id, k.ns.median, k.above_off_ns.median, k.verdict
            );
        }
        for d in &self.daemon {
            let _ = writeln!(
                out,
                "  {:<16} {:>8.1} ns  {:>5.1}x copying its {} bytes",
                d.id, d.ns.median, d.times_floor.median, d.bytes
            );
        }
        out
    }

    pub fn write(&self, dir: &Path) -> Result<String> {
        std::fs::create_dir_all(dir)?;
        let stem = format!("dhcp-{}", self.mode);
        let mut md = format!(
            "# DHCP snooping cost\n\n{} · `{}` · mode {}\n\n{} rounds; each round measures every \
             frame without `[dhcp]` and then with it (one trusted server, `rogue = \"block\"`).\n\n\
             ## The kernel, per packet (BPF_PROG_TEST_RUN)\n\n| packet | ns (median) | min | max | \
             above the same without [dhcp] | verdict (checked) |\n| --- | ---: | ---: | ---: | ---: | --- |\n",
            self.generated, self.command, self.mode, self.rounds
        );
        for k in &self.kernel {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {:.1} | {:+.1} | {} |",
                k.what, k.ns.median, k.ns.min, k.ns.max, k.above_off_ns.median, k.verdict
            );
        }
        md.push_str(
            "\n## The daemon, per record\n\n| record | bytes | ns (median) | min | max | x copying \
             its bytes |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for d in &self.daemon {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                d.what, d.bytes, d.ns.median, d.ns.min, d.ns.max, d.times_floor.median
            );
        }
        std::fs::write(dir.join(format!("{stem}.md")), md)?;
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(self)?,
        )?;
        Ok(stem)
    }
}
