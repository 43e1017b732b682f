//! Health checks of load-balanced backends: a TCP connection, or an HTTP GET answered with
//! a 2xx or 3xx status, every `interval_ms`, each given `timeout_ms`. `fall` failures in a
//! row take a backend down, `rise` successes bring it back; only the changes are reported,
//! and the daemon then switches the tables (a down backend gets no new flows, its flows stay
//! in the flow table). With the defaults (200 ms, 300 ms, 2 failures) a backend whose server
//! is gone (connection refused) is down within about 0.4 s, one that stopped answering within
//! 1 s.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
    task::JoinHandle,
};

use super::{Check, Lb};

/// One backend to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub addr: IpAddr,
    pub port: u16,
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
    /// The state the check starts from (what the tables hold now).
    pub healthy: bool,
}

/// A backend's health changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub service: String,
    pub addr: IpAddr,
    pub healthy: bool,
}

/// Every backend of a service with a `health` check, `extra` (live additions) included.
#[must_use]
pub fn targets(lb: &Lb, extra: &[(String, super::Backend)]) -> Vec<Target> {
    let mut out = Vec::new();
    for s in &lb.services {
        let Some(h) = &s.health else { continue };
        let addrs = s.backends.iter().map(|b| b.addr).chain(
            extra
                .iter()
                .filter(|(n, _)| *n == s.name)
                .map(|(_, b)| b.addr),
        );
        for addr in addrs {
            out.push(Target {
                service: s.name.clone(),
                addr,
                port: h.port.unwrap_or(s.port),
                check: h.check.clone(),
                interval: Duration::from_millis(u64::from(h.interval_ms)),
                timeout: Duration::from_millis(u64::from(h.timeout_ms)),
                fall: h.fall,
                rise: h.rise,
                healthy: true,
            });
        }
    }
    out
}

/// One probe: true when the backend answered as the check asks within the timeout.
pub async fn probe(t: &Target) -> bool {
    let addr = SocketAddr::new(t.addr, t.port);
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        match &t.check {
            Check::Tcp => Some(true),
            Check::Http { path } => {
                let host = match t.addr {
                    IpAddr::V4(a) => a.to_string(),
                    IpAddr::V6(a) => format!("[{a}]"),
                };
                let req = format!(
                    "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: palisade-health\r\n\r\n"
                );
                s.write_all(req.as_bytes()).await.ok()?;
                let mut buf = [0u8; 64];
                let mut got = 0;
                // The status line's first 12 bytes: "HTTP/1.x NNN".
                while got < 12 {
                    let n = s.read(&mut buf[got..]).await.ok()?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                Some(http_ok(&buf[..got]))
            }
        }
    };
    matches!(
        tokio::time::timeout(t.timeout, attempt).await,
        Ok(Some(true))
    )
}

/// Whether a response starts with a 2xx or 3xx status line.
#[must_use]
pub fn http_ok(head: &[u8]) -> bool {
    head.len() >= 12
        && head.starts_with(b"HTTP/1.")
        && head[8] == b' '
        && matches!(head[9], b'2' | b'3')
        && head[10].is_ascii_digit()
        && head[11].is_ascii_digit()
}

/// Runs the checks of `targets` until dropped: one task each, reporting changes on `tx`
/// from the state each target starts in.
pub struct Checks {
    tasks: Vec<JoinHandle<()>>,
}

impl Checks {
    #[must_use]
    pub fn start(targets: Vec<Target>, tx: &mpsc::Sender<Change>) -> Self {
        let tasks = targets
            .into_iter()
            .map(|t| {
                let tx = tx.clone();
                tokio::spawn(async move { watch(t, tx).await })
            })
            .collect();
        Self { tasks }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn watch(t: Target, tx: mpsc::Sender<Change>) {
    let mut healthy = t.healthy;
    let mut streak = 0u32;
    let mut tick = tokio::time::interval(t.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = probe(&t).await;
        if ok == healthy {
            streak = 0;
            continue;
        }
        streak += 1;
        if streak >= if healthy { t.fall } else { t.rise } {
            healthy = ok;
            streak = 0;
            let change = Change {
                service: t.service.clone(),
                addr: t.addr,
                healthy,
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert!(http_ok(b"HTTP/1.0 200 OK\r\n"));
        assert!(http_ok(b"HTTP/1.1 301 Moved"));
        assert!(!http_ok(b"HTTP/1.1 404 Not Found"));
        assert!(!http_ok(b"HTTP/1.1 500 "));
        assert!(!http_ok(b"HTTP/1.1 2"));
        assert!(!http_ok(b"SSH-2.0-OpenSSH"));
    }

    #[tokio::test]
    async fn a_closed_port_fails_and_a_listener_passes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Target {
            service: "s".into(),
            addr: "127.0.0.1".parse().unwrap(),
            port,
            check: Check::Tcp,
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(200),
            fall: 1,
            rise: 1,
            healthy: true,
        };
        assert!(probe(&t).await);
        // An HTTP server answering 200, then 503.
        let serve = |status: &'static str| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            std::thread::spawn(move || {
                if let Ok((mut c, _)) = l.accept() {
                    use std::io::{Read as _, Write as _};
                    let mut b = [0u8; 256];
                    let _ = c.read(&mut b);
                    let _ = c.write_all(status.as_bytes());
                }
            });
            port
        };
        let http = |port| Target {
            port,
            check: Check::Http { path: "/".into() },
            ..t.clone()
        };
        assert!(probe(&http(serve("HTTP/1.0 200 OK\r\n\r\n"))).await);
        assert!(!probe(&http(serve("HTTP/1.0 503 Unavailable\r\n\r\n"))).await);
        drop(l);
        assert!(!probe(&t).await);
    }
}
