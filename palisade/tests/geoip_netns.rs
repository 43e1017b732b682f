//! End to end: a drop rule on `@country:CN` with the real daemon, and a refresh under load.
//!
//! The peer namespace has two addresses of each family; a DB-IP lite file written by the test
//! places one in CN and the other in the US. Pings from the CN addresses are dropped in XDP,
//! those from the US ones answered. Then the file is rewritten every 300 ms (each version
//! changes the CN set, keeping both peers where they are) while `[geoip] refresh = 1` swaps
//! the sets: a ping flood from each address sees no wrong verdict during the swaps.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use control::GuardedHost;
use support::netns::{NetnsPair, exec_in, ping_counts};

/// `(sent, received)` of `ping -c count -i interval -I from to`.
fn ping(ns: &str, from: &str, to: &str, count: u32, interval: &str) -> (u32, u32) {
    let count = count.to_string();
    ping_counts(
        ns,
        &[
            "-n", "-q", "-c", &count, "-i", interval, "-W", "1", "-I", from, to,
        ],
    )
}

/// The range `start,end,country` line of one address.
fn one(addr: &str, cc: &str) -> String {
    format!("{addr},{addr},{cc}\n")
}

#[test]
fn a_country_rule_drops_one_peer_address_and_not_the_other_through_refreshes() {
    let pair = NetnsPair::new();
    let v4_us = format!("{}.3", pair.v4_b.strip_suffix(".2").expect("x.y.z.2"));
    let v6_us = format!("{}::3", pair.v6_b.strip_suffix("::2").expect("prefix::2"));
    for args in [
        vec!["addr", "add", &format!("{v4_us}/24"), "dev", &pair.if_b],
        vec![
            "-6",
            "addr",
            "add",
            &format!("{v6_us}/64"),
            "dev",
            &pair.if_b,
            "nodad",
        ],
    ] {
        let out = exec_in(&pair.ns_b, "ip", &args);
        assert!(out.status.success(), "{out:?}");
    }
    let base =
        one(&pair.v4_b, "CN") + &one(&v4_us, "US") + &one(&pair.v6_b, "CN") + &one(&v6_us, "US");
    let other = format!("{base}192.0.2.0,192.0.2.255,CN\n");

    let mut host = GuardedHost::new("geoip-netns", "", &pair.ns_a, &pair.if_a);
    let db = host.scratch.file("dbip.csv");
    std::fs::write(&db, &base).unwrap();
    let policy = format!(
        "[geoip]\nformat = \"dbip\"\nfiles = [\"{}\"]\nrefresh = 1\n\n\
         [[firewall.rule]]\nname = \"from-cn\"\naction = \"drop\"\nsrc = \"@country:cn\"\n",
        db.display()
    );
    std::fs::write(&host.policy, &policy).unwrap();
    host.start();

    for (from, to, want) in [
        (pair.v4_b.as_str(), pair.v4_a.as_str(), 0),
        (v4_us.as_str(), pair.v4_a.as_str(), 3),
        (pair.v6_b.as_str(), pair.v6_a.as_str(), 0),
        (v6_us.as_str(), pair.v6_a.as_str(), 3),
    ] {
        let (sent, got) = ping(&pair.ns_b, from, to, 3, "0.2");
        assert_eq!((sent, got), (3, want), "ping from {from}");
    }

    // Rewrite the database every 300 ms while both peers ping at 100 a second.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let db = db.clone();
        thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let text = if n.is_multiple_of(2) { &base } else { &other };
                // Written beside and renamed, as a database update is installed.
                let tmp = db.with_extension("tmp");
                std::fs::write(&tmp, text).unwrap();
                std::fs::rename(&tmp, &db).unwrap();
                thread::sleep(Duration::from_millis(300));
            }
            n
        })
    };
    // Both peers ping in rounds of 200 at 100 a second until the daemon has swapped the sets
    // at least twice during the flood (a loaded machine may refresh less often than once a
    // second), for at most 8 rounds.
    let swaps = |host: &GuardedHost| {
        host.daemon()
            .stderr_now()
            .iter()
            .filter(|l| l.contains("country sets refreshed"))
            .count()
    };
    let before = swaps(&host);
    let (mut us, mut cn) = ((0, 0), (0, 0));
    for _ in 0..8 {
        let cn_round = {
            let (ns, from, to) = (pair.ns_b.clone(), pair.v4_b.clone(), pair.v4_a.clone());
            thread::spawn(move || ping(&ns, &from, &to, 200, "0.01"))
        };
        let us_round = ping(&pair.ns_b, &v4_us, &pair.v4_a, 200, "0.01");
        let cn_round = cn_round.join().unwrap();
        us = (us.0 + us_round.0, us.1 + us_round.1);
        cn = (cn.0 + cn_round.0, cn.1 + cn_round.1);
        if swaps(&host) - before >= 2 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    let swapped = swaps(&host) - before;
    eprintln!("{writes} database writes, {swapped} swaps; US {us:?}, CN {cn:?}");
    assert!(
        swapped >= 2,
        "the sets were swapped during the flood: {:?}",
        host.daemon().stderr_now()
    );
    assert_eq!(
        us.0, us.1,
        "no packet of the US address was dropped: {us:?}"
    );
    assert!(us.0 >= 200, "{us:?}");
    assert_eq!(cn.1, 0, "no packet of the CN address passed: {cn:?}");
    assert_eq!(cn.0, us.0, "both peers sent as many: {cn:?} {us:?}");
}
