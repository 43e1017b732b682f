//! Writes a compiled policy (firewall and DNS) into the idle generation of the kernel maps,
//! then makes it live with one write to `CONTROL`.
//!
//! Until that last write nothing a packet can observe has changed, so a failure at any step
//! leaves the running policy exactly as it was.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, MapData, lpm_trie::Key},
};
use palisade_common::firewall::{
    Control, FlowKey, KEY_FILTER_HEADER, KeyFilter, MAX_SETS, MAX_TUPLES, PORT_SPACE, PolicyHeader,
    RuleRef, RuleStats, SET_HOSTS, SET_KEY_PREFIX_BITS, SET_OVERLOAD, SET_PREFIXES,
    SET_PREFIXES_SHORT, SetKey, TUPLE_DST_SET, TUPLE_SRC_SET, Tuple, key_filter_entries,
    prefix_granule_bits, prefix_granule_hash, rule_stats_slot, set_id, set_kind_slot,
};

use palisade_common::dns::{
    hash::HashKey,
    maps::{DnsGlobal, NameFilter, NameKey, NameValue, SCOPES, ScopeConfig},
};

use super::compile::{CompiledFirewall, family_code};
use crate::capacity::{self, Kind, Room};
use crate::dns::compile::CompiledDns;
use crate::maps::{self, map, map_mut};

/// The live generation and its swap counter.
///
/// # Errors
/// When the control map cannot be read.
pub fn control(ebpf: &Ebpf) -> Result<Control> {
    let ctl: Array<&MapData, Control> = Array::try_from(map(ebpf, "CONTROL")?)?;
    Ok(ctl.get(&0, 0)?)
}

/// The secret key of the DNS name hashes, created (from the kernel's random source) the
/// first time the maps are used. It must stay the same for as long as the maps live.
///
/// # Errors
/// When the key map cannot be read or written, or no randomness is available.
pub fn hash_key(ebpf: &mut Ebpf) -> Result<HashKey> {
    let mut m: Array<&mut MapData, HashKey> = Array::try_from(map_mut(ebpf, "DNS_KEY")?)?;
    let key = m.get(&0, 0)?;
    if key != HashKey::default() {
        return Ok(key);
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom for the DNS hash key")?;
    let mut key = HashKey::default();
    for (k, chunk) in key.k.iter_mut().zip(bytes.chunks_exact(8)) {
        *k = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
    }
    m.set(0, key, 0)?;
    Ok(key)
}

/// Installs `c` (and `dns`) and makes it live, the idle generation's tables sized with
/// `room` (`capacity::Room::sized` for what they hold). Returns the new control word.
///
/// # Errors
/// When a map write fails; the previous policy then stays live.
pub fn install(
    ebpf: &mut Ebpf,
    c: &CompiledFirewall,
    dns: &CompiledDns,
    room: &Room,
) -> Result<Control> {
    let current = control(ebpf)?;
    let idle = (current.active_gen ^ 1) & 1;
    // The idle generation's tables, new ones where the policy outgrew them (or shrank well
    // below them); the live generation's are not touched.
    let need = Room::needed(c, dns);
    let wants = Kind::ALL.map(|kind| (kind, need.get(kind), room.get(kind)));
    let [rules, hosts, prefixes, names, meta, stats]: [MapData; 6] =
        capacity::tables_for(ebpf, idle, &wants)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("a table for every kind"))?;
    let tables = Tables {
        rules,
        hosts,
        prefixes,
        names,
        meta,
        stats,
    };
    // The tables of the idle generation are brought to the new policy entry by entry
    // (`maps::sync_batch`): what they already hold of it is not written again.
    write_dns(ebpf, &tables.names, idle, dns).context("writing DNS names")?;
    write_sets(ebpf, &tables, idle, c).context("writing set members")?;
    write_port_classes(ebpf, idle, c).context("writing port classes")?;
    let epoch = current.generation_counter.wrapping_add(1);
    let rule_stride = write_rules(ebpf, &tables, idle, c).context("writing rules")?;
    let redirect_devs = redirect_ifaces(c);
    add_redirect_devs(ebpf, &redirect_devs).context("writing the redirect interfaces")?;
    add_steer_cpus(ebpf, &c.steer_cpus).context("writing the steer CPUs")?;
    {
        let mut tuples: Array<&mut MapData, Tuple> = Array::try_from(map_mut(ebpf, "FW_TUPLES")?)?;
        for (i, t) in c.tuples.iter().enumerate() {
            let mut t = *t;
            if t.flags & TUPLE_SRC_SET != 0 {
                t.src_set = set_id(idle, t.src_set);
            }
            if t.flags & TUPLE_DST_SET != 0 {
                t.dst_set = set_id(idle, t.dst_set);
            }
            tuples.set(idle * MAX_TUPLES + i as u32, t, 0)?;
        }
    }
    {
        let mut header: Array<&mut MapData, PolicyHeader> =
            Array::try_from(map_mut(ebpf, "FW_HEADER")?)?;
        header.set(
            idle,
            PolicyHeader {
                rule_stride,
                ..c.header
            },
            0,
        )?;
    }
    let next = Control {
        active_gen: idle,
        generation_counter: epoch,
    };
    {
        let mut ctl: Array<&mut MapData, Control> = Array::try_from(map_mut(ebpf, "CONTROL")?)?;
        // The single write that makes the new policy live.
        ctl.set(0, next, 0)?;
    }
    remove_redirect_devs(ebpf, &redirect_devs).context("clearing the redirect interfaces")?;
    Ok(next)
}

