//! Carrying tracked flows into new tables: when the configured table sizes change, or when a
//! build with another map layout takes over. Either way the programs that run next use new
//! maps, and every flow the old tables hold is copied into them, so no established flow is
//! lost.
//!
//! The copy runs twice. The first pass fills the new tables before the new programs are
//! attached (the old ones keep running on the old tables meanwhile). The second pass, right
//! after the attachments switched, brings what the old programs changed between the two:
//! flows opened in that window, and entries that moved on. An entry that both the old and the
//! new programs updated (the old ones after the first pass began) keeps the more recent of the
//! two, and a TCP flow among them is followed from then on as a picked-up flow (its windows
//! are learned again, not judged: each side saw segments the other did not).
//!
//! Old tables are reached through their pins: this layout's pins of a different size are
//! renamed `carry-<MAP>` (so a start interrupted half-way finds them again), and the tables
//! of other layouts are read where they are (their directory is removed after the attach).

use std::{
    fs,
    mem::size_of,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::Ebpf;
use palisade_common::{
    conntrack::{CtConfig, CtEntry, CtKey, ENTRY_PICKUP, ENTRY_VERSION, convert_entry},
    packet::IPPROTO_TCP,
};

use crate::pin::{self, Layout};

/// The resizable tables: map name and what sets its size.
pub const TABLES: [(&str, Table); 2] =
    [("CT_EST", Table::Validated), ("CT_NEW", Table::Unvalidated)];
/// The map holding the tracker's settings (and the entry version its tables hold).
const CONFIG_MAP: &str = "CT_CONFIG";
/// Prefix of a renamed pin waiting to be carried over.
const CARRY_PREFIX: &str = "carry-";

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `CT_EST`: validated flows (`[conntrack] max_entries`).
    Validated,
    /// `CT_NEW`: flows not validated yet (`[conntrack] max_unvalidated`).
    Unvalidated,
}

/// The sizes of the two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub validated: u32,
    pub unvalidated: u32,
}

impl Sizes {
    /// The sizes `policy`'s `[conntrack]` asks for.
    #[must_use]
    pub const fn of_policy(policy: &crate::policy::model::Policy) -> Self {
        Self {
            validated: policy.conntrack.max_entries,
            unvalidated: policy.conntrack.max_unvalidated,
        }
    }

    #[must_use]
    pub const fn of(&self, t: Table) -> u32 {
        match t {
            Table::Validated => self.validated,
            Table::Unvalidated => self.unvalidated,
        }
    }
}

/// An old table to copy from.
pub struct Source {
    table: Table,
    fd: OwnedFd,
    /// The pin to remove once carried (a renamed pin of this layout); `None` for the tables
    /// of another layout, removed with their directory.
    pin: Option<PathBuf>,
    /// Entry layout version of the build that wrote it.
    version: u32,
    value_size: usize,
    key_size: usize,
    /// Where it came from, for notes.
    origin: String,
}

/// What a copy pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Entries written into the new tables.
    pub copied: u64,
    /// Entries the new tables already held in a newer state.
    pub kept: u64,
    /// Entries that did not fit (the new table is full).
    pub full: u64,
    /// Entries of a layout this build cannot read.
    pub unreadable: u64,
    /// TCP flows updated on both sides of the switch, followed as picked up from now on.
    pub loosened: u64,
}

impl Copied {
    /// ", N did not fit, M unreadable" when any flow was lost; empty otherwise.
    #[must_use]
    pub fn lost_note(&self) -> String {
        let mut s = String::new();
        if self.full > 0 {
            s.push_str(&format!(", {} did not fit the new table (lost)", self.full));
        }
        if self.unreadable > 0 {
            s.push_str(&format!(
                ", {} of an entry layout this build cannot read (lost)",
                self.unreadable
            ));
        }
        s
    }
}

