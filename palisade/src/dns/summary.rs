//! DNS summaries: the queries the kernel counted instead of reporting one by one (over the
//! event budget, `[dns] event_rate`), collected from its aggregate maps and turned into
//! `dns_summary` events, one per (scope, verdict, reason, name, client) and interval.
//!
//! The kernel counts a (name, client) key in its slot of `DNS_EVENT_COUNTS` (per CPU, one bank
//! per interval, found by the key's fingerprint) and puts the key itself in `DNS_EVENT_CLIENTS`
//! with a count of 0; a key whose slot another key holds is counted in `DNS_EVENT_CLIENTS`.
//! A summary's count is the two added up.
//!
//! The kernel tags every count with the summary interval (`DNS_EVENT_EPOCH`). Collecting
//! advances the interval and takes the intervals before the one just closed, so no program
//! can still be adding to what is read; a summary therefore arrives one to two intervals after
//! its queries. [`Collector::collect_all`] takes everything (the daemon's last drain, the
//! tests and the benchmark, when no query is in flight).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, OwnedFd},
};

use anyhow::{Context, Result, bail};
use aya::Ebpf;
use palisade_common::{
    dns::maps::SCOPE_EGRESS,
    event::{DnsAggClient, DnsAggCount, DnsAggName, DnsAggNameInfo},
    packet::FAMILY_V4,
    reason,
};
use serde::Serialize;

use crate::{
    events::{qtype_name, wire_name_to_text},
    pin,
};

/// Entries read per batch syscall.
const BATCH: u32 = 4096;

/// Queries of one name from one client counted over the event budget in one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Always `dns_summary`.
    pub kind: &'static str,
    /// `bpf_ktime_get_ns` of the name's first aggregated query in the interval.
    pub timestamp_ns: u64,
    pub scope: &'static str,
    pub verdict: &'static str,
    pub reason: &'static str,
    /// The question name, as in `dns` events.
    pub name: String,
    /// Query type of the name's first aggregated query.
    pub qtype: String,
    pub client: Option<IpAddr>,
    /// Aggregated queries of this name from this client.
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<u16>,
    pub generation: u32,
    /// The name's DGA score under `[dns.dga]` (`0..=999`), as in `dns` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dga_score: Option<u16>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dns_summary {} {} reason={} {} {}",
            self.scope, self.verdict, self.reason, self.name, self.qtype
        )?;
        if let Some(c) = self.client {
            write!(f, " client={c}")?;
        }
        write!(f, " count={}", self.count)
    }
}

/// What one collection found.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub summaries: Vec<Summary>,
    /// Aggregated queries collected (the sum of the summaries' counts).
    pub queries: u64,
    /// Queries counted in a `DNS_EVENT_COUNTS` slot whose key was pushed out of the full
    /// `DNS_EVENT_CLIENTS` map: their name and client are unknown, so no summary has them.
    pub unattributed: u64,
}

/// Reads and clears the kernel's aggregate maps.
#[derive(Debug)]
pub struct Collector {
    names: OwnedFd,
    clients: OwnedFd,
    counts: OwnedFd,
    epoch_map: OwnedFd,
    /// The interval the kernel is counting into.
    epoch: u32,
    /// Possible CPUs: the per-CPU values of the counts.
    cpus: usize,
}

fn map_fd(ebpf: &Ebpf, name: &str) -> Result<OwnedFd> {
    let m = ebpf
        .map(name)
        .with_context(|| format!("the kernel object has no {name} map"))?;
    let fd = match m {
        aya::maps::Map::HashMap(m)
        | aya::maps::Map::LruHashMap(m)
        | aya::maps::Map::PerCpuLruHashMap(m)
        | aya::maps::Map::Array(m)
        | aya::maps::Map::PerCpuArray(m) => m.fd().as_fd().try_clone_to_owned()?,
        _ => bail!("{name} is not a hash map or an array"),
    };
    Ok(fd)
}

