//! Where `palisade top` gets its figures: the daemon's control socket, polled for counters
//! every interval, and its event stream read by a thread of its own. Both reconnect when the
//! daemon comes back.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    thread,
    time::Duration,
};

use anyhow::Result;

use super::model::{Conntrack, Seen, Snapshot};
use crate::api::{
    client::Client,
    proto::{EventFilter, Request, Rules, Stats, Status},
};

/// Events waiting for the screen, at most; past that the reader skips them (and counts
/// them) rather than letting a flood grow memory.
pub const EVENT_QUEUE: usize = 65_536;
/// How long the event reader waits before connecting again.
const RETRY: Duration = Duration::from_millis(500);

/// Polls the daemon for counters.
pub struct Poller {
    socket: PathBuf,
    client: Option<Client>,
}

impl Poller {
    #[must_use]
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
            client: None,
        }
    }

    /// One snapshot; on an error the connection is dropped and the next call connects again.
    ///
    /// # Errors
    /// When the daemon cannot be reached or refuses.
    pub fn poll(&mut self) -> Result<Snapshot> {
        let client = match &mut self.client {
            Some(c) => c,
            None => self.client.insert(Client::connect(&self.socket)?),
        };
        let r = snapshot(client);
        if r.is_err() {
            self.client = None;
        }
        r
    }
}

fn snapshot(c: &mut Client) -> Result<Snapshot> {
    let stats: Stats = c.request(&Request::Stats)?;
    let status: Status = c.request(&Request::Status)?;
    let rules: Rules = c.request(&Request::ListRules)?;
    let k = &stats.counters;
    let dns = |name: &str| {
        k.dns
            .iter()
            .filter(|d| d.name == name)
            .map(|d| d.value)
            .sum()
    };
    Ok(Snapshot {
        packets: k.global("packets"),
        dropped: k.global("dropped"),
        dns_queries: dns("queries"),
        dns_blocked: dns("blocked"),
        generation: stats.generation,
        uptime_secs: status.uptime_secs,
        rules: k
            .rules
            .iter()
            .map(|r| (r.rule.clone(), r.action.clone(), r.packets, r.bytes))
            .collect(),
        reasons: k
            .reasons
            .iter()
            .map(|r| (r.name.clone(), r.value))
            .collect(),
        rule_matches: rules
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.matches.clone()))
            .collect(),
        conntrack: status.conntrack.map(|c| Conntrack {
            validated: c.validated,
            unvalidated: c.unvalidated,
            capacity: status
                .conntrack_capacity
                .map(|k| (k.validated, k.unvalidated)),
            by_state: c
                .by_state
                .iter()
                .map(|s| (format!("{}/{}", s.proto, s.state), s.entries))
                .collect(),
        }),
    })
}

/// What the event reader sends.
#[derive(Debug)]
pub enum Feed {
    Event(Box<Seen>),
    /// Events the daemon or this reader skipped.
    Lost(u64),
}

/// Starts the thread that streams events from the daemon (reconnecting as needed) into a
/// bounded queue; it ends when the receiver is dropped.
#[must_use]
pub fn events(socket: &Path) -> Receiver<Feed> {
    let (tx, rx) = sync_channel(EVENT_QUEUE);
    let socket = socket.to_path_buf();
    thread::Builder::new()
        .name("top-events".into())
        .spawn(move || {
            while stream(&socket, &tx) {
                thread::sleep(RETRY);
            }
        })
        .ok();
    rx
}

/// Reads one connection's events; `false` once nobody listens any more.
fn stream(socket: &Path, tx: &SyncSender<Feed>) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return true;
    };
    let Ok(mut line) = serde_json::to_string(&Request::Events {
        filter: EventFilter::default(),
        json: true,
    }) else {
        return false;
    };
    line.push('\n');
    if s.write_all(line.as_bytes()).is_err() {
        return true;
    }
    let mut r = BufReader::new(s);
    let mut skipped = 0u64;
    let mut first = true;
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
        if first {
            // The answer to the request, then one event per line.
            first = false;
            if !line.contains("\"ok\":true") {
                return true;
            }
            continue;
        }
        let feed = match Seen::parse(&line) {
            Some(e) => Feed::Event(Box::new(e)),
            None => match serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("count").and_then(serde_json::Value::as_u64))
            {
                Some(n) => Feed::Lost(n),
                None => continue,
            },
        };
        match tx.try_send(feed) {
            Ok(()) => {
                if skipped > 0 && tx.try_send(Feed::Lost(skipped)).is_ok() {
                    skipped = 0;
                }
            }
            Err(TrySendError::Full(_)) => skipped += 1,
            Err(TrySendError::Disconnected(_)) => return false,
        }
    }
}
