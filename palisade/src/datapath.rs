//! The kernel side of the daemon: maps, programs and links, all pinned under bpffs so the
//! policy stays enforced when the daemon exits or dies, and adopted again when it restarts.
//!
//! Start-up, in order, so that no packet ever meets a missing or half-written policy:
//!
//! 1. [`Datapath::load`]: the maps of this build's layout are opened from their pins (or
//!    created and pinned the first time). Their contents, counters and the event ring carry
//!    over.
//! 2. The daemon installs its policy (an idle-generation write and one flip, see `guard`).
//! 3. [`Datapath::attach`]: the programs are reused from their pins when this build pinned
//!    them against these maps, otherwise loaded and pinned; each pinned link is reopened and,
//!    if it runs another program, switched with `BPF_LINK_UPDATE` (no detach); interfaces
//!    with no link get a new one. Links found under an incompatible layout are moved the
//!    same way, and that layout's pins are removed only after every link has moved.

use std::{
    fs,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, ProgramArray},
    programs::{
        CgroupSkb, CgroupSkbAttachType, LinkOrder, SchedClassifier, TcAttachType, Xdp,
        links::FdLink, tc::TcAttachOptions,
    },
};
use aya_obj::programs::XdpAttachType;
use serde::{Deserialize, Serialize};

use crate::{
    attach::{self, Mode},
    conntrack::carry,
    guard::{CT_INGRESS, DNS_EGRESS, DNS_INGRESS, FIREWALL, RULES, SYNCOOKIE, TAILS},
    loader,
    maps::map_mut,
    pin::{self, Layout, LinkPin, Mounted, PinLock},
    policy::model::Policy,
};

/// Every XDP program, loaded and pinned together: the firewall (attached), the DNS
/// inspector, then the other stages and the sweep.
const XDP_PROGRAMS: [&str; 7] = [
    FIREWALL,
    DNS_INGRESS,
    CT_INGRESS,
    RULES,
    crate::conntrack::SWEEP,
    SYNCOOKIE,
    crate::guard::LB,
];
/// The egress tracker (TC).
const CT_EGRESS: &str = crate::conntrack::EGRESS;

/// Where the daemon keeps its state and what it guards.
#[derive(Debug, Clone)]
pub struct Options {
    pub pin_dir: PathBuf,
    pub ifaces: Vec<String>,
    pub force_generic: bool,
    /// Capacities of the connection tracking tables (`[conntrack]`).
    pub ct_sizes: carry::Sizes,
    /// Capacities of the indicator maps (`[intel]`).
    pub intel_sizes: crate::intel::load::Sizes,
    /// Entries of the DNS response cache (`[dns.cache] capacity`).
    pub dns_cache_capacity: u32,
    /// Capacities of the engines' state maps, by use (`capacity::engines`), and of the key
    /// filters, by the policy's keys (`capacity::key_filter_sizes`).
    pub engine_sizes: Vec<(&'static str, u32)>,
}

/// How an attachment came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Attached by this daemon.
    Created,
    /// A pinned link of this layout, reopened.
    Adopted,
    /// A pinned link of an incompatible layout, switched to this build's program.
    Moved,
    /// Attached without a pin (old kernel): it ends with the daemon.
    Unpinned,
}

/// The firewall on one interface.
#[derive(Debug)]
pub struct XdpAttachment {
    pub iface: String,
    pub ifindex: u32,
    pub mode: Mode,
    pub link: Option<OwnedFd>,
    pub link_id: Option<u32>,
    pub origin: Origin,
}

/// The DNS egress program on one cgroup.
#[derive(Debug)]
pub struct CgroupAttachment {
    pub path: PathBuf,
    pub link: Option<OwnedFd>,
    pub link_id: Option<u32>,
    pub origin: Origin,
}

/// The loaded, pinned datapath.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub layout: Layout,
    _lock: PinLock,
    pub mounted: Mounted,
    /// Maps reused from pins (the rest were created now).
    pub maps_reused: usize,
    pub maps_created: usize,
    firewall: Option<Xdp>,
    dns_ingress: Option<Xdp>,
    /// The XDP programs after the first two of [`XDP_PROGRAMS`], in that order.
    stages: Vec<Xdp>,
    ct_egress: Option<SchedClassifier>,
    /// The egress tracker's link on each guarded interface.
    pub tc: Vec<(String, OwnedFd)>,
    /// The scrub programs, ingress then egress, once loaded.
    scrub: Vec<SchedClassifier>,
    /// Their links: each guarded interface's ingress link, then its egress one.
    pub scrub_links: Vec<(String, OwnedFd)>,
    /// The NAT programs, ingress then egress, once loaded.
    nat: Vec<SchedClassifier>,
    /// Their links, like the scrub's.
    pub nat_links: Vec<(String, OwnedFd)>,
    /// The DNAT reverse translation of the load balancer (TC egress), once loaded.
    lb_reverse: Option<SchedClassifier>,
    /// Its link on each guarded interface.
    pub lb_links: Vec<(String, OwnedFd)>,
    /// The TLS gate's programs, ingress then egress, once loaded.
    tls: Vec<SchedClassifier>,
    /// Their links, as the scrub's.
    pub tls_links: Vec<(String, OwnedFd)>,
    /// DHCP snooping of what leaves (TC egress), once loaded.
    dhcp: Vec<SchedClassifier>,
    /// Its link on each guarded interface.
    pub dhcp_links: Vec<(String, OwnedFd)>,
    /// The indicator check of what leaves (`[intel] egress`), once loaded.
    intel: Vec<SchedClassifier>,
    /// Its link on each guarded interface.
    pub intel_links: Vec<(String, OwnedFd)>,
    /// The IDS preselection, ingress then egress, once loaded.
    ids: Vec<SchedClassifier>,
    /// Their links, as the scrub's.
    pub ids_links: Vec<(String, OwnedFd)>,
    /// The DNS response cache's fill (TC egress), once `[dns.cache]` was enabled.
    dns_cache: Option<SchedClassifier>,
    /// Its link on each guarded interface while `[dns.cache]` is enabled.
    pub dns_cache_links: Vec<(String, OwnedFd)>,
    /// The mark of `mark` rules set on the socket buffer (TC ingress), once loaded.
    mark: Vec<SchedClassifier>,
    /// Its link on each guarded interface.
    pub mark_links: Vec<(String, OwnedFd)>,
    /// The DoH canary answer of resolver pinning (tcx egress), and its links.
    bind_canary: Option<SchedClassifier>,
    bind_canary_links: Vec<(String, OwnedFd)>,
    /// The guarded interfaces (the cache's fill follows the policy on reloads).
    ifaces: Vec<String>,
    /// The entries the DNS response cache was created with.
    pub dns_cache_capacity: u32,
    /// The capacities the engines' state maps and the key filters were created with
    /// (`capacity::engines`, `capacity::key_filter_sizes`).
    pub engine_sizes: Vec<(&'static str, u32)>,
    egress: Option<CgroupSkb>,
    /// Whether the XDP programs came from pins rather than a fresh load.
    pub programs_reused: bool,
    /// Old connection tracking tables whose flows are being carried into this build's
    /// (until the attachments switched).
    carry: Vec<carry::Source>,
    /// When the first copy pass began.
    carry_since: u64,
    /// The capacities the tracking tables were created with.
    pub ct_sizes: carry::Sizes,
    pub xdp: Vec<XdpAttachment>,
    pub cgroups: Vec<CgroupAttachment>,
    /// The `[dns.bind]` programs' attachments.
    bind: crate::dnsbind::Attachments,
}

