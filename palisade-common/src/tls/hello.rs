//! The TLS record layer and the ClientHello, read without allocating and without panicking on
//! any input.
//!
//! [`assemble_handshake`] turns the first bytes a client sent on a TCP connection into the
//! ClientHello handshake message, joining the fragments of as many TLS records as it spans
//! (RFC 8446 §5.1 lets a handshake message cross records). [`parse_client_hello`] reads that
//! message into a [`ClientHello`]: the server name, the first ALPN protocol, and what JA4 needs
//! (versions, cipher suites, extension types, signature algorithms), with GREASE values
//! (RFC 8701) left out.

/// The TLS record content type of handshake messages.
pub const CONTENT_HANDSHAKE: u8 = 22;
/// The handshake message type of a ClientHello.
pub const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// The largest record fragment a peer may send (2^14 bytes, RFC 8446 §5.1).
pub const MAX_RECORD_FRAGMENT: usize = 16_384;
/// The largest ClientHello message (handshake header included) that is assembled. Browsers'
/// post-quantum hellos are about 1.8 KiB; the rest is room for padding and large key shares.
pub const MAX_HELLO_LEN: usize = 16_384;

/// Cipher suites kept per hello (non-GREASE); more are counted but not kept.
pub const MAX_CIPHERS: usize = 128;
/// Extension types kept per hello (non-GREASE); more are counted but not kept.
pub const MAX_EXTENSIONS: usize = 64;
/// Signature algorithms kept per hello (non-GREASE); more are counted but not kept.
pub const MAX_SIG_ALGS: usize = 64;
/// The longest server name (RFC 1035 limits a name to 255 bytes).
pub const MAX_SNI_LEN: usize = 255;
/// The longest ALPN protocol name (RFC 7301: 1 to 255 bytes).
pub const MAX_ALPN_LEN: usize = 255;

/// Extension numbers Palisade reads.
pub const EXT_SERVER_NAME: u16 = 0x0000;
pub const EXT_SIGNATURE_ALGORITHMS: u16 = 0x000d;
pub const EXT_ALPN: u16 = 0x0010;
pub const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
/// Encrypted Client Hello (draft-ietf-tls-esni): the visible server name is the outer one.
pub const EXT_ECH: u16 = 0xfe0d;

/// Whether `v` is one of the sixteen GREASE values (RFC 8701: `0x0a0a`, `0x1a1a`, ...,
/// `0xfafa`).
#[inline]
#[must_use]
pub const fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// Why bytes are not a usable ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloError {
    /// The first record is not a TLS handshake record: not TLS at all.
    NotTls,
    /// A record header is inconsistent (version, zero or oversized length, or a record of
    /// another type before the hello is complete).
    BadRecord,
    /// The first handshake message is not a ClientHello.
    NotClientHello,
    /// The hello is longer than [`MAX_HELLO_LEN`].
    TooLarge,
    /// A length inside the hello runs past its end, or a field is malformed.
    Malformed(Field),
}

/// The field of a ClientHello found malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Header,
    SessionId,
    CipherSuites,
    Compression,
    Extensions,
    ServerName,
    Alpn,
    SignatureAlgorithms,
    SupportedVersions,
}

/// How far [`assemble_handshake`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assembly {
    /// The hello is whole: it is the first `len` bytes of the output buffer.
    Complete { len: usize },
    /// Consistent so far; more stream bytes are needed.
    NeedMore,
    /// The stream can never give a ClientHello.
    Invalid(HelloError),
}

