//! The `palisade` command.

use std::process::ExitCode;

use clap::Parser as _;
use palisade::{
    cli::{Cli, Command},
    daemon,
    policy::config,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check { file } => match config::load_policy(&file) {
            Ok(p) => match palisade::firewall::compile::compile(&p) {
                Ok(c) => {
                    println!(
                        "{}: ok: {} rules, {} sets ({} set entries), {} rule shapes, {} map entries",
                        file.display(),
                        p.firewall.rules.len(),
                        p.sets.len(),
                        p.sets.iter().map(|s| s.entries.len()).sum::<usize>(),
                        c.tuples.len(),
                        c.entries.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    ExitCode::from(1)
                }
            },
            Err(e) => {
                eprint!("{e}");
                if !e.to_string().ends_with('\n') {
                    eprintln!();
                }
                eprintln!("{}: {} error(s)", file.display(), e.errors.len());
                ExitCode::from(1)
            }
        },
        Command::DefaultPolicy => {
            print!("{}", config::DEFAULT_POLICY);
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("palisade: cannot start: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(daemon::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("palisade: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
