//! The lease table the daemon keeps from what it snoops: who holds which address, under
//! which name, until when. Bounded: [`MAX_LEASES`] entries (the one that ends soonest makes
//! room for a new one, counted) and [`MAX_NAMES`] hostnames learnt from clients' requests.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

/// Leases the table holds (about 200 bytes each).
pub const MAX_LEASES: usize = 4096;
/// Hostnames remembered from clients' requests until their server answers.
pub const MAX_NAMES: usize = 4096;
/// A lease end that never comes (DHCPv4 lease time 0xffffffff, DHCPv6 lifetime infinity).
pub const FOREVER: u64 = u64::MAX;

/// What kind of entry a lease is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseKind {
    /// A DHCPv4 address (from an ACK).
    Dhcpv4,
    /// A DHCPv6 address (IA_NA) or delegated prefix (IA_PD), from a REPLY.
    Dhcpv6,
    /// A router that advertised itself (RA); `ip` is its address, `prefixes` what it gave.
    Router,
}

impl fmt::Display for LeaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dhcpv4 => "dhcpv4",
            Self::Dhcpv6 => "dhcpv6",
            Self::Router => "router",
        })
    }
}

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub kind: LeaseKind,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub ip: String,
    /// The prefix length of a delegated prefix (absent for an address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Unix seconds; absent for a lease that never ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_end: Option<u64>,
    /// The server (or router) that gave it.
    pub server: String,
    /// Whether that server is on the trusted list.
    pub trusted: bool,
    /// The guarded interface it was seen on.
    pub iface: String,
    /// Prefixes a router advertised (`2001:db8::/64`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    /// Unix seconds of the last message that confirmed it.
    pub updated: u64,
}

/// `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn mac_text(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

type Key = (LeaseKind, [u8; 6], IpAddr);

/// The table.
#[derive(Debug, Default)]
pub struct Table {
    leases: HashMap<Key, Lease>,
    /// Hostnames clients sent, by MAC, oldest first for eviction.
    names: HashMap<[u8; 6], String>,
    name_order: VecDeque<[u8; 6]>,
    /// Leases pushed out by a full table.
    pub evicted: u64,
}

/// What an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    New,
    Renewed,
}

impl Table {
    /// Remembers the hostname a client sent.
    pub fn learn_name(&mut self, mac: [u8; 6], name: &str) {
        if self.names.insert(mac, name.to_string()).is_none() {
            self.name_order.push_back(mac);
            while self.names.len() > MAX_NAMES {
                let Some(old) = self.name_order.pop_front() else {
                    break;
                };
                self.names.remove(&old);
            }
        }
    }

    /// The hostname a client sent last, if any.
    #[must_use]
    pub fn name_of(&self, mac: [u8; 6]) -> Option<&str> {
        self.names.get(&mac).map(String::as_str)
    }

    /// Adds or renews a lease; a full table first drops the lease that ends soonest.
    pub fn upsert(&mut self, mac: [u8; 6], ip: IpAddr, lease: Lease) -> Change {
        let key = (lease.kind, mac, ip);
        if let Some(old) = self.leases.get_mut(&key) {
            let hostname = lease.hostname.clone().or_else(|| old.hostname.take());
            *old = Lease { hostname, ..lease };
            return Change::Renewed;
        }
        if self.leases.len() >= MAX_LEASES
            && let Some(victim) = self
                .leases
                .iter()
                .min_by_key(|(_, l)| l.lease_end.unwrap_or(FOREVER))
                .map(|(k, _)| *k)
        {
            self.leases.remove(&victim);
            self.evicted += 1;
        }
        self.leases.insert(key, lease);
        Change::New
    }

    /// Removes a lease; returns it.
    pub fn remove(&mut self, kind: LeaseKind, mac: [u8; 6], ip: IpAddr) -> Option<Lease> {
        self.leases.remove(&(kind, mac, ip))
    }

    /// Removes every lease of `kind` held by `mac`; returns them.
    pub fn remove_all(&mut self, kind: LeaseKind, mac: [u8; 6]) -> Vec<Lease> {
        let keys: Vec<Key> = self
            .leases
            .keys()
            .filter(|(k, m, _)| *k == kind && *m == mac)
            .copied()
            .collect();
        keys.iter().filter_map(|k| self.leases.remove(k)).collect()
    }

    /// Drops the leases that ended before `now` (Unix seconds).
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.leases.len();
        self.leases
            .retain(|_, l| l.lease_end.is_none_or(|end| end >= now));
        before - self.leases.len()
    }

    /// Every lease, by kind, then address.
    #[must_use]
    pub fn list(&self) -> Vec<Lease> {
        let mut v: Vec<Lease> = self.leases.values().cloned().collect();
        v.sort_by(|a, b| (a.kind, &a.ip, &a.mac).cmp(&(b.kind, &b.ip, &b.mac)));
        v
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: &str, end: Option<u64>) -> Lease {
        Lease {
            kind: LeaseKind::Dhcpv4,
            mac: String::new(),
            ip: ip.into(),
            prefix_len: None,
            hostname: None,
            lease_end: end,
            server: String::new(),
            trusted: true,
            iface: String::new(),
            prefixes: Vec::new(),
            updated: 0,
        }
    }

    #[test]
    fn a_full_table_drops_the_lease_that_ends_soonest() {
        let mut t = Table::default();
        for i in 0..MAX_LEASES {
            let ip = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            let mac = [2, 0, 0, 0, (i >> 8) as u8, i as u8];
            t.upsert(mac, ip, lease(&ip.to_string(), Some(1000 + i as u64)));
        }
        assert_eq!(t.len(), MAX_LEASES);
        let ip = IpAddr::from([10, 1, 0, 0]);
        assert_eq!(
            t.upsert([2, 1, 0, 0, 0, 0], ip, lease("10.1.0.0", None)),
            Change::New
        );
        assert_eq!(t.len(), MAX_LEASES);
        assert_eq!(t.evicted, 1);
        assert!(t.list().iter().all(|l| l.ip != "10.0.0.0"));
    }

    #[test]
    fn renewal_keeps_a_known_hostname_and_expiry_removes() {
        let mut t = Table::default();
        let ip = IpAddr::from([10, 0, 0, 5]);
        let mac = [2, 0, 0, 0, 0, 5];
        let mut l = lease("10.0.0.5", Some(100));
        l.hostname = Some("laptop".into());
        assert_eq!(t.upsert(mac, ip, l), Change::New);
        assert_eq!(
            t.upsert(mac, ip, lease("10.0.0.5", Some(200))),
            Change::Renewed
        );
        assert_eq!(t.list()[0].hostname.as_deref(), Some("laptop"));
        assert_eq!(t.list()[0].lease_end, Some(200));
        assert_eq!(t.expire(201), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn remembered_names_are_bounded() {
        let mut t = Table::default();
        for i in 0..=MAX_NAMES {
            t.learn_name([0, 0, 0, 0, (i >> 8) as u8, i as u8], "n");
        }
        assert_eq!(t.names.len(), MAX_NAMES);
        assert!(t.name_of([0; 6]).is_none());
    }
}
