//! DNS binding (`[dns.bind]`): the policy section, the map writer, the attachments of the
//! kernel programs to the cgroups in bind mode, and the counters.
//!
//! Kernel side: `palisade-ebpf/src/dnsbind/` (answer path and connect path); shared layout
//! and the answer walker: `palisade_common::dnsbind`. See `docs/design/dns.md`, "Binding".

use std::{
    fs,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, links::FdLink},
};
use palisade_common::dnsbind::{
    BIND_ON, BIND_STAT_NAMES, BIND_STATS_COUNT, BindConfig, MAX_BIND_ALLOW, MAX_BIND_CGROUPS,
    MAX_BIND_PIN, MAX_GRACE_SECS, PIN_DOH, PIN_ON, PIN_RESOLVER, REBIND_REFUSE,
};

use crate::{
    maps::{map, map_mut},
    pin::{self, LinkPin},
    policy::model::{Cidr, Family},
};

/// The answer program (cgroup_skb ingress).
pub const ANSWER: &str = "palisade_bind_answer";
/// The connect-path programs (cgroup sock_addr).
pub const SOCK_ADDR: [&str; 4] = [
    "palisade_bind_connect4",
    "palisade_bind_connect6",
    "palisade_bind_sendmsg4",
    "palisade_bind_sendmsg6",
];

/// The query recorder (cgroup_skb egress): only answers to recorded queries bind.
pub const QUERY: &str = "palisade_bind_query";

/// The DoH canary answer of resolver pinning (tcx egress on the guarded interfaces and
/// `lo`).
pub const CANARY: &str = "palisade_bind_canary";

/// Default grace period past an answer's TTL, in seconds.
pub const DEFAULT_GRACE_SECS: u32 = 30;

/// `[dns.bind]`: the cgroups in bind mode and what they may reach without an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsBind {
    /// cgroup v2 directories in bind mode (their descendants included).
    pub cgroups: Vec<PathBuf>,
    /// Seconds a binding outlives its answer's TTL (`0..=MAX_GRACE_SECS`).
    pub grace_secs: u32,
    /// Destinations allowed without a DNS answer (the resolvers among them), besides
    /// loopback and the unspecified address, which are always allowed.
    pub allow: Vec<Cidr>,
    /// Resolver pinning: when not empty, DNS (port 53) goes only to these, and only their
    /// answers bind; DoT/DoQ (port 853) and [`Self::doh_endpoints`] are refused.
    pub resolvers: Vec<Cidr>,
    /// Known DNS-over-HTTPS endpoints, refused while pinning is on.
    pub doh_endpoints: Vec<Cidr>,
    /// Rebinding protection (`rebinding = "refuse"`): answers that put a private address
    /// ([`palisade_common::dnsbind::is_private`]) behind a name not on
    /// [`Self::rebinding_allow`] are dropped.
    pub rebinding_refuse: bool,
    /// Names whose answers may hold private addresses (`rebinding_allow`), matched as DNS
    /// list entries are: `name` exactly, `*.name` every name below it.
    pub rebinding_allow: Vec<crate::policy::model::NameEntry>,
}

impl Default for DnsBind {
    fn default() -> Self {
        Self {
            cgroups: Vec::new(),
            grace_secs: DEFAULT_GRACE_SECS,
            allow: Vec::new(),
            resolvers: Vec::new(),
            doh_endpoints: Vec::new(),
            rebinding_refuse: false,
            rebinding_allow: Vec::new(),
        }
    }
}

/// Always allowed: loopback and the unspecified address (a connect to it reaches this
/// host), in both families.
fn implicit_allow() -> Vec<(u32, [u8; 16])> {
    let mut lo4 = [0u8; 16];
    lo4[10] = 0xff;
    lo4[11] = 0xff;
    let any4 = lo4;
    lo4[12] = 127;
    let mut lo6 = [0u8; 16];
    lo6[15] = 1;
    vec![(96 + 8, lo4), (128, any4), (128, lo6), (128, [0; 16])]
}

