//! The policy tables that grow with the policy: `FW_RULES`, `FW_SET_HOSTS`, `FW_SETS`,
//! `DNS_NAMES`, and the rules' actions and counters `FW_RULE_META` and `FW_RULE_STATS`
//! (arrays by evaluation index).
//!
//! Each is an array of maps with one table per policy generation. A policy is written into
//! the idle generation's table, then one write makes it live; so each generation has a
//! table of its own size, whatever the other one holds. An install sizes the idle
//! generation's table for what it is about to hold ([`Room::sized`]): what the policy needs
//! plus a quarter, rounded up to a power of two, at least [`MIN_ROOM`], or what the
//! configuration asks for (`[firewall] capacity_rules`, `capacity_set_hosts`,
//! `capacity_set_prefixes`, `[dns] capacity_names`) when larger. A table too small for the
//! policy, or more than [`SHRINK_FACTOR`] times the size it needs, is replaced by a new one
//! of the right size, written whole, and put in the generation's slot before the generation
//! goes live ([`tables_for`]); packets only ever read the live generation's slot. A policy
//! that outgrows its maps is therefore an ordinary install, not an error, and the memory
//! follows the policy both ways. What cannot be installed at all is a generation past
//! [`Kind::hard_max`], which [`Room::check`] refuses before anything changes.

pub mod engines;

use std::{
    os::fd::AsFd as _,
    path::PathBuf,
    sync::{Mutex, PoisonError},
};

use anyhow::{Context as _, Result};
use aya::{Ebpf, maps::MapData};
use palisade_common::{
    dns::maps::{MAX_NAME_KEYS, NameKey, NameValue},
    firewall::{
        FlowKey, MAX_RULE_ENTRIES, MAX_RULES, MAX_SET_HOSTS, MAX_SET_PREFIXES, RuleMeta, RuleRef,
        RuleStats, SetKey,
    },
};

use crate::{
    dns::compile::CompiledDns, firewall::compile::CompiledFirewall, maps, pin,
    policy::model::Policy,
};

/// The least room a generation's table is created with: a table is never smaller, so a
/// small policy's live edits grow into it without a new table (16 KiB of buckets).
pub const MIN_ROOM: u32 = 1 << 10;

/// A table holding more than this many times the room its policy needs is replaced by a
/// smaller one at the next install, so that memory follows a policy that shrank.
pub const SHRINK_FACTOR: u32 = 4;

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
    /// Rule actions (`FW_RULE_META`): one per rule.
    RuleMeta,
    /// Rule counters (`FW_RULE_STATS`): one per rule and CPU, a run of slots per CPU
    /// (`palisade_common::firewall::rule_stats_slot`); its room counts rules, the table holds
    /// that many slots per CPU.
    RuleStats,
}

impl Kind {
    /// Every kind, in the order of [`Room`]'s fields (the two rule arrays share one).
    pub const ALL: [Self; 6] = [
        Self::Rules,
        Self::SetHosts,
        Self::SetPrefixes,
        Self::Names,
        Self::RuleMeta,
        Self::RuleStats,
    ];

