//! The ClientHello reader and JA4 against FoxIO's published examples, hellos captured from
//! real clients (openssl s_client, curl, Python's ssl; `tests/data/tls/`), and crafted
//! browser-like hellos split every way a network or an evader splits them.

use std::collections::HashSet;

use palisade_common::tls::hello::{
    ClientHello, Field, HelloError, MAX_HELLO_LEN, is_grease, parse_client_hello,
};
use palisade_common::tls::ja4::ja4;
use palisade_common::tls::stream::{FirstBytes, Insert};
use palisade_common::tls::{Outcome, read_hello};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Building hellos

fn u16b(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}

fn sni_ext(name: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend(u16b(u16::try_from(name.len() + 3).unwrap()));
    d.push(0);
    d.extend(u16b(u16::try_from(name.len()).unwrap()));
    d.extend(name);
    d
}

fn alpn_ext(protos: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for p in protos {
        list.push(u8::try_from(p.len()).unwrap());
        list.extend(*p);
    }
    let mut d = u16b(u16::try_from(list.len()).unwrap()).to_vec();
    d.extend(list);
    d
}

fn u16_list(len_bytes: usize, items: &[u16]) -> Vec<u8> {
    let body: Vec<u8> = items.iter().flat_map(|v| v.to_be_bytes()).collect();
    let mut d = if len_bytes == 1 {
        vec![u8::try_from(body.len()).unwrap()]
    } else {
        u16b(u16::try_from(body.len()).unwrap()).to_vec()
    };
    d.extend(body);
    d
}

fn key_share(entries: &[(u16, usize)]) -> Vec<u8> {
    let mut list = Vec::new();
    for &(group, len) in entries {
        list.extend(u16b(group));
        list.extend(u16b(u16::try_from(len).unwrap()));
        list.extend((0..len).map(|i| (i * 7 + 3) as u8));
    }
    let mut d = u16b(u16::try_from(list.len()).unwrap()).to_vec();
    d.extend(list);
    d
}

/// A ClientHello handshake message (header included).
fn hello_msg(version: u16, ciphers: &[u16], exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(u16b(version));
    body.extend([0x42; 32]);
    body.push(32);
    body.extend([0x17; 32]);
    body.extend(u16_list(2, ciphers));
    body.extend([1, 0]);
    let mut ext_bytes = Vec::new();
    for (kind, data) in exts {
        ext_bytes.extend(u16b(*kind));
        ext_bytes.extend(u16b(u16::try_from(data.len()).unwrap()));
        ext_bytes.extend(data);
    }
    body.extend(u16b(u16::try_from(ext_bytes.len()).unwrap()));
    body.extend(ext_bytes);
    let mut msg = vec![1];
    msg.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    msg.extend(body);
    msg
}

/// `msg` in TLS records of at most `max` bytes each.
fn records(msg: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in msg.chunks(max) {
        out.extend([22, 3, 1]);
        out.extend(u16b(u16::try_from(chunk.len()).unwrap()));
        out.extend(chunk);
    }
    out
}

fn hex(text: &str) -> Vec<u8> {
    let t = text.trim();
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).unwrap())
        .collect()
}

fn read(stream: &[u8]) -> (Outcome, Box<ClientHello>) {
    let mut scratch = vec![0u8; MAX_HELLO_LEN];
    let mut hello = Box::<ClientHello>::default();
    let outcome = read_hello(stream, &mut scratch, &mut hello);
    (outcome, hello)
}

fn ja4_of(stream: &[u8]) -> String {
    let (outcome, hello) = read(stream);
    assert_eq!(outcome, Outcome::Hello);
    String::from_utf8(ja4(&hello).to_vec()).unwrap()
}

const SIG_ALGS: [u16; 8] = [
    0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
];

/// The cipher suites of Chrome (and of FoxIO's example), in Chrome's order, after a GREASE.
const CHROME_CIPHERS: [u16; 16] = [
    0x3a3a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014,
    0x009c, 0x009d, 0x002f, 0x0035,
];

/// Extension `kind` with plausible contents.
fn ext(kind: u16, sni: &[u8]) -> (u16, Vec<u8>) {
    let data = match kind {
        0x0000 => sni_ext(sni),
        0x0010 => alpn_ext(&[b"h2", b"http/1.1"]),
        0x000d => u16_list(2, &SIG_ALGS),
        0x002b => u16_list(1, &[0x2a2a, 0x0304, 0x0303]),
        0x000a => u16_list(2, &[0x2a2a, 0x11ec, 0x001d, 0x0017, 0x0018]),
        0x000b => vec![1, 0],
        0x002d => vec![1, 1],
        0x0033 => key_share(&[(0x2a2a, 1), (0x11ec, 1216), (0x001d, 32)]),
        0x0005 => vec![1, 0, 0, 0, 0],
        0x001b => vec![2, 0, 2],
        0x44cd | 0x4469 => alpn_ext(&[b"h2"]),
        0xfe0d => {
            let mut d = vec![0, 0, 1, 0, 1, 0x7b, 0, 32];
            d.extend([9; 32]);
            d.extend(u16b(144));
            d.extend([5; 144]);
            d
        }
        _ => Vec::new(),
    };
    (kind, data)
}

