//! A TLS server of the tests' own on the host's loopback: a self-signed certificate for
//! `localhost` and a Python server script, with its client script beside it.
//!
//! Included with `#[path]` by the DLP tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    ffi::OsStr,
    fs,
    io::Read as _,
    path::Path,
    process::{Child, Command, Stdio},
};

/// Writes a self-signed certificate for `localhost` (`openssl req -x509`, the key made with
/// `key_args`, e.g. `["-newkey", "rsa:2048"]`) to `dir`'s `cert.pem` and `key.pem`, and the
/// scripts `server` and `client` to its `server.py` and `client.py`.
pub fn prepare(dir: &Path, key_args: &[&str], server: &str, client: &str) {
    let st = Command::new("openssl")
        .args(["req", "-x509"])
        .args(key_args)
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    fs::write(dir.join("server.py"), server).unwrap();
    fs::write(dir.join("client.py"), client).unwrap();
}

/// Starts `dir`'s `server.py` with `args` and waits for its `ready` line.
pub fn start(dir: &Path, args: &[&OsStr]) -> Child {
    let mut c = Command::new("python3")
        .arg(dir.join("server.py"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut b = [0u8; 6];
    c.stdout.as_mut().unwrap().read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ready\n");
    c
}
