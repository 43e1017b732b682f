//! Tracked connections survive table resizes and builds with another map layout: a live TCP
//! connection through a default-drop, stateful guard keeps passing data while the daemon
//! restarts with new `[conntrack]` sizes, and while a build of another layout takes over.
//! A size too small for the flows tracked now is refused, changing nothing.

#[path = "support/control.rs"]
mod control;
mod support;

use std::{
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use control::{BIN, Bg, Proc, Scratch};
use palisade::pin;
use palisade_common::conntrack::{CtEntry, CtKey, TCP_ESTABLISHED};
use support::netns::NetnsPair;

/// A default-drop guard that only lets SSH in: everything else inbound must be a reply.
fn policy(max_entries: u32, max_unvalidated: u32) -> String {
    format!(
        r#"
[firewall]
default = "drop"
stateful = true

[[firewall.rule]]
name = "ssh-in"
action = "allow"
proto = "tcp"
dport = 22

[conntrack]
max_entries = {max_entries}
max_unvalidated = {max_unvalidated}
"#
    )
}

/// Echoes lines back, one connection at a time.
const ECHO_SERVER: &str = r"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print('ready', flush=True)
c, _ = s.accept()
f = c.makefile('rwb')
for line in f:
    f.write(line)
    f.flush()
";

/// Sends a numbered line every 50 ms and waits for its echo (2 s at most); prints `ok N` or
/// `fail N ...` for each, until the file named by argv[3] exists.
const CLIENT: &str = r"
import os, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.settimeout(2.0)
f = c.makefile('rwb')
print('ready', flush=True)
n = 0
while not os.path.exists(sys.argv[3]):
    n += 1
    try:
        f.write(b'%d\n' % n)
        f.flush()
        back = f.readline().strip()
        print('ok %d' % n if back == b'%d' % n else 'fail %d %r' % (n, back), flush=True)
    except Exception as e:
        print('fail %d %s' % (n, e), flush=True)
        break
    time.sleep(0.05)
";

struct Setup {
    pair: NetnsPair,
    scratch: Scratch,
    policy: PathBuf,
}

impl Setup {
    fn new(tag: &str) -> Self {
        let pair = NetnsPair::new();
        let scratch = Scratch::new(tag);
        let policy = scratch.file("policy.toml");
        Self {
            pair,
            scratch,
            policy,
        }
    }

    fn write_policy(&self, max_entries: u32, max_unvalidated: u32) {
        std::fs::write(&self.policy, policy(max_entries, max_unvalidated)).unwrap();
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--config".into(),
            self.policy.to_str().unwrap().into(),
            "--iface".into(),
            self.pair.if_b.clone(),
            "--pin-dir".into(),
            self.scratch.pin_dir().to_str().unwrap().into(),
            "--quiet".into(),
        ]
    }

    /// The daemon, guarding B.
    fn daemon(&self) -> Proc {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::start(&self.pair, &self.pair.ns_b, &self.scratch.socket(), &args)
    }

    /// The layout directory (the only one under the pin root).
    fn layout_dir(&self) -> PathBuf {
        let dirs: Vec<PathBuf> = std::fs::read_dir(self.scratch.pin_dir())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("layout-"))
            })
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs[0].clone()
    }

    fn table(&self, name: &str) -> PathBuf {
        self.layout_dir().join("maps").join(name)
    }

    /// A connection from B (guarded) to an echo server on A, exchanging lines.
    fn connection(&self, port: u16) -> (Bg, Bg, PathBuf) {
        let server = Bg::start(
            &self.pair,
            &self.pair.ns_a,
            ECHO_SERVER,
            &[&self.pair.v4_a, &port.to_string()],
        )
        .ready();
        let stop = self.scratch.file(&format!("stop-{port}"));
        let client = Bg::start(
            &self.pair,
            &self.pair.ns_b,
            CLIENT,
            &[&self.pair.v4_a, &port.to_string(), stop.to_str().unwrap()],
        )
        .ready();
        (server, client, stop)
    }
}

