//! A private network namespace for the benchmark, removed when the guard is dropped.
//!
//! Used twice: to keep measured programs attached to an interface (see [`pin_in_dispatcher`])
//! and, for live traffic, to hold the veth pair the packets cross.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{Xdp, XdpMode};

const PREFIX: &str = "palisade-bench-";

pub struct Netns {
    pub name: String,
    fd: File,
}

fn ip(args: &[&str]) -> Result<Output> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Removes namespaces left by earlier runs that were killed before their guard could run.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Netns {
    /// Creates `palisade-bench-<pid>-<tag>`.
    ///
    /// # Errors
    /// When `ip netns add` fails (not root, no iproute2).
    pub fn create(tag: &str) -> Result<Self> {
        remove_stale();
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        let fd = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = ip(&["netns", "del", &name]);
                return Err(e).context("opening the new namespace");
            }
        };
        let ns = Self { name, fd };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip -n <ns> ARGS`.
    ///
    /// # Errors
    /// When the command fails.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// A command that runs inside the namespace.
    ///
    /// Only the network namespace changes. `ip netns exec` would also give the command a
    /// private mount namespace with a fresh /sys, which hides /sys/fs/bpf: tools that pin maps
    /// there between invocations (xdp-filter) then lose them.
    pub fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt as _;
        let fd = self.fd.as_raw_fd();
        let mut c = Command::new(program);
        // SAFETY: only setns between fork and exec, which is async-signal-safe; the namespace
        // descriptor stays open until exec closes it.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    /// Runs `f` with the calling thread inside the namespace, then moves it back.
    ///
    /// # Errors
    /// When the thread cannot switch namespaces.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let home = File::open("/proc/thread-self/ns/net").context("opening our namespace")?;
        // SAFETY: setns on valid namespace descriptors; only this thread moves.
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("entering the namespace");
        }
        let out = f();
        // SAFETY: as above.
        if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // Carrying on in the wrong namespace would attach and read the wrong interfaces.
            panic!(
                "cannot return to the original network namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(out)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("palisade-bench: warning: {e:#}");
        }
    }
}

/// Keeps XDP programs registered in the kernel's XDP dispatcher for the whole run.
///
/// Every XDP `BPF_PROG_TEST_RUN` adds its program to the dispatcher and removes it afterwards;
/// each change waits for an RCU grace period (milliseconds, more on a busy machine), twice per
/// syscall. The kernel's timer leaves that out, so the numbers do not change, but a run of a
/// few thousand test runs would spend minutes waiting. A program attached to an interface is
/// already in the dispatcher, and then a test run only takes a reference. So each program is
/// attached in native mode to its own veth end, down and silent, in a private namespace.
pub struct DispatcherPin {
    pub netns: Netns,
    next: usize,
}

impl DispatcherPin {
    /// # Errors
    /// When the namespace cannot be created.
    pub fn new() -> Result<Self> {
        Ok(Self {
            netns: Netns::create("pin")?,
            next: 0,
        })
    }

    /// Attaches `prog` to a fresh interface. The attachment lives as long as the program (or
    /// the namespace, whichever goes first).
    ///
    /// # Errors
    /// When the interface cannot be made or the program attached.
    pub fn pin(&mut self, prog: &mut Xdp) -> Result<()> {
        let i = self.next;
        self.next += 1;
        let iface = format!(
            "pin{}{}",
            i / 2,
            if i.is_multiple_of(2) { 'a' } else { 'b' }
        );
        if i.is_multiple_of(2) {
            let peer = format!("pin{}b", i / 2);
            self.netns
                .ip(&["link", "add", &iface, "type", "veth", "peer", "name", &peer])?;
        }
        self.netns
            .enter(|| prog.attach(&iface, XdpMode::Driver))?
            .map_err(|e| anyhow!("attaching to {iface}: {e}"))?;
        Ok(())
    }
}