/// The idle generation's tables (see `capacity`).
struct Tables {
    rules: MapData,
    hosts: MapData,
    prefixes: MapData,
    names: MapData,
    meta: MapData,
    stats: MapData,
}

/// The program the CPU map runs on a steered packet's new CPU.
pub const STEER_CPU_PROGRAM: &str = "palisade_steer_cpu";

/// Puts the CPUs `steer` rules name into `STEER_CPUS` (each with the largest queue size a rule
/// asks for, and the program that counts arrivals), before the policy goes live. Entries stay:
/// an idle entry costs a sleeping kernel thread, and rewriting one restarts it.
fn add_steer_cpus(ebpf: &mut Ebpf, want: &[(u32, u32)]) -> Result<()> {
    use palisade_common::steer::STEER_MAX_CPU;
    if want.is_empty() {
        return Ok(());
    }
    let prog: &mut aya::programs::Xdp = ebpf
        .program_mut(STEER_CPU_PROGRAM)
        .ok_or_else(|| anyhow::anyhow!("no program {STEER_CPU_PROGRAM}"))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load().context("loading the steer CPU program")?;
    }
    let fd = prog.fd()?.try_clone()?;
    let mut cpus: aya::maps::CpuMap<&mut MapData> =
        aya::maps::CpuMap::try_from(map_mut(ebpf, "STEER_CPUS")?)?;
    for &(cpu, q) in want {
        if cpu >= STEER_MAX_CPU {
            continue;
        }
        let same = cpus
            .get(cpu, 0)
            .is_ok_and(|v| v.queue_size == q && v.prog_id.is_some());
        if !same {
            cpus.set(cpu, q, Some(&fd), 0)
                .with_context(|| format!("CPU {cpu} (queue size {q})"))?;
        }
    }
    Ok(())
}

/// The interfaces the `redirect_to` of `c`'s rules name (direct redirects).
fn redirect_ifaces(c: &CompiledFirewall) -> Vec<u32> {
    use palisade_common::redirect::{ACTION_REDIRECT, RULE_REDIRECT_FIB};
    let mut v: Vec<u32> = c
        .rules
        .iter()
        .filter(|m| m.action == ACTION_REDIRECT && m.flags & RULE_REDIRECT_FIB == 0)
        .map(|m| m.ifindex)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Puts `ifaces` into `REDIRECT_DEVS` before the policy naming them goes live.
fn add_redirect_devs(ebpf: &mut Ebpf, ifaces: &[u32]) -> Result<()> {
    if ifaces.is_empty() {
        return Ok(());
    }
    let mut devs: DevMapHash<&mut MapData> = DevMapHash::try_from(map_mut(ebpf, "REDIRECT_DEVS")?)?;
    for &i in ifaces {
        devs.insert(i, i, None, 0)
            .with_context(|| format!("interface index {i}"))?;
    }
    Ok(())
}

/// Removes from `REDIRECT_DEVS` what the live policy (`keep`) no longer names.
fn remove_redirect_devs(ebpf: &mut Ebpf, keep: &[u32]) -> Result<()> {
    let mut devs: DevMapHash<&mut MapData> = DevMapHash::try_from(map_mut(ebpf, "REDIRECT_DEVS")?)?;
    let stale: Vec<u32> = devs
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep.contains(k))
        .collect();
    for k in stale {
        devs.remove(k)?;
    }
    Ok(())
}

