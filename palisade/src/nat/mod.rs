//! NAT (`[nat]`): masquerade of subnets behind the host and port forwards, done by TC
//! programs on the outside interface. The section's model, what the datapath reads of it
//! (resolved against the host's interfaces when a policy is installed), the mapping tables
//! as userspace reads them, and the counters. `docs/design/nat.md` explains the design.

use std::{
    collections::HashMap as StdHashMap,
    ffi::CStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use palisade_common::{
    conntrack::bytes_to_words,
    nat::{
        ForwardKey, ForwardTarget, MAX_FORWARDS, MAX_SUBNETS, NAT_ON, NAT_V4, NAT_V6, NS_COUNT,
        NS_NAMES, NatCensus, NatConfig, NatEntry, NatKey, NatSubnet,
    },
    packet::{FAMILY_V4, FAMILY_V6, v4_mapped},
};

use crate::{
    maps::map_mut,
    policy::model::{Cidr, Family},
    stats::Named,
};

/// The TC program that translates what arrives on the outside interface.
pub const INGRESS: &str = "palisade_nat_ingress";
/// The TC program that translates what leaves through it.
pub const EGRESS: &str = "palisade_nat_egress";

/// Ports handed out when `[nat] ports` is not given: every unprivileged port.
pub const DEFAULT_PORTS: (u16, u16) = (1024, 65_535);

/// One port forward: `proto` traffic to the external address's `port` goes to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub proto: u8,
    pub port: u16,
    pub to: SocketAddr,
    /// 1-based line of its table.
    pub line: usize,
}

/// The `[nat]` section; `out` is `None` without one (nothing translated).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nat {
    /// The outside interface.
    pub out: Option<String>,
    /// External addresses; `None`: the interface's own (masquerade), read when the policy is
    /// installed.
    pub address_v4: Option<Ipv4Addr>,
    pub address_v6: Option<Ipv6Addr>,
    /// Source subnets translated on their way out.
    pub masquerade: Vec<Cidr>,
    /// External ports handed out, inclusive.
    pub ports: (u16, u16),
    pub forwards: Vec<Forward>,
    /// Line of the section header (0 when absent).
    pub line: usize,
}

impl Nat {
    /// Whether the policy translates anything.
    #[must_use]
    pub fn any(&self) -> bool {
        self.out.is_some()
    }

    /// Whether `family` needs an external address: something to masquerade or forward.
    fn uses(&self, family: Family) -> bool {
        self.masquerade.iter().any(|c| c.family == family)
            || self.forwards.iter().any(|f| {
                matches!(
                    (f.to, family),
                    (SocketAddr::V4(_), Family::V4) | (SocketAddr::V6(_), Family::V6)
                )
            })
    }

    /// What the datapath reads, with the interface and its addresses looked up by `host`.
    /// Nothing is written: a policy whose interface or addresses are missing is refused
    /// before anything changes.
    ///
    /// # Errors
    /// When the outside interface does not exist, or has no address of a family the
    /// section translates and none is configured.
    pub fn datapath(&self, host: &dyn Host) -> Result<NatConfig> {
        let mut c = NatConfig::default();
        let Some(out) = &self.out else {
            return Ok(c);
        };
        c.flags = NAT_ON;
        c.out_ifindex = host
            .ifindex(out)
            .ok_or_else(|| anyhow!("[nat] out = {out:?}: no network interface of that name"))?;
        (c.port_lo, c.port_hi) = self.ports;
        if self.uses(Family::V4) {
            let a = match self.address_v4 {
                Some(a) => a,
                None => host.address_v4(out).ok_or_else(|| {
                    anyhow!(
                        "[nat] out = {out:?} has no IPv4 address to masquerade to; give one \
                         with `address_v4`"
                    )
                })?,
            };
            c.addr_v4 = bytes_to_words(&v4_mapped(a.octets()));
            c.flags |= NAT_V4;
        }
        if self.uses(Family::V6) {
            let a = match self.address_v6 {
                Some(a) => a,
                None => host.address_v6(out).ok_or_else(|| {
                    anyhow!(
                        "[nat] out = {out:?} has no global IPv6 address to masquerade to; give \
                         one with `address_v6`"
                    )
                })?,
            };
            c.addr_v6 = bytes_to_words(&a.octets());
            c.flags |= NAT_V6;
        }
        if self.masquerade.len() > MAX_SUBNETS {
            bail!(
                "[nat] masquerade lists {} subnets; at most {MAX_SUBNETS} fit",
                self.masquerade.len()
            );
        }
        for (slot, cidr) in c.subnets.iter_mut().zip(&self.masquerade) {
            let mask = cidr.mask();
            let mut addr = cidr.addr;
            for (a, m) in addr.iter_mut().zip(mask) {
                *a &= m;
            }
            *slot = NatSubnet {
                addr: bytes_to_words(&addr),
                mask: bytes_to_words(&mask),
            };
        }
        c.n_subnets = self.masquerade.len() as u32;
        Ok(c)
    }

