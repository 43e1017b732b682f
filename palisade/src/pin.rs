//! Pinned state under bpffs: where every map, program and link lives, how an existing
//! layout is recognised, and the few BPF syscalls aya does not expose (link info, link
//! update, link detach, pinning a raw fd).
//!
//! # Layout
//!
//! ```text
//! PIN_DIR/                                   default /sys/fs/bpf/palisade
//!   layout-<L>/                              L: hash of every map's name, type, key size,
//!                                            value size, max entries and flags
//!     maps/<MAP>                             every named map of the kernel object
//!     progs-<B>/<PROGRAM>                    B: hash of the kernel object (the build)
//!     links/xdp-<mode>-<IFACE>               one XDP link per guarded interface
//!     links/cgroup-<PATH>                    one cgroup_skb egress link per cgroup
//!     links/bind-<PROG>-<PATH>               the [dns.bind] programs' links, per cgroup
//! ```
//!
//! bpffs holds only BPF objects and directories (and refuses names with dots), so the
//! versions are carried by directory names and interface names and paths are escaped.
//! A daemon whose layout hash differs finds the other `layout-*` directory, builds a
//! complete new state next to it, moves each link over with `BPF_LINK_UPDATE` and removes
//! the old directory only afterwards.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Where the daemon pins by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/palisade";
/// Where bpffs is normally mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Bumped by hand when the meaning of a map's contents changes without its shape changing,
/// so such a build is treated as incompatible with the pins of an older one.
/// - 2: DNS label hashes are no longer finalised (`LabelHasher::finish`), so every name key
///   of `DNS_NAMES`, every `DNS_FILTER` bit and every response-cache key changed meaning.
const LAYOUT_EPOCH: &str = "palisade-layout-2";

/// 64-bit FNV-1a: stable across builds and Rust versions (unlike `DefaultHasher`).
#[must_use]
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One map as the layout hash sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapShape {
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapShape {
    /// The shape as the layout id sees it: the capacity of a map sized by the configuration
    /// ([`is_resizable_map`]) is not part of the layout.
    fn line(&self) -> String {
        let max = if is_resizable_map(&self.name) {
            0
        } else {
            self.max_entries
        };
        format!(
            "{} type={} key={} value={} max={max} flags={}",
            self.name, self.map_type, self.key_size, self.value_size, self.flags
        )
    }
}

/// Whether a map of the object is pinned. Data sections (`.rodata`, `.bss`) are part of a
/// program load, not shared state.
#[must_use]
pub fn is_pinned_map(name: &str) -> bool {
    !name.is_empty() && !name.contains('.')
}

/// Whether a map's capacity comes from the policy (the connection tracking tables), so
/// pins of another size belong to the same layout and are resized by carrying their entries.
#[must_use]
pub fn is_resizable_map(name: &str) -> bool {
    crate::conntrack::carry::TABLES
        .iter()
        .any(|(n, _)| *n == name)
        || crate::intel::load::is_sized_map(name)
        || name == crate::dns::cache::MAP
        || crate::capacity::engines::is_sized_map(name)
        || crate::capacity::KEY_FILTERS
            .iter()
            .any(|(n, _, _)| *n == name)
}

/// The layout id: 16 hex digits over every pinned map's shape, in name order.
#[must_use]
pub fn layout_id(shapes: &[MapShape]) -> String {
    let mut lines: Vec<String> = shapes
        .iter()
        .filter(|s| is_pinned_map(&s.name))
        .map(MapShape::line)
        .collect();
    lines.sort();
    let text = format!("{LAYOUT_EPOCH}\n{}", lines.join("\n"));
    format!("{:016x}", fnv64(text.as_bytes()))
}

/// Escapes a name for bpffs: keeps `A-Z a-z 0-9 _ -`, writes every other byte as `%XX`.
#[must_use]
pub fn escape(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// The direction and interface of a link pin's name after its kind: `in-IFACE` or
/// `out-IFACE`, the interface escaped.
fn directed(rest: &str) -> Option<(bool, String)> {
    let (dir, iface) = rest.split_once('-')?;
    let ingress = match dir {
        "in" => true,
        "out" => false,
        _ => return None,
    };
    Some((ingress, String::from_utf8(unescape(iface)?).ok()?))
}

/// Reverses [`escape`]. `None` for text [`escape`] cannot produce.
#[must_use]
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The pin paths of one layout and build under a pin directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub layout_id: String,
    pub build_id: String,
}

impl Layout {
    #[must_use]
    pub fn dir(&self) -> PathBuf {
        self.root.join(format!("layout-{}", self.layout_id))
    }
    #[must_use]
    pub fn maps_dir(&self) -> PathBuf {
        self.dir().join("maps")
    }
    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }
    #[must_use]
    pub fn progs_dir(&self) -> PathBuf {
        self.dir().join(format!("progs-{}", self.build_id))
    }
    #[must_use]
    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }
    #[must_use]
    pub fn links_dir(&self) -> PathBuf {
        self.dir().join("links")
    }
    /// The policy's per-generation tables (`capacity`), pinned by their names.
    #[must_use]
    pub fn tables_dir(&self) -> PathBuf {
        self.dir().join("tables")
    }

    /// Creates the directories of this layout.
    ///
    /// # Errors
    /// When bpffs refuses.
    pub fn create_dirs(&self) -> Result<()> {
        for d in [self.maps_dir(), self.progs_dir(), self.links_dir()] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    /// Other `layout-*` directories under the pin directory: state left by a build with an
    /// incompatible map layout (or set aside as damaged).
    #[must_use]
    pub fn foreign_layouts(&self) -> Vec<PathBuf> {
        let ours = self.dir();
        let mut v: Vec<PathBuf> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p != &ours
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("layout-"))
            })
            .collect();
        v.sort();
        v
    }

    /// `progs-*` directories of this layout left by other builds.
    #[must_use]
    pub fn other_builds(&self) -> Vec<PathBuf> {
        let ours = self.progs_dir();
        let mut v: Vec<PathBuf> = fs::read_dir(self.dir())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p != &ours
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("progs-"))
            })
            .collect();
        v.sort();
        v
    }
}

