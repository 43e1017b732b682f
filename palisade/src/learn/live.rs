//! Live learning from a running daemon: flows from its connection tracker (`ct list`,
//! polled every second; the policy must track connections), names, processes and cgroups
//! from its DNS events (`[dns.egress]` with `log_allowed = true` reports every query with
//! the sending process and cgroup). The daemon does not report what the answers said, so
//! the answers themselves are read from a packet socket (`AF_PACKET`, UDP from port 53
//! only) in this process's network namespace, which needs `CAP_NET_RAW`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    path::Path,
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, bail};

use super::observe::{Answer, Connection, DNS_PORT, Direction, Observations, dns_answer, parse};
use crate::{
    api::{
        client::Client,
        proto::{EventFilter, Request},
    },
    conntrack::{FlowFilter, report::FlowList},
    craft::Frame,
    replay::capture::Record,
};

/// What the daemon and the packet socket showed.
#[derive(Debug, Default)]
pub struct Live {
    pub obs: Observations,
    /// Two records per connection (its opening packet each way), for the never-allow check.
    pub records: Vec<Record>,
    /// cgroup v2 paths of the processes seen, for the proposal.
    pub cgroups: BTreeSet<String>,
    /// DNS events read.
    pub dns_events: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A writer that hands each line to a channel, for the event stream's reader thread.
struct Lines(mpsc::Sender<String>, Vec<u8>);

impl io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.1.extend_from_slice(buf);
        while let Some(n) = self.1.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.1.drain(..=n).collect();
            self.0
                .send(String::from_utf8_lossy(&line).trim().to_string())
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A raw packet socket reading every frame of the namespace, with a short timeout.
struct PacketSocket(i32);

impl PacketSocket {
    fn open() -> Result<Self> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the descriptor is owned by the value.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        if fd < 0 {
            bail!(
                "opening a packet socket to read DNS answers (needs CAP_NET_RAW): {}",
                io::Error::last_os_error()
            );
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: fd is open; tv lives across the call and its size is passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Ok(Self(fd))
    }

    /// The next frame and whether the host sent it, or `None` on timeout.
    fn recv(&self, buf: &mut [u8]) -> Option<(usize, bool)> {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buf and addr are valid for the lengths given.
        let n = unsafe {
            libc::recvfrom(
                self.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::from_mut(&mut addr).cast(),
                &mut len,
            )
        };
        (n > 0).then_some((n as usize, addr.sll_pkttype == libc::PACKET_OUTGOING))
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// The path under the cgroup v2 root whose directory has inode `id`, searched at most
/// this deep.
const CGROUP_DEPTH: usize = 8;

fn cgroup_path(root: &Path, id: u64, depth: usize) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    if std::fs::metadata(root).ok()?.ino() == id {
        return Some(root.display().to_string());
    }
    if depth == 0 {
        return None;
    }
    for e in std::fs::read_dir(root).ok()?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir())
            && let Some(p) = cgroup_path(&e.path(), id, depth - 1)
        {
            return Some(p);
        }
    }
    None
}

/// Where cgroup v2 is mounted (`/proc/self/mounts`); ids are inode numbers there only.
fn cgroup2_mounts() -> Vec<std::path::PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| std::path::PathBuf::from(f[1]))
        })
        .collect()
}

