//! Live traffic: real frames across a veth pair, dropped by Palisade or by the usual
//! alternatives holding the same blocklist. Reports CPU time per packet and packets per
//! CPU-second.
//!
//! A private namespace holds a veth pair `gen` — `filt`. `palisade_bench_redirect` runs under
//! `BPF_PROG_TEST_RUN` in live-frames mode on one pinned CPU and sends a rotating set of 64
//! frames out of `gen`, every one from a blocklisted source. They arrive on `filt`, where the
//! filter under test sits. veth hands the frames to the receiving side's NAPI on the CPU that
//! sent them, and that runs when the test run re-enables bottom halves, inside the same
//! syscall: the CPU time of the sending thread (plus `ksoftirqd` on that CPU, should softirq
//! work be deferred) is the whole cost of a packet, generation + veth + filter. The XDP_DROP
//! floor measures generation + veth alone, and is subtracted.
//!
//! CPU time rather than wall time: this machine may be shared, and the CPU time a thread
//! used does not count the time its neighbours ran.
//!
//! Every non-XDP filter needs an XDP program on `filt` all the same (veth only accepts
//! redirected frames on a peer that runs XDP), so they run behind the XDP_PASS floor, which
//! the "no filter" line measures: packets go up the stack and a blackhole route discards them.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    maps::Array,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use palisade::{
    craft::{Frame, L4},
    guard::FIREWALL,
    policy::model::{Action, AddrMatch, IpSet, Policy},
    testrun::sum_counter,
};
use palisade_common::stats;
use serde::Serialize;

use crate::{
    harness::{FLOOR_DROP, FLOOR_PASS, Loaded},
    inspect::{self, Conditions, Machine},
    netns::{DispatcherPin, Netns},
    plot::{Chart, Point, Reference, Series},
    rng::Rng,
    runner::Spread,
    workload::{cidr, empty_policy, public_v4, rule, short_count},
};

const GENERATOR: &str = "palisade_bench_redirect";
/// Must match `BENCH_FRAME_LEN` and `BENCH_TEMPLATES` in `palisade-ebpf/src/bench.rs`.
const FRAME_LEN: usize = 64;
const TEMPLATES: u32 = 64;
/// Frames per batch in live mode (the kernel's default NAPI weight).
const BATCH: u32 = 64;
const GEN_IF: &str = "gen";
const FILT_IF: &str = "filt";
/// `craft` frames are addressed to this MAC; `filt` takes it so the stack accepts them.
const FILT_MAC: &str = "02:00:00:00:00:02";
const NFT_TABLE: &str = "palisade_bench";
/// A configuration whose windows spread more than this (max over min, less one) is marked
/// noisy in the report: on a shared machine a burst of other work lands on some windows.
const NOISY: f64 = 0.15;
const IPSET: &str = "palisade_bench";

/// What sits on `filt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tool {
    /// XDP_PASS: the stack receives every packet (and a blackhole route discards it).
    NoFilter,
    /// XDP_DROP: the cost of generation and veth alone.
    XdpDrop,
    /// Palisade with N drop rules, one /32 source each.
    Palisade,
    /// Palisade with one drop rule whose source is a set of N /32.
    PalisadeSet,
    /// nftables, netdev ingress hook, one rule on a hash set of N addresses.
    Nft,
    /// iptables (legacy), raw PREROUTING, N rules in a linear chain.
    Iptables,
    /// iptables (legacy) raw PREROUTING, one rule on an ipset `hash:ip` of N addresses.
    Ipset,
    /// xdp-tools' xdp-filter (IPv4 feature only), N source addresses.
    XdpFilter,
}

