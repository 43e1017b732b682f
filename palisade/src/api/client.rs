//! The command side of the control socket: connect, send one request, read the answer.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow, bail};
use serde::de::DeserializeOwned;

use super::proto::{Request, Response};

/// A connection to the daemon.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// Why connecting failed, in words an operator can act on.
fn connect_error(path: &Path, e: &io::Error) -> anyhow::Error {
    let p = path.display();
    match e.kind() {
        io::ErrorKind::NotFound => anyhow!(
            "no palisade daemon at {p}: the socket does not exist (is `palisade run` running? --socket names another socket)"
        ),
        io::ErrorKind::ConnectionRefused => {
            anyhow!(
                "no palisade daemon at {p}: nothing listens on the socket (the daemon is not running)"
            )
        }
        io::ErrorKind::PermissionDenied => anyhow!(
            "permission denied connecting to {p}: the control socket is for root (or the group given to `palisade run --socket-group`)"
        ),
        _ => anyhow!("cannot connect to {p}: {e}"),
    }
}

/// Whether connecting failed because no daemon runs there (as opposed to being refused).
#[must_use]
pub fn daemon_absent(path: &Path) -> bool {
    match UnixStream::connect(path) {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        ),
    }
}

impl Client {
    /// Connects to the daemon's socket.
    ///
    /// # Errors
    /// When no daemon listens there or the socket's permissions refuse this user.
    pub fn connect(path: &Path) -> Result<Self> {
        let s = UnixStream::connect(path).map_err(|e| connect_error(path, &e))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends a request and returns the raw answer.
    ///
    /// # Errors
    /// On I/O errors or a malformed answer.
    pub fn call(&mut self, request: &Request) -> Result<Response> {
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        if let Err(e) = self.writer.write_all(line.as_bytes()) {
            // A daemon that refuses this peer answers at once and hangs up: its reason is
            // still there to read.
            if !matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) {
                bail!("sending to the daemon at {}: {e}", self.path.display());
            }
        }
        let mut answer = String::new();
        let n = self
            .reader
            .read_line(&mut answer)
            .map_err(|e| anyhow!("reading from the daemon at {}: {e}", self.path.display()))?;
        if n == 0 {
            bail!(
                "the daemon at {} closed the connection without answering",
                self.path.display()
            );
        }
        serde_json::from_str(answer.trim())
            .map_err(|e| anyhow!("malformed answer from the daemon: {e}"))
    }

    /// Sends a request and decodes a successful answer's data; a refusal becomes the error,
    /// with the daemon's message.
    ///
    /// # Errors
    /// When the daemon refuses, or on I/O errors.
    pub fn request<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T> {
        let r = self.call(request)?;
        if !r.ok {
            bail!(
                "{}",
                r.error
                    .unwrap_or_else(|| "the daemon refused without saying why".into())
            );
        }
        serde_json::from_value(r.data.unwrap_or_default())
            .map_err(|e| anyhow!("unexpected answer from the daemon (a different version?): {e}"))
    }

    /// After an accepted `events` request: copies every line the daemon sends to `out` until
    /// the daemon hangs up, `limit` lines were copied, or writing fails (e.g. a closed pipe).
    ///
    /// # Errors
    /// On read errors.
    pub fn copy_lines(&mut self, out: &mut dyn io::Write, limit: Option<u64>) -> Result<()> {
        let mut n = 0u64;
        let mut line = String::new();
        loop {
            if limit.is_some_and(|l| n >= l) {
                return Ok(());
            }
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if out
                .write_all(line.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return Ok(());
            }
            n += 1;
        }
    }
}
