//! The `steer` action: a packet a rule matches is handed to one CPU of a set through a CPU
//! map (`bpf_redirect_map` on `STEER_CPUS`), picked by a hash of its flow so that a flow stays
//! on one CPU (see `docs/design/firewall.md`, "Actions").
//!
//! The rule's CPUs travel in its `RuleMeta`: up to [`MAX_RULE_CPUS`] CPU numbers, one byte
//! each, in `mark` (the first four) and `ifindex` (the next four), their count in `dscp`.

/// `RuleMeta::action`: hand the packet to a CPU of the rule's set.
pub const ACTION_STEER: u8 = 6;

/// CPUs one rule may name.
pub const MAX_RULE_CPUS: usize = 8;
/// Capacity of `STEER_CPUS` (the CPU map): CPUs `0..STEER_MAX_CPU`.
pub const STEER_MAX_CPU: u32 = 64;
/// The CPU map entry's queue size when a policy sets none (`queue_size`).
pub const DEFAULT_QUEUE_SIZE: u32 = 2048;
/// The largest queue size the kernel takes for a CPU map entry.
pub const MAX_QUEUE_SIZE: u32 = 16_384;

/// `STEER_STATS`: packets a steer rule matched.
pub const SS_MATCHED: u32 = 0;
/// Packets handed to the CPU map (`XDP_REDIRECT` returned).
pub const SS_SENT: u32 = 1;
/// The picked CPU has no entry in the CPU map: passed here (on this CPU).
pub const SS_NO_CPU: u32 = 2;
/// Packets the CPU map's program saw on their new CPU (per CPU, which is the point).
pub const SS_ARRIVED: u32 = 3;
/// Slots of `STEER_STATS`.
pub const SS_COUNT: u32 = 4;
/// Counter names, by index.
pub const SS_NAMES: [&str; SS_COUNT as usize] = ["matched", "sent", "no_cpu", "arrived"];

/// The rule's CPUs packed as `RuleMeta` carries them: (`mark`, `ifindex`, `dscp` = count).
/// `cpus` has 1 to [`MAX_RULE_CPUS`] entries (the config refuses others).
#[must_use]
pub fn pack_cpus(cpus: &[u8]) -> (u32, u32, u8) {
    let mut b = [0u8; MAX_RULE_CPUS];
    let n = cpus.len().min(MAX_RULE_CPUS);
    b[..n].copy_from_slice(&cpus[..n]);
    (
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        n as u8,
    )
}

/// A flow's hash: the same for every packet of one direction of a flow. A multiply-xorshift
/// mix of 32-bit words (no 64-bit multiplication: the BPF target has no `__multi3`).
#[inline(always)]
#[must_use]
pub const fn flow_hash(src: [u32; 4], dst: [u32; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let words = [
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
        ((sport as u32) << 16) | dport as u32,
        proto as u32,
    ];
    let mut h: u32 = 0x9e37_79b9;
    let mut i = 0;
    while i < words.len() {
        h ^= words[i];
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        i += 1;
    }
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The CPU a flow of hash `hash` goes to among a rule's packed CPUs (`lo`, `hi`, `n`); `None`
/// for an empty set.
#[inline(always)]
#[must_use]
pub const fn pick(lo: u32, hi: u32, n: u8, hash: u32) -> Option<u32> {
    if n == 0 || n as usize > MAX_RULE_CPUS {
        return None;
    }
    let i = hash % n as u32;
    let word = if i < 4 { lo } else { hi };
    Some((word >> ((i & 3) * 8)) & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_round_trip_and_a_flow_keeps_its_cpu() {
        let cpus = [3u8, 0, 7, 1, 2, 9, 4, 5];
        let (lo, hi, n) = pack_cpus(&cpus);
        let mut seen = [0u32; 8];
        for h in 0..8000u32 {
            let c = pick(lo, hi, n, h).unwrap();
            assert_eq!(c, u32::from(cpus[(h % 8) as usize]));
            seen[(h % 8) as usize] += 1;
        }
        assert!(seen.iter().all(|&s| s == 1000));
        assert_eq!(pick(lo, hi, 0, 5), None);
        let (lo, hi, n) = pack_cpus(&[1]);
        assert_eq!(pick(lo, hi, n, 12345), Some(1));
        let a = flow_hash([0, 0, 0xffff_0000, 0x0100_000a], [1, 2, 3, 4], 1000, 53, 17);
        assert_eq!(
            a,
            flow_hash([0, 0, 0xffff_0000, 0x0100_000a], [1, 2, 3, 4], 1000, 53, 17)
        );
        assert_ne!(
            a,
            flow_hash([0, 0, 0xffff_0000, 0x0100_000a], [1, 2, 3, 4], 1001, 53, 17)
        );
    }

    #[test]
    fn flows_spread_over_two_cpus() {
        let (lo, hi, n) = pack_cpus(&[0, 1]);
        let mut on = [0u32; 2];
        for sport in 0..10_000u16 {
            let h = flow_hash([0, 0, 0xffff_0000, 7], [0, 0, 0xffff_0000, 9], sport, 80, 6);
            on[pick(lo, hi, n, h).unwrap() as usize] += 1;
        }
        assert!(on[0] > 4500 && on[1] > 4500, "{on:?}");
    }
}
