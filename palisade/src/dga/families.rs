//! DGA families for measuring the scorer: re-implementations, from their published
//! descriptions and reversed code, of the domain generators of known malware families,
//! run with fixed seeds and dates so every run yields the same names.
//!
//! `ramnit` and `necurs` follow the published reversed generators closely; the others keep
//! each family's character set, length range and construction (uniform letters,
//! consonant-vowel alternation, concatenated dictionary words) with a generator of their
//! own, and carry `-like` in their names. Dictionary families take the word list as input
//! (`/usr/share/dict/words` from Debian's `wamerican` in the benchmark).

use crate::rng::SplitMix;

/// A family: its name, whether it is dictionary based, and its generator.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub dictionary: bool,
    /// `(seed, count, words)` to `count` full domain names.
    pub generate: fn(u64, usize, &[String]) -> Vec<String>,
}

/// Every family, character-based first.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "ramnit",
        dictionary: false,
        generate: ramnit,
    },
    Family {
        name: "necurs",
        dictionary: false,
        generate: necurs,
    },
    Family {
        name: "cryptolocker-like",
        dictionary: false,
        generate: cryptolocker,
    },
    Family {
        name: "conficker-like",
        dictionary: false,
        generate: conficker,
    },
    Family {
        name: "qakbot-like",
        dictionary: false,
        generate: qakbot,
    },
    Family {
        name: "simda-like",
        dictionary: false,
        generate: simda,
    },
    Family {
        name: "suppobox-like",
        dictionary: true,
        generate: suppobox,
    },
    Family {
        name: "matsnu-like",
        dictionary: true,
        generate: matsnu,
    },
];

fn letters(r: &mut SplitMix, len: u64, alphabet: &[u8]) -> String {
    (0..len)
        .map(|_| char::from(alphabet[r.below(alphabet.len() as u64) as usize]))
        .collect()
}

const AZ: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

/// Ramnit: a Park-Miller style generator; 8 to 19 letters from `a`-`y`.
fn ramnit(seed: u64, count: usize, _: &[String]) -> Vec<String> {
    let mut s = (seed & 0xffff_ffff) as u32;
    let rand = |s: &mut u32, modulus: u32| {
        let ix = *s;
        let v = 16807u32
            .wrapping_mul(ix % 127_773)
            .wrapping_sub(2836u32.wrapping_mul(ix / 127_773));
        *s = v;
        v % modulus
    };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let seed_a = s;
        let len = rand(&mut s, 12) + 8;
        let seed_b = s;
        let name: String = (0..len)
            .map(|_| char::from(b'a' + rand(&mut s, 25) as u8))
            .collect();
        let m = u64::from(seed_a) * u64::from(seed_b);
        s = (m.wrapping_add(m >> 32) & 0xffff_ffff) as u32;
        out.push(format!("{name}.com"));
    }
    out
}

fn necurs_mix(mut v: u64) -> u64 {
    let loops = (v & 0x7f) + 21;
    for i in 0..loops {
        v = v.wrapping_add(
            (v.wrapping_mul(7) ^ (v << 15))
                .wrapping_add(8u64.wrapping_mul(i))
                .wrapping_sub(v >> 5),
        );
    }
    v
}

/// Necurs: a 64-bit mixing function over date, sequence number and a magic number; 7 to 21
/// letters from `a`-`y` under one of its TLDs.
fn necurs(seed: u64, count: usize, _: &[String]) -> Vec<String> {
    const TLDS: &[&str] = &[
        "tj", "in", "jp", "tw", "ac", "cm", "la", "mn", "so", "sh", "sc", "nu", "nf", "mu", "ms",
        "mx", "ki", "im", "cx", "cc", "tv", "bz", "me", "eu", "de", "ru", "co", "su", "pw", "kz",
        "sx", "us", "ug", "ir", "to", "ga", "com", "net", "org", "biz", "xxx", "pro", "bit",
    ];
    let (year, month, day) = (2026u64, 12u64, 5u64);
    let magic = 9 + seed;
    (0..count as u64)
        .map(|seq| {
            let mut n = necurs_mix(year);
            n = necurs_mix(n.wrapping_add(month).wrapping_add(43690));
            n = necurs_mix(n.wrapping_add(day >> 2));
            n = necurs_mix(n.wrapping_add(seq));
            n = necurs_mix(n.wrapping_add(magic));
            let len = n % 15 + 7;
            let mut name = String::new();
            for i in 0..len {
                n = necurs_mix(n.wrapping_add(i));
                name.push(char::from(b'a' + (n % 25) as u8));
                n = necurs_mix(n.wrapping_add(0x00ab_bedf));
            }
            format!("{name}.{}", TLDS[(n % TLDS.len() as u64) as usize])
        })
        .collect()
}

