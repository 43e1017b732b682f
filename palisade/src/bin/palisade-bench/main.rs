//! `palisade-bench`: what a packet costs in Palisade's XDP firewall, and how that cost moves
//! with the size of the policy.
//!
//! The test-run suite loads one copy of the kernel object per policy, installs the policy,
//! and times the firewall and two empty XDP programs (the floor) with `BPF_PROG_TEST_RUN`
//! over a mix of packets, in interleaved rounds. It also reports the verifier's work for each
//! program, the time to compile and install each policy and the memory its maps take. See
//! `bench/README.md` for the method and how to read the results.

mod bind;
mod conntrack;
mod dga;
mod dhcp;
mod dlp;
mod dns;
mod dnscache;
mod dnsperf;
mod events_flood;
/// The flood generator the tests use too, and the raw BPF helpers it builds on.
#[path = "../../../tests/support/flood.rs"]
#[expect(
    dead_code,
    reason = "the bench sends from an ingress interface only; the tests use the rest"
)]
mod flood;
mod geoip;
mod harness;
mod inspect;
mod intel;
mod lb;
mod lb_live;
mod live;
mod nat;
mod netns;
mod plot;
#[path = "../../../tests/support/rawbpf.rs"]
#[expect(
    dead_code,
    reason = "the flood generator needs its instruction encoder only"
)]
mod rawbpf;
mod report;
mod rng;
mod runner;
mod shield;
mod suite;
mod synflood;
mod tls;
mod workload;
mod xdp_filter;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use clap::Parser;

