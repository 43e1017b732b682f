//! The filters under test: putting each tool's rules in place on `filt`, reading its drop
//! counter, taking it away again.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{XdpMode, xdp::XdpLinkId};
use palisade::{
    guard::FIREWALL,
    policy::config::MAX_RULES,
    policy::model::{Action, AddrMatch, Policy},
    testrun::sum_counter,
};
use palisade_common::stats;
use serde::Serialize;

use super::FILT_IF;
use crate::{
    harness::{FLOOR_DROP, FLOOR_PASS, Loaded},
    netns::Netns,
    workload::{cidr, empty_policy, rule, set_blocklist, short_count},
};

const NFT_TABLE: &str = "palisade_bench";
const NFT_INET_TABLE: &str = "palisade_bench_inet";
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
    /// nftables, inet family, prerouting hook at raw priority (before conntrack), one rule
    /// on a hash set of N addresses: where most nftables rulesets filter.
    NftInet,
    /// iptables (legacy), raw PREROUTING, N rules in a linear chain.
    Iptables,
    /// iptables (legacy) raw PREROUTING, one rule on an ipset `hash:ip` of N addresses.
    Ipset,
    /// xdp-tools' xdp-filter (IPv4 feature only), N source addresses.
    XdpFilter,
}

impl Tool {
    pub const fn label(self) -> &'static str {
        match self {
            Self::NoFilter => "no filter (XDP_PASS, stack, blackhole route)",
            Self::XdpDrop => "XDP_DROP floor (generation + veth only)",
            Self::Palisade => "Palisade, N rules",
            Self::PalisadeSet => "Palisade, 1 rule on a set of N",
            Self::Nft => "nftables netdev ingress, set of N",
            Self::NftInet => "nftables inet prerouting (raw), set of N",
            Self::Iptables => "iptables-legacy raw, N rules (linear)",
            Self::Ipset => "iptables-legacy raw + ipset hash:ip of N",
            Self::XdpFilter => "xdp-filter, N addresses",
        }
    }

    /// The label with N filled in.
    pub fn describe(self, n: usize) -> String {
        let text = self.label().replace('N', &short_count(n));
        if n == 1 {
            text.replace(" 1 rules", " 1 rule")
                .replace(" 1 addresses", " 1 address")
        } else {
            text
        }
    }

    pub const fn slug(self) -> &'static str {
        match self {
            Self::NoFilter => "no-filter",
            Self::XdpDrop => "xdp-drop",
            Self::Palisade => "palisade",
            Self::PalisadeSet => "palisade-set",
            Self::Nft => "nft",
            Self::NftInet => "nft-inet",
            Self::Iptables => "iptables",
            Self::Ipset => "ipset",
            Self::XdpFilter => "xdp-filter",
        }
    }

    /// The commands the tool needs.
    pub const fn needs(self) -> &'static [&'static str] {
        match self {
            Self::Nft | Self::NftInet => &["nft"],
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

    pub const fn color(self) -> &'static str {
        match self {
            Self::Palisade => "#1f6fb4",
            Self::PalisadeSet => "#d9641e",
            Self::Nft => "#2a9d4b",
            Self::NftInet => "#16a085",
            Self::Iptables => "#c0392b",
            Self::Ipset => "#8e44ad",
            Self::XdpFilter => "#b8860b",
            Self::NoFilter | Self::XdpDrop => "#888888",
        }
    }

    pub const SCALED: [Self; 7] = [
        Self::Palisade,
        Self::PalisadeSet,
        Self::Nft,
        Self::NftInet,
        Self::Iptables,
        Self::Ipset,
        Self::XdpFilter,
    ];

    /// The largest list the tool is measured with, and why, when it has a limit.
    pub const fn limit(self) -> Option<(usize, &'static str)> {
        match self {
            Self::XdpFilter => Some((
                crate::xdp_filter::CAPACITY,
                "xdp-filter keeps IPv4 addresses in a per-CPU hash map of 10,000 entries \
                 (filter_ipv4, max_entries checked when it is loaded): it cannot hold more",
            )),
            Self::Palisade => Some((
                MAX_RULES,
                "a Palisade policy holds at most 100,000 rules; bigger lists belong in a set \
                 (the set line)",
            )),
            Self::Iptables => Some((
                100_000,
                "a linear chain: every packet walks the rules before its match, so the cost \
                 grows with N (see the 100k line); 1M rules are not run",
            )),
            _ => None,
        }
    }

    /// Whether the tool runs in the stack behind the XDP_PASS floor.
    const fn in_stack(self) -> bool {
        matches!(
            self,
            Self::Nft | Self::NftInet | Self::Iptables | Self::Ipset
        )
    }
}

pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

