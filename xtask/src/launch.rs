//! `cargo xtask run` and `cargo xtask bench`: build in release mode and hand over.
//!
//! Both end in `exec`: `cargo run` in turn replaces itself with the program, so the program
//! keeps this process's id and receives Ctrl-C (SIGINT) and SIGTERM directly.

use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup::{self, Scope},
    sys,
};

/// Name of the benchmark binary in the `palisade` package.
const BENCH_BIN: &str = "palisade-bench";

/// Runs setup, then `palisade run ARGS`.
///
/// This is the "try it" command, so Ctrl-C removes the policy again (`--unload-on-exit`);
/// `palisade run` itself keeps enforcing after it exits, as a daemon should. Pass
/// `--keep` to get the daemon behaviour here too.
///
/// # Errors
/// Only when setup fails or `cargo` cannot be started; otherwise this does not return.
pub fn run(args: &[String]) -> Result<()> {
    setup::run(Scope::All)?;
    let mut cmd = cargo_run("palisade");
    cmd.arg("run");
    let keep = args.iter().any(|a| a == "--keep");
    if !keep && !args.iter().any(|a| a == "--unload-on-exit") {
        cmd.arg("--unload-on-exit");
    }
    cmd.args(args.iter().filter(|a| *a != "--keep"));
    exec(&mut cmd)
}

/// Runs setup, then the `palisade-bench` binary with `args`.
///
/// # Errors
/// When there is no such binary yet, setup fails or `cargo` cannot be started.
pub fn bench(args: &[String]) -> Result<()> {
    if !bench_exists() {
        bail!(
            "there is no benchmark yet: the `palisade` package has no `{BENCH_BIN}` binary \
             (expected at palisade/src/bin/{BENCH_BIN}.rs or declared in palisade/Cargo.toml)"
        );
    }
    setup::run(Scope::All)?;
    let mut cmd = cargo_run(BENCH_BIN);
    cmd.args(args);
    exec(&mut cmd)
}

/// `cargo run --release -p palisade --bin BIN --`, run from the caller's directory so that
/// relative paths in the arguments (`--config policy.toml`) mean what the caller meant.
fn cargo_run(bin: &str) -> Command {
    let mut cmd = sys::command("cargo");
    cmd.args([
        "run",
        "--release",
        "--package",
        "palisade",
        "--bin",
        bin,
        "--",
    ]);
    cmd
}

fn exec(cmd: &mut Command) -> Result<()> {
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot start `{}`", sys::show(cmd)))
}

fn bench_exists() -> bool {
    let pkg = sys::workspace_root().join("palisade");
    pkg.join(format!("src/bin/{BENCH_BIN}.rs")).is_file()
        || pkg.join(format!("src/bin/{BENCH_BIN}/main.rs")).is_file()
        || std::fs::read_to_string(pkg.join("Cargo.toml"))
            .is_ok_and(|m| m.contains(&format!("\"{BENCH_BIN}\"")))
}