impl Collector {
    /// Opens the aggregate maps of `ebpf`.
    ///
    /// # Errors
    /// When the object lacks them.
    pub fn open(ebpf: &Ebpf) -> Result<Self> {
        let epoch_map = map_fd(ebpf, "DNS_EVENT_EPOCH")?;
        let mut v = [0u8; 4];
        pin::map_lookup(epoch_map.as_fd(), &0u32.to_ne_bytes(), &mut v)?;
        Ok(Self {
            names: map_fd(ebpf, "DNS_EVENT_NAMES")?,
            clients: map_fd(ebpf, "DNS_EVENT_CLIENTS")?,
            counts: map_fd(ebpf, "DNS_EVENT_COUNTS")?,
            epoch_map,
            epoch: u32::from_ne_bytes(v),
            cpus: aya::util::nr_cpus()
                .map_err(|(_, e)| e)
                .context("counting possible CPUs")?,
        })
    }

    /// Starts a new interval and collects the ones before the interval just closed.
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn collect(&mut self) -> io::Result<Collected> {
        let closed = self.epoch;
        self.advance()?;
        self.take(|e| e != closed && e != self.epoch)
    }

    /// Starts a new interval and collects every earlier one.
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn collect_all(&mut self) -> io::Result<Collected> {
        self.advance()?;
        self.take(|e| e != self.epoch)
    }

    fn advance(&mut self) -> io::Result<()> {
        let next = self.epoch.wrapping_add(1);
        pin::map_update(
            self.epoch_map.as_fd(),
            &0u32.to_ne_bytes(),
            &next.to_ne_bytes(),
            0,
        )?;
        self.epoch = next;
        Ok(())
    }

    fn take(&self, wanted: impl Fn(u32) -> bool) -> io::Result<Collected> {
        let name_key = size_of::<DnsAggName>();
        let (keys, values) = pin::map_entries_batch(
            self.names.as_fd(),
            name_key,
            size_of::<DnsAggNameInfo>(),
            BATCH,
        )?;
        let mut names: HashMap<DnsAggName, DnsAggNameInfo> = HashMap::new();
        let mut done = Vec::new();
        for (k, v) in keys
            .chunks_exact(name_key)
            .zip(values.chunks_exact(size_of::<DnsAggNameInfo>()))
        {
            // SAFETY: both are plain old data and the chunks have their sizes.
            let (k, v): (DnsAggName, DnsAggNameInfo) = unsafe {
                (
                    std::ptr::read_unaligned(k.as_ptr().cast()),
                    std::ptr::read_unaligned(v.as_ptr().cast()),
                )
            };
            if wanted(k.epoch) {
                done.extend_from_slice(keys_bytes(&k));
                names.insert(k, v);
            }
        }
        let mut slots = self.take_slots(&wanted)?;
        let client_key = size_of::<DnsAggClient>();
        let value_size = 8 * self.cpus;
        let (keys, values) =
            pin::map_entries_batch(self.clients.as_fd(), client_key, value_size, BATCH)?;
        let mut out = Collected::default();
        let mut gone = Vec::new();
        let mut texts: HashMap<DnsAggName, String> = HashMap::new();
        for (k, v) in keys
            .chunks_exact(client_key)
            .zip(values.chunks_exact(value_size))
        {
            // SAFETY: plain old data, sizes checked by the chunks.
            let k: DnsAggClient = unsafe { std::ptr::read_unaligned(k.as_ptr().cast()) };
            if !wanted(k.name.epoch) {
                continue;
            }
            gone.extend_from_slice(keys_bytes(&k));
            // The key's count: what each CPU counted in its slot, and in this map when the
            // slot was another key's (the key was put here with 0 when it took its slot).
            let count: u64 = v
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
                .sum::<u64>()
                + slots.remove(&(k.fingerprint(), k.name.epoch)).unwrap_or(0);
            if count == 0 {
                continue;
            }
            out.queries += count;
            let info = names.get(&k.name);
            let name = texts
                .entry(k.name)
                .or_insert_with(|| match info {
                    Some(i) => wire_name_to_text(&i.name[..usize::from(k.name.name_len).min(256)]),
                    // The name's entry was pushed out of its full map: the name is unknown
                    // (its first query was reported in full).
                    None => "?".to_string(),
                })
                .clone();
            out.summaries.push(summary(&k, count, name, info));
        }
        out.unattributed = slots.values().sum();
        pin::map_delete_batch(self.clients.as_fd(), &gone, client_key)?;
        pin::map_delete_batch(self.names.as_fd(), &done, name_key)?;
        Ok(out)
    }
}