/// Whether `policy` turns the DNS response cache on.
fn cache_enabled(policy: &Policy) -> bool {
    policy.dns.cache.as_ref().is_some_and(|c| c.enabled)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Datapath {
    /// Opens (or creates) the pinned maps of this build under `opts.pin_dir`. Notes for the
    /// operator go to `notes`.
    ///
    /// # Errors
    /// When the pin directory cannot be prepared or locked, or the object cannot be loaded.
    pub fn load(opts: &Options, notes: &mut Vec<String>) -> Result<Self> {
        let mounted = pin::prepare_root(&opts.pin_dir)?;
        match mounted {
            Mounted::Existing => {}
            Mounted::Mounted => notes.push(format!("mounted a BPF filesystem at {}", pin::BPFFS_ROOT)),
            Mounted::MountedPrivately => notes.push(format!(
                "mounted a BPF filesystem at {} inside a private mount namespace: the pins vanish when this process exits (run in the host's mount namespace, or pass --pin-dir on a shared bpffs)",
                pin::BPFFS_ROOT
            )),
        }
        let lock = PinLock::acquire(&opts.pin_dir)?;
        let layout = loader::layout(opts.pin_dir.clone())?;
        let mut carried = carry::take_resized(&layout, opts.ct_sizes)?;
        if let Some(n) = crate::intel::load::drop_resized(&layout, opts.intel_sizes)? {
            notes.push(n);
        }
        if let Some(n) = crate::dns::cache::drop_resized(&layout, opts.dns_cache_capacity)? {
            notes.push(n);
        }
        notes.extend(crate::capacity::engines::drop_resized(
            &layout,
            &opts.engine_sizes,
        )?);
        let mut pinned = loader::load_pinned(
            &layout,
            opts.ct_sizes,
            opts.intel_sizes,
            opts.dns_cache_capacity,
            &opts.engine_sizes,
        )?;
        if let Err(e) = verify_map_shapes(&layout) {
            drop(pinned);
            let aside = opts.pin_dir.join(format!(
                "layout-{}-damaged-{}",
                layout.layout_id,
                unix_now()
            ));
            fs::rename(layout.dir(), &aside).with_context(|| {
                format!("setting aside damaged pins {}", layout.dir().display())
            })?;
            notes.push(format!(
                "pinned maps under {} do not match this build ({e:#}); starting fresh state, the old one is removed once everything is attached",
                layout.dir().display()
            ));
            pinned = loader::load_pinned(
                &layout,
                opts.ct_sizes,
                opts.intel_sizes,
                opts.dns_cache_capacity,
                &opts.engine_sizes,
            )?;
        }
        // The policy's tables are created at each install, pinned here (see `capacity`).
        crate::capacity::pin_tables_under(Some(layout.tables_dir()))?;
        carried.extend(carry::take_foreign(&layout)?);
        let carry_since = carry::now_ns();
        if !carried.is_empty() {
            let c = carry::copy(&carried, &pinned.ebpf, None)?;
            notes.push(format!(
                "carrying tracked connections from {} into new tables: {} copied{}",
                carry::describe(&carried),
                c.copied,
                c.lost_note()
            ));
        }
        if !pinned.created.is_empty() {
            // Pinned programs refer to the maps they were loaded with; with any map new they
            // are stale. Removing their pins keeps "a pinned program is valid" true even if
            // this start is interrupted.
            for d in std::iter::once(layout.progs_dir()).chain(layout.other_builds()) {
                pin::remove_tree(&d, &[])?;
            }
            layout.create_dirs()?;
        }
        Ok(Self {
            ebpf: pinned.ebpf,
            layout,
            _lock: lock,
            mounted,
            maps_reused: pinned.reused.len(),
            maps_created: pinned.created.len(),
            firewall: None,
            dns_ingress: None,
            stages: Vec::new(),
            ct_egress: None,
            tc: Vec::new(),
            scrub: Vec::new(),
            scrub_links: Vec::new(),
            nat: Vec::new(),
            nat_links: Vec::new(),
            lb_reverse: None,
            lb_links: Vec::new(),
            tls: Vec::new(),
            tls_links: Vec::new(),
            ids: Vec::new(),
            ids_links: Vec::new(),
            dhcp: Vec::new(),
            dhcp_links: Vec::new(),
            intel: Vec::new(),
            intel_links: Vec::new(),
            dns_cache: None,
            dns_cache_links: Vec::new(),
            mark: Vec::new(),
            mark_links: Vec::new(),
            bind_canary: None,
            bind_canary_links: Vec::new(),
            ifaces: opts.ifaces.clone(),
            dns_cache_capacity: opts.dns_cache_capacity,
            engine_sizes: opts.engine_sizes.clone(),
            egress: None,
            programs_reused: false,
            carry: carried,
            carry_since,
            ct_sizes: opts.ct_sizes,
            xdp: Vec::new(),
            cgroups: Vec::new(),
            bind: crate::dnsbind::Attachments::default(),
        })
    }

    /// Whether the state was adopted from an earlier daemon (maps reused).
    #[must_use]
    pub const fn adopted(&self) -> bool {
        self.maps_reused > 0 && self.maps_created == 0
    }

    /// Loads or reuses the programs and attaches them to every interface and to the
    /// policy's egress cgroups, then removes pins of incompatible layouts. Returns notes.
    ///
    /// # Errors
    /// When a program is refused or an attachment fails; the pins of other layouts are
    /// then left alone.
    pub fn attach(&mut self, opts: &Options, policy: &Policy) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        // Every program is loaded (and verified, which takes long) before any hook switches,
        // so the hooks switch within moments of each other.
        self.ensure_tc_program()?;
        for group in TcGroup::BEFORE_LB {
            self.ensure_group(group)?;
        }
        self.ensure_lb_reverse()?;
        for group in TcGroup::AFTER_LB {
            self.ensure_group(group)?;
        }
        if cache_enabled(policy) {
            self.ensure_dns_cache_program()?;
        }
        self.ensure_xdp_programs()?;
        if !self.carry.is_empty() {
            // The old programs ran on while these loaded: refresh the copy just before the
            // switch.
            self.carry_since = carry::now_ns();
            carry::copy(&self.carry, &self.ebpf, None)?;
        }
        self.fill_tail_calls()?;
        self.sync_xdp(opts, &mut notes)?;
        self.sync_tc(opts, &mut notes)?;
        for group in TcGroup::BEFORE_LB {
            self.sync_group(group, opts, &mut notes)?;
        }
        self.sync_lb_reverse(opts, &mut notes)?;
        for group in TcGroup::AFTER_LB {
            self.sync_group(group, opts, &mut notes)?;
        }
        self.ifaces.clone_from(&opts.ifaces);
        notes.extend(self.sync_dns_cache(policy)?);
        notes.extend(self.sync_cgroups(policy)?);
        if !self.carry.is_empty() {
            // The new programs run now: bring over what the old ones did meanwhile.
            let c = carry::copy(&self.carry, &self.ebpf, Some(self.carry_since))?;
            notes.push(format!(
                "tracked connections carried over: {} more copied after the switch ({} TCP flows updated on both sides now followed without window checks), {} already current{}",
                c.copied,
                c.loosened,
                c.kept,
                c.lost_note()
            ));
            notes.extend(carry::release(std::mem::take(&mut self.carry)));
        }
        let in_use: Vec<u32> = self
            .xdp
            .iter()
            .filter_map(|a| a.link_id)
            .chain(self.cgroups.iter().filter_map(|a| a.link_id))
            .chain(
                self.tc
                    .iter()
                    .chain(&self.scrub_links)
                    .chain(&self.nat_links)
                    .chain(&self.lb_links)
                    .chain(&self.tls_links)
                    .chain(&self.dhcp_links)
                    .chain(&self.intel_links)
                    .chain(&self.ids_links)
                    .chain(&self.dns_cache_links)
                    .chain(&self.mark_links)
                    .chain(&self.bind_canary_links)
                    .filter_map(|(_, fd)| pin::link_info(fd.as_fd()).ok().map(|i| i.id)),
            )
            .collect();
        for old in self.layout.foreign_layouts() {
            let detached = pin::remove_tree(&old, &in_use)?;
            notes.push(format!(
                "removed the pinned state of an incompatible build ({}){}",
                old.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                if detached.is_empty() {
                    String::new()
                } else {
                    format!(", detaching {} link(s) it still had", detached.len())
                }
            ));
        }
        for old in self.layout.other_builds() {
            pin::remove_tree(&old, &[])?;
        }
        Ok(notes)
    }

    fn ensure_xdp_programs(&mut self) -> Result<()> {
        let open_all = |layout: &Layout| -> Option<Vec<Xdp>> {
            XDP_PROGRAMS
                .iter()
                .map(|n| Xdp::from_pin(layout.prog(n), XdpAttachType::Interface).ok())
                .collect()
        };
        let progs = match open_all(&self.layout) {
            Some(p) => {
                self.programs_reused = true;
                p
            }
            None => {
                for name in XDP_PROGRAMS.iter().rev() {
                    let path = self.layout.prog(name);
                    let prog: &mut Xdp = self
                        .ebpf
                        .program_mut(name)
                        .ok_or_else(|| anyhow!("kernel object has no program {name}"))?
                        .try_into()?;
                    prog.load()
                        .with_context(|| format!("the kernel refused the program {name}"))?;
                    let _ = fs::remove_file(&path);
                    prog.pin(&path)
                        .with_context(|| format!("pinning {name} at {}", path.display()))?;
                }
                open_all(&self.layout)
                    .ok_or_else(|| anyhow!("reopening the programs just pinned"))?
            }
        };
        let mut progs = progs.into_iter();
        self.firewall = progs.next();
        self.dns_ingress = progs.next();
        self.stages = progs.collect();
        Ok(())
    }

    /// Puts the tail-call stages into the (pinned) table: before any link runs the firewall
    /// that calls them, and, when the stages change, the moment the pipeline switches.
    fn fill_tail_calls(&mut self) -> Result<()> {
        let stages: Vec<(u32, aya::programs::ProgramFd)> = TAILS
            .iter()
            .map(|(slot, name)| {
                let i = XDP_PROGRAMS
                    .iter()
                    .position(|n| n == name)
                    .expect("every tail-call stage is an XDP program");
                let prog = match i {
                    0 => self.firewall.as_ref(),
                    1 => self.dns_ingress.as_ref(),
                    _ => self.stages.get(i - 2),
                }
                .ok_or_else(|| anyhow!("the program {name} is not loaded"))?;
                Ok((*slot, prog.fd()?.try_clone()?))
            })
            .collect::<Result<_>>()?;
        let mut tails: ProgramArray<&mut MapData> =
            ProgramArray::try_from(map_mut(&mut self.ebpf, "XDP_TAILS")?)?;
        for (slot, fd) in &stages {
            tails
                .set(*slot, fd, 0)
                .context("filling the tail-call table")?;
        }
        Ok(())
    }

    /// The sweep program (expiry of tracked flows, flushes), once the programs are loaded.
    #[must_use]
    pub fn sweep_program(&self) -> Option<&Xdp> {
        let i = XDP_PROGRAMS
            .iter()
            .position(|n| *n == crate::conntrack::SWEEP)?;
        self.stages.get(i.checked_sub(2)?)
    }

    /// Runs the tracker's sweep once.
    ///
    /// # Errors
    /// When the programs are not loaded or the kernel refuses the run.
    pub fn sweep(
        &self,
        req: &palisade_common::conntrack::SweepRequest,
    ) -> Result<palisade_common::conntrack::CtCensus> {
        let prog = self
            .sweep_program()
            .ok_or_else(|| anyhow!("the conntrack sweep is not loaded"))?;
        crate::conntrack::sweep(prog, &self.ebpf, req)
    }

    fn ensure_tc_program(&mut self) -> Result<()> {
        if self.ct_egress.is_some() {
            return Ok(());
        }
        let path = self.layout.prog(CT_EGRESS);
        if let Ok(p) = SchedClassifier::from_pin(&path) {
            self.ct_egress = Some(p);
            return Ok(());
        }
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(CT_EGRESS)
            .ok_or_else(|| anyhow!("kernel object has no program {CT_EGRESS}"))?
            .try_into()?;
        prog.load()
            .context("the kernel refused the egress connection tracker")?;
        let _ = fs::remove_file(&path);
        prog.pin(&path)
            .with_context(|| format!("pinning {CT_EGRESS} at {}", path.display()))?;
        self.ct_egress = Some(SchedClassifier::from_pin(&path)?);
        Ok(())
    }

    /// Attaches the egress tracker (tcx) to every guarded interface, adopting pinned links
    /// and switching them to this build's program. Links are pinned: tracking of what the
    /// host sends survives the daemon, like the firewall.
    fn sync_tc(&mut self, opts: &Options, notes: &mut Vec<String>) -> Result<()> {
        self.ensure_tc_program()?;
        let pins = self.all_link_pins();
        let prog = self.ct_egress.as_mut().expect("loaded");
        self.tc = sync_tcx(
            &self.layout,
            &pins,
            prog,
            Tcx::CtEgress,
            &opts.ifaces,
            notes,
        )?;
        Ok(())
    }

    /// Loads (or reuses the pinned) TC programs `names` of `what`.
    fn tc_programs(&mut self, names: &[&str], what: &str) -> Result<Vec<SchedClassifier>> {
        let mut progs = Vec::new();
        for &name in names {
            let path = self.layout.prog(name);
            if let Ok(p) = SchedClassifier::from_pin(&path) {
                progs.push(p);
                continue;
            }
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("kernel object has no program {name}"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel refused the {what} program {name}"))?;
            let _ = fs::remove_file(&path);
            prog.pin(&path)
                .with_context(|| format!("pinning {name} at {}", path.display()))?;
            progs.push(SchedClassifier::from_pin(&path)?);
        }
        Ok(progs)
    }

    /// The programs of `group` once loaded, and their links.
    fn group_mut(
        &mut self,
        group: TcGroup,
    ) -> (&mut Vec<SchedClassifier>, &mut Vec<(String, OwnedFd)>) {
        match group {
            TcGroup::Scrub => (&mut self.scrub, &mut self.scrub_links),
            TcGroup::Nat => (&mut self.nat, &mut self.nat_links),
            TcGroup::Tls => (&mut self.tls, &mut self.tls_links),
            TcGroup::Dhcp => (&mut self.dhcp, &mut self.dhcp_links),
            TcGroup::Intel => (&mut self.intel, &mut self.intel_links),
            TcGroup::Mark => (&mut self.mark, &mut self.mark_links),
            TcGroup::Ids => (&mut self.ids, &mut self.ids_links),
        }
    }

    /// Loads (or reuses the pinned) programs of `group`, unless they are loaded.
    fn ensure_group(&mut self, group: TcGroup) -> Result<()> {
        if !self.group_mut(group).0.is_empty() {
            return Ok(());
        }
        let progs = self.tc_programs(group.names(), group.what())?;
        *self.group_mut(group).0 = progs;
        Ok(())
    }

    /// Attaches the programs of `group` to every guarded interface, adopting pinned links
    /// ([`sync_tcx_group`]).
    fn sync_group(
        &mut self,
        group: TcGroup,
        opts: &Options,
        notes: &mut Vec<String>,
    ) -> Result<()> {
        self.ensure_group(group)?;
        let pins = self.all_link_pins();
        // Taken out while the layout is borrowed, and put back whatever the outcome.
        let mut progs = std::mem::take(self.group_mut(group).0);
        let links = sync_tcx_group(
            &self.layout,
            &pins,
            &mut progs,
            group.kinds(),
            &opts.ifaces,
            notes,
        );
        let (loaded, linked) = self.group_mut(group);
        *loaded = progs;
        *linked = links?;
        Ok(())
    }

    /// Loads the DLP programs of the object and pins them, unless they are pinned (a pinned
    /// program of this build and layout refers to these maps): the `[dlp]` watcher opens
    /// them from their pins and attaches them (`dlp::probe::Source::Pinned`), so a reload
    /// loads nothing again.
    ///
    /// # Errors
    /// When the kernel refuses a program or it cannot be pinned.
    pub fn load_dlp(&mut self) -> Result<()> {
        for name in crate::dlp::probe::PROGRAMS {
            let path = self.layout.prog(name);
            if path.exists() {
                continue;
            }
            let loaded = self.ebpf.program(name).is_some_and(|p| p.fd().is_ok());
            if !loaded {
                crate::dlp::probe::load_program(&mut self.ebpf, name)?;
            }
            let prog = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("kernel object has no program {name}"))?;
            prog.pin(&path)
                .with_context(|| format!("pinning {name} at {}", path.display()))?;
        }
        Ok(())
    }

    /// Loads (or reuses the pinned) reverse translation of the load balancer.
    fn ensure_lb_reverse(&mut self) -> Result<()> {
        if self.lb_reverse.is_some() {
            return Ok(());
        }
        self.lb_reverse = self
            .tc_programs(&[crate::lb::REVERSE], "load balancer")?
            .pop();
        Ok(())
    }

    /// Attaches the load balancer's reverse translation (tcx egress) to every guarded
    /// interface, whatever the policy: with no DNAT service it reads one map slot and lets
    /// the packet go.
    fn sync_lb_reverse(&mut self, opts: &Options, notes: &mut Vec<String>) -> Result<()> {
        self.ensure_lb_reverse()?;
        let pins = self.all_link_pins();
        let prog = self.lb_reverse.as_mut().expect("loaded");
        self.lb_links = sync_tcx(
            &self.layout,
            &pins,
            prog,
            Tcx::LbReverse,
            &opts.ifaces,
            notes,
        )?;
        Ok(())
    }

    /// Loads (or reuses the pinned) fill of the DNS response cache.
    fn ensure_dns_cache_program(&mut self) -> Result<()> {
        if self.dns_cache.is_some() {
            return Ok(());
        }
        self.dns_cache = self
            .tc_programs(&[crate::dns::cache::FILL], "DNS response cache")?
            .pop();
        Ok(())
    }

    /// Makes the DNS response cache's fill (tcx egress, last in the chain: it stores only
    /// what the programs before it let leave) match `policy`: attached to every guarded
    /// interface while `[dns.cache] enabled`, adopting pinned links; detached (pins removed)
    /// otherwise. The XDP lookup follows the generation's settings by itself. Returns notes.
    ///
    /// # Errors
    /// When the program is refused or an attachment fails.
    pub fn sync_dns_cache(&mut self, policy: &Policy) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        let pins = self.all_link_pins();
        if cache_enabled(policy) {
            self.ensure_dns_cache_program()?;
            let prog = self.dns_cache.as_mut().expect("loaded");
            self.dns_cache_links = sync_tcx(
                &self.layout,
                &pins,
                prog,
                Tcx::DnsCache,
                &self.ifaces,
                &mut notes,
            )?;
        } else {
            // Every link of ours is pinned: the pins below name them all.
            for (_, fd) in self.dns_cache_links.drain(..) {
                let _ = pin::link_detach(fd.as_fd());
            }
            for (pin, path, _) in &pins {
                if let LinkPin::TcxDnsCache { iface } = pin {
                    if let Ok(fd) = pin::obj_get(path) {
                        let _ = pin::link_detach(fd.as_fd());
                    }
                    fs::remove_file(path)
                        .with_context(|| format!("removing {}", path.display()))?;
                    notes.push(format!("detached the DNS response cache from {iface}"));
                }
            }
        }
        Ok(notes)
    }

    fn ensure_egress_program(&mut self) -> Result<()> {
        if self.egress.is_some() {
            return Ok(());
        }
        let path = self.layout.prog(DNS_EGRESS);
        if let Ok(p) = CgroupSkb::from_pin(&path, CgroupSkbAttachType::Egress) {
            self.egress = Some(p);
            return Ok(());
        }
        let prog: &mut CgroupSkb = self
            .ebpf
            .program_mut(DNS_EGRESS)
            .ok_or_else(|| anyhow!("kernel object has no program {DNS_EGRESS}"))?
            .try_into()?;
        prog.load()
            .context("the kernel refused the cgroup DNS program")?;
        let _ = fs::remove_file(&path);
        prog.pin(&path)
            .with_context(|| format!("pinning {DNS_EGRESS} at {}", path.display()))?;
        self.egress = Some(CgroupSkb::from_pin(&path, CgroupSkbAttachType::Egress)?);
        Ok(())
    }

    /// The id of a loaded program.
    fn prog_id<P>(
        p: Option<&P>,
        info: impl Fn(&P) -> Result<aya::programs::ProgramInfo, aya::programs::ProgramError>,
    ) -> Option<u32> {
        p.and_then(|p| info(p).ok()).map(|i| i.id())
    }

    /// Ids of the firewall, DNS ingress and (when loaded) DNS egress programs.
    #[must_use]
    pub fn program_ids(&self) -> Vec<(&'static str, u32)> {
        let mut v = Vec::new();
        if let Some(id) = Self::prog_id(self.firewall.as_ref(), Xdp::info) {
            v.push((FIREWALL, id));
        }
        if let Some(id) = Self::prog_id(self.dns_ingress.as_ref(), Xdp::info) {
            v.push((DNS_INGRESS, id));
        }
        if let Some(id) = Self::prog_id(self.egress.as_ref(), CgroupSkb::info) {
            v.push((DNS_EGRESS, id));
        }
        v
    }

    /// Link pins of this layout, then of incompatible ones.
    fn all_link_pins(&self) -> Vec<(LinkPin, PathBuf, bool)> {
        let mut v: Vec<(LinkPin, PathBuf, bool)> = pin::link_pins(&self.layout.links_dir())
            .into_iter()
            .map(|(a, b)| (a, b, true))
            .collect();
        for d in self.layout.foreign_layouts() {
            v.extend(
                pin::link_pins(&d.join("links"))
                    .into_iter()
                    .map(|(a, b)| (a, b, false)),
            );
        }
        v
    }

    fn sync_xdp(&mut self, opts: &Options, notes: &mut Vec<String>) -> Result<()> {
        let fw_fd = self.firewall.as_ref().expect("loaded").fd()?.try_clone()?;
        let fw_id = Self::prog_id(self.firewall.as_ref(), Xdp::info).unwrap_or(0);
        let pins = self.all_link_pins();
        for iface in &opts.ifaces {
            let ifindex = attach::ifindex(iface)
                .ok_or_else(|| anyhow!("no network interface named {iface:?}"))?;
            let mut found: Option<XdpAttachment> = None;
            for (pin, path, ours) in &pins {
                let LinkPin::Xdp {
                    mode,
                    iface: pinned_iface,
                } = pin
                else {
                    continue;
                };
                if pinned_iface != iface || found.is_some() {
                    continue;
                }
                let Ok(fd) = pin::obj_get(path) else { continue };
                let info = pin::link_info(fd.as_fd());
                match info {
                    Ok(info) if info.link_type == pin::LINK_TYPE_XDP && info.ifindex == ifindex => {
                        if info.prog_id != fw_id {
                            pin::link_update(fd.as_fd(), fw_fd.as_fd()).with_context(|| {
                                format!("switching the pinned XDP link on {iface} to this build's program")
                            })?;
                        }
                        let mode = Mode::from_word(mode).unwrap_or(Mode::Native);
                        if *ours {
                            found = Some(XdpAttachment {
                                iface: iface.clone(),
                                ifindex,
                                mode,
                                link_id: Some(info.id),
                                link: Some(fd),
                                origin: Origin::Adopted,
                            });
                        } else {
                            let to = self.layout.links_dir().join(pin.file_name());
                            pin::move_link_pin(fd.as_fd(), path, &to)?;
                            found = Some(XdpAttachment {
                                iface: iface.clone(),
                                ifindex,
                                mode,
                                link_id: Some(info.id),
                                link: Some(fd),
                                origin: Origin::Moved,
                            });
                        }
                        if opts.force_generic && mode == Mode::Native {
                            notes.push(format!("{iface} keeps its pinned native-mode attachment; `palisade unload` first to switch to generic mode"));
                        }
                    }
                    _ => {
                        // A link whose device went away (or was replaced): it guards nothing.
                        let _ = pin::link_detach(fd.as_fd());
                        let _ = fs::remove_file(path);
                        notes.push(format!(
                            "removed a stale pinned link for {iface} ({})",
                            path.display()
                        ));
                    }
                }
            }
            let att = match found {
                Some(a) => a,
                None => {
                    let prog = self.firewall.as_mut().expect("loaded");
                    let (mode, link) = attach::attach_xdp_link(prog, iface, opts.force_generic)?;
                    match link {
                        Some(link) => {
                            let path = self.layout.links_dir().join(
                                LinkPin::Xdp {
                                    mode: mode.word().to_string(),
                                    iface: iface.clone(),
                                }
                                .file_name(),
                            );
                            let _ = fs::remove_file(&path);
                            drop(
                                link.pin(&path)
                                    .with_context(|| format!("pinning the XDP link of {iface}"))?,
                            );
                            let fd = pin::obj_get(&path)?;
                            let id = pin::link_info(fd.as_fd()).ok().map(|i| i.id);
                            XdpAttachment {
                                iface: iface.clone(),
                                ifindex,
                                mode,
                                link: Some(fd),
                                link_id: id,
                                origin: Origin::Created,
                            }
                        }
                        None => {
                            notes.push(format!(
                                "the kernel attached {iface} through netlink, which cannot be pinned: the firewall there ends with this process"
                            ));
                            XdpAttachment {
                                iface: iface.clone(),
                                ifindex,
                                mode,
                                link: None,
                                link_id: None,
                                origin: Origin::Unpinned,
                            }
                        }
                    }
                }
            };
            self.xdp.push(att);
        }
        // Our links on interfaces no longer configured.
        for (pin, path) in pin::link_pins(&self.layout.links_dir()) {
            if let LinkPin::Xdp { iface, .. } = &pin
                && !opts.ifaces.contains(iface)
            {
                if let Ok(fd) = pin::obj_get(&path) {
                    let _ = pin::link_detach(fd.as_fd());
                }
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                notes.push(format!(
                    "detached from {iface} (no longer given with --iface)"
                ));
            }
        }
        Ok(())
    }

    /// Makes the cgroup attachments match `policy` (`[dns.bind]`, then `[dns.egress]`):
    /// attaches to new cgroups, adopts pinned egress links, detaches from cgroups the policy
    /// no longer names. Returns notes.
    ///
    /// # Errors
    /// When a cgroup is missing or the kernel refuses.
    pub fn sync_cgroups(&mut self, policy: &Policy) -> Result<Vec<String>> {
        let links_dir = self.layout.links_dir();
        let mut notes = self
            .bind
            .sync(&mut self.ebpf, &links_dir, policy.dns.bind.as_ref())?;
        notes.extend(self.sync_egress_cgroups(policy)?);
        notes.extend(self.sync_bind_canary(policy)?);
        Ok(notes)
    }

    /// Makes the DoH canary answer (tcx egress) match `policy`: while `[dns.bind]` pins its
    /// cgroups to resolvers, attached to every guarded interface and to `lo` (a local
    /// resolver's queries leave by it), adopting pinned links; detached (pins removed)
    /// otherwise. Returns notes.
    fn sync_bind_canary(&mut self, policy: &Policy) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        let pins = self.all_link_pins();
        let pinning = policy
            .dns
            .bind
            .as_ref()
            .is_some_and(|b| !b.resolvers.is_empty());
        if pinning {
            if self.bind_canary.is_none() {
                self.bind_canary = self
                    .tc_programs(&[crate::dnsbind::CANARY], "DoH canary answer")?
                    .pop();
            }
            let prog = self.bind_canary.as_mut().expect("loaded");
            let mut ifaces = self.ifaces.clone();
            if !ifaces.iter().any(|i| i == "lo") {
                ifaces.push("lo".to_owned());
            }
            self.bind_canary_links = sync_tcx(
                &self.layout,
                &pins,
                prog,
                Tcx::BindCanary,
                &ifaces,
                &mut notes,
            )?;
        } else {
            for (_, fd) in self.bind_canary_links.drain(..) {
                let _ = pin::link_detach(fd.as_fd());
            }
            for (pin, path, _) in &pins {
                if let LinkPin::TcxCanary { iface } = pin {
                    if let Ok(fd) = pin::obj_get(path) {
                        let _ = pin::link_detach(fd.as_fd());
                    }
                    fs::remove_file(path)
                        .with_context(|| format!("removing {}", path.display()))?;
                    notes.push(format!("detached the DoH canary answer from {iface}"));
                }
            }
        }
        Ok(notes)
    }

    /// The DNS egress part of [`Self::sync_cgroups`].
    fn sync_egress_cgroups(&mut self, policy: &Policy) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        let mut desired: Vec<PathBuf> = Vec::new();
        if let Some(egress) = &policy.dns.egress {
            for c in &egress.cgroups {
                let (path, note) = attach::effective_cgroup(c)?;
                notes.extend(note);
                if !desired.contains(&path) {
                    desired.push(path);
                }
            }
        }
        if !desired.is_empty() {
            self.ensure_egress_program()?;
        }
        // Drop attachments no longer wanted.
        let mut keep = Vec::new();
        for a in self.cgroups.drain(..) {
            if desired.contains(&a.path) {
                keep.push(a);
            } else {
                if let Some(fd) = &a.link {
                    let _ = pin::link_detach(fd.as_fd());
                }
                let _ = fs::remove_file(
                    self.layout.links_dir().join(
                        LinkPin::Cgroup {
                            path: a.path.clone(),
                        }
                        .file_name(),
                    ),
                );
                notes.push(format!(
                    "DNS egress policy removed from cgroup {}",
                    a.path.display()
                ));
            }
        }
        self.cgroups = keep;
        for (pin, path) in pin::link_pins(&self.layout.links_dir()) {
            if let LinkPin::Cgroup { path: cg } = &pin
                && !desired.contains(cg)
                && !self.cgroups.iter().any(|a| &a.path == cg)
            {
                if let Ok(fd) = pin::obj_get(&path) {
                    let _ = pin::link_detach(fd.as_fd());
                }
                let _ = fs::remove_file(&path);
                notes.push(format!(
                    "DNS egress policy removed from cgroup {}",
                    cg.display()
                ));
            }
        }
        let pins = self.all_link_pins();
        for cg in desired {
            if self.cgroups.iter().any(|a| a.path == cg) {
                continue;
            }
            let egress_fd = self.egress.as_ref().expect("loaded").fd()?.try_clone()?;
            let egress_id = Self::prog_id(self.egress.as_ref(), CgroupSkb::info).unwrap_or(0);
            let ino = fs::metadata(&cg).map(|m| m.ino()).unwrap_or(0);
            let mut found = None;
            for (pin, path, ours) in &pins {
                let LinkPin::Cgroup { path: pinned } = pin else {
                    continue;
                };
                if pinned != &cg || found.is_some() {
                    continue;
                }
                let Ok(fd) = pin::obj_get(path) else { continue };
                match pin::link_info(fd.as_fd()) {
                    Ok(info)
                        if info.link_type == pin::LINK_TYPE_CGROUP && info.cgroup_id == ino =>
                    {
                        if info.prog_id != egress_id {
                            pin::link_update(fd.as_fd(), egress_fd.as_fd()).with_context(|| {
                                format!("switching the pinned cgroup link on {} to this build's program", cg.display())
                            })?;
                        }
                        let origin = if *ours {
                            Origin::Adopted
                        } else {
                            pin::move_link_pin(
                                fd.as_fd(),
                                path,
                                &self.layout.links_dir().join(pin.file_name()),
                            )?;
                            Origin::Moved
                        };
                        found = Some(CgroupAttachment {
                            path: cg.clone(),
                            link_id: Some(info.id),
                            link: Some(fd),
                            origin,
                        });
                    }
                    _ => {
                        let _ = pin::link_detach(fd.as_fd());
                        let _ = fs::remove_file(path);
                    }
                }
            }
            let att = match found {
                Some(a) => a,
                None => {
                    let prog = self.egress.as_mut().expect("loaded");
                    match attach::attach_cgroup_link(prog, &cg)? {
                        Some(link) => {
                            let path = self
                                .layout
                                .links_dir()
                                .join(LinkPin::Cgroup { path: cg.clone() }.file_name());
                            let _ = fs::remove_file(&path);
                            drop(link.pin(&path).with_context(|| {
                                format!("pinning the cgroup link of {}", cg.display())
                            })?);
                            let fd = pin::obj_get(&path)?;
                            let id = pin::link_info(fd.as_fd()).ok().map(|i| i.id);
                            CgroupAttachment {
                                path: cg.clone(),
                                link: Some(fd),
                                link_id: id,
                                origin: Origin::Created,
                            }
                        }
                        None => CgroupAttachment {
                            path: cg.clone(),
                            link: None,
                            link_id: None,
                            origin: Origin::Unpinned,
                        },
                    }
                }
            };
            notes.push(format!("DNS egress policy on cgroup {}", cg.display()));
            self.cgroups.push(att);
        }
        Ok(notes)
    }

    /// Detaches every link and removes every pin (this layout's and any other's). The
    /// datapath is gone afterwards.
    ///
    /// # Errors
    /// When a pin cannot be removed.
    pub fn unload(mut self) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for a in &self.xdp {
            if let Some(fd) = &a.link {
                let _ = pin::link_detach(fd.as_fd());
            }
            done.push(format!("detached from {}", a.iface));
        }
        for a in &self.cgroups {
            if let Some(fd) = &a.link {
                let _ = pin::link_detach(fd.as_fd());
            }
            done.push(format!("detached from cgroup {}", a.path.display()));
        }
        for (iface, fd) in self.tc.drain(..) {
            let _ = pin::link_detach(fd.as_fd());
            done.push(format!("detached the egress tracker from {iface}"));
        }
        for (iface, fd) in self.scrub_links.drain(..) {
            let _ = pin::link_detach(fd.as_fd());
            done.push(format!("detached the scrub from {iface}"));
        }
        for (iface, fd) in self.nat_links.drain(..) {
            let _ = pin::link_detach(fd.as_fd());
            done.push(format!("detached the NAT from {iface}"));
        }
        for (iface, fd) in self.lb_links.drain(..) {
            let _ = pin::link_detach(fd.as_fd());
            done.push(format!(
                "detached the load balancer's reverse translation from {iface}"
            ));
        }
        for (iface, fd) in self.tls_links.drain(..) {
            let _ = pin::link_detach(fd.as_fd());
            done.push(format!("detached the TLS gate from {iface}"));
        }
        for (iface, fd) in self.dhcp_links.drain(..) {
            let _ = pin::link_detach(fd.as_fd());
            done.push(format!("detached DHCP snooping from {iface}"));
        }
        for (iface, fd) in self.intel_links.drain(..) {
            let _ = pin::link_detach(fd.as_fd());
            done.push(format!("detached the egress indicator check from {iface}"));
        }
        for (iface, fd) in self.dns_cache_links.drain(..) {
            let _ = pin::link_detach(fd.as_fd());
            done.push(format!("detached the DNS response cache from {iface}"));
        }
        for (iface, fd) in self.bind_canary_links.drain(..) {
            let _ = pin::link_detach(fd.as_fd());
            done.push(format!("detached the DoH canary answer from {iface}"));
        }
        for (iface, fd) in self.ids_links.drain(..) {
            let _ = pin::link_detach(fd.as_fd());
            done.push(format!("detached the IDS from {iface}"));
        }
        self.xdp.clear();
        self.cgroups.clear();
        let root = self.layout.root.clone();
        pin::remove_tree(&self.layout.dir(), &[])?;
        for old in self.layout.foreign_layouts() {
            pin::remove_tree(&old, &[])?;
        }
        // Netlink attachments (old kernels) end when the programs are dropped.
        self.firewall = None;
        self.dns_ingress = None;
        self.egress = None;
        if root != Path::new(pin::BPFFS_ROOT) {
            let _ = fs::remove_dir(&root);
        }
        done.push(format!("removed the pins under {}", root.display()));
        Ok(done)
    }
}