/// The LPM entry of a CIDR (IPv4 under `::ffff:0:0/96`).
#[must_use]
pub fn allow_entry(c: &Cidr) -> (u32, [u8; 16]) {
    let len = match c.family {
        Family::V4 => 96 + u32::from(c.prefix_len),
        Family::V6 => u32::from(c.prefix_len),
    };
    (len, c.addr)
}

/// Whether `bind` fits the kernel's maps; checked before anything is written.
///
/// # Errors
/// When the allow list (with the implicit entries) is over `MAX_BIND_ALLOW`, the resolvers
/// and DoH endpoints over `MAX_BIND_PIN`, or the grace period over `MAX_GRACE_SECS`.
pub fn fits(bind: &DnsBind) -> Result<()> {
    let n = bind.allow.len() + implicit_allow().len();
    if n > MAX_BIND_ALLOW as usize {
        return Err(anyhow!(
            "[dns.bind].allow holds {} prefixes; the kernel table holds {} (with {} implicit)",
            bind.allow.len(),
            MAX_BIND_ALLOW,
            implicit_allow().len()
        ));
    }
    let pins = bind.resolvers.len() + bind.doh_endpoints.len();
    if pins > MAX_BIND_PIN as usize {
        return Err(anyhow!(
            "[dns.bind].resolvers and doh_endpoints hold {pins} prefixes; the kernel table \
             holds {MAX_BIND_PIN}"
        ));
    }
    if bind.cgroups.len() > MAX_BIND_CGROUPS as usize {
        return Err(anyhow!(
            "[dns.bind].cgroups holds {} cgroups; the kernel table holds {MAX_BIND_CGROUPS}",
            bind.cgroups.len()
        ));
    }
    if bind.grace_secs > MAX_GRACE_SECS {
        return Err(anyhow!(
            "[dns.bind].grace is {} s; at most {MAX_GRACE_SECS}",
            bind.grace_secs
        ));
    }
    Ok(())
}

/// Writes the bind settings and allow list (or turns binding off). Bindings themselves are
/// kept: they belong to cgroups and expire on their own.
///
/// # Errors
/// When the maps cannot be written, or `bind` does not fit (nothing is then written).
pub fn write_config(ebpf: &mut Ebpf, bind: Option<&DnsBind>) -> Result<()> {
    if let Some(b) = bind {
        fits(b)?;
    }
    let wanted: Vec<(u32, [u8; 16])> = match bind {
        Some(b) => implicit_allow()
            .into_iter()
            .chain(b.allow.iter().map(allow_entry))
            .collect(),
        None => Vec::new(),
    };
    {
        let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> =
            LpmTrie::try_from(map_mut(ebpf, "BIND_ALLOW")?)?;
        // Additions first, then removals: an entry in both lists is never missing.
        for (len, addr) in &wanted {
            trie.insert(&Key::new(*len, *addr), 1, 0)
                .context("writing [dns.bind].allow")?;
        }
        let stale: Vec<Key<[u8; 16]>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            let _ = trie.remove(&k);
        }
    }
    let pins: Vec<((u32, [u8; 16]), u8)> = bind
        .map(|b| {
            b.resolvers
                .iter()
                .map(|c| (allow_entry(c), PIN_RESOLVER))
                .chain(b.doh_endpoints.iter().map(|c| (allow_entry(c), PIN_DOH)))
                .collect()
        })
        .unwrap_or_default();
    {
        let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> =
            LpmTrie::try_from(map_mut(ebpf, "BIND_PIN")?)?;
        for ((len, addr), kind) in &pins {
            trie.insert(&Key::new(*len, *addr), *kind, 0)
                .context("writing [dns.bind].resolvers and doh_endpoints")?;
        }
        let stale: Vec<Key<[u8; 16]>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !pins.iter().any(|(e, _)| *e == (k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            let _ = trie.remove(&k);
        }
    }
    // The cgroup ids the canary answer recognises (a cgroup v2 directory's inode number is
    // its id). A directory that is gone has no sockets (and the daemon refuses a policy
    // naming one before it gets here).
    let ids: Vec<u64> = bind
        .map(|b| {
            b.cgroups
                .iter()
                .filter_map(|c| fs::metadata(c).ok().map(|m| m.ino()))
                .collect()
        })
        .unwrap_or_default();
    {
        let mut m: HashMap<&mut MapData, u64, u8> =
            HashMap::try_from(map_mut(ebpf, "BIND_CGROUPS")?)?;
        for id in &ids {
            m.insert(id, 1, 0).context("writing [dns.bind].cgroups")?;
        }
        let stale: Vec<u64> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ids.contains(k))
            .collect();
        for k in stale {
            let _ = m.remove(&k);
        }
    }
    let cfg = bind.map_or_else(BindConfig::default, |b| BindConfig {
        grace_ns: u64::from(b.grace_secs) * 1_000_000_000,
        enabled: BIND_ON,
        pinned: if b.resolvers.is_empty() { 0 } else { PIN_ON },
        rebinding: if b.rebinding_refuse { REBIND_REFUSE } else { 0 },
        _pad: 0,
    });
    let mut m: Array<&mut MapData, BindConfig> = Array::try_from(map_mut(ebpf, "BIND_CONFIG")?)?;
    m.set(0, cfg, 0).context("writing the bind settings")?;
    Ok(())
}

