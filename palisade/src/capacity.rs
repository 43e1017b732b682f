//! Capacities of the policy maps that grow with the policy: `FW_RULES`, `FW_SET_HOSTS`,
//! `FW_SETS` and `DNS_NAMES`.
//!
//! Each of these maps holds both policy generations: the next policy is written next to the
//! running one, then one write makes it live. The daemon creates them at start for twice the
//! room one generation needs ([`Room::sized`]): what the policy holds with headroom, at least
//! [`default_room`], or what the configuration asks for (`[firewall] capacity_rules`,
//! `capacity_set_hosts`, `capacity_set_prefixes`, `[dns] capacity_names`) when larger. A
//! generation's room is half of what a map holds, so each generation has the room it was
//! checked against whatever the other one holds, and a full map (`E2BIG`) cannot happen
//! half way through a reload: [`Room::check`] refuses, before anything changes, a policy that
//! does not fit the running maps, naming the setting that makes room.
//!
//! The capacities are part of the pin layout (`pin::layout_id`), so a daemon started with a
//! policy that needs other sizes builds a complete new state next to the old one and moves
//! every attachment over in one step, as it does after an upgrade.

use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result};
use aya::Ebpf;
use palisade_common::{
    dns::maps::MAX_NAME_KEYS,
    firewall::{GENERATIONS, MAX_RULE_ENTRIES, MAX_SET_HOSTS, MAX_SET_PREFIXES},
};

use crate::{
    dns::compile::CompiledDns, firewall::compile::CompiledFirewall, maps, pin,
    policy::model::Policy,
};

/// The least room a generation gets in each map, whatever the policy: the capacities every
/// policy had before the maps were sized, so that live edits and `[intel]` feed domains (which
/// join the lists after the start and are not counted when sizing) keep the room they had.
/// The memory of a small policy follows it once a running daemon can grow its maps; until
/// then a smaller floor would turn ordinary live growth into refusals.
#[must_use]
pub const fn default_room(kind: Kind) -> u32 {
    match kind {
        Kind::Rules => 1 << 21,
        Kind::SetHosts => 1 << 20,
        Kind::SetPrefixes => 1 << 20,
        Kind::Names => 1 << 21,
    }
}

/// One of the maps sized by the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Rule entries (`FW_RULES`): one per rule and address, port class and flag combination.
    Rules,
    /// Set members that are single addresses (`FW_SET_HOSTS`).
    SetHosts,
    /// Set members that are shorter prefixes (`FW_SETS`).
    SetPrefixes,
    /// DNS name entries (`DNS_NAMES`): one per name and scope that uses its list.
    Names,
}

impl Kind {
    /// Every kind, in the order of [`Room`]'s fields.
    pub const ALL: [Self; 4] = [Self::Rules, Self::SetHosts, Self::SetPrefixes, Self::Names];

    /// The kernel map.
    #[must_use]
    pub const fn map(self) -> &'static str {
        match self {
            Self::Rules => "FW_RULES",
            Self::SetHosts => "FW_SET_HOSTS",
            Self::SetPrefixes => "FW_SETS",
            Self::Names => "DNS_NAMES",
        }
    }

    /// The configuration setting that raises the room.
    #[must_use]
    pub const fn setting(self) -> &'static str {
        match self {
            Self::Rules => "[firewall] capacity_rules",
            Self::SetHosts => "[firewall] capacity_set_hosts",
            Self::SetPrefixes => "[firewall] capacity_set_prefixes",
            Self::Names => "[dns] capacity_names",
        }
    }

    /// What one entry is, for messages.
    #[must_use]
    pub const fn what(self) -> &'static str {
        match self {
            Self::Rules => "rule entries",
            Self::SetHosts => "set members that are single addresses",
            Self::SetPrefixes => "set members that are prefixes shorter than one address",
            Self::Names => "DNS name entries (one per name and scope that uses its list)",
        }
    }

    /// The most one generation may ever hold (the largest value of [`Self::setting`]): the
    /// bucket array of a hash map of twice this many entries is 2 x 16 bytes per entry, and
    /// a compiler that expands a policy past it would need gigabytes.
    #[must_use]
    pub const fn hard_max(self) -> u32 {
        match self {
            Self::Rules => MAX_RULE_ENTRIES,
            Self::SetHosts => MAX_SET_HOSTS,
            Self::SetPrefixes => MAX_SET_PREFIXES,
            Self::Names => MAX_NAME_KEYS as u32,
        }
    }
}