/// The tcx programs attached to every guarded interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tcx {
    CtEgress,
    ScrubIngress,
    ScrubEgress,
    NatIngress,
    NatEgress,
    LbReverse,
    TlsIngress,
    TlsEgress,
    DhcpEgress,
    IntelEgress,
    DnsCache,
    ActionIngress,
    BindCanary,
    IdsIngress,
    IdsEgress,
}

impl Tcx {
    fn pin(self, iface: &str) -> LinkPin {
        let iface = iface.to_string();
        match self {
            Self::CtEgress => LinkPin::TcxEgress { iface },
            Self::ScrubIngress => LinkPin::TcxScrub {
                ingress: true,
                iface,
            },
            Self::ScrubEgress => LinkPin::TcxScrub {
                ingress: false,
                iface,
            },
            Self::NatIngress => LinkPin::TcxNat {
                ingress: true,
                iface,
            },
            Self::NatEgress => LinkPin::TcxNat {
                ingress: false,
                iface,
            },
            Self::LbReverse => LinkPin::TcxLbReverse { iface },
            Self::IntelEgress => LinkPin::TcxIntel { iface },
            Self::TlsIngress => LinkPin::TcxTls {
                ingress: true,
                iface,
            },
            Self::TlsEgress => LinkPin::TcxTls {
                ingress: false,
                iface,
            },
            Self::DhcpEgress => LinkPin::TcxDhcp { iface },
            Self::DnsCache => LinkPin::TcxDnsCache { iface },
            Self::ActionIngress => LinkPin::TcxAction { iface },
            Self::BindCanary => LinkPin::TcxCanary { iface },
            Self::IdsIngress => LinkPin::TcxIds {
                ingress: true,
                iface,
            },
            Self::IdsEgress => LinkPin::TcxIds {
                ingress: false,
                iface,
            },
        }
    }

