//! The DNS inspector: header checks, the QNAME walk, suffix lookups, entropy, rate limits
//! and the decision. Hook-independent: the hooks copy the DNS message into
//! [`Scratch::msg`] and act on the returned [`Decision`].
//!
//! Every loop runs in `bpf_loop`, so the verifier checks each body once whatever the name
//! length; the callbacks fetch the per-CPU scratch themselves so that only scalars cross
//! the callback boundary.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_ktime_get_boot_ns, bpf_ktime_get_ns, generated::bpf_loop};
use palisade_common::{
    dns::{
        entropy::{NLOGN, TABLE_LEN, exceeds},
        hash::{self, HashKey},
        maps::{
            ClientKey, KIND_APEX, KIND_BELOW, MODE_ALLOWLIST, MODE_BLOCKLIST, NameFilter, NameKey,
            NameValue, SCOPE_BLOCK_MALFORMED, SCOPE_RATE, SCOPE_REBIND, SCOPES, STAT_INTEL_ALERTED,
            STAT_INTEL_TAGGED, ScopeConfig,
        },
        name::{MAX_WALK_BYTES, Step, Walker},
        wire::{
            HEADER_LEN, INSPECT_LEN, MAX_LABELS, OPT_FIXED_LEN, check_additional,
            check_query_header,
        },
    },
    event::{FLAG_INTEL_NAME_ALERT, FLAG_INTEL_NAME_TAG},
    firewall::rate_conforms,
    intel::{ACTION_ALERT, ACTION_TAG},
    packet::Packet,
    reason,
};

use crate::maps::{DNS_FILTER, DNS_KEY, DNS_NAMES, DNS_RATE, DNS_SCOPES, DNS_SCRATCH};

mod fast;

/// Masks a label index into the 128-entry arrays; a name has at most `MAX_LABELS` (127)
/// labels, so the mask never changes a valid index. It is there for the verifier.
const LABEL_MASK: usize = 127;
const _: () = assert!(MAX_LABELS <= LABEL_MASK + 1);

/// Name bytes handled per `bpf_loop` callback.
const CHUNK: usize = 8;

/// Per-CPU working space.
#[repr(C)]
pub struct Scratch {
    /// The packet being inspected, parsed by the hook.
    pub packet: Packet,
    /// Keeps the fields below on the word boundaries the fast walk reads them at.
    _packet_pad: [u8; (8 - size_of::<Packet>() % 8) % 8],
    /// Whose query-rate bucket the query counts against, set by the hook: the client
    /// address on ingress, the socket's cgroup on egress. (Here rather than in [`Request`],
    /// whose copy on the hook's stack is counted against the verifier's 512 bytes.)
    pub rate_key: [u8; 16],
    /// The DNS message as copied from the packet (header first).
    pub msg: [u8; INSPECT_LEN],
    /// Case-folded logical wire name (compression pointers followed).
    pub name: [u8; 256],
    /// The same name bytes as sent, letter case kept, at the same positions as `name`.
    pub raw_name: [u8; 256],
    /// Offset of each label's length byte in `name`.
    pub starts: [u8; 128],
    /// Hash of each label.
    pub hashes: [[u64; 2]; 128],
    /// Byte counts for the entropy check (of `raw_name`).
    pub counts: [u8; 256],
    /// The inspector's decision, read back by [`inspect`].
    pub decision: Decision,
    /// The TCP segment being judged and its messages (`stream`), kept here rather than in
    /// the frames under the inspector's.
    pub segment: super::stream::Payload,
    pub messages: palisade_common::dns::stream::Messages,
    /// Loop state of the three `bpf_loop`s. It lives here, not on the stack: values read
    /// from a map are unknown to the verifier, so each callback is verified once for all
    /// iterations instead of once per distinct precise state.
    walk: WalkCtx,
    matcher: MatchCtx,
    entropy: EntropyCtx,
    /// The frame's link-layer values, read by the XDP firewall for its rule search when the
    /// policy has link conditions (`PolicyHeader::link`); stale otherwise, and then unread.
    pub link: palisade_common::firewall::Link,
}

// `entropy_exceeds` clears the counts by aligned words.
const _: () = assert!(core::mem::offset_of!(Scratch, counts) % 8 == 0);

