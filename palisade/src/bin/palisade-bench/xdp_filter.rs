//! xdp-filter (xdp-tools), the reference filter: loaded by its own command on a veth end in a
//! private namespace and given a blocklist of IPv4 source addresses. The live suite sends
//! frames through it; the test-run suite runs its program under `BPF_PROG_TEST_RUN` next to
//! Palisade's, with the same kind of packets, in the same rounds.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    maps::{Map, MapData, PerCpuHashMap, PerCpuValues},
    programs::Xdp,
};
use aya_obj::programs::XdpAttachType;

use crate::{
    live::tools::{have, ns_run},
    netns::Netns,
};

/// Where xdp-filter pins its maps and programs.
const PIN_DIR: &str = "/sys/fs/bpf/xdp-filter";
/// Its IPv4 address map: a per-CPU hash keyed by the address (network order), valued by the
/// match modes (source, destination) and a hit counter.
const IPV4_MAP: &str = "/sys/fs/bpf/xdp-filter/filter_ipv4";
/// The directory of the program it attached to an interface (`programs/IFNAME/NAME`).
const PROGRAMS: &str = "/sys/fs/bpf/xdp-filter/programs";

/// Entries in xdp-filter's `filter_ipv4` map (xdp-tools 1.x); [`load`] checks the map the
/// tool actually created.
pub const CAPACITY: usize = 10_000;

/// Why xdp-filter cannot be measured here, if it cannot.
#[must_use]
pub fn unavailable() -> Option<String> {
    if !have("xdp-filter") {
        return Some("xdp-filter (Debian package xdp-tools) is not installed".into());
    }
    if Path::new(PIN_DIR).exists() {
        return Some(format!(
            "{PIN_DIR} exists: xdp-filter is in use on this host, or a run was killed before \
             it could unload it (`xdp-filter unload --all` removes it)"
        ));
    }
    None
}

/// Loads xdp-filter on `ifname` in `ns` in native mode with its allow policy and only its
/// IPv4 feature (the listed sources are dropped, everything else passes), and lists `list`
/// as source addresses. On failure, whatever was loaded is unloaded again.
///
/// # Errors
/// When xdp-filter is missing or in use ([`unavailable`]), fails, or cannot hold the list.
pub fn load(ns: &Netns, ifname: &str, list: &[Ipv4Addr]) -> Result<()> {
    if let Some(why) = unavailable() {
        bail!("{why}");
    }
    ns_run(
        ns,
        "xdp-filter",
        &["load", ifname, "-m", "native", "-p", "allow", "-f", "ipv4"],
        None,
    )?;
    let filled = fill(ns, list);
    if filled.is_err() {
        unload(ns, ifname);
    }
    filled
}

/// Lists the addresses: the first through xdp-filter's own command, the others written into
/// its map with the value the command wrote for the first (one map update per address, as
/// the command makes, without a process per address: 10k addresses take well under a second
/// instead of about 17 s).
fn fill(ns: &Netns, list: &[Ipv4Addr]) -> Result<()> {
    let Some(first) = list.first() else {
        return Ok(());
    };
    let data = MapData::from_pin(IPV4_MAP).map_err(|e| anyhow!("opening {IPV4_MAP}: {e}"))?;
    let capacity = data
        .info()
        .map(|i| i.max_entries() as usize)
        .map_err(|e| anyhow!("reading {IPV4_MAP}: {e}"))?;
    if list.len() > capacity {
        bail!(
            "xdp-filter's filter_ipv4 holds {capacity} entries, {} asked",
            list.len()
        );
    }
    ns_run(
        ns,
        "xdp-filter",
        &["ip", "-m", "src", &first.to_string()],
        None,
    )?;
    let mut map: PerCpuHashMap<MapData, u32, u64> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(data)).context("filter_ipv4")?;
    let key = |a: &Ipv4Addr| u32::from_ne_bytes(a.octets());
    let value: Vec<u64> = map
        .get(&key(first), 0)
        .with_context(|| format!("reading back {first} from {IPV4_MAP}"))?
        .iter()
        .copied()
        .collect();
    for a in &list[1..] {
        let values = PerCpuValues::try_from(value.clone()).context("per-CPU value")?;
        map.insert(key(a), values, 0)
            .with_context(|| format!("listing {a} in {IPV4_MAP}"))?;
    }
    Ok(())
}

/// The program xdp-filter attached to `ifname` (it pins it), to run it under test.
///
/// # Errors
/// When it is not there or cannot be opened.
pub fn program(ifname: &str) -> Result<(String, Xdp)> {
    let dir = PathBuf::from(PROGRAMS).join(ifname);
    let path = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .next()
        .ok_or_else(|| anyhow!("no program pinned in {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prog = Xdp::from_pin(&path, XdpAttachType::Interface)
        .map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
    Ok((name, prog))
}

/// Unloads xdp-filter from `ifname` (which also removes its pins once no interface is
/// left). Errors are ignored: after a failed load there may be nothing to unload.
pub fn unload(ns: &Netns, ifname: &str) {
    let _ = ns_run(ns, "xdp-filter", &["unload", ifname], None);
}

/// xdp-filter loaded with a blocklist on a veth end of a namespace of its own, its program
/// ready to run under test; unloaded and removed when dropped.
pub struct Reference {
    ns: Netns,
    /// The name of the program xdp-filter chose for its features (`xdpfilt_alw_ip`).
    pub program_name: String,
}

/// The interface xdp-filter is attached to in the reference's namespace.
const REF_IF: &str = "xf0";

impl Reference {
    /// Sets it up with `list` and returns the program to run.
    ///
    /// # Errors
    /// When the namespace, the interface, xdp-filter or its program cannot be had.
    pub fn new(list: &[Ipv4Addr]) -> Result<(Self, Xdp)> {
        let ns = Netns::create("xdpfilter")?;
        ns.ip(&["link", "add", REF_IF, "type", "veth", "peer", "name", "xf1"])?;
        ns.ip(&["link", "set", REF_IF, "up"])?;
        ns.ip(&["link", "set", "xf1", "up"])?;
        load(&ns, REF_IF, list)?;
        match program(REF_IF) {
            Ok((program_name, prog)) => Ok((Self { ns, program_name }, prog)),
            Err(e) => {
                unload(&ns, REF_IF);
                Err(e)
            }
        }
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        unload(&self.ns, REF_IF);
    }
}