/// A Chrome 143 hello (extension order as one capture sent it), GREASE at both ends.
fn chrome_exts(order: &[u16], sni: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut exts = vec![(0x0a0a, Vec::new())];
    exts.extend(order.iter().map(|&k| ext(k, sni)));
    exts.push((0xfafa, vec![0]));
    exts
}

const CHROME_143_ORDER: [u16; 16] = [
    0x002d, 0x0033, 0x0010, 0xfe0d, 0x0017, 0x44cd, 0x0000, 0x000b, 0x000a, 0x002b, 0xff01, 0x0023,
    0x0012, 0x0005, 0x000d, 0x001b,
];

fn chrome_143(sni: &[u8]) -> Vec<u8> {
    hello_msg(
        0x0303,
        &CHROME_CIPHERS,
        &chrome_exts(&CHROME_143_ORDER, sni),
    )
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------------------
// JA4 against published values

/// FoxIO's README example: `t13d1516h2_8daaf6152771_e5627efa2ab1`, whose raw form lists the
/// sorted ciphers `002f,0035,009c,...,cca9` and extensions
/// `0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01` plus SNI and ALPN.
#[test]
fn ja4_matches_foxio_example() {
    let order = [
        0x0000, 0x0017, 0xff01, 0x000a, 0x000b, 0x0023, 0x0010, 0x0005, 0x000d, 0x0012, 0x0033,
        0x002d, 0x002b, 0x001b, 0x4469, 0x0015,
    ];
    let msg = hello_msg(
        0x0303,
        &CHROME_CIPHERS,
        &chrome_exts(&order, b"example.com"),
    );
    assert_eq!(
        ja4_of(&records(&msg, 16_384)),
        "t13d1516h2_8daaf6152771_e5627efa2ab1"
    );
}

/// A Chrome 143 hello as browserleaks published it (`ja4` and `ja4_ro` of the same
/// capture): `t13d1516h2_8daaf6152771_d8a2da3f94cd`, with ECH and X25519MLKEM768.
#[test]
fn ja4_matches_published_chrome_143() {
    let stream = records(&chrome_143(b"tls-outer.browserleaks.com"), 16_384);
    assert_eq!(ja4_of(&stream), "t13d1516h2_8daaf6152771_d8a2da3f94cd");
    let (_, hello) = read(&stream);
    assert!(hello.ech);
    assert_eq!(hello.sni(), b"tls-outer.browserleaks.com");
    assert_eq!(hello.alpn(), b"h2");
    assert!(
        stream.len() > 1500,
        "a post-quantum hello exceeds one segment"
    );
}

/// Chrome permutes its extensions on every connection: 100 permutations give one JA4.
#[test]
fn chrome_permutations_give_one_ja4() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = HashSet::new();
    let mut orders = HashSet::new();
    for _ in 0..100 {
        let mut order = CHROME_143_ORDER;
        rng.shuffle(&mut order);
        orders.insert(order);
        let msg = hello_msg(0x0303, &CHROME_CIPHERS, &chrome_exts(&order, b"a.example"));
        seen.insert(ja4_of(&records(&msg, 16_384)));
    }
    assert!(orders.len() > 90, "the permutations differ");
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[test]
fn ja4_edge_cases() {
    // No extensions at all: `i`, no ALPN, and the empty-list hash of zeros.
    let msg = hello_msg(0x0303, &[0x002f], &[]);
    assert_eq!(
        ja4_of(&records(&msg, 16_384)),
        format!("t12i010000_{}_000000000000", &sha12("002f"))
    );
    // ALPN whose ends are not alphanumeric: hex digits of the first and last byte.
    let msg = hello_msg(0x0303, &[0x002f], &[(0x0010, alpn_ext(&[b"\xabhi\x3c"]))]);
    assert_eq!(&ja4_of(&records(&msg, 16_384))[..10], "t12i0101ac");
    // A one-letter ALPN repeats the letter; a TLS 1.0 hello says 10.
    let msg = hello_msg(0x0301, &[0x002f], &[(0x0010, alpn_ext(&[b"x"]))]);
    assert_eq!(&ja4_of(&records(&msg, 16_384))[..10], "t10i0101xx");
    // Counts stop at 99.
    let many: Vec<u16> = (0x0100..0x0100 + 120).collect();
    let msg = hello_msg(0x0303, &many, &[]);
    assert_eq!(&ja4_of(&records(&msg, 16_384))[..10], "t12i990000");
}

fn sha12(text: &str) -> String {
    let mut h = palisade_common::tls::sha256::Sha256::new();
    h.update(text.as_bytes());
    h.finish()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Real clients

/// Hellos captured from the clients on this system (see `tests/data/tls/README`): the name,
/// ALPN and JA4 head each client sent.
#[test]
fn captured_hellos() {
    type Case = (
        &'static str,
        Option<&'static [u8]>,
        &'static [u8],
        &'static str,
    );
    let cases: &[Case] = &[
        (
            "openssl-sclient-sni-alpn",
            Some(b"www.Example.com"),
            b"h2",
            "t13d",
        ),
        ("openssl-sclient-nosni", None, b"", "t13i"),
        (
            "openssl-sclient-tls12",
            Some(b"legacy.example.org"),
            b"",
            "t12d",
        ),
        (
            "openssl-sclient-ffdhe8192",
            Some(b"big.example.net"),
            b"",
            "t13d",
        ),
        ("curl-h2", Some(b"blocked.example.com"), b"h2", "t13d"),
        ("curl-h11", Some(b"api.example.com"), b"http/1.1", "t13d"),
        ("curl-ip-literal", None, b"h2", "t13i"),
        ("python-ssl-h2", Some(b"python.example.com"), b"h2", "t13d"),
        ("python-ssl-tls12", Some(b"old.example.com"), b"", "t12d"),
    ];
    for &(file, sni, alpn, head) in cases {
        let path = format!("{}/tests/data/tls/{file}.hex", env!("CARGO_MANIFEST_DIR"));
        let stream = hex(&std::fs::read_to_string(&path).unwrap());
        let (outcome, hello) = read(&stream);
        assert_eq!(outcome, Outcome::Hello, "{file}");
        assert_eq!(hello.has_sni, sni.is_some(), "{file}");
        assert_eq!(hello.sni(), sni.unwrap_or(b""), "{file}");
        assert_eq!(hello.alpn(), alpn, "{file}");
        let fp = String::from_utf8(ja4(&hello).to_vec()).unwrap();
        assert!(fp.starts_with(head), "{file}: {fp}");
        assert!(!hello.ech, "{file}");
        // The same hello arriving one byte per segment, backwards, gives the same result.
        let mut first = FirstBytes::new(1000);
        for (i, b) in stream.iter().enumerate().rev() {
            assert_eq!(first.insert(1000 + i as u32, &[*b]), Insert::Stored);
        }
        let (again, hello2) = read(first.contiguous());
        assert_eq!(again, Outcome::Hello);
        assert_eq!(ja4(&hello2), ja4(&hello), "{file}");
    }
}

// ---------------------------------------------------------------------------------------
// Splitting: records, segments, order, retransmission

/// Browser- and library-like hellos: Chrome (PQ, ECH GREASE), Firefox (PQ, no permutation),
/// curl/OpenSSL 3.5 (PQ hybrid first), Go 1.24 (PQ, sent in two segments).
fn client_hellos(sni: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let firefox_ciphers = [
        0x1301, 0x1303, 0x1302, 0xc02b, 0xc02f, 0xcca9, 0xcca8, 0xc02c, 0xc030, 0xc00a, 0xc009,
        0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
    ];
    let firefox_exts = [
        0x0000, 0x0017, 0xff01, 0x000a, 0x000b, 0x0023, 0x0010, 0x0005, 0x0022, 0x0033, 0x002b,
        0x000d, 0x002d, 0x001c, 0x001b, 0xfe0d,
    ];
    let openssl35_ciphers = [
        0x1302, 0x1303, 0x1301, 0xc02c, 0xc030, 0x009f, 0xcca9, 0xcca8, 0xccaa, 0xc02b, 0xc02f,
        0x009e, 0xc024, 0xc028, 0x006b, 0xc023, 0xc027, 0x0067, 0xc00a, 0xc014, 0x0039, 0xc009,
        0xc013, 0x0033, 0x009d, 0x009c, 0x003d, 0x003c, 0x0035, 0x002f, 0x00ff,
    ];
    let openssl35_exts = [
        0x0000, 0x000b, 0x000a, 0x0023, 0x0016, 0x0017, 0x000d, 0x002b, 0x002d, 0x0033,
    ];
    let go_ciphers = [
        0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc009, 0xc013,
        0xc00a, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035, 0xc012, 0x000a,
    ];
    let go_exts = [
        0x0000, 0x0005, 0x000a, 0x000b, 0x000d, 0xff01, 0x0012, 0x002b, 0x0033, 0x0010,
    ];
    let make = |ciphers: &[u16], order: &[u16]| {
        let exts: Vec<_> = order.iter().map(|&k| ext(k, sni)).collect();
        hello_msg(0x0303, ciphers, &exts)
    };
    vec![
        ("chrome", chrome_143(sni)),
        ("firefox", make(&firefox_ciphers, &firefox_exts)),
        ("openssl-3.5", make(&openssl35_ciphers, &openssl35_exts)),
        ("curl", make(&openssl35_ciphers, &openssl35_exts)),
        ("go", make(&go_ciphers, &go_exts)),
    ]
}

/// Every client hello, in one record, in 100-byte and in 1-byte records, delivered in
/// 1460-byte segments (2 or 3 for a PQ hello), in 1-byte segments, in random segments in
/// random order with random retransmissions: the name always comes out, and so does the
/// same JA4.
#[test]
fn sni_survives_every_split() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut cases = 0usize;
    let mut extracted = 0usize;
    for n in 0..250 {
        let sni = format!("host-{n}.Site{}.example", rng.below(1000));
        for (client, msg) in client_hellos(sni.as_bytes()) {
            let whole = records(&msg, 16_384);
            let reference = ja4_of(&whole);
            for record_size in [16_384, 100, 1] {
                let stream = records(&msg, record_size);
                for split in 0..3 {
                    cases += 1;
                    let base = rng.next() as u32;
                    let mut first = FirstBytes::new(base);
                    let mut segments: Vec<(usize, usize)> = Vec::new();
                    let mut pos = 0;
                    while pos < stream.len() {
                        let len = match split {
                            0 => 1460,
                            1 => 1,
                            _ => 1 + rng.below(700),
                        };
                        let end = (pos + len).min(stream.len());
                        segments.push((pos, end));
                        pos = end;
                    }
                    if split == 2 {
                        rng.shuffle(&mut segments);
                        // Retransmit a few, some overlapping their neighbours.
                        for _ in 0..3 {
                            let s = rng.below(stream.len());
                            let e = (s + 1 + rng.below(900)).min(stream.len());
                            segments.insert(rng.below(segments.len()), (s, e));
                        }
                    }
                    let mut outcome = Outcome::NeedMore;
                    let mut seen = 0;
                    for (k, &(s, e)) in segments.iter().enumerate() {
                        let seq = base.wrapping_add(s as u32);
                        assert_eq!(first.insert(seq, &stream[s..e]), Insert::Stored);
                        // Reading after every one of thousands of 1-byte segments is
                        // quadratic: the first names check each step, the rest the end.
                        let grown = first.contiguous().len() != seen;
                        seen = first.contiguous().len();
                        if !grown || (split == 1 && n >= 3 && k + 1 < segments.len()) {
                            continue;
                        }
                        let (now, hello) = read(first.contiguous());
                        outcome = now;
                        if now == Outcome::Hello {
                            if hello.sni() == sni.as_bytes()
                                && String::from_utf8(ja4(&hello).to_vec()).unwrap() == reference
                            {
                                extracted += 1;
                            }
                            // In order, the hello is whole only with its last segment.
                            if split < 2 {
                                assert_eq!(k, segments.len() - 1, "{client}");
                            }
                            break;
                        }
                        assert_eq!(now, Outcome::NeedMore, "{client} {record_size} {split}");
                    }
                    assert_eq!(outcome, Outcome::Hello, "{client} {record_size} {split}");
                }
            }
        }
    }
    assert_eq!(cases, 250 * 5 * 9);
    println!("SNI and JA4 extracted in {extracted} of {cases} split hellos");
    assert_eq!(extracted, cases);
}

/// A retransmission that changes bytes already received is refused, wherever it lands.
#[test]
fn conflicting_retransmission_is_refused() {
    let stream = records(&chrome_143(b"good.example"), 16_384);
    let mut first = FirstBytes::new(u32::MAX - 10);
    let base = first.base();
    assert_eq!(first.insert(base, &stream[..1460]), Insert::Stored);
    let mut forged = stream[1000..1460].to_vec();
    forged[0] ^= 1;
    assert_eq!(
        first.insert(base.wrapping_add(1000), &forged),
        Insert::Conflict
    );
    // Identical retransmissions and bytes before the stream's start are fine.
    assert_eq!(
        first.insert(base.wrapping_add(1000), &stream[1000..1460]),
        Insert::Stored
    );
    assert_eq!(first.insert(base.wrapping_sub(5), &[0; 5]), Insert::Stored);
    assert_eq!(
        first.insert(base.wrapping_add(1460), &stream[1460..]),
        Insert::Stored
    );
    let (outcome, hello) = read(first.contiguous());
    assert_eq!(outcome, Outcome::Hello);
    assert_eq!(hello.sni(), b"good.example");
}

#[test]
fn what_is_not_a_hello() {
    let (o, _) = read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(o, Outcome::Invalid(HelloError::NotTls));
    // A ServerHello (type 2) where a ClientHello should be.
    let mut msg = chrome_143(b"x.example");
    msg[0] = 2;
    let (o, _) = read(&records(&msg, 16_384));
    assert_eq!(o, Outcome::Invalid(HelloError::NotClientHello));
    // An alert record in the middle of a fragmented hello.
    let mut stream = records(&chrome_143(b"x.example"), 100);
    stream[105] = 21;
    let (o, _) = read(&stream);
    assert_eq!(o, Outcome::Invalid(HelloError::BadRecord));
    // A zero-length record.
    let (o, _) = read(&[22, 3, 1, 0, 0, 1]);
    assert_eq!(o, Outcome::Invalid(HelloError::BadRecord));
    // A hello announcing more than 16 KiB.
    let (o, _) = read(&[22, 3, 1, 0, 4, 1, 0, 0x40, 0x01]);
    assert_eq!(o, Outcome::Invalid(HelloError::TooLarge));
    // A server name longer than a DNS name can be.
    let long = vec![b'a'; 256];
    let msg = hello_msg(0x0303, &[0x1301], &[(0, sni_ext(&long))]);
    let (o, _) = read(&records(&msg, 16_384));
    assert_eq!(
        o,
        Outcome::Invalid(HelloError::Malformed(Field::ServerName))
    );
    // An empty `server_name` (as servers send it) is a present extension without a name.
    let msg = hello_msg(0x0303, &[0x1301], &[(0, Vec::new())]);
    let (o, hello) = read(&records(&msg, 16_384));
    assert_eq!(o, Outcome::Hello);
    assert!(hello.has_sni && hello.sni().is_empty());
}

#[test]
fn grease_values() {
    let grease: Vec<u16> = (0..=u16::MAX).filter(|&v| is_grease(v)).collect();
    assert_eq!(grease.len(), 16);
    assert_eq!(grease[0], 0x0a0a);
    assert_eq!(grease[15], 0xfafa);
}

// ---------------------------------------------------------------------------------------
// No input makes it panic

fn all_outcomes(stream: &[u8]) {
    let (_, hello) = read(stream);
    // Whatever was read, the accessors and JA4 stay in bounds.
    let _ = ja4(&hello);
    let mut h2 = ClientHello::default();
    let _ = parse_client_hello(stream, &mut h2);
    let _ = ja4(&h2);
}

/// Every prefix of every hello is "need more", never a wrong answer or a panic.
#[test]
fn every_truncation_needs_more() {
    for (client, msg) in client_hellos(b"trunc.example") {
        for record_size in [16_384, 7] {
            let stream = records(&msg, record_size);
            for cut in 0..stream.len() {
                let (o, _) = read(&stream[..cut]);
                assert_eq!(o, Outcome::NeedMore, "{client} cut at {cut}");
                // The message itself cut short is malformed, not a panic.
                let mut h = ClientHello::default();
                assert!(parse_client_hello(&msg[..cut.min(msg.len() - 1)], &mut h).is_err());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        all_outcomes(&bytes);
        // Random bytes behind a plausible record and handshake header reach the inner parser.
        let mut framed = vec![22, 3, 1];
        framed.extend(u16::try_from(bytes.len() + 4).unwrap().to_be_bytes());
        framed.extend([1, 0]);
        framed.extend(u16::try_from(bytes.len()).unwrap().to_be_bytes());
        framed.extend(&bytes);
        all_outcomes(&framed);
    }

    #[test]
    fn mutated_hellos_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut stream = records(&chrome_143(b"fuzz.example"), 200);
        for (at, value) in flips {
            let i = at % stream.len();
            stream[i] = value;
        }
        let end = cut % (stream.len() + 1);
        all_outcomes(&stream[..end]);
    }

    #[test]
    fn random_segments_never_panic(
        segments in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..200)), 0..40),
    ) {
        let mut first = FirstBytes::new(1 << 31);
        for (seq, data) in &segments {
            let _ = first.insert(*seq, data);
        }
        all_outcomes(first.contiguous());
    }
}
