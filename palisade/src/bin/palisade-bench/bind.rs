//! The DNS binding suite: the answer path and the connect() check, each against a floor
//! measured in the same run.
//!
//! - Answer path: `BPF_PROG_TEST_RUN` of `palisade_bind_answer` on crafted answers (one A
//!   record; a CNAME and four A records), and on a UDP packet that is not an answer,
//!   against `palisade_floor_skb` (a cgroup_skb program that passes) on the same packets.
//!   The kernel reports the mean time per run.
//! - connect(): this process moves into a throw-away cgroup with the four sock_addr programs
//!   attached and times `connect()` of a UDP socket (no packet is sent) to an explicitly
//!   allowed address, a bound one and an unbound one (refused), against the same calls from
//!   a sibling cgroup without programs. Medians over the rounds. Then again with resolver
//!   pinning on (one more trie lookup per call): a bound address, and port 853 (refused).
//! - The DoH canary (tcx egress): `BPF_PROG_TEST_RUN` of `palisade_bind_canary` on a TCP
//!   segment, a UDP query and the canary query from a cgroup not pinned, against
//!   `palisade_floor_tc` (a tc program that lets every packet continue).

use std::{
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSockAddr, SchedClassifier, TestRun as _, TestRunOptions,
    },
};
use palisade::{dnsbind, loader};
use palisade_common::dnsbind::{BindConfig, BindKey, BindValue, PIN_ON, PIN_RESOLVER, mapped_v4};

const FLOOR: &str = "palisade_floor_skb";
const UNIFIED: &str = "/sys/fs/cgroup/unified";

fn ip4_udp(sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    let total = (28 + payload.len()) as u16;
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 10, 1, 0, 53, 10, 1, 2, 3]);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn answer(records: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut m = vec![
        0x12,
        0x34,
        0x81,
        0x80,
        0,
        1,
        0,
        records.len() as u8,
        0,
        0,
        0,
        0,
    ];
    for l in ["www", "example", "com"] {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    for (t, data) in records {
        m.extend_from_slice(&[0xc0, 12]);
        m.extend_from_slice(&t.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 1, 0x2c]);
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(data);
    }
    m
}

/// The answer path with rebinding protection on (`rebinding = "refuse"`): public answers
/// (the range test on each address), a private answer whose question is allowed (the
/// question expanded and matched, then bound), and one whose question is not (dropped).
fn rebinding_rows(
    ebpf: &mut Ebpf,
    rounds: usize,
    repeat: u32,
    one: &[u8],
    five: &[u8],
) -> Result<String> {
    let private = ip4_udp(53, &answer(&[(1, vec![192, 168, 1, 10])]));
    let mut out =
        String::from("\n### With `rebinding = \"refuse\"` (`rebinding_allow` one name)\n\n");
    out += "| packet | floor | palisade_bind_answer | added | ratio |\n|---|---:|---:|---:|---:|\n";
    for (allowed, rows) in [
        (
            "www.example.com",
            vec![
                ("answer, 1 A, public", one),
                ("answer, CNAME + 4 A, public", five),
                ("answer, 1 A, private, question allowed", &private[..]),
            ],
        ),
        (
            "other.example",
            vec![("answer, 1 A, private, refused", &private[..])],
        ),
    ] {
        let policy = palisade::policy::config::parse_policy(
            &format!(
                "[dns.bind]\ncgroups = [\"/x\"]\nrebinding = \"refuse\"\n\
                 rebinding_allow = [\"{allowed}\"]\n"
            ),
            "bench.toml",
            Path::new("/"),
        )
        .map_err(|e| anyhow!("{e:?}"))?;
        palisade::guard::install(ebpf, &policy)?;
        for (label, frame) in rows {
            let mut floor = Vec::new();
            let mut bind = Vec::new();
            for _ in 0..rounds {
                floor.push(test_run(ebpf, FLOOR, frame, repeat)?);
                bind.push(test_run(ebpf, dnsbind::ANSWER, frame, repeat)?);
            }
            let (f, b) = (median(floor), median(bind));
            let _ = writeln!(
                out,
                "| {label} | {f:.0} | {b:.0} | {:.0} | {:.2} |",
                b - f,
                b / f
            );
        }
    }
    Ok(out)
}

