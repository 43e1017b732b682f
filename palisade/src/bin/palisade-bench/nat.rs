//! The NAT suite: masquerade of forwarded traffic on live frames, Palisade's TC NAT against
//! nftables `masquerade` (with netfilter's conntrack), on the same frames in one run.
//!
//! The live suite's veth pair and generator (`crate::live`) carry 64 UDP flows from a
//! masqueraded subnet (172.16.0.0/12) to outside addresses; the XDP_PASS floor on the
//! receiving end hands them to the stack, which forwards them to an interface (`sink`)
//! whose peer is down, so they are discarded right after the egress hooks. What differs
//! between the configurations is what runs on the way out:
//! - `no-nat`: nothing (the floor: generation, veth, forwarding);
//! - `palisade-nat`: Palisade's egress NAT and egress tracker (tcx on `sink`), as `[nat]`
//!   runs them: every packet's source rewritten, checked on its counters;
//! - `nft-masquerade`: `oifname "sink" masquerade` in a postrouting NAT chain, with the
//!   conntrack that NAT in netfilter needs.
//!
//! Reported: CPU ns per packet, above the floor of the same round, and nftables' cost over
//! Palisade's.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::{
    maps::Array,
    programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
};
use palisade::policy::config;
use palisade_common::nat::{NS_EGRESS, NS_SNAT_NEW};
use serde::Serialize;

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

const NFT_RULESET: &str = "table ip palisade_nat_bench {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"sink\" counter masquerade
    }
}
";

/// Added after nftables' measurement: counts what leaves masqueraded.
const NFT_CHECK: &str = "table ip palisade_nat_bench {
    chain check {
        type filter hook postrouting priority srcnat + 10; policy accept;
        oifname \"sink\" ip saddr 192.168.255.1 counter
    }
}
";
/// Frames of that check.
const CHECK_FRAMES: u32 = 640;

/// What is measured, in each round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    NoNat,
    PalisadeNat,
    NftMasquerade,
}

impl Config {
    const ALL: [Self; 3] = [Self::NoNat, Self::PalisadeNat, Self::NftMasquerade];

    pub const fn slug(self) -> &'static str {
        match self {
            Self::NoNat => "no-nat",
            Self::PalisadeNat => "palisade-nat",
            Self::NftMasquerade => "nft-masquerade",
        }
    }
}

pub struct NatSettings {
    pub rounds: usize,
    pub window: Duration,
    pub windows: usize,
    pub cpu: usize,
    pub nice: i32,
    pub seed: u64,
    pub out: std::path::PathBuf,
}

#[derive(Debug, Serialize)]
pub struct NatResult {
    pub config: Config,
    pub cpu_ns_per_packet: Spread,
    /// CPU ns per packet less the no-NAT floor of the same round, over rounds.
    pub above_floor_ns: Option<Spread>,
    /// `above_floor_ns` over Palisade's, medians.
    pub ratio_to_palisade: Option<f64>,
    pub mpps_per_core: Spread,
    pub packets: u64,
}

#[derive(Debug, Serialize)]
pub struct NatReport {
    pub command: String,
    pub rounds: usize,
    pub window_ms: u64,
    pub windows: usize,
    pub flows: usize,
    pub nft_ruleset: &'static str,
    pub results: Vec<NatResult>,
    pub round_orders: Vec<Vec<Config>>,
}

