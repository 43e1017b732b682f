//! DNS binding, the answer path (`palisade_bind_answer`, cgroup_skb ingress), run on crafted
//! answers through `BPF_PROG_TEST_RUN`, and the four connect-path programs verified.
//!
//! Every check asserts the verdict (the answer program never drops), the exact bindings
//! written (cgroup, address, expiry) and the exact movement of the binding counters.
//!
//! In a test run the packet's socket is a dummy the kernel creates in the caller's cgroup
//! v2, so bindings land under this test process's cgroup id.
//!
//! Needs root. The tests share one loaded object and take turns.

use std::{
    os::unix::fs::MetadataExt as _,
    sync::{Mutex, MutexGuard, OnceLock},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{CgroupSkb, TestRun as _, TestRunOptions},
};
use palisade::{
    dnsbind::{self, DnsBind},
    loader,
    policy::setfile::parse_cidr,
};
use palisade_common::dnsbind::{
    ANSWER_BUF, BIND_STATS_COUNT, BindConfig, BindKey, BindValue, MAX_BOUND_PER_ANSWER, QueryKey,
    QueryValue, STAT_ADDRS_BOUND, STAT_ADDRS_SKIPPED, STAT_ANSWERS, STAT_ANSWERS_MALFORMED,
    STAT_ANSWERS_REFUSED, STAT_ANSWERS_UNPINNED, mapped_v4,
};

const PASS: u32 = 1;
const A: u16 = 1;
const AAAA: u16 = 28;
const CNAME: u16 = 5;

struct Loaded {
    ebpf: Ebpf,
}

fn loaded() -> MutexGuard<'static, Loaded> {
    static L: OnceLock<Mutex<Loaded>> = OnceLock::new();
    L.get_or_init(|| {
        let mut ebpf = loader::load().expect("load the object");
        dnsbind::load(&mut ebpf).expect("the kernel verifies the bind programs");
        Mutex::new(Loaded { ebpf })
    })
    .lock()
    .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Loaded {
    fn configure(&mut self, grace_secs: u32) {
        let b = DnsBind {
            cgroups: vec![],
            grace_secs,
            allow: vec![parse_cidr("192.0.2.0/24").unwrap()],
            ..DnsBind::default()
        };
        dnsbind::write_config(&mut self.ebpf, Some(&b)).unwrap();
        self.clear();
    }

    fn clear(&mut self) {
        let mut m: HashMap<&mut MapData, BindKey, BindValue> =
            HashMap::try_from(self.ebpf.map_mut("BIND_ADDRS").unwrap()).unwrap();
        let keys: Vec<BindKey> = m.keys().filter_map(Result::ok).collect();
        for k in keys {
            m.remove(&k).unwrap();
        }
        let mut q: HashMap<&mut MapData, QueryKey, QueryValue> =
            HashMap::try_from(self.ebpf.map_mut("BIND_QUERIES").unwrap()).unwrap();
        let keys: Vec<QueryKey> = q.keys().filter_map(Result::ok).collect();
        for k in keys {
            q.remove(&k).unwrap();
        }
    }

    fn queries(&self) -> Vec<(QueryKey, QueryValue)> {
        let m: HashMap<&MapData, QueryKey, QueryValue> =
            HashMap::try_from(self.ebpf.map("BIND_QUERIES").unwrap()).unwrap();
        m.iter().filter_map(Result::ok).collect()
    }

    fn bindings(&self) -> Vec<(BindKey, BindValue)> {
        let m: HashMap<&MapData, BindKey, BindValue> =
            HashMap::try_from(self.ebpf.map("BIND_ADDRS").unwrap()).unwrap();
        let mut v: Vec<(BindKey, BindValue)> = m.iter().filter_map(Result::ok).collect();
        v.sort_by_key(|(k, _)| k.addr);
        v
    }

    fn stats(&self) -> [u64; BIND_STATS_COUNT as usize] {
        let m: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("BIND_STATS").unwrap()).unwrap();
        let mut out = [0; BIND_STATS_COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            *o = m.get(&(i as u32), 0).unwrap().iter().sum();
        }
        out
    }

    /// Runs the query program on the query `ip` answers ([`query_for`]), when it has one,
    /// then the answer program on `ip` (an Ethernet header is put in front: the kernel's
    /// test run pulls it, as for every cgroup_skb program).
    fn run(&self, ip: &[u8]) -> u32 {
        if let Some(q) = query_for(ip) {
            assert_eq!(self.run_prog(dnsbind::QUERY, &q, 1).0, PASS, "queries pass");
        }
        self.run_answer(ip)
    }

    /// Runs the answer program alone: no query is recorded first.
    fn run_answer(&self, ip: &[u8]) -> u32 {
        self.run_prog(dnsbind::ANSWER, ip, 1).0
    }

    /// Runs the query program alone.
    fn run_query(&self, ip: &[u8]) -> u32 {
        self.run_prog(dnsbind::QUERY, ip, 1).0
    }

    fn run_prog(&self, name: &str, ip: &[u8], repeat: u32) -> (u32, Duration) {
        let prog: &CgroupSkb = self.ebpf.program(name).unwrap().try_into().unwrap();
        let ethertype: u16 = if ip[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
        let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(ip);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        opts.repeat = repeat;
        let r = prog.test_run(opts).expect("test run");
        (r.return_value, r.duration)
    }
}

/// The cgroup id of this process (the dummy socket's in a test run).
fn own_cgroup_id() -> u64 {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("cgroup v2 line");
    let root = if std::path::Path::new("/sys/fs/cgroup/unified").exists() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    };
    std::fs::metadata(format!("{root}{path}")).unwrap().ino()
}

fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---- packets ----

fn ip4_udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 10, 1, 0, 53, 10, 1, 2, 3]);
    udp(&mut p, sport, dport, payload);
    p
}

fn ip6_udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53]);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    udp(&mut p, sport, dport, payload);
    p
}

fn udp(p: &mut Vec<u8>, sport: u16, dport: u16, payload: &[u8]) {
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
}

fn labels(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in name.split('.') {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out
}

/// A DNS answer built record by record; owner names are given in wire form so a test can
/// put any compression it likes.
struct Answer {
    msg: Vec<u8>,
    count: u16,
}

impl Answer {
    fn new(qname: &str) -> Self {
        let mut msg = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&labels(qname));
        msg.extend_from_slice(&[0, 1, 0, 1]);
        Self { msg, count: 0 }
    }

    /// A record whose owner is the question's name (a pointer to offset 12).
    fn rr(self, rtype: u16, ttl: u32, rdata: &[u8]) -> Self {
        self.rr_owned(&[0xc0, 12], rtype, ttl, rdata)
    }

    fn rr_owned(mut self, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Self {
        self.msg.extend_from_slice(owner);
        self.msg.extend_from_slice(&rtype.to_be_bytes());
        self.msg.extend_from_slice(&[0, 1]);
        self.msg.extend_from_slice(&ttl.to_be_bytes());
        self.msg
            .extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        self.msg.extend_from_slice(rdata);
        self.count += 1;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut m = self.msg.clone();
        m[6..8].copy_from_slice(&self.count.to_be_bytes());
        m
    }
}

const V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42,
];