/// The pinned tables of this layout whose size differs from `sizes`, renamed aside, and any
/// left over from an interrupted start. Refuses, changing nothing, when the validated flows
/// tracked now would not fit the new size.
///
/// # Errors
/// When a pin cannot be read or renamed, or the flows do not fit.
pub fn take_resized(layout: &Layout, sizes: Sizes) -> Result<Vec<Source>> {
    let version = config_version(&layout.map(CONFIG_MAP));
    let mut to_move = Vec::new();
    for (name, table) in TABLES {
        let path = layout.map(name);
        let Ok(fd) = pin::obj_get(&path) else {
            continue;
        };
        let (_, _, _, _, max, _) = pin::map_info(fd.as_fd())
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        let want = sizes.of(table);
        if max == want {
            continue;
        }
        if table == Table::Validated {
            let held = count(&fd).with_context(|| format!("counting {}", path.display()))?;
            if held > u64::from(want) {
                bail!(
                    "[conntrack] max_entries = {want} is smaller than the {held} validated flows tracked now: raise it, or flush connections (`palisade ct flush`) first"
                );
            }
        }
        to_move.push((name, table, path));
    }
    for (name, _, path) in &to_move {
        let aside = carry_pin(layout, name);
        fs::rename(path, &aside)
            .with_context(|| format!("moving {} aside to resize it", path.display()))?;
    }
    let mut out = Vec::new();
    for (name, table) in TABLES {
        let aside = carry_pin(layout, name);
        if let Ok(fd) = pin::obj_get(&aside) {
            out.push(source(
                table,
                fd,
                Some(aside),
                version,
                format!("{name} (resized)"),
            )?);
        }
    }
    Ok(out)
}

/// The tables of other layouts (builds) under the pin root, read in place.
///
/// # Errors
/// When a pinned table cannot be inspected.
pub fn take_foreign(layout: &Layout) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for dir in layout.foreign_layouts() {
        let maps = dir.join("maps");
        let version = config_version(&maps.join(CONFIG_MAP));
        let label = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        for (name, table) in TABLES {
            if let Ok(fd) = pin::obj_get(&maps.join(name)) {
                out.push(source(
                    table,
                    fd,
                    None,
                    version,
                    format!("{name} of {label}"),
                )?);
            }
        }
    }
    Ok(out)
}

/// Copies every entry of `sources` into the new tables of `ebpf`. `since` is `None` for the
/// first pass, and for the second the time ([`now_ns`]) the first pass began.
///
/// # Errors
/// When a new table cannot be opened.
pub fn copy(sources: &[Source], ebpf: &Ebpf, since: Option<u64>) -> Result<Copied> {
    let fd_of = |name: &str| -> Result<OwnedFd> {
        let (aya::maps::Map::HashMap(m) | aya::maps::Map::LruHashMap(m)) = ebpf
            .map(name)
            .with_context(|| format!("the kernel object has no {name} map"))?
        else {
            bail!("{name} is not a hash map");
        };
        Ok(m.fd().as_fd().try_clone_to_owned()?)
    };
    let est = fd_of("CT_EST")?;
    let new = fd_of("CT_NEW")?;
    let mut done = Copied::default();
    for s in sources {
        let into = match s.table {
            Table::Validated => &est,
            Table::Unvalidated => &new,
        };
        copy_one(s, (into, &est), since, &mut done)?;
    }
    Ok(done)
}

/// Removes the renamed pins once their flows are carried (the maps go with their last fd).
pub fn release(sources: Vec<Source>) -> Vec<String> {
    let mut notes = Vec::new();
    for s in sources {
        if let Some(p) = &s.pin
            && let Err(e) = fs::remove_file(p)
        {
            notes.push(format!("could not remove {}: {e}", p.display()));
        }
    }
    notes
}

