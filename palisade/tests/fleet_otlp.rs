//! OTLP export of the daemon's events: records reach a collector over gRPC and over
//! HTTP/protobuf, decoded there by the official `opentelemetry-proto` classes (the Python
//! collector in `support/otlp_collector.py`, from setup's `.tools/venv`), with the resource
//! attributes of the environment; a full queue drops and counts. No kernel needed. Run with
//! `cargo test --release -p palisade --test fleet_otlp`.

mod support;

use std::{
    collections::BTreeMap,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use palisade::fleet::otlp::{Config, Exporter, Protocol, Record};
use serde_json::Value;
use support::otlp::{Collector, attrs, records};

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| m.get(k).cloned()
}

const FIREWALL_JSON: &str = r#"{"kind":"firewall","timestamp_ns":5,"verdict":"drop","reason":"rule","rule":"edge.drop-telnet","generation":3,"ifindex":2,"src":"192.0.2.7","dst":"198.51.100.1","proto":6,"sport":40000,"dport":23,"len":60}"#;
const DNS_JSON: &str =
    r#"{"kind":"dns","verdict":"nxdomain","qname":"ads.example.com","qtype":"A"}"#;

fn send_two(config: Config) -> Exporter {
    let e = Exporter::start(config);
    assert!(e.offer(Record::from_event(
        "firewall",
        "drop",
        FIREWALL_JSON,
        "drop tcp 192.0.2.7:40000 -> 198.51.100.1:23 rule edge.drop-telnet",
    )));
    assert!(e.offer(Record::from_event(
        "dns",
        "nxdomain",
        DNS_JSON,
        "dns nxdomain ads.example.com A",
    )));
    e
}

fn check(reqs: &[Value], transport: &str) {
    assert!(reqs.iter().all(|r| r["transport"] == transport), "{reqs:?}");
    let rl = &reqs[0]["request"]["resourceLogs"][0];
    let res = attrs(&rl["resource"]["attributes"]);
    assert_eq!(res["service.name"], "palisade-edge");
    assert_eq!(res["k8s.node.name"], "node-a");
    assert_eq!(res["k8s.pod.name"], "palisade-x1");
    assert_eq!(res["k8s.namespace.name"], "palisade-system");
    assert_eq!(res["k8s.pod.uid"], "0b6c-11");
    assert_eq!(res["deployment.environment"], "lab one");
    // The downward API wins over the same key in OTEL_RESOURCE_ATTRIBUTES.
    assert_eq!(res["k8s.node.name"], "node-a");
    assert_eq!(rl["scopeLogs"][0]["scope"]["name"], "palisade");
    let recs: Vec<Value> = reqs.iter().flat_map(records).collect();
    let fw = recs
        .iter()
        .find(|r| r["eventName"] == "palisade.firewall")
        .unwrap();
    assert_eq!(fw["severityNumber"], "SEVERITY_NUMBER_WARN");
    assert_eq!(
        fw["body"]["stringValue"],
        "drop tcp 192.0.2.7:40000 -> 198.51.100.1:23 rule edge.drop-telnet"
    );
    let a = attrs(&fw["attributes"]);
    assert_eq!(a["palisade.rule"], "edge.drop-telnet");
    assert_eq!(a["palisade.src"], "192.0.2.7");
    assert_eq!(
        a["palisade.dport"], "23",
        "int64 values are strings in JSON"
    );
    assert_eq!(a["palisade.verdict"], "drop");
    let t: u64 = fw["timeUnixNano"].as_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(now - t < 60_000_000_000, "the record's time is now: {t}");
    let dns = recs
        .iter()
        .find(|r| r["eventName"] == "palisade.dns")
        .unwrap();
    assert_eq!(
        attrs(&dns["attributes"])["palisade.qname"],
        "ads.example.com"
    );
}

const K8S: [(&str, &str); 6] = [
    ("OTEL_SERVICE_NAME", "palisade-edge"),
    (
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment=lab%20one,k8s.node.name=wrong",
    ),
    ("K8S_NODE_NAME", "node-a"),
    ("K8S_POD_NAME", "palisade-x1"),
    ("K8S_POD_NAMESPACE", "palisade-system"),
    ("K8S_POD_UID", "0b6c-11"),
];

