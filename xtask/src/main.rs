//! Palisade's developer commands, run as `cargo xtask <command>` from anywhere in the
//! workspace (the alias lives in `.cargo/config.toml`).

mod launch;
mod package;
mod setup;
mod suite;
mod sys;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Palisade's developer commands: set up the machine, test, lint, run, benchmark.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need, skipping whatever is already there.
    ///
    /// Checks, and installs only when missing: the nightly toolchain and its rust-src,
    /// bpf-linker built against nightly's LLVM, the Debian packages the tests use, and a
    /// bpffs mount at /sys/fs/bpf. A second run installs nothing and takes about a second.
    Setup,
    /// Run the whole test suite (as root: the kernel tests load BPF programs).
    ///
    /// Runs `setup` first, then `cargo test` over palisade-common, palisade and xtask, and
    /// prints one result line per test binary and a total. Exits non-zero on any failure.
    ///
    /// Arguments go to the test binaries, for example a name filter:
    ///   cargo xtask test -- firewall
    ///
    /// PALISADE_TEST_THREADS=N runs N tests at a time (default: one per CPU).
    #[command(verbatim_doc_comment)]
    Test {
        /// Arguments for the test binaries (libtest): filters, --nocapture, --ignored, ...
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "TEST_ARGS"
        )]
        args: Vec<String>,
    },
    /// Clippy (warnings are errors) over every host target, then `cargo fmt --check`.
    Lint,
    /// Run setup, build palisade in release mode and run `palisade run ARGS`.
    ///
    /// With no arguments Palisade enforces its built-in policy (allow everything, count)
    /// on the interface of the default route. Ctrl-C stops it; the policy stays enforced
    /// unless `--unload-on-exit` is given (`palisade unload` removes it later).
    ///
    /// Examples:
    ///   cargo xtask run
    ///   cargo xtask run -- --config policy.toml --iface eth0
    ///   cargo xtask run -- --iface lo --duration 10 --unload-on-exit
    #[command(verbatim_doc_comment)]
    Run {
        /// Arguments for `palisade run` (see `palisade run --help`).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Run setup, then the `palisade-bench` binary in release mode with ARGS.
    ///
    /// Example:
    ///   cargo xtask bench -- --quick
    #[command(verbatim_doc_comment)]
    Bench {
        /// Arguments for palisade-bench.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Build the container image from the release binary, with podman and local files only.
    ///
    /// Example:
    ///   cargo xtask image --tag localhost/palisade:0.1.0
    #[command(verbatim_doc_comment)]
    Image {
        /// The image's name and tag (the chart's default image).
        #[arg(long, default_value = "localhost/palisade:0.1.0")]
        tag: String,
    },
    /// Render deploy/kubernetes/ from charts/palisade (after copying deploy/crd/ into it).
    Manifests,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(setup::Scope::All),
        Command::Test { args } => suite::test(&args),
        Command::Lint => suite::lint(),
        Command::Run { args } => launch::run(&args),
        Command::Bench { args } => launch::bench(&args),
        Command::Image { tag } => package::image(&tag),
        Command::Manifests => package::manifests(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn arguments_after_the_subcommand_are_passed_on() {
        for argv in [
            &["xtask", "run", "--", "--iface", "lo", "--duration", "3"][..],
            &["xtask", "run", "--iface", "lo", "--duration", "3"][..],
        ] {
            let Command::Run { args } = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not parsed as run: {argv:?}");
            };
            assert_eq!(args, ["--iface", "lo", "--duration", "3"]);
        }
        let Command::Test { args } = Cli::try_parse_from(["xtask", "test"]).unwrap().command else {
            panic!("not parsed as test");
        };
        assert!(args.is_empty());
    }
}
