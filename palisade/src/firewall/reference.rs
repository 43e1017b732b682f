//! The obviously-correct firewall: rules tried one by one, in order.
//!
//! Nothing here is shared with the compiler or the kernel program except the parsed
//! [`Packet`]; it exists to be compared against them.

use palisade_common::{
    packet::{FAMILY_V4, FRAG_LATER, IPPROTO_ICMP, IPPROTO_ICMPV6, Packet},
    reason,
};

use super::classify::set_contains;
use crate::policy::model::{Action, AddrMatch, Family, FragmentPolicy, Policy, Rule};

/// What the firewall does with a packet, apart from rate-limit timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass {
        rule: Option<u32>,
    },
    Drop {
        rule: Option<u32>,
        reason: u32,
    },
    /// A rate-limit rule matched: pass or drop depends on its bucket.
    RateLimit {
        rule: u32,
    },
}

/// The first rule (evaluation index) whose every condition holds for `p`.
#[must_use]
pub fn first_match(policy: &Policy, p: &Packet) -> Option<u32> {
    policy
        .firewall
        .rules
        .iter()
        .position(|r| matches(policy, r, p))
        .map(|i| i as u32)
}

/// The full verdict for an IP packet.
#[must_use]
pub fn verdict(policy: &Policy, p: &Packet) -> Verdict {
    let fw = &policy.firewall;
    if p.frag == FRAG_LATER && fw.fragments == FragmentPolicy::Drop {
        return Verdict::Drop {
            rule: None,
            reason: reason::FRAGMENT,
        };
    }
    match first_match(policy, p) {
        None => match fw.default_action {
            Action::Drop => Verdict::Drop {
                rule: None,
                reason: reason::DEFAULT,
            },
            _ => Verdict::Pass { rule: None },
        },
        Some(i) => match fw.rules[i as usize].action {
            Action::Allow => Verdict::Pass { rule: Some(i) },
            Action::Drop => Verdict::Drop {
                rule: Some(i),
                reason: reason::RULE,
            },
            Action::RateLimit(_) => Verdict::RateLimit { rule: i },
        },
    }
}

fn matches(policy: &Policy, r: &Rule, p: &Packet) -> bool {
    let family = if p.family == FAMILY_V4 {
        Family::V4
    } else {
        Family::V6
    };
    let addr_ok = |m: &AddrMatch, addr: &[u8; 16]| match m {
        AddrMatch::Any => true,
        AddrMatch::Cidrs(cidrs) => cidrs.iter().any(|c| c.contains(family, addr)),
        AddrMatch::Set(s) => set_contains(&policy.sets[*s].entries, p.family, addr),
    };
    if !addr_ok(&r.src, &p.src) || !addr_ok(&r.dst, &p.dst) {
        return false;
    }
    if r.protocol.is_some_and(|proto| proto.number() != p.proto) {
        return false;
    }
    let needs_l4 =
        r.src_ports.is_some() || r.dst_ports.is_some() || r.tcp_flags.is_some() || r.icmp.is_some();
    if needs_l4 && p.frag == FRAG_LATER {
        return false;
    }
    if r.src_ports
        .is_some_and(|pr| !(pr.lo..=pr.hi).contains(&p.sport))
    {
        return false;
    }
    if r.dst_ports
        .is_some_and(|pr| !(pr.lo..=pr.hi).contains(&p.dport))
    {
        return false;
    }
    if r.tcp_flags.is_some_and(|f| p.tcp_flags & f.mask != f.value) {
        return false;
    }
    if let Some(icmp) = r.icmp {
        let is_icmp = p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6;
        let [icmp_type, code] = p.dport.to_be_bytes();
        if !is_icmp || icmp_type != icmp.icmp_type || icmp.code.is_some_and(|c| c != code) {
            return false;
        }
    }
    true
}
