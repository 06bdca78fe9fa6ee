//! The source at work: standby until it holds the lock, then LISTEN, catch up, publish.

use std::time::Duration;

use herald_core::config::KafkaProperties;
use herald_core::dlq::headers;
use herald_core::observe::SourceMetrics;
use herald_core::sink::ORIGIN_HEADER;
use herald_core::StageEvent;
use herald_pg::Ddl;
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::capture::{self, Change, Cursor};
use crate::config::{Plan, PostgresSourceConfig};
use crate::error::SourceError;
use crate::prune::Pruner;
use crate::publisher::{Outgoing, Publisher};

/// The `pg_notify` channel the capture trigger signals.
const CHANNEL: &str = "herald_changes";
/// How often a standby tries to take the lock.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How soon to look again when an open transaction holds changes back.
const HELD_BACK_POLL: Duration = Duration::from_millis(20);

impl PostgresSourceConfig {
    /// Options for connections named `herald/<source name>`.
    fn connect_options(&self, name: &str) -> Result<PgConnectOptions, SourceError> {
        Ok(herald_pg::connect_options(&self.url, name)?)
    }

    /// Installs the change capture (herald's tables and function, the greenfield table when
    /// it is the one watched, the trigger); idempotent, and a no-op (no DDL, no lock) when the
    /// capture is installed and current. `herald migrate` calls it; `herald run` calls it only
    /// for a table not yet captured.
    pub async fn migrate(&self, name: &str) -> Result<(), SourceError> {
        let plan = self.plan()?;
        let mut conn = PgConnection::connect_with(&self.connect_options(name)?)
            .await
            .map_err(SourceError::postgres("connecting"))?;
        let result = ensure_capture(&mut conn, &plan).await;
        let _ = conn.close().await;
        result.map(drop)
    }

    /// Forgets source `name`: removes its clean-up progress, so captured changes of its table
    /// are no longer kept for it. Returns whether it had any.
    pub async fn drop_source(&self, name: &str) -> Result<bool, SourceError> {
        let plan = self.plan()?;
        let mut conn = PgConnection::connect_with(&self.connect_options(name)?)
            .await
            .map_err(SourceError::postgres("connecting"))?;
        let result = capture::forget(&mut conn, &plan.schema, name).await;
        let _ = conn.close().await;
        result
    }

    /// Connects and checks the table and its mapped columns, changing nothing.
    pub async fn check(&self, name: &str) -> Result<(), SourceError> {
        let plan = self.plan()?;
        let mut conn = PgConnection::connect_with(&self.connect_options(name)?)
            .await
            .map_err(SourceError::postgres("connecting"))?;
        let resolved = capture::resolve(&mut conn, &plan.table).await?;
        let wanted: Vec<String> =
            plan.columns.values().cloned().chain(plan.skip_when.iter().map(|s| s.column.clone())).collect();
        let missing = capture::missing_columns(&mut conn, &resolved, wanted.iter()).await?;
        if !missing.is_empty() {
            return Err(SourceError::MissingColumns { table: resolved, missing });
        }
        Ok(())
    }

