//! Running the kernel programs on crafted frames with `BPF_PROG_TEST_RUN`: the engine of the
//! datapath tests, the differential checks and the benchmarks.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{CgroupSkb, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use palisade_common::{
    action::{ActionMeta, HandoffKey},
    dns::maps::{DNS_STATS_PER_SCOPE, SCOPES},
    event::{FirewallEvent, KIND_DNS},
    firewall::RuleStats,
    reason, stats,
};

use crate::{
    events::{DnsDecision, decode_dns},
    firewall::apply,
    loader,
    maps::{map, map_mut},
    policy::model::Policy,
};

pub use crate::guard::{DNS_EGRESS, DNS_INGRESS, FIREWALL};

/// A loaded object with its XDP programs verified, ready for test runs.
pub struct Bench {
    pub ebpf: Ebpf,
    events: Option<RingBuf<MapData>>,
    /// Records read from the ring buffer but not yet handed out, by kind.
    firewall_events: Vec<FirewallEvent>,
    dns_events: Vec<DnsDecision>,
}

/// The outcome of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    /// Mean time per run as the kernel measured it.
    pub duration: Duration,
}

impl Bench {
    /// Loads the object and verifies the XDP programs.
    ///
    /// # Errors
    /// When loading or verification fails.
    pub fn new() -> Result<Self> {
        Self::sized(&[])
    }