#[tokio::test]
async fn events_reach_a_collector_over_http_protobuf() {
    let c = Collector::start("http", None);
    let endpoint = format!("http://127.0.0.1:{}", c.http);
    let mut vars = K8S.to_vec();
    vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint));
    vars.push((
        "OTEL_EXPORTER_OTLP_HEADERS",
        "Authorization=Bearer%20lab-token, x-tenant=edge",
    ));
    let config = Config::from_env(None, None, &env(&vars)).unwrap().unwrap();
    assert_eq!(config.protocol, Protocol::HttpProtobuf);
    assert_eq!(config.path, "/v1/logs");
    let e = send_two(config);
    let reqs = tokio::task::spawn_blocking(move || {
        let r = c.received(2);
        drop(c);
        r
    })
    .await
    .unwrap();
    check(&reqs, "http");
    assert!(
        reqs.iter()
            .all(|r| r["authorization"] == "Bearer lab-token"),
        "the configured header reaches the collector: {reqs:?}"
    );
    assert_eq!(e.counters.exported.load(Ordering::Relaxed), 2);
    assert_eq!(e.counters.dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn events_reach_a_collector_over_grpc() {
    let c = Collector::start("grpc", None);
    let endpoint = format!("http://127.0.0.1:{}", c.grpc);
    let mut vars = K8S.to_vec();
    vars.push(("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", &endpoint));
    vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"));
    // The signal-specific variable wins over the general one.
    vars.push(("OTEL_EXPORTER_OTLP_HEADERS", "authorization=general"));
    vars.push((
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
        "authorization=Bearer%20grpc-token",
    ));
    let config = Config::from_env(None, None, &env(&vars)).unwrap().unwrap();
    assert_eq!(config.protocol, Protocol::Grpc);
    let e = send_two(config);
    let reqs = tokio::task::spawn_blocking(move || {
        let r = c.received(2);
        drop(c);
        r
    })
    .await
    .unwrap();
    check(&reqs, "grpc");
    assert!(
        reqs.iter()
            .all(|r| r["authorization"] == "Bearer grpc-token"),
        "the configured metadata reaches the collector: {reqs:?}"
    );
    // The export is counted once the collector's answer (grpc-status 0) is read.
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.counters.exported.load(Ordering::Relaxed) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(e.counters.exported.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    // A collector that accepts and never answers: the sender stays on its first batch.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut config = Config::from_env(Some(&endpoint), Some("http/protobuf"), &env(&[]))
        .unwrap()
        .unwrap();
    config.queue = 8;
    let e = Exporter::start(config);
    assert!(e.offer(Record::from_event("dns", "nxdomain", DNS_JSON, "first")));
    let (_held, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let taken = (0..20)
        .filter(|i| {
            e.offer(Record::from_event(
                "dns",
                "nxdomain",
                DNS_JSON,
                &format!("n{i}"),
            ))
        })
        .count();
    assert_eq!(taken, 8, "the queue holds 8");
    assert_eq!(e.counters.dropped.load(Ordering::Relaxed), 12);
    assert_eq!(e.counters.exported.load(Ordering::Relaxed), 0);
}

#[test]
fn configuration_follows_the_standard_variables() {
    assert!(Config::from_env(None, None, &env(&[])).unwrap().is_none());
    let c = Config::from_env(
        None,
        None,
        &env(&[
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "http://collector:9999/custom/logs",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:1"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (c.authority.as_str(), c.path.as_str()),
        ("collector:9999", "/custom/logs")
    );
    let c = Config::from_env(
        None,
        None,
        &env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(c.authority, "collector:4317");
    let c = Config::from_env(
        Some("http://x:1/base/"),
        Some("http/protobuf"),
        &env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (c.protocol, c.path.as_str()),
        (Protocol::HttpProtobuf, "/base/v1/logs")
    );
    assert!(Config::from_env(Some("https://x:1"), None, &env(&[])).is_err());
    // Headers: malformed entries and the transport's own headers are refused, naming the
    // variable; empty entries are skipped.
    let headers = |v: &str| {
        Config::from_env(
            Some("http://x:1"),
            None,
            &env(&[("OTEL_EXPORTER_OTLP_HEADERS", v)]),
        )
        .map(|c| c.unwrap().headers)
        .map_err(|e| e.to_string())
    };
    assert_eq!(
        headers("a=1,,B=x%2Cy").unwrap(),
        [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "x,y".to_string())
        ]
    );
    for bad in [
        "novalue",
        "bad name=1",
        "content-type=text/plain",
        "a=x%0Ay",
    ] {
        let e = headers(bad).unwrap_err();
        assert!(
            e.starts_with("OTEL_EXPORTER_OTLP_HEADERS: entry 1"),
            "{bad}: {e}"
        );
    }
    assert!(Config::from_env(Some("http://x:1"), Some("http/json"), &env(&[])).is_err());
}
