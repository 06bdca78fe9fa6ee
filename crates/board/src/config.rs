//! `[board]`: which topics the status board reads, and from how far back.

use std::time::Duration;

use herald_config::Invalid;
use serde::Deserialize;

/// The status board: the latest event of every (source, stage) read from `topics`, served by
/// the admin API as a live page (`/board`), JSON (`/board/state`) and a server-sent event stream
/// (`/board/events`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardConfig {
    /// Topics of stage events to show, e.g. `["pipeline.stage.events"]`. Default: none (no
    /// board). Read with no consumer group and nothing committed.
    #[serde(default)]
    pub topics: Vec<String>,
    /// How far back the board starts reading when herald starts. Default `"24h"`.
    #[serde(default = "default_board_since", with = "humantime_serde")]
    pub since: Duration,
    /// Most (source, stage) cells held. Past it, the cell whose event is oldest leaves the board
    /// (counted in `herald_board_evicted_total`), so a producer inventing sources or stages
    /// cannot grow herald's memory or the page for good. Default `10000`.
    #[serde(default = "default_max_cells")]
    pub max_cells: usize,
    /// The pipeline's stages in order, e.g. `["bronze_ingest", "silver", "gold"]`: the board's
    /// columns follow it, and stages it does not name come after, in the order first seen.
    /// Default: none (first-seen order).
    #[serde(default)]
    pub stages: Vec<String>,
}

impl Default for BoardConfig {
    fn default() -> Self {
        Self { topics: Vec::new(), since: default_board_since(), max_cells: default_max_cells(), stages: Vec::new() }
    }
}

fn default_max_cells() -> usize {
    10_000
}

fn default_board_since() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl BoardConfig {
    /// Checks what the types cannot: topic names, and that the admin API is there to serve the
    /// board (`admin_listens`).
    pub fn validate(&self, admin_listens: bool) -> Result<(), Invalid> {
        if self.topics.is_empty() {
            return Ok(());
        }
        if !admin_listens {
            return Err(Invalid::new("board.topics", "the board is served by the admin API: set `admin.listen`"));
        }
        if self.max_cells == 0 {
            return Err(Invalid::new("board.max_cells", "must be at least 1"));
        }
        if self.topics.iter().any(|topic| topic.is_empty() || topic.starts_with('^')) {
            return Err(Invalid::new("board.topics", "topic names, not empty and not `^regex` patterns"));
        }
        Ok(())
    }
}