/// Describes the sources for a note.
#[must_use]
pub fn describe(sources: &[Source]) -> String {
    sources
        .iter()
        .map(|s| s.origin.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn copy_one(
    s: &Source,
    (into, est): (&OwnedFd, &OwnedFd),
    since: Option<u64>,
    done: &mut Copied,
) -> Result<()> {
    let mut value = vec![0u8; s.value_size];
    let mut have = vec![0u8; size_of::<CtEntry>()];
    let keys = pin::map_keys(s.fd.as_fd()).with_context(|| format!("walking {}", s.origin))?;
    for key in keys.chunks_exact(s.key_size.max(1)) {
        if !pin::map_lookup(s.fd.as_fd(), key, &mut value)? {
            continue;
        }
        if s.key_size != size_of::<CtKey>() {
            done.unreadable += 1;
            continue;
        }
        let Some(mut entry) = convert_entry(s.version, &value) else {
            done.unreadable += 1;
            continue;
        };
        // SAFETY: the key size was checked; a plain-data key.
        let k: CtKey = unsafe { std::ptr::read_unaligned(key.as_ptr().cast()) };
        if s.table == Table::Unvalidated && pin::map_lookup(est.as_fd(), key, &mut have)? {
            // Validated since, by the new programs.
            done.kept += 1;
            continue;
        }
        if pin::map_lookup(into.as_fd(), key, &mut have)? {
            // SAFETY: `have` holds a whole entry read from a table of this build.
            let cur: CtEntry = unsafe { std::ptr::read_unaligned(have.as_ptr().cast()) };
            let current = match since {
                // Before the switch the old tables are the truth. (Timestamps cannot tell:
                // the coarse clock gives updates within one tick the same time.)
                None => false,
                // After it, only an old entry that may have moved on since the refresh
                // matters; one stamped in the refresh's own tick may have, and the
                // datapath's stamps may lag the clock, so those count too.
                Some(t) => entry.last_ns < t.saturating_sub(STAMP_LAG_NS),
            };
            if current {
                done.kept += 1;
                continue;
            }
            if since.is_some() {
                // Both sides updated it: the more recent wins, and TCP windows are learned
                // anew.
                if cur.last_ns > entry.last_ns {
                    entry = cur;
                }
                if k.proto == IPPROTO_TCP && entry.flags & ENTRY_PICKUP == 0 {
                    entry.flags |= ENTRY_PICKUP;
                    done.loosened += 1;
                }
            }
        }
        // SAFETY: a plain-data entry, written as its bytes.
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts((&raw const entry).cast::<u8>(), size_of::<CtEntry>())
        };
        match pin::map_update(into.as_fd(), key, bytes, 0) {
            Ok(()) => done.copied += 1,
            Err(e) if e.raw_os_error() == Some(libc::E2BIG) => done.full += 1,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("copying into the new table from {}", s.origin));
            }
        }
    }
    Ok(())
}

fn source(
    table: Table,
    fd: OwnedFd,
    pin: Option<PathBuf>,
    version: u32,
    origin: String,
) -> Result<Source> {
    let (_, _, key, value, _, _) =
        pin::map_info(fd.as_fd()).with_context(|| format!("inspecting {origin}"))?;
    Ok(Source {
        table,
        fd,
        pin,
        version,
        value_size: value as usize,
        key_size: key as usize,
        origin,
    })
}

/// Entries in a table (walked).
fn count(fd: &OwnedFd) -> Result<u64> {
    let key_size = pin::map_info(fd.as_fd())?.2.max(1) as usize;
    Ok((pin::map_keys(fd.as_fd())?.len() / key_size) as u64)
}

/// The entry version recorded in a pinned `CT_CONFIG`; this build's when it holds none
/// (a tracker never configured wrote no entries of another version).
fn config_version(path: &Path) -> u32 {
    let Ok(fd) = pin::obj_get(path) else {
        return ENTRY_VERSION;
    };
    // Builds append settings to the record, so its size differs between them; the version
    // has kept its place.
    let at = std::mem::offset_of!(CtConfig, version);
    let size = match pin::map_info(fd.as_fd()) {
        Ok((_, _, 4, v, _, _)) if v as usize >= at + 4 && v <= 4096 => v as usize,
        _ => return ENTRY_VERSION,
    };
    let mut value = vec![0u8; size];
    let key = 0u32.to_ne_bytes();
    if !matches!(pin::map_lookup(fd.as_fd(), &key, &mut value), Ok(true)) {
        return ENTRY_VERSION;
    }
    match u32::from_ne_bytes([value[at], value[at + 1], value[at + 2], value[at + 3]]) {
        0 => ENTRY_VERSION,
        v => v,
    }
}

/// How far the datapath's stamps may lag the coarse clock: each CPU keeps the clock's value
/// for the tick it read it in (`now` in `palisade-ebpf/src/ct/mod.rs`), which a read racing
/// the tick's update leaves a tick behind. Five ticks at the lowest `HZ` (100).
pub const STAMP_LAG_NS: u64 = 50_000_000;

/// The tracker's clock (`bpf_ktime_get_coarse_ns`), as userspace reads it.
#[must_use]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn carry_pin(layout: &Layout, name: &str) -> PathBuf {
    layout.dir().join(format!("{CARRY_PREFIX}{name}"))
}
