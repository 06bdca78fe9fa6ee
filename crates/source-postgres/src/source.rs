//! The source at work: standby until it holds the lock, then LISTEN, catch up, publish.

use std::time::Duration;

use herald_core::observe::SourceMetrics;
use herald_kafka::{KafkaProperties, TopicSpec};
use herald_pg::Ddl;
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::capture::{self, Cursor};
use crate::config::{Capture, OnCaptureLost, Plan, PostgresSourceConfig, SnapshotMode};
use crate::continuity::Committed;
use crate::continuity::{self, ServerIdentity, WalCapture};
use crate::error::SourceError;
use crate::instance::PostgresSource;
use crate::offsets::{forget_position, read_committed, read_start};
use crate::prune::Pruner;
use crate::publisher::{Outgoing, Publisher};
use crate::rows::RowMapper;
use crate::snapshot::Snapshot;
use crate::wal::{self, WalNames, WalPosition, WalStream};

/// The `pg_notify` channel the capture trigger signals.
const CHANNEL: &str = "herald_changes";
/// How often a standby tries to take the lock.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How soon to look again when an open transaction holds changes back.
const HELD_BACK_POLL: Duration = Duration::from_millis(20);

impl PostgresSource {
    /// Options for connections named `herald/<source name>`.
    fn connect_options(&self) -> Result<PgConnectOptions, SourceError> {
        let name = self.name.as_str();
        Ok(herald_pg::connect_options(&self.config.url, name)?)
    }

    /// A connection named for source `name`, to a primary: a server in recovery (a standby the
    /// endpoint still points at during a failover) is [`SourceError::Standby`], which the
    /// running source waits out.
    pub(crate) async fn connect(&self) -> Result<PgConnection, SourceError> {
        let mut conn =
            PgConnection::connect_with(&self.connect_options()?).await.map_err(SourceError::postgres("connecting"))?;
        let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await
            .map_err(SourceError::postgres("asking whether the server is a standby"))?;
        if standby {
            let _ = conn.close().await;
            return Err(SourceError::Standby);
        }
        Ok(conn)
    }

    /// Installs the change capture (herald's tables and function, the greenfield table when
    /// it is the one watched, the trigger); idempotent, and a no-op (no DDL, no lock) when the
    /// capture is installed and current. `herald migrate` calls it; `herald run` calls it only
    /// for a table not yet captured.
    ///
    /// A capture that was lost (see [`crate::continuity`]) is not installed again: that would
    /// hide the gap from the next start. The error says what was lost.
    pub async fn migrate(&self, kafka: &KafkaProperties) -> Result<(), SourceError> {
        let name = self.name.as_str();
        let plan = &self.plan;
        let mut conn = self.connect().await?;
        let result = async {
            let server = ServerIdentity::read(&mut conn).await?;
            match self.config.capture {
                Capture::Trigger => {
                    let committed = read_committed::<Cursor>(kafka, &self.config.offsets_topic, name).await?;
                    self.trigger_continuity(plan, &mut conn, committed.as_ref(), server).await?;
                    ensure_capture(&mut conn, plan, name).await
                }
                Capture::Wal => {
                    let committed = read_committed::<WalPosition>(kafka, &self.config.offsets_topic, name).await?;
                    self.wal_continuity(&mut conn, committed.as_ref(), server).await?;
                    ensure_wal(&mut conn, plan, &self.wal_names()).await
                }
            }
        }
        .await;
        let _ = conn.close().await;
        result.map(drop)
    }

    /// Whether the WAL capture is still the one `committed` (Kafka's position) belongs to.
    async fn wal_continuity(
        &self,
        conn: &mut PgConnection,
        committed: Option<&Committed<WalPosition>>,
        server: ServerIdentity,
    ) -> Result<(), SourceError> {
        let Some(committed) = committed else { return Ok(()) };
        let slot = self.config.slot_name(&self.name);
        let slot_confirmed = wal::slot_state(conn, &slot).await?.map(|(confirmed, _)| confirmed);
        let at = committed.clone().map(|position| position.lsn);
        // A promotion that kept the slot (a failover slot): where the old timeline ended decides.
        let mut timeline_ended = None;
        if let Some(was) = committed.server.filter(|was| continuity::is_promotion(*was, server)) {
            if slot_confirmed.is_some() {
                let config = wal::replication_config(
                    &self.config.url,
                    &herald_pg::application_name(&self.name),
                    &self.wal_names(),
                    at.position,
                )?;
                timeline_ended = wal::timeline_ended(config, server.timeline, was.timeline).await?;
            }
        }
        match continuity::check_wal(&at, &slot, &WalCapture { slot_confirmed, server, timeline_ended }) {
            Some(lost) => Err(self.capture_lost(lost, &format!("LSN {}", continuity::lsn(at.position)), at.at)),
            None => {
                if let Some(ended) = timeline_ended {
                    info!(
                        source = self.name.as_str(),
                        slot = %slot,
                        timeline = server.timeline,
                        old_timeline_ended = %continuity::lsn(ended),
                        "The database was promoted and kept the slot (a failover slot); herald's position is in its history: the capture goes on."
                    );
                }
                Ok(())
            }
        }
    }