impl Collector {
    /// The counts of the wanted intervals in `DNS_EVENT_COUNTS`, summed over the CPUs per
    /// (fingerprint, interval); their slots are cleared. A wanted interval's bank is one
    /// the programs no longer count into (see [`DNS_AGG_COUNT_BANKS`]), so clearing it
    /// races with no program.
    ///
    /// [`DNS_AGG_COUNT_BANKS`]: palisade_common::event::DNS_AGG_COUNT_BANKS
    fn take_slots(&self, wanted: &impl Fn(u32) -> bool) -> io::Result<HashMap<(u64, u32), u64>> {
        const SLOT: usize = size_of::<DnsAggCount>();
        let value_size = SLOT * self.cpus;
        let mut counts: HashMap<(u64, u32), u64> = HashMap::new();
        let (mut keys, mut cleared) = (Vec::new(), Vec::new());
        pin::map_chunks_batch(self.counts.as_fd(), 4, value_size, BATCH, |ks, vs| {
            for (k, v) in ks.chunks_exact(4).zip(vs.chunks_exact(value_size)) {
                let mut taken = false;
                let at = cleared.len();
                cleared.extend_from_slice(v);
                for (cpu, c) in v.chunks_exact(SLOT).enumerate() {
                    // SAFETY: plain old data, the chunk has its size.
                    let c: DnsAggCount = unsafe { std::ptr::read_unaligned(c.as_ptr().cast()) };
                    if c.count != 0 && wanted(c.epoch) {
                        *counts.entry((c.fingerprint, c.epoch)).or_default() += u64::from(c.count);
                        cleared[at + cpu * SLOT..at + (cpu + 1) * SLOT].fill(0);
                        taken = true;
                    }
                }
                if taken {
                    keys.extend_from_slice(k);
                } else {
                    cleared.truncate(at);
                }
            }
        })?;
        if !keys.is_empty() {
            pin::map_update_batch(self.counts.as_fd(), &keys, &cleared, keys.len() / 4)?;
        }
        Ok(counts)
    }
}

fn keys_bytes<T: Copy>(k: &T) -> &[u8] {
    // SAFETY: `T` is a plain-old-data map key; its bytes are what the kernel hashed.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(k).cast::<u8>(), size_of::<T>()) }
}

fn summary(k: &DnsAggClient, count: u64, name: String, info: Option<&DnsAggNameInfo>) -> Summary {
    use palisade_common::event::dns_verdict_name;
    let a = k.client;
    Summary {
        kind: "dns_summary",
        timestamp_ns: info.map_or(0, |i| i.first_ns),
        scope: if k.name.scope == SCOPE_EGRESS {
            "egress"
        } else {
            "ingress"
        },
        verdict: dns_verdict_name(k.name.verdict),
        reason: reason::name(k.name.reason),
        name,
        qtype: info.map_or_else(|| "?".to_string(), |i| qtype_name(i.qtype)),
        client: match k.family {
            FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))),
            6 => Some(IpAddr::V6(Ipv6Addr::from(a))),
            _ => None,
        },
        count,
        list: info.and_then(|i| (i.list != u16::MAX).then_some(i.list)),
        generation: info.map_or(0, |i| i.generation),
        dga_score: None,
    }
}