fn delta(before: &[u64], after: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// The query `ip` (an answer packet from these helpers) answers: addresses and ports
/// swapped, the message cut to its header and question, QR clear, no records; `None` when
/// the answer's question cannot be read.
fn query_for(ip: &[u8]) -> Option<Vec<u8>> {
    let v6 = ip[0] >> 4 == 6;
    let (l4, proto) = if v6 {
        (40, ip[6])
    } else {
        (usize::from(ip[0] & 0xf) * 4, ip[9])
    };
    let tcp = proto == 6;
    let head = match proto {
        17 => l4 + 8,
        6 => l4 + usize::from(*ip.get(l4 + 12)? >> 4) * 4,
        _ => return None,
    };
    // A TCP header shorter than its minimum (a frame labelled TCP that is not) has no query.
    if head < l4 + 8 || head > ip.len() {
        return None;
    }
    let msg = ip.get(head + if tcp { 2 } else { 0 }..)?;
    let mut off = 12;
    loop {
        let l = usize::from(*msg.get(off)?);
        if l == 0 {
            break;
        }
        if l & 0xc0 != 0 {
            return None;
        }
        off += 1 + l;
    }
    let q_end = off + 5;
    let mut q = msg.get(..q_end)?.to_vec();
    q[2] = 0x01;
    q[3] = 0;
    q[6..12].fill(0);
    let mut p = ip[..head].to_vec();
    let (a, b, n) = if v6 { (8, 24, 16) } else { (12, 16, 4) };
    for i in 0..n {
        p.swap(a + i, b + i);
    }
    for i in 0..2 {
        p.swap(l4 + i, l4 + 2 + i);
    }
    if tcp {
        p.extend_from_slice(&framed(&q));
    } else {
        let udp_len = (8 + q.len()) as u16;
        p[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
        p.extend_from_slice(&q);
    }
    if v6 {
        let len = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&len.to_be_bytes());
    } else {
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
    }
    Some(p)
}

/// Asserts the counters moved by `want` exactly; `queries_recorded` is checked only when
/// `want` names it (the helper [`Loaded::run`] records the query of every answer first).
fn expect_delta(before: &[u64], after: &[u64], want: &[(u32, u64)]) {
    use palisade_common::dnsbind::STAT_QUERIES_RECORDED;
    let mut w = vec![0u64; BIND_STATS_COUNT as usize];
    for &(i, n) in want {
        w[i as usize] = n;
    }
    let mut d = delta(before, after);
    if !want.iter().any(|&(i, _)| i == STAT_QUERIES_RECORDED) {
        d[STAT_QUERIES_RECORDED as usize] = 0;
    }
    assert_eq!(
        d, w,
        "counter movement (answers, malformed, bound, skipped...)"
    );
}

// ---- tests ----

/// A and AAAA records bind their addresses to the receiving socket's cgroup until TTL plus
/// grace; other record types bind nothing; the answer passes.
#[test]
fn answer_binds_a_and_aaaa_until_ttl_plus_grace() {
    let mut l = loaded();
    l.configure(30);
    let a = Answer::new("www.example.test")
        .rr(CNAME, 60, &labels("edge.example.test"))
        .rr(A, 300, &[198, 51, 100, 7])
        .rr(AAAA, 60, &V6);
    let before = l.stats();
    let t0 = boot_ns();
    assert_eq!(l.run(&ip4_udp(53, 40000, &a.bytes())), PASS);
    let t1 = boot_ns();
    expect_delta(
        &before,
        &l.stats(),
        &[(STAT_ANSWERS, 1), (STAT_ADDRS_BOUND, 2)],
    );
    let b = l.bindings();
    assert_eq!(b.len(), 2, "{b:?}");
    let cg = own_cgroup_id();
    let s = 1_000_000_000u64;
    assert_eq!(
        b[0].0,
        BindKey {
            cgroup_id: cg,
            addr: mapped_v4([198, 51, 100, 7])
        }
    );
    assert!(
        (t0 + 330 * s..=t1 + 330 * s).contains(&b[0].1.expires_ns),
        "{b:?}"
    );
    assert_eq!(
        b[1].0,
        BindKey {
            cgroup_id: cg,
            addr: V6
        }
    );
    assert!(
        (t0 + 90 * s..=t1 + 90 * s).contains(&b[1].1.expires_ns),
        "{b:?}"
    );
}

/// The same over IPv6, and a later answer with a shorter TTL does not cut a binding short.
#[test]
fn answer_over_ipv6_and_a_shorter_ttl_keeps_the_longer_binding() {
    let mut l = loaded();
    l.configure(0);
    let long = Answer::new("a.test").rr(A, 3600, &[203, 0, 113, 9]);
    let short = Answer::new("a.test").rr(A, 5, &[203, 0, 113, 9]);
    assert_eq!(l.run(&ip6_udp(53, 40000, &long.bytes())), PASS);
    let first = l.bindings();
    assert_eq!(first.len(), 1);
    assert_eq!(l.run(&ip6_udp(53, 40000, &short.bytes())), PASS);
    assert_eq!(l.bindings(), first, "the longer binding stays");
}

/// Owner names compressed in every legal way (pointers to the question, to an earlier
/// owner, labels ending in a pointer) are skipped to the record's end.
#[test]
fn compressed_owner_names_are_walked() {
    let mut l = loaded();
    l.configure(0);
    let a = Answer::new("www.example.test");
    let first_rr = a.msg.len() as u8;
    let mut owner = vec![3];
    owner.extend_from_slice(b"cdn");
    owner.extend_from_slice(&[0xc0, 16]); // "cdn" + "example.test" of the question
    let a = a
        .rr(A, 60, &[198, 51, 100, 1])
        .rr_owned(&[0xc0, first_rr], A, 60, &[198, 51, 100, 2])
        .rr_owned(&owner, A, 60, &[198, 51, 100, 3])
        .rr_owned(&labels("other.test"), A, 60, &[198, 51, 100, 4]);
    let before = l.stats();
    assert_eq!(l.run(&ip4_udp(53, 40000, &a.bytes())), PASS);
    expect_delta(
        &before,
        &l.stats(),
        &[(STAT_ANSWERS, 1), (STAT_ADDRS_BOUND, 4)],
    );
    let addrs: Vec<[u8; 16]> = l.bindings().iter().map(|(k, _)| k.addr).collect();
    assert_eq!(
        addrs,
        (1..=4)
            .map(|i| mapped_v4([198, 51, 100, i]))
            .collect::<Vec<_>>()
    );
}

/// An answer cut anywhere (inside a header, a name, a record's fixed part or its data)
/// binds nothing and is counted as malformed; the packet still passes.
#[test]
fn truncated_answers_bind_nothing() {
    let mut l = loaded();
    l.configure(0);
    let full = Answer::new("t.test")
        .rr(A, 60, &[198, 51, 100, 1])
        .rr(AAAA, 60, &V6)
        .bytes();
    for cut in 0..full.len() {
        let before = l.stats();
        assert_eq!(l.run(&ip4_udp(53, 40000, &full[..cut])), PASS);
        expect_delta(
            &before,
            &l.stats(),
            &[(STAT_ANSWERS, 1), (STAT_ANSWERS_MALFORMED, 1)],
        );
        assert!(l.bindings().is_empty(), "cut at {cut}");
    }
    // A UDP length that claims less than the packet carries: the message is what UDP says.
    let mut p = ip4_udp(53, 40000, &full);
    let udp_len = (8 + full.len() - 3) as u16;
    p[24..26].copy_from_slice(&udp_len.to_be_bytes());
    let before = l.stats();
    assert_eq!(l.run(&p), PASS);
    expect_delta(
        &before,
        &l.stats(),
        &[(STAT_ANSWERS, 1), (STAT_ANSWERS_MALFORMED, 1)],
    );
    assert!(l.bindings().is_empty());
}

/// Compression pointers that point forward, at themselves, into the header, or loop,
/// end the walk as malformed without binding; the walk always ends.
#[test]
fn bad_compression_pointers_bind_nothing() {
    let mut l = loaded();
    l.configure(0);
    let a = Answer::new("loop.test");
    let rr = a.msg.len();
    for target in [rr as u16, rr as u16 + 1, 0x3fff, 0, 11] {
        let p = [0xc0 | (target >> 8) as u8, target as u8];
        let m = Answer::new("loop.test").rr_owned(&p, A, 60, &[198, 51, 100, 1]);
        let before = l.stats();
        assert_eq!(l.run(&ip4_udp(53, 40000, &m.bytes())), PASS);
        expect_delta(
            &before,
            &l.stats(),
            &[(STAT_ANSWERS, 1), (STAT_ANSWERS_MALFORMED, 1)],
        );
        assert!(l.bindings().is_empty(), "pointer to {target}");
    }
    // The question's name itself is a pointer (there is nothing before it to point to).
    let mut m = Answer::new("x.test").rr(A, 60, &[198, 51, 100, 1]).bytes();
    m.splice(12..20, [0xc0, 12]);
    let before = l.stats();
    assert_eq!(l.run(&ip4_udp(53, 40000, &m)), PASS);
    expect_delta(
        &before,
        &l.stats(),
        &[(STAT_ANSWERS, 1), (STAT_ANSWERS_MALFORMED, 1)],
    );
    // Reserved label types (0x40, 0x80).
    for b in [0x40u8, 0x80] {
        let m = Answer::new("r.test").rr_owned(&[b, 1], A, 60, &[198, 51, 100, 1]);
        assert_eq!(l.run(&ip4_udp(53, 40000, &m.bytes())), PASS);
    }
    assert!(l.bindings().is_empty());
}

/// Queries, answers from other ports, TCP, and error answers bind nothing; the counter of
/// answers moves only for UDP from port 53.
#[test]
fn only_answers_from_port_53_bind() {
    let mut l = loaded();
    l.configure(0);
    let good = Answer::new("p.test").rr(A, 60, &[198, 51, 100, 1]).bytes();
    let before = l.stats();
    assert_eq!(l.run(&ip4_udp(5353, 40000, &good)), PASS);
    expect_delta(&before, &l.stats(), &[]);
    let mut query = good.clone();
    query[2] = 0x01;
    let before = l.stats();
    assert_eq!(l.run(&ip4_udp(53, 40000, &query)), PASS);
    expect_delta(
        &before,
        &l.stats(),
        &[(STAT_ANSWERS, 1), (STAT_ANSWERS_MALFORMED, 1)],
    );
    let mut nx = good.clone();
    nx[3] = 0x83;
    let before = l.stats();
    assert_eq!(l.run(&ip4_udp(53, 40000, &nx)), PASS);
    expect_delta(&before, &l.stats(), &[(STAT_ANSWERS, 1)]);
    // The same bytes labelled TCP (protocol 6; no TCP header where one should be) are not
    // walked.
    let mut tcp = ip4_udp(53, 40000, &good);
    tcp[9] = 6;
    let before = l.stats();
    assert_eq!(l.run(&tcp), PASS);
    expect_delta(&before, &l.stats(), &[]);
    assert!(l.bindings().is_empty());
}

/// More addresses than one answer binds: the first `MAX_BOUND_PER_ANSWER` are bound, the
/// rest counted as skipped (and refused later: fail closed).
#[test]
fn addresses_past_the_per_answer_cap_are_skipped() {
    let mut l = loaded();
    l.configure(0);
    let mut a = Answer::new("many.test");
    for i in 0..(MAX_BOUND_PER_ANSWER as u8 + 5) {
        a = a.rr(A, 60, &[198, 51, 100, i]);
    }
    let before = l.stats();
    assert_eq!(l.run(&ip4_udp(53, 40000, &a.bytes())), PASS);
    expect_delta(
        &before,
        &l.stats(),
        &[
            (STAT_ANSWERS, 1),
            (STAT_ADDRS_BOUND, MAX_BOUND_PER_ANSWER as u64),
            (STAT_ADDRS_SKIPPED, 5),
        ],
    );
    assert_eq!(l.bindings().len(), MAX_BOUND_PER_ANSWER);
}

/// An answer longer than the walked buffer binds what lies whole inside it only if the walk
/// reaches its last record there; a record cut by the buffer's end makes it bind nothing.
#[test]
fn answers_longer_than_the_buffer_bind_nothing_when_cut() {
    let mut l = loaded();
    l.configure(0);
    let mut a = Answer::new("big.test");
    // TXT records fill the message past ANSWER_BUF, then one A.
    let filler = [b'x'; 200];
    while a.msg.len() < ANSWER_BUF + 100 {
        a = a.rr(16, 60, &filler);
    }
    a = a.rr(A, 60, &[198, 51, 100, 1]);
    let before = l.stats();
    assert_eq!(l.run(&ip4_udp(53, 40000, &a.bytes())), PASS);
    expect_delta(
        &before,
        &l.stats(),
        &[(STAT_ANSWERS, 1), (STAT_ANSWERS_MALFORMED, 1)],
    );
    assert!(l.bindings().is_empty());
}

/// With resolver pinning on, only answers whose source is a configured resolver bind
/// (IPv4 and IPv6 sources, prefixes matched as in the kernel's trie); an answer from any
/// other source passes unbound and is counted as `answers_unpinned`.
#[test]
fn answers_bind_only_from_the_pinned_resolvers() {
    fn pin(l: &mut Loaded, resolvers: &[&str]) {
        let b = DnsBind {
            grace_secs: 0,
            resolvers: resolvers.iter().map(|r| parse_cidr(r).unwrap()).collect(),
            doh_endpoints: vec![parse_cidr("192.0.2.80/28").unwrap()],
            ..DnsBind::default()
        };
        dnsbind::write_config(&mut l.ebpf, Some(&b)).unwrap();
    }
    let mut l = loaded();
    // The crafted packets come from 10.1.0.53 (IPv4) and fd00::53 (IPv6).
    pin(&mut l, &["10.1.0.54", "fd00::54"]);
    l.clear();
    let a = Answer::new("pinned.test").rr(A, 60, &[198, 51, 100, 20]);
    let a6 = Answer::new("pinned.test").rr(AAAA, 60, &V6);
    let before = l.stats();
    assert_eq!(l.run(&ip4_udp(53, 40000, &a.bytes())), PASS);
    assert_eq!(l.run(&ip6_udp(53, 40000, &a6.bytes())), PASS);
    expect_delta(
        &before,
        &l.stats(),
        &[(STAT_ANSWERS, 2), (STAT_ANSWERS_UNPINNED, 2)],
    );
    assert!(l.bindings().is_empty(), "{:?}", l.bindings());

    pin(&mut l, &["10.1.0.0/24", "fd00::53"]);
    let before = l.stats();
    assert_eq!(l.run(&ip4_udp(53, 40000, &a.bytes())), PASS);
    assert_eq!(l.run(&ip6_udp(53, 40000, &a6.bytes())), PASS);
    expect_delta(
        &before,
        &l.stats(),
        &[(STAT_ANSWERS, 2), (STAT_ADDRS_BOUND, 2)],
    );
    let b: Vec<[u8; 16]> = l.bindings().iter().map(|(k, _)| k.addr).collect();
    assert_eq!(b, [mapped_v4([198, 51, 100, 20]), V6]);

    // Pinning off again (no `resolvers`): every answer from port 53 binds.
    pin(&mut l, &[]);
    let cfg: Array<&MapData, BindConfig> =
        Array::try_from(l.ebpf.map("BIND_CONFIG").unwrap()).unwrap();
    assert_eq!(cfg.get(&0, 0).unwrap().pinned, 0);
    l.clear();
    let before = l.stats();
    assert_eq!(l.run(&ip4_udp(53, 40000, &a.bytes())), PASS);
    expect_delta(
        &before,
        &l.stats(),
        &[(STAT_ANSWERS, 1), (STAT_ADDRS_BOUND, 1)],
    );
}

/// Without `[dns.bind]` the program binds nothing and counts nothing.
#[test]
fn without_bind_settings_nothing_is_bound() {
    let mut l = loaded();
    dnsbind::write_config(&mut l.ebpf, None).unwrap();
    l.clear();
    let cfg: Array<&MapData, BindConfig> =
        Array::try_from(l.ebpf.map("BIND_CONFIG").unwrap()).unwrap();
    assert_eq!(cfg.get(&0, 0).unwrap().enabled, 0);
    let a = Answer::new("off.test").rr(A, 60, &[198, 51, 100, 1]);
    let before = l.stats();
    assert_eq!(l.run(&ip4_udp(53, 40000, &a.bytes())), PASS);
    expect_delta(&before, &l.stats(), &[]);
    assert!(l.bindings().is_empty());
}

/// The kernel walk and the userspace reference (`palisade_common::dnsbind::walk`) agree on
/// every cut of a varied answer: same addresses bound, same malformed verdict.
#[test]
fn kernel_and_reference_agree_on_every_cut() {
    let mut l = loaded();
    l.configure(0);
    let full = Answer::new("www.example.test")
        .rr(CNAME, 60, &labels("x.example.test"))
        .rr_owned(&labels("x.example.test"), A, 60, &[198, 51, 100, 1])
        .rr(AAAA, 60, &V6)
        .rr(A, 60, &[198, 51, 100, 2])
        .bytes();
    for cut in 0..=full.len() {
        l.clear();
        let msg = &full[..cut];
        assert_eq!(l.run(&ip4_udp(53, 40000, msg)), PASS);
        let mut buf = [0u8; ANSWER_BUF];
        buf[..cut].copy_from_slice(msg);
        let w = palisade_common::dnsbind::walk(&buf, cut);
        let want: Vec<[u8; 16]> = if w.state == palisade_common::dnsbind::WALK_DONE {
            let mut v: Vec<[u8; 16]> = w.found[..w.found_len as usize]
                .iter()
                .map(|f| f.addr)
                .collect();
            v.sort_unstable();
            v
        } else {
            Vec::new()
        };
        let got: Vec<[u8; 16]> = l.bindings().iter().map(|(k, _)| k.addr).collect();
        assert_eq!(got, want, "cut at {cut}");
    }
}

// ---- answer checks (CNAME cloaking) ----

const BLOCKLIST: &str = r#"
[dns.egress]
mode = "blocklist"
lists = ["trackers"]
cgroups = ["/sys/fs/cgroup/unified"]

[dns.lists.trackers]
names = ["tracker.test", "*.ads.test"]

[dns.bind]
cgroups = ["/sys/fs/cgroup/unified"]
grace = 0
"#;

impl Loaded {
    /// Installs a whole policy (DNS lists included), then clears the bindings.
    fn install(&mut self, toml: &str) {
        let p = palisade::policy::config::parse_policy(toml, "p.toml", std::path::Path::new("/"))
            .expect("test policy");
        palisade::guard::install(&mut self.ebpf, &p).expect("install");
        self.clear();
    }

    fn reason_count(&self, r: u32) -> u64 {
        palisade::testrun::sum_counter(&self.ebpf, "REASON_STATS", r).unwrap()
    }

    fn dropped(&self) -> u64 {
        palisade::testrun::sum_counter(&self.ebpf, "STATS", palisade_common::stats::DROPPED)
            .unwrap()
    }
}

/// Runs `a` and checks it is dropped for `why` (counted once, nothing bound), or passed and
/// bound (`why` = PASS).
fn expect_answer(l: &Loaded, a: &Answer, why: u32) {
    let before = l.stats();
    let reasons_before = l.reason_count(why);
    let dropped_before = l.dropped();
    let verdict = l.run(&ip4_udp(53, 40000, &a.bytes()));
    let after = l.stats();
    if why == palisade_common::reason::PASS {
        assert_eq!(verdict, PASS);
        assert_eq!(
            after[STAT_ANSWERS_REFUSED as usize],
            before[STAT_ANSWERS_REFUSED as usize]
        );
        assert!(!l.bindings().is_empty(), "the answer's address is bound");
    } else {
        assert_eq!(verdict, 0, "dropped");
        expect_delta(
            &before,
            &after,
            &[(STAT_ANSWERS, 1), (STAT_ANSWERS_REFUSED, 1)],
        );
        assert_eq!(l.reason_count(why), reasons_before + 1);
        assert_eq!(l.dropped(), dropped_before + 1, "counted with every drop");
        assert!(
            l.bindings().is_empty(),
            "nothing of a refused answer is bound"
        );
    }
}

/// Under a `[dns.egress]` blocklist, a CNAME to a listed name (however it is compressed),
/// or an address owned by one, refuses the answer; an unlisted chain passes and binds.
#[test]
fn cname_to_a_blocked_name_refuses_the_answer() {
    use palisade_common::reason::{DNS_ANSWER_BLOCKED, PASS as OK};
    let mut l = loaded();
    l.install(BLOCKLIST);
    // Allowed name, CNAME to an exact entry.
    let a = Answer::new("www.shop.test")
        .rr(CNAME, 60, &labels("tracker.test"))
        .rr_owned(&labels("tracker.test"), A, 60, &[198, 51, 100, 1]);
    expect_answer(&l, &a, DNS_ANSWER_BLOCKED);
    // A CNAME target compressed into the question's name: "x" + pointer to "ads.test" of
    // the question `ads.test` (the apex is not listed, `x.ads.test` is).
    let a = Answer::new("ads.test")
        .rr(CNAME, 60, &[1, b'x', 0xc0, 12])
        .rr(A, 60, &[198, 51, 100, 2]);
    expect_answer(&l, &a, DNS_ANSWER_BLOCKED);
    // Letter case does not hide it.
    let a = Answer::new("www.shop.test").rr(CNAME, 60, &labels("TRACKER.Test"));
    expect_answer(&l, &a, DNS_ANSWER_BLOCKED);
    // An address owned by a listed name, no CNAME.
    let a = Answer::new("www.shop.test").rr_owned(&labels("y.ads.test"), A, 60, &[198, 51, 100, 3]);
    expect_answer(&l, &a, DNS_ANSWER_BLOCKED);
    // Unlisted all along: passes and binds.
    let a = Answer::new("www.shop.test")
        .rr(CNAME, 60, &labels("edge.cdn.test"))
        .rr_owned(&labels("edge.cdn.test"), A, 60, &[198, 51, 100, 4]);
    expect_answer(&l, &a, OK);
    l.install("");
}

/// Chains of up to 8 CNAME hops are followed to their end; a longer chain is refused.
#[test]
fn cname_chains_are_followed_up_to_8_hops() {
    use palisade_common::reason::{DNS_ANSWER_BLOCKED, DNS_ANSWER_CHAIN, PASS as OK};
    let mut l = loaded();
    l.install(BLOCKLIST);
    // As resolvers write them: each record's owner is a pointer to the previous target.
    let chain = |hops: usize, last: &str| {
        let mut a = Answer::new("start.test");
        let mut owner = vec![0xc0, 12];
        for k in 1..=hops {
            let target = if k == hops {
                last.to_owned()
            } else {
                format!("hop{k}.test")
            };
            let at = a.msg.len() + owner.len() + 10;
            a = a.rr_owned(&owner, CNAME, 60, &labels(&target));
            owner = vec![0xc0 | (at >> 8) as u8, at as u8];
        }
        a.rr_owned(&owner, A, 60, &[198, 51, 100, 9])
    };
    expect_answer(&l, &chain(8, "end.test"), OK);
    l.clear();
    expect_answer(&l, &chain(8, "z.ads.test"), DNS_ANSWER_BLOCKED);
    expect_answer(&l, &chain(9, "end.test"), DNS_ANSWER_CHAIN);
    l.install("");
}

/// Under an allowlist (or without `[dns.egress]`) the question decided on the way out:
/// answer names are not checked.
#[test]
fn answer_names_are_checked_only_under_a_blocklist() {
    let mut l = loaded();
    l.install(&BLOCKLIST.replace("blocklist", "allowlist"));
    let a = Answer::new("www.shop.test")
        .rr(CNAME, 60, &labels("tracker.test"))
        .rr_owned(&labels("tracker.test"), A, 60, &[198, 51, 100, 1]);
    expect_answer(&l, &a, palisade_common::reason::PASS);
    l.install("[dns.bind]\ncgroups = [\"/x\"]\ngrace = 0\n");
    expect_answer(&l, &a, palisade_common::reason::PASS);
    l.install("");
}

// ---- rebinding protection ----

const REBINDING: &str = r#"
[dns.bind]
cgroups = ["/sys/fs/cgroup/unified"]
grace = 0
rebinding = "refuse"
rebinding_allow = ["nas.home.test", "*.corp.test"]
"#;

/// Runs `a` and checks it is refused by rebinding protection (every counter that moves,
/// the reason, nothing bound) or passed with its addresses bound.
fn expect_rebinding(l: &mut Loaded, a: &Answer, refused: bool, what: &str) {
    use palisade_common::{dnsbind::STAT_ANSWERS_REBINDING, reason::DNS_REBINDING};
    l.clear();
    let before = l.stats();
    let reasons_before = l.reason_count(DNS_REBINDING);
    let dropped_before = l.dropped();
    let verdict = l.run(&ip4_udp(53, 40000, &a.bytes()));
    let after = l.stats();
    if refused {
        assert_eq!(verdict, 0, "{what}: dropped");
        expect_delta(
            &before,
            &after,
            &[
                (STAT_ANSWERS, 1),
                (STAT_ANSWERS_REFUSED, 1),
                (STAT_ANSWERS_REBINDING, 1),
            ],
        );
        assert_eq!(l.reason_count(DNS_REBINDING), reasons_before + 1, "{what}");
        assert_eq!(
            l.dropped(),
            dropped_before + 1,
            "{what}: counted as dropped"
        );
        assert!(l.bindings().is_empty(), "{what}: nothing bound");
    } else {
        assert_eq!(verdict, PASS, "{what}: passes");
        let bound = l.bindings().len();
        assert!(bound > 0, "{what}: bound");
        expect_delta(
            &before,
            &after,
            &[(STAT_ANSWERS, 1), (STAT_ADDRS_BOUND, bound as u64)],
        );
        assert_eq!(l.reason_count(DNS_REBINDING), reasons_before, "{what}");
    }
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// With `rebinding = "refuse"`, an answer with a private address (any family, any form,
/// anywhere in the answer) is dropped unless its question is on `rebinding_allow`, matched
/// as DNS lists match (exact, `*.` below, case folded); a CNAME to an allowed name does not
/// make a public name allowed. Public addresses pass and bind.
#[test]
fn rebinding_answers_are_refused_unless_the_question_is_allowed() {
    let mut l = loaded();
    l.install(REBINDING);
    let private4: [[u8; 4]; 9] = [
        [10, 0, 0, 5],
        [127, 0, 0, 1],
        [172, 16, 3, 4],
        [172, 31, 255, 255],
        [192, 168, 1, 1],
        [169, 254, 169, 254],
        [100, 64, 0, 1],
        [0, 0, 0, 0],
        [0, 1, 2, 3],
    ];
    for addr in private4 {
        let a = Answer::new("www.public.test").rr(A, 60, &addr);
        expect_rebinding(&mut l, &a, true, &format!("A {addr:?}"));
    }
    for s in [
        "fd00::1",
        "fc12::1",
        "fe80::1",
        "::1",
        "::",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
    ] {
        let a = Answer::new("www.public.test").rr(AAAA, 60, &v6(s));
        expect_rebinding(&mut l, &a, true, &format!("AAAA {s}"));
    }
    // One private record among public ones refuses the whole answer, also past the cap of
    // bound addresses.
    let a = Answer::new("www.public.test")
        .rr(A, 60, &[198, 51, 100, 1])
        .rr(A, 60, &[10, 9, 9, 9]);
    expect_rebinding(&mut l, &a, true, "mixed");
    let mut a = Answer::new("www.public.test");
    for i in 0..MAX_BOUND_PER_ANSWER {
        a = a.rr(A, 60, &[198, 51, 100, i as u8]);
    }
    let a = a.rr(A, 60, &[192, 168, 0, 1]);
    expect_rebinding(&mut l, &a, true, "private past the cap");
    // A CNAME from a public name to an allowed one is the rebinding itself.
    let a = Answer::new("evil.test")
        .rr(CNAME, 60, &labels("nas.home.test"))
        .rr_owned(&labels("nas.home.test"), A, 60, &[192, 168, 1, 10]);
    expect_rebinding(&mut l, &a, true, "CNAME to an allowed name");
    // The apex of a `*.` entry is not below it; a name above an exact entry is not it.
    for q in ["corp.test", "home.test", "x.nas.home.test"] {
        let a = Answer::new(q).rr(A, 60, &[10, 1, 1, 1]);
        expect_rebinding(&mut l, &a, true, q);
    }
    // Public addresses pass and bind, whatever the name.
    let a = Answer::new("www.public.test")
        .rr(A, 60, &[198, 51, 100, 1])
        .rr(AAAA, 60, &V6)
        .rr(A, 60, &[172, 32, 0, 1])
        .rr(A, 60, &[100, 128, 0, 1]);
    expect_rebinding(&mut l, &a, false, "public");
    // Allowed names may carry private addresses, in any letter case, also behind a CNAME.
    for q in [
        "nas.home.test",
        "NAS.Home.TEST",
        "printer.corp.test",
        "a.b.corp.test",
    ] {
        let a = Answer::new(q)
            .rr(A, 60, &[192, 168, 1, 10])
            .rr(AAAA, 60, &v6("fd00::10"));
        expect_rebinding(&mut l, &a, false, q);
    }
    let a = Answer::new("git.corp.test")
        .rr(CNAME, 60, &labels("git.internal"))
        .rr_owned(&labels("git.internal"), A, 60, &[10, 2, 2, 2]);
    expect_rebinding(
        &mut l,
        &a,
        false,
        "allowed question, CNAME to an unlisted name",
    );
    // `rebinding` left out: private addresses bind as any other.
    l.install(&REBINDING.replace(
        "rebinding = \"refuse\"\nrebinding_allow = [\"nas.home.test\", \"*.corp.test\"]\n",
        "",
    ));
    let a = Answer::new("www.public.test").rr(A, 60, &[10, 0, 0, 5]);
    expect_rebinding(&mut l, &a, false, "protection off");
    l.install("");
}

/// The kernel flags exactly the addresses the shared reference calls private: around the
/// edges of every range, in both families.
#[test]
fn kernel_and_reference_agree_on_private_addresses() {
    use palisade_common::dnsbind::{is_private, is_private_v4};
    let mut l = loaded();
    l.install(REBINDING);
    let mut v4: Vec<[u8; 4]> = Vec::new();
    for (a, b) in [
        (0u8, 0u8),
        (9, 255),
        (10, 0),
        (11, 0),
        (100, 63),
        (100, 64),
        (100, 127),
        (100, 128),
        (126, 255),
        (127, 0),
        (128, 0),
        (169, 253),
        (169, 254),
        (169, 255),
        (172, 15),
        (172, 16),
        (172, 31),
        (172, 32),
        (192, 167),
        (192, 168),
        (192, 169),
        (203, 0),
    ] {
        v4.push([a, b, 0, 0]);
        v4.push([a, b, 255, 255]);
    }
    for addr in &v4 {
        let a = Answer::new("www.public.test").rr(A, 60, addr);
        expect_rebinding(&mut l, &a, is_private_v4(*addr), &format!("A {addr:?}"));
    }
    for s in [
        "fbff:ffff::1",
        "fc00::",
        "fdff:ffff::",
        "fe00::",
        "fe7f::1",
        "fe80::",
        "febf::1",
        "fec0::",
        "::2",
        "::ffff:172.32.0.1",
        "::ffff:172.31.0.1",
        "::100.64.0.1",
        "2001:db8::",
    ] {
        let a = Answer::new("www.public.test").rr(AAAA, 60, &v6(s));
        expect_rebinding(&mut l, &a, is_private(&v6(s)), &format!("AAAA {s}"));
    }
    l.install("");
}

// ---- DNS over TCP ----

/// An IPv4 TCP segment (ACK|PSH) with `options` (a multiple of 4 bytes) and `data`.
fn ip4_tcp(sport: u16, dport: u16, options: &[u8], data: &[u8]) -> Vec<u8> {
    let tcp_len = 20 + options.len() + data.len();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0, 10, 1, 0, 53, 10, 1, 2, 3]);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0x20, 0]);
    p.push((((20 + options.len()) / 4) as u8) << 4);
    p.extend_from_slice(&[0x18, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(options);
    p.extend_from_slice(data);
    p
}

/// A DNS message as TCP carries it: its length in two bytes, then the message.
fn framed(msg: &[u8]) -> Vec<u8> {
    let mut v = (msg.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(msg);
    v
}

/// A TCP segment from port 53 whose data is exactly one length-prefixed answer is walked
/// and binds (with or without TCP options); a handshake or bare ACK counts nothing; other
/// ports are not looked at.
#[test]
fn tcp_answers_in_one_segment_bind() {
    use palisade_common::dnsbind::STAT_ANSWERS_TCP;
    let mut l = loaded();
    l.configure(0);
    let a = Answer::new("tcp.test")
        .rr(A, 60, &[198, 51, 100, 31])
        .rr(AAAA, 60, &V6)
        .bytes();
    let ts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    for options in [&[][..], &ts[..]] {
        l.clear();
        let before = l.stats();
        assert_eq!(l.run(&ip4_tcp(53, 40000, options, &framed(&a))), PASS);
        expect_delta(
            &before,
            &l.stats(),
            &[
                (STAT_ANSWERS, 1),
                (STAT_ANSWERS_TCP, 1),
                (STAT_ADDRS_BOUND, 2),
            ],
        );
        let got: Vec<[u8; 16]> = l.bindings().iter().map(|(k, _)| k.addr).collect();
        assert_eq!(got, [mapped_v4([198, 51, 100, 31]), V6]);
    }
    l.clear();
    // No data: a handshake or a bare ACK.
    let before = l.stats();
    assert_eq!(l.run(&ip4_tcp(53, 40000, &ts, &[])), PASS);
    expect_delta(&before, &l.stats(), &[]);
    // Several messages in one segment and messages split across segments:
    // `tcp_answers_several_per_segment_and_split_bind`.
    // Not from port 53.
    let before = l.stats();
    assert_eq!(l.run(&ip4_tcp(853, 40000, &ts, &framed(&a))), PASS);
    assert_eq!(l.run(&ip4_tcp(40000, 53, &ts, &framed(&a))), PASS);
    expect_delta(&before, &l.stats(), &[]);
    assert!(l.bindings().is_empty());
    // A bad data offset (below 20 bytes, or past the segment) is no answer.
    let mut bad = ip4_tcp(53, 40000, &[], &framed(&a));
    bad[32] = 0x40;
    let short = ip4_tcp(53, 40000, &[], &[]);
    let mut short_past = short.clone();
    short_past[32] = 0x60;
    let before = l.stats();
    for p in [&bad, &short_past] {
        assert_eq!(l.run(p), PASS);
    }
    expect_delta(&before, &l.stats(), &[]);
    assert!(l.bindings().is_empty());
}

/// The answer checks apply to TCP answers as to UDP ones: a rebinding answer in one
/// segment is dropped.
#[test]
fn tcp_answers_are_checked_for_rebinding() {
    use palisade_common::{
        dnsbind::{STAT_ANSWERS_REBINDING, STAT_ANSWERS_TCP},
        reason::DNS_REBINDING,
    };
    let mut l = loaded();
    l.install(REBINDING);
    let a = Answer::new("www.public.test")
        .rr(A, 60, &[10, 0, 0, 5])
        .bytes();
    let before = l.stats();
    let reasons = l.reason_count(DNS_REBINDING);
    assert_eq!(l.run(&ip4_tcp(53, 40000, &[], &framed(&a))), 0, "dropped");
    expect_delta(
        &before,
        &l.stats(),
        &[
            (STAT_ANSWERS, 1),
            (STAT_ANSWERS_TCP, 1),
            (STAT_ANSWERS_REFUSED, 1),
            (STAT_ANSWERS_REBINDING, 1),
        ],
    );
    assert_eq!(l.reason_count(DNS_REBINDING), reasons + 1);
    assert!(l.bindings().is_empty());
    l.install("");
}

// ---- answers matched to queries ----

/// The pending-query key the reference builds for a query of `qname` (type A, class IN)
/// with id 0x1234 from 10.1.2.3:`local_port` to 10.1.0.53:53 over `proto`.
fn reference_key(qname: &str, local_port: u16, proto: u8) -> QueryKey {
    use palisade_common::dnsbind::{QUERY_BUF, query_question_end, question_hash};
    let mut q = [0u8; QUERY_BUF];
    let mut m = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&labels(qname));
    m.extend_from_slice(&[0, 1, 0, 1]);
    q[..m.len()].copy_from_slice(&m);
    let end = query_question_end(&q, m.len()).expect("a query");
    QueryKey {
        cgroup_id: own_cgroup_id(),
        question: question_hash(&q, 12, end - 12),
        resolver: mapped_v4([10, 1, 0, 53]),
        resolver_port: 53,
        local_port,
        id: 0x1234,
        proto,
        _pad: 0,
    }
}

/// A query (the header of `Answer::new`'s id, QR clear) for `qname` from port `sport` to
/// 10.1.0.53:53.
fn query4(qname: &str, sport: u16) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&labels(qname));
    m.extend_from_slice(&[0, 1, 0, 1]);
    let mut p = ip4_udp(sport, 53, &m);
    // From 10.1.2.3 to 10.1.0.53.
    for i in 0..4 {
        p.swap(12 + i, 16 + i);
    }
    p
}

