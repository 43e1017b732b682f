//! `cargo xtask test` and `cargo xtask lint`.

use std::{
    env,
    io::{self, BufRead as _, BufReader},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup::{self, Scope},
    sys,
};

/// The packages that build for the host; `palisade-ebpf` is built (and so checked) by
/// `palisade`'s build script.
const PACKAGES: &[&str] = &["palisade-common", "palisade", "xtask"];

/// Sets how many tests run at once, as libtest's `--test-threads`.
const THREADS_VAR: &str = "PALISADE_TEST_THREADS";

/// Runs setup, then every test of every host package; `libtest_args` go to the test binaries.
///
/// # Errors
/// When not root, when setup or the build fails, or when any test fails.
pub fn test(libtest_args: &[String]) -> Result<()> {
    if !sys::is_root() {
        bail!(
            "`cargo xtask test` must run as root: the kernel tests load BPF programs, attach \
             them to interfaces and create network namespaces"
        );
    }
    let threads = threads()?;
    setup::run(Scope::All)?;

    let mut libtest = Vec::new();
    if let Some(threads) = threads
        && !libtest_args.iter().any(|a| a.starts_with("--test-threads"))
    {
        libtest.push(format!("--test-threads={threads}"));
    }
    libtest.extend_from_slice(libtest_args);

    let mut cmd = sys::command("cargo");
    // Release: the kernel tests push millions of map entries and random policies through
    // userspace code that is tens of times slower unoptimised; the release build also shares
    // its dependencies with `cargo xtask run` and `cargo xtask bench`.
    cmd.args(["test", "--release", "--no-fail-fast"]);
    for p in PACKAGES {
        cmd.args(["--package", p]);
    }
    if !libtest.is_empty() {
        cmd.arg("--").args(&libtest);
    }
    println!("running: {}", sys::show(&cmd));
    let shown = sys::show(&cmd);
    // One pipe for both streams keeps cargo's `Running <binary>` lines (stderr) in order with
    // the results the test binaries print (stdout), so each result can be named.
    let (reader, writer) = io::pipe().context("cannot create a pipe")?;
    cmd.stdin(Stdio::null())
        .stdout(writer.try_clone().context("cannot clone a pipe")?)
        .stderr(writer);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    // The command holds the pipe's write ends; they must close for the reader to see the end.
    drop(cmd);

    let mut results = Vec::new();
    let mut total = Counts::default();
    let mut binary = String::from("?");
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(name) = test_binary(&line) {
            binary = name;
        } else if let Some(counts) = Counts::parse(&line) {
            total.add(counts);
            results.push((binary.clone(), counts));
        }
    }
    let status = child.wait().context("waiting for cargo test")?;

    if !results.is_empty() {
        println!();
        println!("test results, one line per test binary:");
        for (binary, c) in &results {
            println!(
                "  {:>5} passed {:>3} failed {:>3} ignored  {binary}",
                c.passed, c.failed, c.ignored
            );
        }
        println!(
            "summary: {} passed, {} failed, {} skipped",
            total.passed, total.failed, total.ignored
        );
    }
    if status.success() {
        Ok(())
    } else if results.is_empty() {
        bail!("cargo test failed before any test ran ({status})")
    } else {
        bail!("the test suite failed ({status}); see the failures above")
    }
}

/// `PALISADE_TEST_THREADS`, when set.
fn threads() -> Result<Option<usize>> {
    match env::var(THREADS_VAR) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => match v.trim().parse() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => bail!("{THREADS_VAR} must be a positive integer, not {v:?}"),
        },
        Err(_) => Ok(None),
    }
}