/// `(max_entries, entries)` of a pinned table.
fn table_shape(path: &Path) -> (u32, usize) {
    let fd = pin::obj_get(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let max = pin::map_info(std::os::fd::AsFd::as_fd(&fd)).unwrap().4;
    (max, entries(path).len())
}

/// Every entry of a pinned table.
fn entries(path: &Path) -> Vec<(CtKey, CtEntry)> {
    let fd = pin::obj_get(path).unwrap();
    let fd = std::os::fd::AsFd::as_fd(&fd);
    let mut value = vec![0u8; size_of::<CtEntry>()];
    let mut out = Vec::new();
    for key in pin::map_keys(fd).unwrap().chunks_exact(size_of::<CtKey>()) {
        if pin::map_lookup(fd, key, &mut value).unwrap() {
            // SAFETY: whole plain-data records of this build.
            out.push(unsafe {
                (
                    std::ptr::read_unaligned(key.as_ptr().cast()),
                    std::ptr::read_unaligned(value.as_ptr().cast()),
                )
            });
        }
    }
    out
}

/// Ends the client and checks every exchange succeeded; returns how many there were.
fn finish(client: Bg, stop: &Path) -> usize {
    std::fs::write(stop, b"").unwrap();
    let lines = client.finish();
    let failed: Vec<&String> = lines.iter().filter(|l| !l.starts_with("ok ")).collect();
    assert!(
        failed.is_empty(),
        "exchanges failed: {failed:?} of {lines:?}"
    );
    lines.len()
}

fn exchanges_so_far(client: &Bg) -> usize {
    client
        .lines_now()
        .iter()
        .filter(|l| l.starts_with("ok "))
        .count()
}

/// Waits until the client made `more` exchanges beyond `from`.
fn wait_exchanges(what: &str, client: &Bg, from: usize, more: usize, s: &Setup) {
    let start = std::time::Instant::now();
    while exchanges_so_far(client) < from + more {
        let lines = client.lines_now();
        if lines.iter().any(|l| l.starts_with("fail")) {
            for name in ["CT_EST", "CT_NEW"] {
                eprintln!("{name}: {:#?}", entries(&s.table(name)));
            }
        }
        assert!(
            !lines.iter().any(|l| l.starts_with("fail")),
            "{what}: the connection broke: {lines:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: the connection stalled: {lines:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn resizing_the_tables_keeps_live_connections() {
    let s = Setup::new("ct-resize");
    s.write_policy(4096, 2048);
    let mut d = s.daemon();
    let (_server, client, stop) = s.connection(7101);
    wait_exchanges("connecting", &client, 0, 5, &s);
    assert_eq!(table_shape(&s.table("CT_EST")).0, 4096);
    assert_eq!(table_shape(&s.table("CT_NEW")).0, 2048);
    let (_, held) = table_shape(&s.table("CT_EST"));
    assert!(held >= 1, "the connection is tracked as validated");

    // A graceful stop, then a start with larger tables: the flows are carried over.
    d.signal(libc::SIGTERM);
    assert!(d.wait(Duration::from_secs(20)), "{:?}", d.stderr_now());
    let n = exchanges_so_far(&client);
    wait_exchanges("after the graceful stop", &client, n, 5, &s);
    s.write_policy(8192, 1024);
    let d = s.daemon();
    let err = d.stderr_now();
    eprintln!("daemon: {err:#?}");
    assert!(
        err.iter()
            .any(|l| l.contains("carrying tracked connections from CT_EST (resized)")),
        "{err:?}"
    );
    let (max, carried) = table_shape(&s.table("CT_EST"));
    assert_eq!(max, 8192, "the table has the new size");
    assert!(carried >= held, "{carried} flows after, {held} before");
    assert_eq!(table_shape(&s.table("CT_NEW")).0, 1024);
    assert!(
        !s.layout_dir().join("carry-CT_EST").exists(),
        "the old table's pin is gone once carried"
    );
    let n = exchanges_so_far(&client);
    wait_exchanges("after the resize", &client, n, 20, &s);

    // kill -9, then a build of another layout takes over: still no exchange lost.
    d.kill9();
    let layout = s.layout_dir();
    std::fs::rename(&layout, s.scratch.pin_dir().join("layout-00000000c0ffee00")).unwrap();
    let d = s.daemon();
    let err = d.stderr_now();
    eprintln!("daemon: {err:#?}");
    assert!(
        err.iter()
            .any(|l| l
                .contains("carrying tracked connections from CT_EST of layout-00000000c0ffee00")),
        "{err:?}"
    );
    let n = exchanges_so_far(&client);
    wait_exchanges("after the layout change", &client, n, 20, &s);
    assert!(table_shape(&s.table("CT_EST")).1 >= 1);
    let total = finish(client, &stop);
    assert!(total >= 50, "{total} exchanges");
    drop(d);
}

#[test]
fn a_size_below_the_tracked_flows_is_refused() {
    let s = Setup::new("ct-shrink");
    s.write_policy(4096, 2048);
    let mut d = s.daemon();
    // Fill the validated table past what the smaller size could hold.
    let path = s.table("CT_EST");
    let fd = pin::obj_get(&path).unwrap();
    let now = palisade::conntrack::carry::now_ns();
    for i in 0..1100u32 {
        let key = CtKey {
            a: [0, 0, 0xffff, 0x0a00_0000 | i],
            b: [0, 0, 0xffff, 0x0a63_0001],
            a_port: 40_000,
            b_port: 443,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        };
        let entry = CtEntry {
            created_ns: now,
            last_ns: now,
            state: TCP_ESTABLISHED,
            ..CtEntry::default()
        };
        pin::map_update(
            std::os::fd::AsFd::as_fd(&fd),
            bytes_of(&key),
            bytes_of(&entry),
            0,
        )
        .unwrap();
    }
    d.signal(libc::SIGTERM);
    assert!(d.wait(Duration::from_secs(20)), "{:?}", d.stderr_now());
    let before = table_shape(&path);
    assert!(before.1 >= 1100, "{before:?}");

    s.write_policy(1024, 2048);
    let args = s.args();
    let out = s
        .pair
        .command(&s.pair.ns_b, BIN)
        .arg("--socket")
        .arg(s.scratch.socket())
        .arg("run")
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway: {err}");
    assert!(
        err.contains("[conntrack] max_entries = 1024 is smaller than the")
            && err.contains("validated flows tracked now"),
        "{err}"
    );
    assert_eq!(
        table_shape(&path),
        before,
        "the tracked flows are untouched"
    );
    assert!(!s.layout_dir().join("carry-CT_EST").exists());
}

fn bytes_of<T>(v: &T) -> &[u8] {
    // SAFETY: plain-data map records, read as their bytes.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
}