/// Measures the cost per packet of Palisade's XDP firewall against the size of its policy.
///
/// Runs the firewall with 0 to 100k rules and with a rule on a set of up to 1M entries, plus
/// an empty XDP program as the floor and xdp-filter as the reference, through
/// BPF_PROG_TEST_RUN over a mix of 64 packets, in interleaved rounds. Reports ns per packet
/// above the floor (median, min, max over rounds) and each as a ratio to xdp-filter's,
/// the verifier's instruction count for each program, install times and map memory, as
/// markdown, JSON and an SVG chart.
///
/// With --live, measures real traffic instead: a flood of blocklisted packets generated with
/// XDP live frames into a veth pair, dropped by Palisade, nftables, iptables, ipset or
/// xdp-filter holding the same blocklist; reports CPU per packet and packets per CPU-second.
///
/// Needs root (or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON).
#[derive(Debug, Parser)]
#[command(
    name = "palisade-bench",
    after_help = "Examples:\n  \
        palisade-bench                      full run, results in bench/results/\n  \
        palisade-bench --quick              CI run (< 1 min), results in a temporary directory\n  \
        palisade-bench --rules 0,1000 --sets 1000000 --rounds 11 --out /tmp/b\n  \
        palisade-bench --live               live traffic against nftables, iptables, ipset, xdp-filter\n  \
        palisade-bench --dnsperf            dnsperf: NXDOMAIN and drop for blocked names against unbound, dnsmasq\n  \
        palisade-bench --conntrack          connection tracking: cost per established packet, sweep of 1M entries\n  \
        palisade-bench --dns-events         DNS events under a flood: every query an event against the event budget\n  \
        palisade-bench --shield             SYN shield: a cookie SYN-ACK from XDP against the floor and the stack path\n  \
        palisade-bench --nat                NAT: masquerade on live frames against nftables masquerade\n  \
        palisade-bench --lb                 load balancer: an established flow's cost in test runs, and on live frames against nftables DNAT\n  \
        palisade-bench --tls                TLS: reading a ClientHello, its JA4 and the decision, per handshake\n  \
        palisade-bench --dhcp               DHCP snooping: the kernel's cost per packet with and without [dhcp], the daemon's per record\n  \
        palisade-bench --intel              threat intelligence: loading 10M addresses, 1M CIDRs, 1M domains; match cost at that size\n  \
        palisade-bench --bind               DNS binding: the answer walk per answer and the connect() check per call\n  \
        palisade-bench --dlp                DLP: what the SSL_* probes add to an SSL_write at 50k calls/s, with and without the watcher reading\n  \
        palisade-bench --dga                DGA scoring: TPR per DGA family at FPR <= 0.1 % on benign names (--dga-train builds the model)\n  \
        palisade-bench --dns-cache          DNS response cache: unbound's own cache against Palisade's XDP cache in front of it, under dnsperf\n  \
        palisade-bench --geoip              country sets: loading a GeoLite2-sized database, the cost of a rule on a ~10k-prefix country"
)]
struct Args {
    /// A short run for CI: 3 rounds, ~15 ms measurements, up to 10k rules and a 10k-entry set.
    #[arg(long)]
    quick: bool,
    /// Directory for the report files [default: bench/results, or a temporary directory with
    /// --quick].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Rounds; each round measures every configuration once [default: 7, 3 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Target duration of one measurement in milliseconds [default: 100, 15 with --quick].
    #[arg(long, value_name = "MS")]
    target_ms: Option<f64>,
    /// Rule counts to measure, comma separated [default: 0,1,100,1000,10000,100000; with
    /// --quick up to 10000].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    rules: Option<Vec<usize>>,
    /// Set sizes to measure (one rule whose source is the set) [default:
    /// 1000,10000,100000,1000000; 10000 with --quick].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    sets: Option<Vec<usize>>,
    /// Host blocklist sizes to measure (one rule whose source is a set of N single IPv4
    /// addresses), next to xdp-filter holding 10k of them [default: 10000,1000000; 10000
    /// with --quick].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    hosts: Option<Vec<usize>>,
    /// Do not measure xdp-filter (xdp-tools) as the reference in the test-run suite.
    #[arg(long)]
    no_xdp_filter: bool,
    /// IP header and link conditions (`dscp`, `ecn`, `ttl`, `length`, `mac`, `vlan`, `iface`,
    /// `ifaces` (a list of two), `not` (a negated source)) to measure: each is the first
    /// rule-count workload with one more rule using it, next to that workload in the same run,
    /// with its ratio to it; `same` loads that workload again unchanged (the run's noise).
    #[arg(long, value_delimiter = ',', value_name = "KIND,...")]
    header: Option<Vec<String>>,
    /// Seed for the rule sets, the packets and the round orders.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// CPU to run the measurements on [default: the last CPU].
    #[arg(long)]
    cpu: Option<usize>,
    /// Do not pin the measurements to one CPU.
    #[arg(long, conflicts_with = "cpu")]
    no_pin: bool,
    /// Fail (exit status 2) when a program's verifier instruction count is above this.
    #[arg(long, default_value_t = inspect::VERIFIER_BUDGET, value_name = "INSNS")]
    verifier_budget: u32,
    /// Scheduling priority (nice value) for the benchmark; 0 leaves it alone.
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    nice: i32,
    /// Run the live-traffic suite (veth, XDP live frames, other filters) instead of the
    /// test-run suite.
    #[arg(long)]
    live: bool,
    /// Live suite: blocklist sizes [default: 1,1000,10000,100000,1000000; 1,1000 with
    /// --quick]. Tools with a limit (xdp-filter's map, iptables' linear chain) skip larger N.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    live_sizes: Option<Vec<usize>>,
    /// Live suite: rounds, each setting up every configuration once [default: 3, 1 with
    /// --quick].
    #[arg(long)]
    live_rounds: Option<usize>,
    /// Live suite: measurement windows per configuration per round [default: 2, 3 with
    /// --quick].
    #[arg(long)]
    live_windows: Option<usize>,
    /// Live suite: length of one window in milliseconds [default: 1000, 300 with --quick].
    #[arg(long, value_name = "MS")]
    live_window_ms: Option<u64>,
    /// Skip timing a steady-state reload of each policy (saves a few seconds on big sets;
    /// --quick never times reloads).
    #[arg(long)]
    no_reload: bool,
    /// DNS suite: name-list sizes [default: 1000,100000,1000000; 1000,10000 with --quick].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    dns_sizes: Option<Vec<usize>>,
    /// Run only the DNS suite (no firewall suite).
    #[arg(long, conflicts_with = "no_dns")]
    dns_only: bool,
    /// Skip the DNS suite.
    #[arg(long)]
    no_dns: bool,
    /// Run the conntrack suite instead: an established flow's packet through the stateful
    /// pipeline against the stateless firewall with the same rules (test runs), and the
    /// sweep over a table of --ct-entries flows.
    #[arg(long, conflicts_with_all = ["live", "dnsperf"])]
    conntrack: bool,
    /// Run the NAT suite instead: masquerade of forwarded UDP flows on live frames,
    /// Palisade's TC NAT against nftables `masquerade` (--live-rounds, --live-windows and
    /// --live-window-ms apply).
    #[arg(long, conflicts_with_all = ["live", "dnsperf", "conntrack"])]
    nat: bool,
    /// conntrack suite: flows in the table for the sweep [default: 1000000; 100000 with
    /// --quick].
    #[arg(long, value_name = "N")]
    ct_entries: Option<usize>,
    /// conntrack suite: rounds of the sweep, each filling the table anew [default: 3, 1 with
    /// --quick].
    #[arg(long, value_name = "N")]
    ct_sweep_rounds: Option<usize>,
    /// conntrack suite: skip the live traffic (Palisade stateful against nftables with
    /// netfilter's conntrack over a veth pair; --live-rounds, --live-windows and
    /// --live-window-ms apply).
    #[arg(long)]
    ct_no_live: bool,
    /// Run the dnsperf suite instead: Palisade answering NXDOMAIN and dropping, against
    /// unbound and dnsmasq holding the same blocklist, queried with dnsperf over veth pairs
    /// (exact names and subdomains of listed names).
    #[arg(long, conflicts_with = "live")]
    dnsperf: bool,
    /// Run the DNS event-flood suite instead: a flood of blocked queries with their events
    /// read as the daemon reads them, every query an event against the event budget
    /// (aggregation and summaries).
    #[arg(long, conflicts_with_all = ["live", "dnsperf", "conntrack"])]
    dns_events: bool,
    /// DGA scoring: true-positive rate per DGA family at a false-positive rate <= 0.1 % on the
    /// benign TEST split (installs the PyPI package hstspreload into .tools/).
    #[arg(long)]
    dga: bool,
    /// Builds the DGA model from the benign TRAIN split into palisade/data/dga-model.bin.
    #[arg(long, conflicts_with = "dga")]
    dga_train: bool,
    /// Run the shield suite instead: a SYN answered with a cookie SYN-ACK from XDP, and the
    /// same SYN passed to the stack, above the empty program (test runs, one run per
    /// syscall: the cookie path rewrites its packet).
    #[arg(long, conflicts_with_all = ["live", "dnsperf", "conntrack", "dns_events"])]
    shield: bool,
    /// Run the load-balancer suite instead: a packet of an established flow through the
    /// load balancer (flow table, IPIP encapsulation or DNAT rewrite) against the floor and
    /// the firewall alone (test runs, one run per syscall), then on live frames against plain
    /// forwarding and nftables' DNAT load balancing with conntrack (--live-rounds,
    /// --live-windows and --live-window-ms apply).
    #[arg(long, conflicts_with_all = ["live", "dnsperf", "conntrack", "dns_events", "shield"])]
    lb: bool,
    /// load-balancer suite: skip the live frames.
    #[arg(long)]
    lb_no_live: bool,
    /// shield suite: skip the live SYN flood (the daemon's cookies from XDP against the
    /// kernel's own SYN cookies, CPU per SYN and real clients' success; --live-rounds and
    /// --shield-flood-seconds apply).
    #[arg(long)]
    shield_no_live: bool,
    /// shield suite: seconds of flood per configuration and round [default: 3, 1 with
    /// --quick].
    #[arg(long, value_name = "S")]
    shield_flood_seconds: Option<f64>,
    /// Run the TLS suite instead: what reading a ClientHello, its JA4 and the [tls]
    /// decision cost the daemon per handshake, against copying the same bytes.
    #[arg(long, conflicts_with_all = ["live", "dnsperf", "conntrack", "dns_events", "shield"])]
    tls: bool,
    /// Run the DHCP suite instead: what [dhcp] costs the kernel per packet (with and without
    /// it in the same round) and the daemon per copied frame.
    #[arg(long, conflicts_with_all = ["live", "dnsperf", "conntrack", "dns_events", "shield", "tls"])]
    dhcp: bool,
    /// Run the threat-intelligence suite instead: load --intel-ips addresses, --intel-cidrs
    /// CIDRs and --intel-domains domains (time and memory of each step), then the match
    /// cost of a miss and of each kind of hit in test runs, against the floor and the
    /// firewall without indicators in the same rounds.
    #[arg(long, conflicts_with_all = ["live", "dnsperf", "conntrack", "dns_events", "shield", "tls"])]
    intel: bool,
    /// intel suite: exact addresses [default: 10000000; 100000 with --quick].
    #[arg(long, value_name = "N")]
    intel_ips: Option<usize>,
    /// intel suite: CIDRs [default: 1000000; 10000 with --quick].
    #[arg(long, value_name = "N")]
    intel_cidrs: Option<usize>,
    /// intel suite: domains [default: 1000000; 10000 with --quick].
    #[arg(long, value_name = "N")]
    intel_domains: Option<usize>,
    /// Run the DNS binding suite instead: what walking a DNS answer costs (against a
    /// cgroup_skb program that only passes) and what the connect() check adds to a UDP
    /// connect() (against a cgroup without the programs).
    #[arg(long, conflicts_with_all = ["live", "dnsperf", "conntrack", "dns_events", "shield", "tls"])]
    bind: bool,
    /// Run the DLP suite instead: the per-call cost of a real SSL_write (Python ssl over
    /// loopback, paced at --dlp-rate) without the probes, with them and the watcher reading
    /// the records, and with them and the ring buffer unread.
    #[arg(long, conflicts_with_all = ["live", "dnsperf", "conntrack", "dns_events", "shield", "tls"])]
    dlp: bool,
    /// dlp suite: calls per second the client paces itself to [default: 50000].
    #[arg(long, value_name = "N")]
    dlp_rate: Option<f64>,
    /// DNS event-flood suite: seconds per configuration and round [default: 2, 0.5 with
    /// --quick].
    #[arg(long, value_name = "S")]
    events_seconds: Option<f64>,
    /// dnsperf suite: list sizes [default: 100000,1000000; 1000 with --quick].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    dnsperf_sizes: Option<Vec<usize>>,
    /// dnsperf suite: seconds per NXDOMAIN run and per measured window of a drop run
    /// [default: 5, 2 with --quick].
    #[arg(long, value_name = "S")]
    dnsperf_seconds: Option<u64>,
    /// dnsperf suite: rounds per list size, each running every configuration once in a
    /// shuffled order [default: 3, 1 with --quick].
    #[arg(long, value_name = "N")]
    dnsperf_rounds: Option<usize>,
    /// dnsperf suite: the fixed rate of the drop runs, in queries per second (at least 100).
    #[arg(long, default_value_t = 10_000, value_name = "QPS", value_parser = clap::value_parser!(u32).range(100..))]
    dnsperf_drop_rate: u32,
    /// Run the DNS response cache suite instead: dnsperf against unbound answering from its
    /// own warm cache, and against the same unbound behind the daemon with `[dns.cache]` warm
    /// (queries/s, CPU per query, latency percentiles, ratios, the cache's counters).
    #[arg(long, conflicts_with_all = ["live", "dnsperf", "conntrack", "dns_events", "shield", "tls"])]
    dns_cache: bool,
    /// dns-cache suite: popular names in the query set, each asked as A, AAAA, MX and TXT
    /// [default: 1000; 200 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4000))]
    dns_cache_names: Option<u32>,
    /// dns-cache suite: seconds per run [default: 5; 1 with --quick].
    #[arg(long, value_name = "S")]
    dns_cache_seconds: Option<u64>,
    /// dns-cache suite: the fixed rate of the latency runs, queries per second [default:
    /// 10000; 2000 with --quick].
    #[arg(long, value_name = "QPS", value_parser = clap::value_parser!(u32).range(100..))]
    dns_cache_rate: Option<u32>,
    /// Run the country-set suite instead: load a generated GeoIP database of GeoLite2's size
    /// (400k IPv4 + 500k IPv6 networks) in both formats, then the cost of a rule on a
    /// country of ~10k prefixes, against the floor, the firewall with no rules and a rule on
    /// a one-entry set in the same rounds.
    #[arg(long, conflicts_with_all = ["live", "dnsperf", "conntrack", "dns_events", "shield", "tls"])]
    geoip: bool,
}

