//! Settling against a scripted sink and dead-letter topic, with tokio's clock paused: the
//! backoff waits take no real time, and their lengths are measured on the paused clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::observe::Observer;
use crate::route::read::{prepare, ReadSettings};
use herald_sdk::sink::{Rejection, SinkError, SinkRecord, WriteOutcome};

/// What the scripted sink answers to one write.
enum Answer {
    /// Accepts all but these indexes.
    Reject(Vec<usize>),
    Retriable,
    Fatal,
}

/// A sink that answers from a script (then by its rules) and records every write.
#[derive(Default)]
struct ScriptedSink {
    script: VecDeque<Answer>,
    /// The `records` field of each event, per write, in the order written.
    writes: Arc<Mutex<Vec<Vec<i64>>>>,
    /// Events (by `records`) that fail any write that holds them, retriably: poison.
    poison: Vec<i64>,
    /// Every write fails retriably while set: the destination is down.
    down: Arc<AtomicBool>,
    /// The healthcheck fails while set.
    unhealthy: Arc<AtomicBool>,
    /// Each event is one request, and every `n`th request fails: the rest of the write is
    /// left unfinished.
    fail_every: Option<usize>,
    requests: usize,
    /// Whether it claims to store offsets with its data.
    stores: bool,
    /// What happened, in order: `write [..]` and `letter <offset>`, shared with `Letters`.
    log: Arc<Mutex<Vec<String>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("scripted: {0}")]
struct Scripted(&'static str);

#[async_trait]
impl Sink for ScriptedSink {
    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        if self.unhealthy.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(SinkError::Retriable(Box::new(Scripted("healthcheck: no answer"))));
        }
        Ok(())
    }

    fn stores_offsets(&self) -> bool {
        self.stores
    }

    async fn write(&mut self, batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
        let numbers: Vec<i64> = batch.iter().map(|r| r.event.records.unwrap_or(-1)).collect();
        self.writes.lock().unwrap().push(numbers.clone());
        match self.script.pop_front() {
            None => {}
            Some(Answer::Reject(indexes)) => {
                self.log.lock().unwrap().push(format!("write {numbers:?}"));
                return Ok(WriteOutcome {
                    rejected: indexes
                        .into_iter()
                        .map(|index| Rejection { index, error: Box::new(Scripted("refused")) })
                        .collect(),
                    unfinished: None,
                });
            }
            Some(Answer::Retriable) => return Err(SinkError::Retriable(Box::new(Scripted("busy")))),
            Some(Answer::Fatal) => return Err(SinkError::Fatal(Box::new(Scripted("no such table")))),
        }
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(SinkError::Retriable(Box::new(Scripted("connection refused"))));
        }
        if numbers.iter().any(|n| self.poison.contains(n)) {
            return Err(SinkError::Retriable(Box::new(Scripted("timed out"))));
        }
        if let Some(every) = self.fail_every {
            for index in 0..batch.len() {
                self.requests += 1;
                if self.requests.is_multiple_of(every) {
                    let delivered = numbers[..index].to_vec();
                    self.log.lock().unwrap().push(format!("write {delivered:?}"));
                    return WriteOutcome::partial(
                        batch.len(),
                        Vec::new(),
                        (index..batch.len()).collect(),
                        Box::new(Scripted("503")),
                    );
                }
            }
        }
        self.log.lock().unwrap().push(format!("write {numbers:?}"));
        Ok(WriteOutcome::all_accepted())
    }
}

/// A dead-letter topic that keeps (partition, offset, stage) of each letter, or fails.
#[derive(Default)]
struct Letters {
    sent: Mutex<Vec<(i32, i64, FailedStage)>>,
    /// The error kind and reason of each letter.
    reasons: Mutex<Vec<(String, String)>>,
    failing: bool,
    log: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl DeadLetters for Letters {
    fn topic(&self) -> &str {
        "dlq"
    }

    async fn send_all(&self, letters: &[DeadLetter]) -> Result<(), KafkaError> {
        if self.failing {
            return Err(KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut));
        }
        let mut sent = self.sent.lock().unwrap();
        sent.extend(letters.iter().map(|l| (l.message.partition(), l.message.offset(), l.stage)));
        self.reasons.lock().unwrap().extend(letters.iter().map(|l| (l.error_kind.clone(), l.reason())));
        self.log.lock().unwrap().extend(letters.iter().map(|l| format!("letter {}", l.message.offset())));
        Ok(())
    }
}

