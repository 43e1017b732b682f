//! The daemon's side of `[ids]`: the payload ring drained on a thread of its own (off the
//! daemon's main loop), the engine run over it, alerts published on the event stream, and the
//! flows of `drop` rules written into `IDS_DROPS`, where XDP and tcx drop their later packets.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, RingBuf},
};
use palisade_common::{
    conntrack::CtKey,
    ids::{IDS_ON, IDS_SCOPE_IFACES, IDS_SCOPE_PORTS, IS_NAMES, IdsConfig, IdsDrop},
    packet::{FAMILY_V4, FAMILY_V6},
};
use serde::Serialize;
use tokio::sync::broadcast;

use super::{
    Ids,
    engine::{Alert, Coverage, Engine, FlowId},
    kernel,
    preselect::Preselect,
};
use crate::{api::server::EventLine, stats::Named};

/// A flow without a record for this long is forgotten by the engine.
pub const FLOW_IDLE_MS: u64 = 120_000;
/// How long the ring's reader sleeps between wake-ups at most (a quiet ring is drained on it).
pub const POLL_MS: i32 = 20;
/// Match-to-drop latencies kept for `palisade stats` (the most recent).
pub const LATENCY_SAMPLES: usize = 1024;

/// What the thread counts.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub records: u64,
    pub records_undecodable: u64,
    pub alerts: u64,
    pub drops_installed: u64,
    pub drops_failed: u64,
    pub flows_expired: u64,
    pub alerts_by_sid: BTreeMap<u32, u64>,
    /// Match-to-drop: the matched packet seen by the kernel until the drop entry is written,
    /// nanoseconds, the most recent [`LATENCY_SAMPLES`].
    pub drop_latency_ns: Vec<u64>,
}

struct Shared {
    engine: Mutex<Engine>,
    counts: Mutex<Counts>,
    drops: Mutex<HashMap<MapData, CtKey, IdsDrop>>,
    drop_enabled: AtomicBool,
    stop: AtomicBool,
    /// What the kernel and the engine hold now (see [`Installed`]).
    installed: Mutex<Installed>,
}

/// The rules and settings the IDS runs with, kept so that a policy switch that fails after
/// the IDS took its new rules can put the previous ones back without reading the rule files
/// again ([`Runtime::restore`]).
#[derive(Clone, Debug, Default)]
pub struct Installed {
    enabled: bool,
    rules: Vec<super::rules::Rule>,
    cfg: IdsConfig,
    drop: bool,
}

/// One alert as the event stream carries it.
#[derive(Debug, Serialize)]
pub struct IdsEvent {
    pub kind: &'static str,
    /// `drop` when the rule's flow is now dropped, else `alert`.
    pub verdict: &'static str,
    /// The drop's reason code name (`ids-drop`), only with a drop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub sid: u32,
    pub rev: u32,
    pub msg: String,
    pub classtype: Option<String>,
    pub action: &'static str,
    pub proto: u8,
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
    pub direction: &'static str,
    pub buffer: &'static str,
    /// From the matched packet in the kernel to the drop entry written, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_to_drop_us: Option<f64>,
}

impl std::fmt::Display for IdsEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ids {} sid {}:{} {} [{}] {}:{} -> {}:{} ({}, {})",
            self.verdict,
            self.sid,
            self.rev,
            self.msg,
            self.classtype.as_deref().unwrap_or("-"),
            self.client,
            self.client_port,
            self.server,
            self.server_port,
            self.direction,
            self.buffer
        )?;
        if let Some(us) = self.match_to_drop_us {
            write!(f, " dropped {us:.0} us after the match")?;
        }
        Ok(())
    }
}

/// Where the thread's events go.
#[derive(Clone)]
pub struct Output {
    pub events: broadcast::Sender<Arc<EventLine>>,
    pub quiet: bool,
    pub json: bool,
    /// The OTLP exporter, when events are exported (alerts go there as the daemon's do).
    pub otlp: Option<crate::fleet::otlp::Exporter>,
}

