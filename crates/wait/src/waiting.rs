//! The state machine of one wait: events in, decisions out.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use herald_sdk::event::STAGE_COMPLETE;
use herald_sdk::StageEvent;

use crate::pair::Pair;

/// What a decision means for the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// This pair is decided; others are still awaited.
    Decided,
    /// This pair's outcome is `FAILED` (and failures are not allowed): the wait ends, failed.
    Failed,
    /// The wait is over: every pair decided (or, waiting for any, this one).
    Done,
}

/// One pair decided, by `event`.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The deciding event.
    pub event: StageEvent,
    /// What it means for the wait.
    pub verdict: Verdict,
}

/// The pairs awaited and what has been decided for each.
#[derive(Debug)]
pub struct Waiting {
    pairs: Vec<Pair>,
    /// The event name awaited (`STAGE_COMPLETE`, or an alert's).
    wanted: String,
    /// Events dated before this are not the wait's (`--since`).
    cutoff: DateTime<Utc>,
    /// The event that decided each pair.
    decided: Vec<Option<StageEvent>>,
    /// Per pair, per stage: the newest event in the history read so far that either decides
    /// the wait or says a new run began (then the pair waits for that run's outcome).
    newest_in_history: Vec<BTreeMap<String, StageEvent>>,
    any: bool,
    allow_failed: bool,
}

impl Waiting {
    /// A wait for events named `wanted` of `pairs` dated from `cutoff`: for all of them, or
    /// with `any` the first; with `allow_failed` a `FAILED` outcome decides like any other.
    pub fn new(pairs: Vec<Pair>, wanted: &str, cutoff: DateTime<Utc>, any: bool, allow_failed: bool) -> Self {
        let count = pairs.len();
        Self {
            pairs,
            wanted: wanted.to_owned(),
            cutoff,
            decided: vec![None; count],
            newest_in_history: vec![BTreeMap::new(); count],
            any,
            allow_failed,
        }
    }

    /// The pairs awaited.
    pub fn pairs(&self) -> &[Pair] {
        &self.pairs
    }

    /// The pairs not decided yet, described.
    pub fn pending(&self) -> Vec<String> {
        self.pairs.iter().zip(&self.decided).filter(|(_, d)| d.is_none()).map(|(pair, _)| pair.to_string()).collect()
    }

    /// One event read, from the history (`in_history`: it was on the topic when the wait
    /// started) or live. A history event is remembered until [`Waiting::settle_history`]; a live
    /// outcome decides its pairs at once. The decisions it made, in order; the last may end the
    /// wait.
    pub fn read(&mut self, event: &StageEvent, in_history: bool) -> Vec<Decision> {
        let decides = self.awaited(event);
        let restarts = self.wanted == STAGE_COMPLETE && event.starts_a_run();
        let mut decisions = Vec::new();
        if !(decides || restarts) || event.timestamp.instant() < self.cutoff {
            return decisions;
        }
        for index in 0..self.pairs.len() {
            if !self.pairs[index].covers(&event.source, &event.stage) || self.decided[index].is_some() {
                continue;
            }
            if in_history {
                self.remember(index, event.clone());
            } else if decides {
                let decision = self.decide(index, event.clone());
                let over = decision.verdict != Verdict::Decided;
                decisions.push(decision);
                if over {
                    break;
                }
            }
        }
        decisions
    }