    /// Runs the source named `name` until `cancel`: standby while another instance holds its
    /// lock, active otherwise. Transient failures (Postgres or Kafka down, fenced) send it back
    /// to standby and it tries again; configuration errors end it.
    pub async fn run(
        &self,
        name: &str,
        kafka: &KafkaProperties,
        metrics: SourceMetrics,
        cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        let plan = self.plan()?;
        while !cancel.is_cancelled() {
            match self.run_once(name, &plan, kafka, &metrics, &cancel).await {
                Ok(()) => {}
                Err(err) if err.is_transient() => {
                    warn!(source = name, error = %herald_core::dlq::error_chain(&err).join(": "), "Source stepped down; retrying.");
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(STANDBY_POLL) => {}
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    async fn run_once(
        &self,
        name: &str,
        plan: &Plan,
        kafka: &KafkaProperties,
        metrics: &SourceMetrics,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        // The lock lives as long as this connection: if the process dies, Postgres drops the
        // connection and the lock with it, and a standby takes over.
        let mut lock = PgConnection::connect_with(&self.connect_options(name)?)
            .await
            .map_err(SourceError::postgres("connecting"))?;
        let lock_key = format!("herald.source.{name}");
        let mut announced = false;
        loop {
            let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
                .bind(&lock_key)
                .fetch_one(&mut lock)
                .await
                .map_err(SourceError::postgres("taking the source lock"))?;
            if acquired {
                break;
            }
            if !announced {
                info!(source = name, "Another instance publishes this source; standing by.");
                announced = true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(STANDBY_POLL) => {}
            }
        }

        let mut conn = PgConnection::connect_with(&self.connect_options(name)?)
            .await
            .map_err(SourceError::postgres("connecting"))?;
        let table = ensure_capture(&mut conn, plan).await?;
        let dead_letter_topic = self.dead_letter_topic.clone().unwrap_or_else(|| format!("herald.dlq.{name}"));
        let publisher =
            Publisher::start(kafka, name, vec![self.topic.clone(), dead_letter_topic.clone()], &self.offsets_topic)
                .await?;
        let mut cursor = publisher.committed_cursor(kafka).await?.unwrap_or_default();
        info!(source = name, table = %table, topic = %self.topic, txid = cursor.txid, change = cursor.id, "Source active.");
        // Deletes what has been published, on a connection and task of its own; it stops with
        // this activation (the guard cancels it on every way out).
        let (published, published_rx) = watch::channel(cursor);
        let pruner_stop = cancel.child_token();
        let _stop_pruner = pruner_stop.clone().drop_guard();
        tokio::spawn(
            Pruner {
                name: name.to_owned(),
                options: self.connect_options(name)?,
                schema: plan.schema.clone(),
                table: table.clone(),
                max_rows: self.max_capture_rows,
                metrics: metrics.clone(),
            }
            .run(published_rx, pruner_stop),
        );

        let mut listener = PgListener::connect_with(&sqlx::PgPool::connect_lazy_with(self.connect_options(name)?))
            .await
            .map_err(SourceError::postgres("connecting the listener"))?;
        listener.listen(CHANNEL).await.map_err(SourceError::postgres("listening"))?;
        let worker = Worker {
            name,
            plan,
            config: self,
            table: &table,
            dead_letter_topic: &dead_letter_topic,
            publisher,
            metrics,
            published,
        };

        loop {
            let held_back = worker.catch_up(&mut conn, &mut cursor).await?;
            let wait = if held_back { HELD_BACK_POLL } else { self.poll_interval };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                notification = listener.try_recv() => match notification {
                    Ok(Some(_)) => {}
                    // The listener lost its connection (and reconnects on the next call):
                    // notifications sent meanwhile are gone, and the catch-up finds their rows.
                    Ok(None) => warn!(source = name, "Notification connection lost; catching up."),
                    Err(err) => return Err(SourceError::postgres("receiving notifications")(err)),
                },
                _ = tokio::time::sleep(wait) => {
                    // Still holding the lock? A dead lock connection means a standby may be active.
                    sqlx::query("SELECT 1").execute(&mut lock).await.map_err(SourceError::postgres("checking the source lock"))?;
                }
            }
        }
    }
}

/// What the active instance needs to turn changes into messages.
struct Worker<'a> {
    name: &'a str,
    plan: &'a Plan,
    config: &'a PostgresSourceConfig,
    table: &'a str,
    dead_letter_topic: &'a str,
    publisher: Publisher,
    metrics: &'a SourceMetrics,
    /// Tells the pruner the cursor of the last committed Kafka transaction.
    published: watch::Sender<Cursor>,
}

impl Worker<'_> {
    /// Publishes every readable change after `cursor`, a transaction per batch. Returns whether
    /// some changes are still held back by an open transaction.
    async fn catch_up(&self, conn: &mut PgConnection, cursor: &mut Cursor) -> Result<bool, SourceError> {
        loop {
            let started = std::time::Instant::now();
            let changes =
                capture::read_changes(conn, &self.plan.schema, self.table, *cursor, self.config.batch_size).await?;
            let read = started.elapsed();
            let Some(last) = changes.last().map(|c| c.cursor) else {
                let backlog = capture::backlog(conn, &self.plan.schema, self.table, *cursor).await?;
                self.metrics.backlog.set(backlog);
                return Ok(backlog > 0);
            };
            let messages: Vec<Outgoing> = changes.iter().filter_map(|change| self.message(change)).collect();
            let count = messages.len();
            self.publisher.publish(messages, last).await?;
            let published = started.elapsed() - read;
            *cursor = last;
            self.published.send_replace(last);
            self.metrics.published.inc_by(count as u64);
            self.metrics.transactions.inc();
            tracing::debug!(
                source = self.name,
                changes = changes.len(),
                published = count,
                read_ms = read.as_secs_f64() * 1000.0,
                publish_ms = published.as_secs_f64() * 1000.0,
                "Published a batch of changes."
            );
            if changes.len() < self.config.batch_size {
                let backlog = capture::backlog(conn, &self.plan.schema, self.table, *cursor).await?;
                self.metrics.backlog.set(backlog);
                return Ok(backlog > 0);
            }
        }
    }

    /// The message for one change: its event, a dead letter when it cannot be one, or nothing
    /// for a row herald's own sink wrote.
    fn message(&self, change: &Change) -> Option<Outgoing> {
        if let Some(skip) = &self.plan.skip_when {
            if change.row.get(&skip.column).and_then(Value::as_str) == Some(skip.value.as_str()) {
                return None;
            }
        }
        let origin = format!("postgres:{}", self.table);
        let provenance = vec![
            (ORIGIN_HEADER, origin.clone()),
            ("herald.origin.change", change.cursor.id.to_string()),
            ("herald.origin.operation", change.operation.clone()),
        ];
        match self.event(change) {
            Ok((event, key)) => Some(Outgoing {
                topic: self.config.topic.clone(),
                key: Some(key),
                value: event.to_json(),
                headers: provenance,
            }),
            Err(reason) => {
                warn!(source = self.name, change = change.cursor.id, reason = %reason, "Row cannot become a stage event; sent to the dead-letter topic.");
                let mut letter_headers = provenance;
                letter_headers.extend([
                    (headers::TOPIC, origin),
                    (headers::PARTITION, "-1".to_owned()),
                    (headers::OFFSET, change.cursor.id.to_string()),
                    (headers::CONNECTOR, self.name.to_owned()),
                    (headers::TASK_ID, "0".to_owned()),
                    (headers::STAGE, "VALUE_CONVERTER".to_owned()),
                    (headers::CLASS, "herald_source_postgres".to_owned()),
                    (headers::EXCEPTION_CLASS, "herald_core::event::EventError".to_owned()),
                    (headers::EXCEPTION_MESSAGE, reason.clone()),
                    (headers::EXCEPTION_STACKTRACE, reason),
                ]);
                Some(Outgoing {
                    topic: self.dead_letter_topic.to_owned(),
                    key: None,
                    value: Value::Object(change.row.clone()).to_string(),
                    headers: letter_headers,
                })
            }
        }
    }

    /// The row as a stage event, and its key.
    fn event(&self, change: &Change) -> Result<(StageEvent, String), String> {
        let mut object = Map::new();
        if let Some(Value::Object(payload)) = self.plan.payload_column.as_ref().and_then(|c| change.row.get(c)) {
            object.extend(payload.clone());
        }
        for (field, column) in &self.plan.columns {
            match change.row.get(column) {
                Some(Value::Null) | None => {
                    object.remove(field);
                }
                Some(value) => {
                    object.insert(field.clone(), value.clone());
                }
            }
        }
        for (field, value) in &self.config.constants {
            object.entry(field.clone()).or_insert_with(|| Value::String(value.clone()));
        }
        let bytes = Value::Object(object).to_string();
        let event =
            StageEvent::from_json(bytes.as_bytes()).map_err(|err| herald_core::dlq::error_chain(&err).join(": "))?;
        let key = event
            .field(&self.config.key_field)
            .map(std::borrow::Cow::into_owned)
            .ok_or_else(|| format!("the event has no key field `{}`", self.config.key_field))?;
        Ok((event, key))
    }
}

/// Installs the capture unless it is installed and current, in which case it issues no DDL
/// at all (DDL on the watched table would queue behind any open transaction of its writers).
/// Returns the watched table's `schema.name`.
async fn ensure_capture(conn: &mut PgConnection, plan: &Plan) -> Result<String, SourceError> {
    let current = match capture::resolve(conn, &plan.table).await {
        Ok(_) => capture::installed(conn, &plan.schema, &plan.table, plan.greenfield).await?,
        // The greenfield table is created by the install below.
        Err(SourceError::NoTable(_)) if plan.greenfield => false,
        Err(err) => return Err(err),
    };
    if current {
        let table = capture::resolve(conn, &plan.table).await?;
        tracing::debug!(table = %table, "Change capture is installed and current; no DDL.");
        return Ok(table);
    }
    capture::install(conn, &plan.schema, &plan.table, plan.greenfield, &Ddl::default()).await
}
