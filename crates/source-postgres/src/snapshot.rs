//! Starting from what the table holds: the latest row of each (source, stage) read in one
//! Postgres snapshot, and the rule that joins that snapshot to the stream without a gap or a
//! double.
//!
//! The capture (trigger or slot) is in place before the snapshot is taken, so every change the
//! snapshot does not see is captured. The stream then skips the changes of the transactions the
//! snapshot sees (their effect is in the snapshot) and publishes the others. The snapshot is
//! stored on the offsets topic in the same Kafka transaction as the rows read in it and the
//! first position, so a crash before that commit starts over, and one after it goes on
//! skipping the same transactions.

use std::time::Duration;

use herald_board::{compare, Board, Compared, Verdict};
use herald_kafka::reader::TopicReader;
use herald_kafka::KafkaProperties;
use herald_sdk::printable::{printable, LOG_CHARS};
use serde_json::{Map, Value};
use sqlx::{Connection, PgConnection};
use tracing::{info, warn};

use crate::error::SourceError;
use crate::instance::PostgresSource;
use crate::latest_rows::{read_latest, TableRow};
use crate::offsets::Checkpoint;
use crate::publisher::{Outgoing, Publisher};
use crate::rows::RowMapper;

/// Longest a resync may read the source's topic for its latest events.
const TOPIC_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// A Postgres snapshot (`pg_current_snapshot()`): the transactions whose effects it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Every transaction below it had ended.
    xmin: u64,
    /// No transaction from it on had started.
    xmax: u64,
    /// Transactions between the two still running, so not seen.
    running: Vec<u64>,
}

impl Snapshot {
    /// Parses `pg_snapshot`'s text form, `xmin:xmax:xip,xip`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let running = match parts.next()? {
            "" => Vec::new(),
            list => list.split(',').map(str::parse).collect::<Result<_, _>>().ok()?,
        };
        Some(Self { xmin, xmax, running })
    }

    /// The text form, as Postgres writes it.
    pub(crate) fn to_text(&self) -> String {
        let running: Vec<String> = self.running.iter().map(u64::to_string).collect();
        format!("{}:{}:{}", self.xmin, self.xmax, running.join(","))
    }

    /// Whether transaction `txid` (an `xid8`) had committed its effects into this snapshot.
    /// (Aborted transactions write no rows, so "ended" is "committed" for what is captured.)
    pub(crate) fn sees(&self, txid: u64) -> bool {
        txid < self.xmin || (txid < self.xmax && !self.running.contains(&txid))
    }

    /// [`Snapshot::sees`] for the WAL's 32-bit transaction id, placed in the epoch nearest the
    /// snapshot's (transactions streamed after it are within 2^31 of it).
    pub(crate) fn sees_xid(&self, xid: u32) -> bool {
        // The low 32 bits of xmax, by design of xid8.
        let offset = xid.wrapping_sub(self.xmax as u32) as i32;
        let txid = self.xmax.checked_add_signed(i64::from(offset));
        txid.is_some_and(|txid| self.sees(txid))
    }
}

impl Checkpoint for Snapshot {
    fn encode(&self, record: &mut Map<String, Value>) {
        record.insert("snapshot".into(), self.to_text().into());
    }

    fn decode(record: &Value) -> Option<Self> {
        Self::parse(record["snapshot"].as_str()?)
    }
}

/// Begins a read-only `REPEATABLE READ` transaction on `conn` and returns it with its
/// snapshot: every statement run in it sees exactly that snapshot.
pub(crate) async fn begin(
    conn: &mut PgConnection,
) -> Result<(sqlx::Transaction<'_, sqlx::Postgres>, Snapshot), SourceError> {
    let mut tx = conn.begin().await.map_err(SourceError::postgres("beginning the snapshot"))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(SourceError::postgres("beginning the snapshot"))?;
    let text: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(&mut *tx)
        .await
        .map_err(SourceError::postgres("taking the snapshot"))?;
    let snapshot = Snapshot::parse(&text)
        .ok_or_else(|| SourceError::Config { key: "(server)".into(), reason: format!("`{text}` is not a snapshot") })?;
    Ok((tx, snapshot))
}

