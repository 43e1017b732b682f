//! Looking up the kernel maps by name, with errors that say which map is missing.

use std::os::fd::{AsFd as _, BorrowedFd};

use anyhow::{Result, anyhow};
use aya::{
    Ebpf,
    maps::{Map, MapData},
};

use crate::pin;

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
