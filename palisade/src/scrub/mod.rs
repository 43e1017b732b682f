//! Scrub (`[scrub]`, pf's semantics): minimum TTL / hop limit, MSS clamping of SYNs and
//! SYN-ACKs, don't-fragment clearing and random IPv4 identifications, done by TC programs on
//! the guarded interfaces. The section's model, what the datapath reads of it, and its
//! counters. `docs/design/scrub.md` explains the design.

use std::ops::RangeInclusive;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use palisade_common::scrub::{
    SC_COUNT, SC_DIRECTIONS, SC_NAMES, SC_PER_DIRECTION, SCRUB_CLEAR_DF, SCRUB_EGRESS,
    SCRUB_INGRESS, SCRUB_RANDOM_ID, ScrubConfig,
};

use crate::{maps::map_mut, stats::Named};

/// The TC program that scrubs what arrives on the guarded interfaces.
pub const INGRESS: &str = "palisade_scrub_ingress";
/// The TC program that scrubs what leaves through them.
pub const EGRESS: &str = "palisade_scrub_egress";

/// `min_ttl`: any TTL or hop limit but 0.
pub const MIN_TTL_RANGE: RangeInclusive<u8> = 1..=255;
/// `max_mss_v4`: from the smallest MSS every IPv4 host must take (RFC 879).
pub const MSS_V4_RANGE: RangeInclusive<u16> = 536..=65535;
/// `max_mss_v6`: from what the IPv6 minimum MTU carries (1280 less 60 bytes of headers).
pub const MSS_V6_RANGE: RangeInclusive<u16> = 1220..=65535;

/// The `[scrub]` section. Every rewrite is off unless named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scrub {
    /// TTLs and hop limits under this are raised to it.
    pub min_ttl: Option<u8>,
    /// The largest MSS a SYN or SYN-ACK may announce, by family.
    pub max_mss_v4: Option<u16>,
    pub max_mss_v6: Option<u16>,
    /// Clear the IPv4 don't-fragment bit.
    pub clear_df: bool,
    /// Random identifications for unfragmented IPv4 packets.
    pub random_id: bool,
    /// Which directions are scrubbed.
    pub ingress: bool,
    pub egress: bool,
    /// Line of the section header (0 when absent).
    pub line: usize,
}

impl Default for Scrub {
    /// No `[scrub]` section: nothing rewritten.
    fn default() -> Self {
        Self {
            min_ttl: None,
            max_mss_v4: None,
            max_mss_v6: None,
            clear_df: false,
            random_id: false,
            ingress: true,
            egress: true,
            line: 0,
        }
    }
}

impl Scrub {
    /// Whether any rewrite is on in any direction.
    #[must_use]
    pub fn any(&self) -> bool {
        self.datapath().scrubs(SCRUB_INGRESS) || self.datapath().scrubs(SCRUB_EGRESS)
    }

    /// What the datapath reads for this section.
    #[must_use]
    pub fn datapath(&self) -> ScrubConfig {
        let mut flags = 0;
        for (on, bit) in [
            (self.ingress, SCRUB_INGRESS),
            (self.egress, SCRUB_EGRESS),
            (self.clear_df, SCRUB_CLEAR_DF),
            (self.random_id, SCRUB_RANDOM_ID),
        ] {
            if on {
                flags |= bit;
            }
        }
        ScrubConfig {
            flags,
            max_mss_v4: self.max_mss_v4.unwrap_or(0),
            max_mss_v6: self.max_mss_v6.unwrap_or(0),
            min_ttl: self.min_ttl.unwrap_or(0),
            _pad: [0; 7],
        }
    }
}

/// Writes `config` into the scrub slot of `generation` (before that generation goes live).
///
/// # Errors
/// When the map cannot be written.
pub fn write_config(ebpf: &mut Ebpf, generation: u32, config: &ScrubConfig) -> Result<()> {
    let mut m: Array<&mut MapData, ScrubConfig> = Array::try_from(map_mut(ebpf, "SCRUB_CONFIG")?)?;
    m.set(generation, config, 0)
        .context("writing the scrub settings")?;
    Ok(())
}

/// The scrub counters summed over CPUs, indexed by `direction block + SC_*`.
///
/// # Errors
/// When the map cannot be read.
pub fn counters(ebpf: &Ebpf) -> Result<[u64; SC_COUNT as usize]> {
    crate::stats::summed(ebpf, "SCRUB_STATS")
}

/// The counters by name, `<direction>_<event>` (`ingress_mss_clamped_v4`, ...); empty when
/// they cannot be read (an object without scrub).
#[must_use]
pub fn named_counters(ebpf: &Ebpf) -> Vec<Named> {
    let Ok(c) = counters(ebpf) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(c.len());
    for (d, dir) in SC_DIRECTIONS.iter().enumerate() {
        for (i, name) in SC_NAMES.iter().enumerate() {
            out.push(Named {
                name: format!("{dir}_{name}"),
                value: c[d * SC_PER_DIRECTION as usize + i],
            });
        }
    }
    out
}

/// Splits a counter name of [`named_counters`] into direction and event.
#[must_use]
pub fn split_name(name: &str) -> (&str, &str) {
    SC_DIRECTIONS
        .iter()
        .find_map(|d| {
            name.strip_prefix(d)
                .and_then(|r| r.strip_prefix('_'))
                .map(|r| (*d, r))
        })
        .unwrap_or(("", name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_datapath_gets_every_knob() {
        let s = Scrub {
            min_ttl: Some(64),
            max_mss_v4: Some(1400),
            max_mss_v6: Some(1380),
            clear_df: true,
            random_id: false,
            ingress: false,
            egress: true,
            line: 3,
        };
        let c = s.datapath();
        assert_eq!(c.flags, SCRUB_EGRESS | SCRUB_CLEAR_DF);
        assert_eq!((c.min_ttl, c.max_mss_v4, c.max_mss_v6), (64, 1400, 1380));
        assert!(s.any());
        assert!(!Scrub::default().any());
        assert!(
            !Scrub {
                ingress: false,
                egress: false,
                ..s
            }
            .any()
        );
    }

    #[test]
    fn counter_names_split_back() {
        assert_eq!(split_name("egress_df_cleared"), ("egress", "df_cleared"));
        assert_eq!(
            split_name("ingress_mss_clamped_v6"),
            ("ingress", "mss_clamped_v6")
        );
    }
}
