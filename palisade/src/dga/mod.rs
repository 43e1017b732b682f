//! DGA scoring: how algorithmically generated a DNS name looks.
//!
//! A name is scored by its registrable label (the label left of the public suffix, see
//! [`registrable`]): `www.xkcd.co.uk` is scored as `xkcd`. The score, `0..=1000`, is a
//! small logistic model over nine features of that label: the mean negative log-likelihood
//! of its characters under a trigram and a bigram model of benign registrable labels, its
//! length, digit ratio, longest consonant run, character entropy, vowel ratio, share of rare
//! trigrams and total trigram negative log-likelihood (evidence grows with length). The
//! score is the log-odds on a fixed scale, `500 + 20 * z` clamped, every 20 points one more
//! nat of odds, so the top of the scale keeps its resolution; the bias is calibrated so that
//! 0.1 % of benign training labels score above 900 (ordinary names score about 650 to 750). The tables
//! and the weights ship in the repository (`palisade/data/dga-model.bin`, built by
//! `palisade-bench --dga-train`, see `docs/design/dga.md`); nothing is downloaded at run
//! time.
//!
//! [`families`] holds the DGA generators the measurement uses, [`train`] builds the model,
//! [`runtime`] is the daemon's side (`[dns.dga]`: a bounded cache, events, a DNS list).

pub mod families;
pub mod runtime;
pub mod train;

/// Symbols of the n-gram alphabet: `a`-`z`, `0`-`9`, `-`, any other byte, and the label's
/// boundary.
pub const SYMBOLS: usize = 39;
/// The boundary symbol (before the first and after the last character).
const BOUNDARY: usize = 38;
/// Features the logistic model combines.
pub const FEATURES: usize = 9;
/// A negative log-likelihood (nats) is stored as `round(nll * NLL_SCALE)`, saturated at 255.
pub const NLL_SCALE: f32 = 16.0;
/// A trigram rarer than this (stored value, about 1 in 1000) counts as rare (feature 7).
const RARE: u8 = 110;
/// Bytes of a model file: header, normalisation and weights, then the two tables.
const HEADER: usize = 8;
const PARAMS: usize = 4 * (3 * FEATURES + 1);
/// Length of a model file.
pub const MODEL_LEN: usize = HEADER + PARAMS + SYMBOLS * SYMBOLS + SYMBOLS * SYMBOLS * SYMBOLS;
/// First bytes of a model file (format version 1).
pub const MAGIC: &[u8; 5] = b"PDGA1";
/// The highest score.
pub const MAX_SCORE: u16 = 1000;
/// Score points per nat of log-odds: the score is `500 + SCORE_PER_NAT * z`, clamped.
pub const SCORE_PER_NAT: f32 = 20.0;

/// The model file built into the binary.
pub static EMBEDDED: &[u8] = include_bytes!("../../data/dga-model.bin");

/// The symbol of one byte of a label.
#[must_use]
pub fn symbol(b: u8) -> usize {
    match b.to_ascii_lowercase() {
        c @ b'a'..=b'z' => usize::from(c - b'a'),
        c @ b'0'..=b'9' => 26 + usize::from(c - b'0'),
        b'-' => 36,
        _ => 37,
    }
}

/// Second-level suffixes under which names are registered (`example.co.uk`): the common
/// ones of the busiest country-code TLDs. Every other name's public suffix is its last label
/// (a TLD). This is deliberately small: a label under a suffix missing here is scored one
/// level too high (`example.gv.at` scores `gv`), which makes it look less random, never more.
pub const SECOND_LEVEL: &[&str] = &[
    "ac.uk", "co.uk", "gov.uk", "ltd.uk", "me.uk", "net.uk", "nhs.uk", "org.uk", "plc.uk",
    "sch.uk", "asn.au", "com.au", "edu.au", "gov.au", "id.au", "net.au", "org.au", "ac.jp",
    "co.jp", "go.jp", "ne.jp", "or.jp", "ac.nz", "co.nz", "govt.nz", "net.nz", "org.nz", "ac.za",
    "co.za", "gov.za", "org.za", "com.br", "gov.br", "net.br", "org.br", "com.cn", "edu.cn",
    "gov.cn", "net.cn", "org.cn", "com.tw", "edu.tw", "org.tw", "co.in", "gov.in", "net.in",
    "org.in", "ac.in", "co.kr", "or.kr", "com.mx", "gob.mx", "org.mx", "com.ar", "gob.ar",
    "com.tr", "gov.tr", "org.tr", "co.il", "org.il", "ac.il", "com.sg", "edu.sg", "gov.sg",
    "com.hk", "edu.hk", "gov.hk", "com.my", "co.id", "or.id", "ac.id", "com.pl", "com.ua",
    "kiev.ua", "org.ua", "com.ru", "com.es", "com.co", "com.pe", "com.ph", "com.vn", "com.pk",
    "com.ng", "co.th", "ac.th", "com.sa", "com.eg", "co.ke", "gc.ca", "qc.ca",
];