pub fn run_checked(cmd: &mut Command, what: &str) -> Result<String> {
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
pub fn ns_run(ns: &Netns, program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
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

/// A filter in place on `filt`; removing it is the caller's job (see [`Installed::remove`]).
pub enum Installed {
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

pub fn attach(base: &mut Loaded, ns: &Netns, program: &'static str) -> Result<XdpLinkId> {
    let prog = base.xdp_mut(program)?;
    ns.enter(|| prog.attach(FILT_IF, XdpMode::Driver))?
        .map_err(|e| anyhow!("attaching {program} to {FILT_IF}: {e}"))
}

pub fn detach(base: &mut Loaded, program: &'static str, link: XdpLinkId) -> Result<()> {
    base.xdp_mut(program)?
        .detach(link)
        .map_err(|e| anyhow!("detaching {program}: {e}"))
}

pub fn blocklist_policy(tool: Tool, list: &[std::net::Ipv4Addr]) -> Policy {
    if tool == Tool::PalisadeSet {
        return set_blocklist(list.iter().map(|a| cidr(*a, 32)).collect());
    }
    let mut p = empty_policy();
    p.firewall.rules = list
        .iter()
        .map(|a| rule(Action::Drop, AddrMatch::Cidrs(vec![cidr(*a, 32)]), None))
        .collect();
    p
}

pub fn install(
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
        Tool::Nft | Tool::NftInet | Tool::Iptables | Tool::Ipset | Tool::XdpFilter => {
            if let Err(e) = install_tool(tool, list, ns) {
                remove_tool(tool, ns);
                return Err(e);
            }
            if tool.in_stack() {
                Installed::Stack {
                    tool,
                    pass: attach(base, ns, FLOOR_PASS)?,
                }
            } else {
                Installed::XdpFilter
            }
        }
    })
}

/// Puts the rules of a tool other than Palisade in place.
pub fn install_tool(tool: Tool, list: &[std::net::Ipv4Addr], ns: &Netns) -> Result<()> {
    match tool {
        Tool::Nft => {
            let t = nft_table(
                &format!("netdev {NFT_TABLE}"),
                &format!("type filter hook ingress device \"{FILT_IF}\" priority 0"),
                list,
            );
            ns_run(ns, "nft", &["-f", "-"], Some(&t))?;
        }
        Tool::NftInet => {
            let t = nft_table(
                &format!("inet {NFT_INET_TABLE}"),
                "type filter hook prerouting priority raw",
                list,
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
        Tool::XdpFilter => crate::xdp_filter::load(ns, FILT_IF, list)?,
        _ => bail!("{} is not a separate tool", tool.slug()),
    }
    Ok(())
}

/// An nftables table `family_name` with a hash set `blocklist` of `list` and one chain on
/// `hook` that drops (and counts) packets from a member.
fn nft_table(family_name: &str, hook: &str, list: &[std::net::Ipv4Addr]) -> String {
    let mut t = format!(
        "table {family_name} {{\n  set blocklist {{\n    type ipv4_addr\n    size {}\n    elements = {{ ",
        list.len().max(1) * 2
    );
    for (i, a) in list.iter().enumerate() {
        let _ = write!(t, "{}{a}", if i == 0 { "" } else { ", " });
    }
    let _ = write!(
        t,
        " }}\n  }}\n  chain filter {{\n    {hook}; policy accept;\n    ip saddr @blocklist counter drop\n  }}\n}}\n"
    );
    t
}

/// Takes a tool's rules out again. Errors are ignored: after a failed setup there may be
/// nothing to remove.
pub fn remove_tool(tool: Tool, ns: &Netns) {
    let steps: &[(&str, &[&str])] = match tool {
        Tool::Nft => &[("nft", &["delete", "table", "netdev", NFT_TABLE])],
        Tool::NftInet => &[("nft", &["delete", "table", "inet", NFT_INET_TABLE])],
        Tool::Iptables => &[("iptables-legacy", &["-t", "raw", "-F", "PREROUTING"])],
        Tool::Ipset => &[
            ("iptables-legacy", &["-t", "raw", "-F", "PREROUTING"]),
            ("ipset", &["destroy", IPSET]),
        ],
        Tool::XdpFilter => {
            crate::xdp_filter::unload(ns, FILT_IF);
            &[]
        }
        _ => &[],
    };
    for (program, args) in steps {
        let _ = ns_run(ns, program, args, None);
    }
}

/// The sum of the first number after each `marker` in `text`.
pub fn sum_after(text: &str, marker: &str) -> u64 {
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
pub fn iptables_drops(save: &str) -> u64 {
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
    pub fn dropped(&self, base: &Loaded, ns: &Netns) -> Result<Option<u64>> {
        Ok(match self {
            Self::Xdp { program, .. } if *program == FIREWALL => {
                Some(sum_counter(&base.ebpf, "STATS", stats::DROPPED)?)
            }
            Self::Xdp { .. } => None,
            Self::Stack {
                tool: tool @ (Tool::Nft | Tool::NftInet),
                ..
            } => {
                let (family, table) = if *tool == Tool::Nft {
                    ("netdev", NFT_TABLE)
                } else {
                    ("inet", NFT_INET_TABLE)
                };
                let out = ns_run(ns, "nft", &["list", "table", family, table], None)?;
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

    pub fn remove(self, base: &mut Loaded, ns: &Netns) -> Result<()> {
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
    fn one_rule_reads_in_the_singular() {
        assert_eq!(Tool::Palisade.describe(1), "Palisade, 1 rule");
        assert_eq!(Tool::Palisade.describe(1000), "Palisade, 1k rules");
        assert_eq!(Tool::XdpFilter.describe(1), "xdp-filter, 1 address");
    }

    #[test]
    fn limits_say_what_they_are() {
        // The text of Palisade's limit spells the number out.
        assert_eq!(MAX_RULES, 100_000);
        assert_eq!(Tool::XdpFilter.limit().map(|l| l.0), Some(10_000));
        assert!(Tool::PalisadeSet.limit().is_none());
    }

    #[test]
    fn nft_tables_hold_the_list_and_one_counting_rule() {
        let list = [
            "192.0.2.1".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        ];
        let t = nft_table("inet t", "type filter hook prerouting priority raw", &list);
        assert!(t.starts_with("table inet t {"));
        assert!(t.contains("elements = { 192.0.2.1, 198.51.100.7 }"));
        assert!(t.contains("type filter hook prerouting priority raw; policy accept;"));
        assert_eq!(t.matches("counter drop").count(), 1);
    }
}
