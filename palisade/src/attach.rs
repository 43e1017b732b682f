//! Attaching the XDP firewall to interfaces (native mode first, generic as the fallback) and
//! the DNS egress program to cgroups.

use std::{
    ffi::CString,
    fs, io,
    net::Ipv4Addr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Xdp, XdpMode, links::FdLink,
};
use tracing::{info, warn};

use crate::policy::config::DEFAULT_DNS_CGROUP;

/// How a program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Native,
    Generic,
}

impl Mode {
    /// The word used in messages and pin names.
    #[must_use]
    pub const fn word(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }

    /// Parses [`Mode::word`].
    #[must_use]
    pub fn from_word(w: &str) -> Option<Self> {
        match w {
            "native" => Some(Self::Native),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// Attaches `prog` to `iface`, trying native (driver) mode and falling back to generic mode
/// with a message that says so. `force_generic` skips the native attempt.
///
/// # Errors
/// When the interface does not exist or neither mode attaches.
pub fn attach_xdp(prog: &mut Xdp, iface: &str, force_generic: bool) -> Result<Mode> {
    if !force_generic {
        match prog.attach(iface, XdpMode::Driver) {
            Ok(_) => {
                info!(iface, mode = "native", "XDP firewall attached");
                return Ok(Mode::Native);
            }
            Err(aya::programs::ProgramError::UnknownInterface { .. }) => {
                bail!("no network interface named {iface:?}")
            }
            Err(e) => {
                warn!(iface, error = %e, "native XDP not available on this interface; falling back to generic mode (slower, same policy)");
            }
        }
    }
    prog.attach(iface, XdpMode::Skb)
        .with_context(|| format!("attaching the XDP firewall to {iface} in generic mode"))?;
    info!(iface, mode = "generic", "XDP firewall attached");
    Ok(Mode::Generic)
}

/// Like [`attach_xdp`], but hands the attachment back as a link that can be pinned, so it
/// outlives the process. `None` when the kernel only offered a netlink attachment (before
/// 5.9), which cannot be pinned and ends with the process.
///
/// # Errors
/// As [`attach_xdp`].
pub fn attach_xdp_link(
    prog: &mut Xdp,
    iface: &str,
    force_generic: bool,
) -> Result<(Mode, Option<FdLink>)> {
    let c = CString::new(iface).map_err(|_| anyhow!("invalid interface name {iface:?}"))?;
    // SAFETY: a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        bail!("no network interface named {iface:?}");
    }
    let mut try_mode = |mode: XdpMode| -> Result<Option<FdLink>, aya::programs::ProgramError> {
        let id = prog.attach_to_if_index(ifindex, mode)?;
        let link = prog.take_link(id)?;
        Ok(FdLink::try_from(link).ok())
    };
    let occupied = |e: &aya::programs::ProgramError| {
        matches!(e, aya::programs::ProgramError::SyscallError(s)
            if matches!(s.io_error.raw_os_error(), Some(libc::EEXIST | libc::EBUSY)))
    };
    let taken = || {
        anyhow!(
            "{iface} already has an XDP program attached (another Palisade with a different --pin-dir, or another tool; see `ip link show {iface}`)"
        )
    };
    if !force_generic {
        match try_mode(XdpMode::Driver) {
            Ok(link) => {
                info!(iface, mode = "native", "XDP firewall attached");
                return Ok((Mode::Native, link));
            }
            Err(e) if occupied(&e) => return Err(taken()),
            Err(e) => {
                warn!(iface, error = %e, "native XDP not available on this interface; falling back to generic mode (slower, same policy)");
            }
        }
    }
    let link = match try_mode(XdpMode::Skb) {
        Ok(l) => l,
        Err(e) if occupied(&e) => return Err(taken()),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "attaching the XDP firewall to {iface} in generic mode"
            )));
        }
    };
    info!(iface, mode = "generic", "XDP firewall attached");
    Ok((Mode::Generic, link))
}

