//! TLS server-name and JA4 policy (`[tls]`): the section's model, the decision on a
//! ClientHello ([`decide`]), and the table of flows whose ClientHello is being gathered
//! ([`flows`]). The ClientHello reader and JA4 live in [`palisade_common::tls`], shared with
//! the kernel side. `docs/design/tls.md` explains the design.

pub mod decide;
pub mod flows;
pub mod runtime;

use crate::policy::model::NameEntry;

/// `ports`: at most this many TCP ports carry TLS for the policy.
pub const MAX_TLS_PORTS: usize = 8;
/// Names in `block`/`allow` and the DNS lists `[tls]` uses, together.
pub const MAX_TLS_NAMES: usize = 1 << 20;
/// Fingerprints in `ja4_block` and `ja4_allow`, together.
pub const MAX_JA4: usize = 4096;

/// Which names may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Names on the block lists are refused; every other name connects.
    Blocklist,
    /// Only names on the allow lists connect.
    Allowlist,
}

/// What happens to one category of ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Allow,
    Block,
}

/// ClientHellos with Encrypted Client Hello, whose visible name is the outer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchPolicy {
    /// Decided by the outer name like any other hello (and reported as outer-only).
    Outer,
    Allow,
    Block,
}

/// The `[tls]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// Whether the section is present.
    pub enabled: bool,
    pub mode: TlsMode,
    /// TCP destination ports whose flows are inspected; UDP to them is QUIC.
    pub ports: Vec<u16>,
    /// The names of the mode's lists: `block` or `allow`, written in the section.
    pub names: Vec<NameEntry>,
    /// Indexes of `[dns.lists.NAME]` tables whose names join `names`.
    pub lists: Vec<usize>,
    pub no_sni: Category,
    pub ip_literal: Category,
    pub ech: EchPolicy,
    /// JA4 fingerprints (36 ASCII bytes each) that are refused whatever the name.
    pub ja4_block: Vec<[u8; 36]>,
    /// When not empty, only these fingerprints may connect.
    pub ja4_allow: Vec<[u8; 36]>,
    /// Hellos that cannot be read, and flows whose hello never completes.
    pub malformed: Category,
    /// QUIC (UDP to `ports`).
    pub quic: Category,
    /// Decide and report, but never block.
    pub audit: bool,
    /// Line of the section header (0 when absent).
    pub line: usize,
}

impl Default for Tls {
    /// No `[tls]` section: nothing inspected.
    fn default() -> Self {
        Self {
            enabled: false,
            mode: TlsMode::Blocklist,
            ports: vec![443],
            names: Vec::new(),
            lists: Vec::new(),
            no_sni: Category::Allow,
            ip_literal: Category::Allow,
            ech: EchPolicy::Outer,
            ja4_block: Vec::new(),
            ja4_allow: Vec::new(),
            malformed: Category::Block,
            quic: Category::Block,
            audit: false,
            line: 0,
        }
    }
}

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use palisade_common::tls::gate::{
    GATE_BLOCK_QUIC, GATE_FAIL_CLOSED, GATE_ON, MAX_GATE_PORTS, TS_COUNT, TlsGateConfig,
};

use crate::maps::map_mut;

/// The TC program of the gate on what arrives on the guarded interfaces.
pub const INGRESS: &str = "palisade_tls_ingress";
/// The TC program of the gate on what leaves through them.
pub const EGRESS: &str = "palisade_tls_egress";

const _: () = assert!(MAX_TLS_PORTS == MAX_GATE_PORTS);

impl Tls {
    /// What the kernel gate reads for this section.
    #[must_use]
    pub fn gate(&self) -> TlsGateConfig {
        let mut cfg = TlsGateConfig::default();
        if !self.enabled {
            return cfg;
        }
        cfg.flags = GATE_ON;
        if self.quic == Category::Block && !self.audit {
            cfg.flags |= GATE_BLOCK_QUIC;
        }
        if self.malformed == Category::Block && !self.audit {
            cfg.flags |= GATE_FAIL_CLOSED;
        }
        for (slot, &port) in cfg.ports.iter_mut().zip(&self.ports) {
            *slot = port;
        }
        cfg.port_count = self.ports.len().min(MAX_GATE_PORTS) as u32;
        cfg
    }
}

/// Writes `config` into the gate's slot of `generation` (before that generation goes live).
///
/// # Errors
/// When the map cannot be written.
pub fn write_config(ebpf: &mut Ebpf, generation: u32, config: &TlsGateConfig) -> Result<()> {
    let mut m: Array<&mut MapData, TlsGateConfig> = Array::try_from(map_mut(ebpf, "TLS_CONFIG")?)?;
    m.set(generation, config, 0)
        .context("writing the TLS gate settings")?;
    Ok(())
}

/// The gate's counters summed over CPUs, indexed by `TS_*`.
///
/// # Errors
/// When the map cannot be read.
pub fn counters(ebpf: &Ebpf) -> Result<[u64; TS_COUNT as usize]> {
    crate::stats::summed(ebpf, "TLS_STATS")
}

/// The gate's counters by name; empty when they cannot be read.
#[must_use]
pub fn named_counters(ebpf: &Ebpf) -> Vec<crate::stats::Named> {
    crate::stats::named(&palisade_common::tls::gate::TS_NAMES, counters(ebpf))
}

/// A record of `TLS_SEGMENTS` as the ring buffer hands it out; `None` when it is not one.
#[must_use]
pub fn segment_record(bytes: &[u8]) -> Option<palisade_common::tls::gate::SegmentRecord> {
    (bytes.len() >= std::mem::size_of::<palisade_common::tls::gate::SegmentRecord>()).then(|| {
        // SAFETY: the length was checked; the record is plain data, valid for any bits.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) }
    })
}

/// Writes the daemon's verdict on a flow into the gate's table: allowed, or blocked for
/// `reason`.
///
/// # Errors
/// When the map cannot be written.
pub fn set_verdict(
    ebpf: &mut Ebpf,
    key: &palisade_common::tls::gate::GateKey,
    base: u32,
    blocked_for: Option<u32>,
) -> Result<()> {
    use palisade_common::tls::gate::{FLOW_ALLOWED, FLOW_BLOCKED, GateFlow};
    let mut m: aya::maps::HashMap<&mut MapData, palisade_common::tls::gate::GateKey, GateFlow> =
        aya::maps::HashMap::try_from(map_mut(ebpf, "TLS_FLOWS")?)?;
    let flow = GateFlow {
        state: if blocked_for.is_some() {
            FLOW_BLOCKED
        } else {
            FLOW_ALLOWED
        },
        base,
        reason: blocked_for.unwrap_or(0),
        since: 0,
    };
    m.insert(key, flow, 0)
        .context("writing a TLS verdict into TLS_FLOWS")?;
    Ok(())
}

/// The gate's entry for a flow, if any.
///
/// # Errors
/// When the map cannot be read.
pub fn gate_flow(
    ebpf: &Ebpf,
    key: &palisade_common::tls::gate::GateKey,
) -> Result<Option<palisade_common::tls::gate::GateFlow>> {
    let m: aya::maps::HashMap<&MapData, palisade_common::tls::gate::GateKey, _> =
        aya::maps::HashMap::try_from(crate::maps::map(ebpf, "TLS_FLOWS")?)?;
    match m.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
