//! The kernel's tuple-space search, run in userspace over a [`CompiledFirewall`].
//!
//! It uses the same key construction (`palisade_common::firewall::flow_key`) as the XDP
//! program, so tests can check the compiler against the linear [`super::reference`] without a
//! kernel, and the kernel against both.

use palisade_common::{
    firewall::{TUPLE_DST_SET, TUPLE_SRC_SET, flow_key, tuple_applies},
    packet::{FRAG_LATER, Packet},
};

use super::compile::CompiledFirewall;
use crate::policy::model::Cidr;

/// The evaluation index of the first rule matching `p`, as the kernel would find it.
#[must_use]
pub fn first_match(c: &CompiledFirewall, p: &Packet) -> Option<u32> {
    let (sport_class, dport_class) = if p.frag == FRAG_LATER {
        (0, 0)
    } else {
        (
            c.sport_class[usize::from(p.sport)],
            c.dport_class[usize::from(p.dport)],
        )
    };
    let mut best = u32::MAX;
    for (i, t) in c.tuples.iter().enumerate() {
        if t.best_rule >= best {
            break;
        }
        let in_set = |set: u32, addr: &[u8; 16]| {
            c.sets
                .get(set as usize)
                .is_some_and(|members| set_contains(members, p.family, addr))
        };
        if !tuple_applies(t, p)
            || (t.flags & TUPLE_SRC_SET != 0 && !in_set(t.src_set, &p.src))
            || (t.flags & TUPLE_DST_SET != 0 && !in_set(t.dst_set, &p.dst))
        {
            continue;
        }
        let key = flow_key(0, i as u32, t, p, sport_class, dport_class);
        if let Some(&rule) = c.entries.get(&key) {
            best = best.min(rule);
        }
    }
    (best != u32::MAX).then_some(best)
}

/// Set membership as the kernel's LPM trie decides it: the family must match (an IPv6 entry
/// never contains an IPv4 address, even though IPv4 is stored IPv4-mapped), then the prefix.
#[must_use]
pub fn set_contains(members: &[Cidr], family: u8, addr: &[u8; 16]) -> bool {
    members.iter().any(|m| {
        super::compile::family_code(m.family) == family
            && addr
                .iter()
                .zip(m.mask())
                .zip(m.addr)
                .all(|((a, k), c)| a & k == c)
    })
}
