//! The conntrack suite (`--conntrack`): what connection tracking costs.
//!
//! - **Per packet.** A packet of an established TCP flow through the stateful pipeline (the
//!   firewall, the tracker stage, accepted as established) against the same packet through the
//!   stateless firewall with the same rules (`[conntrack] enabled = false`), both under
//!   `BPF_PROG_TEST_RUN` and above the empty program measured in the same round. The
//!   difference is what the tracker's lookup and update cost.
//! - **Sweep.** The in-kernel sweep over a table filled with N established flows: once when
//!   nothing expires (the daemon's sweep every second), once when everything does.
//!
//! - **Live.** Established flows on real traffic through a veth pair, Palisade stateful
//!   against nftables with netfilter's conntrack ([`live`]).
//!
//! See `bench/README.md` for the method.

mod live;

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, ensure};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use palisade::{
    conntrack::{self, read_stats, sweep_program, sweep_timed, write_config},
    craft::TcpSegment,
    guard::FIREWALL,
    loader,
    policy::{config, model::Policy},
};
use palisade_common::{
    conntrack::{
        CS_ACCEPTED, CS_ESTABLISHED, CS_INVALID, CS_PROMOTED, CtConfig, CtDir, CtEntry, CtKey,
        DIR_SEEN, SWEEP_EXPIRE, SweepRequest, TABLE_EST, TCP_ESTABLISHED, bytes_to_words,
    },
    packet::{FAMILY_V4, IPPROTO_TCP, TCP_ACK, TCP_PSH, TCP_SYN},
};
use serde::Serialize;

use crate::{
    harness::{FLOOR_PASS, Loaded},
    inspect, netns,
    rng::Rng,
    runner::{self, Expect, Spread, Target},
    utc_now,
    workload::{PROBES, Probe, ProbeClass, XDP_PASS, short_count},
};

/// The goal for the tracker's cost per packet, ns above the stateless path.
const GOAL_NS: f64 = 40.0;
/// Default capacity of the table of validated flows.
const CT_EST_DEFAULT: u32 = 262_144;
/// The TC verdict of the egress tracker (`TC_ACT_UNSPEC`).
const TC_CONTINUE: u32 = u32::MAX;

const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SSH: u16 = 22;

/// The rules of both pipelines: SSH allowed in, everything else dropped.
const RULES: &str = r#"
[firewall]
default = "drop"
STATEFUL

[[firewall.rule]]
name = "ssh-in"
action = "allow"
proto = "tcp"
dport = 22
"#;

pub struct CtSettings {
    pub mode: &'static str,
    pub out: PathBuf,
    pub rounds: usize,
    pub target_ms: f64,
    /// Entries in the table for the sweep.
    pub sweep_entries: usize,
    pub sweep_rounds: usize,
    pub seed: u64,
    pub cpu: Option<usize>,
    /// Live traffic: `None` skips it.
    pub live: Option<live::LiveCtSettings>,
}

pub use live::LiveCtSettings;

fn policy(stateful: bool) -> Result<Policy> {
    let text = if stateful {
        RULES.replace("STATEFUL", "stateful = true")
    } else {
        RULES.replace("STATEFUL", "") + "\n[conntrack]\nenabled = false\n"
    };
    config::parse_policy(&text, "conntrack-bench.toml", Path::new("."))
        .map_err(|e| anyhow!("bench policy: {e}"))
}

/// One of the measured flows: a peer connected to the host's SSH port.
struct Flow {
    peer: IpAddr,
    port: u16,
    /// Initial sequence numbers of the peer and of the host.
    isn: u32,
    host_isn: u32,
}

