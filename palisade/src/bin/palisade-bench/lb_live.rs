//! The load-balancer suite's live part: packets of established flows to a VIP, generated with
//! XDP live frames as if received by the balancer's interface, through Palisade's load
//! balancer (DNAT and DSR) and through nftables' DNAT load balancing with netfilter's
//! conntrack, against plain forwarding, in one run.
//!
//! One namespace, the balancer: `lb-in` (the interface the frames arrive on, with the XDP_PASS
//! floor attached in native mode so the test run has an XDP receive queue there) and `sink`,
//! a veth whose peer stays down, behind which sit the three backends (permanent neighbours,
//! so forwarding needs no ARP); what the stack sends there is discarded right after the
//! egress hooks. The generator (`tests/support/flood.rs`) cycles through [`FLOWS`] client
//! addresses, one 64-byte ACK each, all to the VIP's port, and runs on one pinned CPU:
//! - `forward`: the generator passes the frames to the stack, which routes the VIP to the
//!   first backend (the floor: generation, the stack's receive path, forwarding);
//! - `palisade-dnat` / `palisade-dsr`: the generator tail-calls Palisade's firewall, with a
//!   `[[lb.service]]` of the three backends; the load balancer finds the flow in its flow
//!   table and rewrites the destination (DNAT) or puts an IPIP header in front (DSR). Its
//!   route lookup finds the backends behind `sink`, another interface than the one the
//!   frames came in on, so it hands the packets to the stack (`XDP_PASS`), which forwards
//!   them: what this measures is the load balancer's work on top of forwarding, not the
//!   one-armed `XDP_TX` path;
//! - `nft-dnat`: `dnat to jhash ip saddr . tcp sport mod 3 map { ... }` in a prerouting NAT
//!   chain, with the conntrack that NAT in netfilter needs: a flow's first packet is
//!   translated by the rule, every later one by its conntrack entry.
//!
//! CPU ns per packet as the live suites count it (the generator's thread and the CPU's
//! `ksoftirqd`), less the floor of the same round. After each measurement a check table
//! counts, in postrouting, what leaves `sink` for each backend during one more pass over
//! every flow: every packet must leave, toward all three backends (IPIP for DSR, the
//! backend's address for the DNATs, the VIP for the floor). Palisade's own counters must show
//! every packet balanced and handed to the stack, and nftables' NAT rule one translation per
//! flow.
//!
//! IPVS, the usual kernel load balancer, is not in every kernel (`CONFIG_IP_VS`); where it is
//! missing, as on the machines this was built on, nftables' DNAT is the closest kernel peer.

