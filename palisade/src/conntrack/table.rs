//! The tracker's maps as userspace sees them.

use std::{borrow::Cow, net::IpAddr};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use palisade_common::{
    conntrack::{
        CT_STATS, CtCensus, CtConfig, CtEntry, CtKey, ENTRY_LOCAL, ENTRY_ORIG_B, ENTRY_STATE_NAMES,
        SWEEP_FLUSH, SweepRequest,
    },
    packet::FAMILY_V4,
};
use serde::{Deserialize, Serialize};

use super::{SWEEP, filter::FlowFilter};

/// The sweep's verdict when it ran to the end.
const XDP_PASS: u32 = 2;
use crate::maps::{map, map_mut};

/// Writes the tracker's settings (read by the datapath on every tracked packet).
///
/// # Errors
/// When the map cannot be written.
pub fn write_config(ebpf: &mut Ebpf, cfg: &CtConfig) -> Result<()> {
    let mut m: Array<&mut MapData, CtConfig> = Array::try_from(map_mut(ebpf, "CT_CONFIG")?)?;
    m.set(0, *cfg, 0)
        .context("writing the conntrack settings")?;
    Ok(())
}

/// The sweep program of a loaded object (tests and benchmarks; the daemon keeps its own,
/// possibly reused from a pin).
///
/// # Errors
/// When the object has no such program.
pub fn sweep_program(ebpf: &Ebpf) -> Result<&Xdp> {
    Ok(ebpf
        .program(SWEEP)
        .ok_or_else(|| anyhow!("kernel object has no program {SWEEP}"))?
        .try_into()?)
}

/// Runs the (loaded) sweep program once: expired entries (and, with `SWEEP_FLUSH`, matching
/// ones) are removed, the rest counted. Returns the census it wrote.
///
/// # Errors
/// When the kernel refuses the run.
pub fn sweep(prog: &Xdp, ebpf: &Ebpf, req: &SweepRequest) -> Result<CtCensus> {
    Ok(sweep_timed(prog, ebpf, req)?.0)
}

/// [`sweep`], also returning how long the sweep ran as the kernel measured it.
///
/// # Errors
/// When the kernel refuses the run.
pub fn sweep_timed(
    prog: &Xdp,
    ebpf: &Ebpf,
    req: &SweepRequest,
) -> Result<(CtCensus, std::time::Duration)> {
    // The request is the packet; XDP test runs want at least an Ethernet header's worth.
    let mut frame = vec![0u8; core::mem::size_of::<SweepRequest>().max(64)];
    // SAFETY: SweepRequest is plain old data of this size.
    let bytes: [u8; core::mem::size_of::<SweepRequest>()] = unsafe { core::mem::transmute(*req) };
    frame[..bytes.len()].copy_from_slice(&bytes);
    let mut out = vec![0u8; 128];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    opts.data_out = Some(&mut out);
    let r = prog.test_run(opts).context("running the conntrack sweep")?;
    if r.return_value != XDP_PASS {
        // Anything else means the sweep could not read its request or its maps.
        return Err(anyhow!(
            "the conntrack sweep failed (verdict {})",
            r.return_value
        ));
    }
    Ok((census(ebpf)?, r.duration))
}

/// What the last sweep counted.
///
/// # Errors
/// When the map cannot be read.
pub fn census(ebpf: &Ebpf) -> Result<CtCensus> {
    let m: Array<&MapData, CtCensus> = Array::try_from(map(ebpf, "CT_CENSUS")?)?;
    Ok(m.get(&0, 0)?)
}

/// The tracker's counters, summed over CPUs, indexed like `CT_STAT_NAMES`.
///
/// # Errors
/// When the map cannot be read.
pub fn read_stats(ebpf: &Ebpf) -> Result<Vec<u64>> {
    let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(ebpf, "CT_STATS")?)?;
    (0..CT_STATS)
        .map(|i| Ok(m.get(&i, 0)?.iter().sum()))
        .collect()
}

/// One tracked flow, as `palisade ct list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flow {
    pub proto: u8,
    /// The endpoint that opened the flow.
    pub orig_addr: IpAddr,
    pub orig_port: u16,
    pub reply_addr: IpAddr,
    pub reply_port: u16,
    /// The entry state (`ENTRY_STATE_NAMES`).
    pub state: Cow<'static, str>,
    /// `validated` or `unvalidated`: which table holds it.
    pub table: Cow<'static, str>,
    /// Opened by this host (first seen leaving it).
    pub local: bool,
    pub age_s: u64,
    pub idle_s: u64,
    pub packets_orig: u32,
    pub packets_reply: u32,
    pub bytes_orig: u64,
    pub bytes_reply: u64,
    pub ifindex: u32,
    /// An endpoint is an address an `[intel]` feed with `action = "tag"` marked
    /// (`INTEL_TAGGED`, read when the list is made).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub intel_tagged: bool,
}

fn addr_of(family: u8, words: &[u32; 4]) -> IpAddr {
    let b = palisade_common::conntrack::words_to_bytes(words);
    if family == FAMILY_V4 {
        IpAddr::from([b[12], b[13], b[14], b[15]])
    } else {
        IpAddr::from(b)
    }
}

