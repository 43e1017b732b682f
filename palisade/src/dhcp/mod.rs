//! DHCP snooping (`[dhcp]`): a lease table of DHCPv4, DHCPv6 and router advertisements
//! seen on the guarded interfaces, and rogue servers and routers reported or dropped.
//! `docs/design/dhcp.md` explains the design.
//!
//! - [`wire`]: the reader of copied frames (never trusts a byte).
//! - [`leases`]: the bounded lease table.
//! - [`runtime`]: records into the table and into events.

pub mod craft;
pub mod leases;
pub mod runtime;
pub mod wire;

use std::{fmt::Write as _, net::IpAddr};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use palisade_common::{
    dhcp::{
        BY_IP, BY_MAC, DHCP_BLOCK, DHCP_ON, DS_COUNT, DS_NAMES, DhcpConfig, MAX_TRUSTED,
        ROLE_ROUTER, ROLE_SERVER, TrustKey,
    },
    packet::v4_mapped,
};
use serde::{Deserialize, Serialize};

use crate::{maps::map_mut, stats::Named};

/// The TC program that snoops what leaves through the guarded interfaces (ingress is
/// snooped inside the XDP firewall).
pub const EGRESS: &str = "palisade_dhcp_egress";

/// A trusted source: a MAC address or an IP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Mac([u8; 6]),
    Ip(IpAddr),
}

impl Source {
    /// Reads `aa:bb:cc:dd:ee:ff` (or `-` separated) or an IP address.
    ///
    /// # Errors
    /// When it is neither; the message says what was expected.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() == 6 && parts.iter().all(|p| p.len() == 2) {
            let mut mac = [0u8; 6];
            for (slot, p) in mac.iter_mut().zip(&parts) {
                *slot = u8::from_str_radix(p, 16)
                    .map_err(|_| format!("`{s}` is neither an IP address nor a MAC address"))?;
            }
            return Ok(Self::Mac(mac));
        }
        Err(format!(
            "`{s}` is neither an IP address nor a MAC address (aa:bb:cc:dd:ee:ff)"
        ))
    }

    fn key(self, generation: u32, role: u8) -> TrustKey {
        let (by, addr) = match self {
            Self::Mac(m) => {
                let mut a = [0u8; 16];
                a[..6].copy_from_slice(&m);
                (BY_MAC, a)
            }
            Self::Ip(IpAddr::V4(v4)) => (BY_IP, v4_mapped(v4.octets())),
            Self::Ip(IpAddr::V6(v6)) => (BY_IP, v6.octets()),
        };
        TrustKey {
            generation: generation as u8,
            role,
            by,
            _pad: 0,
            addr,
        }
    }
}

/// What to do with a rogue server's message or router advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rogue {
    /// Report it (an event), let it through.
    #[default]
    Alert,
    /// Report it and drop it in the kernel.
    Block,
}

/// The `[dhcp]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dhcp {
    pub enabled: bool,
    /// DHCPv4 and DHCPv6 servers (and relays answering for them).
    pub trusted: Vec<Source>,
    /// Routers whose advertisements are trusted.
    pub trusted_routers: Vec<Source>,
    pub rogue: Rogue,
    /// Line of the section header (0 when absent).
    pub line: usize,
}

impl Dhcp {
    /// What the datapath reads.
    #[must_use]
    pub fn datapath(&self) -> DhcpConfig {
        let mut flags = 0;
        if self.enabled {
            flags |= DHCP_ON;
            if self.rogue == Rogue::Block {
                flags |= DHCP_BLOCK;
            }
        }
        DhcpConfig { flags, _pad: 0 }
    }

    /// The trusted-set keys of `generation`.
    #[must_use]
    pub fn trust_keys(&self, generation: u32) -> Vec<TrustKey> {
        if !self.enabled {
            return Vec::new();
        }
        self.trusted
            .iter()
            .map(|s| s.key(generation, ROLE_SERVER))
            .chain(
                self.trusted_routers
                    .iter()
                    .map(|s| s.key(generation, ROLE_ROUTER)),
            )
            .collect()
    }
}

/// Writes `[dhcp]` into the slot of `generation` (before that generation goes live): the
/// settings, and the trusted set of that generation replaced.
///
/// # Errors
/// When the maps cannot be written, or the trusted list is over [`MAX_TRUSTED`] (the
/// configuration refuses such a list first).
pub fn write_config(ebpf: &mut Ebpf, generation: u32, dhcp: &Dhcp) -> Result<()> {
    let keys = dhcp.trust_keys(generation);
    anyhow::ensure!(
        keys.len() <= MAX_TRUSTED as usize,
        "[dhcp] lists {} trusted sources; at most {MAX_TRUSTED} fit",
        keys.len()
    );
    {
        let mut set: HashMap<&mut MapData, TrustKey, u8> =
            HashMap::try_from(map_mut(ebpf, "DHCP_TRUSTED")?)?;
        let stale: Vec<TrustKey> = set
            .keys()
            .filter_map(Result::ok)
            .filter(|k| u32::from(k.generation) == generation)
            .collect();
        for k in stale {
            let _ = set.remove(&k);
        }
        for k in &keys {
            set.insert(k, 1, 0)
                .context("writing [dhcp]'s trusted sources")?;
        }
    }
    let mut m: Array<&mut MapData, DhcpConfig> = Array::try_from(map_mut(ebpf, "DHCP_CONFIG")?)?;
    m.set(generation, dhcp.datapath(), 0)
        .context("writing the DHCP settings")?;
    Ok(())
}

