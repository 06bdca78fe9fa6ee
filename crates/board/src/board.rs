//! The board's state: one cell per (source, stage), and a channel of changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{PoisonError, RwLock};

use chrono::{DateTime, Utc};
use herald_core::StageEvent;
use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::broadcast;

/// How many changes a slow subscriber may fall behind before it must take a new snapshot.
const UPDATE_BACKLOG: usize = 1024;

/// The latest event of one (source, stage).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// The data source (the event's Kafka key).
    pub source: String,
    /// The stage.
    pub stage: String,
    /// The event name, e.g. `STAGE_COMPLETE` (or `STAGE_LATE`).
    pub event: String,
    /// Its status, e.g. `SUCCESS`, `FAILED`, `RUNNING`.
    pub status: String,
    /// The timestamp as the event carried it.
    pub timestamp: String,
    /// The timestamp as an instant (UTC), for ages.
    pub at: DateTime<Utc>,
    /// Its record count, when it has one.
    pub records: Option<i64>,
    /// When a periodic reconcile found the status table disagreeing with the topic on this
    /// pair: who says so and how (`route:to-table: only in the topic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<String>,
}

impl Cell {
    /// The cell `event` makes.
    pub fn of(event: &StageEvent) -> Self {
        Self {
            source: event.source.clone(),
            stage: event.stage.clone(),
            event: event.event.clone(),
            status: event.status.clone(),
            timestamp: event.timestamp.as_str().to_owned(),
            at: event.timestamp.instant(),
            records: event.records,
            diverged: None,
        }
    }
}

/// Everything on the board at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Stages in the order they were first seen (a pipeline's order, as events arrive).
    pub stages: Vec<String>,
    /// Every cell, by source then stage.
    pub cells: Vec<Cell>,
}

#[derive(Debug, Default)]
struct State {
    cells: BTreeMap<(String, String), Cell>,
    /// The cells by age (their event's instant), oldest first: the first to go when full.
    by_age: BTreeSet<(DateTime<Utc>, String, String)>,
    stages: Vec<String>,
    /// How many cells each stage has: a stage leaves the board with its last cell.
    stage_cells: BTreeMap<String, usize>,
    /// Per reconcile subject, the pairs it found diverged and how.
    diverged: BTreeMap<String, BTreeMap<(String, String), String>>,
}

