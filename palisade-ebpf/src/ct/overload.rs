//! The overload set (`[conntrack] overload_set`): an address that goes over a per-source
//! limit joins it for `overload_ttl`, and rules naming the set match it like a static
//! member. Members live in `CT_OVERLOAD`, keyed by address alone (set id 0), so they outlive
//! policy reloads; the rules stage consults the map only for the set marked `SET_OVERLOAD`.

use palisade_common::{
    conntrack::{CS_OVERLOAD_ADDED, CS_OVERLOAD_FULL, OverloadEntry},
    firewall::SetKey,
    packet::Packet,
};

use crate::maps::{CT_OVERLOAD, CT_STATS, bump};

/// Adds the source of `p`, which went over `limit` (whose value is `value`), to the overload
/// set until `t + ttl`. A live member keeps its expiry: the time in the set counts from
/// when the address first went over, and a flood of refused flows costs a lookup each, not
/// a map update each.
///
/// Not inlined: its key and entry get their own frame, not the tracker's.
#[inline(never)]
pub fn add(p: &Packet, limit: u8, value: u32, ttl: u64, t: u64) {
    let key = SetKey::new(0, p.family, p.src);
    // SAFETY: the value is copied out at once.
    if let Some(e) = unsafe { CT_OVERLOAD.get(&key) }
        && e.live(t)
    {
        return;
    }
    let entry = OverloadEntry {
        expires_ns: t.saturating_add(ttl),
        added_ns: t,
        limit_value: value,
        limit,
        _pad: [0; 3],
    };
    if CT_OVERLOAD.insert(&key, &entry, 0).is_ok() {
        bump(&CT_STATS, CS_OVERLOAD_ADDED);
    } else {
        bump(&CT_STATS, CS_OVERLOAD_FULL);
    }
}

/// Whether `key` (whose set id this overwrites with 0) is a member of the overload set at
/// time `t`. An expired member no longer matches, whether or not a sweep removed it yet.
#[inline(always)]
pub fn member(key: &mut SetKey, t: u64) -> bool {
    key.set = [0; 4];
    // SAFETY: the value is copied out at once.
    unsafe { CT_OVERLOAD.get(key) }.is_some_and(|e| e.live(t))
}
