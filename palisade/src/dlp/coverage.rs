//! Which processes the DLP probes see: a process that maps an OpenSSL `libssl` is covered
//! once that file is probed; one whose TLS the probes cannot see (GnuTLS, NSS, Go's
//! crypto/tls, rustls, a statically linked OpenSSL) is reported as uncovered with the reason.
//! Libraries are reached through `/proc/PID/root`, so a container's own `libssl` is probed
//! as the file it is in the container's mount namespace.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context as _, Result};

/// A library file by identity (a bind mount or a container's copy is another file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LibKey {
    pub dev: u64,
    pub ino: u64,
}

impl LibKey {
    /// The identity of the file at `path`.
    ///
    /// # Errors
    /// When it cannot be stat'ed.
    pub fn of(path: &Path) -> Result<Self> {
        let m = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// `dev:ino`, as the watcher's state file lists it.
    #[must_use]
    pub fn line(&self) -> String {
        format!("{}:{}", self.dev, self.ino)
    }

    fn parse(s: &str) -> Option<Self> {
        let (d, i) = s.trim().split_once(':')?;
        Some(Self {
            dev: d.parse().ok()?,
            ino: i.parse().ok()?,
        })
    }
}

/// What the probes make of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// It maps an OpenSSL libssl that is probed.
    Covered { path: PathBuf },
    /// It maps an OpenSSL libssl that is not probed (yet).
    Probeable { path: PathBuf },
    /// It uses TLS the probes cannot see.
    Uncovered(String),
    /// No TLS library found.
    NoTls,
}

/// One process.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub comm: String,
    /// Time since the process started (exec'd or forked).
    pub age: Option<Duration>,
    pub status: Status,
}

/// Bytes of an executable searched for a statically linked TLS stack.
pub const EXE_SCAN_BYTES: u64 = 256 << 20;

/// The host's libssl files that are probed at start (the ones that exist).
#[must_use]
pub fn system_libraries() -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for p in [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/lib/x86_64-linux-gnu/libssl.so.3",
        "/usr/lib/aarch64-linux-gnu/libssl.so.3",
        "/usr/lib64/libssl.so.3",
        "/usr/lib/libssl.so.3",
    ] {
        let path = PathBuf::from(p);
        if let Ok(k) = LibKey::of(&path)
            && seen.insert(k)
        {
            out.push(path);
        }
    }
    out
}

/// The libraries the running watchers probe (from their state files; empty when none
/// runs). A file whose watcher is gone (killed before it could remove it) is ignored.
#[must_use]
pub fn probed_by_watcher() -> HashSet<LibKey> {
    use super::probe::{STATE_DIR, STATE_PREFIX};
    let Ok(dir) = fs::read_dir(STATE_DIR) else {
        return HashSet::new();
    };
    let mut out = HashSet::new();
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(STATE_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(text) = fs::read_to_string(e.path()) {
            out.extend(text.lines().filter_map(LibKey::parse));
        }
    }
    out
}

/// Every process, with what the probes make of it (`probed`: the libraries probed now).
#[must_use]
pub fn scan(probed: &HashSet<LibKey>) -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(p) = process(pid, probed) {
            out.push(p);
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// What the probes make of one process; `None` when it is gone (or a kernel thread).
#[must_use]
pub fn process(pid: u32, probed: &HashSet<LibKey>) -> Option<Proc> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default();
    if maps.is_empty() {
        return None;
    }
    let status = classify(pid, &maps, probed);
    Some(Proc {
        pid,
        comm,
        age: age(pid),
        status,
    })
}

fn classify(pid: u32, maps: &str, probed: &HashSet<LibKey>) -> Status {
    let mut libs: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/'))
        .collect();
    libs.dedup();
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_owned();
    if let Some(ssl) = libs.iter().find(|p| base(p).starts_with("libssl.so")) {
        let path = PathBuf::from(format!("/proc/{pid}/root{ssl}"));
        return match LibKey::of(&path) {
            Ok(k) if probed.contains(&k) => Status::Covered { path },
            Ok(_) => Status::Probeable { path },
            Err(e) => Status::Uncovered(format!("its libssl cannot be reached: {e:#}")),
        };
    }
    if libs.iter().any(|p| base(p).starts_with("libgnutls.so")) {
        return Status::Uncovered("GnuTLS (libgnutls): its record functions are not probed".into());
    }
    if libs.iter().any(|p| base(p).starts_with("libnss3.so")) {
        return Status::Uncovered("NSS (libnss3/libssl3 of NSS): not probed".into());
    }
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    match static_tls(&exe) {
        Some(what) => Status::Uncovered(what.to_owned()),
        None => Status::NoTls,
    }
}

