//! `palisade run`: load, attach, enforce, report, reload on SIGHUP, detach on exit.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Xdp},
};
use palisade_common::{firewall::DEFAULT_SLOT, reason, stats};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracing::{error, info};

use crate::{
    attach,
    cli::RunArgs,
    events,
    firewall::{apply, compile},
    guard, loader,
    policy::{config, model::Policy},
    testrun::sum_counter,
};

use crate::guard::FIREWALL;

/// Loads the policy named on the command line, or the built-in one.
///
/// # Errors
/// With every diagnostic of an invalid file.
pub fn load_policy(path: Option<&Path>) -> Result<(Policy, String)> {
    match path {
        Some(p) => Ok((
            config::load_policy(p).map_err(|e| anyhow!("{e}"))?,
            p.display().to_string(),
        )),
        None => Ok((config::default_policy(), "<built-in default>".to_string())),
    }
}

/// Runs until a signal (or `--duration`) ends it.
///
/// # Errors
/// When the policy is invalid, loading fails, or no interface can be attached.
pub async fn run(args: RunArgs) -> Result<()> {
    let (policy, source) = load_policy(args.config.as_deref())?;
    // Compile once before touching the kernel so a policy that cannot load fails fast.
    compile::compile(&policy).context("compiling the policy")?;
    let ifaces = if args.ifaces.is_empty() {
        vec![attach::default_route_interface()?]
    } else {
        args.ifaces.clone()
    };
    for i in &ifaces {
        if !attach::interface_exists(i) {
            return Err(anyhow!("no network interface named {i:?}"));
        }
    }
    let mut ebpf = loader::load()?;
    guard::install(&mut ebpf, &policy).context("installing the policy")?;
    {
        let prog: &mut Xdp = ebpf
            .program_mut(guard::DNS_INGRESS)
            .ok_or_else(|| anyhow!("kernel object has no program {}", guard::DNS_INGRESS))?
            .try_into()?;
        prog.load().context("the kernel refused the XDP DNS program")?;
    }
    guard::link_tail_calls(&mut ebpf)?;
    {
        let prog: &mut Xdp = ebpf
            .program_mut(FIREWALL)
            .ok_or_else(|| anyhow!("kernel object has no program {FIREWALL}"))?
            .try_into()?;
        prog.load().context("the kernel refused the XDP firewall program")?;
        for i in &ifaces {
            let mode = attach::attach_xdp(prog, i, args.generic)?;
            eprintln!("palisade: attached to {i} ({mode} XDP)");
        }
    }
    if let Some(egress) = &policy.dns.egress {
        let prog: &mut CgroupSkb = ebpf
            .program_mut(guard::DNS_EGRESS)
            .ok_or_else(|| anyhow!("kernel object has no program {}", guard::DNS_EGRESS))?
            .try_into()?;
        prog.load().context("the kernel refused the cgroup DNS program")?;
        for cg in &egress.cgroups {
            let dir = std::fs::File::open(cg)
                .with_context(|| format!("opening cgroup {}", cg.display()))?;
            prog.attach(dir, CgroupSkbAttachType::Egress, CgroupAttachMode::AllowMultiple)
                .with_context(|| format!("attaching DNS egress policy to cgroup {}", cg.display()))?;
            eprintln!("palisade: DNS egress policy on cgroup {}", cg.display());
        }
    }
    eprintln!(
        "palisade: enforcing {source}: {} rules, {} sets, default {}",
        policy.firewall.rules.len(),
        policy.sets.len(),
        if policy.firewall.default_action == crate::policy::model::Action::Drop {
            "drop"
        } else {
            "allow"
        },
    );
    let ring = RingBuf::try_from(
        ebpf.take_map("EVENTS")
            .ok_or_else(|| anyhow!("no EVENTS map"))?,
    )?;
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it; it is never
    // closed behind tokio's back.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("watching the event ring: {e}"))?;
    let mut names = rule_names(&policy);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let deadline = async {
        if args.duration == 0 {
            std::future::pending::<()>().await;
        } else {
            tokio::time::sleep(Duration::from_secs(args.duration)).await;
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &names, args.json);
                guard.clear_ready();
            }
            _ = sighup.recv() => {
                match reload(&mut ebpf, args.config.as_deref()) {
                    Ok((p, generation)) => {
                        names = rule_names(&p);
                        info!(generation, rules = p.firewall.rules.len(), "policy reloaded");
                        eprintln!("palisade: reloaded policy (generation {generation})");
                    }
                    Err(e) => {
                        error!("reload refused, the running policy is unchanged: {e:#}");
                        eprintln!("palisade: reload refused, the running policy is unchanged: {e:#}");
                    }
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = &mut deadline => break,
        }
    }
    drain(ring.get_mut(), &names, args.json);
    print_summary(&ebpf, &names);
    // Dropping `ebpf` detaches every link.
    drop(ebpf);
    eprintln!("palisade: detached");
    Ok(())
}

fn reload(ebpf: &mut Ebpf, path: Option<&Path>) -> Result<(Policy, u32)> {
    let (policy, _) = load_policy(path)?;
    let ctl = guard::install(ebpf, &policy)?;
    Ok((policy, ctl.generation_counter))
}

fn rule_names(policy: &Policy) -> Vec<String> {
    policy
        .firewall
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| r.name.clone().unwrap_or_else(|| format!("#{i}")))
        .collect()
}

fn drain(ring: &mut RingBuf<MapData>, names: &[String], json: bool) {
    let lookup = |i: u32| names.get(i as usize).cloned();
    while let Some(item) = ring.next() {
        if let Some(ev) = events::decode(&item, &lookup) {
            if json {
                println!("{}", serde_json::to_string(&ev).unwrap_or_default());
            } else {
                println!("{ev}");
            }
        } else if let Some(ev) = events::decode_dns(&item) {
            if json {
                println!("{}", serde_json::to_string(&ev).unwrap_or_default());
            } else {
                println!("{ev}");
            }
        }
    }
}

fn print_summary(ebpf: &Ebpf, names: &[String]) {
    let get = |i| sum_counter(ebpf, "STATS", i).unwrap_or(0);
    eprintln!(
        "palisade: {} packets, {} passed, {} dropped, {} not IP, {} events lost",
        get(stats::PACKETS),
        get(stats::PASSED),
        get(stats::DROPPED),
        get(stats::NOT_IP),
        get(stats::EVENTS_LOST),
    );
    for r in 1..reason::COUNT {
        let n = sum_counter(ebpf, "REASON_STATS", r).unwrap_or(0);
        if n > 0 {
            eprintln!("  dropped {n:>10}  {}", reason::name(r));
        }
    }
    let Ok(generation) = apply::control(ebpf).map(|c| c.active_gen) else {
        return;
    };
    for (i, name) in names
        .iter()
        .enumerate()
        .map(|(i, n)| (i as u32, n.as_str()))
        .chain([(DEFAULT_SLOT, "default")])
    {
        if let Ok(s) = crate::stats::rule_stats(ebpf, generation, i) {
            if s.packets > 0 {
                eprintln!(
                    "  rule {name:<24} {:>10} packets {:>12} bytes",
                    s.packets, s.bytes
                );
            }
        }
    }
}