/// The binding counters summed over CPUs, by name.
///
/// # Errors
/// When the map cannot be read.
pub fn counters(ebpf: &Ebpf) -> Result<Vec<(&'static str, u64)>> {
    let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(ebpf, "BIND_STATS")?)?;
    let mut out = Vec::with_capacity(BIND_STATS_COUNT as usize);
    for (i, name) in BIND_STAT_NAMES.iter().enumerate() {
        out.push((*name, m.get(&(i as u32), 0)?.iter().sum()));
    }
    Ok(out)
}

/// The binding counters as `palisade stats` and the metrics show them; empty when they
/// cannot be read.
#[must_use]
pub fn named_counters(ebpf: &Ebpf) -> Vec<crate::stats::Named> {
    counters(ebpf)
        .map(|v| {
            v.into_iter()
                .map(|(name, value)| crate::stats::Named {
                    name: name.to_owned(),
                    value,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The bind programs' links on one cgroup, pinned under the state's `links/`.
struct Attached {
    path: PathBuf,
    _links: Vec<OwnedFd>,
}

/// The programs by the short names their link pins carry (`bind-<short>-<cgroup>`).
const PROGRAMS: [(&str, &str); 6] = [
    ("answer", ANSWER),
    ("connect4", SOCK_ADDR[0]),
    ("connect6", SOCK_ADDR[1]),
    ("sendmsg4", SOCK_ADDR[2]),
    ("sendmsg6", SOCK_ADDR[3]),
    ("query", QUERY),
];

/// The bind programs, once loaded, and their attachments. The links are pinned like the
/// other programs' (`links/bind-<program>-<cgroup>`): a daemon that exits without
/// unloading, or crashes, leaves the cgroups in bind mode with the last policy's settings,
/// and the next daemon adopts the links (switching them to its own programs) rather than
/// attaching twice.
#[derive(Default)]
pub struct Attachments {
    loaded: bool,
    cgroups: Vec<Attached>,
}

impl Attachments {
    /// Loads the programs (once) and makes the attachments match `bind`: adopts pinned
    /// links, attaches and pins what is missing, detaches from cgroups no longer in bind
    /// mode. Returns notes.
    ///
    /// # Errors
    /// When a program is refused, a cgroup cannot be attached to, or a link not pinned.
    pub fn sync(
        &mut self,
        ebpf: &mut Ebpf,
        links_dir: &Path,
        bind: Option<&DnsBind>,
    ) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        let wanted: Vec<PathBuf> = bind.map(|b| b.cgroups.clone()).unwrap_or_default();
        self.cgroups.retain(|a| wanted.contains(&a.path));
        let mut removed: Vec<PathBuf> = Vec::new();
        for (pin, path) in pin::link_pins(links_dir) {
            if let LinkPin::Bind { path: cg, .. } = pin
                && !wanted.contains(&cg)
            {
                if let Ok(fd) = pin::obj_get(&path) {
                    let _ = pin::link_detach(fd.as_fd());
                }
                let _ = fs::remove_file(&path);
                if !removed.contains(&cg) {
                    notes.push(format!("DNS binding removed from cgroup {}", cg.display()));
                    removed.push(cg);
                }
            }
        }
        if wanted.is_empty() {
            return Ok(notes);
        }
        if !self.loaded {
            load(ebpf)?;
            self.loaded = true;
        }
        for cg in wanted {
            if self.cgroups.iter().any(|a| a.path == cg) {
                continue;
            }
            let (links, adopted) = attach(ebpf, links_dir, &cg)?;
            notes.push(if adopted == 0 {
                format!("DNS binding on cgroup {}", cg.display())
            } else {
                format!(
                    "DNS binding on cgroup {} ({adopted} pinned links adopted)",
                    cg.display()
                )
            });
            self.cgroups.push(Attached {
                path: cg,
                _links: links,
            });
        }
        Ok(notes)
    }
}

/// Verifies the six programs.
///
/// # Errors
/// When the kernel refuses one.
pub fn load(ebpf: &mut Ebpf) -> Result<()> {
    for name in [ANSWER, QUERY] {
        let p: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("kernel object has no program {name}"))?
            .try_into()?;
        p.load().with_context(|| format!("verifying {name}"))?;
    }
    for name in SOCK_ADDR {
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("kernel object has no program {name}"))?
            .try_into()?;
        p.load().with_context(|| format!("verifying {name}"))?;
    }
    Ok(())
}

/// Attaches the (loaded) programs to one cgroup, each link pinned in `links_dir`; a link
/// pinned there already for this cgroup is adopted (and switched to this object's program).
/// Returns the links and how many were adopted.
fn attach(ebpf: &mut Ebpf, links_dir: &Path, cg: &Path) -> Result<(Vec<OwnedFd>, usize)> {
    let open = || fs::File::open(cg).with_context(|| format!("opening cgroup {}", cg.display()));
    let ino = fs::metadata(cg)
        .with_context(|| format!("reading cgroup {}", cg.display()))?
        .ino();
    let mut links = Vec::new();
    let mut adopted = 0;
    for (short, name) in PROGRAMS {
        let pin_path = links_dir.join(
            LinkPin::Bind {
                prog: short.to_owned(),
                path: cg.to_path_buf(),
            }
            .file_name(),
        );
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?;
        let prog_id = prog.info()?.id();
        if let Ok(fd) = pin::obj_get(&pin_path) {
            match pin::link_info(fd.as_fd()) {
                Ok(info) if info.link_type == pin::LINK_TYPE_CGROUP && info.cgroup_id == ino => {
                    if info.prog_id != prog_id {
                        pin::link_update(fd.as_fd(), prog.fd()?.as_fd()).with_context(|| {
                            format!(
                                "switching the pinned {name} link on {} to this build's program",
                                cg.display()
                            )
                        })?;
                    }
                    links.push(fd);
                    adopted += 1;
                    continue;
                }
                _ => {
                    let _ = pin::link_detach(fd.as_fd());
                }
            }
        }
        let _ = fs::remove_file(&pin_path);
        let link = if short == "answer" || short == "query" {
            let p: &mut CgroupSkb = prog.try_into()?;
            let direction = if short == "answer" {
                CgroupSkbAttachType::Ingress
            } else {
                CgroupSkbAttachType::Egress
            };
            let id = p
                .attach(open()?, direction, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", cg.display()))?;
            FdLink::try_from(p.take_link(id)?)?
        } else {
            let p: &mut CgroupSockAddr = prog.try_into()?;
            let id = p
                .attach(open()?, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", cg.display()))?;
            FdLink::try_from(p.take_link(id)?)?
        };
        drop(
            link.pin(&pin_path)
                .with_context(|| format!("pinning the {name} link of {}", cg.display()))?,
        );
        links.push(pin::obj_get(&pin_path)?);
    }
    Ok((links, adopted))
}