/// The registrable label of a DNS name (zone-file text, a trailing dot allowed), lowercased:
/// the label left of the public suffix. `None` for a name that is only a suffix (`com`,
/// `co.uk`) or empty.
#[must_use]
pub fn registrable(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    let n = labels.len();
    if n < 2 {
        return None;
    }
    let suffix_labels = if n >= 3 && SECOND_LEVEL.contains(&labels[n - 2..].join(".").as_str()) {
        2
    } else if n == 2 && SECOND_LEVEL.contains(&name.as_str()) {
        return None;
    } else {
        1
    };
    let label = labels[n - 1 - suffix_labels];
    (!label.is_empty()).then(|| label.to_string())
}

/// The features of a label, in model order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Features(pub [f32; FEATURES]);

/// A DGA model: n-gram tables, normalisation and logistic weights.
#[derive(Debug, Clone)]
pub struct Model {
    mean: [f32; FEATURES],
    scale: [f32; FEATURES],
    weights: [f32; FEATURES],
    bias: f32,
    bigram: Vec<u8>,
    trigram: Vec<u8>,
}

/// Why model bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("a DGA model is {MODEL_LEN} bytes, found {0}")]
    Length(usize),
    #[error("not a DGA model (bad magic)")]
    Magic,
    #[error("the DGA model has a non-finite parameter")]
    NotFinite,
}

