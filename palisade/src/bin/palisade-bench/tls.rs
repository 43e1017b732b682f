//! The TLS suite: what reading a ClientHello costs the daemon per handshake (joining records,
//! parsing, JA4, the policy's decision over a block list), against copying the same bytes
//! once, measured in the same rounds. Userspace only: the daemon does this work; packets
//! that are not a handshake never reach it.

use std::{fmt::Write as _, hint::black_box, path::Path, time::Instant};

use anyhow::{Context as _, Result};
use palisade::{craft::ClientHelloSpec, policy::config, tls::decide::TlsPolicy};
use palisade_common::tls::{
    Outcome,
    hello::{ClientHello, MAX_HELLO_LEN},
    ja4::ja4,
    read_hello,
    stream::FirstBytes,
};
use serde::Serialize;

use crate::{runner::Spread, utc_now};

/// A ClientHello curl 7.88 (OpenSSL 3.0) sent, captured into the corpus.
const CURL_HELLO: &str = include_str!("../../../../palisade-common/tests/data/tls/curl-h2.hex");

pub struct TlsSettings {
    pub mode: &'static str,
    pub rounds: usize,
    /// Handshakes per measurement.
    pub iterations: usize,
    /// Names on the block list the decision searches.
    pub names: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub id: String,
    pub what: String,
    pub bytes: usize,
    /// Median over rounds of the mean ns per handshake.
    pub ns: Spread,
    /// The same divided by the floor (copying the hello's bytes) of its round.
    pub times_floor: Spread,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsReport {
    pub generated: String,
    pub command: String,
    pub mode: String,
    pub rounds: usize,
    pub iterations: usize,
    pub names: usize,
    pub targets: Vec<TargetResult>,
}

fn hex(text: &str) -> Vec<u8> {
    let t = text.trim();
    (0..t.len() / 2)
        .filter_map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// The work measured for one handshake.
#[derive(Clone, Copy)]
enum Work {
    /// Copying the bytes once: the least any inspector does.
    Copy,
    /// Records joined and the hello parsed.
    Read,
    /// And its JA4.
    Ja4,
    /// Segments into the reassembly window, read, JA4 and the decision.
    Decide,
}

struct Case {
    id: &'static str,
    what: &'static str,
    stream: Vec<u8>,
    segment: usize,
}

fn time(case: &Case, work: Work, policy: &TlsPolicy, iterations: usize) -> f64 {
    let mut scratch = vec![0u8; MAX_HELLO_LEN];
    let mut hello = Box::<ClientHello>::default();
    let mut first = Box::new(FirstBytes::new(1));
    let mut copy = vec![0u8; case.stream.len()];
    let start = Instant::now();
    for _ in 0..iterations {
        match work {
            Work::Copy => {
                copy.copy_from_slice(black_box(&case.stream));
                black_box(&copy);
            }
            Work::Read => {
                let o = read_hello(black_box(&case.stream), &mut scratch, &mut hello);
                assert_eq!(o, Outcome::Hello);
            }
            Work::Ja4 => {
                let o = read_hello(black_box(&case.stream), &mut scratch, &mut hello);
                assert_eq!(o, Outcome::Hello);
                black_box(ja4(&hello));
            }
            Work::Decide => {
                *first = FirstBytes::new(1);
                for (k, seg) in case.stream.chunks(case.segment).enumerate() {
                    let seq = 1 + u32::try_from(k * case.segment).unwrap_or(0);
                    first.insert(seq, seg);
                }
                let o = read_hello(first.contiguous(), &mut scratch, &mut hello);
                assert_eq!(o, Outcome::Hello);
                black_box(policy.decide(&hello));
            }
        }
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

pub fn run(s: &TlsSettings, command: String) -> Result<TlsReport> {
    let mut toml = String::from("[tls]\nmode = \"blocklist\"\nblock = [");
    for i in 0..s.names {
        let _ = write!(toml, "\"blocked-{i}.example.com\",");
    }
    toml.push_str("]\n");
    let p = config::parse_policy(&toml, "bench.toml", Path::new("."))
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the bench policy")?;
    let policy = TlsPolicy::new(&p.tls, &p.dns.lists);
    let modern = ClientHelloSpec::modern("www.example.com");
    let cases = [
        Case {
            id: "curl",
            what: "curl 7.88 (captured), one record, one segment",
            stream: hex(CURL_HELLO),
            segment: 1460,
        },
        Case {
            id: "pq",
            what: "post-quantum key share, one record, two 1460-byte segments",
            stream: modern.records(16_384),
            segment: 1460,
        },
        Case {
            id: "pq-records",
            what: "post-quantum, in 100-byte records, 536-byte segments",
            stream: modern.records(100),
            segment: 536,
        },
    ];
    let works = [
        (Work::Copy, "copy", "copy the bytes (floor)"),
        (Work::Read, "read", "join records, parse"),
        (Work::Ja4, "ja4", "join, parse, JA4"),
        (
            Work::Decide,
            "decide",
            "reassemble segments, parse, JA4, decide",
        ),
    ];
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); cases.len() * works.len()];
    for _ in 0..s.rounds {
        for (c, case) in cases.iter().enumerate() {
            let floor = time(case, Work::Copy, &policy, s.iterations);
            for (w, &(work, _, _)) in works.iter().enumerate() {
                let ns = time(case, work, &policy, s.iterations);
                samples[c * works.len() + w].push((ns, ns / floor));
            }
        }
    }
    let mut targets = Vec::new();
    for (c, case) in cases.iter().enumerate() {
        for (w, &(_, id, what)) in works.iter().enumerate() {
            let v = &samples[c * works.len() + w];
            let ns: Vec<f64> = v.iter().map(|x| x.0).collect();
            let ratio: Vec<f64> = v.iter().map(|x| x.1).collect();
            targets.push(TargetResult {
                id: format!("{}/{id}", case.id),
                what: format!("{}: {what}", case.what),
                bytes: case.stream.len(),
                ns: Spread::of(&ns),
                times_floor: Spread::of(&ratio),
            });
        }
    }
    Ok(TlsReport {
        generated: utc_now(),
        command,
        mode: s.mode.to_string(),
        rounds: s.rounds,
        iterations: s.iterations,
        names: s.names,
        targets,
    })
}

impl TlsReport {
    pub fn terminal(&self) -> String {
        let mut out = format!(
            "TLS ClientHello cost per handshake ({} rounds x {} handshakes, block list of {} names)\n",
            self.rounds, self.iterations, self.names
        );
        for t in &self.targets {
            let _ = writeln!(
                out,
                "  {:<18} {:>5} B  {:>9.1} ns  ({:.1}..{:.1})  {:>6.1}x floor",
                t.id, t.bytes, t.ns.median, t.ns.min, t.ns.max, t.times_floor.median
            );
        }
        out
    }

    pub fn write(&self, dir: &Path) -> Result<String> {
        std::fs::create_dir_all(dir)?;
        let stem = "tls";
        let mut md = format!(
            "# TLS ClientHello cost\n\n{} · `{}` · mode {}\n\n{} rounds of {} handshakes; the \
             decision searches a block list of {} names. Floor: copying the hello's bytes \
             once, measured in the same round.\n\n| target | bytes | ns (median) | min | max | \
             x floor |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
            self.generated, self.command, self.mode, self.rounds, self.iterations, self.names
        );
        for t in &self.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                t.what, t.bytes, t.ns.median, t.ns.min, t.ns.max, t.times_floor.median
            );
        }
        std::fs::write(dir.join(format!("{stem}.md")), md)?;
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(self)?,
        )?;
        Ok(stem.to_string())
    }
}