    /// Once the history is read: each pair still open is decided by its newest event there,
    /// unless that event says a new run began (the stage is re-running: wait for its outcome).
    /// With no stage, the newest outcome among the stages whose newest event is one.
    pub fn settle_history(&mut self) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for index in 0..self.pairs.len() {
            if self.decided[index].is_some() {
                continue;
            }
            let newest = std::mem::take(&mut self.newest_in_history[index]);
            let outcome =
                newest.into_values().filter(|event| self.awaited(event)).max_by_key(|event| event.timestamp.instant());
            if let Some(event) = outcome {
                let decision = self.decide(index, event);
                let over = decision.verdict != Verdict::Decided;
                decisions.push(decision);
                if over {
                    break;
                }
            }
        }
        decisions
    }

    /// Whether `event` decides a wait for events named `wanted`: a `STAGE_COMPLETE` (whose
    /// status goes `RUNNING` → `SUCCESS`/`FAILED`) when it is an outcome, any other kind
    /// (`STAGE_LATE`, `STAGE_MISSING`, a custom one) as soon as it comes.
    fn awaited(&self, event: &StageEvent) -> bool {
        event.event == self.wanted && (self.wanted != STAGE_COMPLETE || event.is_outcome())
    }

    /// Decides pair `index` with `event`.
    fn decide(&mut self, index: usize, event: StageEvent) -> Decision {
        if event.status == "FAILED" && !self.allow_failed {
            return Decision { event, verdict: Verdict::Failed };
        }
        if let Some(slot) = self.decided.get_mut(index) {
            *slot = Some(event.clone());
        }
        let done = self.decided.iter().filter(|decided| decided.is_some()).count();
        let over = done == self.pairs.len() || (self.any && done > 0);
        Decision { event, verdict: if over { Verdict::Done } else { Verdict::Decided } }
    }

    /// Keeps `event`, read from the history, if it is the newest of its pair and stage: by
    /// timestamp, and on a tie the later offset (read later), as the Postgres sink's upsert
    /// orders them.
    fn remember(&mut self, index: usize, event: StageEvent) {
        let Some(newest) = self.newest_in_history.get_mut(index) else { return };
        match newest.get(&event.stage) {
            Some(kept) if event.timestamp.instant() < kept.timestamp.instant() => {}
            _ => {
                newest.insert(event.stage.clone(), event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(event: &str, stage: &str, status: &str, second: u32) -> StageEvent {
        StageEvent::from_json_str(&format!(
            r#"{{"event":"{event}","stage":"{stage}","source":"A","records":1,"timestamp":"2026-12-06T10:00:{second:02}","status":"{status}"}}"#
        ))
        .unwrap()
    }

    fn waiting(stage: Option<&str>) -> Waiting {
        let pair = Pair { source: "A".into(), stage: stage.map(str::to_owned) };
        Waiting::new(vec![pair], STAGE_COMPLETE, DateTime::<Utc>::MIN_UTC, false, false)
    }

    /// The history's events in offset order, as `wait` reads them; whether the pair is decided.
    fn settles(stage: Option<&str>, history: &[StageEvent]) -> bool {
        let mut waiting = waiting(stage);
        for event in history {
            assert!(waiting.read(event, true).is_empty(), "history decides nothing before it is settled");
        }
        !waiting.settle_history().is_empty()
    }

    #[test]
    fn a_stage_re_running_after_its_success_is_not_done() {
        let success = event(STAGE_COMPLETE, "silver", "SUCCESS", 1);
        let running = event(STAGE_COMPLETE, "silver", "RUNNING", 2);
        let started = event("STAGE_STARTED", "silver", "", 2);
        assert!(!settles(Some("silver"), &[success.clone(), running.clone()]), "SUCCESS then RUNNING: open");
        assert!(!settles(Some("silver"), &[success.clone(), started]), "SUCCESS then STAGE_STARTED: open");
        assert!(settles(Some("silver"), &[running.clone(), event(STAGE_COMPLETE, "silver", "SUCCESS", 3)]));
        // One instant: the later offset decides, as the table's upsert does.
        let tied_running = event(STAGE_COMPLETE, "silver", "RUNNING", 1);
        assert!(!settles(Some("silver"), &[success.clone(), tied_running.clone()]));
        assert!(settles(Some("silver"), &[tied_running, success.clone()]));
        // Read out of time order (another partition's event): the newer instant still decides.
        assert!(!settles(Some("silver"), &[running, success]));
    }

    #[test]
    fn without_a_stage_the_newest_outcome_of_a_stage_not_re_running_decides() {
        let bronze_done = event(STAGE_COMPLETE, "bronze", "SUCCESS", 1);
        let silver_running = event(STAGE_COMPLETE, "silver", "RUNNING", 2);
        assert!(settles(None, &[bronze_done.clone(), silver_running.clone()]));
        let bronze_again = event(STAGE_COMPLETE, "bronze", "RUNNING", 3);
        assert!(!settles(None, &[bronze_done, silver_running, bronze_again]));
    }

    #[test]
    fn live_outcomes_decide_at_once_a_failure_ends_the_wait_and_running_decides_nothing() {
        let pairs = vec![
            Pair { source: "A".into(), stage: Some("bronze".into()) },
            Pair { source: "A".into(), stage: Some("silver".into()) },
        ];
        let mut waiting = Waiting::new(pairs.clone(), STAGE_COMPLETE, DateTime::<Utc>::MIN_UTC, false, false);
        assert!(waiting.read(&event(STAGE_COMPLETE, "bronze", "RUNNING", 1), false).is_empty());
        let first = waiting.read(&event(STAGE_COMPLETE, "bronze", "SUCCESS", 2), false);
        assert_eq!(first.iter().map(|d| d.verdict).collect::<Vec<_>>(), [Verdict::Decided]);
        assert_eq!(waiting.pending(), ["source `A`, stage `silver`"]);
        let last = waiting.read(&event(STAGE_COMPLETE, "silver", "SUCCESS", 3), false);
        assert_eq!(last.iter().map(|d| d.verdict).collect::<Vec<_>>(), [Verdict::Done]);

        let mut failing = Waiting::new(pairs, STAGE_COMPLETE, DateTime::<Utc>::MIN_UTC, false, false);
        let failed = failing.read(&event(STAGE_COMPLETE, "silver", "FAILED", 3), false);
        assert_eq!(failed.iter().map(|d| d.verdict).collect::<Vec<_>>(), [Verdict::Failed]);
    }

    #[test]
    fn events_before_the_cutoff_are_not_the_wait_s() {
        let cutoff = "2026-12-06T10:00:05Z".parse().unwrap();
        let pair = Pair { source: "A".into(), stage: None };
        let mut waiting = Waiting::new(vec![pair], STAGE_COMPLETE, cutoff, true, false);
        assert!(waiting.read(&event(STAGE_COMPLETE, "bronze", "SUCCESS", 4), false).is_empty());
        assert_eq!(waiting.read(&event(STAGE_COMPLETE, "bronze", "SUCCESS", 6), false).len(), 1);
    }
}