fn test_run(ebpf: &Ebpf, name: &str, frame: &[u8], repeat: u32) -> Result<f64> {
    let p: &CgroupSkb = ebpf
        .program(name)
        .ok_or_else(|| anyhow!("no program {name}"))?
        .try_into()?;
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.repeat = repeat;
    Ok(p.test_run(opts)?.duration.as_nanos() as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A cgroup directory removed on drop (this process moved back to the root first).
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(tag: &str) -> Result<Self> {
        let p = Path::new(UNIFIED).join(format!("palisade-bench-{tag}-{}", std::process::id()));
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }

    fn enter(&self) -> Result<()> {
        std::fs::write(self.0.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("moving into {}", self.0.display()))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            Path::new(UNIFIED).join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Mean ns of one UDP `connect()` to `to`, over `n` calls.
fn connects(to: SocketAddr, n: u32) -> Result<(f64, bool)> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    let ok = s.connect(to).is_ok();
    let t = Instant::now();
    for _ in 0..n {
        let _ = s.connect(to);
    }
    Ok((t.elapsed().as_nanos() as f64 / f64::from(n), ok))
}

/// Runs the suite; returns the report as Markdown.
///
/// # Errors
/// When the object cannot be loaded, a cgroup cannot be made or a run fails.
pub fn run(rounds: usize, repeat: u32) -> Result<String> {
    let mut ebpf = loader::load()?;
    dnsbind::load(&mut ebpf)?;
    {
        let p: &mut CgroupSkb = ebpf
            .program_mut(FLOOR)
            .ok_or_else(|| anyhow!("no program {FLOOR}"))?
            .try_into()?;
        p.load()?;
    }
    dnsbind::write_config(&mut ebpf, Some(&dnsbind::DnsBind::default()))?;

    let one = ip4_udp(53, &answer(&[(1, vec![93, 184, 216, 34])]));
    let five = ip4_udp(
        53,
        &answer(&[
            (5, b"\x04edge\x03cdn\x03net\x00".to_vec()),
            (1, vec![198, 51, 100, 1]),
            (1, vec![198, 51, 100, 2]),
            (1, vec![198, 51, 100, 3]),
            (1, vec![198, 51, 100, 4]),
        ]),
    );
    let other = ip4_udp(4444, &[0u8; 64]);
    let cases = [
        ("answer, 1 A", &one),
        ("answer, CNAME + 4 A", &five),
        ("UDP, not an answer", &other),
    ];
    let mut out = String::from("## Answer path (ns per packet, BPF_PROG_TEST_RUN)\n\n");
    out += "| packet | floor | palisade_bind_answer | added | ratio |\n|---|---:|---:|---:|---:|\n";
    for (label, frame) in cases {
        let mut floor = Vec::new();
        let mut bind = Vec::new();
        for _ in 0..rounds {
            floor.push(test_run(&ebpf, FLOOR, frame, repeat)?);
            bind.push(test_run(&ebpf, dnsbind::ANSWER, frame, repeat)?);
        }
        let (f, b) = (median(floor), median(bind));
        let _ = writeln!(
            out,
            "| {label} | {f:.0} | {b:.0} | {:.0} | {:.2} |",
            b - f,
            b / f
        );
    }

    // The same answers with their names checked against a `[dns.egress]` blocklist (none
    // listed: every name is inspected and passes).
    let policy = palisade::policy::config::parse_policy(
        "[dns.egress]\nmode = \"blocklist\"\nlists = [\"t\"]\n\
         [dns.lists.t]\nnames = [\"tracker.example\"]\n\
         [dns.bind]\ncgroups = [\"/x\"]\n",
        "bench.toml",
        Path::new("/"),
    )
    .map_err(|e| anyhow!("{e:?}"))?;
    palisade::guard::install(&mut ebpf, &policy)?;
    out += "\n### With a `[dns.egress]` blocklist: every name of the answer checked\n\n";
    out += "| packet | names checked | floor | palisade_bind_answer | added | ratio |\n|---|---:|---:|---:|---:|---:|\n";
    for (label, frame, names) in [("answer, 1 A", &one, 1), ("answer, CNAME + 4 A", &five, 2)] {
        let mut floor = Vec::new();
        let mut bind = Vec::new();
        for _ in 0..rounds {
            floor.push(test_run(&ebpf, FLOOR, frame, repeat)?);
            bind.push(test_run(&ebpf, dnsbind::ANSWER, frame, repeat)?);
        }
        let (f, b) = (median(floor), median(bind));
        let _ = writeln!(
            out,
            "| {label} | {names} | {f:.0} | {b:.0} | {:.0} | {:.2} |",
            b - f,
            b / f
        );
    }
    out += &rebinding_rows(&mut ebpf, rounds, repeat, &one, &five)?;
    dnsbind::write_config(&mut ebpf, Some(&dnsbind::DnsBind::default()))?;
    out += &canary_rows(&mut ebpf, rounds, repeat)?;

    // connect(): one cgroup with the programs, one without.
    let plain = Cgroup::new("plain")?;
    let bound = Cgroup::new("bind")?;
    let dir = std::fs::File::open(&bound.0)?;
    let mut links = Vec::new();
    for name in dnsbind::SOCK_ADDR {
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?;
        links.push(p.attach(&dir, CgroupAttachMode::Single)?);
    }
    // The bound address: loopback 127.0.0.2 taken out of the implicit allow list and bound
    // to the cgroup instead, so the lookup goes past the allow list to the bindings.
    {
        let mut allow: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(
            ebpf.map_mut("BIND_ALLOW")
                .ok_or_else(|| anyhow!("BIND_ALLOW"))?,
        )?;
        allow.remove(&Key::new(104, mapped_v4([127, 0, 0, 0])))?;
        allow.insert(&Key::new(128, mapped_v4([127, 0, 0, 1])), 1, 0)?;
        let mut b: HashMap<&mut MapData, BindKey, BindValue> = HashMap::try_from(
            ebpf.map_mut("BIND_ADDRS")
                .ok_or_else(|| anyhow!("BIND_ADDRS"))?,
        )?;
        let key = BindKey {
            cgroup_id: std::fs::metadata(&bound.0)?.ino(),
            addr: mapped_v4([127, 0, 0, 2]),
        };
        b.insert(
            key,
            BindValue {
                expires_ns: u64::MAX,
            },
            0,
        )?;
    }
    let n = repeat / 4;
    let targets: [(&str, SocketAddr, bool); 5] = [
        (
            "allowed explicitly (127.0.0.1)",
            "127.0.0.1:9".parse()?,
            false,
        ),
        ("bound (127.0.0.2)", "127.0.0.2:9".parse()?, false),
        ("refused (127.0.0.3, EPERM)", "127.0.0.3:9".parse()?, false),
        ("pinned: bound (127.0.0.2)", "127.0.0.2:9".parse()?, true),
        ("pinned: port 853 (EPERM)", "127.0.0.2:853".parse()?, true),
    ];
    out += "\n## connect() of a UDP socket (ns per call)\n\n";
    out += "| destination | no programs (floor) | bind mode | added | ratio | passed in bind mode |\n|---|---:|---:|---:|---:|---|\n";
    for (label, to, pinned) in targets {
        if pinned {
            pin(&mut ebpf)?;
        }
        let mut floor = Vec::new();
        let mut with = Vec::new();
        let mut passed = true;
        for _ in 0..rounds {
            plain.enter()?;
            floor.push(connects(to, n)?.0);
            bound.enter()?;
            let (ns, ok) = connects(to, n)?;
            with.push(ns);
            passed = ok;
        }
        plain.enter()?;
        let (f, b) = (median(floor), median(with));
        let _ = writeln!(
            out,
            "| {label} | {f:.0} | {b:.0} | {:.0} | {:.2} | {passed} |",
            b - f,
            b / f
        );
    }
    drop(links);
    drop(dir);
    Ok(out)
}

/// Turns resolver pinning on with one resolver (192.0.2.53) that the measured calls do not
/// reach: every call pays the pinning lookup.
fn pin(ebpf: &mut Ebpf) -> Result<()> {
    let mut t: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(
        ebpf.map_mut("BIND_PIN")
            .ok_or_else(|| anyhow!("BIND_PIN"))?,
    )?;
    t.insert(&Key::new(128, mapped_v4([192, 0, 2, 53])), PIN_RESOLVER, 0)?;
    let mut c: Array<&mut MapData, BindConfig> = Array::try_from(
        ebpf.map_mut("BIND_CONFIG")
            .ok_or_else(|| anyhow!("BIND_CONFIG"))?,
    )?;
    let mut cfg = c.get(&0, 0)?;
    cfg.pinned = PIN_ON;
    c.set(0, cfg, 0)?;
    Ok(())
}

/// The smallest tc program: lets every packet continue. The floor of the canary's cost.
const FLOOR_TC: &str = "palisade_floor_tc";

/// An Ethernet frame with an IPv4 packet from 10.1.2.3 to 10.1.0.53 (`proto`, then `l4`).
fn eth_ip4(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0, 10, 1, 2, 3, 10, 1, 0, 53]);
    p.extend_from_slice(l4);
    p
}