    /// [`Self::new`], with some maps created with another capacity than the object declares
    /// (`(map name, max_entries)`, e.g. the indicator tables of `intel::load::Sizes`).
    ///
    /// # Errors
    /// When loading or verification fails.
    pub fn sized(sizes: &[(&str, u32)]) -> Result<Self> {
        let mut ebpf = loader::load_sized(sizes)?;
        for name in [
            FIREWALL,
            DNS_INGRESS,
            crate::guard::CT_INGRESS,
            crate::guard::RULES,
            crate::guard::SYNCOOKIE,
            crate::guard::LB,
            crate::conntrack::SWEEP,
            "palisade_floor_pass",
            "palisade_floor_drop",
        ] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("no program {name}"))?
                .try_into()?;
            prog.load().with_context(|| format!("verifying {name}"))?;
        }
        {
            let prog: &mut CgroupSkb = ebpf
                .program_mut(DNS_EGRESS)
                .ok_or_else(|| anyhow!("no program {DNS_EGRESS}"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("verifying {DNS_EGRESS}"))?;
        }
        for name in [
            crate::conntrack::EGRESS,
            crate::scrub::INGRESS,
            crate::scrub::EGRESS,
            crate::nat::INGRESS,
            crate::nat::EGRESS,
            crate::lb::REVERSE,
            crate::lb::DECAP,
            crate::tls::INGRESS,
            crate::tls::EGRESS,
            crate::dhcp::EGRESS,
            crate::intel::EGRESS,
            crate::dns::cache::FILL,
            crate::ids::kernel::INGRESS,
            crate::ids::kernel::EGRESS,
            crate::firewall::ACTION_INGRESS,
            crate::dlp::probe::RESET,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("no program {name}"))?
                .try_into()?;
            prog.load().with_context(|| format!("verifying {name}"))?;
        }
        crate::guard::link_tail_calls(&mut ebpf)?;
        let events = ebpf.take_map("EVENTS").map(RingBuf::try_from).transpose()?;
        Ok(Self {
            ebpf,
            events,
            firewall_events: Vec::new(),
            dns_events: Vec::new(),
        })
    }

    /// Compiles and installs `policy`.
    ///
    /// # Errors
    /// When the policy cannot be compiled or written.
    pub fn install(&mut self, policy: &Policy) -> Result<()> {
        crate::guard::install(&mut self.ebpf, policy)?;
        Ok(())
    }

    /// Runs the cgroup egress DNS program on a packet that starts at its IP header, as a
    /// local process would send it. Returns 1 (allow) or 0 (drop).
    ///
    /// For cgroup_skb programs the kernel's test run takes an Ethernet frame: it pulls the
    /// link-layer header (`eth_type_trans`, which also sets `skb->protocol`) and runs the
    /// program on what follows. So a header whose ethertype follows the IP version is put in
    /// front here, and the program sees the packet from its IP header, as on a real socket.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_egress(&self, ip_packet: &[u8]) -> Result<u32> {
        self.run_egress_gso(ip_packet, 0, 0)
    }

    /// As [`Self::run_egress`], with the packet marked for UDP segmentation offload as a
    /// `UDP_SEGMENT` send leaves it: `gso_size` bytes of payload per datagram, `gso_segs`
    /// datagrams (the `__sk_buff` fields the kernel lets a test run set).
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_egress_gso(&self, ip_packet: &[u8], gso_size: u32, gso_segs: u32) -> Result<u32> {
        /// `struct __sk_buff`: its size and the offsets of `gso_segs` and `gso_size`.
        const SKB_LEN: usize = 192;
        const GSO_SEGS: usize = 164;
        const GSO_SIZE: usize = 176;
        let prog: &CgroupSkb = self
            .ebpf
            .program(DNS_EGRESS)
            .ok_or_else(|| anyhow!("no program {DNS_EGRESS}"))?
            .try_into()?;
        let ethertype: u16 = match ip_packet.first().map(|b| b >> 4) {
            Some(6) => 0x86dd,
            _ => 0x0800,
        };
        let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(ip_packet);
        let mut out = vec![0u8; frame.len() + 256];
        let mut ctx = [0u8; SKB_LEN];
        ctx[GSO_SEGS..GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
        ctx[GSO_SIZE..GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        opts.data_out = Some(&mut out);
        if gso_size != 0 || gso_segs != 0 {
            opts.ctx_in = Some(&ctx);
        }
        Ok(prog.test_run(opts)?.return_value)
    }

    /// Runs the connection tracker's TC egress program on an Ethernet `frame`, as the host
    /// would send it on a guarded interface. Returns the TC verdict (always "continue", -1).
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_ct_egress(&self, frame: &[u8]) -> Result<i32> {
        Ok(self.run_tc(crate::conntrack::EGRESS, frame)?.0)
    }

    /// Runs the TC program `name` (a scrub program, `crate::scrub::INGRESS` or `EGRESS`) on
    /// an Ethernet `frame` and returns the TC verdict and the frame as the program left it.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_tc(&self, name: &str, frame: &[u8]) -> Result<(i32, Vec<u8>)> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = prog.test_run(opts)?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value as i32, out))
    }

    /// What a run that returned `out` for a frame of `frame_len` bytes left for the TC action
    /// program, and the frame itself: the [`ActionMeta`] in front of the frame, or, on a
    /// kernel without XDP metadata (`kernel::xdp_metadata`), the entry of `ACTION_HANDOFF`
    /// under the frame's key (its IP header at `l3`), which is taken out as the TC program
    /// would.
    ///
    /// # Errors
    /// When the handoff table cannot be read.
    pub fn action_left(
        &self,
        out: &[u8],
        frame_len: usize,
        l3: usize,
    ) -> Result<(Option<ActionMeta>, Vec<u8>)> {
        if crate::kernel::xdp_metadata() {
            let (meta, frame) = out.split_at(out.len().saturating_sub(frame_len));
            let m = (meta.len() >= size_of::<ActionMeta>()).then(|| {
                let word =
                    |i: usize| u32::from_ne_bytes(meta[i..i + 4].try_into().expect("4 bytes"));
                ActionMeta {
                    magic: word(0),
                    flags: word(4),
                    mark: word(8),
                    ifindex: word(12),
                }
            });
            return Ok((m, frame.to_vec()));
        }
        let Some(key) = out.get(l3..).and_then(HandoffKey::of) else {
            return Ok((None, out.to_vec()));
        };
        let table: aya::maps::HashMap<&aya::maps::MapData, HandoffKey, ActionMeta> =
            aya::maps::HashMap::try_from(crate::maps::map(&self.ebpf, "ACTION_HANDOFF")?)?;
        match table.get(&key, 0) {
            Ok(m) => {
                crate::maps::delete_batch(
                    crate::maps::data_of(&self.ebpf, "ACTION_HANDOFF")?,
                    &[key],
                )?;
                Ok((Some(m), out.to_vec()))
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok((None, out.to_vec())),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs the firewall (and, by tail call, the DNS inspector) on `frame` and returns the
    /// action and the frame as the program left it.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_with_output(&self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let prog: &Xdp = self
            .ebpf
            .program(FIREWALL)
            .ok_or_else(|| anyhow!("no program {FIREWALL}"))?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = prog.test_run(opts)?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// Runs the firewall once on `frame` as if it arrived on interface `ifindex` (which must
    /// exist in this network namespace; without it a run arrives on loopback) and returns
    /// the XDP action.
    ///
    /// # Errors
    /// When the kernel refuses the run (e.g. no such interface).
    pub fn run_on(&self, ifindex: u32, frame: &[u8]) -> Result<u32> {
        let prog: &Xdp = self
            .ebpf
            .program(FIREWALL)
            .ok_or_else(|| anyhow!("no program {FIREWALL}"))?
            .try_into()?;
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel wants data_end to be the frame's length.
        let mut ctx = [0u8; 24];
        let len = u32::try_from(frame.len())?;
        ctx[4..8].copy_from_slice(&len.to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        Ok(prog.test_run(opts)?.return_value)
    }

    /// Runs the TC program `name` `repeat` times on `frame`; the kernel's mean time per run.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_tc_repeat(&self, name: &str, frame: &[u8], repeat: u32) -> Result<Outcome> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let r = prog.test_run(opts)?;
        Ok(Outcome {
            action: r.return_value,
            duration: r.duration,
        })
    }

    /// Runs program `name` once on `frame`.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_prog(&self, name: &str, frame: &[u8], repeat: u32) -> Result<Outcome> {
        let prog: &Xdp = self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let r = prog.test_run(opts)?;
        Ok(Outcome {
            action: r.return_value,
            duration: r.duration,
        })
    }

    /// The event ring's file descriptor, for waiting on it as a reader does.
    pub fn events_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.events.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Takes the event ring out, for a reader of its own (the benchmarks read it on another
    /// thread, as the daemon does); [`Self::put_events`] gives it back.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Gives back a ring taken with [`Self::take_events`].
    pub fn put_events(&mut self, ring: RingBuf<MapData>) {
        self.events = Some(ring);
    }

    /// Runs the firewall once on `frame` and returns the XDP action.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run(&self, frame: &[u8]) -> Result<u32> {
        Ok(self.run_prog(FIREWALL, frame, 1)?.action)
    }

    /// Sum over CPUs of a global counter.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn stat(&self, index: u32) -> Result<u64> {
        sum_counter(&self.ebpf, "STATS", index)
    }

    /// Sum over CPUs of the drops for `reason`.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn reason_count(&self, r: u32) -> Result<u64> {
        sum_counter(&self.ebpf, "REASON_STATS", r)
    }

    /// Packet and byte hits of `rule` (an evaluation index, or `DEFAULT_SLOT`) in the live
    /// generation.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn rule_hits(&self, rule: u32) -> Result<RuleStats> {
        let generation = apply::control(&self.ebpf)?.active_gen;
        crate::stats::rule_stats(&self.ebpf, generation, rule)
    }

    /// Every firewall event waiting in the ring buffer.
    pub fn drain_events(&mut self) -> Vec<FirewallEvent> {
        self.read_ring();
        std::mem::take(&mut self.firewall_events)
    }

    /// Every DNS event waiting in the ring buffer, decoded.
    pub fn drain_dns_events(&mut self) -> Vec<DnsDecision> {
        self.read_ring();
        std::mem::take(&mut self.dns_events)
    }

    /// Moves every record in the ring buffer into the queue of its kind.
    fn read_ring(&mut self) {
        let Some(rb) = self.events.as_mut() else {
            return;
        };
        while let Some(item) = rb.next() {
            let kind = item
                .get(..4)
                .map(|k| u32::from_ne_bytes([k[0], k[1], k[2], k[3]]));
            if kind == Some(KIND_DNS) {
                if let Some(e) = decode_dns(&item) {
                    self.dns_events.push(e);
                }
            } else if item.len() >= size_of::<FirewallEvent>() {
                // SAFETY: FirewallEvent is plain old data and the length was checked.
                self.firewall_events
                    .push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            }
        }
    }

    /// Mutable access to the object, for tests that poke maps directly.
    ///
    /// # Errors
    /// When the map does not exist.
    pub fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        map_mut(&mut self.ebpf, name)
    }
}