/// The words of one generation of the key filter map `name` (`KeyFilter`'s layout, which
/// the name filter shares), empty, as many as the map was created with room for.
///
/// # Errors
/// When the map cannot be read, or its size is not two powers of two of words and the masks.
fn key_filter(ebpf: &Ebpf, name: &str) -> Result<Vec<u64>> {
    use std::os::fd::AsFd as _;
    let m = maps::data_of(ebpf, name)?;
    let entries = crate::pin::map_info(m.fd().as_fd())
        .with_context(|| format!("reading the size of {name}"))?
        .4;
    let words = entries.saturating_sub(KEY_FILTER_HEADER) / 2;
    anyhow::ensure!(
        words.is_power_of_two() && key_filter_entries(words) == entries,
        "{name} holds {entries} entries, not two generations of a power of two of words"
    );
    Ok(vec![0; words as usize])
}

/// Writes generation `generation`'s `words` into the key filter map `name`, then its mask:
/// until the mask is written, the generation's filter lets every key through.
fn write_key_filter(ebpf: &Ebpf, name: &str, generation: u32, words: &[u64]) -> Result<()> {
    let m = maps::data_of(ebpf, name)?;
    let n = words.len() as u32;
    let g = generation & 1;
    let index: Vec<u32> = (0..n).map(|i| KEY_FILTER_HEADER + g * n + i).collect();
    maps::update_batch(m, &index, words).with_context(|| format!("writing {name}"))?;
    maps::update_batch(m, &[g], &[u64::from(n - 1)])
        .with_context(|| format!("writing {name}'s mask"))
}

fn write_dns(ebpf: &mut Ebpf, table: &MapData, generation: u32, dns: &CompiledDns) -> Result<()> {
    let mut filter = key_filter(ebpf, "DNS_FILTER")?;
    let (keys, values): (Vec<NameKey>, Vec<NameValue>) = dns
        .names
        .iter()
        .map(|(k, v)| {
            let k = NameKey {
                generation: generation as u8,
                ..*k
            };
            NameFilter::insert(&mut filter, &k);
            (k, *v)
        })
        .unzip();
    maps::sync_batch(table, |_: &NameKey| true, &keys, &values).context("DNS_NAMES")?;
    write_key_filter(ebpf, "DNS_FILTER", generation, &filter)?;
    {
        let mut scopes: Array<&mut MapData, ScopeConfig> =
            Array::try_from(map_mut(ebpf, "DNS_SCOPES")?)?;
        for (i, s) in dns.scopes.iter().enumerate() {
            scopes.set(generation * SCOPES + i as u32, s, 0)?;
        }
    }
    let mut global: Array<&mut MapData, DnsGlobal> = Array::try_from(map_mut(ebpf, "DNS_GLOBAL")?)?;
    global.set(generation, dns.global, 0)?;
    Ok(())
}