/// A route retrying from 1 s up to 8 s, with `extra` settings (TOML lines of `[[route]]`).
fn route(extra: &str) -> RouteConfig {
    let retry =
        if extra.contains("retry =") { "" } else { "retry = { initial_backoff = \"1s\", max_backoff = \"8s\" }" };
    let text = format!("[[route]]\nname = \"r\"\ntopics = [\"t\"]\nsink = {{ type = \"stdout\" }}\n{retry}\n{extra}");
    crate::config::testing::route(&text)
}

fn stats() -> Arc<RouteShared> {
    Observer::new().unwrap().route("r")
}

/// A stage event at `partition`/`offset` whose `records` field is `records`.
fn event(partition: i32, offset: i64, records: i64, status: &str) -> FetchedMessage {
    let json = format!(
        r#"{{"event":"STAGE_COMPLETE","stage":"s","source":"S{records}","records":{records},"timestamp":"2026-11-26T10:15:00","status":"{status}"}}"#
    );
    message(partition, offset, json.as_bytes())
}

fn message(partition: i32, offset: i64, payload: &[u8]) -> FetchedMessage {
    FetchedMessage::test(partition, offset, payload)
}

async fn settle(
    route: &RouteConfig,
    sink: &mut ScriptedSink,
    letters: Option<&Letters>,
    stats: &RouteShared,
    messages: &[FetchedMessage],
    cancel: &CancellationToken,
) -> Result<Option<NextOffsets>, RouteError> {
    let mut delivery = Delivery { route, sink, dead_letters: letters.map(|l| l as &dyn DeadLetters), stats };
    let mut batch: Vec<FetchedMessage> = messages.iter().map(|m| FetchedMessage::from(m.to_owned_message())).collect();
    let reading = ReadSettings {
        max_message_bytes: route.max_message_bytes,
        parse_now: true,
        keys_and_headers: true,
        lineage: false,
    };
    let prepared = prepare(route, &mut batch, reading);
    delivery.deliver(&batch, prepared, cancel).await
}

