//! Tuple-space search over the live generation (see `docs/design/firewall.md`).
//!
//! The search is a global BPF function ([`palisade_fw_search`]) with a plain loop over the
//! tuples: the verifier checks it once, on its own, for any packet and tuple count, so its
//! iterations do not multiply the states of the program around it. (It was a `bpf_loop`
//! before: one callback call per tuple, and on kernels that return through a return thunk,
//! every call and return is dear.)

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_coarse_ns,
    maps::{Array, lpm_trie::Key},
};
use palisade_common::{
    firewall::{
        COUNTRY_UNKNOWN, FlowKey, KeyFilter, MAX_RULES, MAX_TUPLES, PORT_SPACE, PolicyHeader,
        SET_HOSTS, SET_KEY_PREFIX_BITS, SET_OVERLOAD, SET_PREFIXES, SET_PREFIXES_SHORT, SetKey,
        TUPLE_DST_NOT, TUPLE_DST_SET, TUPLE_SRC_NOT, TUPLE_SRC_SET, fill_flow_key, link_applies,
        port_word, prefix_granule_hash, set_kind_slot, tuple_applies,
    },
    packet::{FRAG_LATER, Packet},
};

use crate::maps::{
    DNS_SCRATCH, FW_DPORT_CLASS, FW_RULE_FILTER, FW_RULES, FW_SEARCH, FW_SET_FILTER, FW_SET_HOSTS,
    FW_SET_KIND, FW_SETS, FW_SPORT_CLASS, FW_TUPLES, SLOT_XDP,
};

/// The search's map keys, in a per-CPU map: the search's frame stacks on the firewall's,
/// which leaves it little room.
pub struct SearchKeys {
    flow: FlowKey,
    set: Key<SetKey>,
}

/// No rule matched (yet): above every evaluation index, below [`STOPPED`].
const NONE: u32 = STOPPED - 1;

/// The evaluation index of the first rule that matches `p` (the packet in the XDP handoff
/// slot), if any.
#[inline(always)]
pub fn first_match(generation: u32, header: &PolicyHeader, p: &Packet) -> Option<u32> {
    if header.tuple_count == 0 {
        // No rules: nothing to search (a policy of only a default action, or DNS only).
        return None;
    }
    // The ports' words: their classes, and the tuples that may hold a rule for them (a
    // word that cannot be read lets every tuple through; it cannot happen).
    let all = port_word::new(0, port_word::ALL);
    let (sport, dport) = if p.frag == FRAG_LATER {
        (all, all)
    } else {
        let base = generation * PORT_SPACE;
        (
            FW_SPORT_CLASS
                .get(base + u32::from(p.sport))
                .copied()
                .unwrap_or(all),
            FW_DPORT_CLASS
                .get(base + u32::from(p.dport))
                .copied()
                .unwrap_or(all),
        )
    };
    // The search reads the packet from the per-CPU handoff slot, where `p` is (a global
    // function takes scalars only). It goes a chunk of tuples per call, so the verifier walks
    // the loop of one chunk, not of all `MAX_TUPLES`.
    let classes = u32::from(port_word::class(sport)) << 16 | u32::from(port_word::class(dport));
    let tuples = port_word::tuples(sport) & port_word::tuples(dport);
    let count = header.tuple_count.min(MAX_TUPLES);
    let mut best = NONE;
    let mut from = 0;
    while from < count {
        let span = generation << 31 | count << 16 | from;
        let r = palisade_fw_search(span, classes, best, chunk_tuples(tuples, from));
        best = r & !STOPPED;
        if r & STOPPED != 0 {
            break;
        }
        from += CHUNK;
    }
    if best == NONE { None } else { Some(best) }
}

/// The bits of the tuples `from..from + CHUNK` in `tuples` (the tuples the packet's ports
/// may match, [`port_word`]), tuple `from` in bit 0; set for the tuples past those the
/// words know. Worked out here so that the search tests a bit by its loop counter alone,
/// which keeps the verifier's walk of its loop as it was.
#[inline(always)]
fn chunk_tuples(tuples: u64, from: u32) -> u32 {
    let wide = tuples | !port_word::ALL;
    match from {
        0 => wide as u32,
        CHUNK => (wide >> CHUNK) as u32,
        _ => u32::MAX,
    }
}

const _: () = assert!(CHUNK == 32 && port_word::TUPLES <= 2 * CHUNK);

/// Tuples searched per call of [`palisade_fw_search`].
const CHUNK: u32 = 32;
/// Set in what [`palisade_fw_search`] returns when no later tuple can beat its result.
const STOPPED: u32 = 1 << 31;

const _: () = assert!(MAX_TUPLES % CHUNK == 0 && MAX_RULES < NONE);

