//! DDoS shields: the `[shield]` settings as the datapath reads them, and the pieces of the
//! SYN-cookie answer that the kernel programs and the userspace tests share (the client's
//! options, the timestamp that carries them, the SYN-ACK's options).
//!
//! The answer follows the kernel's own SYN cookies exactly, because the kernel is what
//! accepts the connection when the cookie comes back (see `docs/design/shield.md`): the
//! cookie itself comes from `bpf_tcp_raw_gen_syncookie_ipv4/6` (the kernel's function and
//! secret), and the client's window scale, SACK permission and ECN are kept in the low bits
//! of the timestamp the SYN-ACK sends, as `cookie_init_timestamp` keeps them, so the kernel's
//! `cookie_timestamp_decode` restores them from the client's echo.

use crate::map_type;

/// `ShieldConfig::flags`: SYN cookies for the ports in `syn_ports`.
pub const SHIELD_SYN: u32 = 1;
/// Cookies answer every SYN to those ports, whatever the rate (`syn_cookies = "on"`).
pub const SHIELD_SYN_FORCE: u32 = 2;
/// TCP segments of no tracked flow, and segments outside the windows of one, are dropped
/// before the rules (`tcp_invalid = "drop"`): ACK, RST and FIN floods.
pub const SHIELD_TCP_INVALID: u32 = 4;
/// UDP datagrams from a port in `amp_ports` that answer nothing this host sent are dropped.
pub const SHIELD_AMPLIFICATION: u32 = 8;
/// Sources are aggregated by prefix and counted in the sketch: new flows over
/// `source_limit` and echo requests over `echo_source_limit` are dropped.
pub const SHIELD_SOURCES: u32 = 16;

/// Words of a port bitmap (65 536 bits).
pub const PORT_WORDS: usize = 1024;

/// One generation's shield settings (`SHIELD_CONFIG`, one slot per policy generation).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShieldConfig {
    pub flags: u32,
    /// SYNs per second to one port, from all sources together, that engage cookies.
    pub syn_rate: u32,
    /// How long cookies stay engaged after the rate last went over `syn_rate`.
    pub hold_ns: u64,
    /// While engaged, one SYN per listener slot and this interval goes on to the stack, which
    /// answers it with its own cookie: that keeps the listener accepting cookies (the kernel
    /// takes them only within two minutes of sending one itself).
    pub stack_every_ns: u64,
    /// The MSS the SYN-ACK offers, by family.
    pub mss_v4: u16,
    pub mss_v6: u16,
    /// The window scale the SYN-ACK offers: the one the kernel will pick for the socket it
    /// makes from the cookie (`tcp_select_initial_window`), so both ends agree.
    pub wscale: u8,
    pub _pad: [u8; 3],
    /// New flows one source prefix may open per sketch window ([`window_limit`] of
    /// `source_rate`); 0: no limit.
    pub source_limit: u32,
    /// ICMP echo requests one source prefix may send per window; 0: no limit.
    pub echo_source_limit: u32,
    /// ICMP echo requests all sources together may send per window; 0: no limit.
    pub echo_global_limit: u32,
    /// Echo payloads (bytes after the 8-byte ICMP header) this long or longer are dropped
    /// (`icmp_echo_max_payload + 1`); 0: any length passes.
    pub echo_payload_over: u32,
    /// How long a prefix that went over `source_limit` stays blocked, from when it went
    /// over; 0: prefixes over the limit are only limited, never blocked.
    pub block_ns: u64,
    /// Keys the sketch's hashes: random per daemon, kept across reloads, so the counts stay
    /// and an outsider cannot aim sources at one counter.
    pub seed: u32,
    /// The prefix lengths sources are aggregated by, by family.
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub _pad2: [u8; 2],
    /// Destination ports with SYN cookies, one bit each.
    pub syn_ports: [u64; PORT_WORDS],
    /// Source ports of reflectors (`amplification_ports`), one bit each.
    pub amp_ports: [u64; PORT_WORDS],
}
map_type!(ShieldConfig, 64 + 16 * PORT_WORDS);

