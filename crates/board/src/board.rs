//! The board's state: one cell per (source, stage), and a channel of changes.

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

use chrono::{DateTime, Utc};
use herald_core::StageEvent;
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
}

impl Cell {
    fn of(event: &StageEvent) -> Self {
        Self {
            source: event.source.clone(),
            stage: event.stage.clone(),
            event: event.event.clone(),
            status: event.status.clone(),
            timestamp: event.timestamp.as_str().to_owned(),
            at: event.timestamp.instant(),
            records: event.records,
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
    stages: Vec<String>,
}

/// The latest event of every (source, stage), shared by the reader and the readers of the board.
#[derive(Debug)]
pub struct Board {
    state: RwLock<State>,
    updates: broadcast::Sender<Cell>,
}

impl Default for Board {
    fn default() -> Self {
        Self { state: RwLock::default(), updates: broadcast::channel(UPDATE_BACKLOG).0 }
    }
}

impl Board {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `event` on the board unless its cell holds a newer one; returns whether it changed,
    /// and tells subscribers when it did.
    pub fn apply(&self, event: &StageEvent) -> bool {
        // The success that recovered a late stage is the news; its RECOVERED alert is not.
        if event.event == "STAGE_RECOVERED" {
            return false;
        }
        let cell = Cell::of(event);
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            let key = (cell.source.clone(), cell.stage.clone());
            match state.cells.get(&key) {
                Some(current) if current.at > cell.at || *current == cell => return false,
                _ => {}
            }
            if !state.stages.contains(&cell.stage) {
                state.stages.push(cell.stage.clone());
            }
            state.cells.insert(key, cell.clone());
        }
        // No subscriber is not an error: the page may simply not be open.
        let _ = self.updates.send(cell);
        true
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
}