/// Entries per generation for each map sized by the policy: what a policy needs, or what
/// the maps have room for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Room {
    pub rules: u32,
    pub set_hosts: u32,
    pub set_prefixes: u32,
    pub names: u32,
}

impl Room {
    /// The entry of `kind`.
    #[must_use]
    pub const fn get(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Rules => self.rules,
            Kind::SetHosts => self.set_hosts,
            Kind::SetPrefixes => self.set_prefixes,
            Kind::Names => self.names,
        }
    }

    fn slot(&mut self, kind: Kind) -> &mut u32 {
        match kind {
            Kind::Rules => &mut self.rules,
            Kind::SetHosts => &mut self.set_hosts,
            Kind::SetPrefixes => &mut self.set_prefixes,
            Kind::Names => &mut self.names,
        }
    }

    /// What one generation of compiled policies `fw` and `dns` holds.
    #[must_use]
    pub fn needed(fw: &CompiledFirewall, dns: &CompiledDns) -> Self {
        let members = fw.sets.iter().flatten();
        let hosts = members
            .clone()
            .filter(|m| m.stored_prefix_len() == 128)
            .count();
        let prefixes = members.count() - hosts;
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Self {
            rules: n(fw.entries.len()),
            set_hosts: n(hosts),
            set_prefixes: n(prefixes),
            names: n(dns.names.len()),
        }
    }

    /// The room to create the maps with for a policy that needs `need`: each need with a
    /// quarter more, rounded up to a power of two (the hash maps' bucket arrays are powers of
    /// two anyway), at least [`default_room`], or `configured` when larger; never past
    /// [`Kind::hard_max`] (a need past it was refused by the compilers). `configured` holds 0
    /// for settings not given.
    #[must_use]
    pub fn sized(need: Self, configured: Self) -> Self {
        let mut out = Self::default();
        for kind in Kind::ALL {
            let n = u64::from(need.get(kind));
            let grown = (n + n / 4).max(1).next_power_of_two();
            let room = grown
                .max(u64::from(default_room(kind)))
                .max(u64::from(configured.get(kind)))
                .min(u64::from(kind.hard_max()));
            *out.slot(kind) = room as u32;
        }
        out
    }

    /// What `policy` asks for in its capacity settings (0 for those not set).
    #[must_use]
    pub const fn configured(policy: &Policy) -> Self {
        let c = policy.firewall.capacity;
        Self {
            rules: c.rules,
            set_hosts: c.set_hosts,
            set_prefixes: c.set_prefixes,
            names: policy.dns.capacity_names,
        }
    }

    /// The room a daemon starting with `policy` (compiled as `fw`) creates the maps with:
    /// [`Self::sized`] for what it holds and what it configures. The DNS names are counted
    /// with [`crate::dns::compile::key_bound`], which depends on neither the hash key nor
    /// the clock, so the same policy always gets the same sizes (and the same layout).
    #[must_use]
    pub fn for_policy(policy: &Policy, fw: &CompiledFirewall) -> Self {
        let need = Self::needed(fw, &CompiledDns::default());
        let names = crate::dns::compile::key_bound(&policy.dns);
        Self::sized(
            Self {
                names: u32::try_from(names).unwrap_or(u32::MAX),
                ..need
            },
            Self::configured(policy),
        )
    }

    /// `(map name, max_entries)` for the loader: two generations of this room.
    #[must_use]
    pub fn for_loader(&self) -> Vec<(&'static str, u32)> {
        Kind::ALL
            .iter()
            .map(|&k| (k.map(), self.get(k).saturating_mul(GENERATIONS)))
            .collect()
    }

    /// The room of the maps `ebpf` holds: half of each map's capacity.
    ///
    /// # Errors
    /// When a map is missing or its information cannot be read.
    pub fn of_maps(ebpf: &Ebpf) -> Result<Self> {
        let mut out = Self::default();
        for kind in Kind::ALL {
            let data = maps::data_of(ebpf, kind.map())?;
            let (_, _, _, _, max, _) = pin::map_info(data.fd().as_fd())
                .with_context(|| format!("reading the capacity of {}", kind.map()))?;
            *out.slot(kind) = max / GENERATIONS;
        }
        Ok(out)
    }

    /// Refuses a policy needing `need` that does not fit a generation of maps with `room`,
    /// naming the first map it overflows and the setting that makes room.
    ///
    /// # Errors
    /// [`TooBig`] for the first kind over its room.
    pub fn check(need: Self, room: Self) -> Result<(), TooBig> {
        match Kind::ALL.into_iter().find(|&k| need.get(k) > room.get(k)) {
            None => Ok(()),
            Some(kind) => Err(TooBig {
                kind,
                need: need.get(kind),
                room: room.get(kind),
            }),
        }
    }
}

