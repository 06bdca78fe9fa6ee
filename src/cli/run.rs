//! `herald run`: the bridge.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::registry;

/// Arguments of `herald run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file.
    #[arg(long, short, env = "HERALD_CONFIG", default_value = "config/herald.toml")]
    pub config: PathBuf,
    /// Exit 1 on the first route or source that fails, instead of running on with the others
    /// (for CI and one-shot jobs; a supervisor that restarts herald should leave it off).
    #[arg(long)]
    pub fail_fast: bool,
    /// How long to keep trying to reach Kafka at start (with backoff) before exiting 1.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub startup_timeout: std::time::Duration,
}

pub async fn run(args: RunArgs) -> Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    if let Some(why) = config.nothing_to_run(&args.config) {
        bail!(why);
    }
    let sources = registry::sources(&config.sources).with_context(|| format!("{}", args.config.display()))?;
    let observer = herald_core::Observer::new().context("cannot register metrics")?;
    // Every route and source is known to the observer from the start, so "every one failed" is
    // never decided over those not started yet.
    for route in &config.routes {
        observer.route(&route.name);
    }
    for (name, _) in &sources {
        observer.source(name);
    }
    let mut routes = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        match registry::bind(route).await {
            Ok(bound) => routes.push(bound),
            Err(err) => {
                // It fails alone: the other routes and the sources start.
                let reason = format!("{err:#}");
                error!(route = %route.name, error = %reason, "Route failed to start; the other routes run on.");
                observer.route(&route.name).stopped_on(reason);
            }
        }
    }
    info!(config = %args.config.display(), brokers = config.kafka.bootstrap_servers(), "Starting herald.");
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            stop.cancel();
        }
    });
    // Reloads: SIGHUP and `POST /reload` ask; one task re-reads the config and hands the route
    // changes to the runtime. SIGHUP is taken from here on (asked early, a reload waits).
    let (reload_requests, reload_queue) = tokio::sync::mpsc::channel(4);
    let (route_change_sender, route_changes) = tokio::sync::mpsc::channel(1);
    let (source_change_sender, source_changes) = tokio::sync::mpsc::channel(1);
    tokio::spawn(reload_on_hangup(reload_requests.clone(), stop.clone()));
    if !reach_kafka(&config.kafka, args.startup_timeout, &stop).await? {
        info!("Stopped before Kafka answered.");
        return Ok(ExitCode::SUCCESS);
    }
    let changes = super::reload::Changes { routes: route_change_sender, sources: source_change_sender };
    tokio::spawn(super::reload::serve(
        args.config.clone(),
        config.clone(),
        reload_queue,
        changes,
        Arc::clone(&observer),
    ));
    let failures = tokio::spawn(stop_when_failed(Arc::clone(&observer), args.fail_fast, stop.clone()));
    let board = (!config.board.topics.is_empty()).then(|| {
        Arc::new(
            herald_board::Board::bounded(config.board.max_cells, Some(observer.board_evicted()))
                .with_stage_order(config.board.stages.clone()),
        )
    });
    if let Some(board) = &board {
        let follow = herald_board::follow(
            Arc::clone(board),
            config.kafka.clone(),
            config.board.topics.clone(),
            config.board.since,
            stop.clone(),
        );
        tokio::spawn(follow);
    }
    if config.reconcile.every.is_some() {
        let subjects =
            crate::registry::reconcile_subjects(&config).with_context(|| format!("{}", args.config.display()))?;
        tokio::spawn(herald_reconcile::run_periodically(
            config.kafka.clone(),
            subjects,
            config.reconcile.clone(),
            Arc::clone(&observer),
            board.clone(),
            stop.clone(),
        ));
    }
    if let Some(listen) = config.admin.listen {
        let (_, serve) = herald_admin::bind(
            listen,
            &config.admin,
            Arc::clone(&observer),
            board,
            Some(reload_requests.clone()),
            stop.clone(),
        )
        .await
        .context("admin API")?;
        tokio::spawn(serve);
    }
    if let Some(listen) = config.ingest.listen {
        let (_, serve) =
            herald_ingest::bind(listen, &config.ingest, &config.kafka, Some(observer.registry()), stop.clone())
                .await
                .context("ingest listener")?;
        tokio::spawn(serve);
    }
    // Routes and sources run side by side; one that fails stops alone (see `stop_when_failed`).
    let run_routes = async {
        let result = herald_core::run(
            &config.kafka,
            &config.runtime,
            routes,
            Arc::clone(&observer),
            route_changes,
            stop.cancelled(),
        )
        .await
        .context("herald stopped on an error");
        stop.cancel();
        result
    };
    let run_sources = async {
        let result = herald_core::run_sources(&config.kafka, sources, &observer, source_changes, stop.clone())
            .await
            .map_err(anyhow::Error::from);
        if result.is_err() {
            stop.cancel();
        }
        result
    };
    let run_expectations = async {
        let result = herald_expect::run(&config.kafka, &config.expectations, &config.expect, stop.clone())
            .await
            .context("expectations stopped");
        if result.is_err() {
            stop.cancel();
        }
        result
    };
    let (routes_result, sources_result, expect_result) = tokio::join!(run_routes, run_sources, run_expectations);
    routes_result?;
    sources_result?;
    expect_result?;
    if let Ok(Some(failed)) = failures.await {
        bail!("herald stopped because {failed}");
    }
    info!("herald stopped cleanly.");
    Ok(ExitCode::SUCCESS)
}

