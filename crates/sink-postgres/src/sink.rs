//! The Postgres sink: one transaction per batch, offsets stored with the rows.

use std::collections::HashMap;

use async_trait::async_trait;
use herald_sdk::{BoxError, Purpose, Rejection, Sink, SinkContext, SinkError, SinkPlugin, SinkRecord, WriteOutcome};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Row};
use tracing::{debug, info, warn};

use crate::config::PostgresSinkConfig;
use crate::error::{PostgresSinkError, PreviouslyRejected};
use crate::table::TableWriter;
use herald_pg::{Ddl, Failure, Ident};

/// What to do before the sink is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Create or update herald's tables first (what `herald run` and `herald migrate` do).
    Migrate,
    /// Only check that the tables fit the mapping (what `herald check` does): changes nothing.
    CheckOnly,
}

impl PostgresSinkConfig {
    /// Options for connections named `herald/<route>`: UTC, the statement timeout, the idle
    /// in-transaction timeout, and the server's TCP keepalives (probe after 30 s idle, every
    /// 10 s, 3 misses), so a client that vanished is found and its transaction ended in about a
    /// minute, its locks released.
    pub(crate) fn connect_options(&self, route: &str) -> Result<PgConnectOptions, PostgresSinkError> {
        let statement_timeout = format!("{}ms", self.statement_timeout.as_millis());
        let idle_in_transaction = format!("{}ms", self.idle_in_transaction_timeout.as_millis());
        Ok(herald_pg::connect_options(&self.url, route)?.options([
            ("statement_timeout", statement_timeout.as_str()),
            ("idle_in_transaction_session_timeout", idle_in_transaction.as_str()),
            ("tcp_keepalives_idle", "30"),
            ("tcp_keepalives_interval", "10"),
            ("tcp_keepalives_count", "3"),
            ("TimeZone", "UTC"),
        ]))
    }

    /// Creates or updates herald's tables for route `route` (idempotent). When they are current
    /// it issues no DDL; otherwise every statement runs under a short `lock_timeout` and is
    /// retried, so it never queues ahead of the application's writers.
    pub async fn migrate_tables(&self, route: &str) -> Result<(), PostgresSinkError> {
        let schema = self.schema_ident()?;
        let mut conn =
            PgConnection::connect_with(&self.connect_options(route)?).await.map_err(PostgresSinkError::Connect)?;
        let mut offsets = sqlx::migrate!("migrations/offsets");
        offsets.set_ignore_missing(true);
        let mut migrators = vec![offsets];
        if self.table.is_none() {
            migrators.push(herald_pg::greenfield_migrator());
        }
        let result = herald_pg::migrate_in_schema(&mut conn, &schema, migrators, &Ddl::default()).await;
        let _ = conn.close().await;
        Ok(result?)
    }

    /// Connects for route `route`, migrates (or only checks) and prepares the table writes.
    /// `consumer_group` keys the stored offsets: routes sharing a group share them.
    pub async fn connect(
        &self,
        route: &str,
        consumer_group: &str,
        setup: Setup,
    ) -> Result<Box<dyn Sink>, PostgresSinkError> {
        Ok(Box::new(PostgresSink::connect(self, route, consumer_group, setup).await?))
    }
}

/// Writes batches of events and their offsets in one transaction.
pub(crate) struct PostgresSink {
    pool: PgPool,
    writers: Vec<TableWriter>,
    schema: Ident,
    consumer_group: String,
    /// For a sink with a newest-wins table: how far ahead of the clock an event may be dated.
    max_clock_skew: Option<std::time::Duration>,
    /// The next offset of each partition this sink committed last: were the database's stored
    /// offsets ever behind it, the database lost commits it acknowledged.
    committed: std::sync::Mutex<HashMap<(String, i32), i64>>,
}

impl PostgresSink {
    async fn connect(
        config: &PostgresSinkConfig,
        route: &str,
        consumer_group: &str,
        setup: Setup,
    ) -> Result<Self, PostgresSinkError> {
        let plans = config.plans()?;
        if setup == Setup::Migrate {
            config.migrate_tables(route).await?;
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size.max(1))
            .acquire_timeout(config.connect_timeout)
            .after_connect(|conn, _| Box::pin(async move { refuse_a_standby(conn).await }))
            .connect_lazy_with(config.connect_options(route)?);
        let mut conn = pool.acquire().await.map_err(PostgresSinkError::Connect)?;
        let mut writers = Vec::with_capacity(plans.len());
        for plan in plans {
            writers.push(TableWriter::prepare(&mut conn, plan).await?);
        }
        let schema = config.schema_ident()?;
        if setup == Setup::CheckOnly {
            let offsets = format!("{schema}.herald_offsets");
            let present: Option<String> =
                sqlx::query_scalar("SELECT to_regclass($1)::text").bind(&offsets).fetch_one(&mut *conn).await?;
            if present.is_none() {
                return Err(PostgresSinkError::NoTable { table: offsets });
            }
        }
        drop(conn);
        info!(consumer_group, tables = writers.len(), "Postgres sink ready.");
        let max_clock_skew = writers.iter().any(TableWriter::is_newest_wins).then_some(config.max_clock_skew);
        Ok(Self {
            pool,
            writers,
            schema,
            consumer_group: consumer_group.to_owned(),
            max_clock_skew,
            committed: std::sync::Mutex::default(),
        })
    }