/// Every global, per-reason and per-DNS-scope counter at one moment, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    /// `STATS`, by `palisade_common::stats` index.
    pub stats: Vec<u64>,
    /// `REASON_STATS`, by reason.
    pub reasons: Vec<u64>,
    /// `DNS_STATS`, by `scope * DNS_STATS_PER_SCOPE + counter`.
    pub dns: Vec<u64>,
}

impl Bench {
    /// A snapshot of every global counter (tests compare two of them around a run).
    ///
    /// # Errors
    /// When a counter map cannot be read.
    pub fn counters(&self) -> Result<Counters> {
        let read = |name: &str, n: u32| -> Result<Vec<u64>> {
            (0..n).map(|i| sum_counter(&self.ebpf, name, i)).collect()
        };
        Ok(Counters {
            stats: read("STATS", stats::COUNT)?,
            reasons: read("REASON_STATS", reason::COUNT)?,
            dns: read("DNS_STATS", SCOPES * DNS_STATS_PER_SCOPE)?,
        })
    }
}

/// Sum over CPUs of `name[index]` for a per-CPU `u64` array.
///
/// # Errors
/// When the map cannot be read.
pub fn sum_counter(ebpf: &Ebpf, name: &str, index: u32) -> Result<u64> {
    let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(ebpf, name)?)?;
    Ok(m.get(&index, 0)?.iter().sum())
}

const _: () = assert!(reason::COUNT > 0 && stats::COUNT > 0);
