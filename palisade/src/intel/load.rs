//! Writing indicators into the kernel: the idle generation is emptied and filled, then made
//! live with one write of `INTEL_CONTROL` (see `docs/design/intel.md`).

use std::{collections::BTreeMap, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{
        Array, BloomFilter, HashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use palisade_common::intel::{
    CHECK_EGRESS, CidrData, GENERATIONS, HAS_CIDRS, HAS_IPS, IntelControl, IntelHit, MAX_FEEDS,
};

use super::{Feeds, Intel};
use crate::maps::{map, map_mut};

/// Capacities of each generation's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Exact addresses (hash table and bloom filter).
    pub ips: u32,
    /// CIDRs (trie).
    pub cidrs: u32,
}

/// The maps sized by [`Sizes`], per generation: bloom filter, exact table, trie.
pub const MAPS: [[&str; 3]; GENERATIONS as usize] = [
    ["INTEL_BLOOM_0", "INTEL_IPS_0", "INTEL_CIDRS_0"],
    ["INTEL_BLOOM_1", "INTEL_IPS_1", "INTEL_CIDRS_1"],
];

impl Sizes {
    /// `(map name, max_entries)` for the loader.
    #[must_use]
    pub fn for_loader(self) -> Vec<(&'static str, u32)> {
        MAPS.iter()
            .flat_map(|[b, h, t]| [(*b, self.ips), (*h, self.ips), (*t, self.cidrs)])
            .collect()
    }
}

/// Whether a map's capacity comes from `[intel]`.
#[must_use]
pub fn is_sized_map(name: &str) -> bool {
    MAPS.iter().flatten().any(|m| *m == name)
}

/// Removes the pins of this layout's indicator maps when their capacity differs from
/// `sizes`, so that the load creates them anew (their contents are rebuilt from the feeds
/// before the programs switch to them). Returns a note when it did.
///
/// # Errors
/// When a pin cannot be read or removed.
pub fn drop_resized(layout: &crate::pin::Layout, sizes: Sizes) -> Result<Option<String>> {
    use std::os::fd::AsFd as _;
    let mut stale = false;
    for (name, want) in sizes.for_loader() {
        let Ok(fd) = crate::pin::obj_get(&layout.map(name)) else {
            continue;
        };
        let (_, _, _, _, max, _) = crate::pin::map_info(fd.as_fd())?;
        stale |= max != want;
    }
    if !stale {
        return Ok(None);
    }
    for name in MAPS
        .iter()
        .flatten()
        .chain(std::iter::once(&"INTEL_CONTROL"))
    {
        let path = layout.map(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing {} to resize it", path.display()))?;
        }
    }
    Ok(Some(format!(
        "the indicator maps are created anew for [intel] max_ips = {}, max_cidrs = {}",
        sizes.ips, sizes.cidrs
    )))
}

/// The indicators of every feed, merged: each address or CIDR once, with the action and id
/// of the first feed (in policy order) that lists it.
#[derive(Debug, Default)]
pub struct Compiled {
    pub ips: BTreeMap<[u8; 16], IntelHit>,
    pub cidrs: BTreeMap<([u8; 16], u32), IntelHit>,
    /// Domains and the action of the first feed that lists them.
    pub domains: BTreeMap<String, super::Action>,
    pub egress: bool,
}

/// Merges the loaded feeds of `intel`.
///
/// # Errors
/// When the indicators do not fit `sizes`, or there are more feeds than the counters hold;
/// nothing has been written then.
pub fn compile(intel: &Intel, feeds: &Feeds, sizes: Sizes) -> Result<Compiled> {
    if intel.feeds.len() > MAX_FEEDS as usize {
        bail!("[intel]: {} feeds; at most {MAX_FEEDS}", intel.feeds.len());
    }
    let mut c = Compiled {
        egress: intel.egress,
        ..Compiled::default()
    };
    for (id, feed) in intel.feeds.iter().enumerate() {
        let Some(l) = feeds.loaded.get(&feed.name) else {
            continue;
        };
        let hit = IntelHit {
            action: feed.action.code(),
            _pad: 0,
            feed: id as u16,
        };
        for k in &l.indicators.ips {
            c.ips.entry(*k).or_insert(hit);
        }
        for k in &l.indicators.cidrs {
            c.cidrs.entry(*k).or_insert(hit);
        }
        for d in &l.indicators.domains {
            c.domains.entry(d.clone()).or_insert(feed.action);
        }
    }
    if c.ips.len() > sizes.ips as usize {
        bail!(
            "[intel]: the feeds list {} addresses; the tables hold {} (`[intel] max_ips`)",
            c.ips.len(),
            sizes.ips
        );
    }
    if c.cidrs.len() > sizes.cidrs as usize {
        bail!(
            "[intel]: the feeds list {} CIDRs; the tries hold {} (`[intel] max_cidrs`)",
            c.cidrs.len(),
            sizes.cidrs
        );
    }
    Ok(c)
}

/// The live generation and what each generation holds.
///
/// # Errors
/// When the map cannot be read.
pub fn control(ebpf: &Ebpf) -> Result<IntelControl> {
    let a: Array<&MapData, IntelControl> = Array::try_from(map(ebpf, "INTEL_CONTROL")?)?;
    Ok(a.get(&0, 0)?)
}

fn set_control(ebpf: &mut Ebpf, c: IntelControl) -> Result<()> {
    let mut a: Array<&mut MapData, IntelControl> =
        Array::try_from(map_mut(ebpf, "INTEL_CONTROL")?)?;
    a.set(0, c, 0)?;
    Ok(())
}

/// How long each step of a write took.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timing {
    pub clear: std::time::Duration,
    pub bloom: std::time::Duration,
    pub table: std::time::Duration,
    pub trie: std::time::Duration,
}