/// A policy that does not fit the running maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the policy holds {need} {what} in one generation, but {map} has room for {room} per \
     generation (it holds two: the running policy and the next). Set {setting} = {need} or \
     more (at most {max}) and restart the daemon; a restart also sizes the maps for the \
     policy it starts with",
    what = kind.what(),
    map = kind.map(),
    setting = kind.setting(),
    max = kind.hard_max()
)]
pub struct TooBig {
    pub kind: Kind,
    pub need: u32,
    pub room: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(rules: u32, set_hosts: u32, set_prefixes: u32, names: u32) -> Room {
        Room {
            rules,
            set_hosts,
            set_prefixes,
            names,
        }
    }

    #[test]
    fn sizes_have_headroom_a_minimum_and_follow_the_configuration() {
        let none = Room::default();
        assert_eq!(
            Room::sized(none, none),
            room(1 << 21, 1 << 20, 1 << 20, 1 << 21)
        );
        // 1.2M hosts: a quarter more is 1.5M, rounded up to 2^21.
        let big = Room::sized(room(4000, 1_200_000, 0, 2_500_000), none);
        assert_eq!(big, room(1 << 21, 1 << 21, 1 << 20, 1 << 22));
        // A configured capacity wins when larger, and is kept as written.
        let configured = Room::sized(room(10, 10, 10, 10), room(0, 3_000_000, 0, 100));
        assert_eq!(configured, room(1 << 21, 3_000_000, 1 << 20, 1 << 21));
        // Never past the hard maximum, even for a need close to it.
        let near = Room::sized(room(Kind::Rules.hard_max(), 0, 0, 0), none);
        assert_eq!(near.rules, Kind::Rules.hard_max());
        assert_eq!(
            near.for_loader()[0],
            ("FW_RULES", 2 * Kind::Rules.hard_max())
        );
    }

    #[test]
    fn a_policy_over_its_room_is_refused_naming_the_setting() {
        let maps = room(1 << 21, 1 << 20, 1 << 20, 1 << 21);
        assert_eq!(Room::check(room(4096, 1 << 20, 1, 5), maps), Ok(()));
        let e = Room::check(room(1, 1_200_000, 1, 1), maps).unwrap_err();
        assert_eq!(e.kind, Kind::SetHosts);
        let msg = e.to_string();
        assert!(
            msg.contains("1200000 set members that are single addresses"),
            "{msg}"
        );
        assert!(msg.contains("FW_SET_HOSTS has room for 1048576"), "{msg}");
        assert!(
            msg.contains("[firewall] capacity_set_hosts = 1200000"),
            "{msg}"
        );
        let e = Room::check(room(1, 1, 1, 1 << 22), maps).unwrap_err();
        assert!(e.to_string().contains("[dns] capacity_names"), "{e}");
    }
}
