//! DDoS shields (`[shield]`): SYN cookies from XDP, invalid-TCP and amplification drops,
//! per-source limits by prefix with a sketch and blocked heavy hitters, ICMP echo limits.
//! The section's model, what the datapath reads of it, and the host settings the SYN
//! shield relies on. `docs/design/shield.md` explains the design.

pub mod hitters;

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use palisade_common::shield::{
    PORT_SLOTS, PORT_WORDS, PortState, SH_COUNT, SHIELD_AMPLIFICATION, SHIELD_SOURCES, SHIELD_SYN,
    SHIELD_SYN_FORCE, SHIELD_TCP_INVALID, SKETCH_CELLS, ShieldConfig, set_port_bit, window_limit,
};

use serde::{Deserialize, Serialize};

use crate::{maps::map_mut, policy::model::PortRange};

/// When SYN cookies answer SYNs to `syn_ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynCookies {
    /// When a port's SYN rate goes over `syn_rate`, for `syn_hold` seconds.
    Auto,
    /// Always.
    On,
    /// Never (the ports are listed but the shield is off).
    Off,
}

/// Reflector ports whose unsolicited datagrams the amplification shield drops by default:
/// chargen, DNS, NTP, SNMP, CLDAP, SSDP, WS-Discovery, memcached.
pub const DEFAULT_AMPLIFICATION_PORTS: [u16; 8] = [19, 53, 123, 161, 389, 1900, 3702, 11211];

/// The `[shield]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shield {
    /// Destination ports whose SYNs cookies may answer.
    pub syn_ports: Vec<PortRange>,
    pub syn_cookies: SynCookies,
    /// SYNs per second to one port (all sources together) that engage cookies.
    pub syn_rate: u32,
    /// Seconds cookies stay engaged after the rate last went over `syn_rate`.
    pub syn_hold_s: u32,
    /// The MSS the cookie SYN-ACK offers, by family.
    pub mss_v4: u16,
    pub mss_v6: u16,
    /// The window scale the cookie SYN-ACK offers; `None` takes the host's (what the kernel
    /// will pick for the socket: see [`host_wscale`]).
    pub wscale: Option<u8>,
    /// Drop TCP segments of no tracked flow (and outside the windows of one) before the
    /// rules: ACK, RST and FIN floods.
    pub tcp_invalid_drop: bool,
    /// Drop datagrams from `amplification_ports` that answer nothing this host sent.
    pub amplification: bool,
    pub amplification_ports: Vec<PortRange>,
    /// New flows per second one source prefix may open (`None`: no limit).
    pub source_rate: Option<u32>,
    /// The prefix lengths sources are aggregated by.
    pub source_prefix_v4: u8,
    pub source_prefix_v6: u8,
    /// Seconds a prefix over `source_rate` stays blocked (`None`: only limited).
    pub source_block_s: Option<u32>,
    /// ICMP echo requests per second per source prefix, and from all sources together.
    pub icmp_echo_rate: Option<u32>,
    pub icmp_echo_global_rate: Option<u32>,
    /// The largest ICMP echo payload let through, in bytes.
    pub icmp_echo_max_payload: Option<u32>,
    /// 1-based line of the section (0 when absent or built in code).
    pub line: usize,
}