fn offsets(entries: &[(i32, i64)]) -> NextOffsets {
    entries.iter().map(|&(partition, offset)| (("t".to_owned(), partition), offset)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_written_batch_gives_one_past_the_last_offset_of_each_partition() {
    let (route, stats, mut sink) = (route(""), stats(), ScriptedSink::default());
    let messages = [event(0, 10, 1, "SUCCESS"), event(1, 5, 2, "SUCCESS"), event(0, 11, 3, "SUCCESS")];
    let settled = settle(&route, &mut sink, None, &stats, &messages, &CancellationToken::new()).await.unwrap();
    assert_eq!(settled, Some(offsets(&[(0, 12), (1, 6)])));
    assert_eq!(*sink.writes.lock().unwrap(), [vec![1, 2, 3]], "one write, in batch order");
    assert_eq!((stats.consumed.get(), stats.delivered.get()), (3, 3));
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_growing_backoff_and_then_the_offsets_move() {
    let (route, stats) = (route(""), stats());
    let mut sink = ScriptedSink {
        script: [Answer::Retriable, Answer::Retriable, Answer::Retriable].into(),
        ..ScriptedSink::default()
    };
    let started = Instant::now();
    let settled =
        settle(&route, &mut sink, None, &stats, &[event(0, 0, 7, "SUCCESS")], &CancellationToken::new()).await;
    assert_eq!(settled.unwrap(), Some(offsets(&[(0, 1)])));
    assert_eq!(sink.writes.lock().unwrap().len(), 4, "three failures, then the write that took");
    // Exponential from 1 s with jitter (each delay between d and 2d): 1+2+4 s at least,
    // 2+4+8 s at most. The clock is paused: no real second passed.
    let waited = started.elapsed();
    assert!((Duration::from_secs(7)..=Duration::from_secs(14)).contains(&waited), "waited {waited:?}");
    assert_eq!(stats.retries.get(), 3);
    let state = stats.state();
    assert_eq!(state.status, "running", "back to running once the write took");
    assert!(state.last_error.unwrap().contains("busy"));
}

#[tokio::test(start_paused = true)]
async fn when_retries_run_out_or_the_failure_is_fatal_no_offset_moves() {
    let stats = stats();
    let limited = route("retry = { initial_backoff = \"1s\", max_retries = 2 }");
    let mut always_busy =
        ScriptedSink { script: (0..10).map(|_| Answer::Retriable).collect(), ..ScriptedSink::default() };
    let cancel = CancellationToken::new();
    let messages = [event(0, 0, 1, "SUCCESS")];
    match settle(&limited, &mut always_busy, None, &stats, &messages, &cancel).await {
        Err(RouteError::RetriesExhausted { retries: 2, .. }) => {}
        other => panic!("expected RetriesExhausted after 2 retries, got {other:?}"),
    }
    assert_eq!(always_busy.writes.lock().unwrap().len(), 3);

    let mut fatal = ScriptedSink { script: [Answer::Fatal].into(), ..ScriptedSink::default() };
    match settle(&route(""), &mut fatal, None, &stats, &messages, &cancel).await {
        Err(RouteError::Sink(SinkError::Fatal(_))) => {}
        other => panic!("expected a fatal sink error, got {other:?}"),
    }
    assert_eq!(fatal.writes.lock().unwrap().len(), 1, "a fatal failure is not retried");
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_backoff_stores_nothing() {
    let (route, stats) = (route(""), stats());
    let mut sink = ScriptedSink { script: (0..100).map(|_| Answer::Retriable).collect(), ..ScriptedSink::default() };
    let cancel = CancellationToken::new();
    let cancel_later = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        cancel_later.cancel();
    });
    let settled = settle(&route, &mut sink, None, &stats, &[event(0, 0, 1, "SUCCESS")], &cancel).await;
    assert_eq!(settled.unwrap(), None, "cancelled mid-retry: the batch is read again");
    let writes = sink.writes.lock().unwrap().len();
    assert!((2..=4).contains(&writes), "{writes} writes in 5 s of backoff from 1 s");
}

#[tokio::test(start_paused = true)]
async fn malformed_and_refused_messages_are_dead_lettered_and_the_rest_written() {
    let (route, stats) = (route(""), stats());
    let letters = Letters::default();
    // Records [1, 3, 4]; the sink refuses its second record (offset 3).
    let mut sink = ScriptedSink { script: [Answer::Reject(vec![1])].into(), ..ScriptedSink::default() };
    let messages = [
        event(0, 0, 1, "SUCCESS"),
        message(0, 1, b"{not json"),
        message(0, 2, b""),
        event(0, 3, 3, "SUCCESS"),
        event(0, 4, 4, "SUCCESS"),
    ];
    let settled = settle(&route, &mut sink, Some(&letters), &stats, &messages, &CancellationToken::new()).await;
    assert_eq!(settled.unwrap(), Some(offsets(&[(0, 5)])), "the whole batch is settled");
    assert_eq!(*sink.writes.lock().unwrap(), [vec![1, 3, 4]]);
    let sent = letters.sent.lock().unwrap().clone();
    assert_eq!(sent, [(0, 1, FailedStage::Parse), (0, 2, FailedStage::Parse), (0, 3, FailedStage::Sink)]);
    assert_eq!((stats.delivered.get(), stats.dead_lettered.get()), (2, 3));
}

#[tokio::test(start_paused = true)]
async fn without_a_dead_letter_topic_a_malformed_message_stops_the_route_before_any_write() {
    let (route, stats, mut sink) = (route(""), stats(), ScriptedSink::default());
    let messages = [event(0, 0, 1, "SUCCESS"), message(0, 1, b"[1,2]"), event(0, 2, 2, "SUCCESS")];
    match settle(&route, &mut sink, None, &stats, &messages, &CancellationToken::new()).await {
        Err(RouteError::Undeliverable { partition: 0, offset: 1, .. }) => {}
        other => panic!("expected Undeliverable at offset 1, got {other:?}"),
    }
    assert!(sink.writes.lock().unwrap().is_empty(), "nothing written: the batch is read again once fixed");

    // A refusal with no dead-letter topic also stops the route, after the write.
    let mut refusing = ScriptedSink { script: [Answer::Reject(vec![0])].into(), ..ScriptedSink::default() };
    match settle(&route, &mut refusing, None, &stats, &messages[..1], &CancellationToken::new()).await {
        Err(RouteError::Undeliverable { offset: 0, .. }) => {}
        other => panic!("expected Undeliverable at offset 0, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_topic_that_fails_or_a_bad_rejection_index_moves_no_offset() {
    let (route, stats) = (route(""), stats());
    let failing = Letters { failing: true, ..Letters::default() };
    let mut sink = ScriptedSink::default();
    let messages = [message(0, 0, b"nope"), event(0, 1, 1, "SUCCESS")];
    match settle(&route, &mut sink, Some(&failing), &stats, &messages, &CancellationToken::new()).await {
        Err(RouteError::DeadLetter { topic, .. }) => assert_eq!(topic, "dlq"),
        other => panic!("expected a dead-letter error, got {other:?}"),
    }

    let mut confused = ScriptedSink { script: [Answer::Reject(vec![5])].into(), ..ScriptedSink::default() };
    let letters = Letters::default();
    match settle(&route, &mut confused, Some(&letters), &stats, &messages[1..], &CancellationToken::new()).await {
        Err(RouteError::BadRejectionIndex { index: 5, batch: 1 }) => {}
        other => panic!("expected BadRejectionIndex, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn filtered_events_are_skipped_but_their_offsets_move() {
    let (route, stats, mut sink) = (route("filter = { status = \"FAILED\" }"), stats(), ScriptedSink::default());
    let messages = [event(0, 0, 1, "SUCCESS"), event(0, 1, 2, "FAILED"), event(0, 2, 3, "SUCCESS")];
    let settled = settle(&route, &mut sink, None, &stats, &messages, &CancellationToken::new()).await;
    assert_eq!(settled.unwrap(), Some(offsets(&[(0, 3)])));
    assert_eq!(*sink.writes.lock().unwrap(), [vec![2]]);
    assert_eq!(stats.skipped.get(), 2);

    // A batch the filter empties writes nothing and still settles.
    let settled = settle(&route, &mut sink, None, &stats, &messages[..1], &CancellationToken::new()).await;
    assert_eq!(settled.unwrap(), Some(offsets(&[(0, 1)])));
    assert_eq!(sink.writes.lock().unwrap().len(), 1);
}

/// Six events at offsets 0..6 of partition 0, numbered 1..=6.
fn six() -> Vec<FetchedMessage> {
    (0..6).map(|offset| event(0, offset, offset + 1, "SUCCESS")).collect()
}

/// Every event number the sink accepted, in the order accepted (from its log).
fn accepted(log: &Mutex<Vec<String>>) -> Vec<i64> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|line| line.strip_prefix("write "))
        .flat_map(|list| {
            list.trim_matches(['[', ']']).split(", ").filter(|n| !n.is_empty()).map(|n| n.parse::<i64>().unwrap())
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn only_what_a_write_left_unfinished_is_written_again_so_a_flaky_destination_drains() {
    let (route, stats) = (route("retry = { initial_backoff = \"10ms\", max_backoff = \"1s\" }"), stats());
    // Every fourth request fails, and every event is a request: whole-batch retries would
    // never get 60 events through; retrying only the rest does.
    let mut sink = ScriptedSink { fail_every: Some(4), ..ScriptedSink::default() };
    let log = Arc::clone(&sink.log);
    let messages: Vec<FetchedMessage> = (0..60).map(|offset| event(0, offset, offset + 1, "SUCCESS")).collect();
    let settled = settle(&route, &mut sink, None, &stats, &messages, &CancellationToken::new()).await.unwrap();
    assert_eq!(settled, Some(offsets(&[(0, 60)])));
    assert_eq!(accepted(&log), (1..=60).collect::<Vec<_>>(), "each event once, in order");
    assert_eq!(stats.delivered.get(), 60);
    assert_eq!(stats.state().status, "running");
}

#[tokio::test(start_paused = true)]
async fn a_record_failing_alone_while_the_sink_answers_is_dead_lettered_and_the_rest_flows() {
    let route = route("retry = { initial_backoff = \"10ms\", max_backoff = \"1s\", poison_after = 3 }");
    let (stats, mut letters) = (stats(), Letters::default());
    let mut sink = ScriptedSink { poison: vec![3], ..ScriptedSink::default() };
    let log = Arc::clone(&sink.log);
    letters.log = Arc::clone(&log);
    let settled = settle(&route, &mut sink, Some(&letters), &stats, &six(), &CancellationToken::new()).await;
    assert_eq!(settled.unwrap(), Some(offsets(&[(0, 6)])));
    assert_eq!(accepted(&log), [1, 2, 4, 5, 6], "the others once each, in order");
    assert_eq!(*letters.sent.lock().unwrap(), [(0, 2, FailedStage::Sink)]);
    let (kind, reason) = letters.reasons.lock().unwrap()[0].clone();
    assert_eq!(kind, "PoisonRecord");
    assert!(reason.contains("failed alone 3 times") && reason.contains("timed out"), "{reason}");
    assert_eq!((stats.isolated.get(), stats.delivered.get(), stats.dead_lettered.get()), (1, 5, 1));
    let state = stats.state();
    assert_eq!(state.isolated, 1);
    assert!(state.last_isolated.unwrap().starts_with("t[0]@2: "));
    // Suspected, then judged once a record after it was accepted.
    let log = log.lock().unwrap().clone();
    let letter = log.iter().position(|line| line == "letter 2").unwrap();
    assert_eq!(log[letter - 1], "write [4, 5, 6]", "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn poison_is_found_at_either_end_of_a_batch_and_in_pairs() {
    for poison in [vec![1], vec![6], vec![3, 4], vec![1, 2, 3, 4, 5]] {
        let route = route("retry = { initial_backoff = \"10ms\", max_backoff = \"1s\", poison_after = 2 }");
        let (stats, letters) = (stats(), Letters::default());
        let mut sink = ScriptedSink { poison: poison.clone(), ..ScriptedSink::default() };
        let log = Arc::clone(&sink.log);
        let settled = settle(&route, &mut sink, Some(&letters), &stats, &six(), &CancellationToken::new()).await;
        assert_eq!(settled.unwrap(), Some(offsets(&[(0, 6)])), "{poison:?}");
        let kept: Vec<i64> = (1..=6).filter(|n| !poison.contains(n)).collect();
        assert_eq!(accepted(&log), kept, "{poison:?}");
        let dead: Vec<i64> = letters.sent.lock().unwrap().iter().map(|&(_, offset, _)| offset + 1).collect();
        assert_eq!(dead, poison, "dead-lettered in order");
    }
}

#[tokio::test(start_paused = true)]
async fn while_the_destination_is_down_nothing_is_dead_lettered() {
    let route = route("retry = { initial_backoff = \"10ms\", max_backoff = \"100ms\", poison_after = 2 }");
    let (stats, letters) = (stats(), Letters::default());
    let mut sink = ScriptedSink::default();
    sink.down.store(true, std::sync::atomic::Ordering::Relaxed);
    sink.unhealthy.store(true, std::sync::atomic::Ordering::Relaxed);
    let (down, unhealthy, log) = (Arc::clone(&sink.down), Arc::clone(&sink.unhealthy), Arc::clone(&sink.log));
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        down.store(false, std::sync::atomic::Ordering::Relaxed);
        unhealthy.store(false, std::sync::atomic::Ordering::Relaxed);
    });
    let settled = settle(&route, &mut sink, Some(&letters), &stats, &six(), &CancellationToken::new()).await;
    assert_eq!(settled.unwrap(), Some(offsets(&[(0, 6)])));
    assert!(letters.sent.lock().unwrap().is_empty());
    assert_eq!(accepted(&log), (1..=6).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn when_every_record_fails_none_is_given_up_until_each_failed_alone_again() {
    // A healthcheck that passes while every write fails: no record after a suspect is ever
    // accepted, so none is dead-lettered in the first round, and the records are tried again
    // in order.
    let route = route("retry = { initial_backoff = \"10ms\", max_backoff = \"100ms\", poison_after = 2 }");
    let (stats, letters) = (stats(), Letters::default());
    let mut sink = ScriptedSink::default();
    sink.down.store(true, std::sync::atomic::Ordering::Relaxed);
    let (writes, log) = (Arc::clone(&sink.writes), Arc::clone(&sink.log));
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let watched = Arc::clone(&writes);
    tokio::spawn(async move {
        // Stop once the first round is over: the first record tried alone a third time.
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if watched.lock().unwrap().iter().filter(|w| **w == [1]).count() >= 3 {
                stop.cancel();
                return;
            }
        }
    });
    let settled = settle(&route, &mut sink, Some(&letters), &stats, &six(), &cancel).await;
    assert_eq!(settled.unwrap(), None, "cancelled: nothing stored");
    assert!(letters.sent.lock().unwrap().is_empty(), "{:?}", letters.sent.lock().unwrap());
    assert!(accepted(&log).is_empty());
    let alone: Vec<i64> = writes.lock().unwrap().iter().filter(|w| w.len() == 1).map(|w| w[0]).collect::<Vec<_>>();
    let first_round: Vec<i64> = alone.iter().copied().take(12).collect();
    assert_eq!(first_round, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6], "each alone, in order: {alone:?}");
}

#[tokio::test(start_paused = true)]
async fn a_sink_storing_offsets_never_gets_a_record_past_an_unsettled_one() {
    let route = route("retry = { initial_backoff = \"10ms\", max_backoff = \"1s\", poison_after = 3 }");
    let (stats, mut letters) = (stats(), Letters::default());
    let mut sink = ScriptedSink { poison: vec![3], stores: true, ..ScriptedSink::default() };
    letters.log = Arc::clone(&sink.log);
    let settled = settle(&route, &mut sink, Some(&letters), &stats, &six(), &CancellationToken::new()).await;
    assert_eq!(settled.unwrap(), Some(offsets(&[(0, 6)])));
    let log = sink.log.lock().unwrap().clone();
    assert_eq!(log, ["write [1]", "write [2]", "letter 2", "write [4, 5, 6]"], "dead letter acknowledged first");
}

#[tokio::test(start_paused = true)]
async fn a_lone_record_is_judged_by_the_healthcheck_and_without_a_dead_letter_topic_the_route_stops() {
    let never =
        route("retry = { initial_backoff = \"10ms\", max_backoff = \"1s\", poison_after = 0, max_retries = 20 }");
    let route = route("retry = { initial_backoff = \"10ms\", max_backoff = \"1s\", poison_after = 3 }");
    let (stats, letters) = (stats(), Letters::default());
    let mut sink = ScriptedSink { poison: vec![7], ..ScriptedSink::default() };
    let lone = [event(0, 9, 7, "SUCCESS")];
    let settled = settle(&route, &mut sink, Some(&letters), &stats, &lone, &CancellationToken::new()).await;
    assert_eq!(settled.unwrap(), Some(offsets(&[(0, 10)])));
    assert_eq!(*letters.sent.lock().unwrap(), [(0, 9, FailedStage::Sink)]);
    assert_eq!(sink.writes.lock().unwrap().len(), 3, "three failures alone");

    let mut sink = ScriptedSink { poison: vec![7], ..ScriptedSink::default() };
    match settle(&route, &mut sink, None, &stats, &lone, &CancellationToken::new()).await {
        Err(RouteError::Undeliverable { offset: 9, reason, .. }) => {
            assert!(reason.contains("failed alone"), "{reason}")
        }
        other => panic!("expected Undeliverable, got {other:?}"),
    }
    // `poison_after = 0`: never given up.
    let mut sink = ScriptedSink { poison: vec![7], ..ScriptedSink::default() };
    match settle(&never, &mut sink, Some(&letters), &stats, &lone, &CancellationToken::new()).await {
        Err(RouteError::RetriesExhausted { retries: 20, .. }) => {}
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn hostile_payloads_are_dead_lettered_as_unparsable_and_the_rest_written() {
    // Valid or near-valid JSON a careless or hostile producer sends, each between good events.
    let hostile: [&[u8]; 9] = [
        br#"{"event":"E","stage":"s","source":"\ud800","timestamp":"2026-11-26T10:15:00","status":"S"}"#,
        br#"{"event":"E","stage":"s","source":"A","records":9223372036854775808,"timestamp":"2026-11-26T10:15:00","status":"S"}"#,
        br#"{"event":"E","stage":"s","source":"A","records":1e400,"timestamp":"2026-11-26T10:15:00","status":"S"}"#,
        br#"{"event":"E","stage":"s","source":"A","timestamp":"+275760-09-13T00:00:00","status":"S"}"#,
        br#"{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:15:00","status":"S","x":1e400}"#,
        br#"{"event":"E","stage":"s","source":null,"timestamp":"2026-11-26T10:15:00","status":"S"}"#,
        b"\xef\xbb\xbf{\"event\":\"E\"}",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        br#"{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:15:00","status":"S","event":"dup"}"#,
    ];
    let (route, stats, letters) = (route(""), stats(), Letters::default());
    let mut sink = ScriptedSink::default();
    let mut messages = vec![event(0, 0, 1, "SUCCESS")];
    for (offset, payload) in (1..).zip(hostile) {
        messages.push(message(0, offset, payload));
    }
    messages.push(event(0, 10, 2, "SUCCESS"));
    let settled = settle(&route, &mut sink, Some(&letters), &stats, &messages, &CancellationToken::new()).await;
    assert_eq!(settled.unwrap(), Some(offsets(&[(0, 11)])));
    assert_eq!(*sink.writes.lock().unwrap(), [vec![1, 2]], "the good events, once");
    let dead: Vec<i64> = letters.sent.lock().unwrap().iter().map(|&(_, offset, _)| offset).collect();
    assert_eq!(dead, (1..=9).collect::<Vec<_>>(), "every hostile payload, in order");
}

#[tokio::test(start_paused = true)]
async fn the_tap_shows_each_message_with_its_outcome_delivered_skipped_dead_lettered_retried() {
    let route = route(
        "filter = { status = \"SUCCESS\" }\nretry = { initial_backoff = \"10ms\", max_backoff = \"1s\", poison_after = 3 }",
    );
    let (stats, letters) = (stats(), Letters::default());
    let mut watch = stats.tap.watch(1_000, None);
    let mut sink = ScriptedSink { poison: vec![3], ..ScriptedSink::default() };
    let messages = [
        event(0, 0, 1, "SUCCESS"),
        message(0, 1, b"{nope"),
        event(0, 2, 2, "FAILED"),
        event(0, 3, 3, "SUCCESS"),
        event(0, 4, 4, "SUCCESS"),
    ];
    let settled = settle(&route, &mut sink, Some(&letters), &stats, &messages, &CancellationToken::new()).await;
    assert_eq!(settled.unwrap(), Some(offsets(&[(0, 5)])));
    let mut by_offset: BTreeMap<i64, Vec<&'static str>> = BTreeMap::new();
    while let Some(tapped) = watch.try_recv() {
        assert_eq!((&*tapped.topic, tapped.partition), ("t", 0));
        by_offset.entry(tapped.offset).or_default().push(tapped.outcome.as_str());
        if tapped.offset == 1 {
            assert!(tapped.error.as_deref().is_some_and(|e| !e.is_empty()), "a dead letter says why: {tapped:?}");
            assert_eq!(tapped.event.as_deref(), Some("{nope"));
        }
    }
    let last = |offset: i64| by_offset.get(&offset).and_then(|outcomes| outcomes.last().copied());
    assert_eq!(last(0), Some("delivered"));
    assert_eq!(by_offset[&1], ["dead_lettered"], "unparsable");
    assert_eq!(by_offset[&2], ["skipped"], "the filter");
    assert!(by_offset[&3].contains(&"retried"), "{by_offset:?}");
    assert_eq!(last(3), Some("dead_lettered"), "poison, after its retries");
    assert_eq!(last(4), Some("delivered"));
    assert!(!by_offset[&4].contains(&"dead_lettered") && !by_offset[&0].contains(&"dead_lettered"));
    assert_eq!(watch.missed(), 0);
}