/// What the inspector concluded.
///
/// The fields are laid out so that the ones a malformed decision zeroes make one aligned
/// word: scattered zeroed bytes are merged into a byte-by-byte `memset` call.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Decision {
    /// Sum of the raw question bytes (name, qtype, qclass) for the NXDOMAIN checksum.
    pub question_sum: u32,
    pub qtype: u16,
    /// Logical length of the name (pointers followed); 0 when it could not be parsed.
    pub wire_len: u16,
    /// `reason::PASS` or the reason to block.
    pub reason: u32,
    /// Bytes the name takes in the message (up to its first pointer); what an NXDOMAIN
    /// answer echoes.
    pub in_message: u16,
    /// List of the deciding entry, `u16::MAX` for none.
    pub list: u16,
}
const _: () = assert!(size_of::<Decision>() == 16);

impl Decision {
    /// The decision for a query that cannot be parsed safely.
    pub const fn malformed(block: bool) -> Self {
        Self {
            reason: if block {
                reason::DNS_MALFORMED
            } else {
                reason::PASS
            },
            qtype: 0,
            wire_len: 0,
            in_message: 0,
            question_sum: 0,
            list: u16::MAX,
        }
    }
}

/// One query to inspect (the packet itself is in the scratch).
pub struct Request {
    /// Scratch slot of the calling hook.
    pub slot: u32,
    pub scope: u8,
    pub generation: u32,
    /// Bytes of the message copied into the scratch.
    pub msg_len: usize,
    /// Length of the whole message (what the receiver sees), at least `msg_len`.
    pub total_len: usize,
    /// Whether the whole message is in this packet; when not, the query is judged
    /// malformed (after the rate limit has taken its token).
    pub whole: bool,
}

/// Inspects the message in the scratch for `req.scope`. Returns `false` on an internal
/// failure (the hook then decides by its fail-open or fail-closed rule).
#[inline(always)]
pub fn inspect(req: &Request, out: &mut Decision) -> bool {
    // The total length fits in 16 bits (IP payloads do); bit 31 says whether it is whole.
    let total = (req.total_len.min(0xffff) as u32) | (u32::from(req.whole) << 31);
    let ok = palisade_dns_inspect(
        req.slot,
        u32::from(req.scope),
        req.generation,
        req.msg_len.min(INSPECT_LEN) as u32,
        total,
    );
    if ok == 0 {
        return false;
    }
    let Some(s) = DNS_SCRATCH.get_ptr(req.slot) else {
        return false;
    };
    // SAFETY: this hook's per-CPU scratch slot; the decision was just written there.
    *out = unsafe { (*s).decision };
    true
}

/// The hash of the whole question name of the last inspection in `slot` (its longest
/// suffix: the matcher visits every label). Meaningful only after a decision with a parsed
/// name (`wire_len != 0`).
#[inline(always)]
pub fn name_hash(slot: u32) -> (u64, u64) {
    match DNS_SCRATCH.get_ptr(slot) {
        // SAFETY: the hook's per-CPU scratch slot.
        Some(s) => unsafe { (*s).matcher.suffix },
        None => (0, 0),
    }
}

/// The `[intel]` flags of the last inspection in `slot` whose decision is `d`
/// ([`FLAG_INTEL_NAME_ALERT`], [`FLAG_INTEL_NAME_TAG`]; 0 when no entry matched or the
/// matching entry is not an `[intel]` alert or tag): a query the hook passes but must
/// report.
#[inline(always)]
pub fn intel_flags(slot: u32, d: &Decision) -> u8 {
    if d.list == u16::MAX {
        return 0;
    }
    let Some(s) = DNS_SCRATCH.get_ptr(slot) else {
        return 0;
    };
    // SAFETY: the hook's per-CPU scratch slot; `list` is set only when this inspection
    // found an entry, whose value the matcher holds.
    match unsafe { (*s).matcher.value.intel } {
        ACTION_ALERT => FLAG_INTEL_NAME_ALERT,
        ACTION_TAG => FLAG_INTEL_NAME_TAG,
        _ => 0,
    }
}

/// Flag in `palisade_dns_inspect`'s `total`: the message holds a name taken from an answer.
pub const NOT_A_QUERY: u32 = 1 << 30;
/// Flag in `palisade_dns_inspect`'s `total`: match the name against the rebinding allow
/// list (name keys of scope `SCOPE_REBIND`) instead of the scope's lists; the decision's
/// `list` says whether it is on it. Only with [`NOT_A_QUERY`].
pub const REBIND_LIST: u32 = 1 << 29;