impl ShieldConfig {
    /// No shield at all.
    #[must_use]
    pub const fn off() -> Self {
        Self {
            flags: 0,
            syn_rate: 0,
            hold_ns: 0,
            stack_every_ns: 0,
            mss_v4: 0,
            mss_v6: 0,
            wscale: 0,
            _pad: [0; 3],
            source_limit: 0,
            echo_source_limit: 0,
            echo_global_limit: 0,
            echo_payload_over: 0,
            block_ns: 0,
            seed: 0,
            prefix_v4: 32,
            prefix_v6: 64,
            _pad2: [0; 2],
            syn_ports: [0; PORT_WORDS],
            amp_ports: [0; PORT_WORDS],
        }
    }
}

/// Whether `port`'s bit is set in a port bitmap.
#[inline(always)]
#[must_use]
pub fn port_bit(map: &[u64; PORT_WORDS], port: u16) -> bool {
    (map[usize::from(port >> 6) & (PORT_WORDS - 1)] >> (port & 63)) & 1 != 0
}

/// Sets `port`'s bit in a port bitmap.
pub fn set_port_bit(map: &mut [u64; PORT_WORDS], port: u16) {
    map[usize::from(port >> 6)] |= 1 << (port & 63);
}

/// Slots of `SHIELD_PORTS` (the SYN rate and engagement per destination port, shared by all
/// CPUs; ports that collide modulo this share one).
pub const PORT_SLOTS: u32 = 4096;
/// Slots of `SHIELD_LISTENERS` (when a SYN last went on to the stack, per destination
/// address and port hash).
pub const LISTENER_SLOTS: u32 = 4096;

/// The SYN rate of one port slot (`SHIELD_PORTS`), updated by every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortState {
    /// Start of the current one-second window.
    pub window_ns: u64,
    /// SYNs in that window.
    pub syns: u64,
    /// Cookies stay engaged until this time.
    pub engaged_until_ns: u64,
    /// Times cookies were engaged by the rate (counted when an engagement starts).
    pub engagements: u64,
}
map_type!(PortState, 32);

/// Counters of `SHIELD_STATS` (per CPU).
/// SYNs to a port with SYN cookies that the rules allowed.
pub const SH_SYN: u32 = 0;
/// SYN-ACKs with a cookie sent from XDP.
pub const SH_COOKIE_SENT: u32 = 1;
/// SYNs that went on to the stack while cookies were engaged, to keep the listener taking
/// cookies.
pub const SH_SYN_TO_STACK: u32 = 2;
/// SYNs cookies could not answer (a header the helper refused): passed to the stack.
pub const SH_COOKIE_UNANSWERED: u32 = 3;
/// ACKs that carried a valid cookie: their flow is tracked from them on.
pub const SH_COOKIE_VALID: u32 = 4;
/// ACKs the tracker found invalid (no flow, or outside a flow's windows), to a port with SYN
/// cookies, whose cookie is not valid.
pub const SH_COOKIE_INVALID: u32 = 5;
/// TCP segments dropped as invalid (`tcp_invalid = "drop"`).
pub const SH_TCP_INVALID_DROPPED: u32 = 6;
/// UDP datagrams dropped as unsolicited replies from a reflector port.
pub const SH_AMPLIFICATION_DROPPED: u32 = 7;
/// Times cookies were engaged by the SYN rate.
pub const SH_ENGAGED: u32 = 8;
/// New flows dropped because their source prefix went over `source_rate`.
pub const SH_SOURCE_LIMITED: u32 = 9;
/// Packets dropped because their source prefix is blocked (`source_block`).
pub const SH_SOURCE_BLOCKED: u32 = 10;
/// Times a prefix went over `source_rate` and was recorded in `SHIELD_HITTERS` (blocked,
/// when `source_block` is set).
pub const SH_HITTERS: u32 = 11;
/// Echo requests dropped because their source prefix went over `icmp_echo_rate`.
pub const SH_ECHO_SOURCE_LIMITED: u32 = 12;
/// Echo requests dropped because all sources together went over `icmp_echo_global_rate`.
pub const SH_ECHO_GLOBAL_LIMITED: u32 = 13;
/// Echo requests dropped for a payload over `icmp_echo_max_payload`.
pub const SH_ECHO_OVERSIZED: u32 = 14;
pub const SH_COUNT: u32 = 15;