impl PostgresSource {
    /// Reads the latest row of each (source, stage) in one snapshot (the capture is already in
    /// place) and publishes them with the snapshot and `position` in one Kafka transaction. With
    /// `against_topic` (a resync), only the rows the topic lacks or holds older or different
    /// are published. Returns the snapshot, whose transactions the stream then skips.
    pub(crate) async fn publish_snapshot(
        &self,
        kafka: &KafkaProperties,
        conn: &mut PgConnection,
        mapper: &RowMapper<'_>,
        publisher: &Publisher,
        position: &impl Checkpoint,
        against_topic: bool,
    ) -> Result<Snapshot, SourceError> {
        let (mut tx, snapshot) = begin(conn).await?;
        let (mut rows, mut unreadable) = (Vec::new(), Vec::new());
        read_latest(&mut tx, mapper, &mut |row| match row {
            Ok(row) => rows.push(row),
            Err(row) => unreadable.push(row),
        })
        .await?;
        for row in &unreadable {
            // Not published, and not lost silently: `herald reconcile` reports the pair too.
            warn!(
                source = mapper.name,
                pair_source = %printable(&row.source, LOG_CHARS),
                pair_stage = %printable(&row.stage, LOG_CHARS),
                reason = %row.reason,
                "The snapshot cannot publish this pair's latest row: it cannot become an event."
            );
        }
        tx.commit().await.map_err(SourceError::postgres("ending the snapshot"))?;
        let pairs = rows.len();
        let rows = if against_topic { self.lacking_in_topic(kafka, rows).await? } else { rows };
        let mut messages: Vec<Outgoing> = rows
            .iter()
            .filter(|row| !row.row.from_kafka)
            .filter_map(|row| row.row.columns())
            .filter_map(|row| mapper.message(&row, "snapshot", "snapshot", None))
            .collect();
        let published = messages.len();
        messages.push(publisher.offsets_record(crate::offsets::snapshot_key(mapper.name), &snapshot));
        publisher.publish(messages, position, &|message, error| mapper.too_large(message, error)).await?;
        info!(
            source = mapper.name,
            pairs,
            published,
            snapshot = %snapshot.to_text(),
            "Published the table's latest rows; changes the snapshot saw are not streamed again."
        );
        Ok(snapshot)
    }

    /// Of `rows` (the table's latest per pair), those the source's topic lacks, or holds older
    /// or different: the whole topic is read for its latest event per pair.
    async fn lacking_in_topic(
        &self,
        kafka: &KafkaProperties,
        rows: Vec<TableRow>,
    ) -> Result<Vec<TableRow>, SourceError> {
        let topic = Board::new();
        let read = async {
            let mut reader = TopicReader::open(
                kafka,
                std::slice::from_ref(&self.config.topic),
                chrono::DateTime::UNIX_EPOCH,
                "resync",
            )
            .await?;
            while !reader.history_done() {
                let Some(read) = reader.next().await? else { break };
                if let Some(event) = read.event.filter(|_| read.in_history) {
                    topic.apply(&event);
                }
            }
            Ok::<_, herald_kafka::reader::HistoryError>(())
        };
        let failed = |reason: String| SourceError::Replication { context: "resyncing", reason };
        match tokio::time::timeout(TOPIC_READ_TIMEOUT, read).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(failed(format!("reading `{}`: {err}", self.config.topic))),
            Err(_) => {
                return Err(failed(format!("reading `{}` took longer than {TOPIC_READ_TIMEOUT:?}", self.config.topic)))
            }
        }
        let table = Board::new();
        for row in &rows {
            table.apply(&row.event);
        }
        let (mut lacking, mut ahead) = (std::collections::BTreeSet::new(), Vec::new());
        for divergence in compare(&table.snapshot(), &topic.snapshot(), Compared::ALL) {
            let pair = (divergence.source, divergence.stage);
            match divergence.verdict {
                Verdict::TableOnly | Verdict::TableNewer | Verdict::Differs => {
                    lacking.insert(pair);
                }
                Verdict::TopicOnly | Verdict::TopicNewer => ahead.push(pair),
            }
        }
        if !ahead.is_empty() {
            // Not the source's to mend (it publishes the table, it does not write it), but never
            // passed over in silence: after a failover to a standby that was behind, these are
            // the rows the database lost although their events were published.
            let first: Vec<String> = ahead
                .iter()
                .take(3)
                .map(|(source, stage)| format!("{}/{}", printable(source, LOG_CHARS), printable(stage, LOG_CHARS)))
                .collect();
            warn!(
                source = self.name(),
                pairs = ahead.len(),
                first = %first.join(", "),
                "The topic holds newer events than the table for these pairs: rows the database no longer has \
                 (lost by a failover to a standby that was behind, or a restore), or events another producer \
                 published. `herald reconcile --source` lists them."
            );
        }
        Ok(rows
            .into_iter()
            .filter(|row| lacking.contains(&(row.event.source.clone(), row.event.stage.clone())))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_sees_what_ended_before_it_and_nothing_running_or_later() {
        let snapshot = Snapshot::parse("100:105:101,103").unwrap();
        assert_eq!(snapshot.to_text(), "100:105:101,103");
        let seen: Vec<u64> = (98..107).filter(|&txid| snapshot.sees(txid)).collect();
        assert_eq!(seen, [98, 99, 100, 102, 104]);
        assert!(snapshot.sees_xid(102) && !snapshot.sees_xid(103) && !snapshot.sees_xid(105));
        let empty = Snapshot::parse("7:7:").unwrap();
        assert!(empty.sees(6) && !empty.sees(7));
        assert!(Snapshot::parse("7").is_none() && Snapshot::parse("a:b:").is_none());
    }

    #[test]
    fn a_wal_xid_is_placed_in_the_snapshot_s_epoch() {
        // xmax just past a wraparound: epoch 1, low bits 10.
        let snapshot = Snapshot::parse(&format!("{}:{}:", (1u64 << 32) + 5, (1u64 << 32) + 10)).unwrap();
        assert!(snapshot.sees_xid(4), "epoch 1, below xmin");
        assert!(snapshot.sees_xid(u32::MAX), "the end of epoch 0");
        assert!(!snapshot.sees_xid(10) && !snapshot.sees_xid(11), "at and after xmax");
    }
}
