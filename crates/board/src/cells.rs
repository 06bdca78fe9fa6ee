//! The board's state: one cell per (source, stage), and a channel of changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{PoisonError, RwLock};

use chrono::{DateTime, Utc};
use herald_sdk::StageEvent;
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
    /// What each periodic reconcile that found the status table disagreeing with the topic on
    /// this pair says: who, how, which side is newer and the table's own value. Empty when
    /// they agree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diverged: Vec<Mark>,
}

/// What one reconcile subject says of a pair on which the table and the topic differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mark {
    /// Who compared: `route:<name>` or `source:<name>`.
    pub by: String,
    /// How they differ, in words (`only in the topic`, `the table is newer`, …).
    pub verdict: String,
    /// Which side is newer: `table`, `topic`, or `neither` (same instant, or one side only).
    pub newer: &'static str,
    /// The table's newest row of the pair as an event, when the table has one.
    pub table: Option<TableSide>,
}

/// The table's side of a diverged pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableSide {
    /// The event name the row reads as (empty when the table does not keep it).
    pub event: String,
    /// The row's status.
    pub status: String,
    /// The row's record count, when it keeps one.
    pub records: Option<i64>,
    /// The row's timestamp.
    pub timestamp: String,
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
            diverged: Vec::new(),
        }
    }
}

/// Everything on the board at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Stages in pipeline order: those of `[board] stages` first, in its order, then the
    /// others in the order they were first seen.
    pub stages: Vec<String>,
    /// Every cell, by source then stage.
    pub cells: Vec<Cell>,
    /// When a periodic reconcile last compared a table with its topic, if one has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconciled_at: Option<DateTime<Utc>>,
    /// `[board] stages`, for a page placing a stage that appears later.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stage_order: Vec<String>,
}

/// A change on the board, as its subscribers get it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Update {
    /// A cell changed (a newer event, or a reconcile's mark).
    Cell(Cell),
    /// A periodic reconcile compared a table with its topic at this instant.
    Reconciled(DateTime<Utc>),
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
    diverged: BTreeMap<String, BTreeMap<(String, String), Mark>>,
    /// When a periodic reconcile last compared.
    reconciled_at: Option<DateTime<Utc>>,
}

impl State {
    /// What the reconcile subjects say of pair `key`: empty when none says it diverged.
    fn divergence_of(&self, key: &(String, String)) -> Vec<Mark> {
        self.diverged.values().filter_map(|pairs| pairs.get(key).cloned()).collect()
    }
}

/// The latest event of every (source, stage), shared by the reader and the readers of the board.
#[derive(Debug)]
pub struct Board {
    state: RwLock<State>,
    updates: broadcast::Sender<Update>,
    /// `[board] stages`: the pipeline's order of stages, shown first.
    stage_order: Vec<String>,
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
            stage_order: Vec::new(),
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
        let _ = self.updates.send(Update::Cell(cell));
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

    /// Shows stages in this order (`[board] stages`), before those it does not name.
    pub fn with_stage_order(mut self, stages: Vec<String>) -> Self {
        self.stage_order = stages;
        self
    }

    /// Marks the pairs reconcile subject `subject` found diverged, with how (replacing what it
    /// said before), notes the time, and tells subscribers of every cell whose mark changed.
    pub fn mark_diverged(&self, subject: &str, pairs: BTreeMap<(String, String), Mark>) {
        let now = Utc::now();
        let changed: Vec<Cell> = {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            state.reconciled_at = Some(now);
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
            let _ = self.updates.send(Update::Cell(cell));
        }
        let _ = self.updates.send(Update::Reconciled(now));
    }

    /// Everything on the board now.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let mut stages: Vec<String> =
            self.stage_order.iter().filter(|stage| state.stages.contains(stage)).cloned().collect();
        stages.extend(state.stages.iter().filter(|stage| !self.stage_order.contains(stage)).cloned());
        Snapshot {
            stages,
            cells: state.cells.values().cloned().collect(),
            reconciled_at: state.reconciled_at,
            stage_order: self.stage_order.clone(),
        }
    }

    /// Changes from now on. A subscriber that falls behind gets `Lagged` and should take a new
    /// [`Board::snapshot`].
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
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
        let statuses: Vec<String> = std::iter::from_fn(|| updates.try_recv().ok())
            .filter_map(|update| match update {
                Update::Cell(cell) => Some(cell.status),
                Update::Reconciled(_) => None,
            })
            .collect();
        assert_eq!(statuses, ["RUNNING", "SUCCESS", "FAILED", "SUCCESS"], "one update per change, none for the rest");
    }

    fn mark(by: &str, verdict: &str) -> Mark {
        let table = TableSide {
            event: "STAGE_COMPLETE".into(),
            status: "FAILED".into(),
            records: Some(4242),
            timestamp: "2026-12-01T10:00:00".into(),
        };
        Mark { by: by.into(), verdict: verdict.into(), newer: "table", table: Some(table) }
    }

    #[test]
    fn a_diverged_pair_is_marked_by_each_subject_and_cleared_when_they_agree_again() {
        let board = Board::new();
        board.apply(&event("OrdersDB", "bronze", "SUCCESS", 1));
        let mut updates = board.subscribe();
        let pair = ("OrdersDB".to_owned(), "bronze".to_owned());
        assert_eq!(board.snapshot().reconciled_at, None);
        board.mark_diverged("route:r", [(pair.clone(), mark("route:r", "only in the topic"))].into());
        board.mark_diverged("source:s", [(pair.clone(), mark("source:s", "the table is newer"))].into());
        let marks = board.snapshot().cells[0].diverged.clone();
        let said: Vec<(&str, &str)> = marks.iter().map(|m| (m.by.as_str(), m.verdict.as_str())).collect();
        assert_eq!(said, [("route:r", "only in the topic"), ("source:s", "the table is newer")]);
        assert!(board.snapshot().reconciled_at.is_some());
        board.apply(&event("OrdersDB", "bronze", "SUCCESS", 2));
        assert!(!board.snapshot().cells[0].diverged.is_empty(), "a newer event keeps the mark until reconcile says");
        board.mark_diverged("route:r", BTreeMap::new());
        board.mark_diverged("source:s", BTreeMap::new());
        assert!(board.snapshot().cells[0].diverged.is_empty());
        let updates: Vec<Update> = std::iter::from_fn(|| updates.try_recv().ok()).collect();
        let marks: Vec<usize> = updates
            .iter()
            .filter_map(|update| match update {
                Update::Cell(cell) => Some(cell.diverged.len()),
                Update::Reconciled(_) => None,
            })
            .collect();
        assert_eq!(marks, [1, 2, 2, 1, 0], "each change of a mark is an update");
        let rounds = updates.iter().filter(|update| matches!(update, Update::Reconciled(_))).count();
        assert_eq!(rounds, 4, "each reconcile's time is an update");
    }

    #[test]
    fn stages_follow_the_configured_pipeline_order_then_first_seen() {
        let board = Board::new().with_stage_order(vec!["bronze".into(), "silver".into(), "gold".into()]);
        board.apply(&event("A", "gold", "SUCCESS", 3));
        board.apply(&event("A", "audit", "SUCCESS", 4));
        board.apply(&event("A", "bronze", "SUCCESS", 1));
        assert_eq!(board.snapshot().stages, ["bronze", "gold", "audit"]);
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
