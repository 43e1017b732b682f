//! Writing indicators into the kernel: the idle generation is emptied and filled, then made
//! live with one write of `INTEL_CONTROL` (see `docs/design/intel.md`).

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, Map, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use palisade_common::intel::{
    BloomBlock, CHECK_EGRESS, CidrBlock, CidrData, GENERATIONS, HAS_CIDRS, HAS_CIDRS_V4,
    HAS_CIDRS_V6_64, HAS_CIDRS_V6_SHORT, HAS_IPS, HIT_V4_LONG, HIT_V6_LONG, IntelControl, IntelHit,
    MAX_FEEDS, StrideTables, V4_SLASH16_ENTRIES, V6_STRIDE, V6_STRIDE_MIN, V6Block, V6Table,
    bloom_blocks, bloom_hash, bloom_set, expand_v4, expand_v6, place, slash64, v6_entries,
    v6_filter_slot, v6_filter_words,
};

use super::{Feeds, Intel};
use crate::maps::{map, map_mut};

/// Capacities of each generation's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Exact addresses (hash table and bloom filter).
    pub ips: u32,
    /// CIDRs (trie), /24 blocks (the IPv4 /24 table) and /64 blocks (the IPv6 /64 table).
    pub cidrs: u32,
}

/// The maps sized by [`Sizes`], per generation: bloom filter, exact table, trie, IPv4 /24
/// table, IPv6 /64 table, IPv6 /64 filter. The IPv4 /16 arrays are not sized: each
/// generation's is created with its IPv4 CIDRs ([`SLASH16`]).
pub const MAPS: [[&str; 6]; GENERATIONS as usize] = [
    [
        "INTEL_BLOOM_0",
        "INTEL_IPS_0",
        "INTEL_CIDRS_0",
        "INTEL_V4_24_0",
        "INTEL_V6_64_0",
        "INTEL_V6_FILTER_0",
    ],
    [
        "INTEL_BLOOM_1",
        "INTEL_IPS_1",
        "INTEL_CIDRS_1",
        "INTEL_V4_24_1",
        "INTEL_V6_64_1",
        "INTEL_V6_FILTER_1",
    ],
];

/// The array of each generation's IPv4 /16 array, and the names of those arrays: a
/// generation holds one only while it has IPv4 CIDRs.
pub const SLASH16: (&str, [&str; 2]) = ("INTEL_V4_16", ["INTEL_V4_16_0", "INTEL_V4_16_1"]);

impl Sizes {
    /// `(map name, max_entries)` for the loader.
    #[must_use]
    pub fn for_loader(self) -> Vec<(&'static str, u32)> {
        MAPS.iter()
            .flat_map(|[b, h, t, s24, s64, f64]| {
                [
                    (*b, bloom_blocks(self.ips)),
                    (*h, self.ips),
                    (*t, self.cidrs),
                    (*s24, self.cidrs),
                    (*s64, self.cidrs),
                    (*f64, v6_filter_words(self.cidrs)),
                ]
            })
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
    let mut stale = false;
    for (name, want) in sizes.for_loader() {
        let max = crate::pin::pinned_max_entries(&layout.map(name))?;
        stale |= max.is_some_and(|max| max != want);
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
    /// The IPv4 /16 array ([`V4_SLASH16_ENTRIES`] entries; empty when no CIDR covers IPv4).
    pub v4_16: Vec<CidrBlock>,
    /// The IPv4 /24 table.
    pub v4_24: BTreeMap<u32, CidrBlock>,
    /// The IPv6 /64 table (empty when no IPv6 CIDR of /49 or longer is listed).
    pub v6_64: BTreeMap<u64, V6Block>,
    /// Whether the trie holds IPv6 CIDRs of /64 or shorter (`HAS_CIDRS_V6_SHORT`).
    pub v6_short: bool,
    /// The trie's entries: IPv6 CIDRs the /64 table does not hold (shorter than /49, or past
    /// its capacity), IPv6 ones longer than /64 and IPv4 ones longer than /24.
    pub trie: Vec<(([u8; 16], u32), IntelHit)>,
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
    compile_with(intel, feeds, sizes, true)
}

/// [`compile`] with every IPv6 CIDR in the trie and no /64 table, as before the table
/// existed: the baseline `palisade-bench --intel` measures the table against.
///
/// # Errors
/// As [`compile`].
pub fn compile_without_v6_table(intel: &Intel, feeds: &Feeds, sizes: Sizes) -> Result<Compiled> {
    compile_with(intel, feeds, sizes, false)
}

fn compile_with(intel: &Intel, feeds: &Feeds, sizes: Sizes, v6_table: bool) -> Result<Compiled> {
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
            flags: 0,
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
    strides(&mut c, sizes.cidrs, v6_table)?;
    Ok(c)
}

/// The stride tables being built: the /16 array and a /24 table of at most `cap` entries.
struct Tables<'a> {
    v4_16: &'a mut Vec<CidrBlock>,
    v4_24: &'a mut BTreeMap<u32, CidrBlock>,
    cap: usize,
}

impl StrideTables for Tables<'_> {
    fn block16(&mut self, index: u32) -> &mut CidrBlock {
        &mut self.v4_16[index as usize]
    }