/// What a link pin's file name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkPin {
    /// `xdp-<mode>-<iface>`
    Xdp { mode: String, iface: String },
    /// `cgroup-<path>`
    Cgroup { path: PathBuf },
    /// `tcx-egress-<iface>`: the connection tracker's egress program.
    TcxEgress { iface: String },
    /// `tcx-scrub-in-<iface>`, `tcx-scrub-out-<iface>`: the scrub programs.
    TcxScrub { ingress: bool, iface: String },
    /// `tcx-nat-in-<iface>`, `tcx-nat-out-<iface>`: the NAT programs.
    TcxNat { ingress: bool, iface: String },
    /// `tcx-lbrev-<iface>`: the load balancer's DNAT reverse translation.
    TcxLbReverse { iface: String },
    /// `tcx-tls-in-<iface>`, `tcx-tls-out-<iface>`: the TLS gate.
    TcxTls { ingress: bool, iface: String },
    /// `tcx-dhcp-out-<iface>`: DHCP snooping of what leaves.
    TcxDhcp { iface: String },
    /// `tcx-intel-<iface>`: the indicator check of what leaves (`[intel] egress`).
    TcxIntel { iface: String },
    /// `tcx-dnscache-<iface>`: the DNS response cache's fill (`[dns.cache]`).
    TcxDnsCache { iface: String },
    /// `tcx-action-in-<iface>`: the mark of `mark` rules set on the socket buffer.
    TcxAction { iface: String },
    /// `tcx-dnscanary-<iface>`: the DoH canary answer of resolver pinning
    /// (`[dns.bind] resolvers`).
    TcxCanary { iface: String },
    /// `tcx-ids-in-<iface>`, `tcx-ids-out-<iface>`: the IDS preselection (`[ids]`).
    TcxIds { ingress: bool, iface: String },
    /// `bind-<program>-<path>`: one of the `[dns.bind]` programs (`answer`, `connect4`,
    /// `connect6`, `sendmsg4`, `sendmsg6`) on a cgroup.
    Bind { prog: String, path: PathBuf },
}

