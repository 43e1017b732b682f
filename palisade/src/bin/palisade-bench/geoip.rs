//! The country-set suite: loading a generated country database of the real GeoLite2's size
//! (400k IPv4 and 500k IPv6 networks, in both formats) for one large country, then the cost
//! of a rule on that country's set (about 10k prefixes) in `BPF_PROG_TEST_RUN`, a hit and a
//! miss of each family, against the empty program (the floor), the firewall with no rules
//! and the same rule on a one-entry set, measured in the same rounds.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{BufWriter, Write as _},
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Instant,
};

use anyhow::{Result, bail};
use palisade::{craft::Frame, geoip, policy::config, testrun::Bench};

use crate::runner::Spread;

const V4_ROWS: u32 = 400_000;
const V6_ROWS: u32 = 500_000;
/// One row in this many is the large country's (CN): 5k IPv4 and 5k IPv6 networks.
const V4_EVERY: u32 = 80;
const V6_EVERY: u32 = 100;
const CODES: [&str; 12] = [
    "US", "DE", "FR", "GB", "JP", "KR", "BR", "IN", "RU", "NL", "CA", "AU",
];

fn code(i: u32, every: u32) -> &'static str {
    if i.is_multiple_of(every) {
        "CN"
    } else {
        CODES[(i % CODES.len() as u32) as usize]
    }
}

/// The `i`-th IPv4 network: /24s from 1.0.0.0.
fn v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::from((1u32 << 24) + (i << 8))
}

/// The `i`-th IPv6 network: /48s from 2400::.
fn v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::from((0x2400u128 << 112) + (u128::from(i) << 80))
}