/// The namespace: the veth pair, and the interface the stack forwards to.
fn topology() -> Result<Netns> {
    let ns = Netns::create("nat")?;
    ns.ip(&[
        "link", "add", GEN_IF, "type", "veth", "peer", "name", FILT_IF,
    ])?;
    ns.ip(&["link", "set", FILT_IF, "address", FILT_MAC])?;
    // The sink: a veth whose peer stays down, so what it sends is dropped at once.
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

/// 64 UDP flows from the masqueraded subnet to outside addresses, one frame each.
fn frames() -> Vec<[u8; FRAME_LEN]> {
    (0..TEMPLATES as usize)
        .map(|i| {
            let src = format!("172.16.{}.{}", i / 200, i % 200 + 1);
            let dst = format!("10.9.{}.{}", i / 200, i % 200 + 1);
            let mut f = palisade::craft::Frame::udp(&src, &dst, 40_000 + i as u16, 53);
            let header = f.build().len();
            f.payload = vec![0x5a; FRAME_LEN - header];
            let bytes = f.build();
            let mut out = [0u8; FRAME_LEN];
            out.copy_from_slice(&bytes);
            out
        })
        .collect()
}

fn set_frames(base: &mut Loaded) -> Result<()> {
    let mut m: Array<_, [u8; FRAME_LEN]> = Array::try_from(
        base.ebpf
            .map_mut("BENCH_FRAMES")
            .ok_or_else(|| anyhow!("no BENCH_FRAMES map"))?,
    )?;
    for (i, f) in frames().into_iter().enumerate() {
        m.set(i as u32, f, 0)?;
    }
    Ok(())
}

fn policy() -> Result<palisade::policy::model::Policy> {
    config::parse_policy(
        &format!("[nat]\nout = \"{SINK}\"\nmasquerade = [\"172.16.0.0/12\"]\n"),
        "nat-bench.toml",
        std::path::Path::new("."),
    )
    .map_err(|e| anyhow!("{e}"))
}

fn ns_per_packet(windows: &[Window]) -> f64 {
    windows.iter().map(|w| w.cpu_s).sum::<f64>() * 1e9
        / windows.iter().map(|w| w.packets).sum::<u64>().max(1) as f64
}

fn measure(s: &NatSettings, ns: &Netns, base: &mut Loaded, config: Config) -> Result<Vec<Window>> {
    let softirqd = ksoftirqd(s.cpu);
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
        Ok((w, g.sent))
    };
    let link = attach(base, ns, FLOOR_PASS)?;
    let out = match config {
        Config::NoNat => run(base).map(|r| r.0),
        Config::NftMasquerade => (|| -> Result<Vec<Window>> {
            ns_run(ns, "nft", &["-f", "-"], Some(NFT_RULESET))?;
            let (w, _) = run(base)?;
            // After the measurement: a chain behind the NAT counts the packets that leave
            // with the sink's address, for a batch sent on the same flows.
            ns_run(ns, "nft", &["-f", "-"], Some(NFT_CHECK))?;
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
                chunk: CHECK_FRAMES,
                sent: 0,
            };
            std::thread::scope(|sc| {
                sc.spawn(|| -> Result<()> {
                    crate::inspect::pin_to_cpu(s.cpu)?;
                    ns.enter(|| g.send(CHECK_FRAMES))?
                })
                .join()
                .map_err(|_| anyhow!("the sending thread panicked"))?
            })?;
            let listed = ns_run(
                ns,
                "nft",
                &["list", "chain", "ip", "palisade_nat_bench", "check"],
                None,
            )?;
            ensure!(
                listed.contains(&format!("packets {CHECK_FRAMES} ")),
                "nftables did not masquerade every packet: {listed}"
            );
            Ok(w)
        })(),
        Config::PalisadeNat => (|| -> Result<Vec<Window>> {
            let mut palisade = Loaded::new(false)?;
            // The interface and its address are looked up in the namespace.
            ns.enter(|| palisade.install(&policy()?))??;
            let mut links = Vec::new();
            for name in [palisade::nat::EGRESS, palisade::conntrack::EGRESS] {
                let prog: &mut SchedClassifier = palisade
                    .ebpf
                    .program_mut(name)
                    .ok_or_else(|| anyhow!("no {name}"))?
                    .try_into()?;
                prog.load().with_context(|| format!("verifying {name}"))?;
                let order = if name == palisade::nat::EGRESS {
                    LinkOrder::first()
                } else {
                    LinkOrder::default()
                };
                let id = ns
                    .enter(|| {
                        prog.attach_with_options(
                            SINK,
                            TcAttachType::Egress,
                            TcAttachOptions::TcxOrder(order),
                        )
                    })?
                    .map_err(|e| anyhow!("attaching {name} to {SINK}: {e}"))?;
                links.push((name, id));
            }
            let before = palisade::nat::counters(&palisade.ebpf)?;
            let (w, sent) = run(base)?;
            let after = palisade::nat::counters(&palisade.ebpf)?;
            let translated = after[NS_EGRESS as usize] - before[NS_EGRESS as usize];
            ensure!(
                translated == sent,
                "{translated} of {sent} packets translated"
            );
            ensure!(after[NS_SNAT_NEW as usize] == u64::from(TEMPLATES));
            for (name, id) in links {
                let prog: &mut SchedClassifier = palisade
                    .ebpf
                    .program_mut(name)
                    .ok_or_else(|| anyhow!("no {name}"))?
                    .try_into()?;
                prog.detach(id)?;
            }
            Ok(w)
        })(),
    };
    if config == Config::NftMasquerade {
        let _ = ns_run(
            ns,
            "nft",
            &["delete", "table", "ip", "palisade_nat_bench"],
            None,
        );
        let _ = ns_run(ns, "conntrack", &["-F"], None);
    }
    detach(base, FLOOR_PASS, link)?;
    out
}