    fn block24(&mut self, key: u32, fresh: CidrBlock) -> Option<&mut CidrBlock> {
        if self.v4_24.len() >= self.cap && !self.v4_24.contains_key(&key) {
            return None;
        }
        Some(self.v4_24.entry(key).or_insert(fresh))
    }
}

/// Expands the CIDRs of `c` into the IPv4 stride tables, the trie and (with `v6_table`) the
/// IPv6 /64 table (see `palisade_common::intel`), shortest first so longer ones override.
///
/// # Errors
/// When the /24 table would need more than `cap` entries.
fn strides(c: &mut Compiled, cap: u32, v6_table: bool) -> Result<()> {
    let mut order: Vec<(&([u8; 16], u32), &IntelHit)> = c.cidrs.iter().collect();
    order.sort_by_key(|((_, bits), _)| *bits);
    let mut v4_16 = Vec::new();
    let mut v4_24 = BTreeMap::new();
    let mut trie = Vec::new();
    for (&(net, bits), hit) in order {
        let p = place(&net, bits);
        if let Some((v4, len)) = p.v4 {
            if v4_16.is_empty() {
                v4_16 = vec![CidrBlock::default(); V4_SLASH16_ENTRIES as usize];
            }
            let mut t = Tables {
                v4_16: &mut v4_16,
                v4_24: &mut v4_24,
                cap: cap as usize,
            };
            if !expand_v4(&mut t, v4, len, *hit) {
                bail!(
                    "[intel]: the feeds' IPv4 CIDRs longer than /16 cover more than {cap} /24 \
                     blocks (a /20 takes 16); the tables hold {cap} (`[intel] max_cidrs`)"
                );
            }
        }
        if p.trie {
            let long_v6 = p.trie_flags == 0 && bits > V6_STRIDE;
            trie.push((
                (net, bits),
                IntelHit {
                    flags: if long_v6 { HIT_V6_LONG } else { p.trie_flags },
                    ..*hit
                },
            ));
        }
    }
    c.v4_16 = v4_16;
    c.v4_24 = v4_24;
    c.trie = trie;
    if !v6_table {
        return Ok(());
    }
    let (v6_64, in_trie) = plan_v6(&c.trie, cap);
    c.v6_short =
        c.trie.iter().zip(&in_trie).any(|(((net, bits), h), keep)| {
            *keep && is_v6_trie(net, *bits, h) && *bits <= V6_STRIDE
        });
    let mut keep = in_trie.into_iter();
    c.trie.retain(|_| keep.next().unwrap_or(true));
    c.v6_64 = v6_64;
    Ok(())
}

