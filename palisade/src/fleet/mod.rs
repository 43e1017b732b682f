//! Running on a Kubernetes node: the `PalisadePolicy` custom resource, how the objects that
//! select a node merge over its base policy, and the controller that applies the result.
//! See `docs/design/fleet-policy.md`.

pub mod agent;
pub mod controller;
pub mod crd;
pub mod merge;
pub mod otlp;

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};

/// Where `palisade run --kubernetes` keeps the last applied merged policy (a hostPath in
/// the DaemonSet, so it outlives the pod).
pub const DEFAULT_STATE_FILE: &str = "/var/lib/palisade/applied.toml";

/// `palisade crd`: prints the CustomResourceDefinition, or with `check` compiles each
/// object over `base` and prints the merged policy.
///
/// # Errors
/// When an object cannot be read or does not compile; the message names its path.
pub fn command(check: &[PathBuf], base: Option<&Path>) -> Result<()> {
    if check.is_empty() {
        print!("{}", crd::crd_yaml().map_err(|e| anyhow!(e))?);
        return Ok(());
    }
    let base = controller::read_base(base).map_err(|e| anyhow!(e))?;
    let mut failed = 0;
    for file in check {
        let result = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|text| merge::parse_object(&text))
            .and_then(|p| merge::check_object(&base, &p));
        match result {
            Ok(m) => {
                println!(
                    "# {}: compiles ({} rules in all)",
                    file.display(),
                    m.policy.firewall.rules.len()
                );
                print!("{}", m.text);
            }
            Err(e) => {
                failed += 1;
                eprintln!("{}: {e}", file.display());
            }
        }
    }
    if failed > 0 {
        return Err(anyhow!("{failed} object(s) rejected"));
    }
    Ok(())
}
