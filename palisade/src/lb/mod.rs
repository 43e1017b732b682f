//! The L4 load balancer (`[lb]`, `[[lb.service]]`): the section's model, the tables the XDP
//! stage reads (Maglev tables built by `palisade_common::lb`), their atomic installation,
//! the live backend states (health, drain, live removal) and the counters.
//! `docs/design/lb.md` explains the design.

pub mod health;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData},
};
use palisade_common::{
    lb::{
        BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UP, LB_SLOTS, LS_COUNT, LS_NAMES, LbBackend,
        LbControl, LbGlobal, LbReverse, LbService, MAX_BACKENDS, MAX_SERVICES, MODE_DNAT, MODE_DSR,
        Permutation, RING_SIZE, Ring, VipKey, backend_slot, build_ring,
    },
    packet::{FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP},
};
use serde::{Deserialize, Serialize};

use crate::{
    maps::{map, map_mut},
    stats::Named,
};

/// The XDP stage (a tail-call target of the firewall).
pub const STAGE: &str = crate::guard::LB;
/// The TC egress program that translates DNAT replies back.
pub const REVERSE: &str = "palisade_lb_reverse";

/// The TC ingress program that decapsulates DSR packets on a backend whose kernel has no
/// IPIP / IP6IP6 tunnel devices (attached there, not by the daemon).
pub const DECAP: &str = "palisade_lb_decap";

/// `flow_insert_rate` when not set: new flows put into the flow table per second and CPU.
pub const DEFAULT_INSERT_RATE: u32 = 100_000;
/// The largest `flow_insert_rate`.
pub const MAX_INSERT_RATE: u32 = 10_000_000;
/// `weight` of a backend: 1 to this.
pub const MAX_WEIGHT: u32 = 65_535;

/// How a service sends packets to its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Direct server return: encapsulated (IPIP / IP6IP6); the backend answers the client.
    Dsr,
    /// The destination rewritten; the replies come back through this host.
    Dnat,
}

impl Mode {
    const fn code(self) -> u8 {
        match self {
            Self::Dsr => MODE_DSR,
            Self::Dnat => MODE_DNAT,
        }
    }
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A TCP connection that completes.
    Tcp,
    /// An HTTP GET of `path` answered with a 2xx or 3xx status.
    Http { path: String },
}

/// A service's health check (`health = { ... }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub check: Check,
    /// The port checked; the service's port when not set.
    pub port: Option<u16>,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    /// Failures in a row that take a backend down, successes that bring it back.
    pub fall: u32,
    pub rise: u32,
}

/// A backend of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: IpAddr,
    pub weight: u32,
}

/// One `[[lb.service]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub mode: Mode,
    pub backends: Vec<Backend>,
    pub health: Option<Health>,
    pub line: usize,
}

/// The `[lb]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lb {
    pub services: Vec<Service>,
    /// Seed of the flow hash and the Maglev permutations: hosts with the same seed and
    /// services choose the same backends.
    pub hash_seed: u64,
    /// New flows put into the flow table per second and CPU (beyond it they still get
    /// Maglev's choice).
    pub flow_insert_rate: u32,
    /// Outer source prefixes of DSR packets.
    pub encap_source_v4: Option<(Ipv4Addr, u8)>,
    pub encap_source_v6: Option<(Ipv6Addr, u8)>,
    pub line: usize,
}

impl Default for Lb {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            hash_seed: 0,
            flow_insert_rate: DEFAULT_INSERT_RATE,
            encap_source_v4: None,
            encap_source_v6: None,
            line: 0,
        }
    }
}

/// A backend's state at run time (not in the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    /// Keeps its flows, gets no new ones.
    Draining,
    /// Failed its health check.
    Down,
}

