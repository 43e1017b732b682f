//! Resolver pinning's DoH canary (`palisade_bind_canary`, tcx egress), run on crafted frames
//! through `BPF_PROG_TEST_RUN`: a query for `use-application-dns.net` (any case) from a
//! pinned cgroup comes back as the NXDOMAIN answer, byte for byte what a resolver's answer
//! would be (addresses and ports swapped, the flags of an NXDOMAIN answer, checksums right),
//! with the verdict `TC_ACT_REDIRECT` (to the interface's ingress), or `TC_ACT_OK` on `lo`
//! (where what leaves comes back in by itself); everything else leaves unchanged.
//!
//! In a test run the packet's socket is a dummy the kernel creates in the caller's cgroup
//! v2, so the pinned cgroups are this process's cgroup or one of its ancestors (the test
//! moves itself into a child cgroup for that, and back).
//!
//! Needs root. The tests share one loaded object and take turns.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, OnceLock},
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use palisade::{
    dnsbind::{self, DnsBind},
    events::decode_dns,
    loader,
    policy::setfile::parse_cidr,
};
use palisade_common::{
    dnsbind::{BIND_STATS_COUNT, STAT_CANARY_ANSWERED, STAT_CANARY_UNPINNED},
    reason,
};

const UNIFIED: &str = "/sys/fs/cgroup/unified";
/// TC verdicts.
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_OK: i32 = 0;
const TC_ACT_REDIRECT: i32 = 7;

const STUB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const RESOLVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x35];
const STUB_PORT: u16 = 50_123;

struct Loaded {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
}

fn loaded() -> MutexGuard<'static, Loaded> {
    static L: OnceLock<Mutex<Loaded>> = OnceLock::new();
    L.get_or_init(|| {
        let mut ebpf = loader::load().expect("load the object");
        let p: &mut SchedClassifier = ebpf
            .program_mut(dnsbind::CANARY)
            .expect("the canary program")
            .try_into()
            .unwrap();
        p.load().expect("the kernel verifies the canary program");
        let events = RingBuf::try_from(ebpf.take_map("EVENTS").unwrap()).unwrap();
        Mutex::new(Loaded { ebpf, events })
    })
    .lock()
    .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Loaded {
    fn configure(&mut self, cgroups: &[&Path], pinned: bool) {
        let b = DnsBind {
            cgroups: cgroups.iter().map(|p| p.to_path_buf()).collect(),
            resolvers: if pinned {
                vec![parse_cidr("10.0.0.53/32").unwrap()]
            } else {
                vec![]
            },
            ..DnsBind::default()
        };
        dnsbind::write_config(&mut self.ebpf, Some(&b)).unwrap();
        while self.events.next().is_some() {}
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

    fn reason_count(&self, r: u32) -> u64 {
        let m: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("REASON_STATS").unwrap()).unwrap();
        m.get(&r, 0).unwrap().iter().sum()
    }

    /// Runs the program on `frame` leaving by `lo` (the test run's default device).
    fn run(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        self.run_on(frame, None)
    }

    /// Runs the program on `frame` leaving by the device `ifindex` (`lo` when `None`).
    fn run_on(&self, frame: &[u8], ifindex: Option<u32>) -> (i32, Vec<u8>) {
        let prog: &SchedClassifier = self
            .ebpf
            .program(dnsbind::CANARY)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; frame.len() + 64];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        // `struct __sk_buff` up to `ifindex` (offset 40); the rest of it zero.
        let mut skb_ctx = [0u8; 44];
        if let Some(i) = ifindex {
            skb_ctx[40..44].copy_from_slice(&i.to_ne_bytes());
            opts.ctx_in = Some(&skb_ctx);
        }
        let r = prog.test_run(opts).expect("test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value as i32, out)
    }

    fn events(&mut self) -> Vec<palisade::events::DnsDecision> {
        let mut v = Vec::new();
        while let Some(item) = self.events.next() {
            if let Some(e) = decode_dns(&item) {
                v.push(e);
            }
        }
        v
    }
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An Ethernet frame holding a UDP datagram with `payload`, every checksum computed from
/// scratch.
fn frame(
    macs: ([u8; 6], [u8; 6]),
    ips: (IpAddr, IpAddr),
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let (src_mac, dst_mac) = macs;
    let udp_len = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&ports.0.to_be_bytes());
    udp.extend_from_slice(&ports.1.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    match ips {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&udp_len.to_be_bytes());
            let c = fold(sum16(&pseudo) + sum16(&udp));
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
            ip.extend_from_slice(&[0xbe, 0xef, 0x40, 0, 64, 17, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = fold(sum16(&ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&[0x08, 0x00]);
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&u32::from(udp_len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            let c = fold(sum16(&pseudo) + sum16(&udp));
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0x0a, 0xbc, 0xde]);
            f.extend_from_slice(&udp_len.to_be_bytes());
            f.extend_from_slice(&[17, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => unreachable!("one family"),
    }
    f.extend_from_slice(&udp);
    f
}

/// A DNS message: id 0x4d2e, `flags`, one question (`name` as written, type `qtype`, class
/// IN), with an EDNS OPT record holding a client cookie when `edns`.
fn message(flags: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut m = vec![0x4d, 0x2e];
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    for l in name.trim_end_matches('.').split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    if edns {
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 12, 0, 10, 0, 8]);
        m.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    }
    m
}

fn addrs(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x0a)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x53)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 53)),
        )
    }
}