    /// The kernel map.
    #[must_use]
    pub const fn map(self) -> &'static str {
        match self {
            Self::Rules => "FW_RULES",
            Self::SetHosts => "FW_SET_HOSTS",
            Self::SetPrefixes => "FW_SETS",
            Self::Names => "DNS_NAMES",
            Self::RuleMeta => "FW_RULE_META",
            Self::RuleStats => "FW_RULE_STATS",
        }
    }

    /// The name of generation `generation`'s table, as the kernel lists it.
    #[must_use]
    pub const fn table_name(self, generation: u32) -> &'static str {
        match (self, generation & 1) {
            (Self::Rules, 0) => "FW_RULES_0",
            (Self::Rules, _) => "FW_RULES_1",
            (Self::SetHosts, 0) => "FW_SET_HOSTS_0",
            (Self::SetHosts, _) => "FW_SET_HOSTS_1",
            (Self::SetPrefixes, 0) => "FW_SETS_0",
            (Self::SetPrefixes, _) => "FW_SETS_1",
            (Self::Names, 0) => "DNS_NAMES_0",
            (Self::Names, _) => "DNS_NAMES_1",
            (Self::RuleMeta, 0) => "FW_RULE_META_0",
            (Self::RuleMeta, _) => "FW_RULE_META_1",
            (Self::RuleStats, 0) => "FW_RULE_STATS_0",
            (Self::RuleStats, _) => "FW_RULE_STATS_1",
        }
    }

    /// `(map type, key size, value size)` of a table, as the kernel's template has them.
    fn shape(self) -> (u32, u32, u32) {
        use aya_obj::generated::bpf_map_type::{
            BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LPM_TRIE,
        };
        let size = |n: usize| n as u32;
        match self {
            Self::Rules => (
                BPF_MAP_TYPE_HASH as u32,
                size(size_of::<FlowKey>()),
                size(size_of::<RuleRef>()),
            ),
            Self::SetHosts => (BPF_MAP_TYPE_HASH as u32, size(size_of::<SetKey>()), 1),
            // The trie's key is the prefix length, then the set key.
            Self::SetPrefixes => (
                BPF_MAP_TYPE_LPM_TRIE as u32,
                size(4 + size_of::<SetKey>()),
                1,
            ),
            Self::Names => (
                BPF_MAP_TYPE_HASH as u32,
                size(size_of::<NameKey>()),
                size(size_of::<NameValue>()),
            ),
            Self::RuleMeta => (BPF_MAP_TYPE_ARRAY as u32, 4, size(size_of::<RuleMeta>())),
            Self::RuleStats => (BPF_MAP_TYPE_ARRAY as u32, 4, size(size_of::<RuleStats>())),
        }
    }

    /// Map slots per entry: a rule counter is one slot per CPU.
    #[must_use]
    pub fn slots_per_entry(self) -> u32 {
        match self {
            Self::RuleStats => possible_cpus(),
            _ => 1,
        }
    }

    /// The flags a table is created with, as the template has them: hash tables allocate
    /// entries on demand; arrays (allocated whole) carry the flag that lets arrays of
    /// another size than the template into the slot.
    const fn flags(self) -> u32 {
        match self {
            Self::Rules | Self::SetHosts | Self::SetPrefixes | Self::Names => {
                aya_obj::generated::BPF_F_NO_PREALLOC
            }
            Self::RuleMeta | Self::RuleStats => aya_obj::generated::BPF_F_INNER_MAP,
        }
    }

    /// The configuration setting that makes a generation's table larger than its policy
    /// needs.
    #[must_use]
    pub const fn setting(self) -> &'static str {
        match self {
            Self::Rules => "[firewall] capacity_rules",
            Self::SetHosts => "[firewall] capacity_set_hosts",
            Self::SetPrefixes => "[firewall] capacity_set_prefixes",
            Self::Names => "[dns] capacity_names",
            Self::RuleMeta | Self::RuleStats => "[firewall] rules",
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
            Self::RuleMeta | Self::RuleStats => "rules",
        }
    }

    /// The most one generation may ever hold (the largest value of [`Self::setting`]): a
    /// hash table's bucket array is 16 bytes per entry of room, and a compiler that expands
    /// a policy past it would need gigabytes.
    #[must_use]
    pub const fn hard_max(self) -> u32 {
        match self {
            Self::Rules => MAX_RULE_ENTRIES,
            Self::SetHosts => MAX_SET_HOSTS,
            Self::SetPrefixes => MAX_SET_PREFIXES,
            Self::Names => MAX_NAME_KEYS as u32,
            Self::RuleMeta | Self::RuleStats => MAX_RULES,
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
    /// Rules: the slots of the rule action and counter arrays.
    pub rules_listed: u32,
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
            Kind::RuleMeta | Kind::RuleStats => self.rules_listed,
        }
    }

    fn slot(&mut self, kind: Kind) -> &mut u32 {
        match kind {
            Kind::Rules => &mut self.rules,
            Kind::SetHosts => &mut self.set_hosts,
            Kind::SetPrefixes => &mut self.set_prefixes,
            Kind::Names => &mut self.names,
            Kind::RuleMeta | Kind::RuleStats => &mut self.rules_listed,
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
            rules_listed: n(fw.rules.len()),
        }
    }

    /// The room to create a generation's tables with for a policy that needs `need`: each
    /// need with a quarter more, rounded up to a power of two (the hash tables' bucket arrays
    /// are powers of two anyway), at least [`MIN_ROOM`], or `configured` when larger; never
    /// past [`Kind::hard_max`] (a need past it is refused by [`Self::check`]). `configured`
    /// holds 0 for settings not given.
    #[must_use]
    pub fn sized(need: Self, configured: Self) -> Self {
        let mut out = Self::default();
        for kind in Kind::ALL {
            let n = u64::from(need.get(kind));
            let grown = (n + n / 4).max(1).next_power_of_two();
            let room = grown
                .max(u64::from(MIN_ROOM))
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
            rules_listed: 0,
        }
    }

    /// The most a generation may hold of each kind ([`Kind::hard_max`]).
    #[must_use]
    pub fn limits() -> Self {
        let mut out = Self::default();
        for kind in Kind::ALL {
            *out.slot(kind) = kind.hard_max();
        }
        out
    }

    /// The room of generation `generation`'s tables in `ebpf` (0 for a table not created
    /// yet).
    ///
    /// # Errors
    /// When a table's information cannot be read.
    pub fn of_tables(ebpf: &Ebpf, generation: u32) -> Result<Self> {
        let mut out = Self::default();
        for kind in Kind::ALL {
            *out.slot(kind) = match table(ebpf, kind, generation)? {
                Some(t) => room_of(&t, kind)?,
                None => 0,
            };
        }
        Ok(out)
    }

    /// Refuses a policy needing `need` past `room` (the limits of [`Self::limits`]), naming
    /// the first table it overflows.
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

