//! Writing one batch until every record is settled: accepted, rejected, or isolated as poison.
//!
//! Every failure is classified by its cause. A record the sink refuses is its own fault and is
//! rejected alone (the sink says so). A destination that fails for a while is retried with
//! backoff, and a sink that wrote part of the batch says which records are left
//! ([`herald_sdk::Unfinished`]), so only those are written again: a steadily flaky destination
//! still drains. What remains is the record that fails *retriably* every time while the
//! destination answers — a sink's misjudgement, or a destination's — which would otherwise
//! hold the route forever. So:
//!
//! 1. A piece that fails twice in a row is split in halves, in order, down to single records;
//!    the halves that pass are settled on the way.
//! 2. A record that failed alone `retry.poison_after` times is a suspect if the sink's
//!    healthcheck passes (if it fails, the destination is down: keep retrying, as for any batch).
//! 3. A suspect is dead-lettered when a record after it is then accepted: the destination takes
//!    other records, just not this one. Suspects are set aside meanwhile; if every record left
//!    fails too, the destination is at fault after all, and they are written again in order,
//!    judged this time by the healthcheck alone (so a batch of nothing but poison cannot hold
//!    the route either). A sink that stores offsets with its data would count records set aside
//!    as delivered, so for it, and for the last record of a batch, the healthcheck alone decides.
//!
//! The healthcheck is what tells a poison record from a destination that is down, so a sink's
//! healthcheck must fail when the destination would fail every write (the conformance suite
//! asks each sink to make a real call).
//!
//! A poisoned record's dead letter is acknowledged before anything after it is written.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use herald_sdk::printable::{printable, LOG_CHARS};
use herald_sdk::{BoxError, Pending, Rejection};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::delivery::{where_from, Delivery};
use super::fetched::FetchedMessage;
use crate::dlq::{DeadLetter, FailedStage};
use crate::error::RouteError;
use crate::tap::{Outcome, Tapped};
use herald_sdk::error_chain;
use herald_sdk::sink::{SinkError, SinkRecord};

/// How a batch's write ended.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Records the sink accepted.
    pub(crate) accepted: usize,
    /// Records the sink refused for good, by index into the batch's records.
    pub(crate) rejected: Vec<Rejection>,
    /// Records dead-lettered as poison, by index into the batch's records.
    pub(crate) poisoned: Vec<usize>,
}

/// A record dead-lettered as poison: why.
#[derive(Debug, thiserror::Error)]
#[error("the record failed alone {attempts} times while the sink answered; its last error")]
pub(crate) struct Poison {
    /// How many times it failed alone.
    attempts: u32,
    /// The last failure.
    #[source]
    last: BoxError,
}

/// Part of the batch still to write, and how often in a row it failed.
struct Piece {
    pending: Pending,
    failures: u32,
}

/// A record that failed alone `poison_after` times while the healthcheck passed.
struct Suspect {
    index: usize,
    attempts: u32,
    last: BoxError,
}

/// A piece fails this many times in a row before it is split.
const SPLIT_AFTER: u32 = 2;

