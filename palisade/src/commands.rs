//! The client commands: each sends one request to the daemon and prints the answer as text
//! (or JSON with `--json`).

use std::{io::Write as _, path::Path};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::{
    api::{
        client::{self, Client},
        proto::{
            Changed, DnsLists, EventFilter, Request, RuleSpec, Rules, Sets, Stats, Status, Unloaded,
        },
    },
    cli::{
        CtCommand, DnsCommand, EventsArgs, HittersAction, LbCommand, ListWhat, OverloadAction,
        RuleAddArgs, RuleCommand, SetCommand, ShieldCommand,
    },
    conntrack::{overload, report as ct_report},
    datapath,
    policy::config::QTYPE_NAMES,
    shield::hitters,
};

fn print_json(v: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `palisade status`.
///
/// # Errors
/// When the daemon cannot be reached or refuses.
pub fn status(socket: &Path, json: bool) -> Result<()> {
    let s: Status = Client::connect(socket)?.request(&Request::Status)?;
    if json {
        print_json(&s);
        return Ok(());
    }
    println!(
        "palisade {}, pid {}, up {}",
        s.version,
        s.pid,
        duration(s.uptime_secs)
    );
    let p = &s.policy;
    println!(
        "policy      {}: {}, {}, {}, default {} (generation {}{})",
        p.source,
        plural(p.rules, "rule", "rules"),
        plural(p.sets, "set", "sets"),
        plural(p.dns_lists, "DNS list", "DNS lists"),
        p.default_action,
        s.generation,
        if p.live_changes > 0 {
            format!(", {} live change(s)", p.live_changes)
        } else {
            String::new()
        }
    );
    println!(
        "pins        {}{}",
        s.layout,
        if s.adopted {
            if s.programs_reused {
                " (adopted: maps and programs reused)"
            } else {
                " (adopted: maps reused, programs reloaded)"
            }
        } else {
            ""
        }
    );
    let progs: Vec<String> = s
        .programs
        .iter()
        .map(|p| format!("{} #{}", p.name, p.id))
        .collect();
    println!("programs    {}", progs.join(", "));
    for (i, a) in s.interfaces.iter().enumerate() {
        println!(
            "{}{} (ifindex {}): {} XDP, {}, {}",
            if i == 0 {
                "interfaces  "
            } else {
                "            "
            },
            a.iface,
            a.ifindex,
            a.mode,
            a.link_id
                .map_or_else(|| "no link".to_string(), |l| format!("link #{l}")),
            a.origin
        );
    }
    for (i, c) in s.cgroups.iter().enumerate() {
        println!(
            "{}{}: {}, {}",
            if i == 0 {
                "dns egress  "
            } else {
                "            "
            },
            c.path,
            c.link_id
                .map_or_else(|| "no link".to_string(), |l| format!("link #{l}")),
            c.origin
        );
    }
    println!(
        "counters    {} packets, {} passed, {} dropped, {} events lost",
        s.packets, s.passed, s.dropped, s.events_lost
    );
    println!(
        "reloads     {} ok, {} refused",
        s.reloads_ok, s.reloads_failed
    );
    if let Some(e) = &s.last_error {
        println!("last error  {e}");
    }
    println!(
        "on exit     {}",
        if s.unload_on_exit {
            "detach and remove the pins"
        } else {
            "keep enforcing (pinned); `palisade unload` removes it"
        }
    );
    if let Some(m) = &s.metrics {
        println!("metrics     http://{m}/metrics");
    }
    if s.event_streams > 0 {
        println!("events      {} client(s) streaming", s.event_streams);
    }
    for l in ct_report::status_lines(s.conntrack.as_ref()) {
        println!("{l}");
    }
    if let Some(st) = &s.shield_state {
        println!("{}", crate::shield::status_line(st));
    }
    if !s.shield.is_empty() {
        println!("{}", moved_line("shield", &s.shield, "nothing seen"));
    }
    if !s.scrub.is_empty() {
        println!("{}", moved_line("scrub", &s.scrub, "nothing rewritten"));
    }
    if !s.nat.is_empty() {
        println!("{}", moved_line("nat", &s.nat, "nothing translated"));
    }
    if !s.tls.is_empty() {
        println!("{}", moved_line("tls", &s.tls, "nothing seen"));
    }
    if !s.ids.is_empty() {
        println!("{}", moved_line("ids", &s.ids, "nothing inspected"));
    }
    Ok(())
}

/// `label: name value  name value ...` for the counters that moved, or `label: none_text`.
fn moved_line(label: &str, counters: &[crate::stats::Named], none_text: &str) -> String {
    let moved: Vec<String> = counters
        .iter()
        .filter(|n| n.value > 0)
        .map(|n| format!("{} {}", n.name, n.value))
        .collect();
    if moved.is_empty() {
        format!("{label}: {none_text}")
    } else {
        format!("{label}: {}", moved.join("  "))
    }
}

fn print_rules(r: &Rules) {
    let name_w = col_width(r.rules.iter().map(|x| x.name.len()), 4, 32);
    let match_w = col_width(r.rules.iter().map(|x| x.matches.len()), 5, 48);
    let action_w = col_width(r.rules.iter().map(|x| x.action.len()), 6, 40);
    println!(
        "{:>5}  {:<name_w$}  {:>10}  {:<action_w$}  {:<match_w$}  {:>12}  {:>14}",
        "#", "NAME", "PRIORITY", "ACTION", "MATCH", "PACKETS", "BYTES"
    );
    let mut any_live = false;
    for x in &r.rules {
        any_live |= x.live;
        let action = if x.log {
            format!("{} log", x.action)
        } else {
            x.action.clone()
        };
        println!(
            "{:>5}  {:<name_w$}  {:>10}  {:<action_w$}  {:<match_w$}  {:>12}  {:>14}",
            format!("{}{}", if x.live { "*" } else { "" }, x.index),
            x.name,
            x.priority,
            action,
            x.matches,
            x.packets,
            x.bytes
        );
    }
    println!(
        "{:>5}  {:<name_w$}  {:>10}  {:<action_w$}  {:<match_w$}  {:>12}  {:>14}",
        "", "default", "", r.default_action, "", r.default_packets, r.default_bytes
    );
    if any_live {
        println!("(* added at run time; a reload of the policy file removes it)");
    }
}

fn print_sets(s: &Sets) {
    if s.sets.is_empty() {
        println!("no sets");
    }
    for set in &s.sets {
        println!(
            "set {}: {}{}",
            set.name,
            plural(set.members.len(), "member", "members"),
            if set.used_by.is_empty() {
                String::new()
            } else {
                format!(" (used by {})", set.used_by.join(", "))
            }
        );
        for m in &set.members {
            println!("  {m}");
        }
    }
}

fn qtype_name(q: u16) -> String {
    QTYPE_NAMES
        .iter()
        .find(|(_, v)| *v == q)
        .map_or_else(|| q.to_string(), |(n, _)| (*n).to_string())
}

fn print_dns(d: &DnsLists) {
    println!(
        "dns ports {}; ingress: {}; egress: {}",
        d.ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        d.ingress.as_deref().unwrap_or("off"),
        d.egress.as_deref().unwrap_or("off"),
    );
    let mut any_live = false;
    for l in &d.lists {
        println!(
            "list {}: {}{}",
            l.name,
            plural(l.entries.len(), "entry", "entries"),
            if l.used_by.is_empty() {
                " (unused)".to_string()
            } else {
                format!(" (used by {})", l.used_by.join(", "))
            }
        );
        for e in &l.entries {
            any_live |= e.live;
            let mut extra = Vec::new();
            if e.matches != "exact" {
                extra.push(e.matches.clone());
            }
            if !e.qtypes.is_empty() {
                extra.push(
                    e.qtypes
                        .iter()
                        .map(|q| qtype_name(*q))
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
            if let Some(left) = e.ttl_left {
                extra.push(if left > 0 {
                    format!("expires in {}", duration(left as u64))
                } else {
                    "expired".into()
                });
            }
            if let Some(h) = e.max_entropy_bits {
                extra.push(format!("max entropy {h} bits"));
            }
            println!(
                "  {}{}{}",
                if e.live { "*" } else { " " },
                e.name,
                if extra.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", extra.join("; "))
                }
            );
        }
    }
    if any_live {
        println!("(* added at run time; a reload of the policy file removes it)");
    }
}

/// `palisade list [rules|sets|dns]`.
///
/// # Errors
/// When the daemon cannot be reached or refuses.
pub fn list(socket: &Path, what: Option<ListWhat>, json: bool) -> Result<()> {
    let mut c = Client::connect(socket)?;
    let want = |w| what.is_none_or(|x| x == w);
    let mut all = serde_json::Map::new();
    if want(ListWhat::Rules) {
        let r: Rules = c.request(&Request::ListRules)?;
        if json {
            all.insert("rules".into(), serde_json::to_value(&r)?);
        } else {
            print_rules(&r);
        }
    }
    if want(ListWhat::Sets) {
        let s: Sets = c.request(&Request::ListSets { set: None })?;
        if json {
            all.insert("sets".into(), serde_json::to_value(&s)?);
        } else {
            if what.is_none() {
                println!();
            }
            print_sets(&s);
        }
    }
    if want(ListWhat::Dns) {
        let d: DnsLists = c.request(&Request::ListDns { list: None })?;
        if json {
            all.insert("dns".into(), serde_json::to_value(&d)?);
        } else {
            if what.is_none() {
                println!();
            }
            print_dns(&d);
        }
    }
    if json {
        match what {
            Some(_) => print_json(all.values().next().unwrap_or(&serde_json::Value::Null)),
            None => print_json(&all),
        }
    }
    Ok(())
}

fn changed(socket: &Path, request: &Request) -> Result<()> {
    let c: Changed = Client::connect(socket)?.request(request)?;
    println!("{} (generation {})", c.message, c.generation);
    Ok(())
}

/// `palisade rule ...`.
///
/// # Errors
/// When the daemon cannot be reached or refuses the change.
pub fn rule(socket: &Path, cmd: RuleCommand) -> Result<()> {
    match cmd {
        RuleCommand::List(j) => list(socket, Some(ListWhat::Rules), j.json),
        RuleCommand::Add(a) => {
            let RuleAddArgs {
                name,
                action,
                priority,
                proto,
                src,
                dst,
                sport,
                dport,
                tcp_flags,
                icmp_type,
                icmp_code,
                log,
                rate_pps,
                rate_burst,
                rate_per,
                dscp,
                ecn,
                ttl,
                length,
                src_mac,
                dst_mac,
                vlan,
                iface,
                not,
                set_mark,
                set_dscp,
                mirror_to,
                redirect_to,
                route_table,
                cpus,
                queue_size,
            } = *a;
            let rule = RuleSpec {
                name,
                priority,
                action,
                proto,
                src,
                dst,
                sport,
                dport,
                tcp_flags,
                icmp_type,
                icmp_code,
                log,
                rate_pps,
                rate_burst,
                rate_per,
                dscp,
                ecn,
                ttl,
                length,
                src_mac,
                dst_mac,
                vlan,
                iface,
                not,
                set_mark,
                set_dscp,
                mirror_to,
                redirect_to,
                route_table,
                cpus,
                queue_size,
            };
            changed(
                socket,
                &Request::AddRule {
                    rule: Box::new(rule),
                },
            )
        }
        RuleCommand::Delete { name } => changed(socket, &Request::DeleteRule { name }),
    }
}

/// `palisade set ...`.
///
/// # Errors
/// When the daemon cannot be reached or refuses the change.
pub fn set(socket: &Path, cmd: SetCommand) -> Result<()> {
    match cmd {
        SetCommand::List { set, json } => {
            let s: Sets = Client::connect(socket)?.request(&Request::ListSets { set })?;
            if json.json {
                print_json(&s);
            } else {
                print_sets(&s);
            }
            Ok(())
        }
        SetCommand::Add { set, members } => changed(socket, &Request::AddMembers { set, members }),
        SetCommand::Delete { set, members } => {
            changed(socket, &Request::DeleteMembers { set, members })
        }
    }
}

/// `palisade dns ...`.
///
/// # Errors
/// When the daemon cannot be reached or refuses the change.
pub fn dns(socket: &Path, cmd: DnsCommand) -> Result<()> {
    match cmd {
        DnsCommand::List { list, json } => {
            let d: DnsLists = Client::connect(socket)?.request(&Request::ListDns { list })?;
            if json.json {
                print_json(&d);
            } else {
                print_dns(&d);
            }
            Ok(())
        }
        DnsCommand::Add {
            list,
            names,
            ttl,
            qtypes,
            subdomains,
        } => changed(
            socket,
            &Request::AddDns {
                list,
                names,
                ttl,
                qtypes,
                subdomains,
            },
        ),
        DnsCommand::Delete { list, names } => changed(socket, &Request::DeleteDns { list, names }),
    }
}

/// `palisade reload`.
///
/// # Errors
/// When the daemon cannot be reached or the new policy is refused.
pub fn reload(socket: &Path) -> Result<()> {
    changed(socket, &Request::Reload)
}

/// `palisade events`.
///
/// # Errors
/// When the daemon cannot be reached or refuses the filter.
pub fn events(socket: &Path, a: EventsArgs) -> Result<()> {
    let filter = EventFilter {
        kind: a.kind,
        verdict: a.verdict,
        name: a.name,
    };
    let mut c = Client::connect(socket)?;
    let r = c.call(&Request::Events {
        filter,
        json: a.json,
    })?;
    if !r.ok {
        bail!("{}", r.error.unwrap_or_default());
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    c.copy_lines(&mut out, a.count)?;
    let _ = out.flush();
    Ok(())
}

/// `palisade stats`.
///
/// # Errors
/// When the daemon cannot be reached.
pub fn stats(socket: &Path, json: bool) -> Result<()> {
    let s: Stats = Client::connect(socket)?.request(&Request::Stats)?;
    if json {
        print_json(&s);
        return Ok(());
    }
    let c = &s.counters;
    println!(
        "{}",
        c.global
            .iter()
            .map(|n| format!("{} {}", n.name, n.value))
            .collect::<Vec<_>>()
            .join("  ")
    );
    println!("{}", moved_line("drops by reason", &c.reasons, "none"));
    println!("rules:");
    let w = col_width(c.rules.iter().map(|r| r.rule.len()), 4, 32);
    for r in &c.rules {
        println!(
            "  {:<w$}  {:<10}  {:>12} packets  {:>14} bytes",
            r.rule, r.action, r.packets, r.bytes
        );
    }
    let dns: Vec<String> = c
        .dns
        .iter()
        .filter(|d| d.value > 0)
        .map(|d| format!("{} {} {}", d.scope, d.name, d.value))
        .collect();
    println!(
        "dns: {}",
        if dns.is_empty() {
            "no queries seen".to_string()
        } else {
            dns.join("  ")
        }
    );
    println!("{}", moved_line("shield", &c.shield, "nothing seen"));
    println!("{}", moved_line("scrub", &c.scrub, "nothing rewritten"));
    println!("{}", moved_line("nat", &c.nat, "nothing translated"));
    println!("{}", moved_line("lb", &c.lb, "nothing balanced"));
    println!("{}", moved_line("tls", &c.tls, "nothing seen"));
    if !c.ids.is_empty() {
        println!("{}", moved_line("ids", &c.ids, "nothing inspected"));
    }
    if !c.dlp.is_empty() {
        println!("{}", moved_line("dlp", &c.dlp, "nothing captured"));
    }
    println!("{}", moved_line("dhcp", &c.dhcp, "nothing snooped"));
    println!("{}", moved_line("intel", &c.intel, "nothing matched"));
    println!("{}", moved_line("dns bind", &c.bind, "nothing checked"));
    println!(
        "{}",
        moved_line("dns cache", &c.dns_cache, "nothing cached")
    );
    println!("{}", moved_line("actions", &c.actions, "nothing marked"));
    println!(
        "{}",
        moved_line("redirect", &c.redirect, "nothing redirected")
    );
    println!("{}", moved_line("steer", &c.steer, "nothing steered"));
    if let Some(d) = &s.dga {
        println!(
            "dga: scored {}  cached {}  reported {}  listed {}  list_failed {}  list_limited {}",
            d.scored, d.cached, d.reported, d.listed, d.list_failed, d.list_limited
        );
    }
    println!(
        "generation {}; reloads {} ok, {} refused; live changes {} applied, {} refused",
        s.generation, s.reloads_ok, s.reloads_failed, s.live_applied, s.live_refused
    );
    Ok(())
}

/// `palisade shield ...`.
///
/// # Errors
/// When the daemon cannot be reached or the maps cannot be read.
pub fn shield(socket: &Path, cmd: ShieldCommand) -> Result<()> {
    let mut c = Client::connect(socket)?;
    match cmd {
        ShieldCommand::Hitters { action: None, json } => {
            let l: hitters::HitterList = c.request(&Request::ShieldHitters)?;
            if json.json {
                print_json(&l);
            } else {
                print!("{}", hitters::print_list(&l));
            }
        }
        ShieldCommand::Hitters {
            action: Some(HittersAction::Flush { json }),
            ..
        } => {
            let f: hitters::HittersFlushed = c.request(&Request::ShieldHittersFlush)?;
            if json.json {
                print_json(&f);
            } else {
                println!(
                    "forgot {}",
                    plural(
                        usize::try_from(f.removed).unwrap_or(usize::MAX),
                        "heavy hitter",
                        "heavy hitters"
                    )
                );
            }
        }
    }
    Ok(())
}

/// `palisade lb ...`.
///
/// # Errors
/// When the daemon cannot be reached or refuses the change.
/// `palisade leases`.
///
/// # Errors
/// When the daemon does not answer.
pub fn leases(socket: &Path, json: bool) -> Result<()> {
    let mut c = Client::connect(socket)?;
    let l: crate::dhcp::Listing = c.request(&Request::DhcpLeases)?;
    if json {
        print_json(&l);
    } else {
        print!("{}", crate::dhcp::print_listing(&l));
    }
    Ok(())
}

pub fn lb(socket: &Path, cmd: Option<LbCommand>) -> Result<()> {
    use crate::lb::Action;
    let mut c = Client::connect(socket)?;
    let (service, addr, action, weight) = match cmd {
        None | Some(LbCommand::List { .. }) => {
            let json = matches!(cmd, Some(LbCommand::List { json }) if json.json);
            let l: crate::lb::Listing = c.request(&Request::LbList)?;
            if json {
                print_json(&l);
            } else {
                print!("{}", crate::lb::print_listing(&l));
            }
            return Ok(());
        }
        Some(LbCommand::Add {
            service,
            addr,
            weight,
        }) => (service, addr, Action::Add, weight),
        Some(LbCommand::Remove { service, addr }) => (service, addr, Action::Remove, None),
        Some(LbCommand::Drain { service, addr }) => (service, addr, Action::Drain, None),
        Some(LbCommand::Undrain { service, addr }) => (service, addr, Action::Undrain, None),
        Some(LbCommand::Weight {
            service,
            addr,
            weight,
        }) => (service, addr, Action::Weight, Some(weight)),
    };
    let changed: Changed = c.request(&Request::LbChange {
        service,
        addr,
        action,
        weight,
    })?;
    println!("{}", changed.message);
    Ok(())
}

/// `palisade ct ...`.
///
/// # Errors
/// When the daemon cannot be reached or refuses the filter.
pub fn ct(socket: &Path, cmd: CtCommand) -> Result<()> {
    let mut c = Client::connect(socket)?;
    match cmd {
        CtCommand::List { filter, json } => {
            let l: ct_report::FlowList = c.request(&Request::CtList {
                filter: filter.into(),
            })?;
            if json.json {
                print_json(&l.flows);
            } else {
                print!("{}", ct_report::print_flows(&l));
            }
        }
        CtCommand::Flush { filter, json } => {
            let f: ct_report::Flushed = c.request(&Request::CtFlush {
                filter: filter.into(),
            })?;
            if json.json {
                print_json(&f);
            } else {
                println!(
                    "removed {} ({} left)",
                    plural(
                        usize::try_from(f.removed).unwrap_or(usize::MAX),
                        "flow",
                        "flows"
                    ),
                    f.remaining
                );
            }
        }
        CtCommand::Overload {
            action: None,
            addr,
            json,
        } => {
            let l: overload::OverloadList = c.request(&Request::CtOverload { addr })?;
            if json.json {
                print_json(&l);
            } else {
                print!("{}", overload::print_list(&l));
            }
        }
        CtCommand::Overload {
            action: Some(OverloadAction::Flush { addr, json }),
            ..
        } => {
            let f: overload::OverloadFlushed = c.request(&Request::CtOverloadFlush { addr })?;
            if json.json {
                print_json(&f);
            } else {
                println!(
                    "removed {} ({} left)",
                    plural(
                        usize::try_from(f.removed).unwrap_or(usize::MAX),
                        "address",
                        "addresses"
                    ),
                    f.remaining
                );
            }
        }
        CtCommand::Stats(json) => {
            let s: ct_report::CtStats = c.request(&Request::CtStats)?;
            if json.json {
                print_json(&s);
            } else {
                print!("{}", ct_report::print_stats(&s));
            }
        }
    }
    Ok(())
}

/// `palisade unload`: through the daemon when one answers, otherwise directly on the pins.
///
/// # Errors
/// When the daemon refuses, or the pins cannot be removed.
pub fn unload(socket: &Path, pin_dir: &Path) -> Result<()> {
    let done = if client::daemon_absent(socket) {
        datapath::unload_offline(pin_dir)?
    } else {
        let u: Unloaded = Client::connect(socket)?.request(&Request::Unload)?;
        u.done
    };
    for d in done {
        println!("{d}");
    }
    Ok(())
}

/// Width of a table column: the widest cell, at least `min` (the header) and at most `max`.
fn col_width(cells: impl Iterator<Item = usize>, min: usize, max: usize) -> usize {
    cells.max().unwrap_or(min).clamp(min, max)
}

/// `palisade ready`: the probe of a pod (see [`crate::pod::readiness`]); prints why, and
/// exits 0 (ready), [`crate::pod::EXIT_NOT_READY`] or [`crate::pod::EXIT_NO_DAEMON`].
#[must_use]
pub fn ready(socket: &Path, policy: Option<&Path>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let desired = match policy.map(crate::pod::file_digest).transpose() {
        Ok(d) => d,
        Err(e) => {
            println!(
                "not ready: cannot read {}: {e}",
                policy.unwrap_or(Path::new("")).display()
            );
            return ExitCode::from(crate::pod::EXIT_NOT_READY);
        }
    };
    let status = Client::connect(socket).and_then(|mut c| c.request::<Status>(&Request::Status));
    match status {
        Ok(s) => match crate::pod::readiness(&s, desired.as_deref()) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(line) => {
                println!("{line}");
                ExitCode::from(crate::pod::EXIT_NOT_READY)
            }
        },
        Err(e) => {
            println!(
                "not ready: no daemon answers on {}: {e:#}",
                socket.display()
            );
            ExitCode::from(crate::pod::EXIT_NO_DAEMON)
        }
    }
}

/// `palisade cleanup`: [`unload`], then wait for SIGTERM or SIGINT (the container of the
/// chart's cleanup mode must keep running, or the kubelet restarts it).
///
/// # Errors
/// When unloading fails or the signals cannot be watched.
pub fn cleanup(socket: &Path, pin_dir: &Path) -> Result<()> {
    unload(socket, pin_dir)?;
    println!(
        "nothing of palisade is enforced from {}; waiting for the pod to be removed",
        pin_dir.display()
    );
    let _ = std::io::stdout().flush();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}
