//! Reading the kernel's per-CPU counters.

use anyhow::Result;
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use palisade_common::firewall::{RuleStats, rule_slot};

use crate::maps::map;

/// Packets and bytes that hit `rule` (evaluation index or `DEFAULT_SLOT`) in `generation`,
/// summed over CPUs.
///
/// # Errors
/// When the map cannot be read.
pub fn rule_stats(ebpf: &Ebpf, generation: u32, rule: u32) -> Result<RuleStats> {
    let m: PerCpuArray<&MapData, RuleStats> = PerCpuArray::try_from(map(ebpf, "FW_RULE_STATS")?)?;
    let v = m.get(&rule_slot(generation, rule), 0)?;
    Ok(v.iter().fold(RuleStats::default(), |a, s| RuleStats {
        packets: a.packets + s.packets,
        bytes: a.bytes + s.bytes,
    }))
}
