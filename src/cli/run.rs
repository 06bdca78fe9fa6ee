//! `herald run`: the bridge.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use herald_core::BoundRoute;
use tracing::{info, warn};

use crate::sinks;

/// Arguments of `herald run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file.
    #[arg(long, short, env = "HERALD_CONFIG", default_value = "config/herald.toml")]
    pub config: PathBuf,
}

pub async fn run(args: RunArgs) -> Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    if config.routes.is_empty() {
        bail!("{}: no [[route]] is configured, so there is nothing to run", args.config.display());
    }
    let mut routes = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let mut sink =
            sinks::build(route, sinks::Purpose::Run).await.with_context(|| format!("{}", args.config.display()))?;
        // A sink that is down at start is not fatal: writes are retried until it is back.
        if let Err(err) = sink.healthcheck().await {
            warn!(route = %route.name, error = %herald_core::dlq::error_chain(&err).join(": "), "Sink healthcheck failed; writes will be retried.");
        }
        routes.push(BoundRoute { config: route.clone(), sink });
    }
    info!(config = %args.config.display(), brokers = config.kafka.bootstrap_servers(), "Starting herald.");
    herald_core::run(&config, routes, shutdown_signal()).await.context("herald stopped on an error")?;
    info!("herald stopped cleanly.");
    Ok(ExitCode::SUCCESS)
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(err) => {
                warn!(error = %err, "Cannot listen for SIGTERM; only SIGINT stops herald cleanly.");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
