//! The connection tracker's settings as the datapath reads them, from a policy's
//! `[conntrack]` section.
//!
//! Whether connections are tracked at all is [`Policy::tracks_connections`] (carried to the
//! datapath as `POLICY_CT_TRACK` in the firewall header); the capacities of the two tables are
//! [`super::model::Conntrack::max_entries`] and
//! [`super::model::Conntrack::max_unvalidated`].

use palisade_common::conntrack::{CtConfig, ENTRY_VERSION, TIMEOUTS};

use super::model::Policy;

const NS_PER_S: u64 = 1_000_000_000;

/// The tracker's configuration slot for `policy`: its timeouts in nanoseconds, and the entry
/// layout version this build writes ([`ENTRY_VERSION`]).
#[must_use]
pub fn ct_config(policy: &Policy) -> CtConfig {
    let mut timeout_ns = [0u64; TIMEOUTS];
    for (ns, s) in timeout_ns.iter_mut().zip(policy.conntrack.timeouts_s) {
        // The checker bounds timeouts to 30 days; a model built in code cannot overflow.
        *ns = s.saturating_mul(NS_PER_S);
    }
    CtConfig {
        timeout_ns,
        version: ENTRY_VERSION,
        max_per_source: policy.conntrack.max_per_source,
        new_per_source: policy.conntrack.new_per_source,
        _pad: 0,
        overload_ttl_ns: if policy.conntrack.overload_set.is_some() {
            policy.conntrack.overload_ttl_s.saturating_mul(NS_PER_S)
        } else {
            0
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use palisade_common::conntrack::{DEFAULT_TIMEOUTS_S, T_TCP_ESTABLISHED, T_UDP};

    use super::*;
    use crate::policy::config::{default_policy, parse_policy};

    #[test]
    fn defaults_are_the_shared_defaults() {
        assert_eq!(ct_config(&default_policy()), CtConfig::defaults());
        let empty = parse_policy("", "p.toml", Path::new("/")).expect("valid");
        assert_eq!(ct_config(&empty), CtConfig::defaults());
    }

    #[test]
    fn timeouts_are_converted_to_nanoseconds() {
        let text = "[conntrack]\ntcp_established = 2592000\nudp = 1\n";
        let policy = parse_policy(text, "p.toml", Path::new("/")).expect("valid");
        let c = ct_config(&policy);
        assert_eq!(c.version, ENTRY_VERSION);
        assert_eq!(c._pad, 0);
        for (class, ns) in c.timeout_ns.iter().enumerate() {
            let want = match class {
                T_TCP_ESTABLISHED => 2_592_000 * NS_PER_S,
                T_UDP => NS_PER_S,
                _ => DEFAULT_TIMEOUTS_S[class] * NS_PER_S,
            };
            assert_eq!(*ns, want, "class {class}");
        }
    }

    #[test]
    fn huge_timeouts_built_in_code_saturate() {
        let mut policy = default_policy();
        policy.conntrack.timeouts_s[T_UDP] = u64::MAX / 2;
        assert_eq!(ct_config(&policy).timeout_ns[T_UDP], u64::MAX);
    }
}