/// Names of the `SH_*` counters, as `stats`, `status` and the metrics show them.
pub const SH_NAMES: [&str; SH_COUNT as usize] = [
    "syn",
    "cookies_sent",
    "syn_to_stack",
    "cookies_unanswered",
    "cookies_valid",
    "cookies_invalid",
    "tcp_invalid_dropped",
    "amplification_dropped",
    "engaged",
    "source_limited",
    "source_blocked",
    "hitters",
    "echo_source_limited",
    "echo_global_limited",
    "echo_oversized",
];

// ---- Per-source limits at scale ----

/// Counters per row of `SHIELD_SKETCH`.
pub const SKETCH_WIDTH: u32 = 1 << 16;
/// Rows of `SHIELD_SKETCH`, each hashed apart; a prefix's count is its smallest counter.
pub const SKETCH_ROWS: u32 = 4;
/// The cell after the rows: the echo requests of all sources together.
pub const SKETCH_GLOBAL_ECHO: u32 = SKETCH_ROWS * SKETCH_WIDTH;
/// Cells of `SHIELD_SKETCH` (2 MiB).
pub const SKETCH_CELLS: u32 = SKETCH_GLOBAL_ECHO + 1;
/// The counting window is `2^WINDOW_SHIFT` ns (1.07 s): a cell holds the window's number in
/// its high half and the window's count in its low half, so a cell of an old window counts
/// as 0 and is restarted by the first packet of the new one, with no sweep.
pub const WINDOW_SHIFT: u32 = 30;
/// Capacity of `SHIELD_HITTERS` (prefixes that went over `source_rate`, least recently
/// seen evicted first).
pub const HITTER_SLOTS: u32 = 65_536;

/// What a sketch counter counts for a prefix.
pub const CLASS_FLOWS: u32 = 0;
pub const CLASS_ECHO: u32 = 1;

/// The per-window count a per-second rate allows: the configured rate is the enforced rate
/// whatever the number of CPUs (the counters are shared) and whatever the window's length.
#[must_use]
pub const fn window_limit(per_second: u32) -> u32 {
    let w = (per_second as u64 * (1 << WINDOW_SHIFT)).div_ceil(1_000_000_000);
    if w > u32::MAX as u64 {
        u32::MAX
    } else {
        w as u32
    }
}

/// The window a time (`bpf_ktime_get_coarse_ns`) falls in, as a cell stores it.
#[inline(always)]
#[must_use]
pub const fn window_of(t_ns: u64) -> u32 {
    (t_ns >> WINDOW_SHIFT) as u32
}

/// A source address (native-endian words of the 16-byte stored form; an IPv4 address is
/// the last word) cut to its first `plen` bits.
#[inline(always)]
#[must_use]
pub const fn prefix_words(family: u8, words: [u32; 4], plen: u8) -> [u32; 4] {
    let bits = if family == crate::packet::FAMILY_V4 {
        plen as u32 + 96
    } else {
        plen as u32
    };
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        let have = bits.saturating_sub(i as u32 * 32);
        out[i] = if have >= 32 {
            words[i]
        } else if have == 0 {
            0
        } else {
            // The mask in network order, as the address bytes are.
            words[i] & (u32::MAX << (32 - have)).to_be()
        };
        i += 1;
    }
    out
}

/// The key of a source prefix in `SHIELD_HITTERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub family: u8,
    pub plen: u8,
    pub _pad: [u8; 2],
    /// [`prefix_words`] of the source.
    pub prefix: [u32; 4],
}
map_type!(SourceKey, 20);

/// A prefix that went over `source_rate` (`SHIELD_HITTERS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HitterEntry {
    /// When it first went over; with `source_block`, when its block started (it stays
    /// blocked for that long from here, so a shorter block in a reloaded policy applies at
    /// once).
    pub since_ns: u64,
    /// When a packet of it was last dropped.
    pub last_ns: u64,
    /// Packets of it dropped (over the limit, or blocked).
    pub drops: u64,
    /// Its count in the window when it went over.
    pub count: u32,
    pub _pad: u32,
}
map_type!(HitterEntry, 32);

