//! Loads Palisade's kernel object (embedded in this binary at build time).

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader};

use crate::{
    conntrack::carry::{self, Sizes},
    kernel,
    pin::{self, Layout, MapShape},
};

/// The read-only global telling the programs whether XDP metadata is available
/// (`kernel::xdp_metadata`).
const XDP_META_GLOBAL: &str = "PALISADE_XDP_META";

/// The value of [`XDP_META_GLOBAL`] for this kernel.
fn features() -> u32 {
    u32::from(kernel::xdp_metadata())
}

/// The BPF object built from `palisade-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade"));

/// Loads the object into the kernel (maps created, programs not yet verified).
///
/// # Errors
/// When not running with the needed privileges, or the kernel lacks a required feature.
pub fn load() -> Result<Ebpf> {
    load_sized(&[])
}

/// [`load`], with some maps created with another capacity than the object declares
/// (`(map name, max_entries)`).
///
/// # Errors
/// As [`load`].
pub fn load_sized(sizes: &[(&str, u32)]) -> Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!("this build has no kernel programs (it was built with AYA_BUILD_SKIP)");
    }
    kernel::check()?;
    check_privileges()?;
    raise_memlock();
    let mut loader = EbpfLoader::new();
    let meta = features();
    loader.override_global(XDP_META_GLOBAL, &meta, true);
    for &(name, n) in sizes {
        loader.map_max_entries(name, n);
    }
    loader.load(OBJECT).context(
        "loading the kernel object failed; Palisade needs root (or CAP_BPF, CAP_NET_ADMIN and \
         CAP_PERFMON) and a kernel with BPF and BTF (Linux 6.6 or newer)",
    )
}

/// The shape of every map the object defines, as the layout hash sees it: parsed from the
/// object once (a start asks several times: the layout, the pins, the engines' sizes).
///
/// # Errors
/// When the embedded object cannot be parsed (a broken build).
pub fn map_shapes() -> Result<Vec<MapShape>> {
    static SHAPES: std::sync::OnceLock<Vec<MapShape>> = std::sync::OnceLock::new();
    if let Some(s) = SHAPES.get() {
        return Ok(s.clone());
    }
    let shapes = parse_map_shapes()?;
    Ok(SHAPES.get_or_init(|| shapes).clone())
}

fn parse_map_shapes() -> Result<Vec<MapShape>> {
    if OBJECT.is_empty() {
        bail!("this build has no kernel programs (it was built with AYA_BUILD_SKIP)");
    }
    let obj = aya_obj::Object::parse(OBJECT).context("parsing the embedded kernel object")?;
    let mut shapes: Vec<MapShape> = obj
        .maps
        .iter()
        .map(|(name, m)| MapShape {
            name: name.clone(),
            map_type: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: m.max_entries(),
            flags: m.map_flags(),
        })
        .collect();
    shapes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(shapes)
}

/// A hash of the embedded object: programs pinned by another build are not reused.
#[must_use]
pub fn build_id() -> String {
    format!("{:016x}", pin::fnv64(OBJECT))
}

/// The pin layout of this build under `root`.
///
/// # Errors
/// When the object cannot be parsed.
pub fn layout(root: PathBuf) -> Result<Layout> {
    Ok(Layout {
        layout_id: pin::layout_id(&map_shapes()?),
        build_id: build_id(),
        root,
    })
}

/// What [`load_pinned`] found.
pub struct Pinned {
    pub ebpf: Ebpf,
    /// Maps that were not pinned yet and were created now.
    pub created: Vec<String>,
    /// Maps reused from their pins.
    pub reused: Vec<String>,
}