impl LinkPin {
    #[must_use]
    pub fn file_name(&self) -> String {
        match self {
            Self::Xdp { mode, iface } => format!("xdp-{mode}-{}", escape(iface.as_bytes())),
            Self::Cgroup { path } => format!("cgroup-{}", escape(path.as_os_str().as_bytes())),
            Self::TcxEgress { iface } => format!("tcx-egress-{}", escape(iface.as_bytes())),
            Self::TcxScrub { ingress, iface } => format!(
                "tcx-scrub-{}-{}",
                if *ingress { "in" } else { "out" },
                escape(iface.as_bytes())
            ),
            Self::TcxNat { ingress, iface } => format!(
                "tcx-nat-{}-{}",
                if *ingress { "in" } else { "out" },
                escape(iface.as_bytes())
            ),
            Self::TcxLbReverse { iface } => format!("tcx-lbrev-{}", escape(iface.as_bytes())),
            Self::TcxIntel { iface } => format!("tcx-intel-{}", escape(iface.as_bytes())),
            Self::TcxTls { ingress, iface } => format!(
                "tcx-tls-{}-{}",
                if *ingress { "in" } else { "out" },
                escape(iface.as_bytes())
            ),
            Self::TcxDhcp { iface } => format!("tcx-dhcp-out-{}", escape(iface.as_bytes())),
            Self::TcxDnsCache { iface } => format!("tcx-dnscache-{}", escape(iface.as_bytes())),
            Self::TcxAction { iface } => format!("tcx-action-in-{}", escape(iface.as_bytes())),
            Self::TcxCanary { iface } => format!("tcx-dnscanary-{}", escape(iface.as_bytes())),
            Self::TcxIds { ingress, iface } => format!(
                "tcx-ids-{}-{}",
                if *ingress { "in" } else { "out" },
                escape(iface.as_bytes())
            ),
            Self::Bind { prog, path } => format!(
                "bind-{}-{}",
                escape(prog.as_bytes()),
                escape(path.as_os_str().as_bytes())
            ),
        }
    }

    #[must_use]
    pub fn parse(file_name: &str) -> Option<Self> {
        if let Some(rest) = file_name.strip_prefix("tcx-egress-") {
            let iface = String::from_utf8(unescape(rest)?).ok()?;
            return Some(Self::TcxEgress { iface });
        }
        if let Some(rest) = file_name.strip_prefix("tcx-nat-") {
            let (ingress, iface) = directed(rest)?;
            return Some(Self::TcxNat { ingress, iface });
        }
        if let Some(rest) = file_name.strip_prefix("tcx-intel-") {
            let iface = String::from_utf8(unescape(rest)?).ok()?;
            return Some(Self::TcxIntel { iface });
        }
        if let Some(rest) = file_name.strip_prefix("tcx-lbrev-") {
            let iface = String::from_utf8(unescape(rest)?).ok()?;
            return Some(Self::TcxLbReverse { iface });
        }
        if let Some(rest) = file_name.strip_prefix("tcx-scrub-") {
            let (ingress, iface) = directed(rest)?;
            return Some(Self::TcxScrub { ingress, iface });
        }
        if let Some(rest) = file_name.strip_prefix("tcx-dhcp-out-") {
            let iface = String::from_utf8(unescape(rest)?).ok()?;
            return Some(Self::TcxDhcp { iface });
        }
        if let Some(rest) = file_name.strip_prefix("tcx-dnscache-") {
            let iface = String::from_utf8(unescape(rest)?).ok()?;
            return Some(Self::TcxDnsCache { iface });
        }
        if let Some(rest) = file_name.strip_prefix("tcx-action-in-") {
            let iface = String::from_utf8(unescape(rest)?).ok()?;
            return Some(Self::TcxAction { iface });
        }
        if let Some(rest) = file_name.strip_prefix("tcx-dnscanary-") {
            let iface = String::from_utf8(unescape(rest)?).ok()?;
            return Some(Self::TcxCanary { iface });
        }
        if let Some(rest) = file_name.strip_prefix("tcx-tls-") {
            let (ingress, iface) = directed(rest)?;
            return Some(Self::TcxTls { ingress, iface });
        }
        if let Some(rest) = file_name.strip_prefix("tcx-ids-") {
            let (ingress, iface) = directed(rest)?;
            return Some(Self::TcxIds { ingress, iface });
        }
        if let Some(rest) = file_name.strip_prefix("bind-") {
            let (prog, path) = rest.split_once('-')?;
            let prog = String::from_utf8(unescape(prog)?).ok()?;
            let path: std::ffi::OsString =
                std::os::unix::ffi::OsStringExt::from_vec(unescape(path)?);
            return Some(Self::Bind {
                prog,
                path: PathBuf::from(path),
            });
        }
        if let Some(rest) = file_name.strip_prefix("xdp-") {
            let (mode, iface) = rest.split_once('-')?;
            let iface = String::from_utf8(unescape(iface)?).ok()?;
            return Some(Self::Xdp {
                mode: mode.to_string(),
                iface,
            });
        }
        let rest = file_name.strip_prefix("cgroup-")?;
        let path: std::ffi::OsString = std::os::unix::ffi::OsStringExt::from_vec(unescape(rest)?);
        Some(Self::Cgroup {
            path: PathBuf::from(path),
        })
    }
}