/// CryptoLocker-like: shift-xor mixing of year, month and day; 12 to 15 letters.
fn cryptolocker(seed: u64, count: usize, _: &[String]) -> Vec<String> {
    const TLDS: &[&str] = &["com", "net", "biz", "ru", "org", "co.uk", "info"];
    // The seed moves every part of the date state: the year's mix ignores its low four bits.
    let (mut y, mut m, mut d) = (
        2026u32.wrapping_add((seed as u32).wrapping_mul(0x9e37_79b9)),
        12u32.wrapping_add(seed as u32),
        5u32.wrapping_add((seed as u32) << 4),
    );
    (0..count)
        .map(|i| {
            let len = 12 + (i % 4);
            let name: String = (0..len)
                .map(|_| {
                    y = ((y ^ y.wrapping_mul(8)) >> 11) ^ ((y & 0xffff_fff0) << 17);
                    m = ((m ^ m.wrapping_mul(4)) >> 25) ^ (m & 0xffff_fff8).wrapping_mul(16);
                    d = ((d ^ (d << 13)) >> 19) ^ ((d & 0xffff_fffe) << 12);
                    char::from(b'a' + ((y ^ m ^ d) % 25) as u8)
                })
                .collect();
            // Keep the state moving between names even when a mix collapses to zero.
            y = y.wrapping_add(i as u32 + 0x9e37);
            d = d.wrapping_add(0x79b9);
            m = m.wrapping_add(1);
            format!("{name}.{}", TLDS[i % TLDS.len()])
        })
        .collect()
}

/// Conficker-like: 4 to 10 uniform letters under the classic TLDs.
fn conficker(seed: u64, count: usize, _: &[String]) -> Vec<String> {
    const TLDS: &[&str] = &["com", "net", "org", "info", "biz", "ws", "cn", "cc"];
    let mut r = SplitMix::new(seed ^ 0xc0f1);
    (0..count)
        .map(|_| {
            let len = 4 + r.below(7);
            let name = letters(&mut r, len, AZ);
            format!("{name}.{}", TLDS[r.below(TLDS.len() as u64) as usize])
        })
        .collect()
}

/// QakBot-like: 8 to 25 uniform letters.
fn qakbot(seed: u64, count: usize, _: &[String]) -> Vec<String> {
    const TLDS: &[&str] = &["com", "net", "org", "info", "biz", "org.uk"];
    let mut r = SplitMix::new(seed ^ 0x9a4b);
    (0..count)
        .map(|_| {
            let len = 8 + r.below(18);
            let name = letters(&mut r, len, AZ);
            format!("{name}.{}", TLDS[r.below(TLDS.len() as u64) as usize])
        })
        .collect()
}

/// Simda-like: pronounceable names, consonants and vowels alternating, 6 to 12 letters.
fn simda(seed: u64, count: usize, _: &[String]) -> Vec<String> {
    const CONSONANTS: &[u8] = b"qwrtpsdfghjklzxcvbnm";
    const VOWELS: &[u8] = b"eyuioa";
    const TLDS: &[&str] = &["com", "net", "info", "eu", "ru"];
    let mut r = SplitMix::new(seed ^ 0x51d4);
    (0..count)
        .map(|_| {
            let len = 6 + r.below(7);
            let name: String = (0..len)
                .map(|i| {
                    let set = if i % 2 == 0 { CONSONANTS } else { VOWELS };
                    char::from(set[r.below(set.len() as u64) as usize])
                })
                .collect();
            format!("{name}.{}", TLDS[r.below(TLDS.len() as u64) as usize])
        })
        .collect()
}

/// The usable words of a list: lowercase ASCII letters only, 3 to 10 long, deduplicated and
/// sorted so the same list gives the same names.
#[must_use]
pub fn usable_words(words: &[String]) -> Vec<String> {
    let mut w: Vec<String> = words
        .iter()
        .filter(|w| (3..=10).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase()))
        .cloned()
        .collect();
    w.sort();
    w.dedup();
    w
}

fn pick<'w>(r: &mut SplitMix, words: &'w [String]) -> &'w str {
    words
        .get(r.below(words.len().max(1) as u64) as usize)
        .map_or("word", String::as_str)
}

/// Suppobox-like: two dictionary words joined (`heavenshake.net`).
fn suppobox(seed: u64, count: usize, words: &[String]) -> Vec<String> {
    let words = usable_words(words);
    let mut r = SplitMix::new(seed ^ 0x5bb0);
    (0..count)
        .map(|_| format!("{}{}.net", pick(&mut r, &words), pick(&mut r, &words)))
        .collect()
}

/// Matsnu-like: dictionary words, sometimes hyphen-joined, until the label is 12 to 24 long.
fn matsnu(seed: u64, count: usize, words: &[String]) -> Vec<String> {
    let words = usable_words(words);
    let mut r = SplitMix::new(seed ^ 0x3a75);
    (0..count)
        .map(|_| {
            let target = 12 + r.below(13) as usize;
            let hyphen = r.below(4) == 0;
            let mut name = String::new();
            while name.len() < target {
                if hyphen && !name.is_empty() {
                    name.push('-');
                }
                name.push_str(pick(&mut r, &words));
            }
            format!("{name}.com")
        })
        .collect()
}
