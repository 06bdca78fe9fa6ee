//! `run`: every route at work until shutdown, with a progress line per route.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{RouteConfig, RuntimeConfig};
use crate::dlq::DeadLetterQueue;
use crate::error::{RouteError, RuntimeError};
use crate::observe::{Observer, RouteShared};
use crate::route::{create_consumer, watch_lag, LagSubject, RouteWorker};
use crate::sink::Sink;
use herald_kafka::{ensure_topics, KafkaProperties, TopicSpec};

/// A route with the sink built for it.
pub struct BoundRoute {
    /// The route's configuration.
    pub config: RouteConfig,
    /// Its sink, already built (and health-checked, if the caller wishes).
    pub sink: Box<dyn Sink>,
}

/// Runs every route until `shutdown` completes or a route fails.
///
/// On shutdown each route stops fetching, finishes its in-flight batch, commits its offsets,
/// closes its sink and leaves its consumer group; then `run` returns `Ok`. When a route fails, the
/// others are shut down the same way and the route's error is returned.
///
/// `observer` receives every route's metrics and state, for the admin API.
pub async fn run(
    kafka: &KafkaProperties,
    settings: &RuntimeConfig,
    routes: Vec<BoundRoute>,
    observer: Arc<Observer>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let cancel = CancellationToken::new();
    let mut workers = JoinSet::new();
    let mut all_stats = Vec::new();
    let mut lag_subjects = Vec::new();
    let prefetch_kbytes = settings.prefetch_kbytes(routes.len());
    for BoundRoute { config: route, sink } in routes {
        let name = route.name.clone();
        let stats = observer.route(&name);
        let worker = match start_route(kafka, route, sink, Arc::clone(&stats), prefetch_kbytes).await {
            Ok(worker) => worker,
            Err(source) => {
                cancel.cancel();
                while workers.join_next().await.is_some() {}
                return Err(RuntimeError::Route { route: name, source });
            }
        };
        lag_subjects.push(LagSubject {
            consumer: Arc::downgrade(&worker.consumer),
            topic: worker.route.topics.first().cloned(),
            stats: Arc::clone(&stats),
        });
        all_stats.push((name.clone(), stats));
        let token = cancel.child_token();
        workers.spawn(async move { (name, worker.run(token).await) });
    }
    info!(routes = all_stats.len(), "herald is running.");
    let progress = tokio::spawn(report_progress(
        all_stats,
        settings.progress_interval,
        settings.idle_progress_interval,
        cancel.clone(),
    ));
    let lag = tokio::spawn(watch_lag(lag_subjects, settings.progress_interval, cancel.clone()));

    let mut first_error = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown, if !cancel.is_cancelled() => {
                info!("Shutting down: finishing in-flight batches and committing offsets.");
                cancel.cancel();
            }
            joined = workers.join_next() => {
                let Some(joined) = joined else { break };
                let failure = match joined {
                    Ok((route, Ok(()))) => {
                        observer.route(&route).update(|state| state.status = "stopped");
                        None
                    }
                    Ok((route, Err(source))) => {
                        let reason = herald_sdk::error_chain(&source).join(": ");
                        observer.route(&route).update(|state| {
                            state.status = "failed";
                            state.last_error = Some(reason);
                        });
                        Some(RuntimeError::Route { route, source })
                    }
                    Err(source) => Some(RuntimeError::Task { route: "?".into(), source }),
                };
                if let Some(failure) = failure {
                    error!(error = %herald_sdk::error_chain(&failure).join(": "), "Route failed; stopping the others.");
                    first_error.get_or_insert(failure);
                    cancel.cancel();
                }
            }
        }
    }
    cancel.cancel();
    progress.abort();
    lag.abort();
    first_error.map_or(Ok(()), Err)
}

async fn start_route(
    kafka: &KafkaProperties,
    route: RouteConfig,
    sink: Box<dyn Sink>,
    stats: Arc<RouteShared>,
    prefetch_kbytes: usize,
) -> Result<RouteWorker, RouteError> {
    let dead_letters = match &route.dead_letter_topic {
        Some(topic) => {
            let setup = |source| RouteError::DeadLetterSetup { topic: topic.clone(), source };
            // A dead letter is as large as the message it carries: let the topic take what the
            // dead-letter producer may send.
            ensure_topics(kafka, &[TopicSpec::dead_letters(topic.as_str())]).await.map_err(setup)?;
            Some(DeadLetterQueue::new(kafka, topic, &route.name).map_err(setup)?)
        }
        None => None,
    };
    let consumer = create_consumer(kafka, &route, Arc::clone(&stats), prefetch_kbytes).map_err(RouteError::Consumer)?;
    info!(route = %route.name, group = %route.group_id(), topics = ?route.topics, sink = %route.sink.kind, "Route started.");
    Ok(RouteWorker {
        max_events: route.batch.max_events.unwrap_or_else(|| sink.default_max_events()),
        route: Arc::new(route),
        consumer: Arc::new(consumer),
        sink,
        dead_letters,
        stats,
        held: Vec::new(),
        resumption: Default::default(),
    })
}

/// Every `interval`, logs one line per route where something moved (read, lag, retries, dead
/// letters): rates since its last line, totals and lag; an idle route's line only every
/// `idle_interval`, so an idle herald does not fill its log.
async fn report_progress(
    routes: Vec<(String, Arc<RouteShared>)>,
    interval: Duration,
    idle_interval: Duration,
    cancel: CancellationToken,
) {
    /// What a route's last line said, and when.
    struct Said {
        consumed: u64,
        lag: i64,
        troubles: u64,
        at: Instant,
    }
    let start = Instant::now();
    let mut said: Vec<Option<Said>> = routes.iter().map(|_| None).collect();
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for ((name, stats), last) in routes.iter().zip(said.iter_mut()) {
            let consumed = stats.consumed.get();
            let lag = stats.lag.load(Ordering::Relaxed);
            let troubles = stats.retries.get() + stats.dead_lettered.get();
            let moved = last
                .as_ref()
                .is_none_or(|last| last.consumed != consumed || last.lag != lag || last.troubles != troubles);
            let since = last.as_ref().map_or(start, |last| last.at);
            if !moved && since.elapsed() < idle_interval {
                continue;
            }
            let elapsed = since.elapsed().as_secs_f64().max(0.001);
            let rate = (consumed - last.as_ref().map_or(0, |last| last.consumed)) as f64 / elapsed;
            info!(
                route = %name,
                events_per_s = format_args!("{rate:.1}"),
                consumed,
                delivered = stats.delivered.get(),
                skipped = stats.skipped.get(),
                dead_lettered = stats.dead_lettered.get(),
                retries = stats.retries.get(),
                lag = %if lag < 0 { "unknown".to_string() } else { lag.to_string() },
                idle = !moved,
                "Progress."
            );
            *last = Some(Said { consumed, lag, troubles, at: Instant::now() });
        }
    }
}