/// A policy one generation cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the policy holds {need} {what} in one generation, but a generation of {map} holds at \
     most {room}; split the policy's lists or sets",
    what = kind.what(),
    map = kind.map(),
)]
pub struct TooBig {
    pub kind: Kind,
    pub need: u32,
    pub room: u32,
}

/// The room of a table of `kind`: its capacity, in entries of `kind` ([`Kind::slots_per_entry`]).
///
/// # Errors
/// When the table's information cannot be read.
pub fn room_of(t: &MapData, kind: Kind) -> Result<u32> {
    let (_, _, _, _, max, _) =
        pin::map_info(t.fd().as_fd()).context("reading a table's capacity")?;
    Ok(max / kind.slots_per_entry())
}

/// The CPUs the kernel may run programs on (`/sys/devices/system/cpu/possible`), read once.
#[must_use]
pub fn possible_cpus() -> u32 {
    static CPUS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        aya::util::nr_cpus()
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
            .max(1)
    })
}

/// Where the daemon pins the tables it creates (its layout's `tables` directory), if it
/// pins: a daemon holding `CAP_BPF` but not `CAP_SYS_ADMIN` cannot open a map by its id, so
/// after a restart it opens the tables by their pins.
static PIN_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Pins every table created from now on under `dir` (created if missing), and looks tables
/// up there first; `None` stops pinning (the tests' and the benchmarks' objects).
///
/// # Errors
/// When the directory cannot be created.
pub fn pin_tables_under(dir: Option<PathBuf>) -> Result<()> {
    if let Some(d) = &dir {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    *PIN_DIR.lock().unwrap_or_else(PoisonError::into_inner) = dir;
    Ok(())
}

fn pin_dir() -> Option<PathBuf> {
    PIN_DIR
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Generation `generation`'s table of `kind`, if one was put in its slot: opened by its pin
/// when one under [`pin_tables_under`]'s directory is that table, else by its id.
///
/// # Errors
/// When the array of tables cannot be read, or the table cannot be opened.
pub fn table(ebpf: &Ebpf, kind: Kind, generation: u32) -> Result<Option<MapData>> {
    slot_table(ebpf, kind.map(), kind.table_name(generation), generation)
}

/// The arrays of tables the daemon fills (the policy's [`Kind`]s, the load balancer's
/// Maglev tables, the indicators' IPv4 /16 arrays and the shields' sketch), each with the
/// names of its slots' tables.
pub fn arrays_of_tables() -> impl Iterator<Item = (&'static str, Vec<&'static str>)> {
    Kind::ALL
        .into_iter()
        .map(|k| (k.map(), vec![k.table_name(0), k.table_name(1)]))
        .chain([
            (crate::lb::RINGS, crate::lb::RING_TABLES.to_vec()),
            (
                crate::intel::load::SLASH16.0,
                crate::intel::load::SLASH16.1.to_vec(),
            ),
            (crate::shield::SKETCH.0, vec![crate::shield::SKETCH.1]),
        ])
}

/// The table in slot `slot` of the array of tables `outer`, if any, named `name` (its pin's
/// name): opened by its pin when one under [`pin_tables_under`]'s directory is that table,
/// else by its id.
///
/// # Errors
/// When the array of tables cannot be read, or the table cannot be opened.
pub fn slot_table(ebpf: &Ebpf, outer: &str, name: &str, slot: u32) -> Result<Option<MapData>> {
    let aya::maps::Map::ArrayOfMaps(outer_map) = maps::map(ebpf, outer)? else {
        anyhow::bail!("{outer} is not an array of tables");
    };
    // The slot holds the table's id (a lookup from userspace returns ids, not maps).
    let mut id = [0u8; 4];
    let key = (slot & 1).to_ne_bytes();
    let found = pin::map_lookup(outer_map.fd().as_fd(), &key, &mut id)
        .with_context(|| format!("reading {outer}'s slot {}", slot & 1))?;
    if !found {
        return Ok(None);
    }
    let id = u32::from_ne_bytes(id);
    if let Some(dir) = pin_dir()
        && let Ok(fd) = pin::obj_get(&dir.join(name))
        && pin::map_info(fd.as_fd()).is_ok_and(|info| info.1 == id)
    {
        return Ok(Some(
            MapData::from_fd(fd).with_context(|| format!("opening {name}"))?,
        ));
    }
    MapData::from_id(id)
        .map(Some)
        .with_context(|| format!("reading {outer}'s table"))
}

/// A new empty table named `name` of `slots` entries, with the kernel's `(map type, key
/// size, value size)` `shape` and `flags`, pinned (when the daemon pins tables) and put in
/// slot `slot` of the array of tables `outer`. `what` describes its room for messages.
///
/// Only for an idle slot: packets read the live one only.
///
/// # Errors
/// When the kernel cannot create the table (memory) or the slot cannot be written.
pub fn new_slot_table(
    ebpf: &mut Ebpf,
    (outer, name, slot): (&str, &'static str, u32),
    shape: (u32, u32, u32),
    flags: u32,
    slots: u32,
    what: impl FnOnce() -> String,
) -> Result<MapData> {
    let fresh = new_table(name, shape, flags, slots, what)?;
    put_in_slot(outer_fd(ebpf, outer)?.as_fd(), (outer, name, slot), &fresh)?;
    Ok(fresh)
}

/// [`new_slot_table`] without the slot: the new table, pinned when the daemon pins tables
/// (before it goes in a slot, so that a restarted daemon always finds a slot's table
/// pinned; the pin of the table it replaces goes).
fn new_table(
    name: &'static str,
    (map_type, key_size, value_size): (u32, u32, u32),
    flags: u32,
    slots: u32,
    what: impl FnOnce() -> String,
) -> Result<MapData> {
    let obj = aya_obj::Map::new_from_params(map_type, key_size, value_size, slots, flags);
    let fresh = MapData::create(obj, name, None)
        .with_context(|| format!("creating {name} with room for {}", what()))?;
    if let Some(dir) = pin_dir() {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        pin::obj_pin(fresh.fd().as_fd(), &path)
            .with_context(|| format!("pinning {}", path.display()))?;
    }
    Ok(fresh)
}

/// A descriptor of the array of tables `outer`, of its own (one that may go to another
/// thread).
///
/// # Errors
/// When the object has no such array of tables.
pub fn outer_fd(ebpf: &Ebpf, outer: &str) -> Result<std::os::fd::OwnedFd> {
    let aya::maps::Map::ArrayOfMaps(m) = maps::map(ebpf, outer)? else {
        anyhow::bail!("{outer} is not an array of tables");
    };
    m.fd()
        .as_fd()
        .try_clone_to_owned()
        .with_context(|| format!("opening {outer}"))
}

/// Puts `table` (named `name`) in slot `slot` of the array of tables `outer` (`fd`, its
/// descriptor). The slot holds its own reference to the table. The kernel returns from the
/// write only after a grace period (no program still reads the table the slot held), some
/// milliseconds.
///
/// # Errors
/// When the slot cannot be written.
pub fn put_in_slot(
    fd: std::os::fd::BorrowedFd<'_>,
    (outer, name, slot): (&str, &str, u32),
    table: &MapData,
) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let table_fd = table.fd().as_fd().as_raw_fd() as u32;
    pin::map_update(fd, &(slot & 1).to_ne_bytes(), &table_fd.to_ne_bytes(), 0)
        .with_context(|| format!("putting {name} in {outer}'s slot {}", slot & 1))
}

/// Empties slot `slot` of the array of tables `outer` (the table in it, named `name`, goes
/// with its pin once nothing holds it). Only for an idle slot.
///
/// # Errors
/// When the slot cannot be written.
pub fn clear_slot_table(ebpf: &mut Ebpf, outer: &str, name: &str, slot: u32) -> Result<()> {
    let aya::maps::Map::ArrayOfMaps(outer_map) = maps::map(ebpf, outer)? else {
        anyhow::bail!("{outer} is not an array of tables");
    };
    let key = (slot & 1).to_ne_bytes();
    // An empty slot stays empty.
    pin::map_delete(outer_map.fd().as_fd(), &key)
        .with_context(|| format!("emptying {outer}'s slot {}", slot & 1))?;
    if let Some(dir) = pin_dir() {
        let _ = std::fs::remove_file(dir.join(name));
    }
    Ok(())
}

/// The array in slot `slot` of the array of tables `outer` (named `name`), of `entries`
/// values of `value_size` bytes: the one in the slot when it has exactly that many entries,
/// else a new, zeroed one put in the slot. `what` describes its room for messages. Only for
/// an idle slot.
///
/// # Errors
/// When the slot cannot be read, or the kernel cannot create the array (memory).
pub fn array_table(
    ebpf: &mut Ebpf,
    (outer, name, slot): (&str, &'static str, u32),
    value_size: u32,
    entries: u32,
    what: impl FnOnce() -> String,
) -> Result<MapData> {
    if let Some(t) = slot_table(ebpf, outer, name, slot)? {
        let (_, _, _, _, held, _) = pin::map_info(t.fd().as_fd())
            .with_context(|| format!("reading the capacity of {name}"))?;
        if held == entries {
            return Ok(t);
        }
    }
    let shape = (
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        value_size,
    );
    new_slot_table(
        ebpf,
        (outer, name, slot),
        shape,
        aya_obj::generated::BPF_F_INNER_MAP,
        entries,
        what,
    )
}

/// The words of one generation of a filter for a room of that many keys.
pub type FilterWords = fn(u32) -> u32;

/// The filter maps (`palisade_common::firewall::KeyFilter`, and the DNS name filter laid
/// out the same way), with the kind of table whose keys each filters and the words a
/// generation gets for a room of that many keys: sized when the daemon creates them, by
/// [`key_filter_sizes`].
pub const KEY_FILTERS: [(&str, Kind, FilterWords); 3] = [
    (
        "FW_RULE_FILTER",
        Kind::Rules,
        palisade_common::firewall::key_filter_words,
    ),
    (
        "FW_SET_FILTER",
        Kind::SetPrefixes,
        palisade_common::firewall::key_filter_words,
    ),
    (
        "DNS_FILTER",
        Kind::Names,
        palisade_common::dns::maps::filter_words,
    ),
];

/// `(map, entries)` of the filter maps for a daemon starting with `policy`: words for the
/// room its first generation's tables get ([`Room::sized`] of what it needs and of the
/// configured capacities). A later policy with more keys fills them more densely (more
/// lookups get through, never a wrong verdict) until the daemon restarts.
///
/// # Errors
/// When the firewall policy does not compile.
pub fn key_filter_sizes(policy: &Policy) -> Result<Vec<(&'static str, u32)>> {
    use palisade_common::firewall::key_filter_entries;
    let fw = crate::firewall::compile::compile(policy).context("compiling the firewall policy")?;
    let mut need = Room::needed(&fw, &CompiledDns::default());
    need.names = u32::try_from(crate::dns::compile::key_bound(&policy.dns)).unwrap_or(u32::MAX);
    let room = Room::sized(need, Room::configured(policy));
    Ok(KEY_FILTERS
        .iter()
        .map(|&(map, kind, words)| (map, key_filter_entries(words(room.get(kind)))))
        .collect())
}

/// The filter maps at the size the object declares: for a daemon whose policy comes later.
///
/// # Errors
/// When the object cannot be parsed.
pub fn key_filter_full_sizes() -> Result<Vec<(&'static str, u32)>> {
    let shapes = crate::loader::map_shapes()?;
    Ok(KEY_FILTERS
        .iter()
        .filter_map(|&(map, _, _)| {
            shapes
                .iter()
                .find(|s| s.name == map)
                .map(|s| (map, s.max_entries))
        })
        .collect())
}

/// Generation `generation`'s tables of the kinds in `wants`, each `(kind, need, room)` with
/// the room [`Room::sized`] gave: the table in the slot when its capacity holds `need` and is
/// at most [`SHRINK_FACTOR`] times `room`, else a new empty table of `room` entries, put in
/// the slot. Returns them in the order of `wants`.
///
/// The new tables go in their slots from threads of their own: every write of an array of
/// tables waits a grace period (some milliseconds), and the waits overlap (a first install
/// creates every table: about 55 ms one after the other on this kind of machine).
///
/// Only for the idle generation: packets read the live one's slot only.
///
/// # Errors
/// When the kernel cannot create a table (memory) or a slot cannot be written; tables made
/// before the error stay in their (idle) slots.
pub fn tables_for(
    ebpf: &Ebpf,
    generation: u32,
    wants: &[(Kind, u32, u32)],
) -> Result<Vec<MapData>> {
    let mut out: Vec<Option<MapData>> = Vec::with_capacity(wants.len());
    let mut fresh = Vec::new();
    for (i, &(kind, need, room)) in wants.iter().enumerate() {
        if let Some(t) = table(ebpf, kind, generation)? {
            let held = room_of(&t, kind)?;
            if held >= need && held / SHRINK_FACTOR <= room {
                out.push(Some(t));
                continue;
            }
        }
        out.push(None);
        fresh.push((i, kind, room, outer_fd(ebpf, kind.map())?));
    }
    let made: Vec<Result<(usize, MapData)>> = std::thread::scope(|s| {
        let threads: Vec<_> = fresh
            .iter()
            .map(|(i, kind, room, fd)| {
                s.spawn(move || -> Result<(usize, MapData)> {
                    let name = kind.table_name(generation);
                    let slots = room.saturating_mul(kind.slots_per_entry());
                    let t = new_table(name, kind.shape(), kind.flags(), slots, || {
                        format!("{room} {}", kind.what())
                    })?;
                    put_in_slot(fd.as_fd(), (kind.map(), name, generation), &t)?;
                    Ok((*i, t))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for m in made {
        let (i, t) = m?;
        out[i] = Some(t);
    }
    out.into_iter()
        .zip(wants)
        .map(|(t, (kind, _, _))| t.with_context(|| format!("no table for {}", kind.what())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A room whose rule arrays are as large as its rule entries (the tests below look at
    /// the hash tables).
    fn room(rules: u32, set_hosts: u32, set_prefixes: u32, names: u32) -> Room {
        Room {
            rules,
            set_hosts,
            set_prefixes,
            names,
            rules_listed: rules,
        }
    }

    #[test]
    fn sizes_have_headroom_a_minimum_and_follow_the_configuration() {
        let none = Room::default();
        let m = MIN_ROOM;
        assert_eq!(Room::sized(none, none), room(m, m, m, m));
        // 1.2M hosts: a quarter more is 1.5M, rounded up to 2^21; 3 rules get the minimum.
        let big = Room::sized(room(3, 1_200_000, 0, 2_500_000), none);
        assert_eq!(big, room(m, 1 << 21, m, 1 << 22));
        // 4000 entries: 5000, rounded up to 8192.
        assert_eq!(Room::sized(room(4000, 0, 0, 0), none).rules, 8192);
        // A configured capacity wins when larger, and is kept as written.
        let configured = Room::sized(room(10, 10, 10, 10), room(0, 3_000_000, 0, 100));
        assert_eq!(configured, room(m, 3_000_000, m, m));
        // Never past the hard maximum, even for a need close to it.
        let near = Room::sized(room(Kind::Rules.hard_max(), 0, 0, 0), none);
        assert_eq!(near.rules, Kind::Rules.hard_max());
    }

    #[test]
    fn a_policy_past_the_limit_is_refused_naming_the_table() {
        let limits = Room::limits();
        assert_eq!(Room::check(room(4096, 1 << 20, 1, 5), limits), Ok(()));
        let e = Room::check(room(1, 1, 1, (1 << 24) + 1), limits).unwrap_err();
        assert_eq!(e.kind, Kind::Names);
        let msg = e.to_string();
        assert!(
            msg.contains("16777217 DNS name entries")
                && msg.contains("DNS_NAMES holds at most 16777216"),
            "{msg}"
        );
        let e = Room::check(room(Kind::Rules.hard_max() + 1, 1, 1, 1), limits).unwrap_err();
        assert_eq!(e.kind, Kind::Rules);
    }

    #[test]
    fn every_table_has_a_kernel_name_of_its_own() {
        let names: std::collections::BTreeSet<&str> = Kind::ALL
            .iter()
            .flat_map(|k| [k.table_name(0), k.table_name(1)])
            .collect();
        assert_eq!(names.len(), 12);
        // The kernel keeps 15 characters of a map's name.
        assert!(names.iter().all(|n| n.len() <= 15), "{names:?}");
    }
}
