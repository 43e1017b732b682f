//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{api::proto::DEFAULT_SOCKET, pin::DEFAULT_PIN_DIR};

/// Palisade: an eBPF network guard for Linux.
///
/// Palisade loads an XDP firewall into the kernel and enforces a policy file on the
/// interfaces you name. With no policy file it enforces a built-in policy that allows
/// everything and only counts, so it can never cut you off.
///
/// `palisade run` is the daemon. The other commands talk to it over a local Unix socket
/// (root only, or a group given with `run --socket-group`).
#[derive(Debug, Parser)]
#[command(
    name = "palisade",
    version,
    propagate_version = true,
    after_long_help = "Examples:
  palisade run --config /etc/palisade/policy.toml --iface eth0
  palisade status
  palisade rule add --name block-telnet --action drop --proto tcp --dport 23
  palisade set add blocklist 203.0.113.7 198.51.100.0/24
  palisade dns add ads tracker.example --ttl 1h
  palisade events --kind firewall --verdict drop
  palisade ct list --proto tcp --state established
  palisade unload"
)]
pub struct Cli {
    /// The daemon's control socket (where `run` listens and the other commands connect).
    #[arg(long, global = true, env = "PALISADE_SOCKET", value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enforce a policy as a daemon, in the foreground.
    ///
    /// Everything it loads is pinned under --pin-dir, so enforcement continues when the
    /// daemon exits or is killed, and a restarted daemon adopts the pinned state without a
    /// gap. SIGINT and SIGTERM stop the daemon and leave the policy enforced (use
    /// `palisade unload`, or --unload-on-exit, to remove it); SIGHUP reloads the policy file.
    ///
    /// Examples:
    ///   palisade run                                 # built-in policy, default-route interface
    ///   palisade run --config /etc/palisade.toml --iface eth0 --iface eth1
    ///   palisade run --config policy.toml --json     # events as JSON lines
    ///   palisade run --config policy.toml --metrics  # Prometheus on 127.0.0.1:9477
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
    /// Validate a policy file; every error is reported with its line and column.
    ///
    /// Example:
    ///   palisade check /etc/palisade.toml
    #[command(verbatim_doc_comment)]
    Check {
        /// The policy file to validate.
        file: PathBuf,
    },
    /// Print the built-in default policy.
    DefaultPolicy,
    /// Show what the daemon enforces: programs, interfaces, policy generation, counters.
    ///
    /// Example:
    ///   palisade status --json
    #[command(verbatim_doc_comment)]
    Status(JsonFlag),
    /// List rules, sets and DNS entries (all of them, or one kind).
    ///
    /// Examples:
    ///   palisade list
    ///   palisade list rules --json
    #[command(verbatim_doc_comment)]
    List {
        /// What to list; everything when left out.
        what: Option<ListWhat>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Firewall rules: list, add or delete them in the running policy.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// IP sets: list them, add or delete members.
    #[command(subcommand)]
    Set(SetCommand),
    /// DNS lists: list them, add or delete names (optionally for a limited time).
    #[command(subcommand)]
    Dns(DnsCommand),
    /// Read the policy file again and install it in one step (live changes are discarded).
    ///
    /// An invalid file changes nothing; the errors are printed.
    Reload,
    /// Stream events: firewall drops and DNS decisions.
    ///
    /// Examples:
    ///   palisade events
    ///   palisade events --kind dns --verdict drop --json
    ///   palisade events --name example.com
    #[command(verbatim_doc_comment)]
    Events(EventsArgs),
    /// Show every counter: totals, drops by reason, per rule, DNS.
    Stats(JsonFlag),
    /// Connection tracking: list or flush tracked flows, show the tracker's counters.
    #[command(subcommand)]
    Ct(CtCommand),
    /// DDoS shields: the heavy hitters of the per-source limits.
    #[command(subcommand)]
    Shield(ShieldCommand),
    /// The load balancer: list services and backends, change backends live.
    ///
    /// Examples:
    ///   palisade lb
    ///   palisade lb list --json
    ///   palisade lb add web 10.1.0.4 --weight 2
    ///   palisade lb drain web 10.1.0.1
    ///   palisade lb undrain web 10.1.0.1
    ///   palisade lb weight web 10.1.0.2 3
    ///   palisade lb remove web 10.1.0.4
    #[command(verbatim_doc_comment)]
    Lb(LbArgs),
    /// The DHCP lease table of `[dhcp]`: MAC, address, hostname and lease end of every
    /// DHCPv4 and DHCPv6 lease and router advertisement seen on the guarded interfaces.
    ///
    /// Examples:
    ///   palisade leases
    ///   palisade leases --json
    #[command(verbatim_doc_comment)]
    Leases(JsonFlag),
    /// Detach everything and remove every pin; the daemon, if running, exits.
    ///
    /// Without a running daemon it removes what is pinned under --pin-dir (for example after
    /// the daemon was killed).
    Unload {
        /// Where the state is pinned (used when no daemon answers).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Run a capture through the kernel programs under a policy file, attaching nothing.
    ///
    /// Every packet of FILE (pcap or pcapng; Ethernet or Linux cooked) goes through a private,
    /// unpinned copy of the datapath with BPF_PROG_TEST_RUN, in capture order, so connection
    /// tracking carries from packet to packet. A running daemon is not touched. Packets a
    /// cooked capture marks as sent by the host go through the tracker's egress program.
    /// Needs root (or CAP_BPF and CAP_NET_ADMIN).
    ///
    /// Examples:
    ///   palisade replay --config policy.toml traffic.pcap
    ///   palisade replay --config new.toml --against old.toml traffic.pcapng --json
    ///   palisade replay --config policy.toml --expect-no-drops ci.pcap   # exit 3 on drops
    ///   palisade replay --config policy.toml --host 192.0.2.10 eth0.pcap
    #[command(verbatim_doc_comment)]
    Replay(ReplayArgs),
    /// A live, full-screen view of what the daemon does, read from its control socket.
    ///
    /// Packets, drops and DNS queries per second with sparklines; drops by reason; rules;
    /// top talkers, blocked names, processes and cgroups (from the event stream, since top
    /// started); conntrack occupancy. Keys: Tab or 1-7 change the view, / filters, s sorts,
    /// p or Space pauses, Enter shows the selected row's detail, ? helps, q quits. Fits an
    /// 80x24 terminal.
    ///
    /// Examples:
    ///   palisade top
    ///   palisade top --interval 500
    ///   palisade top --once --width 120 --height 40   # one frame as text, for scripts
    #[command(verbatim_doc_comment)]
    Top(TopArgs),
    /// Propose a least-privilege policy from captured or live traffic.
    ///
    /// Reads the captures' connections and DNS answers (or, with --duration, watches the
    /// running daemon: its tracked flows and DNS events) and writes a policy: inbound services
    /// become firewall rules, connections to addresses a DNS answer gave become names in a
    /// [dns.egress] allowlist with [dns.bind] (connect only to what was resolved), and other
    /// destinations [dns.bind] allow entries. Each entry's comment is its evidence. Groups
    /// seen in fewer than --min-flows connections are held for review (commented out);
    /// what the --never-allow policy denies is withheld. With --evaluate, the proposal runs
    /// through the kernel programs (audit mode) over held-out traffic and synthetic
    /// never-seen flows, and the shares each admits are reported (needs root).
    ///
    /// Examples:
    ///   palisade learn --capture monday.pcap --capture tuesday.pcap --output proposal.toml
    ///   palisade learn --capture train.pcap --never-allow never.toml --min-flows 5
    ///   palisade learn --capture train.pcap --evaluate held-out.pcap --json
    ///   palisade learn --duration 3600 --output proposal.toml
    #[command(verbatim_doc_comment)]
    Learn(LearnArgs),
    /// Print a shell completion script.
    ///
    /// Examples:
    ///   palisade completions bash > /etc/bash_completion.d/palisade
    ///   palisade completions zsh > "${fpath[1]}/_palisade"
    ///   palisade completions fish > ~/.config/fish/completions/palisade.fish
    #[command(verbatim_doc_comment)]
    Completions { shell: clap_complete::Shell },
    /// Exit 0 when the daemon enforces, and enforces the policy in FILE (a probe).
    ///
    /// Ready means: a program is attached to every interface the daemon guards and, with
    /// --policy, the policy in force is the current content of FILE (a reload that failed,
    /// or one not done yet, is not ready). Exit codes: 0 ready, 1 not ready, 3 no daemon
    /// answers. The Kubernetes chart's startup and readiness probes run it.
    ///
    /// Example:
    ///   palisade ready --policy /etc/palisade/policy.toml
    #[command(verbatim_doc_comment)]
    Ready {
        /// The policy file the daemon must enforce (compared by content).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Remove everything pinned under --pin-dir, then wait for a signal.
    ///
    /// The chart's cleanup mode runs it as the DaemonSet's container, so every node drops
    /// its policy before the chart is uninstalled; a plain `palisade unload` would exit and
    /// be restarted by the kubelet.
    Cleanup {
        /// Where the state is pinned.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// DLP on TLS plaintext: probes on OpenSSL's SSL_write/SSL_read report secrets that
    /// processes send or receive (needs root; see docs/design/dlp.md).
    ///
    /// Examples:
    ///   palisade dlp watch --policy /etc/palisade/policy.toml
    ///   palisade dlp coverage
    #[command(subcommand, verbatim_doc_comment)]
    Dlp(DlpCommand),
    /// IDS signatures (a Suricata-compatible subset): check a rule file, or run the rules over
    /// a capture offline and print alerts and each flow's coverage.
    ///
    /// Examples:
    ///   palisade ids check /etc/palisade/ids.rules
    ///   palisade ids pcap --rules ids.rules capture.pcap --json
    #[command(verbatim_doc_comment, subcommand)]
    Ids(IdsCommand),
    /// Print the `PalisadePolicy` CustomResourceDefinition, or check policy objects.
    ///
    /// Examples:
    ///   palisade crd > palisadepolicy.yaml
    ///   palisade crd --check edge.yaml --base policy.toml   # compile objects over a base policy
    #[command(verbatim_doc_comment)]
    Crd {
        /// Policy objects (YAML) to compile over the base policy instead of printing.
        #[arg(long, value_name = "FILE")]
        check: Vec<PathBuf>,
        /// The base policy for --check [default: the built-in policy].
        #[arg(long, value_name = "FILE")]
        base: Option<PathBuf>,
    },
}

/// `--json`.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListWhat {
    Rules,
    Sets,
    Dns,
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// List the rules in evaluation order, with their counters.
    List(JsonFlag),
    /// Add a rule. It is checked like a rule in the policy file; an invalid rule changes
    /// nothing.
    ///
    /// Examples:
    ///   palisade rule add --name block-telnet --action drop --proto tcp --dport 23
    ///   palisade rule add --name office-ssh --priority 5 --action allow --proto tcp --dport 22 --src 10.0.0.0/8
    ///   palisade rule add --name drop-bad --action drop --src @blocklist --log
    ///   palisade rule add --name ping-limit --action rate-limit --proto icmp --icmp-type 8 --rate-pps 10 --rate-burst 20
    ///   palisade rule add --name voip-ef --action mark --proto udp --dport 5060 --set-mark 0x2a --set-dscp ef
    ///   palisade rule add --name tap-dns --action mirror --proto udp --dport 53 --mirror-to tap0
    ///   palisade rule add --name out-b --action redirect --dst 198.51.100.0/24 --redirect-to eth2
    ///   palisade rule add --name via-100 --action redirect --src 10.1.0.0/16 --route-table 100
    ///   palisade rule add --name spread-syslog --action steer --proto udp --dport 514 --cpus 2,3
    #[command(verbatim_doc_comment)]
    Add(Box<RuleAddArgs>),
    /// Delete the rule with this name.
    ///
    /// Example:
    ///   palisade rule delete block-telnet
    #[command(verbatim_doc_comment, visible_aliases = ["del", "remove", "rm"])]
    Delete {
        /// The rule's name.
        name: String,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct RuleAddArgs {
    /// The rule's name (1 to 64 of A-Z a-z 0-9 _ . -), unique among rules.
    #[arg(long)]
    pub name: String,
    /// `allow`, `drop`, `rate-limit`, `mark` (with --set-mark and/or --set-dscp), `mirror`
    /// (with --mirror-to), `redirect` (with --redirect-to or --route-table) or `steer` (with
    /// --cpus).
    #[arg(long)]
    pub action: String,
    /// Lower runs first; default: after every existing rule.
    #[arg(long)]
    pub priority: Option<u32>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `any` or a protocol number.
    #[arg(long)]
    pub proto: Option<String>,
    /// Source address, CIDR block or @set; repeat for several blocks.
    #[arg(long)]
    pub src: Vec<String>,
    /// Destination address, CIDR block or @set; repeat for several blocks.
    #[arg(long)]
    pub dst: Vec<String>,
    /// Source port or range LO-HI (tcp/udp).
    #[arg(long)]
    pub sport: Option<String>,
    /// Destination port or range LO-HI (tcp/udp).
    #[arg(long)]
    pub dport: Option<String>,
    /// TCP flags VALUE/MASK, e.g. `syn/syn,ack`.
    #[arg(long)]
    pub tcp_flags: Option<String>,
    /// ICMP or ICMPv6 type.
    #[arg(long)]
    pub icmp_type: Option<u8>,
    /// ICMP or ICMPv6 code (needs --icmp-type).
    #[arg(long)]
    pub icmp_code: Option<u8>,
    /// Emit an event for every packet this rule drops.
    #[arg(long)]
    pub log: bool,
    /// rate-limit: packets per second.
    #[arg(long)]
    pub rate_pps: Option<u32>,
    /// rate-limit: bucket size in packets.
    #[arg(long)]
    pub rate_burst: Option<u32>,
    /// rate-limit: `source` (a bucket per source address), `rule`, or `country` (a bucket per
    /// source country; needs [geoip]).
    #[arg(long)]
    pub rate_per: Option<String>,
    /// DSCP code point `0..=63` or name (`ef`, `af41`, `cs1`, ...).
    #[arg(long)]
    pub dscp: Option<String>,
    /// ECN codepoint: `not-ect`, `ect1`, `ect0`, `ce` or `0..=3`.
    #[arg(long)]
    pub ecn: Option<String>,
    /// TTL / hop limit `N` or range `LO-HI`.
    #[arg(long)]
    pub ttl: Option<String>,
    /// IP packet length `N` or range `LO-HI`.
    #[arg(long)]
    pub length: Option<String>,
    /// Ethernet source address, `aa:bb:cc:dd:ee:ff`.
    #[arg(long)]
    pub src_mac: Option<String>,
    /// Ethernet destination address, `aa:bb:cc:dd:ee:ff`.
    #[arg(long)]
    pub dst_mac: Option<String>,
    /// The outermost VLAN tag's id `0..=4095`, or `untagged`.
    #[arg(long)]
    pub vlan: Option<String>,
    /// The interface the frame arrives on, by name.
    #[arg(long)]
    pub iface: Option<String>,
    /// Negate a condition given: `src`, `dst`, `sport`, `dport` or `proto`; repeatable.
    #[arg(long)]
    pub not: Vec<String>,
    /// mark: the socket buffer's mark `0..=4294967295` (decimal or 0x hex).
    #[arg(long)]
    pub set_mark: Option<String>,
    /// mark: the DSCP code point written into the IP header, `0..=63` or a name.
    #[arg(long)]
    pub set_dscp: Option<String>,
    /// mirror: the interface that gets a copy of each matching packet.
    #[arg(long)]
    pub mirror_to: Option<String>,
    /// redirect: the interface the matching packets leave by, as they are.
    #[arg(long)]
    pub redirect_to: Option<String>,
    /// redirect: the routing table (`254` is main) whose next hop the packets go to.
    #[arg(long)]
    pub route_table: Option<u32>,
    /// steer: the CPUs the matching flows are spread over, e.g. `0,1`.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<u32>,
    /// steer: the CPU map entry's queue size `1..=16384` (default 2048).
    #[arg(long)]
    pub queue_size: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum SetCommand {
    /// List the sets (or one) and their members.
    List {
        /// Only this set.
        set: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Add addresses or CIDR blocks to a set.
    ///
    /// Example:
    ///   palisade set add blocklist 203.0.113.7 2001:db8:bad::/48
    #[command(verbatim_doc_comment)]
    Add {
        /// The set's name (with or without @).
        set: String,
        /// Addresses or CIDR blocks.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove addresses or CIDR blocks from a set (each must be in it).
    ///
    /// Example:
    ///   palisade set delete blocklist 203.0.113.7
    #[command(verbatim_doc_comment, visible_aliases = ["del", "remove", "rm"])]
    Delete {
        set: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DnsCommand {
    /// List the DNS lists (or one) and their entries.
    List {
        /// Only this list.
        list: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Add names to a DNS list; with --ttl they stop applying after that time.
    ///
    /// Examples:
    ///   palisade dns add ads tracker.example '*.ads.example'
    ///   palisade dns add corp build.example.net --ttl 30m --qtype A --qtype AAAA
    #[command(verbatim_doc_comment)]
    Add {
        /// The list's name.
        list: String,
        /// Names (`example.com` exactly, `*.example.com` the names below it).
        #[arg(required = true)]
        names: Vec<String>,
        /// How long the names apply: seconds, or a number with s, m, h or d.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// Only these query types (A, AAAA, MX, ... or a number); repeat for several.
        #[arg(long = "qtype")]
        qtypes: Vec<String>,
        /// Plain names also match every name below them.
        #[arg(long)]
        subdomains: bool,
    },
    /// Remove names from a DNS list (each must be in it).
    ///
    /// Example:
    ///   palisade dns delete ads tracker.example
    #[command(verbatim_doc_comment, visible_aliases = ["del", "remove", "rm"])]
    Delete {
        list: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CtCommand {
    /// List tracked flows: who opened them, their state, age, idle time and traffic.
    ///
    /// SOURCE is the endpoint that opened the flow. Filters combine: every one given must
    /// hold. `ct flush` with the same filters removes exactly the flows listed.
    ///
    /// Examples:
    ///   palisade ct list
    ///   palisade ct list --proto tcp --state established --json
    ///   palisade ct list --addr 203.0.113.0/24 --dport 443
    ///   palisade ct list --state syn-sent,syn-recv
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List {
        #[command(flatten)]
        filter: CtFilterArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Remove tracked flows (all of them without filters) and print how many were removed.
    ///
    /// One pass of the in-kernel sweep removes them, whatever the table size. Packets of a
    /// removed flow are judged again as new (a TCP segment without SYN as invalid), so a
    /// flush under `stateful = true` cuts flows the rules do not allow on their own.
    ///
    /// Examples:
    ///   palisade ct flush --src 198.51.100.7
    ///   palisade ct flush --proto udp --dport 53
    ///   palisade ct flush --state new
    ///   palisade ct flush                  # every flow
    #[command(verbatim_doc_comment)]
    Flush {
        #[command(flatten)]
        filter: CtFilterArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show the tracker's counters, its tables by protocol and state, the top sources, and the
    /// overload set's members, additions and removals.
    ///
    /// `evicted` is derived: the kernel does not report evictions from the LRU table of
    /// unvalidated flows, so they are the entries inserted there less those promoted,
    /// expired, flushed and present.
    ///
    /// Example:
    ///   palisade ct stats --json
    #[command(verbatim_doc_comment)]
    Stats(JsonFlag),
    /// List the overload set: addresses that went over `[conntrack] max_per_source` or
    /// `new_per_source`, how long they stay, and the limit that put them there.
    ///
    /// Rules naming the set (`src = "@NAME"`) match them like listed members until their
    /// time (`overload_ttl`) is over. `flush` takes them out at once.
    ///
    /// Examples:
    ///   palisade ct overload
    ///   palisade ct overload --addr 203.0.113.0/24 --json
    ///   palisade ct overload flush --addr 203.0.113.9
    ///   palisade ct overload flush             # every member
    #[command(verbatim_doc_comment)]
    Overload {
        #[command(subcommand)]
        action: Option<OverloadAction>,
        /// Only members in this address or CIDR block.
        #[arg(long, value_name = "ADDR|CIDR", value_parser = crate::conntrack::filter::check_addr)]
        addr: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `palisade lb ...`
#[derive(Debug, Args)]
pub struct LbArgs {
    #[command(subcommand)]
    pub command: Option<LbCommand>,
}

/// What `palisade lb` does; listing when nothing is given.
#[derive(Debug, Subcommand)]
pub enum LbCommand {
    /// The services, their backends (weight and state: up, draining, down, removed) and the
    /// flow table's fill.
    List {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Add a backend to a service: it takes new flows at once.
    Add {
        service: String,
        addr: String,
        /// Its weight (1 to 65535; 1 when not given).
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Remove a backend: no new flows; its flows stay until they end.
    Remove { service: String, addr: String },
    /// Drain a backend: it keeps its flows and gets no new ones.
    Drain { service: String, addr: String },
    /// A drained backend takes new flows again.
    Undrain { service: String, addr: String },
    /// Set a backend's weight.
    Weight {
        service: String,
        addr: String,
        weight: u32,
    },
}

/// `palisade shield ...`
#[derive(Debug, Subcommand)]
pub enum ShieldCommand {
    /// List the heavy hitters: source prefixes that went over `[shield] source_rate`, their
    /// drops, and how long their block has left (with `source_block`). `flush` forgets them,
    /// which ends their blocks.
    ///
    /// Examples:
    ///   palisade shield hitters
    ///   palisade shield hitters --json
    ///   palisade shield hitters flush
    #[command(verbatim_doc_comment)]
    Hitters {
        #[command(subcommand)]
        action: Option<HittersAction>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// What `shield hitters` does besides listing.
#[derive(Debug, Subcommand)]
pub enum HittersAction {
    /// Forget every heavy hitter (their blocks end) and print how many there were.
    Flush {
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// What `ct overload` does besides listing.
#[derive(Debug, Subcommand)]
pub enum OverloadAction {
    /// Remove members (all of them without `--addr`) and print how many were removed.
    ///
    /// One pass of the in-kernel sweep removes them, whatever their number.
    Flush {
        /// Only members in this address or CIDR block.
        #[arg(long, value_name = "ADDR|CIDR", value_parser = crate::conntrack::filter::check_addr)]
        addr: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// Which tracked flows `ct list` and `ct flush` take.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CtFilterArgs {
    /// Address or CIDR block of either endpoint.
    #[arg(long, value_name = "ADDR|CIDR", value_parser = crate::conntrack::filter::check_addr)]
    pub addr: Option<String>,
    /// Address or CIDR block of the endpoint that opened the flow.
    #[arg(long, value_name = "ADDR|CIDR", value_parser = crate::conntrack::filter::check_addr)]
    pub src: Option<String>,
    /// Address or CIDR block of the endpoint that answers.
    #[arg(long, value_name = "ADDR|CIDR", value_parser = crate::conntrack::filter::check_addr)]
    pub dst: Option<String>,
    /// Port of either endpoint (for ICMP echo flows: the identifier).
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Port of the endpoint that opened the flow.
    #[arg(long, value_name = "N")]
    pub sport: Option<u16>,
    /// Port of the endpoint that answers.
    #[arg(long, value_name = "N")]
    pub dport: Option<u16>,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or a protocol number.
    #[arg(long, value_parser = crate::conntrack::filter::check_proto)]
    pub proto: Option<String>,
    /// `new` (not answered yet), `established` (TCP established, or answered), or entry
    /// states: syn-sent, syn-sent2, syn-recv, established, fin-wait, last-ack, time-wait,
    /// close, unreplied, replied. Several separated by commas.
    #[arg(long, value_name = "STATE[,STATE...]", value_parser = crate::conntrack::filter::check_states)]
    pub state: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only events of this kind.
    #[arg(long, value_parser = ["firewall", "dns", "tls", "dhcp", "intel", "dga", "ids", "dlp"])]
    pub kind: Option<String>,
    /// Only events with this verdict (`pass` and `allow` are the same).
    #[arg(long, value_parser = ["drop", "pass", "allow", "nxdomain", "sinkhole", "refused", "audit", "lease", "alert", "tag"])]
    pub verdict: Option<String>,
    /// Only events whose DNS name or rule name contains this text (case-insensitive).
    #[arg(long)]
    pub name: Option<String>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Policy file (TOML). Without it the built-in default policy is used.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to guard; repeat for several. Default: the interface of the default route.
    #[arg(short, long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// Attach in generic (skb) mode even where native XDP is available.
    #[arg(long)]
    pub generic: bool,
    /// Print events as JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not print events on stdout (`palisade events` still streams them).
    #[arg(long)]
    pub quiet: bool,
    /// Stop after this many seconds (for scripted runs); 0 runs until interrupted.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub duration: u64,
    /// Where maps, programs and links are pinned (on a BPF filesystem; mounted at
    /// /sys/fs/bpf when missing).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Detach everything and remove the pins when the daemon exits (by signal or
    /// --duration). By default the policy stays enforced after the daemon exits.
    #[arg(long)]
    pub unload_on_exit: bool,
    /// Also let members of this group use the control socket.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Mode of the control socket, in octal [default: 0600, or 0660 with --socket-group].
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default address: 127.0.0.1:9477].
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = crate::metrics::DEFAULT_ADDR)]
    pub metrics: Option<String>,
    /// Format of log lines on stderr (level from PALISADE_LOG, e.g. `info`).
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Reload when the --config file or its directory's `..data` symlink changes (a
    /// Kubernetes ConfigMap volume, which kubelet updates by swapping that symlink).
    #[arg(long, requires = "config")]
    pub watch_config: bool,
    /// Merge the cluster's PalisadePolicy objects that select this node over --config
    /// (the base policy), as they change. Needs --node-name; the API server is found from
    /// the pod's service account or KUBECONFIG.
    #[arg(long)]
    pub kubernetes: bool,
    /// This node's name, for --kubernetes (the downward API's spec.nodeName).
    #[arg(long, env = "K8S_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Where --kubernetes keeps the last applied merged policy; it is enforced at start
    /// until the cluster's lists have synced.
    #[arg(long, value_name = "FILE", default_value = crate::fleet::DEFAULT_STATE_FILE)]
    pub applied_policy: PathBuf,
    /// Export events as OpenTelemetry logs to this collector (http://HOST[:PORT][/PATH]);
    /// default: OTEL_EXPORTER_OTLP_LOGS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: grpc or http/protobuf; default: OTEL_EXPORTER_OTLP_LOGS_PROTOCOL or
    /// OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf.
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
}

/// Parses `--ttl`: seconds, or a number followed by s, m, h or d.
///
/// # Errors
/// When the text is not such a duration or is zero.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let (num, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}` is not a duration: use seconds, or a number with s, m, h or d (e.g. 90, 15m, 2h)"
            ));
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: it needs a number, e.g. 15m"))?;
    if n == 0 {
        return Err("the TTL must be at least 1 second".into());
    }
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// Parses `--socket-mode` (octal).
///
/// # Errors
/// When it is not an octal mode up to 0777.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let t = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(t, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("`{text}` is not a file mode: use octal, e.g. 0660")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ttls_and_modes() {
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("2h"), Ok(7200));
        assert_eq!(parse_ttl("1d"), Ok(86_400));
        assert!(parse_ttl("0").unwrap_err().contains("at least"));
        assert!(parse_ttl("5y").unwrap_err().contains("`5y`"));
        assert!(parse_ttl("m").is_err());
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("999").is_err());
    }

    #[test]
    fn existing_run_flags_still_parse() {
        let cli = Cli::try_parse_from([
            "palisade",
            "run",
            "--config",
            "p.toml",
            "--iface",
            "eth0",
            "--json",
            "--generic",
            "--duration",
            "3",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!()
        };
        assert!(a.json && a.generic && a.duration == 3 && !a.unload_on_exit);
        assert_eq!(a.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!(a.metrics, None);
        let cli = Cli::try_parse_from(["palisade", "run", "--metrics"]).unwrap();
        let Command::Run(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.metrics.as_deref(), Some("127.0.0.1:9477"));
    }

    #[test]
    fn shield_hitters_lists_and_flushes() {
        let cli = Cli::try_parse_from(["palisade", "shield", "hitters", "--json"]).unwrap();
        let Command::Shield(ShieldCommand::Hitters { action: None, json }) = cli.command else {
            panic!()
        };
        assert!(json.json);
        let cli = Cli::try_parse_from(["palisade", "shield", "hitters", "flush"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Shield(ShieldCommand::Hitters {
                action: Some(HittersAction::Flush { .. }),
                ..
            })
        ));
        assert!(Cli::try_parse_from(["palisade", "shield", "hitter"]).is_err());
    }

    #[test]
    fn ct_overload_lists_and_flushes() {
        let cli = Cli::try_parse_from(["palisade", "ct", "overload", "--json"]).unwrap();
        let Command::Ct(CtCommand::Overload {
            action: None,
            addr: None,
            json,
        }) = cli.command
        else {
            panic!()
        };
        assert!(json.json);
        let cli = Cli::try_parse_from([
            "palisade",
            "ct",
            "overload",
            "flush",
            "--addr",
            "203.0.113.0/24",
        ])
        .unwrap();
        let Command::Ct(CtCommand::Overload {
            action: Some(OverloadAction::Flush { addr, json }),
            ..
        }) = cli.command
        else {
            panic!()
        };
        assert_eq!(addr.as_deref(), Some("203.0.113.0/24"));
        assert!(!json.json);
        let e = Cli::try_parse_from([
            "palisade",
            "ct",
            "overload",
            "flush",
            "--addr",
            "10.0.0.1/8",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--addr"), "{e}");
    }

    #[test]
    fn ct_filters_parse_and_bad_ones_name_their_argument() {
        let cli = Cli::try_parse_from([
            "palisade",
            "ct",
            "list",
            "--addr",
            "10.0.0.0/8",
            "--dport",
            "443",
            "--proto",
            "TCP",
            "--state",
            "new,time-wait",
            "--json",
        ])
        .unwrap();
        let Command::Ct(CtCommand::List { filter, json }) = cli.command else {
            panic!()
        };
        assert!(json.json);
        assert_eq!(filter.addr.as_deref(), Some("10.0.0.0/8"));
        assert_eq!(filter.dport, Some(443));
        assert_eq!(filter.proto.as_deref(), Some("TCP"));
        assert_eq!(filter.state.as_deref(), Some("new,time-wait"));
        for (args, arg, why) in [
            (["--state", "bogus"], "--state", "unknown state `bogus`"),
            (["--state", "related"], "--state", "classifies packets"),
            (["--proto", "tcpx"], "--proto", "unknown protocol `tcpx`"),
            (["--addr", "10.0.0.1/40"], "--addr", "prefix length 40"),
            (["--src", "nowhere"], "--src", "invalid address"),
            (["--port", "70000"], "--port", "70000"),
        ] {
            let e = Cli::try_parse_from(["palisade", "ct", "flush", args[0], args[1]])
                .unwrap_err()
                .to_string();
            assert!(e.contains(arg) && e.contains(why), "{args:?}: {e}");
        }
        let cli = Cli::try_parse_from(["palisade", "ct", "flush"]).unwrap();
        let Command::Ct(CtCommand::Flush { filter, .. }) = cli.command else {
            panic!()
        };
        assert!(crate::conntrack::FlowFilter::from(filter).is_empty());
    }
}

/// `palisade replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The policy to run the capture under.
    #[arg(long, value_name = "POLICY.toml")]
    pub config: PathBuf,
    /// A second policy: report the packets it treats differently.
    #[arg(long, value_name = "OTHER.toml")]
    pub against: Option<PathBuf>,
    /// An address or CIDR block of the host whose traffic was captured: packets from it are
    /// taken as sent by the host (through the tracker's egress program), whatever the link
    /// type. Repeat for several. Cooked captures need none: they record the direction.
    #[arg(long, value_name = "CIDR")]
    pub host: Vec<String>,
    /// Exit with status 3 when the policy would drop any packet.
    #[arg(long)]
    pub expect_no_drops: bool,
    /// Print one JSON object (totals by verdict and reason, rules and names hit, flows that
    /// would break, differences, and every packet's outcome).
    #[arg(long)]
    pub json: bool,
    /// The capture (pcap or pcapng).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `palisade top`.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Refresh interval, in milliseconds (at least 100).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub interval: u64,
    /// Print one frame as text (two samples one interval apart) instead of the live view.
    #[arg(long)]
    pub once: bool,
    /// Width of the `--once` frame.
    #[arg(long, default_value_t = 80, requires = "once")]
    pub width: u16,
    /// Height of the `--once` frame.
    #[arg(long, default_value_t = 24, requires = "once")]
    pub height: u16,
}

/// `palisade learn`.
#[derive(Debug, Clone, Args)]
pub struct LearnArgs {
    /// A capture (pcap or pcapng) to learn from. Repeat for several.
    #[arg(long, value_name = "FILE.pcap")]
    pub capture: Vec<PathBuf>,
    /// Watch the running daemon for this many seconds instead: flows from its connection
    /// tracker (the policy must track connections), names, processes and cgroups from its
    /// DNS events ([dns.egress] log_allowed = true), answers from a packet socket (root).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Write the proposed policy here instead of stdout.
    #[arg(long, short, value_name = "POLICY.toml")]
    pub output: Option<PathBuf>,
    /// Connections a service, name or address needs to be allowed; rarer ones are held
    /// for review.
    #[arg(long, value_name = "N", default_value_t = crate::learn::DEFAULT_MIN_FLOWS)]
    pub min_flows: u64,
    /// A policy that learning cannot override: what its firewall rules, sets and DNS
    /// blocklists deny is never proposed as allowed.
    #[arg(long, value_name = "POLICY.toml")]
    pub never_allow: Option<PathBuf>,
    /// An address or CIDR block of the captured host (for Ethernet captures): packets from
    /// it are taken as sent by the host. Repeat for several.
    #[arg(long, value_name = "CIDR")]
    pub host: Vec<String>,
    /// cgroup v2 directory for [dns.egress] and [dns.bind] in the proposal (default the
    /// cgroup v2 root). Repeat for several.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Vec<String>,
    /// A held-out capture to evaluate the proposal on (needs root).
    #[arg(long, value_name = "HELD_OUT.pcap")]
    pub evaluate: Option<PathBuf>,
    /// Synthetic never-seen flows for --evaluate.
    #[arg(long, value_name = "N", default_value_t = crate::learn::evaluate::DEFAULT_SYNTHETIC)]
    pub synthetic: usize,
    /// Seed of the synthetic flows.
    #[arg(long, value_name = "SEED", default_value_t = crate::learn::evaluate::DEFAULT_SEED)]
    pub seed: u64,
    /// Print the report as one JSON object, the proposal's text in `policy`.
    #[arg(long)]
    pub json: bool,
}

/// `palisade dlp`.
#[derive(Debug, Subcommand)]
pub enum DlpCommand {
    /// Probe every OpenSSL libssl in use and report matches of the policy's [dlp] detectors
    /// as JSON lines on stdout, until interrupted (or for --duration seconds). Processes whose
    /// TLS cannot be probed are reported as `dlp-uncovered`.
    ///
    /// Example:
    ///   palisade dlp watch --policy policy.toml
    #[command(verbatim_doc_comment)]
    Watch {
        /// The policy file; its [dlp] section is used.
        #[arg(long, value_name = "POLICY.toml")]
        policy: PathBuf,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
    },
    /// List the processes using TLS, covered (their OpenSSL is probed by a running watcher)
    /// or uncovered (GnuTLS, NSS, Go crypto/tls, rustls, static OpenSSL), with the reason.
    ///
    /// Example:
    ///   palisade dlp coverage --all
    #[command(verbatim_doc_comment)]
    Coverage {
        /// Also list processes without any TLS library.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdsCommand {
    /// Parse a rule file; the first refused rule is reported as FILE:LINE and the keyword.
    Check {
        /// The rule file.
        rules: PathBuf,
    },
    /// Run the rules over a capture (classic pcap) the way the daemon would: the kernel's
    /// preselection (port groups, prefilter), then the full match on packets and reassembled
    /// streams. Prints the alerts and the coverage of every flow.
    Pcap {
        /// The rule file.
        #[arg(long)]
        rules: PathBuf,
        /// The capture.
        pcap: PathBuf,
        /// Print one JSON object (alerts, flows, totals).
        #[arg(long)]
        json: bool,
    },
    /// The IDS coverage of each live flow, from the daemon: packets and bytes seen and
    /// inspected, bytes truncated, why the flow was selected (or that it was sampled out),
    /// the sids that matched and whether it is dropped.
    ///
    /// Examples:
    ///   palisade ids flows
    ///   palisade ids flows --json
    #[command(verbatim_doc_comment)]
    Flows {
        #[command(flatten)]
        json: JsonFlag,
    },
}