/// Bounds of `syn_rate` (SYNs per second to one port).
pub const SYN_RATE_RANGE: std::ops::RangeInclusive<u32> = 1..=100_000_000;
/// Bounds of `syn_hold` (seconds).
pub const SYN_HOLD_RANGE_S: std::ops::RangeInclusive<u32> = 1..=86_400;
/// Bounds of `mss_v4`: the smallest MSS IPv4 must take (RFC 879) to a 9000-byte jumbo frame's.
pub const MSS_V4_RANGE: std::ops::RangeInclusive<u16> = 536..=8960;
/// Bounds of `mss_v6`: IPv6's minimum MTU (1280) less headers, to a jumbo frame's.
pub const MSS_V6_RANGE: std::ops::RangeInclusive<u16> = 1220..=8940;
/// Bounds of `source_rate`, `icmp_echo_rate` and `icmp_echo_global_rate` (per second).
pub const SOURCE_RATE_RANGE: std::ops::RangeInclusive<u32> = 1..=100_000_000;
/// Bounds of `source_prefix_v4` and `source_prefix_v6`.
pub const PREFIX_V4_RANGE: std::ops::RangeInclusive<u8> = 8..=32;
pub const PREFIX_V6_RANGE: std::ops::RangeInclusive<u8> = 16..=128;
/// Bounds of `source_block` (seconds).
pub const SOURCE_BLOCK_RANGE_S: std::ops::RangeInclusive<u32> = 1..=86_400;
/// Bounds of `icmp_echo_max_payload`: an IPv4 datagram's largest ICMP payload.
pub const ECHO_PAYLOAD_RANGE: std::ops::RangeInclusive<u32> = 0..=65_507;

/// Seconds between the SYNs that go on to the stack while cookies are engaged (the kernel
/// takes cookies back for two minutes after it last sent one).
pub const STACK_EVERY_S: u64 = 30;

impl Default for Shield {
    /// No `[shield]` section: every shield off.
    fn default() -> Self {
        Self {
            syn_ports: Vec::new(),
            syn_cookies: SynCookies::Auto,
            syn_rate: 1000,
            syn_hold_s: 10,
            mss_v4: 1460,
            mss_v6: 1440,
            wscale: None,
            tcp_invalid_drop: false,
            amplification: false,
            amplification_ports: DEFAULT_AMPLIFICATION_PORTS
                .iter()
                .map(|&p| PortRange { lo: p, hi: p })
                .collect(),
            source_rate: None,
            source_prefix_v4: 32,
            source_prefix_v6: 64,
            source_block_s: None,
            icmp_echo_rate: None,
            icmp_echo_global_rate: None,
            icmp_echo_max_payload: None,
            line: 0,
        }
    }
}

impl Shield {
    /// Whether SYN cookies may answer some SYNs.
    #[must_use]
    pub fn syn_on(&self) -> bool {
        !self.syn_ports.is_empty() && self.syn_cookies != SynCookies::Off
    }

    /// Whether any shield is on (each needs connection tracking).
    #[must_use]
    pub fn any(&self) -> bool {
        self.syn_on() || self.tcp_invalid_drop || self.amplification || self.sources_on()
    }

    /// Whether sources are counted: a per-source flow limit or any echo limit.
    #[must_use]
    pub fn sources_on(&self) -> bool {
        self.source_rate.is_some()
            || self.icmp_echo_rate.is_some()
            || self.icmp_echo_global_rate.is_some()
            || self.icmp_echo_max_payload.is_some()
    }

    /// What the datapath reads for this section; `seed` keys the sketch's hashes (random, and
    /// the same across reloads and restarts, so the counts carry over and an outsider cannot
    /// aim addresses at one counter); `host_wscale` gives the window scale when SYN cookies
    /// are on and the section names none (only then are the host's sysctls read).
    #[must_use]
    pub fn datapath(&self, seed: u32, host_wscale: impl FnOnce() -> u8) -> ShieldConfig {
        let mut c = ShieldConfig::off();
        if self.syn_on() {
            c.flags |= SHIELD_SYN;
            if self.syn_cookies == SynCookies::On {
                c.flags |= SHIELD_SYN_FORCE;
            }
            fill(&mut c.syn_ports, &self.syn_ports);
        }
        if self.tcp_invalid_drop {
            c.flags |= SHIELD_TCP_INVALID;
        }
        if self.amplification {
            c.flags |= SHIELD_AMPLIFICATION;
            fill(&mut c.amp_ports, &self.amplification_ports);
        }
        if self.sources_on() {
            c.flags |= SHIELD_SOURCES;
            c.source_limit = self.source_rate.map_or(0, window_limit);
            c.echo_source_limit = self.icmp_echo_rate.map_or(0, window_limit);
            c.echo_global_limit = self.icmp_echo_global_rate.map_or(0, window_limit);
            c.echo_payload_over = self.icmp_echo_max_payload.map_or(0, |m| m + 1);
            c.block_ns = self
                .source_block_s
                .map_or(0, |s| u64::from(s) * 1_000_000_000);
            c.prefix_v4 = self.source_prefix_v4;
            c.prefix_v6 = self.source_prefix_v6;
            c.seed = seed;
        }
        c.syn_rate = self.syn_rate;
        c.hold_ns = u64::from(self.syn_hold_s) * 1_000_000_000;
        c.stack_every_ns = STACK_EVERY_S * 1_000_000_000;
        c.mss_v4 = self.mss_v4;
        c.mss_v6 = self.mss_v6;
        c.wscale = match self.wscale {
            Some(w) => w,
            None if self.syn_on() => host_wscale(),
            None => 0,
        };
        c
    }
}