/// The inspector as a global BPF function: the verifier checks it once, on its own, instead
/// of at every call site with the caller's state. A hook inspects every message of a TCP
/// segment by calling it in a loop; as a static function that multiplied the verifier's work
/// past its limit, and its frame no longer counts on top of the caller's. Only scalars cross
/// the call; the decision is left in the scratch slot. Returns 1 when it is there, 0 on an
/// internal failure.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn palisade_dns_inspect(
    slot: u32,
    scope: u32,
    generation: u32,
    msg_len: u32,
    total: u32,
) -> u32 {
    let generation = generation & 1;
    let scope = scope % SCOPES;
    let Some(cfg) = DNS_SCOPES.get(generation * SCOPES + scope) else {
        return 0;
    };
    let req = Request {
        slot,
        scope: scope as u8,
        generation,
        msg_len: (msg_len as usize).min(INSPECT_LEN),
        total_len: (total & 0xffff) as usize,
        whole: total >> 31 != 0,
    };
    // Bit 30: a name from an answer (`dnsbind::check`), checked against the lists only; it
    // is no query, so it spends no query-rate token.
    let list_scope = if total & REBIND_LIST != 0 {
        SCOPE_REBIND
    } else {
        scope as u8
    };
    let Some(d) = inspect_inner(cfg, &req, total & NOT_A_QUERY == 0, list_scope) else {
        return 0;
    };
    // SAFETY: `Decision` is two aligned words of plain integers.
    let words: [u64; 2] = unsafe { core::mem::transmute(d) };
    finish(slot, words[0], words[1])
}

/// Leaves the decision (`words`, a [`Decision`]) in the scratch slot and counts a query passed
/// for a name of an `[intel]` alert or tag feed (`intel_alerted`, `intel_tagged` of its scope).
/// Returns 1, or 0 when the slot cannot be read.
///
/// A function of its own, taking scalars only: counted in the inspector's frame, the
/// counter's key and the values kept alive for it grew that frame, which is on the hooks'
/// longest call chains, past the verifier's 512 bytes. This frame is smaller than those of
/// the other calls the inspector makes, so no chain grows.
#[inline(never)]
fn finish(slot: u32, w0: u64, w1: u64) -> u32 {
    let Some(s) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: the words of a `Decision`, as `palisade_dns_inspect` made them.
    let d: Decision = unsafe { core::mem::transmute([w0, w1]) };
    // SAFETY: the caller's per-CPU scratch slot.
    unsafe { (*s).decision = d };
    // SAFETY: as above; the matcher was written by this inspection.
    let m = unsafe { &(*s).matcher };
    // `list` is set only when this inspection found an entry, whose value the matcher holds.
    if m.query && d.reason == reason::PASS && d.list != u16::MAX {
        let stat = match m.value.intel {
            ACTION_ALERT => STAT_INTEL_ALERTED,
            ACTION_TAG => STAT_INTEL_TAGGED,
            _ => return 1,
        };
        super::report::count(m.scope, stat);
    }
    1
}