/// Writes `c` into the idle generation and makes it live; returns the generation.
///
/// # Errors
/// When a map refuses a write; the live generation is unchanged then.
pub fn write(ebpf: &mut Ebpf, c: &Compiled) -> Result<(u32, Timing)> {
    let mut ctl = control(ebpf)?;
    let idle = (ctl.active & 1) ^ 1;
    let [bloom, table, trie] = MAPS[idle as usize];
    let mut t = Timing::default();
    // Nothing may look at the idle generation while it is rewritten; it is not live, but
    // its bits are cleared first so a flip that never comes leaves it marked empty.
    ctl.enabled[idle as usize] = 0;
    set_control(ebpf, ctl)?;
    let start = std::time::Instant::now();
    {
        let h: HashMap<&MapData, [u8; 16], IntelHit> = HashMap::try_from(map(ebpf, table)?)?;
        let old: Vec<[u8; 16]> = h.keys().filter_map(Result::ok).collect();
        batch_delete(raw_fd(ebpf, table)?, &old).with_context(|| format!("emptying {table}"))?;
    }
    {
        let mut tr: LpmTrie<&mut MapData, CidrData, IntelHit> =
            LpmTrie::try_from(map_mut(ebpf, trie)?)?;
        let old: Vec<Key<CidrData>> = tr.keys().filter_map(Result::ok).collect();
        for k in &old {
            tr.remove(k).with_context(|| format!("emptying {trie}"))?;
        }
    }
    t.clear = start.elapsed();
    let start = std::time::Instant::now();
    {
        // A bloom filter cannot delete: the idle one keeps the bits of what it held before
        // (it only answers "maybe" more often; the exact table decides).
        let mut b: BloomFilter<&mut MapData, [u8; 16]> =
            BloomFilter::try_from(map_mut(ebpf, bloom)?)?;
        for k in c.ips.keys() {
            b.insert(k, 0).with_context(|| format!("filling {bloom}"))?;
        }
    }
    t.bloom = start.elapsed();
    let start = std::time::Instant::now();
    {
        let keys: Vec<[u8; 16]> = c.ips.keys().copied().collect();
        let values: Vec<IntelHit> = c.ips.values().copied().collect();
        batch_update(raw_fd(ebpf, table)?, &keys, &values)
            .with_context(|| format!("filling {table}"))?;
    }
    t.table = start.elapsed();
    let start = std::time::Instant::now();
    {
        let mut tr: LpmTrie<&mut MapData, CidrData, IntelHit> =
            LpmTrie::try_from(map_mut(ebpf, trie)?)?;
        for (&(addr, bits), hit) in &c.cidrs {
            tr.insert(&Key::new(bits, CidrData { addr }), hit, 0)
                .with_context(|| format!("filling {trie}"))?;
        }
    }
    t.trie = start.elapsed();
    let mut bits = 0;
    if !c.ips.is_empty() {
        bits |= HAS_IPS;
    }
    if !c.cidrs.is_empty() {
        bits |= HAS_CIDRS;
    }
    if c.egress {
        bits |= CHECK_EGRESS;
    }
    ctl.enabled[idle as usize] = bits;
    set_control(ebpf, ctl)?;
    // The flip: one word, read once per packet.
    ctl.active = idle;
    set_control(ebpf, ctl)?;
    Ok((idle, t))
}

/// Entries a batch call carries.
const BATCH: usize = 65_536;

/// `union bpf_attr` for `BPF_MAP_*_BATCH`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

fn batch_call(cmd: libc::c_long, attr: &mut BatchAttr) -> Result<()> {
    // SAFETY: a valid attribute block of the size passed; the key and value buffers it
    // points at outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>() as u32,
        )
    };
    if r < 0 {
        return Err(anyhow!(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Inserts `keys[i] -> values[i]` in batches of [`BATCH`] (one system call each, instead of
/// one per entry).
fn batch_update(fd: i32, keys: &[[u8; 16]], values: &[IntelHit]) -> Result<()> {
    for (ks, vs) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        let mut attr = BatchAttr {
            keys: ks.as_ptr() as u64,
            values: vs.as_ptr() as u64,
            count: ks.len() as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        batch_call(BPF_MAP_UPDATE_BATCH, &mut attr)?;
        if attr.count as usize != ks.len() {
            bail!("the kernel took {} of {} entries", attr.count, ks.len());
        }
    }
    Ok(())
}

fn batch_delete(fd: i32, keys: &[[u8; 16]]) -> Result<()> {
    for ks in keys.chunks(BATCH) {
        let mut attr = BatchAttr {
            keys: ks.as_ptr() as u64,
            count: ks.len() as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        batch_call(BPF_MAP_DELETE_BATCH, &mut attr)?;
    }
    Ok(())
}

/// The raw descriptor of a hash map, for the batch calls aya does not wrap (valid while
/// `ebpf` lives).
fn raw_fd(ebpf: &Ebpf, name: &str) -> Result<i32> {
    use std::os::fd::AsFd as _;
    match map(ebpf, name)? {
        aya::maps::Map::HashMap(m) => Ok(m.fd().as_fd().as_raw_fd()),
        _ => bail!("{name} is not a hash map"),
    }
}

/// Per-feed hit counters and the per-direction counters, summed over CPUs.
///
/// # Errors
/// When the map cannot be read.
pub fn counters(ebpf: &Ebpf) -> Result<Vec<u64>> {
    (0..palisade_common::intel::IS_COUNT)
        .map(|i| crate::testrun::sum_counter(ebpf, "INTEL_STATS", i))
        .collect()
}
