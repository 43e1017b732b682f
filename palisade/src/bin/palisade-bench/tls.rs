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

/// The kernel gate's cost per packet, from `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, Serialize)]
pub struct GateResult {
    pub id: String,
    pub what: String,
    /// Median over rounds of the kernel's mean ns per run.
    pub ns: Spread,
    /// The same less the same program under a policy without `[tls]` in the same round
    /// (for the XDP firewall: a TCP packet to port 80).
    pub above_off_ns: Spread,
}

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
    pub gate: Vec<GateResult>,
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
    let gate = gate_costs(s)?;
    Ok(TlsReport {
        generated: utc_now(),
        command,
        mode: s.mode.to_string(),
        rounds: s.rounds,
        iterations: s.iterations,
        names: s.names,
        targets,
        gate,
    })
}

/// The gate in the kernel: a packet it has nothing to do with (another port), a data
/// packet of an allowed flow, and a ClientHello segment of a pending flow (copied to the
/// ring), each against the gate of a policy without `[tls]`, in the same rounds.
fn gate_costs(s: &TlsSettings) -> Result<Vec<GateResult>> {
    use palisade::{craft::Frame, testrun::Bench, tls};
    const REPEAT: u32 = 100_000;
    let load = |text: &str| -> Result<Bench> {
        let mut b = Bench::new()?;
        let p = config::parse_policy(text, "bench.toml", Path::new("."))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        b.install(&p)?;
        Ok(b)
    };
    let off = load("")?;
    let mut on = load("[tls]\nmode = \"blocklist\"\nblock = [\"blocked.example\"]\n")?;
    let http = Frame::tcp("10.1.0.2", "10.2.0.2", 40_000, 80, 0x18)
        .with_payload(&[b'x'; 500])
        .build();
    // An allowed flow: its SYN, then the verdict.
    let syn = Frame::tcp("10.1.0.2", "10.2.0.2", 40_001, 443, 0x02).build();
    on.run_tc(tls::INGRESS, &syn)?;
    let key = palisade_common::tls::gate::GateKey {
        client: std::net::Ipv4Addr::new(10, 1, 0, 2)
            .to_ipv6_mapped()
            .octets(),
        server: std::net::Ipv4Addr::new(10, 2, 0, 2)
            .to_ipv6_mapped()
            .octets(),
        client_port: 40_001,
        server_port: 443,
        _pad: 0,
    };
    tls::set_verdict(&mut on.ebpf, &key, 2, None)?;
    let allowed = Frame::tcp("10.2.0.2", "10.1.0.2", 443, 40_001, 0x18)
        .with_payload(&[b'y'; 500])
        .build();
    // A pending flow: every run copies its hello segment to the ring; the ring is drained
    // between rounds.
    let syn = Frame::tcp("10.1.0.2", "10.2.0.2", 40_002, 443, 0x02).build();
    on.run_tc(tls::INGRESS, &syn)?;
    let hello = ClientHelloSpec::modern("www.example.com").records(16_384);
    let pending = Frame::tcp("10.1.0.2", "10.2.0.2", 40_002, 443, 0x18)
        .with_tcp_seq(2)
        .with_payload(&hello[..1400])
        .build();
    // The XDP firewall's share: every TCP packet asks whether its flow was refused.
    let udp = Frame::udp("10.1.0.2", "10.2.0.2", 40_000, 80)
        .with_payload(&[b'x'; 500])
        .build();
    let blocked_syn = Frame::tcp("10.1.0.2", "10.2.0.2", 40_003, 443, 0x02).build();
    on.run_tc(tls::INGRESS, &blocked_syn)?;
    let blocked_key = palisade_common::tls::gate::GateKey {
        client_port: 40_003,
        ..key
    };
    tls::set_verdict(
        &mut on.ebpf,
        &blocked_key,
        2,
        Some(palisade_common::reason::TLS_SNI_BLOCKED),
    )?;
    let blocked = Frame::tcp("10.1.0.2", "10.2.0.2", 40_003, 443, 0x18)
        .with_payload(&[b'z'; 500])
        .build();
    let mut ring = aya::maps::RingBuf::try_from(
        on.ebpf
            .take_map("TLS_SEGMENTS")
            .ok_or_else(|| anyhow::anyhow!("no TLS_SEGMENTS"))?,
    )?;
    let targets: [(&str, &str, &Bench, &[u8], u32); 4] = [
        (
            "off",
            "no [tls]: the gate reads its settings and returns",
            &off,
            &http,
            REPEAT,
        ),
        (
            "other-port",
            "[tls] on, a TCP packet to port 80 (not a handshake)",
            &on,
            &http,
            REPEAT,
        ),
        (
            "allowed",
            "[tls] on, a data packet of an allowed flow on port 443",
            &on,
            &allowed,
            REPEAT,
        ),
        (
            "pending",
            "[tls] on, a 1400-byte ClientHello segment of a pending flow, copied out",
            &on,
            &pending,
            500,
        ),
    ];
    let xdp_targets: [(&str, &str, &Bench, &[u8]); 5] = [
        (
            "xdp-off-tcp",
            "XDP firewall, no [tls], a TCP packet to port 80",
            &off,
            &http,
        ),
        (
            "xdp-on-udp",
            "XDP firewall, [tls] on, a UDP datagram (not TCP: no lookup)",
            &on,
            &udp,
        ),
        (
            "xdp-on-tcp80",
            "XDP firewall, [tls] on, a TCP packet to port 80",
            &on,
            &http,
        ),
        (
            "xdp-on-allowed",
            "XDP firewall, [tls] on, a packet of an allowed flow on 443",
            &on,
            &allowed,
        ),
        (
            "xdp-on-blocked",
            "XDP firewall, [tls] on, a packet of a refused flow (dropped)",
            &on,
            &blocked,
        ),
    ];
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); targets.len() + xdp_targets.len()];
    for _ in 0..s.rounds {
        let floor = off
            .run_tc_repeat(tls::INGRESS, &http, REPEAT)?
            .duration
            .as_nanos() as f64;
        for (i, (_, _, b, frame, repeat)) in targets.iter().enumerate() {
            let ns = b
                .run_tc_repeat(tls::INGRESS, frame, *repeat)?
                .duration
                .as_nanos() as f64;
            samples[i].push((ns, ns - floor));
            while ring.next().is_some() {}
        }
        let xdp_floor = off
            .run_prog(palisade::testrun::FIREWALL, &http, REPEAT)?
            .duration
            .as_nanos() as f64;
        for (i, (_, _, b, frame)) in xdp_targets.iter().enumerate() {
            let ns = b
                .run_prog(palisade::testrun::FIREWALL, frame, REPEAT)?
                .duration
                .as_nanos() as f64;
            samples[targets.len() + i].push((ns, ns - xdp_floor));
        }
    }
    let names: Vec<(&str, &str)> = targets
        .iter()
        .map(|(id, what, ..)| (*id, *what))
        .chain(xdp_targets.iter().map(|(id, what, ..)| (*id, *what)))
        .collect();
    Ok(names
        .iter()
        .zip(samples)
        .map(|((id, what), v)| GateResult {
            id: (*id).to_string(),
            what: (*what).to_string(),
            ns: Spread::of(&v.iter().map(|x| x.0).collect::<Vec<_>>()),
            above_off_ns: Spread::of(&v.iter().map(|x| x.1).collect::<Vec<_>>()),
        })
        .collect())
}

impl TlsReport {
    pub fn terminal(&self) -> String {
        let mut out = format!(
            "TLS ClientHello cost per handshake ({} rounds x {} handshakes, block list of {} names)\n",
            self.rounds, self.iterations, self.names
        );
        for g in &self.gate {
            let _ = writeln!(
                out,
                "  gate/{:<15} {:>9.1} ns  ({:+.1} ns above the same without [tls])",
                g.id, g.ns.median, g.above_off_ns.median
            );
        }
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
        let stem = format!("tls-{}", self.mode);
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
        md.push_str(
            "\n## The kernel gate, per packet (BPF_PROG_TEST_RUN)\n\n| packet | ns (median) | min | \
             max | above the same program without [tls] |\n| --- | ---: | ---: | ---: | ---: |\n",
        );
        for g in &self.gate {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {:.1} | {:+.1} |",
                g.what, g.ns.median, g.ns.min, g.ns.max, g.above_off_ns.median
            );
        }
        std::fs::write(dir.join(format!("{stem}.md")), md)?;
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(self)?,
        )?;
        Ok(stem)
    }
}