/// Searches tuples `from..from + CHUNK` (and below `count`) of `generation` (`span`: the
/// generation in bit 31, `count` from bit 16, `from` in the low bits) for the packet in
/// the XDP handoff slot: the best (lowest) evaluation index among their matching rules and
/// `best`, the best found so far ([`NONE`] for none), with [`STOPPED`] set when the
/// search can stop (tuples are sorted by their best rule, so once a match beats a tuple's,
/// none that follows can). `classes` holds the packet's source port class in its high half,
/// the destination's in its low half; `chunk_tuples`, the tuples of the chunk its ports may
/// match ([`chunk_tuples`]).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn palisade_fw_search(span: u32, classes: u32, best: u32, chunk_tuples: u32) -> u32 {
    let (Some(s), Some(keys)) = (DNS_SCRATCH.get_ptr(SLOT_XDP), FW_SEARCH.get_ptr_mut(0)) else {
        return best | STOPPED;
    };
    // SAFETY: per-CPU slots: the packet written by the caller, the keys this search's own.
    let (p, link, keys) = unsafe { (&(*s).packet, &(*s).link, &mut *keys) };
    let generation = span >> 31;
    let count = (span >> 16 & 0x7fff).min(MAX_TUPLES);
    let from = span & 0xffff;
    let mut best = best & !STOPPED;
    // The mask of the generation's rule filter (0: none, every key is looked up).
    let filter_mask = FW_RULE_FILTER.get(generation).copied().unwrap_or(0) as u32;
    // The generation's rule table (none before its first install: nothing matches).
    let Some(rules) = FW_RULES.get(generation) else {
        return best | STOPPED;
    };
    let mut j = 0;
    while j < CHUNK {
        let i = from + j;
        if i >= count {
            break;
        }
        let rest = chunk_tuples >> j;
        if rest == 0 {
            // No tuple left in the chunk may match.
            break;
        }
        j += 1;
        if rest & 1 == 0 {
            // Its key cannot be in the table.
            continue;
        }
        let Some(t) = FW_TUPLES.get(generation * MAX_TUPLES + i) else {
            return best | STOPPED;
        };
        if t.best_rule >= best {
            return best | STOPPED;
        }
        if tuple_applies(t, p)
            && (t.link == 0 || link_applies(t, link))
            && (t.flags & TUPLE_SRC_SET == 0
                || in_set(&mut keys.set, t.src_set, p.family, &p.src)
                    == (t.flags & TUPLE_SRC_NOT == 0))
            && (t.flags & TUPLE_DST_SET == 0
                || in_set(&mut keys.set, t.dst_set, p.family, &p.dst)
                    == (t.flags & TUPLE_DST_NOT == 0))
        {
            if t.keyless != 0 {
                // One key for every packet, and its rule is the tuple's first: no lookup.
                // (`best_rule < best`, tested above.)
                best = t.best_rule;
                continue;
            }
            fill_flow_key(&mut keys.flow, generation << 16 | i, t, p, classes);
            // The filter first: a key it has never seen is not in the table. (A missing
            // filter lets every lookup through.)
            let maybe = filter_mask == 0
                || key_may_hold(
                    &FW_RULE_FILTER,
                    generation,
                    filter_mask,
                    keys.flow.filter_hash(),
                );
            // SAFETY: the value is copied out at once; entries are never mutated in place.
            if maybe
                && let Some(r) = unsafe { rules.get(&keys.flow) }
                && r.rule < best
            {
                best = r.rule;
            }
        }
    }
    best
}

/// Whether `addr` is a member of set `set`: an exact lookup among its single addresses,
/// then, if it has any, a longest-prefix lookup among its prefixes, then, for the overload
/// set of `[conntrack]` only, a lookup among its dynamic members.
#[inline(always)]
fn in_set(key: &mut Key<SetKey>, set: u32, family: u8, addr: &[u8; 16]) -> bool {
    // A set that was never written (cannot happen for a live tuple) counts as holding both.
    let kind = FW_SET_KIND
        .get(set_kind_slot(set))
        .copied()
        .unwrap_or(SET_HOSTS | SET_PREFIXES | SET_PREFIXES_SHORT);
    put_set_key(key, set, family, addr);
    // The tables of the set's generation (its id's top bit).
    if kind & SET_HOSTS != 0
        && let Some(hosts) = FW_SET_HOSTS.get(set >> 31)
        // SAFETY: the value is only tested for presence.
        && unsafe { hosts.get(&key.data) }.is_some()
    {
        return true;
    }
    if kind & SET_PREFIXES != 0
        && trie_may_hold(kind, set, family, addr)
        && let Some(trie) = FW_SETS.get(set >> 31)
        && trie.get(&*key).is_some()
    {
        return true;
    }
    // SAFETY: a helper with no preconditions.
    kind & SET_OVERLOAD != 0
        && crate::ct::overload::member(&mut key.data, unsafe { bpf_ktime_get_coarse_ns() })
}