impl State {
    /// What the reconcile subjects say of pair `key`, if any says it diverged.
    fn divergence_of(&self, key: &(String, String)) -> Option<String> {
        let notes: Vec<String> = self
            .diverged
            .iter()
            .filter_map(|(subject, pairs)| pairs.get(key).map(|note| format!("{subject}: {note}")))
            .collect();
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

/// The latest event of every (source, stage), shared by the reader and the readers of the board.
#[derive(Debug)]
pub struct Board {
    state: RwLock<State>,
    updates: broadcast::Sender<Cell>,
    /// Most cells held; past it the oldest go.
    max_cells: usize,
    /// Counts the cells that went.
    evicted: Option<IntCounter>,
}

impl Default for Board {
    fn default() -> Self {
        Self {
            state: RwLock::default(),
            updates: broadcast::channel(UPDATE_BACKLOG).0,
            max_cells: usize::MAX,
            evicted: None,
        }
    }
}

impl Board {
    /// An empty board, unbounded (for a bounded run of `herald status` or `reconcile`).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty board of at most `max_cells` cells: past it, the cell whose event is oldest goes
    /// (counted by `evicted`), so a producer inventing sources or stages cannot grow it for good.
    pub fn bounded(max_cells: usize, evicted: Option<IntCounter>) -> Self {
        Self { max_cells: max_cells.max(1), evicted, ..Self::default() }
    }

    /// Puts `event` on the board unless its cell holds a newer one; returns whether it changed,
    /// and tells subscribers when it did.
    pub fn apply(&self, event: &StageEvent) -> bool {
        // The success that recovered a late stage is the news; its RECOVERED alert is not.
        if event.event == "STAGE_RECOVERED" {
            return false;
        }
        let mut cell = Cell::of(event);
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            let key = (cell.source.clone(), cell.stage.clone());
            cell.diverged = state.divergence_of(&key);
            match state.cells.get(&key) {
                Some(current) if current.at > cell.at || *current == cell => return false,
                _ => {}
            }
            match state.cells.get(&key).map(|current| current.at) {
                Some(at) => {
                    state.by_age.remove(&(at, key.0.clone(), key.1.clone()));
                }
                None => {
                    let count = state.stage_cells.entry(cell.stage.clone()).or_insert(0);
                    *count += 1;
                    if *count == 1 {
                        state.stages.push(cell.stage.clone());
                    }
                }
            }
            state.by_age.insert((cell.at, key.0.clone(), key.1.clone()));
            state.cells.insert(key.clone(), cell.clone());
            if self.evict_oldest(&mut state) && !state.cells.contains_key(&key) {
                // The newcomer was itself the oldest: nothing to show.
                return false;
            }
        }
        // No subscriber is not an error: the page may simply not be open.
        let _ = self.updates.send(cell);
        true
    }

    /// Drops the oldest cells while there are more than `max_cells`; whether any went.
    fn evict_oldest(&self, state: &mut State) -> bool {
        let mut evicted = false;
        while state.cells.len() > self.max_cells {
            let Some((_, source, stage)) = state.by_age.pop_first() else { break };
            state.cells.remove(&(source, stage.clone()));
            if let Some(count) = state.stage_cells.get_mut(&stage) {
                *count -= 1;
                if *count == 0 {
                    state.stage_cells.remove(&stage);
                    state.stages.retain(|known| *known != stage);
                }
            }
            if let Some(counter) = &self.evicted {
                counter.inc();
            }
            evicted = true;
        }
        evicted
    }

    /// Marks the pairs reconcile subject `subject` found diverged, with how (replacing what it
    /// said before), and tells subscribers of every cell whose mark changed.
    pub fn mark_diverged(&self, subject: &str, pairs: BTreeMap<(String, String), String>) {
        let changed: Vec<Cell> = {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            let before = state.diverged.insert(subject.to_owned(), pairs).unwrap_or_default();
            let touched: std::collections::BTreeSet<(String, String)> =
                before.into_keys().chain(state.diverged[subject].keys().cloned()).collect();
            let mut changed = Vec::new();
            for key in touched {
                let mark = state.divergence_of(&key);
                if let Some(cell) = state.cells.get_mut(&key) {
                    if cell.diverged != mark {
                        cell.diverged = mark;
                        changed.push(cell.clone());
                    }
                }
            }
            changed
        };
        for cell in changed {
            let _ = self.updates.send(cell);
        }
    }

    /// Everything on the board now.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Snapshot { stages: state.stages.clone(), cells: state.cells.values().cloned().collect() }
    }

