//! `--dga-train` and `--dga`: the DGA scorer's model, built and measured.
//!
//! Benign names: the Chromium HSTS preload list, from the PyPI package `hstspreload`
//! installed by `cargo xtask setup` into `.tools/venv` (ignored by git). Their registrable labels are split by a
//! hash of the label: 70 % TRAIN (the model, `palisade/data/dga-model.bin`), 30 % TEST (the
//! false-positive rate). DGA names: [`palisade::dga::families`] with fixed seeds; the
//! dictionary families take `/usr/share/dict/words` (Debian's `wamerican`).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use palisade::dga::{self, MAX_SCORE, Model, families::FAMILIES, runtime::DEFAULT_THRESHOLD};
use serde::Serialize;

/// DGA names generated per family.
const PER_FAMILY: usize = 10_000;
/// Seed of every family's generator.
const FAMILY_SEED: u64 = 20_261_205;
/// Seed of the random negatives used for training.
const NEGATIVE_SEED: u64 = 1;
/// Highest false-positive rate the threshold may give on the TEST split.
const MAX_FPR: f64 = 0.001;
const WORDS: &str = "/usr/share/dict/words";
const HSTS_VERSION: &str = "2025.1.1";

/// Lists every host of the preload list (the package only answers membership, so its trie
/// is walked through its own reader).
const DUMP: &str = r#"
import hstspreload as h
out = set()
with h.open_pkg_binary("hstspreload.bin") as f:
    for layer in h._JUMPTABLE:
        for j in layer:
            if j is None:
                continue
            f.seek(j[0]); data = bytearray(j[1]); f.readinto(data)
            for leaf, _, label in h._iter_entries(data):
                if leaf:
                    out.add(label.decode("ascii", "replace"))
print("\n".join(sorted(out)))
"#;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_path_buf()
}