/// Writes every set's members: single addresses into the exact hash, shorter prefixes into
/// the trie, and what each set holds into `FW_SET_KIND` (every slot of the generation, so a
/// slot never keeps the kind of an earlier policy's set).
fn write_sets(
    ebpf: &mut Ebpf,
    tables: &Tables,
    generation: u32,
    c: &CompiledFirewall,
) -> Result<()> {
    let mut kinds = vec![0u8; MAX_SETS as usize];
    let mut filter = key_filter(ebpf, "FW_SET_FILTER")?;
    // The generation's prefixes (for the trie) and single addresses (for the exact hash),
    // each with its value: 1, or its country index in the country map.
    let (mut prefixes, mut prefix_values) = (Vec::<Key<SetKey>>::new(), Vec::<u8>::new());
    let (mut hosts, mut host_values) = (Vec::<SetKey>::new(), Vec::<u8>::new());
    for (index, members) in c.sets.iter().enumerate() {
        let set = set_id(generation, index as u32);
        let values = c
            .country_map
            .as_ref()
            .filter(|(i, _)| *i == index)
            .map(|(_, v)| v);
        for (at, m) in members.iter().enumerate() {
            let value = values.and_then(|v| v.get(at)).copied().unwrap_or(1);
            let family = family_code(m.family);
            let key = SetKey::new(set, family, m.addr);
            if m.stored_prefix_len() == 128 {
                hosts.push(key);
                host_values.push(value);
                kinds[index] |= SET_HOSTS;
                continue;
            }
            let bits = SET_KEY_PREFIX_BITS + u32::from(m.stored_prefix_len());
            prefixes.push(Key::new(bits, key));
            prefix_values.push(value);
            kinds[index] |= SET_PREFIXES;
            // The filter places a prefix by its granule (/24, /64); a shorter one spans
            // many, and its set walks the trie for every address.
            if u32::from(m.stored_prefix_len()) >= prefix_granule_bits(family) {
                KeyFilter::insert_hash(&mut filter, prefix_granule_hash(set, family, &m.addr));
            } else {
                kinds[index] |= SET_PREFIXES_SHORT;
            }
        }
    }
    // The two maps are brought up to date at the same time, one on another thread: most of
    // the work is the kernel's, per entry, and each map takes its own locks.
    let (trie, exact) = (&tables.prefixes, &tables.hosts);
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            maps::sync_batch(trie, |_: &Key<SetKey>| true, &prefixes, &prefix_values)
                .context("FW_SETS")
        });
        let h = maps::sync_batch(exact, |_: &SetKey| true, &hosts, &host_values)
            .context("FW_SET_HOSTS");
        t.join()
            .map_err(|_| anyhow::anyhow!("FW_SETS: the writing thread panicked"))?
            .and(h)
    })?;
    write_key_filter(ebpf, "FW_SET_FILTER", generation, &filter)?;
    if let Some(k) = c.overload_set.and_then(|i| kinds.get_mut(i)) {
        *k |= SET_OVERLOAD;
    }
    let slots: Vec<u32> = (0..kinds.len() as u32)
        .map(|index| set_kind_slot(set_id(generation, index)))
        .collect();
    maps::update_batch(maps::data_of(ebpf, "FW_SET_KIND")?, &slots, &kinds)
}

fn write_port_classes(ebpf: &mut Ebpf, generation: u32, c: &CompiledFirewall) -> Result<()> {
    for (name, dst) in [("FW_SPORT_CLASS", false), ("FW_DPORT_CLASS", true)] {
        let words = c.port_words(dst);
        let slots: Vec<u32> = (0..words.len() as u32)
            .map(|port| generation * PORT_SPACE + port)
            .collect();
        maps::update_batch(maps::data_of(ebpf, name)?, &slots, &words)?;
    }
    Ok(())
}

/// Writes the rules' actions, zeroes their counters and writes their entries; returns the
/// counter table's slots per CPU (the header's `rule_stride`).
fn write_rules(
    ebpf: &mut Ebpf,
    tables: &Tables,
    generation: u32,
    c: &CompiledFirewall,
) -> Result<u32> {
    let table = &tables.rules;
    let rules = c.rules.len() as u32;
    let slots: Vec<u32> = (0..rules).collect();
    maps::update_batch(&tables.meta, &slots, &c.rules)?;
    // Every CPU's counters of every rule start at zero, in each CPU's run of the table; the
    // default action's too (one value per CPU, as the per-CPU batch layout has it).
    let cpus = capacity::possible_cpus();
    let stride = capacity::room_of(&tables.stats, Kind::RuleStats)?;
    let stat_slots: Vec<u32> = (0..cpus)
        .flat_map(|cpu| (0..rules).map(move |r| rule_stats_slot(stride, cpu, r)))
        .collect();
    maps::update_batch(
        &tables.stats,
        &stat_slots,
        &vec![RuleStats::default(); stat_slots.len()],
    )?;
    const _: () = assert!(size_of::<RuleStats>().is_multiple_of(8));
    maps::update_batch(
        maps::data_of(ebpf, "FW_DEFAULT_STATS")?,
        &[generation & 1],
        &vec![RuleStats::default(); cpus as usize],
    )?;
    let mut filter = key_filter(ebpf, "FW_RULE_FILTER")?;
    let (keys, refs): (Vec<FlowKey>, Vec<RuleRef>) = c
        .entries
        .iter()
        .map(|(key, &rule)| {
            let mut key = *key;
            key.tuple |= generation << 16;
            KeyFilter::insert_hash(&mut filter, key.filter_hash());
            (key, RuleRef { rule, _pad: 0 })
        })
        .collect();
    write_key_filter(ebpf, "FW_RULE_FILTER", generation, &filter)?;
    maps::sync_batch(table, |_: &FlowKey| true, &keys, &refs).context("FW_RULES")?;
    Ok(stride)
}
