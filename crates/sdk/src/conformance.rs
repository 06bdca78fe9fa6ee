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
//! 6. **A hostile event is data or a rejection, never a stop** ([`hostile_corpus`]): NUL and
//!    control characters, values of 100k characters and of 1 MB, URL, path and delimiter
//!    metacharacters, dot segments, empty strings, timestamps in year 1 and year 9999, numbers
//!    beyond `i64` and `f64`, in every field a sink may place somewhere. Each goes in a batch with
//!    an ordinary event after it: the write returns `Ok` (no error, nothing left unfinished: the
//!    destination is up, so a retry would be unbounded), the hostile event is either rejected or
//!    in the destination, and the ordinary one is in the destination. Nothing may panic. A
//!    newest-wins sink rejects the year-9999 event, which would otherwise pin its key.
//! 7. **A flaky destination drains** (when [`Harness::flaky`] gives one): a destination failing
//!    one request in N still takes every record of a batch written as several requests, at
//!    least once, within a bounded number of writes that each retry only what the last left
//!    unfinished.
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
    /// [`Replay::NewestWins`] — of every key, including keys made of hostile values.
    async fn delivered(&mut self) -> Result<Vec<i64>, BoxError>;
    /// A sink whose destination fails one request in `every` (through a proxy, or a receiver
    /// told to), for a kind that writes one batch as several requests; `None` (the default)
    /// for a kind that writes a batch as one request or one transaction.
    async fn flaky(&mut self, every: usize) -> Option<Result<Box<dyn Sink>, BoxError>> {
        let _ = every;
        None
    }
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

    // 6. A hostile event is data or a rejection.
    hostile(harness).await?;
    // 7. A flaky destination drains.
    flaky(harness).await
}

/// The hostile values every field is tried with, by name.
fn hostile_values() -> Vec<(&'static str, String)> {
    vec![
        ("NUL", "a\u{0}b".to_owned()),
        ("control characters", "\u{1b}[2J\u{1b}]0;owned\u{7}\r\n\t\u{7f}\u{9b}".to_owned()),
        ("100k characters", "x".repeat(100_000)),
        ("1 MB", "y".repeat(1 << 20)),
        ("URL metacharacters", "../../admin/delete?x=1&y=2#frag".to_owned()),
        ("delimiters", "a:b.c/d#rank %25 {source} *?[] ${HOME} $(id) `id`; |&".to_owned()),
        ("a dot segment", "..".to_owned()),
        ("an empty string", String::new()),
        ("bidirectional overrides and astral characters", "é✓\u{202e}𝄞\u{feff}".to_owned()),
        ("header injection", "x\r\nX-Injected: 1".to_owned()),
    ]
}

/// The hostile corpus: a label and an event per case. Events are numbered from 1000 by their
/// `records` field; each is its own key (`source`) unless `source` is the hostile field.
pub fn hostile_corpus() -> Vec<(String, SinkRecord)> {
    let mut corpus = Vec::new();
    let mut seq = 1000;
    let mut next = |change: &dyn Fn(&mut StageEvent)| {
        let mut record = record(seq);
        record.event.edit(|event| {
            event.source = format!("hostile{seq}");
            change(event);
        });
        seq += 2;
        record
    };
    for (name, value) in hostile_values() {
        for field in ["event", "stage", "source", "status", "lane"] {
            let record = next(&|event: &mut StageEvent| match field {
                "event" => event.event = value.clone(),
                "stage" => event.stage = value.clone(),
                "source" => event.source = value.clone(),
                "status" => event.status = value.clone(),
                _ => drop(event.extra.insert("lane".into(), value.clone().into())),
            });
            corpus.push((format!("{name} in `{field}`"), record));
        }
    }
    let year = |y: i32| {
        let at = chrono::NaiveDate::from_ymd_opt(y, 12, 31).and_then(|d| d.and_hms_opt(23, 59, 59));
        crate::event::EventTimestamp::from_instant(at.map_or(chrono::DateTime::UNIX_EPOCH, |at| at.and_utc()))
    };
    corpus.push(("a timestamp in year 1".into(), next(&|event| event.timestamp = year(1))));
    corpus.push(("a timestamp in year 9999".into(), next(&|event| event.timestamp = year(9999))));
    corpus.push((
        "numbers beyond i64 and f64".into(),
        next(&|event| {
            event.extra.insert("big".into(), serde_json::Value::from(u64::MAX));
            event.extra.insert("huge".into(), serde_json::Value::from(f64::MAX));
            event.extra.insert("tiny".into(), serde_json::Value::from(-f64::MIN_POSITIVE));
        }),
    ));
    corpus
}