/// Settings once the mode's defaults are applied.
pub struct Settings {
    pub mode: &'static str,
    pub out: PathBuf,
    pub rounds: usize,
    pub target_ms: f64,
    pub rules: Vec<usize>,
    pub sets: Vec<usize>,
    pub hosts: Vec<usize>,
    /// Measure xdp-filter as the reference in the test-run suite.
    pub xdp_filter: bool,
    pub header: Vec<String>,
    pub cpu: Option<usize>,
    pub reload: bool,
    pub seed: u64,
    pub verifier_budget: u32,
    pub dns_sizes: Vec<usize>,
}

impl Args {
    fn settings(&self) -> Settings {
        let default_out = if self.quick {
            std::env::temp_dir().join("palisade-bench")
        } else {
            // The workspace's bench/results, wherever the command is run from.
            Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(
                || PathBuf::from("bench/results"),
                |root| root.join("bench/results"),
            )
        };
        let cpus = inspect::online_cpus();
        Settings {
            mode: if self.quick { "quick" } else { "full" },
            out: self.out.clone().unwrap_or(default_out),
            rounds: self.rounds.unwrap_or(if self.quick { 3 } else { 7 }).max(1),
            target_ms: self
                .target_ms
                .unwrap_or(if self.quick { 15.0 } else { 100.0 }),
            header: self.header.clone().unwrap_or_default(),
            rules: self.rules.clone().unwrap_or_else(|| {
                if self.quick {
                    vec![0, 1, 100, 1000, 10_000]
                } else {
                    vec![0, 1, 100, 1000, 10_000, 100_000]
                }
            }),
            sets: self.sets.clone().unwrap_or_else(|| {
                if self.quick {
                    vec![10_000]
                } else {
                    vec![1000, 10_000, 100_000, 1_000_000]
                }
            }),
            hosts: self.hosts.clone().unwrap_or_else(|| {
                if self.quick {
                    vec![10_000]
                } else {
                    vec![10_000, 1_000_000]
                }
            }),
            xdp_filter: !self.no_xdp_filter,
            cpu: if self.no_pin {
                None
            } else {
                Some(self.cpu.unwrap_or(cpus - 1))
            },
            reload: !self.no_reload && !self.quick,
            seed: self.seed,
            verifier_budget: self.verifier_budget,
            dns_sizes: self.dns_sizes.clone().unwrap_or_else(|| {
                if self.quick {
                    vec![1000, 10_000]
                } else {
                    vec![1000, 100_000, 1_000_000]
                }
            }),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisade-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode> {
    let s = args.settings();
    if args.dga_train {
        dga::train()?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.dga {
        let command = std::iter::once("palisade-bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ");
        dga::run(&s.out, &command)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.dnsperf {
        // Before pinning: dnsperf and the servers get CPUs of their own.
        return run_dnsperf(args, &s);
    }
    if args.dns_cache {
        // Before pinning, as dnsperf.
        return run_dns_cache(args, &s);
    }
    let started = Instant::now();
    let load_start = inspect::loadavg();
    if let Some(cpu) = s.cpu {
        inspect::pin_to_cpu(cpu)?;
    }
    if args.nice != 0
        && let Err(e) = inspect::raise_priority(args.nice)
    {
        eprintln!(
            "palisade-bench: warning: could not set nice {}: {e:#}",
            args.nice
        );
    }
    let command = std::iter::once("palisade-bench".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    if args.live {
        return run_live(args, &s, command);
    }
    if args.conntrack {
        return run_conntrack(args, &s, command);
    }
    if args.nat {
        let settings = nat::NatSettings {
            rounds: args
                .live_rounds
                .unwrap_or(if args.quick { 1 } else { 3 })
                .max(1),
            window: std::time::Duration::from_millis(
                args.live_window_ms
                    .unwrap_or(if args.quick { 300 } else { 1000 }),
            ),
            windows: args
                .live_windows
                .unwrap_or(if args.quick { 3 } else { 2 })
                .max(1),
            cpu: s.cpu.unwrap_or(inspect::online_cpus() - 1),
            nice: args.nice,
            seed: args.seed,
            out: s.out.clone(),
        };
        let report = nat::run(&settings, command)?;
        println!("{}", report.terminal());
        return Ok(ExitCode::SUCCESS);
    }
    if args.shield {
        let report = shield::run(
            &shield::ShieldSettings {
                mode: s.mode,
                rounds: args.rounds.unwrap_or(if args.quick { 2 } else { 7 }).max(1),
                packets: if args.quick { 500 } else { 5000 },
                seed: s.seed,
                live: (!args.shield_no_live).then(|| synflood::FloodSettings {
                    rounds: args
                        .live_rounds
                        .unwrap_or(if args.quick { 1 } else { 3 })
                        .max(1),
                    seconds: args.shield_flood_seconds.unwrap_or(if args.quick {
                        1.0
                    } else {
                        3.0
                    }),
                    cpu: s.cpu.unwrap_or(inspect::online_cpus() - 1),
                    clients: 4,
                    seed: s.seed,
                }),
            },
            command,
        )?;
        let stem = report.write(&s.out)?;
        println!("{}", report.terminal());
        println!("wrote {}/{stem}.{{md,json}}", s.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    if args.lb {
        let report = lb::run(
            &lb::LbSettings {
                mode: s.mode,
                rounds: args.rounds.unwrap_or(if args.quick { 2 } else { 7 }).max(1),
                packets: if args.quick { 500 } else { 5000 },
                seed: s.seed,
                live: (!args.lb_no_live).then(|| lb_live::LiveSettings {
                    rounds: args
                        .live_rounds
                        .unwrap_or(if args.quick { 1 } else { 5 })
                        .max(1),
                    window: std::time::Duration::from_millis(
                        args.live_window_ms
                            .unwrap_or(if args.quick { 300 } else { 1000 }),
                    ),
                    windows: args.live_windows.unwrap_or(2).max(1),
                    cpu: s.cpu.unwrap_or(inspect::online_cpus() - 1),
                    seed: s.seed,
                }),
            },
            command,
        )?;
        let stem = report.write(&s.out)?;
        println!("{}", report.terminal());
        println!("wrote {}/{stem}.{{md,json}}", s.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    if args.dhcp {
        let report = dhcp::run(
            &dhcp::DhcpSettings {
                mode: s.mode,
                rounds: args.rounds.unwrap_or(if args.quick { 3 } else { 7 }).max(1),
                repeat: if args.quick { 100_000 } else { 1_000_000 },
                iterations: if args.quick { 20_000 } else { 200_000 },
            },
            command,
        )?;
        let stem = report.write(&s.out)?;
        println!("{}", report.terminal());
        println!("wrote {}/{stem}.{{md,json}}", s.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    if args.dlp {
        let report = dlp::run(
            &dlp::DlpSettings {
                mode: s.mode,
                rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 5 }).max(1),
                calls: if args.quick { 20_000 } else { 100_000 },
                rate: args.dlp_rate.unwrap_or(50_000.0).max(1.0),
            },
            command,
        )?;
        let stem = report.write(&s.out)?;
        println!("{}", report.terminal());
        println!("wrote {}/{stem}.{{md,json}}", s.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    if args.tls {
        let report = tls::run(
            &tls::TlsSettings {
                mode: s.mode,
                rounds: args.rounds.unwrap_or(if args.quick { 3 } else { 7 }).max(1),
                iterations: if args.quick { 2000 } else { 20_000 },
                names: if args.quick { 10_000 } else { 100_000 },
            },
            command,
        )?;
        let stem = report.write(&s.out)?;
        println!("{}", report.terminal());
        println!("wrote {}/{stem}.{{md,json}}", s.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    if args.intel {
        let report = intel::run(
            &intel::IntelSettings {
                mode: s.mode,
                quick: args.quick,
                // Many short rounds rather than a few long ones: a round the VM's host
                // disturbs (a descheduled vCPU, deferred frees of the maps a refresh
                // emptied) moves a few samples, not the median.
                rounds: args
                    .rounds
                    .unwrap_or(if args.quick { 3 } else { 31 })
                    .max(1),
                repeat: if args.quick { 20_000 } else { 50_000 },
                ips: args
                    .intel_ips
                    .unwrap_or(if args.quick { 100_000 } else { 10_000_000 })
                    .max(1),
                cidrs: args
                    .intel_cidrs
                    .unwrap_or(if args.quick { 10_000 } else { 1_000_000 })
                    .max(1),
                domains: args
                    .intel_domains
                    .unwrap_or(if args.quick { 10_000 } else { 1_000_000 }),
            },
            command,
        )?;
        let stem = report.write(&s.out)?;
        println!("{}", report.terminal());
        println!("wrote {}/{stem}.{{md,json}}", s.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    if args.geoip {
        let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 7 }).max(1);
        let report = geoip::run(rounds, if args.quick { 20_000 } else { 200_000 }, &command)?;
        println!("{report}");
        std::fs::create_dir_all(&s.out)?;
        let path = s.out.join(format!("geoip-{}.md", s.mode));
        std::fs::write(&path, &report)?;
        println!("wrote {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    if args.bind {
        let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 7 }).max(1);
        let report = bind::run(rounds, if args.quick { 20_000 } else { 200_000 })?;
        println!("{report}");
        std::fs::create_dir_all(&s.out)?;
        let path = s.out.join(format!("bind-{}.md", s.mode));
        std::fs::write(&path, format!("`{command}`\n\n{report}"))?;
        println!("wrote {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    if args.dns_events {
        events_flood::run(
            &events_flood::FloodSettings {
                mode: s.mode,
                out: s.out.clone(),
                rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
                seconds: args
                    .events_seconds
                    .unwrap_or(if args.quick { 0.5 } else { 2.0 }),
                cpu: s.cpu.unwrap_or(inspect::online_cpus() - 1),
                seed: s.seed,
            },
            command,
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let firewall = if args.dns_only {
        ExitCode::SUCCESS
    } else {
        crate::suite::run(&s, command.clone(), started, load_start)?
    };
    if !args.no_dns && !dns::run(&s, command)? {
        return Ok(ExitCode::from(2));
    }
    Ok(firewall)
}

fn run_live(args: &Args, s: &Settings, command: String) -> Result<ExitCode> {
    let started = Instant::now();
    let settings = live::LiveSettings {
        mode: s.mode,
        sizes: args.live_sizes.clone().unwrap_or_else(|| {
            if args.quick {
                vec![1, 1000]
            } else {
                vec![1, 1000, 10_000, 100_000, 1_000_000]
            }
        }),
        window: std::time::Duration::from_millis(args.live_window_ms.unwrap_or(if args.quick {
            300
        } else {
            1000
        })),
        windows: args
            .live_windows
            .unwrap_or(if args.quick { 3 } else { 2 })
            .max(1),
        rounds: args
            .live_rounds
            .unwrap_or(if args.quick { 1 } else { 3 })
            .max(1),
        cpu: s.cpu.unwrap_or(inspect::online_cpus() - 1),
        seed: args.seed,
        nice: args.nice,
        out: s.out.clone(),
    };
    eprintln!("palisade-bench ({} mode): live traffic", s.mode);
    let report = live::run(&settings, command)?;
    let stem = report.write(&settings.out)?;
    println!("{}", report.terminal());
    println!(
        "wrote {}/{stem}.{{md,json,svg}} in {:.1} s",
        settings.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_conntrack(args: &Args, s: &Settings, command: String) -> Result<ExitCode> {
    let started = Instant::now();
    let settings = conntrack::CtSettings {
        mode: s.mode,
        out: s.out.clone(),
        rounds: s.rounds,
        target_ms: s.target_ms,
        sweep_entries: args
            .ct_entries
            .unwrap_or(if args.quick { 100_000 } else { 1_000_000 })
            .max(1),
        sweep_rounds: args
            .ct_sweep_rounds
            .unwrap_or(if args.quick { 1 } else { 3 })
            .max(1),
        seed: s.seed,
        cpu: s.cpu,
        live: (!args.ct_no_live).then(|| conntrack::LiveCtSettings {
            rounds: args
                .live_rounds
                .unwrap_or(if args.quick { 1 } else { 3 })
                .max(1),
            window: std::time::Duration::from_millis(
                args.live_window_ms
                    .unwrap_or(if args.quick { 300 } else { 1000 }),
            ),
            windows: args
                .live_windows
                .unwrap_or(if args.quick { 3 } else { 2 })
                .max(1),
            cpu: s.cpu.unwrap_or(inspect::online_cpus() - 1),
            nice: args.nice,
            seed: args.seed,
        }),
    };
    let report = conntrack::run(&settings, command)?;
    let stem = report.write(&settings.out)?;
    println!("{}", report.terminal());
    println!(
        "wrote {}/{stem}.{{md,json}} in {:.1} s",
        settings.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_dnsperf(args: &Args, s: &Settings) -> Result<ExitCode> {
    let started = Instant::now();
    let command = std::iter::once("palisade-bench".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let settings = dnsperf::DnsperfSettings {
        mode: s.mode,
        sizes: args.dnsperf_sizes.clone().unwrap_or_else(|| {
            if args.quick {
                vec![1000]
            } else {
                vec![100_000, 1_000_000]
            }
        }),
        seconds: args
            .dnsperf_seconds
            .unwrap_or(if args.quick { 2 } else { 5 })
            .max(1),
        rounds: args
            .dnsperf_rounds
            .unwrap_or(if args.quick { 1 } else { 3 })
            .max(1),
        drop_rate: args.dnsperf_drop_rate,
        load_timeout: std::time::Duration::from_secs(60),
        clients: 4,
        seed: args.seed,
        out: s.out.clone(),
    };
    eprintln!("palisade-bench ({} mode): dnsperf", s.mode);
    let report = dnsperf::run(&settings, command)?;
    let stem = report.write(&settings.out)?;
    println!("{}", report.terminal());
    println!(
        "wrote {}/{stem}.{{md,json}} in {:.1} s",
        settings.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_dns_cache(args: &Args, s: &Settings) -> Result<ExitCode> {
    let command = std::iter::once("palisade-bench".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let names = args
        .dns_cache_names
        .map_or(if args.quick { 200 } else { 1000 }, |n| n as usize);
    let settings = dnscache::CacheSettings {
        mode: s.mode,
        names,
        lines: if args.quick { 20_000 } else { 100_000 },
        seconds: args
            .dns_cache_seconds
            .unwrap_or(if args.quick { 1 } else { 5 })
            .max(1),
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        latency_rate: args
            .dns_cache_rate
            .unwrap_or(if args.quick { 2000 } else { 10_000 }),
        clients: 4,
        seed: args.seed,
        out: s.out.clone(),
    };
    eprintln!("palisade-bench ({} mode): DNS response cache", s.mode);
    let report = dnscache::run(&settings, command)?;
    let stem = report.write(&settings.out)?;
    println!("wrote {}/{stem}.{{md,json}}", settings.out.display());
    Ok(if report.served_from_cache() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