/// Watches the daemon at `socket` for `duration`.
///
/// # Errors
/// When the daemon cannot be reached, refuses the event stream or the flow listing (a
/// policy without connection tracking), or the packet socket cannot be opened.
pub fn collect(socket: &Path, duration: Duration) -> Result<Live> {
    let mut events = Client::connect(socket)?;
    let r = events.call(&Request::Events {
        filter: EventFilter {
            kind: Some("dns".into()),
            ..EventFilter::default()
        },
        json: true,
    })?;
    if !r.ok {
        bail!(
            "the daemon refused the event stream: {}",
            r.error.unwrap_or_default()
        );
    }
    let (tx, rx) = mpsc::channel();
    // The reader stays blocked on the stream until the daemon sends again or exits; it
    // ends with the process.
    std::thread::spawn(move || {
        let mut out = Lines(tx, Vec::new());
        let _ = events.copy_lines(&mut out, None);
    });
    let mut ct = Client::connect(socket)?;
    let packets = PacketSocket::open()?;
    let started = Instant::now();
    let mut flows: BTreeMap<(u8, IpAddr, u16, IpAddr, u16), Connection> = BTreeMap::new();
    let mut answers: Vec<Answer> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let mut next_poll = Instant::now();
    loop {
        let done = started.elapsed() >= duration;
        if Instant::now() >= next_poll || done {
            next_poll += Duration::from_secs(1);
            let list: FlowList = ct
                .request(&Request::CtList {
                    filter: FlowFilter::default(),
                })
                .map_err(|e| {
                    anyhow::anyhow!(
                        "listing tracked flows ({e}); live learning needs connection tracking: \
                         [firewall] stateful = true or a [conntrack] section"
                    )
                })?;
            let now = now_ns();
            for f in list.flows {
                let key = (
                    f.proto,
                    f.orig_addr,
                    f.orig_port,
                    f.reply_addr,
                    f.reply_port,
                );
                let first = now.saturating_sub(f.age_s * 1_000_000_000);
                let last = now.saturating_sub(f.idle_s * 1_000_000_000);
                let packets = u64::from(f.packets_orig) + u64::from(f.packets_reply);
                let c = flows.entry(key).or_insert_with(|| {
                    let (direction, local, lport, remote, rport) = if f.local {
                        (
                            Direction::Out,
                            f.orig_addr,
                            f.orig_port,
                            f.reply_addr,
                            f.reply_port,
                        )
                    } else {
                        (
                            Direction::In,
                            f.reply_addr,
                            f.reply_port,
                            f.orig_addr,
                            f.orig_port,
                        )
                    };
                    let (lport, rport) = match f.proto {
                        1 => (8, 8),
                        58 => (128, 128),
                        _ => (lport, rport),
                    };
                    Connection {
                        direction,
                        proto: f.proto,
                        local,
                        local_port: lport,
                        remote,
                        remote_port: rport,
                        packets,
                        first_ns: first,
                        last_ns: last,
                        records: Vec::new(),
                        queries: Vec::new(),
                        process: None,
                        cgroup: None,
                    }
                });
                c.packets = c.packets.max(packets);
                c.first_ns = c.first_ns.min(first);
                c.last_ns = c.last_ns.max(last);
            }
        }
        if done {
            break;
        }
        if let Some((n, _)) = packets.recv(&mut buf)
            && let Some(l) = parse(&buf[..n])
            && l.proto == 17
            && l.sport == DNS_PORT
            && let Some((name, addrs)) = dns_answer(l.payload)
        {
            let addrs: Vec<IpAddr> = addrs.into_iter().map(|(a, _)| a).collect();
            if !answers.iter().any(|a| a.name == name && a.addrs == addrs) {
                answers.push(Answer {
                    name,
                    addrs,
                    at_ns: now_ns(),
                    record: 0,
                });
            }
        }
    }
    let mut live = Live::default();
    // Names and the processes and cgroups that asked for them.
    let mut askers: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    let mut cgroup_names: BTreeMap<u64, Option<String>> = BTreeMap::new();
    for line in rx.try_iter() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let Some(name) = v["name"].as_str() else {
            continue;
        };
        live.dns_events += 1;
        let e = askers
            .entry(name.trim_end_matches('.').to_ascii_lowercase())
            .or_default();
        if let Some(comm) = v["comm"].as_str() {
            let pid = v["pid"]
                .as_u64()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default();
            e.0.insert(format!("{comm}{pid}"));
        }
        if let Some(id) = v["cgroup_id"].as_u64() {
            let path = cgroup_names
                .entry(id)
                .or_insert_with(|| {
                    cgroup2_mounts()
                        .iter()
                        .find_map(|m| cgroup_path(m, id, CGROUP_DEPTH))
                })
                .clone()
                .unwrap_or_else(|| format!("cgroup id {id}"));
            if path.starts_with('/') {
                live.cgroups.insert(path.clone());
            }
            e.1.insert(path);
        }
    }
    let by_addr = super::observe::names_by_addr(&answers);
    for (_, mut c) in flows {
        if c.direction == Direction::Out {
            let names: Vec<String> = by_addr
                .get(&c.remote)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            let (mut procs, mut groups) = (BTreeSet::new(), BTreeSet::new());
            for n in &names {
                if let Some((p, g)) = askers.get(n) {
                    procs.extend(p.iter().cloned());
                    groups.extend(g.iter().cloned());
                }
            }
            if c.remote_port == DNS_PORT {
                c.queries = askers.keys().cloned().collect();
            }
            c.process =
                (!procs.is_empty()).then(|| procs.into_iter().collect::<Vec<_>>().join(", "));
            c.cgroup =
                (!groups.is_empty()).then(|| groups.into_iter().collect::<Vec<_>>().join(", "));
        }
        // The opening packet each way, for the never-allow policy's firewall.
        let host_opened = c.direction == Direction::Out;
        let (l, r) = (c.local.to_string(), c.remote.to_string());
        let (lp, rp) = (c.local_port, c.remote_port);
        let (o, p, op, pp) = if host_opened {
            (l, r, lp, rp)
        } else {
            (r, l, rp, lp)
        };
        let (open, reply) = match c.proto {
            6 => (
                Frame::tcp(&o, &p, op, pp, 0x02).build(),
                Frame::tcp(&p, &o, pp, op, 0x12).build(),
            ),
            17 => (
                Frame::udp(&o, &p, op, pp).build(),
                Frame::udp(&p, &o, pp, op).build(),
            ),
            1 | 58 => (
                Frame::icmp(&o, &p, 8, 0).build(),
                Frame::icmp(&p, &o, 0, 0).build(),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        for (frame, outgoing) in [(open, host_opened), (reply, !host_opened)] {
            if frame.is_empty() {
                continue;
            }
            c.records.push(live.records.len());
            live.records.push(Record {
                number: live.records.len() + 1,
                offset: 0,
                interface: 0,
                timestamp_ns: c.first_ns,
                outgoing,
                frame,
            });
        }
        live.obs.packets += c.packets;
        live.obs.connections.push(c);
    }
    live.obs.answers = answers;
    Ok(live)
}
