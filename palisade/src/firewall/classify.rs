//! The kernel's tuple-space search, run in userspace over a [`CompiledFirewall`].
//!
//! It uses the same key construction (`palisade_common::firewall::flow_key`) as the XDP
//! program, so tests can check the compiler against the linear [`super::reference`] without a
//! kernel, and the kernel against both.

use palisade_common::{
    firewall::{
        Link, TUPLE_DST_NOT, TUPLE_DST_SET, TUPLE_SRC_NOT, TUPLE_SRC_SET, flow_key, link_applies,
        port_word, tuple_applies,
    },
    packet::{FRAG_LATER, Packet},
};

use super::compile::CompiledFirewall;
use crate::policy::model::Cidr;

/// The evaluation index of the first rule matching `p`, as the kernel would find it, for a
/// frame whose link-layer values are all zero ([`first_match_link`] for others).
#[must_use]
pub fn first_match(c: &CompiledFirewall, p: &Packet) -> Option<u32> {
    first_match_link(c, p, &Link::default())
}

/// The evaluation index of the first rule matching `p` in a frame with link-layer values
/// `link`, as the kernel would find it.
#[must_use]
pub fn first_match_link(c: &CompiledFirewall, p: &Packet, link: &Link) -> Option<u32> {
    let (sport_class, dport_class, by_ports) = if p.frag == FRAG_LATER {
        (0, 0, port_word::ALL)
    } else {
        let (s, d) = (
            c.sport_class[usize::from(p.sport)],
            c.dport_class[usize::from(p.dport)],
        );
        (
            s,
            d,
            c.sport_tuples[usize::from(s)] & c.dport_tuples[usize::from(d)],
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
        if !port_word::may_match(by_ports, i as u32)
            || !tuple_applies(t, p)
            || !link_applies(t, link)
            || (t.flags & TUPLE_SRC_SET != 0
                && in_set(t.src_set, &p.src) != (t.flags & TUPLE_SRC_NOT == 0))
            || (t.flags & TUPLE_DST_SET != 0
                && in_set(t.dst_set, &p.dst) != (t.flags & TUPLE_DST_NOT == 0))
        {
            continue;
        }
        if t.keyless != 0 {
            // As the kernel: the tuple's one key holds its first rule.
            best = t.best_rule;
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use palisade_common::{
        conntrack::{STATE_ESTABLISHED, STATE_INVALID, STATE_NEW, STATE_RELATED},
        firewall::TUPLE_CT_STATE,
        packet::{FAMILY_V6, FRAG_NONE, IPPROTO_UDP},
    };

    use super::*;
    use crate::{
        firewall::{compile::compile, reference},
        policy::config::parse_policy,
    };

    fn udp(dport: u16, ct_state: u8) -> Packet {
        Packet {
            family: FAMILY_V6,
            proto: IPPROTO_UDP,
            frag: FRAG_NONE,
            tcp_flags: 0,
            ct_state,
            shield: 0,
            tos: 0,
            ttl: 64,
            src: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            sport: 5353,
            dport,
            l3_offset: 14,
            l4_offset: 54,
            l4_len: 8,
        }
    }

    #[test]
    fn only_state_tuples_key_on_the_packet_state() {
        let text = r#"
[[firewall.rule]]
action = "allow"
proto = "udp"
dport = "53"
state = ["established", "related"]

[[firewall.rule]]
action = "drop"
proto = "udp"
dport = "50-60"

[[firewall.rule]]
action = "drop"
state = ["new", "invalid"]
"#;
        let policy = parse_policy(text, "p.toml", Path::new("/")).expect("valid");
        let c = compile(&policy).expect("compiles");
        let with_state: Vec<bool> = c
            .tuples
            .iter()
            .map(|t| t.flags & TUPLE_CT_STATE != 0)
            .collect();
        assert_eq!(with_state, [true, false, true]);
        // A tuple without the flag ignores the packet's state: its key's state byte stays 0.
        let (sc, dc) = (c.sport_class[5353], c.dport_class[53]);
        for ct in [0, STATE_NEW, STATE_ESTABLISHED, 0x80] {
            let p = udp(53, ct);
            assert_eq!(flow_key(0, 1, &c.tuples[1], &p, sc, dc).ct_state, 0);
            assert_eq!(flow_key(0, 0, &c.tuples[0], &p, sc, dc).ct_state, ct);
        }
        for (dport, ct, want) in [
            (53, 0, Some(1)),
            (53, STATE_ESTABLISHED, Some(0)),
            (53, STATE_RELATED, Some(0)),
            (53, STATE_NEW, Some(1)),
            (54, STATE_ESTABLISHED, Some(1)),
            (80, STATE_NEW, Some(2)),
            (80, STATE_INVALID, Some(2)),
            (80, STATE_ESTABLISHED, None),
            (80, 0, None),
        ] {
            let p = udp(dport, ct);
            assert_eq!(first_match(&c, &p), want, "port {dport} state {ct}");
            assert_eq!(
                reference::first_match(&policy, &p),
                want,
                "port {dport} state {ct}"
            );
        }
    }
}
