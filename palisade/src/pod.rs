//! Running as a Kubernetes DaemonSet pod (`charts/palisade`): what the probes ask
//! (`palisade ready`), the watch that follows kubelet's atomic ConfigMap updates
//! (`palisade run --watch-config`), and the cleanup mode (`palisade cleanup`).
//!
//! Kubelet mounts a ConfigMap as a directory whose files are symlinks through `..data`,
//! itself a symlink to a timestamped directory; an update writes a new timestamped
//! directory and renames a new `..data` over the old one. A watch on the file alone misses
//! that swap on some set-ups, so the watch compares the `..data` target and the policy
//! file's bytes.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::api::proto::Status;

/// How often `--watch-config` looks at the config directory.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The symlink kubelet swaps when a ConfigMap volume changes.
pub const KUBELET_DATA_LINK: &str = "..data";

/// Exit code of `palisade ready` when the daemon answers but is not ready.
pub const EXIT_NOT_READY: u8 = 1;

/// Exit code of `palisade ready` when no daemon answers on the socket.
pub const EXIT_NO_DAEMON: u8 = 3;

/// FNV-1a (64 bit) of `bytes`, as 16 hex digits: names a policy file's content in
/// `status` (`policy_digest`) and in `palisade ready --policy`.
#[must_use]
pub fn digest(bytes: &[u8]) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let h = bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    format!("{h:016x}")
}

/// The [`digest`] of the file at `path`.
///
/// # Errors
/// When the file cannot be read.
pub fn file_digest(path: &Path) -> io::Result<String> {
    fs::read(path).map(|b| digest(&b))
}

/// What identifies the config a daemon reads at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// Where the config directory's `..data` points (a ConfigMap volume), if it has one.
    pub data_target: Option<PathBuf>,
    /// The [`digest`] of the policy file, if it could be read.
    pub digest: Option<String>,
}

/// The [`Fingerprint`] of the policy file `config` now.
#[must_use]
pub fn fingerprint(config: &Path) -> Fingerprint {
    let data_target = config
        .parent()
        .and_then(|d| fs::read_link(d.join(KUBELET_DATA_LINK)).ok());
    Fingerprint {
        data_target,
        digest: file_digest(config).ok(),
    }
}

/// Follows one policy file: [`ConfigWatch::changed`] is true once per new [`Fingerprint`].
#[derive(Debug)]
pub struct ConfigWatch {
    path: PathBuf,
    seen: Fingerprint,
}

impl ConfigWatch {
    /// Watches `path`, whose content at `loaded` is the one in force.
    #[must_use]
    pub fn new(path: PathBuf, loaded: Fingerprint) -> Self {
        Self { path, seen: loaded }
    }

    /// Whether the file differs from the last version seen (loaded or not): a version
    /// that failed to load is not tried again until it changes once more.
    pub fn changed(&mut self) -> bool {
        let now = fingerprint(&self.path);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }

    /// Records `f` as seen (a reload by signal or socket read it).
    pub fn saw(&mut self, f: Fingerprint) {
        self.seen = f;
    }
}

/// Whether the daemon whose status is `status` is ready: it enforces (a program is
/// attached to every interface it guards) and, when `desired` is given, the policy it
/// enforces is the file whose digest is `desired`. `Ok` and `Err` both carry one line
/// saying why.
///
/// # Errors
/// With the reason when it is not ready.
pub fn readiness(status: &Status, desired: Option<&str>) -> Result<String, String> {
    if status.interfaces.is_empty() {
        return Err("not ready: no interface is attached".to_string());
    }
    if let Some(d) = desired {
        let running = status.policy_digest.as_deref().unwrap_or("none");
        if running != d {
            let mut why = format!(
                "not ready: it enforces policy {running}, the file holds {d} (not loaded yet, or refused)"
            );
            if let Some(e) = &status.last_error {
                why.push_str(&format!("; last error: {e}"));
            }
            return Err(why);
        }
    }
    let ifaces: Vec<&str> = status.interfaces.iter().map(|i| i.iface.as_str()).collect();
    Ok(format!(
        "ready: generation {} of {} (policy {}) enforced on {}",
        status.generation,
        status.policy.source,
        status.policy_digest.as_deref().unwrap_or("none"),
        ifaces.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::InterfaceStatus;

    #[test]
    fn digest_is_fnv1a_64() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(digest(b""), "cbf29ce484222325");
        assert_eq!(digest(b"a"), "af63dc4c8601ec8c");
        assert_eq!(digest(b"foobar"), "85944171f73967e8");
    }

    fn enforcing(d: Option<&str>) -> Status {
        Status {
            interfaces: vec![InterfaceStatus {
                iface: "eth0".into(),
                ..Default::default()
            }],
            policy_digest: d.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn ready_only_when_attached_and_on_the_desired_policy() {
        assert!(readiness(&Status::default(), None).is_err());
        assert!(readiness(&enforcing(Some("aa")), None).is_ok());
        assert!(readiness(&enforcing(Some("aa")), Some("aa")).is_ok());
        let mut refused = enforcing(Some("aa"));
        refused.last_error = Some("reload refused: [firewall].default".into());
        let e = readiness(&refused, Some("bb")).unwrap_err();
        assert!(e.contains("[firewall].default"), "{e}");
        assert!(readiness(&enforcing(None), Some("bb")).is_err());
    }

    #[test]
    fn the_watch_sees_a_kubelet_style_swap_once() {
        let dir = std::env::temp_dir().join(format!("palisade-pod-watch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("..v1")).unwrap();
        fs::write(dir.join("..v1/policy.toml"), "a").unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/policy.toml", dir.join("policy.toml")).unwrap();
        let file = dir.join("policy.toml");
        let mut w = ConfigWatch::new(file.clone(), fingerprint(&file));
        assert!(!w.changed());

        // Same bytes, new directory: still a new version (kubelet wrote it).
        fs::create_dir_all(dir.join("..v2")).unwrap();
        fs::write(dir.join("..v2/policy.toml"), "b").unwrap();
        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
        fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert!(w.changed());
        assert_eq!(
            fingerprint(&file).digest.as_deref(),
            Some(digest(b"b").as_str())
        );
        assert!(!w.changed(), "one change is reported once");
        fs::remove_dir_all(&dir).unwrap();
    }
}
