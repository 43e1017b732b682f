//! The control API: the daemon listens on a local Unix socket, the `palisade` commands talk
//! to it.
//!
//! # Protocol
//!
//! Newline-delimited JSON over a `SOCK_STREAM` Unix socket (default
//! [`proto::DEFAULT_SOCKET`]). The client writes one request object per line, tagged by
//! `cmd` (see [`proto::Request`]); the daemon answers each with one line,
//! `{"ok":true,"data":...}` or `{"ok":false,"error":"..."}`. A connection may carry any
//! number of requests, one after the other. `events` is the exception: after its answer the
//! daemon writes one event per line (text or JSON, as asked) until the client hangs up.
//!
//! # Who may connect
//!
//! The socket is created mode 0600 (0660 with `--socket-group`), so the file system lets only
//! root (or that group) connect. The daemon then checks the peer's credentials
//! (`SO_PEERCRED`, and `SO_PEERGROUPS` for supplementary groups) on every connection and
//! refuses anyone else, even when the socket's mode was widened by hand.

pub mod client;
pub mod proto;
pub mod server;