/// The snooping counters summed over CPUs, by `DS_*`.
///
/// # Errors
/// When the map cannot be read.
pub fn counters(ebpf: &Ebpf) -> Result<[u64; DS_COUNT as usize]> {
    crate::stats::summed(ebpf, "DHCP_STATS")
}

/// The counters by name; empty when they cannot be read.
#[must_use]
pub fn named_counters(ebpf: &Ebpf) -> Vec<Named> {
    crate::stats::named(&DS_NAMES, counters(ebpf))
}

/// What `palisade leases` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub enabled: bool,
    pub leases: Vec<leases::Lease>,
    /// The table's capacity ([`leases::MAX_LEASES`]) and leases pushed out by a full table.
    pub capacity: usize,
    pub evicted: u64,
    /// Records read, unreadable, malformed (read in part), rogue reports.
    pub records: u64,
    pub unreadable: u64,
    pub malformed: u64,
    pub rogue_reports: u64,
}

/// The text of `palisade leases`.
#[must_use]
pub fn print_listing(l: &Listing) -> String {
    let mut out = String::new();
    if !l.enabled {
        out.push_str("DHCP snooping is off ([dhcp] enabled = true turns it on)\n");
    }
    if l.leases.is_empty() {
        out.push_str("no leases\n");
    } else {
        let _ = writeln!(
            out,
            "{:<7} {:<17} {:<40} {:<24} {:<12} {:<8} server",
            "kind", "mac", "ip", "hostname", "lease end", "iface"
        );
    }
    for x in &l.leases {
        let ip = match x.prefix_len {
            Some(p) => format!("{}/{p}", x.ip),
            None => x.ip.clone(),
        };
        let _ = writeln!(
            out,
            "{:<7} {:<17} {:<40} {:<24} {:<12} {:<8} {}{}{}",
            x.kind.to_string(),
            x.mac,
            ip,
            x.hostname.as_deref().unwrap_or("-"),
            runtime::end_text(x.lease_end),
            x.iface,
            x.server,
            if x.trusted { "" } else { " (untrusted)" },
            if x.prefixes.is_empty() {
                String::new()
            } else {
                format!(" prefixes {}", x.prefixes.join(","))
            },
        );
    }
    let _ = writeln!(
        out,
        "{} of {} leases ({} evicted); {} records read, {} unreadable, {} malformed, {} rogue reports",
        l.leases.len(),
        l.capacity,
        l.evicted,
        l.records,
        l.unreadable,
        l.malformed,
        l.rogue_reports
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_as_macs_or_addresses() {
        assert_eq!(
            Source::parse("02:00:00:aa:bb:0c"),
            Ok(Source::Mac([2, 0, 0, 0xaa, 0xbb, 0x0c]))
        );
        assert_eq!(
            Source::parse("02-00-00-AA-BB-0C"),
            Ok(Source::Mac([2, 0, 0, 0xaa, 0xbb, 0x0c]))
        );
        assert_eq!(
            Source::parse("10.0.0.1"),
            Ok(Source::Ip("10.0.0.1".parse().unwrap()))
        );
        assert!(Source::parse("fe80::1").is_ok());
        assert!(Source::parse("02:00:00:aa:bb").is_err());
        assert!(Source::parse("zz:00:00:aa:bb:0c").is_err());
        assert!(Source::parse("router").is_err());
    }

    #[test]
    fn keys_follow_the_packet_parsers_layout() {
        let d = Dhcp {
            enabled: true,
            trusted: vec![Source::parse("10.0.0.1").unwrap()],
            trusted_routers: vec![Source::parse("02:00:00:00:00:01").unwrap()],
            rogue: Rogue::Block,
            line: 1,
        };
        let k = d.trust_keys(1);
        assert_eq!(k.len(), 2);
        assert_eq!(
            (k[0].generation, k[0].role, k[0].by),
            (1, ROLE_SERVER, BY_IP)
        );
        assert_eq!(k[0].addr, v4_mapped([10, 0, 0, 1]));
        assert_eq!((k[1].role, k[1].by), (ROLE_ROUTER, BY_MAC));
        assert_eq!(&k[1].addr[..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(d.datapath().flags, DHCP_ON | DHCP_BLOCK);
        assert!(Dhcp::default().trust_keys(0).is_empty());
        assert_eq!(Dhcp::default().datapath().flags, 0);
    }
}