use std::{
    net::Ipv4Addr,
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::programs::{Xdp, XdpMode};
use palisade::{guard::FIREWALL, policy::config};
use palisade_common::lb::{
    LS_DNAT_V4, LS_ENCAP_V4, LS_FLOW_HITS, LS_NEW_FLOWS, LS_PACKETS, LS_TO_STACK,
};
use serde::Serialize;

use crate::{
    flood::{Generator, Then, ifindex},
    harness::{FLOOR_PASS, Loaded},
    inspect,
    live::{
        FILT_MAC,
        tools::{have, ns_run},
        traffic::{ksoftirqd, schedstat_ns, thread_cpu_ns},
    },
    netns::Netns,
    rng::Rng,
    runner::Spread,
};

const IN_IF: &str = "lb-in";
const SINK: &str = "sink";
const PARK: &str = "park1";
const VIP: &str = "192.0.2.80";
const PORT: u16 = 80;
const BACKENDS: [&str; 3] = ["198.18.0.1", "198.18.0.2", "198.18.0.3"];
/// Established flows the generator cycles through (a power of two).
pub const FLOWS: u32 = 4096;
/// The first client address; the others follow.
const CLIENT_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
const TABLE: &str = "palisade_lb_bench";
const CHECK_TABLE: &str = "palisade_lb_check";

fn nft_ruleset() -> String {
    format!(
        "table ip {TABLE} {{\n    chain pre {{\n        type nat hook prerouting priority dstnat; \
         policy accept;\n        ip daddr {VIP} tcp dport {PORT} counter dnat to jhash ip saddr \
         . tcp sport mod 3 map {{ 0 : {}, 1 : {}, 2 : {} }}\n    }}\n}}\n",
        BACKENDS[0], BACKENDS[1], BACKENDS[2]
    )
}

/// Named counters of what leaves `sink`: to the VIP, and per backend plain TCP or IPIP.
fn check_ruleset() -> String {
    let mut counters = String::from("    counter to_vip {}\n");
    let mut rules = format!("        oifname \"{SINK}\" ip daddr {VIP} counter name \"to_vip\"\n");
    for (i, b) in BACKENDS.iter().enumerate() {
        counters.push_str(&format!(
            "    counter tcp{i} {{}}\n    counter ipip{i} {{}}\n"
        ));
        rules.push_str(&format!(
            "        oifname \"{SINK}\" ip daddr {b} ip protocol tcp counter name \"tcp{i}\"\n\
             \x20       oifname \"{SINK}\" ip daddr {b} ip protocol 4 counter name \"ipip{i}\"\n"
        ));
    }
    format!(
        "table ip {CHECK_TABLE} {{\n{counters}    chain check {{\n        type filter hook \
         postrouting priority srcnat + 10; policy accept;\n{rules}    }}\n}}\n"
    )
}

/// What is measured, in each round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    Forward,
    PalisadeDnat,
    PalisadeDsr,
    NftDnat,
}

impl Config {
    const ALL: [Self; 4] = [
        Self::Forward,
        Self::PalisadeDnat,
        Self::PalisadeDsr,
        Self::NftDnat,
    ];

    pub const fn slug(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::PalisadeDnat => "palisade-dnat",
            Self::PalisadeDsr => "palisade-dsr",
            Self::NftDnat => "nft-dnat",
        }
    }

    const fn what(self) -> &'static str {
        match self {
            Self::Forward => "the floor: the stack forwards the VIP's packets to one backend",
            Self::PalisadeDnat => {
                "Palisade's load balancer, DNAT: firewall, flow table, destination rewrite, \
                 route lookup, then forwarded"
            }
            Self::PalisadeDsr => {
                "Palisade's load balancer, DSR: firewall, flow table, IPIP header, route \
                 lookup, then forwarded"
            }
            Self::NftDnat => {
                "nftables: dnat to jhash of the client's address and port over the 3 \
                 backends, with conntrack, then forwarded"
            }
        }
    }
}

pub struct LiveSettings {
    pub rounds: usize,
    pub window: Duration,
    pub windows: usize,
    pub cpu: usize,
    pub seed: u64,
}

/// One configuration in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub packets: u64,
    pub cpu_s: f64,
    pub cpu_ns_per_packet: f64,
    /// Packets of the check pass that left `sink` for each backend (the VIP for the floor).
    pub left_per_backend: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigResult {
    pub config: Config,
    pub what: String,
    pub cpu_ns_per_packet: Spread,
    /// Less the floor of the same round.
    pub above_floor_ns: Option<Spread>,
    pub mpps_per_core: Spread,
    pub rounds: Vec<Measured>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    pub rounds: usize,
    pub window_ms: u64,
    pub windows: usize,
    pub flows: u32,
    pub backends: Vec<String>,
    pub nft_ruleset: String,
    pub results: Vec<ConfigResult>,
    /// Palisade's cost above the floor over nftables', medians over rounds, and the same
    /// ratio per round.
    pub dnat_to_nft: f64,
    pub dsr_to_nft: f64,
    pub dnat_to_nft_rounds: Vec<f64>,
    pub dsr_to_nft_rounds: Vec<f64>,
    pub round_orders: Vec<Vec<Config>>,
}