/// Every parseable link pin in `links_dir`, with its path.
#[must_use]
pub fn link_pins(links_dir: &Path) -> Vec<(LinkPin, PathBuf)> {
    let mut v: Vec<(LinkPin, PathBuf)> = fs::read_dir(links_dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            LinkPin::parse(name.to_str()?).map(|p| (p, e.path()))
        })
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

/// Whether `path` is on a bpffs.
#[must_use]
pub fn is_bpffs(path: &Path) -> bool {
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
    r == 0 && f_type == BPF_FS_MAGIC
}

/// How the pin directory was made ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    /// bpffs was already there.
    Existing,
    /// This process mounted bpffs at [`BPFFS_ROOT`].
    Mounted,
    /// It mounted it, in a mount namespace private to this process tree: the pins vanish
    /// when it exits.
    MountedPrivately,
}

/// Makes sure `root` exists on a bpffs: mounts bpffs at `/sys/fs/bpf` when `root` lies below
/// it and nothing is mounted there, then creates `root`.
///
/// # Errors
/// When `root` is elsewhere and not on bpffs, or mounting fails.
pub fn prepare_root(root: &Path) -> Result<Mounted> {
    let mut how = Mounted::Existing;
    let bpffs = Path::new(BPFFS_ROOT);
    if root.starts_with(bpffs) && !is_bpffs(bpffs) {
        fs::create_dir_all(bpffs).ok();
        let src = CString::new("bpf").expect("no NUL");
        let target = CString::new(BPFFS_ROOT).expect("no NUL");
        let opts = CString::new("mode=0700").expect("no NUL");
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            bail!(
                "{BPFFS_ROOT} is not a BPF filesystem and mounting one there failed: {e} (mount it with `mount -t bpf bpf {BPFFS_ROOT}`)"
            );
        }
        how = if private_mount_namespace() {
            Mounted::MountedPrivately
        } else {
            Mounted::Mounted
        };
    }
    let mut probe = root.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p.to_path_buf(),
            None => break,
        }
    }
    if !is_bpffs(&probe) {
        bail!(
            "pin directory {} is not on a BPF filesystem; mount one there (`mount -t bpf bpf DIR`) or pick a directory under {BPFFS_ROOT}",
            root.display()
        );
    }
    fs::create_dir_all(root)
        .with_context(|| format!("creating pin directory {}", root.display()))?;
    Ok(how)
}

/// Whether this process lives in a different mount namespace than init.
fn private_mount_namespace() -> bool {
    match (
        fs::read_link("/proc/self/ns/mnt"),
        fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a != b,
        _ => false,
    }
}

/// An exclusive lock on the pin directory, held for the life of the daemon (and released by
/// the kernel when it dies, even by SIGKILL).
#[derive(Debug)]
pub struct PinLock(#[allow(dead_code, reason = "held for its lifetime")] OwnedFd);

impl PinLock {
    /// Takes the lock without waiting.
    ///
    /// # Errors
    /// When another process holds it.
    pub fn acquire(root: &Path) -> Result<Self> {
        let dir = fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
        let fd = OwnedFd::from(dir);
        // SAFETY: a valid fd.
        let r = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                bail!(
                    "another palisade daemon is using the pin directory {}; stop it first, or give this one its own --pin-dir",
                    root.display()
                );
            }
            return Err(anyhow!("locking {}: {e}", root.display()));
        }
        Ok(Self(fd))
    }
}

// ---- raw BPF syscalls -------------------------------------------------------------------

