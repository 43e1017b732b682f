//! The userspace engine: flows with bounded TCP reassembly, the kernel's preselection replayed
//! with the shared prefilter, the full match, alerts and per-flow coverage.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use palisade_common::ids::{
    IDS_MODE_ALL, IDS_MODE_PREFILTER, IDS_PF_HIT, IDS_PF_SHORT, IdsGrams, IdsPortGroup, IdsPortKey,
    prefilter, scan_buffer,
};
use serde::Serialize;

use super::matcher::{Outcome, payload_matches};
use super::pcap::{Packet, TCP_ACK, TCP_RST, TCP_SYN};
use super::preselect::Preselect;
use super::rules::{Action, Rule};

/// Bytes of each direction of a TCP stream that are reassembled and matched (Suricata's
/// default `stream.reassembly.depth`); later bytes are counted as truncated.
pub const STREAM_DEPTH: usize = 1 << 20;
/// Out-of-order segments held per direction, waiting for the gap before them.
pub const MAX_PENDING_SEGMENTS: usize = 64;
/// Bytes of out-of-order segments held per direction.
pub const MAX_PENDING_BYTES: usize = 256 * 1024;
/// Flows tracked at once; past it, new flows are not inspected and counted.
pub const MAX_FLOWS: usize = 65_536;

/// One alert.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Alert {
    pub sid: u32,
    pub rev: u32,
    pub msg: String,
    pub classtype: Option<String>,
    pub action: &'static str,
    pub flow: FlowId,
    /// "to_server" or "to_client".
    pub direction: &'static str,
    /// "packet" or "stream".
    pub buffer: &'static str,
}

/// A flow as its client (the first sender) sees it.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    pub proto: u8,
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
}

/// What the IDS saw of one flow.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Coverage {
    pub packets: u64,
    pub payload_bytes: u64,
    /// Bytes the full match looked at (packets and reassembled stream of a selected flow).
    pub inspected_bytes: u64,
    /// Stream bytes past [`STREAM_DEPTH`], or out-of-order bytes beyond the pending caps.
    pub truncated_bytes: u64,
    /// Gaps left in the stream (data never seen before later data).
    pub gaps: u64,
    /// The preselection sent the flow to the full match.
    pub selected: bool,
    /// Why: "prefilter", "short-window", "port-group-all", or "" (not selected).
    pub reason: &'static str,
    /// The full match of a rule ran out of budget on this flow.
    pub budget_exhausted: u64,
    /// A `drop` rule matched (the kernel cuts such flows); later packets are not inspected.
    pub dropped: bool,
    /// Packets seen after the drop.
    pub packets_after_drop: u64,
    /// The sids that matched, in order.
    pub sids: Vec<u32>,
}

#[derive(Default)]
struct Direction {
    /// Next expected sequence number; None before the first segment.
    next: Option<u32>,
    stream: Vec<u8>,
    pending: BTreeMap<u32, Vec<u8>>,
    pending_bytes: usize,
    /// Stream bytes already matched.
    matched_len: usize,
}

struct Flow {
    id: FlowId,
    syn: bool,
    syn_ack: bool,
    established: bool,
    dirs: [Direction; 2],
    cov: Coverage,
    alerted: BTreeMap<u32, ()>,
    /// A `drop` rule matched: the flow is cut, nothing after the match is inspected.
    dropped: bool,
    /// [`Engine::now_ms`] at its last packet.
    last_ms: u64,
}

/// Engine-wide counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub packets: u64,
    pub flows: u64,
    pub flows_selected: u64,
    pub flows_not_tracked: u64,
    pub alerts: u64,
}

