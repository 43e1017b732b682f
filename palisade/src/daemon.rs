//! `palisade run`: the daemon. Loads (or adopts) the pinned datapath, installs the policy,
//! serves the control socket and the metrics endpoint, streams events, and on exit either
//! leaves the policy enforced (the default) or removes everything (`--unload-on-exit`,
//! `palisade unload`).
//!
//! Every policy change, whether a reload of the file or a live change from the control
//! socket, goes through [`Daemon::apply`]: the new policy is a complete model, compiled in
//! full before anything is written, written into the idle generation and made live with one
//! write (see `guard::install`). A change that fails anywhere leaves the running policy as
//! it was, and the caller is told why.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{MapData, RingBuf};
use palisade_common::event::EVENT_DRAIN_INTERVAL_MS;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{broadcast, mpsc},
};
use tracing::{error, info, warn};

use crate::{
    api::{
        proto::{
            self, CgroupStatus, Changed, DnsEntryRow, DnsListRow, DnsLists, InterfaceStatus,
            PolicySummary, ProgramStatus, Request, Response, RuleRow, Rules, SetRow, Sets, Status,
            Unloaded,
        },
        server::{self, Access, Call, EventLine, SocketFile},
    },
    attach,
    cli::RunArgs,
    conntrack::{carry, overload, report as ct_report},
    datapath::{Datapath, Options, Origin},
    events, guard, live,
    policy::{
        config,
        model::{Action, AddrMatch, DnsMode, Policy},
        setfile::format_cidr,
    },
    shield::hitters,
    stats::{self, GenerationRules, RuleTotals},
};

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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Tells systemd (`Type=notify`) about the daemon's state; a no-op elsewhere.
fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt as _;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = if let Some(name) = bytes.strip_prefix(b"@") {
        std::os::unix::net::SocketAddr::from_abstract_name(name)
    } else {
        std::os::unix::net::SocketAddr::from_pathname(Path::new(&path))
    };
    if let Ok(addr) = addr {
        let _ = sock.send_to_addr(state.as_bytes(), &addr);
    }
}

fn action_word(a: &Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Drop => "drop",
        Action::RateLimit(_) => "rate-limit",
        Action::Mark(_) => "mark",
        Action::Mirror(_) => "mirror",
        Action::Redirect(_) => "redirect",
        Action::Steer(_) => "steer",
    }
}

/// Why the main loop ended.
enum Exit {
    /// A signal or `--duration`.
    Stop,
    /// `palisade unload`: answer once everything is removed.
    Unload(
        tokio::sync::oneshot::Sender<Response>,
        Option<tokio::sync::oneshot::Receiver<()>>,
    ),
}

struct Daemon {
    dp: Datapath,
    args: RunArgs,
    socket: PathBuf,
    source: String,
    policy: Policy,
    /// Rule names by generation slot (events name rules of the generation they came from).
    names: [Vec<String>; 2],
    totals: RuleTotals,
    live_changes: u64,
    reloads_ok: u64,
    reloads_failed: u64,
    live_applied: u64,
    live_refused: u64,
    last_error: Option<String>,
    started: Instant,
    metrics: Option<String>,
    events: broadcast::Sender<Arc<EventLine>>,
    /// What the last sweep of the connection tables counted.
    ct_census: Option<palisade_common::conntrack::CtCensus>,
    /// Sweeps that failed (logged once each).
    ct_sweep_errors: u64,
    /// Reads the DNS queries aggregated over the event budget.
    summaries: Option<crate::dns::summary::Collector>,
    /// The load balancer's run-time changes (drains, health, live backends).
    lb_live: crate::lb::Live,
    /// The running health checks, and where they report.
    lb_checks: Option<crate::lb::health::Checks>,
    lb_health: mpsc::Sender<crate::lb::health::Change>,
    /// The TLS gate's daemon side: ClientHellos gathered, decided, enforced.
    tls: crate::tls::runtime::Gatekeeper,
    /// `[ids]`: the payload ring's reader thread and engine (None until started).
    ids: Option<crate::ids::runtime::Runtime>,
    /// `[dlp]`: the watcher's thread (None while the policy has no enabled `[dlp]`), and where
    /// its events go.
    dlp: Option<crate::dlp::runtime::Runtime>,
    dlp_out: crate::dlp::runtime::Output,
    /// DHCP snooping's lease table.
    dhcp: crate::dhcp::runtime::Snooper,
    /// Threat-intelligence feeds, their last good versions and their schedule.
    intel: crate::intel::runtime::Runtime,
    /// `[dns.dga]`: the scores of the names seen in DNS events.
    dga: crate::dga::runtime::Scorer,
    /// The digest of the policy file in force (`status`, `palisade ready`).
    policy_digest: Option<String>,
    /// `--watch-config`: the policy file and its ConfigMap `..data` link.
    watch: Option<crate::pod::ConfigWatch>,
    /// With `--kubernetes`: the controller, which reloads go through.
    cluster: Option<Arc<crate::fleet::controller::Shared>>,
    /// With an OTLP endpoint: the event export.
    otlp: Option<crate::fleet::otlp::Exporter>,
    /// `[geoip] refresh`: when the country sets were last read.
    geoip: crate::geoip::Refresher,
}

impl Daemon {
    /// Refreshes the feeds that are due; installs the policy again when their domains
    /// changed (they are DNS lists of the policy's generation).
    fn intel_tick(&mut self) {
        if self.policy.intel.feeds.is_empty() {
            return;
        }
        let intel = self.policy.intel.clone();
        let out = self.intel.tick(&mut self.dp.ebpf, &intel);
        for n in &out.notes {
            info!("{n}");
            eprintln!("palisade: {n}");
        }
        if out.domains_changed {
            let policy = self.policy.clone();
            if let Err(e) = self.install(&policy) {
                let msg = format!("intel: the feeds' domains could not be installed: {e:#}");
                eprintln!("palisade: {msg}");
                self.last_error = Some(msg);
            }
        }
    }

    /// Reads the country data again when `[geoip] refresh` is due and the files changed,
    /// and installs the new country sets in one generation switch (no gap: packets see the
    /// old sets or the new ones).
    fn geoip_tick(&mut self) {
        match self.geoip.tick(&self.policy, Instant::now()) {
            crate::geoip::Tick::Changed(next) => match self.install(&next) {
                Ok(generation) => {
                    info!(
                        generation,
                        "geoip: the country sets were read again and swapped"
                    );
                    eprintln!("palisade: geoip: country sets refreshed (generation {generation})");
                }
                Err(e) => {
                    let msg = format!("geoip: the refreshed country sets were refused: {e:#}");
                    eprintln!("palisade: {msg}");
                    self.last_error = Some(msg);
                }
            },
            crate::geoip::Tick::Failed(msg) => {
                eprintln!("palisade: {msg}");
                self.last_error = Some(msg);
            }
            crate::geoip::Tick::Idle | crate::geoip::Tick::Unchanged => {}
        }
    }

