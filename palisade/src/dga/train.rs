//! Building a [`Model`] from benign registrable labels (`palisade-bench --dga-train`).
//!
//! The n-gram tables are smoothed estimates over four fifths of the benign labels (a trigram backs off to
//! the bigram, the bigram to the add-one unigram). The logistic weights separate the benign
//! labels held out of the tables (the other fifth) from uniformly random strings of the
//! same lengths (letters, sometimes digits), and the bias is calibrated on them: no DGA
//! family's output is used for training, so the measurement on the families is not fitted
//! to them.

use super::{BOUNDARY, FEATURES, Features, Model, NLL_SCALE, SYMBOLS, symbol};

/// Weight of the lower-order estimate in each back-off.
const PRIOR: f64 = 5.0;
/// Gradient-descent passes over the training set.
const EPOCHS: usize = 400;
const LEARNING_RATE: f32 = 0.5;
/// L2 penalty on the weights.
const L2: f32 = 1e-4;

fn quantise(p: f64) -> u8 {
    (-p.ln() * f64::from(NLL_SCALE)).round().clamp(0.0, 255.0) as u8
}

/// Uniformly random strings, the negative class: one for each of `like`, of the same length
/// (at least 3), so the model cannot learn length from a mismatch of the two sets and must
/// rely on the characters; one in five draws digits too.
#[must_use]
pub fn random_labels(seed: u64, like: &[String]) -> Vec<String> {
    let mut s = seed | 1;
    let mut next = move || {
        // xorshift64*
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    like.iter()
        .map(|l| {
            let len = l.len().max(3);
            let digits = next() % 5 == 0;
            let alphabet: &[u8] = if digits {
                b"abcdefghijklmnopqrstuvwxyz0123456789"
            } else {
                b"abcdefghijklmnopqrstuvwxyz"
            };
            (0..len)
                .map(|_| char::from(alphabet[(next() % alphabet.len() as u64) as usize]))
                .collect()
        })
        .collect()
}

/// Trains a model on `benign` labels against `random` labels, then moves its bias so that
/// `calibrate_fpr` of the held-out benign training labels score above `calibrate_score`.
#[must_use]
pub fn train(
    benign: &[String],
    random: &[String],
    calibrate_score: u16,
    calibrate_fpr: f64,
) -> Model {
    // One label in five is held out of the n-gram counts and fits the weights and the
    // calibration: labels the tables were counted from look more benign than new ones.
    let mut fit: Vec<&String> = Vec::new();
    let mut counted: Vec<&String> = Vec::new();
    for (i, l) in benign.iter().enumerate() {
        if i % 5 == 0 {
            fit.push(l);
        } else {
            counted.push(l);
        }
    }
    let random = &random[..random.len().min(fit.len())];
    let mut uni = vec![0f64; SYMBOLS];
    let mut bi = vec![0f64; SYMBOLS * SYMBOLS];
    let mut tri = vec![0f64; SYMBOLS * SYMBOLS * SYMBOLS];
    for l in counted {
        let (mut p2, mut p1) = (BOUNDARY, BOUNDARY);
        for s in l.bytes().map(symbol).chain(std::iter::once(BOUNDARY)) {
            uni[s] += 1.0;
            bi[p1 * SYMBOLS + s] += 1.0;
            tri[(p2 * SYMBOLS + p1) * SYMBOLS + s] += 1.0;
            (p2, p1) = (p1, s);
        }
    }
    let total: f64 = uni.iter().sum();
    let p_uni: Vec<f64> = uni
        .iter()
        .map(|c| (c + 1.0) / (total + SYMBOLS as f64))
        .collect();
    let mut p_bi = vec![0f64; SYMBOLS * SYMBOLS];
    let mut bigram = vec![0u8; SYMBOLS * SYMBOLS];
    for a in 0..SYMBOLS {
        let row: f64 = bi[a * SYMBOLS..(a + 1) * SYMBOLS].iter().sum();
        for c in 0..SYMBOLS {
            let p = (bi[a * SYMBOLS + c] + PRIOR * p_uni[c]) / (row + PRIOR);
            p_bi[a * SYMBOLS + c] = p;
            bigram[a * SYMBOLS + c] = quantise(p);
        }
    }
    let mut trigram = vec![0u8; SYMBOLS * SYMBOLS * SYMBOLS];
    for ab in 0..SYMBOLS * SYMBOLS {
        let b = ab % SYMBOLS;
        let row: f64 = tri[ab * SYMBOLS..(ab + 1) * SYMBOLS].iter().sum();
        for c in 0..SYMBOLS {
            let p = (tri[ab * SYMBOLS + c] + PRIOR * p_bi[b * SYMBOLS + c]) / (row + PRIOR);
            trigram[ab * SYMBOLS + c] = quantise(p);
        }
    }
    let mut model = Model {
        mean: [0.0; FEATURES],
        scale: [1.0; FEATURES],
        weights: [0.0; FEATURES],
        bias: 0.0,
        bigram,
        trigram,
    };
    let rows: Vec<(Features, f32)> = fit
        .iter()
        .map(|l| (model.features(l), 0.0))
        .chain(random.iter().map(|l| (model.features(l), 1.0)))
        .collect();
    let n = rows.len().max(1) as f32;
    for i in 0..FEATURES {
        let mean = rows.iter().map(|(x, _)| x.0[i]).sum::<f32>() / n;
        let var = rows
            .iter()
            .map(|(x, _)| (x.0[i] - mean).powi(2))
            .sum::<f32>()
            / n;
        model.mean[i] = mean;
        model.scale[i] = var.sqrt().max(1e-3);
    }
    let z: Vec<([f32; FEATURES], f32)> = rows
        .iter()
        .map(|(x, y)| {
            let mut v = [0.0; FEATURES];
            for (i, vi) in v.iter_mut().enumerate() {
                *vi = (x.0[i] - model.mean[i]) / model.scale[i];
            }
            (v, *y)
        })
        .collect();
    for _ in 0..EPOCHS {
        let mut grad = [0f32; FEATURES];
        let mut grad_b = 0f32;
        for (x, y) in &z {
            let s = (0..FEATURES).fold(model.bias, |s, i| s + model.weights[i] * x[i]);
            let e = 1.0 / (1.0 + (-s).exp()) - y;
            for (g, xi) in grad.iter_mut().zip(x) {
                *g += e * xi;
            }
            grad_b += e;
        }
        for (w, g) in model.weights.iter_mut().zip(grad) {
            *w -= LEARNING_RATE * (g / n + L2 * *w);
        }
        model.bias -= LEARNING_RATE * grad_b / n;
    }
    // Calibration on the training labels only: the test split is never looked at.
    let mut z: Vec<f32> = fit
        .iter()
        .map(|l| model.log_odds(&model.features(l)))
        .collect();
    z.sort_by(f32::total_cmp);
    let keep = ((1.0 - calibrate_fpr) * z.len() as f64).ceil() as usize;
    if let Some(&q) = z.get(keep.min(z.len().saturating_sub(1))) {
        let target = (f32::from(calibrate_score) - 500.0) / super::SCORE_PER_NAT;
        model.bias += target - q;
    }
    model
}