pub struct Engine {
    rules: Vec<Rule>,
    pre: Preselect,
    flows: HashMap<FlowId, Flow>,
    order: Vec<FlowId>,
    pub alerts: Vec<Alert>,
    pub totals: Totals,
    /// Live traffic (the daemon): the kernel sends only packets with payload, so a TCP flow
    /// first seen with an ACK and no SYN is taken as established (its handshake was not
    /// sent), as Suricata's `stream.midstream` does.
    pub midstream: bool,
    /// The caller's clock, in milliseconds, stamped on each flow's packets (for [`Self::expire`]).
    pub now_ms: u64,
    /// The next packet's payload was cut from this many bytes (a ring record holds at most
    /// `IDS_RECORD_BYTES`): the stream skips the bytes not seen rather than wait for them.
    pub wire_len: usize,
}

impl Engine {
    #[must_use]
    pub fn new(rules: Vec<Rule>) -> Self {
        let pre = Preselect::build(&rules);
        Self {
            rules,
            pre,
            flows: HashMap::new(),
            order: Vec::new(),
            alerts: Vec::new(),
            totals: Totals::default(),
            midstream: false,
            now_ms: 0,
            wire_len: 0,
        }
    }

    /// Forgets flows without a packet for `idle_ms`; returns how many.
    pub fn expire(&mut self, idle_ms: u64) -> usize {
        let horizon = self.now_ms.saturating_sub(idle_ms);
        let before = self.flows.len();
        self.flows.retain(|_, f| f.last_ms >= horizon);
        let flows = &self.flows;
        self.order.retain(|id| flows.contains_key(id));
        before - self.flows.len()
    }

    /// Takes one packet.
    pub fn packet(&mut self, p: &Packet) {
        self.totals.packets += 1;
        let fwd = FlowId {
            proto: p.proto,
            client: p.src,
            client_port: p.sport,
            server: p.dst,
            server_port: p.dport,
        };
        let rev = FlowId {
            proto: p.proto,
            client: p.dst,
            client_port: p.dport,
            server: p.src,
            server_port: p.sport,
        };
        let (id, to_server) = if self.flows.contains_key(&fwd) {
            (fwd, true)
        } else if self.flows.contains_key(&rev)
            || (p.proto == 6 && p.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK)
        {
            (rev, false)
        } else {
            (fwd, true)
        };
        if !self.flows.contains_key(&id) {
            if self.flows.len() >= MAX_FLOWS {
                self.totals.flows_not_tracked += 1;
                return;
            }
            self.totals.flows += 1;
            self.order.push(id);
            self.flows.insert(
                id,
                Flow {
                    id,
                    syn: false,
                    syn_ack: false,
                    established: false,
                    dirs: [Direction::default(), Direction::default()],
                    cov: Coverage::default(),
                    alerted: BTreeMap::new(),
                    dropped: false,
                    last_ms: self.now_ms,
                },
            );
        }
        let Some(mut flow) = self.flows.remove(&id) else {
            return;
        };
        self.step(&mut flow, p, to_server);
        self.flows.insert(id, flow);
    }

