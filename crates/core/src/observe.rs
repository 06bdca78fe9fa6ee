//! What the runtime shows operators: Prometheus metrics and each route's live state, shared
//! between the route workers (which write it) and the admin API (which reads it and asks routes
//! to pause or resume).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use serde::Serialize;
use tokio::sync::watch;

/// Metrics and live state of every route and source of one process.
pub struct Observer {
    registry: Registry,
    consumed: IntCounterVec,
    delivered: IntCounterVec,
    skipped: IntCounterVec,
    dead_lettered: IntCounterVec,
    retried: IntCounterVec,
    isolated: IntCounterVec,
    replayed: IntCounterVec,
    write_seconds: HistogramVec,
    lag: IntGaugeVec,
    source_published: IntCounterVec,
    source_batches: IntCounterVec,
    source_backlog: IntGaugeVec,
    source_capture_rows: IntGaugeVec,
    source_retained_wal: IntGaugeVec,
    source_stuck: IntGaugeVec,
    route_failed: IntGaugeVec,
    source_failed: IntGaugeVec,
    reconcile_divergent: IntGaugeVec,
    board_evicted: IntCounter,
    sources: RwLock<BTreeMap<String, SourceMetrics>>,
    routes: RwLock<BTreeMap<String, Arc<RouteShared>>>,
}

