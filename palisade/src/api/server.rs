//! The daemon's side of the control socket: creating it with tight permissions, checking
//! each peer's credentials, reading requests and streaming events.

use std::{
    ffi::CString,
    io,
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{broadcast, mpsc, oneshot},
};
use tracing::{debug, warn};

use super::proto::{EventFilter, MAX_REQUEST, Request, Response};

/// A request on its way to the daemon's main loop, with where to send the answer.
#[derive(Debug)]
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
    /// Resolves once the answer was written to the client (or the client is gone), for an
    /// answer sent just before the daemon exits.
    pub written: Option<oneshot::Receiver<()>>,
}

/// One event, rendered once for every subscriber.
#[derive(Debug, Clone)]
pub struct EventLine {
    pub kind: &'static str,
    pub verdict: String,
    /// What `--name` is matched against: the DNS name, the rule name.
    pub names: Vec<String>,
    pub json: String,
    pub text: String,
}

impl EventLine {
    /// Renders `ev` once as JSON and as text, for every consumer (standard output, the
    /// `palisade events` clients, OTLP).
    ///
    /// Both are written into buffers the thread keeps from one event to the next and copied
    /// out at their length: one allocation each. Rendered into new strings they grew by
    /// doubling, several reallocations per event (six for the text of a DNS event), a
    /// sizeable share of what an event costs the daemon under a flood.
    pub fn render<T: serde::Serialize + std::fmt::Display>(
        kind: &'static str,
        verdict: &str,
        names: Vec<String>,
        ev: &T,
    ) -> Self {
        use std::fmt::Write as _;
        thread_local! {
            static BUFFERS: std::cell::RefCell<(Vec<u8>, String)> =
                std::cell::RefCell::new((Vec::with_capacity(1024), String::with_capacity(1024)));
        }
        BUFFERS.with_borrow_mut(|(json, text)| {
            json.clear();
            text.clear();
            // Serializing plain fields into memory cannot fail, nor can writing into a
            // string; an error would leave the line empty, as `unwrap_or_default` did.
            let json = match serde_json::to_writer(&mut *json, ev) {
                Ok(()) => String::from_utf8_lossy(json).into_owned(),
                Err(_) => String::new(),
            };
            let _ = write!(text, "{ev}");
            Self {
                kind,
                verdict: verdict.to_string(),
                names,
                json,
                text: text.as_str().to_owned(),
            }
        })
    }
}

/// Who may use the socket besides root.
#[derive(Debug, Clone)]
pub struct Access {
    /// The daemon's own effective uid (a daemon run as a dedicated user accepts that user).
    pub euid: u32,
    /// A group whose members may connect, by name and id.
    pub group: Option<(String, u32)>,
}

impl Access {
    /// Whether the peer with these credentials may use the API; the refusal says why.
    ///
    /// # Errors
    /// When the peer is neither root, nor the daemon's user, nor in the configured group.
    pub fn check(
        &self,
        uid: u32,
        gid: u32,
        groups: &[u32],
        pid: Option<i32>,
    ) -> Result<(), String> {
        if uid == 0 || uid == self.euid {
            return Ok(());
        }
        if let Some((_, g)) = &self.group
            && (gid == *g || groups.contains(g))
        {
            return Ok(());
        }
        let who = match pid {
            Some(p) => format!("uid {uid} (pid {p})"),
            None => format!("uid {uid}"),
        };
        Err(match &self.group {
            Some((name, _)) => {
                format!("permission denied: {who} is neither root nor in group {name}")
            }
            None => format!(
                "permission denied: {who} is not root; the control socket is for root only (see --socket-group)"
            ),
        })
    }
}

/// Resolves a group name (or number) to its id.
///
/// # Errors
/// When no such group exists.
pub fn group_id(name: &str) -> Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let c = CString::new(name).map_err(|_| anyhow!("invalid group name {name:?}"))?;
    // SAFETY: a zeroed `group` is a valid out-parameter (null pointers, zero ids).
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the stated sizes for the duration of the call.
    let r =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        bail!("no group named {name:?} (for --socket-group)");
    }
    Ok(grp.gr_gid)
}

/// Creates the listening socket: its directory if needed, no window with wider permissions
/// (bound under umask 0177), then the group and mode asked for. A socket file left by a dead
/// daemon is replaced; one that still answers means a daemon is running.
///
/// # Errors
/// When another daemon answers on `path`, or the socket cannot be created.
pub fn bind(path: &Path, group: Option<u32>, mode: u32) -> Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another palisade daemon is listening on {}; stop it first, or give this one its own --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // SAFETY: umask only swaps the process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("creating control socket {}", path.display()))?;
    if let Some(gid) = group {
        let meta = std::fs::metadata(path)?;
        if std::os::unix::fs::MetadataExt::gid(&meta) != gid {
            std::os::unix::fs::chown(path, None, Some(gid)).with_context(|| {
                format!(
                    "giving {} to group {gid} (needs CAP_CHOWN, or run the daemon with that group)",
                    path.display()
                )
            })?;
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(UnixListener::from_std(listener)?)
}

/// Supplementary groups of the peer at connect time (`SO_PEERGROUPS`, Linux 4.13+).
fn peer_groups(stream: &UnixStream) -> Vec<u32> {
    let mut buf = vec![0u32; 1024];
    let mut len = (buf.len() * 4) as libc::socklen_t;
    // SAFETY: `buf` has `len` writable bytes.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Vec::new();
    }
    buf.truncate(len as usize / 4);
    buf
}

