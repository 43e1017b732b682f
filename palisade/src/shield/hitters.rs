//! The heavy hitters of the per-source limits as operators see them: `palisade shield
//! hitters` lists the source prefixes that went over `[shield] source_rate` (from the kernel
//! map `SHIELD_HITTERS`), with their drops and, while blocked, the time their block has
//! left; `palisade shield hitters flush` forgets them (and so lifts their blocks).

use std::{fmt::Write as _, net::IpAddr};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use palisade_common::{
    packet::FAMILY_V4,
    shield::{HitterEntry, ShieldConfig, SourceKey},
};
use serde::{Deserialize, Serialize};

use crate::maps::{map, map_mut};

/// The kernel map of heavy hitters.
pub const MAP: &str = "SHIELD_HITTERS";

const NS: u64 = 1_000_000_000;

/// One source prefix that went over `source_rate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hitter {
    /// The prefix, as `ADDRESS/LENGTH`.
    pub prefix: String,
    /// Seconds since it went over (since its block began, when blocking).
    pub since_s: u64,
    /// Seconds since a packet of it was last dropped.
    pub last_s: u64,
    /// Its packets dropped, over the rate or blocked.
    pub drops: u64,
    /// Its count in the window when it went over (windows of 1.07 s).
    pub count: u32,
    /// Seconds its block has left (rounded up); `None` when it is not blocked.
    pub blocked_s: Option<u64>,
}

/// `palisade shield hitters`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HitterList {
    /// `source_rate` of the running policy, if any.
    pub source_rate: Option<u32>,
    /// Its `source_block`, in seconds.
    pub block_s: Option<u32>,
    /// The most drops first.
    pub hitters: Vec<Hitter>,
}

/// `palisade shield hitters flush`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HittersFlushed {
    pub removed: u64,
}

/// The prefix of a key, as `ADDRESS/LENGTH`.
#[must_use]
pub fn prefix_text(k: &SourceKey) -> String {
    let mut b = [0u8; 16];
    for (chunk, w) in b.chunks_exact_mut(4).zip(k.prefix) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    let addr = if k.family == FAMILY_V4 {
        IpAddr::from([b[12], b[13], b[14], b[15]])
    } else {
        IpAddr::from(b)
    };
    format!("{addr}/{}", k.plen)
}

/// The running generation's shield settings.
fn live_config(ebpf: &Ebpf) -> Result<ShieldConfig> {
    let control = crate::firewall::apply::control(ebpf)?;
    let m: Array<&MapData, ShieldConfig> = Array::try_from(map(ebpf, "SHIELD_CONFIG")?)?;
    m.get(&(control.active_gen & 1), 0)
        .context("reading the shield settings")
}

/// The heavy hitters at `now_ns` (the kernel's coarse monotonic clock), the most drops
/// first; blocks are judged by the running policy's `source_block`, as the kernel does.
///
/// # Errors
/// When the maps cannot be read.
pub fn list(ebpf: &Ebpf, now_ns: u64) -> Result<Vec<Hitter>> {
    let block_ns = live_config(ebpf)?.block_ns;
    let m: HashMap<&MapData, SourceKey, HitterEntry> = HashMap::try_from(map(ebpf, MAP)?)?;
    let mut out = Vec::new();
    for item in m.iter() {
        // An entry evicted while the walk runs ends that key's read; the rest go on.
        let Ok((k, e)) = item else { continue };
        let age = now_ns.saturating_sub(e.since_ns);
        out.push(Hitter {
            prefix: prefix_text(&k),
            since_s: age / NS,
            last_s: now_ns.saturating_sub(e.last_ns) / NS,
            drops: e.drops,
            count: e.count,
            blocked_s: (block_ns != 0 && age < block_ns).then(|| (block_ns - age).div_ceil(NS)),
        });
    }
    out.sort_by(|a, b| b.drops.cmp(&a.drops).then(a.prefix.cmp(&b.prefix)));
    Ok(out)
}