    /// One attempt at the whole batch. `row_by_row` isolates each event under a savepoint, so
    /// a row the table refuses is rejected alone.
    async fn write_batch(&self, batch: &[SinkRecord], row_by_row: bool) -> Result<WriteOutcome, PostgresSinkError> {
        let mut tx = self.pool.begin().await?;
        // The batch's partitions and where it leaves each: one pass, for the lock and the update.
        let next = next_offsets(batch);
        let stored = self.lock_offsets(&mut tx, &next).await?;
        self.check_not_behind(&stored)?;
        // Looked up per record by borrowed topic, among the batch's few partitions: no copy of
        // the topic and no hash of it per event.
        let is_new = |record: &SinkRecord| {
            let next = stored
                .iter()
                .find(|((topic, partition), _)| *partition == record.partition && topic.as_str() == &*record.topic);
            record.offset >= next.map_or(0, |(_, offset)| *offset)
        };
        let mut fresh: Vec<(usize, &SinkRecord)> = batch.iter().enumerate().filter(|(_, r)| is_new(r)).collect();
        let mut outcome = WriteOutcome::all_accepted();
        if fresh.len() < batch.len() {
            debug!(replayed = batch.len() - fresh.len(), "Skipping events already in Postgres.");
            outcome.rejected = self.previous_rejections(&mut tx, batch, &is_new).await?;
        }

        let mut new_rejections: Vec<(usize, PostgresSinkError)> = Vec::new();
        if let Some(skew) = self.max_clock_skew {
            fresh.retain(|&(index, record)| match herald_sdk::check_clock_skew(record.event.instant(), skew) {
                Ok(()) => true,
                Err(ahead) => {
                    new_rejections.push((index, ahead.into()));
                    false
                }
            });
        }
        if row_by_row {
            for &(index, record) in &fresh {
                sqlx::query("SAVEPOINT herald_row").execute(&mut *tx).await?;
                match self.write_rows(&mut tx, &[record]).await {
                    Ok(()) => {
                        sqlx::query("RELEASE SAVEPOINT herald_row").execute(&mut *tx).await?;
                    }
                    Err(err) if herald_pg::classify(&err) == Failure::Row => {
                        sqlx::query("ROLLBACK TO SAVEPOINT herald_row").execute(&mut *tx).await?;
                        warn!(topic = %record.topic, partition = record.partition, offset = record.offset, error = %err, "Row rejected by the table.");
                        let hint = self.writers.iter().find_map(|writer| writer.refusal_hint(&err));
                        let refused = match hint {
                            Some(hint) => PostgresSinkError::RefusedByIndex { hint, source: err },
                            None => err.into(),
                        };
                        new_rejections.push((index, refused));
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        } else {
            let records: Vec<&SinkRecord> = fresh.iter().map(|&(_, record)| record).collect();
            self.write_rows(&mut tx, &records).await?;
        }

        if !new_rejections.is_empty() {
            self.record_rejections(&mut tx, batch, &new_rejections).await?;
        }
        self.store_offsets(&mut tx, &next).await?;
        tx.commit().await?;
        {
            let mut committed = self.committed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for &((topic, partition), offset) in &next {
                let at = committed.entry((topic.to_owned(), partition)).or_insert(offset);
                *at = (*at).max(offset);
            }
        }
        outcome
            .rejected
            .extend(new_rejections.into_iter().map(|(index, err)| Rejection { index, error: Box::new(err) }));
        Ok(outcome)
    }

    /// Why the pool had no connection to give (its own attempts say only that it timed out):
    /// one connection made here says it, a standby included.
    async fn why_no_connection(&self) -> PostgresSinkError {
        let options = self.pool.connect_options();
        match PgConnection::connect_with(&options).await {
            Err(err) => PostgresSinkError::Connect(err),
            Ok(mut conn) => {
                let standby: Result<bool, _> =
                    sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut conn).await;
                let _ = conn.close().await;
                match standby {
                    Ok(true) => PostgresSinkError::Standby,
                    Ok(false) => PostgresSinkError::Query(sqlx::Error::PoolTimedOut),
                    Err(err) => PostgresSinkError::Query(err),
                }
            }
        }
    }

    /// Whether the database's `stored` offsets are behind what this sink committed: then it lost
    /// commits, and the route must read again from where it stands (nothing of this batch is
    /// written; the transaction is dropped). What was committed is forgotten down to what the
    /// database holds, so the events written again count once.
    fn check_not_behind(&self, stored: &[((String, i32), i64)]) -> Result<(), PostgresSinkError> {
        let mut committed = self.committed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut behind = Vec::new();
        for (partition, stored) in stored {
            if let Some(written) = committed.get_mut(partition) {
                if *written > *stored {
                    behind.push((partition.0.clone(), partition.1, *stored, *written));
                    *written = *stored;
                }
            }
        }
        if behind.is_empty() {
            Ok(())
        } else {
            Err(PostgresSinkError::Behind { partitions: behind })
        }
    }

    async fn write_rows(&self, conn: &mut PgConnection, records: &[&SinkRecord]) -> Result<(), sqlx::Error> {
        for writer in &self.writers {
            writer.write(conn, records).await?;
        }
        Ok(())
    }

    /// Makes sure each partition of the batch (in `next`) has an offsets row, locks those rows
    /// (fencing any other writer of the same partitions until commit) and returns the next
    /// offsets to write.
    async fn lock_offsets(
        &self,
        conn: &mut PgConnection,
        next: &[((&str, i32), i64)],
    ) -> Result<Vec<((String, i32), i64)>, sqlx::Error> {
        let (topics, numbers): (Vec<&str>, Vec<i32>) = next.iter().map(|&(partition, _)| partition).unzip();
        let table = format!("{}.herald_offsets", self.schema);
        sqlx::query(&format!(
            "INSERT INTO {table} (consumer_group, topic, partition, next_offset)
             SELECT $1, u.topic, u.partition, 0 FROM UNNEST($2::text[], $3::int[]) AS u(topic, partition)
             ON CONFLICT DO NOTHING"
        ))
        .bind(&self.consumer_group)
        .bind(&topics)
        .bind(&numbers)
        .execute(&mut *conn)
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT topic, partition, next_offset FROM {table}
             WHERE consumer_group = $1 AND (topic, partition) IN (SELECT * FROM UNNEST($2::text[], $3::int[]))
             ORDER BY topic, partition FOR UPDATE"
        ))
        .bind(&self.consumer_group)
        .bind(&topics)
        .bind(&numbers)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(|row| Ok(((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?))).collect()
    }

    /// Moves each partition's offset past the batch (`next`, from [`next_offsets`]).
    async fn store_offsets(&self, conn: &mut PgConnection, next: &[((&str, i32), i64)]) -> Result<(), sqlx::Error> {
        let mut topics = Vec::new();
        let mut partitions = Vec::new();
        let mut offsets = Vec::new();
        for &((topic, partition), offset) in next {
            topics.push(topic);
            partitions.push(partition);
            offsets.push(offset);
        }
        sqlx::query(&format!(
            "UPDATE {}.herald_offsets AS o SET next_offset = GREATEST(o.next_offset, u.next_offset), updated_at = now()
             FROM UNNEST($2::text[], $3::int[], $4::bigint[]) AS u(topic, partition, next_offset)
             WHERE o.consumer_group = $1 AND o.topic = u.topic AND o.partition = u.partition",
            self.schema
        ))
        .bind(&self.consumer_group)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn record_rejections(
        &self,
        conn: &mut PgConnection,
        batch: &[SinkRecord],
        rejections: &[(usize, PostgresSinkError)],
    ) -> Result<(), sqlx::Error> {
        let mut topics = Vec::new();
        let mut partitions = Vec::new();
        let mut offsets = Vec::new();
        let mut reasons = Vec::new();
        for (index, err) in rejections {
            if let Some(record) = batch.get(*index) {
                topics.push(record.topic.to_string());
                partitions.push(record.partition);
                offsets.push(record.offset);
                reasons.push(herald_sdk::error_chain(err).join(": "));
            }
        }
        sqlx::query(&format!(
            "INSERT INTO {}.herald_rejections (consumer_group, topic, partition, \"offset\", reason, dead_letter_pending)
             SELECT $1, u.*, true FROM UNNEST($2::text[], $3::int[], $4::bigint[], $5::text[]) AS u
             ON CONFLICT DO NOTHING",
            self.schema
        ))
        .bind(&self.consumer_group)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .bind(&reasons)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// For replayed events, the ones the table refused whose dead letter is not acknowledged
    /// yet (a crash, or a route with no dead-letter topic): they are handed back as rejected,
    /// for the dead-letter topic. A refusal already dead-lettered counts as settled.
    async fn previous_rejections(
        &self,
        conn: &mut PgConnection,
        batch: &[SinkRecord],
        is_new: &impl Fn(&SinkRecord) -> bool,
    ) -> Result<Vec<Rejection>, sqlx::Error> {
        let replayed: Vec<(usize, &SinkRecord)> = batch.iter().enumerate().filter(|(_, r)| !is_new(r)).collect();
        let topics: Vec<&str> = replayed.iter().map(|(_, r)| &*r.topic).collect();
        let partitions: Vec<i32> = replayed.iter().map(|(_, r)| r.partition).collect();
        let offsets: Vec<i64> = replayed.iter().map(|(_, r)| r.offset).collect();
        let rows = sqlx::query(&format!(
            "SELECT topic, partition, \"offset\", reason FROM {}.herald_rejections
             WHERE consumer_group = $1 AND dead_letter_pending
               AND (topic, partition, \"offset\") IN (SELECT * FROM UNNEST($2::text[], $3::int[], $4::bigint[]))",
            self.schema
        ))
        .bind(&self.consumer_group)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .fetch_all(conn)
        .await?;
        let mut reasons: HashMap<(String, i32, i64), String> = HashMap::new();
        for row in rows {
            reasons.insert((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?), row.try_get(3)?);
        }
        Ok(replayed
            .into_iter()
            .filter_map(|(index, r)| {
                let reason = reasons.remove(&(r.topic.to_string(), r.partition, r.offset))?;
                Some(Rejection { index, error: Box::new(PreviouslyRejected { reason }) })
            })
            .collect())
    }

    /// Runs `sql`, a query of this sink's offsets taking the consumer group (`$1`) and
    /// `partitions` as arrays of topics (`$2`) and partition numbers (`$3`), and returning
    /// `(topic, partition, offset)` rows.
    async fn offsets_of(
        &self,
        sql: &str,
        partitions: &[(String, i32)],
    ) -> Result<Vec<((String, i32), i64)>, PostgresSinkError> {
        let (topics, numbers): (Vec<&str>, Vec<i32>) = partitions.iter().map(|(t, p)| (t.as_str(), *p)).unzip();
        let rows = sqlx::query(sql)
            .bind(&self.consumer_group)
            .bind(&topics)
            .bind(&numbers)
            .fetch_all(&self.pool)
            .await
            .map_err(PostgresSinkError::Query)?;
        rows.iter()
            .map(|row| Ok(((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(PostgresSinkError::Query)
    }
}

/// Refuses a connection that landed on a server in recovery (a standby: an endpoint not yet moved
/// to the new primary after a failover). herald never writes to one; the write is retried, as
/// for any destination that is not there yet.
async fn refuse_a_standby(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut *conn).await?;
    if standby {
        return Err(sqlx::Error::Io(std::io::Error::other(
            "the server is in recovery (a standby); herald writes only to a primary, and tries again",
        )));
    }
    Ok(())
}

/// One past the highest offset of each partition of `batch`, ordered by topic and partition (the
/// order rows are locked in).
fn next_offsets(batch: &[SinkRecord]) -> Vec<((&str, i32), i64)> {
    herald_sdk::next_offsets(batch.iter().map(|record| (&*record.topic, record.partition, record.offset)))
}

#[async_trait]
impl Sink for PostgresSink {
    /// Fields are read only through the record's event accessors, templates and
    /// `json_line`, straight from the payload: the runtime need not parse events.
    fn reads_fields(&self) -> bool {
        false
    }

    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(PostgresSinkError::Query)?;
        Ok(())
    }

    fn warnings(&self) -> Vec<String> {
        self.writers.iter().flat_map(|writer| writer.warnings()).collect()
    }

    async fn write(&mut self, batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
        if batch.is_empty() {
            return Ok(WriteOutcome::all_accepted());
        }
        match self.write_batch(batch, false).await {
            Ok(outcome) => Ok(outcome),
            Err(err) if err.failure() == Failure::Row => {
                debug!(error = %err, "Batch refused; writing it row by row to find the bad rows.");
                Ok(self.write_batch(batch, true).await?)
            }
            Err(PostgresSinkError::Query(sqlx::Error::PoolTimedOut)) => Err(self.why_no_connection().await.into()),
            Err(err) => Err(err.into()),
        }
    }

    /// Offsets are stored in the batch's transaction, with the rows.
    fn stores_offsets(&self) -> bool {
        true
    }

    async fn stored_offsets(&mut self, partitions: &[(String, i32)]) -> Result<Vec<((String, i32), i64)>, SinkError> {
        // A refusal whose dead letter is not acknowledged yet holds the partition back: the
        // route reads it again and this sink hands it back as rejected (`previous_rejections`).
        let sql = format!(
            "SELECT o.topic, o.partition, LEAST(o.next_offset, (
                 SELECT min(r.\"offset\") FROM {schema}.herald_rejections r
                 WHERE r.consumer_group = o.consumer_group AND r.topic = o.topic AND r.partition = o.partition
                   AND r.dead_letter_pending))
             FROM {schema}.herald_offsets o
             WHERE o.consumer_group = $1 AND (o.topic, o.partition) IN (SELECT * FROM UNNEST($2::text[], $3::int[]))",
            schema = self.schema
        );
        Ok(self.offsets_of(&sql, partitions).await?)
    }

    /// The database's stored offsets of every partition this sink committed, against what it
    /// committed: behind after a failover that lost commits (a partition whose row is gone
    /// stands at 0).
    async fn check_still_held(&mut self) -> Result<(), SinkError> {
        let partitions: Vec<(String, i32)> = {
            let committed = self.committed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            committed.keys().cloned().collect()
        };
        if partitions.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT p.topic, p.partition, coalesce(o.next_offset, 0)
             FROM UNNEST($2::text[], $3::int[]) AS p(topic, partition)
             LEFT JOIN {schema}.herald_offsets o
               ON o.consumer_group = $1 AND o.topic = p.topic AND o.partition = p.partition",
            schema = self.schema
        );
        let stored = self.offsets_of(&sql, &partitions).await?;
        Ok(self.check_not_behind(&stored)?)
    }

    async fn dead_letters_sent(&mut self, rejected: &[(String, i32, i64)]) -> Result<(), SinkError> {
        if rejected.is_empty() {
            return Ok(());
        }
        let (topics, (partitions, offsets)): (Vec<&str>, (Vec<i32>, Vec<i64>)) =
            rejected.iter().map(|(topic, partition, offset)| (topic.as_str(), (*partition, *offset))).unzip();
        sqlx::query(&format!(
            "UPDATE {}.herald_rejections SET dead_letter_pending = false
             WHERE consumer_group = $1 AND dead_letter_pending
               AND (topic, partition, \"offset\") IN (SELECT * FROM UNNEST($2::text[], $3::int[], $4::bigint[]))",
            self.schema
        ))
        .bind(&self.consumer_group)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .execute(&self.pool)
        .await
        .map_err(PostgresSinkError::Query)?;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        self.pool.close().await;
        Ok(())
    }

    /// A batch is one transaction with five round trips and a WAL flush besides its `COPY`: at
    /// 500 events those were a third of a backlog's drain time. 5,000 took the append from 0.55 to
    /// 0.74 of one `\copy` of the same rows (`herald-bench limit-postgres`, 2026-12-01), with
    /// a tenth of the commits on the database. Light traffic still writes what is there at once.
    fn default_max_events(&self) -> usize {
        5_000
    }
}

/// The settings are the plug-in; the binary registers the kind as
/// `&herald_sdk::Registered::<herald_sink_postgres::PostgresSinkConfig>::NEW`.
#[async_trait]
impl SinkPlugin for PostgresSinkConfig {
    const KIND: &'static str = crate::KIND;

    fn validate(&self) -> Result<(), BoxError> {
        Ok(self.check()?)
    }

    fn fields_named(&self) -> Vec<(&'static str, String)> {
        let Some(legacy) = &self.table else { return Vec::new() };
        legacy
            .columns
            .values()
            .filter(|field| !field.starts_with('$') && !field.is_empty())
            .map(|field| ("table.columns", field.clone()))
            .collect()
    }

    async fn build(&self, context: SinkContext<'_>) -> Result<Box<dyn Sink>, BoxError> {
        let setup = match context.purpose {
            Purpose::Run => Setup::Migrate,
            Purpose::Check => Setup::CheckOnly,
        };
        Ok(self.connect(context.route, context.consumer_group, setup).await?)
    }

    async fn migrate(&self, context: SinkContext<'_>) -> Result<Option<String>, BoxError> {
        self.migrate_tables(context.route).await?;
        Ok(Some(format!("schema `{}`", self.schema)))
    }
}