fn fill(map: &mut [u64; PORT_WORDS], ports: &[PortRange]) {
    for r in ports {
        for p in r.lo..=r.hi {
            set_port_bit(map, p);
        }
    }
}

/// The window scale the kernel picks for a socket it makes from a cookie
/// (`tcp_select_initial_window`: the largest receive buffer it may grow to, in 64 KiB
/// steps), from the sysctls under `proc_sys` (`/proc/sys` of the network namespace).
/// 7 (the kernel's default settings) when they cannot be read.
#[must_use]
pub fn host_wscale(proc_sys: &Path) -> u8 {
    let read = |rel: &str| std::fs::read_to_string(proc_sys.join(rel)).ok();
    let tcp_rmem_max = read("net/ipv4/tcp_rmem").and_then(|s| {
        s.split_whitespace()
            .nth(2)
            .and_then(|v| v.parse::<u64>().ok())
    });
    let rmem_max = read("net/core/rmem_max").and_then(|s| s.trim().parse::<u64>().ok());
    let space = match (tcp_rmem_max, rmem_max) {
        (None, None) => return 7,
        (a, b) => a.unwrap_or(0).max(b.unwrap_or(0)),
    };
    wscale_for(space)
}

/// `ilog2(space) - 15`, between 0 and 14.
#[must_use]
pub fn wscale_for(space: u64) -> u8 {
    let log = 63 - space.max(1).leading_zeros();
    log.saturating_sub(15).min(14) as u8
}

/// The sysctls the SYN shield needs, with the value it needs: the kernel takes a cookie
/// back only from a listener that sent one itself lately (`tcp_syncookies = 2` makes every
/// SYN that reaches it do so), and decodes the client's options from the echoed timestamp
/// only when timestamps carry no per-connection offset (`tcp_timestamps = 2`).
pub const SYN_SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv4/tcp_syncookies", "2"),
    ("net/ipv4/tcp_timestamps", "2"),
];

/// Sets [`SYN_SYSCTLS`] under `proc_sys` where they differ; returns a note for each change.
///
/// # Errors
/// When a sysctl cannot be read or written.
pub fn prepare_host(proc_sys: &Path) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    for (rel, want) in SYN_SYSCTLS {
        let path = proc_sys.join(rel);
        let have = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if have.trim() != want {
            std::fs::write(&path, want).with_context(|| format!("writing {}", path.display()))?;
            notes.push(format!(
                "SYN shield: set {} from {} to {want}",
                rel.replace('/', "."),
                have.trim()
            ));
        }
    }
    Ok(notes)
}

/// The array holding the per-source limits' sketch in its one slot, and the sketch's name
/// (its pin's).
pub const SKETCH: (&str, &str) = ("SHIELD_SKETCH", "SHIELD_SKETCH_0");