impl Observer {
    /// The registry `/metrics` renders, for a part of herald outside the route runtime to
    /// register its own metrics in (the ingest listener).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A fresh observer with its metrics registered.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new_custom(Some("herald".into()), None)?;
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let consumed = counter("route_consumed_total", "Messages a route read from Kafka.", &["route"])?;
        let delivered = counter("route_delivered_total", "Events a route's sink accepted.", &["route"])?;
        let skipped = counter("route_skipped_total", "Events a route's filter passed over.", &["route"])?;
        let dead_lettered =
            counter("route_dead_lettered_total", "Messages a route sent to its dead-letter topic.", &["route"])?;
        let retried =
            counter("route_retried_total", "Sink writes a route retried after a transient failure.", &["route"])?;
        let isolated = counter(
            "route_isolated_total",
            "Records a route dead-lettered because they failed alone `retry.poison_after` times while the sink answered.",
            &["route"],
        )?;
        let replayed = counter(
            "route_replayed_total",
            "Events a route wrote again because its sink's destination lost them (a failover to a standby that had not received them).",
            &["route"],
        )?;
        let source_published = counter("source_published_total", "Events a source published to Kafka.", &["source"])?;
        let source_batches =
            counter("source_transactions_total", "Kafka transactions a source committed.", &["source"])?;
        let source_backlog = IntGaugeVec::new(
            Opts::new("source_backlog", "Captured changes a source has not published yet (its cursor lag)."),
            &["source"],
        )?;
        registry.register(Box::new(source_backlog.clone()))?;
        let source_capture_rows = IntGaugeVec::new(
            Opts::new(
                "source_capture_rows",
                "Rows a trigger-capture source's table holds in herald_changes (published ones are deleted).",
            ),
            &["source"],
        )?;
        registry.register(Box::new(source_capture_rows.clone()))?;
        let source_retained_wal = IntGaugeVec::new(
            Opts::new(
                "source_retained_wal_bytes",
                "WAL a WAL-capture source's replication slot holds back (from its restart LSN to the server's).",
            ),
            &["source"],
        )?;
        registry.register(Box::new(source_retained_wal.clone()))?;
        let source_stuck = IntGaugeVec::new(
            Opts::new(
                "source_stuck",
                "1 while a source retries after a failure (see /sources for the error and since when).",
            ),
            &["source"],
        )?;
        registry.register(Box::new(source_stuck.clone()))?;
        let route_failed = IntGaugeVec::new(
            Opts::new(
                "route_failed",
                "1 while a route has stopped on a failure that retrying will not heal (see /routes); the others run on.",
            ),
            &["route"],
        )?;
        registry.register(Box::new(route_failed.clone()))?;
        let source_failed = IntGaugeVec::new(
            Opts::new(
                "source_failed",
                "1 while a source has stopped on a failure that retrying will not heal (see /sources); the others run on.",
            ),
            &["source"],
        )?;
        registry.register(Box::new(source_failed.clone()))?;
        let reconcile_divergent = IntGaugeVec::new(
            Opts::new(
                "reconcile_divergent",
                "(source, stage) pairs on which a status table and its topic differed at the last periodic reconcile.",
            ),
            &["subject"],
        )?;
        registry.register(Box::new(reconcile_divergent.clone()))?;
        let board_evicted = IntCounter::new(
            "board_evicted_total",
            "Status board cells dropped, oldest first, to stay within [board] max_cells.",
        )?;
        registry.register(Box::new(board_evicted.clone()))?;
        let write_seconds = HistogramVec::new(
            HistogramOpts::new("route_write_seconds", "Time to write one batch to the sink, retries included.")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["route"],
        )?;
        registry.register(Box::new(write_seconds.clone()))?;
        let lag = IntGaugeVec::new(
            Opts::new("route_consumer_lag", "Messages between a route's position and the end of a partition."),
            &["route", "topic", "partition"],
        )?;
        registry.register(Box::new(lag.clone()))?;
        Ok(Arc::new(Self {
            registry,
            consumed,
            delivered,
            skipped,
            dead_lettered,
            retried,
            isolated,
            replayed,
            write_seconds,
            lag,
            source_published,
            source_batches,
            source_backlog,
            source_capture_rows,
            source_retained_wal,
            source_stuck,
            route_failed,
            source_failed,
            reconcile_divergent,
            board_evicted,
            sources: RwLock::new(BTreeMap::new()),
            routes: RwLock::new(BTreeMap::new()),
        }))
    }

    /// The count of status board cells evicted to stay within `[board] max_cells`.
    pub fn board_evicted(&self) -> IntCounter {
        self.board_evicted.clone()
    }

    /// The gauge of diverged pairs of reconcile subject `subject` (`source:<name>`, `route:<name>`).
    pub fn reconcile_divergent(&self, subject: &str) -> IntGauge {
        self.reconcile_divergent.with_label_values(&[subject])
    }

    /// The shared state of route `name`, created on first use.
    pub fn route(&self, name: &str) -> Arc<RouteShared> {
        if let Some(route) = self.routes.read().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Arc::clone(route);
        }
        let (paused, _) = watch::channel(false);
        let route = Arc::new(RouteShared {
            name: name.to_owned(),
            consumed: self.consumed.with_label_values(&[name]),
            delivered: self.delivered.with_label_values(&[name]),
            skipped: self.skipped.with_label_values(&[name]),
            dead_lettered: self.dead_lettered.with_label_values(&[name]),
            retries: self.retried.with_label_values(&[name]),
            isolated: self.isolated.with_label_values(&[name]),
            replayed: self.replayed.with_label_values(&[name]),
            write_seconds: self.write_seconds.with_label_values(&[name]),
            failed: self.route_failed.with_label_values(&[name]),
            lag_by_partition: self.lag.clone(),
            lag: AtomicI64::new(-1),
            kafka_up: AtomicBool::new(false),
            sink_failing: AtomicBool::new(false),
            skipped_in_a_row: AtomicU64::new(0),
            tap: crate::tap::Tap::default(),
            paused,
            state: Mutex::new(RouteState::default()),
        });
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(routes.entry(name.to_owned()).or_insert(route))
    }

    /// Forgets route `name` (removed from the config by a reload): it leaves `/routes`,
    /// readiness and its per-route metrics.
    pub fn forget_route(&self, name: &str) {
        if self.routes.write().unwrap_or_else(PoisonError::into_inner).remove(name).is_some() {
            for family in [
                &self.consumed,
                &self.delivered,
                &self.skipped,
                &self.dead_lettered,
                &self.retried,
                &self.isolated,
                &self.replayed,
            ] {
                let _ = family.remove_label_values(&[name]);
            }
            let _ = self.write_seconds.remove_label_values(&[name]);
            let _ = self.route_failed.remove_label_values(&[name]);
        }
    }

    /// Forgets source `name` (removed from the config by a reload).
    pub fn forget_source(&self, name: &str) {
        if self.sources.write().unwrap_or_else(PoisonError::into_inner).remove(name).is_some() {
            for family in [&self.source_published, &self.source_batches] {
                let _ = family.remove_label_values(&[name]);
            }
            for family in
                [&self.source_backlog, &self.source_capture_rows, &self.source_retained_wal, &self.source_stuck]
            {
                let _ = family.remove_label_values(&[name]);
            }
        }
    }

    /// The routes and sources that are `failed`, and how many routes and sources there are.
    pub fn failures(&self) -> (Vec<String>, usize) {
        let routes = self.routes();
        let sources = self.sources();
        let mut failed: Vec<String> = routes
            .iter()
            .filter(|route| route.state().status == "failed")
            .map(|route| format!("route {}: {}", route.name, route.state().last_error.unwrap_or_default()))
            .collect();
        failed.extend(
            sources
                .iter()
                .filter(|(_, source)| source.state().status == "failed")
                .map(|(name, source)| format!("source {name}: {}", source.state().last_error.unwrap_or_default())),
        );
        (failed, routes.len() + sources.len())
    }

    /// Every route's shared state, by name.
    pub fn routes(&self) -> Vec<Arc<RouteShared>> {
        self.routes.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// The metrics a source updates (registered on first use).
    pub fn source(&self, name: &str) -> SourceMetrics {
        let metrics = SourceMetrics {
            published: self.source_published.with_label_values(&[name]),
            transactions: self.source_batches.with_label_values(&[name]),
            backlog: self.source_backlog.with_label_values(&[name]),
            capture_rows: self.source_capture_rows.with_label_values(&[name]),
            retained_wal_bytes: self.source_retained_wal.with_label_values(&[name]),
            stuck: self.source_stuck.with_label_values(&[name]),
            failed: self.source_failed.with_label_values(&[name]),
            state: Arc::new(Mutex::new(SourceState { status: "starting", ..SourceState::default() })),
        };
        metrics.failed.set(0);
        self.sources.write().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned(), metrics.clone());
        metrics
    }

    /// Every source's metrics, by name.
    pub fn sources(&self) -> Vec<(String, SourceMetrics)> {
        self.sources
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, metrics)| (name.clone(), metrics.clone()))
            .collect()
    }

    /// All metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding gathered metric families into a Vec cannot fail: the text encoder only fails
        // on a failing writer or on families that the registry itself would have refused.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// `Ok` when every route reaches Kafka and its sink; otherwise what does not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for route in self.routes() {
            if !route.kafka_up.load(Ordering::Relaxed) {
                problems.push(format!("route {}: no Kafka broker reachable", route.name));
            }
            // A route of the config that is not running is not ready, whatever stopped it (a
            // route removed by a reload is forgotten, not stopped).
            let state = route.state();
            if route.sink_failing.load(Ordering::Relaxed) {
                // Why, as the sink last said (a database in recovery after a failover, …).
                let why = state.last_error.as_deref().map(|error| format!(": {error}")).unwrap_or_default();
                problems.push(format!("route {}: sink failing{why}", route.name));
            }
            match state.status {
                "failed" => problems.push(format!(
                    "route {}: failed since {}: {}",
                    route.name,
                    state
                        .failed_since
                        .map(|since| since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default(),
                    state.last_error.as_deref().unwrap_or("(no error recorded)")
                )),
                "stopped" => problems.push(format!("route {}: stopped", route.name)),
                _ => {}
            }
        }
        for (name, source) in self.sources() {
            let state = source.state();
            if let (Some(since), "failed") = (state.failed_since, state.status) {
                problems.push(format!(
                    "source {name}: failed since {}: {}",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    state.last_error.clone().unwrap_or_default()
                ));
                continue;
            }
            if let Some(since) = state.stuck_since {
                problems.push(format!(
                    "source {name}: retrying since {}: {}",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    state.last_error.unwrap_or_default()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// One source's metrics.
#[derive(Clone)]
pub struct SourceMetrics {
    /// Events published.
    pub published: IntCounter,
    /// Kafka transactions committed.
    pub transactions: IntCounter,
    /// Captured changes not yet published.
    pub backlog: IntGauge,
    /// Rows the source's table holds in `herald_changes` (trigger capture).
    pub capture_rows: IntGauge,
    /// WAL the source's replication slot holds back, in bytes (WAL capture).
    pub retained_wal_bytes: IntGauge,
    /// 1 while the source retries after a failure.
    pub stuck: IntGauge,
    /// 1 while the source has stopped on a failure.
    failed: IntGauge,
    state: Arc<Mutex<SourceState>>,
}

/// A source's state as the admin API shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceState {
    /// `starting`, `standby` (another instance publishes), `active`, `retrying`, or `failed`
    /// (stopped on a failure retrying will not heal; `POST /sources/{name}/restart` or a reload
    /// starts it again).
    pub status: &'static str,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Since when the source has been failing without publishing, while it is.
    pub stuck_since: Option<DateTime<Utc>>,
    /// When it stopped on a failure, while it is `failed`.
    pub failed_since: Option<DateTime<Utc>>,
}

impl SourceMetrics {
    /// The source's state now.
    pub fn state(&self) -> SourceState {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records the source's status (`standby`, `active`), leaving a failure in place.
    pub fn set_status(&self, status: &'static str) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).status = status;
    }

    /// Records that the source stopped on `error`, a failure retrying will not heal.
    pub fn stopped_on(&self, error: String) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.status = "failed";
        state.last_error = Some(error);
        state.failed_since = Some(Utc::now());
        self.failed.set(1);
        self.stuck.set(0);
    }

    /// Records a failure the source retries: stuck from now, unless it already was.
    pub fn failed(&self, error: String) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.status = "retrying";
        state.last_error = Some(error);
        state.stuck_since.get_or_insert_with(Utc::now);
        self.stuck.set(1);
    }

    /// Records progress (a batch published): no longer stuck.
    pub fn progressed(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.status = "active";
        if state.stuck_since.take().is_some() {
            self.stuck.set(0);
        }
    }

    /// Metrics registered nowhere, for a source run without an admin API.
    pub fn detached() -> Self {
        let counter = |name: &str| IntCounter::new(name, "unregistered").unwrap_or_else(|_| unreachable!("valid name"));
        Self {
            published: counter("published"),
            transactions: counter("transactions"),
            backlog: IntGauge::new("backlog", "unregistered").unwrap_or_else(|_| unreachable!("valid name")),
            capture_rows: IntGauge::new("capture_rows", "unregistered").unwrap_or_else(|_| unreachable!("valid name")),
            retained_wal_bytes: IntGauge::new("retained_wal_bytes", "unregistered")
                .unwrap_or_else(|_| unreachable!("valid name")),
            stuck: IntGauge::new("stuck", "unregistered").unwrap_or_else(|_| unreachable!("valid name")),
            failed: IntGauge::new("failed", "unregistered").unwrap_or_else(|_| unreachable!("valid name")),
            state: Arc::new(Mutex::new(SourceState { status: "starting", ..SourceState::default() })),
        }
    }
}

/// One route's metrics and state.
pub struct RouteShared {
    /// The route's name.
    pub name: String,
    /// Messages read from Kafka.
    pub consumed: IntCounter,
    /// Events the sink accepted.
    pub delivered: IntCounter,
    /// Events the filter passed over.
    pub skipped: IntCounter,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: IntCounter,
    /// Sink writes retried.
    pub retries: IntCounter,
    /// Records dead-lettered as poison: they failed alone `retry.poison_after` times while the
    /// sink answered.
    pub isolated: IntCounter,
    /// Events written again because the sink's destination lost them.
    pub replayed: IntCounter,
    /// Batch write latency.
    pub write_seconds: Histogram,
    /// 1 while the route is failed.
    failed: IntGauge,
    lag_by_partition: IntGaugeVec,
    /// Total consumer lag of the assigned partitions (-1: unknown).
    pub lag: AtomicI64,
    /// Whether librdkafka reports a broker up.
    pub kafka_up: AtomicBool,
    /// Whether the sink's last write failed and is being retried.
    pub sink_failing: AtomicBool,
    /// Events the filter passed over since it last let one through: a long run says the filter
    /// may name a value no event has.
    pub skipped_in_a_row: AtomicU64,
    /// Each message handled and its outcome, for whoever watches (`/routes/{name}/tap`).
    pub tap: crate::tap::Tap,
    paused: watch::Sender<bool>,
    state: Mutex<RouteState>,
}

/// A route's state as the admin API shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteState {
    /// `starting`, `running`, `retrying`, `paused`, `stopped` or `failed`.
    pub status: &'static str,
    /// Assigned partitions, as `topic[partition]`.
    pub assigned: Vec<String>,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When the last event was delivered.
    pub last_event_at: Option<DateTime<Utc>>,
    /// When it stopped on a failure, while it is `failed`.
    pub failed_since: Option<DateTime<Utc>>,
    /// Records dead-lettered as poison so far.
    pub isolated: u64,
    /// The last record dead-lettered as poison: `topic[partition]@offset: error`.
    pub last_isolated: Option<String>,
}

impl RouteShared {
    /// Asks the route to pause (true) or resume (false) consuming; it keeps its group membership.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// A receiver the worker watches for pause requests.
    pub fn pause_requests(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    /// The route's state now.
    pub fn state(&self) -> RouteState {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records that the route stopped on `error`, a failure retrying will not heal; the others
    /// run on.
    pub fn stopped_on(&self, error: String) {
        self.update(|state| {
            state.status = "failed";
            state.last_error = Some(error);
            state.failed_since = Some(Utc::now());
            state.assigned.clear();
        });
        self.failed.set(1);
    }

    /// Records that the route is starting (again).
    pub fn starting(&self) {
        self.update(|state| {
            state.status = "starting";
            state.failed_since = None;
        });
        self.failed.set(0);
    }

    /// Updates the state.
    pub fn update(&self, change: impl FnOnce(&mut RouteState)) {
        change(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Records one partition's lag.
    pub fn set_partition_lag(&self, topic: &str, partition: i32, lag: i64) {
        let gauge: IntGauge =
            self.lag_by_partition.with_label_values(&[self.name.as_str(), topic, &partition.to_string()]);
        gauge.set(lag);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_source_retrying_is_stuck_until_it_publishes_again() {
        let observer = Observer::new().unwrap();
        let source = observer.source("orders");
        assert_eq!(source.state().status, "starting");
        assert!(observer.readiness().is_ok());

        source.failed("delivering a message: Broker: Message size too large".into());
        source.failed("the same again".into());
        let state = source.state();
        assert_eq!((state.status, state.last_error.as_deref()), ("retrying", Some("the same again")));
        let since = state.stuck_since.unwrap();
        let problems = observer.readiness().unwrap_err();
        assert!(problems[0].starts_with("source orders: retrying since") && problems[0].contains("the same again"));
        assert!(observer.render().contains("herald_source_stuck{source=\"orders\"} 1"));
        assert_eq!(source.state().stuck_since, Some(since), "stuck since the first failure");

        source.progressed();
        assert_eq!(source.state().status, "active");
        assert!(source.state().stuck_since.is_none());
        assert!(observer.readiness().is_ok());
        assert!(observer.render().contains("herald_source_stuck{source=\"orders\"} 0"));
    }
}