    /// Whether the trigger capture is still the one `committed` (Kafka's cursor) belongs to.
    async fn trigger_continuity(
        &self,
        plan: &Plan,
        conn: &mut PgConnection,
        committed: Option<&Committed<Cursor>>,
        server: ServerIdentity,
    ) -> Result<(), SourceError> {
        let Some(committed) = committed else { return Ok(()) };
        let since = format!("transaction {}, change {}", committed.position.txid, committed.position.id);
        let lost = match capture::resolve(conn, &plan.table).await {
            Ok(table) => {
                let observed = capture::observe(conn, &plan.schema, &table, server).await?;
                let at = committed.clone().map(|cursor| (cursor.txid, cursor.id));
                continuity::check_trigger(&at, &table, &observed)
            }
            Err(SourceError::NoTable(table)) => {
                Some(continuity::Lost::Trigger { table, state: continuity::TriggerState::Missing })
            }
            Err(err) => return Err(err),
        };
        match lost {
            Some(lost) => Err(self.capture_lost(lost, &since, committed.at)),
            None => Ok(()),
        }
    }

    fn wal_names(&self) -> WalNames {
        WalNames { slot: self.config.slot_name(&self.name), publication: self.config.publication_name(&self.name) }
    }

    /// Retires source `name`. Trigger capture: removes its clean-up progress, so captured
    /// changes of its table are no longer kept for it, and when it was the table's last source,
    /// the trigger and the table's captured changes. WAL capture: drops its replication slot
    /// (which would otherwise pin WAL forever) and its publication. Returns whether there was
    /// anything to remove.
    ///
    /// Its position in Kafka is forgotten too, so a source of the same name started later
    /// captures from then on as a new one (rather than stopping on a capture it cannot find).
    pub async fn drop_source(&self, kafka: &KafkaProperties) -> Result<bool, SourceError> {
        let name = self.name.as_str();
        let plan = &self.plan;
        let mut conn = self.connect().await?;
        // A retire is not a loss: refused while a herald runs the source (it holds the lock),
        // and the lock is held here until the retire is done, so none starts meanwhile.
        if let Err(err) = take_source_lock(&mut conn, name).await {
            let _ = conn.close().await;
            return Err(err);
        }
        let result = match self.config.capture {
            Capture::Trigger => retire_trigger_source(&mut conn, plan, name).await,
            Capture::Wal => wal::drop_capture(&mut conn, &self.wal_names()).await,
        };
        let _ = conn.close().await;
        let had = result?;
        forget_position(kafka, &self.config.offsets_topic, name).await?;
        Ok(had)
    }

    /// Connects and checks the table and its mapped columns, changing nothing; for WAL capture
    /// also the replication slot and the WAL it holds back. A capture lost since the source's
    /// position in Kafka (a slot or trigger removed behind herald's back) is an error, as the
    /// start would find it. Returns what it found.
    pub async fn check(&self, kafka: &KafkaProperties) -> Result<String, SourceError> {
        let plan = &self.plan;
        let mut conn = self.connect().await?;
        let result = self.check_on(plan, kafka, &mut conn).await;
        let _ = conn.close().await;
        result
    }