/// The sketch cells of a prefix (`words` of [`prefix_words`]), one per row, for counting
/// `class`: double hashing (row `r` takes `h1 + r * h2`) keyed by the daemon's seed and the
/// prefix length, so counts under another prefix length never mix with these.
#[inline(always)]
#[must_use]
pub const fn sketch_cells(words: [u32; 4], plen: u8, class: u32, seed: u32) -> [u32; 4] {
    let mut h1 = seed ^ ((plen as u32) << 8 | class).wrapping_mul(0x85eb_ca6b);
    let mut h2 = !seed;
    let mut i = 0;
    while i < 4 {
        h1 = (h1 ^ words[i]).wrapping_mul(0x9e37_79b1);
        h1 ^= h1 >> 15;
        h2 = (h2 ^ words[i]).wrapping_mul(0xc2b2_ae35);
        h2 ^= h2 >> 13;
        i += 1;
    }
    h1 ^= h1 >> 16;
    h2 = (h2 ^ (h2 >> 16)) | 1;
    let mut out = [0u32; 4];
    let mut r = 0;
    while r < 4 {
        out[r as usize] = r * SKETCH_WIDTH + (h1.wrapping_add(r.wrapping_mul(h2)) >> 16);
        r += 1;
    }
    out
}
const _: () = assert!(SKETCH_ROWS == 4 && SKETCH_WIDTH == 1 << 16);

pub const TCPOPT_EOL: u8 = 0;
pub const TCPOPT_NOP: u8 = 1;
pub const TCPOPT_MSS: u8 = 2;
pub const TCPOPT_WSCALE: u8 = 3;
pub const TCPOPT_SACK_PERM: u8 = 4;
pub const TCPOPT_TIMESTAMP: u8 = 8;
/// The largest window scale TCP allows (RFC 7323).
pub const MAX_WSCALE: u8 = 14;
/// Bytes of a TCP header with every option: the most a SYN can carry.
pub const TCP_MAX_HEADER: usize = 60;

/// What a SYN offered, as far as a cookie answer needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynOptions {
    /// The window scale the client offered, `None` without the option.
    pub wscale: Option<u8>,
    pub sack: bool,
    /// The client's timestamp, `None` without the option.
    pub tsval: Option<u32>,
    /// The timestamp it echoes (0 without the option): in a cookie ACK, the SYN-ACK's, which
    /// carries the client's window scale and SACK permission.
    pub tsecr: u32,
}

impl SynOptions {
    /// The client's window scale as a cookie ACK's echoed timestamp carries it; `None` when
    /// the ACK has no timestamp or the client offered no scaling.
    #[must_use]
    pub const fn echoed_wscale(&self) -> Option<u8> {
        if self.tsval.is_none() || self.tsecr & TS_OPT_WSCALE_MASK == TS_OPT_WSCALE_MASK {
            None
        } else {
            Some((self.tsecr & TS_OPT_WSCALE_MASK) as u8)
        }
    }
}

/// The window a cookie SYN-ACK offers: the largest multiple of the MSS it offers that fits
/// an unscaled window.
#[must_use]
pub const fn synack_window(mss: u16) -> u16 {
    let mss = if mss == 0 { 1 } else { mss };
    65535 - 65535 % mss
}

/// Reads the options of a SYN whose TCP header (`len` bytes, 20 to 60) is in `th`. A
/// malformed option list ends the walk: what was read before it counts.
#[inline(always)]
#[must_use]
pub fn syn_options(th: &[u8; TCP_MAX_HEADER], len: usize) -> SynOptions {
    let mut o = SynOptions::default();
    let mut skip = 0;
    read_syn_options(th, len, &mut o, &mut skip);
    o
}