/// Whether a trie entry matches IPv6 addresses (it is not an IPv4 CIDR).
fn is_v6_trie(net: &[u8; 16], bits: u32, hit: &IntelHit) -> bool {
    hit.flags & HIT_V4_LONG == 0 && !(bits >= 96 && palisade_common::intel::is_mapped_v4(net))
}

/// The IPv6 /64 table of the trie's entries `trie` (at most `cap` entries), and which entries
/// stay in the trie. Entries longer than /64 stay (flagged `HIT_V6_LONG`), each /64 holding
/// one marked; CIDRs of /49 to /64 go into the table, longest first, while what they would
/// write (`v6_entries`, overlaps counted twice) fits what is left of `cap`; the others stay.
fn plan_v6(trie: &[(([u8; 16], u32), IntelHit)], cap: u32) -> (BTreeMap<u64, V6Block>, Vec<bool>) {
    let mut keep = vec![true; trie.len()];
    let mut table = BTreeMap::new();
    let v6: Vec<usize> = (0..trie.len())
        .filter(|&i| is_v6_trie(&trie[i].0.0, trie[i].0.1, &trie[i].1))
        .collect();
    let long: std::collections::BTreeSet<u64> = v6
        .iter()
        .filter(|&&i| trie[i].0.1 > V6_STRIDE)
        .map(|&i| slash64(&trie[i].0.0))
        .collect();
    // Never more than `cap`: each is a CIDR, and `compile` refuses more CIDRs than `cap`.
    let mut left = u64::from(cap).saturating_sub(long.len() as u64);
    let mut mid: Vec<usize> = v6
        .iter()
        .copied()
        .filter(|&i| (V6_STRIDE_MIN..=V6_STRIDE).contains(&trie[i].0.1))
        .collect();
    mid.sort_by_key(|&i| std::cmp::Reverse(trie[i].0.1));
    for i in mid {
        let need = v6_entries(trie[i].0.1);
        if need <= left {
            left -= need;
            keep[i] = false;
        }
    }
    // What stays in the trie at /64 or shorter, by length: what a new /64 entry inherits.
    let mut short: BTreeMap<u32, StdHashMap<u64, IntelHit>> = BTreeMap::new();
    for &i in &v6 {
        let ((net, bits), hit) = trie[i];
        if keep[i] && bits <= V6_STRIDE {
            short.entry(bits).or_default().insert(slash64(&net), hit);
        }
    }
    let inherit = |key: u64| {
        for (bits, nets) in short.iter().rev() {
            let mask = if *bits == 0 {
                0
            } else {
                u64::MAX << (V6_STRIDE - bits)
            };
            if let Some(h) = nets.get(&(key & mask)) {
                return (*bits, *h);
            }
        }
        (0, IntelHit::default())
    };
    let mut t = V6Tables {
        v6_64: &mut table,
        cap: cap as usize,
    };
    for &i in &v6 {
        let ((net, bits), hit) = trie[i];
        if bits > V6_STRIDE || !keep[i] {
            let hit = IntelHit { flags: 0, ..hit };
            // Within `cap` by the count above.
            let fits = expand_v6(&mut t, slash64(&net), bits, hit, inherit);
            debug_assert!(fits);
        }
    }
    (table, keep)
}

/// The IPv6 /64 table being built, of at most `cap` entries.
struct V6Tables<'a> {
    v6_64: &'a mut BTreeMap<u64, V6Block>,
    cap: usize,
}

impl V6Table for V6Tables<'_> {
    fn block64(&mut self, key: u64, fresh: V6Block) -> Option<&mut V6Block> {
        if self.v6_64.len() >= self.cap && !self.v6_64.contains_key(&key) {
            return None;
        }
        Some(self.v6_64.entry(key).or_insert(fresh))
    }
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