/// The query a stub sends, and the answer a resolver would send back.
fn query_and_answer(
    v6: bool,
    name: &str,
    qtype: u16,
    qflags: u16,
    edns: bool,
) -> (Vec<u8>, Vec<u8>) {
    let (stub, resolver) = addrs(v6);
    let q = frame(
        (STUB_MAC, RESOLVER_MAC),
        (stub, resolver),
        (STUB_PORT, 53),
        &message(qflags, name, qtype, edns),
    );
    let a = frame(
        (RESOLVER_MAC, STUB_MAC),
        (resolver, stub),
        (53, STUB_PORT),
        &message(0x8000 | (qflags & 0x0110) | 0x0080 | 3, name, qtype, edns),
    );
    (q, a)
}

/// This process's cgroup directory.
fn own_cgroup() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("cgroup v2 line");
    PathBuf::from(format!("{UNIFIED}{path}"))
}

#[test]
fn the_canary_is_answered_nxdomain_byte_for_byte() {
    let mut l = loaded();
    let own = own_cgroup();
    l.configure(&[&own], true);
    for (v6, name, qtype, flags, edns) in [
        (false, "use-application-dns.net", 1, 0x0100, false),
        (false, "USE-Application-Dns.NeT.", 28, 0x0120, true),
        (true, "use-application-dns.net", 28, 0x0110, true),
        (true, "Use-Application-DNS.net", 1, 0x0000, false),
    ] {
        let (q, a) = query_and_answer(v6, name, qtype, flags, edns);
        let before = l.stats();
        let canary_reason = l.reason_count(reason::DNS_DOH_CANARY);
        let (verdict, out) = l.run(&q);
        assert_eq!(
            verdict, TC_ACT_OK,
            "{name} v6={v6}: on lo the answer goes on"
        );
        assert_eq!(
            out.len(),
            a.len(),
            "{name} v6={v6}: the answer has the query's length"
        );
        for (i, (got, want)) in out.iter().zip(&a).enumerate() {
            assert_eq!(
                got, want,
                "{name} v6={v6}: byte {i}\n got {out:02x?}\nwant {a:02x?}"
            );
        }
        let after = l.stats();
        assert_eq!(
            after[STAT_CANARY_ANSWERED as usize],
            before[STAT_CANARY_ANSWERED as usize] + 1
        );
        assert_eq!(
            after[STAT_CANARY_UNPINNED as usize],
            before[STAT_CANARY_UNPINNED as usize]
        );
        assert_eq!(l.reason_count(reason::DNS_DOH_CANARY), canary_reason + 1);
        let ev = l.events();
        assert_eq!(ev.len(), 1, "{ev:?}");
        let e = &ev[0];
        assert_eq!(e.verdict, "nxdomain");
        assert_eq!(e.reason, "dns-doh-canary");
        assert_eq!(e.scope, "egress");
        assert_eq!(e.name, "use-application-dns.net.");
        assert_eq!(e.qtype, if qtype == 1 { "A" } else { "AAAA" });
        assert_eq!(e.client, Some(addrs(v6).0));
        assert_eq!(e.client_port, STUB_PORT);
        assert_eq!(
            e.cgroup_id,
            Some(std::os::unix::fs::MetadataExt::ino(
                &std::fs::metadata(&own).unwrap()
            ))
        );
    }
}

/// A veth pair (the frames leave by one end), deleted on drop.
struct Dummy(String);

impl Dummy {
    fn new() -> (Self, u32) {
        let name = format!("pcan{}", std::process::id() % 100_000);
        let ok = std::process::Command::new("ip")
            .args(["link", "add", &name, "type", "veth", "peer", "name"])
            .arg(format!("{name}p"))
            .status()
            .expect("ip link add")
            .success();
        assert!(ok, "ip link add {name} type veth");
        let d = Self(name);
        let index = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", d.0))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (d, index)
    }
}

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}

#[test]
fn off_lo_the_answer_is_redirected_to_ingress() {
    let mut l = loaded();
    let own = own_cgroup();
    l.configure(&[&own], true);
    let (_dummy, ifindex) = Dummy::new();
    for v6 in [false, true] {
        let (q, a) = query_and_answer(v6, "use-APPLICATION-dns.net", 1, 0x0100, true);
        let (verdict, out) = l.run_on(&q, Some(ifindex));
        assert_eq!((verdict, &out), (TC_ACT_REDIRECT, &a), "v6={v6}");
        let ev = l.events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].client, Some(addrs(v6).0));
    }
    let (q, _) = query_and_answer(false, "example.com", 1, 0x0100, true);
    assert_eq!(l.run_on(&q, Some(ifindex)), (TC_ACT_UNSPEC, q));
}

