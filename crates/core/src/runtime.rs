//! `run`: every route at work until shutdown, with a progress line per route.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{RouteConfig, RuntimeConfig};
use crate::dlq::DeadLetterQueue;
use crate::error::{RouteError, RuntimeError};
use crate::observe::{Observer, RouteShared};
use crate::route::{create_consumer, watch_lag, LagSubject, RouteWorker};
use herald_kafka::{ensure_topics, KafkaProperties, TopicSpec};
use herald_sdk::sink::Sink;

/// A route with the sink built for it.
pub struct BoundRoute {
    /// The route's configuration.
    pub config: RouteConfig,
    /// Its sink, already built (and health-checked, if the caller wishes).
    pub sink: Box<dyn Sink>,
}

/// A change to the running routes, from a reload: the routes named in `stop` finish their
/// in-flight batch, commit and leave their groups, then those in `start` start (a changed route
/// is in both, under one name). The routes in neither are not touched: no rebalance for them.
pub struct RouteChanges {
    /// Routes to stop, by name.
    pub stop: Vec<String>,
    /// Routes to start once those are stopped.
    pub start: Vec<BoundRoute>,
    /// Told when the change is done, or why it could not be.
    pub done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Runs every route until `shutdown` completes, applying each [`RouteChanges`] that arrives on
/// `changes` meanwhile (a reload, or a restart of one route: stop it if it runs, start it).
///
/// A route that fails (a failure its sink does not retry: configuration, permissions, a table
/// dropped) stops alone: it shows `failed` in the observer, with its error and since when, and
/// the others run on. Deciding whether the process should stop then (every route failed, or
/// `--fail-fast`) is the caller's, from [`Observer::failures`].
///
/// On shutdown each route stops fetching, finishes its in-flight batch, commits its offsets,
/// closes its sink and leaves its consumer group; then `run` returns `Ok`. It returns an error
/// only when a route's task ended abnormally (a panic).
///
/// `observer` receives every route's metrics and state, for the admin API.
pub async fn run(
    kafka: &KafkaProperties,
    settings: &RuntimeConfig,
    routes: Vec<BoundRoute>,
    observer: Arc<Observer>,
    mut changes: tokio::sync::mpsc::Receiver<RouteChanges>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let mut running = Running {
        kafka,
        settings,
        observer: &observer,
        cancel: CancellationToken::new(),
        workers: JoinSet::new(),
        routes: BTreeMap::new(),
        watchers: None,
        first_error: None,
    };
    let count = routes.len();
    for route in routes {
        // A route that cannot start fails alone; the others start.
        running.start_or_fail(route, count).await;
    }
    info!(routes = running.routes.len(), "herald is running.");
    running.watch();

    tokio::pin!(shutdown);
    let mut changes_open = true;
    loop {
        if running.cancel.is_cancelled() && running.workers.is_empty() {
            break;
        }
        tokio::select! {
            _ = &mut shutdown, if !running.cancel.is_cancelled() => {
                info!("Shutting down: finishing in-flight batches and committing offsets.");
                running.cancel.cancel();
            }
            change = changes.recv(), if changes_open && !running.cancel.is_cancelled() => {
                match change {
                    Some(change) => {
                        let outcome = running.apply(change.stop, change.start).await;
                        let _ = change.done.send(outcome);
                    }
                    None => changes_open = false,
                }
            }
            Some(joined) = running.workers.join_next(), if !running.workers.is_empty() => {
                running.settle(joined);
            }
        }
    }
    running.cancel.cancel();
    if let Some((progress, lag, _)) = running.watchers.take() {
        progress.abort();
        lag.abort();
    }
    running.first_error.map_or(Ok(()), Err)
}

/// The routes at work, and what watches them.
struct Running<'a> {
    kafka: &'a KafkaProperties,
    settings: &'a RuntimeConfig,
    observer: &'a Observer,
    /// Stops everything: shutdown, or a route failed.
    cancel: CancellationToken,
    workers: JoinSet<(String, Result<(), RouteError>)>,
    /// Per running route: what stops it alone, its metrics and its lag subject.
    routes: BTreeMap<String, (CancellationToken, Arc<RouteShared>, LagSubject)>,
    /// The progress and lag tasks over the current routes, and what stops them.
    watchers: Option<(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>, CancellationToken)>,
    first_error: Option<RuntimeError>,
}