/// Run-time changes over the policy's backends: drains, health, live additions, removals
/// and weights, by service name and backend address. Kept by the daemon across reloads
/// (entries of services or backends no longer in the policy are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    /// Drained from the CLI.
    pub draining: HashSet<(String, IpAddr)>,
    /// Failing their health checks.
    pub down: HashSet<(String, IpAddr)>,
    pub weights: HashMap<(String, IpAddr), u32>,
    /// Backends added from the CLI.
    pub added: Vec<(String, Backend)>,
    /// Backends removed from the CLI: they stay in the Maglev base (so only their own
    /// flows move) until the next policy reload.
    pub removed: Vec<(String, IpAddr)>,
}

/// A live change to a backend (`palisade lb add|remove|drain|undrain|weight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A new backend (its weight 1 unless given), taking new flows at once.
    Add,
    /// Takes no new flows and leaves the table's base at the next reload; its flows stay.
    Remove,
    /// Keeps its flows, gets no new ones.
    Drain,
    /// Takes new flows again.
    Undrain,
    /// A new weight.
    Weight,
}

impl Live {
    /// Applies `action` to the backend `addr` of `service` in `lb`; the message says what
    /// changed.
    ///
    /// # Errors
    /// An unknown service or backend, a backend of the wrong family, a weight out of range,
    /// or a service that would hold too many backends; `self` is then unchanged.
    pub fn change(
        &mut self,
        lb: &Lb,
        service: &str,
        addr: IpAddr,
        action: Action,
        weight: Option<u32>,
    ) -> Result<String, String> {
        let svc = lb
            .services
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| format!("no load-balanced service named {service:?}"))?;
        let key = (service.to_string(), addr);
        let listed = svc.backends.iter().any(|b| b.addr == addr)
            || self
                .added
                .iter()
                .any(|(n, b)| n == service && b.addr == addr);
        if let Some(w) = weight
            && !(1..=MAX_WEIGHT).contains(&w)
        {
            return Err(format!("a weight is 1 to {MAX_WEIGHT}, not {w}"));
        }
        let mut next = self.clone();
        let msg = match action {
            Action::Add => {
                if svc.vip.is_ipv4() != addr.is_ipv4() {
                    return Err(format!("{addr} is not of the VIP's family ({})", svc.vip));
                }
                if next.removed.contains(&key) {
                    next.removed.retain(|k| *k != key);
                } else if listed {
                    return Err(format!("{addr} is already a backend of {service:?}"));
                } else {
                    next.added.push((
                        service.to_string(),
                        Backend {
                            addr,
                            weight: weight.unwrap_or(1),
                        },
                    ));
                }
                if let Some(w) = weight {
                    next.weights.insert(key.clone(), w);
                }
                format!("added {addr} to {service}")
            }
            _ if !listed || next.removed.contains(&key) => {
                return Err(format!("{addr} is not a backend of {service:?}"));
            }
            Action::Remove => {
                next.removed.push(key.clone());
                format!("removed {addr} from {service}: its flows stay, it gets no new ones")
            }
            Action::Drain => {
                next.draining.insert(key.clone());
                format!("draining {addr} of {service}: its flows stay, it gets no new ones")
            }
            Action::Undrain => {
                next.draining.remove(&key);
                format!("{addr} of {service} takes new flows again")
            }
            Action::Weight => {
                let w = weight.ok_or("`weight` needs a weight")?;
                next.weights.insert(key.clone(), w);
                format!("{addr} of {service} has weight {w}")
            }
        };
        fits(&view(lb, &next)).map_err(|e| format!("{e:#}"))?;
        *self = next;
        Ok(msg)
    }

    /// Forgets what no longer names a service or backend of `lb`, and the live removals and
    /// additions (a reload makes the policy's list the base again).
    pub fn after_reload(&mut self, lb: &Lb) {
        let known = |k: &(String, IpAddr)| {
            lb.services
                .iter()
                .any(|s| s.name == k.0 && s.backends.iter().any(|b| b.addr == k.1))
        };
        self.added.clear();
        self.removed.clear();
        self.draining.retain(known);
        self.down.retain(known);
        self.weights.retain(|k, _| known(k));
    }
}