#[inline(always)]
fn inspect_inner(
    cfg: &ScopeConfig,
    req: &Request,
    query: bool,
    list_scope: u8,
) -> Option<Decision> {
    let (slot, scope, generation, msg_len) = (req.slot, req.scope, req.generation, req.msg_len);
    let block_malformed = cfg.flags & SCOPE_BLOCK_MALFORMED != 0;
    // Left in the map, not copied: the inspector's frame is stacked on the hooks'.
    let key = DNS_KEY.get(0)?;
    let scratch = DNS_SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: per-CPU scratch slot of this hook, used by one program at a time.
    let s = unsafe { &mut *scratch };
    // Stored where `query` is last used anyway: kept alive to the end, it took a stack slot
    // the inspector's frame has no room for.
    s.matcher.query = query;
    // The rate limit comes before any parsing: a flood of unparsable queries spends the
    // client's tokens like any other.
    if query && cfg.flags & SCOPE_RATE != 0 && !rate_ok(cfg, scope, &s.rate_key) {
        let mut d = Decision::malformed(true);
        d.reason = reason::DNS_RATE;
        return Some(d);
    }
    if !req.whole || msg_len < HEADER_LEN || req.total_len < msg_len {
        return Some(Decision::malformed(block_malformed));
    }
    // The header and the OPT record are checked where they lie in the scratch: copies on
    // the stack would push the hook and this frame together past 512 bytes.
    let Some(header) = s.msg.first_chunk::<HEADER_LEN>() else {
        return Some(Decision::malformed(block_malformed));
    };
    if check_query_header(header).is_err() {
        return Some(Decision::malformed(block_malformed));
    }

    if !fast::walk(slot, msg_len) {
        s.walk = WalkCtx {
            walker: Walker::new(key, HEADER_LEN as u16),
            key: *key,
            msg_len,
            raw_sum: 0,
            wire_len: 0,
            failed: false,
        };
        // SAFETY: callback signature as bpf_loop expects; it finds its state in the scratch.
        unsafe {
            bpf_loop(
                MAX_WALK_BYTES.div_ceil(CHUNK) as u32,
                walk_bytes as *mut c_void,
                slot_arg(&slot),
                0,
            )
        };
    }
    let walk = &s.walk;
    if walk.failed || walk.wire_len == 0 {
        return Some(Decision::malformed(block_malformed));
    }
    let in_message = walk.walker.in_message;
    let q = HEADER_LEN + usize::from(in_message);
    if q + 4 > msg_len || q + 4 > INSPECT_LEN {
        return Some(Decision::malformed(block_malformed));
    }
    let mut tail = [0u8; 4];
    let Some(bytes) = s.msg.get(q..q + 4) else {
        return Some(Decision::malformed(block_malformed));
    };
    tail.copy_from_slice(bytes);
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    // What follows the question: nothing, or exactly one OPT record.
    let end = q + 4;
    let after = req.total_len - end.min(req.total_len);
    // With fewer than OPT_FIXED_LEN bytes after the question the record is not read.
    let opt_at = if after >= OPT_FIXED_LEN { end } else { 0 };
    let (Some(header), Some(opt)) = (
        s.msg.first_chunk::<HEADER_LEN>(),
        s.msg
            .get(opt_at..)
            .and_then(<[u8]>::first_chunk::<OPT_FIXED_LEN>),
    ) else {
        return Some(Decision::malformed(block_malformed));
    };
    if end > req.total_len || check_additional(header, opt, after).is_err() {
        return Some(Decision::malformed(block_malformed));
    }
    // The raw sum counts by message offset; the header is even, so is the name's start.
    let mut question_sum = walk.raw_sum;
    let mut i = 0;
    while i < 4 {
        let pos = q + i;
        question_sum += if pos % 2 == 0 {
            u32::from(tail[i]) << 8
        } else {
            u32::from(tail[i])
        };
        i += 1;
    }
    let mut d = Decision {
        reason: reason::PASS,
        qtype,
        wire_len: walk.wire_len,
        in_message,
        question_sum,
        list: u16::MAX,
    };

    let labels = walk.walker.labels;
    // Field by field: `value` is only read once `found` is set, and a whole-struct store
    // would zero it through a byte-by-byte `memset` call.
    let wire_len = walk.wire_len;
    let m = &mut s.matcher;
    m.suffix = hash::root(key);
    m.labels = labels;
    m.wire_len = wire_len;
    m.scope = list_scope;
    m.generation = generation as u8;
    m.qtype = qtype;
    m.mode = cfg.mode;
    m.now = 0;
    m.found = false;
    m.expired = false;
    m.best = 0;
    if usize::from(labels) <= fast::LABELS {
        fast::match_suffixes(slot);
    } else {
        // SAFETY: as above.
        unsafe {
            bpf_loop(
                u32::from(labels),
                match_suffix as *mut c_void,
                slot_arg(&slot),
                0,
            )
        };
    }
    let m = &s.matcher;
    if m.found {
        d.list = m.value.list;
    }
    d.reason = match cfg.mode {
        // An `[intel]` alert or tag entry passes (the hook reports it, `intel_flags`).
        MODE_BLOCKLIST if m.found && m.value.intel == 0 => reason::DNS_BLOCKED,
        MODE_ALLOWLIST if !m.found => reason::DNS_NOT_ALLOWED,
        MODE_ALLOWLIST if m.expired => reason::DNS_EXPIRED,
        MODE_ALLOWLIST if m.value.max_entropy_fp != u32::MAX && m.best > 0 => {
            // The labels below the matched suffix: name bytes before its first label.
            let end = s.starts[usize::from(m.best) & LABEL_MASK];
            if entropy_exceeds(slot, end, m.value.max_entropy_fp) {
                reason::DNS_ENTROPY
            } else {
                reason::PASS
            }
        }
        _ => reason::PASS,
    };
    Some(d)
}