/// Check 6: each hostile event, with an ordinary one after it.
async fn hostile(harness: &mut impl Harness) -> Result<(), ConformanceError> {
    let check = "a hostile event is data or a rejection";
    let fail = |problem: String| ConformanceError { check, problem };
    let mut sink = harness.sink().await.map_err(|e| fail(format!("building the sink: {e}")))?;
    let mut expected: Vec<(String, i64, bool)> = Vec::new();
    let newest_wins = harness.replay() == Replay::NewestWins;
    for (label, hostile) in hostile_corpus() {
        let seq = hostile.offset;
        let mut ordinary = record(seq + 1);
        ordinary.event.edit(|event| event.source = format!("ordinary{seq}"));
        let outcome = sink
            .write(&[hostile, ordinary])
            .await
            .map_err(|e| fail(format!("{label}: the write failed (it must reject the event instead): {e}")))?;
        if let Some(unfinished) = &outcome.unfinished {
            return Err(fail(format!(
                "{label}: records {:?} left unfinished: {}",
                unfinished.indexes, unfinished.error
            )));
        }
        let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
        if rejected.iter().any(|&index| index != 0) {
            return Err(fail(format!("{label}: rejected {rejected:?}, but only the hostile event (0) may be")));
        }
        if newest_wins && label.contains("year 9999") && rejected.is_empty() {
            return Err(fail(format!("{label}: accepted, and now pins its key (see `max_clock_skew`)")));
        }
        expected.push((label, seq, rejected.is_empty()));
    }
    sink.close().await.map_err(|e| fail(format!("close failed: {e}")))?;
    let held = harness.delivered().await.map_err(|e| fail(format!("reading back: {e}")))?;
    for (label, seq, written) in expected {
        if !held.contains(&(seq + 1)) {
            return Err(fail(format!("{label}: the ordinary event after it ({}) is not in the destination", seq + 1)));
        }
        if written != held.contains(&seq) {
            let what = if written { "accepted but is not in the destination" } else { "rejected but is in it" };
            return Err(fail(format!("{label}: the hostile event ({seq}) was {what}")));
        }
    }
    Ok(())
}

/// Check 7: a batch written through a destination failing one request in four drains.
async fn flaky(harness: &mut impl Harness) -> Result<(), ConformanceError> {
    let check = "a flaky destination drains";
    let fail = |problem: String| ConformanceError { check, problem };
    let Some(sink) = harness.flaky(4).await else { return Ok(()) };
    let mut sink = sink.map_err(|e| fail(format!("building the sink: {e}")))?;
    let batch: Vec<SinkRecord> = (3000..3040).map(record).collect();
    let mut pending = crate::sink::Pending::all(batch.len());
    let mut writes = 0;
    while !pending.is_empty() {
        writes += 1;
        if writes > 100 {
            return Err(fail(format!("{} records still unfinished after 100 writes", pending.len())));
        }
        let records = pending.records(&batch).into_owned();
        match sink.write(&records).await {
            Ok(outcome) => {
                let settled = pending.settle(outcome).map_err(|index| fail(format!("bad index {index}")))?;
                if !settled.rejected.is_empty() {
                    return Err(fail(format!("{} records rejected", settled.rejected.len())));
                }
            }
            Err(err) if err.is_retriable() => {}
            Err(err) => return Err(fail(format!("not retriable: {err}"))),
        }
    }
    let held = harness.delivered().await.map_err(|e| fail(format!("reading back: {e}")))?;
    let missing: Vec<i64> = (3000..3040).filter(|seq| !held.contains(seq)).collect();
    if !missing.is_empty() {
        return Err(fail(format!("after {writes} writes the destination lacks {missing:?}")));
    }
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
