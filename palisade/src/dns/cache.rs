//! The DNS response cache (`[dns.cache]`), userspace side: its settings as the kernel reads
//! them, and its counters. See `palisade_common::dns::cache` and `docs/design/dns.md`.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use palisade_common::{
    dns::cache::{
        CACHE_STAT_NAMES, CACHE_STATS, CSTAT_INSERTED_NEW, CSTAT_REMOVED, CacheConfig, CacheEntry,
        CacheKey, DEFAULT_CAPACITY,
    },
    packet::{FAMILY_V4, FAMILY_V6},
};

use crate::{
    maps::{map, map_mut},
    stats::Named,
};

/// The fill program (TC egress, on the interfaces DNS ingress guards).
pub const FILL: &str = "palisade_dns_cache_fill";
/// The map of cached answers.
pub const MAP: &str = "DNS_CACHE";

/// Default `min_ttl` (seconds): TTLs are kept as they are.
pub const DEFAULT_MIN_TTL: u32 = 0;
/// Default `max_ttl` (seconds): a day.
pub const DEFAULT_MAX_TTL: u32 = 86_400;

/// `[dns.cache]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsCache {
    pub enabled: bool,
    /// The resolver Palisade sits in front of, on this host: its answers leave from here.
    pub resolver: SocketAddr,
    /// Entries, at most `palisade_common::dns::cache::MAX_CAPACITY`.
    pub capacity: u32,
    /// TTLs below are raised to this (seconds).
    pub min_ttl: u32,
    /// TTLs above are lowered to this (seconds).
    pub max_ttl: u32,
}

impl DnsCache {
    /// The cache in front of `resolver`, with the default settings.
    #[must_use]
    pub fn new(resolver: SocketAddr) -> Self {
        Self {
            enabled: true,
            resolver,
            capacity: DEFAULT_CAPACITY,
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
        }
    }

    /// The settings as the kernel reads them.
    #[must_use]
    pub fn datapath(&self) -> CacheConfig {
        // IPv4 v4-mapped, as the kernel's packet parse holds addresses.
        let (resolver, family) = match self.resolver.ip() {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), FAMILY_V4),
            IpAddr::V6(a) => (a.octets(), FAMILY_V6),
        };
        CacheConfig {
            resolver,
            port: self.resolver.port(),
            enabled: u8::from(self.enabled),
            family,
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
            _pad: 0,
        }
    }
}

/// Writes the settings of generation `generation` (all zeros, the cache off, for `None`).
///
/// # Errors
/// When the map cannot be written.
pub fn write_config(ebpf: &mut Ebpf, generation: u32, cache: Option<&DnsCache>) -> Result<()> {
    let cfg = cache.map(DnsCache::datapath).unwrap_or_default();
    let mut m: Array<&mut MapData, CacheConfig> = Array::try_from(map_mut(ebpf, "DNS_CACHE_CFG")?)?;
    m.set(generation, cfg, 0)
        .context("writing the DNS cache settings")?;
    Ok(())
}

/// Entries of the map of cached answers when the cache is off: it is never written then,
/// and a reload that turns the cache on works with this room until the daemon restarts.
pub const IDLE_CAPACITY: u32 = 64;

/// The capacity `cache` sizes the map of cached answers with ([`IDLE_CAPACITY`] without
/// `[dns.cache]` or with it disabled).
#[must_use]
pub fn capacity(cache: Option<&DnsCache>) -> u32 {
    match cache {
        Some(c) if c.enabled => c.capacity,
        _ => IDLE_CAPACITY,
    }
}

/// Removes the pin of the map of cached answers when its capacity differs from `capacity`,
/// so that the load creates it anew at that size (cached answers are only a copy of the
/// resolver's: the next queries refill it). Returns a note when it did.
///
/// # Errors
/// When the pin cannot be read or removed.
pub fn drop_resized(layout: &crate::pin::Layout, capacity: u32) -> Result<Option<String>> {
    let Some(max) = crate::pin::drop_if_resized(&layout.map(MAP), capacity)? else {
        return Ok(None);
    };
    Ok(Some(format!(
        "the DNS response cache is created anew for [dns.cache] capacity = {capacity} (it held up to {max} entries)"
    )))
}

/// The counters summed over CPUs, by `CSTAT_*` index.
///
/// # Errors
/// When the map cannot be read.
pub fn counters(ebpf: &Ebpf) -> Result<[u64; CACHE_STATS as usize]> {
    crate::stats::summed(ebpf, "DNS_CACHE_STATS")
}

/// Entries in the cache now.
///
/// # Errors
/// When the map cannot be read.
pub fn entries(ebpf: &Ebpf) -> Result<u64> {
    let m: HashMap<&MapData, CacheKey, CacheEntry> = HashMap::try_from(map(ebpf, MAP)?)?;
    Ok(m.keys().filter(Result::is_ok).count() as u64)
}

/// Entries the cache dropped to make room: every new key stored and not removed on expiry
/// that is no longer there. (A key evicted and stored again counts twice as new, once as
/// evicted: the identity holds.)
#[must_use]
pub fn evictions(c: &[u64; CACHE_STATS as usize], entries: u64) -> u64 {
    c[CSTAT_INSERTED_NEW as usize]
        .saturating_sub(c[CSTAT_REMOVED as usize])
        .saturating_sub(entries)
}

/// The counters by name, then `entries` and `evictions`; empty when they cannot be read.
#[must_use]
pub fn named_counters(ebpf: &Ebpf) -> Vec<Named> {
    let (Ok(c), Ok(n)) = (counters(ebpf), entries(ebpf)) else {
        return Vec::new();
    };
    let mut out: Vec<Named> = CACHE_STAT_NAMES
        .iter()
        .zip(c.iter())
        .map(|(name, &value)| Named {
            name: (*name).to_string(),
            value,
        })
        .collect();
    out.push(Named {
        name: "entries".into(),
        value: n,
    });
    out.push(Named {
        name: "evictions".into(),
        value: evictions(&c, n),
    });
    out
}
