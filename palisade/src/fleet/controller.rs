//! The in-agent controller: watches the cluster's `PalisadePolicy` objects and this node's
//! labels, merges the selected objects over the base policy (see [`super::merge`]) and has
//! the daemon apply the result through its atomic reload.
//!
//! - Nothing is applied before the first lists of both the policies and the node have
//!   synced: a half-known cluster never replaces the running policy.
//! - Each applied policy is written to the state file (`--applied-policy`) after the daemon
//!   took it; a daemon started while the API server is unreachable enforces that file, not
//!   the bare base policy.
//! - An object that does not compile is left out and reported as a core/v1 Event on it
//!   (once per object generation and message); the others are still merged.
//! - When the API server goes away the watches retry with backoff; the running policy stays
//!   as it is, and a relist on return resyncs everything.
//! - Nothing is ever written into the policy objects.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use k8s_openapi::{
    api::core::v1::{Event, EventSource, Node, ObjectReference},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{info, warn};

use super::{
    crd::PalisadePolicy,
    merge::{self, Base},
};

/// How often the base policy file is read again (kubelet swaps a ConfigMap's files).
pub const BASE_POLL: Duration = Duration::from_secs(2);

/// Where the controller runs and what it reads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name (`K8S_NODE_NAME`, from the downward API).
    pub node: String,
    /// The base policy file; `None` for the built-in default policy.
    pub base: Option<PathBuf>,
    /// Where the last applied merged policy is kept.
    pub state_file: PathBuf,
    /// Namespace of the Events reporting invalid objects (the pod's, else `default`).
    pub event_namespace: String,
}

/// A merged policy for the daemon to apply; it answers with the new generation or why it
/// refused.
#[derive(Debug)]
pub struct ApplyRequest {
    /// The merged policy as TOML.
    pub text: String,
    /// What it was merged from, for logs and `palisade status`.
    pub source: String,
    /// The digest ([`crate::pod::digest`]) of the base policy file's text that went into
    /// the merge; `status` reports it, so `palisade ready --policy BASE` is true only once
    /// the base file now on disk is part of the policy in force.
    pub base_digest: Option<String>,
    /// The daemon's answer.
    pub reply: oneshot::Sender<Result<u32, String>>,
}

/// What the controller shares with the daemon and the metrics.
#[derive(Debug, Default)]
pub struct Shared {
    /// Both first lists have synced.
    pub synced: AtomicBool,
    /// The last request to the API server succeeded.
    pub connected: AtomicBool,
    /// Merged policies the daemon applied.
    pub applied: AtomicU64,
    /// Objects reported invalid (Events created).
    pub invalid: AtomicU64,
    /// Watch errors (outages, refused requests).
    pub watch_errors: AtomicU64,
    /// Wakes the controller to merge again (`palisade reload`, SIGHUP).
    pub resync: Notify,
}

/// The base policy's text and directory.
///
/// # Errors
/// When the file cannot be read.
pub fn read_base(path: Option<&Path>) -> Result<Base, String> {
    match path {
        None => Ok(Base {
            text: crate::policy::config::DEFAULT_POLICY.to_owned(),
            dir: PathBuf::from("."),
        }),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read the base policy {}: {e}", p.display()))?;
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            Ok(Base { text, dir })
        }
    }
}