/// Puts a sketch in [`SKETCH`]'s slot if there is none: before a generation with per-source
/// limits goes live. One already there is kept with its counts (they are stamped with their
/// window, so a reload neither refills nor needs to clear them).
///
/// # Errors
/// When the slot cannot be read, or the kernel cannot create the sketch (memory).
pub fn ensure_sketch(ebpf: &mut Ebpf) -> Result<()> {
    let (outer, name) = SKETCH;
    if crate::capacity::slot_table(ebpf, outer, name, 0)?.is_some() {
        return Ok(());
    }
    let shape = (
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        size_of::<u64>() as u32,
    );
    crate::capacity::new_slot_table(ebpf, (outer, name, 0), shape, 0, SKETCH_CELLS, || {
        format!("{SKETCH_CELLS} sketch counters")
    })?;
    Ok(())
}

/// Empties [`SKETCH`]'s slot: once the live generation has no per-source limits.
///
/// # Errors
/// When the slot cannot be written.
pub fn drop_sketch(ebpf: &mut Ebpf) -> Result<()> {
    let (outer, name) = SKETCH;
    crate::capacity::clear_slot_table(ebpf, outer, name, 0)
}

/// Writes `config` into the shield slot of `generation` (before that generation goes live).
///
/// # Errors
/// When the map cannot be written.
pub fn write_config(ebpf: &mut Ebpf, generation: u32, config: &ShieldConfig) -> Result<()> {
    let mut m: Array<&mut MapData, ShieldConfig> =
        Array::try_from(map_mut(ebpf, "SHIELD_CONFIG")?)?;
    m.set(generation, config, 0)
        .context("writing the shield settings")?;
    Ok(())
}

/// Holds the MSS a cookie SYN-ACK offers within `[scrub]`'s limits for outgoing packets: the
/// answer leaves from XDP, before the scrub's TC stage could clamp it.
pub fn within_scrub(c: &mut ShieldConfig, scrub: &crate::scrub::Scrub) {
    if !scrub.egress {
        return;
    }
    if let Some(m) = scrub.max_mss_v4 {
        c.mss_v4 = c.mss_v4.min(m);
    }
    if let Some(m) = scrub.max_mss_v6 {
        c.mss_v6 = c.mss_v6.min(m);
    }
}

/// What the shields are doing now, for `palisade status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShieldState {
    /// `syn_cookies = "on"`: cookies answer every SYN to `syn_ports`.
    pub cookies_forced: bool,
    /// Ports of `syn_ports` whose cookies the SYN rate engaged, with the seconds left.
    pub engaged: Vec<(u16, u64)>,
    /// Heavy hitters recorded, and how many of them are blocked now.
    pub hitters: u64,
    pub blocked: u64,
}

/// The shields' state at `now_ns` (the kernel's coarse clock) under `sh`.
///
/// # Errors
/// When the maps cannot be read.
pub fn state(ebpf: &Ebpf, sh: &Shield, now_ns: u64) -> Result<ShieldState> {
    let mut st = ShieldState {
        cookies_forced: sh.syn_on() && sh.syn_cookies == SynCookies::On,
        ..ShieldState::default()
    };
    if sh.syn_on() && sh.syn_cookies == SynCookies::Auto {
        let m: Array<&MapData, PortState> =
            Array::try_from(crate::maps::map(ebpf, "SHIELD_PORTS")?)?;
        // Ports equal modulo the slot count share a slot: each shows its slot's state.
        for r in &sh.syn_ports {
            for port in r.lo..=r.hi {
                let s = m.get(&(u32::from(port) % PORT_SLOTS), 0)?;
                if s.engaged_until_ns > now_ns {
                    st.engaged
                        .push((port, (s.engaged_until_ns - now_ns).div_ceil(1_000_000_000)));
                }
            }
        }
    }
    if sh.source_rate.is_some() {
        let list = hitters::list(ebpf, now_ns)?;
        st.hitters = list.len() as u64;
        st.blocked = list.iter().filter(|h| h.blocked_s.is_some()).count() as u64;
    }
    Ok(st)
}

