//! Looking up the kernel maps by name, with errors that say which map is missing.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, BorrowedFd},
};

use anyhow::{Result, anyhow};
use aya::{
    Ebpf,
    maps::{Map, MapData},
};

use crate::{keyhash::KeyHash, pin};

/// The map called `name`.
///
/// # Errors
/// When the loaded object has no such map (a build mismatch).
pub fn map<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Map> {
    ebpf.map(name)
        .ok_or_else(|| anyhow!("kernel object has no map {name}"))
}

/// The map called `name`, writable.
///
/// # Errors
/// When the loaded object has no such map (a build mismatch).
pub fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("kernel object has no map {name}"))
}

/// The kernel object behind a map of the kinds the policy is written to.
///
/// # Errors
/// For a map of another kind.
pub fn data(m: &Map) -> Result<&MapData> {
    match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d) => Ok(d),
        _ => Err(anyhow!("map of an unexpected kind for batch operations")),
    }
}

/// The kernel object behind the map called `name` (see [`data`]).
///
/// # Errors
/// When there is no such map, or it is of another kind.
pub fn data_of<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a MapData> {
    data(map(ebpf, name)?)
}

/// Entries per batch syscall: large enough that the syscalls cost nothing next to the work,
/// small enough that one call does not hold the CPU for long.
const BATCH: usize = 65_536;

fn fd(map: &MapData) -> BorrowedFd<'_> {
    map.fd().as_fd()
}

/// The bytes of a slice of plain map data.
fn bytes<T: aya::Pod>(v: &[T]) -> &[u8] {
    // SAFETY: `T` is plain data without padding bytes (`map_type!`), so every byte of the
    // slice is initialised.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), size_of_val(v)) }
}

/// Writes `keys[i] -> values[i]` for every `i` with `BPF_MAP_UPDATE_BATCH`, many entries per
/// syscall. `K` and `V` must be the map's key and value types (plain data of its sizes). For
/// a per-CPU map, `values` holds one value per CPU for each key, one key's after another
/// (`V` must then be a multiple of 8 bytes, as the kernel lays them out).
///
/// # Errors
/// When the kernel refuses a batch (a full map: `E2BIG`); the entries before it are written.
pub fn update_batch<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let per_key = values.len() / keys.len();
    anyhow::ensure!(
        per_key > 0 && values.len() == keys.len() * per_key,
        "a value (or one per CPU) for every key"
    );
    for (k, v) in keys.chunks(BATCH).zip(values.chunks(BATCH * per_key)) {
        pin::map_update_batch(fd(map), bytes(k), bytes(v), k.len())
            .map_err(|e| anyhow!("writing {} map entries: {e}", k.len()))?;
    }
    Ok(())
}

/// Deletes `keys` with `BPF_MAP_DELETE_BATCH` (a key already gone is skipped).
///
/// # Errors
/// When the kernel refuses the batch.
pub fn delete_batch<K: aya::Pod>(map: &MapData, keys: &[K]) -> Result<()> {
    pin::map_delete_batch(fd(map), bytes(keys), size_of::<K>())
        .map_err(|e| anyhow!("deleting {} map entries: {e}", keys.len()))?;
    Ok(())
}

/// What [`sync_batch`] did to a map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    /// Entries that already held the wanted value and were left alone.
    pub kept: usize,
    /// Entries written: missing, or holding another value.
    pub written: usize,
    /// Entries deleted: held but not wanted.
    pub deleted: usize,
}

