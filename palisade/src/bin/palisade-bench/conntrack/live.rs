//! Established flows on real traffic: Palisade stateful against nftables with
//! `ct state established,related accept` and netfilter's conntrack, on the same frames.
//!
//! The live suite's veth pair and generator (`crate::live`) carry 64 TCP flows to the host's
//! SSH port. Each configuration learns the flows the same way, from a handshake sent across
//! the pair (SYN, then the SYN-ACK and the ACK: a tracker matches the answer to the flow
//! whatever side it comes from), then data on every flow is measured as CPU per packet. Both
//! trackers must pass every data packet as established, checked on their own counters. The
//! stack forwards what passes to an interface that discards it, so netfilter's entries are confirmed as
//! on a router; the "no filter" line (XDP_PASS, no netfilter) is the floor.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::maps::Array;
use palisade::{conntrack::read_stats, guard::FIREWALL};
use palisade_common::{
    conntrack::{CS_ACCEPTED, CS_PROMOTED},
    packet::{TCP_ACK, TCP_PSH, TCP_SYN},
};
use serde::Serialize;

use super::{Flow, policy};
use crate::{
    harness::{FLOOR_PASS, Loaded},
    live::{
        FILT_IF, FILT_MAC, GEN_IF, GENERATOR,
        tools::{attach, detach, ns_run},
        traffic::{FRAME_LEN, Generator, TEMPLATES, Window, ksoftirqd},
    },
    netns::{DispatcherPin, Netns},
    rng::Rng,
    runner::Spread,
};

const SINK: &str = "sink";

/// What is measured, in each round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    /// XDP_PASS on the receiving end, no netfilter: the stack forwards every packet.
    NoFilter,
    /// Palisade's firewall with `stateful = true`.
    PalisadeStateful,
    /// XDP_PASS, then nftables with netfilter's conntrack.
    NftCt,
}

impl Config {
    const ALL: [Self; 3] = [Self::NoFilter, Self::PalisadeStateful, Self::NftCt];

    pub const fn slug(self) -> &'static str {
        match self {
            Self::NoFilter => "no-filter",
            Self::PalisadeStateful => "palisade-stateful",
            Self::NftCt => "nft-ct",
        }
    }
}

/// The same policy as Palisade's: established and related accepted, new SSH connections
/// allowed, the rest dropped; counted.
const NFT_RULESET: &str = "table inet palisade_ct_bench {
    chain pre {
        type filter hook prerouting priority filter; policy accept;
        ct state established,related counter accept
        tcp dport 22 ct state new counter accept
        counter drop
    }
}
";

