//! Loads Palisade's kernel object (embedded in this binary at build time).

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader};

/// The BPF object built from `palisade-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade"));

/// Loads the object into the kernel (maps created, programs not yet verified).
///
/// # Errors
/// When not running with the needed privileges, or the kernel lacks a required feature.
pub fn load() -> Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!("this build has no kernel programs (it was built with AYA_BUILD_SKIP)");
    }
    check_privileges()?;
    raise_memlock();
    EbpfLoader::new().load(OBJECT).context(
        "loading the kernel object failed; Palisade needs root (or CAP_BPF, CAP_NET_ADMIN and \
         CAP_PERFMON) and a kernel with BPF, BTF and ring buffers (5.8 or newer)",
    )
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