const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_GET_NEXT_KEY: u32 = 4;
const BPF_OBJ_PIN: u32 = 6;
const BPF_OBJ_GET: u32 = 7;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_MAP_LOOKUP_BATCH: u32 = 24;
const BPF_MAP_UPDATE_BATCH: u32 = 26;
const BPF_MAP_DELETE_BATCH: u32 = 27;
const BPF_LINK_UPDATE: u32 = 29;
const BPF_LINK_DETACH: u32 = 34;

/// `bpf_link_type` values used here.
pub const LINK_TYPE_CGROUP: u32 = 3;
pub const LINK_TYPE_XDP: u32 = 6;
pub const LINK_TYPE_TCX: u32 = 11;

/// `union bpf_attr`, large enough for every command used here, zeroed.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    const fn new() -> Self {
        Self([0; 128])
    }
    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn get_u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }
}

fn sys_bpf(cmd: u32, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: `attr` is a properly sized and aligned `bpf_attr` for `cmd`; every pointer in it
    // points to memory that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Whether the kernel lets an XDP program call helper `helper`: a program of four
/// instructions (call it, return `XDP_PASS`) is offered to the verifier and dropped. An
/// error other than the verifier's refusal (no privileges, no BPF) counts as no.
#[must_use]
pub fn xdp_helper_available(helper: i32) -> bool {
    const BPF_PROG_LOAD: u32 = 5;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    // `r2 = 0; call helper; r0 = XDP_PASS; exit` (r1 holds the context on entry).
    let insn = |code: u8, regs: u8, imm: i32| -> u64 {
        u64::from(code) | u64::from(regs) << 8 | u64::from(imm as u32) << 32
    };
    let prog: [u64; 4] = [
        insn(0xb7, 0x02, 0),
        insn(0x85, 0x00, helper),
        insn(0xb7, 0x00, 2),
        insn(0x95, 0x00, 0),
    ];
    let license = c"GPL";
    let mut a = Attr::new();
    a.put_u32(0, BPF_PROG_TYPE_XDP);
    a.put_u32(4, prog.len() as u32);
    a.put_u64(8, prog.as_ptr() as u64);
    a.put_u64(16, license.as_ptr() as u64);
    match sys_bpf(BPF_PROG_LOAD, &mut a) {
        Ok(fd) => {
            // SAFETY: the kernel returned a new fd that nothing else owns; closed at once.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            true
        }
        Err(_) => false,
    }
}

/// Opens a pinned object.
///
/// # Errors
/// When nothing is pinned there.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut a = Attr::new();
    a.put_u64(0, c.as_ptr() as u64);
    let fd = sys_bpf(BPF_OBJ_GET, &mut a)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins `fd` at `path`.
///
/// # Errors
/// When the path exists or is not on bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut a = Attr::new();
    a.put_u64(0, c.as_ptr() as u64);
    a.put_u32(8, fd.as_raw_fd() as u32);
    sys_bpf(BPF_OBJ_PIN, &mut a).map(drop)
}