/// The preload list's hosts, from the repository's Python environment (`.tools/venv`,
/// where `cargo xtask setup` installs `hstspreload`).
fn benign_hosts() -> Result<Vec<String>> {
    let python = root().join(".tools/venv/bin/python3");
    let have = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import importlib.metadata as m; assert m.version('hstspreload') == '{HSTS_VERSION}'"
            ),
        ])
        .status();
    if !have.is_ok_and(|s| s.success()) {
        bail!(
            "{} has no hstspreload {HSTS_VERSION}: run `cargo xtask setup`",
            python.display()
        );
    }
    let out = Command::new(&python)
        .args(["-c", DUMP])
        .output()
        .context("listing the HSTS preload list")?;
    if !out.status.success() {
        bail!(
            "listing the HSTS preload list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Distinct registrable labels, split TRAIN / TEST by a hash of the label.
fn split(hosts: &[String]) -> (Vec<String>, Vec<String>) {
    let labels: BTreeSet<String> = hosts.iter().filter_map(|h| dga::registrable(h)).collect();
    labels.into_iter().partition(|l| fnv(l) % 10 < 7)
}

fn words() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(WORDS)
        .with_context(|| format!("reading {WORDS} (Debian's wamerican; `cargo xtask setup`)"))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// Builds the model from the TRAIN split and writes it into the source tree.
pub fn train() -> Result<()> {
    let (train, test) = split(&benign_hosts()?);
    let random = dga::train::random_labels(NEGATIVE_SEED, &train);
    let model = dga::train::train(&train, &random, DEFAULT_THRESHOLD, MAX_FPR);
    let path = root().join("palisade/data/dga-model.bin");
    std::fs::write(&path, model.to_bytes())?;
    println!(
        "trained on {} benign labels (TEST split: {} held out) and {} random strings; wrote {}",
        train.len(),
        test.len(),
        random.len(),
        path.display()
    );
    Ok(())
}

#[derive(Serialize)]
struct FamilyResult {
    family: &'static str,
    dictionary: bool,
    names: usize,
    detected: usize,
    tpr: f64,
    detected_at_default: usize,
    tpr_at_default: f64,
    median_score: u16,
    examples: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    benign_source: String,
    benign_train_labels: usize,
    benign_test_labels: usize,
    threshold: u16,
    false_positives: usize,
    fpr: f64,
    default_threshold: u16,
    false_positives_at_default: usize,
    fpr_at_default: f64,
    per_family: usize,
    seed: u64,
    families: Vec<FamilyResult>,
    highest_benign: Vec<(String, u16)>,
    score_ns: f64,
}

fn median(mut v: Vec<u16>) -> u16 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Scores the TEST split and the families with the embedded model; writes the report.
pub fn run(out: &Path, command: &str) -> Result<()> {
    let (train, test) = split(&benign_hosts()?);
    let words = words()?;
    // The committed table is measured (a rebuild is not needed between training and
    // measuring); the binary embeds the same file.
    let path = root().join("palisade/data/dga-model.bin");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let model = &Model::from_bytes(&bytes)?;
    if bytes != dga::EMBEDDED {
        eprintln!(
            "palisade-bench: note: {} differs from the model built into this binary; rebuild",
            path.display()
        );
    }
    let started = std::time::Instant::now();
    let mut benign: Vec<(String, u16)> = test
        .iter()
        .map(|l| (l.clone(), model.score_label(l)))
        .collect();
    let score_ns = started.elapsed().as_nanos() as f64 / test.len().max(1) as f64;
    let allowed = (MAX_FPR * test.len() as f64).floor() as usize;
    let above = |t: u16| benign.iter().filter(|(_, s)| *s > t).count();
    let threshold = (0..MAX_SCORE)
        .find(|&t| above(t) <= allowed)
        .unwrap_or(MAX_SCORE);
    let false_positives = above(threshold);
    let fp_default = above(DEFAULT_THRESHOLD);
    let mut families = Vec::new();
    for f in FAMILIES {
        let names = (f.generate)(FAMILY_SEED, PER_FAMILY, &words);
        let scores: Vec<u16> = names.iter().filter_map(|n| model.score_name(n)).collect();
        let detected = scores.iter().filter(|&&s| s > threshold).count();
        let at_default = scores.iter().filter(|&&s| s > DEFAULT_THRESHOLD).count();
        families.push(FamilyResult {
            family: f.name,
            dictionary: f.dictionary,
            names: scores.len(),
            detected,
            tpr: detected as f64 / scores.len().max(1) as f64,
            detected_at_default: at_default,
            tpr_at_default: at_default as f64 / scores.len().max(1) as f64,
            median_score: median(scores),
            examples: names.iter().take(3).cloned().collect(),
        });
    }
    benign.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let report = Report {
        benign_source: format!("hstspreload {HSTS_VERSION} (Chromium HSTS preload list)"),
        benign_train_labels: train.len(),
        benign_test_labels: test.len(),
        threshold,
        false_positives,
        fpr: false_positives as f64 / test.len().max(1) as f64,
        default_threshold: DEFAULT_THRESHOLD,
        false_positives_at_default: fp_default,
        fpr_at_default: fp_default as f64 / test.len().max(1) as f64,
        per_family: PER_FAMILY,
        seed: FAMILY_SEED,
        families,
        highest_benign: benign.iter().take(15).cloned().collect(),
        score_ns,
    };
    std::fs::create_dir_all(out)?;
    let json = out.join("dga-full.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    let md = out.join("dga-full.md");
    std::fs::write(&md, markdown(&report, command))?;
    print!("{}", markdown(&report, command));
    println!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

fn markdown(r: &Report, command: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "`{command}`\n");
    let _ = writeln!(s, "# DGA scoring\n");
    let _ = writeln!(
        s,
        "Benign: {} registrable labels: {} TRAIN (the committed model), {} TEST (below). \
         DGA: {} names per family, seed {}.\n",
        r.benign_source, r.benign_train_labels, r.benign_test_labels, r.per_family, r.seed
    );
    let _ = writeln!(
        s,
        "Threshold for FPR <= 0.1 % on TEST: score > {} ({} of {} benign labels above, {:.3} %). \
         At the default threshold {}: {} above ({:.3} %).\n",
        r.threshold,
        r.false_positives,
        r.benign_test_labels,
        r.fpr * 100.0,
        r.default_threshold,
        r.false_positives_at_default,
        r.fpr_at_default * 100.0
    );
    for (title, dict) in [
        ("Character-based families", false),
        ("Dictionary-based families", true),
    ] {
        let _ = writeln!(s, "## {title}\n");
        let _ = writeln!(
            s,
            "| family | names | detected (> {}) | TPR | TPR at default ({}) | median score | examples |",
            r.threshold, r.default_threshold
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|");
        for f in r.families.iter().filter(|f| f.dictionary == dict) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2} % | {:.2} % | {} | {} |",
                f.family,
                f.names,
                f.detected,
                f.tpr * 100.0,
                f.tpr_at_default * 100.0,
                f.median_score,
                f.examples.join(", ")
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "Highest-scoring benign TEST labels (the false positives' kind):\n"
    );
    for (l, sc) in &r.highest_benign {
        let _ = writeln!(s, "- `{l}` {sc}");
    }
    let _ = writeln!(
        s,
        "\nScoring cost: {:.0} ns per label (one thread, features and model).",
        r.score_ns
    );
    s
}