/// One line for `palisade status`.
#[must_use]
pub fn status_line(st: &ShieldState) -> String {
    let mut parts = Vec::new();
    if st.cookies_forced {
        parts.push("SYN cookies forced on".to_owned());
    } else if !st.engaged.is_empty() {
        let ports: Vec<String> = st
            .engaged
            .iter()
            .take(8)
            .map(|(p, s)| format!("{p} ({s}s left)"))
            .collect();
        let more = st.engaged.len().saturating_sub(8);
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        parts.push(format!("SYN cookies engaged on {}{tail}", ports.join(", ")));
    }
    if st.hitters > 0 {
        parts.push(format!(
            "{} heavy hitters ({} blocked)",
            st.hitters, st.blocked
        ));
    }
    if parts.is_empty() {
        parts.push("idle".to_owned());
    }
    format!("shields     {}", parts.join("; "))
}

/// The shield counters summed over CPUs, indexed by `palisade_common::shield::SH_*`.
///
/// # Errors
/// When the map cannot be read.
pub fn counters(ebpf: &Ebpf) -> Result<[u64; SH_COUNT as usize]> {
    crate::stats::summed(ebpf, "SHIELD_STATS")
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_common::shield::port_bit;

    #[test]
    fn wscale_follows_the_largest_buffer() {
        // Linux defaults: tcp_rmem max 6 MiB, rmem_max 208 KiB.
        assert_eq!(wscale_for(6_291_456), 7);
        assert_eq!(wscale_for(33_554_432), 10);
        assert_eq!(wscale_for(65_535), 0);
        assert_eq!(wscale_for(u64::MAX), 14);
    }

    #[test]
    fn host_wscale_reads_the_sysctls() {
        let dir = std::env::temp_dir().join(format!("palisade-wscale-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("net/ipv4")).unwrap();
        std::fs::create_dir_all(dir.join("net/core")).unwrap();
        std::fs::write(dir.join("net/ipv4/tcp_rmem"), "4096\t131072\t6291456\n").unwrap();
        std::fs::write(dir.join("net/core/rmem_max"), "212992\n").unwrap();
        assert_eq!(host_wscale(&dir), 7);
        std::fs::write(dir.join("net/core/rmem_max"), "67108864\n").unwrap();
        assert_eq!(host_wscale(&dir), 11);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(host_wscale(Path::new("/nonexistent")), 7);
    }

    #[test]
    fn datapath_settings() {
        let s = Shield {
            syn_ports: vec![
                PortRange { lo: 80, hi: 80 },
                PortRange { lo: 8000, hi: 8002 },
            ],
            amplification: true,
            ..Shield::default()
        };
        let c = s.datapath(1, || 9);
        assert_eq!(c.flags, SHIELD_SYN | SHIELD_AMPLIFICATION);
        for p in [80, 8000, 8001, 8002] {
            assert!(port_bit(&c.syn_ports, p));
        }
        assert!(!port_bit(&c.syn_ports, 8003));
        assert!(port_bit(&c.amp_ports, 11211) && !port_bit(&c.amp_ports, 80));
        assert_eq!((c.wscale, c.syn_rate, c.hold_ns), (9, 1000, 10_000_000_000));
        let off = Shield {
            syn_cookies: SynCookies::Off,
            ..s.clone()
        };
        assert_eq!(
            off.datapath(1, || unreachable!()).flags,
            SHIELD_AMPLIFICATION
        );
        assert!(!Shield::default().any());
        // A scrub limit on outgoing MSS holds the cookie SYN-ACK's too.
        let mut c = s.datapath(1, || 9);
        let scrub = crate::scrub::Scrub {
            max_mss_v4: Some(1200),
            egress: true,
            ..crate::scrub::Scrub::default()
        };
        within_scrub(&mut c, &scrub);
        assert_eq!((c.mss_v4, c.mss_v6), (1200, 1440));
    }
}