/// The `bpf_loop` context: the caller's scratch slot, on its stack (the helper only passes
/// stack pointers). A constant for the whole loop, so it costs the verifier nothing.
#[inline(always)]
fn slot_arg(slot: &u32) -> *mut c_void {
    core::ptr::from_ref(slot).cast_mut().cast()
}

/// Reads the slot back in a callback.
#[inline(always)]
fn slot_of(ctx: *mut c_void) -> u32 {
    // SAFETY: every bpf_loop here passes `slot_arg`, a pointer to a live u32.
    unsafe { *ctx.cast::<u32>() }
}

struct WalkCtx {
    walker: Walker,
    key: HashKey,
    msg_len: usize,
    raw_sum: u32,
    wire_len: u16,
    failed: bool,
}

extern "C" fn walk_bytes(_index: u64, ctx: *mut c_void) -> i64 {
    let Some(s) = DNS_SCRATCH.get_ptr_mut(slot_of(ctx)) else {
        return 1;
    };
    // Several bytes per callback: each bpf_loop iteration is an indirect call, which costs
    // tens of nanoseconds with retpolines; the verifier checks this bounded body once.
    let mut j = 0;
    while j < CHUNK {
        // The scratch pointer is read back (volatile) for every byte, so the walker's state
        // is reloaded from the scratch rather than carried in registers from byte to byte:
        // carried, it spills onto a stack the hooks' frames have nearly filled.
        // SAFETY: per-CPU scratch; `s` is a local holding the pointer.
        let s = unsafe { &mut *core::ptr::read_volatile(&raw const s) };
        if walk_one(s) {
            return 1;
        }
        j += 1;
    }
    0
}

/// Feeds one message byte to the walker (where it asks, pointers followed); true when the
/// walk is over (end or error).
#[inline(always)]
fn walk_one(s: &mut Scratch) -> bool {
    let w = &mut s.walk;
    let at = usize::from(w.walker.at);
    if at >= w.msg_len {
        w.failed = true;
        return true;
    }
    let Some(&byte) = s.msg.get(at) else {
        w.failed = true;
        return true;
    };
    // The logical position; the walker keeps it below 256 (the mask is for the verifier).
    let pos = usize::from(w.walker.pos) & 0xff;
    if w.walker.in_message() {
        w.raw_sum += if at % 2 == 0 {
            u32::from(byte) << 8
        } else {
            u32::from(byte)
        };
    }
    let (stored, step) = w.walker.step(byte, &w.key);
    if !matches!(step, Step::Pointer | Step::Error(_)) {
        s.name[pos] = stored;
        s.raw_name[pos] = byte;
    }
    match step {
        Step::More | Step::Pointer => false,
        Step::Label { index, start, hash } => {
            let i = usize::from(index) & LABEL_MASK;
            s.starts[i] = start;
            s.hashes[i] = [hash.0, hash.1];
            false
        }
        Step::End { wire_len } => {
            w.wire_len = wire_len;
            true
        }
        Step::Error(_) => {
            w.failed = true;
            true
        }
    }
}

struct MatchCtx {
    suffix: (u64, u64),
    labels: u8,
    wire_len: u16,
    scope: u8,
    /// A query (not a name taken from an answer): counted by [`count_intel`].
    query: bool,
    generation: u8,
    qtype: u16,
    mode: u8,
    now: u64,
    found: bool,
    expired: bool,
    /// Index of the first label of the longest matching suffix.
    best: u8,
    value: NameValue,
    /// The keys of the two lookups of a suffix (`lookup_name`), kept here rather than on the
    /// stack under the inspector's frames: the generation's slot in `DNS_NAMES`, and the
    /// suffix's `NameKey` words.
    table: u32,
    key: [u64; 3],
    /// The mask of the generation's name filter, read with the first suffix (0: none); the
    /// entry of the filter word being read (the key of its lookup) and the suffix's bits,
    /// kept here rather than on the stack under the inspector's frames.
    filter_mask: u32,
    filter_index: u32,
    filter_bits: u64,
}

