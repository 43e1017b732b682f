//! Two network namespaces joined by a veth pair, removed again when the guard drops (also
//! when the test panics).
//!
//! Addresses: side A is 10.201.N.1 / fd00:201:N::1, side B 10.201.N.2 / fd00:201:N::2, where N
//! is unique per guard, so tests can run in parallel. Traffic never leaves the namespaces.

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetnsPair {
    pub ns_a: String,
    pub ns_b: String,
    /// Interface names inside each namespace.
    pub if_a: String,
    pub if_b: String,
    pub v4_a: String,
    pub v4_b: String,
    pub v6_a: String,
    pub v6_b: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetnsPair {
    #[must_use]
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id() % 10_000;
        let tag = format!("{id}x{n}");
        let net = (id + n * 7) % 250 + 1;
        let pair = Self {
            ns_a: format!("pal-a-{tag}"),
            ns_b: format!("pal-b-{tag}"),
            if_a: "veth-a".into(),
            if_b: "veth-b".into(),
            v4_a: format!("10.201.{net}.1"),
            v4_b: format!("10.201.{net}.2"),
            v6_a: format!("fd00:201:{net:x}::1"),
            v6_b: format!("fd00:201:{net:x}::2"),
        };
        // From here on Drop cleans up whatever was created.
        ip(&["netns", "add", &pair.ns_a]);
        ip(&["netns", "add", &pair.ns_b]);
        let tmp_a = format!("pa{tag}");
        let tmp_b = format!("pb{tag}");
        ip(&[
            "link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b,
        ]);
        ip(&["link", "set", &tmp_a, "netns", &pair.ns_a]);
        ip(&["link", "set", &tmp_b, "netns", &pair.ns_b]);
        for (ns, tmp, name, v4, v6) in [
            (&pair.ns_a, &tmp_a, &pair.if_a, &pair.v4_a, &pair.v6_a),
            (&pair.ns_b, &tmp_b, &pair.if_b, &pair.v4_b, &pair.v6_b),
        ] {
            ip(&["-n", ns, "link", "set", tmp, "name", name]);
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", name]);
            ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                name,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", name, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Runs a command inside namespace `ns`.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        exec_in(ns, program, args)
    }

    /// A command prepared to run inside namespace `ns` (for long-running children).
    #[must_use]
    pub fn command(&self, ns: &str, program: &str) -> Command {
        command_in(ns, program)
    }
}

/// A command prepared to run inside namespace `ns` with `ip netns exec` (which execs, so the
/// child's pid is the program's). Its private mount namespace hides the host's bpffs: use
/// [`nsenter`] for processes that need the pins.
#[must_use]
pub fn command_in(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// A command prepared to run in namespace `ns`'s network stack only, in the host's mount
/// namespace (so `/sys/fs/bpf` and the cgroup tree are the host's). `nsenter` execs, so the
/// child's pid is the program's.
#[must_use]
pub fn nsenter(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/var/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

/// Runs a command inside namespace `ns` to completion.
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> Output {
    command_in(ns, program)
        .args(args)
        .output()
        .expect("run ip netns exec")
}

/// Runs `f` on a thread that has joined namespace `ns`'s network stack. Sockets it creates
/// belong to that namespace for their whole life, wherever they are used afterwards, so a
/// test can drive real connections between namespaces from its own process.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns with a namespace file we hold open; it changes this thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys its end of the veth, which destroys the pair.
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The kernel's `TCP_INFO` for a connected socket.
pub fn tcp_info(s: &std::net::TcpStream) -> libc::tcp_info {
    use std::os::fd::AsRawFd as _;
    // SAFETY: zeroed tcp_info is a valid value; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt into a buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info
}

/// `(transmitted, received)` of `ping` with `args` run in namespace `ns`, read from its
/// summary line.
pub fn ping_counts(ns: &str, args: &[&str]) -> (u32, u32) {
    let out = exec_in(ns, "ping", args);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("ping output: {text}"));
    let num = |key: &str| -> u32 {
        line.split(',')
            .find(|p| p.contains(key))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    (num("transmitted"), num("received"))
}