/// `palisade lb`: the services with their live state, and the flow table's fill.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub services: Vec<ServiceView>,
    /// Entries in the flow table now, and its capacity.
    pub flows: usize,
    pub flow_capacity: u32,
    /// Table switches so far.
    pub changes: u32,
}

/// The text of `palisade lb`.
#[must_use]
pub fn print_listing(l: &Listing) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if l.services.is_empty() {
        out.push_str("no load-balanced services\n");
    }
    for s in &l.services {
        let vip = match s.vip {
            IpAddr::V4(a) => format!("{a}:{}", s.port),
            IpAddr::V6(a) => format!("[{a}]:{}", s.port),
        };
        let _ = writeln!(
            out,
            "{} {vip}/{} {}: {} of {} backends take new flows",
            s.name,
            s.proto,
            match s.mode {
                Mode::Dsr => "dsr",
                Mode::Dnat => "dnat",
            },
            s.live(),
            s.backends.len()
        );
        for b in &s.backends {
            let state = match (b.removed, b.state) {
                (true, _) => "removed",
                (_, State::Up) => "up",
                (_, State::Draining) => "draining",
                (_, State::Down) => "down",
            };
            let _ = writeln!(out, "  {} weight {} {state}", b.addr, b.weight);
        }
    }
    let _ = writeln!(
        out,
        "flow table: {} of {} entries; tables switched {} times",
        l.flows, l.flow_capacity, l.changes
    );
    out
}

/// The listing of `lb` with `live` applied, and the flow table's fill.
///
/// # Errors
/// When the maps cannot be read.
pub fn listing(ebpf: &Ebpf, lb: &Lb, live: &Live) -> Result<Listing> {
    let control = {
        let m: Array<&MapData, LbControl> = Array::try_from(map(ebpf, "LB_CONTROL")?)?;
        m.get(&0, 0)?
    };
    Ok(Listing {
        services: view(lb, live),
        flows: flow_count(ebpf)?,
        flow_capacity: palisade_common::lb::FLOW_ENTRIES,
        changes: control.changes,
    })
}

/// A backend as the tables see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub addr: IpAddr,
    pub weight: u32,
    pub state: State,
    /// Removed live: in the table's base, taking nothing.
    pub removed: bool,
}

/// A service as the tables see it (`palisade lb` lists these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: String,
    pub mode: Mode,
    pub backends: Vec<BackendView>,
}

impl ServiceView {
    /// Backends that take new flows.
    #[must_use]
    pub fn live(&self) -> usize {
        self.backends
            .iter()
            .filter(|b| b.state == State::Up && !b.removed && b.weight > 0)
            .count()
    }
}