/// Forgets every heavy hitter (their blocks end). Returns how many were removed.
///
/// # Errors
/// When the map cannot be read or written.
pub fn flush(ebpf: &mut Ebpf) -> Result<HittersFlushed> {
    let mut m: HashMap<&mut MapData, SourceKey, HitterEntry> =
        HashMap::try_from(map_mut(ebpf, MAP)?)?;
    let keys: Vec<SourceKey> = m.keys().filter_map(Result::ok).collect();
    let mut removed = 0;
    for k in keys {
        // Already evicted by the kernel: nothing to remove.
        if m.remove(&k).is_ok() {
            removed += 1;
        }
    }
    Ok(HittersFlushed { removed })
}

/// The list as a table.
#[must_use]
pub fn print_list(l: &HitterList) -> String {
    let mut out = String::new();
    match (l.source_rate, l.block_s) {
        (None, _) => {
            let _ = writeln!(out, "the running policy sets no source_rate");
        }
        (Some(r), None) => {
            let _ = writeln!(out, "source_rate {r}/s, heavy hitters limited, not blocked");
        }
        (Some(r), Some(b)) => {
            let _ = writeln!(out, "source_rate {r}/s, heavy hitters blocked for {b}s");
        }
    }
    let w = l
        .hitters
        .iter()
        .map(|h| h.prefix.len())
        .max()
        .unwrap_or(0)
        .max("PREFIX".len());
    let _ = writeln!(
        out,
        "{:<w$}  {:>10}  {:>7}  {:>7}  {:>7}  BLOCKED",
        "PREFIX", "DROPS", "COUNT", "SINCE", "LAST"
    );
    for h in &l.hitters {
        let _ = writeln!(
            out,
            "{:<w$}  {:>10}  {:>7}  {:>7}  {:>7}  {}",
            h.prefix,
            h.drops,
            h.count,
            format!("{}s", h.since_s),
            format!("{}s", h.last_s),
            h.blocked_s
                .map_or_else(|| "-".to_owned(), |s| format!("{s}s left")),
        );
    }
    let n = l.hitters.len();
    let _ = writeln!(out, "{n} heavy hitter{}", if n == 1 { "" } else { "s" });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_common::shield::prefix_words;

    #[test]
    fn prefixes_print_as_cidr_blocks() {
        let v4 = [0, 0, 0, u32::from_ne_bytes([203, 0, 113, 77])];
        let k = SourceKey {
            family: FAMILY_V4,
            plen: 24,
            _pad: [0; 2],
            prefix: prefix_words(FAMILY_V4, v4, 24),
        };
        assert_eq!(prefix_text(&k), "203.0.113.0/24");
        let a: std::net::Ipv6Addr = "2001:db8:7:1:dead:beef:1:2".parse().unwrap();
        let o = a.octets();
        let words = [0, 4, 8, 12].map(|i| u32::from_ne_bytes(o[i..i + 4].try_into().unwrap()));
        let k6 = SourceKey {
            family: 6,
            plen: 56,
            _pad: [0; 2],
            prefix: prefix_words(6, words, 56),
        };
        assert_eq!(prefix_text(&k6), "2001:db8:7::/56");
    }

    #[test]
    fn the_list_shows_drops_and_blocks() {
        let l = HitterList {
            source_rate: Some(100),
            block_s: Some(60),
            hitters: vec![Hitter {
                prefix: "203.0.113.0/24".into(),
                since_s: 5,
                last_s: 0,
                drops: 123_456,
                count: 108,
                blocked_s: Some(55),
            }],
        };
        let text = print_list(&l);
        assert!(
            text.starts_with("source_rate 100/s, heavy hitters blocked for 60s\n"),
            "{text}"
        );
        assert!(
            text.contains("203.0.113.0/24      123456      108       5s       0s  55s left\n"),
            "{text}"
        );
        assert!(text.ends_with("1 heavy hitter\n"), "{text}");
    }
}