impl Flow {
    fn new(i: usize) -> Self {
        Self {
            peer: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + 1 + i as u32).into(),
            port: 40_000 + i as u16,
            isn: 1_000 + i as u32 * 7_919,
            host_isn: 3_000_000 + i as u32 * 104_729,
        }
    }

    fn inbound(&self, flags: u8, seq: u32, ack: u32, payload: usize) -> Vec<u8> {
        TcpSegment::new(self.port, SSH, flags, seq, ack)
            .with_payload(payload)
            .frame(self.peer, HOST.into())
    }

    fn outbound(&self, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
        TcpSegment::new(SSH, self.port, flags, seq, ack).frame(HOST.into(), self.peer)
    }

    /// The measured packet: 64 bytes of data from the peer, inside the windows. Run again
    /// and again it stays inside them (a retransmission), so every run is established.
    fn data(&self) -> Vec<u8> {
        self.inbound(
            TCP_ACK | TCP_PSH,
            self.isn.wrapping_add(1),
            self.host_isn.wrapping_add(1),
            64,
        )
    }
}

/// Runs the TC egress tracker on `frame`.
fn egress(prog: &SchedClassifier, frame: &[u8]) -> Result<()> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN (TC)")?;
    ensure!(
        r.return_value == TC_CONTINUE,
        "the egress tracker returned {}",
        r.return_value
    );
    Ok(())
}

/// Opens every flow through its handshake: SYN in, SYN-ACK out, ACK in.
fn establish(bench: &mut Loaded, flows: &[Flow]) -> Result<()> {
    let tc: &mut SchedClassifier = bench
        .ebpf
        .program_mut(conntrack::EGRESS)
        .ok_or_else(|| anyhow!("no program {}", conntrack::EGRESS))?
        .try_into()?;
    tc.load()
        .with_context(|| format!("verifying {}", conntrack::EGRESS))?;
    let before = read_stats(&bench.ebpf)?;
    let tc: &SchedClassifier = bench
        .ebpf
        .program(conntrack::EGRESS)
        .ok_or_else(|| anyhow!("no program {}", conntrack::EGRESS))?
        .try_into()?;
    for f in flows {
        let (p, h) = (f.isn.wrapping_add(1), f.host_isn.wrapping_add(1));
        for (what, frame) in [
            ("SYN", Some(f.inbound(TCP_SYN, f.isn, 0, 0))),
            ("SYN-ACK", None),
            ("ACK", Some(f.inbound(TCP_ACK, p, h, 0))),
        ] {
            match frame {
                Some(frame) => {
                    let a = bench.run_prog(FIREWALL, &frame, 1)?.action;
                    ensure!(a == XDP_PASS, "{what} of {}: XDP action {a}", f.peer);
                }
                None => egress(tc, &f.outbound(TCP_SYN | TCP_ACK, f.host_isn, p))?,
            }
        }
    }
    let promoted = read_stats(&bench.ebpf)?[CS_PROMOTED as usize] - before[CS_PROMOTED as usize];
    ensure!(
        promoted == flows.len() as u64,
        "{promoted} of {} handshakes reached the validated table",
        flows.len()
    );
    Ok(())
}

/// One test-run configuration's figures.
#[derive(Debug, Serialize)]
pub struct PathResult {
    pub id: String,
    pub program: &'static str,
    pub repeat: u32,
    pub ns_per_packet: Spread,
    pub above_floor_ns: Spread,
    pub per_round_ns: Vec<f64>,
}

/// What the tracker adds to an established flow's packet.
#[derive(Debug, Serialize)]
pub struct Tracking {
    /// Stateful minus stateless, per round.
    pub added_ns: Spread,
    /// Stateful over stateless, both above the floor, per round.
    pub ratio_above_floor: Spread,
    pub goal_ns: f64,
    pub within_goal: bool,
    /// Runs of the stateful pipeline, all accepted as established by the tracker (checked
    /// against its counters).
    pub established_runs: u64,
}