    /// The interface a pin of this kind is for.
    fn iface_of(self, pin: &LinkPin) -> Option<&str> {
        match (self, pin) {
            (Self::CtEgress, LinkPin::TcxEgress { iface }) => Some(iface),
            (
                Self::ScrubIngress,
                LinkPin::TcxScrub {
                    ingress: true,
                    iface,
                },
            )
            | (
                Self::ScrubEgress,
                LinkPin::TcxScrub {
                    ingress: false,
                    iface,
                },
            )
            | (
                Self::TlsIngress,
                LinkPin::TcxTls {
                    ingress: true,
                    iface,
                },
            )
            | (
                Self::TlsEgress,
                LinkPin::TcxTls {
                    ingress: false,
                    iface,
                },
            ) => Some(iface),
            (
                Self::NatIngress,
                LinkPin::TcxNat {
                    ingress: true,
                    iface,
                },
            )
            | (
                Self::NatEgress,
                LinkPin::TcxNat {
                    ingress: false,
                    iface,
                },
            ) => Some(iface),
            (
                Self::IdsIngress,
                LinkPin::TcxIds {
                    ingress: true,
                    iface,
                },
            )
            | (
                Self::IdsEgress,
                LinkPin::TcxIds {
                    ingress: false,
                    iface,
                },
            ) => Some(iface),
            (Self::LbReverse, LinkPin::TcxLbReverse { iface })
            | (Self::DhcpEgress, LinkPin::TcxDhcp { iface })
            | (Self::IntelEgress, LinkPin::TcxIntel { iface })
            | (Self::DnsCache, LinkPin::TcxDnsCache { iface })
            | (Self::ActionIngress, LinkPin::TcxAction { iface })
            | (Self::BindCanary, LinkPin::TcxCanary { iface }) => Some(iface),
            _ => None,
        }
    }

