//! DLP on TLS plaintext: the `[dlp]` policy, the detectors, the per-stream scanner, the
//! probes on OpenSSL and the coverage of processes (see `docs/design/dlp.md`).

pub mod coverage;
pub mod detect;
pub mod probe;
pub mod prologue;
pub mod runtime;
pub mod stream;

/// What a match does beyond its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Report only.
    #[default]
    Alert,
    /// Report, and drop the flow's outgoing packets in TC egress (`dlp-reset`).
    Reset,
}

/// The built-in detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Payment card numbers (13 to 19 digits, spaces or dashes allowed) passing the Luhn check.
    Card,
    /// PEM private keys (`-----BEGIN ... PRIVATE KEY-----`).
    PrivateKey,
    /// Cloud credentials: AWS access key ids, GCP service-account key files, GitHub and Slack
    /// tokens.
    CloudKey,
}

impl Builtin {
    /// Every built-in detector, in the order they are listed.
    pub const ALL: [Builtin; 3] = [Builtin::Card, Builtin::PrivateKey, Builtin::CloudKey];

    /// The policy's name of the detector.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Card => "card",
            Builtin::PrivateKey => "private_key",
            Builtin::CloudKey => "cloud_key",
        }
    }

    /// The detector of a policy name.
    #[must_use]
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == s)
    }
}

/// A custom pattern of `[[dlp.pattern]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub name: String,
    pub regex: String,
}

/// Custom patterns a policy may hold.
pub const MAX_PATTERNS: usize = 64;
/// Compiled size limit of one custom pattern (bytes of the regex engine's program).
pub const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// The `[dlp]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dlp {
    /// The section is there and `enabled` is not false.
    pub enabled: bool,
    pub builtins: Vec<Builtin>,
    pub patterns: Vec<Pattern>,
    pub action: Action,
    /// Interfaces whose TC egress carries the reset program (`action = "reset"`).
    pub interfaces: Vec<String>,
    /// Extra libssl files to probe, besides those found in processes' mappings.
    pub libraries: Vec<String>,
    /// Line of the section in the policy file (0 when absent).
    pub line: usize,
}

/// `palisade dlp ...`.
///
/// # Errors
/// When the policy cannot be read, has no enabled `[dlp]`, or the probes cannot be loaded.
pub fn command(c: crate::cli::DlpCommand) -> anyhow::Result<()> {
    use std::sync::{Arc, atomic::AtomicBool};

    use anyhow::{Context as _, bail};
    match c {
        crate::cli::DlpCommand::Coverage { all } => {
            for line in coverage::report(all) {
                println!("{line}");
            }
            Ok(())
        }
        crate::cli::DlpCommand::Watch { policy, duration } => {
            let p = crate::policy::config::load_policy(&policy)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("reading {}", policy.display()))?;
            if !p.dlp.enabled {
                bail!("{}: [dlp] is absent or not enabled", policy.display());
            }
            let mut w = probe::Watcher::start(&p.dlp)?;
            let stop = Arc::new(AtomicBool::new(false));
            install_stop(&stop);
            if let Some(secs) = duration {
                let s = Arc::clone(&stop);
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_secs(secs));
                    s.store(true, std::sync::atomic::Ordering::Relaxed);
                });
            }
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            // The first pass over /proc reads every executable once (later passes use the
            // cache): done before the watcher says it is ready.
            w.rescan(&mut out);
            eprintln!(
                "palisade: dlp watching ({} libraries probed)",
                w.probed_count()
            );
            w.run(&stop, &mut out)
        }
    }
}

static STOP: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(s) = STOP.get() {
        s.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn install_stop(stop: &std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let _ = STOP.set(std::sync::Arc::clone(stop));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}