/// `BPF_MAP_GET_NEXT_KEY`: the key after `key` (the first key with `None`) written to
/// `next`; false at the end of the map.
///
/// # Errors
/// When `fd` is not a map or the buffers do not match its key size.
pub fn map_next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u64(8, key.map_or(0, |k| k.as_ptr() as u64));
    a.put_u64(16, next.as_mut_ptr() as u64);
    match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every key of a hash map, one after the other (each the map's key size). The walk is
/// bounded by hand: an entry deleted under it restarts it from the first key (the kernel's
/// rule), so a busy map could otherwise keep it going.
///
/// # Errors
/// When `fd` is not a map.
pub fn map_keys(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let (_, _, key_size, _, max, _) = map_info(fd)?;
    let key_size = key_size as usize;
    let mut keys: Vec<u8> = Vec::new();
    let mut next = vec![0u8; key_size];
    let mut budget = 4 * u64::from(max) + 16;
    while budget > 0 {
        budget -= 1;
        let last = keys.len().checked_sub(key_size).map(|at| &keys[at..]);
        if !map_next_key(fd, last, &mut next)? {
            break;
        }
        keys.extend_from_slice(&next);
    }
    Ok(keys)
}

/// `BPF_MAP_LOOKUP_ELEM` into `value`; false when the key is absent.
///
/// # Errors
/// When `fd` is not a map or the buffers do not match its sizes.
pub fn map_lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    a.put_u64(16, value.as_mut_ptr() as u64);
    match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_DELETE_ELEM`; false when the key was absent (for an array of maps, a slot
/// already empty).
///
/// # Errors
/// When `fd` is not a map or the key does not match its size.
pub fn map_delete(fd: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    match sys_bpf(BPF_MAP_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_UPDATE_ELEM` with `flags` (`BPF_ANY` 0, `BPF_NOEXIST` 1, `BPF_EXIST` 2).
///
/// # Errors
/// As the kernel reports it (`EEXIST`, `ENOENT`, `E2BIG` when full, ...).
pub fn map_update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    a.put_u64(16, value.as_ptr() as u64);
    a.put_u64(24, flags);
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// Every entry of a hash map, read `chunk` entries per `BPF_MAP_LOOKUP_BATCH` call: the keys
/// and the values one after the other (each the map's key or value size), as many of each.
/// Not a snapshot: entries added or removed during the walk may or may not be seen.
///
/// # Errors
/// When `fd` is not a hash map, or the sizes do not match.
pub fn map_entries_batch(
    fd: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    chunk: u32,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut keys = Vec::new();
    let mut values = Vec::new();
    map_chunks_batch(fd, key_size, value_size, chunk, |k, v| {
        keys.extend_from_slice(k);
        values.extend_from_slice(v);
    })?;
    Ok((keys, values))
}

/// Reads a map (a hash map, or the LPM trie, which the kernel walks key by key) `chunk`
/// entries per `BPF_MAP_LOOKUP_BATCH` call and hands each chunk's
/// keys and values (one after the other) to `f`, so a caller that keeps a few of them does
/// not hold the whole map in memory.
///
/// # Errors
/// As [`map_entries_batch`].
pub fn map_chunks_batch(
    fd: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    chunk: u32,
    mut f: impl FnMut(&[u8], &[u8]),
) -> io::Result<()> {
    // The position between calls: a bucket index for the hash maps, a whole key for the
    // maps the kernel walks key by key (the LPM trie), so room for either.
    let mut cursor = vec![0u64; key_size.div_ceil(8).max(1)];
    let mut first = true;
    let mut kbuf = vec![0u8; key_size * chunk as usize];
    let mut vbuf = vec![0u8; value_size * chunk as usize];
    loop {
        let mut a = Attr::new();
        let in_batch = if first { 0 } else { cursor.as_ptr() as u64 };
        a.put_u64(0, in_batch);
        a.put_u64(8, cursor.as_mut_ptr() as u64);
        a.put_u64(16, kbuf.as_mut_ptr() as u64);
        a.put_u64(24, vbuf.as_mut_ptr() as u64);
        a.put_u32(32, chunk);
        a.put_u32(36, fd.as_raw_fd() as u32);
        let r = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut a);
        let n = (a.get_u32(32) as usize).min(chunk as usize);
        f(&kbuf[..n * key_size], &vbuf[..n * value_size]);
        match r {
            Ok(_) => first = false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Writes `count` entries with `BPF_MAP_UPDATE_BATCH`: `keys` and `values` hold them one
/// after the other (each the map's key or value size; a per-CPU map's values one per CPU).
///
/// # Errors
/// When the kernel refuses an entry (`E2BIG` when the map is full); the entries before it
/// are written.
pub fn map_update_batch(
    fd: BorrowedFd<'_>,
    keys: &[u8],
    values: &[u8],
    count: usize,
) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u64(16, keys.as_ptr() as u64);
    a.put_u64(24, values.as_ptr() as u64);
    a.put_u32(32, count as u32);
    a.put_u32(36, fd.as_raw_fd() as u32);
    sys_bpf(BPF_MAP_UPDATE_BATCH, &mut a).map(drop)
}

/// Deletes `keys` (each `key_size` bytes) with `BPF_MAP_DELETE_BATCH`; a key already gone
/// (evicted from an LRU map meanwhile) is skipped. Returns how many were deleted.
///
/// # Errors
/// When `fd` is not a map, or the sizes do not match.
pub fn map_delete_batch(fd: BorrowedFd<'_>, keys: &[u8], key_size: usize) -> io::Result<usize> {
    let total = keys.len() / key_size;
    let mut at = 0;
    let mut deleted = 0;
    while at < total {
        let mut a = Attr::new();
        a.put_u64(16, keys[at * key_size..].as_ptr() as u64);
        a.put_u32(32, (total - at) as u32);
        a.put_u32(36, fd.as_raw_fd() as u32);
        let r = sys_bpf(BPF_MAP_DELETE_BATCH, &mut a);
        let n = a.get_u32(32) as usize;
        deleted += n;
        at += n;
        match r {
            Ok(_) => {}
            // The key at `at` is gone: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => at += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// What the kernel says about a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// XDP: the interface index (0 once the device is gone).
    pub ifindex: u32,
    /// cgroup: the cgroup id (its inode on cgroup2fs).
    pub cgroup_id: u64,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link.
///
/// # Errors
/// When `fd` is not a link.
pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut info = [0u64; 32];
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u32(4, (info.len() * 8) as u32);
    a.put_u64(8, info.as_mut_ptr() as u64);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    let u32_at = |i: usize| -> u32 {
        let word = info[i / 8];
        if i.is_multiple_of(8) {
            word as u32
        } else {
            (word >> 32) as u32
        }
    };
    let link_type = u32_at(0);
    Ok(LinkInfo {
        link_type,
        id: u32_at(4),
        prog_id: u32_at(8),
        ifindex: if link_type == LINK_TYPE_XDP || link_type == LINK_TYPE_TCX {
            u32_at(16)
        } else {
            0
        },
        cgroup_id: if link_type == LINK_TYPE_CGROUP {
            info[2]
        } else {
            0
        },
    })
}

/// The capacity of the map pinned at `path`, or `None` when nothing is pinned there.
///
/// # Errors
/// When the pin is not a map.
pub fn pinned_max_entries(path: &Path) -> io::Result<Option<u32>> {
    let Ok(fd) = obj_get(path) else {
        return Ok(None);
    };
    Ok(Some(map_info(fd.as_fd())?.4))
}

/// Removes the map pinned at `path` when its capacity is not `want` (so that the next load
/// creates it anew at that size). Returns the capacity it had, or `None` when it was kept
/// or nothing is pinned there.
///
/// # Errors
/// When the pin cannot be read or removed.
pub fn drop_if_resized(path: &Path, want: u32) -> Result<Option<u32>> {
    match pinned_max_entries(path)
        .with_context(|| format!("reading pinned map {}", path.display()))?
    {
        Some(max) if max != want => {
            fs::remove_file(path)
                .with_context(|| format!("removing {} to resize it", path.display()))?;
            Ok(Some(max))
        }
        _ => Ok(None),
    }
}

/// What the kernel says about a map: `(type, id, key size, value size, max entries, flags)`.
///
/// # Errors
/// When `fd` is not a map.
pub fn map_info(fd: BorrowedFd<'_>) -> io::Result<(u32, u32, u32, u32, u32, u32)> {
    let mut info = [0u32; 40];
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u32(4, (info.len() * 4) as u32);
    a.put_u64(8, info.as_mut_ptr() as u64);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    Ok((info[0], info[1], info[2], info[3], info[4], info[5]))
}

/// Replaces the program of a link in one step (`BPF_LINK_UPDATE`): the hook never runs
/// without a program.
///
/// # Errors
/// When the kernel refuses (e.g. a program of another type).
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, link.as_raw_fd() as u32);
    a.put_u32(4, prog.as_raw_fd() as u32);
    sys_bpf(BPF_LINK_UPDATE, &mut a).map(drop)
}

/// Detaches a link now, whoever else holds it open (`BPF_LINK_DETACH`).
///
/// # Errors
/// When the kernel refuses.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, link.as_raw_fd() as u32);
    sys_bpf(BPF_LINK_DETACH, &mut a).map(drop)
}

/// Moves a pinned link to `to`: pins the same link there, then removes the old pin.
///
/// # Errors
/// When either step fails; the link stays pinned at least once.
pub fn move_link_pin(link: BorrowedFd<'_>, from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        fs::remove_file(to).with_context(|| format!("removing stale pin {}", to.display()))?;
    }
    obj_pin(link, to).with_context(|| format!("pinning link at {}", to.display()))?;
    fs::remove_file(from).with_context(|| format!("removing old pin {}", from.display()))?;
    Ok(())
}