/// Makes the entries of `map` (a hash map, or the LPM trie, whose batch operations the kernel
/// runs key by key) that `mine` picks exactly `keys[i] -> values[i]` (`K`, `V` the map's key
/// and value types; not for per-CPU maps). The entries it holds are
/// read many at a time (`BPF_MAP_LOOKUP_BATCH`); those not wanted are deleted first, so the
/// map never holds more of them than the larger of the old and the new set, then the missing
/// ones and those with another value are written (`BPF_MAP_UPDATE_BATCH`). An entry that
/// already holds its value is not touched: writing a policy into a generation that holds
/// a similar one costs what differs, not what it holds.
///
/// # Errors
/// When the kernel refuses a batch. The entries are then part old, part new; a later call
/// makes them whole again, since it starts from what the map holds.
pub fn sync_batch<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    mine: impl Fn(&K) -> bool,
    keys: &[K],
    values: &[V],
) -> Result<Synced> {
    anyhow::ensure!(keys.len() == values.len(), "a value for every key");
    let (ks, vs) = (size_of::<K>(), size_of::<V>());
    // What the map holds of `mine`, as bytes: one key after the other, and their values.
    let (mut held_keys, mut held_values) = (Vec::new(), Vec::new());
    pin::map_chunks_batch(fd(map), ks, vs, BATCH as u32, |k, v| {
        for (k, v) in k.chunks_exact(ks).zip(v.chunks_exact(vs)) {
            // SAFETY: each chunk holds the bytes of one key, written by the kernel.
            if mine(&unsafe { std::ptr::read_unaligned(k.as_ptr().cast::<K>()) }) {
                held_keys.extend_from_slice(k);
                held_values.extend_from_slice(v);
            }
        }
    })
    .map_err(|e| anyhow!("reading map entries: {e}"))?;
    let (key_bytes, value_bytes) = (bytes(keys), bytes(values));
    let mut out = Synced::default();
    if held_keys.is_empty() {
        // Nothing of `mine` held (a new table, a first install): every entry is written
        // straight from the caller's lists, without a table of what is held or a copy.
        out.written = keys.len();
        write_batches(map, (ks, vs), key_bytes, value_bytes)?;
        return Ok(out);
    }
    let mut held: HashMap<&[u8], &[u8], KeyHash> =
        HashMap::with_capacity_and_hasher(held_keys.len() / ks.max(1), KeyHash);
    held.extend(held_keys.chunks_exact(ks).zip(held_values.chunks_exact(vs)));
    let (mut new_keys, mut new_values) = (Vec::new(), Vec::new());
    for (k, v) in key_bytes.chunks_exact(ks).zip(value_bytes.chunks_exact(vs)) {
        match held.remove(k) {
            Some(old) if old == v => out.kept += 1,
            _ => {
                new_keys.extend_from_slice(k);
                new_values.extend_from_slice(v);
            }
        }
    }
    let gone: Vec<u8> = held.into_keys().flatten().copied().collect();
    out.deleted = gone.len() / ks.max(1);
    if !gone.is_empty() {
        pin::map_delete_batch(fd(map), &gone, ks)
            .map_err(|e| anyhow!("deleting {} map entries: {e}", out.deleted))?;
    }
    out.written = new_keys.len() / ks.max(1);
    write_batches(map, (ks, vs), &new_keys, &new_values)?;
    Ok(out)
}

/// Writes `keys` and `values` (the bytes of whole keys and values of sizes `(ks, vs)`) into
/// `map` with `BPF_MAP_UPDATE_BATCH`, [`BATCH`] entries a call; from two threads at once
/// for more than two batches (the kernel's work per entry dominates, and the hash map locks
/// per bucket).
///
/// # Errors
/// When the kernel refuses a batch.
fn write_batches(
    map: &MapData,
    (ks, vs): (usize, usize),
    keys: &[u8],
    values: &[u8],
) -> Result<()> {
    let write = |keys: &[u8], values: &[u8]| -> Result<()> {
        for (k, v) in keys.chunks(BATCH * ks).zip(values.chunks(BATCH * vs)) {
            pin::map_update_batch(fd(map), k, v, k.len() / ks)
                .map_err(|e| anyhow!("writing {} map entries: {e}", k.len() / ks))?;
        }
        Ok(())
    };
    let count = keys.len() / ks.max(1);
    if count < 2 * BATCH {
        return write(keys, values);
    }
    let half = count / 2;
    let (k1, k2) = keys.split_at(half * ks);
    let (v1, v2) = values.split_at(half * vs);
    std::thread::scope(|s| {
        let other = s.spawn(|| write(k2, v2));
        let mine = write(k1, v1);
        other
            .join()
            .map_err(|_| anyhow!("a map writing thread panicked"))?
            .and(mine)
    })
}

/// The keys of a hash map (`K`, `V` its key and value types) that `keep` picks, read many at
/// a time with `BPF_MAP_LOOKUP_BATCH` instead of one `get_next_key` syscall per key; only the
/// kept keys are held.
///
/// # Errors
/// When the kernel refuses the lookup.
pub fn keys_batch<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    keep: impl Fn(&K) -> bool,
) -> Result<Vec<K>> {
    let mut kept = Vec::new();
    pin::map_chunks_batch(
        fd(map),
        size_of::<K>(),
        size_of::<V>(),
        BATCH as u32,
        |keys, _| {
            kept.extend(
                keys.chunks_exact(size_of::<K>())
                    // SAFETY: each chunk holds the bytes of one key, written by the kernel.
                    .map(|k| unsafe { std::ptr::read_unaligned(k.as_ptr().cast::<K>()) })
                    .filter(|k| keep(k)),
            );
        },
    )
    .map_err(|e| anyhow!("reading map keys: {e}"))?;
    Ok(kept)
}
