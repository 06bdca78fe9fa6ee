//! The promises every sink keeps, checked against a real destination by a sink's own tests.
//!
//! A sink's test implements [`Harness`] (how to build the sink, how to read back what the
//! destination holds) and calls [`check`]. It checks, in order:
//!
//! 1. **`Ok` means visible**: after `write` returned `Ok`, the destination holds the whole batch.
//! 2. **A refused record is rejected alone**: it comes back in `WriteOutcome::rejected` with its
//!    index, and every other record of the batch is written.
//! 3. **A transient failure is retriable**: a write to an unreachable destination fails with an
//!    error whose `is_retriable()` is true (the runtime then retries the same batch, and a sink
//!    built while its destination is down is retried the same way).
//! 4. **A replayed batch keeps the stated guarantee**: the same records again (same topic,
//!    partition and offsets, as after a crash before the offsets were committed) leave the
//!    destination as [`Replay`] says.
//! 5. **Close flushes**: what was written before `close` is in the destination after it.
//!
//! Events are numbered by their `records` field, which is how [`Harness::delivered`] reports
//! them; each carries an extra field `lane = "a"` for sinks that need a field to template on.

use async_trait::async_trait;

use crate::event::StageEvent;
use crate::sink::{BoxError, Sink, SinkError, SinkRecord};

/// What a replayed batch leaves in the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Each event exactly once (offsets stored with the data, or deduplicated by the
    /// destination).
    ExactlyOnce,
    /// One value per key (the event's `source`), the newest event's.
    NewestWins,
    /// Each event at least once; readers deduplicate with the Kafka coordinates it carries.
    AtLeastOnce,
}

/// A sink under test and its destination.
#[async_trait]
pub trait Harness: Send {
    /// What the sink promises for a replayed batch.
    fn replay(&self) -> Replay;
    /// A sink writing to the harness's destination (several may be built; they share it).
    async fn sink(&mut self) -> Result<Box<dyn Sink>, BoxError>;
    /// Writes a batch to a destination of the same kind that cannot be reached (building the sink
    /// on the way, which may itself be what fails): the error that came back, or `Ok` if none did.
    /// `None` when the kind has no destination that can be down for a while (standard output).
    async fn write_unreachable(&mut self, batch: &[SinkRecord]) -> Option<Result<(), SinkError>>;
    /// `record` changed so that the destination refuses it (too long for a column, missing a
    /// field a template needs), or `None` when the sink cannot refuse a single record.
    fn refused(&self, record: SinkRecord) -> Option<SinkRecord>;
    /// The `records` numbers of the events the destination holds: every one for
    /// [`Replay::ExactlyOnce`] and [`Replay::AtLeastOnce`], the current one per key for
    /// [`Replay::NewestWins`].
    async fn delivered(&mut self) -> Result<Vec<i64>, BoxError>;
}

/// A promise the sink did not keep.
#[derive(Debug, thiserror::Error)]
#[error("sink conformance, {check}: {problem}")]
pub struct ConformanceError {
    /// Which promise.
    pub check: &'static str,
    /// What was seen instead.
    pub problem: String,
}

/// Event number `seq`: source `src<seq % 3>`, stage `conformance`, `records = seq`, a timestamp
/// `seq` seconds after a fixed instant, at offset `seq` of partition 0 of topic `conformance`.
pub fn record(seq: i64) -> SinkRecord {
    let base = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH + chrono::TimeDelta::days(20_600);
    let mut extra = serde_json::Map::new();
    extra.insert("lane".into(), "a".into());
    let event = StageEvent {
        event: "STAGE_COMPLETE".into(),
        stage: "conformance".into(),
        source: format!("src{}", seq.rem_euclid(3)),
        records: Some(seq),
        timestamp: crate::event::EventTimestamp::from_instant(base + chrono::TimeDelta::seconds(seq)),
        status: "SUCCESS".into(),
        extra,
    };
    SinkRecord { event: event.into(), topic: "conformance".into(), partition: 0, offset: seq, origin: None, raw: None }
}