fn sysctl(ns: &Netns, key: &str, value: &str) -> Result<()> {
    ns_run(ns, "sysctl", &["-qw", &format!("{key}={value}")], None).map(drop)
}

/// The balancer's namespace (see the module's documentation).
fn topology() -> Result<Netns> {
    let ns = Netns::create("lb")?;
    for (a, b) in [(IN_IF, "lb-out"), (SINK, "sink-peer"), ("park0", PARK)] {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
    }
    ns.ip(&["link", "set", IN_IF, "address", FILT_MAC])?;
    for (key, value) in [
        ("net.ipv6.conf.all.disable_ipv6", "1"),
        ("net.ipv6.conf.default.disable_ipv6", "1"),
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ] {
        sysctl(&ns, key, value)?;
    }
    for dev in [IN_IF, "lb-out", SINK, "park0", PARK] {
        ns.ip(&["link", "set", dev, "up"])?;
    }
    ns.ip(&["addr", "add", "10.72.1.1/24", "dev", IN_IF])?;
    ns.ip(&["addr", "add", "198.18.0.254/24", "dev", SINK])?;
    for (i, b) in BACKENDS.iter().enumerate() {
        ns.ip(&[
            "neigh",
            "add",
            b,
            "lladdr",
            &format!("02:00:00:00:01:{:02x}", i + 1),
            "dev",
            SINK,
            "nud",
            "permanent",
        ])?;
    }
    // The floor's route: the VIP's packets to the first backend.
    ns.ip(&["route", "add", &format!("{VIP}/32"), "via", BACKENDS[0]])?;
    Ok(ns)
}

fn policy(mode: &str) -> Result<palisade::policy::model::Policy> {
    let backends: Vec<String> = BACKENDS
        .iter()
        .map(|b| format!("{{ address = \"{b}\" }}"))
        .collect();
    let text = format!(
        "[firewall]\ndefault = \"allow\"\n[lb]\nhash_seed = 1\nflow_insert_rate = 0\n\
         encap_source_v4 = \"198.19.0.0/24\"\n[[lb.service]]\nname = \"bench\"\nvip = \"{VIP}\"\n\
         port = {PORT}\nmode = \"{mode}\"\nbackends = [{}]\n",
        backends.join(", ")
    );
    config::parse_policy(&text, "lb-bench.toml", std::path::Path::new("/"))
        .map_err(|e| anyhow!("{e}"))
}

/// A 64-byte ACK with 10 bytes of data from the first client to the VIP.
fn template() -> Vec<u8> {
    palisade::craft::Frame::tcp(&CLIENT_BASE.to_string(), VIP, 40_000, PORT, 0x10)
        .with_payload(&[0x61; 10])
        .build()
}

/// What one run of the generator measured.
struct Sample {
    packets: u64,
    cpu_s: f64,
    /// Every frame sent: warm-up, windows and the check pass.
    sent: u64,
    left: Vec<u64>,
}

fn nft_counter(ns: &Netns, name: &str) -> Result<u64> {
    let out = ns_run(
        ns,
        "nft",
        &["list", "counter", "ip", CHECK_TABLE, name],
        None,
    )?;
    let packets = out
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .ok_or_else(|| anyhow!("no packets in counter {name}: {out}"))?;
    Ok(packets.parse()?)
}

