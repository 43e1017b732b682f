//! Scrub (pf's semantics): the `[scrub]` settings as the TC programs read them, the counter
//! indexes and names, and the TCP option walk that finds the MSS, shared by the kernel and
//! the userspace tests.

use crate::map_type;

/// `ScrubConfig::flags`: scrub what arrives on the guarded interfaces (TC ingress).
pub const SCRUB_INGRESS: u32 = 1;
/// Scrub what leaves through the guarded interfaces (TC egress), forwarded or local.
pub const SCRUB_EGRESS: u32 = 2;
/// Clear the don't-fragment bit of IPv4 packets (pf `no-df`).
pub const SCRUB_CLEAR_DF: u32 = 4;
/// Replace the identification of unfragmented IPv4 packets by a random one (pf
/// `random-id`). Fragments keep theirs: reassembly matches fragments by it.
pub const SCRUB_RANDOM_ID: u32 = 8;

/// One generation's scrub settings (`SCRUB_CONFIG`, one slot per policy generation). A zero
/// limit is "off".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubConfig {
    pub flags: u32,
    /// The largest MSS a SYN or SYN-ACK may announce, by family; 0: not clamped.
    pub max_mss_v4: u16,
    pub max_mss_v6: u16,
    /// The smallest IPv4 TTL / IPv6 hop limit let through; lower ones are raised to it.
    pub min_ttl: u8,
    pub _pad: [u8; 7],
}
map_type!(ScrubConfig, 16);

impl ScrubConfig {
    /// Whether the packets of `direction` (`SCRUB_INGRESS` or `SCRUB_EGRESS`) are scrubbed
    /// at all.
    #[inline(always)]
    #[must_use]
    pub const fn scrubs(&self, direction: u32) -> bool {
        self.flags & direction != 0
            && (self.flags & (SCRUB_CLEAR_DF | SCRUB_RANDOM_ID) != 0
                || self.max_mss_v4 != 0
                || self.max_mss_v6 != 0
                || self.min_ttl != 0)
    }
}

/// Counters of `SCRUB_STATS` (per CPU), each per direction: index `direction_base + SC_*`
/// with the ingress block first ([`SC_PER_DIRECTION`] counters each).
/// IPv4 TTLs raised to `min_ttl`.
pub const SC_TTL_RAISED: u32 = 0;
/// IPv6 hop limits raised to `min_ttl`.
pub const SC_HOP_LIMIT_RAISED: u32 = 1;
/// MSS options of IPv4 SYNs and SYN-ACKs lowered to `max_mss_v4`.
pub const SC_MSS_CLAMPED_V4: u32 = 2;
/// MSS options of IPv6 SYNs and SYN-ACKs lowered to `max_mss_v6`.
pub const SC_MSS_CLAMPED_V6: u32 = 3;
/// Don't-fragment bits cleared.
pub const SC_DF_CLEARED: u32 = 4;
/// IPv4 identifications replaced by random ones.
pub const SC_ID_RANDOMIZED: u32 = 5;
/// IPv4 fragments whose identification was left alone under `random_id`.
pub const SC_FRAGMENT_ID_KEPT: u32 = 6;
/// Frames left alone because their headers could not be parsed (malformed, or not in the
/// linear part of the buffer).
pub const SC_NOT_PARSED: u32 = 7;
/// Rewrites the kernel refused (a checksum or store helper failed); the packet goes on as it
/// was at that point.
pub const SC_REWRITE_FAILED: u32 = 8;
pub const SC_PER_DIRECTION: u32 = 9;
/// Counters in `SCRUB_STATS`: ingress, then egress.
pub const SC_COUNT: u32 = 2 * SC_PER_DIRECTION;

/// Names of the `SC_*` counters.
pub const SC_NAMES: [&str; SC_PER_DIRECTION as usize] = [
    "ttl_raised",
    "hop_limit_raised",
    "mss_clamped_v4",
    "mss_clamped_v6",
    "df_cleared",
    "id_randomized",
    "fragment_id_kept",
    "not_parsed",
    "rewrite_failed",
];

/// Names of the directions, in the order of the counter blocks.
pub const SC_DIRECTIONS: [&str; 2] = ["ingress", "egress"];

/// The first counter of a direction's block.
#[inline(always)]
#[must_use]
pub const fn counter_base(direction: u32) -> u32 {
    if direction == SCRUB_EGRESS {
        SC_PER_DIRECTION
    } else {
        0
    }
}