/// Loads the object with every shared map pinned under `layout`: a map already pinned there
/// is reused as it is (contents, counters, ring buffer and all), a missing one is created and
/// pinned (the connection tracking tables with `sizes`).
///
/// # Errors
/// As [`load`], or when a pin cannot be created.
pub fn load_pinned(
    layout: &Layout,
    sizes: Sizes,
    intel: crate::intel::load::Sizes,
    dns_cache: u32,
    engines: &[(&'static str, u32)],
) -> Result<Pinned> {
    if OBJECT.is_empty() {
        bail!("this build has no kernel programs (it was built with AYA_BUILD_SKIP)");
    }
    kernel::check()?;
    check_privileges()?;
    raise_memlock();
    layout.create_dirs()?;
    let names: Vec<String> = map_shapes()?
        .into_iter()
        .map(|s| s.name)
        .filter(|n| pin::is_pinned_map(n))
        .collect();
    let (reused, created): (Vec<String>, Vec<String>) =
        names.iter().cloned().partition(|n| layout.map(n).exists());
    let paths: Vec<(String, PathBuf)> = names.iter().map(|n| (n.clone(), layout.map(n))).collect();
    let mut loader = EbpfLoader::new();
    let meta = features();
    loader.override_global(XDP_META_GLOBAL, &meta, true);
    for (name, path) in &paths {
        loader.map_pin_path(name.as_str(), path.as_path());
    }
    for (name, n) in capacities(sizes, intel, dns_cache, engines) {
        loader.map_max_entries(name, n);
    }
    let ebpf = loader.load(OBJECT).context(
        "loading the kernel object failed; Palisade needs root (or CAP_BPF, CAP_NET_ADMIN and \
         CAP_PERFMON) and a kernel with BPF and BTF (Linux 6.6 or newer)",
    )?;
    Ok(Pinned {
        ebpf,
        created,
        reused,
    })
}

/// `(map name, max_entries)` of every map the daemon sizes from the configuration when it
/// loads the object, used when a map is created (a pinned one is reused as it is). The
/// policy tables are sized at each install instead (`capacity`).
#[must_use]
pub fn capacities(
    sizes: Sizes,
    intel: crate::intel::load::Sizes,
    dns_cache: u32,
    engines: &[(&'static str, u32)],
) -> Vec<(&'static str, u32)> {
    // The tracking tables; pinned ones of another size were moved aside by
    // `conntrack::carry::take_resized`.
    let mut out: Vec<(&'static str, u32)> = carry::TABLES
        .iter()
        .map(|&(name, table)| (name, sizes.of(table)))
        .collect();
    // The indicator maps, sized by `[intel]`; pins of another size were removed by
    // `intel::load::drop_resized`.
    out.extend(intel.for_loader());
    // The DNS response cache, sized by `[dns.cache] capacity`; a pin of another size was
    // removed by `dns::cache::drop_resized`.
    out.push((crate::dns::cache::MAP, dns_cache));
    // The engines' state maps, by use, and the key filters, by the policy's keys; pins of
    // another size were removed by `capacity::engines::drop_resized`.
    out.extend_from_slice(engines);
    out
}

/// [`capacities`] as a daemon starting with `policy` sizes the maps: what the benchmarks
/// load to measure the memory a policy pins.
///
/// # Errors
/// When the embedded object cannot be parsed.
pub fn capacities_of(policy: &crate::policy::model::Policy) -> Result<Vec<(&'static str, u32)>> {
    let mut sized = crate::capacity::engines::sizes_for(policy)?;
    sized.extend(crate::capacity::key_filter_sizes(policy)?);
    Ok(capacities(
        Sizes::of_policy(policy),
        policy.intel.sizes(),
        crate::dns::cache::capacity(policy.dns.cache.as_ref()),
        &sized,
    ))
}

fn check_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 && !has_cap_bpf() {
        bail!(
            "Palisade must run as root (or with CAP_BPF and CAP_NET_ADMIN) to load its kernel programs"
        );
    }
    Ok(())
}

/// Whether the effective capability set holds CAP_BPF (39), read from /proc.
fn has_cap_bpf() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 39) != 0)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so big policies load there.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct; failure only matters on old kernels and is reported there
    // by the load error itself.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}