/// The index of `iface` in this network namespace, if it exists.
#[must_use]
pub fn ifindex(iface: &str) -> Option<u32> {
    let c = CString::new(iface).ok()?;
    // SAFETY: a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The name of interface `index` in this network namespace, or `#index` when there is none
/// (any more).
#[must_use]
pub fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as the call needs.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("#{index}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Attaches the DNS egress program to a cgroup as a pinnable link.
///
/// # Errors
/// When the cgroup cannot be opened or the kernel refuses.
pub fn attach_cgroup_link(prog: &mut CgroupSkb, cgroup: &Path) -> Result<Option<FdLink>> {
    let dir =
        fs::File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    // `Single`: aya attaches through a bpf_link on every kernel Palisade runs on, and the
    // kernel refuses any attach flag there (`BPF_LINK_CREATE` fails with EINVAL for
    // `BPF_F_ALLOW_MULTI`); links always coexist with the cgroup's other programs anyway.
    let id = prog
        .attach(dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
        .with_context(|| format!("attaching DNS egress policy to cgroup {}", cgroup.display()))?;
    let link = prog.take_link(id)?;
    Ok(FdLink::try_from(link).ok())
}

/// `statfs` magic of cgroup2fs.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// The cgroup v2 root on systems with only the unified hierarchy.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup";

/// Whether `path` is a directory on a cgroup v2 file system.
#[must_use]
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs is a valid out-parameter and `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is not i64 on every target"
    )]
    let f_type = i64::from(st.f_type);
    r == 0 && f_type == CGROUP2_SUPER_MAGIC
}

/// The cgroup to attach to for a configured path, with a note when it differs.
///
/// The policy's default, `/sys/fs/cgroup/unified`, is where hybrid systems mount cgroup v2;
/// systems with only cgroup v2 mount it at `/sys/fs/cgroup` and have no `unified`. When the
/// default is missing and `/sys/fs/cgroup` is cgroup v2, that is used instead.
///
/// # Errors
/// When the path is missing or not cgroup v2, with what to do about it.
pub fn effective_cgroup(configured: &Path) -> Result<(PathBuf, Option<String>)> {
    choose_cgroup(configured, &|p| p.exists(), &is_cgroup2)
}

fn choose_cgroup(
    configured: &Path,
    exists: &dyn Fn(&Path) -> bool,
    cgroup2: &dyn Fn(&Path) -> bool,
) -> Result<(PathBuf, Option<String>)> {
    if configured == Path::new(DEFAULT_DNS_CGROUP) && !exists(configured) {
        let root = Path::new(CGROUP2_ROOT);
        if cgroup2(root) {
            return Ok((
                root.to_path_buf(),
                Some(format!(
                    "{DEFAULT_DNS_CGROUP} does not exist; this system mounts cgroup v2 at {CGROUP2_ROOT}, using that for DNS egress"
                )),
            ));
        }
        bail!(
            "cgroup {DEFAULT_DNS_CGROUP} (the default for [dns.egress]) does not exist and {CGROUP2_ROOT} is not cgroup v2; set `cgroups` in [dns.egress] to a cgroup v2 directory"
        );
    }
    if !exists(configured) {
        bail!("cgroup {} does not exist", configured.display());
    }
    if !cgroup2(configured) {
        bail!(
            "{} is not a cgroup v2 directory; DNS egress filtering needs cgroup v2",
            configured.display()
        );
    }
    Ok((configured.to_path_buf(), None))
}

/// The interface that carries the IPv4 default route (else the IPv6 one).
///
/// # Errors
/// When the routing table has no default route.
pub fn default_route_interface() -> Result<String> {
    if let Some(i) = v4_default(&fs::read_to_string("/proc/net/route").unwrap_or_default()) {
        return Ok(i);
    }
    if let Some(i) = v6_default(&fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default()) {
        return Ok(i);
    }
    Err(anyhow!(
        "no default route found; name the interfaces to guard with --iface"
    ))
}

/// Parses `/proc/net/route`: the first up route with destination 0 and mask 0.
fn v4_default(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
        let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
        (dest == 0 && mask == 0 && Ipv4Addr::from(dest).is_unspecified()).then(|| f[0].to_string())
    })
}

/// Parses `/proc/net/ipv6_route`: destination `::/0` not on loopback.
fn v6_default(table: &str) -> Option<String> {
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let is_default = f.first()?.chars().all(|c| c == '0') && *f.get(1)? == "00";
        let iface = *f.get(9)?;
        (is_default && iface != "lo").then(|| iface.to_string())
    })
}

/// Whether an interface exists (for early, clear errors).
#[must_use]
pub fn interface_exists(iface: &str) -> bool {
    // Asks the kernel, in this process's network namespace: /sys/class/net reflects the
    // namespace sysfs was mounted in, which differs under `nsenter --net`.
    let Ok(name) = std::ffi::CString::new(iface) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// Maps an I/O error to a short hint, for messages.
#[must_use]
pub fn hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => "permission denied: run as root",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cgroup_falls_back_to_the_v2_root_only_when_missing() {
        let default = Path::new(DEFAULT_DNS_CGROUP);
        // Hybrid system: the default exists and is cgroup v2.
        let (p, note) = choose_cgroup(default, &|_| true, &|_| true).unwrap();
        assert_eq!((p.as_path(), note), (default, None));
        // v2-only system: the default is missing, /sys/fs/cgroup is cgroup v2.
        let (p, note) = choose_cgroup(default, &|p| p != default, &|p| {
            p == Path::new(CGROUP2_ROOT)
        })
        .unwrap();
        assert_eq!(p, Path::new(CGROUP2_ROOT));
        assert!(note.unwrap().contains("does not exist"));
        // v1-only system: nothing to fall back to.
        let e = choose_cgroup(default, &|p| p != default, &|_| false).unwrap_err();
        assert!(e.to_string().contains("not cgroup v2"), "{e}");
        // A configured path is never replaced.
        let mine = Path::new("/sys/fs/cgroup/unified/app");
        assert!(
            choose_cgroup(mine, &|_| false, &|_| true)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        assert!(
            choose_cgroup(mine, &|_| true, &|_| false)
                .unwrap_err()
                .to_string()
                .contains("not a cgroup v2")
        );
    }

    #[test]
    fn finds_v4_default_route() {
        let t = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(v4_default(t).as_deref(), Some("eth0"));
        assert_eq!(v4_default("Iface\n"), None);
    }

    #[test]
    fn finds_v6_default_route_not_on_loopback() {
        let t = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n\
                 00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth9\n";
        assert_eq!(v6_default(t).as_deref(), Some("eth9"));
    }
}