/// The idle generation's maps, opened anew (their descriptors duplicated), so that a thread
/// other than the daemon's loop can write them; the programs read only the live generation.
pub struct Idle {
    pub generation: u32,
    maps: Vec<(&'static str, Map)>,
    /// The array of /16 arrays ([`SLASH16`]), whose idle slot [`fill`] writes.
    slash16: std::os::fd::OwnedFd,
}

impl Idle {
    fn map(&self, name: &str) -> Result<&Map> {
        self.maps
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m)
            .ok_or_else(|| anyhow!("no map {name}"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.maps
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m)
            .ok_or_else(|| anyhow!("no map {name}"))
    }

    fn fd(&self, name: &str) -> Result<i32> {
        use std::os::fd::AsFd as _;
        match self.map(name)? {
            Map::HashMap(m) | Map::Array(m) | Map::LpmTrie(m) => Ok(m.fd().as_fd().as_raw_fd()),
            _ => bail!("{name} is not an indicator map"),
        }
    }
}

/// Opens the idle generation's maps for [`fill`] and marks that generation empty in
/// `INTEL_CONTROL` (it is not live; a flip that never comes leaves it marked empty).
///
/// # Errors
/// When a map cannot be read or opened.
pub fn idle(ebpf: &mut Ebpf) -> Result<Idle> {
    use std::os::fd::AsFd as _;
    let mut ctl = control(ebpf)?;
    let generation = (ctl.active & 1) ^ 1;
    ctl.enabled[generation as usize] = 0;
    set_control(ebpf, ctl)?;
    let mut maps = Vec::new();
    for name in MAPS[generation as usize] {
        let owned = match map(ebpf, name)? {
            Map::HashMap(m) | Map::Array(m) | Map::LpmTrie(m) => {
                m.fd().as_fd().try_clone_to_owned()?
            }
            _ => bail!("{name} is not an indicator map"),
        };
        maps.push((name, Map::from_map_data(MapData::from_fd(owned)?)?));
    }
    let slash16 = match map(ebpf, SLASH16.0)? {
        Map::ArrayOfMaps(m) => m.fd().as_fd().try_clone_to_owned()?,
        _ => bail!("{} is not an array of maps", SLASH16.0),
    };
    Ok(Idle {
        generation,
        maps,
        slash16,
    })
}

/// Puts the idle generation's IPv4 /16 array in its slot of [`SLASH16`]: a new array
/// holding `blocks` (all [`V4_SLASH16_ENTRIES`] of them), or none when there are none (no
/// IPv4 CIDRs), which frees the one an earlier refresh left there.
fn write_slash16(idle: &Idle, blocks: &[CidrBlock]) -> Result<()> {
    use std::os::fd::AsFd as _;
    let (outer, names) = SLASH16;
    let name = names[(idle.generation & 1) as usize];
    let slot = (idle.generation & 1).to_ne_bytes();
    if blocks.is_empty() {
        crate::pin::map_delete(idle.slash16.as_fd(), &slot)
            .with_context(|| format!("emptying {outer}'s slot {}", idle.generation))?;
        return Ok(());
    }
    if blocks.len() != V4_SLASH16_ENTRIES as usize {
        bail!(
            "{name} holds {V4_SLASH16_ENTRIES} entries, not {}",
            blocks.len()
        );
    }
    let obj = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        size_of::<CidrBlock>() as u32,
        V4_SLASH16_ENTRIES,
        0,
    );
    let table = MapData::create(obj, name, None).with_context(|| format!("creating {name}"))?;
    let keys: Vec<u32> = (0..V4_SLASH16_ENTRIES).collect();
    batch_update(table.fd().as_fd().as_raw_fd(), &keys, blocks)
        .with_context(|| format!("filling {name}"))?;
    // The slot holds its own reference: the table lives on once `table` is dropped.
    crate::capacity::put_in_slot(idle.slash16.as_fd(), (outer, name, idle.generation), &table)
}

