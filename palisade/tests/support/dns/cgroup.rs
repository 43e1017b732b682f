//! A throw-away cgroup v2 directory, and the commands that run inside it or attach to it.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::support::netns::NetnsPair;

/// Where the cgroup v2 hierarchy is mounted on this machine (the hybrid layout).
pub const UNIFIED: &str = "/sys/fs/cgroup/unified";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `/sys/fs/cgroup/unified/palisade-test-<pid>-<n>`, removed on drop: processes still in it
/// are moved to the root cgroup first, then the directory is removed.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    #[must_use]
    pub fn new() -> Self {
        assert!(
            Path::new(UNIFIED).join("cgroup.procs").exists(),
            "no cgroup v2 hierarchy at {UNIFIED}: the DNS egress tests attach there"
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(UNIFIED).join(format!("palisade-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", path.display()));
        Self { path }
    }

    /// The cgroup id the kernel reports for sockets in this cgroup: cgroup v2 ids are the
    /// directory's inode number.
    #[must_use]
    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.path).expect("stat cgroup").ino()
    }

    /// Process ids currently in the cgroup.
    #[must_use]
    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// A command that moves itself into this cgroup and then execs `ip netns exec NS ARGV...`,
    /// so the child's pid is the pid of the final program and only that program (never the
    /// test or palisade) is in the cgroup.
    #[must_use]
    pub fn command_in_ns(&self, ns: &str, argv: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec ip netns exec "$@""#)
            .arg(&self.path)
            .arg(ns)
            .args(argv);
        c
    }

    /// Like [`Self::command_in_ns`] but for a program run as `uid`/`gid` (through `setpriv`).
    #[must_use]
    pub fn command_in_ns_as(&self, ns: &str, uid: u32, gid: u32, argv: &[&str]) -> Command {
        let (u, g) = (format!("--reuid={uid}"), format!("--regid={gid}"));
        let mut full = vec!["setpriv", u.as_str(), g.as_str(), "--clear-groups"];
        full.extend_from_slice(argv);
        self.command_in_ns(ns, &full)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let root = Path::new(UNIFIED).join("cgroup.procs");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // Only processes this test started can be in here; hand them back to the root.
            for pid in self.procs() {
                let _ = std::fs::write(&root, pid.to_string());
            }
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("could not remove cgroup {}: {e}", self.path.display());
                    return;
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// `palisade ARGS` in namespace `ns`, with the cgroup v2 hierarchy visible at the usual path.
///
/// `ip netns exec` gives the program a private mount namespace with a fresh sysfs on `/sys`
/// (so `/sys/class/net` lists the namespace's interfaces), which hides the host's cgroup
/// mounts below it. The wrapper mounts the cgroup v2 hierarchy again at
/// `/sys/fs/cgroup/unified` inside that private mount namespace only (nothing propagates to
/// the host; the mounts vanish with the process), then execs palisade, so the child's pid is
/// palisade's and cgroup paths in the policy mean the same directories as on the host.
#[must_use]
pub fn palisade_with_cgroups(pair: &NetnsPair, ns: &str, args: &[&str]) -> Command {
    let mut c = pair.command(ns, "sh");
    c.arg("-c")
        .arg(
            "mount -t tmpfs palisade-test-cgroups /sys/fs/cgroup && \
             mkdir /sys/fs/cgroup/unified && \
             mount -t cgroup2 none /sys/fs/cgroup/unified && \
             exec \"$0\" \"$@\"",
        )
        .arg(env!("CARGO_BIN_EXE_palisade"))
        .args(args);
    c
}