/// The services with the live changes applied.
#[must_use]
pub fn view(lb: &Lb, live: &Live) -> Vec<ServiceView> {
    lb.services
        .iter()
        .map(|s| {
            let mut backends: Vec<Backend> = s.backends.clone();
            for (name, b) in &live.added {
                if *name == s.name && !backends.iter().any(|x| x.addr == b.addr) {
                    backends.push(b.clone());
                }
            }
            let key = |a: IpAddr| (s.name.clone(), a);
            ServiceView {
                name: s.name.clone(),
                vip: s.vip,
                port: s.port,
                proto: proto_name(s.proto).to_string(),
                mode: s.mode,
                backends: backends
                    .iter()
                    .map(|b| BackendView {
                        addr: b.addr,
                        weight: live.weights.get(&key(b.addr)).copied().unwrap_or(b.weight),
                        state: if live.down.contains(&key(b.addr)) {
                            State::Down
                        } else if live.draining.contains(&key(b.addr)) {
                            State::Draining
                        } else {
                            State::Up
                        },
                        removed: live.removed.contains(&key(b.addr)),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// 16 bytes, IPv4 mapped, and the family code.
#[must_use]
pub fn addr_bytes(a: IpAddr) -> ([u8; 16], u8) {
    match a {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), FAMILY_V4),
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The Maglev table of a service view under `seed`.
#[must_use]
pub fn ring(seed: u64, svc: &ServiceView) -> Box<Ring> {
    let mut perms: Vec<Permutation> = svc
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| Permutation {
            live: b.state == State::Up && !b.removed,
            ..Permutation::of(seed, i as u16, &addr_bytes(b.addr).0, b.weight)
        })
        .collect();
    let mut ring = Box::new(Ring {
        slots: [0; RING_SIZE as usize],
        _pad: 0,
    });
    build_ring(&mut perms, &mut ring.slots);
    ring
}

/// Checks what the tables cannot hold (the policy's own check does this for the policy;
/// live changes come here).
///
/// # Errors
/// Too many backends in a service.
pub fn fits(views: &[ServiceView]) -> Result<()> {
    if views.len() > MAX_SERVICES as usize {
        return Err(anyhow!(
            "{} services; the load balancer holds {MAX_SERVICES}",
            views.len()
        ));
    }
    for v in views {
        if v.backends.len() > MAX_BACKENDS as usize {
            return Err(anyhow!(
                "service {:?} would have {} backends; a service holds {MAX_BACKENDS}",
                v.name,
                v.backends.len()
            ));
        }
    }
    Ok(())
}

fn prefix_bytes4(p: Option<(Ipv4Addr, u8)>) -> ([u8; 16], u32) {
    p.map_or(([0; 16], 0), |(a, len)| {
        (a.to_ipv6_mapped().octets(), 32 - u32::from(len))
    })
}

fn prefix_bytes6(p: Option<(Ipv6Addr, u8)>) -> ([u8; 16], u32) {
    p.map_or(([0; 16], 0), |(a, len)| {
        (a.octets(), 128u32.saturating_sub(u32::from(len)).min(32))
    })
}

/// The per-slot settings of `lb`.
#[must_use]
pub fn global(lb: &Lb) -> LbGlobal {
    let (src_v4, src_v4_host_bits) = prefix_bytes4(lb.encap_source_v4);
    let (src_v6, src_v6_host_bits) = prefix_bytes6(lb.encap_source_v6);
    let interval = if lb.flow_insert_rate == 0 {
        0
    } else {
        1_000_000_000 / u64::from(lb.flow_insert_rate)
    };
    LbGlobal {
        seed: lb.hash_seed,
        insert_interval_ns: interval,
        // One second's worth of insertions.
        insert_burst_ns: 1_000_000_000,
        src_v4,
        src_v6,
        src_v4_host_bits,
        src_v6_host_bits,
    }
}

/// Writes the tables of `lb` with `live` applied into the idle slot, then makes it the live
/// one: every packet sees the old tables or the new ones, never a mix. Flows keep their
/// backends (the flow table is not touched).
///
/// # Errors
/// When the tables do not fit or a map cannot be written; the live slot is then unchanged.
pub fn install(ebpf: &mut Ebpf, lb: &Lb, live: &Live) -> Result<()> {
    install_tables(ebpf, lb, live, true)
}

/// [`install`] for a caller that has waited for in-flight packets
/// (`kernel::wait_for_readers`) since the last switch: a whole policy install, which waits
/// before it writes anything.
///
/// # Errors
/// As [`install`].
pub fn install_after_wait(ebpf: &mut Ebpf, lb: &Lb, live: &Live) -> Result<()> {
    install_tables(ebpf, lb, live, false)
}

fn install_tables(ebpf: &mut Ebpf, lb: &Lb, live: &Live, wait: bool) -> Result<()> {
    let views = view(lb, live);
    fits(&views)?;
    let control = {
        let m: Array<&MapData, LbControl> = Array::try_from(map(ebpf, "LB_CONTROL")?)?;
        m.get(&0, 0).context("reading LB_CONTROL")?
    };
    let idle = (control.active ^ 1) & 1;
    // Packets that read the control word before the last switch may still be using the idle
    // slot: they end first, then nothing reads it.
    if wait {
        crate::kernel::wait_for_readers();
    }
    // The idle slot's keys of the last change go first: nothing reads that slot.
    clear_slot::<LbService>(ebpf, "LB_VIPS", idle)?;
    clear_slot::<LbReverse>(ebpf, "LB_REVERSE", idle)?;
    {
        let mut m: Array<&mut MapData, LbGlobal> = Array::try_from(map_mut(ebpf, "LB_GLOBAL")?)?;
        m.set(idle, global(lb), 0).context("writing LB_GLOBAL")?;
    }
    let rings = ring_table(ebpf, idle, lb.services.len() as u32)?;
    for (i, (svc, v)) in lb.services.iter().zip(&views).enumerate() {
        let i = i as u32;
        let ring = ring(lb.hash_seed, v);
        if let Some(t) = &rings {
            crate::maps::update_batch(t, &[i], std::slice::from_ref(ring.as_ref()))
                .with_context(|| format!("writing the Maglev table of {:?}", svc.name))?;
        }
        {
            let mut m: Array<&mut MapData, LbBackend> =
                Array::try_from(map_mut(ebpf, "LB_BACKENDS")?)?;
            for (b, bv) in v.backends.iter().enumerate() {
                let (addr, family) = addr_bytes(bv.addr);
                let state = match (bv.state, bv.removed) {
                    (_, true) | (State::Down, _) => BACKEND_DOWN,
                    (State::Draining, _) => BACKEND_DRAINING,
                    (State::Up, _) => BACKEND_UP,
                };
                m.set(
                    backend_slot(idle, i, b as u32),
                    LbBackend {
                        addr,
                        family,
                        state,
                        _pad: 0,
                        weight: bv.weight,
                    },
                    0,
                )?;
            }
        }
        let (vip, family) = addr_bytes(svc.vip);
        let key = VipKey {
            slot: idle as u8,
            family,
            proto: svc.proto,
            _pad: 0,
            port: svc.port,
            _pad2: 0,
            addr: vip,
        };
        let live_now = ring
            .slots
            .iter()
            .any(|&e| e != palisade_common::lb::NO_BACKEND);
        let value = LbService {
            index: i,
            mode: svc.mode.code(),
            live: u8::from(live_now),
            _pad: 0,
            backends: v.backends.len() as u32,
            _pad2: 0,
        };
        let mut vips: BpfHashMap<&mut MapData, VipKey, LbService> =
            BpfHashMap::try_from(map_mut(ebpf, "LB_VIPS")?)?;
        vips.insert(key, value, 0)
            .with_context(|| format!("writing the service {:?}", svc.name))?;
        // ICMP errors about the VIP's flows come to the VIP address (mode 0: look inside).
        let icmp = VipKey {
            proto: if family == FAMILY_V4 {
                IPPROTO_ICMP
            } else {
                IPPROTO_ICMPV6
            },
            port: 0,
            ..key
        };
        vips.insert(icmp, LbService::default(), 0)?;
        if svc.mode == Mode::Dnat {
            let mut rev: BpfHashMap<&mut MapData, VipKey, LbReverse> =
                BpfHashMap::try_from(map_mut(ebpf, "LB_REVERSE")?)?;
            for bv in &v.backends {
                let (addr, family) = addr_bytes(bv.addr);
                rev.insert(
                    VipKey {
                        family,
                        addr,
                        ..key
                    },
                    LbReverse {
                        vip,
                        vport: svc.port,
                        _pad: 0,
                        service: i,
                    },
                    0,
                )?;
            }
        }
    }
    let mut services = control.services;
    services[idle as usize] = lb.services.len() as u32;
    let next = LbControl {
        active: idle,
        changes: control.changes.wrapping_add(1),
        services,
    };
    let mut m: Array<&mut MapData, LbControl> = Array::try_from(map_mut(ebpf, "LB_CONTROL")?)?;
    m.set(0, next, 0)
        .context("switching the load balancer's tables")?;
    Ok(())
}

/// The array of Maglev tables, one per slot (`LB_RINGS` holds them: a service's table is at
/// its index in its slot's).
pub const RINGS: &str = "LB_RINGS";
/// The names of the slots' arrays of Maglev tables (their pins' names).
pub const RING_TABLES: [&str; 2] = ["LB_RINGS_0", "LB_RINGS_1"];

/// Slot `slot`'s array of Maglev tables, with room for `services` (none: the slot is
/// emptied, and a configuration without services holds no table at all): the one in the
/// slot when its size fits, else a new one. Only for the idle slot.
fn ring_table(ebpf: &mut Ebpf, slot: u32, services: u32) -> Result<Option<MapData>> {
    let name = RING_TABLES[(slot & 1) as usize];
    if services == 0 {
        crate::capacity::clear_slot_table(ebpf, RINGS, name, slot)?;
        return Ok(None);
    }
    crate::capacity::array_table(
        ebpf,
        (RINGS, name, slot),
        size_of::<Ring>() as u32,
        services,
        || format!("{services} Maglev tables"),
    )
    .map(Some)
}

/// Removes the keys of `slot` from the hash map `name` (values of type `V`).
fn clear_slot<V: aya::Pod>(ebpf: &mut Ebpf, name: &str, slot: u32) -> Result<()> {
    let mut m: BpfHashMap<&mut MapData, VipKey, V> = BpfHashMap::try_from(map_mut(ebpf, name)?)?;
    let stale: Vec<VipKey> = m
        .keys()
        .filter_map(Result::ok)
        .filter(|k| u32::from(k.slot) == slot)
        .collect();
    for k in stale {
        m.remove(&k)
            .with_context(|| format!("clearing the idle slot of {name}"))?;
    }
    Ok(())
}

/// The counters summed over CPUs.
///
/// # Errors
/// When the map cannot be read.
pub fn counters(ebpf: &Ebpf) -> Result<[u64; LS_COUNT as usize]> {
    crate::stats::summed(ebpf, "LB_STATS")
}

/// The counters by name; empty when they cannot be read.
#[must_use]
pub fn named_counters(ebpf: &Ebpf) -> Vec<Named> {
    crate::stats::named(&LS_NAMES, counters(ebpf))
}

/// The flow-table entries, counted (an LRU: what is there now).
///
/// # Errors
/// When the map cannot be read.
pub fn flow_count(ebpf: &Ebpf) -> Result<usize> {
    let m: BpfHashMap<&MapData, palisade_common::lb::LbFlowKey, palisade_common::lb::LbFlow> =
        BpfHashMap::try_from(map(ebpf, "LB_FLOWS")?)?;
    Ok(m.keys().filter_map(Result::ok).count())
}

/// A flow of the flow table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    pub client: IpAddr,
    pub client_port: u16,
    pub vip: IpAddr,
    pub port: u16,
    pub backend: IpAddr,
}

/// The flow table, for the tests and diagnostics.
///
/// # Errors
/// When the map cannot be read.
pub fn flows(ebpf: &Ebpf) -> Result<Vec<FlowRow>> {
    let m: BpfHashMap<&MapData, palisade_common::lb::LbFlowKey, palisade_common::lb::LbFlow> =
        BpfHashMap::try_from(map(ebpf, "LB_FLOWS")?)?;
    let ip = |a: [u8; 16], family: u8| -> IpAddr {
        let v6 = Ipv6Addr::from(a);
        if family == FAMILY_V4 {
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        } else {
            IpAddr::V6(v6)
        }
    };
    Ok(m.iter()
        .filter_map(Result::ok)
        .map(|(k, v)| FlowRow {
            client: ip(k.src, k.family),
            client_port: k.sport,
            vip: ip(k.dst, k.family),
            port: k.dport,
            backend: ip(v.backend, k.family),
        })
        .collect())
}

/// The name of a service's protocol.
#[must_use]
pub const fn proto_name(proto: u8) -> &'static str {
    if proto == IPPROTO_TCP { "tcp" } else { "udp" }
}

const _: () = assert!(LB_SLOTS == 2);