/// [`syn_options`] into `o`, which starts cleared; `skip` holds the walk's count of bytes
/// left in the option being passed over. The kernel passes map memory for both: what the
/// walk found so far is then not in registers, where the verifier would tell the paths
/// apart by it and walk each combination of option lengths and positions separately.
#[inline(always)]
pub fn read_syn_options(th: &[u8; TCP_MAX_HEADER], len: usize, o: &mut SynOptions, skip: &mut u8) {
    *o = SynOptions::default();
    let end = if len > TCP_MAX_HEADER {
        TCP_MAX_HEADER
    } else {
        len
    };
    let at = |k: usize| th.get(k).copied().unwrap_or(TCPOPT_EOL);
    // One step per byte, skipping the bytes of the option being read: the loop's only
    // precise value is the position, so the verifier's states for one position merge.
    // SAFETY (both volatile accesses): a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(skip, 0) };
    let mut pos = 20usize;
    while pos < TCP_MAX_HEADER {
        if pos >= end {
            break;
        }
        let left = unsafe { core::ptr::read_volatile(skip) };
        if left > 0 {
            unsafe { core::ptr::write_volatile(skip, left - 1) };
            pos += 1;
            continue;
        }
        let kind = at(pos);
        if kind == TCPOPT_EOL {
            break;
        }
        if kind == TCPOPT_NOP {
            pos += 1;
            continue;
        }
        let l = usize::from(at(pos + 1));
        if l < 2 || pos + l > end {
            break;
        }
        if kind == TCPOPT_WSCALE && l == 3 {
            let v = at(pos + 2);
            o.wscale = Some(if v > MAX_WSCALE { MAX_WSCALE } else { v });
        } else if kind == TCPOPT_SACK_PERM && l == 2 {
            o.sack = true;
        } else if kind == TCPOPT_TIMESTAMP && l == 10 {
            o.tsval = Some(u32::from_be_bytes([
                at(pos + 2),
                at(pos + 3),
                at(pos + 4),
                at(pos + 5),
            ]));
            o.tsecr = u32::from_be_bytes([at(pos + 6), at(pos + 7), at(pos + 8), at(pos + 9)]);
        }
        unsafe { core::ptr::write_volatile(skip, (l - 1) as u8) };
        pos += 1;
    }
}

/// The options of a SYN laid out as Linux lays them out (MSS, SACK permitted, timestamp,
/// NOP, window scale: a 40-byte header), read without the walk; `None` for any other
/// layout, which [`read_syn_options`] reads. Linux clients are most clients of a server.
#[inline(always)]
#[must_use]
pub fn linux_syn_options(th: &[u8; TCP_MAX_HEADER], len: usize) -> Option<SynOptions> {
    if len != 40
        || th[20..22] != [TCPOPT_MSS, 4]
        || th[24..28] != [TCPOPT_SACK_PERM, 2, TCPOPT_TIMESTAMP, 10]
        || th[36..39] != [TCPOPT_NOP, TCPOPT_WSCALE, 3]
    {
        return None;
    }
    let ws = th[39];
    Some(SynOptions {
        wscale: Some(if ws > MAX_WSCALE { MAX_WSCALE } else { ws }),
        sack: true,
        tsval: Some(u32::from_be_bytes([th[28], th[29], th[30], th[31]])),
        tsecr: u32::from_be_bytes([th[32], th[33], th[34], th[35]]),
    })
}

/// Low bits of a cookie timestamp: the client's window scale (`0xf` for none), then SACK and
/// ECN (the kernel's `TS_OPT_*`).
pub const TS_OPT_WSCALE_MASK: u32 = 0xf;
pub const TS_OPT_SACK: u32 = 1 << 4;
/// Bits of a cookie timestamp that carry options.
pub const TS_OPT_BITS: u32 = 6;

/// The timestamp a cookie SYN-ACK sends at `now_ms` (the TCP clock in milliseconds), carrying
/// the client's options as the kernel's `cookie_init_timestamp` does: never later than the
/// clock, so the connection's next timestamps do not go backwards.
#[inline(always)]
#[must_use]
pub fn cookie_timestamp(now_ms: u32, o: &SynOptions) -> u32 {
    let mut options = match o.wscale {
        Some(w) => u32::from(w) & TS_OPT_WSCALE_MASK,
        None => TS_OPT_WSCALE_MASK,
    };
    if o.sack {
        options |= TS_OPT_SACK;
    }
    let mut ts = (now_ms >> TS_OPT_BITS << TS_OPT_BITS) | options;
    if ts > now_ms {
        ts = ts.wrapping_sub(1 << TS_OPT_BITS);
    }
    ts
}