/// Runs every check against `harness`; the first broken promise is the error.
pub async fn check(harness: &mut impl Harness) -> Result<(), ConformanceError> {
    let fail = |check: &'static str| move |problem: String| ConformanceError { check, problem };
    let replay = harness.replay();
    let mut sink = harness.sink().await.map_err(|e| fail("building the sink")(e.to_string()))?;
    let mut written: Vec<i64> = Vec::new();

    // 1. Ok means visible.
    let batch: Vec<SinkRecord> = (0..10).map(record).collect();
    let outcome = sink.write(&batch).await.map_err(|e| fail("Ok means visible")(format!("write failed: {e}")))?;
    if !outcome.rejected.is_empty() {
        return Err(fail("Ok means visible")(format!("{} good records rejected", outcome.rejected.len())));
    }
    written.extend(0..10);
    expect(harness, replay, &written, "Ok means visible").await?;

    // 2. A refused record is rejected alone.
    // The last record of the batch, so it is also the newest of its key: a newest-wins sink
    // that skips superseded records must still meet it.
    if let Some(bad) = harness.refused(record(19)) {
        let batch: Vec<SinkRecord> = (10..20).map(|seq| if seq == 19 { bad.clone() } else { record(seq) }).collect();
        let outcome = sink
            .write(&batch)
            .await
            .map_err(|e| fail("a refused record is rejected alone")(format!("write failed: {e}")))?;
        let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
        if rejected != [9] {
            return Err(fail("a refused record is rejected alone")(format!("rejected indexes {rejected:?}, not [9]")));
        }
        written.extend(10..19);
        expect(harness, replay, &written, "a refused record is rejected alone").await?;
    }

    // 3. A transient failure is retriable.
    match harness.write_unreachable(&[record(100)]).await {
        Some(Ok(_)) => {
            return Err(fail("a transient failure is retriable")("an unreachable destination accepted".into()))
        }
        Some(Err(err)) if !err.is_retriable() => {
            return Err(fail("a transient failure is retriable")(format!("not retriable: {err}")));
        }
        Some(Err(_)) | None => {}
    }

    // 4. A replayed batch keeps the stated guarantee.
    let batch: Vec<SinkRecord> = (0..10).map(record).collect();
    sink.write(&batch).await.map_err(|e| fail("a replay keeps the guarantee")(format!("write failed: {e}")))?;
    if replay == Replay::AtLeastOnce {
        written.extend(0..10);
    }
    expect(harness, replay, &written, "a replay keeps the guarantee").await?;

    // 5. Close flushes.
    let mut closing = harness.sink().await.map_err(|e| fail("building the sink")(e.to_string()))?;
    let batch: Vec<SinkRecord> = (20..25).map(record).collect();
    closing.write(&batch).await.map_err(|e| fail("close flushes")(format!("write failed: {e}")))?;
    closing.close().await.map_err(|e| fail("close flushes")(format!("close failed: {e}")))?;
    written.extend(20..25);
    expect(harness, replay, &written, "close flushes").await?;
    sink.close().await.map_err(|e| fail("close flushes")(format!("close failed: {e}")))?;
    Ok(())
}

/// Compares what the destination holds with what was written.
async fn expect(
    harness: &mut impl Harness,
    replay: Replay,
    written: &[i64],
    check: &'static str,
) -> Result<(), ConformanceError> {
    let mut held =
        harness.delivered().await.map_err(|e| ConformanceError { check, problem: format!("reading back: {e}") })?;
    held.sort_unstable();
    let mut wanted: Vec<i64> = match replay {
        Replay::ExactlyOnce | Replay::AtLeastOnce => written.to_vec(),
        // The newest (highest-numbered) event written per source.
        Replay::NewestWins => {
            (0..3).filter_map(|key| written.iter().copied().filter(|seq| seq % 3 == key).max()).collect()
        }
    };
    wanted.sort_unstable();
    if held != wanted {
        return Err(ConformanceError {
            check,
            problem: format!("the destination holds {held:?}, expected {wanted:?}"),
        });
    }
    Ok(())
}