/// Watches for failed routes and sources: with `fail_fast` the first one, otherwise all of them
/// failed, stops herald (`stop`) and is returned as why. While anything runs herald runs on: a
/// failed unit is shown (`/routes`, `/sources`, readiness, `herald_*_failed`) and restarted on
/// its own.
async fn stop_when_failed(
    observer: Arc<herald_core::Observer>,
    fail_fast: bool,
    stop: CancellationToken,
) -> Option<String> {
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            _ = ticker.tick() => {}
        }
        let (failed, units) = observer.failures();
        let why = if fail_fast && !failed.is_empty() {
            format!("a route or source failed and --fail-fast is set: {}", failed.join("; "))
        } else if units > 0 && failed.len() == units {
            format!("every route and source failed: {}", failed.join("; "))
        } else {
            continue;
        };
        error!("{why}");
        stop.cancel();
        return Some(why);
    }
}

/// Completes on the first SIGINT or SIGTERM.
/// Waits until a broker answers: one line when it does not, retried with backoff until
/// `timeout`, then an error naming Kafka. `Ok(false)`: stopped by a signal meanwhile.
async fn reach_kafka(
    kafka: &herald_kafka::KafkaProperties,
    timeout: std::time::Duration,
    stop: &CancellationToken,
) -> Result<bool> {
    let brokers = kafka.bootstrap_servers().to_owned();
    let deadline = std::time::Instant::now() + timeout;
    let (props, stopping, named) = (kafka.clone(), stop.clone(), brokers.clone());
    let reached = tokio::task::spawn_blocking(move || {
        herald_kafka::await_brokers(
            &props,
            deadline,
            || stopping.is_cancelled(),
            |attempt, err| {
                if attempt == 1 {
                    warn!(
                        brokers = %named,
                        error = %err,
                        "Kafka does not answer at {named}; retrying with backoff until --startup-timeout ({}).",
                        humantime::format_duration(timeout)
                    );
                }
            },
        )
    })
    .await?;
    match reached {
        Ok(reached) => Ok(reached),
        Err(err) => bail!(
            "Kafka at {brokers} did not answer within --startup-timeout {} (last: {err}); check `[kafka] bootstrap.servers` and that the brokers are up",
            humantime::format_duration(timeout)
        ),
    }
}

/// Each SIGHUP asks for a reload (its outcome is logged by the reload task); without this,
/// SIGHUP would end the process uncleanly.
async fn reload_on_hangup(requests: tokio::sync::mpsc::Sender<super::reload::ControlRequest>, stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(err) => {
                warn!(error = %err, "Cannot listen for SIGHUP; reload with `POST /reload` instead.");
                return;
            }
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                received = hangups.recv() => if received.is_none() { return },
            }
            info!("SIGHUP: reloading the config.");
            let (answer, outcome) = tokio::sync::oneshot::channel();
            if requests.send((herald_admin::Control::Reload, answer)).await.is_err() {
                return;
            }
            let _ = outcome.await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (requests, stop);
    }
}

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