#[test]
fn other_queries_and_other_cgroups_pass_unchanged() {
    let mut l = loaded();
    let own = own_cgroup();
    l.configure(&[&own], true);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for name in [
        "use-application-dns.org",
        "xuse-application-dns.net",
        "use-application-dns.net.example",
        "example.com",
    ] {
        cases.push((name, query_and_answer(false, name, 1, 0x0100, true).0));
    }
    let (q, a) = query_and_answer(false, "use-application-dns.net", 1, 0x0100, false);
    cases.push(("an answer to the canary", a));
    let mut cut = q.clone();
    cut.truncate(q.len() - 1);
    cases.push(("a cut query", cut));
    let mut tcp = q.clone();
    tcp[23] = 6;
    cases.push(("protocol TCP", tcp));
    let mut other_port = q.clone();
    other_port[37] = 54;
    cases.push(("port 54", other_port));
    let mut two = q.clone();
    two[47] = 2;
    cases.push(("two questions", two));
    let mut frag = q.clone();
    frag[20] = 0x20;
    cases.push(("a first fragment", frag));
    let mut opts = q.clone();
    opts[14] = 0x46;
    cases.push(("IPv4 options", opts));
    for (what, f) in &cases {
        let before = l.stats();
        let (verdict, out) = l.run(f);
        assert_eq!(verdict, TC_ACT_UNSPEC, "{what}");
        assert_eq!(&out, f, "{what}: unchanged");
        assert_eq!(l.stats(), before, "{what}: not counted");
    }

    // Pinning off: the canary goes to the resolver.
    l.configure(&[&own], false);
    let before = l.stats();
    let (verdict, out) = l.run(&q);
    assert_eq!((verdict, &out), (TC_ACT_UNSPEC, &q), "pinning off");
    assert_eq!(l.stats(), before);

    // Pinned, but the socket is not in a [dns.bind] cgroup: passes, counted.
    let other = TempCgroup::new(Path::new(UNIFIED), "other");
    l.configure(&[&other.0], true);
    let before = l.stats();
    let (verdict, out) = l.run(&q);
    assert_eq!((verdict, &out), (TC_ACT_UNSPEC, &q), "another cgroup");
    let after = l.stats();
    assert_eq!(
        after[STAT_CANARY_UNPINNED as usize],
        before[STAT_CANARY_UNPINNED as usize] + 1
    );
    assert_eq!(
        after[STAT_CANARY_ANSWERED as usize],
        before[STAT_CANARY_ANSWERED as usize]
    );
    assert!(l.events().is_empty());
}

/// A cgroup directory removed on drop (its processes moved to the root first).
struct TempCgroup(PathBuf);

impl TempCgroup {
    fn new(parent: &Path, tag: &str) -> Self {
        let p = parent.join(format!("palisade-canary-{}-{tag}", std::process::id()));
        std::fs::create_dir(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempCgroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(Path::new(UNIFIED).join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Moves this process into `cg` and back to where it was on drop.
struct Moved(PathBuf);

impl Moved {
    fn into(cg: &Path) -> Self {
        let back = own_cgroup();
        std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string()).unwrap();
        Self(back)
    }
}

impl Drop for Moved {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.procs"), std::process::id().to_string());
    }
}

#[test]
fn a_socket_below_a_pinned_cgroup_is_pinned() {
    let mut l = loaded();
    let parent = TempCgroup::new(Path::new(UNIFIED), "parent");
    let child = TempCgroup::new(&parent.0, "child");
    let (q, a) = query_and_answer(true, "use-application-dns.net", 1, 0x0100, true);
    {
        let _moved = Moved::into(&child.0);
        l.configure(&[&parent.0], true);
        let (verdict, out) = l.run(&q);
        assert_eq!((verdict, &out), (TC_ACT_OK, &a), "under the pinned cgroup");
        let ev = l.events();
        assert_eq!(ev.len(), 1);
        assert_eq!(
            ev[0].cgroup_id,
            Some(std::os::unix::fs::MetadataExt::ino(
                &std::fs::metadata(&child.0).unwrap()
            )),
            "the socket's own cgroup is reported"
        );
        // The sibling's pin does not cover it.
        let sibling = TempCgroup::new(&parent.0, "sibling");
        l.configure(&[&sibling.0], true);
        let (verdict, out) = l.run(&q);
        assert_eq!(
            (verdict, &out),
            (TC_ACT_UNSPEC, &q),
            "beside the pinned cgroup"
        );
    }
    drop(child);
}
