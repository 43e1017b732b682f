//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Palisade: an eBPF network guard for Linux.
///
/// Palisade loads an XDP firewall into the kernel and enforces a policy file on the
/// interfaces you name. With no policy file it enforces a built-in policy that allows
/// everything and only counts, so it can never cut you off.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enforce a policy until interrupted (SIGINT/SIGTERM detach cleanly; SIGHUP reloads).
    ///
    /// Examples:
    ///   palisade run                                 # built-in policy, default-route interface
    ///   palisade run --config /etc/palisade.toml --iface eth0 --iface eth1
    ///   palisade run --config policy.toml --json     # events as JSON lines
    Run(RunArgs),
    /// Validate a policy file; every error is reported with its line and column.
    ///
    /// Example:
    ///   palisade check /etc/palisade.toml
    Check {
        /// The policy file to validate.
        file: PathBuf,
    },
    /// Print the built-in default policy.
    DefaultPolicy,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Policy file (TOML). Without it the built-in default policy is used.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to guard; repeat for several. Default: the interface of the default route.
    #[arg(short, long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// Attach in generic (skb) mode even where native XDP is available.
    #[arg(long)]
    pub generic: bool,
    /// Print events as JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds (for scripted runs); 0 runs until interrupted.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub duration: u64,
}
