//! The oldest kernel Palisade runs on, checked before any program is loaded so that an old
//! kernel gets one clear message instead of a verifier or attach error.

use std::{ffi::CStr, fmt};

use anyhow::{Result, bail};

/// A kernel release as `uname -r` prints it, reduced to its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The oldest release with everything the programs and the loader use.
pub const MINIMUM: Release = Release {
    major: 6,
    minor: 6,
    patch: 0,
};

/// What needs [`MINIMUM`], newest first: the features that set the floor.
pub const NEEDS: &str = "tcx links for the egress connection tracker and the scrub (6.6), \
                         the sending process's name and ids in cgroup programs (6.1), \
                         bpf_xdp_load_bytes (5.18), bpf_loop (5.17), bpf_for_each_map_elem \
                         (5.13), bpf_ktime_get_coarse_ns (5.11) and ring buffers (5.8)";

/// The numbers at the start of `release` (`6.1.0-18-amd64`, `6.6.0-rc3`, `6.8`); `None`
/// when it does not start with `MAJOR.MINOR`. A missing patch level is 0.
#[must_use]
pub fn parse_release(release: &str) -> Option<Release> {
    let mut parts = release.trim().splitn(3, '.');
    let number = |s: &str| -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let major = number(parts.next()?)?;
    let minor_text = parts.next()?;
    let minor = number(minor_text)?;
    // `6.8-rc1`: the minor number ends the numeric part.
    let patch = if minor_text.bytes().all(|b| b.is_ascii_digit()) {
        parts.next().and_then(number).unwrap_or(0)
    } else {
        0
    };
    Some(Release {
        major,
        minor,
        patch,
    })
}

/// Refuses a `release` older than [`MINIMUM`], saying why. A release that cannot be read is
/// let through: the loader then reports what is missing.
///
/// # Errors
/// When the release is older than [`MINIMUM`].
pub fn check_release(release: &str) -> Result<()> {
    match parse_release(release) {
        Some(r) if r < MINIMUM => bail!(
            "this kernel is Linux {release}, and Palisade needs Linux {}.{} or newer: it uses \
             {NEEDS}",
            MINIMUM.major,
            MINIMUM.minor
        ),
        Some(_) => Ok(()),
        None => {
            tracing::warn!(
                "cannot read the kernel release `{release}`; Palisade needs Linux {}.{} or newer",
                MINIMUM.major,
                MINIMUM.minor
            );
            Ok(())
        }
    }
}

/// The running kernel's release, as `uname -r` prints it.
#[must_use]
pub fn running_release() -> Option<String> {
    // SAFETY: utsname is plain old data, and uname fills it in.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a utsname.
    if unsafe { libc::uname(&raw mut uts) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates the field, which stays alive for the call.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    Some(release.to_string_lossy().into_owned())
}

/// [`check_release`] for the running kernel.
///
/// # Errors
/// When the running kernel is older than [`MINIMUM`].
pub fn check() -> Result<()> {
    match running_release() {
        Some(release) => check_release(&release),
        None => Ok(()),
    }
}

/// Waits until every program run that began before the call has ended: an RCU grace period,
/// which `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for (`synchronize_rcu` in the kernel; BPF
/// programs run inside RCU read-side sections). A writer that switched a double-buffered
/// table calls it before rewriting the slot it switched away from, so no packet that read the
/// old switch still uses that slot. Where the kernel refuses the call, a pause far longer
/// than any program run stands in for it.
pub fn wait_for_readers() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `BPF_FUNC_xdp_adjust_meta`.
const XDP_ADJUST_META: i32 = 54;

/// Whether XDP programs may call `bpf_xdp_adjust_meta` on this kernel (probed once: some
/// builds leave it out). Without it the firewall hands its `mark` and `mirror` actions to
/// the TC program through a table instead of the frame's metadata (`palisade_common::action`).
#[must_use]
pub fn xdp_metadata() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| crate::pin::xdp_helper_available(XDP_ADJUST_META))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(major: u32, minor: u32, patch: u32) -> Release {
        Release {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn releases_parse_as_uname_prints_them() {
        for (text, want) in [
            ("6.18.0-1-amd64", r(6, 18, 0)),
            ("5.15.0-91-generic", r(5, 15, 0)),
            ("6.1.0-18-cloud-amd64", r(6, 1, 0)),
            ("6.6", r(6, 6, 0)),
            ("6.6.0+", r(6, 6, 0)),
            ("6.6-rc3", r(6, 6, 0)),
            ("6.10.3-arch1-1", r(6, 10, 3)),
            ("4.19.325", r(4, 19, 325)),
            ("6.5.13-hardened1\n", r(6, 5, 13)),
        ] {
            assert_eq!(parse_release(text), Some(want), "{text}");
        }
        for text in ["", "6", "linux-6.6", "six.six", ".6.6"] {
            assert_eq!(parse_release(text), None, "{text}");
        }
    }

    #[test]
    fn releases_compare_by_number_not_text() {
        assert!(r(6, 10, 0) > r(6, 6, 0));
        assert!(r(6, 5, 99) < r(6, 6, 0));
        assert!(r(7, 0, 0) > r(6, 99, 99));
        assert!(r(6, 6, 1) > MINIMUM);
    }

    #[test]
    fn old_kernels_are_refused_with_the_reason() {
        for ok in [
            "6.6.0",
            "6.6-rc1",
            "6.18.0-1-amd64",
            "7.0.0",
            "not a release",
        ] {
            check_release(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let err = check_release("6.5.13-generic").expect_err("too old");
        assert_eq!(
            err.to_string(),
            "this kernel is Linux 6.5.13-generic, and Palisade needs Linux 6.6 or newer: it uses \
             tcx links for the egress connection tracker and the scrub (6.6), the sending \
             process's name and ids in cgroup programs (6.1), bpf_xdp_load_bytes (5.18), \
             bpf_loop (5.17), bpf_for_each_map_elem (5.13), bpf_ktime_get_coarse_ns (5.11) and \
             ring buffers (5.8)"
        );
        assert!(check_release("5.8.0").is_err());
        assert!(check_release("4.19.0").is_err());
    }

    #[test]
    fn the_running_kernel_has_a_readable_release() {
        let release = running_release().expect("uname");
        assert!(parse_release(&release).is_some(), "{release}");
    }
}
