//! The stream loop: reading the slot, batching whole transactions, publishing each batch with
//! its position in one Kafka transaction, then confirming the LSN to the slot; and which
//! replication errors are worth a new session.

use std::collections::HashMap;
use std::time::Duration;

use futures::FutureExt;
use herald_core::observe::SourceMetrics;
use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::SourceError;
use crate::publisher::{Outgoing, Publisher};
use crate::rows::RowMapper;
use crate::snapshot::Snapshot;

use super::decode::decode;
use super::position::Progress;
use super::slot::{slot_state, WalNames};

/// Under load, the least time between the beginnings of two Kafka transactions of whole
/// transactions (a large transaction's full batches go at once). At 1,000 rows/s a transaction
/// commits in 5–8 ms, so they ran back to back with a handful of rows each, and each costs
/// herald, librdkafka and the broker the same few round trips whatever it carries. 15 ms: herald
/// CPU 23% → 14–15% of a core at 1,000 rows/s, p99 14 → 22 ms (docs/benchmarks.md).
const TRANSACTION_SPACING: Duration = Duration::from_millis(15);

/// A batch whose first transaction arrived within this of the last commit's end found it
/// waiting: the source is under load, and [`TRANSACTION_SPACING`] applies.
const LOAD_GAP: Duration = Duration::from_millis(1);

/// How often the slot's retained WAL is measured.
const SLOT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What one activation of a WAL source needs.
pub(crate) struct WalStream<'a> {
    pub(crate) name: &'a str,
    pub(crate) table: &'a str,
    pub(crate) rows: RowMapper<'a>,
    pub(crate) publisher: Publisher,
    pub(crate) metrics: &'a SourceMetrics,
    pub(crate) batch_size: usize,
    /// A connection for slot measurements.
    pub(crate) conn: PgConnection,
    /// The connection holding the source's advisory lock, checked now and then.
    pub(crate) lock: PgConnection,
    pub(crate) names: WalNames,
    pub(crate) max_retained_bytes: i64,
    /// The snapshot the capture began with: transactions it saw are in Kafka already (as the
    /// latest rows it read), so their changes are passed over.
    pub(crate) skip: Option<Snapshot>,
}

