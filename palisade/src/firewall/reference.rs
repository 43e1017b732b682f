//! The obviously-correct firewall: rules tried one by one, in order.
//!
//! Nothing here is shared with the compiler or the kernel program except the parsed
//! [`Packet`]; it exists to be compared against them.

use palisade_common::{
    conntrack::{STATE_ESTABLISHED, STATE_RELATED},
    firewall::Link,
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

/// The first rule (evaluation index) whose every condition holds for `p`, in a frame whose
/// link-layer values are all zero ([`first_match_link`] for others).
#[must_use]
pub fn first_match(policy: &Policy, p: &Packet) -> Option<u32> {
    first_match_link(policy, p, &Link::default())
}

/// The first rule (evaluation index) whose every condition holds for `p` in a frame with
/// link-layer values `link`.
#[must_use]
pub fn first_match_link(policy: &Policy, p: &Packet, link: &Link) -> Option<u32> {
    policy
        .firewall
        .rules
        .iter()
        .position(|r| r.link.matches(link) && matches(policy, r, p))
        .map(|i| i as u32)
}

/// The full verdict for an IP packet, whose `ct_state` the tracker has already set (0 when
/// it did not classify the packet).
///
/// With `stateful = true`, an established or related packet passes before any rule is tried
/// (as `Pass { rule: None }`, like the default); non-first fragments are dropped before that
/// when the policy drops them.
#[must_use]
pub fn verdict(policy: &Policy, p: &Packet) -> Verdict {
    verdict_link(policy, p, &Link::default())
}

/// [`verdict`] for a frame with link-layer values `link`.
#[must_use]
pub fn verdict_link(policy: &Policy, p: &Packet, link: &Link) -> Verdict {
    let fw = &policy.firewall;
    if p.frag == FRAG_LATER && fw.fragments == FragmentPolicy::Drop {
        return Verdict::Drop {
            rule: None,
            reason: reason::FRAGMENT,
        };
    }
    if fw.stateful
        && policy.tracks_connections()
        && p.ct_state & (STATE_ESTABLISHED | STATE_RELATED) != 0
    {
        return Verdict::Pass { rule: None };
    }
    match first_match_link(policy, p, link) {
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
            Action::Mark(_) | Action::Mirror(_) => Verdict::Pass { rule: Some(i) },
            // Whether it leaves depends on the interfaces and routes, not on the rules.
            Action::Redirect(_) | Action::Steer(_) => Verdict::Pass { rule: Some(i) },
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
    // A negated condition (`not`) holds when the plain one does not; negating a condition
    // the rule does not have changes nothing.
    let side_ok = |m: &AddrMatch, addr: &[u8; 16], negated: bool| {
        *m == AddrMatch::Any || addr_ok(m, addr) != negated
    };
    if !side_ok(&r.src, &p.src, r.not.src) || !side_ok(&r.dst, &p.dst, r.not.dst) {
        return false;
    }
    if r.protocol
        .is_some_and(|proto| (proto.number() == p.proto) == r.not.proto)
    {
        return false;
    }
    let needs_l4 =
        r.src_ports.is_some() || r.dst_ports.is_some() || r.tcp_flags.is_some() || r.icmp.is_some();
    if needs_l4 && p.frag == FRAG_LATER {
        return false;
    }
    if r.src_ports
        .is_some_and(|pr| (pr.lo..=pr.hi).contains(&p.sport) == r.not.sport)
    {
        return false;
    }
    if r.dst_ports
        .is_some_and(|pr| (pr.lo..=pr.hi).contains(&p.dport) == r.not.dport)
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
    // An untracked packet (`ct_state == 0`) is in no state, so it never meets a `state` rule.
    if r.state.is_some_and(|mask| p.ct_state & mask == 0) {
        return false;
    }
    r.ip.matches(p.tos, p.ttl, p.ip_len())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use palisade_common::{
        conntrack::{STATE_ESTABLISHED, STATE_INVALID, STATE_NEW, STATE_RELATED},
        packet::{FAMILY_V4, FRAG_LATER, FRAG_NONE, IPPROTO_TCP, Packet, v4_mapped},
        reason,
    };

    use super::*;
    use crate::policy::config::parse_policy;

    fn policy(text: &str) -> Policy {
        parse_policy(text, "p.toml", Path::new("/")).expect("valid test policy")
    }

    fn tcp(dport: u16, ct_state: u8) -> Packet {
        Packet {
            family: FAMILY_V4,
            proto: IPPROTO_TCP,
            frag: FRAG_NONE,
            tcp_flags: 0,
            ct_state,
            shield: 0,
            tos: 0,
            ttl: 64,
            src: v4_mapped([192, 0, 2, 1]),
            dst: v4_mapped([198, 51, 100, 1]),
            sport: 40000,
            dport,
            l3_offset: 14,
            l4_offset: 34,
            l4_len: 20,
        }
    }

    const ALL: [u8; 5] = [
        0,
        STATE_NEW,
        STATE_ESTABLISHED,
        STATE_RELATED,
        STATE_INVALID,
    ];

    #[test]
    fn a_state_rule_matches_packets_in_one_of_its_states() {
        let p = policy(
            r#"
[[firewall.rule]]
action = "allow"
proto = "tcp"
dport = 22
state = ["new", "related"]

[[firewall.rule]]
action = "drop"
state = "invalid"

[[firewall.rule]]
action = "allow"
dport = 80
proto = "tcp"
"#,
        );
        let want = |dport, ct| match (dport, ct) {
            (22, STATE_NEW | STATE_RELATED) => Some(0),
            (_, STATE_INVALID) => Some(1),
            (80, _) => Some(2),
            _ => None,
        };
        for dport in [22, 80, 443] {
            for ct in ALL {
                assert_eq!(
                    first_match(&p, &tcp(dport, ct)),
                    want(dport, ct),
                    "port {dport} state {ct}"
                );
            }
        }
    }

    #[test]
    fn stateful_passes_established_and_related_packets_before_the_rules() {
        let text = |stateful: bool| {
            format!(
                "[firewall]\ndefault = \"drop\"\nfragments = \"drop\"\nstateful = {stateful}\n\
                 [[firewall.rule]]\naction = \"drop\"\nproto = \"tcp\"\ndport = 22\n\
                 [[firewall.rule]]\naction = \"allow\"\nproto = \"tcp\"\ndport = 80\n"
            )
        };
        let on = policy(&text(true));
        let off = policy(&text(false));
        for ct in ALL {
            let accepted = ct == STATE_ESTABLISHED || ct == STATE_RELATED;
            // Even a packet a rule would drop, or the default would.
            for (dport, rule, pass) in [(22, Some(0), false), (80, Some(1), true), (9, None, false)]
            {
                let without = if pass {
                    Verdict::Pass { rule }
                } else {
                    Verdict::Drop {
                        rule,
                        reason: if rule.is_some() {
                            reason::RULE
                        } else {
                            reason::DEFAULT
                        },
                    }
                };
                let with = if accepted {
                    Verdict::Pass { rule: None }
                } else {
                    without
                };
                assert_eq!(verdict(&on, &tcp(dport, ct)), with, "{dport} state {ct}");
                assert_eq!(
                    verdict(&off, &tcp(dport, ct)),
                    without,
                    "{dport} state {ct}"
                );
                // The rules' own answer is unchanged: only the verdict short-cuts them.
                assert_eq!(first_match(&on, &tcp(dport, ct)), rule);
            }
        }
        // Dropped fragments are dropped first, as the datapath does.
        let later = Packet {
            frag: FRAG_LATER,
            ..tcp(0, STATE_ESTABLISHED)
        };
        assert_eq!(
            verdict(&on, &later),
            Verdict::Drop {
                rule: None,
                reason: reason::FRAGMENT
            }
        );
    }

    #[test]
    fn stateful_without_tracking_short_cuts_nothing() {
        // Only a policy built in code can say this (the checker and the compiler refuse it).
        let mut p = policy("[firewall]\ndefault = \"drop\"\nstateful = true\n");
        p.conntrack.enabled = false;
        assert_eq!(
            verdict(&p, &tcp(80, STATE_ESTABLISHED)),
            Verdict::Drop {
                rule: None,
                reason: reason::DEFAULT
            }
        );
    }
}