/// Names the test binary that cargo announces on `line`, if it announces one:
/// `Running unittests src/lib.rs (target/debug/deps/palisade-0123abcd)` gives
/// `palisade: unittests src/lib.rs`, and `Doc-tests palisade_common` gives
/// `palisade_common: doc-tests`.
fn test_binary(line: &str) -> Option<String> {
    let line = line.trim();
    if let Some(krate) = line.strip_prefix("Doc-tests ") {
        return Some(format!("{}: doc-tests", krate.trim()));
    }
    let rest = line.strip_prefix("Running ")?;
    let (what, path) = rest.split_once(" (")?;
    let file = path.trim_end_matches(')').rsplit('/').next()?;
    // Cargo names test executables `<crate>-<16 hex digits>`.
    let krate = file.rsplit_once('-').map_or(file, |(k, _)| k);
    Some(format!("{krate}: {what}"))
}

/// The counts on one `test result:` line of libtest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Counts {
    /// Parses `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`.
    fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let (_, counts) = rest.split_once(". ")?;
        let mut out = Self::default();
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse() else { continue };
            match what {
                "passed" => out.passed = n,
                "failed" => out.failed = n,
                "ignored" => out.ignored = n,
                _ => {}
            }
        }
        Some(out)
    }

    fn add(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// Clippy with warnings as errors over every host target, then rustfmt's check.
///
/// # Errors
/// When either finds a problem.
pub fn lint() -> Result<()> {
    // Clippy builds `palisade`, whose build script compiles the kernel programs.
    setup::run(Scope::Build)?;
    let mut clippy = sys::command("cargo");
    clippy.args(["clippy", "--all-targets"]);
    for p in PACKAGES {
        clippy.args(["--package", p]);
    }
    clippy.args(["--", "-D", "warnings"]);
    println!("running: {}", sys::show(&clippy));
    let clippy_result = sys::run(&mut clippy);

    let mut fmt = sys::command("cargo");
    fmt.args(["fmt", "--all", "--check"]);
    println!("running: {}", sys::show(&fmt));
    let fmt_result = sys::run(&mut fmt);

    match (clippy_result, fmt_result) {
        (Ok(()), Ok(())) => {
            println!("lint: clippy and rustfmt are clean");
            Ok(())
        }
        (Err(e), Ok(())) => Err(e.context("clippy found problems")),
        (Ok(()), Err(e)) => Err(e.context("rustfmt would change files (run `cargo fmt --all`)")),
        (Err(_), Err(_)) => bail!("clippy found problems and rustfmt would change files"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_counted() {
        let line = "test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; \
                    finished in 0.51s";
        assert_eq!(
            Counts::parse(line),
            Some(Counts {
                passed: 12,
                failed: 0,
                ignored: 3
            })
        );
        let failed = "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered \
                      out; finished in 0.01s";
        assert_eq!(
            Counts::parse(failed),
            Some(Counts {
                passed: 1,
                failed: 2,
                ignored: 0
            })
        );
    }

    #[test]
    fn test_binaries_are_named_from_cargo_announcements() {
        assert_eq!(
            test_binary(
                "     Running unittests src/lib.rs (target/debug/deps/palisade_common-0d3f5a1b2c4e6f70)"
            )
            .as_deref(),
            Some("palisade_common: unittests src/lib.rs")
        );
        assert_eq!(
            test_binary("     Running tests/firewall_smoke.rs (target/debug/deps/firewall_smoke-1a2b3c4d5e6f7a8b)")
                .as_deref(),
            Some("firewall_smoke: tests/firewall_smoke.rs")
        );
        assert_eq!(
            test_binary("   Doc-tests palisade").as_deref(),
            Some("palisade: doc-tests")
        );
        assert_eq!(test_binary("running 3 tests"), None);
    }

    #[test]
    fn other_lines_are_not_results() {
        assert_eq!(Counts::parse("test firewall::drops ... ok"), None);
        assert_eq!(Counts::parse("running 3 tests"), None);
    }

    #[test]
    fn counts_add_up() {
        let mut total = Counts::default();
        total.add(Counts {
            passed: 2,
            failed: 1,
            ignored: 0,
        });
        total.add(Counts {
            passed: 3,
            failed: 0,
            ignored: 4,
        });
        assert_eq!(
            total,
            Counts {
                passed: 5,
                failed: 1,
                ignored: 4
            }
        );
    }
}