/// Entry `index` of `DNS_FILTER` (a mask or a filter word), `None` past its end. The key is
/// read where it is: an index passed by value would take a stack slot of its own.
#[inline(always)]
fn filter_word(index: &u32) -> Option<u64> {
    use aya_ebpf::helpers::generated::bpf_map_lookup_elem;
    let map = core::ptr::from_ref(&DNS_FILTER).cast_mut().cast::<c_void>();
    // SAFETY: an array map and a key of its size (`u32`); the result is null or a `u64`.
    let v = unsafe { bpf_map_lookup_elem(map, core::ptr::from_ref(index).cast()) };
    // SAFETY: null, or a word of the map.
    unsafe { v.cast::<u64>().as_ref() }.copied()
}

/// The entry of `key` (a `NameKey`'s words) in the name table of `DNS_NAMES` slot `table`;
/// `None` when there is none, or no table yet (before the generation's first install).
///
/// # Safety
/// The entry is read in place: copy what is needed at once.
#[inline(always)]
unsafe fn lookup_name(table: &u32, key: &[u64; 3]) -> Option<&'static NameValue> {
    use aya_ebpf::helpers::generated::bpf_map_lookup_elem;
    let outer = core::ptr::from_ref(&DNS_NAMES).cast_mut().cast::<c_void>();
    // SAFETY: a map and a key of its size (`u32`); the result is a map or null.
    let inner = unsafe { bpf_map_lookup_elem(outer, core::ptr::from_ref(table).cast()) };
    if inner.is_null() {
        return None;
    }
    // SAFETY: the generation's name table and a key with the bytes of a `NameKey`.
    let v = unsafe { bpf_map_lookup_elem(inner, core::ptr::from_ref(key).cast()) };
    // SAFETY: null, or an entry of the table, a `NameValue`.
    unsafe { v.cast::<NameValue>().as_ref() }
}

/// Visits suffixes from the shortest (the last label) to the whole name; a later (longer)
/// hit replaces an earlier one, so the most specific entry wins.
extern "C" fn match_suffix(index: u64, ctx: *mut c_void) -> i64 {
    let Some(s) = DNS_SCRATCH.get_ptr_mut(slot_of(ctx)) else {
        return 1;
    };
    // SAFETY: per-CPU scratch.
    match_one(unsafe { &mut *s }, index);
    0
}

/// Looks up the suffix that starts `index + 1` labels from the end.
#[inline(always)]
fn match_one(s: &mut Scratch, index: u64) {
    let m = &mut s.matcher;
    let label = (u64::from(m.labels).wrapping_sub(index + 1) as usize) & LABEL_MASK;
    let h = s.hashes[label];
    m.suffix = hash::extend(m.suffix, (h[0], h[1]));
    let kind = if label == 0 { KIND_APEX } else { KIND_BELOW };
    m.table = u32::from(m.generation);
    // Most suffixes are on no list: the generation's filter says so without a lookup. Its
    // mask is read with the first suffix; 0 (never written), or a word that cannot be
    // read, filters nothing.
    if index == 0 {
        m.filter_index = m.table;
        m.filter_mask = filter_word(&m.filter_index).unwrap_or(0) as u32;
    }
    if m.filter_mask != 0 {
        let (word, bits) = NameFilter::slot(m.suffix.0, m.scope, kind);
        m.filter_index = NameFilter::index(m.table, word, m.filter_mask);
        m.filter_bits = bits;
        if let Some(w) = filter_word(&m.filter_index) {
            if w & m.filter_bits != m.filter_bits {
                return;
            }
        }
    }
    m.key = NameKey::key_words(
        m.suffix.0,
        m.suffix.1,
        m.wire_len.wrapping_sub(u16::from(s.starts[label])),
        m.scope,
        kind,
        m.generation,
    );
    // SAFETY: the value is copied out at once.
    if let Some(v) = unsafe { lookup_name(&m.table, &m.key) } {
        if v.applies_to(m.qtype) {
            // The clock is read once per query, and only when an entry can expire.
            if v.expires_boot_ns != 0 && m.now == 0 {
                // SAFETY: a helper with no preconditions.
                m.now = unsafe { bpf_ktime_get_boot_ns() };
            }
            let expired = v.expires_boot_ns != 0 && m.now > v.expires_boot_ns;
            // An expired blocklist entry no longer blocks; an expired allowlist entry is
            // reported as such if it is the most specific match.
            // Under a blocklist a blocking entry found on a shorter suffix stays: an
            // `[intel]` alert or tag entry below it does not lift the block.
            let lifts_block =
                m.mode == MODE_BLOCKLIST && m.found && m.value.intel == 0 && v.intel != 0;
            if !(expired && m.mode == MODE_BLOCKLIST) && !lifts_block {
                m.found = true;
                m.expired = expired;
                m.best = label as u8;
                copy_value(v, &mut m.value);
            }
        }
    }
}