/// A filled generation, ready to be made live by [`flip`].
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub generation: u32,
    /// Its `INTEL_CONTROL.enabled` bits.
    pub bits: u32,
    /// Its bloom filter's block mask.
    pub bloom_mask: u32,
    /// Its /64 filter's word mask.
    pub v6_filter_mask: u32,
    pub timing: Timing,
}

/// Makes the generation `w` filled live: its bits, then the flip of `INTEL_CONTROL.active`
/// (one word, read once per packet).
///
/// # Errors
/// When the control word cannot be written, or the generation is live already.
pub fn flip(ebpf: &mut Ebpf, w: &Written) -> Result<()> {
    let mut ctl = control(ebpf)?;
    if ctl.active & 1 == w.generation {
        bail!("generation {} is live already", w.generation);
    }
    ctl.enabled[w.generation as usize] = w.bits;
    ctl.bloom_mask = w.bloom_mask;
    ctl.v6_filter_mask = w.v6_filter_mask;
    set_control(ebpf, ctl)?;
    ctl.active = w.generation;
    set_control(ebpf, ctl)?;
    Ok(())
}

/// Writes `c` into the idle generation and makes it live; returns the generation.
///
/// # Errors
/// When a map refuses a write; the live generation is unchanged then.
pub fn write(ebpf: &mut Ebpf, c: &Compiled) -> Result<(u32, Timing)> {
    let mut i = idle(ebpf)?;
    let w = fill(&mut i, c)?;
    flip(ebpf, &w)?;
    Ok((w.generation, w.timing))
}

