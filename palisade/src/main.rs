//! The `palisade` command.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};
use palisade::{
    cli::{Cli, Command, LogFormat},
    commands, daemon,
    policy::config,
};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn check(file: &std::path::Path) -> ExitCode {
    match config::load_policy(file) {
        Ok(p) => match palisade::firewall::compile::compile(&p)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                // The DNS part too: duplicate names that one map entry cannot hold are only
                // found when compiling. The hash key does not change what compiles.
                palisade::dns::compile::compile(
                    &p,
                    &palisade_common::dns::hash::HashKey::default(),
                    &palisade::dns::compile::Clock::now(),
                )
                .map(|_| c)
                .map_err(|e| e.to_string())
            }) {
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
    }
}

/// Exit status of `replay --expect-no-drops` when something would be dropped (1 is an
/// error: a bad capture or policy).
const EXIT_DROPS: u8 = 3;

fn replay(a: &palisade::cli::ReplayArgs) -> ExitCode {
    match palisade::replay::command(a) {
        Ok(report) => {
            if a.expect_no_drops && report.drops() > 0 {
                eprintln!(
                    "palisade: {} of {} packets would be dropped",
                    report.drops(),
                    report.totals.packets
                );
                return ExitCode::from(EXIT_DROPS);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn learn(a: &palisade::cli::LearnArgs, socket: &std::path::Path) -> ExitCode {
    match palisade::learn::command(a, socket) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Command::Run(a) => a.log_format,
        _ => LogFormat::Text,
    };
    init_logging(log_format);
    let socket = cli.socket;
    let result = match cli.command {
        Command::Check { file } => return check(&file),
        Command::DefaultPolicy => {
            print!("{}", config::DEFAULT_POLICY);
            return ExitCode::SUCCESS;
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "palisade",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Replay(args) => return replay(&args),
        Command::Learn(args) => return learn(&args, &socket),
        Command::Ids(cmd) => return palisade::ids::command(cmd, &socket),
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
            rt.block_on(daemon::run(args, socket))
        }
        Command::Status(j) => commands::status(&socket, j.json),
        Command::List { what, json } => commands::list(&socket, what, json.json),
        Command::Rule(c) => commands::rule(&socket, c),
        Command::Set(c) => commands::set(&socket, c),
        Command::Dns(c) => commands::dns(&socket, c),
        Command::Reload => commands::reload(&socket),
        Command::Events(a) => commands::events(&socket, a),
        Command::Stats(j) => commands::stats(&socket, j.json),
        Command::Ct(c) => commands::ct(&socket, c),
        Command::Shield(c) => commands::shield(&socket, c),
        Command::Lb(a) => commands::lb(&socket, a.command),
        Command::Leases(j) => commands::leases(&socket, j.json),
        Command::Unload { pin_dir } => commands::unload(&socket, &pin_dir),
        Command::Top(a) => palisade::top::command(&socket, &a),
        Command::Ready { policy } => return commands::ready(&socket, policy.as_deref()),
        Command::Cleanup { pin_dir } => commands::cleanup(&socket, &pin_dir),
        Command::Dlp(c) => palisade::dlp::command(c),
        Command::Crd { check, base } => palisade::fleet::command(&check, base.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::from(1)
        }
    }
}