/// An answer binds only when it answers a pending query of the cgroup: the query program
/// records (cgroup, resolver address and port, local port, id, question hash, protocol) as
/// the reference computes it; the matched answer binds and consumes it; a second copy, a
/// wrong id, local port, resolver address or question, or a query older than the window
/// binds nothing and the UDP answer is dropped (`answers_unsolicited`, reason
/// `dns-answer-unsolicited`); the question matches case-folded.
#[test]
fn answers_bind_only_when_they_answer_a_recorded_query() {
    use palisade_common::{
        dnsbind::{QUERY_WINDOW_NS, STAT_ANSWERS_UNSOLICITED, STAT_QUERIES_RECORDED},
        reason::DNS_ANSWER_UNSOLICITED,
    };
    let mut l = loaded();
    l.install("");
    l.configure(0);
    let ans = Answer::new("match.test").rr(A, 60, &[198, 51, 100, 7]);
    let answer = ip4_udp(53, 40000, &ans.bytes());
    let bound = [mapped_v4([198, 51, 100, 7])];
    let addrs =
        |l: &Loaded| -> Vec<[u8; 16]> { l.bindings().iter().map(|(k, _)| k.addr).collect() };

    // The query is recorded under the reference's key.
    let before = l.stats();
    assert_eq!(l.run_query(&query4("match.test", 40000)), PASS);
    expect_delta(&before, &l.stats(), &[(STAT_QUERIES_RECORDED, 1)]);
    let q = l.queries();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0, reference_key("match.test", 40000, 17));
    assert!(boot_ns() - q[0].1.sent_ns < 10_000_000_000);

    // The matched answer binds and consumes the query.
    let before = l.stats();
    assert_eq!(l.run_answer(&answer), PASS);
    expect_delta(
        &before,
        &l.stats(),
        &[(STAT_ANSWERS, 1), (STAT_ADDRS_BOUND, 1)],
    );
    assert_eq!(addrs(&l), bound);
    assert!(l.queries().is_empty(), "consumed");

    // A second copy binds nothing and is dropped.
    l.clear();
    let reasons = l.reason_count(DNS_ANSWER_UNSOLICITED);
    let before = l.stats();
    assert_eq!(l.run_answer(&answer), 0, "dropped");
    expect_delta(
        &before,
        &l.stats(),
        &[(STAT_ANSWERS, 1), (STAT_ANSWERS_UNSOLICITED, 1)],
    );
    assert_eq!(l.reason_count(DNS_ANSWER_UNSOLICITED), reasons + 1);
    assert!(l.bindings().is_empty());

    // Wrong id, wrong local port, wrong resolver address, wrong question: none matches the
    // pending query, which stays for the right answer.
    let mut wrong_id = answer.clone();
    wrong_id[28] ^= 0x01;
    let wrong_port = ip4_udp(53, 40001, &ans.bytes());
    let mut wrong_resolver = answer.clone();
    wrong_resolver[15] = 54;
    let wrong_question = ip4_udp(
        53,
        40000,
        &Answer::new("other.test")
            .rr(A, 60, &[198, 51, 100, 7])
            .bytes(),
    );
    let mut wrong_type = answer.clone();
    // The question's type (A -> AAAA): qname "match.test" is 12 bytes from offset 12.
    wrong_type[28 + 12 + 12 + 1] = 28;
    assert_eq!(l.run_query(&query4("match.test", 40000)), PASS);
    for (what, p) in [
        ("id", &wrong_id),
        ("local port", &wrong_port),
        ("resolver", &wrong_resolver),
        ("question", &wrong_question),
        ("question type", &wrong_type),
    ] {
        let before = l.stats();
        assert_eq!(l.run_answer(p), 0, "wrong {what}: dropped");
        expect_delta(
            &before,
            &l.stats(),
            &[(STAT_ANSWERS, 1), (STAT_ANSWERS_UNSOLICITED, 1)],
        );
        assert!(l.bindings().is_empty(), "wrong {what}: nothing bound");
        assert_eq!(
            l.queries().len(),
            1,
            "wrong {what}: the query stays pending"
        );
    }
    assert_eq!(l.run_answer(&answer), PASS);
    assert_eq!(addrs(&l), bound);

    // The question matches case-folded (resolvers echo 0x20-randomised case).
    l.clear();
    assert_eq!(l.run_query(&query4("MaTcH.TeSt", 40000)), PASS);
    assert_eq!(l.queries()[0].0, reference_key("match.test", 40000, 17));
    assert_eq!(l.run_answer(&answer), PASS);
    assert_eq!(addrs(&l), bound);

    // A query older than the window does not match.
    l.clear();
    {
        let mut m: HashMap<&mut MapData, QueryKey, QueryValue> =
            HashMap::try_from(l.ebpf.map_mut("BIND_QUERIES").unwrap()).unwrap();
        let sent_ns = boot_ns() - QUERY_WINDOW_NS - 1_000_000_000;
        m.insert(
            reference_key("match.test", 40000, 17),
            QueryValue { sent_ns },
            0,
        )
        .unwrap();
    }
    assert_eq!(l.run_answer(&answer), 0, "too late: dropped");
    assert!(l.bindings().is_empty());

    // An error answer (NXDOMAIN) is matched too: unsolicited, it is dropped; solicited, it
    // passes and binds nothing.
    let mut nx = Answer::new("match.test").bytes();
    nx[3] = 0x83;
    let before = l.stats();
    assert_eq!(l.run_answer(&ip4_udp(53, 40000, &nx)), 0);
    assert_eq!(l.run(&ip4_udp(53, 40000, &nx)), PASS);
    expect_delta(
        &before,
        &l.stats(),
        &[(STAT_ANSWERS, 2), (STAT_ANSWERS_UNSOLICITED, 1)],
    );

    // Over TCP an unsolicited answer passes (dropping a segment stalls the stream) and
    // binds nothing.
    l.clear();
    let before = l.stats();
    assert_eq!(
        l.run_answer(&ip4_tcp(53, 40000, &[], &framed(&ans.bytes()))),
        PASS
    );
    expect_delta(
        &before,
        &l.stats(),
        &[
            (STAT_ANSWERS, 1),
            (palisade_common::dnsbind::STAT_ANSWERS_TCP, 1),
            (STAT_ANSWERS_UNSOLICITED, 1),
        ],
    );
    assert!(l.bindings().is_empty());
    // A UDP query does not match a TCP answer, nor a TCP query a UDP one.
    assert_eq!(l.run_query(&query4("match.test", 40000)), PASS);
    assert_eq!(
        l.run_answer(&ip4_tcp(53, 40000, &[], &framed(&ans.bytes()))),
        PASS
    );
    assert!(l.bindings().is_empty());
    assert_eq!(l.queries().len(), 1);
}