    async fn check_on(
        &self,
        plan: &Plan,
        kafka: &KafkaProperties,
        conn: &mut PgConnection,
    ) -> Result<String, SourceError> {
        let name = self.name.as_str();
        let resolved = capture::resolve(conn, &plan.table).await?;
        let wanted: Vec<String> =
            plan.columns.values().cloned().chain(plan.skip_when.iter().map(|s| s.column.clone())).collect();
        let missing = capture::missing_columns(conn, &resolved, wanted.iter()).await?;
        if !missing.is_empty() {
            return Err(SourceError::MissingColumns { table: resolved, missing });
        }
        let server = ServerIdentity::read(conn).await?;
        if self.config.capture == Capture::Trigger {
            let committed = read_committed::<Cursor>(kafka, &self.config.offsets_topic, name).await?;
            self.trigger_continuity(plan, conn, committed.as_ref(), server).await?;
            return Ok("table and mapped columns found".into());
        }
        let committed = read_committed::<WalPosition>(kafka, &self.config.offsets_topic, name).await?;
        self.wal_continuity(conn, committed.as_ref(), server).await?;
        let names = self.wal_names();
        match wal::slot_state(conn, &names.slot).await? {
            None => Ok(format!(
                "table and mapped columns found; slot `{}` not created yet (`herald migrate` creates it)",
                names.slot
            )),
            Some((_, retained)) if retained > self.max_retained_wal_bytes() => Err(SourceError::Config {
                key: "max_retained_wal_mb".into(),
                reason: format!(
                    "slot `{}` holds back {} MiB of WAL, more than {} MiB: is its herald running?",
                    names.slot,
                    retained / (1024 * 1024),
                    self.config.max_retained_wal_mb
                ),
            }),
            Some((_, retained)) => Ok(format!(
                "table and mapped columns found; slot `{}` holds back {} KiB of WAL",
                names.slot,
                retained / 1024
            )),
        }
    }

