//! Keeping `herald_changes` small: published changes are deleted off the hot path.
//!
//! After each committed Kafka transaction the worker hands the pruner the new cursor. The
//! pruner records it as this source's progress and deletes, in batches of [`PRUNE_BATCH`] rows,
//! every change of the table that all of the table's sources have published. A crash between
//! the commit and the delete loses nothing and republishes nothing: the cursor in Kafka decides
//! what is read, and the next round deletes what was left.

use std::time::{Duration, Instant};

use herald_core::observe::SourceMetrics;
use herald_pg::Ident;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::capture::{self, Cursor};
use crate::error::SourceError;

/// Most rows one `DELETE` removes: short statements, short row locks, small WAL bursts.
pub(crate) const PRUNE_BATCH: i64 = 5_000;
/// Least time between two rounds, so a busy source does not prune after every transaction.
const MIN_ROUND_INTERVAL: Duration = Duration::from_millis(200);
/// How often the held row count is measured and, when over the limit, warned about; also the
/// longest the pruner sleeps.
const COUNT_INTERVAL: Duration = Duration::from_secs(5);
/// How long to wait before trying again after a failed round.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Rows counted at most when measuring what `herald_changes` holds.
const COUNT_LIMIT: i64 = 10_000_000;

/// The clean-up task of one active source.
pub(crate) struct Pruner {
    pub(crate) name: String,
    pub(crate) options: PgConnectOptions,
    pub(crate) schema: Ident,
    /// The watched table, `schema.name` as the trigger records it.
    pub(crate) table: String,
    /// Warn above this many held rows.
    pub(crate) max_rows: i64,
    pub(crate) metrics: SourceMetrics,
}

impl Pruner {
    /// Prunes after each cursor `published` reports (the first one at once), and at least every
    /// [`COUNT_INTERVAL`] (so the held-row count stays current when nothing is published), until
    /// `stop`.
    pub(crate) async fn run(self, mut published: watch::Receiver<Cursor>, stop: CancellationToken) {
        let mut conn: Option<PgConnection> = None;
        let mut last_count: Option<Instant> = None;
        published.mark_changed();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = published.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(COUNT_INTERVAL) => {}
            }
            let cursor = *published.borrow_and_update();
            let round = async {
                let conn = match &mut conn {
                    Some(conn) => conn,
                    None => conn.insert(
                        PgConnection::connect_with(&self.options).await.map_err(SourceError::postgres("connecting"))?,
                    ),
                };
                self.round(conn, cursor, &mut last_count).await
            };
            let pause = match round.await {
                Ok(()) => MIN_ROUND_INTERVAL,
                Err(err) => {
                    warn!(source = %self.name, error = %herald_sdk::error_chain(&err).join(": "), "Deleting published changes failed; trying again.");
                    conn = None;
                    // Try the same cursor again after the pause.
                    published.mark_changed();
                    RETRY_AFTER
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if let Some(conn) = conn {
            let _ = conn.close().await;
        }
    }

    async fn round(
        &self,
        conn: &mut PgConnection,
        cursor: Cursor,
        last_count: &mut Option<Instant>,
    ) -> Result<(), SourceError> {
        capture::record_progress(conn, &self.schema, &self.name, &self.table, cursor).await?;
        let mut deleted = 0;
        loop {
            let batch = capture::prune(conn, &self.schema, &self.table, PRUNE_BATCH).await?;
            deleted += batch;
            if batch < PRUNE_BATCH as u64 {
                break;
            }
        }
        if deleted > 0 {
            debug!(source = %self.name, deleted, "Deleted published changes.");
        }
        if last_count.is_none_or(|at| at.elapsed() >= COUNT_INTERVAL) {
            *last_count = Some(Instant::now());
            let held = capture::held_rows(conn, &self.schema, &self.table, COUNT_LIMIT).await?;
            self.metrics.capture_rows.set(held);
            if held > self.max_rows {
                warn!(
                    source = %self.name,
                    table = %self.table,
                    held,
                    max_capture_rows = self.max_rows,
                    "herald_changes keeps growing: another source of this table is not publishing (stopped, or \
                     removed from the config: `herald migrate --drop-source NAME` forgets it)."
                );
            }
        }
        Ok(())
    }
}