    const fn attach_type(self) -> TcAttachType {
        match self {
            Self::ScrubIngress
            | Self::NatIngress
            | Self::TlsIngress
            | Self::ActionIngress
            | Self::IdsIngress => TcAttachType::Ingress,
            Self::CtEgress
            | Self::ScrubEgress
            | Self::NatEgress
            | Self::LbReverse
            | Self::TlsEgress
            | Self::DhcpEgress
            | Self::IntelEgress
            | Self::IdsEgress
            | Self::DnsCache
            | Self::BindCanary => TcAttachType::Egress,
        }
    }

    const fn what(self) -> &'static str {
        match self {
            Self::CtEgress => "the egress connection tracker",
            Self::ScrubIngress => "the ingress scrub",
            Self::ScrubEgress => "the egress scrub",
            Self::NatIngress => "the ingress NAT",
            Self::NatEgress => "the egress NAT",
            Self::LbReverse => "the load balancer's reverse translation",
            Self::TlsIngress => "the ingress TLS gate",
            Self::TlsEgress => "the egress TLS gate",
            Self::DhcpEgress => "DHCP snooping",
            Self::IntelEgress => "the egress indicator check",
            Self::DnsCache => "the DNS response cache",
            Self::ActionIngress => "the mark of mark rules",
            Self::BindCanary => "the DoH canary answer",
            Self::IdsIngress => "the ingress IDS",
            Self::IdsEgress => "the egress IDS",
        }
    }
}