/// Joins the handshake fragments of the TLS records at the start of `stream` (the bytes the
/// client sent, in order, from the first) into `out`, until the first handshake message is
/// whole. `out` should hold [`MAX_HELLO_LEN`] bytes; a message that does not fit is
/// [`HelloError::TooLarge`].
pub fn assemble_handshake(stream: &[u8], out: &mut [u8]) -> Assembly {
    let mut pos = 0usize;
    let mut have = 0usize;
    // Every pass consumes a 5-byte header and at least one byte, so the loop ends with the
    // stream; the stream is itself bounded by the reassembly window.
    while pos < stream.len() {
        let Some(header) = stream.get(pos..pos + 5) else {
            return Assembly::NeedMore;
        };
        if header[0] != CONTENT_HANDSHAKE {
            return Assembly::Invalid(if pos == 0 {
                HelloError::NotTls
            } else {
                HelloError::BadRecord
            });
        }
        // SSL 3.0 to TLS 1.3 all write 3 as the major version; the minor is not checked
        // (clients write 1 or 3 there, and servers ignore it).
        if header[1] != 3 {
            return Assembly::Invalid(if pos == 0 {
                HelloError::NotTls
            } else {
                HelloError::BadRecord
            });
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD_FRAGMENT {
            return Assembly::Invalid(HelloError::BadRecord);
        }
        let body_start = pos + 5;
        let available = stream.len().saturating_sub(body_start).min(len);
        let Some(fragment) = stream.get(body_start..body_start + available) else {
            return Assembly::NeedMore;
        };
        let Some(dest) = out.get_mut(have..have + fragment.len()) else {
            return Assembly::Invalid(HelloError::TooLarge);
        };
        dest.copy_from_slice(fragment);
        have += fragment.len();
        if let Some(done) = handshake_done(&out[..have], out.len()) {
            return done;
        }
        if available < len {
            return Assembly::NeedMore;
        }
        pos = body_start + len;
    }
    Assembly::NeedMore
}

/// `Some` once the handshake bytes gathered so far decide the outcome.
fn handshake_done(msg: &[u8], capacity: usize) -> Option<Assembly> {
    let first = *msg.first()?;
    if first != HANDSHAKE_CLIENT_HELLO {
        return Some(Assembly::Invalid(HelloError::NotClientHello));
    }
    let h = msg.get(..4)?;
    let total = 4 + (usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]));
    if total > capacity.min(MAX_HELLO_LEN) {
        return Some(Assembly::Invalid(HelloError::TooLarge));
    }
    (msg.len() >= total).then_some(Assembly::Complete { len: total })
}

/// What a ClientHello says, GREASE values left out. Lists keep wire order.
#[derive(Clone)]
pub struct ClientHello {
    /// `legacy_version` of the hello.
    pub legacy_version: u16,
    /// The highest non-GREASE version of `supported_versions`, or `legacy_version` when the
    /// extension is absent (or lists only GREASE).
    pub max_version: u16,
    pub ciphers: [u16; MAX_CIPHERS],
    /// Non-GREASE cipher suites in the hello (may exceed [`MAX_CIPHERS`]; only that many are
    /// kept).
    pub cipher_count: usize,
    pub extensions: [u16; MAX_EXTENSIONS],
    /// Non-GREASE extensions in the hello (may exceed [`MAX_EXTENSIONS`]).
    pub extension_count: usize,
    pub sig_algs: [u16; MAX_SIG_ALGS],
    pub sig_alg_count: usize,
    /// Whether a `server_name` extension was present (even without a host name in it).
    pub has_sni: bool,
    pub sni: [u8; MAX_SNI_LEN],
    pub sni_len: usize,
    pub has_alpn: bool,
    /// The first ALPN protocol, as sent.
    pub alpn: [u8; MAX_ALPN_LEN],
    pub alpn_len: usize,
    /// An `encrypted_client_hello` extension was present: the server name above is the
    /// outer (public) one, not the one the client is after.
    pub ech: bool,
}

impl ClientHello {
    const EMPTY: Self = Self {
        legacy_version: 0,
        max_version: 0,
        ciphers: [0; MAX_CIPHERS],
        cipher_count: 0,
        extensions: [0; MAX_EXTENSIONS],
        extension_count: 0,
        sig_algs: [0; MAX_SIG_ALGS],
        sig_alg_count: 0,
        has_sni: false,
        sni: [0; MAX_SNI_LEN],
        sni_len: 0,
        has_alpn: false,
        alpn: [0; MAX_ALPN_LEN],
        alpn_len: 0,
        ech: false,
    };

