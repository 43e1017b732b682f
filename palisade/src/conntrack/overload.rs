//! The overload set of `[conntrack]` as operators see it: `palisade ct overload` lists the
//! addresses the per-source limits put there (with the time they have left and the limit
//! they went over), `palisade ct overload flush` removes them. Members live in the kernel map
//! `CT_OVERLOAD`; the sweep removes expired ones and a flush is one sweep run, whatever the
//! number of members.

use std::{fmt::Write as _, net::IpAddr};

use anyhow::{Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use palisade_common::{
    conntrack::{CtCensus, OVER_LIMIT_NAMES, OverloadEntry, SWEEP_OVERLOAD_FLUSH, SweepRequest},
    firewall::SetKey,
    packet::FAMILY_V4,
};
use serde::{Deserialize, Serialize};

use super::filter::FlowFilter;
use crate::{datapath::Datapath, maps::map};

/// The kernel map of dynamic members.
pub const MAP: &str = "CT_OVERLOAD";

/// One address in the overload set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub addr: IpAddr,
    /// Seconds until it leaves the set (rounded up).
    pub remaining_s: u64,
    /// Seconds since it joined.
    pub age_s: u64,
    /// The limit it went over: `max_per_source` or `new_per_source`.
    pub limit: String,
    /// That limit's value when it went over.
    pub limit_value: u32,
}

/// `palisade ct overload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverloadList {
    /// The set `[conntrack] overload_set` names in the running policy, if any.
    pub set: Option<String>,
    /// Its `overload_ttl`.
    pub ttl_s: u64,
    /// Live members, the longest remaining first.
    pub members: Vec<Member>,
}

/// `palisade ct overload flush`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverloadFlushed {
    /// Members removed.
    pub removed: u64,
    /// Members left.
    pub remaining: u64,
}

fn addr_of(family: u8, b: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([b[12], b[13], b[14], b[15]])
    } else {
        IpAddr::from(*b)
    }
}

/// The sweep request of an address filter (`None`: every member).
fn request(addr: Option<&str>, op: u32) -> Result<SweepRequest> {
    FlowFilter {
        addr: addr.map(str::to_owned),
        ..FlowFilter::default()
    }
    .request(op)
    .map_err(|e| anyhow!(e))
}

/// The live members (expiry after `now_ns`, the tracker's clock) that `addr` (an address or
/// CIDR block, `None` for all) takes, the longest remaining first. The filter is the one a
/// flush applies in the kernel.
///
/// # Errors
/// When the filter is invalid or the map cannot be read.
pub fn members(ebpf: &Ebpf, addr: Option<&str>, now_ns: u64) -> Result<Vec<Member>> {
    let req = request(addr, SWEEP_OVERLOAD_FLUSH)?;
    let m: HashMap<&MapData, SetKey, OverloadEntry> = HashMap::try_from(map(ebpf, MAP)?)?;
    let mut out = Vec::new();
    for item in m.iter() {
        // An entry deleted while the walk runs ends that key's read; the rest go on.
        let Ok((k, e)) = item else { continue };
        if !e.live(now_ns) || !req.matches_member(k.family, &k.addr) {
            continue;
        }
        out.push(Member {
            addr: addr_of(k.family, &k.addr),
            remaining_s: (e.expires_ns - now_ns).div_ceil(1_000_000_000),
            age_s: now_ns.saturating_sub(e.added_ns) / 1_000_000_000,
            limit: OVER_LIMIT_NAMES
                .get(usize::from(e.limit))
                .copied()
                .unwrap_or("unknown")
                .to_owned(),
            limit_value: e.limit_value,
        });
    }
    out.sort_by(|a, b| b.remaining_s.cmp(&a.remaining_s).then(a.addr.cmp(&b.addr)));
    Ok(out)
}

/// Removes the members `addr` takes (all with `None`) in one run of the kernel sweep, which
/// also removes expired ones. Returns the counts and the census the sweep wrote.
///
/// # Errors
/// When the filter is invalid or the sweep fails.
pub fn flush(dp: &Datapath, addr: Option<&str>) -> Result<(OverloadFlushed, CtCensus)> {
    let req = request(addr, SWEEP_OVERLOAD_FLUSH)?;
    let before = super::census(&dp.ebpf)?;
    let after = dp.sweep(&req)?;
    Ok((
        OverloadFlushed {
            removed: after
                .overload_flushed
                .saturating_sub(before.overload_flushed),
            remaining: after.overload_members,
        },
        after,
    ))
}

/// The list as a table.
#[must_use]
pub fn print_list(l: &OverloadList) -> String {
    let mut out = String::new();
    match &l.set {
        Some(s) => {
            let _ = writeln!(out, "overload set @{s} (members stay {}s)", l.ttl_s);
        }
        None => {
            let _ = writeln!(out, "the running policy names no overload set");
        }
    }
    let w = l
        .members
        .iter()
        .map(|m| m.addr.to_string().len())
        .max()
        .unwrap_or(0)
        .max("ADDRESS".len());
    let _ = writeln!(
        out,
        "{:<w$}  {:>9}  {:>9}  LIMIT",
        "ADDRESS", "REMAINING", "AGE"
    );
    for m in &l.members {
        let _ = writeln!(
            out,
            "{:<w$}  {:>9}  {:>9}  {} {}",
            m.addr.to_string(),
            format!("{}s", m.remaining_s),
            format!("{}s", m.age_s),
            m.limit,
            m.limit_value
        );
    }
    let n = l.members.len();
    let _ = writeln!(out, "{n} member{}", if n == 1 { "" } else { "s" });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_names_the_set_each_member_and_its_limit() {
        let l = OverloadList {
            set: Some("flooders".into()),
            ttl_s: 600,
            members: vec![Member {
                addr: "203.0.113.9".parse().unwrap(),
                remaining_s: 590,
                age_s: 10,
                limit: "new_per_source".into(),
                limit_value: 20,
            }],
        };
        let text = print_list(&l);
        assert!(
            text.starts_with("overload set @flooders (members stay 600s)\n"),
            "{text}"
        );
        assert!(
            text.contains("203.0.113.9       590s        10s  new_per_source 20\n"),
            "{text}"
        );
        assert!(text.ends_with("1 member\n"), "{text}");
        let none = print_list(&OverloadList::default());
        assert!(none.starts_with("the running policy names no overload set\n"));
        assert!(none.ends_with("0 members\n"));
    }

    #[test]
    fn filters_are_checked() {
        assert!(request(Some("10.0.0.0/8"), SWEEP_OVERLOAD_FLUSH).is_ok());
        let e = request(Some("10.0.0.1/8"), SWEEP_OVERLOAD_FLUSH).unwrap_err();
        assert!(e.to_string().starts_with("--addr"), "{e}");
        let r = request(Some("10.1.0.0/16"), SWEEP_OVERLOAD_FLUSH).unwrap();
        let v4 = |a: [u8; 4]| {
            let mut b = [0u8; 16];
            b[10] = 0xff;
            b[11] = 0xff;
            b[12..].copy_from_slice(&a);
            b
        };
        assert!(r.matches_member(FAMILY_V4, &v4([10, 1, 2, 3])));
        assert!(!r.matches_member(FAMILY_V4, &v4([10, 2, 2, 3])));
        assert!(!r.matches_member(palisade_common::packet::FAMILY_V6, &v4([10, 1, 2, 3])));
        let all = request(None, SWEEP_OVERLOAD_FLUSH).unwrap();
        assert!(all.matches_member(FAMILY_V4, &v4([192, 0, 2, 1])));
    }
}