/// Accepts connections until the listener fails.
pub async fn serve(
    listener: UnixListener,
    access: Access,
    calls: mpsc::Sender<Call>,
    events: broadcast::Sender<Arc<EventLine>>,
) {
    let access = Arc::new(access);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let access = access.clone();
                let calls = calls.clone();
                let events = events.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, &access, calls, events).await {
                        debug!(error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a control connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn write_line(w: &mut OwnedWriteHalf, line: &str) -> io::Result<()> {
    w.write_all(line.as_bytes()).await?;
    w.write_all(b"\n").await?;
    w.flush().await
}

async fn respond(w: &mut OwnedWriteHalf, r: &Response) -> io::Result<()> {
    write_line(w, &serde_json::to_string(r).unwrap_or_default()).await
}

async fn connection(
    stream: UnixStream,
    access: &Access,
    calls: mpsc::Sender<Call>,
    events: broadcast::Sender<Arc<EventLine>>,
) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let groups = peer_groups(&stream);
    let verdict = access.check(cred.uid(), cred.gid(), &groups, cred.pid());
    let (r, mut w) = stream.into_split();
    if let Err(msg) = verdict {
        warn!(
            uid = cred.uid(),
            gid = cred.gid(),
            pid = cred.pid(),
            "control connection refused"
        );
        return respond(&mut w, &Response::err(msg)).await;
    }
    let mut reader = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_REQUEST {
            return respond(
                &mut w,
                &Response::err(format!("request longer than {MAX_REQUEST} bytes")),
            )
            .await;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let request: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                respond(&mut w, &Response::err(format!("bad request: {e}"))).await?;
                continue;
            }
        };
        if let Request::Events { filter, json } = request {
            if let Err(e) = filter.validate() {
                respond(&mut w, &Response::err(e)).await?;
                continue;
            }
            respond(
                &mut w,
                &Response::ok(&serde_json::json!({ "streaming": true })),
            )
            .await?;
            return stream_events(reader, w, events.subscribe(), &filter, json).await;
        }
        let (reply, answer) = oneshot::channel();
        let (done, written) = oneshot::channel();
        if calls
            .send(Call {
                request,
                reply,
                written: Some(written),
            })
            .await
            .is_err()
        {
            return respond(&mut w, &Response::err("the daemon is shutting down")).await;
        }
        let r = answer
            .await
            .unwrap_or_else(|_| Response::err("the daemon is shutting down"));
        let sent = respond(&mut w, &r).await;
        let _ = done.send(());
        sent?;
    }
}

async fn stream_events(
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut w: OwnedWriteHalf,
    mut rx: broadcast::Receiver<Arc<EventLine>>,
    filter: &EventFilter,
    json: bool,
) -> io::Result<()> {
    let mut sink = [0u8; 256];
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(e) => {
                    let names: Vec<&str> = e.names.iter().map(String::as_str).collect();
                    if filter.matches(e.kind, &e.verdict, &names) {
                        write_line(&mut w, if json { &e.json } else { &e.text }).await?;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = if json {
                        format!("{{\"kind\":\"lost\",\"count\":{n}}}")
                    } else {
                        format!("palisade: {n} events skipped: this client reads too slowly")
                    };
                    write_line(&mut w, &note).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            n = reader.read(&mut sink) => {
                // The client hung up (or sent something it should not have).
                if n.unwrap_or(0) == 0 {
                    return Ok(());
                }
            }
        }
    }
}

/// Removes the socket file when the daemon ends.
#[derive(Debug)]
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_the_daemon_user_or_the_group_get_in() {
        let a = Access {
            euid: 0,
            group: None,
        };
        assert!(a.check(0, 0, &[], None).is_ok());
        let e = a.check(65534, 65534, &[], Some(42)).unwrap_err();
        assert!(
            e.contains("uid 65534 (pid 42)") && e.contains("root"),
            "{e}"
        );
        let g = Access {
            euid: 0,
            group: Some(("palisade".into(), 990)),
        };
        assert!(g.check(1000, 990, &[], None).is_ok());
        assert!(g.check(1000, 1000, &[4, 990], None).is_ok());
        assert!(
            g.check(1000, 1000, &[4], None)
                .unwrap_err()
                .contains("group palisade")
        );
        let user = Access {
            euid: 995,
            group: None,
        };
        assert!(user.check(995, 995, &[], None).is_ok());
    }

    #[test]
    fn group_ids_resolve() {
        assert_eq!(group_id("0").unwrap(), 0);
        assert_eq!(group_id("root").unwrap(), 0);
        assert!(
            group_id("no-such-group-here")
                .unwrap_err()
                .to_string()
                .contains("no group")
        );
    }
}