/// Warms up, measures the windows, then sends one pass over every flow with the check table
/// in place and reads what left for each backend.
fn generate(s: &LiveSettings, ns: &Netns, then: Then<'_>, config: Config) -> Result<Sample> {
    let template = template();
    let softirqd = ksoftirqd(s.cpu);
    let (mut sample, stamped) = std::thread::scope(|sc| {
        sc.spawn(|| -> Result<(Sample, u32)> {
            inspect::pin_to_cpu(s.cpu)?;
            ns.enter(|| -> Result<(Sample, u32)> {
                let generator = Generator::cycling(&template, CLIENT_BASE, FLOWS, then, PARK);
                let iface = ifindex(IN_IF);
                let mut chunk = 4096u32;
                let go = |len: Duration, chunk: &mut u32| -> u64 {
                    let start = Instant::now();
                    let mut n = 0u64;
                    while start.elapsed() < len {
                        let t = Instant::now();
                        generator.send_on(*chunk, iface);
                        n += u64::from(*chunk);
                        let took = t.elapsed().as_secs_f64().max(1e-6);
                        *chunk = ((f64::from(*chunk) * 0.05 / took) as u32).clamp(64, 1 << 22);
                    }
                    n
                };
                let mut sent = go(Duration::from_millis(300), &mut chunk);
                let cpu0 = thread_cpu_ns();
                let soft0 = softirqd.map_or(0, schedstat_ns);
                let mut packets = 0;
                for _ in 0..s.windows {
                    packets += go(s.window, &mut chunk);
                }
                let cpu =
                    thread_cpu_ns() - cpu0 + softirqd.map_or(0, schedstat_ns).saturating_sub(soft0);
                sent += packets;
                ns_run(ns, "nft", &["-f", "-"], Some(&check_ruleset()))?;
                generator.send_on(FLOWS, iface);
                sent += u64::from(FLOWS);
                Ok((
                    Sample {
                        packets,
                        cpu_s: cpu as f64 / 1e9,
                        sent,
                        left: Vec::new(),
                    },
                    generator.stamped(),
                ))
            })?
        })
        .join()
        .map_err(|_| anyhow!("the generator thread panicked"))?
    })?;
    // The generator's own count of the frames it stamped (a u32, which wraps).
    ensure!(
        u64::from(stamped) == sample.sent & u64::from(u32::MAX),
        "the generator stamped {stamped} frames, {} sent",
        sample.sent
    );
    let names: Vec<String> = match config {
        Config::Forward => vec!["to_vip".to_string()],
        Config::PalisadeDsr => (0..BACKENDS.len()).map(|i| format!("ipip{i}")).collect(),
        Config::PalisadeDnat | Config::NftDnat => {
            (0..BACKENDS.len()).map(|i| format!("tcp{i}")).collect()
        }
    };
    let left: Vec<u64> = names
        .iter()
        .map(|n| nft_counter(ns, n))
        .collect::<Result<_>>()?;
    let _ = ns_run(ns, "nft", &["delete", "table", "ip", CHECK_TABLE], None);
    ensure!(
        left.iter().sum::<u64>() == u64::from(FLOWS) && left.iter().all(|&n| n > 0),
        "{}: of {FLOWS} packets of the check pass, left toward the backends: {left:?}",
        config.slug()
    );
    sample.left = left;
    Ok(sample)
}