/// A UDP query from port 40000 to port 53 for `name` (type A).
fn udp_query(name: &str) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut u = 40000u16.to_be_bytes().to_vec();
    u.extend_from_slice(&53u16.to_be_bytes());
    u.extend_from_slice(&((8 + m.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(&m);
    eth_ip4(17, &u)
}

/// The DoH canary program (tcx egress) per packet, against `palisade_floor_tc` (a tc
/// program that only lets the packet continue) on the same frames, in the same run, with
/// resolver pinning on: a TCP segment (not DNS), a UDP query for another name (parsed, the
/// name compared), and the canary query from a cgroup that is not pinned (parsed, the
/// socket's cgroup and its ancestors looked up, passed on). The canary answered is not
/// timed: the first run rewrites the frame, which the next run of the same test would see
/// as an answer.
fn canary_rows(ebpf: &mut Ebpf, rounds: usize, repeat: u32) -> Result<String> {
    for name in [dnsbind::CANARY, FLOOR_TC] {
        let p: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?;
        p.load()?;
    }
    let bind = dnsbind::DnsBind {
        resolvers: vec![palisade::policy::setfile::parse_cidr("10.1.0.53/32")?],
        ..dnsbind::DnsBind::default()
    };
    dnsbind::write_config(ebpf, Some(&bind))?;
    let mut tcp = 40000u16.to_be_bytes().to_vec();
    tcp.extend_from_slice(&443u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(&[0u8; 64]);
    let cases = [
        ("TCP segment to port 443 (not DNS)", eth_ip4(6, &tcp)),
        (
            "UDP query for www.example.com",
            udp_query("www.example.com"),
        ),
        (
            "UDP query for use-application-dns.net, cgroup not pinned",
            udp_query("use-application-dns.net"),
        ),
    ];
    let mut out = String::from(
        "\n## The DoH canary (tcx egress, ns per packet, BPF_PROG_TEST_RUN, pinning on)\n\n",
    );
    out += "| packet | no program (floor) | palisade_bind_canary | added | ratio |\n|---|---:|---:|---:|---:|\n";
    for (label, frame) in &cases {
        let mut floor = Vec::new();
        let mut canary = Vec::new();
        for _ in 0..rounds {
            floor.push(test_run_tc(ebpf, FLOOR_TC, frame, repeat)?);
            canary.push(test_run_tc(ebpf, dnsbind::CANARY, frame, repeat)?);
        }
        let (f, c) = (median(floor), median(canary));
        let _ = writeln!(
            out,
            "| {label} | {f:.0} | {c:.0} | {:.0} | {:.2} |",
            c - f,
            c / f
        );
    }
    dnsbind::write_config(ebpf, Some(&dnsbind::DnsBind::default()))?;
    Ok(out)
}

fn test_run_tc(ebpf: &Ebpf, name: &str, frame: &[u8], repeat: u32) -> Result<f64> {
    let p: &SchedClassifier = ebpf
        .program(name)
        .ok_or_else(|| anyhow!("no program {name}"))?
        .try_into()?;
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.repeat = repeat;
    Ok(p.test_run(opts)?.duration.as_nanos() as f64)
}
