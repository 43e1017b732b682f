//! Token buckets for `rate-limit` rules (GCRA: one timestamp per bucket).
//!
//! Buckets are shared by all CPUs and updated without atomics: two CPUs racing on one bucket
//! may both admit a packet. The error is bounded by the number of CPUs per instant, which is
//! accepted for a DDoS shield and documented.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use palisade_common::{
    firewall::{
        PolicyHeader, RULE_RATE_PER_COUNTRY, RULE_RATE_PER_SOURCE, RateBucket, RateKey, RuleMeta,
        country_rate_addr, set_id,
    },
    packet::{FAMILY_V4, Packet, cut_to_prefix, rate_prefix_bits},
};

use crate::maps::FW_RATE;

#[inline(always)]
pub fn admit(generation: u32, header: &PolicyHeader, meta: &RuleMeta, p: &Packet) -> bool {
    let mut key = RateKey {
        rule: meta.rate_id,
        _pad: 0,
        addr: [0; 16],
    };
    if meta.flags & RULE_RATE_PER_SOURCE != 0 {
        // One bucket per source prefix: a client owning a whole prefix (an IPv6 /64) must
        // not get a fresh bucket for each address in it.
        key.addr = p.src;
        let bits = rate_prefix_bits(
            p.family == FAMILY_V4,
            header.rate_prefix_v4,
            header.rate_prefix_v6,
        );
        cut_to_prefix(&mut key.addr, bits);
    } else if meta.flags & RULE_RATE_PER_COUNTRY != 0 {
        // One bucket per source country, looked up in the generation's country map.
        let set = set_id(generation & 1, u32::from(header.country_set));
        key.addr = country_rate_addr(super::classify::country_of(set, p.family, &p.src));
    }
    // SAFETY: a helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(b) = FW_RATE.get_ptr_mut(&key) {
        // SAFETY: the pointer came from a successful lookup of this map.
        let current = unsafe { *b };
        match current.conforms(now, meta.rate_interval_ns, meta.rate_tolerance_ns) {
            Some(next) => {
                unsafe { *b = next };
                true
            }
            None => false,
        }
    } else {
        // A new bucket starts full: the first packet always conforms.
        let b = RateBucket {
            tat: now + meta.rate_interval_ns,
            interval_ns: meta.rate_interval_ns,
        };
        let _ = FW_RATE.insert(&key, &b, 0);
        true
    }
}