/// Executables already searched, by file identity.
static EXE_CACHE: Mutex<Option<HashMap<LibKey, Option<&'static str>>>> = Mutex::new(None);

/// A statically linked TLS stack in an executable, by the markers each leaves in the file.
fn static_tls(exe: &Path) -> Option<&'static str> {
    let key = LibKey::of(exe).ok()?;
    // This program holds the markers it searches for.
    if LibKey::of(Path::new("/proc/self/exe")).is_ok_and(|me| me == key) {
        return None;
    }
    if let Some(hit) = EXE_CACHE
        .lock()
        .ok()?
        .get_or_insert_with(HashMap::new)
        .get(&key)
    {
        return *hit;
    }
    let found = search_exe(exe);
    EXE_CACHE
        .lock()
        .ok()?
        .get_or_insert_with(HashMap::new)
        .insert(key, found);
    found
}

/// Markers of statically linked TLS stacks, searched in one pass.
const MARKERS: [&[u8]; 8] = [
    b"\xff Go buildinf:",
    b"crypto/tls.(*Conn).Write",
    b"rustls::conn",
    b"ClientConnection",
    b"BoringSSL",
    b"OpenSSL 3.",
    b"SSL_write_ex",
    b"OpenSSL 1.1.",
];

fn search_exe(exe: &Path) -> Option<&'static str> {
    static SEARCH: std::sync::OnceLock<regex::bytes::Regex> = std::sync::OnceLock::new();
    let re = SEARCH.get_or_init(|| {
        // Every byte as `\xNN`, so the alternation is of plain literals (one fast pass).
        let alts: Vec<String> = MARKERS
            .iter()
            .map(|m| m.iter().map(|b| format!("\\x{b:02x}")).collect())
            .collect();
        regex::bytes::Regex::new(&format!("(?-u){}", alts.join("|")))
            .expect("marker pattern compiles")
    });
    let f = fs::File::open(exe).ok()?;
    let mut data = Vec::new();
    f.take(EXE_SCAN_BYTES).read_to_end(&mut data).ok()?;
    let mut seen = [false; MARKERS.len()];
    for m in re.find_iter(&data) {
        if let Some(i) = MARKERS.iter().position(|k| *k == m.as_bytes()) {
            seen[i] = true;
        }
    }
    if seen[0] && seen[1] {
        return Some("Go crypto/tls (statically linked): not probed");
    }
    if seen[2] {
        return Some("rustls (statically linked): not probed");
    }
    if seen[4] {
        return Some("BoringSSL (statically linked): not probed");
    }
    if (seen[5] || seen[7]) && seen[6] {
        return Some("OpenSSL statically linked into the executable: not probed");
    }
    None
}

fn age(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces): field 22 is the start time in ticks.
    let rest = &stat[stat.rfind(')')? + 2..];
    let start: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let up: f64 = fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64((up - start as f64 / hz).max(0.0)))
}

/// The `palisade dlp coverage` listing: every process with a TLS library (every process
/// with `all`), as lines `PID COMM STATUS DETAIL`.
#[must_use]
pub fn report(all: bool) -> Vec<String> {
    let probed = probed_by_watcher();
    let running = !probed.is_empty();
    let mut lines = vec![format!(
        "{:>7}  {:<16} {:<10} {}",
        "PID", "COMM", "STATUS", "DETAIL"
    )];
    for p in scan(&probed) {
        let (status, detail) = match &p.status {
            Status::Covered { path } => ("covered", format!("OpenSSL {}", path.display())),
            Status::Probeable { path } => (
                "pending",
                if running {
                    format!(
                        "OpenSSL {} (probed at the watcher's next scan)",
                        path.display()
                    )
                } else {
                    format!("OpenSSL {} (no DLP watcher is running)", path.display())
                },
            ),
            Status::Uncovered(why) => ("uncovered", why.clone()),
            Status::NoTls if all => ("no-tls", "no TLS library found".to_owned()),
            Status::NoTls => continue,
        };
        lines.push(format!(
            "{:>7}  {:<16} {:<10} {}",
            p.pid, p.comm, status, detail
        ));
    }
    lines
}