    /// Changes from now on. A subscriber that falls behind gets `Lagged` and should take a new
    /// [`Board::snapshot`].
    pub fn subscribe(&self) -> broadcast::Receiver<Cell> {
        self.updates.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(source: &str, stage: &str, status: &str, second: u32) -> StageEvent {
        let json = format!(
            r#"{{"event":"STAGE_COMPLETE","stage":"{stage}","source":"{source}","timestamp":"2026-12-01T10:00:{second:02}","status":"{status}"}}"#
        );
        StageEvent::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn the_newest_event_of_each_pair_wins_whatever_the_reading_order() {
        let board = Board::new();
        let mut updates = board.subscribe();
        assert!(board.apply(&event("OrdersDB", "bronze", "RUNNING", 1)));
        assert!(board.apply(&event("OrdersDB", "bronze", "SUCCESS", 5)));
        assert!(!board.apply(&event("OrdersDB", "bronze", "FAILED", 3)), "an older event read later loses");
        assert!(!board.apply(&event("OrdersDB", "bronze", "SUCCESS", 5)), "the same event again changes nothing");
        assert!(board.apply(&event("Payments", "silver", "FAILED", 2)));
        assert!(board.apply(&event("OrdersDB", "silver", "SUCCESS", 9)));

        let snapshot = board.snapshot();
        assert_eq!(snapshot.stages, ["bronze", "silver"], "first-seen order");
        let cells: Vec<(&str, &str, &str)> =
            snapshot.cells.iter().map(|c| (c.source.as_str(), c.stage.as_str(), c.status.as_str())).collect();
        assert_eq!(
            cells,
            [("OrdersDB", "bronze", "SUCCESS"), ("OrdersDB", "silver", "SUCCESS"), ("Payments", "silver", "FAILED")]
        );
        let statuses: Vec<String> = std::iter::from_fn(|| updates.try_recv().ok()).map(|c| c.status).collect();
        assert_eq!(statuses, ["RUNNING", "SUCCESS", "FAILED", "SUCCESS"], "one update per change, none for the rest");
    }

    #[test]
    fn a_diverged_pair_is_marked_by_each_subject_and_cleared_when_they_agree_again() {
        let board = Board::new();
        board.apply(&event("OrdersDB", "bronze", "SUCCESS", 1));
        let mut updates = board.subscribe();
        let pair = ("OrdersDB".to_owned(), "bronze".to_owned());
        board.mark_diverged("route:r", [(pair.clone(), "only in the topic".to_owned())].into());
        board.mark_diverged("source:s", [(pair.clone(), "the table is newer".to_owned())].into());
        let mark = board.snapshot().cells[0].diverged.clone().unwrap();
        assert_eq!(mark, "route:r: only in the topic; source:s: the table is newer");
        board.apply(&event("OrdersDB", "bronze", "SUCCESS", 2));
        assert!(board.snapshot().cells[0].diverged.is_some(), "a newer event keeps the mark until reconcile says");
        board.mark_diverged("route:r", BTreeMap::new());
        board.mark_diverged("source:s", BTreeMap::new());
        assert_eq!(board.snapshot().cells[0].diverged, None);
        let marks: Vec<Option<String>> = std::iter::from_fn(|| updates.try_recv().ok()).map(|c| c.diverged).collect();
        assert_eq!(marks.len(), 5, "each change of a mark is an update: {marks:?}");
        assert_eq!(marks.last().unwrap(), &None);
    }

    #[test]
    fn a_full_board_lets_its_oldest_cells_go_and_counts_them() {
        let evicted = IntCounter::new("evicted", "test").unwrap();
        let board = Board::bounded(2, Some(evicted.clone()));
        assert!(board.apply(&event("A", "s1", "SUCCESS", 1)));
        assert!(board.apply(&event("B", "s2", "SUCCESS", 3)));
        assert!(board.apply(&event("C", "s2", "SUCCESS", 4)), "A/s1 (oldest) goes");
        let pairs: Vec<(String, String)> = board.snapshot().cells.into_iter().map(|c| (c.source, c.stage)).collect();
        assert_eq!(pairs, [("B".into(), "s2".into()), ("C".into(), "s2".into())]);
        assert_eq!(board.snapshot().stages, ["s2"], "a stage goes with its last cell");
        assert!(!board.apply(&event("D", "s3", "SUCCESS", 0)), "older than everything held: not kept");
        assert!(board.apply(&event("B", "s2", "FAILED", 9)), "a newer event of a held cell replaces it");
        assert!(board.apply(&event("E", "s1", "SUCCESS", 5)), "C/s2 (now oldest) goes");
        assert_eq!(evicted.get(), 3);
        let pairs: Vec<(String, String)> = board.snapshot().cells.into_iter().map(|c| (c.source, c.stage)).collect();
        assert_eq!(pairs, [("B".into(), "s2".into()), ("E".into(), "s1".into())]);
    }
}