/// Runs the suite.
///
/// # Errors
/// When the namespace, the generator or a configuration cannot be set up, or Palisade does
/// not translate every packet.
pub fn run(s: &NatSettings, command: String) -> Result<NatReport> {
    if !crate::live::tools::have("nft") {
        bail!("nft is missing: run `cargo xtask setup`");
    }
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
    set_frames(&mut base)?;
    let mut rng = Rng::new(s.seed ^ 0x4a7);
    let mut measured: Vec<Vec<Vec<Window>>> = Config::ALL.iter().map(|_| Vec::new()).collect();
    let mut orders = Vec::new();
    for round in 0..s.rounds {
        let mut order: Vec<usize> = (0..Config::ALL.len()).collect();
        rng.shuffle(&mut order);
        for &i in &order {
            let c = Config::ALL[i];
            let w = measure(s, &ns, &mut base, c).with_context(|| c.slug())?;
            eprintln!(
                "  round {} {:<16} {:>8.1} ns/packet CPU",
                round + 1,
                c.slug(),
                ns_per_packet(&w)
            );
            measured[i].push(w);
        }
        orders.push(order.iter().map(|&i| Config::ALL[i]).collect());
    }
    let above = |i: usize| -> Vec<f64> {
        measured[i]
            .iter()
            .zip(&measured[0])
            .map(|(m, f)| ns_per_packet(m) - ns_per_packet(f))
            .collect()
    };
    let palisade = Spread::of(&above(1)).median;
    let results = Config::ALL
        .iter()
        .enumerate()
        .map(|(i, &config)| {
            let windows: Vec<&Window> = measured[i].iter().flatten().collect();
            let above_floor = (i > 0).then(|| Spread::of(&above(i)));
            NatResult {
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
            }
        })
        .collect();
    let report = NatReport {
        command,
        rounds: s.rounds,
        window_ms: s.window.as_millis() as u64,
        windows: s.windows,
        flows: TEMPLATES as usize,
        nft_ruleset: NFT_RULESET,
        results,
        round_orders: orders,
    };
    std::fs::create_dir_all(&s.out)?;
    let path = s.out.join("nat.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}", path.display());
    Ok(report)
}

impl NatReport {
    /// One line per configuration.
    #[must_use]
    pub fn terminal(&self) -> String {
        let mut out = String::from("NAT on live frames (CPU ns per packet, median [min-max])\n");
        for r in &self.results {
            let c = &r.cpu_ns_per_packet;
            out.push_str(&format!(
                "  {:<16} {:>8.1} [{:.1}-{:.1}]",
                r.config.slug(),
                c.median,
                c.min,
                c.max
            ));
            if let Some(a) = &r.above_floor_ns {
                out.push_str(&format!("  above the floor {:>7.1}", a.median));
            }
            if let Some(x) = r.ratio_to_palisade {
                out.push_str(&format!("  {x:.2}x Palisade's"));
            }
            out.push('\n');
        }
        out
    }
}