/// Writes the GeoLite2 files and a DB-IP file of the same networks (the IPv4 ones as ranges
/// that do not fall on prefix boundaries, so they split).
fn generate(dir: &Path) -> Result<()> {
    let mut loc = BufWriter::new(std::fs::File::create(dir.join("locations.csv"))?);
    writeln!(
        loc,
        "geoname_id,locale_code,continent_code,continent_name,country_iso_code,country_name,is_in_european_union"
    )?;
    for (i, c) in CODES.iter().chain(["CN"].iter()).enumerate() {
        writeln!(loc, "{},en,XX,Somewhere,{c},\"Country, {c}\",0", 1000 + i)?;
    }
    let id = |c: &str| 1000 + CODES.iter().position(|x| *x == c).unwrap_or(CODES.len());
    let mut b4 = BufWriter::new(std::fs::File::create(dir.join("blocks4.csv"))?);
    let mut b6 = BufWriter::new(std::fs::File::create(dir.join("blocks6.csv"))?);
    let mut db = BufWriter::new(std::fs::File::create(dir.join("dbip.csv"))?);
    let header = "network,geoname_id,registered_country_geoname_id,represented_country_geoname_id,is_anonymous_proxy,is_satellite_provider,is_anycast";
    writeln!(b4, "{header}")?;
    writeln!(b6, "{header}")?;
    for i in 0..V4_ROWS {
        let c = code(i, V4_EVERY);
        writeln!(b4, "{}/24,{},{},,0,0,", v4(i), id(c), id(c))?;
        // DB-IP: the same /24 less its first 3 addresses, which go to the previous row.
        let lo = u32::from(v4(i)) + 3;
        let hi = u32::from(v4(i)) + 255 + if i + 1 < V4_ROWS { 3 } else { 0 };
        writeln!(db, "{},{},{c}", Ipv4Addr::from(lo), Ipv4Addr::from(hi))?;
    }
    for i in 0..V6_ROWS {
        let c = code(i, V6_EVERY);
        writeln!(b6, "{}/48,{},{},,0,0,", v6(i), id(c), id(c))?;
        let lo = u128::from(v6(i));
        writeln!(
            db,
            "{},{},{c}",
            v6(i),
            Ipv6Addr::from(lo + (1u128 << 80) - 1)
        )?;
    }
    for mut w in [loc, b4, b6, db] {
        w.flush()?;
    }
    Ok(())
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs the suite and returns its report (markdown).
///
/// # Errors
/// When the object cannot be loaded or a step fails.
pub fn run(rounds: usize, repeat: u32, command: &str) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("palisade-bench-geoip-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, rounds, repeat, command);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(dir: &Path, rounds: usize, repeat: u32, command: &str) -> Result<String> {
    let mut out = format!(
        "`{command}`\n\n## Loading ({V4_ROWS} IPv4 + {V6_ROWS} IPv6 networks)\n\n| step | seconds | peak RSS (MiB) |\n| --- | --- | --- |\n"
    );
    let t = Instant::now();
    generate(dir)?;
    let _ = writeln!(
        out,
        "| generate the files | {:.2} | {:.0} |",
        t.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    let wanted: BTreeSet<[u8; 2]> = [*b"CN"].into_iter().collect();
    for (what, source) in [
        (
            "GeoLite2: read the locations and both block files, keep CN",
            geoip::Source::GeoLite2 {
                blocks: vec![dir.join("blocks4.csv"), dir.join("blocks6.csv")],
                locations: dir.join("locations.csv"),
            },
        ),
        (
            "DB-IP lite: read and split the ranges, keep CN",
            geoip::Source::DbIp {
                files: vec![dir.join("dbip.csv")],
            },
        ),
    ] {
        let t = Instant::now();
        let found =
            geoip::load(&source, &wanted).map_err(|e| anyhow::anyhow!("{:?}", e.first()))?;
        let secs = t.elapsed().as_secs_f64();
        let n = found.prefixes.get(b"CN").map_or(0, Vec::len);
        let _ = writeln!(
            out,
            "| {what} ({} lines, {n} CN prefixes) | {secs:.2} | {:.0} |",
            found.lines,
            peak_rss_mib()
        );
        eprintln!("  {what}: {secs:.2} s, {n} prefixes");
    }

    let head = format!(
        "[geoip]\nformat = \"geolite2\"\nblocks = [\"{}\", \"{}\"]\nlocations = \"{}\"\n",
        dir.join("blocks4.csv").display(),
        dir.join("blocks6.csv").display(),
        dir.join("locations.csv").display()
    );
    let rule = "[[firewall.rule]]\naction = \"drop\"\nproto = \"udp\"\n";
    let t = Instant::now();
    let country = config::parse_policy(
        &format!("{head}{rule}src = \"@country:CN\"\n"),
        "bench.toml",
        dir,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let parse_secs = t.elapsed().as_secs_f64();
    let in_set: usize = country.sets.iter().map(|x| x.entries.len()).sum();
    let one = config::parse_policy(
        &format!("[sets.one]\nentries = [\"1.0.0.0/24\", \"2400::/48\"]\n{rule}src = \"@one\"\n"),
        "bench.toml",
        dir,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let empty = config::parse_policy("", "bench.toml", dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut benches = Vec::new();
    let mut install_secs = 0.0;
    for (name, policy) in [
        ("no rules", &empty),
        ("a rule on a 1-entry set", &one),
        ("a rule on @country:CN", &country),
    ] {
        let mut b = Bench::new()?;
        let t = Instant::now();
        b.install(policy)?;
        if name.contains("country") {
            install_secs = t.elapsed().as_secs_f64();
        }
        benches.push((name, b));
    }
    let _ = writeln!(
        out,
        "| parse a policy naming @country:CN (reads the GeoLite2 files) | {parse_secs:.2} | {:.0} |",
        peak_rss_mib()
    );
    let _ = writeln!(
        out,
        "| install it (write the {in_set}-prefix set, flip the generation) | {install_secs:.2} | {:.0} |",
        peak_rss_mib()
    );

    // A hit is a CN network of each family, a miss a US one, both in the one-entry set's
    // families; the one-entry set holds the first networks, which are CN's.
    let frames = [
        ("hit v4", v4(V4_EVERY * 40).to_string(), "10.0.0.1", 1u32),
        ("miss v4", v4(V4_EVERY * 40 + 1).to_string(), "10.0.0.1", 2),
        ("hit v6", v6(V6_EVERY * 40).to_string(), "fd00::1", 1),
        ("miss v6", v6(V6_EVERY * 40 + 1).to_string(), "fd00::1", 2),
    ];
    let frames: Vec<(&str, Vec<u8>, u32)> = frames
        .iter()
        .map(|(id, src, dst, want)| {
            let s: String = src.clone();
            (*id, Frame::udp(&s, dst, 40_000, 9).build(), *want)
        })
        .collect();
    for (id, frame, want) in &frames {
        let got = benches[2].1.run(frame)?;
        if got != *want {
            bail!("{id}: the country rule returned {got}, expected {want}");
        }
    }
    // samples[frame][config]: floor, then each bench.
    let mut samples = vec![vec![Vec::new(); 1 + benches.len()]; frames.len()];
    for _ in 0..rounds {
        for (f, (_, frame, _)) in frames.iter().enumerate() {
            let floor = benches[0]
                .1
                .run_prog("palisade_floor_pass", frame, repeat)?;
            samples[f][0].push(floor.duration.as_nanos() as f64);
            for (i, (_, b)) in benches.iter().enumerate() {
                let r = b.run_prog(palisade::testrun::FIREWALL, frame, repeat)?;
                samples[f][1 + i].push(r.duration.as_nanos() as f64);
            }
        }
    }
    let _ = write!(
        out,
        "\n## Cost per packet ({rounds} rounds of {repeat} runs; ns, median [min, max])\n\n\
         | packet | floor | no rules | rule on a 1-entry set | rule on @country:CN | country - no rules | country / 1-entry set |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n"
    );
    for (f, (id, _, want)) in frames.iter().enumerate() {
        let s: Vec<Spread> = samples[f].iter().map(|v| Spread::of(v)).collect();
        let diff: Vec<f64> = samples[f][3]
            .iter()
            .zip(&samples[f][1])
            .map(|(a, b)| a - b)
            .collect();
        let ratio: Vec<f64> = samples[f][3]
            .iter()
            .zip(&samples[f][2])
            .map(|(a, b)| a / b)
            .collect();
        let d = Spread::of(&diff);
        let r = Spread::of(&ratio);
        let cell = |s: &Spread| format!("{:.1} [{:.1}, {:.1}]", s.median, s.min, s.max);
        let _ = writeln!(
            out,
            "| {id} ({}) | {} | {} | {} | {} | {} | {:.2} [{:.2}, {:.2}] |",
            if *want == 1 { "drop" } else { "pass" },
            cell(&s[0]),
            cell(&s[1]),
            cell(&s[2]),
            cell(&s[3]),
            cell(&d),
            r.median,
            r.min,
            r.max
        );
    }
    Ok(out)
}