    /// Removes expired flows and keeps the census for status and metrics.
    fn sweep_connections(&mut self) {
        let req = palisade_common::conntrack::SweepRequest {
            op: palisade_common::conntrack::SWEEP_EXPIRE,
            ..Default::default()
        };
        match self.dp.sweep(&req) {
            Ok(c) => self.ct_census = Some(c),
            Err(e) => {
                self.ct_sweep_errors += 1;
                if self.ct_sweep_errors == 1 {
                    eprintln!("palisade: the connection-table sweep failed: {e:#}");
                }
            }
        }
    }
}

/// The connection tracking table capacities `policy` asks for.
fn ct_sizes(policy: &Policy) -> carry::Sizes {
    carry::Sizes::of_policy(policy)
}

/// Runs until a signal, `--duration` or `palisade unload` ends it.
///
/// # Errors
/// When the policy is invalid, loading fails, or no interface can be attached.
pub async fn run(args: RunArgs, socket: PathBuf) -> Result<()> {
    // Read before the policy: a file changed in between is then seen as changed.
    let loaded = args.config.as_deref().map(crate::pod::fingerprint);
    let (policy, source) = load_policy(args.config.as_deref())?;
    let (policy, source) = crate::fleet::agent::initial(&args, (policy, source));
    // Compile once before touching the kernel so a policy that cannot load fails fast.
    drop(crate::firewall::compile::compile(&policy).context("compiling the policy")?);
    if let Some(egress) = &policy.dns.egress {
        for c in &egress.cgroups {
            attach::effective_cgroup(c)?;
        }
    }
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
    let group = args
        .socket_group
        .as_deref()
        .map(|g| server::group_id(g).map(|id| (g.to_string(), id)))
        .transpose()?;
    let mode = args
        .socket_mode
        .unwrap_or(if group.is_some() { 0o660 } else { 0o600 });
    let listener = server::bind(&socket, group.as_ref().map(|g| g.1), mode)?;
    let socket_file = SocketFile(socket.clone());
    let metrics = match &args.metrics {
        Some(a) => {
            let addr = crate::metrics::parse_addr(a)?;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("serving metrics on {addr}"))?;
            Some((l, addr))
        }
        None => None,
    };

    let opts = Options {
        pin_dir: args.pin_dir.clone(),
        ifaces: ifaces.clone(),
        force_generic: args.generic,
        ct_sizes: ct_sizes(&policy),
        intel_sizes: policy.intel.sizes(),
        dns_cache_capacity: crate::dns::cache::capacity(policy.dns.cache.as_ref()),
        engine_sizes: if args.kubernetes {
            let mut s = crate::capacity::engines::full_sizes()?;
            s.extend(crate::capacity::key_filter_full_sizes()?);
            s
        } else {
            let mut s = crate::capacity::engines::sizes_for(&policy)?;
            s.extend(crate::capacity::key_filter_sizes(&policy)?);
            s
        },
    };
    let mut notes = Vec::new();
    let dp = Datapath::load(&opts, &mut notes)?;
    for n in notes.drain(..) {
        eprintln!("palisade: {n}");
    }
    let (events_tx, _) = broadcast::channel(4096);
    let summaries = match crate::dns::summary::Collector::open(&dp.ebpf) {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "DNS summaries unavailable");
            None
        }
    };
    let (health_tx, mut health_rx) = mpsc::channel::<crate::lb::health::Change>(256);
    let mut d = Daemon {
        dp,
        args: args.clone(),
        socket: socket.clone(),
        source,
        policy: policy.clone(),
        names: [Vec::new(), Vec::new()],
        totals: RuleTotals::default(),
        live_changes: 0,
        reloads_ok: 0,
        reloads_failed: 0,
        live_applied: 0,
        live_refused: 0,
        last_error: None,
        started: Instant::now(),
        metrics: metrics.as_ref().map(|(_, a)| a.to_string()),
        events: events_tx.clone(),
        ct_census: None,
        ct_sweep_errors: 0,
        summaries,
        lb_live: crate::lb::Live::default(),
        lb_checks: None,
        lb_health: health_tx,
        tls: crate::tls::runtime::Gatekeeper::new(crate::tls::decide::TlsPolicy::new(
            &policy.tls,
            &policy.dns.lists,
        )),
        ids: None,
        dlp: None,
        dlp_out: crate::dlp::runtime::Output {
            events: events_tx.clone(),
            quiet: args.quiet,
            json: args.json,
        },
        dhcp: crate::dhcp::runtime::Snooper::default(),
        intel: crate::intel::runtime::Runtime::new(opts.intel_sizes),
        dga: crate::dga::runtime::Scorer::default(),
        // Under --kubernetes the base file is enforced only once merged with the cluster's
        // objects: not ready until the controller's first merge is applied.
        policy_digest: if args.kubernetes {
            None
        } else {
            loaded.as_ref().and_then(|f| f.digest.clone())
        },
        watch: match (&args.config, &loaded) {
            (Some(path), Some(f)) if args.watch_config => {
                Some(crate::pod::ConfigWatch::new(path.clone(), f.clone()))
            }
            _ => None,
        },
        cluster: None,
        otlp: None,
        geoip: crate::geoip::Refresher::default(),
    };
    if !policy.intel.feeds.is_empty() {
        // Before the policy, whose DNS lists take the feeds' domains, and before the
        // programs attach, so they start with the indicators in place.
        let out = d.intel.refresh(&mut d.dp.ebpf, &policy.intel);
        for n in out.notes {
            eprintln!("palisade: {n}");
        }
    }
    // Before the IDS, whose reader thread exports its alerts too.
    let otlp = crate::fleet::agent::otlp(&args)?;
    // Before the policy: installing it fills the IDS's tables and engine.
    d.ids = Some(crate::ids::runtime::Runtime::start(
        &mut d.dp.ebpf,
        crate::ids::runtime::Output {
            events: events_tx.clone(),
            quiet: args.quiet,
            json: args.json,
            otlp: otlp.clone(),
        },
    )?);
    d.install(&policy).context("installing the policy")?;
    d.restart_health_checks();
    let attach_notes = d.dp.attach(&opts, &policy)?;
    for a in &d.dp.xdp {
        eprintln!("palisade: attached to {} ({} XDP)", a.iface, a.mode);
        match a.origin {
            Origin::Adopted => {
                eprintln!("palisade: adopted the pinned link on {} (no gap)", a.iface)
            }
            Origin::Moved => eprintln!(
                "palisade: moved the pinned link on {} from an incompatible build to this one (no gap)",
                a.iface
            ),
            Origin::Created | Origin::Unpinned => {}
        }
    }
    for n in attach_notes {
        eprintln!("palisade: {n}");
    }
    eprintln!(
        "palisade: state pinned under {}{}",
        d.dp.layout.dir().display(),
        if d.dp.adopted() {
            format!(
                " (adopted: maps reused{})",
                if d.dp.programs_reused {
                    ", programs reused"
                } else {
                    ", programs reloaded"
                }
            )
        } else {
            String::new()
        }
    );
    if let Some(m) = &d.metrics {
        eprintln!("palisade: metrics on http://{m}/metrics");
    }
    // Signals are taken over before anyone is told the daemon is up: a SIGTERM sent the
    // moment it says so (systemd, a test) must stop it, not be lost.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    eprintln!(
        "palisade: enforcing {}: {} rules, {} sets, default {}",
        d.source,
        policy.firewall.rules.len(),
        policy.sets.len(),
        action_word(&policy.firewall.default_action),
    );
    info!(
        source = %d.source,
        rules = policy.firewall.rules.len(),
        pin_dir = %args.pin_dir.display(),
        adopted = d.dp.adopted(),
        "enforcing"
    );
    sd_notify("READY=1");

    let ring = RingBuf::try_from(
        d.dp.ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("no EVENTS map"))?,
    )?;
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it; it is never
    // closed behind tokio's back.
    let mut ring =
        unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("watching the event ring: {e}"))?;

    let tls_ring = RingBuf::try_from(
        d.dp.ebpf
            .take_map("TLS_SEGMENTS")
            .ok_or_else(|| anyhow!("no TLS_SEGMENTS map"))?,
    )?;
    // SAFETY: as for the event ring.
    let mut tls_ring = unsafe { AsyncFd::register(tls_ring) }
        .map_err(|e| anyhow!("watching the TLS segment ring: {e}"))?;
    let dhcp_ring = RingBuf::try_from(
        d.dp.ebpf
            .take_map("DHCP_RECORDS")
            .ok_or_else(|| anyhow!("no DHCP_RECORDS map"))?,
    )?;
    // SAFETY: as for the event ring.
    let mut dhcp_ring = unsafe { AsyncFd::register(dhcp_ring) }
        .map_err(|e| anyhow!("watching the DHCP ring: {e}"))?;
    let mut tls_tick =
        tokio::time::interval(Duration::from_millis(crate::tls::flows::EXPIRE_INTERVAL_MS));
    tls_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let (mut cluster_rx, cluster) = crate::fleet::agent::start(&args, &d.source).await?;
    d.cluster = cluster;
    d.otlp = otlp;
    let (calls_tx, mut calls) = mpsc::channel::<Call>(64);
    let access = Access {
        // SAFETY: geteuid has no preconditions.
        euid: unsafe { libc::geteuid() },
        group,
    };
    let api = tokio::spawn(server::serve(listener, access, calls_tx.clone(), events_tx));
    let metrics_task =
        metrics.map(|(l, _)| tokio::spawn(crate::metrics::serve(l, calls_tx.clone())));
    drop(calls_tx);

    let deadline = async {
        if args.duration == 0 {
            std::future::pending::<()>().await;
        } else {
            tokio::time::sleep(Duration::from_secs(args.duration)).await;
        }
    };
    tokio::pin!(deadline);
    // The kernel wakes the ring's reader only for batches (see `EVENT_WAKEUP_BYTES`); a quiet
    // stream is drained on this tick.
    let mut drain_tick = tokio::time::interval(Duration::from_millis(EVENT_DRAIN_INTERVAL_MS));
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Expired flows leave the connection tables within a timeout plus this interval; the
    // sweep is one syscall whatever the table size.
    let mut ct_tick =
        tokio::time::interval(Duration::from_millis(crate::conntrack::SWEEP_INTERVAL_MS));
    ct_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summary_tick = tokio::time::interval(Duration::from_millis(
        palisade_common::event::DNS_SUMMARY_INTERVAL_MS,
    ));
    summary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut intel_tick = tokio::time::interval(crate::intel::runtime::TICK);
    intel_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut geoip_tick = tokio::time::interval(Duration::from_secs(1));
    geoip_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch_tick = tokio::time::interval(crate::pod::WATCH_INTERVAL);
    watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let exit = loop {
        tokio::select! {
            _ = intel_tick.tick() => {
                d.intel_tick();
            }
            _ = geoip_tick.tick() => {
                d.geoip_tick();
            }
            _ = summary_tick.tick() => {
                d.summarize(false);
            }
            _ = ct_tick.tick() => {
                d.sweep_connections();
            }
            Some(change) = health_rx.recv() => {
                d.health_changed(change);
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                d.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                d.drain(ring.get_mut());
            }
            guard = tls_ring.readable_mut() => {
                let mut guard = guard?;
                d.tls_drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = tls_tick.tick() => {
                d.tls_drain(tls_ring.get_mut());
                d.tls_expire();
                d.dhcp_drain(dhcp_ring.get_mut());
            }
            guard = dhcp_ring.readable_mut() => {
                let mut guard = guard?;
                d.dhcp_drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            Some(call) = calls.recv() => {
                if matches!(call.request, Request::Unload) {
                    break Exit::Unload(call.reply, call.written);
                }
                let r = d.handle(call.request);
                let _ = call.reply.send(r);
            }
            _ = watch_tick.tick(), if d.watch.is_some() => {
                if d.watch.as_mut().is_some_and(crate::pod::ConfigWatch::changed) {
                    match d.reload() {
                        Ok(c) => eprintln!("palisade: the config changed; {}", c.message),
                        Err(e) => eprintln!("palisade: the config changed; reload refused, the running policy is unchanged: {e}"),
                    }
                }
            }
            Some(req) = cluster_rx.recv() => {
                let r = d.apply_cluster(&req.text, req.source, req.base_digest);
                let _ = req.reply.send(r);
            }
            _ = sighup.recv() => {
                match d.reload() {
                    Ok(c) => eprintln!("palisade: {}", c.message),
                    Err(e) => eprintln!("palisade: reload refused, the running policy is unchanged: {e}"),
                }
            }
            _ = sigint.recv() => break Exit::Stop,
            _ = sigterm.recv() => break Exit::Stop,
            () = &mut deadline => break Exit::Stop,
        }
    };
    sd_notify("STOPPING=1");
    api.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let reply_to = |exit: Exit, r: Response| async move {
        if let Exit::Unload(reply, written) = exit {
            let _ = reply.send(r);
            if let Some(w) = written {
                let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
            }
        }
    };
    d.drain(ring.get_mut());
    d.summarize(true);
    d.print_summary();
    let unload = matches!(exit, Exit::Unload(..)) || args.unload_on_exit;
    let result = if unload {
        let pin_dir = d.dp.layout.root.clone();
        match d.dp.unload() {
            Ok(done) => {
                info!(pin_dir = %pin_dir.display(), "unloaded");
                eprintln!("palisade: detached");
                reply_to(exit, Response::ok(&Unloaded { done })).await;
                Ok(())
            }
            Err(e) => {
                reply_to(exit, Response::err(format!("unloading failed: {e:#}"))).await;
                Err(e.context("unloading"))
            }
        }
    } else {
        let dir = d.dp.layout.root.display().to_string();
        drop(d);
        eprintln!(
            "palisade: exiting; the policy stays enforced (pinned under {dir}); `palisade unload` removes it"
        );
        Ok(())
    };
    drop(socket_file);
    result
}

impl Daemon {
    /// Writes `policy` into the kernel in one generation switch and makes it the daemon's
    /// model. Nothing changes when it fails.
    fn install(&mut self, policy: &Policy) -> Result<u32> {
        if policy.shield.syn_on() {
            // The kernel must take the cookies back (see `shield::SYN_SYSCTLS`).
            for note in crate::shield::prepare_host(std::path::Path::new("/proc/sys"))? {
                eprintln!("palisade: {note}");
            }
        }
        // The IDS's rules before this install, put back if the switch below fails.
        let ids_before = self
            .ids
            .as_ref()
            .map(crate::ids::runtime::Runtime::installed);
        if let Some(ids) = &self.ids {
            // The rules are read again here: a rule file changed since the check is refused
            // before anything else changes.
            ids.install(&mut self.dp.ebpf, &policy.ids)?;
        }
        // `[dlp]`: a changed section gets its new watcher before the rest is installed (probes
        // that cannot be attached refuse the policy); it replaces the old one with the policy.
        let dlp_next = self.dlp_next(&policy.dlp)?;
        self.totals.before_install(&self.dp.ebpf);
        // The feeds' domains join the DNS lists of the generation installed.
        let effective = self.intel.with_domains(policy);
        match guard::install_with(&mut self.dp.ebpf, &effective, &self.lb_live) {
            Ok(ctl) => {
                self.totals
                    .after_install(Some(GenerationRules::of(ctl.active_gen, policy)));
                self.names[(ctl.active_gen & 1) as usize] = policy
                    .firewall
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| r.name.clone().unwrap_or_else(|| format!("#{i}")))
                    .collect();
                self.policy = policy.clone();
                self.tls.set_policy(crate::tls::decide::TlsPolicy::new(
                    &policy.tls,
                    &policy.dns.lists,
                ));
                if let Some(next) = dlp_next {
                    // The old watcher stops (dropped) before the new one reads the ring
                    // buffer they share.
                    self.dlp = next;
                }
                if let Some(d) = &self.dlp {
                    d.resume();
                }
                Ok(ctl.generation_counter)
            }
            Err(e) => {
                self.totals.after_install(None);
                if let (Some(ids), Some(before)) = (&self.ids, ids_before)
                    && let Err(r) = ids.restore(&mut self.dp.ebpf, before)
                {
                    warn!("putting the IDS's previous rules back failed: {r:#}");
                }
                Err(e)
            }
        }
    }

    /// The `[dlp]` watcher `p` needs: `None` when the running one (or none) fits, else the new
    /// one (`Some(None)`: stop it).
    fn dlp_next(
        &mut self,
        p: &crate::dlp::Dlp,
    ) -> Result<Option<Option<crate::dlp::runtime::Runtime>>> {
        let running = self.dlp.as_ref().map(crate::dlp::runtime::Runtime::policy);
        Ok(match (p.enabled, running) {
            (false, None) => None,
            (false, Some(_)) => Some(None),
            (true, Some(r)) if r == p => None,
            (true, _) => {
                // The programs of the daemon's object, loaded once (pinned); the watcher
                // attaches them.
                self.dp.load_dlp().context("[dlp]: loading the probes")?;
                Some(Some(crate::dlp::runtime::Runtime::start(
                    p,
                    self.dlp_out.clone(),
                    &self.dp.layout,
                )?))
            }
        })
    }

    /// Checks what the kernel cannot (cgroups exist), installs, then brings the egress
    /// attachments in line.
    fn apply(&mut self, policy: Policy) -> Result<u32, String> {
        if let Some(egress) = &policy.dns.egress {
            for c in &egress.cgroups {
                attach::effective_cgroup(c).map_err(|e| format!("{e:#}"))?;
            }
        }
        for c in policy.dns.bind.iter().flat_map(|b| &b.cgroups) {
            if !attach::is_cgroup2(c) {
                return Err(format!(
                    "[dns.bind]: {} is not a cgroup v2 directory",
                    c.display()
                ));
            }
        }
        let generation = self.install(&policy).map_err(|e| format!("{e:#}"))?;
        match self.dp.sync_dns_cache(&policy) {
            Ok(notes) => {
                for n in notes {
                    eprintln!("palisade: {n}");
                }
            }
            Err(e) => {
                let msg = format!(
                    "the policy is installed, but the DNS response cache's attachments failed: {e:#}"
                );
                warn!("{msg}");
                self.last_error = Some(msg);
            }
        }
        match self.dp.sync_cgroups(&policy) {
            Ok(notes) => {
                for n in notes {
                    eprintln!("palisade: {n}");
                }
            }
            Err(e) => {
                let msg =
                    format!("the policy is installed, but DNS egress attachments failed: {e:#}");
                warn!("{msg}");
                self.last_error = Some(msg);
            }
        }
        Ok(generation)
    }

    fn reload(&mut self) -> Result<Changed, String> {
        if let Some(c) = &self.cluster {
            return Ok(crate::fleet::agent::resync(c, self.generation()));
        }
        let saved = self.lb_live.clone();
        let seen = self.args.config.as_deref().map(crate::pod::fingerprint);
        if let (Some(w), Some(f)) = (self.watch.as_mut(), &seen) {
            w.saw(f.clone());
        }
        let result = load_policy(self.args.config.as_deref())
            .map_err(|e| format!("{e:#}"))
            .and_then(|(p, source)| {
                // The policy's backend lists become the base again.
                self.lb_live.after_reload(&p.lb);
                if p.intel != self.policy.intel {
                    let out = self.intel.change(&mut self.dp.ebpf, &p.intel)?;
                    for n in out.notes {
                        eprintln!("palisade: {n}");
                    }
                }
                self.apply(p).map(|g| (g, source))
            });
        if result.is_err() {
            self.lb_live = saved;
        } else {
            self.restart_health_checks();
        }
        match result {
            Ok((generation, source)) => {
                self.reloads_ok += 1;
                self.policy_digest = seen.and_then(|f| f.digest);
                let discarded = std::mem::take(&mut self.live_changes);
                self.source = source;
                info!(
                    generation,
                    rules = self.policy.firewall.rules.len(),
                    "policy reloaded"
                );
                let mut message = format!(
                    "reloaded {}: {} rules, {} sets",
                    self.source,
                    self.policy.firewall.rules.len(),
                    self.policy.sets.len()
                );
                if discarded > 0 {
                    message.push_str(&format!("; {discarded} live change(s) discarded"));
                }
                if self.policy.intel.sizes() != self.intel.sizes {
                    message.push_str(
                        "; the new [intel] capacities take effect when the daemon restarts (the feeds are checked against the running ones)",
                    );
                }
                if crate::dns::cache::capacity(self.policy.dns.cache.as_ref())
                    != self.dp.dns_cache_capacity
                {
                    message.push_str(
                        "; the new [dns.cache] capacity takes effect when the daemon restarts (the cache starts empty then)",
                    );
                }
                self.note_idle_engines(&mut message);
                if ct_sizes(&self.policy) != self.dp.ct_sizes {
                    message.push_str(
                        "; the new [conntrack] table sizes take effect when the daemon restarts (tracked connections are carried over)",
                    );
                }
                Ok(Changed {
                    message,
                    generation,
                })
            }
            Err(e) => {
                self.reloads_failed += 1;
                error!("reload refused, the running policy is unchanged: {e}");
                self.last_error = Some(format!("reload refused: {e}"));
                Err(e)
            }
        }
    }

    /// Adds to a reply what the running policy uses of engines whose maps were created
    /// idle (`capacity::engines::grown_by`).
    fn note_idle_engines(&self, message: &mut String) {
        if let Some(n) = crate::capacity::engines::grown_by(&self.policy, &self.dp.engine_sizes) {
            message.push_str("; ");
            message.push_str(&n);
        }
        // Key filters smaller than this policy's keys would size them: denser, still exact.
        // (Filters created at their largest cannot be short: no compile for them.)
        let full = crate::capacity::key_filter_full_sizes().unwrap_or_default();
        let at_most = |(map, n): &(&str, u32)| {
            self.dp
                .engine_sizes
                .iter()
                .any(|(m, have)| m == map && have >= n)
        };
        if full.iter().all(at_most) {
            return;
        }
        let small: Vec<String> = crate::capacity::key_filter_sizes(&self.policy)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(map, want)| {
                let (_, have) = self.dp.engine_sizes.iter().find(|(n, _)| *n == map)?;
                (*have < want).then(|| format!("{map} {have} of {want}"))
            })
            .collect();
        if !small.is_empty() {
            message.push_str(&format!(
                "; the firewall's key filters were sized for a smaller policy when the daemon started ({}): more lookups pass them until it restarts",
                small.join(", ")
            ));
        }
    }

    fn live(
        &mut self,
        what: &str,
        change: impl FnOnce(&Policy) -> Result<live::Outcome, String>,
    ) -> Response {
        let mut base = self.policy.clone();
        let pruned = live::prune_expired(&mut base, unix_now());
        let refused = |this: &mut Self, e: String| {
            this.live_refused += 1;
            warn!(change = what, error = %e, "live change refused");
            Response::err(e)
        };
        match change(&base) {
            Err(e) => refused(self, e),
            Ok((None, msg)) if pruned == 0 => Response::ok(&Changed {
                message: format!("{msg}; nothing changed"),
                generation: self.generation(),
            }),
            Ok((next, msg)) => {
                let next = next.unwrap_or(base);
                match self.apply(next) {
                    Ok(generation) => {
                        self.live_applied += 1;
                        self.live_changes += 1;
                        info!(change = what, generation, "{msg}");
                        let mut message = msg;
                        self.note_idle_engines(&mut message);
                        Response::ok(&Changed {
                            message,
                            generation,
                        })
                    }
                    Err(e) => refused(self, format!("refused, nothing changed: {e}")),
                }
            }
        }
    }

    /// (Re)starts the health checks of the policy's services, each from its backend's
    /// current state.
    fn restart_health_checks(&mut self) {
        self.lb_checks = None;
        let mut targets = crate::lb::health::targets(&self.policy.lb, &self.lb_live.added);
        // A backend down now starts down: only a change of its health is reported.
        for t in &mut targets {
            t.healthy = !self.lb_live.down.contains(&(t.service.clone(), t.addr));
        }
        if !targets.is_empty() {
            self.lb_checks = Some(crate::lb::health::Checks::start(targets, &self.lb_health));
        }
    }

    /// A backend's health changed: the tables switch (a down backend gets no new flows).
    fn health_changed(&mut self, c: crate::lb::health::Change) {
        let key = (c.service.clone(), c.addr);
        if c.healthy {
            self.lb_live.down.remove(&key);
        } else {
            self.lb_live.down.insert(key);
        }
        let word = if c.healthy {
            "healthy again"
        } else {
            "failing its health check"
        };
        match crate::lb::install(&mut self.dp.ebpf, &self.policy.lb, &self.lb_live) {
            Ok(()) => {
                info!(service = %c.service, backend = %c.addr, healthy = c.healthy, "backend health changed");
                eprintln!("palisade: {} of {} is {word}", c.addr, c.service);
            }
            Err(e) => error!("switching the load balancer's tables: {e:#}"),
        }
    }

    /// `palisade lb add|remove|drain|undrain|weight`.
    fn lb_change(
        &mut self,
        service: &str,
        addr: &str,
        action: crate::lb::Action,
        weight: Option<u32>,
    ) -> Result<Changed, String> {
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let mut next = self.lb_live.clone();
        let message = next.change(&self.policy.lb, service, addr, action, weight)?;
        crate::lb::install(&mut self.dp.ebpf, &self.policy.lb, &next)
            .map_err(|e| format!("refused, nothing changed: {e:#}"))?;
        self.lb_live = next;
        self.live_applied += 1;
        if action == crate::lb::Action::Add {
            self.restart_health_checks();
        }
        info!(service, backend = %addr, "{message}");
        Ok(Changed {
            message,
            generation: self.generation(),
        })
    }

    fn generation(&self) -> u32 {
        crate::firewall::apply::control(&self.dp.ebpf).map_or(0, |c| c.generation_counter)
    }

    fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Status => {
                let ct = self.ct_snapshot();
                Response::ok(&self.status(ct))
            }
            Request::ListRules => Response::ok(&self.rules()),
            Request::ListSets { set } => match self.sets(set.as_deref()) {
                Ok(s) => Response::ok(&s),
                Err(e) => Response::err(e),
            },
            Request::ListDns { list } => match self.dns(list.as_deref()) {
                Ok(s) => Response::ok(&s),
                Err(e) => Response::err(e),
            },
            Request::AddRule { rule } => self.live("add rule", |p| live::add_rule(p, &rule)),
            Request::DeleteRule { name } => {
                self.live("delete rule", |p| live::delete_rule(p, &name))
            }
            Request::AddMembers { set, members } => {
                self.live("add set members", |p| live::add_members(p, &set, &members))
            }
            Request::DeleteMembers { set, members } => self.live("delete set members", |p| {
                live::delete_members(p, &set, &members)
            }),
            Request::AddDns {
                list,
                names,
                ttl,
                qtypes,
                subdomains,
            } => {
                let now = unix_now();
                self.live("add DNS names", |p| {
                    live::add_dns(p, &list, &names, ttl, &qtypes, subdomains, now)
                })
            }
            Request::DeleteDns { list, names } => {
                self.live("delete DNS names", |p| live::delete_dns(p, &list, &names))
            }
            Request::Reload => match self.reload() {
                Ok(c) => Response::ok(&c),
                Err(e) => Response::err(format!(
                    "reload refused, the running policy is unchanged:\n{e}"
                )),
            },
            Request::Stats => Response::ok(&self.stats()),
            Request::CtList { filter } => match ct_report::list(&self.dp, &filter) {
                Ok(l) => Response::ok(&l),
                Err(e) => Response::err(format!("{e:#}")),
            },
            Request::CtFlush { filter } => match ct_report::flush(&self.dp, &filter) {
                Ok((f, raw)) => {
                    self.ct_census = Some(raw);
                    info!(removed = f.removed, ?filter, "flushed tracked flows");
                    Response::ok(&f)
                }
                Err(e) => Response::err(format!("{e:#}")),
            },
            Request::CtStats => match ct_report::stats(&self.dp) {
                Ok((st, raw)) => {
                    self.ct_census = Some(raw);
                    Response::ok(&st)
                }
                Err(e) => Response::err(format!("{e:#}")),
            },
            Request::CtOverload { addr } => {
                let now = crate::conntrack::carry::now_ns();
                match overload::members(&self.dp.ebpf, addr.as_deref(), now) {
                    Ok(members) => {
                        let ct = &self.policy.conntrack;
                        Response::ok(&overload::OverloadList {
                            set: ct
                                .overload_set
                                .and_then(|i| self.policy.sets.get(i))
                                .map(|s| s.name.clone()),
                            ttl_s: ct.overload_ttl_s,
                            members,
                        })
                    }
                    Err(e) => Response::err(format!("{e:#}")),
                }
            }
            Request::CtOverloadFlush { addr } => match overload::flush(&self.dp, addr.as_deref()) {
                Ok((f, raw)) => {
                    self.ct_census = Some(raw);
                    info!(removed = f.removed, ?addr, "flushed the overload set");
                    Response::ok(&f)
                }
                Err(e) => Response::err(format!("{e:#}")),
            },
            Request::ShieldHitters => {
                let now = crate::conntrack::carry::now_ns();
                match hitters::list(&self.dp.ebpf, now) {
                    Ok(list) => {
                        let sh = &self.policy.shield;
                        Response::ok(&hitters::HitterList {
                            source_rate: sh.source_rate,
                            block_s: sh.source_block_s.filter(|_| sh.source_rate.is_some()),
                            hitters: list,
                        })
                    }
                    Err(e) => Response::err(format!("{e:#}")),
                }
            }
            Request::ShieldHittersFlush => match hitters::flush(&mut self.dp.ebpf) {
                Ok(f) => {
                    info!(removed = f.removed, "forgot the heavy hitters");
                    Response::ok(&f)
                }
                Err(e) => Response::err(format!("{e:#}")),
            },
            // Handled by the server (events) and the main loop (unload).
            Request::DhcpLeases => {
                self.dhcp.expire(crate::dhcp::runtime::unix_now());
                let t = self.dhcp.tally;
                Response::ok(&crate::dhcp::Listing {
                    enabled: self.policy.dhcp.enabled,
                    leases: self.dhcp.table.list(),
                    capacity: crate::dhcp::leases::MAX_LEASES,
                    evicted: self.dhcp.table.evicted,
                    records: t.records,
                    unreadable: t.unreadable,
                    malformed: t.malformed,
                    rogue_reports: t.rogue_reports,
                })
            }
            Request::LbList => {
                match crate::lb::listing(&self.dp.ebpf, &self.policy.lb, &self.lb_live) {
                    Ok(l) => Response::ok(&l),
                    Err(e) => Response::err(format!("{e:#}")),
                }
            }
            Request::LbChange {
                service,
                addr,
                action,
                weight,
            } => match self.lb_change(&service, &addr, action, weight) {
                Ok(c) => Response::ok(&c),
                Err(e) => {
                    self.live_refused += 1;
                    Response::err(e)
                }
            },
            Request::IdsFlows => match &self.ids {
                Some(ids) if self.policy.ids.enabled => Response::ok(&ids.flows(&self.dp.ebpf)),
                _ => Response::err("the policy has no [ids] section"),
            },
            Request::Events { .. } | Request::Unload => Response::err("not handled here"),
        }
    }

    fn stats(&self) -> proto::Stats {
        let mut counters = stats::read_kernel_counters(&self.dp.ebpf);
        counters.rules = self.totals.totals(&self.dp.ebpf);
        if self.policy.ids.enabled
            && let Some(ids) = &self.ids
        {
            counters.ids = ids.named_counters(&self.dp.ebpf);
        }
        if let Some(dlp) = &self.dlp {
            counters.dlp = dlp.named_counters();
        }
        proto::Stats {
            generation: self.generation(),
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            live_applied: self.live_applied,
            live_refused: self.live_refused,
            counters,
            shield_state: self.shield_state(),
            dga: self.policy.dns.dga.is_some().then_some(self.dga.stats),
            otlp: self.otlp.as_ref().map(|o| o.counters.snapshot()),
        }
    }

    fn shield_state(&self) -> Option<crate::shield::ShieldState> {
        let sh = &self.policy.shield;
        sh.any()
            .then(|| crate::shield::state(&self.dp.ebpf, sh, carry::now_ns()).ok())
            .flatten()
    }

    /// Sweeps now and reads the counters, so that the census and what is derived from it
    /// describe one moment; the census is kept like the periodic sweep's.
    fn ct_snapshot(&mut self) -> Option<ct_report::Census> {
        match ct_report::snapshot(&self.dp) {
            Ok((census, _, raw)) => {
                self.ct_census = Some(raw);
                Some(census)
            }
            Err(_) => self.ct_census.map(|c| {
                let counters = crate::conntrack::read_stats(&self.dp.ebpf).unwrap_or_default();
                ct_report::Census::of(&c, &counters)
            }),
        }
    }

    fn status(&self, conntrack: Option<ct_report::Census>) -> Status {
        let get = |i: u32| stats::sum_u64(&self.dp.ebpf, "STATS", i);
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            policy: PolicySummary {
                source: self.source.clone(),
                rules: self.policy.firewall.rules.len(),
                sets: self.policy.sets.len(),
                dns_lists: self.policy.dns.lists.len(),
                default_action: action_word(&self.policy.firewall.default_action).to_string(),
                live_changes: self.live_changes,
            },
            generation: self.generation(),
            pin_dir: self.dp.layout.root.display().to_string(),
            layout: self.dp.layout.dir().display().to_string(),
            adopted: self.dp.adopted(),
            programs_reused: self.dp.programs_reused,
            programs: self
                .dp
                .program_ids()
                .into_iter()
                .map(|(name, id)| ProgramStatus {
                    name: name.to_string(),
                    id,
                })
                .collect(),
            interfaces: self
                .dp
                .xdp
                .iter()
                .map(|a| InterfaceStatus {
                    iface: a.iface.clone(),
                    ifindex: a.ifindex,
                    mode: a.mode.word().to_string(),
                    link_id: a.link_id,
                    origin: serde_json::to_value(a.origin)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                })
                .collect(),
            cgroups: self
                .dp
                .cgroups
                .iter()
                .map(|c| CgroupStatus {
                    path: c.path.display().to_string(),
                    link_id: c.link_id,
                    origin: serde_json::to_value(c.origin)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                })
                .collect(),
            packets: get(palisade_common::stats::PACKETS),
            passed: get(palisade_common::stats::PASSED),
            dropped: get(palisade_common::stats::DROPPED),
            events_lost: get(palisade_common::stats::EVENTS_LOST),
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            last_error: self.last_error.clone(),
            unload_on_exit: self.args.unload_on_exit,
            metrics: self.metrics.clone(),
            event_streams: self.events.receiver_count(),
            conntrack,
            shield: if self.policy.shield.any() {
                crate::stats::shield_counters(&self.dp.ebpf)
            } else {
                Vec::new()
            },
            shield_state: self.shield_state(),
            scrub: if self.policy.scrub.any() {
                crate::scrub::named_counters(&self.dp.ebpf)
            } else {
                Vec::new()
            },
            nat: if self.policy.nat.any() {
                crate::nat::named_counters(&self.dp.ebpf)
            } else {
                Vec::new()
            },
            tls: if self.policy.tls.enabled {
                crate::tls::named_counters(&self.dp.ebpf)
            } else {
                Vec::new()
            },
            ids: match &self.ids {
                Some(ids) if self.policy.ids.enabled => ids.named_counters(&self.dp.ebpf),
                _ => Vec::new(),
            },
            conntrack_capacity: self.policy.tracks_connections().then(|| {
                crate::api::proto::CtCapacity {
                    validated: u64::from(self.policy.conntrack.max_entries),
                    unvalidated: u64::from(self.policy.conntrack.max_unvalidated),
                }
            }),
            policy_digest: self.policy_digest.clone(),
        }
    }

    fn rules(&self) -> Rules {
        let totals = self.totals.totals(&self.dp.ebpf);
        let count = |name: &str| {
            totals
                .iter()
                .find(|t| t.rule == name)
                .map_or((0, 0), |t| (t.packets, t.bytes))
        };
        let rules = self
            .policy
            .firewall
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let name = r.name.clone().unwrap_or_else(|| format!("#{i}"));
                let (packets, bytes) = count(&name);
                RuleRow {
                    index: i,
                    priority: r.priority,
                    action: live::action_word(&r.action),
                    matches: live::describe(r, &self.policy),
                    log: r.log,
                    live: r.line == 0,
                    packets,
                    bytes,
                    name,
                }
            })
            .collect();
        let (default_packets, default_bytes) = count("default");
        Rules {
            generation: self.generation(),
            rules,
            default_action: action_word(&self.policy.firewall.default_action).to_string(),
            default_packets,
            default_bytes,
        }
    }

    fn sets(&self, only: Option<&str>) -> Result<Sets, String> {
        let only = only.map(|s| s.strip_prefix('@').unwrap_or(s));
        if let Some(name) = only
            && !self.policy.sets.iter().any(|s| s.name == name)
        {
            let names: Vec<&str> = self.policy.sets.iter().map(|s| s.name.as_str()).collect();
            return Err(format!("no set named `{name}`; sets: {}", names.join(", ")));
        }
        let sets = self
            .policy
            .sets
            .iter()
            .enumerate()
            .filter(|(_, s)| only.is_none_or(|n| n == s.name))
            .map(|(i, s)| SetRow {
                name: s.name.clone(),
                members: s.entries.iter().map(format_cidr).collect(),
                used_by: self
                    .policy
                    .firewall
                    .rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.src == AddrMatch::Set(i) || r.dst == AddrMatch::Set(i))
                    .map(|(j, r)| r.name.clone().unwrap_or_else(|| format!("#{j}")))
                    .collect(),
            })
            .collect();
        Ok(Sets { sets })
    }

    fn dns(&self, only: Option<&str>) -> Result<DnsLists, String> {
        let dns = &self.policy.dns;
        if let Some(name) = only
            && !dns.lists.iter().any(|l| l.name == name)
        {
            let names: Vec<&str> = dns.lists.iter().map(|l| l.name.as_str()).collect();
            return Err(format!(
                "no DNS list named `{name}`; lists: {}",
                names.join(", ")
            ));
        }
        let scope_text = |s: &crate::policy::model::DnsScope| {
            format!(
                "{} {}{}",
                if s.mode == DnsMode::Blocklist {
                    "blocklist"
                } else {
                    "allowlist"
                },
                s.action.name(),
                if s.audit { " (audit)" } else { "" }
            )
        };
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        let lists = dns
            .lists
            .iter()
            .enumerate()
            .filter(|(_, l)| only.is_none_or(|n| n == l.name))
            .map(|(i, l)| {
                let mut used_by = Vec::new();
                if dns.ingress.as_ref().is_some_and(|s| s.lists.contains(&i)) {
                    used_by.push("ingress".to_string());
                }
                if dns
                    .egress
                    .as_ref()
                    .is_some_and(|e| e.scope.lists.contains(&i))
                {
                    used_by.push("egress".to_string());
                }
                DnsListRow {
                    name: l.name.clone(),
                    used_by,
                    entries: l
                        .entries
                        .iter()
                        .map(|e| {
                            let (name, kind) = live::entry_text(e);
                            DnsEntryRow {
                                name,
                                matches: kind.to_string(),
                                qtypes: e.qtypes.clone(),
                                expires: e.expires,
                                ttl_left: e
                                    .expires
                                    .map(|x| i64::try_from(x).unwrap_or(i64::MAX) - now),
                                max_entropy_bits: e.max_entropy_bits,
                                live: e.line == 0,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(DnsLists {
            ports: dns.ports.clone(),
            ingress: dns.ingress.as_ref().map(scope_text),
            egress: dns.egress.as_ref().map(|e| {
                format!(
                    "{} on {}",
                    scope_text(&e.scope),
                    e.cgroups
                        .iter()
                        .map(|c| c.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
            lists,
        })
    }

    /// Reads every record in the ring buffer: printed on stdout (unless `--quiet`) and sent
    /// to `palisade events` clients.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let subscribers = self.events.receiver_count() > 0;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        while let Some(item) = ring.next() {
            // Rules are named by the generation the event came from (it travels in the event):
            // decode with indices, then look the index up in that generation's names.
            let line = if let Some(mut ev) = events::decode(&item, &|_| None) {
                let slot = (ev.generation & 1) as usize;
                if let Some(i) = ev
                    .rule
                    .as_deref()
                    .and_then(|r| r.strip_prefix('#'))
                    .and_then(|n| n.parse::<usize>().ok())
                    && let Some(n) = self.names[slot].get(i)
                {
                    ev.rule = Some(n.clone());
                }
                EventLine::render(
                    "firewall",
                    ev.verdict,
                    ev.rule.iter().cloned().collect(),
                    &ev,
                )
            } else if let Some(ev) = crate::intel::decode_event(&item, &|id| {
                self.policy
                    .intel
                    .feeds
                    .get(id as usize)
                    .map(|f| f.name.clone())
            }) {
                EventLine::render("intel", ev.verdict, ev.rule.iter().cloned().collect(), &ev)
            } else if let Some(mut ev) = events::decode_dns(&item) {
                // A list of the feeds' domains names its feed.
                if let Some(l) = ev.list {
                    ev.feed = self
                        .intel
                        .list_feed(&self.policy, l)
                        .map(|(f, _)| f.to_string());
                }
                let scored = self.dga_check(crate::dga::runtime::Seen {
                    name: &ev.name,
                    timestamp_ns: ev.timestamp_ns,
                    scope: ev.scope,
                    verdict: ev.verdict,
                    client: ev.client,
                });
                let high = scored.and_then(|(score, event)| {
                    ev.dga_score = Some(score);
                    event
                });
                let line = EventLine::render("dns", ev.verdict, vec![ev.name.clone()], &ev);
                if let Some(high) = high {
                    self.publish(&mut out, line, subscribers);
                    EventLine::render("dga", high.verdict, vec![high.name.clone()], &high)
                } else {
                    line
                }
            } else {
                continue;
            };
            self.publish(&mut out, line, subscribers);
        }
        let _ = out.flush();
        drop(out);
        self.dga_list();
    }

    /// Scores a name seen in a `dns` event or a `dns_summary` under `[dns.dga]` (once per
    /// name: the scorer caches): its score, and a `dga` event when the name is newly above
    /// the threshold. Summaries are scored too: a flood of generated names is what exhausts
    /// the event budget.
    fn dga_check(
        &mut self,
        seen: crate::dga::runtime::Seen<'_>,
    ) -> Option<(u16, Option<crate::dga::runtime::DgaEvent>)> {
        let policy = self.policy.dns.dga.as_ref().filter(|d| d.enabled)?;
        self.dga.check(policy, seen)
    }

    /// Adds the names the DGA scorer reported to `[dns.dga] list` for `ttl` seconds, as
    /// `palisade dns add --ttl` does.
    fn dga_list(&mut self) {
        let names = self.dga.take_listable(std::time::Instant::now());
        if names.is_empty() {
            return;
        }
        let Some((list, ttl)) = self
            .policy
            .dns
            .dga
            .as_ref()
            .and_then(|d| Some((d.list.clone()?, d.ttl)))
        else {
            return;
        };
        let now = unix_now();
        let r = self.live("add DGA names", |p| {
            live::add_dns(p, &list, &names, Some(ttl), &[], false, now)
        });
        if r.ok {
            self.dga.stats.listed += names.len() as u64;
        } else {
            self.dga.stats.list_failed += names.len() as u64;
            let msg = format!(
                "[dns.dga]: adding {} name(s) to list `{list}` was refused: {}",
                names.len(),
                r.error.as_deref().unwrap_or("")
            );
            warn!("{msg}");
            self.last_error = Some(msg);
        }
    }

    /// Reads the client bytes the TLS gate copied out and decides the flows whose hello is
    /// whole.
    fn tls_drain(&mut self, ring: &mut RingBuf<MapData>) {
        let now = Instant::now();
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(ev) = self.tls.record(&mut self.dp.ebpf, &item, now) {
                events.push(ev);
            }
        }
        self.tls_publish(events);
    }

    /// Decides the flows whose hello is overdue.
    fn tls_expire(&mut self) {
        let events = self.tls.expire(&mut self.dp.ebpf, Instant::now());
        self.tls_publish(events);
    }

    fn tls_publish(&self, events: Vec<crate::tls::runtime::TlsEvent>) {
        if events.is_empty() {
            return;
        }
        let subscribers = self.events.receiver_count() > 0;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for ev in events {
            let line = EventLine::render("tls", ev.verdict, vec![ev.sni.clone()], &ev);
            self.publish(&mut out, line, subscribers);
        }
        let _ = out.flush();
    }

    /// Reads the frames DHCP snooping copied into the lease table and into events.
    fn dhcp_drain(&mut self, ring: &mut RingBuf<MapData>) {
        let now = crate::dhcp::runtime::unix_now();
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            events.extend(
                self.dhcp
                    .record(&item, now, &crate::dhcp::runtime::HostIfaces),
            );
        }
        if events.is_empty() {
            return;
        }
        let subscribers = self.events.receiver_count() > 0;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for ev in events {
            let line = EventLine::render(
                "dhcp",
                ev.verdict,
                ev.hostname.iter().cloned().collect(),
                &ev,
            );
            self.publish(&mut out, line, subscribers);
        }
        let _ = out.flush();
    }

    /// Prints an event (unless `--quiet`) and sends it to `palisade events` clients.
    fn publish(&self, out: &mut impl std::io::Write, line: EventLine, subscribers: bool) {
        if let Some(o) = &self.otlp {
            o.offer_event(line.kind, &line.verdict, &line.json, &line.text);
        }
        if !self.args.quiet {
            let _ = writeln!(
                out,
                "{}",
                if self.args.json {
                    &line.json
                } else {
                    &line.text
                }
            );
        }
        if subscribers {
            let _ = self.events.send(Arc::new(line));
        }
    }

    /// Turns the DNS queries counted over the event budget into `dns_summary` events: the
    /// intervals before the one just closed, or with `all` every interval (at exit).
    fn summarize(&mut self, all: bool) {
        let Some(c) = self.summaries.as_mut() else {
            return;
        };
        let collected = if all { c.collect_all() } else { c.collect() };
        let collected = match collected {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "collecting DNS summaries");
                return;
            }
        };
        let subscribers = self.events.receiver_count() > 0;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for mut s in collected.summaries {
            let scored = self.dga_check(crate::dga::runtime::Seen {
                name: &s.name,
                timestamp_ns: s.timestamp_ns,
                scope: s.scope,
                verdict: s.verdict,
                client: s.client,
            });
            let high = scored.and_then(|(score, event)| {
                s.dga_score = Some(score);
                event
            });
            let line = EventLine::render("dns", s.verdict, vec![s.name.clone()], &s);
            self.publish(&mut out, line, subscribers);
            if let Some(high) = high {
                let line = EventLine::render("dga", high.verdict, vec![high.name.clone()], &high);
                self.publish(&mut out, line, subscribers);
            }
        }
        let _ = out.flush();
        drop(out);
        self.dga_list();
    }

    fn print_summary(&self) {
        let get = |i| stats::sum_u64(&self.dp.ebpf, "STATS", i);
        use palisade_common::{reason, stats as s};
        eprintln!(
            "palisade: {} packets, {} passed, {} dropped, {} not IP, {} events lost",
            get(s::PACKETS),
            get(s::PASSED),
            get(s::DROPPED),
            get(s::NOT_IP),
            get(s::EVENTS_LOST),
        );
        for r in 1..reason::COUNT {
            let n = stats::sum_u64(&self.dp.ebpf, "REASON_STATS", r);
            if n > 0 {
                eprintln!("  dropped {n:>10}  {}", reason::name(r));
            }
        }
        for t in self.totals.totals(&self.dp.ebpf) {
            if t.packets > 0 {
                eprintln!(
                    "  rule {:<24} {:>10} packets {:>12} bytes",
                    t.rule, t.packets, t.bytes
                );
            }
        }
    }
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("socket", &self.socket)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Applies a merged policy from the cluster controller the way a reload applies the
    /// file: all of it or nothing.
    fn apply_cluster(
        &mut self,
        text: &str,
        source: String,
        base_digest: Option<String>,
    ) -> Result<u32, String> {
        let saved = self.lb_live.clone();
        let result = crate::fleet::agent::parse(&self.args, text).and_then(|p| {
            self.lb_live.after_reload(&p.lb);
            if p.intel != self.policy.intel {
                let out = self.intel.change(&mut self.dp.ebpf, &p.intel)?;
                for n in out.notes {
                    eprintln!("palisade: {n}");
                }
            }
            self.apply(p)
        });
        match result {
            Ok(generation) => {
                self.restart_health_checks();
                self.reloads_ok += 1;
                self.live_changes = 0;
                eprintln!(
                    "palisade: enforcing {source}: {} rules, {} sets (generation {generation})",
                    self.policy.firewall.rules.len(),
                    self.policy.sets.len()
                );
                self.source = source;
                self.policy_digest = base_digest;
                Ok(generation)
            }
            Err(e) => {
                self.lb_live = saved;
                self.reloads_failed += 1;
                error!("cluster policy refused, the running policy is unchanged: {e}");
                self.last_error = Some(format!("cluster policy refused: {e}"));
                Err(e)
            }
        }
    }
}