    fn step(&mut self, flow: &mut Flow, p: &Packet, to_server: bool) {
        flow.last_ms = self.now_ms;
        let cut = std::mem::take(&mut self.wire_len).saturating_sub(p.payload.len());
        if self.midstream
            && flow.cov.packets == 0
            && p.proto == 6
            && p.flags & (TCP_SYN | TCP_ACK) == TCP_ACK
        {
            flow.syn = true;
            flow.syn_ack = true;
            flow.established = true;
        }
        flow.cov.packets += 1;
        flow.cov.truncated_bytes += cut as u64;
        flow.cov.payload_bytes += p.payload.len() as u64;
        if flow.dropped {
            flow.cov.packets_after_drop += 1;
            return;
        }
        let d = usize::from(!to_server);
        // A packet of this direction acknowledges the other one's data: its stream is
        // matched up to here (Suricata inspects the raw stream as it is acknowledged).
        if flow.cov.selected && p.proto == 6 && p.flags & TCP_ACK != 0 {
            self.match_stream(flow, 1 - d);
        }
        if p.proto == 6 {
            if p.flags & TCP_SYN != 0 {
                if p.flags & TCP_ACK == 0 && to_server {
                    flow.syn = true;
                } else if !to_server {
                    flow.syn_ack = flow.syn;
                }
                flow.dirs[d].next = Some(p.seq.wrapping_add(1));
            } else if p.flags & TCP_ACK != 0 && to_server && flow.syn_ack {
                flow.established = true;
            }
        }
        if p.payload.is_empty() {
            return;
        }
        // The kernel's preselection (palisade-ebpf's `ids`): the port group, then the
        // prefilter over the first window of every data packet until the flow is selected. A
        // TCP segment shorter than the window selects the flow too (a content anchored in
        // the stream's first bytes could continue in the next segment).
        if !flow.cov.selected {
            let mode = self.pre.mode(p.proto, p.sport, p.dport);
            let reason = if mode & IDS_MODE_ALL != 0 {
                "port-group-all"
            } else if mode & IDS_MODE_PREFILTER != 0 {
                let buf = scan_buffer(&p.payload);
                match prefilter(&self.pre.grams, &buf, p.payload.len()) {
                    IDS_PF_HIT => "prefilter",
                    IDS_PF_SHORT if p.proto == 6 => "short-window",
                    _ => "",
                }
            } else {
                ""
            };
            if !reason.is_empty() {
                flow.cov.selected = true;
                flow.cov.reason = reason;
                self.totals.flows_selected += 1;
            }
        }
        let keep = flow.cov.selected;
        if p.proto == 6 && p.flags & TCP_RST == 0 {
            // Sequence tracking goes on for flows not (yet) selected, so that a flow selected
            // later is reassembled from that point without a false gap.
            reassemble(&mut flow.dirs[d], &mut flow.cov, p.seq, &p.payload, keep);
            if cut > 0 && flow.dirs[d].next == Some(p.seq.wrapping_add(p.payload.len() as u32)) {
                // The bytes cut from the record were never seen: the stream goes on after
                // them (they are counted as truncated above), not waiting for them.
                flow.dirs[d].next = Some(p.seq.wrapping_add((p.payload.len() + cut) as u32));
            }
        }
        if keep {
            flow.cov.inspected_bytes += p.payload.len() as u64;
            self.match_buffer(flow, to_server, &p.payload, "packet");
        }
    }

    fn match_stream(&mut self, flow: &mut Flow, d: usize) {
        if flow.dropped || flow.dirs[d].stream.len() <= flow.dirs[d].matched_len {
            return;
        }
        let stream = std::mem::take(&mut flow.dirs[d].stream);
        self.match_buffer(flow, d == 0, &stream, "stream");
        flow.dirs[d].matched_len = stream.len();
        flow.dirs[d].stream = stream;
    }

    fn match_buffer(&mut self, flow: &mut Flow, to_server: bool, buf: &[u8], kind: &'static str) {
        let (src, sport, dst, dport) = if to_server {
            (
                flow.id.client,
                flow.id.client_port,
                flow.id.server,
                flow.id.server_port,
            )
        } else {
            (
                flow.id.server,
                flow.id.server_port,
                flow.id.client,
                flow.id.client_port,
            )
        };
        if flow.dropped {
            return;
        }
        // Every rule sees the buffer that matched a drop rule (as in Suricata); what comes
        // after it is not inspected.
        for rule in &self.rules {
            if flow.alerted.contains_key(&rule.sid) || !rule.proto.covers(flow.id.proto) {
                continue;
            }
            if rule.flow.established && !flow.established {
                continue;
            }
            if rule.flow.to_server.is_some_and(|t| t != to_server) {
                continue;
            }
            let fwd = rule.src.contains(src)
                && rule.dst.contains(dst)
                && rule.src_ports.contains(sport)
                && rule.dst_ports.contains(dport);
            let back = rule.bidirectional
                && rule.src.contains(dst)
                && rule.dst.contains(src)
                && rule.src_ports.contains(dport)
                && rule.dst_ports.contains(sport);
            if !fwd && !back {
                continue;
            }
            match payload_matches(rule, buf) {
                Outcome::Match => {
                    flow.alerted.insert(rule.sid, ());
                    flow.cov.sids.push(rule.sid);
                    if rule.action == Action::Drop {
                        flow.dropped = true;
                        flow.cov.dropped = true;
                    }
                    self.totals.alerts += 1;
                    self.alerts.push(Alert {
                        sid: rule.sid,
                        rev: rule.rev,
                        msg: rule.msg.clone(),
                        classtype: rule.classtype.clone(),
                        action: match rule.action {
                            Action::Alert => "alert",
                            Action::Drop => "drop",
                        },
                        flow: flow.id,
                        direction: if to_server { "to_server" } else { "to_client" },
                        buffer: kind,
                    });
                }
                Outcome::NoMatch => {}
                Outcome::Budget => flow.cov.budget_exhausted += 1,
            }
        }
    }