/// Copies a name entry by words: a struct copy becomes a byte-by-byte `memmove` call.
#[inline(always)]
fn copy_value(from: &NameValue, to: &mut NameValue) {
    const WORDS: usize = size_of::<NameValue>() / 8;
    const _: () = assert!(size_of::<NameValue>() % 8 == 0 && align_of::<NameValue>() == 8);
    let from = core::ptr::from_ref(from).cast::<u64>();
    let to = core::ptr::from_mut(to).cast::<u64>();
    let mut i = 0;
    while i < WORDS {
        // SAFETY: word `i` of two aligned `NameValue`s. Volatile, so the words are not
        // merged back into a `memmove` call.
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i))) };
        i += 1;
    }
}

struct EntropyCtx {
    /// Bytes of the name to count (the labels below the matched suffix).
    end: u8,
    next_len: u8,
    n: u64,
    sum: u64,
}

#[inline(always)]
fn entropy_exceeds(slot: u32, end: u8, bound_fp: u32) -> bool {
    let Some(s) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: per-CPU scratch.
    let s = unsafe { &mut *s };
    // Word stores: a `[0; 256]` assignment would be built on the 512-byte stack first.
    let words = s.counts.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < 32 {
        // SAFETY: 32 aligned words inside `counts` (the struct is 8-aligned, `counts` at an
        // 8-byte offset). Volatile: plain stores are merged into a byte-by-byte `memset` call.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    // Field by field, for the same reason.
    let e = &mut s.entropy;
    e.end = end;
    e.next_len = 0;
    e.n = 0;
    e.sum = 0;
    // SAFETY: callback signature as bpf_loop expects; it finds its state in the scratch.
    unsafe {
        bpf_loop(
            u32::from(end).div_ceil(CHUNK as u32),
            count_bytes as *mut c_void,
            slot_arg(&slot),
            0,
        )
    };
    let e = &s.entropy;
    let n = (e.n as usize).min(TABLE_LEN - 1);
    exceeds(NLOGN[n], e.sum, bound_fp)
}

extern "C" fn count_bytes(index: u64, ctx: *mut c_void) -> i64 {
    let Some(s) = DNS_SCRATCH.get_ptr_mut(slot_of(ctx)) else {
        return 1;
    };
    // SAFETY: per-CPU scratch.
    let s = unsafe { &mut *s };
    // CHUNK bytes per callback, as in `walk_bytes`.
    let first = (index as usize).wrapping_mul(CHUNK);
    let mut j = 0;
    while j < CHUNK {
        let pos = first + j;
        if pos >= usize::from(s.entropy.end) {
            return 1;
        }
        count_one(s, pos & 0xff);
        j += 1;
    }
    0
}

#[inline(always)]
fn count_one(s: &mut Scratch, pos: usize) {
    let e = &mut s.entropy;
    // As sent: letter case is information a tunnel can use. Length bytes are the same in
    // both copies.
    let byte = s.raw_name[pos];
    if pos == usize::from(e.next_len) {
        // A length byte: not part of any label.
        e.next_len = e.next_len.wrapping_add(byte).wrapping_add(1);
        return;
    }
    let c = s.counts[usize::from(byte)];
    let c_idx = usize::from(c).min(TABLE_LEN - 2);
    e.sum += NLOGN[c_idx + 1] - NLOGN[c_idx];
    s.counts[usize::from(byte)] = c.saturating_add(1);
    e.n += 1;
}

#[inline(always)]
fn rate_ok(cfg: &ScopeConfig, scope: u8, rate_key: &[u8; 16]) -> bool {
    let key = ClientKey {
        addr: *rate_key,
        scope: u32::from(scope),
    };
    // SAFETY: a helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(tat) = DNS_RATE.get_ptr_mut(&key) {
        // SAFETY: pointer from a successful lookup.
        match rate_conforms(
            unsafe { *tat },
            now,
            cfg.rate_interval_ns,
            cfg.rate_tolerance_ns,
        ) {
            Some(next) => {
                unsafe { *tat = next };
                true
            }
            None => false,
        }
    } else {
        let _ = DNS_RATE.insert(&key, &(now + cfg.rate_interval_ns), 0);
        true
    }
}