    /// The server name's bytes as sent (not normalised); empty when there was none.
    #[must_use]
    pub fn sni(&self) -> &[u8] {
        &self.sni[..self.sni_len.min(MAX_SNI_LEN)]
    }

    /// The first ALPN protocol as sent; empty when there was none.
    #[must_use]
    pub fn alpn(&self) -> &[u8] {
        &self.alpn[..self.alpn_len.min(MAX_ALPN_LEN)]
    }

    /// The kept cipher suites.
    #[must_use]
    pub fn ciphers(&self) -> &[u16] {
        &self.ciphers[..self.cipher_count.min(MAX_CIPHERS)]
    }

    /// The kept extension types.
    #[must_use]
    pub fn extensions(&self) -> &[u16] {
        &self.extensions[..self.extension_count.min(MAX_EXTENSIONS)]
    }

    /// The kept signature algorithms.
    #[must_use]
    pub fn sig_algs(&self) -> &[u16] {
        &self.sig_algs[..self.sig_alg_count.min(MAX_SIG_ALGS)]
    }
}

/// A bounds-checked reader over a byte slice; every read fails instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    const fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }

    fn rest(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }
}

fn push(list: &mut [u16], count: &mut usize, v: u16) {
    if let Some(slot) = list.get_mut(*count) {
        *slot = v;
    }
    *count += 1;
}

/// Reads a ClientHello handshake message (its 4-byte header included), as
/// [`assemble_handshake`] gives it, into `hello`.
///
/// # Errors
/// When the message is not a ClientHello or any length inside it is inconsistent.
pub fn parse_client_hello(msg: &[u8], hello: &mut ClientHello) -> Result<(), HelloError> {
    *hello = ClientHello::EMPTY;
    let bad = HelloError::Malformed;
    let mut r = Reader::new(msg);
    let kind = r.u8().ok_or(bad(Field::Header))?;
    if kind != HANDSHAKE_CLIENT_HELLO {
        return Err(HelloError::NotClientHello);
    }
    let l = r.take(3).ok_or(bad(Field::Header))?;
    let len = usize::from(l[0]) << 16 | usize::from(l[1]) << 8 | usize::from(l[2]);
    if len > MAX_HELLO_LEN {
        return Err(HelloError::TooLarge);
    }
    let body = r.take(len).ok_or(bad(Field::Header))?;
    let mut r = Reader::new(body);
    hello.legacy_version = r.u16().ok_or(bad(Field::Header))?;
    hello.max_version = hello.legacy_version;
    r.take(32).ok_or(bad(Field::Header))?;
    let sid = r.u8().ok_or(bad(Field::SessionId))?;
    if sid > 32 {
        return Err(bad(Field::SessionId));
    }
    r.take(usize::from(sid)).ok_or(bad(Field::SessionId))?;

    let cs_len = usize::from(r.u16().ok_or(bad(Field::CipherSuites))?);
    if cs_len == 0 || cs_len % 2 != 0 {
        return Err(bad(Field::CipherSuites));
    }
    let cs = r.take(cs_len).ok_or(bad(Field::CipherSuites))?;
    for pair in cs.chunks_exact(2) {
        let v = u16::from_be_bytes([pair[0], pair[1]]);
        if !is_grease(v) {
            push(&mut hello.ciphers, &mut hello.cipher_count, v);
        }
    }

    let comp = r.u8().ok_or(bad(Field::Compression))?;
    if comp == 0 {
        return Err(bad(Field::Compression));
    }
    r.take(usize::from(comp)).ok_or(bad(Field::Compression))?;

    // Hellos from before extensions existed end here.
    if r.rest() == 0 {
        return Ok(());
    }
    let ext_len = usize::from(r.u16().ok_or(bad(Field::Extensions))?);
    if ext_len != r.rest() {
        return Err(bad(Field::Extensions));
    }
    let exts = r.take(ext_len).ok_or(bad(Field::Extensions))?;
    let mut r = Reader::new(exts);
    while r.rest() > 0 {
        let kind = r.u16().ok_or(bad(Field::Extensions))?;
        let len = usize::from(r.u16().ok_or(bad(Field::Extensions))?);
        let data = r.take(len).ok_or(bad(Field::Extensions))?;
        if is_grease(kind) {
            continue;
        }
        push(&mut hello.extensions, &mut hello.extension_count, kind);
        match kind {
            EXT_SERVER_NAME => read_server_name(data, hello)?,
            EXT_ALPN => read_alpn(data, hello)?,
            EXT_SIGNATURE_ALGORITHMS => read_sig_algs(data, hello)?,
            EXT_SUPPORTED_VERSIONS => read_versions(data, hello)?,
            EXT_ECH => hello.ech = true,
            _ => {}
        }
    }
    Ok(())
}