impl Model {
    /// The model built into the binary.
    ///
    /// # Panics
    /// Never for the committed model: `embedded_model_parses` checks it.
    #[must_use]
    pub fn embedded() -> &'static Self {
        static M: std::sync::OnceLock<Model> = std::sync::OnceLock::new();
        M.get_or_init(|| Self::from_bytes(EMBEDDED).expect("the embedded DGA model is valid"))
    }

    /// Parses a model file.
    ///
    /// # Errors
    /// When the bytes are not a model of this format.
    pub fn from_bytes(b: &[u8]) -> Result<Self, ModelError> {
        if b.len() != MODEL_LEN {
            return Err(ModelError::Length(b.len()));
        }
        if &b[..MAGIC.len()] != MAGIC {
            return Err(ModelError::Magic);
        }
        let f = |i: usize| {
            let at = HEADER + 4 * i;
            f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
        };
        let mut m = Self {
            mean: [0.0; FEATURES],
            scale: [0.0; FEATURES],
            weights: [0.0; FEATURES],
            bias: f(3 * FEATURES),
            bigram: b[HEADER + PARAMS..HEADER + PARAMS + SYMBOLS * SYMBOLS].to_vec(),
            trigram: b[HEADER + PARAMS + SYMBOLS * SYMBOLS..].to_vec(),
        };
        for i in 0..FEATURES {
            m.mean[i] = f(i);
            m.scale[i] = f(FEATURES + i);
            m.weights[i] = f(2 * FEATURES + i);
        }
        let all = m.mean.iter().chain(&m.scale).chain(&m.weights);
        if !m.bias.is_finite() || all.clone().any(|v| !v.is_finite()) || m.scale.contains(&0.0) {
            return Err(ModelError::NotFinite);
        }
        Ok(m)
    }

    /// Serialises a model (the inverse of [`Self::from_bytes`]).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MODEL_LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&[0; HEADER - 5]);
        for v in self
            .mean
            .iter()
            .chain(&self.scale)
            .chain(&self.weights)
            .chain(std::iter::once(&self.bias))
        {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.bigram);
        b.extend_from_slice(&self.trigram);
        b
    }

    /// The features of `label` (the registrable label, not a whole name).
    #[must_use]
    pub fn features(&self, label: &str) -> Features {
        let bytes = label.as_bytes();
        let syms: Vec<usize> = bytes.iter().map(|&b| symbol(b)).collect();
        let (mut tri, mut bi, mut rare) = (0.0f32, 0.0f32, 0.0f32);
        let (mut p2, mut p1) = (BOUNDARY, BOUNDARY);
        for &s in syms.iter().chain(std::iter::once(&BOUNDARY)) {
            let t = self.trigram[(p2 * SYMBOLS + p1) * SYMBOLS + s];
            tri += f32::from(t);
            bi += f32::from(self.bigram[p1 * SYMBOLS + s]);
            if t > RARE {
                rare += 1.0;
            }
            (p2, p1) = (p1, s);
        }
        let steps = (syms.len() + 1) as f32;
        let len = bytes.len().max(1) as f32;
        let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count() as f32;
        let is_vowel = |b: u8| matches!(b.to_ascii_lowercase(), b'a' | b'e' | b'i' | b'o' | b'u');
        let letters = bytes.iter().filter(|b| b.is_ascii_alphabetic()).count();
        let vowels = bytes.iter().filter(|&&b| is_vowel(b)).count();
        let (mut run, mut longest) = (0u32, 0u32);
        for &b in bytes {
            if b.is_ascii_alphabetic() && !is_vowel(b) {
                run += 1;
                longest = longest.max(run);
            } else {
                run = 0;
            }
        }
        let mut counts = [0u32; SYMBOLS];
        for &s in &syms {
            counts[s] += 1;
        }
        let entropy: f32 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f32 / len;
                -p * p.log2()
            })
            .sum();
        Features([
            tri / steps / NLL_SCALE,
            bi / steps / NLL_SCALE,
            bytes.len() as f32,
            digits / len,
            longest as f32,
            entropy,
            if letters == 0 {
                0.0
            } else {
                vowels as f32 / letters as f32
            },
            rare / steps,
            tri / NLL_SCALE,
        ])
    }

    /// The model's log-odds that features `x` belong to a generated name.
    #[must_use]
    pub fn log_odds(&self, x: &Features) -> f32 {
        (0..FEATURES).fold(self.bias, |z, i| {
            z + self.weights[i] * (x.0[i] - self.mean[i]) / self.scale[i]
        })
    }

    /// The score of a label, `0..=1000`: `500 + SCORE_PER_NAT * log-odds`, clamped.
    #[must_use]
    pub fn score_label(&self, label: &str) -> u16 {
        let z = self.log_odds(&self.features(label));
        (500.0 + SCORE_PER_NAT * z)
            .round()
            .clamp(0.0, f32::from(MAX_SCORE)) as u16
    }

    /// The score of a DNS name by its registrable label; `None` for a bare suffix.
    #[must_use]
    pub fn score_name(&self, name: &str) -> Option<u16> {
        registrable(name).map(|l| self.score_label(&l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrable_label_strips_the_public_suffix() {
        assert_eq!(registrable("www.google.com.").as_deref(), Some("google"));
        assert_eq!(registrable("News.BBC.co.uk").as_deref(), Some("bbc"));
        assert_eq!(
            registrable("a.b.example.com.au").as_deref(),
            Some("example")
        );
        assert_eq!(registrable("co.uk"), None);
        assert_eq!(registrable("com."), None);
        assert_eq!(registrable("."), None);
        assert_eq!(registrable(""), None);
        assert_eq!(registrable("co.uk.evil.net").as_deref(), Some("evil"));
    }

    #[test]
    fn embedded_model_parses_and_round_trips() {
        let m = Model::from_bytes(EMBEDDED).expect("valid");
        assert_eq!(m.to_bytes(), EMBEDDED);
        assert_eq!(
            Model::from_bytes(&EMBEDDED[1..]).unwrap_err(),
            ModelError::Length(MODEL_LEN - 1)
        );
        let mut bad = EMBEDDED.to_vec();
        bad[0] = b'X';
        assert_eq!(Model::from_bytes(&bad).unwrap_err(), ModelError::Magic);
        bad = EMBEDDED.to_vec();
        bad[HEADER..HEADER + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(Model::from_bytes(&bad).unwrap_err(), ModelError::NotFinite);
    }

    #[test]
    fn odd_bytes_score_without_panicking() {
        let m = Model::embedded();
        for l in [
            "",
            "-",
            "\\000\\255",
            "xn--bcher-kva",
            &"a".repeat(63),
            "ÿÿ",
        ] {
            assert!(m.score_label(l) <= MAX_SCORE, "{l:?}");
        }
    }
}