/// Removes a pinned state tree: detaches every link pinned under `links/` (so nothing keeps
/// running on state about to disappear) except the links whose ids are in `keep` (links
/// already moved to another directory, pinned twice after an interrupted move), then
/// unlinks everything and removes the directories. Returns what it detached, for messages.
///
/// # Errors
/// When a pin cannot be removed.
pub fn remove_tree(dir: &Path, keep: &[u32]) -> Result<Vec<LinkPin>> {
    let mut detached = Vec::new();
    for (pin, path) in link_pins(&dir.join("links")) {
        if let Ok(fd) = obj_get(&path) {
            if link_info(fd.as_fd()).is_ok_and(|i| keep.contains(&i.id)) {
                continue;
            }
            let _ = link_detach(fd.as_fd());
        }
        detached.push(pin);
    }
    remove_recursively(dir)?;
    Ok(detached)
}

fn remove_recursively(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(anyhow!("{}: {e}", path.display())),
    };
    if meta.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
            remove_recursively(&entry?.path())?;
        }
        fs::remove_dir(path).with_context(|| format!("removing {}", path.display()))?;
    } else {
        fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_and_avoids_dots_and_slashes() {
        for name in [
            "eth0",
            "eth0.100",
            "br-lan_1",
            "/sys/fs/cgroup/a.b",
            "wlan%0",
        ] {
            let e = escape(name.as_bytes());
            assert!(!e.contains('.') && !e.contains('/'), "{e}");
            assert_eq!(unescape(&e).unwrap(), name.as_bytes());
        }
        assert_eq!(unescape("%zz"), None);
    }

    #[test]
    fn link_pin_names_parse_back() {
        for pin in [
            LinkPin::Xdp {
                mode: "native".into(),
                iface: "eth0.100".into(),
            },
            LinkPin::Xdp {
                mode: "generic".into(),
                iface: "veth-b".into(),
            },
            LinkPin::Cgroup {
                path: "/sys/fs/cgroup/unified".into(),
            },
            LinkPin::Bind {
                prog: "connect4".into(),
                path: "/sys/fs/cgroup/unified/app-1.slice".into(),
            },
            LinkPin::TcxScrub {
                ingress: true,
                iface: "veth-in".into(),
            },
            LinkPin::TcxScrub {
                ingress: false,
                iface: "eth-1".into(),
            },
            LinkPin::TcxNat {
                ingress: true,
                iface: "wan-0".into(),
            },
            LinkPin::TcxLbReverse {
                iface: "veth-lb".into(),
            },
            LinkPin::TcxIntel {
                iface: "veth-in".into(),
            },
            LinkPin::TcxTls {
                ingress: true,
                iface: "veth-in".into(),
            },
            LinkPin::TcxTls {
                ingress: false,
                iface: "eth-1".into(),
            },
            LinkPin::TcxDhcp {
                iface: "veth-in".into(),
            },
            LinkPin::TcxDnsCache {
                iface: "eth0.100".into(),
            },
            LinkPin::TcxAction {
                iface: "veth-in".into(),
            },
            LinkPin::TcxCanary { iface: "lo".into() },
            LinkPin::TcxIds {
                ingress: false,
                iface: "veth-in".into(),
            },
        ] {
            assert_eq!(LinkPin::parse(&pin.file_name()), Some(pin.clone()));
        }
        assert_eq!(LinkPin::parse("something-else"), None);
    }

    #[test]
    fn layout_id_depends_on_every_shape_field_but_not_order() {
        let shape = |name: &str, max| MapShape {
            name: name.into(),
            map_type: 2,
            key_size: 4,
            value_size: 8,
            max_entries: max,
            flags: 0,
        };
        let a = layout_id(&[shape("A", 1), shape("B", 2)]);
        assert_eq!(a, layout_id(&[shape("B", 2), shape("A", 1)]));
        assert_ne!(a, layout_id(&[shape("A", 1), shape("B", 3)]));
        assert_eq!(
            a,
            layout_id(&[shape("A", 1), shape("B", 2), shape(".rodata", 1)])
        );
        assert_eq!(a.len(), 16);
    }
}