    /// Matches the reassembled streams of every selected flow (at the end of a capture, or
    /// when flows are flushed).
    pub fn finish(&mut self) {
        let ids = self.order.clone();
        for id in ids {
            let Some(mut flow) = self.flows.remove(&id) else {
                continue;
            };
            if flow.cov.selected && flow.id.proto == 6 {
                for d in 0..2 {
                    if !flow.dirs[d].pending.is_empty() {
                        flow.cov.gaps += 1;
                    }
                    self.match_stream(&mut flow, d);
                }
            }
            self.flows.insert(id, flow);
        }
    }

    /// Coverage of every flow, in the order they were first seen.
    #[must_use]
    pub fn coverage(&self) -> Vec<(FlowId, Coverage)> {
        self.order
            .iter()
            .filter_map(|id| self.flows.get(id).map(|f| (*id, f.cov.clone())))
            .collect()
    }

    /// The preselection tables (port groups and gram bitmap) as the kernel would load them.
    #[must_use]
    pub fn preselect(&self) -> (&IdsGrams, &BTreeMap<IdsPortKey, IdsPortGroup>) {
        (&self.pre.grams, &self.pre.groups)
    }
}

/// Appends in-order data to the stream, holds out-of-order segments within the caps, and
/// drains them once the gap before them fills. Retransmitted bytes already in the stream are
/// skipped (the first copy wins, as in Suricata's default policy for most targets).
fn reassemble(dir: &mut Direction, cov: &mut Coverage, seq: u32, data: &[u8], keep: bool) {
    // Mid-stream pickup: start at this segment.
    let next = *dir.next.get_or_insert(seq);
    let ahead = seq.wrapping_sub(next) as i32;
    if ahead > 0 {
        if dir.pending.len() >= MAX_PENDING_SEGMENTS
            || dir.pending_bytes + data.len() > MAX_PENDING_BYTES
        {
            cov.truncated_bytes += data.len() as u64;
            return;
        }
        dir.pending_bytes += data.len();
        dir.pending.entry(seq).or_insert_with(|| data.to_vec());
        return;
    }
    let skip = (-ahead) as usize;
    if skip < data.len() {
        append(dir, cov, &data[skip..], keep);
    }
    // Drain pending segments that now fit.
    loop {
        let next = dir.next.unwrap_or(0);
        let Some((&s, _)) = dir
            .pending
            .iter()
            .find(|&(&s, _)| (s.wrapping_sub(next) as i32) <= 0)
        else {
            break;
        };
        let seg = dir.pending.remove(&s).unwrap_or_default();
        dir.pending_bytes -= seg.len();
        let skip = next.wrapping_sub(s) as usize;
        if skip < seg.len() {
            append(dir, cov, &seg[skip..], keep);
        }
    }
}

fn append(dir: &mut Direction, cov: &mut Coverage, data: &[u8], keep: bool) {
    if !keep {
        dir.next = Some(dir.next.unwrap_or(0).wrapping_add(data.len() as u32));
        return;
    }
    let room = STREAM_DEPTH.saturating_sub(dir.stream.len());
    let take = data.len().min(room);
    dir.stream.extend_from_slice(&data[..take]);
    cov.truncated_bytes += (data.len() - take) as u64;
    dir.next = Some(dir.next.unwrap_or(0).wrapping_add(data.len() as u32));
}