impl Delivery<'_> {
    /// Writes `records` (made from `messages` by way of `record_origin`) until each is
    /// accepted, rejected or dead-lettered as poison. `Ok(None)`: cancelled while waiting to
    /// retry (nothing may be stored).
    pub(super) async fn write_until_settled(
        &mut self,
        messages: &[FetchedMessage],
        records: &[SinkRecord],
        record_origin: &[usize],
        cancel: &CancellationToken,
    ) -> Result<Option<Written>, RouteError> {
        let policy = self.route.retry.clone();
        let mut queue = VecDeque::from([Piece { pending: Pending::all(records.len()), failures: 0 }]);
        let mut suspects: Vec<Suspect> = Vec::new();
        let mut written = Written::default();
        // Failures since anything was last settled: what `max_retries` counts.
        let mut fruitless: u64 = 0;
        let mut failing = false;
        // Set after every record left failed: suspects are then judged by the healthcheck alone.
        let mut every_record_failed = false;
        loop {
            let Some(piece) = queue.front_mut() else {
                if suspects.is_empty() {
                    break;
                }
                // Every record left failed: the destination's fault, not theirs.
                warn!(
                    route = %self.route.name, records = suspects.len(),
                    "Every record left of the batch fails; the destination is at fault. Retrying them in order."
                );
                queue.extend(suspects.drain(..).map(|s| Piece { pending: Pending::of(vec![s.index]), failures: 0 }));
                every_record_failed = true;
                continue;
            };
            let attempt = piece.pending.records(records);
            let error = match self.sink.write(&attempt).await {
                Ok(outcome) => {
                    let settled = piece
                        .pending
                        .settle(outcome)
                        .map_err(|index| RouteError::BadRejectionIndex { index, batch: attempt.len() })?;
                    written.accepted += settled.accepted;
                    let progress = settled.accepted + settled.rejected.len() > 0;
                    written.rejected.extend(settled.rejected);
                    if settled.accepted > 0 && !suspects.is_empty() {
                        // A record after them was accepted: the destination answers.
                        for suspect in std::mem::take(&mut suspects) {
                            written.poisoned.push(suspect.index);
                            self.poison(messages, records, record_origin, suspect).await?;
                        }
                    }
                    if progress {
                        fruitless = 0;
                        piece.failures = 0;
                    }
                    if settled.accepted > 0 {
                        every_record_failed = false;
                    }
                    match settled.unfinished {
                        None => {
                            queue.pop_front();
                            if failing {
                                failing = false;
                                self.stats.sink_failing.store(false, Ordering::Relaxed);
                                self.stats.update(|state| state.status = "running");
                            }
                            continue;
                        }
                        Some(error) => SinkError::Retriable(error),
                    }
                }
                // Fatal stops the route; Behind is the worker's to handle (it reads again from
                // where the sink's destination stands).
                Err(error @ (SinkError::Fatal(_) | SinkError::Behind { .. })) => return Err(RouteError::Sink(error)),
                Err(error) => error,
            };
            drop(attempt);
            fruitless += 1;
            failing = true;
            piece.failures += 1;
            let reason = error_chain(&error).join(": ");
            self.stats.sink_failing.store(true, Ordering::Relaxed);
            self.stats.update(|state| {
                state.status = "retrying";
                state.last_error = Some(printable(&reason, LOG_CHARS).into_owned());
            });
            if policy.max_retries.is_some_and(|max| fruitless > u64::from(max)) {
                return Err(RouteError::RetriesExhausted { retries: fruitless - 1, source: error });
            }
            let (failures, left) = (piece.failures, piece.pending.len());
            if left == 1 && policy.poison_after > 0 && failures >= policy.poison_after {
                let index = piece.pending.indexes()[0];
                if self.destination_answers().await {
                    let (SinkError::Retriable(last) | SinkError::Fatal(last) | SinkError::Behind { source: last, .. }) =
                        error;
                    let suspect = Suspect { index, attempts: failures, last };
                    // Set aside while a record after it shows whether the destination takes
                    // others, unless nothing may be written past it or nothing is left.
                    let alone = queue.len() == 1 && suspects.is_empty();
                    if self.sink.stores_offsets() || alone || every_record_failed {
                        queue.pop_front();
                        written.poisoned.push(suspect.index);
                        self.poison(messages, records, record_origin, suspect).await?;
                    } else {
                        queue.pop_front();
                        suspects.push(suspect);
                    }
                    continue;
                }
            }
            self.stats.retries.inc();
            if self.stats.tap.is_watched() {
                let retried = piece.pending.indexes().iter().filter_map(|&record| {
                    let message = record_origin.get(record).and_then(|&i| messages.get(i))?;
                    let reason = &reason;
                    Some(move || {
                        Tapped::new(where_from(message), Outcome::Retried, message.payload(), Some(reason.clone()))
                    })
                });
                self.stats.tap.offer(retried);
            }
            let delay = backoff(&policy, failures);
            warn!(
                route = %self.route.name, attempt = failures, retry_in = ?delay, records = left,
                error = %printable(&reason, LOG_CHARS), "Sink write failed; retrying."
            );
            if left > 1 && failures >= SPLIT_AFTER {
                // Look for the record it fails on: each half is written in order.
                if let Some((first, second)) = queue.pop_front().and_then(|piece| piece.pending.split()) {
                    queue.push_front(Piece { pending: second, failures: 0 });
                    queue.push_front(Piece { pending: first, failures: 0 });
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = sleep(delay) => {}
            }
        }
        Ok(Some(written))
    }

    /// Whether the destination answers its healthcheck (then a record failing alone is
    /// suspect; otherwise the destination is down).
    async fn destination_answers(&mut self) -> bool {
        match self.sink.healthcheck().await {
            Ok(()) => true,
            Err(err) => {
                info!(
                    route = %self.route.name, error = %printable(&error_chain(&err).join(": "), LOG_CHARS),
                    "A record keeps failing, but so does the sink's healthcheck: the destination is down; retrying."
                );
                false
            }
        }
    }

    /// Sends a poisoned record to the dead-letter topic now, before anything after it is
    /// written (a sink storing offsets would count it delivered by then).
    async fn poison(
        &mut self,
        messages: &[FetchedMessage],
        records: &[SinkRecord],
        record_origin: &[usize],
        suspect: Suspect,
    ) -> Result<(), RouteError> {
        let Suspect { index, attempts, last } = suspect;
        let Some(message) = record_origin.get(index).and_then(|&i| messages.get(i)) else {
            return Err(RouteError::BadRejectionIndex { index, batch: records.len() });
        };
        let poison = Poison { attempts, last };
        let letter = DeadLetter::new(message.to_owned_message(), FailedStage::Sink, "PoisonRecord", &poison);
        let described = format!(
            "{}[{}]@{}: {}",
            message.topic(),
            message.partition(),
            message.offset(),
            printable(&letter.reason(), LOG_CHARS)
        );
        self.send_dead_letters(&[letter]).await?;
        self.stats.isolated.inc();
        self.stats.update(|state| {
            state.isolated += 1;
            state.last_isolated = Some(described);
        });
        Ok(())
    }
}

/// The wait before trying a piece again after its `failures`-th failure in a row: exponential
/// from `initial_backoff`, with jitter, up to `max_backoff`. A piece split off is new, so
/// narrowing a batch down waits the short delays again.
fn backoff(policy: &crate::config::RetryConfig, failures: u32) -> std::time::Duration {
    let exponential = policy.initial_backoff.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let base = exponential.min(policy.max_backoff);
    // Full jitter over the upper half: between base and twice it, capped.
    let jitter = base.mul_f64(rand::random::<f64>());
    (base + jitter).min(policy.max_backoff.max(policy.initial_backoff))
}