/// A feature's tcx programs, attached to every guarded interface after the egress tracker
/// (adopting pinned links and switching them to this build's programs, like it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcGroup {
    /// Scrub (ingress and egress), whatever the policy: with no `[scrub]` they read one map
    /// slot and let the packet go, and a reload that turns scrub on then needs no
    /// attachment.
    Scrub,
    /// NAT (ingress and egress): each translates only on the `[nat] out` interface, read from
    /// its generation's settings, so a reload moves NAT without attaching anything. The
    /// egress program goes first in the tcx chain, before the egress tracker: the tracker
    /// must see what leaves translated.
    Nat,
    /// The TLS gate (ingress and egress), whatever the policy: without `[tls]` it reads one
    /// map slot and lets the packet go.
    Tls,
    /// DHCP snooping (egress), whatever the policy: without `[dhcp]` it reads one map slot
    /// and lets the packet go.
    Dhcp,
    /// The indicator check (egress) whatever the policy: without `[intel] egress` it reads
    /// one map slot and lets the packet go, and a refresh that turns it on needs no attach.
    Intel,
    /// The mark of `mark` rules (ingress) whatever the policy: a frame without Palisade's
    /// mark metadata costs it two context reads, and a reload that adds a `mark` rule needs
    /// no attach.
    Mark,
    /// The IDS preselection (ingress and egress) whatever the policy: without `[ids]` it
    /// reads one map slot and lets the packet go; `[ids] interfaces` narrows where it looks
    /// in the kernel's settings.
    Ids,
}

