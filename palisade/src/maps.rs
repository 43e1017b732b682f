//! Looking up the kernel maps by name, with errors that say which map is missing.

use anyhow::{Result, anyhow};
use aya::{Ebpf, maps::Map};

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
