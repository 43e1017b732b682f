//! The daemon's events as OpenTelemetry logs (OTLP), over gRPC or HTTP/protobuf.
//!
//! Enabled when an endpoint is configured (`--otlp-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`); the protocol comes
//! from `--otlp-protocol`, `OTEL_EXPORTER_OTLP_LOGS_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`grpc` or `http/protobuf`, the default); request headers (a collector's credentials)
//! from `OTEL_EXPORTER_OTLP_LOGS_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`
//! (`key=value,key2=value2`, values percent-encoded). Resource attributes: `service.name`
//! (`OTEL_SERVICE_NAME`, default `palisade`), `service.version`, `host.name`, those of
//! `OTEL_RESOURCE_ATTRIBUTES`, and the downward API's `K8S_NODE_NAME`, `K8S_POD_NAME`,
//! `K8S_POD_NAMESPACE`, `K8S_POD_UID` as `k8s.node.name`, `k8s.pod.name`,
//! `k8s.namespace.name`, `k8s.pod.uid`.
//!
//! The event loop never waits for the collector: each event is offered to a bounded queue
//! ([`QUEUE`] records) and dropped, and counted, when the queue is full. A sender task
//! takes up to [`BATCH`] records at a time and exports them; a batch that fails is counted
//! as failed, not retried (the queue behind it would only grow).
//!
//! The protobuf messages (`opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest`
//! and what it holds) are written by hand: the few fields used do not warrant a code
//! generator. Plain `http://` endpoints only; there is no TLS.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
};

/// Records the queue holds before new ones are dropped.
pub const QUEUE: usize = 4096;
/// Records sent in one export request at most.
pub const BATCH: usize = 512;
/// How long one export may take before it counts as failed.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The gRPC method of the logs service.
pub const GRPC_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// The transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (HTTP/2 without TLS).
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

impl Protocol {
    /// Reads `grpc` or `http/protobuf`.
    ///
    /// # Errors
    /// For any other protocol (`http/json` is not offered).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => bail!("OTLP protocol {other:?}: use \"grpc\" or \"http/protobuf\""),
        }
    }
}

/// Where and how events are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `host:port` to connect to.
    pub authority: String,
    /// The request path (`/v1/logs` for HTTP, the gRPC method).
    pub path: String,
    /// The transport.
    pub protocol: Protocol,
    /// Resource attributes, in order.
    pub resource: Vec<(String, String)>,
    /// The queue's capacity in records.
    pub queue: usize,
    /// Headers sent with every export request, in order.
    pub headers: Vec<(String, String)>,
}

impl Config {
    /// The configuration from flags, else the standard environment variables (read through
    /// `env`); `None` when no endpoint is set.
    ///
    /// # Errors
    /// When the endpoint or protocol is malformed.
    pub fn from_env(
        endpoint: Option<&str>,
        protocol: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let protocol = match protocol
            .map(str::to_owned)
            .or_else(|| get("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL"))
            .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(p) => Protocol::parse(&p)?,
            None => Protocol::HttpProtobuf,
        };
        // A signal-specific endpoint is the full URL; the general one gets `/v1/logs`.
        let (url, full) = match endpoint.map(str::to_owned) {
            Some(e) => (e, false),
            None => match get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT") {
                Some(e) => (e, true),
                None => match get("OTEL_EXPORTER_OTLP_ENDPOINT") {
                    Some(e) => (e, false),
                    None => return Ok(None),
                },
            },
        };
        let rest = url.trim().strip_prefix("http://").ok_or_else(|| {
            anyhow!("OTLP endpoint {url:?}: only http:// endpoints are supported (no TLS)")
        })?;
        let (authority, given_path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("OTLP endpoint {url:?} names no host");
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            let port = if protocol == Protocol::Grpc {
                4317
            } else {
                4318
            };
            format!("{authority}:{port}")
        };
        let path = match protocol {
            Protocol::Grpc => GRPC_PATH.to_owned(),
            Protocol::HttpProtobuf if full => {
                if given_path.is_empty() {
                    "/".to_owned()
                } else {
                    given_path.to_owned()
                }
            }
            Protocol::HttpProtobuf => format!("{}/v1/logs", given_path.trim_end_matches('/')),
        };
        let headers = match get("OTEL_EXPORTER_OTLP_LOGS_HEADERS") {
            Some(h) => parse_headers("OTEL_EXPORTER_OTLP_LOGS_HEADERS", &h)?,
            None => match get("OTEL_EXPORTER_OTLP_HEADERS") {
                Some(h) => parse_headers("OTEL_EXPORTER_OTLP_HEADERS", &h)?,
                None => Vec::new(),
            },
        };
        Ok(Some(Self {
            authority,
            path,
            protocol,
            resource: resource_attributes(env),
            queue: QUEUE,
            headers,
        }))
    }
}