/// Writes the key of `addr` (of `family`) in set `set` into `key`, as `SetKey::new` makes
/// it, a 32-bit word at a time. Assigned as a value, the key was stored byte by byte, and its
/// three bytes of padding were zeroed by a call of `memset`, a BPF function of its own, on
/// every set lookup (seen in samples of the JITed search).
#[inline(always)]
fn put_set_key(key: &mut Key<SetKey>, set: u32, family: u8, addr: &[u8; 16]) {
    key.prefix_len = SET_KEY_PREFIX_BITS + 128;
    let to = (&raw mut key.data).cast::<u32>();
    let from = addr.as_ptr().cast::<u16>();
    // SAFETY: `SetKey` is six 32-bit words (set, family and padding, the address), 4-aligned
    // in the search's per-CPU keys (asserted below), where every caller's key is. The
    // address is read by 16-bit words, its alignment in the packet (asserted with
    // `fill_flow_key`'s). Volatile, so the words are not merged back into a byte copy.
    unsafe {
        core::ptr::write_volatile(to, u32::from_ne_bytes(set.to_be_bytes()));
        core::ptr::write_volatile(to.add(1), u32::from_ne_bytes([family, 0, 0, 0]));
        let mut i = 0;
        while i < 4 {
            let lo = from.add(2 * i).read().to_ne_bytes();
            let hi = from.add(2 * i + 1).read().to_ne_bytes();
            core::ptr::write_volatile(
                to.add(2 + i),
                u32::from_ne_bytes([lo[0], lo[1], hi[0], hi[1]]),
            );
            i += 1;
        }
    }
}

// The key's words are 4-aligned: `Key` is packed (align 1), so it is the key's place in the
// per-CPU value (8-aligned, as every map value) that aligns them.
const _: () = assert!(
    size_of::<SetKey>() == 24
        && core::mem::offset_of!(SetKey, family) == 4
        && core::mem::offset_of!(SetKey, addr) == 8
        && core::mem::offset_of!(Key<SetKey>, data) == 4
        && core::mem::offset_of!(SearchKeys, set) % 4 == 0
);

/// Whether set `set`'s trie may hold a prefix covering `addr`: always for a set with prefixes
/// shorter than the granule ([`SET_PREFIXES_SHORT`]), else when the set filter has the
/// address's granule (its /24 or /64; a filter that cannot be read lets the walk through).
#[inline(always)]
fn trie_may_hold(kind: u8, set: u32, family: u8, addr: &[u8; 16]) -> bool {
    if kind & SET_PREFIXES_SHORT != 0 {
        return true;
    }
    let generation = set >> 31;
    let mask = FW_SET_FILTER.get(generation).copied().unwrap_or(0) as u32;
    mask == 0
        || key_may_hold(
            &FW_SET_FILTER,
            generation,
            mask,
            prefix_granule_hash(set, family, addr),
        )
}

/// Whether the key with hash `h` may be in generation `generation`'s words of the filter
/// map `filter`, whose mask is `mask` (a word that cannot be read lets the key through).
#[inline(always)]
fn key_may_hold(filter: &Array<u64>, generation: u32, mask: u32, h: u64) -> bool {
    let (word, bits) = KeyFilter::slot(h);
    filter
        .get(KeyFilter::index(generation, word, mask))
        .is_none_or(|w| *w & bits == bits)
}

/// The country index of `addr` in the country map (set `set`, generation bit included) of a
/// `per = "country"` rate limit: its value in the set's host hash, else in its prefix trie
/// (the longest prefix holding it), else [`COUNTRY_UNKNOWN`]. Uses the search's per-CPU key,
/// the search being over by then.
#[inline(always)]
pub fn country_of(set: u32, family: u8, addr: &[u8; 16]) -> u8 {
    let Some(keys) = FW_SEARCH.get_ptr_mut(0) else {
        return COUNTRY_UNKNOWN;
    };
    // SAFETY: this CPU's slot, not in use outside the search.
    let key = unsafe { &mut (*keys).set };
    let kind = FW_SET_KIND
        .get(set_kind_slot(set))
        .copied()
        .unwrap_or(SET_HOSTS | SET_PREFIXES | SET_PREFIXES_SHORT);
    put_set_key(key, set, family, addr);
    if kind & SET_HOSTS != 0
        && let Some(hosts) = FW_SET_HOSTS.get(set >> 31)
        // SAFETY: the value is copied out at once.
        && let Some(c) = unsafe { hosts.get(&key.data) }
    {
        return *c;
    }
    if kind & SET_PREFIXES != 0
        && trie_may_hold(kind, set, family, addr)
        && let Some(trie) = FW_SETS.get(set >> 31)
        && let Some(c) = trie.get(&*key)
    {
        return *c;
    }
    COUNTRY_UNKNOWN
}