impl Running<'_> {
    /// Starts `route` (one of `count` routes sharing the prefetch budget).
    async fn start(&mut self, route: BoundRoute, count: usize) -> Result<(), RuntimeError> {
        let BoundRoute { config: route, sink } = route;
        let name = route.name.clone();
        let stats = self.observer.route(&name);
        let prefetch_kbytes = self.settings.prefetch_kbytes(count);
        let instance_id = self.settings.instance_id.as_deref();
        let worker = start_route(self.kafka, route, sink, Arc::clone(&stats), prefetch_kbytes, instance_id)
            .await
            .map_err(|source| RuntimeError::Route { route: name.clone(), source })?;
        let lag = LagSubject {
            consumer: Arc::downgrade(&worker.consumer),
            topic: worker.route.topics.first().cloned(),
            stats: Arc::clone(&stats),
        };
        let token = self.cancel.child_token();
        self.routes.insert(name.clone(), (token.clone(), stats, lag));
        self.workers.spawn(async move { (name, worker.run(token).await) });
        Ok(())
    }

    /// (Re)starts the progress and lag tasks over the current routes.
    fn watch(&mut self) {
        if let Some((progress, lag, stop)) = self.watchers.take() {
            stop.cancel();
            progress.abort();
            lag.abort();
        }
        let stop = self.cancel.child_token();
        let all_stats = self.routes.iter().map(|(name, (_, stats, _))| (name.clone(), Arc::clone(stats))).collect();
        let subjects = self.routes.values().map(|(_, _, lag)| lag.clone()).collect();
        let progress = tokio::spawn(report_progress(
            all_stats,
            self.settings.progress_interval,
            self.settings.idle_progress_interval,
            stop.clone(),
        ));
        let lag = tokio::spawn(watch_lag(subjects, self.settings.progress_interval, stop.clone()));
        self.watchers = Some((progress, lag, stop));
    }

    /// Starts `route`, or records it `failed` when it cannot start: the others run on.
    async fn start_or_fail(&mut self, route: BoundRoute, count: usize) -> Option<String> {
        let name = route.config.name.clone();
        self.observer.route(&name).starting();
        match self.start(route, count).await {
            Ok(()) => None,
            Err(failure) => {
                let reason = herald_sdk::error_chain(&failure).join(": ");
                error!(route = %name, error = %reason, "Route failed to start; the other routes run on.");
                self.observer.route(&name).stopped_on(reason.clone());
                Some(reason)
            }
        }
    }

    /// Records how a route's task ended. A failure stops that route alone: it shows `failed`
    /// (with the error and since when) until a restart or a reload starts it again.
    fn settle(&mut self, joined: Result<(String, Result<(), RouteError>), tokio::task::JoinError>) -> Option<String> {
        let name = match joined {
            Ok((route, Ok(()))) => {
                self.observer.route(&route).update(|state| state.status = "stopped");
                Some(route)
            }
            Ok((route, Err(source))) => {
                let reason = herald_sdk::error_chain(&source).join(": ");
                error!(route = %route, error = %reason, "Route failed; the other routes run on.");
                self.observer.route(&route).stopped_on(reason);
                Some(route)
            }
            Err(source) => {
                let failure = RuntimeError::Task { route: "?".into(), source };
                error!(error = %herald_sdk::error_chain(&failure).join(": "), "A route's task ended abnormally; stopping.");
                self.first_error.get_or_insert(failure);
                self.cancel.cancel();
                None
            }
        };
        if let Some(name) = &name {
            self.routes.remove(name);
        }
        name
    }

    /// Stops the routes named in `stop` (each finishes its batch, commits, leaves its group),
    /// then starts those in `start`; the others run on untouched.
    async fn apply(&mut self, stop: Vec<String>, start: Vec<BoundRoute>) -> Result<(), String> {
        let mut stopping: BTreeSet<String> = BTreeSet::new();
        let stopping_names = stop.clone();
        for name in stop {
            if let Some((token, _, _)) = self.routes.get(&name) {
                info!(route = %name, "Reload: stopping the route (in-flight batch, commit, leave the group).");
                token.cancel();
                stopping.insert(name);
            }
        }
        while !stopping.is_empty() {
            let Some(joined) = self.workers.join_next().await else { break };
            if let Some(name) = self.settle(joined) {
                stopping.remove(&name);
            }
            if self.cancel.is_cancelled() {
                return Err("herald is stopping".into());
            }
        }
        for name in stopping_names.iter().filter(|name| !start.iter().any(|route| &route.config.name == *name)) {
            // Removed from the config: no longer this process's to show or to be ready for.
            self.observer.forget_route(name);
        }
        let count = self.routes.len() + start.len();
        let mut refused = Vec::new();
        for route in start {
            let name = route.config.name.clone();
            info!(route = %name, "Starting the route.");
            if let Some(reason) = self.start_or_fail(route, count).await {
                refused.push(format!("route `{name}` failed to start: {reason}"));
            }
        }
        self.watch();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(refused.join("; "))
        }
    }
}

async fn start_route(
    kafka: &KafkaProperties,
    route: RouteConfig,
    sink: Box<dyn Sink>,
    stats: Arc<RouteShared>,
    prefetch_kbytes: usize,
    instance_id: Option<&str>,
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
    let consumer = create_consumer(kafka, &route, Arc::clone(&stats), prefetch_kbytes, instance_id)
        .map_err(RouteError::Consumer)?;
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

/// How long a route may wait for partitions before the progress task says why it may be.
const UNASSIGNED_WARNING: Duration = Duration::from_secs(15);

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
    let mut told_unassigned = vec![false; routes.len()];
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for ((name, stats), told) in routes.iter().zip(told_unassigned.iter_mut()) {
            let state = stats.state();
            let waiting = state.assigned.is_empty() && matches!(state.status, "starting" | "running");
            if waiting && !*told && start.elapsed() >= UNASSIGNED_WARNING {
                // The usual cause after a crash: the group waits for the dead member's session.
                warn!(
                    route = %name,
                    waited_s = start.elapsed().as_secs(),
                    "No partitions assigned yet: the consumer group is probably waiting for a previous member's \
                     session to end (up to `session.timeout.ms`, 45 s by default, after a crash). \
                     `[runtime] instance_id` (static membership) gives a restarted herald its partitions at once. \
                     (Or more processes share the group than its topics have partitions.)"
                );
                *told = true;
            }
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