/// Headers that the transport itself sets; a configured one would contradict it.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "connection",
    "te",
    "transfer-encoding",
];

/// `key=value,key2=value2` (values percent-decoded) from the variable `var`.
///
/// # Errors
/// An entry without `=`, a name that is not an HTTP token or one the transport sets, or a
/// value with control characters, each named with `var`.
pub fn parse_headers(var: &str, list: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, entry) in list.split(',').enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = entry.split_once('=') else {
            bail!("{var}: entry {} ({entry:?}) is not key=value", i + 1);
        };
        let name = k.trim().to_ascii_lowercase();
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            bail!("{var}: entry {}: {k:?} is not a header name", i + 1);
        }
        if RESERVED_HEADERS.contains(&name.as_str()) {
            bail!("{var}: entry {}: {name} is set by the transport", i + 1);
        }
        let value = percent_decode(v.trim());
        if value.chars().any(|c| c.is_control()) {
            bail!(
                "{var}: entry {}: the value of {name} has control characters",
                i + 1
            );
        }
        out.push((name, value));
    }
    Ok(out)
}

/// The resource attributes: `OTEL_RESOURCE_ATTRIBUTES`, then the service, host and
/// downward-API ones (which win over the same keys given in the variable).
#[must_use]
pub fn resource_attributes(env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| {
        out.retain(|(key, _)| key != k);
        out.push((k.to_owned(), v));
    };
    if let Some(list) = env("OTEL_RESOURCE_ATTRIBUTES") {
        for kv in list.split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                let (k, v) = (percent_decode(k.trim()), percent_decode(v.trim()));
                if !k.is_empty() {
                    set(&k, v);
                }
            }
        }
    }
    let service = env("OTEL_SERVICE_NAME")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "palisade".to_owned());
    set("service.name", service);
    set("service.version", env!("CARGO_PKG_VERSION").to_owned());
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        set("host.name", h.trim().to_owned());
    }
    for (var, key) in [
        ("K8S_NODE_NAME", "k8s.node.name"),
        ("K8S_POD_NAME", "k8s.pod.name"),
        ("K8S_POD_NAMESPACE", "k8s.namespace.name"),
        ("K8S_POD_UID", "k8s.pod.uid"),
    ] {
        if let Some(v) = env(var).filter(|v| !v.is_empty()) {
            set(key, v);
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the exporter counted.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records exported (the collector answered success).
    pub exported: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Records in exports that failed (connection, timeout, an error status).
    pub failed: AtomicU64,
}

/// The exporter's counters as `palisade stats --json` and the metrics show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OtlpStats {
    /// Records exported.
    pub exported: u64,
    /// Records dropped because the queue was full.
    pub dropped: u64,
    /// Records in failed exports.
    pub failed: u64,
}