fn measure(
    s: &LiveSettings,
    ns: &Netns,
    lbs: &[(Config, &Loaded)],
    config: Config,
) -> Result<Sample> {
    match config {
        Config::Forward => generate(s, ns, Then::Pass, config),
        Config::PalisadeDnat | Config::PalisadeDsr => {
            let (_, lb) = lbs
                .iter()
                .find(|(c, _)| *c == config)
                .ok_or_else(|| anyhow!("no object for {}", config.slug()))?;
            let prog: &Xdp = lb
                .ebpf
                .program(FIREWALL)
                .ok_or_else(|| anyhow!("no {FIREWALL}"))?
                .try_into()?;
            let fd = prog.fd().map_err(|e| anyhow!("{e}"))?;
            let before = palisade::lb::counters(&lb.ebpf)?;
            let sample = generate(s, ns, Then::TailCall(fd.as_fd()), config)?;
            let after = palisade::lb::counters(&lb.ebpf)?;
            let d = |i: u32| after[i as usize] - before[i as usize];
            let rewrite = if config == Config::PalisadeDsr {
                LS_ENCAP_V4
            } else {
                LS_DNAT_V4
            };
            ensure!(
                d(LS_PACKETS) == sample.sent
                    && d(rewrite) == sample.sent
                    && d(LS_TO_STACK) == sample.sent,
                "{}: {} frames sent, the load balancer counted {} packets, {} rewritten, {} \
                 to the stack",
                config.slug(),
                sample.sent,
                d(LS_PACKETS),
                d(rewrite),
                d(LS_TO_STACK)
            );
            // Established flows: only the first round meets new ones.
            ensure!(
                d(LS_NEW_FLOWS) <= u64::from(FLOWS)
                    && d(LS_FLOW_HITS) + d(LS_NEW_FLOWS) == sample.sent,
                "{}: {} flow-table hits and {} new flows for {} packets",
                config.slug(),
                d(LS_FLOW_HITS),
                d(LS_NEW_FLOWS),
                sample.sent
            );
            // Every client's flow is in the flow table, on one of the backends.
            let first = u32::from(CLIENT_BASE);
            let ours: Vec<_> = palisade::lb::flows(&lb.ebpf)?
                .into_iter()
                .filter(|f| match f.client {
                    std::net::IpAddr::V4(a) => (first..first + FLOWS).contains(&u32::from(a)),
                    std::net::IpAddr::V6(_) => false,
                })
                .collect();
            ensure!(
                ours.len() == FLOWS as usize
                    && ours
                        .iter()
                        .all(|f| BACKENDS.contains(&f.backend.to_string().as_str())),
                "{} of {FLOWS} flows in the table, on the backends {:?}",
                ours.len(),
                ours.iter()
                    .map(|f| f.backend)
                    .collect::<std::collections::BTreeSet<_>>()
            );
            Ok(sample)
        }
        Config::NftDnat => {
            ns_run(ns, "nft", &["-f", "-"], Some(&nft_ruleset()))?;
            let out = generate(s, ns, Then::Pass, config).and_then(|sample| {
                // The NAT rule sees each flow's first packet only; conntrack does the rest.
                let listed = ns_run(ns, "nft", &["list", "chain", "ip", TABLE, "pre"], None)?;
                ensure!(
                    listed.contains(&format!("counter packets {FLOWS} ")),
                    "nftables' NAT rule did not translate each of the {FLOWS} flows once: \
                     {listed}"
                );
                Ok(sample)
            });
            let _ = ns_run(ns, "nft", &["delete", "table", "ip", TABLE], None);
            out
        }
    }
}