impl TcGroup {
    /// The groups attached before the load balancer's reverse translation, in order (the
    /// order of the tcx chains).
    const BEFORE_LB: [Self; 2] = [Self::Scrub, Self::Nat];
    /// The groups attached after it, in order.
    const AFTER_LB: [Self; 5] = [Self::Tls, Self::Dhcp, Self::Intel, Self::Mark, Self::Ids];

    /// The programs, in the order of [`Self::kinds`].
    const fn names(self) -> &'static [&'static str] {
        match self {
            Self::Scrub => &[crate::scrub::INGRESS, crate::scrub::EGRESS],
            Self::Nat => &[crate::nat::INGRESS, crate::nat::EGRESS],
            Self::Tls => &[crate::tls::INGRESS, crate::tls::EGRESS],
            Self::Dhcp => &[crate::dhcp::EGRESS],
            Self::Intel => &[crate::intel::EGRESS],
            Self::Mark => &[crate::firewall::ACTION_INGRESS],
            Self::Ids => &[crate::ids::kernel::INGRESS, crate::ids::kernel::EGRESS],
        }
    }

    /// Where each program attaches.
    const fn kinds(self) -> &'static [Tcx] {
        match self {
            Self::Scrub => &[Tcx::ScrubIngress, Tcx::ScrubEgress],
            Self::Nat => &[Tcx::NatIngress, Tcx::NatEgress],
            Self::Tls => &[Tcx::TlsIngress, Tcx::TlsEgress],
            Self::Dhcp => &[Tcx::DhcpEgress],
            Self::Intel => &[Tcx::IntelEgress],
            Self::Mark => &[Tcx::ActionIngress],
            Self::Ids => &[Tcx::IdsIngress, Tcx::IdsEgress],
        }
    }

    /// What the kernel's refusal of a program calls the feature.
    const fn what(self) -> &'static str {
        match self {
            Self::Scrub => "scrub",
            Self::Nat => "NAT",
            Self::Tls => "TLS gate",
            Self::Dhcp => "DHCP snooping",
            Self::Intel => "intel",
            Self::Mark => "mark",
            Self::Ids => "IDS",
        }
    }
}

/// [`sync_tcx`] for programs that go together (a feature's ingress and egress programs),
/// `progs[i]` of kind `kinds[i]`; returns the links of all of them.
fn sync_tcx_group(
    layout: &Layout,
    pins: &[(LinkPin, PathBuf, bool)],
    progs: &mut [SchedClassifier],
    kinds: &[Tcx],
    ifaces: &[String],
    notes: &mut Vec<String>,
) -> Result<Vec<(String, OwnedFd)>> {
    let mut links = Vec::new();
    for (prog, &kind) in progs.iter_mut().zip(kinds) {
        links.extend(sync_tcx(layout, pins, prog, kind, ifaces, notes)?);
    }
    Ok(links)
}