/// What the query program records: queries to port 53 only; not answers sent to port 53;
/// a question it cannot parse (compressed) is counted as `queries_unrecorded`; every whole
/// query of a TCP segment (two pipelined in one), and a query split after its question.
#[test]
fn queries_are_recorded_from_udp_and_tcp() {
    use palisade_common::dnsbind::{STAT_QUERIES_RECORDED, STAT_QUERIES_UNRECORDED};
    let mut l = loaded();
    l.install("");
    l.configure(0);
    let mut other_port = query4("a.test", 40000);
    other_port[22..24].copy_from_slice(&5353u16.to_be_bytes());
    let mut answer_to_53 = query4("a.test", 40000);
    answer_to_53[30] |= 0x80;
    let before = l.stats();
    assert_eq!(l.run_query(&other_port), PASS);
    assert_eq!(l.run_query(&answer_to_53), PASS);
    expect_delta(&before, &l.stats(), &[]);
    assert!(l.queries().is_empty());
    // A compressed question.
    let m = [
        0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
    ];
    let mut p = ip4_udp(40000, 53, &m);
    for i in 0..4 {
        p.swap(12 + i, 16 + i);
    }
    let before = l.stats();
    assert_eq!(l.run_query(&p), PASS);
    expect_delta(&before, &l.stats(), &[(STAT_QUERIES_UNRECORDED, 1)]);
    assert!(l.queries().is_empty());

    // Two queries pipelined in one TCP segment, and a third split after its question.
    let q = |name: &str, id: u8| {
        let mut m = vec![0x12, id, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        m.extend_from_slice(&labels(name));
        m.extend_from_slice(&[0, 1, 0, 1]);
        // An EDNS OPT record after the question.
        m.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        framed(&m)
    };
    let mut data = q("one.test", 1);
    data.extend_from_slice(&q("two.test", 2));
    let third = q("three.test", 3);
    data.extend_from_slice(&third[..third.len() - 5]);
    let mut seg = ip4_tcp(40000, 53, &[], &data);
    for i in 0..4 {
        seg.swap(12 + i, 16 + i);
    }
    let before = l.stats();
    assert_eq!(l.run_query(&seg), PASS);
    expect_delta(&before, &l.stats(), &[(STAT_QUERIES_RECORDED, 3)]);
    let mut got: Vec<(u16, u8, u16)> = l
        .queries()
        .iter()
        .map(|(k, _)| (k.id, k.proto, k.local_port))
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        [(0x1201, 6, 40000), (0x1202, 6, 40000), (0x1203, 6, 40000)]
    );
    let mut want = reference_key("two.test", 40000, 6);
    want.id = 0x1202;
    assert!(l.queries().iter().any(|(k, _)| *k == want));
}

