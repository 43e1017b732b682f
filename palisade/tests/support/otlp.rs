//! An OTLP collector for the tests: `otlp_collector.py` (setup's `.tools/venv`), which
//! decodes what it receives with the official `opentelemetry-proto` classes and writes one
//! JSON request per line.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// A running collector; stopped and its output removed when dropped.
pub struct Collector {
    child: Child,
    out: PathBuf,
    /// Its gRPC port.
    pub grpc: u16,
    /// Its HTTP/protobuf port.
    pub http: u16,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

impl Collector {
    /// Starts a collector on 127.0.0.1, in network namespace `netns` when given (entered
    /// with `nsenter`, as the daemon under test is).
    pub fn start(tag: &str, netns: Option<&str>) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("../.tools/venv/bin/python3");
        let out =
            std::env::temp_dir().join(format!("palisade-otlp-{tag}-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&out);
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}")).arg(&python);
                c
            }
            None => Command::new(&python),
        };
        let mut child = cmd
            .arg(root.join("tests/support/otlp_collector.py"))
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask setup`)", python.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Vec<u16> = line
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(ports.len(), 2, "collector said {line:?}");
        Self {
            child,
            out,
            grpc: ports[0],
            http: ports[1],
        }
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits (20 s at most) for exactly `n` log records; returns the requests.
    pub fn received(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reqs = self.requests();
            let count: usize = reqs.iter().map(|r| records(r).len()).sum();
            if count >= n || Instant::now() > deadline {
                assert_eq!(count, n, "log records received: {reqs:?}");
                return reqs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The log records of one request.
pub fn records(req: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for rl in req["request"]["resourceLogs"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
            out.extend(sl["logRecords"].as_array().into_iter().flatten().cloned());
        }
    }
    out
}

/// Key → value of an OTLP attribute list (`{"key", "value": {"stringValue"...}}`).
pub fn attrs(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let v = kv["value"]
                .as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()
                .clone();
            (kv["key"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}