/// The last applied merged policy kept on the host, if there is one.
#[must_use]
pub fn read_state(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Writes the state file so that a crash never leaves half a policy (temporary file, then
/// rename).
///
/// # Errors
/// When the directory cannot be created or written.
pub fn write_state(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The watched state of the cluster.
#[derive(Default)]
struct View {
    policies: BTreeMap<String, PalisadePolicy>,
    /// Objects received since the current (re)list began.
    relisting: Option<BTreeMap<String, PalisadePolicy>>,
    policies_synced: bool,
    labels: Option<BTreeMap<String, String>>,
    node_synced: bool,
}

/// Runs until the daemon goes away (its side of `apply` is dropped).
pub async fn run(
    client: Client,
    settings: Settings,
    apply: mpsc::Sender<ApplyRequest>,
    shared: Arc<Shared>,
    mut last_applied: Option<String>,
) {
    let policies: Api<PalisadePolicy> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let events: Api<Event> = Api::namespaced(client, &settings.event_namespace);
    let mut policy_stream = watcher(policies, watcher::Config::default())
        .default_backoff()
        .boxed();
    let node_fields = format!("metadata.name={}", settings.node);
    let mut node_stream = watcher(nodes, watcher::Config::default().fields(&node_fields))
        .default_backoff()
        .boxed();
    let mut view = View::default();
    let mut reported: BTreeSet<(String, Option<i64>, String)> = BTreeSet::new();
    // The base file digest of the last applied merge; none at start, so the first merge after
    // the lists synced is always applied (and readiness set) even when it equals the state
    // file the daemon started from.
    let mut last_base: Option<String> = None;
    let mut base_text: Option<String> = None;
    let mut poll = tokio::time::interval(BASE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            ev = policy_stream.next() => match ev {
                None => return,
                Some(Ok(ev)) => {
                    shared.connected.store(true, Ordering::Relaxed);
                    on_policy(&mut view, ev)
                }
                Some(Err(e)) => {
                    watch_error(&shared, "PalisadePolicy", &e);
                    false
                }
            },
            ev = node_stream.next() => match ev {
                None => return,
                Some(Ok(ev)) => {
                    shared.connected.store(true, Ordering::Relaxed);
                    on_node(&mut view, &settings.node, ev)
                }
                Some(Err(e)) => {
                    watch_error(&shared, "Node", &e);
                    false
                }
            },
            _ = poll.tick() => {
                let now = read_base(settings.base.as_deref()).ok().map(|b| b.text);
                let changed = now.is_some() && now != base_text;
                if changed {
                    base_text = now;
                }
                changed
            }
            () = shared.resync.notified() => true,
            () = apply.closed() => return,
        };
        let synced = view.policies_synced && view.node_synced;
        shared.synced.store(synced, Ordering::Relaxed);
        if !changed || !synced {
            continue;
        }
        let base = match read_base(settings.base.as_deref()) {
            Ok(b) => b,
            Err(e) => {
                warn!("{e}; the running policy is kept");
                continue;
            }
        };
        let labels = view.labels.clone().unwrap_or_default();
        let objects: Vec<PalisadePolicy> = view.policies.values().cloned().collect();
        let merged = match merge::merge(&base, &labels, &objects) {
            Ok(m) => m,
            Err(e) => {
                warn!("{e}; the running policy is kept");
                continue;
            }
        };
        for r in &merged.rejected {
            let obj = view.policies.get(&r.name);
            let key = (
                r.name.clone(),
                obj.and_then(|o| o.metadata.generation),
                r.error.clone(),
            );
            if reported.insert(key) {
                warn!(policy = %r.name, "PalisadePolicy left out: {}", r.error);
                if let Some(obj) = obj {
                    report(&events, &settings, obj, &r.error, &shared).await;
                }
            }
        }
        let base_digest = settings
            .base
            .as_ref()
            .map(|_| crate::pod::digest(base.text.as_bytes()));
        // The same merged policy from a changed base file (a comment, say) is applied again,
        // so readiness follows the file on disk.
        if last_applied.as_deref() == Some(merged.text.as_str()) && last_base == base_digest {
            continue;
        }
        let source = if merged.applied.is_empty() {
            "cluster: base policy".to_owned()
        } else {
            format!("cluster: base policy + {}", merged.applied.join(", "))
        };
        let (tx, rx) = oneshot::channel();
        let req = ApplyRequest {
            text: merged.text.clone(),
            source: source.clone(),
            base_digest: base_digest.clone(),
            reply: tx,
        };
        if apply.send(req).await.is_err() {
            return;
        }
        match rx.await {
            Ok(Ok(generation)) => {
                shared.applied.fetch_add(1, Ordering::Relaxed);
                info!(generation, %source, "cluster policy applied");
                if let Err(e) = write_state(&settings.state_file, &merged.text) {
                    warn!(
                        "the applied policy could not be kept in {}: {e}",
                        settings.state_file.display()
                    );
                }
                last_applied = Some(merged.text);
                last_base = base_digest;
            }
            Ok(Err(e)) => {
                warn!("the daemon refused the merged policy, keeping the running one: {e}")
            }
            Err(_) => return,
        }
    }
}

fn watch_error(shared: &Shared, what: &str, e: &watcher::Error) {
    shared.connected.store(false, Ordering::Relaxed);
    shared.watch_errors.fetch_add(1, Ordering::Relaxed);
    warn!("watching {what}: {e}; retrying, the running policy stays enforced");
}

/// Folds one watch event into the view; whether the policies changed.
fn on_policy(view: &mut View, ev: watcher::Event<PalisadePolicy>) -> bool {
    match ev {
        watcher::Event::Init => {
            view.relisting = Some(BTreeMap::new());
            false
        }
        watcher::Event::InitApply(p) => {
            view.relisting
                .get_or_insert_with(BTreeMap::new)
                .insert(p.name_any(), p);
            false
        }
        watcher::Event::InitDone => {
            view.policies = view.relisting.take().unwrap_or_default();
            view.policies_synced = true;
            true
        }
        watcher::Event::Apply(p) => {
            view.policies.insert(p.name_any(), p);
            true
        }
        watcher::Event::Delete(p) => {
            view.policies.remove(&p.name_any());
            true
        }
    }
}

/// Folds one watch event of this node into the view; whether its labels changed.
fn on_node(view: &mut View, name: &str, ev: watcher::Event<Node>) -> bool {
    let before = view.labels.clone();
    match ev {
        watcher::Event::Init => return false,
        watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
            if n.name_any() == name {
                view.labels = Some(n.labels().clone());
            }
        }
        watcher::Event::InitDone => {
            view.node_synced = true;
            return true;
        }
        watcher::Event::Delete(n) => {
            if n.name_any() == name {
                view.labels = None;
            }
        }
    }
    view.labels != before
}

/// Creates a core/v1 Event on the object saying why it was left out.
async fn report(
    events: &Api<Event>,
    settings: &Settings,
    obj: &PalisadePolicy,
    error: &str,
    shared: &Shared,
) {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let name = obj.name_any();
    let ev = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(settings.event_namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("palisade.io/v1alpha1".into()),
            kind: Some("PalisadePolicy".into()),
            name: Some(name.clone()),
            uid: obj.metadata.uid.clone(),
            resource_version: obj.metadata.resource_version.clone(),
            ..ObjectReference::default()
        },
        reason: Some("InvalidPolicy".into()),
        message: Some(format!(
            "left out of node {}'s policy, which keeps running without it: {error}",
            settings.node
        )),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some("palisade".into()),
            host: Some(settings.node.clone()),
        }),
        reporting_component: Some("palisade".into()),
        reporting_instance: Some(settings.node.clone()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Event::default()
    };
    match events.create(&PostParams::default(), &ev).await {
        Ok(_) => {
            shared.invalid.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => warn!(policy = %name, "could not create an Event: {e}"),
    }
}