/// Bytes of the largest options block [`synack_options`] writes.
pub const SYNACK_OPTIONS_MAX: usize = 20;

/// Writes the options of a cookie SYN-ACK into `out` and returns their length (a multiple of
/// four), laid out as Linux lays out its own: MSS, then SACK permission and the timestamp,
/// then the window scale. As the kernel's cookies do, a SYN without a timestamp gets the MSS
/// alone: the options travel in the timestamp, and without one the kernel's socket will have
/// none of them.
#[inline(always)]
pub fn synack_options(
    o: &SynOptions,
    mss: u16,
    wscale: u8,
    tsval: u32,
    out: &mut [u8; SYNACK_OPTIONS_MAX],
) -> usize {
    let m = mss.to_be_bytes();
    out[0] = TCPOPT_MSS;
    out[1] = 4;
    out[2] = m[0];
    out[3] = m[1];
    let Some(ecr) = o.tsval else {
        return 4;
    };
    if o.sack {
        out[4] = TCPOPT_SACK_PERM;
        out[5] = 2;
    } else {
        out[4] = TCPOPT_NOP;
        out[5] = TCPOPT_NOP;
    }
    out[6] = TCPOPT_TIMESTAMP;
    out[7] = 10;
    let v = tsval.to_be_bytes();
    let e = ecr.to_be_bytes();
    out[8] = v[0];
    out[9] = v[1];
    out[10] = v[2];
    out[11] = v[3];
    out[12] = e[0];
    out[13] = e[1];
    out[14] = e[2];
    out[15] = e[3];
    if o.wscale.is_none() {
        return 16;
    }
    out[16] = TCPOPT_NOP;
    out[17] = TCPOPT_WSCALE;
    out[18] = 3;
    out[19] = if wscale > MAX_WSCALE {
        MAX_WSCALE
    } else {
        wscale
    };
    20
}

/// The ones'-complement sum of `data` (big-endian 16-bit words; an odd last byte is padded),
/// added to `sum`, not folded.
#[inline(always)]
#[must_use]
pub fn sum_words(data: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < data.len() {
        sum += u32::from(u16::from_be_bytes([data[i], data[i + 1]]));
        i += 2;
    }
    if i < data.len() {
        sum += u32::from(data[i]) << 8;
    }
    sum
}