/// Runs the live part.
///
/// # Errors
/// When the namespace or a configuration cannot be set up, or a check of the traffic fails.
/// `dnat` and `dsr` are objects with the whole pipeline loaded (their policies are replaced
/// by the live part's), `floor` one with the XDP_PASS floor.
pub fn run(
    s: &LiveSettings,
    dnat: &mut Loaded,
    dsr: &mut Loaded,
    floor: &mut Loaded,
) -> Result<LiveReport> {
    if !have("nft") {
        bail!("nft is missing: run `cargo xtask setup`");
    }
    dnat.install(&policy("dnat")?)?;
    dsr.install(&policy("dsr")?)?;
    let lbs = [(Config::PalisadeDnat, &*dnat), (Config::PalisadeDsr, &*dsr)];
    let mut rng = Rng::new(s.seed ^ 0x1b1b);
    let mut measured: Vec<Vec<Measured>> = Config::ALL.iter().map(|_| Vec::new()).collect();
    let mut orders = Vec::new();
    for round in 0..s.rounds {
        // A namespace per round: netfilter's conntrack table starts empty in each (nothing
        // here needs the conntrack tool to flush it).
        let ns = topology().context("building the balancer's namespace")?;
        let prog = floor.xdp_mut(FLOOR_PASS)?;
        let link = ns
            .enter(|| prog.attach(IN_IF, XdpMode::Driver))?
            .map_err(|e| anyhow!("attaching {FLOOR_PASS} to {IN_IF}: {e}"))?;
        let result = (|| -> Result<()> {
            let mut order: Vec<usize> = (0..Config::ALL.len()).collect();
            rng.shuffle(&mut order);
            for &i in &order {
                let c = Config::ALL[i];
                let x = measure(s, &ns, &lbs, c).with_context(|| c.slug())?;
                let per = x.cpu_s * 1e9 / x.packets.max(1) as f64;
                eprintln!(
                    "  round {} {:<14} {:>8.1} ns/packet CPU, left per backend {:?}",
                    round + 1,
                    c.slug(),
                    per,
                    x.left
                );
                measured[i].push(Measured {
                    packets: x.packets,
                    cpu_s: x.cpu_s,
                    cpu_ns_per_packet: per,
                    left_per_backend: x.left,
                });
            }
            orders.push(order.iter().map(|&i| Config::ALL[i]).collect());
            Ok(())
        })();
        floor
            .xdp_mut(FLOOR_PASS)?
            .detach(link)
            .map_err(|e| anyhow!("detaching {FLOOR_PASS}: {e}"))?;
        result?;
    }
    let above = |i: usize| -> Vec<f64> {
        measured[i]
            .iter()
            .zip(&measured[0])
            .map(|(m, f)| m.cpu_ns_per_packet - f.cpu_ns_per_packet)
            .collect()
    };
    let ratios =
        |i: usize| -> Vec<f64> { above(i).iter().zip(above(3)).map(|(p, n)| p / n).collect() };
    let nft = Spread::of(&above(3)).median;
    let results = Config::ALL
        .iter()
        .enumerate()
        .map(|(i, &config)| ConfigResult {
            config,
            what: config.what().to_string(),
            cpu_ns_per_packet: Spread::of(
                &measured[i]
                    .iter()
                    .map(|m| m.cpu_ns_per_packet)
                    .collect::<Vec<_>>(),
            ),
            above_floor_ns: (i > 0).then(|| Spread::of(&above(i))),
            mpps_per_core: Spread::of(
                &measured[i]
                    .iter()
                    .map(|m| m.packets as f64 / m.cpu_s / 1e6)
                    .collect::<Vec<_>>(),
            ),
            rounds: measured[i].clone(),
        })
        .collect();
    Ok(LiveReport {
        rounds: s.rounds,
        window_ms: s.window.as_millis() as u64,
        windows: s.windows,
        flows: FLOWS,
        backends: BACKENDS.iter().map(|b| (*b).to_string()).collect(),
        nft_ruleset: nft_ruleset(),
        results,
        dnat_to_nft: Spread::of(&above(1)).median / nft,
        dsr_to_nft: Spread::of(&above(2)).median / nft,
        dnat_to_nft_rounds: ratios(1),
        dsr_to_nft_rounds: ratios(2),
        round_orders: orders,
    })
}

impl LiveReport {
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut m = String::from(
            "| configuration | what | CPU ns per packet (median, min-max) | above the floor, ns | Mpps per core |\n|---|---|---:|---:|---:|\n",
        );
        for r in &self.results {
            let above = r.above_floor_ns.as_ref().map_or_else(
                || "-".to_string(),
                |a| format!("{:.0} ({:.0}-{:.0})", a.median, a.min, a.max),
            );
            let _ = writeln!(
                m,
                "| {} | {} | {:.0} ({:.0}-{:.0}) | {} | {:.2} |",
                r.config.slug(),
                r.what,
                r.cpu_ns_per_packet.median,
                r.cpu_ns_per_packet.min,
                r.cpu_ns_per_packet.max,
                above,
                r.mpps_per_core.median
            );
        }
        m
    }

    pub fn summary(&self) -> String {
        let list = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "Above the floor, Palisade's DNAT costs {:.2} times what nftables' DNAT with \
             conntrack costs (rounds: {}), and its DSR {:.2} times (rounds: {}).",
            self.dnat_to_nft,
            list(&self.dnat_to_nft_rounds),
            self.dsr_to_nft,
            list(&self.dsr_to_nft_rounds)
        )
    }
}
