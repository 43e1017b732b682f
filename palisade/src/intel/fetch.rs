//! Getting a feed's bytes: a file, or a plain HTTP/1.1 GET to a server on the local network
//! (no TLS, no redirects; the body up to [`MAX_BODY`]).

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::Source;

/// The largest feed read (256 MiB: 10M addresses as text are about 150 MiB).
pub const MAX_BODY: u64 = 256 << 20;
/// Connect and read timeout of a GET.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Reads `source`.
///
/// # Errors
/// When the file cannot be read, the server cannot be reached, or it answers anything but
/// `200`.
pub fn fetch(source: &Source) -> Result<Vec<u8>> {
    match source {
        Source::File(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display())),
        Source::Http(url) => get(url),
    }
}

/// Splits `http://host[:port]/path`.
///
/// # Errors
/// When the URL is not of that form.
pub fn split_url(url: &str) -> Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("only http:// URLs are fetched, not {url:?}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| anyhow!("bad port in {url:?}"))?,
        ),
        _ => (hostport, 80),
    };
    if host.is_empty() {
        bail!("no host in {url:?}");
    }
    Ok((host.to_string(), port, path.to_string()))
}

fn get(url: &str) -> Result<Vec<u8>> {
    let (host, port, path) = split_url(url)?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} has no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\nAccept-Encoding: identity\r\nUser-Agent: palisade\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(MAX_BODY + 65_536)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading the answer of {url}"))?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{url}: no HTTP header in the answer"))?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.lines().next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        bail!("{url}: the server answered {status:?}");
    }
    let mut body = buf.split_off(end + 4);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| anyhow!("{url}: broken chunked body"))?;
    }
    if body.len() as u64 > MAX_BODY {
        bail!("{url}: the feed is over {MAX_BODY} bytes");
    }
    Ok(body)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            split_url("http://10.0.0.1:8080/feeds/a.txt").unwrap(),
            ("10.0.0.1".into(), 8080, "/feeds/a.txt".into())
        );
        assert_eq!(
            split_url("http://intel.lan").unwrap(),
            ("intel.lan".into(), 80, "/".into())
        );
        assert_eq!(
            split_url("http://[fd00::1]:81/x").unwrap(),
            ("fd00::1".into(), 81, "/x".into())
        );
        assert!(split_url("https://x/").is_err());
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"4\r\nabcd\r\n2;x=y\r\nef\r\n0\r\n\r\n").unwrap(),
            b"abcdef"
        );
        assert!(dechunk(b"4\r\nab").is_none());
    }
}