/// One sweep's figures over the rounds.
#[derive(Debug, Serialize)]
pub struct SweepResult {
    pub what: &'static str,
    /// Entries the sweep visited.
    pub entries: usize,
    /// Entries it removed.
    pub removed: usize,
    pub kernel_ms: Spread,
    pub ns_per_entry: Spread,
    pub per_round_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct SweepReport {
    pub entries: usize,
    /// `max_entries` of the table of validated flows, as the benchmark loaded it.
    pub capacity: u32,
    /// Filling the table from userspace, one update per entry (not a datapath cost).
    pub fill_seconds: Spread,
    /// The empty program, run once per syscall in the same rounds.
    pub floor_us: Spread,
    pub sweeps: Vec<SweepResult>,
}

#[derive(Debug, Serialize)]
pub struct CtReport {
    pub suite: &'static str,
    pub mode: String,
    pub generated_at: String,
    pub command: String,
    pub wall_seconds: f64,
    pub machine: inspect::Machine,
    pub conditions: inspect::Conditions,
    pub rounds: usize,
    pub flows: usize,
    pub target_ms_per_measurement: f64,
    pub seed: u64,
    pub rules: String,
    pub paths: Vec<PathResult>,
    pub tracking: Tracking,
    pub sweep: SweepReport,
    pub round_orders: Vec<Vec<String>>,
    pub live: Option<live::LiveCtReport>,
    /// Why the live part did not run, when it did not.
    pub live_skipped: Option<String>,
}

/// Runs the suite and writes `conntrack-<mode>.{md,json}`.
///
/// # Errors
/// When an object cannot be loaded, a policy installed, a measurement taken, or a check on
/// the traffic fails.
pub fn run(s: &CtSettings, command: String) -> Result<CtReport> {
    let started = Instant::now();
    let load_start = inspect::loadavg();
    let mut rng = Rng::new(s.seed ^ 0xc7);
    let flows: Vec<Flow> = (0..PROBES).map(Flow::new).collect();
    let probes: Vec<Probe> = flows
        .iter()
        .map(|f| Probe {
            class: ProbeClass::Port,
            frame: f.data(),
            action: XDP_PASS,
            rule: Some(0),
        })
        .collect();

    // Declared before the objects so that it outlives their attachments.
    let mut pin = netns::DispatcherPin::new()
        .map_err(|e| eprintln!("palisade-bench: warning: cannot keep programs attached ({e:#})"))
        .ok();
    let mut stateless = Loaded::new(true).context("loading the kernel object")?;
    stateless.install(&policy(false)?)?;
    let mut stateful = Loaded::new(true).context("loading the kernel object")?;
    stateful.install(&policy(true)?)?;
    establish(&mut stateful, &flows)?;
    if let Some(p) = pin.as_mut() {
        p.pin(stateless.xdp_mut(FLOOR_PASS)?)?;
        p.pin(stateless.xdp_mut(FIREWALL)?)?;
        p.pin(stateful.xdp_mut(FIREWALL)?)?;
    }
    let accepted0 = read_stats(&stateful.ebpf)?;

    let mut targets = vec![
        Target {
            id: "floor-pass".into(),
            bench: &stateless,
            program: FLOOR_PASS,
            probes: &probes,
            expect: Expect::Always(XDP_PASS),
            repeat: 0,
        },
        Target {
            id: "stateless".into(),
            bench: &stateless,
            program: FIREWALL,
            probes: &probes,
            expect: Expect::PerProbe,
            repeat: 0,
        },
        Target {
            id: "stateful".into(),
            bench: &stateful,
            program: FIREWALL,
            probes: &probes,
            expect: Expect::PerProbe,
            repeat: 0,
        },
    ];
    eprintln!(
        "palisade-bench ({} mode): conntrack, {} established flows",
        s.mode,
        flows.len()
    );
    for t in &mut targets {
        t.calibrate(s.target_ms).with_context(|| t.id.clone())?;
    }
    let runner::Rounds { samples, orders } =
        runner::run_rounds(&targets, s.rounds, &mut rng, |round, id, sample| {
            eprintln!(
                "  round {} {:<10} {:>7.1} ns/packet",
                round + 1,
                id,
                sample.kernel_ns
            );
        })?;

    // Every run of the stateful pipeline was an established packet accepted by the tracker,
    // and the stateless one tracked nothing.
    let after = read_stats(&stateful.ebpf)?;
    let runs = PROBES as u64 * (2_000 + u64::from(targets[2].repeat) * s.rounds as u64);
    let moved = |i: u32| after[i as usize] - accepted0[i as usize];
    ensure!(
        (moved(CS_ACCEPTED), moved(CS_ESTABLISHED), moved(CS_INVALID)) == (runs, runs, 0),
        "stateful runs: {runs}, accepted {}, established {}, invalid {}",
        moved(CS_ACCEPTED),
        moved(CS_ESTABLISHED),
        moved(CS_INVALID)
    );
    let untracked: u64 = read_stats(&stateless.ebpf)?.iter().sum();
    ensure!(
        untracked == 0,
        "the stateless pipeline moved tracker counters"
    );

    let ns = |i: usize| -> Vec<f64> { samples[i].iter().map(|x| x.kernel_ns).collect() };
    let floor = ns(0);
    let mut paths = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let k = ns(i);
        let above: Vec<f64> = k.iter().zip(&floor).map(|(a, f)| a - f).collect();
        paths.push(PathResult {
            id: t.id.clone(),
            program: t.program,
            repeat: t.repeat,
            ns_per_packet: Spread::of(&k),
            above_floor_ns: Spread::of(&above),
            per_round_ns: k,
        });
    }
    let (sl, sf) = (ns(1), ns(2));
    let added: Vec<f64> = sf.iter().zip(&sl).map(|(a, b)| a - b).collect();
    let ratio: Vec<f64> = sf
        .iter()
        .zip(&sl)
        .zip(&floor)
        .map(|((a, b), f)| (a - f) / (b - f))
        .collect();
    let added = Spread::of(&added);
    let tracking = Tracking {
        added_ns: added,
        ratio_above_floor: Spread::of(&ratio),
        goal_ns: GOAL_NS,
        within_goal: added.median <= GOAL_NS,
        established_runs: runs,
    };
    let round_orders = orders
        .iter()
        .map(|o| o.iter().map(|&i| targets[i].id.clone()).collect())
        .collect();
    drop(targets);
    drop(stateful);
    drop(stateless);
    drop(pin);