/// Empties the idle generation's maps and writes `c` into them (not live yet: [`flip`]).
///
/// # Errors
/// When a map refuses a write.
pub fn fill(idle: &mut Idle, c: &Compiled) -> Result<Written> {
    let [bloom, table, trie, s24, s64, f64] = MAPS[idle.generation as usize];
    let mut t = Timing::default();
    let bloom_mask;
    let v6_filter_mask;
    let start = std::time::Instant::now();
    {
        let h: HashMap<&MapData, [u8; 16], IntelHit> = HashMap::try_from(idle.map(table)?)?;
        let old: Vec<[u8; 16]> = h.keys().filter_map(Result::ok).collect();
        batch_delete(idle.fd(table)?, &old).with_context(|| format!("emptying {table}"))?;
    }
    {
        let h: HashMap<&MapData, u32, CidrBlock> = HashMap::try_from(idle.map(s24)?)?;
        let old: Vec<u32> = h.keys().filter_map(Result::ok).collect();
        batch_delete(idle.fd(s24)?, &old).with_context(|| format!("emptying {s24}"))?;
    }
    {
        let h: HashMap<&MapData, u64, V6Block> = HashMap::try_from(idle.map(s64)?)?;
        let old: Vec<u64> = h.keys().filter_map(Result::ok).collect();
        batch_delete(idle.fd(s64)?, &old).with_context(|| format!("emptying {s64}"))?;
    }
    {
        let mut tr: LpmTrie<&mut MapData, CidrData, IntelHit> =
            LpmTrie::try_from(idle.map_mut(trie)?)?;
        let old: Vec<Key<CidrData>> = tr.keys().filter_map(Result::ok).collect();
        for k in &old {
            tr.remove(k).with_context(|| format!("emptying {trie}"))?;
        }
    }
    t.clear = start.elapsed();
    let start = std::time::Instant::now();
    {
        // The filter is built whole here and written over the array: fresh at every refresh.
        let fd = idle.fd(bloom)?;
        let blocks = crate::pin::map_info(borrowed(fd))?.4;
        if !blocks.is_power_of_two() {
            bail!("{bloom} holds {blocks} blocks, not a power of two");
        }
        bloom_mask = blocks - 1;
        let filter = build_bloom(c.ips.keys(), blocks);
        let keys: Vec<u32> = (0..blocks).collect();
        batch_update(fd, &keys, &filter).with_context(|| format!("filling {bloom}"))?;
    }
    t.bloom = start.elapsed();
    let start = std::time::Instant::now();
    {
        let keys: Vec<[u8; 16]> = c.ips.keys().copied().collect();
        let values: Vec<IntelHit> = c.ips.values().copied().collect();
        batch_update(idle.fd(table)?, &keys, &values)
            .with_context(|| format!("filling {table}"))?;
    }
    t.table = start.elapsed();
    let start = std::time::Instant::now();
    {
        let mut tr: LpmTrie<&mut MapData, CidrData, IntelHit> =
            LpmTrie::try_from(idle.map_mut(trie)?)?;
        for &((addr, bits), hit) in &c.trie {
            tr.insert(&Key::new(bits, CidrData { addr }), hit, 0)
                .with_context(|| format!("filling {trie}"))?;
        }
    }
    {
        write_slash16(idle, &c.v4_16)?;
        let keys: Vec<u32> = c.v4_24.keys().copied().collect();
        let values: Vec<CidrBlock> = c.v4_24.values().copied().collect();
        batch_update(idle.fd(s24)?, &keys, &values).with_context(|| format!("filling {s24}"))?;
        // The /64 filter is built whole and written over the array before the table: fresh
        // at every refresh, and holding every /64 of the table.
        let fd = idle.fd(f64)?;
        let words = crate::pin::map_info(borrowed(fd))?.4;
        if !words.is_power_of_two() {
            bail!("{f64} holds {words} words, not a power of two");
        }
        v6_filter_mask = words - 1;
        let mut filter = vec![0u64; words as usize];
        for &k in c.v6_64.keys() {
            let (w, bits) = v6_filter_slot(k, v6_filter_mask);
            filter[w as usize] |= bits;
        }
        let slots: Vec<u32> = (0..words).collect();
        batch_update(fd, &slots, &filter).with_context(|| format!("filling {f64}"))?;
        let keys: Vec<u64> = c.v6_64.keys().copied().collect();
        let values: Vec<V6Block> = c.v6_64.values().copied().collect();
        batch_update(idle.fd(s64)?, &keys, &values).with_context(|| format!("filling {s64}"))?;
    }
    t.trie = start.elapsed();
    let mut bits = 0;
    if !c.ips.is_empty() {
        bits |= HAS_IPS;
    }
    if !c.trie.is_empty() {
        bits |= HAS_CIDRS;
    }
    if !c.v4_16.is_empty() {
        bits |= HAS_CIDRS_V4;
    }
    if !c.v6_64.is_empty() {
        bits |= HAS_CIDRS_V6_64;
    }
    if c.v6_short {
        bits |= HAS_CIDRS_V6_SHORT;
    }
    if c.egress {
        bits |= CHECK_EGRESS;
    }
    Ok(Written {
        generation: idle.generation,
        bits,
        bloom_mask,
        v6_filter_mask,
        timing: t,
    })
}

/// A bloom filter of `blocks` blocks (a power of two) over `addrs`, as the kernel reads it
/// (`palisade_common::intel::bloom_hash`).
#[must_use]
pub fn build_bloom<'a>(addrs: impl Iterator<Item = &'a [u8; 16]>, blocks: u32) -> Vec<BloomBlock> {
    let mut filter = vec![BloomBlock::default(); blocks as usize];
    for a in addrs {
        let (b, positions) = bloom_hash(a, blocks - 1);
        bloom_set(&mut filter[b as usize], positions);
    }
    filter
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
fn batch_update<K, V>(fd: i32, keys: &[K], values: &[V]) -> Result<()> {
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

fn batch_delete<K>(fd: i32, keys: &[K]) -> Result<()> {
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

fn borrowed<'a>(fd: i32) -> std::os::fd::BorrowedFd<'a> {
    // SAFETY: `fd` comes from `raw_fd` and stays open while the caller's `ebpf` lives.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
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