/// An IPv4 TCP segment from 10.1.0.53:53 to 10.1.2.3:40000 at sequence number `seq`.
fn tcp_at(seq: u32, data: &[u8]) -> Vec<u8> {
    let mut p = ip4_tcp(53, 40000, &[], data);
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Records the TCP query `msg` answers.
fn record_tcp(l: &Loaded, msg: &[u8]) {
    let q = query_for(&ip4_tcp(53, 40000, &[], &framed(msg))).expect("a question");
    assert_eq!(l.run_query(&q), PASS);
}

/// Several messages in one TCP segment, and a message split across segments: up to
/// `MAX_TCP_MESSAGES` whole messages of a segment are walked (more are counted as
/// `answers_tcp_unwalked`); a message that does not end in its segment is kept and walked
/// when the next segment in sequence completes it, whatever the cut (in the header, the
/// question, a record), over two or three segments, with a whole message after it; a
/// retransmission of its first part changes nothing; a segment out of sequence forgets it
/// (nothing bound); a length prefix split between segments is not followed.
#[test]
fn tcp_answers_several_per_segment_and_split_bind() {
    use palisade_common::dnsbind::{
        MAX_TCP_MESSAGES, STAT_ANSWERS_TCP, STAT_ANSWERS_TCP_PARTIAL, STAT_ANSWERS_TCP_UNWALKED,
    };
    let mut l = loaded();
    l.install("");
    l.configure(0);
    let msg = |i: u8| {
        Answer::new(&format!("m{i}.tcp.test"))
            .rr(A, 60, &[198, 51, 100, i])
            .bytes()
    };
    let addrs =
        |l: &Loaded| -> Vec<[u8; 16]> { l.bindings().iter().map(|(k, _)| k.addr).collect() };

    // Five messages in one segment: the first four bind.
    let mut data = Vec::new();
    for i in 1..=5 {
        record_tcp(&l, &msg(i));
        data.extend_from_slice(&framed(&msg(i)));
    }
    let before = l.stats();
    assert_eq!(l.run_answer(&tcp_at(1000, &data)), PASS);
    let walked = MAX_TCP_MESSAGES as u64;
    expect_delta(
        &before,
        &l.stats(),
        &[
            (STAT_ANSWERS, walked),
            (STAT_ANSWERS_TCP, walked),
            (STAT_ADDRS_BOUND, walked),
            (STAT_ANSWERS_TCP_UNWALKED, 1),
        ],
    );
    let want: Vec<[u8; 16]> = (1..=4).map(|i| mapped_v4([198, 51, 100, i])).collect();
    assert_eq!(addrs(&l), want);

    // A message split at every kind of place, then completed by the next segment, which
    // also holds a whole message.
    let one = framed(&msg(10));
    for cut in [2, 3, 7, 14, 20, 30, one.len() - 1] {
        l.clear();
        record_tcp(&l, &msg(10));
        record_tcp(&l, &msg(11));
        let before = l.stats();
        assert_eq!(l.run_answer(&tcp_at(5000, &one[..cut])), PASS);
        expect_delta(&before, &l.stats(), &[(STAT_ANSWERS_TCP_PARTIAL, 1)]);
        assert!(l.bindings().is_empty(), "cut {cut}: not yet");
        // The first part again (a retransmission): nothing changes.
        let before = l.stats();
        assert_eq!(l.run_answer(&tcp_at(5000, &one[..cut])), PASS);
        expect_delta(&before, &l.stats(), &[]);
        let mut rest = one[cut..].to_vec();
        rest.extend_from_slice(&framed(&msg(11)));
        let before = l.stats();
        assert_eq!(l.run_answer(&tcp_at(5000 + cut as u32, &rest)), PASS);
        expect_delta(
            &before,
            &l.stats(),
            &[
                (STAT_ANSWERS, 2),
                (STAT_ANSWERS_TCP, 2),
                (STAT_ADDRS_BOUND, 2),
            ],
        );
        assert_eq!(
            addrs(&l),
            [mapped_v4([198, 51, 100, 10]), mapped_v4([198, 51, 100, 11])],
            "cut {cut}"
        );
    }

    // Three segments, the sequence number wrapping between them.
    l.clear();
    record_tcp(&l, &msg(12));
    let one = framed(&msg(12));
    let start = u32::MAX - 9;
    assert_eq!(l.run_answer(&tcp_at(start, &one[..10])), PASS);
    assert_eq!(
        l.run_answer(&tcp_at(start.wrapping_add(10), &one[10..25])),
        PASS
    );
    assert!(l.bindings().is_empty());
    assert_eq!(
        l.run_answer(&tcp_at(start.wrapping_add(25), &one[25..])),
        PASS
    );
    assert_eq!(addrs(&l), [mapped_v4([198, 51, 100, 12])]);

    // Out of sequence: the kept part is forgotten, nothing binds.
    l.clear();
    record_tcp(&l, &msg(13));
    let one = framed(&msg(13));
    assert_eq!(l.run_answer(&tcp_at(7000, &one[..20])), PASS);
    let before = l.stats();
    assert_eq!(l.run_answer(&tcp_at(7000 + 25, &one[25..])), PASS);
    expect_delta(&before, &l.stats(), &[(STAT_ANSWERS_TCP_UNWALKED, 1)]);
    assert_eq!(l.run_answer(&tcp_at(7000 + 20, &one[20..])), PASS);
    assert!(l.bindings().is_empty(), "out of sequence: nothing bound");

    // A length prefix split between segments: not followed.
    l.clear();
    record_tcp(&l, &msg(14));
    let one = framed(&msg(14));
    let before = l.stats();
    assert_eq!(l.run_answer(&tcp_at(9000, &one[..1])), PASS);
    expect_delta(&before, &l.stats(), &[(STAT_ANSWERS_TCP_UNWALKED, 1)]);
    let _ = l.run_answer(&tcp_at(9001, &one[1..]));
    assert!(l.bindings().is_empty());
}