    /// The error that stops source `name` when its capture was lost: what, since where and
    /// when, and the ways forward.
    fn capture_lost(
        &self,
        lost: continuity::Lost,
        position: &str,
        at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> SourceError {
        let name = self.name.as_str();
        let when =
            at.map_or_else(String::new, |at| format!(" ({})", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
        SourceError::CaptureLost {
            source_name: name.to_owned(),
            what: lost.to_string(),
            since: format!("{position}{when}"),
            config: String::new(),
        }
    }

    /// Whether to resync after the continuity check's `outcome`: a lost capture stops the source
    /// unless `on_capture_lost = "resync"`, when a WARN says what was lost and it goes on.
    fn resync_if_lost(&self, outcome: Result<(), SourceError>) -> Result<bool, SourceError> {
        let name = self.name.as_str();
        match outcome {
            Ok(()) => Ok(false),
            Err(err @ SourceError::CaptureLost { .. }) if self.config.on_capture_lost == OnCaptureLost::Resync => {
                let reason = herald_sdk::printable::printable(&err.to_string(), 2048).into_owned();
                warn!(source = name, lost = %reason, "Capture lost; resyncing: the table's latest rows the topic lacks are published, then changes from now on.");
                Ok(true)
            }
            Err(err) => Err(err),
        }
    }

    /// Records the first position of a capture just begun (the first activation, or a resync):
    /// with the table's latest rows read in a snapshot when `snapshot = "latest"` or resyncing
    /// (only those the topic lacks or holds older), all in one Kafka transaction. Returns the snapshot
    /// whose transactions the stream skips, if one was read.
    async fn begin_capture(
        &self,
        kafka: &KafkaProperties,
        conn: &mut PgConnection,
        rows: &RowMapper<'_>,
        publisher: &Publisher,
        first: &impl crate::offsets::Checkpoint,
        resync: bool,
    ) -> Result<Option<Snapshot>, SourceError> {
        if resync || self.config.snapshot == SnapshotMode::Latest {
            // Always against the topic: after a retire and a new start (the recovery a lost
            // capture prints), the topic already holds most of the table's latest rows, and a
            // consumer acting on each event would act twice on any published again.
            return self.publish_snapshot(kafka, conn, rows, publisher, first, true).await.map(Some);
        }
        publisher.publish(Vec::new(), first, &|message, _| message).await?;
        Ok(None)
    }

    /// Where the rows that cannot become events go: `dead_letter_topic`, or `herald.dlq.<name>`.
    pub(crate) fn dead_letter_topic_of(&self) -> String {
        let name = self.name.as_str();
        self.config.dead_letter_topic.clone().unwrap_or_else(|| format!("herald.dlq.{name}"))
    }

    /// The topics source `name` writes: its events, its dead letters, its offsets (one
    /// partition, compacted: the cursor is read back from partition 0).
    pub(crate) fn topics(&self) -> Vec<TopicSpec> {
        vec![
            TopicSpec::events(self.config.topic.as_str()),
            TopicSpec::dead_letters(self.dead_letter_topic_of()),
            TopicSpec::compacted(self.config.offsets_topic.as_str(), 1),
        ]
    }

    fn max_retained_wal_bytes(&self) -> i64 {
        i64::try_from(self.config.max_retained_wal_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX)
    }

    /// Runs the source named `name` until `cancel`: standby while another instance holds its
    /// lock, active otherwise. Transient failures (Postgres or Kafka down, fenced) send it back
    /// to standby and it tries again; configuration errors end it.
    pub async fn run(
        &self,
        kafka: &KafkaProperties,
        metrics: SourceMetrics,
        cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        let name = self.name.as_str();
        let plan = &self.plan;
        while !cancel.is_cancelled() {
            match self.run_once(plan, kafka, &metrics, &cancel).await {
                Ok(()) => {}
                // Lost while running: the next activation finds it lost and resyncs.
                Err(SourceError::CaptureLost { .. }) if self.config.on_capture_lost == OnCaptureLost::Resync => {}
                Err(err) if err.is_transient() => {
                    let reason =
                        herald_sdk::printable::printable(&herald_sdk::error_chain(&err).join(": "), 1024).into_owned();
                    warn!(source = name, error = %reason, "Source stepped down; retrying.");
                    metrics.failed(reason);
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
        plan: &Plan,
        kafka: &KafkaProperties,
        metrics: &SourceMetrics,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let name = self.name.as_str();
        // The lock lives as long as this connection: if the process dies, Postgres drops the
        // connection and the lock with it, and a standby takes over.
        let mut lock = self.connect().await?;
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
                metrics.set_status("standby");
                info!(source = name, "Another instance publishes this source; standing by.");
                announced = true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(STANDBY_POLL) => {}
            }
        }

        let mut conn = self.connect().await?;
        let names = self.wal_names();
        let server = ServerIdentity::read(&mut conn).await?;
        let dead_letter_topic = self.dead_letter_topic_of();
        let publisher = Publisher::start(kafka, name, &self.topics(), &self.config.offsets_topic, server).await?;
        if self.config.capture == Capture::Wal {
            let (committed, stored_snapshot) =
                read_start::<WalPosition>(kafka, &self.config.offsets_topic, name).await?;
            // Before anything is (re)created: is the slot still the one Kafka's position belongs to?
            let lost = self.wal_continuity(&mut conn, committed.as_ref(), server).await;
            let resync = self.resync_if_lost(lost)?;
            let table = ensure_wal(&mut conn, plan, &names).await?;
            let (confirmed, _) = wal::slot_state(&mut conn, &names.slot).await?.ok_or_else(|| {
                SourceError::Replication { context: "starting", reason: format!("slot `{}` vanished", names.slot) }
            })?;
            let rows =
                RowMapper { name, plan, config: &self.config, table: &table, dead_letter_topic: &dead_letter_topic };
            let (in_kafka, skip) = match committed {
                Some(committed) if !resync => (committed.position, stored_snapshot),
                _ => {
                    // The first activation (or a resync): the position is recorded at once, so that
                    // from now on a lost capture is always seen.
                    let first = WalPosition { lsn: confirmed, partial: None };
                    let skip = self.begin_capture(kafka, &mut conn, &rows, &publisher, &first, resync).await?;
                    (first, skip)
                }
            };
            wal::check_history(&mut conn, in_kafka.lsn).await?;
            // The server never goes back before the slot's confirmed LSN; and what Kafka has is
            // skipped. The slot is never ahead of Kafka's position (herald records a position
            // before it confirms it), so this is Kafka's position.
            let start = in_kafka.lsn.max(confirmed);
            info!(source = name, table = %table, topic = %self.config.topic, slot = %names.slot, lsn = %pgwire_replication::Lsn::from_u64(start), "Source active.");
            metrics.set_status("active");
            let stream = WalStream {
                name,
                table: &table,
                rows,
                publisher,
                metrics,
                batch_size: self.config.batch_size,
                skip,
                conn,
                lock,
                max_retained_bytes: self.max_retained_wal_bytes(),
                names: names.clone(),
            };
            let config = wal::replication_config(&self.config.url, &herald_pg::application_name(name), &names, start)?;
            return stream.run(config, wal::Progress::new(start, in_kafka), cancel).await;
        }
        let (committed, stored_snapshot) = read_start::<Cursor>(kafka, &self.config.offsets_topic, name).await?;
        // Before the trigger is (re)installed: is the capture still the one Kafka's cursor belongs to?
        let lost = self.trigger_continuity(plan, &mut conn, committed.as_ref(), server).await;
        let resync = self.resync_if_lost(lost)?;
        let table = ensure_capture(&mut conn, plan, name).await?;
        let rows = RowMapper { name, plan, config: &self.config, table: &table, dead_letter_topic: &dead_letter_topic };
        let (mut cursor, skip) = match committed {
            Some(committed) if !resync => (committed.position, stored_snapshot),
            _ => {
                // The first activation (or a resync): recorded at once (see the WAL branch). The
                // changes already captured are read again from the start, less those the
                // snapshot saw.
                let first = Cursor::default();
                let skip = self.begin_capture(kafka, &mut conn, &rows, &publisher, &first, resync).await?;
                (first, skip)
            }
        };
        info!(source = name, table = %table, topic = %self.config.topic, txid = cursor.txid, change = cursor.id, "Source active.");
        metrics.set_status("active");
        // Deletes what has been published, on a connection and task of its own; it stops with
        // this activation (the guard cancels it on every way out).
        let (published, published_rx) = watch::channel(cursor);
        let pruner_stop = cancel.child_token();
        let _stop_pruner = pruner_stop.clone().drop_guard();
        tokio::spawn(
            Pruner {
                name: name.to_owned(),
                options: self.connect_options()?,
                schema: plan.schema.clone(),
                table: table.clone(),
                max_rows: self.config.max_capture_rows,
                metrics: metrics.clone(),
            }
            .run(published_rx, pruner_stop),
        );

        let mut listener = PgListener::connect_with(&sqlx::PgPool::connect_lazy_with(self.connect_options()?))
            .await
            .map_err(SourceError::postgres("connecting the listener"))?;
        listener.listen(CHANNEL).await.map_err(SourceError::postgres("listening"))?;
        let worker =
            Worker { name, plan, config: &self.config, table: &table, rows, publisher, metrics, published, skip };

        let mut last_capture_check = std::time::Instant::now();
        loop {
            let held_back = worker.catch_up(&mut conn, &mut cursor).await?;
            let wait = if held_back { HELD_BACK_POLL } else { self.config.poll_interval };
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
                    // Still capturing? A trigger dropped or disabled while herald runs loses rows
                    // too (looked at once per poll interval, not on the short held-back polls).
                    if last_capture_check.elapsed() >= self.config.poll_interval {
                        last_capture_check = std::time::Instant::now();
                        let here = Committed { position: cursor, server: Some(server), at: Some(chrono::Utc::now()) };
                        self.trigger_continuity(plan, &mut conn, Some(&here), server).await?;
                    }
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
    rows: RowMapper<'a>,
    publisher: Publisher,
    metrics: &'a SourceMetrics,
    /// Tells the pruner the cursor of the last committed Kafka transaction.
    published: watch::Sender<Cursor>,
    /// The snapshot the capture began with: the changes of the transactions it saw are in
    /// Kafka already (as the latest rows it read), so they are passed over.
    skip: Option<Snapshot>,
}

impl Worker<'_> {
    /// Publishes every readable change after `cursor`, a transaction per batch. Returns whether
    /// some changes are still held back by an open transaction.
    async fn catch_up(&self, conn: &mut PgConnection, cursor: &mut Cursor) -> Result<bool, SourceError> {
        let batch_size = self.config.batch_size;
        let started = std::time::Instant::now();
        let mut changes = capture::read_changes(conn, &self.plan.schema, self.table, *cursor, batch_size).await?;
        let mut read = started.elapsed();
        loop {
            let started = std::time::Instant::now();
            let Some(last) = changes.last().map(|c| c.cursor) else {
                let backlog = capture::backlog(conn, &self.plan.schema, self.table, *cursor).await?;
                self.metrics.backlog.set(backlog);
                return Ok(backlog > 0);
            };
            let messages: Vec<Outgoing> = changes
                .iter()
                .filter(|change| !self.skip.as_ref().is_some_and(|snapshot| snapshot.sees(change.cursor.txid)))
                .filter_map(|change| {
                    self.rows.message(&change.row, &change.position, &change.operation, change.writer.as_deref())
                })
                .collect();
            let count = messages.len();
            let full = changes.len() >= batch_size;
            let too_large = |message, error: &str| self.rows.too_large(message, error);
            let publish = self.publisher.publish(messages, &last, &too_large);
            // A full batch says more may be waiting: the next one is read while Kafka commits
            // this one. It starts after `last` whether or not this commit succeeds (on failure
            // it is dropped with the error), so nothing is read twice or passed over.
            let upcoming = if full {
                let (published, upcoming) =
                    tokio::join!(publish, capture::read_changes(conn, &self.plan.schema, self.table, last, batch_size));
                published?;
                Some(upcoming?)
            } else {
                publish.await?;
                None
            };
            let took = started.elapsed();
            *cursor = last;
            self.published.send_replace(last);
            self.metrics.published.inc_by(count as u64);
            self.metrics.transactions.inc();
            self.metrics.progressed();
            tracing::debug!(
                source = self.name,
                changes = changes.len(),
                published = count,
                read_ms = read.as_secs_f64() * 1000.0,
                publish_ms = took.as_secs_f64() * 1000.0,
                "Published a batch of changes (the next batch read meanwhile when this one was full)."
            );
            match upcoming {
                Some(next) => {
                    changes = next;
                    read = std::time::Duration::ZERO;
                }
                None => {
                    let backlog = capture::backlog(conn, &self.plan.schema, self.table, *cursor).await?;
                    self.metrics.backlog.set(backlog);
                    return Ok(backlog > 0);
                }
            }
        }
    }
}

/// Installs the capture unless it is installed and current, in which case it issues no DDL
/// at all (DDL on the watched table would queue behind any open transaction of its writers).
/// Returns the watched table's `schema.name`.
/// Also registers source `name` as a reader of the table's changes, so none is deleted
/// before it has published them.
async fn ensure_capture(conn: &mut PgConnection, plan: &Plan, name: &str) -> Result<String, SourceError> {
    // The table, when it exists and its capture is installed and current.
    let current = match capture::resolve(conn, &plan.table).await {
        Ok(table) => capture::installed(conn, &plan.schema, &plan.table, plan.greenfield).await?.then_some(table),
        // The greenfield table is created by the install below.
        Err(SourceError::NoTable(_)) if plan.greenfield => None,
        Err(err) => return Err(err),
    };
    let table = match current {
        Some(table) => {
            tracing::debug!(table = %table, "Change capture is installed and current; no DDL.");
            table
        }
        None => capture::install(conn, &plan.schema, &plan.table, plan.greenfield, &Ddl::default()).await?,
    };
    capture::register(conn, &plan.schema, name, &table).await?;
    Ok(table)
}

/// Forgets trigger source `name`; when no source reads its table any more, removes the
/// trigger and the table's captured changes too. Returns whether the source was registered.
/// Takes source `name`'s advisory lock on `conn` (held until it closes), or says who holds it.
async fn take_source_lock(conn: &mut PgConnection, name: &str) -> Result<(), SourceError> {
    let lock_key = format!("herald.source.{name}");
    let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(&lock_key)
        .fetch_one(&mut *conn)
        .await
        .map_err(SourceError::postgres("taking the source lock"))?;
    if acquired {
        return Ok(());
    }
    // A one-key advisory lock shows its key split into classid (high half) and objid.
    let holder: Option<(i32, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT a.pid, a.application_name, host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted \
         AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext($1)::bigint LIMIT 1",
    )
    .bind(&lock_key)
    .fetch_optional(&mut *conn)
    .await
    .unwrap_or(None);
    let holder = match holder {
        Some((pid, application, address)) => format!(
            "Postgres session pid {pid}, application_name `{}`{}",
            application.unwrap_or_default(),
            address.map(|address| format!(", from {address}")).unwrap_or_default()
        ),
        None => "another session holds its lock".to_owned(),
    };
    Err(SourceError::Running { source_name: name.to_owned(), holder })
}

async fn retire_trigger_source(conn: &mut PgConnection, plan: &Plan, name: &str) -> Result<bool, SourceError> {
    let had = capture::forget(conn, &plan.schema, name).await?;
    let table = match capture::resolve(conn, &plan.table).await {
        Ok(table) => table,
        Err(SourceError::NoTable(_)) => return Ok(had),
        Err(err) => return Err(err),
    };
    if capture::readers(conn, &plan.schema, &table).await? == 0 {
        capture::uninstall(conn, &plan.schema, &table, &Ddl::default()).await?;
    }
    Ok(had)
}

/// Makes the table ready for WAL capture (the greenfield table created when it is the one
/// watched; the publication and the slot when missing). Returns the table's `schema.name`.
async fn ensure_wal(conn: &mut PgConnection, plan: &Plan, names: &WalNames) -> Result<String, SourceError> {
    let ddl = Ddl::default();
    if plan.greenfield {
        herald_pg::migrate_in_schema(conn, &plan.schema, vec![herald_pg::greenfield_migrator()], &ddl).await?;
    }
    let table = capture::resolve(conn, &plan.table).await?;
    wal::ensure(conn, &table, names, &ddl).await?;
    Ok(table)
}