    /// The port forwards as `NAT_FORWARDS` entries of `generation`.
    #[must_use]
    pub fn forward_entries(&self, generation: u32) -> Vec<(ForwardKey, ForwardTarget)> {
        self.forwards
            .iter()
            .map(|f| {
                let (family, addr) = match f.to.ip() {
                    IpAddr::V4(a) => (FAMILY_V4, v4_mapped(a.octets())),
                    IpAddr::V6(a) => (FAMILY_V6, a.octets()),
                };
                (
                    ForwardKey {
                        generation: generation as u8,
                        family,
                        proto: f.proto,
                        _pad: 0,
                        port: f.port,
                        _pad2: 0,
                    },
                    ForwardTarget {
                        addr: bytes_to_words(&addr),
                        port: f.to.port(),
                        _pad: [0; 6],
                    },
                )
            })
            .collect()
    }
}

/// What [`Nat::datapath`] asks of the host (tests give their own).
pub trait Host {
    fn ifindex(&self, iface: &str) -> Option<u32>;
    /// The interface's first IPv4 address.
    fn address_v4(&self, iface: &str) -> Option<Ipv4Addr>;
    /// The interface's first global IPv6 address (not link-local).
    fn address_v6(&self, iface: &str) -> Option<Ipv6Addr>;
}

/// The host this process runs on (its network namespace).
pub struct ThisHost;

impl Host for ThisHost {
    fn ifindex(&self, iface: &str) -> Option<u32> {
        crate::attach::ifindex(iface)
    }