/// Attaches `prog` (a tcx program of `kind`) to every interface of `ifaces`, adopting pinned
/// links of `pins` and switching them to `prog`; detaches the pinned links of this kind on
/// interfaces no longer guarded. Returns the links.
fn sync_tcx(
    layout: &Layout,
    pins: &[(LinkPin, PathBuf, bool)],
    prog: &mut SchedClassifier,
    kind: Tcx,
    ifaces: &[String],
    notes: &mut Vec<String>,
) -> Result<Vec<(String, OwnedFd)>> {
    let what = kind.what();
    let prog_fd = prog.fd()?.try_clone()?;
    let prog_id = prog.info().map_or(0, |i| i.id());
    let mut links = Vec::new();
    for iface in ifaces {
        let ifindex = attach::ifindex(iface)
            .ok_or_else(|| anyhow!("no network interface named {iface:?}"))?;
        let mut done = false;
        for (pin, path, ours) in pins {
            let Some(pinned) = kind.iface_of(pin) else {
                continue;
            };
            if pinned != iface || done {
                continue;
            }
            let Ok(fd) = pin::obj_get(path) else { continue };
            match pin::link_info(fd.as_fd()) {
                Ok(info) if info.link_type == pin::LINK_TYPE_TCX && info.ifindex == ifindex => {
                    if info.prog_id != prog_id {
                        pin::link_update(fd.as_fd(), prog_fd.as_fd()).with_context(|| {
                            format!("switching the pinned link of {what} on {iface} to this build's program")
                        })?;
                    }
                    if !*ours {
                        pin::move_link_pin(
                            fd.as_fd(),
                            path,
                            &layout.links_dir().join(pin.file_name()),
                        )?;
                    }
                    links.push((iface.clone(), fd));
                    done = true;
                }
                _ => {
                    let _ = pin::link_detach(fd.as_fd());
                    let _ = fs::remove_file(path);
                }
            }
        }
        if done {
            continue;
        }
        // The translations that change what a packet leaves as go first in the egress chain
        // (the one attached last first of all: the load balancer's reverse, then NAT), so
        // the egress tracker sees every flow by the tuple the other end sees.
        let id = prog
            .attach_with_options(
                iface,
                kind.attach_type(),
                TcAttachOptions::TcxOrder(
                    if matches!(kind, Tcx::NatEgress | Tcx::LbReverse | Tcx::ActionIngress) {
                        LinkOrder::first()
                    } else {
                        LinkOrder::default()
                    },
                ),
            )
            .with_context(|| format!("attaching {what} to {iface} (tcx needs Linux 6.6)"))?;
        let link = prog.take_link(id)?;
        let link = FdLink::try_from(link)
            .map_err(|e| anyhow!("the link of {what} on {iface} cannot be pinned: {e}"))?;
        let path = layout.links_dir().join(kind.pin(iface).file_name());
        let _ = fs::remove_file(&path);
        drop(
            link.pin(&path)
                .with_context(|| format!("pinning the link of {what} on {iface}"))?,
        );
        links.push((iface.clone(), pin::obj_get(&path)?));
        notes.push(match kind {
            Tcx::CtEgress => format!("tracking egress connections on {iface} (tcx)"),
            Tcx::ScrubIngress
            | Tcx::ScrubEgress
            | Tcx::NatIngress
            | Tcx::NatEgress
            | Tcx::LbReverse
            | Tcx::TlsIngress
            | Tcx::TlsEgress
            | Tcx::DhcpEgress
            | Tcx::IntelEgress
            | Tcx::IdsIngress
            | Tcx::IdsEgress
            | Tcx::DnsCache
            | Tcx::ActionIngress
            | Tcx::BindCanary => format!("attached {what} to {iface} (tcx)"),
        });
    }
    for (pin, path) in pin::link_pins(&layout.links_dir()) {
        if let Some(iface) = kind.iface_of(&pin)
            && !ifaces.iter().any(|i| i == iface)
        {
            if let Ok(fd) = pin::obj_get(&path) {
                let _ = pin::link_detach(fd.as_fd());
            }
            let _ = fs::remove_file(&path);
        }
    }
    Ok(links)
}

/// Checks every pinned map against this build's definition (a pin edited by hand, or left
/// by a build whose layout hash collided).
fn verify_map_shapes(layout: &Layout) -> Result<()> {
    for s in loader::map_shapes()? {
        if !pin::is_pinned_map(&s.name) {
            continue;
        }
        let fd = pin::obj_get(&layout.map(&s.name))
            .with_context(|| format!("opening pinned map {}", s.name))?;
        let (map_type, _, key, value, mut max, _) = pin::map_info(fd.as_fd())?;
        if pin::is_resizable_map(&s.name) {
            // Sized by the policy; the tables are resized (carried) when it changes.
            max = s.max_entries;
        }
        if (map_type, key, value, max) != (s.map_type, s.key_size, s.value_size, s.max_entries) {
            return Err(anyhow!(
                "map {} is pinned as type {map_type} key {key} value {value} max {max}, this build has type {} key {} value {} max {}",
                s.name,
                s.map_type,
                s.key_size,
                s.value_size,
                s.max_entries
            ));
        }
    }
    Ok(())
}

/// Removes every pin under `pin_dir` when no daemon runs: detaches each pinned link first.
/// Returns what was done.
///
/// # Errors
/// When a daemon holds the pin directory, or a pin cannot be removed.
pub fn unload_offline(pin_dir: &Path) -> Result<Vec<String>> {
    if !pin_dir.exists() {
        return Ok(vec![format!("nothing pinned under {}", pin_dir.display())]);
    }
    let lock = PinLock::acquire(pin_dir)?;
    let mut done = Vec::new();
    let dirs: Vec<PathBuf> = fs::read_dir(pin_dir)
        .with_context(|| format!("reading {}", pin_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("layout-"))
        })
        .collect();
    for d in dirs {
        for l in pin::remove_tree(&d, &[])? {
            done.push(match l {
                LinkPin::Xdp { iface, .. } => format!("detached from {iface}"),
                LinkPin::Cgroup { path } => format!("detached from cgroup {}", path.display()),
                LinkPin::TcxEgress { iface } => format!("detached the egress tracker from {iface}"),
                LinkPin::TcxScrub { ingress, iface } => format!(
                    "detached the {} scrub from {iface}",
                    if ingress { "ingress" } else { "egress" }
                ),
                LinkPin::TcxNat { ingress, iface } => format!(
                    "detached the {} NAT from {iface}",
                    if ingress { "ingress" } else { "egress" }
                ),
                LinkPin::TcxLbReverse { iface } => {
                    format!("detached the load balancer's reverse translation from {iface}")
                }
                LinkPin::TcxIntel { iface } => {
                    format!("detached the egress indicator check from {iface}")
                }
                LinkPin::TcxAction { iface } => {
                    format!("detached the ingress actions (marks) from {iface}")
                }
                LinkPin::TcxTls { ingress, iface } => format!(
                    "detached the {} TLS gate from {iface}",
                    if ingress { "ingress" } else { "egress" }
                ),
                LinkPin::TcxDhcp { iface } => format!("detached DHCP snooping from {iface}"),
                LinkPin::TcxDnsCache { iface } => {
                    format!("detached the DNS response cache from {iface}")
                }
                LinkPin::TcxCanary { iface } => {
                    format!("detached the DoH canary answer from {iface}")
                }
                LinkPin::TcxIds { ingress, iface } => format!(
                    "detached the {} IDS from {iface}",
                    if ingress { "ingress" } else { "egress" }
                ),
                LinkPin::Bind { prog, path } => {
                    format!(
                        "detached DNS binding ({prog}) from cgroup {}",
                        path.display()
                    )
                }
            });
        }
    }
    drop(lock);
    if pin_dir != Path::new(pin::BPFFS_ROOT) {
        let _ = fs::remove_dir(pin_dir);
    }
    done.push(format!("removed the pins under {}", pin_dir.display()));
    Ok(done)
}