/// The running IDS: the ring's reader thread and what it shares with the daemon.
pub struct Runtime {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// One flow for `palisade ids flows`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FlowReport {
    pub proto: u8,
    pub client: String,
    pub client_port: u16,
    pub server: String,
    pub server_port: u16,
    /// Selected (`prefilter`, `short-window`, `port-group-all`) or `sampled-out`.
    pub state: String,
    pub packets: u64,
    pub payload_bytes: u64,
    pub inspected_bytes: u64,
    pub truncated_bytes: u64,
    pub gaps: u64,
    pub sids: Vec<u32>,
    pub dropped: bool,
}

impl Runtime {
    /// Takes the ring and the drop table out of `ebpf` and starts the reader thread.
    ///
    /// # Errors
    /// When a map is missing or the thread cannot start.
    pub fn start(ebpf: &mut Ebpf, out: Output) -> Result<Self> {
        let ring = RingBuf::try_from(
            ebpf.take_map(kernel::RECORDS)
                .ok_or_else(|| anyhow!("no map {}", kernel::RECORDS))?,
        )?;
        let drops = HashMap::try_from(
            ebpf.take_map("IDS_DROPS")
                .ok_or_else(|| anyhow!("no map IDS_DROPS"))?,
        )?;
        let mut engine = Engine::new(Vec::new());
        engine.midstream = true;
        let shared = Arc::new(Shared {
            engine: Mutex::new(engine),
            counts: Mutex::new(Counts::default()),
            drops: Mutex::new(drops),
            drop_enabled: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            installed: Mutex::new(Installed::default()),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("palisade-ids".into())
            .spawn(move || read_ring(&s, ring, &out))
            .context("starting the IDS thread")?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Brings the kernel's tables and the engine in line with `ids`. With `[ids]` off the
    /// program only reads its settings, and flows dropped so far are let go.
    ///
    /// # Errors
    /// When the rules cannot be read (the policy checker read them already) or a map write
    /// fails.
    pub fn install(&self, ebpf: &mut Ebpf, ids: &Ids) -> Result<()> {
        let next = if ids.enabled {
            Installed {
                enabled: true,
                rules: super::load_rules(&ids.rules).map_err(|e| anyhow!("[ids] rules: {e}"))?,
                cfg: config(ids)?,
                drop: ids.drop,
            }
        } else {
            Installed::default()
        };
        self.apply(ebpf, next)
    }

    /// What the IDS runs with now, for [`Runtime::restore`].
    #[must_use]
    pub fn installed(&self) -> Installed {
        lock(&self.shared.installed).clone()
    }

    /// Puts back what [`Runtime::installed`] returned before an install whose policy switch
    /// then failed.
    ///
    /// # Errors
    /// When a map write fails.
    pub fn restore(&self, ebpf: &mut Ebpf, previous: Installed) -> Result<()> {
        self.apply(ebpf, previous)
    }

    fn apply(&self, ebpf: &mut Ebpf, next: Installed) -> Result<()> {
        if next.enabled {
            kernel::install(ebpf, &Preselect::build(&next.rules), next.cfg)?;
            *lock(&self.shared.engine) = live_engine(next.rules.clone());
            self.shared.drop_enabled.store(next.drop, Ordering::Relaxed);
        } else {
            kernel::install(ebpf, &Preselect::build(&[]), IdsConfig::default())?;
            *lock(&self.shared.engine) = live_engine(Vec::new());
            self.shared.drop_enabled.store(false, Ordering::Relaxed);
            let mut drops = lock(&self.shared.drops);
            let keys: Vec<CtKey> = drops.keys().filter_map(Result::ok).collect();
            for k in keys {
                let _ = drops.remove(&k);
            }
        }
        *lock(&self.shared.installed) = next;
        Ok(())
    }

    /// The counters for `palisade stats` and Prometheus: the kernel's (`IS_NAMES`), the
    /// thread's, then `sid_<sid>` alerts per rule.
    #[must_use]
    pub fn named_counters(&self, ebpf: &Ebpf) -> Vec<Named> {
        let mut v: Vec<Named> = kernel::counters(ebpf)
            .map(|c| {
                IS_NAMES
                    .iter()
                    .zip(c)
                    .map(|(n, value)| Named {
                        name: (*n).to_string(),
                        value,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let c = lock(&self.shared.counts).clone();
        let flows = lock(&self.shared.engine).coverage().len() as u64;
        let mut lat = c.drop_latency_ns.clone();
        lat.sort_unstable();
        let pct = |q: usize| lat.get((lat.len() * q / 100).min(lat.len().saturating_sub(1)));
        for (name, value) in [
            ("ring_records_read", c.records),
            ("ring_records_undecodable", c.records_undecodable),
            ("alerts", c.alerts),
            ("drops_installed", c.drops_installed),
            ("drops_failed", c.drops_failed),
            ("flows_tracked", flows),
            ("flows_expired", c.flows_expired),
            ("match_to_drop_p50_us", pct(50).map_or(0, |n| n / 1000)),
            ("match_to_drop_max_us", lat.last().map_or(0, |n| n / 1000)),
        ] {
            v.push(Named {
                name: name.to_string(),
                value,
            });
        }
        for (sid, n) in &c.alerts_by_sid {
            v.push(Named {
                name: format!("sid_{sid}"),
                value: *n,
            });
        }
        v
    }

    /// Every flow the engine follows, then the flows the kernel sampled out.
    #[must_use]
    pub fn flows(&self, ebpf: &Ebpf) -> Vec<FlowReport> {
        let mut out: Vec<FlowReport> = {
            let engine = lock(&self.shared.engine);
            engine
                .coverage()
                .into_iter()
                .map(|(id, c)| report(&id, &c))
                .collect()
        };
        out.extend(kernel::sampled_out(ebpf));
        out
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn report(id: &FlowId, c: &Coverage) -> FlowReport {
    FlowReport {
        proto: id.proto,
        client: id.client.to_string(),
        client_port: id.client_port,
        server: id.server.to_string(),
        server_port: id.server_port,
        state: if c.selected { c.reason } else { "not-selected" }.to_string(),
        packets: c.packets,
        payload_bytes: c.payload_bytes,
        inspected_bytes: c.inspected_bytes,
        truncated_bytes: c.truncated_bytes,
        gaps: c.gaps,
        sids: c.sids.clone(),
        dropped: c.dropped,
    }
}

fn live_engine(rules: Vec<super::rules::Rule>) -> Engine {
    let mut e = Engine::new(rules);
    e.midstream = true;
    e
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The kernel's settings for `ids`: interfaces by index (a missing one is an error).
fn config(ids: &Ids) -> Result<IdsConfig> {
    let mut cfg = IdsConfig {
        flags: IDS_ON,
        budget_per_sec: ids.budget_per_sec,
        ring_high_water: ids.ring_high_water,
        ..IdsConfig::default()
    };
    for (slot, p) in cfg
        .ports
        .iter_mut()
        .zip(ids.ports.iter().take(IDS_SCOPE_PORTS))
    {
        *slot = *p;
    }
    for (slot, name) in cfg
        .ifindex
        .iter_mut()
        .zip(ids.interfaces.iter().take(IDS_SCOPE_IFACES))
    {
        *slot = crate::attach::ifindex(name)
            .ok_or_else(|| anyhow!("[ids] interfaces: no network interface named {name:?}"))?;
    }
    Ok(cfg)
}

/// The drop table's key of a flow: the connection tracker's (`CtKey`), ports for TCP and
/// UDP only, as the kernel keys it.
#[must_use]
pub fn drop_key(id: &FlowId) -> CtKey {
    let words = |ip: IpAddr| -> [u32; 4] {
        let b = match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        let mut w = [0u32; 4];
        for (i, c) in b.chunks_exact(4).enumerate() {
            w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        w
    };
    let ports = matches!(id.proto, 6 | 17);
    let mut k = CtKey {
        a: words(id.client),
        b: words(id.server),
        a_port: if ports { id.client_port } else { 0 },
        b_port: if ports { id.server_port } else { 0 },
        proto: id.proto,
        family: if id.client.is_ipv4() {
            FAMILY_V4
        } else {
            FAMILY_V6
        },
        _pad: [0; 2],
    };
    k.canonicalize();
    k
}

/// CLOCK_MONOTONIC in nanoseconds (`bpf_ktime_get_ns`'s clock).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The thread: waits for the ring, feeds the engine, acts on what matched.
fn read_ring(shared: &Shared, mut ring: RingBuf<MapData>, out: &Output) {
    let started = Instant::now();
    let mut last_expire = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            batch.push((kernel::decode(&item), kernel::record_ns(&item)));
        }
        if batch.is_empty() && last_expire.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let mut matched: Vec<(Alert, u64)> = Vec::new();
        let mut counts = Counts::default();
        {
            let mut engine = lock(&shared.engine);
            engine.now_ms = started.elapsed().as_millis() as u64;
            for (rec, ns) in batch {
                counts.records += 1;
                let Some((p, wire_len)) = rec else {
                    counts.records_undecodable += 1;
                    continue;
                };
                engine.wire_len = wire_len as usize;
                engine.packet(&p);
                for a in engine.alerts.drain(..) {
                    matched.push((a, ns));
                }
            }
            if last_expire.elapsed() >= Duration::from_secs(1) {
                counts.flows_expired += engine.expire(FLOW_IDLE_MS) as u64;
                last_expire = Instant::now();
            }
        }
        let mut events = Vec::new();
        for (a, ns) in matched {
            let mut ev = IdsEvent {
                kind: "ids",
                verdict: "alert",
                reason: None,
                sid: a.sid,
                rev: a.rev,
                msg: a.msg.clone(),
                classtype: a.classtype.clone(),
                action: a.action,
                proto: a.flow.proto,
                client: a.flow.client,
                client_port: a.flow.client_port,
                server: a.flow.server,
                server_port: a.flow.server_port,
                direction: a.direction,
                buffer: a.buffer,
                match_to_drop_us: None,
            };
            if a.action == "drop" && shared.drop_enabled.load(Ordering::Relaxed) {
                let installed = monotonic_ns();
                let entry = IdsDrop {
                    sid: a.sid,
                    _pad: 0,
                    matched_ns: ns,
                    installed_ns: installed,
                    dropped: 0,
                };
                let r = lock(&shared.drops).insert(drop_key(&a.flow), entry, 0);
                if r.is_ok() {
                    counts.drops_installed += 1;
                    let lat = installed.saturating_sub(ns);
                    counts.drop_latency_ns.push(lat);
                    ev.verdict = "drop";
                    ev.reason = Some(palisade_common::reason::name(
                        palisade_common::reason::IDS_DROP,
                    ));
                    ev.match_to_drop_us = Some(lat as f64 / 1000.0);
                } else {
                    counts.drops_failed += 1;
                }
            }
            counts.alerts += 1;
            *counts.alerts_by_sid.entry(a.sid).or_default() += 1;
            events.push(ev);
        }
        {
            let mut c = lock(&shared.counts);
            c.records += counts.records;
            c.records_undecodable += counts.records_undecodable;
            c.alerts += counts.alerts;
            c.drops_installed += counts.drops_installed;
            c.drops_failed += counts.drops_failed;
            c.flows_expired += counts.flows_expired;
            for (sid, n) in counts.alerts_by_sid {
                *c.alerts_by_sid.entry(sid).or_default() += n;
            }
            c.drop_latency_ns.extend(counts.drop_latency_ns);
            let excess = c.drop_latency_ns.len().saturating_sub(LATENCY_SAMPLES);
            c.drop_latency_ns.drain(..excess);
        }
        publish(out, events);
    }
}

fn publish(out: &Output, events: Vec<IdsEvent>) {
    use std::io::Write as _;
    if events.is_empty() {
        return;
    }
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    for ev in events {
        let line = EventLine::render("ids", ev.verdict, vec![ev.msg.clone()], &ev);
        if let Some(o) = &out.otlp {
            o.offer_event(line.kind, &line.verdict, &line.json, &line.text);
        }
        if !out.quiet {
            let _ = writeln!(w, "{}", if out.json { &line.json } else { &line.text });
        }
        if out.events.receiver_count() > 0 {
            let _ = out.events.send(Arc::new(line));
        }
    }
    let _ = w.flush();
}