impl Counters {
    /// A snapshot.
    #[must_use]
    pub fn snapshot(&self) -> OtlpStats {
        OtlpStats {
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// One event as a log record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Unix time, nanoseconds.
    pub time_ns: u64,
    /// `palisade.firewall`, `palisade.dns`...
    pub event_name: String,
    /// 9 (INFO) for passes, 13 (WARN) for drops and blocks.
    pub severity: u8,
    /// The event's text line.
    pub body: String,
    /// The event's JSON fields, flattened (nested values as JSON text).
    pub attributes: Vec<(String, Attr)>,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A floating-point number.
    Double(f64),
}

impl Record {
    /// The record of an event, from its JSON and text forms.
    #[must_use]
    pub fn from_event(kind: &str, verdict: &str, json: &str, text: &str) -> Self {
        let mut attributes = Vec::new();
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(json) {
            for (k, v) in m {
                let a = match v {
                    serde_json::Value::Null => continue,
                    serde_json::Value::Bool(b) => Attr::Bool(b),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) => Attr::Int(i),
                        None => Attr::Double(n.as_f64().unwrap_or(0.0)),
                    },
                    serde_json::Value::String(s) => Attr::Str(s),
                    other => Attr::Str(other.to_string()),
                };
                attributes.push((format!("palisade.{k}"), a));
            }
        }
        let blocked = matches!(
            verdict,
            "drop" | "block" | "blocked" | "nxdomain" | "refused" | "sinkhole" | "deny"
        );
        Self {
            time_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            event_name: format!("palisade.{kind}"),
            severity: if blocked { 13 } else { 9 },
            body: text.to_owned(),
            attributes,
        }
    }
}

/// The daemon's handle: offers records to the queue.
#[derive(Debug, Clone)]
pub struct Exporter {
    tx: mpsc::Sender<Record>,
    /// What was exported, dropped and failed.
    pub counters: Arc<Counters>,
}

impl Exporter {
    /// Starts the sender task on the current tokio runtime.
    #[must_use]
    pub fn start(config: Config) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let counters = Arc::new(Counters::default());
        tokio::spawn(send_loop(config, rx, counters.clone()));
        Self { tx, counters }
    }

    /// Queues an event (its kind, verdict, JSON and text forms) as a record; see
    /// [`Exporter::offer`].
    pub fn offer_event(&self, kind: &str, verdict: &str, json: &str, text: &str) -> bool {
        self.offer(Record::from_event(kind, verdict, json, text))
    }

    /// Queues a record; when the queue is full it is dropped and counted. Never waits.
    pub fn offer(&self, r: Record) -> bool {
        if self.tx.try_send(r).is_ok() {
            true
        } else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

async fn send_loop(config: Config, mut rx: mpsc::Receiver<Record>, counters: Arc<Counters>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(r) = rx.recv().await {
        batch.push(r);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let body = encode_request(&config.resource, &batch);
        let n = batch.len() as u64;
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, export(&config, body)).await;
        match sent {
            Ok(Ok(())) => {
                counters.exported.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                counters.failed.fetch_add(n, Ordering::Relaxed);
                tracing::warn!("OTLP export of {n} record(s) failed: {e:#}");
            }
            Err(_) => {
                counters.failed.fetch_add(n, Ordering::Relaxed);
                tracing::warn!("OTLP export of {n} record(s) timed out");
            }
        }
        batch.clear();
    }
}

async fn export(config: &Config, body: Vec<u8>) -> Result<()> {
    match config.protocol {
        Protocol::HttpProtobuf => export_http(config, &body).await,
        Protocol::Grpc => export_grpc(config, body).await,
    }
}

async fn export_http(config: &Config, body: &[u8]) -> Result<()> {
    let mut s = TcpStream::connect(&config.authority)
        .await
        .with_context(|| format!("connecting to {}", config.authority))?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n",
        config.path,
        config.authority,
        body.len()
    );
    for (k, v) in &config.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await?;
    let status = reply
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_owned())
        .unwrap_or_default();
    match status.split(' ').nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        _ => bail!("the collector answered {status:?}"),
    }
}

