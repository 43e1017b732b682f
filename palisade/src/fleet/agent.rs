//! The daemon's side of `palisade run --kubernetes`: the policy it starts with and the
//! controller task it starts.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result, anyhow};
use tokio::sync::mpsc;

use super::controller::{self, ApplyRequest, Settings, Shared};
use crate::{
    cli::RunArgs,
    policy::{config, model::Policy},
};

/// The policy a daemon starts with: with `--kubernetes`, the last applied merged policy
/// when the host keeps one that still compiles, else what `load_policy` read.
#[must_use]
pub fn initial(args: &RunArgs, loaded: (Policy, String)) -> (Policy, String) {
    if !args.kubernetes {
        return loaded;
    }
    let Some(text) = controller::read_state(&args.applied_policy) else {
        return loaded;
    };
    let dir = base_dir(args);
    match config::parse_policy(&text, &args.applied_policy.display().to_string(), &dir) {
        Ok(p) => (
            p,
            format!(
                "{} (the last applied cluster policy)",
                args.applied_policy.display()
            ),
        ),
        Err(e) => {
            eprintln!(
                "palisade: the last applied cluster policy {} no longer compiles, starting from the base policy: {e}",
                args.applied_policy.display()
            );
            loaded
        }
    }
}

fn base_dir(args: &RunArgs) -> PathBuf {
    match args.config.as_deref().and_then(std::path::Path::parent) {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Starts the controller when `--kubernetes` is given. The receiver yields the merged
/// policies to apply; without `--kubernetes` it never yields.
///
/// # Errors
/// Without a node name, or when no cluster configuration is found.
pub async fn start(
    args: &RunArgs,
    running: &str,
) -> Result<(mpsc::Receiver<ApplyRequest>, Option<Arc<Shared>>)> {
    let (tx, rx) = mpsc::channel(1);
    if !args.kubernetes {
        return Ok((rx, None));
    }
    let node = args
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            anyhow!("--kubernetes needs the node's name: --node-name or K8S_NODE_NAME")
        })?;
    let client = kube::Client::try_default()
        .await
        .context("--kubernetes: finding the API server (service account or KUBECONFIG)")?;
    let settings = Settings {
        node,
        base: args.config.clone(),
        state_file: args.applied_policy.clone(),
        event_namespace: std::env::var("K8S_POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
    };
    let shared = Arc::new(Shared::default());
    // Started from the state file: merging the same policy again changes nothing.
    let from_state = running.starts_with(&args.applied_policy.display().to_string());
    let last = from_state
        .then(|| controller::read_state(&args.applied_policy))
        .flatten();
    tokio::spawn(controller::run(client, settings, tx, shared.clone(), last));
    Ok((rx, Some(shared)))
}

/// Parses a merged policy for the daemon (relative files are the base policy's).
///
/// # Errors
/// With every diagnostic.
pub fn parse(args: &RunArgs, text: &str) -> Result<Policy, String> {
    config::parse_policy(text, super::merge::MERGED_NAME, &base_dir(args))
        .map_err(|e| e.to_string())
}

/// A reload under `--kubernetes`: the controller merges the base policy file and the
/// cluster's objects again, so a reload never drops the overlays.
#[must_use]
pub fn resync(shared: &Shared, generation: u32) -> crate::api::proto::Changed {
    shared.resync.notify_one();
    let message = if shared.synced.load(std::sync::atomic::Ordering::Relaxed) {
        "the base policy and the cluster's PalisadePolicy objects are merged again"
    } else {
        "the cluster's lists have not synced yet: the running policy stays until they have"
    };
    crate::api::proto::Changed {
        message: message.to_owned(),
        generation,
    }
}

/// Starts the OTLP event export when an endpoint is configured (flags, else `OTEL_*`).
///
/// # Errors
/// When the endpoint or protocol is malformed.
pub fn otlp(args: &RunArgs) -> Result<Option<super::otlp::Exporter>> {
    let config = super::otlp::Config::from_env(
        args.otlp_endpoint.as_deref(),
        args.otlp_protocol.as_deref(),
        &|k| std::env::var(k).ok(),
    )?;
    Ok(config.map(|c| {
        eprintln!(
            "palisade: exporting events over OTLP ({}) to {}{}",
            match c.protocol {
                super::otlp::Protocol::Grpc => "grpc",
                super::otlp::Protocol::HttpProtobuf => "http/protobuf",
            },
            c.authority,
            c.path
        );
        super::otlp::Exporter::start(c)
    }))
}