    fn address_v4(&self, iface: &str) -> Option<Ipv4Addr> {
        addresses(iface).into_iter().find_map(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
    }

    fn address_v6(&self, iface: &str) -> Option<Ipv6Addr> {
        addresses(iface).into_iter().find_map(|a| match a {
            IpAddr::V6(a) if !a.is_unicast_link_local() && !a.is_loopback() => Some(a),
            _ => None,
        })
    }
}

/// The addresses of `iface`, in the kernel's order.
fn addresses(iface: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned; its pointers are valid or null.
        unsafe {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            if CStr::from_ptr(ifa.ifa_name).to_bytes() != iface.as_bytes() {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Writes `config` and the port forwards of `nat` into the slots of `generation` (before
/// that generation goes live): the forwards of that generation left from an older policy
/// are removed first.
///
/// # Errors
/// When a map cannot be written.
pub fn write_config(ebpf: &mut Ebpf, generation: u32, config: &NatConfig, nat: &Nat) -> Result<()> {
    {
        let mut fw: HashMap<&mut MapData, ForwardKey, ForwardTarget> =
            HashMap::try_from(map_mut(ebpf, "NAT_FORWARDS")?)?;
        let stale: Vec<ForwardKey> = fw
            .keys()
            .filter_map(Result::ok)
            .filter(|k| u32::from(k.generation) == generation)
            .collect();
        for k in stale {
            let _ = fw.remove(&k);
        }
        let entries = nat.forward_entries(generation);
        if entries.len() > MAX_FORWARDS as usize {
            bail!(
                "[nat] has {} port forwards; at most {MAX_FORWARDS} fit",
                entries.len()
            );
        }
        for (k, v) in entries {
            fw.insert(k, v, 0).context("writing a port forward")?;
        }
    }
    let mut m: Array<&mut MapData, NatConfig> = Array::try_from(map_mut(ebpf, "NAT_CONFIG")?)?;
    m.set(generation, config, 0)
        .context("writing the NAT settings")?;
    Ok(())
}

/// The NAT counters summed over CPUs, indexed by `NS_*`.
///
/// # Errors
/// When the map cannot be read.
pub fn counters(ebpf: &Ebpf) -> Result<[u64; NS_COUNT as usize]> {
    crate::stats::summed(ebpf, "NAT_STATS")
}

/// The counters by name; empty when they cannot be read.
#[must_use]
pub fn named_counters(ebpf: &Ebpf) -> Vec<Named> {
    crate::stats::named(&NS_NAMES, counters(ebpf))
}

/// What the last sweep counted of the mappings.
///
/// # Errors
/// When the map cannot be read.
pub fn census(ebpf: &Ebpf) -> Result<NatCensus> {
    let m: Array<&MapData, NatCensus> = Array::try_from(crate::maps::map(ebpf, "NAT_CENSUS")?)?;
    Ok(m.get(&0, 0)?)
}

/// Every mapping of `NAT_INGRESS` (outside tuple -> inside endpoint), for tests and
/// inspection.
///
/// # Errors
/// When the map cannot be read.
pub fn mappings(ebpf: &Ebpf) -> Result<StdHashMap<NatKey, NatEntry>> {
    let m: HashMap<&MapData, NatKey, NatEntry> =
        HashMap::try_from(crate::maps::map(ebpf, "NAT_INGRESS")?)?;
    Ok(m.iter().filter_map(Result::ok).collect())
}

/// Every `NAT_EGRESS` entry (untranslated tuple leaving -> the source it gets).
///
/// # Errors
/// When the map cannot be read.
pub fn egress_mappings(ebpf: &Ebpf) -> Result<StdHashMap<NatKey, NatEntry>> {
    let m: HashMap<&MapData, NatKey, NatEntry> =
        HashMap::try_from(crate::maps::map(ebpf, "NAT_EGRESS")?)?;
    Ok(m.iter().filter_map(Result::ok).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Host for Fake {
        fn ifindex(&self, iface: &str) -> Option<u32> {
            (iface == "wan0").then_some(7)
        }
        fn address_v4(&self, _: &str) -> Option<Ipv4Addr> {
            Some(Ipv4Addr::new(198, 51, 100, 1))
        }
        fn address_v6(&self, _: &str) -> Option<Ipv6Addr> {
            None
        }
    }

    fn cidr(text: &str) -> Cidr {
        crate::policy::setfile::parse_cidr(text).expect("cidr")
    }

    #[test]
    fn the_datapath_gets_the_interface_its_address_and_masks() {
        let nat = Nat {
            out: Some("wan0".into()),
            masquerade: vec![cidr("10.1.0.0/16")],
            ports: (2000, 2999),
            ..Nat::default()
        };
        let c = nat.datapath(&Fake).expect("config");
        assert_eq!(c.flags, NAT_ON | NAT_V4);
        assert_eq!(
            (c.out_ifindex, c.port_lo, c.port_hi, c.n_subnets),
            (7, 2000, 2999, 1)
        );
        assert_eq!(c.addr_v4, bytes_to_words(&v4_mapped([198, 51, 100, 1])));
        let inside = bytes_to_words(&v4_mapped([10, 1, 200, 3]));
        let outside = bytes_to_words(&v4_mapped([10, 2, 0, 3]));
        assert!(c.masquerades(&inside) && !c.masquerades(&outside));
        // A family with no address and none configured is refused, naming the key.
        let v6 = Nat {
            masquerade: vec![cidr("fd00::/64")],
            ..nat.clone()
        };
        let e = v6.datapath(&Fake).expect_err("no IPv6 address");
        assert!(e.to_string().contains("address_v6"), "{e}");
        let gone = Nat {
            out: Some("wan9".into()),
            ..nat
        };
        assert!(gone.datapath(&Fake).is_err());
    }
}