    let sweep = sweeps(s)?;
    let (live, live_skipped) = match &s.live {
        None => (None, Some("not asked for".to_string())),
        Some(_) if !crate::live::tools::have("nft") => (None, Some("not installed: nft".into())),
        Some(_) if !crate::flood::live_frames() => (None, Some(crate::flood::LIVE_REFUSED.into())),
        Some(l) => (Some(live::run(l)?), None),
    };
    Ok(CtReport {
        suite: "conntrack",
        mode: s.mode.to_string(),
        generated_at: utc_now(),
        command,
        wall_seconds: started.elapsed().as_secs_f64(),
        machine: inspect::machine(s.cpu),
        conditions: inspect::Conditions {
            loadavg_start: load_start,
            loadavg_end: inspect::loadavg(),
            cpu_seconds: inspect::cpu_seconds(),
            wall_seconds: started.elapsed().as_secs_f64(),
        },
        rounds: s.rounds,
        flows: flows.len(),
        target_ms_per_measurement: s.target_ms,
        seed: s.seed,
        rules: RULES.replace(
            "STATEFUL\n",
            "stateful = true | [conntrack] enabled = false\n",
        ),
        paths,
        tracking,
        sweep,
        round_orders,
        live,
        live_skipped,
    })
}

/// `CLOCK_MONOTONIC_COARSE`, the clock of the entries' timestamps.
fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Fills the table of validated flows with `n` established TCP flows, all fresh.
fn fill(ebpf: &mut Ebpf, n: usize) -> Result<()> {
    let mut m: HashMap<&mut MapData, CtKey, CtEntry> =
        HashMap::try_from(palisade::maps::map_mut(ebpf, "CT_EST")?)?;
    let now = coarse_now_ns();
    let host = bytes_to_words(&HOST.to_ipv6_mapped().octets());
    let dir = CtDir {
        end: 1,
        ackend: 65_536,
        maxwin: 65_535,
        flags: DIR_SEEN,
        packets: 1,
        ..CtDir::default()
    };
    let entry = CtEntry {
        created_ns: now,
        last_ns: now,
        dirs: [dir, dir],
        state: TCP_ESTABLISHED,
        ..CtEntry::default()
    };
    for i in 0..n as u32 {
        // Peers from 11.0.0.0 up, four ports each.
        let peer = Ipv4Addr::from(0x0b00_0000 + (i >> 2));
        let mut k = CtKey {
            a: bytes_to_words(&peer.to_ipv6_mapped().octets()),
            b: host,
            a_port: 40_000 + (i & 3) as u16,
            b_port: SSH,
            proto: IPPROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        k.canonicalize();
        m.insert(k, entry, 0)
            .with_context(|| format!("inserting entry {i} of {n}"))?;
    }
    Ok(())
}

/// The sweep, over tables filled with `sweep_entries` flows, in `sweep_rounds` rounds: fill,
/// time a sweep that keeps everything (twice), time one that expires everything.
fn sweeps(s: &CtSettings) -> Result<SweepReport> {
    let n = s.sweep_entries;
    let capacity = CT_EST_DEFAULT.max(u32::try_from(n)?);
    let mut ebpf = loader::load_sized(&[("CT_EST", capacity)])?;
    for name in [conntrack::SWEEP, FLOOR_PASS] {
        let p: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?;
        p.load().with_context(|| format!("verifying {name}"))?;
    }
    let keep_all = CtConfig::defaults();
    let expire_all = CtConfig {
        timeout_ns: [0; palisade_common::conntrack::TIMEOUTS],
        ..CtConfig::defaults()
    };
    let req = SweepRequest {
        op: SWEEP_EXPIRE,
        ..SweepRequest::default()
    };
    let (mut fills, mut floor, mut keep, mut expire) = (vec![], vec![], vec![], vec![]);
    eprintln!(
        "sweep: {} entries (table of {}), {} rounds",
        short_count(n),
        short_count(capacity as usize),
        s.sweep_rounds
    );
    for round in 0..s.sweep_rounds {
        write_config(&mut ebpf, &keep_all)?;
        let t = Instant::now();
        fill(&mut ebpf, n)?;
        fills.push(t.elapsed().as_secs_f64());
        let prog = sweep_program(&ebpf)?;
        for _ in 0..2 {
            let (c, d) = sweep_timed(prog, &ebpf, &req)?;
            let live: u32 = c.live[TABLE_EST].iter().flatten().sum();
            ensure!(
                live as usize == n && c.live[TABLE_EST][0][usize::from(TCP_ESTABLISHED)] == live,
                "sweep without expiry: {live} live entries of {n}"
            );
            keep.push(d.as_secs_f64() * 1e3);
        }
        let floor_prog: &Xdp = ebpf
            .program(FLOOR_PASS)
            .ok_or_else(|| anyhow!("no program {FLOOR_PASS}"))?
            .try_into()?;
        let frame = [0u8; 64];
        let mut out = [0u8; 128];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        opts.data_out = Some(&mut out);
        floor.push(floor_prog.test_run(opts)?.duration.as_secs_f64() * 1e6);

        let before = conntrack::census(&ebpf)?.expired[TABLE_EST];
        write_config(&mut ebpf, &expire_all)?;
        // Entries stamped in this very tick would not be past a timeout of 0 yet.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let prog = sweep_program(&ebpf)?;
        let (c, d) = sweep_timed(prog, &ebpf, &req)?;
        let removed = c.expired[TABLE_EST] - before;
        let live: u32 = c.live.iter().flatten().flatten().sum();
        ensure!(
            removed == n as u64 && live == 0,
            "sweep expiring everything: removed {removed} of {n}, {live} left"
        );
        expire.push(d.as_secs_f64() * 1e3);
        eprintln!(
            "  round {}: fill {:.2} s, sweep keeping all {:.1} ms, expiring all {:.1} ms",
            round + 1,
            fills[round],
            keep[keep.len() - 1],
            expire[round]
        );
    }
    let per_entry = |ms: &[f64]| -> Vec<f64> { ms.iter().map(|m| m * 1e6 / n as f64).collect() };
    Ok(SweepReport {
        entries: n,
        capacity,
        fill_seconds: Spread::of(&fills),
        floor_us: Spread::of(&floor),
        sweeps: vec![
            SweepResult {
                what: "nothing expires",
                entries: n,
                removed: 0,
                kernel_ms: Spread::of(&keep),
                ns_per_entry: Spread::of(&per_entry(&keep)),
                per_round_ms: keep,
            },
            SweepResult {
                what: "everything expires",
                entries: n,
                removed: n,
                kernel_ms: Spread::of(&expire),
                ns_per_entry: Spread::of(&per_entry(&expire)),
                per_round_ms: expire,
            },
        ],
    })
}

fn cell(s: &Spread, digits: usize) -> String {
    format!("{:.d$} [{:.d$}–{:.d$}]", s.median, s.min, s.max, d = digits)
}

impl CtReport {
    fn paths_table(&self) -> String {
        let mut t = String::from(
            "| pipeline | program | repeat | ns/packet | above floor (ns) |\n|---|---|---:|---:|---:|\n",
        );
        for p in &self.paths {
            let _ = writeln!(
                t,
                "| {} | `{}` | {} | {} | {} |",
                p.id,
                p.program,
                p.repeat,
                cell(&p.ns_per_packet, 1),
                cell(&p.above_floor_ns, 1)
            );
        }
        t
    }

    fn sweep_table(&self) -> String {
        let mut t = String::from(
            "| sweep | entries | removed | ms | ns per entry |\n|---|---:|---:|---:|---:|\n",
        );
        for w in &self.sweep.sweeps {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                w.what,
                w.entries,
                w.removed,
                cell(&w.kernel_ms, 1),
                cell(&w.ns_per_entry, 1)
            );
        }
        t
    }

    fn markdown(&self) -> String {
        let tr = &self.tracking;
        let mut m = format!(
            "# Palisade benchmark: connection tracking ({} mode)\n\n\
             Generated {} by `{}` in {:.0} s. Kernel {}, {} ({} CPUs{}), measured on CPU {}. \
             Load average {:.2} at the start, {:.2} at the end.\n\n\
             Method: `bench/README.md` (the conntrack suite). Cells are median [min–max] over \
             {} rounds; each round measures every pipeline once in a shuffled order.\n\n",
            self.mode,
            self.generated_at,
            self.command,
            self.wall_seconds,
            self.machine.kernel,
            self.machine.cpu_model,
            self.machine.cpus,
            if self.machine.virtualized {
                ", virtualized"
            } else {
                ""
            },
            self.machine
                .bench_cpu
                .map_or_else(|| "any".into(), |c| c.to_string()),
            self.conditions.loadavg_start,
            self.conditions.loadavg_end,
            self.rounds,
        );
        let _ = write!(
            m,
            "## An established flow's packet\n\n\
             {} established TCP flows (64 bytes of data from the peer to the host's SSH port), \
             each packet run `repeat` times under `BPF_PROG_TEST_RUN`: through the stateful \
             pipeline (accepted by the tracker as established, {} runs, every one checked \
             against the tracker's counters) and through the stateless firewall with the same \
             rule (`[conntrack] enabled = false`, the rule allows the packet).\n\n{}\n\
             **The tracker adds {} ns per packet** (stateful minus stateless, per round; goal \
             at most {:.0} ns: {}). Ratio of the two above the floor: {}.\n\n",
            self.flows,
            tr.established_runs,
            self.paths_table(),
            cell(&tr.added_ns, 1),
            tr.goal_ns,
            if tr.within_goal { "met" } else { "missed" },
            cell(&tr.ratio_above_floor, 2),
        );
        let _ = write!(
            m,
            "## The sweep\n\n\
             The table of validated flows (loaded with room for {}) filled with {} established \
             TCP flows; one `palisade_ct_sweep` run (`BPF_PROG_TEST_RUN`, one syscall) that \
             expires nothing, as the daemon's sweep each second, and one with every timeout at \
             0, which removes every entry. Kernel time of the run; the empty program run the \
             same way takes {} µs. Filling the table from userspace took {} s per round.\n\n{}\n",
            short_count(self.sweep.capacity as usize),
            short_count(self.sweep.entries),
            cell(&self.sweep.floor_us, 1),
            cell(&self.sweep.fill_seconds, 2),
            self.sweep_table(),
        );
        match (&self.live, &self.live_skipped) {
            (Some(l), _) => {
                let _ = write!(
                    m,
                    "## Live traffic\n\n\
                     {} established TCP flows across a veth pair (XDP live frames, 64-byte \
                     frames, data from the peer), learned by each tracker from a handshake sent \
                     across the pair; the stack forwards what passes to an interface that discards it. CPU ns \
                     per packet (sending thread and `ksoftirqd`), {} rounds of {} windows of {} \
                     ms; above the floor = less the no-filter line of the same round. Every data \
                     packet was accepted as established by the tracker under test (its own \
                     counters).\n\n{}\nnftables ruleset:\n\n```\n{}```\n",
                    l.flows,
                    l.rounds,
                    l.windows,
                    l.window_ms,
                    live_table(l),
                    l.nft_ruleset
                );
            }
            (None, Some(why)) => {
                let _ = write!(m, "## Live traffic\n\nNot measured: {why}.\n");
            }
            (None, None) => {}
        }
        m
    }

    /// Writes `conntrack-<mode>.{md,json}` into `dir` and returns the stem.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write(&self, dir: &Path) -> Result<String> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = format!("conntrack-{}", self.mode);
        for (name, text) in [
            (format!("{stem}.md"), self.markdown()),
            (
                format!("{stem}.json"),
                serde_json::to_string_pretty(self)? + "\n",
            ),
        ] {
            let path = dir.join(&name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(stem)
    }

    pub fn terminal(&self) -> String {
        let mut s = self.paths_table().replace('–', "-");
        let _ = writeln!(
            s,
            "tracker adds {} ns per established packet (goal {:.0} ns), ratio above floor {}",
            cell(&self.tracking.added_ns, 1).replace('–', "-"),
            self.tracking.goal_ns,
            cell(&self.tracking.ratio_above_floor, 2).replace('–', "-")
        );
        s.push_str(&self.sweep_table().replace('–', "-"));
        if let Some(l) = &self.live {
            s.push_str(&live_table(l).replace('–', "-"));
        }
        s
    }
}

fn live_table(l: &live::LiveCtReport) -> String {
    let mut t = String::from(
        "| configuration | CPU ns/packet | above floor (ns) | vs Palisade | Mpps per core | established |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in &l.results {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            r.config.slug(),
            cell(&r.cpu_ns_per_packet, 1),
            r.above_floor_ns
                .as_ref()
                .map_or_else(|| "floor".into(), |a| cell(a, 1)),
            r.ratio_to_palisade
                .map_or_else(|| "–".into(), |x| format!("{x:.2}x")),
            cell(&r.mpps_per_core, 2),
            r.established_fraction
                .map_or_else(|| "–".into(), |f| format!("{:.1} %", f * 100.0)),
        );
    }
    t
}
