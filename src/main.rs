//! The `herald` command: glue between the command line and the herald crates.
//!
//! All behaviour lives in the libraries (`herald-core` and the sink crates); this binary parses
//! arguments, installs logging, builds sinks from the config and maps errors to exit codes.

mod cli;
mod config;
mod logs;
mod registry;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        // sqlx reports Postgres NOTICEs ("relation … already exists, skipping") at info.
        Command::Run(_) | Command::Check(_) | Command::Migrate(_) => "info,sqlx=warn",
        Command::Publish(_)
        | Command::Wait(_)
        | Command::Status(_)
        | Command::Reconcile(_)
        | Command::Offsets(_)
        | Command::Tap(_)
        | Command::Redrive(_) => "warn",
    };
    let filter = cli
        .log
        .as_deref()
        .map(EnvFilter::try_new)
        .unwrap_or_else(|| EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(default_level)));
    let filter = match filter {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("error: invalid --log / RUST_LOG filter: {err}");
            return ExitCode::from(2);
        }
    };
    // Colours only for a person at a terminal, not in files and pipes.
    let ansi = std::io::stderr().is_terminal();
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(logs::RedactedStderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(ansi).with_target(false).init(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(true).init(),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(cli::execute(cli.command));
    // A blocking Kafka call still waiting (a metadata request to a broker that is down) must
    // not hold the exit: `--timeout` is a hard bound.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", herald_config::redact(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}