/// Folds a ones'-complement sum and complements it: the checksum field's value.
#[inline(always)]
#[must_use]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linux_layout_reads_as_the_walk_reads_it() {
        let linux = [
            2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 1, 2, 0, 0, 0, 9, 1, 3, 3, 7,
        ];
        let (th, len) = header(&linux);
        let fast = linux_syn_options(&th, len).expect("the Linux layout");
        assert_eq!(fast, syn_options(&th, len));
        assert_eq!(
            (fast.wscale, fast.tsval, fast.tsecr),
            (Some(7), Some(258), 9)
        );
        // A window scale over 14 is read as 14, as the walk reads it.
        let mut big = linux;
        big[19] = 15;
        let (th, len) = header(&big);
        assert_eq!(linux_syn_options(&th, len), Some(syn_options(&th, len)));
        // Other layouts (Windows', macOS', no timestamp) are left to the walk.
        for other in [
            &[2, 4, 5, 180, 1, 3, 3, 8, 1, 1, 4, 2][..],
            &[
                2, 4, 5, 180, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 4, 2, 0, 0,
            ][..],
            &[2, 4, 5, 180, 4, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 7][..],
        ] {
            let (th, len) = header(other);
            assert_eq!(linux_syn_options(&th, len), None, "{other:?}");
        }
    }

    fn header(options: &[u8]) -> ([u8; TCP_MAX_HEADER], usize) {
        let mut th = [0u8; TCP_MAX_HEADER];
        th[20..20 + options.len()].copy_from_slice(options);
        (th, 20 + options.len())
    }

    #[test]
    fn linux_syn_options_are_read() {
        // MSS 1460, SACK permitted, timestamp 0x01020304/0, NOP, window scale 7.
        let (th, len) = header(&[
            2, 4, 5, 180, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7,
        ]);
        let o = syn_options(&th, len);
        assert_eq!(
            o,
            SynOptions {
                wscale: Some(7),
                sack: true,
                tsval: Some(0x0102_0304),
                tsecr: 0,
            }
        );
    }

    #[test]
    fn bad_option_lists_stop_the_walk() {
        // A zero length would loop forever if it were not refused.
        let (th, len) = header(&[4, 2, 3, 0, 0, 0]);
        assert_eq!(
            syn_options(&th, len),
            SynOptions {
                sack: true,
                ..SynOptions::default()
            }
        );
        // An option running past the header is ignored.
        let (th, len) = header(&[1, 1, 8, 10, 1, 2, 3, 4]);
        assert_eq!(syn_options(&th, len), SynOptions::default());
        // A window scale beyond 14 is taken as 14 (RFC 7323).
        let (th, len) = header(&[3, 3, 200, 0]);
        assert_eq!(syn_options(&th, len).wscale, Some(MAX_WSCALE));
    }

    #[test]
    fn the_timestamp_carries_the_options_and_never_runs_ahead() {
        let o = SynOptions {
            wscale: Some(7),
            sack: true,
            tsval: Some(1),
            tsecr: 0,
        };
        let ts = cookie_timestamp(1_000_000, &o);
        assert_eq!(ts & 0x3f, 7 | TS_OPT_SACK);
        assert!(ts <= 1_000_000 && 1_000_000 - ts < 64);
        let none = cookie_timestamp(1_000_000, &SynOptions::default());
        assert_eq!(none & 0x3f, TS_OPT_WSCALE_MASK);
        // Options bits above the clock's own low bits: one step back.
        let ts = cookie_timestamp(0x1000_0040, &o);
        assert_eq!(ts, 0x1000_0000 | 7 | TS_OPT_SACK);
    }

    #[test]
    fn synack_options_follow_the_kernel() {
        let mut out = [0u8; SYNACK_OPTIONS_MAX];
        let full = SynOptions {
            wscale: Some(9),
            sack: true,
            tsval: Some(0xaabb_ccdd),
            tsecr: 0,
        };
        let n = synack_options(&full, 1460, 7, 0x1122_3344, &mut out);
        assert_eq!(
            &out[..n],
            &[
                2, 4, 5, 180, 4, 2, 8, 10, 0x11, 0x22, 0x33, 0x44, 0xaa, 0xbb, 0xcc, 0xdd, 1, 3, 3,
                7
            ]
        );
        let no_ts = SynOptions {
            tsval: None,
            ..full
        };
        assert_eq!(synack_options(&no_ts, 1440, 7, 0, &mut out), 4);
        assert_eq!(&out[..4], &[2, 4, 5, 160]);
    }

    #[test]
    fn the_echo_gives_back_the_clients_window_scale() {
        let mut o = SynOptions {
            tsval: Some(5),
            tsecr: cookie_timestamp(
                1_000_000,
                &SynOptions {
                    wscale: Some(10),
                    ..SynOptions::default()
                },
            ),
            ..SynOptions::default()
        };
        assert_eq!(o.echoed_wscale(), Some(10));
        o.tsecr = cookie_timestamp(1_000_000, &SynOptions::default());
        assert_eq!(o.echoed_wscale(), None);
        o.tsval = None;
        o.tsecr = 7;
        assert_eq!(o.echoed_wscale(), None);
        assert_eq!((synack_window(1460), synack_window(1440)), (64240, 64800));
    }

    #[test]
    fn checksum_of_a_known_header() {
        // RFC 1071's example words.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(&data, 0)), !0xddf2);
    }

    #[test]
    fn port_bitmaps() {
        let mut m = [0u64; PORT_WORDS];
        for p in [0u16, 53, 63, 64, 65535] {
            set_port_bit(&mut m, p);
            assert!(port_bit(&m, p));
        }
        assert!(!port_bit(&m, 52));
        assert!(!port_bit(&m, 65534));
    }
}