/// The flow an entry describes.
#[must_use]
pub fn flow_of(k: &CtKey, e: &CtEntry, table: &'static str, now_ns: u64) -> Flow {
    let (oa, op, ra, rp) = if e.flags & ENTRY_ORIG_B != 0 {
        (&k.b, k.b_port, &k.a, k.a_port)
    } else {
        (&k.a, k.a_port, &k.b, k.b_port)
    };
    Flow {
        proto: k.proto,
        orig_addr: addr_of(k.family, oa),
        orig_port: op,
        reply_addr: addr_of(k.family, ra),
        reply_port: rp,
        state: Cow::Borrowed(
            ENTRY_STATE_NAMES
                .get(usize::from(e.state))
                .copied()
                .unwrap_or("unknown"),
        ),
        table: Cow::Borrowed(table),
        local: e.flags & ENTRY_LOCAL != 0,
        age_s: now_ns.saturating_sub(e.created_ns) / 1_000_000_000,
        idle_s: now_ns.saturating_sub(e.last_ns) / 1_000_000_000,
        packets_orig: e.dirs[0].packets,
        packets_reply: e.dirs[1].packets,
        bytes_orig: e.dirs[0].bytes,
        bytes_reply: e.dirs[1].bytes,
        ifindex: e.ifindex,
        intel_tagged: false,
    }
}

/// Every tracked flow that matches `filter`, validated ones first. The filter is the one a
/// flush with it would apply in the kernel ([`SweepRequest::matches`]).
///
/// # Errors
/// When the filter is invalid or a table cannot be read.
pub fn flows(ebpf: &Ebpf, filter: &FlowFilter) -> Result<Vec<Flow>> {
    let req = filter.request(SWEEP_FLUSH).map_err(|e| anyhow!(e))?;
    let now = super::carry::now_ns();
    let tagged = crate::intel::tagged(ebpf);
    let mut out = Vec::new();
    walk(ebpf, |k, e, table| {
        if req.matches(k, e) {
            let mut f = flow_of(k, e, table, now);
            f.intel_tagged = [f.orig_addr, f.reply_addr]
                .iter()
                .any(|a| tagged.contains(&crate::intel::parse::key_of(*a)));
            out.push(f);
        }
    })?;
    Ok(out)
}

/// Calls `f` with every entry of both tables (validated first) and the table's name.
///
/// # Errors
/// When a table cannot be opened.
pub fn walk(ebpf: &Ebpf, mut f: impl FnMut(&CtKey, &CtEntry, &'static str)) -> Result<()> {
    for (name, table) in [("CT_EST", "validated"), ("CT_NEW", "unvalidated")] {
        let m: HashMap<&MapData, CtKey, CtEntry> = HashMap::try_from(map(ebpf, name)?)?;
        for item in m.iter() {
            // An entry deleted while the walk runs ends that key's read; the rest go on.
            let Ok((k, e)) = item else { continue };
            f(&k, &e, table);
        }
    }
    Ok(())
}

/// The address that opened the flow of an entry.
#[must_use]
pub fn originator(k: &CtKey, e: &CtEntry) -> IpAddr {
    addr_of(k.family, &palisade_common::conntrack::originator(k, e))
}

/// Where every entry the datapath inserted has gone, from the tracker's counters and a
/// census. The kernel does not report what an LRU table evicts, so evictions are what the
/// other figures leave unexplained: every entry inserted was promoted, expired, flushed or
/// evicted, or is still present.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Balance {
    /// Entries inserted into either table (`insert_new` + `insert_established`).
    pub inserted: u64,
    /// Inserts that failed (`insert_failed_new` + `insert_failed_established`).
    pub failed: u64,
    /// Entries moved from the unvalidated table into the validated one: each is counted once
    /// as inserted in each table and leaves the first.
    pub promoted: u64,
    /// Entries removed on expiry, by a packet or by a sweep.
    pub expired: u64,
    /// Validated entries a new SYN took out of their table (`reopened_established`): the
    /// flow starts over as an unvalidated insert.
    pub reopened: u64,
    /// Entries removed by a flush.
    pub flushed: u64,
    /// Entries the census found in both tables.
    pub present: u64,
    /// `inserted - promoted - expired - reopened - flushed - present`: entries the LRU table
    /// evicted.
    /// Negative only if the counters are wrong.
    pub evicted: i64,
}

/// The balance of `stats` (as [`read_stats`] returns them) against `census`. Exact when no
/// packet runs between the census and the reading of the counters.
#[must_use]
pub fn balance(stats: &[u64], census: &CtCensus) -> Balance {
    use palisade_common::conntrack::{
        CS_EXPIRED_LOOKUP_EST, CS_EXPIRED_LOOKUP_NEW, CS_INSERT_EST, CS_INSERT_FAIL_EST,
        CS_INSERT_FAIL_NEW, CS_INSERT_NEW, CS_PROMOTED, CS_REOPENED_EST,
    };
    let stat = |i: u32| stats.get(i as usize).copied().unwrap_or(0);
    let present = census
        .live
        .iter()
        .flatten()
        .flatten()
        .map(|&n| u64::from(n))
        .sum();
    let mut b = Balance {
        inserted: stat(CS_INSERT_NEW) + stat(CS_INSERT_EST),
        failed: stat(CS_INSERT_FAIL_NEW) + stat(CS_INSERT_FAIL_EST),
        promoted: stat(CS_PROMOTED),
        expired: stat(CS_EXPIRED_LOOKUP_NEW)
            + stat(CS_EXPIRED_LOOKUP_EST)
            + census.expired.iter().sum::<u64>(),
        reopened: stat(CS_REOPENED_EST),
        flushed: census.flushed.iter().sum(),
        present,
        evicted: 0,
    };
    b.evicted = b.inserted as i64
        - b.promoted as i64
        - b.expired as i64
        - b.reopened as i64
        - b.flushed as i64
        - b.present as i64;
    b
}