/// `server_name` (RFC 6066 §3): a list of (type, name); the first `host_name` (type 0) is
/// the server name. A list with no host name (servers send the extension empty) leaves the
/// name empty.
fn read_server_name(data: &[u8], hello: &mut ClientHello) -> Result<(), HelloError> {
    let bad = HelloError::Malformed(Field::ServerName);
    hello.has_sni = true;
    if data.is_empty() {
        return Ok(());
    }
    let mut r = Reader::new(data);
    let list_len = usize::from(r.u16().ok_or(bad)?);
    if list_len != r.rest() {
        return Err(bad);
    }
    while r.rest() > 0 {
        let kind = r.u8().ok_or(bad)?;
        let len = usize::from(r.u16().ok_or(bad)?);
        let name = r.take(len).ok_or(bad)?;
        if kind == 0 && hello.sni_len == 0 {
            if name.is_empty() || name.len() > MAX_SNI_LEN {
                return Err(bad);
            }
            hello.sni[..name.len()].copy_from_slice(name);
            hello.sni_len = name.len();
        }
    }
    Ok(())
}

/// ALPN (RFC 7301): a list of 1..=255-byte protocol names; the first is kept.
fn read_alpn(data: &[u8], hello: &mut ClientHello) -> Result<(), HelloError> {
    let bad = HelloError::Malformed(Field::Alpn);
    let mut r = Reader::new(data);
    let list_len = usize::from(r.u16().ok_or(bad)?);
    if list_len != r.rest() {
        return Err(bad);
    }
    hello.has_alpn = true;
    let mut first = true;
    while r.rest() > 0 {
        let len = usize::from(r.u8().ok_or(bad)?);
        let name = r.take(len).ok_or(bad)?;
        if name.is_empty() {
            return Err(bad);
        }
        if first {
            hello.alpn[..name.len()].copy_from_slice(name);
            hello.alpn_len = name.len();
            first = false;
        }
    }
    Ok(())
}

fn read_sig_algs(data: &[u8], hello: &mut ClientHello) -> Result<(), HelloError> {
    let bad = HelloError::Malformed(Field::SignatureAlgorithms);
    let mut r = Reader::new(data);
    let len = usize::from(r.u16().ok_or(bad)?);
    if len != r.rest() || len % 2 != 0 {
        return Err(bad);
    }
    for pair in r.take(len).ok_or(bad)?.chunks_exact(2) {
        let v = u16::from_be_bytes([pair[0], pair[1]]);
        if !is_grease(v) {
            push(&mut hello.sig_algs, &mut hello.sig_alg_count, v);
        }
    }
    Ok(())
}

fn read_versions(data: &[u8], hello: &mut ClientHello) -> Result<(), HelloError> {
    let bad = HelloError::Malformed(Field::SupportedVersions);
    let mut r = Reader::new(data);
    let len = usize::from(r.u8().ok_or(bad)?);
    if len != r.rest() || len % 2 != 0 {
        return Err(bad);
    }
    let mut best = 0u16;
    for pair in r.take(len).ok_or(bad)?.chunks_exact(2) {
        let v = u16::from_be_bytes([pair[0], pair[1]]);
        if !is_grease(v) && v > best {
            best = v;
        }
    }
    if best != 0 {
        hello.max_version = best;
    }
    Ok(())
}

impl Default for ClientHello {
    fn default() -> Self {
        Self::EMPTY
    }
}