impl WalStream<'_> {
    /// Streams from `config` (which starts at `progress`'s start) until `cancel` or an error.
    /// Events are published as many whole transactions as have arrived when the stream pauses,
    /// up to `batch_size` events; a larger transaction in batches of `batch_size`.
    pub(crate) async fn run(
        mut self,
        config: ReplicationConfig,
        progress: Progress,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let mut client =
            ReplicationClient::connect(config).await.map_err(SourceError::replication("connecting for replication"))?;
        client.wait_started().await.map_err(SourceError::replication("starting replication"))?;
        info!(source = self.name, slot = %self.names.slot, lsn = %Lsn::from_u64(progress.checkpoint().lsn), "Streaming from the replication slot.");
        let result = self.stream(&mut client, progress, cancel).await;
        client.stop();
        let _ = client.shutdown().await;
        result
    }

    async fn stream(
        &mut self,
        client: &mut ReplicationClient,
        mut progress: Progress,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let mut relations = HashMap::new();
        let mut batch: Vec<Outgoing> = Vec::new();
        // Whether whole transactions were added to the batch since the last publish.
        let mut batch_has_commits = false;
        let mut confirmed = progress.checkpoint().lsn;
        let mut slot_check = tokio::time::interval(SLOT_CHECK_INTERVAL);
        // The position moved past WAL with nothing of ours (other tables' transactions, idle
        // keepalives) and is not recorded in Kafka yet. The slot is only told once it is: the
        // slot is never ahead of Kafka's position, so a slot found ahead means it was lost.
        let mut idle_pending = false;
        // Whether the transaction being received is one the starting snapshot saw.
        let mut seen_by_snapshot = false;
        // When the last Kafka transaction of whole transactions began and ended, and whether the
        // batch being gathered found changes already waiting when it ended (the source is
        // under load: transactions would run back to back).
        let mut last_began = tokio::time::Instant::now();
        let mut last_ended = last_began;
        let mut under_load = false;
        loop {
            // Between transactions with a batch waiting: take what has already arrived, and
            // publish as soon as nothing more has.
            let event = if batch_has_commits && !progress.in_transaction() {
                // Under load, transactions begin at most every TRANSACTION_SPACING: what arrives
                // meanwhile joins the batch, so a steady stream pays for fewer Kafka
                // transactions. A row into an idle source goes at once.
                let next_allowed = if under_load { last_began + TRANSACTION_SPACING } else { last_began };
                let arrived = if tokio::time::Instant::now() >= next_allowed {
                    client.recv().now_or_never()
                } else {
                    tokio::time::timeout_at(next_allowed, client.recv()).await.ok()
                };
                match arrived {
                    Some(event) => event,
                    None => {
                        last_began = tokio::time::Instant::now();
                        confirmed = self.publish(client, &mut batch, &progress, confirmed).await?;
                        last_ended = tokio::time::Instant::now();
                        batch_has_commits = false;
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = slot_check.tick() => {
                        self.check_slot().await?;
                        let idle = !progress.in_transaction() && batch.is_empty() && !batch_has_commits;
                        if idle_pending && idle && progress.checkpoint().lsn > confirmed {
                            // A position-only transaction; then the slot may let that WAL go.
                            confirmed = self.publish(client, &mut batch, &progress, confirmed).await?;
                        }
                        idle_pending = false;
                        continue;
                    }
                    event = client.recv() => event,
                }
            };
            let Some(event) = event.map_err(SourceError::replication("receiving"))? else {
                return Err(SourceError::ReplicationLost {
                    context: "receiving",
                    reason: "the server ended the replication stream".into(),
                });
            };
            match event {
                ReplicationEvent::Begin { final_lsn, xid, .. } => {
                    if batch.is_empty() && !batch_has_commits {
                        under_load = last_ended.elapsed() < LOAD_GAP;
                    }
                    progress.begin(final_lsn.as_u64());
                    seen_by_snapshot = self.skip.as_ref().is_some_and(|snapshot| snapshot.sees_xid(xid));
                }
                ReplicationEvent::XLogData { wal_start, data, .. } => {
                    let Some(change) = decode(&data, &mut relations)? else { continue };
                    if change.table != self.table || seen_by_snapshot || !progress.admit() {
                        continue;
                    }
                    let position = wal_start.to_string();
                    // pgoutput carries no writer: the WAL knows transactions, not sessions.
                    batch.extend(self.rows.message(&change.row, &position, change.operation, None));
                    // A large transaction goes out in batches too: bounded memory, short Kafka
                    // transactions; the checkpoint says how much of it is in Kafka.
                    if batch.len() >= self.batch_size {
                        confirmed = self.publish(client, &mut batch, &progress, confirmed).await?;
                        batch_has_commits = false;
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    if !progress.commit(end_lsn.as_u64()) {
                        continue;
                    }
                    if batch.is_empty() && !batch_has_commits {
                        // Nothing (more) of ours in it: the position moves past it, recorded
                        // with the next batch or on the next idle check.
                        idle_pending = true;
                    } else {
                        batch_has_commits = true;
                        if batch.len() >= self.batch_size {
                            confirmed = self.publish(client, &mut batch, &progress, confirmed).await?;
                            batch_has_commits = false;
                        }
                    }
                }
                // Idle and everything published: the position moves on (recorded on the next idle
                // check), so a quiet table on a busy server does not pin WAL (Postgres's own
                // subscribers do the same).
                ReplicationEvent::KeepAlive { wal_end, .. }
                    if !progress.in_transaction()
                        && batch.is_empty()
                        && !batch_has_commits
                        && wal_end.as_u64() > confirmed =>
                {
                    progress.idle_at(wal_end.as_u64());
                    idle_pending = true;
                }
                _ => {}
            }
        }
    }

    /// Publishes the batch (possibly empty: the position alone) with the checkpoint `progress`
    /// gives in one Kafka transaction, then confirms the end of the last whole transaction to
    /// the slot. Returns the LSN confirmed.
    async fn publish(
        &self,
        client: &ReplicationClient,
        batch: &mut Vec<Outgoing>,
        progress: &Progress,
        confirmed: u64,
    ) -> Result<u64, SourceError> {
        let checkpoint = progress.checkpoint();
        let messages = std::mem::take(batch);
        let count = messages.len();
        let started = std::time::Instant::now();
        self.publisher.publish(messages, &checkpoint, &|message, error| self.rows.too_large(message, error)).await?;
        self.metrics.published.inc_by(count as u64);
        self.metrics.transactions.inc();
        self.metrics.progressed();
        debug!(
            source = self.name,
            published = count,
            lsn = %Lsn::from_u64(checkpoint.lsn),
            partial = ?checkpoint.partial,
            publish_ms = started.elapsed().as_secs_f64() * 1000.0,
            "Published a batch of WAL changes."
        );
        if checkpoint.lsn > confirmed {
            // Only now may Postgres forget this WAL: the events are in Kafka.
            client.update_applied_lsn(Lsn::from_u64(checkpoint.lsn));
            return Ok(checkpoint.lsn);
        }
        Ok(confirmed)
    }

    /// Checks the source lock is still held, measures the WAL the slot holds back, and warns
    /// past the limit.
    async fn check_slot(&mut self) -> Result<(), SourceError> {
        sqlx::query("SELECT 1")
            .execute(&mut self.lock)
            .await
            .map_err(SourceError::postgres("checking the source lock"))?;
        if let Some((_, retained)) = slot_state(&mut self.conn, &self.names.slot).await? {
            self.metrics.retained_wal_bytes.set(retained);
            if retained > self.max_retained_bytes {
                warn!(
                    source = self.name,
                    slot = %self.names.slot,
                    retained_mib = retained / (1024 * 1024),
                    max_retained_wal_mb = self.max_retained_bytes / (1024 * 1024),
                    "The replication slot holds back more WAL than allowed; Postgres cannot recycle it until herald catches up."
                );
            }
        }
        Ok(())
    }
}

impl SourceError {
    pub(crate) fn replication(context: &'static str) -> impl FnOnce(PgWireError) -> Self {
        move |error| match error {
            // Internal: the client's worker ended while a receive was being dropped (our
            // `now_or_never`); the session is gone either way, and a new one can start.
            PgWireError::Io(_) | PgWireError::Task(_) | PgWireError::Internal(_) => {
                SourceError::ReplicationLost { context, reason: error.to_string() }
            }
            // A slot another reader still holds (a standby's takeover races the old session's
            // exit), or a server restarting: try again.
            PgWireError::Server(ref message)
                if ["SQLSTATE 55006", "SQLSTATE 57P", "SQLSTATE 08", "SQLSTATE 53"]
                    .iter()
                    .any(|code| message.contains(code)) =>
            {
                SourceError::ReplicationLost { context, reason: error.to_string() }
            }
            _ => SourceError::Replication { context, reason: error.to_string() },
        }
    }
}
