//! The `steer` action (see `palisade_common::steer`): the packet goes to one CPU of the rule's
//! set through the CPU map, the CPU picked by its flow's hash.

use aya_ebpf::bindings::xdp_action;
use palisade_common::{
    firewall::RuleMeta,
    packet::Packet,
    steer::{SS_MATCHED, SS_NO_CPU, SS_SENT, flow_hash, pick},
};

use crate::maps::{STEER_CPUS, STEER_STATS, bump};

/// Applies a `steer` rule: true when the packet was handed to the CPU map (the hook returns
/// `XDP_REDIRECT`), false when the picked CPU has no entry (it goes on here, counted).
#[inline(always)]
pub fn steer(meta: &RuleMeta, p: &Packet) -> bool {
    bump(&STEER_STATS, SS_MATCHED);
    let hash = flow_hash(p.src_words(), p.dst_words(), p.sport, p.dport, p.proto);
    let sent = pick(meta.mark, meta.ifindex, meta.dscp, hash).is_some_and(|cpu| {
        STEER_CPUS
            .redirect(cpu, u64::from(xdp_action::XDP_PASS))
            .is_ok()
    });
    bump(&STEER_STATS, if sent { SS_SENT } else { SS_NO_CPU });
    sent
}