pub struct LiveCtSettings {
    pub rounds: usize,
    pub window: Duration,
    pub windows: usize,
    pub cpu: usize,
    pub nice: i32,
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct LiveCtResult {
    pub config: Config,
    pub cpu_ns_per_packet: Spread,
    /// CPU ns per packet less the no-filter floor of the same round, over rounds.
    pub above_floor_ns: Option<Spread>,
    /// `above_floor_ns` over Palisade's, medians.
    pub ratio_to_palisade: Option<f64>,
    pub mpps_per_core: Spread,
    pub packets: u64,
    /// Data packets the tracker accepted as established, over those sent (1.0: all).
    pub established_fraction: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct LiveCtReport {
    pub rounds: usize,
    pub window_ms: u64,
    pub windows: usize,
    pub flows: usize,
    pub nft_ruleset: &'static str,
    pub results: Vec<LiveCtResult>,
    pub round_orders: Vec<Vec<Config>>,
}

/// The namespace: the veth pair, and an interface the stack forwards to.
fn topology() -> Result<Netns> {
    let ns = Netns::create("ct")?;
    ns.ip(&[
        "link", "add", GEN_IF, "type", "veth", "peer", "name", FILT_IF,
    ])?;
    ns.ip(&["link", "set", FILT_IF, "address", FILT_MAC])?;
    // The sink: a veth whose peer stays down, so what it sends is dropped at once (the
    // kernel here has no dummy interfaces).
    ns.ip(&[
        "link",
        "add",
        SINK,
        "type",
        "veth",
        "peer",
        "name",
        "sink-peer",
    ])?;
    for (key, value) in [
        ("net.ipv6.conf.all.disable_ipv6", "1"),
        ("net.ipv6.conf.default.disable_ipv6", "1"),
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ] {
        ns_run(&ns, "sysctl", &["-qw", &format!("{key}={value}")], None)?;
    }
    for dev in [GEN_IF, FILT_IF, SINK] {
        ns.ip(&["link", "set", dev, "up"])?;
    }
    // Both ends of every flow are behind the sink, through one gateway with a fixed
    // neighbour entry: what passes is forwarded there (through netfilter's forward and
    // postrouting hooks, which confirm its entries) and discarded.
    ns.ip(&["addr", "add", "192.168.255.1/24", "dev", SINK])?;
    ns.ip(&[
        "neigh",
        "add",
        "192.168.255.2",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        SINK,
        "nud",
        "permanent",
    ])?;
    ns.ip(&[
        "route",
        "add",
        "10.0.0.0/8",
        "via",
        "192.168.255.2",
        "dev",
        SINK,
    ])?;
    Ok(ns)
}

fn set_frames(base: &mut Loaded, frames: &[Vec<u8>]) -> Result<()> {
    let mut m: Array<_, [u8; FRAME_LEN]> = Array::try_from(
        base.ebpf
            .map_mut("BENCH_FRAMES")
            .ok_or_else(|| anyhow!("no BENCH_FRAMES map"))?,
    )?;
    for i in 0..TEMPLATES as usize {
        let f = &frames[i % frames.len()];
        let mut t = [0u8; FRAME_LEN];
        ensure!(f.len() == FRAME_LEN, "frame of {} bytes", f.len());
        t.copy_from_slice(f);
        m.set(i as u32, t, 0)?;
    }
    Ok(())
}

/// The round's flows: new ports each round, so no tracker starts with them.
fn flows(round: usize) -> Vec<Flow> {
    (0..TEMPLATES as usize)
        .map(|i| {
            let mut f = Flow::new(i);
            f.port = 20_000 + (round * TEMPLATES as usize + i) as u16;
            f
        })
        .collect()
}

/// 64-byte frames: the header and 10 bytes of data.
const DATA: usize = FRAME_LEN - 54;

/// nft's counter of the rule whose text contains `what`, in packets.
fn nft_counter(ns: &Netns, what: &str) -> Result<u64> {
    let out = ns_run(
        ns,
        "nft",
        &["list", "chain", "inet", "palisade_ct_bench", "pre"],
        None,
    )?;
    let line = out
        .lines()
        .find(|l| l.contains(what))
        .ok_or_else(|| anyhow!("no rule `{what}` in\n{out}"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return Ok(words.next().unwrap_or("").parse()?);
        }
    }
    bail!("no counter in `{line}`")
}

struct Measured {
    windows: Vec<Window>,
    established: Option<(u64, u64)>,
}

impl Measured {
    fn ns_per_packet(&self) -> f64 {
        self.windows.iter().map(|w| w.cpu_s).sum::<f64>() * 1e9
            / self.windows.iter().map(|w| w.packets).sum::<u64>().max(1) as f64
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one configuration's set-up, run and take-down"
)]
fn measure(
    s: &LiveCtSettings,
    ns: &Netns,
    base: &mut Loaded,
    config: Config,
    round: usize,
) -> Result<Measured> {
    let fl = flows(round);
    let softirqd = ksoftirqd(s.cpu);
    // One live-frames run of `n` frames on the measuring CPU, inside the namespace.
    let send = |base: &Loaded, n: u32| -> Result<()> {
        let g = Generator {
            prog: base
                .ebpf
                .program(GENERATOR)
                .ok_or_else(|| anyhow!("no {GENERATOR}"))?
                .try_into()?,
            ns,
            cpu: s.cpu,
            nice: 0,
            softirqd: None,
            chunk: n,
            sent: 0,
        };
        std::thread::scope(|sc| {
            sc.spawn(|| -> Result<()> {
                crate::inspect::pin_to_cpu(s.cpu)?;
                ns.enter(|| g.send(n))?
            })
            .join()
            .map_err(|_| anyhow!("the sending thread panicked"))?
        })
    };
    let run = |base: &Loaded| -> Result<(Vec<Window>, u64)> {
        let mut g = Generator {
            prog: base
                .ebpf
                .program(GENERATOR)
                .ok_or_else(|| anyhow!("no {GENERATOR}"))?
                .try_into()?,
            ns,
            cpu: s.cpu,
            nice: s.nice,
            softirqd,
            chunk: 4096,
            sent: 0,
        };
        let w = g.run(Duration::from_millis(300), s.window, s.windows)?;
        // Frames sent, warm-up included: what the trackers' counters saw.
        Ok((w, g.sent))
    };
    match config {
        Config::NoFilter => {
            let link = attach(base, ns, FLOOR_PASS)?;
            // The same frames as the trackers get, handshake included.
            let windows = handshake_with(base, &send, &fl).and_then(|()| run(base));
            detach(base, FLOOR_PASS, link)?;
            Ok(Measured {
                windows: windows?.0,
                established: None,
            })
        }
        Config::NftCt => {
            let link = attach(base, ns, FLOOR_PASS)?;
            let out = (|| -> Result<Measured> {
                ns_run(ns, "nft", &["-f", "-"], Some(NFT_RULESET))?;
                handshake_with(base, &send, &fl)?;
                let before = nft_counter(ns, "established")?;
                let dropped = nft_counter(ns, "drop")?;
                let (windows, sent) = run(base)?;
                let accepted = nft_counter(ns, "established")? - before;
                ensure!(
                    nft_counter(ns, "drop")? == dropped,
                    "nftables dropped data packets"
                );
                Ok(Measured {
                    windows,
                    established: Some((accepted, sent)),
                })
            })();
            let _ = ns_run(
                ns,
                "nft",
                &["delete", "table", "inet", "palisade_ct_bench"],
                None,
            );
            detach(base, FLOOR_PASS, link)?;
            out
        }
        Config::PalisadeStateful => {
            let mut palisade = Loaded::new(true)?;
            palisade.install(&policy(true)?)?;
            let prog = palisade.xdp_mut(FIREWALL)?;
            let link = ns
                .enter(|| prog.attach(FILT_IF, aya::programs::XdpMode::Driver))?
                .map_err(|e| anyhow!("attaching the firewall to {FILT_IF}: {e}"))?;
            let out = (|| -> Result<Measured> {
                let before = read_stats(&palisade.ebpf)?;
                handshake_with(base, &send, &fl)?;
                let mid = read_stats(&palisade.ebpf)?;
                let promoted = mid[CS_PROMOTED as usize] - before[CS_PROMOTED as usize];
                ensure!(
                    promoted == fl.len() as u64,
                    "{promoted} of {} handshakes reached the validated table",
                    fl.len()
                );
                let (windows, sent) = run(base)?;
                let after = read_stats(&palisade.ebpf)?;
                Ok(Measured {
                    windows,
                    established: Some((
                        after[CS_ACCEPTED as usize] - mid[CS_ACCEPTED as usize],
                        sent,
                    )),
                })
            })();
            palisade
                .xdp_mut(FIREWALL)?
                .detach(link)
                .map_err(|e| anyhow!("detaching the firewall: {e}"))?;
            out
        }
    }
}

/// Sends each flow's handshake across the pair, one step at a time, then leaves the data
/// frames in place for the measurement.
fn handshake_with(
    base: &mut Loaded,
    send: &dyn Fn(&Loaded, u32) -> Result<()>,
    fl: &[Flow],
) -> Result<()> {
    let steps: [Vec<Vec<u8>>; 3] = [
        fl.iter().map(|f| f.inbound(TCP_SYN, f.isn, 0, 0)).collect(),
        fl.iter()
            .map(|f| f.outbound(TCP_SYN | TCP_ACK, f.host_isn, f.isn.wrapping_add(1)))
            .collect(),
        fl.iter()
            .map(|f| {
                f.inbound(
                    TCP_ACK,
                    f.isn.wrapping_add(1),
                    f.host_isn.wrapping_add(1),
                    0,
                )
            })
            .collect(),
    ];
    for frames in steps {
        // Short segments padded to the template size, as Ethernet pads them.
        let padded: Vec<Vec<u8>> = frames
            .into_iter()
            .map(|mut f| {
                f.resize(FRAME_LEN, 0);
                f
            })
            .collect();
        set_frames(base, &padded)?;
        send(base, TEMPLATES)?;
    }
    let data: Vec<Vec<u8>> = fl
        .iter()
        .map(|f| {
            f.inbound(
                TCP_ACK | TCP_PSH,
                f.isn.wrapping_add(1),
                f.host_isn.wrapping_add(1),
                DATA,
            )
        })
        .collect();
    set_frames(base, &data)
}

/// Runs the live part of the suite.
///
/// # Errors
/// When the namespace, the generator or a configuration cannot be set up, or a tracker does
/// not pass every data packet as established.
pub fn run(s: &LiveCtSettings) -> Result<LiveCtReport> {
    let mut pin = DispatcherPin::new()?;
    let ns = topology()?;
    let mut base = Loaded::new(false)?;
    base.load_xdp(GENERATOR)?;
    pin.pin(base.xdp_mut(GENERATOR)?)?;
    let gen_ifindex: u32 = ns.enter(|| {
        let name = std::ffi::CString::new(GEN_IF).expect("no NUL");
        // SAFETY: a valid C string.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    })?;
    ensure!(gen_ifindex != 0, "no interface {GEN_IF}");
    {
        let mut m: Array<_, u32> = Array::try_from(
            base.ebpf
                .map_mut("BENCH_IFINDEX")
                .ok_or_else(|| anyhow!("no BENCH_IFINDEX map"))?,
        )?;
        m.set(0, gen_ifindex, 0)?;
    }
    let mut rng = Rng::new(s.seed ^ 0x11c7);
    let mut measured: Vec<Vec<Measured>> = Config::ALL.iter().map(|_| Vec::new()).collect();
    let mut orders = Vec::new();
    eprintln!(
        "live: {} rounds of {} configurations",
        s.rounds,
        Config::ALL.len()
    );
    for round in 0..s.rounds {
        let mut order: Vec<usize> = (0..Config::ALL.len()).collect();
        rng.shuffle(&mut order);
        for &i in &order {
            let c = Config::ALL[i];
            let m = measure(s, &ns, &mut base, c, round).with_context(|| c.slug())?;
            if let Some((accepted, sent)) = m.established {
                ensure!(
                    accepted == sent,
                    "{}: {accepted} of {sent} data packets accepted as established",
                    c.slug()
                );
            }
            eprintln!(
                "  round {} {:<18} {:>8.1} ns/packet CPU",
                round + 1,
                c.slug(),
                m.ns_per_packet()
            );
            measured[i].push(m);
        }
        orders.push(order.iter().map(|&i| Config::ALL[i]).collect());
    }
    let above = |i: usize| -> Vec<f64> {
        measured[i]
            .iter()
            .zip(&measured[0])
            .map(|(m, f)| m.ns_per_packet() - f.ns_per_packet())
            .collect()
    };
    let palisade = Spread::of(&above(1)).median;
    let results = Config::ALL
        .iter()
        .enumerate()
        .map(|(i, &config)| {
            let windows: Vec<&Window> = measured[i].iter().flat_map(|m| &m.windows).collect();
            let above_floor = (i > 0).then(|| Spread::of(&above(i)));
            let (acc, sent) = measured[i]
                .iter()
                .filter_map(|m| m.established)
                .fold((0, 0), |(a, s), (x, y)| (a + x, s + y));
            LiveCtResult {
                config,
                cpu_ns_per_packet: Spread::of(
                    &windows
                        .iter()
                        .map(|w| w.cpu_s * 1e9 / w.packets.max(1) as f64)
                        .collect::<Vec<_>>(),
                ),
                ratio_to_palisade: above_floor.map(|a| a.median / palisade),
                above_floor_ns: above_floor,
                mpps_per_core: Spread::of(
                    &windows
                        .iter()
                        .map(|w| w.packets as f64 / w.cpu_s / 1e6)
                        .collect::<Vec<_>>(),
                ),
                packets: windows.iter().map(|w| w.packets).sum(),
                established_fraction: (sent > 0).then(|| acc as f64 / sent as f64),
            }
        })
        .collect();
    Ok(LiveCtReport {
        rounds: s.rounds,
        window_ms: s.window.as_millis() as u64,
        windows: s.windows,
        flows: TEMPLATES as usize,
        nft_ruleset: NFT_RULESET,
        results,
        round_orders: orders,
    })
}