/// TCP option bytes at most (a 60-byte header less its fixed 20).
pub const TCP_OPTION_BYTES: usize = 40;

/// The index in `opts` (the first `len` bytes are a TCP header's options; at most
/// [`TCP_OPTION_BYTES`] are read) of the 2-byte value of a well-formed MSS option, or `None` when
/// there is none: a list cut short, or with an option shorter than 2 bytes, or an MSS option
/// of the wrong length, stops the walk and is left alone.
///
/// `skip` holds the walk's count of bytes left in the option being passed over. The kernel
/// passes map memory (as `shield::read_syn_options` does): the loop's only value in a
/// register is then the position, so the verifier's states for one position merge instead
/// of multiplying with every combination of option lengths.
#[inline(always)]
pub fn mss_index<const N: usize>(opts: &[u8; N], len: usize, skip: &mut u8) -> Option<usize> {
    let end = if len > TCP_OPTION_BYTES {
        TCP_OPTION_BYTES
    } else {
        len
    };
    let at = |k: usize| opts.get(k).copied().unwrap_or(0);
    // SAFETY (every volatile access): a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(skip, 0) };
    let mut pos = 0usize;
    // One step per byte: bounded by the option space.
    while pos < TCP_OPTION_BYTES {
        if pos >= end {
            return None;
        }
        let left = unsafe { core::ptr::read_volatile(skip) };
        if left > 0 {
            unsafe { core::ptr::write_volatile(skip, left - 1) };
            pos += 1;
            continue;
        }
        let kind = at(pos);
        if kind == 0 {
            return None;
        }
        if kind == 1 {
            pos += 1;
            continue;
        }
        let l = usize::from(at(pos + 1));
        if l < 2 || pos + l > end {
            return None;
        }
        if kind == 2 {
            return if l == 4 { Some(pos + 2) } else { None };
        }
        unsafe { core::ptr::write_volatile(skip, (l - 1) as u8) };
        pos += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(opts: &[u8], len: usize) -> Option<usize> {
        let mut a = [0u8; TCP_OPTION_BYTES];
        a[..opts.len()].copy_from_slice(opts);
        let mut skip = 0;
        mss_index(&a, len, &mut skip)
    }

    #[test]
    fn finds_the_mss_after_other_options() {
        // NOP, NOP, timestamps (10), MSS 1460, window scale.
        let opts = [
            1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 2, 4, 0x05, 0xb4, 3, 3, 7, 0,
        ];
        assert_eq!(find(&opts, opts.len()), Some(14));
        // The kernel's SYN: MSS first.
        let linux = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        assert_eq!(find(&linux, linux.len()), Some(2));
        // Forty bytes of options, the MSS in the last four.
        let mut full = [1u8; TCP_OPTION_BYTES];
        full[36..].copy_from_slice(&[2, 4, 0x23, 0x28]);
        assert_eq!(find(&full, full.len()), Some(38));
    }

    #[test]
    fn malformed_lists_are_left_alone() {
        // A zero-length option, an option running past the list, an MSS of the wrong size,
        // the end-of-list option before the MSS.
        for opts in [
            &[1, 3, 0, 2, 4, 5, 0xb4][..],
            &[8, 10, 0, 0, 2, 4, 5, 0xb4][..],
            &[2, 3, 5, 0, 0, 0][..],
            &[0, 0, 2, 4, 5, 0xb4][..],
        ] {
            assert_eq!(find(opts, opts.len()), None, "{opts:?}");
        }
        // Only `len` bytes are options: an MSS after them is payload.
        let opts = [1u8, 1, 1, 1, 2, 4, 5, 0xb4];
        assert_eq!(find(&opts, 4), None);
        assert_eq!(find(&opts, 6), None);
        assert_eq!(find(&opts, 8), Some(6));
    }

    #[test]
    fn configs_that_change_nothing_scrub_nothing() {
        let mut c = ScrubConfig {
            flags: SCRUB_INGRESS | SCRUB_EGRESS,
            ..ScrubConfig::default()
        };
        assert!(!c.scrubs(SCRUB_INGRESS));
        c.min_ttl = 64;
        assert!(c.scrubs(SCRUB_INGRESS) && c.scrubs(SCRUB_EGRESS));
        c.flags = SCRUB_EGRESS;
        assert!(!c.scrubs(SCRUB_INGRESS) && c.scrubs(SCRUB_EGRESS));
    }
}
