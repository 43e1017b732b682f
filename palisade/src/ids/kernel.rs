//! The kernel side of the IDS: loading the preselection tables and settings into the
//! programs' maps, reading the ring's records back as packets for the engine, and the
//! counters.

use std::net::IpAddr;

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, PerCpuArray},
};
use palisade_common::ids::{
    IDS_FLOW_SAMPLED_OUT, IDS_RECORD_BYTES, IS_COUNT, IdsConfig, IdsFlowKey, IdsFlowState,
    IdsGrams, IdsPortGroup, IdsPortKey, IdsRecord,
};

use super::{
    pcap::Packet,
    preselect::{MAX_PORT_GROUPS, Preselect},
};

/// The TC programs (ingress and egress of the guarded interfaces).
pub const INGRESS: &str = "palisade_ids_ingress";
pub const EGRESS: &str = "palisade_ids_egress";
/// The ring of payload windows.
pub const RECORDS: &str = "IDS_RECORDS";

/// Writes the preselection tables and the settings. A rule set with more port groups than
/// the map holds is refused before anything is written.
///
/// # Errors
/// When it does not fit or a map is missing.
pub fn install(ebpf: &mut Ebpf, pre: &Preselect, cfg: IdsConfig) -> Result<()> {
    if pre.groups.len() > MAX_PORT_GROUPS {
        bail!(
            "{} IDS port groups do not fit the kernel's {MAX_PORT_GROUPS}",
            pre.groups.len()
        );
    }
    {
        let mut groups: HashMap<_, IdsPortKey, IdsPortGroup> = HashMap::try_from(
            ebpf.map_mut("IDS_PORT_GROUPS")
                .ok_or_else(|| anyhow!("no map IDS_PORT_GROUPS"))?,
        )?;
        let stale: Vec<IdsPortKey> = groups.keys().filter_map(Result::ok).collect();
        for k in stale {
            if !pre.groups.contains_key(&k) {
                groups.remove(&k)?;
            }
        }
        for (k, v) in &pre.groups {
            groups.insert(k, v, 0)?;
        }
    }
    let mut grams: Array<_, IdsGrams> = Array::try_from(
        ebpf.map_mut("IDS_GRAMS")
            .ok_or_else(|| anyhow!("no map IDS_GRAMS"))?,
    )?;
    grams.set(0, pre.grams, 0).context("writing IDS_GRAMS")?;
    let mut config: Array<_, IdsConfig> = Array::try_from(
        ebpf.map_mut("IDS_CONFIG")
            .ok_or_else(|| anyhow!("no map IDS_CONFIG"))?,
    )?;
    config.set(0, cfg, 0).context("writing IDS_CONFIG")?;
    Ok(())
}

/// The counters (`palisade_common::ids::IS_*`), summed over CPUs.
///
/// # Errors
/// When the map is missing.
pub fn counters(ebpf: &Ebpf) -> Result<[u64; IS_COUNT as usize]> {
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(
        ebpf.map("IDS_STATS")
            .ok_or_else(|| anyhow!("no map IDS_STATS"))?,
    )?;
    let mut out = [0u64; IS_COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = stats.get(&(i as u32), 0)?.iter().sum();
    }
    Ok(out)
}

/// The kernel's time (`bpf_ktime_get_ns`) of a ring record's packet, 0 when cut short.
#[must_use]
pub fn record_ns(raw: &[u8]) -> u64 {
    if raw.len() < size_of::<IdsRecord>() {
        return 0;
    }
    // SAFETY: as in `decode`.
    let rec: IdsRecord = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    rec.ns
}

/// The flows the kernel sampled out (`IDS_FLOWS`), once each (the client being the lower
/// endpoint, the kernel does not know which one opened it).
#[must_use]
pub fn sampled_out(ebpf: &Ebpf) -> Vec<super::runtime::FlowReport> {
    let Some(map) = ebpf.map("IDS_FLOWS") else {
        return Vec::new();
    };
    let Ok(flows) = HashMap::<_, IdsFlowKey, IdsFlowState>::try_from(map) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in flows.iter().filter_map(Result::ok) {
        if v.state != IDS_FLOW_SAMPLED_OUT || (k.src, k.sport) > (k.dst, k.dport) {
            continue;
        }
        let addr = |a: [u8; 16]| -> IpAddr {
            if k.family == palisade_common::packet::FAMILY_V4 {
                IpAddr::from([a[12], a[13], a[14], a[15]])
            } else {
                IpAddr::from(a)
            }
        };
        out.push(super::runtime::FlowReport {
            proto: k.proto,
            client: addr(k.src).to_string(),
            client_port: k.sport,
            server: addr(k.dst).to_string(),
            server_port: k.dport,
            state: "sampled-out".into(),
            packets: 0,
            payload_bytes: 0,
            inspected_bytes: 0,
            truncated_bytes: 0,
            gaps: 0,
            sids: Vec::new(),
            dropped: false,
        });
    }
    out
}

/// Decodes one ring record into the packet the engine takes (the payload as copied, which may
/// be cut; `payload_len` says how long it was).
#[must_use]
pub fn decode(raw: &[u8]) -> Option<(Packet, u32)> {
    if raw.len() < size_of::<IdsRecord>() {
        return None;
    }
    // SAFETY: IdsRecord is repr(C), plain bytes, and `raw` holds at least one.
    let rec: IdsRecord = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let len = (rec.len as usize).min(IDS_RECORD_BYTES);
    let addr = |a: [u8; 16]| -> IpAddr {
        if rec.family == palisade_common::packet::FAMILY_V4 {
            IpAddr::from([a[12], a[13], a[14], a[15]])
        } else {
            IpAddr::from(a)
        }
    };
    Some((
        Packet {
            src: addr(rec.src),
            dst: addr(rec.dst),
            proto: rec.proto,
            sport: rec.sport,
            dport: rec.dport,
            flags: rec.tcp_flags,
            seq: rec.seq,
            payload: rec.data[..len].to_vec(),
        },
        rec.payload_len,
    ))
}