async fn export_grpc(config: &Config, body: Vec<u8>) -> Result<()> {
    let tcp = TcpStream::connect(&config.authority)
        .await
        .with_context(|| format!("connecting to {}", config.authority))?;
    let (client, connection) = h2::client::handshake(tcp)
        .await
        .context("HTTP/2 handshake")?;
    let conn = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let mut client = client.ready().await?;
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{}", config.authority, config.path))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in &config.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = request.body(())?;
        let (response, mut stream) = client.send_request(request, false)?;
        let mut framed = Vec::with_capacity(body.len() + 5);
        framed.push(0); // not compressed
        framed.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
        framed.extend_from_slice(&body);
        stream.send_data(framed.into(), true)?;
        let response = response.await?;
        if response.status() != http::StatusCode::OK {
            bail!("the collector answered HTTP {}", response.status());
        }
        // The status is in the headers (trailers-only answer) or in the trailers.
        let mut status = grpc_status(response.headers());
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        if status.is_none() {
            status = body.trailers().await?.as_ref().and_then(grpc_status);
        }
        match status {
            Some((0, _)) => Ok(()),
            Some((code, msg)) => bail!("the collector answered grpc-status {code}: {msg}"),
            None => bail!("the collector's answer has no grpc-status"),
        }
    }
    .await;
    conn.abort();
    result
}

fn grpc_status(h: &http::HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let msg = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Some((code, msg))
}

// Protobuf writing: wire types 0 (varint), 1 (64-bit), 2 (length-delimited).

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

/// `AnyValue`.
fn any_value(a: &Attr) -> Vec<u8> {
    let mut out = Vec::new();
    match a {
        Attr::Str(s) => bytes_field(&mut out, 1, s.as_bytes()),
        Attr::Bool(b) => {
            tag(&mut out, 2, 0);
            varint(&mut out, u64::from(*b));
        }
        Attr::Int(i) => {
            tag(&mut out, 3, 0);
            // int64 is written as its two's complement.
            varint(&mut out, *i as u64);
        }
        Attr::Double(d) => {
            tag(&mut out, 4, 1);
            out.extend_from_slice(&d.to_le_bytes());
        }
    }
    out
}

/// `KeyValue`.
fn key_value(k: &str, v: &Attr) -> Vec<u8> {
    let mut out = Vec::new();
    bytes_field(&mut out, 1, k.as_bytes());
    bytes_field(&mut out, 2, &any_value(v));
    out
}

/// `LogRecord`.
fn log_record(r: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    fixed64(&mut out, 1, r.time_ns);
    tag(&mut out, 2, 0);
    varint(&mut out, u64::from(r.severity));
    bytes_field(
        &mut out,
        3,
        if r.severity >= 13 { b"WARN" } else { b"INFO" },
    );
    bytes_field(&mut out, 5, &any_value(&Attr::Str(r.body.clone())));
    for (k, v) in &r.attributes {
        bytes_field(&mut out, 6, &key_value(k, v));
    }
    fixed64(&mut out, 11, r.time_ns);
    bytes_field(&mut out, 12, r.event_name.as_bytes());
    out
}

/// `ExportLogsServiceRequest` holding one `ResourceLogs` with one `ScopeLogs`.
#[must_use]
pub fn encode_request(resource: &[(String, String)], records: &[Record]) -> Vec<u8> {
    let mut res = Vec::new();
    for (k, v) in resource {
        bytes_field(&mut res, 1, &key_value(k, &Attr::Str(v.clone())));
    }
    let mut scope = Vec::new();
    bytes_field(&mut scope, 1, b"palisade");
    bytes_field(&mut scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
    let mut scope_logs = Vec::new();
    bytes_field(&mut scope_logs, 1, &scope);
    for r in records {
        bytes_field(&mut scope_logs, 2, &log_record(r));
    }
    let mut resource_logs = Vec::new();
    bytes_field(&mut resource_logs, 1, &res);
    bytes_field(&mut resource_logs, 2, &scope_logs);
    let mut req = Vec::new();
    bytes_field(&mut req, 1, &resource_logs);
    req
}
