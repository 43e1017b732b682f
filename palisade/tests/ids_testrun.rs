//! The IDS preselection in the kernel, through `BPF_PROG_TEST_RUN` on the TC programs: port
//! groups, the gram prefilter (checked against the userspace reference on random payloads),
//! the records on the ring (tuple, sequence number and payload byte by byte, cut at the record
//! size), the budget's sampling and every counter.
//!
//! Needs root (BPF). Run with `cargo test --release -p palisade --test ids_testrun`.

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use palisade::{
    craft::Frame,
    ids::{engine::Engine, kernel, pcap::Packet, preselect::Preselect, rules},
    loader,
};
use palisade_common::ids::{
    IDS_ON, IDS_PF_HIT, IDS_RECORD_BYTES, IS_FLOWS_SAMPLED_OUT, IS_FLOWS_SELECTED, IS_NO_GROUP,
    IS_PACKETS, IS_PREFILTER_MISS, IS_RECORDS, IS_SAMPLED_PACKETS, IS_TRUNCATED, IdsConfig,
    prefilter, scan_buffer,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// TC's "continue": the IDS never decides a packet's fate.
const TC_ACT_UNSPEC: i32 = -1;
const PSH_ACK: u8 = 0x18;

const RULES: &str = r#"
alert tcp any any -> any 80 (msg:"admin"; content:"GET"; depth:3; content:"/admin"; distance:1; within:10; sid:1;)
alert udp any any -> any 5353 (msg:"magic"; content:"|de ad be ef|"; offset:4; depth:4; sid:2;)
alert tcp any any -> any 6000 (msg:"deep"; content:"MARKER"; sid:3;)
"#;

/// The object with only the IDS program verified (the test needs no other).
struct Ids {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
}

impl Ids {
    fn new(budget_per_sec: u32) -> Self {
        let mut ebpf = loader::load_sized(&[]).expect("load (needs root)");
        let prog: &mut SchedClassifier = ebpf
            .program_mut(kernel::INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        prog.load().expect("the verifier accepts the IDS program");
        let set = rules::parse(RULES, "t.rules", &rules::Vars::default()).unwrap();
        let pre = Preselect::build(&set);
        kernel::install(
            &mut ebpf,
            &pre,
            IdsConfig {
                flags: IDS_ON,
                budget_per_sec,
                ring_high_water: 0,
                ..IdsConfig::default()
            },
        )
        .unwrap();
        let ring = RingBuf::try_from(ebpf.take_map(kernel::RECORDS).unwrap()).unwrap();
        Self { ebpf, ring }
    }

    fn run(&self, frame: &[u8]) {
        let prog: &SchedClassifier = self
            .ebpf
            .program(kernel::INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = prog.test_run(opts).unwrap();
        out.truncate(r.data_size_out as usize);
        assert_eq!(r.return_value as i32, TC_ACT_UNSPEC);
        assert_eq!(out, frame, "the IDS never changes a packet");
    }

    fn records(&mut self) -> Vec<(Packet, u32)> {
        let mut out = Vec::new();
        while let Some(r) = self.ring.next() {
            out.push(kernel::decode(&r).expect("a whole record"));
        }
        out
    }

    fn counter(&self, i: u32) -> u64 {
        kernel::counters(&self.ebpf).unwrap()[i as usize]
    }
}

fn tcp(sport: u16, dport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    Frame::tcp("10.0.0.1", "10.0.0.2", sport, dport, PSH_ACK)
        .with_tcp_seq(seq)
        .with_payload(payload)
        .build()
}

fn pad(head: &[u8], len: usize) -> Vec<u8> {
    let mut v = head.to_vec();
    v.resize(len, b'.');
    v
}

#[test]
fn port_groups_and_the_prefilter_choose_what_reaches_userspace() {
    let mut ids = Ids::new(1_000_000);
    // No group for port 81: nothing is judged.
    ids.run(&tcp(40000, 81, 1, &pad(b"GET /admin", 200)));
    assert_eq!(ids.counter(IS_NO_GROUP), 1);
    // Port 80, the prefilter misses (no "GET" gram in the window).
    ids.run(&tcp(40001, 80, 1, &pad(b"POST /x", 200)));
    assert_eq!(ids.counter(IS_PREFILTER_MISS), 1);
    assert!(ids.records().is_empty());
    // Port 80, hit: a record with the tuple, the sequence number and the payload.
    let payload = pad(b"GET /admin/panel HTTP/1.1\r\n", 300);
    ids.run(&tcp(40002, 80, 7777, &payload));
    let recs = ids.records();
    assert_eq!(recs.len(), 1);
    let (p, full) = &recs[0];
    assert_eq!(p.src.to_string(), "10.0.0.1");
    assert_eq!(p.dst.to_string(), "10.0.0.2");
    assert_eq!(
        (p.proto, p.sport, p.dport, p.seq, p.flags),
        (6, 40002, 80, 7777, PSH_ACK)
    );
    assert_eq!(*full as usize, payload.len());
    assert_eq!(p.payload, payload);
    // The flow stays selected: its next packet (and the reply) go up without a prefilter hit.
    ids.run(&tcp(40002, 80, 7777 + 300, &pad(b"zzzz", 100)));
    let reply = Frame::tcp("10.0.0.2", "10.0.0.1", 80, 40002, PSH_ACK)
        .with_payload(&pad(b"HTTP/1.1 200 OK", 100))
        .build();
    ids.run(&reply);
    let recs = ids.records();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].0.sport, 80);
    assert_eq!(ids.counter(IS_FLOWS_SELECTED), 1);
    // A short TCP segment selects its flow (a content could straddle it and the next).
    ids.run(&tcp(40003, 80, 1, b"GE"));
    assert_eq!(ids.records().len(), 1);
    // UDP: the magic at its offset, in and out of a group.
    let udp = |sport, dport, payload: &[u8]| {
        Frame::udp("10.0.0.1", "10.0.0.2", sport, dport)
            .with_payload(payload)
            .build()
    };
    ids.run(&udp(40004, 5353, b"\0\x01\x02\x03\xde\xad\xbe\xef"));
    assert_eq!(ids.records().len(), 1);
    // A short UDP datagram is judged whole: a miss is a miss (and the previous datagram's
    // bytes, still in the scratch, must not complete a gram).
    ids.run(&udp(40104, 5353, b"\0\x01\x02\x03\xde\xad\xbe"));
    let recs = ids.records();
    assert!(recs.is_empty(), "{recs:?}");
    // Port 6000's rule has no content anchored in the window: every flow goes up.
    ids.run(&tcp(40005, 6000, 1, &pad(b"nothing", 100)));
    assert_eq!(ids.records().len(), 1);
    // A payload longer than a record is cut and counted.
    let long = pad(b"GET /admin", 3000);
    ids.run(&tcp(40006, 80, 1, &long));
    let recs = ids.records();
    assert_eq!(recs[0].0.payload, long[..IDS_RECORD_BYTES]);
    assert_eq!(recs[0].1 as usize, long.len());
    assert_eq!(ids.counter(IS_TRUNCATED), 1);
    assert_eq!(ids.counter(IS_PACKETS), 10);
    assert_eq!(ids.counter(IS_RECORDS), 7);
}

#[test]
fn the_kernel_prefilter_agrees_with_the_userspace_reference() {
    let mut ids = Ids::new(1_000_000);
    let set = rules::parse(RULES, "t.rules", &rules::Vars::default()).unwrap();
    let pre = Preselect::build(&set);
    let mut rng = StdRng::seed_from_u64(15);
    let alphabet = b"GETget /admin.xyzMARKER\xde\xad";
    let (mut hits, mut misses) = (0, 0);
    for i in 0..2000u16 {
        let len = 64 + usize::from(rng.gen_range(0..40u8));
        let mut payload: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
            .collect();
        if i % 3 == 0 {
            let at = rng.gen_range(0..60usize);
            payload[at..at + 4].copy_from_slice(b"/aDm");
        }
        let window = scan_buffer(&payload);
        let expected = prefilter(&pre.grams, &window, payload.len()) == IDS_PF_HIT;
        // One flow per payload, so the kernel judges each one afresh.
        ids.run(&tcp(10_000 + i, 80, 1, &payload));
        let got = !ids.records().is_empty();
        assert_eq!(
            got,
            expected,
            "payload {i}: {:?}",
            String::from_utf8_lossy(&payload)
        );
        if expected {
            hits += 1;
        } else {
            misses += 1;
        }
    }
    assert!(hits > 500 && misses > 500, "{hits} hits, {misses} misses");
}

#[test]
fn a_spent_budget_samples_flows_out_and_counts_them() {
    // The bucket is per CPU: stay on one.
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    // One record per second: the first flow takes the only token (a fresh bucket holds one
    // second's worth).
    let mut ids = Ids::new(1);
    let payload = pad(b"GET /admin", 100);
    ids.run(&tcp(40010, 80, 1, &payload));
    ids.run(&tcp(40011, 80, 1, &payload));
    ids.run(&tcp(40011, 80, 101, &payload));
    ids.run(&tcp(40010, 80, 101, &payload));
    let recs = ids.records();
    // 40010 selected and sent; 40011 sampled out at selection, its next packet skipped;
    // 40010's second packet skipped (no token left).
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].0.sport, 40010);
    assert_eq!(ids.counter(IS_FLOWS_SELECTED), 1);
    assert_eq!(ids.counter(IS_FLOWS_SAMPLED_OUT), 1);
    assert_eq!(ids.counter(IS_SAMPLED_PACKETS), 2);
    // The engine takes what the ring carried.
    let set = rules::parse(RULES, "t.rules", &rules::Vars::default()).unwrap();
    let mut engine = Engine::new(set);
    for (p, _) in &recs {
        engine.packet(p);
    }
    engine.finish();
    assert_eq!(engine.alerts.len(), 1);
    assert_eq!(engine.alerts[0].sid, 1);
}