impl Tool {
    const fn label(self) -> &'static str {
        match self {
            Self::NoFilter => "no filter (XDP_PASS, stack, blackhole route)",
            Self::XdpDrop => "XDP_DROP floor (generation + veth only)",
            Self::Palisade => "Palisade, N rules",
            Self::PalisadeSet => "Palisade, 1 rule on a set of N",
            Self::Nft => "nftables netdev ingress, set of N",
            Self::Iptables => "iptables-legacy raw, N rules (linear)",
            Self::Ipset => "iptables-legacy raw + ipset hash:ip of N",
            Self::XdpFilter => "xdp-filter, N addresses",
        }
    }

    /// The label with N filled in.
    fn describe(self, n: usize) -> String {
        let text = self.label().replace('N', &short_count(n));
        if n == 1 {
            text.replace(" 1 rules", " 1 rule")
                .replace(" 1 addresses", " 1 address")
        } else {
            text
        }
    }

    const fn slug(self) -> &'static str {
        match self {
            Self::NoFilter => "no-filter",
            Self::XdpDrop => "xdp-drop",
            Self::Palisade => "palisade",
            Self::PalisadeSet => "palisade-set",
            Self::Nft => "nft",
            Self::Iptables => "iptables",
            Self::Ipset => "ipset",
            Self::XdpFilter => "xdp-filter",
        }
    }

    /// The commands the tool needs.
    const fn needs(self) -> &'static [&'static str] {
        match self {
            Self::Nft => &["nft"],
            Self::Iptables => &[
                "iptables-legacy",
                "iptables-legacy-restore",
                "iptables-legacy-save",
            ],
            Self::Ipset => &["ipset", "iptables-legacy", "iptables-legacy-save"],
            Self::XdpFilter => &["xdp-filter"],
            _ => &[],
        }
    }

    const fn color(self) -> &'static str {
        match self {
            Self::Palisade => "#1f6fb4",
            Self::PalisadeSet => "#d9641e",
            Self::Nft => "#2a9d4b",
            Self::Iptables => "#c0392b",
            Self::Ipset => "#8e44ad",
            Self::XdpFilter => "#b8860b",
            Self::NoFilter | Self::XdpDrop => "#888888",
        }
    }

    const SCALED: [Self; 6] = [
        Self::Palisade,
        Self::PalisadeSet,
        Self::Nft,
        Self::Iptables,
        Self::Ipset,
        Self::XdpFilter,
    ];
}

pub struct LiveSettings {
    pub mode: &'static str,
    pub sizes: Vec<usize>,
    /// Length of one measurement window.
    pub window: Duration,
    pub windows: usize,
    pub cpu: usize,
    pub seed: u64,
    pub nice: i32,
    /// xdp-filter takes one process per address; above this it is skipped.
    pub xdp_filter_max: usize,
    pub out: std::path::PathBuf,
}

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
    pub windows: usize,
    pub results: Vec<LiveResult>,
    /// Configurations not measured, and why.
    pub skipped: Vec<(String, String)>,
}

fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args` in the namespace with `input` on stdin.
fn ns_run(ns: &Netns, program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let mut cmd = ns.command(program);
    cmd.args(args);
    let what = format!("{program} {}", args.join(" "));
    let Some(input) = input else {
        return run_checked(&mut cmd, &what);
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespace with the veth pair, set up so that passed packets die quietly.
fn topology() -> Result<Netns> {
    let ns = Netns::create("live")?;
    ns.ip(&[
        "link", "add", GEN_IF, "type", "veth", "peer", "name", FILT_IF,
    ])?;
    ns.ip(&["link", "set", FILT_IF, "address", FILT_MAC])?;
    for (key, value) in [
        ("net.ipv6.conf.all.disable_ipv6", "1"),
        ("net.ipv6.conf.default.disable_ipv6", "1"),
        // Forwarding on, so the blackhole route discards without an ICMP error.
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ] {
        ns_run(&ns, "sysctl", &["-qw", &format!("{key}={value}")], None)?;
    }
    ns.ip(&["link", "set", GEN_IF, "up"])?;
    ns.ip(&["link", "set", FILT_IF, "up"])?;
    ns.ip(&["route", "add", "blackhole", "198.18.0.0/15"])?;
    Ok(ns)
}

/// `n` distinct public /32 sources.
fn blocklist(n: usize, seed: u64) -> Vec<std::net::Ipv4Addr> {
    let mut rng = Rng::new(seed ^ 0x11fe ^ n as u64);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let a = public_v4(&mut rng);
        if seen.insert(a) {
            out.push(a);
        }
    }
    out
}

/// 64 frames from sources spread evenly over the list (so a linear chain matches, on
/// average, halfway down), half UDP, half TCP SYN, each exactly [`FRAME_LEN`] bytes.
fn templates(list: &[std::net::Ipv4Addr], rng: &mut Rng) -> Vec<[u8; FRAME_LEN]> {
    (0..TEMPLATES as usize)
        .map(|k| {
            let src = list[k * list.len() / TEMPLATES as usize];
            let dst = std::net::Ipv4Addr::from(0xc612_0000 | (rng.u32() & 0x0001_ffff));
            let sport = 32_768 + (rng.u16() >> 1);
            let l4 = if k % 2 == 0 {
                L4::Udp { sport, dport: 9 }
            } else {
                L4::Tcp {
                    sport,
                    dport: 80,
                    flags: 0x02,
                }
            };
            let mut f = Frame::new(src.into(), dst.into(), l4);
            let header = f.build().len();
            f.payload = vec![0x5a; FRAME_LEN - header];
            let bytes = f.build();
            let mut out = [0u8; FRAME_LEN];
            out.copy_from_slice(&bytes);
            out
        })
        .collect()
}

/// Nanoseconds a thread has spent on a CPU, from `/proc/<pid>/schedstat`.
fn schedstat_ns(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn ksoftirqd(cpu: usize) -> Option<u32> {
    let want = format!("ksoftirqd/{cpu}");
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        (fs::read_to_string(e.path().join("comm")).ok()?.trim() == want).then_some(pid)
    })
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One measurement window.
#[derive(Debug, Clone, Copy)]
struct Window {
    packets: u64,
    wall_s: f64,
    cpu_s: f64,
}

/// The sending side: a thread pinned to one CPU, inside the namespace.
struct Generator<'a> {
    prog: &'a Xdp,
    ns: &'a Netns,
    cpu: usize,
    nice: i32,
    softirqd: Option<u32>,
    /// Frames per test run, tuned to about 50 ms of work.
    chunk: u32,
    /// Every frame sent so far.
    sent: u64,
}

impl Generator<'_> {
    fn send(&self, frames: u32) -> Result<()> {
        let frame = [0u8; FRAME_LEN];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        opts.repeat = frames;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
        self.prog
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN in live-frames mode")?;
        Ok(())
    }

    /// Sends for `warmup`, then measures `windows` windows of `len`.
    fn run(&mut self, warmup: Duration, len: Duration, windows: usize) -> Result<Vec<Window>> {
        let (cpu, nice, ns) = (self.cpu, self.nice, self.ns);
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<Vec<Window>> {
                    inspect::pin_to_cpu(cpu)?;
                    if nice != 0 {
                        let _ = inspect::raise_priority(nice);
                    }
                    ns.enter(|| {
                        self.timed(warmup)?;
                        (0..windows).map(|_| self.timed(len)).collect()
                    })?
                })
                .join()
                .map_err(|_| anyhow!("the generator thread panicked"))?
        })
    }

    fn timed(&mut self, len: Duration) -> Result<Window> {
        let start = Instant::now();
        let cpu0 = thread_cpu_ns();
        let soft0 = self.softirqd.map_or(0, schedstat_ns);
        let mut packets = 0u64;
        while start.elapsed() < len {
            let t = Instant::now();
            self.send(self.chunk)?;
            packets += u64::from(self.chunk);
            let took = t.elapsed().as_secs_f64().max(1e-6);
            self.chunk = ((f64::from(self.chunk) * 0.05 / took) as u32).clamp(BATCH, 1 << 22);
        }
        self.sent += packets;
        let cpu =
            thread_cpu_ns() - cpu0 + self.softirqd.map_or(0, schedstat_ns).saturating_sub(soft0);
        Ok(Window {
            packets,
            wall_s: start.elapsed().as_secs_f64(),
            cpu_s: cpu as f64 / 1e9,
        })
    }
}

/// A filter in place on `filt`; removing it is the caller's job (see [`Installed::remove`]).
enum Installed {
    /// An XDP program of the base object.
    Xdp {
        program: &'static str,
        link: XdpLinkId,
    },
    /// A non-XDP tool behind the XDP_PASS floor.
    Stack {
        tool: Tool,
        pass: XdpLinkId,
    },
    XdpFilter,
}

fn attach(base: &mut Loaded, ns: &Netns, program: &'static str) -> Result<XdpLinkId> {
    let prog = base.xdp_mut(program)?;
    ns.enter(|| prog.attach(FILT_IF, XdpMode::Driver))?
        .map_err(|e| anyhow!("attaching {program} to {FILT_IF}: {e}"))
}

fn detach(base: &mut Loaded, program: &'static str, link: XdpLinkId) -> Result<()> {
    base.xdp_mut(program)?
        .detach(link)
        .map_err(|e| anyhow!("detaching {program}: {e}"))
}

fn blocklist_policy(tool: Tool, list: &[std::net::Ipv4Addr]) -> Policy {
    let mut p = empty_policy();
    if tool == Tool::PalisadeSet {
        p.sets.push(IpSet {
            name: "blocklist".into(),
            entries: list.iter().map(|a| cidr(*a, 32)).collect(),
        });
        p.firewall
            .rules
            .push(rule(Action::Drop, AddrMatch::Set(0), None));
    } else {
        p.firewall.rules = list
            .iter()
            .map(|a| rule(Action::Drop, AddrMatch::Cidrs(vec![cidr(*a, 32)]), None))
            .collect();
    }
    p
}

fn install(
    tool: Tool,
    list: &[std::net::Ipv4Addr],
    base: &mut Loaded,
    ns: &Netns,
) -> Result<Installed> {
    Ok(match tool {
        Tool::NoFilter => Installed::Xdp {
            program: FLOOR_PASS,
            link: attach(base, ns, FLOOR_PASS)?,
        },
        Tool::XdpDrop => Installed::Xdp {
            program: FLOOR_DROP,
            link: attach(base, ns, FLOOR_DROP)?,
        },
        Tool::Palisade | Tool::PalisadeSet => {
            base.install(&blocklist_policy(tool, list))?;
            Installed::Xdp {
                program: FIREWALL,
                link: attach(base, ns, FIREWALL)?,
            }
        }
        Tool::Nft | Tool::Iptables | Tool::Ipset | Tool::XdpFilter => {
            if let Err(e) = install_tool(tool, list, ns) {
                remove_tool(tool, ns);
                return Err(e);
            }
            if tool == Tool::XdpFilter {
                Installed::XdpFilter
            } else {
                Installed::Stack {
                    tool,
                    pass: attach(base, ns, FLOOR_PASS)?,
                }
            }
        }
    })
}

/// Puts the rules of a tool other than Palisade in place.
fn install_tool(tool: Tool, list: &[std::net::Ipv4Addr], ns: &Netns) -> Result<()> {
    match tool {
        Tool::Nft => {
            let mut t = format!(
                "table netdev {NFT_TABLE} {{\n  set blocklist {{\n    type ipv4_addr\n    size {}\n    elements = {{ ",
                list.len().max(1) * 2
            );
            for (i, a) in list.iter().enumerate() {
                let _ = write!(t, "{}{a}", if i == 0 { "" } else { ", " });
            }
            let _ = write!(
                t,
                " }}\n  }}\n  chain ingress {{\n    type filter hook ingress device \"{FILT_IF}\" priority 0; policy accept;\n    ip saddr @blocklist counter drop\n  }}\n}}\n"
            );
            ns_run(ns, "nft", &["-f", "-"], Some(&t))?;
        }
        Tool::Iptables => {
            let mut t = String::from("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
            for a in list {
                let _ = writeln!(t, "-A PREROUTING -s {a}/32 -j DROP");
            }
            t.push_str("COMMIT\n");
            ns_run(ns, "iptables-legacy-restore", &[], Some(&t))?;
        }
        Tool::Ipset => {
            let mut t = format!(
                "create {IPSET} hash:ip family inet hashsize {} maxelem {}\n",
                list.len().next_power_of_two().max(1024),
                list.len().max(1) * 2
            );
            for a in list {
                let _ = writeln!(t, "add {IPSET} {a}");
            }
            ns_run(ns, "ipset", &["restore"], Some(&t))?;
            ns_run(
                ns,
                "iptables-legacy",
                &[
                    "-t",
                    "raw",
                    "-A",
                    "PREROUTING",
                    "-m",
                    "set",
                    "--match-set",
                    IPSET,
                    "src",
                    "-j",
                    "DROP",
                ],
                None,
            )?;
        }
        Tool::XdpFilter => {
            ns_run(
                ns,
                "xdp-filter",
                &["load", FILT_IF, "-m", "native", "-p", "allow", "-f", "ipv4"],
                None,
            )?;
            for a in list {
                ns_run(ns, "xdp-filter", &["ip", "-m", "src", &a.to_string()], None)?;
            }
        }
        _ => bail!("{} is not a separate tool", tool.slug()),
    }
    Ok(())
}

/// Takes a tool's rules out again. Errors are ignored: after a failed setup there may be
/// nothing to remove.
fn remove_tool(tool: Tool, ns: &Netns) {
    let steps: &[(&str, &[&str])] = match tool {
        Tool::Nft => &[("nft", &["delete", "table", "netdev", NFT_TABLE])],
        Tool::Iptables => &[("iptables-legacy", &["-t", "raw", "-F", "PREROUTING"])],
        Tool::Ipset => &[
            ("iptables-legacy", &["-t", "raw", "-F", "PREROUTING"]),
            ("ipset", &["destroy", IPSET]),
        ],
        Tool::XdpFilter => &[("xdp-filter", &["unload", FILT_IF])],
        _ => &[],
    };
    for (program, args) in steps {
        let _ = ns_run(ns, program, args, None);
    }
}

/// The sum of the first number after each `marker` in `text`.
fn sum_after(text: &str, marker: &str) -> u64 {
    text.match_indices(marker)
        .filter_map(|(i, _)| {
            text[i + marker.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .find(|s| !s.is_empty())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// Packets `iptables-save -c` counts on DROP rules.
fn iptables_drops(save: &str) -> u64 {
    save.lines()
        .filter(|l| l.contains("-j DROP"))
        .filter_map(|l| {
            let inner = l.strip_prefix('[')?.split(']').next()?;
            inner.split(':').next()?.parse::<u64>().ok()
        })
        .sum()
}

impl Installed {
    /// Packets the filter says it dropped, where it keeps a count.
    fn dropped(&self, base: &Loaded, ns: &Netns) -> Result<Option<u64>> {
        Ok(match self {
            Self::Xdp { program, .. } if *program == FIREWALL => {
                Some(sum_counter(&base.ebpf, "STATS", stats::DROPPED)?)
            }
            Self::Xdp { .. } => None,
            Self::Stack {
                tool: Tool::Nft, ..
            } => {
                let out = ns_run(ns, "nft", &["list", "table", "netdev", NFT_TABLE], None)?;
                Some(sum_after(&out, "counter packets "))
            }
            Self::Stack { .. } => {
                let out = ns_run(ns, "iptables-legacy-save", &["-c", "-t", "raw"], None)?;
                Some(iptables_drops(&out))
            }
            Self::XdpFilter => {
                let out = ns_run(ns, "xdp-filter", &["status"], None)?;
                Some(sum_after(&out, "XDP_DROP"))
            }
        })
    }

    fn remove(self, base: &mut Loaded, ns: &Netns) -> Result<()> {
        match self {
            Self::Xdp { program, link } => detach(base, program, link),
            Self::Stack { tool, pass } => {
                remove_tool(tool, ns);
                detach(base, FLOOR_PASS, pass)
            }
            Self::XdpFilter => {
                remove_tool(Tool::XdpFilter, ns);
                Ok(())
            }
        }
    }
}

/// Configurations to measure, in order, and those skipped with the reason.
struct Plan {
    todo: Vec<(Tool, usize)>,
    skipped: Vec<(String, String)>,
}

/// Every configuration to measure, in order, with the reason for any that are skipped.
fn plan(s: &LiveSettings) -> Plan {
    let mut todo = vec![(Tool::NoFilter, 0), (Tool::XdpDrop, 0)];
    let mut skipped = Vec::new();
    for tool in Tool::SCALED {
        let missing: Vec<&str> = tool.needs().iter().copied().filter(|c| !have(c)).collect();
        for &n in &s.sizes {
            let id = format!("{}-{}", tool.slug(), short_count(n));
            if !missing.is_empty() {
                skipped.push((id, format!("not installed: {}", missing.join(", "))));
            } else if tool == Tool::XdpFilter && n > s.xdp_filter_max {
                skipped.push((
                    id,
                    format!(
                        "xdp-filter adds one address per process; above {} that takes minutes",
                        s.xdp_filter_max
                    ),
                ));
            } else {
                todo.push((tool, n));
            }
        }
    }
    Plan { todo, skipped }
}

/// What every configuration's measurement shares.
struct Context<'a> {
    s: &'a LiveSettings,
    ns: &'a Netns,
}

/// Sets up one configuration, sends through it, takes it down again.
fn measure_one(
    cx: &Context<'_>,
    base: &mut Loaded,
    tool: Tool,
    n: usize,
    id: &str,
    largest: usize,
    rng: &mut Rng,
) -> Result<LiveResult> {
    let (s, ns) = (cx.s, cx.ns);
    // Rule-less configurations get the traffic of the largest list.
    let list = blocklist(if n == 0 { largest } else { n }, s.seed);
    {
        let frames = templates(&list, rng);
        let mut m: Array<_, [u8; FRAME_LEN]> = Array::try_from(
            base.ebpf
                .map_mut("BENCH_FRAMES")
                .ok_or_else(|| anyhow!("no BENCH_FRAMES map"))?,
        )?;
        for (i, f) in frames.iter().enumerate() {
            m.set(i as u32, *f, 0)?;
        }
    }
    let rules = if n == 0 { &[][..] } else { &list[..] };
    let t = Instant::now();
    let installed = install(tool, rules, base, ns).with_context(|| format!("setting up {id}"))?;
    let setup_ms = t.elapsed().as_secs_f64() * 1e3;
    let before = installed.dropped(base, ns);
    let mut generator = Generator {
        prog: base
            .ebpf
            .program(GENERATOR)
            .ok_or_else(|| anyhow!("no {GENERATOR}"))?
            .try_into()?,
        ns,
        cpu: s.cpu,
        nice: s.nice,
        softirqd: ksoftirqd(s.cpu),
        chunk: 4096,
        sent: 0,
    };
    let windows = generator.run(Duration::from_millis(300), s.window, s.windows);
    let sent = generator.sent;
    let after = installed.dropped(base, ns);
    // Always take the filter down, whatever happened while sending.
    let removed = installed.remove(base, ns);
    let windows = windows.with_context(|| format!("sending through {id}"))?;
    removed.with_context(|| format!("removing {id}"))?;
    let dropped = match (before?, after?) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let per = |f: fn(&Window) -> f64| Spread::of(&windows.iter().map(f).collect::<Vec<_>>());
    let cpu_ns = per(|w| w.cpu_s * 1e9 / w.packets as f64);
    Ok(LiveResult {
        id: id.to_string(),
        tool,
        label: tool.describe(n),
        rules: n,
        packets: windows.iter().map(|w| w.packets).sum(),
        cpu_ns_per_packet: cpu_ns,
        // Filled in once the floor is known.
        above_floor_ns: None,
        mpps_per_core: per(|w| w.packets as f64 / w.cpu_s / 1e6),
        wall_mpps: per(|w| w.packets as f64 / w.wall_s / 1e6),
        dropped_fraction: dropped.map(|d| d as f64 / sent.max(1) as f64),
        setup_ms,
    })
}

/// Runs the live suite and writes `live-<mode>.{md,json,svg}`.
///
/// # Errors
/// When the namespace, the generator or a filter cannot be set up.
pub fn run(s: &LiveSettings, command: String) -> Result<LiveReport> {
    let started = Instant::now();
    let load_start = inspect::loadavg();
    let Plan { todo, skipped } = plan(s);
    for (id, why) in &skipped {
        eprintln!("  skipping {id}: {why}");
    }

    let mut pin = DispatcherPin::new()?;
    let ns = topology()?;
    let mut base = Loaded::new(false)?;
    base.load_xdp(GENERATOR)?;
    // A generator that stays in the XDP dispatcher: no RCU waits around each test run.
    pin.pin(base.xdp_mut(GENERATOR)?)?;
    let gen_ifindex: u32 = ns.enter(|| {
        let name = std::ffi::CString::new(GEN_IF).expect("no NUL");
        // SAFETY: a valid C string.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    })?;
    if gen_ifindex == 0 {
        bail!("no interface {GEN_IF} in {}", ns.name);
    }
    {
        let mut m: Array<_, u32> = Array::try_from(
            base.ebpf
                .map_mut("BENCH_IFINDEX")
                .ok_or_else(|| anyhow!("no BENCH_IFINDEX map"))?,
        )?;
        m.set(0, gen_ifindex, 0)?;
    }

    let mut rng = Rng::new(s.seed);
    let largest = s.sizes.iter().copied().max().unwrap_or(1).max(1);
    let mut results: Vec<LiveResult> = Vec::new();
    let mut skipped = skipped;
    for (tool, n) in todo {
        let id = if n == 0 {
            tool.slug().to_string()
        } else {
            format!("{}-{}", tool.slug(), short_count(n))
        };
        let cx = Context { s, ns: &ns };
        match measure_one(&cx, &mut base, tool, n, &id, largest, &mut rng) {
            Ok(r) => {
                eprintln!(
                    "  {id:<18} {:>8.1} ns/packet CPU, {:>6.2} Mpps per core, dropped {}, setup {:.0} ms",
                    r.cpu_ns_per_packet.median,
                    r.mpps_per_core.median,
                    r.dropped_fraction
                        .map_or_else(|| "n/a".into(), |f| format!("{:.1} %", f * 100.0)),
                    r.setup_ms
                );
                results.push(r);
            }
            Err(e) => {
                eprintln!("  {id:<18} FAILED: {e:#}");
                skipped.push((id, format!("failed: {e:#}")));
            }
        }
    }
    let floor = results
        .iter()
        .find(|r| r.tool == Tool::XdpDrop)
        .map(|r| r.cpu_ns_per_packet.median);
    for r in &mut results {
        r.above_floor_ns = floor.map(|f| r.cpu_ns_per_packet.median - f);
    }
    // Objects first, then the namespaces their programs were attached in.
    drop(base);
    drop(ns);
    drop(pin);
    Ok(LiveReport {
        suite: "live",
        mode: s.mode.to_string(),
        generated_at: crate::utc_now(),
        command,
        machine: inspect::machine(Some(s.cpu)),
        conditions: Conditions {
            loadavg_start: load_start,
            loadavg_end: inspect::loadavg(),
            cpu_seconds: inspect::cpu_seconds(),
            wall_seconds: started.elapsed().as_secs_f64(),
        },
        window_ms: s.window.as_millis(),
        windows: s.windows,
        results,
        skipped,
    })
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
             program, i.e. generation and veth. {} windows of {} ms per configuration (median \
             [min–max]); configurations are not interleaved (setting up 100k iptables rules takes \
             a while), so a burst of other work on the machine lands on one configuration: \
             those whose windows spread by more than {:.0} % are marked (noisy), and their \
             minimum is the better estimate. `dropped` is the tool's own counter over every frame \
             sent, warm-up included.\n",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_parsed() {
        let nft =
            "table netdev t {\n chain c {\n ip saddr @b counter packets 1234 bytes 99 drop\n }\n}";
        assert_eq!(sum_after(nft, "counter packets "), 1234);
        let save = "*raw\n:PREROUTING ACCEPT [5:300]\n[7:420] -A PREROUTING -s 1.2.3.4/32 -j DROP\n[3:1] -A PREROUTING -s 1.2.3.5/32 -j DROP\nCOMMIT\n";
        assert_eq!(iptables_drops(save), 10);
    }

    #[test]
    fn templates_are_frame_sized_and_from_the_list() {
        let list = blocklist(1000, 1);
        let t = templates(&list, &mut Rng::new(2));
        assert_eq!(t.len(), TEMPLATES as usize);
        for f in &t {
            let Ok(palisade_common::packet::Frame::Ip(p)) = palisade_common::packet::parse(&f[..])
            else {
                panic!("template does not parse");
            };
            let src = std::net::Ipv4Addr::new(p.src[12], p.src[13], p.src[14], p.src[15]);
            assert!(list.contains(&src));
        }
    }
}
