//! A fake Kubernetes API server for the controller tests: list and watch (chunked JSON
//! lines, replayed from the requested resource version) for `palisadepolicies` and
//! `nodes` (with a `metadata.name` field selector), Event POSTs recorded, every other
//! request recorded as a write and refused; stopped and started again on the same port to
//! play an outage.
//!
//! Included with `#[path]` by the `fleet_*` tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

pub const POLICIES: &str = "/apis/palisade.io/v1alpha1/palisadepolicies";
pub const NODES: &str = "/api/v1/nodes";

/// A Node object with these labels.
pub fn node(labels: Value) -> Value {
    json!({"metadata": {"labels": labels}, "spec": {}})
}

/// A PalisadePolicy object with this spec.
pub fn policy(spec: Value) -> Value {
    json!({"metadata": {}, "spec": spec})
}

#[derive(Default)]
pub struct Cluster {
    pub rv: u64,
    pub policies: BTreeMap<String, Value>,
    pub nodes: BTreeMap<String, Value>,
    /// (resource version, collection path, event type, object)
    pub history: Vec<(u64, &'static str, &'static str, Value)>,
    pub events: Vec<Value>,
    /// Requests other than GETs and Event POSTs.
    pub writes: Vec<String>,
    /// While set, node lists wait (the controller must not apply before they sync).
    pub hold_nodes: bool,
}

impl Cluster {
    pub fn put(&mut self, path: &'static str, name: &str, mut obj: Value) {
        self.rv += 1;
        let map = if path == POLICIES {
            &mut self.policies
        } else {
            &mut self.nodes
        };
        let old = map.get(name);
        let generation = old.map_or(1, |o| o["metadata"]["generation"].as_i64().unwrap() + 1);
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        let (api, k) = if path == POLICIES {
            ("palisade.io/v1alpha1", "PalisadePolicy")
        } else {
            ("v1", "Node")
        };
        obj["apiVersion"] = json!(api);
        obj["kind"] = json!(k);
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("name".into(), json!(name));
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        meta.insert("generation".into(), json!(generation));
        meta.insert("uid".into(), json!(format!("uid-{name}")));
        map.insert(name.to_owned(), obj.clone());
        self.history.push((self.rv, path, kind, obj));
    }

    pub fn delete(&mut self, path: &'static str, name: &str) {
        self.rv += 1;
        let map = if path == POLICIES {
            &mut self.policies
        } else {
            &mut self.nodes
        };
        let mut obj = map.remove(name).unwrap();
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.history.push((self.rv, path, "DELETED", obj));
    }
}

pub struct FakeApi {
    pub addr: SocketAddr,
    pub cluster: Arc<Mutex<Cluster>>,
    /// Bumped on every change: wakes the watch streams.
    tick: watch::Sender<u64>,
    tasks: Option<JoinSet<()>>,
    /// Binds the listening socket (in the right network namespace).
    bind: Binder,
}

type Binder = Arc<dyn Fn(SocketAddr) -> std::net::TcpListener + Send + Sync>;

impl FakeApi {
    /// A server on 127.0.0.1.
    pub async fn new() -> Self {
        Self::with_bind(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|a| std::net::TcpListener::bind(a).unwrap()),
        )
    }

    /// A server whose socket `bind` creates (e.g. inside a network namespace), first at
    /// `addr` (port 0: any), later at the port it got.
    pub fn with_bind(addr: SocketAddr, bind: Binder) -> Self {
        let listener = bind(addr);
        let addr = listener.local_addr().unwrap();
        let mut api = Self {
            addr,
            cluster: Arc::default(),
            tick: watch::channel(0).0,
            tasks: None,
            bind,
        };
        api.serve(listener);
        api
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let mut tasks = JoinSet::new();
        let cluster = self.cluster.clone();
        let tick = self.tick.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(handle(s, cluster.clone(), tick.subscribe()));
            }
        });
        self.tasks = Some(tasks);
    }

    /// The API server goes away: the listener and every open watch are dropped.
    pub async fn stop(&mut self) {
        if let Some(mut t) = self.tasks.take() {
            t.shutdown().await;
        }
    }

    pub fn start(&mut self) {
        let listener = (self.bind)(self.addr);
        self.serve(listener);
    }

    pub fn change(&self, f: impl FnOnce(&mut Cluster)) {
        f(&mut self.cluster.lock().unwrap());
        self.tick.send_modify(|t| *t += 1);
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// A kubeconfig file that points at this server.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: agent\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(path, text).unwrap();
    }
}

fn query(target: &str) -> (String, BTreeMap<String, String>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let params = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%2C", ",")))
        .collect();
    (path.to_owned(), params)
}

fn selected(params: &BTreeMap<String, String>, obj: &Value) -> bool {
    match params
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
    {
        Some(n) => obj["metadata"]["name"] == n,
        None => true,
    }
}

async fn handle(mut s: TcpStream, cluster: Arc<Mutex<Cluster>>, mut tick: watch::Receiver<u64>) {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let target = first.next().unwrap_or("").to_owned();
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.trim().parse().unwrap_or(0));
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = &buf[head_end..head_end + length];
    let (path, params) = query(&target);
    let collection: &'static str = if path == POLICIES {
        POLICIES
    } else if path == NODES {
        NODES
    } else {
        ""
    };
    if method == "POST" && path.starts_with("/api/v1/namespaces/") && path.ends_with("/events") {
        let mut ev: Value = serde_json::from_slice(body).unwrap();
        ev["metadata"]["name"] = json!("ev-1");
        cluster.lock().unwrap().events.push(ev.clone());
        let _ = respond(&mut s, "201 Created", &ev).await;
        return;
    }
    if method != "GET" || collection.is_empty() {
        cluster
            .lock()
            .unwrap()
            .writes
            .push(format!("{method} {target}"));
        let _ = respond(&mut s, "404 Not Found", &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not served"})).await;
        return;
    }
    if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let mut sent: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        loop {
            let batch: Vec<String> = {
                let c = cluster.lock().unwrap();
                c.history
                    .iter()
                    .filter(|(rv, p, _, o)| *rv > sent && *p == collection && selected(&params, o))
                    .map(|(_, _, t, o)| json!({"type": t, "object": o}).to_string() + "\n")
                    .collect()
            };
            sent = cluster.lock().unwrap().rv;
            for line in batch {
                let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                if s.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            if tick.changed().await.is_err() {
                return;
            }
        }
    }
    if collection == NODES {
        while cluster.lock().unwrap().hold_nodes {
            if tick.changed().await.is_err() {
                return;
            }
        }
    }
    let list = {
        let c = cluster.lock().unwrap();
        let (items, kind, api): (Vec<Value>, _, _) = if collection == POLICIES {
            (
                c.policies.values().cloned().collect(),
                "PalisadePolicyList",
                "palisade.io/v1alpha1",
            )
        } else {
            (
                c.nodes
                    .values()
                    .filter(|o| selected(&params, o))
                    .cloned()
                    .collect(),
                "NodeList",
                "v1",
            )
        };
        json!({"apiVersion": api, "kind": kind, "metadata": {"resourceVersion": c.rv.to_string()}, "items": items})
    };
    let _ = respond(&mut s, "200 OK", &list).await;
}

async fn respond(s: &mut TcpStream, status: &str, body: &Value) -> std::io::Result<()> {
    let b = body.to_string();
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
        b.len()
    );
    s.write_all(msg.as_bytes()).await?;
    s.shutdown().await
}
